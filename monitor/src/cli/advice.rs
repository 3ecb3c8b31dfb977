//! # `tcpstall policy check FILE [--json] [--events EVENTS.ndjson]`
//!
//! Validates the policy file and prints the effective rules (every inherited value filled
//! in; `--json` prints them as JSON). An invalid file prints one line per problem on stderr,
//! `FILE:LINE:COL: what is wrong; write instead: ...`, and nothing on stdout.
//!
//! With `--events`, it also reads an event stream recorded by `tcpstall run` (NDJSON; lines
//! that are not valid tcpstall events are skipped and counted) and checks every threshold
//! against the pauses that sockets **recovered from by themselves** during the recording:
//! the last `stats.calibration` row of each agent run (summed over runs) and every
//! `threshold_warning`, per (rule, class). For each pair it prints:
//!
//! * the threshold `FILE` configures for that rule and class (`[defaults]` for sockets no
//!   rule selected), and whether the rule resets that class or only reports it;
//! * what was observed: episodes, longest, p50 and p99, threshold warnings;
//! * **SAFE** when the threshold is above the longest recovery (with the margin, e.g.
//!   `2.1x`), or **UNSAFE** when a socket recovered by itself after a pause at least as long
//!   as the threshold — the agent would have reset (or, for an observe rule, reported) a
//!   connection that was only slow. UNSAFE advice recommends a threshold of at least
//!   1.5 × the longest recovery, rounded up to whole seconds, and says what to write where,
//!   e.g. `zero_window_after = "22s"` under `[[rule]] name = "ws"`;
//! * how the cadence rule applies: a socket that already recovered by itself is judged at
//!   `min(ceiling, max(threshold, cadence_factor × its longest recovered gap))`, so only the
//!   first long pause of each connection meets the plain threshold.
//!
//! `--json` adds `recording`, `advice` and `unobserved` keys to the JSON policy.
//!
//! **Warnings.** A valid policy can still be dangerous. Each such setting is printed on
//! stderr as `FILE:LINE:COL: warning: what and why; consider: what to write instead` (and
//! under `warnings` with `--json`): `protect_ports = []`; with a reset rule and resets not
//! disabled, `max_resets_per_minute` of 1000 or more, `reset_share_per_minute` of 0.5 or more,
//! `partition_min_networks` above 16, `partition_share = 1.0`, `partition_max_hold` under
//! 30 s, `mass_disconnect_min` under 5, a reset rule with `match_all = true`, and a reset
//! rule whose threshold for a class it resets is under 5 s. Warnings do not change the exit
//! code unless `--strict` is given.
//!
//! Exit codes: `0` the policy is valid (and, with `--events`, every threshold is above every
//! recovery observed); `1` the events file cannot be read or holds no tcpstall events;
//! `2` the policy is invalid; `3` at least one threshold is UNSAFE for the recording;
//! `4` with `--strict`: the policy has warnings (and nothing above applies).

use super::recording::*;
use super::{EXIT_FAILED, EXIT_OK, EXIT_UNSAFE, EXIT_USAGE, EXIT_WARNINGS};
use crate::classify::{StallClass, Thresholds};
use crate::policy::{format_duration, Action, Policy};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// `--help` epilogue of `tcpstall policy check` (exit codes).
pub const POLICY_CHECK_HELP: &str = "\
With --events, every threshold is checked against the pauses sockets recovered from by \
themselves in the recording: SAFE (threshold above the longest recovery) or UNSAFE (the \
agent would have acted on a connection that was only slow), with the value to write.

Valid but dangerous settings (no protected ports, budgets that do not limit, a short reset \
threshold, a match_all reset rule, a partition hold that is effectively off, ...) are printed \
on stderr as `FILE:LINE:COL: warning: ...`, and under \"warnings\" with --json.

Exit codes:
  0  the policy is valid (and, with --events, every threshold is SAFE)
  1  the events file cannot be read or holds no tcpstall events
  2  the policy is invalid (one line per problem on stderr, nothing on stdout)
  3  at least one threshold is UNSAFE for the recorded events
  4  with --strict: the policy has warnings (and none of the above applies)";

