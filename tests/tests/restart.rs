//! Issue 11 "Restart and upgrade keep what was learned", on the real kernel: the agent is
//! restarted (SIGTERM, or SIGKILL like a crash or an OOM kill) with the same `--state-dir`
//! and `--pin-dir`, as a DaemonSet rollout or `systemctl restart` does.
//!
//! 1. A bursty consumer (its reader pauses, the sender sees zero window, then it recovers)
//!    keeps its cadence: its first pause (under the threshold) is learnt before the
//!    restart, and its next pause, longer than the threshold but shorter than the learnt
//!    one, is not reset after it — while a fresh connection pausing alongside, with no
//!    history, is reset at the plain threshold. Two consumers: one that always has data
//!    queued (its kernel entry and gap ring survive in the pinned map) and one whose queue
//!    drains between bursts (its history lives only in the agent: the state file). Once
//!    with SIGTERM, once with SIGKILL.
//! 2. A wedge already 20 s old at a SIGKILL is reset at its 25 s threshold after the
//!    restart, not 25 s after the restart (the stall clock is the adopted kernel entry's).
//! 3. The rate-limit window survives: with `max_resets_per_minute = 1`, one reset, a
//!    restart, and the next wedge within the minute is skipped with `rate_limit`.
//! 4. Sockets that closed or drained while no agent ran are found out at the start: the
//!    closed one's stall ends with `stall_closed`, not as a recovery; the drained one's with
//!    `stall_cleared`.
//! 5. An agent with another state layout (the testing knob `TCPSTALL_STATE_VERSION`), or
//!    another `--max-sockets`, starts fresh and says why; a second agent on the same
//!    directories, and `tcpstall state clear` while an agent runs, are refused; `state
//!    clear` then removes the pins and the state file.
//!
//! Every test uses its own temporary state and pin directories, removed at the end.

use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::agent::{binary, is_event, is_socket_event, Agent, AgentOpts, StateDirs};
use tests::traffic::{Conn, ConnOpts, Listener, Outcome, ReadMode, WriteMode};
use tests::{detection_bound, policy, require_root, reset_rule, SLACK, TICK};

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn started(agent: &Agent) -> Value {
    agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .expect("agent_started")
}

/// `agent_started.state`, checked for its shape.
fn state_of(agent: &Agent) -> (bool, bool, String) {
    let st = started(agent)["state"].clone();
    let detail = st["detail"].as_str().unwrap_or_default().to_string();
    eprintln!("agent_started.state: {st}");
    (
        st["adopted"].as_bool().expect("state.adopted"),
        st["restored"].as_bool().expect("state.restored"),
        detail,
    )
}

fn connect(l: &Listener, write: WriteMode, read: ReadMode, seed: u64) -> Conn {
    let mut c = l
        .connect(None, ConnOpts::default())
        .expect("connecting to the test listener");
    c.start(Some(write), read, seed).expect("starting traffic");
    c
}

/// Sleep until `t` (a point of the scenario's own timeline, not a synchronisation).
fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

// ---------------------------------------------------------------------------------------
// 1. Bursty consumers
// ---------------------------------------------------------------------------------------

/// Plain threshold of the bursty scenario.
const BURSTY_THRESHOLD: Duration = Duration::from_secs(4);
/// cadence_factor: a socket that recovered from a gap G is stalled only after 4 × G.
const FACTOR: u32 = 4;
/// First pause, under the threshold: learnt as a recovered episode (~2.5 s → 10 s).
const PAUSE_1: Duration = Duration::from_millis(2500);
/// Second pause, after the restart: over the threshold, under the learnt 4 × PAUSE_1.
const PAUSE_2: Duration = Duration::from_millis(6500);

fn bursty_policy(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    format!(
        "tick = \"{tick}ms\"\n\n[defaults]\nzero_window_after = \"{t}s\"\nno_ack_after = \"{t}s\"\n\
         cadence_factor = {FACTOR}.0\nceiling = \"60s\"\n\n[guards]\nprotect_ports = [22]\n\
         max_resets_per_minute = 1000\n\n[[rule]]\nname = \"bursty\"\nlocal_ports = [{ports}]\n\
         action = \"reset\"\nclasses = [\"zero_window\", \"no_ack\"]\n",
        tick = TICK.as_millis(),
        t = BURSTY_THRESHOLD.as_secs(),
        ports = ports.join(", "),
    )
}

