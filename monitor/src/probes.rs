//! Kernel side, userspace half: load the eBPF object with the running kernel's offsets,
//! attach the hooks, and read per-socket state, close notes and counters back.
//!
//! Dropping [`Probes`] detaches every program and frees the maps, except the `SOCKS` map
//! when it is pinned (`crate::state`): it stays for the next agent.

use crate::attach::{self, Candidate, Kind, Selection};
use crate::btf::{Btf as KernelBtf, Site};
use crate::event::HookReport;
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, KProbe},
    Btf, Ebpf, EbpfLoader,
};
use monitor_common::{counter, mode, CloseNote, HolderRecord, Offsets, SockState};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The embedded eBPF object (built by `cargo xtask build-ebpf`).
#[cfg(tcpstall_ebpf_obj)]
pub(crate) static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(env!("TCPSTALL_EBPF_OBJ_PATH"));
#[cfg(not(tcpstall_ebpf_obj))]
pub(crate) static EBPF_OBJ: &[u8] = &[];

/// Kernel-side counters (cumulative since load), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub map_full: u64,
    pub close_notes_lost: u64,
    pub tracked: u64,
    pub drained: u64,
    pub closed: u64,
    /// Entries dropped because their address key belonged to another socket by then.
    pub stale: u64,
}

/// The object loaded for one of the benchmark's measurement programs (`crate::scan`,
/// `crate::cost`): maps made with `SOCKS` sized `socks`, no program loaded yet. Returns it
/// with the running kernel's BTF, which loading those programs needs.
pub(crate) fn load_for_measurement(offsets: &Offsets, socks: u32) -> Result<(Ebpf, Btf)> {
    if EBPF_OBJ.is_empty() {
        bail!("this build has no eBPF object (run `cargo xtask build-ebpf`)");
    }
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", offsets, true)
        .map_max_entries("SOCKS", socks)
        .load(EBPF_OBJ)
        .map_err(|e| anyhow!("loading the eBPF object: {e}"))?;
    Ok((ebpf, btf))
}

/// What became of the pinned `SOCKS` map at load ([`crate::state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinning {
    /// The map a previous agent left pinned was adopted: its entries (stall clocks, gap
    /// rings) carry on.
    pub adopted: bool,
    /// Where the map is pinned now; None: not pinned (it dies with this process).
    pub path: Option<PathBuf>,
    /// What happened, and why, in words.
    pub detail: String,
}

pub struct Probes {
    // Field order matters for drop: maps and links go before the object.
    socks: HashMap<MapData, u64, SockState>,
    closed: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    /// Element 0: the map-pressure flag the kernel side reads (see `set_pressure`).
    pressure: Array<MapData, u32>,
    /// The holder iterator, where the kernel loads it (`identity/iter.rs`).
    holder_iter: Option<crate::identity::iter::HolderIter>,
    ebpf: Ebpf,
    selection: Selection,
    key_by_addr: bool,
    max_sockets: u32,
    _stats: Option<OwnedFd>,
    /// The kernel supports BPF_MAP_LOOKUP_BATCH on our map (cleared on the first refusal).
    batch_ok: std::cell::Cell<bool>,
    /// Entries the last read returned: the next read's buffer starts that large.
    last_count: std::cell::Cell<usize>,
    /// The buffer of the last read, handed back by the tick ([`Probes::recycle`]) for the
    /// next read to fill.
    spare: std::cell::Cell<Vec<SockState>>,
    /// Under address keys: map key → (first_seen_ns, cookie), for entries whose cookie the
    /// kernel side could not read yet (first_seen_ns tells a later socket at the same
    /// address apart), and cookie → key for [`Probes::get`]. Bounded by the map's entries:
    /// pruned to the keys present at every [`Probes::read_all`].
    cookies: std::collections::HashMap<u64, (u64, u64)>,
    keys: std::collections::HashMap<u64, u64>,
    pinning: Pinning,
}

/// The running kernel, for [`attach::select`]: BTF for prototypes, the loaded object for
/// programs, and what it takes to load the object again with address keys.
struct Loader<'a> {
    kbtf: &'a KernelBtf,
    btf: &'a Btf,
    /// None only while being reloaded.
    ebpf: Option<Ebpf>,
    key_by_addr: bool,
    offsets: &'a Offsets,
    max_sockets: u32,
    release: String,
    pin_dir: Option<&'a Path>,
}

