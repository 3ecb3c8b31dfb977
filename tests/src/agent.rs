//! The agent under test as a child process: started with a policy, its NDJSON stdout
//! collected and schema-checked line by line, stopped (and never leaked) on drop.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the agent may take from spawn to its `agent_started` line (loading and attaching
/// eBPF programs, probing the reset path).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of agent stderr kept for failure messages.
const STDERR_KEEP: usize = 16 * 1024;

/// One event line, as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// When the harness read the line (test-process monotonic clock, comparable with the
    /// instants the traffic helpers record).
    pub at: Instant,
    /// The parsed line.
    pub json: Value,
    /// Its position in the agent's output (0 = `agent_started`).
    pub index: usize,
}

#[derive(Default)]
struct State {
    events: Vec<Received>,
    /// Lines that were not JSON or failed `monitor::event::validate`, with the reason.
    invalid: Vec<String>,
    stdout_closed: bool,
    stderr_tail: String,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Agents in one test binary run one at a time (they would otherwise see and act on each
/// other's sockets and counters); held for an [`Agent`]'s lifetime.
static ONE_AGENT: Mutex<()> = Mutex::new(());

/// Path of the agent binary: `$TCPSTALL_BIN`, else `<workspace>/target/release/tcpstall`.
pub fn binary() -> PathBuf {
    match std::env::var_os("TCPSTALL_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tcpstall"),
    }
}

/// Options of one agent run; [`AgentOpts::start`] spawns it.
#[derive(Clone, Debug)]
pub struct AgentOpts {
    /// Policy file contents (TOML), written to a temporary file passed as `--policy`.
    pub policy: String,
    /// `--tick`.
    pub tick: Duration,
    /// `--stats-interval`.
    pub stats_interval: Duration,
    /// `--dry-run`.
    pub dry_run: bool,
    /// Further arguments after `run`.
    pub extra_args: Vec<String>,
    /// Extra environment variables (testing knobs such as `TCPSTALL_NETNS_IDLE_MS`).
    pub env: Vec<(String, String)>,
    /// `--output FILE`: the events are read from FILE instead of stdout, following it
    /// across log rotation like `tail -F`.
    pub output: Option<PathBuf>,
    /// `--state-dir` and `--pin-dir`. None: a fresh pair for this agent alone, removed when
    /// it is dropped (no test sees another's pinned map, histories or budgets). Share one
    /// [`StateDirs`] between agents to test restarts.
    pub state: Option<Arc<StateDirs>>,
}

/// A state directory and a pin directory (under `/sys/fs/bpf`, which the agent mounts when
/// needed) for one test's agents; both removed when the last holder drops it.
#[derive(Debug)]
pub struct StateDirs {
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--pin-dir`.
    pub pin_dir: PathBuf,
}

impl StateDirs {
    /// Fresh, not yet existing directories, unique to this process.
    pub fn new() -> Arc<StateDirs> {
        let id = format!("{}-{}", std::process::id(), next_id());
        Arc::new(StateDirs {
            state_dir: std::env::temp_dir().join(format!("tcpstall-test-state-{id}")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/tcpstall-test-{id}")),
        })
    }

    /// The agent's state file.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// Names of the files in the pin directory.
    pub fn pins(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.pin_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }

    /// The command-line arguments that select these directories.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--pin-dir".into(),
            self.pin_dir.display().to_string(),
        ]
    }
}

impl Drop for StateDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
        // bpffs: unlink every pin, then the directory.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

impl AgentOpts {
    /// Defaults of the test-suite: 250 ms tick, stats every second, enforcing.
    pub fn new(policy: impl Into<String>) -> AgentOpts {
        AgentOpts {
            policy: policy.into(),
            tick: Duration::from_millis(250),
            stats_interval: Duration::from_secs(1),
            dry_run: false,
            extra_args: Vec::new(),
            env: Vec::new(),
            output: None,
            state: None,
        }
    }

    /// Set `--output FILE` (see [`AgentOpts::output`]).
    pub fn output(mut self, path: impl Into<PathBuf>) -> AgentOpts {
        self.output = Some(path.into());
        self
    }

    /// Use these state and pin directories (shared across the agents of a restart test).
    pub fn state(mut self, dirs: &Arc<StateDirs>) -> AgentOpts {
        self.state = Some(Arc::clone(dirs));
        self
    }

    /// Set `--dry-run`.
    pub fn dry_run(mut self) -> AgentOpts {
        self.dry_run = true;
        self
    }

    /// Spawn the agent and wait for its `agent_started` line (panics with its stderr if it
    /// exits or stays silent for [`START_TIMEOUT`]).
    pub fn start(self) -> Agent {
        Agent::start(self)
    }
}

/// A running `tcpstall run`. Every stdout line is parsed and checked with
/// `monitor::event::validate` as it arrives; any failure makes the next query (and the drop)
/// panic. Dropping sends SIGTERM, waits [`STOP_TIMEOUT`], then SIGKILLs.
pub struct Agent {
    child: Option<Child>,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
    policy_path: PathBuf,
    pid: u32,
    /// Set once the agent has exited: the output follower reads to the end and stops.
    exited: Arc<AtomicBool>,
    _state: Arc<StateDirs>,
    _serial: MutexGuard<'static, ()>,
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Agent {
    /// Spawn with `opts`; see [`AgentOpts::start`].
    pub fn start(opts: AgentOpts) -> Agent {
        let serial = ONE_AGENT.lock().unwrap_or_else(|e| e.into_inner());
        let bin = binary();
        if !bin.is_file() {
            panic!(
                "agent binary {} not found: build it (`cargo build --release -p monitor`) or \
                 run the suite with `cargo xtask test`, or point TCPSTALL_BIN at it",
                bin.display()
            );
        }
        let policy_path = std::env::temp_dir().join(format!(
            "tcpstall-test-policy-{}-{}.toml",
            std::process::id(),
            next_id()
        ));
        std::fs::write(&policy_path, &opts.policy)
            .unwrap_or_else(|e| panic!("writing {}: {e}", policy_path.display()));
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--policy")
            .arg(&policy_path)
            .arg("--tick")
            .arg(ms(opts.tick))
            .arg("--stats-interval")
            .arg(ms(opts.stats_interval));
        if opts.dry_run {
            cmd.arg("--dry-run");
        }
        let state = opts.state.clone().unwrap_or_else(StateDirs::new);
        if let Some(out) = &opts.output {
            cmd.arg("--output").arg(out);
        }
        cmd.args(state.args())
            .args(&opts.extra_args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(if opts.output.is_some() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stderr(Stdio::piped());
        // The agent must not outlive this test process, even if it is killed.
        crate::die_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let s1 = Arc::clone(&shared);
        let exited = Arc::new(AtomicBool::new(false));
        let out_reader = match &opts.output {
            None => {
                let stdout = child.stdout.take().expect("piped stdout");
                std::thread::Builder::new()
                    .name("agent-stdout".into())
                    .spawn(move || read_events(stdout, &s1))
                    .expect("spawn stdout reader")
            }
            Some(path) => {
                let follow = Follow {
                    path: path.clone(),
                    file: None,
                    ino: 0,
                    pid: child.id(),
                    exited: Arc::clone(&exited),
                };
                std::thread::Builder::new()
                    .name("agent-output".into())
                    .spawn(move || read_events(follow, &s1))
                    .expect("spawn output follower")
            }
        };
        let s2 = Arc::clone(&shared);
        let err_reader = std::thread::Builder::new()
            .name("agent-stderr".into())
            .spawn(move || read_stderr(stderr, &s2))
            .expect("spawn stderr reader");
        let pid = child.id();
        let agent = Agent {
            child: Some(child),
            shared,
            readers: vec![out_reader, err_reader],
            policy_path,
            pid,
            exited,
            _state: state,
            _serial: serial,
        };
        match agent.wait_for(|e| is_event(e, "agent_started"), START_TIMEOUT) {
            Some(ev) => {
                if ev["tick_ms"].as_u64() != Some(opts.tick.as_millis() as u64) {
                    panic!(
                        "agent_started.tick_ms = {}, started with --tick {}",
                        ev["tick_ms"],
                        ms(opts.tick)
                    );
                }
            }
            None => panic!(
                "agent did not emit agent_started within {START_TIMEOUT:?}{}",
                agent.diagnostics()
            ),
        }
        agent
    }

    /// The first event (from the agent's start on) matching `pred`, waiting up to `timeout`
    /// for it to arrive.
    pub fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        self.wait_for_received(0, pred, timeout).map(|r| r.json)
    }

    /// Like [`Agent::wait_for`], with the instant the harness received the line, looking only
    /// at events with index >= `from` (see [`Agent::mark`]).
    pub fn wait_for_received(
        &self,
        from: usize,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        let mut scanned = from;
        loop {
            self.check(&st);
            if let Some(r) = st.events.iter().skip(scanned).find(|r| pred(&r.json)) {
                return Some(r.clone());
            }
            scanned = scanned.max(st.events.len());
            if st.stdout_closed {
                let status = self.exit_status_now();
                drop(st);
                panic!(
                    "the agent closed its stdout (exited: {status}) while a test was waiting for \
                     an event{}",
                    self.diagnostics()
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The policy file the agent was started with (rewrite it and [`Agent::signal`]
    /// SIGHUP to reload).
    pub fn policy_path(&self) -> &Path {
        &self.policy_path
    }

    /// Send `sig` to the agent.
    pub fn signal(&self, sig: libc::c_int) {
        if self.child.is_some() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe {
                libc::kill(self.pid as libc::pid_t, sig);
            }
        }
    }

    /// Wait up to `timeout` for the agent's stderr to contain `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.lock().stderr_tail.contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Number of events received so far: a mark for [`Agent::wait_for_received`].
    pub fn mark(&self) -> usize {
        let st = self.shared.lock();
        self.check(&st);
        st.events.len()
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Value> {
        let st = self.shared.lock();
        self.check(&st);
        st.events.iter().map(|r| r.json.clone()).collect()
    }

    /// Every event received so far that matches `pred`.
    pub fn matching(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let st = self.shared.lock();
        self.check(&st);
        st.events
            .iter()
            .filter(|r| pred(&r.json))
            .map(|r| r.json.clone())
            .collect()
    }

    /// Panic if any event matching `pred` has arrived or arrives within `duration`.
    pub fn assert_none(&self, pred: impl Fn(&Value) -> bool, duration: Duration, what: &str) {
        if let Some(ev) = self.wait_for_received(0, &pred, duration) {
            panic!("{what}: unexpected event {}{}", ev.json, self.diagnostics());
        }
    }

    /// Send SIGTERM and check the shutdown contract: exit status 0 within [`STOP_TIMEOUT`],
    /// a `stats` line then `agent_stopped` as the last two lines. Returns every event.
    pub fn stop(mut self) -> Vec<Value> {
        let status = self.terminate();
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        let st = self.shared.lock();
        self.check(&st);
        let events: Vec<Value> = st.events.iter().map(|r| r.json.clone()).collect();
        drop(st);
        let diag = self.diagnostics();
        match status {
            Some(s) if s.success() => {}
            other => panic!("agent did not exit 0 after SIGTERM: {other:?}{diag}"),
        }
        let n = events.len();
        assert!(n >= 3, "agent printed only {n} events{diag}");
        // After lost lines, the first line written again is followed by an `events_lost`
        // line (`monitor/src/event/writer.rs`): when that first line is the final stats, the
        // note comes between it and agent_stopped.
        let before_stop = if is_event(&events[n - 2], "events_lost") && n >= 4 {
            n - 3
        } else {
            n - 2
        };
        assert!(
            is_event(&events[before_stop], "stats") && is_event(&events[n - 1], "agent_stopped"),
            "the last events after SIGTERM must be stats (then an events_lost line if lines \
             were lost just before it), agent_stopped; got {} then {}{diag}",
            events[n - 2],
            events[n - 1]
        );
        events
    }

    /// Kill the agent with SIGKILL (a crash, an OOM kill: no clean exit, nothing saved at
    /// exit) and wait for it. Returns every event it printed.
    pub fn kill(mut self) -> Vec<Value> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        let st = self.shared.lock();
        self.check(&st);
        st.events.iter().map(|r| r.json.clone()).collect()
    }

