//! Fake kernel parts for the agent's unit tests: a map ([`Src`]), sock_diag ([`Kern`]), an
//! event output ([`Buf`]), socket builders, and a [`Rig`] that holds an agent over them.

use super::verify::{TCP_ESTABLISHED, TCP_LISTEN};
use super::{Agent, Config, DiagPath, SockSource};
use crate::classify::StallClass;
use crate::event::EventWriter;
use crate::policy::Policy;
use crate::probes::Counters;
use crate::reset::{ResetError, Target, TcpDiag};
use crate::snapshot::monotonic_ns;
use monitor_common::{flags, CloseNote, SockState};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(super) const S: u64 = 1_000_000_000;

/// Entries and close notes of a fake map. A note queued with `note_after_read` appears
/// only in a drain that follows a read (a close racing the tick).
#[derive(Default)]
pub(super) struct FakeMap {
    pub(super) states: Vec<SockState>,
    pub(super) notes: Vec<CloseNote>,
    pub(super) late_notes: Vec<CloseNote>,
    pub(super) read_done: bool,
    pub(super) removed: Vec<u64>,
    pub(super) max: u32,
    pub(super) map_full: u64,
    /// The last pressure flag the agent set.
    pub(super) pressure: bool,
    /// No read hook (`reads.rs` asks the fake sock_diag); false: every read is reported.
    pub(super) no_read_hook: bool,
    /// No ACK hook (`--trouble-hooks`): progress comes from sock_diag (`sends.rs`).
    pub(super) no_ack_hook: bool,
    /// Entries whose cookie the kernel side does not know yet (address keys): a read hands
    /// each to its resolver with cookie 0 and leaves it out when that finds none.
    pub(super) unnamed: HashSet<u64>,
}

#[derive(Clone, Default)]
pub(super) struct Src(pub(super) Arc<Mutex<FakeMap>>);

impl SockSource for Src {
    fn read_all(&mut self, r: &mut dyn FnMut(&SockState) -> Option<u64>) -> Vec<SockState> {
        let mut m = self.0.lock().unwrap();
        m.read_done = true;
        let mut out = Vec::with_capacity(m.states.len());
        for s in m.states.clone() {
            if m.unnamed.contains(&s.cookie) {
                let asked = SockState { cookie: 0, ..s };
                if r(&asked) != Some(s.cookie) {
                    continue;
                }
                m.unnamed.remove(&s.cookie);
            }
            out.push(s);
        }
        out
    }
    fn drain_closed(&mut self) -> Vec<CloseNote> {
        let mut m = self.0.lock().unwrap();
        let mut out = std::mem::take(&mut m.notes);
        if m.read_done {
            out.append(&mut m.late_notes);
        }
        m.read_done = false;
        out
    }
    fn remove(&mut self, cookie: u64) -> bool {
        let mut m = self.0.lock().unwrap();
        let before = m.states.len();
        m.states.retain(|s| s.cookie != cookie);
        m.removed.push(cookie);
        m.states.len() != before
    }
    fn counters(&self) -> Counters {
        Counters {
            map_full: self.0.lock().unwrap().map_full,
            ..Counters::default()
        }
    }
    fn max_sockets(&self) -> u32 {
        self.0.lock().unwrap().max.max(1)
    }
    fn bpf_run_ns(&self) -> Option<u64> {
        None
    }
    fn set_pressure(&mut self, on: bool) -> anyhow::Result<()> {
        self.0.lock().unwrap().pressure = on;
        Ok(())
    }
    fn reads_seen(&self) -> bool {
        !self.0.lock().unwrap().no_read_hook
    }
    fn acks_seen(&self) -> bool {
        !self.0.lock().unwrap().no_ack_hook
    }
}

