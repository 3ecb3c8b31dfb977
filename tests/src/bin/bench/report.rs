//! Targets, verdicts and the markdown report, computed from the raw results JSON only (so
//! `bench report` can regenerate REPORT.md from a kept results.json).

use serde_json::{json, Value};
use std::fmt::Write;

/// One target of the benchmark issue and whether the run met it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What is checked.
    pub what: String,
    /// The target, in words.
    pub target: String,
    /// The measured value, in words.
    pub measured: String,
    /// Met or not.
    pub met: bool,
    /// For a miss: by how much, in words.
    pub miss_by: Option<String>,
}

impl Verdict {
    /// As JSON.
    pub fn json(&self) -> Value {
        json!({"what": self.what, "target": self.target, "measured": self.measured, "met": self.met,
               "unresolved": self.unresolved(), "miss_by": self.miss_by})
    }

    /// Not met because the run cannot decide it (its `miss_by` says `unresolved: why`).
    pub fn unresolved(&self) -> bool {
        !self.met
            && self
                .miss_by
                .as_deref()
                .is_some_and(|m| m.starts_with("unresolved"))
    }
}

/// A distribution-free confidence interval of the median of `v` from order statistics:
/// `(low, high, confidence)` with the largest k such that P(Binomial(n, 1/2) < k) <= 2.5 %,
/// i.e. at least 95 % confidence. `None` below 6 values (no such rank).
pub fn median_ci(v: &[f64]) -> Option<(f64, f64, f64)> {
    let n = v.len();
    if n < 6 {
        return None;
    }
    let mut x = v.to_vec();
    x.sort_by(|a, b| a.total_cmp(b));
    // P(B <= j) for B ~ Binomial(n, 1/2).
    let cdf = |j: usize| -> f64 {
        let mut c = 1.0f64; // C(n, 0)
        let mut sum = 0.0;
        for i in 0..=j {
            if i > 0 {
                c = c * (n - i + 1) as f64 / i as f64;
            }
            sum += c;
        }
        sum / 2f64.powi(n as i32)
    };
    // r: the 1-based rank of the lower bound, the largest with P(B <= r - 1) <= 2.5 %.
    let mut r = 0;
    while r < n / 2 && cdf(r) <= 0.025 {
        r += 1;
    }
    if r == 0 {
        return None;
    }
    Some((x[r - 1], x[n - r], 1.0 - 2.0 * cdf(r - 1)))
}

/// A JSON number as f64.
pub fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// `v` with `prec` decimals, `n/a` when absent.
pub fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) => format!("{x:.prec$}"),
        None => "n/a".into(),
    }
}

/// Loss target (percent) for a write size.
pub fn hot_target_pct(size: u64) -> f64 {
    if size >= 64 * 1024 {
        1.0
    } else {
        3.0
    }
}

