//! Question 5 (issue 14): what would a design with no per-write hook cost? Once per tick, a
//! BPF TCP socket iterator (`iter/tcp`, program `tcpstall_scan`, loaded by
//! `monitor::scan::Scan`; the agent never loads it) walks every TCP socket and writes one
//! 64-byte record per socket with send data outstanding; userspace compares consecutive
//! passes. Measured here: one pass's cost (CPU time of the reading thread for open + read to
//! EOF, the walk running inside read(2); wall time; records) against the number of sockets,
//! idle and streaming, and whether two passes tell a wedged socket from a healthy stream.
//! No agent runs during this section.

use crate::hotpath;
use crate::scale;
use crate::streaming;
use crate::util::{self, Helper, Spread};
use anyhow::{bail, Context, Result};
use monitor::scan::{compare, Pass, Progress, Scan};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// Settings of the scan benchmark.
pub struct Config {
    /// Idle connection counts (holders; two socket ends each).
    pub ns: Vec<usize>,
    /// Streaming connection count (streamers; every server end always has data queued);
    /// 0: not measured.
    pub stream_n: usize,
    /// Timed passes per case.
    pub passes: usize,
    /// Most connections one holder process holds.
    pub per_holder: usize,
    /// A/B pairs of the hot-path comparison (0: not measured).
    pub hot_pairs: usize,
    /// Sender duration of one hot-path arm.
    pub hot_duration: Duration,
    /// The streamers' settings (the streaming section's).
    pub streaming: streaming::Config,
}

/// The pin of the iterator link (bpffs).
fn pin_path() -> std::path::PathBuf {
    Path::new("/sys/fs/bpf").join(format!("tcpstall-bench-scan-{}", std::process::id()))
}

/// `TCP: inuse I orphan O tw T alloc A` of /proc/net/sockstat: (inuse, tw).
fn sockstat() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/sockstat").context("reading sockstat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .context("no TCP line in /proc/net/sockstat")?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let get = |k: &str| -> Option<u64> {
        let i = w.iter().position(|x| *x == k)?;
        w.get(i + 1)?.parse().ok()
    };
    Ok((get("inuse").unwrap_or(0), get("tw").unwrap_or(0)))
}

/// Sockets the program ran on during one more pass (BPF run-time statistics on for it only,
/// so the timed passes do not pay for them), and its in-program run time.
fn counted_pass(scan: &mut Scan) -> Result<(u64, u64)> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow::anyhow!("enabling BPF run-time stats: {e}"))?;
    let (t0, c0) = scan.runs()?;
    scan.pass()?;
    let (t1, c1) = scan.runs()?;
    drop(stats);
    // The program also runs once with a NULL socket at the end of the walk.
    Ok((c1.saturating_sub(c0).saturating_sub(1), t1 - t0))
}

/// Runs of the scan program while the streams write and no pass is made (BPF run-time
/// statistics on): it has no hook on the write path, so this should be 0.
fn runs_without_pass(scan: &mut Scan, window: Duration) -> Result<u64> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| anyhow::anyhow!("enabling BPF run-time stats: {e}"))?;
    let (_, c0) = scan.runs()?;
    util::sleep_checked(window)?;
    let (_, c1) = scan.runs()?;
    drop(stats);
    Ok(c1 - c0)
}

