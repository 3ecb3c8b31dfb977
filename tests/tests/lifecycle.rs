//! "Trust the decisions", kernel-map lifecycle: the kernel map holds only sockets that can
//! wedge, and no entry outlives its socket, through heavy churn — 100,000 failed connects
//! whose SYNs are retransmitted (SYN_SENT is never tracked), a few hundred orphans to dead
//! peers destroyed by the agent, and real wedges reset by the agent. Afterwards the map holds
//! exactly the live sockets the test still keeps with data queued, and a new wedge is still
//! reset.

use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};
use tests::agent::{is_event, Agent, AgentOpts};
use tests::check::{expect_reset, wedge, GRACE};
use tests::netns::{run_cmd, NetNs};
use tests::sock;
use tests::traffic::{Conn, ConnOpts, Listener, Outcome};
use tests::{detection_bound, policy, require_root, reset_rule};

/// Failed connects in all.
const CONNECTS: usize = 100_000;
/// Connects in flight (open descriptors) at once, at most: one batch per round.
const BATCH: usize = 10_000;
/// SYN retransmits before a connect fails (`TCP_SYNCNT`): SYN at 0 s, its retransmit at
/// 1 s, ETIMEDOUT at 3 s.
const SYNCNT: i32 = 1;
/// Longest a batch may take to fail (3 s nominal, slack for a loaded 2-core machine).
const SYN_FAIL_BOUND: Duration = Duration::from_secs(8);
/// Rounds that also make orphans, and how many each.
const ORPHAN_ROUNDS: usize = 10;
const ORPHANS_PER_ROUND: usize = 30;
/// Connections to a dead peer that the test keeps open with data queued until the end, on
/// a port no rule selects (observed, never reset): the map must hold exactly these.
const LIVE: usize = 3;
/// Entries of sockets outside the test the map may hold at a given moment (the host's own
/// connections with data briefly queued).
const BACKGROUND: u64 = 20;

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Raise `RLIMIT_NOFILE` for one batch of connects (plus room for everything else); returns
/// the batch size the limit allows (at most [`BATCH`]).
fn raise_fd_limit() -> usize {
    const SPARE: usize = 2048;
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    let want = (BATCH + SPARE) as libc::rlim_t;
    if r.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: r.rlim_max.max(want),
        };
        // SAFETY: as above; root may raise the hard limit too.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            r = raised;
        } else {
            r.rlim_cur = r.rlim_max.min(want);
            // SAFETY: as above, within the hard limit.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
        }
    }
    let batch = (r.rlim_cur as usize).saturating_sub(SPARE).min(BATCH);
    assert!(
        batch >= 1000,
        "RLIMIT_NOFILE {} leaves too few descriptors for the connect batches",
        r.rlim_cur
    );
    batch
}

/// One batch of connects to a dead peer, each with `TCP_SYNCNT` [`SYNCNT`].
struct SynBatch {
    fds: Vec<OwnedFd>,
    started: Instant,
}

