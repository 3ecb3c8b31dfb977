//! `cargo xtask vm-test`: the kernel matrix. Boots Debian's stock cloud kernels (Debian 11,
//! 12, 13 and the newest trixie-backports kernel) under QEMU (TCG, no KVM needed) with a
//! small initramfs that holds the agent and the guest test (`tests/tests/kernels.rs`), and
//! reports per kernel: release, result, scenario results and the attach method of every hook.
//!
//! Kernel packages come from Debian's archive through a private apt configuration under
//! [`CACHE`] (its own sources.list, lists and archives; the host's apt sources are never
//! touched). Downloads and extractions are cached there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
// The hooks of `agent_started.hooks`, in table order.
use monitor_common::HOOK_NAMES as HOOKS;
use serde_json::{json, Value};

use crate::{capture, run, say};

/// Where kernel packages, apt state and extracted kernels are cached.
pub const CACHE: &str = "/var/cache/tcpstall-vm";
/// Host packages the matrix needs.
pub const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    "nftables",
    "iproute2",
    "debian-archive-keyring",
];
/// Debian's archive (the only registry reachable from CI machines).
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// apt lists older than this are refreshed.
const LISTS_MAX_AGE: Duration = Duration::from_secs(6 * 3600);
/// How many package builds of one kernel line are tried, newest first, before giving up
/// (the newest names of an old release can be listed but already gone from the pool).
const MAX_TRIES: usize = 6;
/// Hard limit of one guest run.
const GUEST_TIMEOUT: Duration = Duration::from_secs(8 * 60);
/// Guest memory (MiB).
const GUEST_MEM: &str = "1536";
/// Kernel modules put into the guest (their dependencies come along): sock_diag for resets,
/// veth for the namespace links, nftables for the dead-peer blackhole.
const MODULES: &[&str] = &["inet_diag", "tcp_diag", "veth", "nf_tables"];
/// Of those, the ones the agent loads itself (with `modprobe`) at start-up: /init leaves
/// them alone, so every guest checks the agent's module loading too.
const AGENT_LOADS: &[&str] = &["inet_diag", "tcp_diag"];
/// Host programs copied into the initramfs with their shared libraries.
const HOST_PROGRAMS: &[&str] = &["ip", "nft", "ss"];
/// Marker of the lines the guest's /init prints.
const MARK: &str = "TCPSTALL-VM";

/// How one kernel line's packages are named and what the agent must attach there.
#[derive(Debug)]
struct Line {
    /// Short id, also the `--kernel` filter target.
    id: &'static str,
    debian: &'static str,
    /// The kernel image package: `prefix` + middle + `suffix`, `middle` checked by `mid`.
    prefix: &'static str,
    suffix: &'static str,
    mid: fn(&str) -> bool,
    /// Since 7.x the image package is split: the kernel binary is in
    /// `linux-binary-unsigned-<release>`, the modules in `linux-modules-<release>`. Some(..)
    /// gives the modules package prefix; the release is the name without `prefix`.
    modules_prefix: Option<&'static str>,
    /// `TCPSTALL_EXPECT_ATTACH` for the guest test.
    expect: &'static str,
    /// Extra environment of the guest test and the agents it starts (e.g. the
    /// `TCPSTALL_ATTACH=kprobe` testing knob); empty for none.
    env: &'static str,
}

/// The default (no per-write hooks, no read hook) where fentry exists: the blocked-write
/// companion on fentry.
const EXPECT_FENTRY: &str = "send=-,send_wait=fentry/sk_stream_wait_memory,send_pages=-,\
ack=tp_btf/tcp_probe,retransmit=tp_btf/tcp_retransmit_skb,read=-,\
state=tp_btf/inet_sock_set_state,timer=-";
/// Every hook with a kernel function on kprobes (`TCPSTALL_ATTACH=kprobe`), as on a kernel
/// without fentry, with the per-write and read hooks on (`TCPSTALL_PER_WRITE_HOOKS=1`,
/// `TCPSTALL_READ_HOOK=1`); `state` stays on its tracepoint.
const EXPECT_KPROBE: &str =
    "send=kprobe/tcp_sendmsg_locked,send_wait=kprobe/sk_stream_wait_memory,\
send_pages=kprobe/do_tcp_sendpages,ack=kprobe/tcp_rcv_established,\
retransmit=kprobe/tcp_retransmit_skb,read=kprobe/tcp_rcv_space_adjust,\
state=tp_btf/inet_sock_set_state,timer=-";
/// Tracepoints only, with the per-write and read hooks on (`TCPSTALL_PER_WRITE_HOOKS=1`,
/// `TCPSTALL_READ_HOOK=1`): the send tracepoint, which also fires inside a blocked write.
const EXPECT_TP: &str = "send=tp_btf/tcp_sendmsg_locked,send_wait=-,send_pages=-,\
ack=tp_btf/tcp_probe,retransmit=tp_btf/tcp_retransmit_skb,read=tp_btf/tcp_rcv_space_adjust,\
state=tp_btf/inet_sock_set_state,timer=-";
/// Trouble-only hooks (`TCPSTALL_TROUBLE_HOOKS=1`, `--trouble-hooks`): no per-packet hook;
/// the TCP write timer's expiries, retransmits and state changes.
pub const EXPECT_TROUBLE: &str = "send=-,send_wait=-,send_pages=-,ack=-,\
retransmit=tp_btf/tcp_retransmit_skb,read=-,state=tp_btf/inet_sock_set_state,\
timer=tp_btf/timer_expire_entry";

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `118+deb13` or `115+deb13.1`.
fn deb13_patch(s: &str) -> bool {
    match s.split_once("+deb13") {
        Some((n, rest)) => {
            digits(n) && (rest.is_empty() || rest.strip_prefix('.').is_some_and(digits))
        }
        None => false,
    }
}

