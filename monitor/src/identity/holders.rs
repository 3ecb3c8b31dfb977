//! Which process holds a socket, for tracked sockets no write was seen on (the agent
//! attaches no per-write hook by default, so most writers are never seen writing): the
//! kernel side records each tracked socket's inode number, and one walk of
//! `/proc/*/fd` finds every wanted inode at once (`socket:[N]`).
//!
//! A walk costs a `readlink` per open file on the node, so it is made only for sockets that
//! stayed tracked from one tick to the next (a socket with data queued for a moment never
//! causes one), at most once per tick, and its answers are kept per socket cookie (cookies
//! are never reused) while the socket is tracked and for [`LINGER`] after it left the map,
//! so a stream that drains and fills again is not looked for again. A socket no process
//! holds (an orphan, or one whose holder exited meanwhile) is looked for again after
//! [`RETRY_MISS`]. At most [`MAX_KEPT`] answers are kept.
//!
//! The first process found holding the socket (lowest pid) is reported; a socket shared by
//! several processes (inherited across fork) names one of them. Its name (`comm`) is that
//! of the thread blocked writing to the socket when one is (`/proc/PID/task/TID/syscall`:
//! what a hook in the writing thread would read), else the process's.

use crate::snapshot::Comm;
use monitor_common::HolderRecord;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A socket that no process held at a walk is looked for again after this long.
pub const RETRY_MISS: Duration = Duration::from_secs(30);
/// An answer is kept this long after its socket left the map.
pub const LINGER: Duration = Duration::from_secs(60);
/// Answers kept at most; past it, those of sockets not in the map are dropped.
pub const MAX_KEPT: usize = 1 << 18;

/// The process holding a socket, in the terms events and policies use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Thread-group id (the pid users know).
    pub pid: u32,
    pub comm: Comm,
    /// The process's cgroup v2 id (inode number of its cgroup directory), when readable.
    pub cgroup_id: Option<u64>,
}

/// What a walk found for one socket.
#[derive(Clone, Copy, Debug)]
enum Known {
    Held(Holder),
    /// No process held it at this time.
    Missed(Instant),
}

/// The answers so far, by socket cookie (with when the socket was last in the map), and how
/// the walks went.
pub struct Holders {
    known: foldhash::HashMap<u64, (Known, Instant)>,
    cgroup_root: PathBuf,
    proc_root: PathBuf,
    /// Walks made (named in the agent's log line for a slow walk).
    pub walks: u64,
    /// Of them, answered by the kernel's holder iterator instead of a walk of `/proc/*/fd`.
    pub kernel_passes: u64,
    /// Whether the last one was (named in the agent's log line for a slow one).
    pub last_by_kernel: bool,
    /// Duration of the last walk, µs.
    pub last_walk_us: u64,
}

impl Default for Holders {
    fn default() -> Self {
        Holders::new("/proc", super::cgroup2_root())
    }
}

