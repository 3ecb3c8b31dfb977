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
//! produces lines, and it is also the documentation: `schemars` derives a JSON Schema from the
//! types and their `///` comments ([`json_schema`]), [`schema()`] reads that into the documented
//! format (rendered for the README by [`schema_markdown`]), and [`validate`] checks a parsed line
//! against it. The unit tests (`tests.rs`) serialize every [`Event`] variant and run it through
//! [`validate`], and check the README against [`schema_markdown`], so code, validator and
//! documentation cannot drift apart.
//!
//! This file holds the typed events; `writer.rs` the output ([`EventWriter`]), `schema.rs` the
//! schema generated from the types, `validate.rs` the validator and `markdown.rs` the README
//! rendering.

mod markdown;
mod schema;
#[cfg(test)]
mod tests;
mod validate;
mod writer;

pub use markdown::schema_markdown;
pub use schema::{
    event_schema, header_fields, json_schema, schema, socket_fields, EventSchema, Field, FieldType,
};
pub use validate::{validate, validate_line};
pub use writer::{open_output, EventWriter};

use crate::classify::{Episodes, Evidence, StallClass};
use schemars::JsonSchema;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Version of the event format, emitted as `"schema"` on every line.
pub const SCHEMA_VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Typed events
// ---------------------------------------------------------------------------------------------

/// Address family of a socket, as reported in `family`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct HookReport {
    /// Hook name
    #[schemars(schema_with = "schema::hook_name")]
    pub hook: String,
    /// Attach point used (`tp_btf/…`, `fentry/…`, `kprobe/…`); null = not attached
    pub attach: Option<String>,
    /// Why this attach point, or why none
    pub why: String,
}

/// Whether destroying an orphaned socket is handled correctly by this kernel (start-up
/// self-test on an orphan of the agent's own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct OrphanReset {
    /// Destroying an orphan (app-closed socket) left nothing behind; false = orphans are never
    /// reset
    pub safe: bool,
    /// What the self-test saw
    pub detail: String,
}

/// What the agent took over from the previous one (restart or upgrade), in
/// `agent_started.state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct StateReport {
    /// The previous agent's pinned kernel map was adopted: stall clocks carry on
    pub adopted: bool,
    /// The previous agent's state file was read back: cadence histories, rate-limit windows, reset
    /// decisions
    pub restored: bool,
    /// What was kept and where it lives, or why the agent started fresh
    pub detail: String,
}

/// Whether the SOCK_DESTROY reset path was found working at startup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ResetPath {
    /// A probe reset of a test socket succeeded
    pub works: bool,
    /// What was tried; on failure, why and how to fix it
    pub detail: String,
}

/// The socket object shared by every socket event, flattened into the top level of the line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct SocketFields {
    /// Kernel socket cookie (unique per boot)
    pub cookie: u64,
    /// Network namespace inode
    pub netns: u32,
    /// Address family
    pub family: Family,
    /// Local address
    #[schemars(extend("format" = "socket-address"))]
    pub local: SocketAddr,
    /// Remote address
    #[schemars(extend("format" = "socket-address"))]
    pub remote: SocketAddr,
    /// Process that last wrote to the socket; null = not yet known
    pub pid: Option<u32>,
    /// That process's command name
    pub comm: Option<String>,
    /// cgroup v2 id of that process
    pub cgroup_id: Option<u64>,
    /// cgroup v2 path of that process, when resolvable
    pub cgroup: Option<String>,
    /// Container of that process, when its cgroup path shows one (Kubernetes systemd/cgroupfs
    /// drivers, Docker, Podman)
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker`, `podman`, or `kubernetes` (a cgroupfs-driver pod, runtime
    /// not named)
    pub container_runtime: Option<String>,
    /// Kubernetes pod UID, when the cgroup path shows a pod
    pub pod_uid: Option<String>,
    /// The pod's namespace, from the kubelet's `/var/log/pods/<ns>_<name>_<uid>` (no API call)
    pub pod_namespace: Option<String>,
    /// The pod's name, from the same directory
    pub pod_name: Option<String>,
    /// Kind of stall
    pub class: StallClass,
    /// Bytes written by the app, not yet acked by the peer
    pub queued_bytes: u64,
    /// Bytes sent on the wire, not yet acked
    pub unacked_bytes: u64,
    /// Peer's advertised window
    pub snd_wnd: u32,
    /// Retransmissions of the current unacked segment
    pub retransmits: u32,
    /// Time without progress, ms
    pub stalled_for_ms: u64,
    /// Policy rule that selected the socket; null = policy defaults
    pub rule: Option<String>,
    /// What the policy decided
    pub action: Action,
    /// The numbers behind the classification
    pub evidence: Evidence,
    /// Received bytes the local app has not read
    pub recv_unread: u64,
}

/// Cumulative enforcement counters in `stats.resets`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ResetCounts {
    /// Sockets reset
    pub done: u64,
    /// Resets the kernel refused
    pub failed: u64,
    /// Resets a guard prevented
    pub skipped: u64,
    /// Attempts that failed with a transient error and were scheduled again
    pub retried: u64,
}

/// Distribution of observed stall durations for one (rule, class) pair, used to calibrate
/// thresholds before enabling enforcement. Read back from recordings by `tcpstall policy check
/// --events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
pub struct CalibrationEntry {
    /// Policy rule; null = policy defaults
    pub rule: Option<String>,
    /// Stall class
    pub class: StallClass,
    #[serde(flatten)]
    pub episodes: Episodes,
}

