//! The kernel matrix's guest test: the same scenarios on every supported kernel. It runs in
//! the host suite and, through `cargo xtask vm-test`, inside a QEMU guest of each of Debian's
//! stock kernels (5.10, 6.1, 6.12, newest backports), where /init runs this executable with
//! `CI=true TCPSTALL_BIN=/bin/tcpstall TCPSTALL_EXPECT_ATTACH=<that kernel's expectation>`.
//!
//! a. the agent starts with every hook attached by the expected method, nothing degraded;
//! b. a non-reading client: `zero_window` → `socket_reset` → the writer gets ECONNABORTED;
//! c. a dead peer (nftables drop in its netns): `no_ack` → reset → the writer gets an error;
//! d. an idle connection and a healthy reader: no stall over 2.5× the threshold, data intact;
//! e. the orphan guard: the agent's `agent_started.orphan_reset.safe` matches what the kernel
//!    does when an orphaned FIN_WAIT1 socket stuck on a zero window is destroyed;
//! f. a sendfile() writer (the send_pages path before 6.5) to a non-reader: reset, and the
//!    event names the writer;
//! g. an orphan to a dead peer under a reset rule: reset where the agent found destroying
//!    orphans safe, `reset_skipped` (guard `orphan_unsafe`) and left alone where not;
//! h. a restart keeps the kernel state: a wedge tracked by an agent that is then killed
//!    (SIGKILL) is in the pinned map the next agent adopts, and is reset by it with the
//!    wedge's whole age as its stall time;
//! i. a paused reader is `recv_backlog` until it reads again.
//!
//! With `TCPSTALL_TROUBLE_HOOKS=1` in the environment (the agents inherit it) the same
//! scenarios run against the trouble-only hooks (`--trouble-hooks`): a. then expects the one
//! `degraded` entry that names what the mode does not see, and i. expects the paused reader
//! to go unreported (that mode has no hook that sees the read side).
//!
//! Guests run under TCG (no KVM), so bounds here are the suite's plus a generous allowance;
//! the host suite checks the tight bounds elsewhere (enforce.rs, detect.rs).

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use tests::agent::{is_event, is_socket_event, Agent, AgentOpts, StateDirs};
use tests::check::{assert_identity, own_netns};
use tests::netns::NetNs;
use tests::sock;
use tests::traffic::{Conn, ConnOpts, Listener, Outcome, ReadMode, WriteMode};
use tests::{detection_bound, policy, require_root, reset_rule, THRESHOLD};

/// Hook names of `agent_started.hooks`, every one of which must be reported.
use monitor::attach::HOOK_NAMES as HOOKS;

/// What this host (Linux 6.18) attaches by default: tracepoints, no per-write hook, and no
/// blocked-write companion (fentry is refused here).
const HOST_EXPECT: &str = "send=-,send_wait=-,send_pages=-,\
ack=tp_btf/tcp_probe,retransmit=tp_btf/tcp_retransmit_skb,read=-,\
state=tp_btf/inet_sock_set_state,timer=-";

/// The agents run with `--trouble-hooks` (`TCPSTALL_TROUBLE_HOOKS` set truthy, inherited).
fn trouble_hooks() -> bool {
    std::env::var("TCPSTALL_TROUBLE_HOOKS")
        .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
}

/// Allowance on top of [`detection_bound`] for a guest under TCG.
const EMULATION_SLACK: Duration = Duration::from_secs(6);

/// Marker of lines the xtask parses out of the guest's console.
const MARK: &str = "TCPSTALL-VM";

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn bound() -> Duration {
    detection_bound() + EMULATION_SLACK
}

