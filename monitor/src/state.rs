//! What survives an agent restart or upgrade (a DaemonSet rollout, `systemctl restart`).
//!
//! * **Kernel state**: the `SOCKS` map (per-socket state, stall clocks, the kernel's ring of
//!   recovered gaps) is pinned under bpffs, in the pin directory (default
//!   [`DEFAULT_PIN_DIR`]), as `socks_<layout>_<key mode>_<max sockets>`. The next agent
//!   adopts it when the name matches its own (same [`SockState`] layout and meaning, same key
//!   mode, same `--max-sockets`) and the kernel confirms the map's type and sizes; otherwise
//!   the old pins are removed and a fresh map is pinned. The other maps (close-note ring,
//!   counters, per-CPU scratch) are per process. `last_progress_ns` and every other kernel
//!   timestamp are CLOCK_MONOTONIC, so stall clocks simply carry on.
//! * **Userspace state**: the tracker's per-socket history (cadence episodes, the tracking
//!   session with its stalls in force and drain-rate samples), the reset budgets' windows and
//!   what was already decided per stall (reset, skipped by which guard, retries), saved as
//!   JSON to [`STATE_FILE`] in the state directory (default [`DEFAULT_STATE_DIR`]) every
//!   [`SAVE_EVERY`] (less often when saving takes long: [`save_interval`]) and at a clean
//!   exit: written to a temporary file (mode 0600) and renamed
//!   over the old one, bounded by [`MAX_STATE_BYTES`]. It is read back only on the same boot
//!   (socket cookies and CLOCK_MONOTONIC restart with the kernel) and when its
//!   [`format_version`] matches.
//!
//! Both directories are locked (`flock`) for the agent's lifetime: a second agent with the
//! same directories refuses to start instead of sharing the map.

use crate::classify::SavedSocket;
use crate::event::SkipGuard;
use crate::guards::BudgetsState;
use anyhow::{Context, Result};
use monitor_common::{Gap, SockState, GAP_SLOTS, SOCK_STATE_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default directory of the state file.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tcpstall";
/// Default directory of the pinned kernel map (on bpffs).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/tcpstall";
/// The state file, in the state directory.
pub const STATE_FILE: &str = "state.json";
/// The lock file, in the state directory.
pub const LOCK_FILE: &str = "lock";
/// How often the state file is written while the agent runs, at most.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);
/// A save waits at least this many times as long as the last one took: saving costs at
/// most 0.1 % of a core (a streaming node's 30,000 tracked sockets fill the file's 16 MiB
/// bound: ~100 ms, so every 60 s), within [`SAVE_EVERY`]..[`SAVE_AT_LEAST_EVERY`]. (At 200,
/// 0.5 %, saving was a fifth of the agent's whole budget of 2 % at 10,000 streams.)
pub const SAVE_COST_FACTOR: u32 = 1000;
/// ... and the file is never older than this while the agent runs.
pub const SAVE_AT_LEAST_EVERY: Duration = Duration::from_secs(60);

/// The time from one periodic save to the next, after one that took `last_cost`.
pub fn save_interval(last_cost: Duration) -> Duration {
    last_cost
        .saturating_mul(SAVE_COST_FACTOR)
        .clamp(SAVE_EVERY, SAVE_AT_LEAST_EVERY)
}
/// Bound of the state file: sockets beyond it are left out, least valuable first (see
/// [`crate::classify::Tracker::export`]).
pub const MAX_STATE_BYTES: usize = 16 << 20;
/// Version of the state file's format.
pub const FORMAT_VERSION: u32 = 1;
/// Testing knob: pretend this agent's state layout and file format are this version (an
/// agent "upgraded" to an incompatible layout).
pub const VERSION_ENV: &str = "TCPSTALL_STATE_VERSION";
/// Prefix of our pinned maps' names in the pin directory.
const PIN_PREFIX: &str = "socks_";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
/// Where bpffs is conventionally mounted (the agent mounts it there when missing).
const BPF_FS_ROOT: &str = "/sys/fs/bpf";

/// Where the agent keeps its state (both `None`-able parts are decided at start-up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatePaths {
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
}

impl Default for StatePaths {
    fn default() -> StatePaths {
        StatePaths {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
        }
    }
}

fn version_override() -> Option<u32> {
    std::env::var(VERSION_ENV).ok()?.trim().parse().ok()
}