/// Name under which the agent and calibration rows report sockets no rule selected.
pub(super) const DEFAULTS_LABEL: &str = "(defaults)";
/// Longest line accepted from an events file; longer lines are skipped.
pub(super) const MAX_LINE: usize = 1 << 20;
/// Skipped lines whose reason is kept for the report.
pub(super) const SKIP_EXAMPLES: usize = 3;
/// Policy limit for a threshold (see the policy module).
const MAX_THRESHOLD_MS: u64 = 24 * 3600 * 1000;
/// Recommended thresholds are at least this multiple of the longest recovery.
const RECOMMEND_FACTOR_NUM: u64 = 3;
const RECOMMEND_FACTOR_DEN: u64 = 2;

/// `tcpstall policy check FILE [--events FILE] [--json] [--strict]`; see the module
/// documentation for the output and exit codes.
pub fn policy_check(
    file: &Path,
    events: Option<&Path>,
    json: bool,
    strict: bool,
    trouble_hooks: bool,
) -> ExitCode {
    let out = check_output(file, events, json, strict, trouble_hooks);
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    ExitCode::from(out.code)
}

/// What `policy check` prints and returns, computed without touching stdout/stderr.
#[derive(Debug, Default)]
pub struct CheckOutput {
    /// Text for standard output.
    pub stdout: String,
    /// Text for standard error.
    pub stderr: String,
    /// Process exit code.
    pub code: u8,
    /// Warnings about the policy (printed on stderr, and in the JSON).
    pub warnings: usize,
}

/// The whole `policy check` command as a function of its arguments (`trouble_hooks`: judge
/// the policy as an agent run with `--trouble-hooks` does, refusing the rules it cannot
/// serve).
pub fn check_output(
    file: &Path,
    events: Option<&Path>,
    json: bool,
    strict: bool,
    trouble_hooks: bool,
) -> CheckOutput {
    let mut out = CheckOutput::default();
    let policy = match Policy::load(file) {
        Ok(p) => p,
        Err(e) => {
            out.stderr = format!("{e}\n");
            out.code = EXIT_USAGE;
            return out;
        }
    };
    let mut hook_warnings = Vec::new();
    if trouble_hooks {
        match policy.fit_trouble_hooks().into_result() {
            Ok(w) => hook_warnings = w,
            Err(refused) => {
                out.stderr = refused + "\n";
                out.code = EXIT_USAGE;
                return out;
            }
        }
    }
    let report = match events {
        None => None,
        Some(path) => match read_recording(path) {
            Err(e) => {
                out.stderr = format!(
                    "error: cannot read the events file {}: {e}; pass the NDJSON output of \
                     `tcpstall run` (its stdout or --output file)\n",
                    path.display()
                );
                out.code = EXIT_FAILED;
                return out;
            }
            Ok(rec) if rec.events == 0 => {
                out.stderr = format!(
                    "error: {} holds no tcpstall events ({} lines, {} skipped{}); pass the \
                     NDJSON output of `tcpstall run`\n",
                    path.display(),
                    rec.lines,
                    rec.skipped,
                    rec.skip_examples
                        .first()
                        .map(|s| format!("; first: {s}"))
                        .unwrap_or_default()
                );
                out.code = EXIT_FAILED;
                return out;
            }
            Ok(rec) => {
                let observed = rec.observed();
                let advice = advise(&policy, &observed);
                let unobserved = unobserved(&policy, &observed);
                Some((path, rec, advice, unobserved))
            }
        },
    };
    let mut warnings = policy.warning_lines();
    warnings.extend(hook_warnings);
    out.warnings = warnings.len();
    for w in &warnings {
        out.stderr.push_str(w);
        out.stderr.push('\n');
    }
    let unsafe_count = report.as_ref().map_or(0, |(_, _, advice, _)| {
        advice
            .iter()
            .filter(|a| a.verdict == Verdict::Unsafe)
            .count()
    });
    if json {
        let mut v = policy.to_json();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "warnings".into(),
                serde_json::Value::Array(
                    policy
                        .warnings
                        .iter()
                        .map(|w| {
                            serde_json::json!({
                                "line": w.line,
                                "col": w.col,
                                "message": w.message,
                                "hint": w.hint,
                            })
                        })
                        .collect(),
                ),
            );
        }
        if let (Some((path, rec, advice, unobserved)), Some(obj)) = (&report, v.as_object_mut()) {
            obj.insert("recording".into(), rec.summary_json(path));
            obj.insert(
                "advice".into(),
                serde_json::to_value(advice).expect("advice serializes"),
            );
            obj.insert(
                "unobserved".into(),
                serde_json::to_value(unobserved).expect("pairs serialize"),
            );
        }
        out.stdout = format!(
            "{}\n",
            serde_json::to_string_pretty(&v).expect("JSON values serialize")
        );
        if let Some((path, rec, _, _)) = &report {
            if rec.skipped > 0 {
                out.stderr += &format!(
                    "warning: {}: {} lines skipped (not valid tcpstall events)\n",
                    path.display(),
                    rec.skipped
                );
            }
        }
    } else {
        out.stdout = policy.describe();
        if let Some((path, rec, advice, unobserved)) = &report {
            out.stdout.push('\n');
            out.stdout
                .push_str(&render_advice(path, rec, advice, unobserved));
        }
    }
    out.code = if unsafe_count > 0 {
        EXIT_UNSAFE
    } else if strict && out.warnings > 0 {
        EXIT_WARNINGS
    } else {
        EXIT_OK
    };
    out
}

