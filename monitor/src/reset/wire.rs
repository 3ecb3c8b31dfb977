//! The `sock_diag` wire format: netlink constants, request encoding ([`WireId`],
//! [`encode_request`]), reply parsing and `tcp_info` decoding into [`TcpDiag`].

use super::*;

/// Netlink message type of an exact socket lookup / dump (`linux/sock_diag.h`).
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Netlink message type that destroys (aborts) one socket (`linux/sock_diag.h`).
pub const SOCK_DESTROY: u16 = 21;

pub(super) const AF_INET: u16 = libc::AF_INET as u16;
pub(super) const AF_INET6: u16 = libc::AF_INET6 as u16;

use netlink_packet_core::{Emitable, NetlinkBuffer, NetlinkHeader, NlasIterator};
pub(super) use netlink_packet_core::{
    NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};

pub(super) const NLMSG_HDRLEN: usize = 16;

/// `sizeof(struct inet_diag_sockid)`.
pub(super) const SOCKID_LEN: usize = 48;
/// `sizeof(struct inet_diag_req_v2)`.
pub(super) const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// `sizeof(struct inet_diag_msg)`.
pub(super) const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// `INET_DIAG_INFO` attribute type: payload is `struct tcp_info`.
pub(super) const INET_DIAG_INFO: u16 = 2;
/// Both cookie words set to this value means "do not check the cookie".
pub(super) const INET_DIAG_NOCOOKIE: u32 = !0;
/// All TCP states (the kernel ignores the mask for exact requests, but be explicit).
pub(super) const ALL_STATES: u32 = 0xffff_ffff;

/// One socket as the kernel reports it: `struct inet_diag_msg` plus `struct tcp_info`.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpDiag {
    /// Family of the socket itself (10 for IPv4-mapped IPv6 sockets).
    pub family: u16,
    /// TCP state (`TCP_ESTABLISHED` = 1, ... see [`TcpDiag::state_name`]).
    pub state: u8,
    /// Socket cookie.
    pub cookie: u64,
    /// Local address as the kernel reports it.
    pub local: SocketAddr,
    /// Peer address as the kernel reports it.
    pub remote: SocketAddr,
    /// Interface the socket is bound to (0: none).
    pub ifindex: u32,
    /// Owner uid.
    pub uid: u32,
    /// Socket inode (as in `/proc/PID/fd` links `socket:[N]`).
    pub inode: u32,
    /// Pending timer: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe.
    pub timer: u8,
    /// Retransmits (timer 1) or unanswered probes (timers 2, 4) of that timer.
    pub timer_retrans: u8,
    /// Milliseconds until the timer fires.
    pub timer_expires_ms: u32,
    /// Receive queue: bytes received, not read by the application.
    pub recv_q: u32,
    /// Send queue: bytes written by the application, not acked (write_seq - snd_una).
    pub send_q: u32,
    /// Length of the `tcp_info` the kernel returned; 0 if none (e.g. TIME_WAIT).
    /// Fields beyond it read as 0 (see [`TcpDiag::has_snd_wnd`]).
    pub tcp_info_len: usize,
    /// Congestion-avoidance state (`tcpi_ca_state`).
    pub ca_state: u8,
    /// Consecutive retransmits of the current RTO (`tcpi_retransmits`).
    pub retransmits: u8,
    /// Unanswered zero-window / keepalive probes (`tcpi_probes`).
    pub probes: u8,
    /// Exponential backoff of the retransmit / probe timer (`tcpi_backoff`).
    pub backoff: u8,
    /// Retransmission timeout, microseconds.
    pub rto_us: u32,
    /// Send MSS.
    pub snd_mss: u32,
    /// Segments sent and not acked.
    pub unacked: u32,
    /// Segments considered lost.
    pub lost: u32,
    /// Segments currently retransmitted and not acked.
    pub retrans: u32,
    /// Milliseconds since data was last sent.
    pub last_data_sent_ms: u32,
    /// Milliseconds since an ACK was last received.
    pub last_ack_recv_ms: u32,
    /// Smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Retransmitted segments over the connection's life.
    pub total_retrans: u32,
    /// Bytes acked by the peer (`tcpi_bytes_acked`; counts the SYN of the side that sent it).
    pub bytes_acked: u64,
    /// Bytes received in order (`tcpi_bytes_received`).
    pub bytes_received: u64,
    /// Bytes sent including retransmissions (`tcpi_bytes_sent`).
    pub bytes_sent: u64,
    /// Bytes retransmitted (`tcpi_bytes_retrans`).
    pub bytes_retrans: u64,
    /// Bytes written by the application and not yet sent (`tcpi_notsent_bytes`).
    pub notsent_bytes: u32,
    /// Peer's advertised receive window after scaling (`tcpi_snd_wnd`, Linux >= 6.2;
    /// 0 on older kernels, check [`TcpDiag::has_snd_wnd`]).
    pub snd_wnd: u32,
}

// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h; stable ABI, append-only).
pub(super) const TI_CA_STATE: usize = 1;
pub(super) const TI_RETRANSMITS: usize = 2;
pub(super) const TI_PROBES: usize = 3;
pub(super) const TI_BACKOFF: usize = 4;
pub(super) const TI_RTO: usize = 8;
pub(super) const TI_SND_MSS: usize = 16;
pub(super) const TI_UNACKED: usize = 24;
pub(super) const TI_LOST: usize = 32;
pub(super) const TI_RETRANS: usize = 36;
pub(super) const TI_LAST_DATA_SENT: usize = 44;
pub(super) const TI_LAST_ACK_RECV: usize = 56;
pub(super) const TI_RTT: usize = 68;
pub(super) const TI_SND_CWND: usize = 80;
pub(super) const TI_TOTAL_RETRANS: usize = 100;
pub(super) const TI_BYTES_ACKED: usize = 120;
pub(super) const TI_BYTES_RECEIVED: usize = 128;
pub(super) const TI_NOTSENT_BYTES: usize = 144;
pub(super) const TI_BYTES_SENT: usize = 200;
pub(super) const TI_BYTES_RETRANS: usize = 208;
pub(super) const TI_SND_WND: usize = 228;

impl TcpDiag {
    /// A socket known by its identity only: every count, queue, timer and `tcp_info` field 0
    /// (no `tcp_info`).
    pub fn new(
        family: u16,
        state: u8,
        cookie: u64,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> TcpDiag {
        TcpDiag {
            family,
            state,
            cookie,
            local,
            remote,
            ifindex: 0,
            uid: 0,
            inode: 0,
            timer: 0,
            timer_retrans: 0,
            timer_expires_ms: 0,
            recv_q: 0,
            send_q: 0,
            tcp_info_len: 0,
            ca_state: 0,
            retransmits: 0,
            probes: 0,
            backoff: 0,
            rto_us: 0,
            snd_mss: 0,
            unacked: 0,
            lost: 0,
            retrans: 0,
            last_data_sent_ms: 0,
            last_ack_recv_ms: 0,
            rtt_us: 0,
            snd_cwnd: 0,
            total_retrans: 0,
            bytes_acked: 0,
            bytes_received: 0,
            bytes_sent: 0,
            bytes_retrans: 0,
            notsent_bytes: 0,
            snd_wnd: 0,
        }
    }

    /// Whether the kernel's `tcp_info` is new enough to carry `tcpi_snd_wnd`.
    pub fn has_snd_wnd(&self) -> bool {
        self.tcp_info_len >= TI_SND_WND + 4
    }

    /// Name of [`TcpDiag::state`] as `ss` prints it.
    pub fn state_name(&self) -> &'static str {
        tcp_state_name(self.state)
    }
}

