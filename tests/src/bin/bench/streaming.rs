//! Question 4: what does a streaming server cost the agent? N loopback connections whose
//! server side always has data queued to a live, slowly draining reader (every one of them
//! tracked and read each tick), with the agent observe-only at its default thresholds: agent
//! CPU (process + in-kernel BPF run time) per second and per tracked socket, tick time, RSS,
//! map memory, `sockets_tracked`/`map_full`, false stalls; past the map's bound, whether a few
//! real wedges are still reported.

use crate::agent::{Agent, Event};
use crate::util::{self, Helper, Spread};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The local port of the wedged server sockets each N adds to its streams.
const WEDGE_PORT: u16 = 7399;

/// Stream sockets `diag_reads` looks up per batch.
const DIAG_READS: usize = 1000;

/// How long the trouble-only program watches each N's streams before the agent starts.
const TROUBLE_BEFORE: Duration = Duration::from_secs(10);

/// Settings of the streaming benchmark.
pub struct Config {
    /// Connection counts to test.
    pub ns: Vec<usize>,
    /// Measurement rounds per N.
    pub rounds: usize,
    /// Length of one measurement window.
    pub window: Duration,
    /// Most connections one streamer process holds (2 fds each, fd limit 20,000).
    pub per_process: usize,
    /// The agent watches each N at least this long (false stalls need at least the longest
    /// default threshold to show).
    pub observe: Duration,
    /// Wedged connections made during each run (0: none).
    pub wedges: usize,
    /// Pacing rate per stream, bytes per second.
    pub rate: u32,
    /// MSS of the streams.
    pub mss: u32,
    /// SO_SNDBUF of the servers and SO_RCVBUF of the clients (the kernel doubles both).
    pub buf: u32,
    /// Bytes per write.
    pub chunk: usize,
    /// One write per stream every this long.
    pub period: Duration,
    /// Policy file for the agent (defaults only: observe, no reset rule).
    pub policy: PathBuf,
    /// `--max-sockets` for the agent; `None` = its default.
    pub max_sockets: Option<u32>,
}

/// Write the observe-only policy: the built-in default thresholds, no rule, 1 s tick.
pub fn write_policy(path: &Path) -> Result<()> {
    std::fs::write(
        path,
        "# written by the tcpstall benchmark (streaming): default thresholds, no reset rule\n\
         tick = \"1s\"\n",
    )
    .with_context(|| format!("writing policy {}", path.display()))
}

/// The agent's longest default threshold: a false stall cannot show before it.
fn longest_default_threshold() -> Duration {
    let t = monitor::classify::Thresholds::default();
    t.zero_window_after
        .max(t.no_ack_after)
        .max(t.slow_drain_window)
        .max(t.recv_backlog_after)
}

pub fn spawn_streamers(cfg: &Config, n: usize, phase: usize) -> Result<Vec<Helper>> {
    let count = n.div_ceil(cfg.per_process);
    if count > 240 || phase > 200 {
        bail!("too many streamer processes ({count}) or phases ({phase}) for the 127.3.X.Y address plan");
    }
    let mut helpers = Vec::with_capacity(count);
    for h in 0..count {
        let share = n / count + usize::from(h < n % count);
        let args: Vec<String> = vec![
            "streamer".into(),
            "--listen".into(),
            format!("127.3.{phase}.{}:7300", h + 1),
            "--count".into(),
            share.to_string(),
            "--rate".into(),
            cfg.rate.to_string(),
            "--mss".into(),
            cfg.mss.to_string(),
            "--sndbuf".into(),
            cfg.buf.to_string(),
            "--rcvbuf".into(),
            cfg.buf.to_string(),
            "--chunk".into(),
            cfg.chunk.to_string(),
            "--period-ms".into(),
            cfg.period.as_millis().to_string(),
        ];
        helpers.push(Helper::spawn(&format!("streamer-{n}-{h}"), &args)?);
    }
    util::await_ready(&mut helpers, "streamer", n)?;
    Ok(helpers)
}

/// Sum of the streamers' counters: (bytes read, bytes written, dead connections).
fn load_stats(helpers: &mut [Helper]) -> Result<(u64, u64, u64)> {
    let [r, w, d, _cpu] = util::sum_replies(
        helpers,
        "streamer",
        "stats",
        "stats",
        Duration::from_secs(30),
    )?;
    Ok((r, w, d))
}

fn stats_between(events: &[Event], t0: u64, t1: u64) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| e.name() == "stats" && e.arrived_ns >= t0 && e.arrived_ns <= t1)
        .collect()
}

fn col(evs: &[&Event], key: &str) -> Vec<f64> {
    evs.iter()
        .filter_map(|e| e.u64(key))
        .map(|v| v as f64)
        .collect()
}

/// Is this event about one of the wedged connections (`wedge_addr` = their listener)?
fn about(e: &Event, addr: &str) -> Option<&'static str> {
    if e.v["local"].as_str() == Some(addr) {
        Some("server")
    } else if e.v["remote"].as_str() == Some(addr) {
        Some("client")
    } else {
        None
    }
}