/// The kernel as sock_diag sees it: live sockets by cookie, listeners by local port,
/// errors to return from the next destroys.
#[derive(Default)]
pub(super) struct FakeKernel {
    pub(super) live: HashMap<u64, TcpDiag>,
    pub(super) listeners: HashSet<u16>,
    pub(super) destroy_errors: Vec<i32>,
    pub(super) destroyed: Vec<u64>,
    pub(super) lookup_many_calls: usize,
    /// Single lookups (`lookup`) made.
    pub(super) lookup_calls: usize,
    /// Live sockets by remote address, for lookups by 4-tuple (cookie 0).
    pub(super) by_remote: HashMap<std::net::SocketAddr, u64>,
    pub(super) destroy_calls: usize,
    /// The agent's output as it was when each destroy batch was sent.
    pub(super) witness: Option<Buf>,
    pub(super) out_at_destroy: Vec<Vec<serde_json::Value>>,
}

#[derive(Clone, Default)]
pub(super) struct Kern(pub(super) Arc<Mutex<FakeKernel>>);

impl FakeKernel {
    /// What sock_diag answers about `t`: a listener by local port, a socket by cookie, or
    /// by 4-tuple when the cookie is 0.
    fn answer(&self, t: &Target) -> Option<TcpDiag> {
        if t.remote.port() == 0 {
            return self.listeners.contains(&t.local.port()).then(|| TcpDiag {
                state: TCP_LISTEN,
                ..diag(0, 0)
            });
        }
        let cookie = match t.cookie {
            0 => *self.by_remote.get(&t.remote)?,
            c => c,
        };
        self.live.get(&cookie).cloned()
    }
}

impl DiagPath for Kern {
    fn lookup(&mut self, t: &Target) -> Result<Option<TcpDiag>, ResetError> {
        let mut k = self.0.lock().unwrap();
        k.lookup_calls += 1;
        Ok(k.answer(t))
    }
    fn lookup_many(&mut self, t: &[Target]) -> Vec<Result<Option<TcpDiag>, ResetError>> {
        let mut k = self.0.lock().unwrap();
        k.lookup_many_calls += 1;
        t.iter().map(|t| Ok(k.answer(t))).collect()
    }
    fn destroy_many(&mut self, t: &[Target]) -> Vec<Result<(), ResetError>> {
        let mut k = self.0.lock().unwrap();
        k.destroy_calls += 1;
        if let Some(w) = k.witness.clone() {
            k.out_at_destroy.push(w.events());
        }
        t.iter()
            .map(|t| {
                if !k.destroy_errors.is_empty() {
                    let errno = k.destroy_errors.remove(0);
                    return Err(ResetError {
                        errno,
                        meaning: "injected".into(),
                        stage: "reply",
                    });
                }
                k.destroyed.push(t.cookie);
                k.live.remove(&t.cookie);
                Ok(())
            })
            .collect()
    }
    fn release_idle(&mut self) -> usize {
        0
    }
    fn cached_netns(&self) -> usize {
        0
    }
}

/// The agent's output; `fail` makes every write fail as on a full disk.
#[derive(Clone, Default)]
pub(super) struct Buf(
    pub(super) Arc<Mutex<Vec<u8>>>,
    pub(super) Arc<std::sync::atomic::AtomicBool>,
);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.1.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    pub(super) fn events(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    pub(super) fn named(&self, name: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }
}

pub(super) fn diag(cookie: u64, send_q: u32) -> TcpDiag {
    TcpDiag {
        inode: 1,
        timer: 1,
        timer_retrans: 3,
        timer_expires_ms: 100,
        send_q,
        retransmits: 3,
        backoff: 3,
        rto_us: 1_600_000,
        snd_mss: 1448,
        unacked: 3,
        retrans: 1,
        last_data_sent_ms: 100,
        last_ack_recv_ms: 60_000,
        rtt_us: 100,
        snd_cwnd: 1,
        total_retrans: 3,
        ..TcpDiag::new(
            2,
            TCP_ESTABLISHED,
            cookie,
            "10.0.0.1:8080".parse().unwrap(),
            "10.9.0.2:40000".parse().unwrap(),
        )
    }
}

