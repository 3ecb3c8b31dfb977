//! The act stage of the tick: the guard chain, live re-verification and budgets for each
//! candidate, then the resets in netlink batches, with retries and backoff.

use super::report::owner_of;
use super::verify::local_listener;
use super::{target_of, verify_live, Agent, DiagPath, SockSource, NO_RULE};
use crate::classify::StallClass;
use crate::event::{self, Event, SocketFields};
use crate::guards::{self, Refusal};
use crate::policy::Selection;
use crate::reset::{self, ResetError, Target};
use crate::snapshot::Snapshot;
use anyhow::Result;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Transient reset-path errors are retried this many times in all, backing off.
pub(super) const MAX_ATTEMPTS: u32 = 6;
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Whether a reset-path error can succeed when tried again later.
pub(super) fn transient(e: &ResetError) -> bool {
    e.is_transient()
}

/// A stalled socket the policy wants reset, this tick.
pub(super) struct Candidate<'p> {
    pub(super) snap: Snapshot,
    pub(super) sel: Selection<'p>,
    pub(super) class: StallClass,
}

/// A reset that passed every guard, done in one batch at the end of the tick.
pub(super) struct PendingReset {
    pub(super) cookie: u64,
    pub(super) target: Target,
    pub(super) fields: SocketFields,
    pub(super) bytes_still_queued: u64,
}

/// What an enforcement decision did, so each stall produces its guard event once.
#[derive(Default)]
pub(super) struct ActState {
    pub(super) skipped_guard: Option<event::SkipGuard>,
    pub(super) done: bool,
    /// Failed attempts with transient errors, and when to try again.
    pub(super) attempts: u32,
    pub(super) retry_at: Option<Instant>,
}

/// What the guard chain asks the kernel, for one candidate of the tick.
pub(super) struct AskKernel<'a, K: ?Sized> {
    kern: &'a mut K,
    snap: &'a Snapshot,
    orphans_safe: bool,
}

