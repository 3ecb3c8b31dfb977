//! Types shared by the eBPF programs (`monitor-ebpf`) and the agent (`monitor`).
//!
//! Everything here is `repr(C)`, plain old data, and must keep the same layout on both sides.
//! [`progress`] holds the pure state updates both sides share (the programs make them, the
//! agent's tests model the kernel with them).
#![cfg_attr(not(test), no_std)]

pub mod progress;

/// Maximum number of sockets tracked at once by default (the `SOCKS` map bound).
/// A socket is tracked only while it has data queued in either direction, so this bounds
/// the number of *busy* sockets, not all sockets. Overridable with `--max-sockets`.
pub const DEFAULT_MAX_SOCKETS: u32 = 32_768;

/// Size of the ring buffer that carries socket-gone notes to the agent.
pub const CLOSED_RING_BYTES: u32 = 1024 * 1024;

/// The hooks the programs attach (each by the first candidate the kernel takes), in the
/// order the agent's `agent_started.hooks` documents them. Also what `cargo xtask vm-test`
/// expects every kernel line to report.
pub const HOOK_NAMES: &[&str] = &[
    "send",
    "send_wait",
    "send_pages",
    "ack",
    "retransmit",
    "read",
    "state",
    "timer",
];

/// `SockState::flags` bits.
pub mod flags {
    /// The last ACK seen from the peer advertised a zero receive window.
    pub const ZERO_WINDOW: u32 = 1 << 0;
    /// At the last sendmsg the send buffer was full (sk_wmem_queued >= sk_sndbuf): the writer blocks.
    pub const SNDBUF_FULL: u32 = 1 << 1;
    /// Receive queue holds unread data (rcv_nxt != copied_seq) at the last look.
    pub const RECV_BACKLOG: u32 = 1 << 2;
    /// Writer identity (pid/comm/cgroup) is known (set only from process context).
    pub const HAVE_WRITER: u32 = 1 << 3;
    /// A zero window was seen since the last ACK progress (sticky until progress), so the
    /// gap that progress ends is recorded as a zero-window episode even when the ACK that
    /// ends it (or a window update just before it) re-opens the window.
    pub const ZERO_WINDOW_SEEN: u32 = 1 << 4;
    /// The application has closed the socket (`sk->sk_socket` is NULL): an orphan the
    /// kernel finishes on its own (FIN_WAIT1 and later). Nobody is blocked on it.
    pub const ORPHAN: u32 = 1 << 5;
}

/// `Offsets::mode` bits: kernel differences decided at start-up.
pub mod mode {
    /// `bpf_get_socket_cookie()` is not available to tracing programs (before Linux 5.12):
    /// the `SOCKS` map is keyed by the socket's address, and `SockState::cookie` is the
    /// socket's `skc_cookie` field (0 until something asked the kernel for the cookie; the
    /// agent then looks it up through sock_diag).
    pub const KEY_BY_ADDR: u32 = 1 << 0;
    /// Trouble-only hooks (`--trouble-hooks`): no ACK, send or read hook runs; entries are
    /// made by the retransmit hook and the TCP write timer's expiries, and the agent reads
    /// a tracked socket's progress through sock_diag. The programs then move `snd_una`
    /// without recording progress or gaps: between their rare runs they cannot tell when
    /// the progress happened, and the agent's lookups can.
    pub const TROUBLE_HOOKS: u32 = 1 << 1;
}

/// `COUNTERS` per-CPU array indexes.
pub mod counter {
    /// A socket needed tracking but the SOCKS map was full.
    pub const MAP_FULL: u32 = 0;
    /// A close note could not be put on the ring buffer (agent too slow).
    pub const CLOSE_NOTES_LOST: u32 = 1;
    /// Sockets that started being tracked.
    pub const TRACKED: u32 = 2;
    /// Sockets that left tracking because they drained (everything acked, nothing unread).
    pub const DRAINED: u32 = 3;
    /// Sockets that left tracking because they closed.
    pub const CLOSED: u32 = 4;
    /// Entries dropped because their address key now belongs to another socket
    /// (only under `mode::KEY_BY_ADDR`; a socket freed without passing through CLOSE).
    pub const STALE: u32 = 5;
    pub const COUNT: u32 = 8;
}

