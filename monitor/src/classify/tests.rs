//! Unit tests of the classification: simulated sockets through the tracker, cadence,
//! calibration, formatting, saving and restoring.

use super::cadence::cadence;
use super::calibration::percentile;
use super::fmt::fmt_bytes;
use super::fmt::fmt_ns;
use super::tracker::Sample;
use super::tracker::{thin, History, Tracker};
use crate::snapshot::Snapshot;
use monitor_common::progress;
use monitor_common::Gap;
use monitor_common::SockState;
use monitor_common::Times;
use std::collections::VecDeque;
use std::time::Duration;

use super::*;
use monitor_common::GAP_SLOTS;
use std::net::SocketAddr;

const MIB: u64 = 1024 * 1024;
/// Monotonic time at which the test sockets start being tracked.
const T0: u64 = 5_000 * NS_PER_SEC;

/// Monotonic ns `secs` after T0.
fn at(secs: f64) -> u64 {
    T0 + (secs * 1e9).round() as u64
}

fn thresholds(zw_secs: u64) -> Thresholds {
    Thresholds {
        zero_window_after: Duration::from_secs(zw_secs),
        no_ack_after: Duration::from_secs(zw_secs),
        ..Thresholds::default()
    }
}

/// A kernel-like model of one tracked socket: mutate it with the events the kernel
/// hooks would see, then take a [`Snapshot`] per tick.
///
/// The ACK-progress bookkeeping (snd_una, bytes acked, last progress, the gap ring, the
/// zero-window flags) is a kernel entry `k` kept by the eBPF programs' own functions
/// ([`monitor_common::progress`]), and each snapshot takes those fields from it the way the
/// agent does ([`Snapshot::from_state`]). Everything else is set on `s` directly.
struct Sim {
    s: Snapshot,
    k: SockState,
}

/// snd_una when a simulated socket starts being tracked: 1 MiB before the sequence number
/// wraps, so the tests' ACKs cross the wrap.
const SIM_SND_UNA: u32 = 0u32.wrapping_sub(1 << 20);

impl Sim {
    fn new(cookie: u64, start: u64) -> Sim {
        let local: SocketAddr = "10.0.0.1:8765".parse().unwrap();
        let remote: SocketAddr = "10.0.0.2:50123".parse().unwrap();
        Sim {
            s: Snapshot {
                now_ns: start,
                cookie,
                netns: 4026531840,
                family: crate::snapshot::AF_INET,
                local,
                remote,
                bound_dev_if: 0,
                pid: Some(4242),
                comm: Some("python3".into()),
                cgroup_id: Some(1),
                queued_bytes: 0,
                unacked_bytes: 0,
                snd_wnd: 65535,
                zero_window: false,
                sndbuf_full: false,
                orphan: false,
                wmem_queued: 0,
                sndbuf: 4 * MIB as u32,
                retransmits: 0,
                backoff: 0,
                zero_window_acks: 0,
                bytes_acked: 0,
                times: Times {
                    first_seen_ns: start,
                    last_send_ns: start,
                    last_ack_ns: start,
                    last_progress_ns: start,
                    last_retrans_ns: 0,
                },
                recv_unread: 0,
                rcvbuf: 131072,
                rcv_wnd: 65535,
                last_read_ns: start,
                recent_gaps: Default::default(),
                gap_count: 0,
            },
            k: SockState {
                snd_una: SIM_SND_UNA,
                times: Times {
                    first_seen_ns: start,
                    last_progress_ns: start,
                    ..Times::default()
                },
                ..SockState::zeroed()
            },
        }
    }

    /// A sender with a full send buffer waiting on a peer that advertises window 0.
    fn blocked_writer(cookie: u64, start: u64) -> Sim {
        let mut sim = Sim::new(cookie, start);
        sim.s.queued_bytes = 4 * MIB;
        sim.s.sndbuf_full = true;
        sim.s.wmem_queued = 4 * MIB as u32;
        sim.set_zero_window(true);
        sim.s.snd_wnd = 0;
        sim
    }

    /// The peer's window is (or is no longer) zero, as the kernel hooks mark it: a zero
    /// window also marks the gap that the next progress ends as a zero-window gap.
    fn set_zero_window(&mut self, zero: bool) {
        progress::set_zero_window(&mut self.k, zero);
    }

    /// An ACK that advances snd_una by `bytes`, accounted (progress, gap) like the kernel does.
    fn ack(&mut self, t: u64, bytes: u64) {
        let bytes32 = u32::try_from(bytes).expect("an ACK acknowledges less than 4 GiB");
        let una = self.k.snd_una.wrapping_add(bytes32);
        progress::record_progress(&mut self.k, una, t);
        let s = &mut self.s;
        s.queued_bytes = s.queued_bytes.saturating_sub(bytes);
        s.unacked_bytes = s.unacked_bytes.min(s.queued_bytes);
        s.times.last_ack_ns = t;
    }

    /// The kernel entry's gap ring starts afresh (a new tracking session, or a restart that
    /// lost the ring).
    fn fresh_ring(&mut self) {
        self.k.gaps = [Gap::default(); GAP_SLOTS];
        self.k.gap_count = 0;
    }

    fn retransmit(&mut self, t: u64) {
        self.s.retransmits += 1;
        self.s.backoff += 1;
        self.s.times.last_retrans_ns = t;
        self.s.times.last_send_ns = t;
    }

    fn snap(&mut self, now: u64) -> Snapshot {
        let k = Snapshot::from_state(&self.k, now);
        let s = &mut self.s;
        s.now_ns = now;
        s.zero_window = k.zero_window;
        s.bytes_acked = k.bytes_acked;
        s.times.last_progress_ns = k.times.last_progress_ns;
        s.recent_gaps = k.recent_gaps;
        s.gap_count = k.gap_count;
        s.clone()
    }
}

/// Tick every `step` seconds over (from, to], applying `events(sim, tick_ns)` before each
/// snapshot; returns (tick, observation) for ticks that saw something.
fn run(
    tr: &mut Tracker,
    sim: &mut Sim,
    t: &Thresholds,
    from: f64,
    to: f64,
    step: f64,
    mut events: impl FnMut(&mut Sim, u64),
) -> Vec<(u64, Observation)> {
    let mut out = Vec::new();
    let n = ((to - from) / step).round() as u64;
    assert!(n <= 1_000_000, "test loop bound");
    for i in 1..=n {
        let now = at(from + i as f64 * step);
        events(sim, now);
        let snap = sim.snap(now);
        let obs = tr.observe(&snap, t);
        if obs != Observation::default() {
            out.push((now, obs));
        }
    }
    out
}