    /// SIGTERM, bounded wait, SIGKILL. Returns the exit status if the agent exited by itself.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let status = self.terminate_child();
        self.exited.store(true, Ordering::Relaxed);
        status
    }

    fn terminate_child(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    fn exit_status_now(&self) -> String {
        // try_wait needs &mut; report from /proc instead to keep queries &self.
        match &self.child {
            Some(c) => match std::fs::read_to_string(format!("/proc/{}/stat", c.id())) {
                Ok(s) if s.contains(") Z ") => "yes (zombie)".into(),
                Ok(_) => "not yet".into(),
                Err(_) => "yes".into(),
            },
            None => "stopped by the harness".into(),
        }
    }

    fn check(&self, st: &State) {
        if !st.invalid.is_empty() && !std::thread::panicking() {
            panic!(
                "the agent printed {} line(s) that fail the event schema:\n{}",
                st.invalid.len(),
                st.invalid.join("\n")
            );
        }
    }

    /// The agent's stderr tail and the last events, for failure messages.
    pub fn diagnostics(&self) -> String {
        let st = self.shared.lock();
        let last: Vec<String> = st
            .events
            .iter()
            .rev()
            .take(40)
            .rev()
            .map(|r| r.json.to_string())
            .collect();
        format!(
            "\n--- agent stderr (tail) ---\n{}\n--- last {} of {} events ---\n{}\n---",
            st.stderr_tail,
            last.len(),
            st.events.len(),
            last.join("\n")
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("{}", self.diagnostics());
        }
        self.terminate();
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.policy_path);
        if !panicking {
            let st = self.shared.lock();
            self.check(&st);
        }
    }
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn read_events(stdout: impl Read, shared: &Shared) {
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let at = Instant::now();
        let text = line.trim_end_matches('\n');
        let mut st = shared.lock();
        if !line.ends_with('\n') {
            st.invalid
                .push(format!("line without a newline terminator: {text}"));
        }
        match serde_json::from_str::<Value>(text) {
            Ok(json) => {
                if let Err(e) = monitor::event::validate(&json) {
                    st.invalid.push(format!("{e}: {text}"));
                }
                let index = st.events.len();
                st.events.push(Received { at, json, index });
            }
            Err(e) => st.invalid.push(format!("not JSON ({e}): {text}")),
        }
        drop(st);
        shared.changed.notify_all();
    }
    shared.lock().stdout_closed = true;
    shared.changed.notify_all();
}

