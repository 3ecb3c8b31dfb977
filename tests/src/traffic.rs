//! TCP traffic with a known shape: a server whose writer thread (`comm` "tswriter") pushes the
//! deterministic [`stream`](crate::stream) in blocking 64 KiB `send()` calls and records how
//! each ended, and clients that never read, read at a pace, read as fast as they can, pause
//! once, or sit idle, verifying every byte they receive.
//!
//! Every thread here is bounded in time ([`MAX_LIFETIME`]), is told to stop through a flag and
//! by shutting its socket down, and is joined with a bounded wait.

use crate::netns::NetNs;
use crate::sock;
use crate::stream::{self, Verifier};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Size of one writer `send()` call.
pub const CHUNK: usize = 64 * 1024;
/// No helper thread runs longer than this, whatever the test does.
pub const MAX_LIFETIME: Duration = Duration::from_secs(180);
/// The writer threads' name, the `comm` the agent must report.
pub const WRITER_COMM: &str = "tswriter";
/// Bound on connect and accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A helper thread that reports its exit on a channel, so it can be joined with a timeout.
struct Task {
    handle: Option<JoinHandle<()>>,
    done: Mutex<mpsc::Receiver<()>>,
    name: String,
}

impl Task {
    fn spawn(name: &str, stack: usize, f: impl FnOnce() + Send + 'static) -> io::Result<Task> {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(stack)
            .spawn(move || {
                // Sent when the closure returns or unwinds.
                struct Done(mpsc::Sender<()>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        let _ = self.0.send(());
                    }
                }
                let _done = Done(tx);
                f()
            })?;
        Ok(Task {
            handle: Some(handle),
            done: Mutex::new(rx),
            name: name.to_string(),
        })
    }

    /// Wait up to `timeout` for the thread to end; detach it if it does not.
    fn join(&mut self, timeout: Duration) -> Result<(), String> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        let done = lock(&self.done).recv_timeout(timeout);
        match done {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => handle
                .join()
                .map_err(|_| format!("thread {} panicked", self.name)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "thread {} still running after {timeout:?}",
                self.name
            )),
        }
    }
}

/// Sleep up to `d`, in slices, returning early once `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// What the server writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// The stream, as fast as the socket takes it.
    Stream,
    /// The stream, at most this many bytes per second.
    Paced(u64),
    /// The stream as the payload of WebSocket binary frames (one 64 KiB frame per `send()`).
    WsFrames,
}

/// How a writer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by the test, or reached its byte limit.
    Finished,
    /// A `send()` failed.
    Failed {
        /// errno of the failed `send()`.
        errno: i32,
        /// When that `send()` returned.
        at: Instant,
    },
}

#[derive(Default)]
struct WriterState {
    bytes: AtomicU64,
    in_send_since: Mutex<Option<Instant>>,
    outcome: Mutex<Option<Outcome>>,
}

/// The server's writer thread on one connection.
pub struct Writer {
    state: Arc<WriterState>,
    stop: Arc<AtomicBool>,
    task: Task,
}

impl Writer {
    /// Start writing `mode` with stream `seed` on (a clone of) `stream`, at most `limit`
    /// stream bytes. The thread is named [`WRITER_COMM`].
    pub fn spawn(
        stream: &TcpStream,
        mode: WriteMode,
        seed: u64,
        limit: Option<u64>,
    ) -> io::Result<Writer> {
        let mut s = stream.try_clone()?;
        let state = Arc::new(WriterState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let task = Task::spawn(WRITER_COMM, 256 * 1024, move || {
            // std already names the thread; say it explicitly, it is what the agent reports.
            let _ = sock::set_thread_name(WRITER_COMM);
            write_loop(&mut s, mode, seed, limit, &st, &sp);
        })?;
        Ok(Writer { state, stop, task })
    }

    /// Stream bytes accepted by `send()` so far.
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(Ordering::Relaxed)
    }

    /// Start of the `send()` call in progress, if one is.
    pub fn in_send_since(&self) -> Option<Instant> {
        *lock(&self.state.in_send_since)
    }