fn transitions(obs: &[(u64, Observation)]) -> Vec<(u64, Transition)> {
    obs.iter()
        .filter_map(|(t, o)| o.transition.clone().map(|tr| (*t, tr)))
        .collect()
}

fn started(class: StallClass, stalled_for_ms: u64, tr: &Transition) -> Evidence {
    match tr {
        Transition::Started {
            class: c,
            stalled_for_ms: s,
            evidence,
        } if *c == class && *s == stalled_for_ms => evidence.clone(),
        other => panic!("expected Started {class} after {stalled_for_ms} ms, got {other:?}"),
    }
}

/// python-websockets issue #105 shape: the client reads ~1 MiB, then sits on its queue
/// for ~14.2 s, again and again. Threshold 3 s, cadence factor 2.
#[test]
fn bursty_consumer_first_pause_is_a_stall_then_cadence_protects_it() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(1, at(0.0));
    // One tick at tracking start.
    let first = tr.observe(&sim.snap(at(0.0)), &t);
    assert_eq!(first, Observation::default());

    let period = 14.2;
    let cycles = 10;
    let mut next = 1;
    let obs = run(
        &mut tr,
        &mut sim,
        &t,
        0.0,
        period * cycles as f64 + 1.0,
        1.0,
        |sim, now| {
            while next <= cycles && at(next as f64 * period) <= now {
                sim.ack(at(next as f64 * period), MIB);
                sim.s.queued_bytes += MIB; // the writer refills what got acked
                next += 1;
            }
        },
    );
    let trs = transitions(&obs);
    assert_eq!(trs.len(), 2, "exactly one Started and one Cleared: {trs:?}");
    // No history: the plain 3 s threshold, first tick at 3 s.
    assert_eq!(trs[0].0, at(3.0));
    let ev = started(StallClass::ZeroWindow, 3000, &trs[0].1);
    assert_eq!(
        ev.threshold_reason,
        "no recovery history: rule threshold 3s"
    );
    assert_eq!(ev.effective_threshold_ms, 3000);
    assert_eq!(ev.recovered_episodes, 0);
    // Recovered by itself: Cleared at the tick after 14.2 s, with the exact pause.
    assert_eq!(trs[1].0, at(15.0));
    assert_eq!(
        trs[1].1,
        Transition::Cleared {
            class: StallClass::ZeroWindow,
            stalled_for_ms: 14200
        }
    );
    // Every recovery reported exactly once, first one with its numbers.
    let eps: Vec<&Episode> = obs.iter().flat_map(|(_, o)| o.recovered.iter()).collect();
    assert_eq!(eps.len(), cycles);
    assert_eq!(
        *eps[0],
        Episode {
            class: StallClass::ZeroWindow,
            start_ns: at(0.0),
            end_ns: at(14.2),
            duration_ms: 14200,
            bytes_acked: MIB,
        }
    );
    assert!(eps
        .iter()
        .all(|e| e.duration_ms == 14200 && e.bytes_acked == MIB));
    let ev = tr.evidence(1).unwrap();
    assert_eq!(
        ev.threshold_reason,
        "cadence: 2.0 x longest recovered gap 14.2s = 28.4s"
    );
    assert_eq!(ev.effective_threshold_ms, 28400);
    assert_eq!(ev.recovered_episodes, cycles as u32);
    assert_eq!(tr.episodes(1).len(), HISTORY_EPISODES);
    assert!(tr.active(1).is_none());
    assert_eq!(tr.stalled_count(), 0);
}

/// Recovers after 10 s, 14 s, 12 s, then the consumer dies for good.
#[test]
fn consumer_that_recovers_then_dies_stalls_at_factor_times_longest_gap() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(2, at(0.0));
    tr.observe(&sim.snap(at(0.0)), &t);
    let recoveries = [10.0, 24.0, 36.0];
    let mut k = 0;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 63.0, 1.0, |sim, now| {
        while k < recoveries.len() && at(recoveries[k]) <= now {
            sim.ack(at(recoveries[k]), 512 * 1024);
            sim.s.queued_bytes += 512 * 1024;
            k += 1;
        }
    });
    let trs = transitions(&obs);
    // First pause has no history: a stall at 3 s, cleared at 10 s.
    assert_eq!(trs.len(), 2, "{trs:?}");
    started(StallClass::ZeroWindow, 3000, &trs[0].1);
    assert_eq!(trs[1].1.class(), StallClass::ZeroWindow);
    assert_eq!(trs[1].1.stalled_for_ms(), 10_000);
    // Dead since 36 s; longest recovered gap 14 s -> 28 s. 63 s is 27 s in: nothing yet.
    let snap = sim.snap(at(36.0 + 27.999));
    assert_eq!(tr.observe(&snap, &t).transition, None, "not before 28 s");
    let snap = sim.snap(at(36.0 + 28.0));
    let o = tr.observe(&snap, &t);
    let ev = started(
        StallClass::ZeroWindow,
        28_000,
        o.transition.as_ref().unwrap(),
    );
    assert_eq!(
        ev.threshold_reason,
        "cadence: 2.0 x longest recovered gap 14s = 28s"
    );
    assert_eq!(ev.longest_gap_ms, 14_000);
    assert_eq!(ev.recovered_episodes, 3);
    assert_eq!(ev.effective_threshold_ms, 28_000);
    let a = tr.active(2).unwrap();
    assert_eq!(a.class, StallClass::ZeroWindow);
    assert_eq!(a.since_ns, at(36.0));
    assert_eq!(tr.stalled_count(), 1);
}

#[test]
fn cadence_is_capped_by_the_ceiling() {
    let t = thresholds(30); // ceiling 300 s, factor 2
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(3, at(0.0));
    tr.observe(&sim.snap(at(0.0)), &t);
    let recoveries = [100.0, 300.0]; // gaps 100 s and 200 s
    let mut k = 0;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 599.0, 1.0, |sim, now| {
        while k < recoveries.len() && at(recoveries[k]) <= now {
            sim.ack(at(recoveries[k]), MIB);
            sim.s.queued_bytes += MIB;
            k += 1;
        }
    });
    let trs = transitions(&obs);
    assert_eq!(
        trs.len(),
        2,
        "first pause stalls at 30 s, clears at 100 s: {trs:?}"
    );
    assert_eq!(trs[0].0, at(30.0));
    // Cadence asks 400 s; the ceiling says 300 s. 599 s is 299 s after the last progress.
    let o = tr.observe(&sim.snap(at(600.0)), &t);
    let ev = started(
        StallClass::ZeroWindow,
        300_000,
        o.transition.as_ref().unwrap(),
    );
    assert_eq!(ev.threshold_reason, "ceiling 5m (cadence asked 6m40s)");
    assert_eq!(ev.effective_threshold_ms, 300_000);
}

