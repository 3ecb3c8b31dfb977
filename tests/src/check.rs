//! Assertions shared by the test files: event identity, timing bounds, reset outcomes; and
//! the wedged connection most of them start from.

use crate::agent::{is_socket_event, Agent, Received};
use crate::netns::NetNs;
use crate::traffic::{Conn, ConnOpts, Listener, Outcome, ReadMode, WriteMode, WRITER_COMM};
use crate::{detection_bound, sock};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Extra time waited past a bound before giving up, so a late event is reported with its
/// actual latency instead of as missing.
pub const GRACE: Duration = Duration::from_secs(5);

/// Network namespace inode of the test process.
pub fn own_netns() -> u64 {
    sock::current_netns_inode().expect("reading /proc/thread-self/ns/net")
}

/// The socket address in field `field` of `ev`.
pub fn addr(ev: &Value, field: &str) -> SocketAddr {
    ev[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("field {field} is not an ip:port: {ev}"))
}

/// The event is about `c`'s server socket and names it right: cookie, netns, family,
/// addresses, and the writer (this process, thread "tswriter").
pub fn assert_identity(ev: &Value, c: &Conn, netns: u64, what: &str) {
    assert_eq!(
        ev["cookie"].as_u64(),
        Some(c.server_cookie),
        "{what}: cookie in {ev}"
    );
    assert_eq!(ev["netns"].as_u64(), Some(netns), "{what}: netns in {ev}");
    let family = if c.server_addr.is_ipv4() {
        "inet"
    } else {
        "inet6"
    };
    assert_eq!(ev["family"], family, "{what}: family in {ev}");
    assert_eq!(addr(ev, "local"), c.server_addr, "{what}: local in {ev}");
    assert_eq!(addr(ev, "remote"), c.client_addr, "{what}: remote in {ev}");
    assert_eq!(
        ev["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{what}: pid in {ev}"
    );
    assert_eq!(ev["comm"], WRITER_COMM, "{what}: comm in {ev}");
}

/// Wait for the first `name` event about `cookie`; it must arrive within
/// [`detection_bound`] of `since` (the moment progress stopped). Returns it.
pub fn expect_event_within(
    agent: &Agent,
    name: &str,
    cookie: u64,
    since: Instant,
    what: &str,
) -> Value {
    let bound = detection_bound();
    let wait = (since + bound + GRACE).saturating_duration_since(Instant::now());
    let Some(Received { at, json, .. }) =
        agent.wait_for_received(0, |e| is_socket_event(e, name, cookie), wait)
    else {
        panic!(
            "{what}: no {name} for cookie {cookie} within {:?} of the wedge{}",
            bound + GRACE,
            agent.diagnostics()
        );
    };
    let latency = at.saturating_duration_since(since);
    eprintln!("{what}: {name} {latency:?} after the wedge (bound {bound:?})");
    assert!(
        latency <= bound,
        "{what}: {name} came {latency:?} after the wedge, bound is {bound:?}: {json}"
    );
    json
}

/// The connection's blocked `send()` must fail with ECONNABORTED within [`detection_bound`] of
/// `since`, and the agent must have said `socket_reset` for the server socket. Returns that
/// event.
pub fn expect_reset(agent: &Agent, c: &Conn, since: Instant, what: &str) -> Value {
    let bound = detection_bound();
    let wait = (since + bound + GRACE).saturating_duration_since(Instant::now());
    let outcome = c.writer().wait_outcome(wait);
    match outcome {
        Some(Outcome::Failed { errno, at }) => {
            let latency = at.saturating_duration_since(since);
            eprintln!("{what}: send() failed with {} {latency:?} after the wedge", sock::errno_name(errno));
            assert_eq!(
                errno,
                libc::ECONNABORTED,
                "{what}: the blocked send() failed with {}, expected ECONNABORTED (103){}",
                sock::errno_name(errno),
                agent.diagnostics()
            );
            assert!(
                latency <= bound,
                "{what}: the blocked send() returned {latency:?} after the wedge, bound {bound:?}{}",
                agent.diagnostics()
            );
        }
        other => panic!(
            "{what}: the blocked send() did not fail within {:?} of the wedge (outcome {other:?}){}",
            bound + GRACE,
            agent.diagnostics()
        ),
    }
    let ev = agent
        .wait_for(
            |e| is_socket_event(e, "socket_reset", c.server_cookie),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|| {
            panic!(
                "{what}: send() was aborted but no socket_reset event for cookie {}{}",
                c.server_cookie,
                agent.diagnostics()
            )
        });
    assert_eq!(ev["action"], "reset", "{what}: {ev}");
    ev
}

/// The writer of `c` is still blocked in `send()` and has not failed: nothing reset it.
pub fn assert_still_blocked(c: &Conn, what: &str) {
    assert_eq!(c.writer().outcome(), None, "{what}: the writer ended");
    let since = c.writer().in_send_since();
    assert!(
        since.is_some_and(|s| s.elapsed() >= Duration::from_millis(500)),
        "{what}: the writer should still be blocked in send(), in send since {since:?}"
    );
}

/// The kernel's view of `c`'s server socket right now, for comparing with what the agent
/// reported: (snd_wnd, retransmits, bytes unread in the receive queue).
pub fn kernel_view(c: &Conn) -> (u32, u8, u64) {
    let info = sock::tcp_info(c.server()).expect("TCP_INFO");
    let unread = sock::recv_queue(c.server()).expect("SIOCINQ");
    (info.tcpi_snd_wnd, info.tcpi_retransmits, unread)
}

/// The server sockets here never have unread data: the agent must report `recv_unread` 0
/// (as the kernel does) and never a `recv_backlog` stall for them.
pub fn assert_no_recv_backlog(agent: &Agent, c: &Conn, what: &str) {
    let (_, _, unread) = kernel_view(c);
    assert_eq!(
        unread, 0,
        "{what}: test bug, the server socket has unread data"
    );
    for ev in agent.matching(|e| e["cookie"].as_u64() == Some(c.server_cookie)) {
        assert_eq!(
            ev["recv_unread"], 0,
            "{what}: the kernel has 0 bytes unread on this socket (SIOCINQ), the agent says: {ev}"
        );
        assert_ne!(
            ev["class"], "recv_backlog",
            "{what}: recv_backlog on a socket with nothing to read: {ev}"
        );
    }
}

/// The stalls an event stream says are active after its last event: every (cookie, class)
/// with a `stall_started` not yet followed by `stall_cleared` or `stall_closed` for that
/// class, or by a `socket_reset` of that cookie (the agent's own reset closes the socket).
/// `stats.stalls_active` must equal its size.
pub fn active_stalls(events: &[Value]) -> std::collections::BTreeSet<(u64, String)> {
    let mut active = std::collections::BTreeSet::new();
    for e in events {
        let (Some(cookie), Some(class)) = (e["cookie"].as_u64(), e["class"].as_str()) else {
            continue;
        };
        match e["event"].as_str() {
            Some("stall_started") => {
                active.insert((cookie, class.to_string()));
            }
            Some("stall_cleared" | "stall_closed") => {
                active.remove(&(cookie, class.to_string()));
            }
            Some("socket_reset") => active.retain(|(c, _)| *c != cookie),
            _ => {}
        }
    }
    active
}

/// Connect a client that never reads (from `client_ns`), start the writer, and wait for it
/// to block. Returns the connection and the moment its writer blocked.
pub fn wedge_in(
    l: &Listener,
    client_ns: Option<&NetNs>,
    opts: ConnOpts,
    seed: u64,
) -> (Conn, Instant) {
    let mut c = l.connect(client_ns, opts).expect("connecting");
    c.start(Some(WriteMode::Stream), ReadMode::Never, seed)
        .expect("starting the writer");
    let blocked = c
        .writer()
        .wait_blocked(Duration::from_millis(300), Duration::from_secs(10))
        .expect("the writer to a non-reading client never blocked");
    (c, blocked)
}

/// [`wedge_in`] from this namespace with default options.
pub fn wedge(l: &Listener, seed: u64) -> (Conn, Instant) {
    wedge_in(l, None, ConnOpts::default(), seed)
}

/// A peer in `ns` connected to `l` and reading a paced stream until data flows, then
/// blackholed with its window open: the connection and the moment the peer went silent.
pub fn blackholed(l: &Listener, ns: &NetNs) -> (Conn, Instant) {
    let mut c = l.connect(Some(ns), ConnOpts::default()).unwrap();
    // Paced so that the reader keeps the window open: the peer dies with an open window
    // (had it advertised 0 just before, the kernel would be probing a zero window instead).
    c.start(Some(WriteMode::Paced(8 << 20)), ReadMode::Fast, 2)
        .unwrap();
    assert!(
        crate::wait_until(Duration::from_secs(5), || c.reader().report().bytes > 0),
        "the peer read nothing before the blackhole"
    );
    ns.blackhole().unwrap();
    let dead = Instant::now();
    let (wnd, _, _) = kernel_view(&c);
    assert!(wnd > 0, "test bug: the window was {wnd} when the peer died");
    (c, dead)
}

/// A client of `l` that reads 64 KiB every 10 ms while the server streams to it, stops
/// reading after 1 s for `pause`, then reads again. Returns it, when it stops reading, and
/// when it resumes.
fn paused_reader(l: &Listener, pause: Duration) -> (Conn, Instant, Instant) {
    let mut c = l.connect(None, ConnOpts::default()).unwrap();
    let after = Duration::from_secs(1);
    let t0 = Instant::now();
    c.start(
        Some(WriteMode::Stream),
        ReadMode::PausedOnce {
            chunk: 64 * 1024,
            every: Duration::from_millis(10),
            after,
            pause,
        },
        1,
    )
    .unwrap();
    (c, t0 + after, t0 + after + pause)
}

/// With `--trouble-hooks` no hook sees the read side: a reader paused for 6 s (as in
/// [`paused_reader_is_recv_backlog`]) gets no `stall_started`, while its writer's side,
/// whose window the pause closed, is seen by the zero-window probes: `zero_window` starts
/// during the pause and clears once the reader resumes, every byte intact.
pub fn paused_reader_is_not_seen(agent: &Agent, l: &Listener) {
    let (mut c, paused, resumed) = paused_reader(l, Duration::from_secs(6));
    let started = agent
        .wait_for_received(
            0,
            |e| is_socket_event(e, "stall_started", c.server_cookie),
            resumed.saturating_duration_since(Instant::now()),
        )
        .unwrap_or_else(|| {
            panic!(
                "no stall_started for the writer to the paused reader within the pause{}",
                agent.diagnostics()
            )
        });
    assert_eq!(started.json["class"], "zero_window", "{}", started.json);
    let cleared = agent
        .wait_for_received(
            0,
            |e| is_socket_event(e, "stall_cleared", c.server_cookie),
            resumed.saturating_duration_since(Instant::now()) + GRACE,
        )
        .unwrap_or_else(|| {
            panic!(
                "no stall_cleared after the reader resumed{}",
                agent.diagnostics()
            )
        });
    assert!(
        cleared.at + Duration::from_millis(300) >= resumed,
        "cleared {:?} before the reader resumed: {}",
        resumed.saturating_duration_since(cleared.at),
        cleared.json
    );
    let d = c.finish_intact("paused reader", Duration::from_secs(60));
    assert!(d.written > 0, "the writer wrote nothing: {d:?}");
    let seen = agent.matching(|e| is_socket_event(e, "stall_started", c.client_cookie));
    assert!(
        seen.is_empty(),
        "--trouble-hooks has no read-side hook, yet the reader's socket was reported: {seen:?}"
    );
    eprintln!(
        "trouble hooks: zero_window started {:?} into the pause, cleared {:?} after it",
        started.at.saturating_duration_since(paused),
        cleared.at.saturating_duration_since(resumed)
    );
}

/// The read side (websockets #105): our own process stops reading what it receives. A
/// client of `l` reads, pauses 5 s, then reads again while the server keeps streaming; the
/// pause must be a `recv_backlog` stall on the client socket (reported before the reader
/// resumes) that its end clears (not before it). With no read hook (the default) the reads
/// after the pause reach the agent through its per-tick sock_diag lookup: the client sends
/// nothing, so no segment refreshes its entry. `slack` widens the bounds (emulated guests).
pub fn paused_reader_is_recv_backlog(agent: &Agent, l: &Listener, slack: Duration) {
    let (c, paused, resumed) = paused_reader(l, Duration::from_secs(5) + slack);
    let started = agent
        .wait_for_received(
            0,
            |e| is_socket_event(e, "stall_started", c.client_cookie),
            resumed.saturating_duration_since(Instant::now()) + GRACE,
        )
        .unwrap_or_else(|| {
            panic!(
                "no stall_started for the paused reader{}",
                agent.diagnostics()
            )
        });
    assert_eq!(started.json["class"], "recv_backlog", "{}", started.json);
    assert!(
        started.json["recv_unread"].as_u64() > Some(0),
        "{}",
        started.json
    );
    assert!(
        started.at < resumed,
        "the stall was reported only after the reader resumed: {}",
        started.json
    );
    let cleared = agent
        .wait_for_received(
            0,
            |e| is_socket_event(e, "stall_cleared", c.client_cookie),
            resumed.saturating_duration_since(Instant::now()) + Duration::from_secs(4) + slack,
        )
        .unwrap_or_else(|| {
            panic!(
                "no stall_cleared after the reader resumed{}",
                agent.diagnostics()
            )
        });
    assert_eq!(cleared.json["class"], "recv_backlog", "{}", cleared.json);
    // Cleared by the reads after the pause, not before (slack: the reader's own start).
    assert!(
        cleared.at + Duration::from_millis(300) >= resumed,
        "cleared {:?} before the reader resumed: {}",
        resumed.saturating_duration_since(cleared.at),
        cleared.json
    );
    eprintln!(
        "recv_backlog started {:?} into the pause, cleared {:?} after it",
        started.at.saturating_duration_since(paused),
        cleared.at.saturating_duration_since(resumed)
    );
    let n = agent
        .matching(|e| is_socket_event(e, "stall_started", c.client_cookie))
        .len();
    assert_eq!(n, 1, "the paused reader's stall started {n} times");
}
