//! Shared plumbing of the benchmark: clocks, statistics, /proc readers, sysctl and child
//! process guards, signal handling and line-based control of helper processes.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Clocks
// ---------------------------------------------------------------------------------------------

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clock ids used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall clock (CLOCK_REALTIME) in nanoseconds since the Unix epoch; comparable with the
/// agent's event timestamps.
pub fn wall_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// CPU time consumed by the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Pin the calling thread to CPU `cpu` modulo the CPUs this process may use (best effort:
/// false when the kernel refused). Loopback throughput depends on whether sender and
/// receiver share a CPU, which the scheduler decides differently run to run; pinning them
/// apart takes that spread out of an A/B comparison.
pub fn pin_thread(cpu: usize) -> bool {
    // SAFETY: plain libc calls on a zeroed cpu_set_t owned by this frame.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return false;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        if cpus.is_empty() {
            return false;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus[cpu % cpus.len()], &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Parse the agent's `ts` field (RFC 3339, UTC, e.g. `2026-01-02T03:04:05.678Z`) into
/// nanoseconds since the Unix epoch. Fractions of any length up to nanoseconds are accepted.
pub fn parse_rfc3339_ns(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = &s[19..];
    let (frac_ns, tz) = if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let v: u64 = r[..digits].parse().ok()?;
        (v * 10u64.pow(9 - digits as u32), &r[digits..])
    } else {
        (0, rest)
    };
    if tz != "Z" && tz != "+00:00" {
        return None;
    }
    // Days from civil (proleptic Gregorian), after H. Hinnant's well-known algorithm.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    if days < 0 {
        return None;
    }
    Some((days as u64 * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000_000 + frac_ns)
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// Nearest-rank percentile (`p` in 0..=100) of an unsorted sample; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Median (mean of the two middle values for even counts); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median, minimum and maximum of a sample (e.g. of per-pair ratios).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// Number of values.
    pub n: usize,
    /// Median.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// Summarise `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Spread> {
        Some(Spread {
            n: values.len(),
            median: median(values)?,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }

    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"n": self.n, "median": self.median, "min": self.min, "max": self.max})
    }
}

/// p50 / p99 / max of a latency sample, as JSON (`null`s when empty).
pub fn latency_json(values: &[f64]) -> serde_json::Value {
    serde_json::json!({
        "n": values.len(),
        "p50": percentile(values, 50.0),
        "p99": percentile(values, 99.0),
        "min": values.iter().copied().reduce(f64::min),
        "max": values.iter().copied().reduce(f64::max),
    })
}

// ---------------------------------------------------------------------------------------------
// /proc readers
// ---------------------------------------------------------------------------------------------

/// utime + stime of a process (all its threads, live and exited) from /proc/PID/stat, in
/// nanoseconds. Resolution is one clock tick (usually 10 ms).
pub fn proc_stat_cpu_ns(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (did the process exit?)"))?;
    parse_stat_cpu_ticks(&s)
        .map(|t| t * 1_000_000_000 / clock_ticks_per_sec())
        .ok_or_else(|| anyhow!("unexpected format of /proc/{pid}/stat"))
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime (fields 14 and 15) in clock ticks from the text of /proc/PID/stat.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime = field 14 -> index 11, stime = index 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of the live threads of a process with nanosecond resolution (sum of the first
/// field of /proc/PID/task/*/schedstat).
pub fn proc_sched_cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let p = e?.path().join("schedstat");
        // A thread may exit between listing and reading.
        if let Ok(s) = std::fs::read_to_string(&p) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// VmRSS of a process in KiB.
pub fn proc_rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// One BPF object (map or program) held by a process, from /proc/PID/fdinfo.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BpfFd {
    /// `map_id` or `prog_id`.
    pub id: u64,
    /// True for maps, false for programs.
    pub is_map: bool,
    /// `memlock` bytes.
    pub memlock: u64,
    /// Programs: cumulative run time (only counted while BPF stats are enabled).
    pub run_time_ns: u64,
    /// Programs: cumulative run count (only counted while BPF stats are enabled).
    pub run_cnt: u64,
}

/// Parse the text of one /proc/PID/fdinfo/FD; `None` if it is not a BPF map or program.
pub fn parse_bpf_fdinfo(text: &str) -> Option<BpfFd> {
    let mut fd = BpfFd::default();
    let mut found = false;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let num = || v.parse::<u64>().ok();
        match k.trim() {
            "map_id" => {
                fd.id = num()?;
                fd.is_map = true;
                found = true;
            }
            "prog_id" => {
                fd.id = num()?;
                found = true;
            }
            "memlock" => fd.memlock = num().unwrap_or(0),
            "run_time_ns" => fd.run_time_ns = num().unwrap_or(0),
            "run_cnt" => fd.run_cnt = num().unwrap_or(0),
            _ => {}
        }
    }
    found.then_some(fd)
}

