//! Unit tests of policy validation: the defaults, the example, every kind of problem and
//! warning with its position and hint, and loading files (selection and output are in
//! `select_tests.rs`).

use super::check::{closest, THRESHOLD_KEYS};
use super::*;
use std::path::Path;

/// Parse `src`, which must fail; returns its problems.
pub(super) fn problems(src: &str) -> Vec<Problem> {
    match Policy::parse(src, "t.toml") {
        Ok(p) => panic!("expected problems, parsed fine:\n{src}\n{p:#?}"),
        Err(e) => {
            assert_eq!(e.file, "t.toml");
            assert!(!e.problems.is_empty());
            e.problems
        }
    }
}

pub(super) fn render(ps: &[Problem]) -> String {
    PolicyError {
        file: "t.toml".into(),
        problems: ps.to_vec(),
    }
    .to_string()
}

/// `src` has exactly one problem, at `line`, whose message contains `msg` and whose hint
/// contains `hint`.
pub(super) fn only(src: &str, line: usize, msg: &str, hint: &str) -> Problem {
    let ps = problems(src);
    assert_eq!(ps.len(), 1, "expected one problem, got:\n{}", render(&ps));
    let p = &ps[0];
    assert_eq!(p.line, line, "wrong line:\n{}", render(&ps));
    assert!(
        p.message.contains(msg),
        "message lacks {msg:?}:\n{}",
        render(&ps)
    );
    let h = p.hint.as_deref().unwrap_or("");
    assert!(h.contains(hint), "hint lacks {hint:?}:\n{}", render(&ps));
    p.clone()
}

pub(super) fn ok(src: &str) -> Policy {
    Policy::parse(src, "t.toml").unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
}

pub(super) fn sock(local: &str, remote: &str) -> SocketIdentity<'static> {
    SocketIdentity {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        comm: None,
        cgroup_path: None,
        netns: 4026531840,
        pod_namespace: None,
        pod_name: None,
    }
}

#[test]
fn kubernetes_namespace_and_pod_prefix_select_and_validate() {
    let p = ok(
        "[[rule]]\nname = \"pay\"\nk8s_namespace = [\"payments\"]\npod_prefix = [\"api-\"]\n\
                    [[rule]]\nname = \"ns\"\nk8s_namespace = [\"payments\", \"shop\"]\n",
    );
    let base = sock("10.0.0.1:8000", "10.0.0.2:40000");
    let id = |ns, pod| SocketIdentity {
        pod_namespace: ns,
        pod_name: pod,
        ..base
    };
    let name = |id: &SocketIdentity<'_>| p.select(id).rule.map(|r| r.name.clone());
    assert_eq!(
        name(&id(Some("payments"), Some("api-7d9f8"))).as_deref(),
        Some("pay")
    );
    assert_eq!(
        name(&id(Some("payments"), Some("worker-1"))).as_deref(),
        Some("ns")
    );
    assert_eq!(name(&id(Some("shop"), None)).as_deref(), Some("ns"));
    assert_eq!(
        name(&id(None, Some("api-1"))),
        None,
        "unknown pod never matches"
    );
    assert_eq!(name(&id(Some("other"), Some("api-1"))), None);
    assert!(p
        .describe()
        .contains("k8s_namespace payments and pod_prefix api-"));
    only(
        "[[rule]]\nname = \"a\"\nk8s_namespace = [\"Payments_1\"]\n",
        3,
        "`Payments_1` is not a Kubernetes namespace",
        "\"payments1\"",
    );
    only(
        "[[rule]]\nname = \"a\"\npod_prefix = [\"\"]\n",
        3,
        "is not a Kubernetes pod name prefix",
        "",
    );
    // A broader namespace rule first shadows a narrower one.
    only(
            "[[rule]]\nname = \"a\"\nk8s_namespace = [\"x\"]\n[[rule]]\nname = \"b\"\nk8s_namespace = [\"x\"]\npod_prefix = [\"api\"]\n",
            4,
            "can never match",
            "",
        );
}

// ----- defaults ------------------------------------------------------------------

#[test]
fn defaults_without_a_file() {
    let p = Policy::default();
    assert_eq!(p.tick, Duration::from_secs(1));
    assert_eq!(p.defaults, Thresholds::default());
    assert_eq!(p.defaults.zero_window_after, Duration::from_secs(30));
    assert_eq!(p.defaults.ceiling, Duration::from_secs(300));
    assert_eq!(p.guards.protect_ports, vec![22]);
    assert_eq!(p.guards.max_resets_per_minute, 60);
    assert!(p.rules.is_empty());
    assert!(p.source.is_none());

    let s = p.select(&sock("10.0.0.1:8000", "10.0.0.2:40000"));
    assert!(s.rule.is_none());
    assert_eq!(s.action, Action::Observe);
    assert!(s.classes.is_empty());
    assert_eq!(s.thresholds, &p.defaults);
    for c in StallClass::ALL {
        assert!(!s.resets(c));
    }
    assert!(p.is_protected(22, 40000, Some(true)).is_some());
    assert!(p.is_protected(40000, 22, Some(false)).is_some());
    assert!(p.is_protected(40000, 22, None).is_some());
    // A client connecting to our service from source port 22 is not protected.
    assert!(p.is_protected(8000, 22, Some(true)).is_none());
    assert!(p.is_protected(8000, 40000, None).is_none());
}

