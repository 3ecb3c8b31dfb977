//! Issue 12, a live view: `tcpstall top` shows what the running agent sees — stalled and
//! tracked sockets with class, stalled-for, queued bytes, rule, action and owner, and the
//! recent resets — refreshed in place in a terminal (driven here through tmux), and once
//! for scripts. It reads the agent's status socket; it attaches nothing.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};
use tests::agent::{binary, is_socket_event, AgentOpts};
use tests::traffic::{ConnOpts, Listener, ReadMode, WriteMode};
use tests::{detection_bound, require_root, THRESHOLD, TICK};

/// A tmux session running a command; killed when dropped.
struct Tmux(String);

impl Tmux {
    fn start(cmd: &str) -> Tmux {
        let name = format!("tcpstall-top-{}", std::process::id());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "200",
                "-y",
                "50",
                cmd,
            ])
            .status()
            .expect("tmux (apt install tmux)")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux(name)
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn keys(&self, k: &str) {
        Command::new("tmux")
            .args(["send-keys", "-t", &self.0, k])
            .status()
            .unwrap();
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn wait_screen(t: &Tmux, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = t.screen();
        if pred(&s) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(
    not(root_tests),
    ignore = "needs root: run as root, e.g. `cargo xtask test`"
)]
fn top_shows_the_running_agents_stalls_and_resets() {
    require_root();
    let watched = Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let reset = Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let sock = std::env::temp_dir().join(format!("tcpstall-top-{}.sock", std::process::id()));
    let policy = format!(
        "tick = \"{tick}ms\"\n[defaults]\nzero_window_after = \"{t}ms\"\nno_ack_after = \"{t}ms\"\n\n\
         [[rule]]\nname = \"watched\"\nlocal_ports = [{w}]\naction = \"observe\"\n\n\
         [[rule]]\nname = \"resetme\"\nlocal_ports = [{r}]\naction = \"reset\"\n\
         classes = [\"zero_window\", \"no_ack\"]\n",
        tick = TICK.as_millis(),
        t = THRESHOLD.as_millis(),
        w = watched.port(),
        r = reset.port()
    );
    let mut opts = AgentOpts::new(policy);
    opts.extra_args = vec!["--status-socket".into(), sock.display().to_string()];
    let agent = opts.start();
    let small = ConnOpts {
        client_rcvbuf: Some(16 * 1024),
        server_sndbuf: Some(32 * 1024),
    };
    let mut w = watched.connect(None, small).unwrap();
    w.start(Some(WriteMode::Stream), ReadMode::Never, 1)
        .unwrap();
    let mut r = reset.connect(None, small).unwrap();
    r.start(Some(WriteMode::Stream), ReadMode::Never, 2)
        .unwrap();
    let bound = detection_bound() + Duration::from_secs(2);
    agent
        .wait_for(
            |e| is_socket_event(e, "stall_started", w.server_cookie),
            bound,
        )
        .unwrap_or_else(|| panic!("no stall{}", agent.diagnostics()));
    agent
        .wait_for(
            |e| is_socket_event(e, "socket_reset", r.server_cookie),
            bound,
        )
        .unwrap_or_else(|| panic!("no reset{}", agent.diagnostics()));
    let client = w.client_addr.to_string();

    // Once, for scripts.
    let once = Command::new(binary())
        .args(["top", "--once", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&once.stdout);
    assert!(
        once.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains(&client))
        .unwrap_or_else(|| panic!("the stalled socket is not listed:\n{text}"));
    assert!(line.starts_with("zero_window"), "{line}");
    assert!(
        line.contains("watched") && line.contains("observe"),
        "{line}"
    );
    assert!(line.contains("tswriter"), "writer thread as owner: {line}");
    assert!(text.contains("RECENT RESETS"), "{text}");
    assert!(
        text.contains(&r.client_addr.to_string()),
        "the reset is listed:\n{text}"
    );
    let json = Command::new(binary())
        .args(["top", "--json", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "top --json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&json.stdout),
            String::from_utf8_lossy(&json.stderr)
        )
    });
    assert!(v["stalls_active"].as_u64() >= Some(1), "{v}");
    assert!(
        v["recent_resets"].as_array().is_some_and(|a| !a.is_empty()),
        "{v}"
    );

    // Live, in a terminal: refreshed in place, and the stall's age grows.
    let t = Tmux::start(&format!(
        "{} top --socket {} --interval 300ms",
        binary().display(),
        sock.display()
    ));
    let first = wait_screen(&t, Duration::from_secs(10), |s| s.contains(&client))
        .unwrap_or_else(|s| panic!("top never showed {client}:\n{s}"));
    assert!(first.contains("zero_window"), "{first}");
    assert!(first.contains("tracked"), "{first}");
    let age = |s: &str| -> Option<String> {
        s.lines()
            .find(|l| l.contains(&client))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
    };
    let a0 = age(&first);
    wait_screen(&t, Duration::from_secs(10), |s| {
        age(s).is_some() && age(s) != a0
    })
    .unwrap_or_else(|s| panic!("the view did not refresh (stalled-for stayed {a0:?}):\n{s}"));
    t.keys("q");
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!t.alive(), "top did not quit on q");

    // Without an agent: a clear error, not a hang.
    drop((w, r));
    agent.stop();
    let gone = Command::new(binary())
        .args(["top", "--once", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!gone.status.success());
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(err.contains("cannot reach the agent"), "{err}");
}
