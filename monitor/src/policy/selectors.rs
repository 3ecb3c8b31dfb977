//! What a rule selects ([`Selectors`]) and how a socket is matched against it.

use super::{PortRange, SocketIdentity};
use ipnet::IpNet;
use serde_json::json;
use std::fmt;
use std::net::IpAddr;

/// What a rule selects. `None` means "any"; a rule built from a file has at least one
/// selector, or `match_all`. All given selectors must match; within one, any entry may.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selectors {
    /// Select every socket (no other selector may be set).
    pub match_all: bool,
    pub local_ports: Option<Vec<PortRange>>,
    pub remote_ports: Option<Vec<PortRange>>,
    pub local_cidrs: Option<Vec<IpNet>>,
    pub remote_cidrs: Option<Vec<IpNet>>,
    /// Exact process names (<= 15 bytes). Unknown comm never matches.
    pub comm: Option<Vec<String>>,
    /// cgroup v2 path prefixes, matched on path-component boundaries. Unknown cgroup never
    /// matches.
    pub cgroup_prefix: Option<Vec<String>>,
    /// Network namespace inode numbers.
    pub netns: Option<Vec<u32>>,
    /// Kubernetes namespaces, exact. A socket whose pod is unknown never matches.
    pub k8s_namespace: Option<Vec<String>>,
    /// Kubernetes pod name prefixes. A socket whose pod is unknown never matches.
    pub pod_prefix: Option<Vec<String>>,
}

impl Selectors {
    /// True when neither `match_all` nor any selector is set. Such selectors match every
    /// socket; the file loader refuses them (it wants an explicit `match_all = true`).
    pub fn is_empty(&self) -> bool {
        !self.match_all && self.set_names().is_empty()
    }

    /// Whether a socket with this identity is selected.
    pub fn matches(&self, id: &SocketIdentity<'_>) -> bool {
        if self.match_all {
            return true;
        }
        fn ports_ok(ranges: &Option<Vec<PortRange>>, port: u16) -> bool {
            ranges
                .as_ref()
                .is_none_or(|r| r.iter().any(|r| r.contains(port)))
        }
        fn nets_ok(nets: &Option<Vec<IpNet>>, ip: IpAddr) -> bool {
            nets.as_ref().is_none_or(|n| ip_in_nets(n, ip))
        }
        ports_ok(&self.local_ports, id.local.port())
            && ports_ok(&self.remote_ports, id.remote.port())
            && nets_ok(&self.local_cidrs, id.local.ip())
            && nets_ok(&self.remote_cidrs, id.remote.ip())
            && self.comm.as_ref().is_none_or(|names| {
                id.comm
                    .is_some_and(|c| names.iter().any(|n| n.as_str() == c))
            })
            && self.cgroup_prefix.as_ref().is_none_or(|prefixes| {
                id.cgroup_path
                    .is_some_and(|p| prefixes.iter().any(|pre| cgroup_under(p, pre)))
            })
            && self.netns.as_ref().is_none_or(|ns| ns.contains(&id.netns))
            && self.k8s_namespace.as_ref().is_none_or(|names| {
                id.pod_namespace
                    .is_some_and(|n| names.iter().any(|x| x.as_str() == n))
            })
            && self.pod_prefix.as_ref().is_none_or(|prefixes| {
                id.pod_name
                    .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
            })
    }

    /// Names of the selector keys that are set.
    pub(super) fn set_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.local_ports.is_some() {
            names.push("local_ports");
        }
        if self.remote_ports.is_some() {
            names.push("remote_ports");
        }
        if self.local_cidrs.is_some() {
            names.push("local_cidrs");
        }
        if self.remote_cidrs.is_some() {
            names.push("remote_cidrs");
        }
        if self.comm.is_some() {
            names.push("comm");
        }
        if self.cgroup_prefix.is_some() {
            names.push("cgroup_prefix");
        }
        if self.netns.is_some() {
            names.push("netns");
        }
        if self.k8s_namespace.is_some() {
            names.push("k8s_namespace");
        }
        if self.pod_prefix.is_some() {
            names.push("pod_prefix");
        }
        names
    }

    /// One line: `local_ports 8000, 9000-9100 and comm granian`.
    pub(super) fn describe(&self) -> String {
        if self.match_all {
            return "every socket (match_all)".to_string();
        }
        fn list<T: fmt::Display>(v: &[T]) -> String {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
        let mut parts = Vec::new();
        if let Some(v) = &self.local_ports {
            parts.push(format!("local_ports {}", list(v)));
        }
        if let Some(v) = &self.remote_ports {
            parts.push(format!("remote_ports {}", list(v)));
        }
        if let Some(v) = &self.local_cidrs {
            parts.push(format!("local_cidrs {}", list(v)));
        }
        if let Some(v) = &self.remote_cidrs {
            parts.push(format!("remote_cidrs {}", list(v)));
        }
        if let Some(v) = &self.comm {
            parts.push(format!("comm {}", list(v)));
        }
        if let Some(v) = &self.cgroup_prefix {
            parts.push(format!("cgroup_prefix {}", list(v)));
        }
        if let Some(v) = &self.netns {
            parts.push(format!("netns {}", list(v)));
        }
        if let Some(v) = &self.k8s_namespace {
            parts.push(format!("k8s_namespace {}", list(v)));
        }
        if let Some(v) = &self.pod_prefix {
            parts.push(format!("pod_prefix {}", list(v)));
        }
        if parts.is_empty() {
            return "every socket (no selectors)".to_string();
        }
        parts.join(" and ")
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if self.match_all {
            m.insert("match_all".into(), json!(true));
        }
        let strings = |v: &[IpNet]| json!(v.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        let ports = |v: &[PortRange]| json!(v.iter().map(|r| r.to_json()).collect::<Vec<_>>());
        if let Some(v) = &self.local_ports {
            m.insert("local_ports".into(), ports(v));
        }
        if let Some(v) = &self.remote_ports {
            m.insert("remote_ports".into(), ports(v));
        }
        if let Some(v) = &self.local_cidrs {
            m.insert("local_cidrs".into(), strings(v));
        }
        if let Some(v) = &self.remote_cidrs {
            m.insert("remote_cidrs".into(), strings(v));
        }
        if let Some(v) = &self.comm {
            m.insert("comm".into(), json!(v));
        }
        if let Some(v) = &self.cgroup_prefix {
            m.insert("cgroup_prefix".into(), json!(v));
        }
        if let Some(v) = &self.netns {
            m.insert("netns".into(), json!(v));
        }
        if let Some(v) = &self.k8s_namespace {
            m.insert("k8s_namespace".into(), json!(v));
        }
        if let Some(v) = &self.pod_prefix {
            m.insert("pod_prefix".into(), json!(v));
        }
        serde_json::Value::Object(m)
    }
}

pub(super) fn ip_in_nets(nets: &[IpNet], ip: IpAddr) -> bool {
    let alt = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
    };
    nets.iter()
        .any(|n| n.contains(&ip) || alt.is_some_and(|a| n.contains(&a)))
}

/// Whether cgroup `path` is `prefix` or below it (component boundary).
pub(super) fn cgroup_under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
