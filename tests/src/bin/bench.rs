//! tcpstall benchmark: hot-path cost, cost at scale against `ss` and an in-app poller,
//! reaction time to thousands of simultaneous wedges, and the cost of a streaming server whose
//! sockets always have data queued, and the cost of a tick-time socket scan (no per-write hook). Writes `results.json` (raw) and `REPORT.md` (tables,
//! targets, interpretation).
//!
//! Usage: `bench [--quick] [--only hot,scale,reaction,streaming,scan] [--pairs N] [--hot-secs S]
//! [--scale-n 1000,10000,100000] [--rounds N] [--window-s S] [--wedges 1,100,5000]
//! [--stream-n 10000,30000,40000] [--stream-max-sockets N] [--scan-n 1000,10000,100000]
//! [--scan-stream-n N] [--out DIR]`, `bench report [--out DIR]` (re-render REPORT.md from results.json).
//! The agent binary is `$TCPSTALL_BIN` or `<workspace>/target/release/tcpstall`. Needs root.

#[path = "bench/agent.rs"]
mod agent;
#[path = "bench/floor.rs"]
mod floor;
#[path = "bench/helper.rs"]
mod helper;
#[path = "bench/holder.rs"]
mod holder;
#[path = "bench/hotpath.rs"]
mod hotpath;
#[path = "bench/reaction.rs"]
mod reaction;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/scale.rs"]
mod scale;
#[path = "bench/scan.rs"]
mod scan;
#[path = "bench/scan_report.rs"]
mod scan_report;
#[path = "bench/stream_report.rs"]
mod stream_report;
#[path = "bench/streamer.rs"]
mod streamer;
#[path = "bench/streaming.rs"]
mod streaming;
#[path = "bench/util.rs"]
mod util;
#[path = "bench/wedge.rs"]
mod wedge;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: bench [--quick] [--only hot,scale,reaction,streaming,scan] [--pairs N] [--hot-secs S] \
[--scale-n LIST] [--rounds N] [--window-s S] [--wedges LIST] [--stream-n LIST] [--stream-max-sockets N] [--scan-n LIST] [--scan-stream-n N] [--out DIR]\n       bench report [--out DIR]";

/// Benchmark options.
#[derive(Debug, Clone, PartialEq)]
struct Opts {
    quick: bool,
    sections: Vec<String>,
    pairs: usize,
    hot_secs: f64,
    scale_n: Vec<usize>,
    rounds: usize,
    window_s: f64,
    wedges: Vec<usize>,
    stream_n: Vec<usize>,
    stream_max_sockets: Option<u32>,
    scan_n: Vec<usize>,
    scan_stream_n: usize,
    out: PathBuf,
}

