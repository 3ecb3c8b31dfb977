//! Which attach point each kernel hook gets on the running kernel, and why.
//!
//! Every hook has one eBPF logic function and several thin entry points (see
//! `monitor-ebpf`): a BTF tracepoint where the kernel has it, else fentry on the kernel
//! function the tracepoint sits in, else a kprobe on that function. At start-up [`select`]
//! walks each hook's candidates in order of preference, checks each one's prototype against
//! the kernel's BTF, and keeps the first that loads and attaches. A hook with no working
//! candidate stops the agent when detection cannot work without it, and is otherwise
//! reported in `agent_started.degraded`.
//!
//! kprobes cannot read socket cookies, and every program must key sockets the same way: when
//! a kprobe is chosen for an object keyed by cookie, the object is reloaded with address keys
//! and the walk done again ([`Kernel::rekey_by_addr`]).
//!
//! The walk is pure logic over a [`Kernel`], so it is unit-tested without a kernel; the real
//! [`Kernel`] (loading into the running kernel) lives in `probes.rs`.

use crate::btf::{Shape, Site};
use crate::event::HookReport;
use anyhow::{bail, Result};

/// How a candidate attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A BTF tracepoint (`tp_btf`): the tracepoint's arguments, no function-entry overhead.
    TpBtf,
    /// fentry on a kernel function (BPF trampoline).
    FEntry,
    /// kprobe on a kernel function: where fentry is unavailable (arm64 before 6.0, kernels
    /// without direct-call trampolines). Reads go through `bpf_probe_read_kernel`, and
    /// sockets are keyed by address.
    KProbe,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::TpBtf => "tp_btf",
            Kind::FEntry => "fentry",
            Kind::KProbe => "kprobe",
        }
    }
}

/// Environment variable that makes [`select`] skip the candidates better than the named kind
/// (`fentry` or `kprobe`) in every hook that has one of that kind: a testing knob, to run the
/// fallbacks on a kernel that offers better.
pub const ATTACH_ENV: &str = "TCPSTALL_ATTACH";

/// The kind [`ATTACH_ENV`] asks for (`None`: unset or empty, best available).
pub fn forced_kind(value: Option<&str>) -> Result<Option<Kind>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("fentry") => Ok(Some(Kind::FEntry)),
        Some("kprobe") => Ok(Some(Kind::KProbe)),
        Some(other) => bail!("{ATTACH_ENV}={other:?}: expected fentry or kprobe (or unset)"),
    }
}

/// One way to attach a hook: the program in the eBPF object and where it goes.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub kind: Kind,
    /// Tracepoint or kernel function name.
    pub target: &'static str,
    /// Program name in the eBPF object.
    pub prog: &'static str,
    /// What the program reads of the arguments.
    pub shape: Shape,
}

impl Candidate {
    pub fn site(&self) -> Site<'static> {
        match self.kind {
            Kind::TpBtf => Site::Tracepoint(self.target),
            Kind::FEntry | Kind::KProbe => Site::Function(self.target),
        }
    }

    /// `tp_btf/tcp_probe`, `fentry/tcp_sendmsg_locked`, `kprobe/tcp_sendmsg_locked`.
    pub fn attach_name(&self) -> String {
        format!("{}/{}", self.kind.prefix(), self.target)
    }

    fn describe(&self) -> String {
        match self.kind {
            Kind::TpBtf => format!("tracepoint {}", self.target),
            Kind::FEntry => format!("fentry {}", self.target),
            Kind::KProbe => format!("kprobe {}", self.target),
        }
    }
}

/// When a hook is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Detection cannot work without it: no candidate → the agent does not start.
    Required,
    /// Wanted; without it detection loses what [`Hook::lost`] says.
    Optional,
    /// Only when the named hook did not get a tracepoint (it then needs this companion).
    UnlessTracepoint(&'static str),
    /// Only when the kernel has this function at all (else the path it covers does not exist).
    IfFunction(&'static str),
    /// Not attached: a per-call hook while that kind is off ([`hooks`]).
    Off,
}

/// Why a per-write hook is not attached by default (`agent_started.hooks[].why`).
pub const PER_WRITE_OFF: &str = "off: a per-write hook (it runs on every write to every TCP \
    socket, 6-9 % of the CPU of a small-write sender); sockets are tracked from ACKs, \
    retransmits and blocked writes, and a writer not seen writing is found in /proc. \
    --per-write-hooks turns it on";

/// Why the read hook is not attached by default (`agent_started.hooks[].why`).
pub const READ_OFF: &str = "off: a per-read hook (it runs on every read of every TCP socket);     a tracked socket's reads are seen at its next segment, and for one whose receive side     looks full the agent asks sock_diag once per tick. --read-hook turns it on";

/// Why the timer hook is not attached by default (`agent_started.hooks[].why`).
pub const TIMER_OFF: &str = "off: the trouble-only design's hook (--trouble-hooks), which \
    replaces the ACK hook";

/// Why a hook is not attached with `--trouble-hooks` (`agent_started.hooks[].why`).
pub const TROUBLE_OFF: &str = "off: --trouble-hooks (sockets are tracked from retransmits and \
    the TCP write timer's expiries; progress is read through sock_diag at each tick)";

/// Hooks that run on every call of their kind, not only on trouble: off unless asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerCall {
    /// Fires on trouble or on the paths of one (ACKs of data queued, retransmits, blocked
    /// writes, state changes): always wanted.
    No,
    /// Every write (`--per-write-hooks`).
    Write,
    /// Every read (`--read-hook`).
    Read,
}

