//! Toolchain set-up for the eBPF build, and the environment hygiene every child build needs.
//!
//! The eBPF crate is built (by `monitor/build.rs`, through aya-build) with the *nightly*
//! toolchain pinned in `monitor-ebpf/rust-toolchain.toml` (`-Z build-std=core` for
//! `bpfel-unknown-none`) and linked by `bpf-linker`, which must be built against that
//! toolchain's own shared LLVM; `.tools/bpf-linker.rustc` records which one it was built with. Everything installed here lives in the repository's gitignored
//! `.tools/` folder or in the nightly toolchain itself; nothing touches the system.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{capture, describe, run, say};

/// The toolchain file that pins the nightly building the eBPF crate (relative to the repo).
pub const TOOLCHAIN_FILE: &str = "monitor-ebpf/rust-toolchain.toml";

/// The `toolchain.channel` of a `rust-toolchain.toml`'s text.
pub fn parse_channel(text: &str) -> Result<String> {
    let doc: toml_edit::DocumentMut = text.parse()?;
    doc.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .context("no `toolchain.channel` string")
}

/// The rustup toolchain that builds the eBPF crate: the channel of [`TOOLCHAIN_FILE`].
pub fn nightly() -> Result<&'static str> {
    static CHANNEL: OnceLock<String> = OnceLock::new();
    if let Some(c) = CHANNEL.get() {
        return Ok(c);
    }
    let file = crate::repo_root().join(TOOLCHAIN_FILE);
    let text =
        fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let channel = parse_channel(&text).with_context(|| format!("in {}", file.display()))?;
    Ok(CHANNEL.get_or_init(|| channel))
}

/// The bpf-linker release the eBPF build is known to work with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Paths of the repository-local tool folder (`<repo>/.tools`, gitignored).
pub struct Tools {
    /// `<repo>/.tools`: the `cargo install --root`.
    pub root: PathBuf,
}

impl Tools {
    /// The tool folder of the repository at `repo`.
    pub fn new(repo: &Path) -> Self {
        Tools {
            root: repo.join(".tools"),
        }
    }

    /// `<repo>/.tools/bin`, which must be on `PATH` for the eBPF build so rustc finds bpf-linker.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// `<repo>/.tools/bin/bpf-linker`.
    pub fn bpf_linker(&self) -> PathBuf {
        self.bin_dir().join("bpf-linker")
    }

    /// `<repo>/.tools/bpf-linker.rustc`: `rustc -V` of the toolchain bpf-linker was built against.
    pub fn built_against(&self) -> PathBuf {
        self.root.join("bpf-linker.rustc")
    }

    /// `<repo>/.tools/llvm`: the `LLVM_PREFIX` bpf-linker is built against. Its only content is
    /// `lib/libLLVM.so`, a symlink to the nightly toolchain's shared LLVM.
    pub fn llvm_prefix(&self) -> PathBuf {
        self.root.join("llvm")
    }
}

/// Makes sure the nightly toolchain, its `rust-src` component and bpf-linker are in place.
///
/// Idempotent: when everything is already installed this only runs three quick queries.
pub fn bootstrap(repo: &Path) -> Result<()> {
    let nightly = nightly_info()?;
    ensure_rust_src()?;
    ensure_bpf_linker(&Tools::new(repo), &nightly)?;
    Ok(())
}

/// What `rustc -vV` of the nightly toolchain says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RustcInfo {
    /// The first line, e.g. `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`: names one build.
    pub version: String,
    /// The `release:` line, e.g. `1.97.0-nightly`.
    pub release: String,
    /// The `LLVM version:` line as (major, minor), e.g. (22, 1).
    pub llvm: (u32, u32),
}

