//! One `[[rule]]`: its name, selectors, classes, action and thresholds, and the checks
//! within one rule (selectors present, recv_backlog not reset, ports not all protected).

use super::check::{Cx, Section, MAX_NAME_LEN};
use super::spanned::{Kind, Node, Span};
use super::thresholds::{Broken, ThresholdSpec};
use super::values::{
    parse_cgroup, parse_cidr, parse_class, parse_comm, parse_k8s_name, parse_netns, parse_port,
    sanitized_name, valid_name,
};
use super::{shadow, Action, Rule, Selectors};
use crate::classify::{StallClass, Thresholds};
use std::collections::HashSet;

/// One parsed rule plus what cross-rule checks need.
pub(super) struct ParsedRule {
    pub(super) rule: Rule,
    pub(super) header: Span,
    pub(super) name_span: Option<Span>,
    /// A selector failed to parse: skip cross-rule checks that would be guesses.
    pub(super) broken_selectors: bool,
}

pub(super) fn parse_rule(
    cx: &mut Cx<'_>,
    index: usize,
    node: &Node,
    defaults: &Thresholds,
    defaults_broken: &Broken,
    protected: &[(u16, u16)],
) -> Option<ParsedRule> {
    let Kind::Table(entries) = &node.kind else {
        cx.report(
            &node.span,
            format!("each rule must be a table, not {}", node.kind.type_name()),
            Some("a [[rule]] header followed by key = value lines".to_string()),
        );
        return None;
    };
    let header = node.span.clone();
    let line = cx.line_of(&header);
    let mut name: Option<(String, Span)> = None;
    let mut sel = Selectors::default();
    let mut broken = false;
    let mut match_all_span = None;
    let mut action = Action::Observe;
    let mut classes: Option<Vec<(StallClass, Span)>> = None;
    let mut port_spans: Vec<(&'static str, Span)> = Vec::new();
    let mut spec = ThresholdSpec::default();

    for (k, v) in entries {
        if spec.entry(cx, k, v) {
            continue;
        }
        let key = k.name.as_str();
        match key {
            "name" => match &v.kind {
                Kind::Str(s) if valid_name(s) => name = Some((s.clone(), v.span.clone())),
                Kind::Str(s) => {
                    cx.report(
                        &v.span,
                        format!(
                            "rule name `{s}` must be 1-{MAX_NAME_LEN} characters of letters, \
                             digits, '.', '_' and '-'"
                        ),
                        Some(format!("name = \"{}\"", sanitized_name(s))),
                    );
                    // Still a name for duplicate checks and messages.
                    name = Some((s.clone(), v.span.clone()));
                }
                _ => cx.wrong_type(k, v, "a string", "\"websocket-server\""),
            },
            "match_all" => match v.kind {
                Kind::Bool(b) => {
                    sel.match_all = b;
                    match_all_span = Some(v.span.clone());
                }
                _ => cx.wrong_type(k, v, "true or false", "true"),
            },
            "local_ports" | "remote_ports" => {
                let parsed = cx
                    .list(k, v, "[8000, \"9000-9100\"]", "matches no socket")
                    .and_then(|items| cx.each(items, parse_port));
                match parsed {
                    Some(p) => {
                        if key == "local_ports" {
                            port_spans.push(("local_ports", k.span.clone()));
                            sel.local_ports = Some(p);
                        } else {
                            port_spans.push(("remote_ports", k.span.clone()));
                            sel.remote_ports = Some(p);
                        }
                    }
                    None => broken = true,
                }
            }
            "local_cidrs" | "remote_cidrs" => {
                let parsed = cx
                    .list(k, v, "[\"10.0.0.0/8\"]", "matches no socket")
                    .and_then(|items| cx.each(items, parse_cidr));
                match parsed {
                    Some(n) if key == "local_cidrs" => sel.local_cidrs = Some(n),
                    Some(n) => sel.remote_cidrs = Some(n),
                    None => broken = true,
                }
            }
            "comm" => match cx
                .list(k, v, "[\"granian\"]", "matches no socket")
                .and_then(|items| cx.each(items, parse_comm))
            {
                Some(c) => sel.comm = Some(c),
                None => broken = true,
            },
            "cgroup_prefix" => match cx
                .list(k, v, "[\"/system.slice/app.service\"]", "matches no socket")
                .and_then(|items| cx.each(items, parse_cgroup))
            {
                Some(c) => sel.cgroup_prefix = Some(c),
                None => broken = true,
            },
            "k8s_namespace" => match cx
                .list(k, v, "[\"payments\"]", "matches no socket")
                .and_then(|items| cx.each(items, |n| parse_k8s_name(n, "namespace", 63)))
            {
                Some(c) => sel.k8s_namespace = Some(c),
                None => broken = true,
            },
            "pod_prefix" => match cx
                .list(k, v, "[\"api-\"]", "matches no socket")
                .and_then(|items| cx.each(items, |n| parse_k8s_name(n, "pod name prefix", 253)))
            {
                Some(c) => sel.pod_prefix = Some(c),
                None => broken = true,
            },
            "netns" => match cx
                .list(k, v, "[4026531840]", "matches no socket")
                .and_then(|items| cx.each(items, parse_netns))
            {
                Some(n) => sel.netns = Some(n),
                None => broken = true,
            },
            "classes" => {
                let parsed = cx
                    .list(
                        k,
                        v,
                        "[\"zero_window\", \"no_ack\"]",
                        "would make the action apply to nothing",
                    )
                    .and_then(|items| cx.each(items, parse_class));
                if let Some(list) = parsed {
                    let mut seen = HashSet::new();
                    let mut deduped = Vec::new();
                    for (c, span) in &list {
                        if seen.insert(*c) {
                            deduped.push(*c);
                        } else {
                            cx.report(
                                span,
                                format!("class `{}` is listed twice", c.as_str()),
                                None,
                            );
                        }
                    }
                    if deduped.len() != list.len() {
                        let fixed = deduped
                            .iter()
                            .map(|c| format!("\"{}\"", c.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ");
                        if let Some((_, p)) = cx.problems.last_mut() {
                            p.hint = Some(format!("classes = [{fixed}]"));
                        }
                    }
                    classes = Some(list);
                }
            }
            "action" => {
                if let Some(a) = cx.action(k, v) {
                    action = a;
                }
            }
            _ => cx.unknown_key(k, Section::Rule),
        }
    }

    let name_label = name
        .as_ref()
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| format!("#{}", index + 1));
    if name.is_none() {
        cx.report(
            &header,
            format!(
                "rule #{} has no name: every rule needs a unique name (events carry it)",
                index + 1
            ),
            Some(format!(
                "name = \"rule-{}\" (or a name saying what it is for)",
                index + 1
            )),
        );
    }
    let selector_names = sel.set_names();
    if sel.match_all {
        if !selector_names.is_empty() {
            cx.report(
                match_all_span.as_ref().unwrap_or(&header),
                format!(
                    "rule `{name_label}` has match_all = true and also {}: match_all selects every \
                     socket, so these selectors would be ignored",
                    selector_names.join(", ")
                ),
                Some(
                    "either match_all = true alone, or the selectors without match_all".to_string(),
                ),
            );
        }
    } else if selector_names.is_empty() && !broken {
        cx.report(
            &header,
            format!(
                "rule `{name_label}` has no selectors, so it is not clear which sockets it is for"
            ),
            Some(
                "a selector such as local_ports = [8000] (also remote_ports, local_cidrs, \
                 remote_cidrs, comm, cgroup_prefix, netns), or match_all = true if you really mean \
                 every socket"
                    .to_string(),
            ),
        );
    }

    let class_list: Vec<StallClass> = match &classes {
        Some(list) => {
            let mut out = Vec::new();
            for (c, _) in list {
                if !out.contains(c) {
                    out.push(*c);
                }
            }
            out
        }
        None => Rule::DEFAULT_CLASSES.to_vec(),
    };
    if action == Action::Reset {
        if let Some((_, span)) = classes
            .as_ref()
            .and_then(|l| l.iter().find(|(c, _)| *c == StallClass::RecvBacklog))
        {
            let rest: Vec<String> = class_list
                .iter()
                .filter(|c| **c != StallClass::RecvBacklog)
                .map(|c| format!("\"{}\"", c.as_str()))
                .collect();
            let hint = if rest.is_empty() {
                "action = \"observe\" (recv_backlog can only be observed)".to_string()
            } else {
                format!("classes = [{}], or action = \"observe\"", rest.join(", "))
            };
            cx.report(
                span,
                format!(
                    "rule `{name_label}` resets, but recv_backlog is observe-only: it means the \
                     local process is not reading, and resetting its connection would hide that bug"
                ),
                Some(hint),
            );
        }
        // A protected local port always protects; a protected remote port only protects our
        // outgoing connections (a client may connect to us from that port), so only
        // local_ports can make a reset rule powerless.
        for (which, span) in &port_spans {
            if *which != "local_ports" {
                continue;
            }
            let Some(ranges) = &sel.local_ports else {
                continue;
            };
            let all_protected = ranges
                .iter()
                .all(|r| shadow::ports_contain(protected, r.first, r.last));
            if all_protected {
                cx.report(
                    span,
                    format!(
                        "rule `{name_label}` resets, but every port in its {which} is in [guards] \
                         protect_ports, so it can never reset anything"
                    ),
                    Some(
                        "action = \"observe\", or remove those ports from [guards] protect_ports if \
                         you really mean to reset them"
                            .to_string(),
                    ),
                );
            }
        }
    }

    let (thresholds, t_broken) = spec.apply(defaults, defaults_broken);
    spec.check_ceiling(cx, &thresholds, &t_broken, "inherited from [defaults]");

    let (name, name_span) = match name {
        Some((n, s)) => (n, Some(s)),
        None => (String::new(), None),
    };
    Some(ParsedRule {
        rule: Rule {
            name,
            line,
            selectors: sel,
            action,
            classes: class_list,
            thresholds,
        },
        header,
        name_span,
        broken_selectors: broken,
    })
}
