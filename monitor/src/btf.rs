//! Kernel structure field offsets from the running kernel's BTF.
//!
//! The eBPF programs are written in Rust, which emits no CO-RE relocations, so every field
//! they read from `struct sock`, `struct tcp_sock`, ... must be told to them at load time.
//! At start-up the agent reads `/sys/kernel/btf/vmlinux` (present when the kernel was built
//! with `CONFIG_DEBUG_INFO_BTF=y`), looks up each field with [`Btf::field`], checks that its
//! size is what the programs read, and hands the result ([`monitor_common::Offsets`]) to the
//! programs as a global.
//!
//! The parser is small and self-contained. It follows the format in the kernel's
//! `include/uapi/linux/btf.h`: a header, a type section of `struct btf_type` records each
//! followed by kind-specific data, and a string section. Only little-endian BTF is accepted
//! (the byte order of every machine this agent targets).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use monitor_common::Offsets;

/// Where the running kernel publishes its own BTF.
pub const DEFAULT_VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// Size of `struct btf_header` as of BTF version 1.
const BTF_HEADER_LEN: usize = 24;
/// Pointers in the kernels this agent runs on (64-bit only; eBPF itself is 64-bit).
const POINTER_SIZE: u32 = 8;
/// Bound on typedef/const/array chains followed while resolving a type; real chains are a
/// handful long, so hitting it means the BTF is corrupt (a reference cycle).
const MAX_RESOLVE_DEPTH: usize = 64;

// BTF kinds (`BTF_KIND_*` in include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Byte offset and byte size of a field inside a kernel structure, as found by [`Btf::field`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Offset in bytes from the start of the outermost structure named in the lookup.
    pub offset: u32,
    /// Size of the field's type in bytes.
    pub size: u32,
}

/// One type record, with the kind-specific data this module needs.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: Kind,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `bits`/`bit_offset` come from the INT encoding word; a member whose INT type has
    /// `bits != size * 8` or `bit_offset != 0` is a bitfield (the pre-kind_flag encoding).
    Int {
        size: u32,
        bits: u32,
        bit_offset: u32,
    },
    Ptr {
        target: u32,
    },
    Array {
        elem: u32,
        nelems: u32,
    },
    /// STRUCT or UNION; members are `members[first..first + count]`.
    Composite {
        is_union: bool,
        size: u32,
        first: u32,
        count: u32,
    },
    /// Types with a size and nothing else of interest here: ENUM, ENUM64, FLOAT, DATASEC
    /// (`kind` is the BTF kind).
    Sized {
        size: u32,
        kind: u32,
    },
    /// TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG: transparent references to another type
    /// (`kind` is the BTF kind; only a TYPEDEF has a name of its own).
    Modifier {
        target: u32,
        kind: u32,
    },
    /// Forward declaration of a struct or union.
    Fwd {
        is_union: bool,
    },
    /// A function; `proto` is its FUNC_PROTO.
    Func {
        proto: u32,
    },
    /// A function prototype; its parameter types are `params[first..first + count]`
    /// (type 0 in the last one means variadic).
    FuncProto {
        first: u32,
        count: u32,
    },
    /// Kinds that have no size and cannot hold fields: VAR, DECL_TAG (and `void`, id 0).
    Other {
        kind: u32,
    },
}

/// One member of a STRUCT or UNION.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    /// Nonzero only for bitfields in a struct with kind_flag set.
    bitfield_size: u32,
}

/// Parsed BTF: all types, the struct/union members, the function prototype parameters, the
/// string section and an index of named structs and unions.
pub struct Btf {
    /// Index = type id; id 0 is `void` and has a placeholder entry.
    types: Vec<Type>,
    members: Vec<Member>,
    /// Parameter type ids of every FUNC_PROTO, back to back (see [`Kind::FuncProto`]).
    params: Vec<u32>,
    strings: Vec<u8>,
    /// Struct and union names to their type ids (several when the name is not unique).
    composites: HashMap<String, Vec<u32>>,
    /// FUNC and TYPEDEF names, built on first use so that [`Btf::parse`] stays as cheap as
    /// the offset lookup needs.
    names: OnceLock<NameIndex>,
}

/// Function and typedef names: (hash of the name, type id), sorted. Built without copying
/// or allocating per name (vmlinux has some 56k functions); a lookup hashes the wanted
/// name, binary-searches and compares the candidates' names, so hash collisions are
/// harmless and names that are not unique (which deduplicated vmlinux BTF avoids but a blob
/// may contain) yield every id.
#[derive(Default)]
struct NameIndex {
    funcs: Vec<(u64, u32)>,
    typedefs: Vec<(u64, u32)>,
}

/// Prefix of the typedef the kernel emits for every BTF-enabled tracepoint `<name>`:
/// `typedef void (*btf_trace_<name>)(void *__data, <tracepoint arguments>)`.
const TRACEPOINT_TYPEDEF_PREFIX: &str = "btf_trace_";

