//! The tick with fake kernel parts: ordering, guards, re-verification, batching, retries.

use super::fakes::*;
use super::*;
use crate::classify::StallClass;
use crate::probes::Pinning;
use crate::reset::{self, TcpDiag};
use crate::snapshot::monotonic_ns;
use crate::state::{self, Saved};
use std::net::Ipv4Addr;
use std::sync::Arc;

#[test]
fn a_failed_event_write_never_stops_enforcement() {
    let mut r = rig("");
    r.out.1.store(true, std::sync::atomic::Ordering::Relaxed);
    r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    // stall_started, reset_intent and socket_reset all fail to be written ...
    r.agent.tick().unwrap();
    // ... and the socket is reset all the same.
    assert_eq!(r.destroyed(), vec![1]);
    assert_eq!(r.agent.out.events_lost(), 3);
    assert!(r.out.events().is_empty());
    // The output works again: the next line is followed by an events_lost line.
    r.out.1.store(false, std::sync::atomic::Ordering::Relaxed);
    r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed(), vec![1, 2]);
    let ev = r.out.events();
    assert_eq!(ev[0]["event"], "stall_started");
    assert_eq!(ev[1]["event"], "events_lost");
    assert_eq!(
        (ev[1]["count"].as_u64(), ev[1]["total"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(r.out.named("socket_reset").len(), 1);
    r.agent.emit_stats().unwrap();
    let stats = r.out.named("stats");
    assert_eq!(stats[0]["events_lost"], 3);
    // agent_started is not written by the rig: lines 0.. are this stream's.
    assert_eq!(stats[0]["events_written"].as_u64(), Some(ev.len() as u64));
}

#[test]
fn the_intent_is_on_record_before_each_destroy_batch() {
    let mut r = rig("[guards]\nmax_resets_per_minute = 1000\n");
    r.kern.0.lock().unwrap().witness = Some(r.out.clone());
    for i in 0..70u64 {
        r.add(
            stalled(
                100 + i,
                &format!("10.9.{}.2:40000", i),
                StallClass::ZeroWindow,
            ),
            true,
        );
    }
    r.agent.tick().unwrap();
    let seen = r.kern.0.lock().unwrap().out_at_destroy.clone();
    assert_eq!(seen.len(), 2, "70 resets: two batches");
    let destroyed = r.destroyed();
    let mut from = 0;
    for out in &seen {
        // The last line before the batch names exactly the sockets of the batch, and no
        // socket_reset of them is out yet.
        let last = out.last().unwrap();
        assert_eq!(last["event"], "reset_intent", "{last}");
        let cookies: Vec<u64> = last["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["cookie"].as_u64().unwrap())
            .collect();
        assert_eq!(cookies, destroyed[from..from + cookies.len()].to_vec());
        assert!(cookies.len() <= reset::DESTROY_BATCH);
        from += cookies.len();
        assert!(!out
            .iter()
            .any(|e| e["event"] == "socket_reset"
                && cookies.contains(&e["cookie"].as_u64().unwrap())));
    }
    assert_eq!(from, 70);
    assert_eq!(destroyed.len(), 70);
    assert_eq!(r.out.named("socket_reset").len(), 70);
}

#[test]
fn under_trouble_hooks_a_reload_with_a_rule_they_cannot_serve_is_refused() {
    let dir = std::env::temp_dir().join(format!("tcpstall-agent-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.toml");
    std::fs::write(&path, POLICY).unwrap();
    let mut r = rig_with(Policy::load(&path).unwrap());
    r.agent.cfg.trouble_hooks = true;
    // A rule acting only on slow_drain could never fire without per-packet hooks.
    let drain = "[[rule]]\nname = \"drain\"\nlocal_ports = [9090]\nclasses = [\"slow_drain\"]\n";
    std::fs::write(&path, format!("{POLICY}{drain}")).unwrap();
    r.agent.reload_policy();
    let reload = r.out.named("policy_reload");
    assert_eq!(reload[0]["ok"], false, "{}", reload[0]);
    let problem = reload[0]["problems"][0].as_str().unwrap();
    assert!(
        problem.starts_with(&format!(
            "{}:{}: rule \"drain\" acts only on `slow_drain`",
            path.display(),
            POLICY.lines().count() + 1
        )) && problem.contains("--trouble-hooks"),
        "{problem}"
    );
    assert_eq!(
        r.agent.policy.rules.len(),
        1,
        "the policy before stays in force"
    );
    // Listed among classes it sees: taken, with a warning naming what is lost.
    let mixed = "[[rule]]\nname = \"web\"\nlocal_ports = [9090]\n";
    std::fs::write(&path, format!("{POLICY}{mixed}")).unwrap();
    r.agent.reload_policy();
    let reload = r.out.named("policy_reload");
    assert_eq!(reload[1]["ok"], true, "{}", reload[1]);
    assert!(
        reload[1]["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("rule \"web\" lists `slow_drain`")),
        "{}",
        reload[1]
    );
    assert_eq!(r.agent.policy.rules.len(), 2);
    // Without --trouble-hooks the same slow_drain-only rule is fine.
    r.agent.cfg.trouble_hooks = false;
    std::fs::write(&path, format!("{POLICY}{drain}")).unwrap();
    r.agent.reload_policy();
    assert_eq!(r.out.named("policy_reload")[2]["ok"], true);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reload_keeps_socket_state_and_a_bad_file_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("tcpstall-agent-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.toml");
    let observe = POLICY.replace("action = \"reset\"", "action = \"observe\"");
    std::fs::write(&path, &observe).unwrap();
    let mut r = rig_with(Policy::load(&path).unwrap());
    r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    r.agent.tick().unwrap();
    assert_eq!(r.out.named("stall_started").len(), 1);
    assert!(r.destroyed().is_empty());
    // The same rule, now resetting: the stall already known is reset, not started again.
    std::fs::write(&path, POLICY).unwrap();
    r.agent.reload_policy();
    let reload = r.out.named("policy_reload");
    assert_eq!(reload[0]["ok"], true, "{}", reload[0]);
    assert_eq!(reload[0]["mode"], "enforce");
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed(), vec![1]);
    assert_eq!(r.out.named("stall_started").len(), 1);
    // A bad file is refused with its problems; the reset rule stays in force.
    std::fs::write(&path, format!("{POLICY}bogus = 1\n")).unwrap();
    r.agent.reload_policy();
    let reload = r.out.named("policy_reload");
    assert_eq!(reload[1]["ok"], false);
    let problem = reload[1]["problems"][0].as_str().unwrap();
    assert!(
        problem.starts_with(&format!(
            "{}:{}:1: unknown key `bogus`",
            path.display(),
            POLICY.lines().count() + 1
        )),
        "{problem}"
    );
    r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed(), vec![1, 2]);
    // Without --policy there is nothing to reload.
    let mut bare = rig_with(Policy::default());
    bare.agent.reload_policy();
    let reload = bare.out.named("policy_reload");
    assert_eq!(
        (reload[0]["ok"].as_bool(), reload[0]["policy"].is_null()),
        (Some(true), true)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_close_noted_after_the_map_read_is_no_recovery() {
    let mut r = rig("[guards]\nmax_resets_per_minute = 0\n");
    r.add(stalled(7, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    r.agent.tick().unwrap();
    assert_eq!(r.out.named("stall_started").len(), 1);
    // The socket closes between two ticks: its entry is gone at the next read, and its
    // note is on the ring only once that read is done.
    r.drop_entry(7);
    r.map.0.lock().unwrap().late_notes.push(note(7));
    r.agent.tick().unwrap();
    assert_eq!(
        r.out.named("stall_cleared").len(),
        0,
        "{:?}",
        r.out.events()
    );
    assert_eq!(r.out.named("stall_closed").len(), 1);
    assert!(r
        .agent
        .calibration
        .rows()
        .iter()
        .all(|c| c.episodes.count == 0));
}

/// A tick skips the departure scan only when it stamped every record: one socket leaving
/// while another arrives keeps the count equal to the map's, and the departure is still
/// seen.
#[test]
fn a_departure_in_the_tick_a_new_socket_arrives_is_seen() {
    let mut r = rig("[guards]\nmax_resets_per_minute = 0\n");
    r.add(stalled(7, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    r.agent.tick().unwrap();
    assert_eq!(r.out.named("stall_started").len(), 1);
    r.drop_entry(7);
    r.map.0.lock().unwrap().notes.push(note(7));
    r.add(healthy(8, "10.9.0.3:40000"), true);
    r.agent.tick().unwrap();
    let closed = r.out.named("stall_closed");
    assert_eq!(closed.len(), 1, "{:?}", r.out.events());
    assert_eq!(closed[0]["cookie"], 7);
    assert!(!r.agent.last.contains_key(&7));
    assert!(r.agent.last.contains_key(&8));
}

#[test]
fn a_lost_close_note_is_settled_by_the_kernel() {
    let mut r = rig("[guards]\nmax_resets_per_minute = 0\n");
    r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
    r.agent.tick().unwrap();
    assert_eq!(r.out.named("stall_started").len(), 2);
    // Both leave the map with no note: 1 is gone from the kernel (closed), 2 is still
    // established with nothing queued (drained).
    r.drop_entry(1);
    r.drop_entry(2);
    {
        let mut k = r.kern.0.lock().unwrap();
        k.live.remove(&1);
        k.live.get_mut(&2).unwrap().send_q = 0;
    }
    r.agent.tick().unwrap();
    let closed = r.out.named("stall_closed");
    let cleared = r.out.named("stall_cleared");
    assert_eq!((closed.len(), cleared.len()), (1, 1));
    assert_eq!(closed[0]["cookie"], 1);
    assert_eq!(cleared[0]["cookie"], 2);
}

#[test]
fn protected_ports_are_directional_and_checked_before_the_kernel() {
    let mut r = rig("");
    // Our outgoing connection to a peer's port 22 (no listener on our port).
    let mut out = stalled(1, "10.9.0.2:22", StallClass::ZeroWindow);
    out.lport = 40000;
    r.add(out, true);
    // A client that connected to our service on :8080 from source port 22.
    r.add(stalled(2, "10.9.1.2:22", StallClass::ZeroWindow), true);
    r.kern.0.lock().unwrap().listeners.insert(8080);
    // The rule selects local port 8080 only; widen it to port 40000 for socket 1.
    let p = Policy::parse(
        &POLICY.replace("local_ports = [8080]", "local_ports = [8080, 40000]"),
        "t",
    )
    .unwrap();
    r.agent.policy = Arc::new(p);
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed(), vec![2]);
    let skipped = r.out.named("reset_skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["cookie"], 1);
    assert_eq!(skipped[0]["guard"], "protected_port");
    assert!(skipped[0]["detail"].as_str().unwrap().contains("outgoing"));
}

#[test]
fn a_socket_the_kernel_shows_recovered_is_not_reset() {
    let mut r = rig("");
    // The map says stalled; the kernel's send queue shrank (acks the map missed).
    r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    r.kern.0.lock().unwrap().live.get_mut(&1).unwrap().send_q = 100;
    // And one the kernel shows drained completely: its stale entry is removed.
    r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
    r.kern.0.lock().unwrap().live.get_mut(&2).unwrap().send_q = 0;
    // And a no_ack stall whose peer the kernel heard from 50 ms ago.
    r.add(stalled(3, "10.9.0.4:40000", StallClass::NoAck), true);
    r.kern
        .0
        .lock()
        .unwrap()
        .live
        .get_mut(&3)
        .unwrap()
        .last_ack_recv_ms = 50;
    r.agent.tick().unwrap();
    assert!(r.destroyed().is_empty());
    let skipped = r.out.named("reset_skipped");
    assert_eq!(skipped.len(), 3);
    assert!(skipped.iter().all(|e| e["guard"] == "not_stalled_anymore"));
    assert_eq!(r.map.0.lock().unwrap().removed, vec![2]);
    // One batched lookup for the three.
    assert_eq!(r.kern.0.lock().unwrap().lookup_many_calls, 1);
    // The drained one is recorded as recovered at the next tick.
    r.agent.tick().unwrap();
    let cleared = r.out.named("stall_cleared");
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0]["cookie"], 2);
}

#[test]
fn a_mass_disconnect_is_reset_in_one_tick_under_default_guards() {
    let mut r = rig("");
    for i in 0..3000u64 {
        let port = 10000 + i;
        r.add(
            stalled(100 + i, &format!("10.9.0.2:{port}"), StallClass::NoAck),
            true,
        );
    }
    // The rest of the node is fine.
    for i in 0..5u64 {
        r.add(healthy(10 + i, &format!("10.7.0.{}:5000", 2 + i)), true);
    }
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed().len(), 3000);
    // In batches of DESTROY_BATCH, each announced by its reset_intent line first.
    let batches = 3000usize.div_ceil(reset::DESTROY_BATCH);
    assert_eq!(r.kern.0.lock().unwrap().destroy_calls, batches);
    let intents = r.out.named("reset_intent");
    assert_eq!(intents.len(), batches);
    let announced: Vec<u64> = intents
        .iter()
        .flat_map(|e| e["sockets"].as_array().unwrap().clone())
        .map(|s| s["cookie"].as_u64().unwrap())
        .collect();
    assert_eq!(announced, r.destroyed());
    let mass = r.out.named("mass_disconnect");
    assert_eq!(mass.len(), 1);
    assert_eq!(mass[0]["network"], "10.9.0.0/24");
    assert_eq!(r.out.named("reset_skipped").len(), 0);
}

#[test]
fn a_mass_disconnect_resets_its_stragglers_that_cross_later_outside_the_spent_budget() {
    let mut r = rig("");
    for i in 0..3000u64 {
        let s = stalled(
            100 + i,
            &format!("10.9.0.2:{}", 10000 + i),
            StallClass::NoAck,
        );
        r.add(s, true);
    }
    // Eight peers of the same network still answer, one elsewhere too.
    for i in 0..8u64 {
        r.add(healthy(10 + i, &format!("10.9.0.3:{}", 5000 + i)), true);
    }
    r.add(healthy(20, "10.7.0.2:5000"), true);
    // The healthy ones keep answering, however long a tick takes here.
    let answer = |r: &Rig| {
        let now = monotonic_ns();
        for s in r.map.0.lock().unwrap().states.iter_mut() {
            if s.cookie < 100 {
                s.times.last_ack_ns = now;
                s.times.last_progress_ns = now;
            }
        }
    };
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed().len(), 3000);
    for i in 0..3000u64 {
        r.drop_entry(100 + i);
    }
    answer(&r);
    r.agent.tick().unwrap();
    // Ten of the same network whose data was queued later cross their threshold now: far
    // fewer than mass_disconnect_min, and the rule's budget is spent for the minute.
    for i in 0..10u64 {
        let s = stalled(
            5000 + i,
            &format!("10.9.0.2:{}", 20000 + i),
            StallClass::NoAck,
        );
        r.add(s, true);
    }
    answer(&r);
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed().len(), 3010);
    assert_eq!(r.out.named("reset_skipped").len(), 0);
    assert_eq!(r.out.named("mass_disconnect").len(), 1);
}

#[test]
fn without_a_disconnect_budgets_hold_per_rule_and_network() {
    let mut r = rig("");
    // 100 peers of one network alive but not reading (zero window): no mass disconnect.
    for i in 0..100u64 {
        r.add(
            stalled(
                100 + i,
                &format!("198.51.100.7:{}", 10000 + i),
                StallClass::ZeroWindow,
            ),
            true,
        );
    }
    r.agent.tick().unwrap();
    // Rule budget max(60, 10 % of 100) = 60; one network at most half of it.
    assert_eq!(r.destroyed().len(), 30);
    let skipped = r.out.named("reset_skipped");
    assert_eq!(skipped.len(), 70);
    assert!(skipped.iter().all(|e| e["guard"] == "network_limit"));
    // Another network still gets the rest of the rule's budget.
    for i in 0..40u64 {
        r.add(
            stalled(
                1000 + i,
                &format!("203.0.113.9:{}", 10000 + i),
                StallClass::ZeroWindow,
            ),
            true,
        );
    }
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed().len(), 60);
    let skipped = r.out.named("reset_skipped");
    assert!(skipped.iter().any(|e| e["guard"] == "rate_limit"));
}

#[test]
fn every_network_silent_at_once_holds_resets() {
    let mut r = rig("");
    for k in 1..=4u64 {
        for i in 0..10u64 {
            r.add(
                stalled(
                    k * 100 + i,
                    &format!("10.{k}.0.2:{}", 10000 + i),
                    StallClass::NoAck,
                ),
                true,
            );
        }
    }
    r.agent.tick().unwrap();
    assert!(r.destroyed().is_empty());
    let hold = r.out.named("partition_hold");
    assert_eq!(hold.len(), 1);
    assert_eq!(hold[0]["state"], "started");
    assert_eq!(hold[0]["silent_networks"], 4);
    let skipped = r.out.named("reset_skipped");
    assert_eq!(skipped.len(), 40);
    assert!(skipped.iter().all(|e| e["guard"] == "partition_hold"));
    // ACKs come back from three networks: the hold ends. The one network still silent
    // waits for its sockets' next retransmission (they went quiet before the end), and
    // is reset when that goes unanswered (10 sockets: under the mass-disconnect size,
    // within the budget).
    {
        let mut m = r.map.0.lock().unwrap();
        let now = monotonic_ns();
        m.states.retain(|s| s.raddr[1] == 1);
        drop(m);
        for k in 2..=4u64 {
            r.add(healthy(k * 1000, &format!("10.{k}.0.2:9999")), true);
        }
        let _ = now;
    }
    r.agent.tick().unwrap();
    let hold = r.out.named("partition_hold");
    assert_eq!(hold.len(), 2);
    assert_eq!(hold[1]["state"], "ended");
    assert_eq!(hold[1]["resets_held"], 40);
    assert!(r.destroyed().is_empty());
    let waiting = r.out.named("reset_skipped");
    assert_eq!(waiting.len(), 50);
    assert!(waiting[40..].iter().all(|e| e["guard"] == "partition_hold"
        && e["detail"]
            .as_str()
            .unwrap()
            .contains("next retransmission")));
    // Two seconds later (as if): each retransmitted after the end, a second ago, unanswered.
    let ended_ns = r.agent.hold_ended.unwrap();
    r.agent.hold_ended = Some(ended_ns - 2 * S);
    for st in r.map.0.lock().unwrap().states.iter_mut() {
        if st.raddr[1] == 1 {
            st.times.last_retrans_ns = ended_ns - S;
        }
    }
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed().len(), 10);
}