/// Every section, in run order.
const SECTIONS: [&str; 5] = ["hot", "scale", "reaction", "streaming", "scan"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn parse_list(v: &str, what: &str) -> Result<Vec<usize>> {
    let l: Vec<usize> = v
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|e| anyhow!("{what}: {x:?}: {e}"))
        })
        .collect::<Result<_>>()?;
    if l.is_empty() || l.contains(&0) {
        bail!("{what}: give positive numbers, e.g. 1000,10000");
    }
    Ok(l)
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = if quick {
        Opts {
            quick,
            sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
            pairs: 3,
            hot_secs: 1.0,
            scale_n: vec![1000],
            rounds: 3,
            window_s: 1.0,
            wedges: vec![1, 20],
            stream_n: vec![2000],
            stream_max_sockets: None,
            scan_n: vec![1000],
            scan_stream_n: 2000,
            out: workspace().join("target/bench-quick"),
        }
    } else {
        Opts {
            quick,
            sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
            pairs: 9,
            hot_secs: 2.0,
            scale_n: vec![1000, 10_000, 100_000],
            rounds: 5,
            window_s: 2.0,
            wedges: vec![1, 100, 5000],
            stream_n: vec![10_000, 30_000, 40_000],
            stream_max_sockets: None,
            scan_n: vec![1000, 10_000, 100_000],
            scan_stream_n: 30_000,
            out: workspace().join("bench"),
        }
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--quick" {
            continue;
        }
        let mut val = || {
            it.next()
                .ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--only" => {
                o.sections = val()?.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = o.sections.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    bail!("--only: unknown section {bad:?} ({})", SECTIONS.join(", "));
                }
            }
            "--pairs" => o.pairs = val()?.parse().context("--pairs")?,
            "--hot-secs" => o.hot_secs = val()?.parse().context("--hot-secs")?,
            "--scale-n" => o.scale_n = parse_list(val()?, "--scale-n")?,
            "--rounds" => o.rounds = val()?.parse().context("--rounds")?,
            "--window-s" => o.window_s = val()?.parse().context("--window-s")?,
            "--wedges" => o.wedges = parse_list(val()?, "--wedges")?,
            "--stream-n" => o.stream_n = parse_list(val()?, "--stream-n")?,
            "--stream-max-sockets" => {
                o.stream_max_sockets = Some(val()?.parse().context("--stream-max-sockets")?)
            }
            "--scan-n" => o.scan_n = parse_list(val()?, "--scan-n")?,
            "--scan-stream-n" => o.scan_stream_n = val()?.parse().context("--scan-stream-n")?,
            "--out" => o.out = PathBuf::from(val()?),
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !(1..=100).contains(&o.pairs) || !(1..=100).contains(&o.rounds) {
        bail!("--pairs and --rounds must be between 1 and 100");
    }
    if !(0.2..=60.0).contains(&o.hot_secs) || !(0.5..=60.0).contains(&o.window_s) {
        bail!("--hot-secs must be 0.2..60 and --window-s 0.5..60");
    }
    if o.scale_n.iter().any(|&n| n > 1_000_000) || o.wedges.iter().any(|&w| w > 20_000) {
        bail!("--scale-n is limited to 1,000,000 and --wedges to 20,000");
    }
    if o.scan_n.iter().any(|&n| n > 1_000_000) || o.scan_stream_n > 200_000 {
        bail!("--scan-n is limited to 1,000,000 and --scan-stream-n to 200,000");
    }
    if o.stream_n.iter().any(|&n| n > 200_000) {
        bail!("--stream-n is limited to 200,000");
    }
    Ok(o)
}

