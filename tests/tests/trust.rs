//! Issue 10, trust: the decisions stay right under stress and against dodges. Each test
//! injects one fault on the real kernel: a client from source port 22, a socket that
//! recovers where the map cannot see it, 3,000 peers gone at once, the node's own path gone,
//! a full map, a transient netlink error, a device-bound socket, a dead namespace the
//! reset path held, closes racing the tick.

use serde_json::Value;
use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use tests::agent::{is_event, is_socket_event, Agent, AgentOpts};
use tests::netns::{run_cmd, NetNs};
use tests::traffic::{Conn, ConnOpts, Listener, ReadMode, WriteMode};
use tests::{detection_bound, require_root, sock, SLACK, THRESHOLD, TICK};

/// The suite's thresholds and tick, `guards` as given ("" = the defaults), then `rules`.
fn policy(guards: &str, rules: &str) -> String {
    format!(
        "tick = \"{tick}ms\"\n\n[defaults]\nzero_window_after = \"{t}ms\"\nno_ack_after = \"{t}ms\"\n\
         slow_drain_floor = \"1KiB/s\"\nslow_drain_window = \"4s\"\nrecv_backlog_after = \"{t}ms\"\n\n\
         {guards}\n\n{rules}",
        tick = TICK.as_millis(),
        t = THRESHOLD.as_millis(),
    )
}

fn rule(name: &str, selector: &str, action: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\n{selector}\naction = \"{action}\"\n\
         classes = [\"zero_window\", \"no_ack\"]\n\n"
    )
}

fn cookie_of(e: &Value) -> u64 {
    e["cookie"].as_u64().unwrap_or(0)
}

/// Raise this process's soft fd limit to its hard limit (thousands of sockets).
fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A TCP socket bound to `local` (and to device `dev`), not yet connected or listening.
fn bound_socket(local: SocketAddr, dev: Option<&str>) -> OwnedFd {
    // SAFETY: plain syscalls on a fresh descriptor we own.
    unsafe {
        let fd = cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))
        .expect("socket");
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            4,
        );
        if let Some(dev) = dev {
            cvt(libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr() as *const libc::c_void,
                dev.len() as libc::socklen_t,
            ))
            .expect("SO_BINDTODEVICE");
        }
        sock::bind(&fd, local).unwrap_or_else(|e| panic!("bind {local}: {e}"));
        fd
    }
}

fn listen_on(local: SocketAddr, dev: Option<&str>) -> TcpListener {
    let fd = bound_socket(local, dev);
    // SAFETY: fd is a bound TCP socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 4096) }).expect("listen");
    TcpListener::from(fd)
}

/// Connect from `local` (source address and port) to `to`, with a small receive buffer.
fn connect_from(local: SocketAddr, to: SocketAddr) -> TcpStream {
    let fd = bound_socket(local, None);
    sock::set_rcvbuf(&fd, 16 * 1024).unwrap();
    sock::connect_to(&fd, to).unwrap_or_else(|e| panic!("connect {local} -> {to}: {e}"));
    TcpStream::from(fd)
}

/// Write until the socket takes no more (non-blocking), then leave it blocking again.
fn fill(s: &TcpStream) -> usize {
    s.set_nonblocking(true).unwrap();
    let buf = [0x5au8; 16 * 1024];
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match (&*s).write(&buf) {
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // The peer's window may still be closing: wait a little for more room once.
                std::thread::sleep(Duration::from_millis(100));
                match (&*s).write(&buf) {
                    Ok(n) => total += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            Err(e) => panic!("write: {e}"),
        }
        assert!(Instant::now() < deadline, "fill never filled the socket");
    }
    s.set_nonblocking(false).unwrap();
    total
}