/// Compute every verdict present in `results`.
pub fn verdicts(results: &Value) -> Vec<Verdict> {
    let mut out = Vec::new();
    if let Some(sizes) = results["hot_path"]["sizes"].as_array() {
        for s in sizes {
            let size = s["write_bytes"].as_u64().unwrap_or(0);
            let target = hot_target_pct(size);
            // Throughput: a loss is 1 - on/off; CPU per byte: an overhead is on/off - 1. The
            // agent with its default hooks, then on --trouble-hooks (its own arm per pair).
            for (key, mode, what, sign) in [
                ("ratio_on_off", "", "throughput loss with the agent", -1.0),
                (
                    "cpu_ratio_on_off",
                    "",
                    "CPU per byte with the agent (added)",
                    1.0,
                ),
                (
                    "ratio_trouble_off",
                    ", with --trouble-hooks",
                    "throughput loss with the agent",
                    -1.0,
                ),
                (
                    "cpu_ratio_trouble_off",
                    ", with --trouble-hooks",
                    "CPU per byte with the agent (added)",
                    1.0,
                ),
            ] {
                let ratios: Vec<f64> = s["pairs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| f(&p[key]))
                    .collect();
                let Some(med) = f(&s[key]["median"]) else {
                    continue;
                };
                let pct = |r: f64| sign * (r - 1.0) * 100.0;
                let cost = pct(med);
                let ci = median_ci(&ratios);
                let ci_text = match ci {
                    Some((lo, hi, conf)) => {
                        let (a, b) = (pct(lo).min(pct(hi)), pct(lo).max(pct(hi)));
                        format!(
                            "{:.0}% interval of the median {a:.2}%..{b:.2}%",
                            conf * 100.0
                        )
                    }
                    None => "too few pairs for an interval of the median".into(),
                };
                let measured = format!(
                    "{cost:.2}% (median on/off {med:.4} over {} pairs, spread {:.4}..{:.4}; {ci_text})",
                    ratios.len(),
                    f(&s[key]["min"]).unwrap_or(f64::NAN),
                    f(&s[key]["max"]).unwrap_or(f64::NAN)
                );
                // Small writes: the target is on the median of the pairs (the issue's
                // definition). Bulk writes (target 1%): only an interval of the median that
                // lies wholly on one side of the target decides; otherwise unresolved.
                let (met, miss_by) = if size < 64 * 1024 {
                    (
                        cost <= target,
                        (cost > target).then(|| format!("{:.2} percentage points", cost - target)),
                    )
                } else {
                    match ci {
                        Some((lo, hi, _)) => {
                            let (a, b) = (pct(lo).min(pct(hi)), pct(lo).max(pct(hi)));
                            if b <= target {
                                (true, None)
                            } else if a > target {
                                (false, Some(format!("{:.2} percentage points (the whole interval is above the target)", a - target)))
                            } else {
                                (false, Some(format!(
                                    "unresolved: the interval of the median ({a:.2}%..{b:.2}%) straddles the {target}% target; this run cannot tell"
                                )))
                            }
                        }
                        None => (false, Some("unresolved: too few pairs".into())),
                    }
                };
                // A missed default-hooks A/B says what of it the run can attribute.
                let miss_by = match miss_by {
                    Some(m) if mode.is_empty() => Some(format!(
                        "{m}{}",
                        ab_miss_cause(s, key, sign).unwrap_or_default()
                    )),
                    m => m,
                };
                out.push(Verdict {
                    what: format!("hot path, {size} B writes{mode}: {what}"),
                    target: format!("<= {target}%"),
                    measured,
                    met,
                    miss_by,
                });
            }
            // The agent's own CPU per byte as the kernel accounts it: the programs' run time
            // (BPF run-time statistics, one extra run) over the sender+receiver CPU. Not an
            // A/B, so it resolves where the A/B ratios cannot (bulk writes on this VM).
            let c = &s["bpf_context"];
            if let Some(share) = f(&c["bpf_share_of_thread_cpu"]) {
                let pct = share * 100.0;
                out.push(Verdict {
                    what: format!(
                        "hot path, {size} B writes: the agent's in-kernel program time per byte"
                    ),
                    target: format!("<= {target}%"),
                    measured: format!(
                        "{pct:.2}% of the sender+receiver CPU ({:.1} runs per write at {:.0} ns, BPF run-time statistics)",
                        f(&c["bpf_runs_per_write"]).unwrap_or(f64::NAN),
                        f(&c["bpf_ns_per_run"]).unwrap_or(f64::NAN)
                    ),
                    met: pct <= target,
                    miss_by: (pct > target).then(|| {
                        format!(
                            "{:.2} percentage points{}",
                            pct - target,
                            hot_miss_cause(c, target).unwrap_or_default()
                        )
                    }),
                });
            }
            let ta = &c["trouble_agent"];
            if let Some(share) = f(&ta["share_of_thread_cpu"]) {
                let pct = share * 100.0;
                out.push(Verdict {
                    what: format!(
                        "hot path, {size} B writes, with --trouble-hooks: the agent's in-kernel program time per byte"
                    ),
                    target: format!("<= {target}%"),
                    measured: format!(
                        "{pct:.3}% of the sender+receiver CPU ({:.4} runs per write at {:.0} ns, BPF run-time statistics)",
                        f(&ta["runs_per_write"]).unwrap_or(f64::NAN),
                        f(&ta["ns_per_run"]).unwrap_or(f64::NAN)
                    ),
                    met: pct <= target,
                    miss_by: (pct > target)
                        .then(|| format!("{:.3} percentage points", pct - target)),
                });
            }
        }
    }
    if let Some(per_n) = results["scale"]["results"].as_array() {
        let max_n = per_n.iter().filter_map(|r| r["connections"].as_u64()).max();
        for r in per_n {
            let n = r["connections"].as_u64().unwrap_or(0);
            for m in r["modes"].as_array().into_iter().flatten() {
                let mode = m["mode"].as_str().unwrap_or("?");
                if let Some(pct) = f(&m["agent_pct_of_one_core_median"]) {
                    out.push(Verdict {
                        what: format!("scale N={n} {mode}: agent CPU (process + BPF)"),
                        target: "< 1% of one core".into(),
                        measured: format!("{pct:.3}%"),
                        met: pct < 1.0,
                        miss_by: (pct >= 1.0).then(|| {
                            format!(
                                "{:.3} percentage points{}",
                                pct - 1.0,
                                scale_miss_cause(m, &r["trouble_busy"], mode)
                            )
                        }),
                    });
                }
                if mode == "busy" {
                    let t = &r["trouble_busy"];
                    if let Some(pct) = f(&t["agent_pct_of_one_core_median"]) {
                        out.push(Verdict {
                            what: format!(
                                "scale N={n} busy with --trouble-hooks: agent CPU (process + BPF)"
                            ),
                            target: "< 1% of one core".into(),
                            measured: format!(
                                "{pct:.3}% (BPF {} ms/s, process {} ms/s)",
                                fmt_opt(f(&t["agent_bpf_ms_per_s"]["median"]), 3),
                                fmt_opt(f(&t["agent_process_cpu_ms_per_s"]["median"]), 3)
                            ),
                            met: pct < 1.0,
                            miss_by: (pct >= 1.0)
                                .then(|| format!("{:.3} percentage points", pct - 1.0)),
                        });
                    }
                }
                if Some(n) == max_n {
                    if let Some(ratio) = f(&m["ratio_ss_over_agent"]["median"]) {
                        out.push(Verdict {
                            what: format!(
                                "scale N={n} {mode}: CPU of `ss -tin` 1/s over agent CPU"
                            ),
                            target: ">= 50x".into(),
                            measured: format!(
                                "{ratio:.0}x (spread {:.0}..{:.0})",
                                f(&m["ratio_ss_over_agent"]["min"]).unwrap_or(f64::NAN),
                                f(&m["ratio_ss_over_agent"]["max"]).unwrap_or(f64::NAN)
                            ),
                            met: ratio >= 50.0,
                            miss_by: (ratio < 50.0).then(|| format!("{:.1}x short", 50.0 - ratio)),
                        });
                    }
                }
            }
        }
    }
    if let Some(per_w) = results["reaction"]["results"].as_array() {
        let tick_ms = results["reaction"]["tick_s"].as_f64().unwrap_or(1.0) * 1000.0;
        let max_w = per_w.iter().filter_map(|r| r["wedges"].as_u64()).max();
        for r in per_w {
            let w = r["wedges"].as_u64().unwrap_or(0);
            let matched = r["resets_matched"].as_u64().unwrap_or(0);
            let aborted = r["writers_econnaborted"].as_u64().unwrap_or(0);
            let ok = matched == w && aborted == w && r["resets_unrelated"].as_u64() == Some(0);
            out.push(Verdict {
                what: format!("reaction {w} wedges: none missed"),
                target: format!("{w} resets, {w} writers with ECONNABORTED, 0 other resets"),
                measured: format!(
                    "{matched} resets matched, {aborted} ECONNABORTED, {} other resets",
                    r["resets_unrelated"].as_u64().unwrap_or(0)
                ),
                met: ok,
                miss_by: (!ok).then(|| {
                    format!(
                        "{} wedges not reset, {} writers without ECONNABORTED",
                        w - matched.min(w),
                        w - aborted.min(w)
                    )
                }),
            });
            if Some(w) == max_w {
                if let Some(p99) = f(&r["threshold_to_econnaborted_ms"]["p99"]) {
                    let target = tick_ms + 100.0;
                    out.push(Verdict {
                        what: format!("reaction {w} wedges: threshold crossing -> reset (seen as ECONNABORTED), p99"),
                        target: format!("<= {target:.0} ms (one tick + 100 ms)"),
                        measured: format!("{p99:.0} ms"),
                        met: p99 <= target,
                        miss_by: (p99 > target).then(|| format!("{:.0} ms", p99 - target)),
                    });
                }
            }
        }
    }
    out.extend(crate::stream_report::verdicts(results));
    out
}

/// Why a scale mode's agent CPU is over 1 %: its BPF and process parts (runs per second
/// and time per run), and the agent on `--trouble-hooks` over the same busy connections
/// (`trouble`), when measured.
fn scale_miss_cause(m: &Value, trouble: &Value, mode: &str) -> String {
    let mut s = format!(
        "; why, by this run's own measurements: BPF {} ms/s ({} program runs/s at {} ns), process {} ms/s",
        fmt_opt(f(&m["agent_bpf_ms_per_s"]["median"]), 3),
        fmt_opt(f(&m["agent_bpf_runs_per_s"]["median"]), 0),
        fmt_opt(f(&m["agent_bpf_ns_per_run_median"]), 0),
        fmt_opt(f(&m["agent_process_cpu_ms_per_s"]["median"]), 3),
    );
    if mode == "busy" {
        if let Some(t) = f(&trouble["agent_pct_of_one_core_median"]) {
            s.push_str(&format!(
                "; the per-packet hooks fire on the busy connections' traffic; with --trouble-hooks on the same connections: {t:.3}%"
            ));
        }
    }
    s
}

/// Why the agent's in-kernel time per byte (`bpf_context`) is over `target` %, from the same
/// run's attach floor (empty programs at the same tracepoints) and trouble-only floor: how much
/// of it is a hook firing there at all, how much the agent's logic, and what the hooks of a
/// design that fires only on trouble cost at that write size. `None` without a floor.
fn hot_miss_cause(c: &Value, target: f64) -> Option<String> {
    let share = f(&c["bpf_share_of_thread_cpu"])? * 100.0;
    let fl = &c["floor"];
    let floor = f(&fl["share_of_thread_cpu"])? * 100.0;
    let (runs, ns) = (f(&c["bpf_runs_per_write"])?, f(&c["bpf_ns_per_run"])?);
    let floor_ns = f(&fl["ns_per_run"])?;
    let logic = (share - floor).max(0.0);
    let mut s = format!(
        "; why, by this run's own measurements: of the {share:.2}%, {floor:.2}% is the attach floor \
         (empty programs at the same tracepoints, {:.1} runs per write at {floor_ns:.0} ns: a hook \
         firing there at all) and {logic:.2}% the agent's logic ({:.0} ns per run more than an empty \
         program, {runs:.1} runs per write)",
        f(&fl["runs_per_write"]).unwrap_or(f64::NAN),
        ns - floor_ns,
    );
    if floor >= target {
        s.push_str("; the floor alone is at or over the target, so no logic at those tracepoints can meet it");
    } else if logic > 0.0 {
        s.push_str(&format!(
            "; the logic would have to cost {:.0}% less per run to meet it",
            ((share - target) / logic * 100.0).min(100.0)
        ));
    }
    if let Some(t) = f(&c["trouble_floor"]["share_of_thread_cpu"]) {
        s.push_str(&format!(
            "; the hooks of a design that fires only on trouble ({}) cost {:.3}% at this size",
            tracepoint_names(&c["trouble_floor"]["tracepoints"]).join(", "),
            t * 100.0
        ));
    }
    Some(s)
}

/// Why a default-hooks A/B row (`key`: `ratio_on_off` or `cpu_ratio_on_off`, `sign` as in
/// [`verdicts`]) missed, as far as this run measured: the programs' own share of the CPU per
/// byte (BPF run-time statistics: the most of the difference their run time can be), and what
/// the same pairs' other arms measured, the agent on `--trouble-hooks` (almost no program
/// runs per write) and the empty programs at the agent's tracepoints. `None` when the run has
/// neither.
fn ab_miss_cause(s: &Value, key: &str, sign: f64) -> Option<String> {
    let pct = |r: f64| sign * (r - 1.0) * 100.0;
    let c = &s["bpf_context"];
    let share = f(&c["bpf_share_of_thread_cpu"]).map(|x| x * 100.0);
    let trouble_key = key.replace("on_off", "trouble_off");
    let trouble = f(&s[trouble_key.as_str()]["median"]).map(pct);
    let floor_key = key.replace("on_off", "floor_off");
    let floor = f(&s["floor_arm"][floor_key.as_str()]["median"]).map(pct);
    if share.is_none() && trouble.is_none() {
        return None;
    }
    let mut out = String::from("; what this run measured of it:");
    let mut parts = Vec::new();
    if let Some(p) = share {
        parts.push(format!(
            " the agent's programs took {p:.2}% of the sender+receiver CPU per byte (BPF run-time \
             statistics, {:.1} runs per write), the most of the difference their run time can be",
            f(&c["bpf_runs_per_write"]).unwrap_or(f64::NAN)
        ));
    }
    if let Some(t) = trouble {
        parts.push(format!(
            " in the same pairs the agent on --trouble-hooks ({} program runs per write) measured \
             {t:.2}%",
            fmt_opt(f(&c["trouble_agent"]["runs_per_write"]), 4)
        ));
    }
    if let Some(fl) = floor {
        parts.push(format!(
            " empty programs at the agent's tracepoints measured {fl:.2}%"
        ));
    }
    out.push_str(&parts.join(";"));
    Some(out)
}

fn mb(v: &Value) -> String {
    fmt_opt(f(v).map(|x| x / 1e6), 1)
}

/// A `{median, min, max}` object as `median (min..max)`.
pub fn spread(v: &Value, prec: usize) -> String {
    format!(
        "{} ({}..{})",
        fmt_opt(f(&v["median"]), prec),
        fmt_opt(f(&v["min"]), prec),
        fmt_opt(f(&v["max"]), prec)
    )
}

fn lat(v: &Value, prec: usize) -> String {
    format!(
        "{} / {}",
        fmt_opt(f(&v["p50"]), prec),
        fmt_opt(f(&v["p99"]), prec)
    )
}

/// The full markdown report.
pub fn markdown(results: &Value) -> String {
    let mut s = String::new();
    let env = &results["environment"];
    let _ = writeln!(s, "# tcpstall benchmark report\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench` (`tests/src/bin/bench.rs`) from `bench/results.json`{}.\n",
        if results["quick"].as_bool() == Some(true) { " — **quick smoke run, not the full benchmark**" } else { "" }
    );
    let _ = writeln!(
        s,
        "Machine: {} CPU(s) `{}`, kernel {}, {} GiB RAM; agent `{}` (its tree at `{}`); bench tree `{}`; run at {} (took {} s).\n",
        env["cpus"],
        env["cpu_model"].as_str().unwrap_or("?"),
        env["kernel"].as_str().unwrap_or("?"),
        fmt_opt(f(&env["mem_gib"]), 1),
        env["agent_bin"].as_str().unwrap_or("?"),
        env["agent_tree_rev"].as_str().unwrap_or("? (not recorded)"),
        env["git_rev"].as_str().unwrap_or("?"),
        env["started_utc"].as_str().unwrap_or("?"),
        fmt_opt(f(&results["elapsed_s"]), 0),
    );
    let _ = writeln!(
        s,
        "Method: every comparison is made inside one run, with the two arms interleaved; ratios are \
         computed per pair and summarised as **median (min..max)**. Absolute numbers are context \
         only: this is a 2-vCPU VM and loopback speed varies between runs.\n"
    );

    // Verdicts.
    let vs = verdicts(results);
    let _ = writeln!(
        s,
        "## Targets\n\n| check | target | measured | met |\n|---|---|---|---|"
    );
    for v in &vs {
        let met = if v.met {
            "yes".to_string()
        } else if v.unresolved() {
            v.miss_by.clone().unwrap_or_default()
        } else {
            format!("**NO** (missed by {})", v.miss_by.as_deref().unwrap_or("?"))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            v.what, v.target, v.measured, met
        );
    }
    for (k, e) in results["errors"].as_object().into_iter().flatten() {
        let _ = writeln!(
            s,
            "\n**Section `{k}` failed:** {}",
            e.as_str().unwrap_or("?")
        );
    }

    // Hot path.
    if let Some(sizes) = results["hot_path"]["sizes"].as_array() {
        let hp = &results["hot_path"];
        let _ = writeln!(
            s,
            "\n## 1. Hot path: loopback throughput, agent off vs on\n\n\
             One sender thread writes fixed-size chunks for {} s to a receiver thread draining with \
             256 KiB reads (Nagle on, default buffers), the two pinned to different CPUs (where they share one, loopback throughput changes run to run). Arm *on*: `tcpstall run` started for that \
             measurement (its default hooks, no per-write hook: see the attach floors below; 1 s tick), stopped after it. {} pairs per size; \
             the order alternates (off,on / on,off) to cancel drift; every pair has two more arms in the middle: *floor*, empty \
             programs at the agent's tracepoints, run-time statistics off (see the interpretation), and the agent on \
             `--trouble-hooks`, next to off (off,trouble,floor,on / on,floor,trouble,off). Before each arm the bench waits \
             (<= 10 s) for a quiet machine; a pair is *contended* if another tcpstall agent was \
             loaded or other processes used > 15% of a core during either arm (this VM is shared \
             with other jobs). *CPU per byte* = sender + receiver thread CPU time per byte moved \
             (includes the BPF programs, which run in those threads). *BPF runs per write* comes \
             from one extra agent-on run with `--bpf-stats` (context, not in the ratios).\n\n\
             | write size | off MB/s (median) | on MB/s (median) | throughput on/off, median (min..max) | loss | target | on/off, uncontended pairs only | CPU per byte on/off (min..max) | BPF runs per write, ns per run | --trouble-hooks: throughput/off, CPU per byte/off (min..max) |\n|---|---|---|---|---|---|---|---|---|---|",
            fmt_opt(f(&hp["duration_s"]), 1),
            hp["pairs"],
        );
        for sz in sizes {
            let size = sz["write_bytes"].as_u64().unwrap_or(0);
            let _ = writeln!(
                s,
                "| {} B | {} | {} | {} | {}% | <= {}% | {} ({} pairs) | {} | {:.1}, {:.0} | {}, {} |",
                size,
                mb(&sz["off_bytes_per_s_median"]),
                mb(&sz["on_bytes_per_s_median"]),
                spread(&sz["ratio_on_off"], 4),
                fmt_opt(f(&sz["loss_pct_median"]), 2),
                hot_target_pct(size),
                spread(&sz["ratio_on_off_uncontended"], 4),
                sz["uncontended_pairs"],
                spread(&sz["cpu_ratio_on_off"], 4),
                f(&sz["bpf_context"]["bpf_runs_per_write"]).unwrap_or(f64::NAN),
                f(&sz["bpf_context"]["bpf_ns_per_run"]).unwrap_or(f64::NAN),
                spread(&sz["ratio_trouble_off"], 4),
                spread(&sz["cpu_ratio_trouble_off"], 4),
            );
        }
        let _ = writeln!(s, "\nPer pair (MB/s off / on, ratio):\n");
        for sz in sizes {
            let pairs: Vec<String> = sz["pairs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{} / {} ({}){}",
                        mb(&p["off_bytes_per_s"]),
                        mb(&p["on_bytes_per_s"]),
                        fmt_opt(f(&p["ratio_on_off"]), 4),
                        if p["contended"].as_bool() == Some(true) {
                            " *contended*"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            let _ = writeln!(s, "- {} B: {}", sz["write_bytes"], pairs.join("; "));
        }
    }

    // Scale.
    if let Some(per_n) = results["scale"]["results"].as_array() {
        let sc = &results["scale"];
        let _ = writeln!(
            s,
            "\n## 2. Scale: CPU to watch N established connections\n\n\
             N loopback connections (both ends on this node, so 2N sockets) held by helper processes \
             (<= {} connections each: the fd limit is 20,000). *idle*: no traffic. *busy*: 10% of \
             the connections get a 64-byte write once per second, read by the peer. For each N and \
             mode, {} rounds of: agent window ({} s: agent process CPU from schedstat + in-kernel \
             BPF run time of its programs from fdinfo, with `--bpf-stats`), then one `ss -tin` \
             (its rusage via wait4), then one in-app poller sweep (getsockopt(TCP_INFO) + \
             ioctl(SIOCOUTQ) over the N server-side sockets, thread CPU time). At 1 Hz, one ss run \
             or one sweep = CPU per second. Ratio = that / agent CPU per second, per round. \
             Before each round the bench waits (<= 5 s) for other processes to be quiet.\n\n\
             | N | mode | agent process ms/s | agent BPF ms/s | agent total ms/s | % of a core | ss -tin ms/run | poller ms/sweep | ss / agent | poller / agent |\n|---|---|---|---|---|---|---|---|---|---|",
            sc["per_holder"], sc["rounds"], fmt_opt(f(&sc["agent_window_s"]), 0)
        );
        for r in per_n {
            for m in r["modes"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {}x | {}x |",
                    r["connections"],
                    m["mode"].as_str().unwrap_or("?"),
                    spread(&m["agent_process_cpu_ms_per_s"], 3),
                    spread(&m["agent_bpf_ms_per_s"], 3),
                    fmt_opt(f(&m["agent_total_cpu_ms_per_s"]["median"]), 3),
                    fmt_opt(f(&m["agent_pct_of_one_core_median"]), 3),
                    fmt_opt(f(&m["ss_cpu_ms"]["median"]), 1),
                    fmt_opt(f(&m["poller_cpu_ms"]["median"]), 1),
                    spread(&m["ratio_ss_over_agent"], 0),
                    spread(&m["ratio_poller_over_agent"], 0),
                );
            }
        }
        let _ = writeln!(
            s,
            "\nMemory and context (agent `utime+stime` from /proc/PID/stat over the whole mode window, \
             10 ms resolution; BPF maps = memlock of every map the agent holds):\n\n\
             | N | mode | stat utime+stime ms/s (window s) | BPF runs/s | ns per BPF run | agent RSS MiB | BPF maps MiB | sockets tracked | sweep µs | setup s | contended rounds |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in per_n {
            for m in r["modes"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r["connections"],
                    m["mode"].as_str().unwrap_or("?"),
                    fmt_opt(f(&m["agent_stat_utime_stime_ms_per_s"]), 2),
                    fmt_opt(f(&m["agent_stat_window_s"]), 0),
                    fmt_opt(f(&m["agent_bpf_runs_per_s"]["median"]), 0),
                    fmt_opt(f(&m["agent_bpf_ns_per_run_median"]), 0),
                    fmt_opt(f(&m["agent_rss_kib"]).map(|k| k / 1024.0), 1),
                    fmt_opt(f(&m["bpf_maps_memlock_bytes"]).map(|b| b / 1048576.0), 2),
                    m["agent_sockets_tracked_last"],
                    m["agent_sweep_us_last"],
                    fmt_opt(f(&r["setup_s"]), 1),
                    m["contended_rounds"],
                );
            }
        }
        if let Some(maps) = per_n
            .last()
            .and_then(|r| r["modes"][0]["bpf_maps"].as_array())
        {
            let list: Vec<String> = maps
                .iter()
                .map(|m| {
                    format!(
                        "{} {} KiB",
                        m["name"].as_str().unwrap_or("?"),
                        fmt_opt(f(&m["memlock_bytes"]).map(|b| b / 1024.0), 0)
                    )
                })
                .collect();
            let _ = writeln!(s, "\nBPF maps (memlock): {}.", list.join(", "));
        }
    }

    // Reaction.
    if let Some(per_w) = results["reaction"]["results"].as_array() {
        let re = &results["reaction"];
        let _ = writeln!(
            s,
            "\n## 3. Reaction: simultaneous wedges, threshold {} s, tick {} s\n\n\
             Each wedge: a loopback connection whose client never reads (SO_RCVBUF 8 KiB) and whose \
             server-side writer thread (SO_SNDBUF 8 KiB) fills the socket and then blocks in send(). \
             All writers start together. The agent resets all sockets it decided on in one tick as \
             a netlink batch and prints the `socket_reset` events after the batch, so an event's \
             `ts` is not its socket's reset moment; the moment the blocked send() returns \
             ECONNABORTED is (SOCK_DESTROY wakes it within ~0.5 ms). Columns: *threshold -> \
             decision* = `stalled_for_ms - evidence.effective_threshold_ms` of the `socket_reset` \
             event (the agent's clock); *threshold -> ECONNABORTED* = the writer's clock when \
             send() failed minus the crossing time (the socket's `stall_started` `ts` minus its \
             `stalled_for_ms - effective_threshold_ms`; `ts` has 1 ms resolution) — the end-to-end \
             reaction and the number the target is checked on; *decision -> ECONNABORTED* = the \
             difference (batch of SOCK_DESTROY + wake-up). All times ms, p50 / p99.\n\n\
             | wedges | resets matched | ECONNABORTED | threshold -> decision | threshold -> ECONNABORTED | decision -> ECONNABORTED | first..last ECONNABORTED ms | reported reset latency µs (batch mean) | other resets / failed / skipped |\n|---|---|---|---|---|---|---|---|---|",
            re["threshold_s"], re["tick_s"]
        );
        for r in per_w {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
                r["wedges"],
                r["resets_matched"],
                r["writers_econnaborted"],
                lat(&r["threshold_to_decision_ms"], 0),
                lat(&r["threshold_to_econnaborted_ms"], 0),
                lat(&r["decision_to_econnaborted_ms"], 1),
                fmt_opt(f(&r["econnaborted_span_ms"]), 0),
                lat(&r["reset_latency_us_reported"], 0),
                r["resets_unrelated"],
                r["reset_failed_events"],
                r["reset_skipped_events"],
            );
        }
    }

    crate::stream_report::markdown(results, &mut s);
    crate::scan_report::markdown(results, &mut s);

    if let Some(notes) = results["interpretation"].as_array() {
        let _ = writeln!(s, "\n## Interpretation\n");
        for n in notes {
            let _ = writeln!(s, "- {}", n.as_str().unwrap_or(""));
        }
    }
    s
}

