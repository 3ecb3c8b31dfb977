//! tcpstall kernel side: per-socket queue/ACK-progress state for sockets that have data queued.
//!
//! Each hook has one logic function (`on_*`) and thin entry points, one per way the kernel can
//! offer it: a BTF tracepoint (`tp_btf`) where the kernel has the tracepoint, else fentry on
//! the kernel function the tracepoint sits in, else a kprobe on that function. The logic is
//! generic over [`Mem`], how it reads the socket: direct loads from the BTF-typed pointer of
//! tp_btf and fentry, `bpf_probe_read_kernel` from the plain pointer of a kprobe. The agent
//! probes at start-up which entry point of each hook loads and attaches
//! (`monitor/src/probes.rs`); the others are never loaded.
//! - send (`tcp_sendmsg_locked` tracepoint, else fentry/kprobe `tcp_sendmsg_locked`; plus
//!   fentry/kprobe `sk_stream_wait_memory` (a write about to block on a full buffer) and,
//!   before 6.5, `do_tcp_sendpages` (sendfile/splice/kTLS)): a process writes; start tracking
//!   once data is already queued, record who writes and send-buffer fill.
//! - ack (`tcp_probe` tracepoint, else fentry/kprobe `tcp_rcv_established`): an incoming
//!   segment on an established socket; ACK progress, peer window, persist-probe answers,
//!   read-side backlog.
//! - retransmit (`tcp_retransmit_skb`): retransmit count/time (the dead-peer signal); starts
//!   tracking too.
//! - read (`tcp_rcv_space_adjust`): the local app read data (read-side progress).
//! - state (`inet_sock_set_state`): a tracked socket leaving ESTABLISHED/CLOSE_WAIT, or
//!   reaching CLOSE from any state, is dropped and a close note goes to the agent.
//!
//! An entry is created (by `track`, from the send, ack and retransmit hooks) only for a socket
//! in a state that can wedge: ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, CLOSING, LAST_ACK. A socket
//! leaves the map when everything is acked and nothing is unread (drained), when it closes
//! (its close note is on the ring before the entry goes), or when the agent removes it.
//! Kernel struct offsets come from the running kernel's BTF via `OFFSETS`.
//! Sockets are keyed by cookie, or by address where the programs cannot get the cookie
//! (tracing programs before 5.12, kprobes always: [`mode::KEY_BY_ADDR`]).
//!
//! Built for `bpfel-unknown-none` by `monitor/build.rs` (aya-build). On the host, where the
//! workspace's `cargo clippy`/`cargo test --workspace` see it too, it is an ordinary program
//! with a stub `main`, so the same code is type-checked and linted there.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Clippy first saw this crate when it joined the workspace; these two (`&key` map arguments,
// negated conjunctions kept as the spec reads) are left for the eBPF code's own rework.
#![allow(clippy::needless_borrows_for_generic_args, clippy::nonminimal_bool)]

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skc_to_tcp_sock,
        },
    },
    macros::{btf_tracepoint, fentry, kprobe, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext},
};
use monitor_common::{
    counter, flags, gone, mode,
    progress::{record_progress, seq_after, set_zero_window},
    CloseNote, Offsets, SockState, CLOSED_RING_BYTES, DEFAULT_MAX_SOCKETS,
};

/// Filled in by the agent from /sys/kernel/btf/vmlinux before load.
#[no_mangle]
static OFFSETS: Offsets = Offsets::zeroed();

/// Offset of a kernel field, from the loader-set `OFFSETS`. Read straight from the frozen,
/// read-only .rodata map, so the verifier knows it as a constant and allows direct loads.
macro_rules! off {
    ($f:ident) => {
        // SAFETY: reading our own global.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(OFFSETS.$f)) }
    };
}

#[map]
static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

#[map]
static CLOSED: RingBuf = RingBuf::with_byte_size(CLOSED_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU scratch to build a new entry without blowing the 512-byte stack.
/// The socket last refreshed on this CPU by a hook, and when (a per-CPU rate limit for
/// back-to-back events of one busy socket).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastSeen {
    sk: u64,
    ns: u64,
    /// Send path: calls of `sk` skipped on this CPU since its last refresh.
    skipped: u64,
}

