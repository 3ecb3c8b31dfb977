//! What is reset ([`Target`]), how it fails ([`ResetError`]) and what each errno means.

use super::*;

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

    pub(super) fn new(stage: &'static str, errno: i32, meaning: impl Into<String>) -> ResetError {
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

pub(super) fn kernel_error(errno: i32, t: &Target) -> ResetError {
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

/// Symbolic name of an errno as events show it (`"ECONNABORTED"`, `"EMFILE"`; `"OK"` for 0,
/// `"errno"` for a number the C library has no name for).
pub fn errno_name(errno: i32) -> String {
    match nix::errno::Errno::from_raw(errno) {
        _ if errno == 0 => "OK".to_string(),
        nix::errno::Errno::UnknownErrno => "errno".to_string(),
        e => format!("{e:?}"),
    }
}