/// Parses the output of `rustc -vV`.
pub fn parse_rustc_vv(text: &str) -> Result<RustcInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .with_context(|| format!("no `{name}` line in `rustc -vV` output:\n{text}"))
    };
    let version = text.lines().next().unwrap_or_default().trim().to_string();
    let release = field("release:")?.to_string();
    let llvm_text = field("LLVM version:")?;
    let mut parts = llvm_text.split('.');
    let mut number = |what: &str| -> Result<u32> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("cannot read the LLVM {what} version from `{llvm_text}`"))
    };
    let major = number("major")?;
    let minor = number("minor")?;
    Ok(RustcInfo {
        version,
        release,
        llvm: (major, minor),
    })
}

fn nightly_info() -> Result<RustcInfo> {
    let nightly = nightly()?;
    let mut cmd = rustup_run_nightly("rustc")?;
    cmd.arg("-vV");
    let text = capture(&mut cmd).with_context(|| {
        format!(
            "the `{nightly}` toolchain ({TOOLCHAIN_FILE}) is needed to build the eBPF programs \
             but does not work here; install it with `rustup toolchain install {nightly} \
             --profile minimal --component rust-src --no-self-update`"
        )
    })?;
    parse_rustc_vv(&text)
}

/// `rustup run <nightly> <program>` with an environment that selects nothing else.
///
/// `rustup run` (unlike the `cargo +nightly` proxy shorthand) works whatever `cargo`/`rustc`
/// come first on `PATH`, and never installs a missing toolchain.
pub fn rustup_run_nightly(program: &str) -> Result<Command> {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", nightly()?, program]);
    isolate(&mut cmd);
    Ok(cmd)
}

/// Whether `rustup component list --installed` output lists `rust-src`.
pub fn lists_rust_src(installed: &str) -> bool {
    installed
        .lines()
        .map(str::trim)
        .any(|l| l == "rust-src" || l.starts_with("rust-src-"))
}

fn ensure_rust_src() -> Result<()> {
    let nightly = nightly()?;
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed", "--toolchain", nightly]);
    isolate(&mut list);
    if lists_rust_src(&capture(&mut list)?) {
        return Ok(());
    }
    say(&format!(
        "installing the `rust-src` component of the `{nightly}` toolchain \
         (needed by `-Z build-std=core`)"
    ));
    // `rustup component add` has no `--no-self-update` flag because it never self-updates;
    // only `rustup update` and `rustup toolchain install` do, and xtask runs neither.
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", nightly]);
    isolate(&mut add);
    run(&mut add).context(
        "could not install rust-src; it is downloaded from static.rust-lang.org, so check \
         that this machine can reach it",
    )
}

/// Reads the version out of `bpf-linker --version` output (`bpf-linker 0.13.0`).
pub fn parse_bpf_linker_version(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    (words.next() == Some("bpf-linker"))
        .then(|| words.next())
        .flatten()
}

/// The installed bpf-linker's version, or why it cannot be used.
fn installed_bpf_linker(tools: &Tools) -> std::result::Result<String, String> {
    let bin = tools.bpf_linker();
    if !bin.exists() {
        return Err(format!("{} does not exist", bin.display()));
    }
    let mut cmd = Command::new(&bin);
    cmd.arg("--version");
    clean_cargo_run_env(&mut cmd);
    match cmd.output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            parse_bpf_linker_version(&text)
                .map(str::to_string)
                .ok_or_else(|| format!("`{} --version` printed `{}`", bin.display(), text.trim()))
        }
        Ok(out) => Err(format!(
            "`{} --version` failed ({}); it was probably built against an LLVM the nightly \
             toolchain no longer ships: {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", bin.display())),
    }
}

/// Picks the nightly toolchain's shared LLVM among the file names in `<sysroot>/lib`:
/// `libLLVM.so.<major>.<minor>-rust-*`.
pub fn pick_libllvm<'a>(
    names: impl IntoIterator<Item = &'a str>,
    (major, minor): (u32, u32),
) -> Result<&'a str> {
    let prefix = format!("libLLVM.so.{major}.{minor}-rust-");
    let found: Vec<&str> = names
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => bail!("no `{prefix}*` in the nightly toolchain's lib folder"),
        many => bail!(
            "several candidates for the nightly LLVM: {}",
            many.join(", ")
        ),
    }
}

