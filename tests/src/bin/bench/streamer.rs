//! The `streamer` helper process of the streaming benchmark: holds both ends of up to ~8,500
//! loopback connections whose server side always has data queued to a live reader. Each
//! server socket is paced (`SO_MAX_PACING_RATE`) and gets one non-blocking write per round,
//! more than the pace drains, so its small send buffer is never empty; its client reads
//! whatever arrives (EPOLLIN): the stream drains slowly and steadily, nothing is wedged.
//! On request it also makes a few genuinely wedged connections (the client never reads).
//!
//! Protocol (stdin commands -> stdout replies):
//! - at start-up, after all connections are established: `ready <count>`
//! - `stats` -> `stats <bytes_read> <bytes_written> <dead_connections> <cpu_ns>`
//! - `wedge <k> <addr>` -> `wedged <k> <bytes_queued>`: `k` connections to a new listener at
//!   `addr` whose server writes until its send buffer is full and whose client never reads
//! - `quit` or end of stdin -> exit

use crate::helper::{
    connect_batched, connect_small, linger_zero, parse_args, positive_ms, positive_usize, secs,
    send, setsockopt_int, Commands, Epoll,
};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// `SO_MAX_PACING_RATE` (asm-generic; not in the libc crate).
const SO_MAX_PACING_RATE: libc::c_int = 47;
const STDIN_TOKEN: u64 = u64::MAX;

/// Arguments of `bench streamer`.
#[derive(Debug, Clone, PartialEq, clap::Parser)]
pub struct Args {
    /// Address to listen on (distinct per helper, so ephemeral ports never run out).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Connections to hold.
    #[arg(long, value_parser = positive_usize())]
    pub count: usize,
    /// Pacing rate of each server socket, bytes per second.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// MSS of the connections (TCP_MAXSEG on the listener).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(88..))]
    pub mss: u32,
    /// SO_SNDBUF of the server sockets (the kernel doubles it).
    #[arg(long, default_value_t = 8192)]
    pub sndbuf: u32,
    /// SO_RCVBUF of the client sockets (the kernel doubles it).
    #[arg(long, default_value_t = 8192)]
    pub rcvbuf: u32,
    /// Bytes per write.
    #[arg(long, default_value_t = 2048, value_parser = positive_usize())]
    pub chunk: usize,
    /// One write per stream every this long.
    #[arg(long = "period-ms", default_value = "500", value_parser = positive_ms)]
    pub period: Duration,
    /// Exit after this long whatever happens.
    #[arg(long = "max-life-s", default_value = "3600", value_parser = secs)]
    pub max_life: Duration,
}

/// `n` connections to a new listener at `listen` (MSS `mss` if given, client SO_RCVBUF
/// `rcvbuf`, server SO_SNDBUF `sndbuf`): (clients, servers), both with SO_LINGER {on, 0} so
/// closing them leaves no TIME_WAIT.
fn connect_pairs(
    listen: SocketAddr,
    n: usize,
    mss: Option<u32>,
    rcvbuf: u32,
    sndbuf: u32,
) -> Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("streamer: binding {listen}"))?;
    if let Some(mss) = mss {
        // Inherited by the accepted sockets and announced in the SYN-ACK: both directions.
        setsockopt_int(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            mss,
            "TCP_MAXSEG",
        )?;
    }
    let SocketAddr::V4(v4) = listen else {
        bail!("streamer: IPv4 addresses only ({listen})");
    };
    let (clients, servers) = connect_batched(
        &listener,
        listen,
        n,
        "streamer",
        || {
            let c = connect_small(v4, rcvbuf)?;
            linger_zero(c.as_raw_fd())?;
            Ok(c)
        },
        |s| {
            linger_zero(s.as_raw_fd())?;
            setsockopt_int(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                sndbuf,
                "SO_SNDBUF",
            )
        },
    )?;
    for s in clients.iter().chain(&servers) {
        s.set_nonblocking(true)?;
    }
    Ok((clients, servers))
}

/// Outcome of a non-blocking I/O loop on one socket.
enum Io {
    /// Would block: bytes moved before that.
    Blocked(u64),
    /// EOF or a hard error: the connection is gone.
    Dead(u64),
}

/// Write `buf` until the socket would block.
fn write_all_nb(fd: RawFd, buf: &[u8]) -> Io {
    let mut n = 0u64;
    loop {
        let r = send(fd, buf, 0);
        if r > 0 {
            n += r as u64;
            continue;
        }
        return match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock => Io::Blocked(n),
            std::io::ErrorKind::Interrupted => continue,
            _ => Io::Dead(n),
        };
    }
}

/// Read until the socket would block.
fn read_all_nb(fd: RawFd, buf: &mut [u8]) -> Io {
    let mut n = 0u64;
    loop {
        // SAFETY: valid fd and buffer.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if r > 0 {
            n += r as u64;
            continue;
        }
        if r == 0 {
            return Io::Dead(n);
        }
        return match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock => Io::Blocked(n),
            std::io::ErrorKind::Interrupted => continue,
            _ => Io::Dead(n),
        };
    }
}