/// Which optional hooks the agent was asked for (`tcpstall run` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    /// `--per-write-hooks`.
    pub per_write: bool,
    /// `--read-hook`.
    pub read_hook: bool,
    /// `--trouble-hooks`.
    pub trouble: bool,
}

impl Choice {
    /// The hooks to attach for this choice ([`hooks`]).
    pub fn hooks(&self) -> Vec<Hook> {
        hooks(self.per_write, self.read_hook, self.trouble)
    }
}

/// The hooks to attach: [`HOOKS`], with the per-call ones ([`Hook::per_call`]) off unless
/// `per_write` (writes) or `read_hook` (reads), and the timer hook off. With `trouble`
/// (`--trouble-hooks`) only the hooks that fire on trouble: `state`, `retransmit` and the
/// required `timer`; every other hook is off (the caller refuses `per_write` and
/// `read_hook` with it).
pub fn hooks(per_write: bool, read_hook: bool, trouble: bool) -> Vec<Hook> {
    HOOKS
        .iter()
        .map(|h| {
            let (need, why) = match (trouble, h.name, h.per_call) {
                (true, "timer", _) => (Need::Required, h.not_needed),
                (true, "state" | "retransmit", _) => (h.need, h.not_needed),
                (true, ..) => (Need::Off, TROUBLE_OFF),
                (false, "timer", _) => (Need::Off, TIMER_OFF),
                (false, _, PerCall::Write) if !per_write => (Need::Off, PER_WRITE_OFF),
                (false, _, PerCall::Read) if !read_hook => (Need::Off, READ_OFF),
                _ => (h.need, h.not_needed),
            };
            Hook {
                need,
                not_needed: why,
                ..*h
            }
        })
        .collect()
}

/// One kernel hook.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Name in `agent_started.hooks`.
    pub name: &'static str,
    pub need: Need,
    /// Candidates, best first.
    pub candidates: &'static [Candidate],
    /// What detection loses without this hook (for `agent_started.degraded`).
    pub lost: &'static str,
    /// Why the hook is not needed when its [`Need`] says so.
    pub not_needed: &'static str,
    /// It fires on every write or read (not only on trouble): attached only when asked for
    /// ([`hooks`]).
    pub per_call: PerCall,
}

const SOCK: &str = "struct sock *";
const SKB: &str = "struct sk_buff *";

const ARG0_SOCK: Shape = Shape {
    min_args: 1,
    max_args: 16,
    args: &[(0, SOCK)],
};
const SOCK_SKB: Shape = Shape {
    min_args: 2,
    max_args: 16,
    args: &[(0, SOCK), (1, SKB)],
};

