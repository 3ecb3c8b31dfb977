//! The action stage: reset one TCP connection with netlink `sock_diag` `SOCK_DESTROY`
//! (what `ss -K` does), and look one socket up exactly (`SOCK_DIAG_BY_FAMILY` with
//! `INET_DIAG_INFO`) so the agent can re-verify a socket right before resetting it.
//!
//! A socket is named by its 4-tuple **and** its socket cookie. The kernel first finds the
//! socket by 4-tuple and then compares the cookie (`sock_diag_check_cookie`). That function
//! returns `-ESTALE` on a mismatch, but `inet_diag_find_one_icsk` turns every failure of the
//! cookie check into `-ENOENT`, so a cookie mismatch (a 4-tuple reused by a newer connection)
//! reaches userspace as `ENOENT`, exactly like "no such socket" — checked on Linux 6.18 by
//! the test `tests::wrong_cookie_does_not_kill`. Either way the wrong socket is never reset.
//!
//! The request must come from a `NETLINK_SOCK_DIAG` socket that lives in the target socket's
//! own network namespace. [`Destroyer`] resolves the namespace inode to an open namespace
//! file, enters it with `setns(CLONE_NEWNET)` on a short-lived helper thread (`setns` only
//! affects the calling thread), opens the netlink socket there and keeps it: a socket stays
//! bound to the namespace it was created in after the thread exits.
//!
//! IPv4-mapped IPv6 sockets (an `AF_INET6` socket talking to an IPv4 peer): the kernel looks
//! them up in the IPv4 tables. An `AF_INET6` request whose two addresses are both
//! `::ffff:a.b.c.d` is turned into that IPv4 lookup by the kernel; requests are sent in that
//! form first and, on `ENOENT`, once more as plain `AF_INET` (older kernels).
//!
//! Device-bound sockets (`SO_BINDTODEVICE`, a VRF, IPv6 link-local connections, which the
//! kernel binds to the scope's interface): the kernel's exact lookup matches a bound socket
//! only when the request's `idiag_if` names that interface (an unbound socket matches any
//! value). Every request carries [`Target::ifindex`]; with 0 a bound socket is not found
//! (`ENOENT`), checked on Linux 6.18 by `kernel_tests::bound_sockets_need_their_ifindex`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[cfg(test)]
pub(crate) mod kernel_tests;
mod modules;
mod orphan;

pub use modules::{ensure_diag_modules, DIAG_MODULES};
pub use orphan::{orphan_probe, OrphanReport};

/// Netlink message type of an exact socket lookup / dump (`linux/sock_diag.h`).
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Netlink message type that destroys (aborts) one socket (`linux/sock_diag.h`).
pub const SOCK_DESTROY: u16 = 21;
/// `getsockopt(SOL_SOCKET, SO_COOKIE)`: the 64-bit socket cookie.
pub const SO_COOKIE: libc::c_int = 57;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;

/// `sizeof(struct inet_diag_sockid)`.
const SOCKID_LEN: usize = 48;
/// `sizeof(struct inet_diag_req_v2)`.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// `sizeof(struct inet_diag_msg)`.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// `INET_DIAG_INFO` attribute type: payload is `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;
/// Both cookie words set to this value means "do not check the cookie".
const INET_DIAG_NOCOOKIE: u32 = !0;
/// All TCP states (the kernel ignores the mask for exact requests, but be explicit).
const ALL_STATES: u32 = 0xffff_ffff;
/// Mask off `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` from an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// How long to wait for the kernel's answer. The kernel handles sock_diag requests
/// synchronously inside `sendmsg`, so the reply is normally queued before `send` returns.
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// SOCK_DESTROY requests packed into one netlink datagram by [`Destroyer::destroy_many`].
pub const DESTROY_BATCH: usize = 64;
/// Receive buffer: an exact lookup reply is well under 1 KiB.
const RECV_BUF_LEN: usize = 16 * 1024;
/// At most this many namespaces keep a cached netlink socket (least recently used evicted).
const MAX_CACHED_NETNS: usize = 256;
/// A namespace's cached netlink socket unused this long is closed by
/// [`Destroyer::release_idle`] (the socket keeps its namespace alive).
pub const NETNS_IDLE_LIMIT: Duration = Duration::from_secs(60);

/// One socket to reset or inspect.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Socket cookie (`SO_COOKIE`, `bpf_get_socket_cookie`). Never 0 for a real socket.
    pub cookie: u64,
    /// Inode of the socket's network namespace (`stat -L /proc/PID/ns/net`); 0 means the
    /// namespace of the calling thread.
    pub netns: u32,
    /// Socket family: 2 (`AF_INET`) or 10 (`AF_INET6`, including IPv4-mapped).
    pub family: u16,
    /// Local address and port of the socket.
    pub local: SocketAddr,
    /// Peer address and port of the socket.
    pub remote: SocketAddr,
    /// A process believed to be in the namespace (speeds up namespace resolution).
    pub pid_hint: Option<u32>,
    /// Interface the socket is bound to (`sk_bound_dev_if`, [`TcpDiag::ifindex`] of a dump),
    /// in the socket's namespace; 0 = not bound. Sent as `inet_diag_sockid.idiag_if`.
    pub ifindex: u32,
}

/// Why a reset or lookup failed: the errno, what it means for the operator, and where.
#[derive(Clone, Debug)]
pub struct ResetError {
    /// Positive errno value.
    pub errno: i32,
    /// What happened and what to do about it.
    pub meaning: String,
    /// `"netns"` (resolving/entering the namespace), `"socket"` (opening the netlink socket),
    /// `"send"` (building/sending the request, including invalid targets) or `"reply"`
    /// (the kernel's answer, or no answer).
    pub stage: &'static str,
}

impl ResetError {
    /// Whether retrying the same socket later can succeed: the failure was about resources or
    /// time, not about the socket or the permissions. True for `ENOBUFS`, `EAGAIN` /
    /// `EWOULDBLOCK`, `ETIMEDOUT` (including no answer within the reply timeout), `EMFILE`,
    /// `ENFILE`, `ENOMEM`, `EINTR` and `EBUSY`; false for everything else (`ENOENT`, `EPERM`,
    /// `EOPNOTSUPP`, `EINVAL`, ...).
    pub fn is_transient(&self) -> bool {
        is_transient_errno(self.errno)
    }

    fn new(stage: &'static str, errno: i32, meaning: impl Into<String>) -> ResetError {
        ResetError {
            errno,
            meaning: meaning.into(),
            stage,
        }
    }
}

/// The errno classification behind [`ResetError::is_transient`].
pub fn is_transient_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOBUFS
            | libc::EAGAIN
            | libc::ETIMEDOUT
            | libc::EMFILE
            | libc::ENFILE
            | libc::ENOMEM
            | libc::EINTR
            | libc::EBUSY
    ) || errno == libc::EWOULDBLOCK
}

impl fmt::Display for ResetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.stage {
            "netns" => "entering the socket's network namespace",
            "socket" => "opening a NETLINK_SOCK_DIAG socket",
            "send" => "sending the sock_diag request",
            "reply" => "sock_diag request",
            other => other,
        };
        write!(
            f,
            "{what} failed with {} (errno {}): {}",
            errno_name(self.errno),
            self.errno,
            self.meaning
        )
    }
}

impl std::error::Error for ResetError {}

/// One socket as the kernel reports it: `struct inet_diag_msg` plus `struct tcp_info`.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpDiag {
    /// Family of the socket itself (10 for IPv4-mapped IPv6 sockets).
    pub family: u16,
    /// TCP state (`TCP_ESTABLISHED` = 1, ... see [`TcpDiag::state_name`]).
    pub state: u8,
    /// Socket cookie.
    pub cookie: u64,
    /// Local address as the kernel reports it.
    pub local: SocketAddr,
    /// Peer address as the kernel reports it.
    pub remote: SocketAddr,
    /// Interface the socket is bound to (0: none).
    pub ifindex: u32,
    /// Owner uid.
    pub uid: u32,
    /// Socket inode (as in `/proc/PID/fd` links `socket:[N]`).
    pub inode: u32,
    /// Pending timer: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe.
    pub timer: u8,
    /// Retransmits (timer 1) or unanswered probes (timers 2, 4) of that timer.
    pub timer_retrans: u8,
    /// Milliseconds until the timer fires.
    pub timer_expires_ms: u32,
    /// Receive queue: bytes received, not read by the application.
    pub recv_q: u32,
    /// Send queue: bytes written by the application, not acked (write_seq - snd_una).
    pub send_q: u32,
    /// Length of the `tcp_info` the kernel returned; 0 if none (e.g. TIME_WAIT).
    /// Fields beyond it read as 0 (see [`TcpDiag::has_snd_wnd`]).
    pub tcp_info_len: usize,
    /// Congestion-avoidance state (`tcpi_ca_state`).
    pub ca_state: u8,
    /// Consecutive retransmits of the current RTO (`tcpi_retransmits`).
    pub retransmits: u8,
    /// Unanswered zero-window / keepalive probes (`tcpi_probes`).
    pub probes: u8,
    /// Exponential backoff of the retransmit / probe timer (`tcpi_backoff`).
    pub backoff: u8,
    /// Retransmission timeout, microseconds.
    pub rto_us: u32,
    /// Send MSS.
    pub snd_mss: u32,
    /// Segments sent and not acked.
    pub unacked: u32,
    /// Segments considered lost.
    pub lost: u32,
    /// Segments currently retransmitted and not acked.
    pub retrans: u32,
    /// Milliseconds since data was last sent.
    pub last_data_sent_ms: u32,
    /// Milliseconds since an ACK was last received.
    pub last_ack_recv_ms: u32,
    /// Smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Retransmitted segments over the connection's life.
    pub total_retrans: u32,
    /// Bytes acked by the peer (`tcpi_bytes_acked`; counts the SYN of the side that sent it).
    pub bytes_acked: u64,
    /// Bytes received in order (`tcpi_bytes_received`).
    pub bytes_received: u64,
    /// Bytes sent including retransmissions (`tcpi_bytes_sent`).
    pub bytes_sent: u64,
    /// Bytes retransmitted (`tcpi_bytes_retrans`).
    pub bytes_retrans: u64,
    /// Bytes written by the application and not yet sent (`tcpi_notsent_bytes`).
    pub notsent_bytes: u32,
    /// Peer's advertised receive window after scaling (`tcpi_snd_wnd`, Linux >= 6.2;
    /// 0 on older kernels, check [`TcpDiag::has_snd_wnd`]).
    pub snd_wnd: u32,
}

// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h; stable ABI, append-only).
const TI_CA_STATE: usize = 1;
const TI_RETRANSMITS: usize = 2;
const TI_PROBES: usize = 3;
const TI_BACKOFF: usize = 4;
const TI_RTO: usize = 8;
const TI_SND_MSS: usize = 16;
const TI_UNACKED: usize = 24;
const TI_LOST: usize = 32;
const TI_RETRANS: usize = 36;
const TI_LAST_DATA_SENT: usize = 44;
const TI_LAST_ACK_RECV: usize = 56;
const TI_RTT: usize = 68;
const TI_SND_CWND: usize = 80;
const TI_TOTAL_RETRANS: usize = 100;
const TI_BYTES_ACKED: usize = 120;
const TI_BYTES_RECEIVED: usize = 128;
const TI_NOTSENT_BYTES: usize = 144;
const TI_BYTES_SENT: usize = 200;
const TI_BYTES_RETRANS: usize = 208;
const TI_SND_WND: usize = 228;

impl TcpDiag {
    /// Whether the kernel's `tcp_info` is new enough to carry `tcpi_snd_wnd`.
    pub fn has_snd_wnd(&self) -> bool {
        self.tcp_info_len >= TI_SND_WND + 4
    }

    /// Name of [`TcpDiag::state`] as `ss` prints it.
    pub fn state_name(&self) -> &'static str {
        tcp_state_name(self.state)
    }
}

/// Name of a kernel TCP state number as `ss` prints it.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "UNCONN",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW-SYN-RECV",
        13 => "BOUND-INACTIVE",
        _ => "UNKNOWN",
    }
}

/// Result of the start-up self-test ([`self_probe`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// True if SOCK_DESTROY aborted our own test socket and honoured the cookie check.
    pub works: bool,
    /// One line for the operator, e.g. `SOCK_DESTROY ok (ECONNABORTED after 0.4 ms)`.
    pub detail: String,
    /// The errno behind a failure, if there was one.
    pub errno: Option<i32>,
    /// Time from the destroy request to the socket reporting `ECONNABORTED`.
    pub abort_latency: Option<Duration>,
}

struct CachedSock {
    fd: OwnedFd,
    last_used: Instant,
}

/// Sends SOCK_DESTROY / exact lookups, holding one netlink socket per network namespace.
///
/// A cached socket keeps its namespace alive (the kernel frees a namespace only when nothing
/// refers to it any more), so a socket unused for the idle limit ([`NETNS_IDLE_LIMIT`], 60 s;
/// see [`Destroyer::with_idle_limit`]) is closed by the next [`Destroyer::release_idle`] —
/// every request calls it, and the agent calls it every tick. At most 256 namespaces are
/// cached; [`Destroyer::forget_netns`] / [`Destroyer::prune_idle`] let the caller drop
/// namespaces it no longer sees.
pub struct Destroyer {
    socks: HashMap<u64, CachedSock>,
    seq: u32,
    idle_limit: Duration,
    /// No cached socket reaches the idle limit before this instant (`None`: none ever will,
    /// e.g. the cache is empty).
    next_release: Option<Instant>,
    /// Cache scans done by `release_idle` (calls with nothing due do not scan).
    sweeps: u64,
    /// Lookups `lookup_many` redid one by one because their batch lost its replies.
    batch_fallbacks: u64,
    buf: Vec<u8>,
}

impl Default for Destroyer {
    fn default() -> Self {
        Destroyer::new()
    }
}

/// How one batched request turned out, before the operation interprets it.
enum Sent {
    /// The kernel's answer.
    Reply(Reply),
    /// Never sent (no socket for the namespace, sending failed twice, or the kernel stopped
    /// answering earlier requests of the same call): the kernel did not act on it.
    Unsent(ResetError),
    /// Sent, but no answer arrived (timeout, receive error): it may have acted.
    Lost(ResetError),
}

/// What one reply means for the target.
enum Step<R> {
    /// The final result.
    Done(R),
    /// Not found with this encoding: try the target's next one (IPv4-mapped sockets).
    Next,
}

/// `INET_DIAG_INFO` requested: the reply carries `struct tcp_info`.
const INFO_EXT: u8 = 1 << (INET_DIAG_INFO - 1);

fn has_cookie(t: &Target) -> bool {
    t.cookie != 0 && t.cookie != u64::MAX
}

