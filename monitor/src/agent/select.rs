//! The policy's selection of each tracked socket, remembered across ticks: a socket's
//! addresses and namespace never change, so the rules are matched again only when its
//! writer (comm, cgroup) changes, the policy is replaced, or [`RESELECT_AFTER`] passed
//! (a pod's name can become known later). A busy node's tick then costs a comparison per
//! socket here, not a cgroup-path resolution and a walk of the rules.

use crate::identity::Owners;
use crate::policy::{Policy, Selection, SocketIdentity};
use crate::snapshot::{Comm, Snapshot};
use std::time::{Duration, Instant};

/// A remembered selection is matched again after this long.
pub(super) const RESELECT_AFTER: Duration = Duration::from_secs(10);

/// The policy's selection for a socket, identified as rules select: addresses, writer
/// comm, writer cgroup path, network namespace.
pub(super) fn select<'p>(
    policy: &'p Policy,
    owners: &mut Owners,
    snap: &Snapshot,
) -> Selection<'p> {
    policy.selection(select_index(policy, owners, snap))
}

fn select_index(policy: &Policy, owners: &mut Owners, snap: &Snapshot) -> Option<usize> {
    let (cgroup, w) = owners.of(snap.cgroup_id);
    let comm = snap.comm.as_ref().map(|c| c.as_str());
    policy.select_index(&SocketIdentity {
        local: snap.local,
        remote: snap.remote,
        comm: comm.as_deref(),
        cgroup_path: cgroup.as_deref(),
        netns: snap.netns,
        pod_namespace: w.pod_namespace.as_deref(),
        pod_name: w.pod_name.as_deref(),
    })
}

/// A socket's remembered selection (kept in its [`super::Seen`]).
#[derive(Clone, Debug)]
pub(super) struct Cached {
    comm: Option<Comm>,
    cgroup_id: Option<u64>,
    rule: Option<usize>,
    at: Instant,
    /// The [`Selector`] generation (policy) it was matched under.
    generation: u64,
}

impl Cached {
    /// The remembered rule's index.
    #[cfg(test)]
    pub(super) fn rule(&self) -> Option<usize> {
        self.rule
    }
}

/// Matches sockets against the policy, remembering each one's rule in its
/// [`super::Seen`]. Every remembered selection is void when the policy changes.
#[derive(Default)]
pub(super) struct Selector {
    /// The policy of the current generation (held, so its address is not reused).
    policy: Option<std::sync::Arc<Policy>>,
    generation: u64,
}

impl Selector {
    /// Start of a tick under `policy`: a new policy starts a new generation.
    pub(super) fn begin(&mut self, policy: &std::sync::Arc<Policy>) {
        if !self
            .policy
            .as_ref()
            .is_some_and(|p| std::sync::Arc::ptr_eq(p, policy))
        {
            self.generation += 1;
            self.policy = Some(std::sync::Arc::clone(policy));
        }
    }

    /// The index of the rule that selects `snap` (see [`Policy::select_index`]), from
    /// `cached` while its writer, the policy and its age allow, else matched again (and
    /// remembered in `cached`).
    pub(super) fn rule(
        &self,
        policy: &Policy,
        owners: &mut Owners,
        snap: &Snapshot,
        cached: &mut Option<Cached>,
        now: Instant,
    ) -> Option<usize> {
        if let Some(c) = cached {
            if c.generation == self.generation
                && c.comm == snap.comm
                && c.cgroup_id == snap.cgroup_id
                && now.duration_since(c.at) < RESELECT_AFTER
            {
                return c.rule;
            }
        }
        let rule = select_index(policy, owners, snap);
        *cached = Some(Cached {
            comm: snap.comm,
            cgroup_id: snap.cgroup_id,
            rule,
            at: now,
            generation: self.generation,
        });
        rule
    }
}
