//! The guard chain in front of SOCK_DESTROY, in its one order, for the agent's tick and for
//! `tcpstall reset` alike.
//!
//! The order:
//!
//! 1. `protected_port`: [`protected`] by `[guards] protect_ports`;
//! 2. `not_stalled_anymore`: the socket as read shows no wedge (`tcpstall reset` reads it
//!    from a sock_diag dump; the agent's candidates are stalled in the map by construction);
//! 3. `reset_unavailable`: the start-up probe of SOCK_DESTROY failed (agent);
//! 4. `orphan_unsafe`: an orphan, on a kernel where destroying orphans is not safe;
//! 5. `partition_hold`: (almost) every remote network went silent at once (agent); and
//!    after such a hold ended, a `no_ack` stall from before its end until the socket's own
//!    next retransmission shows whether its peer is back ([`super::waits_after_hold`]);
//! 6. `dry_run`;
//!
//! all in [`Guards::check`]; then, by the caller, in the kernel:
//!
//! 7. `not_stalled_anymore`: the live re-verification right before acting;
//! 8. `rate_limit` / `network_limit`: the budgets ([`Budgets::take`]; the agent lets a mass
//!    disconnect's `no_ack` stalls bypass them).

use super::protected;
#[cfg(doc)]
use super::Budgets;
use crate::event::SkipGuard;

/// A socket someone wants reset, as the guards see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub local_port: u16,
    pub remote_port: u16,
    /// Why the socket as read shows no wedge, if it does not (the agent: `None`, its
    /// candidates are stalled by construction).
    pub not_wedged: Option<String>,
    /// The application already closed it (an orphan the kernel finishes on its own).
    pub orphan: bool,
}

/// What only the kernel (or a self-test) can tell, asked only when a guard needs it.
pub trait Ask {
    /// Whether a listening socket holds the subject's local port in its namespace (see
    /// [`protected`]); `None` when that could not be determined.
    fn local_listener(&mut self) -> Option<bool>;
    /// Whether destroying an orphan is safe on this kernel; `Err`: the self-test's detail.
    fn orphans_safe(&mut self) -> Result<(), String>;
}

/// The guards' settings for one decision.
#[derive(Clone, Copy, Debug)]
pub struct Guards<'a> {
    /// `[guards] protect_ports`.
    pub protect_ports: &'a [u16],
    /// SOCK_DESTROY works here (the agent's start-up probe).
    pub reset_works: bool,
    /// A partition hold is on.
    pub hold: bool,
    /// A partition hold ended and this stall waits for its socket's next retransmission
    /// ([`super::waits_after_hold`]).
    pub after_hold: bool,
    /// `--dry-run`.
    pub dry_run: bool,
}

/// The first guard of [`Guards::check`] that refused, with what it knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Why the port is protected ([`protected`]).
    ProtectedPort(String),
    /// Why the socket as read is not wedged.
    NotWedged(String),
    ResetUnavailable,
    /// The orphan self-test's detail (empty when the caller has none).
    OrphanUnsafe(String),
    PartitionHold,
    AfterPartition,
    DryRun,
}

impl Skip {
    /// The guard named in `reset_skipped`.
    pub fn guard(&self) -> SkipGuard {
        match self {
            Skip::ProtectedPort(_) => SkipGuard::ProtectedPort,
            Skip::NotWedged(_) => SkipGuard::NotStalledAnymore,
            Skip::ResetUnavailable => SkipGuard::ResetUnavailable,
            Skip::OrphanUnsafe(_) => SkipGuard::OrphanUnsafe,
            Skip::PartitionHold | Skip::AfterPartition => SkipGuard::PartitionHold,
            Skip::DryRun => SkipGuard::DryRun,
        }
    }

    /// The guard and the agent's words for it (`reset_skipped.detail`).
    pub fn into_parts(self) -> (SkipGuard, String) {
        let guard = self.guard();
        let detail = match self {
            Skip::ProtectedPort(why) | Skip::NotWedged(why) => why,
            Skip::ResetUnavailable => {
                "the start-up probe of SOCK_DESTROY failed (see agent_started.reset_path)".into()
            }
            Skip::OrphanUnsafe(_) => "the application already closed this socket (an orphan \
                                      the kernel finishes on its own), and on this kernel \
                                      destroying an orphan can leave it with no timer forever \
                                      (see agent_started.orphan_reset)"
                .into(),
            Skip::PartitionHold => "ACKs stopped from (almost) every remote network at once: \
                                    the node's own path looks down, so resets wait (see the \
                                    partition_hold event)"
                .into(),
            Skip::AfterPartition => "a partition hold ended and this socket went quiet before \
                                     its end: its next retransmission (the kernel's backoff, \
                                     at most 2 minutes) shows whether its peer is back; reset \
                                     only if that goes unanswered"
                .into(),
            Skip::DryRun => "--dry-run: would have reset".into(),
        };
        (guard, detail)
    }
}

impl Guards<'_> {
    /// Steps 1–6 of the chain (see the module documentation): the first guard that refuses,
    /// or `None` when the caller may go on to re-verify in the kernel and take from the
    /// budgets.
    pub fn check(&self, s: &Subject, ask: &mut dyn Ask) -> Option<Skip> {
        let ports = self.protect_ports;
        let (lp, rp) = (s.local_port, s.remote_port);
        if ports.contains(&lp) || ports.contains(&rp) {
            // Direction matters only for a protected remote port.
            let listener = if ports.contains(&rp) && !ports.contains(&lp) {
                ask.local_listener()
            } else {
                None
            };
            if let Some(why) = protected(ports, lp, rp, listener) {
                return Some(Skip::ProtectedPort(why));
            }
        }
        if let Some(why) = &s.not_wedged {
            return Some(Skip::NotWedged(why.clone()));
        }
        if !self.reset_works {
            return Some(Skip::ResetUnavailable);
        }
        if s.orphan {
            if let Err(detail) = ask.orphans_safe() {
                return Some(Skip::OrphanUnsafe(detail));
            }
        }
        if self.hold {
            return Some(Skip::PartitionHold);
        }
        if self.after_hold {
            return Some(Skip::AfterPartition);
        }
        if self.dry_run {
            return Some(Skip::DryRun);
        }
        None
    }
}
