//! The timer hook (`--trouble-hooks` only): the TCP write timer expired on a socket with a
//! retransmission timeout or a zero-window persist probe pending. The socket is tracked
//! from here (and from the retransmit hook) instead of from every ACK: this hook runs for
//! every timer of the machine, but does work only for a socket in trouble.
//!
//! The socket pointer is computed from the timer's (`trouble.rs`), not a BTF argument, so
//! every read is checked ([`Kprobe`] reads) and the socket is keyed by its address (the
//! loader sets `mode::KEY_BY_ADDR` with `mode::TROUBLE_HOOKS`).

use crate::kernel::{configured, now, trouble_hooks, Kprobe, Mem};
use crate::refresh::refresh_from_socket;
use crate::track::{key_of, tracked_or_track, Why};
use crate::trouble::{is_trouble, write_timer_sock};

/// timer: `timer` (a `struct timer_list *`) expires.
#[inline(always)]
pub(crate) fn on_write_timer(timer: *const u8) {
    if !trouble_hooks() || !configured::<Kprobe>() {
        return;
    }
    let Some((sk, pending)) = write_timer_sock(timer) else {
        return;
    };
    if !is_trouble(pending) {
        return;
    }
    let Some(tp) = Kprobe::tcp_sk(sk) else { return };
    let key = key_of::<Kprobe>(sk);
    let t = now();
    let Some(p) = tracked_or_track::<Kprobe>(tp, key, t, Why::Signature) else {
        return;
    };
    // SAFETY: map value pointer valid for this invocation.
    refresh_from_socket::<Kprobe>(unsafe { &mut *p }, tp, t);
}