#[test]
fn cadence_reasons() {
    let mut h = History::default();
    let t = Thresholds::default();
    let s30 = 30 * NS_PER_SEC;
    assert_eq!(
        cadence(&h, s30, &t),
        (s30, "no recovery history: rule threshold 30s".to_string())
    );
    h.push(Episode {
        class: StallClass::NoAck,
        start_ns: at(0.0),
        end_ns: at(3.1),
        duration_ms: 3100,
        bytes_acked: 1448,
    });
    assert_eq!(
        cadence(&h, s30, &t),
        (s30, "rule threshold 30s >= cadence 2.0 x 3.1s".to_string())
    );
    // A ceiling below the rule threshold never lowers it.
    h.push(Episode {
        class: StallClass::ZeroWindow,
        start_ns: at(10.0),
        end_ns: at(370.0),
        duration_ms: 360_000,
        bytes_acked: 1448,
    });
    let low = Thresholds {
        ceiling: Duration::from_secs(10),
        cadence_factor: 1.5,
        ..Thresholds::default()
    };
    assert_eq!(
        cadence(&h, s30, &low),
        (
            s30,
            "rule threshold 30s (ceiling 10s is below it; cadence asked 9m)".to_string()
        )
    );
    // Nonsense factors fall back to the rule threshold.
    let nan = Thresholds {
        cadence_factor: f64::NAN,
        ..Thresholds::default()
    };
    assert_eq!(cadence(&h, s30, &nan).0, s30);
}

/// Peer vanished (cable pulled / blackhole): data in flight, RTO retransmits with
/// exponential backoff, no ACK at all.
#[test]
fn blackhole_is_no_ack_with_retransmits() {
    let t = Thresholds::default(); // no_ack_after 30 s
    let mut tr = Tracker::new();
    let mut sim = Sim::new(4, at(0.0));
    sim.s.queued_bytes = 100_000;
    sim.s.unacked_bytes = 64_000;
    tr.observe(&sim.snap(at(0.0)), &t);
    let rto = [0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 25.4, 51.0];
    let mut k = 0;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 60.0, 1.0, |sim, now| {
        while k < rto.len() && at(rto[k]) <= now {
            sim.retransmit(at(rto[k]));
            k += 1;
        }
    });
    let trs = transitions(&obs);
    assert_eq!(trs.len(), 1, "{trs:?}");
    assert_eq!(trs[0].0, at(30.0));
    let ev = started(StallClass::NoAck, 30_000, &trs[0].1);
    assert_eq!(
        ev.threshold_reason,
        "no recovery history: rule threshold 30s"
    );
    assert_eq!(ev.bytes_acked_last_window, 0);
    assert_eq!(tr.active(4).unwrap().class, StallClass::NoAck);
}

#[test]
fn no_ack_needs_retransmits_or_backoff() {
    let t = Thresholds::default();
    // Silent, no retransmit, no backoff.
    let mut tr = Tracker::new();
    let mut sim = Sim::new(5, at(0.0));
    sim.s.queued_bytes = 100_000;
    sim.s.unacked_bytes = 64_000;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 120.0, 1.0, |_, _| {});
    assert!(transitions(&obs).is_empty());

    // Retransmits only before the last progress (old news), backoff back to 0.
    let mut tr = Tracker::new();
    let mut sim = Sim::new(6, at(0.0));
    sim.s.queued_bytes = 100_000;
    sim.s.unacked_bytes = 64_000;
    sim.retransmit(at(0.5));
    sim.s.backoff = 0;
    sim.ack(at(1.0), 1448);
    let obs = run(&mut tr, &mut sim, &t, 1.0, 120.0, 1.0, |_, _| {});
    assert!(transitions(&obs).is_empty());

    // The same socket with a fresh retransmit after the progress: now it is evidence.
    let o = run(&mut tr, &mut sim, &t, 120.0, 121.0, 1.0, |sim, now| {
        sim.retransmit(now)
    });
    started(
        StallClass::NoAck,
        120_000,
        o[0].1.transition.as_ref().unwrap(),
    );
}

/// Drains 2 KiB/s with the writer blocked: above the 1 KiB/s floor.
#[test]
fn slow_reader_above_floor_never_stalls() {
    let t = Thresholds::default();
    let mut tr = Tracker::new();
    let mut sim = Sim::new(7, at(0.0));
    sim.s.queued_bytes = 4 * MIB;
    sim.s.sndbuf_full = true;
    tr.observe(&sim.snap(at(0.0)), &t);
    let obs = run(&mut tr, &mut sim, &t, 0.0, 300.0, 1.0, |sim, now| {
        sim.ack(now, 2048);
    });
    assert!(obs.iter().all(|(_, o)| o.transition.is_none()));
    assert_eq!(tr.evidence(7).unwrap().bytes_acked_last_window, 30 * 2048);
}

