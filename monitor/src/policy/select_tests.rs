//! Unit tests of what a valid policy means: socket selection, the `policy check` text and
//! JSON, and the duration and rate syntax.

use super::selectors::cgroup_under;
use super::tests::{ok, sock};
use super::*;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// ----- matching --------------------------------------------------------------------

const MATCHING: &str = r#"
[[rule]]
name = "range"
local_ports = ["9000-9100"]

[[rule]]
name = "v4-net"
remote_cidrs = ["10.0.0.0/8"]

[[rule]]
name = "v6-net"
remote_cidrs = ["fd00::/8"]

[[rule]]
name = "by-comm"
comm = ["granian"]
action = "reset"
classes = ["zero_window"]

[[rule]]
name = "by-cgroup"
cgroup_prefix = ["/system.slice/app.service"]

[[rule]]
name = "by-netns"
netns = [4026532100]

[[rule]]
name = "local-net"
local_cidrs = ["192.0.2.0/24"]
remote_ports = [443]
"#;

fn selected<'p>(p: &'p Policy, id: &SocketIdentity<'_>) -> Option<&'p str> {
    p.select(id).rule.map(|r| r.name.as_str())
}

#[test]
fn ports_and_ranges() {
    let p = ok(MATCHING);
    for port in [9000, 9050, 9100] {
        assert_eq!(
            selected(&p, &sock(&format!("172.16.0.1:{port}"), "172.16.0.2:50000")),
            Some("range")
        );
    }
    for port in [8999, 9101] {
        assert_eq!(
            selected(&p, &sock(&format!("172.16.0.1:{port}"), "172.16.0.2:50000")),
            None
        );
    }
    // local_ports look at the local port only.
    assert_eq!(
        selected(&p, &sock("172.16.0.1:50000", "172.16.0.2:9000")),
        None
    );
    // remote_ports together with local_cidrs: both must match.
    assert_eq!(
        selected(&p, &sock("192.0.2.5:50000", "172.16.0.2:443")),
        Some("local-net")
    );
    assert_eq!(
        selected(&p, &sock("192.0.2.5:50000", "172.16.0.2:80")),
        None
    );
    assert_eq!(
        selected(&p, &sock("198.51.100.5:50000", "172.16.0.2:443")),
        None
    );
}

#[test]
fn cidrs_v4_v6_and_v4_mapped() {
    let p = ok(MATCHING);
    assert_eq!(
        selected(&p, &sock("172.16.0.1:80", "10.200.3.4:5000")),
        Some("v4-net")
    );
    assert_eq!(selected(&p, &sock("172.16.0.1:80", "11.0.0.1:5000")), None);
    assert_eq!(
        selected(&p, &sock("[fd00::1]:80", "[fd12::7]:5000")),
        Some("v6-net")
    );
    assert_eq!(selected(&p, &sock("[fd00::1]:80", "[fe80::7]:5000")), None);
    // A dual-stack socket talking to an IPv4 peer.
    let mapped = SocketIdentity {
        local: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80),
        remote: SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()),
            5000,
        ),
        ..sock("172.16.0.1:80", "172.16.0.2:5000")
    };
    assert_eq!(selected(&p, &mapped), Some("v4-net"));
    // And the other way round: a mapped network matches a plain IPv4 peer.
    let q = ok("[[rule]]\nname = \"m\"\nremote_cidrs = [\"::ffff:10.0.0.0/104\"]\n");
    assert_eq!(
        selected(&q, &sock("172.16.0.1:80", "10.9.9.9:5000")),
        Some("m")
    );
    assert_eq!(selected(&q, &sock("172.16.0.1:80", "11.9.9.9:5000")), None);
}

