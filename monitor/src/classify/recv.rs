//! One tick of the read-side state machine: `recv_backlog`.

use super::cadence::class_evidence;
use super::tracker::{Live, TickInput};
use super::{dur_ns, ActiveStall, StallClass, Transition, NS_PER_MS};

/// Whether a receive side with `unread` bytes unread is full, which a `recv_backlog` stall
/// waits on: our window closed (`rcv_wnd` 0), or half the receive buffer unread. Also what
/// the agent asks sock_diag about without a read hook (`agent/reads.rs`).
pub fn recv_side_full(unread: u64, rcv_wnd: u32, rcvbuf: u32) -> bool {
    rcv_wnd == 0 || (rcvbuf > 0 && unread >= rcvbuf as u64 / 2)
}

/// One tick of the read-side state machine.
pub(super) fn step_recv(live: &mut Live, input: &TickInput<'_>) -> Option<Transition> {
    let snap = input.snap;
    let now = snap.now_ns;
    if let Some(a) = &live.recv {
        if snap.recv_unread == 0 || snap.last_read_ns > a.progress_mark {
            let tr = a.cleared(Some(snap.last_read_ns), now);
            live.recv = None;
            return Some(tr);
        }
        return None;
    }
    let unread_since = now.saturating_sub(snap.last_read_ns);
    let full = recv_side_full(snap.recv_unread, snap.rcv_wnd, snap.rcvbuf);
    if snap.recv_unread == 0 || !full || unread_since < dur_ns(input.t.recv_backlog_after) {
        return None;
    }
    let (_, evidence) = class_evidence(
        StallClass::RecvBacklog,
        input.history,
        snap.into(),
        input.t,
        input.drain,
    );
    let stall = ActiveStall {
        class: StallClass::RecvBacklog,
        since_ns: snap.last_read_ns,
        evidence,
        progress_mark: snap.last_read_ns,
        decided_ns: now,
        last_progress_ns: snap.last_read_ns,
        session_ns: snap.times.first_seen_ns,
        floor_bps: 0,
    };
    Some(stall.start(&mut live.recv, unread_since / NS_PER_MS))
}
