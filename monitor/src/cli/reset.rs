//! # `tcpstall reset`
//!
//! Resets one TCP connection by hand, behind the agent's guards, and prints what happened as
//! tcpstall events (NDJSON on stdout; human-readable notes on stderr):
//!
//! ```text
//! tcpstall reset --cookie 81234                       # a cookie from a tcpstall event
//! tcpstall reset --cookie 0x13d52                     # `ss -e` prints it as sk:13d52
//! tcpstall reset --local 10.0.0.5:8000 --remote 10.0.9.7:51234 [--cookie N]
//!                [--netns 4026532201 | --netns /run/netns/NAME]
//!                [--policy FILE] [--dry-run]
//! ```
//!
//! The socket is looked up with a `sock_diag` dump in its network namespace (`--netns`, or
//! by default every namespace: tcpstall's own, `/run/netns/*` and each distinct
//! `/proc/*/ns/net`). Then, in the agent's order of the guards ([`crate::guards::Guards::check`]):
//!
//! 1. a port `[guards] protect_ports` of `--policy` protects (default: 22; by direction: our
//!    service on a listed local port, our outgoing connections to a listed remote port) →
//!    `reset_skipped`, guard `protected_port`;
//! 2. a socket with nothing queued to send (or not a connection, e.g. `LISTEN`) is not
//!    wedged → `reset_skipped`, guard `not_stalled_anymore`: tcpstall only resets sockets
//!    with data queued (use `ss -K` for anything else);
//! 3. an orphan (the application closed it) on a kernel where the orphan-reset self-test
//!    fails → `reset_skipped`, guard `orphan_unsafe`;
//! 4. `--dry-run` → `reset_skipped`, guard `dry_run`;
//! 5. the socket is re-read in its namespace: gone or drained → `reset_skipped`, guard
//!    `not_stalled_anymore`;
//! 6. `max_resets_per_minute = 0` in `--policy` → `reset_skipped`, guard `rate_limit`;
//! 7. otherwise it is destroyed by cookie and 4-tuple in its namespace (`SOCK_DESTROY`, as
//!    `ss -K`): `socket_reset`, or `reset_failed` with the errno and what it means. The
//!    application sees `ECONNABORTED`; the peer gets a RST.
//!
//! Events carry `rule: "manual"`, `action: "reset"`, the class the socket's `tcp_info`
//! suggests (`zero_window`: peer window 0 with data queued; `no_ack`: data in flight with
//! retransmits, backoff or lost segments; otherwise `slow_drain`), `stalled_for_ms` = time
//! since the last ACK, no process identity, and evidence zeros with the reason
//! "manual reset by operator".
//!
//! Exit codes: `0` reset done (with `--dry-run`: it would be reset); `1` refused by a guard,
//! no such socket, ambiguous 4-tuple, or the reset failed; `2` usage error (bad arguments or
//! an invalid `--policy`).

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::classify::{Evidence, StallClass};
use crate::event::{self, Event, EventWriter, SkipGuard, SocketFields};
use crate::guards::{self, Budgets, Refusal};
use crate::policy::Policy;
use crate::reset::{self, Destroyer, NetnsRef, ResetError, Search, Target, TcpDiag};
use clap::{ArgGroup, Args};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// `--help` epilogue of `tcpstall reset`.
pub const RESET_HELP: &str = "\
Guards, in order: a protected port (--policy [guards] protect_ports, default 22) refuses; a \
socket with nothing queued to send is not wedged and is refused (tcpstall only resets \
sockets with data queued; use `ss -K` for anything else); an orphan (its application closed \
it) is refused where destroying orphans is not safe on this kernel (a self-test decides); \
--dry-run stops here; the socket is re-read and refused if it drained; max_resets_per_minute \
= 0 refuses. Otherwise the socket is destroyed by cookie and 4-tuple in its network namespace. Events (NDJSON) go to stdout, notes to stderr.

Exit codes:
  0  reset done (with --dry-run: it would be reset)
  1  refused by a guard, no such socket, ambiguous 4-tuple, or the reset failed
  2  usage error (bad arguments or an invalid --policy)";