/// Distinct server sockets of the wedges (listener `addr`) with a `stall_started` line.
fn server_sockets_stalled(events: &[Event], addr: &str) -> usize {
    let mut c: Vec<u64> = events
        .iter()
        .filter(|e| e.name() == "stall_started" && about(e, addr) == Some("server"))
        .filter_map(|e| e.u64("cookie"))
        .collect();
    c.sort_unstable();
    c.dedup();
    c.len()
}

/// Each program's runs per second, ns per run and ms per second between two readings
/// `dt` apart (only programs that ran).
fn per_program(before: &[(String, u64, u64)], after: &[(String, u64, u64)], dt: Duration) -> Value {
    let secs = dt.as_secs_f64().max(1e-9);
    let mut out: Vec<Value> = after
        .iter()
        .filter_map(|(name, ns1, c1)| {
            let (_, ns0, c0) = before.iter().find(|(n, _, _)| n == name)?;
            let (ns, runs) = (
                ns1.saturating_sub(*ns0) as f64,
                c1.saturating_sub(*c0) as f64,
            );
            (runs > 0.0).then(|| {
                json!({"name": name, "runs_per_s": runs / secs, "ns_per_run": ns / runs,
                       "ms_per_s": ns / 1e6 / secs})
            })
        })
        .collect();
    out.sort_by(|a, b| {
        let k = |v: &Value| v["ms_per_s"].as_f64().unwrap_or(0.0);
        k(b).total_cmp(&k(a))
    });
    Value::Array(out)
}

/// The attach floor of the streams' traffic ([`crate::floor`]): empty programs at
/// `tracepoints`, their run time and runs per second over one window; null without any.
fn floor_window(tracepoints: &[String], window: Duration) -> Result<Value> {
    if tracepoints.is_empty() {
        return Ok(Value::Null);
    }
    let floor = crate::floor::Floor::attach(tracepoints)?;
    util::sleep_checked(Duration::from_millis(500))?;
    let (r0, c0) = floor.runs()?;
    let t0 = Instant::now();
    util::sleep_checked(window)?;
    let (r1, c1) = floor.runs()?;
    let dt = t0.elapsed().as_secs_f64();
    let runs = (c1 - c0) as f64;
    Ok(json!({
        "tracepoints": floor.tracepoints(),
        "bpf_ms_per_s": (r1 - r0) as f64 / 1e6 / dt,
        "runs_per_s": runs / dt,
        "ns_per_run": if runs > 0.0 { (r1 - r0) as f64 / runs } else { 0.0 },
    }))
}

/// What the ACK hook's time is made of ([`monitor::cost`]), on the same streams after the
/// agent stopped: each cost program alone at the ACK hook's tracepoint, first the hook's steps
/// up to its map lookup, then those and the lookup; run time, runs and how far the runs went
/// over one window each. The lookup program first runs until the sockets with data queued have
/// their entries (new entries fall under 1 % of those made per second, at most 15 s), so its
/// window measures lookups in a map about as full as the agent's was. Null where the kernel
/// has no socket cookies for tracing programs (the programs need them).
fn ack_cost(window: Duration) -> Result<Value> {
    use monitor::cost::{AckCost, Step};
    let (offsets, _) = monitor::btf::load_offsets().context("kernel offsets")?;
    if !monitor::cost::supported(&offsets) {
        return Ok(Value::Null);
    }
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow::anyhow!("enabling BPF run-time stats: {e}"))?;
    let mut out = serde_json::Map::new();
    for step in [Step::Reach, Step::Lookup] {
        let p = AckCost::attach(&offsets, step)
            .with_context(|| format!("attaching {}", step.program()))?;
        let warm_t0 = Instant::now();
        if step == Step::Lookup {
            let mut made = 0u64;
            loop {
                util::sleep_checked(Duration::from_secs(1))?;
                let now_made = p.reached()?.created;
                let new = now_made - made;
                made = now_made;
                if (new as f64) < (made as f64 * 0.01).max(1.0)
                    || warm_t0.elapsed() >= Duration::from_secs(15)
                {
                    break;
                }
            }
        } else {
            util::sleep_checked(Duration::from_millis(500))?;
        }
        let warm_s = warm_t0.elapsed().as_secs_f64();
        let ((r0, c0), a0) = (p.runs()?, p.reached()?);
        let t0 = Instant::now();
        util::sleep_checked(window)?;
        let ((r1, c1), a1) = (p.runs()?, p.reached()?);
        let dt = t0.elapsed().as_secs_f64();
        let runs = (c1 - c0) as f64;
        let key = match step {
            Step::Reach => "reach",
            Step::Lookup => "lookup",
        };
        out.insert(
            key.into(),
            json!({
                "program": step.program(),
                "warmup_s": warm_s,
                "window_s": dt,
                "runs_per_s": runs / dt,
                "ns_per_run": if runs > 0.0 { (r1 - r0) as f64 / runs } else { 0.0 },
                "bpf_ms_per_s": (r1 - r0) as f64 / 1e6 / dt,
                "past_exit_per_s": (a1.past_exit - a0.past_exit) as f64 / dt,
                "found_per_s": (a1.found - a0.found) as f64 / dt,
                "created_per_s": (a1.created - a0.created) as f64 / dt,
                "entries": a1.created,
            }),
        );
    }
    drop(stats);
    Ok(Value::Object(out))
}

