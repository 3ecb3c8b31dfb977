//! Finding sockets: `sock_diag` dumps across network namespaces ([`dump_tcp`],
//! [`find_sockets`]), used by `tcpstall reset`.

use super::*;

// ---------------------------------------------------------------------------------------
// Finding sockets: `sock_diag` dumps across network namespaces.
//
// An operator names a socket by its cookie (from a tcpstall event or `ss -e`) or by its
// 4-tuple, usually without knowing its network namespace. [`find_sockets`] dumps every TCP
// socket (`SOCK_DIAG_BY_FAMILY` with `NLM_F_DUMP`, `AF_INET` and `AF_INET6`, all states,
// with `INET_DIAG_INFO`) in each namespace it can reach and keeps those a predicate accepts.
// Dumps are read-only and cheap (about 1 µs per socket); the namespaces are the caller's
// own, every `/run/netns/*` and every distinct `/proc/*/ns/net`.

/// Receive buffer for dump replies (the kernel fills at most 32 KiB per datagram).
pub(super) const DUMP_BUF_LEN: usize = 64 * 1024;
/// Upper bound on dumping one namespace (both families).
pub(super) const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

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
pub(super) fn dump_family(
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
pub(super) fn parse_dump_datagram(
    buf: &[u8],
    seq: u32,
    out: &mut Vec<TcpDiag>,
) -> Result<bool, ResetError> {
    let done = walk_messages(buf, |ty, mseq, payload| {
        if mseq != seq {
            return Ok(None);
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
                return Ok(Some(()));
            }
            NLMSG_ERROR => match ack_errno(payload)? {
                0 => return Ok(Some(())),
                errno => return Err(ResetError::new("reply", errno, errno_meaning(errno))),
            },
            NLMSG_OVERRUN => {
                return Err(ResetError::new(
                    "reply",
                    libc::ENOBUFS,
                    "the kernel reported a netlink overrun during the socket dump; retry",
                ))
            }
            _ => return Err(malformed("unexpected netlink message type in a dump")),
        }
        Ok(None)
    })?;
    Ok(done.is_some())
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
