//! Guards between "the policy asks for a reset" and SOCK_DESTROY: pure logic, no kernel.
//!
//! * [`protected`]: `[guards] protect_ports`, by direction. A listed *local* port protects our
//!   service on it; a listed *remote* port protects our outgoing connections to it — not a
//!   client that connects to one of our services from that source port.
//! * [`Networks`]: per remote network (IPv4 /24, IPv6 /64), whether its peers still answer.
//!   From it: a **partition hold** (ACKs stopped at once from (almost) every remote network:
//!   the node's own path is down, not its peers; resets wait) and a **mass disconnect** (many
//!   peers of one network silent while the rest of the node is fine: they are gone together,
//!   and are reset together, outside the budgets).
//! * [`Budgets`]: resets per sliding minute, per rule and per (rule, remote network), sized
//!   relative to the sockets the rule selects.
//! * [`Guards::check`] (`check.rs`): the chain of guards in its one order, for the agent's
//!   tick and `tcpstall reset`.

mod check;
pub use check::{Ask, Guards, Skip, Subject};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A socket with data in flight and no ACK of any kind for this long counts as silent.
pub const SILENCE: Duration = Duration::from_secs(1);
/// A network that sent an ACK within this long, and is not silent now, counts as alive.
pub const ALIVE_MEMORY: Duration = Duration::from_secs(5);
/// A mass-disconnect episode outlasts its network's last silent socket by this long: the
/// vanished network's other sockets whose data is queued later (and so cross their
/// thresholds later) are its stragglers, and are reset like the rest instead of waiting on
/// the budget the episode spent. One budget window, after which the budget has refilled.
pub const MASS_LINGER: Duration = Duration::from_secs(60);
/// After a partition hold ended, stalls from before its end wait at most this long for
/// their sockets' next retransmission: the kernel's longest backoff (`TCP_RTO_MAX`, 2 min)
/// and some slack.
pub const AFTER_HOLD_MAX: Duration = Duration::from_secs(130);
/// A retransmission unanswered for this long after a hold ended: the peer is not back.
pub const RETRANS_ANSWER: Duration = Duration::from_secs(1);
/// Networks not heard from for this long (and with nothing in flight) are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// At most this many remote networks are remembered (the least recently heard go first).
const MAX_NETWORKS: usize = 65_536;

/// The remote network a peer address belongs to: IPv4 /24 (also for IPv4-mapped IPv6),
/// IPv6 /64.
pub fn network_of(ip: IpAddr) -> IpNet {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, 24).expect("24 <= 32").trunc()),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, 64).expect("64 <= 128").trunc()),
    }
}

/// Whether `protect_ports` forbids resetting a socket with these ports.
///
/// `local_listener`: whether a listening socket exists on the socket's local port in its
/// namespace (the socket was accepted by our service), `None` when that could not be
/// determined. A listed local port always protects; a listed remote port protects unless
/// the socket is an accepted connection to a service of ours (a client that picked the
/// protected port as its source port is a client like any other). Unknown direction
/// protects (the safe default).
pub fn protected(
    ports: &[u16],
    local_port: u16,
    remote_port: u16,
    local_listener: Option<bool>,
) -> Option<String> {
    if ports.contains(&local_port) {
        return Some(format!(
            "local port {local_port} is in guards.protect_ports (our service or our own port)"
        ));
    }
    if ports.contains(&remote_port) {
        return match local_listener {
            Some(true) => None,
            Some(false) => Some(format!(
                "remote port {remote_port} is in guards.protect_ports and this is an outgoing \
                 connection (no listener on local port {local_port})"
            )),
            None => Some(format!(
                "remote port {remote_port} is in guards.protect_ports and whether this socket \
                 is an outgoing connection could not be determined; protected"
            )),
        };
    }
    None
}

/// One tracked socket, as the network view needs it.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub remote: IpAddr,
    /// Bytes sent and not acked.
    pub unacked_bytes: u64,
    /// Last ACK of any kind from the peer (CLOCK_MONOTONIC ns), 0 if none seen.
    pub last_ack_ns: u64,
    /// When tracking began (ns): silence is counted from here when no ACK was seen.
    pub first_seen_ns: u64,
}

