//! Policy: which sockets tcpstall classifies with which thresholds, and which it may reset.
//!
//! Operators write a TOML file. The agent validates it completely before anything is
//! attached: every problem in the file is reported at once, each as
//! `FILE:LINE:COL: what is wrong; write instead: what to write`. Without a file the agent
//! runs [`Policy::default()`]: 30 s thresholds, 1 s tick, observe only, port 22 protected,
//! at most 60 resets a minute per rule (see `[guards]`).
//!
//! # The policy file
//!
//! ```toml
//! tick = "1s"                  # how often the agent reads socket state; 100ms..60s (default 1s)
//!
//! [defaults]                   # thresholds for every socket; rules inherit what they don't set
//! zero_window_after = "30s"    # peer advertises a zero window (alive, not reading) this long
//! no_ack_after = "30s"         # data outstanding, no ACK progress this long (peer gone)
//! slow_drain_floor = "1KiB/s"  # send buffer full and acked bytes/s below this ...
//! slow_drain_window = "30s"    # ... measured over this window
//! recv_backlog_after = "30s"   # the local process has not read its receive queue this long
//! cadence_factor = 2.0         # history rule, >= 1.0 (see below)
//! ceiling = "5m"               # cap for cadence-extended thresholds; >= every threshold
//! action = "observe"           # optional; [defaults] can only observe
//!
//! [guards]
//! protect_ports = [22]         # never reset our service on 22, nor our outgoing connections to 22
//! max_resets_per_minute = 60   # per rule and minute, at least; 0 disables resets entirely
//! reset_share_per_minute = 0.1 # ... or this share of the sockets the rule tracks, if more
//! network_share = 0.5          # one remote network (/24, /64) gets at most this share of it
//! mass_disconnect_min = 20     # this many silent peers of one network: reset together
//! partition_min_networks = 2   # hold every reset while this many remote networks ...
//! partition_share = 0.9        # ... and this share of those heard from went silent at once
//! partition_max_hold = "5m"    # for at most this long
//!
//! [[rule]]                     # any number of rules; the first that matches a socket wins
//! name = "websocket-server"    # required, unique; letters, digits, '.', '_', '-'
//! local_ports = [8000, "9000-9100"]
//! remote_ports = [443]
//! local_cidrs = ["192.0.2.0/24"]
//! remote_cidrs = ["10.0.0.0/8", "fd00::/8"]
//! comm = ["granian"]
//! cgroup_prefix = ["/system.slice/app.service"]
//! netns = [4026531840]
//! k8s_namespace = ["payments"]
//! pod_prefix = ["api-"]
//! # match_all = true           # instead of selectors: this rule selects every socket
//! classes = ["zero_window", "no_ack"]
//! action = "reset"
//! zero_window_after = "20s"    # any [defaults] threshold key may be overridden per rule
//! ```
//!
//! ## Values
//!
//! * **Durations** are strings of whole numbers with a unit, no spaces: `ms`, `s`, `m`, `h`,
//!   combinable: `"500ms"`, `"30s"`, `"1m30s"`, `"2h"`.
//! * **Rates** are strings: a whole number, a binary unit (`B`, `KiB`, `MiB`, `GiB`;
//!   1 KiB = 1024 bytes) and `/s`: `"512B/s"`, `"1KiB/s"`, `"2MiB/s"`. `"0B/s"` turns
//!   `slow_drain` off.
//!
//! ## `[defaults]`
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `zero_window_after` | `"30s"` | `zero_window`: data queued, the peer advertises a zero window and nothing is acked for this long (the peer is alive but not reading) |
//! | `no_ack_after` | `"30s"` | `no_ack`: data outstanding and no ACK progress for this long while retransmits climb (the peer is gone) |
//! | `slow_drain_floor` | `"1KiB/s"` | `slow_drain`: the send buffer is full and the peer acks fewer bytes per second than this ... |
//! | `slow_drain_window` | `"30s"` | ... measured over this window |
//! | `recv_backlog_after` | `"30s"` | `recv_backlog`: received data sits unread by the local process this long (observe only: the bug is local) |
//! | `cadence_factor` | `2.0` | a socket that stalled before and recovered by itself is called stalled only after `cadence_factor` × its longest recovered stall, if that is longer than the threshold; `1.0` turns this off |
//! | `ceiling` | `"5m"` | the cadence rule never pushes a threshold past this; must be at least every threshold above |
//! | `action` | `"observe"` | only `"observe"`: resets are written in a named `[[rule]]` |
//!
//! Thresholds are between 1s and 24h. A socket that no rule selects is classified with
//! `[defaults]` and reported, but never reset: no rule, no action.
//!
//! ## `[guards]`
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `protect_ports` | `[22]` | by direction, whatever a rule says: a listed **local** port protects our service on it (and anything else using that local port); a listed **remote** port protects our **outgoing** connections to it — not a client that connects to one of our services from that source port (it is told apart by a listening socket on the local port; when that cannot be looked up, the socket stays protected). The list replaces the default: keep 22 in it to keep SSH protected. `[]` protects nothing |
//! | `max_resets_per_minute` | `60` | each reset rule's budget per sliding minute is at least this; `0` means no resets at all, ever |
//! | `reset_share_per_minute` | `0.1` | a rule's budget grows to this share of the sockets it tracks (those with data queued), when that is more: max(60, 10 % of 3,000) = 300 |
//! | `network_share` | `0.5` | one remote network (IPv4 /24, IPv6 /64) may use at most this share of a rule's budget, so clients of one network cannot spend it for everyone |
//! | `mass_disconnect_min` | `20` | when at least this many sockets of one remote network (and 90 % of those with data in flight) hear nothing for a second while the node is not partitioned, their peers vanished together: their `no_ack` stalls are reset as they cross their thresholds, outside both budgets (a `mass_disconnect` event says so once) |
//! | `partition_min_networks` | `2` | **partition hold**: while at least this many remote networks ... |
//! | `partition_share` | `0.9` | ... and at least this share of the networks heard from in the last 5 s went silent at once, the node's own path is down, not its peers: no socket is reset (guard `partition_hold`, and a `partition_hold` event when it starts and ends) |
//! | `partition_max_hold` | `"5m"` | a hold lasts at most this long; then resets resume, under the budgets |
//!
//! ## `[[rule]]`
//!
//! Rules are tried in file order; the first rule whose selectors all match a socket decides
//! its thresholds and action. A rule must have at least one selector, or `match_all = true`.
//! Every selector is a list; a socket matches a selector when it matches any entry.
//!
//! | key | meaning |
//! | --- | --- |
//! | `name` | required, unique, 1-64 of `A-Z a-z 0-9 . _ -`; appears in every event |
//! | `local_ports`, `remote_ports` | ports (`8000`) and inclusive ranges (`"9000-9100"`), 1-65535 |
//! | `local_cidrs`, `remote_cidrs` | networks (`"10.0.0.0/8"`, `"fd00::/8"`) or single addresses; IPv4 networks also match IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) |
//! | `comm` | process names, exact, at most 15 bytes (the kernel's `comm`, as in `ps -o comm`) of the process that last wrote to the socket |
//! | `cgroup_prefix` | cgroup v2 paths (as after `0::` in `/proc/PID/cgroup`); `"/a/b"` matches `/a/b` and `/a/b/c`, not `/a/bc` |
//! | `netns` | network namespace inode numbers (`4026531840`, or `"net:[4026531840]"` as `readlink /proc/PID/ns/net` prints) |
//! | `k8s_namespace` | Kubernetes namespaces, exact (`"payments"`), of the pod the writer runs in |
//! | `pod_prefix` | Kubernetes pod name prefixes (`"api-"`) |
//! | `match_all` | `true`: select every socket (no other selectors allowed) |
//! | `classes` | stall classes the action applies to: `zero_window`, `no_ack`, `slow_drain`, `recv_backlog`; default `["zero_window", "no_ack", "slow_drain"]`; `recv_backlog` cannot be combined with `reset` |
//! | `action` | `"observe"` (default) or `"reset"` |
//! | threshold keys | any key of the `[defaults]` threshold table overrides it for this rule |
//!
//! A socket whose process name, cgroup or pod is not known yet does not match a rule that has
//! a `comm`, `cgroup_prefix`, `k8s_namespace` or `pod_prefix` selector: tcpstall never resets
//! what it cannot identify. The pod of a socket is its last writer's: the container and pod
//! come from the writer's cgroup path (Kubernetes with the systemd or cgroupfs driver, Docker,
//! Podman), the pod's namespace and name from the kubelet's `/var/log/pods/<ns>_<name>_<uid>`
//! directories (no API call; rescanned at most every 5 s when a pod is new).
//!
//! The loader rejects, among others: unknown keys (with the closest known key), malformed
//! durations, rates, ports and CIDRs, networks with host bits set, reversed port ranges,
//! rules without selectors, duplicate rule names, rules that can never match because an
//! earlier rule selects everything they select, reset rules whose ports are all protected,
//! thresholds above the ceiling and a `cadence_factor` below 1. A policy file must be a
//! regular file (a symbolic link to one is followed) of at most [`MAX_POLICY_BYTES`]; a FIFO,
//! device or directory is refused before it is read. Valid but dangerous settings are
//! listed in [`Policy::warnings`] (see [`Policy::warning_lines`]).

use crate::classify::{StallClass, Thresholds};
use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod shadow;

/// The largest policy file accepted (1 MiB): bigger files are refused before they are read.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// The text of a policy file, read safely: the path (symbolic links followed) must be a
/// regular file, checked before it is opened (opening a FIFO blocks, opening some devices
/// has effects) and again on the open descriptor; at most [`MAX_POLICY_BYTES`] are read.
/// `Err((what is wrong, what to do))`.
fn read_policy_file(path: &Path) -> Result<String, (String, String)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let usable = "the path of a readable TOML policy file (a symbolic link to one is fine), or \
                  no policy file to run with the built-in defaults (observe only)"
        .to_string();
    let io_err = |e: std::io::Error| {
        let message = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "cannot read the policy file: it does not exist".to_string()
            }
            std::io::ErrorKind::PermissionDenied => {
                "cannot read the policy file: permission denied".to_string()
            }
            _ => format!("cannot read the policy file: {e}"),
        };
        (message, usable.clone())
    };
    let not_regular = |what: &str| {
        (
            format!(
                "cannot read the policy file: it is {what}, not a regular file (reading it \
                 could block or never end)"
            ),
            usable.clone(),
        )
    };
    let too_big = |len: u64| {
        (
            format!(
                "the policy file is too large: {len} bytes, the limit is {MAX_POLICY_BYTES} \
                 bytes (1 MiB)"
            ),
            "a smaller policy: merge rules that share their settings (selectors take lists \
             and port ranges)"
                .to_string(),
        )
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if let Some(what) = crate::files::not_regular(&meta.file_type()) {
        return Err(not_regular(what));
    }
    if meta.len() > MAX_POLICY_BYTES {
        return Err(too_big(meta.len()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Never block in open(): the path may have been swapped for a FIFO since the check.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if let Some(what) = crate::files::not_regular(&meta.file_type()) {
        return Err(not_regular(what));
    }
    let mut buf = Vec::with_capacity(meta.len().min(MAX_POLICY_BYTES) as usize);
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    if buf.len() as u64 > MAX_POLICY_BYTES {
        // It grew while being read.
        return Err(too_big(buf.len() as u64));
    }
    String::from_utf8(buf).map_err(|_| {
        (
            "cannot read the policy file: it is not UTF-8 text".to_string(),
            usable.clone(),
        )
    })
}

/// A commented example policy (the repository's `policy.example.toml`). It parses.
pub const EXAMPLE_POLICY: &str = r#"# tcpstall policy: which wedged TCP connections to report, and which to reset.
# Check it with `tcpstall policy check FILE` before deploying it.

# How often the agent reads socket state.
tick = "1s"

# Thresholds for every socket. A socket that no rule below selects is
# classified with these and reported, but never reset.
[defaults]
zero_window_after = "30s"    # peer alive but not reading: zero window, nothing acked
no_ack_after = "30s"         # peer gone: data outstanding, no ACKs, retransmits rising
slow_drain_floor = "1KiB/s"  # send buffer full and the peer acks less than this...
slow_drain_window = "30s"    # ...measured over this window
recv_backlog_after = "30s"   # our own process is not reading what it received
cadence_factor = 2.0         # a socket that stalled and recovered before gets up to
ceiling = "5m"               # 2x its longest recovered stall, but never past 5m

[guards]
protect_ports = [22]         # never reset our SSH service, nor our SSH sessions out
max_resets_per_minute = 60   # per rule and minute (more for rules selecting many sockets)

# Granian serving WebSockets on :8000. A client that stops reading (killed tab,
# sleeping phone, half-open tunnel) fills the send buffer; the send parked on it
# holds the transport lock and freezes the worker until TCP gives up 15+ minutes
# later. Reset those connections after 20s instead.
[[rule]]
name = "granian-websocket"
local_ports = [8000]
# comm = ["granian"]         # narrow further by process name (as `ps -o comm` shows)
classes = ["zero_window", "no_ack"]
action = "reset"
zero_window_after = "20s"
cadence_factor = 3.0         # mobile clients stall and recover; allow for that...
ceiling = "2m"               # ...but not for long

# Server-sent events from the gateway service: clients disappear without a FIN,
# keepalive events pile up unacknowledged and connections stay ESTABLISHED.
[[rule]]
name = "sse-dead-clients"
local_ports = ["8443-8444"]
cgroup_prefix = ["/system.slice/mcp-gateway.service"]
classes = ["no_ack"]
action = "reset"
no_ack_after = "30s"

# Connections to the database network: never reset, but report wedges sooner.
[[rule]]
name = "postgres-watch"
remote_ports = [5432]
remote_cidrs = ["10.20.0.0/16", "fd00:20::/32"]
action = "observe"
no_ack_after = "10s"
zero_window_after = "10s"

# Everything else is observed with [defaults] and never reset.
"#;

// ---------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------

/// What a rule does to a socket that is stalled in one of its classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Report the stall (events), never touch the socket.
    Observe,
    /// Report the stall and destroy the socket (subject to [`Guards`]).
    Reset,
}

impl Action {
    /// The spelling used in the policy file and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Observe => "observe",
            Action::Reset => "reset",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of TCP ports (`first == last` for a single port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// A range holding one port.
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// The file syntax: `8000` as a number, `"9000-9100"` as a string.
    fn to_json(self) -> serde_json::Value {
        if self.first == self.last {
            json!(self.first)
        } else {
            json!(self.to_string())
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// What a rule selects. `None` means "any"; a rule built from a file has at least one
/// selector, or `match_all`. All given selectors must match; within one, any entry may.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selectors {
    /// Select every socket (no other selector may be set).
    pub match_all: bool,
    pub local_ports: Option<Vec<PortRange>>,
    pub remote_ports: Option<Vec<PortRange>>,
    pub local_cidrs: Option<Vec<IpNet>>,
    pub remote_cidrs: Option<Vec<IpNet>>,
    /// Exact process names (<= 15 bytes). Unknown comm never matches.
    pub comm: Option<Vec<String>>,
    /// cgroup v2 path prefixes, matched on path-component boundaries. Unknown cgroup never
    /// matches.
    pub cgroup_prefix: Option<Vec<String>>,
    /// Network namespace inode numbers.
    pub netns: Option<Vec<u32>>,
    /// Kubernetes namespaces, exact. A socket whose pod is unknown never matches.
    pub k8s_namespace: Option<Vec<String>>,
    /// Kubernetes pod name prefixes. A socket whose pod is unknown never matches.
    pub pod_prefix: Option<Vec<String>>,
}

impl Selectors {
    /// True when neither `match_all` nor any selector is set. Such selectors match every
    /// socket; the file loader refuses them (it wants an explicit `match_all = true`).
    pub fn is_empty(&self) -> bool {
        !self.match_all && self.set_names().is_empty()
    }

    /// Whether a socket with this identity is selected.
    pub fn matches(&self, id: &SocketIdentity<'_>) -> bool {
        if self.match_all {
            return true;
        }
        fn ports_ok(ranges: &Option<Vec<PortRange>>, port: u16) -> bool {
            ranges
                .as_ref()
                .is_none_or(|r| r.iter().any(|r| r.contains(port)))
        }
        fn nets_ok(nets: &Option<Vec<IpNet>>, ip: IpAddr) -> bool {
            nets.as_ref().is_none_or(|n| ip_in_nets(n, ip))
        }
        ports_ok(&self.local_ports, id.local.port())
            && ports_ok(&self.remote_ports, id.remote.port())
            && nets_ok(&self.local_cidrs, id.local.ip())
            && nets_ok(&self.remote_cidrs, id.remote.ip())
            && self.comm.as_ref().is_none_or(|names| {
                id.comm
                    .is_some_and(|c| names.iter().any(|n| n.as_str() == c))
            })
            && self.cgroup_prefix.as_ref().is_none_or(|prefixes| {
                id.cgroup_path
                    .is_some_and(|p| prefixes.iter().any(|pre| cgroup_under(p, pre)))
            })
            && self.netns.as_ref().is_none_or(|ns| ns.contains(&id.netns))
            && self.k8s_namespace.as_ref().is_none_or(|names| {
                id.pod_namespace
                    .is_some_and(|n| names.iter().any(|x| x.as_str() == n))
            })
            && self.pod_prefix.as_ref().is_none_or(|prefixes| {
                id.pod_name
                    .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
            })
    }

    /// Names of the selector keys that are set.
    fn set_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.local_ports.is_some() {
            names.push("local_ports");
        }
        if self.remote_ports.is_some() {
            names.push("remote_ports");
        }
        if self.local_cidrs.is_some() {
            names.push("local_cidrs");
        }
        if self.remote_cidrs.is_some() {
            names.push("remote_cidrs");
        }
        if self.comm.is_some() {
            names.push("comm");
        }
        if self.cgroup_prefix.is_some() {
            names.push("cgroup_prefix");
        }
        if self.netns.is_some() {
            names.push("netns");
        }
        if self.k8s_namespace.is_some() {
            names.push("k8s_namespace");
        }
        if self.pod_prefix.is_some() {
            names.push("pod_prefix");
        }
        names
    }

    /// One line: `local_ports 8000, 9000-9100 and comm granian`.
    fn describe(&self) -> String {
        if self.match_all {
            return "every socket (match_all)".to_string();
        }
        fn list<T: fmt::Display>(v: &[T]) -> String {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
        let mut parts = Vec::new();
        if let Some(v) = &self.local_ports {
            parts.push(format!("local_ports {}", list(v)));
        }
        if let Some(v) = &self.remote_ports {
            parts.push(format!("remote_ports {}", list(v)));
        }
        if let Some(v) = &self.local_cidrs {
            parts.push(format!("local_cidrs {}", list(v)));
        }
        if let Some(v) = &self.remote_cidrs {
            parts.push(format!("remote_cidrs {}", list(v)));
        }
        if let Some(v) = &self.comm {
            parts.push(format!("comm {}", list(v)));
        }
        if let Some(v) = &self.cgroup_prefix {
            parts.push(format!("cgroup_prefix {}", list(v)));
        }
        if let Some(v) = &self.netns {
            parts.push(format!("netns {}", list(v)));
        }
        if let Some(v) = &self.k8s_namespace {
            parts.push(format!("k8s_namespace {}", list(v)));
        }
        if let Some(v) = &self.pod_prefix {
            parts.push(format!("pod_prefix {}", list(v)));
        }
        if parts.is_empty() {
            return "every socket (no selectors)".to_string();
        }
        parts.join(" and ")
    }

    fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if self.match_all {
            m.insert("match_all".into(), json!(true));
        }
        let strings = |v: &[IpNet]| json!(v.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        let ports = |v: &[PortRange]| json!(v.iter().map(|r| r.to_json()).collect::<Vec<_>>());
        if let Some(v) = &self.local_ports {
            m.insert("local_ports".into(), ports(v));
        }
        if let Some(v) = &self.remote_ports {
            m.insert("remote_ports".into(), ports(v));
        }
        if let Some(v) = &self.local_cidrs {
            m.insert("local_cidrs".into(), strings(v));
        }
        if let Some(v) = &self.remote_cidrs {
            m.insert("remote_cidrs".into(), strings(v));
        }
        if let Some(v) = &self.comm {
            m.insert("comm".into(), json!(v));
        }
        if let Some(v) = &self.cgroup_prefix {
            m.insert("cgroup_prefix".into(), json!(v));
        }
        if let Some(v) = &self.netns {
            m.insert("netns".into(), json!(v));
        }
        if let Some(v) = &self.k8s_namespace {
            m.insert("k8s_namespace".into(), json!(v));
        }
        if let Some(v) = &self.pod_prefix {
            m.insert("pod_prefix".into(), json!(v));
        }
        serde_json::Value::Object(m)
    }
}

/// One `[[rule]]`, with every inherited value filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    /// 1-based line of the rule's `[[rule]]` header; 0 for rules built in code.
    pub line: usize,
    pub selectors: Selectors,
    pub action: Action,
    /// The classes `action` applies to.
    pub classes: Vec<StallClass>,
    /// `[defaults]` overlaid with this rule's own threshold keys.
    pub thresholds: Thresholds,
}

impl Rule {
    /// Classes a rule acts on when it does not list `classes`.
    pub const DEFAULT_CLASSES: [StallClass; 3] = [
        StallClass::ZeroWindow,
        StallClass::NoAck,
        StallClass::SlowDrain,
    ];
}

/// Limits no rule can override (see `crate::guards` for how each is applied).
#[derive(Clone, Debug, PartialEq)]
pub struct Guards {
    /// Protected ports, by direction: a listed local port protects our service on it, a
    /// listed remote port our outgoing connections to it. Sorted, no duplicates.
    pub protect_ports: Vec<u16>,
    /// Per rule and sliding minute, at least this many resets; 0 = no resets at all.
    pub max_resets_per_minute: u32,
    /// A rule's per-minute budget grows to this share of the sockets it tracks (0..=1).
    pub reset_share_per_minute: f64,
    /// One remote network (IPv4 /24, IPv6 /64) may spend at most this share of a rule's
    /// budget (0 < x <= 1).
    pub network_share: f64,
    /// At least this many silent sockets (90 % of those with data in flight) in one remote
    /// network, while the node is not partitioned, are a mass disconnect: their `no_ack`
    /// stalls are reset outside the budgets.
    pub mass_disconnect_min: u32,
    /// Hold every reset when at least this many remote networks ...
    pub partition_min_networks: u32,
    /// ... and at least this share of the networks heard from lately went silent at once.
    pub partition_share: f64,
    /// A hold lasts at most this long; then resets resume (budgets still apply).
    pub partition_max_hold: Duration,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            protect_ports: vec![22],
            max_resets_per_minute: 60,
            reset_share_per_minute: 0.1,
            network_share: 0.5,
            mass_disconnect_min: 20,
            partition_min_networks: 2,
            partition_share: 0.9,
            partition_max_hold: Duration::from_secs(300),
        }
    }
}

impl Guards {
    pub fn budgets(&self) -> crate::guards::BudgetGuards {
        crate::guards::BudgetGuards {
            max_resets_per_minute: self.max_resets_per_minute,
            reset_share_per_minute: self.reset_share_per_minute,
            network_share: self.network_share,
        }
    }

    pub fn networks(&self) -> crate::guards::NetGuards {
        crate::guards::NetGuards {
            partition_min_networks: self.partition_min_networks,
            partition_share: self.partition_share,
            mass_disconnect_min: self.mass_disconnect_min,
        }
    }
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Agent tick (100 ms ..= 60 s).
    pub tick: Duration,
    /// Thresholds for sockets no rule selects, and the base every rule inherits from.
    pub defaults: Thresholds,
    pub guards: Guards,
    /// In file order; the first matching rule wins.
    pub rules: Vec<Rule>,
    /// The file this policy was loaded from; `None` for built-in defaults or `parse`.
    pub source: Option<PathBuf>,
    /// Valid but dangerous settings, in file order (see [`Policy::warning_lines`]).
    pub warnings: Vec<Problem>,
}

impl Default for Policy {
    /// The policy without a file: 30 s thresholds, 1 s tick, observe only, port 22
    /// protected, 60 resets per minute.
    fn default() -> Self {
        Policy {
            tick: DEFAULT_TICK,
            defaults: Thresholds::default(),
            guards: Guards::default(),
            rules: Vec::new(),
            source: None,
            warnings: Vec::new(),
        }
    }
}

/// The identity of a socket as far as rule selection needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketIdentity<'a> {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Process name of the last writer; `None` while unknown.
    pub comm: Option<&'a str>,
    /// cgroup v2 path of the last writer (e.g. `/system.slice/app.service`); `None` while
    /// unknown.
    pub cgroup_path: Option<&'a str>,
    /// Network namespace inode number.
    pub netns: u32,
    /// Kubernetes namespace and pod name of the writer, when known.
    pub pod_namespace: Option<&'a str>,
    pub pod_name: Option<&'a str>,
}

/// The outcome of [`Policy::select`] for one socket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Selection<'a> {
    /// The first rule that matched, or `None`.
    pub rule: Option<&'a Rule>,
    /// Thresholds to classify the socket with (the rule's, else `[defaults]`).
    pub thresholds: &'a Thresholds,
    /// `Observe` when no rule matched.
    pub action: Action,
    /// Classes the action applies to; empty when no rule matched.
    pub classes: &'a [StallClass],
}

