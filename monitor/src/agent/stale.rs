//! Map entries the kernel has not touched for long, checked against the kernel itself.

use super::{target_of, Agent, DiagPath, SockSource};
use crate::reset::Target;
use crate::snapshot::monotonic_ns;
use anyhow::Result;
use std::time::{Duration, Instant};

/// Entries with no kernel activity for this long are checked against the kernel ...
pub(super) const STALE_AFTER: Duration = Duration::from_secs(60);

/// ... at most every this often, at most `STALE_BATCH` per check.
pub(super) const STALE_EVERY: Duration = Duration::from_secs(30);
pub(super) const STALE_BATCH: usize = 1024;

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    /// Entries the kernel has not touched for [`STALE_AFTER`] are checked against the
    /// kernel (batched, at most [`STALE_BATCH`] every [`STALE_EVERY`]): gone sockets are
    /// removed and recorded as closed, sockets with nothing queued are removed (a hook
    /// missed their drain).
    pub(super) fn check_stale(&mut self) -> Result<()> {
        if self.last_stale_check.elapsed() < STALE_EVERY {
            return Ok(());
        }
        self.last_stale_check = Instant::now();
        let now_ns = monotonic_ns();
        let quiet = STALE_AFTER.as_nanos() as u64;
        let mut old: Vec<(u64, Target)> = self
            .last
            .values()
            .map(|s| &s.snap)
            .filter(|s| now_ns.saturating_sub(s.last_activity_ns()) >= quiet)
            .map(|s| (s.cookie, target_of(s)))
            .collect();
        old.truncate(STALE_BATCH);
        if old.is_empty() {
            return Ok(());
        }
        let targets: Vec<Target> = old.iter().map(|(_, t)| t.clone()).collect();
        let live = self.kern.lookup_many(&targets);
        for ((cookie, _), r) in old.into_iter().zip(live) {
            let gone = match r {
                Ok(None) => true,
                Ok(Some(d)) if d.send_q == 0 && d.recv_q == 0 => false,
                _ => continue,
            };
            if self.src.remove(cookie) {
                self.map_stale += 1;
                if gone {
                    self.closed.insert(cookie, (now_ns, Instant::now()));
                }
            }
        }
        Ok(())
    }
}
