//! Unit tests of the event types, writer, schema, validator and README rendering.

use super::*;
use serde_json::{json, Value};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn ts() -> SystemTime {
    // 2026-11-23T11:02:03.123Z
    UNIX_EPOCH + Duration::from_millis(1_795_431_723_123)
}

fn socket(full: bool) -> SocketFields {
    SocketFields {
        cookie: u64::MAX,
        netns: 4_026_531_840,
        family: if full { Family::Inet6 } else { Family::Inet },
        local: if full {
            "[fd00::1]:443".parse().unwrap()
        } else {
            "10.0.0.1:443".parse().unwrap()
        },
        remote: if full {
            "[fd00::2]:51234".parse().unwrap()
        } else {
            "10.0.0.2:51234".parse().unwrap()
        },
        pid: full.then_some(4242),
        comm: full.then(|| "nginx".to_string()),
        cgroup_id: full.then_some(7788),
        cgroup: full.then(|| "/system.slice/nginx.service".to_string()),
        container_id: full.then(|| "0123456789ab".to_string()),
        container_runtime: full.then(|| "containerd".to_string()),
        pod_uid: full.then(|| "6f2a3b1c-1d2e-4f50-8a9b-0c1d2e3f4a5b".to_string()),
        pod_namespace: full.then(|| "payments".to_string()),
        pod_name: full.then(|| "api-7d9f8".to_string()),
        class: StallClass::ZeroWindow,
        queued_bytes: 1 << 20,
        unacked_bytes: 65_536,
        snd_wnd: 0,
        retransmits: 3,
        stalled_for_ms: 30_000,
        rule: full.then(|| "web".to_string()),
        action: if full { Action::Reset } else { Action::Observe },
        evidence: Evidence {
            recovered_episodes: 2,
            longest_gap_ms: 1_500,
            bytes_acked_last_window: 0,
            effective_threshold_ms: 20_000,
            threshold_reason: "rule default".into(),
        },
        recv_unread: 0,
    }
}

/// One of every event type, with optional fields both set (`full`) and null.
fn samples(full: bool) -> Vec<Event> {
    let s = socket(full);
    vec![
        Event::AgentStarted {
            version: "0.1.0".into(),
            pid: 1234,
            kernel: "6.18.0".into(),
            hooks: vec![HookReport {
                hook: "send".into(),
                attach: Some("fentry/tcp_sendmsg_locked".into()),
                why: "tracepoint tcp_sendmsg_locked absent: fentry tcp_sendmsg_locked".into(),
            }],
            degraded: vec![],
            socket_key: "cookie".into(),
            offsets_source: "btf:/sys/kernel/btf/vmlinux".into(),
            mode: Mode::DryRun,
            reset_path: ResetPath {
                works: true,
                detail: "SOCK_DESTROY probe ok".into(),
            },
            orphan_reset: OrphanReset {
                safe: true,
                detail: "orphan destroyed cleanly".into(),
            },
            policy: full.then(|| "/etc/tcpstall/policy.toml".into()),
            tick_ms: 1000,
            max_sockets: 65_536,
            state: StateReport {
                adopted: full,
                restored: full,
                detail:
                    "adopted the kernel map pinned at /sys/fs/bpf/tcpstall/socks_v1-0_cookie_65536"
                        .into(),
            },
        },
        Event::StallStarted(s.clone()),
        Event::StallCleared(s.clone()),
        Event::StallClosed(s.clone()),
        Event::ResetIntent {
            sockets: vec![IntentSocket {
                cookie: 7,
                netns: 4_026_531_840,
                local: s.local,
                remote: s.remote,
                class: StallClass::ZeroWindow,
                rule: full.then(|| "web".into()),
            }],
        },
        Event::SocketReset {
            socket: s.clone(),
            bytes_still_queued: 4096,
            reset_latency_us: 180,
        },
        Event::ResetFailed {
            socket: s.clone(),
            errno: libc::ENOENT,
            error: "ENOENT".into(),
            meaning: "socket already gone".into(),
            retry_in_ms: full.then_some(500),
        },
        Event::ResetSkipped {
            socket: s,
            guard: SkipGuard::ProtectedPort,
            detail: "local port 22 is protected".into(),
        },
        Event::Stats(StatsFields {
            sockets_tracked: 12,
            map_capacity: 65_536,
            map_full: 0,
            map_evicted: 3,
            map_stale: 1,
            netns_cached: 2,
            partition_hold: full,
            close_notes_lost: 1,
            events_lost: 0,
            events_written: 41,
            stalls_active: 1,
            sweep_us: 250,
            map_read_us: 40,
            proc_walks: 2,
            holder_passes: 5,
            read_lookups: 3,
            progress_lookups: 4,
            cpu_ms: 40,
            bpf_run_ns: full.then_some(123_456),
            resets: ResetCounts {
                done: 1,
                failed: 1,
                skipped: 1,
                retried: 2,
            },
            calibration: if full {
                vec![CalibrationEntry {
                    rule: Some("web".into()),
                    class: StallClass::NoAck,
                    episodes: Episodes {
                        count: 5,
                        max_ms: 9_000,
                        p50_ms: 1_200,
                        p99_ms: 8_800,
                    },
                }]
            } else {
                vec![CalibrationEntry {
                    rule: None,
                    class: StallClass::RecvBacklog,
                    episodes: Episodes::default(),
                }]
            },
        }),
        Event::PartitionHold {
            state: "started".into(),
            silent_networks: 4,
            alive_networks: 0,
            networks: if full {
                vec!["10.1.0.0/24 (12 silent)".into()]
            } else {
                vec![]
            },
            resets_held: 0,
        },
        Event::MassDisconnect {
            network: "10.9.0.0/24".into(),
            silent_sockets: 3000,
        },
        Event::ThresholdWarning {
            rule: full.then(|| "web".into()),
            class: StallClass::SlowDrain,
            threshold_ms: 5_000,
            observed_ms: 60_000,
            cookie: 99,
            would_reset: full,
            advice: "raise slow_drain_after".into(),
        },
        Event::EventsLost { count: 3, total: 5 },
        Event::OutputReopened {
            output: "/var/log/tcpstall/events.ndjson".into(),
            ok: full,
            error: (!full).then(|| "cannot open ...".into()),
        },
        Event::PolicyReload {
            policy: full.then(|| "/etc/tcpstall/policy.toml".into()),
            ok: full,
            problems: if full {
                vec![]
            } else {
                vec!["p.toml:3:1: unknown key".into()]
            },
            warnings: vec![],
            mode: Mode::Enforce,
            detail: "in force from the next tick".into(),
        },
        Event::AgentStopped {
            reason: "SIGTERM".into(),
            uptime_ms: 3_600_000,
        },
    ]
}