#[test]
fn empty_and_comment_only_files_are_the_defaults() {
    assert_eq!(ok(""), Policy::default());
    assert_eq!(ok("# nothing here\n\n"), Policy::default());
    assert_eq!(ok("[defaults]\n[guards]\n"), Policy::default());
}

// ----- the example -----------------------------------------------------------------

#[test]
fn example_policy_parses_and_means_what_it_says() {
    let p = ok(EXAMPLE_POLICY);
    assert_eq!(p.tick, Duration::from_secs(1));
    assert_eq!(p.defaults, Thresholds::default());
    assert_eq!(p.guards, Guards::default());
    let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["granian-websocket", "sse-dead-clients", "postgres-watch"]
    );

    let ws = &p.rules[0];
    assert_eq!(ws.action, Action::Reset);
    assert_eq!(ws.classes, [StallClass::ZeroWindow, StallClass::NoAck]);
    assert_eq!(ws.thresholds.zero_window_after, Duration::from_secs(20));
    assert_eq!(
        ws.thresholds.no_ack_after,
        Duration::from_secs(30),
        "inherited"
    );
    assert_eq!(ws.thresholds.cadence_factor, 3.0);
    assert_eq!(ws.thresholds.ceiling, Duration::from_secs(120));
    assert_eq!(
        ws.line,
        EXAMPLE_POLICY
            .lines()
            .position(|l| l == "[[rule]]")
            .unwrap()
            + 1
    );

    let client = sock("10.0.0.1:8000", "198.51.100.7:51000");
    let s = p.select(&client);
    assert_eq!(s.rule.map(|r| r.name.as_str()), Some("granian-websocket"));
    assert!(s.resets(StallClass::ZeroWindow));
    assert!(s.resets(StallClass::NoAck));
    assert!(!s.resets(StallClass::SlowDrain));

    let mut sse = sock("10.0.0.1:8443", "198.51.100.7:51000");
    assert!(p.select(&sse).rule.is_none(), "cgroup unknown: no rule");
    sse.cgroup_path = Some("/system.slice/mcp-gateway.service");
    let s = p.select(&sse);
    assert_eq!(s.rule.unwrap().name, "sse-dead-clients");
    assert!(s.resets(StallClass::NoAck));
    assert!(!s.resets(StallClass::ZeroWindow));

    let db = sock("10.0.0.1:40000", "10.20.3.4:5432");
    let s = p.select(&db);
    assert_eq!(s.rule.unwrap().name, "postgres-watch");
    assert_eq!(s.action, Action::Observe);
    assert_eq!(s.thresholds.no_ack_after, Duration::from_secs(10));
    assert!(!s.resets(StallClass::NoAck));

    let other = sock("10.0.0.1:40000", "10.30.3.4:5432");
    assert!(p.select(&other).rule.is_none());
}

// ----- validation: every kind of problem --------------------------------------------

#[test]
fn unknown_key_suggests_the_closest_known_key() {
    let p = only(
        "[defaults]\nzero_windw_after = \"30s\"\n",
        2,
        "unknown key `zero_windw_after` in [defaults]",
        "zero_window_after",
    );
    assert_eq!(p.col, 1);
    assert_eq!(p.hint.as_deref(), Some("zero_window_after"));
    only(
        "tick = \"1s\"\n\n[guards]\nmax_resets_per_min = 5\n",
        4,
        "in [guards]",
        "max_resets_per_minute",
    );
    only(
        "[[rules]]\nname = \"a\"\nlocal_ports = [1]\n",
        1,
        "unknown key `rules` at the top level",
        "rule",
    );
    only(
        "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nzero-window-after = \"20s\"\n",
        4,
        "unknown key `zero-window-after` in [[rule]]",
        "zero_window_after",
    );
    // Known elsewhere: say where it belongs.
    only(
        "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nprotect_ports = [22]\n",
        4,
        "belongs in [guards]",
        "protect_ports under [guards]",
    );
    only(
        "[defaults]\nlocal_ports = [8000]\n",
        2,
        "selectors belong in a [[rule]]",
        "local_ports under [[rule]]",
    );
    only(
        "zero_window_after = \"30s\"\n",
        1,
        "thresholds belong in [defaults]",
        "under [defaults]",
    );
    only(
        "action = \"reset\"\n",
        1,
        "it belongs in a [[rule]]",
        "action under [[rule]]",
    );
    only(
        "[defaults]\nname = \"x\"\n",
        2,
        "it belongs in a [[rule]]",
        "name under [[rule]]",
    );
    only(
        "[guards]\ntick = \"1s\"\n",
        2,
        "it belongs at the top of the file",
        "tick at the top of the file",
    );
    only(
        "[guards]\nceiling = \"1m\"\n",
        2,
        "thresholds belong in [defaults] or a [[rule]]",
        "ceiling under [defaults]",
    );
    // Nothing close: list what is allowed.
    only(
        "[guards]\nfrobnicate = 1\n",
        2,
        "unknown key `frobnicate`",
        "one of protect_ports, max_resets_per_minute",
    );
    // Unknown sub-table.
    only(
        "[defaults.extra]\nx = 1\n",
        1,
        "unknown key `extra` in [defaults]",
        "one of",
    );
}

