//! Bringing a tracked entry up to date from its socket: the send side with ACK progress,
//! the receive side, and the writing process.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_get_current_cgroup_id,
};
use monitor_common::{
    flags,
    progress::{record_progress, set_zero_window},
    SockState,
};

use crate::kernel::{off, trouble_hooks, Mem};
use crate::track::cookie_field;

/// Set or clear flag `bit` of `s`.
#[inline(always)]
pub(crate) fn set_flag(s: &mut SockState, bit: u32, on: bool) {
    if on {
        s.flags |= bit;
    } else {
        s.flags &= !bit;
    }
}

/// Re-read the send side from the socket and account ACK progress up to `una`.
#[inline(always)]
pub(crate) fn refresh_send<M: Mem>(s: &mut SockState, tp: *const u8, t: u64, una: u32) {
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
    if trouble_hooks() {
        // Only rare hooks run: `una` may have moved long before this run, so no progress
        // time or gap is recorded here (the agent's sock_diag lookups see progress).
        s.snd_una = una;
    } else {
        record_progress(s, una, t);
    }
}

/// Re-read the send side where no ACK is being processed (a retransmission, a write-timer
/// expiry), so the socket's own fields are current: progress up to its `snd_una`, the
/// peer's window, the timer's backoff.
#[inline(always)]
pub(crate) fn refresh_from_socket<M: Mem>(s: &mut SockState, tp: *const u8, t: u64) {
    let una: u32 = M::ld(tp, off!(snd_una));
    refresh_send::<M>(s, tp, t, una);
    s.snd_wnd = M::ld(tp, off!(snd_wnd));
    set_zero_window(s, s.snd_wnd == 0);
    let backoff: u8 = M::ld(tp, off!(icsk_backoff));
    s.backoff = backoff as u32;
}

/// Re-read the receive side from the socket; a moved `copied_seq` is read progress.
#[inline(always)]
pub(crate) fn refresh_recv<M: Mem>(s: &mut SockState, tp: *const u8, t: u64) {
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

/// Record the current process as the socket's writer (pid, comm, cgroup), unless it already is.
#[inline(always)]
pub(crate) fn set_writer(s: &mut SockState) {
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