/// `3.4+deb13` (a 7.x minor and patch).
fn seven_x(s: &str) -> bool {
    match s.strip_suffix("+deb13") {
        Some(v) => {
            let parts: Vec<&str> = v.split('.').collect();
            parts.len() == 2 && parts.iter().all(|p| digits(p))
        }
        None => false,
    }
}

const DEBIAN_12: Line = Line {
    id: "6.1",
    debian: "Debian 12 (bookworm)",
    prefix: "linux-image-6.1.0-",
    suffix: "-cloud-amd64-unsigned",
    mid: digits,
    modules_prefix: None,
    expect: EXPECT_FENTRY,
    env: "",
};

const DEBIAN_11: Line = Line {
    id: "5.10",
    debian: "Debian 11 (bullseye)",
    prefix: "linux-image-5.10.0-",
    suffix: "-cloud-amd64-unsigned",
    mid: digits,
    modules_prefix: None,
    expect: EXPECT_FENTRY,
    env: "",
};

const DEBIAN_13: Line = Line {
    id: "6.12",
    debian: "Debian 13 (trixie)",
    prefix: "linux-image-6.12.",
    suffix: "-cloud-amd64-unsigned",
    mid: deb13_patch,
    modules_prefix: None,
    expect: EXPECT_FENTRY,
    env: "",
};

const LINES: &[Line] = &[
    DEBIAN_11,
    // The oldest kernel with the trouble-only hooks: the timer hook's checked reads through
    // a computed socket pointer, address keys, and progress from sock_diag.
    Line {
        id: "5.10-trouble",
        debian: "Debian 11 (bullseye), --trouble-hooks",
        expect: EXPECT_TROUBLE,
        env: "TCPSTALL_TROUBLE_HOOKS=1",
        ..DEBIAN_11
    },
    DEBIAN_12,
    Line {
        id: "6.1-trouble",
        debian: "Debian 12 (bookworm), --trouble-hooks",
        expect: EXPECT_TROUBLE,
        env: "TCPSTALL_TROUBLE_HOOKS=1",
        ..DEBIAN_12
    },
    // The same 6.1 kernel with every function hook forced onto kprobes: the third attach
    // method, which no kernel of the matrix needs on its own (fentry works on all of them);
    // with the per-write and read hooks on, so their kprobe paths run too.
    Line {
        id: "6.1-kprobe",
        debian: "Debian 12 (bookworm), TCPSTALL_ATTACH=kprobe, per-write and read hooks on",
        expect: EXPECT_KPROBE,
        env: "TCPSTALL_ATTACH=kprobe TCPSTALL_PER_WRITE_HOOKS=1 TCPSTALL_READ_HOOK=1",
        ..DEBIAN_12
    },
    DEBIAN_13,
    // The newest stable kernel with the trouble-only hooks: there `tcp_info` has the peer's
    // window (6.2+), which the progress lookups take, unlike 5.10's.
    Line {
        id: "6.12-trouble",
        debian: "Debian 13 (trixie), --trouble-hooks",
        expect: EXPECT_TROUBLE,
        env: "TCPSTALL_TROUBLE_HOOKS=1",
        ..DEBIAN_13
    },
    Line {
        id: "7.x",
        debian: "Debian 13 backports (trixie-backports), per-write and read hooks on",
        prefix: "linux-binary-unsigned-7.",
        suffix: "-cloud-amd64",
        mid: seven_x,
        modules_prefix: Some("linux-modules-"),
        expect: EXPECT_TP,
        env: "TCPSTALL_PER_WRITE_HOOKS=1 TCPSTALL_READ_HOOK=1",
    },
];

impl Line {
    fn matches(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix)
            .and_then(|r| r.strip_suffix(self.suffix))
            .is_some_and(self.mid)
    }
}

/// Options of `cargo xtask vm-test`.
#[derive(Clone, Debug)]
pub struct VmOpts {
    /// Only kernels whose id, package name or Debian release contains this.
    pub kernel: Option<String>,
    /// Keep the work folders (initramfs trees) under target/vm-matrix/work.
    pub keep: bool,
    /// Guests run at the same time.
    pub jobs: usize,
}

/// Guests at a time by default: one (see the README on why not two on a 2-core host).
pub const DEFAULT_JOBS: usize = 1;

impl Default for VmOpts {
    fn default() -> VmOpts {
        VmOpts {
            kernel: None,
            keep: false,
            jobs: DEFAULT_JOBS,
        }
    }
}

/// Natural order of package names: numeric runs compare as numbers.
fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut num = String::new();
    let mut text = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() {
                key.push((u64::MAX, std::mem::take(&mut text)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                key.push((num.parse().unwrap_or(u64::MAX), String::new()));
                num.clear();
            }
            text.push(c);
        }
    }
    if !num.is_empty() {
        key.push((num.parse().unwrap_or(u64::MAX), String::new()));
    }
    if !text.is_empty() {
        key.push((u64::MAX, text));
    }
    key
}

/// The private apt configuration.
struct Apt {
    root: PathBuf,
}

impl Apt {
    fn new(cache: &Path) -> Result<Apt> {
        let root = cache.join("apt");
        for d in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/apt.conf.d",
            "lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        let status = root.join("status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let k = KEYRING;
        let sources = format!(
            "deb [signed-by={k}] {MIRROR} bullseye main\n\
             deb [signed-by={k}] {SECURITY} bullseye-security main\n\
             deb [signed-by={k}] {MIRROR} bookworm main\n\
             deb [signed-by={k}] {SECURITY} bookworm-security main\n\
             deb [signed-by={k}] {MIRROR} trixie main\n\
             deb [signed-by={k}] {SECURITY} trixie-security main\n\
             deb [signed-by={k}] {MIRROR} trixie-backports main\n"
        );
        fs::write(root.join("etc/sources.list"), sources)?;
        Ok(Apt { root })
    }