/// Interpretation notes derived from the numbers (what they mean, and for each missed target
/// why and which design change would close it).
pub fn interpret(results: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    let vs = verdicts(results);
    if vs.is_empty() && results["scan"].is_null() {
        notes.push("No section produced results; see the errors above.".into());
    }
    let missed = |prefix: &str| vs.iter().any(|v| !v.met && v.what.starts_with(prefix));

    // Hot path.
    if let Some(sizes) = results["hot_path"]["sizes"].as_array() {
        let contended: u64 = sizes
            .iter()
            .map(|s| {
                s["pairs"].as_array().map_or(0, |p| {
                    p.iter()
                        .filter(|p| p["contended"].as_bool() == Some(true))
                        .count() as u64
                })
            })
            .sum();
        let total: u64 = sizes
            .iter()
            .map(|s| s["pairs"].as_array().map_or(0, |p| p.len() as u64))
            .sum();
        if contended > 0 {
            notes.push(format!(
                "Hot path: {contended} of {total} pairs were contended (another tcpstall agent loaded, or other processes above 15% of a core during an arm)."
            ));
        }
        for sz in sizes {
            let size = sz["write_bytes"].as_u64().unwrap_or(0);
            let c = &sz["bpf_context"];
            let (Some(runs), Some(ns_run), Some(share)) = (
                f(&c["bpf_runs_per_write"]),
                f(&c["bpf_ns_per_run"]),
                f(&c["bpf_share_of_thread_cpu"]),
            ) else {
                continue;
            };
            notes.push(format!(
                "Hot path, {size} B writes: the agent's programs ran {runs:.1} times per write at {ns_run:.0} ns per run \
                 ({:.0} ns per write), {:.1}% of the sender+receiver CPU per byte. For a CPU-bound loopback stream that share is the \
                 expected throughput loss; measured: throughput median {:.2}% loss, CPU per byte median {:+.2}%.",
                runs * ns_run,
                share * 100.0,
                f(&sz["loss_pct_median"]).unwrap_or(f64::NAN),
                f(&sz["cpu_overhead_pct_median"]).unwrap_or(f64::NAN),
            ));
            let fl = &c["floor"];
            if let (Some(f_runs), Some(f_ns), Some(f_share)) = (
                f(&fl["runs_per_write"]),
                f(&fl["ns_per_run"]),
                f(&fl["share_of_thread_cpu"]),
            ) {
                let tps = tracepoint_names(&fl["tracepoints"]);
                notes.push(format!(
                    "Hot path, {size} B writes, attach floor: empty programs (`r0 = 0; exit`) at the same tracepoints ({}) \
                     ran {f_runs:.1} times per write at {f_ns:.0} ns per run ({:.0} ns per write), {:.1}% of the sender+receiver \
                     CPU per byte: the cost of a hook firing there at all, before any logic. The agent's programs cost {:.0} ns per \
                     run more than that.",
                    tps.join(", "),
                    f_runs * f_ns,
                    f_share * 100.0,
                    ns_run - f_ns,
                ));
            }
            // The floor as a third arm of every pair (statistics off): the A/B cost of a hook
            // firing at the agent's tracepoints at all, against the agent's.
            let fa = &sz["floor_arm"];
            if let (Some(tf), Some(cf), Some(to), Some(co)) = (
                f(&fa["ratio_floor_off"]["median"]),
                f(&fa["cpu_ratio_floor_off"]["median"]),
                f(&fa["ratio_on_floor"]["median"]),
                f(&fa["cpu_ratio_on_floor"]["median"]),
            ) {
                notes.push(format!(
                    "Hot path, {size} B writes, floor arm: the same empty programs, attached with run-time statistics off, \
                     as a third arm of every pair (between off and on), median (min..max): throughput floor/off {}, CPU per \
                     byte floor/off {}: a hook firing there at all changes CPU per byte by {:+.2}% (throughput {:+.2}%) in this \
                     A/B; the agent against the floor: throughput on/floor {}, CPU per byte on/floor {}: {:+.2}% CPU per byte \
                     (throughput {:+.2}%) for the agent's own work.",
                    spread(&fa["ratio_floor_off"], 4),
                    spread(&fa["cpu_ratio_floor_off"], 4),
                    (cf - 1.0) * 100.0,
                    (tf - 1.0) * 100.0,
                    spread(&fa["ratio_on_floor"], 4),
                    spread(&fa["cpu_ratio_on_floor"], 4),
                    (co - 1.0) * 100.0,
                    (to - 1.0) * 100.0,
                ));
            }
            let nf = &c["per_write_floor"];
            if let (Some(n_runs), Some(n_ns), Some(n_share)) = (
                f(&nf["runs_per_write"]),
                f(&nf["ns_per_run"]),
                f(&nf["share_of_thread_cpu"]),
            ) {
                let tps = tracepoint_names(&nf["tracepoints"]);
                notes.push(format!(
                    "Hot path, {size} B writes, attach floor with the per-write hook added (what `--per-write-hooks` \
                     attaches on this kernel): empty programs at {} ran {n_runs:.2} times per write at {n_ns:.0} ns per run, \
                     {:.1}% of the sender+receiver CPU per byte{}.",
                    tps.join(", "),
                    n_share * 100.0,
                    match f(&fl["share_of_thread_cpu"]) {
                        Some(base) => format!(
                            ", against {:.1}% without it: the per-write hook alone costs {:.1} percentage points",
                            base * 100.0,
                            (n_share - base) * 100.0
                        ),
                        None => String::new(),
                    },
                ));
            }
            let tf = &c["trouble_floor"];
            if let (Some(t_runs), Some(t_share)) =
                (f(&tf["runs_per_write"]), f(&tf["share_of_thread_cpu"]))
            {
                let tps = tracepoint_names(&tf["tracepoints"]);
                notes.push(format!(
                    "Hot path, {size} B writes, trouble-only hooks: empty programs at only the tracepoints a design with hooks \
                     that fire on trouble needs ({}: a retransmission, a state change, a timer's expiry) ran {t_runs:.4} times per write, {:.3}% of the sender+receiver CPU per byte{}.",
                    tps.join(", "),
                    t_share * 100.0,
                    if t_runs < 0.001 && t_share < 0.0001 {
                        ": under one run per thousand writes and under 0.01% of the CPU, so a \
                         design that keeps only those hooks adds nothing measurable to the write path"
                    } else {
                        ""
                    },
                ));
            }
        }
    }

    // Scale.
    if let Some(per_n) = results["scale"]["results"].as_array() {
        let get = |n: &Value, mode: &str, key: &str| -> Option<f64> {
            n["modes"]
                .as_array()?
                .iter()
                .find(|m| m["mode"] == mode)
                .and_then(|m| f(&m[key]).or_else(|| f(&m[key]["median"])))
        };
        let idle: Vec<String> = per_n
            .iter()
            .map(|n| {
                format!(
                    "{} ms/s at N={}",
                    fmt_opt(get(n, "idle", "agent_total_cpu_ms_per_s"), 3),
                    n["connections"]
                )
            })
            .collect();
        notes.push(format!(
            "Scale, idle: agent CPU does not grow with N ({}): it only tracks sockets with data queued, so idle connections never \
             enter its map and a tick walks an (almost) empty map. `ss -tin` and the poller touch every socket every second, so their \
             cost grows linearly with N (ss sees 2N sockets on a loopback node).",
            idle.join(", ")
        ));
        if let Some(big) = per_n.last() {
            let n = big["connections"].as_u64().unwrap_or(0);
            if let (Some(bpf), Some(runs), Some(nsr)) = (
                get(big, "busy", "agent_bpf_ms_per_s"),
                get(big, "busy", "agent_bpf_runs_per_s"),
                get(big, "busy", "agent_bpf_ns_per_run_median"),
            ) {
                notes.push(format!(
                    "Scale, busy at N={n}: the busy 10% send {} messages/s; the agent's in-kernel cost is {bpf:.3} ms/s \
                     ({runs:.0} program runs/s at {nsr:.0} ns) — proportional to TCP events, not to connections. Its userspace \
                     cost stays flat because a 64-byte message is acked before the next tick, so the socket leaves the map again.",
                    n / 10
                ));
            }
            if let (Some(ss), Some(poll)) = (
                get(big, "busy", "ss_cpu_ms"),
                get(big, "busy", "poller_cpu_ms"),
            ) {
                notes.push(format!(
                    "At N={n}, `ss -tin` once per second costs {ss:.0} ms of CPU per second ({:.0}% of a core) and the in-app \
                     TCP_INFO/SIOCOUTQ poller {poll:.0} ms per sweep ({:.1}% of a core), against the agent's total shown above.",
                    ss / 10.0,
                    poll / 10.0
                ));
            }
            if let Some(mem) = get(big, "idle", "bpf_maps_memlock_bytes") {
                notes.push(format!(
                    "Memory: the SOCKS hash map is preallocated for --max-sockets (default 32,768) entries, so BPF map memory \
                     ({:.1} MiB) and the agent's RSS are the same at every N; they scale with the number of sockets *with data \
                     queued* the map must hold, not with connections.",
                    mem / 1048576.0
                ));
            }
        }
    }

    // Reaction.
    if let Some(per_w) = results["reaction"]["results"].as_array() {
        notes.push(
            "Reaction: the agent decides at ticks, so the time from threshold crossing to the decision is the phase of the next \
             tick: uniform in [0, tick) for wedges that start at random times, and nearly the same for wedges that start together \
             (p50 close to p99 within one run). The writer's own last successful send is an earlier reference than the agent's \
             last ACK progress (on loopback the final ACKs and window updates trail the last accepted write), so it is kept in \
             results.json as context only."
                .into(),
        );
        if let Some(big) = per_w
            .iter()
            .max_by_key(|r| r["wedges"].as_u64().unwrap_or(0))
        {
            let w = big["wedges"].as_u64().unwrap_or(0);
            notes.push(format!(
                "With {w} simultaneous wedges, decision -> ECONNABORTED is {} ms (p50) / {} ms (p99): the SOCK_DESTROY batch \
                 ({} µs per socket as reported) plus waking {w} blocked writer threads on 2 vCPUs; all ECONNABORTEDs arrived within \
                 {} ms of each other.",
                fmt_opt(f(&big["decision_to_econnaborted_ms"]["p50"]), 0),
                fmt_opt(f(&big["decision_to_econnaborted_ms"]["p99"]), 0),
                fmt_opt(f(&big["reset_latency_us_reported"]["p50"]), 0),
                fmt_opt(f(&big["econnaborted_span_ms"]), 0),
            ));
            if missed(&format!("reaction {w} wedges: threshold")) {
                notes.push(
                    "The reaction target was missed: the tick phase already uses up to a whole tick and the batch adds to it. \
                     Design change: arm a timer for the earliest predicted crossing (last progress + threshold) instead of \
                     waiting for the next tick, which removes the tick phase; split very large batches across CPUs."
                        .into(),
                );
            }
        }
    }

    notes.extend(crate::stream_report::interpret(results));
    notes.extend(crate::scan_report::interpret(results));
    for v in vs.iter().filter(|v| !v.met && !v.unresolved()) {
        notes.push(format!(
            "Missed: {} — {} against {} (by {}).",
            v.what,
            v.measured,
            v.target,
            v.miss_by.as_deref().unwrap_or("?")
        ));
    }
    notes
}

