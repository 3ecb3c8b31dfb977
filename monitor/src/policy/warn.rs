//! Warnings for a valid policy whose settings are dangerous.

use super::check::Cx;
use super::duration::format_duration;
use super::rule::ParsedRule;
use super::spanned::Span;
use super::{Action, Guards};
use crate::classify::StallClass;
use std::collections::HashMap;
use std::time::Duration;

/// Thresholds shorter than this on a reset rule draw a warning.
pub(super) const SHORT_RESET_THRESHOLD: Duration = Duration::from_secs(5);
/// Budgets above these draw a warning.
pub(super) const HIGH_MAX_RESETS: u32 = 1000;
pub(super) const HIGH_RESET_SHARE: f64 = 0.5;
/// A partition hold that needs more silent networks than this rarely starts.
pub(super) const HIGH_PARTITION_MIN_NETWORKS: u32 = 16;
/// A hold shorter than this turns longer outages into resets.
pub(super) const SHORT_PARTITION_HOLD: Duration = Duration::from_secs(30);
/// A mass disconnect this small bypasses the budgets too easily.
pub(super) const LOW_MASS_DISCONNECT_MIN: u32 = 5;

/// Warnings for a valid policy whose settings are dangerous, each saying why and what to
/// write instead. Only settings that matter when something can be reset: with no reset
/// rule, or `max_resets_per_minute = 0`, nothing is reset and nothing is dangerous — except
/// an empty `protect_ports`, which `tcpstall reset --policy` also uses.
pub(super) fn warn_dangerous(
    cx: &mut Cx<'_>,
    guards: &Guards,
    guard_at: &HashMap<&str, Span>,
    parsed: &[ParsedRule],
) {
    let enabled = guards.max_resets_per_minute > 0;
    if enabled && guards.protect_ports.is_empty() {
        if let Some(at) = guard_at.get("protect_ports") {
            cx.warn(
                at,
                "protect_ports = [] protects nothing: a reset rule (or `tcpstall reset` with \
                 this policy) may destroy any wedged connection, SSH sessions included (the \
                 default protects port 22)",
                Some(
                    "protect_ports = [22], plus the ports of anything that must never be reset"
                        .to_string(),
                ),
            );
        }
    }
    let resetting: Vec<&ParsedRule> = parsed
        .iter()
        .filter(|p| p.rule.action == Action::Reset)
        .collect();
    if !enabled || resetting.is_empty() {
        return;
    }
    let at = |key: &str| guard_at.get(key).cloned();
    if guards.max_resets_per_minute >= HIGH_MAX_RESETS {
        if let Some(span) = at("max_resets_per_minute") {
            cx.warn(
                &span,
                format!(
                    "max_resets_per_minute = {} lets every reset rule destroy that many \
                     connections a minute: the budget no longer stops a misjudged mass reset \
                     (a bad threshold, a network blip the partition hold did not catch)",
                    guards.max_resets_per_minute
                ),
                Some(
                    "max_resets_per_minute = 60 (the default; a mass disconnect of one \
                     network is reset outside the budget anyway)"
                        .to_string(),
                ),
            );
        }
    }
    if guards.reset_share_per_minute >= HIGH_RESET_SHARE {
        if let Some(span) = at("reset_share_per_minute") {
            cx.warn(
                &span,
                format!(
                    "reset_share_per_minute = {} lets a reset rule destroy {:.0} % of the \
                     sockets it tracks every minute: the budget no longer stops a misjudged \
                     mass reset",
                    guards.reset_share_per_minute,
                    guards.reset_share_per_minute * 100.0
                ),
                Some("reset_share_per_minute = 0.1 (the default)".to_string()),
            );
        }
    }
    if guards.partition_min_networks > HIGH_PARTITION_MIN_NETWORKS {
        if let Some(span) = at("partition_min_networks") {
            cx.warn(
                &span,
                format!(
                    "partition_min_networks = {}: the partition hold starts only when that \
                     many remote networks go silent at once, so on a node talking to fewer \
                     networks an outage of its own path resets every wedged connection \
                     (the hold is effectively off)",
                    guards.partition_min_networks
                ),
                Some("partition_min_networks = 2 (the default)".to_string()),
            );
        }
    }
    if guards.partition_share >= 1.0 {
        if let Some(span) = at("partition_share") {
            cx.warn(
                &span,
                "partition_share = 1.0: one remote network still answering (e.g. one on the \
                 near side of the outage) keeps the partition hold from starting, and the \
                 outage becomes resets",
                Some("partition_share = 0.9 (the default)".to_string()),
            );
        }
    }
    if guards.partition_max_hold < SHORT_PARTITION_HOLD {
        if let Some(span) = at("partition_max_hold") {
            cx.warn(
                &span,
                format!(
                    "partition_max_hold = \"{}\": an outage of the node's own path that lasts \
                     longer becomes resets of every connection it wedged",
                    format_duration(guards.partition_max_hold)
                ),
                Some("partition_max_hold = \"5m\" (the default)".to_string()),
            );
        }
    }
    if guards.mass_disconnect_min < LOW_MASS_DISCONNECT_MIN {
        if let Some(span) = at("mass_disconnect_min") {
            cx.warn(
                &span,
                format!(
                    "mass_disconnect_min = {}: that few silent peers of one network count as a \
                     mass disconnect, whose resets bypass the budgets",
                    guards.mass_disconnect_min
                ),
                Some("mass_disconnect_min = 20 (the default)".to_string()),
            );
        }
    }
    for p in resetting {
        let r = &p.rule;
        if r.selectors.match_all {
            cx.warn(
                &p.header,
                format!(
                    "rule `{}` resets with match_all = true: every process's wedged \
                     connections on the node are reset, including services nobody calibrated \
                     a threshold for",
                    r.name
                ),
                Some(
                    "selectors for the service it is meant for (local_ports, comm, \
                     cgroup_prefix), and an observe rule for the rest"
                        .to_string(),
                ),
            );
        }
        for class in &r.classes {
            let (key, t) = match class {
                StallClass::ZeroWindow => ("zero_window_after", r.thresholds.zero_window_after),
                StallClass::NoAck => ("no_ack_after", r.thresholds.no_ack_after),
                StallClass::SlowDrain if r.thresholds.slow_drain_floor_bps > 0 => {
                    ("slow_drain_window", r.thresholds.slow_drain_window)
                }
                _ => continue,
            };
            if t < SHORT_RESET_THRESHOLD {
                cx.warn(
                    &p.header,
                    format!(
                        "rule `{}` resets {} stalls after {key} = \"{}\": healthy readers look \
                         wedged for seconds on Linux (a bursty WebSocket reader showed 13-15 s \
                         of zero window between reads; see the README's Calibration \
                         workflow), so connections that were only slow get reset",
                        r.name,
                        class.as_str(),
                        format_duration(t)
                    ),
                    Some(format!(
                        "{key} = \"30s\" (the default), or a value from `tcpstall policy check \
                         --events` on a recording of this service"
                    )),
                );
            }
        }
    }
}
