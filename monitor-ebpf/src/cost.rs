//! What the ACK hook's time is made of (issue 14), measured by the benchmark only; the
//! agent never loads these programs. Both sit where the agent's ACK hook does (`tcp_probe`)
//! and repeat its first steps exactly:
//! - [`on_reach`]: reach the socket (`bpf_skc_to_tcp_sock`), the early exit of a socket with
//!   nothing of its own queued and its receive window open, the clock and the cookie;
//! - [`on_lookup`]: the same, then find the socket's entry in `SOCKS` (created at the
//!   socket's first ACK there, so after a warm-up every ACK of a socket with data queued
//!   finds one, in a map as full as the agent's) and write one field of it.
//!
//! The difference per run that reaches the map is what finding a socket's entry costs the
//! agent's hook. `COST_RUNS` counts the runs that passed the early exit (0), found an
//! entry (1) and created one (2).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use monitor_common::SockState;

use crate::ack::Queue;
use crate::kernel::{configured, now, Mem};
use crate::maps::{sock_insert, sock_ptr, SCRATCH};
use crate::track::key_of;

/// Runs of the cost programs by how far they went (see the module docs).
#[map]
static COST_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

/// Where the cost programs leave their result, so that no step is optimised away.
#[map]
static COST_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = COST_RUNS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn sink(v: u64) {
    if let Some(p) = COST_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { core::ptr::write_volatile(p, v) };
    }
}

/// The agent's ACK hook up to its map lookup: the socket, the early exit, the clock, the
/// key. Returns the key and the time, or None where the agent's hook leaves early.
#[inline(always)]
fn reach<M: Mem>(sk: *const u8) -> Option<(u64, u64)> {
    if !configured::<M>() {
        return None;
    }
    let tp = M::tcp_sk(sk)?;
    if Queue::read::<M>(tp).idle() {
        return None;
    }
    count(0);
    Some((key_of::<M>(sk), now()))
}

/// [`reach`] alone.
#[inline(always)]
pub(crate) fn on_reach<M: Mem>(sk: *const u8) {
    if let Some((key, t)) = reach::<M>(sk) {
        sink(key ^ t);
    }
}

/// [`reach`], then the socket's entry in `SOCKS` (made at its first ACK here).
#[inline(always)]
pub(crate) fn on_lookup<M: Mem>(sk: *const u8) {
    let Some((key, t)) = reach::<M>(sk) else {
        return;
    };
    if let Some(p) = sock_ptr(&key) {
        count(1);
        // SAFETY: map value pointer valid for this invocation.
        unsafe { (*p).times.last_ack_ns = t };
        return;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot owned by this program invocation.
    let s = unsafe { &mut *scratch };
    *s = SockState::zeroed();
    s.key = key;
    s.times.last_ack_ns = t;
    if sock_insert(&key, s).is_ok() {
        count(2);
    }
}
