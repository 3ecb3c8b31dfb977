//! Real-kernel tests of the reset path's decisions: device-bound sockets, batched lookups,
//! transient errors, and releasing cached namespace sockets. Run as root (they create
//! network namespaces and veth links, and use SOCK_DESTROY); otherwise they print SKIP.

use super::test_support::*;
use super::*;
use std::ffi::CString;
use std::os::fd::FromRawFd;
use std::process::Command;

/// Two namespaces joined by a veth pair: `tsc` in the client namespace (192.0.2.1/30,
/// fe80::1/64), `tss` in the server namespace (192.0.2.2/30, fe80::2/64).
pub(crate) struct Linked {
    pub(crate) client: TestNetns,
    pub(crate) server: TestNetns,
    /// Index of `tsc` in the client namespace.
    pub(crate) client_if: u32,
    /// Index of `tss` in the server namespace.
    pub(crate) server_if: u32,
}

fn ifindex_in(ns: &TestNetns, name: &'static str) -> u32 {
    ns.run_in(move || {
        let c = CString::new(name).unwrap();
        // SAFETY: valid C string; the lookup uses a socket of this thread's namespace.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(
            i,
            0,
            "if_nametoindex({name}): {}",
            io::Error::last_os_error()
        );
        i
    })
}

impl Linked {
    pub(crate) fn create(tag: &str) -> Linked {
        let pid = std::process::id();
        let client = TestNetns::create(&format!("tcpstall-{tag}c-{pid}"));
        let server = TestNetns::create(&format!("tcpstall-{tag}s-{pid}"));
        let (c, s) = (client.name.as_str(), server.name.as_str());
        run_ip(&[
            "-n", c, "link", "add", "tsc", "type", "veth", "peer", "name", "tss", "netns", s,
        ])
        .unwrap();
        for (ns, dev, v4, v6) in [
            (c, "tsc", "192.0.2.1/30", "fe80::1/64"),
            (s, "tss", "192.0.2.2/30", "fe80::2/64"),
        ] {
            // Only our fixed link-local address, usable at once (no DAD).
            run_ip(&["-n", ns, "link", "set", dev, "addrgenmode", "none"]).unwrap();
            run_ip(&["-n", ns, "addr", "add", v4, "dev", dev]).unwrap();
            run_ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]).unwrap();
            run_ip(&["-n", ns, "link", "set", dev, "up"]).unwrap();
        }
        let client_if = ifindex_in(&client, "tsc");
        let server_if = ifindex_in(&server, "tss");
        Linked {
            client,
            server,
            client_if,
            server_if,
        }
    }

    /// IPv4 over the veth; the client socket is bound to `tsc` with SO_BINDTODEVICE.
    /// Returns (listener, accepted server side, bound client).
    pub(crate) fn bound_v4(&self) -> (TcpListener, TcpStream, TcpStream) {
        let listener = self
            .server
            .run_in(|| TcpListener::bind("192.0.2.2:0").expect("bind in the server netns"));
        let port = listener.local_addr().unwrap().port();
        let client = self.client.run_in(move || {
            // SAFETY: plain socket calls on a fresh descriptor; results are checked.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
                let s = TcpStream::from_raw_fd(fd);
                let dev = b"tsc\0";
                assert_eq!(
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_BINDTODEVICE,
                        dev.as_ptr().cast(),
                        dev.len() as libc::socklen_t,
                    ),
                    0,
                    "SO_BINDTODEVICE: {}",
                    io::Error::last_os_error()
                );
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(Ipv4Addr::new(192, 0, 2, 2)).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                assert_eq!(
                    libc::connect(
                        fd,
                        (&sin as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    ),
                    0,
                    "connect: {}",
                    io::Error::last_os_error()
                );
                s
            }
        });
        let (accepted, _) = listener.accept().unwrap();
        (listener, accepted, client)
    }

    /// IPv6 link-local over the veth: the client connects to fe80::2 with scope `tsc`
    /// (the kernel binds both ends to their interface).
    pub(crate) fn link_local_v6(&self) -> (TcpListener, TcpStream, TcpStream) {
        let listener = self
            .server
            .run_in(|| TcpListener::bind("[::]:0").expect("bind in the server netns"));
        let port = listener.local_addr().unwrap().port();
        let scope = self.client_if;
        let client = self.client.run_in(move || {
            let to = std::net::SocketAddrV6::new("fe80::2".parse().unwrap(), port, 0, scope);
            TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)).expect("connect fe80::2")
        });
        let (accepted, _) = listener.accept().unwrap();
        (listener, accepted, client)
    }
}

