//! Harness of tcpstall's real-kernel integration tests (`tests/tests/*.rs`).
//!
//! The tests run the agent binary ([`agent::binary`]) as a child process against real
//! sockets, as root, one at a time (`cargo xtask test` runs them with `--test-threads=1`):
//!
//! * [`agent`]: the agent child, its schema-checked NDJSON events, waits and negative checks;
//! * [`netns`]: network namespaces, veth links, nftables blackholes;
//! * [`traffic`]: servers writing a verifiable stream from a thread named "tswriter", and
//!   clients that never read, read slowly, fast, pause, or idle;
//! * [`stream`]: the deterministic byte stream; [`ws`]: the WebSocket bits; [`sock`]: socket
//!   calls `std` lacks;
//! * [`prometheus`]: a real Prometheus server scraping the agent; [`http`]: a tiny GET.

pub mod agent;
pub mod check;
pub mod http;
pub mod netns;
pub mod prometheus;
pub mod shapes;
pub mod sock;
pub mod stream;
pub mod traffic;
pub mod ws;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Stall thresholds the test policies use.
pub const THRESHOLD: Duration = Duration::from_secs(2);
/// The agent's tick in the tests.
pub const TICK: Duration = Duration::from_millis(250);
/// Allowance on top of threshold + 2 ticks for scheduling on a loaded 2-core machine.
pub const SLACK: Duration = Duration::from_millis(1500);

/// The latest a stall (or the reset it triggers) may be reported after the moment the
/// connection stopped making progress: threshold + 2 ticks + [`SLACK`].
pub fn detection_bound() -> Duration {
    THRESHOLD + 2 * TICK + SLACK
}

/// Start of a root-only test (eBPF, namespaces, SOCK_DESTROY): fails without root, and
/// clears namespaces left by killed test runs. Such tests carry
/// `#[cfg_attr(not(root_tests), ignore = ...)]`: `build.rs` sets `root_tests` when building
/// as root or under `CI=true`, so elsewhere they show as ignored instead of passing
/// without running, and under CI a test that cannot run fails here.
pub fn require_root() {
    assert!(
        sock::is_root(),
        "this test needs root (eBPF, network namespaces, SOCK_DESTROY): run it as root, \
         e.g. `cargo xtask test`"
    );
    netns::remove_stale();
}

/// Wait for `cond` to hold, polling every 20 ms, for at most `timeout`: `false` if it never
/// did. Tests wait on the condition they need instead of sleeping a fixed time.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(timeout, Duration::from_millis(20), || cond().then_some(())).is_some()
}

/// Call `f` every `every` until it returns `Some`, for at most `timeout`: `None` if it never
/// did.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// The workspace (repository) root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// A policy with the suite's thresholds and tick, followed by `extra` (guards, rules).
pub fn policy(protect_ports: &[u16], max_resets_per_minute: u32, rules: &str) -> String {
    let ports: Vec<String> = protect_ports.iter().map(|p| p.to_string()).collect();
    format!(
        "tick = \"{tick}ms\"\n\n[defaults]\nzero_window_after = \"{t}ms\"\nno_ack_after = \"{t}ms\"\n\
         slow_drain_floor = \"1KiB/s\"\nslow_drain_window = \"4s\"\nrecv_backlog_after = \"{t}ms\"\n\n\
         [guards]\nprotect_ports = [{ports}]\nmax_resets_per_minute = {max_resets_per_minute}\n\n{rules}",
        tick = TICK.as_millis(),
        t = THRESHOLD.as_millis(),
        ports = ports.join(", "),
    )
}

/// A `[[rule]]` table resetting `classes` on sockets whose local port is one of `ports`.
pub fn reset_rule(name: &str, ports: &[u16], classes: &[&str]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let classes: Vec<String> = classes.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[[rule]]\nname = \"{name}\"\nlocal_ports = [{}]\naction = \"reset\"\nclasses = [{}]\n\n",
        ports.join(", "),
        classes.join(", ")
    )
}

/// Make `cmd`'s child receive `sig` when the thread that spawns it dies (spawn from the main
/// thread), so no agent, server or benchmark helper outlives a killed run.
pub fn die_with_parent(cmd: &mut Command, sig: libc::c_int) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Drop CAP_NET_ADMIN from `cmd`'s bounding set: the exec'd child (root) keeps every other
/// capability.
pub fn drop_net_admin(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            const CAP_NET_ADMIN: libc::c_ulong = 12;
            if libc::prctl(libc::PR_CAPBSET_DROP, CAP_NET_ADMIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