/// Why a socket left the map, in a [`CloseNote`].
pub mod gone {
    pub const CLOSED: u32 = 1;
}

/// Version of the *meaning* of [`SockState`] (and [`Gap`]): bump it whenever a field's
/// semantics change without its type or position changing. The agent keeps the `SOCKS` map
/// pinned across restarts and adopts a pinned map only when this version, the struct layout
/// (size and every field offset) and the key mode all match its own; otherwise it starts
/// with a fresh map.
pub const SOCK_STATE_VERSION: u32 = 1;

/// Per-socket state, keyed by socket cookie in the `SOCKS` hash map.
///
/// Times are `bpf_ktime_get_ns()` (CLOCK_MONOTONIC). Sequence numbers are raw TCP u32 values;
/// differences are taken with wrapping arithmetic.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockState {
    /// The socket cookie (as `SO_COOKIE`); 0 when not known yet (see [`mode::KEY_BY_ADDR`]).
    pub cookie: u64,
    /// The `SOCKS` map key of this entry: the cookie, or the socket's address under
    /// [`mode::KEY_BY_ADDR`].
    pub key: u64,
    /// Network namespace inode number (`net->ns.inum`), as in `/proc/PID/ns/net`.
    pub netns: u32,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Local port, host byte order.
    pub lport: u16,
    /// Remote port, host byte order.
    pub rport: u16,
    pub _pad0: u16,
    pub flags: u32,
    /// Local address: IPv4 in the first 4 bytes, or IPv6 (network byte order).
    pub laddr: [u8; 16],
    /// Remote address, same layout as `laddr`.
    pub raddr: [u8; 16],
    /// Last writer's thread-group id (the pid users know).
    pub pid: u32,
    /// The interface the socket is bound to (`sk_bound_dev_if`: `SO_BINDTODEVICE`, or set
    /// by the kernel for an IPv6 link-local peer), read when tracking starts; 0 = not bound.
    pub bound_dev_if: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],

    // Send side.
    pub write_seq: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    /// Peer's advertised window (bytes, scaled) as last known.
    pub snd_wnd: u32,
    pub wmem_queued: u32,
    pub sndbuf: u32,
    /// Retransmissions seen by the tcp_retransmit_skb hook while tracked.
    pub retransmits: u32,
    /// icsk_backoff at the last look (exponential backoff of the RTO / persist timer).
    pub backoff: u32,
    /// ACKs seen that carried no progress and a zero window (answers to persist probes).
    pub zero_window_acks: u32,
    /// Inode number of the socket's file (`socket:[N]` in `/proc/PID/fd`), read when
    /// tracking starts; 0 for a socket no file refers to (an orphan). The agent finds the
    /// process holding a socket by it when no write was seen ([`flags::HAVE_WRITER`] unset).
    pub sock_ino: u32,
    /// Bytes acked by the peer since tracking began (sum of snd_una advances seen).
    pub bytes_acked: u64,
    /// When each event was last seen on this socket.
    pub times: Times,

    // Receive side (read-side mirror).
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub rcvbuf: u32,
    pub rcv_wnd: u32,
    /// Last time the local application consumed received data (copied_seq advanced) or tracking began.
    pub last_read_ns: u64,

    /// The last [`GAP_SLOTS`] no-progress gaps of at least [`MIN_GAP_NS`] that ended in ACK
    /// progress (slot = `gap_count % GAP_SLOTS`).
    pub gaps: [Gap; GAP_SLOTS],
    /// Total gaps recorded since tracking began.
    pub gap_count: u32,
    pub _pad3: u32,
}

