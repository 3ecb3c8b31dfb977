use super::test_support::{assert_talks, require_root, run_ip, write_until_error};
use super::*;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Read up to `want` bytes, for at most `timeout`.
fn read_available(s: &mut TcpStream, want: usize, timeout: Duration) -> io::Result<usize> {
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < want && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

// ---- real kernel ----

fn target_of(server: &TcpStream, family: u16) -> Target {
    Target {
        cookie: socket_cookie(server).unwrap(),
        netns: current_netns().unwrap(),
        family,
        local: server.local_addr().unwrap(),
        remote: server.peer_addr().unwrap(),
        pid_hint: Some(std::process::id()),
        ifindex: 0,
    }
}

fn assert_aborted(server: &TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match server.take_error().unwrap() {
            Some(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
                return;
            }
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            None => panic!("socket not aborted within 1 s"),
        }
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn self_probe_works() {
    require_root("self_probe_works");
    let start = Instant::now();
    let r = self_probe();
    assert!(r.works, "{r:?}");
    assert!(
        r.detail.starts_with("SOCK_DESTROY ok (ECONNABORTED after"),
        "{}",
        r.detail
    );
    assert!(r.abort_latency.unwrap() < Duration::from_millis(500));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    eprintln!("self_probe: {}", r.detail);
}

/// Running kernel release as (major, minor).
fn kernel_version() -> Option<(u32, u32)> {
    let r = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = r.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn orphan_probe_on_this_kernel() {
    require_root("orphan_probe_on_this_kernel");
    let start = Instant::now();
    let (r, cookie) = orphan::probe_traced();
    let took = start.elapsed();
    eprintln!("orphan_probe ({took:?}): {r:?}");
    // 6.11 and later carry "tcp: fix forever orphan socket caused by tcp_abort"; older
    // kernels may have it backported, so only the newer ones are held to it.
    if kernel_version().is_some_and(|v| v >= (6, 11)) {
        assert!(r.safe, "{r:?}");
        assert!(
            r.detail.starts_with("orphan destroyed cleanly"),
            "{}",
            r.detail
        );
    } else {
        assert!(
            r.detail.starts_with("orphan destroyed cleanly")
                || r.detail.starts_with("destroyed orphan stayed"),
            "the test itself did not run: {}",
            r.detail
        );
    }
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // Nothing is left behind, on either kind of kernel.
    assert_ne!(cookie, 0);
    let deadline = Instant::now() + Duration::from_millis(200);
    while let Some((_, d)) = find_by_cookie(cookie).unwrap() {
        assert!(Instant::now() < deadline, "test orphan left behind: {d:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `capset` on the calling thread only: drop `cap` from its effective set.
fn drop_effective_cap(cap: u32) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: header and two data structs as capget/capset expect; pid 0 = this thread.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()),
            0,
            "capget: {}",
            io::Error::last_os_error()
        );
        d[(cap / 32) as usize].effective &= !(1 << (cap % 32));
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()),
            0,
            "capset: {}",
            io::Error::last_os_error()
        );
    }
}