/// `passes` timed passes plus one counted one, summarised.
/// `pids`: the helper processes of the case (their CPU is not counted as other load).
fn measure(
    scan: &mut Scan,
    passes: usize,
    label: &str,
    pids: &[u32],
) -> Result<(Value, Vec<Pass>)> {
    let own: Vec<u64> = scan.prog_id().map(u64::from).into_iter().collect();
    let quiet = util::wait_quiet(&own, pids, Duration::from_secs(10))?;
    let (inuse, tw) = sockstat()?;
    let meter = util::ForeignMeter::start(pids)?;
    // One untimed pass first (caches warm, as they would be at a steady tick).
    scan.pass()?;
    let mut all = Vec::with_capacity(passes);
    for _ in 0..passes {
        util::check_stop()?;
        all.push(scan.pass()?);
        // Spread the passes a little, like ticks (and let helpers run).
        std::thread::sleep(Duration::from_millis(50));
    }
    let foreign = meter.read(pids)?;
    let (visited, bpf_ns) = counted_pass(scan)?;
    let cpu: Vec<f64> = all.iter().map(|p| p.cpu_ns as f64).collect();
    let wall: Vec<f64> = all.iter().map(|p| p.wall_ns as f64).collect();
    let recs: Vec<f64> = all.iter().map(|p| p.records.len() as f64).collect();
    let cpu_med = util::median(&cpu).unwrap_or(0.0);
    let per_socket = (visited > 0).then(|| cpu_med / visited as f64);
    eprintln!(
        "bench: scan {label}: {visited} sockets walked (sockstat inuse {inuse}, tw {tw}): pass CPU {:.3} ms (median of {passes}), wall {:.3} ms, records {:.0}, {:.1} ns/socket; in-program {:.1} ns/socket; others' CPU {foreign:.0} ms/s",
        cpu_med / 1e6,
        util::median(&wall).unwrap_or(0.0) / 1e6,
        util::median(&recs).unwrap_or(0.0),
        per_socket.unwrap_or(0.0),
        bpf_ns as f64 / visited.max(1) as f64,
    );
    Ok((
        json!({
            "passes": passes,
            "sockets_walked": visited,
            "sockstat_tcp_inuse": inuse,
            "sockstat_tcp_tw": tw,
            "pass_cpu_ms": Spread::of(&cpu.iter().map(|v| v / 1e6).collect::<Vec<_>>()).map(|s| s.json()),
            "pass_wall_ms": Spread::of(&wall.iter().map(|v| v / 1e6).collect::<Vec<_>>()).map(|s| s.json()),
            "records": Spread::of(&recs).map(|s| s.json()),
            "record_bytes_median": util::median(&recs).map(|r| r * monitor::scan::ScanRecord::SIZE as f64),
            "reads_median": util::median(&all.iter().map(|p| p.reads as f64).collect::<Vec<_>>()),
            "pct_of_one_core_at_1s_tick": cpu_med / 1e9 * 100.0,
            "cpu_ns_per_socket": per_socket,
            "bpf_ns_per_socket": (visited > 0).then(|| bpf_ns as f64 / visited as f64),
            "started_contended": quiet.contended(),
            "foreign_cpu_ms_per_s": foreign,
        }),
        all,
    ))
}