#[derive(Clone, Debug, Default)]
struct Net {
    /// Last ACK seen from any socket of the network (ns).
    last_ack_ns: u64,
    /// This tick: sockets with data in flight, and those of them silent.
    inflight: u32,
    quiet: u32,
    /// This network is in a mass-disconnect episode (for the once-per-episode event).
    in_mass: bool,
    /// The last tick that found a silent socket of this network (ns).
    last_quiet_ns: u64,
    /// Sockets reset in the current mass-disconnect episode: gone from the map, they still
    /// count as silent sockets of the network (they never answered) while it lasts.
    mass_resets: u32,
}

/// What the guards know about one network at a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetState {
    /// Data in flight and no ACK from anyone in it for [`SILENCE`].
    Silent,
    /// An ACK within [`ALIVE_MEMORY`], and not silent.
    Alive,
    /// Neither: nothing in flight and not heard from recently.
    Unknown,
}

/// The partition decision of one tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetReport {
    pub silent: usize,
    pub alive: usize,
    /// Silent networks and their silent socket counts, largest first (at most 16).
    pub silent_sample: Vec<(IpNet, u32)>,
    /// Every remote network went silent at once: hold resets.
    pub partition: bool,
}

/// Per remote network: is anybody there still answering?
#[derive(Debug, Default)]
pub struct Networks {
    nets: foldhash::HashMap<IpNet, Net>,
}

/// Partition and mass-disconnect settings (`[guards]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetGuards {
    /// A partition needs at least this many silent networks.
    pub partition_min_networks: u32,
    /// ... and this share of the silent + alive networks silent.
    pub partition_share: f64,
    /// A silent network with at least this many silent sockets is a mass disconnect.
    pub mass_disconnect_min: u32,
}

impl Networks {
    /// Start a tick: per-tick counts go to zero, what was heard is kept.
    pub fn begin(&mut self) {
        for n in self.nets.values_mut() {
            n.inflight = 0;
            n.quiet = 0;
        }
    }

    /// Account one tracked socket read this tick.
    pub fn observe(&mut self, p: &Peer, now_ns: u64) {
        let n = self.nets.entry(network_of(p.remote)).or_default();
        n.last_ack_ns = n.last_ack_ns.max(p.last_ack_ns);
        if p.unacked_bytes > 0 {
            n.inflight += 1;
            let quiet_since = p.last_ack_ns.max(p.first_seen_ns);
            if now_ns.saturating_sub(quiet_since) >= SILENCE.as_nanos() as u64 {
                n.quiet += 1;
            }
        }
    }

    /// A socket of `remote` drained (everything acked): its network answered at `now_ns`.
    pub fn heard(&mut self, remote: IpAddr, now_ns: u64) {
        let n = self.nets.entry(network_of(remote)).or_default();
        n.last_ack_ns = n.last_ack_ns.max(now_ns);
    }

    pub fn state(&self, net: &IpNet, now_ns: u64) -> NetState {
        match self.nets.get(net) {
            Some(n) => Self::state_of(n, now_ns),
            None => NetState::Unknown,
        }
    }

    fn state_of(n: &Net, now_ns: u64) -> NetState {
        let since_ack = now_ns.saturating_sub(n.last_ack_ns);
        if n.inflight > 0 && n.quiet == n.inflight && since_ack >= SILENCE.as_nanos() as u64 {
            NetState::Silent
        } else if n.last_ack_ns > 0 && since_ack <= ALIVE_MEMORY.as_nanos() as u64 {
            NetState::Alive
        } else {
            NetState::Unknown
        }
    }

