//! The kernel fields the eBPF programs read ([`OFFSET_SPECS`]) and their offsets from BTF.

use super::*;
use anyhow::{bail, Result};
use monitor_common::Offsets;

/// One entry of [`OFFSET_SPECS`]: which `Offsets` field, where to find it, how big it must be.
pub(super) struct OffsetSpec {
    /// Name of the `Offsets` field, for messages.
    pub(super) name: &'static str,
    pub(super) struct_name: &'static str,
    /// Field paths to try in order; the first one present wins.
    pub(super) paths: &'static [&'static str],
    /// Size in bytes the eBPF programs read.
    pub(super) size: u32,
    pub(super) slot: fn(&mut Offsets) -> &mut u32,
}

/// Every kernel field the eBPF programs read. Offsets are relative to the object the
/// program holds a pointer to; `tcp_sock`, `inet_connection_sock`, `inet_sock`, `sock` and
/// `sock_common` all start at the same address (checked by [`CONTAINMENT`]).
pub(super) const OFFSET_SPECS: &[OffsetSpec] = &[
    OffsetSpec {
        name: "skc_family",
        struct_name: "sock_common",
        paths: &["skc_family"],
        size: 2,
        slot: |o| &mut o.skc_family,
    },
    OffsetSpec {
        name: "skc_state",
        struct_name: "sock_common",
        // `volatile unsigned char`: entries are created only in states that can wedge.
        paths: &["skc_state"],
        size: 1,
        slot: |o| &mut o.skc_state,
    },
    OffsetSpec {
        name: "skc_bound_dev_if",
        struct_name: "sock_common",
        paths: &["skc_bound_dev_if"],
        size: 4,
        slot: |o| &mut o.skc_bound_dev_if,
    },
    OffsetSpec {
        name: "skc_num",
        struct_name: "sock_common",
        paths: &["skc_num"],
        size: 2,
        slot: |o| &mut o.skc_num,
    },
    OffsetSpec {
        name: "skc_dport",
        struct_name: "sock_common",
        paths: &["skc_dport"],
        size: 2,
        slot: |o| &mut o.skc_dport,
    },
    OffsetSpec {
        name: "skc_rcv_saddr",
        struct_name: "sock_common",
        paths: &["skc_rcv_saddr"],
        size: 4,
        slot: |o| &mut o.skc_rcv_saddr,
    },
    OffsetSpec {
        name: "skc_daddr",
        struct_name: "sock_common",
        paths: &["skc_daddr"],
        size: 4,
        slot: |o| &mut o.skc_daddr,
    },
    OffsetSpec {
        name: "skc_v6_rcv_saddr",
        struct_name: "sock_common",
        paths: &["skc_v6_rcv_saddr"],
        size: 16,
        slot: |o| &mut o.skc_v6_rcv_saddr,
    },
    OffsetSpec {
        name: "skc_v6_daddr",
        struct_name: "sock_common",
        paths: &["skc_v6_daddr"],
        size: 16,
        slot: |o| &mut o.skc_v6_daddr,
    },
    OffsetSpec {
        name: "skc_net",
        struct_name: "sock_common",
        paths: &["skc_net.net"],
        size: POINTER_SIZE,
        slot: |o| &mut o.skc_net,
    },
    OffsetSpec {
        name: "net_ns_inum",
        struct_name: "net",
        // `ns.inum` since Linux 3.19; `proc_inum` before.
        paths: &["ns.inum", "proc_inum"],
        size: 4,
        slot: |o| &mut o.net_ns_inum,
    },
    OffsetSpec {
        name: "skc_cookie",
        struct_name: "sock_common",
        paths: &["skc_cookie.counter"],
        size: 8,
        slot: |o| &mut o.skc_cookie,
    },
    OffsetSpec {
        name: "sk_socket",
        struct_name: "sock",
        paths: &["sk_socket"],
        size: POINTER_SIZE,
        slot: |o| &mut o.sk_socket,
    },
    OffsetSpec {
        name: "sk_wmem_queued",
        struct_name: "sock",
        paths: &["sk_wmem_queued"],
        size: 4,
        slot: |o| &mut o.sk_wmem_queued,
    },
    OffsetSpec {
        name: "sk_sndbuf",
        struct_name: "sock",
        paths: &["sk_sndbuf"],
        size: 4,
        slot: |o| &mut o.sk_sndbuf,
    },
    OffsetSpec {
        name: "sk_rcvbuf",
        struct_name: "sock",
        paths: &["sk_rcvbuf"],
        size: 4,
        slot: |o| &mut o.sk_rcvbuf,
    },
    OffsetSpec {
        name: "sk_protocol",
        struct_name: "sock",
        // A u16 of its own since Linux 5.6 (a bitfield before).
        paths: &["sk_protocol"],
        size: 2,
        slot: |o| &mut o.sk_protocol,
    },
    OffsetSpec {
        name: "icsk_backoff",
        struct_name: "inet_connection_sock",
        paths: &["icsk_backoff"],
        size: 1,
        slot: |o| &mut o.icsk_backoff,
    },
    OffsetSpec {
        name: "write_seq",
        struct_name: "tcp_sock",
        paths: &["write_seq"],
        size: 4,
        slot: |o| &mut o.write_seq,
    },
    OffsetSpec {
        name: "snd_una",
        struct_name: "tcp_sock",
        paths: &["snd_una"],
        size: 4,
        slot: |o| &mut o.snd_una,
    },
    OffsetSpec {
        name: "snd_nxt",
        struct_name: "tcp_sock",
        paths: &["snd_nxt"],
        size: 4,
        slot: |o| &mut o.snd_nxt,
    },
    OffsetSpec {
        name: "snd_wnd",
        struct_name: "tcp_sock",
        paths: &["snd_wnd"],
        size: 4,
        slot: |o| &mut o.snd_wnd,
    },
    OffsetSpec {
        name: "rcv_nxt",
        struct_name: "tcp_sock",
        paths: &["rcv_nxt"],
        size: 4,
        slot: |o| &mut o.rcv_nxt,
    },
    OffsetSpec {
        name: "copied_seq",
        struct_name: "tcp_sock",
        paths: &["copied_seq"],
        size: 4,
        slot: |o| &mut o.copied_seq,
    },
    OffsetSpec {
        name: "rcv_wnd",
        struct_name: "tcp_sock",
        paths: &["rcv_wnd"],
        size: 4,
        slot: |o| &mut o.rcv_wnd,
    },
    OffsetSpec {
        name: "skb_data",
        struct_name: "sk_buff",
        paths: &["data"],
        size: POINTER_SIZE,
        slot: |o| &mut o.skb_data,
    },
    OffsetSpec {
        name: "socket_ino",
        // A `struct socket *` is the start of its `socket_alloc` (CONTAINMENT), whose inode
        // number names the socket in `/proc/PID/fd` (`socket:[N]`).
        struct_name: "socket_alloc",
        paths: &["vfs_inode.i_ino"],
        size: POINTER_SIZE,
        slot: |o| &mut o.socket_ino,
    },
    // The holder iterator (`iter/task_file`): an open file's inode, whether it is a socket,
    // its number, and the task's process.
    OffsetSpec {
        name: "file_f_inode",
        struct_name: "file",
        paths: &["f_inode"],
        size: POINTER_SIZE,
        slot: |o| &mut o.file_f_inode,
    },
    OffsetSpec {
        name: "inode_i_mode",
        struct_name: "inode",
        paths: &["i_mode"],
        size: 2,
        slot: |o| &mut o.inode_i_mode,
    },
    OffsetSpec {
        name: "inode_i_ino",
        struct_name: "inode",
        paths: &["i_ino"],
        size: POINTER_SIZE,
        slot: |o| &mut o.inode_i_ino,
    },
    OffsetSpec {
        name: "task_tgid",
        struct_name: "task_struct",
        paths: &["tgid"],
        size: 4,
        slot: |o| &mut o.task_tgid,
    },
];