/// Cookies whose saved history in the state file holds at least one recovered episode.
fn saved_histories(dirs: &StateDirs) -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string(dirs.state_file()) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return Vec::new();
    };
    v["sockets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["entry"]["history"]["episodes"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        })
        .filter_map(|s| s["cookie"].as_u64())
        .collect()
}

fn bursty_consumer_keeps_its_cadence(kill: bool) {
    require_root();
    let dirs = StateDirs::new();
    let (steady_l, draining_l, control_l) = (
        Listener::bind(loopback()).unwrap(),
        Listener::bind(loopback()).unwrap(),
        Listener::bind(loopback()).unwrap(),
    );
    let pol = bursty_policy(&[steady_l.port(), draining_l.port(), control_l.port()]);
    let a = AgentOpts::new(pol.clone()).state(&dirs).start();
    let (adopted, restored, detail) = state_of(&a);
    assert!(
        !adopted && !restored,
        "a first start has nothing to adopt: {detail}"
    );
    assert!(detail.starts_with("started fresh"), "{detail}");
    // Always data queued (the writer outpaces the reader's pauses), and a paced writer
    // whose queue drains between writes (its kernel entry comes and goes).
    let mut steady = connect(&steady_l, WriteMode::Stream, ReadMode::Fast, 1);
    let mut draining = connect(&draining_l, WriteMode::Paced(32 << 20), ReadMode::Fast, 2);
    std::thread::sleep(Duration::from_secs(1));
    for c in [&steady, &draining] {
        c.reader().hold();
    }
    std::thread::sleep(PAUSE_1);
    for c in [&steady, &draining] {
        c.reader().release();
    }
    // The agent learnt both recoveries: they are in its periodic save.
    let cookies = [steady.server_cookie, draining.server_cookie];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cookies.iter().all(|c| saved_histories(&dirs).contains(c)) {
        assert!(
            Instant::now() < deadline,
            "the state file never held the first pause of both consumers {cookies:?} (saved: \
             {:?}){}",
            saved_histories(&dirs),
            a.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let early: Vec<Value> = a.matching(|e| {
        cookies.iter().any(|&c| {
            is_socket_event(e, "socket_reset", c) || is_socket_event(e, "stall_started", c)
        })
    });
    assert!(
        early.is_empty(),
        "a pause under the threshold was acted on: {early:?}"
    );

    // Restart.
    if kill {
        a.kill();
    } else {
        a.stop();
    }
    let b = AgentOpts::new(pol).state(&dirs).start();
    let (adopted, restored, detail) = state_of(&b);
    assert!(adopted, "the pinned kernel map was not adopted: {detail}");
    assert!(restored, "the state file was not read back: {detail}");

    // A fresh connection with no history pauses alongside: the plain threshold for it.
    let control = connect(&control_l, WriteMode::Stream, ReadMode::Fast, 3);
    std::thread::sleep(Duration::from_secs(1));
    let pause = Instant::now();
    for c in [&steady, &draining, &control] {
        c.reader().hold();
    }
    let reset = b
        .wait_for_received(
            0,
            |e| is_socket_event(e, "socket_reset", control.server_cookie),
            BURSTY_THRESHOLD + 2 * TICK + SLACK + Duration::from_secs(1),
        )
        .unwrap_or_else(|| {
            panic!(
                "the control connection (no history) was not reset at the plain threshold{}",
                b.diagnostics()
            )
        });
    eprintln!(
        "control reset {:?} into the pause (threshold {BURSTY_THRESHOLD:?})",
        reset.at - pause
    );
    assert_eq!(
        reset.json["evidence"]["recovered_episodes"], 0,
        "{}",
        reset.json
    );
    sleep_until(pause + PAUSE_2);
    for c in [&steady, &draining] {
        c.reader().release();
    }
    // Let the consumers recover (a tick or two), then check that nothing touched them.
    std::thread::sleep(4 * TICK);
    for (name, c) in [("steady", &steady), ("draining", &draining)] {
        let acted: Vec<Value> = b.matching(|e| {
            is_socket_event(e, "socket_reset", c.server_cookie)
                || is_socket_event(e, "stall_started", c.server_cookie)
        });
        assert!(
            acted.is_empty(),
            "{name}: the restarted agent forgot the consumer's cadence and acted on its \
             {PAUSE_2:?} pause (threshold {BURSTY_THRESHOLD:?}, learnt {FACTOR} x {PAUSE_1:?}): \
             {acted:?}{}",
            b.diagnostics()
        );
        assert_eq!(c.writer().outcome(), None, "{name}: the writer failed");
    }
    steady.finish_intact("steady", Duration::from_secs(30));
    draining.finish_intact("draining", Duration::from_secs(30));
    b.stop();
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn bursty_consumer_keeps_its_cadence_across_sigterm() {
    bursty_consumer_keeps_its_cadence(false);
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn bursty_consumer_keeps_its_cadence_across_sigkill() {
    bursty_consumer_keeps_its_cadence(true);
}

// ---------------------------------------------------------------------------------------
// 2. An old wedge
// ---------------------------------------------------------------------------------------

const LONG_THRESHOLD: Duration = Duration::from_secs(25);
/// Age of the wedge at the crash.
const AGE_AT_CRASH: Duration = Duration::from_secs(20);

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_wedge_20s_old_at_a_crash_is_reset_at_its_threshold_after_the_restart() {
    require_root();
    let dirs = StateDirs::new();
    let l = Listener::bind(loopback()).unwrap();
    let t = LONG_THRESHOLD.as_secs();
    let pol = format!(
        "tick = \"{}ms\"\n\n[defaults]\nzero_window_after = \"{t}s\"\nno_ack_after = \"{t}s\"\n\n\
         [guards]\nprotect_ports = [22]\n\n{}",
        TICK.as_millis(),
        reset_rule("svc", &[l.port()], &["zero_window", "no_ack"])
    );
    let a = AgentOpts::new(pol.clone()).state(&dirs).start();
    let c = connect(&l, WriteMode::Stream, ReadMode::Never, 1);
    let since = c
        .writer()
        .wait_blocked(Duration::from_millis(200), Duration::from_secs(10))
        .expect("the writer never blocked on the non-reading client");
    sleep_until(since + AGE_AT_CRASH);
    let early = a.matching(|e| is_socket_event(e, "socket_reset", c.server_cookie));
    assert!(early.is_empty(), "reset before its threshold: {early:?}");
    a.kill();
    let restart = Instant::now();
    let b = AgentOpts::new(pol).state(&dirs).start();
    let (adopted, _, detail) = state_of(&b);
    assert!(adopted, "{detail}");
    // At its threshold from the last progress (before the crash), not a threshold after
    // the restart (that would be ~{restart + 25 s} = ~45 s after the wedge began).
    let due = since + LONG_THRESHOLD;
    let latest = due + 2 * TICK + SLACK;
    let reset = b
        .wait_for_received(
            0,
            |e| is_socket_event(e, "socket_reset", c.server_cookie),
            latest.saturating_duration_since(Instant::now()),
        )
        .unwrap_or_else(|| {
            panic!(
                "the wedge was not reset by {:?} after it began ({LONG_THRESHOLD:?} threshold, \
                 {AGE_AT_CRASH:?} old at the crash, agent restarted {:?} after it began){}",
                latest - since,
                restart - since,
                b.diagnostics()
            )
        });
    eprintln!(
        "reset {:?} after the wedge began, {:?} after the restart",
        reset.at - since,
        reset.at - restart
    );
    assert!(
        reset.at >= since + LONG_THRESHOLD - Duration::from_secs(1),
        "reset before its threshold: {:?} after the wedge began",
        reset.at - since
    );
    let stalled = reset.json["stalled_for_ms"].as_u64().unwrap();
    assert!(
        stalled >= LONG_THRESHOLD.as_millis() as u64,
        "stalled_for_ms {stalled}: {}",
        reset.json
    );
    match c.writer().wait_outcome(Duration::from_secs(5)) {
        Some(Outcome::Failed { errno, .. }) => assert_eq!(errno, libc::ECONNABORTED),
        other => panic!("the blocked writer did not fail after the reset: {other:?}"),
    }
    b.stop();
}

// ---------------------------------------------------------------------------------------
// 3. The rate limit
// ---------------------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn the_rate_limit_window_survives_a_restart() {
    require_root();
    let dirs = StateDirs::new();
    let l = Listener::bind(loopback()).unwrap();
    let pol = policy(&[22], 1, &reset_rule("svc", &[l.port()], &["zero_window"]));
    let a = AgentOpts::new(pol.clone()).state(&dirs).start();
    let first = connect(&l, WriteMode::Stream, ReadMode::Never, 1);
    a.wait_for(
        |e| is_socket_event(e, "socket_reset", first.server_cookie),
        detection_bound() + Duration::from_secs(2),
    )
    .unwrap_or_else(|| panic!("the first wedge was not reset{}", a.diagnostics()));
    a.stop();
    let b = AgentOpts::new(pol).state(&dirs).start();
    let (_, restored, detail) = state_of(&b);
    assert!(restored, "{detail}");
    assert!(
        detail.contains("1 resets in the rate-limit windows"),
        "{detail}"
    );
    let second = connect(&l, WriteMode::Stream, ReadMode::Never, 2);
    let skipped = b
        .wait_for(
            |e| is_socket_event(e, "reset_skipped", second.server_cookie),
            detection_bound() + Duration::from_secs(2),
        )
        .unwrap_or_else(|| {
            panic!(
                "the second wedge within the minute was not skipped{}",
                b.diagnostics()
            )
        });
    assert_eq!(skipped["guard"], "rate_limit", "{skipped}");
    b.assert_none(
        |e| is_socket_event(e, "socket_reset", second.server_cookie),
        2 * TICK + Duration::from_secs(1),
        "the restarted agent reset past max_resets_per_minute = 1",
    );
    b.stop();
}

// ---------------------------------------------------------------------------------------
// 4. What happened while no agent ran
// ---------------------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn sockets_that_closed_or_drained_while_no_agent_ran_are_not_taken_for_recoveries() {
    require_root();
    let dirs = StateDirs::new();
    let l = Listener::bind(loopback()).unwrap();
    // Observe only: stalls are reported, nothing is reset.
    let pol = policy(&[22], 1000, "");
    let a = AgentOpts::new(pol.clone()).state(&dirs).start();
    let closing = connect(&l, WriteMode::Stream, ReadMode::Never, 1);
    let mut draining = connect(&l, WriteMode::Stream, ReadMode::Never, 2);
    for c in [&closing, &draining] {
        a.wait_for(
            |e| is_socket_event(e, "stall_started", c.server_cookie),
            detection_bound() + Duration::from_secs(2),
        )
        .unwrap_or_else(|| panic!("no stall_started{}", a.diagnostics()));
    }
    a.stop();
    // While no agent runs: one connection closes, the other's reader takes everything.
    let closed_cookie = closing.server_cookie;
    drop(closing);
    draining.writer().stop();
    draining
        .start(None, ReadMode::Fast, 2)
        .expect("starting the late reader");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sq = tests::sock::send_queue(draining.server()).unwrap_or(u64::MAX);
        if draining.writer().outcome().is_some() && sq == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late reader did not drain the queue ({sq} bytes left)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = AgentOpts::new(pol).state(&dirs).start();
    let (adopted, restored, detail) = state_of(&b);
    assert!(adopted && restored, "{detail}");
    // Both ends of each connection were tracked: the servers (send side), the clients
    // that never read (read side, `recv_backlog`).
    assert!(
        detail.contains("4 sockets; 2 closed and 2 drained while no agent ran"),
        "{detail}"
    );
    let closed = b
        .wait_for(
            |e| is_socket_event(e, "stall_closed", closed_cookie),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no stall_closed for the closed socket{}", b.diagnostics()));
    eprintln!("closed while no agent ran: {closed}");
    b.wait_for(
        |e| is_socket_event(e, "stall_cleared", draining.server_cookie),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| panic!("no stall_cleared for the drained socket{}", b.diagnostics()));
    // One tick more: nothing else is said about the closed socket.
    std::thread::sleep(4 * TICK);
    let about_closed: Vec<Value> =
        b.matching(|e| e["cookie"].as_u64() == Some(closed_cookie) && !is_event(e, "stall_closed"));
    assert!(
        about_closed.is_empty(),
        "a socket that closed while no agent ran was taken for something else: {about_closed:?}"
    );
    draining.finish_intact("drained", Duration::from_secs(30));
    b.stop();
}

// ---------------------------------------------------------------------------------------
// 5. Incompatible agents, exclusive directories, `state clear`
// ---------------------------------------------------------------------------------------

/// `tcpstall <args> --state-dir .. --pin-dir ..` to completion: (exit code, stdout, stderr).
fn run_cli(args: &[&str], dirs: &StateDirs, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .args(dirs.args())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("running tcpstall");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn an_incompatible_agent_starts_fresh_and_state_clear_removes_everything() {
    require_root();
    let dirs: Arc<StateDirs> = StateDirs::new();
    let l = Listener::bind(loopback()).unwrap();
    let pol = policy(&[22], 1000, "");
    let a = AgentOpts::new(pol.clone()).state(&dirs).start();
    let wedge = connect(&l, WriteMode::Stream, ReadMode::Never, 1);
    a.wait_for(
        |e| is_socket_event(e, "stall_started", wedge.server_cookie),
        detection_bound() + Duration::from_secs(2),
    )
    .unwrap_or_else(|| panic!("no stall_started{}", a.diagnostics()));
    a.stop();
    let before = dirs.pins();
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(dirs.state_file().exists());

    // "Upgraded" to another state layout and file format.
    let mut opts = AgentOpts::new(pol.clone()).state(&dirs);
    opts.env
        .push(("TCPSTALL_STATE_VERSION".into(), "99".into()));
    let b = opts.start();
    let (adopted, restored, detail) = state_of(&b);
    assert!(!adopted && !restored, "{detail}");
    assert!(detail.starts_with("started fresh"), "{detail}");
    assert!(detail.contains("state layout v1-"), "{detail}");
    assert!(detail.contains("this agent reads format 99"), "{detail}");
    b.stop();
    let after = dirs.pins();
    assert_eq!(after.len(), 1, "the old pin was not replaced: {after:?}");
    assert_ne!(after, before);
    assert!(after[0].starts_with("socks_v99-"), "{after:?}");

    // Another map size.
    let mut opts = AgentOpts::new(pol.clone()).state(&dirs);
    opts.extra_args = vec!["--max-sockets".into(), "4096".into()];
    let c = opts.start();
    let (adopted, _, detail) = state_of(&c);
    assert!(!adopted, "{detail}");
    assert!(detail.contains("--max-sockets 4096"), "{detail}");
    // While it runs: a second agent on the same directories, and `state clear`, refuse.
    let (code, _, err) = run_cli(&["run", "--duration", "1s"], &dirs, &[]);
    assert_ne!(code, 0, "a second agent on the same directories started");
    assert!(err.contains("another tcpstall agent"), "{err}");
    let (code, _, err) = run_cli(&["state", "clear"], &dirs, &[]);
    assert_eq!(code, 1, "state clear while an agent runs: {err}");
    assert!(err.contains("another tcpstall agent"), "{err}");
    c.stop();

    // Deliberate uninstall.
    let (code, out, err) = run_cli(&["state", "clear"], &dirs, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("socks_"), "{out}");
    assert!(out.contains("state.json"), "{out}");
    assert!(!dirs.pin_dir.exists() && !dirs.state_dir.exists(), "{out}");
    let d = AgentOpts::new(pol).state(&dirs).start();
    let (adopted, restored, detail) = state_of(&d);
    assert!(!adopted && !restored, "{detail}");
    assert!(detail.contains("no saved kernel map"), "{detail}");
    assert!(detail.contains("no state file"), "{detail}");
    d.stop();
}