/// Body of the periodic `stats` event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct StatsFields {
    /// Sockets currently in the tracking map
    pub sockets_tracked: u64,
    /// Capacity of the tracking map
    pub map_capacity: u32,
    /// Inserts refused because the map was full (cumulative)
    pub map_full: u64,
    /// Entries removed to make room in a (nearly) full map (cumulative)
    pub map_evicted: u64,
    /// Entries removed because their socket was gone or had nothing queued any more (cumulative)
    pub map_stale: u64,
    /// Network namespaces the reset path holds a netlink socket in
    pub netns_cached: u64,
    /// Resets are held: ACKs stopped from (almost) every remote network at once
    pub partition_hold: bool,
    /// Socket-close notifications lost (cumulative)
    pub close_notes_lost: u64,
    /// Events the agent failed to write (cumulative)
    pub events_lost: u64,
    /// Lines written before this one since `agent_started` (line 0): in a complete stream, this
    /// line's own 0-based position
    pub events_written: u64,
    /// Sockets currently stalled
    pub stalls_active: u64,
    /// Wall-clock cost of the last tick, µs
    pub sweep_us: u64,
    /// Wall-clock cost of the last tick's read of the tracking map (part of `sweep_us`), µs
    pub map_read_us: u64,
    /// Walks of `/proc` made to find the processes holding tracked sockets no write was seen
    /// on (cumulative; where the kernel's holder iterator answered, none)
    pub proc_walks: u64,
    /// Passes of the kernel's holder iterator that found those processes instead of a walk of
    /// `/proc` (cumulative)
    pub holder_passes: u64,
    /// sock_diag lookups of tracked sockets whose receive side looked full, made because no
    /// read hook is attached (cumulative)
    pub read_lookups: u64,
    /// sock_diag lookups of tracked sockets' progress, made because no ACK hook is attached
    /// (`--trouble-hooks`; cumulative)
    pub progress_lookups: u64,
    /// Agent CPU time (user + system) since start, ms
    pub cpu_ms: u64,
    /// In-kernel run time of the agent's BPF programs, ns; null unless `kernel.bpf_stats_enabled=1`
    pub bpf_run_ns: Option<u64>,
    /// Enforcement counters (cumulative)
    pub resets: ResetCounts,
    /// Observed stall durations per (rule, class)
    pub calibration: Vec<CalibrationEntry>,
}

/// One socket of a `reset_intent` line: enough to find it in the `socket_reset` /
/// `reset_failed` lines that follow, or in the kernel (`ss -e`) if they never came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct IntentSocket {
    /// Kernel socket cookie
    pub cookie: u64,
    /// Network namespace inode
    pub netns: u32,
    /// Local address
    #[schemars(extend("format" = "socket-address"))]
    pub local: SocketAddr,
    /// Remote address
    #[schemars(extend("format" = "socket-address"))]
    pub remote: SocketAddr,
    /// Stall class that led to the reset
    pub class: StallClass,
    /// Policy rule that asked for the reset
    pub rule: Option<String>,
}

