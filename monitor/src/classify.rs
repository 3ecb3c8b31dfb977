//! Stall classification: plain Rust over [`Snapshot`]s, no kernel needed.
//!
//! The agent feeds the [`Tracker`] one [`Snapshot`] per tick per tracked socket (the kernel
//! tracks a socket only while it has data queued in either direction) and tells it when a
//! socket leaves the kernel map ([`Tracker::forget`]). The tracker answers with
//! [`Transition`]s (a stall started, cleared by itself, or its socket closed) and with the
//! recovered no-progress [`Episode`]s it learnt this tick.
//!
//! # Classes
//!
//! Send side, one at a time per socket, precedence `zero_window` > `no_ack` > `slow_drain`:
//!
//! * `zero_window`: data queued, the peer's last ACK advertised a zero window, and no byte
//!   acked for the effective threshold (`zero_window_after`, see *cadence* below).
//! * `no_ack`: data in flight, window not zero, no ACK progress for the effective threshold
//!   (`no_ack_after`) *and* the sender is retransmitting: a retransmit after the last progress
//!   or a non-zero RTO backoff. Silence without retransmits is not evidence of a dead peer.
//! * `slow_drain`: the writer is blocked (send buffer full) and the peer acked fewer than
//!   `slow_drain_floor_bps` bytes per second over `slow_drain_window`, measured from this
//!   tracker's own per-tick samples of the cumulative `bytes_acked`. A socket must have been
//!   observed for the whole window before it can be judged, and must have acked something in
//!   it: a peer that acked nothing is stopped, not slow, and stopped peers are judged by
//!   `zero_window`/`no_ack` and their cadence. An active `slow_drain` stays in force while
//!   the rate is below the floor (also at 0) and escalates if a higher class starts.
//!
//! Read side, independent of the send side and observe-only:
//!
//! * `recv_backlog`: received bytes sit unread, the local application has not read for
//!   `recv_backlog_after`, and the receive side is full. "Full" means the receive window we
//!   advertise is 0, or the unread bytes reach half of `rcvbuf`: the kernel charges socket
//!   buffer memory at roughly twice the payload (skb overhead; `tcp_adv_win_scale`/the
//!   scaling ratio), so half of `rcvbuf` is about as much payload as the socket will ever
//!   take before it closes its window. A reader that is merely behind with a mostly empty
//!   buffer is not a backlog.
//!
//! # Cadence ("bursty but alive" consumers)
//!
//! A socket whose peer has recovered by itself from at least one no-progress episode is
//! judged against its own rhythm: it is stalled only when the time since its last progress
//! reaches `max(threshold, min(ceiling, cadence_factor × longest recovered gap))` (this is
//! `min(ceiling, max(threshold, cadence_factor × longest))` whenever `ceiling >= threshold`;
//! a ceiling below the rule threshold never lowers the threshold). Without history the plain
//! rule threshold applies, so the first long pause of a fresh connection is judged strictly.
//! Every decision carries an [`Evidence`] that says which of these applied and why.
//!
//! Recovered episodes come from the kernel's per-socket ring of the last
//! [`monitor_common::GAP_SLOTS`] recovered gaps; the ring is re-read every tick and
//! deduplicated by gap end time. A socket that drains completely leaves the kernel map (and
//! takes its last gap with it); when the tracker last saw such a socket in a no-progress
//! interval of at least [`MIN_GAP_NS`], it records that interval as a recovered episode with a
//! lower-bound duration (last tick that saw it queued − last progress), so a socket that
//! drains between bursts keeps its cadence.
//!
//! # Memory
//!
//! Per socket the tracker keeps at most [`HISTORY_EPISODES`] episodes and at most
//! [`DRAIN_SAMPLES_MAX`] drain-rate samples, plus two optional active stalls; see
//! [`Tracker`] for the byte bound. Histories of drained sockets stay (dormant) until
//! [`Tracker::prune`] drops them.

use crate::snapshot::Snapshot;
use monitor_common::{Gap, MIN_GAP_NS};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Recovered episodes kept per socket (the newest ones).
pub const HISTORY_EPISODES: usize = 8;
/// Hard bound on the drain-rate samples kept per live socket.
pub const DRAIN_SAMPLES_MAX: usize = 128;
/// Samples are kept at least `slow_drain_window / DRAIN_SAMPLE_DIVISOR` apart, so a window
/// is covered by about this many samples whatever the tick rate (rate error < 2 %).
const DRAIN_SAMPLE_DIVISOR: u64 = 64;
/// Episode durations kept per (rule, class) by [`Calibration`] for percentiles.
pub const CALIBRATION_KEEP: usize = 1024;

/// The kinds of wedge tcpstall recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum StallClass {
    /// Data queued, peer window 0, no bytes acked for the threshold (peer alive, not reading).
    ZeroWindow,
    /// Data outstanding, no ACK progress for the threshold, retransmits/backoff rising (peer gone).
    NoAck,
    /// Bytes acked per second below the floor while the send buffer is full.
    SlowDrain,
    /// Observe only: the local app is not reading its receive queue.
    RecvBacklog,
}

impl StallClass {
    pub const ALL: [StallClass; 4] = [
        StallClass::ZeroWindow,
        StallClass::NoAck,
        StallClass::SlowDrain,
        StallClass::RecvBacklog,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            StallClass::ZeroWindow => "zero_window",
            StallClass::NoAck => "no_ack",
            StallClass::SlowDrain => "slow_drain",
            StallClass::RecvBacklog => "recv_backlog",
        }
    }

    /// Send-side classes describe the peer not taking our data; only they can be reset.
    pub fn is_send_side(self) -> bool {
        self != StallClass::RecvBacklog
    }

    /// Precedence among send-side classes (higher wins when several hold).
    fn precedence(self) -> u8 {
        match self {
            StallClass::ZeroWindow => 3,
            StallClass::NoAck => 2,
            StallClass::SlowDrain => 1,
            StallClass::RecvBacklog => 0,
        }
    }

    /// The [`Thresholds`] (policy) setting that decides this class, for messages.
    pub fn threshold_knob(self) -> &'static str {
        match self {
            StallClass::ZeroWindow => "zero_window_after",
            StallClass::NoAck => "no_ack_after",
            StallClass::SlowDrain => "slow_drain_window",
            StallClass::RecvBacklog => "recv_backlog_after",
        }
    }
}

impl std::fmt::Display for StallClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-socket classification parameters (from the policy rule that selects the socket, or
/// the policy defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub zero_window_after: Duration,
    pub no_ack_after: Duration,
    /// Bytes per second; below this while the send buffer is full is `slow_drain`.
    pub slow_drain_floor_bps: u64,
    /// Window over which the drain rate is measured.
    pub slow_drain_window: Duration,
    pub recv_backlog_after: Duration,
    /// Cadence rule: a socket that recovered by itself is stalled only after
    /// max(threshold, cadence_factor × longest recovered gap) ...
    pub cadence_factor: f64,
    /// ... but never later than this.
    pub ceiling: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            zero_window_after: Duration::from_secs(30),
            no_ack_after: Duration::from_secs(30),
            slow_drain_floor_bps: 1024,
            slow_drain_window: Duration::from_secs(30),
            recv_backlog_after: Duration::from_secs(30),
            cadence_factor: 2.0,
            ceiling: Duration::from_secs(300),
        }
    }
}

impl Thresholds {
    /// The rule's plain (history-free) threshold for `class`; for `slow_drain` the
    /// measurement window.
    pub fn threshold_for(&self, class: StallClass) -> Duration {
        match class {
            StallClass::ZeroWindow => self.zero_window_after,
            StallClass::NoAck => self.no_ack_after,
            StallClass::SlowDrain => self.slow_drain_window,
            StallClass::RecvBacklog => self.recv_backlog_after,
        }
    }
}

/// Why a socket is (or would be) judged stalled when it is: the numbers behind the decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Recovered episodes seen for this socket over its life (also across drains).
    pub recovered_episodes: u32,
    /// Longest of the last [`HISTORY_EPISODES`] recovered episodes (0 without history).
    pub longest_gap_ms: u64,
    /// Bytes acked over the last `slow_drain_window` (or since first observed, if shorter).
    pub bytes_acked_last_window: u64,
    /// The threshold the socket was judged against.
    pub effective_threshold_ms: u64,
    /// How the effective threshold was chosen, in words.
    pub threshold_reason: String,
}

/// One no-progress interval with data queued that ended in progress by itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// `ZeroWindow` if the peer's window was zero when it ended, else `NoAck`.
    pub class: StallClass,
    /// Last progress before the episode.
    pub start_ns: u64,
    /// The progress that ended it.
    pub end_ns: u64,
    pub duration_ms: u64,
    /// Bytes acked in the recovery (growth of `bytes_acked` in the tick that saw it end).
    pub bytes_acked: u64,
}

/// A change of a socket's stall state.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// The socket became stalled (or, on the send side, escalated to a class of higher
    /// precedence while stalled: `slow_drain` → `no_ack` → `zero_window`; the new class
    /// replaces the old one without a `Cleared`).
    Started {
        class: StallClass,
        stalled_for_ms: u64,
        evidence: Evidence,
    },
    /// Progress resumed by itself.
    Cleared {
        class: StallClass,
        stalled_for_ms: u64,
    },
    /// The socket went away while stalled.
    Closed {
        class: StallClass,
        stalled_for_ms: u64,
    },
}

impl Transition {
    pub fn class(&self) -> StallClass {
        match self {
            Transition::Started { class, .. }
            | Transition::Cleared { class, .. }
            | Transition::Closed { class, .. } => *class,
        }
    }

    pub fn stalled_for_ms(&self) -> u64 {
        match self {
            Transition::Started { stalled_for_ms, .. }
            | Transition::Cleared { stalled_for_ms, .. }
            | Transition::Closed { stalled_for_ms, .. } => *stalled_for_ms,
        }
    }
}

/// What one [`Tracker::observe`] call learnt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// Send-side transition (`zero_window`, `no_ack`, `slow_drain`).
    pub transition: Option<Transition>,
    /// Episodes that ended by themselves, newly seen this tick (oldest first).
    pub recovered: Vec<Episode>,
    /// Read-side transition (`recv_backlog`, observe only), independent of `transition`.
    pub recv_transition: Option<Transition>,
}

/// What [`Tracker::forget_detailed`] learnt about a socket that left the kernel map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Departure {
    /// Send-side stall ended: `Closed` (socket closed) or `Cleared` (drained).
    pub transition: Option<Transition>,
    /// Read-side stall ended, likewise.
    pub recv_transition: Option<Transition>,
    /// A drained socket that the last tick saw in a no-progress interval recovered from it;
    /// its duration is a lower bound (see the module docs). Already added to the history.
    pub recovered: Option<Episode>,
}

/// A stall in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveStall {
    pub class: StallClass,
    /// Start of the stall: last progress (`zero_window`/`no_ack`), start of the measured
    /// window (`slow_drain`), last local read (`recv_backlog`).
    pub since_ns: u64,
    /// Evidence at decision time.
    pub evidence: Evidence,
    /// `bytes_acked` at decision time (send side) or the kernel's `last_read_ns` (read side),
    /// for re-verification before a reset.
    pub progress_mark: u64,
    /// Snapshot time of the decision.
    pub decided_ns: u64,
    /// The kernel's `last_progress_ns` (send side) / `last_read_ns` (read side) at decision.
    pub last_progress_ns: u64,
    /// The kernel tracking session (`first_seen_ns`) the decision was made in.
    pub session_ns: u64,
    /// `slow_drain` only: the floor in force at decision (bytes per second).
    pub floor_bps: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Sample {
    at_ns: u64,
    acked: u64,
}