/// A thread that writes to `s` until a write fails; returns that errno.
fn stream_writer(s: TcpStream) -> std::thread::JoinHandle<Option<i32>> {
    std::thread::spawn(move || {
        let buf = [0x33u8; 16 * 1024];
        let mut s = s;
        loop {
            if let Err(e) = s.write_all(&buf) {
                return e.raw_os_error();
            }
        }
    })
}

fn resets_of(agent: &Agent, cookies: &HashSet<u64>) -> Vec<Value> {
    agent.matching(|e| is_event(e, "socket_reset") && cookies.contains(&cookie_of(e)))
}

/// Wait until `pred` holds or `timeout` passes; returns whether it held.
fn wait_until(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The host-side name of the interface that carries `addr`.
fn ifname_of(addr: Ipv4Addr) -> String {
    let out = run_cmd("ip", &["-o", "-4", "addr", "show"], None).unwrap();
    out.lines()
        .find(|l| l.contains(&format!(" {addr}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|s| s.trim_end_matches(':').to_string())
        .unwrap_or_else(|| panic!("no interface carries {addr}:\n{out}"))
}

fn link_exists(ifname: &str) -> bool {
    std::path::Path::new(&format!("/sys/class/net/{ifname}")).exists()
}

/// A peer namespace on its own /24 (10.231.K.0/24: host .1, namespace .2), linked to the
/// host by a veth pair. Deleted (with the pair) when dropped.
struct Subnet {
    ns: NetNs,
    host: Ipv4Addr,
}

fn subnet(k: u8) -> Subnet {
    let ns = NetNs::new().unwrap();
    let (h, p) = (
        format!("tsq{}h{k}", std::process::id() % 10000),
        format!("tsq{}p{k}", std::process::id() % 10000),
    );
    let host = Ipv4Addr::new(10, 231, k, 1);
    let peer = Ipv4Addr::new(10, 231, k, 2);
    run_cmd(
        "ip",
        &[
            "link",
            "add",
            &h,
            "type",
            "veth",
            "peer",
            "name",
            &p,
            "netns",
            ns.name(),
        ],
        None,
    )
    .unwrap();
    run_cmd(
        "ip",
        &["addr", "add", &format!("{host}/24"), "dev", &h],
        None,
    )
    .unwrap();
    run_cmd("ip", &["link", "set", &h, "up"], None).unwrap();
    run_cmd(
        "ip",
        &[
            "-n",
            ns.name(),
            "addr",
            "add",
            &format!("{peer}/24"),
            "dev",
            &p,
        ],
        None,
    )
    .unwrap();
    run_cmd("ip", &["-n", ns.name(), "link", "set", &p, "up"], None).unwrap();
    Subnet { ns, host }
}

/// An nftables table on the host dropping every packet from 10.231.0.0/16: the node's own
/// path to those peers is gone. Removed when dropped.
struct HostDrop;

const HOST_DROP_TABLE: &str = "tcpstall_test_partition";

impl HostDrop {
    fn new() -> HostDrop {
        let rules = format!(
            "table inet {HOST_DROP_TABLE} {{\n\
               chain input {{ type filter hook input priority -300; policy accept; ip saddr 10.231.0.0/16 drop; }}\n\
             }}\n"
        );
        run_cmd("nft", &["-f", "-"], Some(&rules)).unwrap();
        HostDrop
    }
}

impl Drop for HostDrop {
    fn drop(&mut self) {
        let _ = run_cmd("nft", &["delete", "table", "inet", HOST_DROP_TABLE], None);
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_client_from_source_port_22_is_reset_and_our_outgoing_ssh_is_not() {
    require_root();
    let ns = NetNs::linked_to_host().unwrap();
    let client_ns = NetNs::linked_to_host().unwrap();
    // Our service, and a client that connects to it from source port 22 and stops reading.
    let svc = listen_on(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), None);
    let svc_addr = svc.local_addr().unwrap();
    // A remote SSH server (in the namespace) our host-side client writes to; it stops reading.
    let ssh = ns.run(|| listen_on(SocketAddr::from((ns.addr(), 22)), None));
    let rules = format!(
        "{}{}",
        rule(
            "svc",
            &format!("local_ports = [{}]", svc_addr.port()),
            "reset"
        ),
        rule("ssh-out", "remote_ports = [22]", "reset")
    );
    // Default guards: protect_ports = [22].
    let agent = AgentOpts::new(policy("", &rules)).start();
    let to = SocketAddr::from((client_ns.peer_addr(), svc_addr.port()));
    let dodger = client_ns.run(|| connect_from(SocketAddr::from((client_ns.addr(), 22)), to));
    let (dodger_server, _) = svc.accept().unwrap();
    sock::set_sndbuf(&dodger_server, 64 * 1024).unwrap();
    let dodger_cookie = sock::cookie(&dodger_server).unwrap();
    let out = connect_from(
        SocketAddr::from((ns.peer_addr(), 0)),
        SocketAddr::from((ns.addr(), 22)),
    );
    sock::set_sndbuf(&out, 64 * 1024).unwrap();
    let out_cookie = sock::cookie(&out).unwrap();
    let (_ssh_side, _) = ssh.accept().unwrap();
    let started = Instant::now();
    let w1 = stream_writer(dodger_server.try_clone().unwrap());
    let _w2 = stream_writer(out.try_clone().unwrap());
    let bound = detection_bound() + Duration::from_secs(2);
    let reset = agent
        .wait_for(|e| is_socket_event(e, "socket_reset", dodger_cookie), bound)
        .unwrap_or_else(|| {
            panic!(
                "the client from source port 22 was not reset within {bound:?}{}",
                agent.diagnostics()
            )
        });
    assert_eq!(reset["rule"], "svc", "{reset}");
    assert_eq!(w1.join().unwrap(), Some(libc::ECONNABORTED));
    let skipped = agent
        .wait_for(
            |e| is_socket_event(e, "reset_skipped", out_cookie),
            (started + bound).saturating_duration_since(Instant::now()) + Duration::from_secs(1),
        )
        .unwrap_or_else(|| {
            panic!(
                "no reset_skipped for our outgoing SSH{}",
                agent.diagnostics()
            )
        });
    assert_eq!(skipped["guard"], "protected_port", "{skipped}");
    assert!(
        skipped["detail"].as_str().unwrap().contains("outgoing"),
        "{skipped}"
    );
    assert!(agent
        .matching(|e| is_socket_event(e, "socket_reset", out_cookie))
        .is_empty());
    drop((dodger, out));
    agent.stop();
}

/// The ACK hook sees segments of ESTABLISHED sockets only: in CLOSE_WAIT (the peer half-
/// closed) the map misses the peer's ACKs. Here the peer reads everything after the map
/// saw a zero window; the kernel lookup before the reset sees the queue is empty.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_socket_that_recovered_where_the_map_cannot_see_is_not_reset() {
    require_root();
    let ns = NetNs::linked_to_host().unwrap();
    let l = listen_on(SocketAddr::from((ns.peer_addr(), 0)), None);
    let addr = l.local_addr().unwrap();
    let agent = AgentOpts::new(policy(
        "",
        &rule("svc", &format!("local_ports = [{}]", addr.port()), "reset"),
    ))
    .start();
    let mut client = ns.run(|| connect_from(SocketAddr::from((ns.addr(), 0)), addr));
    let (server, _) = l.accept().unwrap();
    sock::set_sndbuf(&server, 128 * 1024).unwrap();
    let cookie = sock::cookie(&server).unwrap();
    // The client does not read: the window closes while ESTABLISHED (the map sees it).
    let written = fill(&server);
    std::thread::sleep(Duration::from_millis(300));
    // Then it half-closes: the server socket goes to CLOSE_WAIT.
    client.shutdown(Shutdown::Write).unwrap();
    let mut probe = [0u8; 1];
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!((&server).read(&mut probe).unwrap(), 0, "expected EOF");
    // Well before the threshold, the client reads everything.
    std::thread::sleep(THRESHOLD / 2);
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while got < written {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("client read: {e}"),
        }
    }
    assert_eq!(got, written);
    assert!(
        wait_until(Duration::from_secs(5), || sock::send_queue(&server)
            .unwrap()
            == 0),
        "the server's send queue did not drain"
    );
    // Past threshold + ticks: never reset.
    agent.assert_none(
        |e| is_socket_event(e, "socket_reset", cookie),
        THRESHOLD + 4 * TICK + SLACK,
        "a socket whose peer read everything",
    );
    // The connection still works.
    (&server).write_all(b"x").unwrap();
    let n = client.read(&mut buf).unwrap();
    assert_eq!(n, 1);
    // If the map's stale view started a stall, the live check said why it did not reset.
    for e in agent.matching(|e| is_socket_event(e, "reset_skipped", cookie)) {
        assert_eq!(e["guard"], "not_stalled_anymore", "{e}");
    }
    agent.stop();
}

/// The ocpp-go report: thousands of charge points vanish at once. 3,000 peers of one
/// network go dark while the node's other peers are fine: under the default guards every
/// one of them is reset as it crosses the threshold, the many in one tick and the
/// stragglers (data queued a second later) as they cross theirs.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn three_thousand_dead_peers_are_reset_together_under_default_guards() {
    require_root();
    raise_nofile();
    const N: usize = 3000;
    let dead = NetNs::linked_to_host().unwrap();
    let live = NetNs::linked_to_host().unwrap();
    let l = listen_on(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), None);
    let port = l.local_addr().unwrap().port();
    let healthy = Listener::bind(SocketAddr::from((live.peer_addr(), 0))).unwrap();
    let rules = rule(
        "ocpp",
        &format!("local_ports = [{port}, {}]", healthy.port()),
        "reset",
    );
    let agent = AgentOpts::new(policy("", &rules)).start();
    // The healthy charge points: paced streams read at once.
    let mut ok: Vec<Conn> = (0..8)
        .map(|i| {
            let mut c = healthy.connect(Some(&live), ConnOpts::default()).unwrap();
            c.start(Some(WriteMode::Paced(64 * 1024)), ReadMode::Fast, 500 + i)
                .unwrap();
            c
        })
        .collect();
    let to = SocketAddr::from((dead.peer_addr(), port));
    let clients: Vec<TcpStream> = dead.run(|| {
        (0..N)
            .map(|_| sock::connect(to, None, Duration::from_secs(10)).expect("connect"))
            .collect()
    });
    let mut servers = Vec::with_capacity(N);
    while servers.len() < N {
        let (s, _) = l.accept().unwrap();
        servers.push(s);
    }
    let cookies: HashSet<u64> = servers.iter().map(|s| sock::cookie(s).unwrap()).collect();
    dead.blackhole().unwrap();
    // Every charge point has a message in flight when it vanishes; the last few are sent
    // a second after the rest, so they cross the threshold ticks after the many were reset
    // (the stragglers of the episode, fewer than mass_disconnect_min, with the rule's
    // budget spent).
    const STRAGGLERS: usize = 10;
    let gone = Instant::now();
    for s in &servers[..N - STRAGGLERS] {
        (&*s).write_all(&[7u8; 2048]).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    for s in &servers[N - STRAGGLERS..] {
        (&*s).write_all(&[7u8; 2048]).unwrap();
    }
    let bound = detection_bound() + Duration::from_secs(3);
    let all = wait_until(bound, || resets_of(&agent, &cookies).len() == N);
    let resets = resets_of(&agent, &cookies);
    assert!(
        all,
        "{} of {N} dead peers reset within {bound:?} of going dark{}",
        resets.len(),
        agent.diagnostics()
    );
    let ts: Vec<&str> = resets.iter().map(|e| e["ts"].as_str().unwrap()).collect();
    let first = ts.iter().min().unwrap();
    let last = ts.iter().max().unwrap();
    eprintln!(
        "3,000 dead peers: all reset {:?} after going dark; first {first}, last {last}",
        gone.elapsed()
    );
    assert!(resets.iter().all(|e| e["class"] == "no_ack"));
    let held = agent.matching(|e| is_event(e, "reset_skipped") && cookies.contains(&cookie_of(e)));
    assert!(
        held.is_empty(),
        "guards held back {} of them: {:?}",
        held.len(),
        held.iter().take(3).collect::<Vec<_>>()
    );
    let mass = agent
        .wait_for(|e| is_event(e, "mass_disconnect"), Duration::ZERO)
        .expect("a mass_disconnect event");
    assert!(mass["silent_sockets"].as_u64() >= Some(20), "{mass}");
    // The healthy ones are untouched.
    let ok_cookies: HashSet<u64> = ok.iter().map(|c| c.server_cookie).collect();
    assert!(resets_of(&agent, &ok_cookies).is_empty());
    for c in &mut ok {
        c.finish_intact("healthy charge point", Duration::from_secs(10));
    }
    assert!(agent.matching(|e| is_event(e, "partition_hold")).is_empty());
    drop((clients, servers));
    agent.stop();
}

/// The node's own path to every peer goes (its input drops everything from three peer
/// networks): a partition, not dead peers. Resets wait, and once ACKs return the
/// connections carry on.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn all_peers_silenced_at_once_is_held_not_reset() {
    require_root();
    let nets: Vec<Subnet> = (1..=3).map(subnet).collect();
    let servers: Vec<Listener> = nets
        .iter()
        .map(|n| Listener::bind(SocketAddr::from((n.host, 0))).unwrap())
        .collect();
    let ports: Vec<String> = servers.iter().map(|l| l.port().to_string()).collect();
    let rules = rule(
        "svc",
        &format!("local_ports = [{}]", ports.join(", ")),
        "reset",
    );
    let agent = AgentOpts::new(policy("", &rules)).start();
    let mut conns = Vec::new();
    for (i, (n, l)) in nets.iter().zip(&servers).enumerate() {
        for j in 0..4u64 {
            let mut c = l.connect(Some(&n.ns), ConnOpts::default()).unwrap();
            c.start(
                Some(WriteMode::Paced(256 * 1024)),
                ReadMode::Fast,
                700 + 10 * i as u64 + j,
            )
            .unwrap();
            conns.push(c);
        }
    }
    let cookies: HashSet<u64> = conns.iter().map(|c| c.server_cookie).collect();
    std::thread::sleep(Duration::from_millis(500));
    let cut = HostDrop::new();
    let hold = agent
        .wait_for(
            |e| is_event(e, "partition_hold") && e["state"] == "started",
            THRESHOLD + SLACK,
        )
        .unwrap_or_else(|| panic!("no partition_hold started{}", agent.diagnostics()));
    assert_eq!(hold["silent_networks"], 3, "{hold}");
    // Well past the threshold: nothing reset, the stalls held.
    std::thread::sleep(THRESHOLD * 2 + 4 * TICK);
    assert!(
        resets_of(&agent, &cookies).is_empty(),
        "reset during a partition{}",
        agent.diagnostics()
    );
    let held = agent.matching(|e| is_event(e, "reset_skipped") && e["guard"] == "partition_hold");
    assert!(!held.is_empty(), "no stall was held{}", agent.diagnostics());
    drop(cut);
    let ended = agent
        .wait_for(
            |e| is_event(e, "partition_hold") && e["state"] == "ended",
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("the hold did not end{}", agent.diagnostics()));
    assert!(ended["resets_held"].as_u64() > Some(0), "{ended}");
    for c in &mut conns {
        c.finish_intact("connection through the partition", Duration::from_secs(20));
    }
    assert!(resets_of(&agent, &cookies).is_empty());
    agent.stop();
}

/// A full map must not blind the agent: with room for 64 sockets taken by 64 healthy-but-
/// slow consumers, a new wedge is still found and reset, and stats say entries were evicted.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_full_map_still_finds_a_new_wedge() {
    require_root();
    let fillers_l = Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let wedge_l = Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let rules = format!(
        "[[rule]]\nname = \"slow-consumers\"\nlocal_ports = [{}]\naction = \"observe\"\n\
         zero_window_after = \"1h\"\nno_ack_after = \"1h\"\nslow_drain_floor = \"0B/s\"\n\
         ceiling = \"2h\"\n\n{}",
        fillers_l.port(),
        rule(
            "wedge",
            &format!("local_ports = [{}]", wedge_l.port()),
            "reset"
        )
    );
    let mut opts = AgentOpts::new(policy("", &rules));
    opts.extra_args = vec!["--max-sockets".into(), "64".into()];
    let agent = opts.start();
    let small = ConnOpts {
        client_rcvbuf: Some(16 * 1024),
        server_sndbuf: Some(32 * 1024),
    };
    let mut fillers = Vec::new();
    for i in 0..72u64 {
        let mut c = fillers_l.connect(None, small).unwrap();
        c.start(Some(WriteMode::Stream), ReadMode::Never, 900 + i)
            .unwrap();
        fillers.push(c);
    }
    assert!(
        wait_until(Duration::from_secs(15), || !agent
            .matching(|e| is_event(e, "stats") && e["map_full"].as_u64() > Some(0))
            .is_empty()),
        "the map never filled{}",
        agent.diagnostics()
    );
    let mut c = wedge_l.connect(None, small).unwrap();
    c.start(Some(WriteMode::Stream), ReadMode::Never, 999)
        .unwrap();
    let blocked = c
        .writer()
        .wait_blocked(Duration::from_millis(300), Duration::from_secs(10))
        .expect("the wedge's writer never blocked");
    let bound = Duration::from_secs(30);
    let reset = agent.wait_for(
        |e| is_socket_event(e, "socket_reset", c.server_cookie),
        bound,
    );
    assert!(
        reset.is_some(),
        "the wedge was not reset within {bound:?} with the map full{}",
        agent.diagnostics()
    );
    eprintln!(
        "full map: the new wedge was reset {:?} after it blocked",
        blocked.elapsed()
    );
    let filler_cookies: HashSet<u64> = fillers.iter().map(|c| c.server_cookie).collect();
    assert!(resets_of(&agent, &filler_cookies).is_empty());
    let stats = agent
        .wait_for(
            |e| is_event(e, "stats") && e["map_evicted"].as_u64() > Some(0),
            Duration::from_secs(3),
        )
        .unwrap_or_else(|| panic!("no stats with map_evicted > 0{}", agent.diagnostics()));
    eprintln!("full map: {stats}");
    drop(fillers);
    agent.stop();
}

