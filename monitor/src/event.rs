//! Event encoding: what `tcpstall run` prints.
//!
//! The agent streams NDJSON (one JSON object per line) on stdout or to `--output FILE`. Every
//! line carries a common header:
//!
//! * `"schema": 1` — [`SCHEMA_VERSION`]; bumped on any incompatible change,
//! * `"event": "<type>"` — one of the names in [`schema()`],
//! * `"ts"` — RFC 3339 UTC with millisecond precision, e.g. `2026-11-23T11:02:03.123Z`,
//!
//! followed by the fields of that event type. The typed [`Event`] is the only way the agent
//! produces lines; [`schema()`] is the hand-written description of the same format (rendered
//! for the README by [`schema_markdown`]), and [`validate`] checks a parsed line against that
//! description. The unit tests below serialize every [`Event`] variant and run it through
//! [`validate`], so code and documentation cannot drift apart silently.

use crate::classify::StallClass;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Version of the event format, emitted as `"schema"` on every line.
pub const SCHEMA_VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Typed events
// ---------------------------------------------------------------------------------------------

/// Address family of a socket, as reported in `family`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// AF_INET.
    Inet,
    /// AF_INET6 (including IPv4-mapped addresses on dual-stack sockets).
    Inet6,
}

impl Family {
    /// Every variant, in schema order.
    pub const ALL: [Family; 2] = [Family::Inet, Family::Inet6];

    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Inet6 => "inet6",
        }
    }
}

/// What the policy decided for a stalled socket, reported as `action`: the policy's own type.
pub use crate::policy::Action;

/// How the agent runs, reported in `agent_started.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Detect and report; never reset.
    Observe,
    /// Reset sockets whose rule says `reset`.
    Enforce,
    /// Go through every enforcement decision but skip the reset itself (`reset_skipped`
    /// with guard `dry_run`).
    DryRun,
}

impl Mode {
    /// Every variant, in schema order.
    pub const ALL: [Mode; 3] = [Mode::Observe, Mode::Enforce, Mode::DryRun];

    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry_run",
        }
    }
}

/// Why a reset the policy asked for was not performed, reported as `reset_skipped.guard`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipGuard {
    /// The agent runs with `--dry-run`.
    DryRun,
    /// A protected port: our service on a listed local port, or our outgoing connection to
    /// a listed remote port.
    ProtectedPort,
    /// The reset rate limit is exhausted.
    RateLimit,
    /// The socket made progress between the decision and the reset.
    NotStalledAnymore,
    /// The SOCK_DESTROY path does not work on this host (see `agent_started.reset_path`).
    ResetUnavailable,
    /// The cookie now names a different connection than the one judged stalled.
    IdentityChanged,
    /// The socket is an orphan (its application closed it) and the start-up self-test found
    /// that this kernel mishandles destroying orphans (see `agent_started.orphan_reset`).
    OrphanUnsafe,
    /// The socket's remote network has used its share of the rule's reset budget.
    NetworkLimit,
    /// ACKs stopped from (almost) every remote network at once: the node's own path is
    /// down, and resets wait (see the `partition_hold` event).
    PartitionHold,
}

impl SkipGuard {
    /// Every variant, in schema order.
    pub const ALL: [SkipGuard; 9] = [
        SkipGuard::DryRun,
        SkipGuard::ProtectedPort,
        SkipGuard::RateLimit,
        SkipGuard::NotStalledAnymore,
        SkipGuard::ResetUnavailable,
        SkipGuard::IdentityChanged,
        SkipGuard::OrphanUnsafe,
        SkipGuard::NetworkLimit,
        SkipGuard::PartitionHold,
    ];

    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipGuard::DryRun => "dry_run",
            SkipGuard::ProtectedPort => "protected_port",
            SkipGuard::RateLimit => "rate_limit",
            SkipGuard::NotStalledAnymore => "not_stalled_anymore",
            SkipGuard::ResetUnavailable => "reset_unavailable",
            SkipGuard::IdentityChanged => "identity_changed",
            SkipGuard::OrphanUnsafe => "orphan_unsafe",
            SkipGuard::NetworkLimit => "network_limit",
            SkipGuard::PartitionHold => "partition_hold",
        }
    }
}

/// How one kernel hook is attached, in `agent_started.hooks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookReport {
    /// The hook: `send`, `send_wait`, `send_pages`, `ack`, `retransmit`, `read`, `state`.
    pub hook: String,
    /// The attach point used, e.g. `tp_btf/tcp_probe` or `fentry/tcp_sendmsg_locked`;
    /// `None` when the hook is not attached (not needed on this kernel, or unavailable).
    pub attach: Option<String>,
    /// Why this attach point (or none), e.g. `tracepoint tcp_sendmsg_locked absent:
    /// fentry tcp_sendmsg_locked`.
    pub why: String,
}

/// Whether destroying an orphaned socket is handled correctly by this kernel (start-up
/// self-test on an orphan of the agent's own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrphanReset {
    /// `true`: orphans may be reset; `false`: orphans are never reset (guard `orphan_unsafe`).
    pub safe: bool,
    /// What the self-test saw.
    pub detail: String,
}

/// What the agent took over from the previous one (restart or upgrade), in
/// `agent_started.state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateReport {
    /// The previous agent's pinned kernel map was adopted: stall clocks and the kernel's
    /// gap rings carry on.
    pub adopted: bool,
    /// The previous agent's state file was read back: cadence histories, rate-limit
    /// windows, reset decisions.
    pub restored: bool,
    /// What was kept and where it lives, or why the agent started fresh.
    pub detail: String,
}

/// Whether the SOCK_DESTROY reset path was found working at startup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetPath {
    /// `true` when a probe reset of a test socket succeeded.
    pub works: bool,
    /// Human-readable result of the probe (what was tried, what failed and how to fix it).
    pub detail: String,
}

/// Why the classifier judged the socket stalled; the numbers behind the decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EvidenceFields {
    /// No-progress episodes on this socket that ended on their own (it recovered).
    pub recovered_episodes: u32,
    /// Longest such recovered gap, in milliseconds (0 when none).
    pub longest_gap_ms: u64,
    /// Bytes acked by the peer during the last measurement window.
    pub bytes_acked_last_window: u64,
    /// The threshold actually applied to this socket, in milliseconds.
    pub effective_threshold_ms: u64,
    /// Why the threshold has that value (e.g. rule default, raised after recovered gaps).
    pub threshold_reason: String,
}