impl attach::Kernel for Loader<'_> {
    fn release(&self) -> &str {
        &self.release
    }

    fn params(&self, site: Site) -> Result<Option<Vec<String>>> {
        self.kbtf.params(site)
    }

    fn attach(&mut self, c: &Candidate) -> Result<()> {
        let prog = self
            .ebpf
            .as_mut()
            .context("the eBPF object failed to reload")?
            .program_mut(c.prog)
            .ok_or_else(|| anyhow!("program {} missing from the eBPF object", c.prog))?;
        match c.kind {
            Kind::TpBtf => {
                let p: &mut BtfTracePoint = prog.try_into()?;
                if p.fd().is_err() {
                    p.load(c.target, self.btf).map_err(verifier_error)?;
                }
                p.attach().map_err(|e| anyhow!("{e}"))?;
            }
            Kind::FEntry => {
                let p: &mut FEntry = prog.try_into()?;
                if p.fd().is_err() {
                    p.load(c.target, self.btf).map_err(verifier_error)?;
                }
                p.attach().map_err(|e| anyhow!("{e}"))?;
            }
            Kind::KProbe => {
                // aya's own error here is only the path it failed to read.
                if !std::path::Path::new(KPROBE_PMU).exists() {
                    bail!("this kernel has no kprobes (no {KPROBE_PMU}: CONFIG_KPROBES is off)");
                }
                let p: &mut KProbe = prog.try_into()?;
                if p.fd().is_err() {
                    p.load().map_err(verifier_error)?;
                }
                p.attach(c.target, 0).map_err(|e| anyhow!("{e}"))?;
            }
        }
        Ok(())
    }

    fn key_by_addr(&self) -> bool {
        self.key_by_addr
    }

    fn rekey_by_addr(&mut self) -> Result<()> {
        // The old object goes first: its programs detach and its maps are freed.
        self.ebpf = None;
        let ebpf = Probes::open(self.btf, self.offsets, self.max_sockets, true, self.pin_dir)
            .and_then(|e| Probes::probe_key(e, self.btf))
            .context("reloading the eBPF programs with sockets keyed by address")?;
        self.ebpf = Some(ebpf);
        self.key_by_addr = true;
        Ok(())
    }
}

/// The cookie looked up earlier for the entry `s` (same key and same tracking episode).
fn cached_cookie(
    cookies: &std::collections::HashMap<u64, (u64, u64)>,
    s: &SockState,
) -> Option<u64> {
    match cookies.get(&s.key) {
        Some(&(first, c)) if first == s.times.first_seen_ns => Some(c),
        _ => None,
    }
}

/// What `--trouble-hooks` gives up (`agent_started.degraded`).
pub const TROUBLE_LOST: &str = "--trouble-hooks: only sockets in trouble are tracked (a \
    retransmission timeout, a zero-window probe, a retransmit), so `slow_drain` (a peer that \
    acks slowly without making the sender retransmit) and `recv_backlog` are not seen; a \
    stall's clock starts at its first retransmission timeout or zero-window probe (one RTO \
    after the last progress), and progress is read through sock_diag once a second";

