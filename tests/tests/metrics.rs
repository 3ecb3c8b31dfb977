//! Issue 12, metrics and health: `tcpstall run --metrics-addr` serves Prometheus metrics,
//! `/healthz` and `/readyz`; a real Prometheus server (Debian's package) scrapes the agent
//! every second while it resets a real wedge, and PromQL over its HTTP API sees the counters.

use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::agent::{is_event, Agent, AgentOpts};
use tests::check::{expect_reset, wedge};
use tests::http;
use tests::prometheus::{self, Prometheus};
use tests::traffic::Listener;
use tests::{policy, require_root, reset_rule};

const MAX_SOCKETS: u32 = 4096;
/// How long PromQL may take to show what the agent did (scrapes every second).
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// GET `path` until `pred` holds for the reply, at most `timeout`; the last reply (or
/// error) in the panic message.
fn get_until(
    agent: &Agent,
    addr: SocketAddr,
    path: &str,
    pred: impl Fn(&http::Reply) -> bool,
    timeout: Duration,
) -> http::Reply {
    let deadline = Instant::now() + timeout;
    loop {
        let r = http::get(addr, path, &[], HTTP_TIMEOUT);
        match &r {
            Ok(reply) if pred(reply) => return reply.clone(),
            _ if Instant::now() > deadline => {
                panic!(
                    "GET {path} on {addr}: last answer {r:?}{}",
                    agent.diagnostics()
                )
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One PromQL expectation: at least one series of `query` whose value passes `ok`.
struct Expect {
    query: String,
    ok: fn(f64) -> bool,
    what: &'static str,
}

fn expect(query: impl Into<String>, ok: fn(f64) -> bool, what: &'static str) -> Expect {
    Expect {
        query: query.into(),
        ok,
        what,
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn prometheus_scrapes_a_reset() {
    require_root();
    if !prometheus::available() {
        return;
    }
    let l = Listener::bind(loopback()).unwrap();
    let metrics: SocketAddr = (Ipv4Addr::LOCALHOST, http::free_port()).into();
    let mut opts = AgentOpts::new(policy(
        &[22],
        1000,
        &reset_rule("wedge", &[l.port()], &["zero_window", "no_ack"]),
    ));
    opts.extra_args = vec![
        "--metrics-addr".into(),
        metrics.to_string(),
        "--max-sockets".into(),
        MAX_SOCKETS.to_string(),
        "--bpf-stats".into(),
    ];
    let agent = opts.start();
    let started = agent
        .wait_for(|e| is_event(e, "agent_started"), Duration::ZERO)
        .unwrap();
    assert_eq!(started["mode"], "enforce", "{started}");

    // Health: ready once the first tick is done (within a few ticks of agent_started).
    let ready = get_until(
        &agent,
        metrics,
        "/readyz",
        |r| r.status == 200,
        Duration::from_secs(10),
    );
    assert!(ready.body.starts_with("ready\n"), "{}", ready.body);
    assert!(ready.body.contains("mode: enforce"), "{}", ready.body);
    assert!(ready.body.contains("reset_path: works"), "{}", ready.body);
    let health = http::get(metrics, "/healthz", &[], HTTP_TIMEOUT).expect("GET /healthz");
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.body.starts_with("ok"), "{}", health.body);
    assert!(health.body.contains("hook ack: "), "{}", health.body);
    assert_eq!(
        http::get(metrics, "/nowhere", &[], HTTP_TIMEOUT)
            .unwrap()
            .status,
        404
    );
    // The exposition, both formats.
    let om = http::get(
        metrics,
        "/metrics",
        &["Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5"],
        HTTP_TIMEOUT,
    )
    .expect("GET /metrics");
    assert_eq!(om.status, 200);
    assert!(
        om.header("content-type")
            .unwrap_or("")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        om.headers
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    let plain = http::get(metrics, "/metrics", &[], HTTP_TIMEOUT).expect("GET /metrics");
    assert!(
        plain
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        plain.headers
    );
    assert!(
        plain
            .body
            .contains(&format!("\ntcpstall_map_capacity {MAX_SOCKETS}\n")),
        "{}",
        plain.body
    );

    let prom = Prometheus::start(metrics);
    let (c, blocked) = wedge(&l, 1);
    expect_reset(&agent, &c, blocked, "never-reading client");

    let version = env!("CARGO_PKG_VERSION");
    let checks = [
        expect("up{job=\"tcpstall\"}", |v| v == 1.0, "the target is up"),
        expect(
            "scrape_samples_scraped{job=\"tcpstall\"}",
            |v| v > 50.0,
            "every family is ingested",
        ),
        expect(
            "tcpstall_resets_total{rule=\"wedge\",result=\"done\"}",
            |v| v >= 1.0,
            "the reset is counted",
        ),
        expect(
            "tcpstall_stalls_started_total{rule=\"wedge\",class=\"zero_window\"}",
            |v| v >= 1.0,
            "the stall is counted",
        ),
        expect(
            "tcpstall_stalls_closed_total{rule=\"wedge\",class=\"zero_window\"}",
            |v| v >= 1.0,
            "the reset closed the stalled socket",
        ),
        expect(
            "tcpstall_stalls_active{rule=\"wedge\",class=\"zero_window\"}",
            |v| v == 0.0,
            "no stall left once the wedge is reset",
        ),
        expect(
            format!("tcpstall_map_capacity == {MAX_SOCKETS}"),
            |_| true,
            "map capacity is --max-sockets",
        ),
        expect(
            "tcpstall_tick_duration_seconds_count",
            |v| v > 0.0,
            "the tick histogram has samples",
        ),
        expect(
            "histogram_quantile(0.99, sum by (le) (tcpstall_tick_duration_seconds_bucket))",
            |v| v > 0.0 && v < 2.5,
            "tick duration p99 from the buckets",
        ),
        expect(
            "tcpstall_agent_cpu_seconds_total",
            |v| v > 0.0,
            "agent CPU time",
        ),
        expect(
            format!("tcpstall_build_info{{version=\"{version}\"}}"),
            |v| v == 1.0,
            "build info",
        ),
        expect(
            "tcpstall_hook_info{hook=\"ack\",attach!=\"none\"}",
            |v| v == 1.0,
            "the ack hook is attached",
        ),
        expect(
            "tcpstall_bpf_run_seconds_total",
            |v| v > 0.0,
            "BPF run time (--bpf-stats)",
        ),
        expect("tcpstall_kernel_info", |v| v == 1.0, "kernel info"),
        expect(
            "tcpstall_agent_info{mode=\"enforce\"}",
            |v| v == 1.0,
            "mode",
        ),
        expect("tcpstall_partition_hold", |v| v == 0.0, "no partition hold"),
    ];
    let deadline = Instant::now() + QUERY_TIMEOUT;
    let mut last: Vec<String>;
    loop {
        last = Vec::new();
        for e in &checks {
            let pass = match prom.query(&e.query) {
                Ok(series) if series.iter().any(|(_, v)| (e.ok)(*v)) => true,
                Ok(series) => {
                    let got: Vec<String> = series
                        .iter()
                        .map(|(m, v)| format!("{} = {v}", Value::to_string(m)))
                        .collect();
                    last.push(format!(
                        "{} ({}): got [{}]",
                        e.query,
                        e.what,
                        got.join(", ")
                    ));
                    false
                }
                Err(err) => {
                    last.push(format!("{} ({}): query failed: {err}", e.query, e.what));
                    false
                }
            };
            if !pass {
                break;
            }
        }
        if last.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "PromQL did not show the agent's work within {QUERY_TIMEOUT:?}:\n{}{}",
                last.join("\n"),
                agent.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(prom);
    let events = agent.stop();
    let stats = events.iter().rev().find(|e| is_event(e, "stats")).unwrap();
    assert!(stats["resets"]["done"].as_u64() >= Some(1), "{stats}");
}

/// A metrics address that is taken fails the start before anything is attached: exit code
/// 1, the reason on stderr, no `agent_started`.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_taken_metrics_port_fails_before_attaching() {
    require_root();
    let taken = std::net::TcpListener::bind(loopback()).unwrap();
    let addr = taken.local_addr().unwrap();
    let mut child = Command::new(tests::agent::binary())
        .args([
            "run",
            "--duration",
            "20s",
            "--metrics-addr",
            &addr.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the agent");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent kept running with its metrics port taken");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stdout.is_empty(), "printed events: {stdout}");
    assert!(
        stderr.contains(&format!("--metrics-addr {addr}: cannot listen")),
        "{stderr}"
    );
    drop(taken);
}

/// A policy that resets on a node where the reset path does not work (no CAP_NET_ADMIN):
/// the agent runs, observing only, so it is alive (`/healthz` 200) but not ready
/// (`/readyz` 503, saying why) — a rollout stops there.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn enforce_intent_without_a_reset_path_is_alive_but_not_ready() {
    require_root();
    use std::io::{BufRead, BufReader, Read};
    let metrics: SocketAddr = (Ipv4Addr::LOCALHOST, http::free_port()).into();
    let policy_path =
        std::env::temp_dir().join(format!("tcpstall-test-metrics-{}.toml", std::process::id()));
    std::fs::write(
        &policy_path,
        policy(&[22], 1000, &reset_rule("web", &[18080], &["zero_window"])),
    )
    .unwrap();
    let mut cmd = Command::new(tests::agent::binary());
    cmd.args(["run", "--duration", "30s", "--tick", "250ms", "--policy"])
        .arg(&policy_path)
        .args(["--metrics-addr", &metrics.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // Without CAP_NET_ADMIN (root keeps everything else).
    tests::drop_net_admin(&mut cmd);
    // The agent dies with this test process.
    tests::die_with_parent(&mut cmd, libc::SIGKILL);
    struct Kill(std::process::Child, std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_file(&self.1);
        }
    }
    let mut child = Kill(cmd.spawn().expect("spawn tcpstall"), policy_path);
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    // Keep the pipe drained.
    std::thread::spawn(move || {
        let _ = out.read_to_end(&mut Vec::new());
    });
    let ev: Value = serde_json::from_str(&first).expect("agent_started line");
    assert_eq!(ev["event"], "agent_started", "{ev}");
    assert_eq!(ev["reset_path"]["works"], false, "{ev}");
    // Not ready, for the reset path (not only for want of a first tick).
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let r = http::get(metrics, "/readyz", &[], HTTP_TIMEOUT);
        if let Ok(r) = &r {
            if r.body.contains("reset path is unavailable") {
                break r.clone();
            }
        }
        assert!(Instant::now() < deadline, "GET /readyz: last answer {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("mode: observe"), "{}", ready.body);
    assert!(
        ready.body.contains("reset_path: unavailable"),
        "{}",
        ready.body
    );
    let health = http::get(metrics, "/healthz", &[], HTTP_TIMEOUT).expect("GET /healthz");
    assert_eq!(health.status, 200, "{}", health.body);
    let m = http::get(metrics, "/metrics", &[], HTTP_TIMEOUT).expect("GET /metrics");
    assert!(
        m.body.contains("\ntcpstall_reset_path_up 0\n"),
        "{}",
        m.body
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