fn cmd_out(prog: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(prog).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn environment() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")
            .and_then(|r| r.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<f64> = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok());
    let bin = agent::agent_bin();
    let bin_meta = std::fs::metadata(&bin).ok();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "mem_gib": mem_kib.map(|k| k / 1048576.0),
        "kernel": cmd_out("uname", &["-r"]),
        "agent_bin": bin.canonicalize().unwrap_or(bin).display().to_string(),
        "agent_bin_bytes": bin_meta.as_ref().map(|m| m.len()),
        "agent_bin_mtime_s": bin_mtime_s(),
        "agent_tree_rev": agent_tree_rev(),
        "git_rev": cmd_out("git", &["-C", &workspace().display().to_string(), "rev-parse", "--short", "HEAD"]),
        "ss_version": cmd_out("ss", &["-V"]),
        "started_utc": cmd_out("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    })
}

/// Git revision of the workspace the agent binary was built in, when it sits at
/// `<workspace>/target/<profile>/tcpstall` (the revision checked out now, which may be newer
/// than the build).
fn agent_tree_rev() -> Option<String> {
    let bin = agent::agent_bin().canonicalize().ok()?;
    let ws = bin.parent()?.parent()?.parent()?;
    cmd_out(
        "git",
        &[
            "-C",
            &ws.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    )
}

/// Modification time of the agent binary (s since the epoch), to detect a rebuild mid-run.
fn bin_mtime_s() -> Option<u64> {
    let m = std::fs::metadata(agent::agent_bin())
        .ok()?
        .modified()
        .ok()?;
    Some(m.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}

fn write_outputs(out: &Path, results: &Value) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(results)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = out.join("REPORT.md");
    std::fs::write(&md_path, report::markdown(results))
        .with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!(
        "bench: wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    // The committed run also refreshes README's benchmark table (between its markers).
    if out.canonicalize().ok() == workspace().join("bench").canonicalize().ok() {
        let readme = workspace().join("README.md");
        let text = std::fs::read_to_string(&readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        let new = report::splice_readme(&text, &report::readme_table(results))?;
        std::fs::write(&readme, new).with_context(|| format!("writing {}", readme.display()))?;
        eprintln!(
            "bench: refreshed the benchmark table in {}",
            readme.display()
        );
    }
    Ok(())
}

/// The streaming section's settings (the scan section reuses its streamers).
fn streaming_config(o: &Opts, workdir: &Path) -> streaming::Config {
    streaming::Config {
        ns: o.stream_n.clone(),
        rounds: o.rounds,
        window: Duration::from_secs_f64(o.window_s),
        per_process: 8000,
        // Longer than the agent's longest default threshold (30 s), so a false
        // stall would show; the quick run is a smoke test only.
        observe: Duration::from_secs(if o.quick { 10 } else { 40 }),
        // Their threshold is the default 30 s: only in the full run.
        wedges: if o.quick { 0 } else { 5 },
        rate: 2048,
        mss: 1024,
        buf: 4096,
        chunk: 2048,
        period: Duration::from_millis(500),
        policy: workdir.join("policy-streaming.toml"),
        max_sockets: o.stream_max_sockets,
    }
}

fn run(o: &Opts) -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs root (BPF, SOCK_DESTROY, sysctls); run it with sudo");
    }
    let t0 = Instant::now();
    let workdir = std::env::temp_dir().join(format!("tcpstall-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    eprintln!(
        "bench: agent logs and raw events go to {}",
        workdir.display()
    );
    // Restored when this guard drops: at the end, on error and during a panic's unwinding.
    let mut sysctls = util::Sysctls::default();
    sysctls.set("net.ipv4.ip_local_port_range", "10000 65000")?;
    sysctls.set("net.core.somaxconn", "8192")?;
    sysctls.set("net.ipv4.tcp_max_syn_backlog", "8192")?;

    let policy = workdir.join("policy.toml");
    // The reset rule targets a port no benchmark connection uses outside the reaction phase,
    // so the agent runs with a realistic enforcing policy.
    agent::write_policy(&policy, 7399, 5)?;
    let mut results = Map::new();
    results.insert("quick".into(), json!(o.quick));
    results.insert("environment".into(), environment());
    results.insert(
        "options".into(),
        json!({"pairs": o.pairs, "hot_secs": o.hot_secs, "scale_n": o.scale_n, "rounds": o.rounds,
               "window_s": o.window_s, "wedges": o.wedges, "stream_n": o.stream_n,
               "stream_max_sockets": o.stream_max_sockets,
               "scan_n": o.scan_n, "scan_stream_n": o.scan_stream_n,
               "sections": o.sections}),
    );
    let mut errors = Map::new();
    for section in &o.sections {
        util::check_stop()?;
        let t = Instant::now();
        eprintln!("bench: === {section} ===");
        let r = match section.as_str() {
            "hot" => hotpath::run(
                &hotpath::Config {
                    sizes: vec![100, 64 * 1024],
                    pairs: o.pairs,
                    duration: Duration::from_secs_f64(o.hot_secs),
                    policy: policy.clone(),
                },
                &workdir,
            )
            .map(|v| ("hot_path", v)),
            "scale" => scale::run(
                &scale::Config {
                    ns: o.scale_n.clone(),
                    rounds: o.rounds,
                    window: Duration::from_secs_f64(o.window_s),
                    per_holder: 8500,
                    policy: policy.clone(),
                },
                &workdir,
            )
            .map(|v| ("scale", v)),
            "reaction" => reaction::run(
                &reaction::Config {
                    wedges: o.wedges.clone(),
                    threshold_s: 5,
                    per_process: 1000,
                },
                &workdir,
            )
            .map(|v| ("reaction", v)),
            "streaming" => {
                streaming::run(&streaming_config(o, &workdir), &workdir).map(|v| ("streaming", v))
            }
            "scan" => scan::run(&scan::Config {
                ns: o.scan_n.clone(),
                stream_n: o.scan_stream_n,
                passes: if o.quick { 10 } else { 15 },
                per_holder: 8500,
                hot_pairs: o.pairs,
                hot_duration: Duration::from_secs_f64(o.hot_secs),
                streaming: streaming_config(o, &workdir),
            })
            .map(|v| ("scan", v)),
            _ => unreachable!("validated in parse_opts"),
        };
        match r {
            Ok((key, mut v)) => {
                v["section_elapsed_s"] = json!(t.elapsed().as_secs_f64());
                results.insert(key.into(), v);
            }
            Err(e) => {
                util::check_stop()?;
                eprintln!("bench: section {section} FAILED: {e:#}");
                errors.insert(section.clone(), json!(format!("{e:#}")));
            }
        }
    }
    sysctls.restore();
    let mtime_end = bin_mtime_s();
    if results["environment"]["agent_bin_mtime_s"].as_u64() != mtime_end {
        errors.insert(
            "agent_binary".into(),
            json!("the agent binary was rebuilt during the run: sections before and after measured different builds; run again"),
        );
    }
    results.insert("errors".into(), Value::Object(errors.clone()));
    results.insert("elapsed_s".into(), json!(t0.elapsed().as_secs_f64()));
    let mut results = Value::Object(results);
    results["interpretation"] = json!(report::interpret(&results));
    let verdicts = report::verdicts(&results);
    results["verdicts"] = json!(verdicts.iter().map(|v| v.json()).collect::<Vec<_>>());
    write_outputs(&o.out, &results)?;
    for v in &verdicts {
        eprintln!(
            "bench: {} {}: {} (target {})",
            if v.met {
                "MET       "
            } else if v.unresolved() {
                "UNRESOLVED"
            } else {
                "MISSED    "
            },
            v.what,
            v.measured,
            v.target
        );
    }
    Ok(errors.is_empty())
}

fn rerender(args: &[String]) -> Result<()> {
    let out = match args {
        [] => workspace().join("bench"),
        [flag, dir] if flag == "--out" => PathBuf::from(dir),
        _ => bail!("{USAGE}"),
    };
    let p = out.join("results.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut results: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    results["interpretation"] = json!(report::interpret(&results));
    results["verdicts"] = json!(report::verdicts(&results)
        .iter()
        .map(|v| v.json())
        .collect::<Vec<_>>());
    write_outputs(&out, &results)
}

fn exit(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("holder") => return exit(holder::main(&args[1..])),
        Some("wedge") => return exit(wedge::main(&args[1..])),
        Some("streamer") => return exit(streamer::main(&args[1..])),
        Some("report") => return exit(rerender(&args[1..])),
        _ => {}
    }
    let opts = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    util::install_signal_handlers();
    // Guards (children, agents, sysctls) unwind inside `run`; this catches what escapes.
    match std::panic::catch_unwind(|| run(&opts)) {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => {
            eprintln!("bench: some sections failed; see REPORT.md");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("bench: panicked (message above); children were killed and sysctls restored");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn options() {
        let full = parse_opts(&[]).unwrap();
        assert_eq!(
            (full.pairs, full.scale_n.as_slice(), full.wedges.as_slice()),
            (9, &[1000, 10_000, 100_000][..], &[1, 100, 5000][..])
        );
        assert!(full.out.ends_with("bench"));
        let q = parse_opts(&args("--quick --pairs 5 --only hot,reaction")).unwrap();
        assert!(
            q.quick
                && q.pairs == 5
                && q.sections == ["hot", "reaction"]
                && q.out.ends_with("target/bench-quick")
        );
        assert_eq!(
            parse_opts(&args("--scale-n 10,20")).unwrap().scale_n,
            [10, 20]
        );
        assert_eq!(full.stream_n, [10_000, 30_000, 40_000]);
        assert!(full.sections.iter().any(|s| s == "streaming"));
        let st = parse_opts(&args("--only streaming --stream-n 2000,4000")).unwrap();
        assert_eq!(
            (st.sections.as_slice(), st.stream_n.as_slice()),
            (&["streaming".to_string()][..], &[2000, 4000][..])
        );
        assert_eq!(
            (full.scan_n.as_slice(), full.scan_stream_n),
            (&[1000, 10_000, 100_000][..], 30_000)
        );
        let sc = parse_opts(&args("--quick --only scan --scan-n 500 --scan-stream-n 0")).unwrap();
        assert_eq!(
            (
                sc.sections.as_slice(),
                sc.scan_n.as_slice(),
                sc.scan_stream_n
            ),
            (&["scan".to_string()][..], &[500][..], 0)
        );
        for bad in [
            "--only nope",
            "--scan-n 0",
            "--scan-stream-n 300000",
            "--pairs 0",
            "--scale-n 0",
            "--wedges x",
            "--pairs",
            "--frob",
            "--hot-secs 100",
            "--stream-n 0",
            "--stream-n 300000",
        ] {
            assert!(parse_opts(&args(bad)).is_err(), "{bad}");
        }
    }
}