fn nofile(pid: i32) -> libc::rlimit {
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: query only.
    cvt(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut r) }).unwrap();
    r
}

fn set_soft_nofile(pid: i32, soft: u64) {
    let mut r = nofile(pid);
    r.rlim_cur = soft;
    // SAFETY: sets the other process's limit (root, same user namespace).
    cvt(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &r, std::ptr::null_mut()) }).unwrap();
}

/// A transient error on the reset path (the agent runs out of file descriptors when it must
/// open a netlink socket in the wedge's namespace) is retried with backoff, and the wedge
/// is reset once the error clears.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_transient_reset_error_is_retried() {
    require_root();
    let (server_ns, client_ns) = NetNs::linked_pair().unwrap();
    let l = Listener::bind_in(&server_ns, SocketAddr::from((server_ns.addr(), 0))).unwrap();
    let agent = AgentOpts::new(policy(
        "",
        &rule("svc", &format!("local_ports = [{}]", l.port()), "reset"),
    ))
    .start();
    let pid = agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    let before = nofile(pid);
    // Its steady descriptors (the least of a few looks: a tick may hold a transient one).
    let open = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(30));
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count() as u64
        })
        .min()
        .unwrap();
    // No descriptor left: the netlink socket in the server's namespace cannot be opened.
    set_soft_nofile(pid, open);
    let mut c = l
        .connect(
            Some(&client_ns),
            ConnOpts {
                client_rcvbuf: Some(16 * 1024),
                server_sndbuf: Some(32 * 1024),
            },
        )
        .unwrap();
    c.start(Some(WriteMode::Stream), ReadMode::Never, 42)
        .unwrap();
    let failed = agent.wait_for(
        |e| is_socket_event(e, "reset_failed", c.server_cookie),
        detection_bound() + Duration::from_secs(2),
    );
    set_soft_nofile(pid, before.rlim_cur);
    let failed =
        failed.unwrap_or_else(|| panic!("no reset_failed under EMFILE{}", agent.diagnostics()));
    assert_eq!(failed["error"], "EMFILE", "{failed}");
    assert!(failed["retry_in_ms"].as_u64() > Some(0), "{failed}");
    let reset = agent.wait_for(
        |e| is_socket_event(e, "socket_reset", c.server_cookie),
        Duration::from_secs(15),
    );
    assert!(
        reset.is_some(),
        "not reset after the transient error cleared{}",
        agent.diagnostics()
    );
    agent
        .wait_for(
            |e| {
                is_event(e, "stats")
                    && e["resets"]["retried"].as_u64() > Some(0)
                    && e["resets"]["done"].as_u64() > Some(0)
            },
            Duration::from_secs(3),
        )
        .unwrap_or_else(|| {
            panic!(
                "no stats counting the retry and the reset{}",
                agent.diagnostics()
            )
        });
    agent.stop();
}

