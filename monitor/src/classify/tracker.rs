//! The per-socket stall state machine over successive snapshots ([`Tracker`]), its
//! bounded per-socket state, and saving it across agent restarts.

use super::cadence::{class_evidence, SnapBits};
use super::recv::step_recv;
use super::send::step_send;
use super::{
    dur_ns, ActiveStall, Departure, Episode, Evidence, Observation, StallClass, Thresholds,
    Transition, DRAIN_SAMPLES_MAX, DRAIN_SAMPLE_DIVISOR, HISTORY_EPISODES, NS_PER_MS, NS_PER_SEC,
};
use crate::snapshot::Snapshot;
use monitor_common::Gap;
use monitor_common::MIN_GAP_NS;
use serde::Deserialize;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct Sample {
    pub(super) at_ns: u64,
    pub(super) acked: u64,
}

/// The values of a socket's previous tick that the next one needs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct LastTick {
    pub(super) now_ns: u64,
    pub(super) bytes_acked: u64,
    pub(super) last_progress_ns: u64,
    pub(super) queued_bytes: u64,
    pub(super) zero_window: bool,
}

/// Bytes acked over (up to) the drain window.
#[derive(Clone, Copy, Debug)]
pub(super) struct Drain {
    pub(super) acked: u64,
    pub(super) span_ns: u64,
    pub(super) from_ns: u64,
    /// The samples reach back a full window.
    pub(super) full_window: bool,
}

/// Recovered-episode history of one socket; survives drains.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct History {
    /// Oldest first, at most [`HISTORY_EPISODES`].
    pub(super) episodes: VecDeque<Episode>,
    pub(super) total: u32,
    /// Newest gap end seen: gaps in the kernel ring ending at or before this are known.
    pub(super) last_gap_end_ns: u64,
}

impl History {
    pub(super) fn push(&mut self, ep: Episode) {
        if self.episodes.len() == HISTORY_EPISODES {
            self.episodes.pop_front();
        }
        self.last_gap_end_ns = self.last_gap_end_ns.max(ep.end_ns);
        self.episodes.push_back(ep);
        self.total = self.total.saturating_add(1);
    }

    pub(super) fn longest_ns(&self) -> Option<u64> {
        self.episodes
            .iter()
            .map(|e| e.end_ns.saturating_sub(e.start_ns))
            .max()
    }
}

/// State of a socket while it is in the kernel map (one tracking session).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Live {
    /// The kernel's `first_seen_ns`: changes when the socket drained and was tracked again.
    pub(super) session_ns: u64,
    /// Oldest first, at most [`DRAIN_SAMPLES_MAX`].
    pub(super) samples: VecDeque<Sample>,
    pub(super) last: Option<LastTick>,
    pub(super) send: Option<ActiveStall>,
    pub(super) recv: Option<ActiveStall>,
    /// What the evidence for this socket is computed from, as of its last tick. The text is
    /// written only when asked for ([`Tracker::evidence`]: a reset), not for every tracked
    /// socket every tick. Not saved across restarts (the next tick sets it again).
    #[serde(skip)]
    pub(super) evidence_in: Option<EvidenceIn>,
}

/// The inputs of [`class_evidence`] for one socket at its last tick.
#[derive(Clone, Copy, Debug)]
pub(super) struct EvidenceIn {
    pub(super) class: StallClass,
    pub(super) snap: SnapBits,
    pub(super) t: Thresholds,
    pub(super) drain: Option<Drain>,
}

impl Live {
    pub(super) fn new(session_ns: u64) -> Live {
        Live {
            session_ns,
            samples: VecDeque::new(),
            last: None,
            send: None,
            recv: None,
            evidence_in: None,
        }
    }

    /// Bytes acked from the newest sample at least `window_ns` old (or the oldest sample)
    /// up to `now`. None before the first sample.
    pub(super) fn drain(&self, now_ns: u64, acked_now: u64, window_ns: u64) -> Option<Drain> {
        let oldest = self.samples.front()?;
        let reach = now_ns.checked_sub(window_ns);
        // Samples are in time order and `push_sample` keeps about one at or before the
        // window start, so walking from the front touches one or two, not the whole window.
        let base = reach
            .and_then(|r| self.samples.iter().take_while(|s| s.at_ns <= r).last())
            .unwrap_or(oldest);
        Some(Drain {
            acked: acked_now.saturating_sub(base.acked),
            span_ns: now_ns.saturating_sub(base.at_ns),
            from_ns: base.at_ns,
            full_window: reach.is_some_and(|r| base.at_ns <= r),
        })
    }

