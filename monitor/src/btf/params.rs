//! Hook prototypes: the parameter types of BTF tracepoints and kernel functions
//! ([`Btf::params`]) and the check of those against what a hook's eBPF programs read
//! ([`check_params`]).

use super::parse::Kind;
use super::*;
use anyhow::{anyhow, bail, ensure, Context, Result};

/// Prefix of the typedef the kernel emits for every BTF-enabled tracepoint `<name>`:
/// `typedef void (*btf_trace_<name>)(void *__data, <tracepoint arguments>)`.
pub(super) const TRACEPOINT_TYPEDEF_PREFIX: &str = "btf_trace_";

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
pub(super) fn normalize_type(ty: &str) -> String {
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