/// A socket bound to a device (SO_BINDTODEVICE, as in a VRF) is found and reset: the
/// request names its interface.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_device_bound_socket_is_reset() {
    require_root();
    let ns = NetNs::linked_to_host().unwrap();
    let dev = ifname_of(ns.peer_addr());
    let l = listen_on(SocketAddr::from((ns.peer_addr(), 0)), Some(&dev));
    let addr = l.local_addr().unwrap();
    let agent = AgentOpts::new(policy(
        "",
        &rule("svc", &format!("local_ports = [{}]", addr.port()), "reset"),
    ))
    .start();
    let client = ns.run(|| connect_from(SocketAddr::from((ns.addr(), 0)), addr));
    let (server, _) = l.accept().unwrap();
    sock::set_sndbuf(&server, 64 * 1024).unwrap();
    let cookie = sock::cookie(&server).unwrap();
    let w = stream_writer(server.try_clone().unwrap());
    let bound = detection_bound() + Duration::from_secs(3);
    let ev = agent.wait_for(
        |e| (is_event(e, "socket_reset") || is_event(e, "reset_failed")) && cookie_of(e) == cookie,
        bound,
    );
    let ev =
        ev.unwrap_or_else(|| panic!("no reset of the device-bound socket{}", agent.diagnostics()));
    assert_eq!(ev["event"], "socket_reset", "{ev}");
    assert_eq!(w.join().unwrap(), Some(libc::ECONNABORTED));
    drop(client);
    agent.stop();
}