    /// End a tick: decide the partition, forget networks long unheard.
    pub fn finish(&mut self, g: &NetGuards, now_ns: u64) -> NetReport {
        let (mut silent, mut alive) = (0usize, 0usize);
        let mut sample = Vec::new();
        for (net, n) in &self.nets {
            match Self::state_of(n, now_ns) {
                NetState::Silent => {
                    silent += 1;
                    sample.push((*net, n.quiet));
                }
                NetState::Alive => alive += 1,
                NetState::Unknown => {}
            }
        }
        // Mass-disconnect episodes: end when the network answers again, or MASS_LINGER
        // after its last silent socket.
        let linger = MASS_LINGER.as_nanos() as u64;
        for n in self.nets.values_mut() {
            if n.quiet > 0 {
                n.last_quiet_ns = now_ns;
                if !Self::mostly_quiet(n) {
                    Self::end_mass(n);
                }
            } else if now_ns.saturating_sub(n.last_quiet_ns) > linger {
                Self::end_mass(n);
            }
        }
        sample.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sample.truncate(16);
        let partition = silent >= g.partition_min_networks.max(1) as usize
            && silent as f64 >= g.partition_share * (silent + alive) as f64;
        let forget = FORGET_AFTER.as_nanos() as u64;
        self.nets.retain(|_, n| {
            n.inflight > 0 || n.in_mass || now_ns.saturating_sub(n.last_ack_ns) < forget
        });
        if self.nets.len() > MAX_NETWORKS {
            let mut by_age: Vec<(u64, IpNet)> = self
                .nets
                .iter()
                .filter(|(_, n)| n.inflight == 0)
                .map(|(k, n)| (n.last_ack_ns, *k))
                .collect();
            by_age.sort_unstable();
            let excess = self.nets.len() - MAX_NETWORKS;
            for (_, k) in by_age.into_iter().take(excess) {
                self.nets.remove(&k);
            }
        }
        NetReport {
            silent,
            alive,
            silent_sample: sample,
            partition,
        }
    }

    /// Whether `net` is a mass disconnect now: at least `min` of its sockets silent, and at
    /// least 90 % of those with data in flight (a few peers of the same network that still
    /// answer do not hide the many that vanished). Once it is, the episode goes on while its
    /// silent sockets — counting those the episode reset ([`Networks::mass_reset`]) — stay
    /// 90 % of those in flight, and for [`MASS_LINGER`] after its last silent one: the
    /// stragglers of a network that vanished are reset as they cross their thresholds, even
    /// when fewer than `min` are left. It ends when the network answers again.
    /// The first call that finds it so in an episode returns `Some((true, silent sockets))`
    /// (say so once); later ones `Some((false, _))`; `None` when it is not one.
    pub fn mass_disconnect(&mut self, net: &IpNet, min: u32) -> Option<(bool, u32)> {
        let n = self.nets.get_mut(net)?;
        if n.quiet == 0 {
            return None; // the episode, if any, lingers (see `finish`)
        }
        if !Self::mostly_quiet(n) {
            Self::end_mass(n);
            return None;
        }
        if n.in_mass {
            return Some((false, n.quiet));
        }
        if n.quiet < min.max(1) {
            return None;
        }
        n.in_mass = true;
        Some((true, n.quiet))
    }

    /// A socket of `net` was reset as part of its mass-disconnect episode.
    pub fn mass_reset(&mut self, net: &IpNet) {
        if let Some(n) = self.nets.get_mut(net) {
            n.mass_resets = n.mass_resets.saturating_add(1);
        }
    }

    /// At least 90 % of the network's sockets with data in flight are silent (in an
    /// episode, those it reset count as silent ones in flight).
    fn mostly_quiet(n: &Net) -> bool {
        let extra = if n.in_mass {
            u64::from(n.mass_resets)
        } else {
            0
        };
        (u64::from(n.quiet) + extra) * 10 >= (u64::from(n.inflight) + extra) * 9
    }

