//! Start-up self-test: may *orphaned* sockets be reset on this kernel?
//!
//! An orphan is a socket the application has already closed but the kernel still holds,
//! for example FIN_WAIT1 with data queued to a peer that advertises a zero window (the FIN
//! waits behind the data). Before the kernel fix "tcp: fix forever orphan socket caused by
//! tcp_abort" (Linux 6.11, backported to stable kernels), `tcp_abort` (what SOCK_DESTROY
//! calls) did not close an orphan: it only purged the write queue. The zero-window probe
//! and retransmit timers then had nothing to send, did not re-arm, and the socket stayed
//! in FIN_WAIT1 with no timer for ever (until a RST from the peer, if one ever comes).
//!
//! Kernel versions say little (distributions backport), so [`orphan_probe`] decides by
//! behaviour: it builds such an orphan of its own on 127.0.0.1, destroys it and watches
//! whether it leaves the socket tables. The decision ([`classify`]) is a pure function of
//! what was observed ([`Observation`]).
//!
//! Seen (Debian kernels under QEMU, and this project's 6.18 host): 6.18 and 6.1.192 (which
//! has the backport) free the orphan within a few milliseconds of SOCK_DESTROY; 5.10.251
//! (without it) keeps it in FIN-WAIT-1, its zero-window probe timer gone after it fires
//! once, Send-Q unchanged. Either way the test's own client then closes with a RST, which
//! the orphan accepts, so the probe leaves nothing behind.

use super::*;
use rustix::net::{self, sockopt};

/// `SO_RCVBUF` of the test client (the kernel doubles it): the window closes after a few KB.
const CLIENT_RCVBUF: usize = 4096;
/// `SO_SNDBUF` of the test server socket: a few KB stay queued behind the closed window.
const SERVER_SNDBUF: usize = 4096;
/// Upper bound on what the test writes before the kernel refuses more.
const FILL_LIMIT: usize = 1 << 20;
/// How long the closed socket may take to show up as a zero-window FIN_WAIT1 orphan.
const SETUP_WAIT: Duration = Duration::from_millis(300);
/// How long a destroyed orphan may stay in the tables before the kernel is judged unfixed.
const GONE_WAIT: Duration = Duration::from_millis(300);
/// How long to watch whether our own client's RST removes an orphan that stayed.
const CLEANUP_WAIT: Duration = Duration::from_millis(100);
/// sock_diag polling interval (one exact lookup costs tens of microseconds).
const POLL_EVERY: Duration = Duration::from_millis(1);

const TCP_FIN_WAIT1: u8 = 4;
const TCP_CLOSE: u8 = 7;
/// `idiag_timer` value of the zero-window probe timer (`ICSK_TIME_PROBE0`).
const TIMER_PROBE0: u8 = 4;

/// Result of [`orphan_probe`]: may orphaned sockets be reset on this kernel?
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OrphanReport {
    /// `true` only when a destroyed test orphan was seen to leave the socket tables.
    /// `false` when it stayed, and also whenever the test could not run or was refused
    /// (never reset orphans without having checked).
    pub safe: bool,
    /// One line for the operator: what was seen and what it means.
    pub detail: String,
}

/// What sock_diag showed of the test socket at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// TCP state.
    pub(crate) state: u8,
    /// `idiag_timer`: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe.
    pub(crate) timer: u8,
    /// Milliseconds until that timer fires.
    pub(crate) timer_expires_ms: u32,
    /// Send-Q: bytes written and not acked (`write_seq - snd_una`; on an unfixed kernel it
    /// keeps its value after SOCK_DESTROY purged the queue).
    pub(crate) send_q: u32,
    /// No `struct socket` any more (inode 0): the application closed it.
    pub(crate) orphan: bool,
}

impl Seen {
    fn of(d: &TcpDiag) -> Seen {
        Seen {
            state: d.state,
            timer: d.timer,
            timer_expires_ms: d.timer_expires_ms,
            send_q: d.send_q,
            orphan: d.inode == 0,
        }
    }

