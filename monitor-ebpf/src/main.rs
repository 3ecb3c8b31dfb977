//! tcpstall kernel side: per-socket queue/ACK-progress state for sockets that have data queued.
//!
//! Each hook has one logic function (`on_*`) and thin entry points, one per way the kernel can
//! offer it: a BTF tracepoint (`tp_btf`) where the kernel has the tracepoint, else fentry on
//! the kernel function the tracepoint sits in, else a kprobe on that function. The logic is
//! generic over [`Mem`], how it reads the socket: direct loads from the BTF-typed pointer of
//! tp_btf and fentry, `bpf_probe_read_kernel` from the plain pointer of a kprobe. The agent
//! probes at start-up which entry point of each hook loads and attaches
//! (`monitor/src/probes.rs`); the others are never loaded.
//! - send (per-write, attached only with `--per-write-hooks`: `tcp_sendmsg_locked`
//!   tracepoint, else fentry/kprobe `tcp_sendmsg_locked`, and before 6.5 `do_tcp_sendpages`
//!   (sendfile/splice/kTLS)); and, by default where fentry/kprobes exist, fentry/kprobe
//!   `sk_stream_wait_memory` (a write finding the send buffer full): a process writes; start
//!   tracking once data is already queued, record who writes and send-buffer fill.
//! - ack (`tcp_probe` tracepoint, else fentry/kprobe `tcp_rcv_established`): an incoming
//!   segment on an established socket; starts tracking when data stays queued after the ACK
//!   or on a zero window; ACK progress, peer window, persist-probe answers, read-side backlog.
//! - retransmit (`tcp_retransmit_skb`): retransmit count/time (the dead-peer signal); starts
//!   tracking too.
//! - read (per-read, attached only with `--read-hook`: `tcp_rcv_space_adjust`): the local
//!   app read data (read-side progress). Without it the agent asks sock_diag about the
//!   tracked sockets whose receive side looks full (`monitor/src/agent/reads.rs`).
//! - state (`inet_sock_set_state`): a tracked socket leaving ESTABLISHED/CLOSE_WAIT, or
//!   reaching CLOSE from any state, is dropped and a close note goes to the agent.
//! - timer (attached only with `--trouble-hooks`, in place of ack: `timer_expire_entry`,
//!   [`expire`]): the TCP write timer expires with a retransmission timeout or a
//!   zero-window probe pending; starts tracking the socket (by address: its pointer is
//!   computed, so reads are checked) and refreshes queue, window and backoff.
//! - holders (`iter/task_file`, [`holders`]): the processes holding wanted sockets, in one
//!   pass over every open file, in place of a walk of `/proc/*/fd`.
//! - scan (`iter/tcp`, [`scan`]): a TCP socket iterator for the tick-time scan design;
//!   only the benchmark loads it.
//! - cost (`tcp_probe`, [`cost`]): the ACK hook's first steps alone, and with its map
//!   lookup, to measure what its time is made of; only the benchmark loads them.
//! - trouble (`timer_expire_entry`, [`trouble`]): the TCP write timer's expiries (a
//!   retransmission timeout or a zero-window persist probe pending), to measure a design
//!   whose hooks fire only on trouble; only the benchmark loads it (the timer hook shares
//!   its decoding of an expiry).
//!
//! An entry (which records the socket's inode number, so the agent can find the process
//! holding it when no hook saw the writer) is created (by `track`, from the send, ack,
//! retransmit and timer hooks) only for a socket
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
//!
//! This file holds the entry points, one thin function per attach point (their names and
//! sections are what the agent loads and attaches); each calls its hook's logic:
//! [`send`], [`ack`], [`retransmit`], [`read`], [`state`], [`expire`]. The shared parts: [`kernel`]
//! (reading the socket), [`maps`], [`track`] (an entry's key, creation and removal) and
//! [`refresh`] (updating an entry from its socket).
//!
//! [`Mem`]: kernel::Mem
//! [`mode::KEY_BY_ADDR`]: monitor_common::mode::KEY_BY_ADDR
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod ack;
mod cost;
mod expire;
mod holders;
mod kernel;
mod maps;
mod read;
mod refresh;
mod retransmit;
mod scan;
mod send;
mod state;
mod track;
mod trouble;

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext},
};

use crate::ack::on_ack;
use crate::kernel::{sk_arg, Btf, Kprobe};
use crate::read::on_read;
use crate::retransmit::on_retransmit;
use crate::send::on_send;
use crate::state::on_state;

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

/// state: a socket leaving ESTABLISHED/CLOSE_WAIT, or reaching CLOSE from any state, is
/// dropped (see [`state::on_state`]).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpstall_state(ctx: BtfTracePointContext) -> i32 {
    on_state(&ctx);
    0
}

/// timer (`--trouble-hooks` only): every timer expiry of the machine; work only for a TCP
/// write timer with a retransmission or a zero-window probe pending ([`expire`]).
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn tcpstall_timer(ctx: BtfTracePointContext) -> i32 {
    expire::on_write_timer(ctx.arg(0));
    0
}

/// What the ACK hook's time is made of ([`cost`]): loaded and attached by the benchmark
/// only, never by the agent. The ACK hook's steps up to its map lookup.
#[btf_tracepoint(function = "tcp_probe")]
pub fn tcpstall_cost_reach(ctx: BtfTracePointContext) -> i32 {
    cost::on_reach::<Btf>(ctx.arg(0));
    0
}

/// The same and the map lookup ([`cost`]); benchmark only.
#[btf_tracepoint(function = "tcp_probe")]
pub fn tcpstall_cost_lookup(ctx: BtfTracePointContext) -> i32 {
    cost::on_lookup::<Btf>(ctx.arg(0));
    0
}

/// Trouble-only hooks ([`trouble`]): the TCP write timer's expiries, from every timer's;
/// loaded and attached by the benchmark only, never by the agent.
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn tcpstall_trouble_timer(ctx: BtfTracePointContext) -> i32 {
    trouble::on_timer_expire(ctx.arg(0));
    0
}

/// The holder iterator (`iter/task_file`, see [`holders`]): the processes holding the
/// tracked sockets no write was seen on, found in one in-kernel pass; the agent loads it
/// where the kernel has it and walks `/proc` where it does not.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn tcpstall_holders(ctx: *mut core::ffi::c_void) -> i32 {
    holders::on_task_file(ctx as *const holders::IterTaskFile);
    0
}

/// The tick-time scan (`iter/tcp`, see [`scan`]): loaded and attached by the benchmark
/// only, never by the agent.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn tcpstall_scan(ctx: *mut core::ffi::c_void) -> i32 {
    scan::on_scan(ctx as *const scan::IterTcp);
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
