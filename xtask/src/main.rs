//! `cargo xtask`: the project's build, run and test driver.
//!
//! Every subcommand first runs `bootstrap`, so a fresh machine with only rustup's stable and
//! nightly toolchains needs nothing but `cargo xtask test` (as root) to build and test it all.

mod bootstrap;
mod vm;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use bootstrap::{bootstrap, clean_cargo_run_env, Tools};

/// The cfg and variable `monitor/build.rs` sets when it embedded the eBPF object.
const EBPF_OBJ_CFG: &str = "tcpstall_ebpf_obj";
const EBPF_OBJ_ENV: &str = "TCPSTALL_EBPF_OBJ_PATH";
/// Debian packages the real-kernel tests use (the packaging tests: systemd-analyze from
/// systemd, systemd-nspawn from systemd-container, podman with runc, setpriv/nsenter/unshare
/// from util-linux).
const TEST_PACKAGES: &[&str] = &[
    "nftables",
    "iproute2",
    "python3",
    "python3-venv",
    // tests/tests/metrics.rs: a real Prometheus server scrapes the agent.
    "prometheus",
    // tests/tests/top.rs: the live view in a real terminal.
    "tmux",
    // tests/tests/ops.rs: a real logrotate rotates the event output.
    "logrotate",
    // tests/tests/packaging.rs: systemd-analyze, systemd-nspawn, podman, setpriv.
    "systemd",
    "systemd-container",
    "podman",
    "runc",
    "util-linux",
    // monitor/src/btf/cross_check.rs: a second reader of the kernel's BTF (libbpf's).
    "bpftool",
];
/// Where the tests need tracefs.
const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run and test tcpstall",
    bin_name = "cargo xtask"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build needs: rust-src for the nightly toolchain and bpf-linker
    /// in .tools/ (run by every other subcommand too).
    Bootstrap,
    /// Set up the toolchain and build the agent (release) with its eBPF programs (crate
    /// monitor-ebpf, built and embedded by monitor/build.rs); fails if they could not be built.
    BuildEbpf,
    /// Build everything and run the agent as root: `cargo xtask run [-- <tcpstall args>]`
    /// (default args: `run`).
    Run {
        /// Arguments for tcpstall.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install test dependencies, build everything and run every test, as root:
    /// `cargo xtask test [-- <cargo test args> [-- <test binary args>]]`.
    Test {
        /// Extra `cargo test` arguments; those after a further `--` go to the test binaries.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian's stock kernels (5.10, 6.1, 6.12, newest backports) under QEMU and run
    /// the guest test (tests/tests/kernels.rs) with the agent in each, as root.
    VmTest {
        /// Only kernels whose id (5.10, 6.1, 6.12, 7.x) or package name contains this.
        #[arg(long)]
        kernel: Option<String>,
        /// Keep the guests' work folders (initramfs) under target/vm-matrix/work.
        #[arg(long)]
        keep: bool,
        /// How many guests run at the same time.
        #[arg(long, default_value_t = vm::DEFAULT_JOBS)]
        jobs: usize,
    },
    /// Build everything and run the benchmarks: `cargo xtask bench [-- <bench args>]`.
    Bench {
        /// Arguments for the bench program.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Printed by hand: anyhow's own report adds a backtrace whenever RUST_BACKTRACE is
            // set, which buries the message.
            eprintln!("xtask: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("xtask:   because: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let repo = repo_root();
    match cli.command {
        Cmd::Bootstrap => {
            bootstrap(&repo)?;
            say("bootstrap complete: nightly rust-src and .tools/bin/bpf-linker are in place");
            Ok(())
        }
        Cmd::BuildEbpf => {
            bootstrap(&repo)?;
            build_agent(&repo).map(drop)
        }
        Cmd::Run { args } => run_agent(&repo, args),
        Cmd::Test { args } => test(&repo, &args),
        Cmd::Bench { args } => bench(&repo, args),
        Cmd::VmTest { kernel, keep, jobs } => {
            require_root(
                "vm-test",
                "it installs packages and writes its kernel cache under /var/cache",
            )?;
            install_packages(vm::VM_PACKAGES)?;
            bootstrap(&repo)?;
            let bin = build_agent(&repo)?;
            vm_matrix(&repo, &bin, &vm::VmOpts { kernel, keep, jobs })
        }
    }
}

/// The repository root (the parent of the xtask crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a folder of the repository")
        .to_path_buf()
}

/// Prints a progress line to stderr.
pub fn say(message: &str) {
    eprintln!("xtask: {message}");
}

/// Prints a stage header to stderr.
fn stage(number: usize, total: usize, title: &str) {
    eprintln!("\n==> [{number}/{total}] {title}");
}

/// A shell-like rendering of `cmd` for messages: explicitly set variables, program, arguments
/// and, when set, the folder it runs in.
pub fn describe(cmd: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,".contains(c))
        {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        let hidden = ["PATH", "LD_LIBRARY_PATH", "RUSTUP_AUTO_INSTALL"];
        if let (Some(value), false) = (value, hidden.iter().any(|h| OsStr::new(h) == key)) {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    let mut text = words.join(" ");
    if let Some(dir) = cmd.get_current_dir() {
        text.push_str(&format!("   (in {})", dir.display()));
    }
    text
}

/// Runs `cmd` with inherited stdio after echoing it; fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    say(&format!("running {}", describe(cmd)));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; on failure the error carries its stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

/// Replaces this process with `cmd` (signals and exit status then belong to it).
fn exec(cmd: &mut Command) -> Result<()> {
    say(&format!("exec {}", describe(cmd)));
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// The cargo that runs xtask (stable), for the userspace builds.
fn userspace_cargo(repo: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo);
    clean_cargo_run_env(&mut cmd);
    cmd
}

/// Fails with a plain explanation unless running as root.
fn require_root(what: &str, why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        bail!(
            "`cargo xtask {what}` must be run as root ({why}); you are uid {uid}. \
             Run it in a root shell, or keep your toolchains with \
             `sudo -E env \"PATH=$PATH\" cargo xtask {what}`"
        );
    }
    Ok(())
}

/// `cargo metadata --no-deps` of the workspace.
fn metadata(repo: &Path) -> Result<serde_json::Value> {
    let mut cmd = userspace_cargo(repo);
    cmd.args(["metadata", "--no-deps", "--format-version", "1"]);
    let text = capture(&mut cmd)?;
    serde_json::from_str(&text).context("cannot read `cargo metadata` output")
}

/// The workspace's target folder (honours CARGO_TARGET_DIR and cargo configuration).
fn target_dir(meta: &serde_json::Value) -> Result<PathBuf> {
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` output has no target_directory")
}

/// Whether package `package` has a bin target named `bin`.
fn has_bin(meta: &serde_json::Value, package: &str, bin: &str) -> bool {
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == package)
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .any(|t| {
            t["name"] == bin
                && t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
}

/// `cargo build --release -p monitor`, whose build script builds the eBPF programs and embeds
/// them; returns the path of the tcpstall binary. Fails when the programs were not embedded.
fn build_agent(repo: &Path) -> Result<PathBuf> {
    let meta = metadata(repo)?;
    let id = package_id(&meta, "monitor")?;
    let mut object = cargo_build_agent(repo, id)?;
    let linker = Tools::new(repo).bpf_linker();
    if object.is_none() && linker.is_file() {
        // The build script last ran without bpf-linker, and cargo only reruns it for a
        // bpf-linker newer than that run (one copied in with its old time is not).
        say("the agent was last built without bpf-linker; building it again");
        fs::File::options()
            .append(true)
            .open(&linker)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .with_context(|| format!("cannot touch {}", linker.display()))?;
        object = cargo_build_agent(repo, id)?;
    }
    let object = object.context(
        "the agent was built without its eBPF programs (crate monitor-ebpf); the warnings of \
         monitor/build.rs above say why",
    )?;
    say(&format!("eBPF object: {object}"));
    let bin = target_dir(&meta)?.join("release/tcpstall");
    if !bin.is_file() {
        bail!("the agent build succeeded but {} is missing", bin.display());
    }
    say(&format!("agent: {}", bin.display()));
    Ok(bin)
}

/// `cargo build --release -p monitor`; the eBPF object its build script (package `id`) embedded.
fn cargo_build_agent(repo: &Path, id: &str) -> Result<Option<String>> {
    let mut cmd = userspace_cargo(repo);
    cmd.args([
        "build",
        "--release",
        "-p",
        "monitor",
        "--message-format=json-render-diagnostics",
    ]);
    say(&format!("running {}", describe(&cmd)));
    // Diagnostics and the build script's warnings go to stderr as usual; stdout is JSON.
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(&cmd)))?;
    if !out.status.success() {
        bail!("building the agent (crate monitor) failed ({})", out.status);
    }
    Ok(embedded_object(&String::from_utf8_lossy(&out.stdout), id))
}

/// The id cargo gives workspace package `name`.
fn package_id<'a>(meta: &'a serde_json::Value, name: &str) -> Result<&'a str> {
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["id"].as_str())
        .with_context(|| format!("`cargo metadata` lists no package `{name}`"))
}

/// The eBPF object the build script of package `id` embedded, per cargo's JSON messages.
fn embedded_object(messages: &str, id: &str) -> Option<String> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "build-script-executed" && m["package_id"] == id)
        .filter(|m| {
            m["cfgs"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == EBPF_OBJ_CFG))
        })
        .find_map(|m| {
            m["env"]
                .as_array()?
                .iter()
                .find(|kv| kv[0] == EBPF_OBJ_ENV)?[1]
                .as_str()
                .map(str::to_string)
        })
}

fn run_agent(repo: &Path, mut args: Vec<String>) -> Result<()> {
    require_root(
        "run",
        "the agent loads eBPF programs and destroys sockets, which needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN",
    )?;
    bootstrap(repo)?;
    let bin = build_agent(repo)?;
    if args.is_empty() {
        args.push("run".into());
    }
    let mut cmd = Command::new(bin);
    cmd.args(args);
    clean_cargo_run_env(&mut cmd);
    exec(&mut cmd)
}

/// Whether `dpkg-query -W -f '${Status}'` output means "installed".
fn dpkg_installed(status: &str) -> bool {
    status.trim() == "install ok installed"
}

/// The packages of `wanted` that dpkg does not report as installed.
fn missing_packages<'a>(wanted: &[&'a str]) -> Result<Vec<&'a str>> {
    let mut missing = Vec::new();
    for &package in wanted {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", package])
            .stdin(Stdio::null())
            .output()
            .context("cannot run dpkg-query; this setup expects Debian or a derivative")?;
        // dpkg-query exits 1 for a package it has never heard of: missing too.
        if !(out.status.success() && dpkg_installed(&String::from_utf8_lossy(&out.stdout))) {
            missing.push(package);
        }
    }
    Ok(missing)
}

fn install_packages(wanted: &[&str]) -> Result<()> {
    let missing = missing_packages(wanted)?;
    if missing.is_empty() {
        say(&format!("already installed: {}", wanted.join(" ")));
        return Ok(());
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update"])).context("apt-get update failed; check the apt sources")?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install).context("installing the test dependencies failed")?;
    let still = missing_packages(wanted)?;
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but these packages are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// Whether a /proc/self/mounts text has tracefs mounted at `at`.
fn tracefs_mounted(mounts: &str, at: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(at) && fields.next() == Some("tracefs")
    })
}

fn mount_tracefs() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    if tracefs_mounted(&mounts, TRACEFS) {
        say(&format!("tracefs is mounted at {TRACEFS}"));
        return Ok(());
    }
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "tracefs", "tracefs", TRACEFS]);
    run(&mut cmd).context(
        "cannot mount tracefs; the tests read tracepoint formats from it (the kernel needs \
         CONFIG_TRACING)",
    )
}

/// The `cargo` arguments for the test run: release build, the whole workspace unless the user
/// picked packages, one test thread unless the user chose a number.
fn cargo_test_args(user: &[String]) -> Vec<String> {
    let split = user.iter().position(|a| a == "--");
    let (cargo_args, harness_args) = match split {
        Some(i) => (&user[..i], &user[i + 1..]),
        None => (user, &[][..]),
    };
    let mut args = vec!["test".to_string(), "--release".to_string()];
    let picks_packages = cargo_args.iter().any(|a| {
        a == "--workspace"
            || a == "--all"
            || a.starts_with("--package")
            || (a.starts_with("-p") && !a.starts_with("--"))
    });
    if !picks_packages {
        args.push("--workspace".into());
    }
    args.extend(cargo_args.iter().cloned());
    args.push("--".into());
    if !harness_args.iter().any(|a| a.starts_with("--test-threads")) {
        args.push("--test-threads=1".into());
    }
    args.extend(harness_args.iter().cloned());
    args
}

fn test(repo: &Path, args: &[String]) -> Result<()> {
    require_root(
        "test",
        "it installs packages, mounts tracefs, and the tests load eBPF programs and create \
         network namespaces",
    )?;
    const STAGES: usize = 6;
    stage(1, STAGES, "system packages");
    let packages: Vec<&str> = TEST_PACKAGES
        .iter()
        .chain(vm::VM_PACKAGES)
        .copied()
        .collect();
    install_packages(&packages)?;
    stage(2, STAGES, "tracefs");
    mount_tracefs()?;
    stage(3, STAGES, "toolchain bootstrap");
    bootstrap(repo)?;
    say("nightly rust-src and .tools/bin/bpf-linker are in place");
    stage(4, STAGES, "agent (release) with its eBPF programs");
    let bin = build_agent(repo)?;
    stage(5, STAGES, "tests");
    let mut cmd = userspace_cargo(repo);
    cmd.args(cargo_test_args(args)).env("TCPSTALL_BIN", &bin);
    run(&mut cmd).context("tests failed")?;
    // The kernel scenarios again, with the agent on the trouble-only hooks.
    let mut cmd = userspace_cargo(repo);
    cmd.args(cargo_test_args(&[
        "-p".into(),
        "tests".into(),
        "--test".into(),
        "kernels".into(),
    ]))
    .env("TCPSTALL_BIN", &bin)
    .env("TCPSTALL_TROUBLE_HOOKS", "1")
    .env("TCPSTALL_EXPECT_ATTACH", vm::EXPECT_TROUBLE);
    run(&mut cmd).context("the kernel scenarios with --trouble-hooks failed")?;
    say("all host tests passed");
    stage(6, STAGES, "kernel matrix (QEMU guests)");
    vm_matrix(repo, &bin, &vm::VmOpts::default())?;
    say("all tests passed");
    Ok(())
}

/// Builds the guest test and runs the kernel matrix.
fn vm_matrix(repo: &Path, agent: &Path, opts: &vm::VmOpts) -> Result<()> {
    let test_bin = vm::build_guest_test(&mut userspace_cargo(repo))?;
    let target = target_dir(&metadata(repo)?)?;
    vm::vm_test(&target, agent, &test_bin, opts)
}

fn bench(repo: &Path, args: Vec<String>) -> Result<()> {
    bootstrap(repo)?;
    if !has_bin(&metadata(repo)?, "tests", "bench") {
        bail!(
            "there is no benchmark program yet: package `tests` has no bin target `bench` \
             (tests/src/bin/bench.rs); it is tracked by the \"benchmarks\" issue"
        );
    }
    let bin = build_agent(repo)?;
    let mut cmd = userspace_cargo(repo);
    cmd.args(["run", "--release", "-p", "tests", "--bin", "bench", "--"])
        .args(args)
        .env("TCPSTALL_BIN", bin);
    exec(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_test_args() {
        assert_eq!(
            cargo_test_args(&[]),
            strings(&["test", "--release", "--workspace", "--", "--test-threads=1"])
        );
    }

    #[test]
    fn user_test_args_pass_through() {
        assert_eq!(
            cargo_test_args(&strings(&["-p", "tests", "--", "wedge", "--nocapture"])),
            strings(&[
                "test",
                "--release",
                "-p",
                "tests",
                "--",
                "--test-threads=1",
                "wedge",
                "--nocapture"
            ])
        );
        assert_eq!(
            cargo_test_args(&strings(&["--package=monitor", "--", "--test-threads=2"])),
            strings(&[
                "test",
                "--release",
                "--package=monitor",
                "--",
                "--test-threads=2"
            ])
        );
        assert_eq!(
            cargo_test_args(&strings(&["--no-fail-fast"])),
            strings(&[
                "test",
                "--release",
                "--workspace",
                "--no-fail-fast",
                "--",
                "--test-threads=1"
            ])
        );
    }

    #[test]
    fn dpkg_status() {
        assert!(dpkg_installed("install ok installed"));
        assert!(!dpkg_installed("deinstall ok config-files"));
        assert!(!dpkg_installed("unknown ok not-installed"));
        assert!(!dpkg_installed(""));
    }

    #[test]
    fn finds_tracefs() {
        let mounts = "sysfs /sys sysfs rw,nosuid 0 0\n\
                      tracefs /sys/kernel/tracing tracefs rw,nosuid,nodev,noexec 0 0\n";
        assert!(tracefs_mounted(mounts, TRACEFS));
        assert!(!tracefs_mounted("sysfs /sys sysfs rw 0 0\n", TRACEFS));
        assert!(!tracefs_mounted(
            "debugfs /sys/kernel/tracing debugfs rw 0 0\n",
            TRACEFS
        ));
    }

    #[test]
    fn finds_the_embedded_object() {
        let id = "path+file:///r/monitor#0.1.0";
        let ran = |pkg: &str, cfgs: &str, env: &str| {
            format!(
                r#"{{"reason":"build-script-executed","package_id":"{pkg}","cfgs":[{cfgs}],"env":[{env}]}}"#
            )
        };
        let with = ran(
            id,
            r#""root_tests","tcpstall_ebpf_obj""#,
            r#"["TCPSTALL_EBPF_OBJ_PATH","/o/monitor"]"#,
        );
        let text = format!("{{\"reason\":\"build-finished\"}}\n{with}\n");
        assert_eq!(embedded_object(&text, id).as_deref(), Some("/o/monitor"));
        assert_eq!(embedded_object(&text, "other"), None);
        let without = ran(id, r#""root_tests""#, "");
        assert_eq!(embedded_object(&without, id), None);
    }

    #[test]
    fn finds_bin_targets() {
        let meta: serde_json::Value = serde_json::json!({
            "packages": [
                {"name": "tests", "targets": [
                    {"name": "tests", "kind": ["lib"]},
                    {"name": "bench", "kind": ["bin"]}
                ]},
                {"name": "monitor", "targets": [{"name": "tcpstall", "kind": ["bin"]}]}
            ]
        });
        assert!(has_bin(&meta, "tests", "bench"));
        assert!(!has_bin(&meta, "monitor", "bench"));
        assert!(!has_bin(&meta, "tests", "tests"));
    }

    #[test]
    fn describes_commands() {
        let mut cmd = Command::new("cargo");
        cmd.args(["build", "a b"]).env("RUSTFLAGS", "-C x");
        assert_eq!(describe(&cmd), "RUSTFLAGS='-C x' cargo build 'a b'");
    }

    #[test]
    fn cli_takes_trailing_args() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "-p", "tests", "--", "x"]).unwrap();
        match cli.command {
            Cmd::Test { args } => assert_eq!(args, strings(&["-p", "tests", "--", "x"])),
            _ => panic!("wrong subcommand"),
        }
        let cli = Cli::try_parse_from(["xtask", "run", "--config", "c.toml"]).unwrap();
        match cli.command {
            Cmd::Run { args } => assert_eq!(args, strings(&["--config", "c.toml"])),
            _ => panic!("wrong subcommand"),
        }
    }
}