/// Drains 512 B/s with the writer blocked: slow_drain once observed for the window,
/// then cleared once the reader speeds up.
#[test]
fn slow_reader_below_floor_with_full_sndbuf_is_slow_drain() {
    let t = Thresholds::default();
    let mut tr = Tracker::new();
    let mut sim = Sim::new(8, at(0.0));
    sim.s.queued_bytes = 4 * MIB;
    sim.s.sndbuf_full = true;
    tr.observe(&sim.snap(at(0.0)), &t);
    let obs = run(&mut tr, &mut sim, &t, 0.0, 60.0, 1.0, |sim, now| {
        sim.ack(now, 512);
    });
    let trs = transitions(&obs);
    assert_eq!(trs.len(), 1, "{trs:?}");
    assert_eq!(
        trs[0].0,
        at(30.0),
        "not before observed for the whole window"
    );
    let ev = started(StallClass::SlowDrain, 30_000, &trs[0].1);
    assert_eq!(ev.bytes_acked_last_window, 30 * 512);
    assert_eq!(ev.effective_threshold_ms, 30_000);
    assert_eq!(
        ev.threshold_reason,
        "slow drain: 15.0 KiB acked over the last 30s (512 B/s) against a floor of \
         1024 B/s, send buffer full"
    );
    // The same rate with the writer not blocked is not a stall (checked on a twin).
    let mut twin_tr = Tracker::new();
    let mut twin = Sim::new(9, at(0.0));
    twin.s.queued_bytes = 4 * MIB;
    let obs = run(&mut twin_tr, &mut twin, &t, 0.0, 60.0, 1.0, |sim, now| {
        sim.ack(now, 512)
    });
    assert!(transitions(&obs).is_empty());
    // Reader speeds up to 4 KiB/s: the 30 s rate crosses 1 KiB/s after 5 s.
    let obs = run(&mut tr, &mut sim, &t, 60.0, 70.0, 1.0, |sim, now| {
        sim.ack(now, 4096);
    });
    let trs = transitions(&obs);
    assert_eq!(trs.len(), 1, "{trs:?}");
    assert_eq!(trs[0].0, at(65.0));
    assert_eq!(trs[0].1.class(), StallClass::SlowDrain);
    assert!(tr.active(8).is_none());
}

#[test]
fn paused_then_resumed_reader_is_not_a_stall() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(10, at(0.0));
    tr.observe(&sim.snap(at(0.0)), &t);
    // Ticks (and ACKs once resumed) every 100 ms: no further >= 250 ms gaps.
    let obs = run(&mut tr, &mut sim, &t, 0.0, 10.0, 0.1, |sim, now| {
        let ms = (now - T0) / NS_PER_MS;
        if ms == 2500 {
            sim.ack(now, 256 * 1024);
            sim.set_zero_window(false);
            sim.s.snd_wnd = 256 * 1024;
        } else if ms > 2500 {
            sim.ack(now, 128 * 1024);
        }
    });
    assert!(transitions(&obs).is_empty());
    let eps: Vec<&Episode> = obs.iter().flat_map(|(_, o)| o.recovered.iter()).collect();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].duration_ms, 2500);
    assert_eq!(eps[0].class, StallClass::ZeroWindow);
}

/// The peer re-opens its window (a window update) just before the ACK that ends the
/// pause: the kernel's sticky zero-window-seen flag still makes it a zero-window episode.
#[test]
fn window_reopened_before_the_ending_ack_is_still_a_zero_window_episode() {
    let t = thresholds(60);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(31, at(0.0));
    tr.observe(&sim.snap(at(0.0)), &t);
    sim.set_zero_window(false);
    sim.s.snd_wnd = 64 * 1024;
    sim.ack(at(2.0), 64 * 1024);
    let o = tr.observe(&sim.snap(at(2.5)), &t);
    assert_eq!(o.recovered.len(), 1, "{o:?}");
    assert_eq!(o.recovered[0].class, StallClass::ZeroWindow);
    assert_eq!(o.recovered[0].duration_ms, 2000);
    // The next pause, with the window open all along, is no zero-window episode.
    sim.ack(at(4.0), 1000);
    let o = tr.observe(&sim.snap(at(4.5)), &t);
    assert_eq!(o.recovered.len(), 1, "{o:?}");
    assert_eq!(o.recovered[0].class, StallClass::NoAck);
}

#[test]
fn idle_connection_with_nothing_queued_never_stalls() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    let mut sim = Sim::new(11, at(0.0));
    // Last ACK said window 0 and a retransmit happened long ago, but nothing is queued.
    sim.set_zero_window(true);
    sim.s.backoff = 3;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 600.0, 1.0, |_, _| {});
    assert!(obs.is_empty(), "{obs:?}");
    assert_eq!(tr.stalled_count(), 0);
}

/// ACKs trickle: a little progress every 2 s under a mostly zero window, with
/// retransmits; the threshold of 3 s is never reached.
#[test]
fn trickling_acks_never_stall() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(12, at(0.0));
    sim.s.sndbuf_full = false;
    sim.s.unacked_bytes = 1448;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 300.0, 0.5, |sim, now| {
        let ms = (now - T0) / NS_PER_MS;
        if ms.is_multiple_of(2000) {
            sim.ack(now, 100);
            sim.s.unacked_bytes = 1448;
        } else if ms % 2000 == 1500 {
            sim.retransmit(now);
        }
    });
    assert!(transitions(&obs).is_empty());
}

#[test]
fn recv_backlog_when_the_local_app_stops_reading() {
    let t = Thresholds::default();
    let mut tr = Tracker::new();
    let mut sim = Sim::new(13, at(0.0));
    sim.s.rcvbuf = 262_144;
    sim.s.recv_unread = 200_000; // >= rcvbuf/2
    sim.s.rcv_wnd = 5_000;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 40.0, 1.0, |_, _| {});
    assert_eq!(obs.len(), 1, "{obs:?}");
    assert_eq!(obs[0].0, at(30.0));
    assert_eq!(obs[0].1.transition, None, "read side is independent");
    let ev = started(
        StallClass::RecvBacklog,
        30_000,
        obs[0].1.recv_transition.as_ref().unwrap(),
    );
    assert!(
        ev.threshold_reason
            .contains("195.3 KiB unread >= half of rcvbuf 256.0 KiB"),
        "{}",
        ev.threshold_reason
    );
    assert!(
        tr.active(13).is_none(),
        "observe-only: not a send-side stall"
    );
    assert_eq!(tr.active_recv(13).unwrap().class, StallClass::RecvBacklog);
    assert_eq!(tr.stalled_count(), 1);
    // The app reads at 45 s.
    let obs = run(&mut tr, &mut sim, &t, 40.0, 46.0, 1.0, |sim, now| {
        if now == at(45.0) {
            sim.s.last_read_ns = now;
            sim.s.recv_unread = 1000;
        }
    });
    assert_eq!(
        obs[0].1.recv_transition,
        Some(Transition::Cleared {
            class: StallClass::RecvBacklog,
            stalled_for_ms: 45_000
        })
    );

    // Behind but with room in the buffer: not a backlog.
    let mut tr = Tracker::new();
    let mut sim = Sim::new(14, at(0.0));
    sim.s.recv_unread = 10_000;
    sim.s.rcv_wnd = 60_000;
    assert!(run(&mut tr, &mut sim, &t, 0.0, 120.0, 1.0, |_, _| {}).is_empty());

    // A closed receive window is full whatever rcvbuf says.
    let mut tr = Tracker::new();
    let mut sim = Sim::new(15, at(0.0));
    sim.s.rcvbuf = 6 * MIB as u32;
    sim.s.recv_unread = 10_000;
    sim.s.rcv_wnd = 0;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 31.0, 1.0, |_, _| {});
    assert_eq!(obs.len(), 1);
    let ev = started(
        StallClass::RecvBacklog,
        30_000,
        obs[0].1.recv_transition.as_ref().unwrap(),
    );
    assert!(ev.threshold_reason.contains("receive window 0"));
}

