//! The state hook: a tracked socket that closes leaves the map, its close note on the
//! `CLOSED` ring first.

use aya_ebpf::programs::BtfTracePointContext;
use monitor_common::{counter, gone, CloseNote};

use crate::kernel::{now, Btf, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED};
use crate::maps::{bump, sock_get, sock_remove, CLOSED};
use crate::track::key_of;

/// state: a socket leaving ESTABLISHED/CLOSE_WAIT, or reaching CLOSE from any state (an
/// orphan tracked in FIN_WAIT1 by the retransmit hook, say), is dropped. Its entry can never
/// outlive the socket, so an address key is never inherited by a later socket.
///
/// Ordering invariant: the close note goes on the `CLOSED` ring *before* the entry is
/// removed. So if the agent reads the map and then drains the ring, an entry that its read
/// missed because a close removed it has its note in that drain (unless the ring was full:
/// counted in `close_notes_lost`).
///
/// The tracepoint's arguments are `(sk, oldstate, newstate)`; `sk` is read only past the
/// early exit, which most state changes take.
#[inline(always)]
pub(crate) fn on_state(ctx: &BtfTracePointContext) {
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let was_open = oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT;
    let still_open = newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE_WAIT;
    // Not leaving ESTABLISHED/CLOSE_WAIT and not reaching CLOSE: nothing to do.
    if (!was_open || still_open) && newstate != TCP_CLOSE {
        return;
    }
    let sk: *const u8 = ctx.arg(0);
    let key = key_of::<Btf>(sk);
    let Some(p) = sock_get(&key) else {
        return; // not tracked
    };
    // SAFETY: map value pointer valid for this invocation.
    let cookie = unsafe { (*p).cookie };
    // The note first, then the removal (see above). An entry removed meanwhile by someone
    // else (the agent) still gets its note: the socket is closing all the same.
    let note = CloseNote {
        cookie,
        key,
        ts_ns: now(),
        reason: gone::CLOSED,
        new_state: newstate as u32,
    };
    if CLOSED.output::<CloseNote>(&note, 0).is_err() {
        bump(counter::CLOSE_NOTES_LOST);
    }
    if sock_remove(&key).is_ok() {
        bump(counter::CLOSED);
    }
}
