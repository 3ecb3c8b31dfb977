//! SIGHUP: reopen the event output and reload the policy file.

use super::{Agent, DiagPath, SockSource};
use crate::event::Event;
use crate::policy::Policy;

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    /// SIGHUP: reopen `--output` (after log rotation moved it away), then read the policy
    /// file again. Each says how it went in an event (`output_reopened`, `policy_reload`).
    pub fn hangup(&mut self) {
        if let Some(res) = self.out.reopen() {
            let output = self
                .out
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let (ok, error) = match res {
                Ok(()) => {
                    log::info!("SIGHUP: reopened the event output {output}");
                    (true, None)
                }
                Err(e) => {
                    let why = format!(
                        "{e}; events still go to the file that was open before (possibly \
                         renamed by log rotation)"
                    );
                    log::error!("SIGHUP: {why}");
                    (false, Some(why))
                }
            };
            self.out.emit(&Event::OutputReopened { output, ok, error });
        }
        self.reload_policy();
    }

    /// Read and validate the policy file again. A valid file replaces the policy in force:
    /// rule selection, thresholds and guards change from the next tick on, while every
    /// socket's state (stalls, history, reset decisions, budgets, calibration) is kept. An
    /// invalid one is refused and the old policy stays. The tick is not changed (it takes
    /// a restart).
    pub fn reload_policy(&mut self) {
        let Some(path) = self.policy.source.clone() else {
            self.out.emit(&Event::PolicyReload {
                policy: None,
                ok: true,
                problems: Vec::new(),
                warnings: Vec::new(),
                mode: self.mode(),
                detail: "the agent runs without --policy: the built-in defaults stay in force"
                    .into(),
            });
            return;
        };
        let label = path.display().to_string();
        // With --trouble-hooks, a rule they cannot serve makes the file invalid here too.
        let loaded = Policy::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                if !self.cfg.trouble_hooks {
                    return Ok((p, Vec::new()));
                }
                let warnings = p.fit_trouble_hooks().into_result()?;
                Ok((p, warnings))
            });
        match loaded {
            Err(e) => {
                log::error!(
                    "SIGHUP: the policy file {label} is invalid; the policy loaded before stays \
                     in force:\n{e}"
                );
                self.out.emit(&Event::PolicyReload {
                    policy: Some(label),
                    ok: false,
                    problems: e.to_string().lines().map(str::to_string).collect(),
                    warnings: Vec::new(),
                    mode: self.mode(),
                    detail: "refused: the policy loaded before stays in force; fix the file \
                             (`tcpstall policy check FILE`) and send SIGHUP again"
                        .into(),
                });
            }
            Ok((new, hook_warnings)) => {
                let mut warnings = new.warning_lines();
                warnings.extend(hook_warnings);
                for w in &warnings {
                    log::warn!("{w}");
                }
                let mut detail = format!(
                    "in force from the next tick: {} rule(s), was {}; every socket's state is \
                     kept",
                    new.rules.len(),
                    self.policy.rules.len()
                );
                if new.tick != self.policy.tick {
                    detail.push_str(&format!(
                        "; tick = \"{}\" in the file is not applied: the agent keeps ticking every \
                         {} until it is restarted",
                        crate::policy::format_duration(new.tick),
                        crate::policy::format_duration(self.cfg.tick)
                    ));
                }
                log::info!("SIGHUP: reloaded the policy {label}: {detail}");
                self.cfg.policy = new.clone();
                self.policy = std::sync::Arc::new(new);
                self.out.emit(&Event::PolicyReload {
                    policy: Some(label),
                    ok: true,
                    problems: Vec::new(),
                    warnings,
                    mode: self.mode(),
                    detail,
                });
            }
        }
    }
}
