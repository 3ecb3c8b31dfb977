//! Validation of a whole policy file: the top-level keys, `[defaults]`, `[guards]`, each
//! `[[rule]]` (see `rule.rs`) and the checks across rules (unique names, unreachable
//! rules).

use super::check::{Cx, Section};
use super::duration::{TICK_MAX, TICK_MIN};
use super::rule::{parse_rule, ParsedRule};
use super::spanned::{Kind, Node, Span};
use super::thresholds::{Broken, ThresholdSpec};
use super::values::parse_port;
use super::warn::warn_dangerous;
use super::{shadow, Action, Policy, PortRange, Selectors};
use crate::classify::Thresholds;
use std::collections::HashMap;
use std::time::Duration;

/// The policy `root` describes; every problem and warning goes to `cx`, and the policy
/// returned is only meaningful when there were no problems.
pub(super) fn build(cx: &mut Cx<'_>, root: &Node) -> Policy {
    let mut policy = Policy::default();
    let Kind::Table(entries) = &root.kind else {
        cx.report(&root.span, "the policy file must be a TOML table", None);
        return policy;
    };
    let mut defaults = None;
    let mut guards = None;
    let mut rules = None;
    for (key, node) in entries {
        match key.name.as_str() {
            "tick" => {
                if let Some(t) = cx.duration(key, node, TICK_MIN, TICK_MAX) {
                    policy.tick = t;
                }
            }
            "defaults" => defaults = Some((key, node)),
            "guards" => guards = Some((key, node)),
            "rule" => rules = Some((key, node)),
            _ => cx.unknown_key(key, Section::Top),
        }
    }

    // [defaults]
    let mut defaults_spec = ThresholdSpec::default();
    if let Some((key, node)) = defaults {
        if let Some(entries) = cx.table(key, node, "[defaults] followed by key = value lines") {
            for (k, v) in entries {
                if defaults_spec.entry(cx, k, v) {
                    continue;
                }
                if k.name == "action" {
                    if cx.action(k, v) == Some(Action::Reset) {
                        cx.report(
                            &v.span,
                            "[defaults] can only observe: a reset applies to the sockets a \
                             named [[rule]] selects, never to every socket by default",
                            Some(
                                "action = \"observe\" here, and action = \"reset\" in a [[rule]] \
                                 with selectors"
                                    .to_string(),
                            ),
                        );
                    }
                } else {
                    cx.unknown_key(k, Section::Defaults);
                }
            }
        }
    }
    let (defaults_eff, defaults_broken) =
        defaults_spec.apply(&Thresholds::default(), &Broken::new());
    defaults_spec.check_ceiling(cx, &defaults_eff, &defaults_broken, "the built-in default");
    policy.defaults = defaults_eff;

    // [guards]
    let mut guard_at: HashMap<&str, Span> = HashMap::new();
    if let Some((key, node)) = guards {
        if let Some(entries) = cx.table(key, node, "[guards] followed by key = value lines") {
            for (k, v) in entries {
                guard_at.insert(k.name.as_str(), k.span.clone());
                match k.name.as_str() {
                    "protect_ports" => match &v.kind {
                        Kind::Array(items) => {
                            let ports = cx.each(items, |n| match &n.kind {
                                Kind::Int(p) => parse_port(n).map(|_| *p as u16),
                                other => Err((
                                    format!(
                                        "protect_ports lists port numbers, not {}",
                                        other.type_name()
                                    ),
                                    Some("protect_ports = [22, 2222]".to_string()),
                                )),
                            });
                            if let Some(mut ports) = ports {
                                ports.sort_unstable();
                                ports.dedup();
                                policy.guards.protect_ports = ports;
                            }
                        }
                        _ => cx.wrong_type(k, v, "a list of ports", "[22]"),
                    },
                    "max_resets_per_minute" => match v.kind {
                        Kind::Int(n) => match u32::try_from(n) {
                            Ok(n) => policy.guards.max_resets_per_minute = n,
                            Err(_) => cx.report(
                                &v.span,
                                format!(
                                    "`max_resets_per_minute = {n}` must be between 0 and {}",
                                    u32::MAX
                                ),
                                Some("max_resets_per_minute = 60 (0 disables resets)".to_string()),
                            ),
                        },
                        _ => cx.wrong_type(k, v, "a whole number", "60"),
                    },
                    "reset_share_per_minute" => {
                        if let Some(x) = cx.share(k, v, true, "0.1") {
                            policy.guards.reset_share_per_minute = x;
                        }
                    }
                    "network_share" => {
                        if let Some(x) = cx.share(k, v, false, "0.5") {
                            policy.guards.network_share = x;
                        }
                    }
                    "partition_share" => {
                        if let Some(x) = cx.share(k, v, false, "0.9") {
                            policy.guards.partition_share = x;
                        }
                    }
                    "mass_disconnect_min" | "partition_min_networks" => match v.kind {
                        Kind::Int(n) if (1..=1_000_000).contains(&n) => {
                            if k.name == "mass_disconnect_min" {
                                policy.guards.mass_disconnect_min = n as u32;
                            } else {
                                policy.guards.partition_min_networks = n as u32;
                            }
                        }
                        Kind::Int(n) => cx.report(
                            &v.span,
                            format!("`{} = {n}` must be between 1 and 1000000", k.name),
                            Some(format!(
                                "{} = {}",
                                k.name,
                                if k.name == "mass_disconnect_min" {
                                    20
                                } else {
                                    2
                                }
                            )),
                        ),
                        _ => cx.wrong_type(k, v, "a whole number", "20"),
                    },
                    "partition_max_hold" => {
                        if let Some(d) = cx.duration(
                            k,
                            v,
                            Duration::from_secs(1),
                            Duration::from_secs(24 * 3600),
                        ) {
                            policy.guards.partition_max_hold = d;
                        }
                    }
                    _ => cx.unknown_key(k, Section::Guards),
                }
            }
        }
    }

    // [[rule]]
    let mut parsed: Vec<ParsedRule> = Vec::new();
    if let Some((key, node)) = rules {
        match &node.kind {
            Kind::Array(items) => {
                // Protected ports as merged ranges, for the reset rules' check (once).
                let protected = shadow::merged_ports(
                    &policy
                        .guards
                        .protect_ports
                        .iter()
                        .map(|p| PortRange::single(*p))
                        .collect::<Vec<_>>(),
                );
                for (i, item) in items.iter().enumerate() {
                    if let Some(p) =
                        parse_rule(cx, i, item, &defaults_eff, &defaults_broken, &protected)
                    {
                        parsed.push(p);
                    }
                }
            }
            Kind::Table(_) => cx.report(
                &key.span,
                "rules are an array of tables: write each as [[rule]] (double brackets)",
                Some("[[rule]]".to_string()),
            ),
            _ => cx.wrong_type(key, node, "a list of [[rule]] tables", "[[rule]] sections"),
        }
    }

    // Cross-rule checks.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for p in &parsed {
        if p.rule.name.is_empty() {
            continue;
        }
        match seen.get(p.rule.name.as_str()) {
            Some(first_line) => {
                let at = p.name_span.clone().unwrap_or_else(|| p.header.clone());
                cx.report(
                    &at,
                    format!(
                        "rule name `{}` is already used by the rule at line {first_line}: names \
                         must be unique (events carry them)",
                        p.rule.name
                    ),
                    Some(format!("name = \"{}-2\"", p.rule.name)),
                );
            }
            None => {
                seen.insert(&p.rule.name, p.rule.line);
            }
        }
    }
    let checked: Vec<Option<&Selectors>> = parsed
        .iter()
        .map(|p| (!p.broken_selectors && !p.rule.selectors.is_empty()).then_some(&p.rule.selectors))
        .collect();
    let (shadows, stopped) = shadow::shadowing(&checked);
    for (later, earlier) in parsed.iter().zip(&shadows) {
        let Some(earlier) = earlier.map(|i| &parsed[i]) else {
            continue;
        };
        let how = if earlier.rule.selectors == later.rule.selectors {
            "has the same selectors"
        } else {
            "selects every socket it selects"
        };
        cx.report(
            &later.header,
            format!(
                "rule `{}` can never match: the earlier rule `{}` (line {}) {how}, and the \
                 first matching rule wins",
                later.rule.name, earlier.rule.name, earlier.rule.line
            ),
            Some(format!(
                "move rule `{}` above rule `{}`, narrow rule `{}`, or delete one of them",
                later.rule.name, earlier.rule.name, earlier.rule.name
            )),
        );
    }
    if let Some(at) = stopped {
        cx.warn(
            &parsed[at].header,
            format!(
                "rules from `{}` on were not checked for being unreachable (an earlier rule \
                 selecting everything they select): the rules overlap so much that the check \
                 stopped after {} steps",
                parsed[at].rule.name,
                shadow::WORK_LIMIT
            ),
            Some("fewer, wider rules: merge rules that share their settings".to_string()),
        );
    }

    warn_dangerous(cx, &policy.guards, &guard_at, &parsed);
    policy.rules = parsed.into_iter().map(|p| p.rule).collect();
    policy
}
