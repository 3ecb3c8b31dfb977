//! Issue 12, pods and containers: every socket event names the container and pod that own
//! the writer, for the common cgroup layouts, and rules select by Kubernetes namespace and
//! pod name. The layouts are built for real: cgroup v2 directories under /sys/fs/cgroup, the
//! kubelet's /var/log/pods directories, and real writer processes moved into them.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tests::agent::{is_event, AgentOpts};
use tests::{detection_bound, require_root, THRESHOLD, TICK};

const PODS: &str = "/var/log/pods";

/// The cgroup v2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid systems).
fn cgroot() -> String {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    m.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_string))
                .flatten()
        })
        .expect("no cgroup2 mount")
}

/// Directories created for the test, removed (deepest first) when dropped.
struct Dirs(Vec<PathBuf>);

impl Dirs {
    fn create(&mut self, path: &Path) {
        let mut missing = Vec::new();
        let mut p = path.to_path_buf();
        while !p.exists() {
            missing.push(p.clone());
            if !p.pop() {
                break;
            }
        }
        for d in missing.iter().rev() {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            self.0.push(d.clone());
        }
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A writer process (python3) that connects to `to` and writes until an error, moved into
/// cgroup `cg` before it connects. Killed when dropped.
struct Writer {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

const SCRIPT: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
sys.stdin.readline()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
s.connect((host, port))
print("connected", s.getsockname()[1], flush=True)
buf = b"x" * 65536
try:
    while True:
        s.sendall(buf)
except OSError as e:
    print("error", e.errno, flush=True)
"#;

impl Writer {
    fn start(cg: &Path, to: SocketAddr) -> (Writer, u16) {
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT, &to.ip().to_string(), &to.port().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        std::fs::write(cg.join("cgroup.procs"), child.id().to_string())
            .unwrap_or_else(|e| panic!("moving the writer into {}: {e}", cg.display()));
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port = line
            .strip_prefix("connected ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("writer said {line:?}"));
        (Writer { child, out }, port)
    }

    /// The errno its send failed with, within `timeout`.
    fn error(&mut self, timeout: Duration) -> Option<i32> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut line = String::new();
        let out = &mut self.out;
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = out.read_line(&mut line);
                let _ = tx.send(line.clone());
            });
            let got = rx.recv_timeout(timeout).ok();
            if got.is_none() {
                let _ = self.child.kill();
            }
            got.and_then(|l| l.strip_prefix("error ").and_then(|e| e.trim().parse().ok()))
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(n: u64, len: usize) -> String {
    let mut s = String::new();
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(len);
    s
}

fn uid(n: u64) -> String {
    let h = hex(n, 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn events_name_container_and_pod_and_rules_select_by_namespace() {
    require_root();
    let seed = u64::from(std::process::id());
    let root = cgroot();
    let mut dirs = Dirs(Vec::new());
    let ns = "tcpstall-test";
    // Kubernetes, systemd driver, containerd.
    let (u1, c1) = (uid(seed), hex(seed + 1, 64));
    let cg1 = PathBuf::from(format!(
        "{root}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{c1}.scope",
        u1.replace('-', "_")
    ));
    let pod1 = format!("api-{}", &hex(seed + 2, 5));
    // Kubernetes, cgroupfs driver.
    let (u2, c2) = (uid(seed + 3), hex(seed + 4, 64));
    let cg2 = PathBuf::from(format!("{root}/kubepods/burstable/pod{u2}/{c2}"));
    let pod2 = format!("worker-{}", &hex(seed + 5, 5));
    // Docker and Podman, no pod.
    let c3 = hex(seed + 6, 64);
    let cg3 = PathBuf::from(format!("{root}/system.slice/docker-{c3}.scope"));
    let c4 = hex(seed + 7, 64);
    let cg4 = PathBuf::from(format!("{root}/machine.slice/libpod-{c4}.scope"));
    for cg in [&cg1, &cg2, &cg3, &cg4] {
        dirs.create(cg);
    }
    dirs.create(&PathBuf::from(format!("{PODS}/{ns}_{pod1}_{u1}")));
    dirs.create(&PathBuf::from(format!("{PODS}/{ns}_{pod2}_{u2}")));

    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let port = l.local_addr().unwrap().port();
    let policy = format!(
        "tick = \"{tick}ms\"\n[defaults]\nzero_window_after = \"{t}ms\"\nno_ack_after = \"{t}ms\"\n\n\
         [[rule]]\nname = \"api-pods\"\nk8s_namespace = [\"{ns}\"]\npod_prefix = [\"api-\"]\n\
         action = \"reset\"\nclasses = [\"zero_window\", \"no_ack\"]\n\n\
         [[rule]]\nname = \"others\"\nremote_ports = [{port}]\naction = \"observe\"\n",
        tick = TICK.as_millis(),
        t = THRESHOLD.as_millis()
    );
    let agent = AgentOpts::new(policy).start();
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut writers = Vec::new();
    let mut accepted: Vec<TcpStream> = Vec::new();
    for cg in [&cg1, &cg2, &cg3, &cg4] {
        let (w, local_port) = Writer::start(cg, to);
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(false).unwrap();
        // Never read: the writer's socket wedges on a zero window.
        accepted.push(s);
        writers.push((w, local_port));
    }
    let started_for = |local_port: u16| -> Value {
        agent
            .wait_for(
                |e| {
                    is_event(e, "stall_started")
                        && e["local"]
                            .as_str()
                            .is_some_and(|l| l.ends_with(&format!(":{local_port}")))
                },
                detection_bound() + Duration::from_secs(3),
            )
            .unwrap_or_else(|| panic!("no stall_started for :{local_port}{}", agent.diagnostics()))
    };
    let e1 = started_for(writers[0].1);
    assert_eq!(e1["container_id"], c1.as_str(), "{e1}");
    assert_eq!(e1["container_runtime"], "containerd", "{e1}");
    assert_eq!(e1["pod_uid"], u1.as_str(), "{e1}");
    assert_eq!(e1["pod_namespace"], ns, "{e1}");
    assert_eq!(e1["pod_name"], pod1.as_str(), "{e1}");
    assert_eq!(e1["rule"], "api-pods", "{e1}");
    assert_eq!(e1["comm"], "python3", "{e1}");
    let e2 = started_for(writers[1].1);
    assert_eq!(e2["container_id"], c2.as_str(), "{e2}");
    assert_eq!(e2["container_runtime"], "kubernetes", "{e2}");
    assert_eq!(e2["pod_namespace"], ns, "{e2}");
    assert_eq!(e2["pod_name"], pod2.as_str(), "{e2}");
    assert_eq!(
        e2["rule"], "others",
        "pod name does not match the prefix: {e2}"
    );
    let e3 = started_for(writers[2].1);
    assert_eq!(e3["container_id"], c3.as_str(), "{e3}");
    assert_eq!(e3["container_runtime"], "docker", "{e3}");
    assert!(e3["pod_uid"].is_null() && e3["pod_name"].is_null(), "{e3}");
    let e4 = started_for(writers[3].1);
    assert_eq!(e4["container_id"], c4.as_str(), "{e4}");
    assert_eq!(e4["container_runtime"], "podman", "{e4}");
    // Only the pod the namespace + prefix rule selects is reset.
    let errno = writers[0].0.error(Duration::from_secs(5));
    assert_eq!(errno, Some(libc::ECONNABORTED), "{}", agent.diagnostics());
    let resets: Vec<Value> = agent.matching(|e| is_event(e, "socket_reset"));
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(resets[0]["pod_name"], pod1.as_str());
    drop(writers);
    drop(accepted);
    agent.stop();
    drop(dirs);
}