#[test]
fn transient_errors_are_retried_with_backoff_and_others_are_final() {
    let mut r = rig("");
    r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    r.kern.0.lock().unwrap().destroy_errors = vec![libc::ENOBUFS];
    r.agent.tick().unwrap();
    let failed = r.out.named("reset_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error"], "ENOBUFS");
    assert_eq!(failed[0]["retry_in_ms"], 100);
    // Not before the backoff ...
    r.agent.tick().unwrap();
    assert!(r.destroyed().is_empty());
    std::thread::sleep(Duration::from_millis(120));
    // ... then again, and it works.
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed(), vec![1]);
    assert_eq!(r.out.named("socket_reset").len(), 1);
    // EPERM is final: one event, no retry.
    r.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), true);
    r.kern.0.lock().unwrap().destroy_errors = vec![libc::EPERM];
    r.agent.tick().unwrap();
    std::thread::sleep(Duration::from_millis(120));
    r.agent.tick().unwrap();
    let failed = r.out.named("reset_failed");
    assert_eq!(failed.len(), 2);
    assert!(failed[1]["retry_in_ms"].is_null());
    assert_eq!(r.destroyed(), vec![1]);
}

#[test]
fn metrics_count_what_the_events_say() {
    let mut r = rig("");
    r.agent.metrics = crate::metrics::Exporter::detached(crate::metrics::Setup {
        hooks: &[],
        degraded: &[],
        socket_key_by_address: false,
        policy: &r.agent.policy.clone(),
        dry_run: false,
        reset_works: true,
        orphans_safe: true,
        map_capacity: 100_000,
        bpf_stats: false,
        started: Instant::now(),
    });
    let has = |text: &str, series: &str| {
        assert!(text.contains(&format!("\n{series}\n")), "{series}\n{text}");
    };
    r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    let mut other = stalled(2, "10.9.0.3:40000", StallClass::NoAck);
    other.lport = 9999; // no rule
    r.add(other, true);
    r.agent.tick().unwrap();
    assert_eq!(r.destroyed(), vec![1]);
    let text = r.agent.metrics.encode(false).unwrap();
    for series in [
        r#"tcpstall_resets_total{rule="svc",result="done"} 1"#,
        r#"tcpstall_stalls_started_total{rule="svc",class="zero_window"} 1"#,
        r#"tcpstall_stalls_started_total{rule="(defaults)",class="no_ack"} 1"#,
        r#"tcpstall_stalls_active{rule="svc",class="zero_window"} 1"#,
        r#"tcpstall_stalls_active{rule="(defaults)",class="no_ack"} 1"#,
        "tcpstall_sockets_tracked 2",
        "tcpstall_map_capacity 100000",
        "tcpstall_tick_duration_seconds_count 1",
    ] {
        has(&text, series);
    }
    // The reset socket closes: closed, and no longer active.
    r.drop_entry(1);
    r.map.0.lock().unwrap().notes.push(note(1));
    r.agent.tick().unwrap();
    let text = r.agent.metrics.encode(false).unwrap();
    for series in [
        r#"tcpstall_stalls_closed_total{rule="svc",class="zero_window"} 1"#,
        r#"tcpstall_stalls_active{rule="svc",class="zero_window"} 0"#,
        "tcpstall_sockets_tracked 1",
    ] {
        has(&text, series);
    }
}

