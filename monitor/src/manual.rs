//! Operator commands besides the agent loop: `tcpstall policy check` and `tcpstall reset`.
//!
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
//!
//! # `tcpstall reset`
//!
//! Resets one TCP connection by hand, behind the agent's guards, and prints what happened as
//! tcpstall events (NDJSON on stdout; human-readable notes on stderr):
//!
//! ```text
//! tcpstall reset --cookie 81234                       # a cookie from a tcpstall event
//! tcpstall reset --cookie 0x13d52                     # `ss -e` prints it as sk:13d52
//! tcpstall reset --local 10.0.0.5:8000 --remote 10.0.9.7:51234 [--cookie N]
//!                [--netns 4026532201 | --netns /run/netns/NAME]
//!                [--policy FILE] [--dry-run]
//! ```
//!
//! The socket is looked up with a `sock_diag` dump in its network namespace (`--netns`, or
//! by default every namespace: tcpstall's own, `/run/netns/*` and each distinct
//! `/proc/*/ns/net`). Then, in this order:
//!
//! 1. a port `[guards] protect_ports` of `--policy` protects (default: 22; by direction: our
//!    service on a listed local port, our outgoing connections to a listed remote port) →
//!    `reset_skipped`, guard `protected_port`;
//! 2. a socket with nothing queued to send (or not a connection, e.g. `LISTEN`) is not
//!    wedged → `reset_skipped`, guard `not_stalled_anymore`: tcpstall only resets sockets
//!    with data queued (use `ss -K` for anything else);
//! 3. `max_resets_per_minute = 0` in `--policy` → `reset_skipped`, guard `rate_limit`;
//! 4. an orphan (the application closed it) on a kernel where the orphan-reset self-test
//!    fails → `reset_skipped`, guard `orphan_unsafe`;
//! 5. `--dry-run` → `reset_skipped`, guard `dry_run`;
//! 6. otherwise the socket is re-read and destroyed by cookie and 4-tuple in its namespace
//!    (`SOCK_DESTROY`, as `ss -K`): `socket_reset`, or `reset_failed` with the errno and what
//!    it means. The application sees `ECONNABORTED`; the peer gets a RST.
//!
//! Events carry `rule: "manual"`, `action: "reset"`, the class the socket's `tcp_info`
//! suggests (`zero_window`: peer window 0 with data queued; `no_ack`: data in flight with
//! retransmits, backoff or lost segments; otherwise `slow_drain`), `stalled_for_ms` = time
//! since the last ACK, no process identity, and evidence zeros with the reason
//! "manual reset by operator".
//!
//! Exit codes: `0` reset done (with `--dry-run`: it would be reset); `1` refused by a guard,
//! no such socket, ambiguous 4-tuple, or the reset failed; `2` usage error (bad arguments or
//! an invalid `--policy`).

use crate::classify::{StallClass, Thresholds};
use crate::event::{self, Event, EventWriter, EvidenceFields, SkipGuard, SocketFields};
use crate::policy::{format_duration, Action, Policy};
use crate::reset::{self, Destroyer, NetnsRef, ResetError, Search, Target, TcpDiag};
use clap::{ArgGroup, Args};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

// =========================================================================================
// policy check
// =========================================================================================

/// Exit code: everything fine.
pub const EXIT_OK: u8 = 0;
/// Exit code: refused, not found, failed; for `policy check`: events file unusable.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage error / invalid policy.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of `policy check --events`: at least one threshold is UNSAFE.
pub const EXIT_UNSAFE: u8 = 3;
/// Exit code of `policy check --strict`: the policy is valid but has warnings.
pub const EXIT_WARNINGS: u8 = 4;

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
const DEFAULTS_LABEL: &str = "(defaults)";
/// Longest line accepted from an events file; longer lines are skipped.
const MAX_LINE: usize = 1 << 20;
/// Skipped lines whose reason is kept for the report.
const SKIP_EXAMPLES: usize = 3;
/// Policy limit for a threshold (see the policy module).
const MAX_THRESHOLD_MS: u64 = 24 * 3600 * 1000;
/// Recommended thresholds are at least this multiple of the longest recovery.
const RECOMMEND_FACTOR_NUM: u64 = 3;
const RECOMMEND_FACTOR_DEN: u64 = 2;

/// `tcpstall policy check FILE [--events FILE] [--json] [--strict]`; see the module
/// documentation for the output and exit codes.
pub fn policy_check(file: &Path, events: Option<&Path>, json: bool, strict: bool) -> ExitCode {
    let out = check_output(file, events, json, strict);
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

/// The whole `policy check` command as a function of its arguments.
pub fn check_output(file: &Path, events: Option<&Path>, json: bool, strict: bool) -> CheckOutput {
    let mut out = CheckOutput::default();
    let policy = match Policy::load(file) {
        Ok(p) => p,
        Err(e) => {
            out.stderr = format!("{e}\n");
            out.code = EXIT_USAGE;
            return out;
        }
    };
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
    let warnings = policy.warning_lines();
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

/// Key of the aggregation: rule name (`None` = policy defaults) and class.
type Key = (Option<String>, StallClass);

/// One `stats.calibration` row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Row {
    count: u64,
    max_ms: u64,
    p50_ms: u64,
    p99_ms: u64,
}

/// Rows of finished agent runs, combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Combined {
    count: u64,
    max_ms: u64,
    p50_ms: u64,
    p99_ms: u64,
    runs: u32,
}

impl Combined {
    fn add(&mut self, r: &Row) {
        self.count += r.count;
        self.max_ms = self.max_ms.max(r.max_ms);
        self.p50_ms = self.p50_ms.max(r.p50_ms);
        self.p99_ms = self.p99_ms.max(r.p99_ms);
        self.runs += 1;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Warnings {
    count: u64,
    max_observed_ms: u64,
    would_reset: bool,
}

/// Calibration evidence for one (rule, class) gathered from a recording: pauses that ended
/// by themselves, without any action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// Rule name; `None` = sockets no rule selected (policy defaults).
    pub rule: Option<String>,
    /// Stall class.
    pub class: StallClass,
    /// Recovered episodes (summed over agent runs).
    pub count: u64,
    /// Longest recovered episode, ms (calibration rows and threshold warnings).
    pub max_ms: u64,
    /// Median episode, ms (the largest per-run median when the recording spans runs).
    pub p50_ms: u64,
    /// 99th percentile episode, ms (the largest per-run value across runs).
    pub p99_ms: u64,
    /// Agent runs that contributed calibration rows.
    pub runs: u32,
    /// `threshold_warning` events.
    pub warnings: u64,
    /// Longest `observed_ms` of those warnings.
    pub warned_max_ms: u64,
    /// Whether any warning said enforcement would have reset the socket.
    pub warned_would_reset: bool,
}

/// An event stream recorded by `tcpstall run`, aggregated for threshold advice.
///
/// Feed it lines ([`Recording::push_line`]) or parsed, valid events
/// ([`Recording::push_event`]); read the result with [`Recording::observed`].
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// Lines read (including blank and skipped ones).
    pub lines: u64,
    /// Valid tcpstall events.
    pub events: u64,
    /// Non-blank lines that are not valid tcpstall events.
    pub skipped: u64,
    /// The first few skipped lines: `line N: why`.
    pub skip_examples: Vec<String>,
    /// `agent_started` events seen.
    pub agent_starts: u64,
    /// `stats` events seen.
    pub stats_events: u64,
    finished: BTreeMap<Key, Combined>,
    current: BTreeMap<Key, Row>,
    warnings: BTreeMap<Key, Warnings>,
}

fn class_from_str(s: &str) -> Option<StallClass> {
    StallClass::ALL.iter().copied().find(|c| c.as_str() == s)
}

fn rule_key(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .filter(|s| *s != DEFAULTS_LABEL)
        .map(str::to_string)
}

