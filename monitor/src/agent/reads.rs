//! Read progress without a read hook (the default, `attach::READ_OFF`: a hook on every read of
//! every TCP socket costs more than it tells). The kernel side still records reads at each
//! segment a tracked socket takes in, but a socket whose application stopped reading and
//! then read everything may take no segment for long. So, for the tracked sockets whose
//! receive side looks full (what a `recv_backlog` stall waits on) and whose last read the
//! kernel side saw is older than one tick, the tick asks sock_diag (one batched lookup for
//! all of them): bytes read so far (`tcpi_bytes_received` − unread) that grew since the last
//! lookup are a read, seen at this tick; the unread count replaces the map's. A socket found
//! with nothing unread and nothing queued leaves the map (the next tick takes it as drained).
//!
//! Cost: nothing for sockets whose receive side is not full (a server's streams, request /
//! response traffic); for each that is, one sock_diag lookup per tick, at most one a second.

use super::{target_of, Agent, DiagPath, SockSource};
use crate::classify::recv_side_full;
use crate::reset::{Target, TcpDiag};
use crate::snapshot::Snapshot;
use monitor_common::SockState;
use std::collections::HashMap;

/// What the lookups found of one socket's reads (kept in its `Seen` while it is tracked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ReadSeen {
    /// Bytes the application had read at the last lookup (`tcpi_bytes_received` − unread).
    bytes_read: u64,
    /// Unread bytes at the last lookup.
    recv_q: u32,
    /// When a lookup last saw the application read (CLOCK_MONOTONIC ns; 0: never).
    pub(super) read_ns: u64,
    /// When the last lookup was made (CLOCK_MONOTONIC ns).
    looked_ns: u64,
}

/// A socket is looked up at most this often, whatever the tick (a 10 ms tick with thousands
/// of hung readers must not become a lookup storm); a read is then seen within this plus a
/// tick, against `recv_backlog_after` thresholds of seconds.
pub(super) const LOOKUP_EVERY_NS: u64 = 1_000_000_000;

/// Whether a socket last looked up at `looked_ns` (None: never) may be looked up again at
/// `now_ns`, `every_ns` after the last time.
pub(super) fn due(looked_ns: Option<u64>, now_ns: u64, every_ns: u64) -> bool {
    looked_ns.is_none_or(|l| now_ns.saturating_sub(l) >= every_ns)
}

/// Whether the kernel's record of a socket shows a receive side a `recv_backlog` stall
/// could be waiting on (data unread and the side full: [`recv_side_full`]) with no read
/// seen for `quiet_ns`.
pub(super) fn looks_stuck(st: &SockState, now_ns: u64, quiet_ns: u64) -> bool {
    let unread = st.rcv_nxt.wrapping_sub(st.copied_seq) as u64;
    unread != 0
        && recv_side_full(unread, st.rcv_wnd, st.rcvbuf)
        && now_ns.saturating_sub(st.last_read_ns) >= quiet_ns
}

/// Fold one lookup `d` of a socket into its `seen` record and its snapshot `snap` (taken at
/// `now_ns`). Returns whether the socket has nothing unread and nothing queued (drained).
pub(super) fn fold(seen: &mut Option<ReadSeen>, snap: &mut Snapshot, d: &TcpDiag) -> bool {
    let info = d.tcp_info_len > 0;
    let bytes_read = d.bytes_received.saturating_sub(d.recv_q as u64);
    let read = match seen {
        Some(p) if info => bytes_read > p.bytes_read,
        Some(p) => d.recv_q < p.recv_q,
        // First lookup: less unread than the kernel side recorded is a read since.
        None => (d.recv_q as u64) < snap.recv_unread,
    };
    let read_ns = if read {
        snap.now_ns
    } else {
        seen.map(|p| p.read_ns).unwrap_or(0)
    };
    *seen = Some(ReadSeen {
        bytes_read,
        recv_q: d.recv_q,
        read_ns,
        looked_ns: snap.now_ns,
    });
    snap.recv_unread = d.recv_q as u64;
    d.recv_q == 0 && d.send_q == 0
}

