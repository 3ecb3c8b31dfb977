use super::test_support::*;
use super::*;

fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut m = Vec::new();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

fn diag_msg(family: u8, sport: u16, cookie: u64) -> Vec<u8> {
    let mut p = vec![family, 1, 0, 0];
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&[127, 0, 0, 1]);
    p.extend_from_slice(&[0; 12]);
    p.extend_from_slice(&[127, 0, 0, 2]);
    p.extend_from_slice(&[0; 12]);
    p.extend_from_slice(&0u32.to_ne_bytes());
    p.extend_from_slice(&(cookie as u32).to_ne_bytes());
    p.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    for v in [0u32, 0, 123, 0, 99] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

#[test]
fn dump_datagrams_collect_until_done() {
    let mut out = Vec::new();
    let mut dg = nlmsg(SOCK_DIAG_BY_FAMILY, 5, &diag_msg(2, 80, 0x1_0000_0002));
    dg.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 4, &diag_msg(2, 81, 9))); // stale: skipped
    dg.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 5, &diag_msg(2, 82, 7)));
    assert!(!parse_dump_datagram(&dg, 5, &mut out).unwrap());
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].cookie, out[0].local.port()), (0x1_0000_0002, 80));
    assert_eq!((out[1].cookie, out[1].send_q), (7, 123));
    let done = nlmsg(NLMSG_DONE, 5, &0i32.to_ne_bytes());
    assert!(parse_dump_datagram(&done, 5, &mut out).unwrap());
    assert_eq!(out.len(), 2);
    // A dump that failed part-way reports its errno in NLMSG_DONE.
    let failed = nlmsg(NLMSG_DONE, 5, &(-libc::ENOBUFS).to_ne_bytes());
    assert_eq!(
        parse_dump_datagram(&failed, 5, &mut out).unwrap_err().errno,
        libc::ENOBUFS
    );
    // An error instead of data (e.g. no IPv6 handler).
    let mut e = (-libc::ENOENT).to_ne_bytes().to_vec();
    e.extend_from_slice(&[0; 16]);
    let err = parse_dump_datagram(&nlmsg(NLMSG_ERROR, 5, &e), 5, &mut out).unwrap_err();
    assert_eq!((err.errno, err.stage), (libc::ENOENT, "reply"));
    // Lying length.
    let mut bad = nlmsg(SOCK_DIAG_BY_FAMILY, 5, &diag_msg(2, 80, 1));
    bad[0] = 255;
    assert_eq!(
        parse_dump_datagram(&bad, 5, &mut out).unwrap_err().errno,
        libc::EPROTO
    );
}

#[test]
fn endpoints_compare_across_mapped_forms() {
    let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
    let m: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
    assert!(same_endpoint(a, m) && same_endpoint(m, a) && same_endpoint(a, a));
    assert!(!same_endpoint(a, "127.0.0.1:81".parse().unwrap()));
    assert!(!same_endpoint(a, "127.0.0.2:80".parse().unwrap()));
    let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
    assert!(same_endpoint(v6, v6));
    assert!(!same_endpoint(v6, a));
    assert!(!same_endpoint("[::1]:80".parse().unwrap(), a));
}

#[test]
fn netns_ref_pid_from_path() {
    let r = |p: &str| NetnsRef {
        ino: 1,
        path: PathBuf::from(p),
    };
    assert_eq!(r("/proc/123/ns/net").pid(), Some(123));
    assert_eq!(r("/proc/7/task/9/ns/net").pid(), Some(7));
    assert_eq!(r("/run/netns/x").pid(), None);
    assert_eq!(r("/proc/self/ns/net").pid(), None);
}

