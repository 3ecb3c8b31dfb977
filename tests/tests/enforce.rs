//! Issue 3, enforcement: under a reset rule the agent destroys wedged sockets, so the
//! application's blocked `send()` returns ECONNABORTED within threshold + 2 ticks (+ slack);
//! and it leaves alone what it must: healthy connections, sockets no rule selects, protected
//! ports, everything under `--dry-run`, everything past the rate limit.

use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tests::agent::{is_event, is_socket_event, Agent, AgentOpts};
use tests::check::{
    assert_identity, assert_still_blocked, blackholed, expect_event_within, expect_reset,
    own_netns, wedge_in as wedge, GRACE,
};
use tests::netns::NetNs;
use tests::shapes::HealthyShapes;
use tests::traffic::{Conn, ConnOpts, Listener, Outcome, ReadMode, WriteMode};
use tests::{detection_bound, policy, require_root, reset_rule, ws, THRESHOLD};

const WEDGE_CLASSES: &[&str] = &["zero_window", "no_ack"];

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Policy resetting zero_window/no_ack stalls of sockets on `ports`.
fn reset_policy(ports: &[u16]) -> String {
    policy(&[22], 1000, &reset_rule("wedge", ports, WEDGE_CLASSES))
}

/// The agent must be able to reset: enforce mode, working SOCK_DESTROY path.
fn assert_enforcing(agent: &Agent) {
    let started = agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .expect("agent_started");
    assert_eq!(started["mode"], "enforce", "{started}");
    assert_eq!(started["reset_path"]["works"], true, "{started}");
}

