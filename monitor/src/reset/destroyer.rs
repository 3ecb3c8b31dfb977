//! [`Destroyer`]: SOCK_DESTROY and exact lookups (single and batched), with one cached
//! netlink socket per network namespace.

use super::*;

/// SOCK_DESTROY requests packed into one netlink datagram by [`Destroyer::destroy_many`].
pub const DESTROY_BATCH: usize = 64;
/// At most this many namespaces keep a cached netlink socket (least recently used evicted).
pub(super) const MAX_CACHED_NETNS: usize = 256;
/// A namespace's cached netlink socket unused this long is closed by
/// [`Destroyer::release_idle`] (the socket keeps its namespace alive).
pub const NETNS_IDLE_LIMIT: Duration = Duration::from_secs(60);

pub(super) struct CachedSock {
    pub(super) fd: OwnedFd,
    pub(super) last_used: Instant,
}

/// Sends SOCK_DESTROY / exact lookups, holding one netlink socket per network namespace.
///
/// A cached socket keeps its namespace alive (the kernel frees a namespace only when nothing
/// refers to it any more), so a socket unused for the idle limit ([`NETNS_IDLE_LIMIT`], 60 s;
/// see [`Destroyer::with_idle_limit`]) is closed by the next [`Destroyer::release_idle`] —
/// every request calls it, and the agent calls it every tick. At most 256 namespaces are
/// cached; [`Destroyer::forget_netns`] / [`Destroyer::prune_idle`] let the caller drop
/// namespaces it no longer sees.
pub struct Destroyer {
    pub(super) socks: HashMap<u64, CachedSock>,
    pub(super) seq: u32,
    pub(super) idle_limit: Duration,
    /// No cached socket reaches the idle limit before this instant (`None`: none ever will,
    /// e.g. the cache is empty).
    pub(super) next_release: Option<Instant>,
    /// Cache scans done by `release_idle` (calls with nothing due do not scan).
    pub(super) sweeps: u64,
    /// Lookups `lookup_many` redid one by one because their batch lost its replies.
    pub(super) batch_fallbacks: u64,
    pub(super) buf: Vec<u8>,
}

impl Default for Destroyer {
    fn default() -> Self {
        Destroyer::new()
    }
}

/// How one batched request turned out, before the operation interprets it.
pub(super) enum Sent {
    /// The kernel's answer.
    Reply(Reply),
    /// Never sent (no socket for the namespace, sending failed twice, or the kernel stopped
    /// answering earlier requests of the same call): the kernel did not act on it.
    Unsent(ResetError),
    /// Sent, but no answer arrived (timeout, receive error): it may have acted.
    Lost(ResetError),
}

/// What one reply means for the target.
pub(super) enum Step<R> {
    /// The final result.
    Done(R),
    /// Not found with this encoding: try the target's next one (IPv4-mapped sockets).
    Next,
}

/// `INET_DIAG_INFO` requested: the reply carries `struct tcp_info`.
pub(super) const INFO_EXT: u8 = 1 << (INET_DIAG_INFO - 1);

pub(super) fn has_cookie(t: &Target) -> bool {
    t.cookie != 0 && t.cookie != u64::MAX
}

/// The meaning of the kernel's answer to SOCK_DESTROY; `more`: another encoding is left.
pub(super) fn destroy_step(t: &Target, reply: Reply, more: bool) -> Step<Result<(), ResetError>> {
    match reply {
        Reply::Ack(0) => Step::Done(Ok(())),
        Reply::Ack(errno) if errno == libc::ENOENT && more => Step::Next,
        Reply::Ack(errno) => Step::Done(Err(kernel_error(errno, t))),
        Reply::Diag(_) => Step::Done(Err(ResetError::new(
            "reply",
            libc::EPROTO,
            "the kernel answered SOCK_DESTROY with socket data instead of an \
             acknowledgement; the socket may or may not have been reset (unexpected kernel \
             behaviour, please report)",
        ))),
    }
}