fn start_syns(ns: &NetNs, dst: SocketAddr, n: usize) -> SynBatch {
    let started = Instant::now();
    let fds = ns
        .run(|| {
            (0..n)
                .map(|i| {
                    sock::start_connect(dst, Some(SYNCNT)).map_err(|e| format!("connect #{i}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| panic!("starting {n} connects to {dst}: {e}"));
    SynBatch { fds, started }
}

/// Wait until every connect of `b` has failed (POLLERR/POLLHUP), then check each socket is
/// in TCP_CLOSE and retransmitted its SYN. Returns how long the batch took to fail.
fn wait_failed(b: &SynBatch) -> Duration {
    let deadline = b.started + SYN_FAIL_BOUND;
    let mut pfds: Vec<libc::pollfd> = b
        .fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        })
        .collect();
    let took = loop {
        // SAFETY: pfds is a valid array of pollfds of this length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 0) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        let failed = pfds
            .iter()
            .filter(|p| p.revents & (libc::POLLERR | libc::POLLHUP) != 0)
            .count();
        if failed == pfds.len() {
            break b.started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "only {failed} of {} connects to the dead peer failed within {SYN_FAIL_BOUND:?} \
             (TCP_SYNCNT {SYNCNT})",
            pfds.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut open, mut no_retransmit) = (0, 0);
    for fd in &b.fds {
        let info = sock::tcp_info(fd).expect("TCP_INFO");
        open += usize::from(info.tcpi_state != 7); // TCP_CLOSE
        no_retransmit += usize::from(info.tcpi_total_retrans == 0);
    }
    assert_eq!(open, 0, "failed connects not in TCP_CLOSE");
    assert_eq!(
        no_retransmit, 0,
        "failed connects whose SYN was never retransmitted (the test must exercise the \
         retransmit hook)"
    );
    took
}

/// One round's orphans: a peer namespace linked to the host and a listener on the host end,
/// made before the agent starts (the reset rule names the listeners' ports).
struct OrphanSite {
    conns: Vec<Conn>,
    l: Listener,
    ns: NetNs,
}

/// `n` connections from the site's namespace, which then goes dead (nftables drop), with
/// 16 KiB in flight from the host end, which the application then closes: `n` orphans in
/// FIN_WAIT1 retransmitting to a dead peer. Adds their cookies to `cookies`.
fn make_orphans(site: &mut OrphanSite, n: usize, cookies: &mut HashSet<u64>) {
    for i in 0..n {
        let c = site
            .l
            .connect(Some(&site.ns), ConnOpts::default())
            .unwrap_or_else(|e| panic!("orphan connection {i}: {e}"));
        site.conns.push(c);
    }
    site.ns.blackhole().expect("blackholing the orphans' peer");
    for c in &mut site.conns {
        {
            let mut s = c.server();
            s.set_nonblocking(true).unwrap();
            let sent = s
                .write(&[7u8; 16 * 1024])
                .expect("writing to the dying peer");
            assert!(sent > 0);
        }
        cookies.insert(c.server_cookie);
        c.close_server();
    }
}

/// What a failing run may have left on the orphan ports is destroyed on drop (`ss -K`), so
/// nothing keeps retransmitting into the next test. Only where destroying orphans is safe.
struct KillOrphans {
    ports: Vec<u16>,
    safe: bool,
}

/// The `ss` filter for FIN_WAIT1 TCP sockets on local port `port`.
fn fin_wait1_on(port: u16) -> Vec<String> {
    ["-t", "-n", "-H", "state", "fin-wait-1", "sport", "="]
        .iter()
        .map(|s| s.to_string())
        .chain([format!(":{port}")])
        .collect()
}

impl KillOrphans {
    /// FIN_WAIT1 sockets left on the orphan ports, per the kernel.
    fn remaining(&self) -> usize {
        self.ports
            .iter()
            .map(|p| {
                let args = fin_wait1_on(*p);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_cmd("ss", &args, None)
                    .map(|out| out.lines().filter(|l| !l.trim().is_empty()).count())
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for KillOrphans {
    fn drop(&mut self) {
        if !self.safe {
            return;
        }
        for p in &self.ports {
            let mut args = vec!["-K".to_string()];
            args.extend(fin_wait1_on(*p));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = run_cmd("ss", &args, None);
        }
    }
}

fn tracked(ev: &Value) -> u64 {
    ev["sockets_tracked"]
        .as_u64()
        .unwrap_or_else(|| panic!("stats without sockets_tracked: {ev}"))
}

/// Wait (up to `timeout`) for a `stats` event after event index `from` whose
/// `sockets_tracked` equals `want`; panics with every value seen meanwhile.
fn expect_tracked(agent: &Agent, from: usize, want: u64, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut idx = from;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match agent.wait_for_received(idx, |e| is_event(e, "stats"), left) {
            Some(r) => {
                let n = tracked(&r.json);
                if n == want {
                    eprintln!("{what}: sockets_tracked = {n} (stats seen meanwhile: {seen:?})");
                    return;
                }
                seen.push(n);
                idx = r.index + 1;
            }
            None => panic!(
                "{what}: no stats event with sockets_tracked = {want} within {timeout:?}; \
                 values seen: {seen:?}{}",
                agent.diagnostics()
            ),
        }
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn map_holds_only_live_sockets_after_churn() {
    require_root();
    let t0 = Instant::now();
    let batch = raise_fd_limit();
    let rounds = CONNECTS.div_ceil(batch);

    // The failed connects go from one namespace to a dead peer in another (the host's port
    // range stays untouched).
    let (syn_ns, dead_ns) = NetNs::linked_pair().unwrap();
    dead_ns.blackhole().unwrap();
    let syn_dst = SocketAddr::from((dead_ns.addr(), 9));
    let mut sites: Vec<OrphanSite> = (0..ORPHAN_ROUNDS)
        .map(|_| {
            let ns = NetNs::linked_to_host().unwrap();
            let l = Listener::bind(SocketAddr::from((ns.peer_addr(), 0))).unwrap();
            OrphanSite {
                conns: Vec::new(),
                l,
                ns,
            }
        })
        .collect();
    let wedge_l = Listener::bind(loopback()).unwrap();
    let live_ns = NetNs::linked_to_host().unwrap();
    let live_l = Listener::bind(SocketAddr::from((live_ns.peer_addr(), 0))).unwrap();

    let orphan_ports: Vec<u16> = sites.iter().map(|s| s.l.port()).collect();
    let mut rule_ports = orphan_ports.clone();
    rule_ports.push(wedge_l.port());
    let agent = AgentOpts::new(policy(
        &[22],
        5000,
        &reset_rule("churn", &rule_ports, &["zero_window", "no_ack"]),
    ))
    .start();
    let started = agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .unwrap();
    assert_eq!(started["mode"], "enforce", "{started}");
    assert_eq!(started["reset_path"]["works"], true, "{started}");
    let orphans_safe = started["orphan_reset"]["safe"] == true;
    let orphans_per_round = if orphans_safe {
        ORPHANS_PER_ROUND
    } else {
        eprintln!(
            "destroying orphans is unsafe on this kernel: the churn makes no orphans \
             (they could be neither reset nor destroyed by the test)"
        );
        0
    };
    let kill = KillOrphans {
        ports: orphan_ports,
        safe: orphans_safe,
    };

    // The live sockets: data in flight to a dead peer, kept open to the end, observed only.
    let mut live = Vec::new();
    for i in 0..LIVE {
        live.push(
            live_l
                .connect(Some(&live_ns), ConnOpts::default())
                .unwrap_or_else(|e| panic!("live connection {i}: {e}")),
        );
    }
    live_ns.blackhole().unwrap();
    for c in &live {
        let mut s = c.server();
        s.set_nonblocking(true).unwrap();
        assert!(s.write(&[1u8; 16 * 1024]).unwrap() > 0);
    }

    // The churn.
    let churn_mark = agent.mark();
    let churn_start = Instant::now();
    let mut orphan_cookies = HashSet::new();
    let mut syn_fail = Vec::new();
    let mut wedge_latency = Vec::new();
    for r in 0..rounds {
        let n = batch.min(CONNECTS - r * batch);
        let syns = start_syns(&syn_ns, syn_dst, n);
        if let Some(site) = sites.get_mut(r) {
            make_orphans(site, orphans_per_round, &mut orphan_cookies);
        }
        let (w, blocked) = wedge(&wedge_l, 1000 + r as u64);
        syn_fail.push(wait_failed(&syns));
        drop(syns);
        let wait = (blocked + detection_bound() + GRACE).saturating_duration_since(Instant::now());
        match w.writer().wait_outcome(wait) {
            Some(Outcome::Failed { errno, at }) if errno == libc::ECONNABORTED => {
                wedge_latency.push(at.saturating_duration_since(blocked));
            }
            other => panic!(
                "round {r}: the wedge was not reset (writer outcome {other:?}){}",
                agent.diagnostics()
            ),
        }
    }
    let churn_took = churn_start.elapsed();
    let churn_events = agent.events();
    let during: Vec<u64> = churn_events[churn_mark..]
        .iter()
        .filter(|e| is_event(e, "stats"))
        .map(tracked)
        .collect();
    eprintln!(
        "churn: {rounds} rounds, {CONNECTS} failed connects (batches of {batch}, each failed in \
         {:?}..{:?}), {} orphans, {rounds} wedges reset in {:?}..{:?}, {churn_took:?}",
        syn_fail.iter().min().unwrap(),
        syn_fail.iter().max().unwrap(),
        orphan_cookies.len(),
        wedge_latency.iter().min().unwrap(),
        wedge_latency.iter().max().unwrap(),
    );
    eprintln!("churn: sockets_tracked per stats event: {during:?}");
    // At any moment: the orphans of (at most) the last two rounds, a wedge's two ends, the
    // live sockets. Never the connects in SYN_SENT, 10,000 of which retransmit at once.
    let legit = 2 * orphans_per_round as u64 + 2 + LIVE as u64;
    let max = during.iter().copied().max().unwrap_or(0);
    assert!(
        max <= legit + BACKGROUND,
        "the map held {max} sockets during the churn; at most {legit} (+{BACKGROUND}) can \
         wedge: sockets that cannot wedge (SYN_SENT) were tracked. Values: {during:?}"
    );

    // Every orphan is destroyed by the agent's reset.
    let deadline = Instant::now() + detection_bound() + GRACE + Duration::from_secs(5);
    let reset_orphans = loop {
        let got: HashSet<u64> = agent
            .matching(|e| is_event(e, "socket_reset"))
            .iter()
            .filter_map(|e| e["cookie"].as_u64())
            .filter(|c| orphan_cookies.contains(c))
            .collect();
        if got.len() == orphan_cookies.len() || Instant::now() >= deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        reset_orphans.len(),
        orphan_cookies.len(),
        "orphans reset by the agent{}",
        agent.diagnostics()
    );
    assert_eq!(
        kill.remaining(),
        0,
        "orphans still in the kernel after their reset"
    );
    // Cleanup: the orphans' peers and their namespaces go.
    drop(sites);

    // The map holds exactly the live sockets the test still has with data queued.
    for (i, c) in live.iter().enumerate() {
        let q = sock::send_queue(c.server()).unwrap();
        assert!(q > 0, "live connection {i} has nothing queued");
    }
    expect_tracked(
        &agent,
        agent.mark(),
        LIVE as u64,
        Duration::from_secs(8),
        "after the churn",
    );

    // A real wedge made now is still reset, and leaves the map with its socket.
    let (w, blocked) = wedge(&wedge_l, 7);
    expect_reset(&agent, &w, blocked, "wedge after the churn");
    drop(w);
    expect_tracked(
        &agent,
        agent.mark(),
        LIVE as u64,
        Duration::from_secs(8),
        "after the last wedge",
    );

    drop(live);
    let events = agent.stop();
    let stats = events.iter().rev().find(|e| is_event(e, "stats")).unwrap();
    assert_eq!(stats["map_full"], 0, "{stats}");
    assert_eq!(stats["close_notes_lost"], 0, "{stats}");
    drop(kill);
    eprintln!("lifecycle test took {:?}", t0.elapsed());
}