/// How many recovered no-progress gaps the kernel side keeps per socket.
pub const GAP_SLOTS: usize = 4;
/// Shortest no-progress interval (with data queued) the kernel records as a gap: 250 ms.
pub const MIN_GAP_NS: u64 = 250_000_000;

/// One interval with data queued and no ACK progress that ended in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gap {
    /// Last progress before the gap.
    pub start_ns: u64,
    /// The ACK that ended it.
    pub end_ns: u64,
    /// Bytes that ACK acknowledged.
    pub acked: u32,
    /// 1 if the peer's window was zero when the gap ended (a zero-window episode), else 0.
    pub zero_window: u32,
}

/// When the kernel side last saw each event on a tracked socket (`bpf_ktime_get_ns()`,
/// CLOCK_MONOTONIC). Part of [`SockState`]; the agent's decoded snapshot keeps it as is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    /// Tracking began: a new tracking session when a socket drained and was tracked again.
    pub first_seen_ns: u64,
    /// Last write while tracked.
    pub last_send_ns: u64,
    /// Last ACK received from the peer (any ACK, progress or not).
    pub last_ack_ns: u64,
    /// Last time snd_una advanced (or tracking began).
    pub last_progress_ns: u64,
    /// Last retransmission seen; 0 when none was.
    pub last_retrans_ns: u64,
}

impl SockState {
    pub const fn zeroed() -> Self {
        // SAFETY: all-zero is a valid value for this plain-data struct.
        unsafe { core::mem::zeroed() }
    }
}

/// Sent on the `CLOSED` ring buffer when a tracked socket leaves ESTABLISHED/CLOSE_WAIT
/// or reaches TCP_CLOSE (the app closed it, the peer reset it, or it was destroyed). The
/// note is on the ring *before* the map entry is removed: a map read that misses an entry
/// removed by a close finds that close's note on the ring afterwards (unless it was counted
/// in `counter::CLOSE_NOTES_LOST`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloseNote {
    pub cookie: u64,
    /// The map key the entry had (equal to `cookie` unless [`mode::KEY_BY_ADDR`]).
    pub key: u64,
    pub ts_ns: u64,
    pub reason: u32,
    /// TCP state it moved to.
    pub new_state: u32,
}

/// One socket with send data outstanding (`write_seq != snd_una`), as the `iter/tcp` scan
/// program (`monitor-ebpf/src/scan.rs`) writes it to its seq_file, one fixed-size record per
/// socket. Only the benchmark loads that program (the tick-time scan design of issue 14); the
/// agent never does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanRecord {
    /// The socket's kernel address (its identity for the life of the socket).
    pub sk: u64,
    /// Local address: IPv4 in the first 4 bytes, or IPv6 (network byte order).
    pub laddr: [u8; 16],
    /// Remote address, same layout as `laddr`.
    pub raddr: [u8; 16],
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Local port, host byte order.
    pub lport: u16,
    /// Remote port, host byte order.
    pub rport: u16,
    /// TCP state (`skc_state`).
    pub state: u8,
    /// `icsk_backoff`: RTO / persist-timer backoff (rises while retransmits or zero-window
    /// probes go unanswered).
    pub backoff: u8,
    pub write_seq: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    /// Peer's advertised window (bytes, scaled); 0 = the peer is not reading.
    pub snd_wnd: u32,
}

impl ScanRecord {
    /// Size of one record on the wire.
    pub const SIZE: usize = core::mem::size_of::<ScanRecord>();
}

/// One open file of a process that is a socket the agent looks for the holder of: the task
/// file iterator (`monitor-ebpf/src/holders.rs`) writes one per match to its seq_file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HolderRecord {
    /// The socket's inode number (`socket:[N]`).
    pub ino: u64,
    /// The holding process (thread-group id, in the pid namespace the iterator walks).
    pub tgid: u32,
    /// The file descriptor it holds the socket through.
    pub fd: u32,
}

