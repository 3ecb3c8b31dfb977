//! What the agent keeps across restarts: the state and pin directories, taking over an
//! adopted map and a saved state at start, and the periodic save.

use super::act::ActState;
use super::tick::resolve_cookie;
use super::verify::{TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK};
use super::{target_of, Agent, DiagPath, SockSource};
use crate::event;
use crate::probes::Pinning;
use crate::reset::Target;
use crate::snapshot::{monotonic_ns, Snapshot};
use crate::state::{self, Saved, StatePaths};
use anyhow::Result;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where and when the agent saves its state ([`crate::state`]); inert without a file.
#[derive(Default)]
pub(super) struct Persist {
    /// The state file; None: not kept.
    pub(super) file: Option<PathBuf>,
    pub(super) last_save: Option<Instant>,
    /// How long the last save took (it sets the next one's delay, [`state::save_interval`]).
    pub(super) last_cost: Duration,
    /// The last save failed (said once until one works again).
    pub(super) failing: bool,
    /// Sockets were left out of the file (said once).
    pub(super) warned_full: bool,
    pub(super) boot_id: String,
    /// The state and pin directories, held for the agent's lifetime.
    pub(super) _locks: Vec<state::Lock>,
}

/// Why part of the state is not kept (the directory could not be used), for
/// `agent_started.state.detail`.
#[derive(Default)]
pub(super) struct WhyNot {
    pub(super) pins: Option<String>,
    pub(super) file: Option<String>,
}

impl Persist {
    /// Lock and prepare the state and pin directories. A directory another agent holds is
    /// an error (two agents would act on the same sockets); one that cannot be used is
    /// left out, and `WhyNot` says why. Returns the usable pin directory.
    pub(super) fn open(paths: Option<&StatePaths>) -> Result<(Persist, Option<PathBuf>, WhyNot)> {
        let mut p = Persist::default();
        let mut why = WhyNot::default();
        let Some(paths) = paths else {
            why.pins = Some("state is not kept across restarts (--no-state)".into());
            return Ok((p, None, why));
        };
        match state::lock_state_dir(&paths.state_dir) {
            Ok(l) => {
                p._locks.push(l);
                p.file = Some(paths.state_dir.join(state::STATE_FILE));
            }
            Err(state::LockError::Busy(e)) => anyhow::bail!(e),
            Err(e) => {
                log::warn!("the state file will not be kept: {e}");
                why.file = Some(format!("state file not kept: {e}"));
            }
        }
        let pin_dir = match state::prepare_pin_dir(&paths.pin_dir) {
            Err(e) => {
                log::warn!("the kernel map will not be pinned: {e}");
                why.pins = Some(format!("kernel map not pinned: {e}"));
                None
            }
            Ok(()) => match state::lock_pin_dir(&paths.pin_dir) {
                Ok(l) => {
                    p._locks.push(l);
                    Some(paths.pin_dir.clone())
                }
                Err(state::LockError::Busy(e)) => anyhow::bail!(e),
                Err(e) => {
                    why.pins = Some(format!("kernel map not pinned: {e}"));
                    None
                }
            },
        };
        Ok((p, pin_dir, why))
    }