/// Arguments of `tcpstall reset`.
#[derive(Args, Clone, Debug, Default, PartialEq)]
#[command(
    group(ArgGroup::new("socket").required(true).multiple(true).args(["cookie", "local"])),
    after_help = RESET_HELP
)]
pub struct ResetArgs {
    /// Socket cookie: decimal as in tcpstall events, or hex as `ss -e` prints it
    /// (`sk:13d52`; write `0x13d52` or `sk:13d52`).
    #[arg(long, value_parser = parse_cookie, value_name = "N")]
    pub cookie: Option<u64>,
    /// Local address of the connection, `IP:PORT` (`[IPv6]:PORT`). Needs --remote.
    #[arg(long, requires = "remote", value_name = "IP:PORT")]
    pub local: Option<SocketAddr>,
    /// Remote address of the connection, `IP:PORT` (`[IPv6]:PORT`). Needs --local.
    #[arg(long, requires = "local", value_name = "IP:PORT")]
    pub remote: Option<SocketAddr>,
    /// Network namespace to look in: an inode (`4026532201`, `net:[4026532201]`) or a
    /// namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`). Default: every namespace
    /// (tcpstall's own, /run/netns/*, each distinct /proc/*/ns/net).
    #[arg(long, value_name = "INODE|PATH")]
    pub netns: Option<String>,
    /// Policy file whose `[guards]` apply (default guards: protect port 22).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Run every check and report what would happen (`reset_skipped`, guard `dry_run`)
    /// without resetting.
    #[arg(long)]
    pub dry_run: bool,
}

/// Parse a socket cookie: decimal, `0x` hex, or `sk:` hex (as `ss -e` prints it).
pub fn parse_cookie(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(h) = t.strip_prefix("sk:") {
        (h, 16)
    } else {
        (t, 10)
    };
    let v = u64::from_str_radix(digits, radix).map_err(|e| {
        format!(
            "{s:?} is not a socket cookie ({e}); write it in decimal as tcpstall events \
             print it, or as hex with 0x / sk: as `ss -e` prints it"
        )
    })?;
    if v == 0 || v == u64::MAX {
        return Err(format!(
            "{s:?} is not a socket cookie: cookies are never 0 (or all ones)"
        ));
    }
    Ok(v)
}

/// Where to look for the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsArg {
    /// A namespace inode, resolved when searching.
    Inode(u32),
    /// A namespace file, checked to be a network namespace.
    File(NetnsRef),
}

/// Parse `--netns`: an inode (`4026532201`, `net:[4026532201]`) or a namespace file.
pub fn parse_netns_arg(s: &str) -> Result<NetnsArg, String> {
    let t = s.trim();
    let inode = t
        .strip_prefix("net:[")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(t);
    if !inode.is_empty() && inode.bytes().all(|b| b.is_ascii_digit()) {
        return match inode.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!(
                "--netns {s}: not a namespace inode (1..4294967295); write the number \
                 `readlink /proc/PID/ns/net` prints, or a file like /run/netns/NAME"
            )),
            Ok(n) => Ok(NetnsArg::Inode(n)),
        };
    }
    reset::netns_at(Path::new(t))
        .map(NetnsArg::File)
        .map_err(|e| format!("--netns {s}: {}", e.meaning))
}

/// A validated `tcpstall reset` request.
#[derive(Clone, Debug, PartialEq)]
pub struct ResetRequest {
    /// Socket cookie, if given.
    pub cookie: Option<u64>,
    /// (local, remote), if given.
    pub tuple: Option<(SocketAddr, SocketAddr)>,
    /// The namespace to search; `None` = every reachable namespace.
    pub netns: Option<NetnsArg>,
    /// Guards (and where they came from, for messages).
    pub policy: Policy,
    /// Report only.
    pub dry_run: bool,
}

/// A usage error: message for stderr; exit code [`EXIT_USAGE`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

fn check_endpoint(flag: &str, a: SocketAddr) -> Result<(), UsageError> {
    if a.port() == 0 {
        return Err(UsageError(format!(
            "error: {flag} {a}: port 0 is not a connection's port; copy the address from \
             `ss -tn` or from the tcpstall event"
        )));
    }
    if a.ip().is_unspecified() {
        return Err(UsageError(format!(
            "error: {flag} {a}: an unspecified address names a listening socket, not a \
             connection; tcpstall resets connections: copy both addresses from `ss -tn`"
        )));
    }
    Ok(())
}

fn is_v4ish(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
    }
}

