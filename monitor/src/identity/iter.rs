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

use crate::bpf_iter;
use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap, MapData};
use aya::programs::Iter;
use aya::{Btf, Ebpf};
use monitor_common::{HolderRecord, MAX_HOLDER_WANT};

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

    /// One pass for `inodes`: every record (inode, tgid, fd) of a process holding one of
    /// them. `Ok(None)`, with no pass made, for more than [`MAX_HOLDER_WANT`] inodes (one
    /// walk of `/proc` finds them all).
    pub fn pass(&mut self, ebpf: &mut Ebpf, inodes: &[u64]) -> Result<Option<Vec<HolderRecord>>> {
        if inodes.len() > MAX_HOLDER_WANT as usize {
            return Ok(None);
        }
        self.passes += 1;
        let r = self.pass_inner(ebpf, inodes);
        // Emptied whatever happened, so the map never outlives the pass's inodes.
        for ino in inodes {
            let _ = self.want.remove(ino);
        }
        if r.is_err() {
            self.failed += 1;
        }
        r.map(Some)
    }

    fn pass_inner(&mut self, ebpf: &mut Ebpf, inodes: &[u64]) -> Result<Vec<HolderRecord>> {
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
        let mut buf = vec![0u8; 64 * 1024];
        let (out, _) = bpf_iter::read_to_end(&mut f, &mut buf, "holder iterator")?;
        bpf_iter::records(&out, "holder iterator")
    }
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
        let rec = |ino, tgid, fd| HolderRecord { ino, tgid, fd };
        assert_eq!(
            bpf_iter::records::<HolderRecord>(&b, "t").unwrap(),
            vec![rec(11, 100, 3), rec(12, 101, 4)]
        );
        assert!(bpf_iter::records::<HolderRecord>(&b[..20], "t").is_err());
        assert!(bpf_iter::records::<HolderRecord>(&[], "t")
            .unwrap()
            .is_empty());
    }
}