    /// Whether this is the orphan the test needs: closed, FIN_WAIT1, data queued behind a
    /// zero window, zero-window probe timer armed.
    fn is_zero_window_orphan(&self) -> bool {
        self.orphan && self.state == TCP_FIN_WAIT1 && self.timer == TIMER_PROBE0 && self.send_q > 0
    }

    fn timer_text(&self) -> String {
        let name = match self.timer {
            0 => return "no timer".to_string(),
            1 => "retransmit timer",
            2 => "keepalive timer",
            3 => "TIME_WAIT timer",
            4 => "zero-window probe timer",
            _ => "timer",
        };
        let name = if self.timer > 4 {
            format!("{name} {}", self.timer)
        } else {
            name.to_string()
        };
        format!("{name} (due in {} ms)", self.timer_expires_ms)
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}, {}, Send-Q {}",
            if self.orphan { "orphan, " } else { "" },
            tcp_state_name(self.state),
            self.timer_text(),
            self.send_q
        )
    }
}

/// What [`orphan_probe`] observed; [`classify`] turns it into the verdict.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Observation {
    /// The test orphan could not be built or confirmed; nothing was destroyed.
    Setup(String),
    /// The kernel refused a sock_diag request about our own socket (`request` names it).
    Refused {
        request: &'static str,
        errno: i32,
        meaning: String,
    },
    /// SOCK_DESTROY was acknowledged and the orphan left the tables `after` the request
    /// (`saw_close`: it was seen in CLOSE on the way).
    Gone {
        before: Seen,
        after: Duration,
        saw_close: bool,
    },
    /// SOCK_DESTROY was acknowledged but the orphan was still there `waited` later, last
    /// seen as `last`. `removed_by_peer_reset`: closing our own client (which sends a RST)
    /// removed it afterwards.
    Stayed {
        before: Seen,
        last: Seen,
        waited: Duration,
        removed_by_peer_reset: bool,
    },
}

const NEVER: &str = "orphans are never reset";
const FIX: &str = "'tcp: fix forever orphan socket caused by tcp_abort', 6.11";

/// `"0.12 ms"`, `"3.0 ms"`: enough digits for sub-millisecond times.
fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 1.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// The verdict on what [`orphan_probe`] observed. Only [`Observation::Gone`] is safe.
pub(crate) fn classify(o: &Observation) -> OrphanReport {
    match o {
        Observation::Gone {
            before,
            after,
            saw_close,
        } => OrphanReport {
            safe: true,
            detail: format!(
                "orphan destroyed cleanly (kernel has the tcp_abort orphan fix): orphans may \
                 be reset [test orphan: {before}; gone {}{} after SOCK_DESTROY]",
                ms(*after),
                if *saw_close { ", via CLOSE," } else { "" }
            ),
        },
        Observation::Stayed {
            before,
            last,
            waited,
            removed_by_peer_reset,
        } => {
            let aftermath = if *removed_by_peer_reset {
                "the RST of our own test peer removed it afterwards, nothing is left behind"
                    .to_string()
            } else {
                "it is still there and userspace can do nothing more: the kernel keeps it \
                 (this happens once per agent start); a kernel with the fix (6.11 or later, \
                 or a stable kernel with the backport) lets tcpstall reset orphans"
                    .to_string()
            };
            OrphanReport {
                safe: false,
                detail: format!(
                    "destroyed orphan stayed in {} with {} (kernel lacks {FIX}): {NEVER} \
                     [test orphan before: {before}; {} after SOCK_DESTROY: {last}; \
                     {aftermath}]",
                    tcp_state_name(last.state),
                    last.timer_text(),
                    ms(*waited),
                ),
            }
        }
        Observation::Refused {
            request,
            errno,
            meaning,
        } => OrphanReport {
            safe: false,
            detail: format!(
                "could not check whether orphans can be reset: {request} on our own test \
                 socket failed with {} (errno {errno}): {meaning}; {NEVER}",
                errno_name(*errno)
            ),
        },
        Observation::Setup(why) => OrphanReport {
            safe: false,
            detail: format!(
                "could not check whether orphans can be reset: {why}; {NEVER} (on kernels \
                 without {FIX} a reset orphan can stay for ever)"
            ),
        },
    }
}