/// The meaning of the kernel's answer to an exact lookup; `more`: another encoding is left.
pub(super) fn lookup_step(
    t: &Target,
    reply: Reply,
    more: bool,
) -> Step<Result<Option<TcpDiag>, ResetError>> {
    match reply {
        Reply::Diag(d) if has_cookie(t) && d.cookie != t.cookie => {
            Step::Done(Err(ResetError::new(
                "reply",
                libc::EPROTO,
                format!(
                    "the kernel returned socket cookie {:#x} for a lookup of cookie {:#x}; \
                     ignoring the answer (unexpected kernel behaviour, please report)",
                    d.cookie, t.cookie
                ),
            )))
        }
        Reply::Diag(d) => Step::Done(Ok(Some(*d))),
        Reply::Ack(errno) if errno == libc::ENOENT => {
            if more {
                Step::Next
            } else {
                Step::Done(Ok(None))
            }
        }
        Reply::Ack(0) => Step::Done(Err(ResetError::new(
            "reply",
            libc::EPROTO,
            "the kernel acknowledged the lookup without sending the socket (unexpected \
             kernel behaviour, please report)",
        ))),
        Reply::Ack(errno) => Step::Done(Err(kernel_error(errno, t))),
    }
}

impl Destroyer {
    /// An empty destroyer; sockets are opened on first use per namespace.
    pub fn new() -> Destroyer {
        Destroyer {
            socks: HashMap::new(),
            seq: 0,
            idle_limit: NETNS_IDLE_LIMIT,
            next_release: None,
            sweeps: 0,
            batch_fallbacks: 0,
            buf: vec![0; RECV_BUF_LEN],
        }
    }

    /// The same destroyer, closing a namespace's cached socket after `limit` without use
    /// instead of [`NETNS_IDLE_LIMIT`] (a knob for tests; shorter limits mean more
    /// `setns` round trips, longer ones keep dead namespaces allocated longer).
    pub fn with_idle_limit(mut self, limit: Duration) -> Destroyer {
        self.idle_limit = limit;
        self.next_release = self
            .socks
            .values()
            .filter_map(|c| c.last_used.checked_add(limit))
            .min();
        self
    }

    /// How long a namespace's cached socket may stay unused before it is closed.
    pub fn idle_limit(&self) -> Duration {
        self.idle_limit
    }

    /// Abort the socket named by `t` (the kernel sends a RST to the peer and fails pending
    /// and future calls on the socket with `ECONNABORTED`). Refuses targets without a cookie.
    /// `Err` with errno `ENOENT` means the socket is gone or the 4-tuple now belongs to
    /// another connection; nothing was reset.
    pub fn destroy(&mut self, t: &Target) -> Result<(), ResetError> {
        if !has_cookie(t) {
            return Err(ResetError::new(
                "send",
                libc::EINVAL,
                format!(
                    "refusing to destroy {} -> {} without a socket cookie (cookie {:#x}): \
                     the 4-tuple alone could name a newer connection; pass the cookie from \
                     SO_COOKIE / bpf_get_socket_cookie",
                    t.local, t.remote, t.cookie
                ),
            ));
        }
        let ids = wire_ids(t)?;
        for (k, id) in ids.iter().enumerate() {
            let reply = self.transact(t, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, id, 0)?;
            if let Step::Done(r) = destroy_step(t, reply, k + 1 < ids.len()) {
                return r;
            }
        }
        Err(kernel_error(libc::ENOENT, t))
    }

    /// Destroy many sockets with few system calls — the mass-disconnect case (thousands of
    /// wedges at once). Requests for the same network namespace are packed into netlink
    /// datagrams of [`DESTROY_BATCH`] messages; the kernel handles every message of a datagram
    /// in one `sendto`, then the acknowledgements are read back. Each target gets the same
    /// checks and the same result as [`Destroyer::destroy`]; results come back in order. A
    /// request whose acknowledgement was lost is reported, never resent (it may have acted).
    pub fn destroy_many(&mut self, targets: &[Target]) -> Vec<Result<(), ResetError>> {
        self.run_batched(
            targets,
            (SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 0),
            false,
            has_cookie,
            destroy_step,
            |d, t| d.destroy(t),
        )
    }

