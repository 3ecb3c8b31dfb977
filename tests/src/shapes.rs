//! The healthy connection shapes no agent may call stalled, set up together:
//!
//! | name    | path     | server writes     | client reads                                    |
//! |---------|----------|-------------------|-------------------------------------------------|
//! | slow    | veth     | as fast as it can | 64 KiB/s (4 KiB / 62.5 ms), SO_RCVBUF 16 KiB    |
//! | slow_lo | loopback | as fast as it can | 256 KiB/s (4 KiB / 15.6 ms)                     |
//! | fast    | loopback | 32 MiB/s          | as fast as it can                               |
//! | paused  | loopback | as fast as it can | 1 MiB/s, stops once for 1 s (< threshold)       |
//! | idle    | loopback | nothing           | blocked in read                                 |
//! | trickle | veth     | as fast as it can | 4 KiB every 200 ms, SO_RCVBUF 8 KiB             |
//!
//! The policy floor is 1 KiB/s; every reader is far above it. What the *sender's* kernel
//! sees matters, and on Linux 6.x a receiver re-opens a zero window only once half its
//! receive buffer is free (or 1/16 of `tcp_rmem[2]`, 2 MiB here): a reader at 20 KiB/s with
//! the default 128 KiB buffer leaves its peer without a single ACK for ~6 s, and at 64 KiB/s
//! on loopback (MSS ~64 KiB) for ~2 s. Those are real multi-second stalls from the sender's
//! side, indistinguishable from a dead reader until the window opens, so the slow shapes
//! here use buffer sizes or rates that keep the kernel-visible gaps well under the
//! threshold; [`HealthyShapes::assert_shapes_held`] measures that from `TCP_INFO`.

use crate::netns::NetNs;
use crate::traffic::{Conn, ConnOpts, Listener, ReadMode, WriteMode};
use crate::THRESHOLD;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Time from start to the pause of the `paused` shape.
pub const PAUSE_AFTER: Duration = Duration::from_millis(1500);
/// Length of that pause.
pub const PAUSE: Duration = Duration::from_secs(1);

struct Shape {
    name: &'static str,
    listener: Listener,
    client_ns: bool,
    opts: ConnOpts,
    write: Option<WriteMode>,
    read: ReadMode,
}

/// The shapes' listeners (bound at construction, so their ports can go into a policy before
/// the agent starts) and, once started, their connections.
pub struct HealthyShapes {
    shapes: Vec<Shape>,
    conns: Vec<(&'static str, Conn)>,
    ns: NetNs,
}

fn lo() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

impl HealthyShapes {
    /// Bind every shape's listener (and make the namespace of the veth shape).
    pub fn bind() -> HealthyShapes {
        let ns = NetNs::linked_to_host().expect("creating the trickle namespace");
        let l = |a: SocketAddr| Listener::bind(a).expect("binding a listener");
        let veth = SocketAddr::from((ns.peer_addr(), 0));
        let rcvbuf = |b| ConnOpts {
            client_rcvbuf: Some(b),
            server_sndbuf: None,
        };
        let shapes = vec![
            Shape {
                name: "slow",
                listener: l(veth),
                client_ns: true,
                opts: rcvbuf(16 * 1024),
                write: Some(WriteMode::Stream),
                read: ReadMode::rate(64 * 1024),
            },
            Shape {
                name: "slow_lo",
                listener: l(lo()),
                client_ns: false,
                opts: ConnOpts::default(),
                write: Some(WriteMode::Stream),
                read: ReadMode::rate(256 * 1024),
            },
            Shape {
                name: "fast",
                listener: l(lo()),
                client_ns: false,
                opts: ConnOpts::default(),
                write: Some(WriteMode::Paced(32 << 20)),
                read: ReadMode::Fast,
            },
            Shape {
                name: "paused",
                listener: l(lo()),
                client_ns: false,
                opts: ConnOpts::default(),
                write: Some(WriteMode::Stream),
                read: ReadMode::PausedOnce {
                    chunk: 64 * 1024,
                    every: Duration::from_micros(62_500),
                    after: PAUSE_AFTER,
                    pause: PAUSE,
                },
            },
            Shape {
                name: "idle",
                listener: l(lo()),
                client_ns: false,
                opts: ConnOpts::default(),
                write: None,
                read: ReadMode::Fast,
            },
            Shape {
                name: "trickle",
                listener: l(veth),
                client_ns: true,
                opts: rcvbuf(8 * 1024),
                write: Some(WriteMode::Stream),
                read: ReadMode::Paced {
                    chunk: 4096,
                    every: Duration::from_millis(200),
                },
            },
        ];
        HealthyShapes {
            shapes,
            conns: Vec::new(),
            ns,
        }
    }

    /// Server ports of every shape.
    pub fn ports(&self) -> Vec<u16> {
        self.shapes.iter().map(|s| s.listener.port()).collect()
    }

    /// Connect every shape and start its traffic (stream seeds differ per shape).
    pub fn start(&mut self) {
        for (i, s) in self.shapes.iter().enumerate() {
            let ns = s.client_ns.then_some(&self.ns);
            let mut c = s
                .listener
                .connect(ns, s.opts)
                .unwrap_or_else(|e| panic!("{}: connecting: {e}", s.name));
            c.watch_acks().expect("starting the ack watch");
            c.start(s.write, s.read, 1000 + i as u64)
                .unwrap_or_else(|e| panic!("{}: starting traffic: {e}", s.name));
            self.conns.push((s.name, c));
        }
    }

    /// The started connections, by shape name.
    pub fn conns(&self) -> &[(&'static str, Conn)] {
        &self.conns
    }

    /// Both cookies of every connection.
    pub fn cookies(&self) -> Vec<u64> {
        self.conns
            .iter()
            .flat_map(|(_, c)| [c.server_cookie, c.client_cookie])
            .collect()
    }

    /// Check, from the kernel's own counters, that each shape did what it claims: data kept
    /// being acknowledged (no gap reached the threshold), the paused reader's pause really
    /// stopped progress, and the slow and trickle readers really held data back.
    pub fn assert_shapes_held(&self) {
        let limit = THRESHOLD.mul_f64(0.8);
        for (name, c) in &self.conns {
            let gap = c.acks().longest_gap();
            eprintln!("shape {name}: longest no-ACK gap with data queued {gap:?}");
            assert!(
                gap < limit,
                "shape {name} is not the healthy shape it claims: the kernel saw no ACK progress \
                 with data queued for {gap:?} (limit {limit:?})"
            );
            match *name {
                "paused" => {
                    let (begin, end) = c.reader().pause_window();
                    assert!(
                        begin.is_some() && end.is_some(),
                        "the paused reader never paused"
                    );
                    assert!(
                        gap >= PAUSE.mul_f64(0.6),
                        "the pause did not stall the sender (longest gap {gap:?}); the shape \
                         is not testing anything"
                    );
                }
                "slow" | "slow_lo" | "trickle" => assert!(
                    c.writer().bytes() > c.reader().report().bytes,
                    "shape {name}: the reader kept up with the writer; it is not backpressured"
                ),
                _ => {}
            }
        }
    }

    /// Finish every connection and require every byte delivered intact.
    pub fn finish_intact(&mut self) {
        for (name, c) in &mut self.conns {
            let d = c.finish_intact(name, Duration::from_secs(30));
            eprintln!("shape {name}: {} bytes delivered intact", d.read.bytes);
        }
    }
}