/// The meaning of the kernel's answer to SOCK_DESTROY; `more`: another encoding is left.
fn destroy_step(t: &Target, reply: Reply, more: bool) -> Step<Result<(), ResetError>> {
    match reply {
        Reply::Ack(0) => Step::Done(Ok(())),
        Reply::Ack(errno) if errno == libc::ENOENT && more => Step::Next,
        Reply::Ack(errno) => Step::Done(Err(kernel_error(errno, t))),
        Reply::Diag(_) => Step::Done(Err(ResetError::new(
            "reply",
            libc::EPROTO,
            "the kernel answered SOCK_DESTROY with socket data instead of an \
             acknowledgement; the socket may or may not have been reset (unexpected kernel \
             behaviour, please report)",
        ))),
    }
}

/// The meaning of the kernel's answer to an exact lookup; `more`: another encoding is left.
fn lookup_step(t: &Target, reply: Reply, more: bool) -> Step<Result<Option<TcpDiag>, ResetError>> {
    match reply {
        Reply::Diag(d) if has_cookie(t) && d.cookie != t.cookie => {
            Step::Done(Err(ResetError::new(
                "reply",
                libc::EPROTO,
                format!(
                    "the kernel returned socket cookie {:#x} for a lookup of cookie {:#x}; \
                     ignoring the answer (unexpected kernel behaviour, please report)",
                    d.cookie, t.cookie
                ),
            )))
        }
        Reply::Diag(d) => Step::Done(Ok(Some(*d))),
        Reply::Ack(errno) if errno == libc::ENOENT => {
            if more {
                Step::Next
            } else {
                Step::Done(Ok(None))
            }
        }
        Reply::Ack(0) => Step::Done(Err(ResetError::new(
            "reply",
            libc::EPROTO,
            "the kernel acknowledged the lookup without sending the socket (unexpected \
             kernel behaviour, please report)",
        ))),
        Reply::Ack(errno) => Step::Done(Err(kernel_error(errno, t))),
    }
}

impl Destroyer {
    /// An empty destroyer; sockets are opened on first use per namespace.
    pub fn new() -> Destroyer {
        Destroyer {
            socks: HashMap::new(),
            seq: 0,
            idle_limit: NETNS_IDLE_LIMIT,
            next_release: None,
            sweeps: 0,
            batch_fallbacks: 0,
            buf: vec![0; RECV_BUF_LEN],
        }
    }

    /// The same destroyer, closing a namespace's cached socket after `limit` without use
    /// instead of [`NETNS_IDLE_LIMIT`] (a knob for tests; shorter limits mean more
    /// `setns` round trips, longer ones keep dead namespaces allocated longer).
    pub fn with_idle_limit(mut self, limit: Duration) -> Destroyer {
        self.idle_limit = limit;
        self.next_release = self
            .socks
            .values()
            .filter_map(|c| c.last_used.checked_add(limit))
            .min();
        self
    }

    /// How long a namespace's cached socket may stay unused before it is closed.
    pub fn idle_limit(&self) -> Duration {
        self.idle_limit
    }

    /// Abort the socket named by `t` (the kernel sends a RST to the peer and fails pending
    /// and future calls on the socket with `ECONNABORTED`). Refuses targets without a cookie.
    /// `Err` with errno `ENOENT` means the socket is gone or the 4-tuple now belongs to
    /// another connection; nothing was reset.
    pub fn destroy(&mut self, t: &Target) -> Result<(), ResetError> {
        if !has_cookie(t) {
            return Err(ResetError::new(
                "send",
                libc::EINVAL,
                format!(
                    "refusing to destroy {} -> {} without a socket cookie (cookie {:#x}): \
                     the 4-tuple alone could name a newer connection; pass the cookie from \
                     SO_COOKIE / bpf_get_socket_cookie",
                    t.local, t.remote, t.cookie
                ),
            ));
        }
        let ids = wire_ids(t)?;
        for (k, id) in ids.iter().enumerate() {
            let reply = self.transact(t, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, id, 0)?;
            if let Step::Done(r) = destroy_step(t, reply, k + 1 < ids.len()) {
                return r;
            }
        }
        Err(kernel_error(libc::ENOENT, t))
    }

    /// Destroy many sockets with few system calls — the mass-disconnect case (thousands of
    /// wedges at once). Requests for the same network namespace are packed into netlink
    /// datagrams of [`DESTROY_BATCH`] messages; the kernel handles every message of a datagram
    /// in one `sendto`, then the acknowledgements are read back. Each target gets the same
    /// checks and the same result as [`Destroyer::destroy`]; results come back in order. A
    /// request whose acknowledgement was lost is reported, never resent (it may have acted).
    pub fn destroy_many(&mut self, targets: &[Target]) -> Vec<Result<(), ResetError>> {
        self.run_batched(
            targets,
            (SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 0),
            false,
            has_cookie,
            destroy_step,
            |d, t| d.destroy(t),
        )
    }

    /// Look the socket named by `t` up exactly and return its diag and `tcp_info`.
    /// `Ok(None)`: no socket with this 4-tuple and cookie (cookie 0 matches any cookie).
    pub fn lookup(&mut self, t: &Target) -> Result<Option<TcpDiag>, ResetError> {
        let ids = wire_ids(t)?;
        for (k, id) in ids.iter().enumerate() {
            let reply = self.transact(t, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, id, INFO_EXT)?;
            if let Step::Done(r) = lookup_step(t, reply, k + 1 < ids.len()) {
                return r;
            }
        }
        Ok(None)
    }

    /// [`Destroyer::lookup`] for many sockets with few system calls (re-verifying a whole
    /// tick's worth of reset candidates): exact requests for the same namespace are packed
    /// into datagrams of [`DESTROY_BATCH`] messages like [`Destroyer::destroy_many`]. Each
    /// target gets the same result as `lookup` (the cookie must match; IPv4-mapped sockets get
    /// their second encoding); results come back in order. Lookups only read, so a batch
    /// whose replies were lost (e.g. `ENOBUFS`) is redone one by one; a kernel that does not
    /// answer at all fails the namespace's remaining targets with `ETIMEDOUT` after
    /// 500 ms instead of waiting that long per target.
    pub fn lookup_many(&mut self, targets: &[Target]) -> Vec<Result<Option<TcpDiag>, ResetError>> {
        self.run_batched(
            targets,
            (SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, INFO_EXT),
            true,
            |_| true,
            lookup_step,
            |d, t| d.lookup(t),
        )
    }

    /// The batched form of a per-target operation. Targets `batchable` rejects, and those
    /// without a valid encoding, take `single` (which fails them without I/O); the rest are
    /// grouped by namespace and sent with [`Destroyer::exchange`], first encoding first;
    /// `step` reads each reply. With `redo_lost`, requests whose reply was lost (other than
    /// by a timeout) are redone with `single`.
    fn run_batched<X>(
        &mut self,
        targets: &[Target],
        op: (u16, u16, u8),
        redo_lost: bool,
        batchable: impl Fn(&Target) -> bool,
        step: impl Fn(&Target, Reply, bool) -> Step<Result<X, ResetError>>,
        single: impl Fn(&mut Destroyer, &Target) -> Result<X, ResetError>,
    ) -> Vec<Result<X, ResetError>> {
        let mut results: Vec<Option<Result<X, ResetError>>> =
            targets.iter().map(|_| None).collect();
        let mut ids: Vec<Vec<WireId>> = Vec::with_capacity(targets.len());
        let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut one_by_one = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            match wire_ids(t) {
                Ok(enc) if batchable(t) && !enc.is_empty() => match netns_key(t.netns) {
                    Ok(key) => {
                        groups.entry(key).or_default().push(i);
                        ids.push(enc);
                        continue;
                    }
                    Err(e) => results[i] = Some(Err(e)),
                },
                _ => one_by_one.push(i),
            }
            ids.push(Vec::new());
        }
        let mut level = 0;
        while !groups.is_empty() {
            let mut next: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for (key, members) in std::mem::take(&mut groups) {
                let reqs: Vec<WireId> = members.iter().map(|&i| ids[i][level]).collect();
                let pid_hint = members.iter().find_map(|&i| targets[i].pid_hint);
                let sent = self.exchange(key, pid_hint, op, &reqs);
                for (&i, outcome) in members.iter().zip(sent) {
                    let t = &targets[i];
                    match outcome {
                        Sent::Reply(reply) => match step(t, reply, level + 1 < ids[i].len()) {
                            Step::Done(r) => results[i] = Some(r),
                            Step::Next => next.entry(key).or_default().push(i),
                        },
                        Sent::Lost(e) if redo_lost && e.errno != libc::ETIMEDOUT => {
                            self.batch_fallbacks += 1;
                            one_by_one.push(i);
                        }
                        Sent::Unsent(e) | Sent::Lost(e) => results[i] = Some(Err(e)),
                    }
                }
            }
            groups = next;
            level += 1;
        }
        for i in one_by_one {
            results[i] = Some(single(self, &targets[i]));
        }
        results
            .into_iter()
            .map(|r| r.expect("every target gets a result"))
            .collect()
    }

    /// Send one request per entry of `reqs`, all for namespace `key`, in datagrams of
    /// [`DESTROY_BATCH`] messages (the kernel handles every message of a datagram within one
    /// `sendto`; a datagram is taken whole or not at all) and match the answers by sequence
    /// number. A failed send is retried once on a fresh socket. After a chunk's replies are
    /// lost, the socket is replaced; after a timeout the rest is not sent.
    fn exchange(
        &mut self,
        key: u64,
        pid_hint: Option<u32>,
        (msg_type, flags, ext): (u16, u16, u8),
        reqs: &[WireId],
    ) -> Vec<Sent> {
        let mut out: Vec<Option<Sent>> = reqs.iter().map(|_| None).collect();
        for (c, chunk) in reqs.chunks(DESTROY_BATCH).enumerate() {
            let base = c * DESTROY_BATCH;
            let mut msg = Vec::with_capacity(chunk.len() * (NLMSG_HDRLEN + REQ_V2_LEN));
            let mut pending: HashMap<u32, usize> = HashMap::with_capacity(chunk.len());
            for (j, id) in chunk.iter().enumerate() {
                self.seq = self.seq.wrapping_add(1).max(1);
                msg.extend_from_slice(&encode_request(msg_type, flags, self.seq, id, ext));
                pending.insert(self.seq, base + j);
            }
            let mut sent_on = None;
            for attempt in 1..=2 {
                let fd = match self.socket_for(key, pid_hint) {
                    Ok(fd) => fd,
                    Err(e) => {
                        for slot in &mut out[base..] {
                            *slot = Some(Sent::Unsent(e.clone()));
                        }
                        return finish(out);
                    }
                };
                match send_request(fd, &msg) {
                    Ok(()) => {
                        sent_on = Some(fd);
                        break;
                    }
                    Err(e) => {
                        self.socks.remove(&key);
                        if attempt == 2 {
                            for slot in &mut out[base..base + chunk.len()] {
                                *slot = Some(Sent::Unsent(e.clone()));
                            }
                        }
                    }
                }
            }
            let Some(fd) = sent_on else { continue };
            let deadline = Instant::now() + REPLY_TIMEOUT;
            while !pending.is_empty() {
                match recv_datagram(fd, &mut self.buf, deadline) {
                    Ok(n) => {
                        let parsed = for_each_reply(&self.buf[..n], |seq, reply| {
                            if let Some(i) = pending.remove(&seq) {
                                out[i] = Some(Sent::Reply(reply));
                            }
                        });
                        if let Err(e) = parsed {
                            log::warn!("sock_diag batch: {e}");
                        }
                    }
                    Err(e) => {
                        self.socks.remove(&key);
                        for (_, i) in pending.drain() {
                            out[i] = Some(Sent::Lost(e.clone()));
                        }
                        if e.errno == libc::ETIMEDOUT {
                            for slot in &mut out[base + chunk.len()..] {
                                *slot = Some(Sent::Unsent(e.clone()));
                            }
                            return finish(out);
                        }
                    }
                }
            }
            self.touch(key);
        }
        return finish(out);

        fn finish(out: Vec<Option<Sent>>) -> Vec<Sent> {
            out.into_iter()
                .map(|s| s.expect("every request gets an outcome"))
                .collect()
        }
    }

    /// Close the cached socket of one namespace (e.g. the container is gone).
    pub fn forget_netns(&mut self, netns: u32) {
        self.socks.remove(&u64::from(netns));
    }

    /// Close cached sockets unused for longer than `max_idle`; returns how many were closed.
    pub fn prune_idle(&mut self, max_idle: Duration) -> usize {
        let before = self.socks.len();
        self.socks.retain(|_, c| c.last_used.elapsed() <= max_idle);
        before - self.socks.len()
    }

    /// Close the cached sockets unused for the idle limit, so the namespaces only they kept
    /// alive (containers that are gone) are freed; returns how many were closed. Cheap enough
    /// for every tick: it compares the clock with the earliest instant an entry can reach the
    /// limit and scans the cache only from then on.
    pub fn release_idle(&mut self) -> usize {
        let now = Instant::now();
        match self.next_release {
            Some(due) if now >= due => {}
            _ => return 0,
        }
        self.sweeps += 1;
        let limit = self.idle_limit;
        let before = self.socks.len();
        self.socks
            .retain(|_, c| now.saturating_duration_since(c.last_used) < limit);
        self.next_release = self
            .socks
            .values()
            .filter_map(|c| c.last_used.checked_add(limit))
            .min();
        before - self.socks.len()
    }

    /// Number of namespaces with a cached netlink socket.
    pub fn cached_netns(&self) -> usize {
        self.socks.len()
    }

    /// Send one request and wait for its reply. Errors returned here are failures of our
    /// own netlink socket (the kernel's verdict arrives as `Reply::Ack(errno)`); the socket
    /// is then dropped from the cache. A failed send is retried once on a fresh socket (the
    /// kernel never saw it); a failed receive is not (a destroy may already have happened).
    fn transact(
        &mut self,
        t: &Target,
        msg_type: u16,
        flags: u16,
        id: &WireId,
        ext: u8,
    ) -> Result<Reply, ResetError> {
        let key = netns_key(t.netns)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let fd = self.socket_for(key, t.pid_hint)?;
            self.seq = self.seq.wrapping_add(1).max(1);
            let seq = self.seq;
            let msg = encode_request(msg_type, flags, seq, id, ext);
            if let Err(e) = send_request(fd, &msg) {
                self.socks.remove(&key);
                if attempt >= 2 {
                    return Err(e);
                }
                continue;
            }
            return match recv_reply(fd, seq, &mut self.buf) {
                Ok(reply) => {
                    self.touch(key);
                    Ok(reply)
                }
                Err(e) => {
                    self.socks.remove(&key);
                    Err(e)
                }
            };
        }
    }

    fn touch(&mut self, key: u64) {
        if let Some(c) = self.socks.get_mut(&key) {
            c.last_used = Instant::now();
        }
    }

    fn socket_for(&mut self, key: u64, pid_hint: Option<u32>) -> Result<RawFd, ResetError> {
        self.release_idle();
        if let Some(c) = self.socks.get(&key) {
            return Ok(c.fd.as_raw_fd());
        }
        let fd = open_diag_socket_in(key, pid_hint)?;
        Ok(self.cache_insert(key, fd))
    }

    /// Cache `fd` as namespace `key`'s socket, evicting the least recently used one when full.
    fn cache_insert(&mut self, key: u64, fd: OwnedFd) -> RawFd {
        if self.socks.len() >= MAX_CACHED_NETNS {
            if let Some(oldest) = self
                .socks
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| *k)
            {
                self.socks.remove(&oldest);
            }
        }
        let now = Instant::now();
        let raw = fd.as_raw_fd();
        self.socks.insert(key, CachedSock { fd, last_used: now });
        if let Some(due) = now.checked_add(self.idle_limit) {
            self.next_release = Some(self.next_release.map_or(due, |d| d.min(due)));
        }
        raw
    }
}

