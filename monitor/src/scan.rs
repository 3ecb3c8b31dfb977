//! The tick-time scan (issue 14): instead of a hook on every write, one walk of every TCP
//! socket per tick by a BPF TCP socket iterator (`iter/tcp`, program `tcpstall_scan` in
//! `monitor-ebpf/src/scan.rs`), which writes a [`ScanRecord`] for each socket with send data
//! outstanding. Comparing two passes ([`compare`]) tells a stuck socket (data queued, `snd_una`
//! unchanged) from one making progress.
//!
//! Only the benchmark uses this (to measure the design); the agent never loads the program.

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{links::FdLink, links::PinnedLink, Iter},
    Ebpf,
};
use monitor_common::Offsets;
pub use monitor_common::ScanRecord;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The scan program loaded and attached; its link pinned at `pin` so that every pass is a
/// new iterator (opening a pinned iterator link makes one). The pin is removed on drop.
pub struct Scan {
    pin: PathBuf,
    link: Option<PinnedLink>,
    _ebpf: Ebpf,

    buf: Vec<u8>,
}

/// One pass over every TCP socket.
#[derive(Clone, Debug)]
pub struct Pass {
    /// The sockets with send data outstanding.
    pub records: Vec<ScanRecord>,
    /// CPU time of the calling thread for open + read to EOF (the walk runs in read(2)).
    pub cpu_ns: u64,
    /// Wall time of the same.
    pub wall_ns: u64,
    /// read(2) calls it took.
    pub reads: u32,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Scan {
    /// Load the object with the running kernel's `offsets`, load and attach only the scan
    /// program, and pin its link at `pin` (a path on bpffs; an old file there is replaced).
    pub fn load(offsets: &Offsets, pin: &Path) -> Result<Scan> {
        // The object's maps are made too; the scan uses none of them.
        let (mut ebpf, btf) = crate::probes::load_for_measurement(offsets, 1)?;
        let prog: &mut Iter = ebpf
            .program_mut("tcpstall_scan")
            .context("program tcpstall_scan missing from the eBPF object")?
            .try_into()?;
        prog.load("tcp", &btf)
            .map_err(|e| anyhow!("loading tcpstall_scan (iter/tcp): {e:#}"))?;
        let id = prog
            .attach()
            .map_err(|e| anyhow!("attaching tcpstall_scan: {e}"))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|e| anyhow!("{e}"))?
            .try_into()
            .map_err(|e| anyhow!("iterator link: {e}"))?;
        let _ = std::fs::remove_file(pin);
        let link = link
            .pin(pin)
            .map_err(|e| anyhow!("pinning the iterator link at {}: {e}", pin.display()))?;
        Ok(Scan {
            pin: pin.to_path_buf(),
            link: Some(link),
            _ebpf: ebpf,
            buf: vec![0; 1 << 20],
        })
    }

    fn prog(&self) -> Result<&Iter> {
        Ok(self
            ._ebpf
            .program("tcpstall_scan")
            .context("program tcpstall_scan missing")?
            .try_into()?)
    }

    /// The program's cumulative (run time ns, runs): counted only while BPF run-time
    /// statistics are enabled (`aya::sys::enable_stats`). It runs once per socket walked and
    /// once more at the end of each walk.
    pub fn runs(&self) -> Result<(u64, u64)> {
        let info = self
            .prog()?
            .info()
            .map_err(|e| anyhow!("program info: {e}"))?;
        Ok((info.run_time().as_nanos() as u64, info.run_count()))
    }

    /// The program's kernel id.
    pub fn prog_id(&self) -> Option<u32> {
        Some(self.prog().ok()?.info().ok()?.id())
    }

    /// Instructions the verifier processed when it accepted the program.
    pub fn verified_insns(&self) -> Option<u32> {
        self.prog().ok()?.info().ok()?.verified_instruction_count()
    }

