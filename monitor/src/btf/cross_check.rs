//! A check of the BTF reader against a second source: the offsets and sizes [`Btf::field`]
//! finds in the running kernel's BTF must be the ones `bpftool` (libbpf's BTF reader) reports
//! for the same file, for every field the eBPF programs read and for every member of every
//! struct and union in the kernel.

use super::offsets::{offsets_from_btf, CONTAINMENT, OFFSET_SPECS};
use super::*;
use monitor_common::Offsets;
use serde::Deserialize;
use std::collections::HashMap;
use std::process::Command;

/// `bpftool -j btf dump file F format raw`: the fields of each type this check reads.
#[derive(Deserialize)]
struct Dump {
    types: Vec<RawType>,
}

#[derive(Deserialize)]
struct RawType {
    id: u32,
    kind: String,
    name: String,
    size: Option<u32>,
    type_id: Option<u32>,
    nr_elems: Option<u32>,
    nr_bits: Option<u32>,
    bits_offset: Option<u32>,
    #[serde(default)]
    members: Vec<RawMember>,
}

#[derive(Deserialize)]
struct RawMember {
    name: String,
    type_id: u32,
    bits_offset: u32,
    #[serde(default)]
    bitfield_size: u32,
}

/// bpftool's view of the BTF, with the lookups done the C way.
struct Bpftool {
    types: HashMap<u32, RawType>,
    composites: HashMap<String, Vec<u32>>,
}

const ANON: &str = "(anon)";

impl Bpftool {
    fn load(path: &str) -> Bpftool {
        let out = ["bpftool", "/usr/sbin/bpftool"]
            .iter()
            .find_map(|tool| {
                Command::new(tool)
                    .args(["-j", "btf", "dump", "file", path, "format", "raw"])
                    .output()
                    .ok()
            })
            .expect(
                "bpftool not found: install Debian's bpftool package (`cargo xtask test` does)",
            );
        assert!(
            out.status.success(),
            "bpftool btf dump {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dump: Dump = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
        let mut composites: HashMap<String, Vec<u32>> = HashMap::new();
        for t in &dump.types {
            if (t.kind == "STRUCT" || t.kind == "UNION") && t.name != ANON {
                composites.entry(t.name.clone()).or_default().push(t.id);
            }
        }
        let types = dump.types.into_iter().map(|t| (t.id, t)).collect();
        Bpftool { types, composites }
    }

    fn ty(&self, id: u32) -> &RawType {
        &self.types[&id]
    }

    /// Through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> &RawType {
        loop {
            let t = self.ty(id);
            match t.kind.as_str() {
                "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                    id = t.type_id.expect("modifier has a type_id")
                }
                _ => return t,
            }
        }
    }

    fn size(&self, id: u32) -> u32 {
        let t = self.resolve(id);
        match t.kind.as_str() {
            "PTR" => 8,
            "ARRAY" => t.nr_elems.unwrap() * self.size(t.type_id.unwrap()),
            _ => t
                .size
                .unwrap_or_else(|| panic!("type {} has no size", t.id)),
        }
    }

    /// Member `name` of composite `t`, also inside anonymous members: (bit offset, member).
    fn member<'a>(&'a self, t: &'a RawType, name: &str) -> Option<(u32, &'a RawMember)> {
        for m in &t.members {
            if m.name == name {
                return Some((m.bits_offset, m));
            }
            if m.name == ANON {
                let inner = self.resolve(m.type_id);
                if let Some((bits, found)) = self.member(inner, name) {
                    return Some((m.bits_offset + bits, found));
                }
            }
        }
        None
    }

    /// Byte offset and size of a dotted path in the composite with id `root`; `None` when
    /// absent or not byte-addressable (a bitfield).
    fn field(&self, root: u32, path: &str) -> Option<Field> {
        let mut t = self.ty(root);
        let mut bits = 0;
        let mut last: Option<&RawMember> = None;
        for part in path.split('.') {
            if let Some(m) = last {
                t = self.resolve(m.type_id);
            }
            let (rel, m) = self.member(t, part)?;
            bits += rel;
            last = Some(m);
        }
        let m = last?;
        let int = self.resolve(m.type_id);
        let int_bitfield = int.kind == "INT"
            && (int.nr_bits != int.size.map(|s| s * 8) || int.bits_offset != Some(0));
        if m.bitfield_size != 0 || int_bitfield || bits % 8 != 0 {
            return None;
        }
        Some(Field {
            offset: bits / 8,
            size: self.size(m.type_id),
        })
    }

    /// [`Bpftool::field`] in the struct or union named `name`, when the name is unique.
    fn field_in(&self, name: &str, path: &str) -> Option<Field> {
        match self.composites.get(name)?.as_slice() {
            [id] => self.field(*id, path),
            _ => None,
        }
    }
}

#[test]
#[cfg_attr(
    not(tcpstall_ci),
    ignore = "needs bpftool and the running kernel's BTF; runs under CI=true (`cargo xtask \
              test` installs bpftool)"
)]
fn offsets_agree_with_bpftool() {
    let bytes =
        std::fs::read(DEFAULT_VMLINUX_BTF).unwrap_or_else(|e| panic!("{DEFAULT_VMLINUX_BTF}: {e}"));
    let btf = Btf::parse(&bytes).unwrap();
    let tool = Bpftool::load(DEFAULT_VMLINUX_BTF);

    // The fields the eBPF programs read: the first path bpftool finds is the one used.
    let mut ours = offsets_from_btf(&btf).expect("running kernel is supported");
    assert_eq!(ours.magic, Offsets::MAGIC);
    for spec in OFFSET_SPECS {
        let (path, theirs) = spec
            .paths
            .iter()
            .find_map(|p| tool.field_in(spec.struct_name, p).map(|f| (p, f)))
            .unwrap_or_else(|| panic!("bpftool finds no {}.{:?}", spec.struct_name, spec.paths));
        assert_eq!(
            *(spec.slot)(&mut ours),
            theirs.offset,
            "{} ({}.{path})",
            spec.name,
            spec.struct_name
        );
        assert_eq!(
            spec.size, theirs.size,
            "{} ({}.{path})",
            spec.name, spec.struct_name
        );
    }
    for &(outer, member) in CONTAINMENT {
        assert_eq!(tool.field_in(outer, member).map(|f| f.offset), Some(0));
    }

    // Every member of every uniquely named struct and union, as a broader check of the
    // reader: same offset and size, or refused by both (bitfields).
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for (name, ids) in &tool.composites {
        let [id] = ids.as_slice() else { continue };
        for m in &tool.ty(*id).members {
            if m.name == ANON {
                continue;
            }
            let theirs = tool.field(*id, &m.name);
            let mine = btf.field(name, &m.name).ok();
            checked += 1;
            if mine != theirs {
                mismatches.push(format!(
                    "{name}.{}: ours {mine:?}, bpftool {theirs:?}",
                    m.name
                ));
            }
        }
    }
    eprintln!("{checked} members compared with bpftool");
    assert!(checked > 10_000, "only {checked} members compared");
    assert!(
        mismatches.is_empty(),
        "{} of {checked} members differ, e.g.:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
}
