//! Network namespaces: discovery ([`all_netns`]), opening ([`open_netns`]) and entering
//! them to get a `sock_diag` socket there.

use super::*;
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use std::os::fd::AsFd;

// ---------------------------------------------------------------------------------------
// Network namespaces.

/// Inode of the calling thread's network namespace (what `stat -L /proc/self/ns/net`
/// reports for the process's main thread).
pub fn current_netns() -> io::Result<u32> {
    let meta =
        fs::metadata("/proc/thread-self/ns/net").or_else(|_| fs::metadata("/proc/self/ns/net"))?;
    Ok(meta.ino() as u32)
}

pub(super) fn netns_key(netns: u32) -> Result<u64, ResetError> {
    if netns != 0 {
        return Ok(u64::from(netns));
    }
    current_netns().map(u64::from).map_err(|e| {
        ResetError::new(
            "netns",
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot read /proc/thread-self/ns/net: {e}; is /proc mounted?"),
        )
    })
}

/// Open the namespace file at `path` if it is namespace `ino` (checked on the open file).
pub(super) fn open_if_netns(path: &Path, ino: u64) -> Option<io::Result<fs::File>> {
    match fs::metadata(path) {
        Ok(m) if m.ino() == ino => {}
        _ => return None,
    }
    Some(fs::File::open(path).and_then(|f| {
        if f.metadata()?.ino() == ino {
            Ok(f)
        } else {
            // The process exited and the pid was reused between stat and open.
            Err(io::Error::from_raw_os_error(libc::ESRCH))
        }
    }))
}

/// Find network namespace `ino` and open it: `/proc/<pid_hint>/ns/net`, then
/// `/run/netns/*`, then every `/proc/<pid>/ns/net` (first match wins).
pub fn open_netns(ino: u32, pid_hint: Option<u32>) -> Result<(OwnedFd, PathBuf), ResetError> {
    let ino = u64::from(ino);
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(pid) = pid_hint {
        candidates.push(PathBuf::from(format!("/proc/{pid}/ns/net")));
    }
    let mut last_err: Option<(PathBuf, io::Error)> = None;
    let try_path =
        |p: &Path, last_err: &mut Option<(PathBuf, io::Error)>| match open_if_netns(p, ino) {
            Some(Ok(f)) => Some(OwnedFd::from(f)),
            Some(Err(e)) => {
                *last_err = Some((p.to_path_buf(), e));
                None
            }
            None => None,
        };
    for p in &candidates {
        if let Some(fd) = try_path(p, &mut last_err) {
            return Ok((fd, p.clone()));
        }
    }
    // A directory that cannot be listed (other than a missing /run/netns) is reported:
    // EMFILE while listing must not turn into "namespace not found".
    let list = |dir: &str, last_err: &mut Option<(PathBuf, io::Error)>| match fs::read_dir(dir) {
        Ok(d) => Some(d),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                *last_err = Some((PathBuf::from(dir), e));
            }
            None
        }
    };
    if let Some(dir) = list("/run/netns", &mut last_err) {
        for entry in dir.flatten() {
            let p = entry.path();
            if let Some(fd) = try_path(&p, &mut last_err) {
                return Ok((fd, p));
            }
        }
    }
    match pids() {
        Ok(pids) => {
            for pid in pids {
                let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
                if let Some(fd) = try_path(&p, &mut last_err) {
                    return Ok((fd, p));
                }
            }
        }
        Err(e) => last_err = Some((PathBuf::from("/proc"), e)),
    }
    Err(match last_err {
        Some((p, e)) => ResetError::new(
            "netns",
            e.raw_os_error().unwrap_or(libc::EIO),
            format!(
                "searching for network namespace {ino}: cannot open {}: {e}{}",
                p.display(),
                if is_transient_errno(e.raw_os_error().unwrap_or(0)) {
                    " (transient, retried later)"
                } else {
                    ""
                }
            ),
        ),
        None => ResetError::new(
            "netns",
            libc::ENOENT,
            format!(
                "network namespace {ino} not found (pid hint {}, /run/netns, /proc/*/ns/net): \
                 no process is left in it, so its sockets are closed or unreachable; nothing \
                 to do",
                pid_hint.map_or("none".to_string(), |p| p.to_string())
            ),
        ),
    })
}

