//! The agent's command line as an operator meets it: a bad policy is refused before anything
//! is attached, and a node where resets cannot work runs observe-only and says so.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::agent::binary;
use tests::{policy, require_root, reset_rule};

fn tcpstall_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("tcpstall_")))
        .count()
}

fn temp_file(name: &str, body: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("tcpstall-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_bad_policy_is_refused_with_line_and_fix_and_nothing_is_attached() {
    require_root();
    let bad = temp_file(
        "bad.toml",
        "tick = \"1s\"\n\n[defaults]\nzero_window_after = \"30 seconds\"\n\n[[rule]]\nname = \"web\"\nlocal_ports = [8080]\nremote_cidrs = [\"10.0.0.1/8\"]\naction = \"reset\"\nzero_window_aftr = \"5s\"\n\n[[rule]]\nname = \"empty\"\naction = \"reset\"\n",
    );
    let before = tcpstall_programs();
    let out = Command::new(binary())
        .args(["run", "--no-state", "--policy"])
        .arg(&bad)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run tcpstall");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "no events for a refused policy");
    let file = bad.display().to_string();
    // Every problem at once, each with FILE:LINE and what to write instead.
    for (line, what) in [
        (4, "30s"),
        (9, "10.0.0.0/8"),
        (11, "zero_window_after"),
        (13, "selector"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{file}:{line}:")) && l.contains(what)),
            "no `{file}:{line}:` line mentioning {what:?} in:\n{stderr}"
        );
    }
    assert_eq!(
        tcpstall_programs(),
        before,
        "a refused policy attached programs"
    );
    // `policy check` says the same with the same exit code.
    let chk = Command::new(binary())
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(chk.status.code(), Some(2));
    assert!(chk.stdout.is_empty());
    std::fs::remove_file(&bad).unwrap();
}

/// With `--trouble-hooks` (no per-packet hook) a rule acting only on `slow_drain` could never
/// fire: the agent refuses the policy before anything is attached, and `policy check` run
/// with the same environment says the same.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn under_trouble_hooks_a_rule_they_cannot_serve_is_refused_before_attaching() {
    require_root();
    let file = temp_file(
        "drain.toml",
        "[[rule]]\nname = \"web\"\nlocal_ports = [8080]\nclasses = [\"zero_window\"]\n\n\
         [[rule]]\nname = \"drain\"\nlocal_ports = [8081]\nclasses = [\"slow_drain\"]\n",
    );
    let before = tcpstall_programs();
    let out = Command::new(binary())
        .args(["run", "--no-state", "--duration", "1s", "--policy"])
        .arg(&file)
        .env("TCPSTALL_TROUBLE_HOOKS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run tcpstall");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "no events for a refused policy");
    let want = format!(
        "{}:6: rule \"drain\" acts only on `slow_drain`",
        file.display()
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&want) && l.contains("--trouble-hooks")),
        "no line starting {want:?} in:\n{stderr}"
    );
    assert_eq!(
        tcpstall_programs(),
        before,
        "a refused policy attached programs"
    );
    let check = |trouble: &str| {
        Command::new(binary())
            .args(["policy", "check"])
            .arg(&file)
            .env("TCPSTALL_TROUBLE_HOOKS", trouble)
            .output()
            .unwrap()
    };
    let chk = check("1");
    assert_eq!(chk.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&chk.stderr).contains(&want));
    // Without those hooks the same policy is valid.
    assert_eq!(check("0").status.code(), Some(0));
    std::fs::remove_file(&file).unwrap();
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn without_cap_net_admin_the_agent_says_so_and_runs_observe_only() {
    require_root();
    let p = temp_file(
        "reset.toml",
        &policy(&[22], 1000, &reset_rule("web", &[18080], &["zero_window"])),
    );
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--no-state", "--policy"])
        .arg(&p)
        .args(["--duration", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // Without CAP_NET_ADMIN (root keeps everything else).
    tests::drop_net_admin(&mut cmd);
    let mut child = cmd.spawn().expect("spawn tcpstall");
    let stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agent did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(&p).unwrap();
    let ev: serde_json::Value = serde_json::from_str(&first).expect("agent_started line");
    monitor::event::validate(&ev).unwrap();
    assert_eq!(ev["event"], "agent_started", "{ev}");
    assert_eq!(ev["reset_path"]["works"], false, "{ev}");
    assert_eq!(
        ev["mode"], "observe",
        "a reset policy without a reset path observes: {ev}"
    );
    let detail = ev["reset_path"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("CAP_NET_ADMIN"),
        "the detail must say what is missing: {detail}"
    );
}

/// With no attach point for a hook detection cannot do without, the agent refuses to start,
/// naming the hook, the kernel and every attach point it tried, and leaves nothing loaded.
/// Forced here with the testing knob `TCPSTALL_ATTACH=kprobe` on a kernel without kprobes
/// (this development VM); where the kernel has kprobes the same run must start on them.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_required_hook_without_attach_point_is_a_clear_error() {
    require_root();
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let before = tcpstall_programs();
    let out = Command::new(binary())
        .args(["run", "--no-state", "--duration", "1s"])
        .args(["--stats-interval", "1s"])
        .env("TCPSTALL_ATTACH", "kprobe")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run tcpstall");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if has_kprobes {
        assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
        let started = stdout.lines().next().unwrap_or_default();
        assert!(
            started.contains("\"kprobe/tcp_rcv_established\""),
            "{started}"
        );
        return;
    }
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
    assert!(
        stdout.is_empty(),
        "no events from an agent that did not start: {stdout}"
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    for want in [
        "no usable attach point for the ack hook",
        release.trim(),
        "tracepoint tcp_probe skipped: TCPSTALL_ATTACH=kprobe",
        "kprobe tcp_rcv_established refused: this kernel has no kprobes",
    ] {
        assert!(stderr.contains(want), "stderr lacks {want:?}:\n{stderr}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcpstall_programs() > before {
        assert!(
            Instant::now() < deadline,
            "programs left loaded by an agent that refused to start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
