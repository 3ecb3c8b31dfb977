//! A real Prometheus server (Debian's `prometheus` package) scraping the agent: started on
//! loopback with a temporary configuration and TSDB, queried through its HTTP API, killed
//! and its directory removed on drop (also when the test fails).

use crate::http;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary: `$TCPSTALL_PROMETHEUS`, else Debian's `/usr/bin/prometheus`.
pub fn binary() -> PathBuf {
    std::env::var_os("TCPSTALL_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// Whether the server can be run: without it, prints a SKIP line and returns false, except
/// under `CI=true`, where it panics (`cargo xtask test` installs the package).
pub fn available() -> bool {
    if binary().is_file() {
        return true;
    }
    let msg = format!(
        "{} not found: install Debian's prometheus package (`cargo xtask test` does)",
        binary().display()
    );
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{msg}");
    }
    eprintln!("SKIP: {msg}");
    false
}

/// How long the server may take to answer `/-/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Start a server scraping `target` (host:port) at `/metrics` every second, and wait
    /// until it is ready.
    pub fn start(target: SocketAddr) -> Prometheus {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "tcpstall-prometheus-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("creating the prometheus temp dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: tcpstall\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("writing prometheus.yml");
        let addr: SocketAddr = ([127, 0, 0, 1], http::free_port()).into();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
        let mut cmd = Command::new(binary());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // Never outlive the test process.
        crate::die_with_parent(&mut cmd, libc::SIGKILL);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary().display()));
        let mut p = Prometheus {
            child: Some(child),
            dir,
            addr,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(r) = http::get(addr, "/-/ready", &[], HTTP_TIMEOUT) {
                if r.status == 200 {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = p.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "prometheus exited ({status}) before it was ready{}",
                    p.diagnostics()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "prometheus not ready within {READY_TIMEOUT:?}{}",
                    p.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// An instant query: the result vector as (labels, value).
    pub fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>, String> {
        let path = format!("/api/v1/query?query={}", http::encode_query(promql));
        let r = http::get(self.addr, &path, &[], HTTP_TIMEOUT).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
        if v["status"] != "success" {
            return Err(r.body);
        }
        Ok(v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect())
    }

    /// The scrape targets as Prometheus sees them (health, last error), for failures.
    pub fn targets(&self) -> String {
        http::get(self.addr, "/api/v1/targets", &[], HTTP_TIMEOUT)
            .map(|r| r.body)
            .unwrap_or_else(|e| e.to_string())
    }

    /// The server's log and targets, for failure messages.
    pub fn diagnostics(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "\n--- prometheus log (tail) ---\n{tail}\n--- targets ---\n{}\n---",
            self.targets()
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