    pub(super) fn push_sample(&mut self, now_ns: u64, acked: u64, window_ns: u64) {
        // Keep exactly one sample at or before the window start (the rate's base).
        if let Some(reach) = now_ns.checked_sub(window_ns) {
            while self.samples.len() >= 2 && self.samples[1].at_ns <= reach {
                self.samples.pop_front();
            }
        }
        let spacing = window_ns / DRAIN_SAMPLE_DIVISOR;
        let due = match self.samples.back() {
            None => true,
            Some(b) => now_ns > b.at_ns && now_ns - b.at_ns >= spacing,
        };
        if due {
            // Make room first so the ring never grows past its bound (nor its capacity).
            if self.samples.len() >= DRAIN_SAMPLES_MAX {
                self.samples.pop_front();
            }
            self.samples.push_back(Sample {
                at_ns: now_ns,
                acked,
            });
        }
    }
}

/// What one tick's state machines (`send.rs`, `recv.rs`) read besides the session they
/// step: the socket's history, its snapshot, its rule's thresholds and the drain rate.
#[derive(Clone, Copy)]
pub(super) struct TickInput<'a> {
    pub(super) history: &'a History,
    pub(super) snap: &'a Snapshot,
    pub(super) t: &'a Thresholds,
    pub(super) drain: Option<Drain>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) history: History,
    /// None: dormant (drained, history kept for its cadence).
    pub(super) live: Option<Live>,
    pub(super) last_seen_ns: u64,
}

/// Per-socket stall state machine over successive [`Snapshot`]s.
///
/// Memory bound per socket: at most [`HISTORY_EPISODES`] (8) episodes of 40 bytes, at most
/// [`DRAIN_SAMPLES_MAX`] (128) drain samples of 16 bytes, at most two [`ActiveStall`]s and
/// one [`Evidence`] (each ~150 bytes plus a reason string of < 128 bytes) and ~100 bytes of
/// bookkeeping: under 3.5 KiB for a live socket. A dormant socket (drained, history kept)
/// holds only its episodes: under 0.5 KiB. Live sockets are bounded by the kernel map size
/// (the agent calls [`Tracker::forget`] when they leave it); dormant ones by
/// [`Tracker::prune`]. A closed socket's entry is dropped at once (cookies are never reused).
#[derive(Debug, Default)]
pub struct Tracker {
    /// foldhash, not SipHash: looked up once per tracked socket per tick (cookies are not
    /// attacker-chosen keys).
    pub(super) socks: foldhash::HashMap<u64, Entry>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Feed one tick's snapshot of one tracked socket, judged with the thresholds of the
    /// policy rule that selects it.
    pub fn observe(&mut self, snap: &Snapshot, t: &Thresholds) -> Observation {
        let now = snap.now_ns;
        let entry = self.socks.entry(snap.cookie).or_default();
        entry.last_seen_ns = now;
        let mut obs = Observation::default();

        // The socket drained and was tracked again without the agent noticing: close the
        // old session as a drain.
        if entry
            .live
            .as_ref()
            .is_some_and(|l| l.session_ns != snap.times.first_seen_ns)
        {
            let old = entry.live.take().expect("checked above");
            let dep = depart(&mut entry.history, old, false, now);
            obs.transition = dep.transition;
            obs.recv_transition = dep.recv_transition;
            obs.recovered.extend(dep.recovered);
        }
        let send_done = obs.transition.is_some();
        let recv_done = obs.recv_transition.is_some();

        let Entry { history, live, .. } = entry;
        let live = live.get_or_insert_with(|| Live::new(snap.times.first_seen_ns));

        // 1. Newly recovered gaps from the kernel ring.
        let growth = live
            .last
            .map(|l| snap.bytes_acked.saturating_sub(l.bytes_acked));
        // At most the snapshot's few gaps: kept on the stack (on a streaming node most
        // sockets bring one every tick or two).
        let mut fresh: smallvec::SmallVec<[&Gap; monitor_common::GAP_SLOTS]> = snap
            .recent_gaps
            .iter()
            .filter(|g| g.end_ns > history.last_gap_end_ns && g.end_ns >= g.start_ns)
            .collect();
        fresh.sort_by_key(|g| g.end_ns);
        let n = fresh.len();
        for (i, g) in fresh.into_iter().enumerate() {
            // The tick's growth belongs to the newest gap; if several ended within one
            // tick, the earlier ones get the bytes of the ACK that ended them.
            let bytes = match growth {
                Some(grown) if i + 1 == n => grown.max(g.acked as u64),
                _ => g.acked as u64,
            };
            let ep = Episode {
                class: if g.zero_window != 0 {
                    StallClass::ZeroWindow
                } else {
                    StallClass::NoAck
                },
                start_ns: g.start_ns,
                end_ns: g.end_ns,
                duration_ms: (g.end_ns - g.start_ns) / NS_PER_MS,
                bytes_acked: bytes,
            };
            history.push(ep.clone());
            obs.recovered.push(ep);
        }

        // 2. Drain rate over the window, from earlier ticks' samples.
        let window_ns = dur_ns(t.slow_drain_window);
        let drain = live.drain(now, snap.bytes_acked, window_ns);

        let input = TickInput {
            history,
            snap,
            t,
            drain,
        };
        // 3. Send side.
        if !send_done {
            obs.transition = step_send(live, &input);
        }

        // 4. Read side.
        if !recv_done {
            obs.recv_transition = step_recv(live, &input);
        }

        // 5. Bookkeeping for the next tick.
        // Evidence speaks of the stall in force, or of the one that just cleared.
        let cleared = match &obs.transition {
            Some(Transition::Cleared { class, .. }) => Some(*class),
            _ => None,
        };
        let ev_class = match (&live.send, cleared) {
            (Some(a), _) => a.class,
            (None, Some(c)) => c,
            (None, None) if snap.zero_window => StallClass::ZeroWindow,
            (None, None) => StallClass::NoAck,
        };
        live.evidence_in = Some(EvidenceIn {
            class: ev_class,
            snap: snap.into(),
            t: *t,
            drain,
        });
        live.push_sample(now, snap.bytes_acked, window_ns);
        live.last = Some(LastTick {
            now_ns: now,
            bytes_acked: snap.bytes_acked,
            last_progress_ns: snap.times.last_progress_ns,
            queued_bytes: snap.queued_bytes,
            zero_window: snap.zero_window,
        });
        obs
    }

