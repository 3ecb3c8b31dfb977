//! Calibration: per (rule, class) episodes that recovered by themselves, percentiles, and
//! warnings for thresholds below an observed recovery.

use super::fmt::fmt_ns;
use super::{Episode, StallClass, CALIBRATION_KEEP, NS_PER_MS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::collections::VecDeque;

/// Per-key calibration state.
#[derive(Clone, Debug, Default)]
pub(super) struct CalKey {
    /// The newest [`CALIBRATION_KEEP`] durations (ms).
    pub(super) durations: VecDeque<u64>,
    pub(super) count: u64,
    pub(super) max_ms: u64,
    /// Largest duration a warning was already issued for.
    pub(super) warned_ms: u64,
}

/// Calibration: per (rule name, class) aggregate of episodes that ended in progress without
/// any action, including those shorter than the threshold.
///
/// `count` and `max_ms` cover every recorded episode; percentiles cover the newest
/// [`CALIBRATION_KEEP`] per key. Keys are bounded by the policy's rules × classes.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    pub(super) keys: BTreeMap<(String, StallClass), CalKey>,
}

/// One row of the calibration table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibrationRow {
    pub rule: String,
    pub class: StallClass,
    #[serde(flatten)]
    pub episodes: Episodes,
}

/// How long the recovered stall episodes of one (rule, class) lasted: the numbers of a
/// calibration row, in `stats.calibration` and in `tcpstall policy check --events`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Episodes {
    /// Stall episodes observed
    pub count: u64,
    /// Longest episode, ms
    pub max_ms: u64,
    /// Median episode, ms
    pub p50_ms: u64,
    /// 99th percentile episode, ms
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
                    episodes: Episodes {
                        count: k.count,
                        max_ms: k.max_ms,
                        p50_ms: percentile(&d, 50),
                        p99_ms: percentile(&d, 99),
                    },
                }
            })
            .collect()
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub(super) fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as u64).div_ceil(100).max(1) as usize;
    sorted[rank.min(sorted.len()) - 1]
}
