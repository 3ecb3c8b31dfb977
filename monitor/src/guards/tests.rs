//! Unit tests of the guards: networks, partition hold, budgets, protection, the chain.

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

/// One tick of the network 10.9.0.0/24 with `silent` of its sockets silent and `answering`
/// acked just now (and a live network beside it).
fn tick_of(n: &mut Networks, now: u64, silent: u32, answering: u32) -> Option<(bool, u32)> {
    n.begin();
    for _ in 0..silent {
        n.observe(&peer("10.9.0.2", 1000, 1, 1), now);
    }
    for _ in 0..answering {
        n.observe(&peer("10.9.0.3", 1000, now / S, 1), now);
    }
    n.observe(&peer("10.7.0.2", 1000, now / S, 1), now);
    n.finish(&G, now);
    n.mass_disconnect(&network_of(ip("10.9.0.2")), 20)
}

#[test]
fn a_mass_disconnect_takes_its_stragglers_and_ends_when_the_network_answers_or_lingers() {
    let net = network_of(ip("10.9.0.2"));
    let mut n = Networks::default();
    // Below the minimum: no episode.
    assert_eq!(tick_of(&mut n, 100 * S, 5, 8), None);
    // 3,000 silent beside 8 that answer: an episode; the 3,000 are reset.
    assert_eq!(tick_of(&mut n, 101 * S, 3000, 8), Some((true, 3000)));
    for _ in 0..3000 {
        n.mass_reset(&net);
    }
    // A tick with none of the network silent, then the stragglers whose data was queued
    // later: 3 silent beside the 8 that answer is the same episode (the 3,000 it reset
    // count as silent), under the minimum.
    assert_eq!(tick_of(&mut n, 102 * S, 0, 8), None);
    assert_eq!(tick_of(&mut n, 103 * S, 3, 8), Some((false, 3)));
    // Past MASS_LINGER without a silent socket, the episode is over: 3 are not a new one.
    let later = 103 * S + MASS_LINGER.as_nanos() as u64 + S;
    assert_eq!(tick_of(&mut n, later, 0, 8), None);
    assert_eq!(tick_of(&mut n, later + S, 3, 0), None);
    // A new episode (its count starts again); then the network answers again: 400 of its
    // sockets are acked, more than 10 % of the 50 reset + 5 silent + 400 in flight. It
    // ends, and the 5 silent left are not one.
    assert_eq!(tick_of(&mut n, later + 2 * S, 50, 0), Some((true, 50)));
    for _ in 0..50 {
        n.mass_reset(&net);
    }
    assert_eq!(tick_of(&mut n, later + 3 * S, 5, 400), None);
    assert_eq!(tick_of(&mut n, later + 4 * S, 5, 0), None);
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

/// Answers for [`Guards::check`], counting what it asked.
#[derive(Default)]
struct Answers {
    listener: Option<bool>,
    orphans_unsafe: Option<String>,
    asked_listener: u32,
    asked_orphans: u32,
}

impl Ask for Answers {
    fn local_listener(&mut self) -> Option<bool> {
        self.asked_listener += 1;
        self.listener
    }
    fn orphans_safe(&mut self) -> Result<(), String> {
        self.asked_orphans += 1;
        match &self.orphans_unsafe {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }
}

#[test]
fn the_chain_refuses_with_the_first_guard_in_its_one_order() {
    let ports = [22];
    let all_on = Guards {
        protect_ports: &ports,
        reset_works: false,
        hold: true,
        after_hold: true,
        dry_run: true,
    };
    let worst = Subject {
        local_port: 22,
        remote_port: 50000,
        not_wedged: Some("idle".into()),
        orphan: true,
    };
    let unsafe_kernel = || Answers {
        orphans_unsafe: Some("self-test failed".into()),
        ..Answers::default()
    };
    let mut a = unsafe_kernel();
    let mut steps = Vec::new();
    // Switch off each guard that refused, in turn: the order is the chain's.
    let (mut g, mut s) = (all_on, worst.clone());
    while let Some(skip) = g.check(&s, &mut a) {
        steps.push(skip.guard());
        match skip {
            Skip::ProtectedPort(_) => s.local_port = 8080,
            Skip::NotWedged(_) => s.not_wedged = None,
            Skip::ResetUnavailable => g.reset_works = true,
            Skip::OrphanUnsafe(why) => {
                assert_eq!(why, "self-test failed");
                a.orphans_unsafe = None;
            }
            Skip::PartitionHold => g.hold = false,
            Skip::AfterPartition => g.after_hold = false,
            Skip::DryRun => g.dry_run = false,
        }
    }
    use crate::event::SkipGuard as G;
    assert_eq!(
        steps,
        [
            G::ProtectedPort,
            G::NotStalledAnymore,
            G::ResetUnavailable,
            G::OrphanUnsafe,
            G::PartitionHold,
            G::PartitionHold,
            G::DryRun
        ]
    );
    // A protected local port needs no listener lookup; the orphan self-test runs only for
    // an orphan.
    let mut a = unsafe_kernel();
    assert!(matches!(
        all_on.check(&worst, &mut a),
        Some(Skip::ProtectedPort(_))
    ));
    assert_eq!((a.asked_listener, a.asked_orphans), (0, 0));
    let mut a = unsafe_kernel();
    let not_orphan = Subject {
        local_port: 8080,
        not_wedged: None,
        orphan: false,
        ..worst.clone()
    };
    assert_eq!(
        Guards {
            reset_works: true,
            ..all_on
        }
        .check(&not_orphan, &mut a),
        Some(Skip::PartitionHold)
    );
    assert_eq!(a.asked_orphans, 0);
}

#[test]
fn the_chain_asks_for_a_listener_only_for_a_protected_remote_port() {
    let ports = [22];
    let g = Guards {
        protect_ports: &ports,
        reset_works: true,
        hold: false,
        after_hold: false,
        dry_run: false,
    };
    let client_from_22 = Subject {
        local_port: 8080,
        remote_port: 22,
        ..Subject::default()
    };
    // Our service on 8080, a client from source port 22: not protected.
    let mut a = Answers {
        listener: Some(true),
        ..Answers::default()
    };
    assert_eq!(g.check(&client_from_22, &mut a), None);
    assert_eq!(a.asked_listener, 1);
    // Our outgoing connection to 22, or direction unknown: protected.
    for listener in [Some(false), None] {
        let mut a = Answers {
            listener,
            ..Answers::default()
        };
        assert!(matches!(
            g.check(&client_from_22, &mut a),
            Some(Skip::ProtectedPort(_))
        ));
    }
    let mut a = Answers::default();
    let plain = Subject {
        local_port: 8080,
        remote_port: 50000,
        ..Subject::default()
    };
    assert_eq!(g.check(&plain, &mut a), None);
    assert_eq!(a.asked_listener, 0);
}

#[test]
fn after_a_hold_a_stall_from_before_its_end_waits_for_its_next_retransmission() {
    let end = 100 * S;
    // Quiet since before the end, no retransmission since: waits.
    assert!(waits_after_hold(end, 90 * S, 99 * S, 103 * S));
    // Retransmitted after the end, answered within RETRANS_ANSWER (it would have made
    // progress and not be a candidate) or not yet due: still waits.
    assert!(waits_after_hold(end, 90 * S, 102 * S + S / 2, 103 * S));
    // Retransmitted after the end and unanswered for a second: its peer is not back.
    assert!(!waits_after_hold(end, 90 * S, 101 * S, 103 * S));
    // A stall that began after the end is not the partition's.
    assert!(!waits_after_hold(end, 100 * S + 1, 0, 103 * S));
    // At most AFTER_HOLD_MAX.
    let max = AFTER_HOLD_MAX.as_nanos() as u64;
    assert!(waits_after_hold(end, 90 * S, 99 * S, end + max - 1));
    assert!(!waits_after_hold(end, 90 * S, 99 * S, end + max));
}
