//! The streaming-server part of the report: its targets, its REPORT.md section and its
//! interpretation notes, computed from `results["streaming"]` only.

use crate::report::{f, fmt_opt, spread, Verdict};
use serde_json::Value;
use std::fmt::Write;

/// Target: agent CPU (process + BPF) below this share of one core, in percent.
pub const CPU_TARGET_PCT: f64 = 2.0;
/// Cost per tracked socket counts as linear when the ratio between the largest and the
/// smallest N (both within the map) lies in this band.
pub const LINEAR_BAND: (f64, f64) = (0.5, 2.0);

fn runs(results: &Value) -> Vec<&Value> {
    results["streaming"]["results"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// A run whose N fits in the map's capacity. (Near the bound the agent's map pressure keeps
/// the last tenth for wedge signatures, so such a run may still see refused inserts: its
/// tracked count is what the CPU figures are per.)
fn within_map(r: &Value) -> bool {
    let n = r["connections"].as_u64().unwrap_or(0);
    let cap = r["map_capacity"].as_u64().unwrap_or(0);
    cap > 0 && n <= cap
}

/// Where a streaming run's agent CPU goes: the BPF part by program runs against the
/// streams' writes, the process part per tracked socket.
fn cost_parts(r: &Value, period_ms: Option<f64>) -> Option<String> {
    let runs: Vec<f64> = r["rounds"]
        .as_array()?
        .iter()
        .filter_map(|x| f(&x["agent_bpf_runs_per_s"]))
        .collect();
    let runs = crate::util::median(&runs)?;
    let bpf_ms = f(&r["agent_bpf_ms_per_s"]["median"])?;
    let proc_ms = f(&r["agent_process_cpu_ms_per_s"]["median"])?;
    let n = f(&r["connections"])?;
    let writes = period_ms.filter(|p| *p > 0.0).map(|p| n * 1000.0 / p)?;
    let per_socket_us = tracked(r)
        .filter(|t| *t > 0.0)
        .map(|t| proc_ms * 1000.0 / t)?;
    let fl = &r["floor"];
    let floor = match (f(&fl["bpf_ms_per_s"]), f(&fl["runs_per_s"]), f(&fl["ns_per_run"])) {
        (Some(ms), Some(rps), Some(ns)) => format!(
            " Empty programs at the same tracepoints, on the same streams right after the agent stopped (the attach \
             floor): {ms:.2} ms/s, {rps:.0} runs per second at {ns:.0} ns per run."
        ),
        _ => String::new(),
    };
    let anatomy = ack_anatomy(r).unwrap_or_default();
    let trouble = trouble_only(r, bpf_ms).unwrap_or_default();
    // The tick's map read (the batch read of every tracked entry), from the agent's `stats`.
    let map_read = match (f(&r["map_read_us"]["p50"]), f(&r["tick_us"]["p50"])) {
        (Some(read), Some(tick)) if tick > 0.0 => format!(
            " Of a tick ({tick:.0} µs, p50 of the steady-state `stats` lines), reading the map takes {read:.0} µs \
             ({:.0} %).",
            read * 100.0 / tick
        ),
        _ => String::new(),
    };
    let warmup = &r["warmup_round"];
    let warmup = match (
        f(&warmup["agent_process_cpu_ms_per_s"]),
        f(&warmup["agent_bpf_ms_per_s"]),
    ) {
        (Some(p), Some(b)) => format!(
            " The warm-up round (not counted) cost {p:.2} ms/s of process CPU and {b:.2} ms/s of BPF."
        ),
        _ => String::new(),
    };
    let progs: Vec<String> = r["bpf_programs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some(format!(
                        "{} {:.2} ms/s ({:.0} runs/s at {:.0} ns)",
                        p["name"].as_str()?,
                        f(&p["ms_per_s"])?,
                        f(&p["runs_per_s"])?,
                        f(&p["ns_per_run"])?
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let floor = if progs.is_empty() {
        floor
    } else {
        format!(
            "{floor} By program, over the whole load window: {}.",
            progs.join(", ")
        )
    };
    Some(format!(
        "Streaming N={n}: the BPF part, {bpf_ms:.2} ms/s, is {runs:.0} program runs per second at {:.0} ns per run, \
         {:.1} runs per write of the streams ({writes:.0} writes per second): the hooks fire on the streams' traffic \
         (writes, ACKs and reads at both ends, which share this node), so that part grows with traffic, not with the \
         sockets tracked.{floor}{anatomy}{trouble} The process part, {proc_ms:.2} ms/s, is {per_socket_us:.3} µs per tracked socket per \
         second.{map_read}{warmup}",
        if runs > 0.0 { bpf_ms * 1e6 / runs } else { 0.0 },
        runs / writes,
    ))
}

/// What the ACK hook's time is made of (`ack_cost` in the results): the hook's steps up to
/// its map lookup against those and the lookup, each alone on the same streams after the
/// agent stopped, and the agent's own ACK program over the load window.
fn ack_anatomy(r: &Value) -> Option<String> {
    let c = &r["ack_cost"];
    let (reach, lookup) = (&c["reach"], &c["lookup"]);
    let ns_r = f(&reach["ns_per_run"])?;
    let runs_r = f(&reach["runs_per_s"])?;
    let past_r = f(&reach["past_exit_per_s"])?;
    let ns_l = f(&lookup["ns_per_run"])?;
    let runs_l = f(&lookup["runs_per_s"])?;
    let past_l = f(&lookup["past_exit_per_s"])?;
    let found_l = f(&lookup["found_per_s"])?;
    let created_l = f(&lookup["created_per_s"])?;
    let entries = f(&lookup["entries"])?;
    let window = f(&lookup["window_s"])?;
    if runs_r <= 0.0 || runs_l <= 0.0 || past_l <= 0.0 {
        return None;
    }
    let (share_r, share_l) = (past_r / runs_r, past_l / runs_l);
    // Per run that gets past the early exit, what the lookup adds (the two windows' mixes of
    // runs are taken as equal: both shares are stated).
    let per_lookup = (ns_l - ns_r) / share_l;
    let agent = r["bpf_programs"].as_array().and_then(|a| {
        a.iter()
            .find(|p| p["name"].as_str() == Some("tcpstall_ack_tp"))
            .and_then(|p| f(&p["ns_per_run"]))
    });
    let agent = match agent {
        // Within a tenth of the lookup program: the rest of the agent's ACK work (refreshing
        // the entry, the rate limit, the tracking decision) does not show.
        Some(a) if (a - ns_l).abs() <= ns_l / 10.0 => format!(
            " The agent's whole ACK program took {a:.0} ns per run over the load window, within a tenth of the \
             lookup program alone (measured in another window): refreshing the entry and the rest of its logic \
             add nothing measurable beyond finding it."
        ),
        Some(a) => format!(
            " The agent's whole ACK program took {a:.0} ns per run over the load window ({:+.0} ns per run against \
             the lookup program alone, measured in another window).",
            a - ns_l
        ),
        None => String::new(),
    };
    Some(format!(
        " What the ACK hook's time is made of (each program alone at `tcp_probe` for {window:.0} s, same streams, \
         agent stopped): its steps up to the map lookup (the socket, the early exit of a socket with nothing of its \
         own queued, the clock, the cookie) {ns_r:.0} ns per run on {runs_r:.0} runs/s, {:.0} % of them past the \
         early exit; the same and the lookup of the socket's entry in a hash map holding {entries:.0} entries \
         ({found_l:.0} lookups/s found one, {created_l:.0}/s made one) {ns_l:.0} ns per run on {runs_l:.0} runs/s, \
         {:.0} % past the early exit. So finding a socket's entry adds about {per_lookup:.0} ns to each run that \
         gets that far.{agent}",
        share_r * 100.0,
        share_l * 100.0,
    ))
}

/// Why a streaming run misses the CPU target, from its own measurements: its parts
/// (BPF, the tick's map read, the rest of the tick) and the floor of the design, what the
/// ACK hook's steps before its lookup (`ack_cost.reach`) and the map read cost together
/// with no lookup and no per-socket work at all. None without the anatomy or the map read.
fn miss_cause(r: &Value) -> Option<String> {
    let bpf = f(&r["agent_bpf_ms_per_s"]["median"])?;
    let process = f(&r["agent_process_cpu_ms_per_s"]["median"])?;
    let tick_s = f(&r["tick_ms"]).filter(|t| *t > 0.0)? / 1000.0;
    let read = f(&r["map_read_us"]["p50"])? / 1000.0 / tick_s;
    let tracked = tracked(r).filter(|t| *t > 0.0)?;
    let c = &r["ack_cost"];
    let reach = f(&c["reach"]["ns_per_run"])? * f(&c["reach"]["runs_per_s"])? / 1e6;
    let (ns_r, ns_l) = (
        f(&c["reach"]["ns_per_run"])?,
        f(&c["lookup"]["ns_per_run"])?,
    );
    let runs_l = f(&c["lookup"]["runs_per_s"])?;
    // What the lookup adds per second on the lookup program's runs.
    let lookup = (ns_l - ns_r).max(0.0) * runs_l / 1e6;
    let rest = (process - read).max(0.0);
    let floor = reach + read;
    Some(format!(
        "; why, by this run's own measurements: BPF {bpf:.1} ms/s (measured alone on the same streams: the ACK \
         hook's steps before its map lookup {reach:.1} ms/s, the lookup ~{lookup:.1} ms/s more), the tick's map read \
         {read:.1} ms/s, \
         the rest of the tick {rest:.1} ms/s ({:.2} µs per tracked socket); those steps and the map read alone, \
         with no lookup and no per-socket work, are {:.2} % of a core{}",
        rest * 1000.0 / tracked,
        floor / 10.0,
        if floor / 10.0 >= CPU_TARGET_PCT {
            ": on this machine a design that hooks every ACK and reads every tracked entry every tick is at or over \
             the target before any lookup or per-socket work"
        } else {
            ""
        }
    ))
}

/// A design whose hooks fire only on trouble (`trouble_timer` in the results): what the
/// TCP write timer's expiries were on these streams and what hooking every timer expiry
/// to see them cost, against the agent's BPF part (`agent_bpf`, ms/s); then the same
/// streams after the agent stopped (`trouble_timer_after_agent`), where measured.
fn trouble_only(r: &Value, agent_bpf: f64) -> Option<String> {
    let t = &r["trouble_timer"];
    let window = f(&t["window_s"])?;
    let runs = f(&t["runs_per_s"])?;
    let ns = f(&t["ns_per_run"])?;
    let ms = f(&t["bpf_ms_per_s"])?;
    let expiries = f(&t["write_timer_expiries_per_s"])?;
    let rto = f(&t["retransmit_pending_per_s"])?;
    let probe0 = f(&t["probe0_pending_per_s"])?;
    let tlp = f(&t["loss_probe_pending_per_s"]).unwrap_or(0.0);
    let streams = t["sockets_flagged_streams"].as_u64()?;
    let wedges = t["sockets_flagged_wedges"].as_u64()?;
    let wedge_count = r["wedges"]["count"].as_u64().unwrap_or(0);
    let n = r["connections"].as_u64().unwrap_or(0);
    let window_of = |a: &Value, when: &str| {
        match (
        f(&a["window_s"]),
        f(&a["write_timer_expiries_per_s"]),
        f(&a["retransmit_pending_per_s"]),
        f(&a["loss_probe_pending_per_s"]),
        a["sockets_flagged_new"].as_u64(),
    ) {
        (Some(w), Some(e), Some(rto), Some(tlp), Some(new)) => format!(
            " {when} ({w:.0} s), the write timer expired {e:.1} times/s ({rto:.2}/s with a retransmission \
             pending, {tlp:.2}/s with a loss probe pending) and {new} sockets were flagged."
        ),
        _ => String::new(),
    }
    };
    let before = window_of(
        &r["trouble_timer_before_agent"],
        "On the streams alone, before the agent started",
    );
    let after = window_of(
        &r["trouble_timer_after_agent"],
        "After the agent stopped (the same streams, with the floor and cost programs of this section \
         attached in turn)",
    );
    // Its other half: reading the flagged sockets' progress at tick time by sock_diag.
    let d = &r["diag_reads"];
    let reads = match (f(&d["cpu_us_per_socket"]["median"]), d["sockets"].as_u64()) {
        (Some(us), Some(k)) => {
            let flagged = (streams + wedges) as f64;
            let tick_ms = f(&r["tick_ms"]).filter(|t| *t > 0.0).unwrap_or(1000.0);
            let est = ms + flagged * us / 1e3 * 1000.0 / tick_ms;
            format!(
                " Reading a flagged socket's progress at tick time by a sock_diag lookup (the agent's batched \
                 lookup, with `tcp_info`) took {us:.2} µs of CPU per socket (median of {} batches of {k} stream \
                 sockets); if every socket flagged here were read every tick, that design's cost on these streams \
                 would be at most {est:.2} ms/s ({:.3} % of a core: the timer program and {flagged:.0} reads per \
                 tick), against the agent's {:.2} ms/s: an estimate from these two measurements{}.",
                d["batches"].as_u64().unwrap_or(0),
                est / 10.0,
                agent_total(r).unwrap_or(f64::NAN),
                match f(&r["trouble_agent"]["agent_total_cpu_ms_per_s"]["median"]) {
                    Some(m) => format!(
                        "; the design itself (`--trouble-hooks`), run on the same streams, measured {m:.2} ms/s"
                    ),
                    None => String::new(),
                },
            )
        }
        _ => String::new(),
    };
    Some(format!(
        " Trouble-only hooks (a program at `timer_expire_entry`, which every timer expiry of the machine runs, \
         alongside the agent from its start, before the wedges were made, until it stopped, {window:.0} s): \
         {runs:.0} runs/s at {ns:.0} ns, {ms:.3} ms/s ({:.2} % of the agent's BPF part); the TCP write timer \
         expired {expiries:.1} times/s: {rto:.2}/s with a retransmission pending, {tlp:.2}/s with a loss probe \
         pending, {probe0:.2}/s with a zero-window probe pending. Sockets found with a retransmission or a \
         zero-window probe pending at an expiry since the program was attached (before the agent started), the \
         ones such a design would track: {streams} of the {n} streams, {wedges} of \
         the {wedge_count} wedged ones.{before}{after}{reads}",
        if agent_bpf > 0.0 { ms * 100.0 / agent_bpf } else { 0.0 },
    ))
}

/// The agent's CPU (process + BPF), ms/s, median of the rounds.
fn agent_total(r: &Value) -> Option<f64> {
    f(&r["agent_total_cpu_ms_per_s"]["median"])
}

fn tracked(r: &Value) -> Option<f64> {
    f(&r["sockets_tracked"]["median"])
}

fn verdict(what: String, target: String, measured: String, met: bool, miss: String) -> Verdict {
    Verdict {
        what,
        target,
        measured,
        met,
        miss_by: (!met).then_some(miss),
    }
}

/// The streaming targets present in `results`.
pub fn verdicts(results: &Value) -> Vec<Verdict> {
    let mut out = Vec::new();
    let rs = runs(results);
    for r in &rs {
        let n = r["connections"].as_u64().unwrap_or(0);
        let tr = fmt_opt(tracked(r), 0);
        if within_map(r) {
            if let Some(pct) = f(&r["agent_pct_of_one_core_median"]) {
                out.push(verdict(
                    format!("streaming N={n} ({tr} tracked, 1 s tick): agent CPU (process + BPF)"),
                    format!("< {CPU_TARGET_PCT}% of one core"),
                    format!(
                        "{pct:.3}% ({} ms/s, spread {}..{})",
                        fmt_opt(f(&r["agent_total_cpu_ms_per_s"]["median"]), 2),
                        fmt_opt(f(&r["agent_total_cpu_ms_per_s"]["min"]), 2),
                        fmt_opt(f(&r["agent_total_cpu_ms_per_s"]["max"]), 2)
                    ),
                    pct < CPU_TARGET_PCT,
                    format!(
                        "{:.3} percentage points{}",
                        pct - CPU_TARGET_PCT,
                        miss_cause(r).unwrap_or_default()
                    ),
                ));
            }
        }
        let stalls = r["stall_started_streaming"].as_u64().unwrap_or(0);
        let observed = f(&r["observed_s"]).unwrap_or(0.0);
        let need = f(&r["longest_default_threshold_s"]).unwrap_or(f64::INFINITY)
            + 2.0 * f(&r["tick_ms"]).unwrap_or(1000.0) / 1000.0;
        let long_enough = observed >= need;
        out.push(verdict(
            format!("streaming N={n}: false stalls at the default thresholds"),
            "0 `stall_started` on the streams".into(),
            format!("{stalls} in {observed:.0} s watched"),
            stalls == 0 && long_enough,
            if stalls > 0 {
                format!("{stalls} false stalls")
            } else {
                format!(
                    "unresolved: watched {observed:.0} s, less than the longest default threshold + 2 ticks ({need:.0} s)"
                )
            },
        ));
        let cap = r["map_capacity"].as_u64().unwrap_or(0);
        if cap > 0 && n > cap {
            let full = r["map_full_total"].as_u64().unwrap_or(0);
            let max = f(&r["sockets_tracked_max_all"]).unwrap_or(f64::INFINITY);
            let alive = r["agent_exit_ok"].as_bool() == Some(true);
            let ok = full > 0 && alive && max <= cap as f64;
            out.push(verdict(
                format!(
                    "streaming N={n} (past the map's {cap} entries): map full counted, agent alive"
                ),
                format!("map_full > 0, sockets_tracked <= {cap}, clean exit"),
                format!(
                    "map_full {full}, sockets_tracked max {max:.0}, evicted {}, {}",
                    r["map_evicted_total"],
                    if alive { "clean exit" } else { "agent failed" }
                ),
                ok,
                "see measured".into(),
            ));
        }
        if let Some(k) = r["wedges"]["count"].as_u64() {
            let seen = r["wedges"]["stall_started_server_side"]
                .as_u64()
                .unwrap_or(0);
            out.push(verdict(
                format!(
                    "streaming N={n}{}: {k} real wedges still reported",
                    if cap > 0 && n > cap {
                        " (map full)"
                    } else {
                        ""
                    }
                ),
                format!("{k} of {k} server sockets in `stall_started`"),
                format!(
                    "{seen} of {k} within {} s of blocking",
                    fmt_opt(f(&r["wedges"]["watched_s"]), 0)
                ),
                seen >= k,
                format!("{} wedges not reported", k - seen.min(k)),
            ));
        }
    }
    for r in &rs {
        out.extend(trouble_verdicts(r));
    }
    if let Some(v) = linearity(&rs) {
        out.push(v);
    }
    out
}

/// The verdicts of the agent with `--trouble-hooks` on the same streams (`trouble_agent`):
/// CPU against the same target, false stalls, fresh wedges reported. None without that arm.
fn trouble_verdicts(r: &Value) -> Vec<Verdict> {
    let t = &r["trouble_agent"];
    if t.is_null() {
        return Vec::new();
    }
    let n = r["connections"].as_u64().unwrap_or(0);
    let mut out = Vec::new();
    if let Some(pct) = f(&t["agent_pct_of_one_core_median"]) {
        let default = agent_total(r)
            .zip(agent_total(t))
            .filter(|(_, b)| *b > 0.0)
            .map(|(a, b)| {
                format!(
                    "; the default hooks on the same streams: {a:.2} ms/s, {:.0}x",
                    a / b
                )
            })
            .unwrap_or_default();
        out.push(verdict(
            format!(
                "streaming N={n} with --trouble-hooks ({} tracked, 1 s tick): agent CPU (process + BPF)",
                fmt_opt(tracked(t), 0)
            ),
            format!("< {CPU_TARGET_PCT}% of one core"),
            format!(
                "{pct:.3}% ({} ms/s, spread {}..{}{default})",
                fmt_opt(f(&t["agent_total_cpu_ms_per_s"]["median"]), 2),
                fmt_opt(f(&t["agent_total_cpu_ms_per_s"]["min"]), 2),
                fmt_opt(f(&t["agent_total_cpu_ms_per_s"]["max"]), 2)
            ),
            pct < CPU_TARGET_PCT,
            format!("{:.3} percentage points", pct - CPU_TARGET_PCT),
        ));
    }
    let stalls = t["stall_started_streaming"].as_u64().unwrap_or(0);
    out.push(verdict(
        format!("streaming N={n} with --trouble-hooks: false stalls at the default thresholds"),
        "0 `stall_started` on the streams".into(),
        format!("{stalls} in {} s watched", fmt_opt(f(&t["observed_s"]), 0)),
        stalls == 0,
        format!("{stalls} false stalls"),
    ));
    if let Some(k) = t["wedges"]["count"].as_u64() {
        let seen = t["wedges"]["stall_started_server_side"]
            .as_u64()
            .unwrap_or(0);
        let last = t["wedges"]["after_wedge_s"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .reduce(f64::max);
        out.push(verdict(
            format!("streaming N={n} with --trouble-hooks: {k} fresh wedges reported"),
            format!("{k} of {k} server sockets in `stall_started`"),
            format!(
                "{seen} of {k}{}",
                last.map(|l| format!(", the last {l:.0} s after blocking"))
                    .unwrap_or_default()
            ),
            seen >= k,
            format!("{} wedges not reported", k - seen.min(k)),
        ));
    }
    out
}

/// Per-socket cost at the largest vs the smallest tracked count within the map.
fn linearity(rs: &[&Value]) -> Option<Verdict> {
    let fit: Vec<&Value> = rs
        .iter()
        .copied()
        .filter(|r| within_map(r) && tracked(r).is_some_and(|t| t > 0.0))
        .collect();
    let small = fit.iter().min_by(|a, b| {
        tracked(a)
            .unwrap_or(0.0)
            .total_cmp(&tracked(b).unwrap_or(0.0))
    })?;
    let large = fit.iter().max_by(|a, b| {
        tracked(a)
            .unwrap_or(0.0)
            .total_cmp(&tracked(b).unwrap_or(0.0))
    })?;
    let (ts, tl) = (tracked(small)?, tracked(large)?);
    if tl < 1.5 * ts {
        return None;
    }
    let ps = &small["agent_us_per_tracked_socket_per_s"];
    let pl = &large["agent_us_per_tracked_socket_per_s"];
    let med = f(&pl["median"])? / f(&ps["median"])?;
    let lo = f(&pl["min"])? / f(&ps["max"])?;
    let hi = f(&pl["max"])? / f(&ps["min"])?;
    let (a, b) = LINEAR_BAND;
    let met = lo >= a && hi <= b;
    let missed = hi < a || lo > b;
    Some(verdict(
        format!("streaming: cost linear in tracked sockets ({ts:.0} vs {tl:.0} tracked)"),
        format!("per-socket cost ratio within {a}..{b}, spread included"),
        format!(
            "ratio {med:.2} (spread {lo:.2}..{hi:.2}); {} vs {} µs per socket per second",
            fmt_opt(f(&pl["median"]), 4),
            fmt_opt(f(&ps["median"]), 4)
        ),
        met,
        if missed {
            format!("ratio {med:.2} outside {a}..{b}")
        } else {
            format!("unresolved: the per-round spread {lo:.2}..{hi:.2} crosses the band {a}..{b}")
        },
    ))
}

/// ` (zero_window 2, no_ack 1)`, or nothing when there are none.
fn by_class(v: &Value) -> String {
    let parts: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The REPORT.md section (appended to `s`).
pub fn markdown(results: &Value, s: &mut String) {
    let rs = runs(results);
    if rs.is_empty() {
        return;
    }
    let st = &results["streaming"];
    let _ = writeln!(
        s,
        "\n## 4. Streaming server: every socket has data queued to a live reader\n\n\
         N loopback connections held by helper processes (<= {} each). Each server socket is paced \
         at {} B/s (`SO_MAX_PACING_RATE`, MSS {} B; SO_SNDBUF and the client's SO_RCVBUF {} B, \
         doubled by the kernel) and gets one {} B non-blocking write every {} ms, more than the \
         pace drains, so its send queue is never empty; each client reads whatever arrives \
         (EPOLLIN), so its window stays open and only the server end has data queued (on a real \
         node the readers are elsewhere). \
         The agent runs observe-only (no rule, default thresholds, 1 s tick, `--bpf-stats`) and \
         watches each N for at least {} s. {} rounds of {} s per N, after one warm-up round of \
         the same length that is not counted (it holds the agent's one-time start-up work; its \
         figures are below): agent process CPU from schedstat + in-kernel BPF run time from fdinfo. *Per tracked socket* = total / the \
         median `sockets_tracked` of the `stats` events in that round. *Tick* = `sweep_us` \
         (wall time of a whole tick) of the `stats` events after the first counted round started.\n\n\
         | N | tracked (median) | agent process ms/s | agent BPF ms/s | total ms/s | % of a core | µs per tracked socket per s | tick µs p50 / max | process CPU ms per tick | RSS MiB | BPF maps MiB | contended rounds |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
        st["per_process"],
        st["rate_bytes_per_s"],
        st["mss"],
        st["buf_bytes"],
        st["chunk_bytes"],
        st["write_period_ms"],
        fmt_opt(f(&st["observe_s"]), 0),
        st["rounds"],
        fmt_opt(f(&st["window_s"]), 0),
    );
    for r in &rs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            r["connections"],
            fmt_opt(tracked(r), 0),
            spread(&r["agent_process_cpu_ms_per_s"], 3),
            spread(&r["agent_bpf_ms_per_s"], 3),
            fmt_opt(f(&r["agent_total_cpu_ms_per_s"]["median"]), 3),
            fmt_opt(f(&r["agent_pct_of_one_core_median"]), 3),
            spread(&r["agent_us_per_tracked_socket_per_s"], 4),
            fmt_opt(f(&r["tick_us"]["p50"]), 0),
            fmt_opt(f(&r["tick_us"]["max"]), 0),
            fmt_opt(f(&r["agent_process_cpu_ms_per_tick"]), 2),
            fmt_opt(f(&r["agent_rss_kib"]).map(|k| k / 1024.0), 1),
            fmt_opt(f(&r["bpf_maps_memlock_bytes"]).map(|b| b / 1048576.0), 2),
            r["contended_rounds"],
        );
    }
    let _ = writeln!(
        s,
        "\n| N | map capacity | sockets_tracked median (min..max) | map_full total / in steady state | map_evicted | stall_started on streams (by class) | stall_cleared | threshold warnings | watched s | drain B/s per connection | load generator ms/s | setup s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &rs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} | {} | {}{} | {} | {} | {} | {} | {} | {} |",
            r["connections"],
            r["map_capacity"],
            spread(&r["sockets_tracked"], 0),
            r["map_full_total"],
            r["map_full_steady_delta"],
            r["map_evicted_total"],
            r["stall_started_streaming"],
            by_class(&r["stall_started_streaming_by_class"]),
            r["stall_cleared"],
            r["threshold_warnings"],
            fmt_opt(f(&r["observed_s"]), 0),
            fmt_opt(f(&r["load"]["drain_bytes_per_connection_per_s"]), 0),
            fmt_opt(f(&r["load"]["generator_cpu_ms_per_s"]["median"]), 0),
            fmt_opt(f(&r["setup_s"]), 1),
        );
    }
    if rs.iter().any(|r| !r["trouble_agent"].is_null()) {
        let _ = writeln!(
            s,
            "\nThe same streams, after the measurements above, watched by an agent started with \
             `--trouble-hooks` (no per-packet hook: `state`, `retransmit`, `timer`; tracked \
             sockets' progress read through sock_diag), the same rounds and policy; then fresh \
             wedged connections at their own address must reach `stall_started`.\n\n\
             | N | tracked (median) | agent process ms/s | agent BPF ms/s | total ms/s | % of a core | default hooks ms/s (same streams) | tick µs p50 (max) | progress lookups | holders found: iterator passes / /proc walks | RSS MiB | stall_started on streams | fresh wedges reported, s after blocking | contended rounds |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &rs {
            let t = &r["trouble_agent"];
            if t.is_null() {
                continue;
            }
            let after: Vec<String> = t["wedges"]["after_wedge_s"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .map(|v| format!("{v:.1}"))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} / {} | {} | {} | {} of {} ({}) | {} |",
                r["connections"],
                fmt_opt(tracked(t), 0),
                spread(&t["agent_process_cpu_ms_per_s"], 3),
                spread(&t["agent_bpf_ms_per_s"], 3),
                fmt_opt(f(&t["agent_total_cpu_ms_per_s"]["median"]), 3),
                fmt_opt(f(&t["agent_pct_of_one_core_median"]), 3),
                fmt_opt(agent_total(r), 3),
                fmt_opt(f(&t["tick_us"]["p50"]), 0),
                fmt_opt(f(&t["tick_us"]["max"]), 0),
                t["progress_lookups_total"],
                t["holder_passes_total"],
                t["proc_walks_total"],
                fmt_opt(f(&t["agent_rss_kib"]).map(|k| k / 1024.0), 1),
                t["stall_started_streaming"],
                t["wedges"]["stall_started_server_side"],
                t["wedges"]["count"],
                after.join(", "),
                t["contended_rounds"],
            );
        }
    }
    for r in &rs {
        let w = &r["wedges"];
        let Some(k) = w["count"].as_u64() else {
            continue;
        };
        // Per side and class: count and the range of times after the writers blocked.
        let mut groups: Vec<(String, Vec<f64>)> = Vec::new();
        for e in w["stall_started"].as_array().into_iter().flatten() {
            let key = format!(
                "{} `{}`",
                e["side"].as_str().unwrap_or("?"),
                e["class"].as_str().unwrap_or("?")
            );
            let at = f(&e["after_wedge_s"]).unwrap_or(f64::NAN);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(at),
                None => groups.push((key, vec![at])),
            }
        }
        let list: Vec<String> = groups
            .iter()
            .map(|(k, v)| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{k} ×{} after {lo:.1}..{hi:.1} s", v.len())
            })
            .collect();
        let _ = writeln!(
            s,
            "\nN={}: {k} wedged connections (client never reads, server writes until blocked) made \
             {} s after the agent started, with `map_full` at {} then; watched {} s: {} of {k} \
             server sockets reported in `stall_started`, {} client sockets (`recv_backlog`, \
             observe only). `stall_started` lines for them: {}.",
            r["connections"],
            fmt_opt(f(&w["made_after_agent_start_s"]), 1),
            w["map_full_before"],
            fmt_opt(f(&w["watched_s"]), 0),
            w["stall_started_server_side"],
            w["stall_started_client_side"],
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join("; ")
            }
        );
    }
}

