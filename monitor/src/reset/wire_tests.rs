//! Pure tests of the wire format (request encoding, reply and `tcp_info` decoding) and the
//! errno tables; no kernel needed.

use super::*;

fn target(family: u16, local: &str, remote: &str, cookie: u64) -> Target {
    Target {
        cookie,
        netns: 0,
        family,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        pid_hint: None,
        ifindex: 0,
    }
}

#[test]
fn encode_v4_request_layout() {
    let t = target(
        2,
        "10.1.2.3:443",
        "192.168.0.9:50000",
        0x1122_3344_5566_7788,
    );
    let ids = wire_ids(&t).unwrap();
    assert_eq!(ids.len(), 1);
    let m = encode_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 7, &ids[0], 0);
    assert_eq!(m.len(), 72);
    assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 72);
    assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 21);
    assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x5);
    assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
    let r = &m[16..];
    assert_eq!(&r[0..4], &[2, 6, 0, 0]);
    assert_eq!(u32::from_ne_bytes(r[4..8].try_into().unwrap()), 0xffff_ffff);
    assert_eq!(&r[8..10], &443u16.to_be_bytes());
    assert_eq!(&r[10..12], &50000u16.to_be_bytes());
    assert_eq!(&r[12..16], &[10, 1, 2, 3]);
    assert_eq!(&r[16..28], &[0; 12]);
    assert_eq!(&r[28..32], &[192, 168, 0, 9]);
    assert_eq!(&r[32..44], &[0; 12]);
    assert_eq!(&r[44..48], &[0; 4]); // ifindex
    assert_eq!(
        u32::from_ne_bytes(r[48..52].try_into().unwrap()),
        0x5566_7788
    );
    assert_eq!(
        u32::from_ne_bytes(r[52..56].try_into().unwrap()),
        0x1122_3344
    );
}

#[test]
fn requests_carry_the_bound_interface() {
    let mut t = target(2, "10.1.2.3:443", "192.168.0.9:50000", 9);
    t.ifindex = 7;
    let ids = wire_ids(&t).unwrap();
    let m = encode_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 1, &ids[0], 0);
    assert_eq!(
        u32::from_ne_bytes(m[16 + 44..16 + 48].try_into().unwrap()),
        7
    );
    // Both encodings of an IPv4-mapped socket, and IPv6.
    let mut t = target(10, "[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.2]:9", 9);
    t.ifindex = 0x0102_0304;
    let ids = wire_ids(&t).unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| id.ifindex == 0x0102_0304));
    let mut t = target(10, "[fe80::1]:80", "[fe80::2]:9", 9);
    t.ifindex = 3;
    assert_eq!(wire_ids(&t).unwrap()[0].ifindex, 3);
}

#[test]
fn transient_errors_are_classified() {
    let transient = [
        libc::ENOBUFS,
        libc::EAGAIN,
        libc::EWOULDBLOCK,
        libc::ETIMEDOUT,
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOMEM,
        libc::EINTR,
        libc::EBUSY,
    ];
    for errno in transient {
        let e = ResetError::new("reply", errno, errno_meaning(errno));
        assert!(e.is_transient(), "{}", errno_name(errno));
        assert!(
            e.meaning.contains("transient") || e.meaning.contains("retry"),
            "{}: {}",
            errno_name(errno),
            e.meaning
        );
    }
    for errno in [
        0,
        libc::ENOENT,
        libc::ESTALE,
        libc::EPERM,
        libc::EACCES,
        libc::EOPNOTSUPP,
        libc::EINVAL,
        libc::EAFNOSUPPORT,
        libc::EPROTONOSUPPORT,
        libc::ECONNREFUSED,
        libc::EMSGSIZE,
        libc::EPROTO,
        libc::ESRCH,
        libc::EIO,
    ] {
        for stage in ["netns", "socket", "send", "reply"] {
            let e = ResetError::new(stage, errno, "");
            assert!(!e.is_transient(), "{stage} {}", errno_name(errno));
        }
    }
}

#[test]
fn encode_lookup_sets_info_ext() {
    let t = target(10, "[2001:db8::1]:80", "[2001:db8::2]:1234", 5);
    let ids = wire_ids(&t).unwrap();
    assert_eq!(ids.len(), 1);
    let m = encode_request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, &ids[0], 1 << 1);
    let r = &m[16..];
    assert_eq!(&r[0..4], &[10, 6, 2, 0]);
    let l: Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(&r[12..28], &l.octets());
    let p: Ipv6Addr = "2001:db8::2".parse().unwrap();
    assert_eq!(&r[28..44], &p.octets());
}

