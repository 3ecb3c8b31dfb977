//! Starting the agent for real: the reset-path and orphan self-tests, loading and
//! attaching the probes, taking over the previous agent's state, `agent_started`.

use super::persist::Persist;
use super::{Agent, Config};
use crate::event::{self, Event, EventWriter};
use crate::policy::Action;
use crate::probes::{Pinning, Probes};
use crate::reset::{self, Destroyer};
use crate::snapshot::monotonic_ns;
use crate::state;
use anyhow::Result;
use std::time::Duration;

impl Agent {
    /// Validate, probe the reset path, load and attach. Emits `agent_started`.
    pub fn start(cfg: Config) -> Result<Agent> {
        let out = EventWriter::open(cfg.output.as_deref())?;
        // First: another agent on the same state is an error before anything is done.
        let (mut persist, pin_dir, why_not) = Persist::open(cfg.state.as_ref())?;
        // Probe the reset path before our hooks exist, so the probe's own wedge is not tracked.
        let wants_reset = cfg.policy.rules.iter().any(|r| r.action == Action::Reset);
        // On kernels where inet_diag/tcp_diag are modules, SOCK_DESTROY needs them loaded.
        let modules = reset::ensure_diag_modules();
        let mut probe = reset::self_probe();
        match &modules {
            Ok(loaded) if !loaded.is_empty() => {
                probe.detail = format!("loaded {}; {}", loaded.join(", "), probe.detail)
            }
            Err(why) if !probe.works => probe.detail = format!("{}; {why}", probe.detail),
            _ => {}
        }
        // Before the 2024 tcp_abort fix, destroying an orphan could leave it with no timer
        // forever: decided by a self-test, never by the version string.
        let orphan = if probe.works {
            reset::orphan_probe()
        } else {
            reset::OrphanReport {
                safe: false,
                detail: "not tested: SOCK_DESTROY does not work here (see reset_path); orphans \
                         are never reset"
                    .into(),
            }
        };
        if wants_reset && !orphan.safe {
            log::warn!("orphaned sockets will not be reset: {}", orphan.detail);
        }
        if wants_reset && !probe.works {
            log::warn!(
                "reset path unavailable ({}); every reset will be reported as reset_skipped",
                probe.detail
            );
        }
        let (kbtf, offsets, offsets_source) = crate::btf::load_kernel()?;
        let probes = Probes::load(
            &kbtf,
            &offsets,
            cfg.max_sockets,
            cfg.bpf_stats,
            crate::attach::Choice {
                per_write: cfg.per_write_hooks,
                read_hook: cfg.read_hook,
                trouble: cfg.trouble_hooks,
            },
            pin_dir.as_deref(),
        )?;
        drop(kbtf);
        let saved = persist
            .file
            .clone()
            .map(|f| (state::load(&f, monotonic_ns()), f));
        if let Some((Err(why), _)) = &saved {
            log::info!("state file not used: {why}");
        }
        let mode = if !wants_reset {
            event::Mode::Observe
        } else if cfg.dry_run {
            event::Mode::DryRun
        } else if probe.works {
            event::Mode::Enforce
        } else {
            event::Mode::Observe
        };
        let pinning = match &why_not.pins {
            Some(why) => Pinning {
                adopted: false,
                path: None,
                detail: why.clone(),
            },
            None => probes.pinning().clone(),
        };
        let mut agent_started = Event::AgentStarted {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            kernel: crate::btf::kernel_release(),
            hooks: probes.hook_reports().to_vec(),
            degraded: probes.degraded().to_vec(),
            socket_key: if probes.key_by_addr() {
                "address"
            } else {
                "cookie"
            }
            .into(),
            offsets_source,
            mode,
            reset_path: event::ResetPath {
                works: probe.works,
                detail: probe.detail.clone(),
            },
            orphan_reset: event::OrphanReset {
                safe: orphan.safe,
                detail: orphan.detail.clone(),
            },
            policy: cfg.policy.source.as_ref().map(|p| p.display().to_string()),
            tick_ms: cfg.tick.as_millis() as u64,
            max_sockets: probes.max_sockets(),
            state: event::StateReport {
                adopted: false,
                restored: false,
                detail: String::new(),
            },
        };
        let destroyer = match netns_idle_override()? {
            Some(d) => Destroyer::new().with_idle_limit(d),
            None => Destroyer::new(),
        };
        let mut agent = Agent::with_parts(cfg, probes, destroyer, out, probe.works, orphan.safe);
        agent.mode = mode;
        // Take over what the previous agent left, before the first tick.
        let mut report = agent.restore(&pinning, saved.as_ref().map(|(r, f)| (r, f.as_path())));
        if let Some(why) = &why_not.file {
            report.detail = format!("{}; {why}", report.detail);
        }
        persist.boot_id = state::boot_id();
        agent.persist = persist;
        log::info!("state: {}", report.detail);
        if let Event::AgentStarted { state, .. } = &mut agent_started {
            *state = report;
        }
        agent.out.emit(&agent_started);
        Ok(agent)
    }

    /// Serve `/metrics`, `/healthz` and `/readyz` on `listener` (from
    /// [`crate::metrics::bind`]) from the running runtime, between ticks.
    pub fn serve_metrics(&mut self, listener: std::net::TcpListener) -> Result<()> {
        self.metrics = crate::metrics::Exporter::start(
            listener,
            crate::metrics::Setup {
                hooks: self.src.hook_reports(),
                degraded: self.src.degraded(),
                socket_key_by_address: self.src.key_by_addr(),
                policy: &self.policy,
                dry_run: self.cfg.dry_run,
                reset_works: self.reset_works,
                orphans_safe: self.orphans_safe,
                map_capacity: self.src.max_sockets(),
                bpf_stats: self.cfg.bpf_stats,
                started: self.started,
            },
        )?;
        Ok(())
    }
}

/// `TCPSTALL_NETNS_IDLE_MS`: testing knob for how long an idle per-namespace netlink socket
/// is kept (default 60 s).
pub(super) fn netns_idle_override() -> Result<Option<Duration>> {
    match std::env::var("TCPSTALL_NETNS_IDLE_MS") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
            _ => anyhow::bail!(
                "TCPSTALL_NETNS_IDLE_MS={v:?} is not a positive number of milliseconds"
            ),
        },
        Err(_) => Ok(None),
    }
}