/// Fields every socket_reset must carry for a zero-window wedge of `c`.
fn assert_reset_event(ev: &Value, c: &Conn, netns: u64, class: &str, what: &str) {
    assert_identity(ev, c, netns, what);
    assert_eq!(ev["class"], class, "{what}: {ev}");
    assert_eq!(ev["rule"], "wedge", "{what}: {ev}");
    assert!(ev["bytes_still_queued"].as_u64() > Some(0), "{what}: {ev}");
    assert!(ev["reset_latency_us"].as_u64().is_some(), "{what}: {ev}");
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn resets_a_client_that_never_reads() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    assert_enforcing(&agent);
    let (c, blocked) = wedge(&l, None, ConnOpts::default(), 1);
    let ev = expect_reset(&agent, &c, blocked, "never-reading client");
    assert_reset_event(&ev, &c, own_netns(), "zero_window", "never-reading client");
    let started = agent
        .wait_for(
            |e| is_socket_event(e, "stall_started", c.server_cookie),
            Duration::ZERO,
        )
        .expect("a reset without a stall_started before it");
    assert_eq!(started["action"], "reset", "{started}");
    assert_eq!(started["rule"], "wedge", "{started}");
    let events = agent.stop();
    let stats = events.iter().rev().find(|e| is_event(e, "stats")).unwrap();
    assert!(stats["resets"]["done"].as_u64() >= Some(1), "{stats}");
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn resets_a_blackholed_peer() {
    require_root();
    let ns = NetNs::linked_to_host().unwrap();
    let l = Listener::bind(SocketAddr::from((ns.peer_addr(), 0))).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    assert_enforcing(&agent);
    let (c, dead) = blackholed(&l, &ns);
    let ev = expect_reset(&agent, &c, dead, "blackholed peer");
    assert_reset_event(&ev, &c, own_netns(), "no_ack", "blackholed peer");
    assert!(ev["retransmits"].as_u64() > Some(0), "{ev}");
    agent.stop();
}

/// Granian #862: a WebSocket server blocked sending to a client that stopped reading and
/// then sent its close frame over a still-open TCP connection.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn resets_a_websocket_whose_client_stopped_reading_and_sent_close() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    let mut c = l.connect(None, ConnOpts::default()).unwrap();
    std::thread::scope(|s| {
        let server = s.spawn(|| ws::server_handshake(c.server()));
        ws::client_handshake(&c.client, &l.addr().to_string(), "dGNwc3RhbGwgdGVzdCBrZXk=")
            .expect("client handshake");
        server.join().unwrap().expect("server handshake");
    });
    // The server reads the one frame it expects (its read loop then waits on the send, as
    // in Granian's teardown).
    let close = ws::masked_close_frame(1000, [0x5a, 0x17, 0xc3, 0x99]);
    c.start_inbox(close.len()).unwrap();
    c.start(Some(WriteMode::WsFrames), ReadMode::Never, 4)
        .unwrap();
    let blocked = c
        .writer()
        .wait_blocked(Duration::from_millis(300), Duration::from_secs(10))
        .expect("the WebSocket writer never blocked");
    // The client says goodbye but keeps the TCP connection open and still does not read.
    (&c.client).write_all(&close).unwrap();
    let got = c
        .inbox()
        .wait_bytes(close.len(), Duration::from_secs(2))
        .expect("the server never received the close frame");
    assert_eq!(
        ws::parse_client_frame(&got),
        Some((0x88, vec![0x03, 0xe8])),
        "close frame"
    );
    assert_eq!(
        c.inbox().end(),
        Some(Ok(())),
        "the server read the close frame and stopped reading"
    );
    assert_eq!(
        c.writer().outcome(),
        None,
        "the writer must still be blocked after the close frame"
    );

    let ev = expect_reset(&agent, &c, blocked, "WebSocket client");
    assert_reset_event(&ev, &c, own_netns(), "zero_window", "WebSocket client");
    agent.stop();
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn resets_a_wedged_socket_in_another_netns() {
    require_root();
    let (server_ns, client_ns) = NetNs::linked_pair().unwrap();
    let l = Listener::bind_in(&server_ns, SocketAddr::from((server_ns.addr(), 0))).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    let (c, blocked) = wedge(&l, Some(&client_ns), ConnOpts::default(), 5);
    let ev = expect_reset(&agent, &c, blocked, "server in a netns");
    assert_reset_event(
        &ev,
        &c,
        server_ns.inode(),
        "zero_window",
        "server in a netns",
    );
    assert_ne!(server_ns.inode(), own_netns());
    agent.stop();
}

/// Dead SSE clients (mcp-context-forge #2357): many long-lived streams whose clients stopped
/// reading. Every one must be reset; none missed.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn resets_200_dead_sse_clients() {
    require_root();
    const N: usize = 200;
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    // Small buffers keep 200 wedges to a few MB of kernel memory.
    let opts = ConnOpts {
        client_rcvbuf: Some(16 * 1024),
        server_sndbuf: Some(32 * 1024),
    };
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = l
            .connect(None, opts)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        c.start(Some(WriteMode::Stream), ReadMode::Never, 100 + i as u64)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        conns.push(c);
    }
    let blocked: Vec<Instant> = conns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.writer()
                .wait_blocked(Duration::from_millis(100), Duration::from_secs(10))
                .unwrap_or_else(|| panic!("writer {i} never blocked"))
        })
        .collect();
    let bound = detection_bound();
    let mut late = Vec::new();
    let mut worst = Duration::ZERO;
    for (i, (c, since)) in conns.iter().zip(&blocked).enumerate() {
        let wait = (*since + bound + GRACE).saturating_duration_since(Instant::now());
        match c.writer().wait_outcome(wait) {
            Some(Outcome::Failed { errno, at }) if errno == libc::ECONNABORTED => {
                let latency = at.saturating_duration_since(*since);
                worst = worst.max(latency);
                if latency > bound {
                    late.push(format!("#{i}: {latency:?}"));
                }
            }
            other => late.push(format!("#{i}: {other:?}")),
        }
    }
    eprintln!("200 wedges: slowest send() abort {worst:?} after its wedge (bound {bound:?})");
    assert!(
        late.is_empty(),
        "{} of {N} wedged writers were not aborted with ECONNABORTED within {bound:?}: {}{}",
        late.len(),
        late.join(", "),
        agent.diagnostics()
    );
    let want: HashSet<u64> = conns.iter().map(|c| c.server_cookie).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    let reset_cookies = loop {
        let got: HashSet<u64> = agent
            .matching(|e| is_event(e, "socket_reset"))
            .iter()
            .filter_map(|e| e["cookie"].as_u64())
            .filter(|c| want.contains(c))
            .collect();
        if got.len() == N || Instant::now() >= deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        reset_cookies.len(),
        N,
        "socket_reset events for {} of {N} sockets",
        reset_cookies.len()
    );
    let failed = agent.matching(|e| {
        (is_event(e, "reset_failed") || is_event(e, "reset_skipped"))
            && e["cookie"].as_u64().is_some_and(|c| want.contains(&c))
    });
    assert!(failed.is_empty(), "resets failed or skipped: {failed:?}");
    drop(conns);
    agent.stop();
}

