//! Trouble-only hooks (issue 14): the benchmark's counting program, and the decoding of a
//! write-timer expiry that the agent's timer hook (`expire.rs`, `--trouble-hooks`) shares.
//! The TCP write timer (`tcp_write_timer`) runs a socket's retransmission timeout and its
//! zero-window persist probe (`icsk_pending` RETRANS or PROBE0), so a hook
//! on its expiries fires for the sockets in trouble and, on a healthy stream, only for a
//! timer that expires with nothing left to do. No kernel has a tracepoint in that handler;
//! every kernel has `timer:timer_expire_entry`, for every `timer_list` of the machine, so
//! [`on_timer_expire`] first compares the expiring timer's callback with
//! `tcp_write_timer`'s address.
//!
//! Set by the loader in `TROUBLE_CFG`: [0] `tcp_write_timer`'s address (0: do nothing),
//! [1] the offset of `icsk_retransmit_timer` in the socket, [2] of `function` in
//! `struct timer_list`, [3] of `icsk_pending` in the socket. `TROUBLE_RUNS` counts the
//! write timer's expiries by `icsk_pending` (slots 0..=7, 7 for anything higher) and in
//! all (slot 8). `TROUBLE_FLAGGED` counts the expiries with a retransmission or a persist
//! probe pending per socket, keyed `local port << 16 | remote port`; bounded at
//! [`FLAGGED_MAX`] sockets (more are counted in slot 9, not kept). The agent loads this
//! object's `TROUBLE_CFG` the same way; the counting maps stay empty there.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};

use crate::kernel::{off, rd};

/// Sockets `TROUBLE_FLAGGED` keeps.
pub(crate) const FLAGGED_MAX: u32 = 4096;

/// `icsk_pending` values (`include/net/inet_connection_sock.h`).
const ICSK_TIME_RETRANS: u8 = 1;
const ICSK_TIME_PROBE0: u8 = 3;

#[map]
static TROUBLE_CFG: Array<u64> = Array::with_max_entries(4, 0);

#[map]
static TROUBLE_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(10, 0);

#[map]
static TROUBLE_FLAGGED: HashMap<u32, u64> = HashMap::with_max_entries(FLAGGED_MAX, 0);

#[inline(always)]
fn cfg(i: u32) -> u64 {
    TROUBLE_CFG.get(i).copied().unwrap_or(0)
}

/// An offset from `TROUBLE_CFG`, bounded so that the verifier allows arithmetic with the
/// hook's BTF pointer (struct offsets are far below this).
#[inline(always)]
fn offset(i: u32) -> u32 {
    (cfg(i) & 0x3fff) as u32
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = TROUBLE_RUNS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// The socket whose TCP write timer `timer` is, and what the timer has pending
/// (`icsk_pending`); None for any other timer, or before the loader set `TROUBLE_CFG`.
/// Shared by the benchmark's counting program and the agent's timer hook (`expire.rs`).
#[inline(always)]
pub(crate) fn write_timer_sock(timer: *const u8) -> Option<(*const u8, u8)> {
    let write_timer = cfg(0);
    if write_timer == 0 {
        return None;
    }
    let function: u64 = rd(timer, offset(2));
    if function != write_timer {
        return None;
    }
    // The timer is the socket's `icsk_retransmit_timer`: the socket is around it.
    let sk = timer.wrapping_sub(offset(1) as usize);
    let pending: u8 = rd(sk, offset(3));
    Some((sk, pending))
}

/// A retransmission timeout or a zero-window persist probe: the write timer's trouble.
#[inline(always)]
pub(crate) fn is_trouble(pending: u8) -> bool {
    pending == ICSK_TIME_RETRANS || pending == ICSK_TIME_PROBE0
}

/// `timer:timer_expire_entry`: `timer` is the expiring `struct timer_list`.
#[inline(always)]
pub(crate) fn on_timer_expire(timer: *const u8) {
    let Some((sk, pending)) = write_timer_sock(timer) else {
        return;
    };
    count(u32::from(pending.min(7)));
    count(8);
    if !is_trouble(pending) {
        return;
    }
    let lport: u16 = rd(sk, off!(skc_num));
    let rport: u16 = u16::from_be(rd(sk, off!(skc_dport)));
    let key = (u32::from(lport) << 16) | u32::from(rport);
    if let Some(p) = TROUBLE_FLAGGED.get_ptr_mut(key) {
        // SAFETY: map value pointer valid for this invocation; a lost increment between
        // CPUs only undercounts.
        unsafe { *p += 1 };
    } else if TROUBLE_FLAGGED.insert(key, 1, 0).is_err() {
        count(9);
    }
}