/// Whether a threshold holds up against the recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The threshold is above every recovery observed.
    Safe,
    /// A socket recovered by itself after a pause at least as long as the threshold.
    Unsafe,
    /// The recording names a rule that this policy does not have: nothing to judge.
    UnknownRule,
}

impl Verdict {
    /// Upper-case label for text output.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Safe => "SAFE",
            Verdict::Unsafe => "UNSAFE",
            Verdict::UnknownRule => "UNKNOWN RULE",
        }
    }
}

/// Threshold advice for one (rule, class) of a recording.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Advice {
    /// Rule name; `None` = policy defaults.
    pub rule: Option<String>,
    /// Stall class.
    pub class: StallClass,
    /// The policy key that sets the threshold (`zero_window_after`, ...).
    pub knob: &'static str,
    /// The threshold the policy file configures for this rule and class, ms (`None` for
    /// [`Verdict::UnknownRule`]).
    pub threshold_ms: Option<u64>,
    /// Whether the rule resets sockets stalled in this class (else it only reports them).
    pub resets: bool,
    /// What the recording shows.
    pub observed: Observed,
    /// The judgement.
    pub verdict: Verdict,
    /// Threshold ÷ longest recovery (`None` without a positive recovery or threshold).
    pub margin: Option<f64>,
    /// For UNSAFE: the recommended threshold, ms (whole seconds, ≥ 1.5 × longest recovery).
    pub recommended_ms: Option<u64>,
    /// Where to write: `[defaults]` or `[[rule]] name = "..."`.
    pub section: String,
    /// What to write there (empty when nothing needs to change).
    pub write: Vec<String>,
    /// How the cadence rule treats this class for sockets with recovery history.
    pub cadence: String,
    /// The verdict in one sentence.
    pub summary: String,
}

use crate::classify::{fmt_factor, fmt_ms};

fn ms_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The recommended threshold for a longest recovery of `max_ms`: at least 1.5 × it,
/// rounded up to whole seconds, at least 1 s, at most the policy's 24 h limit.
pub fn recommended_threshold_ms(max_ms: u64) -> u64 {
    let ms = max_ms
        .saturating_mul(RECOMMEND_FACTOR_NUM)
        .div_ceil(RECOMMEND_FACTOR_DEN);
    let secs = ms.div_ceil(1000).max(1);
    let mut rec = secs.saturating_mul(1000);
    if rec <= max_ms {
        rec = (max_ms / 1000 + 1) * 1000;
    }
    rec.min(MAX_THRESHOLD_MS)
}

/// The cadence rule for `class` under `t`, spelled out for a socket whose longest recovered
/// pause was `longest_ms`.
fn cadence_note(class: StallClass, t: &Thresholds, longest_ms: u64) -> String {
    match class {
        StallClass::SlowDrain => {
            return "no cadence for slow_drain: the drain rate is always measured over the \
                    plain slow_drain_window"
                .to_string()
        }
        StallClass::RecvBacklog => {
            return "no cadence for recv_backlog: always judged at the plain threshold".to_string()
        }
        StallClass::ZeroWindow | StallClass::NoAck => {}
    }
    let thr = ms_of(t.threshold_for(class));
    let ceiling = ms_of(t.ceiling);
    let f = if t.cadence_factor.is_finite() && t.cadence_factor > 0.0 {
        t.cadence_factor
    } else {
        0.0
    };
    let asked = (f * longest_ms as f64).round() as u64;
    // The classifier's formula; equal to min(ceiling, max(thr, asked)) since the policy
    // keeps ceiling >= every threshold.
    let eff = thr.max(asked.min(ceiling));
    let mut s = format!(
        "sockets with recovery history get min(ceiling, max(threshold, cadence_factor x \
         longest gap)) = min({}, max({}, {} x {})) = {} after recovering from {}; only a \
         connection's first episode is judged at the plain {}",
        fmt_ms(ceiling),
        fmt_ms(thr),
        fmt_factor(f),
        fmt_ms(longest_ms),
        fmt_ms(eff),
        fmt_ms(longest_ms),
        fmt_ms(thr)
    );
    if longest_ms >= thr {
        if eff > longest_ms {
            s.push_str(", so the risk is each connection's first long pause");
        } else {
            let _ = write!(
                s,
                "; {} does not exceed {} (ceiling {}), so even sockets that already \
                 recovered would be acted on: raise ceiling or cadence_factor too",
                fmt_ms(eff),
                fmt_ms(longest_ms),
                fmt_ms(ceiling)
            );
        }
    }
    s
}