/// At most one refresh per socket per this many ns per CPU from the send and ACK paths.
const REFRESH_NS: u64 = 1_000_000;

/// Send path, send buffer not full: a socket's back-to-back writes on one CPU refresh its
/// entry once per this many calls, decided without reading the clock (the clock read was
/// half the program's cost per small write). A full buffer (a writer about to block: the
/// moment a wedge starts) is never skipped this way; it keeps the 1 ms rule.
const SEND_SKIP_CALLS: u64 = 64;

#[map]
static LAST_SEND: PerCpuArray<LastSeen> = PerCpuArray::with_max_entries(1, 0);

#[map]
static LAST_ACK: PerCpuArray<LastSeen> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SCRATCH: PerCpuArray<SockState> = PerCpuArray::with_max_entries(1, 0);

/// Set by the agent (element 0 non-zero) while the map is nearly full: new entries are then
/// started only for a wedge signature that has lasted through a timer (a zero window or a
/// retransmit with the RTO/persist backoff above 0), so the last entries stay free for real
/// wedges — a map full of live streams never locks a new wedge out. Refusals count as
/// `map_full`.
#[map]
static PRESSURE: Array<u32> = Array::with_max_entries(1, 0);

/// Who asks [`track`] for a new entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A write with data already queued: no wedge signature yet.
    Send,
    /// A wedge signature: a zero window, our closed receive window, a retransmit.
    Signature,
}

#[inline(always)]
fn under_pressure() -> bool {
    match PRESSURE.get(0) {
        Some(v) => *v != 0,
        None => false,
    }
}

/// The tracking generation: set by [`track`] after every new entry, to the creation time
/// (unique per creation in practice), so a negative answer ("not tracked") cached with an
/// earlier value is void. A plain store, not an atomic add (the BPF target offers none to
/// Rust): any store after a reader read the value changes it, and a creation's store comes
/// after its insert, so a reader that missed the insert sees a new value next time.
#[map]
static TRACK_GEN: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn new_generation(t: u64) {
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
    sk: u64,
    gen: u64,
}

#[map]
static READ_MISS: PerCpuArray<Untracked> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn track_gen() -> u64 {
    match TRACK_GEN.get_ptr(0) {
        // SAFETY: array slot valid for the program's lifetime; a racing bump is fine (the
        // value read is compared for equality only).
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

const TCP_ESTABLISHED: i32 = 1;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_CLOSING: i32 = 11;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// How a program reads the kernel's socket. Every logic function is generic over it and
/// monomorphised per entry point, so the one logic per hook compiles to direct loads for
/// tp_btf and fentry and to checked reads for kprobes.
trait Mem {
    /// The socket pointer is a trusted BTF pointer (tp_btf, fentry): direct loads, the
    /// cookie helper and `bpf_skc_to_tcp_sock` are allowed. A kprobe's is a plain number.
    const TRUSTED: bool;
    /// Read the kernel field at `base + off`.
    fn ld<T: Copy + Default>(base: *const u8, off: u32) -> T;
    /// The hook's `struct sock *` as a `struct tcp_sock *` (None for non-TCP sockets).
    fn tcp_sk(sk: *const u8) -> Option<*const u8>;
}

/// tp_btf and fentry: BTF-typed arguments.
struct Btf;

impl Mem for Btf {
    const TRUSTED: bool = true;

    /// Direct load of a field of a BTF-typed kernel object (`struct tcp_sock *` from
    /// `bpf_skc_to_tcp_sock`) at a verifier-known constant offset: one instruction, no helper.
    #[inline(always)]
    fn ld<T: Copy + Default>(base: *const u8, off: u32) -> T {
        // SAFETY: `base` is a trusted BTF pointer and `off` a field offset taken from the
        // running kernel's BTF; the verifier checks the access against the type.
        unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize) as *const T) }
    }

    #[inline(always)]
    fn tcp_sk(sk: *const u8) -> Option<*const u8> {
        // SAFETY: sk is the hook's trusted socket pointer.
        let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as *const u8;
        if tp.is_null() {
            None
        } else {
            Some(tp)
        }
    }
}