    /// Start bringing `cookie`'s state into cache (its entry and its newest drain sample),
    /// for [`Tracker::observe`] shortly after: the tick does this for a handful of sockets
    /// ahead, so their cache misses overlap instead of coming one after another (at tens of
    /// thousands of tracked sockets their state is not in cache).
    pub fn prefetch(&self, cookie: u64) {
        let Some(e) = self.socks.get(&cookie) else {
            return;
        };
        crate::prefetch::record(e);
        if let Some(s) = e.live.as_ref().and_then(|l| l.samples.back()) {
            crate::prefetch::record(s);
        }
    }

    /// Socket left the kernel map: closed=true (it closed) -> Some(Closed) if it was stalled;
    /// closed=false (drained: everything acked) -> Some(Cleared) if it was stalled. History of
    /// a drained socket is kept (dormant) so a bursty socket that drains between bursts keeps
    /// its cadence.
    ///
    /// Returns the send-side transition, or the read-side one when only that was active; use
    /// [`Tracker::forget_detailed`] to get both and the episode a drain ended.
    pub fn forget(&mut self, cookie: u64, closed: bool, now_ns: u64) -> Option<Transition> {
        let d = self.forget_detailed(cookie, closed, now_ns);
        d.transition.or(d.recv_transition)
    }

    /// [`Tracker::forget`] with everything it learnt: both sides' transitions and, for a
    /// drain, the no-progress episode the drain ended (if the last tick saw one).
    pub fn forget_detailed(&mut self, cookie: u64, closed: bool, now_ns: u64) -> Departure {
        let Some(entry) = self.socks.get_mut(&cookie) else {
            return Departure::default();
        };
        let dep = match entry.live.take() {
            Some(live) => depart(&mut entry.history, live, closed, now_ns),
            None => Departure::default(),
        };
        entry.last_seen_ns = entry.last_seen_ns.max(now_ns);
        if closed || entry.history.episodes.is_empty() {
            self.socks.remove(&cookie);
        }
        dep
    }

    /// The send-side stall in force for `cookie` (the one a reset acts on).
    pub fn active(&self, cookie: u64) -> Option<&ActiveStall> {
        self.socks.get(&cookie)?.live.as_ref()?.send.as_ref()
    }

    /// The read-side (`recv_backlog`, observe-only) stall in force for `cookie`.
    pub fn active_recv(&self, cookie: u64) -> Option<&ActiveStall> {
        self.socks.get(&cookie)?.live.as_ref()?.recv.as_ref()
    }

