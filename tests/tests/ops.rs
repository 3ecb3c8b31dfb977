//! Issue 11, the agent's own lifecycle, on the real agent: an event output that fails (full
//! disk, closed stdout) never stops enforcement and the losses are reported once it works
//! again; `--output` must be a regular file; SIGHUP reopens the output (log rotation with
//! Debian's real `logrotate`: nothing lost, duplicated or split) and reloads the policy
//! (a good one keeps every socket's state, a bad one is refused with its problems); hostile
//! policy files (FIFO, /dev/zero, oversized, many wide rules) are refused or checked quickly,
//! by `policy check` and by `run --policy` before anything is attached.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tests::agent::{binary, is_event, is_socket_event, Agent, AgentOpts};
use tests::check::{expect_reset, wedge, GRACE};
use tests::traffic::{Conn, Listener, Outcome};
use tests::{detection_bound, die_with_parent, policy, require_root, reset_rule, THRESHOLD};

const WEDGE_CLASSES: &[&str] = &["zero_window", "no_ack"];

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// The blocked writer of `c` fails with ECONNABORTED within the detection bound: the agent
/// reset it (checked on the socket, not in the agent's events).
fn expect_aborted(c: &Conn, since: Instant, what: &str, diag: impl Fn() -> String) {
    let wait = (since + detection_bound() + GRACE).saturating_duration_since(Instant::now());
    match c.writer().wait_outcome(wait) {
        Some(Outcome::Failed { errno, at }) => {
            assert_eq!(errno, libc::ECONNABORTED, "{what}: errno{}", diag());
            eprintln!("{what}: send() aborted {:?} after the wedge", at - since);
        }
        other => panic!(
            "{what}: the wedge was not reset (outcome {other:?}){}",
            diag()
        ),
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("tcpstall-ops-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(d)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tcpstall_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("tcpstall_")))
        .count()
}

/// The tcpstall programs loaded once those of an agent that just stopped are gone (the
/// kernel frees a detached program after a grace period): wait up to 10 s for none.
fn settled_programs() -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = tcpstall_programs();
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `tcpstall ARGS`, killing it after `limit`. Returns its output and how long it took.
fn run_bounded(args: &[&str], limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd, libc::SIGKILL);
    let mut child = cmd.spawn().expect("spawn tcpstall");
    // Drain both pipes in threads so a chatty child cannot block on a full pipe.
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let (o, e) = (read(Box::new(out)), read(Box::new(err)));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tcpstall {} did not finish within {limit:?} (killed)",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t0.elapsed();
    let output = Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    };
    (output, took)
}

// ---------------------------------------------------------------------------------------
// Outputs that fail
// ---------------------------------------------------------------------------------------

/// A small tmpfs mounted for one test (a disk that can be filled), unmounted on drop.
struct SmallFs {
    dir: TempDir,
    filler: PathBuf,
}