/// A socket of ours on :8080 to `remote`, stalled `class` since 10 s, 4000 bytes queued.
pub(super) fn stalled(cookie: u64, remote: &str, class: StallClass) -> SockState {
    let now = monotonic_ns();
    let r: std::net::SocketAddr = remote.parse().unwrap();
    let mut s = SockState::zeroed();
    s.cookie = cookie;
    s.key = cookie;
    s.family = 2;
    s.lport = 8080;
    s.rport = r.port();
    s.laddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    if let IpAddr::V4(v4) = r.ip() {
        s.raddr[..4].copy_from_slice(&v4.octets());
    }
    s.write_seq = 5000;
    s.snd_una = 1000;
    s.snd_nxt = 5000;
    s.times.first_seen_ns = now - 20 * S;
    s.times.last_progress_ns = now - 10 * S;
    match class {
        StallClass::NoAck => {
            s.snd_wnd = 65535;
            s.times.last_ack_ns = now - 10 * S;
            s.times.last_retrans_ns = now - S;
            s.retransmits = 5;
            s.backoff = 4;
        }
        _ => {
            s.flags = flags::ZERO_WINDOW | flags::ZERO_WINDOW_SEEN;
            s.times.last_ack_ns = now - S / 10;
            s.zero_window_acks = 8;
        }
    }
    s
}

/// A healthy socket of ours to `remote`: data in flight, acked just now.
pub(super) fn healthy(cookie: u64, remote: &str) -> SockState {
    let mut s = stalled(cookie, remote, StallClass::NoAck);
    let now = monotonic_ns();
    s.times.last_progress_ns = now;
    s.times.last_ack_ns = now;
    s.times.last_retrans_ns = 0;
    s.backoff = 0;
    s.retransmits = 0;
    s
}

pub(super) const POLICY: &str = "tick = \"1s\"\n[defaults]\nno_ack_after = \"2s\"\n\
    zero_window_after = \"2s\"\n[[rule]]\nname = \"svc\"\nlocal_ports = [8080]\n\
    action = \"reset\"\nclasses = [\"zero_window\", \"no_ack\"]\n";

pub(super) struct Rig {
    pub(super) agent: Agent<Src, Kern>,
    pub(super) map: Src,
    pub(super) kern: Kern,
    pub(super) out: Buf,
}

pub(super) fn rig(policy_extra: &str) -> Rig {
    rig_with(Policy::parse(&format!("{POLICY}{policy_extra}"), "test.toml").unwrap())
}

pub(super) fn rig_with(policy: Policy) -> Rig {
    let cfg = Config {
        policy,
        tick: Duration::from_millis(100),
        stats_interval: Duration::from_secs(3600),
        output: None,
        dry_run: false,
        max_sockets: 100_000,
        bpf_stats: false,
        per_write_hooks: false,
        read_hook: false,
        trouble_hooks: false,
        duration: None,
        status_socket: None,
        state: None,
    };
    let (map, kern, out) = (Src::default(), Kern::default(), Buf::default());
    map.0.lock().unwrap().max = 100_000;
    let agent = Agent::with_parts(
        cfg,
        map.clone(),
        kern.clone(),
        EventWriter::new(Box::new(out.clone()), "test"),
        true,
        true,
    );
    Rig {
        agent,
        map,
        kern,
        out,
    }
}

impl Rig {
    pub(super) fn add(&self, s: SockState, live: bool) {
        if live {
            let q = s.write_seq.wrapping_sub(s.snd_una);
            let mut d = diag(s.cookie, q);
            if s.flags & flags::ZERO_WINDOW != 0 {
                d.last_ack_recv_ms = 100;
            }
            self.kern.0.lock().unwrap().live.insert(s.cookie, d);
        }
        self.map.0.lock().unwrap().states.push(s);
    }
    pub(super) fn drop_entry(&self, cookie: u64) {
        self.map
            .0
            .lock()
            .unwrap()
            .states
            .retain(|s| s.cookie != cookie);
    }
    pub(super) fn destroyed(&self) -> Vec<u64> {
        self.kern.0.lock().unwrap().destroyed.clone()
    }
}

pub(super) fn note(cookie: u64) -> CloseNote {
    CloseNote {
        cookie,
        key: cookie,
        ts_ns: monotonic_ns(),
        reason: 1,
        new_state: 7,
    }
}
