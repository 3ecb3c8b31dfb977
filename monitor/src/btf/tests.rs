//! Unit tests of the BTF reader, lookups, hook prototypes and offsets, on hand-built BTF
//! blobs and on the running kernel's BTF.

use super::*;
use super::{offsets::*, params::*, parse::*};
use monitor_common::Offsets;
use std::path::Path;
use std::time::Instant;

/// Writes BTF blobs by hand, type by type, in the kernel's binary layout.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

/// A struct/union member for [`Builder::composite`]: name, type id, bit offset,
/// bitfield size (nonzero makes the struct use kind_flag encoding).
type M<'a> = (&'a str, u32, u32, u32);

impl Builder {
    fn new() -> Self {
        Builder {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn record(&mut self, name: &str, kind: u32, flag: bool, vlen: u32, st: u32) -> u32 {
        let name_off = self.str(name);
        let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
        self.words(&[name_off, info, st]);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        self.int_bits(name, size, size * 8, 0)
    }

    fn int_bits(&mut self, name: &str, size: u32, bits: u32, bit_offset: u32) -> u32 {
        let id = self.record(name, KIND_INT, false, 0, size);
        self.words(&[(bit_offset << 16) | bits]);
        id
    }

    fn modifier(&mut self, kind: u32, name: &str, target: u32) -> u32 {
        self.record(name, kind, false, 0, target)
    }

    fn ptr(&mut self, target: u32) -> u32 {
        self.record("", KIND_PTR, false, 0, target)
    }

    fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
        let id = self.record("", KIND_ARRAY, false, 0, 0);
        self.words(&[elem, index, n]);
        id
    }

    fn composite(&mut self, union: bool, name: &str, size: u32, members: &[M]) -> u32 {
        let kind = if union { KIND_UNION } else { KIND_STRUCT };
        let flag = members.iter().any(|m| m.3 != 0);
        let id = self.record(name, kind, flag, members.len() as u32, size);
        for &(mname, ty, bit_off, bits) in members {
            let off = if flag {
                (bits << 24) | bit_off
            } else {
                bit_off
            };
            let name_off = self.str(mname);
            self.words(&[name_off, ty, off]);
        }
        id
    }

    fn strukt(&mut self, name: &str, size: u32, members: &[M]) -> u32 {
        self.composite(false, name, size, members)
    }

    fn union(&mut self, name: &str, size: u32, members: &[M]) -> u32 {
        self.composite(true, name, size, members)
    }

    /// A FUNC_PROTO returning `ret` with `params` (name, type; type 0 last = `...`).
    fn func_proto(&mut self, ret: u32, params: &[(&str, u32)]) -> u32 {
        let id = self.record("", KIND_FUNC_PROTO, false, params.len() as u32, ret);
        for &(name, ty) in params {
            let name_off = self.str(name);
            self.words(&[name_off, ty]);
        }
        id
    }

    /// A global FUNC `name` with a new FUNC_PROTO.
    fn func(&mut self, name: &str, ret: u32, params: &[(&str, u32)]) -> u32 {
        let proto = self.func_proto(ret, params);
        // vlen holds the linkage: 1 = global.
        self.record(name, KIND_FUNC, false, 1, proto)
    }

    /// A BTF tracepoint the way the kernel describes one:
    /// `typedef void (*btf_trace_<name>)(void *__data, <params>)`.
    fn tracepoint(&mut self, name: &str, params: &[(&str, u32)]) -> u32 {
        let void_ptr = self.ptr(0);
        let mut all = vec![("__data", void_ptr)];
        all.extend_from_slice(params);
        let proto = self.func_proto(0, &all);
        let ptr = self.ptr(proto);
        self.modifier(KIND_TYPEDEF, &format!("btf_trace_{name}"), ptr)
    }

    fn fwd(&mut self, name: &str, union: bool) -> u32 {
        self.record(name, KIND_FWD, union, 0, 0)
    }

    /// An ENUM without enumerators.
    fn enumeration(&mut self, name: &str) -> u32 {
        self.record(name, KIND_ENUM, false, 0, 4)
    }

    /// One record of every other kind, with the right trailing data, so a wrong skip
    /// length for any of them breaks the records that follow.
    fn every_other_kind(&mut self, int: u32) {
        let e = self.record("tcp_ca_state", KIND_ENUM, false, 3, 4);
        for (i, n) in ["TCP_CA_Open", "TCP_CA_Disorder", "TCP_CA_CWR"]
            .iter()
            .enumerate()
        {
            let off = self.str(n);
            self.words(&[off, i as u32]);
        }
        self.record("big_enum", KIND_ENUM64, false, 2, 8);
        for n in ["A", "B"] {
            let off = self.str(n);
            self.words(&[off, 1, 2]);
        }
        let proto = self.record("", KIND_FUNC_PROTO, false, 2, int);
        let a = self.str("a");
        self.words(&[a, int, 0, e]);
        self.record("tcp_sendmsg", KIND_FUNC, false, 0, proto);
        let var = self.record("sysctl_x", KIND_VAR, false, 0, int);
        self.words(&[1]);
        self.record(".data..percpu", KIND_DATASEC, false, 1, 4);
        self.words(&[var, 0, 4]);
        self.record("nonnull", KIND_DECL_TAG, false, 0, proto);
        self.words(&[u32::MAX]);
        self.record("double", KIND_FLOAT, false, 0, 8);
        self.record("sk_buff_fwd", KIND_FWD, false, 0, 0);
        self.record("rcu", KIND_TYPE_TAG, false, 0, int);
        self.record("", KIND_RESTRICT, false, 0, int);
    }

    fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(BTF_VERSION);
        out.push(0);
        let words = [
            BTF_HEADER_LEN as u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ];
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// Knobs to break the synthetic kernel in the ways a real one might differ.
#[derive(Default)]
struct Variant {
    no_write_seq: bool,
    sndbuf_u16: bool,
    old_net_proc_inum: bool,
    sk_not_first: bool,
    no_bound_dev_if: bool,
}

/// A miniature of the kernel's socket structures, laid out like 6.18's where it matters:
/// sock_common's addresses and ports in anonymous unions/structs, `possible_net_t` as a
/// typedef of an anonymous struct, `net.ns.inum`, bitfields beside the fields we read.
fn mini_kernel(v: &Variant) -> Vec<u8> {
    let mut b = Builder::new();
    let uchar = b.int("unsigned char", 1);
    let ushort = b.int("short unsigned int", 2);
    let uint = b.int("unsigned int", 4);
    let int = b.int("int", 4);
    let ull = b.int("long long unsigned int", 8);
    b.every_other_kind(int);
    let u8_ = b.modifier(KIND_TYPEDEF, "u8", uchar);
    let u16_ = b.modifier(KIND_TYPEDEF, "__u16", ushort);
    let be16 = b.modifier(KIND_TYPEDEF, "__be16", u16_);
    let u32_ = b.modifier(KIND_TYPEDEF, "u32", uint);
    let be32 = b.modifier(KIND_TYPEDEF, "__be32", u32_);
    let u64_ = b.modifier(KIND_TYPEDEF, "u64", ull);
    let addrpair = b.modifier(KIND_TYPEDEF, "__addrpair", u64_);
    let portpair = b.modifier(KIND_TYPEDEF, "__portpair", u32_);
    let vol_uchar = b.modifier(KIND_VOLATILE, "", uchar);

    let ns_common = b.strukt(
        "ns_common",
        24,
        &[
            ("ns_type", u32_, 0, 0),
            ("stashed", u64_, 64, 0),
            ("inum", uint, 128, 0),
        ],
    );
    let net = if v.old_net_proc_inum {
        b.strukt(
            "net",
            64,
            &[("passive", int, 0, 0), ("proc_inum", uint, 96, 0)],
        )
    } else {
        b.strukt(
            "net",
            64,
            &[("passive", int, 0, 0), ("ns", ns_common, 128, 0)],
        )
    };
    let net_ptr = b.ptr(net);
    let pnet_anon = b.strukt("", 8, &[("net", net_ptr, 0, 0)]);
    let possible_net = b.modifier(KIND_TYPEDEF, "possible_net_t", pnet_anon);

    let idx = b.int("__ARRAY_SIZE_TYPE__", 4);
    let u8x16 = b.array(u8_, idx, 16);
    let be32x4 = b.array(be32, idx, 4);
    let in6_u = b.union(
        "",
        16,
        &[("u6_addr8", u8x16, 0, 0), ("u6_addr32", be32x4, 0, 0)],
    );
    let in6 = b.strukt("in6_addr", 16, &[("in6_u", in6_u, 0, 0)]);

    let addrs = b.strukt(
        "",
        8,
        &[("skc_daddr", be32, 0, 0), ("skc_rcv_saddr", be32, 32, 0)],
    );
    let addr_u = b.union(
        "",
        8,
        &[("skc_addrpair", addrpair, 0, 0), ("", addrs, 0, 0)],
    );
    let ports = b.strukt(
        "",
        4,
        &[("skc_dport", be16, 0, 0), ("skc_num", u16_, 16, 0)],
    );
    let port_u = b.union(
        "",
        4,
        &[("skc_portpair", portpair, 0, 0), ("", ports, 0, 0)],
    );
    let hash_u = b.union("", 4, &[("skc_hash", uint, 0, 0)]);
    let s64 = b.int("long long int", 8);
    let atomic64 = b.strukt("", 8, &[("counter", s64, 0, 0)]);
    let atomic64_t = b.modifier(KIND_TYPEDEF, "atomic64_t", atomic64);
    let mut common_members: Vec<M> = vec![
        ("", addr_u, 0, 0),
        ("", hash_u, 64, 0),
        ("", port_u, 96, 0),
        ("skc_family", ushort, 128, 0),
        ("skc_state", vol_uchar, 144, 0),
        ("skc_reuse", uchar, 152, 4),
        ("skc_reuseport", uchar, 156, 1),
        ("skc_net", possible_net, 192, 0),
        ("skc_v6_daddr", in6, 256, 0),
        ("skc_v6_rcv_saddr", in6, 384, 0),
        ("skc_cookie", atomic64_t, 832, 0),
    ];
    if !v.no_bound_dev_if {
        common_members.push(("skc_bound_dev_if", int, 160, 0));
    }
    let sock_common = b.strukt("sock_common", 136, &common_members);
    let sndbuf_ty = if v.sndbuf_u16 { ushort } else { int };
    let socket = b.strukt("socket", 8, &[("state", int, 0, 0)]);
    let socket_ptr = b.ptr(socket);
    let sock = b.strukt(
        "sock",
        600,
        &[
            ("__sk_common", sock_common, 0, 0),
            ("sk_drops", int, 1088, 0),
            ("sk_wmem_queued", int, 3008, 0),
            ("sk_sndbuf", sndbuf_ty, 4544, 0),
            ("sk_rcvbuf", int, 2048, 0),
            ("sk_protocol", ushort, 4128, 0),
            ("sk_socket", socket_ptr, 2176, 0),
        ],
    );
    let inet_sock = if v.sk_not_first {
        b.strukt(
            "inet_sock",
            1000,
            &[("pinet6", u64_, 0, 0), ("sk", sock, 64, 0)],
        )
    } else {
        b.strukt(
            "inet_sock",
            1000,
            &[("sk", sock, 0, 0), ("pinet6", u64_, 4800, 0)],
        )
    };
    let icsk = b.strukt(
        "inet_connection_sock",
        1400,
        &[
            ("icsk_inet", inet_sock, 0, 0),
            ("icsk_backoff", u8_, 10008, 0),
        ],
    );
    let mut tcp_members: Vec<M> = vec![
        ("inet_conn", icsk, 0, 0),
        ("snd_wnd", u32_, 1436 * 8, 0),
        ("snd_nxt", u32_, 1668 * 8, 0),
        ("snd_una", u32_, 1672 * 8, 0),
        ("rcv_nxt", u32_, 1700 * 8, 0),
        ("copied_seq", u32_, 1704 * 8, 0),
        ("rcv_wnd", u32_, 1708 * 8, 0),
    ];
    if !v.no_write_seq {
        tcp_members.push(("write_seq", u32_, 1576 * 8, 0));
    }
    b.strukt("tcp_sock", 2300, &tcp_members);
    let uchar_ptr = b.ptr(uchar);
    b.strukt(
        "sk_buff",
        232,
        &[
            ("len", uint, 896, 0),
            ("head", uchar_ptr, 1536, 0),
            ("data", uchar_ptr, 1600, 0),
        ],
    );
    let ulong = b.int("long unsigned int", 8);
    let socket = b.strukt("socket", 128, &[("state", int, 0, 0)]);
    let inode = b.strukt(
        "inode",
        600,
        &[("i_mode", ushort, 0, 0), ("i_ino", ulong, 64 * 8, 0)],
    );
    b.strukt(
        "socket_alloc",
        728,
        &[("socket", socket, 0, 0), ("vfs_inode", inode, 128 * 8, 0)],
    );
    let inode_ptr = b.ptr(inode);
    b.strukt("file", 232, &[("f_inode", inode_ptr, 32 * 8, 0)]);
    b.strukt("task_struct", 9000, &[("tgid", int, 2456 * 8, 0)]);
    b.finish()
}

fn mini() -> Btf {
    Btf::parse(&mini_kernel(&Variant::default())).expect("synthetic BTF parses")
}

fn f(offset: u32, size: u32) -> Field {
    Field { offset, size }
}

#[test]
fn fields_through_anonymous_unions_and_structs() {
    let btf = mini();
    assert_eq!(btf.field("sock_common", "skc_daddr").unwrap(), f(0, 4));
    assert_eq!(btf.field("sock_common", "skc_rcv_saddr").unwrap(), f(4, 4));
    assert_eq!(btf.field("sock_common", "skc_addrpair").unwrap(), f(0, 8));
    assert_eq!(btf.field("sock_common", "skc_dport").unwrap(), f(12, 2));
    assert_eq!(btf.field("sock_common", "skc_num").unwrap(), f(14, 2));
    assert_eq!(btf.field("sock_common", "skc_family").unwrap(), f(16, 2));
}

#[test]
fn fields_through_named_members_typedefs_and_modifiers() {
    let btf = mini();
    // Named embedded struct, then anonymous union inside it.
    assert_eq!(btf.field("sock", "__sk_common.skc_num").unwrap(), f(14, 2));
    // Typedef of an anonymous struct holding a pointer.
    assert_eq!(btf.field("sock_common", "skc_net.net").unwrap(), f(24, 8));
    assert_eq!(btf.field("sock_common", "skc_net").unwrap(), f(24, 8));
    assert_eq!(btf.field("net", "ns.inum").unwrap(), f(32, 4));
    // Volatile member; array-of-typedef size inside a union inside a struct.
    assert_eq!(btf.field("sock_common", "skc_state").unwrap(), f(18, 1));
    assert_eq!(btf.field("sock_common", "skc_v6_daddr").unwrap(), f(32, 16));
    assert_eq!(
        btf.field("sock_common", "skc_v6_rcv_saddr.in6_u.u6_addr32")
            .unwrap(),
        f(48, 16)
    );
    // Deep named path through four embedded structs.
    assert_eq!(
        btf.field("tcp_sock", "inet_conn.icsk_inet.sk.__sk_common.skc_dport")
            .unwrap(),
        f(12, 2)
    );
    assert_eq!(btf.field("sk_buff", "data").unwrap(), f(200, 8));
}

#[test]
fn bitfields_are_refused() {
    let btf = mini();
    let e = btf
        .field("sock_common", "skc_reuse")
        .unwrap_err()
        .to_string();
    assert!(e.contains("4-bit bitfield"), "{e}");
    let e = btf
        .field("sock_common", "skc_reuseport")
        .unwrap_err()
        .to_string();
    assert!(e.contains("1-bit bitfield"), "{e}");

    // Old encoding: no kind_flag, the INT type carries the bit width.
    let mut b = Builder::new();
    let uint = b.int("unsigned int", 4);
    let three = b.int_bits("unsigned int", 4, 3, 0);
    b.strukt(
        "s",
        8,
        &[("a", uint, 0, 0), ("b", three, 32, 0), ("c", uint, 35, 0)],
    );
    let btf = Btf::parse(&b.finish()).unwrap();
    assert_eq!(btf.field("s", "a").unwrap(), f(0, 4));
    let e = btf.field("s", "b").unwrap_err().to_string();
    assert!(e.contains("3-bit bitfield"), "{e}");
    let e = btf.field("s", "c").unwrap_err().to_string();
    assert!(e.contains("not on a byte boundary"), "{e}");
}

#[test]
fn missing_names_give_suggestions() {
    let btf = mini();
    let e = btf.field("tcp_sock", "snd_unaa").unwrap_err().to_string();
    assert!(e.contains("has no field `snd_unaa`"), "{e}");
    assert!(e.contains("snd_una"), "{e}");
    let e = btf
        .field("sock_common", "skc_dprt")
        .unwrap_err()
        .to_string();
    // Suggestions include names only reachable through anonymous members.
    assert!(e.contains("skc_dport"), "{e}");
    let e = btf.field("tcp_sok", "snd_una").unwrap_err().to_string();
    assert!(e.contains("no struct or union named `tcp_sok`"), "{e}");
    assert!(e.contains("tcp_sock"), "{e}");
    let e = btf
        .field("sock_common", "skc_family.x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a struct or union"), "{e}");
    assert!(btf.field("sock_common", "skc_net..net").is_err());
    assert!(btf.field("sock_common", "").is_err());
}

#[test]
fn offsets_from_mini_kernel() {
    let o = offsets_from_btf(&mini()).unwrap();
    let want = Offsets {
        magic: Offsets::MAGIC,
        mode: 0,
        skc_cookie: 104,
        sk_socket: 272,
        skc_family: 16,
        skc_state: 18,
        skc_bound_dev_if: 20,
        skc_num: 14,
        skc_dport: 12,
        skc_rcv_saddr: 4,
        skc_daddr: 0,
        skc_v6_rcv_saddr: 48,
        skc_v6_daddr: 32,
        skc_net: 24,
        net_ns_inum: 32,
        sk_wmem_queued: 376,
        sk_sndbuf: 568,
        sk_rcvbuf: 256,
        sk_protocol: 516,
        icsk_backoff: 1251,
        write_seq: 1576,
        snd_una: 1672,
        snd_nxt: 1668,
        snd_wnd: 1436,
        rcv_nxt: 1700,
        copied_seq: 1704,
        rcv_wnd: 1708,
        skb_data: 200,
        socket_ino: 192,
        file_f_inode: 32,
        inode_i_mode: 0,
        inode_i_ino: 64,
        task_tgid: 2456,
    };
    assert_eq!(o, want);

    // Fallback path for the inode number.
    let old = Variant {
        old_net_proc_inum: true,
        ..Variant::default()
    };
    let o = offsets_from_btf(&Btf::parse(&mini_kernel(&old)).unwrap()).unwrap();
    assert_eq!(o.net_ns_inum, 12);
}

#[test]
fn unusable_kernel_lists_every_problem() {
    let v = Variant {
        no_write_seq: true,
        sndbuf_u16: true,
        sk_not_first: true,
        no_bound_dev_if: true,
        ..Variant::default()
    };
    let e = format!(
        "{:#}",
        offsets_from_btf(&Btf::parse(&mini_kernel(&v)).unwrap()).unwrap_err()
    );
    assert!(e.starts_with("4 kernel field(s) not usable"), "{e}");
    assert!(
        e.contains(
            "skc_bound_dev_if: `sock_common` (struct sock_common) has no field `skc_bound_dev_if`"
        ),
        "{e}"
    );
    assert!(
        e.contains("write_seq: `tcp_sock` (struct tcp_sock) has no field `write_seq`"),
        "{e}"
    );
    assert!(
        e.contains("sk_sndbuf (sock.sk_sndbuf) is 2 bytes, but the eBPF programs read 4"),
        "{e}"
    );
    assert!(
        e.contains("inet_sock.sk is at offset 8 instead of 0"),
        "{e}"
    );
}

#[test]
fn load_offsets_from_file_names_the_kernel() {
    let dir = std::env::temp_dir().join(format!("tcpstall-btf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good");
    let bad = dir.join("bad");
    std::fs::write(&good, mini_kernel(&Variant::default())).unwrap();
    let v = Variant {
        no_write_seq: true,
        ..Variant::default()
    };
    std::fs::write(&bad, mini_kernel(&v)).unwrap();
    let good_res = load_offsets_from(&good);
    let bad_res = load_offsets_from(&bad);
    let missing_res = load_offsets_from(&dir.join("missing"));
    std::fs::remove_dir_all(&dir).unwrap();

    let (o, source) = good_res.unwrap();
    assert_eq!(o.magic, Offsets::MAGIC);
    assert_eq!(source, format!("btf:{}", good.display()));
    let e = format!("{:#}", bad_res.unwrap_err());
    assert!(
        e.contains(&format!("kernel {} is not supported", kernel_release())),
        "{e}"
    );
    assert!(e.contains("write_seq"), "{e}");
    let e = format!("{:#}", missing_res.unwrap_err());
    assert!(e.contains("CONFIG_DEBUG_INFO_BTF"), "{e}");
}

#[test]
fn malformed_blobs_are_rejected() {
    let good = mini_kernel(&Variant::default());
    let err = |bytes: &[u8]| Btf::parse(bytes).err().expect("must fail").to_string();

    assert!(err(&good[..10]).contains("shorter than"));
    let mut be = good.clone();
    be.swap(0, 1);
    assert!(err(&be).contains("big-endian"));
    let mut bad_magic = good.clone();
    bad_magic[0] = 0;
    assert!(err(&bad_magic).contains("magic"));
    let mut v2 = good.clone();
    v2[2] = 2;
    assert!(err(&v2).contains("version 2"));
    let mut flags = good.clone();
    flags[3] = 1;
    assert!(err(&flags).contains("flags"));
    // String section claimed longer than the file.
    let mut long = good.clone();
    long[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(err(&long).contains("string section"));
    // Type section cut in the middle of a record (and strings moved along with it).
    let mut b = Builder::new();
    b.int("int", 4);
    let mut cut = b.finish();
    let type_len = 12u32;
    cut[12..16].copy_from_slice(&type_len.to_le_bytes()); // type_len without INT data
    cut[16..20].copy_from_slice(&type_len.to_le_bytes()); // str_off
    cut.drain(BTF_HEADER_LEN + 12..BTF_HEADER_LEN + 16);
    assert!(err(&cut).contains("middle of a record"), "{}", err(&cut));
    // Unknown kind.
    let mut b = Builder::new();
    b.record("x", 20, false, 0, 0);
    assert!(err(&b.finish()).contains("unknown kind 20"));
}

#[test]
fn dangling_type_reference_is_an_error_not_a_panic() {
    let mut b = Builder::new();
    b.strukt("s", 4, &[("a", 99, 0, 0)]);
    let btf = Btf::parse(&b.finish()).unwrap();
    let e = format!("{:#}", btf.field("s", "a").unwrap_err());
    assert!(e.contains("type id 99"), "{e}");
    // A typedef cycle is reported, not followed forever.
    let mut b = Builder::new();
    b.modifier(KIND_TYPEDEF, "loop", 1);
    b.strukt("s", 4, &[("a", 1, 0, 0)]);
    let btf = Btf::parse(&b.finish()).unwrap();
    let e = format!("{:#}", btf.field("s", "a").unwrap_err());
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn levenshtein_distances_the_suggestions_rely_on() {
    use strsim::levenshtein as edit_distance;
    assert_eq!(edit_distance("snd_una", "snd_una"), 0);
    assert_eq!(edit_distance("snd_una", "snd_nxt"), 3);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}

/// Hook sites as the kernel describes them, with the shapes the real ones take on 6.18
/// plus every kind of parameter type the renderer handles.
fn hooks_kernel() -> Vec<u8> {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let long = b.int("long int", 8);
    let ulong = b.int("long unsigned int", 8);
    let char_ = b.int("char", 1);
    let kernel_ulong = b.modifier(KIND_TYPEDEF, "__kernel_ulong_t", ulong);
    let kernel_size = b.modifier(KIND_TYPEDEF, "__kernel_size_t", kernel_ulong);
    let size_t = b.modifier(KIND_TYPEDEF, "size_t", kernel_size);
    let sock = b.strukt("sock", 8, &[("x", int, 0, 0)]);
    let skb = b.strukt("sk_buff", 8, &[("len", int, 0, 0)]);
    let msghdr = b.fwd("msghdr", false);
    let sock_ptr = b.ptr(sock);
    let const_sock = b.modifier(KIND_CONST, "", sock);
    let const_sock_ptr = b.ptr(const_sock);
    let skb_ptr = b.ptr(skb);
    let const_skb = b.modifier(KIND_CONST, "", skb);
    let const_skb_ptr = b.ptr(const_skb);
    let msg_ptr = b.ptr(msghdr);
    let long_ptr = b.ptr(long);

    b.tracepoint("tcp_probe", &[("sk", sock_ptr), ("skb", skb_ptr)]);
    b.tracepoint(
        "tcp_retransmit_skb",
        &[("sk", const_sock_ptr), ("skb", const_skb_ptr)],
    );
    b.tracepoint(
        "inet_sock_set_state",
        &[("sk", const_sock_ptr), ("oldstate", int), ("newstate", int)],
    );
    b.func(
        "tcp_sendmsg_locked",
        int,
        &[("sk", sock_ptr), ("msg", msg_ptr), ("size", size_t)],
    );
    b.func(
        "sk_stream_wait_memory",
        int,
        &[("sk", sock_ptr), ("timeo_p", long_ptr)],
    );
    let const_char = b.modifier(KIND_CONST, "", char_);
    let fmt = b.ptr(const_char);
    b.func("_printk", int, &[("fmt", fmt), ("", 0)]);
    b.func("no_args", int, &[]);

    let cb_proto = b.func_proto(0, &[("", sock_ptr)]);
    let cb = b.ptr(cb_proto);
    let const_cb_proto = b.modifier(KIND_CONST, "", cb_proto);
    let const_cb = b.ptr(const_cb_proto);
    let cb_t = b.modifier(KIND_TYPEDEF, "rcu_callback_t", cb);
    let attr = b.union("bpf_attr", 8, &[("a", int, 0, 0)]);
    let attr_ptr = b.ptr(attr);
    let pacing = b.enumeration("sk_pacing");
    let anon_enum = b.enumeration("");
    let anon = b.strukt("", 4, &[("a", int, 0, 0)]);
    let anon_ptr = b.ptr(anon);
    let anon_union = b.union("", 4, &[("a", int, 0, 0)]);
    let sock_pp = b.ptr(sock_ptr);
    let vol_int = b.modifier(KIND_VOLATILE, "", int);
    let restrict_sock_ptr = b.modifier(KIND_RESTRICT, "", sock_ptr);
    let rcu_sock = b.modifier(KIND_TYPE_TAG, "rcu", sock);
    let rcu_sock_ptr = b.ptr(rcu_sock);
    let void_ptr = b.ptr(0);
    let fwd_union = b.fwd("bpf_prog_aux_u", true);
    let fwd_union_ptr = b.ptr(fwd_union);
    let idx = b.int("__ARRAY_SIZE_TYPE__", 4);
    let chars = b.array(char_, idx, 16);
    let chars_ptr = b.ptr(chars);
    b.func(
        "zoo",
        0,
        &[
            ("cb", cb),
            ("const_cb", const_cb),
            ("cb_t", cb_t),
            ("attr", attr_ptr),
            ("attr_val", attr),
            ("pacing", pacing),
            ("anon_enum", anon_enum),
            ("anon", anon_ptr),
            ("anon_union", anon_union),
            ("pp", sock_pp),
            ("v", vol_int),
            ("r", restrict_sock_ptr),
            ("rcu", rcu_sock_ptr),
            ("data", void_ptr),
            ("fwd_union", fwd_union_ptr),
            ("name", chars_ptr),
            ("size", size_t),
        ],
    );

    // Malformed tracepoint typedefs.
    b.modifier(KIND_TYPEDEF, "btf_trace_not_a_pointer", int);
    b.modifier(KIND_TYPEDEF, "btf_trace_not_a_proto", sock_ptr);
    let no_ctx = b.func_proto(0, &[("sk", sock_ptr)]);
    let no_ctx_ptr = b.ptr(no_ctx);
    b.modifier(KIND_TYPEDEF, "btf_trace_no_ctx", no_ctx_ptr);
    let empty = b.func_proto(0, &[]);
    let empty_ptr = b.ptr(empty);
    b.modifier(KIND_TYPEDEF, "btf_trace_empty", empty_ptr);

    // The same function twice: agreeing, then disagreeing definitions.
    b.func("twice_same", int, &[("sk", sock_ptr)]);
    b.func("twice_same", int, &[("sk", const_sock_ptr)]);
    b.func("twice_differs", int, &[("sk", sock_ptr)]);
    b.func("twice_differs", int, &[("skb", skb_ptr)]);

    // A parameter referring to a type that does not exist.
    b.func("dangling", int, &[("x", 9999)]);
    b.finish()
}

fn hooks() -> Btf {
    Btf::parse(&hooks_kernel()).expect("synthetic BTF parses")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn params_of(btf: &Btf, site: Site) -> Vec<String> {
    btf.params(site)
        .unwrap_or_else(|e| panic!("{site}: {e:#}"))
        .unwrap_or_else(|| panic!("{site} is absent"))
}

#[test]
fn tracepoint_params_drop_the_context() {
    let btf = hooks();
    assert_eq!(
        params_of(&btf, Site::Tracepoint("tcp_probe")),
        strings(&["struct sock *", "struct sk_buff *"])
    );
    assert!(btf.has_tracepoint("tcp_probe"));
    assert!(!btf.has_func("tcp_probe"));
    // A tracepoint with no arguments of its own has only the context.
    let e = format!("{:#}", btf.params(Site::Tracepoint("empty")).unwrap_err());
    assert!(
        e.starts_with("tracepoint empty in kernel BTF (type id "),
        "{e}"
    );
    assert!(
        e.ends_with("the tracepoint's first parameter is absent, not the `void *` context"),
        "{e}"
    );
}

#[test]
fn function_params_keep_typedef_names() {
    let btf = hooks();
    assert_eq!(
        params_of(&btf, Site::Function("tcp_sendmsg_locked")),
        strings(&["struct sock *", "struct msghdr *", "size_t"])
    );
    assert_eq!(
        params_of(&btf, Site::Function("sk_stream_wait_memory")),
        strings(&["struct sock *", "long int *"])
    );
    assert_eq!(params_of(&btf, Site::Function("no_args")), strings(&[]));
    assert!(btf.has_func("tcp_sendmsg_locked"));
    assert!(!btf.has_tracepoint("tcp_sendmsg_locked"));
    // The FUNC_PROTO in the blob with every kind still parses and renders.
    assert_eq!(
        params_of(&mini(), Site::Function("tcp_sendmsg")),
        strings(&["int", "enum tcp_ca_state"])
    );
}

#[test]
fn qualifiers_are_stripped() {
    let btf = hooks();
    assert_eq!(
        params_of(&btf, Site::Tracepoint("tcp_retransmit_skb")),
        strings(&["struct sock *", "struct sk_buff *"])
    );
    assert_eq!(
        params_of(&btf, Site::Tracepoint("inet_sock_set_state")),
        strings(&["struct sock *", "int", "int"])
    );
    // Definitions that differ only in qualifiers agree.
    assert_eq!(
        params_of(&btf, Site::Function("twice_same")),
        strings(&["struct sock *"])
    );
}

#[test]
fn absent_sites_are_none() {
    let btf = hooks();
    for site in [
        Site::Tracepoint("nope"),
        Site::Function("nope"),
        Site::Function("tcp_probe"),
        Site::Function("btf_trace_tcp_probe"),
        Site::Tracepoint("tcp_sendmsg_locked"),
        Site::Tracepoint("btf_trace_tcp_probe"),
        Site::Tracepoint(""),
        Site::Function(""),
        // A typedef and a struct, not functions.
        Site::Function("size_t"),
        Site::Function("sock"),
    ] {
        assert_eq!(btf.params(site).unwrap(), None, "{site}");
    }
    assert!(!btf.has_func("nope"));
    assert!(!btf.has_tracepoint("nope"));
}

#[test]
fn rendering_of_every_parameter_kind() {
    let btf = hooks();
    assert_eq!(
        params_of(&btf, Site::Function("zoo")),
        strings(&[
            "fn *",
            "fn *",
            "rcu_callback_t",
            "union bpf_attr *",
            "union bpf_attr",
            "enum sk_pacing",
            "enum (anon)",
            "struct (anon) *",
            "union (anon)",
            "struct sock **",
            "int",
            "struct sock *",
            "struct sock *",
            "void *",
            "union bpf_prog_aux_u *",
            "char[16] *",
            "size_t",
        ])
    );
}

#[test]
fn variadic_functions_end_in_ellipsis() {
    assert_eq!(
        params_of(&hooks(), Site::Function("_printk")),
        strings(&["char *", "..."])
    );
}

#[test]
fn malformed_sites_are_errors() {
    let btf = hooks();
    let err = |site| format!("{:#}", btf.params(site).unwrap_err());
    let e = err(Site::Tracepoint("not_a_pointer"));
    assert!(
        e.starts_with("tracepoint not_a_pointer in kernel BTF"),
        "{e}"
    );
    assert!(
        e.contains("typedef names int, not a pointer to a function prototype"),
        "{e}"
    );
    let e = err(Site::Tracepoint("not_a_proto"));
    assert!(
        e.contains("typedef points to struct sock, not to a function prototype"),
        "{e}"
    );
    let e = err(Site::Tracepoint("no_ctx"));
    assert!(
        e.contains("first parameter is struct sock *, not the `void *` context"),
        "{e}"
    );
    let e = err(Site::Function("twice_differs"));
    assert!(
        e.contains(
            "several definitions of function twice_differs that disagree on its \
             parameters: (struct sock *) vs (struct sk_buff *)"
        ),
        "{e}"
    );
    let e = err(Site::Function("dangling"));
    assert!(e.starts_with("function dangling in kernel BTF"), "{e}");
    assert!(e.contains("type id 9999"), "{e}");
    // Existence checks do not look at the prototype.
    assert!(btf.has_tracepoint("no_ctx"));
    assert!(btf.has_func("dangling"));
}

#[test]
fn site_display() {
    assert_eq!(
        Site::Tracepoint("tcp_probe").to_string(),
        "tracepoint tcp_probe"
    );
    assert_eq!(
        Site::Function("tcp_sendmsg_locked").to_string(),
        "function tcp_sendmsg_locked"
    );
}

const ACK: Shape = Shape {
    min_args: 2,
    max_args: 2,
    args: &[(0, "struct sock *"), (1, "struct sk_buff *")],
};

#[test]
fn check_params_accepts_fitting_prototypes() {
    let probe = strings(&["struct sock *", "struct sk_buff *"]);
    check_params("ack", Site::Tracepoint("tcp_probe"), "6.18", &probe, &ACK).unwrap();
    // Qualifiers and spacing in the shape do not matter.
    let shape = Shape {
        min_args: 3,
        max_args: 4,
        args: &[(0, "const struct sock*"), (2, "size_t")],
    };
    let send = strings(&["struct sock *", "struct msghdr *", "size_t"]);
    let site = Site::Function("tcp_sendmsg_locked");
    check_params("send", site, "6.18", &send, &shape).unwrap();
    let mut four = send.clone();
    four.push("int".to_owned());
    check_params("send", site, "6.18", &four, &shape).unwrap();
    let any = Shape {
        min_args: 1,
        max_args: usize::MAX,
        args: &[(0, "char *")],
    };
    let printk = strings(&["char *", "..."]);
    check_params("log", Site::Function("_printk"), "6.18", &printk, &any).unwrap();
}

#[test]
fn check_params_type_mismatch_message() {
    let params = strings(&["struct sock *", "int"]);
    let e = check_params(
        "ack",
        Site::Tracepoint("tcp_probe"),
        "5.10.0-30-cloud-amd64",
        &params,
        &ACK,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "hook ack: tracepoint tcp_probe on kernel 5.10.0-30-cloud-amd64 has \
         (struct sock *, int); the eBPF programs were written for \
         (struct sock *, struct sk_buff *) — arg 1 is int, expected struct sk_buff *. \
         This kernel is not supported for this hook; please report it."
    );
    // Every differing argument is named.
    let params = strings(&["struct sk_buff *", "struct sock *"]);
    let e = check_params("ack", Site::Function("tcp_ack"), "7.1", &params, &ACK)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "hook ack: function tcp_ack on kernel 7.1 has (struct sk_buff *, struct sock *)"
        ),
        "{e}"
    );
    assert!(
        e.contains(
            "— arg 0 is struct sk_buff *, expected struct sock *; arg 1 is struct sock *, \
             expected struct sk_buff *."
        ),
        "{e}"
    );
    // A pointer is not the pointee, nor a pointer to pointer.
    for wrong in ["struct sock", "struct sock **"] {
        let params = strings(&[wrong, "struct sk_buff *"]);
        let site = Site::Tracepoint("tcp_probe");
        assert!(
            check_params("ack", site, "6.18", &params, &ACK).is_err(),
            "{wrong}"
        );
    }
}

#[test]
fn check_params_count_mismatch_message() {
    let params = strings(&["struct sock *", "struct sk_buff *", "int"]);
    let e = check_params("ack", Site::Tracepoint("tcp_probe"), "7.2.0", &params, &ACK)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "hook ack: tracepoint tcp_probe on kernel 7.2.0 has \
         (struct sock *, struct sk_buff *, int); the eBPF programs were written for \
         (struct sock *, struct sk_buff *) — it has 3 arguments, expected 2. \
         This kernel is not supported for this hook; please report it."
    );
    // Too few: the count is reported once, not also each missing argument.
    let params = strings(&["struct sock *"]);
    let e = check_params("ack", Site::Tracepoint("tcp_probe"), "5.4", &params, &ACK)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has (struct sock *); ") && e.contains("— it has 1 argument, expected 2."),
        "{e}"
    );
    // Ranges, unbounded counts and unread arguments in the expected prototype.
    let shape = Shape {
        min_args: 3,
        max_args: 4,
        args: &[(0, "struct sock *"), (2, "size_t")],
    };
    let e = check_params("send", Site::Function("f"), "k", &[], &shape)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "has (); the eBPF programs were written for (struct sock *, _, size_t, [_]) \
             — it has 0 arguments, expected 3 to 4."
        ),
        "{e}"
    );
    let shape = Shape {
        min_args: 1,
        max_args: usize::MAX,
        args: &[(0, "char *")],
    };
    let e = check_params("log", Site::Function("f"), "k", &[], &shape)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("written for (char *, ...) — it has 0 arguments, expected at least 1."),
        "{e}"
    );
    // A listed argument beyond the count the shape allows is reported as missing.
    let shape = Shape {
        min_args: 1,
        max_args: 2,
        args: &[(1, "int")],
    };
    let e = check_params("x", Site::Function("f"), "k", &strings(&["int"]), &shape)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("written for (_, [int]) — arg 1 is missing, expected int."),
        "{e}"
    );
}

