//! Question 3: how fast does the agent react? 1..5,000 simultaneous wedges, threshold 5 s,
//! tick 1 s: time from threshold crossing to the reset, and from the reset to the blocked
//! send() returning ECONNABORTED; no wedge may be missed.

use crate::agent::{self, Agent, Event};
use crate::util::{self, Helper};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Settings of the reaction benchmark.
pub struct Config {
    /// Wedge counts to test.
    pub wedges: Vec<usize>,
    /// Zero-window threshold of the policy, seconds.
    pub threshold_s: u64,
    /// Most wedges (threads) per helper process.
    pub per_process: usize,
}

/// One writer's result line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterResult {
    /// Listen address of its helper (= the server socket's local address).
    pub local: String,
    /// The client's address (= the server socket's remote address).
    pub remote: String,
    /// Last send progress, wall ns.
    pub last_progress_ns: u64,
    /// When the blocked send() failed, wall ns (0: never).
    pub unblock_ns: u64,
    /// errno of that failure (0: none).
    pub errno: i32,
    /// Bytes written in total.
    pub bytes: u64,
}

/// Parse `<remote> <last_progress_ns> <unblock_ns> <errno> <bytes>` (after `res `).
pub fn parse_res(local: &str, rest: &str) -> Result<WriterResult> {
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.len() != 5 {
        bail!("bad writer result line {rest:?}");
    }
    Ok(WriterResult {
        local: local.to_string(),
        remote: f[0].to_string(),
        last_progress_ns: f[1].parse()?,
        unblock_ns: f[2].parse()?,
        errno: f[3].parse()?,
        bytes: f[4].parse()?,
    })
}

/// Per-wedge timings (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Agent's own view at its decision: stalled_for_ms - effective_threshold_ms.
    pub thr_to_decision_ms: f64,
    /// Threshold crossing -> the blocked send() failing. The crossing's wall time is the
    /// agent's: `ts` of the socket's first stall event minus (its stalled_for_ms - effective
    /// threshold). This is the end-to-end reaction the application sees; it includes the
    /// netlink batch and the writer's wake-up.
    pub thr_to_error_ms: Option<f64>,
    /// The blocked send() failing - the agent's decision (the reset batch + wake-up).
    pub decision_to_error_ms: Option<f64>,
    /// Writer's view: reset event ts - (writer's last successful send + effective threshold).
    pub thr_to_reset_event_writer_ms: f64,
    /// Blocked send() failing - writer's last progress.
    pub progress_to_error_ms: Option<f64>,
}

fn stall_numbers(ev: &Event) -> Result<(f64, f64, f64)> {
    let ts = ev
        .ts_ns()
        .ok_or_else(|| anyhow!("{} without a valid ts", ev.name()))? as f64;
    let stalled = ev
        .u64("stalled_for_ms")
        .ok_or_else(|| anyhow!("{} without stalled_for_ms", ev.name()))? as f64;
    let thr = ev.v["evidence"]["effective_threshold_ms"]
        .as_u64()
        .ok_or_else(|| anyhow!("{} without evidence.effective_threshold_ms", ev.name()))?
        as f64;
    Ok((ts, stalled, thr))
}

/// Timings of one wedge given its `socket_reset` event and, if any, its first stall event
/// (`stall_started`; emitted in the deciding tick before the reset batch, so its `ts` is close
/// to the decision, while the resets' `ts` follow the whole batch).
pub fn timing(w: &WriterResult, reset: &Event, started: Option<&Event>) -> Result<Timing> {
    let (ts_reset, stalled, thr) = stall_numbers(reset)?;
    let (ts_ref, stalled_ref, thr_ref) = match started {
        Some(e) => stall_numbers(e)?,
        None => (ts_reset, stalled, thr),
    };
    let crossing_ns = ts_ref - (stalled_ref - thr_ref) * 1e6;
    let failed = w.unblock_ns > 0;
    let thr_to_error = failed.then(|| (w.unblock_ns as f64 - crossing_ns) / 1e6);
    Ok(Timing {
        thr_to_decision_ms: stalled - thr,
        thr_to_error_ms: thr_to_error,
        decision_to_error_ms: thr_to_error.map(|t| t - (stalled - thr)),
        thr_to_reset_event_writer_ms: (ts_reset - (w.last_progress_ns as f64 + thr * 1e6)) / 1e6,
        progress_to_error_ms: failed
            .then(|| (w.unblock_ns as f64 - w.last_progress_ns as f64) / 1e6),
    })
}