/// The socket object shared by every socket event, flattened into the top level of the line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SocketFields {
    /// Kernel socket cookie (stable for the socket's life, unique per boot).
    pub cookie: u64,
    /// Network namespace inode number.
    pub netns: u32,
    /// Address family.
    pub family: Family,
    /// Local address, `ip:port` or `[v6]:port`.
    pub local: SocketAddr,
    /// Remote address, `ip:port` or `[v6]:port`.
    pub remote: SocketAddr,
    /// Process that last wrote to the socket; `None` until seen in process context.
    pub pid: Option<u32>,
    /// That process's command name.
    pub comm: Option<String>,
    /// cgroup v2 id of that process.
    pub cgroup_id: Option<u64>,
    /// cgroup v2 path of that process, when it could be resolved.
    pub cgroup: Option<String>,
    /// Container of that process, when its cgroup path shows one (Kubernetes, Docker,
    /// Podman layouts).
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker`, `podman` or `kubernetes` (cgroupfs-driver pods).
    pub container_runtime: Option<String>,
    /// Kubernetes pod UID, when the cgroup path shows a pod.
    pub pod_uid: Option<String>,
    /// The pod's namespace and name, from the kubelet's `/var/log/pods` directories.
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// Kind of stall.
    pub class: StallClass,
    /// Bytes written by the app and not yet acked by the peer.
    pub queued_bytes: u64,
    /// Bytes sent on the wire and not yet acked.
    pub unacked_bytes: u64,
    /// Peer's advertised send window.
    pub snd_wnd: u32,
    /// Retransmissions of the current unacked segment.
    pub retransmits: u32,
    /// How long the socket has been without progress, in milliseconds.
    pub stalled_for_ms: u64,
    /// Name of the policy rule that selected the socket; `None` = policy defaults.
    pub rule: Option<String>,
    /// What the policy decided.
    pub action: Action,
    /// The numbers behind the classification.
    pub evidence: EvidenceFields,
    /// Received bytes the local app has not read.
    pub recv_unread: u64,
}

/// Cumulative enforcement counters in `stats.resets`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResetCounts {
    /// Sockets reset (`socket_reset` events).
    pub done: u64,
    /// Resets the kernel refused (`reset_failed` events).
    pub failed: u64,
    /// Resets a guard prevented (`reset_skipped` events).
    pub skipped: u64,
    /// Attempts that failed with a transient error and were scheduled again.
    pub retried: u64,
}

/// Distribution of observed stall durations for one (rule, class) pair, used to calibrate
/// thresholds before enabling enforcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CalibrationEntry {
    /// Policy rule name; `None` = policy defaults.
    pub rule: Option<String>,
    /// Stall class.
    pub class: StallClass,
    /// Stall episodes observed.
    pub count: u64,
    /// Longest episode, in milliseconds.
    pub max_ms: u64,
    /// Median episode length, in milliseconds.
    pub p50_ms: u64,
    /// 99th percentile episode length, in milliseconds.
    pub p99_ms: u64,
}

/// Body of the periodic `stats` event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsFields {
    /// Sockets currently in the tracking map.
    pub sockets_tracked: u64,
    /// Capacity of the tracking map.
    pub map_capacity: u32,
    /// Inserts refused because the map was full (cumulative).
    pub map_full: u64,
    /// Entries the agent removed to make room in a (nearly) full map (cumulative).
    pub map_evicted: u64,
    /// Entries removed because their socket was gone or had nothing queued any more while
    /// the map still held it (cumulative).
    pub map_stale: u64,
    /// Network namespaces the reset path holds a netlink socket in (released when idle).
    pub netns_cached: u64,
    /// Resets are held: ACKs stopped from (almost) every remote network at once.
    pub partition_hold: bool,
    /// Socket-close notifications lost (cumulative).
    pub close_notes_lost: u64,
    /// Events the agent failed to write (cumulative).
    pub events_lost: u64,
    /// Lines written before this one since `agent_started` (which is line 0): in a complete
    /// stream this is the line's own 0-based position, so a gap or repeat shows up here.
    pub events_written: u64,
    /// Sockets currently stalled.
    pub stalls_active: u64,
    /// Wall-clock cost of the last tick, in microseconds.
    pub sweep_us: u64,
    /// Agent CPU time (user + system) since start, in milliseconds.
    pub cpu_ms: u64,
    /// In-kernel run time of the agent's BPF programs, in nanoseconds; `None` unless
    /// `kernel.bpf_stats_enabled` is on.
    pub bpf_run_ns: Option<u64>,
    /// Cumulative enforcement counters.
    pub resets: ResetCounts,
    /// Observed stall durations per (rule, class).
    pub calibration: Vec<CalibrationEntry>,
}

/// One socket of a `reset_intent` line: enough to find it in the `socket_reset` /
/// `reset_failed` lines that follow, or in the kernel (`ss -e`) if they never came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IntentSocket {
    /// Kernel socket cookie.
    pub cookie: u64,
    /// Network namespace inode number.
    pub netns: u32,
    /// Local address.
    pub local: SocketAddr,
    /// Remote address.
    pub remote: SocketAddr,
    /// Stall class that led to the reset.
    pub class: StallClass,
    /// Policy rule that asked for it; `None` = policy defaults.
    pub rule: Option<String>,
}

/// One line of agent output. Serializes (internally tagged by `"event"`) to the body of the
/// line; [`Event::to_json_line`] adds the `schema` and `ts` header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The agent is up: hooks attached, policy loaded.
    AgentStarted {
        /// Agent version.
        version: String,
        /// Agent process id.
        pid: u32,
        /// Kernel release (`uname -r`).
        kernel: String,
        /// Per hook, the attach point the running kernel offered and why.
        hooks: Vec<HookReport>,
        /// What detection lost on this kernel because a hook could not be attached (empty:
        /// nothing lost).
        degraded: Vec<String>,
        /// How the kernel side keys sockets: `cookie`, or `address` where the programs
        /// cannot read socket cookies (tracing programs before Linux 5.12; kprobes always).
        socket_key: String,
        /// Where the kernel struct offsets came from.
        offsets_source: String,
        /// Run mode.
        mode: Mode,
        /// Result of the startup reset-path probe.
        reset_path: ResetPath,
        /// Result of the startup orphan-reset self-test.
        orphan_reset: OrphanReset,
        /// Policy file in use; `None` = built-in defaults.
        policy: Option<String>,
        /// Tick period in milliseconds.
        tick_ms: u64,
        /// Capacity of the per-socket tracking map.
        max_sockets: u32,
        /// What was kept from the previous agent.
        state: StateReport,
    },
    /// A socket crossed its stall threshold.
    StallStarted(SocketFields),
    /// A stalled socket made progress again.
    StallCleared(SocketFields),
    /// A stalled socket was closed (by the application or the kernel) while stalled.
    StallClosed(SocketFields),
    /// The agent destroyed a stalled socket.
    SocketReset {
        /// The socket, as judged at decision time.
        #[serde(flatten)]
        socket: SocketFields,
        /// Bytes that were still queued when the socket was destroyed (lost data).
        bytes_still_queued: u64,
        /// Microseconds from the reset decision to the kernel's acknowledgement.
        reset_latency_us: u64,
    },
    /// The kernel refused to destroy a stalled socket.
    ResetFailed {
        /// The socket.
        #[serde(flatten)]
        socket: SocketFields,
        /// errno returned by SOCK_DESTROY.
        errno: i32,
        /// Symbolic errno name, e.g. `ENOENT`.
        error: String,
        /// What this errno means here and what to do about it.
        meaning: String,
        /// A transient error: the reset is tried again in this many ms. `None`: final.
        retry_in_ms: Option<u64>,
    },
    /// A reset the policy asked for was not performed because a guard stopped it.
    ResetSkipped {
        /// The socket.
        #[serde(flatten)]
        socket: SocketFields,
        /// Which guard.
        guard: SkipGuard,
        /// Specifics (which port, the limit, what changed).
        detail: String,
    },
    /// Written (one `write(2)`) right before a batch of SOCK_DESTROY requests goes to the
    /// kernel: the sockets about to be reset. Their `socket_reset` / `reset_failed` lines
    /// follow the batch.
    ResetIntent {
        /// The sockets of the batch, in request order.
        sockets: Vec<IntentSocket>,
    },
    /// Periodic agent health and calibration counters.
    Stats(StatsFields),
    /// ACKs stopped from (almost) every remote network at once (the node's own path is
    /// down, not its peers): resets are held; or the hold ended.
    PartitionHold {
        /// `started`, `ended` (ACKs came back) or `expired` (held for
        /// `partition_max_hold`; resets resume under the budgets).
        state: String,
        /// Remote networks with data in flight and no ACK for a second.
        silent_networks: u64,
        /// Remote networks that answered within the last 5 s.
        alive_networks: u64,
        /// Silent networks with their silent socket counts, largest first (at most 16).
        networks: Vec<String>,
        /// Resets held during this hold (on `ended` / `expired`).
        resets_held: u64,
    },
    /// Many peers of one remote network went silent together while the rest of the node is
    /// fine: their `no_ack` stalls are reset as they cross their thresholds, outside the
    /// rule and network budgets. Once per episode.
    MassDisconnect {
        /// The remote network (IPv4 /24, IPv6 /64).
        network: String,
        /// Its silent sockets at detection.
        silent_sockets: u64,
    },
    /// A threshold looks mis-set for the observed traffic (calibration aid).
    ThresholdWarning {
        /// Policy rule name; `None` = policy defaults.
        rule: Option<String>,
        /// Stall class.
        class: StallClass,
        /// Threshold in effect, in milliseconds.
        threshold_ms: u64,
        /// Stall duration observed, in milliseconds.
        observed_ms: u64,
        /// The socket that triggered the warning.
        cookie: u64,
        /// Whether enforcement would have reset this socket.
        would_reset: bool,
        /// What to change, in words.
        advice: String,
    },
    /// Writing to the event output failed and works again: how many events were lost.
    /// Written right after the first line that could be written again.
    EventsLost {
        /// Events lost since the last `events_lost` line (or since the start).
        count: u64,
        /// Events lost since the start (as `stats.events_lost`).
        total: u64,
    },
    /// SIGHUP: the `--output` file was reopened (log rotation). On success this is the
    /// first line of the new file; on failure the agent keeps writing to the old one.
    OutputReopened {
        /// The output path.
        output: String,
        /// Whether the path could be opened.
        ok: bool,
        /// Why not (what failed, why, what to do); `None` on success.
        error: Option<String>,
    },
    /// SIGHUP: the policy file was read again. A valid file replaces the policy in force
    /// (per-socket state is kept); an invalid one is refused and the old policy stays.
    PolicyReload {
        /// The policy file; `None` when the agent runs without `--policy` (nothing to reload).
        policy: Option<String>,
        /// Whether the new policy is in force.
        ok: bool,
        /// Why it was refused: one `FILE:LINE:COL: …` line per problem, as `policy check`
        /// prints them. Empty when `ok`.
        problems: Vec<String>,
        /// Valid but dangerous settings in the new file (`policy check` warnings).
        warnings: Vec<String>,
        /// Run mode in force after the reload.
        mode: Mode,
        /// What changed, or what did not take effect.
        detail: String,
    },
    /// The agent is exiting.
    AgentStopped {
        /// Why (signal, error message).
        reason: String,
        /// Time since `agent_started`, in milliseconds.
        uptime_ms: u64,
    },
}

/// The header and body of one output line, in output order.
#[derive(Serialize)]
struct Line<'a> {
    schema: u32,
    ts: String,
    #[serde(flatten)]
    event: &'a Event,
}

/// Latest instant `humantime` can format (9999-12-31T23:59:59.999Z).
const MAX_FORMATTABLE_SECS: u64 = 253_402_300_799;

/// RFC 3339 UTC with milliseconds. A clock outside 1970..=9999 (a badly set RTC) is clamped to
/// the nearest representable instant rather than aborting the agent.
fn format_ts(ts: SystemTime) -> String {
    let max = UNIX_EPOCH + Duration::from_millis(MAX_FORMATTABLE_SECS * 1000 + 999);
    let ts = ts.clamp(UNIX_EPOCH, max);
    humantime::format_rfc3339_millis(ts).to_string()
}

impl Event {
    /// The `"event"` name of this variant.
    pub fn name(&self) -> &'static str {
        match self {
            Event::AgentStarted { .. } => "agent_started",
            Event::StallStarted(_) => "stall_started",
            Event::StallCleared(_) => "stall_cleared",
            Event::StallClosed(_) => "stall_closed",
            Event::SocketReset { .. } => "socket_reset",
            Event::ResetFailed { .. } => "reset_failed",
            Event::ResetSkipped { .. } => "reset_skipped",
            Event::ResetIntent { .. } => "reset_intent",
            Event::Stats(_) => "stats",
            Event::PartitionHold { .. } => "partition_hold",
            Event::MassDisconnect { .. } => "mass_disconnect",
            Event::ThresholdWarning { .. } => "threshold_warning",
            Event::EventsLost { .. } => "events_lost",
            Event::OutputReopened { .. } => "output_reopened",
            Event::PolicyReload { .. } => "policy_reload",
            Event::AgentStopped { .. } => "agent_stopped",
        }
    }

    /// The socket this event is about, for socket events.
    pub fn socket(&self) -> Option<&SocketFields> {
        match self {
            Event::StallStarted(s) | Event::StallCleared(s) | Event::StallClosed(s) => Some(s),
            Event::SocketReset { socket, .. }
            | Event::ResetFailed { socket, .. }
            | Event::ResetSkipped { socket, .. } => Some(socket),
            Event::AgentStarted { .. }
            | Event::ResetIntent { .. }
            | Event::Stats(_)
            | Event::PartitionHold { .. }
            | Event::MassDisconnect { .. }
            | Event::ThresholdWarning { .. }
            | Event::EventsLost { .. }
            | Event::OutputReopened { .. }
            | Event::PolicyReload { .. }
            | Event::AgentStopped { .. } => None,
        }
    }

    /// The complete NDJSON line for this event stamped with `ts`, without the trailing
    /// newline. Strings are JSON-escaped, so the result never contains a raw newline.
    pub fn to_json_line(&self, ts: SystemTime) -> String {
        let line = Line {
            schema: SCHEMA_VERSION,
            ts: format_ts(ts),
            event: self,
        };
        // serde_json only fails on non-string map keys or a failing custom Serialize impl;
        // these types have neither, so failure here is a programming error.
        serde_json::to_string(&line).expect("event types always serialize to JSON")
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// Writes events as NDJSON: each line (with its newline) in one `write(2)` on an unbuffered
/// descriptor, so a line is never split across files by log rotation and never interleaved
/// with a half of another. Counts the lines it could not write (`stats.events_lost`) and, once
/// writing works again, says so in an `events_lost` line. A write error is returned to the
/// caller, who decides (the agent logs it and keeps running: [`EventWriter::emit`]).
pub struct EventWriter {
    out: Box<dyn Write + Send>,
    /// For `--output`: the same open file, to cut a partly written line off again.
    file: Option<std::fs::File>,
    /// For `--output`: the path, to reopen on SIGHUP.
    path: Option<PathBuf>,
    dest: String,
    lost: u64,
    /// Lost since the last `events_lost` line.
    unreported: u64,
    written: u64,
    /// The last write failed (for logging the transitions once, not every line).
    failing: bool,
    /// A previous write failed after emitting part of a line that could not be cut off; the
    /// next line must start on a fresh line so only the broken one is unparsable.
    broken_line: bool,
}

const OUTPUT_FIX: &str = "pass the path of a regular file (created with mode 0600 if missing; \
                          events are appended), or omit --output to write events to stdout";

fn refuse_output(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "cannot use {} as the event output: it is {what}, and tcpstall writes events only \
             to a regular file (a symbolic link could point anywhere; a FIFO, device or \
             directory could block the agent or swallow events); {OUTPUT_FIX}",
            path.display()
        ),
    )
}

/// Open `--output` safely: a regular file only (checked before opening, so a device is
/// never opened, and again on the open descriptor), never through a symbolic link
/// (`O_NOFOLLOW`), appending, created with mode 0600.
pub fn open_output(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if let Some(what) = crate::files::not_regular(&m.file_type()) {
            return Err(refuse_output(path, what));
        }
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO swapped in after the check must not block the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                return refuse_output(path, "a symbolic link");
            }
            let why = match e.kind() {
                io::ErrorKind::NotFound => "its directory does not exist".to_string(),
                io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                _ => e.to_string(),
            };
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open event output {} for appending: {why}; check that the \
                     directory exists and is writable, or omit --output to write to stdout",
                    path.display()
                ),
            )
        })?;
    let m = file.metadata()?;
    if let Some(what) = crate::files::not_regular(&m.file_type()) {
        return Err(refuse_output(path, what));
    }
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fd = file.as_raw_fd();
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(file)
}

impl EventWriter {
    /// Writer to standard output.
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()), "stdout")
    }

    /// Writer for `--output`: `None` is standard output, `Some(path)` a regular file opened
    /// with [`open_output`].
    pub fn open(path: Option<&Path>) -> io::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::stdout());
        };
        let file = open_output(path)?;
        let mut w = Self::new(Box::new(file.try_clone()?), &path.display().to_string());
        w.file = Some(file);
        w.path = Some(path.to_path_buf());
        Ok(w)
    }

    /// Writer over any sink; `dest` names it in error messages.
    pub fn new(out: Box<dyn Write + Send>, dest: &str) -> Self {
        EventWriter {
            out,
            file: None,
            path: None,
            dest: dest.to_string(),
            lost: 0,
            unreported: 0,
            written: 0,
            failing: false,
            broken_line: false,
        }
    }

    /// The `--output` path; `None` for stdout and other sinks.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Open the `--output` path again (after log rotation moved the file away) and write
    /// to the new file from now on; counters carry over. On failure the old file stays in
    /// use. `None` for stdout (nothing to reopen).
    pub fn reopen(&mut self) -> Option<io::Result<()>> {
        let path = self.path.clone()?;
        Some(open_output(&path).and_then(|file| {
            self.out = Box::new(file.try_clone()?);
            self.file = Some(file);
            // A fresh file: nothing half-written in it.
            self.broken_line = false;
            Ok(())
        }))
    }

    /// Write `event` stamped with the current time.
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        self.write_at(event, SystemTime::now())
    }

    /// Write `event`; on failure log it (once per outage, and once when writing works
    /// again) and carry on: the loss is counted in [`events_lost`](Self::events_lost) and
    /// reported by an `events_lost` line once the output works again. What the agent uses:
    /// a failed write never stops it.
    pub fn emit(&mut self, event: &Event) {
        match self.write(event) {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    log::warn!(
                        "event output {} works again ({} events lost in all)",
                        self.dest,
                        self.lost
                    );
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    log::error!(
                        "{e}; the agent keeps running and enforcing, counts the events it \
                         cannot write (stats.events_lost) and writes an events_lost line once \
                         the output works again; free space on the output's filesystem, or \
                         read the agent's stdout"
                    );
                }
            }
        }
    }

    /// Write `event` stamped with `ts`. On failure the event is counted in
    /// [`events_lost`](Self::events_lost) and the error says where writing failed. After a
    /// failure, the first line written successfully is followed by an `events_lost` line.
    pub fn write_at(&mut self, event: &Event, ts: SystemTime) -> io::Result<()> {
        match self.put(event, ts) {
            Ok(()) => {
                self.written += 1;
                if self.unreported > 0 {
                    let note = Event::EventsLost {
                        count: self.unreported,
                        total: self.lost,
                    };
                    // Not counted if it fails: the next success reports the losses again.
                    if self.put(&note, ts).is_ok() {
                        self.written += 1;
                        self.unreported = 0;
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.lost += 1;
                self.unreported += 1;
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot write {} event to {}: {e} ({} events lost so far)",
                        event.name(),
                        self.dest,
                        self.lost
                    ),
                ))
            }
        }
    }

    /// One line, in one `write(2)` unless the kernel takes only part of it.
    fn put(&mut self, event: &Event, ts: SystemTime) -> io::Result<()> {
        let mut buf = String::with_capacity(512);
        if self.broken_line {
            buf.push('\n');
        }
        buf.push_str(&event.to_json_line(ts));
        buf.push('\n');
        match self.write_all_tracking(buf.as_bytes()) {
            Ok(()) => {
                self.broken_line = false;
                Ok(())
            }
            Err((e, written)) => {
                let lead = usize::from(self.broken_line);
                if written > lead && !self.cut_partial(written - lead) {
                    // Bytes of this line made it out: terminate it before the next one.
                    self.broken_line = true;
                } else if written >= lead {
                    // Nothing of the line is left (or the leading newline alone made it out,
                    // which finished the old broken line).
                    self.broken_line = false;
                }
                Err(e)
            }
        }
    }

    /// A regular file took `written` bytes of a line and then refused the rest (disk full):
    /// cut them off again so the file holds whole lines only. Assumes tcpstall is the only
    /// writer of the file. False when that is not possible.
    fn cut_partial(&mut self, written: usize) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        match file.metadata() {
            Ok(m) => file.set_len(m.len().saturating_sub(written as u64)).is_ok(),
            Err(_) => false,
        }
    }

    /// `write_all` + flush that reports how many bytes went out before an error.
    fn write_all_tracking(&mut self, mut bytes: &[u8]) -> Result<(), (io::Error, usize)> {
        let mut written = 0;
        while !bytes.is_empty() {
            match self.out.write(bytes) {
                Ok(0) => {
                    return Err((
                        io::Error::new(io::ErrorKind::WriteZero, "output accepted no more bytes"),
                        written,
                    ))
                }
                Ok(n) => {
                    written += n;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((e, written)),
            }
        }
        self.out.flush().map_err(|e| (e, written))
    }

    /// Events that could not be written since the writer was created.
    pub fn events_lost(&self) -> u64 {
        self.lost
    }

    /// Lines written since the writer was created (including `events_lost` lines).
    pub fn events_written(&self) -> u64 {
        self.written
    }
}

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

/// JSON type of a documented field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// Integer in 0..=u32::MAX.
    U32,
    /// Integer in 0..=u64::MAX.
    U64,
    /// Integer in i32::MIN..=i32::MAX.
    I32,
    /// `true` or `false`.
    Bool,
    /// Any string.
    Str,
    /// Socket address string: `ip:port` or `[v6]:port`.
    Addr,
    /// RFC 3339 UTC timestamp with millisecond precision (`2026-11-23T11:02:03.123Z`).
    Timestamp,
    /// One of the listed strings.
    Enum(&'static [&'static str]),
    /// Object with exactly these fields.
    Object(&'static [Field]),
    /// Array whose elements all have this type.
    Array(&'static FieldType),
    /// The inner type or `null`.
    Nullable(&'static FieldType),
}

impl FieldType {
    /// Short human-readable type, as shown in the README tables.
    pub fn describe(&self) -> String {
        match self {
            FieldType::U32 => "u32".into(),
            FieldType::U64 => "u64".into(),
            FieldType::I32 => "i32".into(),
            FieldType::Bool => "bool".into(),
            FieldType::Str => "string".into(),
            FieldType::Addr => "string `ip:port` / `[v6]:port`".into(),
            FieldType::Timestamp => "string, RFC 3339 UTC ms".into(),
            FieldType::Enum(values) => values
                .iter()
                .map(|v| format!("`\"{v}\"`"))
                .collect::<Vec<_>>()
                .join(" \\| "),
            FieldType::Object(_) => "object".into(),
            FieldType::Array(inner) => match inner {
                FieldType::Object(_) => "array of objects".into(),
                other => format!("array of {}", other.describe()),
            },
            FieldType::Nullable(inner) => format!("{} or null", inner.describe()),
        }
    }
}

