//! The tick-time scan part of the report (issue 14): its REPORT.md section and its
//! interpretation notes, computed from `results["scan"]` only. No targets: the section
//! measures a design the agent does not use.

use crate::report::{f, fmt_opt, spread};
use serde_json::Value;
use std::fmt::Write;

/// (case label, connections, the case's object) for every measured case, in run order.
fn cases(sc: &Value) -> Vec<(String, Option<u64>, &Value)> {
    let mut v = Vec::new();
    if sc["baseline"].is_object() {
        v.push(("no helper sockets".to_string(), None, &sc["baseline"]));
    }
    for r in sc["idle"].as_array().into_iter().flatten() {
        v.push(("idle".to_string(), r["connections"].as_u64(), r));
        if r["from_empty_netns"].is_object() {
            v.push((
                "idle, passes from an empty network namespace".to_string(),
                r["connections"].as_u64(),
                &r["from_empty_netns"],
            ));
        }
    }
    if sc["streaming"].is_object() {
        let r = &sc["streaming"];
        v.push(("streaming".to_string(), r["connections"].as_u64(), r));
    }
    v
}

/// The hot-path comparisons: (what else is on the node, the comparison).
fn hot_runs(sc: &Value) -> Vec<(String, &Value)> {
    let mut v = Vec::new();
    if sc["hot_path"].is_object() {
        v.push((
            format!(
                "{} sockets walked per pass",
                sc["baseline"]["sockets_walked"]
            ),
            &sc["hot_path"],
        ));
    }
    for r in sc["idle"].as_array().into_iter().flatten() {
        if r["hot_path"].is_object() {
            v.push((
                format!(
                    "{} idle connections ({} sockets walked per pass)",
                    r["connections"], r["cost"]["sockets_walked"]
                ),
                &r["hot_path"],
            ));
        }
    }
    v
}

/// The cost object of a case (the baseline is one itself).
fn cost(r: &Value) -> &Value {
    if r["cost"].is_object() {
        &r["cost"]
    } else {
        r
    }
}