fn section_for(rule: Option<&str>) -> String {
    match rule {
        None => "[defaults]".to_string(),
        Some(name) => format!("[[rule]] name = \"{name}\""),
    }
}

/// Threshold advice per observed (rule, class), judged against `policy`. Pure: the same
/// inputs always give the same advice.
pub fn advise(policy: &Policy, observed: &[Observed]) -> Vec<Advice> {
    observed.iter().map(|o| advise_one(policy, o)).collect()
}

fn advise_one(policy: &Policy, o: &Observed) -> Advice {
    let knob = o.class.threshold_knob();
    let section = section_for(o.rule.as_deref());
    let (thresholds, resets) = match &o.rule {
        None => (&policy.defaults, false),
        Some(name) => match policy.rules.iter().find(|r| &r.name == name) {
            Some(r) => (
                &r.thresholds,
                r.action == Action::Reset && r.classes.contains(&o.class),
            ),
            None => {
                return Advice {
                    rule: o.rule.clone(),
                    class: o.class,
                    knob,
                    threshold_ms: None,
                    resets: false,
                    observed: o.clone(),
                    verdict: Verdict::UnknownRule,
                    margin: None,
                    recommended_ms: None,
                    section,
                    write: Vec::new(),
                    cadence: String::new(),
                    summary: format!(
                        "the recording has rule \"{name}\", which this policy does not \
                         define; its sockets are now judged by whichever rule selects them. \
                         Record again with this policy to judge it (longest recovery seen: \
                         {})",
                        fmt_ms(o.episodes.max_ms)
                    ),
                };
            }
        },
    };
    let thr = ms_of(thresholds.threshold_for(o.class));
    let max = o.episodes.max_ms;
    let margin = (max > 0 && thr > 0).then(|| thr as f64 / max as f64);
    let cadence = cadence_note(o.class, thresholds, max);
    let acts = if resets {
        "would have reset it"
    } else {
        "would have reported it as stalled (this class is observed only, nothing is reset)"
    };
    // Advice on a known threshold: everything but the verdict and what to write.
    let judged = |verdict, recommended_ms, write, summary| Advice {
        rule: o.rule.clone(),
        class: o.class,
        knob,
        threshold_ms: Some(thr),
        resets,
        observed: o.clone(),
        verdict,
        margin,
        recommended_ms,
        section,
        write,
        cadence,
        summary,
    };
    if thr > max {
        let summary = match margin {
            Some(m) => format!(
                "{knob} = {} is {m:.1}x the longest recovery observed ({})",
                fmt_ms(thr),
                fmt_ms(max)
            ),
            None => format!(
                "{knob} = {} is above every recovery observed (all 0ms)",
                fmt_ms(thr)
            ),
        };
        return judged(Verdict::Safe, None, Vec::new(), summary);
    }
    let rec = recommended_threshold_ms(max);
    let mut write = vec![format!(
        "{knob} = \"{}\"",
        format_duration(Duration::from_millis(rec))
    )];
    if rec > ms_of(thresholds.ceiling) {
        write.push(format!(
            "ceiling = \"{}\"",
            format_duration(Duration::from_millis(rec))
        ));
    }
    let mut summary = format!(
        "a socket recovered by itself after {}, but {knob} = {} {acts} first",
        fmt_ms(max),
        fmt_ms(thr)
    );
    if rec <= max {
        let _ = write!(
            summary,
            "; no threshold up to the 24h maximum clears it: leave this class to observe"
        );
    }
    if o.rule.is_none() {
        summary.push_str("; rules that do not set it themselves inherit [defaults]");
    }
    judged(Verdict::Unsafe, Some(rec), write, summary)
}