impl ResetRequest {
    /// Validate the arguments beyond what clap checks and load `--policy`.
    pub fn from_args(args: &ResetArgs) -> Result<ResetRequest, UsageError> {
        if let Some(c) = args.cookie {
            if c == 0 || c == u64::MAX {
                return Err(UsageError(format!(
                    "error: --cookie {c} is not a socket cookie (cookies are never 0 or all ones)"
                )));
            }
        }
        let tuple = match (args.local, args.remote) {
            (Some(l), Some(r)) => {
                check_endpoint("--local", l)?;
                check_endpoint("--remote", r)?;
                if is_v4ish(l.ip()) != is_v4ish(r.ip()) {
                    return Err(UsageError(format!(
                        "error: --local {l} and --remote {r} mix IPv4 and IPv6; a connection \
                         has both ends in one family (IPv4 peers of an IPv6 socket are \
                         written ::ffff:a.b.c.d or plain a.b.c.d on both sides)"
                    )));
                }
                Some((l, r))
            }
            (None, None) => None,
            _ => {
                return Err(UsageError(
                    "error: --local and --remote go together: a connection is named by both \
                     ends"
                        .to_string(),
                ))
            }
        };
        if args.cookie.is_none() && tuple.is_none() {
            return Err(UsageError(
                "error: name the socket with --cookie N, or --local IP:PORT --remote IP:PORT"
                    .to_string(),
            ));
        }
        let netns = match &args.netns {
            None => None,
            Some(s) => Some(parse_netns_arg(s).map_err(|e| UsageError(format!("error: {e}")))?),
        };
        let policy = match &args.policy {
            None => Policy::default(),
            Some(p) => Policy::load(p).map_err(|e| UsageError(e.to_string()))?,
        };
        Ok(ResetRequest {
            cookie: args.cookie,
            tuple,
            netns,
            policy,
            dry_run: args.dry_run,
        })
    }

    /// The socket in words, for messages.
    fn describe(&self) -> String {
        match (self.tuple, self.cookie) {
            (Some((l, r)), Some(c)) => format!("{l} -> {r} with cookie {c}"),
            (Some((l, r)), None) => format!("{l} -> {r}"),
            (None, Some(c)) => format!("with cookie {c}"),
            (None, None) => "?".to_string(),
        }
    }
}

/// What `tcpstall reset` did.
#[derive(Debug)]
pub struct ResetOutcome {
    /// Events for stdout, in order.
    pub events: Vec<Event>,
    /// Notes for stderr, in order.
    pub notes: Vec<String>,
    /// Exit code.
    pub code: u8,
}

impl ResetOutcome {
    fn refused(notes: Vec<String>) -> ResetOutcome {
        ResetOutcome {
            events: Vec::new(),
            notes,
            code: EXIT_FAILED,
        }
    }
}

/// Whether the socket has data queued to send: a non-empty send queue, and (when the
/// kernel sent `tcp_info`) unacknowledged segments or unsent bytes.
pub fn has_queued(d: &TcpDiag) -> bool {
    d.send_q > 0 && (d.tcp_info_len == 0 || d.unacked > 0 || d.notsent_bytes > 0)
}

/// The stall class the socket's `tcp_info` suggests: `zero_window` when the peer advertises
/// a zero window and data is queued, `no_ack` when data is in flight and being
/// retransmitted (or backed off, or lost), `slow_drain` otherwise.
pub fn signature_class(d: &TcpDiag) -> StallClass {
    if d.has_snd_wnd() && d.snd_wnd == 0 && has_queued(d) {
        StallClass::ZeroWindow
    } else if d.unacked > 0 && (d.backoff > 0 || d.retransmits > 0 || d.lost > 0) {
        StallClass::NoAck
    } else {
        StallClass::SlowDrain
    }
}

/// TCP states in which a connection can hold data it cannot deliver.
fn resettable_state(state: u8) -> bool {
    // ESTABLISHED, FIN-WAIT-1, CLOSE-WAIT, LAST-ACK, CLOSING
    matches!(state, 1 | 4 | 8 | 9 | 11)
}