#[test]
fn bad_durations() {
    let p = only(
        "[defaults]\nno_ack_after = \"30 seconds\"\n",
        2,
        "`30 seconds` is not a duration",
        "no_ack_after = \"30s\"",
    );
    assert_eq!(p.col, 16);
    only(
        "[defaults]\nceiling = \"2 minutes\"\n",
        2,
        "not a duration",
        "ceiling = \"2m\"",
    );
    only(
        "[defaults]\nzero_window_after = \"1.5s\"\n",
        2,
        "not a duration",
        "zero_window_after = \"1s500ms\"",
    );
    only(
        "[defaults]\nzero_window_after = \"soon\"\n",
        2,
        "not a duration",
        "zero_window_after = \"30s\"",
    );
    only("tick = 5\n", 1, "has no unit", "tick = \"5s\"");
    only("tick = 0.25\n", 1, "has no unit", "tick = \"250ms\"");
    only(
        "tick = \"5ms\"\n",
        1,
        "between 10ms and 1m",
        "tick = \"10ms\"",
    );
    only("tick = \"2m\"\n", 1, "out of range", "tick = \"1m\"");
    only(
        "[defaults]\nno_ack_after = \"0s\"\n",
        2,
        "between 1s and 24h",
        "no_ack_after = \"1s\"",
    );
    only(
        "tick = true\n",
        1,
        "must be a duration string, not a boolean",
        "tick = \"30s\"",
    );
    only(
        "tick = 1979-05-27\n",
        1,
        "not a date/time",
        "tick = \"30s\"",
    );
}

#[test]
fn bad_rates() {
    only(
        "[defaults]\nslow_drain_floor = \"1 KB/s\"\n",
        2,
        "`1 KB/s` is not a rate",
        "slow_drain_floor = \"1KiB/s\"",
    );
    only(
        "[defaults]\nslow_drain_floor = \"2MiB\"\n",
        2,
        "not a rate",
        "slow_drain_floor = \"2MiB/s\"",
    );
    only(
        "[defaults]\nslow_drain_floor = \"1.5KiB/s\"\n",
        2,
        "not a rate",
        "slow_drain_floor = \"1536B/s\"",
    );
    only(
        "[defaults]\nslow_drain_floor = 2048\n",
        2,
        "has no unit",
        "slow_drain_floor = \"2KiB/s\"",
    );
    only(
        "[defaults]\nslow_drain_floor = \"fast\"\n",
        2,
        "not a rate",
        "slow_drain_floor = \"1KiB/s\"",
    );
    assert_eq!(
        ok("[defaults]\nslow_drain_floor = \"0B/s\"\n")
            .defaults
            .slow_drain_floor_bps,
        0
    );
}

#[test]
fn bad_cidrs() {
    let rule =
        |c: &str| format!("[[rule]]\nname = \"a\"\nremote_cidrs = [\"192.168.0.0/16\", \"{c}\"]\n");
    let p = only(
        &rule("10.0.0.1/8"),
        3,
        "`10.0.0.1/8` has host bits set",
        "\"10.0.0.0/8\"",
    );
    assert!(p.hint.unwrap().contains("\"10.0.0.1/32\""));
    assert_eq!(p.col, 35, "points at the bad entry, not the list");
    only(&rule("fd00::1/8"), 3, "host bits set", "\"fd00::/8\"");
    only(
        &rule("10.0.0.0/33"),
        3,
        "prefix length /33 is longer than the 32 bits",
        "\"10.0.0.0/32\"",
    );
    only(
        &rule("intranet"),
        3,
        "`intranet` is not an IP network",
        "\"10.0.0.0/8\" or \"fd00::/8\"",
    );
    // A bare address is one host.
    let p = ok(&rule("10.1.2.3"));
    assert_eq!(
        p.rules[0].selectors.remote_cidrs.as_ref().unwrap()[1].to_string(),
        "10.1.2.3/32"
    );
}

#[test]
fn bad_ports() {
    let rule = |ports: &str| format!("[[rule]]\nname = \"a\"\nlocal_ports = {ports}\n");
    only(
        &rule("[\"9100-9000\"]"),
        3,
        "port range `9100-9000` is reversed",
        "\"9000-9100\"",
    );
    only(&rule("[0]"), 3, "port 0", "a port from 1 to 65535");
    only(&rule("[\"0-100\"]"), 3, "port 0", "1 to 65535");
    only(
        &rule("[70000]"),
        3,
        "`70000` is not a TCP port",
        "1 to 65535",
    );
    only(
        &rule("[\"http\"]"),
        3,
        "`http` is not a port or port range",
        "8000 or \"9000-9100\"",
    );
    only(
        &rule("[]"),
        3,
        "`local_ports = []` matches no socket",
        "or remove the key",
    );
    only(
        &rule("8000"),
        3,
        "`local_ports` must be a list, not an integer",
        "local_ports = [8000",
    );
    let p = ok(&rule("[8000, \"9000-9100\", \"8080\"]"));
    assert_eq!(
        p.rules[0].selectors.local_ports.as_deref().unwrap(),
        [
            PortRange::single(8000),
            PortRange {
                first: 9000,
                last: 9100
            },
            PortRange::single(8080)
        ]
    );
}

