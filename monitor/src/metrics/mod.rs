//! Prometheus metrics and health endpoints (`tcpstall run --metrics-addr ADDR`; off by
//! default). The event stream stays the primary output: the metrics count what the events
//! say, for fleet dashboards and alerts.
//!
//! * [`registry`]: the metric families and their encoding;
//! * [`health`]: `/healthz` and `/readyz`;
//! * [`server`]: the HTTP/1.1 server on the agent's runtime.
//!
//! The agent owns an [`Exporter`] (a no-op one without `--metrics-addr`) and calls it where
//! it writes the matching events; the server shares the registry and the health state.

pub mod health;
pub mod registry;
pub mod server;

pub use registry::{ResetResult, StallChange, TickValues};
pub use server::bind;

use crate::classify::{Episode, StallClass, Tracker, Transition};
use crate::event::{HookReport, Mode};
use crate::policy::{Action, Policy};
use anyhow::Result;
use health::Health;
use registry::{Metrics, RuleClass, StaticInfo};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What the server reads: the registry and the health state.
pub struct Shared {
    pub metrics: Metrics,
    health: Mutex<Health>,
}

impl Shared {
    pub fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The agent's state at start-up, for the info metrics and the health endpoints.
pub struct Setup<'a> {
    pub hooks: &'a [HookReport],
    pub degraded: &'a [String],
    pub socket_key_by_address: bool,
    pub policy: &'a Policy,
    pub dry_run: bool,
    pub reset_works: bool,
    pub orphans_safe: bool,
    pub map_capacity: u32,
    pub bpf_stats: bool,
    /// When the agent started.
    pub started: Instant,
}

/// The mode `agent_started` reports for this setup.
pub fn mode(wants_reset: bool, dry_run: bool, reset_works: bool) -> Mode {
    if !wants_reset {
        Mode::Observe
    } else if dry_run {
        Mode::DryRun
    } else if reset_works {
        Mode::Enforce
    } else {
        Mode::Observe
    }
}

/// The agent's side: counts as events happen, mirrors the tick's numbers, feeds health.
/// [`Exporter::default`] is off and costs nothing.
#[derive(Default)]
pub struct Exporter {
    shared: Option<Arc<Shared>>,
    /// Stalls in force this tick by rule, per class (in [`StallClass::ALL`] order); keys
    /// are kept (at 0) once seen.
    active: HashMap<String, [i64; 4]>,
}

fn class_index(c: StallClass) -> usize {
    StallClass::ALL
        .iter()
        .position(|x| *x == c)
        .expect("every class is in ALL")
}

impl Exporter {
    /// Registry, health and the server on `listener` (from [`bind`]); inside the runtime.
    pub fn start(listener: std::net::TcpListener, s: Setup<'_>) -> Result<Exporter> {
        let shared = Arc::new(Self::shared(&s));
        server::spawn(listener, Arc::clone(&shared))?;
        Ok(Exporter {
            shared: Some(shared),
            active: HashMap::new(),
        })
    }

    /// Registry and health without a server (tests, embedding).
    pub fn detached(s: Setup<'_>) -> Exporter {
        Exporter {
            shared: Some(Arc::new(Self::shared(&s))),
            active: HashMap::new(),
        }
    }

    /// The exposition (see [`Metrics::encode`]); None when off.
    pub fn encode(&self, openmetrics: bool) -> Option<String> {
        self.m().map(|m| m.encode(openmetrics))
    }

