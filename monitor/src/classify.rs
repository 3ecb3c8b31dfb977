//! Stall classification: plain Rust over [`Snapshot`]s, no kernel needed.
//! (Shared types below are fixed; the tracker is being written.)

use serde::Serialize;
use std::time::Duration;

/// The kinds of wedge tcpstall recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
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