impl Recording {
    /// Account for one raw line (without or with its trailing newline), 1-based `line_no`.
    pub fn push_line(&mut self, line_no: u64, raw: &[u8]) {
        self.lines += 1;
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(_) => return self.skip(line_no, "not UTF-8 text".into()),
        };
        let v: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.skip(line_no, format!("not JSON ({e})")),
        };
        if let Err(e) = event::validate(&v) {
            return self.skip(line_no, format!("not a tcpstall event ({e})"));
        }
        self.push_event(&v);
    }

    fn skip(&mut self, line_no: u64, why: String) {
        self.skipped += 1;
        if self.skip_examples.len() < SKIP_EXAMPLES {
            self.skip_examples.push(format!("line {line_no}: {why}"));
        }
    }

    /// A new agent run: fold the current run's cumulative rows into the finished total.
    fn end_run(&mut self) {
        for (k, row) in std::mem::take(&mut self.current) {
            self.finished.entry(k).or_default().add(&row);
        }
    }

    /// Account for one event that passed [`event::validate`].
    pub fn push_event(&mut self, v: &serde_json::Value) {
        self.events += 1;
        match v.get("event").and_then(|e| e.as_str()) {
            Some("agent_started") => {
                self.agent_starts += 1;
                self.end_run();
            }
            Some("stats") => {
                self.stats_events += 1;
                let rows: Vec<(Key, Row)> = v
                    .get("calibration")
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|e| {
                        let class = class_from_str(e.get("class")?.as_str()?)?;
                        let rule = e.get("rule").and_then(rule_key);
                        let n = |f: &str| e.get(f).and_then(|x| x.as_u64()).unwrap_or(0);
                        Some((
                            (rule, class),
                            Row {
                                count: n("count"),
                                max_ms: n("max_ms"),
                                p50_ms: n("p50_ms"),
                                p99_ms: n("p99_ms"),
                            },
                        ))
                    })
                    .collect();
                // Rows are cumulative within a run; a count going down means the agent
                // restarted and its agent_started line is not in the recording.
                let restarted = rows
                    .iter()
                    .any(|(k, r)| self.current.get(k).is_some_and(|old| r.count < old.count));
                if restarted {
                    self.end_run();
                }
                for (k, r) in rows {
                    self.current.insert(k, r);
                }
            }
            Some("threshold_warning") => {
                let Some(class) = v
                    .get("class")
                    .and_then(|c| c.as_str())
                    .and_then(class_from_str)
                else {
                    return;
                };
                let rule = v.get("rule").and_then(rule_key);
                let w = self.warnings.entry((rule, class)).or_default();
                w.count += 1;
                let observed = v.get("observed_ms").and_then(|x| x.as_u64()).unwrap_or(0);
                w.max_observed_ms = w.max_observed_ms.max(observed);
                w.would_reset |= v
                    .get("would_reset")
                    .and_then(|x| x.as_bool())
                    .unwrap_or(false);
            }
            _ => {}
        }
    }

    /// Everything observed per (rule, class), sorted by rule (defaults first) and class.
    pub fn observed(&self) -> Vec<Observed> {
        let mut all = self.finished.clone();
        for (k, row) in &self.current {
            all.entry(k.clone()).or_default().add(row);
        }
        let mut keys: Vec<Key> = all.keys().chain(self.warnings.keys()).cloned().collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let c = all.get(&k).copied().unwrap_or_default();
                let w = self.warnings.get(&k).copied().unwrap_or_default();
                Observed {
                    rule: k.0,
                    class: k.1,
                    count: c.count,
                    max_ms: c.max_ms.max(w.max_observed_ms),
                    p50_ms: c.p50_ms,
                    p99_ms: c.p99_ms,
                    runs: c.runs,
                    warnings: w.count,
                    warned_max_ms: w.max_observed_ms,
                    warned_would_reset: w.would_reset,
                }
            })
            .collect()
    }

    fn summary_json(&self, path: &Path) -> serde_json::Value {
        serde_json::json!({
            "file": path.display().to_string(),
            "lines": self.lines,
            "events": self.events,
            "skipped": self.skipped,
            "skip_examples": self.skip_examples,
            "agent_starts": self.agent_starts,
            "stats_events": self.stats_events,
        })
    }
}

/// Read a recorded NDJSON event stream. Lines longer than 1 MiB are skipped.
pub fn read_recording(path: &Path) -> io::Result<Recording> {
    let file = std::fs::File::open(path)?;
    read_recording_from(BufReader::new(file))
}

/// [`read_recording`] over any reader.
pub fn read_recording_from(mut r: impl BufRead) -> io::Result<Recording> {
    let mut rec = Recording::default();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(rec);
        }
        line_no += 1;
        if n == MAX_LINE && buf.last() != Some(&b'\n') {
            // Discard the rest of the over-long line.
            loop {
                let chunk = r.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        r.consume(i + 1);
                        break;
                    }
                    None => {
                        let len = chunk.len();
                        r.consume(len);
                    }
                }
            }
            rec.lines += 1;
            rec.skip(line_no, format!("longer than {MAX_LINE} bytes"));
            continue;
        }
        rec.push_line(line_no, &buf);
    }
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

use crate::classify::fmt_ms;

fn fmt_factor(f: f64) -> String {
    if f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

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
                        fmt_ms(o.max_ms)
                    ),
                };
            }
        },
    };
    let thr = ms_of(thresholds.threshold_for(o.class));
    let max = o.max_ms;
    let margin = (max > 0 && thr > 0).then(|| thr as f64 / max as f64);
    let cadence = cadence_note(o.class, thresholds, max);
    let acts = if resets {
        "would have reset it"
    } else {
        "would have reported it as stalled (this class is observed only, nothing is reset)"
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
        return Advice {
            rule: o.rule.clone(),
            class: o.class,
            knob,
            threshold_ms: Some(thr),
            resets,
            observed: o.clone(),
            verdict: Verdict::Safe,
            margin,
            recommended_ms: None,
            section,
            write: Vec::new(),
            cadence,
            summary,
        };
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
    Advice {
        rule: o.rule.clone(),
        class: o.class,
        knob,
        threshold_ms: Some(thr),
        resets,
        observed: o.clone(),
        verdict: Verdict::Unsafe,
        margin,
        recommended_ms: Some(rec),
        section,
        write,
        cadence,
        summary,
    }
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
            o.count,
            fmt_ms(o.max_ms)
        );
        if o.count > 0 {
            let _ = write!(seen, ", p50 {}, p99 {}", fmt_ms(o.p50_ms), fmt_ms(o.p99_ms));
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
                fmt_ms(o.max_ms)
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

// =========================================================================================
// reset
// =========================================================================================

/// `--help` epilogue of `tcpstall reset`.
pub const RESET_HELP: &str = "\
Guards, in order: a protected port (--policy [guards] protect_ports, default 22) refuses; a \
socket with nothing queued to send is not wedged and is refused (tcpstall only resets \
sockets with data queued; use `ss -K` for anything else); max_resets_per_minute = 0 \
refuses; an orphan (its application closed it) is refused where destroying orphans is not safe \
on this kernel (a self-test decides); --dry-run stops here. Otherwise the socket is destroyed by cookie and 4-tuple in \
its network namespace. Events (NDJSON) go to stdout, notes to stderr.

Exit codes:
  0  reset done (with --dry-run: it would be reset)
  1  refused by a guard, no such socket, ambiguous 4-tuple, or the reset failed
  2  usage error (bad arguments or an invalid --policy)";

/// Arguments of `tcpstall reset`.
#[derive(Args, Clone, Debug, Default, PartialEq)]
#[command(
    group(ArgGroup::new("socket").required(true).multiple(true).args(["cookie", "local"])),
    after_help = RESET_HELP
)]
pub struct ResetArgs {
    /// Socket cookie: decimal as in tcpstall events, or hex as `ss -e` prints it
    /// (`sk:13d52`; write `0x13d52` or `sk:13d52`).
    #[arg(long, value_parser = parse_cookie, value_name = "N")]
    pub cookie: Option<u64>,
    /// Local address of the connection, `IP:PORT` (`[IPv6]:PORT`). Needs --remote.
    #[arg(long, requires = "remote", value_name = "IP:PORT")]
    pub local: Option<SocketAddr>,
    /// Remote address of the connection, `IP:PORT` (`[IPv6]:PORT`). Needs --local.
    #[arg(long, requires = "local", value_name = "IP:PORT")]
    pub remote: Option<SocketAddr>,
    /// Network namespace to look in: an inode (`4026532201`, `net:[4026532201]`) or a
    /// namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`). Default: every namespace
    /// (tcpstall's own, /run/netns/*, each distinct /proc/*/ns/net).
    #[arg(long, value_name = "INODE|PATH")]
    pub netns: Option<String>,
    /// Policy file whose `[guards]` apply (default guards: protect port 22).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Run every check and report what would happen (`reset_skipped`, guard `dry_run`)
    /// without resetting.
    #[arg(long)]
    pub dry_run: bool,
}

/// Parse a socket cookie: decimal, `0x` hex, or `sk:` hex (as `ss -e` prints it).
pub fn parse_cookie(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(h) = t.strip_prefix("sk:") {
        (h, 16)
    } else {
        (t, 10)
    };
    let v = u64::from_str_radix(digits, radix).map_err(|e| {
        format!(
            "{s:?} is not a socket cookie ({e}); write it in decimal as tcpstall events \
             print it, or as hex with 0x / sk: as `ss -e` prints it"
        )
    })?;
    if v == 0 || v == u64::MAX {
        return Err(format!(
            "{s:?} is not a socket cookie: cookies are never 0 (or all ones)"
        ));
    }
    Ok(v)
}

/// Where to look for the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsArg {
    /// A namespace inode, resolved when searching.
    Inode(u32),
    /// A namespace file, checked to be a network namespace.
    File(NetnsRef),
}