#[test]
fn normalized_types() {
    assert_eq!(normalize_type("const struct sock*"), "struct sock *");
    assert_eq!(normalize_type("struct sock * const *"), "struct sock **");
    assert_eq!(normalize_type(" volatile  int "), "int");
    assert_eq!(normalize_type("char *restrict"), "char *");
}

/// Hook prototypes of the running kernel, when it publishes BTF.
#[test]
fn running_kernel_hook_params() {
    let path = Path::new(DEFAULT_VMLINUX_BTF);
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("skipping: cannot read {DEFAULT_VMLINUX_BTF}: {e}");
            return;
        }
    };
    let started = Instant::now();
    let btf = Btf::parse(&bytes).unwrap();
    let parsed = started.elapsed();
    let started = Instant::now();
    let tcp_probe = btf.params(Site::Tracepoint("tcp_probe")).unwrap();
    eprintln!(
        "parse {parsed:?}, first params() lookup (builds the name index) {:?}",
        started.elapsed()
    );
    let get = |site: Site| {
        let p = btf.params(site).unwrap();
        eprintln!("{site}: {p:?}");
        p
    };
    let some = |v: &[&str]| Some(strings(v));
    // BTF tracepoints and functions exist on every kernel this agent supports.
    assert_eq!(tcp_probe, some(&["struct sock *", "struct sk_buff *"]));
    assert_eq!(
        get(Site::Tracepoint("inet_sock_set_state")),
        some(&["struct sock *", "int", "int"])
    );
    assert_eq!(
        get(Site::Function("tcp_sendmsg_locked")),
        some(&["struct sock *", "struct msghdr *", "size_t"])
    );
    assert_eq!(
        get(Site::Function("sk_stream_wait_memory")),
        some(&["struct sock *", "long int *"])
    );
    assert_eq!(
        get(Site::Function("tcp_rcv_established")),
        some(&["struct sock *", "struct sk_buff *"])
    );
    assert_eq!(get(Site::Function("tcpstall_no_such_function")), None);
    assert_eq!(get(Site::Tracepoint("tcpstall_no_such_tracepoint")), None);
    assert!(btf.has_func("tcp_sendmsg_locked"));
    assert!(!btf.has_func("tcpstall_no_such_function"));
    assert!(btf.has_tracepoint("tcp_probe"));
    assert!(!btf.has_tracepoint("tcpstall_no_such_tracepoint"));
    // The tcp_sendmsg_locked tracepoint appeared in 6.x; its argument list grew over
    // time, its first argument is the socket.
    let send_tp = get(Site::Tracepoint("tcp_sendmsg_locked"));
    if kernel_release().starts_with("6.18.") {
        let send_tp = send_tp.expect("6.18 has the tcp_sendmsg_locked tracepoint");
        assert_eq!(send_tp[0], "struct sock *");
        assert!(btf.has_tracepoint("tcp_sendmsg_locked"));
    }
}

