//! Issue 2, detection: the agent (observe only, thresholds 2 s, tick 250 ms) reports wedged
//! sockets with the right class and identity, in time, and nothing about healthy ones. Every
//! event line of every run is checked against the event schema by the harness.

use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tests::agent::{is_event, is_socket_event, AgentOpts};
use tests::check::{
    active_stalls, assert_identity, assert_no_recv_backlog, blackholed, expect_event_within,
    kernel_view, own_netns,
};
use tests::netns::NetNs;
use tests::shapes::HealthyShapes;
use tests::traffic::{ConnOpts, Listener, ReadMode, WriteMode};
use tests::{policy, require_root, THRESHOLD};

/// Observe-only policy: no rules.
fn observe_policy() -> String {
    policy(&[22], 1000, "")
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn zero_window_from_a_client_that_never_reads() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(observe_policy()).start();
    let mut c = l.connect(None, ConnOpts::default()).unwrap();
    c.start(Some(WriteMode::Stream), ReadMode::Never, 1)
        .unwrap();
    let blocked = c
        .writer()
        .wait_blocked(Duration::from_millis(300), Duration::from_secs(10))
        .expect("the writer to a non-reading client never blocked");

    let ev = expect_event_within(
        &agent,
        "stall_started",
        c.server_cookie,
        blocked,
        "zero window",
    );
    assert_identity(&ev, &c, own_netns(), "zero window");
    assert_eq!(ev["class"], "zero_window", "{ev}");
    assert_eq!(ev["snd_wnd"], 0, "{ev}");
    assert_no_recv_backlog(&agent, &c, "zero window");
    assert!(ev["queued_bytes"].as_u64() > Some(0), "{ev}");
    assert!(
        ev["stalled_for_ms"].as_u64() >= Some(THRESHOLD.as_millis() as u64),
        "a stall reported before the 2 s threshold: {ev}"
    );
    assert_eq!(ev["action"], "observe", "{ev}");
    assert_eq!(ev["rule"], Value::Null, "{ev}");
    assert_eq!(
        ev["evidence"]["effective_threshold_ms"].as_u64(),
        Some(THRESHOLD.as_millis() as u64),
        "{ev}"
    );
    agent.assert_none(
        |e| {
            ["socket_reset", "reset_failed", "reset_skipped"]
                .iter()
                .any(|n| is_event(e, n))
        },
        Duration::ZERO,
        "observe-only policy",
    );
    let events = agent.stop();
    assert!(events.iter().any(|e| is_event(e, "stats")));
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn no_ack_from_a_blackholed_peer() {
    require_root();
    let ns = NetNs::linked_to_host().unwrap();
    let l = Listener::bind(SocketAddr::from((ns.peer_addr(), 0))).unwrap();
    let agent = AgentOpts::new(observe_policy()).start();
    let (c, dead) = blackholed(&l, &ns);

    let ev = expect_event_within(
        &agent,
        "stall_started",
        c.server_cookie,
        dead,
        "blackholed peer",
    );
    assert_identity(&ev, &c, own_netns(), "blackholed peer");
    let (kernel_wnd, kernel_retrans, _) = kernel_view(&c);
    assert_eq!(ev["class"], "no_ack", "{ev}");
    assert!(
        ev["retransmits"].as_u64() > Some(0),
        "no retransmits reported: {ev}"
    );
    assert!(ev["unacked_bytes"].as_u64() > Some(0), "{ev}");
    assert!(
        kernel_wnd > 0 && kernel_retrans > 0,
        "test bug: the kernel says snd_wnd {kernel_wnd}, retransmits {kernel_retrans}"
    );
    assert_ne!(
        ev["snd_wnd"], 0,
        "the kernel's snd_wnd (TCP_INFO) is {kernel_wnd}: the dead peer's last window was open; agent said: {ev}"
    );
    assert_no_recv_backlog(&agent, &c, "blackholed peer");
    agent.stop();
}

/// The read side (websockets #105): our own process stops reading what it receives
/// (`check::paused_reader_is_recv_backlog`).
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_reader_that_pauses_is_recv_backlog_until_it_reads_again() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(observe_policy()).start();
    tests::check::paused_reader_is_recv_backlog(&agent, &l, Duration::ZERO);
    agent.stop();
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn healthy_connections_are_never_called_stalled() {
    require_root();
    let mut shapes = HealthyShapes::bind();
    let agent = AgentOpts::new(observe_policy()).start();
    shapes.start();
    let cookies = shapes.cookies();
    // Two thresholds and then some, covering the paused reader's pause.
    agent.assert_none(
        |e| {
            is_event(e, "stall_started")
                && e["cookie"].as_u64().is_some_and(|c| cookies.contains(&c))
        },
        THRESHOLD * 2 + Duration::from_secs(1),
        "healthy connection reported as stalled",
    );
    shapes.assert_shapes_held();
    shapes.finish_intact();
    agent.stop();
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_stalled_socket_closed_by_its_app_is_reported_closed() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(observe_policy()).start();
    let mut c = l.connect(None, ConnOpts::default()).unwrap();
    c.start(Some(WriteMode::Stream), ReadMode::Never, 3)
        .unwrap();
    let blocked = c
        .writer()
        .wait_blocked(Duration::from_millis(300), Duration::from_secs(10))
        .expect("the writer never blocked");
    let started = expect_event_within(
        &agent,
        "stall_started",
        c.server_cookie,
        blocked,
        "stall before close",
    );

    // The counters while the stall is live. Other processes on the host may have tracked or
    // stalled sockets too: stalls_active is checked against the stalls the event stream
    // itself says are active, and sockets_tracked only when the host is quiet.
    let mark = agent.mark();
    let before = agent
        .wait_for_received(mark, |e| is_event(e, "stats"), Duration::from_secs(3))
        .expect("no stats within 3 s (--stats-interval 1s)");
    let events = agent.events();
    let active = active_stalls(&events[..before.index]);
    assert_eq!(
        before.json["stalls_active"].as_u64(),
        Some(active.len() as u64),
        "stats while these stalls are active {active:?}: {}",
        before.json
    );
    let foreign_before = active
        .iter()
        .filter(|(k, _)| *k != c.server_cookie && *k != c.client_cookie)
        .count();
    let tracked_before = before.json["sockets_tracked"]
        .as_u64()
        .expect("sockets_tracked");

    let server_cookie = c.server_cookie;
    let client_cookie = c.client_cookie;
    c.abort_server().unwrap();
    drop(c);
    let closed_at = Instant::now();
    let closed = agent
        .wait_for(
            |e| is_socket_event(e, "stall_closed", server_cookie),
            Duration::from_secs(3),
        )
        .unwrap_or_else(|| {
            panic!(
                "no stall_closed within 3 s of close(){}",
                agent.diagnostics()
            )
        });
    eprintln!("stall_closed {:?} after close()", closed_at.elapsed());
    assert_eq!(closed["class"], started["class"], "{closed}");
    assert_eq!(closed["local"], started["local"], "{closed}");
    assert_eq!(closed["remote"], started["remote"], "{closed}");
    agent.assert_none(
        |e| {
            is_socket_event(e, "stall_cleared", server_cookie)
                || is_socket_event(e, "socket_reset", server_cookie)
        },
        Duration::ZERO,
        "a socket the app closed",
    );
    // The client end (which never read) may have been reported too; it must be gone as well.
    if !agent
        .matching(|e| is_socket_event(e, "stall_started", client_cookie))
        .is_empty()
    {
        agent
            .wait_for(
                |e| {
                    is_socket_event(e, "stall_closed", client_cookie)
                        || is_socket_event(e, "stall_cleared", client_cookie)
                },
                Duration::from_secs(3),
            )
            .unwrap_or_else(|| {
                panic!(
                    "the client socket's stall never ended{}",
                    agent.diagnostics()
                )
            });
    }
    let mark = agent.mark();
    let after = agent
        .wait_for_received(mark, |e| is_event(e, "stats"), Duration::from_secs(3))
        .expect("no stats within 3 s after the close");
    let events = agent.events();
    let active = active_stalls(&events[..after.index]);
    assert!(
        !active
            .iter()
            .any(|(k, _)| *k == server_cookie || *k == client_cookie),
        "our stalls are still active after the close: {active:?}"
    );
    assert_eq!(
        after.json["stalls_active"].as_u64(),
        Some(active.len() as u64),
        "stats after our stalls closed (other active stalls on the host: {active:?}): {}{}",
        after.json,
        agent.diagnostics()
    );
    let foreign_events = events
        .iter()
        .filter(|e| {
            e["cookie"]
                .as_u64()
                .is_some_and(|k| k != server_cookie && k != client_cookie)
        })
        .count();
    let tracked_after = after.json["sockets_tracked"]
        .as_u64()
        .expect("sockets_tracked");
    if foreign_before == 0 && foreign_events == 0 && tracked_before <= 2 {
        assert!(
            tracked_after < tracked_before,
            "sockets_tracked did not drop after the close: {tracked_before} -> {tracked_after}{}",
            agent.diagnostics()
        );
    } else {
        eprintln!(
            "note: other sockets are active on this host (sockets_tracked {tracked_before} -> \
             {tracked_after}); the sockets_tracked drop is only checked on a quiet host"
        );
    }
    agent.stop();
}

/// Ids of the tcpstall programs loaded in the kernel right now (by name).
fn tcpstall_programs() -> std::collections::BTreeSet<u32> {
    tcpstall_programs_named().into_keys().collect()
}

/// The tcpstall programs loaded in the kernel right now: id -> name.
fn tcpstall_programs_named() -> std::collections::BTreeMap<u32, String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with("tcpstall_").then(|| (p.id(), name))
        })
        .collect()
}

