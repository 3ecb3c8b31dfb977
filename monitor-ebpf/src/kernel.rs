//! How the programs read the kernel: the BTF field offsets the loader fills in (`OFFSETS`,
//! read with `off!`), the [`Mem`] readers of tp_btf/fentry (direct loads) and kprobe
//! (checked reads), the loader's keying mode, kernel constants and the clock.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_ktime_get_ns, bpf_skc_to_tcp_sock},
    },
    programs::ProbeContext,
};
use monitor_common::{mode, Offsets};

/// Filled in by the agent from /sys/kernel/btf/vmlinux before load.
#[no_mangle]
pub(crate) static OFFSETS: Offsets = Offsets::zeroed();

/// Offset of a kernel field, from the loader-set `OFFSETS`. Read straight from the frozen,
/// read-only .rodata map, so the verifier knows it as a constant and allows direct loads.
macro_rules! off {
    ($f:ident) => {
        // SAFETY: reading our own global.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::kernel::OFFSETS.$f)) }
    };
}
pub(crate) use off;

// Kernel constants: TCP states (`include/net/tcp_states.h`), address family, protocol.
pub(crate) const TCP_ESTABLISHED: i32 = 1;
pub(crate) const TCP_FIN_WAIT1: i32 = 4;
pub(crate) const TCP_CLOSE: i32 = 7;
pub(crate) const TCP_CLOSE_WAIT: i32 = 8;
pub(crate) const TCP_LAST_ACK: i32 = 9;
pub(crate) const TCP_CLOSING: i32 = 11;
pub(crate) const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// How a program reads the kernel's socket. Every logic function is generic over it and
/// monomorphised per entry point, so the one logic per hook compiles to direct loads for
/// tp_btf and fentry and to checked reads for kprobes.
pub(crate) trait Mem {
    /// The socket pointer is a trusted BTF pointer (tp_btf, fentry): direct loads, the
    /// cookie helper and `bpf_skc_to_tcp_sock` are allowed. A kprobe's is a plain number.
    const TRUSTED: bool;
    /// Read the kernel field at `base + off`.
    fn ld<T: Copy + Default>(base: *const u8, off: u32) -> T;
    /// The hook's `struct sock *` as a `struct tcp_sock *` (None for non-TCP sockets).
    fn tcp_sk(sk: *const u8) -> Option<*const u8>;
}

/// tp_btf and fentry: BTF-typed arguments.
pub(crate) struct Btf;

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
pub(crate) struct Kprobe;

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
pub(crate) fn configured<M: Mem>() -> bool {
    off!(magic) == Offsets::MAGIC && (M::TRUSTED || key_by_addr())
}

/// Read through an untrusted kernel pointer: checked, faults read as zero (the default).
#[inline(always)]
pub(crate) fn rd<T: Default>(base: *const u8, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read yields the default.
    unsafe {
        bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T).unwrap_or_default()
    }
}

/// The monotonic clock, in ns.
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Sockets are keyed by address, not cookie (decided by the loader; a verifier-known
/// constant, so the branch not taken is never verified — on 5.10 the cookie helper does not
/// exist for tracing programs).
#[inline(always)]
pub(crate) fn key_by_addr() -> bool {
    off!(mode) & mode::KEY_BY_ADDR != 0
}

/// Trouble-only hooks (`mode::TROUBLE_HOOKS`, decided by the loader; a verifier-known
/// constant like [`key_by_addr`]).
#[inline(always)]
pub(crate) fn trouble_hooks() -> bool {
    off!(mode) & mode::TROUBLE_HOOKS != 0
}

/// A kprobe's first argument, the `struct sock *` (NULL if the register is unreadable: every
/// program then returns at once).
#[inline(always)]
pub(crate) fn sk_arg(ctx: &ProbeContext) -> *const u8 {
    ctx.arg(0).unwrap_or(core::ptr::null())
}
