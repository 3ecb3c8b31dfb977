use super::*;
use std::os::fd::FromRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// Start of a test that touches the kernel: fails without root. Such tests carry
/// `#[cfg_attr(not(root_tests), ignore = ...)]` (`build.rs` sets `root_tests` when building
/// as root or under `CI=true`), so without root they show as ignored instead of passing.
pub(crate) fn require_root(test: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{test}: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    );
}

/// A connected 127.0.0.1 pair in the calling thread's namespace:
/// (listener, client, accepted server side).
pub(crate) fn pair() -> (TcpListener, TcpStream, TcpStream) {
    loopback_pair().expect("loopback pair")
}

/// A pair with fixed ports: the listener on 127.0.0.1:`server_port`, the client bound
/// to 127.0.0.1:`client_port` (for the same 4-tuple in two namespaces).
pub(crate) fn pair_on(server_port: u16, client_port: u16) -> (TcpListener, TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, server_port)).expect("bind listener");
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

/// Write to `w` until a write fails (the peer never reads, so it blocks first after a few
/// MB): the error, or one of its own after 1 GiB without blocking.
pub(crate) fn write_until_error(w: &mut TcpStream) -> io::Error {
    let chunk = vec![1u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        if total > 1 << 30 {
            return io::Error::other("wrote 1 GiB without blocking");
        }
        match w.write(&chunk) {
            Ok(n) => total += n,
            Err(e) => return e,
        }
    }
}

/// `server` and `client` still talk: a ping from the server arrives at the client.
pub(crate) fn assert_talks(server: &mut TcpStream, client: &mut TcpStream) {
    use std::io::Read;
    server.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
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
            let _ = tx.send(write_until_error(&mut w));
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
    pub(crate) fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
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