/// Classic write/write deadlock: both sides blocked in send, neither reads. Both
/// sides are reported, independently; forget_detailed ends both.
#[test]
fn send_and_recv_stalls_coexist_and_both_end() {
    let t = Thresholds::default();
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(16, at(0.0));
    sim.s.recv_unread = 100_000;
    sim.s.rcv_wnd = 0;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 30.0, 1.0, |_, _| {});
    assert_eq!(obs.len(), 1);
    assert_eq!(
        obs[0].1.transition.as_ref().unwrap().class(),
        StallClass::ZeroWindow
    );
    assert_eq!(
        obs[0].1.recv_transition.as_ref().unwrap().class(),
        StallClass::RecvBacklog
    );
    let d = tr.forget_detailed(16, true, at(40.0));
    assert_eq!(
        d.transition,
        Some(Transition::Closed {
            class: StallClass::ZeroWindow,
            stalled_for_ms: 40_000
        })
    );
    assert_eq!(
        d.recv_transition,
        Some(Transition::Closed {
            class: StallClass::RecvBacklog,
            stalled_for_ms: 40_000
        })
    );
    assert_eq!(d.recovered, None);
}

#[test]
fn forget_closed_reports_closed_and_drops_the_socket() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(17, at(0.0));
    run(&mut tr, &mut sim, &t, 0.0, 5.0, 1.0, |_, _| {});
    assert!(tr.active(17).is_some());
    assert_eq!(
        tr.forget(17, true, at(5.5)),
        Some(Transition::Closed {
            class: StallClass::ZeroWindow,
            stalled_for_ms: 5500
        })
    );
    assert_eq!((tr.len(), tr.dormant_len(), tr.stalled_count()), (0, 0, 0));
    assert!(tr.active(17).is_none());
    // Unknown or not-stalled sockets: nothing to report.
    assert_eq!(tr.forget(17, true, at(6.0)), None);
    let mut calm = Sim::new(18, at(0.0));
    tr.observe(&calm.snap(at(1.0)), &t);
    assert_eq!(tr.forget(18, true, at(2.0)), None);
    assert!(tr.is_empty());
}

/// A bursty socket that drains completely at each recovery: the kernel forgets it (and
/// its last gap); the tracker keeps the cadence across the drain.
#[test]
fn forget_drained_reports_cleared_and_keeps_the_cadence() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(19, at(0.0));
    let obs = run(&mut tr, &mut sim, &t, 0.0, 14.0, 1.0, |_, _| {});
    assert_eq!(transitions(&obs).len(), 1);
    // At 14.2 s the peer reads everything: all acked, socket drained, gone from the map.
    let d = tr.forget_detailed(19, false, at(15.0));
    assert_eq!(
        d.transition,
        Some(Transition::Cleared {
            class: StallClass::ZeroWindow,
            stalled_for_ms: 15_000
        })
    );
    // Lower bound: the last tick (14 s) still saw it queued.
    let ep = d.recovered.unwrap();
    assert_eq!(
        (ep.class, ep.duration_ms, ep.bytes_acked),
        (StallClass::ZeroWindow, 14_000, 4 * MIB)
    );
    assert_eq!((tr.len(), tr.dormant_len()), (0, 1));
    assert_eq!(tr.evidence(19), None, "dormant");

    // Next burst: tracked again (new kernel session, fresh gap ring).
    let mut sim = Sim::blocked_writer(19, at(20.0));
    let obs = run(&mut tr, &mut sim, &t, 20.0, 47.0, 1.0, |_, _| {});
    assert!(transitions(&obs).is_empty(), "cadence 28 s kept: {obs:?}");
    assert_eq!(
        tr.evidence(19).unwrap().threshold_reason,
        "cadence: 2.0 x longest recovered gap 14s = 28s"
    );
    let o = tr.observe(&sim.snap(at(48.0)), &t);
    started(
        StallClass::ZeroWindow,
        28_000,
        o.transition.as_ref().unwrap(),
    );
    // forget() without details on a drained, stalled socket.
    assert!(matches!(
        tr.forget(19, false, at(49.0)),
        Some(Transition::Cleared {
            class: StallClass::ZeroWindow,
            ..
        })
    ));
    assert_eq!(tr.dormant_len(), 1);
}

/// The agent missed the drain: the socket shows up with a new kernel session.
#[test]
fn new_kernel_session_without_forget_is_a_drain() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(20, at(0.0));
    run(&mut tr, &mut sim, &t, 0.0, 10.0, 1.0, |_, _| {});
    assert!(tr.active(20).is_some());
    let mut sim = Sim::blocked_writer(20, at(10.5));
    let o = tr.observe(&sim.snap(at(11.0)), &t);
    assert_eq!(
        o.transition,
        Some(Transition::Cleared {
            class: StallClass::ZeroWindow,
            stalled_for_ms: 11_000
        })
    );
    assert_eq!(o.recovered.len(), 1);
    assert_eq!(o.recovered[0].duration_ms, 10_000);
    assert!(tr.active(20).is_none());
    assert_eq!(tr.len(), 1);
}

