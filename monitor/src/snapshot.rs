//! The agent's view of one tracked socket at one tick: a decoded [`SockState`] plus the
//! monotonic time it was read at. Everything downstream (classification, policy, events)
//! works on this plain type, so it can be unit-tested without a kernel.

use monitor_common::{flags, Gap, SockState, Times, GAP_SLOTS};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A task's command name as the kernel keeps it (16 bytes, NUL-padded): copied, not
/// allocated, every tick; made a string only where one is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn as_str(&self) -> Cow<'_, str> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }
}

impl From<&str> for Comm {
    /// The kernel's form of a name: at most 15 bytes and a NUL.
    fn from(name: &str) -> Comm {
        let mut raw = [0u8; 16];
        let n = name.len().min(15);
        raw[..n].copy_from_slice(&name.as_bytes()[..n]);
        Comm(raw)
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// The gaps the kernel still holds for a socket (at most [`GAP_SLOTS`]): inline, no
/// allocation per socket and tick.
pub type Gaps = SmallVec<[Gap; GAP_SLOTS]>;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// CLOCK_MONOTONIC ns at which the map was read.
    pub now_ns: u64,
    pub cookie: u64,
    pub netns: u32,
    pub family: u16,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Index of the interface the socket is bound to (`sk_bound_dev_if`: `SO_BINDTODEVICE`,
    /// or set by the kernel for an IPv6 link-local peer); 0 = not bound. Read when tracking
    /// started.
    pub bound_dev_if: u32,
    /// Writer identity; None until the socket was written from process context while tracked.
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    pub cgroup_id: Option<u64>,

    /// Bytes the app has written that the peer has not acked (write_seq - snd_una).
    pub queued_bytes: u64,
    /// Bytes sent on the wire and not yet acked (snd_nxt - snd_una).
    pub unacked_bytes: u64,
    pub snd_wnd: u32,
    pub zero_window: bool,
    /// Send buffer full at the last write: the writer blocks in send().
    pub sndbuf_full: bool,
    /// The application has closed the socket; the kernel is finishing it (FIN_WAIT1 …).
    pub orphan: bool,
    pub wmem_queued: u32,
    pub sndbuf: u32,
    pub retransmits: u32,
    pub backoff: u32,
    pub zero_window_acks: u32,
    /// Cumulative bytes acked since tracking began.
    pub bytes_acked: u64,
    /// When the kernel side last saw each event (as in the kernel's record).
    pub times: Times,

    /// Received bytes the local app has not read yet (rcv_nxt - copied_seq).
    pub recv_unread: u64,
    pub rcvbuf: u32,
    pub rcv_wnd: u32,
    pub last_read_ns: u64,
    /// Recovered no-progress gaps (>= 250 ms) the kernel still holds for this socket, oldest
    /// first (at most 4). A gap is identified by its `end_ns`.
    pub recent_gaps: Gaps,
    /// Total gaps recorded since tracking began (may exceed `recent_gaps.len()`).
    pub gap_count: u32,
}

fn addr(family: u16, raw: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == AF_INET6 {
        let v6 = Ipv6Addr::from(*raw);
        // A v4-mapped v6 socket is shown as the IPv4 address it talks to.
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    };
    SocketAddr::new(ip, port)
}

fn recent_gaps(s: &SockState) -> Gaps {
    let n = (s.gap_count as usize).min(GAP_SLOTS);
    let first = s.gap_count as usize - n;
    (first..s.gap_count as usize)
        .map(|i| s.gaps[i % GAP_SLOTS])
        .collect()
}

impl Snapshot {
    pub fn from_state(s: &SockState, now_ns: u64) -> Self {
        let have_writer = s.flags & flags::HAVE_WRITER != 0;
        Snapshot {
            now_ns,
            cookie: s.cookie,
            netns: s.netns,
            family: s.family,
            local: addr(s.family, &s.laddr, s.lport),
            remote: addr(s.family, &s.raddr, s.rport),
            bound_dev_if: s.bound_dev_if,
            pid: have_writer.then_some(s.pid),
            comm: have_writer.then_some(Comm(s.comm)),
            cgroup_id: have_writer.then_some(s.cgroup_id),
            queued_bytes: s.write_seq.wrapping_sub(s.snd_una) as u64,
            unacked_bytes: s.snd_nxt.wrapping_sub(s.snd_una) as u64,
            snd_wnd: s.snd_wnd,
            zero_window: s.flags & flags::ZERO_WINDOW != 0,
            sndbuf_full: s.flags & flags::SNDBUF_FULL != 0,
            orphan: s.flags & flags::ORPHAN != 0,
            wmem_queued: s.wmem_queued,
            sndbuf: s.sndbuf,
            retransmits: s.retransmits,
            backoff: s.backoff,
            zero_window_acks: s.zero_window_acks,
            bytes_acked: s.bytes_acked,
            times: s.times,
            recv_unread: s.rcv_nxt.wrapping_sub(s.copied_seq) as u64,
            rcvbuf: s.rcvbuf,
            rcv_wnd: s.rcv_wnd,
            last_read_ns: s.last_read_ns,
            recent_gaps: recent_gaps(s),
            gap_count: s.gap_count,
        }
    }

    /// Milliseconds since the peer last acked new data.
    /// The last time a hook touched the entry: a write, an ACK, a retransmit, or tracking
    /// began.
    pub fn last_activity_ns(&self) -> u64 {
        self.times
            .last_send_ns
            .max(self.times.last_ack_ns)
            .max(self.times.last_retrans_ns)
            .max(self.times.first_seen_ns)
    }

    pub fn since_progress_ms(&self) -> u64 {
        self.now_ns.saturating_sub(self.times.last_progress_ns) / 1_000_000
    }

    pub fn family_name(&self) -> &'static str {
        if self.family == AF_INET6 {
            "inet6"
        } else {
            "inet"
        }
    }
}

/// Current CLOCK_MONOTONIC in ns (the clock bpf_ktime_get_ns uses).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_interface_is_carried_over() {
        let mut s = SockState::zeroed();
        s.family = AF_INET6;
        s.laddr = "fe80::1".parse::<Ipv6Addr>().unwrap().octets();
        s.raddr = "fe80::2".parse::<Ipv6Addr>().unwrap().octets();
        s.lport = 8000;
        s.rport = 40000;
        s.bound_dev_if = 7;
        let snap = Snapshot::from_state(&s, 1);
        assert_eq!(snap.bound_dev_if, 7);
        assert_eq!(snap.local, "[fe80::1]:8000".parse().unwrap());
        s.bound_dev_if = 0;
        assert_eq!(Snapshot::from_state(&s, 1).bound_dev_if, 0, "0 = not bound");
    }
}