    /// Wait until a `send()` has been blocked for at least `min`; returns when that call
    /// started (the moment the writer blocked). None if none blocked within `timeout` or the
    /// writer ended.
    pub fn wait_blocked(&self, min: Duration, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(since) = self.in_send_since() {
                if since.elapsed() >= min {
                    return Some(since);
                }
            }
            if self.outcome().is_some() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How the writer ended, if it has.
    pub fn outcome(&self) -> Option<Outcome> {
        *lock(&self.state.outcome)
    }

    /// Wait up to `timeout` for the writer to end.
    pub fn wait_outcome(&self, timeout: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(o) = self.outcome() {
                return Some(o);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ask the writer to stop after its current `send()`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn join(&mut self, timeout: Duration) -> Result<(), String> {
        self.stop();
        self.task.join(timeout)
    }
}

fn write_loop(
    s: &mut TcpStream,
    mode: WriteMode,
    seed: u64,
    limit: Option<u64>,
    st: &WriterState,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    let header: &[u8] = match mode {
        // FIN + binary opcode, unmasked, 16-bit extended length.
        WriteMode::WsFrames => &[
            0x82,
            126,
            ((CHUNK - 4) >> 8) as u8,
            ((CHUNK - 4) & 0xff) as u8,
        ],
        _ => &[],
    };
    let payload_len = CHUNK - header.len();
    let mut buf = vec![0u8; CHUNK];
    buf[..header.len()].copy_from_slice(header);
    // Stream bytes of every completed chunk.
    let mut offset: u64 = 0;
    let outcome = 'chunks: loop {
        if stop.load(Ordering::Relaxed) || started.elapsed() > MAX_LIFETIME {
            break Outcome::Finished;
        }
        let want = match limit {
            Some(l) if offset >= l => break Outcome::Finished,
            // A frame always carries a whole payload; a plain stream stops at the limit.
            Some(l) if mode != WriteMode::WsFrames => (l - offset).min(payload_len as u64) as usize,
            _ => payload_len,
        };
        stream::fill(seed, offset, &mut buf[header.len()..header.len() + want]);
        let chunk = &buf[..header.len() + want];
        let mut pos = 0;
        while pos < chunk.len() {
            *lock(&st.in_send_since) = Some(Instant::now());
            let r = s.write(&chunk[pos..]);
            let now = Instant::now();
            *lock(&st.in_send_since) = None;
            match r {
                Ok(n) => {
                    pos += n;
                    let payload_done = pos.saturating_sub(header.len()) as u64;
                    st.bytes.store(offset + payload_done, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    break 'chunks Outcome::Failed {
                        errno: e.raw_os_error().unwrap_or(0),
                        at: now,
                    };
                }
            }
        }
        offset += want as u64;
        if let WriteMode::Paced(bps) = mode {
            let due = Duration::from_secs_f64(offset as f64 / bps.max(1) as f64);
            sleep_unless(stop, due.saturating_sub(started.elapsed()));
        }
    };
    *lock(&st.outcome) = Some(outcome);
}

// ---------------------------------------------------------------------------------------------
// Reader (client side)
// ---------------------------------------------------------------------------------------------

/// How a client reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Never reads (no thread at all): the receive queue fills, the window closes.
    Never,
    /// Reads as fast as data arrives.
    Fast,
    /// Reads at most `chunk` bytes every `every` (e.g. 4 KiB / 62.5 ms = 64 KiB/s).
    Paced {
        /// Bytes per read.
        chunk: usize,
        /// Interval between reads.
        every: Duration,
    },
    /// Reads like `Paced`, but stops reading once for `pause`, `after` its start.
    PausedOnce {
        /// Bytes per read.
        chunk: usize,
        /// Interval between reads.
        every: Duration,
        /// When the pause begins, from the reader's start.
        after: Duration,
        /// How long it does not read.
        pause: Duration,
    },
}

impl ReadMode {
    /// Pace for about `bytes_per_sec`, in reads of 4 KiB.
    pub fn rate(bytes_per_sec: u64) -> ReadMode {
        ReadMode::Paced {
            chunk: 4096,
            every: Duration::from_secs_f64(4096.0 / bytes_per_sec as f64),
        }
    }
}

/// What a reader saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Bytes read.
    pub bytes: u64,
    /// Offset of the first byte that was not the expected stream byte.
    pub first_mismatch: Option<u64>,
    /// Whether it read to end-of-stream.
    pub eof: bool,
    /// errno of a failed read.
    pub error: Option<i32>,
}