/// What the last lookup found stands until the kernel side records something newer: a
/// read it saw counts as the socket's last read, and, while the kernel side has recorded no
/// read since that lookup, its unread count (a tick between lookups, `LOOKUP_EVERY_NS`,
/// otherwise shows the map's stale count again).
pub(super) fn apply_seen(seen: &Option<ReadSeen>, snap: &mut Snapshot) {
    if let Some(r) = seen {
        if snap.last_read_ns < r.looked_ns {
            snap.recv_unread = r.recv_q as u64;
        }
        snap.last_read_ns = snap.last_read_ns.max(r.read_ns);
    }
}

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    /// Without a read hook: one batched lookup for the tracked sockets [`looks_stuck`]
    /// says may be waiting on a read (none with a read hook, none when there are none).
    /// Only sockets already seen by an earlier tick are asked about, each at most every
    /// `read_lookup_every_ns` ([`LOOKUP_EVERY_NS`]).
    pub(super) fn look_up_reads(
        &mut self,
        states: &[SockState],
        now_ns: u64,
    ) -> HashMap<u64, TcpDiag> {
        if self.src.reads_seen() {
            return HashMap::new();
        }
        let quiet = self.cfg.tick.as_nanos() as u64;
        // The socket's record from the last tick names it (addresses, namespace, interface,
        // and the holder's pid as a hint).
        let (cookies, targets): (Vec<u64>, Vec<Target>) = states
            .iter()
            .filter(|st| st.cookie != 0 && looks_stuck(st, now_ns, quiet))
            .filter_map(|st| {
                let seen = self.last.get(&st.cookie)?;
                due(
                    seen.read_seen.map(|r| r.looked_ns),
                    now_ns,
                    self.read_lookup_every_ns,
                )
                .then(|| (st.cookie, target_of(&seen.snap)))
            })
            .unzip();
        if targets.is_empty() {
            return HashMap::new();
        }
        self.read_lookups += targets.len() as u64;
        let found = self.kern.lookup_many(&targets);
        let out: HashMap<u64, TcpDiag> = cookies
            .into_iter()
            .zip(found)
            .filter_map(|(cookie, r)| match r {
                Ok(Some(d)) => Some((cookie, d)),
                _ => None,
            })
            .collect();
        log::debug!(
            "reads: looked up {} socket(s) whose receive side looks full",
            targets.len()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(unread: u64, now_ns: u64) -> Snapshot {
        let mut st = SockState::zeroed();
        st.rcv_nxt = unread as u32;
        st.cookie = 7;
        let mut s = Snapshot::from_state(&st, now_ns);
        s.last_read_ns = 1;
        s
    }

    fn diag(recv_q: u32, send_q: u32, bytes_received: u64) -> TcpDiag {
        TcpDiag {
            recv_q,
            bytes_received,
            tcp_info_len: 232,
            ..super::super::fakes::diag(7, send_q)
        }
    }

    #[test]
    fn stuck_needs_unread_a_full_side_and_no_recent_read() {
        let mut st = SockState::zeroed();
        st.rcvbuf = 1000;
        st.rcv_nxt = 600;
        st.rcv_wnd = 10;
        st.last_read_ns = 0;
        assert!(looks_stuck(&st, 5_000, 1_000));
        // A read within the quiet time.
        st.last_read_ns = 4_500;
        assert!(!looks_stuck(&st, 5_000, 1_000));
        st.last_read_ns = 0;
        // Less than half the buffer unread and the window open: not full.
        st.rcv_nxt = 100;
        assert!(!looks_stuck(&st, 5_000, 1_000));
        // Window closed: full whatever the amount.
        st.rcv_wnd = 0;
        assert!(looks_stuck(&st, 5_000, 1_000));
        // Nothing unread.
        st.rcv_nxt = 0;
        assert!(!looks_stuck(&st, 5_000, 1_000));
    }

    #[test]
    fn a_read_is_bytes_read_growing_between_lookups() {
        let mut seen = None;
        // First lookup: as much unread as the kernel side recorded: no read.
        let mut s = snap(4000, 10);
        assert!(!fold(&mut seen, &mut s, &diag(4000, 0, 9000)));
        apply_seen(&seen, &mut s);
        assert_eq!(s.last_read_ns, 1);
        assert_eq!(s.recv_unread, 4000);
        // Same bytes read: still no read.
        let mut s = snap(4000, 20);
        fold(&mut seen, &mut s, &diag(4000, 0, 9000));
        apply_seen(&seen, &mut s);
        assert_eq!(s.last_read_ns, 1);
        // The app read 4000 and the peer sent 4000 more: unread unchanged, but a read.
        let mut s = snap(4000, 30);
        fold(&mut seen, &mut s, &diag(4000, 0, 13000));
        apply_seen(&seen, &mut s);
        assert_eq!(s.last_read_ns, 30);
        // A later tick without a lookup keeps that read.
        let mut s = snap(4000, 40);
        apply_seen(&seen, &mut s);
        assert_eq!(s.last_read_ns, 30);
    }

    #[test]
    fn first_lookup_with_less_unread_is_a_read_and_empty_is_drained() {
        let mut seen = None;
        let mut s = snap(4000, 10);
        assert!(!fold(&mut seen, &mut s, &diag(1000, 5, 9000)));
        apply_seen(&seen, &mut s);
        assert_eq!(s.last_read_ns, 10);
        assert_eq!(s.recv_unread, 1000);
        // Everything read, nothing queued: drained.
        let mut s = snap(4000, 20);
        assert!(fold(&mut seen, &mut s, &diag(0, 0, 9000)));
        assert_eq!(s.recv_unread, 0);
        // Unread gone but data still queued to send: stays.
        let mut seen = None;
        let mut s = snap(4000, 10);
        assert!(!fold(&mut seen, &mut s, &diag(0, 10, 9000)));
    }

    #[test]
    fn a_socket_is_looked_up_at_most_every_second_and_its_count_stands_between() {
        let mut seen = None;
        let every = LOOKUP_EVERY_NS;
        assert!(due(None, 0, every));
        let mut s = snap(4000, 10 * LOOKUP_EVERY_NS);
        fold(&mut seen, &mut s, &diag(1000, 5, 9000));
        assert!(!due(
            seen.map(|r| r.looked_ns),
            10 * every + every / 2,
            every
        ));
        assert!(due(seen.map(|r| r.looked_ns), 11 * every, every));
        // A tick between lookups: the map still says 4000 unread; the lookup's 1000 stands.
        let mut s = snap(4000, 10 * LOOKUP_EVERY_NS + LOOKUP_EVERY_NS / 2);
        apply_seen(&seen, &mut s);
        assert_eq!(s.recv_unread, 1000);
        // The kernel side recorded a read after the lookup: its own count is newer.
        let mut s = snap(3000, 11 * LOOKUP_EVERY_NS);
        s.last_read_ns = 10 * LOOKUP_EVERY_NS + 1;
        apply_seen(&seen, &mut s);
        assert_eq!(s.recv_unread, 3000);
    }

    #[test]
    fn without_tcp_info_a_read_is_unread_shrinking() {
        let mut seen = None;
        let mut d = diag(3000, 0, 0);
        d.tcp_info_len = 0;
        let mut s = snap(3000, 10);
        fold(&mut seen, &mut s, &d);
        d.recv_q = 2000;
        let mut s = snap(3000, 20);
        fold(&mut seen, &mut s, &d);
        apply_seen(&seen, &mut s);
        assert_eq!(s.last_read_ns, 20);
    }
}