/// Start-up self-test: may orphaned sockets be reset here (see the module documentation)?
///
/// Builds a loopback pair of its own whose client never reads (small receive buffer) and
/// whose server socket has data queued behind the zero window, closes the server socket so
/// it becomes a FIN_WAIT1 orphan with its zero-window probe timer armed, destroys it with
/// SOCK_DESTROY and polls sock_diag for up to 300 ms. `safe` is true only if it left the
/// tables. Needs CAP_NET_ADMIN (otherwise `safe` is false and `detail` says why). Takes a
/// few milliseconds on a fixed kernel, about 0.4 s on an unfixed one; every descriptor is
/// closed on return (the client with a RST).
pub fn orphan_probe() -> OrphanReport {
    probe_traced().0
}

/// [`orphan_probe`], also returning the cookie of the test socket (0 if none was made).
pub(crate) fn probe_traced() -> (OrphanReport, u64) {
    let start = Instant::now();
    let mut cookie = 0;
    let obs = match try_observe(&mut cookie) {
        Ok(o) | Err(o) => o,
    };
    let report = classify(&obs);
    log::debug!(
        "orphan reset self-test took {} (test socket cookie {cookie:#x}): {obs:?}",
        ms(start.elapsed())
    );
    (report, cookie)
}

/// A test socket that is closed with a RST (`SO_LINGER` 0) when dropped, so an early
/// return never leaves an orphan behind. [`ResetOnDrop::close_gracefully`] closes it the
/// ordinary way instead.
struct ResetOnDrop(Option<TcpStream>);

impl ResetOnDrop {
    fn get(&self) -> &TcpStream {
        self.0.as_ref().expect("socket present until dropped")
    }

    fn close_gracefully(mut self) {
        drop(self.0.take());
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            // Abort on close (RST), not an orderly FIN: nothing is left behind.
            let _ = sockopt::set_socket_linger(&s, Some(Duration::ZERO));
        }
    }
}

