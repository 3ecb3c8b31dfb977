//! The agent's tick: read per-socket state → classify → policy → act → events.

use crate::classify::{Calibration, Evidence, StallClass, Tracker, Transition};
use crate::event::{self, Event, EventWriter, EvidenceFields, SocketFields};
use crate::identity::CgroupPaths;
use crate::policy::{Action, Policy, Selection, SocketIdentity};
use crate::probes::Probes;
use crate::reset::{self, Destroyer, Target};
use crate::snapshot::{monotonic_ns, Snapshot};
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// SIGTERM and SIGINT, taken over from their default (killing) action.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside the runtime.
    pub fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

pub struct Config {
    pub policy: Policy,
    pub tick: Duration,
    pub stats_interval: Duration,
    pub output: Option<PathBuf>,
    pub dry_run: bool,
    pub max_sockets: u32,
    pub bpf_stats: bool,
    /// Stop after this long (tests, benchmarks); None = until SIGINT/SIGTERM.
    pub duration: Option<Duration>,
}

/// A reset decided this tick, done in one batch at the end of the tick.
struct PendingReset {
    target: Target,
    fields: SocketFields,
    bytes_still_queued: u64,
}

/// What an enforcement decision did, so each stall produces its guard event once.
#[derive(Default)]
struct ActState {
    skipped_guard: Option<event::SkipGuard>,
    done: bool,
}

/// Global reset rate limit: at most `per_minute` resets in any sliding minute.
struct RateLimit {
    per_minute: u32,
    recent: std::collections::VecDeque<Instant>,
}