/// Passes 1 s apart after the wedge: the wedge must be stuck with data queued (and its peer's
/// window zero) between every two of them; each healthy stream should advance.
fn coverage(
    scan: &mut Scan,
    wedge_ip: [u8; 4],
    wedge_port: u16,
    stream_port: u16,
) -> Result<Value> {
    const PASSES: usize = 4;
    let is_wedge =
        |r: &monitor::scan::ScanRecord| r.lport == wedge_port && r.laddr[..4] == wedge_ip;
    let mut passes = vec![scan.pass()?];
    let mut gaps = Vec::new();
    let mut wedge_stuck_all = true;
    let mut wedge_last = Value::Null;
    // Streams seen advancing in at least one gap (by socket address).
    let mut ever_advanced = std::collections::HashSet::new();
    let mut stream_socks = std::collections::HashSet::new();
    for g in 1..PASSES {
        util::sleep_checked(Duration::from_secs(1))?;
        passes.push(scan.pass()?);
        let cmp = compare(&passes[g - 1].records, &passes[g].records);
        let wedge: Vec<_> = cmp.iter().filter(|(r, _)| is_wedge(r)).collect();
        let streams: Vec<_> = cmp.iter().filter(|(r, _)| r.lport == stream_port).collect();
        let mut advanced = 0;
        for (r, p) in &streams {
            stream_socks.insert(r.sk);
            if matches!(p, Progress::Advanced(_)) {
                advanced += 1;
                ever_advanced.insert(r.sk);
            }
        }
        let stuck = streams
            .iter()
            .filter(|(_, p)| *p == Progress::Stuck)
            .count();
        let zero_wnd = streams.iter().filter(|(r, _)| r.snd_wnd == 0).count();
        let ok = wedge.len() == 1 && wedge[0].1 == Progress::Stuck && wedge[0].0.snd_wnd == 0;
        wedge_stuck_all &= ok;
        wedge_last = wedge.first().map_or(Value::Null, |(r, p)| {
            json!({"progress": format!("{p:?}"), "snd_una": r.snd_una, "write_seq": r.write_seq,
                   "queued_bytes": r.write_seq.wrapping_sub(r.snd_una), "snd_wnd": r.snd_wnd,
                   "backoff": r.backoff, "state": r.state})
        });
        eprintln!(
            "bench: scan coverage gap {g}: wedge {}; stream records {} ({advanced} advanced, {stuck} unchanged, {} new, {zero_wnd} with zero window)",
            if ok { "stuck, zero window" } else { "NOT stuck with a zero window" },
            streams.len(),
            streams.len() - advanced - stuck,
        );
        gaps.push(json!({
            "wedge_found": wedge.len(),
            "wedge_stuck_zero_window": ok,
            "stream_records": streams.len(),
            "streams_advanced": advanced,
            "streams_unchanged": stuck,
            "streams_new": streams.len() - advanced - stuck,
            "streams_zero_window": zero_wnd,
            "records": passes[g].records.len(),
        }));
    }
    let v = json!({
        "pass_gap_s": 1.0,
        "passes": PASSES,
        "gaps": gaps,
        "wedge_stuck_in_every_gap": wedge_stuck_all,
        "wedge_last": wedge_last,
        "streams_seen": stream_socks.len(),
        "streams_advanced_at_least_once": ever_advanced.len(),
    });
    eprintln!(
        "bench: scan coverage: wedge stuck in every gap: {wedge_stuck_all}; {} of {} streams advanced in at least one of {} gaps",
        ever_advanced.len(),
        stream_socks.len(),
        PASSES - 1
    );
    if !wedge_stuck_all {
        bail!("the wedged connection was not seen stuck (data queued, snd_una unchanged, zero window) between every two passes 1 s apart: {v}");
    }
    if ever_advanced.is_empty() {
        bail!("no streaming socket was seen advancing between passes 1 s apart: {v}");
    }
    Ok(v)
}

fn streaming_case(cfg: &Config, scan: &mut Scan, base: &Value) -> Result<Value> {
    let n = cfg.stream_n;
    // A phase number of the 127.3.X.Y plan no other section uses.
    let phase = 100;
    let t = std::time::Instant::now();
    let mut helpers: Vec<Helper> = streaming::spawn_streamers(&cfg.streaming, n, phase)?;
    eprintln!(
        "bench: scan streaming N={n}: {} streamers established {n} connections in {:.1} s",
        helpers.len(),
        t.elapsed().as_secs_f64()
    );
    let r = (|| -> Result<Value> {
        util::sleep_checked(Duration::from_secs(2))?;
        let pids: Vec<u32> = helpers.iter().map(Helper::pid).collect();
        let (cost, _) = measure(scan, cfg.passes, &format!("streaming N={n}"), &pids)?;
        let idle_runs = runs_without_pass(scan, Duration::from_secs(1))?;
        eprintln!(
            "bench: scan streaming N={n}: the scan program ran {idle_runs} times in 1 s of streaming without a pass"
        );
        let wedge_ip = [127, 3, phase as u8, 250];
        let wedge_port = 7399;
        helpers[0].send(&format!("wedge 1 127.3.{phase}.250:{wedge_port}"))?;
        let reply = helpers[0].expect("wedged", Duration::from_secs(30))?;
        // Let the window close (the client never reads).
        util::sleep_checked(Duration::from_secs(1))?;
        let cov = coverage(scan, wedge_ip, wedge_port, 7300)?;
        let sc = &cfg.streaming;
        Ok(json!({
            "connections": n,
            "sockets_on_node_from_helpers": 2 * n,
            "cost": cost,
            "marginal_cpu_ns_per_socket": marginal_ns(base, &cost),
            "program_runs_in_1s_without_pass": idle_runs,
            "rate_bytes_per_s": sc.rate,
            "mss": sc.mss,
            "buf_bytes": sc.buf,
            "chunk_bytes": sc.chunk,
            "write_period_ms": sc.period.as_millis() as u64,
            "per_process": sc.per_process,
            "coverage": cov,
            "wedge_reply": reply,
        }))
    })();
    for h in helpers {
        h.finish(Duration::from_secs(30));
    }
    r
}

