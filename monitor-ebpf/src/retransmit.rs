//! The retransmit hook: retransmit count and time (the dead-peer signal); starts tracking.

use monitor_common::progress::set_zero_window;

use crate::kernel::{configured, now, off, Mem};
use crate::refresh::refresh_send;
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
    let una: u32 = M::ld(tp, off!(snd_una));
    refresh_send::<M>(s, tp, t, una);
    s.retransmits = s.retransmits.wrapping_add(1);
    s.times.last_retrans_ns = t;
    // No ACK is being processed here, so the socket's window is current.
    s.snd_wnd = M::ld(tp, off!(snd_wnd));
    set_zero_window(s, s.snd_wnd == 0);
    let backoff: u8 = M::ld(tp, off!(icsk_backoff));
    s.backoff = backoff as u32;
}