impl RateLimit {
    fn allow(&mut self, now: Instant) -> bool {
        while let Some(t) = self.recent.front() {
            if now.duration_since(*t) >= Duration::from_secs(60) {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if (self.recent.len() as u32) < self.per_minute {
            self.recent.push_back(now);
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct ResetCounts {
    done: u64,
    failed: u64,
    skipped: u64,
}

pub struct Agent {
    cfg: Config,
    policy: std::sync::Arc<Policy>,
    probes: Probes,
    out: EventWriter,
    tracker: Tracker,
    calibration: Calibration,
    cgroups: CgroupPaths,
    destroyer: Destroyer,
    reset_works: bool,
    /// The start-up self-test found destroying orphans safe on this kernel.
    orphans_safe: bool,
    rate: RateLimit,
    counts: ResetCounts,
    /// Last snapshot of every socket present in the kernel map at the previous tick.
    last: HashMap<u64, Snapshot>,
    acts: HashMap<u64, ActState>,
    pending: Vec<PendingReset>,
    started: Instant,
    last_stats: Instant,
    last_sweep_us: u64,
}

/// utime + stime of this process, ms.
pub fn cpu_ms() -> u64 {
    // SAFETY: rusage is plain data.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        (us(r.ru_utime) + us(r.ru_stime)) / 1000
    }
}

fn evidence_fields(e: &Evidence) -> EvidenceFields {
    EvidenceFields {
        recovered_episodes: e.recovered_episodes,
        longest_gap_ms: e.longest_gap_ms,
        bytes_acked_last_window: e.bytes_acked_last_window,
        effective_threshold_ms: e.effective_threshold_ms,
        threshold_reason: e.threshold_reason.clone(),
    }
}

const NO_RULE: &str = "(defaults)";

/// The socket of `snap` as a SOCK_DESTROY / lookup target (cookie and 4-tuple).
fn target_of(snap: &Snapshot) -> Target {
    Target {
        cookie: snap.cookie,
        netns: snap.netns,
        family: snap.family,
        local: snap.local,
        remote: snap.remote,
        pid_hint: snap.pid,
        // 0: the eBPF side does not report sk_bound_dev_if yet.
        ifindex: 0,
    }
}

impl Agent {
    /// Validate, probe the reset path, load and attach. Emits `agent_started`.
    pub fn start(cfg: Config) -> Result<Agent> {
        let mut out = EventWriter::open(cfg.output.as_deref())?;
        // Probe the reset path before our hooks exist, so the probe's own wedge is not tracked.
        let wants_reset = cfg.policy.rules.iter().any(|r| r.action == Action::Reset);
        // On kernels where inet_diag/tcp_diag are modules, SOCK_DESTROY needs them loaded.
        let modules = reset::ensure_diag_modules();
        let mut probe = reset::self_probe();
        match &modules {
            Ok(loaded) if !loaded.is_empty() => {
                probe.detail = format!("loaded {}; {}", loaded.join(", "), probe.detail)
            }
            Err(why) if !probe.works => probe.detail = format!("{}; {why}", probe.detail),
            _ => {}
        }
        // Before the 2024 tcp_abort fix, destroying an orphan could leave it with no timer
        // forever: decided by a self-test, never by the version string.
        let orphan = if probe.works {
            reset::orphan_probe()
        } else {
            reset::OrphanReport {
                safe: false,
                detail: "not tested: SOCK_DESTROY does not work here (see reset_path); orphans \
                         are never reset"
                    .into(),
            }
        };
        if wants_reset && !orphan.safe {
            log::warn!("orphaned sockets will not be reset: {}", orphan.detail);
        }
        if wants_reset && !probe.works {
            log::warn!(
                "reset path unavailable ({}); every reset will be reported as reset_skipped",
                probe.detail
            );
        }
        let (kbtf, offsets, offsets_source) = crate::btf::load_kernel()?;
        let probes = Probes::load(&kbtf, &offsets, cfg.max_sockets, cfg.bpf_stats)?;
        drop(kbtf);
        let mode = if !wants_reset {
            event::Mode::Observe
        } else if cfg.dry_run {
            event::Mode::DryRun
        } else if probe.works {
            event::Mode::Enforce
        } else {
            event::Mode::Observe
        };
        out.write(&Event::AgentStarted {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            kernel: crate::btf::kernel_release(),
            hooks: probes.hook_reports().to_vec(),
            degraded: probes.degraded().to_vec(),
            socket_key: if probes.key_by_addr() {
                "address"
            } else {
                "cookie"
            }
            .into(),
            offsets_source,
            mode,
            reset_path: event::ResetPath {
                works: probe.works,
                detail: probe.detail.clone(),
            },
            orphan_reset: event::OrphanReset {
                safe: orphan.safe,
                detail: orphan.detail.clone(),
            },
            policy: cfg.policy.source.as_ref().map(|p| p.display().to_string()),
            tick_ms: cfg.tick.as_millis() as u64,
            max_sockets: probes.max_sockets(),
        })?;
        let rate = RateLimit {
            per_minute: cfg.policy.guards.max_resets_per_minute,
            recent: Default::default(),
        };
        Ok(Agent {
            policy: std::sync::Arc::new(cfg.policy.clone()),
            probes,
            out,
            tracker: Tracker::new(),
            calibration: Calibration::new(),
            cgroups: CgroupPaths::default(),
            destroyer: Destroyer::new(),
            reset_works: probe.works,
            orphans_safe: orphan.safe,
            rate,
            counts: ResetCounts::default(),
            last: HashMap::new(),
            acts: HashMap::new(),
            pending: Vec::new(),
            started: Instant::now(),
            last_stats: Instant::now(),
            last_sweep_us: 0,
            cfg,
        })
    }

    /// Run ticks until a signal or the configured duration.
    /// `signals` must be created before [`Agent::start`], so a SIGTERM right after
    /// `agent_started` is already a clean stop.
    pub async fn run(mut self, signals: Signals) -> Result<()> {
        let Signals { mut term, mut int } = signals;
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = self.cfg.duration.map(|d| tokio::time::Instant::now() + d);
        let reason = loop {
            let sleep_until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => self.tick()?,
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = sleep_until => break "duration elapsed",
            }
        };
        self.emit_stats()?;
        self.out.write(&Event::AgentStopped {
            reason: reason.to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        })?;
        // Dropping `self.probes` detaches every hook.
        Ok(())
    }

    fn socket_fields(
        &mut self,
        s: &Snapshot,
        class: StallClass,
        stalled_for_ms: u64,
        rule: Option<&str>,
        action: Action,
        evidence: Option<&Evidence>,
    ) -> SocketFields {
        let cgroup = s.cgroup_id.and_then(|id| self.cgroups.path(id));
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
            comm: s.comm.clone(),
            cgroup_id: s.cgroup_id,
            cgroup,
            class,
            queued_bytes: s.queued_bytes,
            unacked_bytes: s.unacked_bytes,
            snd_wnd: s.snd_wnd,
            retransmits: s.retransmits,
            stalled_for_ms,
            rule: rule.map(str::to_string),
            action: event_action(action),
            evidence: evidence.map(evidence_fields).unwrap_or(EvidenceFields {
                recovered_episodes: 0,
                longest_gap_ms: 0,
                bytes_acked_last_window: 0,
                effective_threshold_ms: 0,
                threshold_reason: String::new(),
            }),
            recv_unread: s.recv_unread,
        }
    }

    fn tick(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let closed: HashMap<u64, u64> = self
            .probes
            .drain_closed()
            .into_iter()
            .map(|n| (n.cookie, n.ts_ns))
            .collect();
        let destroyer = &mut self.destroyer;
        let states = self.probes.read_all(&mut |st| {
            // Address-keyed kernels only: the cookie of a socket nobody asked about yet.
            let snap = Snapshot::from_state(st, 0);
            let target = Target {
                cookie: 0, // any cookie: this lookup is what makes the kernel assign it
                ..target_of(&snap)
            };
            match destroyer.lookup(&target) {
                Ok(Some(d)) => Some(d.cookie),
                Ok(None) => None,
                Err(e) => {
                    log::debug!("cookie lookup of {} -> {}: {e}", snap.local, snap.remote);
                    None
                }
            }
        });
        let read_us = t0.elapsed().as_micros();
        let now_ns = monotonic_ns();
        let mut present = HashSet::with_capacity(states.len());
        let policy = std::sync::Arc::clone(&self.policy);
        for st in &states {
            let snap = Snapshot::from_state(st, now_ns);
            present.insert(snap.cookie);
            let sel = select(&policy, &mut self.cgroups, &snap);
            let obs = self.tracker.observe(&snap, sel.thresholds);
            let rule_name = sel.rule.map(|r| r.name.as_str());
            for ep in &obs.recovered {
                self.record_episode(&sel, rule_name, snap.cookie, ep)?;
            }
            for tr in [obs.transition, obs.recv_transition].into_iter().flatten() {
                self.emit_transition(&snap, tr, rule_name, sel.action, None)?;
            }
            if let Some(active) = self.tracker.active(snap.cookie) {
                let class = active.class;
                if sel.resets(class) {
                    self.enforce(&snap, &sel, class)?;
                }
            }
            self.last.insert(snap.cookie, snap);
        }
        self.flush_resets()?;
        // Sockets gone from the kernel map since the last tick: closed, or drained.
        let gone: Vec<u64> = self
            .last
            .keys()
            .filter(|c| !present.contains(c))
            .copied()
            .collect();
        for cookie in gone {
            let snap = self.last.remove(&cookie).expect("key from map");
            let was_closed = closed.contains_key(&cookie);
            let t = closed.get(&cookie).copied().unwrap_or(now_ns);
            let last_evidence = self.tracker.evidence(cookie);
            let dep = self.tracker.forget_detailed(cookie, was_closed, t);
            let policy = std::sync::Arc::clone(&self.policy);
            let sel = select(&policy, &mut self.cgroups, &snap);
            let rule_name = sel.rule.map(|r| r.name.as_str());
            if let Some(ep) = &dep.recovered {
                self.record_episode(&sel, rule_name, cookie, ep)?;
            }
            for tr in [dep.transition, dep.recv_transition].into_iter().flatten() {
                self.emit_transition(&snap, tr, rule_name, sel.action, last_evidence.clone())?;
            }
            self.acts.remove(&cookie);
        }
        self.tracker
            .prune(now_ns, Duration::from_secs(600), 100_000);
        // Netlink sockets cached per namespace keep dead containers' namespaces alive.
        self.destroyer.release_idle();
        self.last_sweep_us = t0.elapsed().as_micros() as u64;
        log::debug!(
            "tick: {} sockets, map read {read_us} us, whole tick {} us",
            states.len(),
            self.last_sweep_us
        );
        if self.last_stats.elapsed() >= self.cfg.stats_interval {
            self.emit_stats()?;
        }
        Ok(())
    }

    fn record_episode(
        &mut self,
        sel: &Selection<'_>,
        rule_name: Option<&str>,
        cookie: u64,
        ep: &crate::classify::Episode,
    ) -> Result<()> {
        let threshold_ms = sel.thresholds.threshold_for(ep.class).as_millis() as u64;
        if let Some(w) = self.calibration.record(
            rule_name.unwrap_or(NO_RULE),
            threshold_ms,
            sel.resets(ep.class),
            cookie,
            ep,
        ) {
            self.out.write(&Event::ThresholdWarning {
                rule: (w.rule != NO_RULE).then_some(w.rule),
                class: w.class,
                threshold_ms: w.threshold_ms,
                observed_ms: w.observed_ms,
                cookie: w.cookie,
                would_reset: w.would_reset,
                advice: w.advice,
            })?;
        }
        Ok(())
    }

    /// `evidence`: for a socket already forgotten by the tracker, its last evidence.
    fn emit_transition(
        &mut self,
        snap: &Snapshot,
        tr: Transition,
        rule: Option<&str>,
        action: Action,
        evidence: Option<Evidence>,
    ) -> Result<()> {
        let acted = self.acts.get(&snap.cookie).map(|a| a.done).unwrap_or(false);
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
                self.out.write(&Event::StallStarted(f))?;
            }
            Transition::Cleared { .. } => {
                if tr.class().is_send_side() {
                    self.acts.remove(&snap.cookie);
                }
                self.out.write(&Event::StallCleared(f))?;
            }
            // Our own reset closed it: the socket_reset event already said so.
            Transition::Closed { .. } if acted && tr.class().is_send_side() => {}
            Transition::Closed { .. } => self.out.write(&Event::StallClosed(f))?,
        }
        Ok(())
    }