#[test]
fn netns_files_are_checked() {
    let own = netns_at(Path::new("/proc/self/ns/net")).unwrap();
    assert_eq!(own.ino, current_netns().unwrap());
    let e = netns_at(Path::new("/etc/hostname")).unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert!(e.meaning.contains("not a namespace"), "{}", e.meaning);
    let e = netns_at(Path::new("/proc/self/ns/uts")).unwrap_err();
    assert!(e.meaning.contains("another type"), "{}", e.meaning);
    let e = netns_at(Path::new("/nonexistent/tcpstall")).unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
    assert!(e.meaning.contains("/run/netns/NAME"), "{}", e.meaning);
    let all = all_netns();
    assert_eq!(all.first().map(|n| n.ino), Some(own.ino));
    let mut inos: Vec<u32> = all.iter().map(|n| n.ino).collect();
    inos.sort_unstable();
    inos.dedup();
    assert_eq!(inos.len(), all.len(), "namespaces listed twice");
}

/// Own-namespace dumps need no privilege: sock_diag dumps are readable by anyone.
#[test]
fn dump_finds_own_sockets_by_cookie_and_tuple() {
    let (_l, client, server) = pair();
    let cookie = socket_cookie(&server).unwrap();
    let own = own_netns().unwrap();
    let s = find_sockets_in(std::slice::from_ref(&own), false, |d| d.cookie == cookie);
    assert_eq!((s.searched, s.failed.len(), s.found.len()), (1, 0, 1));
    let (t, d) = &s.found[0];
    assert_eq!(t.cookie, cookie);
    assert_eq!(t.netns, own.ino);
    assert_eq!(
        (t.local, t.remote),
        (server.local_addr().unwrap(), server.peer_addr().unwrap())
    );
    assert_eq!((d.state, d.family), (1, AF_INET));
    assert!(d.tcp_info_len > 0, "no tcp_info in the dump");
    let (found, _) = find_by_cookie(cookie).unwrap().expect("found by cookie");
    assert_eq!(found.cookie, cookie);
    // By tuple, in the mapped spelling, restricted to our namespace.
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    let v = find_by_tuple(
        mapped(client.local_addr().unwrap()),
        mapped(client.peer_addr().unwrap()),
        Some(own.ino),
    )
    .unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0.cookie, socket_cookie(&client).unwrap());
    // A closed socket is not found.
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(1);
    while find_sockets_in(std::slice::from_ref(&own), true, |d| d.cookie == cookie)
        .found
        .iter()
        .any(|(_, d)| d.state == 1)
    {
        assert!(Instant::now() < deadline, "closed socket still ESTABLISHED");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn dump_and_destroy_in_another_netns() {
    require_root("dump_and_destroy_in_another_netns");
    let ns = TestNetns::create(&format!("tcpstall-fd-{}", std::process::id()));
    let ino = ns.ino();
    let (l, client, server) = ns.run_in(pair);
    let cookie = socket_cookie(&server).unwrap();
    // Not in our own namespace; found by searching all of them.
    let own = own_netns().unwrap();
    assert!(
        find_sockets_in(std::slice::from_ref(&own), false, |d| d.cookie == cookie)
            .found
            .is_empty()
    );
    let (t, d) = find_by_cookie(cookie)
        .unwrap()
        .expect("found in the other netns");
    assert_eq!((t.netns, d.cookie), (ino, cookie));
    let v = find_by_tuple(
        server.local_addr().unwrap(),
        server.peer_addr().unwrap(),
        None,
    )
    .unwrap();
    assert!(
        v.iter().any(|(t, _)| t.netns == ino && t.cookie == cookie),
        "{v:?}"
    );
    let s = find_sockets(Some(ino), |d| d.cookie == cookie).unwrap();
    assert_eq!((s.searched, s.found.len()), (1, 1));
    // Through the /run/netns file with an attached destroyer.
    let r = netns_at(&ns.path()).unwrap();
    assert_eq!(r.ino, ino);
    let mut dz = Destroyer::new();
    dz.attach_netns(&r).unwrap();
    assert_eq!(dz.cached_netns(), 1);
    dz.destroy(&t).unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match server.take_error().unwrap() {
            Some(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
                break;
            }
            None => {
                assert!(Instant::now() < deadline, "not aborted");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    drop((l, client, server));
    // An unknown inode is reported, not searched silently.
    let e = find_sockets(Some(1), |_| true).unwrap_err();
    assert_eq!((e.errno, e.stage), (libc::ENOENT, "netns"));
}