fn line_value(ev: &Event) -> Value {
    serde_json::from_str(&ev.to_json_line(ts())).unwrap()
}

fn stall_started_value() -> Value {
    line_value(&Event::StallStarted(socket(true)))
}

#[test]
fn every_event_type_serializes_and_validates() {
    for full in [true, false] {
        let events = samples(full);
        let names: Vec<&str> = events.iter().map(Event::name).collect();
        let documented: Vec<&str> = schema().iter().map(|s| s.event.as_str()).collect();
        assert_eq!(
            names, documented,
            "samples must cover every documented event"
        );
        for ev in &events {
            let line = ev.to_json_line(ts());
            assert!(!line.contains('\n'), "{line}");
            validate_line(&line).unwrap_or_else(|e| panic!("{e}\n{line}"));
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["event"], ev.name());
            assert_eq!(v["schema"], 1);
            assert_eq!(v["ts"], "2026-11-23T11:02:03.123Z");
            assert_eq!(
                ev.socket().is_some(),
                event_schema(ev.name()).unwrap().socket
            );
        }
    }
}

#[test]
fn header_comes_first() {
    let line = Event::AgentStopped {
        reason: "x".into(),
        uptime_ms: 1,
    }
    .to_json_line(ts());
    assert_eq!(
        line,
        r#"{"schema":1,"ts":"2026-11-23T11:02:03.123Z","event":"agent_stopped","reason":"x","uptime_ms":1}"#
    );
}

#[test]
fn socket_fields_are_flattened_with_exact_values() {
    let v = line_value(&Event::SocketReset {
        socket: socket(true),
        bytes_still_queued: 7,
        reset_latency_us: 9,
    });
    assert_eq!(v["cookie"], json!(u64::MAX));
    assert_eq!(v["family"], "inet6");
    assert_eq!(v["local"], "[fd00::1]:443");
    assert_eq!(v["remote"], "[fd00::2]:51234");
    assert_eq!(v["class"], "zero_window");
    assert_eq!(v["action"], "reset");
    assert_eq!(v["evidence"]["effective_threshold_ms"], 20_000);
    assert_eq!(v["bytes_still_queued"], 7);
    assert!(v.get("socket").is_none());

    let v = line_value(&Event::StallStarted(socket(false)));
    assert_eq!(v["local"], "10.0.0.1:443");
    for k in [
        "pid",
        "comm",
        "cgroup_id",
        "cgroup",
        "container_id",
        "pod_name",
        "rule",
    ] {
        assert_eq!(v[k], Value::Null, "{k}");
    }
}