    /// Look the socket named by `t` up exactly and return its diag and `tcp_info`.
    /// `Ok(None)`: no socket with this 4-tuple and cookie (cookie 0 matches any cookie).
    pub fn lookup(&mut self, t: &Target) -> Result<Option<TcpDiag>, ResetError> {
        let ids = wire_ids(t)?;
        for (k, id) in ids.iter().enumerate() {
            let reply = self.transact(t, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, id, INFO_EXT)?;
            if let Step::Done(r) = lookup_step(t, reply, k + 1 < ids.len()) {
                return r;
            }
        }
        Ok(None)
    }

    /// [`Destroyer::lookup`] for many sockets with few system calls (re-verifying a whole
    /// tick's worth of reset candidates): exact requests for the same namespace are packed
    /// into datagrams of [`DESTROY_BATCH`] messages like [`Destroyer::destroy_many`]. Each
    /// target gets the same result as `lookup` (the cookie must match; IPv4-mapped sockets get
    /// their second encoding); results come back in order. Lookups only read, so a batch
    /// whose replies were lost (e.g. `ENOBUFS`) is redone one by one; a kernel that does not
    /// answer at all fails the namespace's remaining targets with `ETIMEDOUT` after
    /// 500 ms instead of waiting that long per target.
    pub fn lookup_many(&mut self, targets: &[Target]) -> Vec<Result<Option<TcpDiag>, ResetError>> {
        self.run_batched(
            targets,
            (SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, INFO_EXT),
            true,
            |_| true,
            lookup_step,
            |d, t| d.lookup(t),
        )
    }