/// The version of the kernel state's meaning in force ([`SOCK_STATE_VERSION`], or the
/// testing knob [`VERSION_ENV`]).
pub fn layout_version() -> u32 {
    version_override().unwrap_or(SOCK_STATE_VERSION)
}

/// The state file format in force ([`FORMAT_VERSION`], or the testing knob).
pub fn format_version() -> u32 {
    version_override().unwrap_or(FORMAT_VERSION)
}

/// FNV-1a over the layout of [`SockState`] and [`Gap`]: size and every field's offset.
fn layout_hash() -> u32 {
    use std::mem::{offset_of, size_of};
    let parts: &[usize] = &[
        size_of::<SockState>(),
        size_of::<Gap>(),
        GAP_SLOTS,
        offset_of!(SockState, cookie),
        offset_of!(SockState, key),
        offset_of!(SockState, netns),
        offset_of!(SockState, family),
        offset_of!(SockState, lport),
        offset_of!(SockState, rport),
        offset_of!(SockState, flags),
        offset_of!(SockState, laddr),
        offset_of!(SockState, raddr),
        offset_of!(SockState, pid),
        offset_of!(SockState, bound_dev_if),
        offset_of!(SockState, cgroup_id),
        offset_of!(SockState, comm),
        offset_of!(SockState, write_seq),
        offset_of!(SockState, snd_una),
        offset_of!(SockState, snd_nxt),
        offset_of!(SockState, snd_wnd),
        offset_of!(SockState, wmem_queued),
        offset_of!(SockState, sndbuf),
        offset_of!(SockState, retransmits),
        offset_of!(SockState, backoff),
        offset_of!(SockState, zero_window_acks),
        offset_of!(SockState, bytes_acked),
        offset_of!(SockState, times.first_seen_ns),
        offset_of!(SockState, times.last_send_ns),
        offset_of!(SockState, times.last_ack_ns),
        offset_of!(SockState, times.last_progress_ns),
        offset_of!(SockState, times.last_retrans_ns),
        offset_of!(SockState, rcv_nxt),
        offset_of!(SockState, copied_seq),
        offset_of!(SockState, rcvbuf),
        offset_of!(SockState, rcv_wnd),
        offset_of!(SockState, last_read_ns),
        offset_of!(SockState, gaps),
        offset_of!(SockState, gap_count),
        offset_of!(Gap, start_ns),
        offset_of!(Gap, end_ns),
        offset_of!(Gap, acked),
        offset_of!(Gap, zero_window),
    ];
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in (*p as u64).to_le_bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// This agent's kernel state layout, e.g. `v1-3fa2c9e1`: [`layout_version`] and the
/// struct layout hash.
pub fn layout_id() -> String {
    format!("v{}-{:08x}", layout_version(), layout_hash())
}

fn key_mode(by_addr: bool) -> &'static str {
    if by_addr {
        "address"
    } else {
        "cookie"
    }
}

/// The pin name of a `SOCKS` map this agent can adopt.
pub fn pin_name(by_addr: bool, max_sockets: u32) -> String {
    format!(
        "{PIN_PREFIX}{}_{}_{max_sockets}",
        layout_id(),
        key_mode(by_addr)
    )
}

/// Our pinned maps in `dir` (names), sorted.
fn pins_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(PIN_PREFIX))
        .collect();
    v.sort();
    v
}

/// Why a pinned map named `other` is not the one this agent wants (`want`).
fn mismatch(other: &str, want: &str) -> String {
    let parts = |n: &str| -> Option<(String, String, String)> {
        let rest = n.strip_prefix(PIN_PREFIX)?;
        let mut it = rest.rsplitn(3, '_');
        let max = it.next()?.to_string();
        let mode = it.next()?.to_string();
        let layout = it.next()?.to_string();
        Some((layout, mode, max))
    };
    match (parts(other), parts(want)) {
        (Some((ol, om, ox)), Some((wl, wm, wx))) => {
            let mut why = Vec::new();
            if ol != wl {
                why.push(format!(
                    "it has state layout {ol}, this agent {wl} (another tcpstall version)"
                ));
            }
            if om != wm {
                why.push(format!(
                    "it is keyed by {om}, this agent keys sockets by {wm}"
                ));
            }
            if ox != wx {
                why.push(format!(
                    "it holds {ox} sockets, this agent runs with --max-sockets {wx}"
                ));
            }
            if why.is_empty() {
                "it is not the map this agent expects".into()
            } else {
                why.join("; ")
            }
        }
        _ => "its name is not one tcpstall writes".into(),
    }
}