fn kernel_error(errno: i32, t: &Target) -> ResetError {
    ResetError::new(
        "reply",
        errno,
        format!(
            "{} (socket {} -> {}, cookie {:#x}, netns {})",
            errno_meaning(errno),
            t.local,
            t.remote,
            t.cookie,
            t.netns
        ),
    )
}

/// Map an errno from a sock_diag request (SOCK_DESTROY or lookup) to a meaning an operator
/// can act on.
pub fn errno_meaning(errno: i32) -> String {
    match errno {
        0 => "success".to_string(),
        libc::ENOENT => "no socket with this 4-tuple and cookie in that network namespace: \
            the connection already closed, or its 4-tuple now belongs to a newer connection \
            (the kernel reports a cookie mismatch as ENOENT). Nothing was reset; nothing to do. \
            If the socket surely exists (e.g. a self-test's own socket), sock_diag has no TCP \
            handler: the tcp_diag (and inet_diag) kernel modules are not loaded; load them \
            with `modprobe tcp_diag`"
            .to_string(),
        libc::ESTALE => "the socket cookie does not match the socket now holding this \
            4-tuple (the 4-tuple was reused by a newer connection). Nothing was reset; \
            re-read the socket before acting again"
            .to_string(),
        libc::EPERM | libc::EACCES => "not permitted: SOCK_DESTROY needs CAP_NET_ADMIN in \
            the user namespace owning the socket's network namespace (entering another \
            namespace also needs CAP_SYS_ADMIN). Run the agent as root or grant those \
            capabilities; until then run observe-only"
            .to_string(),
        libc::EOPNOTSUPP => "the kernel cannot destroy sockets: it was built without \
            CONFIG_INET_DIAG_DESTROY (or this protocol has no destroy support). Resets are \
            impossible on this kernel; run observe-only or use a kernel with \
            CONFIG_INET_DIAG_DESTROY=y. This is a build option, not a missing module: loading \
            tcp_diag / inet_diag does not add it (check `grep INET_DIAG_DESTROY \
            /boot/config-$(uname -r)`)"
            .to_string(),
        libc::EINVAL => "the kernel rejected the request as malformed (bad address family or \
            request length). This is a tcpstall bug; please report it with the target socket"
            .to_string(),
        libc::EAFNOSUPPORT => "address family not supported by sock_diag on this kernel \
            (IPv6 disabled at build time?); sockets of this family cannot be reset"
            .to_string(),
        libc::EPROTONOSUPPORT => "NETLINK_SOCK_DIAG is not available: kernel without \
            CONFIG_INET_DIAG / CONFIG_INET_TCP_DIAG, or their modules are not loaded \
            (`modprobe tcp_diag`). Until then run observe-only"
            .to_string(),
        libc::ECONNREFUSED => "no sock_diag handler in the kernel answered (netlink \
            protocol not registered in that namespace); load the sock_diag, inet_diag and \
            tcp_diag modules"
            .to_string(),
        libc::EAGAIN | libc::ETIMEDOUT => "the kernel did not answer the netlink request in \
            time; retry on the next tick. If it persists the host is badly overloaded"
            .to_string(),
        libc::ENOBUFS | libc::ENOMEM => "the kernel ran out of memory or the netlink receive \
            buffer overflowed; transient, retry on the next tick"
            .to_string(),
        libc::EMFILE | libc::ENFILE => "out of file descriptors (per-process or system \
            limit); transient, retried later. If it persists close unused descriptors or \
            raise the limit"
            .to_string(),
        libc::EINTR => "interrupted by a signal; transient, retry".to_string(),
        libc::EBUSY => {
            "the kernel resource was busy; transient, retry on the next tick".to_string()
        }
        libc::EMSGSIZE => "the kernel's reply did not fit the receive buffer; this is a \
            tcpstall bug, please report it"
            .to_string(),
        libc::EPROTO => "malformed or unexpected reply from the kernel; tcpstall bug or an \
            unsupported kernel, please report it"
            .to_string(),
        other => format!(
            "unexpected error {} from sock_diag: {}; the socket was probably not reset",
            errno_name(other),
            io::Error::from_raw_os_error(other)
        ),
    }
}

/// Symbolic name of the errno values this module deals with (`"errno"` otherwise).
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ESTALE => "ESTALE",
        libc::EPIPE => "EPIPE",
        _ => "errno",
    }
}

// ---------------------------------------------------------------------------------------
// Wire format.

/// `struct inet_diag_sockid` plus the request family, in host form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WireId {
    family: u8,
    sport: u16,
    dport: u16,
    /// Address bytes in network order (IPv4 in the first 4 bytes).
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

impl WireId {
    /// Every socket of `family` (a dump request's id).
    fn any(family: u16) -> WireId {
        WireId {
            family: family as u8,
            sport: 0,
            dport: 0,
            src: [0; 16],
            dst: [0; 16],
            ifindex: 0,
            cookie: [INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE],
        }
    }
}

fn v4_of(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

fn v4_bytes(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

/// Split a cookie the way the kernel stores it: `cookie[0]` = low 32 bits. Cookie 0 (or
/// `u64::MAX`) means "any cookie".
fn cookie_words(cookie: u64) -> [u32; 2] {
    if cookie == 0 || cookie == u64::MAX {
        [INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE]
    } else {
        [cookie as u32, (cookie >> 32) as u32]
    }
}

/// The request encodings to try for a target, in order.
fn wire_ids(t: &Target) -> Result<Vec<WireId>, ResetError> {
    let cookie = cookie_words(t.cookie);
    let (sport, dport) = (t.local.port(), t.remote.port());
    let base = |family: u16, src: [u8; 16], dst: [u8; 16]| WireId {
        family: family as u8,
        sport,
        dport,
        src,
        dst,
        ifindex: t.ifindex,
        cookie,
    };
    let v4 = (v4_of(t.local.ip()), v4_of(t.remote.ip()));
    let bad = |why: &str| {
        ResetError::new(
            "send",
            libc::EINVAL,
            format!(
                "invalid target {} -> {} (family {}): {why}",
                t.local, t.remote, t.family
            ),
        )
    };
    match t.family {
        AF_INET => match v4 {
            (Some(l), Some(r)) => Ok(vec![base(AF_INET, v4_bytes(l), v4_bytes(r))]),
            _ => Err(bad(
                "an AF_INET socket needs IPv4 (or IPv4-mapped) addresses",
            )),
        },
        AF_INET6 => match (v4, t.local.ip(), t.remote.ip()) {
            ((Some(l), Some(r)), _, _) => Ok(vec![
                base(
                    AF_INET6,
                    l.to_ipv6_mapped().octets(),
                    r.to_ipv6_mapped().octets(),
                ),
                base(AF_INET, v4_bytes(l), v4_bytes(r)),
            ]),
            ((None, None), IpAddr::V6(l), IpAddr::V6(r)) => {
                Ok(vec![base(AF_INET6, l.octets(), r.octets())])
            }
            _ => Err(bad(
                "local and remote mix IPv4 and non-mapped IPv6 addresses",
            )),
        },
        _ => Err(ResetError::new(
            "send",
            libc::EAFNOSUPPORT,
            format!(
                "invalid target {} -> {}: family {} is neither AF_INET (2) nor AF_INET6 (10)",
                t.local, t.remote, t.family
            ),
        )),
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` for one exact request.
fn encode_request(msg_type: u16, flags: u16, seq: u32, id: &WireId, ext: u8) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_V2_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: kernel fills in
    m.push(id.family);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(ext);
    m.push(0); // pad
    m.extend_from_slice(&ALL_STATES.to_ne_bytes());
    m.extend_from_slice(&id.sport.to_be_bytes());
    m.extend_from_slice(&id.dport.to_be_bytes());
    m.extend_from_slice(&id.src);
    m.extend_from_slice(&id.dst);
    m.extend_from_slice(&id.ifindex.to_ne_bytes());
    m.extend_from_slice(&id.cookie[0].to_ne_bytes());
    m.extend_from_slice(&id.cookie[1].to_ne_bytes());
    debug_assert_eq!(m.len(), len);
    m
}

/// The kernel's answer to one request.
#[derive(Debug, PartialEq)]
enum Reply {
    /// `NLMSG_ERROR`: 0 = acknowledged, otherwise a positive errno.
    Ack(i32),
    /// `SOCK_DIAG_BY_FAMILY` data.
    Diag(Box<TcpDiag>),
}

fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn malformed(what: &str) -> ResetError {
    ResetError::new(
        "reply",
        libc::EPROTO,
        format!("malformed sock_diag reply ({what}); tcpstall bug or unsupported kernel"),
    )
}

/// Find the reply to `seq` among the netlink messages of one datagram. `Ok(None)`: none of
/// them answers `seq` (stale messages are skipped).
fn parse_datagram(buf: &[u8], seq: u32) -> Result<Option<Reply>, ResetError> {
    let mut found = None;
    for_each_reply(buf, |mseq, reply| {
        if mseq == seq && found.is_none() {
            found = Some(reply);
        }
    })?;
    Ok(found)
}

/// Every reply (with its sequence number) in one datagram.
fn for_each_reply(buf: &[u8], mut f: impl FnMut(u32, Reply)) -> Result<(), ResetError> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = rd_u32(buf, off).unwrap_or(0) as usize;
        let ty = rd_u16(buf, off + 4).unwrap_or(0);
        let mseq = rd_u32(buf, off + 8).unwrap_or(0);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(malformed("netlink message length out of bounds"));
        }
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        off += align4(len);
        match ty {
            NLMSG_ERROR => {
                let err = rd_u32(payload, 0).ok_or_else(|| malformed("short NLMSG_ERROR"))? as i32;
                f(mseq, Reply::Ack(err.checked_neg().unwrap_or(libc::EPROTO)));
            }
            SOCK_DIAG_BY_FAMILY => f(mseq, Reply::Diag(Box::new(parse_diag(payload)?))),
            NLMSG_NOOP => continue,
            NLMSG_DONE | NLMSG_OVERRUN => {
                return Err(malformed("unexpected NLMSG_DONE/NLMSG_OVERRUN"))
            }
            _ => return Err(malformed("unexpected netlink message type")),
        }
    }
    Ok(())
}

fn addr_from_wire(family: u8, raw: &[u8], port: u16) -> SocketAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&raw[..16]);
    if u16::from(family) == AF_INET6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])), port)
    }
}

/// Decode `struct inet_diag_msg` and its `INET_DIAG_INFO` attribute.
fn parse_diag(p: &[u8]) -> Result<TcpDiag, ResetError> {
    if p.len() < DIAG_MSG_LEN {
        return Err(malformed("inet_diag_msg truncated"));
    }
    let family = p[0];
    let id = &p[4..4 + SOCKID_LEN];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let cookie_lo = rd_u32(id, 40).unwrap_or(0);
    let cookie_hi = rd_u32(id, 44).unwrap_or(0);
    let tail = 4 + SOCKID_LEN;
    let mut d = TcpDiag {
        family: u16::from(family),
        state: p[1],
        cookie: u64::from(cookie_lo) | (u64::from(cookie_hi) << 32),
        local: addr_from_wire(family, &id[4..20], sport),
        remote: addr_from_wire(family, &id[20..36], dport),
        ifindex: rd_u32(id, 36).unwrap_or(0),
        uid: rd_u32(p, tail + 12).unwrap_or(0),
        inode: rd_u32(p, tail + 16).unwrap_or(0),
        timer: p[2],
        timer_retrans: p[3],
        timer_expires_ms: rd_u32(p, tail).unwrap_or(0),
        recv_q: rd_u32(p, tail + 4).unwrap_or(0),
        send_q: rd_u32(p, tail + 8).unwrap_or(0),
        tcp_info_len: 0,
        ca_state: 0,
        retransmits: 0,
        probes: 0,
        backoff: 0,
        rto_us: 0,
        snd_mss: 0,
        unacked: 0,
        lost: 0,
        retrans: 0,
        last_data_sent_ms: 0,
        last_ack_recv_ms: 0,
        rtt_us: 0,
        snd_cwnd: 0,
        total_retrans: 0,
        bytes_acked: 0,
        bytes_received: 0,
        bytes_sent: 0,
        bytes_retrans: 0,
        notsent_bytes: 0,
        snd_wnd: 0,
    };
    let mut off = align4(DIAG_MSG_LEN);
    while off + 4 <= p.len() {
        let len = usize::from(rd_u16(p, off).unwrap_or(0));
        let ty = rd_u16(p, off + 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < 4 || off + len > p.len() {
            return Err(malformed("attribute length out of bounds"));
        }
        if ty == INET_DIAG_INFO {
            apply_tcp_info(&mut d, &p[off + 4..off + len]);
        }
        off += align4(len);
    }
    Ok(d)
}

/// Fill the `tcp_info` fields of `d`; fields past the end of `ti` (older kernels) stay 0.
fn apply_tcp_info(d: &mut TcpDiag, ti: &[u8]) {
    let u8_at = |o: usize| ti.get(o).copied().unwrap_or(0);
    let u32_at = |o: usize| rd_u32(ti, o).unwrap_or(0);
    let u64_at = |o: usize| rd_u64(ti, o).unwrap_or(0);
    d.tcp_info_len = ti.len();
    d.ca_state = u8_at(TI_CA_STATE);
    d.retransmits = u8_at(TI_RETRANSMITS);
    d.probes = u8_at(TI_PROBES);
    d.backoff = u8_at(TI_BACKOFF);
    d.rto_us = u32_at(TI_RTO);
    d.snd_mss = u32_at(TI_SND_MSS);
    d.unacked = u32_at(TI_UNACKED);
    d.lost = u32_at(TI_LOST);
    d.retrans = u32_at(TI_RETRANS);
    d.last_data_sent_ms = u32_at(TI_LAST_DATA_SENT);
    d.last_ack_recv_ms = u32_at(TI_LAST_ACK_RECV);
    d.rtt_us = u32_at(TI_RTT);
    d.snd_cwnd = u32_at(TI_SND_CWND);
    d.total_retrans = u32_at(TI_TOTAL_RETRANS);
    d.bytes_acked = u64_at(TI_BYTES_ACKED);
    d.bytes_received = u64_at(TI_BYTES_RECEIVED);
    d.notsent_bytes = u32_at(TI_NOTSENT_BYTES);
    d.bytes_sent = u64_at(TI_BYTES_SENT);
    d.bytes_retrans = u64_at(TI_BYTES_RETRANS);
    d.snd_wnd = u32_at(TI_SND_WND);
}

// ---------------------------------------------------------------------------------------
// Netlink socket I/O.

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn send_request(fd: RawFd, msg: &[u8]) -> Result<(), ResetError> {
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: msg and kernel are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n >= 0 {
            if n as usize != msg.len() {
                return Err(ResetError::new(
                    "send",
                    libc::EMSGSIZE,
                    format!("netlink send was cut short ({n} of {} bytes)", msg.len()),
                ));
            }
            return Ok(());
        }
        let errno = last_errno();
        if errno != libc::EINTR {
            return Err(ResetError::new(
                "send",
                errno,
                format!(
                    "sendto on the NETLINK_SOCK_DIAG socket: {}",
                    errno_meaning(errno)
                ),
            ));
        }
    }
}

fn recv_reply(fd: RawFd, seq: u32, buf: &mut [u8]) -> Result<Reply, ResetError> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let n = recv_datagram(fd, buf, deadline)?;
        if let Some(reply) = parse_datagram(&buf[..n], seq)? {
            return Ok(reply);
        }
    }
}

/// Receive one datagram from the kernel (others are skipped) before `deadline`.
fn recv_datagram(fd: RawFd, buf: &mut [u8], deadline: Instant) -> Result<usize, ResetError> {
    loop {
        if Instant::now() >= deadline {
            return Err(ResetError::new(
                "reply",
                libc::ETIMEDOUT,
                errno_meaning(libc::ETIMEDOUT),
            ));
        }
        // SAFETY: zeroed sockaddr_nl is valid; buf is valid for buf.len() bytes.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_nl).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let errno = last_errno();
            match errno {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    return Err(ResetError::new(
                        "reply",
                        libc::ETIMEDOUT,
                        errno_meaning(libc::ETIMEDOUT),
                    ))
                }
                _ => {
                    return Err(ResetError::new(
                        "reply",
                        errno,
                        format!(
                            "recvfrom on the NETLINK_SOCK_DIAG socket: {}",
                            errno_meaning(errno)
                        ),
                    ))
                }
            }
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(ResetError::new(
                "reply",
                libc::EMSGSIZE,
                errno_meaning(libc::EMSGSIZE),
            ));
        }
        if from.nl_pid != 0 {
            continue; // not from the kernel
        }
        return Ok(n);
    }
}

/// Open a `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
fn open_diag_socket_here() -> Result<OwnedFd, ResetError> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        let errno = last_errno();
        return Err(ResetError::new(
            "socket",
            errno,
            format!(
                "socket(AF_NETLINK, NETLINK_SOCK_DIAG): {}",
                errno_meaning(errno)
            ),
        ));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: REPLY_TIMEOUT.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: tv is a valid timeval for the length passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let errno = last_errno();
            return Err(ResetError::new(
                "socket",
                errno,
                format!(
                    "setting a timeout on the NETLINK_SOCK_DIAG socket: {}",
                    io::Error::from_raw_os_error(errno)
                ),
            ));
        }
    }
    Ok(fd)
}

// ---------------------------------------------------------------------------------------
// Network namespaces.

/// Inode of the calling thread's network namespace (what `stat -L /proc/self/ns/net`
/// reports for the process's main thread).
pub fn current_netns() -> io::Result<u32> {
    let meta =
        fs::metadata("/proc/thread-self/ns/net").or_else(|_| fs::metadata("/proc/self/ns/net"))?;
    Ok(meta.ino() as u32)
}

fn netns_key(netns: u32) -> Result<u64, ResetError> {
    if netns != 0 {
        return Ok(u64::from(netns));
    }
    current_netns().map(u64::from).map_err(|e| {
        ResetError::new(
            "netns",
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot read /proc/thread-self/ns/net: {e}; is /proc mounted?"),
        )
    })
}

/// Open the namespace file at `path` if it is namespace `ino` (checked on the open file).
fn open_if_netns(path: &Path, ino: u64) -> Option<io::Result<fs::File>> {
    match fs::metadata(path) {
        Ok(m) if m.ino() == ino => {}
        _ => return None,
    }
    Some(fs::File::open(path).and_then(|f| {
        if f.metadata()?.ino() == ino {
            Ok(f)
        } else {
            // The process exited and the pid was reused between stat and open.
            Err(io::Error::from_raw_os_error(libc::ESRCH))
        }
    }))
}

/// Find network namespace `ino` and open it: `/proc/<pid_hint>/ns/net`, then
/// `/run/netns/*`, then every `/proc/<pid>/ns/net` (first match wins).
pub fn open_netns(ino: u32, pid_hint: Option<u32>) -> Result<(OwnedFd, PathBuf), ResetError> {
    let ino = u64::from(ino);
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(pid) = pid_hint {
        candidates.push(PathBuf::from(format!("/proc/{pid}/ns/net")));
    }
    let mut last_err: Option<(PathBuf, io::Error)> = None;
    let try_path =
        |p: &Path, last_err: &mut Option<(PathBuf, io::Error)>| match open_if_netns(p, ino) {
            Some(Ok(f)) => Some(OwnedFd::from(f)),
            Some(Err(e)) => {
                *last_err = Some((p.to_path_buf(), e));
                None
            }
            None => None,
        };
    for p in &candidates {
        if let Some(fd) = try_path(p, &mut last_err) {
            return Ok((fd, p.clone()));
        }
    }
    // A directory that cannot be listed (other than a missing /run/netns) is reported:
    // EMFILE while listing must not turn into "namespace not found".
    let list = |dir: &str, last_err: &mut Option<(PathBuf, io::Error)>| match fs::read_dir(dir) {
        Ok(d) => Some(d),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                *last_err = Some((PathBuf::from(dir), e));
            }
            None
        }
    };
    if let Some(dir) = list("/run/netns", &mut last_err) {
        for entry in dir.flatten() {
            let p = entry.path();
            if let Some(fd) = try_path(&p, &mut last_err) {
                return Ok((fd, p));
            }
        }
    }
    if let Some(dir) = list("/proc", &mut last_err) {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let p = PathBuf::from(format!("/proc/{name}/ns/net"));
            if let Some(fd) = try_path(&p, &mut last_err) {
                return Ok((fd, p));
            }
        }
    }
    Err(match last_err {
        Some((p, e)) => ResetError::new(
            "netns",
            e.raw_os_error().unwrap_or(libc::EIO),
            format!(
                "searching for network namespace {ino}: cannot open {}: {e}{}",
                p.display(),
                if is_transient_errno(e.raw_os_error().unwrap_or(0)) {
                    " (transient, retried later)"
                } else {
                    ""
                }
            ),
        ),
        None => ResetError::new(
            "netns",
            libc::ENOENT,
            format!(
                "network namespace {ino} not found (pid hint {}, /run/netns, /proc/*/ns/net): \
                 no process is left in it, so its sockets are closed or unreachable; nothing \
                 to do",
                pid_hint.map_or("none".to_string(), |p| p.to_string())
            ),
        ),
    })
}