/// The agent's `--output` file, read as it grows and followed across log rotation (like
/// `tail -F`): once the path names a new file the agent has written to, the rest of the old
/// file is read first (the agent never writes to the old one again after its first line in
/// the new). Ends when the agent has exited and everything is read.
struct Follow {
    path: PathBuf,
    file: Option<std::fs::File>,
    ino: u64,
    pid: u32,
    exited: Arc<AtomicBool>,
}

impl Follow {
    fn agent_gone(&self) -> bool {
        if self.exited.load(Ordering::Relaxed) {
            return true;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(s) => s.contains(") Z "),
            Err(_) => true,
        }
    }

    /// A newer file the agent writes to now.
    fn rotated(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.ino() != self.ino && m.len() > 0)
    }
}

impl Read for Follow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.file.is_none() {
                if let Ok(f) = std::fs::File::open(&self.path) {
                    self.ino = f.metadata()?.ino();
                    self.file = Some(f);
                }
            }
            // Decided before reading, so a line written just before the switch is read.
            let gone = self.agent_gone();
            let rotated = self.rotated();
            if let Some(f) = &mut self.file {
                let n = f.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
            }
            if rotated {
                self.file = None;
                continue;
            }
            if gone {
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn read_stderr(stderr: impl Read, shared: &Shared) {
    let mut r = BufReader::new(stderr);
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut st = shared.lock();
                st.stderr_tail.push_str(&String::from_utf8_lossy(&buf[..n]));
                if st.stderr_tail.len() > STDERR_KEEP {
                    let mut cut = st.stderr_tail.len() - STDERR_KEEP;
                    while !st.stderr_tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    st.stderr_tail.drain(..cut);
                }
            }
        }
    }
}

