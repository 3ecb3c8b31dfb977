//! Question 1: what does the agent cost the data path? Loopback TCP throughput with small and
//! large writes, agent off (A) vs on (B), interleaved in pairs. Besides throughput (the
//! target), the CPU time the sender and receiver threads spend per byte is compared: it is
//! far less sensitive to other load on a shared 2-vCPU machine.

use crate::agent::Agent;
use crate::util::{self, Contention, Spread};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Settings of the hot-path benchmark.
pub struct Config {
    /// Write sizes to test (bytes).
    pub sizes: Vec<usize>,
    /// A/B pairs per size.
    pub pairs: usize,
    /// Sender duration of one measurement.
    pub duration: Duration,
    /// Policy file for the agent.
    pub policy: std::path::PathBuf,
}

/// Result of one loopback transfer.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// Bytes received per second.
    pub bytes_per_s: f64,
    /// Sender + receiver thread CPU per MB (1e6 bytes) moved, ns.
    pub cpu_ns_per_mb: f64,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time, seconds.
    pub secs: f64,
}

/// One loopback transfer: a sender writing `chunk`-byte writes for `duration`, a receiver
/// thread draining with 256 KiB reads until EOF.
pub fn throughput(chunk: usize, duration: Duration) -> Result<Transfer> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let addr = listener.local_addr()?;
    let rx_stream = TcpStream::connect(addr).context("connecting over loopback")?;
    let (mut tx_stream, _) = listener.accept().context("accepting over loopback")?;
    // Sender on one CPU, receiver on the other, every run (see `util::pin_thread`).
    let receiver = std::thread::spawn(move || -> std::io::Result<(u64, Instant, u64)> {
        util::pin_thread(1);
        let c0 = util::thread_cpu_ns();
        let mut s = rx_stream;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok((total, Instant::now(), util::thread_cpu_ns() - c0)),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    });
    let buf = vec![0x5au8; chunk];
    // The sending thread goes back to every CPU afterwards (it runs the rest of the bench).
    let mut before: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: reading this thread's affinity into a local cpu_set_t.
    let saved = unsafe {
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut before) == 0
    };
    util::pin_thread(0);
    let c0 = util::thread_cpu_ns();
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut sent = 0u64;
    loop {
        // Check the clock every 64 writes: the vDSO call is cheap but not free at 100 B.
        for _ in 0..64 {
            match tx_stream.write(&buf) {
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => bail!("loopback send failed after {sent} bytes: {e}"),
            }
        }
        if Instant::now() >= end {
            break;
        }
    }
    tx_stream.shutdown(Shutdown::Write)?;
    let tx_cpu = util::thread_cpu_ns() - c0;
    if saved {
        // SAFETY: restoring the affinity read above.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &before) };
    }
    let (received, t_end, rx_cpu) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
        .context("loopback receive")?;
    if received != sent {
        bail!("loopback transfer lost data: sent {sent}, received {received}");
    }
    let secs = (t_end - t0).as_secs_f64();
    Ok(Transfer {
        bytes_per_s: received as f64 / secs,
        cpu_ns_per_mb: (tx_cpu + rx_cpu) as f64 / (received as f64 / 1e6),
        bytes: received,
        secs,
    })
}

/// One arm: wait for a quiet machine, transfer, and account what else ran meanwhile.
/// (The floor arm's empty programs are not tcpstall's: never counted as foreign.)
fn measure(
    chunk: usize,
    duration: Duration,
    agent: Option<&Agent>,
) -> Result<(Transfer, Contention)> {
    let own = match agent {
        Some(a) => a.prog_ids()?,
        None => Vec::new(),
    };
    let pids: Vec<u32> = agent.map(|a| a.pid).into_iter().collect();
    let pre = util::wait_quiet(&own, &pids, Duration::from_secs(10))?;
    let meter = util::ForeignMeter::start(&pids)?;
    let t = throughput(chunk, duration)?;
    Ok((
        t,
        Contention {
            foreign_progs: pre.foreign_progs.max(util::foreign_progs(&own)),
            foreign_cpu_ms_per_s: meter.read(&pids)?,
        },
    ))
}

/// Tracepoints that fire only on trouble (a retransmission) or a state change, never per
/// write or per segment: the hooks a trouble-only design keeps.
const TROUBLE_ONLY: [&str; 2] = ["tcp_retransmit_skb", "inet_sock_set_state"];

/// The trouble-only design's hook for the zero-window persist probe and the retransmission
/// timeout, which has no TCP tracepoint: every timer expiry of the machine
/// (`monitor::trouble`), not one of the agent's.
const TIMER_EXPIRY: &str = "timer_expire_entry";