/// Open a NETLINK_SOCK_DIAG socket inside the network namespace `ns` (an open namespace
/// file at `path`): a short-lived helper thread enters it with setns (which changes only
/// that thread) and opens the socket there; the socket stays bound to that namespace.
fn open_diag_socket_entering(
    ns: impl AsRawFd + Send + 'static,
    path: PathBuf,
) -> Result<OwnedFd, ResetError> {
    let handle = std::thread::Builder::new()
        .name("tcpstall-setns".into())
        .stack_size(256 * 1024)
        .spawn(move || -> Result<OwnedFd, ResetError> {
            // SAFETY: ns is an open namespace file; setns only changes this helper thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let errno = last_errno();
                let why = if errno == libc::EPERM {
                    "needs CAP_SYS_ADMIN (run as root)".to_string()
                } else {
                    io::Error::from_raw_os_error(errno).to_string()
                };
                return Err(ResetError::new(
                    "netns",
                    errno,
                    format!("setns(CLONE_NEWNET) into {} failed: {why}", path.display()),
                ));
            }
            open_diag_socket_here()
        })
        .map_err(|e| {
            ResetError::new(
                "netns",
                e.raw_os_error().unwrap_or(libc::EAGAIN),
                format!("cannot start the helper thread that enters the namespace: {e}"),
            )
        })?;
    handle.join().unwrap_or_else(|_| {
        Err(ResetError::new(
            "netns",
            libc::EIO,
            "the helper thread entering the namespace panicked (tcpstall bug)",
        ))
    })
}

/// Open a `NETLINK_SOCK_DIAG` socket inside network namespace `ino`.
fn open_diag_socket_in(ino: u64, pid_hint: Option<u32>) -> Result<OwnedFd, ResetError> {
    if let Ok(own) = current_netns() {
        if u64::from(own) == ino {
            return open_diag_socket_here();
        }
    }
    let (ns, path) = open_netns(ino as u32, pid_hint)?;
    open_diag_socket_entering(ns, path)
}

// ---------------------------------------------------------------------------------------
// Self-test.

/// The socket cookie of `fd` (`getsockopt(SOL_SOCKET, SO_COOKIE)`).
pub fn socket_cookie(fd: RawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie is valid for len bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Start-up self-test: build a wedged connection of our own on 127.0.0.1 (the client never
/// reads, the server fills its send buffer), check that SOCK_DESTROY with a wrong cookie
/// leaves it alone, destroy it with the right cookie and verify it reports `ECONNABORTED`.
/// Takes well under 2 s; all descriptors are closed on return.
pub fn self_probe() -> ProbeReport {
    match probe_inner() {
        Ok(latency) => ProbeReport {
            works: true,
            detail: format!(
                "SOCK_DESTROY ok (ECONNABORTED after {:.1} ms)",
                latency.as_secs_f64() * 1000.0
            ),
            errno: None,
            abort_latency: Some(latency),
        },
        Err((errno, detail)) => ProbeReport {
            works: false,
            detail,
            errno: Some(errno),
            abort_latency: None,
        },
    }
}

type ProbeFailure = (i32, String);

fn io_fail(what: &str, e: io::Error) -> ProbeFailure {
    (
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("self-test could not {what}: {e}; running observe-only"),
    )
}

/// Build a connected 127.0.0.1 pair: (listener, client, accepted server side).
fn loopback_pair() -> io::Result<(TcpListener, TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect_timeout(&listener.local_addr()?, Duration::from_millis(500))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match listener.accept() {
            Ok((server, _)) => {
                server.set_nonblocking(false)?;
                return Ok((listener, client, server));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
}

fn probe_inner() -> Result<Duration, ProbeFailure> {
    let (_listener, _client, mut server) =
        loopback_pair().map_err(|e| io_fail("build a test connection on 127.0.0.1", e))?;
    // Fill the send path until the kernel refuses more (bounded in bytes and time).
    server
        .set_nonblocking(true)
        .map_err(|e| io_fail("make the test socket non-blocking", e))?;
    let chunk = vec![0x5au8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut written = 0usize;
    while written < 256 * 1024 * 1024 && Instant::now() < deadline {
        match server.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_fail("fill the test connection", e)),
        }
    }
    let cookie = socket_cookie(server.as_raw_fd())
        .map_err(|e| io_fail("read SO_COOKIE of the test socket", e))?;
    let netns = current_netns().map_err(|e| io_fail("read /proc/thread-self/ns/net", e))?;
    let mut target = Target {
        cookie,
        netns,
        family: AF_INET,
        local: server
            .local_addr()
            .map_err(|e| io_fail("read the test socket's address", e))?,
        remote: server
            .peer_addr()
            .map_err(|e| io_fail("read the test socket's peer", e))?,
        pid_hint: Some(std::process::id()),
        ifindex: 0,
    };
    let refused = |e: ResetError| -> ProbeFailure {
        let detail = match e.errno {
            libc::EPERM | libc::EACCES => format!(
                "SOCK_DESTROY refused: {} — needs CAP_NET_ADMIN; running observe-only",
                errno_name(e.errno)
            ),
            libc::EOPNOTSUPP => "SOCK_DESTROY unsupported: EOPNOTSUPP — kernel built without \
                CONFIG_INET_DIAG_DESTROY; running observe-only"
                .to_string(),
            _ => format!("SOCK_DESTROY failed: {e}; running observe-only"),
        };
        (e.errno, detail)
    };
    let mut destroyer = Destroyer::new();

    // Our own open socket must be visible, or the cookie check below proves nothing: with
    // no TCP handler (tcp_diag not loaded) every request fails with ENOENT.
    match destroyer.lookup(&target) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err((
                libc::ENOENT,
                "sock_diag does not show the self-test's own open socket: no TCP handler, the \
                 tcp_diag (and inet_diag) kernel modules are not loaded; load them with \
                 `modprobe tcp_diag` (or list them in /etc/modules-load.d/); running \
                 observe-only"
                    .to_string(),
            ))
        }
        Err(e) => return Err(refused(e)),
    }

    // The cookie must protect: a wrong cookie with the right 4-tuple must not reset.
    target.cookie = cookie ^ 0x8000_0000_0000_0000;
    match destroyer.destroy(&target) {
        Err(e) if e.errno == libc::ENOENT || e.errno == libc::ESTALE => {}
        Err(e) => return Err(refused(e)),
        Ok(()) => {
            return Err((
                libc::EPROTO,
                "SOCK_DESTROY ignored the socket cookie (a wrong cookie reset the socket); \
                 resetting by 4-tuple alone is unsafe, running observe-only"
                    .to_string(),
            ))
        }
    }
    if let Ok(Some(err)) = server.take_error() {
        return Err((
            err.raw_os_error().unwrap_or(libc::EIO),
            format!("SOCK_DESTROY with a wrong cookie disturbed the socket ({err}); running observe-only"),
        ));
    }
    target.cookie = cookie;

    let start = Instant::now();
    destroyer.destroy(&target).map_err(refused)?;
    let deadline = start + Duration::from_millis(500);
    loop {
        let observed = match server.take_error() {
            Ok(Some(e)) => Some(e),
            Ok(None) => match server.write(&[0u8]) {
                Err(e)
                    if e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::Interrupted =>
                {
                    Some(e)
                }
                _ => None,
            },
            Err(e) => Some(e),
        };
        match observed {
            Some(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => return Ok(start.elapsed()),
            Some(e) => {
                return Err((
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!(
                        "SOCK_DESTROY was acknowledged but the socket reported {e} instead of \
                         ECONNABORTED; running observe-only"
                    ),
                ))
            }
            None if Instant::now() >= deadline => {
                return Err((
                    libc::ETIMEDOUT,
                    "SOCK_DESTROY was acknowledged but the socket still works 500 ms later; \
                     running observe-only"
                        .to_string(),
                ))
            }
            None => std::thread::sleep(Duration::from_micros(100)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Finding sockets: `sock_diag` dumps across network namespaces.
//
// An operator names a socket by its cookie (from a tcpstall event or `ss -e`) or by its
// 4-tuple, usually without knowing its network namespace. [`find_sockets`] dumps every TCP
// socket (`SOCK_DIAG_BY_FAMILY` with `NLM_F_DUMP`, `AF_INET` and `AF_INET6`, all states,
// with `INET_DIAG_INFO`) in each namespace it can reach and keeps those a predicate accepts.
// Dumps are read-only and cheap (about 1 µs per socket); the namespaces are the caller's
// own, every `/run/netns/*` and every distinct `/proc/*/ns/net`.

const NLM_F_DUMP: u16 = 0x300;
/// Receive buffer for dump replies (the kernel fills at most 32 KiB per datagram).
const DUMP_BUF_LEN: usize = 64 * 1024;
/// Upper bound on dumping one namespace (both families).
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// A network namespace to search: its inode and a namespace file that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsRef {
    /// Inode number, as in events' `netns` and `readlink /proc/PID/ns/net` (`net:[INODE]`).
    pub ino: u32,
    /// `/proc/PID/task/TID/ns/net` (our own), `/run/netns/NAME`, `/proc/PID/ns/net`, or a
    /// file the operator named.
    pub path: PathBuf,
}

impl NetnsRef {
    /// The process that `path` belongs to, when it is a `/proc/PID/...` path.
    pub fn pid(&self) -> Option<u32> {
        let rest = self.path.strip_prefix("/proc").ok()?;
        let first = rest.components().next()?.as_os_str().to_str()?;
        first.parse().ok()
    }
}

impl fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.ino, self.path.display())
    }
}

/// What [`find_sockets`] / [`find_sockets_in`] found.
#[derive(Debug, Default)]
pub struct Search {
    /// Matching sockets, each with a [`Target`] that names it exactly (cookie, 4-tuple as
    /// the kernel reports it, namespace inode, and a pid in that namespace when known).
    pub found: Vec<(Target, TcpDiag)>,
    /// Namespaces whose dump succeeded.
    pub searched: usize,
    /// Namespaces that could not be searched, and why (e.g. the last process in it exited
    /// between listing and opening, or `setns` is not permitted).
    pub failed: Vec<(NetnsRef, ResetError)>,
}

/// The calling thread's own network namespace.
pub fn own_netns() -> Result<NetnsRef, ResetError> {
    let ino = netns_key(0)? as u32;
    // SAFETY: plain syscalls without arguments.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    Ok(NetnsRef {
        ino,
        path: PathBuf::from(format!("/proc/{pid}/task/{tid}/ns/net")),
    })
}