/// One documented field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// JSON key.
    pub name: &'static str,
    /// JSON type.
    pub ty: FieldType,
    /// Meaning, one line.
    pub doc: &'static str,
}

const fn f(name: &'static str, ty: FieldType, doc: &'static str) -> Field {
    Field { name, ty, doc }
}

/// Documentation of one event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSchema {
    /// The `"event"` value.
    pub event: &'static str,
    /// When the agent emits it.
    pub doc: &'static str,
    /// Whether the [`SOCKET_FIELDS`] are part of this event (before `fields`).
    pub socket: bool,
    /// Fields specific to this event type.
    pub fields: &'static [Field],
}

impl EventSchema {
    /// Every required field of this event type besides the header: the socket fields (for
    /// socket events) followed by the type's own fields.
    pub fn all_fields(&self) -> impl Iterator<Item = &'static Field> {
        let socket: &'static [Field] = if self.socket { SOCKET_FIELDS } else { &[] };
        socket.iter().chain(self.fields.iter())
    }
}

const CLASSES: &[&str] = &["zero_window", "no_ack", "slow_drain", "recv_backlog"];
const FAMILIES: &[&str] = &["inet", "inet6"];
const ACTIONS: &[&str] = &["observe", "reset"];
const MODES: &[&str] = &["observe", "enforce", "dry_run"];
const GUARDS: &[&str] = &[
    "dry_run",
    "protected_port",
    "rate_limit",
    "not_stalled_anymore",
    "reset_unavailable",
    "identity_changed",
    "orphan_unsafe",
    "network_limit",
    "partition_hold",
];

