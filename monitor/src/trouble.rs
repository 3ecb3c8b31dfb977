//! Trouble-only hooks (issue 14): the benchmark attaches one program at
//! `timer:timer_expire_entry` that counts the TCP write timer's expiries by what was
//! pending (a retransmission timeout, a zero-window persist probe, or nothing left to do)
//! and keeps the sockets with a retransmission or a probe pending
//! (`monitor-ebpf/src/trouble.rs`). It measures, on the benchmark's streams, how often a
//! design whose hooks fire only on trouble would run and which sockets it would flag.
//!
//! The agent's timer hook (`--trouble-hooks`, `monitor-ebpf/src/expire.rs`) decodes the
//! same expiries with the same [`TimerLayout`]; the counting program is the benchmark's.

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePoint,
    Ebpf,
};
use monitor_common::Offsets;

const PROGRAM: &str = "tcpstall_trouble_timer";

/// `icsk_pending` values (`include/net/inet_connection_sock.h`).
pub const ICSK_TIME_RETRANS: usize = 1;
pub const ICSK_TIME_PROBE0: usize = 3;
pub const ICSK_TIME_LOSS_PROBE: usize = 5;

/// The write timer's expiries so far (cumulative, all CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expiries {
    /// By `icsk_pending` at expiry: 0 nothing left to do, 1 retransmission timeout, 3
    /// zero-window probe, 4 reordering timeout, 5 loss probe; 7 stands for 7 and above.
    pub by_pending: [u64; 8],
    /// All of them.
    pub total: u64,
    /// Sockets with a retransmission or a probe pending not kept (the map was full).
    pub unkept: u64,
}

/// Where the program finds what it compares and reads: `tcp_write_timer`'s address (from
/// `/proc/kallsyms`) and three offsets (from the kernel's BTF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerLayout {
    pub write_timer: u64,
    /// `icsk_retransmit_timer` in `struct inet_connection_sock` (the socket starts there).
    pub retransmit_timer: u64,
    /// `function` in `struct timer_list`.
    pub function: u64,
    /// `icsk_pending` in `struct inet_connection_sock`.
    pub pending: u64,
}

impl TimerLayout {
    /// The running kernel's.
    pub fn of_kernel() -> Result<TimerLayout> {
        let (btf, _, _) = crate::btf::load_kernel()?;
        TimerLayout::of(&btf)
    }

    /// The running kernel's, with its BTF already parsed.
    pub fn of(btf: &crate::btf::Btf) -> Result<TimerLayout> {
        // The program bounds offsets to 14 bits (the verifier's pointer arithmetic).
        let field = |s: &str, f: &str| -> Result<u64> {
            let off = btf.field(s, f)?.offset as u64;
            if off >= 0x4000 {
                bail!("{s}.{f} at offset {off}: past what the trouble program reads (16 KiB)");
            }
            Ok(off)
        };
        let kallsyms =
            std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
        Ok(TimerLayout {
            write_timer: symbol(&kallsyms, "tcp_write_timer")?,
            retransmit_timer: field("inet_connection_sock", "icsk_retransmit_timer")?,
            function: field("timer_list", "function")?,
            pending: field("inet_connection_sock", "icsk_pending")?,
        })
    }
}

impl TimerLayout {
    /// Hand the layout to the loaded object (`TROUBLE_CFG`), for the benchmark's counting
    /// program and the agent's timer hook alike.
    pub fn configure(&self, ebpf: &mut Ebpf) -> Result<()> {
        let mut cfg: Array<_, u64> = Array::try_from(
            ebpf.map_mut("TROUBLE_CFG")
                .context("map TROUBLE_CFG missing from the eBPF object")?,
        )?;
        for (i, v) in [
            self.write_timer,
            self.retransmit_timer,
            self.function,
            self.pending,
        ]
        .into_iter()
        .enumerate()
        {
            cfg.set(i as u32, v, 0)
                .map_err(|e| anyhow!("setting TROUBLE_CFG[{i}]: {e}"))?;
        }
        Ok(())
    }
}

/// A function's address in `/proc/kallsyms` text (`ADDR TYPE NAME [MODULE]` lines).
pub fn symbol(kallsyms: &str, name: &str) -> Result<u64> {
    for line in kallsyms.lines() {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(kind), Some(sym)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if sym != name || !matches!(kind, "t" | "T") {
            continue;
        }
        let a = u64::from_str_radix(addr, 16)
            .with_context(|| format!("/proc/kallsyms: bad address {addr:?} for {name}"))?;
        if a == 0 {
            bail!(
                "/proc/kallsyms shows {name} at address 0: addresses are hidden \
                 (kernel.kptr_restrict); run as root with kernel.kptr_restrict <= 1"
            );
        }
        return Ok(a);
    }
    bail!("/proc/kallsyms has no function {name}")
}

/// The program, loaded and attached; detached when dropped.
pub struct TroubleTimer {
    ebpf: Ebpf,
}