/// Every BPF map and program a process holds an fd to, deduplicated by id.
pub fn proc_bpf_fds(pid: u32) -> Result<Vec<BpfFd>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut out: Vec<BpfFd> = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(text) = std::fs::read_to_string(e?.path()) else {
            continue;
        };
        if let Some(fd) = parse_bpf_fdinfo(&text) {
            if !out.iter().any(|o| o.id == fd.id && o.is_map == fd.is_map) {
                out.push(fd);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Other activity on the machine (other agents, other workloads)
// ---------------------------------------------------------------------------------------------

/// Busy CPU time of the whole machine so far (all CPUs, everything but idle and iowait), ns,
/// from the first line of /proc/stat.
pub fn machine_busy_ns() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_proc_stat_busy_ticks(&s)
        .map(|t| t * 1_000_000_000 / clock_ticks_per_sec())
        .ok_or_else(|| anyhow!("unexpected format of /proc/stat"))
}

/// Busy ticks (user nice system irq softirq steal) from the `cpu` line of /proc/stat.
pub fn parse_proc_stat_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    Some(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// Ids of every loaded BPF program whose name says it belongs to a tcpstall agent (ours or
/// anyone's), via `bpftool prog show -j`. Empty if bpftool is unavailable.
pub fn tcpstall_prog_ids() -> Vec<u64> {
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p.get("name")
                .and_then(|n| n.as_str())
                .is_some_and(|n| n.starts_with("tcpstall_"))
        })
        .filter_map(|p| p.get("id")?.as_u64())
        .collect()
}

/// What else ran on the machine around a measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Contention {
    /// tcpstall BPF programs loaded that are not the measured agent's (another agent's hooks
    /// fire on our traffic too).
    pub foreign_progs: usize,
    /// Machine CPU not used by the measured processes, ms per second.
    pub foreign_cpu_ms_per_s: f64,
}

impl Contention {
    /// Too much going on for a clean comparison: another agent attached, or more than 15% of
    /// a core used by others.
    pub fn contended(&self) -> bool {
        self.foreign_progs > 0 || self.foreign_cpu_ms_per_s > 150.0
    }

    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"foreign_tcpstall_progs": self.foreign_progs,
                           "foreign_cpu_ms_per_s": self.foreign_cpu_ms_per_s,
                           "contended": self.contended()})
    }
}

/// tcpstall programs loaded but not among `own`.
pub fn foreign_progs(own: &[u64]) -> usize {
    tcpstall_prog_ids()
        .iter()
        .filter(|id| !own.contains(id))
        .count()
}

/// CPU (utime+stime, ns) of this process plus `pids` (processes that exited count as 0).
pub fn cpu_of(pids: &[u32]) -> u64 {
    std::iter::once(std::process::id())
        .chain(pids.iter().copied())
        .map(|p| proc_stat_cpu_ns(p).unwrap_or(0))
        .sum()
}

/// Machine CPU used by processes other than this one and `pids` since a
/// [`ForeignMeter::start`], as ms per second.
pub struct ForeignMeter {
    busy0: u64,
    ours0: u64,
    t0: Instant,
}

impl ForeignMeter {
    /// Start measuring.
    pub fn start(pids: &[u32]) -> Result<ForeignMeter> {
        Ok(ForeignMeter {
            busy0: machine_busy_ns()?,
            ours0: cpu_of(pids),
            t0: Instant::now(),
        })
    }

    /// Foreign CPU since the start, ms per second.
    pub fn read(&self, pids: &[u32]) -> Result<f64> {
        let busy = machine_busy_ns()?.saturating_sub(self.busy0);
        let ours = cpu_of(pids).saturating_sub(self.ours0);
        Ok(busy.saturating_sub(ours) as f64 / 1e6 / self.t0.elapsed().as_secs_f64())
    }
}