/// README markers around the generated benchmark table.
pub const README_START: &str =
    "<!-- bench-table: generated by `cargo xtask bench` from bench/results.json -->";
/// End marker.
pub const README_END: &str = "<!-- /bench-table -->";

/// The README benchmark table: every verdict of the run, as REPORT.md's target table.
pub fn readme_table(results: &Value) -> String {
    let env = &results["environment"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Run of {} on {} CPU(s), kernel {}, agent tree `{}`.\n",
        env["started_utc"].as_str().unwrap_or("?"),
        env["cpus"],
        env["kernel"].as_str().unwrap_or("?"),
        env["agent_tree_rev"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(s, "| check | measured | target | met |");
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    for v in verdicts(results) {
        let met = if v.met {
            "yes".to_string()
        } else if v.unresolved() {
            "unresolved".to_string()
        } else {
            format!("**no** (by {})", v.miss_by.as_deref().unwrap_or("?"))
        };
        let _ = writeln!(s, "| {} | {} | {} | {met} |", v.what, v.measured, v.target);
    }
    s
}

/// `readme` with the text between [`README_START`] and [`README_END`] replaced by `table`.
pub fn splice_readme(readme: &str, table: &str) -> anyhow::Result<String> {
    let start = readme
        .find(README_START)
        .ok_or_else(|| anyhow::anyhow!("README.md has no line {README_START:?}; add it (and {README_END:?}) where the table goes"))?;
    let body = start + README_START.len();
    let end = body
        + readme[body..].find(README_END).ok_or_else(|| {
            anyhow::anyhow!("README.md has {README_START:?} but no {README_END:?} after it")
        })?;
    Ok(format!("{}\n{table}{}", &readme[..body], &readme[end..]))
}

/// The tracepoint names of a floor measurement (its `tracepoints` array).
fn tracepoint_names(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_table_is_spliced_between_the_markers() {
        let readme = format!("intro\n{README_START}\nold table\n{README_END}\nrest\n");
        let out = splice_readme(&readme, "| new |\n").unwrap();
        assert_eq!(
            out,
            format!("intro\n{README_START}\n| new |\n{README_END}\nrest\n")
        );
        assert!(splice_readme("no markers", "x").is_err());
        let r = json!({"scale": {"results": [{"connections": 1000, "modes": [
            {"mode": "idle", "agent_pct_of_one_core_median": 0.01}]}]}});
        let t = readme_table(&r);
        assert!(t.contains("| scale N=1000 idle: agent CPU (process + BPF) | 0.010% | < 1% of one core | yes |"), "{t}");
    }

    #[test]
    fn median_interval_from_order_statistics() {
        assert_eq!(median_ci(&[1.0, 2.0, 3.0, 4.0, 5.0]), None);
        let (lo, hi, conf) = median_ci(&[7.0, 1.0, 6.0, 2.0, 5.0, 3.0, 4.0]).unwrap();
        assert_eq!((lo, hi), (1.0, 7.0));
        assert!((conf - (1.0 - 2.0 / 128.0)).abs() < 1e-12, "{conf}");
        let nine: Vec<f64> = (1..=9).map(f64::from).collect();
        let (lo, hi, conf) = median_ci(&nine).unwrap();
        assert_eq!((lo, hi), (2.0, 8.0));
        assert!((conf - (1.0 - 2.0 * 10.0 / 512.0)).abs() < 1e-12, "{conf}");
    }

    #[test]
    fn a_bulk_comparison_whose_interval_straddles_the_target_is_unresolved() {
        let pairs: Vec<Value> = [0.97, 0.99, 1.0, 1.01, 0.98, 1.02, 0.995]
            .iter()
            .map(|r| json!({"ratio_on_off": r, "cpu_ratio_on_off": 1.0 + (1.0 - r) / 2.0 + 0.03}))
            .collect();
        let r = json!({"hot_path": {"sizes": [{
            "write_bytes": 65536, "pairs": pairs,
            "ratio_on_off": {"median": 0.995, "min": 0.97, "max": 1.02},
            "cpu_ratio_on_off": {"median": 1.0325, "min": 1.02, "max": 1.045},
        }]}});
        let v = verdicts(&r);
        assert_eq!(v.len(), 2);
        assert!(!v[0].met && v[0].unresolved(), "{v:?}");
        // CPU per byte: every pair shows more than 1 % added: a miss, resolved.
        assert!(!v[1].met && !v[1].unresolved(), "{v:?}");
        assert!(
            v[1].miss_by.as_deref().unwrap().contains("whole interval"),
            "{v:?}"
        );
    }

    #[test]
    fn the_trouble_hooks_arm_gets_its_own_ab_rows_on_the_same_targets() {
        let pairs: Vec<Value> = [0.99, 0.985, 1.0, 0.995, 1.005, 0.99, 0.98]
            .iter()
            .map(|r| {
                json!({"ratio_on_off": 0.9, "cpu_ratio_on_off": 1.1,
                       "ratio_trouble_off": r, "cpu_ratio_trouble_off": 2.0 - r})
            })
            .collect();
        let r = json!({"hot_path": {"sizes": [{
            "write_bytes": 100, "pairs": pairs,
            "ratio_on_off": {"median": 0.9, "min": 0.9, "max": 0.9},
            "cpu_ratio_on_off": {"median": 1.1, "min": 1.1, "max": 1.1},
            "ratio_trouble_off": {"median": 0.99, "min": 0.98, "max": 1.005},
            "cpu_ratio_trouble_off": {"median": 1.01, "min": 0.995, "max": 1.02},
        }]}});
        let v = verdicts(&r);
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(!v[0].met && !v[1].met, "{v:?}");
        assert_eq!(
            v[2].what,
            "hot path, 100 B writes, with --trouble-hooks: throughput loss with the agent"
        );
        assert!(
            v[2].met
                && v[2]
                    .measured
                    .starts_with("1.00% (median on/off 0.9900 over 7 pairs")
        );
        assert_eq!(
            v[3].what,
            "hot path, 100 B writes, with --trouble-hooks: CPU per byte with the agent (added)"
        );
        assert!(v[3].met, "{:?}", v[3]);
        // The default arm's miss says what the run measured of it.
        let why = v[0].miss_by.as_deref().unwrap();
        assert!(
            why.starts_with("7.00 percentage points; what this run measured of it:"),
            "{why}"
        );
        assert!(
            why.contains("on --trouble-hooks (n/a program runs per write) measured 1.00%"),
            "{why}"
        );
        let mut r2 = r.clone();
        r2["hot_path"]["sizes"][0]["bpf_context"] = json!({"bpf_share_of_thread_cpu": 0.0072,
            "bpf_runs_per_write": 2.1, "trouble_agent": {"runs_per_write": 0.0016}});
        r2["hot_path"]["sizes"][0]["floor_arm"] = json!({"cpu_ratio_floor_off": {"median": 1.02}});
        let v2 = verdicts(&r2);
        let why = v2[1].miss_by.as_deref().unwrap();
        assert!(
            why.contains("programs took 0.72% of the sender+receiver CPU per byte"),
            "{why}"
        );
        assert!(
            why.contains("(0.0016 program runs per write) measured 1.00%"),
            "{why}"
        );
        assert!(
            why.contains("; empty programs at the agent's tracepoints measured 2.00%"),
            "{why}"
        );
        // Over the 3 % target on the median: missed, by how much.
        let mut r = r;
        r["hot_path"]["sizes"][0]["ratio_trouble_off"]["median"] = json!(0.96);
        let v = verdicts(&r);
        assert!(!v[2].met);
        assert_eq!(v[2].miss_by.as_deref(), Some("1.00 percentage points"));
    }

    #[test]
    fn a_missed_in_kernel_share_says_what_is_floor_and_what_is_logic() {
        let ctx = |share: f64, floor: f64| {
            json!({"hot_path": {"sizes": [{"write_bytes": 65536, "bpf_context": {
                "bpf_share_of_thread_cpu": share, "bpf_runs_per_write": 2.85,
                "bpf_ns_per_run": 165.0,
                "floor": {"share_of_thread_cpu": floor, "runs_per_write": 2.76,
                          "ns_per_run": 64.0, "tracepoints": ["tcp_probe"]},
                "trouble_floor": {"share_of_thread_cpu": 0.00001,
                                  "tracepoints": ["timer_expire_entry"]},
            }}]}})
        };
        let v = verdicts(&ctx(0.0104, 0.0034));
        assert_eq!(v.len(), 1);
        assert!(!v[0].met);
        let why = v[0].miss_by.as_deref().unwrap();
        assert!(why.starts_with("0.04 percentage points; why"), "{why}");
        assert!(why.contains("0.34% is the attach floor"), "{why}");
        assert!(
            why.contains("0.70% the agent's logic (101 ns per run more"),
            "{why}"
        );
        // 0.04 of the 0.70 points of logic: 6 % less per run.
        assert!(why.contains("cost 6% less per run"), "{why}");
        assert!(why.contains("timer_expire_entry) cost 0.001%"), "{why}");
        // A floor over the target: no logic can meet it, and the report says so.
        let v = verdicts(&ctx(0.02, 0.012));
        assert!(v[0]
            .miss_by
            .as_deref()
            .unwrap()
            .contains("the floor alone is at or over"));
        // Met: no cause.
        let v = verdicts(&ctx(0.008, 0.003));
        assert!(v[0].met && v[0].miss_by.is_none());
        // The agent on --trouble-hooks gets its own row, on the same target.
        let mut r = ctx(0.0104, 0.0034);
        r["hot_path"]["sizes"][0]["bpf_context"]["trouble_agent"] =
            json!({"share_of_thread_cpu": 0.00002, "runs_per_write": 0.0012, "ns_per_run": 300.0});
        let v = verdicts(&r);
        assert_eq!(v.len(), 2);
        assert!(v[1].met, "{:?}", v[1]);
        assert_eq!(
            v[1].what,
            "hot path, 65536 B writes, with --trouble-hooks: the agent's in-kernel program time per byte"
        );
        assert!(v[1]
            .measured
            .starts_with("0.002% of the sender+receiver CPU (0.0012 runs"));
    }

    #[test]
    fn a_missed_scale_target_says_why_and_the_trouble_hooks_get_their_row() {
        let r = json!({"scale": {"results": [{"connections": 100000, "modes": [{
            "mode": "busy", "agent_pct_of_one_core_median": 1.005,
            "agent_bpf_ms_per_s": {"median": 8.7}, "agent_bpf_runs_per_s": {"median": 20015.0},
            "agent_bpf_ns_per_run_median": 435.0, "agent_process_cpu_ms_per_s": {"median": 1.3}}],
            "trouble_busy": {"agent_pct_of_one_core_median": 0.05,
                             "agent_bpf_ms_per_s": {"median": 0.02},
                             "agent_process_cpu_ms_per_s": {"median": 0.48}}}]}});
        let v = verdicts(&r);
        let miss = v[0].miss_by.as_deref().unwrap();
        assert!(miss.starts_with("0.005 percentage points; why"), "{miss}");
        assert!(
            miss.contains("BPF 8.700 ms/s (20015 program runs/s at 435 ns)"),
            "{miss}"
        );
        assert!(
            miss.contains("with --trouble-hooks on the same connections: 0.050%"),
            "{miss}"
        );
        assert_eq!(
            v[1].what,
            "scale N=100000 busy with --trouble-hooks: agent CPU (process + BPF)"
        );
        assert!(v[1].met);
        assert_eq!(v[1].measured, "0.050% (BPF 0.020 ms/s, process 0.480 ms/s)");
    }

    #[test]
    fn verdicts_catch_misses_and_passes() {
        let r = json!({
            "hot_path": {"sizes": [
                {"write_bytes": 100, "ratio_on_off": {"median": 0.95, "min": 0.9, "max": 0.99}},
                {"write_bytes": 65536, "ratio_on_off": {"median": 0.998, "min": 0.995, "max": 1.001},
                 "pairs": [{"ratio_on_off": 0.995}, {"ratio_on_off": 0.998}, {"ratio_on_off": 0.999},
                           {"ratio_on_off": 1.0}, {"ratio_on_off": 1.001}, {"ratio_on_off": 0.997},
                           {"ratio_on_off": 0.996}]},
            ]},
            "scale": {"results": [
                {"connections": 1000, "modes": [{"mode": "idle", "agent_pct_of_one_core_median": 0.01,
                    "ratio_ss_over_agent": {"median": 5.0}}]},
                {"connections": 100000, "modes": [{"mode": "busy", "agent_pct_of_one_core_median": 1.5,
                    "ratio_ss_over_agent": {"median": 60.0, "min": 40.0, "max": 70.0}}]},
            ]},
            "reaction": {"tick_s": 1, "results": [
                {"wedges": 5000, "resets_matched": 4999, "writers_econnaborted": 5000, "resets_unrelated": 0,
                 "threshold_to_econnaborted_ms": {"p99": 1250.0}},
            ]},
        });
        let v = verdicts(&r);
        let met: Vec<(bool, &str)> = v.iter().map(|v| (v.met, v.what.as_str())).collect();
        assert_eq!(
            met,
            vec![
                (
                    false,
                    "hot path, 100 B writes: throughput loss with the agent"
                ),
                (
                    true,
                    "hot path, 65536 B writes: throughput loss with the agent"
                ),
                (true, "scale N=1000 idle: agent CPU (process + BPF)"),
                (false, "scale N=100000 busy: agent CPU (process + BPF)"),
                (
                    true,
                    "scale N=100000 busy: CPU of `ss -tin` 1/s over agent CPU"
                ),
                (false, "reaction 5000 wedges: none missed"),
                (
                    false,
                    "reaction 5000 wedges: threshold crossing -> reset (seen as ECONNABORTED), p99"
                ),
            ]
        );
        assert_eq!(v[0].miss_by.as_deref(), Some("2.00 percentage points"));
        assert_eq!(v[6].miss_by.as_deref(), Some("150 ms"));
        // The ss ratio is only judged at the largest N.
        assert!(!v.iter().any(|v| v.what.contains("N=1000 idle: CPU of")));
        let md = markdown(&r);
        assert!(md.contains("| 100 B |"));
        assert!(md.contains("**NO** (missed by 150 ms)"));
    }
}