impl TroubleTimer {
    /// Load the object with the running kernel's `offsets` and `layout` and attach the
    /// program at `timer_expire_entry`.
    pub fn attach(offsets: &Offsets, layout: &TimerLayout) -> Result<TroubleTimer> {
        let (mut ebpf, btf) = crate::probes::load_for_measurement(offsets, 1)?;
        layout.configure(&mut ebpf)?;
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("program {PROGRAM} missing from the eBPF object"))?
            .try_into()?;
        prog.load("timer_expire_entry", &btf)
            .map_err(|e| anyhow!("loading {PROGRAM} (tp_btf/timer_expire_entry): {e:#}"))?;
        prog.attach()
            .map_err(|e| anyhow!("attaching {PROGRAM}: {e}"))?;
        Ok(TroubleTimer { ebpf })
    }

    /// The program's cumulative (run time ns, runs): every timer expiry of the machine,
    /// counted while BPF run-time statistics are enabled.
    pub fn runs(&self) -> Result<(u64, u64)> {
        let prog: &BtfTracePoint = self
            .ebpf
            .program(PROGRAM)
            .context("trouble program missing")?
            .try_into()?;
        let info = prog.info().map_err(|e| anyhow!("program info: {e}"))?;
        Ok((info.run_time().as_nanos() as u64, info.run_count()))
    }

    pub fn expiries(&self) -> Result<Expiries> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("TROUBLE_RUNS")
                .context("map TROUBLE_RUNS missing from the eBPF object")?,
        )?;
        let sum = |i: u32| -> Result<u64> {
            Ok(map
                .get(&i, 0)
                .map_err(|e| anyhow!("reading TROUBLE_RUNS[{i}]: {e}"))?
                .iter()
                .sum())
        };
        let mut by_pending = [0u64; 8];
        for (i, slot) in by_pending.iter_mut().enumerate() {
            *slot = sum(i as u32)?;
        }
        Ok(Expiries {
            by_pending,
            total: sum(8)?,
            unkept: sum(9)?,
        })
    }

    /// The sockets an expiry found with a retransmission or a probe pending: (local port,
    /// remote port, expiries).
    pub fn flagged(&self) -> Result<Vec<(u16, u16, u64)>> {
        let map: HashMap<_, u32, u64> = HashMap::try_from(
            self.ebpf
                .map("TROUBLE_FLAGGED")
                .context("map TROUBLE_FLAGGED missing from the eBPF object")?,
        )?;
        let mut out = Vec::new();
        for r in map.iter() {
            let (k, n) = r.map_err(|e| anyhow!("reading TROUBLE_FLAGGED: {e}"))?;
            out.push(((k >> 16) as u16, k as u16, n));
        }
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Write};
    use std::time::{Duration, Instant};

    #[test]
    fn symbols_from_kallsyms_text() {
        let text = "ffffffff8208e3a0 t tcp_write_timer\n\
                    ffffffff8208c780 T tcp_send_probe0\n\
                    ffffffffc0001000 t tcp_write_timer_x\t[mod]\n";
        assert_eq!(symbol(text, "tcp_write_timer").unwrap(), 0xffffffff8208e3a0);
        assert_eq!(symbol(text, "tcp_send_probe0").unwrap(), 0xffffffff8208c780);
        let e = symbol(text, "tcp_keepalive_timer").unwrap_err().to_string();
        assert!(e.contains("no function tcp_keepalive_timer"), "{e}");
        let hidden = "0000000000000000 t tcp_write_timer\n";
        let e = symbol(hidden, "tcp_write_timer").unwrap_err().to_string();
        assert!(e.contains("kptr_restrict"), "{e}");
        // A data symbol of that name is not the function.
        assert!(symbol("ffffffff81000000 d tcp_write_timer\n", "tcp_write_timer").is_err());
    }

    /// The program loads and attaches on this kernel, and a wedge (a reader that never
    /// reads, so the writer's peer window closes) is flagged by its port pair with the
    /// zero-window probe pending: the persist timer's expiries reach it.
    #[test]
    #[cfg_attr(
        not(root_tests),
        ignore = "needs root: loads and attaches eBPF programs"
    )]
    fn a_zero_window_wedge_is_flagged_by_the_write_timer() {
        crate::reset::test_support::require_root(
            "a_zero_window_wedge_is_flagged_by_the_write_timer",
        );
        let (offsets, _) = crate::btf::load_offsets().expect("kernel offsets");
        let layout = TimerLayout::of_kernel().expect("timer layout");
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF run-time stats");
        let t = TroubleTimer::attach(&offsets, &layout).expect("attach");
        let (_l, _reader, mut w) = crate::reset::test_support::pair();
        let (lport, rport) = (
            w.local_addr().unwrap().port(),
            w.peer_addr().unwrap().port(),
        );
        w.set_nonblocking(true).unwrap();
        let chunk = [7u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(15);
        let hits = loop {
            // Keep the queue full: the reader never reads.
            loop {
                match w.write(&chunk) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            let f = t.flagged().expect("TROUBLE_FLAGGED");
            if let Some(&(_, _, n)) = f.iter().find(|&&(l, r, _)| (l, r) == (lport, rport)) {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "the wedge {lport}->{rport} was never flagged in 15 s: {f:?}, {:?}",
                t.expiries()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(hits >= 1);
        let e = t.expiries().expect("TROUBLE_RUNS");
        assert!(e.by_pending[ICSK_TIME_PROBE0] >= 1, "{e:?}");
        assert_eq!(e.total, e.by_pending.iter().sum::<u64>(), "{e:?}");
        let (ns, runs) = t.runs().expect("run statistics");
        assert!(runs >= e.total && ns > 0, "{runs} runs, {ns} ns, {e:?}");
    }
}
