//! `/healthz` (liveness) and `/readyz` (readiness): pure functions of the agent's state.
//!
//! * `/healthz`: 200 while the process runs with its required hooks (`ack`, `state`)
//!   attached — they stay attached for the agent's lifetime, and the endpoint is answered
//!   on the agent's own thread between ticks, so a stuck tick loop does not answer at all
//!   (a probe's timeout catches it). 503 with the reason otherwise.
//! * `/readyz`: 503 until the first tick is done; then 200, except in enforce intent with
//!   no reset path: a policy with reset rules, no `--dry-run`, and a start-up probe of
//!   SOCK_DESTROY that failed — the agent runs but observes only, which is not what it was
//!   deployed for, so a rollout should stop there (`/healthz` stays 200: restarting does
//!   not give a node CAP_NET_ADMIN or `CONFIG_INET_DIAG_DESTROY`).
//!
//! The body is plain text: a first line that says `ok`/`ready` or why not, then the state.

use crate::event::{HookReport, Mode};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Hooks without which the agent does not run.
pub const REQUIRED_HOOKS: [&str; 2] = ["ack", "state"];

/// The agent as the health endpoints see it.
#[derive(Clone, Debug)]
pub struct Health {
    pub hooks: Vec<HookReport>,
    /// `agent_started.degraded`.
    pub degraded: Vec<String>,
    pub mode: Mode,
    /// The policy has at least one rule with `action = "reset"`.
    pub wants_reset: bool,
    pub dry_run: bool,
    /// The start-up probe of SOCK_DESTROY worked.
    pub reset_works: bool,
    pub orphans_safe: bool,
    pub started: Instant,
    /// When the first and the last tick ended.
    pub first_tick: Option<Instant>,
    pub last_tick: Option<Instant>,
    pub ticks: u64,
}

/// An HTTP status and a plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Observe => "observe",
        Mode::Enforce => "enforce",
        Mode::DryRun => "dry_run",
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl Health {
    pub fn tick_done(&mut self, at: Instant) {
        self.first_tick.get_or_insert(at);
        self.last_tick = Some(at);
        self.ticks += 1;
    }

    fn missing_required(&self) -> Vec<&'static str> {
        REQUIRED_HOOKS
            .into_iter()
            .filter(|name| {
                !self
                    .hooks
                    .iter()
                    .any(|h| h.hook == *name && h.attach.is_some())
            })
            .collect()
    }

    fn reset_path_line(&self) -> String {
        if self.reset_works {
            "reset_path: works (start-up SOCK_DESTROY probe passed)".into()
        } else {
            "reset_path: unavailable (the start-up SOCK_DESTROY probe failed; see \
             agent_started.reset_path): every reset is skipped with guard reset_unavailable"
                .into()
        }
    }

    /// Liveness.
    pub fn healthz(&self) -> Answer {
        let missing = self.missing_required();
        let mut body = String::new();
        let status = if missing.is_empty() {
            body.push_str("ok: alive, hooks attached\n");
            200
        } else {
            let _ = writeln!(
                body,
                "unhealthy: required hook(s) not attached: {}",
                missing.join(", ")
            );
            503
        };
        for h in &self.hooks {
            let _ = writeln!(
                body,
                "hook {}: {}",
                h.hook,
                h.attach.as_deref().unwrap_or("not attached")
            );
        }
        if !self.degraded.is_empty() {
            let _ = writeln!(body, "degraded: {}", self.degraded.join("; "));
        }
        let now = Instant::now();
        match self.last_tick {
            Some(t) => {
                let _ = writeln!(
                    body,
                    "ticks: {}, last {} ms ago",
                    self.ticks,
                    ms(now.saturating_duration_since(t))
                );
            }
            None => body.push_str("ticks: none yet\n"),
        }
        Answer { status, body }
    }

    /// Readiness.
    pub fn readyz(&self) -> Answer {
        let now = Instant::now();
        let mut body = String::new();
        let status = if self.first_tick.is_none() {
            let _ = writeln!(
                body,
                "not ready: waiting for the first tick (started {} ms ago)",
                ms(now.saturating_duration_since(self.started))
            );
            503
        } else if self.wants_reset && !self.dry_run && !self.reset_works {
            body.push_str(
                "not ready: the policy has reset rules but the reset path is unavailable; the \
                 agent observes only\n",
            );
            503
        } else {
            body.push_str("ready\n");
            200
        };
        let _ = writeln!(body, "mode: {}", mode_name(self.mode));
        let _ = writeln!(body, "{}", self.reset_path_line());
        let _ = writeln!(
            body,
            "orphan_reset: {}",
            if self.orphans_safe {
                "safe"
            } else {
                "unsafe (orphans are never reset)"
            }
        );
        let _ = writeln!(body, "ticks: {}", self.ticks);
        Answer { status, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, attach: Option<&str>) -> HookReport {
        HookReport {
            hook: name.into(),
            attach: attach.map(str::to_string),
            why: String::new(),
        }
    }

    fn health() -> Health {
        Health {
            hooks: vec![
                hook("state", Some("tp_btf/inet_sock_set_state")),
                hook("ack", Some("tp_btf/tcp_probe")),
                hook("send_wait", None),
            ],
            degraded: vec![],
            mode: Mode::Enforce,
            wants_reset: true,
            dry_run: false,
            reset_works: true,
            orphans_safe: true,
            started: Instant::now(),
            first_tick: None,
            last_tick: None,
            ticks: 0,
        }
    }

    #[test]
    fn healthz_needs_the_required_hooks() {
        let mut h = health();
        let a = h.healthz();
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.starts_with("ok"), "{}", a.body);
        assert!(a.body.contains("hook ack: tp_btf/tcp_probe"), "{}", a.body);
        assert!(
            a.body.contains("hook send_wait: not attached"),
            "{}",
            a.body
        );
        h.hooks[1].attach = None;
        let a = h.healthz();
        assert_eq!(a.status, 503);
        assert!(
            a.body
                .starts_with("unhealthy: required hook(s) not attached: ack"),
            "{}",
            a.body
        );
    }

    #[test]
    fn readyz_waits_for_the_first_tick() {
        let mut h = health();
        let a = h.readyz();
        assert_eq!(a.status, 503);
        assert!(
            a.body.starts_with("not ready: waiting for the first tick"),
            "{}",
            a.body
        );
        assert!(a.body.contains("reset_path: works"), "{}", a.body);
        h.tick_done(Instant::now());
        let a = h.readyz();
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.starts_with("ready\nmode: enforce\n"), "{}", a.body);
        assert_eq!(h.ticks, 1);
    }

    #[test]
    fn no_reset_path_is_not_ready_only_when_the_policy_enforces() {
        let mut h = health();
        h.tick_done(Instant::now());
        h.reset_works = false;
        h.mode = Mode::Observe;
        let a = h.readyz();
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(a.body.contains("reset path is unavailable"), "{}", a.body);
        assert!(a.body.contains("reset_path: unavailable"), "{}", a.body);
        // Liveness is unaffected: a restart would not help.
        assert_eq!(h.healthz().status, 200);
        // Dry run or an observe-only policy: ready, and the body still says so.
        h.dry_run = true;
        assert_eq!(h.readyz().status, 200);
        h.dry_run = false;
        h.wants_reset = false;
        let a = h.readyz();
        assert_eq!(a.status, 200);
        assert!(a.body.contains("reset_path: unavailable"), "{}", a.body);
    }
}
