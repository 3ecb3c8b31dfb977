//! Making room in a (nearly) full kernel map: the entries least likely to matter go.

use super::{Agent, DiagPath, SockSource};
use crate::snapshot::monotonic_ns;
use anyhow::Result;

/// The map is made room in above this share of its capacity, down to `EVICT_LOW`.
pub(super) const EVICT_HIGH: f64 = 0.95;
pub(super) const EVICT_LOW: f64 = 0.90;
/// Map pressure goes on at `EVICT_LOW` and off below this share: while on, the kernel side
/// starts no entries from writes, so the last tenth of the map stays for sockets with a
/// wedge signature (a map full of live streams never locks a new wedge out).
pub(super) const PRESSURE_OFF: f64 = 0.85;

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    /// A (nearly) full map cannot take a new wedge: remove the entries least likely to
    /// matter — never a stalled one; first those with nothing queued (the kernel would have
    /// dropped them, a hook missed it), then the least recently active — down to 90 % of
    /// the capacity. Above 95 %, or above 90 % after the kernel refused an entry while
    /// pressure was off.
    pub(super) fn make_room(&mut self, tracked: usize) -> Result<()> {
        let cap = self.src.max_sockets() as usize;
        let full = self.src.counters().map_full;
        // Refusals while pressure is on are mostly the writes pressure turns away on
        // purpose; a map that is really full is at `EVICT_HIGH` anyway.
        let refused = full > self.last_map_full && !self.pressure;
        self.last_map_full = full;
        let high = (cap as f64 * EVICT_HIGH) as usize;
        let low = (cap as f64 * EVICT_LOW) as usize;
        if tracked < high && !(refused && tracked >= low) {
            return self.update_pressure(tracked, cap);
        }
        let want = tracked.saturating_sub(low).max(1);
        let mut order: Vec<(bool, u64, u64)> = self
            .last
            .values()
            .map(|s| &s.snap)
            .filter(|s| {
                self.tracker.active(s.cookie).is_none()
                    && self.tracker.active_recv(s.cookie).is_none()
            })
            .map(|s| {
                let drained = s.queued_bytes == 0 && s.recv_unread == 0;
                (!drained, s.last_activity_ns(), s.cookie)
            })
            .collect();
        order.sort_unstable();
        let mut evicted = 0;
        for (_, _, cookie) in order.into_iter().take(want) {
            if self.src.remove(cookie) {
                evicted += 1;
                // Forgotten quietly: the socket is fine, only no longer watched.
                self.last.remove(&cookie);
                let now_ns = monotonic_ns();
                let _ = self.tracker.forget_detailed(cookie, false, now_ns);
                self.acts.remove(&cookie);
            }
        }
        if evicted > 0 {
            self.map_evicted += evicted;
            log::warn!(
                "tracking map at {tracked} of {cap} entries: evicted {evicted} (map_evicted in stats)"
            );
        }
        self.update_pressure(tracked.saturating_sub(evicted as usize), cap)
    }

    /// Map pressure on at [`EVICT_LOW`] of the capacity, off below [`PRESSURE_OFF`].
    fn update_pressure(&mut self, tracked: usize, cap: usize) -> Result<()> {
        // The same rounding as the eviction's target, so a map evicted down to 90 % is
        // under pressure.
        let on = if self.pressure {
            tracked >= (cap as f64 * PRESSURE_OFF) as usize
        } else {
            tracked >= (cap as f64 * EVICT_LOW) as usize
        };
        if on != self.pressure {
            self.src.set_pressure(on)?;
            self.pressure = on;
            if on {
                log::warn!(
                    "tracking map at {tracked} of {cap} entries: writes start no new entries; \
                     the room left is kept for sockets with a wedge signature (refusals count in map_full)"
                );
            } else {
                log::info!(
                    "tracking map at {tracked} of {cap} entries: writes start entries again"
                );
            }
        }
        Ok(())
    }
}