/// The values the generated schema documents for enum field `name` of `fields`.
fn documented_enum(fields: &[Field], name: &str) -> Vec<String> {
    match &fields.iter().find(|f| f.name == name).unwrap().ty {
        FieldType::Enum(values) => values.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn schema_enums_match_serde_spelling() {
    let fields_of = |event: &str| &event_schema(event).unwrap().fields;
    let classes = documented_enum(socket_fields(), "class");
    let spelled = |x: &dyn erased::Ser| x.json();
    for c in StallClass::ALL {
        assert!(classes.iter().any(|v| v == c.as_str()));
        assert_eq!(spelled(&c), c.as_str());
    }
    assert_eq!(classes.len(), StallClass::ALL.len());
    let check = |values: Vec<String>, all: Vec<(String, &str)>| {
        assert_eq!(values.len(), all.len());
        for (json, as_str) in all {
            assert_eq!(json, as_str);
            assert!(values.iter().any(|v| v == as_str), "{as_str}");
        }
    };
    check(
        documented_enum(socket_fields(), "family"),
        Family::ALL
            .iter()
            .map(|x| (spelled(x), x.as_str()))
            .collect(),
    );
    check(
        documented_enum(socket_fields(), "action"),
        Action::ALL
            .iter()
            .map(|x| (spelled(x), x.as_str()))
            .collect(),
    );
    check(
        documented_enum(fields_of("agent_started"), "mode"),
        Mode::ALL.iter().map(|x| (spelled(x), x.as_str())).collect(),
    );
    check(
        documented_enum(fields_of("reset_skipped"), "guard"),
        SkipGuard::ALL
            .iter()
            .map(|x| (spelled(x), x.as_str()))
            .collect(),
    );
}

/// Minimal object-safe wrapper to serialize heterogeneous enum values in one closure.
mod erased {
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            match serde_json::to_value(self).unwrap() {
                serde_json::Value::String(s) => s,
                other => panic!("expected string, got {other}"),
            }
        }
    }
}

#[test]
fn every_enum_value_validates() {
    for guard in SkipGuard::ALL {
        let ev = Event::ResetSkipped {
            socket: socket(true),
            guard,
            detail: String::new(),
        };
        validate(&line_value(&ev)).unwrap();
    }
    for mode in Mode::ALL {
        let mut ev = samples(true).remove(0);
        if let Event::AgentStarted { mode: m, .. } = &mut ev {
            *m = mode;
        }
        validate(&line_value(&ev)).unwrap();
    }
    for class in StallClass::ALL {
        let mut s = socket(false);
        s.class = class;
        validate(&line_value(&Event::StallCleared(s))).unwrap();
    }
}

#[test]
fn rejects_missing_field() {
    let mut v = stall_started_value();
    v.as_object_mut().unwrap().remove("queued_bytes");
    let err = validate(&v).unwrap_err();
    assert!(err.contains("missing field `queued_bytes`"), "{err}");

    let mut v = stall_started_value();
    v["evidence"]
        .as_object_mut()
        .unwrap()
        .remove("threshold_reason");
    let err = validate(&v).unwrap_err();
    assert!(
        err.contains("evidence: missing field `threshold_reason`"),
        "{err}"
    );

    for header in ["schema", "event", "ts"] {
        let mut v = stall_started_value();
        v.as_object_mut().unwrap().remove(header);
        let err = validate(&v).unwrap_err();
        assert!(err.contains(&format!("missing field `{header}`")), "{err}");
    }
}