/// The socket structs embed one another as their first member; the programs rely on that
/// to use one pointer for all of them. Each (struct, member) must be at offset 0.
pub(super) const CONTAINMENT: &[(&str, &str)] = &[
    ("tcp_sock", "inet_conn"),
    ("inet_connection_sock", "icsk_inet"),
    ("inet_sock", "sk"),
    ("sock", "__sk_common"),
    ("socket_alloc", "socket"),
];

/// Computes every [`Offsets`] field from parsed kernel BTF. Collects all problems before
/// failing so one run shows everything that is missing.
pub(super) fn offsets_from_btf(btf: &Btf) -> Result<Offsets> {
    let mut offsets = Offsets::zeroed();
    let mut problems = Vec::new();
    for &(outer, member) in CONTAINMENT {
        match btf.field(outer, member) {
            Ok(f) if f.offset == 0 => {}
            Ok(f) => problems.push(format!(
                "{outer}.{member} is at offset {} instead of 0, so a socket pointer cannot be \
                 read as both",
                f.offset
            )),
            Err(e) => problems.push(format!("{outer}.{member}: {e:#}")),
        }
    }
    for spec in OFFSET_SPECS {
        let mut first_err = None;
        let mut found = None;
        for path in spec.paths {
            match btf.field(spec.struct_name, path) {
                Ok(f) => {
                    found = Some((path, f));
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (found, first_err) {
            (Some((path, f)), _) => {
                if f.size == spec.size {
                    *(spec.slot)(&mut offsets) = f.offset;
                } else {
                    problems.push(format!(
                        "{} ({}.{path}) is {} bytes, but the eBPF programs read {} bytes",
                        spec.name, spec.struct_name, f.size, spec.size
                    ));
                }
            }
            (None, Some(e)) => problems.push(format!("{}: {e:#}", spec.name)),
            (None, None) => unreachable!("every spec lists at least one path"),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} kernel field(s) not usable:\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        );
    }
    offsets.magic = Offsets::MAGIC;
    Ok(offsets)
}