const SMALL_FS: &str = "tcpstall-ops-fs";

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        // Left over by a killed run.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            for line in mounts.lines().filter(|l| l.starts_with(SMALL_FS)) {
                if let Some(at) = line.split_whitespace().nth(1) {
                    let _ = Command::new("umount").args(["-l", at]).status();
                }
            }
        }
        let dir = TempDir::new("fs");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                SMALL_FS,
            ])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(st.success(), "mount -t tmpfs failed");
        let filler = dir.path().join("filler");
        SmallFs { dir, filler }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a file until the filesystem refuses more: the disk is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(&self.filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }

    fn free(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Disk full under `--output`: the agent keeps running and resetting, counts what it could
/// not write, never leaves a partial line, and says how much it lost once the disk has room
/// again. (Before: the first failed write ended the agent, and enforcement with it.)
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_full_disk_never_stops_enforcement_and_the_loss_is_reported() {
    require_root();
    let fs = SmallFs::mount("256k");
    let out = fs.path("events.ndjson");
    let l = Listener::bind(loopback()).unwrap();
    let mut opts = AgentOpts::new(policy(
        &[22],
        1000,
        &reset_rule("wedge", &[l.port()], WEDGE_CLASSES),
    ))
    .output(&out);
    opts.stats_interval = Duration::from_millis(250);
    let agent = opts.start();
    fs.fill();
    assert!(
        agent.wait_stderr("cannot write", Duration::from_secs(10)),
        "the agent did not report a failed write on the full disk{}",
        agent.diagnostics()
    );
    let before = agent.mark();
    let (c, blocked) = wedge(&l, 1);
    expect_aborted(&c, blocked, "wedge on a full disk", || agent.diagnostics());
    // Its events could not be written.
    assert!(
        agent
            .matching(|e| is_socket_event(e, "socket_reset", c.server_cookie))
            .is_empty(),
        "a socket_reset was written to a full disk"
    );
    fs.free();
    let note = agent
        .wait_for_received(
            before,
            |e| is_event(e, "events_lost"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| {
            panic!(
                "no events_lost after the disk had room again{}",
                agent.diagnostics()
            )
        })
        .json;
    let lost = note["count"].as_u64().unwrap();
    assert!(
        lost >= 3,
        "stall_started, reset_intent, socket_reset at least: {note}"
    );
    assert_eq!(note["total"], note["count"], "{note}");
    assert!(agent.wait_stderr("works again", Duration::from_secs(5)));
    let events = agent.stop();
    let stats = events.iter().rev().find(|e| is_event(e, "stats")).unwrap();
    // The full tmpfs can still take a short line into the last, partly used page of the
    // events file, so a first note may come before `free` and more lines be lost after it:
    // the final stats count what the last note says was lost in all.
    let last_note = events
        .iter()
        .rev()
        .find(|e| is_event(e, "events_lost"))
        .expect("the note found above");
    assert!(last_note["total"].as_u64() >= Some(lost), "{last_note}");
    assert_eq!(
        stats["events_lost"], last_note["total"],
        "{stats} / {last_note}"
    );
    assert!(stats["resets"]["done"].as_u64() >= Some(1), "{stats}");
    // Every line that is there is whole (the harness parsed and validated each), and the
    // stats lines count exactly the lines before them.
    for (i, e) in events
        .iter()
        .enumerate()
        .filter(|(_, e)| is_event(e, "stats"))
    {
        assert_eq!(
            e["events_written"].as_u64(),
            Some(i as u64),
            "line {i}: {e}"
        );
    }
}

/// stdout closed by the reader: the agent keeps resetting, and exits 0 on SIGTERM. (Before:
/// the next event write ended it.)
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn a_closed_stdout_never_stops_enforcement() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let dir = TempDir::new("closed");
    let pol = dir.path().join("p.toml");
    std::fs::write(
        &pol,
        policy(
            &[22],
            1000,
            &reset_rule("wedge", &[l.port()], WEDGE_CLASSES),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(binary());
    cmd.args([
        "run",
        "--tick",
        "250ms",
        "--stats-interval",
        "250ms",
        "--policy",
    ])
    .arg(&pol)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    die_with_parent(&mut cmd, libc::SIGKILL);
    let mut child = Killed(cmd.spawn().unwrap());
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"agent_started\""), "{first}");
    drop(stdout); // the reader goes away
    let (c, blocked) = wedge(&l, 2);
    let pid = child.0.id();
    expect_aborted(&c, blocked, "wedge with stdout closed", || {
        format!(" (agent {pid} alive: {:?})", child_alive(pid))
    });
    assert!(
        child_alive(pid).is_none(),
        "the agent exited: {:?}",
        child_alive(pid)
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// `Some(status)` once the child has exited.
fn child_alive(pid: u32) -> Option<String> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) if !s.contains(") Z ") => None,
        Ok(_) => Some("zombie".into()),
        Err(_) => Some("gone".into()),
    }
}