    fn end_mass(n: &mut Net) {
        n.in_mass = false;
        n.mass_resets = 0;
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// Whether a `no_ack` stall still waits after a partition hold ended at `ended_ns` (now
/// `now_ns`, both CLOCK_MONOTONIC): when a partition heals, each connection comes back with its own next
/// retransmission, seconds or (after a long partition) up to two minutes later, so the
/// networks do not answer again all in one tick. A stall that began before the end
/// (`stall_since_ns`: its last progress) waits until its socket retransmitted after the end
/// (`last_retrans_ns`) and that went unanswered for [`RETRANS_ANSWER`]; at most
/// [`AFTER_HOLD_MAX`]. A stall that began after the end is not the partition's.
pub fn waits_after_hold(
    ended_ns: u64,
    stall_since_ns: u64,
    last_retrans_ns: u64,
    now_ns: u64,
) -> bool {
    let since_end = now_ns.saturating_sub(ended_ns);
    if since_end >= AFTER_HOLD_MAX.as_nanos() as u64 || stall_since_ns >= ended_ns {
        return false;
    }
    let answered_by = last_retrans_ns.saturating_add(RETRANS_ANSWER.as_nanos() as u64);
    !(last_retrans_ns > ended_ns && now_ns >= answered_by)
}

/// The partition hold over time: on while the partition lasts, at most `max_hold`.
#[derive(Debug, Default)]
pub struct Hold {
    since: Option<Instant>,
    /// The hold ran out while the partition lasted: resets go on until it clears.
    expired: bool,
    /// Resets held during the current hold.
    pub held: u64,
}

/// A change of the hold worth an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldChange {
    Started,
    Ended,
    Expired,
}

impl Hold {
    /// Update with this tick's partition decision. Returns what changed, if anything.
    pub fn update(
        &mut self,
        partition: bool,
        now: Instant,
        max_hold: Duration,
    ) -> Option<HoldChange> {
        match (partition, self.since) {
            (true, None) if !self.expired => {
                self.since = Some(now);
                self.held = 0;
                Some(HoldChange::Started)
            }
            (true, Some(t)) if now.duration_since(t) >= max_hold => {
                self.since = None;
                self.expired = true;
                Some(HoldChange::Expired)
            }
            (false, Some(_)) => {
                self.since = None;
                Some(HoldChange::Ended)
            }
            (false, None) => {
                self.expired = false;
                None
            }
            _ => None,
        }
    }

    pub fn active(&self) -> bool {
        self.since.is_some()
    }

    pub fn since(&self) -> Option<Instant> {
        self.since
    }
}

/// Budget settings (`[guards]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetGuards {
    /// Per rule and sliding minute, at least this many resets; 0 = no resets at all.
    pub max_resets_per_minute: u32,
    /// A rule's budget grows to this share of the sockets it tracks.
    pub reset_share_per_minute: f64,
    /// One remote network may use at most this share of its rule's budget.
    pub network_share: f64,
}

/// Why a budget refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Resets are off (`max_resets_per_minute = 0`).
    Disabled,
    Rule {
        capacity: u64,
    },
    Network {
        net: IpNet,
        capacity: u64,
    },
}

/// Sliding-minute reset budgets per rule and per (rule, remote network).
#[derive(Debug, Default)]
pub struct Budgets {
    rules: HashMap<String, VecDeque<Instant>>,
    nets: HashMap<(String, IpNet), VecDeque<Instant>>,
}

const MINUTE: Duration = Duration::from_secs(60);

fn expire(w: &mut VecDeque<Instant>, now: Instant) {
    while let Some(t) = w.front() {
        if now.duration_since(*t) >= MINUTE {
            w.pop_front();
        } else {
            break;
        }
    }
}

impl BudgetGuards {
    /// A rule's budget per minute when it selects `selected` tracked sockets.
    pub fn rule_capacity(&self, selected: u64) -> u64 {
        if self.max_resets_per_minute == 0 {
            return 0;
        }
        let share = (self.reset_share_per_minute * selected as f64).ceil() as u64;
        share.max(u64::from(self.max_resets_per_minute))
    }

    /// One network's share of a rule budget of `rule_capacity` (at least 1).
    pub fn network_capacity(&self, rule_capacity: u64) -> u64 {
        ((self.network_share * rule_capacity as f64).ceil() as u64).max(1)
    }
}

impl Budgets {
    /// Take one reset from `rule`'s budget and from its share for `net`, or say which refused
    /// (nothing is taken then).
    pub fn take(
        &mut self,
        g: &BudgetGuards,
        rule: &str,
        net: IpNet,
        selected: u64,
        now: Instant,
    ) -> Result<(), Refusal> {
        let cap = g.rule_capacity(selected);
        if cap == 0 {
            return Err(Refusal::Disabled);
        }
        let net_cap = g.network_capacity(cap);
        let rw = self.rules.entry(rule.to_string()).or_default();
        expire(rw, now);
        if rw.len() as u64 >= cap {
            return Err(Refusal::Rule { capacity: cap });
        }
        let nw = self.nets.entry((rule.to_string(), net)).or_default();
        expire(nw, now);
        if nw.len() as u64 >= net_cap {
            return Err(Refusal::Network {
                net,
                capacity: net_cap,
            });
        }
        nw.push_back(now);
        self.rules
            .get_mut(rule)
            .expect("inserted above")
            .push_back(now);
        Ok(())
    }