/// Fields on every line.
pub const HEADER_FIELDS: &[Field] = &[
    f(
        "schema",
        FieldType::U32,
        "Format version, always 1 for this document",
    ),
    f("event", FieldType::Str, "Event type (see below)"),
    f(
        "ts",
        FieldType::Timestamp,
        "When the agent wrote the event, e.g. `2026-11-23T11:02:03.123Z`",
    ),
];

const EVIDENCE_FIELDS: &[Field] = &[
    f(
        "recovered_episodes",
        FieldType::U32,
        "Earlier no-progress episodes on this socket that recovered on their own",
    ),
    f(
        "longest_gap_ms",
        FieldType::U64,
        "Longest recovered gap, ms (0 when none)",
    ),
    f(
        "bytes_acked_last_window",
        FieldType::U64,
        "Bytes the peer acked during the last measurement window",
    ),
    f(
        "effective_threshold_ms",
        FieldType::U64,
        "Threshold actually applied to this socket, ms",
    ),
    f(
        "threshold_reason",
        FieldType::Str,
        "Why the threshold has that value",
    ),
];

/// The socket object shared by all socket events, at the top level of the line.
pub const SOCKET_FIELDS: &[Field] = &[
    f(
        "cookie",
        FieldType::U64,
        "Kernel socket cookie (unique per boot)",
    ),
    f("netns", FieldType::U32, "Network namespace inode"),
    f("family", FieldType::Enum(FAMILIES), "Address family"),
    f("local", FieldType::Addr, "Local address"),
    f("remote", FieldType::Addr, "Remote address"),
    f(
        "pid",
        FieldType::Nullable(&FieldType::U32),
        "Process that last wrote to the socket; null = not yet known",
    ),
    f(
        "comm",
        FieldType::Nullable(&FieldType::Str),
        "That process's command name",
    ),
    f(
        "cgroup_id",
        FieldType::Nullable(&FieldType::U64),
        "cgroup v2 id of that process",
    ),
    f(
        "cgroup",
        FieldType::Nullable(&FieldType::Str),
        "cgroup v2 path of that process, when resolvable",
    ),
    f(
        "container_id",
        FieldType::Nullable(&FieldType::Str),
        "Container of that process, when its cgroup path shows one (Kubernetes systemd/cgroupfs drivers, Docker, Podman)",
    ),
    f(
        "container_runtime",
        FieldType::Nullable(&FieldType::Str),
        "`containerd`, `cri-o`, `docker`, `podman`, or `kubernetes` (a cgroupfs-driver pod, runtime not named)",
    ),
    f(
        "pod_uid",
        FieldType::Nullable(&FieldType::Str),
        "Kubernetes pod UID, when the cgroup path shows a pod",
    ),
    f(
        "pod_namespace",
        FieldType::Nullable(&FieldType::Str),
        "The pod's namespace, from the kubelet's `/var/log/pods/<ns>_<name>_<uid>` (no API call)",
    ),
    f(
        "pod_name",
        FieldType::Nullable(&FieldType::Str),
        "The pod's name, from the same directory",
    ),
    f("class", FieldType::Enum(CLASSES), "Kind of stall"),
    f(
        "queued_bytes",
        FieldType::U64,
        "Bytes written by the app, not yet acked by the peer",
    ),
    f(
        "unacked_bytes",
        FieldType::U64,
        "Bytes sent on the wire, not yet acked",
    ),
    f("snd_wnd", FieldType::U32, "Peer's advertised window"),
    f(
        "retransmits",
        FieldType::U32,
        "Retransmissions of the current unacked segment",
    ),
    f(
        "stalled_for_ms",
        FieldType::U64,
        "Time without progress, ms",
    ),
    f(
        "rule",
        FieldType::Nullable(&FieldType::Str),
        "Policy rule that selected the socket; null = policy defaults",
    ),
    f(
        "action",
        FieldType::Enum(ACTIONS),
        "What the policy decided",
    ),
    f(
        "evidence",
        FieldType::Object(EVIDENCE_FIELDS),
        "The numbers behind the classification",
    ),
    f(
        "recv_unread",
        FieldType::U64,
        "Received bytes the local app has not read",
    ),
];

const INTENT_FIELDS: &[Field] = &[
    f("cookie", FieldType::U64, "Kernel socket cookie"),
    f("netns", FieldType::U32, "Network namespace inode"),
    f("local", FieldType::Addr, "Local address"),
    f("remote", FieldType::Addr, "Remote address"),
    f(
        "class",
        FieldType::Enum(CLASSES),
        "Stall class that led to the reset",
    ),
    f(
        "rule",
        FieldType::Nullable(&FieldType::Str),
        "Policy rule that asked for the reset",
    ),
];

const HOOK_FIELDS: &[Field] = &[
    f(
        "hook",
        FieldType::Enum(crate::attach::HOOK_NAMES),
        "Hook name",
    ),
    f(
        "attach",
        FieldType::Nullable(&FieldType::Str),
        "Attach point used (`tp_btf/…`, `fentry/…`, `kprobe/…`); null = not attached",
    ),
    f("why", FieldType::Str, "Why this attach point, or why none"),
];

const STATE_FIELDS: &[Field] = &[
    f(
        "adopted",
        FieldType::Bool,
        "The previous agent's pinned kernel map was adopted: stall clocks carry on",
    ),
    f(
        "restored",
        FieldType::Bool,
        "The previous agent's state file was read back: cadence histories, rate-limit windows, reset decisions",
    ),
    f(
        "detail",
        FieldType::Str,
        "What was kept and where it lives, or why the agent started fresh",
    ),
];

const ORPHAN_RESET_FIELDS: &[Field] = &[
    f(
        "safe",
        FieldType::Bool,
        "Destroying an orphan (app-closed socket) left nothing behind; false = orphans are never reset",
    ),
    f("detail", FieldType::Str, "What the self-test saw"),
];

const RESET_PATH_FIELDS: &[Field] = &[
    f(
        "works",
        FieldType::Bool,
        "A probe reset of a test socket succeeded",
    ),
    f(
        "detail",
        FieldType::Str,
        "What was tried; on failure, why and how to fix it",
    ),
];

const RESET_COUNT_FIELDS: &[Field] = &[
    f("done", FieldType::U64, "Sockets reset"),
    f("failed", FieldType::U64, "Resets the kernel refused"),
    f("skipped", FieldType::U64, "Resets a guard prevented"),
    f(
        "retried",
        FieldType::U64,
        "Attempts that failed with a transient error and were scheduled again",
    ),
];

const CALIBRATION_FIELDS: &[Field] = &[
    f(
        "rule",
        FieldType::Nullable(&FieldType::Str),
        "Policy rule; null = policy defaults",
    ),
    f("class", FieldType::Enum(CLASSES), "Stall class"),
    f("count", FieldType::U64, "Stall episodes observed"),
    f("max_ms", FieldType::U64, "Longest episode, ms"),
    f("p50_ms", FieldType::U64, "Median episode, ms"),
    f("p99_ms", FieldType::U64, "99th percentile episode, ms"),
];