    fn opts(&self) -> Vec<String> {
        let r = self.root.display();
        let mut v: Vec<String> = [
            format!("Dir::Etc::SourceList={r}/etc/sources.list"),
            format!("Dir::Etc::SourceParts={r}/etc/sources.list.d"),
            format!("Dir::Etc::Preferences={r}/etc/preferences"),
            format!("Dir::Etc::PreferencesParts={r}/etc/preferences.d"),
            format!("Dir::State={r}"),
            format!("Dir::State::Lists={r}/lists"),
            format!("Dir::State::status={r}/status"),
            format!("Dir::Cache={r}/cache"),
            "APT::Architecture=amd64".into(),
            "APT::Architectures::=amd64".into(),
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false".into(),
            "Acquire::Retries=2".into(),
            "Debug::NoLocking=1".into(),
            "APT::Sandbox::User=root".into(),
        ]
        .into();
        v = v.into_iter().flat_map(|o| ["-o".to_string(), o]).collect();
        v
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(self.opts()).env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    /// `apt-get update` unless the lists are fresh; stale lists are used (with a warning)
    /// when the update fails.
    fn update(&self) -> Result<()> {
        let lists = self.root.join("lists");
        let newest = fs::read_dir(&lists)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("Packages"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max();
        let fresh = newest.is_some_and(|t| {
            SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age < LISTS_MAX_AGE)
        });
        if fresh {
            say("kernel package lists are fresh (private apt under the cache)");
            return Ok(());
        }
        let mut cmd = self.cmd("apt-get");
        cmd.arg("update");
        match run(&mut cmd) {
            Ok(()) => Ok(()),
            Err(e) if newest.is_some() => {
                say(&format!("warning: {e:#}; using the older package lists"));
                Ok(())
            }
            Err(e) => Err(e).context("cannot fetch Debian's package lists for the kernels"),
        }
    }

    fn names(&self) -> Result<Vec<String>> {
        let mut all = Vec::new();
        for prefix in ["linux-image-", "linux-binary-unsigned-"] {
            let mut cmd = self.cmd("apt-cache");
            cmd.args(["pkgnames", prefix]);
            all.extend(capture(&mut cmd)?.lines().map(str::to_string));
        }
        Ok(all)
    }

    /// The cached .deb of `package`, downloading it if needed. A failed download is
    /// remembered (`<package>.unavailable`) for as long as the lists are fresh, so later runs
    /// go straight to the build that works.
    fn download(&self, package: &str, debs: &Path) -> Result<PathBuf> {
        if let Some(p) = find_deb(debs, package) {
            return Ok(p);
        }
        let marker = debs.join(format!("{package}.unavailable"));
        let recent = fs::metadata(&marker)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if recent {
            bail!(
                "{package} could not be downloaded less than {} h ago: {}",
                LISTS_MAX_AGE.as_secs() / 3600,
                fs::read_to_string(&marker).unwrap_or_default().trim()
            );
        }
        let mut cmd = self.cmd("apt-get");
        cmd.args(["download", package]).current_dir(debs);
        if let Err(e) = capture(&mut cmd) {
            // apt's own reason ("E: Failed to fetch ... 404 Not Found"), not the command line.
            let text = format!("{e:#}");
            let reason = text.rsplit_once("E: ").map_or(text.as_str(), |(_, r)| r);
            let _ = fs::write(&marker, format!("{reason}\n"));
            bail!("apt-get download {package}: {reason}");
        }
        let _ = fs::remove_file(&marker);
        find_deb(debs, package).with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
}

/// A fetched and extracted kernel.
#[derive(Clone, Debug)]
struct Kernel {
    line: &'static Line,
    /// Packages used (image, and modules where split).
    packages: Vec<String>,
    /// Debian package version (from the .deb file name).
    version: String,
    /// `uname -r`.
    release: String,
    vmlinuz: PathBuf,
    /// `.../lib/modules/<release>`.
    moddir: PathBuf,
    /// Older builds that failed to download.
    skipped: Vec<String>,
    /// Why no build of this line could be fetched (the kernel then fails without a boot).
    fetch_error: Option<String>,
}

fn extract(deb: &Path, into: &Path) -> Result<()> {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(into);
    capture(&mut cmd).map(drop)
}

/// Resolve, download (newest first, falling back to older builds) and extract one line.
fn fetch_line(apt: &Apt, names: &[String], line: &'static Line, cache: &Path) -> Result<Kernel> {
    let mut candidates: Vec<&String> = names.iter().filter(|n| line.matches(n)).collect();
    candidates.sort_by_key(|n| natural_key(n));
    candidates.dedup();
    candidates.reverse();
    if candidates.is_empty() {
        bail!(
            "no package matching {}*{} in Debian's lists for kernel {} ({})",
            line.prefix,
            line.suffix,
            line.id,
            line.debian
        );
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let mut skipped = Vec::new();
    for name in candidates.iter().take(MAX_TRIES) {
        let mut packages = vec![name.to_string()];
        if let Some(mp) = line.modules_prefix {
            let release = name.strip_prefix("linux-binary-unsigned-").unwrap_or(name);
            packages.push(format!("{mp}{release}"));
        }
        let mut files = Vec::new();
        let mut failed = None;
        for p in &packages {
            match apt.download(p, &debs) {
                Ok(f) => files.push(f),
                Err(e) => {
                    failed = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            say(&format!(
                "kernel {}: {name} cannot be downloaded, trying an older build ({e})",
                line.id
            ));
            skipped.push(name.to_string());
            continue;
        }
        let version = files[0]
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('_').nth(1))
            .unwrap_or("?")
            .replace("%3a", ":");
        let root = cache.join("kernels").join(name.as_str());
        let done = root.join(".extracted");
        if !done.exists() {
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root)?;
            for f in &files {
                extract(f, &root).with_context(|| format!("extracting {}", f.display()))?;
            }
            fs::write(&done, "")?;
        }
        let (release, moddir) = find_moddir(&root)?;
        let vmlinuz = [
            root.join(format!("boot/vmlinuz-{release}")),
            moddir.join("vmlinuz"),
            moddir.join("vmlinuz.unsigned"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("no vmlinuz for {release} in {}", root.display()))?;
        return Ok(Kernel {
            line,
            packages,
            version,
            release,
            vmlinuz,
            moddir,
            skipped,
            fetch_error: None,
        });
    }
    bail!(
        "kernel {} ({}): none of the newest {} builds could be downloaded: {}",
        line.id,
        line.debian,
        MAX_TRIES.min(candidates.len()),
        skipped.join(", ")
    )
}

/// Remove cached packages and extractions of `k`'s line other than the build in use, so the
/// cache holds one build per line however many Debian publishes over time.
fn prune(cache: &Path, k: &Kernel) {
    let line = k.line;
    let ours = |package: &str| {
        line.matches(package)
            || line
                .modules_prefix
                .is_some_and(|mp| package.starts_with(mp) && package.ends_with(line.suffix))
    };
    for dir in ["debs", "kernels"] {
        for e in fs::read_dir(cache.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let package = name.split('_').next().unwrap_or(&name);
            let package = package.strip_suffix(".unavailable").unwrap_or(package);
            if name.ends_with(".unavailable")
                || !ours(package)
                || k.packages.iter().any(|p| p == package)
            {
                continue;
            }
            say(&format!(
                "cache: removing {name} (kernel {} now uses {})",
                line.id, k.packages[0]
            ));
            let _ = if e.path().is_dir() {
                fs::remove_dir_all(e.path())
            } else {
                fs::remove_file(e.path())
            };
        }
    }
}

fn find_moddir(root: &Path) -> Result<(String, PathBuf)> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let dir = root.join(base);
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().join("kernel").is_dir() {
                    return Ok((e.file_name().to_string_lossy().into_owned(), e.path()));
                }
            }
        }
    }
    bail!("no lib/modules/<release>/kernel in {}", root.display())
}