    /// Count a reset that bypassed the budgets (a mass disconnect), so a runaway afterwards
    /// still meets a full window.
    pub fn record(&mut self, rule: &str, now: Instant) {
        let w = self.rules.entry(rule.to_string()).or_default();
        expire(w, now);
        // Bounded: a burst beyond 100k in one minute is not remembered past that.
        if w.len() < MAX_WINDOW {
            w.push_back(now);
        }
    }

    /// Drop empty windows (bounded memory under many networks).
    pub fn prune(&mut self, now: Instant) {
        self.rules.retain(|_, w| {
            expire(w, now);
            !w.is_empty()
        });
        self.nets.retain(|_, w| {
            expire(w, now);
            !w.is_empty()
        });
    }

    /// The windows for saving across an agent restart: reset times as CLOCK_MONOTONIC ns
    /// (`now` is `now_ns` on that clock), which an agent restarted on the same boot reads back
    /// with [`Budgets::import`]. Expired resets are left out.
    pub fn export(&self, now: Instant, now_ns: u64) -> BudgetsState {
        let mono = |w: &VecDeque<Instant>| -> Vec<u64> {
            w.iter()
                .filter(|t| now.saturating_duration_since(**t) < MINUTE)
                .map(|t| now_ns.saturating_sub(now.saturating_duration_since(*t).as_nanos() as u64))
                .collect()
        };
        let mut rules: Vec<RuleWindow> = self
            .rules
            .iter()
            .map(|(rule, w)| RuleWindow {
                rule: rule.clone(),
                resets_ns: mono(w),
            })
            .filter(|w| !w.resets_ns.is_empty())
            .collect();
        rules.sort_by(|a, b| a.rule.cmp(&b.rule));
        let mut nets: Vec<NetWindow> = self
            .nets
            .iter()
            .map(|((rule, net), w)| NetWindow {
                rule: rule.clone(),
                net: net.to_string(),
                resets_ns: mono(w),
            })
            .filter(|w| !w.resets_ns.is_empty())
            .collect();
        nets.sort_by(|a, b| (&a.rule, &a.net).cmp(&(&b.rule, &b.net)));
        BudgetsState { rules, nets }
    }

    /// Take saved windows back (see [`Budgets::export`]): resets still within the last
    /// minute count against the budgets as if this agent had made them. Returns how many
    /// resets were restored (rule windows).
    pub fn import(&mut self, saved: BudgetsState, now: Instant, now_ns: u64) -> usize {
        let instants = |v: &[u64]| -> VecDeque<Instant> {
            let mut w: Vec<Instant> = v
                .iter()
                .filter(|&&t| t <= now_ns && now_ns - t < MINUTE.as_nanos() as u64)
                .filter_map(|&t| now.checked_sub(Duration::from_nanos(now_ns - t)))
                .collect();
            w.sort_unstable();
            w.truncate(MAX_WINDOW);
            w.into()
        };
        let mut n = 0;
        for r in saved.rules {
            let w = instants(&r.resets_ns);
            n += w.len();
            if !w.is_empty() {
                self.rules.insert(r.rule, w);
            }
        }
        for nw in saved.nets {
            let Ok(net) = nw.net.parse::<IpNet>() else {
                continue;
            };
            let w = instants(&nw.resets_ns);
            if !w.is_empty() {
                self.nets.insert((nw.rule, net), w);
            }
        }
        n
    }
}

/// Resets kept per window (a burst beyond this in one minute is not remembered past it).
const MAX_WINDOW: usize = 100_000;

/// [`Budgets`] as saved across agent restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetsState {
    pub rules: Vec<RuleWindow>,
    pub nets: Vec<NetWindow>,
}

/// One rule's resets of the last minute (CLOCK_MONOTONIC ns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleWindow {
    pub rule: String,
    pub resets_ns: Vec<u64>,
}

/// One (rule, remote network)'s resets of the last minute (CLOCK_MONOTONIC ns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetWindow {
    pub rule: String,
    pub net: String,
    pub resets_ns: Vec<u64>,
}

#[cfg(test)]
mod tests;
