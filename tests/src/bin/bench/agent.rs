//! The tcpstall agent as a child process: start, collect its NDJSON events, measure, stop.

use crate::util::{self, die_with_parent, stop_child};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One event line of the agent, with the wall time (ns) the benchmark read it.
#[derive(Clone, Debug)]
pub struct Event {
    /// Wall clock ns when the line arrived on the pipe.
    pub arrived_ns: u64,
    /// The parsed line.
    pub v: Value,
}

impl Event {
    /// The `event` name.
    pub fn name(&self) -> &str {
        self.v.get("event").and_then(Value::as_str).unwrap_or("")
    }

    /// The event's own `ts`, ns since the epoch (millisecond resolution).
    pub fn ts_ns(&self) -> Option<u64> {
        util::parse_rfc3339_ns(self.v.get("ts")?.as_str()?)
    }

    /// An unsigned integer field.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.v.get(key)?.as_u64()
    }
}

/// A running agent.
pub struct Agent {
    child: Child,
    /// Agent pid.
    pub pid: u32,
    events: Arc<Mutex<Vec<Event>>>,
    stderr_path: PathBuf,
    /// Wall time from spawn to `agent_started`.
    pub startup: Duration,
    /// `--state-dir` and `--pin-dir` of this run (the default state keeping, measured like
    /// the rest), removed on drop.
    state: (PathBuf, PathBuf),
}

/// Where the agent binary is: `$TCPSTALL_BIN`, else `<workspace>/target/release/tcpstall`.
pub fn agent_bin() -> PathBuf {
    match std::env::var_os("TCPSTALL_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tcpstall"),
    }
}

/// Write the benchmark's policy: zero-window threshold `threshold_s`, reset rule on `port`.
pub fn write_policy(path: &Path, port: u16, threshold_s: u64) -> Result<()> {
    let text = format!(
        "# written by the tcpstall benchmark\n\
         tick = \"1s\"\n\
         [defaults]\n\
         zero_window_after = \"{threshold_s}s\"\n\
         [guards]\n\
         max_resets_per_minute = 100000\n\
         [[rule]]\n\
         name = \"bench\"\n\
         local_ports = [{port}]\n\
         action = \"reset\"\n"
    );
    std::fs::write(path, text).with_context(|| format!("writing policy {}", path.display()))
}

impl Agent {
    /// Start `tcpstall run` with `--tick 1s --stats-interval 1s` and wait for `agent_started`.
    /// `label` names the raw event and stderr files kept in `workdir`.
    pub fn start(policy: &Path, bpf_stats: bool, workdir: &Path, label: &str) -> Result<Agent> {
        Self::start_with(policy, bpf_stats, workdir, label, &[])
    }

