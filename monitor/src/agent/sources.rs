//! The kernel parts behind two small traits, so the tick is unit-tested with fakes:
//! [`SockSource`] (the BPF map: [`Probes`]) and [`DiagPath`] (sock_diag lookups and
//! SOCK_DESTROY: [`Destroyer`]).

use crate::probes::{Counters, Probes};
use crate::reset::{Destroyer, ResetError, Target, TcpDiag};
use monitor_common::{CloseNote, SockState};

/// The kernel map as the tick needs it (`Probes` in production, a fake in unit tests).
pub trait SockSource {
    /// Every tracked socket's state, each with its cookie (`resolve` names address-keyed
    /// entries; see [`Probes::read_all`]).
    fn read_all(&mut self, resolve: &mut dyn FnMut(&SockState) -> Option<u64>) -> Vec<SockState>;
    /// Close notes produced since the last call.
    fn drain_closed(&mut self) -> Vec<CloseNote>;
    /// Delete one socket's entry (eviction, stale entries). False if it was not there.
    fn remove(&mut self, cookie: u64) -> bool;
    fn counters(&self) -> Counters;
    fn max_sockets(&self) -> u32;
    fn bpf_run_ns(&self) -> Option<u64>;
    /// Tell the kernel side the map is nearly full: writes start no new entries, so the
    /// room left is kept for sockets with a wedge signature.
    fn set_pressure(&mut self, on: bool) -> anyhow::Result<()>;
    /// Whether a hook reports every read (else `reads.rs` asks sock_diag).
    fn reads_seen(&self) -> bool;
    /// Whether a hook reports every ACK (else, with `--trouble-hooks`, `sends.rs` asks
    /// sock_diag for the tracked sockets' progress).
    fn acks_seen(&self) -> bool;
    /// Hand back the buffer [`SockSource::read_all`] returned, for the next read to fill.
    fn recycle(&mut self, _states: Vec<SockState>) {}
    /// The kernel's holder iterator (`identity/iter.rs`): `(inode, tgid, fd)` of every
    /// process holding one of `inodes`; None where it is not loaded or the pass failed
    /// (the agent walks `/proc` then).
    fn holder_pass(&mut self, _inodes: &[u64]) -> Option<Vec<monitor_common::HolderRecord>> {
        None
    }
}

/// The act stage's kernel interface: sock_diag lookups and SOCK_DESTROY (`Destroyer` in
/// production, a fake in unit tests).
pub trait DiagPath {
    fn lookup(&mut self, t: &Target) -> Result<Option<TcpDiag>, ResetError>;
    fn lookup_many(&mut self, t: &[Target]) -> Vec<Result<Option<TcpDiag>, ResetError>>;
    fn destroy_many(&mut self, t: &[Target]) -> Vec<Result<(), ResetError>>;
    /// Close per-namespace sockets idle past their limit; how many were closed.
    fn release_idle(&mut self) -> usize;
    fn cached_netns(&self) -> usize;
}

impl SockSource for Probes {
    fn read_all(&mut self, resolve: &mut dyn FnMut(&SockState) -> Option<u64>) -> Vec<SockState> {
        Probes::read_all(self, resolve)
    }
    fn drain_closed(&mut self) -> Vec<CloseNote> {
        Probes::drain_closed(self)
    }
    fn remove(&mut self, cookie: u64) -> bool {
        Probes::remove(self, cookie)
    }
    fn counters(&self) -> Counters {
        Probes::counters(self)
    }
    fn max_sockets(&self) -> u32 {
        Probes::max_sockets(self)
    }
    fn bpf_run_ns(&self) -> Option<u64> {
        Probes::bpf_run_ns(self)
    }
    fn set_pressure(&mut self, on: bool) -> anyhow::Result<()> {
        Probes::set_pressure(self, on)
    }
    fn reads_seen(&self) -> bool {
        Probes::reads_seen(self)
    }
    fn acks_seen(&self) -> bool {
        Probes::acks_seen(self)
    }
    fn holder_pass(&mut self, inodes: &[u64]) -> Option<Vec<monitor_common::HolderRecord>> {
        Probes::holder_pass(self, inodes)
    }
    fn recycle(&mut self, states: Vec<SockState>) {
        Probes::recycle(self, states)
    }
}

impl DiagPath for Destroyer {
    fn lookup(&mut self, t: &Target) -> Result<Option<TcpDiag>, ResetError> {
        Destroyer::lookup(self, t)
    }
    fn lookup_many(&mut self, t: &[Target]) -> Vec<Result<Option<TcpDiag>, ResetError>> {
        Destroyer::lookup_many(self, t)
    }
    fn destroy_many(&mut self, t: &[Target]) -> Vec<Result<(), ResetError>> {
        Destroyer::destroy_many(self, t)
    }
    fn release_idle(&mut self) -> usize {
        Destroyer::release_idle(self)
    }
    fn cached_netns(&self) -> usize {
        Destroyer::cached_netns(self)
    }
}