/// One line of agent output. Serializes (internally tagged by `"event"`) to the body of the
/// line; [`Event::to_json_line`] adds the `schema` and `ts` header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Once at startup, after the hooks are attached and the policy is loaded.
    AgentStarted {
        /// Agent version
        version: String,
        /// Agent process id
        pid: u32,
        /// Kernel release (`uname -r`)
        kernel: String,
        /// Per hook: the attach point the kernel offered, and why
        hooks: Vec<HookReport>,
        /// What detection lost because a hook could not be attached; empty = nothing
        degraded: Vec<String>,
        /// How the kernel side keys sockets (`address` before Linux 5.12, or when a kprobe is
        /// attached)
        #[schemars(extend("enum" = ["cookie", "address"]))]
        socket_key: String,
        /// Where kernel struct offsets came from
        offsets_source: String,
        /// Run mode
        mode: Mode,
        /// Result of the startup SOCK_DESTROY probe
        reset_path: ResetPath,
        /// Result of the startup self-test of destroying an orphaned socket
        orphan_reset: OrphanReset,
        /// Policy file path; null = built-in defaults
        policy: Option<String>,
        /// Tick period, ms
        tick_ms: u64,
        /// Capacity of the per-socket tracking map
        max_sockets: u32,
        /// What was kept from the previous agent (restart, upgrade); see Operations
        state: StateReport,
    },
    /// A socket crossed its stall threshold. On the send side also when a stall escalates
    /// to a class of higher precedence (`slow_drain` < `no_ack` < `zero_window`): a second
    /// `stall_started` with the new class, without a `stall_cleared` between.
    StallStarted(SocketFields),
    /// A stalled socket made progress again.
    StallCleared(SocketFields),
    /// A stalled socket was closed (by the application or the kernel) while stalled.
    StallClosed(SocketFields),
    /// Enforcement: written (one `write(2)`) right before a batch of SOCK_DESTROY requests (at most
    /// 64 sockets) goes to the kernel. Each socket's `socket_reset` or `reset_failed` follows the
    /// batch; if the agent dies in between, this line is the record of what it was resetting.
    ResetIntent {
        /// The sockets about to be reset, in request order
        sockets: Vec<IntentSocket>,
    },
    /// Enforcement: the agent destroyed a stalled socket.
    SocketReset {
        /// The socket, as judged at decision time.
        #[serde(flatten)]
        socket: SocketFields,
        /// Bytes still queued when the socket was destroyed (lost data)
        bytes_still_queued: u64,
        /// From the reset decision to the kernel's acknowledgement, µs
        reset_latency_us: u64,
    },
    /// Enforcement: the kernel refused to destroy a stalled socket.
    ResetFailed {
        /// The socket.
        #[serde(flatten)]
        socket: SocketFields,
        /// errno from SOCK_DESTROY
        errno: i32,
        /// Symbolic errno name, e.g. `ENOENT`
        error: String,
        /// What the errno means here and what to do
        meaning: String,
        /// Transient error (ENOBUFS, EAGAIN, ETIMEDOUT, EMFILE, ...): tried again in this many ms;
        /// null = final
        retry_in_ms: Option<u64>,
    },
    /// Enforcement: the policy asked for a reset but a guard stopped it.
    ResetSkipped {
        /// The socket.
        #[serde(flatten)]
        socket: SocketFields,
        /// Which guard
        guard: SkipGuard,
        /// Specifics (which port, the limit, what changed)
        detail: String,
    },
    /// Periodically: agent health and calibration counters.
    Stats(StatsFields),
    /// ACKs stopped from (almost) every remote network at once — the node's own path is down, not
    /// its peers: resets are held so a transient outage does not become a mass reset; or the hold
    /// ended.
    PartitionHold {
        /// `started`; `ended` (ACKs came back); `expired` (held for `partition_max_hold`, resets
        /// resume under the budgets)
        #[schemars(extend("enum" = ["started", "ended", "expired"]))]
        state: String,
        /// Remote networks with data in flight and no ACK for a second
        silent_networks: u64,
        /// Remote networks that answered within the last 5 s
        alive_networks: u64,
        /// Silent networks with their silent socket counts, largest first (at most 16)
        networks: Vec<String>,
        /// Resets held during this hold (on `ended` / `expired`)
        resets_held: u64,
    },
    /// Many peers of one remote network went silent together while the rest of the node is fine:
    /// their `no_ack` stalls are reset as they cross their thresholds, outside the rule and network
    /// budgets. Once per episode.
    MassDisconnect {
        /// The remote network (IPv4 /24, IPv6 /64)
        network: String,
        /// Its silent sockets at detection
        silent_sockets: u64,
    },
    /// A threshold looks mis-set for the observed traffic: compare `observed_ms` with
    /// `threshold_ms`, and see whether enforcement would have reset the socket.
    ThresholdWarning {
        /// Policy rule; null = policy defaults
        rule: Option<String>,
        /// Stall class
        class: StallClass,
        /// Threshold in effect, ms
        threshold_ms: u64,
        /// Stall duration observed, ms
        observed_ms: u64,
        /// Socket that triggered the warning
        cookie: u64,
        /// Whether enforcement would have reset this socket
        would_reset: bool,
        /// What to change
        advice: String,
    },
    /// Writing to the event output failed (disk full, closed pipe) and works again: written right
    /// after the first line that could be written again. The agent never stops over a failed write;
    /// it keeps enforcing and counts what it lost.
    EventsLost {
        /// Events lost since the previous `events_lost` line (or since the start)
        count: u64,
        /// Events lost since the start (as `stats.events_lost`)
        total: u64,
    },
    /// SIGHUP: the `--output` file was reopened (log rotation). On success this is the first line
    /// of the new file; on failure the agent keeps writing to the old file and says why here.
    OutputReopened {
        /// The output path
        output: String,
        /// Whether the path could be opened
        ok: bool,
        /// What failed, why, what to do; null on success
        error: Option<String>,
    },
    /// SIGHUP: the policy file was read and validated again. A valid file replaces the policy in
    /// force, keeping every socket's state (stalls, history, budgets); an invalid one is refused
    /// and the old policy stays in force.
    PolicyReload {
        /// Policy file; null = the agent runs without `--policy` (nothing to reload)
        policy: Option<String>,
        /// Whether the new policy is in force
        ok: bool,
        /// Why it was refused: one `FILE:LINE:COL: …` line per problem, as `policy check` prints
        /// them; empty when `ok`
        problems: Vec<String>,
        /// Valid but dangerous settings in the file, as `policy check` prints them
        warnings: Vec<String>,
        /// Run mode in force after the reload
        mode: Mode,
        /// What changed, or what does not take effect until a restart
        detail: String,
    },
    /// Once at exit.
    AgentStopped {
        /// Why (signal, error message)
        reason: String,
        /// Time since `agent_started`, ms
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