/// Whether bpf-linker in `tools` was built against the toolchain `nightly` describes: per
/// `.tools/bpf-linker.rustc`, or, for an install older than that record, per the libLLVM link
/// it loads (release and LLVM version; the record is then written).
fn built_for(tools: &Tools, nightly: &RustcInfo) -> std::result::Result<(), String> {
    let stamp = tools.built_against();
    if let Ok(text) = fs::read_to_string(&stamp) {
        return if text.trim() == nightly.version {
            Ok(())
        } else {
            Err(format!("it was built against `{}`", text.trim()))
        };
    }
    let names: Vec<String> = fs::read_dir(tools.llvm_prefix().join("lib"))
        .map_err(|e| format!("cannot list {}: {e}", tools.llvm_prefix().display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let linked = pick_libllvm(names.iter().map(String::as_str), nightly.llvm)
        .map_err(|e| format!("{e:#} (in {})", tools.llvm_prefix().display()))?;
    if !linked.ends_with(&format!("-rust-{}", nightly.release)) {
        return Err(format!("it loads {linked}"));
    }
    fs::write(&stamp, format!("{}\n", nightly.version))
        .map_err(|e| format!("cannot write {}: {e}", stamp.display()))
}

fn ensure_bpf_linker(tools: &Tools, nightly: &RustcInfo) -> Result<()> {
    match installed_bpf_linker(tools) {
        Ok(v) if v == BPF_LINKER_VERSION => match built_for(tools, nightly) {
            Ok(()) => return Ok(()),
            Err(why) => say(&format!(
                "bpf-linker in {} must match the eBPF toolchain ({TOOLCHAIN_FILE}: `{}`), but \
                 {why}; rebuilding it",
                tools.bin_dir().display(),
                nightly.version
            )),
        },
        Ok(v) => say(&format!(
            "bpf-linker {v} is installed in {}, but {BPF_LINKER_VERSION} is needed; rebuilding it",
            tools.bin_dir().display()
        )),
        Err(why) => say(&format!("bpf-linker {BPF_LINKER_VERSION} is needed: {why}")),
    }
    let started = Instant::now();

    // LLVM_PREFIX/lib/libLLVM.so -> the nightly toolchain's own libLLVM, so bpf-linker emits
    // code with the very LLVM rustc uses.
    let mut sysroot_cmd = rustup_run_nightly("rustc")?;
    sysroot_cmd.args(["--print", "sysroot"]);
    let sysroot = PathBuf::from(capture(&mut sysroot_cmd)?.trim());
    let lib_dir = sysroot.join("lib");
    let names: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let libllvm = lib_dir.join(
        pick_libllvm(names.iter().map(String::as_str), nightly.llvm).with_context(|| {
            format!(
                "cannot find the shared LLVM of the {} toolchain ({}, LLVM {}.{}) in {}",
                nightly.version,
                nightly.release,
                nightly.llvm.0,
                nightly.llvm.1,
                lib_dir.display()
            )
        })?,
    );
    let link_dir = tools.llvm_prefix().join("lib");
    link_libllvm(&link_dir, &libllvm)?;

    let feature = format!("llvm-{}", nightly.llvm.0);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut install = Command::new(cargo);
    install
        .arg("install")
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(&feature)
        .arg("--root")
        .arg(&tools.root)
        .current_dir(&tools.root);
    // The install is an ordinary host build with the same toolchain as the outer cargo; only
    // flags that would steer it somewhere else are dropped.
    let toolchain = std::env::var_os("RUSTUP_TOOLCHAIN");
    isolate(&mut install);
    if let Some(t) = toolchain {
        install.env("RUSTUP_TOOLCHAIN", t);
    }
    install
        .env("LLVM_PREFIX", tools.llvm_prefix())
        // Find libLLVM through .tools/llvm/lib relative to the binary, so .tools keeps working
        // when copied elsewhere (llvm-sys itself only adds the absolute LLVM_PREFIX/lib).
        .env("RUSTFLAGS", "-C link-arg=-Wl,-rpath,$ORIGIN/../llvm/lib")
        // A linker needs no debug info of its own; leaving it out makes the build faster.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} ({feature}) into {} (about a minute)",
        tools.root.display()
    ));
    run(&mut install).with_context(|| {
        format!(
            "building bpf-linker failed; it needs crates.io and the {} toolchain's \
             libLLVM ({})",
            nightly.version,
            libllvm.display()
        )
    })?;

    match installed_bpf_linker(tools) {
        Ok(v) if v == BPF_LINKER_VERSION => {
            let stamp = tools.built_against();
            fs::write(&stamp, format!("{}\n", nightly.version))
                .with_context(|| format!("cannot write {}", stamp.display()))?;
            say(&format!(
                "bpf-linker {v} ready in {:.0?}",
                started.elapsed()
            ));
            Ok(())
        }
        Ok(v) => bail!(
            "`{}` installed bpf-linker {v}, not {BPF_LINKER_VERSION}",
            describe(&install)
        ),
        Err(why) => bail!("bpf-linker was built but cannot be used: {why}"),
    }
}