/// Where a hook's arguments come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site<'a> {
    /// A BTF tracepoint (`tp_btf`), by its name without the `btf_trace_` prefix, e.g.
    /// `tcp_probe`.
    Tracepoint(&'a str),
    /// A kernel function (`fentry`/`fexit`), e.g. `tcp_sendmsg_locked`.
    Function(&'a str),
}

impl std::fmt::Display for Site<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Site::Tracepoint(name) => write!(f, "tracepoint {name}"),
            Site::Function(name) => write!(f, "function {name}"),
        }
    }
}

/// What a hook's programs read from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Fewest arguments the site may have.
    pub min_args: usize,
    /// Most arguments the site may have (`usize::MAX`: no limit).
    pub max_args: usize,
    /// (argument index, type) for every argument the programs read, in the rendering of
    /// [`Btf::params`], e.g. `(0, "struct sock *")`. Qualifiers are ignored when comparing.
    /// Every listed argument must exist, so list only indexes below `min_args`.
    pub args: &'static [(usize, &'static str)],
}

/// Little-endian reader over a byte slice, with bounds-checked reads.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32> {
        let end = self.pos + 4;
        let b = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| anyhow!("BTF type section ends in the middle of a record"))?;
        self.pos = end;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        ensure!(
            self.pos + n <= self.bytes.len(),
            "BTF type section ends in the middle of a record"
        );
        self.pos += n;
        Ok(())
    }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl Btf {
    /// Parses a complete (base) BTF blob such as `/sys/kernel/btf/vmlinux`.
    ///
    /// Fails on a bad magic (including big-endian BTF), an unknown version, header flags,
    /// sections outside the blob, truncated records or an unknown type kind.
    pub fn parse(bytes: &[u8]) -> Result<Btf> {
        ensure!(
            bytes.len() >= BTF_HEADER_LEN,
            "not BTF: {} bytes is shorter than the {BTF_HEADER_LEN}-byte BTF header",
            bytes.len()
        );
        let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
        if magic == BTF_MAGIC.swap_bytes() {
            bail!("BTF is big-endian; only little-endian BTF (little-endian kernels) is supported");
        }
        ensure!(
            magic == BTF_MAGIC,
            "not BTF: magic is {magic:#06x}, expected {BTF_MAGIC:#06x}"
        );
        let version = bytes[2];
        ensure!(
            version == BTF_VERSION,
            "unsupported BTF version {version} (this parser knows version {BTF_VERSION})"
        );
        let flags = bytes[3];
        ensure!(
            flags == 0,
            "unsupported BTF header flags {flags:#04x} (this parser knows none)"
        );
        let hdr_len = le_u32(bytes, 4) as usize;
        ensure!(
            hdr_len >= BTF_HEADER_LEN && hdr_len <= bytes.len(),
            "corrupt BTF: header length {hdr_len} outside {BTF_HEADER_LEN}..={}",
            bytes.len()
        );
        let [type_off, type_len, str_off, str_len] =
            [8, 12, 16, 20].map(|at| le_u32(bytes, at) as usize);
        let body = &bytes[hdr_len..];
        let section = |name: &str, off: usize, len: usize| -> Result<&[u8]> {
            off.checked_add(len)
                .and_then(|end| body.get(off..end))
                .ok_or_else(|| {
                    anyhow!(
                        "corrupt BTF: {name} section ({len} bytes at {off}) lies outside the \
                         {} bytes after the header",
                        body.len()
                    )
                })
        };
        let type_sec = section("type", type_off, type_len)?;
        let str_sec = section("string", str_off, str_len)?;
        ensure!(
            str_sec.last().is_none_or(|&b| b == 0),
            "corrupt BTF: string section does not end with a NUL byte"
        );

        // Vmlinux BTF holds about 50 bytes per type record on average; reserve accordingly.
        let mut types = Vec::with_capacity(type_sec.len() / 48 + 1);
        types.push(Type {
            name_off: 0,
            kind: Kind::Other { kind: 0 },
        });
        let mut members = Vec::new();
        let mut params = Vec::new();
        let mut r = Reader {
            bytes: type_sec,
            pos: 0,
        };
        while r.pos < type_sec.len() {
            let id = types.len();
            let at = r.pos;
            let name_off = r.u32()?;
            let info = r.u32()?;
            let size_or_type = r.u32()?;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let kind_no = (info >> 24) & 0x1f;
            let kind = match kind_no {
                KIND_INT => {
                    let enc = r.u32()?;
                    Kind::Int {
                        size: size_or_type,
                        bits: enc & 0xff,
                        bit_offset: (enc >> 16) & 0xff,
                    }
                }
                KIND_PTR => Kind::Ptr {
                    target: size_or_type,
                },
                KIND_ARRAY => {
                    let elem = r.u32()?;
                    let _index_type = r.u32()?;
                    let nelems = r.u32()?;
                    Kind::Array { elem, nelems }
                }
                KIND_STRUCT | KIND_UNION => {
                    let first = members.len() as u32;
                    for _ in 0..vlen {
                        let name_off = r.u32()?;
                        let type_id = r.u32()?;
                        let offset = r.u32()?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (offset & 0x00ff_ffff, offset >> 24)
                        } else {
                            (offset, 0)
                        };
                        members.push(Member {
                            name_off,
                            type_id,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    Kind::Composite {
                        is_union: kind_no == KIND_UNION,
                        size: size_or_type,
                        first,
                        count: vlen as u32,
                    }
                }
                KIND_ENUM | KIND_ENUM64 | KIND_DATASEC | KIND_FLOAT => {
                    r.skip(match kind_no {
                        KIND_ENUM => vlen * 8,
                        KIND_ENUM64 | KIND_DATASEC => vlen * 12,
                        _ => 0,
                    })?;
                    Kind::Sized {
                        size: size_or_type,
                        kind: kind_no,
                    }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Kind::Modifier {
                        target: size_or_type,
                        kind: kind_no,
                    }
                }
                KIND_FUNC_PROTO => {
                    // `struct btf_param { name_off, type }` records; only the types matter.
                    let first = params.len() as u32;
                    for _ in 0..vlen {
                        let _name_off = r.u32()?;
                        params.push(r.u32()?);
                    }
                    Kind::FuncProto {
                        first,
                        count: vlen as u32,
                    }
                }
                KIND_VAR | KIND_DECL_TAG => {
                    r.skip(4)?;
                    Kind::Other { kind: kind_no }
                }
                KIND_FWD => Kind::Fwd {
                    is_union: kind_flag,
                },
                KIND_FUNC => Kind::Func {
                    proto: size_or_type,
                },
                _ => bail!(
                    "BTF type id {id} (byte {at} of the type section) has unknown kind \
                     {kind_no}; the kernel's BTF is newer than this parser understands"
                ),
            };
            types.push(Type { name_off, kind });
        }

        let mut btf = Btf {
            types,
            members,
            params,
            strings: str_sec.to_vec(),
            composites: HashMap::new(),
            names: OnceLock::new(),
        };
        let mut composites: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, t) in btf.types.iter().enumerate() {
            if let Kind::Composite { .. } = t.kind {
                let name = btf.name(t.name_off)?;
                if !name.is_empty() {
                    composites
                        .entry(name.to_owned())
                        .or_default()
                        .push(id as u32);
                }
            }
        }
        btf.composites = composites;
        Ok(btf)
    }

    /// Byte offset and byte size of a (possibly nested, dotted) field path inside a named
    /// struct, descending through anonymous struct/union members transparently and through
    /// named embedded struct members by name, e.g. `("sock", "__sk_common.skc_family")`,
    /// `("sock_common", "skc_net.net")`, `("net", "ns.inum")`. Resolves typedef, const,
    /// volatile, restrict and type tags along the way.
    ///
    /// Errors name the struct and the missing field (with a few similar names), and refuse
    /// bitfields, whose offset is not a whole byte offset.
    pub fn field(&self, struct_name: &str, path: &str) -> Result<Field> {
        ensure!(
            !path.is_empty(),
            "empty field path for struct `{struct_name}`"
        );
        let candidates = match self.composites.get(struct_name) {
            Some(ids) => ids,
            None => {
                let similar =
                    similar_names(struct_name, self.composites.keys().map(String::as_str));
                bail!(
                    "kernel BTF has no struct or union named `{struct_name}`{}",
                    format_similar(&similar)
                );
            }
        };
        // Names are unique in deduplicated vmlinux BTF, but a blob may carry several
        // definitions of one name. Prefer structs over unions; accept the lookup when all
        // definitions that have the field agree on it.
        let mut ordered: Vec<u32> = candidates.clone();
        ordered.sort_by_key(|&id| match self.types[id as usize].kind {
            Kind::Composite { is_union, .. } => is_union,
            _ => true,
        });
        let mut found: Option<Field> = None;
        let mut first_err = None;
        for id in ordered {
            match self.field_in(id, struct_name, path) {
                Ok(f) => match found {
                    None => found = Some(f),
                    Some(prev) if prev == f => {}
                    Some(prev) => bail!(
                        "kernel BTF has several definitions of `{struct_name}` that disagree \
                         on `{path}` (offset {} size {} vs offset {} size {})",
                        prev.offset,
                        prev.size,
                        f.offset,
                        f.size
                    ),
                },
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (found, first_err) {
            (Some(f), _) => Ok(f),
            (None, Some(e)) => Err(e),
            (None, None) => bail!("kernel BTF has no struct or union named `{struct_name}`"),
        }
    }

    /// [`Btf::field`] for one specific struct/union type id.
    fn field_in(&self, root: u32, struct_name: &str, path: &str) -> Result<Field> {
        let mut container = root;
        let mut bit_offset: u64 = 0;
        let mut walked = String::from(struct_name);
        let mut last: Option<Member> = None;
        for part in path.split('.') {
            ensure!(
                !part.is_empty(),
                "bad field path `{path}` for `{struct_name}`: empty component"
            );
            if let Some(m) = last {
                container = self.resolve(m.type_id)?;
                if !matches!(self.ty(container)?.kind, Kind::Composite { .. }) {
                    bail!(
                        "`{walked}` is a {}, not a struct or union, so it has no field `{part}`",
                        self.describe(m.type_id)
                    );
                }
            }
            let (rel, m) = match self.find_member(container, part, 0)? {
                Some(found) => found,
                None => {
                    let mut names = Vec::new();
                    self.member_names(container, &mut names, 0)?;
                    let similar = similar_names(part, names.iter().map(String::as_str));
                    bail!(
                        "`{walked}` ({}) has no field `{part}`{}",
                        self.describe(container),
                        format_similar(&similar)
                    );
                }
            };
            bit_offset += rel;
            write!(walked, ".{part}").expect("writing to a String cannot fail");
            last = Some(m);
        }
        let m = last.expect("a non-empty path has at least one component");

        if m.bitfield_size != 0 {
            bail!(
                "`{walked}` is a {}-bit bitfield; its value has no byte offset of its own",
                m.bitfield_size
            );
        }
        if let Kind::Int {
            size,
            bits,
            bit_offset: int_bit_offset,
        } = self.ty(self.resolve(m.type_id)?)?.kind
        {
            if bits != size * 8 || int_bit_offset != 0 {
                bail!(
                    "`{walked}` is a {bits}-bit bitfield; its value has no byte offset of its own"
                );
            }
        }
        if !bit_offset.is_multiple_of(8) {
            bail!(
                "`{walked}` starts at bit {bit_offset}, which is not on a byte boundary \
                 (a bitfield?)"
            );
        }
        let offset = u32::try_from(bit_offset / 8)
            .map_err(|_| anyhow!("corrupt BTF: `{walked}` lies beyond 4 GiB"))?;
        let size = self
            .size_of(m.type_id)
            .with_context(|| format!("size of `{walked}`"))?;
        Ok(Field { offset, size })
    }

    /// Finds the member `name` of struct/union `id`, looking inside anonymous struct/union
    /// members too. Returns its bit offset relative to the start of `id`.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<(u64, Member)>> {
        ensure!(
            depth < MAX_RESOLVE_DEPTH,
            "corrupt BTF: anonymous members nested more than {MAX_RESOLVE_DEPTH} deep"
        );
        for m in self.members_of(id)? {
            let member_name = self.name(m.name_off)?;
            if member_name == name {
                return Ok(Some((u64::from(m.bit_offset), *m)));
            }
            if member_name.is_empty() {
                let inner = self.resolve(m.type_id)?;
                if matches!(self.ty(inner)?.kind, Kind::Composite { .. }) {
                    if let Some((rel, found)) = self.find_member(inner, name, depth + 1)? {
                        return Ok(Some((u64::from(m.bit_offset) + rel, found)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// All field names reachable from struct/union `id` without naming an intermediate
    /// member (its own named members and those of its anonymous members).
    fn member_names(&self, id: u32, out: &mut Vec<String>, depth: usize) -> Result<()> {
        ensure!(
            depth < MAX_RESOLVE_DEPTH,
            "corrupt BTF: anonymous members nested more than {MAX_RESOLVE_DEPTH} deep"
        );
        for m in self.members_of(id)? {
            let name = self.name(m.name_off)?;
            if !name.is_empty() {
                out.push(name.to_owned());
                continue;
            }
            let inner = self.resolve(m.type_id)?;
            if matches!(self.ty(inner)?.kind, Kind::Composite { .. }) {
                self.member_names(inner, out, depth + 1)?;
            }
        }
        Ok(())
    }

    fn members_of(&self, id: u32) -> Result<&[Member]> {
        match self.ty(id)?.kind {
            Kind::Composite { first, count, .. } => self
                .members
                .get(first as usize..(first + count) as usize)
                .ok_or_else(|| anyhow!("internal error: member range of type {id} out of bounds")),
            _ => bail!("internal error: type {id} is not a struct or union"),
        }
    }

    fn ty(&self, id: u32) -> Result<&Type> {
        self.types.get(id as usize).ok_or_else(|| {
            anyhow!(
                "corrupt BTF: reference to type id {id}, but only {} types exist (split BTF \
                 such as a module's needs its base vmlinux BTF, which this parser does not load)",
                self.types.len() - 1
            )
        })
    }

    /// Follows typedef/const/volatile/restrict/type-tag references to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..MAX_RESOLVE_DEPTH {
            match self.ty(id)?.kind {
                Kind::Modifier { target, .. } => id = target,
                _ => return Ok(id),
            }
        }
        bail!("corrupt BTF: type reference chain from type id {id} is longer than {MAX_RESOLVE_DEPTH} (a cycle?)")
    }

    /// Size in bytes of a value of type `id`.
    fn size_of(&self, id: u32) -> Result<u32> {
        let mut id = id;
        let mut multiplier: u64 = 1;
        for _ in 0..MAX_RESOLVE_DEPTH {
            let size = match self.ty(id)?.kind {
                Kind::Modifier { target, .. } => {
                    id = target;
                    continue;
                }
                Kind::Array { elem, nelems } => {
                    multiplier *= u64::from(nelems);
                    id = elem;
                    continue;
                }
                Kind::Int { size, .. }
                | Kind::Composite { size, .. }
                | Kind::Sized { size, .. } => size,
                Kind::Ptr { .. } => POINTER_SIZE,
                Kind::Fwd { .. } => bail!("type {} ({}) has no size", id, kind_name(KIND_FWD)),
                Kind::Func { .. } => bail!("type {} ({}) has no size", id, kind_name(KIND_FUNC)),
                Kind::FuncProto { .. } => {
                    bail!("type {} ({}) has no size", id, kind_name(KIND_FUNC_PROTO))
                }
                Kind::Other { kind } => {
                    bail!("type {} ({}) has no size", id, kind_name(kind))
                }
            };
            return u32::try_from(multiplier * u64::from(size))
                .map_err(|_| anyhow!("corrupt BTF: type size beyond 4 GiB"));
        }
        bail!("corrupt BTF: type reference chain is longer than {MAX_RESOLVE_DEPTH} (a cycle?)")
    }

    /// Short human description of a type, e.g. `struct sock_common`, `u16`, `pointer`.
    fn describe(&self, id: u32) -> String {
        let Ok(t) = self.ty(id) else {
            return format!("type #{id}");
        };
        let name = self.name(t.name_off).unwrap_or("?");
        match t.kind {
            Kind::Composite { is_union, .. } => {
                let kw = if is_union { "union" } else { "struct" };
                if name.is_empty() {
                    format!("anonymous {kw}")
                } else {
                    format!("{kw} {name}")
                }
            }
            Kind::Ptr { .. } => "pointer".to_owned(),
            Kind::Array { .. } => "array".to_owned(),
            _ if !name.is_empty() => name.to_owned(),
            Kind::Int { .. } => "integer".to_owned(),
            Kind::Sized { .. } => "enum".to_owned(),
            Kind::Modifier { target, .. } => self.describe(target),
            Kind::Fwd { .. } => kind_name(KIND_FWD).to_owned(),
            Kind::Func { .. } => kind_name(KIND_FUNC).to_owned(),
            Kind::FuncProto { .. } => kind_name(KIND_FUNC_PROTO).to_owned(),
            Kind::Other { kind } => kind_name(kind).to_owned(),
        }
    }

    /// The NUL-terminated string at `off` in the string section.
    fn name(&self, off: u32) -> Result<&str> {
        let tail = self
            .strings
            .get(off as usize..)
            .ok_or_else(|| anyhow!("corrupt BTF: name offset {off} beyond the string section"))?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| anyhow!("corrupt BTF: string at offset {off} is not terminated"))?;
        std::str::from_utf8(&tail[..end])
            .map_err(|_| anyhow!("corrupt BTF: string at offset {off} is not UTF-8"))
    }
}

/// Hook prototypes: the parameter types of BTF tracepoints and kernel functions.
impl Btf {
    /// Parameter types of a BTF tracepoint (from the typedef `btf_trace_<name>`, a pointer
    /// to a FUNC_PROTO whose first parameter is the `void *` context, which is dropped) or
    /// of a kernel function (the FUNC named `name` → its FUNC_PROTO), rendered C-like
    /// without qualifiers: `struct sock *`, `int`, `size_t` (typedef names are kept),
    /// `long int *`, `union x`, `enum y`, `struct (anon)`, `fn *` for function pointers,
    /// `...` for the variadic tail.
    ///
    /// `Ok(None)` when the tracepoint or function does not exist in this BTF. Errors when
    /// the BTF is corrupt, when a tracepoint typedef is not shaped as described, or when
    /// several definitions of the name disagree on the parameters.
    pub fn params(&self, site: Site) -> Result<Option<Vec<String>>> {
        let mut found: Option<Vec<String>> = None;
        for id in self.site_ids(site)? {
            let params = match site {
                Site::Tracepoint(_) => self.tracepoint_params(id),
                Site::Function(_) => self.function_params(id),
            }
            .with_context(|| format!("{site} in kernel BTF (type id {id})"))?;
            match &found {
                None => found = Some(params),
                Some(prev) if *prev == params => {}
                Some(prev) => bail!(
                    "kernel BTF has several definitions of {site} that disagree on its \
                     parameters: ({}) vs ({})",
                    prev.join(", "),
                    params.join(", ")
                ),
            }
        }
        Ok(found)
    }

    /// Whether the kernel function `name` is in this BTF (so `fentry` can attach to it).
    pub fn has_func(&self, name: &str) -> bool {
        self.site_ids(Site::Function(name))
            .is_ok_and(|ids| !ids.is_empty())
    }

    /// Whether the BTF tracepoint `name` (typedef `btf_trace_<name>`) is in this BTF (so
    /// `tp_btf` can attach to it).
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.site_ids(Site::Tracepoint(name))
            .is_ok_and(|ids| !ids.is_empty())
    }

    /// Type ids of the FUNCs named like a function site, or of the `btf_trace_<name>`
    /// TYPEDEFs for a tracepoint site.
    fn site_ids(&self, site: Site) -> Result<Vec<u32>> {
        let index = self.names.get_or_init(|| self.build_name_index());
        let (list, prefix, name) = match site {
            Site::Tracepoint(name) => (&index.typedefs, TRACEPOINT_TYPEDEF_PREFIX, name),
            Site::Function(name) => (&index.funcs, "", name),
        };
        let hash = name_hash(prefix.as_bytes().iter().chain(name.as_bytes()));
        let start = list.partition_point(|&(h, _)| h < hash);
        let mut ids = Vec::new();
        for &(_, id) in list[start..].iter().take_while(|&&(h, _)| h == hash) {
            let candidate = self.name(self.ty(id)?.name_off)?;
            if candidate.strip_prefix(prefix) == Some(name) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The FUNC and TYPEDEF [`NameIndex`]. Names at a bad offset are left out here and
    /// reported by the lookups that need them.
    fn build_name_index(&self) -> NameIndex {
        let mut index = NameIndex::default();
        for (id, t) in self.types.iter().enumerate() {
            let list = match t.kind {
                Kind::Func { .. } => &mut index.funcs,
                Kind::Modifier {
                    kind: KIND_TYPEDEF, ..
                } => &mut index.typedefs,
                _ => continue,
            };
            let Some(tail) = self.strings.get(t.name_off as usize..) else {
                continue;
            };
            if tail.first().is_some_and(|&b| b != 0) {
                let name = tail.iter().take_while(|&&b| b != 0);
                list.push((name_hash(name), id as u32));
            }
        }
        index.funcs.sort_unstable();
        index.typedefs.sort_unstable();
        index
    }

    /// Parameters of the tracepoint whose `btf_trace_<name>` typedef is type `id`.
    fn tracepoint_params(&self, id: u32) -> Result<Vec<String>> {
        let ptr = self.resolve(id)?;
        let proto = match self.ty(ptr)?.kind {
            Kind::Ptr { target } => self.resolve(target)?,
            _ => bail!(
                "the tracepoint typedef names {}, not a pointer to a function prototype",
                self.describe(ptr)
            ),
        };
        ensure!(
            matches!(self.ty(proto)?.kind, Kind::FuncProto { .. }),
            "the tracepoint typedef points to {}, not to a function prototype",
            self.describe(proto)
        );
        let mut params = self.proto_params(proto)?;
        match params.first().map(String::as_str) {
            Some("void *") => {
                params.remove(0);
                Ok(params)
            }
            first => bail!(
                "the tracepoint's first parameter is {}, not the `void *` context",
                first.unwrap_or("absent")
            ),
        }
    }

    /// Parameters of the function (FUNC) with type `id`.
    fn function_params(&self, id: u32) -> Result<Vec<String>> {
        match self.ty(id)?.kind {
            Kind::Func { proto } => self.proto_params(proto),
            _ => bail!("internal error: type {id} is not a function"),
        }
    }

    /// Rendered parameter types of FUNC_PROTO `id`.
    fn proto_params(&self, id: u32) -> Result<Vec<String>> {
        let (first, count) = match self.ty(id)?.kind {
            Kind::FuncProto { first, count } => (first as usize, count as usize),
            _ => bail!(
                "type {id} ({}) is not a function prototype",
                self.describe(id)
            ),
        };
        let types = self
            .params
            .get(first..first + count)
            .ok_or_else(|| anyhow!("internal error: parameter range of type {id} out of bounds"))?;
        types
            .iter()
            .enumerate()
            .map(|(i, &ty)| match ty {
                0 if i + 1 == count => Ok("...".to_owned()),
                0 => bail!("corrupt BTF: parameter {i} of function prototype {id} is void"),
                _ => self.render(ty, 0),
            })
            .collect()
    }

    /// C-like rendering of type `id` without qualifiers, e.g. `struct sock *`, `size_t`.
    fn render(&self, id: u32, depth: usize) -> Result<String> {
        ensure!(
            depth < MAX_RESOLVE_DEPTH,
            "corrupt BTF: type reference chain from type id {id} is longer than \
             {MAX_RESOLVE_DEPTH} (a cycle?)"
        );
        if id == 0 {
            return Ok("void".to_owned());
        }
        let t = self.ty(id)?;
        let name = self.name(t.name_off)?;
        let tagged = |kw: &str| {
            if name.is_empty() {
                format!("{kw} (anon)")
            } else {
                format!("{kw} {name}")
            }
        };
        Ok(match t.kind {
            Kind::Ptr { target } => {
                if matches!(
                    self.ty(self.strip_qualifiers(target)?)?.kind,
                    Kind::FuncProto { .. }
                ) {
                    "fn *".to_owned()
                } else {
                    let mut inner = self.render(target, depth + 1)?;
                    if !inner.ends_with('*') {
                        inner.push(' ');
                    }
                    inner.push('*');
                    inner
                }
            }
            Kind::Array { elem, nelems } => {
                format!("{}[{nelems}]", self.render(elem, depth + 1)?)
            }
            Kind::Composite { is_union, .. } | Kind::Fwd { is_union } => {
                tagged(if is_union { "union" } else { "struct" })
            }
            Kind::Sized {
                kind: KIND_ENUM | KIND_ENUM64,
                ..
            } => tagged("enum"),
            Kind::Modifier {
                kind: KIND_TYPEDEF, ..
            } => name.to_owned(),
            Kind::Modifier { target, .. } => self.render(target, depth + 1)?,
            Kind::FuncProto { .. } => "fn".to_owned(),
            Kind::Int { .. } | Kind::Sized { .. } | Kind::Func { .. } | Kind::Other { .. } => {
                if name.is_empty() {
                    self.describe(id)
                } else {
                    name.to_owned()
                }
            }
        })
    }

    /// Follows const/volatile/restrict/type-tag references, but not typedefs.
    fn strip_qualifiers(&self, mut id: u32) -> Result<u32> {
        for _ in 0..MAX_RESOLVE_DEPTH {
            match self.ty(id)?.kind {
                Kind::Modifier { target, kind } if kind != KIND_TYPEDEF => id = target,
                _ => return Ok(id),
            }
        }
        bail!("corrupt BTF: qualifier chain from type id {id} is longer than {MAX_RESOLVE_DEPTH} (a cycle?)")
    }
}

/// FNV-1a, 64-bit: fast on the short identifiers BTF names are.
fn name_hash<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Checks a hook site's parameters (from [`Btf::params`]) against what the hook's eBPF
/// programs read: the count must be within `shape.min_args..=shape.max_args` and every
/// argument listed in `shape.args` must exist and have exactly that type, ignoring
/// const/volatile/restrict qualifiers.
///
/// The error names the hook, the site, the kernel release, the prototype found and the one
/// expected, and each difference, e.g. "hook ack: tracepoint tcp_probe on kernel 5.10.0 has
/// (struct sock *, int); the eBPF programs were written for (struct sock *, struct sk_buff *)
/// — arg 1 is int, expected struct sk_buff *. This kernel is not supported for this hook;
/// please report it."
pub fn check_params(
    hook: &str,
    site: Site,
    kernel: &str,
    params: &[String],
    shape: &Shape,
) -> Result<()> {
    let mut problems = Vec::new();
    let n = params.len();
    let count_ok = (shape.min_args..=shape.max_args).contains(&n);
    if !count_ok {
        let expected = if shape.min_args == shape.max_args {
            format!("{}", shape.min_args)
        } else if shape.max_args == usize::MAX {
            format!("at least {}", shape.min_args)
        } else {
            format!("{} to {}", shape.min_args, shape.max_args)
        };
        problems.push(format!(
            "it has {n} argument{}, expected {expected}",
            if n == 1 { "" } else { "s" }
        ));
    }
    for &(i, want) in shape.args {
        match params.get(i) {
            Some(got) if normalize_type(got) == normalize_type(want) => {}
            Some(got) => problems.push(format!("arg {i} is {got}, expected {want}")),
            // Already covered by the count message when the count is off.
            None if count_ok => problems.push(format!("arg {i} is missing, expected {want}")),
            None => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "hook {hook}: {site} on kernel {kernel} has ({}); the eBPF programs were written for \
         ({}) — {}. This kernel is not supported for this hook; please report it.",
        params.join(", "),
        expected_signature(shape),
        problems.join("; ")
    )
}

/// The prototype a [`Shape`] describes, e.g. `struct sock *, _, [int]`: `_` for an argument
/// of any type, brackets for an optional one, `...` when any number may follow.
fn expected_signature(shape: &Shape) -> String {
    let listed = shape.args.iter().map(|&(i, _)| i + 1).max().unwrap_or(0);
    let shown = shape.min_args.max(listed);
    let mut items: Vec<String> = (0..shown)
        .map(|i| {
            let ty = shape
                .args
                .iter()
                .find(|&&(j, _)| j == i)
                .map_or("_", |&(_, ty)| ty);
            if i < shape.min_args {
                ty.to_owned()
            } else {
                format!("[{ty}]")
            }
        })
        .collect();
    if shape.max_args == usize::MAX {
        items.push("...".to_owned());
    } else {
        items.extend((shown..shape.max_args).map(|_| "[_]".to_owned()));
    }
    items.join(", ")
}

/// A type's rendering with qualifiers dropped and spacing made canonical, so that
/// `const struct sock*` and `struct sock *` compare equal.
fn normalize_type(ty: &str) -> String {
    let mut out = String::new();
    for token in ty.replace('*', " * ").split_whitespace() {
        match token {
            "const" | "volatile" | "restrict" | "__restrict" => {}
            "*" if out.ends_with('*') => out.push('*'),
            _ => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(token);
            }
        }
    }
    out
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        0 => "void",
        KIND_FWD => "forward declaration",
        KIND_FUNC => "function",
        KIND_FUNC_PROTO => "function prototype",
        KIND_VAR => "variable",
        KIND_DECL_TAG => "declaration tag",
        _ => "type",
    }
}

/// Up to five names from `names` that look like `wanted` (edit distance or substring),
/// closest first.
fn similar_names<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let limit = (wanted.len() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = names
        .filter_map(|n| {
            // Cheap pre-filter: the edit distance is at least the length difference.
            let substring = n.len() >= 3 && (n.contains(wanted) || wanted.contains(n));
            if !substring && n.len().abs_diff(wanted.len()) > limit {
                return None;
            }
            let d = edit_distance(wanted, n);
            (d <= limit || substring).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(5)
        .map(|(_, n)| n.to_owned())
        .collect()
}

fn format_similar(similar: &[String]) -> String {
    if similar.is_empty() {
        String::new()
    } else {
        format!(" (similar names: {})", similar.join(", "))
    }
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// One entry of [`OFFSET_SPECS`]: which `Offsets` field, where to find it, how big it must be.
struct OffsetSpec {
    /// Name of the `Offsets` field, for messages.
    name: &'static str,
    struct_name: &'static str,
    /// Field paths to try in order; the first one present wins.
    paths: &'static [&'static str],
    /// Size in bytes the eBPF programs read.
    size: u32,
    slot: fn(&mut Offsets) -> &mut u32,
}

/// Every kernel field the eBPF programs read. Offsets are relative to the object the
/// program holds a pointer to; `tcp_sock`, `inet_connection_sock`, `inet_sock`, `sock` and
/// `sock_common` all start at the same address (checked by [`CONTAINMENT`]).
const OFFSET_SPECS: &[OffsetSpec] = &[
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
];

/// The socket structs embed one another as their first member; the programs rely on that
/// to use one pointer for all of them. Each (struct, member) must be at offset 0.
const CONTAINMENT: &[(&str, &str)] = &[
    ("tcp_sock", "inet_conn"),
    ("inet_connection_sock", "icsk_inet"),
    ("inet_sock", "sk"),
    ("sock", "__sk_common"),
];

/// Computes every [`Offsets`] field from parsed kernel BTF. Collects all problems before
/// failing so one run shows everything that is missing.
fn offsets_from_btf(btf: &Btf) -> Result<Offsets> {
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

/// The running kernel's release (`uname -r`), if it can be read.
pub fn uname_release() -> Option<String> {
    // SAFETY: uname fills the zero-initialised struct; each field is NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(u.release.as_ptr())
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// The running kernel's release (`uname -r`), or a placeholder if it cannot be read.
pub fn kernel_release() -> String {
    uname_release().unwrap_or_else(|| "(unknown release)".to_owned())
}

/// Reads the offsets from the running kernel's BTF at [`DEFAULT_VMLINUX_BTF`].
///
/// Returns the offsets and a description of where they came from, for the `agent_started`
/// event, e.g. `btf:/sys/kernel/btf/vmlinux`.
pub fn load_offsets() -> Result<(Offsets, String)> {
    load_offsets_from(Path::new(DEFAULT_VMLINUX_BTF))
}

/// The running kernel's parsed BTF (for hook prototypes), offsets and their source.
pub fn load_kernel() -> Result<(Btf, Offsets, String)> {
    load_kernel_from(Path::new(DEFAULT_VMLINUX_BTF))
}

/// Reads the offsets from the BTF file at `path` (see [`load_offsets`]).
///
/// Fails when the file cannot be read or parsed, or when any field the eBPF programs need
/// is missing or has an unexpected size; the error names each field and the kernel release
/// and says the kernel is not supported.
pub fn load_offsets_from(path: &Path) -> Result<(Offsets, String)> {
    load_kernel_from(path).map(|(_, o, s)| (o, s))
}

fn load_kernel_from(path: &Path) -> Result<(Btf, Offsets, String)> {
    let started = Instant::now();
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading kernel BTF from {}: tcpstall needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (which provides {DEFAULT_VMLINUX_BTF})",
            path.display()
        )
    })?;
    let btf =
        Btf::parse(&bytes).with_context(|| format!("parsing kernel BTF {}", path.display()))?;
    let offsets = offsets_from_btf(&btf).with_context(|| {
        format!(
            "kernel {} is not supported by tcpstall: its BTF ({}) lacks kernel structure \
             fields the eBPF programs read",
            kernel_release(),
            path.display()
        )
    })?;
    log::debug!(
        "read {} kernel field offsets from {} ({} bytes) in {:?}",
        OFFSET_SPECS.len(),
        path.display(),
        bytes.len(),
        started.elapsed()
    );
    Ok((btf, offsets, format!("btf:{}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn edit_distance_basics() {
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
}

#[cfg(test)]
mod timing {
    use super::*;
    use std::time::Duration;

    fn summary(what: &str, mut times: Vec<Duration>) {
        times.sort();
        eprintln!(
            "{what}: min {:?} median {:?} max {:?} ({} runs)",
            times[0],
            times[times.len() / 2],
            times[times.len() - 1],
            times.len()
        );
    }

    /// `cargo test --release -p monitor --lib btf::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing measurement, run by hand"]
    fn parse_time_of_running_kernel() {
        let Ok(bytes) = std::fs::read(DEFAULT_VMLINUX_BTF) else {
            eprintln!("skipping: {DEFAULT_VMLINUX_BTF} not readable");
            return;
        };
        let mut parse = Vec::new();
        let mut index = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            let btf = Btf::parse(&bytes).unwrap();
            parse.push(t.elapsed());
            let t = Instant::now();
            assert!(btf.has_tracepoint("tcp_probe"));
            index.push(t.elapsed());
        }
        eprintln!("{DEFAULT_VMLINUX_BTF}: {} bytes", bytes.len());
        summary("Btf::parse", parse);
        summary("first lookup (builds the FUNC/TYPEDEF index)", index);
    }
}