    /// Evidence for a socket right now (for reset events): as computed at its last tick for
    /// its active send-side class, or for the class its state points to (`zero_window` when
    /// the peer's window is zero, else `no_ack`). None for unknown or dormant sockets.
    pub fn evidence(&self, cookie: u64) -> Option<Evidence> {
        let entry = self.socks.get(&cookie)?;
        let i = entry.live.as_ref()?.evidence_in?;
        Some(class_evidence(i.class, &entry.history, i.snap, &i.t, i.drain).1)
    }

    /// The retained recovered episodes of a socket (live or dormant), oldest first.
    pub fn episodes(&self, cookie: u64) -> Vec<Episode> {
        self.socks
            .get(&cookie)
            .map(|e| e.history.episodes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Drop dormant histories not seen for `max_age`; keep at most `max_dormant` (oldest
    /// dropped first). Returns how many dropped. Live sockets are never dropped here.
    pub fn prune(&mut self, now_ns: u64, max_age: Duration, max_dormant: usize) -> usize {
        let before = self.socks.len();
        let max_age_ns = dur_ns(max_age);
        self.socks
            .retain(|_, e| e.live.is_some() || now_ns.saturating_sub(e.last_seen_ns) <= max_age_ns);
        let mut dormant: Vec<(u64, u64)> = self
            .socks
            .iter()
            .filter(|(_, e)| e.live.is_none())
            .map(|(c, e)| (e.last_seen_ns, *c))
            .collect();
        if dormant.len() > max_dormant {
            dormant.sort_unstable();
            let excess = dormant.len() - max_dormant;
            for (_, cookie) in &dormant[..excess] {
                self.socks.remove(cookie);
            }
        }
        before - self.socks.len()
    }

    /// Sockets currently tracked (in the kernel map as far as the tracker knows).
    pub fn len(&self) -> usize {
        self.socks.values().filter(|e| e.live.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dormant histories (drained sockets kept for their cadence).
    pub fn dormant_len(&self) -> usize {
        self.socks.values().filter(|e| e.live.is_none()).count()
    }

    /// Sockets with a stall in force on either side.
    pub fn stalled_count(&self) -> usize {
        self.socks
            .values()
            .filter_map(|e| e.live.as_ref())
            .filter(|l| l.send.is_some() || l.recv.is_some())
            .count()
    }

    /// Still stalled and no progress since the decision? (Re-verification right before a
    /// reset: pass the freshest snapshot.) Only send-side stalls qualify. For `zero_window`
    /// and `no_ack`: same tracking session, data still queued, no byte acked and no progress
    /// since the decision. For `slow_drain`: the send buffer still full and the bytes acked
    /// since the decision within the floor rate (measured over at least one second).
    pub fn still_stalled(&self, snap: &Snapshot) -> bool {
        let Some(a) = self.active(snap.cookie) else {
            return false;
        };
        if snap.times.first_seen_ns != a.session_ns {
            return false;
        }
        let acked_since = snap.bytes_acked.saturating_sub(a.progress_mark);
        match a.class {
            StallClass::ZeroWindow | StallClass::NoAck => {
                snap.queued_bytes > 0
                    && acked_since == 0
                    && snap.times.last_progress_ns <= a.last_progress_ns
            }
            StallClass::SlowDrain => {
                let elapsed = snap.now_ns.saturating_sub(a.decided_ns).max(NS_PER_SEC);
                snap.sndbuf_full
                    && (acked_since as u128) * (NS_PER_SEC as u128)
                        <= (a.floor_bps as u128) * (elapsed as u128)
            }
            StallClass::RecvBacklog => false,
        }
    }

    /// What the tracker learnt, for saving across an agent restart ([`crate::state`]): the
    /// sockets with a stall in force, then those with recovered episodes (their cadence),
    /// the most recently seen first within each. The rest learnt nothing a restart would
    /// lose but a `slow_drain` measurement in progress, which starts over; leaving them out
    /// keeps the saves cheap on a node with thousands of busy, healthy sockets. Drain-rate
    /// samples are thinned to [`SAVED_SAMPLES_MAX`] per socket.
    pub fn export(&self) -> Vec<SavedSocket> {
        let mut order: Vec<(u8, u64, u64)> = self
            .socks
            .iter()
            .filter_map(|(c, e)| {
                let stalled = e
                    .live
                    .as_ref()
                    .is_some_and(|l| l.send.is_some() || l.recv.is_some());
                let rank = if stalled {
                    0
                } else if !e.history.episodes.is_empty() {
                    1
                } else {
                    return None;
                };
                Some((rank, u64::MAX - e.last_seen_ns, *c))
            })
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .map(|(_, _, cookie)| {
                let mut entry = self.socks[&cookie].clone();
                if let Some(l) = &mut entry.live {
                    thin(&mut l.samples, SAVED_SAMPLES_MAX);
                }
                SavedSocket { cookie, entry }
            })
            .collect()
    }

    /// Take saved sockets back (at agent start, into an empty tracker).
    ///
    /// `live_ok(cookie, session_ns)` says whether the socket's saved tracking session is
    /// still the one in the kernel map (an adopted entry with the same `first_seen_ns`).
    /// When it is not, only the socket's history is kept (dormant): its stalls, drain
    /// samples and last tick belong to a session that ended while the agent was down,
    /// unobserved — neither a recovery nor a close can be told from it. Sockets left with
    /// nothing are skipped. Bounds are enforced again ([`HISTORY_EPISODES`],
    /// [`DRAIN_SAMPLES_MAX`]) whatever the file says.
    pub fn import(
        &mut self,
        saved: Vec<SavedSocket>,
        live_ok: impl Fn(u64, u64) -> bool,
    ) -> Imported {
        let mut n = Imported::default();
        for SavedSocket { cookie, mut entry } in saved {
            if entry
                .live
                .as_ref()
                .is_some_and(|l| !live_ok(cookie, l.session_ns))
            {
                entry.live = None;
            }
            while entry.history.episodes.len() > HISTORY_EPISODES {
                entry.history.episodes.pop_front();
            }
            if let Some(l) = &mut entry.live {
                while l.samples.len() > DRAIN_SAMPLES_MAX {
                    l.samples.pop_front();
                }
            }
            if entry.live.is_none() && entry.history.episodes.is_empty() {
                n.dropped += 1;
                continue;
            }
            if self.socks.contains_key(&cookie) {
                n.dropped += 1;
                continue;
            }
            if entry.live.is_some() {
                n.live += 1;
            } else {
                n.dormant += 1;
            }
            self.socks.insert(cookie, entry);
        }
        n
    }
}

/// Drain-rate samples saved per socket ([`Tracker::export`]): evenly spaced, the oldest (the
/// rate's base) and the newest kept.
pub const SAVED_SAMPLES_MAX: usize = 16;

/// Keep at most `max` (>= 2) of `v`, evenly spaced, first and last included.
pub(super) fn thin<T: Copy>(v: &mut VecDeque<T>, max: usize) {
    let len = v.len();
    if len <= max || max < 2 {
        return;
    }
    let kept: VecDeque<T> = (0..max)
        .map(|i| v[(i * (len - 1) + (max - 1) / 2) / (max - 1)])
        .collect();
    *v = kept;
}

/// One socket's tracker state as saved across agent restarts ([`Tracker::export`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedSocket {
    pub cookie: u64,
    pub(super) entry: Entry,
}

impl SavedSocket {
    /// The kernel tracking session (`first_seen_ns`) the socket was in when saved; None for
    /// a dormant history.
    pub fn session_ns(&self) -> Option<u64> {
        self.entry.live.as_ref().map(|l| l.session_ns)
    }
}

/// What [`Tracker::import`] took back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Sockets restored with their tracking session (stalls in force, samples, last tick).
    pub live: usize,
    /// Sockets restored with their history only.
    pub dormant: usize,
    /// Saved sockets with nothing left to restore.
    pub dropped: usize,
}

/// Close a tracking session: end its stalls and, for a drain, record the episode the drain
/// ended.
pub(super) fn depart(history: &mut History, live: Live, closed: bool, now_ns: u64) -> Departure {
    let end = |a: ActiveStall| {
        let stalled_for_ms = now_ns.saturating_sub(a.since_ns) / NS_PER_MS;
        if closed {
            Transition::Closed {
                class: a.class,
                stalled_for_ms,
            }
        } else {
            Transition::Cleared {
                class: a.class,
                stalled_for_ms,
            }
        }
    };
    let recovered = if closed {
        None
    } else {
        live.last.and_then(|l| {
            let gap = l.now_ns.saturating_sub(l.last_progress_ns);
            (l.queued_bytes > 0
                && gap >= MIN_GAP_NS
                && l.last_progress_ns >= history.last_gap_end_ns)
                .then_some(Episode {
                    class: if l.zero_window {
                        StallClass::ZeroWindow
                    } else {
                        StallClass::NoAck
                    },
                    start_ns: l.last_progress_ns,
                    end_ns: l.now_ns,
                    duration_ms: gap / NS_PER_MS,
                    bytes_acked: l.queued_bytes,
                })
        })
    };
    if let Some(ep) = &recovered {
        history.push(ep.clone());
    }
    Departure {
        transition: live.send.map(end),
        recv_transition: live.recv.map(end),
        recovered,
    }
}