#[test]
fn mapped_targets_try_inet6_mapped_then_inet() {
    for (l, r) in [
        ("[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.2]:9"),
        ("127.0.0.1:80", "127.0.0.2:9"),
    ] {
        let ids = wire_ids(&target(10, l, r, 9)).unwrap();
        assert_eq!(ids.len(), 2, "{l}");
        assert_eq!(ids[0].family, 10);
        assert_eq!(
            ids[0].src,
            Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets()
        );
        assert_eq!(
            ids[0].dst,
            Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets()
        );
        assert_eq!(ids[1].family, 2);
        assert_eq!(&ids[1].src[..4], &[127, 0, 0, 1]);
        assert_eq!(&ids[1].dst[..4], &[127, 0, 0, 2]);
        assert_eq!((ids[1].sport, ids[1].dport), (80, 9));
    }
    // An AF_INET socket given mapped addresses is still looked up as IPv4.
    let ids = wire_ids(&target(2, "[::ffff:1.2.3.4]:1", "[::ffff:5.6.7.8]:2", 9)).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(&ids[0].src[..4], &[1, 2, 3, 4]);
}

#[test]
fn invalid_targets_are_rejected() {
    let e = wire_ids(&target(2, "[2001:db8::1]:1", "[2001:db8::2]:2", 9)).unwrap_err();
    assert_eq!((e.errno, e.stage), (libc::EINVAL, "send"));
    let e = wire_ids(&target(10, "10.0.0.1:1", "[2001:db8::2]:2", 9)).unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert!(e.meaning.contains("mix"), "{}", e.meaning);
    let e = wire_ids(&target(1, "10.0.0.1:1", "10.0.0.2:2", 9)).unwrap_err();
    assert_eq!(e.errno, libc::EAFNOSUPPORT);
    // destroy refuses to act without a cookie, before touching any socket.
    let e = Destroyer::new()
        .destroy(&target(2, "10.0.0.1:1", "10.0.0.2:2", 0))
        .unwrap_err();
    assert_eq!((e.errno, e.stage), (libc::EINVAL, "send"));
    assert!(e.meaning.contains("cookie"));
}

#[test]
fn cookie_words_low_first_and_nocookie() {
    assert_eq!(cookie_words(0x0000_0001_0000_0002), [2, 1]);
    assert_eq!(cookie_words(0), [!0, !0]);
    assert_eq!(cookie_words(u64::MAX), [!0, !0]);
}

fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut m = Vec::new();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

fn nlmsgerr(errno: i32, seq: u32) -> Vec<u8> {
    let mut p = (-errno).to_ne_bytes().to_vec();
    p.extend_from_slice(&[0u8; 16]); // echoed request header
    nlmsg(NLMSG_ERROR, seq, &p)
}

#[test]
fn decode_acks_and_skip_stale() {
    assert_eq!(
        parse_datagram(&nlmsgerr(0, 3), 3).unwrap(),
        Some(Reply::Ack(0))
    );
    assert_eq!(
        parse_datagram(&nlmsgerr(libc::ENOENT, 3), 3).unwrap(),
        Some(Reply::Ack(libc::ENOENT))
    );
    // A stale reply to an older request followed by ours.
    let mut two = nlmsgerr(libc::EPERM, 2);
    two.extend(nlmsgerr(0, 3));
    assert_eq!(parse_datagram(&two, 3).unwrap(), Some(Reply::Ack(0)));
    assert_eq!(parse_datagram(&nlmsgerr(0, 2), 3).unwrap(), None);
    // Truncated / lying length.
    let mut bad = nlmsgerr(0, 3);
    bad[0] = 200;
    assert_eq!(parse_datagram(&bad, 3).unwrap_err().errno, libc::EPROTO);
    assert_eq!(
        parse_datagram(&nlmsg(NLMSG_ERROR, 3, &[1, 2]), 3)
            .unwrap_err()
            .errno,
        libc::EPROTO
    );
}