#[test]
fn rejects_wrong_type() {
    let cases: &[(&str, Value, &str)] = &[
        ("cookie", json!("1"), "cookie: expected u64"),
        ("cookie", json!(-1), "cookie: expected u64"),
        ("cookie", json!(1.5), "cookie: expected u64"),
        (
            "netns",
            json!(u64::from(u32::MAX) + 1),
            "does not fit in u32",
        ),
        (
            "pid",
            json!("12"),
            "pid: expected u32, found a string (null also allowed)",
        ),
        (
            "comm",
            json!(5),
            "comm: expected string, found an unsigned integer (null",
        ),
        ("family", json!("unix"), "is not one of"),
        ("class", json!("ZeroWindow"), "is not one of"),
        ("local", json!("10.0.0.1"), "is not an `ip:port`"),
        ("remote", json!("fd00::2:80"), "is not an `ip:port`"),
        ("evidence", json!([]), "evidence: expected object"),
        ("action", Value::Null, "action: expected"),
    ];
    for (field, bad, expect) in cases {
        let mut v = stall_started_value();
        v[*field] = bad.clone();
        let err = validate(&v).unwrap_err();
        assert!(err.contains(expect), "{field}={bad}: {err}");
    }

    let mut v = line_value(&samples(true)[6]);
    v["errno"] = json!(i64::from(i32::MAX) + 1);
    assert!(validate(&v).unwrap_err().contains("errno"));
    v["errno"] = json!(-2);
    validate(&v).unwrap();

    let mut v = line_value(&samples(true)[0]);
    v["hooks"] = json!([{"hook": "ack", "attach": null, "why": "x"}, 3]);
    let err = validate(&v).unwrap_err();
    assert!(err.contains("hooks: [1]: expected object"), "{err}");

    let mut v = line_value(&samples(true)[8]);
    v["calibration"][0]["p99_ms"] = json!("slow");
    let err = validate(&v).unwrap_err();
    assert!(err.contains("calibration: [0]: p99_ms"), "{err}");

    let mut v = line_value(&samples(true)[0]);
    v["reset_path"]["works"] = json!("yes");
    assert!(validate(&v).unwrap_err().contains("reset_path: works"));
}

#[test]
fn rejects_unknown_event_and_bad_header() {
    let mut v = stall_started_value();
    v["event"] = json!("stall_exploded");
    assert!(validate(&v).unwrap_err().contains("unknown event type"));

    let mut v = stall_started_value();
    v["event"] = json!(3);
    assert!(validate(&v).unwrap_err().contains("event is"));

    let mut v = stall_started_value();
    v["schema"] = json!(2);
    assert!(validate(&v).unwrap_err().contains("schema is 2"));

    assert!(validate(&json!([1])).is_err());
    assert!(validate_line("{\"schema\":1,")
        .unwrap_err()
        .contains("not valid JSON"));
}

#[test]
fn rejects_extra_field() {
    let mut v = stall_started_value();
    v["debug"] = json!(true);
    let err = validate(&v).unwrap_err();
    assert!(err.contains("undocumented field `debug`"), "{err}");

    let mut v = line_value(&samples(true)[8]);
    v["resets"]["pending"] = json!(0);
    let err = validate(&v).unwrap_err();
    assert!(
        err.contains("resets: undocumented field `pending`"),
        "{err}"
    );

    // A socket field on a non-socket event is undocumented there.
    let mut v = line_value(&samples(true)[9]);
    v["cookie"] = json!(1);
    assert!(validate(&v)
        .unwrap_err()
        .contains("undocumented field `cookie`"));
}

#[test]
fn rejects_bad_ts() {
    for bad in [
        json!("2026-11-23T11:02:03Z"),
        json!("2026-11-23T11:02:03.123456Z"),
        json!("2026-11-23T11:02:03.123+00:00"),
        json!("2026-11-23 11:02:03.123Z"),
        json!("2026-13-23T11:02:03.123Z"),
        json!("2026-11-23T25:02:03.123Z"),
        json!("1969-12-31T23:59:59.999Z"),
        json!("yesterday"),
        json!(1_795_431_723_123u64),
    ] {
        let mut v = stall_started_value();
        v["ts"] = bad.clone();
        let err = validate(&v).unwrap_err();
        assert!(err.contains("ts:"), "{bad}: {err}");
    }
}

#[test]
fn ts_is_clamped_to_formattable_range() {
    let early = UNIX_EPOCH - Duration::from_secs(10);
    let line = samples(false)[9].to_json_line(early);
    assert!(
        line.contains("\"ts\":\"1970-01-01T00:00:00.000Z\""),
        "{line}"
    );
    validate_line(&line).unwrap();

    let late = UNIX_EPOCH + Duration::from_secs(MAX_FORMATTABLE_SECS + 86_400 * 400);
    let line = samples(false)[9].to_json_line(late);
    assert!(
        line.contains("\"ts\":\"9999-12-31T23:59:59.999Z\""),
        "{line}"
    );
    validate_line(&line).unwrap();
}

