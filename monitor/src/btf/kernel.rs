//! The running kernel: its release (`uname -r`) and its BTF at [`DEFAULT_VMLINUX_BTF`].

use super::offsets::{offsets_from_btf, OFFSET_SPECS};
use super::*;
use anyhow::{Context, Result};
use monitor_common::Offsets;
use std::path::Path;
use std::time::Instant;

/// The running kernel's release (`uname -r`), if it can be read.
pub fn uname_release() -> Option<String> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    (!release.is_empty()).then_some(release)
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