/// Against the running kernel, when it publishes BTF.
#[test]
fn running_kernel_offsets() {
    let path = Path::new(DEFAULT_VMLINUX_BTF);
    if !path.exists() {
        eprintln!("skipping: {DEFAULT_VMLINUX_BTF} not present");
        return;
    }
    let started = Instant::now();
    let (o, source) = load_offsets().expect("running kernel is supported");
    eprintln!("load_offsets took {:?}: {o:?}", started.elapsed());
    assert_eq!(source, "btf:/sys/kernel/btf/vmlinux");
    assert_eq!(o.magic, Offsets::MAGIC);
    assert_eq!(o.skc_daddr, 0);
    assert_eq!(o.skc_rcv_saddr, 4);
    let all = [
        ("skc_family", o.skc_family),
        ("skc_state", o.skc_state),
        ("skc_bound_dev_if", o.skc_bound_dev_if),
        ("skc_num", o.skc_num),
        ("skc_dport", o.skc_dport),
        ("skc_rcv_saddr", o.skc_rcv_saddr),
        ("skc_v6_rcv_saddr", o.skc_v6_rcv_saddr),
        ("skc_v6_daddr", o.skc_v6_daddr),
        ("skc_net", o.skc_net),
        ("net_ns_inum", o.net_ns_inum),
        ("sk_wmem_queued", o.sk_wmem_queued),
        ("sk_sndbuf", o.sk_sndbuf),
        ("sk_rcvbuf", o.sk_rcvbuf),
        ("sk_protocol", o.sk_protocol),
        ("icsk_backoff", o.icsk_backoff),
        ("write_seq", o.write_seq),
        ("snd_una", o.snd_una),
        ("snd_nxt", o.snd_nxt),
        ("snd_wnd", o.snd_wnd),
        ("rcv_nxt", o.rcv_nxt),
        ("copied_seq", o.copied_seq),
        ("rcv_wnd", o.rcv_wnd),
        ("skb_data", o.skb_data),
    ];
    for (name, off) in all {
        assert!(off > 0 && off < 4096, "{name} = {off} is implausible");
    }
    // sock_common fields lie inside sock_common, which is the start of every socket.
    let btf = Btf::parse(&std::fs::read(path).unwrap()).unwrap();
    let sock_common = btf.field("sock", "__sk_common").unwrap();
    assert_eq!(sock_common.offset, 0);
    for off in [
        o.skc_family,
        o.skc_state,
        o.skc_bound_dev_if,
        o.skc_num,
        o.skc_dport,
        o.skc_net,
        o.skc_v6_daddr,
    ] {
        assert!(off < sock_common.size);
    }
    assert_eq!(
        btf.field("sock", "__sk_common.skc_family").unwrap().offset,
        o.skc_family
    );
    // The kernel's `sk_state` and `sk_bound_dev_if`: a u8 and an int.
    assert_eq!(
        btf.field("sock", "__sk_common.skc_state").unwrap(),
        Field {
            offset: o.skc_state,
            size: 1
        }
    );
    assert_eq!(
        btf.field("sock", "__sk_common.skc_bound_dev_if").unwrap(),
        Field {
            offset: o.skc_bound_dev_if,
            size: 4
        }
    );
    let e = btf.field("tcp_sock", "write_sq").unwrap_err().to_string();
    eprintln!("example error: {e}");
    assert!(e.contains("write_seq"), "{e}");
    // A real bitfield beside the fields we read is refused, not misread.
    let e = btf
        .field("sock_common", "skc_reuse")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bitfield"), "{e}");
    if kernel_release().starts_with("6.18.44") {
        assert_eq!(o.write_seq, 1576);
        assert_eq!(o.snd_una, 1672);
        assert_eq!(o.snd_nxt, 1668);
        assert_eq!(o.snd_wnd, 1436);
        assert_eq!(o.sk_wmem_queued, 376);
        assert_eq!(o.sk_sndbuf, 568);
    }
}