#[test]
fn hostile_strings_stay_on_one_line() {
    let mut s = socket(true);
    s.comm = Some("evil\n{\"event\":\"x\"}\u{0}\"".into());
    let line = Event::StallStarted(s.clone()).to_json_line(ts());
    assert!(!line.contains('\n'));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["comm"], json!(s.comm.unwrap()));
    validate(&v).unwrap();
}

#[test]
fn schema_markdown_mentions_every_event_and_field() {
    let md = schema_markdown();
    for es in schema() {
        assert!(md.contains(&format!("### `{}`", es.event)), "{}", es.event);
        for field in &es.fields {
            assert!(
                md.contains(&format!("| `{}` |", field.name)),
                "{}",
                field.name
            );
        }
    }
    for field in socket_fields().iter().chain(header_fields()) {
        assert!(
            md.contains(&format!("| `{}` |", field.name)),
            "{}",
            field.name
        );
    }
    assert!(md.contains("| `evidence.threshold_reason` |"));
    assert!(md.contains("| `calibration[].p99_ms` |"));
    assert!(md.contains("`\"not_stalled_anymore\"`"));
}

#[test]
fn schema_is_well_formed() {
    let mut names: Vec<&str> = schema().iter().map(|s| s.event.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), schema().len(), "duplicate event names");
    for es in schema() {
        let mut fields: Vec<&str> = header_fields()
            .iter()
            .chain(es.all_fields())
            .map(|f| f.name.as_str())
            .collect();
        let n = fields.len();
        fields.sort_unstable();
        fields.dedup();
        assert_eq!(fields.len(), n, "{}: duplicate field names", es.event);
    }
}