#[test]
fn comm_cgroup_and_netns() {
    let p = ok(MATCHING);
    let base = sock("172.16.0.1:80", "172.16.0.2:5000");
    assert_eq!(
        selected(
            &p,
            &SocketIdentity {
                comm: Some("granian"),
                ..base
            }
        ),
        Some("by-comm")
    );
    assert_eq!(
        selected(
            &p,
            &SocketIdentity {
                comm: Some("granian2"),
                ..base
            }
        ),
        None
    );
    assert_eq!(
        selected(&p, &SocketIdentity { comm: None, ..base }),
        None,
        "unknown comm never matches"
    );

    let cg = |path| SocketIdentity {
        cgroup_path: path,
        ..base
    };
    assert_eq!(
        selected(&p, &cg(Some("/system.slice/app.service"))),
        Some("by-cgroup")
    );
    assert_eq!(
        selected(&p, &cg(Some("/system.slice/app.service/worker"))),
        Some("by-cgroup")
    );
    assert_eq!(
        selected(&p, &cg(Some("/system.slice/app.service2"))),
        None,
        "component boundary"
    );
    assert_eq!(selected(&p, &cg(Some("/system.slice"))), None);
    assert_eq!(
        selected(&p, &cg(None)),
        None,
        "unknown cgroup never matches"
    );

    assert_eq!(
        selected(
            &p,
            &SocketIdentity {
                netns: 4026532100,
                ..base
            }
        ),
        Some("by-netns")
    );
    assert_eq!(
        selected(
            &p,
            &SocketIdentity {
                netns: 4026532101,
                ..base
            }
        ),
        None
    );

    assert!(cgroup_under("/anything", "/"));
    assert!(!cgroup_under("/a/bc", "/a/b"));
}