#[test]
fn rule_without_selectors() {
    let p = only(
        "[[rule]]\nname = \"everything\"\naction = \"observe\"\n",
        1,
        "rule `everything` has no selectors",
        "match_all = true if you really mean every socket",
    );
    assert!(p.hint.unwrap().contains("local_ports"));
    only(
        "[[rule]]\nname = \"x\"\nmatch_all = false\n",
        1,
        "has no selectors",
        "match_all = true",
    );
    let p = ok("[[rule]]\nname = \"all\"\nmatch_all = true\n");
    assert!(p.rules[0].selectors.match_all);
    only(
        "[[rule]]\nname = \"x\"\nmatch_all = true\ncomm = [\"nginx\"]\n",
        3,
        "match_all = true and also comm",
        "either match_all = true alone",
    );
}

#[test]
fn rule_names() {
    only(
        "[[rule]]\nlocal_ports = [8000]\n",
        1,
        "rule #1 has no name",
        "name = \"rule-1\"",
    );
    only(
        "[[rule]]\nname = \"web socket!\"\nlocal_ports = [8000]\n",
        2,
        "rule name `web socket!` must be",
        "name = \"web-socket\"",
    );
    only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\n\n[[rule]]\nname = \"a\"\nlocal_ports = [9000]\n",
            6,
            "rule name `a` is already used by the rule at line 1",
            "name = \"a-2\"",
        );
}

#[test]
fn shadowed_rules() {
    only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\n\n[[rule]]\nname = \"b\"\nlocal_ports = [8000]\naction = \"reset\"\n",
            5,
            "rule `b` can never match: the earlier rule `a` (line 1) has the same selectors",
            "move rule `b` above rule `a`",
        );
    only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [\"8000-8100\"]\n\n[[rule]]\nname = \"b\"\nlocal_ports = [8050]\ncomm = [\"granian\"]\n",
            5,
            "the earlier rule `a` (line 1) selects every socket it selects",
            "narrow rule `a`",
        );
    only(
        "[[rule]]\nname = \"all\"\nmatch_all = true\n[[rule]]\nname = \"b\"\nnetns = [1]\n",
        4,
        "rule `b` can never match",
        "above rule `all`",
    );
    // Narrower first is fine: the broader rule still gets the rest.
    ok("[[rule]]\nname = \"a\"\nlocal_ports = [8000]\ncomm = [\"granian\"]\n[[rule]]\nname = \"b\"\nlocal_ports = [8000]\n");
    ok("[[rule]]\nname = \"a\"\ncgroup_prefix = [\"/a/b\"]\n[[rule]]\nname = \"b\"\ncgroup_prefix = [\"/a/bc\"]\n");
    // A covering network shadows; a partial one does not.
    only(
            "[[rule]]\nname = \"a\"\nremote_cidrs = [\"10.0.0.0/8\"]\n[[rule]]\nname = \"b\"\nremote_cidrs = [\"10.1.0.0/16\"]\n",
            4,
            "selects every socket it selects",
            "",
        );
    ok("[[rule]]\nname = \"a\"\nremote_cidrs = [\"10.1.0.0/16\"]\n[[rule]]\nname = \"b\"\nremote_cidrs = [\"10.0.0.0/8\"]\n");
}

#[test]
fn shadowing_sees_unions_of_entries() {
    // Two ports cover their range; two /25s cover their /24 (the old check missed both).
    only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [80, 81]\nremote_cidrs = [\"10.0.0.0/25\", \"10.0.0.128/25\"]\n[[rule]]\nname = \"b\"\nlocal_ports = [\"80-81\"]\nremote_cidrs = [\"10.0.0.0/24\"]\n",
            5,
            "rule `b` can never match: the earlier rule `a` (line 1) selects every socket it selects",
            "",
        );
    // The first covering rule is named, not a later one.
    let e = problems(
            "[[rule]]\nname = \"wide\"\nlocal_ports = [\"1-65535\"]\n[[rule]]\nname = \"a\"\nlocal_ports = [80]\ncomm = [\"x\"]\n[[rule]]\nname = \"b\"\nlocal_ports = [80]\ncomm = [\"x\"]\n",
        );
    assert_eq!(e.len(), 2);
    assert!(
        e.iter().all(|p| p.message.contains("earlier rule `wide`")),
        "{e:?}"
    );
}

/// `n` rules of `body(i)`, each under its own `[[rule]]` header named `r<i>`.
fn many_rules(n: usize, body: impl Fn(usize) -> String) -> String {
    (0..n)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\n{}\n", body(i)))
        .collect()
}