/// A (rule, class) the policy resets that the recording has no recovered episode for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unobserved {
    /// Rule name.
    pub rule: String,
    /// Class the rule resets.
    pub class: StallClass,
}

/// Reset rules × reset classes without any observation: the recording cannot vouch for
/// their thresholds.
pub fn unobserved(policy: &Policy, observed: &[Observed]) -> Vec<Unobserved> {
    let mut out = Vec::new();
    for r in policy.rules.iter().filter(|r| r.action == Action::Reset) {
        for class in &r.classes {
            let seen = observed
                .iter()
                .any(|o| o.rule.as_deref() == Some(r.name.as_str()) && o.class == *class);
            if !seen {
                out.push(Unobserved {
                    rule: r.name.clone(),
                    class: *class,
                });
            }
        }
    }
    out
}

/// The advice as text (the part after the effective rules).
pub fn render_advice(
    path: &Path,
    rec: &Recording,
    advice: &[Advice],
    unobserved: &[Unobserved],
) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "threshold advice from {}: {} events",
        path.display(),
        rec.events
    );
    if rec.agent_starts > 0 {
        let _ = write!(s, " from {} agent run(s)", rec.agent_starts);
    }
    if rec.skipped > 0 {
        let _ = write!(
            s,
            "; {} line(s) skipped, not valid tcpstall events (first: {})",
            rec.skipped,
            rec.skip_examples.first().map(String::as_str).unwrap_or("?")
        );
    }
    s.push('\n');
    if advice.is_empty() {
        if rec.stats_events == 0 {
            s.push_str(
                "  no stats events in the recording: run the agent longer than its \
                 --stats-interval (default 10s) so calibration rows are written\n",
            );
        } else {
            s.push_str(
                "  no socket recovered by itself from a pause in the recording; nothing \
                 contradicts the thresholds\n",
            );
        }
    }
    for a in advice {
        let who = match &a.rule {
            None => "defaults (sockets no rule selects)".to_string(),
            Some(r) => format!("rule \"{r}\""),
        };
        let _ = writeln!(s, "\n{who}, {}: {}", a.class, a.verdict.label());
        if let Some(thr) = a.threshold_ms {
            let _ = writeln!(
                s,
                "  threshold: {} = {} ({})",
                a.knob,
                fmt_ms(thr),
                if a.resets {
                    "the rule resets this class"
                } else {
                    "observed only: reported, never reset"
                }
            );
        }
        let o = &a.observed;
        let mut seen = format!(
            "{} episode(s) recovered by themselves, longest {}",
            o.episodes.count,
            fmt_ms(o.episodes.max_ms)
        );
        if o.episodes.count > 0 {
            let _ = write!(
                seen,
                ", p50 {}, p99 {}",
                fmt_ms(o.episodes.p50_ms),
                fmt_ms(o.episodes.p99_ms)
            );
        }
        if o.warnings > 0 {
            let _ = write!(
                seen,
                "; {} threshold_warning(s), longest {}",
                o.warnings,
                fmt_ms(o.warned_max_ms)
            );
        }
        let _ = writeln!(s, "  observed:  {seen}");
        let _ = writeln!(s, "  verdict:   {}", a.summary);
        if !a.write.is_empty() {
            let _ = writeln!(
                s,
                "  write:     under {}: {}   (>= 1.5 x {}, whole seconds)",
                a.section,
                a.write.join("; "),
                fmt_ms(o.episodes.max_ms)
            );
        }
        if !a.cadence.is_empty() {
            let _ = writeln!(s, "  cadence:   {}", a.cadence);
        }
    }
    if !unobserved.is_empty() {
        let list: Vec<String> = unobserved
            .iter()
            .map(|u| format!("{}/{}", u.rule, u.class))
            .collect();
        let _ = writeln!(
            s,
            "\nno recovered episodes recorded for {}: the recording cannot vouch for those \
             thresholds",
            list.join(", ")
        );
    }
    let n_unsafe = advice
        .iter()
        .filter(|a| a.verdict == Verdict::Unsafe)
        .count();
    let n_safe = advice.iter().filter(|a| a.verdict == Verdict::Safe).count();
    let _ = writeln!(s, "\nsummary: {n_unsafe} UNSAFE, {n_safe} SAFE");
    s
}

#[cfg(test)]
mod tests;