/// The socket object of a manual event.
pub fn manual_socket_fields(t: &Target, d: &TcpDiag) -> SocketFields {
    let queued = u64::from(d.send_q);
    SocketFields {
        cookie: d.cookie,
        netns: t.netns,
        family: if i32::from(d.family) == libc::AF_INET6 {
            event::Family::Inet6
        } else {
            event::Family::Inet
        },
        local: d.local,
        remote: d.remote,
        pid: None,
        comm: None,
        cgroup_id: None,
        cgroup: None,
        container_id: None,
        container_runtime: None,
        pod_uid: None,
        pod_namespace: None,
        pod_name: None,
        class: signature_class(d),
        queued_bytes: queued,
        unacked_bytes: if d.tcp_info_len > 0 {
            queued.saturating_sub(u64::from(d.notsent_bytes))
        } else {
            queued
        },
        snd_wnd: d.snd_wnd,
        retransmits: u32::from(d.retransmits),
        stalled_for_ms: u64::from(d.last_ack_recv_ms),
        rule: Some("manual".to_string()),
        action: event::Action::Reset,
        evidence: Evidence {
            recovered_episodes: 0,
            longest_gap_ms: 0,
            bytes_acked_last_window: 0,
            effective_threshold_ms: 0,
            threshold_reason: "manual reset by operator".to_string(),
        },
        recv_unread: u64::from(d.recv_q),
    }
}

fn where_searched(spaces: &[NetnsRef], explicit: bool, s: &Search) -> String {
    let mut w = if explicit {
        match spaces.first() {
            Some(ns) => format!("in network namespace {ns}"),
            None => "in the given network namespace".to_string(),
        }
    } else {
        format!("in any network namespace (searched {})", s.searched)
    };
    if !s.failed.is_empty() {
        let (ns, e) = &s.failed[0];
        let _ = write!(
            w,
            "; {} namespace(s) could not be searched, e.g. {ns}: {} {}",
            s.failed.len(),
            reset::errno_name(e.errno),
            e.meaning
        );
    }
    w
}

/// Carry out a validated request: find the socket, apply the guards, reset it. Pure in the
/// sense that it prints nothing; [`reset()`] prints the outcome.
pub fn execute(req: &ResetRequest) -> ResetOutcome {
    let (spaces, explicit) = match &req.netns {
        None => (reset::all_netns(), false),
        Some(NetnsArg::File(ns)) => (vec![ns.clone()], true),
        Some(NetnsArg::Inode(ino)) => match reset::netns_by_inode(*ino) {
            Ok(ns) => (vec![ns], true),
            Err(e) => {
                return ResetOutcome::refused(vec![format!(
                    "error: no TCP socket {}: {}",
                    req.describe(),
                    e.meaning
                )])
            }
        },
    };
    let search = match (req.tuple, req.cookie) {
        (Some((l, r)), _) => reset::find_sockets_in(&spaces, false, |d| {
            reset::same_endpoint(d.local, l) && reset::same_endpoint(d.remote, r)
        }),
        (None, Some(c)) => reset::find_sockets_in(&spaces, true, |d| d.cookie == c),
        (None, None) => {
            return ResetOutcome {
                events: Vec::new(),
                notes: vec!["error: name the socket with --cookie or --local/--remote".into()],
                code: EXIT_USAGE,
            }
        }
    };
    let mut found: Vec<&(Target, TcpDiag)> = search.found.iter().collect();
    if let (Some(c), Some(_)) = (req.cookie, req.tuple) {
        let others: Vec<u64> = found
            .iter()
            .map(|(t, _)| t.cookie)
            .filter(|x| *x != c)
            .collect();
        found.retain(|(t, _)| t.cookie == c);
        if found.is_empty() && !others.is_empty() {
            return ResetOutcome::refused(vec![format!(
                "error: no TCP socket {} {}: that 4-tuple now belongs to cookie {} (a newer \
                 connection); nothing was reset. Check the new connection before acting on it",
                req.describe(),
                where_searched(&spaces, explicit, &search),
                others
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )]);
        }
    }
    let (target, diag) = match found.as_slice() {
        [] => {
            let hint = if search.searched == 0 && !search.failed.is_empty() {
                " Run as root to search other namespaces."
            } else if req.tuple.is_some() {
                " Check the addresses with `ss -tn` (local first), or pass --cookie from the \
                 tcpstall event."
            } else {
                " The connection is closed, or the cookie is mistyped (tcpstall events print \
                 it in decimal, `ss -e` as sk:HEX)."
            };
            return ResetOutcome::refused(vec![format!(
                "error: no TCP socket {} {}.{hint}",
                req.describe(),
                where_searched(&spaces, explicit, &search)
            )]);
        }
        [one] => (one.0.clone(), one.1.clone()),
        many => {
            let mut msg = format!(
                "error: {} sockets match {}; nothing was reset. Add --cookie or --netns to \
                 pick one:",
                many.len(),
                req.describe()
            );
            for (t, d) in many {
                let _ = write!(
                    msg,
                    "\n  --cookie {} --netns {}  ({} {} -> {}, send queue {} bytes)",
                    t.cookie,
                    t.netns,
                    d.state_name(),
                    d.local,
                    d.remote,
                    d.send_q
                );
            }
            return ResetOutcome::refused(vec![msg]);
        }
    };
    let ns = spaces
        .iter()
        .find(|n| n.ino == target.netns)
        .cloned()
        .expect("a found socket's namespace was searched");
    guard_and_reset(req, &ns, target, diag)
}

