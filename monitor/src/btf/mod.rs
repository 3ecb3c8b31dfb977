//! Kernel structure field offsets from the running kernel's BTF.
//!
//! The eBPF programs are written in Rust, which emits no CO-RE relocations, so every field
//! they read from `struct sock`, `struct tcp_sock`, ... must be told to them at load time.
//! At start-up the agent reads `/sys/kernel/btf/vmlinux` (present when the kernel was built
//! with `CONFIG_DEBUG_INFO_BTF=y`), looks up each field with [`Btf::field`], checks that its
//! size is what the programs read, and hands the result ([`monitor_common::Offsets`]) to the
//! programs as a global.
//!
//! The parser (`parse.rs`) is small and self-contained. It follows the format in the kernel's
//! `include/uapi/linux/btf.h`: a header, a type section of `struct btf_type` records each
//! followed by kind-specific data, and a string section. Only little-endian BTF is accepted
//! (the byte order of every machine this agent targets). `lookup.rs` finds struct members and
//! names, `params.rs` renders and checks hook prototypes, `offsets.rs` holds the table of the
//! fields the eBPF programs read, `kernel.rs` reads the running kernel's BTF.

#[cfg(test)]
mod cross_check;
mod kernel;
mod lookup;
mod offsets;
mod params;
mod parse;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timing;

pub use kernel::{kernel_release, load_kernel, load_offsets, load_offsets_from, uname_release};
pub use params::{check_params, Shape, Site};
pub use parse::Btf;

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