/// REPORT.md section 5.
pub fn markdown(results: &Value, s: &mut String) {
    let sc = &results["scan"];
    let cs = cases(sc);
    if cs.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## 5. Tick-time scan: a BPF TCP socket iterator instead of per-write hooks\n\n\
         A design with no hook on the write path (issue 14): once per tick, program `{}` \
         (`iter/tcp`, {} instructions verified) walks every TCP socket of the network namespace \
         and writes one {}-byte record per socket with send data outstanding (`write_seq != \
         snd_una`); userspace compares consecutive passes. The agent does not run in this \
         section and never loads this program. A pass = open the pinned iterator link + read(2) \
         to EOF (the walk runs inside read); *pass CPU* is the reading thread's \
         CLOCK_THREAD_CPUTIME_ID, {} passes per case (one untimed pass first, 50 ms apart). \
         *Sockets walked* = the program's run count in one extra pass with BPF run-time \
         statistics on (which also gives *in-program ns*); the timed passes run with statistics \
         off. Each connection is two socket ends on the node. *Marginal* = (pass CPU − the \
         no-helper pass CPU) / (sockets walked − its sockets walked). Established hash table \
         size (`net.ipv4.tcp_ehash_entries`): {}. *Others' CPU*: machine CPU used by processes \
         other than the bench and the case's helpers during the timed passes (the bench first \
         waits up to 10 s for it to fall below 150 ms/s).\n\n\
         | case | connections | sockets walked | records (median) | pass CPU ms median (min..max) | pass wall ms median (min..max) | % of a core at a 1 s tick | CPU ns per socket walked | marginal CPU ns per socket | in-program ns per socket | others' CPU ms/s |\n|---|---|---|---|---|---|---|---|---|---|---|",
        sc["program"].as_str().unwrap_or("?"),
        sc["verified_instructions"],
        sc["record_bytes"],
        sc["passes"],
        sc["tcp_ehash_entries"],
    );
    for (label, n, r) in &cs {
        let c = cost(r);
        // The no-helper pass is the walk's fixed part: per socket it means nothing.
        let per = |k: &str| {
            if n.is_some() && c["sockets_walked"].as_u64().unwrap_or(0) > 1 {
                fmt_opt(f(&c[k]), 0)
            } else {
                "—".into()
            }
        };
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            n.map_or("—".into(), |n| n.to_string()),
            c["sockets_walked"],
            fmt_opt(f(&c["records"]["median"]), 0),
            spread(&c["pass_cpu_ms"], 3),
            spread(&c["pass_wall_ms"], 3),
            fmt_opt(f(&c["pct_of_one_core_at_1s_tick"]), 2),
            per("cpu_ns_per_socket"),
            fmt_opt(f(&r["marginal_cpu_ns_per_socket"]), 0),
            per("bpf_ns_per_socket"),
            fmt_opt(f(&c["foreign_cpu_ms_per_s"]), 0),
        );
    }
    let hots = hot_runs(sc);
    if !hots.is_empty() {
        let _ = writeln!(
            s,
            "\nHot path with the scan: section 1's loopback transfer (one connection, fixed-size \
             writes), nothing else running (off) against the same with one scan pass per second \
             made by another thread of this process, which sleeps between passes (scan); pairs \
             interleaved, order alternating; ratios per pair, median (min..max).\n\n\
             | sockets on the node besides the transfer | write B | s per arm | pairs | passes per scan arm (median) | throughput scan/off | CPU per MB scan/off | arms started contended |\n|---|---|---|---|---|---|---|---|"
        );
        for (what, hp) in &hots {
            let passes: Vec<f64> = hp["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| f(&r["passes"]))
                .collect();
            let _ = writeln!(
                s,
                "| {what} | {} | {} | {} | {} | {} | {} | {} |",
                hp["write_bytes"],
                fmt_opt(f(&hp["duration_s"]), 1),
                hp["pairs"],
                fmt_opt(crate::util::median(&passes), 0),
                spread(&hp["throughput_ratio_scan_over_off"], 3),
                spread(&hp["cpu_per_mb_ratio_scan_over_off"], 3),
                hp["contended_arms"],
            );
        }
    }
    let st = &sc["streaming"];
    if let Some(gaps) = st["coverage"]["gaps"].as_array() {
        let _ = writeln!(
            s,
            "\nStreaming case: helper processes as in section 4 (each server socket paced at {} B/s, \
             MSS {} B, buffers {} B, one {} B write every {} ms). Coverage: then one more \
             connection whose client never reads is made (its writer fills the send buffer), and \
             {} passes are taken {} s apart; between each two, the wedge must be in both with \
             `snd_una` unchanged and `snd_wnd` 0, else the section fails. Runs of the scan \
             program in 1 s of streaming without a pass (BPF statistics on): {}.\n\n\
             | gap | wedge stuck, zero window | stream records | advanced | unchanged | not in the earlier pass | zero window |\n|---|---|---|---|---|---|---|",
            st["rate_bytes_per_s"],
            st["mss"],
            st["buf_bytes"],
            st["chunk_bytes"],
            st["write_period_ms"],
            st["coverage"]["passes"],
            fmt_opt(f(&st["coverage"]["pass_gap_s"]), 0),
            st["program_runs_in_1s_without_pass"],
        );
        for (i, g) in gaps.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                if g["wedge_stuck_zero_window"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "**no**"
                },
                g["stream_records"],
                g["streams_advanced"],
                g["streams_unchanged"],
                g["streams_new"],
                g["streams_zero_window"],
            );
        }
        let _ = writeln!(
            s,
            "\nStreams seen advancing in at least one gap: {} of {}. Wedge at the last pass: {}.",
            st["coverage"]["streams_advanced_at_least_once"],
            st["coverage"]["streams_seen"],
            st["coverage"]["wedge_last"],
        );
    }
}

