use super::*;
use crate::cli::test_tmp_dir as tmp_dir;
use crate::reset::test_support::*;
use clap::Parser;
use std::time::{Duration, SystemTime};
use StallClass::{NoAck, SlowDrain, ZeroWindow};

// ---- reset: arguments ----

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: ResetArgs,
}

fn parse(argv: &[&str]) -> Result<ResetArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("reset").chain(argv.iter().copied())).map(|c| c.args)
}

#[test]
fn cookie_syntax() {
    assert_eq!(parse_cookie("81234"), Ok(81234));
    assert_eq!(parse_cookie("0x13d52"), Ok(0x13d52));
    assert_eq!(parse_cookie("sk:13d52"), Ok(0x13d52));
    assert!(parse_cookie("0").unwrap_err().contains("never 0"));
    assert!(parse_cookie("0xffffffffffffffff").is_err());
    assert!(parse_cookie("13d52").unwrap_err().contains("0x"));
    assert!(parse_cookie("99999999999999999999").is_err());
    assert!(parse_cookie("").is_err());
}

#[test]
fn clap_requires_a_socket_and_both_ends() {
    assert!(parse(&[]).is_err());
    assert!(parse(&["--local", "127.0.0.1:1"]).is_err());
    assert!(parse(&["--remote", "127.0.0.1:1"]).is_err());
    assert!(parse(&["--cookie", "x"]).is_err());
    assert!(parse(&["--local", "localhost:80", "--remote", "127.0.0.1:1"]).is_err());
    let a = parse(&["--cookie", "7"]).unwrap();
    assert_eq!((a.cookie, a.local, a.dry_run), (Some(7), None, false));
    let a = parse(&[
        "--local",
        "[::1]:80",
        "--remote",
        "[::1]:9",
        "--cookie",
        "sk:ff",
        "--dry-run",
        "--netns",
        "net:[4026531840]",
    ])
    .unwrap();
    assert_eq!(a.cookie, Some(255));
    assert_eq!(a.local, Some("[::1]:80".parse().unwrap()));
    assert!(a.dry_run);
    assert_eq!(a.netns.as_deref(), Some("net:[4026531840]"));
}

fn args(cookie: Option<u64>, local: Option<&str>, remote: Option<&str>) -> ResetArgs {
    ResetArgs {
        cookie,
        local: local.map(|s| s.parse().unwrap()),
        remote: remote.map(|s| s.parse().unwrap()),
        ..ResetArgs::default()
    }
}