/// kprobe: the arguments are plain numbers from `pt_regs`; every read goes through
/// `bpf_probe_read_kernel`, and keys are addresses (no cookie helper for kprobes).
struct Kprobe;

impl Mem for Kprobe {
    const TRUSTED: bool = false;

    #[inline(always)]
    fn ld<T: Copy + Default>(base: *const u8, off: u32) -> T {
        rd(base, off)
    }

    /// `sk_protocol` is IPPROTO_TCP: `sk_stream_wait_memory` is also called for MPTCP and
    /// other stream protocols, whose sockets are no `tcp_sock`.
    #[inline(always)]
    fn tcp_sk(sk: *const u8) -> Option<*const u8> {
        if sk.is_null() {
            return None;
        }
        let proto: u16 = rd(sk, off!(sk_protocol));
        if proto != IPPROTO_TCP {
            None
        } else {
            Some(sk)
        }
    }
}

/// The loader filled in `OFFSETS`, with address keys where the programs cannot get the
/// cookie (kprobes never can; the loader reloads the object with address keys when it
/// attaches one, so a kprobe of a cookie-keyed object only exists until then, doing nothing).
#[inline(always)]
fn configured<M: Mem>() -> bool {
    off!(magic) == Offsets::MAGIC && (M::TRUSTED || key_by_addr())
}

/// Read through an untrusted kernel pointer: checked, faults read as zero (the default).
#[inline(always)]
fn rd<T: Default>(base: *const u8, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read yields the default.
    unsafe {
        bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T).unwrap_or_default()
    }
}

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Sockets are keyed by address, not cookie (decided by the loader; a verifier-known
/// constant, so the branch not taken is never verified — on 5.10 the cookie helper does not
/// exist for tracing programs).
#[inline(always)]
fn key_by_addr() -> bool {
    off!(mode) & mode::KEY_BY_ADDR != 0
}

/// The `SOCKS` key of `sk`: its cookie, or its address under [`mode::KEY_BY_ADDR`].
#[inline(always)]
fn key_of<M: Mem>(sk: *const u8) -> u64 {
    if !M::TRUSTED || key_by_addr() {
        sk as u64
    } else {
        // SAFETY: sk is the hook's trusted `struct sock *`.
        unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
    }
}

/// The cookie to report for `sk` keyed `key`: the key itself, or under
/// [`mode::KEY_BY_ADDR`] the socket's `skc_cookie` (0 until the kernel generated one).
#[inline(always)]
fn cookie_field<M: Mem>(tp: *const u8, key: u64) -> u64 {
    if key_by_addr() {
        M::ld(tp, off!(skc_cookie))
    } else {
        key
    }
}

/// The tracked entry of `key`. Under [`mode::KEY_BY_ADDR`] an entry whose ports are not the
/// socket's is a leftover of an earlier socket at the same address: it is dropped, never
/// inherited.
#[inline(always)]
fn lookup<M: Mem>(tp: *const u8, key: u64) -> Option<*mut SockState> {
    let p = SOCKS.get_ptr_mut(&key)?;
    if key_by_addr() {
        // SAFETY: map value pointer valid for this invocation.
        let s = unsafe { &*p };
        let lport: u16 = M::ld(tp, off!(skc_num));
        let rport: u16 = u16::from_be(M::ld(tp, off!(skc_dport)));
        if s.lport != lport || s.rport != rport {
            let _ = SOCKS.remove(&key);
            bump(counter::STALE);
            return None;
        }
    }
    Some(p)
}

/// Set or clear flag `bit` of `s`.
#[inline(always)]
fn set_flag(s: &mut SockState, bit: u32, on: bool) {
    if on {
        s.flags |= bit;
    } else {
        s.flags &= !bit;
    }
}

/// Everything acked and nothing unread: the socket leaves the map.
#[inline(always)]
fn drop_if_drained(s: &SockState, key: u64) {
    if s.snd_una == s.write_seq && s.rcv_nxt == s.copied_seq {
        let _ = SOCKS.remove(&key);
        bump(counter::DRAINED);
    }
}

/// Re-read the send side from the socket and account ACK progress up to `una`.
#[inline(always)]
fn refresh_send<M: Mem>(s: &mut SockState, tp: *const u8, t: u64, una: u32) {
    s.write_seq = M::ld(tp, off!(write_seq));
    s.snd_nxt = M::ld(tp, off!(snd_nxt));
    let wmem: i32 = M::ld(tp, off!(sk_wmem_queued));
    let sndbuf: i32 = M::ld(tp, off!(sk_sndbuf));
    s.wmem_queued = wmem as u32;
    s.sndbuf = sndbuf as u32;
    let socket: u64 = M::ld(tp, off!(sk_socket));
    set_flag(s, flags::ORPHAN, socket == 0);
    if s.cookie == 0 {
        s.cookie = cookie_field::<M>(tp, s.key);
    }
    set_flag(s, flags::SNDBUF_FULL, wmem >= sndbuf);
    record_progress(s, una, t);
}

#[inline(always)]
fn refresh_recv<M: Mem>(s: &mut SockState, tp: *const u8, t: u64) {
    s.rcv_nxt = M::ld(tp, off!(rcv_nxt));
    let copied: u32 = M::ld(tp, off!(copied_seq));
    if copied != s.copied_seq {
        s.copied_seq = copied;
        s.last_read_ns = t;
    }
    let rcvbuf: i32 = M::ld(tp, off!(sk_rcvbuf));
    s.rcvbuf = rcvbuf as u32;
    s.rcv_wnd = M::ld(tp, off!(rcv_wnd));
    set_flag(s, flags::RECV_BACKLOG, s.rcv_nxt != s.copied_seq);
}

#[inline(always)]
fn set_writer(s: &mut SockState) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if s.flags & flags::HAVE_WRITER != 0 && s.pid == tgid {
        return;
    }
    s.pid = tgid;
    s.comm = bpf_get_current_comm().unwrap_or_default();
    // SAFETY: helper without arguments.
    s.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    s.flags |= flags::HAVE_WRITER;
}

