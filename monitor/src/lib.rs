//! tcpstall agent. Data flows one way through these stages:
//!
//! kernel hooks (`monitor-ebpf`) → [`probes`] (load, attach where [`attach`] decides, read
//! per-socket state) →
//! [`snapshot`] → [`classify`] (stall classes, per-socket history) → [`policy`] (which rule,
//! which action) → [`reset`] (SOCK_DESTROY) → [`event`] (NDJSON out). [`agent`] runs the tick.

pub mod agent;
pub mod attach;
pub mod bpf_iter;
pub mod btf;
pub mod classify;
pub mod cli;
pub mod cost;
pub mod event;
pub mod files;
pub mod guards;
pub mod heap;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod prefetch;
pub mod probes;
pub mod reset;
pub mod scan;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod top;
pub mod trouble;

#[cfg(test)]
mod repo_files {
    #[test]
    fn policy_example_file_is_the_documented_example() {
        let file = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policy.example.toml"
        ))
        .expect("policy.example.toml at the workspace root");
        assert_eq!(file, crate::policy::EXAMPLE_POLICY);
        crate::policy::Policy::parse(&file, "policy.example.toml").expect("example parses");
    }
}