fn skipped(t: &Target, d: &TcpDiag, guard: SkipGuard, detail: String, code: u8) -> ResetOutcome {
    ResetOutcome {
        notes: vec![format!(
            "{}: {} -> {} (cookie {}, netns {}) not reset: {detail}",
            if code == EXIT_OK {
                "dry run"
            } else {
                "refused"
            },
            d.local,
            d.remote,
            d.cookie,
            t.netns
        )],
        events: vec![Event::ResetSkipped {
            socket: manual_socket_fields(t, d),
            guard,
            detail,
        }],
        code,
    }
}

/// Why a found socket must not be reset (guard and detail), if it must not.
fn not_wedged(d: &TcpDiag) -> Option<String> {
    if !resettable_state(d.state) {
        return Some(format!(
            "the socket is in state {}, not a connection with data queued; tcpstall only \
             resets sockets with data queued (use `ss -K` for anything else)",
            d.state_name()
        ));
    }
    if !has_queued(d) {
        return Some(format!(
            "nothing is queued to send (send queue {} bytes): the connection is idle, not \
             wedged; tcpstall only resets sockets with data queued (use `ss -K` for anything \
             else)",
            d.send_q
        ));
    }
    None
}

/// What the guard chain asks the kernel for `tcpstall reset`.
struct AskKernel<'a> {
    destroyer: &'a mut Destroyer,
    /// The destroyer is attached to the socket's namespace (no lookup there otherwise).
    attached: bool,
    target: &'a Target,
}

impl guards::Ask for AskKernel<'_> {
    fn local_listener(&mut self) -> Option<bool> {
        if self.attached {
            crate::agent::local_listener(self.destroyer, self.target)
        } else {
            None
        }
    }
    fn orphans_safe(&mut self) -> Result<(), String> {
        // Safe to destroy only where the start-up self-test of the agent would say so; the
        // same test, run now.
        let orphan = crate::reset::orphan_probe();
        if orphan.safe {
            Ok(())
        } else {
            Err(orphan.detail)
        }
    }
}

