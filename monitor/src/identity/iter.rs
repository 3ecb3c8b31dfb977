//! The kernel's holder iterator (`iter/task_file`, program `tcpstall_holders` in
//! `monitor-ebpf/src/holders.rs`): which processes hold which of a few socket inodes, found
//! in one in-kernel pass over every open file instead of a `readlink` of each under
//! `/proc/*/fd` ([`super::holders::Holders::find_with`] confirms its answer under `/proc`).
//!
//! Lifecycle of its kernel state: the program is loaded with the agent's object (where the
//! kernel refuses it, the agent walks `/proc` as before); `HOLDER_WANT` holds the wanted
//! inodes of one pass only (filled before it, emptied after it, at most
//! [`MAX_HOLDER_WANT`]); each pass attaches a link, makes one iterator from it and reads it to
//! the end, and both are closed when the pass returns.

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{HashMap, MapData};
use aya::programs::Iter;
use aya::{Btf, Ebpf};
use monitor_common::{HolderRecord, MAX_HOLDER_WANT};
use std::io::Read;

/// The loaded iterator program and its wanted-inode map.
pub struct HolderIter {
    want: HashMap<MapData, u64, u8>,
    /// Passes made, and how many of them failed (the walk answered those).
    pub passes: u64,
    pub failed: u64,
}

/// The iterator program's name in the eBPF object.
const PROG: &str = "tcpstall_holders";

impl HolderIter {
    /// Load the program of `ebpf` (not attached until a pass) and take its map.
    pub fn load(ebpf: &mut Ebpf, btf: &Btf) -> Result<HolderIter> {
        let prog: &mut Iter = ebpf
            .program_mut(PROG)
            .with_context(|| format!("program {PROG} missing from the eBPF object"))?
            .try_into()?;
        prog.load("task_file", btf)
            .map_err(|e| anyhow!("loading {PROG} (iter/task_file): {e:#}"))?;
        let want = HashMap::try_from(
            ebpf.take_map("HOLDER_WANT")
                .context("HOLDER_WANT map missing")?,
        )?;
        Ok(HolderIter {
            want,
            passes: 0,
            failed: 0,
        })
    }

    /// One pass for `inodes` (at most [`MAX_HOLDER_WANT`]; more fail the pass): every
    /// (inode, tgid, fd) of a process holding one of them.
    pub fn pass(&mut self, ebpf: &mut Ebpf, inodes: &[u64]) -> Result<Vec<(u64, u32, u32)>> {
        self.passes += 1;
        let r = self.pass_inner(ebpf, inodes);
        // Emptied whatever happened, so the map never outlives the pass's inodes.
        for ino in inodes {
            let _ = self.want.remove(ino);
        }
        if r.is_err() {
            self.failed += 1;
        }
        r
    }

    fn pass_inner(&mut self, ebpf: &mut Ebpf, inodes: &[u64]) -> Result<Vec<(u64, u32, u32)>> {
        if inodes.len() > MAX_HOLDER_WANT as usize {
            bail!(
                "{} sockets wanted, more than one pass looks for ({MAX_HOLDER_WANT})",
                inodes.len()
            );
        }
        for ino in inodes {
            self.want
                .insert(ino, 1u8, 0)
                .map_err(|e| anyhow!("HOLDER_WANT insert: {e}"))?;
        }
        let prog: &mut Iter = ebpf
            .program_mut(PROG)
            .with_context(|| format!("program {PROG} missing"))?
            .try_into()?;
        let id = prog
            .attach()
            .map_err(|e| anyhow!("attaching {PROG}: {e}"))?;
        let link = prog.take_link(id).map_err(|e| anyhow!("{e}"))?;
        let mut f = link
            .into_file()
            .map_err(|e| anyhow!("making an iterator of {PROG}: {e}"))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut empty_reads = 0u32;
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // A read that walked the kernel's per-read bound of objects without output.
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && empty_reads < 1000 => {
                    empty_reads += 1;
                }
                Err(e) => return Err(e).context("reading the holder iterator"),
            }
        }
        decode(&out)
    }
}

/// The records of a pass's output.
fn decode(bytes: &[u8]) -> Result<Vec<(u64, u32, u32)>> {
    if !bytes.len().is_multiple_of(HolderRecord::SIZE) {
        bail!(
            "holder iterator output of {} bytes is not a whole number of {}-byte records",
            bytes.len(),
            HolderRecord::SIZE
        );
    }
    Ok(bytes
        .chunks_exact(HolderRecord::SIZE)
        .map(|c| {
            let ino = u64::from_ne_bytes(c[0..8].try_into().expect("8 bytes"));
            let tgid = u32::from_ne_bytes(c[8..12].try_into().expect("4 bytes"));
            let fd = u32::from_ne_bytes(c[12..16].try_into().expect("4 bytes"));
            (ino, tgid, fd)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_in_order_and_a_torn_output_is_refused() {
        let mut b = Vec::new();
        for (ino, tgid, fd) in [(11u64, 100u32, 3u32), (12, 101, 4)] {
            b.extend_from_slice(&ino.to_ne_bytes());
            b.extend_from_slice(&tgid.to_ne_bytes());
            b.extend_from_slice(&fd.to_ne_bytes());
        }
        assert_eq!(HolderRecord::SIZE, 16);
        assert_eq!(decode(&b).unwrap(), vec![(11, 100, 3), (12, 101, 4)]);
        assert!(decode(&b[..20]).is_err());
        assert!(decode(&[]).unwrap().is_empty());
    }
}
