//! A recorded event stream (`tcpstall run` NDJSON) read and aggregated per (rule, class) for
//! `tcpstall policy check --events`: calibration rows and threshold warnings.

use super::advice::{DEFAULTS_LABEL, MAX_LINE, SKIP_EXAMPLES};
use crate::classify::{Episodes, StallClass};
use crate::event::{self, CalibrationEntry};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// Key of the aggregation: rule name (`None` = policy defaults) and class.
pub(super) type Key = (Option<String>, StallClass);

/// Rows of finished agent runs, combined: counts summed, longest and percentiles the largest
/// per run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Combined {
    pub(super) episodes: Episodes,
    pub(super) runs: u32,
}

impl Combined {
    pub(super) fn add(&mut self, r: &Episodes) {
        let e = &mut self.episodes;
        e.count += r.count;
        e.max_ms = e.max_ms.max(r.max_ms);
        e.p50_ms = e.p50_ms.max(r.p50_ms);
        e.p99_ms = e.p99_ms.max(r.p99_ms);
        self.runs += 1;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Warnings {
    pub(super) count: u64,
    pub(super) max_observed_ms: u64,
    pub(super) would_reset: bool,
}

/// Calibration evidence for one (rule, class) gathered from a recording: pauses that ended
/// by themselves, without any action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// Rule name; `None` = sockets no rule selected (policy defaults).
    pub rule: Option<String>,
    /// Stall class.
    pub class: StallClass,
    /// Recovered episodes: the count summed over agent runs, the median and 99th percentile
    /// the largest per run, the longest over calibration rows and threshold warnings.
    #[serde(flatten)]
    pub episodes: Episodes,
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
    pub(super) finished: BTreeMap<Key, Combined>,
    pub(super) current: BTreeMap<Key, Episodes>,
    pub(super) warnings: BTreeMap<Key, Warnings>,
}

pub(super) fn rule_key(v: &serde_json::Value) -> Option<String> {
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

    pub(super) fn skip(&mut self, line_no: u64, why: String) {
        self.skipped += 1;
        if self.skip_examples.len() < SKIP_EXAMPLES {
            self.skip_examples.push(format!("line {line_no}: {why}"));
        }
    }

    /// A new agent run: fold the current run's cumulative rows into the finished total.
    pub(super) fn end_run(&mut self) {
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
                let rows: Vec<(Key, Episodes)> = v
                    .get("calibration")
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|e| {
                        let e = CalibrationEntry::deserialize(e).ok()?;
                        let rule = e.rule.filter(|r| r != DEFAULTS_LABEL);
                        Some(((rule, e.class), e.episodes))
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
                let Some(class) = v.get("class").and_then(|c| StallClass::deserialize(c).ok())
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
                    episodes: Episodes {
                        max_ms: c.episodes.max_ms.max(w.max_observed_ms),
                        ..c.episodes
                    },
                    runs: c.runs,
                    warnings: w.count,
                    warned_max_ms: w.max_observed_ms,
                    warned_would_reset: w.would_reset,
                }
            })
            .collect()
    }

    pub(super) fn summary_json(&self, path: &Path) -> serde_json::Value {
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