/// `hook -> attach` (`-` = not attached) from `TCPSTALL_EXPECT_ATTACH`, or this host's.
fn expected_attach() -> BTreeMap<String, String> {
    let text = std::env::var("TCPSTALL_EXPECT_ATTACH").unwrap_or_else(|_| HOST_EXPECT.into());
    let map: BTreeMap<String, String> = text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("TCPSTALL_EXPECT_ATTACH: `{kv}` is not hook=attach"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let names: Vec<&str> = map.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = HOOKS.to_vec();
    want.sort();
    assert_eq!(names, want, "TCPSTALL_EXPECT_ATTACH must name every hook");
    map
}

fn started(agent: &Agent) -> Value {
    agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .expect("agent_started")
}

/// Policy resetting zero_window/no_ack stalls of sockets on `ports`.
fn reset_policy(ports: &[u16]) -> String {
    policy(
        &[22],
        1000,
        &reset_rule("wedge", ports, &["zero_window", "no_ack"]),
    )
}

/// The writer of `c` must fail (with `errno`, if given) within [`bound`] of `since`, and the
/// agent must report `socket_reset` for the server socket. Returns that event.
fn expect_abort(agent: &Agent, c: &Conn, since: Instant, errno: Option<i32>, what: &str) -> Value {
    let b = bound();
    let wait = (since + b).saturating_duration_since(Instant::now());
    match c.writer().wait_outcome(wait) {
        Some(Outcome::Failed { errno: got, at }) => {
            let latency = at.saturating_duration_since(since);
            eprintln!(
                "{what}: send() failed with {} {latency:?} after the wedge",
                sock::errno_name(got)
            );
            if let Some(want) = errno {
                assert_eq!(
                    got,
                    want,
                    "{what}: send() failed with {}, expected {}{}",
                    sock::errno_name(got),
                    sock::errno_name(want),
                    agent.diagnostics()
                );
            }
        }
        other => panic!(
            "{what}: the blocked send() did not fail within {b:?} of the wedge (outcome \
             {other:?}){}",
            agent.diagnostics()
        ),
    }
    agent
        .wait_for(
            |e| is_socket_event(e, "socket_reset", c.server_cookie),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| {
            panic!(
                "{what}: send() failed but no socket_reset for cookie {}{}",
                c.server_cookie,
                agent.diagnostics()
            )
        })
}

/// a. Every hook attached by this kernel's expected method; nothing degraded.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_agent_starts_with_every_hook_attached() {
    require_root();
    let agent = AgentOpts::new(policy(&[22], 1000, "")).start();
    let ev = started(&agent);
    // The xtask reads the attach table of the matrix from this line.
    eprintln!("{MARK} agent_started {ev}");
    let want = expected_attach();
    let hooks = ev["hooks"]
        .as_array()
        .unwrap_or_else(|| panic!("agent_started.hooks is not an array: {ev}"));
    let mut got = BTreeMap::new();
    for h in hooks {
        let Some(obj) = h.as_object() else {
            panic!(
                "agent_started.hooks must be objects {{\"hook\", \"attach\", \"why\"}}, got \
                 {h} (the old list-of-strings format): {ev}"
            );
        };
        let name = obj
            .get("hook")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("hook entry without a name: {h}"));
        let attach = match obj.get("attach") {
            Some(Value::Null) => "-".to_string(),
            Some(Value::String(s)) => s.clone(),
            other => panic!("hook {name}: attach must be a string or null, got {other:?}"),
        };
        assert!(
            obj.get("why").and_then(Value::as_str).is_some(),
            "hook {name} has no `why`: {h}"
        );
        assert!(
            got.insert(name.to_string(), attach).is_none(),
            "hook {name} listed twice: {ev}"
        );
    }
    assert_eq!(
        got,
        want,
        "attach methods on kernel {} (left: agent, right: expected){}",
        ev["kernel"],
        agent.diagnostics()
    );
    if trouble_hooks() {
        let degraded = ev["degraded"].as_array().cloned().unwrap_or_default();
        assert!(
            degraded.len() == 1
                && degraded[0].as_str().is_some_and(|d| {
                    d.starts_with("--trouble-hooks") && d.contains("recv_backlog")
                }),
            "with --trouble-hooks, `degraded` must name what that mode does not see, and \
             nothing else: {ev}"
        );
    } else {
        assert_eq!(
            ev["degraded"],
            Value::Array(vec![]),
            "detection must not be degraded: {ev}"
        );
    }
    let key = ev["socket_key"].as_str();
    assert!(
        matches!(key, Some("cookie" | "address")),
        "socket_key must be \"cookie\" or \"address\": {ev}"
    );
    assert_eq!(ev["reset_path"]["works"], true, "{ev}");
    agent.stop();
}

