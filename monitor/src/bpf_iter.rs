//! Reading a BPF iterator (a `read(2)` of it runs its program over the objects it walks):
//! to the end, then as fixed-size records. Shared by the holder iterator
//! (`identity/iter.rs`) and the benchmark's tick-time scan (`scan.rs`).

use anyhow::{bail, Context, Result};
use std::io::Read;

/// Reads of one iterator at most: a read that walked the kernel's per-read bound of objects
/// without output fails with EAGAIN and is retried, up to this many reads in all.
pub const MAX_READS: u32 = 1000;

/// Read `f`, an iterator, to its end through `buf`: its output, and how many reads it took.
/// `what` names it in errors.
pub fn read_to_end(f: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut reads = 0u32;
    loop {
        reads += 1;
        match f.read(buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && reads < MAX_READS => continue,
            Err(e) => return Err(e).with_context(|| format!("reading the {what}")),
        }
    }
    Ok((out, reads))
}

/// An iterator's output as records of `T` (a whole number of them, or an error naming
/// `what`).
pub fn records<T: aya::Pod>(bytes: &[u8], what: &str) -> Result<Vec<T>> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        bail!(
            "{what} output of {} bytes is not a whole number of {size}-byte records",
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(size)
        // SAFETY: T is Pod (plain data, every bit pattern valid); the chunk has exactly its
        // size, read unaligned.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const T) })
        .collect())
}