/// Module name of a file name (`nf_tables.ko.xz` -> `nf_tables`; `-` and `_` are the same).
fn module_name(file: &str) -> Option<String> {
    let stem = file.split_once(".ko")?.0;
    Some(stem.replace('-', "_"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// The uncompressed bytes of a module file.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(t) => {
            let out = Command::new(t)
                .arg("-dc")
                .arg(path)
                .stderr(Stdio::piped())
                .output()
                .with_context(|| format!("running {t} -dc"))?;
            if !out.status.success() {
                bail!("{t} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
    }
}

/// `depends=` of a module's .modinfo.
fn module_depends(bytes: &[u8]) -> Vec<String> {
    let key = b"depends=";
    for (i, w) in bytes.windows(key.len()).enumerate() {
        if w == key && (i == 0 || bytes[i - 1] == 0) {
            let rest = &bytes[i + key.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            return String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect();
        }
    }
    Vec::new()
}

/// Copy `wanted` and their dependencies (uncompressed) into `<tree>/lib/modules/<release>`.
/// Returns the modules to load, in dependency order.
fn install_modules(k: &Kernel, tree: &Path) -> Result<Vec<String>> {
    let builtin: BTreeSet<String> = fs::read_to_string(k.moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(l.rsplit('/').next()?))
        .collect();
    let mut files = Vec::new();
    walk(&k.moddir.join("kernel"), &mut files);
    let index: BTreeMap<String, PathBuf> = files
        .into_iter()
        .filter_map(|p| Some((module_name(p.file_name()?.to_str()?)?, p)))
        .collect();
    let dest = tree.join("lib/modules").join(&k.release);
    fs::create_dir_all(&dest)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        k: &Kernel,
        dest: &Path,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some(path) = index.get(name) else {
            if builtin.contains(name) {
                return Ok(());
            }
            if builtin.is_empty() {
                // Newer packages ship no modules.builtin; the guest's checks catch a
                // module that is really missing.
                say(&format!(
                    "kernel {}: no module {name}; assuming it is built in",
                    k.release
                ));
                return Ok(());
            }
            bail!(
                "kernel {}: module {name} is neither a module nor built in",
                k.release
            );
        };
        let bytes = read_module(path)?;
        for dep in module_depends(&bytes) {
            visit(&dep, index, builtin, k, dest, seen, order)?;
        }
        let rel = path.strip_prefix(&k.moddir).expect("under moddir");
        let rel = rel.to_string_lossy();
        let rel = rel.split_once(".ko").map(|(a, _)| a).unwrap_or(&rel);
        let out = dest.join(format!("{rel}.ko"));
        fs::create_dir_all(out.parent().expect("has parent"))?;
        fs::write(&out, bytes)?;
        order.push(name.to_string());
        Ok(())
    }
    for m in MODULES {
        visit(m, &index, &builtin, k, &dest, &mut seen, &mut order)?;
    }
    for f in [
        "modules.builtin",
        "modules.order",
        "modules.builtin.modinfo",
    ] {
        let src = k.moddir.join(f);
        if src.is_file() {
            fs::copy(&src, dest.join(f))?;
        }
    }
    // busybox depmod writes modules.dep (and alias/symbols) for busybox modprobe.
    let mut depmod = Command::new(busybox()?);
    depmod.arg("depmod").arg("-b").arg(tree).arg(&k.release);
    if let Err(e) = capture(&mut depmod) {
        say(&format!(
            "warning: host-side depmod failed ({e:#}); the guest runs depmod at boot"
        ));
    }
    Ok(order)
}

fn busybox() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox not found; install busybox-static")
}

/// A program on the host's PATH (sbin included).
fn host_program(name: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not found on the host (install iproute2 and nftables)")
}

/// Shared libraries of a dynamically linked program (`ldd`), with the loader.
fn libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .stdin(Stdio::null())
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static programs: "not a dynamic executable".
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: missing library: {line}", program.display());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Copy `src` (following symlinks) to `tree` + `at`, executable.
fn put(tree: &Path, at: &str, src: &Path) -> Result<()> {
    let dest = tree.join(at.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().expect("has parent"))?;
    fs::copy(src, &dest).with_context(|| format!("copying {} to {}", src.display(), at))?;
    Ok(())
}

/// The guest's /init.
fn init_script(k: &Kernel, modules: &[String]) -> String {
    let mods = modules
        .iter()
        .filter(|m| !AGENT_LOADS.contains(&m.as_str()))
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /sys/fs/bpf /sys/kernel/tracing /sys/kernel/debug /sys/fs/cgroup /run/netns
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount --make-rshared /
echo "{MARK} boot release=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
ip link set lo up
[ -s /lib/modules/$(uname -r)/modules.dep ] || depmod
for m in {mods}; do
    modprobe $m || echo "{MARK} modprobe-failed $m"
done
echo "{MARK} modules $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
echo "{MARK} test-start uptime=$(cut -d' ' -f1 /proc/uptime)"
CI=true TCPSTALL_BIN=/bin/tcpstall TCPSTALL_EXPECT_ATTACH={expect} TCPSTALL_VM={id} {env} \
    /bin/kernels-test --test-threads=1 --nocapture
rc=$?
echo "{MARK} modules-after $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
echo "{MARK} exit rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
"#,
        expect = k.line.expect,
        id = k.line.id,
        env = k.line.env,
    )
}

/// Build the initramfs (uncompressed newc cpio) for `k` in `work`; returns its path.
fn build_initramfs(k: &Kernel, work: &Path, agent: &Path, test_bin: &Path) -> Result<PathBuf> {
    let tree = work.join("root");
    let _ = fs::remove_dir_all(&tree);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc", "root",
        "var",
    ] {
        fs::create_dir_all(tree.join(d))?;
    }
    std::os::unix::fs::symlink("../run", tree.join("var/run"))?;
    put(&tree, "/bin/busybox", &busybox()?)?;
    std::os::unix::fs::symlink("/bin/busybox", tree.join("sbin/modprobe"))?;
    let mut dynamic = vec![
        ("/bin/tcpstall".to_string(), agent.to_path_buf()),
        ("/bin/kernels-test".to_string(), test_bin.to_path_buf()),
    ];
    for p in HOST_PROGRAMS {
        dynamic.push((format!("/usr/sbin/{p}"), host_program(p)?));
    }
    let mut libs = BTreeSet::new();
    for (at, src) in &dynamic {
        put(&tree, at, src)?;
        libs.extend(libraries(src)?);
    }
    for lib in &libs {
        put(&tree, &lib.to_string_lossy(), lib)?;
    }
    for f in ["/etc/protocols", "/etc/services", "/etc/nsswitch.conf"] {
        if Path::new(f).is_file() {
            put(&tree, f, Path::new(f))?;
        }
    }
    fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(tree.join("etc/group"), "root:x:0:\n")?;
    let modules = install_modules(k, &tree)?;
    let init = tree.join("init");
    fs::write(&init, init_script(k, &modules))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let image = work.join("initramfs.cpio");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("find . -print0 | LC_ALL=C sort -z | cpio --null --quiet -o -H newc -R 0:0 > \"$0\"")
        .arg(&image)
        .current_dir(&tree);
    capture(&mut cmd).context("packing the initramfs (cpio)")?;
    Ok(image)
}