#[test]
fn kernel_gap_ring_is_deduplicated_across_ticks() {
    let t = thresholds(60);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(21, at(0.0));
    tr.observe(&sim.snap(at(0.0)), &t);
    // Six 1 s gaps, one every 1.5 s; ticks every 0.5 s see the same ring many times.
    let mut k = 1;
    let obs = run(&mut tr, &mut sim, &t, 0.0, 20.0, 0.5, |sim, now| {
        while k <= 6 && at(k as f64 * 1.5) <= now {
            sim.ack(at(k as f64 * 1.5), 1000);
            sim.s.queued_bytes += 1000;
            k += 1;
        }
    });
    let ends: Vec<u64> = obs
        .iter()
        .flat_map(|(_, o)| o.recovered.iter().map(|e| e.end_ns))
        .collect();
    assert_eq!(
        ends,
        (1..=6).map(|k| at(k as f64 * 1.5)).collect::<Vec<_>>()
    );
    assert_eq!(tr.evidence(21).unwrap().recovered_episodes, 6);

    // Two gaps ending within one tick: both reported once; the tick's growth goes to
    // the newest, the older one gets the bytes of the ACK that ended it.
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(22, at(0.0));
    tr.observe(&sim.snap(at(0.0)), &t);
    sim.ack(at(1.0), 1000);
    sim.s.queued_bytes += 1000;
    sim.ack(at(2.0), 3000);
    sim.s.queued_bytes += 3000;
    sim.ack(at(2.1), 500); // < 250 ms after the last progress: not a gap
    let o = tr.observe(&sim.snap(at(3.0)), &t);
    let got: Vec<(u64, u64)> = o
        .recovered
        .iter()
        .map(|e| (e.end_ns, e.bytes_acked))
        .collect();
    assert_eq!(got, vec![(at(1.0), 1000), (at(2.0), 4500)]);
    assert!(tr.observe(&sim.snap(at(4.0)), &t).recovered.is_empty());
}

#[test]
fn still_stalled_reverifies_against_the_freshest_snapshot() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(23, at(0.0));
    run(&mut tr, &mut sim, &t, 0.0, 4.0, 1.0, |_, _| {});
    let a = tr.active(23).unwrap().clone();
    assert_eq!((a.progress_mark, a.decided_ns), (0, at(3.0)));
    assert!(tr.still_stalled(&sim.snap(at(4.2))));
    // A zero-window probe answered (ACK without progress): still stalled.
    sim.s.times.last_ack_ns = at(4.3);
    sim.s.zero_window_acks += 1;
    assert!(tr.still_stalled(&sim.snap(at(4.4))));
    // Progress between the decision and the reset: abort.
    sim.ack(at(4.5), 1);
    assert!(!tr.still_stalled(&sim.snap(at(4.6))));
    // Another socket, or the same cookie in a new kernel session: not stalled.
    let mut other = Sim::blocked_writer(24, at(0.0));
    assert!(!tr.still_stalled(&other.snap(at(4.6))));
    let mut again = Sim::blocked_writer(23, at(4.5));
    assert!(!tr.still_stalled(&again.snap(at(4.6))));

    // slow_drain: a few bytes within the floor rate keep it; a burst ends it.
    let t = Thresholds::default();
    let mut tr = Tracker::new();
    let mut sim = Sim::new(25, at(0.0));
    sim.s.queued_bytes = 4 * MIB;
    sim.s.sndbuf_full = true;
    tr.observe(&sim.snap(at(0.0)), &t);
    run(&mut tr, &mut sim, &t, 0.0, 30.0, 1.0, |sim, now| {
        sim.ack(now, 100)
    });
    assert_eq!(tr.active(25).unwrap().class, StallClass::SlowDrain);
    sim.ack(at(30.2), 1000);
    assert!(tr.still_stalled(&sim.snap(at(30.3))));
    sim.ack(at(30.4), 64 * 1024);
    assert!(!tr.still_stalled(&sim.snap(at(30.5))));
}

/// A slow drain that stops entirely under a zero window escalates to zero_window.
#[test]
fn slow_drain_escalates_to_zero_window() {
    let t = Thresholds::default();
    let mut tr = Tracker::new();
    let mut sim = Sim::new(26, at(0.0));
    sim.s.queued_bytes = 4 * MIB;
    sim.s.sndbuf_full = true;
    tr.observe(&sim.snap(at(0.0)), &t);
    let obs = run(&mut tr, &mut sim, &t, 0.0, 40.0, 1.0, |sim, now| {
        sim.ack(now, 256)
    });
    assert_eq!(transitions(&obs)[0].1.class(), StallClass::SlowDrain);
    sim.set_zero_window(true);
    let obs = run(&mut tr, &mut sim, &t, 40.0, 80.0, 1.0, |_, _| {});
    let trs = transitions(&obs);
    assert_eq!(trs.len(), 1, "{trs:?}");
    assert_eq!(trs[0].0, at(70.0));
    started(StallClass::ZeroWindow, 30_000, &trs[0].1);
    assert_eq!(tr.active(26).unwrap().class, StallClass::ZeroWindow);
}

fn episode(class: StallClass, duration_ms: u64) -> Episode {
    Episode {
        class,
        start_ns: at(0.0),
        end_ns: at(0.0) + duration_ms * NS_PER_MS,
        duration_ms,
        bytes_acked: MIB,
    }
}

#[test]
fn calibration_percentiles_and_max() {
    let mut c = Calibration::new();
    for d in (1..=100).rev() {
        assert_eq!(
            c.record(
                "web",
                300_000,
                true,
                1,
                &episode(StallClass::ZeroWindow, d * 1000)
            ),
            None
        );
    }
    c.record(
        "(defaults)",
        30_000,
        false,
        2,
        &episode(StallClass::NoAck, 700),
    );
    assert_eq!(
        c.rows(),
        vec![
            CalibrationRow {
                rule: "(defaults)".into(),
                class: StallClass::NoAck,
                episodes: Episodes {
                    count: 1,
                    max_ms: 700,
                    p50_ms: 700,
                    p99_ms: 700
                }
            },
            CalibrationRow {
                rule: "web".into(),
                class: StallClass::ZeroWindow,
                episodes: Episodes {
                    count: 100,
                    max_ms: 100_000,
                    p50_ms: 50_000,
                    p99_ms: 99_000
                }
            },
        ]
    );
    // Bounded: count and max cover everything, percentiles the newest CALIBRATION_KEEP.
    let mut c = Calibration::new();
    c.record(
        "r",
        10_000_000,
        true,
        1,
        &episode(StallClass::ZeroWindow, 5_000_000),
    );
    for _ in 0..CALIBRATION_KEEP {
        c.record(
            "r",
            10_000_000,
            true,
            1,
            &episode(StallClass::ZeroWindow, 1000),
        );
    }
    let row = &c.rows()[0].episodes;
    assert_eq!(
        (row.count, row.max_ms, row.p99_ms),
        (CALIBRATION_KEEP as u64 + 1, 5_000_000, 1000)
    );
    assert_eq!(
        c.keys.values().next().unwrap().durations.len(),
        CALIBRATION_KEEP
    );
}

