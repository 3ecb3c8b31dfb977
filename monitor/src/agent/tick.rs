//! One tick: read the map and the close notes, classify, select by policy, account the
//! networks, then hand the candidates to the act stage; departures and transitions become
//! events.

use super::act::{ActState, Candidate};
use super::verify::{TCP_CLOSE_WAIT, TCP_ESTABLISHED};
use super::{target_of, Agent, DiagPath, Seen, SockSource, NO_RULE};
use crate::classify::{Evidence, StallClass, Transition};
use crate::event::{self, Event, SocketFields};
use crate::guards::{self, HoldChange, Peer};
use crate::policy::{Action, Selection};
use crate::reset::{Target, TcpDiag};
use crate::snapshot::{monotonic_ns, Snapshot};
use anyhow::Result;
use monitor_common::SockState;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The tick prefetches the records of this many sockets at a time before working on them
/// (`Agent::prefetch`).
const AHEAD: usize = 8;

/// How often a tick sweeps the holder cache and the dormant histories for entries to drop.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Close notes not matched to a departed socket are dropped after this long.
pub(super) const NOTE_KEEP: Duration = Duration::from_secs(30);

/// A socket whose holder `find_holders` looks for when none is known: no write seen on it
/// (so no writer identity from the kernel side), and a file and a cookie to find it by.
fn needs_holder(st: &SockState) -> bool {
    st.flags & monitor_common::flags::HAVE_WRITER == 0 && st.sock_ino != 0 && st.cookie != 0
}

/// Whether `seen`, a tracked socket [`needs_holder`] says has no writer identity, is looked
/// for now: with an ACK hook once it stayed tracked from one tick to the next; without one
/// (`--trouble-hooks`) once it also stayed in trouble past the lookup after its first
/// (`sends::SendSeen::stayed_in_trouble`), so a stream that retransmitted once and
/// recovered, the common case on a busy streaming server, never costs a `/proc` walk.
fn holder_wanted(seen: &super::Seen, acks_seen: bool) -> bool {
    seen.holder.is_none()
        && (acks_seen
            || seen
                .send_seen
                .as_deref()
                .is_some_and(super::sends::SendSeen::stayed_in_trouble))
}

/// Address-keyed kernels only: the cookie of a socket nobody asked about yet (the lookup
/// is what makes the kernel assign it).
pub(super) fn resolve_cookie<K: DiagPath + ?Sized>(kern: &mut K, st: &SockState) -> Option<u64> {
    resolve_diag(kern, st).map(|d| d.cookie)
}

