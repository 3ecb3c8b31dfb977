//! The cadence rule: a socket's effective threshold from its own recovered gaps, and the
//! [`Evidence`] behind each decision.

use super::fmt::fmt_bytes;
use super::fmt::fmt_ns;
use super::fmt_factor;
use super::rate_bps;
use super::tracker::{Drain, History};
use super::NS_PER_MS;
use super::{dur_ns, Evidence, StallClass, Thresholds};
use crate::snapshot::Snapshot;

/// The few fields of a [`Snapshot`] the evidence text speaks of, kept per socket so the
/// evidence is written only when asked for (a reset), not for every socket every tick.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SnapBits {
    pub(super) sndbuf_full: bool,
    pub(super) rcv_wnd: u32,
    pub(super) recv_unread: u64,
    pub(super) rcvbuf: u32,
}

impl From<&Snapshot> for SnapBits {
    fn from(s: &Snapshot) -> SnapBits {
        SnapBits {
            sndbuf_full: s.sndbuf_full,
            rcv_wnd: s.rcv_wnd,
            recv_unread: s.recv_unread,
            rcvbuf: s.rcvbuf,
        }
    }
}

/// The effective threshold (ns) and the evidence for judging `class`.
pub(super) fn class_evidence(
    class: StallClass,
    history: &History,
    snap: SnapBits,
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

pub(super) fn evidence(history: &History, acked: u64, eff_ns: u64, reason: String) -> Evidence {
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
pub(super) fn cadence(history: &History, rule_ns: u64, t: &Thresholds) -> (u64, String) {
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
