//! Netlink socket I/O: sending requests, receiving replies with a deadline, opening a
//! `NETLINK_SOCK_DIAG` socket in the calling thread's namespace.

use super::*;

/// How long to wait for the kernel's answer. The kernel handles sock_diag requests
/// synchronously inside `sendmsg`, so the reply is normally queued before `send` returns.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// Receive buffer: an exact lookup reply is well under 1 KiB.
pub(super) const RECV_BUF_LEN: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------
// Netlink socket I/O.

pub(super) fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

pub(super) fn send_request(fd: RawFd, msg: &[u8]) -> Result<(), ResetError> {
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
pub(super) fn open_diag_socket_here() -> Result<OwnedFd, ResetError> {
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