/// What one guest run showed.
#[derive(Clone, Debug, Default)]
struct GuestResult {
    boot_s: Option<f64>,
    guest_total_s: Option<f64>,
    exit_rc: Option<i32>,
    release: Option<String>,
    tests: BTreeMap<String, String>,
    summary: Option<String>,
    agent_started: Option<Value>,
    modprobe_failed: Vec<String>,
    panic: bool,
    /// The first `error: ` line (the agent's fatal error, if it could not start).
    agent_error: Option<String>,
    /// What the guest test measured for destroying an orphan (scenario e).
    orphan_measured: Option<bool>,
}

/// Parse a serial console log.
fn parse_log(log: &str) -> GuestResult {
    let mut r = GuestResult::default();
    let field = |line: &str, key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    // With --nocapture a test's outcome ("ok", "FAILED") can land on a later line than its
    // "test NAME ... " header, after the test's own output.
    let mut pending: Option<String> = None;
    let mut in_failures = false;
    for raw in log.lines() {
        let mut line = raw.trim_end_matches('\r');
        if line.contains("Kernel panic") {
            r.panic = true;
        }
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, after)) = rest.split_once(" ... ") {
                pending = Some(name.trim().to_string());
                line = after;
            }
        }
        let word = line.trim();
        let outcome = ["ok", "FAILED", "ignored"]
            .into_iter()
            .find(|o| word == *o || word.starts_with(&format!("{o},")));
        if let (Some(o), Some(name)) = (outcome, pending.as_ref()) {
            r.tests.insert(name.clone(), o.to_string());
            pending = None;
            continue;
        }
        if word == "failures:" {
            in_failures = true;
            continue;
        }
        if in_failures {
            if let Some(name) = line.strip_prefix("    ").filter(|n| !n.contains(' ')) {
                r.tests.insert(name.to_string(), "FAILED".into());
            } else if !word.is_empty() {
                in_failures = false;
            }
        }
        if r.agent_error.is_none() {
            if let Some(e) = word.strip_prefix("error: ") {
                r.agent_error = Some(e.to_string());
            }
        }
        if let Some(i) = line.find(MARK) {
            let rest = line[i + MARK.len()..].trim_start();
            if let Some(a) = rest.strip_prefix("boot ") {
                r.release = field(a, "release=");
                r.boot_s = field(a, "uptime=").and_then(|v| v.parse().ok());
            } else if let Some(a) = rest.strip_prefix("exit ") {
                r.exit_rc = field(a, "rc=").and_then(|v| v.parse().ok());
                r.guest_total_s = field(a, "uptime=").and_then(|v| v.parse().ok());
            } else if let Some(m) = rest.strip_prefix("modprobe-failed ") {
                r.modprobe_failed.push(m.trim().to_string());
            } else if let Some(j) = rest.strip_prefix("agent_started ") {
                if r.agent_started.is_none() {
                    r.agent_started = serde_json::from_str(j.trim()).ok();
                }
            } else if let Some(a) = rest.strip_prefix("orphan-measured ") {
                r.orphan_measured = field(a, "safe=").and_then(|v| v.parse().ok());
            }
            continue;
        }
        if let Some(i) = line.find("test result: ") {
            r.summary = Some(line[i..].to_string());
        }
    }
    r
}