/// A sink that accepts `budget` bytes, then fails; records what it got.
#[derive(Clone)]
struct Sink {
    got: Arc<Mutex<Vec<u8>>>,
    budget: Arc<Mutex<usize>>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut budget = self.budget.lock().unwrap();
        if *budget == 0 {
            return Err(io::Error::from_raw_os_error(libc::EPIPE));
        }
        // Deliver in small chunks to exercise the short-write loop.
        let n = buf.len().min(*budget).min(7);
        *budget -= n;
        self.got.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_writes_valid_lines_and_counts_losses() {
    let sink = Sink {
        got: Arc::default(),
        budget: Arc::new(Mutex::new(usize::MAX)),
    };
    let mut w = EventWriter::new(Box::new(sink.clone()), "test sink");
    let events = samples(true);
    for ev in &events {
        w.write_at(ev, ts()).unwrap();
    }
    assert_eq!(
        (w.events_lost(), w.events_written()),
        (0, events.len() as u64)
    );

    // Fail mid-line, then fail entirely, then recover.
    *sink.budget.lock().unwrap() = 20;
    let err = w.write_at(&events[1], ts()).unwrap_err();
    assert_eq!(err.raw_os_error(), None); // wrapped with context
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    assert!(
        err.to_string().contains("stall_started event to test sink"),
        "{err}"
    );
    assert!(w.write_at(&events[2], ts()).is_err());
    assert_eq!(w.events_lost(), 2);
    *sink.budget.lock().unwrap() = usize::MAX;
    w.write(events.last().unwrap()).unwrap();
    assert_eq!(w.events_lost(), 2);
    // The recovered line, then the events_lost line.
    assert_eq!(w.events_written(), events.len() as u64 + 2);
    // Reported once.
    w.write(events.last().unwrap()).unwrap();

    let got = String::from_utf8(sink.got.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = got.split_terminator('\n').collect();
    assert_eq!(lines.len(), events.len() + 4);
    for line in &lines[..events.len()] {
        validate_line(line).unwrap();
    }
    // The broken fragment is confined to its own line; the next line is intact.
    assert!(validate_line(lines[events.len()]).is_err());
    let recovered = lines[events.len() + 1];
    validate_line(recovered).unwrap();
    assert!(recovered.contains("\"event\":\"agent_stopped\""));
    let note: Value = serde_json::from_str(lines[events.len() + 2]).unwrap();
    validate(&note).unwrap();
    assert_eq!(note["event"], "events_lost");
    assert_eq!(
        (note["count"].as_u64(), note["total"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(lines[events.len() + 3].contains("\"event\":\"agent_stopped\""));
    assert!(got.ends_with('\n'));
}

/// Counts `write` calls.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<usize>>>);

impl Write for Calls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().push(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn each_line_is_one_write() {
    let calls = Calls::default();
    let mut w = EventWriter::new(Box::new(calls.clone()), "calls");
    for ev in samples(true) {
        w.write_at(&ev, ts()).unwrap();
        let c = calls.0.lock().unwrap();
        assert_eq!(c.len(), w.events_written() as usize, "{}", ev.name());
        assert_eq!(*c.last().unwrap(), ev.to_json_line(ts()).len() + 1);
    }
}

#[test]
fn emit_never_fails_and_counts() {
    let sink = Sink {
        got: Arc::default(),
        budget: Arc::new(Mutex::new(0)),
    };
    let mut w = EventWriter::new(Box::new(sink.clone()), "closed pipe");
    for ev in samples(false) {
        w.emit(&ev);
    }
    assert_eq!(w.events_lost(), samples(false).len() as u64);
    assert_eq!(w.events_written(), 0);
    *sink.budget.lock().unwrap() = usize::MAX;
    w.emit(&samples(false)[0]);
    let got = String::from_utf8(sink.got.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    assert!(lines[1].contains("\"event\":\"events_lost\""), "{got}");
}

fn tmp(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tcpstall-event-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn writer_appends_to_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp("append");
    let path = dir.join("events.ndjson");
    for _ in 0..2 {
        let mut w = EventWriter::open(Some(&path)).unwrap();
        w.write(&samples(false)[9]).unwrap();
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "created {mode:o}: readable by others");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in lines {
        validate_line(line).unwrap();
    }

    // Reopen after a rotation: the old file keeps what was written, the new one gets
    // what follows.
    let mut w = EventWriter::open(Some(&path)).unwrap();
    let moved = dir.join("events.ndjson.1");
    std::fs::rename(&path, &moved).unwrap();
    w.write(&samples(false)[0]).unwrap();
    w.reopen().unwrap().unwrap();
    w.write(&samples(false)[1]).unwrap();
    assert_eq!(std::fs::read_to_string(&moved).unwrap().lines().count(), 3);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    assert!(EventWriter::stdout().reopen().is_none());
    std::fs::remove_dir_all(&dir).unwrap();

    let err = match EventWriter::open(Some(Path::new("/nonexistent-dir/x/events.ndjson"))) {
        Err(e) => e,
        Ok(_) => panic!("opening under a missing directory must fail"),
    };
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent-dir/x/events.ndjson"), "{msg}");
    assert!(msg.contains("--output"), "{msg}");
}

#[test]
fn output_must_be_a_regular_file() {
    let dir = tmp("refuse");
    let target = dir.join("real.ndjson");
    std::fs::write(&target, "").unwrap();
    let link = dir.join("link.ndjson");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = dir.join("dangling.ndjson");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, what) in [
        (link.as_path(), "a symbolic link"),
        (dangling.as_path(), "a symbolic link"),
        (fifo.as_path(), "a FIFO"),
        (dir.as_path(), "a directory"),
        (Path::new("/dev/null"), "a character device"),
    ] {
        let err = match EventWriter::open(Some(path)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{} accepted as output", path.display()),
        };
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(what), "{what}: {err}");
        assert!(err.contains("omit --output"), "{err}");
    }
    // Nothing was created through the dangling link.
    assert!(!dir.join("nowhere").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn schema_is_generated_from_the_types() {
    let root = json_schema();
    let variants = root.as_value()["oneOf"].as_array().unwrap();
    let tags: Vec<&str> = variants
        .iter()
        .map(|v| v["properties"]["event"]["const"].as_str().unwrap())
        .collect();
    let documented: Vec<&str> = schema().iter().map(|s| s.event.as_str()).collect();
    assert_eq!(tags, documented);
    let stall_started = &variants[1]["properties"];
    assert_eq!(stall_started["local"]["format"], "socket-address");
    assert_eq!(stall_started["pid"]["type"], json!(["integer", "null"]));
    assert_eq!(stall_started["pid"]["format"], "uint32");
    let field = |fields: &[Field], name: &str| fields.iter().find(|f| f.name == name).cloned();
    assert_eq!(field(socket_fields(), "local").unwrap().ty, FieldType::Addr);
    assert_eq!(
        field(socket_fields(), "pid").unwrap().ty,
        FieldType::Nullable(Box::new(FieldType::U32))
    );
    let ts = field(header_fields(), "ts").unwrap();
    assert_eq!(ts.ty, FieldType::Timestamp);
    assert_eq!(
        ts.doc,
        "When the agent wrote the event, e.g. `2026-11-23T11:02:03.123Z`"
    );
    // Multi-line `///` comments become one line.
    assert!(!event_schema("reset_intent").unwrap().doc.contains('\n'));
}
