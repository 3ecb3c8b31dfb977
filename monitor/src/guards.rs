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

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A socket with data in flight and no ACK of any kind for this long counts as silent.
pub const SILENCE: Duration = Duration::from_secs(1);
/// A network that sent an ACK within this long, and is not silent now, counts as alive.
pub const ALIVE_MEMORY: Duration = Duration::from_secs(5);
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
    nets: HashMap<IpNet, Net>,
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
        sample.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sample.truncate(16);
        let partition = silent >= g.partition_min_networks.max(1) as usize
            && silent as f64 >= g.partition_share * (silent + alive) as f64;
        let forget = FORGET_AFTER.as_nanos() as u64;
        self.nets
            .retain(|_, n| n.inflight > 0 || now_ns.saturating_sub(n.last_ack_ns) < forget);
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
    /// answer do not hide the many that vanished).
    /// The first call that finds it so in an episode returns `Some((true, silent sockets))`
    /// (say so once); later ones `Some((false, _))`; `None` when it is not one.
    pub fn mass_disconnect(&mut self, net: &IpNet, min: u32) -> Option<(bool, u32)> {
        let n = self.nets.get_mut(net)?;
        if n.quiet < min.max(1) || u64::from(n.quiet) * 10 < u64::from(n.inflight) * 9 {
            n.in_mass = false;
            return None;
        }
        let first = !n.in_mass;
        n.in_mass = true;
        Some((first, n.quiet))
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
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
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_are_24s_and_64s_and_mapped_v4_is_v4() {
        assert_eq!(network_of(ip("10.1.2.3")).to_string(), "10.1.2.0/24");
        assert_eq!(network_of(ip("::ffff:10.1.2.3")).to_string(), "10.1.2.0/24");
        assert_eq!(
            network_of(ip("2001:db8:1:2:3::4")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn protection_is_directional() {
        let p = [22];
        // Our sshd: local 22 is always protected.
        assert!(protected(&p, 22, 50000, Some(true)).is_some());
        assert!(protected(&p, 22, 50000, None).is_some());
        // Our outgoing SSH: remote 22, no listener on our ephemeral port.
        assert!(protected(&p, 41000, 22, Some(false)).is_some());
        // A client that connects to our service on 8080 from source port 22: not protected.
        assert!(protected(&p, 8080, 22, Some(true)).is_none());
        // Direction unknown: protected.
        assert!(protected(&p, 8080, 22, None).is_some());
        assert!(protected(&p, 8080, 50000, None).is_none());
        assert!(protected(&[], 22, 22, None).is_none());
    }

    fn peer(remote: &str, unacked: u64, last_ack_s: u64, first_s: u64) -> Peer {
        Peer {
            remote: ip(remote),
            unacked_bytes: unacked,
            last_ack_ns: last_ack_s * S,
            first_seen_ns: first_s * S,
        }
    }

    const G: NetGuards = NetGuards {
        partition_min_networks: 2,
        partition_share: 0.9,
        mass_disconnect_min: 20,
    };

    #[test]
    fn one_dead_network_beside_live_ones_is_no_partition_but_a_mass_disconnect() {
        let mut n = Networks::default();
        let now = 100 * S;
        n.begin();
        for i in 0..3000u32 {
            let _ = i;
            n.observe(&peer("10.9.0.2", 1000, 90, 80), now);
        }
        n.observe(&peer("10.7.0.2", 1000, 100, 80), now);
        let r = n.finish(&G, now);
        assert_eq!((r.silent, r.alive, r.partition), (1, 1, false));
        let dead = network_of(ip("10.9.0.2"));
        assert_eq!(n.mass_disconnect(&dead, 20), Some((true, 3000)));
        assert_eq!(n.mass_disconnect(&dead, 20), Some((false, 3000)));
        let live = network_of(ip("10.7.0.2"));
        assert_eq!(n.mass_disconnect(&live, 20), None);
        // A few peers of the dead network that still answer do not hide the rest.
        n.begin();
        for _ in 0..300 {
            n.observe(&peer("10.9.0.2", 1000, 90, 80), now);
        }
        for _ in 0..3 {
            n.observe(&peer("10.9.0.3", 1000, 100, 80), now);
        }
        assert_eq!(n.mass_disconnect(&dead, 20), Some((false, 300)));
        // Half of them answering: not a disconnect.
        n.begin();
        for _ in 0..30 {
            n.observe(&peer("10.9.0.2", 1000, 90, 80), now);
            n.observe(&peer("10.9.0.3", 1000, 100, 80), now);
        }
        assert_eq!(n.mass_disconnect(&dead, 20), None);
    }

    #[test]
    fn every_network_silent_at_once_is_a_partition() {
        let mut n = Networks::default();
        // Before: every network answers.
        n.begin();
        for k in 1..=4 {
            n.observe(&peer(&format!("10.{k}.0.2"), 1000, 10, 5), 10 * S);
        }
        assert!(!n.finish(&G, 10 * S).partition);
        // The node's own link goes down at 11 s: by 13 s nobody has answered anything.
        n.begin();
        for k in 1..=4 {
            n.observe(&peer(&format!("10.{k}.0.2"), 1000, 10, 5), 13 * S);
        }
        let r = n.finish(&G, 13 * S);
        assert_eq!((r.silent, r.alive, r.partition), (4, 0, true));
        // A network with nothing in flight that answered 2 s ago still counts as alive, and
        // one of five alive is more than 10 %.
        n.heard(ip("10.5.0.9"), 11 * S);
        n.begin();
        for k in 1..=4 {
            n.observe(&peer(&format!("10.{k}.0.2"), 1000, 10, 5), 13 * S);
        }
        let r = n.finish(&G, 13 * S);
        assert_eq!((r.silent, r.alive, r.partition), (4, 1, false));
        // ... until its memory runs out.
        n.begin();
        for k in 1..=4 {
            n.observe(&peer(&format!("10.{k}.0.2"), 1000, 10, 5), 17 * S);
        }
        assert!(n.finish(&G, 17 * S).partition);
    }

    #[test]
    fn a_single_silent_network_is_never_a_partition_by_default() {
        let mut n = Networks::default();
        n.begin();
        n.observe(&peer("10.1.0.2", 1000, 0, 5), 20 * S);
        let r = n.finish(&G, 20 * S);
        assert_eq!((r.silent, r.partition), (1, false));
    }

    #[test]
    fn a_network_with_one_answering_socket_is_not_silent() {
        let mut n = Networks::default();
        n.begin();
        n.observe(&peer("10.1.0.2", 1000, 0, 5), 20 * S);
        n.observe(&peer("10.1.0.3", 1000, 20, 5), 20 * S);
        assert_eq!(
            n.state(&network_of(ip("10.1.0.2")), 20 * S),
            NetState::Alive
        );
        // New data just queued has not had time to be acked: not silent yet.
        n.begin();
        n.observe(&peer("10.2.0.2", 1000, 0, 20), 20 * S);
        assert_eq!(
            n.state(&network_of(ip("10.2.0.2")), 20 * S),
            NetState::Unknown
        );
    }

    #[test]
    fn hold_starts_ends_and_expires() {
        let t0 = Instant::now();
        let max = Duration::from_secs(60);
        let mut h = Hold::default();
        assert_eq!(h.update(false, t0, max), None);
        assert_eq!(h.update(true, t0, max), Some(HoldChange::Started));
        assert!(h.active());
        assert_eq!(h.update(true, t0 + Duration::from_secs(30), max), None);
        assert_eq!(
            h.update(true, t0 + Duration::from_secs(60), max),
            Some(HoldChange::Expired)
        );
        assert!(!h.active());
        // Expired: no new hold until the partition clears.
        assert_eq!(h.update(true, t0 + Duration::from_secs(61), max), None);
        assert_eq!(h.update(false, t0 + Duration::from_secs(62), max), None);
        assert_eq!(
            h.update(true, t0 + Duration::from_secs(63), max),
            Some(HoldChange::Started)
        );
        assert_eq!(
            h.update(false, t0 + Duration::from_secs(64), max),
            Some(HoldChange::Ended)
        );
    }

    const B: BudgetGuards = BudgetGuards {
        max_resets_per_minute: 60,
        reset_share_per_minute: 0.1,
        network_share: 0.5,
    };

    #[test]
    fn rule_budget_scales_with_what_the_rule_selects() {
        assert_eq!(B.rule_capacity(10), 60);
        assert_eq!(B.rule_capacity(3000), 300);
        assert_eq!(B.network_capacity(60), 30);
        let off = BudgetGuards {
            max_resets_per_minute: 0,
            ..B
        };
        assert_eq!(off.rule_capacity(100_000), 0);
    }

    #[test]
    fn one_network_cannot_spend_a_rules_whole_budget() {
        let mut b = Budgets::default();
        let now = Instant::now();
        let hostile = network_of(ip("198.51.100.7"));
        let other = network_of(ip("203.0.113.9"));
        let mut ok = 0;
        for _ in 0..100 {
            if b.take(&B, "ws", hostile, 10, now).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 30);
        assert_eq!(
            b.take(&B, "ws", hostile, 10, now),
            Err(Refusal::Network {
                net: hostile,
                capacity: 30
            })
        );
        for _ in 0..30 {
            b.take(&B, "ws", other, 10, now).unwrap();
        }
        assert_eq!(
            b.take(&B, "ws", network_of(ip("192.0.2.1")), 10, now),
            Err(Refusal::Rule { capacity: 60 })
        );
        // Another rule has its own budget; a minute later the window is free again.
        assert!(b.take(&B, "other", hostile, 10, now).is_ok());
        let later = now + Duration::from_secs(60);
        assert!(b.take(&B, "ws", hostile, 10, later).is_ok());
        b.prune(later + Duration::from_secs(61));
        assert!(b.rules.is_empty() && b.nets.is_empty());
    }

    #[test]
    fn disabled_budget_refuses_everything() {
        let mut b = Budgets::default();
        let off = BudgetGuards {
            max_resets_per_minute: 0,
            ..B
        };
        assert_eq!(
            b.take(&off, "r", network_of(ip("10.0.0.1")), 5, Instant::now()),
            Err(Refusal::Disabled)
        );
    }

    #[test]
    fn budget_windows_survive_a_save_and_load() {
        let one = BudgetGuards {
            max_resets_per_minute: 1,
            ..B
        };
        let net = network_of(ip("198.51.100.7"));
        let mut b = Budgets::default();
        let t0 = Instant::now();
        let t0_ns = 1_000 * S;
        b.take(&one, "svc", net, 1, t0).unwrap();
        // Saved 20 s later (monotonic clock at 1020 s) and read back by a new agent 5 s after.
        let saved = b.export(t0 + Duration::from_secs(20), t0_ns + 20 * S);
        assert_eq!(saved.rules[0].resets_ns, vec![t0_ns]);
        let json = serde_json::to_string(&saved).unwrap();
        let later = t0 + Duration::from_secs(25);
        let mut back = Budgets::default();
        assert_eq!(
            back.import(serde_json::from_str(&json).unwrap(), later, t0_ns + 25 * S),
            1
        );
        assert_eq!(
            back.take(&one, "svc", network_of(ip("203.0.113.9")), 1, later),
            Err(Refusal::Rule { capacity: 1 })
        );
        // The restored reset leaves the window a minute after it was made, not after the load.
        assert!(back
            .take(&one, "svc", net, 1, t0 + Duration::from_secs(60))
            .is_ok());
        // Resets older than a minute, or from the future (another boot's clock), are dropped.
        let mut stale = Budgets::default();
        assert_eq!(stale.import(saved, later, t0_ns + 61 * S), 0);
        let future = BudgetsState {
            rules: vec![RuleWindow {
                rule: "svc".into(),
                resets_ns: vec![t0_ns + 100 * S],
            }],
            nets: vec![],
        };
        assert_eq!(Budgets::default().import(future, later, t0_ns), 0);
    }
}
