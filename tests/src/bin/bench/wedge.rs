//! The `wedge` helper process of the reaction benchmark: `count` loopback connections whose
//! clients never read, each server side written by its own thread until send() blocks, then
//! blocked in send() until the socket is destroyed (or a deadline).
//!
//! Protocol (stdin commands -> stdout replies):
//! - after set-up: `ready <count>`
//! - `go` -> (writers start) ... one `res <client-addr> <last_progress_ns> <unblock_ns> <errno>
//!   <bytes>` line per socket, then `done <count>`. Times are CLOCK_REALTIME ns; errno 0 means
//!   the writer hit the deadline without an error.

use crate::helper::{
    connect_batched, connect_small, linger_zero, parse_args, positive_usize, secs, send,
    setsockopt_int,
};
use crate::util::wall_ns;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `bench wedge`.
#[derive(clap::Parser)]
pub struct Args {
    /// Listen address (its port is the one the policy resets).
    #[arg(long)]
    pub listen: SocketAddrV4,
    /// Wedged connections.
    #[arg(long, value_parser = positive_usize())]
    pub count: usize,
    /// SO_SNDBUF of the server sockets (small, to bound memory at thousands of wedges).
    #[arg(long, default_value_t = 8192)]
    pub sndbuf: u32,
    /// SO_RCVBUF of the client sockets.
    #[arg(long, default_value_t = 8192)]
    pub rcvbuf: u32,
    /// Writers give up after this long.
    #[arg(long = "timeout-s", default_value = "60", value_parser = secs)]
    pub timeout: Duration,
}

/// What one writer observed.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Last time send() accepted bytes (wall ns).
    pub last_progress_ns: u64,
    /// When the blocked send() came back with the error (wall ns); 0 if it never did.
    pub unblock_ns: u64,
    /// errno of the failing send(); 0 if none before the deadline.
    pub errno: i32,
    /// Bytes accepted by send() in total.
    pub bytes: u64,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Fill the socket without blocking, then block in send() until it fails or `deadline`.
fn write_until_error(fd: RawFd, deadline: Instant) -> Outcome {
    let buf = vec![0x77u8; 64 * 1024];
    let mut o = Outcome::default();
    // Phase 1: fill (bounded: the buffers hold far less than 100,000 x 64 KiB).
    for _ in 0..100_000 {
        let r = send(fd, &buf, libc::MSG_DONTWAIT);
        if r > 0 {
            o.bytes += r as u64;
            o.last_progress_ns = wall_ns();
            continue;
        }
        let e = errno();
        if e == libc::EAGAIN || e == libc::EINTR {
            break;
        }
        o.errno = e;
        o.unblock_ns = wall_ns();
        return o;
    }
    // Phase 2: blocking sends (SO_SNDTIMEO bounds each call). A long-blocked call that
    // returns a partial count is either real progress or the abort itself (the kernel reports
    // the bytes it took before the error and the error on the next call): decide by the next
    // call.
    let mut pending: Option<u64> = None;
    while Instant::now() < deadline {
        let t0 = wall_ns();
        let r = send(fd, &buf, 0);
        let t1 = wall_ns();
        if r > 0 {
            o.bytes += r as u64;
            if let Some(p) = pending.take() {
                o.last_progress_ns = p;
            }
            if t1 - t0 > 20_000_000 {
                pending = Some(t1);
            } else {
                o.last_progress_ns = t1;
            }
            continue;
        }
        let e = errno();
        if e == libc::EAGAIN || e == libc::EINTR {
            if let Some(p) = pending.take() {
                o.last_progress_ns = p;
            }
            continue;
        }
        o.errno = e;
        o.unblock_ns = match pending {
            Some(p) if t1 - t0 < 1_000_000 && t1 - p < 10_000_000 => p,
            _ => t1,
        };
        return o;
    }
    o
}

/// The wedge helper's main.
pub fn main(args: &[String]) -> Result<()> {
    let a: Args = parse_args("wedge", args)?;
    let listener =
        TcpListener::bind(a.listen).with_context(|| format!("wedge: binding {}", a.listen))?;
    let (clients, servers) = connect_batched(
        &listener,
        a.listen,
        a.count,
        "wedge",
        || {
            let c = connect_small(a.listen, a.rcvbuf)?;
            linger_zero(c.as_raw_fd())?;
            Ok(c)
        },
        |s| {
            setsockopt_int(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                a.sndbuf,
                "SO_SNDBUF",
            )?;
            Ok(s.set_write_timeout(Some(a.timeout))?)
        },
    )?;
    // Each server's peer, as the agent will print it (`remote`).
    let peers: Vec<SocketAddr> = servers
        .iter()
        .map(|s| s.peer_addr())
        .collect::<std::io::Result<_>>()?;
    let go = Arc::new((Mutex::new(None::<Instant>), Condvar::new()));
    let mut threads = Vec::with_capacity(a.count);
    for s in &servers {
        let fd = s.as_raw_fd();
        let go = Arc::clone(&go);
        let t = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let (m, cv) = &*go;
                let mut g = m.lock().expect("go lock");
                while g.is_none() {
                    g = cv.wait(g).expect("go lock");
                }
                let deadline = g.expect("set");
                drop(g);
                write_until_error(fd, deadline)
            })
            .context("wedge: starting a writer thread")?;
        threads.push(t);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", servers.len())?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        // Release the writers with a deadline already past, so they exit at once.
        *go.0.lock().expect("go lock") = Some(Instant::now());
        go.1.notify_all();
        bail!("wedge: expected `go`, got {:?}", line.trim());
    }
    *go.0.lock().expect("go lock") = Some(Instant::now() + a.timeout);
    go.1.notify_all();
    for (t, peer) in threads.into_iter().zip(&peers) {
        let o = t
            .join()
            .map_err(|_| anyhow!("wedge: writer thread panicked"))?;
        writeln!(
            out,
            "res {peer} {} {} {} {}",
            o.last_progress_ns, o.unblock_ns, o.errno, o.bytes
        )?;
    }
    writeln!(out, "done {}", servers.len())?;
    out.flush()?;
    drop(servers);
    drop(clients);
    Ok(())
}