    fn skip(
        &mut self,
        snap: &Snapshot,
        class: StallClass,
        sel: &Selection<'_>,
        guard: event::SkipGuard,
        detail: String,
    ) -> Result<()> {
        let act = self.acts.entry(snap.cookie).or_default();
        if act.skipped_guard == Some(guard) {
            return Ok(()); // said once per stall and guard
        }
        act.skipped_guard = Some(guard);
        self.counts.skipped += 1;
        let ev = self.tracker.evidence(snap.cookie);
        let f = self.socket_fields(
            snap,
            class,
            snap.since_progress_ms(),
            sel.rule.map(|r| r.name.as_str()),
            sel.action,
            ev.as_ref(),
        );
        self.out.write(&Event::ResetSkipped {
            socket: f,
            guard,
            detail,
        })?;
        Ok(())
    }

    /// Apply the reset action to a stalled socket, behind every guard.
    fn enforce(&mut self, snap: &Snapshot, sel: &Selection<'_>, class: StallClass) -> Result<()> {
        if self.acts.get(&snap.cookie).map(|a| a.done).unwrap_or(false) {
            return Ok(());
        }
        let guards = &self.policy.guards;
        if guards.protect_ports.contains(&snap.local.port())
            || guards.protect_ports.contains(&snap.remote.port())
        {
            return self.skip(
                snap,
                class,
                sel,
                event::SkipGuard::ProtectedPort,
                format!(
                    "port {} or {} is in guards.protect_ports",
                    snap.local.port(),
                    snap.remote.port()
                ),
            );
        }
        if !self.reset_works {
            return self.skip(
                snap,
                class,
                sel,
                event::SkipGuard::ResetUnavailable,
                "the start-up probe of SOCK_DESTROY failed (see agent_started.reset_path)".into(),
            );
        }
        if snap.orphan && !self.orphans_safe {
            return self.skip(
                snap,
                class,
                sel,
                event::SkipGuard::OrphanUnsafe,
                "the application already closed this socket (an orphan the kernel finishes on \
                 its own), and on this kernel destroying an orphan can leave it with no timer \
                 forever (see agent_started.orphan_reset)"
                    .into(),
            );
        }
        if self.cfg.dry_run {
            return self.skip(
                snap,
                class,
                sel,
                event::SkipGuard::DryRun,
                "--dry-run: would have reset".into(),
            );
        }
        // Re-verify right before acting: same cookie still in the map, still stalled, no
        // progress since the decision.
        let fresh = match self.probes.get(snap.cookie) {
            Some(st) => Snapshot::from_state(&st, monotonic_ns()),
            None => {
                return self.skip(
                    snap,
                    class,
                    sel,
                    event::SkipGuard::NotStalledAnymore,
                    "the socket left tracking (closed or drained) before the reset".into(),
                )
            }
        };
        if !self.tracker.still_stalled(&fresh) {
            return self.skip(
                snap,
                class,
                sel,
                event::SkipGuard::NotStalledAnymore,
                "progress since the decision; not resetting".into(),
            );
        }
        if !self.rate.allow(Instant::now()) {
            let per = self.policy.guards.max_resets_per_minute;
            return self.skip(
                snap,
                class,
                sel,
                event::SkipGuard::RateLimit,
                format!("max_resets_per_minute = {per} reached; will retry while it stays stalled"),
            );
        }
        let target = target_of(&fresh);
        let ev = self.tracker.evidence(snap.cookie);
        let f = self.socket_fields(
            &fresh,
            class,
            fresh.since_progress_ms(),
            sel.rule.map(|r| r.name.as_str()),
            sel.action,
            ev.as_ref(),
        );
        self.acts.entry(snap.cookie).or_default().done = true;
        self.pending.push(PendingReset {
            target,
            fields: f,
            bytes_still_queued: fresh.queued_bytes,
        });
        Ok(())
    }

