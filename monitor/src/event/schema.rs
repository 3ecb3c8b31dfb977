//! The documented event schema: [`FieldType`], [`Field`], [`EventSchema`] and the table of
//! every event type's fields, which the README section and [`validate`](super::validate) use.

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

pub(super) const CLASSES: &[&str] = &["zero_window", "no_ack", "slow_drain", "recv_backlog"];
pub(super) const FAMILIES: &[&str] = &["inet", "inet6"];
pub(super) const ACTIONS: &[&str] = &["observe", "reset"];
pub(super) const MODES: &[&str] = &["observe", "enforce", "dry_run"];
pub(super) const GUARDS: &[&str] = &[
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
