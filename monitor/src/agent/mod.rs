//! The agent's tick: read per-socket state → classify → policy → guards → act → events.
//!
//! The kernel parts sit behind two small traits, [`SockSource`] (the BPF map) and
//! [`DiagPath`] (sock_diag lookups and SOCK_DESTROY), so the tick is unit-tested with fakes.

//!
//! One file per part of the tick: `tick.rs` (read, classify, select, transitions), `act.rs`
//! (guard chain, re-verification, budgets, batched resets, retries), `verify.rs` (what the
//! kernel says right before acting), `evict.rs` (room in a full map), `reads.rs` (read progress without a read hook), `stale.rs` (entries
//! the kernel no longer touches), `persist.rs` (state across restarts), `report.rs` (stats,
//! metrics, live view), `reload.rs` (SIGHUP), `start.rs` (start-up), `sources.rs` (the two
//! traits and their production implementations); unit tests in `tests.rs` over the fakes in
//! `fakes.rs`.

mod act;
mod evict;
mod persist;
mod reads;
mod reload;
mod report;
mod select;
mod sends;
mod sources;
mod stale;
mod start;
mod tick;
mod verify;

pub use report::cpu_ms;
pub use sources::{DiagPath, SockSource};
pub use verify::{local_listener, verify_live};

use crate::classify::{Calibration, Tracker};
use crate::event::{self, Event, EventWriter};
use crate::guards::{Budgets, Hold, Networks};
use crate::identity::Owners;
use crate::policy::{Action, Policy};
use crate::probes::Probes;
use crate::reset::{Destroyer, Target};
use crate::snapshot::Snapshot;
use crate::state::StatePaths;
use act::{ActState, PendingReset};
use anyhow::Result;
use persist::Persist;
use report::bind_status;
use std::collections::HashMap;
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
    /// Attach the per-write hooks too (`attach::hooks`); off by default.
    pub per_write_hooks: bool,
    /// Attach the read hook too (`attach::hooks`); off by default (`reads.rs`).
    pub read_hook: bool,
    /// Attach only the hooks that fire on trouble (`attach::hooks`, `sends.rs`); off by
    /// default.
    pub trouble_hooks: bool,
    /// Stop after this long (tests, benchmarks); None = until SIGINT/SIGTERM.
    pub duration: Option<Duration>,
    /// The unix socket `tcpstall top` reads the live view from; None = off.
    pub status_socket: Option<PathBuf>,
    /// Where state is kept across restarts (`crate::state`); None = not kept (`--no-state`).
    pub state: Option<StatePaths>,
}

#[derive(Default)]
struct ResetCounts {
    done: u64,
    failed: u64,
    skipped: u64,
    retried: u64,
}

/// What the agent keeps of a tracked socket between ticks: one entry, one lookup per
/// socket and tick. Created when a tick first reads the socket from the map; removed when
/// a tick no longer finds it there (a departure) or the agent evicts it.
struct Seen {
    /// Its state at the last tick that read it.
    snap: Snapshot,
    /// That tick's number: an entry a tick did not stamp has left the map.
    tick: u64,
    /// Its remembered policy selection.
    sel: Option<select::Cached>,
    /// The process found holding it (`identity/holders.rs`), kept here once found so that a
    /// tick does not look it up again.
    holder: Option<crate::identity::holders::Holder>,
    /// What sock_diag lookups found of its reads (no read hook: `reads.rs`).
    read_seen: Option<reads::ReadSeen>,
    /// What sock_diag lookups found of its progress (no ACK hook: `sends.rs`); boxed, so
    /// that the record of every tracked socket stays as small as without it.
    send_seen: Option<Box<sends::SendSeen>>,
}

impl Seen {
    fn new(snap: Snapshot, tick: u64) -> Seen {
        Seen {
            snap,
            tick,
            sel: None,
            holder: None,
            read_seen: None,
            send_seen: None,
        }
    }
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
    /// The processes holding tracked sockets no write was seen on (`identity/holders.rs`).
    holders: crate::identity::holders::Holders,
    reset_works: bool,
    /// The start-up self-test found destroying orphans safe on this kernel.
    orphans_safe: bool,
    budgets: Budgets,
    nets: Networks,
    /// When the last partition hold ended (CLOCK_MONOTONIC ns).
    hold_ended: Option<u64>,
    hold: Hold,
    counts: ResetCounts,
    /// Last snapshot of every socket present in the kernel map at the previous tick.
    last: foldhash::HashMap<u64, Seen>,
    /// Matches sockets against the policy (`select.rs`); ticks counted for [`Seen::tick`].
    selector: select::Selector,
    ticks: u64,
    acts: HashMap<u64, ActState>,
    /// Close notes drained but not matched to a departed socket yet: cookie → (close
    /// time ns, when drained).
    closed: HashMap<u64, (u64, Instant)>,
    pending: Vec<PendingReset>,
    map_evicted: u64,
    map_stale: u64,
    last_map_full: u64,
    /// The pressure flag last set in the kernel (see `evict.rs`).
    pressure: bool,
    last_stale_check: Instant,
    /// When a tick last swept the holder cache and the dormant histories (`tick::PRUNE_EVERY`).
    last_prune: Instant,
    started: Instant,
    last_stats: Instant,
    last_sweep_us: u64,
    /// The last tick's map read, µs (`stats.map_read_us`).
    last_read_us: u64,
    /// Whether the last tick left a tracked socket with no writer seen and no holder
    /// known: only then does the next tick look through the map's records for sockets to
    /// find holders for (`tick::find_holders`). True before the first tick.
    holders_pending: bool,
    /// sock_diag lookups made for reads without a read hook (`stats.read_lookups`).
    read_lookups: u64,
    /// sock_diag lookups made for progress without an ACK hook (`--trouble-hooks`,
    /// `sends.rs`; `stats.progress_lookups`).
    progress_lookups: u64,
    /// A socket is looked up for its reads at most this often (`reads::LOOKUP_EVERY_NS`;
    /// unit tests that tick back to back set 0).
    read_lookup_every_ns: u64,
    /// For the live view (`tcpstall top`).
    mode: event::Mode,
    recent: crate::status::Recent,
    /// `--metrics-addr`: Prometheus metrics and health (off unless [`Agent::serve_metrics`]).
    metrics: crate::metrics::Exporter,
    persist: Persist,
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
            holders: Default::default(),
            reset_works,
            orphans_safe,
            budgets: Budgets::default(),
            nets: Networks::default(),
            hold: Hold::default(),
            hold_ended: None,
            counts: ResetCounts::default(),
            last: Default::default(),
            selector: Default::default(),
            ticks: 0,
            acts: HashMap::new(),
            closed: HashMap::new(),
            pending: Vec::new(),
            map_evicted: 0,
            map_stale: 0,
            last_map_full: 0,
            pressure: false,
            last_stale_check: Instant::now(),
            last_prune: Instant::now(),
            started: Instant::now(),
            last_stats: Instant::now(),
            last_sweep_us: 0,
            last_read_us: 0,
            holders_pending: true,
            read_lookups: 0,
            progress_lookups: 0,
            read_lookup_every_ns: reads::LOOKUP_EVERY_NS,
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
}

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;