/// [`resolve_cookie`] with the whole answer: the socket as sock_diag sees it now, which
/// serves as its first progress lookup too (`sends::look_up_sends`), so a socket newly
/// tracked under address keys costs one lookup, not two.
fn resolve_diag<K: DiagPath + ?Sized>(kern: &mut K, st: &SockState) -> Option<TcpDiag> {
    let snap = Snapshot::from_state(st, 0);
    let target = Target {
        cookie: 0,
        ..target_of(&snap)
    };
    match kern.lookup(&target) {
        Ok(d) => d,
        Err(e) => {
            log::debug!("cookie lookup of {} -> {}: {e}", snap.local, snap.remote);
            None
        }
    }
}

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn socket_fields(
        &mut self,
        s: &Snapshot,
        class: StallClass,
        stalled_for_ms: u64,
        rule: Option<&str>,
        action: Action,
        evidence: Option<&Evidence>,
    ) -> SocketFields {
        let (cgroup, w) = self.owners.of(s.cgroup_id);
        SocketFields {
            cookie: s.cookie,
            netns: s.netns,
            family: if s.family == crate::snapshot::AF_INET6 {
                event::Family::Inet6
            } else {
                event::Family::Inet
            },
            local: s.local,
            remote: s.remote,
            pid: s.pid,
            comm: s.comm.map(|c| c.to_string()),
            cgroup_id: s.cgroup_id,
            cgroup,
            container_id: w.container_id,
            container_runtime: w.runtime,
            pod_uid: w.pod_uid,
            pod_namespace: w.pod_namespace,
            pod_name: w.pod_name,
            class,
            queued_bytes: s.queued_bytes,
            unacked_bytes: s.unacked_bytes,
            snd_wnd: s.snd_wnd,
            retransmits: s.retransmits,
            stalled_for_ms,
            rule: rule.map(str::to_string),
            action,
            evidence: evidence.cloned().unwrap_or_default(),
            recv_unread: s.recv_unread,
        }
    }

    /// One tick. The map is read first and the close notes after it: the kernel side puts a
    /// close's note on the ring before it removes the entry, so every entry this read
    /// misses because of a close has its note among those drained right after (unless the
    /// ring overflowed: then the kernel is asked). A close is never taken for a recovery.
    pub fn tick(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let kern = &mut self.kern;
        // Address keys: what the lookups naming new sockets' cookies found of them.
        let mut resolved: HashMap<u64, TcpDiag> = HashMap::new();
        let states = self.src.read_all(&mut |st| {
            let d = resolve_diag(kern, st)?;
            let cookie = d.cookie;
            resolved.insert(cookie, d);
            Some(cookie)
        });
        for n in self.src.drain_closed() {
            self.closed.insert(n.cookie, (n.ts_ns, t0));
        }
        let read_us = t0.elapsed().as_micros();
        self.last_read_us = read_us as u64;
        self.find_holders(&states, t0);
        let now_ns = monotonic_ns();
        // No read hook: what sock_diag says of sockets that may be waiting on a read.
        let reads = self.look_up_reads(&states, now_ns);
        // No ACK hook (`--trouble-hooks`): what sock_diag says of the tracked sockets'
        // progress (a socket `reads` looked up is answered from there).
        let sends = self.look_up_sends(&states, now_ns, &reads, resolved);
        let mut drained: Vec<u64> = Vec::new();
        let policy = std::sync::Arc::clone(&self.policy);
        self.selector.begin(&policy);
        self.ticks += 1;
        let tick = self.ticks;
        // Tracked sockets each reset rule selects this tick (its budget scales with them).
        let mut selected: HashMap<&str, u64> = HashMap::new();
        let mut candidates: Vec<Candidate<'_>> = Vec::new();
        self.nets.begin();
        // Records this tick stamped: when that is all of them, nothing left the map.
        let mut stamped = 0usize;
        // Records left with no writer and no holder (`find_holders` looks next tick).
        let mut holders_pending = false;
        let acks_seen = self.src.acks_seen();
        for (i, st) in states.iter().enumerate() {
            if i == 0 {
                self.prefetch(&states[..states.len().min(AHEAD)]);
            }
            if i % AHEAD == 0 {
                // One group ahead: its lines arrive while this group is worked on.
                let next = states.len().min(i + AHEAD);
                self.prefetch(&states[next..states.len().min(next + AHEAD)]);
            }
            let mut snap = Snapshot::from_state(st, now_ns);
            // One lookup: the socket's record, stamped with this tick, and its rule.
            let seen = match self.last.entry(snap.cookie) {
                std::collections::hash_map::Entry::Occupied(o) => {
                    let seen = o.into_mut();
                    stamped += usize::from(seen.tick != tick);
                    seen
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    stamped += 1;
                    v.insert(Seen::new(snap.clone(), tick))
                }
            };
            if snap.pid.is_none() {
                if seen.holder.is_none() {
                    seen.holder = self.holders.get(snap.cookie);
                }
                if let Some(h) = seen.holder {
                    snap.pid = Some(h.pid);
                    snap.comm = Some(h.comm);
                    snap.cgroup_id = h.cgroup_id;
                }
            }
            if let Some(d) = reads.get(&snap.cookie) {
                if super::reads::fold(&mut seen.read_seen, &mut snap, d) {
                    drained.push(snap.cookie);
                }
            }
            super::reads::apply_seen(&seen.read_seen, &mut snap);
            // No ACK hook: a socket whose trouble is over leaves the map unless a stall is
            // active on it (decided below, after this tick's classification).
            let mut recovered = false;
            if !sends.is_empty() || seen.send_seen.is_some() {
                let mut sent = seen.send_seen.as_deref().copied();
                if let Some(d) = sends.get(&snap.cookie).or_else(|| reads.get(&snap.cookie)) {
                    match super::sends::fold(&mut sent, &mut snap, d) {
                        super::sends::Found::Drained => {
                            if drained.last() != Some(&snap.cookie) {
                                drained.push(snap.cookie);
                            }
                        }
                        super::sends::Found::Recovered => recovered = true,
                        super::sends::Found::Stays => {}
                    }
                }
                super::sends::apply_seen(&sent, &mut snap);
                seen.send_seen = sent.map(Box::new);
            }
            holders_pending |= needs_holder(st) && holder_wanted(seen, acks_seen);
            // The record keeps this tick's snapshot; the rest of the tick reads it there
            // (copied out only for an event or a reset candidate, which are rare).
            seen.snap = snap;
            seen.tick = tick;
            let rule = self
                .selector
                .rule(&policy, &mut self.owners, &seen.snap, &mut seen.sel, t0);
            let sel = policy.selection(rule);
            if let Some(r) = sel.rule {
                *selected.entry(r.name.as_str()).or_default() += 1;
            }
            let snap = &seen.snap;
            self.nets.observe(
                &Peer {
                    remote: snap.remote.ip(),
                    unacked_bytes: snap.unacked_bytes,
                    last_ack_ns: snap.times.last_ack_ns,
                    first_seen_ns: snap.times.first_seen_ns,
                },
                now_ns,
            );
            let obs = self.tracker.observe(snap, sel.thresholds);
            let cookie = snap.cookie;
            let rule_name = sel.rule.map(|r| r.name.as_str());
            let candidate = self
                .tracker
                .active(cookie)
                .map(|a| a.class)
                .filter(|c| sel.resets(*c));
            let eventful = !obs.recovered.is_empty()
                || obs.transition.is_some()
                || obs.recv_transition.is_some();
            let snap = (eventful || candidate.is_some()).then(|| snap.clone());
            for ep in &obs.recovered {
                self.record_episode(&sel, rule_name, cookie, ep)?;
            }
            if let Some(snap) = &snap {
                for tr in [obs.transition, obs.recv_transition].into_iter().flatten() {
                    self.emit_transition(snap, tr, rule_name, sel.action, None)?;
                }
            }
            if recovered
                && self.tracker.active(cookie).is_none()
                && self.tracker.active_recv(cookie).is_none()
                && drained.last() != Some(&cookie)
            {
                drained.push(cookie);
            }
            self.metrics.count_active(&self.tracker, cookie, rule_name);
            if let (Some(class), Some(snap)) = (candidate, snap) {
                candidates.push(Candidate { snap, sel, class });
            }
        }
        self.holders_pending = holders_pending;
        if stamped < self.last.len() {
            self.departures(tick, now_ns)?;
        }
        // Read everything and nothing queued (found by `look_up_reads`), or, without an ACK
        // hook, nothing queued or the trouble over (`look_up_sends`): out of the map, so the
        // next tick takes the socket as drained.
        for cookie in drained {
            self.src.remove(cookie);
        }
        // Whole-table sweeps (forgotten holders, old dormant histories) are not needed
        // every tick: their bounds hold within PRUNE_EVERY.
        let prune = self.last_prune.elapsed() >= PRUNE_EVERY;
        if prune {
            self.last_prune = t0;
            let last = &self.last;
            self.holders.prune(|c| last.contains_key(&c), t0);
        }
        let report = self.nets.finish(&policy.guards.networks(), now_ns);
        self.update_hold(&report)?;
        self.enforce(candidates, &selected)?;
        self.flush_resets()?;
        self.make_room(states.len())?;
        self.check_stale()?;
        self.kern.release_idle();
        self.closed.retain(|_, (_, at)| at.elapsed() < NOTE_KEEP);
        self.budgets.prune(Instant::now());
        if prune {
            self.tracker
                .prune(now_ns, Duration::from_secs(600), 100_000);
        }
        self.last_sweep_us = t0.elapsed().as_micros() as u64;
        log::debug!(
            "tick: {} sockets, map read {read_us} us, whole tick {} us",
            states.len(),
            self.last_sweep_us
        );
        // The next read fills the same buffer (no fresh pages to fault in every tick).
        self.src.recycle(states);
        self.metrics_tick(t0.elapsed());
        if self.last_stats.elapsed() >= self.cfg.stats_interval {
            self.emit_stats()?;
        }
        if self.persist.due() {
            self.save_state();
        }
        Ok(())
    }

    /// Start bringing the agent's and the tracker's records of the next few sockets into
    /// cache before the tick works on them (`crate::prefetch`).
    fn prefetch(&self, next: &[SockState]) {
        for st in next {
            if let Some(seen) = self.last.get(&st.cookie) {
                crate::prefetch::record(seen);
            }
            self.tracker.prefetch(st.cookie);
        }
    }

    /// Find the processes holding the sockets that stayed in the map since the last tick
    /// with no write seen (no writer identity from the kernel side): one `/proc` walk for
    /// all of them, none when there are none (`identity/holders.rs`).
    ///
    /// The records are looked through only when the last tick left one such socket
    /// (`holders_pending`): on a node whose tracked sockets all have a known writer or
    /// holder (a streaming server: no per-write hook, holders found once) that look costs
    /// a hash lookup per tracked socket per tick for nothing.
    fn find_holders(&mut self, states: &[SockState], now: Instant) {
        if !self.holders_pending {
            return;
        }
        let acks_seen = self.src.acks_seen();
        let wanted: Vec<(u64, u32)> = states
            .iter()
            .filter(|st| {
                needs_holder(st)
                    && self
                        .last
                        .get(&st.cookie)
                        .is_some_and(|seen| holder_wanted(seen, acks_seen))
                    && self.holders.wanted(st.cookie, now)
            })
            .map(|st| (st.cookie, st.sock_ino))
            .collect();
        let src = &mut self.src;
        self.holders
            .find_with(&wanted, now, |inodes| src.holder_pass(inodes));
        if !wanted.is_empty() {
            log::debug!(
                "holders: looked for {} socket(s) in /proc in {} us",
                wanted.len(),
                self.holders.last_walk_us
            );
            if self.holders.last_walk_us >= 50_000 {
                log::info!(
                    "looking for the processes holding {} tracked socket(s) took {} ms ({}; \
                     look {} of this agent)",
                    wanted.len(),
                    self.holders.last_walk_us / 1000,
                    if self.holders.last_by_kernel {
                        "one pass of the kernel's holder iterator"
                    } else {
                        "one walk of /proc/*/fd"
                    },
                    self.holders.walks
                );
            }
        }
    }

    /// Sockets gone from the kernel map since the last tick: closed, or drained.
    pub(super) fn departures(&mut self, tick: u64, now_ns: u64) -> Result<()> {
        let gone: Vec<u64> = self
            .last
            .iter()
            .filter(|(_, s)| s.tick != tick)
            .map(|(c, _)| *c)
            .collect();
        for cookie in gone {
            let Seen { snap, mut sel, .. } = self.last.remove(&cookie).expect("key from map");
            let note = self.closed.remove(&cookie).map(|(ts, _)| ts);
            let stalled =
                self.tracker.active(cookie).is_some() || self.tracker.active_recv(cookie).is_some();
            let was_closed = match note {
                Some(_) => true,
                // No note (the ring overflowed): for a stalled socket, where it matters
                // (recovery or close), ask the kernel; anything but a live open socket is a
                // close. Unstalled sockets are taken as drained.
                None if stalled => match self.kern.lookup(&target_of(&snap)) {
                    Ok(Some(d)) => !(d.state == TCP_ESTABLISHED || d.state == TCP_CLOSE_WAIT),
                    _ => true,
                },
                None => false,
            };
            if !was_closed {
                // Drained: the peer acked everything.
                self.nets.heard(snap.remote.ip(), now_ns);
            }
            let t = note.unwrap_or(now_ns);
            let last_evidence = self.tracker.evidence(cookie);
            let dep = self.tracker.forget_detailed(cookie, was_closed, t);
            let policy = std::sync::Arc::clone(&self.policy);
            let rule =
                self.selector
                    .rule(&policy, &mut self.owners, &snap, &mut sel, Instant::now());
            let sel = policy.selection(rule);
            let rule_name = sel.rule.map(|r| r.name.as_str());
            if let Some(ep) = &dep.recovered {
                self.record_episode(&sel, rule_name, cookie, ep)?;
            }
            for tr in [dep.transition, dep.recv_transition].into_iter().flatten() {
                self.emit_transition(&snap, tr, rule_name, sel.action, last_evidence.clone())?;
            }
            self.acts.remove(&cookie);
        }
        Ok(())
    }

    pub(super) fn update_hold(&mut self, report: &guards::NetReport) -> Result<()> {
        let max = self.policy.guards.partition_max_hold;
        let Some(change) = self.hold.update(report.partition, Instant::now(), max) else {
            return Ok(());
        };
        let state = match change {
            HoldChange::Started => "started",
            HoldChange::Ended => "ended",
            HoldChange::Expired => "expired",
        };
        if change == HoldChange::Started {
            self.metrics.partition_hold_started();
        }
        // Stalls from before a hold's end wait for their sockets' next retransmission
        // (`guards::waits_after_hold`); not after an expired hold (resets resume).
        self.hold_ended = match change {
            HoldChange::Ended => Some(monotonic_ns()),
            _ => None,
        };
        if change == HoldChange::Ended {
            // A stall still held now waits for another reason: say it (once) again.
            for act in self.acts.values_mut() {
                if act.skipped_guard == Some(event::SkipGuard::PartitionHold) {
                    act.skipped_guard = None;
                }
            }
        }
        log::warn!(
            "partition hold {state}: {} remote networks silent, {} alive",
            report.silent,
            report.alive
        );
        self.out.emit(&Event::PartitionHold {
            state: state.into(),
            silent_networks: report.silent as u64,
            alive_networks: report.alive as u64,
            networks: report
                .silent_sample
                .iter()
                .map(|(n, c)| format!("{n} ({c} silent)"))
                .collect(),
            resets_held: self.hold.held,
        });
        Ok(())
    }

    pub(super) fn record_episode(
        &mut self,
        sel: &Selection<'_>,
        rule_name: Option<&str>,
        cookie: u64,
        ep: &crate::classify::Episode,
    ) -> Result<()> {
        let threshold_ms = sel.thresholds.threshold_for(ep.class).as_millis() as u64;
        self.metrics.episode(rule_name, ep);
        if let Some(w) = self.calibration.record(
            rule_name.unwrap_or(NO_RULE),
            threshold_ms,
            sel.resets(ep.class),
            cookie,
            ep,
        ) {
            self.metrics.threshold_warning(rule_name, w.class);
            self.out.emit(&Event::ThresholdWarning {
                rule: (w.rule != NO_RULE).then_some(w.rule),
                class: w.class,
                threshold_ms: w.threshold_ms,
                observed_ms: w.observed_ms,
                cookie: w.cookie,
                would_reset: w.would_reset,
                advice: w.advice,
            });
        }
        Ok(())
    }

    /// `evidence`: for a socket already forgotten by the tracker, its last evidence.
    pub(super) fn emit_transition(
        &mut self,
        snap: &Snapshot,
        tr: Transition,
        rule: Option<&str>,
        action: Action,
        evidence: Option<Evidence>,
    ) -> Result<()> {
        let acted = self.acts.get(&snap.cookie).map(|a| a.done).unwrap_or(false);
        self.metrics.transition(&tr, rule);
        let ev = match &tr {
            Transition::Started { evidence, .. } => Some(evidence.clone()),
            _ => evidence.or_else(|| self.tracker.evidence(snap.cookie)),
        };
        let f = self.socket_fields(
            snap,
            tr.class(),
            tr.stalled_for_ms(),
            rule,
            action,
            ev.as_ref(),
        );
        match tr {
            Transition::Started { .. } => {
                if tr.class().is_send_side() {
                    self.acts.insert(snap.cookie, ActState::default());
                }
                self.out.emit(&Event::StallStarted(f));
            }
            Transition::Cleared { .. } => {
                if tr.class().is_send_side() {
                    self.acts.remove(&snap.cookie);
                }
                self.out.emit(&Event::StallCleared(f));
            }
            // Our own reset closed it: the socket_reset event already said so.
            Transition::Closed { .. } if acted && tr.class().is_send_side() => {}
            Transition::Closed { .. } => self.out.emit(&Event::StallClosed(f)),
        }
        Ok(())
    }
}