impl HolderRecord {
    /// Size of one record on the wire.
    pub const SIZE: usize = core::mem::size_of::<HolderRecord>();
}

/// Socket inodes one holder pass looks for at most (the size of `HOLDER_WANT`).
pub const MAX_HOLDER_WANT: u32 = 4096;

/// Kernel structure field offsets, read from the running kernel's BTF at start-up and handed
/// to the programs as the global `OFFSETS`. `magic` must equal [`Offsets::MAGIC`] or every
/// program does nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub magic: u32,
    /// [`mode`] bits.
    pub mode: u32,
    /// `struct sock_common` -> `skc_cookie` (atomic64).
    pub skc_cookie: u32,
    /// `struct sock` -> `sk_socket` (NULL once the application closed the socket).
    pub sk_socket: u32,
    // struct sock_common (via struct sock)
    pub skc_family: u32,
    /// `skc_state` (u8): the TCP state; only sockets that can wedge are tracked.
    pub skc_state: u32,
    /// `skc_bound_dev_if` (int): the bound interface index, 0 if none.
    pub skc_bound_dev_if: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// Offset of the `struct net *` inside `skc_net` (possible_net_t).
    pub skc_net: u32,
    /// `struct net` -> `ns.inum`.
    pub net_ns_inum: u32,
    // struct sock
    pub sk_wmem_queued: u32,
    pub sk_sndbuf: u32,
    pub sk_rcvbuf: u32,
    /// `struct sock` -> `sk_protocol` (u16 since Linux 5.6): kprobes check it is
    /// IPPROTO_TCP, as they cannot use `bpf_skc_to_tcp_sock`.
    pub sk_protocol: u32,
    // struct inet_connection_sock
    pub icsk_backoff: u32,
    // struct tcp_sock
    pub write_seq: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub snd_wnd: u32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub rcv_wnd: u32,
    // struct sk_buff
    pub skb_data: u32,
    /// `struct socket_alloc` -> `vfs_inode.i_ino`: from a `struct socket *` (the first member
    /// of `socket_alloc`) to its inode number.
    pub socket_ino: u32,
    /// `struct file` -> `f_inode` (the holder iterator: which files are sockets, and which).
    pub file_f_inode: u32,
    /// `struct inode` -> `i_mode` (u16; `S_IFSOCK` for a socket).
    pub inode_i_mode: u32,
    /// `struct inode` -> `i_ino`.
    pub inode_i_ino: u32,
    /// `struct task_struct` -> `tgid`.
    pub task_tgid: u32,
}

impl Offsets {
    pub const MAGIC: u32 = 0x7c95_7a11;
    pub const fn zeroed() -> Self {
        Offsets {
            magic: 0,
            mode: 0,
            skc_cookie: 0,
            sk_socket: 0,
            skc_family: 0,
            skc_state: 0,
            skc_bound_dev_if: 0,
            skc_num: 0,
            skc_dport: 0,
            skc_rcv_saddr: 0,
            skc_daddr: 0,
            skc_v6_rcv_saddr: 0,
            skc_v6_daddr: 0,
            skc_net: 0,
            net_ns_inum: 0,
            sk_wmem_queued: 0,
            sk_sndbuf: 0,
            sk_rcvbuf: 0,
            sk_protocol: 0,
            icsk_backoff: 0,
            write_seq: 0,
            snd_una: 0,
            snd_nxt: 0,
            snd_wnd: 0,
            rcv_nxt: 0,
            copied_seq: 0,
            rcv_wnd: 0,
            skb_data: 0,
            socket_ino: 0,
            file_f_inode: 0,
            inode_i_mode: 0,
            inode_i_ino: 0,
            task_tgid: 0,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding-dependent invariants.
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::CloseNote {}
    unsafe impl aya::Pod for super::ScanRecord {}
    unsafe impl aya::Pod for super::HolderRecord {}
}