/// The 100 B loopback hot path (section 1's transfer) with nothing running (A) against the
/// same with a scan pass every second (B), interleaved in pairs, the order alternating.
fn hot_path(scan: &mut Scan, chunk: usize, pairs: usize, duration: Duration) -> Result<Value> {
    let mut rows = Vec::new();
    let mut tput = Vec::new();
    let mut cpu = Vec::new();
    let own: Vec<u64> = scan.prog_id().map(u64::from).into_iter().collect();
    let mut contended = 0;
    for p in 0..pairs {
        util::check_stop()?;
        let mut arm = |with_scan: bool| -> Result<(hotpath::Transfer, u64)> {
            if util::wait_quiet(&own, &[], Duration::from_secs(10))?.contended() {
                contended += 1;
            }
            if !with_scan {
                return Ok((hotpath::throughput(chunk, duration)?, 0));
            }
            // The transfer in its own thread; this one makes a pass at once and then every
            // second, sleeping in between (no polling, so it adds no wake-ups of its own).
            let (tx, rx) = std::sync::mpsc::channel();
            let h = std::thread::spawn(move || {
                let r = hotpath::throughput(chunk, duration);
                let _ = tx.send(());
                r
            });
            let mut passes = 0;
            let mut next = std::time::Instant::now();
            loop {
                let wait = next.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(wait) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        scan.pass()?;
                        passes += 1;
                        next += Duration::from_secs(1);
                    }
                    _ => break,
                }
            }
            let t = h
                .join()
                .map_err(|_| anyhow::anyhow!("transfer thread panicked"))??;
            Ok((t, passes))
        };
        let (a, b, passes) = if p % 2 == 0 {
            let (a, _) = arm(false)?;
            let (b, n) = arm(true)?;
            (a, b, n)
        } else {
            let (b, n) = arm(true)?;
            let (a, _) = arm(false)?;
            (a, b, n)
        };
        let r_t = b.bytes_per_s / a.bytes_per_s;
        let r_c = b.cpu_ns_per_mb / a.cpu_ns_per_mb;
        eprintln!(
            "bench: scan hot path {chunk} B pair {}/{pairs}: off {:.1} MB/s, scan {:.1} MB/s ({passes} passes) -> throughput x{r_t:.3}, CPU/MB x{r_c:.3}",
            p + 1,
            a.bytes_per_s / 1e6,
            b.bytes_per_s / 1e6
        );
        tput.push(r_t);
        cpu.push(r_c);
        rows.push(json!({"off_bytes_per_s": a.bytes_per_s, "scan_bytes_per_s": b.bytes_per_s,
                         "off_cpu_ns_per_mb": a.cpu_ns_per_mb, "scan_cpu_ns_per_mb": b.cpu_ns_per_mb,
                         "passes": passes, "scan_first": p % 2 == 1}));
    }
    Ok(json!({
        "write_bytes": chunk,
        "pairs": pairs,
        "duration_s": duration.as_secs_f64(),
        "rows": rows,
        "contended_arms": contended,
        "throughput_ratio_scan_over_off": Spread::of(&tput).map(|s| s.json()),
        "cpu_per_mb_ratio_scan_over_off": Spread::of(&cpu).map(|s| s.json()),
    }))
}

/// CPU ns per socket walked beyond the baseline pass (the walk's fixed part, mostly empty
/// hash buckets, taken out).
/// Run `f` on a new thread that has left for a new, empty network namespace
/// (`unshare(CLONE_NEWNET)`: only that thread moves; the namespace goes with it).
fn in_new_netns<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // SAFETY: plain syscall; affects only this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                anyhow::bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the new-namespace thread panicked"))?
    })
}