impl<K: DiagPath + ?Sized> guards::Ask for AskKernel<'_, K> {
    fn local_listener(&mut self) -> Option<bool> {
        local_listener(self.kern, &target_of(self.snap))
    }
    fn orphans_safe(&mut self) -> Result<(), String> {
        if self.orphans_safe {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    /// The event fields of a stalled socket as a reset event reports it: stalled since its
    /// last progress, with its rule, action and current evidence.
    fn stalled_fields(
        &mut self,
        snap: &Snapshot,
        class: StallClass,
        sel: &Selection,
    ) -> SocketFields {
        let ev = self.tracker.evidence(snap.cookie);
        self.socket_fields(
            snap,
            class,
            snap.since_progress_ms(),
            sel.rule.map(|r| r.name.as_str()),
            sel.action,
            ev.as_ref(),
        )
    }

    pub(super) fn skip(
        &mut self,
        snap: &Snapshot,
        class: StallClass,
        sel: &Selection<'_>,
        guard: event::SkipGuard,
        detail: String,
    ) -> Result<()> {
        if guard == event::SkipGuard::PartitionHold {
            self.hold.held += 1;
        }
        let act = self.acts.entry(snap.cookie).or_default();
        if act.skipped_guard == Some(guard) {
            return Ok(()); // said once per stall and guard
        }
        act.skipped_guard = Some(guard);
        self.counts.skipped += 1;
        let rule = sel.rule.map(|r| r.name.as_str());
        self.metrics
            .reset(rule, crate::metrics::ResetResult::Skipped(guard));
        let f = self.stalled_fields(snap, class, sel);
        self.out.emit(&Event::ResetSkipped {
            socket: f,
            guard,
            detail,
        });
        Ok(())
    }

    /// A reset attempt failed. Transient errors are tried again with backoff (at most
    /// [`MAX_ATTEMPTS`] in all); anything else is final for this stall.
    pub(super) fn failed(&mut self, c: &Candidate<'_>, e: &ResetError) -> Result<()> {
        let retry_in = self.note_failure(c.snap.cookie, e);
        let rule = c.sel.rule.map(|r| r.name.as_str());
        self.metrics.reset(
            rule,
            crate::metrics::ResetResult::failure(retry_in.is_some()),
        );
        let f = self.stalled_fields(&c.snap, c.class, &c.sel);
        self.out.emit(&Event::ResetFailed {
            socket: f,
            errno: e.errno,
            error: reset::errno_name(e.errno).to_string(),
            meaning: e.meaning.clone(),
            retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
        });
        Ok(())
    }

    /// Count a failed attempt for `cookie`: a transient error is scheduled again after a
    /// backoff (returned), anything else — or the last attempt — is final for the stall.
    pub(super) fn note_failure(&mut self, cookie: u64, e: &ResetError) -> Option<Duration> {
        let tick = self.cfg.tick.max(Duration::from_millis(100));
        let act = self.acts.entry(cookie).or_default();
        act.attempts += 1;
        if transient(e) && act.attempts < MAX_ATTEMPTS {
            // Tried again while it stays stalled (and passes the guards again).
            let backoff = tick
                .saturating_mul(1u32 << (act.attempts - 1).min(16))
                .min(MAX_BACKOFF);
            act.done = false;
            act.retry_at = Some(Instant::now() + backoff);
            self.counts.retried += 1;
            Some(backoff)
        } else {
            // One final failure per stall: a socket that cannot be reset is not hammered.
            act.done = true;
            self.counts.failed += 1;
            None
        }
    }

    /// Steps 1–6 of the guard chain ([`guards::Guards::check`]): those that need no live
    /// lookup of the socket itself.
    pub(super) fn static_guard(&mut self, c: &Candidate<'_>) -> Option<(event::SkipGuard, String)> {
        let after_hold = c.class == StallClass::NoAck
            && self.hold_ended.is_some_and(|ended_ns| {
                guards::waits_after_hold(
                    ended_ns,
                    c.snap.times.last_progress_ns,
                    c.snap.times.last_retrans_ns,
                    c.snap.now_ns,
                )
            });
        let g = guards::Guards {
            protect_ports: &self.policy.guards.protect_ports,
            reset_works: self.reset_works,
            hold: self.hold.active(),
            after_hold,
            dry_run: self.cfg.dry_run,
        };
        let subject = guards::Subject {
            local_port: c.snap.local.port(),
            remote_port: c.snap.remote.port(),
            // A candidate is stalled in the map by construction.
            not_wedged: None,
            orphan: c.snap.orphan,
        };
        let mut ask = AskKernel {
            kern: &mut self.kern,
            snap: &c.snap,
            orphans_safe: self.orphans_safe,
        };
        g.check(&subject, &mut ask).map(guards::Skip::into_parts)
    }

    /// Apply the reset action to this tick's stalled sockets, behind every guard: the
    /// static guards, then a batched live lookup in the kernel (re-verification), then the
    /// budgets (a mass disconnect's `no_ack` stalls bypass them). Survivors are queued for
    /// [`Agent::flush_resets`].
    pub(super) fn enforce(
        &mut self,
        candidates: Vec<Candidate<'_>>,
        selected: &HashMap<&str, u64>,
    ) -> Result<()> {
        let now = Instant::now();
        let mut verify = Vec::new();
        for c in candidates {
            if let Some(a) = self.acts.get(&c.snap.cookie) {
                if a.done || a.retry_at.map(|t| t > now).unwrap_or(false) {
                    continue;
                }
            }
            if let Some((guard, detail)) = self.static_guard(&c) {
                self.skip(&c.snap, c.class, &c.sel, guard, detail)?;
                continue;
            }
            verify.push(c);
        }
        if verify.is_empty() {
            return Ok(());
        }
        // Re-verify right before acting, in the kernel itself (batched).
        let targets: Vec<Target> = verify.iter().map(|c| target_of(&c.snap)).collect();
        let live = self.kern.lookup_many(&targets);
        let mut verified = Vec::new();
        for (c, r) in verify.into_iter().zip(live) {
            match r {
                Ok(Some(d)) => match verify_live(&c.snap, c.class, &d) {
                    Ok(()) => verified.push(c),
                    Err(why) => {
                        if d.send_q == 0 && d.recv_q == 0 && self.src.remove(c.snap.cookie) {
                            // The map kept an entry the kernel has drained: drop it, so the
                            // next tick records the recovery.
                            self.map_stale += 1;
                        }
                        self.skip(
                            &c.snap,
                            c.class,
                            &c.sel,
                            event::SkipGuard::NotStalledAnymore,
                            format!("{why}; not resetting"),
                        )?;
                    }
                },
                Ok(None) => self.skip(
                    &c.snap,
                    c.class,
                    &c.sel,
                    event::SkipGuard::NotStalledAnymore,
                    "the kernel has no such socket any more (closed before the reset)".into(),
                )?,
                Err(e) => self.failed(&c, &e)?,
            }
        }
        let budgets = self.policy.guards.budgets();
        let mass_min = self.policy.guards.mass_disconnect_min;
        for c in verified {
            let rule = c.sel.rule.map(|r| r.name.as_str()).unwrap_or(NO_RULE);
            let net = guards::network_of(c.snap.remote.ip());
            let mass = budgets.max_resets_per_minute > 0
                && c.class == StallClass::NoAck
                && match self.nets.mass_disconnect(&net, mass_min) {
                    Some((first, n)) => {
                        if first {
                            self.metrics.mass_disconnect();
                            log::warn!("mass disconnect: {n} silent sockets in {net}");
                            self.out.emit(&Event::MassDisconnect {
                                network: net.to_string(),
                                silent_sockets: u64::from(n),
                            });
                        }
                        true
                    }
                    None => false,
                };
            if mass {
                self.nets.mass_reset(&net);
                self.budgets.record(rule, now);
            } else {
                let n = selected.get(rule).copied().unwrap_or(0);
                if let Err(refusal) = self.budgets.take(&budgets, rule, net, n, now) {
                    let (guard, detail) = match refusal {
                        Refusal::Disabled => (
                            event::SkipGuard::RateLimit,
                            "max_resets_per_minute = 0: resets are disabled".to_string(),
                        ),
                        Refusal::Rule { capacity } => (
                            event::SkipGuard::RateLimit,
                            format!(
                                "rule {rule} used its budget of {capacity} resets per minute \
                                 (max(max_resets_per_minute, reset_share_per_minute × {n} \
                                 sockets it tracks)); will retry while it stays stalled"
                            ),
                        ),
                        Refusal::Network { net, capacity } => (
                            event::SkipGuard::NetworkLimit,
                            format!(
                                "remote network {net} used its share ({capacity} resets per \
                                 minute) of rule {rule}'s budget; will retry while it stays \
                                 stalled"
                            ),
                        ),
                    };
                    self.skip(&c.snap, c.class, &c.sel, guard, detail)?;
                    continue;
                }
            }
            let f = self.stalled_fields(&c.snap, c.class, &c.sel);
            self.acts.entry(c.snap.cookie).or_default().done = true;
            self.pending.push(PendingReset {
                cookie: c.snap.cookie,
                target: target_of(&c.snap),
                fields: f,
                bytes_still_queued: c.snap.queued_bytes,
            });
        }
        Ok(())
    }

    /// Reset every socket this tick decided on, in netlink batches of
    /// [`reset::DESTROY_BATCH`] (thousands of wedges at once is the mass-disconnect case),
    /// and report each. Intent first: before each batch goes to the kernel, one
    /// `reset_intent` line names its sockets, so an agent that dies between the destroy and
    /// the `socket_reset` lines has still left a record of what it did.
    pub(super) fn flush_resets(&mut self) -> Result<()> {
        let mut pending = std::mem::take(&mut self.pending);
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(reset::DESTROY_BATCH));
            self.flush_batch(pending);
            pending = rest;
        }
        Ok(())
    }

    pub(super) fn flush_batch(&mut self, pending: Vec<PendingReset>) {
        self.out.emit(&Event::ResetIntent {
            sockets: pending
                .iter()
                .map(|p| event::IntentSocket {
                    cookie: p.cookie,
                    netns: p.fields.netns,
                    local: p.fields.local,
                    remote: p.fields.remote,
                    class: p.fields.class,
                    rule: p.fields.rule.clone(),
                })
                .collect(),
        });
        let targets: Vec<Target> = pending.iter().map(|p| p.target.clone()).collect();
        let t0 = Instant::now();
        let results = self.kern.destroy_many(&targets);
        // Per-socket latency is not separable inside a batch: report the batch's mean.
        let latency_us = t0.elapsed().as_micros() as u64 / pending.len() as u64;
        for (p, res) in pending.into_iter().zip(results) {
            match res {
                Ok(()) => {
                    self.counts.done += 1;
                    self.recent.push(crate::status::ResetRow {
                        ts: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                            .to_string(),
                        cookie: p.fields.cookie,
                        local: p.fields.local.to_string(),
                        remote: p.fields.remote.to_string(),
                        class: p.fields.class.as_str().to_string(),
                        rule: p.fields.rule.clone(),
                        stalled_for_ms: p.fields.stalled_for_ms,
                        owner: owner_of(&p.fields),
                    });
                    let rule = p.fields.rule.as_deref();
                    self.metrics.reset(rule, crate::metrics::ResetResult::Done);
                    self.out.emit(&Event::SocketReset {
                        socket: p.fields,
                        bytes_still_queued: p.bytes_still_queued,
                        reset_latency_us: latency_us,
                    });
                }
                Err(e) => {
                    let retry_in = self.note_failure(p.cookie, &e);
                    let rule = p.fields.rule.as_deref();
                    let result = crate::metrics::ResetResult::failure(retry_in.is_some());
                    self.metrics.reset(rule, result);
                    self.out.emit(&Event::ResetFailed {
                        socket: p.fields,
                        errno: e.errno,
                        error: reset::errno_name(e.errno).to_string(),
                        meaning: e.meaning.clone(),
                        retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
                    });
                }
            }
        }
    }
}
