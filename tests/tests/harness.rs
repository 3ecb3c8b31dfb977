//! The harness's traffic shapes, checked against the kernel without any agent: if these
//! fail, the agent tests built on them prove nothing.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tests::netns::NetNs;
use tests::shapes::HealthyShapes;
use tests::traffic::{ConnOpts, Listener, ReadMode, WriteMode};
use tests::{require_root, wait_until, THRESHOLD};

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn healthy_shapes_progress_and_deliver_intact() {
    require_root();
    let mut shapes = HealthyShapes::bind();
    shapes.start();
    std::thread::sleep(THRESHOLD * 2 + Duration::from_millis(500));
    shapes.assert_shapes_held();
    shapes.finish_intact();
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn wedges_stop_progress_the_way_the_agent_must_see_them() {
    require_root();
    // Non-reading peer on loopback: the writer blocks, the kernel stops acking.
    let l = Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let mut zw = l.connect(None, ConnOpts::default()).unwrap();
    zw.watch_acks().unwrap();
    zw.start(Some(WriteMode::Stream), ReadMode::Never, 1)
        .unwrap();

    // Peer in a namespace, reading, then blackholed.
    let ns = NetNs::linked_to_host().unwrap();
    let l2 = Listener::bind(SocketAddr::from((ns.peer_addr(), 0))).unwrap();
    let mut bh = l2.connect(Some(&ns), ConnOpts::default()).unwrap();
    bh.watch_acks().unwrap();
    bh.start(Some(WriteMode::Paced(8 << 20)), ReadMode::Fast, 2)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || bh.reader().report().bytes > 0),
        "the namespace client read nothing before the blackhole"
    );
    ns.blackhole().unwrap();
    let t = Instant::now();

    let blocked = zw
        .writer()
        .wait_blocked(Duration::from_millis(300), Duration::from_secs(10))
        .expect("the writer to a non-reading client never blocked");
    let until = blocked.max(t) + THRESHOLD + Duration::from_millis(300);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    assert!(
        zw.acks().longest_gap() >= THRESHOLD,
        "non-reading peer: acks kept coming"
    );
    let info = tests::sock::tcp_info(zw.server()).unwrap();
    assert_eq!(info.tcpi_snd_wnd, 0, "non-reading peer: window not 0");
    eprintln!("zero window: writer blocked {:?} ago", blocked.elapsed());

    let since = t.elapsed();
    let info = tests::sock::tcp_info(bh.server()).unwrap();
    assert!(
        bh.acks().longest_gap() >= THRESHOLD,
        "blackholed peer: acks kept coming"
    );
    assert!(
        info.tcpi_retransmits > 0 || info.tcpi_backoff > 0,
        "blackholed peer: no retransmits after {since:?}"
    );
    assert!(
        info.tcpi_unacked > 0,
        "blackholed peer: nothing outstanding"
    );
    assert!(
        info.tcpi_snd_wnd > 0,
        "blackholed peer: the window should stay open"
    );
}
