//! The BTF reader: [`Btf::parse`] walks the header, the type section and the string section
//! into a compact table of types, struct/union members and function prototype parameters.

use super::lookup::NameIndex;
use super::*;
use anyhow::{anyhow, bail, ensure, Result};
use std::collections::HashMap;
use std::sync::OnceLock;

/// One type record, with the kind-specific data this module needs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Type {
    pub(super) name_off: u32,
    pub(super) kind: Kind,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
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
pub(super) struct Member {
    pub(super) name_off: u32,
    pub(super) type_id: u32,
    pub(super) bit_offset: u32,
    /// Nonzero only for bitfields in a struct with kind_flag set.
    pub(super) bitfield_size: u32,
}

/// Parsed BTF: all types, the struct/union members, the function prototype parameters, the
/// string section and an index of named structs and unions.
pub struct Btf {
    /// Index = type id; id 0 is `void` and has a placeholder entry.
    pub(super) types: Vec<Type>,
    pub(super) members: Vec<Member>,
    /// Parameter type ids of every FUNC_PROTO, back to back (see [`Kind::FuncProto`]).
    pub(super) params: Vec<u32>,
    pub(super) strings: Vec<u8>,
    /// Struct and union names to their type ids (several when the name is not unique).
    pub(super) composites: HashMap<String, Vec<u32>>,
    /// FUNC and TYPEDEF names, built on first use so that [`Btf::parse`] stays as cheap as
    /// the offset lookup needs.
    pub(super) names: OnceLock<NameIndex>,
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

    /// The NUL-terminated string at `off` in the string section.
    pub(super) fn name(&self, off: u32) -> Result<&str> {
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
