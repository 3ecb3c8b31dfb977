//! What the agent says about itself: `stats` events, Prometheus metrics per tick, and the
//! live view `tcpstall top` reads from the status socket.

use super::select::select;
use super::{Agent, DiagPath, SockSource, NO_RULE};
use crate::classify::StallClass;
use crate::event::{self, Event, SocketFields};
use crate::snapshot::Snapshot;
use anyhow::Result;
use std::time::{Duration, Instant};

/// utime + stime of this process, ms.
pub fn cpu_ms() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|r| (r.user_time() + r.system_time()).num_milliseconds().max(0) as u64)
        .unwrap_or(0)
}

/// How the live view names a socket's owner: pod, else container, else cgroup path.
pub(super) fn owner_of(f: &SocketFields) -> Option<String> {
    match (&f.pod_namespace, &f.pod_name, &f.container_id, &f.cgroup) {
        (Some(ns), Some(name), _, _) => Some(format!("{ns}/{name}")),
        (_, _, Some(id), _) => Some(format!("container {}", &id[..id.len().min(12)])),
        (_, _, _, Some(cg)) => Some(cg.clone()),
        _ => None,
    }
}

/// Listen for `tcpstall top` at `path` (directory 0700, socket 0600: root only). A socket
/// file another agent still answers on is left to it (an error here); a stale one is
/// replaced.
pub(super) fn bind_status(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "creating {} for the status socket: {e}; pass --status-socket PATH (or none)",
                    dir.display()
                )
            })?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another tcpstall agent answers on {} (pass a different --status-socket to \
                 have a live view of this one)",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| {
        anyhow::anyhow!(
            "listening on {} for tcpstall top: {e}; pass --status-socket PATH (or none)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

impl<S: SockSource, K: DiagPath> Agent<S, K> {
    /// The tick's numbers to the metrics (the same as `stats`).
    pub(super) fn metrics_tick(&mut self, took: Duration) {
        if !self.metrics.enabled() {
            return;
        }
        let c = self.src.counters();
        self.metrics.tick_done(&crate::metrics::TickValues {
            duration_s: took.as_secs_f64(),
            sockets_tracked: self.last.len() as u64,
            map_capacity: self.src.max_sockets(),
            map_full: c.map_full,
            map_evicted: self.map_evicted,
            map_stale: c.stale + self.map_stale,
            close_notes_lost: c.close_notes_lost,
            events_lost: self.out.events_lost(),
            netns_cached: self.kern.cached_netns() as u64,
            partition_hold: self.hold.active(),
            cpu_seconds: cpu_ms() as f64 / 1000.0,
            bpf_run_ns: self.src.bpf_run_ns(),
        });
    }

    /// The live view of this agent's state right now.
    pub fn status_report(&mut self) -> crate::status::Report {
        let policy = std::sync::Arc::clone(&self.policy);
        let snaps: Vec<Snapshot> = self.last.values().map(|s| s.snap.clone()).collect();
        let mut rows = Vec::with_capacity(snaps.len());
        for s in &snaps {
            let sel = select(&policy, &mut self.owners, s);
            let active = self
                .tracker
                .active(s.cookie)
                .or_else(|| self.tracker.active_recv(s.cookie))
                .map(|a| a.class);
            let f = self.socket_fields(
                s,
                active.unwrap_or(StallClass::NoAck),
                s.since_progress_ms(),
                sel.rule.map(|r| r.name.as_str()),
                sel.action,
                None,
            );
            rows.push(crate::status::Row {
                cookie: s.cookie,
                local: s.local.to_string(),
                remote: s.remote.to_string(),
                class: active.map(|c| c.as_str().to_string()),
                stalled_for_ms: s.since_progress_ms(),
                queued_bytes: s.queued_bytes,
                rule: f.rule.clone(),
                action: sel.action.as_str().to_string(),
                pid: s.pid,
                comm: s.comm.map(|c| c.to_string()),
                owner: owner_of(&f),
            });
        }
        crate::status::Report {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            mode: serde_json::to_value(self.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            tick_ms: self.cfg.tick.as_millis() as u64,
            policy: policy.source.as_ref().map(|p| p.display().to_string()),
            sockets_tracked: self.last.len() as u64,
            map_capacity: self.src.max_sockets(),
            stalls_active: self.tracker.stalled_count() as u64,
            partition_hold: self.hold.active(),
            resets_done: self.counts.done,
            resets_failed: self.counts.failed,
            resets_skipped: self.counts.skipped,
            sockets: crate::status::order(rows),
            recent_resets: self.recent.rows(),
        }
    }

    /// Answer one `tcpstall top` connection: the report is built now, between ticks; the
    /// write happens on its own task, so a stuck reader never delays a tick.
    pub(super) fn answer_status(&mut self, mut conn: tokio::net::UnixStream) {
        let body = serde_json::to_vec(&self.status_report()).unwrap_or_default();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            })
            .await;
        });
    }

    pub(super) fn emit_stats(&mut self) -> Result<()> {
        self.last_stats = Instant::now();
        let c = self.src.counters();
        self.out.emit(&Event::Stats(event::StatsFields {
            sockets_tracked: self.last.len() as u64,
            map_capacity: self.src.max_sockets(),
            map_full: c.map_full,
            map_evicted: self.map_evicted,
            map_stale: c.stale + self.map_stale,
            netns_cached: self.kern.cached_netns() as u64,
            partition_hold: self.hold.active(),
            close_notes_lost: c.close_notes_lost,
            events_lost: self.out.events_lost(),
            events_written: self.out.events_written(),
            stalls_active: self.tracker.stalled_count() as u64,
            sweep_us: self.last_sweep_us,
            map_read_us: self.last_read_us,
            proc_walks: self.holders.walks - self.holders.kernel_passes,
            holder_passes: self.holders.kernel_passes,
            read_lookups: self.read_lookups,
            progress_lookups: self.progress_lookups,
            cpu_ms: cpu_ms(),
            bpf_run_ns: self.src.bpf_run_ns(),
            resets: event::ResetCounts {
                done: self.counts.done,
                failed: self.counts.failed,
                skipped: self.counts.skipped,
                retried: self.counts.retried,
            },
            calibration: self
                .calibration
                .rows()
                .into_iter()
                .map(|r| event::CalibrationEntry {
                    rule: (r.rule != NO_RULE).then_some(r.rule),
                    class: r.class,
                    episodes: r.episodes,
                })
                .collect(),
        }));
        Ok(())
    }
}
