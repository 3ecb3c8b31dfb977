use super::*;
use crate::classify::Episodes;
use crate::cli::test_tmp_dir as tmp_dir;
use crate::event::{self, CalibrationEntry, Event, StatsFields};
use std::time::SystemTime;

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
                episodes: Episodes {
                    count: *count,
                    max_ms: *max,
                    p50_ms: *p50,
                    p99_ms: *p99,
                },
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
    assert_eq!(
        (obs[0].episodes.count, obs[0].episodes.max_ms, obs[0].runs),
        (2, 900, 1)
    );
    assert_eq!(obs[1].rule.as_deref(), Some("gone"));
    assert_eq!(
        (
            obs[1].episodes.count,
            obs[1].episodes.max_ms,
            obs[1].warnings
        ),
        (0, 31_000, 1)
    );
    let ws = &obs[2];
    assert_eq!((ws.rule.as_deref(), ws.class), (Some("ws"), ZeroWindow));
    assert_eq!(ws.episodes.count, 10 + 5 + 1);
    assert_eq!(ws.runs, 3);
    assert_eq!(
        (ws.episodes.max_ms, ws.episodes.p50_ms, ws.episodes.p99_ms),
        (12_500, 2500, 12_000)
    );
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
        episodes: Episodes {
            count: 7,
            max_ms,
            p50_ms: max_ms / 4,
            p99_ms: max_ms,
        },
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

#[test]
fn policy_check_exit_codes_and_output() {
    let dir = tmp_dir("check");
    let pol = dir.join("p.toml");
    std::fs::write(&pol, POLICY).unwrap();
    // Valid, no events.
    let out = check_output(&pol, None, false, false, false);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("ws") && out.stderr.is_empty());
    // Invalid: errors on stderr only, exit 2.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "tick = \"1s\"\nbogus_key = 1\n").unwrap();
    let out = check_output(&bad, None, false, false, false);
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("bad.toml:2:"), "{}", out.stderr);
    let out = check_output(&bad, Some(&dir.join("missing.ndjson")), true, false, false);
    assert_eq!((out.code, out.stdout.as_str()), (2, ""));
    // Unreadable / empty events file: exit 1.
    let out = check_output(&pol, Some(&dir.join("missing.ndjson")), false, false, false);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot read the events file"),
        "{}",
        out.stderr
    );
    let junk = dir.join("junk.ndjson");
    std::fs::write(&junk, "hello\nworld\n").unwrap();
    let out = check_output(&pol, Some(&junk), false, false, false);
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
    let out = check_output(&pol, Some(&ev), false, false, false);
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
    let out = check_output(&pol, Some(&ev), true, false, false);
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
    let out = check_output(&pol, Some(&ev), false, false, false);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("SAFE"));
    // No calibration data at all: exit 0 with a note.
    std::fs::write(&ev, line(&started())).unwrap();
    let out = check_output(&pol, Some(&ev), false, false, false);
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
    let out = check_output(&pol, None, false, false, false);
    assert_eq!((out.code, out.warnings), (0, 2), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stderr);
    assert!(lines[0].starts_with(&format!(
        "{}:2:1: warning: protect_ports = []",
        pol.display()
    )));
    assert!(lines[1].starts_with(&format!("{}:3:1: warning: rule `ws` resets", pol.display())));
    assert!(out.stdout.contains("ws"), "the rules are still printed");
    let out = check_output(&pol, None, true, false, false);
    assert_eq!(out.code, 0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["warnings"].as_array().unwrap().len(), 2);
    assert_eq!(v["warnings"][0]["line"], 2);
    assert!(v["warnings"][1]["hint"]
        .as_str()
        .unwrap()
        .contains("zero_window_after = \"30s\""));
    // --strict: exit 4; a clean policy stays 0.
    assert_eq!(
        check_output(&pol, None, false, true, false).code,
        EXIT_WARNINGS
    );
    let clean = dir.join("clean.toml");
    std::fs::write(&clean, POLICY).unwrap();
    let out = check_output(&clean, None, false, true, false);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    let _ = std::fs::remove_dir_all(&dir);
}