fn diag_payload(family: u8, tcp_info: Option<&[u8]>) -> Vec<u8> {
    let mut p = vec![family, 1, 4, 3];
    p.extend_from_slice(&8080u16.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    if family == 2 {
        p.extend_from_slice(&[127, 0, 0, 1]);
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&[10, 0, 0, 7]);
        p.extend_from_slice(&[0; 12]);
    } else {
        p.extend_from_slice(&Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets());
        p.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped().octets());
    }
    p.extend_from_slice(&3u32.to_ne_bytes()); // if
    p.extend_from_slice(&0xdead_beefu32.to_ne_bytes()); // cookie lo
    p.extend_from_slice(&0x12u32.to_ne_bytes()); // cookie hi
    for v in [200u32, 11, 5_000_000, 1000, 424242] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    assert_eq!(p.len(), DIAG_MSG_LEN);
    // An unrelated attribute first (INET_DIAG_SHUTDOWN = 8, u8 payload, padded).
    p.extend_from_slice(&5u16.to_ne_bytes());
    p.extend_from_slice(&8u16.to_ne_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    if let Some(ti) = tcp_info {
        p.extend_from_slice(&((4 + ti.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        p.extend_from_slice(ti);
        while p.len() % 4 != 0 {
            p.push(0);
        }
    }
    p
}

fn tcp_info_bytes(len: usize) -> Vec<u8> {
    let mut ti = vec![0u8; len];
    ti[0] = 1; // tcpi_state
    ti[TI_PROBES] = 2;
    ti[TI_BACKOFF] = 7;
    let put32 = |ti: &mut Vec<u8>, o: usize, v: u32| {
        if o + 4 <= ti.len() {
            ti[o..o + 4].copy_from_slice(&v.to_ne_bytes())
        }
    };
    let put64 = |ti: &mut Vec<u8>, o: usize, v: u64| {
        if o + 8 <= ti.len() {
            ti[o..o + 8].copy_from_slice(&v.to_ne_bytes())
        }
    };
    put32(&mut ti, TI_UNACKED, 13);
    put32(&mut ti, TI_RTO, 204_000);
    put64(&mut ti, TI_BYTES_ACKED, 0x1_0000_0001);
    put32(&mut ti, TI_NOTSENT_BYTES, 777);
    put32(&mut ti, TI_SND_WND, 65535);
    ti
}

#[test]
fn decode_diag_with_full_tcp_info() {
    let ti = tcp_info_bytes(248);
    let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_payload(2, Some(&ti)));
    let Some(Reply::Diag(d)) = parse_datagram(&buf, 9).unwrap() else {
        panic!("no diag")
    };
    assert_eq!(d.family, 2);
    assert_eq!(d.state, 1);
    assert_eq!(d.state_name(), "ESTAB");
    assert_eq!(d.timer, 4);
    assert_eq!(d.timer_retrans, 3);
    assert_eq!(d.cookie, 0x12_dead_beef);
    assert_eq!(d.local, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(d.remote, "10.0.0.7:40000".parse().unwrap());
    assert_eq!(d.ifindex, 3);
    assert_eq!(
        (d.timer_expires_ms, d.recv_q, d.send_q, d.uid, d.inode),
        (200, 11, 5_000_000, 1000, 424242)
    );
    assert_eq!(d.tcp_info_len, 248);
    assert_eq!(
        (d.probes, d.backoff, d.unacked, d.rto_us),
        (2, 7, 13, 204_000)
    );
    assert_eq!(d.bytes_acked, 0x1_0000_0001);
    assert_eq!(d.notsent_bytes, 777);
    assert!(d.has_snd_wnd());
    assert_eq!(d.snd_wnd, 65535);
}

#[test]
fn decode_diag_old_kernel_and_no_info() {
    // A 5.x tcp_info (224 bytes: ends before tcpi_snd_wnd).
    let ti = tcp_info_bytes(224);
    let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(10, Some(&ti)));
    let Some(Reply::Diag(d)) = parse_datagram(&buf, 1).unwrap() else {
        panic!("no diag")
    };
    assert_eq!(d.family, 10);
    assert_eq!(d.local, "[::ffff:127.0.0.1]:8080".parse().unwrap());
    assert!(!d.has_snd_wnd());
    assert_eq!(d.snd_wnd, 0);
    assert_eq!(d.notsent_bytes, 777);
    // No INET_DIAG_INFO at all (e.g. TIME_WAIT).
    let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(2, None));
    let Some(Reply::Diag(d)) = parse_datagram(&buf, 1).unwrap() else {
        panic!("no diag")
    };
    assert_eq!((d.tcp_info_len, d.bytes_acked, d.backoff), (0, 0, 0));
    // Truncated header.
    let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &[0u8; 40]);
    assert_eq!(parse_datagram(&buf, 1).unwrap_err().errno, libc::EPROTO);
}

// ---- errno meanings ----

#[test]
fn errno_meanings_are_actionable() {
    assert!(errno_meaning(libc::ENOENT).contains("already closed"));
    assert!(errno_meaning(libc::ENOENT).contains("cookie mismatch"));
    assert!(errno_meaning(libc::ESTALE).contains("reused"));
    assert!(errno_meaning(libc::EPERM).contains("CAP_NET_ADMIN"));
    assert!(errno_meaning(libc::EACCES).contains("CAP_NET_ADMIN"));
    assert!(errno_meaning(libc::EOPNOTSUPP).contains("CONFIG_INET_DIAG_DESTROY"));
    assert!(errno_meaning(libc::EPROTONOSUPPORT).contains("tcp_diag"));
    assert!(errno_meaning(libc::ETIMEDOUT).contains("retry"));
    assert!(errno_meaning(libc::ENOBUFS).contains("retry"));
    assert!(errno_meaning(libc::EINVAL).contains("bug"));
    let other = errno_meaning(libc::EXDEV);
    assert!(
        other.contains("unexpected") && other.contains("link"),
        "{other}"
    );
    assert_eq!(errno_name(libc::ECONNABORTED), "ECONNABORTED");
    let e = ResetError::new("reply", libc::EPERM, errno_meaning(libc::EPERM));
    let s = e.to_string();
    assert!(
        s.contains("EPERM") && s.contains("errno 1") && s.contains("CAP_NET_ADMIN"),
        "{s}"
    );
}