/// What must not be reset, all under one agent: the healthy shapes selected by a reset rule
/// (that also resets slow_drain), a wedge no rule selects, a wedge on a protected port.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn leaves_healthy_unselected_and_protected_sockets_alone() {
    require_root();
    let mut shapes = HealthyShapes::bind();
    let unselected = Listener::bind(loopback()).unwrap();
    let protected = Listener::bind(loopback()).unwrap();
    // A rule may not consist of protected ports only (the policy check rejects that as a
    // rule that can never act): it spans the protected port and a reserved spare one, as a
    // rule for a port range containing a protected port would.
    let spare = Listener::bind(loopback()).unwrap();
    let rules = reset_rule(
        "healthy",
        &shapes.ports(),
        &["zero_window", "no_ack", "slow_drain"],
    ) + &reset_rule(
        "protected",
        &[protected.port(), spare.port()],
        WEDGE_CLASSES,
    );
    let agent = AgentOpts::new(policy(&[22, protected.port()], 1000, &rules)).start();
    assert_enforcing(&agent);
    shapes.start();
    let (u, u_blocked) = wedge(&unselected, None, ConnOpts::default(), 6);
    let (p, p_blocked) = wedge(&protected, None, ConnOpts::default(), 7);

    let ev = expect_event_within(
        &agent,
        "stall_started",
        u.server_cookie,
        u_blocked,
        "unselected wedge",
    );
    assert_eq!(ev["action"], "observe", "{ev}");
    assert_eq!(ev["rule"], Value::Null, "{ev}");
    let ev = expect_event_within(
        &agent,
        "reset_skipped",
        p.server_cookie,
        p_blocked,
        "protected wedge",
    );
    assert_eq!(ev["guard"], "protected_port", "{ev}");
    assert_eq!(ev["rule"], "protected", "{ev}");

    let mut cookies = shapes.cookies();
    cookies.extend([
        u.server_cookie,
        u.client_cookie,
        p.server_cookie,
        p.client_cookie,
    ]);
    let healthy = shapes.cookies();
    agent.assert_none(
        |e| {
            let c = e["cookie"].as_u64().unwrap_or(0);
            ((is_event(e, "socket_reset") || is_event(e, "reset_failed")) && cookies.contains(&c))
                || (is_event(e, "stall_started") && healthy.contains(&c))
        },
        THRESHOLD * 2 + Duration::from_secs(1),
        "a socket that must be left alone",
    );
    assert_still_blocked(&u, "unselected wedge");
    assert_still_blocked(&p, "protected wedge");
    shapes.assert_shapes_held();
    shapes.finish_intact();
    drop((u, p));
    agent.stop();
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn dry_run_reports_and_resets_nothing() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).dry_run().start();
    let started = agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .unwrap();
    assert_eq!(started["mode"], "dry_run", "{started}");
    let (c, blocked) = wedge(&l, None, ConnOpts::default(), 8);
    let ev = expect_event_within(&agent, "reset_skipped", c.server_cookie, blocked, "dry run");
    assert_eq!(ev["guard"], "dry_run", "{ev}");
    assert_identity(&ev, &c, own_netns(), "dry run");
    agent.assert_none(
        |e| is_event(e, "socket_reset") || is_event(e, "reset_failed"),
        THRESHOLD * 2,
        "--dry-run",
    );
    assert_still_blocked(&c, "dry run");
    agent.stop();
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn rate_limit_caps_resets() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(policy(
        &[22],
        1,
        &reset_rule("wedge", &[l.port()], WEDGE_CLASSES),
    ))
    .start();
    let wedges: Vec<(Conn, Instant)> = (0..3)
        .map(|i| wedge(&l, None, ConnOpts::default(), 10 + i))
        .collect();
    let last_block = wedges.iter().map(|(_, b)| *b).max().unwrap();
    let cookies: Vec<u64> = wedges.iter().map(|(c, _)| c.server_cookie).collect();
    let bound = detection_bound();
    // One reset, and a rate_limit skip for each of the others, all within the bound.
    let deadline = last_block + bound;
    let settled = || {
        let resets = agent.matching(|e| {
            is_event(e, "socket_reset") && cookies.contains(&e["cookie"].as_u64().unwrap_or(0))
        });
        let skips = agent.matching(|e| {
            is_event(e, "reset_skipped")
                && e["guard"] == "rate_limit"
                && cookies.contains(&e["cookie"].as_u64().unwrap_or(0))
        });
        (resets, skips)
    };
    while Instant::now() < deadline {
        let (r, s) = settled();
        if r.len() == 1 && s.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stay a while longer: no second reset may come within the minute.
    std::thread::sleep(THRESHOLD);
    let (resets, skips) = settled();
    assert_eq!(
        resets.len(),
        1,
        "max_resets_per_minute = 1: resets {resets:?}{}",
        agent.diagnostics()
    );
    let reset_cookie = resets[0]["cookie"].as_u64().unwrap();
    let skipped: HashSet<u64> = skips.iter().filter_map(|e| e["cookie"].as_u64()).collect();
    let others: HashSet<u64> = cookies
        .iter()
        .copied()
        .filter(|c| *c != reset_cookie)
        .collect();
    assert_eq!(
        skipped,
        others,
        "rate_limit skips {skips:?}{}",
        agent.diagnostics()
    );
    for (c, _) in &wedges {
        if c.server_cookie == reset_cookie {
            assert!(
                matches!(c.writer().outcome(), Some(Outcome::Failed { errno, .. }) if errno == libc::ECONNABORTED),
                "the reset socket's writer: {:?}",
                c.writer().outcome()
            );
        } else {
            assert_still_blocked(c, "rate-limited wedge");
        }
    }
    drop(wedges);
    agent.stop();
}

