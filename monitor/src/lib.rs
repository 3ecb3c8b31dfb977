//! tcpstall agent. Data flows one way through these stages:
//!
//! kernel hooks (`monitor-ebpf`) → [`probes`] (load, attach, read per-socket state) →
//! [`snapshot`] → [`classify`] (stall classes, per-socket history) → [`policy`] (which rule,
//! which action) → [`reset`] (SOCK_DESTROY) → [`event`] (NDJSON out). [`agent`] runs the tick.

pub mod agent;
pub mod btf;
pub mod classify;
pub mod event;
pub mod identity;
pub mod manual;
pub mod policy;
pub mod probes;
pub mod reset;
pub mod snapshot;