fn marginal_ns(base: &Value, cost: &Value) -> Option<f64> {
    let cpu = |v: &Value| v["pass_cpu_ms"]["median"].as_f64();
    let socks = |v: &Value| v["sockets_walked"].as_f64();
    let extra = socks(cost)? - socks(base)?;
    let d = cpu(cost)? - cpu(base)?;
    (extra > 0.0).then(|| d * 1e6 / extra)
}

/// Run the idle sizes, then the streaming case with the coverage check.
pub fn run(cfg: &Config) -> Result<Value> {
    let pin = pin_path();
    let (offsets, source) = monitor::btf::load_offsets().context("kernel offsets")?;
    let mut scan = Scan::load(&offsets, &pin).context("loading the scan program")?;
    eprintln!(
        "bench: scan: tcpstall_scan (iter/tcp) loaded and attached, {} verified instructions; offsets from {source}",
        scan.verified_insns().map_or("?".into(), |n| n.to_string())
    );
    let (base, _) = measure(&mut scan, cfg.passes, "no helper sockets", &[])?;
    let mut idle = Vec::new();
    for (i, &n) in cfg.ns.iter().enumerate() {
        util::check_stop()?;
        // Phases of the 127.0.X.Y plan the scale section (phases 0..) does not use.
        let holders = scale::spawn_holders(n, 50 + i, cfg.per_holder)
            .with_context(|| format!("scan: {n} idle connections"))?;
        let largest = i + 1 == cfg.ns.len();
        let r = util::sleep_checked(Duration::from_secs(1))
            .and_then(|_| {
                let pids: Vec<u32> = holders.iter().map(Helper::pid).collect();
                measure(&mut scan, cfg.passes, &format!("idle N={n}"), &pids)
            })
            .and_then(|(cost, _)| {
                // At the largest N: the same passes made from a new, empty network namespace.
                // The iterator only hands its program the sockets of the namespace it was
                // opened in; this measures what each further namespace on a node would cost.
                let other = if largest {
                    let pids: Vec<u32> = holders.iter().map(Helper::pid).collect();
                    Some(in_new_netns(|| {
                        measure(
                            &mut scan,
                            cfg.passes,
                            &format!("idle N={n}, from an empty netns"),
                            &pids,
                        )
                    })?)
                } else {
                    None
                };
                Ok((cost, other))
            })
            .and_then(|(cost, other)| {
                // At the largest N the hot path again, the idle sockets present in both arms
                // (each pass now walks them all).
                let hot = if largest && cfg.hot_pairs > 0 {
                    Some(hot_path(&mut scan, 100, cfg.hot_pairs, cfg.hot_duration)?)
                } else {
                    None
                };
                Ok((cost, other, hot))
            });
        for h in holders {
            h.finish(Duration::from_secs(30));
        }
        let (cost, other, hot) = r?;
        let marginal = marginal_ns(&base, &cost);
        idle.push(
            json!({"connections": n, "sockets_on_node_from_helpers": 2 * n, "cost": cost,
                   "marginal_cpu_ns_per_socket": marginal, "hot_path": hot,
                   "from_empty_netns": other.map(|(c, _)| c)}),
        );
    }
    // The hot path with no helper sockets (passes cost their fixed part only).
    let hot = if cfg.hot_pairs > 0 {
        Some(hot_path(&mut scan, 100, cfg.hot_pairs, cfg.hot_duration)?)
    } else {
        None
    };
    let streaming = if cfg.stream_n > 0 {
        Some(streaming_case(cfg, &mut scan, &base)?)
    } else {
        None
    };
    let ehash = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_ehash_entries")
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok());
    Ok(json!({
        "program": "tcpstall_scan",
        "tcp_ehash_entries": ehash,
        "verified_instructions": scan.verified_insns(),
        "record_bytes": monitor::scan::ScanRecord::SIZE,
        "passes": cfg.passes,
        "baseline": base,
        "idle": idle,
        "streaming": streaming,
        "hot_path": hot,
    }))
}