/// The pinned map this agent can adopt in `dir` (checked with the kernel: a hash map of
/// 8-byte keys, [`SockState`] values and `max_sockets` entries), or why there is none.
pub fn adoptable(dir: &Path, by_addr: bool, max_sockets: u32) -> Result<PathBuf, String> {
    let want = pin_name(by_addr, max_sockets);
    let path = dir.join(&want);
    if path.exists() {
        let info = aya::maps::MapInfo::from_pin(&path)
            .map_err(|e| format!("the saved map {} cannot be opened: {e}", path.display()))?;
        let hash = matches!(info.map_type(), Ok(aya::maps::MapType::Hash));
        let value = std::mem::size_of::<SockState>() as u32;
        if !hash
            || info.key_size() != 8
            || info.value_size() != value
            || info.max_entries() != max_sockets
        {
            return Err(format!(
                "the saved map {} is not a hash map of 8-byte keys, {value}-byte values and \
                 {max_sockets} entries (the kernel says: {:?}, {} / {} bytes, {} entries)",
                path.display(),
                info.map_type(),
                info.key_size(),
                info.value_size(),
                info.max_entries()
            ));
        }
        return Ok(path);
    }
    match pins_in(dir).first() {
        Some(other) => Err(format!(
            "the saved map {} does not fit: {}",
            dir.join(other).display(),
            mismatch(other, &want)
        )),
        None => Err(format!("no saved kernel map in {}", dir.display())),
    }
}

/// After loading: keep only the adopted map's pin, or replace every old pin with `socks`.
/// Returns the pin path.
pub fn finish_pins(
    dir: &Path,
    socks: &aya::maps::MapData,
    by_addr: bool,
    max_sockets: u32,
    adopted: bool,
) -> Result<PathBuf, String> {
    let want = pin_name(by_addr, max_sockets);
    for name in pins_in(dir) {
        if adopted && name == want {
            continue;
        }
        let p = dir.join(&name);
        std::fs::remove_file(&p).map_err(|e| format!("removing {}: {e}", p.display()))?;
    }
    let path = dir.join(&want);
    if !adopted {
        socks
            .pin(&path)
            .map_err(|e| format!("pinning the map at {}: {e}", path.display()))?;
    }
    Ok(path)
}

fn fs_magic(p: &Path) -> Option<u64> {
    rustix::fs::statfs(p).ok().map(|st| st.f_type as u64)
}

fn nearest_existing(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        match cur.parent() {
            Some(parent) => cur = parent.to_path_buf(),
            None => break,
        }
    }
    cur
}

/// Make `dir` usable for pins: on bpffs (mounting bpffs on `/sys/fs/bpf` when `dir` is
/// under it and nothing is mounted there yet), created with mode 0700. Err: why not.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), String> {
    let on_bpffs = |p: &Path| fs_magic(&nearest_existing(p)) == Some(BPF_FS_MAGIC);
    if !on_bpffs(dir) {
        let root = Path::new(BPF_FS_ROOT);
        if dir.starts_with(root) && root.is_dir() && fs_magic(root) != Some(BPF_FS_MAGIC) {
            mount_bpffs(root)?;
            log::info!("mounted the BPF filesystem on {BPF_FS_ROOT} (it was not mounted)");
        }
        if !on_bpffs(dir) {
            return Err(format!(
                "{} is not on a BPF filesystem (bpffs); mount one (`mount -t bpf bpf {BPF_FS_ROOT}`) \
                 or give --pin-dir on one",
                dir.display()
            ));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))
}

fn mount_bpffs(root: &Path) -> Result<(), String> {
    rustix::mount::mount(
        "bpf",
        root,
        "bpf",
        rustix::mount::MountFlags::empty(),
        c"mode=0700",
    )
    .map_err(|e| {
        format!(
            "nothing is mounted on {} and mounting bpffs there failed: {}",
            root.display(),
            std::io::Error::from(e)
        )
    })
}

