//! The maps the programs share with the agent, and their small accessors.
//!
//! Lifecycle of a `SOCKS` entry: created by [`track`](crate::track::track) (send, ACK and
//! retransmit hooks) for a socket in a state that can wedge, built in `SCRATCH`; refreshed by
//! every hook that sees the socket; removed when drained (everything acked, nothing unread),
//! by the state hook when the socket closes (its close note goes on `CLOSED` first), or by
//! the agent. `COUNTERS` counts what happened (`monitor_common::counter`). The agent sets
//! `PRESSURE` while `SOCKS` is nearly full. `TRACK_GEN` changes with every new entry and voids
//! the read hook's negative cache `READ_MISS`. `LAST_SEND`/`LAST_ACK` hold the per-CPU rate
//! limits of the send and ACK hooks. (`COST_RUNS`/`COST_SINK`, in `cost.rs`, belong to the
//! benchmark's cost programs: in the agent's load of the object they exist, a few bytes per
//! CPU, and nothing ever writes them.)

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use monitor_common::{counter, SockState, CLOSED_RING_BYTES, DEFAULT_MAX_SOCKETS, MAX_HOLDER_WANT};

/// The tracked sockets, by key (cookie, or address under `mode::KEY_BY_ADDR`).
#[map]
static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

// `SOCKS` is used through these, which take the key and the entry by reference. aya's map
// methods take `impl Borrow`: a key handed over by value is copied to a fresh stack slot at
// each call (up to 15 more instructions per program), and a `SockState` by value would not
// fit the 512-byte stack.

/// The entry of `key`, for update.
#[inline(always)]
pub(crate) fn sock_ptr(key: &u64) -> Option<*mut SockState> {
    SOCKS.get_ptr_mut(key)
}

/// The entry of `key`, read-only.
#[inline(always)]
pub(crate) fn sock_get(key: &u64) -> Option<*const SockState> {
    SOCKS.get_ptr(key)
}

/// Add (or overwrite) the entry of `key`; an error when the map is full.
#[inline(always)]
pub(crate) fn sock_insert(key: &u64, s: &SockState) -> Result<(), i32> {
    SOCKS.insert(key, s, 0)
}

/// Remove the entry of `key`; an error when there was none.
#[inline(always)]
pub(crate) fn sock_remove(key: &u64) -> Result<(), i32> {
    SOCKS.remove(key)
}

/// Close notes for the agent, put here by the state hook before it removes the entry.
#[map]
pub(crate) static CLOSED: RingBuf = RingBuf::with_byte_size(CLOSED_RING_BYTES, 0);

/// Per-CPU event counters, indexed by `monitor_common::counter`.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The socket last refreshed on this CPU by a hook, and when (a per-CPU rate limit for
/// back-to-back events of one busy socket).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastSeen {
    pub(crate) sk: u64,
    pub(crate) ns: u64,
    /// Send path: calls of `sk` skipped on this CPU since its last refresh.
    pub(crate) skipped: u64,
}

/// At most one refresh per socket per this many ns per CPU from the send and ACK paths.
pub(crate) const REFRESH_NS: u64 = 1_000_000;

#[map]
pub(crate) static LAST_SEND: PerCpuArray<LastSeen> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static LAST_ACK: PerCpuArray<LastSeen> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch to build a new entry without blowing the 512-byte stack.
#[map]
pub(crate) static SCRATCH: PerCpuArray<SockState> = PerCpuArray::with_max_entries(1, 0);

/// Set by the agent (element 0 non-zero) while the map is nearly full: new entries are then
/// started only for a wedge signature that has lasted through a timer (a zero window or a
/// retransmit with the RTO/persist backoff above 0), so the last entries stay free for real
/// wedges — a map full of live streams never locks a new wedge out. Refusals count as
/// `map_full`.
#[map]
pub(crate) static PRESSURE: Array<u32> = Array::with_max_entries(1, 0);

/// The agent has set [`PRESSURE`].
#[inline(always)]
pub(crate) fn under_pressure() -> bool {
    match PRESSURE.get(0) {
        Some(v) => *v != 0,
        None => false,
    }
}

/// The tracking generation: set by [`track`](crate::track::track) after every new entry, to
/// the creation time (unique per creation in practice), so a negative answer ("not tracked")
/// cached with an earlier value is void. A plain store, not an atomic add (the BPF target
/// offers none to Rust): any store after a reader read the value changes it, and a creation's
/// store comes after its insert, so a reader that missed the insert sees a new value next time.
#[map]
pub(crate) static TRACK_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Store a new [`TRACK_GEN`] after a creation at `t`.
#[inline(always)]
pub(crate) fn new_generation(t: u64) {
    if let Some(g) = TRACK_GEN.get_ptr_mut(0) {
        // SAFETY: array slot valid for the program's lifetime.
        unsafe { core::ptr::write_volatile(g, t) };
    }
}

/// The read hook's per-CPU negative cache: the socket it last found untracked, and the
/// [`TRACK_GEN`] read before that lookup. A reader draining one untracked stream (the
/// receiving side of every healthy stream) then costs two array reads per read, no cookie
/// and no hash lookup. Only creation can make a socket tracked, and every creation stores a
/// new generation after its insert, so a cached "untracked" is void once any socket is
/// tracked after it was cached.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Untracked {
    pub(crate) sk: u64,
    pub(crate) gen: u64,
}

#[map]
pub(crate) static READ_MISS: PerCpuArray<Untracked> = PerCpuArray::with_max_entries(1, 0);

/// The current [`TRACK_GEN`].
#[inline(always)]
pub(crate) fn track_gen() -> u64 {
    match TRACK_GEN.get_ptr(0) {
        // SAFETY: array slot valid for the program's lifetime; a racing bump is fine (the
        // value read is compared for equality only).
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// Count one event `idx` (a `monitor_common::counter`) in [`COUNTERS`].
#[inline(always)]
pub(crate) fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// The socket inodes the holder iterator ([`crate::holders`]) looks for: filled by the agent
/// before a pass and emptied after it, so it holds at most one pass's wanted sockets
/// ([`MAX_HOLDER_WANT`]) and only for the length of the pass. The value is unused.
#[map]
pub(crate) static HOLDER_WANT: HashMap<u64, u8> = HashMap::with_max_entries(MAX_HOLDER_WANT, 0);