fn ratio(a: &Value, b: &Value) -> Option<f64> {
    Some(f(b)? / f(a)?).filter(|r| r.is_finite())
}

/// Interpretation notes for the streaming section: growth factors, map-full rates, wedges
/// with and without room in the map, and what the contention flag means here.
pub fn interpret(results: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    let rs = runs(results);
    let fit: Vec<&&Value> = rs.iter().filter(|r| within_map(r)).collect();
    if let (Some(a), Some(b)) = (fit.first(), fit.last()) {
        if a["connections"] != b["connections"] {
            let g = |k: &str| {
                fmt_opt(
                    ratio(&a[k]["median"], &b[k]["median"]).or_else(|| ratio(&a[k], &b[k])),
                    2,
                )
            };
            notes.push(format!(
                "Streaming, {} -> {} tracked sockets (x{}): agent CPU x{} ({} -> {} ms/s; process part x{}, BPF part \
                 x{}), tick (`sweep_us` p50) x{} ({} -> {} µs), RSS x{} ({} -> {} MiB), cost per tracked socket \
                 {} -> {} µs per second.",
                fmt_opt(tracked(a), 0),
                fmt_opt(tracked(b), 0),
                fmt_opt(tracked(b).zip(tracked(a)).map(|(x, y)| x / y), 2),
                g("agent_total_cpu_ms_per_s"),
                fmt_opt(f(&a["agent_total_cpu_ms_per_s"]["median"]), 2),
                fmt_opt(f(&b["agent_total_cpu_ms_per_s"]["median"]), 2),
                g("agent_process_cpu_ms_per_s"),
                g("agent_bpf_ms_per_s"),
                fmt_opt(ratio(&a["tick_us"]["p50"], &b["tick_us"]["p50"]), 2),
                fmt_opt(f(&a["tick_us"]["p50"]), 0),
                fmt_opt(f(&b["tick_us"]["p50"]), 0),
                fmt_opt(ratio(&a["agent_rss_kib"], &b["agent_rss_kib"]), 2),
                fmt_opt(f(&a["agent_rss_kib"]).map(|k| k / 1024.0), 1),
                fmt_opt(f(&b["agent_rss_kib"]).map(|k| k / 1024.0), 1),
                fmt_opt(f(&a["agent_us_per_tracked_socket_per_s"]["median"]), 3),
                fmt_opt(f(&b["agent_us_per_tracked_socket_per_s"]["median"]), 3),
            ));
        }
    }
    let period_ms = f(&results["streaming"]["write_period_ms"]);
    for r in &fit {
        if let Some(note) = cost_parts(r, period_ms) {
            notes.push(note);
        }
    }
    for r in rs.iter().filter(|r| !within_map(r)) {
        let (Some(full), Some(span)) =
            (r["map_full_steady_delta"].as_u64(), f(&r["steady_span_s"]))
        else {
            continue;
        };
        if span <= 0.0 {
            continue;
        }
        notes.push(format!(
            "Streaming N={}: with the map ({} entries) full, {:.0} inserts per second were refused and {:.0} entries \
             per second evicted in the steady state ({full} and {} over {span:.0} s); `sockets_tracked` at the \
             `stats` lines {}. Agent CPU {} ms/s, tick p50 {} µs.",
            r["connections"],
            r["map_capacity"],
            full as f64 / span,
            r["map_evicted_steady_delta"].as_f64().unwrap_or(f64::NAN) / span,
            r["map_evicted_steady_delta"],
            spread(&r["sockets_tracked"], 0),
            fmt_opt(f(&r["agent_total_cpu_ms_per_s"]["median"]), 2),
            fmt_opt(f(&r["tick_us"]["p50"]), 0),
        ));
    }
    let wedge_line = |r: &&Value| -> Option<String> {
        let w = &r["wedges"];
        Some(format!(
            "N={}: {} of {}",
            r["connections"],
            w["stall_started_server_side"].as_u64()?,
            w["count"].as_u64()?
        ))
    };
    let inside: Vec<String> = fit.iter().filter_map(|r| wedge_line(r)).collect();
    let outside: Vec<String> = rs
        .iter()
        .filter(|r| !within_map(r))
        .filter_map(wedge_line)
        .collect();
    if !outside.is_empty() {
        notes.push(format!(
            "Wedges made while the map was full, reported: {}; the same wedges with room in the map, reported: {}.",
            outside.join("; "),
            if inside.is_empty() {
                "no run below the bound".to_string()
            } else {
                inside.join("; ")
            }
        ));
    }
    let contended: u64 = rs
        .iter()
        .filter_map(|r| r["contended_rounds"].as_u64())
        .sum();
    if contended > 0 {
        notes.push(format!(
            "Streaming: {contended} rounds are marked contended. The foreign-CPU meter counts all machine CPU not \
             charged to the agent, the helpers or the bench, which can include the streams' own packet processing in \
             softirq context; at large N that alone can pass the 15%-of-a-core mark."
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(n: u64, tracked: f64, pct: f64, per: (f64, f64, f64), full: u64) -> Value {
        json!({"connections": n, "map_capacity": 32768, "map_full_steady_delta": if n > 32768 { 500 } else { 0 },
               "sockets_tracked": {"median": tracked}, "sockets_tracked_max_all": tracked,
               "agent_pct_of_one_core_median": pct,
               "agent_us_per_tracked_socket_per_s": {"median": per.0, "min": per.1, "max": per.2},
               "stall_started_streaming": 0, "observed_s": 40.0, "longest_default_threshold_s": 30.0, "tick_ms": 1000,
               "map_full_total": full, "agent_exit_ok": true,
               "wedges": if n > 32768 { json!({"count": 5, "stall_started_server_side": 3, "watched_s": 36.0}) } else { json!({"count": 5, "stall_started_server_side": 5, "watched_s": 36.0}) }})
    }

    #[test]
    fn streaming_verdicts() {
        let r = json!({"streaming": {"results": [
            run(10000, 10000.0, 0.5, (0.5, 0.45, 0.55), 0),
            run(30000, 30000.0, 2.5, (0.8, 0.7, 0.85), 0),
            run(40000, 32768.0, 3.0, (0.9, 0.8, 1.0), 1234),
        ]}});
        let v = verdicts(&r);
        let got: Vec<(bool, &str)> = v.iter().map(|v| (v.met, v.what.as_str())).collect();
        assert_eq!(got.len(), 10, "{got:?}");
        assert!(got[0].0 && got[0].1.contains("N=10000 (10000 tracked"));
        assert!(got[1].0 && got[1].1.contains("false stalls"));
        assert!(got[2].0 && got[2].1 == "streaming N=10000: 5 real wedges still reported");
        assert!(!got[3].0 && got[3].1.contains("N=30000"));
        assert_eq!(v[3].miss_by.as_deref(), Some("0.500 percentage points"));
        assert!(got[7].0 && got[7].1.contains("map full counted"));
        assert!(!got[8].0 && got[8].1.contains("(map full): 5 real wedges"));
        assert_eq!(v[8].miss_by.as_deref(), Some("2 wedges not reported"));
        // 0.8/0.5 with spread 0.7/0.55..0.85/0.45 = 1.27..1.89: inside the band.
        assert!(got[9].0 && got[9].1.contains("linear"), "{:?}", v[9]);
        // A spread that crosses the band is unresolved, never met.
        let r2 = json!({"streaming": {"results": [
            run(10000, 10000.0, 0.5, (0.5, 0.2, 0.6), 0),
            run(30000, 30000.0, 1.0, (0.8, 0.7, 0.9), 0),
        ]}});
        let lin = verdicts(&r2).pop().unwrap();
        assert!(!lin.met && lin.unresolved(), "{lin:?}");
        // Watched less than the threshold: the false-stall check is unresolved.
        let mut short = run(2000, 2000.0, 0.1, (0.5, 0.5, 0.5), 0);
        short["observed_s"] = json!(10.0);
        let v3 = verdicts(&json!({"streaming": {"results": [short]}}));
        assert!(v3[1].unresolved(), "{:?}", v3[1]);
        let mut md = String::new();
        markdown(&r, &mut md);
        assert!(md.contains("| 40000 |"));
        assert!(!interpret(&r).is_empty());
    }

    #[test]
    fn the_trouble_hooks_arm_is_judged_on_the_same_targets() {
        let mut r = run(30000, 30000.0, 5.0, (1.7, 1.6, 1.8), 0);
        r["agent_total_cpu_ms_per_s"] = json!({"median": 50.0});
        r["trouble_agent"] = json!({
            "agent_pct_of_one_core_median": 0.3,
            "agent_total_cpu_ms_per_s": {"median": 3.0, "min": 2.5, "max": 4.0},
            "sockets_tracked": {"median": 12.0},
            "stall_started_streaming": 0,
            "observed_s": 60.0,
            "wedges": {"count": 5, "stall_started_server_side": 5,
                       "after_wedge_s": [31.0, 32.5, 33.0, 31.2, 30.9]},
        });
        let v = verdicts(&json!({"streaming": {"results": [r.clone()]}}));
        let t: Vec<&Verdict> = v
            .iter()
            .filter(|v| v.what.contains("--trouble-hooks"))
            .collect();
        assert_eq!(t.len(), 3, "{v:?}");
        assert!(t[0].met && t[0].what.contains("(12 tracked"), "{:?}", t[0]);
        assert!(t[0].measured.contains("50.00 ms/s, 17x"), "{:?}", t[0]);
        assert!(t[1].met && t[2].met, "{t:?}");
        assert!(
            t[2].measured.contains("the last 33 s after blocking"),
            "{:?}",
            t[2]
        );
        // A missed wedge and a false stall are misses.
        r["trouble_agent"]["wedges"]["stall_started_server_side"] = json!(4);
        r["trouble_agent"]["stall_started_streaming"] = json!(2);
        let v = verdicts(&json!({"streaming": {"results": [r.clone()]}}));
        let t: Vec<&Verdict> = v
            .iter()
            .filter(|v| v.what.contains("--trouble-hooks"))
            .collect();
        assert!(!t[1].met && !t[2].met, "{t:?}");
        let mut md = String::new();
        markdown(&json!({"streaming": {"results": [r]}}), &mut md);
        assert!(md.contains("`--trouble-hooks`"), "{md}");
        assert!(md.contains("4 of 5 (31.0, 32.5, 33.0, 31.2, 30.9)"), "{md}");
    }

    #[test]
    fn a_missed_streaming_target_says_why() {
        let mut r = run(30000, 30000.0, 6.0, (2.0, 1.9, 2.1), 0);
        r["agent_bpf_ms_per_s"] = json!({"median": 20.0});
        r["agent_process_cpu_ms_per_s"] = json!({"median": 40.0});
        // No anatomy: only the shortfall.
        let v = verdicts(&json!({"streaming": {"results": [r.clone()]}}));
        assert_eq!(v[0].miss_by.as_deref(), Some("4.000 percentage points"));
        r["map_read_us"] = json!({"p50": 10000.0});
        r["ack_cost"] = json!({
            "reach": {"ns_per_run": 250.0, "runs_per_s": 40000.0},
            "lookup": {"ns_per_run": 550.0, "runs_per_s": 40000.0}});
        let s = miss_cause(&r).expect("cause");
        // Reach 250 ns x 40k/s = 10 ms/s, lookup (550-250) ns x 40k/s = 12 ms/s, read
        // 10 ms per 1 s tick, rest 40-10 = 30 ms/s = 1 µs per socket; floor 20 ms/s = 2 %.
        assert!(s.contains("BPF 20.0 ms/s (measured alone on the same streams: the ACK hook's steps before its map lookup 10.0 ms/s, the lookup ~12.0 ms/s more)"), "{s}");
        assert!(
            s.contains(
                "map read 10.0 ms/s, the rest of the tick 30.0 ms/s (1.00 µs per tracked socket)"
            ),
            "{s}"
        );
        assert!(
            s.contains("are 2.00 % of a core: on this machine a design that hooks"),
            "{s}"
        );
        r["map_read_us"] = json!({"p50": 5000.0});
        assert!(!miss_cause(&r).unwrap().contains("on this machine"));
        let v = verdicts(&json!({"streaming": {"results": [r]}}));
        assert!(v[0]
            .miss_by
            .as_deref()
            .unwrap()
            .starts_with("4.000 percentage points; why"));
    }

    #[test]
    fn trouble_only_hooks_sentence() {
        let mut r = run(30000, 30000.0, 6.0, (2.0, 1.9, 2.1), 0);
        assert_eq!(trouble_only(&r, 20.0), None);
        r["trouble_timer"] = json!({"window_s": 40.0, "runs_per_s": 40000.0, "ns_per_run": 50.0,
            "bpf_ms_per_s": 2.0, "write_timer_expiries_per_s": 300.0, "retransmit_pending_per_s": 0.0,
            "loss_probe_pending_per_s": 250.0, "probe0_pending_per_s": 1.2,
            "sockets_flagged_streams": 0, "sockets_flagged_wedges": 5});
        let s = trouble_only(&r, 20.0).expect("sentence");
        assert!(
            s.contains("40000 runs/s at 50 ns, 2.000 ms/s (10.00 % of the agent's BPF part)"),
            "{s}"
        );
        assert!(s.contains("expired 300.0 times/s: 0.00/s with a retransmission pending, 250.00/s with a loss probe pending, 1.20/s with a zero-window probe"), "{s}");
        assert!(
            s.contains("track: 0 of the 30000 streams, 5 of the 5 wedged ones."),
            "{s}"
        );
        assert!(!s.contains("After the agent stopped"), "{s}");
        r["trouble_timer_after_agent"] = json!({"window_s": 9.0, "write_timer_expiries_per_s": 0.0,
            "retransmit_pending_per_s": 0.0, "loss_probe_pending_per_s": 0.0, "sockets_flagged_new": 0});
        let s = trouble_only(&r, 20.0).unwrap();
        assert!(
            s.contains("After the agent stopped (the same streams"),
            "{s}"
        );
        assert!(s.contains("in turn) (9 s), the write timer expired 0.0 times/s (0.00/s with a retransmission pending, 0.00/s with a loss probe pending) and 0 sockets were flagged."), "{s}");
        assert!(!s.contains("On the streams alone"), "{s}");
        r["trouble_timer_before_agent"] = json!({"window_s": 10.0, "write_timer_expiries_per_s": 0.5,
            "retransmit_pending_per_s": 0.1, "loss_probe_pending_per_s": 0.4, "sockets_flagged_new": 3});
        let s = trouble_only(&r, 20.0).unwrap();
        assert!(s.contains("On the streams alone, before the agent started (10 s), the write timer expired 0.5 times/s (0.10/s with a retransmission pending, 0.40/s with a loss probe pending) and 3 sockets were flagged."), "{s}");
        assert!(!s.contains("sock_diag"), "{s}");
        r["diag_reads"] =
            json!({"sockets": 1000, "batches": 5, "cpu_us_per_socket": {"median": 4.0}});
        r["agent_total_cpu_ms_per_s"] = json!({"median": 60.0});
        let s = trouble_only(&r, 20.0).unwrap();
        // 2 ms/s + 5 flagged x 4 µs per 1 s tick = 2.02 ms/s.
        assert!(
            s.contains(
                "took 4.00 µs of CPU per socket (median of 5 batches of 1000 stream sockets)"
            ),
            "{s}"
        );
        assert!(s.contains("at most 2.02 ms/s (0.202 % of a core: the timer program and 5 reads per tick), against the agent's 60.00 ms/s"), "{s}");
    }

    #[test]
    fn ack_anatomy_from_the_cost_programs() {
        let mut r = run(30000, 30000.0, 5.0, (1.8, 1.7, 1.9), 0);
        // No `ack_cost` (an address-keyed kernel, an older results.json): no sentence.
        assert_eq!(ack_anatomy(&r), None);
        r["ack_cost"] = json!({
            "reach": {"ns_per_run": 200.0, "runs_per_s": 40000.0, "past_exit_per_s": 20000.0,
                      "found_per_s": 0.0, "created_per_s": 0.0, "entries": 0, "window_s": 2.0},
            "lookup": {"ns_per_run": 500.0, "runs_per_s": 40000.0, "past_exit_per_s": 20000.0,
                       "found_per_s": 19990.0, "created_per_s": 10.0, "entries": 30000, "window_s": 2.0}});
        r["bpf_programs"] = json!([{"name": "tcpstall_ack_tp", "ns_per_run": 520.0}]);
        let s = ack_anatomy(&r).expect("sentence");
        // (500 - 200) ns per run, half the runs past the early exit: 600 ns per lookup.
        assert!(s.contains("adds about 600 ns"), "{s}");
        assert!(
            s.contains("200 ns per run on 40000 runs/s, 50 % of them past"),
            "{s}"
        );
        assert!(s.contains("within a tenth of the lookup program"), "{s}");
        r["bpf_programs"] = json!([{"name": "tcpstall_ack_tp", "ns_per_run": 800.0}]);
        assert!(ack_anatomy(&r)
            .unwrap()
            .contains("(+300 ns per run against"));
        // Nothing past the early exit: nothing to divide by, no sentence.
        r["ack_cost"]["lookup"]["past_exit_per_s"] = json!(0.0);
        assert_eq!(ack_anatomy(&r), None);
    }
}
