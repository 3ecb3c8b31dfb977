//! The running agent's live view, for `tcpstall top`: the agent answers each connection on a
//! local unix socket (root only) with one JSON [`Report`] built from its own state between
//! ticks; `tcpstall top` renders it. No second copy of the programs is ever attached.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the agent listens by default.
pub const DEFAULT_SOCKET: &str = "/run/tcpstall/status.sock";
/// Recent resets kept for the view.
pub const RECENT_RESETS: usize = 50;
/// Sockets listed at most (stalled first, then the longest without progress).
pub const MAX_ROWS: usize = 500;

/// One tracked socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub cookie: u64,
    pub local: String,
    pub remote: String,
    /// Stall class, or null when tracked but not stalled.
    pub class: Option<String>,
    /// Time since the socket's last ACK progress, ms.
    pub stalled_for_ms: u64,
    pub queued_bytes: u64,
    pub rule: Option<String>,
    pub action: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Pod (`namespace/name`), else container id (12 digits), else cgroup path.
    pub owner: Option<String>,
}

/// One reset done by the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResetRow {
    /// RFC 3339 time.
    pub ts: String,
    pub cookie: u64,
    pub local: String,
    pub remote: String,
    pub class: String,
    pub rule: Option<String>,
    pub stalled_for_ms: u64,
    pub owner: Option<String>,
}

/// What the agent answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub pid: u32,
    pub version: String,
    pub uptime_ms: u64,
    pub mode: String,
    pub tick_ms: u64,
    pub policy: Option<String>,
    pub sockets_tracked: u64,
    pub map_capacity: u32,
    pub stalls_active: u64,
    pub partition_hold: bool,
    pub resets_done: u64,
    pub resets_failed: u64,
    pub resets_skipped: u64,
    /// Stalled sockets first (longest first), then tracked ones; at most [`MAX_ROWS`].
    pub sockets: Vec<Row>,
    /// Newest first.
    pub recent_resets: Vec<ResetRow>,
}

/// The last [`RECENT_RESETS`] resets.
#[derive(Debug, Default)]
pub struct Recent(VecDeque<ResetRow>);

impl Recent {
    pub fn push(&mut self, r: ResetRow) {
        if self.0.len() == RECENT_RESETS {
            self.0.pop_back();
        }
        self.0.push_front(r);
    }

    pub fn rows(&self) -> Vec<ResetRow> {
        self.0.iter().cloned().collect()
    }
}

/// Order rows for the view and cut them to [`MAX_ROWS`]: stalled first, longest first.
pub fn order(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| {
        b.class
            .is_some()
            .cmp(&a.class.is_some())
            .then(b.stalled_for_ms.cmp(&a.stalled_for_ms))
            .then(a.cookie.cmp(&b.cookie))
    });
    rows.truncate(MAX_ROWS);
    rows
}