#[test]
fn wide_and_many_rules_are_checked_in_near_linear_time() {
    let t0 = std::time::Instant::now();
    // 200 rules over every port, told apart by process: none shadows another. The
    // per-port comparison took 1.4 s for this (optimised build).
    let wide = many_rules(200, |i| {
        format!("local_ports = [\"1-65535\"]\ncomm = [\"c{i}\"]")
    });
    assert_eq!(ok(&wide).rules.len(), 200);
    // ... and 200 that are all shadowed by the first.
    let same = many_rules(200, |_| "local_ports = [\"1-65535\"]".to_string());
    assert_eq!(
        problems(&same).len(),
        100 + 1,
        "capped at 100 problems plus a summary"
    );
    // Near 1 MiB: 12,000 rules sharing a process name, each with its own ports (every
    // earlier rule holds the later one's process name: a candidate on that selector).
    let big = many_rules(12_000, |i| {
        format!(
            "comm = [\"x\"]\nlocal_ports = [{}]\nremote_ports = [{}]",
            1 + i % 65535,
            1 + (i * 7) % 65535
        )
    });
    assert!(big.len() as u64 <= MAX_POLICY_BYTES);
    let p = ok(&big);
    assert_eq!(p.rules.len(), 12_000);
    assert!(p.warnings.is_empty(), "{:?}", p.warning_lines());
    // Generous: a debug build on a loaded 2-core machine.
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn a_pathological_overlap_stops_the_check_with_a_warning() {
    // Every rule covers every port but one: each candidate holds the next rule's first
    // port and fails only on its gap. The check gives up past its work limit.
    let src = many_rules(12_000, |i| {
        let p = 2 + i % 65_000;
        format!("local_ports = [\"1-{}\", \"{}-65535\"]", p - 1, p + 1)
    });
    let p = ok(&src);
    let w = p.warning_lines();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("were not checked for being unreachable"),
        "{}",
        w[0]
    );
}

#[test]
fn problems_are_capped_and_positioned() {
    let zeros = vec!["0"; 50_000].join(",");
    let src = format!("[[rule]]\nname = \"a\"\nlocal_ports = [{zeros}]\n");
    let e = problems(&src);
    assert_eq!(e.len(), 101);
    assert_eq!((e[0].line, e[0].col), (3, 16));
    assert_eq!((e[1].line, e[1].col), (3, 18));
    assert_eq!(e[100].line, 0);
    assert!(
        e[100].message.starts_with("49900 more not shown"),
        "{}",
        e[100].message
    );
}

#[test]
fn deep_nesting_is_a_syntax_error_not_a_crash() {
    let deep = format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let e = problems(&deep);
    assert!(e[0].message.contains("not valid TOML"), "{e:?}");
}

