//! The effective policy as `tcpstall policy check` prints it: text and JSON.

use super::duration::{format_duration, format_rate};
use super::{Action, Policy};
use crate::classify::Thresholds;
use serde_json::json;
use std::fmt;

impl Policy {
    /// Human-readable effective rules (every inherited value filled in), for
    /// `tcpstall policy check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let source = match &self.source {
            Some(p) => p.display().to_string(),
            None => "built-in defaults (no policy file)".to_string(),
        };
        out.push_str(&format!("policy: {source}\n"));
        out.push_str(&format!("tick: {}\n", format_duration(self.tick)));
        let g = &self.guards;
        let ports = if g.protect_ports.is_empty() {
            "no protected ports".to_string()
        } else {
            let p = join(&g.protect_ports, ", ");
            format!("never reset our service on port {p} nor our outgoing connections to {p}")
        };
        let budget = match g.max_resets_per_minute {
            0 => "resets disabled (max_resets_per_minute = 0)".to_string(),
            n => format!(
                "per rule at most max({n}, {}% of the sockets it tracks) resets per minute, one \
                 remote network at most {}% of that",
                g.reset_share_per_minute * 100.0,
                g.network_share * 100.0
            ),
        };
        out.push_str(&format!("guards: {ports}; {budget}\n"));
        out.push_str(&format!(
            "        mass disconnect: {} or more silent peers of one remote network are reset \
             together, outside the budget; partition hold: no resets while {} or more remote \
             networks and {}% of those heard from are silent at once (at most {})\n",
            g.mass_disconnect_min,
            g.partition_min_networks,
            g.partition_share * 100.0,
            format_duration(g.partition_max_hold)
        ));
        out.push_str("defaults (sockets no rule selects; observed, never reset):\n");
        out.push_str(&format!("  {}\n", describe_thresholds(&self.defaults)));
        if self.rules.is_empty() {
            out.push_str("rules: none; every socket is observed with the defaults\n");
            return out;
        }
        out.push_str("rules (first match wins):\n");
        for (i, r) in self.rules.iter().enumerate() {
            let at = if r.line > 0 {
                format!(" (line {})", r.line)
            } else {
                String::new()
            };
            let what = match r.action {
                Action::Reset => format!(
                    "reset on {}",
                    r.classes
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Action::Observe => "observe".to_string(),
            };
            out.push_str(&format!("  {}. {}{at}: {what}\n", i + 1, r.name));
            out.push_str(&format!("     match: {}\n", r.selectors.describe()));
            out.push_str(&format!(
                "     thresholds: {}\n",
                describe_thresholds(&r.thresholds)
            ));
        }
        out.push_str("  otherwise: observe with the defaults\n");
        out
    }

    /// The same as [`describe`](Self::describe), as JSON. Durations and rates are strings in
    /// the policy file's syntax (`"30s"`, `"1KiB/s"`).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "source": self.source.as_ref().map(|p| p.display().to_string()),
            "tick": format_duration(self.tick),
            "defaults": thresholds_json(&self.defaults),
            "guards": {
                "protect_ports": self.guards.protect_ports,
                "max_resets_per_minute": self.guards.max_resets_per_minute,
                "reset_share_per_minute": self.guards.reset_share_per_minute,
                "network_share": self.guards.network_share,
                "mass_disconnect_min": self.guards.mass_disconnect_min,
                "partition_min_networks": self.guards.partition_min_networks,
                "partition_share": self.guards.partition_share,
                "partition_max_hold": format_duration(self.guards.partition_max_hold),
            },
            "rules": self.rules.iter().map(|r| json!({
                "name": r.name,
                "line": r.line,
                "match": r.selectors.to_json(),
                "action": r.action,
                "classes": r.classes,
                "thresholds": thresholds_json(&r.thresholds),
            })).collect::<Vec<_>>(),
        })
    }
}

pub(super) fn join<T: fmt::Display>(v: &[T], sep: &str) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

pub(super) fn describe_thresholds(t: &Thresholds) -> String {
    format!(
        "zero_window_after {}, no_ack_after {}, slow_drain below {} over {}, \
         recv_backlog_after {}, cadence_factor {}, ceiling {}",
        format_duration(t.zero_window_after),
        format_duration(t.no_ack_after),
        format_rate(t.slow_drain_floor_bps),
        format_duration(t.slow_drain_window),
        format_duration(t.recv_backlog_after),
        crate::classify::fmt_factor(t.cadence_factor),
        format_duration(t.ceiling),
    )
}

pub(super) fn thresholds_json(t: &Thresholds) -> serde_json::Value {
    json!({
        "zero_window_after": format_duration(t.zero_window_after),
        "no_ack_after": format_duration(t.no_ack_after),
        "slow_drain_floor": format_rate(t.slow_drain_floor_bps),
        "slow_drain_window": format_duration(t.slow_drain_window),
        "recv_backlog_after": format_duration(t.recv_backlog_after),
        "cadence_factor": t.cadence_factor,
        "ceiling": format_duration(t.ceiling),
    })
}