/// A client connected to `to` whose receive buffer is set before `connect`, so the window
/// it advertises from the SYN on stays small.
fn small_window_client(to: SocketAddr) -> io::Result<TcpStream> {
    let fd = net::socket_with(
        net::AddressFamily::INET,
        net::SocketType::STREAM,
        net::SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_recv_buffer_size(&fd, CLIENT_RCVBUF)?;
    let SocketAddr::V4(v4) = to else {
        return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    };
    loop {
        match net::connect(&fd, &v4) {
            Ok(()) => return Ok(TcpStream::from(fd)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn setup_err(what: &'static str) -> impl FnOnce(io::Error) -> Observation {
    move |e| Observation::Setup(format!("could not {what}: {e}"))
}

fn refused(request: &'static str, e: ResetError) -> Observation {
    Observation::Refused {
        request,
        errno: e.errno,
        // The kernel's verdict: its general meaning (the socket is our own test socket).
        meaning: if e.stage == "reply" {
            errno_meaning(e.errno)
        } else {
            e.meaning
        },
    }
}

/// Poll sock_diag for `t` every [`POLL_EVERY`] until `done` accepts what it sees (`None`:
/// not in the tables) or `limit` passes; returns the last answer.
fn poll_lookup(
    d: &mut Destroyer,
    t: &Target,
    limit: Duration,
    mut done: impl FnMut(Option<&TcpDiag>) -> bool,
) -> Result<Option<TcpDiag>, ResetError> {
    let deadline = Instant::now() + limit;
    loop {
        let now = d.lookup(t)?;
        if done(now.as_ref()) || Instant::now() >= deadline {
            return Ok(now);
        }
        std::thread::sleep(POLL_EVERY);
    }
}

fn try_observe(cookie_out: &mut u64) -> Result<Observation, Observation> {
    use Observation::Setup;
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(setup_err("listen on 127.0.0.1"))?;
    let addr = listener
        .local_addr()
        .map_err(setup_err("read the test listener's address"))?;
    let client = ResetOnDrop(Some(
        small_window_client(addr).map_err(setup_err("connect a test client on 127.0.0.1"))?,
    ));
    listener
        .set_nonblocking(true)
        .map_err(setup_err("make the test listener non-blocking"))?;
    let accept_deadline = Instant::now() + Duration::from_millis(200);
    let server = loop {
        match listener.accept() {
            Ok((s, _)) => break ResetOnDrop(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < accept_deadline => {
                std::thread::sleep(POLL_EVERY)
            }
            Err(e) => return Err(setup_err("accept the test connection")(e)),
        }
    };
    drop(listener);
    let s = server.get();
    sockopt::set_socket_send_buffer_size(s, SERVER_SNDBUF)
        .map_err(io::Error::from)
        .map_err(setup_err("shrink the test socket's send buffer"))?;
    s.set_nonblocking(true)
        .map_err(setup_err("make the test socket non-blocking"))?;

    // Fill: the client never reads, so its window closes and the rest stays queued here.
    let chunk = [0x5au8; 16 * 1024];
    let fill_deadline = Instant::now() + Duration::from_millis(200);
    let mut written = 0usize;
    let mut w = s;
    loop {
        match w.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(setup_err("fill the test connection")(e)),
        }
        if written >= FILL_LIMIT || Instant::now() >= fill_deadline {
            return Err(Setup(format!(
                "the test connection kept accepting data ({written} bytes) although its peer \
                 never reads"
            )));
        }
    }

    let target = Target {
        cookie: socket_cookie(s).map_err(setup_err("read SO_COOKIE"))?,
        netns: current_netns().map_err(setup_err("read /proc/thread-self/ns/net"))?,
        family: AF_INET,
        local: s
            .local_addr()
            .map_err(setup_err("read the test socket's address"))?,
        remote: s
            .peer_addr()
            .map_err(setup_err("read the test socket's peer"))?,
        pid_hint: Some(std::process::id()),
        ifindex: 0,
    };
    *cookie_out = target.cookie;
    let mut d = Destroyer::new();
    // Our own open socket must be visible; if not, sock_diag has no TCP handler.
    match d.lookup(&target) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(Observation::Refused {
                request: "a sock_diag lookup",
                errno: libc::ENOENT,
                meaning: "sock_diag does not show our own open socket, so it has no TCP \
                    handler: the tcp_diag (and inet_diag) kernel modules are not loaded; \
                    load them with `modprobe tcp_diag`"
                    .to_string(),
            })
        }
        Err(e) => return Err(refused("a sock_diag lookup", e)),
    }

    // Close it: the kernel keeps it as an orphan in FIN_WAIT1 (the FIN waits behind the
    // queued data). No data was ever received on it, so close() sends no RST.
    server.close_gracefully();
    let seen = poll_lookup(&mut d, &target, SETUP_WAIT, |now| match now {
        Some(x) => Seen::of(x).is_zero_window_orphan(),
        None => true,
    })
    .map_err(|e| refused("a sock_diag lookup", e))?;
    let before = match seen {
        Some(x) if Seen::of(&x).is_zero_window_orphan() => Seen::of(&x),
        Some(x) => {
            return Err(Setup(format!(
                "the closed test socket did not become a FIN-WAIT-1 orphan with data queued \
                 behind a zero window within {} (seen: {}; {written} bytes written)",
                ms(SETUP_WAIT),
                Seen::of(&x)
            )))
        }
        None => {
            return Err(Setup(format!(
                "the kernel freed the closed test socket at once instead of keeping it as \
                 an orphan ({written} bytes written)"
            )))
        }
    };

    let start = Instant::now();
    match d.destroy(&target) {
        Ok(()) => {}
        // It was there a moment ago, so sock_diag works: the orphan itself went away.
        Err(e) if e.errno == libc::ENOENT && e.stage == "reply" => {
            return Err(Setup(
                "the test orphan disappeared on its own just before SOCK_DESTROY".to_string(),
            ))
        }
        Err(e) => return Err(refused("SOCK_DESTROY", e)),
    }
    let mut saw_close = false;
    let after = poll_lookup(&mut d, &target, GONE_WAIT, |now| match now {
        Some(x) => {
            saw_close |= x.state == TCP_CLOSE;
            false
        }
        None => true,
    })
    .map_err(|e| refused("a sock_diag lookup after SOCK_DESTROY", e))?;
    let waited = start.elapsed();
    let Some(last) = after else {
        return Ok(Observation::Gone {
            before,
            after: waited,
            saw_close,
        });
    };

    // Unfixed kernel: the orphan stays. Our client never read its data, so closing it
    // sends a RST, which the orphan (still in FIN_WAIT1) accepts and dies of.
    drop(client);
    let removed_by_peer_reset = matches!(
        poll_lookup(&mut d, &target, CLEANUP_WAIT, |now| now.is_none()),
        Ok(None)
    );
    Ok(Observation::Stayed {
        before,
        last: Seen::of(&last),
        waited,
        removed_by_peer_reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero_window_orphan() -> Seen {
        Seen {
            state: TCP_FIN_WAIT1,
            timer: TIMER_PROBE0,
            timer_expires_ms: 200,
            send_q: 8192,
            orphan: true,
        }
    }

    #[test]
    fn gone_is_safe() {
        let r = classify(&Observation::Gone {
            before: zero_window_orphan(),
            after: Duration::from_micros(120),
            saw_close: false,
        });
        assert!(r.safe);
        assert!(
            r.detail.starts_with(
                "orphan destroyed cleanly (kernel has the tcp_abort orphan fix): orphans may \
                 be reset"
            ),
            "{}",
            r.detail
        );
        assert!(
            r.detail.contains(
                "test orphan: orphan, FIN-WAIT-1, zero-window probe timer (due in 200 ms), \
                 Send-Q 8192; gone 0.12 ms after SOCK_DESTROY"
            ),
            "{}",
            r.detail
        );
        let r = classify(&Observation::Gone {
            before: zero_window_orphan(),
            after: Duration::from_millis(3),
            saw_close: true,
        });
        assert!(
            r.safe && r.detail.contains("gone 3.0 ms, via CLOSE,"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn stayed_is_unsafe_and_names_the_fix() {
        let last = Seen {
            timer: 0,
            timer_expires_ms: 0,
            send_q: 0,
            ..zero_window_orphan()
        };
        let r = classify(&Observation::Stayed {
            before: zero_window_orphan(),
            last,
            waited: Duration::from_millis(300),
            removed_by_peer_reset: false,
        });
        assert!(!r.safe);
        assert!(
            r.detail.starts_with(
                "destroyed orphan stayed in FIN-WAIT-1 with no timer (kernel lacks 'tcp: fix \
                 forever orphan socket caused by tcp_abort', 6.11): orphans are never reset"
            ),
            "{}",
            r.detail
        );
        assert!(r
            .detail
            .contains("300.0 ms after SOCK_DESTROY: orphan, FIN-WAIT-1, no timer, Send-Q 0"));
        assert!(
            r.detail.contains("userspace can do nothing more"),
            "{}",
            r.detail
        );
        assert!(r.detail.contains("once per agent start"), "{}", r.detail);
        // The probe timer may still be pending when the poll ends; the peer RST cleaned up.
        let r = classify(&Observation::Stayed {
            before: zero_window_orphan(),
            last: Seen {
                send_q: 0,
                timer_expires_ms: 150,
                ..zero_window_orphan()
            },
            waited: Duration::from_millis(301),
            removed_by_peer_reset: true,
        });
        assert!(!r.safe);
        assert!(
            r.detail.starts_with(
                "destroyed orphan stayed in FIN-WAIT-1 with zero-window probe timer (due in \
                 150 ms) (kernel lacks"
            ),
            "{}",
            r.detail
        );
        assert!(r.detail.contains("nothing is left behind"), "{}", r.detail);
        assert!(
            !r.detail.contains("userspace can do nothing"),
            "{}",
            r.detail
        );
        // Lingering in CLOSE is not "gone" either.
        let r = classify(&Observation::Stayed {
            before: zero_window_orphan(),
            last: Seen {
                state: TCP_CLOSE,
                timer: 0,
                ..zero_window_orphan()
            },
            waited: Duration::from_millis(300),
            removed_by_peer_reset: false,
        });
        assert!(
            !r.safe && r.detail.contains("stayed in UNCONN"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn refused_and_setup_failures_are_unsafe() {
        let r = classify(&Observation::Refused {
            request: "SOCK_DESTROY",
            errno: libc::EPERM,
            meaning: errno_meaning(libc::EPERM),
        });
        assert!(!r.safe);
        assert!(
            r.detail.starts_with(
                "could not check whether orphans can be reset: SOCK_DESTROY on our own test \
                 socket failed with EPERM (errno 1): not permitted"
            ),
            "{}",
            r.detail
        );
        assert!(r.detail.contains("CAP_NET_ADMIN"), "{}", r.detail);
        assert!(
            r.detail.ends_with("; orphans are never reset"),
            "{}",
            r.detail
        );
        let r = classify(&Observation::Refused {
            request: "SOCK_DESTROY",
            errno: libc::EOPNOTSUPP,
            meaning: errno_meaning(libc::EOPNOTSUPP),
        });
        assert!(!r.safe && r.detail.contains("EOPNOTSUPP"), "{}", r.detail);
        assert!(
            r.detail.contains("CONFIG_INET_DIAG_DESTROY"),
            "{}",
            r.detail
        );
        let r = classify(&Observation::Setup(
            "the kernel freed the closed test socket at once".into(),
        ));
        assert!(!r.safe);
        assert!(
            r.detail.starts_with(
                "could not check whether orphans can be reset: the kernel freed the closed \
                 test socket at once; orphans are never reset"
            ),
            "{}",
            r.detail
        );
        assert!(
            r.detail.contains("tcp: fix forever orphan socket"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn seen_describes_state_timer_and_queue() {
        assert!(zero_window_orphan().is_zero_window_orphan());
        for not in [
            Seen {
                orphan: false,
                ..zero_window_orphan()
            },
            Seen {
                timer: 1,
                ..zero_window_orphan()
            },
            Seen {
                send_q: 0,
                ..zero_window_orphan()
            },
            Seen {
                state: 5,
                ..zero_window_orphan()
            },
        ] {
            assert!(!not.is_zero_window_orphan(), "{not:?}");
        }
        let s = Seen {
            state: 1,
            timer: 1,
            timer_expires_ms: 204,
            send_q: 10,
            orphan: false,
        };
        assert_eq!(
            s.to_string(),
            "ESTAB, retransmit timer (due in 204 ms), Send-Q 10"
        );
        let s = Seen { timer: 9, ..s };
        assert_eq!(s.timer_text(), "timer 9 (due in 204 ms)");
    }

    #[test]
    fn report_serializes_like_reset_path() {
        let r = OrphanReport {
            safe: true,
            detail: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"safe":true,"detail":"x"}"#
        );
    }
}