#[derive(Default)]
struct ReaderState {
    report: Mutex<ReadReport>,
    /// Read as fast as possible from now on (to drain before the final check).
    drain: AtomicBool,
    /// Do not read until released ([`Reader::hold`]); `drain` and `stop` override it.
    held: AtomicBool,
    stop: AtomicBool,
    /// When the pause of `PausedOnce` began and ended, once it has.
    pause: Mutex<(Option<Instant>, Option<Instant>)>,
}

/// A client's reader thread.
pub struct Reader {
    state: Arc<ReaderState>,
    task: Task,
}

impl Reader {
    /// Start reading (a clone of) `stream` in `mode`, verifying the stream `seed`.
    /// `ReadMode::Never` is not a reader; use no reader for it.
    pub fn spawn(stream: &TcpStream, mode: ReadMode, seed: u64) -> io::Result<Reader> {
        assert!(
            mode != ReadMode::Never,
            "ReadMode::Never has no reader thread"
        );
        let mut s = stream.try_clone()?;
        let state = Arc::new(ReaderState::default());
        let st = Arc::clone(&state);
        let task = Task::spawn("tsreader", 256 * 1024, move || {
            read_loop(&mut s, mode, seed, &st)
        })?;
        Ok(Reader { state, task })
    }

    /// What it has read so far.
    pub fn report(&self) -> ReadReport {
        lock(&self.state.report).clone()
    }

    /// When the pause of a `PausedOnce` reader began and ended.
    pub fn pause_window(&self) -> (Option<Instant>, Option<Instant>) {
        *lock(&self.state.pause)
    }

    /// Switch to reading as fast as possible.
    pub fn drain(&self) {
        self.state.drain.store(true, Ordering::Relaxed);
    }

    /// Stop reading (after the read in progress, if any) until [`Reader::release`]: a
    /// consumer pausing between bursts, for as long as the test decides.
    pub fn hold(&self) {
        self.state.held.store(true, Ordering::Relaxed);
    }

    /// Resume reading in the reader's mode after [`Reader::hold`].
    pub fn release(&self) {
        self.state.held.store(false, Ordering::Relaxed);
    }

    fn join(&mut self, timeout: Duration) -> Result<(), String> {
        self.state.stop.store(true, Ordering::Relaxed);
        self.task.join(timeout)
    }
}

fn read_loop(s: &mut TcpStream, mode: ReadMode, seed: u64, st: &ReaderState) {
    let started = Instant::now();
    let mut verifier = Verifier::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut paused = false;
    loop {
        if st.stop.load(Ordering::Relaxed) || started.elapsed() > MAX_LIFETIME {
            break;
        }
        if st.held.load(Ordering::Relaxed) && !st.drain.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let draining = st.drain.load(Ordering::Relaxed);
        let (chunk, every) = match mode {
            _ if draining => (CHUNK, Duration::ZERO),
            ReadMode::Never | ReadMode::Fast => (CHUNK, Duration::ZERO),
            ReadMode::Paced { chunk, every } => (chunk, every),
            ReadMode::PausedOnce {
                chunk,
                every,
                after,
                pause,
            } => {
                if !paused && started.elapsed() >= after {
                    paused = true;
                    let begin = Instant::now();
                    lock(&st.pause).0 = Some(begin);
                    sleep_unless(&st.drain, pause);
                    lock(&st.pause).1 = Some(Instant::now());
                }
                (chunk, every)
            }
        };
        let t0 = Instant::now();
        match s.read(&mut buf[..chunk.min(CHUNK)]) {
            Ok(0) => {
                lock(&st.report).eof = true;
                break;
            }
            Ok(n) => {
                verifier.update(&buf[..n]);
                let mut r = lock(&st.report);
                r.bytes = verifier.bytes();
                r.first_mismatch = verifier.first_mismatch();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                lock(&st.report).error = Some(e.raw_os_error().unwrap_or(0));
                break;
            }
        }
        if !every.is_zero() {
            sleep_unless(&st.drain, every.saturating_sub(t0.elapsed()));
        }
    }
}

