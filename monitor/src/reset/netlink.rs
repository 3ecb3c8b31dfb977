//! Netlink socket I/O: sending requests, receiving replies with a deadline, opening a
//! `NETLINK_SOCK_DIAG` socket in the calling thread's namespace.

use super::*;
use rustix::io::Errno;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::os::fd::BorrowedFd;

/// How long to wait for the kernel's answer. The kernel handles sock_diag requests
/// synchronously inside `sendmsg`, so the reply is normally queued before `send` returns.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// Receive buffer: an exact lookup reply is well under 1 KiB.
pub(super) const RECV_BUF_LEN: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------
// Netlink socket I/O.

/// Borrow a descriptor the caller keeps open for the call (the destroyer's socket cache).
fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: every caller passes a descriptor it owns and keeps open during the call; the
    // borrow does not outlive the call.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

pub(super) fn send_request(fd: RawFd, msg: &[u8]) -> Result<(), ResetError> {
    let kernel = SocketAddrNetlink::new(0, 0);
    loop {
        match rustix::net::sendto(borrow(fd), msg, SendFlags::empty(), &kernel) {
            Ok(n) if n != msg.len() => {
                return Err(ResetError::new(
                    "send",
                    libc::EMSGSIZE,
                    format!("netlink send was cut short ({n} of {} bytes)", msg.len()),
                ))
            }
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => {
                let errno = e.raw_os_error();
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
}

pub(super) fn recv_reply(fd: RawFd, seq: u32, buf: &mut [u8]) -> Result<Reply, ResetError> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let n = recv_datagram(fd, buf, deadline)?;
        if let Some(reply) = parse_datagram(&buf[..n], seq)? {
            return Ok(reply);
        }
    }
}

/// Receive one datagram from the kernel (others are skipped) before `deadline`.
pub(super) fn recv_datagram(
    fd: RawFd,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<usize, ResetError> {
    let timed_out = || ResetError::new("reply", libc::ETIMEDOUT, errno_meaning(libc::ETIMEDOUT));
    loop {
        if Instant::now() >= deadline {
            return Err(timed_out());
        }
        let (n, from) = match rustix::net::recvfrom(borrow(fd), &mut *buf, RecvFlags::TRUNC) {
            Ok((_, n, from)) => (n, from),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Err(timed_out()),
            Err(e) => {
                let errno = e.raw_os_error();
                return Err(ResetError::new(
                    "reply",
                    errno,
                    format!(
                        "recvfrom on the NETLINK_SOCK_DIAG socket: {}",
                        errno_meaning(errno)
                    ),
                ));
            }
        };
        if n > buf.len() {
            return Err(ResetError::new(
                "reply",
                libc::EMSGSIZE,
                errno_meaning(libc::EMSGSIZE),
            ));
        }
        let from_kernel = from
            .and_then(|a| SocketAddrNetlink::try_from(a).ok())
            .is_none_or(|a| a.pid() == 0);
        if !from_kernel {
            continue; // not from the kernel
        }
        return Ok(n);
    }
}

/// Open a `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
pub(super) fn open_diag_socket_here() -> Result<OwnedFd, ResetError> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(rustix::net::netlink::SOCK_DIAG),
    )
    .map_err(|e| {
        let errno = e.raw_os_error();
        ResetError::new(
            "socket",
            errno,
            format!(
                "socket(AF_NETLINK, NETLINK_SOCK_DIAG): {}",
                errno_meaning(errno)
            ),
        )
    })?;
    for which in [Timeout::Recv, Timeout::Send] {
        set_socket_timeout(&fd, which, Some(REPLY_TIMEOUT)).map_err(|e| {
            ResetError::new(
                "socket",
                e.raw_os_error(),
                format!(
                    "setting a timeout on the NETLINK_SOCK_DIAG socket: {}",
                    io::Error::from(e)
                ),
            )
        })?;
    }
    Ok(fd)
}
