//! The start-up self-test ([`self_probe`]): destroy a wedged connection of our own.

use super::*;

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

pub(super) type ProbeFailure = (i32, String);

pub(super) fn io_fail(what: &str, e: io::Error) -> ProbeFailure {
    (
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("self-test could not {what}: {e}; running observe-only"),
    )
}

/// Build a connected 127.0.0.1 pair: (listener, client, accepted server side).
pub(super) fn loopback_pair() -> io::Result<(TcpListener, TcpStream, TcpStream)> {
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

pub(super) fn probe_inner() -> Result<Duration, ProbeFailure> {
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
    let cookie =
        socket_cookie(&server).map_err(|e| io_fail("read SO_COOKIE of the test socket", e))?;
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