/// The TCP states in which a socket can wedge, the only ones an entry is created in:
/// ESTABLISHED and CLOSE_WAIT (the application can still write), and FIN_WAIT1, CLOSING and
/// LAST_ACK (our FIN not acked yet: an orphan with data in flight to a dead or non-reading
/// peer, which the agent may reset). Never SYN_SENT/SYN_RECV (a failed connect retransmits
/// its SYN), FIN_WAIT2, TIME_WAIT or CLOSE.
#[inline(always)]
fn can_wedge(state: i32) -> bool {
    state == TCP_ESTABLISHED
        || state == TCP_CLOSE_WAIT
        || state == TCP_FIN_WAIT1
        || state == TCP_CLOSING
        || state == TCP_LAST_ACK
}

/// Start tracking `sk`. Returns the new entry, or None when the socket is in a state that
/// cannot wedge ([`can_wedge`]) or the map is full (counted). Every hook that creates
/// entries creates them here, so an entry never starts outside those states; the state hook
/// removes it when the socket leaves ESTABLISHED/CLOSE_WAIT or reaches CLOSE (the hooks and
/// the state change run under the socket's lock, so no entry is created after its socket's
/// CLOSE).
#[inline(always)]
fn track<M: Mem>(tp: *const u8, key: u64, t: u64, why: Why) -> Option<*mut SockState> {
    let state: u8 = M::ld(tp, off!(skc_state));
    if !can_wedge(state as i32) {
        return None;
    }
    // Under map pressure only a signature that has lasted through a timer gets a new
    // entry: the RTO or zero-window-probe backoff is non-zero (a retransmit timer fired
    // unanswered, or a persist probe found the window still closed). A live stream's
    // momentary zero window or a single fast retransmit does not take the room left.
    if under_pressure() {
        let backoff: u8 = M::ld(tp, off!(icsk_backoff));
        if why == Why::Send || backoff == 0 {
            bump(counter::MAP_FULL);
            return None;
        }
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch slot owned by this program invocation.
    let s = unsafe { &mut *scratch };
    *s = SockState::zeroed();
    s.key = key;
    s.cookie = cookie_field::<M>(tp, key);
    s.family = M::ld(tp, off!(skc_family));
    s.lport = M::ld(tp, off!(skc_num));
    s.rport = u16::from_be(M::ld(tp, off!(skc_dport)));
    if s.family == AF_INET6 {
        s.laddr = M::ld(tp, off!(skc_v6_rcv_saddr));
        s.raddr = M::ld(tp, off!(skc_v6_daddr));
    } else {
        let l: [u8; 4] = M::ld(tp, off!(skc_rcv_saddr));
        let r: [u8; 4] = M::ld(tp, off!(skc_daddr));
        s.laddr[..4].copy_from_slice(&l);
        s.raddr[..4].copy_from_slice(&r);
    }
    let net: u64 = M::ld(tp, off!(skc_net));
    s.netns = M::ld(net as *const u8, off!(net_ns_inum));
    let dev: i32 = M::ld(tp, off!(skc_bound_dev_if));
    s.bound_dev_if = dev as u32;
    // Start from the socket's real state, whichever hook saw it first.
    s.snd_una = M::ld(tp, off!(snd_una));
    s.write_seq = M::ld(tp, off!(write_seq));
    s.snd_nxt = M::ld(tp, off!(snd_nxt));
    s.snd_wnd = M::ld(tp, off!(snd_wnd));
    set_zero_window(s, s.snd_wnd == 0);
    s.copied_seq = M::ld(tp, off!(copied_seq));
    s.rcv_nxt = M::ld(tp, off!(rcv_nxt));
    s.rcv_wnd = M::ld(tp, off!(rcv_wnd));
    let rcvbuf: i32 = M::ld(tp, off!(sk_rcvbuf));
    s.rcvbuf = rcvbuf as u32;
    if s.rcv_nxt != s.copied_seq {
        s.flags |= flags::RECV_BACKLOG;
    }
    s.first_seen_ns = t;
    s.last_progress_ns = t;
    s.last_read_ns = t;
    if SOCKS.insert(&key, &*s, 0).is_err() {
        bump(counter::MAP_FULL);
        return None;
    }
    new_generation(t);
    bump(counter::TRACKED);
    SOCKS.get_ptr_mut(&key)
}

/// The socket's entry, starting to track it if it is not tracked yet (None: map full).
#[inline(always)]
fn tracked_or_track<M: Mem>(tp: *const u8, key: u64, t: u64, why: Why) -> Option<*mut SockState> {
    match lookup::<M>(tp, key) {
        Some(p) => Some(p),
        None => track::<M>(tp, key, t, why),
    }
}

/// A kprobe's first argument, the `struct sock *` (NULL if the register is unreadable: every
/// program then returns at once).
#[inline(always)]
fn sk_arg(ctx: &ProbeContext) -> *const u8 {
    ctx.arg(0).unwrap_or(core::ptr::null())
}

/// send: a process writes to `sk` (or is about to block on its full buffer).
#[inline(always)]
fn on_send<M: Mem>(sk: *const u8) {
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
    s.last_send_ns = t;
    set_writer(s);
}

/// The `tcp_sendmsg_locked` tracepoint fires for every chunk a write queues (so also inside
/// a write that then blocks).
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcpstall_send_tp(ctx: BtfTracePointContext) -> i32 {
    on_send::<Btf>(ctx.arg(0));
    0
}

/// Without the tracepoint: on entry of every write.
#[fentry(function = "tcp_sendmsg_locked")]
pub fn tcpstall_send_fentry(ctx: FEntryContext) -> i32 {
    on_send::<Btf>(ctx.arg(0));
    0
}

/// Without fentry either (arm64 before 6.0, kernels without direct-call trampolines).
#[kprobe(function = "tcp_sendmsg_locked")]
pub fn tcpstall_send_kprobe(ctx: ProbeContext) -> u32 {
    on_send::<Kprobe>(sk_arg(&ctx));
    0
}

/// Without the tracepoint: a write finds the send buffer full (it blocks, or gets EAGAIN),
/// which the entry of `tcp_sendmsg_locked` alone would miss for a first large write.
#[fentry(function = "sk_stream_wait_memory")]
pub fn tcpstall_send_wait(ctx: FEntryContext) -> i32 {
    on_send::<Btf>(ctx.arg(0));
    0
}

#[kprobe(function = "sk_stream_wait_memory")]
pub fn tcpstall_send_wait_kprobe(ctx: ProbeContext) -> u32 {
    on_send::<Kprobe>(sk_arg(&ctx));
    0
}

/// Before 6.5, sendfile/splice/kTLS write through `do_tcp_sendpages`, not `tcp_sendmsg_locked`.
#[fentry(function = "do_tcp_sendpages")]
pub fn tcpstall_send_pages(ctx: FEntryContext) -> i32 {
    on_send::<Btf>(ctx.arg(0));
    0
}

#[kprobe(function = "do_tcp_sendpages")]
pub fn tcpstall_send_pages_kprobe(ctx: ProbeContext) -> u32 {
    on_send::<Kprobe>(sk_arg(&ctx));
    0
}

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

/// ack: segment `skb` arrives on established socket `sk`.
#[inline(always)]
fn on_ack<M: Mem>(sk: *const u8, skb: *const u8) {
    if !configured::<M>() {
        return;
    }
    let Some(tp) = M::tcp_sk(sk) else { return };
    // Nothing of ours queued and our receive window open: the receiving side of a stream,
    // or an idle socket. Not a wedge, and no map lookup. (A tracked socket is dropped by the
    // ACK that drains it, whose pre-ACK state still shows data queued, so it is never skipped.)
    let write_seq: u32 = M::ld(tp, off!(write_seq));
    let una: u32 = M::ld(tp, off!(snd_una));
    let rcv_wnd: u32 = M::ld(tp, off!(rcv_wnd));
    if write_seq == una && rcv_wnd != 0 {
        return;
    }
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
            // Untracked: start tracking only on a wedge signature — the peer has closed its
            // window while we have data queued, or our own receive window is closed with
            // data unread.
            let snd_wnd: u32 = M::ld(tp, off!(snd_wnd));
            if snd_wnd != 0 && rcv_wnd != 0 {
                return;
            }
            if !have_ack {
                ack = read_ack::<M>(skb);
                have_ack = true;
            }
            let zero_win = ack.valid && ack.window == 0;
            let rcv_nxt: u32 = M::ld(tp, off!(rcv_nxt));
            let copied: u32 = M::ld(tp, off!(copied_seq));
            if !(zero_win && write_seq != una) && !(rcv_wnd == 0 && rcv_nxt != copied) {
                return;
            }
            match track::<M>(tp, key, t, Why::Signature) {
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
        s.last_ack_ns = t;
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

/// `tcp_probe` fires first thing in `tcp_rcv_established`.
#[btf_tracepoint(function = "tcp_probe")]
pub fn tcpstall_ack_tp(ctx: BtfTracePointContext) -> i32 {
    on_ack::<Btf>(ctx.arg(0), ctx.arg(1));
    0
}

/// Without the tracepoint: entry of `tcp_rcv_established(sk, skb)`, the same place.
#[fentry(function = "tcp_rcv_established")]
pub fn tcpstall_ack_fentry(ctx: FEntryContext) -> i32 {
    on_ack::<Btf>(ctx.arg(0), ctx.arg(1));
    0
}

#[kprobe(function = "tcp_rcv_established")]
pub fn tcpstall_ack_kprobe(ctx: ProbeContext) -> u32 {
    let skb: *const u8 = ctx.arg(1).unwrap_or(core::ptr::null());
    on_ack::<Kprobe>(sk_arg(&ctx), skb);
    0
}

/// retransmit: `sk` retransmits (the dead-peer signal).
#[inline(always)]
fn on_retransmit<M: Mem>(sk: *const u8) {
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
    s.last_retrans_ns = t;
    // No ACK is being processed here, so the socket's window is current.
    s.snd_wnd = M::ld(tp, off!(snd_wnd));
    set_zero_window(s, s.snd_wnd == 0);
    let backoff: u8 = M::ld(tp, off!(icsk_backoff));
    s.backoff = backoff as u32;
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcpstall_retransmit_tp(ctx: BtfTracePointContext) -> i32 {
    on_retransmit::<Btf>(ctx.arg(0));
    0
}

/// Without the tracepoint: entry of `tcp_retransmit_skb(sk, skb, segs)` (every attempt).
#[fentry(function = "tcp_retransmit_skb")]
pub fn tcpstall_retransmit_fentry(ctx: FEntryContext) -> i32 {
    on_retransmit::<Btf>(ctx.arg(0));
    0
}

#[kprobe(function = "tcp_retransmit_skb")]
pub fn tcpstall_retransmit_kprobe(ctx: ProbeContext) -> u32 {
    on_retransmit::<Kprobe>(sk_arg(&ctx));
    0
}

/// read: the local application consumed received data on `sk`.
#[inline(always)]
fn on_read<M: Mem>(sk: *const u8) {
    if !configured::<M>() {
        return;
    }
    let gen = track_gen();
    let Some(miss) = READ_MISS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let miss = unsafe { &mut *miss };
    if miss.sk == sk as u64 && miss.gen == gen {
        return;
    }
    let Some(tp) = M::tcp_sk(sk) else { return };
    let key = key_of::<M>(sk);
    let Some(p) = lookup::<M>(tp, key) else {
        miss.sk = sk as u64;
        miss.gen = gen;
        return;
    };
    let t = now();
    // SAFETY: map value pointer valid for this invocation.
    let s = unsafe { &mut *p };
    refresh_recv::<M>(s, tp, t);
    let una: u32 = M::ld(tp, off!(snd_una));
    refresh_send::<M>(s, tp, t, una);
    drop_if_drained(s, key);
}

#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn tcpstall_read_tp(ctx: BtfTracePointContext) -> i32 {
    on_read::<Btf>(ctx.arg(0));
    0
}

/// Without the tracepoint: entry of the function it sits in.
#[fentry(function = "tcp_rcv_space_adjust")]
pub fn tcpstall_read_fentry(ctx: FEntryContext) -> i32 {
    on_read::<Btf>(ctx.arg(0));
    0
}

#[kprobe(function = "tcp_rcv_space_adjust")]
pub fn tcpstall_read_kprobe(ctx: ProbeContext) -> u32 {
    on_read::<Kprobe>(sk_arg(&ctx));
    0
}

/// state: a socket leaving ESTABLISHED/CLOSE_WAIT, or reaching CLOSE from any state (an
/// orphan tracked in FIN_WAIT1 by the retransmit hook, say), is dropped. Its entry can never
/// outlive the socket, so an address key is never inherited by a later socket.
///
/// Ordering invariant: the close note goes on the `CLOSED` ring *before* the entry is
/// removed. So if the agent reads the map and then drains the ring, an entry that its read
/// missed because a close removed it has its note in that drain (unless the ring was full:
/// counted in `close_notes_lost`).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpstall_state(ctx: BtfTracePointContext) -> i32 {
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let was_open = oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT;
    let still_open = newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE_WAIT;
    if !(was_open && !still_open) && newstate != TCP_CLOSE {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let key = key_of::<Btf>(sk);
    let Some(p) = SOCKS.get_ptr(&key) else {
        return 0; // not tracked
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
    if SOCKS.remove(&key).is_ok() {
        bump(counter::CLOSED);
    }
    0
}

#[cfg(not(test))]
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The host build's entry point: the programs only run in the kernel.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