/// b. A client that never reads: zero_window, reset, ECONNABORTED.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn b_zero_window_peer_is_reset() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    let mut c = l.connect(None, ConnOpts::default()).unwrap();
    c.start(Some(WriteMode::Stream), ReadMode::Never, 1)
        .unwrap();
    let blocked = c
        .writer()
        .wait_blocked(Duration::from_millis(300), Duration::from_secs(30))
        .expect("the writer to a non-reading client never blocked");
    let ev = expect_abort(
        &agent,
        &c,
        blocked,
        Some(libc::ECONNABORTED),
        "never-reading client",
    );
    assert_identity(&ev, &c, own_netns(), "never-reading client");
    assert_eq!(ev["class"], "zero_window", "{ev}");
    let stall = agent
        .wait_for(
            |e| is_socket_event(e, "stall_started", c.server_cookie),
            Duration::ZERO,
        )
        .expect("a reset without a stall_started before it");
    assert_eq!(stall["class"], "zero_window", "{stall}");
    drop(c);
    let events = agent.stop();
    if trouble_hooks() {
        // No write hook named the writer: the kernel's holder iterator (iter/task_file,
        // every kernel of the matrix) found it, not a walk of /proc.
        let stats = events
            .iter()
            .rev()
            .find(|e| is_event(e, "stats"))
            .expect("a final stats line");
        assert!(
            stats["holder_passes"].as_u64() >= Some(1) && stats["proc_walks"].as_u64() == Some(0),
            "the holder was not found by the kernel's holder iterator: {stats}"
        );
    }
}

/// c. A dead peer (its netns drops everything, link up): no_ack, reset, the writer fails.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn c_dead_peer_is_reset() {
    require_root();
    let ns = NetNs::linked_to_host().expect("creating a netns with a veth link");
    let l = Listener::bind(SocketAddr::from((ns.peer_addr(), 0))).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    let mut c = l.connect(Some(&ns), ConnOpts::default()).unwrap();
    // Paced and read, so the peer dies with an open window (not a zero-window wedge).
    c.start(Some(WriteMode::Paced(2 << 20)), ReadMode::Fast, 2)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.reader().report().bytes == 0 {
        assert!(
            Instant::now() < deadline,
            "the peer read nothing in 20 s before the blackhole"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ns.blackhole()
        .expect("nftables blackhole in the peer netns");
    let dead = Instant::now();
    let ev = expect_abort(&agent, &c, dead, None, "dead peer");
    assert_identity(&ev, &c, own_netns(), "dead peer");
    assert_eq!(ev["class"], "no_ack", "{ev}");
    assert!(ev["retransmits"].as_u64() > Some(0), "{ev}");
    drop(c);
    agent.stop();
    drop(ns);
}

/// d. An idle connection and a healthy reader: no stall event over 2.5× the threshold, and
/// every byte arrives intact.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn d_idle_and_healthy_connections_are_left_alone() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    let idle = l.connect(None, ConnOpts::default()).unwrap();
    let mut healthy = l.connect(None, ConnOpts::default()).unwrap();
    healthy
        .start(Some(WriteMode::Paced(1 << 20)), ReadMode::Fast, 3)
        .unwrap();
    let cookies = [idle.server_cookie, healthy.server_cookie];
    agent.assert_none(
        |e| {
            e["cookie"].as_u64().is_some_and(|c| cookies.contains(&c))
                && [
                    "stall_started",
                    "socket_reset",
                    "reset_failed",
                    "reset_skipped",
                ]
                .iter()
                .any(|n| is_event(e, n))
        },
        THRESHOLD * 5 / 2,
        "idle and healthy connections",
    );
    let d = healthy.finish_intact("healthy reader", Duration::from_secs(60));
    assert!(d.written > 0, "the healthy writer wrote nothing: {d:?}");
    drop(idle);
    agent.stop();
}