/// The values of a socket's previous tick that the next one needs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct LastTick {
    now_ns: u64,
    bytes_acked: u64,
    last_progress_ns: u64,
    queued_bytes: u64,
    zero_window: bool,
}

/// Bytes acked over (up to) the drain window.
#[derive(Clone, Copy, Debug)]
struct Drain {
    acked: u64,
    span_ns: u64,
    from_ns: u64,
    /// The samples reach back a full window.
    full_window: bool,
}

/// Recovered-episode history of one socket; survives drains.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct History {
    /// Oldest first, at most [`HISTORY_EPISODES`].
    episodes: VecDeque<Episode>,
    total: u32,
    /// Newest gap end seen: gaps in the kernel ring ending at or before this are known.
    last_gap_end_ns: u64,
}

impl History {
    fn push(&mut self, ep: Episode) {
        if self.episodes.len() == HISTORY_EPISODES {
            self.episodes.pop_front();
        }
        self.last_gap_end_ns = self.last_gap_end_ns.max(ep.end_ns);
        self.episodes.push_back(ep);
        self.total = self.total.saturating_add(1);
    }

    fn longest_ns(&self) -> Option<u64> {
        self.episodes
            .iter()
            .map(|e| e.end_ns.saturating_sub(e.start_ns))
            .max()
    }
}

/// State of a socket while it is in the kernel map (one tracking session).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Live {
    /// The kernel's `first_seen_ns`: changes when the socket drained and was tracked again.
    session_ns: u64,
    /// Oldest first, at most [`DRAIN_SAMPLES_MAX`].
    samples: VecDeque<Sample>,
    last: Option<LastTick>,
    send: Option<ActiveStall>,
    recv: Option<ActiveStall>,
    evidence: Option<Evidence>,
}

impl Live {
    fn new(session_ns: u64) -> Live {
        Live {
            session_ns,
            samples: VecDeque::new(),
            last: None,
            send: None,
            recv: None,
            evidence: None,
        }
    }

    /// Bytes acked from the newest sample at least `window_ns` old (or the oldest sample)
    /// up to `now`. None before the first sample.
    fn drain(&self, now_ns: u64, acked_now: u64, window_ns: u64) -> Option<Drain> {
        let oldest = self.samples.front()?;
        let reach = now_ns.checked_sub(window_ns);
        let base = reach
            .and_then(|r| self.samples.iter().rev().find(|s| s.at_ns <= r))
            .unwrap_or(oldest);
        Some(Drain {
            acked: acked_now.saturating_sub(base.acked),
            span_ns: now_ns.saturating_sub(base.at_ns),
            from_ns: base.at_ns,
            full_window: reach.is_some_and(|r| base.at_ns <= r),
        })
    }