/// Kills the child on drop (a failed test must not leave an agent behind).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--output` is a regular file or nothing: a symbolic link (even to a regular file), a FIFO,
/// a directory and a device are refused with what, why and what to do, before anything is
/// attached; a new file is created with mode 0600.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn the_output_must_be_a_regular_file() {
    require_root();
    let dir = TempDir::new("output");
    let real = dir.path().join("real.ndjson");
    std::fs::write(&real, "").unwrap();
    let link = dir.path().join("link.ndjson");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let before = settled_programs();
    for (path, what) in [
        (link.as_path(), "a symbolic link"),
        (fifo.as_path(), "a FIFO"),
        (dir.path(), "a directory"),
        (Path::new("/dev/null"), "a character device"),
    ] {
        let (out, _) = run_bounded(
            &[
                "run",
                "--duration",
                "2s",
                "--output",
                path.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        assert!(out.stdout.is_empty());
        for want in [
            format!(
                "cannot use {} as the event output: it is {what}",
                path.display()
            ),
            "omit --output to write events to stdout".to_string(),
        ] {
            assert!(stderr.contains(&want), "{want:?} not in:\n{stderr}");
        }
    }
    assert_eq!(
        tcpstall_programs(),
        before,
        "a refused output attached programs"
    );
    assert_eq!(
        std::fs::read(&real).unwrap(),
        b"",
        "written through the link"
    );
    let fresh = dir.path().join("fresh.ndjson");
    let (out, _) = run_bounded(
        &[
            "run",
            "--duration",
            "1s",
            "--output",
            fresh.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "created with mode {mode:o}");
    let text = std::fs::read_to_string(&fresh).unwrap();
    assert!(text.lines().next().unwrap().contains("\"agent_started\""));
    assert!(text.lines().last().unwrap().contains("\"agent_stopped\""));
}

// ---------------------------------------------------------------------------------------
// SIGHUP: policy reload
// ---------------------------------------------------------------------------------------

fn reload(agent: &Agent, from: usize) -> Value {
    agent.signal(libc::SIGHUP);
    agent
        .wait_for_received(
            from,
            |e| is_event(e, "policy_reload"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no policy_reload after SIGHUP{}", agent.diagnostics()))
        .json
}

/// SIGHUP with a valid new policy: it is in force from the next tick, and what the agent
/// knew about every socket stays — a stall that started under the old (observe) rule is not
/// started again and is reset under the new one; a later wedge is reset by the new rule.
/// (Before: SIGHUP killed the agent.)
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn sighup_reloads_a_good_policy_and_keeps_socket_state() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let observe = policy(
        &[22],
        1000,
        &reset_rule("wedge", &[l.port()], WEDGE_CLASSES).replace("\"reset\"", "\"observe\""),
    );
    let agent = AgentOpts::new(observe).start();
    let (early, _) = wedge(&l, 3);
    let started = agent
        .wait_for(
            |e| is_socket_event(e, "stall_started", early.server_cookie),
            detection_bound() + GRACE,
        )
        .unwrap_or_else(|| panic!("no stall_started{}", agent.diagnostics()));
    assert_eq!(started["action"], "observe", "{started}");
    std::fs::write(
        agent.policy_path(),
        policy(
            &[22],
            1000,
            &reset_rule("wedge", &[l.port()], WEDGE_CLASSES),
        ),
    )
    .unwrap();
    let mark = agent.mark();
    let ev = reload(&agent, mark);
    assert_eq!(ev["ok"], true, "{ev}");
    assert_eq!(ev["mode"], "enforce", "{ev}");
    assert_eq!(ev["policy"], agent.policy_path().display().to_string());
    // The earlier stall, now under a reset rule: reset, not started again.
    expect_aborted(
        &early,
        Instant::now(),
        "the stall from before the reload",
        || agent.diagnostics(),
    );
    let reset = agent
        .wait_for(
            |e| is_socket_event(e, "socket_reset", early.server_cookie),
            Duration::from_secs(2),
        )
        .expect("socket_reset of the earlier stall");
    assert_eq!(reset["rule"], "wedge");
    assert_eq!(
        agent
            .matching(|e| is_socket_event(e, "stall_started", early.server_cookie))
            .len(),
        1,
        "the stall was started again after the reload: its state was lost"
    );
    // A later wedge: reset per the new rule.
    let (later, blocked) = wedge(&l, 4);
    let ev = expect_reset(&agent, &later, blocked, "wedge after the reload");
    assert_eq!(ev["rule"], "wedge");
    agent.stop();
}

/// SIGHUP with an invalid policy: refused, with the problems exactly as `policy check`
/// prints them; the old policy stays in force.
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn sighup_refuses_a_bad_policy_and_the_old_one_stays() {
    require_root();
    let l = Listener::bind(loopback()).unwrap();
    let good = policy(
        &[22],
        1000,
        &reset_rule("wedge", &[l.port()], WEDGE_CLASSES),
    );
    let agent = AgentOpts::new(good.clone()).start();
    let bad = good.replace("action = \"reset\"", "action = \"rest\"")
        + "[[rule]]\nname = \"x\"\nlocal_ports = [\"9-1\"]\n";
    std::fs::write(agent.policy_path(), &bad).unwrap();
    let ev = reload(&agent, 0);
    assert_eq!(ev["ok"], false, "{ev}");
    let problems: Vec<&str> = ev["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let check = Command::new(binary())
        .args(["policy", "check"])
        .arg(agent.policy_path())
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    let printed = String::from_utf8(check.stderr).unwrap();
    assert_eq!(problems, printed.lines().collect::<Vec<_>>());
    assert_eq!(problems.len(), 2, "{problems:?}");
    let file = agent.policy_path().display().to_string();
    assert!(
        problems.iter().all(|p| p.starts_with(&format!("{file}:"))),
        "{problems:?}"
    );
    // The old reset rule still acts.
    let (c, blocked) = wedge(&l, 5);
    let reset = expect_reset(&agent, &c, blocked, "wedge after a refused reload");
    assert_eq!(reset["rule"], "wedge");
    agent.stop();
}

// ---------------------------------------------------------------------------------------
// SIGHUP: log rotation with Debian's logrotate
// ---------------------------------------------------------------------------------------

/// The rotated files, oldest first, then the current one.
fn rotated_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut numbered: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let k = n.strip_prefix(&format!("{name}."))?.parse().ok()?;
            Some((k, e.path()))
        })
        .collect();
    numbered.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    files.push(dir.join(name));
    files
}

/// `logrotate -f` (create mode, postrotate SIGHUP) five times while the agent writes a
/// `stats` line every 50 ms and stall events: across all files no line is lost, duplicated
/// or split, each new file starts with `output_reopened`, and `stats.events_written` matches
/// every stats line's position in the concatenated stream. (Before: SIGHUP killed the agent.)
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn logrotate_loses_duplicates_and_splits_nothing() {
    require_root();
    let Some(logrotate) = which("logrotate") else {
        panic!(
            "logrotate is not installed (cargo xtask test installs it: apt-get install logrotate)"
        );
    };
    let dir = TempDir::new("rotate");
    let name = "events.ndjson";
    let out = dir.path().join(name);
    let l = Listener::bind(loopback()).unwrap();
    let observe = policy(
        &[22],
        1000,
        &reset_rule("wedge", &[l.port()], WEDGE_CLASSES).replace("\"reset\"", "\"observe\""),
    );
    let mut opts = AgentOpts::new(observe).output(&out);
    opts.tick = Duration::from_millis(50);
    opts.stats_interval = Duration::from_millis(50);
    let agent = opts.start();
    let conf = dir.path().join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{out} {{\n    rotate 100\n    missingok\n    create 0600 root root\n    postrotate\n        /bin/kill -HUP {pid}\n    endscript\n}}\n",
            out = out.display(),
            pid = agent.pid()
        ),
    )
    .unwrap();
    let state = dir.path().join("logrotate.state");
    const ROTATIONS: usize = 5;
    let mut wedges = Vec::new();
    for k in 1..=ROTATIONS {
        // Stall events in the stream too: a new wedge before each rotation (stalls after
        // THRESHOLD), one closed after it.
        if k <= 3 {
            wedges.push(wedge(&l, 10 + k as u64).0);
        }
        if k == 4 {
            let cookie = wedges[0].server_cookie;
            agent
                .wait_for(
                    |e| is_socket_event(e, "stall_started", cookie),
                    THRESHOLD + GRACE,
                )
                .unwrap_or_else(|| panic!("no stall_started{}", agent.diagnostics()));
            wedges[0].abort_server().unwrap();
            agent
                .wait_for(
                    |e| is_socket_event(e, "stall_closed", cookie),
                    Duration::from_secs(5),
                )
                .unwrap_or_else(|| panic!("no stall_closed{}", agent.diagnostics()));
        }
        let st = Command::new(&logrotate)
            .arg("-f")
            .arg("-s")
            .arg(&state)
            .arg(&conf)
            .status()
            .expect("running logrotate");
        assert!(st.success(), "logrotate failed");
        let n = |a: &Agent| a.matching(|e| is_event(e, "output_reopened")).len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while n(&agent) < k {
            assert!(
                Instant::now() < deadline,
                "no output_reopened after rotation {k}{}",
                agent.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the stream run on in the new file for a while (at least a few stats lines).
        let mark = agent.mark();
        for _ in 0..4 {
            let m = agent.mark();
            agent
                .wait_for_received(
                    m.max(mark),
                    |e| is_event(e, "stats"),
                    Duration::from_secs(5),
                )
                .expect("stats keep coming");
        }
    }
    // Every wedge reported its stall.
    for c in &wedges {
        agent
            .wait_for(
                |e| is_socket_event(e, "stall_started", c.server_cookie),
                THRESHOLD + GRACE,
            )
            .unwrap_or_else(|| panic!("no stall_started{}", agent.diagnostics()));
    }
    let seen = agent.stop();

    let files = rotated_files(dir.path(), name);
    assert_eq!(files.len(), ROTATIONS + 1, "{files:?}");
    let mut lines: Vec<Value> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.ends_with('\n'), "{} ends mid-line", f.display());
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
        for (j, line) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}: {line}", f.display(), j + 1));
            monitor::event::validate(&v).unwrap();
            if j == 0 && i > 0 {
                assert_eq!(
                    v["event"],
                    "output_reopened",
                    "{}: first line {v}",
                    f.display()
                );
                assert_eq!(v["ok"], true, "{v}");
            }
            lines.push(v);
        }
    }
    assert_eq!(lines[0]["event"], "agent_started");
    assert_eq!(lines.last().unwrap()["event"], "agent_stopped");
    let mut stats = 0;
    for (i, v) in lines.iter().enumerate() {
        if is_event(v, "stats") {
            stats += 1;
            assert_eq!(
                v["events_written"].as_u64(),
                Some(i as u64),
                "line {i}: {v}"
            );
            assert_eq!(v["events_lost"], 0, "{v}");
        }
    }
    assert!(stats >= 4 * ROTATIONS, "only {stats} stats lines");
    let reopened = lines
        .iter()
        .filter(|v| is_event(v, "output_reopened"))
        .count();
    let reloads = lines
        .iter()
        .filter(|v| is_event(v, "policy_reload") && v["ok"] == true)
        .count();
    assert_eq!((reopened, reloads), (ROTATIONS, ROTATIONS));
    for c in &wedges {
        let n = lines
            .iter()
            .filter(|v| is_socket_event(v, "stall_started", c.server_cookie))
            .count();
        assert_eq!(
            n, 1,
            "stall_started of {} appears {n} times",
            c.server_cookie
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|v| is_socket_event(v, "stall_closed", wedges[0].server_cookie))
            .count(),
        1
    );
    // What the harness read live, following the file across rotations, is the same stream.
    assert_eq!(seen.len(), lines.len());
    assert!(seen.iter().zip(&lines).all(|(a, b)| a == b));
    eprintln!(
        "{} lines in {} files, {stats} stats lines, {ROTATIONS} rotations",
        lines.len(),
        files.len()
    );
}