/// Fills `link_dir` (`LLVM_PREFIX/lib`) with symlinks to the nightly toolchain's `libllvm`:
/// `libLLVM.so` for building bpf-linker, and one under libllvm's own file name (its soname) so
/// the built binary finds it through its runpath. Stale links from older toolchains go.
fn link_libllvm(link_dir: &Path, libllvm: &Path) -> Result<()> {
    fs::create_dir_all(link_dir)
        .with_context(|| format!("cannot create {}", link_dir.display()))?;
    for entry in
        fs::read_dir(link_dir).with_context(|| format!("cannot list {}", link_dir.display()))?
    {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM"))
        {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [OsStr::new("libLLVM.so"), soname] {
        let link = link_dir.join(name);
        std::os::unix::fs::symlink(libllvm, &link).with_context(|| {
            format!("cannot symlink {} -> {}", link.display(), libllvm.display())
        })?;
        say(&format!("{} -> {}", link.display(), libllvm.display()));
    }
    Ok(())
}

/// Variables the outer `cargo run` sets for xtask itself; meaningless (or misleading) for any
/// program xtask starts.
const CARGO_RUN_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
];
const CARGO_RUN_PREFIXES: &[&str] = &["CARGO_PKG_"];

/// Variables that select a toolchain or steer a compilation. They are right for the outer
/// (stable) cargo and wrong for the nightly eBPF build and the bpf-linker build.
const TOOLCHAIN_VARS: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_BOOTSTRAP",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_MAKEFLAGS",
];
const TOOLCHAIN_PREFIXES: &[&str] = &["CARGO_BUILD_", "CARGO_TARGET_", "CARGO_PROFILE_"];

/// Removes from `LD_LIBRARY_PATH` (a `:`-separated list) every entry under one of `drop`.
/// Returns `None` when nothing is left.
pub fn filter_library_path(value: &OsStr, drop: &[PathBuf]) -> Option<std::ffi::OsString> {
    let kept: Vec<PathBuf> = std::env::split_paths(value)
        .filter(|p| !p.as_os_str().is_empty() && !drop.iter().any(|d| p.starts_with(d)))
        .collect();
    if kept.is_empty() {
        None
    } else {
        std::env::join_paths(kept).ok()
    }
}

