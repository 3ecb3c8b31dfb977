//! Builds the eBPF programs (crate monitor-ebpf) with aya-build and embeds the object.
//!
//! The eBPF crate is compiled by the nightly toolchain of `monitor-ebpf/rust-toolchain.toml`
//! and linked by `<repo>/.tools/bin/bpf-linker` (both set up by `cargo xtask bootstrap`), on
//! every build whose eBPF sources changed, so the agent never embeds a stale object.
//! `TCPSTALL_EBPF_OBJ=<file>` embeds that file instead. When the toolchain, its rust-src or
//! bpf-linker is missing the agent still compiles (so pure-logic unit tests run anywhere), with
//! a warning, and says at run time what to do; a compile error in the eBPF code fails the build.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The eBPF package, and its bin target (the object's file name in `OUT_DIR`).
const EBPF_PACKAGE: &str = "monitor-ebpf";
const EBPF_BIN: &str = "monitor";

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    println!("cargo:rustc-check-cfg=cfg(tcpstall_ebpf_obj)");
    // Tests that need a tool `cargo xtask test` installs run under CI=true (and fail there when
    // it is missing) and are ignored elsewhere, so a skip shows as one.
    println!("cargo:rerun-if-env-changed=CI");
    let ci = std::env::var("CI").as_deref() == Ok("true");
    println!("cargo:rustc-check-cfg=cfg(tcpstall_ci)");
    if ci {
        println!("cargo:rustc-cfg=tcpstall_ci");
    }
    // Tests that need root are ignored unless built as root or under CI=true (where a test
    // that cannot run must fail); /proc/self belongs to the effective uid reading it.
    println!("cargo:rustc-check-cfg=cfg(root_tests)");
    let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if is_root || ci {
        println!("cargo:rustc-cfg=root_tests");
    }

    println!("cargo:rerun-if-env-changed=TCPSTALL_EBPF_OBJ");
    let obj = match std::env::var_os("TCPSTALL_EBPF_OBJ") {
        Some(given) => {
            let obj = PathBuf::from(given);
            println!("cargo:rerun-if-changed={}", obj.display());
            obj.exists().then_some(obj)
        }
        None => build_ebpf(&root),
    };
    if let Some(obj) = obj {
        println!("cargo:rustc-cfg=tcpstall_ebpf_obj");
        println!("cargo:rustc-env=TCPSTALL_EBPF_OBJ_PATH={}", obj.display());
    }
}

/// Builds monitor-ebpf into `OUT_DIR`; `None` (after a cargo warning) when it cannot be built.
fn build_ebpf(root: &Path) -> Option<PathBuf> {
    let ebpf_dir = root.join(EBPF_PACKAGE);
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    let tools_bin = root.join(".tools/bin");
    let linker = tools_bin.join("bpf-linker");
    // aya-build reruns us when monitor-ebpf changes; the shared types live in monitor-common.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("monitor-common").display()
    );
    println!("cargo:rerun-if-changed={}", linker.display());
    let skip = |why: String| {
        println!(
            "cargo:warning=building the agent without its eBPF programs: {why}; run \
             `cargo xtask build-ebpf` to set up the toolchain and build them"
        );
        None
    };
    let channel = match read_channel(&toolchain_file) {
        Ok(c) => c,
        Err(e) => return skip(e),
    };
    if !linker.is_file() {
        return skip(format!("{} does not exist", linker.display()));
    }
    // Never let a rustup proxy download a toolchain behind our back (here and in aya-build).
    std::env::set_var("RUSTUP_AUTO_INSTALL", "0");
    let sysroot = Command::new("rustup")
        .args(["run", &channel, "rustc", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else {
        return skip(format!(
            "the `{channel}` toolchain (rustup) is not installed"
        ));
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return skip(format!(
            "the `{channel}` toolchain has no rust-src component"
        ));
    }
    // aya-build runs cargo with the inherited environment: bpf-linker must be on PATH, and
    // the release profile gets what a package override cannot set.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(tools_bin).chain(std::env::split_paths(&path)))
        .expect("PATH entries hold no ':'");
    std::env::set_var("PATH", path);
    std::env::set_var("CARGO_PROFILE_RELEASE_LTO", "true");
    std::env::set_var("CARGO_PROFILE_RELEASE_PANIC", "abort");
    // aya-build turns every line the inner cargo prints into a warning; keep only diagnostics.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    let package = aya_build::Package {
        name: EBPF_PACKAGE,
        root_dir: ebpf_dir.to_str().expect("the repository path is UTF-8"),
        ..Default::default()
    };
    let obj = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join(EBPF_BIN);
    // Never embed the object of an earlier run (AYA_BUILD_SKIP makes aya-build do nothing).
    let _ = std::fs::remove_file(&obj);
    // With the tools in place a failure is the eBPF code's: fail like any compile error.
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&channel)) {
        panic!(
            "building the eBPF programs (crate monitor-ebpf) failed: {e:#}\n(the compiler's \
             messages are the warnings above; if the `{channel}` toolchain changed, \
             `cargo xtask bootstrap` rebuilds bpf-linker for it)"
        );
    }
    if !obj.is_file() {
        return skip(format!("the eBPF build produced no {}", obj.display()));
    }
    Some(obj)
}

/// The `toolchain.channel` of a `rust-toolchain.toml`.
fn read_channel(file: &Path) -> Result<String, String> {
    println!("cargo:rerun-if-changed={}", file.display());
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("cannot parse {}: {e}", file.display()))?;
    doc.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("{} has no toolchain.channel", file.display()))
}