#[test]
fn only_regular_files_up_to_1_mib_are_read() {
    let dir = std::env::temp_dir().join(format!("tcpstall-policy-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let big = dir.join("big.toml");
    std::fs::write(&big, "#".repeat(MAX_POLICY_BYTES as usize + 1)).unwrap();
    let limit = dir.join("limit.toml");
    std::fs::write(&limit, "#".repeat(MAX_POLICY_BYTES as usize)).unwrap();
    let link = dir.join("link.toml");
    std::fs::write(dir.join("real.toml"), EXAMPLE_POLICY).unwrap();
    std::os::unix::fs::symlink(dir.join("real.toml"), &link).unwrap();
    // Each in a thread: a FIFO that blocked the reader would hang the test otherwise.
    let (tx, rx) = std::sync::mpsc::channel();
    for path in [
        fifo.clone(),
        PathBuf::from("/dev/zero"),
        dir.clone(),
        big.clone(),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let r = Policy::load(&path);
            let _ = tx.send((path, r));
        });
    }
    drop(tx);
    let mut refused = Vec::new();
    for _ in 0..4 {
        let (path, r) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("Policy::load blocked");
        let e = r.expect_err("refused");
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].line, 0);
        refused.push((path, e.to_string()));
    }
    let text = |p: &Path| refused.iter().find(|(q, _)| q == p).unwrap().1.clone();
    assert!(
        text(&fifo).contains("it is a FIFO (named pipe), not a regular file"),
        "{}",
        text(&fifo)
    );
    assert!(text(Path::new("/dev/zero")).contains("a character device"));
    assert!(text(&dir).contains("a directory"));
    let t = text(&big);
    assert!(
        t.contains("too large: 1048577 bytes, the limit is 1048576"),
        "{t}"
    );
    assert!(t.contains("write instead: a smaller policy"), "{t}");
    // Exactly the limit, and a link to a regular file, are fine.
    assert_eq!(
        Policy::load(&limit).unwrap(),
        Policy {
            source: Some(limit.clone()),
            ..Policy::default()
        }
    );
    let p = Policy::load(&link).unwrap();
    assert_eq!(p.rules.len(), 3);
    assert_eq!(p.source.as_deref(), Some(link.as_path()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Warnings of a valid policy, as lines.
fn warnings(src: &str) -> Vec<String> {
    ok(src).warning_lines()
}

#[test]
fn dangerous_settings_are_warned_about() {
    // Nothing dangerous: the defaults, the example, an observe-only policy.
    assert!(warnings("").is_empty());
    assert!(
        warnings(EXAMPLE_POLICY).is_empty(),
        "{:?}",
        warnings(EXAMPLE_POLICY)
    );
    const RESET: &str = "[[rule]]\nname = \"ws\"\nlocal_ports = [8000]\naction = \"reset\"\n";
    let one = |src: &str, line: usize, what: &str, hint: &str| {
        let w = warnings(src);
        assert_eq!(w.len(), 1, "{src}\n{w:#?}");
        assert!(w[0].starts_with(&format!("policy:{line}:")), "{}", w[0]);
        assert!(w[0].contains(": warning: "), "{}", w[0]);
        assert!(w[0].contains(what), "{what}: {}", w[0]);
        assert!(
            w[0].contains(&format!("; consider: {hint}")),
            "{hint}: {}",
            w[0]
        );
    };
    one(
        "[guards]\nprotect_ports = []\n",
        2,
        "protects nothing",
        "protect_ports = [22]",
    );
    one(
        &format!("[guards]\nmax_resets_per_minute = 5000\n{RESET}"),
        2,
        "no longer stops a misjudged mass reset",
        "max_resets_per_minute = 60",
    );
    one(
        &format!("[guards]\nreset_share_per_minute = 1.0\n{RESET}"),
        2,
        "100 % of the sockets it tracks",
        "reset_share_per_minute = 0.1",
    );
    one(
        &format!("[guards]\npartition_min_networks = 100\n{RESET}"),
        2,
        "effectively off",
        "partition_min_networks = 2",
    );
    one(
        &format!("[guards]\npartition_share = 1.0\n{RESET}"),
        2,
        "one remote network still answering",
        "partition_share = 0.9",
    );
    one(
        &format!("[guards]\npartition_max_hold = \"10s\"\n{RESET}"),
        2,
        "lasts longer becomes resets",
        "partition_max_hold = \"5m\"",
    );
    one(
        &format!("[guards]\nmass_disconnect_min = 2\n{RESET}"),
        2,
        "bypass the budgets",
        "mass_disconnect_min = 20",
    );
    one(
        "[[rule]]\nname = \"all\"\nmatch_all = true\naction = \"reset\"\n",
        1,
        "rule `all` resets with match_all = true",
        "selectors for the service",
    );
    one(
        &format!("{RESET}classes = [\"zero_window\"]\nzero_window_after = \"2s\"\n"),
        1,
        "rule `ws` resets zero_window stalls after zero_window_after = \"2s\": healthy \
             readers look wedged for seconds",
        "zero_window_after = \"30s\"",
    );
    // Inherited from [defaults] counts too, per class the rule resets.
    let w = warnings(&format!("[defaults]\nno_ack_after = \"3s\"\nzero_window_after = \"4s\"\n{RESET}classes = [\"no_ack\"]\n"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("no_ack_after = \"3s\""), "{}", w[0]);
    // The same settings without a reset rule, or with resets disabled, are harmless.
    assert!(warnings("[guards]\nmax_resets_per_minute = 5000\nmass_disconnect_min = 1\n[[rule]]\nname = \"o\"\nmatch_all = true\nzero_window_after = \"1s\"\n").is_empty());
    assert!(warnings(&format!("[guards]\nmax_resets_per_minute = 0\nprotect_ports = []\n{RESET}zero_window_after = \"1s\"\n")).is_empty());
    // Several at once, in file order.
    let w = warnings(&format!("[guards]\nprotect_ports = []\nmax_resets_per_minute = 5000\n{RESET}no_ack_after = \"2s\"\n"));
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w[0].starts_with("policy:2:")
            && w[1].starts_with("policy:3:")
            && w[2].starts_with("policy:4:")
    );
}

#[test]
fn reset_rule_on_protected_ports_only() {
    only(
            "[guards]\nprotect_ports = [22, 2222]\n[[rule]]\nname = \"ssh\"\nlocal_ports = [22, 2222]\naction = \"reset\"\n",
            5,
            "every port in its local_ports is in [guards] protect_ports",
            "action = \"observe\"",
        );
    // A protected remote port protects only outgoing connections: a rule on it can still
    // reset clients that connect to us from that port.
    ok("[[rule]]\nname = \"from-22\"\nremote_ports = [\"22-22\"]\naction = \"reset\"\n");
    ok("[[rule]]\nname = \"ssh\"\nlocal_ports = [22]\naction = \"observe\"\n");
    ok("[[rule]]\nname = \"ssh-and-web\"\nlocal_ports = [22, 8000]\naction = \"reset\"\n");
    ok("[guards]\nprotect_ports = []\n[[rule]]\nname = \"ssh\"\nlocal_ports = [22]\naction = \"reset\"\n");
}

#[test]
fn thresholds_above_the_ceiling() {
    let p = only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nzero_window_after = \"10m\"\n",
            4,
            "`zero_window_after = \"10m\"` is longer than `ceiling = \"5m\"` (inherited from [defaults])",
            "ceiling = \"10m\"",
        );
    assert!(p
        .hint
        .unwrap()
        .starts_with("zero_window_after = \"5m\" or shorter"));
    only(
        "[defaults]\nceiling = \"10s\"\n",
        2,
        "`ceiling = \"10s\"` is shorter than zero_window_after = \"30s\", no_ack_after = \"30s\", \
             slow_drain_window = \"30s\", recv_backlog_after = \"30s\" (the built-in default)",
        "ceiling = \"30s\"",
    );
    only(
            "[defaults]\nno_ack_after = \"20s\"\n[[rule]]\nname = \"a\"\nlocal_ports = [1]\nceiling = \"25s\"\n",
            6,
            "shorter than zero_window_after = \"30s\", slow_drain_window = \"30s\", recv_backlog_after = \"30s\" (inherited from [defaults])",
            "ceiling = \"30s\"",
        );
    // Reported once, where written, not again in every rule that inherits it.
    let ps = problems(
            "[defaults]\nno_ack_after = \"6m\"\n[[rule]]\nname = \"a\"\nlocal_ports = [1]\n[[rule]]\nname = \"b\"\nlocal_ports = [2]\n",
        );
    assert_eq!(ps.len(), 1, "{}", render(&ps));
    assert_eq!(ps[0].line, 2);
    // A rule raising the ceiling fixes it for that rule.
    ok("[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nzero_window_after = \"10m\"\nceiling = \"10m\"\n");
}

#[test]
fn cadence_factor_below_one() {
    only(
        "[defaults]\ncadence_factor = 0.5\n",
        2,
        "`cadence_factor = 0.5` must be at least 1.0",
        "cadence_factor = 1.0",
    );
    only(
        "[[rule]]\nname = \"a\"\nnetns = [1]\ncadence_factor = \"2\"\n",
        4,
        "must be a number, not a string",
        "cadence_factor = 2.0",
    );
    assert_eq!(
        ok("[defaults]\ncadence_factor = 1\n")
            .defaults
            .cadence_factor,
        1.0
    );
}

#[test]
fn comm_longer_than_the_kernel_keeps() {
    let p = only(
        "[[rule]]\nname = \"a\"\ncomm = [\"granian-worker-pool\"]\n",
        3,
        "process name `granian-worker-pool` is 19 bytes: the kernel keeps only the first 15",
        "\"granian-worker-\"",
    );
    assert_eq!(p.hint.as_deref(), Some("\"granian-worker-\""));
    only(
        "[[rule]]\nname = \"a\"\ncomm = [\"\"]\n",
        3,
        "is not a process name",
        "ps -o comm",
    );
    ok("[[rule]]\nname = \"a\"\ncomm = [\"granian-worker-\"]\n");
}

#[test]
fn unknown_class() {
    let rule = |c: &str| format!("[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nclasses = [{c}]\n");
    only(
        &rule("\"zero-window\""),
        4,
        "unknown stall class `zero-window`",
        "\"zero_window\"",
    );
    only(&rule("\"noack\""), 4, "unknown stall class", "\"no_ack\"");
    only(
        &rule("\"wedged\""),
        4,
        "unknown stall class `wedged`",
        "one of zero_window, no_ack, slow_drain, recv_backlog",
    );
    only(
        &rule(""),
        4,
        "would make the action apply to nothing",
        "classes = [\"zero_window\"",
    );
    only(
        &rule("\"no_ack\", \"zero_window\", \"no_ack\""),
        4,
        "class `no_ack` is listed twice",
        "classes = [\"no_ack\", \"zero_window\"]",
    );
}

#[test]
fn bad_actions() {
    only(
        "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\naction = \"kill\"\n",
        4,
        "unknown action `kill`",
        "action = \"observe\" or action = \"reset\"",
    );
    only(
        "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\naction = \"Reset\"\n",
        4,
        "unknown action",
        "action = \"reset\"",
    );
    only(
        "[defaults]\naction = \"reset\"\n",
        2,
        "[defaults] can only observe",
        "action = \"reset\" in a [[rule]]",
    );
    ok("[defaults]\naction = \"observe\"\n");
}

#[test]
fn reset_with_recv_backlog() {
    only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nclasses = [\"zero_window\", \"recv_backlog\"]\naction = \"reset\"\n",
            4,
            "recv_backlog is observe-only",
            "classes = [\"zero_window\"], or action = \"observe\"",
        );
    only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nclasses = [\"recv_backlog\"]\naction = \"reset\"\n",
            4,
            "observe-only",
            "action = \"observe\"",
        );
    let p = ok("[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nclasses = [\"recv_backlog\"]\n");
    assert_eq!(p.rules[0].classes, [StallClass::RecvBacklog]);
}

#[test]
fn selectors_with_bad_cgroups_and_netns() {
    let cg = |c: &str| format!("[[rule]]\nname = \"a\"\ncgroup_prefix = [\"{c}\"]\n");
    only(
        &cg("system.slice/app.service"),
        3,
        "must start with `/`",
        "\"/system.slice/app.service\"",
    );
    only(
        &cg("/system.slice/app.service/"),
        3,
        "end with `/`",
        "\"/system.slice/app.service\"",
    );
    only(
        &cg("0::/system.slice/app.service"),
        3,
        "what follows `0::`",
        "\"/system.slice/app.service\"",
    );
    only(&cg("/a/../b"), 3, "`..`", "\"/a/b\"");
    ok(&cg("/"));
    let ns = |n: &str| format!("[[rule]]\nname = \"a\"\nnetns = [{n}]\n");
    assert_eq!(
        ok(&ns("\"net:[4026532000]\"")).rules[0].selectors.netns,
        Some(vec![4026532000])
    );
    only(
        &ns("0"),
        3,
        "not a network namespace inode number",
        "readlink /proc/PID/ns/net",
    );
    only(
        &ns("-4"),
        3,
        "not a network namespace inode number",
        "readlink",
    );
    only(
        &ns("\"host\""),
        3,
        "`host` is not a network namespace",
        "4026531840",
    );
}

#[test]
fn guards_and_structure() {
    only(
        "[guards]\nprotect_ports = [\"22-23\"]\n",
        2,
        "protect_ports lists port numbers, not a string",
        "protect_ports = [22, 2222]",
    );
    only("[guards]\nprotect_ports = [0]\n", 2, "port 0", "1 to 65535");
    only(
        "[guards]\nmax_resets_per_minute = -1\n",
        2,
        "must be between 0 and",
        "max_resets_per_minute = 60",
    );
    let p = ok("[guards]\nprotect_ports = [443, 22, 443]\nmax_resets_per_minute = 0\n");
    assert_eq!(p.guards.protect_ports, [22, 443]);
    assert_eq!(p.guards.max_resets_per_minute, 0);
    only(
        "[rule]\nname = \"a\"\nlocal_ports = [1]\n",
        1,
        "write each as [[rule]]",
        "[[rule]]",
    );
    only(
        "defaults = 3\n",
        1,
        "`defaults` must be a table, not an integer",
        "[defaults]",
    );
}

#[test]
fn toml_syntax_errors_have_positions_and_hints() {
    only(
        "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\naction = reset\n",
        4,
        "not valid TOML: invalid string",
        "action = \"reset\" (text values go in double quotes)",
    );
    only(
        "[defaults]\nno_ack_after = \"1s\"\nno_ack_after = \"2s\"\n",
        3,
        "duplicate key",
        "each key once per table",
    );
    let p = &problems("[defaults\n")[0];
    assert_eq!(p.line, 1);
    assert!(p.message.starts_with("not valid TOML"));
}

#[test]
fn all_problems_are_reported_at_once_in_file_order() {
    let src = "\
tick = \"1 second\"
[defaults]
ceilng = \"5m\"
cadence_factor = 0.9
[[rule]]
name = \"ws\"
local_ports = [\"9100-9000\"]
remote_cidrs = [\"10.0.0.1/8\"]
action = \"nuke\"
[[rule]]
name = \"ws\"
comm = [\"granian\"]
";
    let e = Policy::parse(src, "policy.toml").unwrap_err();
    let lines: Vec<usize> = e.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [1, 3, 4, 7, 8, 9, 11], "{e}");
    let text = e.to_string();
    assert_eq!(text.lines().count(), 7);
    assert_eq!(
            text.lines().next().unwrap(),
            "policy.toml:1:8: `1 second` is not a duration: write whole numbers with a unit \
             (ms, s, m, h) and no spaces, e.g. \"30s\", \"1m30s\", \"500ms\"; write instead: tick = \"1s\""
        );
    assert!(text
        .contains("policy.toml:3:1: unknown key `ceilng` in [defaults]; write instead: ceiling"));
    assert!(text.contains("policy.toml:7:16: port range `9100-9000` is reversed"));
}

#[test]
fn load_reads_files_and_reports_unreadable_ones() {
    let dir = std::env::temp_dir().join(format!("tcpstall-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    let bad = dir.join("bad.toml");
    std::fs::write(&good, EXAMPLE_POLICY).unwrap();
    std::fs::write(&bad, "tick = \"fast\"\n").unwrap();
    let loaded = Policy::load(&good);
    let failed = Policy::load(&bad);
    let missing = Policy::load(&dir.join("missing.toml"));
    std::fs::remove_dir_all(&dir).unwrap();

    let p = loaded.unwrap();
    assert_eq!(p.source.as_deref(), Some(good.as_path()));
    assert_eq!(p.rules.len(), 3);

    let e = failed.unwrap_err();
    assert_eq!(e.file, bad.display().to_string());
    assert!(e
        .to_string()
        .starts_with(&format!("{}:1:8: `fast` is not a duration", bad.display())));

    let e = missing.unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].line, 0);
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "{}: cannot read the policy file: it does not exist; write instead: ",
            dir.join("missing.toml").display()
        )),
        "{text}"
    );
}