#[test]
fn calibration_warns_when_a_threshold_is_below_an_observed_recovery() {
    let mut c = Calibration::new();
    let w = c
        .record(
            "websockets",
            3000,
            true,
            77,
            &episode(StallClass::ZeroWindow, 14_200),
        )
        .expect("3 s is below a 14.2 s recovery");
    assert_eq!(
        (
            w.rule.as_str(),
            w.class,
            w.threshold_ms,
            w.observed_ms,
            w.cookie,
            w.would_reset
        ),
        ("websockets", StallClass::ZeroWindow, 3000, 14_200, 77, true)
    );
    assert!(
        w.advice.starts_with(
            "a socket recovered by itself after 14.2s of zero window; a threshold of 3s \
             would have reset it. Use zero_window_after >= 29s (2 x observed)"
        ),
        "{}",
        w.advice
    );
    // Once per new maximum.
    assert_eq!(
        c.record(
            "websockets",
            3000,
            true,
            78,
            &episode(StallClass::ZeroWindow, 14_000)
        ),
        None
    );
    assert_eq!(
        c.record(
            "websockets",
            3000,
            true,
            78,
            &episode(StallClass::ZeroWindow, 14_200)
        ),
        None
    );
    let w = c
        .record(
            "websockets",
            3000,
            false,
            79,
            &episode(StallClass::ZeroWindow, 20_000),
        )
        .unwrap();
    assert!(w.advice.contains("would have flagged it"), "{}", w.advice);
    assert!(w.advice.contains(">= 40s"), "{}", w.advice);
    // Other class of the same rule: its own key.
    let w = c
        .record(
            "websockets",
            3000,
            true,
            80,
            &episode(StallClass::NoAck, 5000),
        )
        .unwrap();
    assert!(w.advice.contains("no_ack_after >= 10s"), "{}", w.advice);
    // Threshold at or above the episode: never a warning.
    assert_eq!(
        c.record(
            "calm",
            30_000,
            true,
            81,
            &episode(StallClass::ZeroWindow, 30_000)
        ),
        None
    );
    assert_eq!(c.rows().iter().map(|r| r.episodes.count).sum::<u64>(), 6);
}

/// Dormant histories are bounded by age and count; live sockets are untouched.
#[test]
fn prune_bounds_dormant_histories() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    for cookie in 0..100u64 {
        let start = at(cookie as f64);
        let mut sim = Sim::blocked_writer(cookie, start);
        tr.observe(&sim.snap(start), &t);
        sim.ack(start + NS_PER_SEC / 2, 1000);
        tr.observe(&sim.snap(start + NS_PER_SEC / 2), &t);
        tr.forget(cookie, false, start + NS_PER_SEC / 2);
    }
    let mut live = Sim::new(1000, at(0.0));
    tr.observe(&live.snap(at(0.0)), &t);
    assert_eq!((tr.len(), tr.dormant_len()), (1, 100));
    // Age: at 150 s with a 60 s limit, sockets last seen before 90 s go.
    assert_eq!(tr.prune(at(150.0), Duration::from_secs(60), 1000), 90);
    assert_eq!(tr.dormant_len(), 10);
    // Count: keep the 4 most recently seen.
    assert_eq!(tr.prune(at(150.0), Duration::from_secs(60), 4), 6);
    let mut kept: Vec<u64> = tr
        .socks
        .iter()
        .filter(|(_, e)| e.live.is_none())
        .map(|(c, _)| *c)
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, vec![96, 97, 98, 99]);
    assert_eq!(tr.len(), 1, "live sockets are not pruned");
    // A drained socket without history is not kept at all.
    let mut plain = Sim::new(2000, at(200.0));
    tr.observe(&plain.snap(at(200.0)), &t);
    tr.forget(2000, false, at(201.0));
    assert_eq!(tr.dormant_len(), 4);
}

/// Per-socket memory stays bounded however long a socket lives.
#[test]
fn per_socket_state_is_bounded() {
    let t = Thresholds {
        slow_drain_window: Duration::from_secs(300),
        ..thresholds(3)
    };
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(30, at(0.0));
    // 10 ms ticks for 20 min with a recovery every 0.5 s.
    let obs = run(&mut tr, &mut sim, &t, 0.0, 1200.0, 0.01, |sim, now| {
        if (now - T0).is_multiple_of(NS_PER_SEC / 2) {
            sim.ack(now, 1000);
            sim.s.queued_bytes += 1000;
        }
    });
    assert!(obs.len() > 2000);
    let e = &tr.socks[&30];
    let live = e.live.as_ref().unwrap();
    assert!(live.samples.len() <= DRAIN_SAMPLES_MAX && live.samples.len() >= 64);
    assert!(live.samples.capacity() <= DRAIN_SAMPLES_MAX);
    assert_eq!(e.history.episodes.len(), HISTORY_EPISODES);
    // The drain rate is still measured over (about) the whole window.
    let d = live
        .drain(at(1200.0), sim.s.bytes_acked, dur_ns(t.slow_drain_window))
        .unwrap();
    assert!(d.full_window);
    assert!(
        d.span_ns >= 300 * NS_PER_SEC && d.span_ns <= 305 * NS_PER_SEC,
        "{}",
        d.span_ns
    );
}

/// Keeps the byte bound in the [`Tracker`] docs honest.
#[test]
fn record_sizes_match_the_documented_bound() {
    assert!(std::mem::size_of::<Episode>() <= 40);
    assert_eq!(std::mem::size_of::<Sample>(), 16);
    assert!(std::mem::size_of::<ActiveStall>() <= 160);
    assert!(std::mem::size_of::<Evidence>() <= 64);
}

#[test]
fn formatting() {
    let s = |x: f64| (x * 1e9) as u64;
    assert_eq!(fmt_ns(s(0.75)), "750ms");
    assert_eq!(fmt_ns(s(3.0)), "3s");
    assert_eq!(fmt_ns(s(14.2)), "14.2s");
    assert_eq!(fmt_ns(s(28.4)), "28.4s");
    assert_eq!(fmt_ns(s(59.99)), "1m");
    assert_eq!(fmt_ns(s(300.0)), "5m");
    assert_eq!(fmt_ns(s(400.0)), "6m40s");
    assert_eq!(fmt_ns(s(3720.0)), "1h2m");
    assert_eq!(fmt_factor(2.0), "2.0");
    assert_eq!(fmt_factor(2.25), "2.25");
    assert_eq!(fmt_bytes(512), "512 B");
    assert_eq!(fmt_bytes(MIB), "1.0 MiB");
    assert_eq!(percentile(&[], 50), 0);
    assert_eq!(percentile(&[7], 99), 7);
}

