//! The agent's tick: read per-socket state → classify → policy → guards → act → events.
//!
//! The kernel parts sit behind two small traits, [`SockSource`] (the BPF map) and
//! [`DiagPath`] (sock_diag lookups and SOCK_DESTROY), so the tick is unit-tested with fakes.

use crate::classify::{Calibration, Evidence, StallClass, Tracker, Transition};
use crate::event::{self, Event, EventWriter, EvidenceFields, SocketFields};
use crate::guards::{self, Budgets, Hold, HoldChange, Networks, Peer, Refusal};
use crate::identity::Owners;
use crate::policy::{Action, Policy, Selection, SocketIdentity};
use crate::probes::{Counters, Pinning, Probes};
use crate::reset::{self, Destroyer, ResetError, Target, TcpDiag};
use crate::snapshot::{monotonic_ns, Snapshot};
use crate::state::{self, Saved, StatePaths};
use anyhow::Result;
use monitor_common::{CloseNote, SockState};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// SIGTERM and SIGINT (stop), and SIGHUP (reopen `--output`, reload the policy), taken over
/// from their default (killing) action.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside the runtime.
    pub fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
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
    /// The unix socket `tcpstall top` reads the live view from; None = off.
    pub status_socket: Option<PathBuf>,
    /// Where state is kept across restarts (`crate::state`); None = not kept (`--no-state`).
    pub state: Option<StatePaths>,
}

/// The kernel map as the tick needs it (`Probes` in production, a fake in unit tests).
pub trait SockSource {
    /// Every tracked socket's state, each with its cookie (`resolve` names address-keyed
    /// entries; see [`Probes::read_all`]).
    fn read_all(&mut self, resolve: &mut dyn FnMut(&SockState) -> Option<u64>) -> Vec<SockState>;
    /// Close notes produced since the last call.
    fn drain_closed(&mut self) -> Vec<CloseNote>;
    /// Delete one socket's entry (eviction, stale entries). False if it was not there.
    fn remove(&mut self, cookie: u64) -> bool;
    fn counters(&self) -> Counters;
    fn max_sockets(&self) -> u32;
    fn bpf_run_ns(&self) -> Option<u64>;
}

/// The act stage's kernel interface: sock_diag lookups and SOCK_DESTROY (`Destroyer` in
/// production, a fake in unit tests).
pub trait DiagPath {
    fn lookup(&mut self, t: &Target) -> Result<Option<TcpDiag>, ResetError>;
    fn lookup_many(&mut self, t: &[Target]) -> Vec<Result<Option<TcpDiag>, ResetError>>;
    fn destroy_many(&mut self, t: &[Target]) -> Vec<Result<(), ResetError>>;
    /// Close per-namespace sockets idle past their limit; how many were closed.
    fn release_idle(&mut self) -> usize;
    fn cached_netns(&self) -> usize;
}

impl SockSource for Probes {
    fn read_all(&mut self, resolve: &mut dyn FnMut(&SockState) -> Option<u64>) -> Vec<SockState> {
        Probes::read_all(self, resolve)
    }
    fn drain_closed(&mut self) -> Vec<CloseNote> {
        Probes::drain_closed(self)
    }
    fn remove(&mut self, cookie: u64) -> bool {
        Probes::remove(self, cookie)
    }
    fn counters(&self) -> Counters {
        Probes::counters(self)
    }
    fn max_sockets(&self) -> u32 {
        Probes::max_sockets(self)
    }
    fn bpf_run_ns(&self) -> Option<u64> {
        Probes::bpf_run_ns(self)
    }
}

impl DiagPath for Destroyer {
    fn lookup(&mut self, t: &Target) -> Result<Option<TcpDiag>, ResetError> {
        Destroyer::lookup(self, t)
    }
    fn lookup_many(&mut self, t: &[Target]) -> Vec<Result<Option<TcpDiag>, ResetError>> {
        Destroyer::lookup_many(self, t)
    }
    fn destroy_many(&mut self, t: &[Target]) -> Vec<Result<(), ResetError>> {
        Destroyer::destroy_many(self, t)
    }
    fn release_idle(&mut self) -> usize {
        Destroyer::release_idle(self)
    }
    fn cached_netns(&self) -> usize {
        Destroyer::cached_netns(self)
    }
}