/// Parse `--netns`: an inode (`4026532201`, `net:[4026532201]`) or a namespace file.
pub fn parse_netns_arg(s: &str) -> Result<NetnsArg, String> {
    let t = s.trim();
    let inode = t
        .strip_prefix("net:[")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(t);
    if !inode.is_empty() && inode.bytes().all(|b| b.is_ascii_digit()) {
        return match inode.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!(
                "--netns {s}: not a namespace inode (1..4294967295); write the number \
                 `readlink /proc/PID/ns/net` prints, or a file like /run/netns/NAME"
            )),
            Ok(n) => Ok(NetnsArg::Inode(n)),
        };
    }
    reset::netns_at(Path::new(t))
        .map(NetnsArg::File)
        .map_err(|e| format!("--netns {s}: {}", e.meaning))
}

/// A validated `tcpstall reset` request.
#[derive(Clone, Debug, PartialEq)]
pub struct ResetRequest {
    /// Socket cookie, if given.
    pub cookie: Option<u64>,
    /// (local, remote), if given.
    pub tuple: Option<(SocketAddr, SocketAddr)>,
    /// The namespace to search; `None` = every reachable namespace.
    pub netns: Option<NetnsArg>,
    /// Guards (and where they came from, for messages).
    pub policy: Policy,
    /// Report only.
    pub dry_run: bool,
}

/// A usage error: message for stderr; exit code [`EXIT_USAGE`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

fn check_endpoint(flag: &str, a: SocketAddr) -> Result<(), UsageError> {
    if a.port() == 0 {
        return Err(UsageError(format!(
            "error: {flag} {a}: port 0 is not a connection's port; copy the address from \
             `ss -tn` or from the tcpstall event"
        )));
    }
    if a.ip().is_unspecified() {
        return Err(UsageError(format!(
            "error: {flag} {a}: an unspecified address names a listening socket, not a \
             connection; tcpstall resets connections: copy both addresses from `ss -tn`"
        )));
    }
    Ok(())
}

fn is_v4ish(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
    }
}

impl ResetRequest {
    /// Validate the arguments beyond what clap checks and load `--policy`.
    pub fn from_args(args: &ResetArgs) -> Result<ResetRequest, UsageError> {
        if let Some(c) = args.cookie {
            if c == 0 || c == u64::MAX {
                return Err(UsageError(format!(
                    "error: --cookie {c} is not a socket cookie (cookies are never 0 or all ones)"
                )));
            }
        }
        let tuple = match (args.local, args.remote) {
            (Some(l), Some(r)) => {
                check_endpoint("--local", l)?;
                check_endpoint("--remote", r)?;
                if is_v4ish(l.ip()) != is_v4ish(r.ip()) {
                    return Err(UsageError(format!(
                        "error: --local {l} and --remote {r} mix IPv4 and IPv6; a connection \
                         has both ends in one family (IPv4 peers of an IPv6 socket are \
                         written ::ffff:a.b.c.d or plain a.b.c.d on both sides)"
                    )));
                }
                Some((l, r))
            }
            (None, None) => None,
            _ => {
                return Err(UsageError(
                    "error: --local and --remote go together: a connection is named by both \
                     ends"
                        .to_string(),
                ))
            }
        };
        if args.cookie.is_none() && tuple.is_none() {
            return Err(UsageError(
                "error: name the socket with --cookie N, or --local IP:PORT --remote IP:PORT"
                    .to_string(),
            ));
        }
        let netns = match &args.netns {
            None => None,
            Some(s) => Some(parse_netns_arg(s).map_err(|e| UsageError(format!("error: {e}")))?),
        };
        let policy = match &args.policy {
            None => Policy::default(),
            Some(p) => Policy::load(p).map_err(|e| UsageError(e.to_string()))?,
        };
        Ok(ResetRequest {
            cookie: args.cookie,
            tuple,
            netns,
            policy,
            dry_run: args.dry_run,
        })
    }

    /// The socket in words, for messages.
    fn describe(&self) -> String {
        match (self.tuple, self.cookie) {
            (Some((l, r)), Some(c)) => format!("{l} -> {r} with cookie {c}"),
            (Some((l, r)), None) => format!("{l} -> {r}"),
            (None, Some(c)) => format!("with cookie {c}"),
            (None, None) => "?".to_string(),
        }
    }
}

/// What `tcpstall reset` did.
#[derive(Debug)]
pub struct ResetOutcome {
    /// Events for stdout, in order.
    pub events: Vec<Event>,
    /// Notes for stderr, in order.
    pub notes: Vec<String>,
    /// Exit code.
    pub code: u8,
}

impl ResetOutcome {
    fn refused(notes: Vec<String>) -> ResetOutcome {
        ResetOutcome {
            events: Vec::new(),
            notes,
            code: EXIT_FAILED,
        }
    }
}

/// Whether the socket has data queued to send: a non-empty send queue, and (when the
/// kernel sent `tcp_info`) unacknowledged segments or unsent bytes.
pub fn has_queued(d: &TcpDiag) -> bool {
    d.send_q > 0 && (d.tcp_info_len == 0 || d.unacked > 0 || d.notsent_bytes > 0)
}

/// The stall class the socket's `tcp_info` suggests: `zero_window` when the peer advertises
/// a zero window and data is queued, `no_ack` when data is in flight and being
/// retransmitted (or backed off, or lost), `slow_drain` otherwise.
pub fn signature_class(d: &TcpDiag) -> StallClass {
    if d.has_snd_wnd() && d.snd_wnd == 0 && has_queued(d) {
        StallClass::ZeroWindow
    } else if d.unacked > 0 && (d.backoff > 0 || d.retransmits > 0 || d.lost > 0) {
        StallClass::NoAck
    } else {
        StallClass::SlowDrain
    }
}

/// TCP states in which a connection can hold data it cannot deliver.
fn resettable_state(state: u8) -> bool {
    // ESTABLISHED, FIN-WAIT-1, CLOSE-WAIT, LAST-ACK, CLOSING
    matches!(state, 1 | 4 | 8 | 9 | 11)
}

/// The socket object of a manual event.
pub fn manual_socket_fields(t: &Target, d: &TcpDiag) -> SocketFields {
    let queued = u64::from(d.send_q);
    SocketFields {
        cookie: d.cookie,
        netns: t.netns,
        family: if i32::from(d.family) == libc::AF_INET6 {
            event::Family::Inet6
        } else {
            event::Family::Inet
        },
        local: d.local,
        remote: d.remote,
        pid: None,
        comm: None,
        cgroup_id: None,
        cgroup: None,
        container_id: None,
        container_runtime: None,
        pod_uid: None,
        pod_namespace: None,
        pod_name: None,
        class: signature_class(d),
        queued_bytes: queued,
        unacked_bytes: if d.tcp_info_len > 0 {
            queued.saturating_sub(u64::from(d.notsent_bytes))
        } else {
            queued
        },
        snd_wnd: d.snd_wnd,
        retransmits: u32::from(d.retransmits),
        stalled_for_ms: u64::from(d.last_ack_recv_ms),
        rule: Some("manual".to_string()),
        action: event::Action::Reset,
        evidence: EvidenceFields {
            recovered_episodes: 0,
            longest_gap_ms: 0,
            bytes_acked_last_window: 0,
            effective_threshold_ms: 0,
            threshold_reason: "manual reset by operator".to_string(),
        },
        recv_unread: u64::from(d.recv_q),
    }
}

fn where_searched(spaces: &[NetnsRef], explicit: bool, s: &Search) -> String {
    let mut w = if explicit {
        match spaces.first() {
            Some(ns) => format!("in network namespace {ns}"),
            None => "in the given network namespace".to_string(),
        }
    } else {
        format!("in any network namespace (searched {})", s.searched)
    };
    if !s.failed.is_empty() {
        let (ns, e) = &s.failed[0];
        let _ = write!(
            w,
            "; {} namespace(s) could not be searched, e.g. {ns}: {} {}",
            s.failed.len(),
            reset::errno_name(e.errno),
            e.meaning
        );
    }
    w
}