    /// The batched form of a per-target operation. Targets `batchable` rejects, and those
    /// without a valid encoding, take `single` (which fails them without I/O); the rest are
    /// grouped by namespace and sent with [`Destroyer::exchange`], first encoding first;
    /// `step` reads each reply. With `redo_lost`, requests whose reply was lost (other than
    /// by a timeout) are redone with `single`.
    pub(super) fn run_batched<X>(
        &mut self,
        targets: &[Target],
        op: (u16, u16, u8),
        redo_lost: bool,
        batchable: impl Fn(&Target) -> bool,
        step: impl Fn(&Target, Reply, bool) -> Step<Result<X, ResetError>>,
        single: impl Fn(&mut Destroyer, &Target) -> Result<X, ResetError>,
    ) -> Vec<Result<X, ResetError>> {
        let mut results: Vec<Option<Result<X, ResetError>>> =
            targets.iter().map(|_| None).collect();
        let mut ids: Vec<Vec<WireId>> = Vec::with_capacity(targets.len());
        let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut one_by_one = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            match wire_ids(t) {
                Ok(enc) if batchable(t) && !enc.is_empty() => match netns_key(t.netns) {
                    Ok(key) => {
                        groups.entry(key).or_default().push(i);
                        ids.push(enc);
                        continue;
                    }
                    Err(e) => results[i] = Some(Err(e)),
                },
                _ => one_by_one.push(i),
            }
            ids.push(Vec::new());
        }
        let mut level = 0;
        while !groups.is_empty() {
            let mut next: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for (key, members) in std::mem::take(&mut groups) {
                let reqs: Vec<WireId> = members.iter().map(|&i| ids[i][level]).collect();
                let pid_hint = members.iter().find_map(|&i| targets[i].pid_hint);
                let sent = self.exchange(key, pid_hint, op, &reqs);
                for (&i, outcome) in members.iter().zip(sent) {
                    let t = &targets[i];
                    match outcome {
                        Sent::Reply(reply) => match step(t, reply, level + 1 < ids[i].len()) {
                            Step::Done(r) => results[i] = Some(r),
                            Step::Next => next.entry(key).or_default().push(i),
                        },
                        Sent::Lost(e) if redo_lost && e.errno != libc::ETIMEDOUT => {
                            self.batch_fallbacks += 1;
                            one_by_one.push(i);
                        }
                        Sent::Unsent(e) | Sent::Lost(e) => results[i] = Some(Err(e)),
                    }
                }
            }
            groups = next;
            level += 1;
        }
        for i in one_by_one {
            results[i] = Some(single(self, &targets[i]));
        }
        results
            .into_iter()
            .map(|r| r.expect("every target gets a result"))
            .collect()
    }

    /// Send one request per entry of `reqs`, all for namespace `key`, in datagrams of
    /// [`DESTROY_BATCH`] messages (the kernel handles every message of a datagram within one
    /// `sendto`; a datagram is taken whole or not at all) and match the answers by sequence
    /// number. A failed send is retried once on a fresh socket. After a chunk's replies are
    /// lost, the socket is replaced; after a timeout the rest is not sent.
    pub(super) fn exchange(
        &mut self,
        key: u64,
        pid_hint: Option<u32>,
        (msg_type, flags, ext): (u16, u16, u8),
        reqs: &[WireId],
    ) -> Vec<Sent> {
        let mut out: Vec<Option<Sent>> = reqs.iter().map(|_| None).collect();
        for (c, chunk) in reqs.chunks(DESTROY_BATCH).enumerate() {
            let base = c * DESTROY_BATCH;
            let mut msg = Vec::with_capacity(chunk.len() * (NLMSG_HDRLEN + REQ_V2_LEN));
            let mut pending: HashMap<u32, usize> = HashMap::with_capacity(chunk.len());
            for (j, id) in chunk.iter().enumerate() {
                self.seq = self.seq.wrapping_add(1).max(1);
                msg.extend_from_slice(&encode_request(msg_type, flags, self.seq, id, ext));
                pending.insert(self.seq, base + j);
            }
            let mut sent_on = None;
            for attempt in 1..=2 {
                let fd = match self.socket_for(key, pid_hint) {
                    Ok(fd) => fd,
                    Err(e) => {
                        for slot in &mut out[base..] {
                            *slot = Some(Sent::Unsent(e.clone()));
                        }
                        return finish(out);
                    }
                };
                match send_request(fd, &msg) {
                    Ok(()) => {
                        sent_on = Some(fd);
                        break;
                    }
                    Err(e) => {
                        self.socks.remove(&key);
                        if attempt == 2 {
                            for slot in &mut out[base..base + chunk.len()] {
                                *slot = Some(Sent::Unsent(e.clone()));
                            }
                        }
                    }
                }
            }
            let Some(fd) = sent_on else { continue };
            let deadline = Instant::now() + REPLY_TIMEOUT;
            while !pending.is_empty() {
                match recv_datagram(fd, &mut self.buf, deadline) {
                    Ok(n) => {
                        let parsed = for_each_reply(&self.buf[..n], |seq, reply| {
                            if let Some(i) = pending.remove(&seq) {
                                out[i] = Some(Sent::Reply(reply));
                            }
                        });
                        if let Err(e) = parsed {
                            log::warn!("sock_diag batch: {e}");
                        }
                    }
                    Err(e) => {
                        self.socks.remove(&key);
                        for (_, i) in pending.drain() {
                            out[i] = Some(Sent::Lost(e.clone()));
                        }
                        if e.errno == libc::ETIMEDOUT {
                            for slot in &mut out[base + chunk.len()..] {
                                *slot = Some(Sent::Unsent(e.clone()));
                            }
                            return finish(out);
                        }
                    }
                }
            }
            self.touch(key);
        }
        return finish(out);

        fn finish(out: Vec<Option<Sent>>) -> Vec<Sent> {
            out.into_iter()
                .map(|s| s.expect("every request gets an outcome"))
                .collect()
        }
    }

    /// Close the cached socket of one namespace (e.g. the container is gone).
    pub fn forget_netns(&mut self, netns: u32) {
        self.socks.remove(&u64::from(netns));
    }

    /// Close cached sockets unused for longer than `max_idle`; returns how many were closed.
    pub fn prune_idle(&mut self, max_idle: Duration) -> usize {
        let before = self.socks.len();
        self.socks.retain(|_, c| c.last_used.elapsed() <= max_idle);
        before - self.socks.len()
    }

    /// Close the cached sockets unused for the idle limit, so the namespaces only they kept
    /// alive (containers that are gone) are freed; returns how many were closed. Cheap enough
    /// for every tick: it compares the clock with the earliest instant an entry can reach the
    /// limit and scans the cache only from then on.
    pub fn release_idle(&mut self) -> usize {
        let now = Instant::now();
        match self.next_release {
            Some(due) if now >= due => {}
            _ => return 0,
        }
        self.sweeps += 1;
        let limit = self.idle_limit;
        let before = self.socks.len();
        self.socks
            .retain(|_, c| now.saturating_duration_since(c.last_used) < limit);
        self.next_release = self
            .socks
            .values()
            .filter_map(|c| c.last_used.checked_add(limit))
            .min();
        before - self.socks.len()
    }

    /// Number of namespaces with a cached netlink socket.
    pub fn cached_netns(&self) -> usize {
        self.socks.len()
    }

    /// Send one request and wait for its reply. Errors returned here are failures of our
    /// own netlink socket (the kernel's verdict arrives as `Reply::Ack(errno)`); the socket
    /// is then dropped from the cache. A failed send is retried once on a fresh socket (the
    /// kernel never saw it); a failed receive is not (a destroy may already have happened).
    pub(super) fn transact(
        &mut self,
        t: &Target,
        msg_type: u16,
        flags: u16,
        id: &WireId,
        ext: u8,
    ) -> Result<Reply, ResetError> {
        let key = netns_key(t.netns)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let fd = self.socket_for(key, t.pid_hint)?;
            self.seq = self.seq.wrapping_add(1).max(1);
            let seq = self.seq;
            let msg = encode_request(msg_type, flags, seq, id, ext);
            if let Err(e) = send_request(fd, &msg) {
                self.socks.remove(&key);
                if attempt >= 2 {
                    return Err(e);
                }
                continue;
            }
            return match recv_reply(fd, seq, &mut self.buf) {
                Ok(reply) => {
                    self.touch(key);
                    Ok(reply)
                }
                Err(e) => {
                    self.socks.remove(&key);
                    Err(e)
                }
            };
        }
    }

    pub(super) fn touch(&mut self, key: u64) {
        if let Some(c) = self.socks.get_mut(&key) {
            c.last_used = Instant::now();
        }
    }

    pub(super) fn socket_for(
        &mut self,
        key: u64,
        pid_hint: Option<u32>,
    ) -> Result<RawFd, ResetError> {
        self.release_idle();
        if let Some(c) = self.socks.get(&key) {
            return Ok(c.fd.as_raw_fd());
        }
        let fd = open_diag_socket_in(key, pid_hint)?;
        Ok(self.cache_insert(key, fd))
    }

    /// Cache `fd` as namespace `key`'s socket, evicting the least recently used one when full.
    pub(super) fn cache_insert(&mut self, key: u64, fd: OwnedFd) -> RawFd {
        if self.socks.len() >= MAX_CACHED_NETNS {
            if let Some(oldest) = self
                .socks
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| *k)
            {
                self.socks.remove(&oldest);
            }
        }
        let now = Instant::now();
        let raw = fd.as_raw_fd();
        self.socks.insert(key, CachedSock { fd, last_used: now });
        if let Some(due) = now.checked_add(self.idle_limit) {
            self.next_release = Some(self.next_release.map_or(due, |d| d.min(due)));
        }
        raw
    }
}

impl Destroyer {
    /// Open (and cache) this destroyer's netlink socket for namespace `ns` through
    /// `ns.path`, so later [`destroy`](Destroyer::destroy) / [`lookup`](Destroyer::lookup)
    /// calls for targets in `ns.ino` work even when the namespace is reachable only through
    /// that path (e.g. a bind mount outside `/run/netns` with no process in it).
    pub fn attach_netns(&mut self, ns: &NetnsRef) -> Result<(), ResetError> {
        let key = u64::from(ns.ino);
        if self.socks.contains_key(&key) {
            return Ok(());
        }
        let fd = diag_socket_at(ns)?;
        self.cache_insert(key, fd);
        Ok(())
    }
}