/// Interpretation notes computed from the scan numbers.
pub fn interpret(results: &Value) -> Vec<String> {
    let sc = &results["scan"];
    let mut notes = Vec::new();
    let cs = cases(sc);
    if cs.is_empty() {
        return notes;
    }
    let base = cost(&sc["baseline"]);
    let parts: Vec<String> = cs
        .iter()
        .filter(|(_, n, _)| n.is_some())
        .map(|(label, n, r)| {
            let c = cost(r);
            format!(
                "{label} {} connections ({} sockets walked, {} records): {} ms ({} % of a core at a 1 s tick)",
                n.unwrap_or(0),
                c["sockets_walked"],
                fmt_opt(f(&c["records"]["median"]), 0),
                fmt_opt(f(&c["pass_cpu_ms"]["median"]), 2),
                fmt_opt(f(&c["pct_of_one_core_at_1s_tick"]), 2),
            )
        })
        .collect();
    notes.push(format!(
        "Tick-time scan (section 5): one pass costs {} ms of CPU with {} sockets walked (the walk's fixed part; \
         `tcp_ehash_entries` {}); {}.",
        fmt_opt(f(&base["pass_cpu_ms"]["median"]), 2),
        base["sockets_walked"],
        sc["tcp_ehash_entries"],
        parts.join("; "),
    ));
    for r in sc["idle"].as_array().into_iter().flatten() {
        let other = &r["from_empty_netns"];
        if !other.is_object() {
            continue;
        }
        notes.push(format!(
            "Namespaces: with {} idle connections in the root network namespace, a pass opened from an empty network \
             namespace cost {} ms of CPU (handing its program {} socket(s)), against {} ms from the namespace that holds \
             them ({} of it). An iterator only sees the namespace it was opened in, so a scan makes one pass per \
             namespace and tick.",
            r["connections"],
            fmt_opt(f(&other["pass_cpu_ms"]["median"]), 2),
            other["sockets_walked"],
            fmt_opt(f(&r["cost"]["pass_cpu_ms"]["median"]), 2),
            match (
                f(&other["pass_cpu_ms"]["median"]),
                f(&r["cost"]["pass_cpu_ms"]["median"]),
            ) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.0} %", a / b * 100.0),
                _ => "?".into(),
            },
        ));
    }
    for (what, hp) in hot_runs(sc) {
        notes.push(format!(
            "Hot path ({} B writes) with one scan pass per second against nothing, {what} besides the transfer: \
             throughput ratio {}, CPU per MB ratio {} (median (min..max) of {} pairs).",
            hp["write_bytes"],
            spread(&hp["throughput_ratio_scan_over_off"], 3),
            spread(&hp["cpu_per_mb_ratio_scan_over_off"], 3),
            hp["pairs"],
        ));
    }
    let st = &sc["streaming"];
    if let Some(gaps) = st["coverage"]["gaps"].as_array() {
        let adv: Vec<u64> = gaps
            .iter()
            .filter_map(|g| g["streams_advanced"].as_u64())
            .collect();
        let stuck_all = st["coverage"]["wedge_stuck_in_every_gap"].as_bool() == Some(true);
        notes.push(format!(
            "Scan coverage: the wedged connection was {} with data queued, `snd_una` unchanged and a zero window \
             between every two of {} passes {} s apart; of {} healthy streams, {}..{} advanced within a given gap \
             and {} in at least one{}. The scan program ran {} times in 1 s of streaming without a pass.",
            if stuck_all { "seen stuck" } else { "NOT seen stuck" },
            st["coverage"]["passes"],
            fmt_opt(f(&st["coverage"]["pass_gap_s"]), 0),
            st["coverage"]["streams_seen"],
            adv.iter().min().map_or("?".into(), |v| v.to_string()),
            adv.iter().max().map_or("?".into(), |v| v.to_string()),
            st["coverage"]["streams_advanced_at_least_once"],
            if adv.iter().min() < st["coverage"]["streams_seen"].as_u64().as_ref() {
                format!(
                    ": healthy streams also showed `snd_una` unchanged across a {} s gap, so one unchanged \
                     pair of passes alone does not tell a stall from a healthy paced stream",
                    fmt_opt(f(&st["coverage"]["pass_gap_s"]), 0)
                )
            } else {
                String::new()
            },
            st["program_runs_in_1s_without_pass"],
        ));
    }
    notes
}