/// Poll `f` every 50 ms for up to `timeout` until it returns Some.
fn poll<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    tests::poll(timeout, Duration::from_millis(50), f)
}

/// The TCP state of the socket with this cookie in our namespace (None: gone).
fn diag_state(cookie: u64) -> Option<u8> {
    let ns = monitor::reset::own_netns().expect("own netns");
    monitor::reset::dump_tcp(&ns)
        .expect("sock_diag dump of our namespace")
        .into_iter()
        .find(|d| d.cookie == cookie)
        .map(|d| d.state)
}

/// Whether destroying an orphaned FIN_WAIT1 socket stuck on a zero window frees it on this
/// kernel (the 2024 fix "tcp: fix forever orphan socket caused by tcp_abort"), measured on a
/// socket of our own: (safe, what was seen).
fn kernel_orphan_destroy_is_safe() -> (bool, String) {
    const FIN_WAIT1: u8 = 4;
    let listener = TcpListener::bind(loopback()).unwrap();
    let client = sock::connect(
        listener.local_addr().unwrap(),
        Some(4096),
        Duration::from_secs(5),
    )
    .expect("connecting the orphan's peer");
    let (server, _) = listener.accept().unwrap();
    sock::set_sndbuf(&server, 64 * 1024).unwrap();
    server.set_nonblocking(true).unwrap();
    // Fill the peer's window and our send buffer: the peer never reads.
    let chunk = vec![0x5au8; 16 * 1024];
    let full = poll(Duration::from_secs(20), || {
        loop {
            match (&server).write(&chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the orphan's send queue: {e}"),
            }
        }
        let info = sock::tcp_info(&server).unwrap();
        (info.tcpi_snd_wnd == 0).then_some(())
    });
    assert!(full.is_some(), "the peer's window never closed");
    let cookie = sock::cookie(&server).unwrap();
    let queued = sock::send_queue(&server).unwrap();
    assert!(queued > 0, "nothing queued before close");
    // The application closes: the socket becomes an orphan in FIN_WAIT1, data still queued.
    drop(server);
    let state = poll(Duration::from_secs(5), || diag_state(cookie));
    assert_eq!(
        state,
        Some(FIN_WAIT1),
        "the closed socket (cookie {cookie}, {queued} bytes queued) is not a FIN_WAIT1 orphan"
    );
    let ns = monitor::reset::own_netns().expect("own netns");
    let (target, _) = monitor::reset::dump_tcp(&ns)
        .unwrap()
        .into_iter()
        .find(|d| d.cookie == cookie)
        .map(|d| {
            (
                monitor::reset::Target {
                    cookie,
                    netns: 0,
                    family: d.family,
                    local: d.local,
                    remote: d.remote,
                    pid_hint: None,
                    ifindex: d.ifindex,
                },
                d,
            )
        })
        .expect("the orphan vanished before it was destroyed");
    let destroyed = monitor::reset::Destroyer::new().destroy(&target);
    let gone = poll(Duration::from_secs(3), || {
        diag_state(cookie).is_none().then_some(())
    });
    let detail = format!(
        "orphan cookie {cookie} ({queued} bytes queued, FIN_WAIT1): SOCK_DESTROY {}, then {}",
        match &destroyed {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("failed: {e}"),
        },
        match diag_state(cookie) {
            None => "gone".to_string(),
            Some(s) => format!(
                "still there 3 s later in {}",
                monitor::reset::tcp_state_name(s)
            ),
        }
    );
    // Cleanup even on a kernel that keeps the orphan: the peer's RST ends it.
    let _ = sock::set_linger_zero(&client);
    drop(client);
    (gone.is_some(), detail)
}