/// Carry out a validated request: find the socket, apply the guards, reset it. Pure in the
/// sense that it prints nothing; [`reset`] prints the outcome.
pub fn execute(req: &ResetRequest) -> ResetOutcome {
    let (spaces, explicit) = match &req.netns {
        None => (reset::all_netns(), false),
        Some(NetnsArg::File(ns)) => (vec![ns.clone()], true),
        Some(NetnsArg::Inode(ino)) => match reset::netns_by_inode(*ino) {
            Ok(ns) => (vec![ns], true),
            Err(e) => {
                return ResetOutcome::refused(vec![format!(
                    "error: no TCP socket {}: {}",
                    req.describe(),
                    e.meaning
                )])
            }
        },
    };
    let search = match (req.tuple, req.cookie) {
        (Some((l, r)), _) => reset::find_sockets_in(&spaces, false, |d| {
            reset::same_endpoint(d.local, l) && reset::same_endpoint(d.remote, r)
        }),
        (None, Some(c)) => reset::find_sockets_in(&spaces, true, |d| d.cookie == c),
        (None, None) => {
            return ResetOutcome {
                events: Vec::new(),
                notes: vec!["error: name the socket with --cookie or --local/--remote".into()],
                code: EXIT_USAGE,
            }
        }
    };
    let mut found: Vec<&(Target, TcpDiag)> = search.found.iter().collect();
    if let (Some(c), Some(_)) = (req.cookie, req.tuple) {
        let others: Vec<u64> = found
            .iter()
            .map(|(t, _)| t.cookie)
            .filter(|x| *x != c)
            .collect();
        found.retain(|(t, _)| t.cookie == c);
        if found.is_empty() && !others.is_empty() {
            return ResetOutcome::refused(vec![format!(
                "error: no TCP socket {} {}: that 4-tuple now belongs to cookie {} (a newer \
                 connection); nothing was reset. Check the new connection before acting on it",
                req.describe(),
                where_searched(&spaces, explicit, &search),
                others
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )]);
        }
    }
    let (target, diag) = match found.as_slice() {
        [] => {
            let hint = if search.searched == 0 && !search.failed.is_empty() {
                " Run as root to search other namespaces."
            } else if req.tuple.is_some() {
                " Check the addresses with `ss -tn` (local first), or pass --cookie from the \
                 tcpstall event."
            } else {
                " The connection is closed, or the cookie is mistyped (tcpstall events print \
                 it in decimal, `ss -e` as sk:HEX)."
            };
            return ResetOutcome::refused(vec![format!(
                "error: no TCP socket {} {}.{hint}",
                req.describe(),
                where_searched(&spaces, explicit, &search)
            )]);
        }
        [one] => (one.0.clone(), one.1.clone()),
        many => {
            let mut msg = format!(
                "error: {} sockets match {}; nothing was reset. Add --cookie or --netns to \
                 pick one:",
                many.len(),
                req.describe()
            );
            for (t, d) in many {
                let _ = write!(
                    msg,
                    "\n  --cookie {} --netns {}  ({} {} -> {}, send queue {} bytes)",
                    t.cookie,
                    t.netns,
                    d.state_name(),
                    d.local,
                    d.remote,
                    d.send_q
                );
            }
            return ResetOutcome::refused(vec![msg]);
        }
    };
    let ns = spaces
        .iter()
        .find(|n| n.ino == target.netns)
        .cloned()
        .expect("a found socket's namespace was searched");
    guard_and_reset(req, &ns, target, diag)
}

fn skipped(t: &Target, d: &TcpDiag, guard: SkipGuard, detail: String, code: u8) -> ResetOutcome {
    ResetOutcome {
        notes: vec![format!(
            "{}: {} -> {} (cookie {}, netns {}) not reset: {detail}",
            if code == EXIT_OK {
                "dry run"
            } else {
                "refused"
            },
            d.local,
            d.remote,
            d.cookie,
            t.netns
        )],
        events: vec![Event::ResetSkipped {
            socket: manual_socket_fields(t, d),
            guard,
            detail,
        }],
        code,
    }
}

/// Why a found socket must not be reset (guard and detail), if it must not.
fn not_wedged(d: &TcpDiag) -> Option<String> {
    if !resettable_state(d.state) {
        return Some(format!(
            "the socket is in state {}, not a connection with data queued; tcpstall only \
             resets sockets with data queued (use `ss -K` for anything else)",
            d.state_name()
        ));
    }
    if !has_queued(d) {
        return Some(format!(
            "nothing is queued to send (send queue {} bytes): the connection is idle, not \
             wedged; tcpstall only resets sockets with data queued (use `ss -K` for anything \
             else)",
            d.send_q
        ));
    }
    None
}

fn guard_and_reset(req: &ResetRequest, ns: &NetnsRef, target: Target, d: TcpDiag) -> ResetOutcome {
    let (lp, rp) = (d.local.port(), d.remote.port());
    let mut destroyer = Destroyer::new();
    let attached = destroyer.attach_netns(ns);
    // Direction matters only for a protected remote port (see guards::protected).
    let listener = if req.policy.guards.protect_ports.contains(&rp) && attached.is_ok() {
        crate::agent::local_listener(&mut destroyer, &target)
    } else {
        None
    };
    if let Some(why) = req.policy.is_protected(lp, rp, listener) {
        let source = match &req.policy.source {
            Some(p) => format!("[guards] protect_ports of {}", p.display()),
            None => {
                "the default guards (protect_ports = [22]; pass --policy to use yours)".to_string()
            }
        };
        return skipped(
            &target,
            &d,
            SkipGuard::ProtectedPort,
            format!("{why}, protected by {source}; tcpstall never resets it"),
            EXIT_FAILED,
        );
    }
    if let Some(why) = not_wedged(&d) {
        return skipped(&target, &d, SkipGuard::NotStalledAnymore, why, EXIT_FAILED);
    }
    if req.policy.guards.max_resets_per_minute == 0 {
        return skipped(
            &target,
            &d,
            SkipGuard::RateLimit,
            "max_resets_per_minute = 0 in the policy disables resets".to_string(),
            EXIT_FAILED,
        );
    }
    if d.inode == 0 {
        // An orphan (its application closed it): safe to destroy only where the start-up
        // self-test of the agent would say so; the same test, run now.
        let orphan = crate::reset::orphan_probe();
        if !orphan.safe {
            return skipped(
                &target,
                &d,
                SkipGuard::OrphanUnsafe,
                format!(
                    "the application already closed this socket (an orphan the kernel \
                     finishes on its own), and on this kernel destroying an orphan is not safe: \
                     {}",
                    orphan.detail
                ),
                EXIT_FAILED,
            );
        }
    }
    if req.dry_run {
        return skipped(
            &target,
            &d,
            SkipGuard::DryRun,
            format!(
                "--dry-run: would have reset it ({} bytes queued, class {})",
                d.send_q,
                signature_class(&d)
            ),
            EXIT_OK,
        );
    }
    let failed = |d: &TcpDiag, e: ResetError| ResetOutcome {
        notes: vec![format!(
            "error: resetting {} -> {} (cookie {}, netns {}) failed: {e}",
            d.local, d.remote, d.cookie, target.netns
        )],
        events: vec![Event::ResetFailed {
            socket: manual_socket_fields(&target, d),
            errno: e.errno,
            error: reset::errno_name(e.errno).to_string(),
            meaning: e.meaning.clone(),
            retry_in_ms: None,
        }],
        code: EXIT_FAILED,
    };
    if let Err(e) = attached {
        return failed(&d, e);
    }
    // Re-verify right before acting: still there (same cookie and 4-tuple), still queued.
    let fresh = match destroyer.lookup(&target) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return skipped(
                &target,
                &d,
                SkipGuard::NotStalledAnymore,
                "the socket closed before the reset; nothing to do".to_string(),
                EXIT_FAILED,
            )
        }
        Err(e) => return failed(&d, e),
    };
    if let Some(why) = not_wedged(&fresh) {
        return skipped(
            &target,
            &fresh,
            SkipGuard::NotStalledAnymore,
            format!("it drained before the reset: {why}"),
            EXIT_FAILED,
        );
    }
    let t0 = Instant::now();
    match destroyer.destroy(&target) {
        Ok(()) => ResetOutcome {
            notes: vec![format!(
                "reset {} -> {} (cookie {}, netns {}): {} queued bytes dropped; the \
                 application sees ECONNABORTED, the peer a RST",
                fresh.local, fresh.remote, fresh.cookie, target.netns, fresh.send_q
            )],
            events: vec![Event::SocketReset {
                socket: manual_socket_fields(&target, &fresh),
                bytes_still_queued: u64::from(fresh.send_q),
                reset_latency_us: t0.elapsed().as_micros() as u64,
            }],
            code: EXIT_OK,
        },
        Err(e) => failed(&fresh, e),
    }
}