/// The reset path's netlink socket in a container's namespace keeps the namespace alive;
/// once idle it is released, and a deleted namespace is really freed.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn an_idle_namespace_socket_is_released() {
    require_root();
    let ns = NetNs::linked_to_host().unwrap();
    let host_if = ifname_of(ns.peer_addr());
    let l = Listener::bind_in(&ns, SocketAddr::from((ns.addr(), 0))).unwrap();
    let mut opts = AgentOpts::new(policy(
        "",
        &rule("svc", &format!("local_ports = [{}]", l.port()), "reset"),
    ));
    opts.env = vec![("TCPSTALL_NETNS_IDLE_MS".into(), "1500".into())];
    let agent = opts.start();
    let mut c = l
        .connect(
            None,
            ConnOpts {
                client_rcvbuf: Some(16 * 1024),
                server_sndbuf: Some(32 * 1024),
            },
        )
        .unwrap();
    c.start(Some(WriteMode::Stream), ReadMode::Never, 77)
        .unwrap();
    let reset = agent.wait_for(
        |e| is_socket_event(e, "socket_reset", c.server_cookie),
        detection_bound() + Duration::from_secs(2),
    );
    assert!(reset.is_some(), "not reset{}", agent.diagnostics());
    let mark = agent.mark();
    assert!(
        agent
            .wait_for(
                |e| is_event(e, "stats") && e["netns_cached"].as_u64() > Some(0),
                Duration::from_secs(2)
            )
            .is_some(),
        "stats never showed the cached namespace socket{}",
        agent.diagnostics()
    );
    // The container goes away: its sockets close and its name is deleted.
    drop(c);
    drop(l);
    drop(ns);
    // The host end of its veth vanishes only when the kernel frees the namespace.
    let freed = wait_until(Duration::from_secs(15), || !link_exists(&host_if));
    assert!(
        freed,
        "the namespace was never freed (host veth {host_if} still there){}",
        agent.diagnostics()
    );
    let stats = agent.wait_for_received(
        mark,
        |e| is_event(e, "stats") && e["netns_cached"] == 0,
        Duration::from_secs(3),
    );
    assert!(
        stats.is_some(),
        "netns_cached never went to 0{}",
        agent.diagnostics()
    );
    agent.stop();
}