fn guard_and_reset(req: &ResetRequest, ns: &NetnsRef, target: Target, d: TcpDiag) -> ResetOutcome {
    let mut destroyer = Destroyer::new();
    let attached = destroyer.attach_netns(ns);
    let g = guards::Guards {
        protect_ports: &req.policy.guards.protect_ports,
        // Found out by the destroy itself (`reset_failed`).
        reset_works: true,
        hold: false,
        after_hold: false,
        dry_run: req.dry_run,
    };
    let subject = guards::Subject {
        local_port: d.local.port(),
        remote_port: d.remote.port(),
        not_wedged: not_wedged(&d),
        // An orphan: its application closed it.
        orphan: d.inode == 0,
    };
    let mut ask = AskKernel {
        destroyer: &mut destroyer,
        attached: attached.is_ok(),
        target: &target,
    };
    if let Some(skip) = g.check(&subject, &mut ask) {
        let (guard, detail, code) = match skip {
            guards::Skip::ProtectedPort(why) => {
                let source = match &req.policy.source {
                    Some(p) => format!("[guards] protect_ports of {}", p.display()),
                    None => "the default guards (protect_ports = [22]; pass --policy to use yours)"
                        .to_string(),
                };
                (
                    SkipGuard::ProtectedPort,
                    format!("{why}, protected by {source}; tcpstall never resets it"),
                    EXIT_FAILED,
                )
            }
            guards::Skip::OrphanUnsafe(detail) => (
                SkipGuard::OrphanUnsafe,
                format!(
                    "the application already closed this socket (an orphan the kernel \
                     finishes on its own), and on this kernel destroying an orphan is not safe: \
                     {detail}"
                ),
                EXIT_FAILED,
            ),
            guards::Skip::DryRun => (
                SkipGuard::DryRun,
                format!(
                    "--dry-run: would have reset it ({} bytes queued, class {})",
                    d.send_q,
                    signature_class(&d)
                ),
                EXIT_OK,
            ),
            other => {
                let (guard, detail) = other.into_parts();
                (guard, detail, EXIT_FAILED)
            }
        };
        return skipped(&target, &d, guard, detail, code);
    }
    let failed = |d: &TcpDiag, e: ResetError| ResetOutcome {
        notes: vec![format!(
            "error: resetting {} -> {} (cookie {}, netns {}) failed: {e}",
            d.local, d.remote, d.cookie, target.netns
        )],
        events: vec![Event::ResetFailed {
            socket: manual_socket_fields(&target, d),
            errno: e.errno,
            error: reset::errno_name(e.errno).to_string(),
            meaning: e.meaning.clone(),
            retry_in_ms: None,
        }],
        code: EXIT_FAILED,
    };
    if let Err(e) = attached {
        return failed(&d, e);
    }
    // Re-verify right before acting: still there (same cookie and 4-tuple), still queued.
    let fresh = match destroyer.lookup(&target) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return skipped(
                &target,
                &d,
                SkipGuard::NotStalledAnymore,
                "the socket closed before the reset; nothing to do".to_string(),
                EXIT_FAILED,
            )
        }
        Err(e) => return failed(&d, e),
    };
    if let Some(why) = not_wedged(&fresh) {
        return skipped(
            &target,
            &fresh,
            SkipGuard::NotStalledAnymore,
            format!("it drained before the reset: {why}"),
            EXIT_FAILED,
        );
    }
    // The budgets: a single reset by hand meets a fresh window, so only
    // `max_resets_per_minute = 0` refuses.
    let net = guards::network_of(fresh.remote.ip());
    if let Err(refusal) = Budgets::default().take(
        &req.policy.guards.budgets(),
        "manual",
        net,
        1,
        Instant::now(),
    ) {
        let (guard, detail) = match refusal {
            Refusal::Disabled => (
                SkipGuard::RateLimit,
                "max_resets_per_minute = 0 in the policy disables resets".to_string(),
            ),
            Refusal::Rule { capacity } => (
                SkipGuard::RateLimit,
                format!("the budget of {capacity} resets per minute is used up"),
            ),
            Refusal::Network { net, capacity } => (
                SkipGuard::NetworkLimit,
                format!("remote network {net} used its share ({capacity} resets per minute)"),
            ),
        };
        return skipped(&target, &fresh, guard, detail, EXIT_FAILED);
    }
    let t0 = Instant::now();
    match destroyer.destroy(&target) {
        Ok(()) => ResetOutcome {
            notes: vec![format!(
                "reset {} -> {} (cookie {}, netns {}): {} queued bytes dropped; the \
                 application sees ECONNABORTED, the peer a RST",
                fresh.local, fresh.remote, fresh.cookie, target.netns, fresh.send_q
            )],
            events: vec![Event::SocketReset {
                socket: manual_socket_fields(&target, &fresh),
                bytes_still_queued: u64::from(fresh.send_q),
                reset_latency_us: t0.elapsed().as_micros() as u64,
            }],
            code: EXIT_OK,
        },
        Err(e) => failed(&fresh, e),
    }
}

/// `tcpstall reset ...`; see the module documentation.
pub fn reset(args: ResetArgs) -> ExitCode {
    let req = match ResetRequest::from_args(&args) {
        Ok(r) => r,
        Err(UsageError(msg)) => {
            eprintln!("{msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let out = execute(&req);
    let mut w = EventWriter::stdout();
    for ev in &out.events {
        if let Err(e) = w.write(ev) {
            eprintln!("error: {e}");
        }
    }
    for n in &out.notes {
        eprintln!("{n}");
    }
    ExitCode::from(out.code)
}

#[cfg(test)]
mod tests;
