//! Send progress without an ACK hook (`--trouble-hooks`). The kernel side then tracks a
//! socket only from its trouble (a retransmission timeout, a zero-window probe, a
//! retransmit) and sees nothing of it between those rare runs: not the ACK that ends the
//! trouble, nor the drain that follows. So every tick asks sock_diag about the tracked
//! sockets (one batched lookup for all of them, each socket at most once a second):
//! bytes acked (`tcpi_bytes_acked`) that grew since the last lookup are progress, seen at
//! this tick; the send queue replaces the map's; the last ACK, the backoff and (Linux 6.2
//! and later) the peer's window are taken when the lookup is newer than the kernel side's
//! last run. A socket found with nothing queued in either direction leaves the map (the
//! next tick takes it as drained), and so does one whose trouble is over: progress seen,
//! no backoff and no probe outstanding, and no stall active on it (the tick decides that
//! last part). It is tracked again at its next trouble; its recovered gap is kept by the
//! tracker as for any socket that leaves the map.
//!
//! Cost: one lookup per tracked socket per second, and with trouble-only hooks only
//! sockets in trouble are tracked, each until its trouble is over (a stream that once
//! retransmitted does not stay in the map while it streams).

use super::reads::due;
use super::{target_of, Agent, DiagPath, SockSource};
use crate::reset::{Target, TcpDiag};
use crate::snapshot::Snapshot;
use monitor_common::SockState;
use std::collections::HashMap;

const NS_PER_MS: u64 = 1_000_000;

/// What the lookups found of one socket's progress (kept in its `Seen` while tracked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SendSeen {
    /// `tcpi_bytes_acked` at the last lookup.
    bytes_acked: u64,
    /// Bytes queued (written, not acked) at the last lookup.
    send_q: u32,
    /// When a lookup last saw bytes acked grow (CLOCK_MONOTONIC ns; 0: never).
    progress_ns: u64,
    /// When the last lookup was made.
    looked_ns: u64,
    /// The peer's last ACK as of the last lookup (`tcpi_last_ack_recv`; 0: unknown).
    last_ack_ns: u64,
    /// `tcpi_backoff` at the last lookup.
    backoff: u8,
    /// The peer's window at the last lookup, where `tcp_info` has it (Linux 6.2+).
    snd_wnd: Option<u32>,
    /// Lookups folded in so far (saturating).
    lookups: u8,
}

impl SendSeen {
    /// Whether the socket stayed tracked past the lookup after its first: still in trouble
    /// about a second after it was first tracked. Only then is its holder looked for in
    /// `/proc` (`tick::find_holders`): a stream that retransmitted once and recovered at
    /// its next lookup never costs a walk.
    pub(super) fn stayed_in_trouble(&self) -> bool {
        self.lookups >= 2
    }
}

/// Whether `seen` may be looked up again at `now_ns` (`reads::due`).
fn send_due(seen: &Option<SendSeen>, now_ns: u64, every_ns: u64) -> bool {
    due(seen.map(|s| s.looked_ns), now_ns, every_ns)
}

/// What one lookup says of a tracked socket's place in the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Nothing queued in either direction: it leaves the map.
    Drained,
    /// Progress since the last lookup, no backoff, no probe outstanding: its trouble is
    /// over; it leaves the map unless a stall is active on it.
    Recovered,
    /// Still in trouble, or no progress seen.
    Stays,
}

/// Fold one lookup `d` of a socket into its `seen` record and its snapshot `snap` (taken at
/// `now_ns`), and say what the lookup means for its place in the map.
pub(super) fn fold(seen: &mut Option<SendSeen>, snap: &mut Snapshot, d: &TcpDiag) -> Found {
    let info = d.tcp_info_len > 0;
    let progress = match seen {
        Some(p) if info => d.bytes_acked > p.bytes_acked,
        Some(p) => d.send_q < p.send_q,
        // First lookup: less queued than the kernel side recorded is progress since.
        None => (d.send_q as u64) < snap.queued_bytes,
    };
    let progress_ns = if progress {
        snap.now_ns
    } else {
        seen.map(|p| p.progress_ns).unwrap_or(0)
    };
    let last_ack_ns = if info {
        snap.now_ns
            .saturating_sub(u64::from(d.last_ack_recv_ms) * NS_PER_MS)
    } else {
        seen.map(|p| p.last_ack_ns).unwrap_or(0)
    };
    *seen = Some(SendSeen {
        bytes_acked: d.bytes_acked,
        send_q: d.send_q,
        progress_ns,
        looked_ns: snap.now_ns,
        last_ack_ns,
        backoff: d.backoff,
        snd_wnd: (info && d.has_snd_wnd()).then_some(d.snd_wnd),
        lookups: seen.map_or(0, |p| p.lookups).saturating_add(1),
    });
    if d.send_q == 0 && d.recv_q == 0 {
        Found::Drained
    } else if progress && info && d.backoff == 0 && d.probes == 0 {
        Found::Recovered
    } else {
        Found::Stays
    }
}