    fn push_sample(&mut self, now_ns: u64, acked: u64, window_ns: u64) {
        // Keep exactly one sample at or before the window start (the rate's base).
        if let Some(reach) = now_ns.checked_sub(window_ns) {
            while self.samples.len() >= 2 && self.samples[1].at_ns <= reach {
                self.samples.pop_front();
            }
        }
        let spacing = window_ns / DRAIN_SAMPLE_DIVISOR;
        let due = match self.samples.back() {
            None => true,
            Some(b) => now_ns > b.at_ns && now_ns - b.at_ns >= spacing,
        };
        if due {
            // Make room first so the ring never grows past its bound (nor its capacity).
            if self.samples.len() >= DRAIN_SAMPLES_MAX {
                self.samples.pop_front();
            }
            self.samples.push_back(Sample {
                at_ns: now_ns,
                acked,
            });
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Entry {
    history: History,
    /// None: dormant (drained, history kept for its cadence).
    live: Option<Live>,
    last_seen_ns: u64,
}

/// Per-socket stall state machine over successive [`Snapshot`]s.
///
/// Memory bound per socket: at most [`HISTORY_EPISODES`] (8) episodes of 40 bytes, at most
/// [`DRAIN_SAMPLES_MAX`] (128) drain samples of 16 bytes, at most two [`ActiveStall`]s and
/// one [`Evidence`] (each ~150 bytes plus a reason string of < 128 bytes) and ~100 bytes of
/// bookkeeping: under 3.5 KiB for a live socket. A dormant socket (drained, history kept)
/// holds only its episodes: under 0.5 KiB. Live sockets are bounded by the kernel map size
/// (the agent calls [`Tracker::forget`] when they leave it); dormant ones by
/// [`Tracker::prune`]. A closed socket's entry is dropped at once (cookies are never reused).
#[derive(Debug, Default)]
pub struct Tracker {
    socks: HashMap<u64, Entry>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Feed one tick's snapshot of one tracked socket, judged with the thresholds of the
    /// policy rule that selects it.
    pub fn observe(&mut self, snap: &Snapshot, t: &Thresholds) -> Observation {
        let now = snap.now_ns;
        let entry = self.socks.entry(snap.cookie).or_default();
        entry.last_seen_ns = now;
        let mut obs = Observation::default();

        // The socket drained and was tracked again without the agent noticing: close the
        // old session as a drain.
        if entry
            .live
            .as_ref()
            .is_some_and(|l| l.session_ns != snap.first_seen_ns)
        {
            let old = entry.live.take().expect("checked above");
            let dep = depart(&mut entry.history, old, false, now);
            obs.transition = dep.transition;
            obs.recv_transition = dep.recv_transition;
            obs.recovered.extend(dep.recovered);
        }
        let send_done = obs.transition.is_some();
        let recv_done = obs.recv_transition.is_some();

        let Entry { history, live, .. } = entry;
        let live = live.get_or_insert_with(|| Live::new(snap.first_seen_ns));

        // 1. Newly recovered gaps from the kernel ring.
        let growth = live
            .last
            .map(|l| snap.bytes_acked.saturating_sub(l.bytes_acked));
        let mut fresh: Vec<&Gap> = snap
            .recent_gaps
            .iter()
            .filter(|g| g.end_ns > history.last_gap_end_ns && g.end_ns >= g.start_ns)
            .collect();
        fresh.sort_by_key(|g| g.end_ns);
        let n = fresh.len();
        for (i, g) in fresh.into_iter().enumerate() {
            // The tick's growth belongs to the newest gap; if several ended within one
            // tick, the earlier ones get the bytes of the ACK that ended them.
            let bytes = match growth {
                Some(grown) if i + 1 == n => grown.max(g.acked as u64),
                _ => g.acked as u64,
            };
            let ep = Episode {
                class: if g.zero_window != 0 {
                    StallClass::ZeroWindow
                } else {
                    StallClass::NoAck
                },
                start_ns: g.start_ns,
                end_ns: g.end_ns,
                duration_ms: (g.end_ns - g.start_ns) / NS_PER_MS,
                bytes_acked: bytes,
            };
            history.push(ep.clone());
            obs.recovered.push(ep);
        }

        // 2. Drain rate over the window, from earlier ticks' samples.
        let window_ns = dur_ns(t.slow_drain_window);
        let drain = live.drain(now, snap.bytes_acked, window_ns);

        // 3. Send side.
        if !send_done {
            obs.transition = step_send(live, history, snap, t, drain);
        }

        // 4. Read side.
        if !recv_done {
            obs.recv_transition = step_recv(live, history, snap, t, drain);
        }

        // 5. Bookkeeping for the next tick.
        // Evidence speaks of the stall in force, or of the one that just cleared.
        let cleared = match &obs.transition {
            Some(Transition::Cleared { class, .. }) => Some(*class),
            _ => None,
        };
        let ev_class = match (&live.send, cleared) {
            (Some(a), _) => a.class,
            (None, Some(c)) => c,
            (None, None) if snap.zero_window => StallClass::ZeroWindow,
            (None, None) => StallClass::NoAck,
        };
        live.evidence = Some(class_evidence(ev_class, history, snap, t, drain).1);
        live.push_sample(now, snap.bytes_acked, window_ns);
        live.last = Some(LastTick {
            now_ns: now,
            bytes_acked: snap.bytes_acked,
            last_progress_ns: snap.last_progress_ns,
            queued_bytes: snap.queued_bytes,
            zero_window: snap.zero_window,
        });
        obs
    }

    /// Socket left the kernel map: closed=true (it closed) -> Some(Closed) if it was stalled;
    /// closed=false (drained: everything acked) -> Some(Cleared) if it was stalled. History of
    /// a drained socket is kept (dormant) so a bursty socket that drains between bursts keeps
    /// its cadence.
    ///
    /// Returns the send-side transition, or the read-side one when only that was active; use
    /// [`Tracker::forget_detailed`] to get both and the episode a drain ended.
    pub fn forget(&mut self, cookie: u64, closed: bool, now_ns: u64) -> Option<Transition> {
        let d = self.forget_detailed(cookie, closed, now_ns);
        d.transition.or(d.recv_transition)
    }

    /// [`Tracker::forget`] with everything it learnt: both sides' transitions and, for a
    /// drain, the no-progress episode the drain ended (if the last tick saw one).
    pub fn forget_detailed(&mut self, cookie: u64, closed: bool, now_ns: u64) -> Departure {
        let Some(entry) = self.socks.get_mut(&cookie) else {
            return Departure::default();
        };
        let dep = match entry.live.take() {
            Some(live) => depart(&mut entry.history, live, closed, now_ns),
            None => Departure::default(),
        };
        entry.last_seen_ns = entry.last_seen_ns.max(now_ns);
        if closed || entry.history.episodes.is_empty() {
            self.socks.remove(&cookie);
        }
        dep
    }

    /// The send-side stall in force for `cookie` (the one a reset acts on).
    pub fn active(&self, cookie: u64) -> Option<&ActiveStall> {
        self.socks.get(&cookie)?.live.as_ref()?.send.as_ref()
    }

    /// The read-side (`recv_backlog`, observe-only) stall in force for `cookie`.
    pub fn active_recv(&self, cookie: u64) -> Option<&ActiveStall> {
        self.socks.get(&cookie)?.live.as_ref()?.recv.as_ref()
    }

    /// Evidence for a socket right now (for reset events): as computed at its last tick for
    /// its active send-side class, or for the class its state points to (`zero_window` when
    /// the peer's window is zero, else `no_ack`). None for unknown or dormant sockets.
    pub fn evidence(&self, cookie: u64) -> Option<Evidence> {
        self.socks.get(&cookie)?.live.as_ref()?.evidence.clone()
    }

    /// The retained recovered episodes of a socket (live or dormant), oldest first.
    pub fn episodes(&self, cookie: u64) -> Vec<Episode> {
        self.socks
            .get(&cookie)
            .map(|e| e.history.episodes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Drop dormant histories not seen for `max_age`; keep at most `max_dormant` (oldest
    /// dropped first). Returns how many dropped. Live sockets are never dropped here.
    pub fn prune(&mut self, now_ns: u64, max_age: Duration, max_dormant: usize) -> usize {
        let before = self.socks.len();
        let max_age_ns = dur_ns(max_age);
        self.socks
            .retain(|_, e| e.live.is_some() || now_ns.saturating_sub(e.last_seen_ns) <= max_age_ns);
        let mut dormant: Vec<(u64, u64)> = self
            .socks
            .iter()
            .filter(|(_, e)| e.live.is_none())
            .map(|(c, e)| (e.last_seen_ns, *c))
            .collect();
        if dormant.len() > max_dormant {
            dormant.sort_unstable();
            let excess = dormant.len() - max_dormant;
            for (_, cookie) in &dormant[..excess] {
                self.socks.remove(cookie);
            }
        }
        before - self.socks.len()
    }

    /// Sockets currently tracked (in the kernel map as far as the tracker knows).
    pub fn len(&self) -> usize {
        self.socks.values().filter(|e| e.live.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dormant histories (drained sockets kept for their cadence).
    pub fn dormant_len(&self) -> usize {
        self.socks.values().filter(|e| e.live.is_none()).count()
    }

    /// Sockets with a stall in force on either side.
    pub fn stalled_count(&self) -> usize {
        self.socks
            .values()
            .filter_map(|e| e.live.as_ref())
            .filter(|l| l.send.is_some() || l.recv.is_some())
            .count()
    }

    /// Still stalled and no progress since the decision? (Re-verification right before a
    /// reset: pass the freshest snapshot.) Only send-side stalls qualify. For `zero_window`
    /// and `no_ack`: same tracking session, data still queued, no byte acked and no progress
    /// since the decision. For `slow_drain`: the send buffer still full and the bytes acked
    /// since the decision within the floor rate (measured over at least one second).
    pub fn still_stalled(&self, snap: &Snapshot) -> bool {
        let Some(a) = self.active(snap.cookie) else {
            return false;
        };
        if snap.first_seen_ns != a.session_ns {
            return false;
        }
        let acked_since = snap.bytes_acked.saturating_sub(a.progress_mark);
        match a.class {
            StallClass::ZeroWindow | StallClass::NoAck => {
                snap.queued_bytes > 0
                    && acked_since == 0
                    && snap.last_progress_ns <= a.last_progress_ns
            }
            StallClass::SlowDrain => {
                let elapsed = snap.now_ns.saturating_sub(a.decided_ns).max(NS_PER_SEC);
                snap.sndbuf_full
                    && (acked_since as u128) * (NS_PER_SEC as u128)
                        <= (a.floor_bps as u128) * (elapsed as u128)
            }
            StallClass::RecvBacklog => false,
        }
    }

    /// What the tracker learnt, for saving across an agent restart ([`crate::state`]): the
    /// sockets with a stall in force, then those with recovered episodes (their cadence),
    /// the most recently seen first within each. The rest learnt nothing a restart would
    /// lose but a `slow_drain` measurement in progress, which starts over; leaving them out
    /// keeps the saves cheap on a node with thousands of busy, healthy sockets. Drain-rate
    /// samples are thinned to [`SAVED_SAMPLES_MAX`] per socket.
    pub fn export(&self) -> Vec<SavedSocket> {
        let mut order: Vec<(u8, u64, u64)> = self
            .socks
            .iter()
            .filter_map(|(c, e)| {
                let stalled = e
                    .live
                    .as_ref()
                    .is_some_and(|l| l.send.is_some() || l.recv.is_some());
                let rank = if stalled {
                    0
                } else if !e.history.episodes.is_empty() {
                    1
                } else {
                    return None;
                };
                Some((rank, u64::MAX - e.last_seen_ns, *c))
            })
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .map(|(_, _, cookie)| {
                let mut entry = self.socks[&cookie].clone();
                if let Some(l) = &mut entry.live {
                    thin(&mut l.samples, SAVED_SAMPLES_MAX);
                }
                SavedSocket { cookie, entry }
            })
            .collect()
    }

    /// Take saved sockets back (at agent start, into an empty tracker).
    ///
    /// `live_ok(cookie, session_ns)` says whether the socket's saved tracking session is
    /// still the one in the kernel map (an adopted entry with the same `first_seen_ns`).
    /// When it is not, only the socket's history is kept (dormant): its stalls, drain
    /// samples and last tick belong to a session that ended while the agent was down,
    /// unobserved — neither a recovery nor a close can be told from it. Sockets left with
    /// nothing are skipped. Bounds are enforced again ([`HISTORY_EPISODES`],
    /// [`DRAIN_SAMPLES_MAX`]) whatever the file says.
    pub fn import(
        &mut self,
        saved: Vec<SavedSocket>,
        live_ok: impl Fn(u64, u64) -> bool,
    ) -> Imported {
        let mut n = Imported::default();
        for SavedSocket { cookie, mut entry } in saved {
            if entry
                .live
                .as_ref()
                .is_some_and(|l| !live_ok(cookie, l.session_ns))
            {
                entry.live = None;
            }
            while entry.history.episodes.len() > HISTORY_EPISODES {
                entry.history.episodes.pop_front();
            }
            if let Some(l) = &mut entry.live {
                while l.samples.len() > DRAIN_SAMPLES_MAX {
                    l.samples.pop_front();
                }
            }
            if entry.live.is_none() && entry.history.episodes.is_empty() {
                n.dropped += 1;
                continue;
            }
            if self.socks.contains_key(&cookie) {
                n.dropped += 1;
                continue;
            }
            if entry.live.is_some() {
                n.live += 1;
            } else {
                n.dormant += 1;
            }
            self.socks.insert(cookie, entry);
        }
        n
    }
}

/// Drain-rate samples saved per socket ([`Tracker::export`]): evenly spaced, the oldest (the
/// rate's base) and the newest kept.
pub const SAVED_SAMPLES_MAX: usize = 16;

/// Keep at most `max` (>= 2) of `v`, evenly spaced, first and last included.
fn thin<T: Copy>(v: &mut VecDeque<T>, max: usize) {
    let len = v.len();
    if len <= max || max < 2 {
        return;
    }
    let kept: VecDeque<T> = (0..max)
        .map(|i| v[(i * (len - 1) + (max - 1) / 2) / (max - 1)])
        .collect();
    *v = kept;
}

/// One socket's tracker state as saved across agent restarts ([`Tracker::export`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedSocket {
    pub cookie: u64,
    entry: Entry,
}

impl SavedSocket {
    /// The kernel tracking session (`first_seen_ns`) the socket was in when saved; None for
    /// a dormant history.
    pub fn session_ns(&self) -> Option<u64> {
        self.entry.live.as_ref().map(|l| l.session_ns)
    }
}

/// What [`Tracker::import`] took back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Sockets restored with their tracking session (stalls in force, samples, last tick).
    pub live: usize,
    /// Sockets restored with their history only.
    pub dormant: usize,
    /// Saved sockets with nothing left to restore.
    pub dropped: usize,
}

/// Close a tracking session: end its stalls and, for a drain, record the episode the drain
/// ended.
fn depart(history: &mut History, live: Live, closed: bool, now_ns: u64) -> Departure {
    let end = |a: ActiveStall| {
        let stalled_for_ms = now_ns.saturating_sub(a.since_ns) / NS_PER_MS;
        if closed {
            Transition::Closed {
                class: a.class,
                stalled_for_ms,
            }
        } else {
            Transition::Cleared {
                class: a.class,
                stalled_for_ms,
            }
        }
    };
    let recovered = if closed {
        None
    } else {
        live.last.and_then(|l| {
            let gap = l.now_ns.saturating_sub(l.last_progress_ns);
            (l.queued_bytes > 0
                && gap >= MIN_GAP_NS
                && l.last_progress_ns >= history.last_gap_end_ns)
                .then_some(Episode {
                    class: if l.zero_window {
                        StallClass::ZeroWindow
                    } else {
                        StallClass::NoAck
                    },
                    start_ns: l.last_progress_ns,
                    end_ns: l.now_ns,
                    duration_ms: gap / NS_PER_MS,
                    bytes_acked: l.queued_bytes,
                })
        })
    };
    if let Some(ep) = &recovered {
        history.push(ep.clone());
    }
    Departure {
        transition: live.send.map(end),
        recv_transition: live.recv.map(end),
        recovered,
    }
}

/// One tick of the send-side state machine.
fn step_send(
    live: &mut Live,
    history: &History,
    snap: &Snapshot,
    t: &Thresholds,
    drain: Option<Drain>,
) -> Option<Transition> {
    let now = snap.now_ns;
    if let Some(a) = &live.send {
        let cleared = match a.class {
            StallClass::SlowDrain => !slow_drain_holds(snap, t, drain),
            _ => snap.last_progress_ns > a.last_progress_ns || snap.bytes_acked > a.progress_mark,
        };
        if cleared {
            let end = if a.class != StallClass::SlowDrain && snap.last_progress_ns > a.since_ns {
                snap.last_progress_ns.min(now)
            } else {
                now
            };
            let t = Transition::Cleared {
                class: a.class,
                stalled_for_ms: end.saturating_sub(a.since_ns) / NS_PER_MS,
            };
            live.send = None;
            return Some(t);
        }
    }
    let (class, since_ns, evidence) = send_candidate(history, snap, t, drain)?;
    if let Some(a) = &live.send {
        if class.precedence() <= a.class.precedence() {
            return None;
        }
    }
    let stalled_for_ms = now.saturating_sub(since_ns) / NS_PER_MS;
    live.send = Some(ActiveStall {
        class,
        since_ns,
        evidence: evidence.clone(),
        progress_mark: snap.bytes_acked,
        decided_ns: now,
        last_progress_ns: snap.last_progress_ns,
        session_ns: snap.first_seen_ns,
        floor_bps: t.slow_drain_floor_bps,
    });
    Some(Transition::Started {
        class,
        stalled_for_ms,
        evidence,
    })
}

/// The highest-precedence send-side class that holds now, with its start and evidence.
fn send_candidate(
    history: &History,
    snap: &Snapshot,
    t: &Thresholds,
    drain: Option<Drain>,
) -> Option<(StallClass, u64, Evidence)> {
    let since = snap.now_ns.saturating_sub(snap.last_progress_ns);
    if snap.queued_bytes > 0 && snap.zero_window {
        let (eff, ev) = class_evidence(StallClass::ZeroWindow, history, snap, t, drain);
        if since >= eff {
            return Some((StallClass::ZeroWindow, snap.last_progress_ns, ev));
        }
    }
    let retransmitting = snap.last_retrans_ns > snap.last_progress_ns || snap.backoff > 0;
    if snap.unacked_bytes > 0 && !snap.zero_window && retransmitting {
        let (eff, ev) = class_evidence(StallClass::NoAck, history, snap, t, drain);
        if since >= eff {
            return Some((StallClass::NoAck, snap.last_progress_ns, ev));
        }
    }
    if slow_drain_starts(snap, t, drain) {
        let d = drain.expect("slow_drain_starts needs a measurement");
        let (_, ev) = class_evidence(StallClass::SlowDrain, history, snap, t, drain);
        return Some((StallClass::SlowDrain, d.from_ns, ev));
    }
    None
}

/// Writer blocked and the peer acked less than the floor over a full window. This keeps an
/// active `slow_drain` in force; starting one also needs [`slow_drain_starts`].
fn slow_drain_holds(snap: &Snapshot, t: &Thresholds, drain: Option<Drain>) -> bool {
    let Some(d) = drain else { return false };
    snap.sndbuf_full
        && d.full_window
        && d.span_ns > 0
        && dur_ns(t.slow_drain_window) > 0
        && (d.acked as u128) * (NS_PER_SEC as u128)
            < (t.slow_drain_floor_bps as u128) * (d.span_ns as u128)
}

/// A `slow_drain` starts only for a peer that is slow, not stopped: it must have acked
/// something within the window. A peer that acked nothing is in a no-progress interval,
/// which `zero_window`/`no_ack` judge with the cadence rule; otherwise a bursty consumer's
/// long pause with a full send buffer would be a 0 B/s slow drain and bypass its cadence.
fn slow_drain_starts(snap: &Snapshot, t: &Thresholds, drain: Option<Drain>) -> bool {
    slow_drain_holds(snap, t, drain) && drain.is_some_and(|d| d.acked > 0)
}

/// The effective threshold (ns) and the evidence for judging `class`.
fn class_evidence(
    class: StallClass,
    history: &History,
    snap: &Snapshot,
    t: &Thresholds,
    drain: Option<Drain>,
) -> (u64, Evidence) {
    let acked = drain.map_or(0, |d| d.acked);
    match class {
        StallClass::SlowDrain => {
            let window = dur_ns(t.slow_drain_window);
            let reason = match drain {
                Some(d) if d.full_window && d.span_ns > 0 => format!(
                    "slow drain: {} acked over the last {} ({} B/s) against a floor of {} B/s, \
                     send buffer {}",
                    fmt_bytes(d.acked),
                    fmt_ns(d.span_ns),
                    rate_bps(d.acked, d.span_ns),
                    t.slow_drain_floor_bps,
                    if snap.sndbuf_full { "full" } else { "not full" }
                ),
                Some(d) => format!(
                    "slow drain: observed for {} only, the rate needs a window of {}",
                    fmt_ns(d.span_ns),
                    fmt_ns(window)
                ),
                None => format!(
                    "slow drain: first observation, the rate needs a window of {}",
                    fmt_ns(window)
                ),
            };
            let ev = evidence(history, acked, window, reason);
            (window, ev)
        }
        StallClass::RecvBacklog => {
            let rule = dur_ns(t.recv_backlog_after);
            let full = if snap.rcv_wnd == 0 {
                "receive window 0".to_string()
            } else {
                format!(
                    "{} unread >= half of rcvbuf {}",
                    fmt_bytes(snap.recv_unread),
                    fmt_bytes(snap.rcvbuf as u64)
                )
            };
            let reason = format!(
                "recv side: rule threshold {} without a local read ({full}); no cadence",
                fmt_ns(rule)
            );
            (rule, evidence(history, acked, rule, reason))
        }
        StallClass::ZeroWindow | StallClass::NoAck => {
            let (eff, reason) = cadence(history, dur_ns(t.threshold_for(class)), t);
            (eff, evidence(history, acked, eff, reason))
        }
    }
}

fn evidence(history: &History, acked: u64, eff_ns: u64, reason: String) -> Evidence {
    Evidence {
        recovered_episodes: history.total,
        longest_gap_ms: history.longest_ns().unwrap_or(0) / NS_PER_MS,
        bytes_acked_last_window: acked,
        effective_threshold_ms: eff_ns / NS_PER_MS,
        threshold_reason: reason,
    }
}

/// The cadence rule: effective threshold (ns) for a rule threshold and a socket's history,
/// and why.
fn cadence(history: &History, rule_ns: u64, t: &Thresholds) -> (u64, String) {
    let Some(longest) = history.longest_ns() else {
        return (
            rule_ns,
            format!("no recovery history: rule threshold {}", fmt_ns(rule_ns)),
        );
    };
    let f = if t.cadence_factor.is_finite() && t.cadence_factor > 0.0 {
        t.cadence_factor
    } else {
        0.0
    };
    // `as` saturates for out-of-range floats.
    let asked = (f * longest as f64).round() as u64;
    let ceiling = dur_ns(t.ceiling);
    let factor = fmt_factor(f);
    if asked <= rule_ns {
        (
            rule_ns,
            format!(
                "rule threshold {} >= cadence {factor} x {}",
                fmt_ns(rule_ns),
                fmt_ns(longest)
            ),
        )
    } else if asked > ceiling {
        if ceiling >= rule_ns {
            (
                ceiling,
                format!(
                    "ceiling {} (cadence asked {})",
                    fmt_ns(ceiling),
                    fmt_ns(asked)
                ),
            )
        } else {
            (
                rule_ns,
                format!(
                    "rule threshold {} (ceiling {} is below it; cadence asked {})",
                    fmt_ns(rule_ns),
                    fmt_ns(ceiling),
                    fmt_ns(asked)
                ),
            )
        }
    } else {
        (
            asked,
            format!(
                "cadence: {factor} x longest recovered gap {} = {}",
                fmt_ns(longest),
                fmt_ns(asked)
            ),
        )
    }
}

/// One tick of the read-side state machine.
fn step_recv(
    live: &mut Live,
    history: &History,
    snap: &Snapshot,
    t: &Thresholds,
    drain: Option<Drain>,
) -> Option<Transition> {
    let now = snap.now_ns;
    if let Some(a) = &live.recv {
        if snap.recv_unread == 0 || snap.last_read_ns > a.progress_mark {
            let end = if snap.last_read_ns > a.since_ns {
                snap.last_read_ns.min(now)
            } else {
                now
            };
            let tr = Transition::Cleared {
                class: StallClass::RecvBacklog,
                stalled_for_ms: end.saturating_sub(a.since_ns) / NS_PER_MS,
            };
            live.recv = None;
            return Some(tr);
        }
        return None;
    }
    let unread_since = now.saturating_sub(snap.last_read_ns);
    let full = snap.rcv_wnd == 0 || (snap.rcvbuf > 0 && snap.recv_unread >= snap.rcvbuf as u64 / 2);
    if snap.recv_unread == 0 || !full || unread_since < dur_ns(t.recv_backlog_after) {
        return None;
    }
    let (_, evidence) = class_evidence(StallClass::RecvBacklog, history, snap, t, drain);
    live.recv = Some(ActiveStall {
        class: StallClass::RecvBacklog,
        since_ns: snap.last_read_ns,
        evidence: evidence.clone(),
        progress_mark: snap.last_read_ns,
        decided_ns: now,
        last_progress_ns: snap.last_read_ns,
        session_ns: snap.first_seen_ns,
        floor_bps: 0,
    });
    Some(Transition::Started {
        class: StallClass::RecvBacklog,
        stalled_for_ms: unread_since / NS_PER_MS,
        evidence,
    })
}

/// Per-key calibration state.
#[derive(Clone, Debug, Default)]
struct CalKey {
    /// The newest [`CALIBRATION_KEEP`] durations (ms).
    durations: VecDeque<u64>,
    count: u64,
    max_ms: u64,
    /// Largest duration a warning was already issued for.
    warned_ms: u64,
}

/// Calibration: per (rule name, class) aggregate of episodes that ended in progress without
/// any action, including those shorter than the threshold.
///
/// `count` and `max_ms` cover every recorded episode; percentiles cover the newest
/// [`CALIBRATION_KEEP`] per key. Keys are bounded by the policy's rules × classes.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    keys: BTreeMap<(String, StallClass), CalKey>,
}

/// One row of the calibration table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibrationRow {
    pub rule: String,
    pub class: StallClass,
    pub count: u64,
    pub max_ms: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

/// A rule's threshold is shorter than a pause some socket recovered from by itself.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThresholdWarning {
    pub rule: String,
    pub class: StallClass,
    pub threshold_ms: u64,
    pub observed_ms: u64,
    pub cookie: u64,
    /// The rule's action resets (as opposed to observe only).
    pub would_reset: bool,
    pub advice: String,
}

impl Calibration {
    pub fn new() -> Calibration {
        Calibration::default()
    }

    /// Record an episode for the rule ("(defaults)" when no rule matched); returns a warning
    /// when the rule's threshold for that class is below the episode's duration (warn once
    /// per (rule,class) per new maximum).
    pub fn record(
        &mut self,
        rule: &str,
        threshold_ms: u64,
        would_reset: bool,
        cookie: u64,
        ep: &Episode,
    ) -> Option<ThresholdWarning> {
        let key = self.keys.entry((rule.to_string(), ep.class)).or_default();
        if key.durations.len() == CALIBRATION_KEEP {
            key.durations.pop_front();
        }
        key.durations.push_back(ep.duration_ms);
        key.count += 1;
        key.max_ms = key.max_ms.max(ep.duration_ms);
        if threshold_ms >= ep.duration_ms || ep.duration_ms <= key.warned_ms {
            return None;
        }
        key.warned_ms = ep.duration_ms;
        let observed = ep.duration_ms * NS_PER_MS;
        let suggest_s = (2 * ep.duration_ms).div_ceil(1000);
        let verb = if would_reset {
            "would have reset it"
        } else {
            "would have flagged it as stalled (the rule only observes; with action reset it \
             would have been reset)"
        };
        let advice = format!(
            "a socket recovered by itself after {} of {}; a threshold of {} {verb}. Use {} >= \
             {suggest_s}s (2 x observed); cadence_factor protects a socket only after its \
             first recovery, so the first pause of each connection meets the plain threshold",
            fmt_ns(observed),
            match ep.class {
                StallClass::ZeroWindow => "zero window",
                StallClass::NoAck => "no ACK progress",
                StallClass::SlowDrain => "slow drain",
                StallClass::RecvBacklog => "unread receive queue",
            },
            fmt_ns(threshold_ms * NS_PER_MS),
            ep.class.threshold_knob(),
        );
        Some(ThresholdWarning {
            rule: rule.to_string(),
            class: ep.class,
            threshold_ms,
            observed_ms: ep.duration_ms,
            cookie,
            would_reset,
            advice,
        })
    }

    /// One row per (rule, class) seen, sorted by rule then class.
    pub fn rows(&self) -> Vec<CalibrationRow> {
        self.keys
            .iter()
            .map(|((rule, class), k)| {
                let mut d: Vec<u64> = k.durations.iter().copied().collect();
                d.sort_unstable();
                CalibrationRow {
                    rule: rule.clone(),
                    class: *class,
                    count: k.count,
                    max_ms: k.max_ms,
                    p50_ms: percentile(&d, 50),
                    p99_ms: percentile(&d, 99),
                }
            })
            .collect()
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as u64).div_ceil(100).max(1) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn rate_bps(bytes: u64, span_ns: u64) -> u64 {
    if span_ns == 0 {
        return 0;
    }
    ((bytes as u128) * (NS_PER_SEC as u128) / (span_ns as u128)) as u64
}

/// "2.0", "1.5", "2.25".
pub fn fmt_factor(f: f64) -> String {
    if f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// Human duration: "750ms", "3s", "14.2s", "5m", "6m40s", "1h2m".
fn fmt_ns(ns: u64) -> String {
    fmt_ms(ns / NS_PER_MS)
}

/// Milliseconds for people: "750ms", "3s", "14.2s", "5m", "6m40s", "1h2m" (tenths of a
/// second below a minute, whole seconds above).
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 59_950 {
        let tenths = (ms + 50) / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let s = (ms + 500) / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// "512 B", "64.0 KiB", "1.0 MiB".
fn fmt_bytes(b: u64) -> String {
    const KIB: u64 = 1024;
    if b < KIB {
        format!("{b} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b as f64 / KIB as f64)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b as f64 / (KIB * KIB) as f64)
    } else {
        format!("{:.1} GiB", b as f64 / (KIB * KIB * KIB) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::GAP_SLOTS;
    use std::net::SocketAddr;

    const MIB: u64 = 1024 * 1024;
    /// Monotonic time at which the test sockets start being tracked.
    const T0: u64 = 5_000 * NS_PER_SEC;

    /// Monotonic ns `secs` after T0.
    fn at(secs: f64) -> u64 {
        T0 + (secs * 1e9).round() as u64
    }

    fn thresholds(zw_secs: u64) -> Thresholds {
        Thresholds {
            zero_window_after: Duration::from_secs(zw_secs),
            no_ack_after: Duration::from_secs(zw_secs),
            ..Thresholds::default()
        }
    }

    /// A kernel-like model of one tracked socket: mutate it with the events the kernel
    /// hooks would see, then take a [`Snapshot`] per tick.
    struct Sim {
        s: Snapshot,
        gaps: Vec<Gap>,
    }

    impl Sim {
        fn new(cookie: u64, start: u64) -> Sim {
            let local: SocketAddr = "10.0.0.1:8765".parse().unwrap();
            let remote: SocketAddr = "10.0.0.2:50123".parse().unwrap();
            Sim {
                s: Snapshot {
                    now_ns: start,
                    cookie,
                    netns: 4026531840,
                    family: crate::snapshot::AF_INET,
                    local,
                    remote,
                    bound_dev_if: 0,
                    pid: Some(4242),
                    comm: Some("python3".into()),
                    cgroup_id: Some(1),
                    queued_bytes: 0,
                    unacked_bytes: 0,
                    snd_wnd: 65535,
                    zero_window: false,
                    sndbuf_full: false,
                    orphan: false,
                    wmem_queued: 0,
                    sndbuf: 4 * MIB as u32,
                    retransmits: 0,
                    backoff: 0,
                    zero_window_acks: 0,
                    bytes_acked: 0,
                    first_seen_ns: start,
                    last_send_ns: start,
                    last_ack_ns: start,
                    last_progress_ns: start,
                    last_retrans_ns: 0,
                    recv_unread: 0,
                    rcvbuf: 131072,
                    rcv_wnd: 65535,
                    last_read_ns: start,
                    recent_gaps: Vec::new(),
                    gap_count: 0,
                },
                gaps: Vec::new(),
            }
        }

        /// A sender with a full send buffer waiting on a peer that advertises window 0.
        fn blocked_writer(cookie: u64, start: u64) -> Sim {
            let mut sim = Sim::new(cookie, start);
            sim.s.queued_bytes = 4 * MIB;
            sim.s.sndbuf_full = true;
            sim.s.wmem_queued = 4 * MIB as u32;
            sim.s.zero_window = true;
            sim.s.snd_wnd = 0;
            sim
        }

        /// An ACK that advances snd_una by `bytes`; records a gap like the kernel does.
        fn ack(&mut self, t: u64, bytes: u64) {
            let s = &mut self.s;
            if s.queued_bytes > 0 && t - s.last_progress_ns >= MIN_GAP_NS {
                self.gaps.push(Gap {
                    start_ns: s.last_progress_ns,
                    end_ns: t,
                    acked: bytes as u32,
                    zero_window: s.zero_window as u32,
                });
                if self.gaps.len() > GAP_SLOTS {
                    self.gaps.remove(0);
                }
                s.gap_count += 1;
            }
            s.bytes_acked += bytes;
            s.queued_bytes = s.queued_bytes.saturating_sub(bytes);
            s.unacked_bytes = s.unacked_bytes.min(s.queued_bytes);
            s.last_progress_ns = t;
            s.last_ack_ns = t;
        }

        fn retransmit(&mut self, t: u64) {
            self.s.retransmits += 1;
            self.s.backoff += 1;
            self.s.last_retrans_ns = t;
            self.s.last_send_ns = t;
        }

        fn snap(&mut self, now: u64) -> Snapshot {
            self.s.now_ns = now;
            self.s.recent_gaps = self.gaps.clone();
            self.s.clone()
        }
    }

    /// Tick every `step` seconds over (from, to], applying `events(sim, tick_ns)` before each
    /// snapshot; returns (tick, observation) for ticks that saw something.
    fn run(
        tr: &mut Tracker,
        sim: &mut Sim,
        t: &Thresholds,
        from: f64,
        to: f64,
        step: f64,
        mut events: impl FnMut(&mut Sim, u64),
    ) -> Vec<(u64, Observation)> {
        let mut out = Vec::new();
        let n = ((to - from) / step).round() as u64;
        assert!(n <= 1_000_000, "test loop bound");
        for i in 1..=n {
            let now = at(from + i as f64 * step);
            events(sim, now);
            let snap = sim.snap(now);
            let obs = tr.observe(&snap, t);
            if obs != Observation::default() {
                out.push((now, obs));
            }
        }
        out
    }

    fn transitions(obs: &[(u64, Observation)]) -> Vec<(u64, Transition)> {
        obs.iter()
            .filter_map(|(t, o)| o.transition.clone().map(|tr| (*t, tr)))
            .collect()
    }

    fn started(class: StallClass, stalled_for_ms: u64, tr: &Transition) -> Evidence {
        match tr {
            Transition::Started {
                class: c,
                stalled_for_ms: s,
                evidence,
            } if *c == class && *s == stalled_for_ms => evidence.clone(),
            other => panic!("expected Started {class} after {stalled_for_ms} ms, got {other:?}"),
        }
    }

    /// python-websockets issue #105 shape: the client reads ~1 MiB, then sits on its queue
    /// for ~14.2 s, again and again. Threshold 3 s, cadence factor 2.
    #[test]
    fn bursty_consumer_first_pause_is_a_stall_then_cadence_protects_it() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(1, at(0.0));
        // One tick at tracking start.
        let first = tr.observe(&sim.snap(at(0.0)), &t);
        assert_eq!(first, Observation::default());

        let period = 14.2;
        let cycles = 10;
        let mut next = 1;
        let obs = run(
            &mut tr,
            &mut sim,
            &t,
            0.0,
            period * cycles as f64 + 1.0,
            1.0,
            |sim, now| {
                while next <= cycles && at(next as f64 * period) <= now {
                    sim.ack(at(next as f64 * period), MIB);
                    sim.s.queued_bytes += MIB; // the writer refills what got acked
                    next += 1;
                }
            },
        );
        let trs = transitions(&obs);
        assert_eq!(trs.len(), 2, "exactly one Started and one Cleared: {trs:?}");
        // No history: the plain 3 s threshold, first tick at 3 s.
        assert_eq!(trs[0].0, at(3.0));
        let ev = started(StallClass::ZeroWindow, 3000, &trs[0].1);
        assert_eq!(
            ev.threshold_reason,
            "no recovery history: rule threshold 3s"
        );
        assert_eq!(ev.effective_threshold_ms, 3000);
        assert_eq!(ev.recovered_episodes, 0);
        // Recovered by itself: Cleared at the tick after 14.2 s, with the exact pause.
        assert_eq!(trs[1].0, at(15.0));
        assert_eq!(
            trs[1].1,
            Transition::Cleared {
                class: StallClass::ZeroWindow,
                stalled_for_ms: 14200
            }
        );
        // Every recovery reported exactly once, first one with its numbers.
        let eps: Vec<&Episode> = obs.iter().flat_map(|(_, o)| o.recovered.iter()).collect();
        assert_eq!(eps.len(), cycles);
        assert_eq!(
            *eps[0],
            Episode {
                class: StallClass::ZeroWindow,
                start_ns: at(0.0),
                end_ns: at(14.2),
                duration_ms: 14200,
                bytes_acked: MIB,
            }
        );
        assert!(eps
            .iter()
            .all(|e| e.duration_ms == 14200 && e.bytes_acked == MIB));
        let ev = tr.evidence(1).unwrap();
        assert_eq!(
            ev.threshold_reason,
            "cadence: 2.0 x longest recovered gap 14.2s = 28.4s"
        );
        assert_eq!(ev.effective_threshold_ms, 28400);
        assert_eq!(ev.recovered_episodes, cycles as u32);
        assert_eq!(tr.episodes(1).len(), HISTORY_EPISODES);
        assert!(tr.active(1).is_none());
        assert_eq!(tr.stalled_count(), 0);
    }

    /// Recovers after 10 s, 14 s, 12 s, then the consumer dies for good.
    #[test]
    fn consumer_that_recovers_then_dies_stalls_at_factor_times_longest_gap() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(2, at(0.0));
        tr.observe(&sim.snap(at(0.0)), &t);
        let recoveries = [10.0, 24.0, 36.0];
        let mut k = 0;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 63.0, 1.0, |sim, now| {
            while k < recoveries.len() && at(recoveries[k]) <= now {
                sim.ack(at(recoveries[k]), 512 * 1024);
                sim.s.queued_bytes += 512 * 1024;
                k += 1;
            }
        });
        let trs = transitions(&obs);
        // First pause has no history: a stall at 3 s, cleared at 10 s.
        assert_eq!(trs.len(), 2, "{trs:?}");
        started(StallClass::ZeroWindow, 3000, &trs[0].1);
        assert_eq!(trs[1].1.class(), StallClass::ZeroWindow);
        assert_eq!(trs[1].1.stalled_for_ms(), 10_000);
        // Dead since 36 s; longest recovered gap 14 s -> 28 s. 63 s is 27 s in: nothing yet.
        let snap = sim.snap(at(36.0 + 27.999));
        assert_eq!(tr.observe(&snap, &t).transition, None, "not before 28 s");
        let snap = sim.snap(at(36.0 + 28.0));
        let o = tr.observe(&snap, &t);
        let ev = started(
            StallClass::ZeroWindow,
            28_000,
            o.transition.as_ref().unwrap(),
        );
        assert_eq!(
            ev.threshold_reason,
            "cadence: 2.0 x longest recovered gap 14s = 28s"
        );
        assert_eq!(ev.longest_gap_ms, 14_000);
        assert_eq!(ev.recovered_episodes, 3);
        assert_eq!(ev.effective_threshold_ms, 28_000);
        let a = tr.active(2).unwrap();
        assert_eq!(a.class, StallClass::ZeroWindow);
        assert_eq!(a.since_ns, at(36.0));
        assert_eq!(tr.stalled_count(), 1);
    }

    #[test]
    fn cadence_is_capped_by_the_ceiling() {
        let t = thresholds(30); // ceiling 300 s, factor 2
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(3, at(0.0));
        tr.observe(&sim.snap(at(0.0)), &t);
        let recoveries = [100.0, 300.0]; // gaps 100 s and 200 s
        let mut k = 0;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 599.0, 1.0, |sim, now| {
            while k < recoveries.len() && at(recoveries[k]) <= now {
                sim.ack(at(recoveries[k]), MIB);
                sim.s.queued_bytes += MIB;
                k += 1;
            }
        });
        let trs = transitions(&obs);
        assert_eq!(
            trs.len(),
            2,
            "first pause stalls at 30 s, clears at 100 s: {trs:?}"
        );
        assert_eq!(trs[0].0, at(30.0));
        // Cadence asks 400 s; the ceiling says 300 s. 599 s is 299 s after the last progress.
        let o = tr.observe(&sim.snap(at(600.0)), &t);
        let ev = started(
            StallClass::ZeroWindow,
            300_000,
            o.transition.as_ref().unwrap(),
        );
        assert_eq!(ev.threshold_reason, "ceiling 5m (cadence asked 6m40s)");
        assert_eq!(ev.effective_threshold_ms, 300_000);
    }

    #[test]
    fn cadence_reasons() {
        let mut h = History::default();
        let t = Thresholds::default();
        let s30 = 30 * NS_PER_SEC;
        assert_eq!(
            cadence(&h, s30, &t),
            (s30, "no recovery history: rule threshold 30s".to_string())
        );
        h.push(Episode {
            class: StallClass::NoAck,
            start_ns: at(0.0),
            end_ns: at(3.1),
            duration_ms: 3100,
            bytes_acked: 1448,
        });
        assert_eq!(
            cadence(&h, s30, &t),
            (s30, "rule threshold 30s >= cadence 2.0 x 3.1s".to_string())
        );
        // A ceiling below the rule threshold never lowers it.
        h.push(Episode {
            class: StallClass::ZeroWindow,
            start_ns: at(10.0),
            end_ns: at(370.0),
            duration_ms: 360_000,
            bytes_acked: 1448,
        });
        let low = Thresholds {
            ceiling: Duration::from_secs(10),
            cadence_factor: 1.5,
            ..Thresholds::default()
        };
        assert_eq!(
            cadence(&h, s30, &low),
            (
                s30,
                "rule threshold 30s (ceiling 10s is below it; cadence asked 9m)".to_string()
            )
        );
        // Nonsense factors fall back to the rule threshold.
        let nan = Thresholds {
            cadence_factor: f64::NAN,
            ..Thresholds::default()
        };
        assert_eq!(cadence(&h, s30, &nan).0, s30);
    }

    /// Peer vanished (cable pulled / blackhole): data in flight, RTO retransmits with
    /// exponential backoff, no ACK at all.
    #[test]
    fn blackhole_is_no_ack_with_retransmits() {
        let t = Thresholds::default(); // no_ack_after 30 s
        let mut tr = Tracker::new();
        let mut sim = Sim::new(4, at(0.0));
        sim.s.queued_bytes = 100_000;
        sim.s.unacked_bytes = 64_000;
        tr.observe(&sim.snap(at(0.0)), &t);
        let rto = [0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 25.4, 51.0];
        let mut k = 0;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 60.0, 1.0, |sim, now| {
            while k < rto.len() && at(rto[k]) <= now {
                sim.retransmit(at(rto[k]));
                k += 1;
            }
        });
        let trs = transitions(&obs);
        assert_eq!(trs.len(), 1, "{trs:?}");
        assert_eq!(trs[0].0, at(30.0));
        let ev = started(StallClass::NoAck, 30_000, &trs[0].1);
        assert_eq!(
            ev.threshold_reason,
            "no recovery history: rule threshold 30s"
        );
        assert_eq!(ev.bytes_acked_last_window, 0);
        assert_eq!(tr.active(4).unwrap().class, StallClass::NoAck);
    }

    #[test]
    fn no_ack_needs_retransmits_or_backoff() {
        let t = Thresholds::default();
        // Silent, no retransmit, no backoff.
        let mut tr = Tracker::new();
        let mut sim = Sim::new(5, at(0.0));
        sim.s.queued_bytes = 100_000;
        sim.s.unacked_bytes = 64_000;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 120.0, 1.0, |_, _| {});
        assert!(transitions(&obs).is_empty());

        // Retransmits only before the last progress (old news), backoff back to 0.
        let mut tr = Tracker::new();
        let mut sim = Sim::new(6, at(0.0));
        sim.s.queued_bytes = 100_000;
        sim.s.unacked_bytes = 64_000;
        sim.retransmit(at(0.5));
        sim.s.backoff = 0;
        sim.ack(at(1.0), 1448);
        let obs = run(&mut tr, &mut sim, &t, 1.0, 120.0, 1.0, |_, _| {});
        assert!(transitions(&obs).is_empty());

        // The same socket with a fresh retransmit after the progress: now it is evidence.
        let o = run(&mut tr, &mut sim, &t, 120.0, 121.0, 1.0, |sim, now| {
            sim.retransmit(now)
        });
        started(
            StallClass::NoAck,
            120_000,
            o[0].1.transition.as_ref().unwrap(),
        );
    }

    /// Drains 2 KiB/s with the writer blocked: above the 1 KiB/s floor.
    #[test]
    fn slow_reader_above_floor_never_stalls() {
        let t = Thresholds::default();
        let mut tr = Tracker::new();
        let mut sim = Sim::new(7, at(0.0));
        sim.s.queued_bytes = 4 * MIB;
        sim.s.sndbuf_full = true;
        tr.observe(&sim.snap(at(0.0)), &t);
        let obs = run(&mut tr, &mut sim, &t, 0.0, 300.0, 1.0, |sim, now| {
            sim.ack(now, 2048);
        });
        assert!(obs.iter().all(|(_, o)| o.transition.is_none()));
        assert_eq!(tr.evidence(7).unwrap().bytes_acked_last_window, 30 * 2048);
    }

    /// Drains 512 B/s with the writer blocked: slow_drain once observed for the window,
    /// then cleared once the reader speeds up.
    #[test]
    fn slow_reader_below_floor_with_full_sndbuf_is_slow_drain() {
        let t = Thresholds::default();
        let mut tr = Tracker::new();
        let mut sim = Sim::new(8, at(0.0));
        sim.s.queued_bytes = 4 * MIB;
        sim.s.sndbuf_full = true;
        tr.observe(&sim.snap(at(0.0)), &t);
        let obs = run(&mut tr, &mut sim, &t, 0.0, 60.0, 1.0, |sim, now| {
            sim.ack(now, 512);
        });
        let trs = transitions(&obs);
        assert_eq!(trs.len(), 1, "{trs:?}");
        assert_eq!(
            trs[0].0,
            at(30.0),
            "not before observed for the whole window"
        );
        let ev = started(StallClass::SlowDrain, 30_000, &trs[0].1);
        assert_eq!(ev.bytes_acked_last_window, 30 * 512);
        assert_eq!(ev.effective_threshold_ms, 30_000);
        assert_eq!(
            ev.threshold_reason,
            "slow drain: 15.0 KiB acked over the last 30s (512 B/s) against a floor of \
             1024 B/s, send buffer full"
        );
        // The same rate with the writer not blocked is not a stall (checked on a twin).
        let mut twin_tr = Tracker::new();
        let mut twin = Sim::new(9, at(0.0));
        twin.s.queued_bytes = 4 * MIB;
        let obs = run(&mut twin_tr, &mut twin, &t, 0.0, 60.0, 1.0, |sim, now| {
            sim.ack(now, 512)
        });
        assert!(transitions(&obs).is_empty());
        // Reader speeds up to 4 KiB/s: the 30 s rate crosses 1 KiB/s after 5 s.
        let obs = run(&mut tr, &mut sim, &t, 60.0, 70.0, 1.0, |sim, now| {
            sim.ack(now, 4096);
        });
        let trs = transitions(&obs);
        assert_eq!(trs.len(), 1, "{trs:?}");
        assert_eq!(trs[0].0, at(65.0));
        assert_eq!(trs[0].1.class(), StallClass::SlowDrain);
        assert!(tr.active(8).is_none());
    }

    #[test]
    fn paused_then_resumed_reader_is_not_a_stall() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(10, at(0.0));
        tr.observe(&sim.snap(at(0.0)), &t);
        // Ticks (and ACKs once resumed) every 100 ms: no further >= 250 ms gaps.
        let obs = run(&mut tr, &mut sim, &t, 0.0, 10.0, 0.1, |sim, now| {
            let ms = (now - T0) / NS_PER_MS;
            if ms == 2500 {
                sim.ack(now, 256 * 1024);
                sim.s.zero_window = false;
                sim.s.snd_wnd = 256 * 1024;
            } else if ms > 2500 {
                sim.ack(now, 128 * 1024);
            }
        });
        assert!(transitions(&obs).is_empty());
        let eps: Vec<&Episode> = obs.iter().flat_map(|(_, o)| o.recovered.iter()).collect();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].duration_ms, 2500);
        assert_eq!(eps[0].class, StallClass::ZeroWindow);
    }

    #[test]
    fn idle_connection_with_nothing_queued_never_stalls() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        let mut sim = Sim::new(11, at(0.0));
        // Last ACK said window 0 and a retransmit happened long ago, but nothing is queued.
        sim.s.zero_window = true;
        sim.s.backoff = 3;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 600.0, 1.0, |_, _| {});
        assert!(obs.is_empty(), "{obs:?}");
        assert_eq!(tr.stalled_count(), 0);
    }

    /// ACKs trickle: a little progress every 2 s under a mostly zero window, with
    /// retransmits; the threshold of 3 s is never reached.
    #[test]
    fn trickling_acks_never_stall() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(12, at(0.0));
        sim.s.sndbuf_full = false;
        sim.s.unacked_bytes = 1448;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 300.0, 0.5, |sim, now| {
            let ms = (now - T0) / NS_PER_MS;
            if ms.is_multiple_of(2000) {
                sim.ack(now, 100);
                sim.s.unacked_bytes = 1448;
            } else if ms % 2000 == 1500 {
                sim.retransmit(now);
            }
        });
        assert!(transitions(&obs).is_empty());
    }

    #[test]
    fn recv_backlog_when_the_local_app_stops_reading() {
        let t = Thresholds::default();
        let mut tr = Tracker::new();
        let mut sim = Sim::new(13, at(0.0));
        sim.s.rcvbuf = 262_144;
        sim.s.recv_unread = 200_000; // >= rcvbuf/2
        sim.s.rcv_wnd = 5_000;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 40.0, 1.0, |_, _| {});
        assert_eq!(obs.len(), 1, "{obs:?}");
        assert_eq!(obs[0].0, at(30.0));
        assert_eq!(obs[0].1.transition, None, "read side is independent");
        let ev = started(
            StallClass::RecvBacklog,
            30_000,
            obs[0].1.recv_transition.as_ref().unwrap(),
        );
        assert!(
            ev.threshold_reason
                .contains("195.3 KiB unread >= half of rcvbuf 256.0 KiB"),
            "{}",
            ev.threshold_reason
        );
        assert!(
            tr.active(13).is_none(),
            "observe-only: not a send-side stall"
        );
        assert_eq!(tr.active_recv(13).unwrap().class, StallClass::RecvBacklog);
        assert_eq!(tr.stalled_count(), 1);
        // The app reads at 45 s.
        let obs = run(&mut tr, &mut sim, &t, 40.0, 46.0, 1.0, |sim, now| {
            if now == at(45.0) {
                sim.s.last_read_ns = now;
                sim.s.recv_unread = 1000;
            }
        });
        assert_eq!(
            obs[0].1.recv_transition,
            Some(Transition::Cleared {
                class: StallClass::RecvBacklog,
                stalled_for_ms: 45_000
            })
        );

        // Behind but with room in the buffer: not a backlog.
        let mut tr = Tracker::new();
        let mut sim = Sim::new(14, at(0.0));
        sim.s.recv_unread = 10_000;
        sim.s.rcv_wnd = 60_000;
        assert!(run(&mut tr, &mut sim, &t, 0.0, 120.0, 1.0, |_, _| {}).is_empty());

        // A closed receive window is full whatever rcvbuf says.
        let mut tr = Tracker::new();
        let mut sim = Sim::new(15, at(0.0));
        sim.s.rcvbuf = 6 * MIB as u32;
        sim.s.recv_unread = 10_000;
        sim.s.rcv_wnd = 0;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 31.0, 1.0, |_, _| {});
        assert_eq!(obs.len(), 1);
        let ev = started(
            StallClass::RecvBacklog,
            30_000,
            obs[0].1.recv_transition.as_ref().unwrap(),
        );
        assert!(ev.threshold_reason.contains("receive window 0"));
    }

    /// Classic write/write deadlock: both sides blocked in send, neither reads. Both
    /// sides are reported, independently; forget_detailed ends both.
    #[test]
    fn send_and_recv_stalls_coexist_and_both_end() {
        let t = Thresholds::default();
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(16, at(0.0));
        sim.s.recv_unread = 100_000;
        sim.s.rcv_wnd = 0;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 30.0, 1.0, |_, _| {});
        assert_eq!(obs.len(), 1);
        assert_eq!(
            obs[0].1.transition.as_ref().unwrap().class(),
            StallClass::ZeroWindow
        );
        assert_eq!(
            obs[0].1.recv_transition.as_ref().unwrap().class(),
            StallClass::RecvBacklog
        );
        let d = tr.forget_detailed(16, true, at(40.0));
        assert_eq!(
            d.transition,
            Some(Transition::Closed {
                class: StallClass::ZeroWindow,
                stalled_for_ms: 40_000
            })
        );
        assert_eq!(
            d.recv_transition,
            Some(Transition::Closed {
                class: StallClass::RecvBacklog,
                stalled_for_ms: 40_000
            })
        );
        assert_eq!(d.recovered, None);
    }

    #[test]
    fn forget_closed_reports_closed_and_drops_the_socket() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(17, at(0.0));
        run(&mut tr, &mut sim, &t, 0.0, 5.0, 1.0, |_, _| {});
        assert!(tr.active(17).is_some());
        assert_eq!(
            tr.forget(17, true, at(5.5)),
            Some(Transition::Closed {
                class: StallClass::ZeroWindow,
                stalled_for_ms: 5500
            })
        );
        assert_eq!((tr.len(), tr.dormant_len(), tr.stalled_count()), (0, 0, 0));
        assert!(tr.active(17).is_none());
        // Unknown or not-stalled sockets: nothing to report.
        assert_eq!(tr.forget(17, true, at(6.0)), None);
        let mut calm = Sim::new(18, at(0.0));
        tr.observe(&calm.snap(at(1.0)), &t);
        assert_eq!(tr.forget(18, true, at(2.0)), None);
        assert!(tr.is_empty());
    }

    /// A bursty socket that drains completely at each recovery: the kernel forgets it (and
    /// its last gap); the tracker keeps the cadence across the drain.
    #[test]
    fn forget_drained_reports_cleared_and_keeps_the_cadence() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(19, at(0.0));
        let obs = run(&mut tr, &mut sim, &t, 0.0, 14.0, 1.0, |_, _| {});
        assert_eq!(transitions(&obs).len(), 1);
        // At 14.2 s the peer reads everything: all acked, socket drained, gone from the map.
        let d = tr.forget_detailed(19, false, at(15.0));
        assert_eq!(
            d.transition,
            Some(Transition::Cleared {
                class: StallClass::ZeroWindow,
                stalled_for_ms: 15_000
            })
        );
        // Lower bound: the last tick (14 s) still saw it queued.
        let ep = d.recovered.unwrap();
        assert_eq!(
            (ep.class, ep.duration_ms, ep.bytes_acked),
            (StallClass::ZeroWindow, 14_000, 4 * MIB)
        );
        assert_eq!((tr.len(), tr.dormant_len()), (0, 1));
        assert_eq!(tr.evidence(19), None, "dormant");

        // Next burst: tracked again (new kernel session, fresh gap ring).
        let mut sim = Sim::blocked_writer(19, at(20.0));
        let obs = run(&mut tr, &mut sim, &t, 20.0, 47.0, 1.0, |_, _| {});
        assert!(transitions(&obs).is_empty(), "cadence 28 s kept: {obs:?}");
        assert_eq!(
            tr.evidence(19).unwrap().threshold_reason,
            "cadence: 2.0 x longest recovered gap 14s = 28s"
        );
        let o = tr.observe(&sim.snap(at(48.0)), &t);
        started(
            StallClass::ZeroWindow,
            28_000,
            o.transition.as_ref().unwrap(),
        );
        // forget() without details on a drained, stalled socket.
        assert!(matches!(
            tr.forget(19, false, at(49.0)),
            Some(Transition::Cleared {
                class: StallClass::ZeroWindow,
                ..
            })
        ));
        assert_eq!(tr.dormant_len(), 1);
    }

    /// The agent missed the drain: the socket shows up with a new kernel session.
    #[test]
    fn new_kernel_session_without_forget_is_a_drain() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(20, at(0.0));
        run(&mut tr, &mut sim, &t, 0.0, 10.0, 1.0, |_, _| {});
        assert!(tr.active(20).is_some());
        let mut sim = Sim::blocked_writer(20, at(10.5));
        let o = tr.observe(&sim.snap(at(11.0)), &t);
        assert_eq!(
            o.transition,
            Some(Transition::Cleared {
                class: StallClass::ZeroWindow,
                stalled_for_ms: 11_000
            })
        );
        assert_eq!(o.recovered.len(), 1);
        assert_eq!(o.recovered[0].duration_ms, 10_000);
        assert!(tr.active(20).is_none());
        assert_eq!(tr.len(), 1);
    }

    #[test]
    fn kernel_gap_ring_is_deduplicated_across_ticks() {
        let t = thresholds(60);
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(21, at(0.0));
        tr.observe(&sim.snap(at(0.0)), &t);
        // Six 1 s gaps, one every 1.5 s; ticks every 0.5 s see the same ring many times.
        let mut k = 1;
        let obs = run(&mut tr, &mut sim, &t, 0.0, 20.0, 0.5, |sim, now| {
            while k <= 6 && at(k as f64 * 1.5) <= now {
                sim.ack(at(k as f64 * 1.5), 1000);
                sim.s.queued_bytes += 1000;
                k += 1;
            }
        });
        let ends: Vec<u64> = obs
            .iter()
            .flat_map(|(_, o)| o.recovered.iter().map(|e| e.end_ns))
            .collect();
        assert_eq!(
            ends,
            (1..=6).map(|k| at(k as f64 * 1.5)).collect::<Vec<_>>()
        );
        assert_eq!(tr.evidence(21).unwrap().recovered_episodes, 6);

        // Two gaps ending within one tick: both reported once; the tick's growth goes to
        // the newest, the older one gets the bytes of the ACK that ended it.
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(22, at(0.0));
        tr.observe(&sim.snap(at(0.0)), &t);
        sim.ack(at(1.0), 1000);
        sim.s.queued_bytes += 1000;
        sim.ack(at(2.0), 3000);
        sim.s.queued_bytes += 3000;
        sim.ack(at(2.1), 500); // < 250 ms after the last progress: not a gap
        let o = tr.observe(&sim.snap(at(3.0)), &t);
        let got: Vec<(u64, u64)> = o
            .recovered
            .iter()
            .map(|e| (e.end_ns, e.bytes_acked))
            .collect();
        assert_eq!(got, vec![(at(1.0), 1000), (at(2.0), 4500)]);
        assert!(tr.observe(&sim.snap(at(4.0)), &t).recovered.is_empty());
    }

    #[test]
    fn still_stalled_reverifies_against_the_freshest_snapshot() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(23, at(0.0));
        run(&mut tr, &mut sim, &t, 0.0, 4.0, 1.0, |_, _| {});
        let a = tr.active(23).unwrap().clone();
        assert_eq!((a.progress_mark, a.decided_ns), (0, at(3.0)));
        assert!(tr.still_stalled(&sim.snap(at(4.2))));
        // A zero-window probe answered (ACK without progress): still stalled.
        sim.s.last_ack_ns = at(4.3);
        sim.s.zero_window_acks += 1;
        assert!(tr.still_stalled(&sim.snap(at(4.4))));
        // Progress between the decision and the reset: abort.
        sim.ack(at(4.5), 1);
        assert!(!tr.still_stalled(&sim.snap(at(4.6))));
        // Another socket, or the same cookie in a new kernel session: not stalled.
        let mut other = Sim::blocked_writer(24, at(0.0));
        assert!(!tr.still_stalled(&other.snap(at(4.6))));
        let mut again = Sim::blocked_writer(23, at(4.5));
        assert!(!tr.still_stalled(&again.snap(at(4.6))));

        // slow_drain: a few bytes within the floor rate keep it; a burst ends it.
        let t = Thresholds::default();
        let mut tr = Tracker::new();
        let mut sim = Sim::new(25, at(0.0));
        sim.s.queued_bytes = 4 * MIB;
        sim.s.sndbuf_full = true;
        tr.observe(&sim.snap(at(0.0)), &t);
        run(&mut tr, &mut sim, &t, 0.0, 30.0, 1.0, |sim, now| {
            sim.ack(now, 100)
        });
        assert_eq!(tr.active(25).unwrap().class, StallClass::SlowDrain);
        sim.ack(at(30.2), 1000);
        assert!(tr.still_stalled(&sim.snap(at(30.3))));
        sim.ack(at(30.4), 64 * 1024);
        assert!(!tr.still_stalled(&sim.snap(at(30.5))));
    }

    /// A slow drain that stops entirely under a zero window escalates to zero_window.
    #[test]
    fn slow_drain_escalates_to_zero_window() {
        let t = Thresholds::default();
        let mut tr = Tracker::new();
        let mut sim = Sim::new(26, at(0.0));
        sim.s.queued_bytes = 4 * MIB;
        sim.s.sndbuf_full = true;
        tr.observe(&sim.snap(at(0.0)), &t);
        let obs = run(&mut tr, &mut sim, &t, 0.0, 40.0, 1.0, |sim, now| {
            sim.ack(now, 256)
        });
        assert_eq!(transitions(&obs)[0].1.class(), StallClass::SlowDrain);
        sim.s.zero_window = true;
        let obs = run(&mut tr, &mut sim, &t, 40.0, 80.0, 1.0, |_, _| {});
        let trs = transitions(&obs);
        assert_eq!(trs.len(), 1, "{trs:?}");
        assert_eq!(trs[0].0, at(70.0));
        started(StallClass::ZeroWindow, 30_000, &trs[0].1);
        assert_eq!(tr.active(26).unwrap().class, StallClass::ZeroWindow);
    }

    fn episode(class: StallClass, duration_ms: u64) -> Episode {
        Episode {
            class,
            start_ns: at(0.0),
            end_ns: at(0.0) + duration_ms * NS_PER_MS,
            duration_ms,
            bytes_acked: MIB,
        }
    }

    #[test]
    fn calibration_percentiles_and_max() {
        let mut c = Calibration::new();
        for d in (1..=100).rev() {
            assert_eq!(
                c.record(
                    "web",
                    300_000,
                    true,
                    1,
                    &episode(StallClass::ZeroWindow, d * 1000)
                ),
                None
            );
        }
        c.record(
            "(defaults)",
            30_000,
            false,
            2,
            &episode(StallClass::NoAck, 700),
        );
        assert_eq!(
            c.rows(),
            vec![
                CalibrationRow {
                    rule: "(defaults)".into(),
                    class: StallClass::NoAck,
                    count: 1,
                    max_ms: 700,
                    p50_ms: 700,
                    p99_ms: 700
                },
                CalibrationRow {
                    rule: "web".into(),
                    class: StallClass::ZeroWindow,
                    count: 100,
                    max_ms: 100_000,
                    p50_ms: 50_000,
                    p99_ms: 99_000
                },
            ]
        );
        // Bounded: count and max cover everything, percentiles the newest CALIBRATION_KEEP.
        let mut c = Calibration::new();
        c.record(
            "r",
            10_000_000,
            true,
            1,
            &episode(StallClass::ZeroWindow, 5_000_000),
        );
        for _ in 0..CALIBRATION_KEEP {
            c.record(
                "r",
                10_000_000,
                true,
                1,
                &episode(StallClass::ZeroWindow, 1000),
            );
        }
        let row = &c.rows()[0];
        assert_eq!(
            (row.count, row.max_ms, row.p99_ms),
            (CALIBRATION_KEEP as u64 + 1, 5_000_000, 1000)
        );
        assert_eq!(
            c.keys.values().next().unwrap().durations.len(),
            CALIBRATION_KEEP
        );
    }

    #[test]
    fn calibration_warns_when_a_threshold_is_below_an_observed_recovery() {
        let mut c = Calibration::new();
        let w = c
            .record(
                "websockets",
                3000,
                true,
                77,
                &episode(StallClass::ZeroWindow, 14_200),
            )
            .expect("3 s is below a 14.2 s recovery");
        assert_eq!(
            (
                w.rule.as_str(),
                w.class,
                w.threshold_ms,
                w.observed_ms,
                w.cookie,
                w.would_reset
            ),
            ("websockets", StallClass::ZeroWindow, 3000, 14_200, 77, true)
        );
        assert!(
            w.advice.starts_with(
                "a socket recovered by itself after 14.2s of zero window; a threshold of 3s \
                 would have reset it. Use zero_window_after >= 29s (2 x observed)"
            ),
            "{}",
            w.advice
        );
        // Once per new maximum.
        assert_eq!(
            c.record(
                "websockets",
                3000,
                true,
                78,
                &episode(StallClass::ZeroWindow, 14_000)
            ),
            None
        );
        assert_eq!(
            c.record(
                "websockets",
                3000,
                true,
                78,
                &episode(StallClass::ZeroWindow, 14_200)
            ),
            None
        );
        let w = c
            .record(
                "websockets",
                3000,
                false,
                79,
                &episode(StallClass::ZeroWindow, 20_000),
            )
            .unwrap();
        assert!(w.advice.contains("would have flagged it"), "{}", w.advice);
        assert!(w.advice.contains(">= 40s"), "{}", w.advice);
        // Other class of the same rule: its own key.
        let w = c
            .record(
                "websockets",
                3000,
                true,
                80,
                &episode(StallClass::NoAck, 5000),
            )
            .unwrap();
        assert!(w.advice.contains("no_ack_after >= 10s"), "{}", w.advice);
        // Threshold at or above the episode: never a warning.
        assert_eq!(
            c.record(
                "calm",
                30_000,
                true,
                81,
                &episode(StallClass::ZeroWindow, 30_000)
            ),
            None
        );
        assert_eq!(c.rows().iter().map(|r| r.count).sum::<u64>(), 6);
    }

    /// Dormant histories are bounded by age and count; live sockets are untouched.
    #[test]
    fn prune_bounds_dormant_histories() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        for cookie in 0..100u64 {
            let start = at(cookie as f64);
            let mut sim = Sim::blocked_writer(cookie, start);
            tr.observe(&sim.snap(start), &t);
            sim.ack(start + NS_PER_SEC / 2, 1000);
            tr.observe(&sim.snap(start + NS_PER_SEC / 2), &t);
            tr.forget(cookie, false, start + NS_PER_SEC / 2);
        }
        let mut live = Sim::new(1000, at(0.0));
        tr.observe(&live.snap(at(0.0)), &t);
        assert_eq!((tr.len(), tr.dormant_len()), (1, 100));
        // Age: at 150 s with a 60 s limit, sockets last seen before 90 s go.
        assert_eq!(tr.prune(at(150.0), Duration::from_secs(60), 1000), 90);
        assert_eq!(tr.dormant_len(), 10);
        // Count: keep the 4 most recently seen.
        assert_eq!(tr.prune(at(150.0), Duration::from_secs(60), 4), 6);
        let mut kept: Vec<u64> = tr
            .socks
            .iter()
            .filter(|(_, e)| e.live.is_none())
            .map(|(c, _)| *c)
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![96, 97, 98, 99]);
        assert_eq!(tr.len(), 1, "live sockets are not pruned");
        // A drained socket without history is not kept at all.
        let mut plain = Sim::new(2000, at(200.0));
        tr.observe(&plain.snap(at(200.0)), &t);
        tr.forget(2000, false, at(201.0));
        assert_eq!(tr.dormant_len(), 4);
    }

    /// Per-socket memory stays bounded however long a socket lives.
    #[test]
    fn per_socket_state_is_bounded() {
        let t = Thresholds {
            slow_drain_window: Duration::from_secs(300),
            ..thresholds(3)
        };
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(30, at(0.0));
        // 10 ms ticks for 20 min with a recovery every 0.5 s.
        let obs = run(&mut tr, &mut sim, &t, 0.0, 1200.0, 0.01, |sim, now| {
            if (now - T0).is_multiple_of(NS_PER_SEC / 2) {
                sim.ack(now, 1000);
                sim.s.queued_bytes += 1000;
            }
        });
        assert!(obs.len() > 2000);
        let e = &tr.socks[&30];
        let live = e.live.as_ref().unwrap();
        assert!(live.samples.len() <= DRAIN_SAMPLES_MAX && live.samples.len() >= 64);
        assert!(live.samples.capacity() <= DRAIN_SAMPLES_MAX);
        assert_eq!(e.history.episodes.len(), HISTORY_EPISODES);
        // The drain rate is still measured over (about) the whole window.
        let d = live
            .drain(at(1200.0), sim.s.bytes_acked, dur_ns(t.slow_drain_window))
            .unwrap();
        assert!(d.full_window);
        assert!(
            d.span_ns >= 300 * NS_PER_SEC && d.span_ns <= 305 * NS_PER_SEC,
            "{}",
            d.span_ns
        );
    }

    /// Keeps the byte bound in the [`Tracker`] docs honest.
    #[test]
    fn record_sizes_match_the_documented_bound() {
        assert!(std::mem::size_of::<Episode>() <= 40);
        assert_eq!(std::mem::size_of::<Sample>(), 16);
        assert!(std::mem::size_of::<ActiveStall>() <= 160);
        assert!(std::mem::size_of::<Evidence>() <= 64);
    }

    #[test]
    fn formatting() {
        let s = |x: f64| (x * 1e9) as u64;
        assert_eq!(fmt_ns(s(0.75)), "750ms");
        assert_eq!(fmt_ns(s(3.0)), "3s");
        assert_eq!(fmt_ns(s(14.2)), "14.2s");
        assert_eq!(fmt_ns(s(28.4)), "28.4s");
        assert_eq!(fmt_ns(s(59.99)), "1m");
        assert_eq!(fmt_ns(s(300.0)), "5m");
        assert_eq!(fmt_ns(s(400.0)), "6m40s");
        assert_eq!(fmt_ns(s(3720.0)), "1h2m");
        assert_eq!(fmt_factor(2.0), "2.0");
        assert_eq!(fmt_factor(2.25), "2.25");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(MIB), "1.0 MiB");
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[7], 99), 7);
    }

    #[test]
    fn evidence_serializes_for_events() {
        let ev = Evidence {
            recovered_episodes: 3,
            longest_gap_ms: 14_200,
            bytes_acked_last_window: MIB,
            effective_threshold_ms: 28_400,
            threshold_reason: "cadence: 2.0 x longest recovered gap 14.2s = 28.4s".into(),
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["effective_threshold_ms"], 28_400);
        let row = CalibrationRow {
            rule: "r".into(),
            class: StallClass::NoAck,
            count: 1,
            max_ms: 1,
            p50_ms: 1,
            p99_ms: 1,
        };
        assert_eq!(serde_json::to_value(&row).unwrap()["class"], "no_ack");
    }

    /// A bursty socket with one recovered 2.5 s pause (threshold 3 s, factor 2), saved
    /// after the tick at 3.0 s.
    fn saved_bursty() -> (Sim, Thresholds, String) {
        let t = Thresholds {
            cadence_factor: 2.0,
            ..thresholds(3)
        };
        let mut tr = Tracker::new();
        let mut sim = Sim::blocked_writer(1, at(0.0));
        tr.observe(&sim.snap(at(0.0)), &t);
        let obs = run(&mut tr, &mut sim, &t, 0.0, 3.0, 0.5, |sim, now| {
            if now == at(2.5) {
                sim.ack(now, MIB);
                sim.s.queued_bytes += MIB;
            }
        });
        assert!(transitions(&obs).is_empty(), "{obs:?}");
        assert_eq!(tr.episodes(1).len(), 1);
        let json = serde_json::to_string(&tr.export()).unwrap();
        (sim, t, json)
    }

    #[test]
    fn a_restored_tracker_keeps_the_cadence_and_the_stall_clock() {
        let (mut sim, t, json) = saved_bursty();
        // A fresh kernel ring: the history can only come from the saved state.
        sim.gaps.clear();
        let mut back = Tracker::new();
        let n = back.import(serde_json::from_str(&json).unwrap(), |c, s| {
            c == 1 && s == at(0.0)
        });
        assert_eq!(
            n,
            Imported {
                live: 1,
                dormant: 0,
                dropped: 0
            }
        );
        // The next pause is judged against 2 x 2.5 s = 5 s from its last progress at 2.5 s,
        // not against the 3 s rule threshold.
        let obs = run(&mut back, &mut sim, &t, 3.0, 8.0, 0.5, |_, _| {});
        let trs = transitions(&obs);
        assert_eq!(trs.len(), 1, "{trs:?}");
        assert_eq!(trs[0].0, at(7.5));
        let ev = started(StallClass::ZeroWindow, 5000, &trs[0].1);
        assert_eq!(ev.effective_threshold_ms, 5000);
        assert_eq!(ev.recovered_episodes, 1);
        assert!(obs.iter().all(|(_, o)| o.recovered.is_empty()), "{obs:?}");
    }

    #[test]
    fn a_session_that_ended_while_saved_keeps_only_its_history() {
        let (mut sim, t, json) = saved_bursty();
        let mut back = Tracker::new();
        let n = back.import(serde_json::from_str(&json).unwrap(), |_, _| false);
        assert_eq!(
            n,
            Imported {
                live: 0,
                dormant: 1,
                dropped: 0
            }
        );
        assert_eq!(back.len(), 0);
        assert_eq!(back.dormant_len(), 1);
        assert!(back.active(1).is_none());
        // A new tracking session of the same socket: judged with the cadence, and the saved
        // session's end is no recovery.
        sim.gaps.clear();
        sim.s.first_seen_ns = at(10.0);
        sim.s.last_progress_ns = at(10.0);
        let obs = run(&mut back, &mut sim, &t, 10.0, 15.0, 0.5, |_, _| {});
        let trs = transitions(&obs);
        assert_eq!(trs.len(), 1, "{trs:?}");
        assert_eq!(trs[0].0, at(15.0));
        assert!(obs.iter().all(|(_, o)| o.recovered.is_empty()), "{obs:?}");
        // A stall without history whose session ended: nothing to keep.
        let mut plain = Tracker::new();
        let mut sim = Sim::blocked_writer(2, at(0.0));
        plain.observe(&sim.snap(at(0.0)), &t);
        plain.observe(&sim.snap(at(4.0)), &t);
        assert!(plain.active(2).is_some());
        let n = Tracker::new().import(plain.export(), |_, _| false);
        assert_eq!(n.dropped, 1);
    }

    #[test]
    fn export_puts_stalls_and_histories_first_and_thins_samples() {
        let t = thresholds(3);
        let mut tr = Tracker::new();
        // 3: nothing learnt (left out); 2: a stall in force; 1: history only.
        let mut quiet = Sim::new(3, at(3.0));
        quiet.s.queued_bytes = MIB;
        let mut stalled = Sim::blocked_writer(2, at(0.0));
        let (mut bursty, _, _) = saved_bursty();
        bursty.s.cookie = 1;
        for i in 0..400u64 {
            let now = at(3.0) + i * NS_PER_SEC / 5;
            quiet.ack(now, 1);
            tr.observe(&quiet.snap(now), &t);
            tr.observe(&stalled.snap(now), &t);
            // Progress every tick from now on: no stall, the history stays.
            bursty.ack(now, 64 * 1024);
            bursty.s.queued_bytes += 64 * 1024;
            tr.observe(&bursty.snap(now), &t);
        }
        let saved = tr.export();
        let order: Vec<u64> = saved.iter().map(|s| s.cookie).collect();
        assert_eq!(order, vec![2, 1]);
        for s in &saved {
            let n = s.entry.live.as_ref().map_or(0, |l| l.samples.len());
            assert!(n <= SAVED_SAMPLES_MAX, "{} samples saved", n);
        }
        let mut v: VecDeque<u32> = (0..100).collect();
        thin(&mut v, 4);
        assert_eq!(v, VecDeque::from(vec![0, 33, 66, 99]));
    }
}
