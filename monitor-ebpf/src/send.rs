//! The send hook: a process writes (or is about to block on a full send buffer). Starts
//! tracking once data is already queued, records the writer and the send-buffer fill.

use crate::kernel::{configured, now, off, Mem};
use crate::maps::{LAST_SEND, REFRESH_NS};
use crate::refresh::{refresh_send, set_writer};
use crate::track::{key_of, tracked_or_track, Why};

/// Send path, send buffer not full: a socket's back-to-back writes on one CPU refresh its
/// entry once per this many calls, decided without reading the clock (the clock read was
/// half the program's cost per small write). A full buffer (a writer about to block: the
/// moment a wedge starts) is never skipped this way; it keeps the 1 ms rule.
const SEND_SKIP_CALLS: u64 = 64;

/// send: a process writes to `sk` (or is about to block on its full buffer).
#[inline(always)]
pub(crate) fn on_send<M: Mem>(sk: *const u8) {
    if !configured::<M>() {
        return;
    }
    // Nothing queued in front of this write (`sk_wmem_queued` lives in `struct sock`: one
    // load, no helper): not a wedge candidate and no map lookup. (A tracked socket that
    // drained was already dropped by the ACK hook.)
    let wmem: i32 = M::ld(sk, off!(sk_wmem_queued));
    if wmem == 0 {
        return;
    }
    // A busy writer calls this for every write (and every skb of a large one). While its
    // send buffer has room, refresh a socket once per `SEND_SKIP_CALLS` back-to-back calls
    // on this CPU, from `struct sock` alone (no clock, no map lookup); with the buffer full,
    // at most once per millisecond per CPU. The skipped refreshes are also made by the ACK
    // and retransmit hooks; a socket that is not tracked yet starts being tracked at the
    // latest when its buffer fills (and by the ACK and retransmit hooks on a wedge signature).
    let sndbuf: i32 = M::ld(sk, off!(sk_sndbuf));
    let full = wmem >= sndbuf;
    let Some(last) = LAST_SEND.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let last = unsafe { &mut *last };
    let same = last.sk == sk as u64;
    if same && !full && last.skipped < SEND_SKIP_CALLS {
        last.skipped += 1;
        return;
    }
    let t = now();
    if same && full && t.wrapping_sub(last.ns) < REFRESH_NS {
        return;
    }
    last.sk = sk as u64;
    last.ns = t;
    last.skipped = 0;
    let Some(tp) = M::tcp_sk(sk) else { return };
    let write_seq: u32 = M::ld(tp, off!(write_seq));
    let una: u32 = M::ld(tp, off!(snd_una));
    if write_seq == una {
        return;
    }
    let key = key_of::<M>(sk);
    let Some(p) = tracked_or_track::<M>(tp, key, t, Why::Send) else {
        return;
    };
    // SAFETY: map value pointer valid for this invocation.
    let s = unsafe { &mut *p };
    refresh_send::<M>(s, tp, t, una);
    s.times.last_send_ns = t;
    set_writer(s);
}