/// Orphans to a dead peer (the application closed its sockets while they retransmit) are
/// tracked again by the retransmit hook in FIN_WAIT1; once destroyed they reach CLOSE and
/// must leave the kernel map (they used to stay until the agent exited, one leaked entry per
/// close-while-peer-dead, until the map was full).
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn destroyed_orphans_leave_no_map_entry() {
    require_root();
    const N: usize = 20;
    let ns = NetNs::linked_to_host().unwrap();
    let l = Listener::bind(SocketAddr::from((ns.peer_addr(), 0))).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    assert_enforcing(&agent);
    let started = agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .unwrap();
    if started["orphan_reset"]["safe"] != true {
        panic!("this test needs a kernel where destroying orphans is safe: {started}");
    }
    // N connections with data in flight, then the peer goes silent, then the application
    // closes every server socket: N orphans in FIN_WAIT1 retransmitting to a dead peer.
    let mut conns = Vec::new();
    for _ in 0..N {
        conns.push(l.connect(Some(&ns), ConnOpts::default()).unwrap());
    }
    ns.blackhole().unwrap();
    let mut cookies = HashSet::new();
    for c in &conns {
        let mut s = c.server();
        s.set_nonblocking(true).unwrap();
        let _ = s.write(&[7u8; 16 * 1024]);
        cookies.insert(c.server_cookie);
    }
    for c in &mut conns {
        c.close_server();
    }
    let closed = Instant::now();
    // Each orphan is tracked again by its retransmits, stalls (no_ack) and is reset.
    let deadline = closed + tests::detection_bound() + Duration::from_secs(10);
    let mut reset = HashSet::new();
    while reset.len() < N && Instant::now() < deadline {
        for ev in agent.matching(|e| is_event(e, "socket_reset")) {
            if let Some(ck) = ev["cookie"].as_u64().filter(|c| cookies.contains(c)) {
                reset.insert(ck);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        reset.len(),
        N,
        "not every orphan was reset{}",
        agent.diagnostics()
    );
    // Two stats intervals later the map holds none of them.
    let mark = agent.mark();
    let stats = agent
        .wait_for_received(mark, |e| is_event(e, "stats"), Duration::from_secs(5))
        .and_then(|_| {
            agent.wait_for_received(
                agent.mark(),
                |e| is_event(e, "stats"),
                Duration::from_secs(5),
            )
        })
        .expect("stats after the resets")
        .json;
    let tracked = stats["sockets_tracked"].as_u64().unwrap();
    assert!(
        tracked < N as u64 / 2,
        "{tracked} sockets still tracked after all {N} orphans were destroyed: {stats}{}",
        agent.diagnostics()
    );
    agent.stop();
}

/// With no per-write hook (the default), a rule selecting by `comm` still matches: the
/// writer is found in /proc (the thread blocked writing to the socket), and a rule naming
/// another process resets nothing.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_comm_rule_selects_the_writer_found_without_a_write_hook() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let rules = format!(
        "[[rule]]\nname = \"other\"\ncomm = [\"not-the-writer\"]\naction = \"reset\"\n\
         classes = [\"zero_window\"]\n\n\
         [[rule]]\nname = \"wedge\"\ncomm = [\"{}\"]\nlocal_ports = [{}]\naction = \"reset\"\n\
         classes = [\"zero_window\"]\n\n",
        tests::traffic::WRITER_COMM,
        l.port()
    );
    let agent = AgentOpts::new(policy(&[22], 1000, &rules)).start();
    assert_enforcing(&agent);
    let started = agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .unwrap();
    let send = started["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == "send")
        .unwrap()
        .clone();
    assert!(send["attach"].is_null(), "per-write hook attached: {send}");
    let (c, blocked) = wedge(&l, None, ConnOpts::default(), 1);
    let ev = expect_reset(&agent, &c, blocked, "comm rule");
    assert_reset_event(&ev, &c, own_netns(), "zero_window", "comm rule");
    agent.stop();

    // The same wedge under a policy whose only reset rule names another process: observed,
    // never reset.
    let l = Listener::bind(loopback()).unwrap();
    let rules = format!(
        "[[rule]]\nname = \"other\"\ncomm = [\"not-the-writer\"]\nlocal_ports = [{}]\n\
         action = \"reset\"\nclasses = [\"zero_window\"]\n\n",
        l.port()
    );
    let agent = AgentOpts::new(policy(&[22], 1000, &rules)).start();
    let (c, _blocked) = wedge(&l, None, ConnOpts::default(), 1);
    let ev = agent
        .wait_for(
            |e| is_socket_event(e, "stall_started", c.server_cookie),
            detection_bound() + GRACE,
        )
        .unwrap_or_else(|| panic!("no stall_started{}", agent.diagnostics()));
    assert_eq!(ev["comm"], tests::traffic::WRITER_COMM, "{ev}");
    assert!(ev["rule"].is_null(), "{ev}");
    std::thread::sleep(Duration::from_secs(2));
    let events = agent.stop();
    assert!(
        !events
            .iter()
            .any(|e| is_socket_event(e, "socket_reset", c.server_cookie)),
        "a socket no rule selects was reset"
    );
}