/// Per hook `attach` from agent_started (new format: objects; old format: strings).
fn attach_map(started: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for h in started["hooks"].as_array().into_iter().flatten() {
        if let Some(name) = h["hook"].as_str() {
            let a = h["attach"].as_str().unwrap_or("-").to_string();
            m.insert(name.to_string(), a);
        } else if let Some(s) = h.as_str() {
            // The first format: a list of "kind/function" strings.
            let function = s.rsplit('/').next().unwrap_or(s);
            let hook = match function {
                "tcp_sendmsg_locked" | "tcp_sendmsg" => "send",
                "sk_stream_wait_memory" => "send_wait",
                "do_tcp_sendpages" => "send_pages",
                "tcp_probe" => "ack",
                "tcp_retransmit_skb" => "retransmit",
                "tcp_rcv_space_adjust" => "read",
                "inet_sock_set_state" => "state",
                other => other,
            };
            m.insert(hook.to_string(), s.to_string());
        }
    }
    m
}

struct Outcome {
    kernel: Kernel,
    result: GuestResult,
    passed: bool,
    problems: Vec<String>,
    wall_s: f64,
    log: PathBuf,
}

fn boot(k: &Kernel, initrd: &Path, log: &Path) -> Result<(bool, f64)> {
    let _ = fs::remove_file(log);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
        "-m",
        GUEST_MEM,
        "-smp",
        "1",
        "-cpu",
        "max",
    ])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .arg("-kernel")
    .arg(&k.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .arg("-append")
    .arg("console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64 (install qemu-system-x86)")?;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            if !status.success() {
                bail!("qemu exited with {status}: {}", err.trim());
            }
            return Ok((true, started.elapsed().as_secs_f64()));
        }
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((false, started.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_guest(k: Kernel, out_dir: &Path, agent: &Path, test_bin: &Path, keep: bool) -> Outcome {
    let work = out_dir.join("work").join(k.line.id);
    let log = out_dir.join(format!("{}.log", k.line.id));
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut result = GuestResult::default();
    if let Some(e) = &k.fetch_error {
        return Outcome {
            problems: vec![format!("kernel not fetched: {e}")],
            kernel: k,
            result,
            passed: false,
            wall_s: 0.0,
            log,
        };
    }
    let _ = fs::remove_dir_all(&work);
    let ran = fs::create_dir_all(&work)
        .map_err(anyhow::Error::from)
        .and_then(|_| build_initramfs(&k, &work, agent, test_bin))
        .and_then(|initrd| {
            // For --keep: the same guest by hand, console on the terminal.
            let script = format!(
                "#!/bin/sh\n# Boots kernel {} with this initramfs (from cargo xtask vm-test --keep).\n\
                 exec qemu-system-x86_64 -nodefaults -no-reboot -nographic -serial mon:stdio \\\n  \
                 -m {GUEST_MEM} -smp 1 -cpu max -kernel '{}' -initrd '{}' \\\n  \
                 -append 'console=ttyS0 panic=-1 mitigations=off'\n",
                k.release,
                k.vmlinuz.display(),
                initrd.display()
            );
            let boot_sh = work.join("boot.sh");
            fs::write(&boot_sh, script)?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&boot_sh, fs::Permissions::from_mode(0o755))?;
            say(&format!(
                "kernel {} ({}): booting {} ({} MB initramfs)",
                k.line.id,
                k.release,
                k.vmlinuz.display(),
                fs::metadata(&initrd).map(|m| m.len() >> 20).unwrap_or(0)
            ));
            boot(&k, &initrd, &log)
        });
    match ran {
        Ok((exited, _)) => {
            if !exited {
                problems.push(format!("guest timed out after {GUEST_TIMEOUT:?}"));
            }
            let text = fs::read(&log)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            result = parse_log(&text);
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    if !keep {
        let _ = fs::remove_dir_all(&work);
    }
    if result.panic {
        problems.push("kernel panic".into());
    }
    for m in &result.modprobe_failed {
        problems.push(format!("modprobe {m} failed"));
    }
    match result.exit_rc {
        Some(0) => {}
        Some(rc) => problems.push(format!("guest test exited {rc}")),
        None => problems.push("guest test did not finish".into()),
    }
    if result.tests.is_empty() {
        problems.push("no test ran".into());
    }
    for (t, o) in &result.tests {
        if o != "ok" {
            problems.push(format!("{t}: {o}"));
        }
    }
    if result.agent_started.is_none() {
        problems.push(match &result.agent_error {
            Some(e) => format!("agent did not start: {e}"),
            None => "no agent_started line".into(),
        });
    }
    let passed = problems.is_empty();
    Outcome {
        kernel: k,
        result,
        passed,
        problems,
        wall_s: started.elapsed().as_secs_f64(),
        log,
    }
}

/// Builds the guest test executable; returns its path.
pub fn build_guest_test(cargo: &mut Command) -> Result<PathBuf> {
    cargo.args([
        "test",
        "--release",
        "-p",
        "tests",
        "--test",
        "kernels",
        "--no-run",
        "--message-format=json",
    ]);
    let text = capture(cargo).context("building the guest test (tests/tests/kernels.rs)")?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "kernels")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo built no executable for test target `kernels`")
}

/// Run the matrix. `agent` is the release tcpstall binary, `test_bin` the guest test.
pub fn vm_test(target: &Path, agent: &Path, test_bin: &Path, opts: &VmOpts) -> Result<()> {
    let cache = PathBuf::from(CACHE);
    fs::create_dir_all(&cache).with_context(|| format!("creating {CACHE}"))?;
    let lines: Vec<&'static Line> = match opts.kernel.as_deref() {
        None => LINES.iter().collect(),
        // An exact id wins (`--kernel 6.1` is not also 6.12); else any substring match.
        Some(f) if LINES.iter().any(|l| l.id == f) => LINES.iter().filter(|l| l.id == f).collect(),
        Some(f) => LINES
            .iter()
            .filter(|l| {
                l.id.contains(f)
                    || l.prefix.contains(f)
                    || l.debian.to_lowercase().contains(&f.to_lowercase())
            })
            .collect(),
    };
    if lines.is_empty() {
        bail!(
            "--kernel {:?} matches none of: {}",
            opts.kernel.as_deref().unwrap_or(""),
            LINES.iter().map(|l| l.id).collect::<Vec<_>>().join(", ")
        );
    }
    let apt = Apt::new(&cache)?;
    apt.update()?;
    let names = apt.names()?;
    let mut kernels = Vec::new();
    for line in &lines {
        let k = match fetch_line(&apt, &names, line, &cache) {
            Ok(k) => k,
            Err(e) => {
                // Reported as a failed kernel (the others still run); never skipped.
                say(&format!("kernel {}: cannot be fetched: {e:#}", line.id));
                Kernel {
                    line,
                    packages: Vec::new(),
                    version: "?".into(),
                    release: "?".into(),
                    vmlinuz: PathBuf::new(),
                    moddir: PathBuf::new(),
                    skipped: Vec::new(),
                    fetch_error: Some(format!("{e:#}")),
                }
            }
        };
        if k.fetch_error.is_some() {
            kernels.push(k);
            continue;
        }
        prune(&cache, &k);
        say(&format!(
            "kernel {}: {} {} (release {}){}",
            line.id,
            k.packages.join(" + "),
            k.version,
            k.release,
            if k.skipped.is_empty() {
                String::new()
            } else {
                format!("; newer builds not downloadable: {}", k.skipped.join(", "))
            }
        ));
        kernels.push(k);
    }
    let out_dir = target.join("vm-matrix");
    fs::create_dir_all(&out_dir)?;
    let jobs = opts.jobs.max(1);
    let started = Instant::now();
    let mut outcomes: Vec<Option<Outcome>> = (0..kernels.len()).map(|_| None).collect();
    let mut queue: Vec<(usize, Kernel)> = kernels.iter().cloned().enumerate().collect();
    queue.reverse();
    let queue = std::sync::Mutex::new(queue);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let next = queue.lock().unwrap().pop();
                let Some((i, k)) = next else { break };
                let o = run_guest(k, &out_dir, agent, test_bin, opts.keep);
                say(&format!(
                    "kernel {} ({}): {} in {:.0} s (boot {:.1} s){}",
                    o.kernel.line.id,
                    o.kernel.release,
                    if o.passed { "PASS" } else { "FAIL" },
                    o.wall_s,
                    o.result.boot_s.unwrap_or(f64::NAN),
                    if o.passed {
                        String::new()
                    } else {
                        format!(": {}; log {}", o.problems.join("; "), o.log.display())
                    }
                ));
                results.lock().unwrap().push((i, o));
            });
        }
    });
    for (i, o) in results.into_inner().unwrap() {
        outcomes[i] = Some(o);
    }
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
    let total = started.elapsed().as_secs_f64();
    let summary = json!({
        "total_s": (total * 10.0).round() / 10.0,
        "jobs": jobs,
        "kernels": outcomes.iter().map(outcome_json).collect::<Vec<_>>(),
    });
    let path = out_dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")?;
    let table = markdown_table(&outcomes);
    fs::write(out_dir.join("kernels.md"), &table)?;
    let mut err = std::io::stderr().lock();
    writeln!(err, "\nKernel matrix ({total:.0} s, {jobs} at a time):\n")?;
    writeln!(err, "{table}")?;
    for o in &outcomes {
        let secs = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.1} s"));
        writeln!(
            err,
            "{:>5}: boot {}, guest total {}, wall {:.1} s, {}",
            o.kernel.line.id,
            secs(o.result.boot_s),
            secs(o.result.guest_total_s),
            o.wall_s,
            o.result.summary.as_deref().unwrap_or("no test summary")
        )?;
    }
    writeln!(err)?;
    writeln!(
        err,
        "results: {}  logs: {}/<kernel>.log",
        path.display(),
        out_dir.display()
    )?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| format!("{} ({})", o.kernel.line.id, o.problems.join("; ")))
        .collect();
    if !failed.is_empty() {
        bail!("kernel matrix failed on: {}", failed.join(", "));
    }
    Ok(())
}