fn run_w(cfg: &Config, w: usize, idx: usize, workdir: &Path) -> Result<Value> {
    let port = 7300 + idx as u16;
    let procs = w.div_ceil(cfg.per_process);
    if procs > 250 || idx > 150 {
        bail!("too many wedge processes ({procs}) or phases for the 127.0.X.Y address plan");
    }
    let timeout_s = cfg.threshold_s + 60;
    let mut helpers = Vec::with_capacity(procs);
    let mut listens = Vec::with_capacity(procs);
    for p in 0..procs {
        let share = w / procs + usize::from(p < w % procs);
        let listen = format!("127.0.{}.{}:{port}", 100 + idx, p + 1);
        let args: Vec<String> = [
            "wedge",
            "--listen",
            &listen,
            "--count",
            &share.to_string(),
            "--timeout-s",
            &timeout_s.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        helpers.push(Helper::spawn(&format!("wedge-{w}-{p}"), &args)?);
        listens.push(listen);
    }
    for h in &mut helpers {
        h.expect("ready", Duration::from_secs(120))?;
    }
    let policy = workdir.join(format!("policy-reaction-{w}.toml"));
    agent::write_policy(&policy, port, cfg.threshold_s)?;
    let mut ag = Agent::start(&policy, false, workdir, &format!("reaction-{w}"))?;
    // Let the tick phase be arbitrary relative to the wedges' start.
    util::sleep_checked(Duration::from_millis(1300))?;
    let go_ns = util::wall_ns();
    for h in &mut helpers {
        h.send("go")?;
    }
    let mut results = Vec::with_capacity(w);
    for (h, listen) in helpers.iter_mut().zip(&listens) {
        loop {
            let l = h.recv(Duration::from_secs(timeout_s + 30))?;
            if let Some(rest) = l.strip_prefix("res ") {
                results.push(parse_res(listen, rest)?);
            } else if l.starts_with("done") {
                break;
            } else {
                bail!("wedge helper {}: unexpected line {l:?}", h.name);
            }
        }
    }
    // Every reset was printed before the writers saw their errors; allow for pipe latency.
    let _ = ag.wait_for(Duration::from_secs(3), |_| false);
    let startup_ms = ag.startup.as_secs_f64() * 1e3;
    let events = ag
        .stop()
        .context("stopping the agent after the reaction phase")?;
    for h in helpers {
        h.finish(Duration::from_secs(10));
    }
    let resets: Vec<&Event> = events
        .iter()
        .filter(|e| e.name() == "socket_reset")
        .collect();
    let by_tuple: HashMap<(String, String), &Event> = resets
        .iter()
        .filter_map(|e| {
            Some((
                (
                    e.v["local"].as_str()?.to_string(),
                    e.v["remote"].as_str()?.to_string(),
                ),
                *e,
            ))
        })
        .collect();
    let mut first_stall: HashMap<(String, String), &Event> = HashMap::new();
    for e in events.iter().filter(|e| e.name() == "stall_started") {
        if let (Some(l), Some(r)) = (e.v["local"].as_str(), e.v["remote"].as_str()) {
            first_stall
                .entry((l.to_string(), r.to_string()))
                .or_insert(e);
        }
    }
    let mut timings = Vec::new();
    let mut missed = 0usize;
    let mut not_aborted = 0usize;
    let mut errnos: HashMap<i32, usize> = HashMap::new();
    for r in &results {
        *errnos.entry(r.errno).or_default() += 1;
        if r.errno != libc::ECONNABORTED {
            not_aborted += 1;
        }
        let key = (r.local.clone(), r.remote.clone());
        match by_tuple.get(&key) {
            Some(ev) => timings.push(timing(r, ev, first_stall.get(&key).copied())?),
            None => missed += 1,
        }
    }
    let matched = timings.len();
    let unrelated = resets.len() - matched;
    let col =
        |f: &dyn Fn(&Timing) -> Option<f64>| -> Vec<f64> { timings.iter().filter_map(f).collect() };
    let thr_decision = col(&|t| Some(t.thr_to_decision_ms));
    let thr_error = col(&|t| t.thr_to_error_ms);
    let decision_error = col(&|t| t.decision_to_error_ms);
    let thr_writer = col(&|t| Some(t.thr_to_reset_event_writer_ms));
    let prog_err = col(&|t| t.progress_to_error_ms);
    let eff: Vec<f64> = resets
        .iter()
        .filter_map(|e| e.v["evidence"]["effective_threshold_ms"].as_f64())
        .collect();
    let latency_us: Vec<f64> = resets
        .iter()
        .filter_map(|e| e.v["reset_latency_us"].as_f64())
        .collect();
    let ts: Vec<u64> = resets.iter().filter_map(|e| e.ts_ns()).collect();
    let reset_span_ms = match (ts.iter().min(), ts.iter().max()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e6,
        _ => 0.0,
    };
    let pipe_lag: Vec<f64> = resets
        .iter()
        .filter_map(|e| Some((e.arrived_ns as f64 - e.ts_ns()? as f64) / 1e6))
        .collect();
    let unblocks: Vec<u64> = results
        .iter()
        .filter(|r| r.unblock_ns > 0)
        .map(|r| r.unblock_ns)
        .collect();
    let econn_span_ms = match (unblocks.iter().min(), unblocks.iter().max()) {
        (Some(a), Some(b)) => (b - a) as f64 / 1e6,
        _ => 0.0,
    };
    let count = |name: &str| events.iter().filter(|e| e.name() == name).count();
    let pct =
        |v: &[f64], p: f64| util::percentile(v, p).map_or("n/a".to_string(), |x| format!("{x:.1}"));
    eprintln!(
        "bench: reaction {w} wedges: resets {} (matched {matched}, missed {missed}), ECONNABORTED {}/{}, threshold->decision p50/p99 {}/{} ms, threshold->ECONNABORTED p50/p99 {}/{} ms",
        resets.len(),
        results.len() - not_aborted,
        results.len(),
        pct(&thr_decision, 50.0),
        pct(&thr_decision, 99.0),
        pct(&thr_error, 50.0),
        pct(&thr_error, 99.0),
    );
    let mut errno_list: Vec<_> = errnos.into_iter().collect();
    errno_list.sort();
    Ok(json!({
        "wedges": w,
        "helper_processes": procs,
        "go_wall_ns": go_ns,
        "writers_reported": results.len(),
        "resets_total": resets.len(),
        "resets_matched": matched,
        "resets_unrelated": unrelated,
        "wedges_missed": missed,
        "writers_econnaborted": results.len() - not_aborted,
        "writers_other_outcome": not_aborted,
        "writer_errnos": errno_list.iter().map(|(e, n)| json!({"errno": e, "count": n})).collect::<Vec<_>>(),
        "reset_failed_events": count("reset_failed"),
        "reset_skipped_events": count("reset_skipped"),
        "stall_started_events": count("stall_started"),
        "effective_threshold_ms": util::latency_json(&eff),
        "threshold_to_decision_ms": util::latency_json(&thr_decision),
        "threshold_to_econnaborted_ms": util::latency_json(&thr_error),
        "decision_to_econnaborted_ms": util::latency_json(&decision_error),
        "threshold_to_reset_event_ms_writer_view": util::latency_json(&thr_writer),
        "last_progress_to_error_ms": util::latency_json(&prog_err),
        "reset_latency_us_reported": util::latency_json(&latency_us),
        "econnaborted_span_ms": econn_span_ms,
        "reset_span_ms": reset_span_ms,
        "event_ts_to_arrival_ms": util::latency_json(&pipe_lag),
        "agent_startup_ms": startup_ms,
    }))
}

/// Run every wedge count in order.
pub fn run(cfg: &Config, workdir: &Path) -> Result<Value> {
    let mut per_w = Vec::new();
    for (i, &w) in cfg.wedges.iter().enumerate() {
        util::check_stop()?;
        per_w.push(
            run_w(cfg, w, i, workdir)
                .with_context(|| format!("reaction benchmark with {w} wedges"))?,
        );
    }
    Ok(json!({
        "threshold_s": cfg.threshold_s,
        "tick_s": 1,
        "results": per_w,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: &str, stalled: u64, thr: u64) -> Event {
        Event {
            arrived_ns: 0,
            v: json!({"event": "socket_reset", "ts": ts, "stalled_for_ms": stalled,
                      "evidence": {"effective_threshold_ms": thr}}),
        }
    }

    #[test]
    fn parses_writer_lines() {
        let r = parse_res("127.0.100.1:7300", "127.0.0.1:40000 10 20 103 4096").unwrap();
        assert_eq!(r.remote, "127.0.0.1:40000");
        assert_eq!(
            (r.last_progress_ns, r.unblock_ns, r.errno, r.bytes),
            (10, 20, 103, 4096)
        );
        assert!(parse_res("x", "127.0.0.1:1 1 2").is_err());
        assert!(parse_res("x", "127.0.0.1:1 a 2 3 4").is_err());
    }

    #[test]
    fn timings_from_events_and_writer() {
        // Writer last progressed at t=100.000 s; threshold 5 s. The agent decided at 105.420 s
        // (stall_started ts, stalled 5,420 ms -> crossing at 105.000 s); the batch's reset event
        // was written at 105.700 s; the writer saw ECONNABORTED at 105.6006 s.
        let w = WriterResult {
            local: "a".into(),
            remote: "b".into(),
            last_progress_ns: 100_000_000_000,
            unblock_ns: 105_600_600_000,
            errno: 103,
            bytes: 1,
        };
        let reset = ev("1970-01-01T00:01:45.700Z", 5_420, 5_000);
        let started = ev("1970-01-01T00:01:45.420Z", 5_420, 5_000);
        let t = timing(&w, &reset, Some(&started)).unwrap();
        assert!((t.thr_to_decision_ms - 420.0).abs() < 1e-9);
        assert!((t.thr_to_error_ms.unwrap() - 600.6).abs() < 1e-6);
        assert!((t.decision_to_error_ms.unwrap() - 180.6).abs() < 1e-6);
        assert!((t.thr_to_reset_event_writer_ms - 700.0).abs() < 1e-6);
        assert!((t.progress_to_error_ms.unwrap() - 5_600.6).abs() < 1e-6);
        // Without a stall event the reset event is the reference.
        let t = timing(&w, &reset, None).unwrap();
        assert!((t.thr_to_error_ms.unwrap() - 320.6).abs() < 1e-6);
        let never = WriterResult { unblock_ns: 0, ..w };
        let t = timing(&never, &reset, Some(&started)).unwrap();
        assert_eq!(
            (
                t.thr_to_error_ms,
                t.decision_to_error_ms,
                t.progress_to_error_ms
            ),
            (None, None, None)
        );
    }
}