/// Where a kernel with kprobes publishes their perf event type.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// A load error with the verifier's last lines (aya's message holds the whole log).
fn verifier_error(e: aya::programs::ProgramError) -> anyhow::Error {
    let text = format!("{e:#}");
    log::debug!("program load failed: {text}");
    let text = text.trim_end();
    let text = text
        .strip_suffix("Verifier output:")
        .unwrap_or(text)
        .trim_end();
    let text = text.strip_suffix('.').unwrap_or(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() > 6 {
        anyhow!("{} … {}", lines[0], lines[lines.len() - 4..].join(" | "))
    } else {
        anyhow!("{}", lines.join(" | "))
    }
}

impl Probes {
    /// Load the object with the running kernel's offsets and attach every hook at the best
    /// attach point the kernel offers ([`attach::select`]). `max_sockets` bounds the
    /// per-socket map. With `pin_dir` (on bpffs, see [`crate::state::prepare_pin_dir`]) the
    /// `SOCKS` map a previous agent pinned there is adopted when it fits this agent
    /// ([`crate::state::adoptable`]); otherwise the old pins are removed and the new map is
    /// pinned there ([`Probes::pinning`] says which, and why).
    pub fn load(
        kbtf: &KernelBtf,
        offsets: &Offsets,
        max_sockets: u32,
        bpf_stats: bool,
        choice: attach::Choice,
        pin_dir: Option<&Path>,
    ) -> Result<Probes> {
        let trouble_hooks = choice.trouble;
        if EBPF_OBJ.is_empty() {
            bail!(
                "this tcpstall binary was built without its eBPF object; \
                 run `cargo xtask build-ebpf` and rebuild (or use `cargo xtask run`)"
            );
        }
        if max_sockets == 0 {
            bail!("--max-sockets must be at least 1");
        }
        let btf = Btf::from_sys_fs().context(
            "reading kernel BTF from /sys/kernel/btf/vmlinux (the kernel needs CONFIG_DEBUG_INFO_BTF=y)",
        )?;
        let stats = if bpf_stats {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .map_err(|e| anyhow!("enabling BPF run-time stats: {e}"))?,
            )
        } else {
            None
        };
        let release = crate::btf::kernel_release();
        let only = attach::forced_kind(std::env::var(attach::ATTACH_ENV).ok().as_deref())?;
        // Trouble-only hooks: the timer hook's socket is a computed pointer (no cookie),
        // so every program keys by address; the timer hook needs `tcp_write_timer`'s
        // address and the timer's layout before it runs.
        let mut offsets = *offsets;
        let layout = if trouble_hooks {
            offsets.mode |= mode::TROUBLE_HOOKS;
            Some(crate::trouble::TimerLayout::of(kbtf).context(
                "--trouble-hooks: finding the TCP write timer (tcp_write_timer in \
                 /proc/kallsyms, its timer's layout in the kernel's BTF); run without \
                 --trouble-hooks",
            )?)
        } else {
            None
        };
        let offsets = &offsets;
        // With `--trouble-hooks`, address keys from the start. Otherwise: socket cookies
        // from tracing programs arrived in 5.12; decide by behaviour: the state program (the
        // simplest user of the key) must load with cookie keys, else the object is reloaded
        // with address keys.
        let (mut ebpf, key_by_addr) = if trouble_hooks {
            let ebpf = Self::open(&btf, offsets, max_sockets, true, pin_dir)
                .and_then(|e| Self::probe_key(e, &btf))
                .with_context(|| {
                    format!("the kernel's verifier refused the eBPF programs on {release}")
                })?;
            (ebpf, true)
        } else {
            match Self::open(&btf, offsets, max_sockets, false, pin_dir)
                .and_then(|e| Self::probe_key(e, &btf))
            {
                Ok(ebpf) => (ebpf, false),
                Err(cookie_err) => {
                    match Self::open(&btf, offsets, max_sockets, true, pin_dir)
                        .and_then(|e| Self::probe_key(e, &btf))
                    {
                        Ok(ebpf) => {
                            log::info!(
                            "socket cookies are not available to tracing programs on {release} \
                             ({cookie_err:#}); keying sockets by address"
                        );
                            (ebpf, true)
                        }
                        Err(addr_err) => bail!(
                            "the kernel's verifier refused the eBPF programs on {release}: with \
                         socket cookies: {cookie_err:#}; with address keys: {addr_err:#}"
                        ),
                    }
                }
            }
        };
        if let Some(layout) = &layout {
            layout.configure(&mut ebpf)?;
        }
        // A kprobe chosen below reloads the object with address keys (kprobes cannot read
        // cookies, and every program must key sockets the same way); never with
        // `--trouble-hooks`, whose object is keyed by address from the start.
        let mut loader = Loader {
            kbtf,
            btf: &btf,
            ebpf: Some(ebpf),
            key_by_addr,
            offsets,
            max_sockets,
            release,
            pin_dir,
        };
        let selection = attach::select(&mut loader, &choice.hooks(), only)?;
        let mut selection = selection;
        if trouble_hooks {
            selection.degraded.push(TROUBLE_LOST.into());
        }
        let key_by_addr = loader.key_by_addr;
        let mut ebpf = loader
            .ebpf
            .take()
            .context("the eBPF object failed to reload")?;
        let socks = HashMap::try_from(ebpf.take_map("SOCKS").context("SOCKS map missing")?)?;
        let closed = RingBuf::try_from(ebpf.take_map("CLOSED").context("CLOSED map missing")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        let pressure = Array::try_from(ebpf.take_map("PRESSURE").context("PRESSURE map missing")?)?;
        let pinning = Self::pin(&socks, pin_dir, key_by_addr, max_sockets);
        let holder_iter = match crate::identity::iter::HolderIter::load(&mut ebpf, &btf) {
            Ok(h) => Some(h),
            Err(e) => {
                log::info!(
                    "the processes holding tracked sockets will be found by walking /proc \
                     (the holder iterator did not load: {e:#})"
                );
                None
            }
        };
        Ok(Probes {
            socks,
            closed,
            counters,
            pressure,
            holder_iter,
            ebpf,
            selection,
            key_by_addr,
            max_sockets,
            _stats: stats,
            batch_ok: std::cell::Cell::new(true),
            last_count: std::cell::Cell::new(0),
            spare: std::cell::Cell::new(Vec::new()),
            cookies: Default::default(),
            keys: Default::default(),
            pinning,
        })
    }

    /// Keep the adopted map's pin, or pin the new map in place of the old pins.
    fn pin(
        socks: &HashMap<MapData, u64, SockState>,
        pin_dir: Option<&Path>,
        by_addr: bool,
        max_sockets: u32,
    ) -> Pinning {
        use aya::maps::IterableMap;
        let Some(dir) = pin_dir else {
            return Pinning {
                adopted: false,
                path: None,
                detail: "kernel map not pinned".into(),
            };
        };
        // The object was opened with this pin (`open`) exactly when it was adoptable.
        let verdict = crate::state::adoptable(dir, by_addr, max_sockets);
        let adopted = verdict.is_ok();
        let what = match &verdict {
            Ok(p) => format!("adopted the kernel map pinned at {}", p.display()),
            Err(why) => format!("kernel map started fresh: {why}"),
        };
        match crate::state::finish_pins(dir, socks.map(), by_addr, max_sockets, adopted) {
            Ok(path) => Pinning {
                adopted,
                detail: if adopted {
                    what
                } else {
                    format!("{what}; the new map is pinned at {}", path.display())
                },
                path: Some(path),
            },
            Err(e) => {
                log::warn!("the kernel map will not survive a restart: {e}");
                Pinning {
                    adopted,
                    path: None,
                    detail: format!("{what}; the kernel map will not survive a restart: {e}"),
                }
            }
        }
    }

    /// What became of the pinned kernel map at load.
    pub fn pinning(&self) -> &Pinning {
        &self.pinning
    }

    /// Create the maps and read the object with these offsets (no program loaded yet). The
    /// `SOCKS` map pinned in `pin_dir` is used instead of a new one when it fits this key
    /// mode and size ([`crate::state::adoptable`]).
    fn open(
        btf: &Btf,
        offsets: &Offsets,
        max_sockets: u32,
        by_addr: bool,
        pin_dir: Option<&Path>,
    ) -> Result<Ebpf> {
        let mut offsets = *offsets;
        if by_addr {
            offsets.mode |= mode::KEY_BY_ADDR;
        }
        let adopt = pin_dir.and_then(|d| crate::state::adoptable(d, by_addr, max_sockets).ok());
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(btf))
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("SOCKS", max_sockets);
        if let Some(p) = &adopt {
            loader.map_pin_path("SOCKS", p.as_path());
        }
        loader.load(EBPF_OBJ).map_err(|e| {
            anyhow!(
                "loading the eBPF object failed: {e}. Needs root (CAP_BPF, CAP_PERFMON); \
                     if the verifier refused it, the log above says why"
            )
        })
    }

    /// Load (not attach) the state program: the verifier's verdict on this key mode.
    fn probe_key(mut ebpf: Ebpf, btf: &Btf) -> Result<Ebpf> {
        let p: &mut BtfTracePoint = ebpf
            .program_mut("tcpstall_state")
            .context("program tcpstall_state missing from the eBPF object")?
            .try_into()?;
        p.load("inet_sock_set_state", btf).map_err(verifier_error)?;
        Ok(ebpf)
    }

    /// Per hook, the attach point used and why.
    pub fn hook_reports(&self) -> &[HookReport] {
        &self.selection.reports
    }

    /// Whether the ACK hook is attached (progress reported by the kernel side at each ACK;
    /// not with `--trouble-hooks`).
    pub fn acks_seen(&self) -> bool {
        self.selection
            .reports
            .iter()
            .any(|r| r.hook == "ack" && r.attach.is_some())
    }

    /// Whether the read hook is attached (every read reported by the kernel side).
    pub fn reads_seen(&self) -> bool {
        self.selection
            .reports
            .iter()
            .any(|r| r.hook == "read" && r.attach.is_some())
    }

    /// What detection lost because a hook could not be attached.
    pub fn degraded(&self) -> &[String] {
        &self.selection.degraded
    }

    /// Sockets are keyed by address (no cookies in tracing programs on this kernel).
    pub fn key_by_addr(&self) -> bool {
        self.key_by_addr
    }

    /// One pass of the holder iterator for `inodes` (None without it, for more inodes than
    /// a pass takes, or when the pass failed: logged; the caller walks `/proc`).
    pub fn holder_pass(&mut self, inodes: &[u64]) -> Option<Vec<HolderRecord>> {
        let it = self.holder_iter.as_mut()?;
        match it.pass(&mut self.ebpf, inodes) {
            Ok(Some(r)) => Some(r),
            Ok(None) => {
                log::debug!(
                    "{} holders wanted, more than one pass takes: walking /proc",
                    inodes.len()
                );
                None
            }
            Err(e) => {
                log::warn!(
                    "holder iterator pass failed ({e:#}); walking /proc instead (failed {} of {} \
                     passes)",
                    it.failed,
                    it.passes
                );
                None
            }
        }
    }

    pub fn max_sockets(&self) -> u32 {
        self.max_sockets
    }

    /// Every tracked socket's state, each with its cookie. Cost is proportional to the
    /// sockets tracked (those with data queued), not to all sockets on the node.
    ///
    /// Under address keys an entry's cookie may still be 0 (the kernel makes a socket's
    /// cookie only when something asks for it): `resolve` asks (a sock_diag lookup by
    /// 4-tuple, which also makes the kernel store it, so the kernel side reads it from then
    /// on). An entry `resolve` cannot name is left out this time.
    pub fn read_all(
        &mut self,
        resolve: &mut dyn FnMut(&SockState) -> Option<u64>,
    ) -> Vec<SockState> {
        let mut v = self.read_raw();
        if self.key_by_addr {
            let present: std::collections::HashSet<(u64, u64)> =
                v.iter().map(|s| (s.key, s.times.first_seen_ns)).collect();
            self.cookies
                .retain(|k, (first, _)| present.contains(&(*k, *first)));
            v.retain_mut(|s| {
                if s.cookie == 0 {
                    match cached_cookie(&self.cookies, s) {
                        Some(c) => s.cookie = c,
                        None => match resolve(s) {
                            Some(c) => {
                                self.cookies.insert(s.key, (s.times.first_seen_ns, c));
                                s.cookie = c;
                            }
                            None => return false,
                        },
                    }
                }
                true
            });
            self.keys = v.iter().map(|s| (s.cookie, s.key)).collect();
        }
        v
    }

    fn read_raw(&self) -> Vec<SockState> {
        if self.batch_ok.get() {
            match self.read_batched() {
                Ok(v) => return v,
                Err(e) => {
                    log::warn!(
                        "BPF_MAP_LOOKUP_BATCH unavailable ({e}); reading the map entry by entry"
                    );
                    self.batch_ok.set(false);
                }
            }
        }
        // Entries can vanish between get_next_key and lookup; those errors are skipped.
        self.socks
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, v)| v)
            .collect()
    }

    /// The whole map in a few `BPF_MAP_LOOKUP_BATCH` calls (one per `BATCH` entries)
    /// instead of two system calls per entry.
    fn read_batched(&self) -> std::io::Result<Vec<SockState>> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        const BATCH: usize = 1024;
        const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
        /// `union bpf_attr`'s `batch` member.
        #[repr(C)]
        struct BatchAttr {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        let fd = self.socks.map().fd().as_fd().as_raw_fd();
        // The kernel writes the values straight into `out` (no copy after): the last read's
        // buffer when the tick handed it back, sized like the last read so that it is not
        // regrown on the way.
        let mut out: Vec<SockState> = self.spare.take();
        out.clear();
        out.reserve(self.last_count.get() + BATCH);
        let mut keys = vec![0u64; BATCH];
        // Hash maps use a u32 bucket cursor; a u64 holds it.
        let (mut in_batch, mut out_batch) = (0u64, 0u64);
        let mut first = true;
        loop {
            out.reserve(BATCH);
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &in_batch as *const u64 as u64
                },
                out_batch: &mut out_batch as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: out.spare_capacity_mut().as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: fd as u32,
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: attr points at room for `count` keys and values of the map's sizes
            // (`out` has at least BATCH free slots).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    std::mem::size_of::<BatchAttr>() as u32,
                )
            };
            let err = (r < 0).then(std::io::Error::last_os_error);
            let n = (attr.count as usize).min(BATCH);
            let done = match err {
                None => false,
                // ENOENT: no more entries; the last part came with it.
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Some(e) => return Err(e),
            };
            // SAFETY: the kernel wrote `n` whole values (plain old data) into the spare
            // capacity; `n` <= BATCH <= its size.
            unsafe { out.set_len(out.len() + n) };
            if done {
                self.last_count.set(out.len());
                return Ok(out);
            }
            first = false;
            in_batch = out_batch;
        }
    }

    /// Keep `states` (the buffer [`Probes::read_all`] returned) for the next read to fill.
    /// A buffer four times larger than what it last held (the map emptied after a burst)
    /// is shrunk, so it does not hold memory for a burst long gone.
    pub fn recycle(&self, mut states: Vec<SockState>) {
        let len = states.len();
        if states.capacity() > 4 * (len + 1024) {
            states.shrink_to(2 * (len + 1024));
        }
        self.spare.set(states);
    }

    /// One socket's current state (for re-verification right before acting).
    pub fn get(&self, cookie: u64) -> Option<SockState> {
        if !self.key_by_addr {
            return self.socks.get(&cookie, 0).ok();
        }
        let key = *self.keys.get(&cookie)?;
        let mut s = self.socks.get(&key, 0).ok()?;
        if s.cookie == 0 {
            s.cookie = cached_cookie(&self.cookies, &s)?;
        }
        (s.cookie == cookie).then_some(s)
    }

    /// Delete one socket's entry from the kernel map, by cookie (the agent's eviction and
    /// stale-entry sweep). Returns whether an entry was removed.
    ///
    /// Under address keys the entry is found through the cookie → key map of the last
    /// [`Probes::read_all`], and removed only while it still belongs to that socket (a later
    /// socket at the same address keeps its entry); the cookie's bookkeeping is dropped
    /// either way. Between that check and the removal a close and a new socket at the same
    /// address could swap the entry: that socket is then tracked again by its next hook
    /// event.
    pub fn remove(&mut self, cookie: u64) -> bool {
        if !self.key_by_addr {
            return self.socks.remove(&cookie).is_ok();
        }
        let Some(key) = self.keys.remove(&cookie) else {
            return false;
        };
        let cached = self.cookies.get(&key).copied();
        if cached.is_some_and(|(_, c)| c == cookie) {
            self.cookies.remove(&key);
        }
        let Ok(s) = self.socks.get(&key, 0) else {
            return false;
        };
        let owner = if s.cookie != 0 {
            Some(s.cookie)
        } else {
            cached
                .filter(|&(first, _)| first == s.times.first_seen_ns)
                .map(|(_, c)| c)
        };
        owner == Some(cookie) && self.socks.remove(&key).is_ok()
    }

    /// Close notes produced since the last call.
    pub fn drain_closed(&mut self) -> Vec<CloseNote> {
        let mut out = Vec::new();
        while let Some(item) = self.closed.next() {
            if item.len() >= std::mem::size_of::<CloseNote>() {
                // SAFETY: the kernel side writes exactly a CloseNote; read unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const CloseNote) });
            }
        }
        if self.key_by_addr {
            out.retain_mut(|n| {
                let known = self.cookies.remove(&n.key).map(|(_, c)| c);
                if n.cookie == 0 {
                    // Never named by a read: the agent never saw this socket.
                    match known {
                        Some(c) => n.cookie = c,
                        None => return false,
                    }
                }
                self.keys.remove(&n.cookie);
                true
            });
        }
        out
    }

    /// Set the kernel side's map-pressure flag: while on, writes start no new entries and
    /// only sockets with a wedge signature (zero window, closed receive window, retransmit)
    /// are taken into the room left.
    pub fn set_pressure(&mut self, on: bool) -> Result<()> {
        self.pressure
            .set(0, u32::from(on), 0)
            .context("setting the map-pressure flag (PRESSURE map)")
    }

    pub fn counters(&self) -> Counters {
        let sum = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        Counters {
            map_full: sum(counter::MAP_FULL),
            close_notes_lost: sum(counter::CLOSE_NOTES_LOST),
            tracked: sum(counter::TRACKED),
            drained: sum(counter::DRAINED),
            closed: sum(counter::CLOSED),
            stale: sum(counter::STALE),
        }
    }

    /// Total in-kernel run time of our programs (ns), when BPF stats are enabled.
    pub fn bpf_run_ns(&self) -> Option<u64> {
        self._stats.as_ref()?;
        let mut total = 0u64;
        for name in &self.selection.attached {
            let p = self.ebpf.program(name)?;
            total += p.info().ok()?.run_time().as_nanos() as u64;
        }
        Some(total)
    }
}
