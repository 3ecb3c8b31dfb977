//! A socket's `SOCKS` entry: its key, finding it, the decision to start tracking it (a
//! state that can wedge, map pressure) and dropping it once drained.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_get_socket_cookie;
use monitor_common::{counter, flags, progress::set_zero_window, SockState};

use crate::kernel::{
    key_by_addr, off, rd, Mem, AF_INET6, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED,
    TCP_FIN_WAIT1, TCP_LAST_ACK,
};
use crate::maps::{
    bump, new_generation, sock_insert, sock_ptr, sock_remove, under_pressure, SCRATCH,
};

/// Who asks [`track`] for a new entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Data queued (a write with data already queued, or data left after an ACK): no
    /// wedge signature yet.
    Send,
    /// A wedge signature: a zero window, our closed receive window, a retransmit.
    Signature,
}

/// The `SOCKS` key of `sk`: its cookie, or its address under [`mode::KEY_BY_ADDR`].
///
/// [`mode::KEY_BY_ADDR`]: monitor_common::mode::KEY_BY_ADDR
#[inline(always)]
pub(crate) fn key_of<M: Mem>(sk: *const u8) -> u64 {
    if !M::TRUSTED || key_by_addr() {
        sk as u64
    } else {
        // SAFETY: sk is the hook's trusted `struct sock *`.
        unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
    }
}

/// The cookie to report for `sk` keyed `key`: the key itself, or under
/// [`mode::KEY_BY_ADDR`] the socket's `skc_cookie` (0 until the kernel generated one).
///
/// [`mode::KEY_BY_ADDR`]: monitor_common::mode::KEY_BY_ADDR
#[inline(always)]
pub(crate) fn cookie_field<M: Mem>(tp: *const u8, key: u64) -> u64 {
    if key_by_addr() {
        M::ld(tp, off!(skc_cookie))
    } else {
        key
    }
}

/// The tracked entry of `key`. Under [`mode::KEY_BY_ADDR`] an entry whose ports are not the
/// socket's is a leftover of an earlier socket at the same address: it is dropped, never
/// inherited.
///
/// [`mode::KEY_BY_ADDR`]: monitor_common::mode::KEY_BY_ADDR
#[inline(always)]
pub(crate) fn lookup<M: Mem>(tp: *const u8, key: u64) -> Option<*mut SockState> {
    let p = sock_ptr(&key)?;
    if key_by_addr() {
        // SAFETY: map value pointer valid for this invocation.
        let s = unsafe { &*p };
        let lport: u16 = M::ld(tp, off!(skc_num));
        let rport: u16 = u16::from_be(M::ld(tp, off!(skc_dport)));
        if s.lport != lport || s.rport != rport {
            let _ = sock_remove(&key);
            bump(counter::STALE);
            return None;
        }
    }
    Some(p)
}

/// Everything acked and nothing unread: the socket leaves the map.
#[inline(always)]
pub(crate) fn drop_if_drained(s: &SockState, key: u64) {
    if s.snd_una == s.write_seq && s.rcv_nxt == s.copied_seq {
        let _ = sock_remove(&key);
        bump(counter::DRAINED);
    }
}

/// The socket's local and remote addresses into `laddr`/`raddr`: IPv6 whole, IPv4 in the
/// first 4 bytes (the rest left as they are).
#[inline(always)]
pub(crate) fn read_addrs<M: Mem>(
    tp: *const u8,
    family: u16,
    laddr: &mut [u8; 16],
    raddr: &mut [u8; 16],
) {
    if family == AF_INET6 {
        *laddr = M::ld(tp, off!(skc_v6_rcv_saddr));
        *raddr = M::ld(tp, off!(skc_v6_daddr));
    } else {
        let l: [u8; 4] = M::ld(tp, off!(skc_rcv_saddr));
        let r: [u8; 4] = M::ld(tp, off!(skc_daddr));
        laddr[..4].copy_from_slice(&l);
        raddr[..4].copy_from_slice(&r);
    }
}

/// The inode number of the socket's file (`socket:[N]` in `/proc/PID/fd`), 0 when no file
/// refers to it (an orphan). `struct socket` is the first member of `struct socket_alloc`,
/// whose `vfs_inode` lies beyond `struct socket`: a checked read, not a typed load.
#[inline(always)]
fn sock_ino<M: Mem>(tp: *const u8) -> u32 {
    let socket: u64 = M::ld(tp, off!(sk_socket));
    if socket == 0 {
        return 0;
    }
    let ino: u64 = rd(socket as *const u8, off!(socket_ino));
    ino as u32
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
pub(crate) fn track<M: Mem>(tp: *const u8, key: u64, t: u64, why: Why) -> Option<*mut SockState> {
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
    read_addrs::<M>(tp, s.family, &mut s.laddr, &mut s.raddr);
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
    s.sock_ino = sock_ino::<M>(tp);
    s.times.first_seen_ns = t;
    s.times.last_progress_ns = t;
    s.last_read_ns = t;
    if sock_insert(&key, s).is_err() {
        bump(counter::MAP_FULL);
        return None;
    }
    new_generation(t);
    bump(counter::TRACKED);
    sock_ptr(&key)
}

/// The socket's entry, starting to track it if it is not tracked yet (None: map full).
#[inline(always)]
pub(crate) fn tracked_or_track<M: Mem>(
    tp: *const u8,
    key: u64,
    t: u64,
    why: Why,
) -> Option<*mut SockState> {
    match lookup::<M>(tp, key) {
        Some(p) => Some(p),
        None => track::<M>(tp, key, t, why),
    }
}