/// Name of a kernel TCP state number as `ss` prints it.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "UNCONN",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW-SYN-RECV",
        13 => "BOUND-INACTIVE",
        _ => "UNKNOWN",
    }
}

// ---------------------------------------------------------------------------------------
// Wire format.

/// `struct inet_diag_sockid` plus the request family, in host form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WireId {
    pub(super) family: u8,
    pub(super) sport: u16,
    pub(super) dport: u16,
    /// Address bytes in network order (IPv4 in the first 4 bytes).
    pub(super) src: [u8; 16],
    pub(super) dst: [u8; 16],
    pub(super) ifindex: u32,
    pub(super) cookie: [u32; 2],
}

impl WireId {
    /// Every socket of `family` (a dump request's id).
    pub(super) fn any(family: u16) -> WireId {
        WireId {
            family: family as u8,
            sport: 0,
            dport: 0,
            src: [0; 16],
            dst: [0; 16],
            ifindex: 0,
            cookie: [INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE],
        }
    }
}

pub(super) fn v4_of(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

pub(super) fn v4_bytes(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

/// Split a cookie the way the kernel stores it: `cookie[0]` = low 32 bits. Cookie 0 (or
/// `u64::MAX`) means "any cookie".
pub(super) fn cookie_words(cookie: u64) -> [u32; 2] {
    if cookie == 0 || cookie == u64::MAX {
        [INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE]
    } else {
        [cookie as u32, (cookie >> 32) as u32]
    }
}

/// The request encodings to try for a target, in order.
pub(super) fn wire_ids(t: &Target) -> Result<Vec<WireId>, ResetError> {
    let cookie = cookie_words(t.cookie);
    let (sport, dport) = (t.local.port(), t.remote.port());
    let base = |family: u16, src: [u8; 16], dst: [u8; 16]| WireId {
        family: family as u8,
        sport,
        dport,
        src,
        dst,
        ifindex: t.ifindex,
        cookie,
    };
    let v4 = (v4_of(t.local.ip()), v4_of(t.remote.ip()));
    let bad = |why: &str| {
        ResetError::new(
            "send",
            libc::EINVAL,
            format!(
                "invalid target {} -> {} (family {}): {why}",
                t.local, t.remote, t.family
            ),
        )
    };
    match t.family {
        AF_INET => match v4 {
            (Some(l), Some(r)) => Ok(vec![base(AF_INET, v4_bytes(l), v4_bytes(r))]),
            _ => Err(bad(
                "an AF_INET socket needs IPv4 (or IPv4-mapped) addresses",
            )),
        },
        AF_INET6 => match (v4, t.local.ip(), t.remote.ip()) {
            ((Some(l), Some(r)), _, _) => Ok(vec![
                base(
                    AF_INET6,
                    l.to_ipv6_mapped().octets(),
                    r.to_ipv6_mapped().octets(),
                ),
                base(AF_INET, v4_bytes(l), v4_bytes(r)),
            ]),
            ((None, None), IpAddr::V6(l), IpAddr::V6(r)) => {
                Ok(vec![base(AF_INET6, l.octets(), r.octets())])
            }
            _ => Err(bad(
                "local and remote mix IPv4 and non-mapped IPv6 addresses",
            )),
        },
        _ => Err(ResetError::new(
            "send",
            libc::EAFNOSUPPORT,
            format!(
                "invalid target {} -> {}: family {} is neither AF_INET (2) nor AF_INET6 (10)",
                t.local, t.remote, t.family
            ),
        )),
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` for one request (exact, or a dump with `NLM_F_DUMP`).
pub(super) fn encode_request(msg_type: u16, flags: u16, seq: u32, id: &WireId, ext: u8) -> Vec<u8> {
    let addr = |b: [u8; 16]| match u16::from(id.family) {
        AF_INET => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        _ => IpAddr::V6(Ipv6Addr::from(b)),
    };
    let mut cookie = [0u8; 8];
    cookie[..4].copy_from_slice(&id.cookie[0].to_ne_bytes());
    cookie[4..].copy_from_slice(&id.cookie[1].to_ne_bytes());
    let req = InetRequest {
        family: id.family,
        protocol: libc::IPPROTO_TCP as u8,
        extensions: ExtensionFlags::from_bits_retain(ext),
        states: StateFlags::from_bits_retain(ALL_STATES),
        socket_id: SocketId {
            source_port: id.sport,
            destination_port: id.dport,
            source_address: addr(id.src),
            destination_address: addr(id.dst),
            interface_id: id.ifindex,
            cookie,
        },
    };
    let mut header = NetlinkHeader::default();
    header.length = (NLMSG_HDRLEN + req.buffer_len()) as u32;
    header.message_type = msg_type;
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = vec![0u8; header.length as usize];
    header.emit(&mut m[..NLMSG_HDRLEN]);
    req.emit(&mut m[NLMSG_HDRLEN..]);
    m
}

/// The kernel's answer to one request.
#[derive(Debug, PartialEq)]
pub(super) enum Reply {
    /// `NLMSG_ERROR`: 0 = acknowledged, otherwise a positive errno.
    Ack(i32),
    /// `SOCK_DIAG_BY_FAMILY` data.
    Diag(Box<TcpDiag>),
}

pub(super) fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

pub(super) fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

pub(super) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub(super) fn malformed(what: &str) -> ResetError {
    ResetError::new(
        "reply",
        libc::EPROTO,
        format!("malformed sock_diag reply ({what}); tcpstall bug or unsupported kernel"),
    )
}

/// Find the reply to `seq` among the netlink messages of one datagram. `Ok(None)`: none of
/// them answers `seq` (stale messages are skipped).
pub(super) fn parse_datagram(buf: &[u8], seq: u32) -> Result<Option<Reply>, ResetError> {
    let mut found = None;
    for_each_reply(buf, |mseq, reply| {
        if mseq == seq && found.is_none() {
            found = Some(reply);
        }
    })?;
    Ok(found)
}

/// The one walk over the netlink messages of a datagram: `f(type, seq, payload)` for each
/// until it returns `Some` (which the walk returns). Bytes after the last whole header are
/// ignored; a length field out of bounds is a malformed reply.
pub(super) fn walk_messages<T>(
    buf: &[u8],
    mut f: impl FnMut(u16, u32, &[u8]) -> Result<Option<T>, ResetError>,
) -> Result<Option<T>, ResetError> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let msg = NetlinkBuffer::new_checked(&buf[off..])
            .map_err(|_| malformed("netlink message length out of bounds"))?;
        off += align4(msg.length() as usize);
        if let Some(v) = f(msg.message_type(), msg.sequence_number(), msg.payload())? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The errno an `NLMSG_ERROR` payload carries: 0 = acknowledged, otherwise positive.
pub(super) fn ack_errno(payload: &[u8]) -> Result<i32, ResetError> {
    let err = rd_u32(payload, 0).ok_or_else(|| malformed("short NLMSG_ERROR"))? as i32;
    Ok(err.checked_neg().unwrap_or(libc::EPROTO))
}

/// Every reply (with its sequence number) in one datagram.
pub(super) fn for_each_reply(buf: &[u8], mut f: impl FnMut(u32, Reply)) -> Result<(), ResetError> {
    walk_messages(buf, |ty, mseq, payload| {
        match ty {
            NLMSG_ERROR => f(mseq, Reply::Ack(ack_errno(payload)?)),
            SOCK_DIAG_BY_FAMILY => f(mseq, Reply::Diag(Box::new(parse_diag(payload)?))),
            NLMSG_NOOP => {}
            NLMSG_DONE | NLMSG_OVERRUN => {
                return Err(malformed("unexpected NLMSG_DONE/NLMSG_OVERRUN"))
            }
            _ => return Err(malformed("unexpected netlink message type")),
        }
        Ok(None::<()>)
    })
    .map(drop)
}

pub(super) fn addr_from_wire(family: u8, raw: &[u8], port: u16) -> SocketAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&raw[..16]);
    if u16::from(family) == AF_INET6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])), port)
    }
}

/// Decode `struct inet_diag_msg` and its `INET_DIAG_INFO` attribute.
pub(super) fn parse_diag(p: &[u8]) -> Result<TcpDiag, ResetError> {
    if p.len() < DIAG_MSG_LEN {
        return Err(malformed("inet_diag_msg truncated"));
    }
    let family = p[0];
    let id = &p[4..4 + SOCKID_LEN];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let cookie_lo = rd_u32(id, 40).unwrap_or(0);
    let cookie_hi = rd_u32(id, 44).unwrap_or(0);
    let tail = 4 + SOCKID_LEN;
    let mut d = TcpDiag {
        ifindex: rd_u32(id, 36).unwrap_or(0),
        uid: rd_u32(p, tail + 12).unwrap_or(0),
        inode: rd_u32(p, tail + 16).unwrap_or(0),
        timer: p[2],
        timer_retrans: p[3],
        timer_expires_ms: rd_u32(p, tail).unwrap_or(0),
        recv_q: rd_u32(p, tail + 4).unwrap_or(0),
        send_q: rd_u32(p, tail + 8).unwrap_or(0),
        ..TcpDiag::new(
            u16::from(family),
            p[1],
            u64::from(cookie_lo) | (u64::from(cookie_hi) << 32),
            addr_from_wire(family, &id[4..20], sport),
            addr_from_wire(family, &id[20..36], dport),
        )
    };
    for attr in NlasIterator::new(&p[align4(DIAG_MSG_LEN).min(p.len())..]) {
        let attr = attr.map_err(|_| malformed("attribute length out of bounds"))?;
        if attr.kind() == INET_DIAG_INFO {
            apply_tcp_info(&mut d, attr.value());
        }
    }
    Ok(d)
}

/// Fill the `tcp_info` fields of `d`; fields past the end of `ti` (older kernels) stay 0.
pub(super) fn apply_tcp_info(d: &mut TcpDiag, ti: &[u8]) {
    let u8_at = |o: usize| ti.get(o).copied().unwrap_or(0);
    let u32_at = |o: usize| rd_u32(ti, o).unwrap_or(0);
    let u64_at = |o: usize| rd_u64(ti, o).unwrap_or(0);
    d.tcp_info_len = ti.len();
    d.ca_state = u8_at(TI_CA_STATE);
    d.retransmits = u8_at(TI_RETRANSMITS);
    d.probes = u8_at(TI_PROBES);
    d.backoff = u8_at(TI_BACKOFF);
    d.rto_us = u32_at(TI_RTO);
    d.snd_mss = u32_at(TI_SND_MSS);
    d.unacked = u32_at(TI_UNACKED);
    d.lost = u32_at(TI_LOST);
    d.retrans = u32_at(TI_RETRANS);
    d.last_data_sent_ms = u32_at(TI_LAST_DATA_SENT);
    d.last_ack_recv_ms = u32_at(TI_LAST_ACK_RECV);
    d.rtt_us = u32_at(TI_RTT);
    d.snd_cwnd = u32_at(TI_SND_CWND);
    d.total_retrans = u32_at(TI_TOTAL_RETRANS);
    d.bytes_acked = u64_at(TI_BYTES_ACKED);
    d.bytes_received = u64_at(TI_BYTES_RECEIVED);
    d.notsent_bytes = u32_at(TI_NOTSENT_BYTES);
    d.bytes_sent = u64_at(TI_BYTES_SENT);
    d.bytes_retrans = u64_at(TI_BYTES_RETRANS);
    d.snd_wnd = u32_at(TI_SND_WND);
}