/// Every hook, in attach order: the required ones first (a kernel that cannot run the agent
/// fails before anything else is attached; `state` before anything can track a socket, so
/// every entry has its remover), and `send` before its companion `send_wait`.
pub const HOOKS: &[Hook] = &[
    Hook {
        name: "state",
        need: Need::Required,
        candidates: &[Candidate {
            kind: Kind::TpBtf,
            target: "inet_sock_set_state",
            prog: "tcpstall_state",
            shape: Shape {
                min_args: 3,
                max_args: 3,
                args: &[(0, SOCK), (1, "int"), (2, "int")],
            },
        }],
        lost: "",
        not_needed: "",
        per_call: PerCall::No,
    },
    Hook {
        name: "ack",
        need: Need::Required,
        candidates: &[
            Candidate {
                kind: Kind::TpBtf,
                target: "tcp_probe",
                prog: "tcpstall_ack_tp",
                shape: Shape {
                    min_args: 2,
                    max_args: 2,
                    args: &[(0, SOCK), (1, SKB)],
                },
            },
            Candidate {
                kind: Kind::FEntry,
                target: "tcp_rcv_established",
                prog: "tcpstall_ack_fentry",
                shape: SOCK_SKB,
            },
            Candidate {
                kind: Kind::KProbe,
                target: "tcp_rcv_established",
                prog: "tcpstall_ack_kprobe",
                shape: SOCK_SKB,
            },
        ],
        lost: "",
        not_needed: "",
        per_call: PerCall::No,
    },
    Hook {
        name: "send",
        need: Need::Optional,
        candidates: &[
            Candidate {
                kind: Kind::TpBtf,
                target: "tcp_sendmsg_locked",
                prog: "tcpstall_send_tp",
                shape: ARG0_SOCK,
            },
            Candidate {
                kind: Kind::FEntry,
                target: "tcp_sendmsg_locked",
                prog: "tcpstall_send_fentry",
                shape: ARG0_SOCK,
            },
            Candidate {
                kind: Kind::KProbe,
                target: "tcp_sendmsg_locked",
                prog: "tcpstall_send_kprobe",
                shape: ARG0_SOCK,
            },
        ],
        lost: "the writer seen as it writes: a writer is found in /proc instead, once its \
               socket stays tracked for a tick",
        not_needed: "",
        per_call: PerCall::Write,
    },
    Hook {
        name: "send_wait",
        need: Need::UnlessTracepoint("send"),
        candidates: &[
            Candidate {
                kind: Kind::FEntry,
                target: "sk_stream_wait_memory",
                prog: "tcpstall_send_wait",
                shape: ARG0_SOCK,
            },
            Candidate {
                kind: Kind::KProbe,
                target: "sk_stream_wait_memory",
                prog: "tcpstall_send_wait_kprobe",
                shape: ARG0_SOCK,
            },
        ],
        // Without it a blocked writer is found in /proc (identity/holders.rs): nothing lost.
        lost: "",
        not_needed: "not needed: the tcp_sendmsg_locked tracepoint also fires inside a write \
                     that blocks",
        per_call: PerCall::No,
    },
    Hook {
        name: "send_pages",
        need: Need::IfFunction("do_tcp_sendpages"),
        candidates: &[
            Candidate {
                kind: Kind::FEntry,
                target: "do_tcp_sendpages",
                prog: "tcpstall_send_pages",
                shape: ARG0_SOCK,
            },
            Candidate {
                kind: Kind::KProbe,
                target: "do_tcp_sendpages",
                prog: "tcpstall_send_pages_kprobe",
                shape: ARG0_SOCK,
            },
        ],
        // Only with per-write hooks on; without it those writers are found in /proc.
        lost: "",
        not_needed: "not needed: no do_tcp_sendpages on this kernel (since 6.5 sendfile, \
                     splice and kTLS write through tcp_sendmsg_locked)",
        per_call: PerCall::Write,
    },
    Hook {
        name: "retransmit",
        need: Need::Optional,
        candidates: &[
            Candidate {
                kind: Kind::TpBtf,
                target: "tcp_retransmit_skb",
                prog: "tcpstall_retransmit_tp",
                // Linux 7.x added a third argument (`int err`).
                shape: Shape {
                    min_args: 2,
                    max_args: 3,
                    args: &[(0, SOCK), (1, SKB)],
                },
            },
            Candidate {
                kind: Kind::FEntry,
                target: "tcp_retransmit_skb",
                prog: "tcpstall_retransmit_fentry",
                shape: SOCK_SKB,
            },
            Candidate {
                kind: Kind::KProbe,
                target: "tcp_retransmit_skb",
                prog: "tcpstall_retransmit_kprobe",
                shape: SOCK_SKB,
            },
        ],
        lost: "retransmit counts (no_ack evidence) and tracking of dead peers whose writer \
               stopped writing",
        not_needed: "",
        per_call: PerCall::No,
    },
    Hook {
        name: "read",
        need: Need::Optional,
        candidates: &[
            Candidate {
                kind: Kind::TpBtf,
                target: "tcp_rcv_space_adjust",
                prog: "tcpstall_read_tp",
                shape: Shape {
                    min_args: 1,
                    max_args: 1,
                    args: &[(0, SOCK)],
                },
            },
            Candidate {
                kind: Kind::FEntry,
                target: "tcp_rcv_space_adjust",
                prog: "tcpstall_read_fentry",
                shape: ARG0_SOCK,
            },
            Candidate {
                kind: Kind::KProbe,
                target: "tcp_rcv_space_adjust",
                prog: "tcpstall_read_kprobe",
                shape: ARG0_SOCK,
            },
        ],
        lost: "read-side progress from the kernel: reads are seen at the socket's next segment \
               and, for a receive side that looks full, by a sock_diag lookup per tick",
        not_needed: "",
        per_call: PerCall::Read,
    },
    Hook {
        name: "timer",
        // Off unless `--trouble-hooks` ([`hooks`]), which makes it required.
        need: Need::Off,
        candidates: &[Candidate {
            kind: Kind::TpBtf,
            target: "timer_expire_entry",
            prog: "tcpstall_timer",
            shape: Shape {
                min_args: 1,
                max_args: 2,
                args: &[(0, "struct timer_list *")],
            },
        }],
        lost: "",
        not_needed: TIMER_OFF,
        per_call: PerCall::No,
    },
];

/// Every hook's name, in the order `agent_started.hooks` documents them.
pub use monitor_common::HOOK_NAMES;