/// Trouble-only hooks (issue 14; `monitor::trouble`): a program at `timer_expire_entry`
/// counts the TCP write timer's expiries by what was pending and keeps the sockets with a
/// retransmission or a zero-window probe pending. Attached once the streams run, read
/// before the agent starts (the streams alone), when it has stopped (the whole watch with
/// the wedges: which of the streams and of the wedges a design with only trouble hooks
/// would have flagged) and after the windows that follow (the same streams, agent gone).
struct Trouble {
    prog: monitor::trouble::TroubleTimer,
    _stats: std::os::fd::OwnedFd,
    t0: Instant,
    runs0: (u64, u64),
    exp0: monitor::trouble::Expiries,
    flagged0: usize,
}

impl Trouble {
    fn start() -> Result<Trouble> {
        use monitor::trouble::{TimerLayout, TroubleTimer};
        let (offsets, _) = monitor::btf::load_offsets().context("kernel offsets")?;
        let layout = TimerLayout::of_kernel().context("the TCP write timer's layout")?;
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| anyhow::anyhow!("enabling BPF run-time stats: {e}"))?;
        let prog =
            TroubleTimer::attach(&offsets, &layout).context("attaching the trouble program")?;
        Ok(Trouble {
            runs0: prog.runs()?,
            exp0: prog.expiries()?,
            prog,
            _stats: stats,
            t0: Instant::now(),
            flagged0: 0,
        })
    }

    /// The window since the last call (or the start). `wedge_port`: the local port of the
    /// wedged server sockets, told apart from the streams among the sockets flagged.
    fn window(&mut self, wedge_port: u16) -> Result<Value> {
        use monitor::trouble::{ICSK_TIME_LOSS_PROBE, ICSK_TIME_PROBE0, ICSK_TIME_RETRANS};
        let ((r1, c1), e1) = (self.prog.runs()?, self.prog.expiries()?);
        let dt = self.t0.elapsed().as_secs_f64();
        let flagged = self.prog.flagged()?;
        let (r0, c0) = self.runs0;
        let e0 = self.exp0;
        let runs = (c1 - c0) as f64;
        let per_s = |i: usize| (e1.by_pending[i] - e0.by_pending[i]) as f64 / dt;
        let wedges = flagged.iter().filter(|f| f.0 == wedge_port).count();
        let out = json!({
            "program": "tcpstall_trouble_timer",
            "window_s": dt,
            "runs_per_s": runs / dt,
            "ns_per_run": if runs > 0.0 { (r1 - r0) as f64 / runs } else { 0.0 },
            "bpf_ms_per_s": (r1 - r0) as f64 / 1e6 / dt,
            "write_timer_expiries_per_s": (e1.total - e0.total) as f64 / dt,
            "by_pending_per_s": (0..8).map(per_s).collect::<Vec<f64>>(),
            "nothing_pending_per_s": per_s(0),
            "retransmit_pending_per_s": per_s(ICSK_TIME_RETRANS),
            "probe0_pending_per_s": per_s(ICSK_TIME_PROBE0),
            "loss_probe_pending_per_s": per_s(ICSK_TIME_LOSS_PROBE),
            "sockets_flagged_streams": flagged.len() - wedges,
            "sockets_flagged_wedges": wedges,
            "sockets_flagged_new": flagged.len() - self.flagged0,
            "sockets_not_kept": e1.unkept,
        });
        self.t0 = Instant::now();
        self.runs0 = (r1, c1);
        self.exp0 = e1;
        self.flagged0 = flagged.len();
        Ok(out)
    }
}

