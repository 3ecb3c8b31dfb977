//! The tick-time scan (issue 14's zero-hot-path design, measured by the benchmark only; the
//! agent never loads it): a BPF TCP socket iterator (`iter/tcp`, Linux 5.9+). Each read of
//! an iterator made from its link walks every TCP socket of the reader's network namespace
//! and runs [`on_scan`] once per socket; a socket with send data outstanding
//! (`write_seq != snd_una`) gets one fixed-size [`ScanRecord`] written to the seq_file.
//! Userspace compares consecutive passes: `snd_una` not moving while data is queued is a
//! stall, `snd_wnd == 0` a peer that does not read.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use monitor_common::{Offsets, ScanRecord};

use crate::kernel::{off, Btf, Mem};
use crate::track::read_addrs;

/// `struct bpf_iter__tcp`: the iterator program's context.
#[repr(C)]
pub struct IterTcp {
    /// `struct bpf_iter_meta *` (its first field is the `struct seq_file *`).
    meta: *const u8,
    /// `struct sock_common *`; NULL once after the last socket.
    sk_common: *const u8,
    _uid: u32,
}

/// One socket of the walk: a record for it if it has send data outstanding.
#[inline(always)]
pub(crate) fn on_scan(ctx: *const IterTcp) {
    if off!(magic) != Offsets::MAGIC {
        return;
    }
    // SAFETY: ctx is the iterator's context; the verifier checks these loads (8 bytes each).
    let (meta, skc) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).meta)),
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx).sk_common)),
        )
    };
    if meta.is_null() || skc.is_null() {
        return;
    }
    // NULL for request and timewait sockets (not full sockets) and non-TCP ones.
    let Some(tp) = Btf::tcp_sk(skc) else {
        return;
    };
    let write_seq: u32 = Btf::ld(tp, off!(write_seq));
    let snd_una: u32 = Btf::ld(tp, off!(snd_una));
    if write_seq == snd_una {
        return;
    }
    let mut r = ScanRecord {
        sk: tp as u64,
        write_seq,
        snd_una,
        snd_nxt: Btf::ld(tp, off!(snd_nxt)),
        snd_wnd: Btf::ld(tp, off!(snd_wnd)),
        family: Btf::ld(tp, off!(skc_family)),
        lport: Btf::ld(tp, off!(skc_num)),
        rport: u16::from_be(Btf::ld(tp, off!(skc_dport))),
        state: Btf::ld(tp, off!(skc_state)),
        backoff: Btf::ld(tp, off!(icsk_backoff)),
        laddr: [0; 16],
        raddr: [0; 16],
    };
    read_addrs::<Btf>(tp, r.family, &mut r.laddr, &mut r.raddr);
    // `meta->seq`, the first field of `struct bpf_iter_meta`.
    let seq: u64 = Btf::ld(meta, 0);
    // SAFETY: the record is fully initialised stack memory of the size passed.
    unsafe {
        bpf_seq_write(
            seq as *mut _,
            core::ptr::addr_of!(r) as *const c_void,
            ScanRecord::SIZE as u32,
        );
    }
}