/// An exclusive `flock` held for the agent's lifetime (released when dropped or when the
/// process dies, however it dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Why a directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another agent holds it: the agent must not start.
    Busy(String),
    /// It cannot be used (read-only, missing, ...): the agent goes on without it.
    Unusable(String),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Busy(s) | LockError::Unusable(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for LockError {}

/// Lock `path` (a file, created if missing, or a directory) or say who holds it.
fn lock(path: &Path, dir: bool, what: &str) -> Result<Lock, LockError> {
    let file = if dir {
        File::open(path)
    } else {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
    }
    .map_err(|e| LockError::Unusable(format!("opening {}: {e}", path.display())))?;
    if let Err(e) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        let e = std::io::Error::from(e);
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = if dir {
                String::new()
            } else {
                std::fs::read_to_string(path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default()
            };
            return Err(LockError::Busy(format!(
                "another tcpstall agent{holder} is running with this {what} ({}): two agents on \
                 one node would act on the same sockets. Stop it first, or give this one its own \
                 --state-dir and --pin-dir",
                path.display()
            )));
        }
        // Some filesystems do not lock; nothing better to do than go on.
        log::debug!("flock {}: {e}", path.display());
    }
    if !dir {
        let mut f = &file;
        let _ = file.set_len(0);
        let _ = writeln!(f, "{}", std::process::id());
    }
    Ok(Lock { _file: file })
}

/// Create (mode 0700) and lock the state directory.
pub fn lock_state_dir(dir: &Path) -> Result<Lock, LockError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            LockError::Unusable(format!(
                "creating the state directory {}: {e}",
                dir.display()
            ))
        })?;
    lock(&dir.join(LOCK_FILE), false, "--state-dir")
}

/// Lock the pin directory (it must exist).
pub fn lock_pin_dir(dir: &Path) -> Result<Lock, LockError> {
    lock(dir, true, "--pin-dir")
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What was decided per stall, as saved ([`crate::agent`]'s per-socket act state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAct {
    pub cookie: u64,
    /// The last guard that skipped this stall's reset (said once per stall and guard).
    pub skipped_guard: Option<SkipGuard>,
    /// A reset was done, or failed for good.
    pub done: bool,
    pub attempts: u32,
    /// Next retry of a transient failure (CLOCK_MONOTONIC ns).
    pub retry_at_ns: Option<u64>,
}

/// The state file's header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The kernel state layout of the agent that wrote it ([`layout_id`]).
    pub layout: String,
    pub boot_id: String,
    /// CLOCK_MONOTONIC at the save.
    pub saved_mono_ns: u64,
    /// Wall clock at the save (RFC 3339), for people.
    pub saved_at: String,
    pub agent_version: String,
    pub pid: u32,
    /// Sockets left out to keep the file under [`MAX_STATE_BYTES`].
    pub sockets_left_out: u64,
}

/// The state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saved {
    pub header: Header,
    pub budgets: BudgetsState,
    pub acts: Vec<SavedAct>,
    pub sockets: Vec<SavedSocket>,
}

#[derive(Deserialize)]
struct HeaderOnly {
    header: Header,
}

/// What one save wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub bytes: usize,
    pub sockets: usize,
    pub left_out: usize,
}

/// Encode the state file: sockets in the order given (most valuable first) as long as the
/// file stays under `max_bytes`; acts only for the sockets saved.
pub fn encode(
    mut header: Header,
    budgets: &BudgetsState,
    sockets: &[SavedSocket],
    acts: &HashMap<u64, SavedAct>,
    max_bytes: usize,
) -> (Vec<u8>, Written) {
    let budgets = serde_json::to_vec(budgets).expect("plain data");
    // Room kept for the header, the budgets and the acts of what fits.
    let mut room = max_bytes.saturating_sub(budgets.len() + 1024);
    let mut body: Vec<u8> = Vec::new();
    let mut kept_acts: Vec<&SavedAct> = Vec::new();
    let mut saved = 0;
    for s in sockets {
        let one = serde_json::to_vec(s).expect("plain data");
        let act = acts.get(&s.cookie);
        let act_len = act.map_or(0, |a| serde_json::to_vec(a).map_or(0, |v| v.len() + 1));
        if one.len() + 1 + act_len > room {
            break;
        }
        room -= one.len() + 1 + act_len;
        if !body.is_empty() {
            body.push(b',');
        }
        body.extend_from_slice(&one);
        kept_acts.extend(act);
        saved += 1;
    }
    let left_out = sockets.len() - saved;
    header.sockets_left_out = left_out as u64;
    let mut out = Vec::with_capacity(body.len() + budgets.len() + 4096);
    out.extend_from_slice(b"{\"header\":");
    out.extend_from_slice(&serde_json::to_vec(&header).expect("plain data"));
    out.extend_from_slice(b",\"budgets\":");
    out.extend_from_slice(&budgets);
    out.extend_from_slice(b",\"acts\":");
    out.extend_from_slice(&serde_json::to_vec(&kept_acts).expect("plain data"));
    out.extend_from_slice(b",\"sockets\":[");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"]}\n");
    let bytes = out.len();
    (
        out,
        Written {
            bytes,
            sockets: saved,
            left_out,
        },
    )
}