static SCHEMA: &[EventSchema] = &[
    EventSchema {
        event: "agent_started",
        doc: "Once at startup, after the hooks are attached and the policy is loaded.",
        socket: false,
        fields: &[
            f("version", FieldType::Str, "Agent version"),
            f("pid", FieldType::U32, "Agent process id"),
            f("kernel", FieldType::Str, "Kernel release (`uname -r`)"),
            f(
                "hooks",
                FieldType::Array(&FieldType::Object(HOOK_FIELDS)),
                "Per hook: the attach point the kernel offered, and why",
            ),
            f(
                "degraded",
                FieldType::Array(&FieldType::Str),
                "What detection lost because a hook could not be attached; empty = nothing",
            ),
            f(
                "socket_key",
                FieldType::Enum(&["cookie", "address"]),
                "How the kernel side keys sockets (`address` before Linux 5.12, or when a kprobe is attached)",
            ),
            f(
                "offsets_source",
                FieldType::Str,
                "Where kernel struct offsets came from",
            ),
            f("mode", FieldType::Enum(MODES), "Run mode"),
            f(
                "reset_path",
                FieldType::Object(RESET_PATH_FIELDS),
                "Result of the startup SOCK_DESTROY probe",
            ),
            f(
                "orphan_reset",
                FieldType::Object(ORPHAN_RESET_FIELDS),
                "Result of the startup self-test of destroying an orphaned socket",
            ),
            f(
                "policy",
                FieldType::Nullable(&FieldType::Str),
                "Policy file path; null = built-in defaults",
            ),
            f("tick_ms", FieldType::U64, "Tick period, ms"),
            f(
                "max_sockets",
                FieldType::U32,
                "Capacity of the per-socket tracking map",
            ),
            f(
                "state",
                FieldType::Object(STATE_FIELDS),
                "What was kept from the previous agent (restart, upgrade); see Operations",
            ),
        ],
    },
    EventSchema {
        event: "stall_started",
        doc: "A socket crossed its stall threshold.",
        socket: true,
        fields: &[],
    },
    EventSchema {
        event: "stall_cleared",
        doc: "A stalled socket made progress again.",
        socket: true,
        fields: &[],
    },
    EventSchema {
        event: "stall_closed",
        doc: "A stalled socket was closed (by the application or the kernel) while stalled.",
        socket: true,
        fields: &[],
    },
    EventSchema {
        event: "reset_intent",
        doc: "Enforcement: written (one `write(2)`) right before a batch of SOCK_DESTROY \
              requests (at most 64 sockets) goes to the kernel. Each socket's `socket_reset` or \
              `reset_failed` follows the batch; if the agent dies in between, this line is the \
              record of what it was resetting.",
        socket: false,
        fields: &[f(
            "sockets",
            FieldType::Array(&FieldType::Object(INTENT_FIELDS)),
            "The sockets about to be reset, in request order",
        )],
    },
    EventSchema {
        event: "socket_reset",
        doc: "Enforcement: the agent destroyed a stalled socket.",
        socket: true,
        fields: &[
            f(
                "bytes_still_queued",
                FieldType::U64,
                "Bytes still queued when the socket was destroyed (lost data)",
            ),
            f(
                "reset_latency_us",
                FieldType::U64,
                "From the reset decision to the kernel's acknowledgement, µs",
            ),
        ],
    },
    EventSchema {
        event: "reset_failed",
        doc: "Enforcement: the kernel refused to destroy a stalled socket.",
        socket: true,
        fields: &[
            f("errno", FieldType::I32, "errno from SOCK_DESTROY"),
            f(
                "error",
                FieldType::Str,
                "Symbolic errno name, e.g. `ENOENT`",
            ),
            f(
                "meaning",
                FieldType::Str,
                "What the errno means here and what to do",
            ),
            f(
                "retry_in_ms",
                FieldType::Nullable(&FieldType::U64),
                "Transient error (ENOBUFS, EAGAIN, ETIMEDOUT, EMFILE, ...): tried again in this many ms; null = final",
            ),
        ],
    },
    EventSchema {
        event: "reset_skipped",
        doc: "Enforcement: the policy asked for a reset but a guard stopped it.",
        socket: true,
        fields: &[
            f("guard", FieldType::Enum(GUARDS), "Which guard"),
            f(
                "detail",
                FieldType::Str,
                "Specifics (which port, the limit, what changed)",
            ),
        ],
    },
    EventSchema {
        event: "stats",
        doc: "Periodically: agent health and calibration counters.",
        socket: false,
        fields: &[
            f(
                "sockets_tracked",
                FieldType::U64,
                "Sockets currently in the tracking map",
            ),
            f(
                "map_capacity",
                FieldType::U32,
                "Capacity of the tracking map",
            ),
            f(
                "map_full",
                FieldType::U64,
                "Inserts refused because the map was full (cumulative)",
            ),
            f(
                "map_evicted",
                FieldType::U64,
                "Entries removed to make room in a (nearly) full map (cumulative)",
            ),
            f(
                "map_stale",
                FieldType::U64,
                "Entries removed because their socket was gone or had nothing queued any more (cumulative)",
            ),
            f(
                "netns_cached",
                FieldType::U64,
                "Network namespaces the reset path holds a netlink socket in",
            ),
            f(
                "partition_hold",
                FieldType::Bool,
                "Resets are held: ACKs stopped from (almost) every remote network at once",
            ),
            f(
                "close_notes_lost",
                FieldType::U64,
                "Socket-close notifications lost (cumulative)",
            ),
            f(
                "events_lost",
                FieldType::U64,
                "Events the agent failed to write (cumulative)",
            ),
            f(
                "events_written",
                FieldType::U64,
                "Lines written before this one since `agent_started` (line 0): in a complete \
                 stream, this line's own 0-based position",
            ),
            f("stalls_active", FieldType::U64, "Sockets currently stalled"),
            f(
                "sweep_us",
                FieldType::U64,
                "Wall-clock cost of the last tick, µs",
            ),
            f(
                "cpu_ms",
                FieldType::U64,
                "Agent CPU time (user + system) since start, ms",
            ),
            f(
                "bpf_run_ns",
                FieldType::Nullable(&FieldType::U64),
                "In-kernel run time of the agent's BPF programs, ns; null unless \
                 `kernel.bpf_stats_enabled=1`",
            ),
            f(
                "resets",
                FieldType::Object(RESET_COUNT_FIELDS),
                "Enforcement counters (cumulative)",
            ),
            f(
                "calibration",
                FieldType::Array(&FieldType::Object(CALIBRATION_FIELDS)),
                "Observed stall durations per (rule, class)",
            ),
        ],
    },
    EventSchema {
        event: "partition_hold",
        doc: "ACKs stopped from (almost) every remote network at once — the node's own path \
              is down, not its peers: resets are held so a transient outage does not become \
              a mass reset; or the hold ended.",
        socket: false,
        fields: &[
            f(
                "state",
                FieldType::Enum(&["started", "ended", "expired"]),
                "`started`; `ended` (ACKs came back); `expired` (held for `partition_max_hold`, resets resume under the budgets)",
            ),
            f(
                "silent_networks",
                FieldType::U64,
                "Remote networks with data in flight and no ACK for a second",
            ),
            f(
                "alive_networks",
                FieldType::U64,
                "Remote networks that answered within the last 5 s",
            ),
            f(
                "networks",
                FieldType::Array(&FieldType::Str),
                "Silent networks with their silent socket counts, largest first (at most 16)",
            ),
            f(
                "resets_held",
                FieldType::U64,
                "Resets held during this hold (on `ended` / `expired`)",
            ),
        ],
    },
    EventSchema {
        event: "mass_disconnect",
        doc: "Many peers of one remote network went silent together while the rest of the \
              node is fine: their `no_ack` stalls are reset as they cross their thresholds, \
              outside the rule and network budgets. Once per episode.",
        socket: false,
        fields: &[
            f(
                "network",
                FieldType::Str,
                "The remote network (IPv4 /24, IPv6 /64)",
            ),
            f(
                "silent_sockets",
                FieldType::U64,
                "Its silent sockets at detection",
            ),
        ],
    },
    EventSchema {
        event: "threshold_warning",
        doc: "A threshold looks mis-set for the observed traffic: compare `observed_ms` with \
              `threshold_ms`, and see whether enforcement would have reset the socket.",
        socket: false,
        fields: &[
            f(
                "rule",
                FieldType::Nullable(&FieldType::Str),
                "Policy rule; null = policy defaults",
            ),
            f("class", FieldType::Enum(CLASSES), "Stall class"),
            f("threshold_ms", FieldType::U64, "Threshold in effect, ms"),
            f("observed_ms", FieldType::U64, "Stall duration observed, ms"),
            f(
                "cookie",
                FieldType::U64,
                "Socket that triggered the warning",
            ),
            f(
                "would_reset",
                FieldType::Bool,
                "Whether enforcement would have reset this socket",
            ),
            f("advice", FieldType::Str, "What to change"),
        ],
    },
    EventSchema {
        event: "events_lost",
        doc: "Writing to the event output failed (disk full, closed pipe) and works again: \
              written right after the first line that could be written again. The agent \
              never stops over a failed write; it keeps enforcing and counts what it lost.",
        socket: false,
        fields: &[
            f(
                "count",
                FieldType::U64,
                "Events lost since the previous `events_lost` line (or since the start)",
            ),
            f(
                "total",
                FieldType::U64,
                "Events lost since the start (as `stats.events_lost`)",
            ),
        ],
    },
    EventSchema {
        event: "output_reopened",
        doc: "SIGHUP: the `--output` file was reopened (log rotation). On success this is the \
              first line of the new file; on failure the agent keeps writing to the old file \
              and says why here.",
        socket: false,
        fields: &[
            f("output", FieldType::Str, "The output path"),
            f("ok", FieldType::Bool, "Whether the path could be opened"),
            f(
                "error",
                FieldType::Nullable(&FieldType::Str),
                "What failed, why, what to do; null on success",
            ),
        ],
    },
    EventSchema {
        event: "policy_reload",
        doc: "SIGHUP: the policy file was read and validated again. A valid file replaces \
              the policy in force, keeping every socket's state (stalls, history, budgets); an \
              invalid one is refused and the old policy stays in force.",
        socket: false,
        fields: &[
            f(
                "policy",
                FieldType::Nullable(&FieldType::Str),
                "Policy file; null = the agent runs without `--policy` (nothing to reload)",
            ),
            f("ok", FieldType::Bool, "Whether the new policy is in force"),
            f(
                "problems",
                FieldType::Array(&FieldType::Str),
                "Why it was refused: one `FILE:LINE:COL: …` line per problem, as `policy check` prints them; empty when `ok`",
            ),
            f(
                "warnings",
                FieldType::Array(&FieldType::Str),
                "Valid but dangerous settings in the file, as `policy check` prints them",
            ),
            f("mode", FieldType::Enum(MODES), "Run mode in force after the reload"),
            f(
                "detail",
                FieldType::Str,
                "What changed, or what does not take effect until a restart",
            ),
        ],
    },
    EventSchema {
        event: "agent_stopped",
        doc: "Once at exit.",
        socket: false,
        fields: &[
            f("reason", FieldType::Str, "Why (signal, error message)"),
            f(
                "uptime_ms",
                FieldType::U64,
                "Time since `agent_started`, ms",
            ),
        ],
    },
];

/// The documented schema: for each event type, its required fields and JSON types.
pub fn schema() -> &'static [EventSchema] {
    SCHEMA
}

/// Documentation of event type `event`, if it exists.
pub fn event_schema(event: &str) -> Option<&'static EventSchema> {
    SCHEMA.iter().find(|s| s.event == event)
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Parse one output line and [`validate`] it.
pub fn validate_line(line: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    validate(&v)
}

/// Check one parsed line against the documented schema: `schema` is [`SCHEMA_VERSION`], the
/// event type is known, `ts` is RFC 3339 UTC with milliseconds, every documented field is
/// present with the documented type (recursively), and no undocumented field appears.
pub fn validate(v: &serde_json::Value) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("line is {}, expected an object", json_kind(v)))?;
    match obj.get("schema") {
        Some(s) if s.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
        Some(s) => return Err(format!("schema is {s}, expected {SCHEMA_VERSION}")),
        None => return Err("missing field `schema`".into()),
    }
    let event = match obj.get("event") {
        Some(serde_json::Value::String(e)) => e.as_str(),
        Some(other) => return Err(format!("event is {}, expected a string", json_kind(other))),
        None => return Err("missing field `event`".into()),
    };
    let es = event_schema(event).ok_or_else(|| format!("unknown event type {event:?}"))?;
    let ts = obj.get("ts").ok_or("missing field `ts`")?;
    check(ts, &FieldType::Timestamp).map_err(|e| format!("{event}: ts: {e}"))?;

    let fields: Vec<&Field> = HEADER_FIELDS.iter().chain(es.all_fields()).collect();
    check_object(obj, &fields).map_err(|e| format!("{event}: {e}"))
}

