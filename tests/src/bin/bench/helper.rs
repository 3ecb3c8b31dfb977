//! What the benchmark's helper processes (`holder`, `streamer`, `wedge`) share: their
//! `--key value` arguments (clap), the commands on their stdin, socket options, a small-window
//! connect, batched loopback connection set-up and epoll.

use anyhow::{anyhow, bail, Context, Result};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Connections set up per connect/accept batch (below any listen backlog).
const BATCH: usize = 100;

/// Parse a helper's `--key value` arguments into its clap-derived `A`; `who` names the helper
/// in usage and errors.
pub fn parse_args<A: clap::Parser>(who: &str, args: &[String]) -> Result<A> {
    A::try_parse_from(std::iter::once(who).chain(args.iter().map(String::as_str)))
        .map_err(|e| anyhow!("{who}: {}", e.render().to_string().trim_end()))
}

/// A positive count or size.
pub fn positive_usize() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// A `--…-s` value: whole seconds.
pub fn secs(v: &str) -> Result<Duration, std::num::ParseIntError> {
    v.parse().map(Duration::from_secs)
}

/// A `--…-ms` value: positive whole milliseconds.
pub fn positive_ms(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(0) => Err("must be positive".into()),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(e) => Err(e.to_string()),
    }
}

/// The command lines arriving on stdin (fd 0, which the caller watches with epoll).
#[derive(Default)]
pub struct Commands {
    /// Bytes of a line not complete yet.
    partial: Vec<u8>,
}

impl Commands {
    /// Read what stdin holds now: the lines it completes, trimmed; `None` at end of input.
    pub fn read(&mut self) -> Option<Vec<String>> {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a valid buffer from stdin.
        let r = unsafe { libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if r <= 0 {
            return None;
        }
        self.partial.extend_from_slice(&buf[..r as usize]);
        let mut lines = Vec::new();
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let cmd: Vec<u8> = self.partial.drain(..=pos).collect();
            lines.push(String::from_utf8_lossy(&cmd).trim().to_string());
        }
        Some(lines)
    }
}

/// send(2) of `buf` on `fd` with MSG_NOSIGNAL and `flags`: the byte count, or -1 with errno
/// set (the helpers read errno themselves, to tell EAGAIN from a reset).
pub fn send(fd: RawFd, buf: &[u8], flags: libc::c_int) -> isize {
    // SAFETY: `buf` is a valid buffer of `buf.len()` bytes for the duration of the call.
    unsafe {
        libc::send(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            flags | libc::MSG_NOSIGNAL,
        )
    }
}

/// setsockopt of an int-sized option; `what` names it in the error.
pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: u32,
    what: &str,
) -> Result<()> {
    let v = v as libc::c_uint;
    // SAFETY: valid socket fd and a correctly sized option value.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("setsockopt({what}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// SO_LINGER {on, 0}: close sends RST, so tearing down 100k connections leaves no TIME_WAIT.
pub fn linger_zero(fd: RawFd) -> Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized option value.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A blocking IPv4 connect from a socket whose SO_RCVBUF is set first, so the window it
/// announces in its SYN (and so the sender's segment size goal) is small from the start.
pub fn connect_small(to: SocketAddrV4, rcvbuf: u32) -> Result<TcpStream> {
    // SAFETY: plain syscall; the fd is wrapped in OwnedFd right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf, "SO_RCVBUF")?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid sockaddr_in of the given length.
    let r = unsafe {
        libc::connect(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("connect to {to}: {}", std::io::Error::last_os_error());
    }
    Ok(TcpStream::from(owned))
}

/// `n` connections to `listener` (bound at `to`), connected and accepted in batches below
/// any listen backlog: (clients, servers). `connect` makes one client, `accepted` prepares
/// one server socket; `who` names the helper in errors.
pub fn connect_batched(
    listener: &TcpListener,
    to: impl std::fmt::Display,
    n: usize,
    who: &str,
    mut connect: impl FnMut() -> Result<TcpStream>,
    mut accepted: impl FnMut(&TcpStream) -> Result<()>,
) -> Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let mut clients = Vec::with_capacity(n);
    let mut servers = Vec::with_capacity(n);
    while clients.len() < n {
        let b = BATCH.min(n - clients.len());
        for _ in 0..b {
            let c = connect()
                .with_context(|| format!("{who}: connection {} to {to}", clients.len() + 1))?;
            clients.push(c);
        }
        for _ in 0..b {
            let (s, _) = listener
                .accept()
                .with_context(|| format!("{who}: accept"))?;
            accepted(&s)?;
            servers.push(s);
        }
    }
    Ok((clients, servers))
}

/// An epoll instance.
pub struct Epoll(pub RawFd);

impl Epoll {
    /// A new epoll fd (close-on-exec).
    pub fn new() -> Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    /// Watch `fd` for input (level-triggered).
    pub fn add(&self, fd: RawFd, token: u64) -> Result<()> {
        self.add_events(fd, libc::EPOLLIN as u32, token)
    }

    /// Watch `fd` for `events` (`EPOLL*` bits).
    pub fn add_events(&self, fd: RawFd, events: u32, token: u64) -> Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid fds and event struct.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            bail!("epoll_ctl(ADD): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout_ms` for events; `None` when a signal interrupted the wait.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> Result<Option<usize>> {
        // SAFETY: events buffer valid for its length.
        let n = unsafe {
            libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, timeout_ms)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(None);
            }
            bail!("epoll_wait: {e}");
        }
        Ok(Some(n as usize))
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}
