//! One tick of the send-side state machine: `zero_window` > `no_ack` > `slow_drain`.

use super::cadence::class_evidence;
use super::tracker::{Drain, History, Live, TickInput};
use super::{
    dur_ns, ActiveStall, Evidence, StallClass, Thresholds, Transition, NS_PER_MS, NS_PER_SEC,
};
use crate::snapshot::Snapshot;

/// One tick of the send-side state machine.
pub(super) fn step_send(live: &mut Live, input: &TickInput<'_>) -> Option<Transition> {
    let TickInput {
        history,
        snap,
        t,
        drain,
    } = *input;
    let now = snap.now_ns;
    if let Some(a) = &live.send {
        let cleared = match a.class {
            StallClass::SlowDrain => !slow_drain_holds(snap, t, drain),
            _ => {
                snap.times.last_progress_ns > a.last_progress_ns
                    || snap.bytes_acked > a.progress_mark
            }
        };
        if cleared {
            let progress =
                (a.class != StallClass::SlowDrain).then_some(snap.times.last_progress_ns);
            let t = a.cleared(progress, now);
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
    let stall = ActiveStall {
        class,
        since_ns,
        evidence,
        progress_mark: snap.bytes_acked,
        decided_ns: now,
        last_progress_ns: snap.times.last_progress_ns,
        session_ns: snap.times.first_seen_ns,
        floor_bps: t.slow_drain_floor_bps,
    };
    Some(stall.start(&mut live.send, stalled_for_ms))
}

/// The highest-precedence send-side class that holds now, with its start and evidence.
pub(super) fn send_candidate(
    history: &History,
    snap: &Snapshot,
    t: &Thresholds,
    drain: Option<Drain>,
) -> Option<(StallClass, u64, Evidence)> {
    let since = snap.now_ns.saturating_sub(snap.times.last_progress_ns);
    if snap.queued_bytes > 0 && snap.zero_window {
        let (eff, ev) = class_evidence(StallClass::ZeroWindow, history, snap.into(), t, drain);
        if since >= eff {
            return Some((StallClass::ZeroWindow, snap.times.last_progress_ns, ev));
        }
    }
    let retransmitting =
        snap.times.last_retrans_ns > snap.times.last_progress_ns || snap.backoff > 0;
    if snap.unacked_bytes > 0 && !snap.zero_window && retransmitting {
        let (eff, ev) = class_evidence(StallClass::NoAck, history, snap.into(), t, drain);
        if since >= eff {
            return Some((StallClass::NoAck, snap.times.last_progress_ns, ev));
        }
    }
    if slow_drain_starts(snap, t, drain) {
        let d = drain.expect("slow_drain_starts needs a measurement");
        let (_, ev) = class_evidence(StallClass::SlowDrain, history, snap.into(), t, drain);
        return Some((StallClass::SlowDrain, d.from_ns, ev));
    }
    None
}

/// Writer blocked and the peer acked less than the floor over a full window. This keeps an
/// active `slow_drain` in force; starting one also needs [`slow_drain_starts`].
pub(super) fn slow_drain_holds(snap: &Snapshot, t: &Thresholds, drain: Option<Drain>) -> bool {
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
pub(super) fn slow_drain_starts(snap: &Snapshot, t: &Thresholds, drain: Option<Drain>) -> bool {
    slow_drain_holds(snap, t, drain) && drain.is_some_and(|d| d.acked > 0)
}