/// Write `data` to `path` atomically: a temporary file next to it (mode 0600), renamed over
/// it. No fsync: the file is only ever read on the same boot, and a process that dies
/// (SIGKILL included) leaves its writes in the page cache.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Read the state file back, or say why it is not used. `now_ns`: CLOCK_MONOTONIC now.
pub fn load(path: &Path, now_ns: u64) -> Result<Saved, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no state file at {}", path.display()))
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if meta.len() > 2 * MAX_STATE_BYTES as u64 {
        return Err(format!(
            "{} is {} bytes, more than this agent ever writes; ignored",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let h = serde_json::from_slice::<HeaderOnly>(&text)
        .map_err(|e| format!("{} is unreadable ({e})", path.display()))?
        .header;
    if h.format != format_version() {
        return Err(format!(
            "{} has format {}, this agent reads format {} (another tcpstall version)",
            path.display(),
            h.format,
            format_version()
        ));
    }
    let boot = boot_id();
    if h.boot_id != boot || boot.is_empty() {
        return Err(format!(
            "{} was saved before the node rebooted (boot id {}, now {}): socket cookies and \
             clocks started over",
            path.display(),
            h.boot_id,
            boot
        ));
    }
    if h.saved_mono_ns > now_ns {
        return Err(format!(
            "{} was saved in the future of this boot's clock",
            path.display()
        ));
    }
    serde_json::from_slice::<Saved>(&text)
        .map_err(|e| format!("{} is unreadable ({e})", path.display()))
}

/// `tcpstall state clear`: remove the pinned map(s) and the state file (deliberate
/// uninstall). Refuses while an agent holds either directory. Returns what was removed.
pub fn clear(paths: &StatePaths) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let pin_dir = &paths.pin_dir;
    if pin_dir.is_dir() {
        let lock = lock_pin_dir(pin_dir)?;
        for name in pins_in(pin_dir) {
            let p = pin_dir.join(name);
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(p.display().to_string());
        }
        drop(lock);
        if std::fs::remove_dir(pin_dir).is_ok() {
            removed.push(pin_dir.display().to_string());
        }
    }
    let dir = &paths.state_dir;
    if dir.is_dir() {
        let lock = lock(&dir.join(LOCK_FILE), false, "--state-dir")?;
        for name in [STATE_FILE, "state.json.tmp"] {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
                removed.push(p.display().to_string());
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let _ = std::fs::remove_file(&lock_path);
        drop(lock);
        if std::fs::remove_dir(dir).is_ok() {
            removed.push(dir.display().to_string());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_slow_down_with_their_cost_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(save_interval(ms(1)), SAVE_EVERY);
        assert_eq!(save_interval(ms(20)), Duration::from_secs(20));
        assert_eq!(save_interval(ms(100)), SAVE_AT_LEAST_EVERY);
        assert_eq!(save_interval(Duration::from_secs(2)), SAVE_AT_LEAST_EVERY);
    }

    #[test]
    fn pin_names_say_what_does_not_fit() {
        let want = pin_name(false, 32768);
        assert!(want.starts_with("socks_v1-"), "{want}");
        assert!(want.ends_with("_cookie_32768"), "{want}");
        let other_mode = pin_name(true, 32768);
        assert!(mismatch(&other_mode, &want).contains("keyed by address"));
        let other_max = pin_name(false, 1000);
        let why = mismatch(&other_max, &want);
        assert!(why.contains("holds 1000 sockets"), "{why}");
        assert!(why.contains("--max-sockets 32768"), "{why}");
        let old = want.replacen("socks_v1-", "socks_v0-", 1);
        assert!(mismatch(&old, &want).contains("state layout v0-"));
        assert!(mismatch("socks_garbage", &want).contains("not one tcpstall writes"));
    }

    #[test]
    fn the_file_is_bounded_atomic_private_and_read_back_only_when_it_fits() {
        let dir = std::env::temp_dir().join(format!("tcpstall-state-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _lock = lock_state_dir(&dir).unwrap();
        // A second lock of the same directory is refused, naming the holder.
        let err = lock_state_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        let header = Header {
            format: format_version(),
            layout: layout_id(),
            boot_id: boot_id(),
            saved_mono_ns: 1000,
            saved_at: "2026-12-02T12:00:00Z".into(),
            agent_version: "0.1.0".into(),
            pid: 1,
            sockets_left_out: 0,
        };
        let budgets = BudgetsState::default();
        let acts: HashMap<u64, SavedAct> = [(
            7,
            SavedAct {
                cookie: 7,
                skipped_guard: Some(SkipGuard::RateLimit),
                done: false,
                attempts: 0,
                retry_at_ns: None,
            },
        )]
        .into();
        let (data, w) = encode(header.clone(), &budgets, &[], &acts, MAX_STATE_BYTES);
        assert_eq!((w.sockets, w.left_out), (0, 0));
        let path = dir.join(STATE_FILE);
        write_atomic(&path, &data).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = load(&path, 2000).unwrap();
        assert_eq!(back.header, header);
        // Acts are kept only for the sockets saved.
        assert!(back.acts.is_empty());
        // Another boot, another format, a clock from the future: started fresh, saying why.
        let other = |h: Header| {
            let (d, _) = encode(h, &budgets, &[], &acts, MAX_STATE_BYTES);
            write_atomic(&path, &d).unwrap();
            load(&path, 2000).unwrap_err()
        };
        let why = other(Header {
            boot_id: "x".into(),
            ..header.clone()
        });
        assert!(why.contains("rebooted"), "{why}");
        let why = other(Header {
            format: 99,
            ..header.clone()
        });
        assert!(why.contains("format 99"), "{why}");
        let why = other(Header {
            saved_mono_ns: 5000,
            ..header.clone()
        });
        assert!(why.contains("future"), "{why}");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path, 2000).unwrap_err().contains("unreadable"));
        drop(_lock);
        let removed = clear(&StatePaths {
            state_dir: dir.clone(),
            pin_dir: dir.join("no-pins"),
        })
        .unwrap();
        assert!(
            removed.iter().any(|r| r.ends_with(STATE_FILE)),
            "{removed:?}"
        );
        assert!(!dir.exists());
        assert!(load(&path, 2000).unwrap_err().contains("no state file"));
    }

    #[test]
    fn sockets_beyond_the_bound_are_left_out_and_counted() {
        use crate::classify::{Thresholds, Tracker};
        use crate::snapshot::Snapshot;
        const S: u64 = 1_000_000_000;
        let now = 1000 * S;
        let mut tr = Tracker::new();
        for cookie in 1..=200u64 {
            let mut st = SockState::zeroed();
            st.cookie = cookie;
            st.family = 2;
            st.write_seq = 10_000;
            st.flags = monitor_common::flags::ZERO_WINDOW;
            st.times.first_seen_ns = now - 100 * S;
            st.times.last_progress_ns = now - 60 * S;
            tr.observe(&Snapshot::from_state(&st, now), &Thresholds::default());
        }
        let sockets = tr.export();
        assert_eq!(sockets.len(), 200, "every stall in force is saved");
        let header = Header {
            format: format_version(),
            layout: layout_id(),
            boot_id: boot_id(),
            saved_mono_ns: 0,
            saved_at: String::new(),
            agent_version: String::new(),
            pid: 1,
            sockets_left_out: 0,
        };
        let acts: HashMap<u64, SavedAct> = sockets
            .iter()
            .map(|s| {
                (
                    s.cookie,
                    SavedAct {
                        cookie: s.cookie,
                        skipped_guard: Some(SkipGuard::DryRun),
                        done: false,
                        attempts: 0,
                        retry_at_ns: None,
                    },
                )
            })
            .collect();
        let budgets = BudgetsState::default();
        let (all, w) = encode(header.clone(), &budgets, &sockets, &acts, MAX_STATE_BYTES);
        assert_eq!((w.sockets, w.left_out), (200, 0));
        let max = all.len() / 4;
        let (data, w) = encode(header, &budgets, &sockets, &acts, max);
        assert!(data.len() <= max, "{} > {max}", data.len());
        assert!(w.sockets > 0 && w.left_out > 0, "{w:?}");
        let back: Saved = serde_json::from_slice(&data).unwrap();
        assert_eq!(back.sockets.len(), w.sockets);
        assert_eq!(
            back.acts.len(),
            w.sockets,
            "acts only for the sockets saved"
        );
        assert_eq!(back.header.sockets_left_out, w.left_out as u64);
    }
}