    /// [`Agent::start`] with `extra` arguments for `tcpstall run` (e.g. `--max-sockets N`).
    pub fn start_with(
        policy: &Path,
        bpf_stats: bool,
        workdir: &Path,
        label: &str,
        extra: &[String],
    ) -> Result<Agent> {
        let bin = agent_bin();
        if !bin.exists() {
            bail!(
                "agent binary {} not found: build it (`cargo xtask build`) or set TCPSTALL_BIN",
                bin.display()
            );
        }
        let stderr_path = workdir.join(format!("agent-{label}.stderr"));
        let raw_path = workdir.join(format!("agent-{label}.ndjson"));
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let state_dir = workdir.join(format!("agent-{label}.state"));
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/tcpstall-bench-{}-{label}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&state_dir);
        let _ = std::fs::remove_dir_all(&pin_dir);
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--policy")
            .arg(policy)
            .args(["--tick", "1s", "--stats-interval", "1s"])
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--pin-dir")
            .arg(&pin_dir);
        if bpf_stats {
            cmd.arg("--bpf-stats");
        }
        cmd.args(extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        die_with_parent(&mut cmd, libc::SIGTERM);
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let sink = Arc::clone(&events);
        let mut raw = std::fs::File::create(&raw_path)
            .with_context(|| format!("creating {}", raw_path.display()))?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let arrived_ns = util::wall_ns();
                let _ = writeln!(raw, "{line}");
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink
                        .lock()
                        .expect("event lock")
                        .push(Event { arrived_ns, v }),
                    Err(e) => eprintln!("bench: agent printed a non-JSON line ({e}): {line}"),
                }
            }
        });
        let mut agent = Agent {
            pid: child.id(),
            child,
            events,
            stderr_path,
            startup: Duration::ZERO,
            state: (state_dir, pin_dir),
        };
        agent
            .wait_for(Duration::from_secs(60), |e| e.name() == "agent_started")
            .map_err(|e| anyhow!("{e}; agent stderr:\n{}", agent.stderr_tail()))?;
        agent.startup = t0.elapsed();
        Ok(agent)
    }

    /// The last lines of the agent's stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("event lock").clone()
    }

    /// Wait until an event matching `pred` exists (it may have arrived earlier).
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Result<Event> {
        let end = Instant::now() + timeout;
        loop {
            util::check_stop()?;
            if let Some(e) = self
                .events
                .lock()
                .expect("event lock")
                .iter()
                .find(|e| pred(e))
            {
                return Ok(e.clone());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!("the agent exited ({st}) early");
            }
            if Instant::now() >= end {
                bail!("the agent did not produce the awaited event within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Number of events that satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.events
            .lock()
            .expect("event lock")
            .iter()
            .filter(|e| pred(e))
            .count()
    }

    /// CPU of the agent process now: (schedstat ns of live threads, utime+stime ns).
    pub fn cpu_ns(&self) -> Result<(u64, u64)> {
        Ok((
            util::proc_sched_cpu_ns(self.pid)?,
            util::proc_stat_cpu_ns(self.pid)?,
        ))
    }

    /// Total (run_time_ns, run_cnt) of the agent's BPF programs (counted only with
    /// --bpf-stats).
    pub fn bpf_run(&self) -> Result<(u64, u64)> {
        let fds = util::proc_bpf_fds(self.pid)?;
        Ok(fds
            .iter()
            .filter(|f| !f.is_map)
            .fold((0, 0), |(t, c), f| (t + f.run_time_ns, c + f.run_cnt)))
    }

    /// Ids of the agent's BPF programs.
    pub fn prog_ids(&self) -> Result<Vec<u64>> {
        Ok(util::proc_bpf_fds(self.pid)?
            .iter()
            .filter(|f| !f.is_map)
            .map(|f| f.id)
            .collect())
    }

    /// The agent's BPF maps: (name, memlock bytes), names from `bpftool map show -j` when
    /// available, else `map_<id>`.
    pub fn bpf_maps(&self) -> Result<Vec<(String, u64)>> {
        let fds = util::proc_bpf_fds(self.pid)?;
        let names = bpftool_map_names();
        Ok(fds
            .iter()
            .filter(|f| f.is_map)
            .map(|f| {
                let name = names
                    .iter()
                    .find(|(id, _)| *id == f.id)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_else(|| format!("map_{}", f.id));
                (name, f.memlock)
            })
            .collect())
    }

    /// Stop with SIGTERM (SIGKILL after 10 s) and give back the collected events.
    pub fn stop(mut self) -> Result<Vec<Event>> {
        let st = stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
        // Let the reader thread drain the pipe (the agent prints its last stats on exit).
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end && self.count(|e| e.name() == "agent_stopped") == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        match st {
            Some(s) if s.success() => Ok(self.events()),
            other => bail!(
                "the agent exited badly ({other:?}); stderr:\n{}",
                self.stderr_tail()
            ),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.state.0);
        let _ = std::fs::remove_dir_all(&self.state.1);
    }
}

impl Agent {
    /// The tracepoints among the agent's attach points (from its `agent_started` line).
    pub fn tracepoints(&self) -> Vec<String> {
        self.events()
            .iter()
            .find(|e| e.name() == "agent_started")
            .map(|e| crate::floor::agent_tracepoints(&e.v))
            .unwrap_or_default()
    }

    /// The agent's BPF programs with their running totals: (name, run_time_ns, run_cnt),
    /// names from `bpftool prog show -j` when available, else `prog_<id>`.
    pub fn bpf_programs(&self) -> Result<Vec<(String, u64, u64)>> {
        let fds = util::proc_bpf_fds(self.pid)?;
        let names = bpftool_names("prog");
        Ok(fds
            .iter()
            .filter(|f| !f.is_map)
            .map(|f| {
                let name = names
                    .iter()
                    .find(|(id, _)| *id == f.id)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_else(|| format!("prog_{}", f.id));
                (name, f.run_time_ns, f.run_cnt)
            })
            .collect())
    }
}

fn bpftool_map_names() -> Vec<(u64, String)> {
    bpftool_names("map")
}

/// (id, name) of every BPF `kind` (`map` or `prog`) bpftool lists.
fn bpftool_names(kind: &str) -> Vec<(u64, String)> {
    let Ok(out) = Command::new("bpftool")
        .args([kind, "show", "-j"])
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
        return Vec::new();
    };
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    Some((m.get("id")?.as_u64()?, m.get("name")?.as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}
