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
//! tick = "1s"                  # how often the agent reads socket state; 10ms..1m (default 1s)
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
//! | `mass_disconnect_min` | `20` | when at least this many sockets of one remote network (and 90 % of those with data in flight) hear nothing for a second while the node is not partitioned, their peers vanished together: their `no_ack` stalls are reset as they cross their thresholds, outside both budgets (a `mass_disconnect` event says so once); the episode lasts while they stay 90 % silent and a minute past the last silent one, so the network's stragglers are reset too |
//! | `partition_min_networks` | `2` | **partition hold**: while at least this many remote networks ... |
//! | `partition_share` | `0.9` | ... and at least this share of the networks heard from in the last 5 s went silent at once, the node's own path is down, not its peers: no socket is reset (guard `partition_hold`, and a `partition_hold` event when it starts and ends); after it ends, a `no_ack` stall from before the end waits for its socket's next retransmission to go unanswered (at most 130 s) |
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
//!
//! # Code map
//!
//! * `mod.rs` — the public types ([`Policy`], [`Rule`], [`Selection`], ...) and
//!   [`Policy::parse`] / [`Policy::select`].
//! * `load.rs` — reading a policy file safely ([`Policy::load`]).
//! * `spanned.rs` — the TOML document (`toml_edit`) as a tree of values with byte spans.
//! * `check.rs` — the validation context: problems with positions, typed values from nodes.
//! * `validate.rs` — the whole file: top level, `[defaults]`, `[guards]`, cross-rule checks.
//! * `rule.rs` — one `[[rule]]`; `values.rs` — selector entries (ports, CIDRs, names, ...);
//!   `thresholds.rs` — threshold keys and the ceiling; `shadow.rs` — unreachable rules.
//! * `warn.rs` — valid but dangerous settings; `duration.rs` — duration and rate syntax;
//!   `selectors.rs` — matching sockets; `describe.rs` — `policy check` text and JSON;
//!   `hooks.rs` — rules `--trouble-hooks` cannot serve (refused) or serves in part (warned).
//! * `tests.rs`, `select_tests.rs` — unit tests (validation; selection and output).

use crate::classify::{StallClass, Thresholds};
use serde::Serialize;
use serde_json::json;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod check;
mod describe;
mod duration;
mod example;
mod hooks;
mod load;
mod rule;
#[cfg(test)]
mod select_tests;
mod selectors;
mod shadow;
mod spanned;
#[cfg(test)]
mod tests;
mod thresholds;
mod validate;
mod values;
mod warn;

pub use duration::{
    format_duration, format_rate, parse_duration, parse_rate, parse_tick, TICK_MAX, TICK_MIN,
};
pub use example::EXAMPLE_POLICY;
pub use load::MAX_POLICY_BYTES;
pub use selectors::Selectors;

// ---------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------

/// What a rule does to a socket that is stalled in one of its classes; events report it as
/// `action` (the same type: `crate::event::Action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Report the stall (events), never touch the socket.
    Observe,
    /// Report the stall and destroy the socket (subject to [`Guards`]).
    Reset,
}

impl Action {
    /// Every variant, in schema order.
    pub const ALL: [Action; 2] = [Action::Observe, Action::Reset];

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
    /// Agent tick ([`TICK_MIN`] ..= [`TICK_MAX`]: 10 ms ..= 60 s).
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
            tick: duration::DEFAULT_TICK,
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
    /// How lines about this policy name it: its file, or `policy` for one built in code.
    pub(crate) fn file_label(&self) -> String {
        self.source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "policy".to_string())
    }

    /// The warnings as `policy check` prints them: `FILE:LINE:COL: warning: what and why;
    /// consider: what to write instead`.
    pub fn warning_lines(&self) -> Vec<String> {
        let file = self.file_label();
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
        let mut cx = check::Cx::new(src);
        let policy = match spanned::parse(src) {
            Ok(root) => validate::build(&mut cx, &root),
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
        self.selection(self.select_index(id))
    }

    /// The index of the first rule that selects `id` (see [`Policy::select`]).
    pub fn select_index(&self, id: &SocketIdentity<'_>) -> Option<usize> {
        self.rules.iter().position(|r| r.selectors.matches(id))
    }

    /// The selection of rule `index` (from [`Policy::select_index`] on this policy), or of
    /// no rule.
    pub fn selection(&self, index: Option<usize>) -> Selection<'_> {
        match index.and_then(|i| self.rules.get(i)) {
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
}