/// Wait (at most `max_wait`) until no foreign tcpstall agent is loaded (programs other than
/// `own_progs`) and processes other than this one and `pids` use less than 15% of a core,
/// sampled over 500 ms. Returns the last sample; proceeds anyway at the deadline (the caller
/// records the contention).
pub fn wait_quiet(own_progs: &[u64], pids: &[u32], max_wait: Duration) -> Result<Contention> {
    let end = Instant::now() + max_wait;
    loop {
        check_stop()?;
        let m = ForeignMeter::start(pids)?;
        sleep_checked(Duration::from_millis(500))?;
        let c = Contention {
            foreign_progs: foreign_progs(own_progs),
            foreign_cpu_ms_per_s: m.read(pids)?,
        };
        if !c.contended() || Instant::now() >= end {
            return Ok(c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stop flag (SIGINT/SIGTERM/SIGHUP)
// ---------------------------------------------------------------------------------------------

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Turn SIGINT, SIGTERM and SIGHUP into a flag that every loop of the benchmark checks, so the
/// run unwinds through its guards (children killed, sysctls restored) instead of dying.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Fail if a stop signal arrived.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted by a signal; cleaning up");
    }
    Ok(())
}

/// Sleep `d` in small steps, failing early on a stop signal.
pub fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

// ---------------------------------------------------------------------------------------------
// sysctls
// ---------------------------------------------------------------------------------------------

/// Sets sysctls and puts the old values back when dropped (also during unwinding).
#[derive(Default)]
pub struct Sysctls {
    saved: Vec<(String, String)>,
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

impl Sysctls {
    /// Set `name` (dotted, e.g. `net.ipv4.ip_local_port_range`) to `value`, remembering the
    /// old value for restoration.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let path = sysctl_path(name);
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading sysctl {name} ({path})"))?;
        let old = old.trim().to_string();
        if !self.saved.iter().any(|(n, _)| n == name) {
            self.saved.push((name.to_string(), old));
        }
        std::fs::write(&path, value)
            .with_context(|| format!("setting sysctl {name} = {value:?} (needs root)"))?;
        Ok(())
    }

    /// Restore every changed sysctl, newest first. Errors are printed, not returned, so all
    /// restorations are attempted.
    pub fn restore(&mut self) {
        while let Some((name, old)) = self.saved.pop() {
            if let Err(e) = std::fs::write(sysctl_path(&name), &old) {
                eprintln!("bench: WARNING: could not restore sysctl {name} = {old:?}: {e}; set it by hand");
            }
        }
    }
}

impl Drop for Sysctls {
    fn drop(&mut self) {
        self.restore();
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// Make `cmd`'s process receive `sig` when the spawning thread dies, so no helper outlives the
/// benchmark even if it is killed with SIGKILL. Spawn from the main thread only.
pub use ::tests::die_with_parent;

/// Send `sig` to a child and reap it within `grace`; SIGKILL after that.
pub fn stop_child(
    child: &mut Child,
    sig: libc::c_int,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // SAFETY: kill on our own, not yet reaped child pid.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// A helper process (this binary re-executed with a hidden subcommand) driven by text lines:
/// commands on its stdin, replies on its stdout. Killed when dropped.
pub struct Helper {
    /// Name for messages.
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Helper {
    /// Start `self_exe args...`.
    pub fn spawn(name: &str, args: &[String]) -> Result<Helper> {
        let exe = std::env::current_exe().context("locating the bench binary to re-execute it")?;
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting helper {name} ({})", exe.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Helper {
            name: name.to_string(),
            child,
            stdin,
            lines: rx,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send one command line.
    pub fn send(&mut self, cmd: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("helper {} stdin closed", self.name))?;
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .with_context(|| {
                format!(
                    "sending {cmd:?} to helper {} (did it die? see its stderr above)",
                    self.name
                )
            })
    }

    /// Next reply line, within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            check_stop()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("helper {} did not answer within {timeout:?}", self.name);
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(l) => return Ok(l),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    let st = self.child.try_wait().ok().flatten();
                    bail!(
                        "helper {} exited ({st:?}) before answering; see its stderr above",
                        self.name
                    )
                }
            }
        }
    }

    /// Next reply line that starts with `prefix` (other lines are errors), returned without it.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let l = self.recv(timeout)?;
        match l.strip_prefix(prefix) {
            Some(rest) => Ok(rest.trim().to_string()),
            None => bail!("helper {}: expected {prefix:?}, got {l:?}", self.name),
        }
    }

    /// Ask the helper to quit (closing its stdin) and reap it; SIGKILL after `grace`.
    pub fn finish(mut self, grace: Duration) {
        self.stdin = None;
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait (up to 300 s each) for every `kind` helper's `ready <connections>`; fail unless they
/// hold `n` connections in all.
pub fn await_ready(helpers: &mut [Helper], kind: &str, n: usize) -> Result<()> {
    let mut total = 0;
    for h in helpers.iter_mut() {
        let got: usize = h
            .expect("ready", Duration::from_secs(300))?
            .parse()
            .map_err(|e| anyhow!("{kind} {}: bad ready line: {e}", h.name))?;
        total += got;
    }
    if total != n {
        bail!("{kind}s established {total} connections, wanted {n}");
    }
    Ok(())
}

/// Send `cmd` to every `kind` helper and add up their replies (`reply` and then exactly `N`
/// numbers), number by number; each reply within `timeout`.
pub fn sum_replies<const N: usize>(
    helpers: &mut [Helper],
    kind: &str,
    cmd: &str,
    reply: &str,
    timeout: Duration,
) -> Result<[u64; N]> {
    let mut sum = [0u64; N];
    for h in helpers.iter_mut() {
        h.send(cmd)?;
        let line = h.expect(reply, timeout)?;
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() != N {
            bail!("{kind} {}: bad {cmd} reply {line:?}", h.name);
        }
        for (s, v) in sum.iter_mut().zip(f) {
            *s += v;
        }
    }
    Ok(sum)
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run a command to completion and return (exit status, user+system CPU ns, wall ns) using
/// wait4's rusage of exactly that child. Stdout and stderr go to /dev/null.
pub fn run_measured(program: &str, args: &[&str], timeout: Duration) -> Result<(i32, u64, u64)> {
    let t0 = Instant::now();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut cmd, libc::SIGKILL);
    let child = cmd
        .spawn()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    let pid = child.id() as libc::pid_t;
    let end = t0 + timeout;
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data; pid is our unreaped child (std never waits for it:
        // `child` is only dropped, which does not reap).
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            return Ok((
                code,
                us(ru.ru_utime) + us(ru.ru_stime),
                t0.elapsed().as_nanos() as u64,
            ));
        }
        if r < 0 {
            bail!("wait4 on {program}: {}", std::io::Error::last_os_error());
        }
        if Instant::now() >= end || check_stop().is_err() {
            // SAFETY: our unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            check_stop()?;
            bail!("{program} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ns("1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
        // date -u -d 2026-11-23T11:27:32Z +%s = 1795433252
        assert_eq!(
            parse_rfc3339_ns("2026-11-23T11:27:32.948Z"),
            Some(1_795_433_252_948_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2000-02-29T23:59:59.000000001Z"),
            Some(951_868_799_000_000_001)
        );
        assert_eq!(parse_rfc3339_ns("2026-11-23 11:27:32Z"), None);
        assert_eq!(parse_rfc3339_ns("2026-13-23T11:27:32Z"), None);
        assert_eq!(parse_rfc3339_ns("2026-11-23T11:27:32.Z"), None);
        assert_eq!(parse_rfc3339_ns("2026-11-23T11:27:32+02:00"), None);
    }

    #[test]
    fn percentiles_and_spread() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let s = Spread::of(&[1.02, 0.98, 1.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 1.0, 0.98, 1.02));
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn stat_parsing() {
        let s = "123 (tcp stall) (x)) S 1 123 123 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat_cpu_ticks(s), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn proc_stat_busy() {
        let s = "cpu  100 5 30 9000 7 2 3 1 0 0\ncpu0 50 2 15 4500 3 1 1 0 0 0\n";
        assert_eq!(
            parse_proc_stat_busy_ticks(s),
            Some(100 + 5 + 30 + 2 + 3 + 1)
        );
        assert_eq!(parse_proc_stat_busy_ticks("cpu0 1 2 3\n"), None);
    }

    #[test]
    fn fdinfo_parsing() {
        let map =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\nkey_size:\t8\n\
                   value_size:\t256\nmax_entries:\t32768\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
                   memlock:\t9175040\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(
            parse_bpf_fdinfo(map),
            Some(BpfFd {
                id: 42,
                is_map: true,
                memlock: 9_175_040,
                run_time_ns: 0,
                run_cnt: 0
            })
        );
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_jited:\t1\nmemlock:\t4096\n\
                    prog_id:\t77\nrun_time_ns:\t123456\nrun_cnt:\t89\nrecursion_misses:\t0\n";
        assert_eq!(
            parse_bpf_fdinfo(prog),
            Some(BpfFd {
                id: 77,
                is_map: false,
                memlock: 4096,
                run_time_ns: 123_456,
                run_cnt: 89
            })
        );
        assert_eq!(parse_bpf_fdinfo("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn helper_cpu_of_a_real_child() {
        let (code, cpu, wall) = run_measured("true", &[], Duration::from_secs(10)).unwrap();
        assert_eq!(code, 0);
        assert!(wall > 0 && cpu < 1_000_000_000);
        assert!(run_measured("sleep", &["5"], Duration::from_millis(100)).is_err());
    }
}