/// Whether `ev` is an event of type `name`.
pub fn is_event(ev: &Value, name: &str) -> bool {
    ev["event"] == name
}

/// Whether `ev` is an event of type `name` about the socket with this cookie.
pub fn is_socket_event(ev: &Value, name: &str, cookie: u64) -> bool {
    is_event(ev, name) && ev["cookie"].as_u64() == Some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(input: &str) -> State {
        let shared = Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        };
        read_events(std::io::Cursor::new(input.as_bytes().to_vec()), &shared);
        shared.state.into_inner().unwrap()
    }

    #[test]
    fn reader_flags_lines_that_fail_the_schema() {
        let st = feed(
            "not json\n\
             {\"schema\":1,\"event\":\"no_such_event\",\"ts\":\"2026-11-23T11:02:03.123Z\"}\n\
             {\"schema\":2,\"event\":\"stats\",\"ts\":\"2026-11-23T11:02:03.123Z\"}\n\
             {\"schema\":1,\"event\":\"agent_stopped\",\"ts\":\"2026-11-23T11:02:03.123Z\"}",
        );
        assert!(st.stdout_closed);
        // Every line is wrong: not JSON, unknown type, wrong schema version, missing fields
        // (and the last one also lacks its newline).
        assert_eq!(st.invalid.len(), 5, "{:#?}", st.invalid);
        assert_eq!(st.events.len(), 3, "parsed lines are kept for diagnostics");
    }

    #[test]
    fn event_predicates() {
        let ev = serde_json::json!({"event": "stall_started", "cookie": 7});
        assert!(is_event(&ev, "stall_started"));
        assert!(is_socket_event(&ev, "stall_started", 7));
        assert!(!is_socket_event(&ev, "stall_started", 8));
        assert!(!is_socket_event(&ev, "stall_cleared", 7));
    }
}