/// Make `k` wedged connections at `addr`: the server writes until its send buffer is full
/// (the client's receive buffer fills first and its window closes), the client never reads.
/// Returns the pairs (kept open by the caller) and the bytes queued.
fn wedge(addr: SocketAddr, k: usize, a: &Args) -> Result<(Vec<TcpStream>, u64)> {
    let (clients, servers) = connect_pairs(addr, k, None, a.rcvbuf, a.sndbuf)?;
    let buf = vec![0x57u8; a.chunk];
    let mut queued = 0u64;
    // Until a whole pass moves nothing (every writer blocked), at most 5 s.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut moved = 0;
        for s in &servers {
            match write_all_nb(s.as_raw_fd(), &buf) {
                Io::Blocked(n) => moved += n,
                Io::Dead(_) => bail!("streamer: a wedge connection died while filling"),
            }
        }
        queued += moved;
        if moved == 0 && queued > 0 {
            break;
        }
        if Instant::now() >= end {
            bail!("streamer: wedge writers still moving data after 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((clients.into_iter().chain(servers).collect(), queued))
}

/// The streamer's main: set up, then stream and serve commands until `quit`, EOF or
/// `max_life`.
pub fn main(args: &[String]) -> Result<()> {
    let a: Args = parse_args("streamer", args)?;
    let started = Instant::now();
    let (clients, servers) = connect_pairs(a.listen, a.count, Some(a.mss), a.rcvbuf, a.sndbuf)?;
    for s in &servers {
        setsockopt_int(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MAX_PACING_RATE,
            a.rate,
            "SO_MAX_PACING_RATE",
        )?;
    }
    let ep = Epoll::new()?;
    ep.add(0, STDIN_TOKEN)?;
    let et = libc::EPOLLET as u32;
    for (i, c) in clients.iter().enumerate() {
        ep.add_events(c.as_raw_fd(), libc::EPOLLIN as u32 | et, i as u64)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", servers.len())?;
    out.flush()?;

    let wbuf = vec![0x53u8; a.chunk];
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut commands = Commands::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut dead = vec![false; servers.len()];
    let (mut read_total, mut written_total) = (0u64, 0u64);
    let mut wedged: Vec<TcpStream> = Vec::new();
    let mut next_round = Instant::now();
    loop {
        if Instant::now() >= next_round {
            // One write per stream and round, like a server pushing an event to each
            // subscriber; a full send buffer (EAGAIN) drops it.
            for (i, s) in servers.iter().enumerate() {
                if dead[i] {
                    continue;
                }
                let r = send(s.as_raw_fd(), &wbuf, 0);
                if r > 0 {
                    written_total += r as u64;
                } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                    dead[i] = true;
                }
            }
            next_round += a.period;
            if next_round < Instant::now() {
                next_round = Instant::now() + a.period; // fell behind: no burst
            }
        }
        if started.elapsed() > a.max_life {
            bail!(
                "streamer: exceeded its maximum life of {:?}; exiting",
                a.max_life
            );
        }
        let wait_ms = next_round
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(1000) as i32;
        let Some(n) = ep.wait(&mut events, wait_ms).context("streamer")? else {
            continue;
        };
        for ev in &events[..n] {
            if ev.u64 != STDIN_TOKEN {
                let i = ev.u64 as usize;
                match read_all_nb(clients[i].as_raw_fd(), &mut rbuf) {
                    Io::Blocked(b) => read_total += b,
                    Io::Dead(b) => {
                        read_total += b;
                        dead[i] = true;
                    }
                }
                continue;
            }
            let Some(cmds) = commands.read() else {
                return Ok(()); // EOF: the benchmark is done with us
            };
            for cmd in cmds {
                let words: Vec<&str> = cmd.split_whitespace().collect();
                match words.as_slice() {
                    ["stats"] => writeln!(
                        out,
                        "stats {read_total} {written_total} {} {}",
                        dead.iter().filter(|d| **d).count(),
                        crate::util::thread_cpu_ns()
                    )?,
                    ["wedge", k, addr] => {
                        let k: usize = k.parse().context("wedge count")?;
                        let addr: SocketAddr = addr.parse().context("wedge address")?;
                        let (pairs, queued) = wedge(addr, k, &a)?;
                        wedged.extend(pairs);
                        writeln!(out, "wedged {k} {queued}")?;
                    }
                    ["quit"] => return Ok(()),
                    _ => writeln!(out, "error unknown command {cmd:?}")?,
                }
                out.flush()?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args> {
        let args: Vec<String> = s.split_whitespace().map(str::to_string).collect();
        parse_args("streamer", &args)
    }

    #[test]
    fn streamer_args() {
        let a = parse("--listen 127.3.0.1:7300 --count 10 --rate 4096").unwrap();
        assert_eq!((a.count, a.rate, a.mss, a.chunk), (10, 4096, 1024, 2048));
        assert_eq!(
            (a.period, a.max_life),
            (Duration::from_millis(500), Duration::from_secs(3600))
        );
        assert!(parse("--count 10").is_err());
        assert!(parse("--listen 127.0.0.1:1 --count 0").is_err());
        assert!(parse("--listen 127.0.0.1:1 --count 1 --mss 10").is_err());
        assert!(parse("--listen 127.0.0.1:1 --count 1 --period-ms 0").is_err());
        assert!(parse("--listen 127.0.0.1:1 --frob 1").is_err());
    }
}