#[test]
fn closest_key_suggestions() {
    assert_eq!(
        closest("zero_windw_after", THRESHOLD_KEYS),
        Some("zero_window_after")
    );
    assert_eq!(
        closest("Zero-Window-After", THRESHOLD_KEYS),
        Some("zero_window_after")
    );
    assert_eq!(
        closest("zero_window", THRESHOLD_KEYS),
        Some("zero_window_after")
    );
    assert_eq!(closest("xyz", THRESHOLD_KEYS), None);
    assert_eq!(strsim::levenshtein("kitten", "sitting"), 3);
}

#[test]
fn duplicate_table_headers_name_the_key_as_written() {
    only(
        "[a]\n[a.b]\n[a]\n",
        3,
        "not valid TOML: invalid table header; duplicate key `a` in document root",
        "each key once per table",
    );
}

#[test]
fn the_command_line_tick_has_the_policy_syntax_and_range() {
    assert_eq!(parse_tick("10ms"), Ok(TICK_MIN));
    assert_eq!(parse_tick("1m"), Ok(TICK_MAX));
    assert_eq!(parse_tick("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_tick("250ms"), Ok(Duration::from_millis(250)));
    let out = parse_tick("5ms").unwrap_err();
    assert!(out.contains("between 10ms and 1m"), "{out}");
    assert!(parse_tick("61s")
        .unwrap_err()
        .contains("between 10ms and 1m"));
    assert!(parse_tick("1 s").unwrap_err().contains("not a duration"));
    only(
        "tick = \"61s\"\n",
        1,
        "between 10ms and 1m",
        "tick = \"1m\"",
    );
}