#[test]
fn request_validation() {
    let ok = ResetRequest::from_args(&args(Some(5), None, None)).unwrap();
    assert_eq!(ok.policy.guards.protect_ports, vec![22]);
    assert!(ok.netns.is_none() && ok.tuple.is_none());
    let e = |a: ResetArgs| ResetRequest::from_args(&a).unwrap_err().0;
    assert!(e(args(Some(0), None, None)).contains("never 0"));
    assert!(e(args(None, None, None)).contains("--cookie"));
    assert!(e(args(None, Some("1.2.3.4:5"), None)).contains("go together"));
    assert!(e(args(None, Some("1.2.3.4:0"), Some("1.2.3.4:5"))).contains("port 0"));
    assert!(e(args(None, Some("0.0.0.0:80"), Some("1.2.3.4:5"))).contains("listening"));
    assert!(e(args(None, Some("1.2.3.4:80"), Some("[2001:db8::1]:5"))).contains("mix"));
    // IPv4 against IPv4-mapped is one family.
    let m = ResetRequest::from_args(&args(None, Some("1.2.3.4:80"), Some("[::ffff:1.2.3.5]:5")))
        .unwrap();
    assert!(m.tuple.is_some());
    // --netns forms.
    let with_ns = |s: &str| {
        ResetRequest::from_args(&ResetArgs {
            netns: Some(s.to_string()),
            ..args(Some(5), None, None)
        })
    };
    assert_eq!(
        with_ns("4026531840").unwrap().netns,
        Some(NetnsArg::Inode(4026531840))
    );
    assert_eq!(
        with_ns("net:[12]").unwrap().netns,
        Some(NetnsArg::Inode(12))
    );
    assert!(with_ns("0").unwrap_err().0.contains("inode"));
    assert!(with_ns("99999999999").unwrap_err().0.contains("inode"));
    match with_ns("/proc/self/ns/net").unwrap().netns {
        Some(NetnsArg::File(r)) => assert_eq!(r.ino, reset::current_netns().unwrap()),
        other => panic!("{other:?}"),
    }
    assert!(with_ns("/etc/hostname")
        .unwrap_err()
        .0
        .contains("not a network namespace"));
    // --policy: guards loaded; invalid file is a usage error with its problem lines.
    let dir = tmp_dir("req");
    let p = dir.join("g.toml");
    std::fs::write(&p, "[guards]\nprotect_ports = [22, 8080]\n").unwrap();
    let r = ResetRequest::from_args(&ResetArgs {
        policy: Some(p.clone()),
        ..args(Some(5), None, None)
    })
    .unwrap();
    assert_eq!(r.policy.guards.protect_ports, vec![22, 8080]);
    std::fs::write(&p, "[guards]\nprotect_ports = [\"x\"]\n").unwrap();
    let msg = ResetRequest::from_args(&ResetArgs {
        policy: Some(p.clone()),
        ..args(Some(5), None, None)
    })
    .unwrap_err()
    .0;
    assert!(msg.contains("g.toml:2:"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- reset: classification and events ----

fn diag() -> TcpDiag {
    TcpDiag {
        inode: 1,
        recv_q: 3,
        send_q: 5000,
        tcp_info_len: 232,
        rto_us: 200_000,
        snd_mss: 1448,
        unacked: 2,
        last_data_sent_ms: 10,
        last_ack_recv_ms: 4321,
        rtt_us: 100,
        snd_cwnd: 10,
        bytes_acked: 1,
        notsent_bytes: 2000,
        snd_wnd: 65535,
        ..TcpDiag::new(
            libc::AF_INET as u16,
            1,
            77,
            "10.0.0.1:8000".parse().unwrap(),
            "10.0.0.2:50000".parse().unwrap(),
        )
    }
}

#[test]
fn signature_classes_and_queue() {
    let d = diag();
    assert!(has_queued(&d));
    assert_eq!(signature_class(&d), SlowDrain);
    let zw = TcpDiag {
        snd_wnd: 0,
        ..diag()
    };
    assert_eq!(signature_class(&zw), ZeroWindow);
    // snd_wnd 0 from a kernel without tcpi_snd_wnd means nothing.
    let old = TcpDiag {
        snd_wnd: 0,
        tcp_info_len: 224,
        ..diag()
    };
    assert_eq!(signature_class(&old), SlowDrain);
    for na in [
        TcpDiag {
            backoff: 3,
            ..diag()
        },
        TcpDiag {
            retransmits: 1,
            ..diag()
        },
        TcpDiag { lost: 2, ..diag() },
    ] {
        assert_eq!(signature_class(&na), NoAck);
    }
    assert_eq!(
        signature_class(&TcpDiag {
            backoff: 3,
            unacked: 0,
            ..diag()
        }),
        SlowDrain
    );
    let idle = TcpDiag {
        send_q: 0,
        unacked: 0,
        notsent_bytes: 0,
        snd_wnd: 0,
        ..diag()
    };
    assert!(!has_queued(&idle));
    assert_eq!(
        signature_class(&idle),
        SlowDrain,
        "zero window without data is not a stall"
    );
    assert!(!has_queued(&TcpDiag {
        unacked: 0,
        notsent_bytes: 0,
        ..diag()
    }));
    assert!(has_queued(&TcpDiag {
        tcp_info_len: 0,
        ..diag()
    }));
    assert!(not_wedged(&idle).unwrap().contains("ss -K"));
    let listen = TcpDiag {
        state: 10,
        ..diag()
    };
    assert!(not_wedged(&listen).unwrap().contains("LISTEN"));
    assert!(not_wedged(&diag()).is_none());
    assert!(not_wedged(&TcpDiag { state: 8, ..diag() }).is_none());
}

fn assert_valid(ev: &Event) -> serde_json::Value {
    let l = ev.to_json_line(SystemTime::now());
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    event::validate(&v).unwrap_or_else(|e| panic!("{e}: {l}"));
    v
}

#[test]
fn manual_events_pass_the_schema() {
    let t = Target {
        cookie: 77,
        netns: 4026531840,
        family: libc::AF_INET as u16,
        local: diag().local,
        remote: diag().remote,
        pid_hint: None,
        ifindex: 0,
    };
    let f = manual_socket_fields(
        &t,
        &TcpDiag {
            retransmits: 4,
            ..diag()
        },
    );
    assert_eq!(f.rule.as_deref(), Some("manual"));
    assert_eq!(f.action, event::Action::Reset);
    assert_eq!(
        (f.queued_bytes, f.unacked_bytes, f.recv_unread),
        (5000, 3000, 3)
    );
    assert_eq!(
        (f.stalled_for_ms, f.retransmits, f.netns),
        (4321, 4, 4026531840)
    );
    assert_eq!(f.class, NoAck);
    assert_eq!(f.evidence.threshold_reason, "manual reset by operator");
    assert!(f.pid.is_none() && f.comm.is_none() && f.cgroup.is_none());
    for ev in [
        Event::SocketReset {
            socket: f.clone(),
            bytes_still_queued: 5000,
            reset_latency_us: 12,
        },
        Event::ResetFailed {
            socket: f.clone(),
            errno: libc::EPERM,
            error: "EPERM".into(),
            meaning: reset::errno_meaning(libc::EPERM),
            retry_in_ms: None,
        },
        Event::ResetSkipped {
            socket: f.clone(),
            guard: SkipGuard::DryRun,
            detail: "x".into(),
        },
    ] {
        let v = assert_valid(&ev);
        assert_eq!(v["rule"], "manual");
        assert_eq!(v["pid"], serde_json::Value::Null);
    }
    let v6 = manual_socket_fields(
        &t,
        &TcpDiag {
            family: libc::AF_INET6 as u16,
            local: "[::ffff:10.0.0.1]:8000".parse().unwrap(),
            remote: "[::ffff:10.0.0.2]:5".parse().unwrap(),
            ..diag()
        },
    );
    assert_eq!(v6.family, event::Family::Inet6);
    assert_valid(&Event::StallStarted(v6));
}

// ---- reset: real kernel ----

fn request(cookie: Option<u64>) -> ResetRequest {
    ResetRequest {
        cookie,
        tuple: None,
        netns: None,
        policy: Policy::default(),
        dry_run: false,
    }
}

fn only_event(out: &ResetOutcome) -> serde_json::Value {
    assert_eq!(out.events.len(), 1, "{out:?}");
    assert_valid(&out.events[0])
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn reset_by_cookie_alone_aborts_the_blocked_writer() {
    require_root("reset_by_cookie_alone_aborts_the_blocked_writer");
    let w = Wedged::new(pair());
    let cookie = reset::socket_cookie(&w.server).unwrap();
    let out = execute(&request(Some(cookie)));
    assert_eq!(out.code, 0, "{out:?}");
    let v = only_event(&out);
    assert_eq!(v["event"], "socket_reset");
    assert_eq!(v["cookie"], cookie);
    assert_eq!(v["netns"], reset::current_netns().unwrap());
    assert_eq!(v["local"], w.server.local_addr().unwrap().to_string());
    assert!(v["bytes_still_queued"].as_u64().unwrap() > 0);
    assert!(v["queued_bytes"].as_u64().unwrap() > 0);
    // Loopback with a non-reading peer: zero window.
    assert_eq!(v["class"], "zero_window");
    assert!(out.notes[0].starts_with("reset "), "{:?}", out.notes);
    let err = w
        .writer_error(Duration::from_secs(1))
        .expect("blocked write() did not return within 1 s of the reset");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
    // Again: the socket is gone now.
    let again = execute(&request(Some(cookie)));
    assert_eq!(again.code, 1);
    assert!(again.events.is_empty());
    assert!(
        again.notes[0].contains(&format!(
            "no TCP socket with cookie {cookie} in any network namespace (searched "
        )),
        "{:?}",
        again.notes
    );
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn idle_socket_is_refused() {
    require_root("idle_socket_is_refused");
    let (_l, mut client, mut server) = pair();
    let cookie = reset::socket_cookie(&server).unwrap();
    let out = execute(&request(Some(cookie)));
    assert_eq!(out.code, 1, "{out:?}");
    let v = only_event(&out);
    assert_eq!(
        (v["event"].as_str(), v["guard"].as_str()),
        (Some("reset_skipped"), Some("not_stalled_anymore"))
    );
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("data queued") && detail.contains("ss -K"),
        "{detail}"
    );
    // Still alive both ways.
    assert_talks(&mut server, &mut client);
    assert!(server.take_error().unwrap().is_none());
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn protected_port_is_refused() {
    require_root("protected_port_is_refused");
    let w = Wedged::new(pair());
    let port = w.server.local_addr().unwrap().port();
    let dir = tmp_dir("protect");
    let pol = dir.join("p.toml");
    std::fs::write(&pol, format!("[guards]\nprotect_ports = [22, {port}]\n")).unwrap();
    let cookie = reset::socket_cookie(&w.server).unwrap();
    let req = ResetRequest::from_args(&ResetArgs {
        policy: Some(pol),
        ..args(Some(cookie), None, None)
    })
    .unwrap();
    let out = execute(&req);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.code, 1, "{out:?}");
    let v = only_event(&out);
    assert_eq!(v["guard"], "protected_port");
    assert!(v["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("port {port}")));
    assert!(
        w.writer_error(Duration::from_millis(200)).is_none(),
        "writer disturbed"
    );
    assert!(w.server.take_error().unwrap().is_none());
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn dry_run_leaves_the_socket_alone() {
    require_root("dry_run_leaves_the_socket_alone");
    let w = Wedged::new(pair());
    let cookie = reset::socket_cookie(&w.server).unwrap();
    let req = ResetRequest {
        dry_run: true,
        ..request(Some(cookie))
    };
    let out = execute(&req);
    assert_eq!(out.code, 0, "{out:?}");
    let v = only_event(&out);
    assert_eq!(
        (v["event"].as_str(), v["guard"].as_str()),
        (Some("reset_skipped"), Some("dry_run"))
    );
    assert!(v["detail"].as_str().unwrap().contains("would have reset"));
    assert!(
        w.writer_error(Duration::from_millis(200)).is_none(),
        "writer disturbed"
    );
    assert!(w.server.take_error().unwrap().is_none());
    assert!(outq(&w.server) > 0);
}

/// A socket bound to a device is reset: the dump's interface goes into the requests.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn reset_of_device_bound_sockets() {
    require_root("reset_of_device_bound_sockets");
    let l = crate::reset::kernel_tests::Linked::create("mb");
    for v6 in [false, true] {
        let w = Wedged::new(if v6 { l.link_local_v6() } else { l.bound_v4() });
        let cookie = reset::socket_cookie(&w.server).unwrap();
        let out = execute(&request(Some(cookie)));
        assert_eq!(out.code, 0, "{out:?}");
        let v = only_event(&out);
        assert_eq!(v["event"], "socket_reset");
        assert_eq!(v["netns"], l.client.ino());
        let err = w
            .writer_error(Duration::from_secs(1))
            .expect("blocked write() did not return within 1 s of the reset");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn reset_by_tuple_inside_a_created_netns() {
    require_root("reset_by_tuple_inside_a_created_netns");
    let ns = TestNetns::create(&format!("tcpstall-mr-{}", std::process::id()));
    let ino = ns.ino();
    let w = Wedged::new(ns.run_in(pair));
    let (l, r) = (
        w.server.local_addr().unwrap(),
        w.server.peer_addr().unwrap(),
    );
    let by_tuple = |netns: Option<&str>, dry_run: bool| {
        let a = ResetArgs {
            netns: netns.map(str::to_string),
            dry_run,
            ..args(None, Some(&l.to_string()), Some(&r.to_string()))
        };
        execute(&ResetRequest::from_args(&a).unwrap())
    };
    // Without --netns: found by searching every namespace (dry run).
    let out = by_tuple(None, true);
    assert_eq!(out.code, 0, "{out:?}");
    let v = only_event(&out);
    assert_eq!(
        (v["guard"].as_str(), v["netns"].as_u64()),
        (Some("dry_run"), Some(u64::from(ino)))
    );
    // Our own namespace does not have it.
    let own = reset::current_netns().unwrap().to_string();
    let out = by_tuple(Some(&own), false);
    assert_eq!(out.code, 1);
    assert!(
        out.notes[0].contains("in network namespace"),
        "{:?}",
        out.notes
    );
    assert!(w.writer_error(Duration::ZERO).is_none());
    // With --netns /run/netns/NAME: reset.
    let path = ns.path().display().to_string();
    let out = by_tuple(Some(&path), false);
    assert_eq!(out.code, 0, "{out:?}");
    let v = only_event(&out);
    assert_eq!(v["event"], "socket_reset");
    assert_eq!(v["netns"], ino);
    assert_eq!(v["cookie"], reset::socket_cookie(&w.server).unwrap());
    let err = w
        .writer_error(Duration::from_secs(1))
        .expect("writer not aborted");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn same_tuple_in_two_namespaces_is_ambiguous_without_netns() {
    require_root("same_tuple_in_two_namespaces_is_ambiguous_without_netns");
    let pid = std::process::id();
    let a = TestNetns::create(&format!("tcpstall-mr-{pid}-a"));
    let b = TestNetns::create(&format!("tcpstall-mr-{pid}-b"));
    let (sp, cp) = (
        40_000 + (pid % 10_000) as u16,
        50_000 + (pid % 10_000) as u16,
    );
    let wa = Wedged::new(a.run_in(move || pair_on(sp, cp)));
    let wb = Wedged::new(b.run_in(move || pair_on(sp, cp)));
    assert_eq!(
        wa.server.local_addr().unwrap(),
        wb.server.local_addr().unwrap()
    );
    let (l, r) = (
        wa.server.local_addr().unwrap(),
        wa.server.peer_addr().unwrap(),
    );
    let req = |cookie: Option<u64>| {
        ResetRequest::from_args(&args(cookie, Some(&l.to_string()), Some(&r.to_string()))).unwrap()
    };
    let out = execute(&req(None));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.events.is_empty());
    let msg = &out.notes[0];
    assert!(
        msg.contains("2 sockets match") && msg.contains("--netns"),
        "{msg}"
    );
    assert!(
        msg.contains(&a.ino().to_string()) && msg.contains(&b.ino().to_string()),
        "{msg}"
    );
    // The cookie picks one; the other keeps blocking.
    let cb = reset::socket_cookie(&wb.server).unwrap();
    let out = execute(&req(Some(cb)));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(only_event(&out)["netns"], b.ino());
    let err = wb
        .writer_error(Duration::from_secs(1))
        .expect("b not aborted");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
    assert!(
        wa.writer_error(Duration::from_millis(100)).is_none(),
        "a disturbed"
    );
    // A wrong cookie with the right tuple names the cookie that holds it now.
    let ca = reset::socket_cookie(&wa.server).unwrap();
    let out = execute(&req(Some(ca ^ 0x4000_0000)));
    assert_eq!(out.code, 1);
    assert!(
        out.notes[0].contains(&format!("belongs to cookie {ca}")),
        "{:?}",
        out.notes
    );
}
