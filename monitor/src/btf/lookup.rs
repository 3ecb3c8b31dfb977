//! Lookups in parsed BTF: struct members by (dotted) path with their byte offsets and sizes,
//! type resolution through typedefs and qualifiers, the FUNC/TYPEDEF name index, and "similar
//! names" suggestions for error messages.

use super::params::TRACEPOINT_TYPEDEF_PREFIX;
use super::parse::{Kind, Member, Type};
use super::*;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::fmt::Write as _;

/// Function and typedef names: (hash of the name, type id), sorted. Built without copying
/// or allocating per name (vmlinux has some 56k functions); a lookup hashes the wanted
/// name, binary-searches and compares the candidates' names, so hash collisions are
/// harmless and names that are not unique (which deduplicated vmlinux BTF avoids but a blob
/// may contain) yield every id.
#[derive(Default)]
pub(super) struct NameIndex {
    pub(super) funcs: Vec<(u64, u32)>,
    pub(super) typedefs: Vec<(u64, u32)>,
}

impl Btf {
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

    pub(super) fn ty(&self, id: u32) -> Result<&Type> {
        self.types.get(id as usize).ok_or_else(|| {
            anyhow!(
                "corrupt BTF: reference to type id {id}, but only {} types exist (split BTF \
                 such as a module's needs its base vmlinux BTF, which this parser does not load)",
                self.types.len() - 1
            )
        })
    }

    /// Follows typedef/const/volatile/restrict/type-tag references to the underlying type.
    pub(super) fn resolve(&self, mut id: u32) -> Result<u32> {
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
    pub(super) fn describe(&self, id: u32) -> String {
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

    /// Type ids of the FUNCs named like a function site, or of the `btf_trace_<name>`
    /// TYPEDEFs for a tracepoint site.
    pub(super) fn site_ids(&self, site: Site) -> Result<Vec<u32>> {
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
}

/// FNV-1a, 64-bit: fast on the short identifiers BTF names are.
fn name_hash<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
            let d = strsim::levenshtein(wanted, n);
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