/// The target for socket `s` in namespace `netns`.
fn target(s: &TcpStream, netns: u32, ifindex: u32) -> Target {
    let local = s.local_addr().unwrap();
    Target {
        cookie: socket_cookie(s).unwrap(),
        netns,
        family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
        local,
        remote: s.peer_addr().unwrap(),
        pid_hint: None,
        ifindex,
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn bound_sockets_need_their_ifindex() {
    require_root("bound_sockets_need_their_ifindex");
    let l = Linked::create("bi");
    let ino = l.client.ino();
    for v6 in [false, true] {
        for batched in [false, true] {
            let what = format!(
                "{} via {}",
                if v6 {
                    "IPv6 link-local"
                } else {
                    "IPv4 SO_BINDTODEVICE"
                },
                if batched { "destroy_many" } else { "destroy" }
            );
            // Wedged writes on its third part: the bound client is the blocked writer.
            let w = Wedged::new(if v6 { l.link_local_v6() } else { l.bound_v4() });
            let t = target(&w.server, ino, l.client_if);
            let unbound = Target {
                ifindex: 0,
                ..t.clone()
            };
            // The dump reports the binding, so `tcpstall reset` targets carry it.
            let s = find_sockets(Some(ino), |d| d.cookie == t.cookie).unwrap();
            assert_eq!(s.found.len(), 1, "{what}");
            let (ft, _) = &s.found[0];
            assert_eq!(
                (ft.cookie, ft.netns, ft.family, ft.ifindex),
                (t.cookie, ino, t.family, l.client_if),
                "{what}"
            );
            assert!(same_endpoint(ft.local, t.local) && same_endpoint(ft.remote, t.remote));
            if v6 {
                // The accepted side of a link-local connection is bound too.
                let peer = socket_cookie(&w.client).unwrap();
                let s = find_sockets(Some(l.server.ino()), |d| d.cookie == peer).unwrap();
                assert_eq!(s.found[0].1.ifindex, l.server_if, "{what}");
            }

            let mut d = Destroyer::new();
            // The old behaviour: interface 0 does not find a bound socket.
            assert_eq!(d.lookup(&unbound).unwrap(), None, "{what}");
            assert_eq!(
                d.lookup_many(std::slice::from_ref(&unbound))[0]
                    .as_ref()
                    .unwrap(),
                &None
            );
            let e = if batched {
                d.destroy_many(std::slice::from_ref(&unbound)).remove(0)
            } else {
                d.destroy(&unbound)
            }
            .unwrap_err();
            assert_eq!((e.errno, e.stage), (libc::ENOENT, "reply"), "{what}: {e}");
            assert!(
                w.writer_error(Duration::from_millis(100)).is_none(),
                "{what}"
            );
            assert!(w.server.take_error().unwrap().is_none(), "{what}");

            // Another interface (lo) does not match either.
            let lo = Target {
                ifindex: 1,
                ..t.clone()
            };
            assert_eq!(d.lookup(&lo).unwrap(), None, "{what}");
            assert_eq!(d.destroy(&lo).unwrap_err().errno, libc::ENOENT, "{what}");

            // With the interface: found and destroyed.
            let info = d.lookup(&t).unwrap().expect("bound socket visible");
            assert_eq!(
                (info.cookie, info.ifindex),
                (t.cookie, l.client_if),
                "{what}"
            );
            let r = d.lookup_many(&[t.clone(), unbound.clone()]);
            assert_eq!(
                r[0].as_ref().unwrap().as_ref().map(|i| i.cookie),
                Some(t.cookie)
            );
            assert_eq!(r[1].as_ref().unwrap(), &None);
            let start = Instant::now();
            if batched {
                d.destroy_many(std::slice::from_ref(&t)).remove(0)
            } else {
                d.destroy(&t)
            }
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            let err = w
                .writer_error(Duration::from_secs(1))
                .unwrap_or_else(|| panic!("{what}: blocked writer not aborted"));
            assert_eq!(
                err.raw_os_error(),
                Some(libc::ECONNABORTED),
                "{what}: {err}"
            );
            eprintln!(
                "{what}: ifindex 0 -> ENOENT; ifindex {} -> writer ECONNABORTED after {:?}",
                l.client_if,
                start.elapsed()
            );
            assert_eq!(d.lookup(&t).unwrap(), None, "{what}: still in the tables");
        }
    }
}

/// Time-dependent fields zeroed, so two reads of an idle socket compare equal.
fn stable(d: &TcpDiag) -> TcpDiag {
    TcpDiag {
        timer_expires_ms: 0,
        last_data_sent_ms: 0,
        last_ack_recv_ms: 0,
        ..d.clone()
    }
}

fn same_result(
    a: &Result<Option<TcpDiag>, ResetError>,
    b: &Result<Option<TcpDiag>, ResetError>,
) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x.as_ref().map(stable) == y.as_ref().map(stable),
        (Err(x), Err(y)) => (x.errno, x.stage, &x.meaning) == (y.errno, y.stage, &y.meaning),
        _ => false,
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn lookup_many_equals_lookup() {
    require_root("lookup_many_equals_lookup");
    let pid = std::process::id();
    let spaces = [
        TestNetns::create(&format!("tcpstall-lma-{pid}")),
        TestNetns::create(&format!("tcpstall-lmb-{pid}")),
    ];
    let mut keep = Vec::new();
    let mut targets = Vec::new();
    for ns in &spaces {
        let ino = ns.ino();
        let pairs: Vec<_> = ns.run_in(|| (0..4).map(|_| pair()).collect());
        // An IPv4-mapped AF_INET6 socket (dual-stack listener, IPv4 client).
        let mapped = ns.run_in(|| {
            let l = TcpListener::bind("[::]:0").unwrap();
            let c = TcpStream::connect(("127.0.0.1", l.local_addr().unwrap().port())).unwrap();
            let (s, _) = l.accept().unwrap();
            (l, c, s)
        });
        for (_, c, s) in &pairs {
            targets.push(target(s, ino, 0));
            targets.push(target(c, ino, 0));
        }
        // Gone: destroyed before the lookups (the peer got a RST and is gone too).
        Destroyer::new()
            .destroy(&target(&pairs[0].2, ino, 0))
            .unwrap();
        // Wrong cookies on live 4-tuples.
        for (_, _, s) in &pairs[1..3] {
            let mut t = target(s, ino, 0);
            t.cookie ^= 0x4000_0000;
            targets.push(t);
        }
        // Any cookie.
        targets.push(Target {
            cookie: 0,
            ..target(&pairs[3].2, ino, 0)
        });
        // Mapped: as the kernel names it, and as plain IPv4 (second encoding).
        let mt = target(&mapped.2, ino, 0);
        assert_eq!(mt.family, AF_INET6);
        let plain = |a: SocketAddr| SocketAddr::new(v4_of(a.ip()).unwrap().into(), a.port());
        targets.push(Target {
            local: plain(mt.local),
            remote: plain(mt.remote),
            ..mt.clone()
        });
        targets.push(mt);
        keep.push((pairs, mapped));
    }
    // Failing before any I/O, or in a namespace that does not exist.
    let t0 = targets[0].clone();
    targets.push(Target {
        family: 1,
        ..t0.clone()
    });
    targets.push(Target {
        netns: 1,
        ..t0.clone()
    });
    // Interleave the namespaces.
    let n = targets.len();
    assert_ne!(n % 5, 0);
    let order: Vec<usize> = (0..n).map(|i| (i * 5) % n).collect();
    let targets: Vec<Target> = order.iter().map(|&i| targets[i].clone()).collect();

    let mut d = Destroyer::new();
    let many = d.lookup_many(&targets);
    assert_eq!(d.batch_fallbacks, 0);
    let mut single = Destroyer::new();
    let (mut live, mut none, mut errs) = (0, 0, 0);
    for (t, m) in targets.iter().zip(&many) {
        let s = single.lookup(t);
        assert!(same_result(m, &s), "{t:?}:\n many {m:?}\n one  {s:?}");
        match m {
            Ok(Some(_)) => live += 1,
            Ok(None) => none += 1,
            Err(_) => errs += 1,
        }
    }
    eprintln!("lookup_many = lookup for {n} targets: {live} live, {none} gone, {errs} errors");
    // Per namespace: 6 live ends + 1 any-cookie + 2 mapped; 2 destroyed ends + 2 wrong cookies.
    assert_eq!((live, none, errs), (18, 8, 2));
}

/// Raise the soft descriptor limit to at least `want` (never lowers it).
fn raise_nofile(want: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    if r.rlim_cur < want {
        r.rlim_cur = want.min(r.rlim_max);
        // SAFETY: r is a valid rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn lookup_many_3000_sockets() {
    require_root("lookup_many_3000_sockets");
    raise_nofile(8192);
    let ns = TestNetns::create(&format!("tcpstall-lm3-{}", std::process::id()));
    let ino = ns.ino();
    let (listener, socks) = ns.run_in(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let mut v = Vec::with_capacity(3000);
        for _ in 0..1500 {
            v.push(TcpStream::connect(a).unwrap());
            v.push(l.accept().unwrap().0);
        }
        (l, v)
    });
    let targets: Vec<Target> = socks.iter().map(|s| target(s, ino, 0)).collect();
    let mut d = Destroyer::new();
    // The first call also opens the namespace's netlink socket (setns on a helper thread).
    let start = Instant::now();
    let many = d.lookup_many(&targets);
    let first = start.elapsed();
    assert_eq!(d.batch_fallbacks, 0, "replies were lost");
    for (t, r) in targets.iter().zip(&many) {
        let got = r.as_ref().unwrap().as_ref().expect("live socket");
        assert_eq!((got.cookie, got.local, got.state), (t.cookie, t.local, 1));
    }
    let (mut batched, mut one_by_one) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let start = Instant::now();
        assert!(d
            .lookup_many(&targets)
            .iter()
            .all(|r| matches!(r, Ok(Some(_)))));
        batched = batched.min(start.elapsed());
        let start = Instant::now();
        for t in &targets {
            assert!(d.lookup(t).unwrap().is_some());
        }
        one_by_one = one_by_one.min(start.elapsed());
    }
    assert_eq!(d.batch_fallbacks, 0, "replies were lost");
    eprintln!(
        "lookup_many of {} sockets: first call {first:?}, then {batched:?} (best of 3; one \
         by one with lookup: {one_by_one:?})",
        targets.len()
    );
    assert!(first < Duration::from_secs(2), "{first:?}");
    // The cleanup is the mass-disconnect case: the accepted ends (the clients then get RSTs).
    let servers: Vec<Target> = targets.iter().skip(1).step_by(2).cloned().collect();
    let start = Instant::now();
    let r = d.destroy_many(&servers);
    let took = start.elapsed();
    assert!(r.iter().all(|r| r.is_ok()));
    eprintln!("destroy_many of {} sockets: {took:?}", servers.len());
    assert!(d
        .lookup_many(&targets)
        .iter()
        .all(|r| matches!(r, Ok(None))));
    drop((listener, socks));
}

// ---- transient errors ----

/// Run in a child process by `emfile_errors_are_transient`: out of descriptors, both the
/// netlink socket (own namespace) and the namespace search (another one) fail with
/// EMFILE, classified transient; with descriptors back, the same requests work.
#[test]
#[ignore = "run in a child process by emfile_errors_are_transient"]
fn emfile_child() {
    let Ok(ino) = std::env::var("TCPSTALL_EMFILE_NETNS") else {
        return;
    };
    let ino: u32 = ino.parse().unwrap();
    let own = Target {
        cookie: 5,
        netns: 0,
        family: AF_INET,
        local: "127.0.0.1:1".parse().unwrap(),
        remote: "127.0.0.1:2".parse().unwrap(),
        pid_hint: None,
        ifindex: 0,
    };
    let other = Target {
        netns: ino,
        ..own.clone()
    };
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit; this lowers the soft limit of this child process only.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = 64;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
    let mut fill = Vec::new();
    loop {
        match fs::File::open("/dev/null") {
            Ok(f) => fill.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
                break;
            }
        }
    }
    let e = Destroyer::new().lookup(&own).unwrap_err();
    assert_eq!((e.errno, e.stage), (libc::EMFILE, "socket"), "{e}");
    assert!(e.is_transient());
    let e = Destroyer::new()
        .destroy_many(std::slice::from_ref(&other))
        .remove(0)
        .unwrap_err();
    assert_eq!((e.errno, e.stage), (libc::EMFILE, "netns"), "{e}");
    assert!(e.is_transient() && e.meaning.contains("transient"), "{e}");
    println!("{e}");
    drop(fill);
    assert_eq!(Destroyer::new().lookup(&own).unwrap(), None);
    assert_eq!(Destroyer::new().lookup(&other).unwrap(), None);
    println!("EMFILE-CHILD-OK");
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn emfile_errors_are_transient() {
    require_root("emfile_errors_are_transient");
    let ns = TestNetns::create(&format!("tcpstall-em-{}", std::process::id()));
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reset::kernel_tests::emfile_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TCPSTALL_EMFILE_NETNS", ns.ino().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("EMFILE-CHILD-OK"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No answer within the reply timeout is ETIMEDOUT, transient (own namespace: no root).
#[test]
fn reply_timeout_is_transient() {
    let fd = open_diag_socket_here().unwrap();
    let mut buf = vec![0u8; 1024];
    let start = Instant::now();
    let e = recv_datagram(
        fd.as_raw_fd(),
        &mut buf,
        Instant::now() + Duration::from_millis(50),
    )
    .unwrap_err();
    assert_eq!((e.errno, e.stage), (libc::ETIMEDOUT, "reply"), "{e}");
    assert!(e.is_transient());
    assert!(start.elapsed() <= REPLY_TIMEOUT + Duration::from_millis(200));
}

// ---- the namespace cache ----

/// Cheap every tick: nothing is scanned before an entry can have reached the limit.
#[test]
fn release_idle_scans_only_when_due() {
    let (_l, _c, s) = pair();
    let t = target(&s, 0, 0);
    let limit = Duration::from_millis(300);
    let mut d = Destroyer::new().with_idle_limit(limit);
    assert_eq!(NETNS_IDLE_LIMIT, Duration::from_secs(60));
    assert_eq!(Destroyer::new().idle_limit(), NETNS_IDLE_LIMIT);
    assert_eq!((d.release_idle(), d.sweeps), (0, 0), "empty cache scanned");
    assert!(d.lookup(&t).unwrap().is_some());
    let t0 = Instant::now();
    for _ in 0..10_000 {
        assert_eq!(d.release_idle(), 0);
    }
    assert!(t0.elapsed() < limit, "10k calls took {:?}", t0.elapsed());
    assert_eq!((d.sweeps, d.cached_netns()), (0, 1));
    // Used again half-way: still cached when the first deadline comes, one scan.
    std::thread::sleep(limit / 2);
    assert!(d.lookup(&t).unwrap().is_some());
    std::thread::sleep(limit / 2 + Duration::from_millis(50));
    assert_eq!(d.release_idle(), 0);
    assert_eq!((d.sweeps, d.cached_netns()), (1, 1));
    assert_eq!(d.release_idle(), 0);
    assert_eq!(d.sweeps, 1, "scanned again before anything was due");
    // Idle for the whole limit: closed.
    std::thread::sleep(limit);
    assert_eq!(d.release_idle(), 1);
    assert_eq!((d.sweeps, d.cached_netns()), (2, 0));
    assert_eq!(d.release_idle(), 0);
    assert_eq!(d.sweeps, 2);
}

/// Everything in /proc that refers to network namespace `ino`: a process's or thread's
/// namespace, or an open namespace file.
fn netns_refs(ino: u32) -> Vec<String> {
    let want = format!("net:[{ino}]");
    let mut refs = Vec::new();
    let link_is = |p: &Path| fs::read_link(p).is_ok_and(|l| l.as_os_str() == want.as_str());
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.path();
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(tasks) = fs::read_dir(pid.join("task")) {
            for t in tasks.flatten() {
                if link_is(&t.path().join("ns/net")) {
                    refs.push(t.path().join("ns/net").display().to_string());
                }
            }
        }
        if let Ok(fds) = fs::read_dir(pid.join("fd")) {
            for f in fds.flatten() {
                if link_is(&f.path()) {
                    refs.push(f.path().display().to_string());
                }
            }
        }
    }
    refs
}

fn link_exists(ns: &TestNetns, dev: &str) -> bool {
    run_ip(&["-n", &ns.name, "link", "show", "dev", dev]).is_ok()
}

/// Wait up to `limit` for `dev` in `ns` to disappear; how long it took.
fn vanishes(ns: &TestNetns, dev: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !link_exists(ns, dev) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A deleted namespace whose only reference is our cached netlink socket stays allocated
/// until `release_idle` closes that socket, and is freed then. A namespace is freed when the
/// kernel drops its last reference; its veth end is deleted with it, and so is that
/// veth's peer in the (surviving) holder namespace — the observable proof.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn release_idle_frees_a_deleted_namespace() {
    require_root("release_idle_frees_a_deleted_namespace");
    let pid = std::process::id();
    let holder = TestNetns::create(&format!("tcpstall-rh-{pid}"));
    let pinned = TestNetns::create(&format!("tcpstall-rp-{pid}"));
    let control = TestNetns::create(&format!("tcpstall-rc-{pid}"));
    for (ns, dev) in [(&pinned, "tsp"), (&control, "tsq")] {
        run_ip(&[
            "-n",
            &holder.name,
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ])
        .unwrap();
    }
    let ino = pinned.ino();
    let limit = Duration::from_millis(300);
    let mut d = Destroyer::new().with_idle_limit(limit);
    {
        let w = Wedged::new(pinned.run_in(pair));
        d.destroy(&target(&w.server, ino, 0)).unwrap();
        let err = w.writer_error(Duration::from_secs(1)).expect("not aborted");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
    } // every test socket in the namespace is closed here
    assert_eq!((d.release_idle(), d.cached_netns()), (0, 1));

    // The container goes away (both namespaces lose their name, the only other reference).
    run_ip(&["netns", "del", &control.name]).unwrap();
    run_ip(&["netns", "del", &pinned.name]).unwrap();
    let freed_in = vanishes(&holder, "tsq", Duration::from_secs(10))
        .expect("control namespace not freed within 10 s");
    // Without release: past the idle limit and well past the control's cleanup time, the
    // pinned namespace is still allocated — only our netlink socket refers to it.
    std::thread::sleep((freed_in * 3).max(limit) + Duration::from_millis(500));
    assert!(
        link_exists(&holder, "tsp"),
        "namespace freed without release"
    );
    assert_eq!(netns_refs(ino), Vec::<String>::new());
    assert_eq!(d.cached_netns(), 1);

    // Released: nothing refers to it any more, and the kernel frees it. (The inode number
    // is free for reuse after that, so /proc is checked right away.)
    assert_eq!(d.release_idle(), 1);
    assert_eq!(d.cached_netns(), 0);
    assert_eq!(netns_refs(ino), Vec::<String>::new());
    let released_in = vanishes(&holder, "tsp", Duration::from_secs(10))
        .expect("released namespace not freed within 10 s");
    eprintln!(
        "control namespace freed {freed_in:?} after deletion; pinned one still there \
         {:?} later; freed {released_in:?} after release_idle",
        (freed_in * 3).max(limit) + Duration::from_millis(500)
    );
}