impl Selection<'_> {
    /// Whether the policy asks for a reset of a socket stalled in `class`. This does not
    /// consult [`Guards`]: the reset stage must still check [`Policy::is_protected`] and the
    /// rate limit.
    pub fn resets(&self, class: StallClass) -> bool {
        self.action == Action::Reset && self.classes.contains(&class)
    }
}

/// Everything wrong with a policy file.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyError {
    /// The file as named to the user.
    pub file: String,
    /// Sorted by position.
    pub problems: Vec<Problem>,
}

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// 1-based; 0 when the problem concerns the whole file (e.g. unreadable).
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub hint: Option<String>,
}

impl fmt::Display for PolicyError {
    /// One line per problem: `FILE:LINE:COL: what; write instead: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.line == 0 {
                write!(f, "{}: {}", self.file, p.message)?;
            } else {
                write!(f, "{}:{}:{}: {}", self.file, p.line, p.col, p.message)?;
            }
            if let Some(h) = &p.hint {
                write!(f, "; write instead: {h}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// Read and validate a policy file. Unreadable files are reported as a [`PolicyError`]
    /// with a single problem at line 0; so are files that are not regular files (a FIFO
    /// would block the reader, `/dev/zero` never ends) and files over [`MAX_POLICY_BYTES`].
    /// A symbolic link to a regular file is followed (configuration management and
    /// Kubernetes ConfigMaps install policies as links).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let label = path.display().to_string();
        let src = read_policy_file(path).map_err(|(message, hint)| PolicyError {
            file: label.clone(),
            problems: vec![Problem {
                line: 0,
                col: 0,
                message,
                hint: Some(hint),
            }],
        })?;
        let mut policy = Policy::parse(&src, &label)?;
        policy.source = Some(path.to_path_buf());
        Ok(policy)
    }

    /// The warnings as `policy check` prints them: `FILE:LINE:COL: warning: what and why;
    /// consider: what to write instead`.
    pub fn warning_lines(&self) -> Vec<String> {
        let file = self
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "policy".to_string());
        self.warnings
            .iter()
            .map(|w| {
                let mut line = if w.line == 0 {
                    format!("{file}: warning: {}", w.message)
                } else {
                    format!("{file}:{}:{}: warning: {}", w.line, w.col, w.message)
                };
                if let Some(h) = &w.hint {
                    line.push_str("; consider: ");
                    line.push_str(h);
                }
                line
            })
            .collect()
    }

    /// Validate policy text. `file_label` names the file in problems.
    pub fn parse(src: &str, file_label: &str) -> Result<Policy, PolicyError> {
        let mut cx = Cx::new(src);
        let policy = match toml::from_str::<RawNode>(src) {
            Ok(raw) => {
                let root = raw.resolve(&(0..0));
                build(&mut cx, &root)
            }
            Err(e) => {
                cx.syntax_error(&e);
                Policy::default()
            }
        };
        if cx.problems.is_empty() {
            let mut policy = policy;
            let warnings = std::mem::take(&mut cx.warnings);
            policy.warnings = cx.finish(warnings);
            Ok(policy)
        } else {
            let problems = std::mem::take(&mut cx.problems);
            let problems = cx.finish(problems);
            Err(PolicyError {
                file: file_label.to_string(),
                problems,
            })
        }
    }

    /// Which rule (if any) selects this socket, the thresholds to classify it with, and its
    /// action. The first matching rule wins; with none, `[defaults]` and `Observe`.
    pub fn select(&self, id: &SocketIdentity<'_>) -> Selection<'_> {
        match self.rules.iter().find(|r| r.selectors.matches(id)) {
            Some(rule) => Selection {
                rule: Some(rule),
                thresholds: &rule.thresholds,
                action: rule.action,
                classes: &rule.classes,
            },
            None => Selection {
                rule: None,
                thresholds: &self.defaults,
                action: Action::Observe,
                classes: &[],
            },
        }
    }

    /// Why `[guards] protect_ports` forbids resetting a socket with these ports, if it does;
    /// `local_listener` as in [`crate::guards::protected`].
    pub fn is_protected(
        &self,
        local_port: u16,
        remote_port: u16,
        local_listener: Option<bool>,
    ) -> Option<String> {
        crate::guards::protected(
            &self.guards.protect_ports,
            local_port,
            remote_port,
            local_listener,
        )
    }

    /// Human-readable effective rules (every inherited value filled in), for
    /// `tcpstall policy check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let source = match &self.source {
            Some(p) => p.display().to_string(),
            None => "built-in defaults (no policy file)".to_string(),
        };
        out.push_str(&format!("policy: {source}\n"));
        out.push_str(&format!("tick: {}\n", format_duration(self.tick)));
        let g = &self.guards;
        let ports = if g.protect_ports.is_empty() {
            "no protected ports".to_string()
        } else {
            let p = join(&g.protect_ports, ", ");
            format!("never reset our service on port {p} nor our outgoing connections to {p}")
        };
        let budget = match g.max_resets_per_minute {
            0 => "resets disabled (max_resets_per_minute = 0)".to_string(),
            n => format!(
                "per rule at most max({n}, {}% of the sockets it tracks) resets per minute, one \
                 remote network at most {}% of that",
                g.reset_share_per_minute * 100.0,
                g.network_share * 100.0
            ),
        };
        out.push_str(&format!("guards: {ports}; {budget}\n"));
        out.push_str(&format!(
            "        mass disconnect: {} or more silent peers of one remote network are reset \
             together, outside the budget; partition hold: no resets while {} or more remote \
             networks and {}% of those heard from are silent at once (at most {})\n",
            g.mass_disconnect_min,
            g.partition_min_networks,
            g.partition_share * 100.0,
            format_duration(g.partition_max_hold)
        ));
        out.push_str("defaults (sockets no rule selects; observed, never reset):\n");
        out.push_str(&format!("  {}\n", describe_thresholds(&self.defaults)));
        if self.rules.is_empty() {
            out.push_str("rules: none; every socket is observed with the defaults\n");
            return out;
        }
        out.push_str("rules (first match wins):\n");
        for (i, r) in self.rules.iter().enumerate() {
            let at = if r.line > 0 {
                format!(" (line {})", r.line)
            } else {
                String::new()
            };
            let what = match r.action {
                Action::Reset => format!(
                    "reset on {}",
                    r.classes
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Action::Observe => "observe".to_string(),
            };
            out.push_str(&format!("  {}. {}{at}: {what}\n", i + 1, r.name));
            out.push_str(&format!("     match: {}\n", r.selectors.describe()));
            out.push_str(&format!(
                "     thresholds: {}\n",
                describe_thresholds(&r.thresholds)
            ));
        }
        out.push_str("  otherwise: observe with the defaults\n");
        out
    }

    /// The same as [`describe`](Self::describe), as JSON. Durations and rates are strings in
    /// the policy file's syntax (`"30s"`, `"1KiB/s"`).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "source": self.source.as_ref().map(|p| p.display().to_string()),
            "tick": format_duration(self.tick),
            "defaults": thresholds_json(&self.defaults),
            "guards": {
                "protect_ports": self.guards.protect_ports,
                "max_resets_per_minute": self.guards.max_resets_per_minute,
                "reset_share_per_minute": self.guards.reset_share_per_minute,
                "network_share": self.guards.network_share,
                "mass_disconnect_min": self.guards.mass_disconnect_min,
                "partition_min_networks": self.guards.partition_min_networks,
                "partition_share": self.guards.partition_share,
                "partition_max_hold": format_duration(self.guards.partition_max_hold),
            },
            "rules": self.rules.iter().map(|r| json!({
                "name": r.name,
                "line": r.line,
                "match": r.selectors.to_json(),
                "action": r.action,
                "classes": r.classes,
                "thresholds": thresholds_json(&r.thresholds),
            })).collect::<Vec<_>>(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Value syntax: durations and rates
// ---------------------------------------------------------------------------------------

/// Parse the policy duration syntax: one or more `<whole number><unit>` with units `ms`,
/// `s`, `m`, `h` and no spaces (`"30s"`, `"1m30s"`, `"500ms"`). `None` if malformed.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    let mut i = 0;
    let mut total_ms: u128 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let n: u128 = s[start..i].parse().ok()?;
        let unit_ms: u128 = if b[i..].starts_with(b"ms") {
            i += 2;
            1
        } else {
            let u = match b.get(i) {
                Some(b'h') => 3_600_000,
                Some(b'm') => 60_000,
                Some(b's') => 1_000,
                _ => return None,
            };
            i += 1;
            u
        };
        total_ms = total_ms.checked_add(n.checked_mul(unit_ms)?)?;
    }
    u64::try_from(total_ms).ok().map(Duration::from_millis)
}

/// Format a duration in the policy syntax, exact to the millisecond (`"1m30s"`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

const RATE_UNITS: [(&str, u64); 4] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// Parse the policy rate syntax: `<whole number><B|KiB|MiB|GiB>/s`, returning bytes per
/// second. `None` if malformed.
pub fn parse_rate(s: &str) -> Option<u64> {
    let body = s.strip_suffix("/s")?;
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = body[..digits].parse().ok()?;
    let unit = &body[digits..];
    let (_, mult) = RATE_UNITS.iter().find(|(u, _)| *u == unit)?;
    n.checked_mul(*mult)
}

/// Format bytes per second in the policy syntax, in the largest exact unit (`"1KiB/s"`).
pub fn format_rate(bps: u64) -> String {
    if bps == 0 {
        return "0B/s".to_string();
    }
    let (unit, size) = RATE_UNITS
        .iter()
        .find(|(_, size)| bps.is_multiple_of(*size))
        .expect("B divides everything");
    format!("{}{unit}/s", bps / size)
}

/// Best guess at the rate an operator meant by a malformed string (`"1 KB/s"`, `"2mib"`),
/// for hints.
fn guess_rate(s: &str) -> Option<u64> {
    let t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let lower = t.to_ascii_lowercase();
    let body = ["/s", "/sec", "/second", "ps"]
        .iter()
        .find_map(|suf| lower.strip_suffix(suf))
        .unwrap_or(&lower);
    let num_len = body
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let n: f64 = body[..num_len].parse().ok()?;
    let mult: f64 = match &body[num_len..] {
        "" | "b" | "byte" | "bytes" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1048576.0,
        "g" | "gb" | "gib" => 1073741824.0,
        _ => return None,
    };
    let bytes = (n * mult).round();
    (bytes.is_finite() && bytes >= 0.0 && bytes <= u64::MAX as f64).then_some(bytes as u64)
}

// ---------------------------------------------------------------------------------------
// TOML with spans: a tree of every value with its byte span, read through serde so that
// unknown keys and bad values can all be reported, not just the first.
// ---------------------------------------------------------------------------------------

type Span = Range<usize>;

/// The serde field names through which `toml` hands out spans (the contract behind
/// `serde_spanned::Spanned`, which is not itself usable for keys of datetime values).
const SPANNED_FIELDS: &[&str] = &[
    serde_spanned::__unstable::START_FIELD,
    serde_spanned::__unstable::END_FIELD,
    serde_spanned::__unstable::VALUE_FIELD,
];
/// The key under which `toml` presents a date/time value as a one-entry map.
const TOML_DATETIME_FIELD: &str = "$__toml_private_datetime";

#[derive(Debug)]
struct RawNode {
    span: Option<Span>,
    kind: RawKind,
}

