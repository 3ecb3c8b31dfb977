//! The `holder` helper process of the scale benchmark: holds both ends of up to ~9,000
//! established loopback connections (the per-process fd limit is 20,000), optionally keeps
//! 10% of them busy, and runs the in-app watchdog poller on request.
//!
//! Protocol (stdin commands -> stdout replies):
//! - at start-up, after all connections are established: `ready <count>`
//! - `mode idle` / `mode busy` -> `ok`
//! - `sweep` -> `swept <sockets> <cpu_ns> <wall_ns>`: one pass of getsockopt(TCP_INFO) +
//!   ioctl(SIOCOUTQ) over every server-side socket, with the thread CPU time it took
//! - `quit` or end of stdin -> exit

use crate::helper::{connect_batched, linger_zero, parse_args, secs, send, Commands, Epoll};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// Bytes of one busy-mode message.
const BUSY_MSG: usize = 64;

/// Arguments of `bench holder`.
#[derive(clap::Parser)]
pub struct Args {
    /// Address to listen on (distinct per holder, so ephemeral ports never run out).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Connections to hold.
    #[arg(long)]
    pub count: usize,
    /// Exit after this long whatever happens.
    #[arg(long = "max-life-s", default_value = "3600", value_parser = secs)]
    pub max_life: Duration,
}

/// One poll of a socket the way an in-app watchdog would: TCP_INFO and the send queue.
/// Returns the send-queue length.
pub fn poll_socket(fd: RawFd) -> Result<u32> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    let mut outq: libc::c_int = 0;
    // SAFETY: buffers are valid and sized as passed.
    unsafe {
        if libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        ) != 0
        {
            bail!("getsockopt(TCP_INFO): {}", std::io::Error::last_os_error());
        }
        if libc::ioctl(fd, libc::TIOCOUTQ, &mut outq) != 0 {
            bail!("ioctl(SIOCOUTQ): {}", std::io::Error::last_os_error());
        }
    }
    Ok(outq as u32)
}

const STDIN_TOKEN: u64 = u64::MAX;

/// The holder's main: set up, then serve commands until `quit`, EOF or `max_life`.
pub fn main(args: &[String]) -> Result<()> {
    let a: Args = parse_args("holder", args)?;
    let started = Instant::now();
    let listener =
        TcpListener::bind(a.listen).with_context(|| format!("holder: binding {}", a.listen))?;
    let (clients, servers) = connect_batched(
        &listener,
        a.listen,
        a.count,
        "holder",
        || {
            let c = TcpStream::connect(a.listen)?;
            linger_zero(c.as_raw_fd())?;
            Ok(c)
        },
        |s| linger_zero(s.as_raw_fd()),
    )?;
    drop(listener);
    for s in clients.iter().chain(&servers) {
        s.set_nonblocking(true)?;
    }
    let ep = Epoll::new()?;
    ep.add(0, STDIN_TOKEN)?;
    for (i, c) in clients.iter().enumerate() {
        ep.add(c.as_raw_fd(), i as u64)?;
    }
    let busy_idx: Vec<usize> = (0..servers.len()).step_by(10).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", servers.len())?;
    out.flush()?;

    let mut busy = false;
    let mut next_write = Instant::now();
    let mut cursor = 0usize;
    let interval = Duration::from_secs(1) / busy_idx.len().max(1) as u32;
    let msg = [0x42u8; BUSY_MSG];
    let mut rbuf = [0u8; 4096];
    let mut commands = Commands::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        if started.elapsed() > a.max_life {
            bail!(
                "holder: exceeded its maximum life of {:?}; exiting",
                a.max_life
            );
        }
        let timeout_ms = if busy {
            next_write
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(1000) as i32
        } else {
            1000
        };
        let Some(n) = ep.wait(&mut events, timeout_ms).context("holder")? else {
            continue;
        };
        for ev in &events[..n] {
            if ev.u64 == STDIN_TOKEN {
                let Some(cmds) = commands.read() else {
                    return Ok(()); // EOF: the benchmark is done with us
                };
                for cmd in cmds {
                    match cmd.as_str() {
                        "mode idle" => {
                            busy = false;
                            writeln!(out, "ok")?;
                        }
                        "mode busy" => {
                            busy = true;
                            next_write = Instant::now();
                            writeln!(out, "ok")?;
                        }
                        "sweep" => {
                            let c0 = crate::util::thread_cpu_ns();
                            let w0 = Instant::now();
                            let mut queued = 0u64;
                            for s in &servers {
                                queued += poll_socket(s.as_raw_fd())? as u64;
                            }
                            let cpu = crate::util::thread_cpu_ns() - c0;
                            let wall = w0.elapsed().as_nanos();
                            std::hint::black_box(queued);
                            writeln!(out, "swept {} {cpu} {wall}", servers.len())?;
                        }
                        "quit" => return Ok(()),
                        other => writeln!(out, "error unknown command {other:?}")?,
                    }
                    out.flush()?;
                }
            } else {
                // Busy traffic arriving at a client: read it all.
                let c = &clients[ev.u64 as usize];
                loop {
                    // SAFETY: valid fd and buffer.
                    let r = unsafe {
                        libc::read(
                            c.as_raw_fd(),
                            rbuf.as_mut_ptr() as *mut libc::c_void,
                            rbuf.len(),
                        )
                    };
                    if r <= 0 {
                        break;
                    }
                }
            }
        }
        if busy && !busy_idx.is_empty() {
            // Writes due now; bounded per wake-up so commands are never starved.
            let mut done = 0;
            while Instant::now() >= next_write && done < busy_idx.len() {
                let s = &servers[busy_idx[cursor]];
                let r = send(s.as_raw_fd(), &msg, 0);
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        bail!("holder: busy write: {e}");
                    }
                }
                cursor = (cursor + 1) % busy_idx.len();
                next_write += interval;
                done += 1;
            }
            // Fell behind by more than a second (e.g. during a long sweep): do not burst.
            if Instant::now().saturating_duration_since(next_write) > Duration::from_secs(1) {
                next_write = Instant::now();
            }
        }
    }
}