/// e. The agent's start-up verdict on resetting orphans matches the kernel's behaviour.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn e_orphan_reset_guard_matches_the_kernel() {
    require_root();
    // The agent first: it loads the sock_diag modules where they are modules (the guests
    // leave that to it), and its verdict comes from its own start-up self-test.
    let agent = AgentOpts::new(policy(&[22], 1000, "")).start();
    let ev = started(&agent);
    agent.stop();
    let (safe, detail) = kernel_orphan_destroy_is_safe();
    eprintln!("{MARK} orphan-measured safe={safe} {detail}");
    let Some(orphan) = ev.get("orphan_reset").filter(|v| !v.is_null()) else {
        panic!(
            "agent_started has no `orphan_reset` field (expected {{\"safe\": bool, \"detail\": \
             \"...\"}}); this kernel's orphan destroy is {}: {detail}\n{ev}",
            if safe { "safe" } else { "unsafe" }
        );
    };
    let agent_safe = orphan["safe"]
        .as_bool()
        .unwrap_or_else(|| panic!("agent_started.orphan_reset.safe is not a bool: {ev}"));
    assert!(
        orphan["detail"].as_str().is_some(),
        "agent_started.orphan_reset.detail is missing: {ev}"
    );
    assert_eq!(
        agent_safe, safe,
        "agent_started.orphan_reset says safe={agent_safe} ({}), the kernel measured here: {detail}",
        orphan["detail"]
    );
}

/// What the sendfile writer of scenario f saw.
#[derive(Default)]
struct SendfileState {
    /// Bytes sendfile() accepted, and when the count last grew.
    progress: (u64, Option<Instant>),
    /// The errno that ended it, and when.
    failed: Option<(i32, Instant)>,
}