fn check_object(
    obj: &serde_json::Map<String, serde_json::Value>,
    fields: &[&Field],
) -> Result<(), String> {
    for field in fields {
        let value = obj
            .get(field.name)
            .ok_or_else(|| format!("missing field `{}`", field.name))?;
        check(value, &field.ty).map_err(|e| format!("{}: {e}", field.name))?;
    }
    if let Some(extra) = obj.keys().find(|k| !fields.iter().any(|f| f.name == *k)) {
        return Err(format!("undocumented field `{extra}`"));
    }
    Ok(())
}

fn check(v: &serde_json::Value, ty: &FieldType) -> Result<(), String> {
    use serde_json::Value;
    let mismatch = || format!("expected {}, found {}", ty.describe(), json_kind(v));
    match ty {
        FieldType::U32 => match v.as_u64() {
            Some(n) if n <= u64::from(u32::MAX) => Ok(()),
            Some(n) => Err(format!("{n} does not fit in u32")),
            None => Err(mismatch()),
        },
        FieldType::U64 => v.as_u64().map(|_| ()).ok_or_else(mismatch),
        FieldType::I32 => match v.as_i64() {
            Some(n) if i32::try_from(n).is_ok() => Ok(()),
            Some(n) => Err(format!("{n} does not fit in i32")),
            None => Err(mismatch()),
        },
        FieldType::Bool => v.as_bool().map(|_| ()).ok_or_else(mismatch),
        FieldType::Str => v.as_str().map(|_| ()).ok_or_else(mismatch),
        FieldType::Addr => {
            let s = v.as_str().ok_or_else(mismatch)?;
            s.parse::<SocketAddr>()
                .map(|_| ())
                .map_err(|_| format!("{s:?} is not an `ip:port` / `[v6]:port` address"))
        }
        FieldType::Timestamp => {
            let s = v.as_str().ok_or_else(mismatch)?;
            check_timestamp(s)
        }
        FieldType::Enum(values) => {
            let s = v.as_str().ok_or_else(mismatch)?;
            if values.contains(&s) {
                Ok(())
            } else {
                Err(format!("{s:?} is not one of {}", ty.describe()))
            }
        }
        FieldType::Object(fields) => {
            let obj = v.as_object().ok_or_else(mismatch)?;
            let fields: Vec<&Field> = fields.iter().collect();
            check_object(obj, &fields)
        }
        FieldType::Array(inner) => {
            let items = v.as_array().ok_or_else(mismatch)?;
            for (i, item) in items.iter().enumerate() {
                check(item, inner).map_err(|e| format!("[{i}]: {e}"))?;
            }
            Ok(())
        }
        FieldType::Nullable(inner) => match v {
            Value::Null => Ok(()),
            other => check(other, inner).map_err(|e| format!("{e} (null also allowed)")),
        },
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, and a real instant.
fn check_timestamp(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(format!(
            "{s:?} is not RFC 3339 UTC with milliseconds (YYYY-MM-DDTHH:MM:SS.mmmZ)"
        ));
    }
    humantime::parse_rfc3339(s)
        .map(|_| ())
        .map_err(|e| format!("{s:?} is not a valid timestamp: {e}"))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_u64() => "an unsigned integer",
        Value::Number(n) if n.is_i64() => "a negative integer",
        Value::Number(_) => "a non-integer number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------------

fn table_rows(out: &mut String, prefix: &str, fields: &[Field]) {
    for field in fields {
        let name = format!("{prefix}{}", field.name);
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} |",
            field.ty.describe(),
            field.doc
        );
        let nested = match field.ty {
            FieldType::Object(inner) => Some((format!("{name}."), inner)),
            FieldType::Array(FieldType::Object(inner)) => Some((format!("{name}[]."), *inner)),
            _ => None,
        };
        if let Some((prefix, inner)) = nested {
            table_rows(out, &prefix, inner);
        }
    }
}

fn table(out: &mut String, fields: &[Field]) {
    out.push_str("| field | type | meaning |\n|---|---|---|\n");
    table_rows(out, "", fields);
    out.push('\n');
}

