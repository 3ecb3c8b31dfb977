//! Which attach point each kernel hook gets on the running kernel, and why.
//!
//! Every hook has one eBPF logic function and several thin entry points (see
//! `monitor-ebpf`): a BTF tracepoint where the kernel has it, else fentry on the kernel
//! function the tracepoint sits in. At start-up [`select`] walks each hook's candidates in
//! order of preference, checks each one's prototype against the kernel's BTF, and keeps the
//! first that loads and attaches. A hook with no working candidate stops the agent when
//! detection cannot work without it, and is otherwise reported in `agent_started.degraded`.
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
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::TpBtf => "tp_btf",
            Kind::FEntry => "fentry",
        }
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
            Kind::FEntry => Site::Function(self.target),
        }
    }

    /// `tp_btf/tcp_probe`, `fentry/tcp_sendmsg_locked`.
    pub fn attach_name(&self) -> String {
        format!("{}/{}", self.kind.prefix(), self.target)
    }

    fn describe(&self) -> String {
        match self.kind {
            Kind::TpBtf => format!("tracepoint {}", self.target),
            Kind::FEntry => format!("fentry {}", self.target),
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
        ],
        lost: "",
        not_needed: "",
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
        ],
        lost: "writer identity (pid, comm, cgroup): rules selecting by comm or cgroup never \
               match; wedges are still found from ACKs and retransmits",
        not_needed: "",
    },
    Hook {
        name: "send_wait",
        need: Need::UnlessTracepoint("send"),
        candidates: &[Candidate {
            kind: Kind::FEntry,
            target: "sk_stream_wait_memory",
            prog: "tcpstall_send_wait",
            shape: ARG0_SOCK,
        }],
        lost: "the writer of a first write that blocks at once is not identified until it \
               writes again",
        not_needed: "not needed: the tcp_sendmsg_locked tracepoint also fires inside a write \
                     that blocks",
    },
    Hook {
        name: "send_pages",
        need: Need::IfFunction("do_tcp_sendpages"),
        candidates: &[Candidate {
            kind: Kind::FEntry,
            target: "do_tcp_sendpages",
            prog: "tcpstall_send_pages",
            shape: ARG0_SOCK,
        }],
        lost: "writers using sendfile/splice/kTLS are not identified (pid, comm, cgroup)",
        not_needed: "not needed: no do_tcp_sendpages on this kernel (since 6.5 sendfile, \
                     splice and kTLS write through tcp_sendmsg_locked)",
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
        ],
        lost: "retransmit counts (no_ack evidence) and tracking of dead peers whose writer \
               stopped writing",
        not_needed: "",
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
        ],
        lost: "read-side progress: recv_backlog stalls clear only when the peer sends again",
        not_needed: "",
    },
];

/// The running kernel, as [`select`] sees it.
pub trait Kernel {
    /// Release string for messages (`uname -r`).
    fn release(&self) -> &str;
    /// Parameter types of a tracepoint or function; `None` when the kernel lacks it.
    fn params(&self, site: Site) -> Result<Option<Vec<String>>>;
    /// Load and attach `c`'s program. The error says why the kernel refused.
    fn attach(&mut self, c: &Candidate) -> Result<()>;
}

/// What [`select`] decided.
#[derive(Debug, Default)]
pub struct Selection {
    pub reports: Vec<HookReport>,
    pub degraded: Vec<String>,
    /// Program names attached.
    pub attached: Vec<&'static str>,
}

/// Attach every hook in `hooks` as well as `kernel` allows.
pub fn select(kernel: &mut dyn Kernel, hooks: &[Hook]) -> Result<Selection> {
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
        };
        if !needed {
            sel.reports.push(HookReport {
                hook: hook.name.into(),
                attach: None,
                why: hook.not_needed.into(),
            });
            continue;
        }
        let mut reasons: Vec<String> = Vec::new();
        let mut chosen = None;
        for c in hook.candidates {
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
    use std::collections::HashMap;

    /// A kernel described by which sites exist (with their parameters) and which attach
    /// kinds it refuses.
    struct Fake {
        sites: HashMap<String, Vec<String>>,
        refuse: Vec<Kind>,
        attached: Vec<String>,
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
            ] {
                sites.insert(k.to_string(), v);
            }
            Fake {
                sites,
                refuse: vec![],
                attached: vec![],
            }
        }

        /// This development VM (6.18): every tracepoint, fentry refused.
        fn host() -> Fake {
            let mut f = Fake::old();
            f.sites.remove("fn:do_tcp_sendpages");
            f.sites.insert(
                "tp:tcp_sendmsg_locked".into(),
                p(&[SOCK, "struct msghdr *", SKB, "int"]),
            );
            f.refuse.push(Kind::FEntry);
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
    fn old_kernel_falls_back_to_fentry_for_send() {
        let mut k = Fake::old();
        let sel = select(&mut k, HOOKS).unwrap();
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
        let sel = select(&mut k, HOOKS).unwrap();
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
    fn a_missing_optional_hook_degrades_and_says_what_is_lost() {
        // No tracepoint and fentry refused: send has no attach point.
        let mut k = Fake::old();
        k.refuse.push(Kind::FEntry);
        let sel = select(&mut k, HOOKS).unwrap();
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
                .any(|d| d.starts_with("send hook not attached") && d.contains("comm or cgroup")),
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
        let err = select(&mut k, HOOKS).unwrap_err().to_string();
        assert!(err.contains("ack hook"), "{err}");
        assert!(err.contains("tracepoint tcp_probe absent"), "{err}");
        assert!(err.contains("fentry tcp_rcv_established refused"), "{err}");
        assert!(err.contains("6.1.0-test"), "{err}");
    }

    #[test]
    fn a_wrong_prototype_is_never_attached() {
        let mut k = Fake::old();
        // A kernel whose tcp_probe tracepoint passes something else as its second argument.
        k.sites.insert("tp:tcp_probe".into(), p(&[SOCK, "int"]));
        let sel = select(&mut k, HOOKS).unwrap();
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
        let sel = select(&mut k, HOOKS).unwrap();
        assert_eq!(
            attach_of(&sel, "retransmit").as_deref(),
            Some("tp_btf/tcp_retransmit_skb")
        );
    }
}