/// What the last lookup found stands until the kernel side records something newer:
/// progress it saw moves the socket's last progress (and ends a gap the kernel side cannot
/// see end); its queue, backoff and window replace the map's while no program has run on
/// the socket since that lookup.
pub(super) fn apply_seen(seen: &Option<SendSeen>, snap: &mut Snapshot) {
    let Some(p) = seen else { return };
    snap.times.last_progress_ns = snap.times.last_progress_ns.max(p.progress_ns);
    snap.times.last_ack_ns = snap.times.last_ack_ns.max(p.last_ack_ns);
    if p.looked_ns >= snap.last_activity_ns() {
        snap.queued_bytes = p.send_q as u64;
        snap.unacked_bytes = snap.unacked_bytes.min(p.send_q as u64);
        snap.backoff = p.backoff as u32;
        if let Some(w) = p.snd_wnd {
            snap.snd_wnd = w;
            snap.zero_window = w == 0;
        }
    }
}

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    /// Without an ACK hook: one batched lookup for the tracked sockets, each at most every
    /// `read_lookup_every_ns` (`reads::LOOKUP_EVERY_NS`) and a new one at once, leaving out
    /// those `reads` already looked up this tick (their answer serves both) and those whose
    /// cookie this tick's read had to ask for (`resolved`: that answer is this tick's
    /// lookup). None with an ACK hook.
    pub(super) fn look_up_sends(
        &mut self,
        states: &[SockState],
        now_ns: u64,
        reads: &HashMap<u64, TcpDiag>,
        resolved: HashMap<u64, TcpDiag>,
    ) -> HashMap<u64, TcpDiag> {
        if self.src.acks_seen() {
            return HashMap::new();
        }
        let (cookies, targets): (Vec<u64>, Vec<Target>) = states
            .iter()
            .filter(|st| {
                st.cookie != 0
                    && !reads.contains_key(&st.cookie)
                    && !resolved.contains_key(&st.cookie)
            })
            .filter_map(|st| match self.last.get(&st.cookie) {
                Some(seen) => send_due(
                    &seen.send_seen.as_deref().copied(),
                    now_ns,
                    self.read_lookup_every_ns,
                )
                .then(|| (st.cookie, target_of(&seen.snap))),
                // New this tick: the kernel side's record may be old (a map adopted after
                // a restart), so it is looked up before it is judged.
                None => Some((st.cookie, target_of(&Snapshot::from_state(st, now_ns)))),
            })
            .unzip();
        let mut found_all = resolved;
        if targets.is_empty() {
            return found_all;
        }
        self.progress_lookups += targets.len() as u64;
        let found = self.kern.lookup_many(&targets);
        found_all.extend(
            cookies
                .into_iter()
                .zip(found)
                .filter_map(|(cookie, r)| match r {
                    Ok(Some(d)) => Some((cookie, d)),
                    _ => None,
                }),
        );
        found_all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn snap(queued: u64, now_ns: u64) -> Snapshot {
        let mut st = SockState::zeroed();
        st.write_seq = queued as u32;
        st.snd_nxt = queued as u32;
        st.cookie = 7;
        st.times.first_seen_ns = 1;
        st.times.last_progress_ns = 1;
        st.backoff = 3;
        Snapshot::from_state(&st, now_ns)
    }

    fn diag(send_q: u32, bytes_acked: u64, last_ack_ms: u32) -> TcpDiag {
        TcpDiag {
            bytes_acked,
            last_ack_recv_ms: last_ack_ms,
            backoff: 1,
            // Up to `tcpi_snd_wnd` (Linux 6.2+) excluded.
            tcp_info_len: 224,
            ..super::super::fakes::diag(7, send_q)
        }
    }

    #[test]
    fn progress_is_bytes_acked_growing_between_lookups() {
        let mut seen = None;
        // First lookup: as much queued as the kernel side recorded: no progress.
        let mut s = snap(4000, 10 * S);
        assert_eq!(
            fold(&mut seen, &mut s, &diag(4000, 9000, 2000)),
            Found::Stays
        );
        apply_seen(&seen, &mut s);
        assert_eq!(s.times.last_progress_ns, 1);
        // The last ACK, 2 s before the lookup; backoff as the kernel says now.
        assert_eq!(s.times.last_ack_ns, 8 * S);
        assert_eq!(s.backoff, 1);
        // Same bytes acked: still none.
        let mut s = snap(4000, 11 * S);
        fold(&mut seen, &mut s, &diag(4000, 9000, 3000));
        apply_seen(&seen, &mut s);
        assert_eq!(s.times.last_progress_ns, 1);
        // The peer acked 4000 and the writer queued 4000 more: queue unchanged, progress.
        let mut s = snap(4000, 12 * S);
        fold(&mut seen, &mut s, &diag(4000, 13000, 0));
        apply_seen(&seen, &mut s);
        assert_eq!(s.times.last_progress_ns, 12 * S);
        // A later tick without a lookup keeps it.
        let mut s = snap(4000, 12 * S + S / 2);
        apply_seen(&seen, &mut s);
        assert_eq!(s.times.last_progress_ns, 12 * S);
    }

    #[test]
    fn first_lookup_with_less_queued_is_progress_and_empty_is_drained() {
        let mut seen = None;
        let mut s = snap(4000, 10 * S);
        assert_eq!(fold(&mut seen, &mut s, &diag(1000, 9000, 0)), Found::Stays);
        apply_seen(&seen, &mut s);
        assert_eq!(s.times.last_progress_ns, 10 * S);
        assert_eq!(s.queued_bytes, 1000);
        assert_eq!(s.unacked_bytes, 1000);
        // Nothing queued either way: drained.
        let mut s = snap(4000, 11 * S);
        assert_eq!(fold(&mut seen, &mut s, &diag(0, 12000, 0)), Found::Drained);
        // Unread data left: stays.
        let mut d = diag(0, 12000, 0);
        d.recv_q = 5;
        let mut s = snap(4000, 12 * S);
        assert_eq!(fold(&mut seen, &mut s, &d), Found::Stays);
    }

    #[test]
    fn progress_with_no_backoff_and_no_probe_out_is_a_recovery() {
        let mut seen = None;
        let mut s = snap(4000, 10 * S);
        fold(&mut seen, &mut s, &diag(4000, 9000, 0));
        // Progress, but the RTO is still backed off (the helper's backoff 1): stays.
        let mut s = snap(4000, 11 * S);
        assert_eq!(fold(&mut seen, &mut s, &diag(4000, 10000, 0)), Found::Stays);
        // Progress, backoff 0 and no probe out: over.
        let mut d = diag(4000, 11000, 0);
        d.backoff = 0;
        d.probes = 0;
        let mut s = snap(4000, 12 * S);
        assert_eq!(fold(&mut seen, &mut s, &d), Found::Recovered);
        // No progress since: stays, whatever the backoff.
        let mut s = snap(4000, 13 * S);
        assert_eq!(fold(&mut seen, &mut s, &d), Found::Stays);
        // A zero-window probe out: stays.
        let mut d = diag(4000, 12000, 0);
        d.backoff = 0;
        d.probes = 2;
        let mut s = snap(4000, 14 * S);
        assert_eq!(fold(&mut seen, &mut s, &d), Found::Stays);
    }

    #[test]
    fn a_program_run_after_the_lookup_is_newer_than_it() {
        let mut seen = None;
        let mut s = snap(4000, 10 * S);
        // No `tcpi_snd_wnd` in this `tcp_info`: the window stays the kernel side's.
        fold(&mut seen, &mut s, &diag(3000, 9000, 0));
        // A retransmit the kernel side recorded after that lookup: its own numbers stand.
        let mut s = snap(4000, 11 * S);
        s.times.last_retrans_ns = 10 * S + 1;
        apply_seen(&seen, &mut s);
        assert_eq!(s.queued_bytes, 4000);
        assert_eq!(s.backoff, 3);
        // Progress seen by the lookup still counts.
        assert_eq!(s.times.last_progress_ns, 10 * S);
    }

    #[test]
    fn the_peers_window_is_taken_where_tcp_info_has_it() {
        let mut seen = None;
        let mut s = snap(4000, 10 * S);
        let mut d = diag(4000, 9000, 0);
        d.tcp_info_len = 232;
        d.snd_wnd = 0;
        fold(&mut seen, &mut s, &d);
        let mut s = snap(4000, 10 * S);
        s.snd_wnd = 65535;
        apply_seen(&seen, &mut s);
        assert!(s.zero_window);
        assert_eq!(s.snd_wnd, 0);
    }

    #[test]
    fn without_tcp_info_progress_is_the_queue_shrinking() {
        let mut seen = None;
        let mut d = diag(3000, 0, 0);
        d.tcp_info_len = 0;
        let mut s = snap(3000, 10 * S);
        fold(&mut seen, &mut s, &d);
        d.send_q = 2000;
        let mut s = snap(3000, 11 * S);
        fold(&mut seen, &mut s, &d);
        apply_seen(&seen, &mut s);
        assert_eq!(s.times.last_progress_ns, 11 * S);
        assert!(send_due(&seen, 12 * S, S));
        assert!(!send_due(&seen, 11 * S + S / 2, S));
    }
}