/// Open a NETLINK_SOCK_DIAG socket inside the network namespace `ns` (an open namespace
/// file at `path`): a short-lived helper thread enters it with setns (which changes only
/// that thread) and opens the socket there; the socket stays bound to that namespace.
pub(super) fn open_diag_socket_entering(
    ns: impl AsFd + Send + 'static,
    path: PathBuf,
) -> Result<OwnedFd, ResetError> {
    let handle = std::thread::Builder::new()
        .name("tcpstall-setns".into())
        .stack_size(256 * 1024)
        .spawn(move || -> Result<OwnedFd, ResetError> {
            // setns only changes this helper thread.
            if let Err(e) = move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
            {
                let errno = e.raw_os_error();
                let why = if errno == libc::EPERM {
                    "needs CAP_SYS_ADMIN (run as root)".to_string()
                } else {
                    io::Error::from_raw_os_error(errno).to_string()
                };
                return Err(ResetError::new(
                    "netns",
                    errno,
                    format!("setns(CLONE_NEWNET) into {} failed: {why}", path.display()),
                ));
            }
            open_diag_socket_here()
        })
        .map_err(|e| {
            ResetError::new(
                "netns",
                e.raw_os_error().unwrap_or(libc::EAGAIN),
                format!("cannot start the helper thread that enters the namespace: {e}"),
            )
        })?;
    handle.join().unwrap_or_else(|_| {
        Err(ResetError::new(
            "netns",
            libc::EIO,
            "the helper thread entering the namespace panicked (tcpstall bug)",
        ))
    })
}

/// Open a `NETLINK_SOCK_DIAG` socket inside network namespace `ino`.
pub(super) fn open_diag_socket_in(ino: u64, pid_hint: Option<u32>) -> Result<OwnedFd, ResetError> {
    if let Ok(own) = current_netns() {
        if u64::from(own) == ino {
            return open_diag_socket_here();
        }
    }
    let (ns, path) = open_netns(ino as u32, pid_hint)?;
    open_diag_socket_entering(ns, path)
}

// ---------------------------------------------------------------------------------------
// Self-test.

/// The socket cookie of `fd` (`getsockopt(SOL_SOCKET, SO_COOKIE)`).
pub fn socket_cookie(fd: impl AsFd) -> io::Result<u64> {
    Ok(rustix::net::sockopt::socket_cookie(fd)?)
}

/// A network namespace to search: its inode and a namespace file that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsRef {
    /// Inode number, as in events' `netns` and `readlink /proc/PID/ns/net` (`net:[INODE]`).
    pub ino: u32,
    /// `/proc/PID/task/TID/ns/net` (our own), `/run/netns/NAME`, `/proc/PID/ns/net`, or a
    /// file the operator named.
    pub path: PathBuf,
}

impl NetnsRef {
    /// The process that `path` belongs to, when it is a `/proc/PID/...` path.
    pub fn pid(&self) -> Option<u32> {
        let rest = self.path.strip_prefix("/proc").ok()?;
        let first = rest.components().next()?.as_os_str().to_str()?;
        first.parse().ok()
    }
}

impl fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.ino, self.path.display())
    }
}

/// The calling thread's own network namespace.
pub fn own_netns() -> Result<NetnsRef, ResetError> {
    let ino = netns_key(0)? as u32;
    let (pid, tid) = (
        std::process::id(),
        rustix::thread::gettid().as_raw_nonzero(),
    );
    Ok(NetnsRef {
        ino,
        path: PathBuf::from(format!("/proc/{pid}/task/{tid}/ns/net")),
    })
}

