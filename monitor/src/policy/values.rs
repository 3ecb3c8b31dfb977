//! Selector entries and rule names: ports and port ranges, networks, process names,
//! Kubernetes names, cgroup paths, network namespaces and stall classes. Each parser
//! returns the value or `(what is wrong, what to write instead)`.

use super::check::{closest, MAX_COMM_LEN, MAX_NAME_LEN};
use super::spanned::{Kind, Node, Span};
use super::PortRange;
use crate::classify::StallClass;
use ipnet::IpNet;
use std::net::IpAddr;
use std::str::FromStr;

pub(super) fn parse_port(node: &Node) -> Result<PortRange, (String, Option<String>)> {
    let example = "8000 or \"9000-9100\"".to_string();
    let one = |text: &str, n: i64| -> Result<u16, (String, Option<String>)> {
        match n {
            0 => Err((
                format!("port 0 in `{text}` is not a port a TCP connection can use"),
                Some("a port from 1 to 65535".to_string()),
            )),
            1..=65535 => Ok(n as u16),
            _ => Err((
                format!("`{text}` is not a TCP port: ports are 1 to 65535"),
                Some("a port from 1 to 65535".to_string()),
            )),
        }
    };
    match &node.kind {
        Kind::Int(n) => one(&n.to_string(), *n).map(PortRange::single),
        Kind::Str(s) => {
            let num = |t: &str| -> Option<i64> {
                let t = t.trim();
                (!t.is_empty() && t.len() <= 6 && t.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| t.parse().ok())
                    .flatten()
            };
            let bad = || {
                (
                    format!("`{s}` is not a port or port range"),
                    Some(example.clone()),
                )
            };
            match s.split_once('-') {
                Some((a, b)) => {
                    let (Some(a), Some(b)) = (num(a), num(b)) else {
                        return Err(bad());
                    };
                    let (first, last) = (one(s, a)?, one(s, b)?);
                    if first > last {
                        return Err((
                            format!(
                                "port range `{s}` is reversed: the first port must be the lower"
                            ),
                            Some(format!("\"{last}-{first}\"")),
                        ));
                    }
                    Ok(PortRange { first, last })
                }
                None => match num(s) {
                    Some(n) => one(s, n).map(PortRange::single),
                    None => Err(bad()),
                },
            }
        }
        other => Err((
            format!(
                "ports are integers or \"first-last\" strings, not {}",
                other.type_name()
            ),
            Some(example),
        )),
    }
}

pub(super) fn parse_cidr(node: &Node) -> Result<IpNet, (String, Option<String>)> {
    let example = || Some("\"10.0.0.0/8\" or \"fd00::/8\"".to_string());
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("networks are strings, not {}", node.kind.type_name()),
            example(),
        ));
    };
    let t = s.trim();
    if let Ok(net) = IpNet::from_str(t) {
        if net.trunc() != net {
            let host_len = match net {
                IpNet::V4(_) => 32,
                IpNet::V6(_) => 128,
            };
            return Err((
                format!(
                    "`{s}` has host bits set: the /{} network containing {} is {}",
                    net.prefix_len(),
                    net.addr(),
                    net.trunc()
                ),
                Some(format!(
                    "\"{}\" (the network), or \"{}/{host_len}\" (that one address)",
                    net.trunc(),
                    net.addr()
                )),
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = IpAddr::from_str(t) {
        return Ok(IpNet::from(ip));
    }
    if let Some((addr, len)) = t.split_once('/') {
        if let (Ok(ip), Ok(len)) = (IpAddr::from_str(addr), len.parse::<u32>()) {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            return Err((
                format!("`{s}`: prefix length /{len} is longer than the {max} bits of the address"),
                Some(format!("\"{addr}/{max}\" or a shorter prefix")),
            ));
        }
    }
    Err((format!("`{s}` is not an IP network"), example()))
}

pub(super) fn parse_comm(node: &Node) -> Result<String, (String, Option<String>)> {
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("process names are strings, not {}", node.kind.type_name()),
            Some("\"granian\"".to_string()),
        ));
    };
    if s.is_empty() || s.chars().any(char::is_control) {
        return Err((
            format!("`{s:?}` is not a process name"),
            Some("the name `ps -o comm` shows, e.g. \"granian\"".to_string()),
        ));
    }
    if s.len() > MAX_COMM_LEN {
        let mut cut = MAX_COMM_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err((
            format!(
                "process name `{s}` is {} bytes: the kernel keeps only the first {MAX_COMM_LEN} \
                 bytes of a name (comm), so it can never match",
                s.len()
            ),
            Some(format!("\"{}\"", &s[..cut])),
        ));
    }
    Ok(s.clone())
}