/// The other half of a trouble-only design: reading, at tick time, the progress of the
/// sockets its hooks flagged, one sock_diag lookup each (`Destroyer::lookup_many`, the
/// agent's batched lookup by cookie and 4-tuple, with `tcp_info`). Up to `k` of the
/// streams' server sockets (established, data queued), found by one dump; one untimed
/// batch, then `BATCHES` timed ones: CPU of this thread per socket looked up.
fn diag_reads(k: usize) -> Result<Value> {
    use monitor::reset::{current_netns, find_sockets, Destroyer};
    const BATCHES: usize = 5;
    let ns = current_netns().context("this thread's network namespace")?;
    let found = find_sockets(Some(ns), |d| d.state == 1 && d.send_q > 0)
        .map_err(|e| anyhow::anyhow!("dumping the streams' sockets: {e}"))?;
    let targets: Vec<monitor::reset::Target> =
        found.found.into_iter().take(k).map(|(t, _)| t).collect();
    if targets.is_empty() {
        bail!("no established socket with data queued to look up");
    }
    let mut d = Destroyer::new();
    let warm = d.lookup_many(&targets);
    let mut per_socket_us = Vec::new();
    let mut found_n = 0usize;
    for _ in 0..BATCHES {
        let c0 = util::thread_cpu_ns();
        let r = d.lookup_many(&targets);
        let c1 = util::thread_cpu_ns();
        found_n = r.iter().filter(|x| matches!(x, Ok(Some(_)))).count();
        per_socket_us.push((c1 - c0) as f64 / 1e3 / targets.len() as f64);
    }
    let with_info = warm
        .iter()
        .filter(|x| matches!(x, Ok(Some(d)) if d.tcp_info_len > 0))
        .count();
    Ok(json!({
        "sockets": targets.len(),
        "found_last_batch": found_n,
        "with_tcp_info": with_info,
        "batches": BATCHES,
        "cpu_us_per_socket": Spread::of(&per_socket_us).map(|s| s.json()),
    }))
}

/// The agent's CPU over `cfg.rounds` windows of `cfg.window` after one warm-up round
/// (returned apart), each waiting for a quiet machine first: process CPU (schedstat) and
/// in-kernel program time, tracked sockets from the window's `stats` lines, the load
/// generator's CPU and contention. Returns the rounds, the warm-up and the wall-clock start
/// of the first counted round.
fn measure_rounds(
    cfg: &Config,
    n: usize,
    label: &str,
    agent: &Agent,
    own: &[u64],
    pids: &[u32],
    helper_pids: &[u32],
) -> Result<(Vec<Value>, Value, u64)> {
    let mut rounds = Vec::new();
    let mut warmup = Value::Null;
    let mut steady_w0 = util::wall_ns();
    for r in 0..=cfg.rounds {
        if r == 1 {
            steady_w0 = util::wall_ns();
        }
        let pre = util::wait_quiet(own, pids, Duration::from_secs(2))?;
        let meter = util::ForeignMeter::start(pids)?;
        let h0: u64 = helper_pids
            .iter()
            .map(|p| util::proc_stat_cpu_ns(*p).unwrap_or(0))
            .sum();
        let (s0, _) = agent.cpu_ns()?;
        let (b0, c0) = agent.bpf_run()?;
        let (w0, t0) = (util::wall_ns(), Instant::now());
        util::sleep_checked(cfg.window)?;
        let (s1, _) = agent.cpu_ns()?;
        let (b1, c1) = agent.bpf_run()?;
        let dt = t0.elapsed().as_secs_f64();
        let h1: u64 = helper_pids
            .iter()
            .map(|p| util::proc_stat_cpu_ns(*p).unwrap_or(0))
            .sum();
        let w1 = util::wall_ns();
        let proc_ns = (s1 - s0) as f64 / dt;
        let bpf_ns = (b1 - b0) as f64 / dt;
        let total = proc_ns + bpf_ns;
        let evs = agent.events();
        let stats = stats_between(&evs, w0, w1);
        // The `stats` lines of the window; with a window shorter than the stats interval, the
        // last one before its end.
        let tracked = util::median(&col(&stats, "sockets_tracked")).or_else(|| {
            evs.iter()
                .rev()
                .find(|e| e.name() == "stats" && e.arrived_ns <= w1)
                .and_then(|e| e.u64("sockets_tracked"))
                .map(|v| v as f64)
        });
        let contention = util::Contention {
            foreign_progs: pre.foreign_progs.max(util::foreign_progs(own)),
            foreign_cpu_ms_per_s: meter.read(pids)?,
        };
        let per_sock = tracked.filter(|t| *t > 0.0).map(|t| total / 1e3 / t);
        eprintln!(
            "bench: streaming N={n}{label} round {}/{}{}: agent {:.3} ms/s (+bpf {:.3} ms/s), tracked {}, {} µs/socket/s, load generator {:.0} ms/s{}",
            r,
            cfg.rounds,
            if r == 0 { " (warm-up, not counted)" } else { "" },
            proc_ns / 1e6,
            bpf_ns / 1e6,
            tracked.map_or("?".into(), |t| format!("{t:.0}")),
            per_sock.map_or("?".into(), |v| format!("{v:.4}")),
            (h1 - h0) as f64 / 1e6 / dt,
            if contention.contended() { " (contended)" } else { "" }
        );
        let round = json!({
            "round": r,
            "window_s": dt,
            "agent_process_cpu_ms_per_s": proc_ns / 1e6,
            "agent_bpf_ms_per_s": bpf_ns / 1e6,
            "agent_bpf_runs_per_s": (c1 - c0) as f64 / dt,
            "agent_total_cpu_ms_per_s": total / 1e6,
            "sockets_tracked_median": tracked,
            "agent_us_per_tracked_socket_per_s": per_sock,
            "tick_us": col(&stats, "sweep_us"),
            "load_generator_cpu_ms_per_s": (h1 - h0) as f64 / 1e6 / dt,
            "contention": contention.json(),
            "contended": contention.contended(),
        });
        if r == 0 {
            warmup = round;
        } else {
            rounds.push(round);
        }
    }
    Ok((rounds, warmup, steady_w0))
}