    /// One pass: open a new iterator and read it to the end.
    pub fn pass(&mut self) -> Result<Pass> {
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        let mut f = std::fs::File::open(&self.pin)
            .with_context(|| format!("opening the iterator {}", self.pin.display()))?;
        let (out, reads) =
            crate::bpf_iter::read_to_end(&mut f, &mut self.buf, "TCP socket iterator")?;
        let wall_ns = t0.elapsed().as_nanos() as u64;
        let cpu_ns = thread_cpu_ns().saturating_sub(c0);
        drop(f);
        Ok(Pass {
            records: decode(&out)?,
            cpu_ns,
            wall_ns,
            reads,
        })
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        if let Some(l) = self.link.take() {
            // Unpinning removes the file; the link (and program) go with the last fd.
            if l.unpin().is_err() {
                let _ = std::fs::remove_file(&self.pin);
            }
        }
    }
}

/// The records of one pass's output (a whole number of fixed-size records).
pub fn decode(bytes: &[u8]) -> Result<Vec<ScanRecord>> {
    crate::bpf_iter::records(bytes, "scan")
}

/// What two consecutive passes say about one socket of the later pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not in the earlier pass (it had nothing outstanding then, or is new).
    New,
    /// `snd_una` moved forward by this many bytes.
    Advanced(u32),
    /// Data outstanding in both passes and `snd_una` did not move.
    Stuck,
}

/// A socket's identity across passes: its address and ports (an address reused by a new
/// socket in between normally comes with other ports).
fn key(r: &ScanRecord) -> (u64, u16, u16) {
    (r.sk, r.lport, r.rport)
}

/// Compare pass `cur` with the pass before it, socket by socket (in `cur`'s order).
pub fn compare(prev: &[ScanRecord], cur: &[ScanRecord]) -> Vec<(ScanRecord, Progress)> {
    let before: HashMap<_, &ScanRecord> = prev.iter().map(|r| (key(r), r)).collect();
    cur.iter()
        .map(|r| {
            let p = match before.get(&key(r)) {
                None => Progress::New,
                Some(b) if b.snd_una == r.snd_una => Progress::Stuck,
                Some(b) => Progress::Advanced(r.snd_una.wrapping_sub(b.snd_una)),
            };
            (*r, p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sk: u64, una: u32, write: u32) -> ScanRecord {
        ScanRecord {
            sk,
            lport: 7300,
            rport: 40000 + sk as u16,
            family: 2,
            state: 1,
            snd_una: una,
            write_seq: write,
            snd_nxt: write,
            ..Default::default()
        }
    }

    fn bytes(rs: &[ScanRecord]) -> Vec<u8> {
        let mut v = Vec::new();
        for r in rs {
            // SAFETY: plain data of that size.
            let b = unsafe {
                std::slice::from_raw_parts(r as *const ScanRecord as *const u8, ScanRecord::SIZE)
            };
            v.extend_from_slice(b);
        }
        v
    }

    #[test]
    fn record_layout_is_64_bytes() {
        assert_eq!(ScanRecord::SIZE, 64);
        assert_eq!(std::mem::offset_of!(ScanRecord, write_seq), 48);
    }

    #[test]
    fn decodes_whole_records_only() {
        let rs = [rec(1, 10, 20), rec(2, 5, 9)];
        let b = bytes(&rs);
        assert_eq!(decode(&b).unwrap(), rs);
        assert!(decode(&[]).unwrap().is_empty());
        assert!(decode(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn compares_passes() {
        let prev = [rec(1, 100, 200), rec(2, u32::MAX - 9, 50)];
        let cur = [rec(1, 100, 300), rec(2, 10, 60), rec(3, 0, 1)];
        let c = compare(&prev, &cur);
        assert_eq!(
            c.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            [Progress::Stuck, Progress::Advanced(20), Progress::New]
        );
        // Same address, other ports: another socket.
        let mut other = rec(1, 100, 200);
        other.rport = 1;
        assert_eq!(compare(&prev, &[other])[0].1, Progress::New);
    }
}