#[test]
fn a_full_map_makes_room_without_dropping_a_stall() {
    let mut r = rig("[guards]\nmax_resets_per_minute = 0\n");
    r.map.0.lock().unwrap().max = 20;
    r.add(stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    for i in 0..19u64 {
        let mut s = healthy(100 + i, &format!("10.7.0.2:{}", 10000 + i));
        // Older activity for higher cookies.
        let t = s.times.last_ack_ns - i * S;
        s.times.last_ack_ns = t;
        s.times.last_progress_ns = t;
        s.times.first_seen_ns = t - S;
        r.add(s, true);
    }
    r.agent.tick().unwrap();
    let removed = r.map.0.lock().unwrap().removed.clone();
    // 20 of 20: down to 18, the least recently active first, never the stalled one.
    assert_eq!(removed, vec![118, 117]);
    assert_eq!(r.agent.map_evicted, 2);
    assert!(r.out.named("stall_cleared").is_empty());
    // 18 of 20 left: the room above 90 % is kept for wedge signatures.
    assert!(r.map.0.lock().unwrap().pressure);
}

#[test]
fn map_pressure_goes_on_at_90_percent_and_off_below_85() {
    let mut r = rig("");
    r.map.0.lock().unwrap().max = 100;
    for i in 0..89u64 {
        r.add(healthy(100 + i, &format!("10.7.0.2:{}", 10000 + i)), true);
    }
    r.agent.tick().unwrap();
    assert!(!r.map.0.lock().unwrap().pressure, "89 of 100");
    r.add(healthy(300, "10.7.1.2:10000"), true);
    r.agent.tick().unwrap();
    assert!(r.map.0.lock().unwrap().pressure, "90 of 100");
    // Writes the kernel refused under pressure are what pressure is for: no eviction.
    r.map.0.lock().unwrap().map_full += 50;
    r.agent.tick().unwrap();
    assert!(r.map.0.lock().unwrap().removed.is_empty());
    assert_eq!(r.agent.map_evicted, 0);
    // Hysteresis: still on at 85, off at 84.
    r.map.0.lock().unwrap().states.truncate(85);
    r.agent.tick().unwrap();
    assert!(r.map.0.lock().unwrap().pressure, "85 of 100");
    r.map.0.lock().unwrap().states.truncate(84);
    r.agent.tick().unwrap();
    assert!(!r.map.0.lock().unwrap().pressure, "84 of 100");
}

#[test]
fn verify_live_reads_state_queue_window_and_acks() {
    let snap = Snapshot::from_state(&stalled(1, "10.9.0.2:1", StallClass::NoAck), monotonic_ns());
    let ok = diag(1, 4000);
    assert_eq!(verify_live(&snap, StallClass::NoAck, &ok), Ok(()));
    let closed = TcpDiag {
        state: 7,
        ..ok.clone()
    };
    assert!(verify_live(&snap, StallClass::NoAck, &closed).is_err());
    let mut zw = ok.clone();
    zw.tcp_info_len = 400;
    zw.snd_wnd = 1000;
    assert!(verify_live(&snap, StallClass::ZeroWindow, &zw).is_err());
    zw.snd_wnd = 0;
    assert_eq!(verify_live(&snap, StallClass::ZeroWindow, &zw), Ok(()));
    let _ = Ipv4Addr::LOCALHOST;
}

fn adopted() -> Pinning {
    Pinning {
        adopted: true,
        path: None,
        detail: "adopted the kernel map pinned at /test".into(),
    }
}

fn state_file(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tcpstall-agent-unit-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(state::STATE_FILE)
}

#[test]
fn a_restart_keeps_stall_clocks_budgets_and_decisions_and_drops_what_went_away() {
    let path = state_file("restart");
    let extra = "[guards]\nmax_resets_per_minute = 1\nnetwork_share = 1.0\n";
    let mut a = rig(extra);
    a.agent.persist.file = Some(path.clone());
    a.agent.persist.boot_id = state::boot_id();
    let s1 = stalled(1, "10.9.0.2:40000", StallClass::ZeroWindow);
    let (s2, s4, s5) = (
        stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow),
        stalled(4, "10.9.0.4:40000", StallClass::ZeroWindow),
        stalled(5, "10.9.0.5:40000", StallClass::ZeroWindow),
    );
    for s in [s1, s2, s4, s5] {
        a.add(s, true);
    }
    a.agent.tick().unwrap();
    assert_eq!(a.destroyed(), vec![1]);
    let skipped = a.out.named("reset_skipped");
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped.iter().all(|e| e["guard"] == "rate_limit"));
    a.agent.save_state();
    drop(a);

    // The next agent adopts the map: 2 is still stalled, 4 closed and 5 drained while no
    // agent ran (their entries are still in the map: no hook removed them).
    let mut b = rig(extra);
    b.add(s2, true);
    b.add(s4, false);
    b.add(s5, true);
    b.kern.0.lock().unwrap().live.get_mut(&5).unwrap().send_q = 0;
    let saved = state::load(&path, monotonic_ns());
    let report = b.agent.restore(&adopted(), Some((&saved, path.as_path())));
    assert!(report.adopted && report.restored, "{report:?}");
    assert!(
        report.detail.contains("3 sockets; 1 closed and 1 drained"),
        "{}",
        report.detail
    );
    assert!(
        report.detail.contains("1 resets in the rate-limit"),
        "{}",
        report.detail
    );
    assert_eq!(b.map.0.lock().unwrap().removed, vec![4, 5]);
    b.agent.tick().unwrap();
    let ev = b.out.events();
    // 2: same stall, same decision: nothing said again.
    assert!(ev.iter().all(|e| e["cookie"] != 2), "{ev:?}");
    // 4 closed while stalled, 5 recovered: said once each, no recovery for 4.
    let closed = b.out.named("stall_closed");
    let cleared = b.out.named("stall_cleared");
    assert_eq!((closed.len(), cleared.len()), (1, 1), "{ev:?}");
    assert_eq!(closed[0]["cookie"], 4);
    assert_eq!(cleared[0]["cookie"], 5);
    // The rate-limit window carried over: a new wedge within the minute is skipped.
    b.add(stalled(6, "10.9.0.6:40000", StallClass::ZeroWindow), true);
    b.agent.tick().unwrap();
    assert!(b.destroyed().is_empty());
    let skipped = b.out.named("reset_skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["cookie"], 6);
    assert_eq!(skipped[0]["guard"], "rate_limit");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn without_the_kernel_map_only_histories_and_budgets_come_back() {
    let path = state_file("fresh");
    let mut a = rig("");
    a.agent.persist.file = Some(path.clone());
    a.agent.persist.boot_id = state::boot_id();
    a.add(stalled(2, "10.9.0.3:40000", StallClass::ZeroWindow), false);
    a.agent.tick().unwrap();
    assert_eq!(a.out.named("stall_started").len(), 1);
    a.agent.save_state();
    let mut b = rig("");
    let saved = state::load(&path, monotonic_ns());
    let fresh = Pinning {
        adopted: false,
        path: None,
        detail: "kernel map started fresh: no saved kernel map in /test".into(),
    };
    let report = b.agent.restore(&fresh, Some((&saved, path.as_path())));
    assert!(!report.adopted && report.restored, "{report:?}");
    assert!(
        report.detail.contains("(0 in the same tracking session)"),
        "{}",
        report.detail
    );
    // Nothing to learn from a stall without history: it was not kept.
    assert_eq!(b.agent.tracker.len() + b.agent.tracker.dormant_len(), 0);
    // A file from an incompatible agent: started fresh, saying why.
    let bad: Result<Saved, String> = Err("it has format 9".into());
    let mut c = rig("");
    let report = c.agent.restore(&fresh, Some((&bad, path.as_path())));
    assert!(!report.adopted && !report.restored);
    assert!(
        report.detail.starts_with("started fresh: "),
        "{}",
        report.detail
    );
    assert!(report
        .detail
        .contains("state file not used: it has format 9"));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_sockets_rule_is_remembered_until_its_writer_or_the_policy_changes() {
    let extra = "[[rule]]\nname = \"py\"\ncomm = [\"python\"]\naction = \"observe\"\n";
    let mut r = rig_with(
        Policy::parse(
            &format!("tick = \"1s\"\n{extra}[[rule]]\nname = \"rest\"\nmatch_all = true\naction = \"observe\"\n"),
            "test.toml",
        )
        .unwrap(),
    );
    let mut s = healthy(1, "10.7.0.2:5000");
    s.flags |= monitor_common::flags::HAVE_WRITER;
    s.comm[..6].copy_from_slice(b"python");
    r.add(s, true);
    r.add(healthy(2, "10.7.0.3:5000"), true);
    let rule_of = |r: &Rig, cookie: u64| {
        let seen = &r.agent.last[&cookie];
        let rule = seen.sel.as_ref().expect("selected").rule();
        r.agent.policy.selection(rule).rule.map(|x| x.name.clone())
    };
    r.agent.tick().unwrap();
    assert_eq!(rule_of(&r, 1).as_deref(), Some("py"));
    assert_eq!(rule_of(&r, 2).as_deref(), Some("rest"));
    // Another writer (comm) on socket 1: matched again.
    r.map.0.lock().unwrap().states[0].comm = *b"node\0\0\0\0\0\0\0\0\0\0\0\0";
    r.agent.tick().unwrap();
    assert_eq!(rule_of(&r, 1).as_deref(), Some("rest"));
    // A new policy: every socket matched again.
    let p = Policy::parse(extra, "test.toml").unwrap();
    r.agent.policy = Arc::new(p);
    r.agent.tick().unwrap();
    assert_eq!(rule_of(&r, 2), None);
    // A departed socket's record (and selection) goes with it.
    r.drop_entry(2);
    r.agent.tick().unwrap();
    assert_eq!(r.agent.last.len(), 1);
}

/// A socket of ours whose application stopped reading 10 s ago: 4000 bytes unread, our
/// receive window closed, nothing queued to send.
fn not_reading(cookie: u64) -> monitor_common::SockState {
    let now = monotonic_ns();
    let mut s = healthy(cookie, "10.9.0.2:40000");
    s.write_seq = 1000;
    s.snd_nxt = 1000;
    s.snd_una = 1000;
    s.rcv_nxt = 4000;
    s.copied_seq = 0;
    s.rcv_wnd = 0;
    s.rcvbuf = 8000;
    s.last_read_ns = now - 10 * S;
    s
}

/// A rig whose policy starts `recv_backlog` after 2 s, with or without a read hook.
fn read_rig(no_read_hook: bool) -> Rig {
    let policy = Policy::parse(
        "tick = \"1s\"\n[defaults]\nrecv_backlog_after = \"2s\"\n",
        "t.toml",
    )
    .unwrap();
    let r = rig_with(policy);
    r.map.0.lock().unwrap().no_read_hook = no_read_hook;
    r
}

fn set_reads(r: &Rig, cookie: u64, recv_q: u32, send_q: u32, bytes_received: u64) {
    let mut k = r.kern.0.lock().unwrap();
    let d = k.live.get_mut(&cookie).unwrap();
    d.recv_q = recv_q;
    d.send_q = send_q;
    d.bytes_received = bytes_received;
    d.tcp_info_len = 232;
}

#[test]
fn without_a_read_hook_reads_are_found_by_sock_diag_and_a_drained_socket_leaves() {
    let mut r = read_rig(true);
    // Ticks back to back: every tick may look up.
    r.agent.read_lookup_every_ns = 0;
    r.add(not_reading(5), true);
    set_reads(&r, 5, 4000, 0, 10_000);
    // First tick: the kernel's record alone (10 s without a read): recv_backlog.
    r.agent.tick().unwrap();
    let started = r.out.named("stall_started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["class"], "recv_backlog");
    assert_eq!(
        r.kern.0.lock().unwrap().lookup_many_calls,
        0,
        "not seen before"
    );
    // Second tick: looked up, no byte read since: still stalled.
    r.agent.tick().unwrap();
    assert_eq!(r.kern.0.lock().unwrap().lookup_many_calls, 1);
    assert!(r.out.named("stall_cleared").is_empty());
    // The app read 4000 bytes and the peer sent 4000 more (the map, touched by no segment,
    // still says what it said): a read, so the stall clears.
    set_reads(&r, 5, 4000, 0, 14_000);
    r.agent.tick().unwrap();
    let cleared = r.out.named("stall_cleared");
    assert_eq!(cleared.len(), 1, "{:?}", r.out.events());
    assert_eq!(cleared[0]["class"], "recv_backlog");
    assert!(r.map.0.lock().unwrap().removed.is_empty());
    // Everything read, nothing queued: out of the map; the next tick takes it as drained
    // (no stall_closed).
    set_reads(&r, 5, 0, 0, 14_000);
    r.agent.tick().unwrap();
    assert_eq!(r.map.0.lock().unwrap().removed, vec![5]);
    r.agent.tick().unwrap();
    assert!(r.out.named("stall_closed").is_empty());
    assert_eq!(r.out.named("stall_started").len(), 1);
}

#[test]
fn with_a_read_hook_no_lookup_is_made_for_reads() {
    let mut r = read_rig(false);
    r.add(not_reading(5), true);
    set_reads(&r, 5, 0, 0, 14_000);
    for _ in 0..3 {
        r.agent.tick().unwrap();
    }
    assert_eq!(r.kern.0.lock().unwrap().lookup_many_calls, 0);
    assert!(r.map.0.lock().unwrap().removed.is_empty());
    // The hook reports reads: what the map says stands.
    assert_eq!(r.out.named("stall_started").len(), 1);
    assert!(r.out.named("stall_cleared").is_empty());
}

#[test]
fn a_socket_waiting_on_a_read_is_looked_up_at_most_once_a_second() {
    let mut r = read_rig(true);
    r.add(not_reading(5), true);
    set_reads(&r, 5, 4000, 0, 10_000);
    for _ in 0..5 {
        r.agent.tick().unwrap();
    }
    // Tick 1 only records the socket; tick 2 looks it up; ticks 3-5 fall within the second.
    assert_eq!(r.kern.0.lock().unwrap().lookup_many_calls, 1);
    assert_eq!(r.agent.read_lookups, 1);
}

/// A rig with neither an ACK hook nor a read hook (`--trouble-hooks`), ticks back to back.
fn trouble_rig() -> Rig {
    trouble_rig_with(rig(""))
}

fn trouble_rig_with(mut r: Rig) -> Rig {
    {
        let mut m = r.map.0.lock().unwrap();
        m.no_ack_hook = true;
        m.no_read_hook = true;
    }
    r.agent.read_lookup_every_ns = 0;
    r
}

fn set_acks(r: &Rig, cookie: u64, send_q: u32, recv_q: u32, bytes_acked: u64) {
    let mut k = r.kern.0.lock().unwrap();
    let d = k.live.get_mut(&cookie).unwrap();
    d.send_q = send_q;
    d.recv_q = recv_q;
    d.bytes_acked = bytes_acked;
    d.tcp_info_len = 224;
}

#[test]
fn without_an_ack_hook_a_wedge_is_judged_by_sock_diag_and_reset() {
    let mut r = trouble_rig();
    // The kernel side's record: zero window, no progress for 10 s.
    r.add(stalled(5, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    set_acks(&r, 5, 4000, 0, 1000);
    r.agent.tick().unwrap();
    // Looked up at once (new this tick), nothing acked: the stall stands and is reset.
    assert_eq!(r.agent.progress_lookups, 1);
    assert_eq!(r.out.named("stall_started")[0]["class"], "zero_window");
    assert_eq!(r.destroyed(), vec![5]);
}

#[test]
fn without_an_ack_hook_progress_seen_by_sock_diag_keeps_a_live_peer_and_a_drained_socket_leaves() {
    let mut r = trouble_rig();
    // The kernel side saw the trouble 10 s ago and nothing since; the peer has been acking.
    r.add(stalled(6, "10.9.0.2:40000", StallClass::ZeroWindow), true);
    set_acks(&r, 6, 1000, 0, 5000);
    r.agent.tick().unwrap();
    for acked in [6000, 7000, 8000] {
        set_acks(&r, 6, 1000, 0, acked);
        r.agent.tick().unwrap();
    }
    assert!(
        r.out.named("stall_started").is_empty(),
        "{:?}",
        r.out.events()
    );
    assert!(r.destroyed().is_empty());
    assert_eq!(r.agent.progress_lookups, 4);
    // Then it stops acking: after the threshold (2 s) from the last progress, a stall.
    let before = r.out.named("stall_started").len();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    r.agent.tick().unwrap();
    assert_eq!(r.out.named("stall_started").len(), before + 1);
    // A drained socket (nothing queued either way) leaves the map.
    let mut r = trouble_rig();
    r.add(stalled(7, "10.9.0.3:40000", StallClass::NoAck), true);
    set_acks(&r, 7, 0, 0, 9000);
    r.agent.tick().unwrap();
    assert_eq!(r.map.0.lock().unwrap().removed, vec![7]);
    assert!(r.destroyed().is_empty());
}

#[test]
fn with_an_ack_hook_no_lookup_is_made_for_progress() {
    let mut r = rig("");
    r.add(healthy(5, "10.9.0.2:40000"), true);
    for _ in 0..3 {
        r.agent.tick().unwrap();
    }
    assert_eq!(r.agent.progress_lookups, 0);
}

#[test]
fn without_an_ack_hook_a_socket_whose_trouble_is_over_leaves_the_map() {
    let mut r = trouble_rig();
    // Tracked at a retransmission timeout; the peer answers again and the RTO is no
    // longer backed off: it leaves the map (and is tracked again at its next trouble).
    r.add(healthy(8, "10.9.0.4:40000"), true);
    set_acks(&r, 8, 4000, 0, 1000);
    r.agent.tick().unwrap();
    {
        let mut k = r.kern.0.lock().unwrap();
        let d = k.live.get_mut(&8).unwrap();
        d.backoff = 0;
        d.probes = 0;
        d.bytes_acked = 2000;
    }
    r.agent.tick().unwrap();
    assert_eq!(r.map.0.lock().unwrap().removed, vec![8]);
    // A socket in an active stall (observed, no rule) stays until the stall has cleared.
    let observe = "tick = \"1s\"\n[defaults]\nno_ack_after = \"2s\"\n";
    let mut r = trouble_rig_with(rig_with(Policy::parse(observe, "t.toml").unwrap()));
    r.add(stalled(9, "10.9.0.5:40000", StallClass::NoAck), true);
    set_acks(&r, 9, 4000, 0, 1000);
    r.agent.tick().unwrap();
    assert_eq!(r.out.named("stall_started").len(), 1);
    {
        let mut k = r.kern.0.lock().unwrap();
        let d = k.live.get_mut(&9).unwrap();
        d.backoff = 0;
        d.probes = 0;
        d.bytes_acked = 2000;
    }
    r.agent.tick().unwrap();
    // The progress clears the stall in that tick, so it may leave at once.
    assert_eq!(
        r.out.named("stall_cleared").len(),
        1,
        "{:?}",
        r.out.events()
    );
    assert_eq!(r.map.0.lock().unwrap().removed, vec![9]);
}

#[test]
fn without_an_ack_hook_a_holder_is_looked_for_only_once_a_socket_stayed_in_trouble() {
    let mut r = trouble_rig();
    // Two sockets tracked at their trouble (a backed-off RTO, progress a moment ago, so no
    // stall), no writer seen; inodes no process holds.
    for (cookie, remote, ino) in [
        (8, "10.9.0.4:40000", 0xFFFF_FF01),
        (9, "10.9.0.5:40000", 0xFFFF_FF02),
    ] {
        let mut s = healthy(cookie, remote);
        s.backoff = 2;
        s.sock_ino = ino;
        r.add(s, true);
        set_acks(&r, cookie, 4000, 0, 1000);
    }
    r.agent.tick().unwrap();
    // One lookup each, no walk yet (with an ACK hook the next tick would walk).
    assert_eq!(r.agent.holders.walks, 0);
    // 8 recovers at its next lookup and leaves; 9 stays in trouble.
    {
        let mut k = r.kern.0.lock().unwrap();
        let d = k.live.get_mut(&8).unwrap();
        d.backoff = 0;
        d.probes = 0;
        d.bytes_acked = 2000;
    }
    r.agent.tick().unwrap();
    assert_eq!(r.map.0.lock().unwrap().removed, vec![8]);
    assert_eq!(r.agent.holders.walks, 0);
    // 9 stayed past its second lookup: the next tick looks for its holder, once.
    r.agent.tick().unwrap();
    assert_eq!(r.agent.holders.walks, 1);
    r.agent.tick().unwrap();
    assert_eq!(r.agent.holders.walks, 1);
    assert!(r.destroyed().is_empty());

    // Contrast: with an ACK hook a socket that stayed tracked one tick is looked for.
    let mut r = rig("");
    let mut s = healthy(8, "10.9.0.4:40000");
    s.sock_ino = 0xFFFF_FF01;
    r.add(s, true);
    r.agent.tick().unwrap();
    r.agent.tick().unwrap();
    assert_eq!(r.agent.holders.walks, 1);
}

#[test]
fn without_an_ack_hook_the_lookup_naming_a_new_sockets_cookie_is_its_first_progress_lookup() {
    let mut r = trouble_rig();
    // Address keys: the kernel side does not know the socket's cookie yet. In trouble
    // (backed off), progress a moment ago: not judged stalled.
    let mut s = healthy(5, "10.9.0.2:40000");
    s.backoff = 2;
    r.add(s, true);
    set_acks(&r, 5, 4000, 0, 1000);
    {
        let mut k = r.kern.0.lock().unwrap();
        k.by_remote.insert("10.9.0.2:40000".parse().unwrap(), 5);
        r.map.0.lock().unwrap().unnamed.insert(5);
    }
    r.agent.tick().unwrap();
    // One lookup named it and served as its progress lookup: no batched lookup.
    let (single, batched) = {
        let k = r.kern.0.lock().unwrap();
        (k.lookup_calls, k.lookup_many_calls)
    };
    assert_eq!((single, batched), (1, 0));
    assert_eq!(r.agent.progress_lookups, 0);
    // Folded in as its first lookup: the next tick's is its second.
    assert!(!r.agent.last[&5]
        .send_seen
        .as_deref()
        .expect("looked up")
        .stayed_in_trouble());
    r.agent.tick().unwrap();
    assert_eq!(r.agent.progress_lookups, 1);
    assert!(r.agent.last[&5]
        .send_seen
        .as_deref()
        .expect("looked up")
        .stayed_in_trouble());
    assert!(r.destroyed().is_empty());
}
