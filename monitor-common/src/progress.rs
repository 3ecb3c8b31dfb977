//! The pure per-socket updates the eBPF programs make to a [`SockState`] when they learn of
//! ACK progress or of the peer's window, shared with the agent's unit tests (whose socket
//! model calls these same functions, so the tests see the kernel side's bookkeeping).
//!
//! Everything here is `#[inline(always)]`, allocation-free and cannot panic (no unchecked
//! indexing, no overflowing arithmetic): it runs inside the eBPF programs and must pass the
//! verifier there.

use crate::{flags, Gap, SockState, GAP_SLOTS, MIN_GAP_NS};

/// Signed TCP sequence comparison: `a` is after `b` (modulo 2^32).
#[inline(always)]
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The peer's window as last learnt: zero marks [`flags::ZERO_WINDOW`] and the sticky
/// [`flags::ZERO_WINDOW_SEEN`] (cleared only by progress, see [`record_progress`]); open
/// clears [`flags::ZERO_WINDOW`] alone.
#[inline(always)]
pub fn set_zero_window(s: &mut SockState, zero: bool) {
    if zero {
        s.flags |= flags::ZERO_WINDOW | flags::ZERO_WINDOW_SEEN;
    } else {
        s.flags &= !flags::ZERO_WINDOW;
    }
}

/// Account ACK progress up to `una` seen at time `t` (ns). Nothing happens unless `una` is
/// after `s.snd_una`. Otherwise the acked bytes are added to `bytes_acked`; when the
/// interval without progress that this ends lasted at least [`MIN_GAP_NS`], it is recorded
/// as a [`Gap`] in the ring slot `gap_count % GAP_SLOTS` (a zero-window gap if the window
/// was zero now or at any time since the last progress) and `gap_count` grows; then
/// `snd_una` and `last_progress_ns` move to `una` and `t` and [`flags::ZERO_WINDOW_SEEN`]
/// is cleared.
#[inline(always)]
pub fn record_progress(s: &mut SockState, una: u32, t: u64) {
    if !seq_after(una, s.snd_una) {
        return;
    }
    let acked = una.wrapping_sub(s.snd_una);
    s.bytes_acked = s.bytes_acked.wrapping_add(acked as u64);
    let gap = t.saturating_sub(s.times.last_progress_ns);
    if gap >= MIN_GAP_NS {
        let slot = (s.gap_count as usize) % GAP_SLOTS;
        // `slot` is always < GAP_SLOTS; the bound check keeps the verifier happy.
        if let Some(g) = s.gaps.get_mut(slot) {
            *g = Gap {
                start_ns: s.times.last_progress_ns,
                end_ns: t,
                acked,
                zero_window: (s.flags & (flags::ZERO_WINDOW | flags::ZERO_WINDOW_SEEN) != 0) as u32,
            };
        }
        s.gap_count = s.gap_count.wrapping_add(1);
    }
    s.snd_una = una;
    s.times.last_progress_ns = t;
    s.flags &= !flags::ZERO_WINDOW_SEEN;
}

#[cfg(test)]
mod tests;