#[derive(Debug)]
enum RawKind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<RawNode>),
    Table(Vec<(RawKey, RawNode)>),
}

#[derive(Debug)]
struct RawKey {
    span: Option<Span>,
    name: String,
}

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = RawKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKey, E> {
                Ok(RawKey {
                    span: None,
                    name: v.to_owned(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawKey, A::Error> {
                let (mut start, mut end, mut name) = (None, None, None);
                while let Some(field) = m.next_key::<String>()? {
                    if field == SPANNED_FIELDS[0] {
                        start = Some(m.next_value::<usize>()?);
                    } else if field == SPANNED_FIELDS[1] {
                        end = Some(m.next_value::<usize>()?);
                    } else if field == SPANNED_FIELDS[2] {
                        name = Some(m.next_value::<String>()?);
                    } else {
                        return Err(de::Error::unknown_field(&field, SPANNED_FIELDS));
                    }
                }
                Ok(RawKey {
                    span: start.zip(end).map(|(s, e)| s..e),
                    name: name.ok_or_else(|| de::Error::missing_field("key"))?,
                })
            }
        }
        d.deserialize_struct(serde_spanned::__unstable::NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

fn read_table<'de, A: MapAccess<'de>>(
    first: Option<RawKey>,
    mut m: A,
) -> Result<RawKind, A::Error> {
    let mut entries = Vec::new();
    let mut pending = first;
    loop {
        let key = match pending.take() {
            Some(k) => k,
            None => match m.next_key::<RawKey>()? {
                Some(k) => k,
                None => break,
            },
        };
        if entries.is_empty() && key.name == TOML_DATETIME_FIELD {
            m.next_value::<de::IgnoredAny>()?;
            return Ok(RawKind::Datetime);
        }
        let value = m.next_value::<RawNode>()?;
        entries.push((key, value));
    }
    Ok(RawKind::Table(entries))
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = RawKind;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawKind, E> {
        Ok(RawKind::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawKind, E> {
        Ok(RawKind::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawKind, E> {
        i64::try_from(v)
            .map(RawKind::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawKind, E> {
        Ok(RawKind::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKind, E> {
        Ok(RawKind::Str(v.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<RawKind, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = s.next_element::<RawNode>()? {
            items.push(n);
        }
        Ok(RawKind::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawKind, A::Error> {
        read_table(None, m)
    }
}

impl<'de> Deserialize<'de> for RawKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl NodeVisitor {
            fn bare(kind: RawKind) -> RawNode {
                RawNode { span: None, kind }
            }
        }
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = RawNode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawNode, E> {
                KindVisitor.visit_bool(v).map(Self::bare)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawNode, E> {
                KindVisitor.visit_i64(v).map(Self::bare)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawNode, E> {
                KindVisitor.visit_u64(v).map(Self::bare)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawNode, E> {
                KindVisitor.visit_f64(v).map(Self::bare)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNode, E> {
                KindVisitor.visit_str(v).map(Self::bare)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<RawNode, A::Error> {
                KindVisitor.visit_seq(s).map(Self::bare)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawNode, A::Error> {
                let Some(first) = m.next_key::<RawKey>()? else {
                    return Ok(Self::bare(RawKind::Table(Vec::new())));
                };
                if first.name != SPANNED_FIELDS[0] {
                    // A value the deserializer had no span for: read it as a plain table.
                    return read_table(Some(first), m).map(Self::bare);
                }
                let start = m.next_value::<usize>()?;
                let mut end = None;
                let mut kind = None;
                while let Some(field) = m.next_key::<String>()? {
                    if field == SPANNED_FIELDS[1] {
                        end = Some(m.next_value::<usize>()?);
                    } else if field == SPANNED_FIELDS[2] {
                        // Deserialized with deserialize_any, so it is not spanned again.
                        kind = Some(m.next_value::<RawKind>()?);
                    } else {
                        return Err(de::Error::unknown_field(&field, SPANNED_FIELDS));
                    }
                }
                Ok(RawNode {
                    span: end.map(|e| start..e),
                    kind: kind.ok_or_else(|| de::Error::missing_field("value"))?,
                })
            }
        }
        d.deserialize_struct(serde_spanned::__unstable::NAME, SPANNED_FIELDS, NodeVisitor)
    }
}

/// A value with the byte span it was written at (inherited from its parent where the
/// parser gave none).
#[derive(Debug)]
struct Node {
    span: Span,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
}

#[derive(Debug)]
struct Key {
    span: Span,
    name: String,
}

impl RawNode {
    fn resolve(self, parent: &Span) -> Node {
        let span = self.span.unwrap_or_else(|| parent.clone());
        let kind = match self.kind {
            RawKind::Str(s) => Kind::Str(s),
            RawKind::Int(i) => Kind::Int(i),
            RawKind::Float(f) => Kind::Float(f),
            RawKind::Bool(b) => Kind::Bool(b),
            RawKind::Datetime => Kind::Datetime,
            RawKind::Array(items) => {
                Kind::Array(items.into_iter().map(|n| n.resolve(&span)).collect())
            }
            RawKind::Table(entries) => Kind::Table(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        let key_span = k
                            .span
                            .or_else(|| v.span.clone())
                            .unwrap_or_else(|| span.clone());
                        let value = v.resolve(&key_span);
                        (
                            Key {
                                span: key_span,
                                name: k.name,
                            },
                            value,
                        )
                    })
                    .collect(),
            ),
        };
        Node { span, kind }
    }
}

impl Kind {
    fn type_name(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime => "a date/time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

const DEFAULT_TICK: Duration = Duration::from_secs(1);
const TICK_MIN: Duration = Duration::from_millis(100);
const TICK_MAX: Duration = Duration::from_secs(60);
const THRESHOLD_MIN: Duration = Duration::from_secs(1);
const THRESHOLD_MAX: Duration = Duration::from_secs(24 * 3600);
const MAX_NAME_LEN: usize = 64;
/// Problems (and warnings) listed for one file at most.
const MAX_PROBLEMS: usize = 100;
/// TASK_COMM_LEN - 1: the kernel keeps at most 15 bytes of a process name.
const MAX_COMM_LEN: usize = 15;

const TOP_KEYS: &[&str] = &["tick", "defaults", "guards", "rule"];
const THRESHOLD_KEYS: &[&str] = &[
    "zero_window_after",
    "no_ack_after",
    "slow_drain_floor",
    "slow_drain_window",
    "recv_backlog_after",
    "cadence_factor",
    "ceiling",
];
const GUARD_KEYS: &[&str] = &[
    "protect_ports",
    "max_resets_per_minute",
    "reset_share_per_minute",
    "network_share",
    "mass_disconnect_min",
    "partition_min_networks",
    "partition_share",
    "partition_max_hold",
];
const SELECTOR_KEYS: &[&str] = &[
    "match_all",
    "local_ports",
    "remote_ports",
    "local_cidrs",
    "remote_cidrs",
    "comm",
    "cgroup_prefix",
    "netns",
    "k8s_namespace",
    "pod_prefix",
];

#[derive(Clone, Copy, PartialEq)]
enum Section {
    Top,
    Defaults,
    Guards,
    Rule,
}

impl Section {
    fn label(self) -> &'static str {
        match self {
            Section::Top => "at the top level",
            Section::Defaults => "[defaults]",
            Section::Guards => "[guards]",
            Section::Rule => "[[rule]]",
        }
    }

    fn keys(self) -> Vec<&'static str> {
        match self {
            Section::Top => TOP_KEYS.to_vec(),
            Section::Defaults => [THRESHOLD_KEYS, &["action"]].concat(),
            Section::Guards => GUARD_KEYS.to_vec(),
            Section::Rule => [
                &["name"],
                SELECTOR_KEYS,
                &["classes", "action"],
                THRESHOLD_KEYS,
            ]
            .concat(),
        }
    }
}

/// A setting in one scope: not written, written (with where), or written but invalid
/// (already reported; checks that depend on it are skipped to avoid follow-on noise).
#[derive(Clone, Debug, Default)]
enum Val<T> {
    #[default]
    Unset,
    Set(T, Span),
    Broken,
}

impl<T: Clone> Val<T> {
    fn from_result(r: Option<T>, span: &Span) -> Self {
        match r {
            Some(v) => Val::Set(v, span.clone()),
            None => Val::Broken,
        }
    }
}

struct Cx<'s> {
    src: &'s str,
    line_starts: Vec<usize>,
    /// Problems with the byte offset they point at. Lines and columns are worked out at the
    /// end, for the problems shown only ([`MAX_PROBLEMS`]): counting the characters of a
    /// 1 MiB line for every one of 100,000 problems would take minutes.
    problems: Vec<(usize, Problem)>,
    /// Valid but dangerous settings, likewise.
    warnings: Vec<(usize, Problem)>,
}

impl<'s> Cx<'s> {
    fn new(src: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Cx {
            src,
            line_starts,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        (line, self.src[start..offset].chars().count() + 1)
    }

    fn line_of(&self, span: &Span) -> usize {
        self.line_starts
            .partition_point(|&s| s <= span.start.min(self.src.len()))
    }

    fn report(&mut self, at: &Span, message: impl Into<String>, hint: impl Into<Option<String>>) {
        self.problems.push((
            at.start,
            Problem {
                line: 0,
                col: 0,
                message: message.into(),
                hint: hint.into(),
            },
        ));
    }

    /// A valid but dangerous setting (`policy check` prints it; it does not make the file
    /// invalid).
    fn warn(&mut self, at: &Span, message: impl Into<String>, hint: impl Into<Option<String>>) {
        self.warnings.push((
            at.start,
            Problem {
                line: 0,
                col: 0,
                message: message.into(),
                hint: hint.into(),
            },
        ));
    }

    /// In file order, at most [`MAX_PROBLEMS`] with their positions, then a line saying how
    /// many more there are.
    fn finish(&self, mut list: Vec<(usize, Problem)>) -> Vec<Problem> {
        list.sort_by_key(|(offset, _)| *offset);
        let total = list.len();
        list.truncate(MAX_PROBLEMS);
        let mut out: Vec<Problem> = list
            .into_iter()
            .map(|(offset, mut p)| {
                (p.line, p.col) = self.position(offset);
                p
            })
            .collect();
        if total > MAX_PROBLEMS {
            out.push(Problem {
                line: 0,
                col: 0,
                message: format!(
                    "{} more not shown (only the first {MAX_PROBLEMS} are listed)",
                    total - MAX_PROBLEMS
                ),
                hint: Some("fix these and check again".to_string()),
            });
        }
        out
    }

    fn syntax_error(&mut self, e: &toml::de::Error) {
        let span = e.span().unwrap_or(0..0);
        let message = format!(
            "not valid TOML: {}",
            e.message().trim().lines().collect::<Vec<_>>().join("; ")
        );
        let hint = if e.message().contains("duplicate key") {
            Some(
                "each key once per table; start every rule with its own [[rule]] header"
                    .to_string(),
            )
        } else if e.message().contains("invalid string") {
            Some(self.quoted_line_hint(span.start))
        } else {
            None
        };
        self.report(&span, message, hint);
    }

    /// For `key = bare words` lines: the same line with the value quoted.
    fn quoted_line_hint(&self, offset: usize) -> String {
        let (line, _) = self.position(offset);
        let text = self.src[self.line_starts[line - 1]..]
            .lines()
            .next()
            .unwrap_or("");
        let text = text.split('#').next().unwrap_or("").trim();
        match text.split_once('=') {
            Some((k, v)) if !v.trim().is_empty() => {
                format!(
                    "{} = \"{}\" (text values go in double quotes)",
                    k.trim(),
                    v.trim()
                )
            }
            _ => "text values in double quotes, e.g. action = \"reset\"".to_string(),
        }
    }

    fn unknown_key(&mut self, key: &Key, section: Section) {
        let known = section.keys();
        let place = match section {
            Section::Top => section.label().to_string(),
            _ => format!("in {}", section.label()),
        };
        let mut message = format!("unknown key `{}` {place}", key.name);
        let name = key.name.as_str();
        let hint = if let Some(best) = closest(name, &known) {
            best.to_string()
        } else if THRESHOLD_KEYS.contains(&name)
            && matches!(section, Section::Top | Section::Guards)
        {
            message.push_str("; thresholds belong in [defaults] or a [[rule]]");
            format!("{name} under [defaults]")
        } else if SELECTOR_KEYS.contains(&name) && section == Section::Defaults {
            message
                .push_str("; selectors belong in a [[rule]]: [defaults] applies to every socket");
            format!("{name} under [[rule]]")
        } else if let Some(home) = [
            Section::Rule,
            Section::Guards,
            Section::Top,
            Section::Defaults,
        ]
        .into_iter()
        .find(|s| *s != section && s.keys().contains(&name))
        {
            message.push_str(&match home {
                Section::Top => "; it belongs at the top of the file".to_string(),
                Section::Rule => "; it belongs in a [[rule]]".to_string(),
                _ => format!("; it belongs in {}", home.label()),
            });
            match home {
                Section::Top => format!("{name} at the top of the file, before any [table]"),
                _ => format!("{name} under {}", home.label()),
            }
        } else {
            format!("one of {}", known.join(", "))
        };
        self.report(&key.span, message, Some(hint));
    }

    fn wrong_type(&mut self, key: &Key, node: &Node, wanted: &str, example: &str) {
        self.report(
            &node.span,
            format!(
                "`{}` must be {wanted}, not {}",
                key.name,
                node.kind.type_name()
            ),
            Some(format!("{} = {example}", key.name)),
        );
    }

    fn table<'n>(&mut self, key: &Key, node: &'n Node, example: &str) -> Option<&'n [(Key, Node)]> {
        match &node.kind {
            Kind::Table(entries) => Some(entries),
            _ => {
                self.report(
                    &key.span,
                    format!(
                        "`{}` must be a table, not {}",
                        key.name,
                        node.kind.type_name()
                    ),
                    Some(example.to_string()),
                );
                None
            }
        }
    }

    /// A non-empty array; reports and returns None otherwise.
    fn list<'n>(
        &mut self,
        key: &Key,
        node: &'n Node,
        example: &str,
        empty_means: &str,
    ) -> Option<&'n [Node]> {
        match &node.kind {
            Kind::Array(items) if items.is_empty() => {
                self.report(
                    &node.span,
                    format!("`{} = []` {empty_means}", key.name),
                    Some(format!("{} = {example}, or remove the key", key.name)),
                );
                None
            }
            Kind::Array(items) => Some(items),
            _ => {
                self.wrong_type(key, node, "a list", example);
                None
            }
        }
    }

    /// Parse every element of a list with `f`; all errors reported; None if any failed.
    fn each<T>(
        &mut self,
        items: &[Node],
        mut f: impl FnMut(&Node) -> Result<T, (String, Option<String>)>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match f(item) {
                Ok(v) => out.push(v),
                Err((msg, hint)) => {
                    self.report(&item.span, msg, hint);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn duration(
        &mut self,
        key: &Key,
        node: &Node,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let name = &key.name;
        let d = match &node.kind {
            Kind::Str(s) => match parse_duration(s) {
                Some(d) => d,
                None => {
                    let hint = match humantime::parse_duration(s.trim()) {
                        Ok(d) => format!("{name} = \"{}\"", format_duration(d)),
                        Err(_) => format!("{name} = \"30s\""),
                    };
                    self.report(
                        &node.span,
                        format!(
                            "`{s}` is not a duration: write whole numbers with a unit (ms, s, m, h) \
                             and no spaces, e.g. \"30s\", \"1m30s\", \"500ms\""
                        ),
                        Some(hint),
                    );
                    return None;
                }
            },
            Kind::Int(n) => {
                self.report(
                    &node.span,
                    format!("`{name} = {n}` has no unit: durations are strings with a unit"),
                    Some(format!("{name} = \"{n}s\"")),
                );
                return None;
            }
            Kind::Float(x) if x.is_finite() && *x >= 0.0 => {
                self.report(
                    &node.span,
                    format!("`{name} = {x}` has no unit: durations are strings with a unit"),
                    Some(format!(
                        "{name} = \"{}\"",
                        format_duration(Duration::from_secs_f64(x.min(1e9)))
                    )),
                );
                return None;
            }
            _ => {
                self.wrong_type(key, node, "a duration string", "\"30s\"");
                return None;
            }
        };
        if d < min || d > max {
            let (lo, hi) = (format_duration(min), format_duration(max));
            let fix = if d < min { &lo } else { &hi };
            self.report(
                &node.span,
                format!(
                    "`{name} = \"{}\"` is out of range: it must be between {lo} and {hi}",
                    format_duration(d)
                ),
                Some(format!("{name} = \"{fix}\"")),
            );
            return None;
        }
        Some(d)
    }

    fn rate(&mut self, key: &Key, node: &Node) -> Option<u64> {
        let name = &key.name;
        match &node.kind {
            Kind::Str(s) => match parse_rate(s) {
                Some(r) => Some(r),
                None => {
                    let hint = format!(
                        "{name} = \"{}\"",
                        format_rate(guess_rate(s).unwrap_or(1024))
                    );
                    self.report(
                        &node.span,
                        format!(
                            "`{s}` is not a rate: write a whole number, a unit (B, KiB, MiB, GiB; \
                             1KiB = 1024 bytes) and \"/s\", e.g. \"512B/s\", \"1KiB/s\", \"2MiB/s\""
                        ),
                        Some(hint),
                    );
                    None
                }
            },
            Kind::Int(n) if *n >= 0 => {
                self.report(
                    &node.span,
                    format!("`{name} = {n}` has no unit: rates are strings such as \"1KiB/s\""),
                    Some(format!("{name} = \"{}\"", format_rate(*n as u64))),
                );
                None
            }
            _ => {
                self.wrong_type(key, node, "a rate string", "\"1KiB/s\"");
                None
            }
        }
    }

    /// A share between 0 and 1 (`zero_ok`: 0 allowed, else it must be above 0).
    fn share(&mut self, key: &Key, node: &Node, zero_ok: bool, example: &str) -> Option<f64> {
        let x = match node.kind {
            Kind::Float(x) => x,
            Kind::Int(n) => n as f64,
            _ => {
                self.wrong_type(key, node, "a number between 0 and 1", example);
                return None;
            }
        };
        let low_ok = if zero_ok { x >= 0.0 } else { x > 0.0 };
        if !x.is_finite() || !low_ok || x > 1.0 {
            let range = if zero_ok {
                "0 and 1"
            } else {
                "above 0 and at most 1"
            };
            self.report(
                &node.span,
                format!("`{} = {x}` is a share: it must be {range}", key.name),
                Some(format!("{} = {example}", key.name)),
            );
            return None;
        }
        Some(x)
    }

    fn cadence_factor(&mut self, key: &Key, node: &Node) -> Option<f64> {
        let x = match node.kind {
            Kind::Float(x) => x,
            Kind::Int(n) => n as f64,
            _ => {
                self.wrong_type(key, node, "a number", "2.0");
                return None;
            }
        };
        if !x.is_finite() || x < 1.0 {
            self.report(
                &node.span,
                format!(
                    "`cadence_factor = {x}` must be at least 1.0: it multiplies a socket's \
                     longest recovered stall, and below 1 would make thresholds shorter"
                ),
                Some("cadence_factor = 1.0 (no history extension), or larger".to_string()),
            );
            return None;
        }
        Some(x)
    }

    fn action(&mut self, key: &Key, node: &Node) -> Option<Action> {
        let Kind::Str(s) = &node.kind else {
            self.wrong_type(key, node, "a string", "\"observe\"");
            return None;
        };
        match s.as_str() {
            "observe" => Some(Action::Observe),
            "reset" => Some(Action::Reset),
            other => {
                let hint = match closest(other, &["observe", "reset"]) {
                    Some(best) => format!("action = \"{best}\""),
                    None => "action = \"observe\" or action = \"reset\"".to_string(),
                };
                self.report(
                    &node.span,
                    format!("unknown action `{other}`: the actions are \"observe\" and \"reset\""),
                    Some(hint),
                );
                None
            }
        }
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known word an unknown one most likely meant, if any is close enough.
fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let norm = word.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    if let Some(exact) = known.iter().find(|k| **k == norm) {
        return Some(exact);
    }
    let limit = match norm.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    let len = norm.chars().count();
    known
        .iter()
        // The distance is at least the difference in length: skip the work for long words.
        .filter(|k| k.len().abs_diff(len) <= limit)
        .map(|k| (edit_distance(&norm, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
        .or_else(|| {
            // Prefix or suffix of a known key, e.g. `zero_window` for `zero_window_after`.
            known
                .iter()
                .find(|k| norm.len() >= 4 && (k.starts_with(&norm) || norm.starts_with(*k)))
                .copied()
        })
}

fn ip_in_nets(nets: &[IpNet], ip: IpAddr) -> bool {
    let alt = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
    };
    nets.iter()
        .any(|n| n.contains(&ip) || alt.is_some_and(|a| n.contains(&a)))
}

/// Whether cgroup `path` is `prefix` or below it (component boundary).
fn cgroup_under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn join<T: fmt::Display>(v: &[T], sep: &str) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

fn format_factor(x: f64) -> String {
    let s = x.to_string();
    if s.contains(['.', 'e', 'i', 'N']) {
        s
    } else {
        format!("{s}.0")
    }
}

fn describe_thresholds(t: &Thresholds) -> String {
    format!(
        "zero_window_after {}, no_ack_after {}, slow_drain below {} over {}, \
         recv_backlog_after {}, cadence_factor {}, ceiling {}",
        format_duration(t.zero_window_after),
        format_duration(t.no_ack_after),
        format_rate(t.slow_drain_floor_bps),
        format_duration(t.slow_drain_window),
        format_duration(t.recv_backlog_after),
        format_factor(t.cadence_factor),
        format_duration(t.ceiling),
    )
}

fn thresholds_json(t: &Thresholds) -> serde_json::Value {
    json!({
        "zero_window_after": format_duration(t.zero_window_after),
        "no_ack_after": format_duration(t.no_ack_after),
        "slow_drain_floor": format_rate(t.slow_drain_floor_bps),
        "slow_drain_window": format_duration(t.slow_drain_window),
        "recv_backlog_after": format_duration(t.recv_backlog_after),
        "cadence_factor": t.cadence_factor,
        "ceiling": format_duration(t.ceiling),
    })
}

/// Threshold keys as written in one scope ([defaults] or one rule).
#[derive(Default)]
struct ThresholdSpec {
    zero_window_after: Val<Duration>,
    no_ack_after: Val<Duration>,
    slow_drain_floor: Val<u64>,
    slow_drain_window: Val<Duration>,
    recv_backlog_after: Val<Duration>,
    cadence_factor: Val<f64>,
    ceiling: Val<Duration>,
}

/// Names of threshold keys whose effective value is unknown because it was invalid.
type Broken = BTreeSet<&'static str>;

impl ThresholdSpec {
    /// Parse `key = value` if it is a threshold key; false if it is not one.
    fn entry(&mut self, cx: &mut Cx<'_>, key: &Key, node: &Node) -> bool {
        let dur = |cx: &mut Cx<'_>| {
            Val::from_result(
                cx.duration(key, node, THRESHOLD_MIN, THRESHOLD_MAX),
                &node.span,
            )
        };
        match key.name.as_str() {
            "zero_window_after" => self.zero_window_after = dur(cx),
            "no_ack_after" => self.no_ack_after = dur(cx),
            "slow_drain_window" => self.slow_drain_window = dur(cx),
            "recv_backlog_after" => self.recv_backlog_after = dur(cx),
            "ceiling" => self.ceiling = dur(cx),
            "slow_drain_floor" => {
                self.slow_drain_floor = Val::from_result(cx.rate(key, node), &node.span)
            }
            "cadence_factor" => {
                self.cadence_factor = Val::from_result(cx.cadence_factor(key, node), &node.span)
            }
            _ => return false,
        }
        true
    }

    /// Overlay this scope on `base`.
    fn apply(&self, base: &Thresholds, base_broken: &Broken) -> (Thresholds, Broken) {
        let mut t = base.clone();
        let mut broken = base_broken.clone();
        fn put<T: Clone>(v: &Val<T>, name: &'static str, slot: &mut T, broken: &mut Broken) {
            match v {
                Val::Unset => {}
                Val::Set(x, _) => {
                    *slot = x.clone();
                    broken.remove(name);
                }
                Val::Broken => {
                    broken.insert(name);
                }
            }
        }
        put(
            &self.zero_window_after,
            "zero_window_after",
            &mut t.zero_window_after,
            &mut broken,
        );
        put(
            &self.no_ack_after,
            "no_ack_after",
            &mut t.no_ack_after,
            &mut broken,
        );
        put(
            &self.slow_drain_floor,
            "slow_drain_floor",
            &mut t.slow_drain_floor_bps,
            &mut broken,
        );
        put(
            &self.slow_drain_window,
            "slow_drain_window",
            &mut t.slow_drain_window,
            &mut broken,
        );
        put(
            &self.recv_backlog_after,
            "recv_backlog_after",
            &mut t.recv_backlog_after,
            &mut broken,
        );
        put(
            &self.cadence_factor,
            "cadence_factor",
            &mut t.cadence_factor,
            &mut broken,
        );
        put(&self.ceiling, "ceiling", &mut t.ceiling, &mut broken);
        (t, broken)
    }

    /// Every threshold must be at most the ceiling. Reported where the conflict was
    /// written: at the threshold if this scope set it, else at this scope's ceiling;
    /// conflicts wholly inherited were reported in the scope they came from.
    fn check_ceiling(
        &self,
        cx: &mut Cx<'_>,
        eff: &Thresholds,
        broken: &Broken,
        inherited_from: &str,
    ) {
        if broken.contains("ceiling") {
            return;
        }
        let ceiling = format_duration(eff.ceiling);
        let durations = [
            (
                "zero_window_after",
                &self.zero_window_after,
                eff.zero_window_after,
            ),
            ("no_ack_after", &self.no_ack_after, eff.no_ack_after),
            (
                "slow_drain_window",
                &self.slow_drain_window,
                eff.slow_drain_window,
            ),
            (
                "recv_backlog_after",
                &self.recv_backlog_after,
                eff.recv_backlog_after,
            ),
        ];
        let ceiling_origin = match self.ceiling {
            Val::Set(..) => String::new(),
            _ => format!(" ({inherited_from})"),
        };
        let mut inherited_over = Vec::new();
        for (name, val, d) in durations {
            if broken.contains(name) || d <= eff.ceiling {
                continue;
            }
            match val {
                Val::Set(_, span) => cx.report(
                    span,
                    format!(
                        "`{name} = \"{}\"` is longer than `ceiling = \"{ceiling}\"`{ceiling_origin}: \
                         the ceiling caps every threshold",
                        format_duration(d)
                    ),
                    Some(format!(
                        "{name} = \"{ceiling}\" or shorter, or ceiling = \"{}\"",
                        format_duration(d)
                    )),
                ),
                _ => inherited_over.push((name, d)),
            }
        }
        if let (Val::Set(_, span), false) = (&self.ceiling, inherited_over.is_empty()) {
            let list = inherited_over
                .iter()
                .map(|(n, d)| format!("{n} = \"{}\"", format_duration(*d)))
                .collect::<Vec<_>>()
                .join(", ");
            let longest = inherited_over
                .iter()
                .map(|(_, d)| *d)
                .max()
                .expect("non-empty");
            cx.report(
                span,
                format!(
                    "`ceiling = \"{ceiling}\"` is shorter than {list} ({inherited_from}): \
                     the ceiling must be at least every threshold"
                ),
                Some(format!("ceiling = \"{}\"", format_duration(longest))),
            );
        }
    }
}

fn parse_port(node: &Node) -> Result<PortRange, (String, Option<String>)> {
    let example = "8000 or \"9000-9100\"".to_string();
    let one = |text: &str, n: i64| -> Result<u16, (String, Option<String>)> {
        match n {
            0 => Err((
                format!("port 0 in `{text}` is not a port a TCP connection can use"),
                Some("a port from 1 to 65535".to_string()),
            )),
            1..=65535 => Ok(n as u16),
            _ => Err((
                format!("`{text}` is not a TCP port: ports are 1 to 65535"),
                Some("a port from 1 to 65535".to_string()),
            )),
        }
    };
    match &node.kind {
        Kind::Int(n) => one(&n.to_string(), *n).map(PortRange::single),
        Kind::Str(s) => {
            let num = |t: &str| -> Option<i64> {
                let t = t.trim();
                (!t.is_empty() && t.len() <= 6 && t.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| t.parse().ok())
                    .flatten()
            };
            let bad = || {
                (
                    format!("`{s}` is not a port or port range"),
                    Some(example.clone()),
                )
            };
            match s.split_once('-') {
                Some((a, b)) => {
                    let (Some(a), Some(b)) = (num(a), num(b)) else {
                        return Err(bad());
                    };
                    let (first, last) = (one(s, a)?, one(s, b)?);
                    if first > last {
                        return Err((
                            format!(
                                "port range `{s}` is reversed: the first port must be the lower"
                            ),
                            Some(format!("\"{last}-{first}\"")),
                        ));
                    }
                    Ok(PortRange { first, last })
                }
                None => match num(s) {
                    Some(n) => one(s, n).map(PortRange::single),
                    None => Err(bad()),
                },
            }
        }
        other => Err((
            format!(
                "ports are integers or \"first-last\" strings, not {}",
                other.type_name()
            ),
            Some(example),
        )),
    }
}

fn parse_cidr(node: &Node) -> Result<IpNet, (String, Option<String>)> {
    let example = || Some("\"10.0.0.0/8\" or \"fd00::/8\"".to_string());
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("networks are strings, not {}", node.kind.type_name()),
            example(),
        ));
    };
    let t = s.trim();
    if let Ok(net) = IpNet::from_str(t) {
        if net.trunc() != net {
            let host_len = match net {
                IpNet::V4(_) => 32,
                IpNet::V6(_) => 128,
            };
            return Err((
                format!(
                    "`{s}` has host bits set: the /{} network containing {} is {}",
                    net.prefix_len(),
                    net.addr(),
                    net.trunc()
                ),
                Some(format!(
                    "\"{}\" (the network), or \"{}/{host_len}\" (that one address)",
                    net.trunc(),
                    net.addr()
                )),
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = IpAddr::from_str(t) {
        return Ok(IpNet::from(ip));
    }
    if let Some((addr, len)) = t.split_once('/') {
        if let (Ok(ip), Ok(len)) = (IpAddr::from_str(addr), len.parse::<u32>()) {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            return Err((
                format!("`{s}`: prefix length /{len} is longer than the {max} bits of the address"),
                Some(format!("\"{addr}/{max}\" or a shorter prefix")),
            ));
        }
    }
    Err((format!("`{s}` is not an IP network"), example()))
}

fn parse_comm(node: &Node) -> Result<String, (String, Option<String>)> {
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("process names are strings, not {}", node.kind.type_name()),
            Some("\"granian\"".to_string()),
        ));
    };
    if s.is_empty() || s.chars().any(char::is_control) {
        return Err((
            format!("`{s:?}` is not a process name"),
            Some("the name `ps -o comm` shows, e.g. \"granian\"".to_string()),
        ));
    }
    if s.len() > MAX_COMM_LEN {
        let mut cut = MAX_COMM_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err((
            format!(
                "process name `{s}` is {} bytes: the kernel keeps only the first {MAX_COMM_LEN} \
                 bytes of a name (comm), so it can never match",
                s.len()
            ),
            Some(format!("\"{}\"", &s[..cut])),
        ));
    }
    Ok(s.clone())
}

/// A Kubernetes namespace (a DNS label: lowercase letters, digits, '-', at most 63) or a pod
/// name prefix (a DNS subdomain's characters: also '.', at most 253).
fn parse_k8s_name(node: &Node, what: &str, max: usize) -> Result<String, (String, Option<String>)> {
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("a {what} is a string, not {}", node.kind.type_name()),
            Some("\"payments\"".to_string()),
        ));
    };
    let dots = max > 63;
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    if s.is_empty() || s.len() > max || !s.chars().all(ok_char) {
        let fixed: String = s
            .to_ascii_lowercase()
            .chars()
            .filter(|c| ok_char(*c))
            .take(max)
            .collect();
        return Err((
            format!(
                "`{s}` is not a Kubernetes {what}: lowercase letters, digits and '-'{}, at most \
                 {max} characters",
                if dots { " or '.'" } else { "" }
            ),
            (!fixed.is_empty()).then(|| format!("\"{fixed}\"")),
        ));
    }
    Ok(s.clone())
}

fn parse_cgroup(node: &Node) -> Result<String, (String, Option<String>)> {
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("cgroup paths are strings, not {}", node.kind.type_name()),
            Some("\"/system.slice/app.service\"".to_string()),
        ));
    };
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
    let normal = format!("/{}", parts.join("/"));
    let strip0 = s.strip_prefix("0::").unwrap_or(s);
    if s == "/" {
        return Ok(s.clone());
    }
    let problem = if s.starts_with("0::") {
        Some("is a line of /proc/PID/cgroup; the path is what follows `0::`")
    } else if !s.starts_with('/') {
        Some("must start with `/` (paths are relative to the cgroup v2 root)")
    } else if parts.iter().any(|p| *p == "." || *p == "..") {
        Some("must not contain `.` or `..` components")
    } else if *s != normal {
        Some("must not contain empty components or end with `/`")
    } else {
        None
    };
    match problem {
        None => Ok(s.clone()),
        Some(why) => {
            let fixed: Vec<&str> = strip0
                .split('/')
                .filter(|p| !p.is_empty() && *p != "." && *p != "..")
                .collect();
            Err((
                format!("cgroup path `{s}` {why}"),
                Some(format!("\"/{}\"", fixed.join("/"))),
            ))
        }
    }
}

fn parse_netns(node: &Node) -> Result<u32, (String, Option<String>)> {
    let hint = || Some("4026531840 (the number `readlink /proc/PID/ns/net` shows)".to_string());
    let n: i64 = match &node.kind {
        Kind::Int(n) => *n,
        Kind::Str(s) => {
            let inner = s
                .trim()
                .strip_prefix("net:[")
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or(s.trim());
            match inner.parse() {
                Ok(n) => n,
                Err(_) => {
                    return Err((
                        format!("`{s}` is not a network namespace inode number"),
                        hint(),
                    ))
                }
            }
        }
        other => {
            return Err((
                format!("netns entries are inode numbers, not {}", other.type_name()),
                hint(),
            ))
        }
    };
    match u32::try_from(n) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err((
            format!("{n} is not a network namespace inode number"),
            hint(),
        )),
    }
}

fn parse_class(node: &Node) -> Result<(StallClass, Span), (String, Option<String>)> {
    let names: Vec<&str> = StallClass::ALL.iter().map(|c| c.as_str()).collect();
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("classes are strings, not {}", node.kind.type_name()),
            Some("\"zero_window\"".to_string()),
        ));
    };
    match StallClass::ALL.iter().find(|c| c.as_str() == s) {
        Some(c) => Ok((*c, node.span.clone())),
        None => Err((
            format!(
                "unknown stall class `{s}`: the classes are {}",
                names.join(", ")
            ),
            Some(match closest(s, &names) {
                Some(best) => format!("\"{best}\""),
                None => format!("one of {}", names.join(", ")),
            }),
        )),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn sanitized_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_alphanumeric() || "._-".contains(c) {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(MAX_NAME_LEN).collect();
    if out.is_empty() {
        "websocket-server".to_string()
    } else {
        out
    }
}

/// One parsed rule plus what cross-rule checks need.
struct ParsedRule {
    rule: Rule,
    header: Span,
    name_span: Option<Span>,
    /// A selector failed to parse: skip cross-rule checks that would be guesses.
    broken_selectors: bool,
}

fn build(cx: &mut Cx<'_>, root: &Node) -> Policy {
    let mut policy = Policy::default();
    let Kind::Table(entries) = &root.kind else {
        cx.report(&root.span, "the policy file must be a TOML table", None);
        return policy;
    };
    let mut defaults = None;
    let mut guards = None;
    let mut rules = None;
    for (key, node) in entries {
        match key.name.as_str() {
            "tick" => {
                if let Some(t) = cx.duration(key, node, TICK_MIN, TICK_MAX) {
                    policy.tick = t;
                }
            }
            "defaults" => defaults = Some((key, node)),
            "guards" => guards = Some((key, node)),
            "rule" => rules = Some((key, node)),
            _ => cx.unknown_key(key, Section::Top),
        }
    }

    // [defaults]
    let mut defaults_spec = ThresholdSpec::default();
    if let Some((key, node)) = defaults {
        if let Some(entries) = cx.table(key, node, "[defaults] followed by key = value lines") {
            for (k, v) in entries {
                if defaults_spec.entry(cx, k, v) {
                    continue;
                }
                if k.name == "action" {
                    if cx.action(k, v) == Some(Action::Reset) {
                        cx.report(
                            &v.span,
                            "[defaults] can only observe: a reset applies to the sockets a \
                             named [[rule]] selects, never to every socket by default",
                            Some(
                                "action = \"observe\" here, and action = \"reset\" in a [[rule]] \
                                 with selectors"
                                    .to_string(),
                            ),
                        );
                    }
                } else {
                    cx.unknown_key(k, Section::Defaults);
                }
            }
        }
    }
    let (defaults_eff, defaults_broken) =
        defaults_spec.apply(&Thresholds::default(), &Broken::new());
    defaults_spec.check_ceiling(cx, &defaults_eff, &defaults_broken, "the built-in default");
    policy.defaults = defaults_eff.clone();

    // [guards]
    let mut guard_at: HashMap<&str, Span> = HashMap::new();
    if let Some((key, node)) = guards {
        if let Some(entries) = cx.table(key, node, "[guards] followed by key = value lines") {
            for (k, v) in entries {
                guard_at.insert(k.name.as_str(), k.span.clone());
                match k.name.as_str() {
                    "protect_ports" => match &v.kind {
                        Kind::Array(items) => {
                            let ports = cx.each(items, |n| match &n.kind {
                                Kind::Int(p) => parse_port(n).map(|_| *p as u16),
                                other => Err((
                                    format!(
                                        "protect_ports lists port numbers, not {}",
                                        other.type_name()
                                    ),
                                    Some("protect_ports = [22, 2222]".to_string()),
                                )),
                            });
                            if let Some(mut ports) = ports {
                                ports.sort_unstable();
                                ports.dedup();
                                policy.guards.protect_ports = ports;
                            }
                        }
                        _ => cx.wrong_type(k, v, "a list of ports", "[22]"),
                    },
                    "max_resets_per_minute" => match v.kind {
                        Kind::Int(n) => match u32::try_from(n) {
                            Ok(n) => policy.guards.max_resets_per_minute = n,
                            Err(_) => cx.report(
                                &v.span,
                                format!(
                                    "`max_resets_per_minute = {n}` must be between 0 and {}",
                                    u32::MAX
                                ),
                                Some("max_resets_per_minute = 60 (0 disables resets)".to_string()),
                            ),
                        },
                        _ => cx.wrong_type(k, v, "a whole number", "60"),
                    },
                    "reset_share_per_minute" => {
                        if let Some(x) = cx.share(k, v, true, "0.1") {
                            policy.guards.reset_share_per_minute = x;
                        }
                    }
                    "network_share" => {
                        if let Some(x) = cx.share(k, v, false, "0.5") {
                            policy.guards.network_share = x;
                        }
                    }
                    "partition_share" => {
                        if let Some(x) = cx.share(k, v, false, "0.9") {
                            policy.guards.partition_share = x;
                        }
                    }
                    "mass_disconnect_min" | "partition_min_networks" => match v.kind {
                        Kind::Int(n) if (1..=1_000_000).contains(&n) => {
                            if k.name == "mass_disconnect_min" {
                                policy.guards.mass_disconnect_min = n as u32;
                            } else {
                                policy.guards.partition_min_networks = n as u32;
                            }
                        }
                        Kind::Int(n) => cx.report(
                            &v.span,
                            format!("`{} = {n}` must be between 1 and 1000000", k.name),
                            Some(format!(
                                "{} = {}",
                                k.name,
                                if k.name == "mass_disconnect_min" {
                                    20
                                } else {
                                    2
                                }
                            )),
                        ),
                        _ => cx.wrong_type(k, v, "a whole number", "20"),
                    },
                    "partition_max_hold" => {
                        if let Some(d) = cx.duration(
                            k,
                            v,
                            Duration::from_secs(1),
                            Duration::from_secs(24 * 3600),
                        ) {
                            policy.guards.partition_max_hold = d;
                        }
                    }
                    _ => cx.unknown_key(k, Section::Guards),
                }
            }
        }
    }

    // [[rule]]
    let mut parsed: Vec<ParsedRule> = Vec::new();
    if let Some((key, node)) = rules {
        match &node.kind {
            Kind::Array(items) => {
                // Protected ports as merged ranges, for the reset rules' check (once).
                let protected = shadow::merged_ports(
                    &policy
                        .guards
                        .protect_ports
                        .iter()
                        .map(|p| PortRange::single(*p))
                        .collect::<Vec<_>>(),
                );
                for (i, item) in items.iter().enumerate() {
                    if let Some(p) =
                        parse_rule(cx, i, item, &defaults_eff, &defaults_broken, &protected)
                    {
                        parsed.push(p);
                    }
                }
            }
            Kind::Table(_) => cx.report(
                &key.span,
                "rules are an array of tables: write each as [[rule]] (double brackets)",
                Some("[[rule]]".to_string()),
            ),
            _ => cx.wrong_type(key, node, "a list of [[rule]] tables", "[[rule]] sections"),
        }
    }

    // Cross-rule checks.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for p in &parsed {
        if p.rule.name.is_empty() {
            continue;
        }
        match seen.get(p.rule.name.as_str()) {
            Some(first_line) => {
                let at = p.name_span.clone().unwrap_or_else(|| p.header.clone());
                cx.report(
                    &at,
                    format!(
                        "rule name `{}` is already used by the rule at line {first_line}: names \
                         must be unique (events carry them)",
                        p.rule.name
                    ),
                    Some(format!("name = \"{}-2\"", p.rule.name)),
                );
            }
            None => {
                seen.insert(&p.rule.name, p.rule.line);
            }
        }
    }
    let checked: Vec<Option<&Selectors>> = parsed
        .iter()
        .map(|p| (!p.broken_selectors && !p.rule.selectors.is_empty()).then_some(&p.rule.selectors))
        .collect();
    let (shadows, stopped) = shadow::shadowing(&checked);
    for (later, earlier) in parsed.iter().zip(&shadows) {
        let Some(earlier) = earlier.map(|i| &parsed[i]) else {
            continue;
        };
        let how = if earlier.rule.selectors == later.rule.selectors {
            "has the same selectors"
        } else {
            "selects every socket it selects"
        };
        cx.report(
            &later.header,
            format!(
                "rule `{}` can never match: the earlier rule `{}` (line {}) {how}, and the \
                 first matching rule wins",
                later.rule.name, earlier.rule.name, earlier.rule.line
            ),
            Some(format!(
                "move rule `{}` above rule `{}`, narrow rule `{}`, or delete one of them",
                later.rule.name, earlier.rule.name, earlier.rule.name
            )),
        );
    }
    if let Some(at) = stopped {
        cx.warn(
            &parsed[at].header,
            format!(
                "rules from `{}` on were not checked for being unreachable (an earlier rule \
                 selecting everything they select): the rules overlap so much that the check \
                 stopped after {} steps",
                parsed[at].rule.name,
                shadow::WORK_LIMIT
            ),
            Some("fewer, wider rules: merge rules that share their settings".to_string()),
        );
    }

    warn_dangerous(cx, &policy.guards, &guard_at, &parsed);
    policy.rules = parsed.into_iter().map(|p| p.rule).collect();
    policy
}

/// Thresholds shorter than this on a reset rule draw a warning.
const SHORT_RESET_THRESHOLD: Duration = Duration::from_secs(5);
/// Budgets above these draw a warning.
const HIGH_MAX_RESETS: u32 = 1000;
const HIGH_RESET_SHARE: f64 = 0.5;
/// A partition hold that needs more silent networks than this rarely starts.
const HIGH_PARTITION_MIN_NETWORKS: u32 = 16;
/// A hold shorter than this turns longer outages into resets.
const SHORT_PARTITION_HOLD: Duration = Duration::from_secs(30);
/// A mass disconnect this small bypasses the budgets too easily.
const LOW_MASS_DISCONNECT_MIN: u32 = 5;

/// Warnings for a valid policy whose settings are dangerous, each saying why and what to
/// write instead. Only settings that matter when something can be reset: with no reset
/// rule, or `max_resets_per_minute = 0`, nothing is reset and nothing is dangerous — except
/// an empty `protect_ports`, which `tcpstall reset --policy` also uses.
fn warn_dangerous(
    cx: &mut Cx<'_>,
    guards: &Guards,
    guard_at: &HashMap<&str, Span>,
    parsed: &[ParsedRule],
) {
    let enabled = guards.max_resets_per_minute > 0;
    if enabled && guards.protect_ports.is_empty() {
        if let Some(at) = guard_at.get("protect_ports") {
            cx.warn(
                at,
                "protect_ports = [] protects nothing: a reset rule (or `tcpstall reset` with \
                 this policy) may destroy any wedged connection, SSH sessions included (the \
                 default protects port 22)",
                Some(
                    "protect_ports = [22], plus the ports of anything that must never be reset"
                        .to_string(),
                ),
            );
        }
    }
    let resetting: Vec<&ParsedRule> = parsed
        .iter()
        .filter(|p| p.rule.action == Action::Reset)
        .collect();
    if !enabled || resetting.is_empty() {
        return;
    }
    let at = |key: &str| guard_at.get(key).cloned();
    if guards.max_resets_per_minute >= HIGH_MAX_RESETS {
        if let Some(span) = at("max_resets_per_minute") {
            cx.warn(
                &span,
                format!(
                    "max_resets_per_minute = {} lets every reset rule destroy that many \
                     connections a minute: the budget no longer stops a misjudged mass reset \
                     (a bad threshold, a network blip the partition hold did not catch)",
                    guards.max_resets_per_minute
                ),
                Some(
                    "max_resets_per_minute = 60 (the default; a mass disconnect of one \
                     network is reset outside the budget anyway)"
                        .to_string(),
                ),
            );
        }
    }
    if guards.reset_share_per_minute >= HIGH_RESET_SHARE {
        if let Some(span) = at("reset_share_per_minute") {
            cx.warn(
                &span,
                format!(
                    "reset_share_per_minute = {} lets a reset rule destroy {:.0} % of the \
                     sockets it tracks every minute: the budget no longer stops a misjudged \
                     mass reset",
                    guards.reset_share_per_minute,
                    guards.reset_share_per_minute * 100.0
                ),
                Some("reset_share_per_minute = 0.1 (the default)".to_string()),
            );
        }
    }
    if guards.partition_min_networks > HIGH_PARTITION_MIN_NETWORKS {
        if let Some(span) = at("partition_min_networks") {
            cx.warn(
                &span,
                format!(
                    "partition_min_networks = {}: the partition hold starts only when that \
                     many remote networks go silent at once, so on a node talking to fewer \
                     networks an outage of its own path resets every wedged connection \
                     (the hold is effectively off)",
                    guards.partition_min_networks
                ),
                Some("partition_min_networks = 2 (the default)".to_string()),
            );
        }
    }
    if guards.partition_share >= 1.0 {
        if let Some(span) = at("partition_share") {
            cx.warn(
                &span,
                "partition_share = 1.0: one remote network still answering (e.g. one on the \
                 near side of the outage) keeps the partition hold from starting, and the \
                 outage becomes resets",
                Some("partition_share = 0.9 (the default)".to_string()),
            );
        }
    }
    if guards.partition_max_hold < SHORT_PARTITION_HOLD {
        if let Some(span) = at("partition_max_hold") {
            cx.warn(
                &span,
                format!(
                    "partition_max_hold = \"{}\": an outage of the node's own path that lasts \
                     longer becomes resets of every connection it wedged",
                    format_duration(guards.partition_max_hold)
                ),
                Some("partition_max_hold = \"5m\" (the default)".to_string()),
            );
        }
    }
    if guards.mass_disconnect_min < LOW_MASS_DISCONNECT_MIN {
        if let Some(span) = at("mass_disconnect_min") {
            cx.warn(
                &span,
                format!(
                    "mass_disconnect_min = {}: that few silent peers of one network count as a \
                     mass disconnect, whose resets bypass the budgets",
                    guards.mass_disconnect_min
                ),
                Some("mass_disconnect_min = 20 (the default)".to_string()),
            );
        }
    }
    for p in resetting {
        let r = &p.rule;
        if r.selectors.match_all {
            cx.warn(
                &p.header,
                format!(
                    "rule `{}` resets with match_all = true: every process's wedged \
                     connections on the node are reset, including services nobody calibrated \
                     a threshold for",
                    r.name
                ),
                Some(
                    "selectors for the service it is meant for (local_ports, comm, \
                     cgroup_prefix), and an observe rule for the rest"
                        .to_string(),
                ),
            );
        }
        for class in &r.classes {
            let (key, t) = match class {
                StallClass::ZeroWindow => ("zero_window_after", r.thresholds.zero_window_after),
                StallClass::NoAck => ("no_ack_after", r.thresholds.no_ack_after),
                StallClass::SlowDrain if r.thresholds.slow_drain_floor_bps > 0 => {
                    ("slow_drain_window", r.thresholds.slow_drain_window)
                }
                _ => continue,
            };
            if t < SHORT_RESET_THRESHOLD {
                cx.warn(
                    &p.header,
                    format!(
                        "rule `{}` resets {} stalls after {key} = \"{}\": healthy readers look \
                         wedged for seconds on Linux (a bursty WebSocket reader showed 13-15 s \
                         of zero window between reads; see the README's Calibration \
                         workflow), so connections that were only slow get reset",
                        r.name,
                        class.as_str(),
                        format_duration(t)
                    ),
                    Some(format!(
                        "{key} = \"30s\" (the default), or a value from `tcpstall policy check \
                         --events` on a recording of this service"
                    )),
                );
            }
        }
    }
}

fn parse_rule(
    cx: &mut Cx<'_>,
    index: usize,
    node: &Node,
    defaults: &Thresholds,
    defaults_broken: &Broken,
    protected: &[(u16, u16)],
) -> Option<ParsedRule> {
    let Kind::Table(entries) = &node.kind else {
        cx.report(
            &node.span,
            format!("each rule must be a table, not {}", node.kind.type_name()),
            Some("a [[rule]] header followed by key = value lines".to_string()),
        );
        return None;
    };
    let header = node.span.clone();
    let line = cx.line_of(&header);
    let mut name: Option<(String, Span)> = None;
    let mut sel = Selectors::default();
    let mut broken = false;
    let mut match_all_span = None;
    let mut action = Action::Observe;
    let mut classes: Option<Vec<(StallClass, Span)>> = None;
    let mut port_spans: Vec<(&'static str, Span)> = Vec::new();
    let mut spec = ThresholdSpec::default();

    for (k, v) in entries {
        if spec.entry(cx, k, v) {
            continue;
        }
        let key = k.name.as_str();
        match key {
            "name" => match &v.kind {
                Kind::Str(s) if valid_name(s) => name = Some((s.clone(), v.span.clone())),
                Kind::Str(s) => {
                    cx.report(
                        &v.span,
                        format!(
                            "rule name `{s}` must be 1-{MAX_NAME_LEN} characters of letters, \
                             digits, '.', '_' and '-'"
                        ),
                        Some(format!("name = \"{}\"", sanitized_name(s))),
                    );
                    // Still a name for duplicate checks and messages.
                    name = Some((s.clone(), v.span.clone()));
                }
                _ => cx.wrong_type(k, v, "a string", "\"websocket-server\""),
            },
            "match_all" => match v.kind {
                Kind::Bool(b) => {
                    sel.match_all = b;
                    match_all_span = Some(v.span.clone());
                }
                _ => cx.wrong_type(k, v, "true or false", "true"),
            },
            "local_ports" | "remote_ports" => {
                let parsed = cx
                    .list(k, v, "[8000, \"9000-9100\"]", "matches no socket")
                    .and_then(|items| cx.each(items, parse_port));
                match parsed {
                    Some(p) => {
                        if key == "local_ports" {
                            port_spans.push(("local_ports", k.span.clone()));
                            sel.local_ports = Some(p);
                        } else {
                            port_spans.push(("remote_ports", k.span.clone()));
                            sel.remote_ports = Some(p);
                        }
                    }
                    None => broken = true,
                }
            }
            "local_cidrs" | "remote_cidrs" => {
                let parsed = cx
                    .list(k, v, "[\"10.0.0.0/8\"]", "matches no socket")
                    .and_then(|items| cx.each(items, parse_cidr));
                match parsed {
                    Some(n) if key == "local_cidrs" => sel.local_cidrs = Some(n),
                    Some(n) => sel.remote_cidrs = Some(n),
                    None => broken = true,
                }
            }
            "comm" => match cx
                .list(k, v, "[\"granian\"]", "matches no socket")
                .and_then(|items| cx.each(items, parse_comm))
            {
                Some(c) => sel.comm = Some(c),
                None => broken = true,
            },
            "cgroup_prefix" => match cx
                .list(k, v, "[\"/system.slice/app.service\"]", "matches no socket")
                .and_then(|items| cx.each(items, parse_cgroup))
            {
                Some(c) => sel.cgroup_prefix = Some(c),
                None => broken = true,
            },
            "k8s_namespace" => match cx
                .list(k, v, "[\"payments\"]", "matches no socket")
                .and_then(|items| cx.each(items, |n| parse_k8s_name(n, "namespace", 63)))
            {
                Some(c) => sel.k8s_namespace = Some(c),
                None => broken = true,
            },
            "pod_prefix" => match cx
                .list(k, v, "[\"api-\"]", "matches no socket")
                .and_then(|items| cx.each(items, |n| parse_k8s_name(n, "pod name prefix", 253)))
            {
                Some(c) => sel.pod_prefix = Some(c),
                None => broken = true,
            },
            "netns" => match cx
                .list(k, v, "[4026531840]", "matches no socket")
                .and_then(|items| cx.each(items, parse_netns))
            {
                Some(n) => sel.netns = Some(n),
                None => broken = true,
            },
            "classes" => {
                let parsed = cx
                    .list(
                        k,
                        v,
                        "[\"zero_window\", \"no_ack\"]",
                        "would make the action apply to nothing",
                    )
                    .and_then(|items| cx.each(items, parse_class));
                if let Some(list) = parsed {
                    let mut seen = HashSet::new();
                    let mut deduped = Vec::new();
                    for (c, span) in &list {
                        if seen.insert(*c) {
                            deduped.push(*c);
                        } else {
                            cx.report(
                                span,
                                format!("class `{}` is listed twice", c.as_str()),
                                None,
                            );
                        }
                    }
                    if deduped.len() != list.len() {
                        let fixed = deduped
                            .iter()
                            .map(|c| format!("\"{}\"", c.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ");
                        if let Some((_, p)) = cx.problems.last_mut() {
                            p.hint = Some(format!("classes = [{fixed}]"));
                        }
                    }
                    classes = Some(list);
                }
            }
            "action" => {
                if let Some(a) = cx.action(k, v) {
                    action = a;
                }
            }
            _ => cx.unknown_key(k, Section::Rule),
        }
    }

    let name_label = name
        .as_ref()
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| format!("#{}", index + 1));
    if name.is_none() {
        cx.report(
            &header,
            format!(
                "rule #{} has no name: every rule needs a unique name (events carry it)",
                index + 1
            ),
            Some(format!(
                "name = \"rule-{}\" (or a name saying what it is for)",
                index + 1
            )),
        );
    }
    let selector_names = sel.set_names();
    if sel.match_all {
        if !selector_names.is_empty() {
            cx.report(
                match_all_span.as_ref().unwrap_or(&header),
                format!(
                    "rule `{name_label}` has match_all = true and also {}: match_all selects every \
                     socket, so these selectors would be ignored",
                    selector_names.join(", ")
                ),
                Some(
                    "either match_all = true alone, or the selectors without match_all".to_string(),
                ),
            );
        }
    } else if selector_names.is_empty() && !broken {
        cx.report(
            &header,
            format!(
                "rule `{name_label}` has no selectors, so it is not clear which sockets it is for"
            ),
            Some(
                "a selector such as local_ports = [8000] (also remote_ports, local_cidrs, \
                 remote_cidrs, comm, cgroup_prefix, netns), or match_all = true if you really mean \
                 every socket"
                    .to_string(),
            ),
        );
    }

    let class_list: Vec<StallClass> = match &classes {
        Some(list) => {
            let mut out = Vec::new();
            for (c, _) in list {
                if !out.contains(c) {
                    out.push(*c);
                }
            }
            out
        }
        None => Rule::DEFAULT_CLASSES.to_vec(),
    };
    if action == Action::Reset {
        if let Some((_, span)) = classes
            .as_ref()
            .and_then(|l| l.iter().find(|(c, _)| *c == StallClass::RecvBacklog))
        {
            let rest: Vec<String> = class_list
                .iter()
                .filter(|c| **c != StallClass::RecvBacklog)
                .map(|c| format!("\"{}\"", c.as_str()))
                .collect();
            let hint = if rest.is_empty() {
                "action = \"observe\" (recv_backlog can only be observed)".to_string()
            } else {
                format!("classes = [{}], or action = \"observe\"", rest.join(", "))
            };
            cx.report(
                span,
                format!(
                    "rule `{name_label}` resets, but recv_backlog is observe-only: it means the \
                     local process is not reading, and resetting its connection would hide that bug"
                ),
                Some(hint),
            );
        }
        // A protected local port always protects; a protected remote port only protects our
        // outgoing connections (a client may connect to us from that port), so only
        // local_ports can make a reset rule powerless.
        for (which, span) in &port_spans {
            if *which != "local_ports" {
                continue;
            }
            let Some(ranges) = &sel.local_ports else {
                continue;
            };
            let all_protected = ranges
                .iter()
                .all(|r| shadow::ports_contain(protected, r.first, r.last));
            if all_protected {
                cx.report(
                    span,
                    format!(
                        "rule `{name_label}` resets, but every port in its {which} is in [guards] \
                         protect_ports, so it can never reset anything"
                    ),
                    Some(
                        "action = \"observe\", or remove those ports from [guards] protect_ports if \
                         you really mean to reset them"
                            .to_string(),
                    ),
                );
            }
        }
    }

    let (thresholds, t_broken) = spec.apply(defaults, defaults_broken);
    spec.check_ceiling(cx, &thresholds, &t_broken, "inherited from [defaults]");

    let (name, name_span) = match name {
        Some((n, s)) => (n, Some(s)),
        None => (String::new(), None),
    };
    Some(ParsedRule {
        rule: Rule {
            name,
            line,
            selectors: sel,
            action,
            classes: class_list,
            thresholds,
        },
        header,
        name_span,
        broken_selectors: broken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Parse `src`, which must fail; returns its problems.
    fn problems(src: &str) -> Vec<Problem> {
        match Policy::parse(src, "t.toml") {
            Ok(p) => panic!("expected problems, parsed fine:\n{src}\n{p:#?}"),
            Err(e) => {
                assert_eq!(e.file, "t.toml");
                assert!(!e.problems.is_empty());
                e.problems
            }
        }
    }

    fn render(ps: &[Problem]) -> String {
        PolicyError {
            file: "t.toml".into(),
            problems: ps.to_vec(),
        }
        .to_string()
    }

    /// `src` has exactly one problem, at `line`, whose message contains `msg` and whose hint
    /// contains `hint`.
    fn only(src: &str, line: usize, msg: &str, hint: &str) -> Problem {
        let ps = problems(src);
        assert_eq!(ps.len(), 1, "expected one problem, got:\n{}", render(&ps));
        let p = &ps[0];
        assert_eq!(p.line, line, "wrong line:\n{}", render(&ps));
        assert!(
            p.message.contains(msg),
            "message lacks {msg:?}:\n{}",
            render(&ps)
        );
        let h = p.hint.as_deref().unwrap_or("");
        assert!(h.contains(hint), "hint lacks {hint:?}:\n{}", render(&ps));
        p.clone()
    }

    fn ok(src: &str) -> Policy {
        Policy::parse(src, "t.toml").unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
    }

    fn sock(local: &str, remote: &str) -> SocketIdentity<'static> {
        SocketIdentity {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            comm: None,
            cgroup_path: None,
            netns: 4026531840,
            pod_namespace: None,
            pod_name: None,
        }
    }

    #[test]
    fn kubernetes_namespace_and_pod_prefix_select_and_validate() {
        let p = ok(
            "[[rule]]\nname = \"pay\"\nk8s_namespace = [\"payments\"]\npod_prefix = [\"api-\"]\n\
                    [[rule]]\nname = \"ns\"\nk8s_namespace = [\"payments\", \"shop\"]\n",
        );
        let base = sock("10.0.0.1:8000", "10.0.0.2:40000");
        let id = |ns, pod| SocketIdentity {
            pod_namespace: ns,
            pod_name: pod,
            ..base
        };
        let name = |id: &SocketIdentity<'_>| p.select(id).rule.map(|r| r.name.clone());
        assert_eq!(
            name(&id(Some("payments"), Some("api-7d9f8"))).as_deref(),
            Some("pay")
        );
        assert_eq!(
            name(&id(Some("payments"), Some("worker-1"))).as_deref(),
            Some("ns")
        );
        assert_eq!(name(&id(Some("shop"), None)).as_deref(), Some("ns"));
        assert_eq!(
            name(&id(None, Some("api-1"))),
            None,
            "unknown pod never matches"
        );
        assert_eq!(name(&id(Some("other"), Some("api-1"))), None);
        assert!(p
            .describe()
            .contains("k8s_namespace payments and pod_prefix api-"));
        only(
            "[[rule]]\nname = \"a\"\nk8s_namespace = [\"Payments_1\"]\n",
            3,
            "`Payments_1` is not a Kubernetes namespace",
            "\"payments1\"",
        );
        only(
            "[[rule]]\nname = \"a\"\npod_prefix = [\"\"]\n",
            3,
            "is not a Kubernetes pod name prefix",
            "",
        );
        // A broader namespace rule first shadows a narrower one.
        only(
            "[[rule]]\nname = \"a\"\nk8s_namespace = [\"x\"]\n[[rule]]\nname = \"b\"\nk8s_namespace = [\"x\"]\npod_prefix = [\"api\"]\n",
            4,
            "can never match",
            "",
        );
    }

    // ----- defaults ------------------------------------------------------------------

    #[test]
    fn defaults_without_a_file() {
        let p = Policy::default();
        assert_eq!(p.tick, Duration::from_secs(1));
        assert_eq!(p.defaults, Thresholds::default());
        assert_eq!(p.defaults.zero_window_after, Duration::from_secs(30));
        assert_eq!(p.defaults.ceiling, Duration::from_secs(300));
        assert_eq!(p.guards.protect_ports, vec![22]);
        assert_eq!(p.guards.max_resets_per_minute, 60);
        assert!(p.rules.is_empty());
        assert!(p.source.is_none());

        let s = p.select(&sock("10.0.0.1:8000", "10.0.0.2:40000"));
        assert!(s.rule.is_none());
        assert_eq!(s.action, Action::Observe);
        assert!(s.classes.is_empty());
        assert_eq!(s.thresholds, &p.defaults);
        for c in StallClass::ALL {
            assert!(!s.resets(c));
        }
        assert!(p.is_protected(22, 40000, Some(true)).is_some());
        assert!(p.is_protected(40000, 22, Some(false)).is_some());
        assert!(p.is_protected(40000, 22, None).is_some());
        // A client connecting to our service from source port 22 is not protected.
        assert!(p.is_protected(8000, 22, Some(true)).is_none());
        assert!(p.is_protected(8000, 40000, None).is_none());
    }

    #[test]
    fn empty_and_comment_only_files_are_the_defaults() {
        assert_eq!(ok(""), Policy::default());
        assert_eq!(ok("# nothing here\n\n"), Policy::default());
        assert_eq!(ok("[defaults]\n[guards]\n"), Policy::default());
    }

    // ----- the example -----------------------------------------------------------------

    #[test]
    fn example_policy_parses_and_means_what_it_says() {
        let p = ok(EXAMPLE_POLICY);
        assert_eq!(p.tick, Duration::from_secs(1));
        assert_eq!(p.defaults, Thresholds::default());
        assert_eq!(p.guards, Guards::default());
        let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["granian-websocket", "sse-dead-clients", "postgres-watch"]
        );

        let ws = &p.rules[0];
        assert_eq!(ws.action, Action::Reset);
        assert_eq!(ws.classes, [StallClass::ZeroWindow, StallClass::NoAck]);
        assert_eq!(ws.thresholds.zero_window_after, Duration::from_secs(20));
        assert_eq!(
            ws.thresholds.no_ack_after,
            Duration::from_secs(30),
            "inherited"
        );
        assert_eq!(ws.thresholds.cadence_factor, 3.0);
        assert_eq!(ws.thresholds.ceiling, Duration::from_secs(120));
        assert_eq!(
            ws.line,
            EXAMPLE_POLICY
                .lines()
                .position(|l| l == "[[rule]]")
                .unwrap()
                + 1
        );

        let client = sock("10.0.0.1:8000", "198.51.100.7:51000");
        let s = p.select(&client);
        assert_eq!(s.rule.map(|r| r.name.as_str()), Some("granian-websocket"));
        assert!(s.resets(StallClass::ZeroWindow));
        assert!(s.resets(StallClass::NoAck));
        assert!(!s.resets(StallClass::SlowDrain));

        let mut sse = sock("10.0.0.1:8443", "198.51.100.7:51000");
        assert!(p.select(&sse).rule.is_none(), "cgroup unknown: no rule");
        sse.cgroup_path = Some("/system.slice/mcp-gateway.service");
        let s = p.select(&sse);
        assert_eq!(s.rule.unwrap().name, "sse-dead-clients");
        assert!(s.resets(StallClass::NoAck));
        assert!(!s.resets(StallClass::ZeroWindow));

        let db = sock("10.0.0.1:40000", "10.20.3.4:5432");
        let s = p.select(&db);
        assert_eq!(s.rule.unwrap().name, "postgres-watch");
        assert_eq!(s.action, Action::Observe);
        assert_eq!(s.thresholds.no_ack_after, Duration::from_secs(10));
        assert!(!s.resets(StallClass::NoAck));

        let other = sock("10.0.0.1:40000", "10.30.3.4:5432");
        assert!(p.select(&other).rule.is_none());
    }

    // ----- validation: every kind of problem --------------------------------------------

    #[test]
    fn unknown_key_suggests_the_closest_known_key() {
        let p = only(
            "[defaults]\nzero_windw_after = \"30s\"\n",
            2,
            "unknown key `zero_windw_after` in [defaults]",
            "zero_window_after",
        );
        assert_eq!(p.col, 1);
        assert_eq!(p.hint.as_deref(), Some("zero_window_after"));
        only(
            "tick = \"1s\"\n\n[guards]\nmax_resets_per_min = 5\n",
            4,
            "in [guards]",
            "max_resets_per_minute",
        );
        only(
            "[[rules]]\nname = \"a\"\nlocal_ports = [1]\n",
            1,
            "unknown key `rules` at the top level",
            "rule",
        );
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nzero-window-after = \"20s\"\n",
            4,
            "unknown key `zero-window-after` in [[rule]]",
            "zero_window_after",
        );
        // Known elsewhere: say where it belongs.
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nprotect_ports = [22]\n",
            4,
            "belongs in [guards]",
            "protect_ports under [guards]",
        );
        only(
            "[defaults]\nlocal_ports = [8000]\n",
            2,
            "selectors belong in a [[rule]]",
            "local_ports under [[rule]]",
        );
        only(
            "zero_window_after = \"30s\"\n",
            1,
            "thresholds belong in [defaults]",
            "under [defaults]",
        );
        only(
            "action = \"reset\"\n",
            1,
            "it belongs in a [[rule]]",
            "action under [[rule]]",
        );
        only(
            "[defaults]\nname = \"x\"\n",
            2,
            "it belongs in a [[rule]]",
            "name under [[rule]]",
        );
        only(
            "[guards]\ntick = \"1s\"\n",
            2,
            "it belongs at the top of the file",
            "tick at the top of the file",
        );
        only(
            "[guards]\nceiling = \"1m\"\n",
            2,
            "thresholds belong in [defaults] or a [[rule]]",
            "ceiling under [defaults]",
        );
        // Nothing close: list what is allowed.
        only(
            "[guards]\nfrobnicate = 1\n",
            2,
            "unknown key `frobnicate`",
            "one of protect_ports, max_resets_per_minute",
        );
        // Unknown sub-table.
        only(
            "[defaults.extra]\nx = 1\n",
            1,
            "unknown key `extra` in [defaults]",
            "one of",
        );
    }

    #[test]
    fn bad_durations() {
        let p = only(
            "[defaults]\nno_ack_after = \"30 seconds\"\n",
            2,
            "`30 seconds` is not a duration",
            "no_ack_after = \"30s\"",
        );
        assert_eq!(p.col, 16);
        only(
            "[defaults]\nceiling = \"2 minutes\"\n",
            2,
            "not a duration",
            "ceiling = \"2m\"",
        );
        only(
            "[defaults]\nzero_window_after = \"1.5s\"\n",
            2,
            "not a duration",
            "zero_window_after = \"1s500ms\"",
        );
        only(
            "[defaults]\nzero_window_after = \"soon\"\n",
            2,
            "not a duration",
            "zero_window_after = \"30s\"",
        );
        only("tick = 5\n", 1, "has no unit", "tick = \"5s\"");
        only("tick = 0.25\n", 1, "has no unit", "tick = \"250ms\"");
        only(
            "tick = \"10ms\"\n",
            1,
            "between 100ms and 1m",
            "tick = \"100ms\"",
        );
        only("tick = \"2m\"\n", 1, "out of range", "tick = \"1m\"");
        only(
            "[defaults]\nno_ack_after = \"0s\"\n",
            2,
            "between 1s and 24h",
            "no_ack_after = \"1s\"",
        );
        only(
            "tick = true\n",
            1,
            "must be a duration string, not a boolean",
            "tick = \"30s\"",
        );
        only(
            "tick = 1979-05-27\n",
            1,
            "not a date/time",
            "tick = \"30s\"",
        );
    }

    #[test]
    fn bad_rates() {
        only(
            "[defaults]\nslow_drain_floor = \"1 KB/s\"\n",
            2,
            "`1 KB/s` is not a rate",
            "slow_drain_floor = \"1KiB/s\"",
        );
        only(
            "[defaults]\nslow_drain_floor = \"2MiB\"\n",
            2,
            "not a rate",
            "slow_drain_floor = \"2MiB/s\"",
        );
        only(
            "[defaults]\nslow_drain_floor = \"1.5KiB/s\"\n",
            2,
            "not a rate",
            "slow_drain_floor = \"1536B/s\"",
        );
        only(
            "[defaults]\nslow_drain_floor = 2048\n",
            2,
            "has no unit",
            "slow_drain_floor = \"2KiB/s\"",
        );
        only(
            "[defaults]\nslow_drain_floor = \"fast\"\n",
            2,
            "not a rate",
            "slow_drain_floor = \"1KiB/s\"",
        );
        assert_eq!(
            ok("[defaults]\nslow_drain_floor = \"0B/s\"\n")
                .defaults
                .slow_drain_floor_bps,
            0
        );
    }

    #[test]
    fn bad_cidrs() {
        let rule = |c: &str| {
            format!("[[rule]]\nname = \"a\"\nremote_cidrs = [\"192.168.0.0/16\", \"{c}\"]\n")
        };
        let p = only(
            &rule("10.0.0.1/8"),
            3,
            "`10.0.0.1/8` has host bits set",
            "\"10.0.0.0/8\"",
        );
        assert!(p.hint.unwrap().contains("\"10.0.0.1/32\""));
        assert_eq!(p.col, 35, "points at the bad entry, not the list");
        only(&rule("fd00::1/8"), 3, "host bits set", "\"fd00::/8\"");
        only(
            &rule("10.0.0.0/33"),
            3,
            "prefix length /33 is longer than the 32 bits",
            "\"10.0.0.0/32\"",
        );
        only(
            &rule("intranet"),
            3,
            "`intranet` is not an IP network",
            "\"10.0.0.0/8\" or \"fd00::/8\"",
        );
        // A bare address is one host.
        let p = ok(&rule("10.1.2.3"));
        assert_eq!(
            p.rules[0].selectors.remote_cidrs.as_ref().unwrap()[1].to_string(),
            "10.1.2.3/32"
        );
    }

    #[test]
    fn bad_ports() {
        let rule = |ports: &str| format!("[[rule]]\nname = \"a\"\nlocal_ports = {ports}\n");
        only(
            &rule("[\"9100-9000\"]"),
            3,
            "port range `9100-9000` is reversed",
            "\"9000-9100\"",
        );
        only(&rule("[0]"), 3, "port 0", "a port from 1 to 65535");
        only(&rule("[\"0-100\"]"), 3, "port 0", "1 to 65535");
        only(
            &rule("[70000]"),
            3,
            "`70000` is not a TCP port",
            "1 to 65535",
        );
        only(
            &rule("[\"http\"]"),
            3,
            "`http` is not a port or port range",
            "8000 or \"9000-9100\"",
        );
        only(
            &rule("[]"),
            3,
            "`local_ports = []` matches no socket",
            "or remove the key",
        );
        only(
            &rule("8000"),
            3,
            "`local_ports` must be a list, not an integer",
            "local_ports = [8000",
        );
        let p = ok(&rule("[8000, \"9000-9100\", \"8080\"]"));
        assert_eq!(
            p.rules[0].selectors.local_ports.as_deref().unwrap(),
            [
                PortRange::single(8000),
                PortRange {
                    first: 9000,
                    last: 9100
                },
                PortRange::single(8080)
            ]
        );
    }

    #[test]
    fn rule_without_selectors() {
        let p = only(
            "[[rule]]\nname = \"everything\"\naction = \"observe\"\n",
            1,
            "rule `everything` has no selectors",
            "match_all = true if you really mean every socket",
        );
        assert!(p.hint.unwrap().contains("local_ports"));
        only(
            "[[rule]]\nname = \"x\"\nmatch_all = false\n",
            1,
            "has no selectors",
            "match_all = true",
        );
        let p = ok("[[rule]]\nname = \"all\"\nmatch_all = true\n");
        assert!(p.rules[0].selectors.match_all);
        only(
            "[[rule]]\nname = \"x\"\nmatch_all = true\ncomm = [\"nginx\"]\n",
            3,
            "match_all = true and also comm",
            "either match_all = true alone",
        );
    }

    #[test]
    fn rule_names() {
        only(
            "[[rule]]\nlocal_ports = [8000]\n",
            1,
            "rule #1 has no name",
            "name = \"rule-1\"",
        );
        only(
            "[[rule]]\nname = \"web socket!\"\nlocal_ports = [8000]\n",
            2,
            "rule name `web socket!` must be",
            "name = \"web-socket\"",
        );
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\n\n[[rule]]\nname = \"a\"\nlocal_ports = [9000]\n",
            6,
            "rule name `a` is already used by the rule at line 1",
            "name = \"a-2\"",
        );
    }

    #[test]
    fn shadowed_rules() {
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\n\n[[rule]]\nname = \"b\"\nlocal_ports = [8000]\naction = \"reset\"\n",
            5,
            "rule `b` can never match: the earlier rule `a` (line 1) has the same selectors",
            "move rule `b` above rule `a`",
        );
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [\"8000-8100\"]\n\n[[rule]]\nname = \"b\"\nlocal_ports = [8050]\ncomm = [\"granian\"]\n",
            5,
            "the earlier rule `a` (line 1) selects every socket it selects",
            "narrow rule `a`",
        );
        only(
            "[[rule]]\nname = \"all\"\nmatch_all = true\n[[rule]]\nname = \"b\"\nnetns = [1]\n",
            4,
            "rule `b` can never match",
            "above rule `all`",
        );
        // Narrower first is fine: the broader rule still gets the rest.
        ok("[[rule]]\nname = \"a\"\nlocal_ports = [8000]\ncomm = [\"granian\"]\n[[rule]]\nname = \"b\"\nlocal_ports = [8000]\n");
        ok("[[rule]]\nname = \"a\"\ncgroup_prefix = [\"/a/b\"]\n[[rule]]\nname = \"b\"\ncgroup_prefix = [\"/a/bc\"]\n");
        // A covering network shadows; a partial one does not.
        only(
            "[[rule]]\nname = \"a\"\nremote_cidrs = [\"10.0.0.0/8\"]\n[[rule]]\nname = \"b\"\nremote_cidrs = [\"10.1.0.0/16\"]\n",
            4,
            "selects every socket it selects",
            "",
        );
        ok("[[rule]]\nname = \"a\"\nremote_cidrs = [\"10.1.0.0/16\"]\n[[rule]]\nname = \"b\"\nremote_cidrs = [\"10.0.0.0/8\"]\n");
    }

    #[test]
    fn shadowing_sees_unions_of_entries() {
        // Two ports cover their range; two /25s cover their /24 (the old check missed both).
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [80, 81]\nremote_cidrs = [\"10.0.0.0/25\", \"10.0.0.128/25\"]\n[[rule]]\nname = \"b\"\nlocal_ports = [\"80-81\"]\nremote_cidrs = [\"10.0.0.0/24\"]\n",
            5,
            "rule `b` can never match: the earlier rule `a` (line 1) selects every socket it selects",
            "",
        );
        // The first covering rule is named, not a later one.
        let e = problems(
            "[[rule]]\nname = \"wide\"\nlocal_ports = [\"1-65535\"]\n[[rule]]\nname = \"a\"\nlocal_ports = [80]\ncomm = [\"x\"]\n[[rule]]\nname = \"b\"\nlocal_ports = [80]\ncomm = [\"x\"]\n",
        );
        assert_eq!(e.len(), 2);
        assert!(
            e.iter().all(|p| p.message.contains("earlier rule `wide`")),
            "{e:?}"
        );
    }

    /// `n` rules of `body(i)`, each under its own `[[rule]]` header named `r<i>`.
    fn many_rules(n: usize, body: impl Fn(usize) -> String) -> String {
        (0..n)
            .map(|i| format!("[[rule]]\nname = \"r{i}\"\n{}\n", body(i)))
            .collect()
    }

    #[test]
    fn wide_and_many_rules_are_checked_in_near_linear_time() {
        let t0 = std::time::Instant::now();
        // 200 rules over every port, told apart by process: none shadows another. The
        // per-port comparison took 1.4 s for this (optimised build).
        let wide = many_rules(200, |i| {
            format!("local_ports = [\"1-65535\"]\ncomm = [\"c{i}\"]")
        });
        assert_eq!(ok(&wide).rules.len(), 200);
        // ... and 200 that are all shadowed by the first.
        let same = many_rules(200, |_| "local_ports = [\"1-65535\"]".to_string());
        assert_eq!(
            problems(&same).len(),
            100 + 1,
            "capped at 100 problems plus a summary"
        );
        // Near 1 MiB: 12,000 rules sharing a process name, each with its own ports (every
        // earlier rule holds the later one's process name: a candidate on that selector).
        let big = many_rules(12_000, |i| {
            format!(
                "comm = [\"x\"]\nlocal_ports = [{}]\nremote_ports = [{}]",
                1 + i % 65535,
                1 + (i * 7) % 65535
            )
        });
        assert!(big.len() as u64 <= MAX_POLICY_BYTES);
        let p = ok(&big);
        assert_eq!(p.rules.len(), 12_000);
        assert!(p.warnings.is_empty(), "{:?}", p.warning_lines());
        // Generous: a debug build on a loaded 2-core machine.
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn a_pathological_overlap_stops_the_check_with_a_warning() {
        // Every rule covers every port but one: each candidate holds the next rule's first
        // port and fails only on its gap. The check gives up past its work limit.
        let src = many_rules(12_000, |i| {
            let p = 2 + i % 65_000;
            format!("local_ports = [\"1-{}\", \"{}-65535\"]", p - 1, p + 1)
        });
        let p = ok(&src);
        let w = p.warning_lines();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("were not checked for being unreachable"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn problems_are_capped_and_positioned() {
        let zeros = vec!["0"; 50_000].join(",");
        let src = format!("[[rule]]\nname = \"a\"\nlocal_ports = [{zeros}]\n");
        let e = problems(&src);
        assert_eq!(e.len(), 101);
        assert_eq!((e[0].line, e[0].col), (3, 16));
        assert_eq!((e[1].line, e[1].col), (3, 18));
        assert_eq!(e[100].line, 0);
        assert!(
            e[100].message.starts_with("49900 more not shown"),
            "{}",
            e[100].message
        );
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_crash() {
        let deep = format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let e = problems(&deep);
        assert!(e[0].message.contains("not valid TOML"), "{e:?}");
    }

    #[test]
    fn only_regular_files_up_to_1_mib_are_read() {
        let dir =
            std::env::temp_dir().join(format!("tcpstall-policy-hostile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo.toml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let big = dir.join("big.toml");
        std::fs::write(&big, "#".repeat(MAX_POLICY_BYTES as usize + 1)).unwrap();
        let limit = dir.join("limit.toml");
        std::fs::write(&limit, "#".repeat(MAX_POLICY_BYTES as usize)).unwrap();
        let link = dir.join("link.toml");
        std::fs::write(dir.join("real.toml"), EXAMPLE_POLICY).unwrap();
        std::os::unix::fs::symlink(dir.join("real.toml"), &link).unwrap();
        // Each in a thread: a FIFO that blocked the reader would hang the test otherwise.
        let (tx, rx) = std::sync::mpsc::channel();
        for path in [
            fifo.clone(),
            PathBuf::from("/dev/zero"),
            dir.clone(),
            big.clone(),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let r = Policy::load(&path);
                let _ = tx.send((path, r));
            });
        }
        drop(tx);
        let mut refused = Vec::new();
        for _ in 0..4 {
            let (path, r) = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("Policy::load blocked");
            let e = r.expect_err("refused");
            assert_eq!(e.problems.len(), 1);
            assert_eq!(e.problems[0].line, 0);
            refused.push((path, e.to_string()));
        }
        let text = |p: &Path| refused.iter().find(|(q, _)| q == p).unwrap().1.clone();
        assert!(
            text(&fifo).contains("it is a FIFO (named pipe), not a regular file"),
            "{}",
            text(&fifo)
        );
        assert!(text(Path::new("/dev/zero")).contains("a character device"));
        assert!(text(&dir).contains("a directory"));
        let t = text(&big);
        assert!(
            t.contains("too large: 1048577 bytes, the limit is 1048576"),
            "{t}"
        );
        assert!(t.contains("write instead: a smaller policy"), "{t}");
        // Exactly the limit, and a link to a regular file, are fine.
        assert_eq!(
            Policy::load(&limit).unwrap(),
            Policy {
                source: Some(limit.clone()),
                ..Policy::default()
            }
        );
        let p = Policy::load(&link).unwrap();
        assert_eq!(p.rules.len(), 3);
        assert_eq!(p.source.as_deref(), Some(link.as_path()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Warnings of a valid policy, as lines.
    fn warnings(src: &str) -> Vec<String> {
        ok(src).warning_lines()
    }

    #[test]
    fn dangerous_settings_are_warned_about() {
        // Nothing dangerous: the defaults, the example, an observe-only policy.
        assert!(warnings("").is_empty());
        assert!(
            warnings(EXAMPLE_POLICY).is_empty(),
            "{:?}",
            warnings(EXAMPLE_POLICY)
        );
        const RESET: &str = "[[rule]]\nname = \"ws\"\nlocal_ports = [8000]\naction = \"reset\"\n";
        let one = |src: &str, line: usize, what: &str, hint: &str| {
            let w = warnings(src);
            assert_eq!(w.len(), 1, "{src}\n{w:#?}");
            assert!(w[0].starts_with(&format!("policy:{line}:")), "{}", w[0]);
            assert!(w[0].contains(": warning: "), "{}", w[0]);
            assert!(w[0].contains(what), "{what}: {}", w[0]);
            assert!(
                w[0].contains(&format!("; consider: {hint}")),
                "{hint}: {}",
                w[0]
            );
        };
        one(
            "[guards]\nprotect_ports = []\n",
            2,
            "protects nothing",
            "protect_ports = [22]",
        );
        one(
            &format!("[guards]\nmax_resets_per_minute = 5000\n{RESET}"),
            2,
            "no longer stops a misjudged mass reset",
            "max_resets_per_minute = 60",
        );
        one(
            &format!("[guards]\nreset_share_per_minute = 1.0\n{RESET}"),
            2,
            "100 % of the sockets it tracks",
            "reset_share_per_minute = 0.1",
        );
        one(
            &format!("[guards]\npartition_min_networks = 100\n{RESET}"),
            2,
            "effectively off",
            "partition_min_networks = 2",
        );
        one(
            &format!("[guards]\npartition_share = 1.0\n{RESET}"),
            2,
            "one remote network still answering",
            "partition_share = 0.9",
        );
        one(
            &format!("[guards]\npartition_max_hold = \"10s\"\n{RESET}"),
            2,
            "lasts longer becomes resets",
            "partition_max_hold = \"5m\"",
        );
        one(
            &format!("[guards]\nmass_disconnect_min = 2\n{RESET}"),
            2,
            "bypass the budgets",
            "mass_disconnect_min = 20",
        );
        one(
            "[[rule]]\nname = \"all\"\nmatch_all = true\naction = \"reset\"\n",
            1,
            "rule `all` resets with match_all = true",
            "selectors for the service",
        );
        one(
            &format!("{RESET}classes = [\"zero_window\"]\nzero_window_after = \"2s\"\n"),
            1,
            "rule `ws` resets zero_window stalls after zero_window_after = \"2s\": healthy \
             readers look wedged for seconds",
            "zero_window_after = \"30s\"",
        );
        // Inherited from [defaults] counts too, per class the rule resets.
        let w = warnings(&format!("[defaults]\nno_ack_after = \"3s\"\nzero_window_after = \"4s\"\n{RESET}classes = [\"no_ack\"]\n"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("no_ack_after = \"3s\""), "{}", w[0]);
        // The same settings without a reset rule, or with resets disabled, are harmless.
        assert!(warnings("[guards]\nmax_resets_per_minute = 5000\nmass_disconnect_min = 1\n[[rule]]\nname = \"o\"\nmatch_all = true\nzero_window_after = \"1s\"\n").is_empty());
        assert!(warnings(&format!("[guards]\nmax_resets_per_minute = 0\nprotect_ports = []\n{RESET}zero_window_after = \"1s\"\n")).is_empty());
        // Several at once, in file order.
        let w = warnings(&format!("[guards]\nprotect_ports = []\nmax_resets_per_minute = 5000\n{RESET}no_ack_after = \"2s\"\n"));
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(
            w[0].starts_with("policy:2:")
                && w[1].starts_with("policy:3:")
                && w[2].starts_with("policy:4:")
        );
    }

    #[test]
    fn reset_rule_on_protected_ports_only() {
        only(
            "[guards]\nprotect_ports = [22, 2222]\n[[rule]]\nname = \"ssh\"\nlocal_ports = [22, 2222]\naction = \"reset\"\n",
            5,
            "every port in its local_ports is in [guards] protect_ports",
            "action = \"observe\"",
        );
        // A protected remote port protects only outgoing connections: a rule on it can still
        // reset clients that connect to us from that port.
        ok("[[rule]]\nname = \"from-22\"\nremote_ports = [\"22-22\"]\naction = \"reset\"\n");
        ok("[[rule]]\nname = \"ssh\"\nlocal_ports = [22]\naction = \"observe\"\n");
        ok("[[rule]]\nname = \"ssh-and-web\"\nlocal_ports = [22, 8000]\naction = \"reset\"\n");
        ok("[guards]\nprotect_ports = []\n[[rule]]\nname = \"ssh\"\nlocal_ports = [22]\naction = \"reset\"\n");
    }

    #[test]
    fn thresholds_above_the_ceiling() {
        let p = only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nzero_window_after = \"10m\"\n",
            4,
            "`zero_window_after = \"10m\"` is longer than `ceiling = \"5m\"` (inherited from [defaults])",
            "ceiling = \"10m\"",
        );
        assert!(p
            .hint
            .unwrap()
            .starts_with("zero_window_after = \"5m\" or shorter"));
        only(
            "[defaults]\nceiling = \"10s\"\n",
            2,
            "`ceiling = \"10s\"` is shorter than zero_window_after = \"30s\", no_ack_after = \"30s\", \
             slow_drain_window = \"30s\", recv_backlog_after = \"30s\" (the built-in default)",
            "ceiling = \"30s\"",
        );
        only(
            "[defaults]\nno_ack_after = \"20s\"\n[[rule]]\nname = \"a\"\nlocal_ports = [1]\nceiling = \"25s\"\n",
            6,
            "shorter than zero_window_after = \"30s\", slow_drain_window = \"30s\", recv_backlog_after = \"30s\" (inherited from [defaults])",
            "ceiling = \"30s\"",
        );
        // Reported once, where written, not again in every rule that inherits it.
        let ps = problems(
            "[defaults]\nno_ack_after = \"6m\"\n[[rule]]\nname = \"a\"\nlocal_ports = [1]\n[[rule]]\nname = \"b\"\nlocal_ports = [2]\n",
        );
        assert_eq!(ps.len(), 1, "{}", render(&ps));
        assert_eq!(ps[0].line, 2);
        // A rule raising the ceiling fixes it for that rule.
        ok("[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nzero_window_after = \"10m\"\nceiling = \"10m\"\n");
    }

    #[test]
    fn cadence_factor_below_one() {
        only(
            "[defaults]\ncadence_factor = 0.5\n",
            2,
            "`cadence_factor = 0.5` must be at least 1.0",
            "cadence_factor = 1.0",
        );
        only(
            "[[rule]]\nname = \"a\"\nnetns = [1]\ncadence_factor = \"2\"\n",
            4,
            "must be a number, not a string",
            "cadence_factor = 2.0",
        );
        assert_eq!(
            ok("[defaults]\ncadence_factor = 1\n")
                .defaults
                .cadence_factor,
            1.0
        );
    }

    #[test]
    fn comm_longer_than_the_kernel_keeps() {
        let p = only(
            "[[rule]]\nname = \"a\"\ncomm = [\"granian-worker-pool\"]\n",
            3,
            "process name `granian-worker-pool` is 19 bytes: the kernel keeps only the first 15",
            "\"granian-worker-\"",
        );
        assert_eq!(p.hint.as_deref(), Some("\"granian-worker-\""));
        only(
            "[[rule]]\nname = \"a\"\ncomm = [\"\"]\n",
            3,
            "is not a process name",
            "ps -o comm",
        );
        ok("[[rule]]\nname = \"a\"\ncomm = [\"granian-worker-\"]\n");
    }

    #[test]
    fn unknown_class() {
        let rule =
            |c: &str| format!("[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nclasses = [{c}]\n");
        only(
            &rule("\"zero-window\""),
            4,
            "unknown stall class `zero-window`",
            "\"zero_window\"",
        );
        only(&rule("\"noack\""), 4, "unknown stall class", "\"no_ack\"");
        only(
            &rule("\"wedged\""),
            4,
            "unknown stall class `wedged`",
            "one of zero_window, no_ack, slow_drain, recv_backlog",
        );
        only(
            &rule(""),
            4,
            "would make the action apply to nothing",
            "classes = [\"zero_window\"",
        );
        only(
            &rule("\"no_ack\", \"zero_window\", \"no_ack\""),
            4,
            "class `no_ack` is listed twice",
            "classes = [\"no_ack\", \"zero_window\"]",
        );
    }

    #[test]
    fn bad_actions() {
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\naction = \"kill\"\n",
            4,
            "unknown action `kill`",
            "action = \"observe\" or action = \"reset\"",
        );
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\naction = \"Reset\"\n",
            4,
            "unknown action",
            "action = \"reset\"",
        );
        only(
            "[defaults]\naction = \"reset\"\n",
            2,
            "[defaults] can only observe",
            "action = \"reset\" in a [[rule]]",
        );
        ok("[defaults]\naction = \"observe\"\n");
    }

    #[test]
    fn reset_with_recv_backlog() {
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nclasses = [\"zero_window\", \"recv_backlog\"]\naction = \"reset\"\n",
            4,
            "recv_backlog is observe-only",
            "classes = [\"zero_window\"], or action = \"observe\"",
        );
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nclasses = [\"recv_backlog\"]\naction = \"reset\"\n",
            4,
            "observe-only",
            "action = \"observe\"",
        );
        let p = ok("[[rule]]\nname = \"a\"\nlocal_ports = [8000]\nclasses = [\"recv_backlog\"]\n");
        assert_eq!(p.rules[0].classes, [StallClass::RecvBacklog]);
    }

    #[test]
    fn selectors_with_bad_cgroups_and_netns() {
        let cg = |c: &str| format!("[[rule]]\nname = \"a\"\ncgroup_prefix = [\"{c}\"]\n");
        only(
            &cg("system.slice/app.service"),
            3,
            "must start with `/`",
            "\"/system.slice/app.service\"",
        );
        only(
            &cg("/system.slice/app.service/"),
            3,
            "end with `/`",
            "\"/system.slice/app.service\"",
        );
        only(
            &cg("0::/system.slice/app.service"),
            3,
            "what follows `0::`",
            "\"/system.slice/app.service\"",
        );
        only(&cg("/a/../b"), 3, "`..`", "\"/a/b\"");
        ok(&cg("/"));
        let ns = |n: &str| format!("[[rule]]\nname = \"a\"\nnetns = [{n}]\n");
        assert_eq!(
            ok(&ns("\"net:[4026532000]\"")).rules[0].selectors.netns,
            Some(vec![4026532000])
        );
        only(
            &ns("0"),
            3,
            "not a network namespace inode number",
            "readlink /proc/PID/ns/net",
        );
        only(
            &ns("-4"),
            3,
            "not a network namespace inode number",
            "readlink",
        );
        only(
            &ns("\"host\""),
            3,
            "`host` is not a network namespace",
            "4026531840",
        );
    }

    #[test]
    fn guards_and_structure() {
        only(
            "[guards]\nprotect_ports = [\"22-23\"]\n",
            2,
            "protect_ports lists port numbers, not a string",
            "protect_ports = [22, 2222]",
        );
        only("[guards]\nprotect_ports = [0]\n", 2, "port 0", "1 to 65535");
        only(
            "[guards]\nmax_resets_per_minute = -1\n",
            2,
            "must be between 0 and",
            "max_resets_per_minute = 60",
        );
        let p = ok("[guards]\nprotect_ports = [443, 22, 443]\nmax_resets_per_minute = 0\n");
        assert_eq!(p.guards.protect_ports, [22, 443]);
        assert_eq!(p.guards.max_resets_per_minute, 0);
        only(
            "[rule]\nname = \"a\"\nlocal_ports = [1]\n",
            1,
            "write each as [[rule]]",
            "[[rule]]",
        );
        only(
            "defaults = 3\n",
            1,
            "`defaults` must be a table, not an integer",
            "[defaults]",
        );
    }

    #[test]
    fn toml_syntax_errors_have_positions_and_hints() {
        only(
            "[[rule]]\nname = \"a\"\nlocal_ports = [8000]\naction = reset\n",
            4,
            "not valid TOML: invalid string",
            "action = \"reset\" (text values go in double quotes)",
        );
        only(
            "[defaults]\nno_ack_after = \"1s\"\nno_ack_after = \"2s\"\n",
            3,
            "duplicate key",
            "each key once per table",
        );
        let p = &problems("[defaults\n")[0];
        assert_eq!(p.line, 1);
        assert!(p.message.starts_with("not valid TOML"));
    }

    #[test]
    fn all_problems_are_reported_at_once_in_file_order() {
        let src = "\
tick = \"1 second\"
[defaults]
ceilng = \"5m\"
cadence_factor = 0.9
[[rule]]
name = \"ws\"
local_ports = [\"9100-9000\"]
remote_cidrs = [\"10.0.0.1/8\"]
action = \"nuke\"
[[rule]]
name = \"ws\"
comm = [\"granian\"]
";
        let e = Policy::parse(src, "policy.toml").unwrap_err();
        let lines: Vec<usize> = e.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 3, 4, 7, 8, 9, 11], "{e}");
        let text = e.to_string();
        assert_eq!(text.lines().count(), 7);
        assert_eq!(
            text.lines().next().unwrap(),
            "policy.toml:1:8: `1 second` is not a duration: write whole numbers with a unit \
             (ms, s, m, h) and no spaces, e.g. \"30s\", \"1m30s\", \"500ms\"; write instead: tick = \"1s\""
        );
        assert!(text.contains(
            "policy.toml:3:1: unknown key `ceilng` in [defaults]; write instead: ceiling"
        ));
        assert!(text.contains("policy.toml:7:16: port range `9100-9000` is reversed"));
    }

    #[test]
    fn load_reads_files_and_reports_unreadable_ones() {
        let dir = std::env::temp_dir().join(format!("tcpstall-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        let bad = dir.join("bad.toml");
        std::fs::write(&good, EXAMPLE_POLICY).unwrap();
        std::fs::write(&bad, "tick = \"fast\"\n").unwrap();
        let loaded = Policy::load(&good);
        let failed = Policy::load(&bad);
        let missing = Policy::load(&dir.join("missing.toml"));
        std::fs::remove_dir_all(&dir).unwrap();

        let p = loaded.unwrap();
        assert_eq!(p.source.as_deref(), Some(good.as_path()));
        assert_eq!(p.rules.len(), 3);

        let e = failed.unwrap_err();
        assert_eq!(e.file, bad.display().to_string());
        assert!(e
            .to_string()
            .starts_with(&format!("{}:1:8: `fast` is not a duration", bad.display())));

        let e = missing.unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].line, 0);
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "{}: cannot read the policy file: it does not exist; write instead: ",
                dir.join("missing.toml").display()
            )),
            "{text}"
        );
    }

    // ----- matching --------------------------------------------------------------------

    const MATCHING: &str = r#"
[[rule]]
name = "range"
local_ports = ["9000-9100"]

[[rule]]
name = "v4-net"
remote_cidrs = ["10.0.0.0/8"]

[[rule]]
name = "v6-net"
remote_cidrs = ["fd00::/8"]

[[rule]]
name = "by-comm"
comm = ["granian"]
action = "reset"
classes = ["zero_window"]

[[rule]]
name = "by-cgroup"
cgroup_prefix = ["/system.slice/app.service"]

[[rule]]
name = "by-netns"
netns = [4026532100]

[[rule]]
name = "local-net"
local_cidrs = ["192.0.2.0/24"]
remote_ports = [443]
"#;

    fn selected<'p>(p: &'p Policy, id: &SocketIdentity<'_>) -> Option<&'p str> {
        p.select(id).rule.map(|r| r.name.as_str())
    }

    #[test]
    fn ports_and_ranges() {
        let p = ok(MATCHING);
        for port in [9000, 9050, 9100] {
            assert_eq!(
                selected(&p, &sock(&format!("172.16.0.1:{port}"), "172.16.0.2:50000")),
                Some("range")
            );
        }
        for port in [8999, 9101] {
            assert_eq!(
                selected(&p, &sock(&format!("172.16.0.1:{port}"), "172.16.0.2:50000")),
                None
            );
        }
        // local_ports look at the local port only.
        assert_eq!(
            selected(&p, &sock("172.16.0.1:50000", "172.16.0.2:9000")),
            None
        );
        // remote_ports together with local_cidrs: both must match.
        assert_eq!(
            selected(&p, &sock("192.0.2.5:50000", "172.16.0.2:443")),
            Some("local-net")
        );
        assert_eq!(
            selected(&p, &sock("192.0.2.5:50000", "172.16.0.2:80")),
            None
        );
        assert_eq!(
            selected(&p, &sock("198.51.100.5:50000", "172.16.0.2:443")),
            None
        );
    }

    #[test]
    fn cidrs_v4_v6_and_v4_mapped() {
        let p = ok(MATCHING);
        assert_eq!(
            selected(&p, &sock("172.16.0.1:80", "10.200.3.4:5000")),
            Some("v4-net")
        );
        assert_eq!(selected(&p, &sock("172.16.0.1:80", "11.0.0.1:5000")), None);
        assert_eq!(
            selected(&p, &sock("[fd00::1]:80", "[fd12::7]:5000")),
            Some("v6-net")
        );
        assert_eq!(selected(&p, &sock("[fd00::1]:80", "[fe80::7]:5000")), None);
        // A dual-stack socket talking to an IPv4 peer.
        let mapped = SocketIdentity {
            local: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80),
            remote: SocketAddr::new(
                IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()),
                5000,
            ),
            ..sock("172.16.0.1:80", "172.16.0.2:5000")
        };
        assert_eq!(selected(&p, &mapped), Some("v4-net"));
        // And the other way round: a mapped network matches a plain IPv4 peer.
        let q = ok("[[rule]]\nname = \"m\"\nremote_cidrs = [\"::ffff:10.0.0.0/104\"]\n");
        assert_eq!(
            selected(&q, &sock("172.16.0.1:80", "10.9.9.9:5000")),
            Some("m")
        );
        assert_eq!(selected(&q, &sock("172.16.0.1:80", "11.9.9.9:5000")), None);
    }

    #[test]
    fn comm_cgroup_and_netns() {
        let p = ok(MATCHING);
        let base = sock("172.16.0.1:80", "172.16.0.2:5000");
        assert_eq!(
            selected(
                &p,
                &SocketIdentity {
                    comm: Some("granian"),
                    ..base
                }
            ),
            Some("by-comm")
        );
        assert_eq!(
            selected(
                &p,
                &SocketIdentity {
                    comm: Some("granian2"),
                    ..base
                }
            ),
            None
        );
        assert_eq!(
            selected(&p, &SocketIdentity { comm: None, ..base }),
            None,
            "unknown comm never matches"
        );

        let cg = |path| SocketIdentity {
            cgroup_path: path,
            ..base
        };
        assert_eq!(
            selected(&p, &cg(Some("/system.slice/app.service"))),
            Some("by-cgroup")
        );
        assert_eq!(
            selected(&p, &cg(Some("/system.slice/app.service/worker"))),
            Some("by-cgroup")
        );
        assert_eq!(
            selected(&p, &cg(Some("/system.slice/app.service2"))),
            None,
            "component boundary"
        );
        assert_eq!(selected(&p, &cg(Some("/system.slice"))), None);
        assert_eq!(
            selected(&p, &cg(None)),
            None,
            "unknown cgroup never matches"
        );

        assert_eq!(
            selected(
                &p,
                &SocketIdentity {
                    netns: 4026532100,
                    ..base
                }
            ),
            Some("by-netns")
        );
        assert_eq!(
            selected(
                &p,
                &SocketIdentity {
                    netns: 4026532101,
                    ..base
                }
            ),
            None
        );

        assert!(cgroup_under("/anything", "/"));
        assert!(!cgroup_under("/a/bc", "/a/b"));
    }

    #[test]
    fn first_match_wins_and_resets_follow_the_rule() {
        let p = ok(r#"
[[rule]]
name = "granian-8000"
local_ports = [8000]
comm = ["granian"]
action = "reset"
classes = ["zero_window"]
zero_window_after = "20s"

[[rule]]
name = "port-8000"
local_ports = [8000]
"#);
        let base = sock("10.0.0.1:8000", "10.0.0.2:5000");
        let s = p.select(&SocketIdentity {
            comm: Some("granian"),
            ..base
        });
        assert_eq!(s.rule.unwrap().name, "granian-8000");
        assert_eq!(s.thresholds.zero_window_after, Duration::from_secs(20));
        assert!(s.resets(StallClass::ZeroWindow));
        assert!(!s.resets(StallClass::NoAck));

        for comm in [Some("python3"), None] {
            let s = p.select(&SocketIdentity { comm, ..base });
            assert_eq!(s.rule.unwrap().name, "port-8000");
            assert_eq!(s.action, Action::Observe);
            assert_eq!(s.classes, Rule::DEFAULT_CLASSES);
            assert!(!s.resets(StallClass::ZeroWindow));
            assert_eq!(s.thresholds.zero_window_after, Duration::from_secs(30));
        }
    }

    // ----- output ----------------------------------------------------------------------

    #[test]
    fn describe_fills_in_inherited_values() {
        let p = ok(r#"
tick = "500ms"
[defaults]
no_ack_after = "45s"
[guards]
protect_ports = [22, 2222]
max_resets_per_minute = 10
[[rule]]
name = "ws"
local_ports = [8000, "9000-9100"]
comm = ["granian"]
action = "reset"
classes = ["zero_window", "no_ack"]
zero_window_after = "20s"
cadence_factor = 3
ceiling = "2m"
[[rule]]
name = "db"
remote_cidrs = ["10.20.0.0/16"]
"#);
        let expected = "\
policy: built-in defaults (no policy file)
tick: 500ms
guards: never reset our service on port 22, 2222 nor our outgoing connections to 22, 2222; per rule at most max(10, 10% of the sockets it tracks) resets per minute, one remote network at most 50% of that
        mass disconnect: 20 or more silent peers of one remote network are reset together, outside the budget; partition hold: no resets while 2 or more remote networks and 90% of those heard from are silent at once (at most 5m)
defaults (sockets no rule selects; observed, never reset):
  zero_window_after 30s, no_ack_after 45s, slow_drain below 1KiB/s over 30s, recv_backlog_after 30s, cadence_factor 2.0, ceiling 5m
rules (first match wins):
  1. ws (line 8): reset on zero_window, no_ack
     match: local_ports 8000, 9000-9100 and comm granian
     thresholds: zero_window_after 20s, no_ack_after 45s, slow_drain below 1KiB/s over 30s, recv_backlog_after 30s, cadence_factor 3.0, ceiling 2m
  2. db (line 17): observe
     match: remote_cidrs 10.20.0.0/16
     thresholds: zero_window_after 30s, no_ack_after 45s, slow_drain below 1KiB/s over 30s, recv_backlog_after 30s, cadence_factor 2.0, ceiling 5m
  otherwise: observe with the defaults
";
        assert_eq!(p.describe(), expected);

        let d = Policy::default().describe();
        assert!(
            d.contains("rules: none; every socket is observed with the defaults"),
            "{d}"
        );
        assert!(
            d.contains("never reset our service on port 22 nor our outgoing connections to 22;"),
            "{d}"
        );
    }

    #[test]
    fn json_matches_the_file_syntax() {
        let p = ok(EXAMPLE_POLICY);
        let j = p.to_json();
        assert_eq!(j["tick"], "1s");
        assert_eq!(j["source"], serde_json::Value::Null);
        assert_eq!(j["defaults"]["slow_drain_floor"], "1KiB/s");
        assert_eq!(j["guards"]["protect_ports"], json!([22]));
        assert_eq!(j["guards"]["max_resets_per_minute"], 60);
        let ws = &j["rules"][0];
        assert_eq!(ws["name"], "granian-websocket");
        assert_eq!(ws["action"], "reset");
        assert_eq!(ws["classes"], json!(["zero_window", "no_ack"]));
        assert_eq!(ws["match"], json!({"local_ports": [8000]}));
        assert_eq!(ws["thresholds"]["zero_window_after"], "20s");
        assert_eq!(ws["thresholds"]["no_ack_after"], "30s");
        assert_eq!(ws["thresholds"]["cadence_factor"], 3.0);
        assert_eq!(j["rules"][1]["match"]["local_ports"], json!(["8443-8444"]));
        assert_eq!(
            j["rules"][2]["match"]["remote_cidrs"],
            json!(["10.20.0.0/16", "fd00:20::/32"])
        );
        assert_eq!(serde_json::to_value(Action::Observe).unwrap(), "observe");
    }

    // ----- value syntax ----------------------------------------------------------------

    #[test]
    fn duration_syntax_round_trips() {
        for (s, ms) in [
            ("30s", 30_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("2h", 7_200_000),
            ("1h1m1s1ms", 3_661_001),
        ] {
            assert_eq!(parse_duration(s), Some(Duration::from_millis(ms)), "{s}");
            assert_eq!(format_duration(Duration::from_millis(ms)), s);
        }
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        for bad in [
            "",
            "30",
            "s",
            "30 s",
            "30sec",
            "1.5s",
            "-1s",
            "30s ",
            "99999999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rate_syntax_round_trips() {
        for (s, bps) in [
            ("512B/s", 512),
            ("1KiB/s", 1024),
            ("2MiB/s", 2 << 20),
            ("1GiB/s", 1 << 30),
            ("1536B/s", 1536),
            ("0B/s", 0),
        ] {
            assert_eq!(parse_rate(s), Some(bps), "{s}");
            assert_eq!(format_rate(bps), s);
        }
        for bad in [
            "1KiB",
            "1KB/s",
            "1 KiB/s",
            "KiB/s",
            "1.5KiB/s",
            "1kib/s",
            "99999999999GiB/s",
        ] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn closest_key_suggestions() {
        assert_eq!(
            closest("zero_windw_after", THRESHOLD_KEYS),
            Some("zero_window_after")
        );
        assert_eq!(
            closest("Zero-Window-After", THRESHOLD_KEYS),
            Some("zero_window_after")
        );
        assert_eq!(
            closest("zero_window", THRESHOLD_KEYS),
            Some("zero_window_after")
        );
        assert_eq!(closest("xyz", THRESHOLD_KEYS), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