impl Holders {
    pub fn new(proc_root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Holders {
        Holders {
            known: Default::default(),
            cgroup_root: cgroup_root.into(),
            proc_root: proc_root.into(),
            walks: 0,
            kernel_passes: 0,
            last_by_kernel: false,
            last_walk_us: 0,
        }
    }

    /// The holder found for socket `cookie`, if a walk found one.
    pub fn get(&self, cookie: u64) -> Option<Holder> {
        match self.known.get(&cookie) {
            Some((Known::Held(h), _)) => Some(*h),
            _ => None,
        }
    }

    /// Whether socket `cookie` needs a walk now: never looked for, or missed long enough ago.
    pub fn wanted(&self, cookie: u64, now: Instant) -> bool {
        match self.known.get(&cookie) {
            None => true,
            Some((Known::Held(_), _)) => false,
            Some((Known::Missed(at), _)) => now.duration_since(*at) >= RETRY_MISS,
        }
    }

    /// One walk of `/proc` for every `(cookie, inode)` in `wanted` (no walk when empty).
    #[cfg(test)]
    pub fn find(&mut self, wanted: &[(u64, u32)], now: Instant) {
        self.find_with(wanted, now, |_| None);
    }

    /// [`Holders::find`], first asking `kernel` (the holder iterator: every open file of
    /// every process, in one in-kernel pass) which processes hold which of the wanted
    /// inodes, as `(inode, tgid, fd)`. Its answer is taken when every holder it names is
    /// confirmed under `/proc` (`/proc/TGID/fd/FD` is that socket: same pid namespace, not
    /// gone since); then only the processes found are read. Otherwise (no iterator on this
    /// kernel, a failed pass, an answer `/proc` does not confirm) `/proc/*/fd` is walked.
    pub fn find_with(
        &mut self,
        wanted: &[(u64, u32)],
        now: Instant,
        kernel: impl FnOnce(&[u64]) -> Option<Vec<HolderRecord>>,
    ) {
        if wanted.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let inodes: HashSet<u64> = wanted.iter().map(|&(_, ino)| ino as u64).collect();
        let mut list: Vec<u64> = inodes.iter().copied().collect();
        list.sort_unstable();
        let from_kernel = kernel(&list)
            .and_then(|records| from_records(&self.proc_root, &self.cgroup_root, &records));
        self.last_by_kernel = from_kernel.is_some();
        self.kernel_passes += u64::from(self.last_by_kernel);
        let found =
            from_kernel.unwrap_or_else(|| walk(&self.proc_root, &self.cgroup_root, &inodes));
        for &(cookie, ino) in wanted {
            let k = match found.get(&(ino as u64)) {
                Some(h) => Known::Held(*h),
                None => Known::Missed(now),
            };
            self.known.insert(cookie, (k, now));
        }
        self.walks += 1;
        self.last_walk_us = t0.elapsed().as_micros() as u64;
        // A walk allocates per process and per file: not kept as resident memory.
        crate::heap::trim();
    }

    /// End of a tick: `tracked` says which sockets are in the map now. The answers of the
    /// others are forgotten [`LINGER`] after they left, or at once past [`MAX_KEPT`].
    pub fn prune(&mut self, tracked: impl Fn(u64) -> bool, now: Instant) {
        let full = self.known.len() > MAX_KEPT;
        self.known.retain(|c, (_, present)| {
            if tracked(*c) {
                *present = now;
                true
            } else {
                !full && now.duration_since(*present) < LINGER
            }
        });
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// Every process under `proc_root` holding one of `inodes`, lowest pid first; stops once
/// all are found. Processes that exit or cannot be read during the walk are skipped.
fn walk(proc_root: &Path, cgroup_root: &Path, inodes: &HashSet<u64>) -> HashMap<u64, Holder> {
    let mut found = HashMap::new();
    let Ok(procs) = procfs::process::all_processes_with_root(proc_root) else {
        return found;
    };
    let mut pids: Vec<procfs::process::Process> = procs.flatten().collect();
    pids.sort_by_key(|p| p.pid);
    for p in pids {
        let Ok(fds) = p.fd() else { continue };
        // (inode, fd) of the wanted sockets this process holds.
        let mut held: Vec<(u64, i32)> = Vec::new();
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(ino) = fd.target {
                if inodes.contains(&ino) && !found.contains_key(&ino) {
                    held.push((ino, fd.fd));
                }
            }
        }
        if held.is_empty() {
            continue;
        }
        name_holders(proc_root, cgroup_root, &p, &held, &mut found);
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

/// The holders of the sockets `held` (inode, fd) by process `p`, added to `found` (a socket
/// found before keeps its holder unless this process has a thread blocked writing it).
fn name_holders(
    proc_root: &Path,
    cgroup_root: &Path,
    p: &procfs::process::Process,
    held: &[(u64, i32)],
    found: &mut HashMap<u64, Holder>,
) {
    let dir = proc_root.join(p.pid.to_string());
    let Some(comm) = comm_at(&dir) else { return };
    let cgroup_id = cgroup_id_at(&dir, cgroup_root);
    let writers = blocked_writers(proc_root, p);
    // A socket held through several fds (dup, fork) is named by the thread blocked
    // writing on any of them, whichever fd the listing showed first.
    for &(ino, fd) in held {
        let writer = writers.get(&fd).copied();
        let holder = Holder {
            pid: p.pid as u32,
            comm: writer.unwrap_or(comm),
            cgroup_id,
        };
        if writer.is_some() {
            found.insert(ino, holder);
        } else {
            found.entry(ino).or_insert(holder);
        }
    }
}

/// The holders named by the kernel's records, lowest pid first as a walk would find them,
/// each confirmed under `proc_root` (`TGID/fd/FD` is that socket, read as the walk reads
/// it). `None` when one is not: the iterator's pids are not this `/proc`'s (another pid
/// namespace), or the process closed the socket or exited since; the caller walks instead.
fn from_records(
    proc_root: &Path,
    cgroup_root: &Path,
    records: &[HolderRecord],
) -> Option<HashMap<u64, Holder>> {
    let mut by_pid: std::collections::BTreeMap<u32, Vec<(u64, i32)>> = Default::default();
    for r in records {
        by_pid.entry(r.tgid).or_default().push((r.ino, r.fd as i32));
    }
    let mut found = HashMap::new();
    for (pid, held) in by_pid {
        let p = procfs::process::Process::new_with_root(proc_root.join(pid.to_string())).ok()?;
        for &(ino, fd) in &held {
            let target = p.fd_from_fd(fd).ok()?.target;
            if !matches!(target, procfs::process::FDTarget::Socket(i) if i == ino) {
                return None;
            }
        }
        // Only sockets no lower pid holds: the walk's "first process (lowest pid)".
        let held: Vec<(u64, i32)> = held
            .into_iter()
            .filter(|(ino, _)| !found.contains_key(ino))
            .collect();
        name_holders(proc_root, cgroup_root, &p, &held, &mut found);
    }
    Some(found)
}

/// Write-family syscalls (x86_64 and aarch64 numbers) whose first argument is the fd.
const WRITE_SYSCALLS: &[u64] = if cfg!(target_arch = "aarch64") {
    // write, writev, sendto, sendmsg, sendfile, sendmmsg
    &[64, 66, 206, 211, 71, 269]
} else {
    // write, writev, sendto, sendmsg, sendfile, sendmmsg
    &[1, 20, 44, 46, 40, 307]
};

/// The threads of `p` blocked in a write-family syscall, by the fd written (from
/// `/proc/PID/task/TID/syscall`: number, then arguments in hex), with their names: the
/// kernel's per-thread `comm`, what a hook in the writing thread would have read.
fn blocked_writers(proc_root: &Path, p: &procfs::process::Process) -> HashMap<i32, Comm> {
    let mut out = HashMap::new();
    let Ok(tasks) = p.tasks() else { return out };
    for t in tasks.flatten() {
        let dir = proc_root.join(format!("{}/task/{}", t.pid, t.tid));
        let Some(line) = read_at(&dir, "syscall") else {
            continue;
        };
        let mut f = line.split_whitespace();
        let (Some(nr), Some(arg0)) = (f.next(), f.next()) else {
            continue; // "running" or "-1 sp pc": not in a syscall
        };
        let (Ok(nr), Some(Ok(fd))) = (
            nr.parse::<u64>(),
            arg0.strip_prefix("0x").map(|h| u64::from_str_radix(h, 16)),
        ) else {
            continue;
        };
        if !WRITE_SYSCALLS.contains(&nr) {
            continue;
        }
        if let Some(comm) = comm_at(&dir) {
            out.insert(fd as i32, comm);
        }
    }
    out
}

fn read_at(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

/// The `comm` of a process (`/proc/PID`) or thread (`/proc/PID/task/TID`) directory.
fn comm_at(dir: &Path) -> Option<Comm> {
    let name = read_at(dir, "comm")?;
    Some(Comm::from(name.trim_end_matches('\n')))
}

/// The cgroup v2 id of the process at `dir` (`/proc/PID`): the inode of its cgroup directory
/// (`0::/path` in its `cgroup` file) under `cgroup_root`.
fn cgroup_id_at(dir: &Path, cgroup_root: &Path) -> Option<u64> {
    let text = read_at(dir, "cgroup")?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn ino_of(fd: &impl AsRawFd) -> u32 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let s = link.to_string_lossy();
        s.trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .unwrap()
    }

    #[test]
    fn a_walk_finds_this_process_holding_its_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = ino_of(&l);
        let mut h = Holders::default();
        let now = Instant::now();
        assert!(h.wanted(7, now));
        h.find(&[(7, ino), (8, u32::MAX)], now);
        let got = h.get(7).expect("this process holds the socket");
        assert_eq!(got.pid, std::process::id());
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(got.comm, Comm::from(comm.trim_end()));
        assert_eq!(h.walks, 1);
        assert!(!h.wanted(7, now), "an answer is kept");
        // No process holds inode u32::MAX: looked for again only after RETRY_MISS.
        assert_eq!(h.get(8), None);
        assert!(!h.wanted(8, now));
        assert!(h.wanted(8, now + RETRY_MISS));
        // 7 left the map: its answer stays for LINGER (a stream that drains and fills
        // again is not looked for again), then goes.
        h.prune(|c| c == 8, now);
        assert!(!h.wanted(7, now + LINGER / 2));
        h.prune(|c| c == 8, now + LINGER);
        assert!(
            h.wanted(7, now + LINGER),
            "forgotten LINGER after it left the map"
        );
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_thread_blocked_writing_the_socket_gives_its_name() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let ino = ino_of(&server);
        // Never read by the client: the writer fills both buffers and blocks in write(2).
        // It writes on the original fd; a duplicate, listed after it in /proc/self/fd, is
        // held idle here: the socket is still named by its blocked writer.
        let idle = server.try_clone().unwrap();
        let w = server;
        std::thread::Builder::new()
            .name("tsblocked".into())
            .spawn(move || {
                use std::io::Write;
                let mut w = w;
                let buf = vec![0u8; 65536];
                while w.write(&buf).is_ok() {}
            })
            .unwrap();
        let mut got = None;
        for _ in 0..200 {
            let mut h = Holders::default();
            h.find(&[(1, ino)], Instant::now());
            got = h.get(1);
            if got.is_some_and(|g| g.comm == Comm::from("tsblocked")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = got.expect("this process holds the socket");
        assert_eq!(got.pid, std::process::id());
        assert_eq!(
            got.comm,
            Comm::from("tsblocked"),
            "the blocked writer's name"
        );
        // The listener, which no thread writes to, names the process.
        let mut h = Holders::default();
        h.find(&[(2, ino_of(&l))], Instant::now());
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(h.get(2).unwrap().comm, Comm::from(comm.trim_end()));
        drop(idle); // the writer stays blocked until the test process exits
    }

    #[test]
    fn the_cgroup_id_is_the_cgroup_directory_inode() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut h = Holders::default();
        h.find(&[(1, ino_of(&l))], Instant::now());
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
            return; // no cgroup v2 here: nothing to compare
        };
        let dir = super::super::cgroup2_root().join(path.trim_start_matches('/'));
        let want = std::fs::metadata(dir).ok().map(|m| m.ino());
        assert_eq!(h.get(1).unwrap().cgroup_id, want);
    }

    #[test]
    fn a_kernel_pass_confirmed_under_proc_names_the_holder_without_a_walk() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = ino_of(&l) as u64;
        let me = std::process::id();
        let fd = l.as_raw_fd() as u32;
        let mut h = Holders::default();
        let mut asked = Vec::new();
        h.find_with(
            &[(7, ino as u32), (8, u32::MAX)],
            Instant::now(),
            |inodes| {
                asked = inodes.to_vec();
                Some(vec![HolderRecord { ino, tgid: me, fd }])
            },
        );
        assert_eq!(asked, vec![ino, u32::MAX as u64]);
        assert_eq!((h.walks, h.kernel_passes), (1, 1));
        assert_eq!(h.get(7).expect("named").pid, me);
        // Not in the kernel's answer: no process holds it.
        assert_eq!(h.get(8), None);
        // An answer /proc does not confirm (wrong fd): the walk answers instead.
        let mut h = Holders::default();
        h.find_with(&[(7, ino as u32)], Instant::now(), |_| {
            Some(vec![HolderRecord {
                ino,
                tgid: me,
                fd: u32::MAX - 1,
            }])
        });
        assert_eq!((h.walks, h.kernel_passes), (1, 0));
        assert_eq!(h.get(7).expect("found by the walk").pid, me);
        // No iterator: the walk.
        let mut h = Holders::default();
        h.find_with(&[(7, ino as u32)], Instant::now(), |_| None);
        assert_eq!((h.walks, h.kernel_passes), (1, 0));
        assert_eq!(h.get(7).unwrap().pid, me);
    }

    #[test]
    fn nothing_wanted_makes_no_walk() {
        let mut h = Holders::new("/nonexistent", "/nonexistent");
        h.find(&[], Instant::now());
        assert_eq!(h.walks, 0);
        // A root that cannot be read finds nothing and says so per socket.
        h.find(&[(3, 1)], Instant::now());
        assert_eq!((h.walks, h.get(3)), (1, None));
    }
}