/// Whether a listening socket exists on `t`'s local address and port in its namespace (the
/// socket was accepted by a service of ours): an exact sock_diag lookup with no peer, which
/// the kernel answers with the listener. `None` when the lookup failed.
pub fn local_listener<K: DiagPath + ?Sized>(kern: &mut K, t: &Target) -> Option<bool> {
    let any = match t.local.ip() {
        std::net::IpAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        std::net::IpAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let probe = Target {
        cookie: 0,
        family: if t.local.is_ipv4() {
            crate::snapshot::AF_INET
        } else {
            t.family
        },
        remote: std::net::SocketAddr::new(any, 0),
        ..t.clone()
    };
    match kern.lookup(&probe) {
        Ok(Some(d)) => Some(d.state == TCP_LISTEN),
        Ok(None) => Some(false),
        Err(e) => {
            log::debug!("listener lookup for {}: {e}", t.local);
            None
        }
    }
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_LISTEN: u8 = 10;
const TCP_CLOSING: u8 = 11;

/// An ACK the kernel received this much more recently than the last one the map holds
/// means the map missed it.
const LIVE_ACK_SLACK_MS: u64 = 1000;
/// Transient reset-path errors are retried this many times in all, backing off.
const MAX_ATTEMPTS: u32 = 6;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The map is made room in above this share of its capacity, down to `EVICT_LOW`.
const EVICT_HIGH: f64 = 0.95;
const EVICT_LOW: f64 = 0.90;
/// Entries with no kernel activity for this long are checked against the kernel ...
const STALE_AFTER: Duration = Duration::from_secs(60);
/// ... at most every this often, at most `STALE_BATCH` per check.
const STALE_EVERY: Duration = Duration::from_secs(30);
const STALE_BATCH: usize = 1024;
/// Close notes not matched to a departed socket are dropped after this long.
const NOTE_KEEP: Duration = Duration::from_secs(30);

/// Whether the live kernel state still shows the wedge the map showed (`Err`: why not).
/// Re-verification right before SOCK_DESTROY, against the kernel itself rather than the
/// map: the map can miss progress (e.g. ACKs in CLOSE_WAIT do not pass the ACK hook).
pub fn verify_live(snap: &Snapshot, class: StallClass, d: &TcpDiag) -> Result<(), String> {
    let open = d.state == TCP_ESTABLISHED || d.state == TCP_CLOSE_WAIT;
    let orphan_state = matches!(d.state, TCP_FIN_WAIT1 | TCP_CLOSING | TCP_LAST_ACK);
    if !(open || (snap.orphan && orphan_state)) {
        return Err(format!(
            "the kernel shows the socket in state {} now",
            d.state_name()
        ));
    }
    if d.send_q == 0 {
        return Err("the kernel's send queue is empty: everything was acked".into());
    }
    if u64::from(d.send_q) < snap.queued_bytes {
        return Err(format!(
            "the kernel's send queue shrank from {} to {} bytes: the peer acked data",
            snap.queued_bytes, d.send_q
        ));
    }
    match class {
        StallClass::ZeroWindow if d.has_snd_wnd() && d.snd_wnd > 0 => Err(format!(
            "the peer's window is open again ({} bytes)",
            d.snd_wnd
        )),
        StallClass::NoAck => {
            let seen = if snap.last_ack_ns > 0 {
                snap.last_ack_ns
            } else {
                snap.first_seen_ns
            };
            let map_age_ms = snap.now_ns.saturating_sub(seen) / 1_000_000;
            let live_ms = u64::from(d.last_ack_recv_ms);
            if live_ms + LIVE_ACK_SLACK_MS < map_age_ms {
                Err(format!(
                    "the kernel received an ACK {live_ms} ms ago; the last one tcpstall saw \
                     was {map_age_ms} ms ago"
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Whether a reset-path error can succeed when tried again later.
fn transient(e: &ResetError) -> bool {
    e.is_transient()
}

/// A stalled socket the policy wants reset, this tick.
struct Candidate<'p> {
    snap: Snapshot,
    sel: Selection<'p>,
    class: StallClass,
}

/// A reset that passed every guard, done in one batch at the end of the tick.
struct PendingReset {
    cookie: u64,
    target: Target,
    fields: SocketFields,
    bytes_still_queued: u64,
}

/// What an enforcement decision did, so each stall produces its guard event once.
#[derive(Default)]
struct ActState {
    skipped_guard: Option<event::SkipGuard>,
    done: bool,
    /// Failed attempts with transient errors, and when to try again.
    attempts: u32,
    retry_at: Option<Instant>,
}

#[derive(Default)]
struct ResetCounts {
    done: u64,
    failed: u64,
    skipped: u64,
    retried: u64,
}

pub struct Agent<S: SockSource = Probes, K: DiagPath = Destroyer> {
    cfg: Config,
    policy: std::sync::Arc<Policy>,
    src: S,
    kern: K,
    out: EventWriter,
    tracker: Tracker,
    calibration: Calibration,
    owners: Owners,
    reset_works: bool,
    /// The start-up self-test found destroying orphans safe on this kernel.
    orphans_safe: bool,
    budgets: Budgets,
    nets: Networks,
    hold: Hold,
    counts: ResetCounts,
    /// Last snapshot of every socket present in the kernel map at the previous tick.
    last: HashMap<u64, Snapshot>,
    acts: HashMap<u64, ActState>,
    /// Close notes drained but not matched to a departed socket yet: cookie → (close
    /// time ns, when drained).
    closed: HashMap<u64, (u64, Instant)>,
    pending: Vec<PendingReset>,
    map_evicted: u64,
    map_stale: u64,
    last_map_full: u64,
    last_stale_check: Instant,
    started: Instant,
    last_stats: Instant,
    last_sweep_us: u64,
    /// For the live view (`tcpstall top`).
    mode: event::Mode,
    recent: crate::status::Recent,
    /// `--metrics-addr`: Prometheus metrics and health (off unless [`Agent::serve_metrics`]).
    metrics: crate::metrics::Exporter,
    persist: Persist,
}

/// Where and when the agent saves its state ([`crate::state`]); inert without a file.
#[derive(Default)]
struct Persist {
    /// The state file; None: not kept.
    file: Option<PathBuf>,
    last_save: Option<Instant>,
    /// The last save failed (said once until one works again).
    failing: bool,
    /// Sockets were left out of the file (said once).
    warned_full: bool,
    boot_id: String,
    /// The state and pin directories, held for the agent's lifetime.
    _locks: Vec<state::Lock>,
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
        // Device-bound (SO_BINDTODEVICE, VRF) and IPv6 link-local sockets are found only
        // with their interface.
        ifindex: snap.bound_dev_if,
    }
}

/// What the guard chain asks the kernel, for one candidate of the tick.
struct AskKernel<'a, K: ?Sized> {
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

impl Agent {
    /// Validate, probe the reset path, load and attach. Emits `agent_started`.
    pub fn start(cfg: Config) -> Result<Agent> {
        let out = EventWriter::open(cfg.output.as_deref())?;
        // First: another agent on the same state is an error before anything is done.
        let (mut persist, pin_dir, why_not) = Persist::open(cfg.state.as_ref())?;
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
        let probes = Probes::load(
            &kbtf,
            &offsets,
            cfg.max_sockets,
            cfg.bpf_stats,
            pin_dir.as_deref(),
        )?;
        drop(kbtf);
        let saved = persist
            .file
            .clone()
            .map(|f| (state::load(&f, monotonic_ns()), f));
        if let Some((Err(why), _)) = &saved {
            log::info!("state file not used: {why}");
        }
        let mode = if !wants_reset {
            event::Mode::Observe
        } else if cfg.dry_run {
            event::Mode::DryRun
        } else if probe.works {
            event::Mode::Enforce
        } else {
            event::Mode::Observe
        };
        let pinning = match &why_not.pins {
            Some(why) => Pinning {
                adopted: false,
                path: None,
                detail: why.clone(),
            },
            None => probes.pinning().clone(),
        };
        let mut agent_started = Event::AgentStarted {
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
            state: event::StateReport {
                adopted: false,
                restored: false,
                detail: String::new(),
            },
        };
        let destroyer = match netns_idle_override()? {
            Some(d) => Destroyer::new().with_idle_limit(d),
            None => Destroyer::new(),
        };
        let mut agent = Agent::with_parts(cfg, probes, destroyer, out, probe.works, orphan.safe);
        agent.mode = mode;
        // Take over what the previous agent left, before the first tick.
        let mut report = agent.restore(&pinning, saved.as_ref().map(|(r, f)| (r, f.as_path())));
        if let Some(why) = &why_not.file {
            report.detail = format!("{}; {why}", report.detail);
        }
        persist.boot_id = state::boot_id();
        agent.persist = persist;
        log::info!("state: {}", report.detail);
        if let Event::AgentStarted { state, .. } = &mut agent_started {
            *state = report;
        }
        agent.out.emit(&agent_started);
        Ok(agent)
    }

    /// Serve `/metrics`, `/healthz` and `/readyz` on `listener` (from
    /// [`crate::metrics::bind`]) from the running runtime, between ticks.
    pub fn serve_metrics(&mut self, listener: std::net::TcpListener) -> Result<()> {
        self.metrics = crate::metrics::Exporter::start(
            listener,
            crate::metrics::Setup {
                hooks: self.src.hook_reports(),
                degraded: self.src.degraded(),
                socket_key_by_address: self.src.key_by_addr(),
                policy: &self.policy,
                dry_run: self.cfg.dry_run,
                reset_works: self.reset_works,
                orphans_safe: self.orphans_safe,
                map_capacity: self.src.max_sockets(),
                bpf_stats: self.cfg.bpf_stats,
                started: self.started,
            },
        )?;
        Ok(())
    }
}

/// `TCPSTALL_NETNS_IDLE_MS`: testing knob for how long an idle per-namespace netlink socket
/// is kept (default 60 s).
fn netns_idle_override() -> Result<Option<Duration>> {
    match std::env::var("TCPSTALL_NETNS_IDLE_MS") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
            _ => anyhow::bail!(
                "TCPSTALL_NETNS_IDLE_MS={v:?} is not a positive number of milliseconds"
            ),
        },
        Err(_) => Ok(None),
    }
}

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    /// An agent over the given kernel parts (no start-up probes, no `agent_started`): what
    /// [`Agent::start`] ends with, and what the unit tests build with fakes.
    pub fn with_parts(
        cfg: Config,
        src: S,
        kern: K,
        out: EventWriter,
        reset_works: bool,
        orphans_safe: bool,
    ) -> Agent<S, K> {
        Agent {
            policy: std::sync::Arc::new(cfg.policy.clone()),
            src,
            kern,
            out,
            tracker: Tracker::new(),
            calibration: Calibration::new(),
            owners: Owners::default(),
            reset_works,
            orphans_safe,
            budgets: Budgets::default(),
            nets: Networks::default(),
            hold: Hold::default(),
            counts: ResetCounts::default(),
            last: HashMap::new(),
            acts: HashMap::new(),
            closed: HashMap::new(),
            pending: Vec::new(),
            map_evicted: 0,
            map_stale: 0,
            last_map_full: 0,
            last_stale_check: Instant::now(),
            started: Instant::now(),
            last_stats: Instant::now(),
            last_sweep_us: 0,
            mode: event::Mode::Observe,
            recent: crate::status::Recent::default(),
            metrics: Default::default(),
            persist: Persist::default(),
            cfg,
        }
    }

    /// Run ticks until a signal or the configured duration.
    /// `signals` must be created before [`Agent::start`], so a SIGTERM right after
    /// `agent_started` is already a clean stop.
    pub async fn run(mut self, signals: Signals) -> Result<()> {
        let Signals {
            mut term,
            mut int,
            mut hup,
        } = signals;
        // The live view is auxiliary: a status socket that cannot be created (a read-only
        // /run, another agent answering there) is a warning, never a stop. (Two agents on
        // the same state are refused by the state directory's lock.)
        let status = match &self.cfg.status_socket {
            Some(p) => match bind_status(p) {
                Ok(l) => Some(l),
                Err(e) => {
                    log::warn!("no live view for tcpstall top: {e:#}");
                    None
                }
            },
            None => None,
        };
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
            let asked = async {
                match &status {
                    Some(l) => l.accept().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => {
                    // Nothing in a tick stops the agent (a failed event write is counted, not
                    // fatal); only a signal or --duration does.
                    if let Err(e) = self.tick() {
                        log::error!("tick: {e:#}");
                    }
                }
                _ = hup.recv() => self.hangup(),
                Some((conn, _)) = asked => self.answer_status(conn),
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = sleep_until => break "duration elapsed",
            }
        };
        if let Some(p) = &self.cfg.status_socket {
            let _ = std::fs::remove_file(p);
        }
        self.save_state();
        let _ = self.emit_stats();
        self.out.emit(&Event::AgentStopped {
            reason: reason.to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        });
        // Dropping the probes detaches every hook.
        Ok(())
    }

    /// The run mode the policy in force gives (as in `agent_started.mode`).
    fn mode(&self) -> event::Mode {
        let wants_reset = self.policy.rules.iter().any(|r| r.action == Action::Reset);
        if !wants_reset {
            event::Mode::Observe
        } else if self.cfg.dry_run {
            event::Mode::DryRun
        } else if self.reset_works {
            event::Mode::Enforce
        } else {
            event::Mode::Observe
        }
    }

    /// SIGHUP: reopen `--output` (after log rotation moved it away), then read the policy
    /// file again. Each says how it went in an event (`output_reopened`, `policy_reload`).
    pub fn hangup(&mut self) {
        if let Some(res) = self.out.reopen() {
            let output = self
                .out
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let (ok, error) = match res {
                Ok(()) => {
                    log::info!("SIGHUP: reopened the event output {output}");
                    (true, None)
                }
                Err(e) => {
                    let why = format!(
                        "{e}; events still go to the file that was open before (possibly \
                         renamed by log rotation)"
                    );
                    log::error!("SIGHUP: {why}");
                    (false, Some(why))
                }
            };
            self.out.emit(&Event::OutputReopened { output, ok, error });
        }
        self.reload_policy();
    }

    /// Read and validate the policy file again. A valid file replaces the policy in force:
    /// rule selection, thresholds and guards change from the next tick on, while every
    /// socket's state (stalls, history, reset decisions, budgets, calibration) is kept. An
    /// invalid one is refused and the old policy stays. The tick is not changed (it takes
    /// a restart).
    pub fn reload_policy(&mut self) {
        let Some(path) = self.policy.source.clone() else {
            self.out.emit(&Event::PolicyReload {
                policy: None,
                ok: true,
                problems: Vec::new(),
                warnings: Vec::new(),
                mode: self.mode(),
                detail: "the agent runs without --policy: the built-in defaults stay in force"
                    .into(),
            });
            return;
        };
        let label = path.display().to_string();
        match Policy::load(&path) {
            Err(e) => {
                log::error!(
                    "SIGHUP: the policy file {label} is invalid; the policy loaded before stays \
                     in force:\n{e}"
                );
                self.out.emit(&Event::PolicyReload {
                    policy: Some(label),
                    ok: false,
                    problems: e.to_string().lines().map(str::to_string).collect(),
                    warnings: Vec::new(),
                    mode: self.mode(),
                    detail: "refused: the policy loaded before stays in force; fix the file \
                             (`tcpstall policy check FILE`) and send SIGHUP again"
                        .into(),
                });
            }
            Ok(new) => {
                let warnings = new.warning_lines();
                for w in &warnings {
                    log::warn!("{w}");
                }
                let mut detail = format!(
                    "in force from the next tick: {} rule(s), was {}; every socket's state is \
                     kept",
                    new.rules.len(),
                    self.policy.rules.len()
                );
                if new.tick != self.policy.tick {
                    detail.push_str(&format!(
                        "; tick = \"{}\" in the file is not applied: the agent keeps ticking every \
                         {} until it is restarted",
                        crate::policy::format_duration(new.tick),
                        crate::policy::format_duration(self.cfg.tick)
                    ));
                }
                log::info!("SIGHUP: reloaded the policy {label}: {detail}");
                self.cfg.policy = new.clone();
                self.policy = std::sync::Arc::new(new);
                self.out.emit(&Event::PolicyReload {
                    policy: Some(label),
                    ok: true,
                    problems: Vec::new(),
                    warnings,
                    mode: self.mode(),
                    detail,
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn socket_fields(
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
            comm: s.comm.clone(),
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

    /// One tick. The map is read first and the close notes after it: the kernel side puts a
    /// close's note on the ring before it removes the entry, so every entry this read
    /// misses because of a close has its note among those drained right after (unless the
    /// ring overflowed: then the kernel is asked). A close is never taken for a recovery.
    pub fn tick(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let kern = &mut self.kern;
        let states = self.src.read_all(&mut |st| resolve_cookie(kern, st));
        for n in self.src.drain_closed() {
            self.closed.insert(n.cookie, (n.ts_ns, t0));
        }
        let read_us = t0.elapsed().as_micros();
        let now_ns = monotonic_ns();
        let mut present = HashSet::with_capacity(states.len());
        let policy = std::sync::Arc::clone(&self.policy);
        // Tracked sockets each reset rule selects this tick (its budget scales with them).
        let mut selected: HashMap<&str, u64> = HashMap::new();
        let mut candidates: Vec<Candidate<'_>> = Vec::new();
        self.nets.begin();
        for st in &states {
            let snap = Snapshot::from_state(st, now_ns);
            present.insert(snap.cookie);
            let sel = select(&policy, &mut self.owners, &snap);
            if let Some(r) = sel.rule {
                *selected.entry(r.name.as_str()).or_default() += 1;
            }
            self.nets.observe(
                &Peer {
                    remote: snap.remote.ip(),
                    unacked_bytes: snap.unacked_bytes,
                    last_ack_ns: snap.last_ack_ns,
                    first_seen_ns: snap.first_seen_ns,
                },
                now_ns,
            );
            let obs = self.tracker.observe(&snap, sel.thresholds);
            let rule_name = sel.rule.map(|r| r.name.as_str());
            for ep in &obs.recovered {
                self.record_episode(&sel, rule_name, snap.cookie, ep)?;
            }
            for tr in [obs.transition, obs.recv_transition].into_iter().flatten() {
                self.emit_transition(&snap, tr, rule_name, sel.action, None)?;
            }
            self.metrics
                .count_active(&self.tracker, snap.cookie, rule_name);
            if let Some(active) = self.tracker.active(snap.cookie) {
                let class = active.class;
                if sel.resets(class) {
                    candidates.push(Candidate {
                        snap: snap.clone(),
                        sel,
                        class,
                    });
                }
            }
            self.last.insert(snap.cookie, snap);
        }
        self.departures(&present, now_ns)?;
        let report = self.nets.finish(&policy.guards.networks(), now_ns);
        self.update_hold(&report)?;
        self.enforce(candidates, &selected)?;
        self.flush_resets()?;
        self.make_room(states.len())?;
        self.check_stale()?;
        self.kern.release_idle();
        self.closed.retain(|_, (_, at)| at.elapsed() < NOTE_KEEP);
        self.budgets.prune(Instant::now());
        self.tracker
            .prune(now_ns, Duration::from_secs(600), 100_000);
        self.last_sweep_us = t0.elapsed().as_micros() as u64;
        log::debug!(
            "tick: {} sockets, map read {read_us} us, whole tick {} us",
            states.len(),
            self.last_sweep_us
        );
        self.metrics_tick(t0.elapsed());
        if self.last_stats.elapsed() >= self.cfg.stats_interval {
            self.emit_stats()?;
        }
        if self.persist.due() {
            self.save_state();
        }
        Ok(())
    }

    /// The tick's numbers to the metrics (the same as `stats`).
    fn metrics_tick(&mut self, took: Duration) {
        if !self.metrics.enabled() {
            return;
        }
        let c = self.src.counters();
        self.metrics.tick_done(&crate::metrics::TickValues {
            duration_s: took.as_secs_f64(),
            sockets_tracked: self.last.len() as u64,
            map_capacity: self.src.max_sockets(),
            map_full: c.map_full,
            map_evicted: self.map_evicted,
            map_stale: c.stale + self.map_stale,
            close_notes_lost: c.close_notes_lost,
            events_lost: self.out.events_lost(),
            netns_cached: self.kern.cached_netns() as u64,
            partition_hold: self.hold.active(),
            cpu_seconds: cpu_ms() as f64 / 1000.0,
            bpf_run_ns: self.src.bpf_run_ns(),
        });
    }

    /// Sockets gone from the kernel map since the last tick: closed, or drained.
    fn departures(&mut self, present: &HashSet<u64>, now_ns: u64) -> Result<()> {
        let gone: Vec<u64> = self
            .last
            .keys()
            .filter(|c| !present.contains(c))
            .copied()
            .collect();
        for cookie in gone {
            let snap = self.last.remove(&cookie).expect("key from map");
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
            let sel = select(&policy, &mut self.owners, &snap);
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

    fn update_hold(&mut self, report: &guards::NetReport) -> Result<()> {
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

    fn record_episode(
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
    fn emit_transition(
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

    fn skip(
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
        let ev = self.tracker.evidence(snap.cookie);
        let f = self.socket_fields(
            snap,
            class,
            snap.since_progress_ms(),
            sel.rule.map(|r| r.name.as_str()),
            sel.action,
            ev.as_ref(),
        );
        self.out.emit(&Event::ResetSkipped {
            socket: f,
            guard,
            detail,
        });
        Ok(())
    }

    /// A reset attempt failed. Transient errors are tried again with backoff (at most
    /// [`MAX_ATTEMPTS`] in all); anything else is final for this stall.
    fn failed(&mut self, c: &Candidate<'_>, e: &ResetError) -> Result<()> {
        let retry_in = self.note_failure(c.snap.cookie, e);
        let rule = c.sel.rule.map(|r| r.name.as_str());
        self.metrics.reset(
            rule,
            crate::metrics::ResetResult::failure(retry_in.is_some()),
        );
        let ev = self.tracker.evidence(c.snap.cookie);
        let f = self.socket_fields(
            &c.snap,
            c.class,
            c.snap.since_progress_ms(),
            c.sel.rule.map(|r| r.name.as_str()),
            c.sel.action,
            ev.as_ref(),
        );
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
    fn note_failure(&mut self, cookie: u64, e: &ResetError) -> Option<Duration> {
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
    fn static_guard(&mut self, c: &Candidate<'_>) -> Option<(event::SkipGuard, String)> {
        let g = guards::Guards {
            protect_ports: &self.policy.guards.protect_ports,
            reset_works: self.reset_works,
            hold: self.hold.active(),
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
    fn enforce(
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
            let ev = self.tracker.evidence(c.snap.cookie);
            let f = self.socket_fields(
                &c.snap,
                c.class,
                c.snap.since_progress_ms(),
                c.sel.rule.map(|r| r.name.as_str()),
                c.sel.action,
                ev.as_ref(),
            );
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
    fn flush_resets(&mut self) -> Result<()> {
        let mut pending = std::mem::take(&mut self.pending);
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(reset::DESTROY_BATCH));
            self.flush_batch(pending);
            pending = rest;
        }
        Ok(())
    }

    fn flush_batch(&mut self, pending: Vec<PendingReset>) {
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

    /// A (nearly) full map cannot take a new wedge: remove the entries least likely to
    /// matter — never a stalled one; first those with nothing queued (the kernel would have
    /// dropped them, a hook missed it), then the least recently active — down to 90 % of
    /// the capacity.
    fn make_room(&mut self, tracked: usize) -> Result<()> {
        let cap = self.src.max_sockets() as usize;
        let full = self.src.counters().map_full;
        let refused = full > self.last_map_full;
        self.last_map_full = full;
        let high = (cap as f64 * EVICT_HIGH) as usize;
        let low = (cap as f64 * EVICT_LOW) as usize;
        if tracked < high && !(refused && tracked >= low) {
            return Ok(());
        }
        let want = tracked.saturating_sub(low).max(1);
        let mut order: Vec<(bool, u64, u64)> = self
            .last
            .values()
            .filter(|s| {
                self.tracker.active(s.cookie).is_none()
                    && self.tracker.active_recv(s.cookie).is_none()
            })
            .map(|s| {
                let drained = s.queued_bytes == 0 && s.recv_unread == 0;
                (!drained, s.last_activity_ns(), s.cookie)
            })
            .collect();
        order.sort_unstable();
        let mut evicted = 0;
        for (_, _, cookie) in order.into_iter().take(want) {
            if self.src.remove(cookie) {
                evicted += 1;
                // Forgotten quietly: the socket is fine, only no longer watched.
                self.last.remove(&cookie);
                let now_ns = monotonic_ns();
                let _ = self.tracker.forget_detailed(cookie, false, now_ns);
                self.acts.remove(&cookie);
            }
        }
        if evicted > 0 {
            self.map_evicted += evicted;
            log::warn!(
                "tracking map at {tracked} of {cap} entries: evicted {evicted} (map_evicted in stats)"
            );
        }
        Ok(())
    }

    /// Entries the kernel has not touched for [`STALE_AFTER`] are checked against the
    /// kernel (batched, at most [`STALE_BATCH`] every [`STALE_EVERY`]): gone sockets are
    /// removed and recorded as closed, sockets with nothing queued are removed (a hook
    /// missed their drain).
    fn check_stale(&mut self) -> Result<()> {
        if self.last_stale_check.elapsed() < STALE_EVERY {
            return Ok(());
        }
        self.last_stale_check = Instant::now();
        let now_ns = monotonic_ns();
        let quiet = STALE_AFTER.as_nanos() as u64;
        let mut old: Vec<(u64, Target)> = self
            .last
            .values()
            .filter(|s| now_ns.saturating_sub(s.last_activity_ns()) >= quiet)
            .map(|s| (s.cookie, target_of(s)))
            .collect();
        old.truncate(STALE_BATCH);
        if old.is_empty() {
            return Ok(());
        }
        let targets: Vec<Target> = old.iter().map(|(_, t)| t.clone()).collect();
        let live = self.kern.lookup_many(&targets);
        for ((cookie, _), r) in old.into_iter().zip(live) {
            let gone = match r {
                Ok(None) => true,
                Ok(Some(d)) if d.send_q == 0 && d.recv_q == 0 => false,
                _ => continue,
            };
            if self.src.remove(cookie) {
                self.map_stale += 1;
                if gone {
                    self.closed.insert(cookie, (now_ns, Instant::now()));
                }
            }
        }
        Ok(())
    }

    /// The live view of this agent's state right now.
    pub fn status_report(&mut self) -> crate::status::Report {
        let policy = std::sync::Arc::clone(&self.policy);
        let snaps: Vec<Snapshot> = self.last.values().cloned().collect();
        let mut rows = Vec::with_capacity(snaps.len());
        for s in &snaps {
            let sel = select(&policy, &mut self.owners, s);
            let active = self
                .tracker
                .active(s.cookie)
                .or_else(|| self.tracker.active_recv(s.cookie))
                .map(|a| a.class);
            let f = self.socket_fields(
                s,
                active.unwrap_or(StallClass::NoAck),
                s.since_progress_ms(),
                sel.rule.map(|r| r.name.as_str()),
                sel.action,
                None,
            );
            rows.push(crate::status::Row {
                cookie: s.cookie,
                local: s.local.to_string(),
                remote: s.remote.to_string(),
                class: active.map(|c| c.as_str().to_string()),
                stalled_for_ms: s.since_progress_ms(),
                queued_bytes: s.queued_bytes,
                rule: f.rule.clone(),
                action: sel.action.as_str().to_string(),
                pid: s.pid,
                comm: s.comm.clone(),
                owner: owner_of(&f),
            });
        }
        crate::status::Report {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            mode: serde_json::to_value(self.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            tick_ms: self.cfg.tick.as_millis() as u64,
            policy: policy.source.as_ref().map(|p| p.display().to_string()),
            sockets_tracked: self.last.len() as u64,
            map_capacity: self.src.max_sockets(),
            stalls_active: self.tracker.stalled_count() as u64,
            partition_hold: self.hold.active(),
            resets_done: self.counts.done,
            resets_failed: self.counts.failed,
            resets_skipped: self.counts.skipped,
            sockets: crate::status::order(rows),
            recent_resets: self.recent.rows(),
        }
    }

    /// Answer one `tcpstall top` connection: the report is built now, between ticks; the
    /// write happens on its own task, so a stuck reader never delays a tick.
    fn answer_status(&mut self, mut conn: tokio::net::UnixStream) {
        let body = serde_json::to_vec(&self.status_report()).unwrap_or_default();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            })
            .await;
        });
    }

    fn emit_stats(&mut self) -> Result<()> {
        self.last_stats = Instant::now();
        let c = self.src.counters();
        self.out.emit(&Event::Stats(event::StatsFields {
            sockets_tracked: self.last.len() as u64,
            map_capacity: self.src.max_sockets(),
            map_full: c.map_full,
            map_evicted: self.map_evicted,
            map_stale: c.stale + self.map_stale,
            netns_cached: self.kern.cached_netns() as u64,
            partition_hold: self.hold.active(),
            close_notes_lost: c.close_notes_lost,
            events_lost: self.out.events_lost(),
            events_written: self.out.events_written(),
            stalls_active: self.tracker.stalled_count() as u64,
            sweep_us: self.last_sweep_us,
            cpu_ms: cpu_ms(),
            bpf_run_ns: self.src.bpf_run_ns(),
            resets: event::ResetCounts {
                done: self.counts.done,
                failed: self.counts.failed,
                skipped: self.counts.skipped,
                retried: self.counts.retried,
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
        }));
        Ok(())
    }
}

/// How the live view names a socket's owner: pod, else container, else cgroup path.
fn owner_of(f: &SocketFields) -> Option<String> {
    match (&f.pod_namespace, &f.pod_name, &f.container_id, &f.cgroup) {
        (Some(ns), Some(name), _, _) => Some(format!("{ns}/{name}")),
        (_, _, Some(id), _) => Some(format!("container {}", &id[..id.len().min(12)])),
        (_, _, _, Some(cg)) => Some(cg.clone()),
        _ => None,
    }
}

/// Listen for `tcpstall top` at `path` (directory 0700, socket 0600: root only). A socket
/// file another agent still answers on is left to it (an error here); a stale one is
/// replaced.
fn bind_status(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "creating {} for the status socket: {e}; pass --status-socket PATH (or none)",
                    dir.display()
                )
            })?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another tcpstall agent answers on {} (pass a different --status-socket to \
                 have a live view of this one)",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| {
        anyhow::anyhow!(
            "listening on {} for tcpstall top: {e}; pass --status-socket PATH (or none)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Why part of the state is not kept (the directory could not be used), for
/// `agent_started.state.detail`.
#[derive(Default)]
struct WhyNot {
    pins: Option<String>,
    file: Option<String>,
}

impl Persist {
    /// Lock and prepare the state and pin directories. A directory another agent holds is
    /// an error (two agents would act on the same sockets); one that cannot be used is
    /// left out, and `WhyNot` says why. Returns the usable pin directory.
    fn open(paths: Option<&StatePaths>) -> Result<(Persist, Option<PathBuf>, WhyNot)> {
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
    fn due(&self) -> bool {
        self.file.is_some()
            && self
                .last_save
                .is_none_or(|t| t.elapsed() >= state::SAVE_EVERY)
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
                sessions.insert(snap.cookie, snap.first_seen_ns);
                self.last.insert(snap.cookie, snap);
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
    fn save_state(&mut self) {
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
        match state::write_atomic(&path, &data) {
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

/// Address-keyed kernels only: the cookie of a socket nobody asked about yet (the lookup
/// is what makes the kernel assign it).
fn resolve_cookie<K: DiagPath + ?Sized>(kern: &mut K, st: &SockState) -> Option<u64> {
    let snap = Snapshot::from_state(st, 0);
    let target = Target {
        cookie: 0,
        ..target_of(&snap)
    };
    match kern.lookup(&target) {
        Ok(Some(d)) => Some(d.cookie),
        Ok(None) => None,
        Err(e) => {
            log::debug!("cookie lookup of {} -> {}: {e}", snap.local, snap.remote);
            None
        }
    }
}

/// The policy's selection for a socket, identified as rules select: addresses, writer
/// comm, writer cgroup path, network namespace.
fn select<'p>(policy: &'p Policy, owners: &mut Owners, snap: &Snapshot) -> Selection<'p> {
    let (cgroup, w) = owners.of(snap.cgroup_id);
    policy.select(&SocketIdentity {
        local: snap.local,
        remote: snap.remote,
        comm: snap.comm.as_deref(),
        cgroup_path: cgroup.as_deref(),
        netns: snap.netns,
        pod_namespace: w.pod_namespace.as_deref(),
        pod_name: w.pod_name.as_deref(),
    })
}

fn event_action(a: Action) -> event::Action {
    match a {
        Action::Observe => event::Action::Observe,
        Action::Reset => event::Action::Reset,
    }
}

#[cfg(test)]
mod tests {
    //! The tick with fake kernel parts: ordering, guards, re-verification, batching, retries.
    use super::*;
    use monitor_common::flags;
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::{Arc, Mutex};

    const S: u64 = 1_000_000_000;

    /// Entries and close notes of a fake map. A note queued with `note_after_read` appears
    /// only in a drain that follows a read (a close racing the tick).
    #[derive(Default)]
    struct FakeMap {
        states: Vec<SockState>,
        notes: Vec<CloseNote>,
        late_notes: Vec<CloseNote>,
        read_done: bool,
        removed: Vec<u64>,
        max: u32,
        map_full: u64,
    }

    #[derive(Clone, Default)]
    struct Src(Arc<Mutex<FakeMap>>);

    impl SockSource for Src {
        fn read_all(&mut self, _r: &mut dyn FnMut(&SockState) -> Option<u64>) -> Vec<SockState> {
            let mut m = self.0.lock().unwrap();
            m.read_done = true;
            m.states.clone()
        }
        fn drain_closed(&mut self) -> Vec<CloseNote> {
            let mut m = self.0.lock().unwrap();
            let mut out = std::mem::take(&mut m.notes);
            if m.read_done {
                out.append(&mut m.late_notes);
            }
            m.read_done = false;
            out
        }
        fn remove(&mut self, cookie: u64) -> bool {
            let mut m = self.0.lock().unwrap();
            let before = m.states.len();
            m.states.retain(|s| s.cookie != cookie);
            m.removed.push(cookie);
            m.states.len() != before
        }
        fn counters(&self) -> Counters {
            Counters {
                map_full: self.0.lock().unwrap().map_full,
                ..Counters::default()
            }
        }
        fn max_sockets(&self) -> u32 {
            self.0.lock().unwrap().max.max(1)
        }
        fn bpf_run_ns(&self) -> Option<u64> {
            None
        }
    }

    /// The kernel as sock_diag sees it: live sockets by cookie, listeners by local port,
    /// errors to return from the next destroys.
    #[derive(Default)]
    struct FakeKernel {
        live: HashMap<u64, TcpDiag>,
        listeners: HashSet<u16>,
        destroy_errors: Vec<i32>,
        destroyed: Vec<u64>,
        lookup_many_calls: usize,
        destroy_calls: usize,
        /// The agent's output as it was when each destroy batch was sent.
        witness: Option<Buf>,
        out_at_destroy: Vec<Vec<serde_json::Value>>,
    }

    #[derive(Clone, Default)]
    struct Kern(Arc<Mutex<FakeKernel>>);

    impl DiagPath for Kern {
        fn lookup(&mut self, t: &Target) -> Result<Option<TcpDiag>, ResetError> {
            let k = self.0.lock().unwrap();
            if t.remote.port() == 0 {
                return Ok(k.listeners.contains(&t.local.port()).then(|| TcpDiag {
                    state: TCP_LISTEN,
                    ..diag(0, 0)
                }));
            }
            Ok(k.live.get(&t.cookie).cloned())
        }
        fn lookup_many(&mut self, t: &[Target]) -> Vec<Result<Option<TcpDiag>, ResetError>> {
            self.0.lock().unwrap().lookup_many_calls += 1;
            t.iter().map(|t| self.lookup(t)).collect()
        }
        fn destroy_many(&mut self, t: &[Target]) -> Vec<Result<(), ResetError>> {
            let mut k = self.0.lock().unwrap();
            k.destroy_calls += 1;
            if let Some(w) = k.witness.clone() {
                k.out_at_destroy.push(w.events());
            }
            t.iter()
                .map(|t| {
                    if !k.destroy_errors.is_empty() {
                        let errno = k.destroy_errors.remove(0);
                        return Err(ResetError {
                            errno,
                            meaning: "injected".into(),
                            stage: "reply",
                        });
                    }
                    k.destroyed.push(t.cookie);
                    k.live.remove(&t.cookie);
                    Ok(())
                })
                .collect()
        }
        fn release_idle(&mut self) -> usize {
            0
        }
        fn cached_netns(&self) -> usize {
            0
        }
    }

    /// The agent's output; `fail` makes every write fail as on a full disk.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>, Arc<std::sync::atomic::AtomicBool>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.1.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn events(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
        fn named(&self, name: &str) -> Vec<serde_json::Value> {
            self.events()
                .into_iter()
                .filter(|e| e["event"] == name)
                .collect()
        }
    }

    fn diag(cookie: u64, send_q: u32) -> TcpDiag {
        TcpDiag {
            family: 2,
            state: TCP_ESTABLISHED,
            cookie,
            local: "10.0.0.1:8080".parse().unwrap(),
            remote: "10.9.0.2:40000".parse().unwrap(),
            ifindex: 0,
            uid: 0,
            inode: 1,
            timer: 1,
            timer_retrans: 3,
            timer_expires_ms: 100,
            recv_q: 0,
            send_q,
            tcp_info_len: 0,
            ca_state: 0,
            retransmits: 3,
            probes: 0,
            backoff: 3,
            rto_us: 1_600_000,
            snd_mss: 1448,
            unacked: 3,
            lost: 0,
            retrans: 1,
            last_data_sent_ms: 100,
            last_ack_recv_ms: 60_000,
            rtt_us: 100,
            snd_cwnd: 1,
            total_retrans: 3,
            bytes_acked: 0,
            bytes_received: 0,
            bytes_sent: 0,
            bytes_retrans: 0,
            notsent_bytes: 0,
            snd_wnd: 0,
        }
    }

    /// A socket of ours on :8080 to `remote`, stalled `class` since 10 s, 4000 bytes queued.
    fn stalled(cookie: u64, remote: &str, class: StallClass) -> SockState {
        let now = monotonic_ns();
        let r: std::net::SocketAddr = remote.parse().unwrap();
        let mut s = SockState::zeroed();
        s.cookie = cookie;
        s.key = cookie;
        s.family = 2;
        s.lport = 8080;
        s.rport = r.port();
        s.laddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        if let IpAddr::V4(v4) = r.ip() {
            s.raddr[..4].copy_from_slice(&v4.octets());
        }
        s.write_seq = 5000;
        s.snd_una = 1000;
        s.snd_nxt = 5000;
        s.first_seen_ns = now - 20 * S;
        s.last_progress_ns = now - 10 * S;
        match class {
            StallClass::NoAck => {
                s.snd_wnd = 65535;
                s.last_ack_ns = now - 10 * S;
                s.last_retrans_ns = now - S;
                s.retransmits = 5;
                s.backoff = 4;
            }
            _ => {
                s.flags = flags::ZERO_WINDOW | flags::ZERO_WINDOW_SEEN;
                s.last_ack_ns = now - S / 10;
                s.zero_window_acks = 8;
            }
        }
        s
    }

    /// A healthy socket of ours to `remote`: data in flight, acked just now.
    fn healthy(cookie: u64, remote: &str) -> SockState {
        let mut s = stalled(cookie, remote, StallClass::NoAck);
        let now = monotonic_ns();
        s.last_progress_ns = now;
        s.last_ack_ns = now;
        s.last_retrans_ns = 0;
        s.backoff = 0;
        s.retransmits = 0;
        s
    }

    const POLICY: &str = "tick = \"1s\"\n[defaults]\nno_ack_after = \"2s\"\n\
        zero_window_after = \"2s\"\n[[rule]]\nname = \"svc\"\nlocal_ports = [8080]\n\
        action = \"reset\"\nclasses = [\"zero_window\", \"no_ack\"]\n";

    struct Rig {
        agent: Agent<Src, Kern>,
        map: Src,
        kern: Kern,
        out: Buf,
    }

    fn rig(policy_extra: &str) -> Rig {
        rig_with(Policy::parse(&format!("{POLICY}{policy_extra}"), "test.toml").unwrap())
    }

    fn rig_with(policy: Policy) -> Rig {
        let cfg = Config {
            policy,
            tick: Duration::from_millis(100),
            stats_interval: Duration::from_secs(3600),
            output: None,
            dry_run: false,
            max_sockets: 100_000,
            bpf_stats: false,
            duration: None,
            status_socket: None,
            state: None,
        };
        let (map, kern, out) = (Src::default(), Kern::default(), Buf::default());
        map.0.lock().unwrap().max = 100_000;
        let agent = Agent::with_parts(
            cfg,
            map.clone(),
            kern.clone(),
            EventWriter::new(Box::new(out.clone()), "test"),
            true,
            true,
        );
        Rig {
            agent,
            map,
            kern,
            out,
        }
    }

    impl Rig {
        fn add(&self, s: SockState, live: bool) {
            if live {
                let q = s.write_seq.wrapping_sub(s.snd_una);
                let mut d = diag(s.cookie, q);
                if s.flags & flags::ZERO_WINDOW != 0 {
                    d.last_ack_recv_ms = 100;
                }
                self.kern.0.lock().unwrap().live.insert(s.cookie, d);
            }
            self.map.0.lock().unwrap().states.push(s);
        }
        fn drop_entry(&self, cookie: u64) {
            self.map
                .0
                .lock()
                .unwrap()
                .states
                .retain(|s| s.cookie != cookie);
        }
        fn destroyed(&self) -> Vec<u64> {
            self.kern.0.lock().unwrap().destroyed.clone()
        }
    }

    fn note(cookie: u64) -> CloseNote {
        CloseNote {
            cookie,
            key: cookie,
            ts_ns: monotonic_ns(),
            reason: 1,
            new_state: 7,
        }
    }

    #[test]
    fn a_failed_event_write_never_stops_enforcement() {
        let mut r = rig("");
        r.out.1.store(true, std::sync::atomic::Ordering::Relaxed);
        r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
        // stall_started, reset_intent and socket_reset all fail to be written ...
        r.agent.tick().unwrap();
        // ... and the socket is reset all the same.
        assert_eq!(r.destroyed(), vec![1]);
        assert_eq!(r.agent.out.events_lost(), 3);
        assert!(r.out.events().is_empty());
        // The output works again: the next line is followed by an events_lost line.
        r.out.1.store(false, std::sync::atomic::Ordering::Relaxed);
        r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
        r.agent.tick().unwrap();
        assert_eq!(r.destroyed(), vec![1, 2]);
        let ev = r.out.events();
        assert_eq!(ev[0]["event"], "stall_started");
        assert_eq!(ev[1]["event"], "events_lost");
        assert_eq!(
            (ev[1]["count"].as_u64(), ev[1]["total"].as_u64()),
            (Some(3), Some(3))
        );
        assert_eq!(r.out.named("socket_reset").len(), 1);
        r.agent.emit_stats().unwrap();
        let stats = r.out.named("stats");
        assert_eq!(stats[0]["events_lost"], 3);
        // agent_started is not written by the rig: lines 0.. are this stream's.
        assert_eq!(stats[0]["events_written"].as_u64(), Some(ev.len() as u64));
    }

    #[test]
    fn the_intent_is_on_record_before_each_destroy_batch() {
        let mut r = rig("[guards]\nmax_resets_per_minute = 1000\n");
        r.kern.0.lock().unwrap().witness = Some(r.out.clone());
        for i in 0..70u64 {
            r.add(
                stalled(
                    100 + i,
                    &format!("10.9.{}.2:40000", i),
                    StallClass::ZeroWindow,
                ),
                true,
            );
        }
        r.agent.tick().unwrap();
        let seen = r.kern.0.lock().unwrap().out_at_destroy.clone();
        assert_eq!(seen.len(), 2, "70 resets: two batches");
        let destroyed = r.destroyed();
        let mut from = 0;
        for out in &seen {
            // The last line before the batch names exactly the sockets of the batch, and no
            // socket_reset of them is out yet.
            let last = out.last().unwrap();
            assert_eq!(last["event"], "reset_intent", "{last}");
            let cookies: Vec<u64> = last["sockets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["cookie"].as_u64().unwrap())
                .collect();
            assert_eq!(cookies, destroyed[from..from + cookies.len()].to_vec());
            assert!(cookies.len() <= reset::DESTROY_BATCH);
            from += cookies.len();
            assert!(!out.iter().any(|e| e["event"] == "socket_reset"
                && cookies.contains(&e["cookie"].as_u64().unwrap())));
        }
        assert_eq!(from, 70);
        assert_eq!(destroyed.len(), 70);
        assert_eq!(r.out.named("socket_reset").len(), 70);
    }

    #[test]
    fn a_reload_keeps_socket_state_and_a_bad_file_changes_nothing() {
        let dir =
            std::env::temp_dir().join(format!("tcpstall-agent-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        let observe = POLICY.replace("action = \"reset\"", "action = \"observe\"");
        std::fs::write(&path, &observe).unwrap();
        let mut r = rig_with(Policy::load(&path).unwrap());
        r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
        r.agent.tick().unwrap();
        assert_eq!(r.out.named("stall_started").len(), 1);
        assert!(r.destroyed().is_empty());
        // The same rule, now resetting: the stall already known is reset, not started again.
        std::fs::write(&path, POLICY).unwrap();
        r.agent.reload_policy();
        let reload = r.out.named("policy_reload");
        assert_eq!(reload[0]["ok"], true, "{}", reload[0]);
        assert_eq!(reload[0]["mode"], "enforce");
        r.agent.tick().unwrap();
        assert_eq!(r.destroyed(), vec![1]);
        assert_eq!(r.out.named("stall_started").len(), 1);
        // A bad file is refused with its problems; the reset rule stays in force.
        std::fs::write(&path, format!("{POLICY}bogus = 1\n")).unwrap();
        r.agent.reload_policy();
        let reload = r.out.named("policy_reload");
        assert_eq!(reload[1]["ok"], false);
        let problem = reload[1]["problems"][0].as_str().unwrap();
        assert!(
            problem.starts_with(&format!(
                "{}:{}:1: unknown key `bogus`",
                path.display(),
                POLICY.lines().count() + 1
            )),
            "{problem}"
        );
        r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
        r.agent.tick().unwrap();
        assert_eq!(r.destroyed(), vec![1, 2]);
        // Without --policy there is nothing to reload.
        let mut bare = rig_with(Policy::default());
        bare.agent.reload_policy();
        let reload = bare.out.named("policy_reload");
        assert_eq!(
            (reload[0]["ok"].as_bool(), reload[0]["policy"].is_null()),
            (Some(true), true)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_close_noted_after_the_map_read_is_no_recovery() {
        let mut r = rig("[guards]\nmax_resets_per_minute = 0\n");
        r.add(stalled(7, "10.9.0.2:40000", StallClass::ZeroWindow), true);
        r.agent.tick().unwrap();
        assert_eq!(r.out.named("stall_started").len(), 1);
        // The socket closes between two ticks: its entry is gone at the next read, and its
        // note is on the ring only once that read is done.
        r.drop_entry(7);
        r.map.0.lock().unwrap().late_notes.push(note(7));
        r.agent.tick().unwrap();
        assert_eq!(
            r.out.named("stall_cleared").len(),
            0,
            "{:?}",
            r.out.events()
        );
        assert_eq!(r.out.named("stall_closed").len(), 1);
        assert!(r.agent.calibration.rows().iter().all(|c| c.count == 0));
    }

    #[test]
    fn a_lost_close_note_is_settled_by_the_kernel() {
        let mut r = rig("[guards]\nmax_resets_per_minute = 0\n");
        r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
        r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
        r.agent.tick().unwrap();
        assert_eq!(r.out.named("stall_started").len(), 2);
        // Both leave the map with no note: 1 is gone from the kernel (closed), 2 is still
        // established with nothing queued (drained).
        r.drop_entry(1);
        r.drop_entry(2);
        {
            let mut k = r.kern.0.lock().unwrap();
            k.live.remove(&1);
            k.live.get_mut(&2).unwrap().send_q = 0;
        }
        r.agent.tick().unwrap();
        let closed = r.out.named("stall_closed");
        let cleared = r.out.named("stall_cleared");
        assert_eq!((closed.len(), cleared.len()), (1, 1));
        assert_eq!(closed[0]["cookie"], 1);
        assert_eq!(cleared[0]["cookie"], 2);
    }

    #[test]
    fn protected_ports_are_directional_and_checked_before_the_kernel() {
        let mut r = rig("");
        // Our outgoing connection to a peer's port 22 (no listener on our port).
        let mut out = stalled(1, "10.9.0.2:22", StallClass::ZeroWindow);
        out.lport = 40000;
        r.add(out, true);
        // A client that connected to our service on :8080 from source port 22.
        r.add(stalled(2, "10.9.1.2:22", StallClass::ZeroWindow), true);
        r.kern.0.lock().unwrap().listeners.insert(8080);
        // The rule selects local port 8080 only; widen it to port 40000 for socket 1.
        let p = Policy::parse(
            &POLICY.replace("local_ports = [8080]", "local_ports = [8080, 40000]"),
            "t",
        )
        .unwrap();
        r.agent.policy = Arc::new(p);
        r.agent.tick().unwrap();
        assert_eq!(r.destroyed(), vec![2]);
        let skipped = r.out.named("reset_skipped");
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0]["cookie"], 1);
        assert_eq!(skipped[0]["guard"], "protected_port");
        assert!(skipped[0]["detail"].as_str().unwrap().contains("outgoing"));
    }

    #[test]
    fn a_socket_the_kernel_shows_recovered_is_not_reset() {
        let mut r = rig("");
        // The map says stalled; the kernel's send queue shrank (acks the map missed).
        r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
        r.kern.0.lock().unwrap().live.get_mut(&1).unwrap().send_q = 100;
        // And one the kernel shows drained completely: its stale entry is removed.
        r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
        r.kern.0.lock().unwrap().live.get_mut(&2).unwrap().send_q = 0;
        // And a no_ack stall whose peer the kernel heard from 50 ms ago.
        r.add(stalled(3, "10.9.0.4:40000", StallClass::NoAck), true);
        r.kern
            .0
            .lock()
            .unwrap()
            .live
            .get_mut(&3)
            .unwrap()
            .last_ack_recv_ms = 50;
        r.agent.tick().unwrap();
        assert!(r.destroyed().is_empty());
        let skipped = r.out.named("reset_skipped");
        assert_eq!(skipped.len(), 3);
        assert!(skipped.iter().all(|e| e["guard"] == "not_stalled_anymore"));
        assert_eq!(r.map.0.lock().unwrap().removed, vec![2]);
        // One batched lookup for the three.
        assert_eq!(r.kern.0.lock().unwrap().lookup_many_calls, 1);
        // The drained one is recorded as recovered at the next tick.
        r.agent.tick().unwrap();
        let cleared = r.out.named("stall_cleared");
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0]["cookie"], 2);
    }

    #[test]
    fn a_mass_disconnect_is_reset_in_one_tick_under_default_guards() {
        let mut r = rig("");
        for i in 0..3000u64 {
            let port = 10000 + i;
            r.add(
                stalled(100 + i, &format!("10.9.0.2:{port}"), StallClass::NoAck),
                true,
            );
        }
        // The rest of the node is fine.
        for i in 0..5u64 {
            r.add(healthy(10 + i, &format!("10.7.0.{}:5000", 2 + i)), true);
        }
        r.agent.tick().unwrap();
        assert_eq!(r.destroyed().len(), 3000);
        // In batches of DESTROY_BATCH, each announced by its reset_intent line first.
        let batches = 3000usize.div_ceil(reset::DESTROY_BATCH);
        assert_eq!(r.kern.0.lock().unwrap().destroy_calls, batches);
        let intents = r.out.named("reset_intent");
        assert_eq!(intents.len(), batches);
        let announced: Vec<u64> = intents
            .iter()
            .flat_map(|e| e["sockets"].as_array().unwrap().clone())
            .map(|s| s["cookie"].as_u64().unwrap())
            .collect();
        assert_eq!(announced, r.destroyed());
        let mass = r.out.named("mass_disconnect");
        assert_eq!(mass.len(), 1);
        assert_eq!(mass[0]["network"], "10.9.0.0/24");
        assert_eq!(r.out.named("reset_skipped").len(), 0);
    }

    #[test]
    fn without_a_disconnect_budgets_hold_per_rule_and_network() {
        let mut r = rig("");
        // 100 peers of one network alive but not reading (zero window): no mass disconnect.
        for i in 0..100u64 {
            r.add(
                stalled(
                    100 + i,
                    &format!("198.51.100.7:{}", 10000 + i),
                    StallClass::ZeroWindow,
                ),
                true,
            );
        }
        r.agent.tick().unwrap();
        // Rule budget max(60, 10 % of 100) = 60; one network at most half of it.
        assert_eq!(r.destroyed().len(), 30);
        let skipped = r.out.named("reset_skipped");
        assert_eq!(skipped.len(), 70);
        assert!(skipped.iter().all(|e| e["guard"] == "network_limit"));
        // Another network still gets the rest of the rule's budget.
        for i in 0..40u64 {
            r.add(
                stalled(
                    1000 + i,
                    &format!("203.0.113.9:{}", 10000 + i),
                    StallClass::ZeroWindow,
                ),
                true,
            );
        }
        r.agent.tick().unwrap();
        assert_eq!(r.destroyed().len(), 60);
        let skipped = r.out.named("reset_skipped");
        assert!(skipped.iter().any(|e| e["guard"] == "rate_limit"));
    }

    #[test]
    fn every_network_silent_at_once_holds_resets() {
        let mut r = rig("");
        for k in 1..=4u64 {
            for i in 0..10u64 {
                r.add(
                    stalled(
                        k * 100 + i,
                        &format!("10.{k}.0.2:{}", 10000 + i),
                        StallClass::NoAck,
                    ),
                    true,
                );
            }
        }
        r.agent.tick().unwrap();
        assert!(r.destroyed().is_empty());
        let hold = r.out.named("partition_hold");
        assert_eq!(hold.len(), 1);
        assert_eq!(hold[0]["state"], "started");
        assert_eq!(hold[0]["silent_networks"], 4);
        let skipped = r.out.named("reset_skipped");
        assert_eq!(skipped.len(), 40);
        assert!(skipped.iter().all(|e| e["guard"] == "partition_hold"));
        // ACKs come back from three networks: the hold ends, and the one network still
        // silent is reset (10 sockets: under the mass-disconnect size, within the budget).
        {
            let mut m = r.map.0.lock().unwrap();
            let now = monotonic_ns();
            m.states.retain(|s| s.raddr[1] == 1);
            drop(m);
            for k in 2..=4u64 {
                r.add(healthy(k * 1000, &format!("10.{k}.0.2:9999")), true);
            }
            let _ = now;
        }
        r.agent.tick().unwrap();
        let hold = r.out.named("partition_hold");
        assert_eq!(hold.len(), 2);
        assert_eq!(hold[1]["state"], "ended");
        assert_eq!(hold[1]["resets_held"], 40);
        assert_eq!(r.destroyed().len(), 10);
    }

    #[test]
    fn transient_errors_are_retried_with_backoff_and_others_are_final() {
        let mut r = rig("");
        r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
        r.kern.0.lock().unwrap().destroy_errors = vec![libc::ENOBUFS];
        r.agent.tick().unwrap();
        let failed = r.out.named("reset_failed");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0]["error"], "ENOBUFS");
        assert_eq!(failed[0]["retry_in_ms"], 100);
        // Not before the backoff ...
        r.agent.tick().unwrap();
        assert!(r.destroyed().is_empty());
        std::thread::sleep(Duration::from_millis(120));
        // ... then again, and it works.
        r.agent.tick().unwrap();
        assert_eq!(r.destroyed(), vec![1]);
        assert_eq!(r.out.named("socket_reset").len(), 1);
        // EPERM is final: one event, no retry.
        r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
        r.kern.0.lock().unwrap().destroy_errors = vec![libc::EPERM];
        r.agent.tick().unwrap();
        std::thread::sleep(Duration::from_millis(120));
        r.agent.tick().unwrap();
        let failed = r.out.named("reset_failed");
        assert_eq!(failed.len(), 2);
        assert!(failed[1]["retry_in_ms"].is_null());
        assert_eq!(r.destroyed(), vec![1]);
    }

    #[test]
    fn metrics_count_what_the_events_say() {
        let mut r = rig("");
        r.agent.metrics = crate::metrics::Exporter::detached(crate::metrics::Setup {
            hooks: &[],
            degraded: &[],
            socket_key_by_address: false,
            policy: &r.agent.policy.clone(),
            dry_run: false,
            reset_works: true,
            orphans_safe: true,
            map_capacity: 100_000,
            bpf_stats: false,
            started: Instant::now(),
        });
        let has = |text: &str, series: &str| {
            assert!(text.contains(&format!("\n{series}\n")), "{series}\n{text}");
        };
        r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
        let mut other = stalled(2, "10.9.0.3:40000", StallClass::NoAck);
        other.lport = 9999; // no rule
        r.add(other, true);
        r.agent.tick().unwrap();
        assert_eq!(r.destroyed(), vec![1]);
        let text = r.agent.metrics.encode(false).unwrap();
        for series in [
            r#"tcpstall_resets_total{rule="svc",result="done"} 1"#,
            r#"tcpstall_stalls_started_total{rule="svc",class="zero_window"} 1"#,
            r#"tcpstall_stalls_started_total{rule="(defaults)",class="no_ack"} 1"#,
            r#"tcpstall_stalls_active{rule="svc",class="zero_window"} 1"#,
            r#"tcpstall_stalls_active{rule="(defaults)",class="no_ack"} 1"#,
            "tcpstall_sockets_tracked 2",
            "tcpstall_map_capacity 100000",
            "tcpstall_tick_duration_seconds_count 1",
        ] {
            has(&text, series);
        }
        // The reset socket closes: closed, and no longer active.
        r.drop_entry(1);
        r.map.0.lock().unwrap().notes.push(note(1));
        r.agent.tick().unwrap();
        let text = r.agent.metrics.encode(false).unwrap();
        for series in [
            r#"tcpstall_stalls_closed_total{rule="svc",class="zero_window"} 1"#,
            r#"tcpstall_stalls_active{rule="svc",class="zero_window"} 0"#,
            "tcpstall_sockets_tracked 1",
        ] {
            has(&text, series);
        }
    }

    #[test]
    fn a_full_map_makes_room_without_dropping_a_stall() {
        let mut r = rig("[guards]\nmax_resets_per_minute = 0\n");
        r.map.0.lock().unwrap().max = 20;
        r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
        for i in 0..19u64 {
            let mut s = healthy(100 + i, &format!("10.7.0.2:{}", 10000 + i));
            // Older activity for higher cookies.
            let t = s.last_ack_ns - i * S;
            s.last_ack_ns = t;
            s.last_progress_ns = t;
            s.first_seen_ns = t - S;
            r.add(s, true);
        }
        r.agent.tick().unwrap();
        let removed = r.map.0.lock().unwrap().removed.clone();
        // 20 of 20: down to 18, the least recently active first, never the stalled one.
        assert_eq!(removed, vec![118, 117]);
        assert_eq!(r.agent.map_evicted, 2);
        assert!(r.out.named("stall_cleared").is_empty());
    }

    #[test]
    fn verify_live_reads_state_queue_window_and_acks() {
        let snap =
            Snapshot::from_state(&stalled(1, "10.9.0.2:1", StallClass::NoAck), monotonic_ns());
        let ok = diag(1, 4000);
        assert_eq!(verify_live(&snap, StallClass::NoAck, &ok), Ok(()));
        let closed = TcpDiag {
            state: 7,
            ..ok.clone()
        };
        assert!(verify_live(&snap, StallClass::NoAck, &closed).is_err());
        let mut zw = ok.clone();
        zw.tcp_info_len = 400;
        zw.snd_wnd = 1000;
        assert!(verify_live(&snap, StallClass::ZeroWindow, &zw).is_err());
        zw.snd_wnd = 0;
        assert_eq!(verify_live(&snap, StallClass::ZeroWindow, &zw), Ok(()));
        let _ = Ipv4Addr::LOCALHOST;
    }

    fn adopted() -> Pinning {
        Pinning {
            adopted: true,
            path: None,
            detail: "adopted the kernel map pinned at /test".into(),
        }
    }

    fn state_file(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tcpstall-agent-unit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(state::STATE_FILE)
    }

    #[test]
    fn a_restart_keeps_stall_clocks_budgets_and_decisions_and_drops_what_went_away() {
        let path = state_file("restart");
        let extra = "[guards]\nmax_resets_per_minute = 1\nnetwork_share = 1.0\n";
        let mut a = rig(extra);
        a.agent.persist.file = Some(path.clone());
        a.agent.persist.boot_id = state::boot_id();
        let s1 = stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow);
        let (s2, s4, s5) = (
            stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow),
            stalled(4, "10.9.0.4:40000", StallClass::ZeroWindow),
            stalled(5, "10.9.0.5:40000", StallClass::ZeroWindow),
        );
        for s in [s1, s2, s4, s5] {
            a.add(s, true);
        }
        a.agent.tick().unwrap();
        assert_eq!(a.destroyed(), vec![1]);
        let skipped = a.out.named("reset_skipped");
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped.iter().all(|e| e["guard"] == "rate_limit"));
        a.agent.save_state();
        drop(a);

        // The next agent adopts the map: 2 is still stalled, 4 closed and 5 drained while no
        // agent ran (their entries are still in the map: no hook removed them).
        let mut b = rig(extra);
        b.add(s2, true);
        b.add(s4, false);
        b.add(s5, true);
        b.kern.0.lock().unwrap().live.get_mut(&5).unwrap().send_q = 0;
        let saved = state::load(&path, monotonic_ns());
        let report = b.agent.restore(&adopted(), Some((&saved, path.as_path())));
        assert!(report.adopted && report.restored, "{report:?}");
        assert!(
            report.detail.contains("3 sockets; 1 closed and 1 drained"),
            "{}",
            report.detail
        );
        assert!(
            report.detail.contains("1 resets in the rate-limit"),
            "{}",
            report.detail
        );
        assert_eq!(b.map.0.lock().unwrap().removed, vec![4, 5]);
        b.agent.tick().unwrap();
        let ev = b.out.events();
        // 2: same stall, same decision: nothing said again.
        assert!(ev.iter().all(|e| e["cookie"] != 2), "{ev:?}");
        // 4 closed while stalled, 5 recovered: said once each, no recovery for 4.
        let closed = b.out.named("stall_closed");
        let cleared = b.out.named("stall_cleared");
        assert_eq!((closed.len(), cleared.len()), (1, 1), "{ev:?}");
        assert_eq!(closed[0]["cookie"], 4);
        assert_eq!(cleared[0]["cookie"], 5);
        // The rate-limit window carried over: a new wedge within the minute is skipped.
        b.add(stalled(6, "10.9.0.6:40000", StallClass::ZeroWindow), true);
        b.agent.tick().unwrap();
        assert!(b.destroyed().is_empty());
        let skipped = b.out.named("reset_skipped");
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0]["cookie"], 6);
        assert_eq!(skipped[0]["guard"], "rate_limit");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn without_the_kernel_map_only_histories_and_budgets_come_back() {
        let path = state_file("fresh");
        let mut a = rig("");
        a.agent.persist.file = Some(path.clone());
        a.agent.persist.boot_id = state::boot_id();
        a.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), false);
        a.agent.tick().unwrap();
        assert_eq!(a.out.named("stall_started").len(), 1);
        a.agent.save_state();
        let mut b = rig("");
        let saved = state::load(&path, monotonic_ns());
        let fresh = Pinning {
            adopted: false,
            path: None,
            detail: "kernel map started fresh: no saved kernel map in /test".into(),
        };
        let report = b.agent.restore(&fresh, Some((&saved, path.as_path())));
        assert!(!report.adopted && report.restored, "{report:?}");
        assert!(
            report.detail.contains("(0 in the same tracking session)"),
            "{}",
            report.detail
        );
        // Nothing to learn from a stall without history: it was not kept.
        assert_eq!(b.agent.tracker.len() + b.agent.tracker.dormant_len(), 0);
        // A file from an incompatible agent: started fresh, saying why.
        let bad: Result<Saved, String> = Err("it has format 9".into());
        let mut c = rig("");
        let report = c.agent.restore(&fresh, Some((&bad, path.as_path())));
        assert!(!report.adopted && !report.restored);
        assert!(
            report.detail.starts_with("started fresh: "),
            "{}",
            report.detail
        );
        assert!(report
            .detail
            .contains("state file not used: it has format 9"));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
