//! Kernel side, userspace half: load the eBPF object with the running kernel's offsets,
//! attach the hooks, and read per-socket state, close notes and counters back.
//!
//! Dropping [`Probes`] detaches every program and frees the maps.

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
    Btf, Ebpf, EbpfLoader,
};
use monitor_common::{counter, CloseNote, Offsets, SockState};
use std::os::fd::OwnedFd;

/// The embedded eBPF object (built by `cargo xtask build-ebpf`).
#[cfg(tcpstall_ebpf_obj)]
static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(env!("TCPSTALL_EBPF_OBJ_PATH"));
#[cfg(not(tcpstall_ebpf_obj))]
static EBPF_OBJ: &[u8] = &[];

/// (program name in the object, BTF tracepoint it attaches to).
pub const HOOKS: &[(&str, &str)] = &[
    ("tcpstall_sendmsg", "tcp_sendmsg_locked"),
    ("tcpstall_probe", "tcp_probe"),
    ("tcpstall_retransmit", "tcp_retransmit_skb"),
    ("tcpstall_read", "tcp_rcv_space_adjust"),
    ("tcpstall_state", "inet_sock_set_state"),
];

/// Kernel-side counters (cumulative since load), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub map_full: u64,
    pub close_notes_lost: u64,
    pub tracked: u64,
    pub drained: u64,
    pub closed: u64,
}

pub struct Probes {
    // Field order matters for drop: maps and links go before the object.
    socks: HashMap<MapData, u64, SockState>,
    closed: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    ebpf: Ebpf,
    hooks: Vec<String>,
    max_sockets: u32,
    _stats: Option<OwnedFd>,
    /// The kernel supports BPF_MAP_LOOKUP_BATCH on our map (cleared on the first refusal).
    batch_ok: std::cell::Cell<bool>,
}

impl Probes {
    /// Load and attach everything. `max_sockets` bounds the per-socket map.
    pub fn load(offsets: &Offsets, max_sockets: u32, bpf_stats: bool) -> Result<Probes> {
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
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("OFFSETS", offsets, true)
            .map_max_entries("SOCKS", max_sockets)
            .load(EBPF_OBJ)
            .map_err(|e| {
                anyhow!(
                    "loading the eBPF object failed: {e}. Needs root (CAP_BPF, CAP_PERFMON); \
                     if the verifier refused it, the log above says why"
                )
            })?;
        let mut hooks = Vec::new();
        for (prog, tp) in HOOKS {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            p.load(tp, &btf)
                .map_err(|e| anyhow!("loading {prog} for tp_btf/{tp}: {e:#}"))?;
            p.attach()
                .map_err(|e| anyhow!("attaching tp_btf/{tp}: {e:#}"))?;
            hooks.push(format!("tp_btf/{tp}"));
        }
        let socks = HashMap::try_from(ebpf.take_map("SOCKS").context("SOCKS map missing")?)?;
        let closed = RingBuf::try_from(ebpf.take_map("CLOSED").context("CLOSED map missing")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        Ok(Probes {
            socks,
            closed,
            counters,
            ebpf,
            hooks,
            max_sockets,
            _stats: stats,
            batch_ok: std::cell::Cell::new(true),
        })
    }

    pub fn hooks(&self) -> &[String] {
        &self.hooks
    }

    pub fn max_sockets(&self) -> u32 {
        self.max_sockets
    }

    /// Every tracked socket's state. Cost is proportional to the sockets tracked (those with
    /// data queued), not to all sockets on the node.
    pub fn read_all(&self) -> Vec<SockState> {
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
        let mut out: Vec<SockState> = Vec::new();
        let mut keys = vec![0u64; BATCH];
        let mut vals: Vec<SockState> = vec![SockState::zeroed(); BATCH];
        // Hash maps use a u32 bucket cursor; a u64 holds it.
        let (mut in_batch, mut out_batch) = (0u64, 0u64);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &in_batch as *const u64 as u64
                },
                out_batch: &mut out_batch as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: vals.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: fd as u32,
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: attr points at buffers of `count` keys and values of the map's sizes.
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
            match err {
                None => out.extend_from_slice(&vals[..n]),
                // ENOENT: no more entries; the last part came with it.
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    out.extend_from_slice(&vals[..n]);
                    return Ok(out);
                }
                Some(e) => return Err(e),
            }
            first = false;
            in_batch = out_batch;
        }
    }

    /// One socket's current state (for re-verification right before acting).
    pub fn get(&self, cookie: u64) -> Option<SockState> {
        self.socks.get(&cookie, 0).ok()
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
        out
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
        }
    }

    /// Total in-kernel run time of our programs (ns), when BPF stats are enabled.
    pub fn bpf_run_ns(&self) -> Option<u64> {
        self._stats.as_ref()?;
        let mut total = 0u64;
        for (name, _) in HOOKS {
            let p = self.ebpf.program(name)?;
            total += p.info().ok()?.run_time().as_nanos() as u64;
        }
        Some(total)
    }
}