/// Undoes what the outer `cargo run` added to xtask's environment: its package variables and
/// the `LD_LIBRARY_PATH` entries pointing into the target folder and the outer toolchain.
pub fn clean_cargo_run_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if CARGO_RUN_VARS.contains(&key) || CARGO_RUN_PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }
    if let Some(value) = std::env::var_os("LD_LIBRARY_PATH") {
        let mut drop = vec![crate::repo_root().join("target")];
        if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
            drop.push(PathBuf::from(dir));
        }
        // $CARGO is <toolchain>/bin/cargo; cargo run adds <toolchain>/lib and below.
        if let Some(toolchain) = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .and_then(|c| c.parent()?.parent().map(Path::to_path_buf))
        {
            drop.push(toolchain);
        }
        match filter_library_path(&value, &drop) {
            Some(v) => cmd.env("LD_LIBRARY_PATH", v),
            None => cmd.env_remove("LD_LIBRARY_PATH"),
        };
    }
}

/// [`clean_cargo_run_env`], and also drops every variable that would make a child cargo or
/// rustc use the outer toolchain or its flags.
pub fn isolate(cmd: &mut Command) {
    clean_cargo_run_env(cmd);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if TOOLCHAIN_VARS.contains(&key) || TOOLCHAIN_PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }
    // Never let a rustup proxy download a toolchain behind our back.
    cmd.env("RUSTUP_AUTO_INSTALL", "0");
}

#[cfg(test)]
mod tests {
    use super::*;

    const VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
        commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\ncommit-date: 2026-05-19\n\
        host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";

    #[test]
    fn reads_rustc_vv() {
        let info = parse_rustc_vv(VV).unwrap();
        assert_eq!(info.version, "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)");
        assert_eq!(info.release, "1.97.0-nightly");
        assert_eq!(info.llvm, (22, 1));
    }

    #[test]
    fn rustc_vv_without_llvm_is_an_error() {
        let err = parse_rustc_vv("release: 1.97.0-nightly\n").unwrap_err();
        assert!(err.to_string().contains("LLVM version"), "{err}");
        let err = parse_rustc_vv("release: 1\nLLVM version: x.y\n").unwrap_err();
        assert!(err.to_string().contains("major"), "{err}");
    }

    #[test]
    fn reads_the_pinned_channel() {
        let text = "# pinned\n[toolchain]\nchannel = \"nightly-2026-05-19\"\n";
        assert_eq!(parse_channel(text).unwrap(), "nightly-2026-05-19");
        assert!(parse_channel("[toolchain]\n").is_err());
        let repo_file = fs::read_to_string(crate::repo_root().join(TOOLCHAIN_FILE)).unwrap();
        assert_eq!(parse_channel(&repo_file).unwrap(), "nightly");
    }

    #[test]
    fn finds_rust_src() {
        assert!(lists_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!lists_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n"
        ));
    }

    #[test]
    fn reads_bpf_linker_version() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n"),
            Some("0.13.0")
        );
        assert_eq!(parse_bpf_linker_version("something 0.13.0"), None);
        assert_eq!(parse_bpf_linker_version(""), None);
    }

    #[test]
    fn picks_the_rust_libllvm() {
        let names = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-b5a965480ee51f9a.so",
        ];
        assert_eq!(
            pick_libllvm(names, (22, 1)).unwrap(),
            "libLLVM.so.22.1-rust-1.97.0-nightly"
        );
        assert!(pick_libllvm(names, (23, 1)).is_err());
        let two = ["libLLVM.so.22.1-rust-a", "libLLVM.so.22.1-rust-b"];
        assert!(pick_libllvm(two, (22, 1))
            .unwrap_err()
            .to_string()
            .contains("several"));
    }

    #[test]
    fn drops_cargo_run_library_paths() {
        let drop = [
            PathBuf::from("/repo/target"),
            PathBuf::from("/r/toolchains/stable"),
        ];
        let value = OsStr::new(
            "/repo/target/debug:/repo/target/debug/deps:/opt/lib:\
             /r/toolchains/stable/lib:/r/toolchains/stable-other/lib",
        );
        assert_eq!(
            filter_library_path(value, &drop).unwrap(),
            "/opt/lib:/r/toolchains/stable-other/lib"
        );
        assert_eq!(
            filter_library_path(OsStr::new("/repo/target/debug"), &drop),
            None
        );
    }
}