/// The tracepoints that fire once per write (`sendmsg`).
const PER_WRITE: [&str; 2] = ["tcp_sendmsg_locked", "tcp_sendmsg"];

/// BPF cost per write with the agent on, from one extra transfer with `--bpf-stats` (context
/// only; BPF statistics themselves add a little overhead, so this run is not in the ratios).
fn bpf_context(cfg: &Config, size: usize, workdir: &Path) -> Result<Value> {
    let (t, bpf_ns, runs, tracepoints) =
        agent_transfer(cfg, size, workdir, &format!("hot-{size}-bpfstats"), &[])?;
    let writes = t.bytes as f64 / size as f64;
    let trouble_agent = trouble_agent_context(cfg, size, workdir)?;
    let floor = floor_context(&tracepoints, size, cfg.duration)?;
    // The trouble-only design's hooks: the ones of the agent's that fire on trouble or a
    // state change only, never per write or per segment.
    let mut trouble: Vec<String> = tracepoints
        .iter()
        .filter(|t| TROUBLE_ONLY.contains(&t.as_str()))
        .cloned()
        .collect();
    trouble.push(TIMER_EXPIRY.to_string());
    let trouble_floor = floor_context(&trouble, size, cfg.duration)?;
    // The agent's hooks plus the per-write one, as `--per-write-hooks` attaches them on this
    // kernel: what the default (no per-write hook) saves.
    let mut per_write: Vec<String> = tracepoints.clone();
    if !per_write.iter().any(|t| PER_WRITE.contains(&t.as_str())) {
        per_write.push(PER_WRITE[0].to_string());
    }
    let per_write_floor = floor_context(&per_write, size, cfg.duration)?;
    Ok(json!({
        "floor": floor,
        "trouble_floor": trouble_floor,
        "trouble_agent": trouble_agent,
        "per_write_floor": per_write_floor,
        "bytes_per_s": t.bytes_per_s,
        "secs": t.secs,
        "bpf_runs_per_write": runs / writes,
        "bpf_ns_per_run": if runs > 0.0 { bpf_ns / runs } else { 0.0 },
        "bpf_ns_per_write": bpf_ns / writes,
        "bpf_ns_per_mb": bpf_ns / (t.bytes as f64 / 1e6),
        "bpf_share_of_thread_cpu": bpf_ns / (t.cpu_ns_per_mb * t.bytes as f64 / 1e6),
    }))
}

/// One transfer of `size`-byte writes with an agent started with `extra` arguments and BPF
/// statistics on: the transfer, its programs' run time (ns) and runs over it, and the
/// tracepoints it attached.
fn agent_transfer(
    cfg: &Config,
    size: usize,
    workdir: &Path,
    label: &str,
    extra: &[String],
) -> Result<(Transfer, f64, f64, Vec<String>)> {
    let agent = Agent::start_with(&cfg.policy, true, workdir, label, extra)?;
    let tracepoints = agent.tracepoints();
    util::sleep_checked(Duration::from_millis(300))?;
    let (r0, c0) = agent.bpf_run()?;
    let t = throughput(size, cfg.duration)?;
    let (r1, c1) = agent.bpf_run()?;
    agent.stop()?;
    Ok((t, (r1 - r0) as f64, (c1 - c0) as f64, tracepoints))
}

/// The same transfer with the agent on `--trouble-hooks` (BPF statistics on): its programs'
/// runs and time per write, as for the default agent above.
fn trouble_agent_context(cfg: &Config, size: usize, workdir: &Path) -> Result<Value> {
    let (t, ns, runs, tracepoints) = agent_transfer(
        cfg,
        size,
        workdir,
        &format!("hot-{size}-trouble"),
        &["--trouble-hooks".to_string()],
    )?;
    let writes = t.bytes as f64 / size as f64;
    Ok(json!({
        "tracepoints": tracepoints,
        "bytes_per_s": t.bytes_per_s,
        "runs_per_write": runs / writes,
        "ns_per_run": if runs > 0.0 { ns / runs } else { 0.0 },
        "ns_per_write": ns / writes,
        "share_of_thread_cpu": ns / (t.cpu_ns_per_mb * t.bytes as f64 / 1e6),
    }))
}

