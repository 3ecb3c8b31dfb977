//! The validation context: the problems and warnings found so far, with their positions
//! worked out at the end, and the readers of typed values (durations, rates, shares, the
//! action) that report what is wrong with a node and how to write it.

use super::duration::{format_duration, format_rate, guess_rate, parse_duration, parse_rate};
use super::spanned::{Key, Kind, Node, Span};
use super::{Action, Problem};
use std::time::Duration;

pub(super) const THRESHOLD_MIN: Duration = Duration::from_secs(1);
pub(super) const THRESHOLD_MAX: Duration = Duration::from_secs(24 * 3600);
pub(super) const MAX_NAME_LEN: usize = 64;
/// Problems (and warnings) listed for one file at most.
pub(super) const MAX_PROBLEMS: usize = 100;
/// TASK_COMM_LEN - 1: the kernel keeps at most 15 bytes of a process name.
pub(super) const MAX_COMM_LEN: usize = 15;

pub(super) const TOP_KEYS: &[&str] = &["tick", "defaults", "guards", "rule"];
pub(super) const THRESHOLD_KEYS: &[&str] = &[
    "zero_window_after",
    "no_ack_after",
    "slow_drain_floor",
    "slow_drain_window",
    "recv_backlog_after",
    "cadence_factor",
    "ceiling",
];
pub(super) const GUARD_KEYS: &[&str] = &[
    "protect_ports",
    "max_resets_per_minute",
    "reset_share_per_minute",
    "network_share",
    "mass_disconnect_min",
    "partition_min_networks",
    "partition_share",
    "partition_max_hold",
];
pub(super) const SELECTOR_KEYS: &[&str] = &[
    "match_all",
    "local_ports",
    "remote_ports",
    "local_cidrs",
    "remote_cidrs",
    "comm",
    "cgroup_prefix",
    "netns",
    "k8s_namespace",
    "pod_prefix",
];

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Section {
    Top,
    Defaults,
    Guards,
    Rule,
}

impl Section {
    pub(super) fn label(self) -> &'static str {
        match self {
            Section::Top => "at the top level",
            Section::Defaults => "[defaults]",
            Section::Guards => "[guards]",
            Section::Rule => "[[rule]]",
        }
    }

    pub(super) fn keys(self) -> Vec<&'static str> {
        match self {
            Section::Top => TOP_KEYS.to_vec(),
            Section::Defaults => [THRESHOLD_KEYS, &["action"]].concat(),
            Section::Guards => GUARD_KEYS.to_vec(),
            Section::Rule => [
                &["name"],
                SELECTOR_KEYS,
                &["classes", "action"],
                THRESHOLD_KEYS,
            ]
            .concat(),
        }
    }
}

/// A setting in one scope: not written, written (with where), or written but invalid
/// (already reported; checks that depend on it are skipped to avoid follow-on noise).
#[derive(Clone, Debug, Default)]
pub(super) enum Val<T> {
    #[default]
    Unset,
    Set(T, Span),
    Broken,
}

impl<T: Clone> Val<T> {
    pub(super) fn from_result(r: Option<T>, span: &Span) -> Self {
        match r {
            Some(v) => Val::Set(v, span.clone()),
            None => Val::Broken,
        }
    }
}

pub(super) struct Cx<'s> {
    src: &'s str,
    line_starts: Vec<usize>,
    /// Problems with the byte offset they point at. Lines and columns are worked out at the
    /// end, for the problems shown only ([`MAX_PROBLEMS`]): counting the characters of a
    /// 1 MiB line for every one of 100,000 problems would take minutes.
    pub(super) problems: Vec<(usize, Problem)>,
    /// Valid but dangerous settings, likewise.
    pub(super) warnings: Vec<(usize, Problem)>,
}