/// A Kubernetes namespace (a DNS label: lowercase letters, digits, '-', at most 63) or a pod
/// name prefix (a DNS subdomain's characters: also '.', at most 253).
pub(super) fn parse_k8s_name(
    node: &Node,
    what: &str,
    max: usize,
) -> Result<String, (String, Option<String>)> {
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("a {what} is a string, not {}", node.kind.type_name()),
            Some("\"payments\"".to_string()),
        ));
    };
    let dots = max > 63;
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    if s.is_empty() || s.len() > max || !s.chars().all(ok_char) {
        let fixed: String = s
            .to_ascii_lowercase()
            .chars()
            .filter(|c| ok_char(*c))
            .take(max)
            .collect();
        return Err((
            format!(
                "`{s}` is not a Kubernetes {what}: lowercase letters, digits and '-'{}, at most \
                 {max} characters",
                if dots { " or '.'" } else { "" }
            ),
            (!fixed.is_empty()).then(|| format!("\"{fixed}\"")),
        ));
    }
    Ok(s.clone())
}

pub(super) fn parse_cgroup(node: &Node) -> Result<String, (String, Option<String>)> {
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("cgroup paths are strings, not {}", node.kind.type_name()),
            Some("\"/system.slice/app.service\"".to_string()),
        ));
    };
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
    let normal = format!("/{}", parts.join("/"));
    let strip0 = s.strip_prefix("0::").unwrap_or(s);
    if s == "/" {
        return Ok(s.clone());
    }
    let problem = if s.starts_with("0::") {
        Some("is a line of /proc/PID/cgroup; the path is what follows `0::`")
    } else if !s.starts_with('/') {
        Some("must start with `/` (paths are relative to the cgroup v2 root)")
    } else if parts.iter().any(|p| *p == "." || *p == "..") {
        Some("must not contain `.` or `..` components")
    } else if *s != normal {
        Some("must not contain empty components or end with `/`")
    } else {
        None
    };
    match problem {
        None => Ok(s.clone()),
        Some(why) => {
            let fixed: Vec<&str> = strip0
                .split('/')
                .filter(|p| !p.is_empty() && *p != "." && *p != "..")
                .collect();
            Err((
                format!("cgroup path `{s}` {why}"),
                Some(format!("\"/{}\"", fixed.join("/"))),
            ))
        }
    }
}

pub(super) fn parse_netns(node: &Node) -> Result<u32, (String, Option<String>)> {
    let hint = || Some("4026531840 (the number `readlink /proc/PID/ns/net` shows)".to_string());
    let n: i64 = match &node.kind {
        Kind::Int(n) => *n,
        Kind::Str(s) => {
            let inner = s
                .trim()
                .strip_prefix("net:[")
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or(s.trim());
            match inner.parse() {
                Ok(n) => n,
                Err(_) => {
                    return Err((
                        format!("`{s}` is not a network namespace inode number"),
                        hint(),
                    ))
                }
            }
        }
        other => {
            return Err((
                format!("netns entries are inode numbers, not {}", other.type_name()),
                hint(),
            ))
        }
    };
    match u32::try_from(n) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err((
            format!("{n} is not a network namespace inode number"),
            hint(),
        )),
    }
}

pub(super) fn parse_class(node: &Node) -> Result<(StallClass, Span), (String, Option<String>)> {
    let names: Vec<&str> = StallClass::ALL.iter().map(|c| c.as_str()).collect();
    let Kind::Str(s) = &node.kind else {
        return Err((
            format!("classes are strings, not {}", node.kind.type_name()),
            Some("\"zero_window\"".to_string()),
        ));
    };
    match StallClass::ALL.iter().find(|c| c.as_str() == s) {
        Some(c) => Ok((*c, node.span.clone())),
        None => Err((
            format!(
                "unknown stall class `{s}`: the classes are {}",
                names.join(", ")
            ),
            Some(match closest(s, &names) {
                Some(best) => format!("\"{best}\""),
                None => format!("one of {}", names.join(", ")),
            }),
        )),
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub(super) fn sanitized_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_alphanumeric() || "._-".contains(c) {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(MAX_NAME_LEN).collect();
    if out.is_empty() {
        "websocket-server".to_string()
    } else {
        out
    }
}