/// The same transfer with empty programs at the agent's tracepoints instead of the agent
/// (the attach floor, [`crate::floor`]); null when the agent attached no tracepoint.
fn floor_context(tracepoints: &[String], size: usize, duration: Duration) -> Result<Value> {
    if tracepoints.is_empty() {
        return Ok(Value::Null);
    }
    let floor = crate::floor::Floor::attach(tracepoints)?;
    let (r0, c0) = floor.runs()?;
    let t = throughput(size, duration)?;
    let (r1, c1) = floor.runs()?;
    let writes = t.bytes as f64 / size as f64;
    let (ns, runs) = ((r1 - r0) as f64, (c1 - c0) as f64);
    Ok(json!({
        "tracepoints": floor.tracepoints(),
        "bytes_per_s": t.bytes_per_s,
        "runs_per_write": runs / writes,
        "ns_per_run": if runs > 0.0 { ns / runs } else { 0.0 },
        "ns_per_write": ns / writes,
        "share_of_thread_cpu": ns / (t.cpu_ns_per_mb * t.bytes as f64 / 1e6),
    }))
}

fn summary(pairs: &[Value], key: &str, clean_only: bool) -> Option<Value> {
    let v: Vec<f64> = pairs
        .iter()
        .filter(|p| !clean_only || p["contended"].as_bool() == Some(false))
        .filter_map(|p| p[key].as_f64())
        .collect();
    Spread::of(&v).map(|s| s.json())
}

/// The tracepoints the agent attaches with its default hooks on this kernel (one short
/// start).
fn agent_tracepoints(cfg: &Config, workdir: &Path) -> Result<Vec<String>> {
    let agent = Agent::start(&cfg.policy, false, workdir, "hot-tracepoints")?;
    let tps = agent.tracepoints();
    agent.stop()?;
    Ok(tps)
}