/// The same streams watched by an agent with `--trouble-hooks` (after the default agent
/// and the measurement programs): its CPU over the same rounds, the sockets it tracks,
/// false stalls on the streams, and `wedges` fresh wedged connections (made once its
/// rounds are done, at their own address) that must reach `stall_started` within their
/// threshold, two ticks, one retransmission timeout and a few seconds.
fn trouble_arm(
    cfg: &Config,
    n: usize,
    phase: usize,
    workdir: &Path,
    helpers: &mut [Helper],
) -> Result<Value> {
    let mut extra = vec!["--trouble-hooks".to_string()];
    if let Some(m) = cfg.max_sockets {
        extra.extend(["--max-sockets".to_string(), m.to_string()]);
    }
    let mut agent = Agent::start_with(
        &cfg.policy,
        true,
        workdir,
        &format!("streaming-{n}-trouble"),
        &extra,
    )?;
    let agent_t0 = Instant::now();
    let started = agent.wait_for(Duration::from_secs(5), |e| e.name() == "agent_started")?;
    let tick_ms = started.u64("tick_ms").unwrap_or(1000);
    util::sleep_checked(Duration::from_secs(3))?;
    let own = agent.prog_ids()?;
    let helper_pids: Vec<u32> = helpers.iter().map(Helper::pid).collect();
    let mut pids = helper_pids.clone();
    pids.push(agent.pid);
    let (rounds, warmup, steady_w0) = measure_rounds(
        cfg,
        n,
        " (--trouble-hooks)",
        &agent,
        &own,
        &pids,
        &helper_pids,
    )?;
    let mut wedges = Value::Null;
    let wedge_addr = format!("127.3.{phase}.251:{}", WEDGE_PORT + 1);
    if cfg.wedges > 0 {
        helpers[0].send(&format!("wedge {} {wedge_addr}", cfg.wedges))?;
        helpers[0].expect("wedged", Duration::from_secs(30))?;
        let (at, at_ns) = (Instant::now(), util::wall_ns());
        let bound = longest_default_threshold()
            + 2 * Duration::from_millis(tick_ms)
            + Duration::from_secs(5);
        while server_sockets_stalled(&agent.events(), &wedge_addr) < cfg.wedges
            && at.elapsed() < bound
        {
            util::check_stop()?;
            std::thread::sleep(Duration::from_millis(200));
        }
        let evs = agent.events();
        let after: Vec<f64> = evs
            .iter()
            .filter(|e| e.name() == "stall_started" && about(e, &wedge_addr) == Some("server"))
            .map(|e| (e.arrived_ns as f64 - at_ns as f64) / 1e9)
            .collect();
        wedges = json!({"count": cfg.wedges, "address": wedge_addr,
                        "stall_started_server_side": server_sockets_stalled(&evs, &wedge_addr),
                        "after_wedge_s": after, "watched_s": at.elapsed().as_secs_f64()});
    }
    let observed_s = agent_t0.elapsed().as_secs_f64();
    let rss = util::proc_rss_kib(agent.pid)?;
    let events = agent
        .stop()
        .with_context(|| format!("stopping the --trouble-hooks agent after streaming N={n}"))?;
    let stats: Vec<&Event> = events
        .iter()
        .filter(|e| e.name() == "stats" && e.arrived_ns >= steady_w0)
        .collect();
    let streaming_stalls = events
        .iter()
        .filter(|e| e.name() == "stall_started" && about(e, &wedge_addr).is_none())
        .filter(|e| about(e, &format!("127.3.{phase}.250:{WEDGE_PORT}")).is_none())
        .count();
    let per_round = |k: &str| -> Vec<f64> { rounds.iter().filter_map(|r| r[k].as_f64()).collect() };
    let total = per_round("agent_total_cpu_ms_per_s");
    let last = stats.last().map(|e| e.v.clone()).unwrap_or(Value::Null);
    Ok(json!({
        "rounds": rounds,
        "warmup_round": warmup,
        "observed_s": observed_s,
        "agent_process_cpu_ms_per_s": Spread::of(&per_round("agent_process_cpu_ms_per_s")).map(|s| s.json()),
        "agent_bpf_ms_per_s": Spread::of(&per_round("agent_bpf_ms_per_s")).map(|s| s.json()),
        "agent_total_cpu_ms_per_s": Spread::of(&total).map(|s| s.json()),
        "agent_pct_of_one_core_median": util::median(&total).map(|v| v / 10.0),
        "sockets_tracked": Spread::of(&col(&stats, "sockets_tracked")).map(|s| s.json()),
        "progress_lookups_total": last["progress_lookups"],
        // How the holders of tracked sockets were found: the kernel's holder iterator, or
        // walks of /proc (the round spikes of earlier runs).
        "holder_passes_total": last["holder_passes"],
        "proc_walks_total": last["proc_walks"],
        "tick_us": util::latency_json(&col(&stats, "sweep_us")),
        "agent_rss_kib": rss,
        "stall_started_streaming": streaming_stalls,
        "wedges": wedges,
        "contended_rounds": rounds.iter().filter(|r| r["contended"].as_bool() == Some(true)).count(),
        "agent_exit_ok": true,
    }))
}

