//! A small HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`, on the agent's own
//! (current-thread) tokio runtime.
//!
//! Requests are answered between ticks on the agent's thread, so a scrape never runs
//! concurrently with a tick and the tick never waits on a lock a scrape holds; encoding the
//! registry takes tens of microseconds. Each connection gets one answer and is closed
//! (`Connection: close`); request heads are limited to 8 KiB and 5 s, answers to 10 s, and
//! at most [`MAX_CONNECTIONS`] are served at once (more are closed unanswered), so a slow or
//! hostile client cannot hold the agent's memory or descriptors.

use super::Shared;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const MAX_CONNECTIONS: usize = 16;
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Listen on `addr` (before anything is attached, so a taken port fails the start cleanly).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
    l.set_nonblocking(true)
        .context("--metrics-addr: setting the socket non-blocking")?;
    Ok(l)
}

/// Serve on `listener` from a task of the running runtime. Must be called inside it.
pub fn spawn(listener: std::net::TcpListener, shared: Arc<Shared>) -> Result<()> {
    let l = tokio::net::TcpListener::from_std(listener)
        .context("--metrics-addr: registering the socket with the runtime")?;
    tokio::spawn(accept_loop(l, shared));
    Ok(())
}

async fn accept_loop(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    log::debug!("metrics: {MAX_CONNECTIONS} connections open; closing {peer}");
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    serve(s, &shared).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Read up to the end of the request head (`\r\n\r\n`). `Ok(None)`: closed first.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Option<Result<Vec<u8>, ()>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(Ok(buf)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some(Err(())));
        }
    }
}

async fn serve(mut s: TcpStream, shared: &Shared) {
    let resp = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut s)).await {
        Ok(Ok(Some(Ok(head)))) => respond(&head, shared),
        Ok(Ok(Some(Err(())))) => Response::text(431, "request head too large\n").bytes(false),
        _ => return,
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        s.write_all(&resp).await?;
        s.shutdown().await
    })
    .await;
}

/// One answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT,
            body: body.into(),
        }
    }

    /// Status line, headers and (unless `head_only`) the body.
    pub fn bytes(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request head, as bytes on the wire.
pub fn respond(head: &[u8], shared: &Shared) -> Vec<u8> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or("");
    let mut parts = request.split(' ');
    let (method, target) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => (m, t),
        _ => return Response::text(400, "bad request\n").bytes(false),
    };
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let head_only = method == "HEAD";
    route(method, target, &accept, shared).bytes(head_only)
}

/// Whether the client takes OpenMetrics (Prometheus asks for it first).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|t| {
        let mut it = t.split(';');
        let ty = it.next().unwrap_or("").trim();
        let q_zero = it.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f64>().ok())
                == Some(0.0)
        });
        ty.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
    })
}

pub fn route(method: &str, target: &str, accept: &str, shared: &Shared) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET and HEAD\n");
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => {
            let om = wants_openmetrics(accept);
            Response {
                status: 200,
                content_type: if om {
                    super::registry::OPENMETRICS_CONTENT_TYPE
                } else {
                    super::registry::PROMETHEUS_CONTENT_TYPE
                },
                body: shared.metrics.encode(om),
            }
        }
        "/healthz" => {
            let a = shared.health().healthz();
            Response::text(a.status, a.body)
        }
        "/readyz" => {
            let a = shared.health().readyz();
            Response::text(a.status, a.body)
        }
        "/" => Response::text(
            200,
            "tcpstall agent: /metrics (Prometheus, OpenMetrics), /healthz, /readyz\n",
        ),
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What Prometheus 2.x sends.
    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
        application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    fn shared() -> Shared {
        let p = Policy::parse(
            "[[rule]]\nname = \"wedge\"\nlocal_ports = [8080]\naction = \"reset\"\n",
            "t",
        )
        .unwrap();
        crate::metrics::tests::setup_shared(&p)
    }

    fn text(resp: &[u8]) -> String {
        String::from_utf8(resp.to_vec()).unwrap()
    }

    #[test]
    fn content_negotiation() {
        assert!(wants_openmetrics(PROMETHEUS_ACCEPT));
        assert!(wants_openmetrics("application/openmetrics-text"));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics(""));
        let s = shared();
        let om = route("GET", "/metrics", PROMETHEUS_ACCEPT, &s);
        assert_eq!(om.status, 200);
        assert!(om
            .content_type
            .starts_with("application/openmetrics-text; version=1.0.0"));
        assert!(om.body.ends_with("# EOF\n"));
        let plain = route("GET", "/metrics?x=1", "*/*", &s);
        assert!(plain.content_type.starts_with("text/plain; version=0.0.4"));
        assert!(plain
            .body
            .contains("# TYPE tcpstall_resets_total counter\n"));
    }

    #[test]
    fn routes_and_methods() {
        let s = shared();
        let r = text(&respond(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", &s));
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.contains("not ready: waiting for the first tick"), "{r}");
        s.health().tick_done(std::time::Instant::now());
        let r = text(&respond(b"GET /readyz HTTP/1.1\r\n\r\n", &s));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        let r = text(&respond(b"GET /healthz HTTP/1.0\r\n\r\n", &s));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        let body = r.split_once("\r\n\r\n").unwrap().1;
        let len: usize = r
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        // HEAD: headers only.
        let r = text(&respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &s));
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        assert!(!r.contains("tcpstall_"), "{r}");
        let r = text(&respond(b"POST /metrics HTTP/1.1\r\n\r\n", &s));
        assert!(
            r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"),
            "{r}"
        );
        let r = text(&respond(b"GET /nope HTTP/1.1\r\n\r\n", &s));
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = text(&respond(b"garbage\r\n\r\n", &s));
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        // A connection closed unanswered may be reset (our request was left unread).
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8(out).unwrap()
    }

    /// Over a real loopback socket: answers, a bounded number of connections (an idle
    /// client holds one slot, not the server), and a head that never ends is cut off.
    #[test]
    fn serves_over_tcp_with_bounded_connections() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = l.local_addr().unwrap();
            spawn(l, Arc::new(shared())).unwrap();
            let r = get(addr, "/metrics").await;
            assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
            assert!(r.contains("tcpstall_map_capacity 64\n"), "{r}");
            // Fill every slot with idle clients: the next connection is closed unanswered.
            let mut idle = Vec::new();
            for _ in 0..MAX_CONNECTIONS {
                idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
            let r = tokio::time::timeout(Duration::from_secs(3), get(addr, "/healthz"))
                .await
                .expect("an over-limit connection is closed at once");
            assert_eq!(r, "");
            // The idle clients leave: slots free again.
            drop(idle);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let r = get(addr, "/healthz").await;
                if r.starts_with("HTTP/1.1 200 OK\r\n") {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "slots never freed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // A head larger than the limit (by one byte, so the server reads all of it).
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
            big.resize(MAX_HEAD + 1, b'a');
            c.write_all(&big).await.unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        });
    }
}
