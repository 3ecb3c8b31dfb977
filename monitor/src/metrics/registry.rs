//! The metric families and their encoding (Prometheus text 0.0.4 and OpenMetrics 1.0), with
//! `prometheus-client`.
//!
//! Every name starts with `tcpstall_`; counters end in `_total` (the library appends it),
//! durations are in seconds. Labels take values from bounded sets only: the policy's rule
//! names (or `(defaults)`), the four stall classes, the skip guards, reset results, hook
//! names and attach points, and the build/kernel strings — never a cookie, an address, a
//! port, a pid or a process name.

use crate::classify::StallClass;
use crate::event::{HookReport, Mode, SkipGuard};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::AtomicU64;

/// The rule label of a socket no rule selects.
pub const NO_RULE: &str = "(defaults)";

/// `Content-Type` of the OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text exposition.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of `tcpstall_tick_duration_seconds`: 100 µs to 2.5 s.
pub const TICK_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds (seconds) of `tcpstall_recovered_episode_duration_seconds`: 250 ms to 30 min,
/// around the usual thresholds (2 s to 5 min).
pub const EPISODE_BUCKETS: [f64; 16] = [
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Outcome of one reset decision, as counted in `tcpstall_resets_total{result}` (the same
/// four as `stats.resets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetResult {
    Done,
    /// Final failure.
    Failed,
    /// Transient failure, to be tried again.
    Retried,
    Skipped(SkipGuard),
}

impl ResetResult {
    /// A reset that failed: retried (transient) or final.
    pub fn failure(retried: bool) -> ResetResult {
        if retried {
            ResetResult::Retried
        } else {
            ResetResult::Failed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResetResult::Done => "done",
            ResetResult::Failed => "failed",
            ResetResult::Retried => "retried",
            ResetResult::Skipped(_) => "skipped",
        }
    }
    pub const NAMES: [&'static str; 4] = ["done", "failed", "retried", "skipped"];
}

/// How a stall transition is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallChange {
    Started,
    Cleared,
    Closed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleClass {
    pub rule: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleResult {
    pub rule: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleGuard {
    pub rule: String,
    pub guard: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabel {
    release: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
    attach: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    mode: &'static str,
    socket_key: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type EpisodeFamily = Family<RuleClass, Histogram, fn() -> Histogram>;

/// What the registry says about the agent itself, fixed at start.
pub struct StaticInfo<'a> {
    pub version: &'a str,
    pub kernel_release: &'a str,
    pub hooks: &'a [HookReport],
    pub mode: Mode,
    pub socket_key_by_address: bool,
    pub reset_path_works: bool,
    pub map_capacity: u32,
    /// `--bpf-stats`: export `tcpstall_bpf_run_seconds_total`.
    pub bpf_stats: bool,
    /// Rule names of the policy, in file order, and whether each resets: their series are
    /// created at zero so that `rate()`/`increase()` see the first event.
    pub rules: Vec<(String, bool)>,
    /// Unix time the agent started, seconds.
    pub start_time: f64,
}

/// Per-tick values mirrored into gauges and counters (the same numbers as `stats`).
#[derive(Clone, Debug, Default)]
pub struct TickValues {
    pub duration_s: f64,
    pub sockets_tracked: u64,
    pub map_capacity: u32,
    /// Monotonic totals since start (mirrored into counters).
    pub map_full: u64,
    pub map_evicted: u64,
    pub map_stale: u64,
    pub close_notes_lost: u64,
    pub events_lost: u64,
    pub netns_cached: u64,
    pub partition_hold: bool,
    pub cpu_seconds: f64,
    pub bpf_run_ns: Option<u64>,
}

/// The registry and a handle on every family.
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    stalls_active: Family<RuleClass, Gauge>,
    stalls_started: Family<RuleClass, Counter>,
    stalls_cleared: Family<RuleClass, Counter>,
    stalls_closed: Family<RuleClass, Counter>,
    resets: Family<RuleResult, Counter>,
    resets_skipped: Family<RuleGuard, Counter>,
    threshold_warnings: Family<RuleClass, Counter>,
    episodes: EpisodeFamily,
    sockets_tracked: Gauge,
    map_capacity: Gauge,
    map_full: Counter,
    map_evicted: Counter,
    map_stale: Counter,
    close_notes_lost: Counter,
    events_lost: Counter,
    netns_cached: Gauge,
    partition_hold: Gauge,
    partition_holds: Counter,
    mass_disconnects: Counter,
    tick_duration: Histogram,
    ticks_total: Counter,
    cpu_seconds: FloatCounter,
    bpf_run_seconds: Option<FloatCounter>,
}

fn episode_histogram() -> Histogram {
    Histogram::new(EPISODE_BUCKETS)
}

/// The rule label of a selection.
pub fn rule_label(rule: Option<&str>) -> String {
    rule.unwrap_or(NO_RULE).to_string()
}

/// A counter brought up to a total kept elsewhere (kernel counters, agent fields): it only
/// ever moves forward.
fn mirror(c: &Counter, total: u64) {
    let have = c.get();
    if total > have {
        c.inc_by(total - have);
    }
}

fn mirror_f64(c: &FloatCounter, total: f64) {
    let have = c.get();
    if total > have {
        c.inc_by(total - have);
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Observe => "observe",
        Mode::Enforce => "enforce",
        Mode::DryRun => "dry_run",
    }
}

impl Metrics {
    pub fn new(info: &StaticInfo<'_>) -> Metrics {
        use prometheus_client::registry::{Registry, Unit};
        let mut reg = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            stalls_active: Family::default(),
            stalls_started: Family::default(),
            stalls_cleared: Family::default(),
            stalls_closed: Family::default(),
            resets: Family::default(),
            resets_skipped: Family::default(),
            threshold_warnings: Family::default(),
            episodes: Family::new_with_constructor(episode_histogram as fn() -> Histogram),
            sockets_tracked: Gauge::default(),
            map_capacity: Gauge::default(),
            map_full: Counter::default(),
            map_evicted: Counter::default(),
            map_stale: Counter::default(),
            close_notes_lost: Counter::default(),
            events_lost: Counter::default(),
            netns_cached: Gauge::default(),
            partition_hold: Gauge::default(),
            partition_holds: Counter::default(),
            mass_disconnects: Counter::default(),
            tick_duration: Histogram::new(TICK_BUCKETS),
            ticks_total: Counter::default(),
            cpu_seconds: FloatCounter::default(),
            bpf_run_seconds: info.bpf_stats.then(FloatCounter::default),
        };

        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: info.version.to_string(),
            })
            .set(1);
        reg.register("tcpstall_build_info", "The tcpstall build; always 1", build);
        let kernel: Family<ReleaseLabel, Gauge> = Family::default();
        kernel
            .get_or_create(&ReleaseLabel {
                release: info.kernel_release.to_string(),
            })
            .set(1);
        reg.register(
            "tcpstall_kernel_info",
            "The running kernel release (uname -r); always 1",
            kernel,
        );
        let hooks: Family<HookLabels, Gauge> = Family::default();
        for h in info.hooks {
            hooks
                .get_or_create(&HookLabels {
                    hook: h.hook.clone(),
                    attach: h.attach.clone().unwrap_or_else(|| "none".into()),
                })
                .set(1);
        }
        reg.register(
            "tcpstall_hook_info",
            "Each kernel hook and its attach point, as in agent_started.hooks (attach none: not attached); always 1",
            hooks,
        );
        let agent: Family<AgentLabels, Gauge> = Family::default();
        agent
            .get_or_create(&AgentLabels {
                mode: mode_name(info.mode),
                socket_key: if info.socket_key_by_address {
                    "address"
                } else {
                    "cookie"
                },
            })
            .set(1);
        reg.register(
            "tcpstall_agent_info",
            "How the agent runs: mode (observe, enforce, dry_run) and socket key (cookie, address), as in agent_started; always 1",
            agent,
        );
        let reset_up: Gauge = Gauge::default();
        reset_up.set(i64::from(info.reset_path_works));
        reg.register(
            "tcpstall_reset_path_up",
            "1 when the start-up probe of SOCK_DESTROY worked (agent_started.reset_path.works), else 0",
            reset_up,
        );
        let start: Gauge<f64, AtomicU64> = Gauge::default();
        start.set(info.start_time);
        reg.register_with_unit(
            "tcpstall_agent_start_time",
            "Unix time the agent started",
            Unit::Seconds,
            start,
        );

        reg.register(
            "tcpstall_stalls_active",
            "Stalls in force at the last tick, by class and rule",
            m.stalls_active.clone(),
        );
        reg.register(
            "tcpstall_stalls_started",
            "Stalls started (stall_started events), by class and rule",
            m.stalls_started.clone(),
        );
        reg.register(
            "tcpstall_stalls_cleared",
            "Stalls that ended in progress (stall_cleared events), by class and rule",
            m.stalls_cleared.clone(),
        );
        reg.register(
            "tcpstall_stalls_closed",
            "Stalls that ended with the socket closing, including closes by tcpstall's own resets, by class and rule",
            m.stalls_closed.clone(),
        );
        reg.register(
            "tcpstall_resets",
            "Reset decisions by rule and result: done (socket_reset), failed (final reset_failed), retried (transient reset_failed), skipped (reset_skipped)",
            m.resets.clone(),
        );
        reg.register(
            "tcpstall_resets_skipped",
            "Resets skipped (reset_skipped events), by rule and guard",
            m.resets_skipped.clone(),
        );
        reg.register(
            "tcpstall_threshold_warnings",
            "threshold_warning events, by rule and class",
            m.threshold_warnings.clone(),
        );
        reg.register_with_unit(
            "tcpstall_recovered_episode_duration",
            "No-progress episodes that ended in progress without any action (stats.calibration), by rule and class",
            Unit::Seconds,
            m.episodes.clone(),
        );
        reg.register(
            "tcpstall_sockets_tracked",
            "Sockets in the kernel map at the last tick (data queued)",
            m.sockets_tracked.clone(),
        );
        reg.register(
            "tcpstall_map_capacity",
            "Capacity of the kernel map (--max-sockets)",
            m.map_capacity.clone(),
        );
        reg.register(
            "tcpstall_map_full",
            "Sockets not tracked because the kernel map was full",
            m.map_full.clone(),
        );
        reg.register(
            "tcpstall_map_evicted",
            "Map entries evicted by the agent to make room",
            m.map_evicted.clone(),
        );
        reg.register(
            "tcpstall_map_stale",
            "Stale map entries removed (gone or drained sockets a hook missed)",
            m.map_stale.clone(),
        );
        reg.register(
            "tcpstall_close_notes_lost",
            "Close notes that did not fit the kernel ring buffer",
            m.close_notes_lost.clone(),
        );
        reg.register(
            "tcpstall_events_lost",
            "Events that could not be written to the output",
            m.events_lost.clone(),
        );
        reg.register(
            "tcpstall_netns_sockets_cached",
            "Netlink sockets kept open in other network namespaces",
            m.netns_cached.clone(),
        );
        reg.register(
            "tcpstall_partition_hold",
            "1 while a partition hold is in force (no resets), else 0",
            m.partition_hold.clone(),
        );
        reg.register(
            "tcpstall_partition_holds",
            "Partition holds started",
            m.partition_holds.clone(),
        );
        reg.register(
            "tcpstall_mass_disconnects",
            "Mass disconnects detected (mass_disconnect events)",
            m.mass_disconnects.clone(),
        );
        reg.register_with_unit(
            "tcpstall_tick_duration",
            "Duration of one tick (map read, classification, policy, guards, resets)",
            Unit::Seconds,
            m.tick_duration.clone(),
        );
        reg.register("tcpstall_ticks", "Ticks run", m.ticks_total.clone());
        reg.register_with_unit(
            "tcpstall_agent_cpu",
            "CPU time of the agent process, user and system",
            Unit::Seconds,
            m.cpu_seconds.clone(),
        );
        if let Some(c) = &m.bpf_run_seconds {
            reg.register_with_unit(
                "tcpstall_bpf_run",
                "Kernel run time of tcpstall's BPF programs (--bpf-stats)",
                Unit::Seconds,
                c.clone(),
            );
        }
        m.map_capacity.set(i64::from(info.map_capacity));

        // Known series at zero from the start.
        let rules = std::iter::once((NO_RULE.to_string(), false)).chain(info.rules.iter().cloned());
        for (rule, resets) in rules {
            for class in StallClass::ALL {
                let k = RuleClass {
                    rule: rule.clone(),
                    class: class.as_str(),
                };
                let _ = m.stalls_active.get_or_create(&k);
                let _ = m.stalls_started.get_or_create(&k);
                let _ = m.stalls_cleared.get_or_create(&k);
                let _ = m.stalls_closed.get_or_create(&k);
            }
            if resets {
                for result in ResetResult::NAMES {
                    let _ = m.resets.get_or_create(&RuleResult {
                        rule: rule.clone(),
                        result,
                    });
                }
            }
        }
        Metrics { registry: reg, ..m }
    }

    pub fn stall(&self, change: StallChange, rule: Option<&str>, class: StallClass) {
        let k = RuleClass {
            rule: rule_label(rule),
            class: class.as_str(),
        };
        match change {
            StallChange::Started => &self.stalls_started,
            StallChange::Cleared => &self.stalls_cleared,
            StallChange::Closed => &self.stalls_closed,
        }
        .get_or_create(&k)
        .inc();
    }

    pub fn reset(&self, rule: Option<&str>, result: ResetResult) {
        let rule = rule_label(rule);
        if let ResetResult::Skipped(guard) = result {
            self.resets_skipped
                .get_or_create(&RuleGuard {
                    rule: rule.clone(),
                    guard: guard.as_str(),
                })
                .inc();
        }
        self.resets
            .get_or_create(&RuleResult {
                rule,
                result: result.as_str(),
            })
            .inc();
    }

    pub fn episode(&self, rule: Option<&str>, class: StallClass, duration_ms: u64) {
        self.episodes
            .get_or_create(&RuleClass {
                rule: rule_label(rule),
                class: class.as_str(),
            })
            .observe(duration_ms as f64 / 1000.0);
    }

    pub fn threshold_warning(&self, rule: Option<&str>, class: StallClass) {
        self.threshold_warnings
            .get_or_create(&RuleClass {
                rule: rule_label(rule),
                class: class.as_str(),
            })
            .inc();
    }

    pub fn mass_disconnect(&self) {
        self.mass_disconnects.inc();
    }

    pub fn partition_hold_started(&self) {
        self.partition_holds.inc();
    }

    /// Active stalls per (rule, class) as counted this tick. The caller keeps every key it
    /// ever passed, at 0 when no stall of that kind is active, so that a series goes back to
    /// 0 rather than freezing at its last count.
    pub fn set_active(&self, active: &std::collections::HashMap<RuleClass, i64>) {
        for (k, n) in active {
            self.stalls_active.get_or_create(k).set(*n);
        }
    }

    pub fn tick(&self, v: &TickValues) {
        self.tick_duration.observe(v.duration_s);
        self.ticks_total.inc();
        self.sockets_tracked.set(v.sockets_tracked as i64);
        self.map_capacity.set(i64::from(v.map_capacity));
        mirror(&self.map_full, v.map_full);
        mirror(&self.map_evicted, v.map_evicted);
        mirror(&self.map_stale, v.map_stale);
        mirror(&self.close_notes_lost, v.close_notes_lost);
        mirror(&self.events_lost, v.events_lost);
        self.netns_cached.set(v.netns_cached as i64);
        self.partition_hold.set(i64::from(v.partition_hold));
        mirror_f64(&self.cpu_seconds, v.cpu_seconds);
        if let (Some(c), Some(ns)) = (&self.bpf_run_seconds, v.bpf_run_ns) {
            mirror_f64(c, ns as f64 / 1e9);
        }
    }

    /// The whole exposition: OpenMetrics 1.0 text (with `# EOF`) or Prometheus text 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let res = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = res {
            log::warn!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Label keys the exposition may use: each takes values from a bounded set.
    pub const LABEL_KEYS: [&str; 11] = [
        "rule",
        "class",
        "result",
        "guard",
        "version",
        "release",
        "hook",
        "attach",
        "mode",
        "socket_key",
        "le",
    ];

    fn hooks() -> Vec<HookReport> {
        vec![
            HookReport {
                hook: "ack".into(),
                attach: Some("tp_btf/tcp_probe".into()),
                why: "tracepoint tcp_probe".into(),
            },
            HookReport {
                hook: "send_wait".into(),
                attach: None,
                why: "not needed".into(),
            },
        ]
    }

    /// A registry fed with one of everything.
    pub fn fed() -> Metrics {
        let hooks = hooks();
        let m = Metrics::new(&StaticInfo {
            version: "0.1.0",
            kernel_release: "6.18.44-test",
            hooks: &hooks,
            mode: Mode::Enforce,
            socket_key_by_address: false,
            reset_path_works: true,
            map_capacity: 4096,
            bpf_stats: true,
            rules: vec![("wedge".into(), true), ("watch".into(), false)],
            start_time: 1.8e9,
        });
        m.stall(StallChange::Started, Some("wedge"), StallClass::ZeroWindow);
        m.stall(StallChange::Closed, Some("wedge"), StallClass::ZeroWindow);
        m.stall(StallChange::Started, None, StallClass::NoAck);
        m.stall(StallChange::Cleared, None, StallClass::NoAck);
        m.reset(Some("wedge"), ResetResult::Done);
        m.reset(Some("wedge"), ResetResult::Retried);
        m.reset(Some("wedge"), ResetResult::Failed);
        m.reset(Some("wedge"), ResetResult::Skipped(SkipGuard::RateLimit));
        m.reset(
            Some("wedge"),
            ResetResult::Skipped(SkipGuard::PartitionHold),
        );
        m.episode(Some("watch"), StallClass::ZeroWindow, 12_933);
        m.episode(None, StallClass::ZeroWindow, 300);
        m.threshold_warning(Some("watch"), StallClass::ZeroWindow);
        m.mass_disconnect();
        m.partition_hold_started();
        let mut active = std::collections::HashMap::new();
        active.insert(
            RuleClass {
                rule: "wedge".into(),
                class: "zero_window",
            },
            3,
        );
        m.set_active(&active);
        m.tick(&TickValues {
            duration_s: 0.0004,
            sockets_tracked: 7,
            map_capacity: 4096,
            map_full: 2,
            map_evicted: 1,
            map_stale: 5,
            close_notes_lost: 0,
            events_lost: 0,
            netns_cached: 1,
            partition_hold: true,
            cpu_seconds: 0.25,
            bpf_run_ns: Some(1_500_000),
        });
        // Mirrored totals move forward only.
        m.tick(&TickValues {
            duration_s: 0.002,
            sockets_tracked: 6,
            map_capacity: 4096,
            map_full: 3,
            map_evicted: 1,
            map_stale: 5,
            cpu_seconds: 0.5,
            bpf_run_ns: Some(2_000_000),
            ..TickValues::default()
        });
        m
    }

    /// A sample line: name, labels, value.
    fn sample(line: &str) -> (String, BTreeMap<String, String>, String) {
        let (series, value) = line.rsplit_once(' ').expect("value");
        let Some((name, rest)) = series.split_once('{') else {
            return (series.to_string(), BTreeMap::new(), value.to_string());
        };
        let body = rest.strip_suffix('}').expect("closing brace");
        let mut labels = BTreeMap::new();
        let mut chars = body.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut val = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.push(chars.next().expect("escape")),
                    '"' => break,
                    c => val.push(c),
                }
            }
            labels.insert(key, val);
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        (name.to_string(), labels, value.to_string())
    }

    /// Every `# TYPE` of an exposition: name → type.
    pub fn types(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (n, t) = l.split_once(' ').unwrap();
                (n.to_string(), t.to_string())
            })
            .collect()
    }

    fn value_of(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .to_string()
    }

    #[test]
    fn names_types_and_units_follow_the_conventions() {
        let m = fed();
        let text = m.encode(false);
        let types = types(&text);
        for (name, ty) in &types {
            assert!(name.starts_with("tcpstall_"), "{name}");
            match ty.as_str() {
                "counter" => assert!(name.ends_with("_total"), "{name}"),
                "gauge" | "histogram" => assert!(!name.ends_with("_total"), "{name}"),
                t => panic!("{name}: type {t}"),
            }
            if name.contains("duration") || name.contains("cpu") || name.contains("time") {
                assert!(
                    name.ends_with("_seconds") || name.ends_with("_seconds_total"),
                    "{name}: base unit"
                );
            }
        }
        for (name, ty) in [
            ("tcpstall_stalls_active", "gauge"),
            ("tcpstall_stalls_started_total", "counter"),
            ("tcpstall_stalls_cleared_total", "counter"),
            ("tcpstall_stalls_closed_total", "counter"),
            ("tcpstall_resets_total", "counter"),
            ("tcpstall_resets_skipped_total", "counter"),
            ("tcpstall_sockets_tracked", "gauge"),
            ("tcpstall_map_capacity", "gauge"),
            ("tcpstall_map_full_total", "counter"),
            ("tcpstall_map_evicted_total", "counter"),
            ("tcpstall_map_stale_total", "counter"),
            ("tcpstall_close_notes_lost_total", "counter"),
            ("tcpstall_events_lost_total", "counter"),
            ("tcpstall_tick_duration_seconds", "histogram"),
            ("tcpstall_agent_cpu_seconds_total", "counter"),
            ("tcpstall_bpf_run_seconds_total", "counter"),
            ("tcpstall_recovered_episode_duration_seconds", "histogram"),
            ("tcpstall_partition_hold", "gauge"),
            ("tcpstall_mass_disconnects_total", "counter"),
            ("tcpstall_build_info", "gauge"),
            ("tcpstall_kernel_info", "gauge"),
            ("tcpstall_hook_info", "gauge"),
        ] {
            assert_eq!(
                types.get(name).map(String::as_str),
                Some(ty),
                "{name}\n{text}"
            );
        }
        // Every sample belongs to a declared family.
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, _, _) = sample(line);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
                .unwrap_or(&name);
            assert!(types.contains_key(family), "{line}: no # TYPE");
        }
        // Values.
        assert_eq!(value_of(&text, "tcpstall_map_capacity"), "4096");
        assert_eq!(value_of(&text, "tcpstall_map_full_total"), "3");
        assert_eq!(value_of(&text, "tcpstall_sockets_tracked"), "6");
        assert_eq!(value_of(&text, "tcpstall_agent_cpu_seconds_total"), "0.5");
        assert_eq!(value_of(&text, "tcpstall_bpf_run_seconds_total"), "0.002");
        assert_eq!(value_of(&text, "tcpstall_tick_duration_seconds_count"), "2");
        assert_eq!(
            value_of(
                &text,
                "tcpstall_resets_total{rule=\"wedge\",result=\"skipped\"}"
            ),
            "2"
        );
        assert_eq!(
            value_of(
                &text,
                "tcpstall_resets_skipped_total{rule=\"wedge\",guard=\"rate_limit\"}"
            ),
            "1"
        );
        assert_eq!(
            value_of(
                &text,
                "tcpstall_stalls_started_total{rule=\"(defaults)\",class=\"no_ack\"}"
            ),
            "1"
        );
        assert_eq!(
            value_of(
                &text,
                "tcpstall_stalls_active{rule=\"wedge\",class=\"zero_window\"}"
            ),
            "3"
        );
        assert_eq!(
            value_of(
                &text,
                "tcpstall_recovered_episode_duration_seconds_bucket{rule=\"watch\",class=\"zero_window\",le=\"15\"}"
            ),
            "1"
        );
        assert_eq!(
            value_of(
                &text,
                "tcpstall_hook_info{hook=\"send_wait\",attach=\"none\"}"
            ),
            "1"
        );
        // Series of the policy's rules exist at zero before anything happens.
        assert_eq!(
            value_of(
                &text,
                "tcpstall_stalls_started_total{rule=\"watch\",class=\"slow_drain\"}"
            ),
            "0"
        );
        assert_eq!(
            value_of(
                &text,
                "tcpstall_resets_total{rule=\"wedge\",result=\"done\"}"
            ),
            "1"
        );
        assert!(
            !text.contains("rule=\"watch\",result="),
            "observe rules have no reset series"
        );
    }

    #[test]
    fn labels_come_from_bounded_sets_only() {
        let m = fed();
        let rules: BTreeSet<&str> = ["wedge", "watch", NO_RULE].into();
        let classes: BTreeSet<&str> = StallClass::ALL.iter().map(|c| c.as_str()).collect();
        let guards: BTreeSet<&str> = SkipGuard::ALL.iter().map(|g| g.as_str()).collect();
        let results: BTreeSet<&str> = ResetResult::NAMES.into();
        for om in [false, true] {
            let text = m.encode(om);
            for line in text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
            {
                let (_, labels, _) = sample(line);
                for (k, v) in &labels {
                    assert!(LABEL_KEYS.contains(&k.as_str()), "{line}: label {k}");
                    let ok = match k.as_str() {
                        "rule" => rules.contains(v.as_str()),
                        "class" => classes.contains(v.as_str()),
                        "guard" => guards.contains(v.as_str()),
                        "result" => results.contains(v.as_str()),
                        "le" => v == "+Inf" || v.parse::<f64>().is_ok(),
                        _ => true,
                    };
                    assert!(ok, "{line}: {k}={v}");
                    if k != "le" && k != "release" && k != "version" {
                        assert!(v.parse::<u64>().is_err(), "{line}: a number as a label");
                        assert!(
                            v.parse::<std::net::IpAddr>().is_err()
                                && v.parse::<std::net::SocketAddr>().is_err(),
                            "{line}: an address as a label"
                        );
                    }
                }
            }
        }
    }

    /// The README's metric table lists every family with its type and labels, and nothing
    /// else.
    #[test]
    fn readme_lists_every_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md at the workspace root");
        let section = readme
            .split("\n## Metrics and health\n")
            .nth(1)
            .expect("a Metrics and health section")
            .split("\n## ")
            .next()
            .unwrap();
        let documented: BTreeMap<String, (String, BTreeSet<String>)> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `tcpstall_"))
            .map(|l| {
                let cols: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = format!("tcpstall_{}", cols[0].trim_end_matches('`'));
                let labels = cols[2]
                    .split(',')
                    .map(|x| x.trim().trim_matches('`').to_string())
                    .filter(|x| !x.is_empty())
                    .collect();
                (name, (cols[1].to_string(), labels))
            })
            .collect();
        let text = fed().encode(false);
        let mut exported: BTreeMap<String, (String, BTreeSet<String>)> = types(&text)
            .into_iter()
            .map(|(n, t)| (n, (t, BTreeSet::new())))
            .collect();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, labels, _) = sample(line);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains_key(*f)))
                .unwrap_or(&name)
                .to_string();
            let e = exported.get_mut(&family).unwrap();
            e.1.extend(labels.into_keys().filter(|k| k != "le"));
        }
        assert_eq!(documented, exported);
    }

    #[test]
    fn openmetrics_exposition() {
        let text = fed().encode(true);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let types = types(&text);
        // OpenMetrics names counter families without the _total of their samples.
        assert_eq!(types["tcpstall_resets"], "counter");
        assert_eq!(types["tcpstall_tick_duration_seconds"], "histogram");
        assert!(
            text.contains("# UNIT tcpstall_tick_duration_seconds seconds\n"),
            "{text}"
        );
        assert!(text.contains("tcpstall_resets_total{rule=\"wedge\",result=\"done\"} 1\n"));
    }
}