/// Measure one N.
fn run_n(cfg: &Config, n: usize, phase: usize, workdir: &Path) -> Result<Value> {
    let t_setup = Instant::now();
    let mut helpers = spawn_streamers(cfg, n, phase)?;
    let setup_s = t_setup.elapsed().as_secs_f64();
    eprintln!(
        "bench: streaming N={n}: {} streamers established {n} connections in {setup_s:.1} s",
        helpers.len()
    );
    // Let every stream reach its steady state (buffers filled, pacing running).
    util::sleep_checked(Duration::from_secs(2))?;
    // The trouble-only program on the streams alone first, then alongside the agent, then
    // after it (`Trouble`).
    let mut trouble = Trouble::start()?;
    util::sleep_checked(TROUBLE_BEFORE)?;
    let trouble_before = trouble.window(WEDGE_PORT).context("trouble-only hooks")?;
    let extra: Vec<String> = cfg
        .max_sockets
        .map(|m| vec!["--max-sockets".to_string(), m.to_string()])
        .unwrap_or_default();
    let mut agent = Agent::start_with(
        &cfg.policy,
        true,
        workdir,
        &format!("streaming-{n}"),
        &extra,
    )?;
    let agent_t0 = Instant::now();
    let started = agent.wait_for(Duration::from_secs(5), |e| e.name() == "agent_started")?;
    let capacity = started.u64("max_sockets").unwrap_or(0);
    let tick_ms = started.u64("tick_ms").unwrap_or(1000);
    // The map fills within a tick or two.
    util::sleep_checked(Duration::from_secs(3))?;

    // A handful of genuinely wedged connections, made now that the map is as full as it
    // gets: past the map's bound, can they still get in? Below it, the control.
    let wedge_addr = format!("127.3.{phase}.250:{WEDGE_PORT}");
    let mut wedge_info = Value::Null;
    let mut wedged_at: Option<(Instant, u64)> = None;
    if cfg.wedges > 0 {
        let full_before = agent
            .events()
            .iter()
            .rev()
            .find(|e| e.name() == "stats")
            .and_then(|e| e.u64("map_full"));
        helpers[0].send(&format!("wedge {} {wedge_addr}", cfg.wedges))?;
        let r = helpers[0].expect("wedged", Duration::from_secs(30))?;
        wedged_at = Some((Instant::now(), util::wall_ns()));
        eprintln!(
            "bench: streaming N={n}: {} wedged connections at {wedge_addr} (their writers blocked; map_full was {full_before:?})",
            cfg.wedges
        );
        wedge_info = json!({"count": cfg.wedges, "address": wedge_addr, "reply": r,
                            "map_full_before": full_before,
                            "made_after_agent_start_s": agent_t0.elapsed().as_secs_f64()});
    }

    let own = agent.prog_ids()?;
    let mut pids: Vec<u32> = helpers.iter().map(Helper::pid).collect();
    pids.push(agent.pid);
    let helper_pids: Vec<u32> = helpers.iter().map(Helper::pid).collect();
    let (read0, _, _) = load_stats(&mut helpers)?;
    let load_t0 = Instant::now();
    let progs0 = agent.bpf_programs()?;
    // Round 0 is a warm-up, kept apart: it holds the agent's one-time start-up work (the
    // first /proc walk for the holders of every tracked socket, the first policy match of
    // each), which is not the steady-state cost per tracked socket the rounds measure.
    let (rounds, warmup, steady_w0) =
        measure_rounds(cfg, n, "", &agent, &own, &pids, &helper_pids)?;

    // Watch at least `observe` in all, and for the wedges their threshold plus two ticks.
    let threshold = longest_default_threshold();
    let tick = Duration::from_millis(tick_ms);
    let observe_end = agent_t0 + cfg.observe;
    let wedge_deadline = wedged_at.map(|(t, _)| t + threshold + 2 * tick + Duration::from_secs(3));
    let end = wedge_deadline.map_or(observe_end, |w| observe_end.max(w));
    loop {
        util::check_stop()?;
        if agent.count(|e| e.name() == "agent_stopped") > 0 {
            bail!(
                "the agent stopped on its own; stderr:\n{}",
                agent.stderr_tail()
            );
        }
        let all_wedges_seen = wedged_at.is_some()
            && server_sockets_stalled(&agent.events(), &wedge_addr) >= cfg.wedges;
        let now = Instant::now();
        if now >= end || (all_wedges_seen && now >= observe_end) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200).min(end - now));
    }
    let (read1, written1, dead) = load_stats(&mut helpers)?;
    let load_s = load_t0.elapsed().as_secs_f64();
    let observed_s = agent_t0.elapsed().as_secs_f64();
    let rss = util::proc_rss_kib(agent.pid)?;
    let maps = agent.bpf_maps()?;
    let map_bytes: u64 = maps.iter().map(|(_, b)| b).sum();
    let startup_s = agent.startup.as_secs_f64();
    let programs = per_program(&progs0, &agent.bpf_programs()?, load_t0.elapsed());
    let tracepoints = agent.tracepoints();
    let events = agent
        .stop()
        .with_context(|| format!("stopping the agent after streaming N={n}"))?;
    // The wedges were watched until this agent stopped (the windows below run without it).
    let agent_stopped = Instant::now();
    // The same streams with empty programs at the agent's tracepoints instead (the attach
    // floor of the BPF part): one window, while the helpers still stream.
    let trouble_watch = trouble.window(WEDGE_PORT).context("trouble-only hooks")?;
    let floor = floor_window(&tracepoints, cfg.window)?;
    let ack_cost = ack_cost(cfg.window).context("ACK hook anatomy")?;
    let trouble_after = trouble.window(WEDGE_PORT).context("trouble-only hooks")?;
    let diag = diag_reads(DIAG_READS).context("sock_diag reads of the streams")?;
    drop(trouble);
    let trouble_agent = trouble_arm(cfg, n, phase, workdir, &mut helpers)
        .context("the agent with --trouble-hooks")?;
    for h in helpers {
        h.finish(Duration::from_secs(30));
    }
    if dead > 0 {
        bail!("{dead} streaming connections died during the run (EOF or error)");
    }

    let all_stats: Vec<&Event> = events.iter().filter(|e| e.name() == "stats").collect();
    // Steady state: stats from the first measured round (after the warm-up) on.
    let steady: Vec<&Event> = all_stats
        .iter()
        .copied()
        .filter(|e| e.arrived_ns >= steady_w0)
        .collect();
    let last = all_stats.last().map(|e| e.v.clone()).unwrap_or(Value::Null);
    let stalls: Vec<&Event> = events
        .iter()
        .filter(|e| e.name() == "stall_started")
        .collect();
    let streaming_stalls: Vec<&Event> = stalls
        .iter()
        .copied()
        .filter(|e| about(e, &wedge_addr).is_none())
        .collect();
    let mut by_class = serde_json::Map::new();
    for e in &streaming_stalls {
        let c = e.v["class"].as_str().unwrap_or("?").to_string();
        let v = by_class.get(&c).and_then(Value::as_u64).unwrap_or(0);
        by_class.insert(c, json!(v + 1));
    }
    if let Some((at, at_ns)) = wedged_at {
        let wedge_events: Vec<Value> = stalls
            .iter()
            .filter_map(|e| {
                let side = about(e, &wedge_addr)?;
                Some(
                    json!({"side": side, "class": e.v["class"], "local": e.v["local"],
                            "cookie": e.v["cookie"], "stalled_for_ms": e.v["stalled_for_ms"],
                            "after_wedge_s": (e.arrived_ns as f64 - at_ns as f64) / 1e9}),
                )
            })
            .collect();
        // Sockets, not lines: a stall whose class changes (e.g. slow_drain, then
        // zero_window) is announced again.
        let sockets = |side: &str| -> usize {
            let mut c: Vec<u64> = wedge_events
                .iter()
                .filter(|w| w["side"] == side)
                .filter_map(|w| w["cookie"].as_u64())
                .collect();
            c.sort_unstable();
            c.dedup();
            c.len()
        };
        let server = sockets("server");
        wedge_info["stall_started_server_side"] = json!(server);
        wedge_info["stall_started_client_side"] = json!(sockets("client"));
        wedge_info["stall_started_lines"] = json!(wedge_events.len());
        wedge_info["stall_started"] = json!(wedge_events);
        wedge_info["watched_s"] = json!(agent_stopped.saturating_duration_since(at).as_secs_f64());
        eprintln!(
            "bench: streaming N={n}: {server} of {} wedges reported stall_started (server side)",
            cfg.wedges
        );
    }
    let per_round = |k: &str| -> Vec<f64> { rounds.iter().filter_map(|r| r[k].as_f64()).collect() };
    let total = per_round("agent_total_cpu_ms_per_s");
    let ticks: Vec<f64> = col(&steady, "sweep_us");
    let map_reads: Vec<f64> = col(&steady, "map_read_us");
    let tracked = col(&steady, "sockets_tracked");
    // Growth of a cumulative counter over the steady-state `stats` lines, and their span.
    let delta = |key: &str| -> Value {
        let v = col(&steady, key);
        match (v.first(), v.last()) {
            (Some(a), Some(b)) => json!((b - a) as u64),
            _ => Value::Null,
        }
    };
    let steady_span_s = match (steady.first(), steady.last()) {
        (Some(a), Some(b)) => (b.arrived_ns - a.arrived_ns) as f64 / 1e9,
        _ => 0.0,
    };
    let proc_ms = util::median(&per_round("agent_process_cpu_ms_per_s"));
    let mut out = json!({
        "connections": n,
        "sockets_on_node": 2 * n,
        "streamers": n.div_ceil(cfg.per_process),
        "setup_s": setup_s,
        "agent_startup_s": startup_s,
        "observed_s": observed_s,
        "longest_default_threshold_s": threshold.as_secs_f64(),
        "tick_ms": tick_ms,
        "map_capacity": capacity,
        "rounds": rounds,
        "agent_process_cpu_ms_per_s": Spread::of(&per_round("agent_process_cpu_ms_per_s")).map(|s| s.json()),
        "agent_bpf_ms_per_s": Spread::of(&per_round("agent_bpf_ms_per_s")).map(|s| s.json()),
        "agent_total_cpu_ms_per_s": Spread::of(&total).map(|s| s.json()),
        "agent_pct_of_one_core_median": util::median(&total).map(|v| v / 10.0),
        "agent_us_per_tracked_socket_per_s": Spread::of(&per_round("agent_us_per_tracked_socket_per_s")).map(|s| s.json()),
        "agent_process_cpu_ms_per_tick": proc_ms.map(|m| m * tick_ms as f64 / 1000.0),
        "tick_us": util::latency_json(&ticks),
        "sockets_tracked": Spread::of(&tracked).map(|s| s.json()),
        "sockets_tracked_max_all": col(&all_stats, "sockets_tracked").into_iter().reduce(f64::max),
        "map_full_total": last["map_full"],
        "map_full_steady_delta": delta("map_full"),
        "map_evicted_steady_delta": delta("map_evicted"),
        "steady_span_s": steady_span_s,
        "map_evicted_total": last["map_evicted"],
        "map_stale_total": last["map_stale"],
        "agent_rss_kib": rss,
        "bpf_maps": maps.iter().map(|(n, b)| json!({"name": n, "memlock_bytes": b})).collect::<Vec<_>>(),
        "bpf_maps_memlock_bytes": map_bytes,
        "floor": floor,
        "bpf_programs": programs,
        "stall_started_streaming": streaming_stalls.len(),
        "stall_started_streaming_by_class": by_class,
        "stall_cleared": events.iter().filter(|e| e.name() == "stall_cleared").count(),
        "threshold_warnings": events.iter().filter(|e| e.name() == "threshold_warning").count(),
        "agent_exit_ok": true,
        "wedges": wedge_info,
        "load": {
            "drain_bytes_per_connection_per_s": (read1 - read0) as f64 / load_s / n as f64,
            "bytes_written_total": written1,
            "dead_connections": dead,
            "generator_cpu_ms_per_s": Spread::of(&per_round("load_generator_cpu_ms_per_s")).map(|s| s.json()),
        },
        "contended_rounds": rounds.iter().filter(|r| r["contended"].as_bool() == Some(true)).count(),
    });
    out["ack_cost"] = ack_cost;
    out["trouble_timer_before_agent"] = trouble_before;
    out["trouble_timer"] = trouble_watch;
    out["trouble_timer_after_agent"] = trouble_after;
    out["diag_reads"] = diag;
    out["trouble_agent"] = trouble_agent;
    // The tick's map read (`stats.map_read_us`), apart (the object above is at the json!
    // macro's recursion limit).
    out["map_read_us"] = util::latency_json(&map_reads);
    out["warmup_round"] = warmup;
    Ok(out)
}

/// Run every N in order.
pub fn run(cfg: &Config, workdir: &Path) -> Result<Value> {
    write_policy(&cfg.policy)?;
    let mut per_n = Vec::new();
    for (phase, &n) in cfg.ns.iter().enumerate() {
        util::check_stop()?;
        per_n.push(
            run_n(cfg, n, phase, workdir)
                .with_context(|| format!("streaming benchmark at N={n}"))?,
        );
    }
    Ok(json!({
        "rounds": cfg.rounds,
        "window_s": cfg.window.as_secs_f64(),
        "observe_s": cfg.observe.as_secs_f64(),
        "per_process": cfg.per_process,
        "rate_bytes_per_s": cfg.rate,
        "mss": cfg.mss,
        "buf_bytes": cfg.buf,
        "chunk_bytes": cfg.chunk,
        "write_period_ms": cfg.period.as_millis() as u64,
        "wedges": cfg.wedges,
        "max_sockets_option": cfg.max_sockets,
        "results": per_n,
    }))
}