    /// Time for the periodic save.
    pub(super) fn due(&self) -> bool {
        self.file.is_some()
            && self
                .last_save
                .is_none_or(|t| t.elapsed() >= state::save_interval(self.last_cost))
    }
}

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    /// Take over what the previous agent left, before the first tick.
    ///
    /// An adopted kernel map is checked against the kernel first (one batched lookup): no
    /// hook ran while no agent did, so the entries of sockets that closed meanwhile (gone,
    /// or past ESTABLISHED/CLOSE_WAIT) or drained are still there. They are removed, and
    /// seen leaving at the first tick like any other departure: a close is a close (its
    /// stall, if one was in force, ends with `stall_closed`, and no episode is recorded),
    /// a drain a recovery. The entries kept carry their stall clocks on.
    ///
    /// The saved state then comes back: every socket's history; its tracking session (stalls
    /// in force, samples) only where the adopted map still holds that same session; the
    /// budgets' windows; the reset decisions of the stalls in force.
    pub fn restore(
        &mut self,
        kernel: &Pinning,
        saved: Option<(&Result<Saved, String>, &std::path::Path)>,
    ) -> event::StateReport {
        let now_ns = monotonic_ns();
        let now = Instant::now();
        let mut detail = kernel.detail.clone();
        // Tracking session (first_seen_ns) of every socket the adopted map holds.
        let mut sessions: HashMap<u64, u64> = HashMap::new();
        if kernel.adopted {
            let kern = &mut self.kern;
            let states = self.src.read_all(&mut |st| resolve_cookie(kern, st));
            let snaps: Vec<Snapshot> = states
                .iter()
                .map(|st| Snapshot::from_state(st, now_ns))
                .collect();
            let targets: Vec<Target> = snaps.iter().map(target_of).collect();
            let live = if targets.is_empty() {
                Vec::new()
            } else {
                self.kern.lookup_many(&targets)
            };
            let (mut closed, mut drained, mut unknown) = (0, 0, 0);
            for (snap, r) in snaps.into_iter().zip(live) {
                let gone = match r {
                    Ok(None) => Some(true),
                    Ok(Some(d)) => {
                        let open = d.state == TCP_ESTABLISHED || d.state == TCP_CLOSE_WAIT;
                        let orphan = matches!(d.state, TCP_FIN_WAIT1 | TCP_CLOSING | TCP_LAST_ACK)
                            && snap.orphan;
                        if !(open || orphan) {
                            // What the state hook would have done: the entry goes.
                            Some(true)
                        } else if d.send_q == 0 && d.recv_q == 0 {
                            Some(false)
                        } else {
                            None
                        }
                    }
                    Err(e) => {
                        log::debug!("checking adopted entry {}: {e}", snap.cookie);
                        unknown += 1;
                        None
                    }
                };
                if let Some(gone) = gone {
                    if self.src.remove(snap.cookie) {
                        self.map_stale += 1;
                        if gone {
                            self.closed.insert(snap.cookie, (now_ns, now));
                            closed += 1;
                        } else {
                            drained += 1;
                        }
                    }
                }
                sessions.insert(snap.cookie, snap.times.first_seen_ns);
                self.last
                    .insert(snap.cookie, super::Seen::new(snap, self.ticks));
            }
            let n = sessions.len();
            detail = format!(
                "{detail} ({n} sockets; {closed} closed and {drained} drained while no agent \
                 ran, removed{})",
                if unknown > 0 {
                    format!("; {unknown} could not be checked, kept")
                } else {
                    String::new()
                }
            );
        }
        let restored = match saved {
            None => false,
            Some((Err(why), _)) => {
                detail = format!("{detail}; state file not used: {why}");
                false
            }
            Some((Ok(saved), path)) => {
                let age_ms = now_ns.saturating_sub(saved.header.saved_mono_ns) / 1_000_000;
                let n = self.tracker.import(saved.sockets.clone(), |c, session| {
                    sessions.get(&c) == Some(&session)
                });
                let resets = self.budgets.import(saved.budgets.clone(), now, now_ns);
                let mut acts = 0;
                for a in &saved.acts {
                    if self.tracker.active(a.cookie).is_none() {
                        continue;
                    }
                    let retry_at = a
                        .retry_at_ns
                        .map(|t| now + Duration::from_nanos(t.saturating_sub(now_ns)));
                    self.acts.insert(
                        a.cookie,
                        ActState {
                            skipped_guard: a.skipped_guard,
                            done: a.done,
                            attempts: a.attempts,
                            retry_at,
                        },
                    );
                    acts += 1;
                }
                detail = format!(
                    "{detail}; restored {} (saved {} ago by pid {}): the history of {} sockets \
                     ({} in the same tracking session), {resets} resets in the rate-limit \
                     windows, {acts} reset decisions{}",
                    path.display(),
                    crate::classify::fmt_ms(age_ms),
                    saved.header.pid,
                    n.live + n.dormant,
                    n.live,
                    if saved.header.sockets_left_out > 0 {
                        format!(
                            " ({} sockets had been left out to bound the file)",
                            saved.header.sockets_left_out
                        )
                    } else {
                        String::new()
                    }
                );
                true
            }
        };
        if !kernel.adopted && !restored {
            detail = format!("started fresh: {detail}");
        }
        event::StateReport {
            adopted: kernel.adopted,
            restored,
            detail,
        }
    }

    /// Write the state file now (periodically from the tick, and at a clean exit). A failure
    /// is logged (once until a save works again) and never stops the agent.
    pub(super) fn save_state(&mut self) {
        let Some(path) = self.persist.file.clone() else {
            return;
        };
        let now = Instant::now();
        let now_ns = monotonic_ns();
        self.persist.last_save = Some(now);
        let header = state::Header {
            format: state::format_version(),
            layout: state::layout_id(),
            boot_id: self.persist.boot_id.clone(),
            saved_mono_ns: now_ns,
            saved_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            sockets_left_out: 0,
        };
        let acts: HashMap<u64, state::SavedAct> = self
            .acts
            .iter()
            // A stall with nothing decided yet is the same as no entry.
            .filter(|(_, a)| a.skipped_guard.is_some() || a.done || a.attempts > 0)
            .map(|(&cookie, a)| {
                (
                    cookie,
                    state::SavedAct {
                        cookie,
                        skipped_guard: a.skipped_guard,
                        done: a.done,
                        attempts: a.attempts,
                        retry_at_ns: a
                            .retry_at
                            .map(|t| now_ns + t.saturating_duration_since(now).as_nanos() as u64),
                    },
                )
            })
            .collect();
        let (data, w) = state::encode(
            header,
            &self.budgets.export(now, now_ns),
            &self.tracker.export(),
            &acts,
            state::MAX_STATE_BYTES,
        );
        let written = state::write_atomic(&path, &data);
        drop(data);
        // The encoded file (up to MAX_STATE_BYTES) and the export it came from: not kept as
        // resident memory.
        crate::heap::trim();
        self.persist.last_cost = now.elapsed();
        match written {
            Ok(()) => {
                if self.persist.failing {
                    log::info!("state saved to {} again", path.display());
                }
                self.persist.failing = false;
                if w.left_out > 0 && !self.persist.warned_full {
                    self.persist.warned_full = true;
                    log::warn!(
                        "state file {} at its bound of {} bytes: {} sockets left out (those \
                         with no stall and no history first)",
                        path.display(),
                        state::MAX_STATE_BYTES,
                        w.left_out
                    );
                }
                log::debug!(
                    "state saved: {} bytes, {} sockets in {} us",
                    w.bytes,
                    w.sockets,
                    now.elapsed().as_micros()
                );
            }
            Err(e) => {
                if !self.persist.failing {
                    log::warn!("saving state to {}: {e}", path.display());
                }
                self.persist.failing = true;
            }
        }
    }
}