/// f. A sendfile() writer to a client that never reads (before Linux 6.5 this goes through
/// `do_tcp_sendpages`, the send_pages hook, not `tcp_sendmsg_locked`): reset, ECONNABORTED,
/// and the event names the writer thread, which only the send-side hook can know.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn f_sendfile_writer_to_a_non_reader_is_reset() {
    use std::os::fd::AsRawFd;
    use std::sync::{Arc, Mutex};
    require_root();
    const FILE_LEN: usize = 4 << 20;
    let path = std::env::temp_dir().join(format!("tcpstall-sendfile-{}", std::process::id()));
    std::fs::write(&path, vec![0xa5u8; FILE_LEN]).expect("writing the sendfile source");
    let file = std::fs::File::open(&path).expect("opening the sendfile source");
    let _ = std::fs::remove_file(&path);
    let listener = TcpListener::bind(loopback()).unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent = AgentOpts::new(reset_policy(&[port])).start();
    let client = sock::connect(listener.local_addr().unwrap(), None, Duration::from_secs(5))
        .expect("connecting the client");
    let (server, client_addr) = listener.accept().unwrap();
    let server = Arc::new(server);
    let cookie = sock::cookie(&*server).unwrap();
    let state = Arc::new(Mutex::new(SendfileState::default()));
    let writer = {
        let (server, state) = (Arc::clone(&server), Arc::clone(&state));
        std::thread::Builder::new()
            .name(tests::traffic::WRITER_COMM.into())
            .spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut offset: libc::off_t = 0;
                while Instant::now() < deadline {
                    if offset as usize >= FILE_LEN {
                        offset = 0;
                    }
                    let left = FILE_LEN - offset as usize;
                    // SAFETY: valid fds; offset is ours.
                    let n = unsafe {
                        libc::sendfile(server.as_raw_fd(), file.as_raw_fd(), &mut offset, left)
                    };
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    if n < 0 {
                        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                        if errno != libc::EINTR {
                            st.failed = Some((errno, Instant::now()));
                            return;
                        }
                    } else {
                        st.progress = (st.progress.0 + n as u64, Some(Instant::now()));
                    }
                }
            })
            .expect("spawning the sendfile writer")
    };
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    // The writer fills the client's receive buffer and its own send buffer, then blocks in
    // sendfile(); the reset must end it within the threshold (plus allowances) of that.
    let started_at = Instant::now();
    let limit = Duration::from_secs(15) + bound();
    let failed = poll(limit, || lock().failed);
    let sent = lock().progress;
    // Unblock and end the writer whatever happened, then judge.
    let _ = sock::set_linger_zero(&client);
    sock::shutdown(&*server, libc::SHUT_RDWR);
    sock::shutdown(&client, libc::SHUT_RDWR);
    let end = Instant::now() + Duration::from_secs(10);
    while !writer.is_finished() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(writer.is_finished(), "the sendfile writer did not end");
    let _ = writer.join();
    let Some((errno, at)) = failed else {
        panic!(
            "the sendfile() writer did not fail within {limit:?} ({} bytes sent){}",
            sent.0,
            agent.diagnostics()
        );
    };
    let last_progress = sent.1.unwrap_or(started_at);
    eprintln!(
        "sendfile writer: {} bytes sent, last progress {:?} after start, failed with {} {:?} \
         after start",
        sent.0,
        last_progress.saturating_duration_since(started_at),
        sock::errno_name(errno),
        at.saturating_duration_since(started_at)
    );
    // A sendfile() blocked when the reset comes returns the bytes it had queued; the next
    // call then fails with EPIPE (the socket is shut down) rather than ECONNABORTED.
    assert!(
        errno == libc::ECONNABORTED || errno == libc::EPIPE,
        "sendfile() failed with {}, expected ECONNABORTED or EPIPE{}",
        sock::errno_name(errno),
        agent.diagnostics()
    );
    let ev = agent
        .wait_for(
            |e| is_socket_event(e, "socket_reset", cookie),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no socket_reset for cookie {cookie}{}", agent.diagnostics()));
    assert_eq!(ev["class"], "zero_window", "{ev}");
    assert_eq!(
        tests::check::addr(&ev, "remote"),
        client_addr,
        "remote in {ev}"
    );
    assert_eq!(
        ev["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "the send-side hook did not attribute the sendfile() writer: pid in {ev}"
    );
    assert_eq!(
        ev["comm"],
        tests::traffic::WRITER_COMM,
        "the send-side hook did not attribute the sendfile() writer: comm in {ev}"
    );
    agent.stop();
}

/// g. An orphan the agent must judge: the application closes a socket whose peer is dead
/// while data is in flight (FIN_WAIT1, retransmitting). A reset rule selects it (`no_ack`):
/// where the agent found destroying orphans safe it is reset and leaves the kernel; where it
/// found it unsafe (5.10 without the tcp_abort fix) the agent reports `reset_skipped` with
/// guard `orphan_unsafe` and the socket is left to the kernel.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn g_orphan_to_a_dead_peer_follows_the_orphan_guard() {
    require_root();
    let ns = NetNs::linked_to_host().expect("creating a netns with a veth link");
    let l = Listener::bind(SocketAddr::from((ns.peer_addr(), 0))).unwrap();
    let agent = AgentOpts::new(reset_policy(&[l.port()])).start();
    let safe = started(&agent)["orphan_reset"]["safe"]
        .as_bool()
        .expect("agent_started.orphan_reset.safe");
    let mut c = l.connect(Some(&ns), ConnOpts::default()).unwrap();
    ns.blackhole()
        .expect("nftables blackhole in the peer netns");
    {
        let mut s = c.server();
        s.set_nonblocking(true).unwrap();
        s.write_all(&[7u8; 16 * 1024])
            .expect("16 KiB fit in an empty send buffer");
    }
    let cookie = c.server_cookie;
    c.close_server();
    let closed = Instant::now();
    assert!(
        poll(Duration::from_secs(2), || (diag_state(cookie) == Some(4))
            .then_some(()))
        .is_some(),
        "the closed socket did not become an orphan in FIN_WAIT1 (state {:?})",
        diag_state(cookie)
    );
    let verdict = agent
        .wait_for(
            |e| {
                is_socket_event(e, "socket_reset", cookie)
                    || is_socket_event(e, "reset_skipped", cookie)
                    || is_socket_event(e, "reset_failed", cookie)
            },
            (closed + bound()).saturating_duration_since(Instant::now()),
        )
        .unwrap_or_else(|| {
            panic!(
                "no reset decision about the orphan within {:?}{}",
                bound(),
                agent.diagnostics()
            )
        });
    eprintln!("{MARK} orphan-guard safe={safe} {verdict}");
    assert_eq!(verdict["class"], "no_ack", "{verdict}");
    if safe {
        assert_eq!(verdict["event"], "socket_reset", "{verdict}");
        assert!(
            poll(Duration::from_secs(2), || diag_state(cookie)
                .is_none()
                .then_some(()))
            .is_some(),
            "the reset orphan is still in the kernel: state {:?}",
            diag_state(cookie)
        );
    } else {
        assert_eq!(verdict["event"], "reset_skipped", "{verdict}");
        assert_eq!(verdict["guard"], "orphan_unsafe", "{verdict}");
        assert_eq!(
            diag_state(cookie),
            Some(4),
            "an orphan the agent must not reset is no longer in FIN_WAIT1"
        );
    }
    agent.stop();
    drop(ns);
}