#[test]
fn evidence_serializes_for_events() {
    let ev = Evidence {
        recovered_episodes: 3,
        longest_gap_ms: 14_200,
        bytes_acked_last_window: MIB,
        effective_threshold_ms: 28_400,
        threshold_reason: "cadence: 2.0 x longest recovered gap 14.2s = 28.4s".into(),
    };
    let v = serde_json::to_value(&ev).unwrap();
    assert_eq!(v["effective_threshold_ms"], 28_400);
    let row = CalibrationRow {
        rule: "r".into(),
        class: StallClass::NoAck,
        episodes: Episodes {
            count: 1,
            max_ms: 1,
            p50_ms: 1,
            p99_ms: 1,
        },
    };
    assert_eq!(serde_json::to_value(&row).unwrap()["class"], "no_ack");
}

/// A bursty socket with one recovered 2.5 s pause (threshold 3 s, factor 2), saved
/// after the tick at 3.0 s.
fn saved_bursty() -> (Sim, Thresholds, String) {
    let t = Thresholds {
        cadence_factor: 2.0,
        ..thresholds(3)
    };
    let mut tr = Tracker::new();
    let mut sim = Sim::blocked_writer(1, at(0.0));
    tr.observe(&sim.snap(at(0.0)), &t);
    let obs = run(&mut tr, &mut sim, &t, 0.0, 3.0, 0.5, |sim, now| {
        if now == at(2.5) {
            sim.ack(now, MIB);
            sim.s.queued_bytes += MIB;
        }
    });
    assert!(transitions(&obs).is_empty(), "{obs:?}");
    assert_eq!(tr.episodes(1).len(), 1);
    let json = serde_json::to_string(&tr.export()).unwrap();
    (sim, t, json)
}

#[test]
fn a_restored_tracker_keeps_the_cadence_and_the_stall_clock() {
    let (mut sim, t, json) = saved_bursty();
    // A fresh kernel ring: the history can only come from the saved state.
    sim.fresh_ring();
    let mut back = Tracker::new();
    let n = back.import(serde_json::from_str(&json).unwrap(), |c, s| {
        c == 1 && s == at(0.0)
    });
    assert_eq!(
        n,
        Imported {
            live: 1,
            dormant: 0,
            dropped: 0
        }
    );
    // The next pause is judged against 2 x 2.5 s = 5 s from its last progress at 2.5 s,
    // not against the 3 s rule threshold.
    let obs = run(&mut back, &mut sim, &t, 3.0, 8.0, 0.5, |_, _| {});
    let trs = transitions(&obs);
    assert_eq!(trs.len(), 1, "{trs:?}");
    assert_eq!(trs[0].0, at(7.5));
    let ev = started(StallClass::ZeroWindow, 5000, &trs[0].1);
    assert_eq!(ev.effective_threshold_ms, 5000);
    assert_eq!(ev.recovered_episodes, 1);
    assert!(obs.iter().all(|(_, o)| o.recovered.is_empty()), "{obs:?}");
}

#[test]
fn a_session_that_ended_while_saved_keeps_only_its_history() {
    let (mut sim, t, json) = saved_bursty();
    let mut back = Tracker::new();
    let n = back.import(serde_json::from_str(&json).unwrap(), |_, _| false);
    assert_eq!(
        n,
        Imported {
            live: 0,
            dormant: 1,
            dropped: 0
        }
    );
    assert_eq!(back.len(), 0);
    assert_eq!(back.dormant_len(), 1);
    assert!(back.active(1).is_none());
    // A new tracking session of the same socket: judged with the cadence, and the saved
    // session's end is no recovery.
    sim.fresh_ring();
    sim.s.times.first_seen_ns = at(10.0);
    sim.k.times.last_progress_ns = at(10.0);
    let obs = run(&mut back, &mut sim, &t, 10.0, 15.0, 0.5, |_, _| {});
    let trs = transitions(&obs);
    assert_eq!(trs.len(), 1, "{trs:?}");
    assert_eq!(trs[0].0, at(15.0));
    assert!(obs.iter().all(|(_, o)| o.recovered.is_empty()), "{obs:?}");
    // A stall without history whose session ended: nothing to keep.
    let mut plain = Tracker::new();
    let mut sim = Sim::blocked_writer(2, at(0.0));
    plain.observe(&sim.snap(at(0.0)), &t);
    plain.observe(&sim.snap(at(4.0)), &t);
    assert!(plain.active(2).is_some());
    let n = Tracker::new().import(plain.export(), |_, _| false);
    assert_eq!(n.dropped, 1);
}

#[test]
fn export_puts_stalls_and_histories_first_and_thins_samples() {
    let t = thresholds(3);
    let mut tr = Tracker::new();
    // 3: nothing learnt (left out); 2: a stall in force; 1: history only.
    let mut quiet = Sim::new(3, at(3.0));
    quiet.s.queued_bytes = MIB;
    let mut stalled = Sim::blocked_writer(2, at(0.0));
    let (mut bursty, _, _) = saved_bursty();
    bursty.s.cookie = 1;
    for i in 0..400u64 {
        let now = at(3.0) + i * NS_PER_SEC / 5;
        quiet.ack(now, 1);
        tr.observe(&quiet.snap(now), &t);
        tr.observe(&stalled.snap(now), &t);
        // Progress every tick from now on: no stall, the history stays.
        bursty.ack(now, 64 * 1024);
        bursty.s.queued_bytes += 64 * 1024;
        tr.observe(&bursty.snap(now), &t);
    }
    let saved = tr.export();
    let order: Vec<u64> = saved.iter().map(|s| s.cookie).collect();
    assert_eq!(order, vec![2, 1]);
    for s in &saved {
        let n = s.entry.live.as_ref().map_or(0, |l| l.samples.len());
        assert!(n <= SAVED_SAMPLES_MAX, "{} samples saved", n);
    }
    let mut v: VecDeque<u32> = (0..100).collect();
    thin(&mut v, 4);
    assert_eq!(v, VecDeque::from(vec![0, 33, 66, 99]));
}