fn which(prog: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------
// Hostile policy files
// ---------------------------------------------------------------------------------------

/// `n` rules over every port, told apart by process name: none shadows another.
fn wide_rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("[[rule]]\nname = \"r{i}\"\nlocal_ports = [\"1-65535\"]\ncomm = [\"c{i}\"]\n\n")
        })
        .collect()
}

/// A FIFO, /dev/zero and an oversized file are refused (they hung, grew without bound, or
/// were read whole), by `policy check` and by `run --policy` before anything is attached;
/// files of many wide rules are checked quickly (200 took 1.4 s, 2,000 minutes).
#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn hostile_policy_files_are_refused_or_checked_quickly() {
    require_root();
    let dir = TempDir::new("hostile");
    let fifo = dir.path().join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "# padding\n".repeat(120_000)).unwrap();
    let before = settled_programs();
    // Generous: a loaded CI machine; these take milliseconds.
    let bound = Duration::from_secs(5);
    for (path, want) in [
        (
            fifo.as_path(),
            "cannot read the policy file: it is a FIFO (named pipe), not a regular file",
        ),
        (
            Path::new("/dev/zero"),
            "cannot read the policy file: it is a character device, not a regular file",
        ),
        (
            big.as_path(),
            "the policy file is too large: 1200000 bytes, the limit is 1048576",
        ),
    ] {
        let p = path.to_str().unwrap();
        for args in [
            vec!["policy", "check", p],
            vec!["run", "--duration", "5s", "--policy", p],
        ] {
            let (out, took) = run_bounded(&args, Duration::from_secs(30));
            let stderr = String::from_utf8_lossy(&out.stderr);
            eprintln!("tcpstall {}: {took:?}", args.join(" "));
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(out.stdout.is_empty(), "{args:?}");
            assert!(
                stderr.starts_with(&format!("{p}: {want}")),
                "{args:?}: {stderr}"
            );
            assert!(took < bound, "{args:?} took {took:?}");
        }
    }
    assert_eq!(
        tcpstall_programs(),
        before,
        "a refused policy attached programs"
    );
    for n in [200, 2000] {
        let wide = dir.path().join(format!("wide{n}.toml"));
        std::fs::write(&wide, wide_rules(n)).unwrap();
        let p = wide.to_str().unwrap();
        let (out, took) = run_bounded(&["policy", "check", p], Duration::from_secs(60));
        eprintln!("policy check of {n} wide rules: {took:?}");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(took < bound, "{n} wide rules took {took:?}");
        // The agent starts with it (the check is the same before anything is attached).
        let (out, _) = run_bounded(
            &["run", "--duration", "1s", "--policy", p],
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.lines().next().unwrap().contains("\"agent_started\""));
    }
}

/// `policy check` warns about valid but dangerous settings and exits 0, or 4 with --strict.
#[test]
fn policy_check_warns_about_dangerous_settings() {
    let dir = TempDir::new("warn");
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "[guards]\nprotect_ports = []\n\n[[rule]]\nname = \"everything\"\nmatch_all = true\n\
         action = \"reset\"\nno_ack_after = \"2s\"\nclasses = [\"no_ack\"]\n",
    )
    .unwrap();
    let f = p.to_str().unwrap();
    let (out, _) = run_bounded(&["policy", "check", f], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].starts_with(&format!(
        "{f}:2:1: warning: protect_ports = [] protects nothing"
    )));
    assert!(lines[1].starts_with(&format!(
        "{f}:4:1: warning: rule `everything` resets with match_all"
    )));
    assert!(lines[2].contains("no_ack_after = \"2s\": healthy readers look wedged"));
    assert!(lines.iter().all(|l| l.contains("; consider: ")), "{stderr}");
    let (out, _) = run_bounded(&["policy", "check", "--strict", f], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4));
    let (out, _) = run_bounded(&["policy", "check", "--json", f], Duration::from_secs(30));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["warnings"].as_array().unwrap().len(), 3);
}