    fn shared(s: &Setup<'_>) -> Shared {
        let wants_reset = s.policy.rules.iter().any(|r| r.action == Action::Reset);
        let mode = mode(wants_reset, s.dry_run, s.reset_works);
        let start_time = SystemTime::now()
            .checked_sub(s.started.elapsed())
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let release = crate::btf::kernel_release();
        let metrics = Metrics::new(&StaticInfo {
            version: env!("CARGO_PKG_VERSION"),
            kernel_release: &release,
            hooks: s.hooks,
            mode,
            socket_key_by_address: s.socket_key_by_address,
            reset_path_works: s.reset_works,
            map_capacity: s.map_capacity,
            bpf_stats: s.bpf_stats,
            rules: s
                .policy
                .rules
                .iter()
                .map(|r| (r.name.clone(), r.action == Action::Reset))
                .collect(),
            start_time,
        });
        Shared {
            metrics,
            health: Mutex::new(Health {
                hooks: s.hooks.to_vec(),
                degraded: s.degraded.to_vec(),
                mode,
                wants_reset,
                dry_run: s.dry_run,
                reset_works: s.reset_works,
                orphans_safe: s.orphans_safe,
                started: s.started,
                first_tick: None,
                last_tick: None,
                ticks: 0,
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    fn m(&self) -> Option<&Metrics> {
        self.shared.as_deref().map(|s| &s.metrics)
    }

    /// A stall transition (every one, including closes by our own resets).
    pub fn transition(&self, tr: &Transition, rule: Option<&str>) {
        if let Some(m) = self.m() {
            let change = match tr {
                Transition::Started { .. } => StallChange::Started,
                Transition::Cleared { .. } => StallChange::Cleared,
                Transition::Closed { .. } => StallChange::Closed,
            };
            m.stall(change, rule, tr.class());
        }
    }

    pub fn reset(&self, rule: Option<&str>, result: ResetResult) {
        if let Some(m) = self.m() {
            m.reset(rule, result);
        }
    }

    /// A recovered episode, as recorded for calibration.
    pub fn episode(&self, rule: Option<&str>, ep: &Episode) {
        if let Some(m) = self.m() {
            m.episode(rule, ep.class, ep.duration_ms);
        }
    }

    pub fn threshold_warning(&self, rule: Option<&str>, class: StallClass) {
        if let Some(m) = self.m() {
            m.threshold_warning(rule, class);
        }
    }

    pub fn mass_disconnect(&self) {
        if let Some(m) = self.m() {
            m.mass_disconnect();
        }
    }

    pub fn partition_hold_started(&self) {
        if let Some(m) = self.m() {
            m.partition_hold_started();
        }
    }

    /// Count the stalls in force on `cookie` (send and receive side) for this tick.
    pub fn count_active(&mut self, tracker: &Tracker, cookie: u64, rule: Option<&str>) {
        if self.shared.is_none() {
            return;
        }
        for stall in [tracker.active(cookie), tracker.active_recv(cookie)]
            .into_iter()
            .flatten()
        {
            let rule = rule.unwrap_or(registry::NO_RULE);
            let i = class_index(stall.class);
            match self.active.get_mut(rule) {
                Some(n) => n[i] += 1,
                None => {
                    let mut n = [0; 4];
                    n[i] = 1;
                    self.active.insert(rule.to_string(), n);
                }
            }
        }
    }

    /// The tick is done: publish its numbers and the stalls counted with
    /// [`Exporter::count_active`], and mark health.
    pub fn tick_done(&mut self, v: &TickValues) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut active = HashMap::with_capacity(self.active.len() * 4);
        for (rule, n) in self.active.iter_mut() {
            for (i, class) in StallClass::ALL.into_iter().enumerate() {
                active.insert(
                    RuleClass {
                        rule: rule.clone(),
                        class: class.as_str(),
                    },
                    n[i],
                );
                n[i] = 0;
            }
        }
        shared.metrics.set_active(&active);
        shared.metrics.tick(v);
        shared.health().tick_done(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn setup_shared(policy: &Policy) -> Shared {
        let hooks: Vec<HookReport> = [
            ("ack", "tp_btf/tcp_probe"),
            ("state", "tp_btf/inet_sock_set_state"),
        ]
        .into_iter()
        .map(|(hook, attach)| HookReport {
            hook: hook.into(),
            attach: Some(attach.into()),
            why: String::new(),
        })
        .collect();
        Exporter::shared(&Setup {
            hooks: &hooks,
            degraded: &[],
            socket_key_by_address: false,
            policy,
            dry_run: false,
            reset_works: true,
            orphans_safe: true,
            map_capacity: 64,
            bpf_stats: true,
            started: Instant::now(),
        })
    }

    #[test]
    fn mode_matches_agent_started() {
        assert_eq!(mode(false, false, true), Mode::Observe);
        assert_eq!(mode(true, true, false), Mode::DryRun);
        assert_eq!(mode(true, false, true), Mode::Enforce);
        assert_eq!(mode(true, false, false), Mode::Observe);
    }

    #[test]
    fn an_off_exporter_does_nothing() {
        let mut e = Exporter::default();
        assert!(!e.enabled());
        e.reset(Some("x"), ResetResult::Done);
        e.tick_done(&TickValues::default());
        assert!(e.active.is_empty());
    }

    #[test]
    fn active_stalls_go_back_to_zero() {
        let p = Policy::parse(
            "[[rule]]\nname = \"svc\"\nlocal_ports = [8080]\naction = \"reset\"\n",
            "t",
        )
        .unwrap();
        let mut e = Exporter {
            shared: Some(Arc::new(setup_shared(&p))),
            active: HashMap::new(),
        };
        e.active.insert("svc".into(), [2, 0, 0, 1]);
        e.tick_done(&TickValues::default());
        let text = e.m().unwrap().encode(false);
        assert!(
            text.contains("tcpstall_stalls_active{rule=\"svc\",class=\"zero_window\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("tcpstall_stalls_active{rule=\"svc\",class=\"recv_backlog\"} 1\n"),
            "{text}"
        );
        // Next tick nothing is stalled.
        e.tick_done(&TickValues::default());
        let text = e.m().unwrap().encode(false);
        assert!(
            text.contains("tcpstall_stalls_active{rule=\"svc\",class=\"zero_window\"} 0\n"),
            "{text}"
        );
        let h = e.shared.as_ref().unwrap().health();
        assert_eq!(h.ticks, 2);
        assert!(h.first_tick.is_some());
    }
}