/// Every network namespace this process can reach, each once: its own first, then
/// `/run/netns/*` (named with `ip netns add`), then `/proc/*/ns/net` (every process).
/// Namespaces with no process and no bind mount have no sockets one could name.
pub fn all_netns() -> Vec<NetnsRef> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut add = |path: PathBuf, out: &mut Vec<NetnsRef>| {
        if let Ok(m) = fs::metadata(&path) {
            let ino = m.ino() as u32;
            if seen.insert(ino) {
                out.push(NetnsRef { ino, path });
            }
        }
    };
    if let Ok(own) = own_netns() {
        add(own.path, &mut out);
    }
    if let Ok(entries) = fs::read_dir("/run/netns") {
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for path in names {
            add(path, &mut out);
        }
    }
    for pid in pids().unwrap_or_default() {
        add(PathBuf::from(format!("/proc/{pid}/ns/net")), &mut out);
    }
    out
}

/// The processes in `/proc` (procfs), in ascending pid order. A process that exits while
/// listed is left out; any other error (EMFILE, an unreadable `/proc`) is returned, so it is
/// never taken for "no such namespace".
fn pids() -> io::Result<Vec<i32>> {
    let to_io = |e: procfs::ProcError| match e {
        procfs::ProcError::Io(e, _) => e,
        procfs::ProcError::PermissionDenied(_) => io::Error::from_raw_os_error(libc::EACCES),
        other => io::Error::other(other.to_string()),
    };
    let mut pids = Vec::new();
    for p in procfs::process::all_processes().map_err(to_io)? {
        match p {
            Ok(p) => pids.push(p.pid),
            Err(procfs::ProcError::NotFound(_)) => {}
            Err(e) => return Err(to_io(e)),
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// The network namespace that the file at `path` refers to (`/run/netns/NAME`,
/// `/proc/PID/ns/net`, a bind mount of one). Fails with `EINVAL` for files that are not
/// network namespaces.
pub fn netns_at(path: &Path) -> Result<NetnsRef, ResetError> {
    let file = fs::File::open(path).map_err(|e| {
        ResetError::new(
            "netns",
            e.raw_os_error().unwrap_or(libc::EIO),
            format!(
                "cannot open {}: {e}; name a network namespace file such as \
                 /run/netns/NAME or /proc/PID/ns/net, or its inode number",
                path.display()
            ),
        )
    })?;
    // SAFETY: valid descriptor; NS_GET_NSTYPE takes no argument.
    let ty = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ty != libc::CLONE_NEWNET {
        return Err(ResetError::new(
            "netns",
            libc::EINVAL,
            format!(
                "{} is not a network namespace file ({}); name /run/netns/NAME, \
                 /proc/PID/ns/net or a namespace inode number",
                path.display(),
                if ty < 0 {
                    "not a namespace at all".to_string()
                } else {
                    "a namespace of another type".to_string()
                }
            ),
        ));
    }
    let ino = file
        .metadata()
        .map_err(|e| {
            ResetError::new(
                "netns",
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("cannot stat {}: {e}", path.display()),
            )
        })?
        .ino() as u32;
    Ok(NetnsRef {
        ino,
        path: path.to_path_buf(),
    })
}

/// Resolve a namespace inode to a file that opens it (see [`open_netns`] for the search).
pub fn netns_by_inode(ino: u32) -> Result<NetnsRef, ResetError> {
    let own = own_netns()?;
    if own.ino == ino {
        return Ok(own);
    }
    let (_fd, path) = open_netns(ino, None)?;
    Ok(NetnsRef { ino, path })
}

/// Open a `NETLINK_SOCK_DIAG` socket inside `ns`, opening `ns.path` directly (no search).
pub(super) fn diag_socket_at(ns: &NetnsRef) -> Result<OwnedFd, ResetError> {
    if current_netns().ok() == Some(ns.ino) {
        return open_diag_socket_here();
    }
    let file = match open_if_netns(&ns.path, u64::from(ns.ino)) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            return Err(ResetError::new(
                "netns",
                e.raw_os_error().unwrap_or(libc::EIO),
                format!(
                    "cannot open network namespace {}: {e} (its last process may have exited)",
                    ns
                ),
            ))
        }
        None => {
            return Err(ResetError::new(
                "netns",
                libc::ENOENT,
                format!(
                    "{} no longer refers to network namespace {} (its process exited or the \
                     name was removed); nothing to search there",
                    ns.path.display(),
                    ns.ino
                ),
            ))
        }
    };
    open_diag_socket_entering(file, ns.path.clone())
}