/// h. A restart keeps the kernel state. An observing agent tracks a non-reading client's
/// wedge and is killed (SIGKILL: nothing saved at exit); the next agent, with the same
/// state and pin directories and a reset rule, adopts the pinned map and resets the wedge
/// at once, with the wedge's whole age as its stall time (a fresh map would only start
/// tracking it at its next persist-probe answer, and reset it a threshold after that).
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn h_a_restart_adopts_the_pinned_map() {
    require_root();
    let dirs = StateDirs::new();
    let l = Listener::bind(loopback()).unwrap();
    let a = AgentOpts::new(policy(&[22], 1000, "")).state(&dirs).start();
    let mut c = l.connect(None, ConnOpts::default()).unwrap();
    c.start(Some(WriteMode::Stream), ReadMode::Never, 8)
        .unwrap();
    let blocked = c
        .writer()
        .wait_blocked(Duration::from_millis(300), Duration::from_secs(30))
        .expect("the writer to a non-reading client never blocked");
    a.wait_for(
        |e| is_socket_event(e, "stall_started", c.server_cookie),
        (blocked + bound()).saturating_duration_since(Instant::now()),
    )
    .unwrap_or_else(|| panic!("the first agent saw no stall{}", a.diagnostics()));
    // Let the wedge age well past the threshold (the scenario's timeline).
    std::thread::sleep(THRESHOLD * 2);
    a.kill();
    let age = blocked.elapsed();
    let b = AgentOpts::new(reset_policy(&[l.port()]))
        .state(&dirs)
        .start();
    let st = started(&b)["state"].clone();
    eprintln!("{MARK} restart state {st}");
    assert_eq!(st["adopted"], true, "the pinned map was not adopted: {st}");
    let ev = b
        .wait_for(
            |e| is_socket_event(e, "socket_reset", c.server_cookie),
            bound(),
        )
        .unwrap_or_else(|| panic!("the adopted wedge was not reset{}", b.diagnostics()));
    let stalled = ev["stalled_for_ms"].as_u64().unwrap_or(0);
    assert!(
        stalled + 500 >= age.as_millis() as u64,
        "stalled_for_ms {stalled} < the wedge's age at the restart {age:?}: the stall clock \
         started over: {ev}"
    );
    match c.writer().wait_outcome(Duration::from_secs(10)) {
        Some(Outcome::Failed { errno, .. }) => assert_eq!(errno, libc::ECONNABORTED),
        other => panic!("the blocked writer did not fail after the reset: {other:?}"),
    }
    drop(c);
    b.stop();
}

/// i. The read side: a reader that pauses is `recv_backlog` until it reads again — with no
/// read hook (the default), its reads after the pause come from the agent's per-tick
/// sock_diag lookup; with `TCPSTALL_READ_HOOK=1` (6.1-kprobe, 7.x), from the hook.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn i_a_paused_reader_is_recv_backlog_until_it_reads_again() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let agent = AgentOpts::new(policy(&[22], 1000, "")).start();
    if trouble_hooks() {
        // No hook sees the read side: the paused reader goes unreported, as `degraded` says.
        tests::check::paused_reader_is_not_seen(&agent, &l);
    } else {
        tests::check::paused_reader_is_recv_backlog(&agent, &l, EMULATION_SLACK);
    }
    agent.stop();
}