/// Ask the agent at `socket` for its report.
pub fn fetch(socket: &Path, timeout: Duration) -> Result<Report, String> {
    let hint = "is `tcpstall run` running on this node (as root)? It listens there unless \
                started with --status-socket none";
    let s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the agent at {}: {e}; {hint}",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(timeout)).ok();
    // Nothing is sent: connecting is the request (unread bytes at the agent's close would
    // reset the connection before the answer is read).
    let mut buf = Vec::new();
    s.take(64 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the agent's answer on {}: {e}", socket.display()))?;
    serde_json::from_slice(&buf).map_err(|e| {
        format!(
            "the agent at {} answered something unreadable: {e}",
            socket.display()
        )
    })
}

fn ms(ms: u64) -> String {
    crate::classify::fmt_ms(ms)
}

fn bytes(n: u64) -> String {
    const K: u64 = 1024;
    match n {
        n if n >= K * K * K => format!("{:.1}G", n as f64 / (K * K * K) as f64),
        n if n >= K * K => format!("{:.1}M", n as f64 / (K * K) as f64),
        n if n >= K => format!("{:.1}K", n as f64 / K as f64),
        n => format!("{n}B"),
    }
}

fn cut(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The view as text, `width` columns, at most `height` lines (0 = no limit).
pub fn render(r: &Report, width: usize, height: usize) -> String {
    let mut out = Vec::new();
    out.push(format!(
        "tcpstall {} pid {} up {}  mode {}  tick {}  policy {}",
        r.version,
        r.pid,
        ms(r.uptime_ms),
        r.mode,
        ms(r.tick_ms),
        r.policy.as_deref().unwrap_or("(defaults)")
    ));
    out.push(format!(
        "tracked {}/{}  stalled {}  resets {} done, {} failed, {} skipped{}",
        r.sockets_tracked,
        r.map_capacity,
        r.stalls_active,
        r.resets_done,
        r.resets_failed,
        r.resets_skipped,
        if r.partition_hold {
            "  PARTITION HOLD: resets held"
        } else {
            ""
        }
    ));
    out.push(String::new());
    out.push(format!(
        "{:<12} {:>9} {:>8} {:<22} {:<22} {:<14} {:<7} {}",
        "CLASS", "STALLED", "QUEUED", "LOCAL", "REMOTE", "RULE", "ACTION", "OWNER"
    ));
    let budget = if height == 0 {
        usize::MAX
    } else {
        height.saturating_sub(8 + r.recent_resets.len().min(5))
    };
    for (listed, s) in r.sockets.iter().enumerate() {
        if listed >= budget {
            out.push(format!("… {} more", r.sockets.len() - listed));
            break;
        }
        let owner = match (&s.owner, &s.comm, s.pid) {
            (Some(o), Some(c), Some(p)) => format!("{o} {c}[{p}]"),
            (Some(o), _, _) => o.clone(),
            (None, Some(c), Some(p)) => format!("{c}[{p}]"),
            _ => "-".into(),
        };
        out.push(format!(
            "{:<12} {:>9} {:>8} {:<22} {:<22} {:<14} {:<7} {}",
            s.class.as_deref().unwrap_or("-"),
            if s.class.is_some() {
                ms(s.stalled_for_ms)
            } else {
                "-".into()
            },
            bytes(s.queued_bytes),
            cut(&s.local, 22),
            cut(&s.remote, 22),
            cut(s.rule.as_deref().unwrap_or("(defaults)"), 14),
            s.action,
            owner
        ));
    }
    if r.sockets.is_empty() {
        out.push("(no socket has data queued)".into());
    }
    out.push(String::new());
    out.push("RECENT RESETS".into());
    if r.recent_resets.is_empty() {
        out.push("(none)".into());
    }
    for x in r
        .recent_resets
        .iter()
        .take(if height == 0 { usize::MAX } else { 5 })
    {
        out.push(format!(
            "{}  {:<12} after {:>8}  {} -> {}  rule {}{}",
            x.ts,
            x.class,
            ms(x.stalled_for_ms),
            x.local,
            x.remote,
            x.rule.as_deref().unwrap_or("(defaults)"),
            x.owner
                .as_deref()
                .map(|o| format!("  {o}"))
                .unwrap_or_default()
        ));
    }
    out.iter()
        .map(|l| cut(l, width.max(20)))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The socket path the agent was told to use: `None` for `none`.
pub fn socket_path(arg: &str) -> Option<PathBuf> {
    (arg != "none").then(|| PathBuf::from(arg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cookie: u64, class: Option<&str>, stalled: u64) -> Row {
        Row {
            cookie,
            local: "10.0.0.1:8080".into(),
            remote: format!("10.9.0.{cookie}:40000"),
            class: class.map(str::to_string),
            stalled_for_ms: stalled,
            queued_bytes: 70_000,
            rule: Some("ws".into()),
            action: "reset".into(),
            pid: Some(42),
            comm: Some("granian".into()),
            owner: Some("payments/api-1".into()),
        }
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            pid: 1,
            version: "0.1.0".into(),
            uptime_ms: 61_000,
            mode: "enforce".into(),
            tick_ms: 1000,
            policy: None,
            sockets_tracked: rows.len() as u64,
            map_capacity: 32768,
            stalls_active: 1,
            partition_hold: false,
            resets_done: 2,
            resets_failed: 0,
            resets_skipped: 1,
            sockets: order(rows),
            recent_resets: vec![ResetRow {
                ts: "2026-12-02T10:00:00.000Z".into(),
                cookie: 9,
                local: "10.0.0.1:8080".into(),
                remote: "10.9.0.9:1".into(),
                class: "no_ack".into(),
                rule: Some("ws".into()),
                stalled_for_ms: 30_000,
                owner: None,
            }],
        }
    }

    #[test]
    fn stalled_sockets_come_first_longest_first() {
        let r = order(vec![
            row(1, None, 9000),
            row(2, Some("no_ack"), 3000),
            row(3, Some("zero_window"), 5000),
        ]);
        let order: Vec<u64> = r.iter().map(|r| r.cookie).collect();
        assert_eq!(order, vec![3, 2, 1]);
        let many: Vec<Row> = (0..2000).map(|i| row(i, None, i)).collect();
        assert_eq!(super::order(many).len(), MAX_ROWS);
    }

    #[test]
    fn the_view_shows_class_stall_queue_owner_and_resets() {
        let text = render(
            &report(vec![row(3, Some("zero_window"), 5000), row(1, None, 100)]),
            160,
            0,
        );
        assert!(text.contains("tracked 2/32768  stalled 1"), "{text}");
        let line = text.lines().find(|l| l.contains("10.9.0.3:40000")).unwrap();
        assert!(line.starts_with("zero_window"), "{line}");
        assert!(line.contains("5.0s") || line.contains("5s"), "{line}");
        assert!(line.contains("68.4K"), "{line}");
        assert!(line.contains("payments/api-1 granian[42]"), "{line}");
        assert!(text.contains("RECENT RESETS"));
        assert!(text.contains("no_ack"));
        // Narrow terminals cut lines; short ones cut the list.
        assert!(render(&report(vec![row(3, None, 1)]), 40, 0)
            .lines()
            .all(|l| l.chars().count() <= 40));
        let rows: Vec<Row> = (0..100).map(|i| row(i, Some("no_ack"), i)).collect();
        let short = render(&report(rows), 160, 20);
        assert!(short.lines().count() <= 20, "{short}");
        assert!(short.contains("more"));
    }

    #[test]
    fn reports_round_trip_as_json() {
        let r = report(vec![row(3, Some("zero_window"), 5000)]);
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&j).unwrap(), r);
    }
}