/// Markdown description of the event format (header, socket object, one section per event
/// type), for the README. Generated from [`schema()`], so it is what [`validate`] enforces.
pub fn schema_markdown() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Event format (schema {SCHEMA_VERSION})\n\n\
         `tcpstall run` writes NDJSON: one JSON object per line, on stdout or appended to \
         `--output FILE`. All fields listed are always present (nullable ones as `null`); \
         no other fields appear. Integers are unsigned unless typed `i32`.\n\n\
         ### Common header (every line)\n"
    );
    table(&mut out, HEADER_FIELDS);
    out.push_str(
        "### Socket object\n\nSocket events (`stall_started`, `stall_cleared`, `stall_closed`, \
         `socket_reset`, `reset_failed`, `reset_skipped`) carry these fields at the top level \
         of the line:\n\n",
    );
    table(&mut out, SOCKET_FIELDS);
    for es in SCHEMA {
        let _ = writeln!(out, "### `{}`\n\n{}\n", es.event, es.doc);
        match (es.socket, es.fields.is_empty()) {
            (true, true) => out.push_str("Fields: the socket object only.\n\n"),
            (true, false) => {
                out.push_str("Fields: the socket object, plus:\n\n");
                table(&mut out, es.fields);
            }
            (false, _) => table(&mut out, es.fields),
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::{Arc, Mutex};

    fn ts() -> SystemTime {
        // 2026-11-23T11:02:03.123Z
        UNIX_EPOCH + Duration::from_millis(1_795_431_723_123)
    }

    fn socket(full: bool) -> SocketFields {
        SocketFields {
            cookie: u64::MAX,
            netns: 4_026_531_840,
            family: if full { Family::Inet6 } else { Family::Inet },
            local: if full {
                "[fd00::1]:443".parse().unwrap()
            } else {
                "10.0.0.1:443".parse().unwrap()
            },
            remote: if full {
                "[fd00::2]:51234".parse().unwrap()
            } else {
                "10.0.0.2:51234".parse().unwrap()
            },
            pid: full.then_some(4242),
            comm: full.then(|| "nginx".to_string()),
            cgroup_id: full.then_some(7788),
            cgroup: full.then(|| "/system.slice/nginx.service".to_string()),
            container_id: full.then(|| "0123456789ab".to_string()),
            container_runtime: full.then(|| "containerd".to_string()),
            pod_uid: full.then(|| "6f2a3b1c-1d2e-4f50-8a9b-0c1d2e3f4a5b".to_string()),
            pod_namespace: full.then(|| "payments".to_string()),
            pod_name: full.then(|| "api-7d9f8".to_string()),
            class: StallClass::ZeroWindow,
            queued_bytes: 1 << 20,
            unacked_bytes: 65_536,
            snd_wnd: 0,
            retransmits: 3,
            stalled_for_ms: 30_000,
            rule: full.then(|| "web".to_string()),
            action: if full { Action::Reset } else { Action::Observe },
            evidence: EvidenceFields {
                recovered_episodes: 2,
                longest_gap_ms: 1_500,
                bytes_acked_last_window: 0,
                effective_threshold_ms: 20_000,
                threshold_reason: "rule default".into(),
            },
            recv_unread: 0,
        }
    }

    /// One of every event type, with optional fields both set (`full`) and null.
    fn samples(full: bool) -> Vec<Event> {
        let s = socket(full);
        vec![
            Event::AgentStarted {
                version: "0.1.0".into(),
                pid: 1234,
                kernel: "6.18.0".into(),
                hooks: vec![HookReport {
                    hook: "send".into(),
                    attach: Some("fentry/tcp_sendmsg_locked".into()),
                    why: "tracepoint tcp_sendmsg_locked absent: fentry tcp_sendmsg_locked".into(),
                }],
                degraded: vec![],
                socket_key: "cookie".into(),
                offsets_source: "btf:/sys/kernel/btf/vmlinux".into(),
                mode: Mode::DryRun,
                reset_path: ResetPath {
                    works: true,
                    detail: "SOCK_DESTROY probe ok".into(),
                },
                orphan_reset: OrphanReset {
                    safe: true,
                    detail: "orphan destroyed cleanly".into(),
                },
                policy: full.then(|| "/etc/tcpstall/policy.toml".into()),
                tick_ms: 1000,
                max_sockets: 65_536,
                state: StateReport {
                    adopted: full,
                    restored: full,
                    detail: "adopted the kernel map pinned at /sys/fs/bpf/tcpstall/socks_v1-0_cookie_65536".into(),
                },
            },
            Event::StallStarted(s.clone()),
            Event::StallCleared(s.clone()),
            Event::StallClosed(s.clone()),
            Event::ResetIntent {
                sockets: vec![IntentSocket {
                    cookie: 7,
                    netns: 4_026_531_840,
                    local: s.local,
                    remote: s.remote,
                    class: StallClass::ZeroWindow,
                    rule: full.then(|| "web".into()),
                }],
            },
            Event::SocketReset {
                socket: s.clone(),
                bytes_still_queued: 4096,
                reset_latency_us: 180,
            },
            Event::ResetFailed {
                socket: s.clone(),
                errno: libc::ENOENT,
                error: "ENOENT".into(),
                meaning: "socket already gone".into(),
                retry_in_ms: full.then_some(500),
            },
            Event::ResetSkipped {
                socket: s,
                guard: SkipGuard::ProtectedPort,
                detail: "local port 22 is protected".into(),
            },
            Event::Stats(StatsFields {
                sockets_tracked: 12,
                map_capacity: 65_536,
                map_full: 0,
                map_evicted: 3,
                map_stale: 1,
                netns_cached: 2,
                partition_hold: full,
                close_notes_lost: 1,
                events_lost: 0,
                events_written: 41,
                stalls_active: 1,
                sweep_us: 250,
                cpu_ms: 40,
                bpf_run_ns: full.then_some(123_456),
                resets: ResetCounts {
                    done: 1,
                    failed: 1,
                    skipped: 1,
                    retried: 2,
                },
                calibration: if full {
                    vec![CalibrationEntry {
                        rule: Some("web".into()),
                        class: StallClass::NoAck,
                        count: 5,
                        max_ms: 9_000,
                        p50_ms: 1_200,
                        p99_ms: 8_800,
                    }]
                } else {
                    vec![CalibrationEntry {
                        rule: None,
                        class: StallClass::RecvBacklog,
                        count: 0,
                        max_ms: 0,
                        p50_ms: 0,
                        p99_ms: 0,
                    }]
                },
            }),
            Event::PartitionHold {
                state: "started".into(),
                silent_networks: 4,
                alive_networks: 0,
                networks: if full {
                    vec!["10.1.0.0/24 (12 silent)".into()]
                } else {
                    vec![]
                },
                resets_held: 0,
            },
            Event::MassDisconnect {
                network: "10.9.0.0/24".into(),
                silent_sockets: 3000,
            },
            Event::ThresholdWarning {
                rule: full.then(|| "web".into()),
                class: StallClass::SlowDrain,
                threshold_ms: 5_000,
                observed_ms: 60_000,
                cookie: 99,
                would_reset: full,
                advice: "raise slow_drain_after".into(),
            },
            Event::EventsLost { count: 3, total: 5 },
            Event::OutputReopened {
                output: "/var/log/tcpstall/events.ndjson".into(),
                ok: full,
                error: (!full).then(|| "cannot open ...".into()),
            },
            Event::PolicyReload {
                policy: full.then(|| "/etc/tcpstall/policy.toml".into()),
                ok: full,
                problems: if full {
                    vec![]
                } else {
                    vec!["p.toml:3:1: unknown key".into()]
                },
                warnings: vec![],
                mode: Mode::Enforce,
                detail: "in force from the next tick".into(),
            },
            Event::AgentStopped {
                reason: "SIGTERM".into(),
                uptime_ms: 3_600_000,
            },
        ]
    }

    fn line_value(ev: &Event) -> Value {
        serde_json::from_str(&ev.to_json_line(ts())).unwrap()
    }

    fn stall_started_value() -> Value {
        line_value(&Event::StallStarted(socket(true)))
    }

    #[test]
    fn every_event_type_serializes_and_validates() {
        for full in [true, false] {
            let events = samples(full);
            let names: Vec<&str> = events.iter().map(Event::name).collect();
            let documented: Vec<&str> = schema().iter().map(|s| s.event).collect();
            assert_eq!(
                names, documented,
                "samples must cover every documented event"
            );
            for ev in &events {
                let line = ev.to_json_line(ts());
                assert!(!line.contains('\n'), "{line}");
                validate_line(&line).unwrap_or_else(|e| panic!("{e}\n{line}"));
                let v: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["event"], ev.name());
                assert_eq!(v["schema"], 1);
                assert_eq!(v["ts"], "2026-11-23T11:02:03.123Z");
                assert_eq!(
                    ev.socket().is_some(),
                    event_schema(ev.name()).unwrap().socket
                );
            }
        }
    }

    #[test]
    fn header_comes_first() {
        let line = Event::AgentStopped {
            reason: "x".into(),
            uptime_ms: 1,
        }
        .to_json_line(ts());
        assert_eq!(
            line,
            r#"{"schema":1,"ts":"2026-11-23T11:02:03.123Z","event":"agent_stopped","reason":"x","uptime_ms":1}"#
        );
    }

    #[test]
    fn socket_fields_are_flattened_with_exact_values() {
        let v = line_value(&Event::SocketReset {
            socket: socket(true),
            bytes_still_queued: 7,
            reset_latency_us: 9,
        });
        assert_eq!(v["cookie"], json!(u64::MAX));
        assert_eq!(v["family"], "inet6");
        assert_eq!(v["local"], "[fd00::1]:443");
        assert_eq!(v["remote"], "[fd00::2]:51234");
        assert_eq!(v["class"], "zero_window");
        assert_eq!(v["action"], "reset");
        assert_eq!(v["evidence"]["effective_threshold_ms"], 20_000);
        assert_eq!(v["bytes_still_queued"], 7);
        assert!(v.get("socket").is_none());

        let v = line_value(&Event::StallStarted(socket(false)));
        assert_eq!(v["local"], "10.0.0.1:443");
        for k in [
            "pid",
            "comm",
            "cgroup_id",
            "cgroup",
            "container_id",
            "pod_name",
            "rule",
        ] {
            assert_eq!(v[k], Value::Null, "{k}");
        }
    }

    #[test]
    fn schema_enums_match_serde_spelling() {
        let spelled = |x: &dyn erased::Ser| x.json();
        for c in StallClass::ALL {
            assert!(CLASSES.contains(&c.as_str()));
            assert_eq!(spelled(&c), c.as_str());
        }
        assert_eq!(CLASSES.len(), StallClass::ALL.len());
        let check = |values: &[&str], all: Vec<(String, &str)>| {
            assert_eq!(values.len(), all.len());
            for (json, as_str) in all {
                assert_eq!(json, as_str);
                assert!(values.contains(&as_str), "{as_str}");
            }
        };
        check(
            FAMILIES,
            Family::ALL
                .iter()
                .map(|x| (spelled(x), x.as_str()))
                .collect(),
        );
        check(
            ACTIONS,
            Action::ALL
                .iter()
                .map(|x| (spelled(x), x.as_str()))
                .collect(),
        );
        check(
            MODES,
            Mode::ALL.iter().map(|x| (spelled(x), x.as_str())).collect(),
        );
        check(
            GUARDS,
            SkipGuard::ALL
                .iter()
                .map(|x| (spelled(x), x.as_str()))
                .collect(),
        );
    }

    /// Minimal object-safe wrapper to serialize heterogeneous enum values in one closure.
    mod erased {
        pub trait Ser {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> String {
                match serde_json::to_value(self).unwrap() {
                    serde_json::Value::String(s) => s,
                    other => panic!("expected string, got {other}"),
                }
            }
        }
    }

    #[test]
    fn every_enum_value_validates() {
        for guard in SkipGuard::ALL {
            let ev = Event::ResetSkipped {
                socket: socket(true),
                guard,
                detail: String::new(),
            };
            validate(&line_value(&ev)).unwrap();
        }
        for mode in Mode::ALL {
            let mut ev = samples(true).remove(0);
            if let Event::AgentStarted { mode: m, .. } = &mut ev {
                *m = mode;
            }
            validate(&line_value(&ev)).unwrap();
        }
        for class in StallClass::ALL {
            let mut s = socket(false);
            s.class = class;
            validate(&line_value(&Event::StallCleared(s))).unwrap();
        }
    }

    #[test]
    fn rejects_missing_field() {
        let mut v = stall_started_value();
        v.as_object_mut().unwrap().remove("queued_bytes");
        let err = validate(&v).unwrap_err();
        assert!(err.contains("missing field `queued_bytes`"), "{err}");

        let mut v = stall_started_value();
        v["evidence"]
            .as_object_mut()
            .unwrap()
            .remove("threshold_reason");
        let err = validate(&v).unwrap_err();
        assert!(
            err.contains("evidence: missing field `threshold_reason`"),
            "{err}"
        );

        for header in ["schema", "event", "ts"] {
            let mut v = stall_started_value();
            v.as_object_mut().unwrap().remove(header);
            let err = validate(&v).unwrap_err();
            assert!(err.contains(&format!("missing field `{header}`")), "{err}");
        }
    }

    #[test]
    fn rejects_wrong_type() {
        let cases: &[(&str, Value, &str)] = &[
            ("cookie", json!("1"), "cookie: expected u64"),
            ("cookie", json!(-1), "cookie: expected u64"),
            ("cookie", json!(1.5), "cookie: expected u64"),
            (
                "netns",
                json!(u64::from(u32::MAX) + 1),
                "does not fit in u32",
            ),
            (
                "pid",
                json!("12"),
                "pid: expected u32, found a string (null also allowed)",
            ),
            (
                "comm",
                json!(5),
                "comm: expected string, found an unsigned integer (null",
            ),
            ("family", json!("unix"), "is not one of"),
            ("class", json!("ZeroWindow"), "is not one of"),
            ("local", json!("10.0.0.1"), "is not an `ip:port`"),
            ("remote", json!("fd00::2:80"), "is not an `ip:port`"),
            ("evidence", json!([]), "evidence: expected object"),
            ("action", Value::Null, "action: expected"),
        ];
        for (field, bad, expect) in cases {
            let mut v = stall_started_value();
            v[*field] = bad.clone();
            let err = validate(&v).unwrap_err();
            assert!(err.contains(expect), "{field}={bad}: {err}");
        }

        let mut v = line_value(&samples(true)[6]);
        v["errno"] = json!(i64::from(i32::MAX) + 1);
        assert!(validate(&v).unwrap_err().contains("errno"));
        v["errno"] = json!(-2);
        validate(&v).unwrap();

        let mut v = line_value(&samples(true)[0]);
        v["hooks"] = json!([{"hook": "ack", "attach": null, "why": "x"}, 3]);
        let err = validate(&v).unwrap_err();
        assert!(err.contains("hooks: [1]: expected object"), "{err}");

        let mut v = line_value(&samples(true)[8]);
        v["calibration"][0]["p99_ms"] = json!("slow");
        let err = validate(&v).unwrap_err();
        assert!(err.contains("calibration: [0]: p99_ms"), "{err}");

        let mut v = line_value(&samples(true)[0]);
        v["reset_path"]["works"] = json!("yes");
        assert!(validate(&v).unwrap_err().contains("reset_path: works"));
    }

    #[test]
    fn rejects_unknown_event_and_bad_header() {
        let mut v = stall_started_value();
        v["event"] = json!("stall_exploded");
        assert!(validate(&v).unwrap_err().contains("unknown event type"));

        let mut v = stall_started_value();
        v["event"] = json!(3);
        assert!(validate(&v).unwrap_err().contains("event is"));

        let mut v = stall_started_value();
        v["schema"] = json!(2);
        assert!(validate(&v).unwrap_err().contains("schema is 2"));

        assert!(validate(&json!([1])).is_err());
        assert!(validate_line("{\"schema\":1,")
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn rejects_extra_field() {
        let mut v = stall_started_value();
        v["debug"] = json!(true);
        let err = validate(&v).unwrap_err();
        assert!(err.contains("undocumented field `debug`"), "{err}");

        let mut v = line_value(&samples(true)[8]);
        v["resets"]["pending"] = json!(0);
        let err = validate(&v).unwrap_err();
        assert!(
            err.contains("resets: undocumented field `pending`"),
            "{err}"
        );

        // A socket field on a non-socket event is undocumented there.
        let mut v = line_value(&samples(true)[9]);
        v["cookie"] = json!(1);
        assert!(validate(&v)
            .unwrap_err()
            .contains("undocumented field `cookie`"));
    }

    #[test]
    fn rejects_bad_ts() {
        for bad in [
            json!("2026-11-23T11:02:03Z"),
            json!("2026-11-23T11:02:03.123456Z"),
            json!("2026-11-23T11:02:03.123+00:00"),
            json!("2026-11-23 11:02:03.123Z"),
            json!("2026-13-23T11:02:03.123Z"),
            json!("2026-11-23T25:02:03.123Z"),
            json!("1969-12-31T23:59:59.999Z"),
            json!("yesterday"),
            json!(1_795_431_723_123u64),
        ] {
            let mut v = stall_started_value();
            v["ts"] = bad.clone();
            let err = validate(&v).unwrap_err();
            assert!(err.contains("ts:"), "{bad}: {err}");
        }
    }

    #[test]
    fn ts_is_clamped_to_formattable_range() {
        let early = UNIX_EPOCH - Duration::from_secs(10);
        let line = samples(false)[9].to_json_line(early);
        assert!(
            line.contains("\"ts\":\"1970-01-01T00:00:00.000Z\""),
            "{line}"
        );
        validate_line(&line).unwrap();

        let late = UNIX_EPOCH + Duration::from_secs(MAX_FORMATTABLE_SECS + 86_400 * 400);
        let line = samples(false)[9].to_json_line(late);
        assert!(
            line.contains("\"ts\":\"9999-12-31T23:59:59.999Z\""),
            "{line}"
        );
        validate_line(&line).unwrap();
    }

    #[test]
    fn hostile_strings_stay_on_one_line() {
        let mut s = socket(true);
        s.comm = Some("evil\n{\"event\":\"x\"}\u{0}\"".into());
        let line = Event::StallStarted(s.clone()).to_json_line(ts());
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["comm"], json!(s.comm.unwrap()));
        validate(&v).unwrap();
    }

    #[test]
    fn schema_markdown_mentions_every_event_and_field() {
        let md = schema_markdown();
        for es in schema() {
            assert!(md.contains(&format!("### `{}`", es.event)), "{}", es.event);
            for field in es.fields {
                assert!(
                    md.contains(&format!("| `{}` |", field.name)),
                    "{}",
                    field.name
                );
            }
        }
        for field in SOCKET_FIELDS.iter().chain(HEADER_FIELDS) {
            assert!(
                md.contains(&format!("| `{}` |", field.name)),
                "{}",
                field.name
            );
        }
        assert!(md.contains("| `evidence.threshold_reason` |"));
        assert!(md.contains("| `calibration[].p99_ms` |"));
        assert!(md.contains("`\"not_stalled_anymore\"`"));
    }

    #[test]
    fn schema_is_well_formed() {
        let mut names: Vec<&str> = schema().iter().map(|s| s.event).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), schema().len(), "duplicate event names");
        for es in schema() {
            let mut fields: Vec<&str> = HEADER_FIELDS
                .iter()
                .chain(es.all_fields())
                .map(|f| f.name)
                .collect();
            let n = fields.len();
            fields.sort_unstable();
            fields.dedup();
            assert_eq!(fields.len(), n, "{}: duplicate field names", es.event);
        }
    }

    /// A sink that accepts `budget` bytes, then fails; records what it got.
    #[derive(Clone)]
    struct Sink {
        got: Arc<Mutex<Vec<u8>>>,
        budget: Arc<Mutex<usize>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut budget = self.budget.lock().unwrap();
            if *budget == 0 {
                return Err(io::Error::from_raw_os_error(libc::EPIPE));
            }
            // Deliver in small chunks to exercise the short-write loop.
            let n = buf.len().min(*budget).min(7);
            *budget -= n;
            self.got.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_writes_valid_lines_and_counts_losses() {
        let sink = Sink {
            got: Arc::default(),
            budget: Arc::new(Mutex::new(usize::MAX)),
        };
        let mut w = EventWriter::new(Box::new(sink.clone()), "test sink");
        let events = samples(true);
        for ev in &events {
            w.write_at(ev, ts()).unwrap();
        }
        assert_eq!(
            (w.events_lost(), w.events_written()),
            (0, events.len() as u64)
        );

        // Fail mid-line, then fail entirely, then recover.
        *sink.budget.lock().unwrap() = 20;
        let err = w.write_at(&events[1], ts()).unwrap_err();
        assert_eq!(err.raw_os_error(), None); // wrapped with context
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(
            err.to_string().contains("stall_started event to test sink"),
            "{err}"
        );
        assert!(w.write_at(&events[2], ts()).is_err());
        assert_eq!(w.events_lost(), 2);
        *sink.budget.lock().unwrap() = usize::MAX;
        w.write(events.last().unwrap()).unwrap();
        assert_eq!(w.events_lost(), 2);
        // The recovered line, then the events_lost line.
        assert_eq!(w.events_written(), events.len() as u64 + 2);
        // Reported once.
        w.write(events.last().unwrap()).unwrap();

        let got = String::from_utf8(sink.got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = got.split_terminator('\n').collect();
        assert_eq!(lines.len(), events.len() + 4);
        for line in &lines[..events.len()] {
            validate_line(line).unwrap();
        }
        // The broken fragment is confined to its own line; the next line is intact.
        assert!(validate_line(lines[events.len()]).is_err());
        let recovered = lines[events.len() + 1];
        validate_line(recovered).unwrap();
        assert!(recovered.contains("\"event\":\"agent_stopped\""));
        let note: Value = serde_json::from_str(lines[events.len() + 2]).unwrap();
        validate(&note).unwrap();
        assert_eq!(note["event"], "events_lost");
        assert_eq!(
            (note["count"].as_u64(), note["total"].as_u64()),
            (Some(2), Some(2))
        );
        assert!(lines[events.len() + 3].contains("\"event\":\"agent_stopped\""));
        assert!(got.ends_with('\n'));
    }

    /// Counts `write` calls.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<usize>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_line_is_one_write() {
        let calls = Calls::default();
        let mut w = EventWriter::new(Box::new(calls.clone()), "calls");
        for ev in samples(true) {
            w.write_at(&ev, ts()).unwrap();
            let c = calls.0.lock().unwrap();
            assert_eq!(c.len(), w.events_written() as usize, "{}", ev.name());
            assert_eq!(*c.last().unwrap(), ev.to_json_line(ts()).len() + 1);
        }
    }

    #[test]
    fn emit_never_fails_and_counts() {
        let sink = Sink {
            got: Arc::default(),
            budget: Arc::new(Mutex::new(0)),
        };
        let mut w = EventWriter::new(Box::new(sink.clone()), "closed pipe");
        for ev in samples(false) {
            w.emit(&ev);
        }
        assert_eq!(w.events_lost(), samples(false).len() as u64);
        assert_eq!(w.events_written(), 0);
        *sink.budget.lock().unwrap() = usize::MAX;
        w.emit(&samples(false)[0]);
        let got = String::from_utf8(sink.got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 2, "{got}");
        assert!(lines[1].contains("\"event\":\"events_lost\""), "{got}");
    }

    fn tmp(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tcpstall-event-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writer_appends_to_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp("append");
        let path = dir.join("events.ndjson");
        for _ in 0..2 {
            let mut w = EventWriter::open(Some(&path)).unwrap();
            w.write(&samples(false)[9]).unwrap();
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "created {mode:o}: readable by others");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            validate_line(line).unwrap();
        }

        // Reopen after a rotation: the old file keeps what was written, the new one gets
        // what follows.
        let mut w = EventWriter::open(Some(&path)).unwrap();
        let moved = dir.join("events.ndjson.1");
        std::fs::rename(&path, &moved).unwrap();
        w.write(&samples(false)[0]).unwrap();
        w.reopen().unwrap().unwrap();
        w.write(&samples(false)[1]).unwrap();
        assert_eq!(std::fs::read_to_string(&moved).unwrap().lines().count(), 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert!(EventWriter::stdout().reopen().is_none());
        std::fs::remove_dir_all(&dir).unwrap();

        let err = match EventWriter::open(Some(Path::new("/nonexistent-dir/x/events.ndjson"))) {
            Err(e) => e,
            Ok(_) => panic!("opening under a missing directory must fail"),
        };
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent-dir/x/events.ndjson"), "{msg}");
        assert!(msg.contains("--output"), "{msg}");
    }

    #[test]
    fn output_must_be_a_regular_file() {
        let dir = tmp("refuse");
        let target = dir.join("real.ndjson");
        std::fs::write(&target, "").unwrap();
        let link = dir.join("link.ndjson");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dangling = dir.join("dangling.ndjson");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, what) in [
            (link.as_path(), "a symbolic link"),
            (dangling.as_path(), "a symbolic link"),
            (fifo.as_path(), "a FIFO"),
            (dir.as_path(), "a directory"),
            (Path::new("/dev/null"), "a character device"),
        ] {
            let err = match EventWriter::open(Some(path)) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{} accepted as output", path.display()),
            };
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(what), "{what}: {err}");
            assert!(err.contains("omit --output"), "{err}");
        }
        // Nothing was created through the dangling link.
        assert!(!dir.join("nowhere").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod readme_sync {
    /// The README documents the event schema verbatim; regenerate it with
    /// `TCPSTALL_WRITE_SCHEMA=1 cargo test -p monitor --lib readme_sync` and paste.
    #[test]
    fn readme_documents_the_schema_verbatim() {
        let md = super::schema_markdown();
        if std::env::var_os("TCPSTALL_WRITE_SCHEMA").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../target/EVENTS.md"),
                &md,
            )
            .unwrap();
        }
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md at the workspace root");
        assert!(
            readme.contains(md.trim()),
            "README.md's event schema section is out of date: regenerate it (see this test's doc)"
        );
    }
}
