//! The ACK hook: a segment arrives on an established socket. ACK progress, the peer's
//! window, persist-probe answers, read-side backlog; starts tracking on a wedge signature.

use monitor_common::{
    flags,
    progress::{seq_after, set_zero_window},
};

use crate::kernel::{configured, now, off, rd, Mem};
use crate::maps::{LAST_ACK, REFRESH_NS};
use crate::refresh::{refresh_recv, refresh_send};
use crate::track::{drop_if_drained, key_of, lookup, track, Why};

/// The peer's ACK fields of a segment. A plain struct with every field always set, not an
/// `Option`: the 5.10 verifier refuses reading a stack slot the compiler left uninitialised
/// (an `Option`'s payload when `None`).
#[derive(Clone, Copy)]
struct Ack {
    valid: bool,
    seq: u32,
    window: u16,
}

const NO_ACK: Ack = Ack {
    valid: false,
    seq: 0,
    window: 0,
};

/// Peer's TCP header fields we need: ack_seq (be32 at byte 8), flags (byte 13), window (be16 at 14).
#[inline(always)]
fn read_ack<M: Mem>(skb: *const u8) -> Ack {
    let data: u64 = M::ld(skb, off!(skb_data));
    if data == 0 {
        return NO_ACK;
    }
    // Bytes 8..16 of the TCP header.
    let hdr: [u8; 8] = rd(data as *const u8, 8);
    let ack_seq = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let tcp_flags = hdr[5];
    if tcp_flags & 0x10 == 0 {
        return NO_ACK; // no ACK flag
    }
    Ack {
        valid: true,
        seq: ack_seq,
        window: u16::from_be_bytes([hdr[6], hdr[7]]),
    }
}

/// The socket fields the ACK hook's first check reads. A plain struct with every field
/// always set, like [`Ack`].
#[derive(Clone, Copy)]
pub(crate) struct Queue {
    pub(crate) write_seq: u32,
    pub(crate) una: u32,
    pub(crate) rcv_wnd: u32,
}

impl Queue {
    #[inline(always)]
    pub(crate) fn read<M: Mem>(tp: *const u8) -> Queue {
        Queue {
            write_seq: M::ld(tp, off!(write_seq)),
            una: M::ld(tp, off!(snd_una)),
            rcv_wnd: M::ld(tp, off!(rcv_wnd)),
        }
    }

    /// Nothing of ours queued and our receive window open: the receiving side of a stream,
    /// or an idle socket. Not a wedge, and no map lookup. (A tracked socket is dropped by
    /// the ACK that drains it, whose pre-ACK state still shows data queued, so it is never
    /// skipped.) The benchmark's cost programs (`cost.rs`) take the same exit.
    #[inline(always)]
    pub(crate) fn idle(&self) -> bool {
        self.write_seq == self.una && self.rcv_wnd != 0
    }
}

/// ack: segment `skb` arrives on established socket `sk`.
#[inline(always)]
pub(crate) fn on_ack<M: Mem>(sk: *const u8, skb: *const u8) {
    if !configured::<M>() {
        return;
    }
    let Some(tp) = M::tcp_sk(sk) else { return };
    let q = Queue::read::<M>(tp);
    if q.idle() {
        return;
    }
    let Queue {
        write_seq,
        una,
        rcv_wnd,
    } = q;
    // A stream's ACKs arrive back to back: refresh a socket from them at most once per ms
    // per CPU. Never skipped: the first ACK after a pause (it ends a gap), one that drains
    // the queue, a zero window, a closed receive window.
    let t = now();
    let mut ack = NO_ACK;
    let mut have_ack = false;
    if let Some(last) = LAST_ACK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        let last = unsafe { &mut *last };
        if last.sk == sk as u64 && t.wrapping_sub(last.ns) < REFRESH_NS && rcv_wnd != 0 {
            // The header is read only for a socket refreshed within the last millisecond.
            ack = read_ack::<M>(skb);
            have_ack = true;
            if ack.valid && ack.window != 0 && ack.seq != write_seq {
                return;
            }
        }
        last.sk = sk as u64;
        last.ns = t;
    }
    let key = key_of::<M>(sk);
    let p = match lookup::<M>(tp, key) {
        Some(p) => p,
        None => {
            // Untracked: start tracking when data stays queued after this ACK (the ACKs are
            // where a backlog shows without a per-write hook), or on a wedge signature — the
            // peer has closed its window while we have data queued, or our own receive window
            // is closed with data unread. An ACK that covers everything written
            // (request/response traffic) tracks nothing. (Tracking only sockets with unsent
            // data, `write_seq` past `snd_nxt`, saves this header read for data in flight; it
            // was tried and dropped: in one run of the cadence test a consumer that stopped
            // reading was reset 7.8 s late, its stall clock starting only when tracking began.)
            if !have_ack {
                ack = read_ack::<M>(skb);
                have_ack = true;
            }
            let zero_win = ack.valid && ack.window == 0;
            let rcv_nxt: u32 = M::ld(tp, off!(rcv_nxt));
            let copied: u32 = M::ld(tp, off!(copied_seq));
            let signature = zero_win && write_seq != una || rcv_wnd == 0 && rcv_nxt != copied;
            let backlog = ack.valid && write_seq != una && ack.seq != write_seq;
            if !(signature || backlog) {
                return;
            }
            let why = if signature { Why::Signature } else { Why::Send };
            match track::<M>(tp, key, t, why) {
                Some(p) => p,
                None => return,
            }
        }
    };
    if !have_ack {
        ack = read_ack::<M>(skb);
    }
    // SAFETY: map value pointer valid for this invocation.
    let s = unsafe { &mut *p };
    let cur_una: u32 = M::ld(tp, off!(snd_una));
    let mut una = cur_una;
    let mut progress_before = s.snd_una;
    if ack.valid {
        let (ack_seq, window) = (ack.seq, ack.window);
        let snd_nxt: u32 = M::ld(tp, off!(snd_nxt));
        // An ACK for data we sent (not beyond snd_nxt) moves snd_una once processed.
        if seq_after(ack_seq, una) && !seq_after(ack_seq, snd_nxt) {
            una = ack_seq;
        }
        set_zero_window(s, window == 0);
        if window == 0 {
            s.snd_wnd = 0;
        } else {
            s.snd_wnd = M::ld(tp, off!(snd_wnd));
        }
        s.times.last_ack_ns = t;
    } else {
        progress_before = una; // nothing to learn about the send side
    }
    refresh_send::<M>(s, tp, t, una);
    if s.flags & flags::ZERO_WINDOW != 0 && !seq_after(una, progress_before) {
        s.zero_window_acks = s.zero_window_acks.wrapping_add(1);
    }
    let backoff: u8 = M::ld(tp, off!(icsk_backoff));
    s.backoff = backoff as u32;
    refresh_recv::<M>(s, tp, t);
    drop_if_drained(s, key);
}