#[test]
fn first_match_wins_and_resets_follow_the_rule() {
    let p = ok(r#"
[[rule]]
name = "granian-8000"
local_ports = [8000]
comm = ["granian"]
action = "reset"
classes = ["zero_window"]
zero_window_after = "20s"

[[rule]]
name = "port-8000"
local_ports = [8000]
"#);
    let base = sock("10.0.0.1:8000", "10.0.0.2:5000");
    let s = p.select(&SocketIdentity {
        comm: Some("granian"),
        ..base
    });
    assert_eq!(s.rule.unwrap().name, "granian-8000");
    assert_eq!(s.thresholds.zero_window_after, Duration::from_secs(20));
    assert!(s.resets(StallClass::ZeroWindow));
    assert!(!s.resets(StallClass::NoAck));

    for comm in [Some("python3"), None] {
        let s = p.select(&SocketIdentity { comm, ..base });
        assert_eq!(s.rule.unwrap().name, "port-8000");
        assert_eq!(s.action, Action::Observe);
        assert_eq!(s.classes, Rule::DEFAULT_CLASSES);
        assert!(!s.resets(StallClass::ZeroWindow));
        assert_eq!(s.thresholds.zero_window_after, Duration::from_secs(30));
    }
}

// ----- output ----------------------------------------------------------------------

#[test]
fn describe_fills_in_inherited_values() {
    let p = ok(r#"
tick = "500ms"
[defaults]
no_ack_after = "45s"
[guards]
protect_ports = [22, 2222]
max_resets_per_minute = 10
[[rule]]
name = "ws"
local_ports = [8000, "9000-9100"]
comm = ["granian"]
action = "reset"
classes = ["zero_window", "no_ack"]
zero_window_after = "20s"
cadence_factor = 3
ceiling = "2m"
[[rule]]
name = "db"
remote_cidrs = ["10.20.0.0/16"]
"#);
    let expected = "\
policy: built-in defaults (no policy file)
tick: 500ms
guards: never reset our service on port 22, 2222 nor our outgoing connections to 22, 2222; per rule at most max(10, 10% of the sockets it tracks) resets per minute, one remote network at most 50% of that
        mass disconnect: 20 or more silent peers of one remote network are reset together, outside the budget; partition hold: no resets while 2 or more remote networks and 90% of those heard from are silent at once (at most 5m)
defaults (sockets no rule selects; observed, never reset):
  zero_window_after 30s, no_ack_after 45s, slow_drain below 1KiB/s over 30s, recv_backlog_after 30s, cadence_factor 2.0, ceiling 5m
rules (first match wins):
  1. ws (line 8): reset on zero_window, no_ack
     match: local_ports 8000, 9000-9100 and comm granian
     thresholds: zero_window_after 20s, no_ack_after 45s, slow_drain below 1KiB/s over 30s, recv_backlog_after 30s, cadence_factor 3.0, ceiling 2m
  2. db (line 17): observe
     match: remote_cidrs 10.20.0.0/16
     thresholds: zero_window_after 30s, no_ack_after 45s, slow_drain below 1KiB/s over 30s, recv_backlog_after 30s, cadence_factor 2.0, ceiling 5m
  otherwise: observe with the defaults
";
    assert_eq!(p.describe(), expected);

    let d = Policy::default().describe();
    assert!(
        d.contains("rules: none; every socket is observed with the defaults"),
        "{d}"
    );
    assert!(
        d.contains("never reset our service on port 22 nor our outgoing connections to 22;"),
        "{d}"
    );
}

#[test]
fn json_matches_the_file_syntax() {
    let p = ok(EXAMPLE_POLICY);
    let j = p.to_json();
    assert_eq!(j["tick"], "1s");
    assert_eq!(j["source"], serde_json::Value::Null);
    assert_eq!(j["defaults"]["slow_drain_floor"], "1KiB/s");
    assert_eq!(j["guards"]["protect_ports"], json!([22]));
    assert_eq!(j["guards"]["max_resets_per_minute"], 60);
    let ws = &j["rules"][0];
    assert_eq!(ws["name"], "granian-websocket");
    assert_eq!(ws["action"], "reset");
    assert_eq!(ws["classes"], json!(["zero_window", "no_ack"]));
    assert_eq!(ws["match"], json!({"local_ports": [8000]}));
    assert_eq!(ws["thresholds"]["zero_window_after"], "20s");
    assert_eq!(ws["thresholds"]["no_ack_after"], "30s");
    assert_eq!(ws["thresholds"]["cadence_factor"], 3.0);
    assert_eq!(j["rules"][1]["match"]["local_ports"], json!(["8443-8444"]));
    assert_eq!(
        j["rules"][2]["match"]["remote_cidrs"],
        json!(["10.20.0.0/16", "fd00:20::/32"])
    );
    assert_eq!(serde_json::to_value(Action::Observe).unwrap(), "observe");
}

// ----- value syntax ----------------------------------------------------------------

#[test]
fn duration_syntax_round_trips() {
    for (s, ms) in [
        ("30s", 30_000),
        ("1m30s", 90_000),
        ("500ms", 500),
        ("2h", 7_200_000),
        ("1h1m1s1ms", 3_661_001),
    ] {
        assert_eq!(parse_duration(s), Some(Duration::from_millis(ms)), "{s}");
        assert_eq!(format_duration(Duration::from_millis(ms)), s);
    }
    assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
    assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    for bad in [
        "",
        "30",
        "s",
        "30 s",
        "30sec",
        "1.5s",
        "-1s",
        "30s ",
        "99999999999999999999999h",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn rate_syntax_round_trips() {
    for (s, bps) in [
        ("512B/s", 512),
        ("1KiB/s", 1024),
        ("2MiB/s", 2 << 20),
        ("1GiB/s", 1 << 30),
        ("1536B/s", 1536),
        ("0B/s", 0),
    ] {
        assert_eq!(parse_rate(s), Some(bps), "{s}");
        assert_eq!(format_rate(bps), s);
    }
    for bad in [
        "1KiB",
        "1KB/s",
        "1 KiB/s",
        "KiB/s",
        "1.5KiB/s",
        "1kib/s",
        "99999999999GiB/s",
    ] {
        assert_eq!(parse_rate(bad), None, "{bad:?}");
    }
}