impl<'s> Cx<'s> {
    pub(super) fn new(src: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Cx {
            src,
            line_starts,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        (line, self.src[start..offset].chars().count() + 1)
    }

    pub(super) fn line_of(&self, span: &Span) -> usize {
        self.line_starts
            .partition_point(|&s| s <= span.start.min(self.src.len()))
    }

    pub(super) fn report(
        &mut self,
        at: &Span,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        self.problems.push(at_span(at, message.into(), hint.into()));
    }

    /// A valid but dangerous setting (`policy check` prints it; it does not make the file
    /// invalid).
    pub(super) fn warn(
        &mut self,
        at: &Span,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        self.warnings.push(at_span(at, message.into(), hint.into()));
    }

    /// In file order, at most [`MAX_PROBLEMS`] with their positions, then a line saying how
    /// many more there are.
    pub(super) fn finish(&self, mut list: Vec<(usize, Problem)>) -> Vec<Problem> {
        list.sort_by_key(|(offset, _)| *offset);
        let total = list.len();
        list.truncate(MAX_PROBLEMS);
        let mut out: Vec<Problem> = list
            .into_iter()
            .map(|(offset, mut p)| {
                (p.line, p.col) = self.position(offset);
                p
            })
            .collect();
        if total > MAX_PROBLEMS {
            out.push(Problem {
                line: 0,
                col: 0,
                message: format!(
                    "{} more not shown (only the first {MAX_PROBLEMS} are listed)",
                    total - MAX_PROBLEMS
                ),
                hint: Some("fix these and check again".to_string()),
            });
        }
        out
    }

    pub(super) fn syntax_error(&mut self, e: &toml_edit::TomlError) {
        let span = e.span().unwrap_or(0..0);
        let message = format!(
            "not valid TOML: {}",
            e.message().trim().lines().collect::<Vec<_>>().join("; ")
        );
        let hint = if e.message().contains("duplicate key") {
            Some(
                "each key once per table; start every rule with its own [[rule]] header"
                    .to_string(),
            )
        } else if e.message().contains("invalid string") {
            Some(self.quoted_line_hint(span.start))
        } else {
            None
        };
        self.report(&span, message, hint);
    }

    /// For `key = bare words` lines: the same line with the value quoted.
    pub(super) fn quoted_line_hint(&self, offset: usize) -> String {
        let (line, _) = self.position(offset);
        let text = self.src[self.line_starts[line - 1]..]
            .lines()
            .next()
            .unwrap_or("");
        let text = text.split('#').next().unwrap_or("").trim();
        match text.split_once('=') {
            Some((k, v)) if !v.trim().is_empty() => {
                format!(
                    "{} = \"{}\" (text values go in double quotes)",
                    k.trim(),
                    v.trim()
                )
            }
            _ => "text values in double quotes, e.g. action = \"reset\"".to_string(),
        }
    }

    pub(super) fn unknown_key(&mut self, key: &Key, section: Section) {
        let known = section.keys();
        let place = match section {
            Section::Top => section.label().to_string(),
            _ => format!("in {}", section.label()),
        };
        let mut message = format!("unknown key `{}` {place}", key.name);
        let name = key.name.as_str();
        let hint = if let Some(best) = closest(name, &known) {
            best.to_string()
        } else if THRESHOLD_KEYS.contains(&name)
            && matches!(section, Section::Top | Section::Guards)
        {
            message.push_str("; thresholds belong in [defaults] or a [[rule]]");
            format!("{name} under [defaults]")
        } else if SELECTOR_KEYS.contains(&name) && section == Section::Defaults {
            message
                .push_str("; selectors belong in a [[rule]]: [defaults] applies to every socket");
            format!("{name} under [[rule]]")
        } else if let Some(home) = [
            Section::Rule,
            Section::Guards,
            Section::Top,
            Section::Defaults,
        ]
        .into_iter()
        .find(|s| *s != section && s.keys().contains(&name))
        {
            message.push_str(&match home {
                Section::Top => "; it belongs at the top of the file".to_string(),
                Section::Rule => "; it belongs in a [[rule]]".to_string(),
                _ => format!("; it belongs in {}", home.label()),
            });
            match home {
                Section::Top => format!("{name} at the top of the file, before any [table]"),
                _ => format!("{name} under {}", home.label()),
            }
        } else {
            format!("one of {}", known.join(", "))
        };
        self.report(&key.span, message, Some(hint));
    }

    pub(super) fn wrong_type(&mut self, key: &Key, node: &Node, wanted: &str, example: &str) {
        self.report(
            &node.span,
            format!(
                "`{}` must be {wanted}, not {}",
                key.name,
                node.kind.type_name()
            ),
            Some(format!("{} = {example}", key.name)),
        );
    }

    pub(super) fn table<'n>(
        &mut self,
        key: &Key,
        node: &'n Node,
        example: &str,
    ) -> Option<&'n [(Key, Node)]> {
        match &node.kind {
            Kind::Table(entries) => Some(entries),
            _ => {
                self.report(
                    &key.span,
                    format!(
                        "`{}` must be a table, not {}",
                        key.name,
                        node.kind.type_name()
                    ),
                    Some(example.to_string()),
                );
                None
            }
        }
    }

    /// A non-empty array; reports and returns None otherwise.
    pub(super) fn list<'n>(
        &mut self,
        key: &Key,
        node: &'n Node,
        example: &str,
        empty_means: &str,
    ) -> Option<&'n [Node]> {
        match &node.kind {
            Kind::Array(items) if items.is_empty() => {
                self.report(
                    &node.span,
                    format!("`{} = []` {empty_means}", key.name),
                    Some(format!("{} = {example}, or remove the key", key.name)),
                );
                None
            }
            Kind::Array(items) => Some(items),
            _ => {
                self.wrong_type(key, node, "a list", example);
                None
            }
        }
    }

    /// Parse every element of a list with `f`; all errors reported; None if any failed.
    pub(super) fn each<T>(
        &mut self,
        items: &[Node],
        mut f: impl FnMut(&Node) -> Result<T, (String, Option<String>)>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match f(item) {
                Ok(v) => out.push(v),
                Err((msg, hint)) => {
                    self.report(&item.span, msg, hint);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn duration(
        &mut self,
        key: &Key,
        node: &Node,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let name = &key.name;
        let d = match &node.kind {
            Kind::Str(s) => match parse_duration(s) {
                Some(d) => d,
                None => {
                    let hint = match humantime::parse_duration(s.trim()) {
                        Ok(d) => format!("{name} = \"{}\"", format_duration(d)),
                        Err(_) => format!("{name} = \"30s\""),
                    };
                    self.report(
                        &node.span,
                        format!(
                            "`{s}` is not a duration: write whole numbers with a unit (ms, s, m, h) \
                             and no spaces, e.g. \"30s\", \"1m30s\", \"500ms\""
                        ),
                        Some(hint),
                    );
                    return None;
                }
            },
            Kind::Int(n) => {
                self.report(
                    &node.span,
                    format!("`{name} = {n}` has no unit: durations are strings with a unit"),
                    Some(format!("{name} = \"{n}s\"")),
                );
                return None;
            }
            Kind::Float(x) if x.is_finite() && *x >= 0.0 => {
                self.report(
                    &node.span,
                    format!("`{name} = {x}` has no unit: durations are strings with a unit"),
                    Some(format!(
                        "{name} = \"{}\"",
                        format_duration(Duration::from_secs_f64(x.min(1e9)))
                    )),
                );
                return None;
            }
            _ => {
                self.wrong_type(key, node, "a duration string", "\"30s\"");
                return None;
            }
        };
        if d < min || d > max {
            let (lo, hi) = (format_duration(min), format_duration(max));
            let fix = if d < min { &lo } else { &hi };
            self.report(
                &node.span,
                format!(
                    "`{name} = \"{}\"` is out of range: it must be between {lo} and {hi}",
                    format_duration(d)
                ),
                Some(format!("{name} = \"{fix}\"")),
            );
            return None;
        }
        Some(d)
    }

    pub(super) fn rate(&mut self, key: &Key, node: &Node) -> Option<u64> {
        let name = &key.name;
        match &node.kind {
            Kind::Str(s) => match parse_rate(s) {
                Some(r) => Some(r),
                None => {
                    let hint = format!(
                        "{name} = \"{}\"",
                        format_rate(guess_rate(s).unwrap_or(1024))
                    );
                    self.report(
                        &node.span,
                        format!(
                            "`{s}` is not a rate: write a whole number, a unit (B, KiB, MiB, GiB; \
                             1KiB = 1024 bytes) and \"/s\", e.g. \"512B/s\", \"1KiB/s\", \"2MiB/s\""
                        ),
                        Some(hint),
                    );
                    None
                }
            },
            Kind::Int(n) if *n >= 0 => {
                self.report(
                    &node.span,
                    format!("`{name} = {n}` has no unit: rates are strings such as \"1KiB/s\""),
                    Some(format!("{name} = \"{}\"", format_rate(*n as u64))),
                );
                None
            }
            _ => {
                self.wrong_type(key, node, "a rate string", "\"1KiB/s\"");
                None
            }
        }
    }

    /// A share between 0 and 1 (`zero_ok`: 0 allowed, else it must be above 0).
    pub(super) fn share(
        &mut self,
        key: &Key,
        node: &Node,
        zero_ok: bool,
        example: &str,
    ) -> Option<f64> {
        let x = match node.kind {
            Kind::Float(x) => x,
            Kind::Int(n) => n as f64,
            _ => {
                self.wrong_type(key, node, "a number between 0 and 1", example);
                return None;
            }
        };
        let low_ok = if zero_ok { x >= 0.0 } else { x > 0.0 };
        if !x.is_finite() || !low_ok || x > 1.0 {
            let range = if zero_ok {
                "0 and 1"
            } else {
                "above 0 and at most 1"
            };
            self.report(
                &node.span,
                format!("`{} = {x}` is a share: it must be {range}", key.name),
                Some(format!("{} = {example}", key.name)),
            );
            return None;
        }
        Some(x)
    }

    pub(super) fn cadence_factor(&mut self, key: &Key, node: &Node) -> Option<f64> {
        let x = match node.kind {
            Kind::Float(x) => x,
            Kind::Int(n) => n as f64,
            _ => {
                self.wrong_type(key, node, "a number", "2.0");
                return None;
            }
        };
        if !x.is_finite() || x < 1.0 {
            self.report(
                &node.span,
                format!(
                    "`cadence_factor = {x}` must be at least 1.0: it multiplies a socket's \
                     longest recovered stall, and below 1 would make thresholds shorter"
                ),
                Some("cadence_factor = 1.0 (no history extension), or larger".to_string()),
            );
            return None;
        }
        Some(x)
    }

    pub(super) fn action(&mut self, key: &Key, node: &Node) -> Option<Action> {
        let Kind::Str(s) = &node.kind else {
            self.wrong_type(key, node, "a string", "\"observe\"");
            return None;
        };
        match s.as_str() {
            "observe" => Some(Action::Observe),
            "reset" => Some(Action::Reset),
            other => {
                let hint = match closest(other, &["observe", "reset"]) {
                    Some(best) => format!("action = \"{best}\""),
                    None => "action = \"observe\" or action = \"reset\"".to_string(),
                };
                self.report(
                    &node.span,
                    format!("unknown action `{other}`: the actions are \"observe\" and \"reset\""),
                    Some(hint),
                );
                None
            }
        }
    }
}

/// The known word an unknown one most likely meant, if any is close enough.
pub(super) fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let norm = word.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    if let Some(exact) = known.iter().find(|k| **k == norm) {
        return Some(exact);
    }
    let limit = match norm.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    let len = norm.chars().count();
    known
        .iter()
        // The distance is at least the difference in length: skip the work for long words.
        .filter(|k| k.len().abs_diff(len) <= limit)
        .map(|k| (strsim::levenshtein(&norm, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
        .or_else(|| {
            // Prefix or suffix of a known key, e.g. `zero_window` for `zero_window_after`.
            known
                .iter()
                .find(|k| norm.len() >= 4 && (k.starts_with(&norm) || norm.starts_with(*k)))
                .copied()
        })
}

/// A problem at `at`; `finish` fills in its line and column.
fn at_span(at: &Span, message: String, hint: Option<String>) -> (usize, Problem) {
    (
        at.start,
        Problem {
            line: 0,
            col: 0,
            message,
            hint,
        },
    )
}