/// Bytes the server received from its client, collected by a thread (for protocol
/// exchanges such as a WebSocket close frame sent while the server is blocked writing). It
/// stops after `limit` bytes: a socket error is reported to only one call, so a reader
/// still blocked on the socket when it is reset could take the ECONNABORTED meant for the
/// writer (which then sees EPIPE).
pub struct Inbox {
    data: Arc<Mutex<InboxData>>,
    task: Task,
}

/// What an [`Inbox`] collected: the bytes, how reading ended (error kind, or end-of-stream
/// or the limit).
#[derive(Default)]
struct InboxData {
    bytes: Vec<u8>,
    error: Option<io::ErrorKind>,
    eof: bool,
}

/// Bound on what an [`Inbox`] keeps.
const INBOX_MAX: usize = 1 << 20;

impl Inbox {
    /// Start collecting what arrives on (a clone of) `stream`, up to `limit` bytes.
    pub fn spawn(stream: &TcpStream, limit: usize) -> io::Result<Inbox> {
        let limit = limit.min(INBOX_MAX);
        let mut s = stream.try_clone()?;
        let data = Arc::new(Mutex::new(InboxData::default()));
        let d = Arc::clone(&data);
        let task = Task::spawn("tsinbox", 128 * 1024, move || {
            let mut buf = [0u8; 4096];
            let started = Instant::now();
            while started.elapsed() < MAX_LIFETIME {
                let want = limit - lock(&d).bytes.len();
                if want == 0 {
                    lock(&d).eof = true;
                    return;
                }
                match s.read(&mut buf[..want.min(4096)]) {
                    Ok(0) => {
                        lock(&d).eof = true;
                        return;
                    }
                    Ok(n) => {
                        lock(&d).bytes.extend_from_slice(&buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        lock(&d).error = Some(e.kind());
                        return;
                    }
                }
            }
        })?;
        Ok(Inbox { data, task })
    }

    /// Everything received so far.
    pub fn bytes(&self) -> Vec<u8> {
        lock(&self.data).bytes.clone()
    }

    /// How reading ended: None while it goes on, `Ok` at end-of-stream or the limit, else
    /// the error kind.
    pub fn end(&self) -> Option<Result<(), io::ErrorKind>> {
        let g = lock(&self.data);
        match (g.eof, g.error) {
            (true, _) => Some(Ok(())),
            (_, Some(kind)) => Some(Err(kind)),
            _ => None,
        }
    }

    /// Wait up to `timeout` for reading to end; see [`Inbox::end`].
    pub fn wait_end(&self, timeout: Duration) -> Option<Result<(), io::ErrorKind>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.end() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until at least `n` bytes arrived; returns them.
    pub fn wait_bytes(&self, n: usize, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let b = self.bytes();
            if b.len() >= n {
                return Some(b);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Ground truth about a server socket's progress, sampled from the kernel (`TCP_INFO`
/// bytes_acked, `SIOCOUTQ`) every [`AckWatch::PERIOD`]: the longest time the socket had data
/// queued while its peer acknowledged nothing. It tells whether a scenario really stayed
/// under (or went over) the stall threshold, independently of the agent.
pub struct AckWatch {
    state: Arc<Mutex<AckState>>,
    stop: Arc<AtomicBool>,
    task: Task,
}

#[derive(Clone, Copy, Debug, Default)]
struct AckState {
    longest_gap: Duration,
    /// Start of the current no-progress stretch (data queued, nothing acked).
    stuck_since: Option<Instant>,
    samples: u64,
}

impl AckWatch {
    /// Sampling period.
    pub const PERIOD: Duration = Duration::from_millis(20);

    /// Start watching (a clone of) `server`.
    pub fn spawn(server: &TcpStream) -> io::Result<AckWatch> {
        let s = server.try_clone()?;
        let state = Arc::new(Mutex::new(AckState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let task = Task::spawn("tsackwatch", 128 * 1024, move || {
            let started = Instant::now();
            let mut last_acked = None;
            while !sp.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFETIME {
                let (Ok(info), Ok(queued)) = (sock::tcp_info(&s), sock::send_queue(&s)) else {
                    return;
                };
                let now = Instant::now();
                let mut g = lock(&st);
                g.samples += 1;
                let progressed = last_acked != Some(info.tcpi_bytes_acked);
                last_acked = Some(info.tcpi_bytes_acked);
                match g.stuck_since {
                    _ if queued == 0 => g.stuck_since = None,
                    Some(since) if !progressed => g.longest_gap = g.longest_gap.max(now - since),
                    _ => g.stuck_since = Some(now),
                }
                drop(g);
                std::thread::sleep(Self::PERIOD);
            }
        })?;
        Ok(AckWatch { state, stop, task })
    }

    /// Longest stretch so far with data queued and no byte acknowledged.
    pub fn longest_gap(&self) -> Duration {
        let g = lock(&self.state);
        let current = g.stuck_since.map(|s| s.elapsed()).unwrap_or_default();
        g.longest_gap.max(current)
    }

    /// Since when the socket has been stuck (data queued, nothing acked), if it is now.
    pub fn stuck_since(&self) -> Option<Instant> {
        lock(&self.state).stuck_since
    }

    fn join(&mut self, timeout: Duration) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.join(timeout)
    }
}

// ---------------------------------------------------------------------------------------------
// Listener and connections
// ---------------------------------------------------------------------------------------------

/// Socket options of one connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnOpts {
    /// Client `SO_RCVBUF`, set before connect.
    pub client_rcvbuf: Option<usize>,
    /// Server `SO_SNDBUF`, set on the accepted socket.
    pub server_sndbuf: Option<usize>,
}

/// A listening socket (in the namespace it was bound in).
pub struct Listener {
    inner: TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Bind and listen on `addr` (port 0 = any) in the calling thread's namespace.
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let inner = TcpListener::bind(addr)?;
        let addr = inner.local_addr()?;
        inner.set_nonblocking(true)?;
        Ok(Listener { inner, addr })
    }

    /// Bind and listen on `addr` inside `ns`.
    pub fn bind_in(ns: &NetNs, addr: SocketAddr) -> io::Result<Listener> {
        ns.run(|| Listener::bind(addr))
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connect a client (from `client_ns`, or the caller's namespace) and accept it. No data
    /// moves yet; see [`Conn::start`].
    pub fn connect(&self, client_ns: Option<&NetNs>, opts: ConnOpts) -> io::Result<Conn> {
        let addr = self.addr;
        let client = match client_ns {
            Some(ns) => ns.run(|| sock::connect(addr, opts.client_rcvbuf, CONNECT_TIMEOUT))?,
            None => sock::connect(addr, opts.client_rcvbuf, CONNECT_TIMEOUT)?,
        };
        let client_addr = client.local_addr()?;
        let server = self.accept_from(client_addr)?;
        if let Some(b) = opts.server_sndbuf {
            sock::set_sndbuf(&server, b)?;
        }
        Ok(Conn {
            server_cookie: sock::cookie(&server)?,
            client_cookie: sock::cookie(&client)?,
            server_addr: server.local_addr()?,
            client_addr,
            server: Some(server),
            client,
            writer: None,
            reader: None,
            inbox: None,
            acks: None,
        })
    }

    fn accept_from(&self, peer: SocketAddr) -> io::Result<TcpStream> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match self.inner.accept() {
                Ok((s, from)) if from == peer => {
                    s.set_nonblocking(false)?;
                    return Ok(s);
                }
                Ok((_, from)) => {
                    return Err(io::Error::other(format!(
                        "accepted a connection from {from}, expected {peer}: something else \
                         connected to the test listener {}",
                        self.addr
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no connection from {peer} arrived at {}", self.addr),
                        ));
                    }
                    let mut pfd = libc::pollfd {
                        fd: self.inner.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 50) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// One accepted connection: both ends, their cookies, and the threads moving data on it.
/// Dropping it stops the threads (shutting both sockets down) and closes both sockets.
pub struct Conn {
    /// The accepted (server) socket: the one the agent is expected to act on. None once
    /// [`Conn::abort_server`] closed it.
    server: Option<TcpStream>,
    /// The client socket.
    pub client: TcpStream,
    /// SO_COOKIE of the server socket.
    pub server_cookie: u64,
    /// SO_COOKIE of the client socket.
    pub client_cookie: u64,
    /// Local address of the server socket.
    pub server_addr: SocketAddr,
    /// Local address of the client socket.
    pub client_addr: SocketAddr,
    writer: Option<Writer>,
    reader: Option<Reader>,
    inbox: Option<Inbox>,
    acks: Option<AckWatch>,
}

/// What [`Conn::finish`] found.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Stream bytes the server's `send()` calls accepted.
    pub written: u64,
    /// What the client read.
    pub read: ReadReport,
}

impl Conn {
    /// The server socket. Panics after [`Conn::abort_server`].
    pub fn server(&self) -> &TcpStream {
        self.server.as_ref().expect("server socket already closed")
    }

    /// Start the server writer (if `write` is given) and the client reader (unless
    /// `ReadMode::Never`), both on stream `seed`.
    pub fn start(&mut self, write: Option<WriteMode>, read: ReadMode, seed: u64) -> io::Result<()> {
        if let Some(mode) = write {
            self.writer = Some(Writer::spawn(self.server(), mode, seed, None)?);
        }
        if read != ReadMode::Never {
            self.reader = Some(Reader::spawn(&self.client, read, seed)?);
        }
        Ok(())
    }

    /// Start collecting what the client sends to the server, up to `limit` bytes.
    pub fn start_inbox(&mut self, limit: usize) -> io::Result<()> {
        self.inbox = Some(Inbox::spawn(self.server(), limit)?);
        Ok(())
    }

    /// Start an [`AckWatch`] on the server socket.
    pub fn watch_acks(&mut self) -> io::Result<()> {
        self.acks = Some(AckWatch::spawn(self.server())?);
        Ok(())
    }

    /// The server socket's [`AckWatch`]. Panics if none was started.
    pub fn acks(&self) -> &AckWatch {
        self.acks
            .as_ref()
            .expect("no ack watch started on this connection")
    }

    /// The server writer. Panics if none was started.
    pub fn writer(&self) -> &Writer {
        self.writer
            .as_ref()
            .expect("no writer started on this connection")
    }

    /// The client reader. Panics if none was started.
    pub fn reader(&self) -> &Reader {
        self.reader
            .as_ref()
            .expect("no reader started on this connection")
    }

    /// The server inbox. Panics if none was started.
    pub fn inbox(&self) -> &Inbox {
        self.inbox
            .as_ref()
            .expect("no inbox started on this connection")
    }

    /// End the exchange cleanly and report what was delivered: stop the writer, let the
    /// reader drain at full speed, close the server's sending side, and wait (up to `timeout`)
    /// for the client to read to end-of-stream.
    pub fn finish(&mut self, timeout: Duration) -> Result<Delivery, String> {
        let deadline = Instant::now() + timeout;
        if let Some(r) = &self.reader {
            r.drain();
        }
        let written = match &mut self.writer {
            Some(w) => {
                w.join(deadline.saturating_duration_since(Instant::now()))?;
                if let Some(Outcome::Failed { errno, .. }) = w.outcome() {
                    return Err(format!(
                        "the server's send() failed with {} on a connection that should be healthy",
                        sock::errno_name(errno)
                    ));
                }
                w.bytes()
            }
            None => 0,
        };
        self.server()
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown(SHUT_WR) of the server socket: {e}"))?;
        let reader = self
            .reader
            .as_mut()
            .ok_or("finish() needs a reading client")?;
        // Not `join`: that would stop it before end-of-stream.
        reader
            .task
            .join(deadline.saturating_duration_since(Instant::now()))?;
        Ok(Delivery {
            written,
            read: reader.report(),
        })
    }

    /// [`Conn::finish`] and require every written byte to have arrived intact, in order,
    /// followed by end-of-stream.
    pub fn finish_intact(&mut self, what: &str, timeout: Duration) -> Delivery {
        let d = self
            .finish(timeout)
            .unwrap_or_else(|e| panic!("{what}: finishing the exchange: {e}"));
        assert_eq!(
            d.read.error, None,
            "{what}: the client's read failed: {d:?}"
        );
        assert!(
            d.read.eof,
            "{what}: the client did not reach end-of-stream: {d:?}"
        );
        assert_eq!(
            d.read.first_mismatch, None,
            "{what}: corrupted stream: {d:?}"
        );
        assert_eq!(
            d.read.bytes, d.written,
            "{what}: bytes read != bytes written: {d:?}"
        );
        d
    }

    /// Close the server socket the way an application giving up on a wedged connection does:
    /// `SO_LINGER {on, 0}`, `shutdown()` to wake the blocked writer, then the last `close()`,
    /// which aborts with a RST and takes the socket to TCP_CLOSE at once.
    /// Close the server socket the ordinary way (FIN after whatever is queued): with data
    /// still unacknowledged it becomes an orphan the kernel keeps finishing (FIN_WAIT1).
    /// Only for connections without a writer or inbox thread (they hold clones).
    pub fn close_server(&mut self) {
        assert!(
            self.writer.is_none() && self.inbox.is_none() && self.acks.is_none(),
            "close_server on a connection with helper threads (they hold the socket open)"
        );
        drop(self.server.take());
    }

    pub fn abort_server(&mut self) -> Result<(), String> {
        sock::set_linger_zero(self.server()).map_err(|e| format!("SO_LINGER: {e}"))?;
        sock::shutdown(self.server(), libc::SHUT_RDWR);
        if let Some(w) = &mut self.writer {
            w.join(Duration::from_secs(5))?;
        }
        if let Some(i) = &mut self.inbox {
            i.task.join(Duration::from_secs(5))?;
        }
        if let Some(a) = &mut self.acks {
            a.join(Duration::from_secs(5))?;
        }
        // The writer's and inbox's clones are gone with their threads: this is the last close.
        drop(self.server.take());
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(w) = &self.writer {
            w.stop();
        }
        if let Some(r) = &self.reader {
            r.state.stop.store(true, Ordering::Relaxed);
            r.drain();
        }
        // Abort rather than linger: no orphan with queued data may outlive the test and show
        // up in the next one.
        if let Some(s) = &self.server {
            let _ = sock::set_linger_zero(s);
            sock::shutdown(s, libc::SHUT_RDWR);
        }
        let _ = sock::set_linger_zero(&self.client);
        sock::shutdown(&self.client, libc::SHUT_RDWR);
        let t = Duration::from_secs(5);
        let mut errors = Vec::new();
        if let Some(w) = &mut self.writer {
            errors.extend(w.join(t).err());
        }
        if let Some(r) = &mut self.reader {
            errors.extend(r.join(t).err());
        }
        if let Some(i) = &mut self.inbox {
            errors.extend(i.task.join(t).err());
        }
        if let Some(a) = &mut self.acks {
            errors.extend(a.join(t).err());
        }
        for e in errors {
            eprintln!(
                "warning: connection {} -> {}: {e}",
                self.client_addr, self.server_addr
            );
        }
    }
}
