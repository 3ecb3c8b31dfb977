//! Question 2: what does watching N connections cost? Agent CPU (process + in-kernel BPF run
//! time) against `ss -tin` once per second and against an in-app TCP_INFO/SIOCOUTQ poller,
//! at the same N, in the same run, interleaved round by round.

use crate::agent::Agent;
use crate::util::{self, Helper, Spread};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Settings of the scale benchmark.
pub struct Config {
    /// Connection counts to test.
    pub ns: Vec<usize>,
    /// Rounds (agent window, one ss run, one poller sweep) per N and mode.
    pub rounds: usize,
    /// Length of one agent measurement window.
    pub window: Duration,
    /// Most connections one holder process holds (2 fds each, fd limit 20,000).
    pub per_holder: usize,
    /// Policy file for the agent.
    pub policy: PathBuf,
}

/// Start the holders for `n` connections of phase `phase` and wait until all are established.
pub fn spawn_holders(n: usize, phase: usize, per_holder: usize) -> Result<Vec<Helper>> {
    let count = n.div_ceil(per_holder);
    if count > 250 || phase > 200 {
        bail!("too many holder processes ({count}) or phases ({phase}) for the 127.0.X.Y address plan");
    }
    let mut holders = Vec::with_capacity(count);
    for h in 0..count {
        let share = n / count + usize::from(h < n % count);
        let listen = format!("127.0.{}.{}:{}", 10 + phase, h + 1, 7100 + phase);
        let args: Vec<String> = ["holder", "--listen", &listen, "--count", &share.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        holders.push(Helper::spawn(&format!("holder-{n}-{h}"), &args)?);
    }
    util::await_ready(&mut holders, "holder", n)?;
    Ok(holders)
}

/// One poller pass over all holders, one after the other: (sockets, CPU ns, wall ns).
fn sweep(holders: &mut [Helper]) -> Result<(u64, u64, u64)> {
    let [socks, cpu, wall] =
        util::sum_replies(holders, "holder", "sweep", "swept", Duration::from_secs(60))?;
    Ok((socks, cpu, wall))
}

fn last_stats(agent: &Agent) -> Option<Value> {
    agent
        .events()
        .into_iter()
        .rev()
        .find(|e| e.name() == "stats")
        .map(|e| e.v)
}

/// Measure one N: set up, then idle and busy phases.
/// One measured window of an agent, after a quiet machine: its process CPU and in-kernel
/// program time (ns per second), program runs per second, and what else ran meanwhile.
struct AgentWindow {
    dt: f64,
    proc_ns: f64,
    bpf_ns: f64,
    runs: f64,
    contention: util::Contention,
}

fn agent_window(agent: &Agent, own: &[u64], pids: &[u32], window: Duration) -> Result<AgentWindow> {
    let pre = util::wait_quiet(own, pids, Duration::from_secs(5))?;
    let meter = util::ForeignMeter::start(pids)?;
    let (s0, _) = agent.cpu_ns()?;
    let (b0, c0) = agent.bpf_run()?;
    let t0 = Instant::now();
    util::sleep_checked(window)?;
    let (s1, _) = agent.cpu_ns()?;
    let (b1, c1) = agent.bpf_run()?;
    let dt = t0.elapsed().as_secs_f64();
    Ok(AgentWindow {
        dt,
        proc_ns: (s1 - s0) as f64 / dt,
        bpf_ns: (b1 - b0) as f64 / dt,
        runs: (c1 - c0) as f64 / dt,
        contention: util::Contention {
            foreign_progs: pre.foreign_progs.max(util::foreign_progs(own)),
            foreign_cpu_ms_per_s: meter.read(pids)?,
        },
    })
}

fn run_n(cfg: &Config, n: usize, phase: usize, workdir: &Path) -> Result<Value> {
    let t_setup = Instant::now();
    let mut holders = spawn_holders(n, phase, cfg.per_holder)?;
    let setup_s = t_setup.elapsed().as_secs_f64();
    eprintln!(
        "bench: scale N={n}: {} holders established {n} connections in {setup_s:.1} s",
        holders.len()
    );
    let agent = Agent::start(&cfg.policy, true, workdir, &format!("scale-{n}"))?;
    util::sleep_checked(Duration::from_secs(2))?;
    let mut modes = Vec::new();
    for mode in ["idle", "busy"] {
        for h in &mut holders {
            h.send(&format!("mode {mode}"))?;
            h.expect("ok", Duration::from_secs(30))?;
        }
        util::sleep_checked(Duration::from_secs(2))?;
        let (_, stat0) = agent.cpu_ns()?;
        let phase_t0 = Instant::now();
        let mut rounds = Vec::new();
        let own = agent.prog_ids()?;
        let mut pids: Vec<u32> = holders.iter().map(Helper::pid).collect();
        pids.push(agent.pid);
        for r in 0..cfg.rounds {
            let AgentWindow {
                dt,
                proc_ns: agent_user_ns,
                bpf_ns,
                runs: bpf_runs,
                contention,
            } = agent_window(&agent, &own, &pids, cfg.window)?;
            let agent_total = agent_user_ns + bpf_ns;

            let (code, ss_cpu, ss_wall) =
                util::run_measured("ss", &["-tin"], Duration::from_secs(120))?;
            if code != 0 {
                bail!("`ss -tin` exited with status {code}");
            }
            let (swept, poll_cpu, poll_wall) = sweep(&mut holders)?;
            let ss_ratio = ss_cpu as f64 / agent_total;
            let poll_ratio = poll_cpu as f64 / agent_total;
            eprintln!(
                "bench: scale N={n} {mode} round {}/{}: agent {:.3} ms/s (+bpf {:.3} ms/s), ss {:.1} ms, poller {:.1} ms -> ss/agent {:.0}x, poller/agent {:.0}x{}",
                r + 1,
                cfg.rounds,
                agent_user_ns / 1e6,
                bpf_ns / 1e6,
                ss_cpu as f64 / 1e6,
                poll_cpu as f64 / 1e6,
                ss_ratio,
                poll_ratio,
                if contention.contended() { " (contended)" } else { "" }
            );
            rounds.push(json!({
                "round": r,
                "agent_window_s": dt,
                "agent_process_cpu_ms_per_s": agent_user_ns / 1e6,
                "agent_bpf_ms_per_s": bpf_ns / 1e6,
                "agent_bpf_runs_per_s": bpf_runs,
                "agent_total_cpu_ms_per_s": agent_total / 1e6,
                "ss_cpu_ms": ss_cpu as f64 / 1e6,
                "ss_wall_ms": ss_wall as f64 / 1e6,
                "poller_sockets": swept,
                "poller_cpu_ms": poll_cpu as f64 / 1e6,
                "poller_wall_ms": poll_wall as f64 / 1e6,
                "ratio_ss_over_agent": ss_ratio,
                "ratio_poller_over_agent": poll_ratio,
                "contention": contention.json(),
                "contended": contention.contended(),
            }));
        }
        let (_, stat1) = agent.cpu_ns()?;
        let phase_s = phase_t0.elapsed().as_secs_f64();
        let col = |k: &str| -> Vec<f64> { rounds.iter().filter_map(|r| r[k].as_f64()).collect() };
        let stats = last_stats(&agent);
        let maps = agent.bpf_maps()?;
        let map_bytes: u64 = maps.iter().map(|(_, b)| b).sum();
        let total = col("agent_total_cpu_ms_per_s");
        let bpf = col("agent_bpf_ms_per_s");
        let runs = col("agent_bpf_runs_per_s");
        let ns_per_run: Vec<f64> = bpf
            .iter()
            .zip(&runs)
            .filter(|(_, r)| **r > 0.0)
            .map(|(b, r)| b * 1e6 / r)
            .collect();
        modes.push(json!({
            "mode": mode,
            "rounds": rounds,
            "agent_total_cpu_ms_per_s": Spread::of(&total).map(|s| s.json()),
            "agent_process_cpu_ms_per_s": Spread::of(&col("agent_process_cpu_ms_per_s")).map(|s| s.json()),
            "agent_bpf_ms_per_s": Spread::of(&bpf).map(|s| s.json()),
            "agent_bpf_runs_per_s": Spread::of(&runs).map(|s| s.json()),
            "agent_bpf_ns_per_run_median": util::median(&ns_per_run),
            "agent_pct_of_one_core_median": util::median(&total).map(|v| v / 10.0),
            "agent_stat_utime_stime_ms_per_s": (stat1 - stat0) as f64 / 1e6 / phase_s,
            "agent_stat_window_s": phase_s,
            "ss_cpu_ms": Spread::of(&col("ss_cpu_ms")).map(|s| s.json()),
            "poller_cpu_ms": Spread::of(&col("poller_cpu_ms")).map(|s| s.json()),
            "ratio_ss_over_agent": Spread::of(&col("ratio_ss_over_agent")).map(|s| s.json()),
            "ratio_poller_over_agent": Spread::of(&col("ratio_poller_over_agent")).map(|s| s.json()),
            "contended_rounds": rounds.iter().filter(|r| r["contended"].as_bool() == Some(true)).count(),
            "agent_rss_kib": util::proc_rss_kib(agent.pid)?,
            "bpf_maps": maps.iter().map(|(n, b)| json!({"name": n, "memlock_bytes": b})).collect::<Vec<_>>(),
            "bpf_maps_memlock_bytes": map_bytes,
            "agent_sockets_tracked_last": stats.as_ref().and_then(|s| s["sockets_tracked"].as_u64()),
            "agent_sweep_us_last": stats.as_ref().and_then(|s| s["sweep_us"].as_u64()),
        }));
    }
    agent
        .stop()
        .context("stopping the agent after the scale phase")?;
    // The same connections, still busy, watched by the agent on `--trouble-hooks`.
    let trouble = trouble_busy(cfg, n, workdir, &holders).context("--trouble-hooks at scale")?;
    for h in holders {
        h.finish(Duration::from_secs(30));
    }
    Ok(json!({
        "connections": n,
        "sockets_on_node": 2 * n,
        "setup_s": setup_s,
        "modes": modes,
        "trouble_busy": trouble,
    }))
}

/// The agent on `--trouble-hooks` over the busy connections: its CPU (process + BPF) over
/// the same rounds, each after a quiet machine.
fn trouble_busy(cfg: &Config, n: usize, workdir: &Path, holders: &[Helper]) -> Result<Value> {
    let agent = Agent::start_with(
        &cfg.policy,
        true,
        workdir,
        &format!("scale-{n}-trouble"),
        &["--trouble-hooks".to_string()],
    )?;
    util::sleep_checked(Duration::from_secs(2))?;
    let own = agent.prog_ids()?;
    let mut pids: Vec<u32> = holders.iter().map(Helper::pid).collect();
    pids.push(agent.pid);
    let mut rounds = Vec::new();
    for r in 0..cfg.rounds {
        let AgentWindow {
            dt,
            proc_ns,
            bpf_ns,
            runs,
            contention,
        } = agent_window(&agent, &own, &pids, cfg.window)?;
        eprintln!(
            "bench: scale N={n} busy, --trouble-hooks, round {}/{}: agent {:.3} ms/s (+bpf {:.3} ms/s){}",
            r + 1,
            cfg.rounds,
            proc_ns / 1e6,
            bpf_ns / 1e6,
            if contention.contended() { " (contended)" } else { "" }
        );
        rounds.push(json!({
            "round": r,
            "agent_window_s": dt,
            "agent_process_cpu_ms_per_s": proc_ns / 1e6,
            "agent_bpf_ms_per_s": bpf_ns / 1e6,
            "agent_bpf_runs_per_s": runs,
            "agent_total_cpu_ms_per_s": (proc_ns + bpf_ns) / 1e6,
            "contention": contention.json(),
            "contended": contention.contended(),
        }));
    }
    let stats = last_stats(&agent);
    agent
        .stop()
        .context("stopping the --trouble-hooks agent after the scale phase")?;
    let col = |k: &str| -> Vec<f64> { rounds.iter().filter_map(|r| r[k].as_f64()).collect() };
    let total = col("agent_total_cpu_ms_per_s");
    Ok(json!({
        "rounds": rounds,
        "agent_total_cpu_ms_per_s": Spread::of(&total).map(|s| s.json()),
        "agent_process_cpu_ms_per_s": Spread::of(&col("agent_process_cpu_ms_per_s")).map(|s| s.json()),
        "agent_bpf_ms_per_s": Spread::of(&col("agent_bpf_ms_per_s")).map(|s| s.json()),
        "agent_bpf_runs_per_s": Spread::of(&col("agent_bpf_runs_per_s")).map(|s| s.json()),
        "agent_pct_of_one_core_median": util::median(&total).map(|v| v / 10.0),
        "agent_sockets_tracked_last": stats.as_ref().and_then(|s| s["sockets_tracked"].as_u64()),
        "contended_rounds": rounds.iter().filter(|r| r["contended"].as_bool() == Some(true)).count(),
    }))
}

/// Run every N in order.
pub fn run(cfg: &Config, workdir: &Path) -> Result<Value> {
    let mut per_n = Vec::new();
    for (phase, &n) in cfg.ns.iter().enumerate() {
        util::check_stop()?;
        per_n.push(
            run_n(cfg, n, phase, workdir).with_context(|| format!("scale benchmark at N={n}"))?,
        );
    }
    Ok(json!({
        "rounds": cfg.rounds,
        "agent_window_s": cfg.window.as_secs_f64(),
        "per_holder": cfg.per_holder,
        "results": per_n,
    }))
}