/// The running kernel, as [`select`] sees it.
pub trait Kernel {
    /// Release string for messages (`uname -r`).
    fn release(&self) -> &str;
    /// Parameter types of a tracepoint or function; `None` when the kernel lacks it.
    fn params(&self, site: Site) -> Result<Option<Vec<String>>>;
    /// Load and attach `c`'s program. The error says why the kernel refused.
    fn attach(&mut self, c: &Candidate) -> Result<()>;
    /// The loaded object keys sockets by address ([`monitor_common::mode::KEY_BY_ADDR`]).
    fn key_by_addr(&self) -> bool;
    /// Drop the loaded object (detaching every program) and load it again with address keys.
    fn rekey_by_addr(&mut self) -> Result<()>;
}

/// What [`select`] decided.
#[derive(Debug, Default)]
pub struct Selection {
    pub reports: Vec<HookReport>,
    pub degraded: Vec<String>,
    /// Program names attached.
    pub attached: Vec<&'static str>,
    /// Kinds of the attached programs, in the order of `attached`.
    pub kinds: Vec<Kind>,
}

impl Selection {
    /// A kprobe is attached: the object must key sockets by address.
    pub fn needs_addr_keys(&self) -> bool {
        self.kinds.contains(&Kind::KProbe)
    }
}

/// Attach every hook in `hooks` as well as `kernel` allows; with `only` (the testing knob
/// [`ATTACH_ENV`]), skip the candidates better than that kind. When a kprobe is chosen for an
/// object keyed by cookie, the object is reloaded with address keys and the walk repeated.
pub fn select(kernel: &mut dyn Kernel, hooks: &[Hook], only: Option<Kind>) -> Result<Selection> {
    let sel = walk(kernel, hooks, only)?;
    if !sel.needs_addr_keys() || kernel.key_by_addr() {
        return Ok(sel);
    }
    let kprobes: Vec<&str> = sel
        .kinds
        .iter()
        .zip(&sel.attached)
        .filter(|(k, _)| **k == Kind::KProbe)
        .map(|(_, p)| *p)
        .collect();
    log::info!(
        "kprobes attached ({}) cannot read socket cookies: reloading the eBPF programs with \
         sockets keyed by address",
        kprobes.join(", ")
    );
    drop(sel);
    kernel.rekey_by_addr()?;
    walk(kernel, hooks, only)
}

