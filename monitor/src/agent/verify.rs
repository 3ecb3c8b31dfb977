//! What the kernel says of a socket right before acting on it: the live re-verification
//! of a wedge ([`verify_live`]) and whether a local port has a listener ([`local_listener`]).

use super::DiagPath;
use crate::classify::StallClass;
use crate::reset::{Target, TcpDiag};
use crate::snapshot::Snapshot;

/// Whether a listening socket exists on `t`'s local address and port in its namespace (the
/// socket was accepted by a service of ours): an exact sock_diag lookup with no peer, which
/// the kernel answers with the listener. `None` when the lookup failed.
pub fn local_listener<K: DiagPath + ?Sized>(kern: &mut K, t: &Target) -> Option<bool> {
    let any = match t.local.ip() {
        std::net::IpAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        std::net::IpAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let probe = Target {
        cookie: 0,
        family: if t.local.is_ipv4() {
            crate::snapshot::AF_INET
        } else {
            t.family
        },
        remote: std::net::SocketAddr::new(any, 0),
        ..t.clone()
    };
    match kern.lookup(&probe) {
        Ok(Some(d)) => Some(d.state == TCP_LISTEN),
        Ok(None) => Some(false),
        Err(e) => {
            log::debug!("listener lookup for {}: {e}", t.local);
            None
        }
    }
}

pub(super) const TCP_ESTABLISHED: u8 = 1;
pub(super) const TCP_FIN_WAIT1: u8 = 4;
pub(super) const TCP_CLOSE_WAIT: u8 = 8;
pub(super) const TCP_LAST_ACK: u8 = 9;
pub(super) const TCP_LISTEN: u8 = 10;
pub(super) const TCP_CLOSING: u8 = 11;

/// An ACK the kernel received this much more recently than the last one the map holds
/// means the map missed it.
pub(super) const LIVE_ACK_SLACK_MS: u64 = 1000;

/// Whether the live kernel state still shows the wedge the map showed (`Err`: why not).
/// Re-verification right before SOCK_DESTROY, against the kernel itself rather than the
/// map: the map can miss progress (e.g. ACKs in CLOSE_WAIT do not pass the ACK hook).
pub fn verify_live(snap: &Snapshot, class: StallClass, d: &TcpDiag) -> Result<(), String> {
    let open = d.state == TCP_ESTABLISHED || d.state == TCP_CLOSE_WAIT;
    let orphan_state = matches!(d.state, TCP_FIN_WAIT1 | TCP_CLOSING | TCP_LAST_ACK);
    if !(open || (snap.orphan && orphan_state)) {
        return Err(format!(
            "the kernel shows the socket in state {} now",
            d.state_name()
        ));
    }
    if d.send_q == 0 {
        return Err("the kernel's send queue is empty: everything was acked".into());
    }
    if u64::from(d.send_q) < snap.queued_bytes {
        return Err(format!(
            "the kernel's send queue shrank from {} to {} bytes: the peer acked data",
            snap.queued_bytes, d.send_q
        ));
    }
    match class {
        StallClass::ZeroWindow if d.has_snd_wnd() && d.snd_wnd > 0 => Err(format!(
            "the peer's window is open again ({} bytes)",
            d.snd_wnd
        )),
        StallClass::NoAck => {
            let seen = if snap.times.last_ack_ns > 0 {
                snap.times.last_ack_ns
            } else {
                snap.times.first_seen_ns
            };
            let map_age_ms = snap.now_ns.saturating_sub(seen) / 1_000_000;
            let live_ms = u64::from(d.last_ack_recv_ms);
            if live_ms + LIVE_ACK_SLACK_MS < map_age_ms {
                Err(format!(
                    "the kernel received an ACK {live_ms} ms ago; the last one tcpstall saw \
                     was {map_age_ms} ms ago"
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}
