//! The retransmit hook: retransmit count and time (the dead-peer signal); starts tracking.

use crate::kernel::{configured, now, Mem};
use crate::refresh::refresh_from_socket;
use crate::track::{key_of, tracked_or_track, Why};

/// retransmit: `sk` retransmits (the dead-peer signal).
#[inline(always)]
pub(crate) fn on_retransmit<M: Mem>(sk: *const u8) {
    if !configured::<M>() {
        return;
    }
    let Some(tp) = M::tcp_sk(sk) else { return };
    let key = key_of::<M>(sk);
    let t = now();
    let Some(p) = tracked_or_track::<M>(tp, key, t, Why::Signature) else {
        return;
    };
    // SAFETY: map value pointer valid for this invocation.
    let s = unsafe { &mut *p };
    refresh_from_socket::<M>(s, tp, t);
    s.retransmits = s.retransmits.wrapping_add(1);
    s.times.last_retrans_ns = t;
}