/// The holder iterator (`identity/iter.rs`): loaded with the hooks, attached only for the
/// length of each pass.
const HOLDER_ITER: &str = "tcpstall_holders";

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn sigterm_detaches_every_hook() {
    require_root();
    // Programs already loaded (another agent, or the previous test's agent still being
    // freed) are told apart by id, so only ours are judged.
    let before = tcpstall_programs();
    let agent = AgentOpts::new(observe_policy()).start();
    let ours_named: std::collections::BTreeMap<u32, String> = tcpstall_programs_named()
        .into_iter()
        .filter(|(id, _)| !before.contains(id))
        .collect();
    let ours: std::collections::BTreeSet<u32> = ours_named.keys().copied().collect();
    // Besides one program per hook, the holder iterator (every kernel this runs on has
    // iter/task_file): exactly one.
    // (The kernel keeps 15 bytes of a program name.)
    let iters = ours_named
        .values()
        .filter(|n| HOLDER_ITER.starts_with(n.as_str()) && n.len() >= 15)
        .count();
    assert_eq!(
        iters, 1,
        "expected the holder iterator {HOLDER_ITER} loaded once, found {ours_named:?}"
    );
    // One program per attached hook (which hooks attach depends on the kernel).
    let started = agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .expect("agent_started");
    let attached = started["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .filter(|h| !h["attach"].is_null())
        .count();
    // At least ack, retransmit and state (no per-call hook by default).
    assert!(
        attached >= 3,
        "fewer hooks attached than expected: {started}"
    );
    assert_eq!(
        ours.len() - iters,
        attached,
        "expected exactly the agent's {attached} attached programs and its holder iterator \
         loaded, found {ours_named:?}"
    );
    let events = agent.stop();
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some(Value::from("agent_stopped")),
        "agent_stopped must be the last event"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = tcpstall_programs().intersection(&ours).copied().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} of the stopped agent still loaded 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