fn outcome_json(o: &Outcome) -> Value {
    let r = &o.result;
    let started = r.agent_started.clone().unwrap_or(Value::Null);
    json!({
        "kernel": o.kernel.line.id,
        "debian": o.kernel.line.debian,
        "packages": o.kernel.packages,
        "package_version": o.kernel.version,
        "release": r.release.clone().unwrap_or_else(|| o.kernel.release.clone()),
        "skipped_builds": o.kernel.skipped,
        "passed": o.passed,
        "problems": o.problems,
        "boot_s": r.boot_s,
        "guest_total_s": r.guest_total_s,
        "wall_s": (o.wall_s * 10.0).round() / 10.0,
        "tests": r.tests,
        "test_summary": r.summary,
        "expected_attach": o.kernel.line.expect,
        "attach": attach_map(&started),
        "degraded": started["degraded"],
        "socket_key": started["socket_key"],
        "orphan_reset": started["orphan_reset"],
        "orphan_reset_measured_safe": r.orphan_measured,
        "agent_started": started,
        "log": o.log,
    })
}

/// The README's "Supported kernels" table.
fn markdown_table(outcomes: &[Outcome]) -> String {
    let mut t = String::from("| kernel | Debian | release |");
    for h in HOOKS {
        t.push_str(&format!(" {h} |"));
    }
    t.push_str(" socket key | orphan reset | result |\n|");
    for _ in 0..(HOOKS.len() + 6) {
        t.push_str(" --- |");
    }
    t.push('\n');
    for o in outcomes {
        let started = o.result.agent_started.clone().unwrap_or(Value::Null);
        let attach = attach_map(&started);
        let release = o
            .result
            .release
            .clone()
            .unwrap_or_else(|| o.kernel.release.clone());
        t.push_str(&format!(
            "| {} | {} | `{}` ({}) |",
            o.kernel.line.id, o.kernel.line.debian, release, o.kernel.version
        ));
        for h in HOOKS {
            let a = attach.get(*h).map(String::as_str).unwrap_or("?");
            t.push_str(&format!(" {} |", if a == "-" { "—" } else { a }));
        }
        let key = started["socket_key"].as_str().unwrap_or("?");
        let verdict = |safe: bool| if safe { "safe" } else { "unsafe" };
        let orphan = match (
            started["orphan_reset"]["safe"].as_bool(),
            o.result.orphan_measured,
        ) {
            (Some(a), _) => verdict(a).to_string(),
            (None, Some(m)) => format!("{} (measured; agent: ?)", verdict(m)),
            (None, None) => "?".to_string(),
        };
        let result = if o.passed {
            let n = o.result.tests.len();
            format!("pass ({n} scenarios)")
        } else {
            format!("FAIL: {}", o.problems.join("; "))
        };
        t.push_str(&format!(" {key} | {orphan} | {result} |\n"));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_match_their_line() {
        let l = |id| LINES.iter().find(|l| l.id == id).unwrap();
        assert!(l("5.10").matches("linux-image-5.10.0-43-cloud-amd64-unsigned"));
        assert!(!l("5.10").matches("linux-image-5.10.0-43-amd64-unsigned"));
        assert!(l("6.1").matches("linux-image-6.1.0-57-cloud-amd64-unsigned"));
        assert!(!l("6.1").matches("linux-image-6.1.0-0.deb11.48-cloud-amd64-unsigned"));
        assert!(l("6.12").matches("linux-image-6.12.118+deb13-cloud-amd64-unsigned"));
        assert!(l("6.12").matches("linux-image-6.12.115+deb13.1-cloud-amd64-unsigned"));
        assert!(!l("6.12").matches("linux-image-6.12.118+deb12-cloud-amd64-unsigned"));
        assert!(l("7.x").matches("linux-binary-unsigned-7.3.4+deb13-cloud-amd64"));
        assert!(!l("7.x").matches("linux-binary-unsigned-7.3.4+deb13-cloud-amd64-dbg"));
        assert!(!l("7.x").matches("linux-binary-unsigned-6.19.4+deb13-cloud-amd64"));
    }

    #[test]
    fn newest_build_sorts_first() {
        let mut v = [
            "linux-image-5.10.0-9-cloud-amd64-unsigned",
            "linux-image-5.10.0-46-cloud-amd64-unsigned",
            "linux-image-5.10.0-43-cloud-amd64-unsigned",
        ];
        v.sort_by_key(|n| natural_key(n));
        assert_eq!(v[2], "linux-image-5.10.0-46-cloud-amd64-unsigned");
        let mut v = [
            "linux-binary-unsigned-7.3.4+deb13-cloud-amd64",
            "linux-binary-unsigned-7.2.12+deb13-cloud-amd64",
        ];
        v.sort_by_key(|n| natural_key(n));
        assert_eq!(v[1], "linux-binary-unsigned-7.3.4+deb13-cloud-amd64");
    }

    #[test]
    fn reads_module_depends() {
        let info = b"\0license=GPL\0depends=nfnetlink,libcrc32c\0name=nf_tables\0";
        assert_eq!(module_depends(info), vec!["nfnetlink", "libcrc32c"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert_eq!(module_name("nf_tables.ko.xz").as_deref(), Some("nf_tables"));
        assert_eq!(module_name("nf-x.ko").as_deref(), Some("nf_x"));
    }

    #[test]
    fn parses_a_guest_log() {
        let log = "[    1.0] foo\r\n\
            TCPSTALL-VM boot release=6.1.0-57-cloud-amd64 uptime=4.51\r\n\
            running 2 tests\n\
            TCPSTALL-VM agent_started {\"event\":\"agent_started\",\"hooks\":[{\"hook\":\"send\",\"attach\":\"fentry/tcp_sendmsg_locked\"},{\"hook\":\"send_pages\",\"attach\":null}]}\n\
            test a_starts ... ok\n\
            test b_zero_window ... FAILED\n\
            test c_dead ... \n\
            thread 'c_dead' panicked at x\n\
            FAILED\n\
            test d_idle ... some output\n\
            ok\n\
            test e_orphan ... TCPSTALL-VM orphan-measured safe=false orphan cookie 5\n\
            ok\n\
            failures:\n\
            \n\
            failures:\n    b_zero_window\n    c_dead\n\
            \n\
            test result: FAILED. 2 passed; 2 failed; 0 ignored\n\
            TCPSTALL-VM exit rc=101 uptime=80.2\n";
        let r = parse_log(log);
        assert_eq!(r.release.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(r.boot_s, Some(4.51));
        assert_eq!(r.exit_rc, Some(101));
        assert_eq!(r.tests["a_starts"], "ok");
        assert_eq!(r.tests["b_zero_window"], "FAILED");
        assert_eq!(r.tests["c_dead"], "FAILED");
        assert_eq!(r.tests["d_idle"], "ok");
        assert_eq!(r.tests["e_orphan"], "ok");
        assert_eq!(r.tests.len(), 5);
        assert_eq!(r.orphan_measured, Some(false));
        assert!(r.summary.unwrap().starts_with("test result: FAILED"));
        let a = attach_map(r.agent_started.as_ref().unwrap());
        assert_eq!(a["send"], "fentry/tcp_sendmsg_locked");
        assert_eq!(a["send_pages"], "-");
    }
}
