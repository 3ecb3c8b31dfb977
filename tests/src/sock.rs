//! Thin wrappers over the socket and process calls the tests need that `std` does not offer.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// `SO_COOKIE` (not in every libc version's constants).
const SO_COOKIE: libc::c_int = 57;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the given size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The kernel's socket cookie (`getsockopt(SOL_SOCKET, SO_COOKIE)`), what the agent reports
/// as `cookie`.
pub fn cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: v/len describe a u64 buffer.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            &mut v as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(v)
}

/// Set `SO_SNDBUF` (the kernel doubles it and stops auto-tuning the send buffer).
pub fn set_sndbuf(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        &(bytes as libc::c_int),
    )
}

/// Set `SO_RCVBUF` (before connect, so the window scale matches).
pub fn set_rcvbuf(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        &(bytes as libc::c_int),
    )
}

/// `SO_LINGER {on, 0}`: the last close() aborts the connection with a RST and the socket goes
/// straight to TCP_CLOSE instead of lingering as an orphan with its queue.
pub fn set_linger_zero(fd: &impl AsRawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

/// `shutdown(fd, how)` that ignores "not connected" (the peer or the agent may have reset it).
pub fn shutdown(fd: &impl AsRawFd, how: libc::c_int) {
    // SAFETY: plain syscall on a descriptor we own.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), how);
    }
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; we write the variant matching the family.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Connect a blocking TCP socket to `addr` within `timeout`, with `SO_RCVBUF` set first when
/// `rcvbuf` is given. The socket lives in the network namespace of the calling thread.
pub fn connect(
    addr: SocketAddr,
    rcvbuf: Option<usize>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let (fd, in_progress) = begin_connect(addr, |fd| match rcvbuf {
        Some(b) => set_rcvbuf(fd, b),
        None => Ok(()),
    })?;
    if in_progress {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {addr} did not complete within {timeout:?}"),
                ));
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n > 0 {
                break;
            }
        }
        let mut err: libc::c_int = 0;
        let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err/elen describe an int buffer.
        cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut elen,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Start a non-blocking connect to `addr` and return at once (the handshake goes on in the
/// kernel), with `TCP_SYNCNT` set to `syncnt` when given: the kernel sends the SYN, then
/// that many retransmits, and fails the connect with ETIMEDOUT (SYNCNT 1: after ~3 s).
/// The socket lives in the network namespace of the calling thread.
pub fn start_connect(addr: SocketAddr, syncnt: Option<i32>) -> io::Result<OwnedFd> {
    let (fd, _) = begin_connect(addr, |fd| match syncnt {
        Some(n) => setsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_SYNCNT, &n),
        None => Ok(()),
    })?;
    Ok(fd)
}

/// A fresh non-blocking TCP socket of `addr`'s family, set up by `prepare`, with a connect
/// to `addr` started: `true` while the handshake is still in progress. The socket lives in
/// the network namespace of the calling thread.
fn begin_connect(
    addr: SocketAddr,
    prepare: impl FnOnce(&OwnedFd) -> io::Result<()>,
) -> io::Result<(OwnedFd, bool)> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    prepare(&fd)?;
    match connect_to(&fd, addr) {
        Ok(()) => Ok((fd, false)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((fd, true)),
        Err(e) => Err(e),
    }
}

/// `connect(2)` of `fd` to `addr` (blocking or not, as `fd` is).
pub fn connect_to(fd: &impl AsRawFd, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(&addr);
    // SAFETY: ss/len describe a valid socket address.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    })
    .map(drop)
}

/// `bind(2)` of `fd` to `addr`.
pub fn bind(fd: &impl AsRawFd, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(&addr);
    // SAFETY: ss/len describe a valid socket address.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    })
    .map(drop)
}

/// Name the calling thread (`prctl(PR_SET_NAME)`), which is the `comm` the kernel reports
/// for it. At most 15 bytes are kept.
pub fn set_thread_name(name: &str) -> io::Result<()> {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: buf is NUL-terminated and outlives the call.
    cvt(unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Inode of the network namespace of the calling thread (what the agent reports as `netns`).
pub fn current_netns_inode() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Name of an errno value for messages ("ECONNABORTED (103)").
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        libc::ENOTCONN => "ENOTCONN",
        _ => return format!("errno {errno}"),
    };
    format!("{name} ({errno})")
}

/// `getsockopt(IPPROTO_TCP, TCP_INFO)`.
pub fn tcp_info(fd: &impl AsRawFd) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(info)
}

/// Bytes in the send queue, sent or not, not yet acknowledged (`ioctl(SIOCOUTQ)`).
pub fn send_queue(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) })?;
    Ok(n.max(0) as u64)
}

/// Bytes received and not yet read by the application (`ioctl(SIOCINQ)`).
pub fn recv_queue(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD (= SIOCINQ) writes one int.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(n.max(0) as u64)
}