/// Every network namespace this process can reach, each once: its own first, then
/// `/run/netns/*` (named with `ip netns add`), then `/proc/*/ns/net` (every process).
/// Namespaces with no process and no bind mount have no sockets one could name.
pub fn all_netns() -> Vec<NetnsRef> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut add = |path: PathBuf, out: &mut Vec<NetnsRef>| {
        if let Ok(m) = fs::metadata(&path) {
            let ino = m.ino() as u32;
            if seen.insert(ino) {
                out.push(NetnsRef { ino, path });
            }
        }
    };
    if let Ok(own) = own_netns() {
        add(own.path, &mut out);
    }
    for (dir, pids_only) in [(Path::new("/run/netns"), false), (Path::new("/proc"), true)] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !pids_only || (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
            .collect();
        if pids_only {
            names.sort_by_key(|n| n.parse::<u64>().unwrap_or(u64::MAX));
        } else {
            names.sort();
        }
        for name in names {
            let path = if pids_only {
                dir.join(name).join("ns/net")
            } else {
                dir.join(name)
            };
            add(path, &mut out);
        }
    }
    out
}

/// The network namespace that the file at `path` refers to (`/run/netns/NAME`,
/// `/proc/PID/ns/net`, a bind mount of one). Fails with `EINVAL` for files that are not
/// network namespaces.
pub fn netns_at(path: &Path) -> Result<NetnsRef, ResetError> {
    let file = fs::File::open(path).map_err(|e| {
        ResetError::new(
            "netns",
            e.raw_os_error().unwrap_or(libc::EIO),
            format!(
                "cannot open {}: {e}; name a network namespace file such as \
                 /run/netns/NAME or /proc/PID/ns/net, or its inode number",
                path.display()
            ),
        )
    })?;
    // SAFETY: valid descriptor; NS_GET_NSTYPE takes no argument.
    let ty = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ty != libc::CLONE_NEWNET {
        return Err(ResetError::new(
            "netns",
            libc::EINVAL,
            format!(
                "{} is not a network namespace file ({}); name /run/netns/NAME, \
                 /proc/PID/ns/net or a namespace inode number",
                path.display(),
                if ty < 0 {
                    "not a namespace at all".to_string()
                } else {
                    "a namespace of another type".to_string()
                }
            ),
        ));
    }
    let ino = file
        .metadata()
        .map_err(|e| {
            ResetError::new(
                "netns",
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("cannot stat {}: {e}", path.display()),
            )
        })?
        .ino() as u32;
    Ok(NetnsRef {
        ino,
        path: path.to_path_buf(),
    })
}

/// Resolve a namespace inode to a file that opens it (see [`open_netns`] for the search).
pub fn netns_by_inode(ino: u32) -> Result<NetnsRef, ResetError> {
    let own = own_netns()?;
    if own.ino == ino {
        return Ok(own);
    }
    let (_fd, path) = open_netns(ino, None)?;
    Ok(NetnsRef { ino, path })
}

/// Open a `NETLINK_SOCK_DIAG` socket inside `ns`, opening `ns.path` directly (no search).
fn diag_socket_at(ns: &NetnsRef) -> Result<OwnedFd, ResetError> {
    if current_netns().ok() == Some(ns.ino) {
        return open_diag_socket_here();
    }
    let file = match open_if_netns(&ns.path, u64::from(ns.ino)) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            return Err(ResetError::new(
                "netns",
                e.raw_os_error().unwrap_or(libc::EIO),
                format!(
                    "cannot open network namespace {}: {e} (its last process may have exited)",
                    ns
                ),
            ))
        }
        None => {
            return Err(ResetError::new(
                "netns",
                libc::ENOENT,
                format!(
                    "{} no longer refers to network namespace {} (its process exited or the \
                     name was removed); nothing to search there",
                    ns.path.display(),
                    ns.ino
                ),
            ))
        }
    };
    open_diag_socket_entering(file, ns.path.clone())
}

impl Destroyer {
    /// Open (and cache) this destroyer's netlink socket for namespace `ns` through
    /// `ns.path`, so later [`destroy`](Destroyer::destroy) / [`lookup`](Destroyer::lookup)
    /// calls for targets in `ns.ino` work even when the namespace is reachable only through
    /// that path (e.g. a bind mount outside `/run/netns` with no process in it).
    pub fn attach_netns(&mut self, ns: &NetnsRef) -> Result<(), ResetError> {
        let key = u64::from(ns.ino);
        if self.socks.contains_key(&key) {
            return Ok(());
        }
        let fd = diag_socket_at(ns)?;
        self.cache_insert(key, fd);
        Ok(())
    }
}

/// Dump every TCP socket of namespace `ns`: both families, all states, with `tcp_info`
/// (IPv4-mapped sockets appear once, as `AF_INET6`). A kernel without IPv6 contributes no
/// `AF_INET6` sockets instead of failing.
pub fn dump_tcp(ns: &NetnsRef) -> Result<Vec<TcpDiag>, ResetError> {
    let fd = diag_socket_at(ns)?;
    let mut buf = vec![0u8; DUMP_BUF_LEN];
    let deadline = Instant::now() + DUMP_TIMEOUT;
    let mut out = Vec::new();
    for (seq, family) in [(1u32, AF_INET), (2, AF_INET6)] {
        match dump_family(fd.as_raw_fd(), family, seq, &mut buf, deadline) {
            Ok(mut v) => out.append(&mut v),
            Err(e)
                if family == AF_INET6
                    && e.stage == "reply"
                    && (e.errno == libc::ENOENT || e.errno == libc::EAFNOSUPPORT) => {}
            Err(mut e) => {
                e.meaning = format!(
                    "dumping TCP sockets in network namespace {ns}: {}",
                    e.meaning
                );
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Send one dump request and collect its replies up to `NLMSG_DONE`.
fn dump_family(
    fd: RawFd,
    family: u16,
    seq: u32,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<Vec<TcpDiag>, ResetError> {
    let id = WireId::any(family);
    let ext = 1u8 << (INET_DIAG_INFO - 1);
    let msg = encode_request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &id,
        ext,
    );
    send_request(fd, &msg)?;
    let mut out = Vec::new();
    loop {
        let n = recv_datagram(fd, buf, deadline).map_err(|e| {
            if e.errno == libc::ETIMEDOUT {
                ResetError::new(
                    "reply",
                    libc::ETIMEDOUT,
                    format!(
                        "the socket dump did not finish within {DUMP_TIMEOUT:?}: {}",
                        errno_meaning(libc::ETIMEDOUT)
                    ),
                )
            } else {
                e
            }
        })?;
        if parse_dump_datagram(&buf[..n], seq, &mut out)? {
            return Ok(out);
        }
    }
}

/// Append the sockets of one dump datagram to `out`; `Ok(true)` once `NLMSG_DONE` arrived.
fn parse_dump_datagram(buf: &[u8], seq: u32, out: &mut Vec<TcpDiag>) -> Result<bool, ResetError> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = rd_u32(buf, off).unwrap_or(0) as usize;
        let ty = rd_u16(buf, off + 4).unwrap_or(0);
        let mseq = rd_u32(buf, off + 8).unwrap_or(0);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(malformed("netlink message length out of bounds"));
        }
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        off += align4(len);
        if mseq != seq {
            continue;
        }
        match ty {
            SOCK_DIAG_BY_FAMILY => out.push(parse_diag(payload)?),
            NLMSG_NOOP => {}
            NLMSG_DONE => {
                // The payload is the dump's final status (0, or a negative errno).
                let status = rd_u32(payload, 0).map_or(0, |v| v as i32);
                if status < 0 {
                    let errno = status.checked_neg().unwrap_or(libc::EPROTO);
                    return Err(ResetError::new(
                        "reply",
                        errno,
                        format!(
                            "the socket dump ended with an error: {}",
                            errno_meaning(errno)
                        ),
                    ));
                }
                return Ok(true);
            }
            NLMSG_ERROR => {
                let err = rd_u32(payload, 0).ok_or_else(|| malformed("short NLMSG_ERROR"))? as i32;
                if err == 0 {
                    return Ok(true);
                }
                let errno = err.checked_neg().unwrap_or(libc::EPROTO);
                return Err(ResetError::new("reply", errno, errno_meaning(errno)));
            }
            NLMSG_OVERRUN => {
                return Err(ResetError::new(
                    "reply",
                    libc::ENOBUFS,
                    "the kernel reported a netlink overrun during the socket dump; retry",
                ))
            }
            _ => return Err(malformed("unexpected netlink message type in a dump")),
        }
    }
    Ok(false)
}

/// Whether two endpoints are the same, treating `a.b.c.d` and `::ffff:a.b.c.d` as equal.
pub fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && match (v4_of(a.ip()), v4_of(b.ip())) {
            (Some(x), Some(y)) => x == y,
            (None, None) => a.ip() == b.ip(),
            _ => false,
        }
}

/// Search `spaces` for TCP sockets `pred` accepts. With `first_only`, stop at the first
/// namespace that has a match. Namespaces that cannot be dumped are listed in
/// [`Search::failed`] and do not stop the search.
pub fn find_sockets_in(
    spaces: &[NetnsRef],
    first_only: bool,
    mut pred: impl FnMut(&TcpDiag) -> bool,
) -> Search {
    let mut s = Search::default();
    for ns in spaces {
        match dump_tcp(ns) {
            Ok(all) => {
                s.searched += 1;
                for d in all.into_iter().filter(|d| pred(d)) {
                    let t = Target {
                        cookie: d.cookie,
                        netns: ns.ino,
                        family: d.family,
                        local: d.local,
                        remote: d.remote,
                        pid_hint: ns.pid(),
                        ifindex: d.ifindex,
                    };
                    s.found.push((t, d));
                }
                if first_only && !s.found.is_empty() {
                    break;
                }
            }
            Err(e) => s.failed.push((ns.clone(), e)),
        }
    }
    s
}

/// Search network namespace `netns` (an inode), or every reachable namespace with `None`
/// (see [`all_netns`]), for TCP sockets `pred` accepts. `Err` when the given namespace
/// cannot be found or dumped, or when no namespace at all could be searched.
pub fn find_sockets(
    netns: Option<u32>,
    pred: impl FnMut(&TcpDiag) -> bool,
) -> Result<Search, ResetError> {
    let spaces = match netns {
        Some(ino) => vec![netns_by_inode(ino)?],
        None => all_netns(),
    };
    let mut s = find_sockets_in(&spaces, false, pred);
    if s.searched == 0 {
        if let Some((_, e)) = s.failed.drain(..).next() {
            return Err(e);
        }
    }
    Ok(s)
}

/// The TCP socket with this cookie, in whichever reachable network namespace holds it.
/// Cookies are unique per boot, so the search stops at the first match.
pub fn find_by_cookie(cookie: u64) -> Result<Option<(Target, TcpDiag)>, ResetError> {
    let spaces = all_netns();
    let mut s = find_sockets_in(&spaces, true, |d| d.cookie == cookie);
    if s.found.is_empty() && s.searched == 0 {
        if let Some((_, e)) = s.failed.drain(..).next() {
            return Err(e);
        }
    }
    Ok(s.found.into_iter().next())
}