    /// Reset every socket this tick decided on, in netlink batches (thousands of wedges
    /// at once is the mass-disconnect case), and report each.
    fn flush_resets(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let targets: Vec<Target> = pending.iter().map(|p| p.target.clone()).collect();
        let t0 = Instant::now();
        let results = self.destroyer.destroy_many(&targets);
        // Per-socket latency is not separable inside a batch: report the batch's mean.
        let latency_us = t0.elapsed().as_micros() as u64 / pending.len() as u64;
        for (p, res) in pending.into_iter().zip(results) {
            match res {
                Ok(()) => {
                    self.counts.done += 1;
                    self.out.write(&Event::SocketReset {
                        socket: p.fields,
                        bytes_still_queued: p.bytes_still_queued,
                        reset_latency_us: latency_us,
                    })?;
                }
                Err(e) => {
                    // One failure per stall: a socket that cannot be reset is not hammered.
                    self.counts.failed += 1;
                    self.out.write(&Event::ResetFailed {
                        socket: p.fields,
                        errno: e.errno,
                        error: reset::errno_name(e.errno).to_string(),
                        meaning: e.meaning.clone(),
                    })?;
                }
            }
        }
        Ok(())
    }

    fn emit_stats(&mut self) -> Result<()> {
        self.last_stats = Instant::now();
        let c = self.probes.counters();
        self.out.write(&Event::Stats(event::StatsFields {
            sockets_tracked: self.last.len() as u64,
            map_capacity: self.probes.max_sockets(),
            map_full: c.map_full,
            close_notes_lost: c.close_notes_lost,
            events_lost: self.out.events_lost(),
            stalls_active: self.tracker.stalled_count() as u64,
            sweep_us: self.last_sweep_us,
            cpu_ms: cpu_ms(),
            bpf_run_ns: self.probes.bpf_run_ns(),
            resets: event::ResetCounts {
                done: self.counts.done,
                failed: self.counts.failed,
                skipped: self.counts.skipped,
            },
            calibration: self
                .calibration
                .rows()
                .into_iter()
                .map(|r| event::CalibrationEntry {
                    rule: (r.rule != NO_RULE).then_some(r.rule),
                    class: r.class,
                    count: r.count,
                    max_ms: r.max_ms,
                    p50_ms: r.p50_ms,
                    p99_ms: r.p99_ms,
                })
                .collect(),
        }))?;
        let _ = SystemTime::now();
        Ok(())
    }
}

/// The policy's selection for a socket, identified as rules select: addresses, writer
/// comm, writer cgroup path, network namespace.
fn select<'p>(policy: &'p Policy, cgroups: &mut CgroupPaths, snap: &Snapshot) -> Selection<'p> {
    let cgroup = snap.cgroup_id.and_then(|id| cgroups.path(id));
    policy.select(&SocketIdentity {
        local: snap.local,
        remote: snap.remote,
        comm: snap.comm.as_deref(),
        cgroup_path: cgroup.as_deref(),
        netns: snap.netns,
    })
}

fn event_action(a: Action) -> event::Action {
    match a {
        Action::Observe => event::Action::Observe,
        Action::Reset => event::Action::Reset,
    }
}