fn walk(kernel: &mut dyn Kernel, hooks: &[Hook], only: Option<Kind>) -> Result<Selection> {
    let mut sel = Selection::default();
    for hook in hooks {
        let needed = match hook.need {
            Need::Required | Need::Optional => true,
            Need::UnlessTracepoint(other) => !sel.reports.iter().any(|r| {
                r.hook == other
                    && r.attach
                        .as_deref()
                        .is_some_and(|a| a.starts_with(Kind::TpBtf.prefix()))
            }),
            Need::IfFunction(f) => kernel.params(Site::Function(f))?.is_some(),
            Need::Off => false,
        };
        if !needed {
            // An off hook's reason is in `not_needed` too ([`hooks`]).
            let why = hook.not_needed;
            sel.reports.push(HookReport {
                hook: hook.name.into(),
                attach: None,
                why: why.into(),
            });
            continue;
        }
        let mut reasons: Vec<String> = Vec::new();
        let mut chosen = None;
        // The testing knob: candidates before the first of the asked kind are skipped.
        let (first, forced) =
            match only.and_then(|k| Some((hook.candidates.iter().position(|c| c.kind == k)?, k))) {
                Some((i, k)) => (i, k.prefix()),
                None => (0, ""),
            };
        for (i, c) in hook.candidates.iter().enumerate() {
            if i < first {
                reasons.push(format!("{} skipped: {ATTACH_ENV}={forced}", c.describe()));
                continue;
            }
            let params = match kernel.params(c.site())? {
                None => {
                    reasons.push(format!("{} absent", c.site()));
                    continue;
                }
                Some(p) => p,
            };
            if let Err(e) =
                crate::btf::check_params(hook.name, c.site(), kernel.release(), &params, &c.shape)
            {
                reasons.push(format!("{e:#}"));
                continue;
            }
            match kernel.attach(c) {
                Ok(()) => {
                    chosen = Some(c);
                    break;
                }
                Err(e) => reasons.push(format!("{} refused: {e:#}", c.describe())),
            }
        }
        match chosen {
            Some(c) => {
                sel.attached.push(c.prog);
                sel.kinds.push(c.kind);
                let why = if reasons.is_empty() {
                    c.describe()
                } else {
                    format!("{}: {}", reasons.join("; "), c.describe())
                };
                sel.reports.push(HookReport {
                    hook: hook.name.into(),
                    attach: Some(c.attach_name()),
                    why,
                });
            }
            None if hook.need == Need::Required => bail!(
                "kernel {} offers no usable attach point for the {} hook, which detection \
                 cannot work without: {}. tcpstall needs Linux 5.10 or later with BTF \
                 (CONFIG_DEBUG_INFO_BTF=y) and BPF tracing programs",
                kernel.release(),
                hook.name,
                reasons.join("; ")
            ),
            // A hook whose absence loses nothing (its job is done another way there).
            None if hook.lost.is_empty() => {
                sel.reports.push(HookReport {
                    hook: hook.name.into(),
                    attach: None,
                    why: reasons.join("; "),
                });
            }
            None => {
                sel.degraded.push(format!(
                    "{} hook not attached ({}): {}",
                    hook.name,
                    reasons.join("; "),
                    hook.lost
                ));
                sel.reports.push(HookReport {
                    hook: hook.name.into(),
                    attach: None,
                    why: reasons.join("; "),
                });
            }
        }
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names_are_the_hooks() {
        let mut a: Vec<&str> = HOOKS.iter().map(|h| h.name).collect();
        let mut b = HOOK_NAMES.to_vec();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }
    use std::collections::HashMap;

    /// A kernel described by which sites exist (with their parameters) and which attach
    /// kinds it refuses.
    struct Fake {
        sites: HashMap<String, Vec<String>>,
        refuse: Vec<Kind>,
        attached: Vec<String>,
        /// The object keys sockets by address (5.10: no cookies in tracing programs).
        by_addr: bool,
        /// Times the object was reloaded with address keys.
        rekeys: u32,
    }

    fn p(types: &[&str]) -> Vec<String> {
        types.iter().map(|s| s.to_string()).collect()
    }

    fn key(site: Site) -> String {
        match site {
            Site::Tracepoint(n) => format!("tp:{n}"),
            Site::Function(n) => format!("fn:{n}"),
        }
    }

    impl Fake {
        /// Debian 11/12 (5.10, 6.1): every tracepoint but tcp_sendmsg_locked; fentry works;
        /// do_tcp_sendpages exists.
        fn old() -> Fake {
            let mut sites = HashMap::new();
            for (k, v) in [
                ("tp:inet_sock_set_state", p(&[SOCK, "int", "int"])),
                ("tp:tcp_probe", p(&[SOCK, SKB])),
                ("tp:tcp_retransmit_skb", p(&[SOCK, SKB])),
                ("tp:tcp_rcv_space_adjust", p(&[SOCK])),
                (
                    "fn:tcp_sendmsg_locked",
                    p(&[SOCK, "struct msghdr *", "size_t"]),
                ),
                ("fn:sk_stream_wait_memory", p(&[SOCK, "long int *"])),
                (
                    "fn:do_tcp_sendpages",
                    p(&[SOCK, "struct page *", "int", "size_t", "int"]),
                ),
                ("fn:tcp_rcv_established", p(&[SOCK, SKB])),
                ("fn:tcp_retransmit_skb", p(&[SOCK, SKB, "int"])),
                ("fn:tcp_rcv_space_adjust", p(&[SOCK])),
                (
                    "tp:timer_expire_entry",
                    p(&["struct timer_list *", "long unsigned int"]),
                ),
            ] {
                sites.insert(k.to_string(), v);
            }
            Fake {
                sites,
                refuse: vec![],
                attached: vec![],
                by_addr: false,
                rekeys: 0,
            }
        }

        /// This development VM (6.18): every tracepoint, fentry refused, no kprobes.
        fn host() -> Fake {
            let mut f = Fake::old();
            f.sites.remove("fn:do_tcp_sendpages");
            f.sites.insert(
                "tp:tcp_sendmsg_locked".into(),
                p(&[SOCK, "struct msghdr *", SKB, "int"]),
            );
            f.refuse.push(Kind::FEntry);
            f.refuse.push(Kind::KProbe);
            f
        }
    }

    impl Kernel for Fake {
        fn release(&self) -> &str {
            "6.1.0-test"
        }
        fn params(&self, site: Site) -> Result<Option<Vec<String>>> {
            Ok(self.sites.get(&key(site)).cloned())
        }
        fn attach(&mut self, c: &Candidate) -> Result<()> {
            if self.refuse.contains(&c.kind) {
                bail!("Operation not permitted (os error 1)");
            }
            self.attached.push(c.attach_name());
            Ok(())
        }
        fn key_by_addr(&self) -> bool {
            self.by_addr
        }
        fn rekey_by_addr(&mut self) -> Result<()> {
            assert!(!self.by_addr, "reloaded an object already keyed by address");
            self.by_addr = true;
            self.rekeys += 1;
            self.attached.clear();
            Ok(())
        }
    }

    fn attach_of(sel: &Selection, hook: &str) -> Option<String> {
        sel.reports
            .iter()
            .find(|r| r.hook == hook)
            .unwrap()
            .attach
            .clone()
    }

    fn why_of(sel: &Selection, hook: &str) -> String {
        sel.reports
            .iter()
            .find(|r| r.hook == hook)
            .unwrap()
            .why
            .clone()
    }

    #[test]
    fn trouble_hooks_attach_only_what_fires_on_trouble() {
        for mut k in [Fake::old(), Fake::host()] {
            let sel = select(&mut k, &hooks(false, false, true), None).unwrap();
            let on: Vec<&str> = sel
                .reports
                .iter()
                .filter(|r| r.attach.is_some())
                .map(|r| r.hook.as_str())
                .collect();
            assert_eq!(on, ["state", "retransmit", "timer"]);
            assert_eq!(
                attach_of(&sel, "timer").as_deref(),
                Some("tp_btf/timer_expire_entry")
            );
            for off in ["ack", "send", "send_wait", "send_pages", "read"] {
                assert_eq!(why_of(&sel, off), TROUBLE_OFF, "{off}");
            }
            assert!(sel.degraded.is_empty(), "{:?}", sel.degraded);
        }
        // Without it the timer hook is off, with its reason.
        let sel = select(&mut Fake::old(), &hooks(false, false, false), None).unwrap();
        assert_eq!(attach_of(&sel, "timer"), None);
        assert_eq!(why_of(&sel, "timer"), TIMER_OFF);
        assert_eq!(why_of(&sel, "read"), READ_OFF);
        assert_eq!(why_of(&sel, "send"), PER_WRITE_OFF);
        // A kernel without the timer tracepoint cannot run the trouble-only design.
        let mut k = Fake::old();
        k.sites.remove("tp:timer_expire_entry");
        let err = select(&mut k, &hooks(false, false, true), None).unwrap_err();
        assert!(format!("{err:#}").contains("timer hook"), "{err:#}");
    }

    #[test]
    fn old_kernel_falls_back_to_fentry_for_send() {
        let mut k = Fake::old();
        let sel = select(&mut k, &hooks(true, true, false), None).unwrap();
        assert_eq!(
            attach_of(&sel, "send").as_deref(),
            Some("fentry/tcp_sendmsg_locked")
        );
        assert_eq!(
            why_of(&sel, "send"),
            "tracepoint tcp_sendmsg_locked absent: fentry tcp_sendmsg_locked"
        );
        assert_eq!(
            attach_of(&sel, "send_wait").as_deref(),
            Some("fentry/sk_stream_wait_memory")
        );
        assert_eq!(
            attach_of(&sel, "send_pages").as_deref(),
            Some("fentry/do_tcp_sendpages")
        );
        for (hook, tp) in [
            ("ack", "tcp_probe"),
            ("retransmit", "tcp_retransmit_skb"),
            ("read", "tcp_rcv_space_adjust"),
            ("state", "inet_sock_set_state"),
        ] {
            assert_eq!(
                attach_of(&sel, hook),
                Some(format!("tp_btf/{tp}")),
                "{hook}"
            );
        }
        assert!(sel.degraded.is_empty(), "{:?}", sel.degraded);
        assert_eq!(sel.attached.len(), 7);
    }

    #[test]
    fn host_kernel_uses_tracepoints_and_skips_companions() {
        let mut k = Fake::host();
        let sel = select(&mut k, &hooks(true, true, false), None).unwrap();
        assert_eq!(
            attach_of(&sel, "send").as_deref(),
            Some("tp_btf/tcp_sendmsg_locked")
        );
        assert_eq!(attach_of(&sel, "send_wait"), None);
        assert!(why_of(&sel, "send_wait").starts_with("not needed"));
        assert_eq!(attach_of(&sel, "send_pages"), None);
        assert!(why_of(&sel, "send_pages").contains("6.5"));
        assert!(sel.degraded.is_empty(), "{:?}", sel.degraded);
        assert!(k.attached.iter().all(|a| a.starts_with("tp_btf/")));
    }

    #[test]
    fn per_call_hooks_are_off_by_default_and_blocked_writes_still_hooked() {
        // 5.10/6.1: no per-write or read hook; the blocked-write companion attaches (fentry).
        let mut k = Fake::old();
        let sel = select(&mut k, &hooks(false, false, false), None).unwrap();
        for hook in ["send", "send_pages"] {
            assert_eq!(attach_of(&sel, hook), None, "{hook}");
            assert_eq!(why_of(&sel, hook), PER_WRITE_OFF, "{hook}");
        }
        assert_eq!(attach_of(&sel, "read"), None);
        assert_eq!(why_of(&sel, "read"), READ_OFF);
        assert_eq!(
            attach_of(&sel, "send_wait").as_deref(),
            Some("fentry/sk_stream_wait_memory")
        );
        assert!(sel.degraded.is_empty(), "{:?}", sel.degraded);
        assert_eq!(sel.attached.len(), 4);
        assert!(!k.attached.iter().any(|a| a.contains("tcp_sendmsg_locked")));
        assert!(!k
            .attached
            .iter()
            .any(|a| a.contains("tcp_rcv_space_adjust")));
        // This VM: tracepoints only, so no blocked-write hook either, and that is no
        // degradation (writers are found in /proc).
        let mut k = Fake::host();
        let sel = select(&mut k, &hooks(false, false, false), None).unwrap();
        assert_eq!(attach_of(&sel, "send"), None);
        assert_eq!(attach_of(&sel, "send_wait"), None);
        assert_eq!(attach_of(&sel, "read"), None);
        assert!(why_of(&sel, "send_wait").contains("refused"));
        assert!(sel.degraded.is_empty(), "{:?}", sel.degraded);
        assert_eq!(k.attached.len(), 3, "{:?}", k.attached);
        // Turned on, each per-call hook is the tracepoint again, one without the other.
        let mut k = Fake::host();
        let sel = select(&mut k, &hooks(true, false, false), None).unwrap();
        assert_eq!(
            attach_of(&sel, "send").as_deref(),
            Some("tp_btf/tcp_sendmsg_locked")
        );
        assert_eq!(attach_of(&sel, "read"), None);
        let mut k = Fake::host();
        let sel = select(&mut k, &hooks(false, true, false), None).unwrap();
        assert_eq!(attach_of(&sel, "send"), None);
        assert_eq!(
            attach_of(&sel, "read").as_deref(),
            Some("tp_btf/tcp_rcv_space_adjust")
        );
    }

    #[test]
    fn a_missing_optional_hook_degrades_and_says_what_is_lost() {
        // No tracepoint, fentry refused and no kprobes: send has no attach point.
        let mut k = Fake::old();
        k.refuse.push(Kind::FEntry);
        k.refuse.push(Kind::KProbe);
        let sel = select(&mut k, &hooks(true, true, false), None).unwrap();
        assert_eq!(attach_of(&sel, "send"), None);
        let why = why_of(&sel, "send");
        assert!(
            why.contains("tracepoint tcp_sendmsg_locked absent")
                && why.contains("fentry tcp_sendmsg_locked refused: Operation not permitted"),
            "{why}"
        );
        assert!(
            sel.degraded
                .iter()
                .any(|d| d.starts_with("send hook not attached") && d.contains("/proc")),
            "{:?}",
            sel.degraded
        );
        // The other hooks still attach.
        assert_eq!(attach_of(&sel, "ack").as_deref(), Some("tp_btf/tcp_probe"));
    }

    #[test]
    fn a_missing_required_hook_is_an_error_naming_it() {
        let mut k = Fake::old();
        k.sites.remove("tp:tcp_probe");
        k.refuse.push(Kind::FEntry);
        k.refuse.push(Kind::KProbe);
        let err = select(&mut k, &hooks(true, true, false), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ack hook"), "{err}");
        assert!(err.contains("tracepoint tcp_probe absent"), "{err}");
        assert!(err.contains("fentry tcp_rcv_established refused"), "{err}");
        assert!(err.contains("kprobe tcp_rcv_established refused"), "{err}");
        assert!(err.contains("6.1.0-test"), "{err}");
    }

    #[test]
    fn a_wrong_prototype_is_never_attached() {
        let mut k = Fake::old();
        // A kernel whose tcp_probe tracepoint passes something else as its second argument.
        k.sites.insert("tp:tcp_probe".into(), p(&[SOCK, "int"]));
        let sel = select(&mut k, &hooks(true, true, false), None).unwrap();
        assert_eq!(
            attach_of(&sel, "ack").as_deref(),
            Some("fentry/tcp_rcv_established")
        );
        let why = why_of(&sel, "ack");
        assert!(
            why.contains("tcp_probe") && why.contains("struct sk_buff *"),
            "{why}"
        );
        assert!(!k.attached.contains(&"tp_btf/tcp_probe".to_string()));
    }

    #[test]
    fn retransmit_accepts_the_third_argument_of_7x() {
        let mut k = Fake::old();
        k.sites
            .insert("tp:tcp_retransmit_skb".into(), p(&[SOCK, SKB, "int"]));
        let sel = select(&mut k, &hooks(true, true, false), None).unwrap();
        assert_eq!(
            attach_of(&sel, "retransmit").as_deref(),
            Some("tp_btf/tcp_retransmit_skb")
        );
    }

    #[test]
    fn without_fentry_kprobes_are_used_and_keys_become_addresses() {
        // arm64 before 6.0: tracepoints, no fentry, kprobes.
        let mut k = Fake::old();
        k.refuse.push(Kind::FEntry);
        let sel = select(&mut k, &hooks(true, true, false), None).unwrap();
        for (hook, f) in [
            ("send", "tcp_sendmsg_locked"),
            ("send_wait", "sk_stream_wait_memory"),
            ("send_pages", "do_tcp_sendpages"),
        ] {
            assert_eq!(attach_of(&sel, hook), Some(format!("kprobe/{f}")), "{hook}");
        }
        assert_eq!(
            why_of(&sel, "send"),
            "tracepoint tcp_sendmsg_locked absent; fentry tcp_sendmsg_locked refused: \
             Operation not permitted (os error 1): kprobe tcp_sendmsg_locked"
        );
        // Hooks with a tracepoint keep it.
        assert_eq!(attach_of(&sel, "ack").as_deref(), Some("tp_btf/tcp_probe"));
        assert!(sel.needs_addr_keys());
        // The cookie-keyed object was reloaded once, and everything attached again to it.
        assert!(k.by_addr);
        assert_eq!(k.rekeys, 1);
        assert_eq!(k.attached.len(), sel.attached.len());
        assert_eq!(sel.attached.len(), 7);
        assert!(sel.degraded.is_empty(), "{:?}", sel.degraded);
    }

    #[test]
    fn an_address_keyed_object_is_not_reloaded_for_kprobes() {
        // 5.10 without fentry: the object is keyed by address from the start.
        let mut k = Fake::old();
        k.refuse.push(Kind::FEntry);
        k.by_addr = true;
        let sel = select(&mut k, &hooks(true, true, false), None).unwrap();
        assert_eq!(
            attach_of(&sel, "send").as_deref(),
            Some("kprobe/tcp_sendmsg_locked")
        );
        assert_eq!(k.rekeys, 0);
    }

    #[test]
    fn without_kprobes_cookie_keys_stay() {
        let mut k = Fake::old();
        let sel = select(&mut k, &hooks(true, true, false), None).unwrap();
        assert!(!sel.needs_addr_keys());
        assert_eq!(k.rekeys, 0);
        assert!(!k.by_addr);
        assert!(!k.attached.iter().any(|a| a.starts_with("kprobe/")));
    }

    #[test]
    fn attach_env_kprobe_skips_better_candidates() {
        let mut k = Fake::old();
        let sel = select(&mut k, HOOKS, Some(Kind::KProbe)).unwrap();
        for (hook, f) in [
            ("send", "tcp_sendmsg_locked"),
            ("send_wait", "sk_stream_wait_memory"),
            ("send_pages", "do_tcp_sendpages"),
            ("ack", "tcp_rcv_established"),
            ("retransmit", "tcp_retransmit_skb"),
            ("read", "tcp_rcv_space_adjust"),
        ] {
            assert_eq!(attach_of(&sel, hook), Some(format!("kprobe/{f}")), "{hook}");
        }
        // state has no kprobe: it keeps its tracepoint.
        assert_eq!(
            attach_of(&sel, "state").as_deref(),
            Some("tp_btf/inet_sock_set_state")
        );
        assert_eq!(
            why_of(&sel, "ack"),
            "tracepoint tcp_probe skipped: TCPSTALL_ATTACH=kprobe; fentry tcp_rcv_established \
             skipped: TCPSTALL_ATTACH=kprobe: kprobe tcp_rcv_established"
        );
        assert_eq!(k.rekeys, 1);
        assert!(k
            .attached
            .iter()
            .all(|a| a.starts_with("kprobe/") || a == "tp_btf/inet_sock_set_state"));
    }

    #[test]
    fn attach_env_fentry_keeps_cookie_keys() {
        let mut k = Fake::old();
        let sel = select(&mut k, HOOKS, Some(Kind::FEntry)).unwrap();
        assert_eq!(
            attach_of(&sel, "ack").as_deref(),
            Some("fentry/tcp_rcv_established")
        );
        assert_eq!(
            attach_of(&sel, "read").as_deref(),
            Some("fentry/tcp_rcv_space_adjust")
        );
        assert!(why_of(&sel, "read").starts_with(
            "tracepoint tcp_rcv_space_adjust skipped: TCPSTALL_ATTACH=fentry: fentry"
        ));
        assert_eq!(k.rekeys, 0);
    }

    #[test]
    fn a_kprobe_with_a_wrong_prototype_is_never_attached() {
        let mut k = Fake::old();
        k.sites
            .insert("fn:tcp_rcv_space_adjust".into(), p(&["struct tcp_sock *"]));
        let sel = select(&mut k, HOOKS, Some(Kind::KProbe)).unwrap();
        assert_eq!(attach_of(&sel, "read"), None);
        assert!(why_of(&sel, "read").contains("struct sock *"));
        assert!(!k
            .attached
            .iter()
            .any(|a| a.contains("tcp_rcv_space_adjust")));
    }

    #[test]
    fn attach_env_values() {
        assert_eq!(forced_kind(None).unwrap(), None);
        assert_eq!(forced_kind(Some("")).unwrap(), None);
        assert_eq!(forced_kind(Some("kprobe")).unwrap(), Some(Kind::KProbe));
        assert_eq!(forced_kind(Some("fentry")).unwrap(), Some(Kind::FEntry));
        let e = forced_kind(Some("kprobes")).unwrap_err().to_string();
        assert!(e.contains("TCPSTALL_ATTACH") && e.contains("kprobe"), "{e}");
    }
}