/// TCP sockets with this local and remote address (IPv4 and IPv4-mapped IPv6 compare
/// equal) in namespace `netns`, or in every reachable namespace with `None`. The same
/// 4-tuple can exist in several namespaces (e.g. loopback inside two containers).
pub fn find_by_tuple(
    local: SocketAddr,
    remote: SocketAddr,
    netns: Option<u32>,
) -> Result<Vec<(Target, TcpDiag)>, ResetError> {
    find_sockets(netns, |d| {
        same_endpoint(d.local, local) && same_endpoint(d.remote, remote)
    })
    .map(|s| s.found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;

    /// Read up to `want` bytes, for at most `timeout`.
    fn read_available(s: &mut TcpStream, want: usize, timeout: Duration) -> io::Result<usize> {
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let deadline = Instant::now() + timeout;
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < want && Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    // ---- pure encoding / decoding ----

    fn target(family: u16, local: &str, remote: &str, cookie: u64) -> Target {
        Target {
            cookie,
            netns: 0,
            family,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            pid_hint: None,
            ifindex: 0,
        }
    }

    #[test]
    fn encode_v4_request_layout() {
        let t = target(
            2,
            "10.1.2.3:443",
            "192.168.0.9:50000",
            0x1122_3344_5566_7788,
        );
        let ids = wire_ids(&t).unwrap();
        assert_eq!(ids.len(), 1);
        let m = encode_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 7, &ids[0], 0);
        assert_eq!(m.len(), 72);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 21);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x5);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        let r = &m[16..];
        assert_eq!(&r[0..4], &[2, 6, 0, 0]);
        assert_eq!(u32::from_ne_bytes(r[4..8].try_into().unwrap()), 0xffff_ffff);
        assert_eq!(&r[8..10], &443u16.to_be_bytes());
        assert_eq!(&r[10..12], &50000u16.to_be_bytes());
        assert_eq!(&r[12..16], &[10, 1, 2, 3]);
        assert_eq!(&r[16..28], &[0; 12]);
        assert_eq!(&r[28..32], &[192, 168, 0, 9]);
        assert_eq!(&r[32..44], &[0; 12]);
        assert_eq!(&r[44..48], &[0; 4]); // ifindex
        assert_eq!(
            u32::from_ne_bytes(r[48..52].try_into().unwrap()),
            0x5566_7788
        );
        assert_eq!(
            u32::from_ne_bytes(r[52..56].try_into().unwrap()),
            0x1122_3344
        );
    }

    #[test]
    fn requests_carry_the_bound_interface() {
        let mut t = target(2, "10.1.2.3:443", "192.168.0.9:50000", 9);
        t.ifindex = 7;
        let ids = wire_ids(&t).unwrap();
        let m = encode_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 1, &ids[0], 0);
        assert_eq!(
            u32::from_ne_bytes(m[16 + 44..16 + 48].try_into().unwrap()),
            7
        );
        // Both encodings of an IPv4-mapped socket, and IPv6.
        let mut t = target(10, "[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.2]:9", 9);
        t.ifindex = 0x0102_0304;
        let ids = wire_ids(&t).unwrap();
        assert_eq!(ids.len(), 2);
        assert!(ids.iter().all(|id| id.ifindex == 0x0102_0304));
        let mut t = target(10, "[fe80::1]:80", "[fe80::2]:9", 9);
        t.ifindex = 3;
        assert_eq!(wire_ids(&t).unwrap()[0].ifindex, 3);
    }

    #[test]
    fn transient_errors_are_classified() {
        let transient = [
            libc::ENOBUFS,
            libc::EAGAIN,
            libc::EWOULDBLOCK,
            libc::ETIMEDOUT,
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EINTR,
            libc::EBUSY,
        ];
        for errno in transient {
            let e = ResetError::new("reply", errno, errno_meaning(errno));
            assert!(e.is_transient(), "{}", errno_name(errno));
            assert!(
                e.meaning.contains("transient") || e.meaning.contains("retry"),
                "{}: {}",
                errno_name(errno),
                e.meaning
            );
        }
        for errno in [
            0,
            libc::ENOENT,
            libc::ESTALE,
            libc::EPERM,
            libc::EACCES,
            libc::EOPNOTSUPP,
            libc::EINVAL,
            libc::EAFNOSUPPORT,
            libc::EPROTONOSUPPORT,
            libc::ECONNREFUSED,
            libc::EMSGSIZE,
            libc::EPROTO,
            libc::ESRCH,
            libc::EIO,
        ] {
            for stage in ["netns", "socket", "send", "reply"] {
                let e = ResetError::new(stage, errno, "");
                assert!(!e.is_transient(), "{stage} {}", errno_name(errno));
            }
        }
    }

    #[test]
    fn encode_lookup_sets_info_ext() {
        let t = target(10, "[2001:db8::1]:80", "[2001:db8::2]:1234", 5);
        let ids = wire_ids(&t).unwrap();
        assert_eq!(ids.len(), 1);
        let m = encode_request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, &ids[0], 1 << 1);
        let r = &m[16..];
        assert_eq!(&r[0..4], &[10, 6, 2, 0]);
        let l: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(&r[12..28], &l.octets());
        let p: Ipv6Addr = "2001:db8::2".parse().unwrap();
        assert_eq!(&r[28..44], &p.octets());
    }

    #[test]
    fn mapped_targets_try_inet6_mapped_then_inet() {
        for (l, r) in [
            ("[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.2]:9"),
            ("127.0.0.1:80", "127.0.0.2:9"),
        ] {
            let ids = wire_ids(&target(10, l, r, 9)).unwrap();
            assert_eq!(ids.len(), 2, "{l}");
            assert_eq!(ids[0].family, 10);
            assert_eq!(
                ids[0].src,
                Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets()
            );
            assert_eq!(
                ids[0].dst,
                Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets()
            );
            assert_eq!(ids[1].family, 2);
            assert_eq!(&ids[1].src[..4], &[127, 0, 0, 1]);
            assert_eq!(&ids[1].dst[..4], &[127, 0, 0, 2]);
            assert_eq!((ids[1].sport, ids[1].dport), (80, 9));
        }
        // An AF_INET socket given mapped addresses is still looked up as IPv4.
        let ids = wire_ids(&target(2, "[::ffff:1.2.3.4]:1", "[::ffff:5.6.7.8]:2", 9)).unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(&ids[0].src[..4], &[1, 2, 3, 4]);
    }

    #[test]
    fn invalid_targets_are_rejected() {
        let e = wire_ids(&target(2, "[2001:db8::1]:1", "[2001:db8::2]:2", 9)).unwrap_err();
        assert_eq!((e.errno, e.stage), (libc::EINVAL, "send"));
        let e = wire_ids(&target(10, "10.0.0.1:1", "[2001:db8::2]:2", 9)).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.meaning.contains("mix"), "{}", e.meaning);
        let e = wire_ids(&target(1, "10.0.0.1:1", "10.0.0.2:2", 9)).unwrap_err();
        assert_eq!(e.errno, libc::EAFNOSUPPORT);
        // destroy refuses to act without a cookie, before touching any socket.
        let e = Destroyer::new()
            .destroy(&target(2, "10.0.0.1:1", "10.0.0.2:2", 0))
            .unwrap_err();
        assert_eq!((e.errno, e.stage), (libc::EINVAL, "send"));
        assert!(e.meaning.contains("cookie"));
    }

    #[test]
    fn cookie_words_low_first_and_nocookie() {
        assert_eq!(cookie_words(0x0000_0001_0000_0002), [2, 1]);
        assert_eq!(cookie_words(0), [!0, !0]);
        assert_eq!(cookie_words(u64::MAX), [!0, !0]);
    }

    fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn nlmsgerr(errno: i32, seq: u32) -> Vec<u8> {
        let mut p = (-errno).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; 16]); // echoed request header
        nlmsg(NLMSG_ERROR, seq, &p)
    }

    #[test]
    fn decode_acks_and_skip_stale() {
        assert_eq!(
            parse_datagram(&nlmsgerr(0, 3), 3).unwrap(),
            Some(Reply::Ack(0))
        );
        assert_eq!(
            parse_datagram(&nlmsgerr(libc::ENOENT, 3), 3).unwrap(),
            Some(Reply::Ack(libc::ENOENT))
        );
        // A stale reply to an older request followed by ours.
        let mut two = nlmsgerr(libc::EPERM, 2);
        two.extend(nlmsgerr(0, 3));
        assert_eq!(parse_datagram(&two, 3).unwrap(), Some(Reply::Ack(0)));
        assert_eq!(parse_datagram(&nlmsgerr(0, 2), 3).unwrap(), None);
        // Truncated / lying length.
        let mut bad = nlmsgerr(0, 3);
        bad[0] = 200;
        assert_eq!(parse_datagram(&bad, 3).unwrap_err().errno, libc::EPROTO);
        assert_eq!(
            parse_datagram(&nlmsg(NLMSG_ERROR, 3, &[1, 2]), 3)
                .unwrap_err()
                .errno,
            libc::EPROTO
        );
    }

    fn diag_payload(family: u8, tcp_info: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![family, 1, 4, 3];
        p.extend_from_slice(&8080u16.to_be_bytes());
        p.extend_from_slice(&40000u16.to_be_bytes());
        if family == 2 {
            p.extend_from_slice(&[127, 0, 0, 1]);
            p.extend_from_slice(&[0; 12]);
            p.extend_from_slice(&[10, 0, 0, 7]);
            p.extend_from_slice(&[0; 12]);
        } else {
            p.extend_from_slice(&Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets());
            p.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped().octets());
        }
        p.extend_from_slice(&3u32.to_ne_bytes()); // if
        p.extend_from_slice(&0xdead_beefu32.to_ne_bytes()); // cookie lo
        p.extend_from_slice(&0x12u32.to_ne_bytes()); // cookie hi
        for v in [200u32, 11, 5_000_000, 1000, 424242] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(p.len(), DIAG_MSG_LEN);
        // An unrelated attribute first (INET_DIAG_SHUTDOWN = 8, u8 payload, padded).
        p.extend_from_slice(&5u16.to_ne_bytes());
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        if let Some(ti) = tcp_info {
            p.extend_from_slice(&((4 + ti.len()) as u16).to_ne_bytes());
            p.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
            p.extend_from_slice(ti);
            while p.len() % 4 != 0 {
                p.push(0);
            }
        }
        p
    }

    fn tcp_info_bytes(len: usize) -> Vec<u8> {
        let mut ti = vec![0u8; len];
        ti[0] = 1; // tcpi_state
        ti[TI_PROBES] = 2;
        ti[TI_BACKOFF] = 7;
        let put32 = |ti: &mut Vec<u8>, o: usize, v: u32| {
            if o + 4 <= ti.len() {
                ti[o..o + 4].copy_from_slice(&v.to_ne_bytes())
            }
        };
        let put64 = |ti: &mut Vec<u8>, o: usize, v: u64| {
            if o + 8 <= ti.len() {
                ti[o..o + 8].copy_from_slice(&v.to_ne_bytes())
            }
        };
        put32(&mut ti, TI_UNACKED, 13);
        put32(&mut ti, TI_RTO, 204_000);
        put64(&mut ti, TI_BYTES_ACKED, 0x1_0000_0001);
        put32(&mut ti, TI_NOTSENT_BYTES, 777);
        put32(&mut ti, TI_SND_WND, 65535);
        ti
    }

    #[test]
    fn decode_diag_with_full_tcp_info() {
        let ti = tcp_info_bytes(248);
        let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 9, &diag_payload(2, Some(&ti)));
        let Some(Reply::Diag(d)) = parse_datagram(&buf, 9).unwrap() else {
            panic!("no diag")
        };
        assert_eq!(d.family, 2);
        assert_eq!(d.state, 1);
        assert_eq!(d.state_name(), "ESTAB");
        assert_eq!(d.timer, 4);
        assert_eq!(d.timer_retrans, 3);
        assert_eq!(d.cookie, 0x12_dead_beef);
        assert_eq!(d.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(d.remote, "10.0.0.7:40000".parse().unwrap());
        assert_eq!(d.ifindex, 3);
        assert_eq!(
            (d.timer_expires_ms, d.recv_q, d.send_q, d.uid, d.inode),
            (200, 11, 5_000_000, 1000, 424242)
        );
        assert_eq!(d.tcp_info_len, 248);
        assert_eq!(
            (d.probes, d.backoff, d.unacked, d.rto_us),
            (2, 7, 13, 204_000)
        );
        assert_eq!(d.bytes_acked, 0x1_0000_0001);
        assert_eq!(d.notsent_bytes, 777);
        assert!(d.has_snd_wnd());
        assert_eq!(d.snd_wnd, 65535);
    }

    #[test]
    fn decode_diag_old_kernel_and_no_info() {
        // A 5.x tcp_info (224 bytes: ends before tcpi_snd_wnd).
        let ti = tcp_info_bytes(224);
        let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(10, Some(&ti)));
        let Some(Reply::Diag(d)) = parse_datagram(&buf, 1).unwrap() else {
            panic!("no diag")
        };
        assert_eq!(d.family, 10);
        assert_eq!(d.local, "[::ffff:127.0.0.1]:8080".parse().unwrap());
        assert!(!d.has_snd_wnd());
        assert_eq!(d.snd_wnd, 0);
        assert_eq!(d.notsent_bytes, 777);
        // No INET_DIAG_INFO at all (e.g. TIME_WAIT).
        let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &diag_payload(2, None));
        let Some(Reply::Diag(d)) = parse_datagram(&buf, 1).unwrap() else {
            panic!("no diag")
        };
        assert_eq!((d.tcp_info_len, d.bytes_acked, d.backoff), (0, 0, 0));
        // Truncated header.
        let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &[0u8; 40]);
        assert_eq!(parse_datagram(&buf, 1).unwrap_err().errno, libc::EPROTO);
    }

    // ---- errno meanings ----

    #[test]
    fn errno_meanings_are_actionable() {
        assert!(errno_meaning(libc::ENOENT).contains("already closed"));
        assert!(errno_meaning(libc::ENOENT).contains("cookie mismatch"));
        assert!(errno_meaning(libc::ESTALE).contains("reused"));
        assert!(errno_meaning(libc::EPERM).contains("CAP_NET_ADMIN"));
        assert!(errno_meaning(libc::EACCES).contains("CAP_NET_ADMIN"));
        assert!(errno_meaning(libc::EOPNOTSUPP).contains("CONFIG_INET_DIAG_DESTROY"));
        assert!(errno_meaning(libc::EPROTONOSUPPORT).contains("tcp_diag"));
        assert!(errno_meaning(libc::ETIMEDOUT).contains("retry"));
        assert!(errno_meaning(libc::ENOBUFS).contains("retry"));
        assert!(errno_meaning(libc::EINVAL).contains("bug"));
        let other = errno_meaning(libc::EXDEV);
        assert!(
            other.contains("unexpected") && other.contains("link"),
            "{other}"
        );
        assert_eq!(errno_name(libc::ECONNABORTED), "ECONNABORTED");
        let e = ResetError::new("reply", libc::EPERM, errno_meaning(libc::EPERM));
        let s = e.to_string();
        assert!(
            s.contains("EPERM") && s.contains("errno 1") && s.contains("CAP_NET_ADMIN"),
            "{s}"
        );
    }

    // ---- real kernel ----

    /// True if the test may touch the kernel; prints why not otherwise. Under CI=true a
    /// missing root is a failure, not a skip.
    fn require_root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and CI=true");
        }
        eprintln!("SKIP {test}: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)");
        false
    }

    fn target_of(server: &TcpStream, family: u16) -> Target {
        Target {
            cookie: socket_cookie(server.as_raw_fd()).unwrap(),
            netns: current_netns().unwrap(),
            family,
            local: server.local_addr().unwrap(),
            remote: server.peer_addr().unwrap(),
            pid_hint: Some(std::process::id()),
            ifindex: 0,
        }
    }

    fn assert_aborted(server: &TcpStream) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match server.take_error().unwrap() {
                Some(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
                    return;
                }
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                None => panic!("socket not aborted within 1 s"),
            }
        }
    }

    #[test]
    fn self_probe_works() {
        if !require_root("self_probe_works") {
            return;
        }
        let start = Instant::now();
        let r = self_probe();
        assert!(r.works, "{r:?}");
        assert!(
            r.detail.starts_with("SOCK_DESTROY ok (ECONNABORTED after"),
            "{}",
            r.detail
        );
        assert!(r.abort_latency.unwrap() < Duration::from_millis(500));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        eprintln!("self_probe: {}", r.detail);
    }

    /// Running kernel release as (major, minor).
    fn kernel_version() -> Option<(u32, u32)> {
        let r = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        let mut it = r.trim().split(|c: char| !c.is_ascii_digit());
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }

    #[test]
    fn orphan_probe_on_this_kernel() {
        if !require_root("orphan_probe_on_this_kernel") {
            return;
        }
        let start = Instant::now();
        let (r, cookie) = orphan::probe_traced();
        let took = start.elapsed();
        eprintln!("orphan_probe ({took:?}): {r:?}");
        // 6.11 and later carry "tcp: fix forever orphan socket caused by tcp_abort"; older
        // kernels may have it backported, so only the newer ones are held to it.
        if kernel_version().is_some_and(|v| v >= (6, 11)) {
            assert!(r.safe, "{r:?}");
            assert!(
                r.detail.starts_with("orphan destroyed cleanly"),
                "{}",
                r.detail
            );
        } else {
            assert!(
                r.detail.starts_with("orphan destroyed cleanly")
                    || r.detail.starts_with("destroyed orphan stayed"),
                "the test itself did not run: {}",
                r.detail
            );
        }
        assert!(took < Duration::from_secs(1), "took {took:?}");
        // Nothing is left behind, on either kind of kernel.
        assert_ne!(cookie, 0);
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Some((_, d)) = find_by_cookie(cookie).unwrap() {
            assert!(Instant::now() < deadline, "test orphan left behind: {d:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `capset` on the calling thread only: drop `cap` from its effective set.
    fn drop_effective_cap(cap: u32) {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut h = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let mut d = [Data::default(); 2];
        // SAFETY: header and two data structs as capget/capset expect; pid 0 = this thread.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()),
                0,
                "capget: {}",
                io::Error::last_os_error()
            );
            d[(cap / 32) as usize].effective &= !(1 << (cap % 32));
            assert_eq!(
                libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()),
                0,
                "capset: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Without CAP_NET_ADMIN the destroy is refused: unsafe, with the reason, and the test
    /// orphan does not outlive the probe (our client's RST removes it).
    #[test]
    fn orphan_probe_without_cap_net_admin_is_unsafe() {
        if !require_root("orphan_probe_without_cap_net_admin_is_unsafe") {
            return;
        }
        let (r, cookie) = std::thread::spawn(|| {
            drop_effective_cap(12); // CAP_NET_ADMIN
            orphan::probe_traced()
        })
        .join()
        .unwrap();
        eprintln!("{r:?}");
        assert!(!r.safe, "{r:?}");
        assert!(
            r.detail.starts_with(
                "could not check whether orphans can be reset: SOCK_DESTROY on our own test \
                 socket failed with EPERM"
            ),
            "{}",
            r.detail
        );
        assert!(r.detail.contains("CAP_NET_ADMIN"), "{}", r.detail);
        // The test orphan (it was built: the refusal came at SOCK_DESTROY) is gone.
        assert_ne!(cookie, 0);
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Some((_, d)) = find_by_cookie(cookie).unwrap() {
            assert!(Instant::now() < deadline, "test orphan left behind: {d:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Unblocks and joins a writer thread even if the test fails half-way.
    struct Writer {
        sock: TcpStream,
        handle: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Writer {
        fn drop(&mut self) {
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    #[test]
    fn destroy_many_resets_a_batch_and_refuses_a_wrong_cookie() {
        if !require_root("destroy_many_resets_a_batch_and_refuses_a_wrong_cookie") {
            return;
        }
        // More pairs than one datagram holds, so the batching boundary is crossed.
        let n = DESTROY_BATCH + 6;
        let pairs: Vec<_> = (0..n).map(|_| loopback_pair().unwrap()).collect();
        let mut targets: Vec<Target> = pairs
            .iter()
            .map(|(_, _, s)| target_of(s, AF_INET))
            .collect();
        // One target names a live 4-tuple with a wrong cookie: it must not be touched.
        let wrong = 3;
        targets[wrong].cookie ^= 0x5a5a;
        let mut d = Destroyer::new();
        let results = d.destroy_many(&targets);
        assert_eq!(results.len(), n);
        for (i, r) in results.iter().enumerate() {
            if i == wrong {
                let e = r.as_ref().expect_err("wrong cookie must be refused");
                assert_eq!(e.errno, libc::ENOENT, "{e}");
            } else {
                r.as_ref().unwrap_or_else(|e| panic!("target {i}: {e}"));
            }
        }
        for (i, (_, _, server)) in pairs.iter().enumerate() {
            let err = server.take_error().unwrap();
            if i == wrong {
                assert!(err.is_none(), "the wrong-cookie socket was reset");
                let mut w = server;
                w.write_all(b"still alive")
                    .expect("wrong-cookie socket still writable");
            } else {
                assert_eq!(
                    err.and_then(|e| e.raw_os_error()),
                    Some(libc::ECONNABORTED),
                    "socket {i} not aborted"
                );
            }
        }
    }

    #[test]
    fn blocked_writer_gets_econnaborted() {
        if !require_root("blocked_writer_gets_econnaborted") {
            return;
        }
        let (_l, _client, server) = loopback_pair().unwrap();
        let t = target_of(&server, AF_INET);
        let (tx, rx) = mpsc::channel();
        let mut wsock = server.try_clone().unwrap();
        let handle = std::thread::spawn(move || {
            let chunk = vec![1u8; 256 * 1024];
            let mut total = 0usize;
            // Bounded: the peer never reads, so this blocks after a few MB.
            let err = loop {
                if total > 1 << 30 {
                    break io::Error::other("wrote 1 GiB without blocking");
                }
                match wsock.write(&chunk) {
                    Ok(n) => total += n,
                    Err(e) => break e,
                }
            };
            let _ = tx.send((err, Instant::now()));
        });
        let _writer = Writer {
            sock: server.try_clone().unwrap(),
            handle: Some(handle),
        };
        let mut d = Destroyer::new();
        // Wait until the writer is stuck: send queue non-empty and not growing.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = 0;
        loop {
            let info = d.lookup(&t).unwrap().expect("socket visible");
            if info.send_q > 0 && info.send_q == last {
                break;
            }
            last = info.send_q;
            assert!(Instant::now() < deadline, "writer never blocked");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(rx.try_recv().is_err(), "writer not blocked");
        let start = Instant::now();
        d.destroy(&t).unwrap();
        let (err, at) = rx
            .recv_timeout(Duration::from_secs(1))
            .expect("blocked send() did not return within 1 s of SOCK_DESTROY");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        eprintln!(
            "blocked send() returned ECONNABORTED after {:?}",
            at.duration_since(start)
        );
        assert_eq!(d.lookup(&t).unwrap(), None, "socket still in the tables");
        // Destroying again: already gone.
        let e = d.destroy(&t).unwrap_err();
        assert_eq!((e.errno, e.stage), (libc::ENOENT, "reply"));
    }

    #[test]
    fn wrong_cookie_does_not_kill() {
        if !require_root("wrong_cookie_does_not_kill") {
            return;
        }
        let (_l, mut client, mut server) = loopback_pair().unwrap();
        let t = target_of(&server, AF_INET);
        let mut d = Destroyer::new();
        for wrong in [t.cookie + 1, t.cookie ^ (1 << 40)] {
            let bad = Target {
                cookie: wrong,
                ..t.clone()
            };
            let e = d.destroy(&bad).unwrap_err();
            // The kernel maps sock_diag_check_cookie's ESTALE to ENOENT.
            assert_eq!((e.errno, e.stage), (libc::ENOENT, "reply"), "{e}");
            assert_eq!(d.lookup(&bad).unwrap(), None);
        }
        // Still alive and working both ways.
        assert!(server.take_error().unwrap().is_none());
        let info = d.lookup(&t).unwrap().expect("socket still there");
        assert_eq!(info.state, 1);
        server.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        client
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        // And the right cookie still works.
        d.destroy(&t).unwrap();
        assert_aborted(&server);
    }

    #[test]
    fn lookup_reports_cookie_state_and_bytes_acked() {
        if !require_root("lookup_reports_cookie_state_and_bytes_acked") {
            return;
        }
        let (_l, mut client, mut server) = loopback_pair().unwrap();
        let t = target_of(&server, AF_INET);
        let n = 100_000usize;
        server.write_all(&vec![7u8; n]).unwrap();
        assert_eq!(
            read_available(&mut client, n, Duration::from_secs(2)).unwrap(),
            n
        );
        let mut d = Destroyer::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        let info = loop {
            let info = d.lookup(&t).unwrap().expect("socket visible");
            if info.unacked == 0 && info.send_q == 0 {
                break info;
            }
            assert!(Instant::now() < deadline, "data never acked: {info:?}");
            std::thread::sleep(Duration::from_millis(5));
        };
        eprintln!("{info:?}");
        assert_eq!(info.cookie, t.cookie);
        assert_eq!(info.state, 1, "ESTABLISHED");
        assert_eq!(info.family, AF_INET);
        assert_eq!(info.local, t.local);
        assert_eq!(info.remote, t.remote);
        // The passive side's bytes_acked counts data only (its SYN-ACK is not counted).
        assert_eq!(info.bytes_acked, n as u64);
        assert_eq!(info.notsent_bytes, 0);
        assert!(
            info.tcp_info_len >= 232,
            "kernel tcp_info {} bytes",
            info.tcp_info_len
        );
        assert!(info.has_snd_wnd() && info.snd_wnd > 0);
        assert_eq!(info.backoff, 0);
        assert!(info.inode > 0);
        // The client side sent nothing: bytes_acked is just its SYN.
        let ct = target_of(&client, AF_INET);
        let cinfo = d.lookup(&ct).unwrap().expect("client visible");
        assert_eq!(cinfo.cookie, ct.cookie);
        assert_eq!(cinfo.bytes_acked, 1);
        assert_eq!(cinfo.bytes_received, n as u64);
        // Cookie 0 means "any cookie".
        let any = d
            .lookup(&Target {
                cookie: 0,
                ..t.clone()
            })
            .unwrap()
            .unwrap();
        assert_eq!(any.cookie, t.cookie);
    }

    #[test]
    fn ipv4_mapped_ipv6_socket_is_destroyed() {
        if !require_root("ipv4_mapped_ipv6_socket_is_destroyed") {
            return;
        }
        let listener = match TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("SKIP ipv4_mapped_ipv6_socket_is_destroyed: no IPv6 ({e})");
                return;
            }
        };
        let port = listener.local_addr().unwrap().port();
        let mut d = Destroyer::new();
        for as_plain_v4 in [false, true] {
            let _client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            let (server, _) = listener.accept().unwrap();
            let mut t = target_of(&server, AF_INET6);
            assert!(matches!(t.local.ip(), IpAddr::V6(a) if a.to_ipv4_mapped().is_some()));
            if as_plain_v4 {
                t.local = SocketAddr::new(v4_of(t.local.ip()).unwrap().into(), t.local.port());
                t.remote = SocketAddr::new(v4_of(t.remote.ip()).unwrap().into(), t.remote.port());
            }
            let info = d.lookup(&t).unwrap().expect("mapped socket visible");
            assert_eq!((info.family, info.cookie), (AF_INET6, t.cookie));
            // Each encoding on its own reaches the socket (AF_INET6 + ::ffff: addresses
            // first; plain AF_INET is the fallback for older kernels).
            let ids = wire_ids(&t).unwrap();
            assert_eq!(ids.len(), 2);
            for id in &ids {
                match d
                    .transact(&t, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, id, 2)
                    .unwrap()
                {
                    Reply::Diag(i) => assert_eq!(i.cookie, t.cookie, "family {}", id.family),
                    other => panic!("family {}: {other:?}", id.family),
                }
            }
            d.destroy(&t).unwrap();
            assert_aborted(&server);
        }
        // Pure IPv6 over ::1.
        let l6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        let _c6 = TcpStream::connect(l6.local_addr().unwrap()).unwrap();
        let (s6, _) = l6.accept().unwrap();
        let t6 = target_of(&s6, AF_INET6);
        d.destroy(&t6).unwrap();
        assert_aborted(&s6);
    }

    /// A named network namespace (and an optional process in it) removed on drop.
    struct TestNetns {
        name: String,
        child: Option<Child>,
    }

    impl TestNetns {
        fn create() -> TestNetns {
            let name = format!("tcpstall-rt-{}", std::process::id());
            let _ = run_ip(&["netns", "del", &name]); // leftover of a crashed run
            let ns = TestNetns { name, child: None };
            run_ip(&["netns", "add", &ns.name]).expect("ip netns add");
            run_ip(&["-n", &ns.name, "link", "set", "lo", "up"]).expect("ip link set lo up");
            ns
        }

        fn path(&self) -> PathBuf {
            PathBuf::from(format!("/run/netns/{}", self.name))
        }

        /// Run `f` on a thread that has entered this namespace.
        fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let file = fs::File::open(self.path()).unwrap();
            std::thread::spawn(move || {
                // SAFETY: valid namespace fd; affects only this thread.
                assert_eq!(
                    unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                f()
            })
            .join()
            .unwrap()
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = run_ip(&["netns", "del", &self.name]);
        }
    }

    fn run_ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ip {args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    #[test]
    fn socket_in_other_netns_is_destroyed() {
        if !require_root("socket_in_other_netns_is_destroyed") {
            return;
        }
        let mut ns = TestNetns::create();
        let ino = fs::metadata(ns.path()).unwrap().ino() as u32;
        assert_ne!(ino, current_netns().unwrap());
        let pairs: Vec<(TcpListener, TcpStream, TcpStream)> =
            ns.run_in(|| (0..3).map(|_| loopback_pair().unwrap()).collect());
        let targets: Vec<Target> = pairs
            .iter()
            .map(|(_, _, s)| Target {
                netns: ino,
                pid_hint: None,
                ..target_of(s, AF_INET)
            })
            .collect();

        // Not visible from our own namespace.
        let mut own = Destroyer::new();
        let here = Target {
            netns: 0,
            ..targets[0].clone()
        };
        assert_eq!(own.lookup(&here).unwrap(), None);
        assert_eq!(own.destroy(&here).unwrap_err().errno, libc::ENOENT);

        // Via /run/netns.
        let mut d = Destroyer::new();
        let info = d
            .lookup(&targets[0])
            .unwrap()
            .expect("visible in its netns");
        assert_eq!(info.cookie, targets[0].cookie);
        d.destroy(&targets[0]).unwrap();
        assert_aborted(&pairs[0].2);
        assert_eq!(d.cached_netns(), 1);

        // A process in the namespace, then the /run/netns name removed: found via the
        // pid hint and via the /proc scan.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "30"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        ns.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(2);
        while fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| m.ino())
            .ok()
            != Some(ino.into())
        {
            assert!(
                Instant::now() < deadline,
                "child never entered the namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        run_ip(&["netns", "del", &ns.name]).unwrap();
        assert!(!ns.path().exists());
        let mut d = Destroyer::new();
        let hinted = Target {
            pid_hint: Some(pid),
            ..targets[1].clone()
        };
        d.destroy(&hinted).unwrap();
        assert_aborted(&pairs[1].2);
        let mut d = Destroyer::new();
        assert!(d.lookup(&targets[2]).unwrap().is_some());
        let (fd, path) = open_netns(ino, None).unwrap();
        assert_eq!(fs::File::from(fd).metadata().unwrap().ino(), u64::from(ino));
        assert!(path.starts_with("/proc"), "{}", path.display());

        // The process gone: the namespace (kept alive by our sockets only) is unreachable.
        let mut c = ns.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        let e = Destroyer::new().destroy(&targets[2]).unwrap_err();
        assert_eq!((e.errno, e.stage), (libc::ENOENT, "netns"), "{e}");
        assert!(e.meaning.contains("not found"), "{}", e.meaning);
        // The cached socket from before still reaches it.
        d.destroy(&targets[2]).unwrap();
        assert_aborted(&pairs[2].2);
        d.forget_netns(ino);
        assert_eq!(d.cached_netns(), 0);
    }
}

/// Real-kernel test fixtures shared by this module's and [`crate::manual`]'s tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    /// True if the test may touch the kernel; prints why not otherwise. Under CI=true a
    /// missing root is a failure, not a skip.
    pub(crate) fn require_root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and CI=true");
        }
        eprintln!("SKIP {test}: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)");
        false
    }

    /// A connected 127.0.0.1 pair in the calling thread's namespace:
    /// (listener, client, accepted server side).
    pub(crate) fn pair() -> (TcpListener, TcpStream, TcpStream) {
        loopback_pair().expect("loopback pair")
    }

    /// A pair with fixed ports: the listener on 127.0.0.1:`server_port`, the client bound
    /// to 127.0.0.1:`client_port` (for the same 4-tuple in two namespaces).
    pub(crate) fn pair_on(
        server_port: u16,
        client_port: u16,
    ) -> (TcpListener, TcpStream, TcpStream) {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, server_port)).expect("bind listener");
        // SAFETY: plain socket calls on a fresh descriptor; results are checked.
        let client = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let client = TcpStream::from_raw_fd(fd);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                4,
            );
            let sin = |port: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let local = sin(client_port);
            assert_eq!(
                libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
                0,
                "bind client: {}",
                io::Error::last_os_error()
            );
            let remote = sin(server_port);
            assert_eq!(
                libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len),
                0,
                "connect: {}",
                io::Error::last_os_error()
            );
            client
        };
        let (server, _) = listener.accept().expect("accept");
        (listener, client, server)
    }

    /// Bytes in the send queue of `s` (`SIOCOUTQ`).
    pub(crate) fn outq(s: &TcpStream) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int.
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        assert_eq!(rc, 0, "SIOCOUTQ: {}", io::Error::last_os_error());
        n as usize
    }

    /// A wedged connection: the client never reads, a writer thread on the server side is
    /// blocked in `write` with the send queue full. Dropping it unblocks and joins the
    /// writer and closes everything.
    pub(crate) struct Wedged {
        pub(crate) _listener: TcpListener,
        pub(crate) client: TcpStream,
        pub(crate) server: TcpStream,
        rx: mpsc::Receiver<io::Error>,
        handle: Option<std::thread::JoinHandle<()>>,
    }

    impl Wedged {
        /// Wedge `(listener, client, server)`; returns once the writer is blocked.
        pub(crate) fn new(parts: (TcpListener, TcpStream, TcpStream)) -> Wedged {
            let (listener, client, server) = parts;
            let (tx, rx) = mpsc::channel();
            let mut w = server.try_clone().expect("clone server");
            let handle = std::thread::spawn(move || {
                let chunk = vec![1u8; 256 * 1024];
                let mut total = 0usize;
                // Bounded: the peer never reads, so this blocks after a few MB.
                let err = loop {
                    if total > 1 << 30 {
                        break io::Error::other("wrote 1 GiB without blocking");
                    }
                    match w.write(&chunk) {
                        Ok(n) => total += n,
                        Err(e) => break e,
                    }
                };
                let _ = tx.send(err);
            });
            let wedged = Wedged {
                _listener: listener,
                client,
                server,
                rx,
                handle: Some(handle),
            };
            // Blocked: the send queue is non-empty and stops growing.
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut last = 0;
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let q = outq(&wedged.server);
                if q > 0 && q == last {
                    break;
                }
                last = q;
                assert!(
                    Instant::now() < deadline,
                    "writer never blocked (queue {q})"
                );
            }
            assert!(
                wedged.writer_error(Duration::ZERO).is_none(),
                "writer not blocked"
            );
            wedged
        }

        /// The error the blocked `write` returned, if it returned within `timeout`.
        pub(crate) fn writer_error(&self, timeout: Duration) -> Option<io::Error> {
            self.rx.recv_timeout(timeout).ok()
        }
    }

    impl Drop for Wedged {
        fn drop(&mut self) {
            let _ = self.server.shutdown(std::net::Shutdown::Both);
            let _ = self.client.shutdown(std::net::Shutdown::Both);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    /// A named network namespace (`ip netns add NAME`, loopback up), deleted on drop.
    pub(crate) struct TestNetns {
        pub(crate) name: String,
    }

    impl TestNetns {
        pub(crate) fn create(name: &str) -> TestNetns {
            let _ = run_ip(&["netns", "del", name]); // leftover of a crashed run
            let ns = TestNetns {
                name: name.to_string(),
            };
            run_ip(&["netns", "add", name]).expect("ip netns add");
            run_ip(&["-n", name, "link", "set", "lo", "up"]).expect("ip link set lo up");
            ns
        }

        pub(crate) fn path(&self) -> PathBuf {
            PathBuf::from(format!("/run/netns/{}", self.name))
        }

        pub(crate) fn ino(&self) -> u32 {
            fs::metadata(self.path()).expect("netns file").ino() as u32
        }

        /// Run `f` on a thread that has entered this namespace.
        pub(crate) fn run_in<T: Send + 'static>(
            &self,
            f: impl FnOnce() -> T + Send + 'static,
        ) -> T {
            let file = fs::File::open(self.path()).expect("open netns");
            std::thread::spawn(move || {
                // SAFETY: valid namespace fd; affects only this thread.
                assert_eq!(
                    unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                    0,
                    "setns: {}",
                    io::Error::last_os_error()
                );
                f()
            })
            .join()
            .expect("netns thread panicked")
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = run_ip(&["netns", "del", &self.name]);
        }
    }

    pub(crate) fn run_ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ip {args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

#[cfg(test)]
mod find_tests {
    use super::test_support::*;
    use super::*;

    fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn diag_msg(family: u8, sport: u16, cookie: u64) -> Vec<u8> {
        let mut p = vec![family, 1, 0, 0];
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&[127, 0, 0, 1]);
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&[127, 0, 0, 2]);
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&0u32.to_ne_bytes());
        p.extend_from_slice(&(cookie as u32).to_ne_bytes());
        p.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        for v in [0u32, 0, 123, 0, 99] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        p
    }

    #[test]
    fn dump_datagrams_collect_until_done() {
        let mut out = Vec::new();
        let mut dg = nlmsg(SOCK_DIAG_BY_FAMILY, 5, &diag_msg(2, 80, 0x1_0000_0002));
        dg.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 4, &diag_msg(2, 81, 9))); // stale: skipped
        dg.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 5, &diag_msg(2, 82, 7)));
        assert!(!parse_dump_datagram(&dg, 5, &mut out).unwrap());
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].cookie, out[0].local.port()), (0x1_0000_0002, 80));
        assert_eq!((out[1].cookie, out[1].send_q), (7, 123));
        let done = nlmsg(NLMSG_DONE, 5, &0i32.to_ne_bytes());
        assert!(parse_dump_datagram(&done, 5, &mut out).unwrap());
        assert_eq!(out.len(), 2);
        // A dump that failed part-way reports its errno in NLMSG_DONE.
        let failed = nlmsg(NLMSG_DONE, 5, &(-libc::ENOBUFS).to_ne_bytes());
        assert_eq!(
            parse_dump_datagram(&failed, 5, &mut out).unwrap_err().errno,
            libc::ENOBUFS
        );
        // An error instead of data (e.g. no IPv6 handler).
        let mut e = (-libc::ENOENT).to_ne_bytes().to_vec();
        e.extend_from_slice(&[0; 16]);
        let err = parse_dump_datagram(&nlmsg(NLMSG_ERROR, 5, &e), 5, &mut out).unwrap_err();
        assert_eq!((err.errno, err.stage), (libc::ENOENT, "reply"));
        // Lying length.
        let mut bad = nlmsg(SOCK_DIAG_BY_FAMILY, 5, &diag_msg(2, 80, 1));
        bad[0] = 255;
        assert_eq!(
            parse_dump_datagram(&bad, 5, &mut out).unwrap_err().errno,
            libc::EPROTO
        );
    }

    #[test]
    fn endpoints_compare_across_mapped_forms() {
        let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let m: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert!(same_endpoint(a, m) && same_endpoint(m, a) && same_endpoint(a, a));
        assert!(!same_endpoint(a, "127.0.0.1:81".parse().unwrap()));
        assert!(!same_endpoint(a, "127.0.0.2:80".parse().unwrap()));
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert!(same_endpoint(v6, v6));
        assert!(!same_endpoint(v6, a));
        assert!(!same_endpoint("[::1]:80".parse().unwrap(), a));
    }

    #[test]
    fn netns_ref_pid_from_path() {
        let r = |p: &str| NetnsRef {
            ino: 1,
            path: PathBuf::from(p),
        };
        assert_eq!(r("/proc/123/ns/net").pid(), Some(123));
        assert_eq!(r("/proc/7/task/9/ns/net").pid(), Some(7));
        assert_eq!(r("/run/netns/x").pid(), None);
        assert_eq!(r("/proc/self/ns/net").pid(), None);
    }

    #[test]
    fn netns_files_are_checked() {
        let own = netns_at(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(own.ino, current_netns().unwrap());
        let e = netns_at(Path::new("/etc/hostname")).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.meaning.contains("not a namespace"), "{}", e.meaning);
        let e = netns_at(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert!(e.meaning.contains("another type"), "{}", e.meaning);
        let e = netns_at(Path::new("/nonexistent/tcpstall")).unwrap_err();
        assert_eq!(e.errno, libc::ENOENT);
        assert!(e.meaning.contains("/run/netns/NAME"), "{}", e.meaning);
        let all = all_netns();
        assert_eq!(all.first().map(|n| n.ino), Some(own.ino));
        let mut inos: Vec<u32> = all.iter().map(|n| n.ino).collect();
        inos.sort_unstable();
        inos.dedup();
        assert_eq!(inos.len(), all.len(), "namespaces listed twice");
    }

    /// Own-namespace dumps need no privilege: sock_diag dumps are readable by anyone.
    #[test]
    fn dump_finds_own_sockets_by_cookie_and_tuple() {
        let (_l, client, server) = pair();
        let cookie = socket_cookie(server.as_raw_fd()).unwrap();
        let own = own_netns().unwrap();
        let s = find_sockets_in(std::slice::from_ref(&own), false, |d| d.cookie == cookie);
        assert_eq!((s.searched, s.failed.len(), s.found.len()), (1, 0, 1));
        let (t, d) = &s.found[0];
        assert_eq!(t.cookie, cookie);
        assert_eq!(t.netns, own.ino);
        assert_eq!(
            (t.local, t.remote),
            (server.local_addr().unwrap(), server.peer_addr().unwrap())
        );
        assert_eq!((d.state, d.family), (1, AF_INET));
        assert!(d.tcp_info_len > 0, "no tcp_info in the dump");
        let (found, _) = find_by_cookie(cookie).unwrap().expect("found by cookie");
        assert_eq!(found.cookie, cookie);
        // By tuple, in the mapped spelling, restricted to our namespace.
        let mapped = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        let v = find_by_tuple(
            mapped(client.local_addr().unwrap()),
            mapped(client.peer_addr().unwrap()),
            Some(own.ino),
        )
        .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0.cookie, socket_cookie(client.as_raw_fd()).unwrap());
        // A closed socket is not found.
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(1);
        while find_sockets_in(std::slice::from_ref(&own), true, |d| d.cookie == cookie)
            .found
            .iter()
            .any(|(_, d)| d.state == 1)
        {
            assert!(Instant::now() < deadline, "closed socket still ESTABLISHED");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn dump_and_destroy_in_another_netns() {
        if !require_root("dump_and_destroy_in_another_netns") {
            return;
        }
        let ns = TestNetns::create(&format!("tcpstall-fd-{}", std::process::id()));
        let ino = ns.ino();
        let (l, client, server) = ns.run_in(pair);
        let cookie = socket_cookie(server.as_raw_fd()).unwrap();
        // Not in our own namespace; found by searching all of them.
        let own = own_netns().unwrap();
        assert!(
            find_sockets_in(std::slice::from_ref(&own), false, |d| d.cookie == cookie)
                .found
                .is_empty()
        );
        let (t, d) = find_by_cookie(cookie)
            .unwrap()
            .expect("found in the other netns");
        assert_eq!((t.netns, d.cookie), (ino, cookie));
        let v = find_by_tuple(
            server.local_addr().unwrap(),
            server.peer_addr().unwrap(),
            None,
        )
        .unwrap();
        assert!(
            v.iter().any(|(t, _)| t.netns == ino && t.cookie == cookie),
            "{v:?}"
        );
        let s = find_sockets(Some(ino), |d| d.cookie == cookie).unwrap();
        assert_eq!((s.searched, s.found.len()), (1, 1));
        // Through the /run/netns file with an attached destroyer.
        let r = netns_at(&ns.path()).unwrap();
        assert_eq!(r.ino, ino);
        let mut dz = Destroyer::new();
        dz.attach_netns(&r).unwrap();
        assert_eq!(dz.cached_netns(), 1);
        dz.destroy(&t).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match server.take_error().unwrap() {
                Some(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
                    break;
                }
                None => {
                    assert!(Instant::now() < deadline, "not aborted");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        drop((l, client, server));
        // An unknown inode is reported, not searched silently.
        let e = find_sockets(Some(1), |_| true).unwrap_err();
        assert_eq!((e.errno, e.stage), (libc::ENOENT, "netns"));
    }
}
