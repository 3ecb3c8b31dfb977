//! Stall classification: plain Rust over [`Snapshot`](crate::snapshot::Snapshot)s, no kernel needed.
//!
//! The agent feeds the [`Tracker`] one [`Snapshot`](crate::snapshot::Snapshot) per tick per tracked socket (the kernel
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
//! interval of at least [`MIN_GAP_NS`](monitor_common::MIN_GAP_NS), it records that interval as a recovered episode with a
//! lower-bound duration (last tick that saw it queued − last progress), so a socket that
//! drains between bursts keeps its cadence.
//!
//! # Memory
//!
//! Per socket the tracker keeps at most [`HISTORY_EPISODES`] episodes and at most
//! [`DRAIN_SAMPLES_MAX`] drain-rate samples, plus two optional active stalls; see
//! [`Tracker`] for the byte bound. Histories of drained sockets stay (dormant) until
//! [`Tracker::prune`] drops them.
//!
//! # Files
//!
//! This file: the classes, thresholds, evidence and transitions. `tracker.rs`: the
//! [`Tracker`] and its per-socket state; `send.rs` and `recv.rs`: one tick of the send-side
//! and read-side state machines; `cadence.rs`: the cadence rule and the evidence;
//! `calibration.rs`: [`Calibration`]; `fmt.rs`: numbers for people; tests in `tests.rs`.

mod cadence;
mod calibration;
mod fmt;
mod recv;
mod send;
mod tracker;

pub use calibration::{Calibration, CalibrationRow, Episodes, ThresholdWarning};
pub use fmt::{fmt_factor, fmt_ms};
pub use recv::recv_side_full;
pub use tracker::{Imported, SavedSocket, Tracker, SAVED_SAMPLES_MAX};

use serde::{Deserialize, Serialize};
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
#[derive(schemars::JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq)]
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
///
/// The field docs are the event schema's (README) words. In more detail:
/// `recovered_episodes` counts over the socket's life, also across drains;
/// `longest_gap_ms` is the longest of the last [`HISTORY_EPISODES`];
/// `bytes_acked_last_window` is over the last `slow_drain_window` (or since first
/// observed, if shorter).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Evidence {
    /// Earlier no-progress episodes on this socket that recovered on their own
    pub recovered_episodes: u32,
    /// Longest recovered gap, ms (0 when none)
    pub longest_gap_ms: u64,
    /// Bytes the peer acked during the last measurement window
    pub bytes_acked_last_window: u64,
    /// Threshold actually applied to this socket, ms
    pub effective_threshold_ms: u64,
    /// Why the threshold has that value
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

impl ActiveStall {
    /// The `Cleared` transition of this stall: it ended at `progress_ns` when that came after
    /// its start (capped at `now`), else now.
    fn cleared(&self, progress_ns: Option<u64>, now: u64) -> Transition {
        let end = match progress_ns {
            Some(p) if p > self.since_ns => p.min(now),
            _ => now,
        };
        Transition::Cleared {
            class: self.class,
            stalled_for_ms: end.saturating_sub(self.since_ns) / NS_PER_MS,
        }
    }

    /// Make this stall the active one in `slot`; the `Started` transition that says so.
    fn start(self, slot: &mut Option<ActiveStall>, stalled_for_ms: u64) -> Transition {
        let started = Transition::Started {
            class: self.class,
            stalled_for_ms,
            evidence: self.evidence.clone(),
        };
        *slot = Some(self);
        started
    }
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

#[cfg(test)]
mod tests;
