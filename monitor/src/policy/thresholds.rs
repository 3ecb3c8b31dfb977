//! Threshold keys as written in one scope (`[defaults]` or a rule), overlaid on what the
//! scope inherits, and the check that every threshold is at most the ceiling.

use super::check::{Cx, Val, THRESHOLD_MAX, THRESHOLD_MIN};
use super::duration::format_duration;
use super::spanned::{Key, Node};
use crate::classify::Thresholds;
use std::collections::BTreeSet;
use std::time::Duration;

/// Threshold keys as written in one scope (`[defaults]` or one rule).
#[derive(Default)]
pub(super) struct ThresholdSpec {
    zero_window_after: Val<Duration>,
    no_ack_after: Val<Duration>,
    slow_drain_floor: Val<u64>,
    slow_drain_window: Val<Duration>,
    recv_backlog_after: Val<Duration>,
    cadence_factor: Val<f64>,
    ceiling: Val<Duration>,
}

/// Names of threshold keys whose effective value is unknown because it was invalid.
pub(super) type Broken = BTreeSet<&'static str>;

impl ThresholdSpec {
    /// Parse `key = value` if it is a threshold key; false if it is not one.
    pub(super) fn entry(&mut self, cx: &mut Cx<'_>, key: &Key, node: &Node) -> bool {
        let dur = |cx: &mut Cx<'_>| {
            Val::from_result(
                cx.duration(key, node, THRESHOLD_MIN, THRESHOLD_MAX),
                &node.span,
            )
        };
        match key.name.as_str() {
            "zero_window_after" => self.zero_window_after = dur(cx),
            "no_ack_after" => self.no_ack_after = dur(cx),
            "slow_drain_window" => self.slow_drain_window = dur(cx),
            "recv_backlog_after" => self.recv_backlog_after = dur(cx),
            "ceiling" => self.ceiling = dur(cx),
            "slow_drain_floor" => {
                self.slow_drain_floor = Val::from_result(cx.rate(key, node), &node.span)
            }
            "cadence_factor" => {
                self.cadence_factor = Val::from_result(cx.cadence_factor(key, node), &node.span)
            }
            _ => return false,
        }
        true
    }

    /// Overlay this scope on `base`.
    pub(super) fn apply(&self, base: &Thresholds, base_broken: &Broken) -> (Thresholds, Broken) {
        let mut t = *base;
        let mut broken = base_broken.clone();
        fn put<T: Clone>(v: &Val<T>, name: &'static str, slot: &mut T, broken: &mut Broken) {
            match v {
                Val::Unset => {}
                Val::Set(x, _) => {
                    *slot = x.clone();
                    broken.remove(name);
                }
                Val::Broken => {
                    broken.insert(name);
                }
            }
        }
        put(
            &self.zero_window_after,
            "zero_window_after",
            &mut t.zero_window_after,
            &mut broken,
        );
        put(
            &self.no_ack_after,
            "no_ack_after",
            &mut t.no_ack_after,
            &mut broken,
        );
        put(
            &self.slow_drain_floor,
            "slow_drain_floor",
            &mut t.slow_drain_floor_bps,
            &mut broken,
        );
        put(
            &self.slow_drain_window,
            "slow_drain_window",
            &mut t.slow_drain_window,
            &mut broken,
        );
        put(
            &self.recv_backlog_after,
            "recv_backlog_after",
            &mut t.recv_backlog_after,
            &mut broken,
        );
        put(
            &self.cadence_factor,
            "cadence_factor",
            &mut t.cadence_factor,
            &mut broken,
        );
        put(&self.ceiling, "ceiling", &mut t.ceiling, &mut broken);
        (t, broken)
    }

    /// Every threshold must be at most the ceiling. Reported where the conflict was
    /// written: at the threshold if this scope set it, else at this scope's ceiling;
    /// conflicts wholly inherited were reported in the scope they came from.
    pub(super) fn check_ceiling(
        &self,
        cx: &mut Cx<'_>,
        eff: &Thresholds,
        broken: &Broken,
        inherited_from: &str,
    ) {
        if broken.contains("ceiling") {
            return;
        }
        let ceiling = format_duration(eff.ceiling);
        let durations = [
            (
                "zero_window_after",
                &self.zero_window_after,
                eff.zero_window_after,
            ),
            ("no_ack_after", &self.no_ack_after, eff.no_ack_after),
            (
                "slow_drain_window",
                &self.slow_drain_window,
                eff.slow_drain_window,
            ),
            (
                "recv_backlog_after",
                &self.recv_backlog_after,
                eff.recv_backlog_after,
            ),
        ];
        let ceiling_origin = match self.ceiling {
            Val::Set(..) => String::new(),
            _ => format!(" ({inherited_from})"),
        };
        let mut inherited_over = Vec::new();
        for (name, val, d) in durations {
            if broken.contains(name) || d <= eff.ceiling {
                continue;
            }
            match val {
                Val::Set(_, span) => cx.report(
                    span,
                    format!(
                        "`{name} = \"{}\"` is longer than `ceiling = \"{ceiling}\"`{ceiling_origin}: \
                         the ceiling caps every threshold",
                        format_duration(d)
                    ),
                    Some(format!(
                        "{name} = \"{ceiling}\" or shorter, or ceiling = \"{}\"",
                        format_duration(d)
                    )),
                ),
                _ => inherited_over.push((name, d)),
            }
        }
        if let (Val::Set(_, span), false) = (&self.ceiling, inherited_over.is_empty()) {
            let list = inherited_over
                .iter()
                .map(|(n, d)| format!("{n} = \"{}\"", format_duration(*d)))
                .collect::<Vec<_>>()
                .join(", ");
            let longest = inherited_over
                .iter()
                .map(|(_, d)| *d)
                .max()
                .expect("non-empty");
            cx.report(
                span,
                format!(
                    "`ceiling = \"{ceiling}\"` is shorter than {list} ({inherited_from}): \
                     the ceiling must be at least every threshold"
                ),
                Some(format!("ceiling = \"{}\"", format_duration(longest))),
            );
        }
    }
}