/// Closes racing the tick are closes, never recoveries: 300 stalled sockets (observed) are
/// closed one by one across many ticks; every stall ends as `stall_closed`.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn closes_racing_the_tick_are_never_recoveries() {
    require_root();
    raise_nofile();
    const N: usize = 300;
    let l = Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let rules = format!(
        "[[rule]]\nname = \"watch\"\nlocal_ports = [{}]\naction = \"observe\"\nzero_window_after = \"1s\"\n",
        l.port()
    );
    let mut opts = AgentOpts::new(policy("", &rules));
    opts.tick = Duration::from_millis(100);
    let agent = opts.start();
    let small = ConnOpts {
        client_rcvbuf: Some(8 * 1024),
        server_sndbuf: Some(16 * 1024),
    };
    let conns: Vec<Conn> = (0..N).map(|_| l.connect(None, small).unwrap()).collect();
    for c in &conns {
        fill(c.server());
    }
    let cookies: HashSet<u64> = conns.iter().map(|c| c.server_cookie).collect();
    let all_started = wait_until(Duration::from_secs(10), || {
        agent
            .matching(|e| is_event(e, "stall_started") && cookies.contains(&cookie_of(e)))
            .len()
            == N
    });
    assert!(
        all_started,
        "not every socket stalled{}",
        agent.diagnostics()
    );
    // Close them with an abortive close (RST: straight to CLOSE), spread over ~30 ticks.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for c in conns {
        sock::set_linger_zero(c.server()).unwrap();
        drop(c);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(2000 + rng % 18000));
    }
    let done = wait_until(Duration::from_secs(5), || {
        agent
            .matching(|e| is_event(e, "stall_closed") && cookies.contains(&cookie_of(e)))
            .len()
            == N
    });
    let cleared =
        agent.matching(|e| is_event(e, "stall_cleared") && cookies.contains(&cookie_of(e)));
    assert!(
        cleared.is_empty(),
        "{} closes were taken for recoveries: {:?}",
        cleared.len(),
        cleared.first()
    );
    assert!(
        done,
        "not every close reported as stall_closed{}",
        agent.diagnostics()
    );
    agent.stop();
}