/// Without CAP_NET_ADMIN the destroy is refused: unsafe, with the reason, and the test
/// orphan does not outlive the probe (our client's RST removes it).
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn orphan_probe_without_cap_net_admin_is_unsafe() {
    require_root("orphan_probe_without_cap_net_admin_is_unsafe");
    let (r, cookie) = std::thread::spawn(|| {
        drop_effective_cap(12); // CAP_NET_ADMIN
        orphan::probe_traced()
    })
    .join()
    .unwrap();
    eprintln!("{r:?}");
    assert!(!r.safe, "{r:?}");
    assert!(
        r.detail.starts_with(
            "could not check whether orphans can be reset: SOCK_DESTROY on our own test \
             socket failed with EPERM"
        ),
        "{}",
        r.detail
    );
    assert!(r.detail.contains("CAP_NET_ADMIN"), "{}", r.detail);
    // The test orphan (it was built: the refusal came at SOCK_DESTROY) is gone.
    assert_ne!(cookie, 0);
    let deadline = Instant::now() + Duration::from_millis(200);
    while let Some((_, d)) = find_by_cookie(cookie).unwrap() {
        assert!(Instant::now() < deadline, "test orphan left behind: {d:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Unblocks and joins a writer thread even if the test fails half-way.
struct Writer {
    sock: TcpStream,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn destroy_many_resets_a_batch_and_refuses_a_wrong_cookie() {
    require_root("destroy_many_resets_a_batch_and_refuses_a_wrong_cookie");
    // More pairs than one datagram holds, so the batching boundary is crossed.
    let n = DESTROY_BATCH + 6;
    let pairs: Vec<_> = (0..n).map(|_| loopback_pair().unwrap()).collect();
    let mut targets: Vec<Target> = pairs
        .iter()
        .map(|(_, _, s)| target_of(s, AF_INET))
        .collect();
    // One target names a live 4-tuple with a wrong cookie: it must not be touched.
    let wrong = 3;
    targets[wrong].cookie ^= 0x5a5a;
    let mut d = Destroyer::new();
    let results = d.destroy_many(&targets);
    assert_eq!(results.len(), n);
    for (i, r) in results.iter().enumerate() {
        if i == wrong {
            let e = r.as_ref().expect_err("wrong cookie must be refused");
            assert_eq!(e.errno, libc::ENOENT, "{e}");
        } else {
            r.as_ref().unwrap_or_else(|e| panic!("target {i}: {e}"));
        }
    }
    for (i, (_, _, server)) in pairs.iter().enumerate() {
        let err = server.take_error().unwrap();
        if i == wrong {
            assert!(err.is_none(), "the wrong-cookie socket was reset");
            let mut w = server;
            w.write_all(b"still alive")
                .expect("wrong-cookie socket still writable");
        } else {
            assert_eq!(
                err.and_then(|e| e.raw_os_error()),
                Some(libc::ECONNABORTED),
                "socket {i} not aborted"
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn blocked_writer_gets_econnaborted() {
    require_root("blocked_writer_gets_econnaborted");
    let (_l, _client, server) = loopback_pair().unwrap();
    let t = target_of(&server, AF_INET);
    let (tx, rx) = mpsc::channel();
    let mut wsock = server.try_clone().unwrap();
    let handle = std::thread::spawn(move || {
        let err = write_until_error(&mut wsock);
        let _ = tx.send((err, Instant::now()));
    });
    let _writer = Writer {
        sock: server.try_clone().unwrap(),
        handle: Some(handle),
    };
    let mut d = Destroyer::new();
    // Wait until the writer is stuck: send queue non-empty and not growing.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = 0;
    loop {
        let info = d.lookup(&t).unwrap().expect("socket visible");
        if info.send_q > 0 && info.send_q == last {
            break;
        }
        last = info.send_q;
        assert!(Instant::now() < deadline, "writer never blocked");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rx.try_recv().is_err(), "writer not blocked");
    let start = Instant::now();
    d.destroy(&t).unwrap();
    let (err, at) = rx
        .recv_timeout(Duration::from_secs(1))
        .expect("blocked send() did not return within 1 s of SOCK_DESTROY");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
    eprintln!(
        "blocked send() returned ECONNABORTED after {:?}",
        at.duration_since(start)
    );
    assert_eq!(d.lookup(&t).unwrap(), None, "socket still in the tables");
    // Destroying again: already gone.
    let e = d.destroy(&t).unwrap_err();
    assert_eq!((e.errno, e.stage), (libc::ENOENT, "reply"));
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn wrong_cookie_does_not_kill() {
    require_root("wrong_cookie_does_not_kill");
    let (_l, mut client, mut server) = loopback_pair().unwrap();
    let t = target_of(&server, AF_INET);
    let mut d = Destroyer::new();
    for wrong in [t.cookie + 1, t.cookie ^ (1 << 40)] {
        let bad = Target {
            cookie: wrong,
            ..t.clone()
        };
        let e = d.destroy(&bad).unwrap_err();
        // The kernel maps sock_diag_check_cookie's ESTALE to ENOENT.
        assert_eq!((e.errno, e.stage), (libc::ENOENT, "reply"), "{e}");
        assert_eq!(d.lookup(&bad).unwrap(), None);
    }
    // Still alive and working both ways.
    assert!(server.take_error().unwrap().is_none());
    let info = d.lookup(&t).unwrap().expect("socket still there");
    assert_eq!(info.state, 1);
    assert_talks(&mut server, &mut client);
    // And the right cookie still works.
    d.destroy(&t).unwrap();
    assert_aborted(&server);
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn lookup_reports_cookie_state_and_bytes_acked() {
    require_root("lookup_reports_cookie_state_and_bytes_acked");
    let (_l, mut client, mut server) = loopback_pair().unwrap();
    let t = target_of(&server, AF_INET);
    let n = 100_000usize;
    server.write_all(&vec![7u8; n]).unwrap();
    assert_eq!(
        read_available(&mut client, n, Duration::from_secs(2)).unwrap(),
        n
    );
    let mut d = Destroyer::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    let info = loop {
        let info = d.lookup(&t).unwrap().expect("socket visible");
        if info.unacked == 0 && info.send_q == 0 {
            break info;
        }
        assert!(Instant::now() < deadline, "data never acked: {info:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("{info:?}");
    assert_eq!(info.cookie, t.cookie);
    assert_eq!(info.state, 1, "ESTABLISHED");
    assert_eq!(info.family, AF_INET);
    assert_eq!(info.local, t.local);
    assert_eq!(info.remote, t.remote);
    // The passive side's bytes_acked counts data only (its SYN-ACK is not counted).
    assert_eq!(info.bytes_acked, n as u64);
    assert_eq!(info.notsent_bytes, 0);
    assert!(
        info.tcp_info_len >= 232,
        "kernel tcp_info {} bytes",
        info.tcp_info_len
    );
    assert!(info.has_snd_wnd() && info.snd_wnd > 0);
    assert_eq!(info.backoff, 0);
    assert!(info.inode > 0);
    // The client side sent nothing: bytes_acked is just its SYN.
    let ct = target_of(&client, AF_INET);
    let cinfo = d.lookup(&ct).unwrap().expect("client visible");
    assert_eq!(cinfo.cookie, ct.cookie);
    assert_eq!(cinfo.bytes_acked, 1);
    assert_eq!(cinfo.bytes_received, n as u64);
    // Cookie 0 means "any cookie".
    let any = d
        .lookup(&Target {
            cookie: 0,
            ..t.clone()
        })
        .unwrap()
        .unwrap();
    assert_eq!(any.cookie, t.cookie);
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn ipv4_mapped_ipv6_socket_is_destroyed() {
    require_root("ipv4_mapped_ipv6_socket_is_destroyed");
    let listener = match TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIP ipv4_mapped_ipv6_socket_is_destroyed: no IPv6 ({e})");
            return;
        }
    };
    let port = listener.local_addr().unwrap().port();
    let mut d = Destroyer::new();
    for as_plain_v4 in [false, true] {
        let _client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut t = target_of(&server, AF_INET6);
        assert!(matches!(t.local.ip(), IpAddr::V6(a) if a.to_ipv4_mapped().is_some()));
        if as_plain_v4 {
            t.local = SocketAddr::new(v4_of(t.local.ip()).unwrap().into(), t.local.port());
            t.remote = SocketAddr::new(v4_of(t.remote.ip()).unwrap().into(), t.remote.port());
        }
        let info = d.lookup(&t).unwrap().expect("mapped socket visible");
        assert_eq!((info.family, info.cookie), (AF_INET6, t.cookie));
        // Each encoding on its own reaches the socket (AF_INET6 + ::ffff: addresses
        // first; plain AF_INET is the fallback for older kernels).
        let ids = wire_ids(&t).unwrap();
        assert_eq!(ids.len(), 2);
        for id in &ids {
            match d
                .transact(&t, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, id, 2)
                .unwrap()
            {
                Reply::Diag(i) => assert_eq!(i.cookie, t.cookie, "family {}", id.family),
                other => panic!("family {}: {other:?}", id.family),
            }
        }
        d.destroy(&t).unwrap();
        assert_aborted(&server);
    }
    // Pure IPv6 over ::1.
    let l6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
    let _c6 = TcpStream::connect(l6.local_addr().unwrap()).unwrap();
    let (s6, _) = l6.accept().unwrap();
    let t6 = target_of(&s6, AF_INET6);
    d.destroy(&t6).unwrap();
    assert_aborted(&s6);
}

/// A named network namespace (and an optional process in it) removed on drop.
struct TestNetns {
    name: String,
    child: Option<Child>,
}

impl TestNetns {
    fn create() -> TestNetns {
        let name = format!("tcpstall-rt-{}", std::process::id());
        let _ = run_ip(&["netns", "del", &name]); // leftover of a crashed run
        let ns = TestNetns { name, child: None };
        run_ip(&["netns", "add", &ns.name]).expect("ip netns add");
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"]).expect("ip link set lo up");
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Run `f` on a thread that has entered this namespace.
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            // SAFETY: valid namespace fd; affects only this thread.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run_ip(&["netns", "del", &self.name]);
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn socket_in_other_netns_is_destroyed() {
    require_root("socket_in_other_netns_is_destroyed");
    let mut ns = TestNetns::create();
    let ino = fs::metadata(ns.path()).unwrap().ino() as u32;
    assert_ne!(ino, current_netns().unwrap());
    let pairs: Vec<(TcpListener, TcpStream, TcpStream)> =
        ns.run_in(|| (0..3).map(|_| loopback_pair().unwrap()).collect());
    let targets: Vec<Target> = pairs
        .iter()
        .map(|(_, _, s)| Target {
            netns: ino,
            pid_hint: None,
            ..target_of(s, AF_INET)
        })
        .collect();

    // Not visible from our own namespace.
    let mut own = Destroyer::new();
    let here = Target {
        netns: 0,
        ..targets[0].clone()
    };
    assert_eq!(own.lookup(&here).unwrap(), None);
    assert_eq!(own.destroy(&here).unwrap_err().errno, libc::ENOENT);

    // Via /run/netns.
    let mut d = Destroyer::new();
    let info = d
        .lookup(&targets[0])
        .unwrap()
        .expect("visible in its netns");
    assert_eq!(info.cookie, targets[0].cookie);
    d.destroy(&targets[0]).unwrap();
    assert_aborted(&pairs[0].2);
    assert_eq!(d.cached_netns(), 1);

    // A process in the namespace, then the /run/netns name removed: found via the
    // pid hint and via the /proc scan.
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    ns.child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(2);
    while fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino())
        .ok()
        != Some(ino.into())
    {
        assert!(
            Instant::now() < deadline,
            "child never entered the namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    run_ip(&["netns", "del", &ns.name]).unwrap();
    assert!(!ns.path().exists());
    let mut d = Destroyer::new();
    let hinted = Target {
        pid_hint: Some(pid),
        ..targets[1].clone()
    };
    d.destroy(&hinted).unwrap();
    assert_aborted(&pairs[1].2);
    let mut d = Destroyer::new();
    assert!(d.lookup(&targets[2]).unwrap().is_some());
    let (fd, path) = open_netns(ino, None).unwrap();
    assert_eq!(fs::File::from(fd).metadata().unwrap().ino(), u64::from(ino));
    assert!(path.starts_with("/proc"), "{}", path.display());

    // The process gone: the namespace (kept alive by our sockets only) is unreachable.
    let mut c = ns.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    let e = Destroyer::new().destroy(&targets[2]).unwrap_err();
    assert_eq!((e.errno, e.stage), (libc::ENOENT, "netns"), "{e}");
    assert!(e.meaning.contains("not found"), "{}", e.meaning);
    // The cached socket from before still reaches it.
    d.destroy(&targets[2]).unwrap();
    assert_aborted(&pairs[2].2);
    d.forget_netns(ino);
    assert_eq!(d.cached_netns(), 0);
}