/// Run the A/B pairs, each with a third arm: empty programs at the agent's tracepoints
/// (*floor*, run-time statistics off), which splits the agent's cost into "a hook fires
/// there at all" and "the agent's work". Order alternates per pair (off, floor, on, then
/// on, floor, off) so slow drift cancels out between off and on.
pub fn run(cfg: &Config, workdir: &Path) -> Result<Value> {
    let mut per_size = Vec::new();
    let tracepoints = agent_tracepoints(cfg, workdir)?;
    for &size in &cfg.sizes {
        let mut pairs = Vec::new();
        for i in 0..cfg.pairs {
            util::check_stop()?;
            // off and on at the ends (drift between them cancels over the pairs); the
            // trouble-only agent next to off, so its own ratio to off is as close.
            let order = if i % 2 == 0 {
                ["off", "trouble", "floor", "on"]
            } else {
                ["on", "floor", "trouble", "off"]
            };
            let mut off = None;
            let mut on = None;
            let mut trouble = None;
            let mut floor = None;
            let mut startup_ms = 0.0;
            for arm in order {
                match arm {
                    "on" => {
                        let agent =
                            Agent::start(&cfg.policy, false, workdir, &format!("hot-{size}-{i}"))?;
                        startup_ms = agent.startup.as_secs_f64() * 1e3;
                        on = Some(measure(size, cfg.duration, Some(&agent))?);
                        agent.stop()?;
                    }
                    "trouble" => {
                        let agent = Agent::start_with(
                            &cfg.policy,
                            false,
                            workdir,
                            &format!("hot-{size}-{i}-trouble"),
                            &["--trouble-hooks".to_string()],
                        )?;
                        trouble = Some(measure(size, cfg.duration, Some(&agent))?);
                        agent.stop()?;
                    }
                    "floor" if !tracepoints.is_empty() => {
                        let _floor = crate::floor::Floor::attach_quiet(&tracepoints)?;
                        floor = Some(measure(size, cfg.duration, None)?);
                    }
                    "floor" => {}
                    _ => off = Some(measure(size, cfg.duration, None)?),
                }
            }
            let ((off, c_off), (on, c_on)) = (off.expect("measured"), on.expect("measured"));
            let ratio = on.bytes_per_s / off.bytes_per_s;
            let cpu_ratio = on.cpu_ns_per_mb / off.cpu_ns_per_mb;
            let contended = c_off.contended() || c_on.contended();
            let floor_text = floor.as_ref().map_or(String::new(), |(f, _)| {
                format!(
                    "; floor {:.1} MB/s, CPU/MB floor/off {:.4}",
                    f.bytes_per_s / 1e6,
                    f.cpu_ns_per_mb / off.cpu_ns_per_mb
                )
            });
            let (tr, c_tr) = trouble.expect("measured");
            let trouble_text = format!(
                "; --trouble-hooks {:.1} MB/s, trouble/off {:.4}, CPU/MB trouble/off {:.4}{}",
                tr.bytes_per_s / 1e6,
                tr.bytes_per_s / off.bytes_per_s,
                tr.cpu_ns_per_mb / off.cpu_ns_per_mb,
                if c_tr.contended() { " (contended)" } else { "" }
            );
            eprintln!(
                "bench: hot path {size} B pair {}/{}: off {:.1} MB/s, on {:.1} MB/s, on/off {ratio:.4}; CPU/MB on/off {cpu_ratio:.4}{floor_text}{trouble_text}{}",
                i + 1,
                cfg.pairs,
                off.bytes_per_s / 1e6,
                on.bytes_per_s / 1e6,
                if contended { " (contended)" } else { "" }
            );
            let mut pair = json!({
                "pair": i, "order": order,
                "off_bytes_per_s": off.bytes_per_s, "on_bytes_per_s": on.bytes_per_s,
                "off_cpu_ns_per_mb": off.cpu_ns_per_mb, "on_cpu_ns_per_mb": on.cpu_ns_per_mb,
                "ratio_on_off": ratio, "cpu_ratio_on_off": cpu_ratio,
                "off_contention": c_off.json(), "on_contention": c_on.json(), "contended": contended,
                "agent_startup_ms": startup_ms,
                "trouble_bytes_per_s": tr.bytes_per_s, "trouble_cpu_ns_per_mb": tr.cpu_ns_per_mb,
                "ratio_trouble_off": tr.bytes_per_s / off.bytes_per_s,
                "cpu_ratio_trouble_off": tr.cpu_ns_per_mb / off.cpu_ns_per_mb,
                "trouble_contention": c_tr.json(),
                "trouble_contended": c_off.contended() || c_tr.contended(),
            });
            if let Some((f, c_floor)) = floor {
                pair["floor_bytes_per_s"] = json!(f.bytes_per_s);
                pair["floor_cpu_ns_per_mb"] = json!(f.cpu_ns_per_mb);
                pair["ratio_floor_off"] = json!(f.bytes_per_s / off.bytes_per_s);
                pair["cpu_ratio_floor_off"] = json!(f.cpu_ns_per_mb / off.cpu_ns_per_mb);
                pair["ratio_on_floor"] = json!(on.bytes_per_s / f.bytes_per_s);
                pair["cpu_ratio_on_floor"] = json!(on.cpu_ns_per_mb / f.cpu_ns_per_mb);
                pair["floor_contention"] = c_floor.json();
            }
            pairs.push(pair);
        }
        let col = |k: &str| -> Vec<f64> { pairs.iter().filter_map(|p| p[k].as_f64()).collect() };
        let spread = Spread::of(&col("ratio_on_off")).expect("pairs >= 1");
        let cpu_spread = Spread::of(&col("cpu_ratio_on_off")).expect("pairs >= 1");
        let context = bpf_context(cfg, size, workdir)?;
        per_size.push(json!({
            "write_bytes": size,
            "pairs": pairs,
            "ratio_on_off": spread.json(),
            "ratio_on_off_uncontended": summary(&pairs, "ratio_on_off", true),
            "uncontended_pairs": pairs.iter().filter(|p| p["contended"].as_bool() == Some(false)).count(),
            "loss_pct_median": (1.0 - spread.median) * 100.0,
            "cpu_ratio_on_off": cpu_spread.json(),
            "cpu_ratio_on_off_uncontended": summary(&pairs, "cpu_ratio_on_off", true),
            "cpu_overhead_pct_median": (cpu_spread.median - 1.0) * 100.0,
            // The same A/B with the agent on --trouble-hooks (its arm in every pair).
            "ratio_trouble_off": Spread::of(&col("ratio_trouble_off")).map(|s| s.json()),
            "cpu_ratio_trouble_off": Spread::of(&col("cpu_ratio_trouble_off")).map(|s| s.json()),
            "trouble_bytes_per_s_median": util::median(&col("trouble_bytes_per_s")),
            "off_bytes_per_s_median": util::median(&col("off_bytes_per_s")),
            "on_bytes_per_s_median": util::median(&col("on_bytes_per_s")),
            "bpf_context": context,
        }));
        // The floor arm (empty programs at the agent's tracepoints, statistics off).
        let last = per_size.last_mut().expect("pushed above");
        last["floor_arm"] = json!({
            "tracepoints": tracepoints,
            "ratio_floor_off": Spread::of(&col("ratio_floor_off")).map(|s| s.json()),
            "cpu_ratio_floor_off": Spread::of(&col("cpu_ratio_floor_off")).map(|s| s.json()),
            "ratio_on_floor": Spread::of(&col("ratio_on_floor")).map(|s| s.json()),
            "cpu_ratio_on_floor": Spread::of(&col("cpu_ratio_on_floor")).map(|s| s.json()),
        });
    }
    Ok(json!({
        "duration_s": cfg.duration.as_secs_f64(),
        "pairs": cfg.pairs,
        "sizes": per_size,
    }))
}