/// `tcpstall reset ...`; see the module documentation.
pub fn reset(args: ResetArgs) -> ExitCode {
    let req = match ResetRequest::from_args(&args) {
        Ok(r) => r,
        Err(UsageError(msg)) => {
            eprintln!("{msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let out = execute(&req);
    let mut w = EventWriter::stdout();
    for ev in &out.events {
        if let Err(e) = w.write(ev) {
            eprintln!("error: {e}");
        }
    }
    for n in &out.notes {
        eprintln!("{n}");
    }
    ExitCode::from(out.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CalibrationEntry, StatsFields};
    use crate::reset::test_support::*;
    use clap::Parser;
    use std::os::fd::AsRawFd;
    use std::time::SystemTime;

    // ---- policy check: aggregation and advice ----

    const POLICY: &str = r#"
[defaults]
zero_window_after = "30s"
no_ack_after = "30s"

[[rule]]
name = "ws"
local_ports = [8000]
classes = ["zero_window", "no_ack"]
action = "reset"
zero_window_after = "10s"
no_ack_after = "12s"
slow_drain_window = "12s"
recv_backlog_after = "12s"
ceiling = "15s"

[[rule]]
name = "db"
remote_ports = [5432]
action = "observe"
no_ack_after = "20s"
"#;

    fn policy() -> Policy {
        Policy::parse(POLICY, "test.toml").unwrap()
    }

    fn line(ev: &Event) -> String {
        ev.to_json_line(SystemTime::now())
    }

    fn started() -> Event {
        Event::AgentStarted {
            version: "0.1.0".into(),
            pid: 1,
            kernel: "6.18".into(),
            hooks: vec![],
            degraded: vec![],
            socket_key: "cookie".into(),
            offsets_source: "btf".into(),
            mode: event::Mode::Observe,
            reset_path: event::ResetPath {
                works: true,
                detail: "ok".into(),
            },
            orphan_reset: event::OrphanReset {
                safe: true,
                detail: "ok".into(),
            },
            policy: None,
            tick_ms: 1000,
            max_sockets: 1024,
            state: event::StateReport {
                adopted: false,
                restored: false,
                detail: "started fresh".into(),
            },
        }
    }

    /// (rule, class, count, max_ms, p50_ms, p99_ms)
    type CalRow<'a> = (Option<&'a str>, StallClass, u64, u64, u64, u64);

    fn stats(rows: &[CalRow<'_>]) -> Event {
        Event::Stats(StatsFields {
            calibration: rows
                .iter()
                .map(|(rule, class, count, max, p50, p99)| CalibrationEntry {
                    rule: rule.map(str::to_string),
                    class: *class,
                    count: *count,
                    max_ms: *max,
                    p50_ms: *p50,
                    p99_ms: *p99,
                })
                .collect(),
            ..StatsFields::default()
        })
    }

    fn warning(rule: Option<&str>, class: StallClass, threshold: u64, observed: u64) -> Event {
        Event::ThresholdWarning {
            rule: rule.map(str::to_string),
            class,
            threshold_ms: threshold,
            observed_ms: observed,
            cookie: 42,
            would_reset: rule.is_some(),
            advice: "raise it".into(),
        }
    }

    fn recording(lines: &[String]) -> Recording {
        let text = lines.join("\n") + "\n";
        read_recording_from(text.as_bytes()).unwrap()
    }

    use StallClass::{NoAck, SlowDrain, ZeroWindow};

    #[test]
    fn last_calibration_row_per_run_and_warnings_are_aggregated() {
        let rec = recording(&[
            line(&started()),
            line(&stats(&[(Some("ws"), ZeroWindow, 3, 4000, 1000, 4000)])),
            line(&warning(Some("ws"), ZeroWindow, 10_000, 12_500)),
            // Cumulative: the later row replaces the earlier one within a run.
            line(&stats(&[
                (Some("ws"), ZeroWindow, 10, 12_500, 2000, 12_000),
                (None, NoAck, 2, 900, 500, 900),
            ])),
            "not json at all".into(),
            r#"{"schema":1,"event":"bogus","ts":"2026-01-01T00:00:00.000Z"}"#.into(),
            String::new(),
            // A second run (agent restarted).
            line(&started()),
            line(&stats(&[(Some("ws"), ZeroWindow, 5, 3000, 2500, 3000)])),
            // A restart whose agent_started line is missing: the count goes down.
            line(&stats(&[(Some("ws"), ZeroWindow, 1, 1000, 1000, 1000)])),
            line(&warning(Some("gone"), SlowDrain, 30_000, 31_000)),
        ]);
        assert_eq!((rec.lines, rec.events, rec.skipped), (11, 8, 2));
        assert_eq!(rec.agent_starts, 2);
        assert_eq!(rec.skip_examples.len(), 2);
        assert!(
            rec.skip_examples[0].starts_with("line 5: not JSON"),
            "{:?}",
            rec.skip_examples
        );
        assert!(
            rec.skip_examples[1].contains("unknown event type"),
            "{:?}",
            rec.skip_examples
        );
        let obs = rec.observed();
        assert_eq!(obs.len(), 3, "{obs:?}");
        // Sorted: defaults (None) first.
        assert_eq!((obs[0].rule.as_deref(), obs[0].class), (None, NoAck));
        assert_eq!((obs[0].count, obs[0].max_ms, obs[0].runs), (2, 900, 1));
        assert_eq!(obs[1].rule.as_deref(), Some("gone"));
        assert_eq!(
            (obs[1].count, obs[1].max_ms, obs[1].warnings),
            (0, 31_000, 1)
        );
        let ws = &obs[2];
        assert_eq!((ws.rule.as_deref(), ws.class), (Some("ws"), ZeroWindow));
        assert_eq!(ws.count, 10 + 5 + 1);
        assert_eq!(ws.runs, 3);
        assert_eq!((ws.max_ms, ws.p50_ms, ws.p99_ms), (12_500, 2500, 12_000));
        assert_eq!(
            (ws.warnings, ws.warned_max_ms, ws.warned_would_reset),
            (1, 12_500, true)
        );
    }

    #[test]
    fn over_long_and_non_utf8_lines_are_skipped() {
        let mut data = vec![b'x'; MAX_LINE + 10];
        data.push(b'\n');
        data.extend_from_slice(&[0xff, 0xfe, b'\n']);
        data.extend_from_slice(line(&started()).as_bytes());
        data.extend_from_slice(b"\r\n");
        let rec = read_recording_from(&data[..]).unwrap();
        assert_eq!((rec.lines, rec.events, rec.skipped), (3, 1, 2));
        assert!(rec.skip_examples[0].contains("longer than"));
        assert!(rec.skip_examples[1].contains("UTF-8"));
    }

    fn observed(rule: Option<&str>, class: StallClass, max_ms: u64) -> Observed {
        Observed {
            rule: rule.map(str::to_string),
            class,
            count: 7,
            max_ms,
            p50_ms: max_ms / 4,
            p99_ms: max_ms,
            runs: 1,
            warnings: 0,
            warned_max_ms: 0,
            warned_would_reset: false,
        }
    }

    #[test]
    fn recommended_threshold_rounds_up_whole_seconds_at_1_5x() {
        assert_eq!(recommended_threshold_ms(14_200), 22_000); // 21.3s -> 22s
        assert_eq!(recommended_threshold_ms(10_000), 15_000);
        assert_eq!(recommended_threshold_ms(999), 2_000); // 1.4985s -> 2s
        assert_eq!(recommended_threshold_ms(0), 1_000);
        assert_eq!(recommended_threshold_ms(1), 1_000);
        assert_eq!(recommended_threshold_ms(u64::MAX / 2), MAX_THRESHOLD_MS);
        for max in [1u64, 333, 1000, 1001, 6_667, 59_999, 3_600_000] {
            let r = recommended_threshold_ms(max);
            assert!(
                r.is_multiple_of(1000) && r > max && 2 * r >= 3 * max,
                "{max} -> {r}"
            );
        }
    }

    #[test]
    fn advice_safe_unsafe_and_unknown() {
        let p = policy();
        let adv = advise(
            &p,
            &[
                observed(Some("ws"), ZeroWindow, 14_200),
                observed(Some("ws"), NoAck, 4_800),
                observed(None, ZeroWindow, 31_000),
                observed(Some("db"), NoAck, 20_000),
                observed(Some("old"), NoAck, 5_000),
            ],
        );
        // ws/zero_window: 10s <= 14.2s -> UNSAFE, 22s recommended, above the 15s ceiling.
        let a = &adv[0];
        assert_eq!(a.verdict, Verdict::Unsafe);
        assert_eq!(
            (a.threshold_ms, a.recommended_ms),
            (Some(10_000), Some(22_000))
        );
        assert!(a.resets);
        assert_eq!(a.section, "[[rule]] name = \"ws\"");
        assert_eq!(
            a.write,
            vec!["zero_window_after = \"22s\"", "ceiling = \"22s\""]
        );
        assert!(a.summary.contains("would have reset it"), "{}", a.summary);
        // Cadence: max(10s, min(15s, 2 x 14.2s)) = 15s > 14.2s: the first pause is the risk.
        assert!(
            a.cadence.contains("= 15s after recovering from 14.2s"),
            "{}",
            a.cadence
        );
        assert!(a.cadence.contains("first long pause"), "{}", a.cadence);
        // ws/no_ack: 12s > 4.8s -> SAFE with margin 2.5.
        let b = &adv[1];
        assert_eq!(b.verdict, Verdict::Safe);
        assert_eq!(b.margin, Some(2.5));
        assert!(b.write.is_empty() && b.recommended_ms.is_none());
        assert!(b.summary.contains("2.5x"), "{}", b.summary);
        // defaults/zero_window: 30s <= 31s -> UNSAFE, observe only, under [defaults]; the
        // recommendation 47s stays below the 5m ceiling.
        let c = &adv[2];
        assert_eq!(c.verdict, Verdict::Unsafe);
        assert!(!c.resets);
        assert_eq!(c.section, "[defaults]");
        assert_eq!(c.write, vec!["zero_window_after = \"47s\""]);
        assert!(c.summary.contains("observed only"), "{}", c.summary);
        assert!(c.summary.contains("inherit"), "{}", c.summary);
        // db/no_ack: threshold equal to the observed recovery is UNSAFE (<=).
        let d = &adv[3];
        assert_eq!(d.verdict, Verdict::Unsafe);
        assert!(!d.resets, "db only observes");
        assert_eq!(d.write, vec!["no_ack_after = \"30s\""]);
        // A rule the policy does not have.
        let e = &adv[4];
        assert_eq!(e.verdict, Verdict::UnknownRule);
        assert!(e.threshold_ms.is_none() && e.write.is_empty());
        assert!(e.summary.contains("does not define"), "{}", e.summary);
        // Reset classes without any observation.
        let un = unobserved(&p, &[observed(Some("ws"), ZeroWindow, 1)]);
        assert_eq!(
            un,
            vec![Unobserved {
                rule: "ws".into(),
                class: NoAck
            }]
        );
    }

    #[test]
    fn cadence_note_reports_ceiling_trap_and_classes_without_cadence() {
        let t = Thresholds {
            zero_window_after: Duration::from_secs(10),
            ceiling: Duration::from_secs(12),
            ..Thresholds::default()
        };
        // 2 x 14s = 28s, capped at 12s < 14s: sockets with history are acted on too.
        let n = cadence_note(ZeroWindow, &t, 14_000);
        assert!(n.contains("= 12s after recovering from 14s"), "{n}");
        assert!(n.contains("raise ceiling"), "{n}");
        assert!(cadence_note(SlowDrain, &t, 14_000).starts_with("no cadence"));
        assert!(cadence_note(StallClass::RecvBacklog, &t, 1).starts_with("no cadence"));
        // Safe case: no warning tail.
        let n = cadence_note(ZeroWindow, &t, 3_000);
        assert!(n.ends_with("judged at the plain 10s"), "{n}");
    }

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tcpstall-manual-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn policy_check_exit_codes_and_output() {
        let dir = tmp_dir("check");
        let pol = dir.join("p.toml");
        std::fs::write(&pol, POLICY).unwrap();
        // Valid, no events.
        let out = check_output(&pol, None, false, false);
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("ws") && out.stderr.is_empty());
        // Invalid: errors on stderr only, exit 2.
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "tick = \"1s\"\nbogus_key = 1\n").unwrap();
        let out = check_output(&bad, None, false, false);
        assert_eq!(out.code, 2);
        assert!(out.stdout.is_empty());
        assert!(out.stderr.contains("bad.toml:2:"), "{}", out.stderr);
        let out = check_output(&bad, Some(&dir.join("missing.ndjson")), true, false);
        assert_eq!((out.code, out.stdout.as_str()), (2, ""));
        // Unreadable / empty events file: exit 1.
        let out = check_output(&pol, Some(&dir.join("missing.ndjson")), false, false);
        assert_eq!(out.code, 1);
        assert!(
            out.stderr.contains("cannot read the events file"),
            "{}",
            out.stderr
        );
        let junk = dir.join("junk.ndjson");
        std::fs::write(&junk, "hello\nworld\n").unwrap();
        let out = check_output(&pol, Some(&junk), false, false);
        assert_eq!(out.code, 1);
        assert!(
            out.stderr
                .contains("holds no tcpstall events (2 lines, 2 skipped"),
            "{}",
            out.stderr
        );
        // Unsafe recording: exit 3, text says what to write.
        let ev = dir.join("rec.ndjson");
        let lines = [
            line(&started()),
            line(&stats(&[
                (Some("ws"), ZeroWindow, 4, 14_200, 3000, 14_200),
                (Some("ws"), NoAck, 2, 1000, 800, 1000),
            ])),
            "garbage".to_string(),
        ];
        std::fs::write(&ev, lines.join("\n")).unwrap();
        let out = check_output(&pol, Some(&ev), false, false);
        assert_eq!(out.code, 3, "{}", out.stdout);
        assert!(
            out.stdout.contains("rule \"ws\", zero_window: UNSAFE"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .contains("under [[rule]] name = \"ws\": zero_window_after = \"22s\""),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("rule \"ws\", no_ack: SAFE"),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("1 line(s) skipped"), "{}", out.stdout);
        assert!(
            out.stdout.contains("summary: 1 UNSAFE, 1 SAFE"),
            "{}",
            out.stdout
        );
        // JSON: the policy plus recording/advice keys, still exit 3.
        let out = check_output(&pol, Some(&ev), true, false);
        assert_eq!(out.code, 3);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(v["rules"].is_array());
        assert_eq!(v["recording"]["skipped"], 1);
        assert_eq!(v["advice"][0]["verdict"], "unsafe");
        assert_eq!(v["advice"][0]["recommended_ms"], 22_000);
        assert_eq!(v["advice"][0]["write"][0], "zero_window_after = \"22s\"");
        assert_eq!(v["advice"][1]["verdict"], "safe");
        assert!(out.stderr.contains("1 lines skipped"), "{}", out.stderr);
        // Safe recording: exit 0.
        std::fs::write(
            &ev,
            line(&stats(&[(Some("ws"), ZeroWindow, 4, 2000, 1000, 2000)])),
        )
        .unwrap();
        let out = check_output(&pol, Some(&ev), false, false);
        assert_eq!(out.code, 0, "{}", out.stdout);
        assert!(out.stdout.contains("SAFE"));
        // No calibration data at all: exit 0 with a note.
        std::fs::write(&ev, line(&started())).unwrap();
        let out = check_output(&pol, Some(&ev), false, false);
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("no stats events"), "{}", out.stdout);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn policy_check_warns_and_strict_fails_on_warnings() {
        let dir = tmp_dir("warn");
        let pol = dir.join("w.toml");
        std::fs::write(
            &pol,
            "[guards]\nprotect_ports = []\n[[rule]]\nname = \"ws\"\nlocal_ports = [8000]\n\
             action = \"reset\"\nzero_window_after = \"2s\"\n",
        )
        .unwrap();
        let out = check_output(&pol, None, false, false);
        assert_eq!((out.code, out.warnings), (0, 2), "{}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{}", out.stderr);
        assert!(lines[0].starts_with(&format!(
            "{}:2:1: warning: protect_ports = []",
            pol.display()
        )));
        assert!(lines[1].starts_with(&format!("{}:3:1: warning: rule `ws` resets", pol.display())));
        assert!(out.stdout.contains("ws"), "the rules are still printed");
        let out = check_output(&pol, None, true, false);
        assert_eq!(out.code, 0);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["warnings"].as_array().unwrap().len(), 2);
        assert_eq!(v["warnings"][0]["line"], 2);
        assert!(v["warnings"][1]["hint"]
            .as_str()
            .unwrap()
            .contains("zero_window_after = \"30s\""));
        // --strict: exit 4; a clean policy stays 0.
        assert_eq!(check_output(&pol, None, false, true).code, EXIT_WARNINGS);
        let clean = dir.join("clean.toml");
        std::fs::write(&clean, POLICY).unwrap();
        let out = check_output(&clean, None, false, true);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""));
        let _ = std::fs::remove_dir_all(&dir);
    }

    // ---- reset: arguments ----

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ResetArgs,
    }

    fn parse(argv: &[&str]) -> Result<ResetArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("reset").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn cookie_syntax() {
        assert_eq!(parse_cookie("81234"), Ok(81234));
        assert_eq!(parse_cookie("0x13d52"), Ok(0x13d52));
        assert_eq!(parse_cookie("sk:13d52"), Ok(0x13d52));
        assert!(parse_cookie("0").unwrap_err().contains("never 0"));
        assert!(parse_cookie("0xffffffffffffffff").is_err());
        assert!(parse_cookie("13d52").unwrap_err().contains("0x"));
        assert!(parse_cookie("99999999999999999999").is_err());
        assert!(parse_cookie("").is_err());
    }

    #[test]
    fn clap_requires_a_socket_and_both_ends() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--local", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--remote", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--cookie", "x"]).is_err());
        assert!(parse(&["--local", "localhost:80", "--remote", "127.0.0.1:1"]).is_err());
        let a = parse(&["--cookie", "7"]).unwrap();
        assert_eq!((a.cookie, a.local, a.dry_run), (Some(7), None, false));
        let a = parse(&[
            "--local",
            "[::1]:80",
            "--remote",
            "[::1]:9",
            "--cookie",
            "sk:ff",
            "--dry-run",
            "--netns",
            "net:[4026531840]",
        ])
        .unwrap();
        assert_eq!(a.cookie, Some(255));
        assert_eq!(a.local, Some("[::1]:80".parse().unwrap()));
        assert!(a.dry_run);
        assert_eq!(a.netns.as_deref(), Some("net:[4026531840]"));
    }

    fn args(cookie: Option<u64>, local: Option<&str>, remote: Option<&str>) -> ResetArgs {
        ResetArgs {
            cookie,
            local: local.map(|s| s.parse().unwrap()),
            remote: remote.map(|s| s.parse().unwrap()),
            ..ResetArgs::default()
        }
    }

    #[test]
    fn request_validation() {
        let ok = ResetRequest::from_args(&args(Some(5), None, None)).unwrap();
        assert_eq!(ok.policy.guards.protect_ports, vec![22]);
        assert!(ok.netns.is_none() && ok.tuple.is_none());
        let e = |a: ResetArgs| ResetRequest::from_args(&a).unwrap_err().0;
        assert!(e(args(Some(0), None, None)).contains("never 0"));
        assert!(e(args(None, None, None)).contains("--cookie"));
        assert!(e(args(None, Some("1.2.3.4:5"), None)).contains("go together"));
        assert!(e(args(None, Some("1.2.3.4:0"), Some("1.2.3.4:5"))).contains("port 0"));
        assert!(e(args(None, Some("0.0.0.0:80"), Some("1.2.3.4:5"))).contains("listening"));
        assert!(e(args(None, Some("1.2.3.4:80"), Some("[2001:db8::1]:5"))).contains("mix"));
        // IPv4 against IPv4-mapped is one family.
        let m =
            ResetRequest::from_args(&args(None, Some("1.2.3.4:80"), Some("[::ffff:1.2.3.5]:5")))
                .unwrap();
        assert!(m.tuple.is_some());
        // --netns forms.
        let with_ns = |s: &str| {
            ResetRequest::from_args(&ResetArgs {
                netns: Some(s.to_string()),
                ..args(Some(5), None, None)
            })
        };
        assert_eq!(
            with_ns("4026531840").unwrap().netns,
            Some(NetnsArg::Inode(4026531840))
        );
        assert_eq!(
            with_ns("net:[12]").unwrap().netns,
            Some(NetnsArg::Inode(12))
        );
        assert!(with_ns("0").unwrap_err().0.contains("inode"));
        assert!(with_ns("99999999999").unwrap_err().0.contains("inode"));
        match with_ns("/proc/self/ns/net").unwrap().netns {
            Some(NetnsArg::File(r)) => assert_eq!(r.ino, reset::current_netns().unwrap()),
            other => panic!("{other:?}"),
        }
        assert!(with_ns("/etc/hostname")
            .unwrap_err()
            .0
            .contains("not a network namespace"));
        // --policy: guards loaded; invalid file is a usage error with its problem lines.
        let dir = tmp_dir("req");
        let p = dir.join("g.toml");
        std::fs::write(&p, "[guards]\nprotect_ports = [22, 8080]\n").unwrap();
        let r = ResetRequest::from_args(&ResetArgs {
            policy: Some(p.clone()),
            ..args(Some(5), None, None)
        })
        .unwrap();
        assert_eq!(r.policy.guards.protect_ports, vec![22, 8080]);
        std::fs::write(&p, "[guards]\nprotect_ports = [\"x\"]\n").unwrap();
        let msg = ResetRequest::from_args(&ResetArgs {
            policy: Some(p.clone()),
            ..args(Some(5), None, None)
        })
        .unwrap_err()
        .0;
        assert!(msg.contains("g.toml:2:"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    // ---- reset: classification and events ----

    fn diag() -> TcpDiag {
        TcpDiag {
            family: libc::AF_INET as u16,
            state: 1,
            cookie: 77,
            local: "10.0.0.1:8000".parse().unwrap(),
            remote: "10.0.0.2:50000".parse().unwrap(),
            ifindex: 0,
            uid: 0,
            inode: 1,
            timer: 0,
            timer_retrans: 0,
            timer_expires_ms: 0,
            recv_q: 3,
            send_q: 5000,
            tcp_info_len: 232,
            ca_state: 0,
            retransmits: 0,
            probes: 0,
            backoff: 0,
            rto_us: 200_000,
            snd_mss: 1448,
            unacked: 2,
            lost: 0,
            retrans: 0,
            last_data_sent_ms: 10,
            last_ack_recv_ms: 4321,
            rtt_us: 100,
            snd_cwnd: 10,
            total_retrans: 0,
            bytes_acked: 1,
            bytes_received: 0,
            bytes_sent: 0,
            bytes_retrans: 0,
            notsent_bytes: 2000,
            snd_wnd: 65535,
        }
    }

    #[test]
    fn signature_classes_and_queue() {
        let d = diag();
        assert!(has_queued(&d));
        assert_eq!(signature_class(&d), SlowDrain);
        let zw = TcpDiag {
            snd_wnd: 0,
            ..diag()
        };
        assert_eq!(signature_class(&zw), ZeroWindow);
        // snd_wnd 0 from a kernel without tcpi_snd_wnd means nothing.
        let old = TcpDiag {
            snd_wnd: 0,
            tcp_info_len: 224,
            ..diag()
        };
        assert_eq!(signature_class(&old), SlowDrain);
        for na in [
            TcpDiag {
                backoff: 3,
                ..diag()
            },
            TcpDiag {
                retransmits: 1,
                ..diag()
            },
            TcpDiag { lost: 2, ..diag() },
        ] {
            assert_eq!(signature_class(&na), NoAck);
        }
        assert_eq!(
            signature_class(&TcpDiag {
                backoff: 3,
                unacked: 0,
                ..diag()
            }),
            SlowDrain
        );
        let idle = TcpDiag {
            send_q: 0,
            unacked: 0,
            notsent_bytes: 0,
            snd_wnd: 0,
            ..diag()
        };
        assert!(!has_queued(&idle));
        assert_eq!(
            signature_class(&idle),
            SlowDrain,
            "zero window without data is not a stall"
        );
        assert!(!has_queued(&TcpDiag {
            unacked: 0,
            notsent_bytes: 0,
            ..diag()
        }));
        assert!(has_queued(&TcpDiag {
            tcp_info_len: 0,
            ..diag()
        }));
        assert!(not_wedged(&idle).unwrap().contains("ss -K"));
        let listen = TcpDiag {
            state: 10,
            ..diag()
        };
        assert!(not_wedged(&listen).unwrap().contains("LISTEN"));
        assert!(not_wedged(&diag()).is_none());
        assert!(not_wedged(&TcpDiag { state: 8, ..diag() }).is_none());
    }

    fn assert_valid(ev: &Event) -> serde_json::Value {
        let l = ev.to_json_line(SystemTime::now());
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        event::validate(&v).unwrap_or_else(|e| panic!("{e}: {l}"));
        v
    }

    #[test]
    fn manual_events_pass_the_schema() {
        let t = Target {
            cookie: 77,
            netns: 4026531840,
            family: libc::AF_INET as u16,
            local: diag().local,
            remote: diag().remote,
            pid_hint: None,
            ifindex: 0,
        };
        let f = manual_socket_fields(
            &t,
            &TcpDiag {
                retransmits: 4,
                ..diag()
            },
        );
        assert_eq!(f.rule.as_deref(), Some("manual"));
        assert_eq!(f.action, event::Action::Reset);
        assert_eq!(
            (f.queued_bytes, f.unacked_bytes, f.recv_unread),
            (5000, 3000, 3)
        );
        assert_eq!(
            (f.stalled_for_ms, f.retransmits, f.netns),
            (4321, 4, 4026531840)
        );
        assert_eq!(f.class, NoAck);
        assert_eq!(f.evidence.threshold_reason, "manual reset by operator");
        assert!(f.pid.is_none() && f.comm.is_none() && f.cgroup.is_none());
        for ev in [
            Event::SocketReset {
                socket: f.clone(),
                bytes_still_queued: 5000,
                reset_latency_us: 12,
            },
            Event::ResetFailed {
                socket: f.clone(),
                errno: libc::EPERM,
                error: "EPERM".into(),
                meaning: reset::errno_meaning(libc::EPERM),
                retry_in_ms: None,
            },
            Event::ResetSkipped {
                socket: f.clone(),
                guard: SkipGuard::DryRun,
                detail: "x".into(),
            },
        ] {
            let v = assert_valid(&ev);
            assert_eq!(v["rule"], "manual");
            assert_eq!(v["pid"], serde_json::Value::Null);
        }
        let v6 = manual_socket_fields(
            &t,
            &TcpDiag {
                family: libc::AF_INET6 as u16,
                local: "[::ffff:10.0.0.1]:8000".parse().unwrap(),
                remote: "[::ffff:10.0.0.2]:5".parse().unwrap(),
                ..diag()
            },
        );
        assert_eq!(v6.family, event::Family::Inet6);
        assert_valid(&Event::StallStarted(v6));
    }

    // ---- reset: real kernel ----

    fn request(cookie: Option<u64>) -> ResetRequest {
        ResetRequest {
            cookie,
            tuple: None,
            netns: None,
            policy: Policy::default(),
            dry_run: false,
        }
    }

    fn only_event(out: &ResetOutcome) -> serde_json::Value {
        assert_eq!(out.events.len(), 1, "{out:?}");
        assert_valid(&out.events[0])
    }

    #[test]
    fn reset_by_cookie_alone_aborts_the_blocked_writer() {
        if !require_root("reset_by_cookie_alone_aborts_the_blocked_writer") {
            return;
        }
        let w = Wedged::new(pair());
        let cookie = reset::socket_cookie(w.server.as_raw_fd()).unwrap();
        let out = execute(&request(Some(cookie)));
        assert_eq!(out.code, 0, "{out:?}");
        let v = only_event(&out);
        assert_eq!(v["event"], "socket_reset");
        assert_eq!(v["cookie"], cookie);
        assert_eq!(v["netns"], reset::current_netns().unwrap());
        assert_eq!(v["local"], w.server.local_addr().unwrap().to_string());
        assert!(v["bytes_still_queued"].as_u64().unwrap() > 0);
        assert!(v["queued_bytes"].as_u64().unwrap() > 0);
        // Loopback with a non-reading peer: zero window.
        assert_eq!(v["class"], "zero_window");
        assert!(out.notes[0].starts_with("reset "), "{:?}", out.notes);
        let err = w
            .writer_error(Duration::from_secs(1))
            .expect("blocked write() did not return within 1 s of the reset");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        // Again: the socket is gone now.
        let again = execute(&request(Some(cookie)));
        assert_eq!(again.code, 1);
        assert!(again.events.is_empty());
        assert!(
            again.notes[0].contains(&format!(
                "no TCP socket with cookie {cookie} in any network namespace (searched "
            )),
            "{:?}",
            again.notes
        );
    }

    #[test]
    fn idle_socket_is_refused() {
        if !require_root("idle_socket_is_refused") {
            return;
        }
        let (_l, mut client, mut server) = pair();
        let cookie = reset::socket_cookie(server.as_raw_fd()).unwrap();
        let out = execute(&request(Some(cookie)));
        assert_eq!(out.code, 1, "{out:?}");
        let v = only_event(&out);
        assert_eq!(
            (v["event"].as_str(), v["guard"].as_str()),
            (Some("reset_skipped"), Some("not_stalled_anymore"))
        );
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("data queued") && detail.contains("ss -K"),
            "{detail}"
        );
        // Still alive both ways.
        use std::io::{Read, Write};
        server.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        client
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        assert!(server.take_error().unwrap().is_none());
    }

    #[test]
    fn protected_port_is_refused() {
        if !require_root("protected_port_is_refused") {
            return;
        }
        let w = Wedged::new(pair());
        let port = w.server.local_addr().unwrap().port();
        let dir = tmp_dir("protect");
        let pol = dir.join("p.toml");
        std::fs::write(&pol, format!("[guards]\nprotect_ports = [22, {port}]\n")).unwrap();
        let cookie = reset::socket_cookie(w.server.as_raw_fd()).unwrap();
        let req = ResetRequest::from_args(&ResetArgs {
            policy: Some(pol),
            ..args(Some(cookie), None, None)
        })
        .unwrap();
        let out = execute(&req);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(out.code, 1, "{out:?}");
        let v = only_event(&out);
        assert_eq!(v["guard"], "protected_port");
        assert!(v["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("port {port}")));
        assert!(
            w.writer_error(Duration::from_millis(200)).is_none(),
            "writer disturbed"
        );
        assert!(w.server.take_error().unwrap().is_none());
    }

    #[test]
    fn dry_run_leaves_the_socket_alone() {
        if !require_root("dry_run_leaves_the_socket_alone") {
            return;
        }
        let w = Wedged::new(pair());
        let cookie = reset::socket_cookie(w.server.as_raw_fd()).unwrap();
        let req = ResetRequest {
            dry_run: true,
            ..request(Some(cookie))
        };
        let out = execute(&req);
        assert_eq!(out.code, 0, "{out:?}");
        let v = only_event(&out);
        assert_eq!(
            (v["event"].as_str(), v["guard"].as_str()),
            (Some("reset_skipped"), Some("dry_run"))
        );
        assert!(v["detail"].as_str().unwrap().contains("would have reset"));
        assert!(
            w.writer_error(Duration::from_millis(200)).is_none(),
            "writer disturbed"
        );
        assert!(w.server.take_error().unwrap().is_none());
        assert!(outq(&w.server) > 0);
    }

    /// A socket bound to a device is reset: the dump's interface goes into the requests.
    #[test]
    fn reset_of_device_bound_sockets() {
        if !require_root("reset_of_device_bound_sockets") {
            return;
        }
        let l = crate::reset::kernel_tests::Linked::create("mb");
        for v6 in [false, true] {
            let w = Wedged::new(if v6 { l.link_local_v6() } else { l.bound_v4() });
            let cookie = reset::socket_cookie(w.server.as_raw_fd()).unwrap();
            let out = execute(&request(Some(cookie)));
            assert_eq!(out.code, 0, "{out:?}");
            let v = only_event(&out);
            assert_eq!(v["event"], "socket_reset");
            assert_eq!(v["netns"], l.client.ino());
            let err = w
                .writer_error(Duration::from_secs(1))
                .expect("blocked write() did not return within 1 s of the reset");
            assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        }
    }

    #[test]
    fn reset_by_tuple_inside_a_created_netns() {
        if !require_root("reset_by_tuple_inside_a_created_netns") {
            return;
        }
        let ns = TestNetns::create(&format!("tcpstall-mr-{}", std::process::id()));
        let ino = ns.ino();
        let w = Wedged::new(ns.run_in(pair));
        let (l, r) = (
            w.server.local_addr().unwrap(),
            w.server.peer_addr().unwrap(),
        );
        let by_tuple = |netns: Option<&str>, dry_run: bool| {
            let a = ResetArgs {
                netns: netns.map(str::to_string),
                dry_run,
                ..args(None, Some(&l.to_string()), Some(&r.to_string()))
            };
            execute(&ResetRequest::from_args(&a).unwrap())
        };
        // Without --netns: found by searching every namespace (dry run).
        let out = by_tuple(None, true);
        assert_eq!(out.code, 0, "{out:?}");
        let v = only_event(&out);
        assert_eq!(
            (v["guard"].as_str(), v["netns"].as_u64()),
            (Some("dry_run"), Some(u64::from(ino)))
        );
        // Our own namespace does not have it.
        let own = reset::current_netns().unwrap().to_string();
        let out = by_tuple(Some(&own), false);
        assert_eq!(out.code, 1);
        assert!(
            out.notes[0].contains("in network namespace"),
            "{:?}",
            out.notes
        );
        assert!(w.writer_error(Duration::ZERO).is_none());
        // With --netns /run/netns/NAME: reset.
        let path = ns.path().display().to_string();
        let out = by_tuple(Some(&path), false);
        assert_eq!(out.code, 0, "{out:?}");
        let v = only_event(&out);
        assert_eq!(v["event"], "socket_reset");
        assert_eq!(v["netns"], ino);
        assert_eq!(
            v["cookie"],
            reset::socket_cookie(w.server.as_raw_fd()).unwrap()
        );
        let err = w
            .writer_error(Duration::from_secs(1))
            .expect("writer not aborted");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
    }

    #[test]
    fn same_tuple_in_two_namespaces_is_ambiguous_without_netns() {
        if !require_root("same_tuple_in_two_namespaces_is_ambiguous_without_netns") {
            return;
        }
        let pid = std::process::id();
        let a = TestNetns::create(&format!("tcpstall-mr-{pid}-a"));
        let b = TestNetns::create(&format!("tcpstall-mr-{pid}-b"));
        let (sp, cp) = (
            40_000 + (pid % 10_000) as u16,
            50_000 + (pid % 10_000) as u16,
        );
        let wa = Wedged::new(a.run_in(move || pair_on(sp, cp)));
        let wb = Wedged::new(b.run_in(move || pair_on(sp, cp)));
        assert_eq!(
            wa.server.local_addr().unwrap(),
            wb.server.local_addr().unwrap()
        );
        let (l, r) = (
            wa.server.local_addr().unwrap(),
            wa.server.peer_addr().unwrap(),
        );
        let req = |cookie: Option<u64>| {
            ResetRequest::from_args(&args(cookie, Some(&l.to_string()), Some(&r.to_string())))
                .unwrap()
        };
        let out = execute(&req(None));
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.events.is_empty());
        let msg = &out.notes[0];
        assert!(
            msg.contains("2 sockets match") && msg.contains("--netns"),
            "{msg}"
        );
        assert!(
            msg.contains(&a.ino().to_string()) && msg.contains(&b.ino().to_string()),
            "{msg}"
        );
        // The cookie picks one; the other keeps blocking.
        let cb = reset::socket_cookie(wb.server.as_raw_fd()).unwrap();
        let out = execute(&req(Some(cb)));
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(only_event(&out)["netns"], b.ino());
        let err = wb
            .writer_error(Duration::from_secs(1))
            .expect("b not aborted");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
        assert!(
            wa.writer_error(Duration::from_millis(100)).is_none(),
            "a disturbed"
        );
        // A wrong cookie with the right tuple names the cookie that holds it now.
        let ca = reset::socket_cookie(wa.server.as_raw_fd()).unwrap();
        let out = execute(&req(Some(ca ^ 0x4000_0000)));
        assert_eq!(out.code, 1);
        assert!(
            out.notes[0].contains(&format!("belongs to cookie {ca}")),
            "{:?}",
            out.notes
        );
    }
}
