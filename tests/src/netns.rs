//! Network namespaces linked by veth pairs, built with `ip` and `nft`; everything is removed
//! with the namespace when a [`NetNs`] is dropped.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace the harness creates: `tcpstall-t-<pid>-<n>`.
pub const PREFIX: &str = "tcpstall-t-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Run a command; on failure return an error that shows the command and its stderr.
pub fn run_cmd(prog: &str, args: &[&str], stdin: Option<&str>) -> io::Result<String> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run `{prog}` ({e}); install iproute2 and nftables (`cargo xtask test` does)"),
        )
    })?;
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Delete namespaces left behind by earlier test processes that no longer exist (a test run
/// that was SIGKILLed cannot clean up after itself).
pub fn remove_stale() {
    let Ok(list) = run_cmd("ip", &["netns", "list"], None) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_cmd("ip", &["netns", "del", name], None);
        }
    }
}

/// The /30 with this index inside 10.213.0.0/16: (network+1, network+2).
fn subnet(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + (index % 16384) * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// A fresh /30: distinct within this process, spread across processes by pid, and skipping
/// subnets an interface of the host already uses (another test run, another tool).
fn next_subnet() -> io::Result<(Ipv4Addr, Ipv4Addr)> {
    let in_use = run_cmd("ip", &["-o", "-4", "addr", "show"], None)?;
    for _ in 0..256 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (a, b) = subnet(std::process::id().wrapping_mul(64).wrapping_add(n));
        let taken = in_use
            .split_whitespace()
            .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
            .any(|ip| ip == a || ip == b);
        if !taken {
            return Ok((a, b));
        }
    }
    Err(io::Error::other(
        "no free /30 in 10.213.0.0/16 after 256 tries",
    ))
}

/// A named network namespace (`ip netns add`), loopback up, optionally with one veth link
/// to the host or to another namespace. Dropping it deletes the namespace, and with it its
/// veth ends (the peer end of a veth pair goes too) and its nftables tables.
pub struct NetNs {
    name: String,
    inode: u64,
    addr: Option<Ipv4Addr>,
    peer_addr: Option<Ipv4Addr>,
}

impl NetNs {
    /// Create an empty namespace with `lo` up.
    pub fn new() -> io::Result<NetNs> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        run_cmd("ip", &["netns", "add", &name], None)?;
        let mut ns = NetNs {
            name,
            inode: 0,
            addr: None,
            peer_addr: None,
        };
        run_cmd("ip", &["-n", &ns.name, "link", "set", "lo", "up"], None)?;
        ns.inode = ns.run(crate::sock::current_netns_inode)?;
        Ok(ns)
    }

    /// A namespace with a veth link to the host (the caller's namespace): a unique /30, the
    /// namespace end is [`NetNs::addr`], the host end [`NetNs::peer_addr`].
    pub fn linked_to_host() -> io::Result<NetNs> {
        let mut ns = NetNs::new()?;
        let (host_ip, ns_ip) = next_subnet()?;
        let (host_if, ns_if) = veth_names();
        run_cmd(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns.name,
            ],
            None,
        )?;
        run_cmd(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
            None,
        )?;
        run_cmd("ip", &["link", "set", &host_if, "up"], None)?;
        ns.configure(&ns_if, ns_ip)?;
        ns.addr = Some(ns_ip);
        ns.peer_addr = Some(host_ip);
        Ok(ns)
    }

    /// Two namespaces joined by a veth pair on a unique /30; each one's [`NetNs::peer_addr`]
    /// is the other's [`NetNs::addr`].
    pub fn linked_pair() -> io::Result<(NetNs, NetNs)> {
        let mut a = NetNs::new()?;
        let mut b = NetNs::new()?;
        let (a_ip, b_ip) = next_subnet()?;
        let (a_if, b_if) = veth_names();
        run_cmd(
            "ip",
            &[
                "-n", &a.name, "link", "add", &a_if, "type", "veth", "peer", "name", &b_if,
                "netns", &b.name,
            ],
            None,
        )?;
        a.configure(&a_if, a_ip)?;
        b.configure(&b_if, b_ip)?;
        a.addr = Some(a_ip);
        a.peer_addr = Some(b_ip);
        b.addr = Some(b_ip);
        b.peer_addr = Some(a_ip);
        Ok((a, b))
    }

    fn configure(&self, ifname: &str, ip: Ipv4Addr) -> io::Result<()> {
        run_cmd(
            "ip",
            &[
                "-n",
                &self.name,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                ifname,
            ],
            None,
        )?;
        run_cmd("ip", &["-n", &self.name, "link", "set", ifname, "up"], None)?;
        Ok(())
    }

    /// The namespace's name (`ip netns` name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Inode of the namespace (what the agent reports as `netns`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// This namespace's veth address. Panics if it has no link.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr.expect("namespace has no veth link")
    }

    /// The address at the other end of this namespace's veth. Panics if it has no link.
    pub fn peer_addr(&self) -> Ipv4Addr {
        self.peer_addr.expect("namespace has no veth link")
    }

    /// Run `f` on a thread that has entered this namespace (`setns(CLONE_NEWNET)`), and return
    /// its result. Sockets created by `f` stay in this namespace wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("netns-enter".into())
                .spawn_scoped(s, || {
                    let file = std::fs::File::open(&path)
                        .unwrap_or_else(|e| panic!("opening {path}: {e}"));
                    // SAFETY: fd is a namespace file; only this thread changes namespace.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        panic!("setns({path}): {}", io::Error::last_os_error());
                    }
                    f()
                })
                .expect("spawn netns thread")
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Make this namespace a dead host: an nftables table whose input and output chains drop
    /// everything. Links stay up, so the other side sees silence, not an error.
    pub fn blackhole(&self) -> io::Result<()> {
        let rules = "table inet tcpstall_blackhole {\n\
                       chain input { type filter hook input priority -300; policy drop; }\n\
                       chain output { type filter hook output priority -300; policy drop; }\n\
                     }\n";
        run_cmd(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(rules),
        )
        .map(drop)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run_cmd("ip", &["netns", "del", &self.name], None) {
            eprintln!(
                "warning: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Interface names for one veth pair, unique per process and pair, within IFNAMSIZ.
fn veth_names() -> (String, String) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = format!("ts{}x{n}", std::process::id());
    (format!("{base}a"), format!("{base}b"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_distinct_slash30s_in_range() {
        let (a, b) = subnet(0);
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        let (a, b) = subnet(16383);
        assert_eq!(
            (a, b),
            (
                Ipv4Addr::new(10, 213, 255, 253),
                Ipv4Addr::new(10, 213, 255, 254)
            )
        );
        assert_eq!(subnet(16384), subnet(0));
        assert_ne!(subnet(5).0, subnet(6).0);
    }

    #[test]
    fn veth_names_fit_ifnamsiz() {
        let (a, b) = veth_names();
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(a, b);
    }
}
