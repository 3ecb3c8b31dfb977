//! The deterministic byte stream servers write and clients verify.
//!
//! Byte `o` of the stream with seed `s` is byte `o % 8` (little endian) of the 64-bit word
//! `splitmix64(s + o / 8)`. Any window of the stream can be produced or checked from its
//! offset alone, so a client can verify what it reads without coordination, and a dropped,
//! duplicated or corrupted byte shows up at the offset where it happened.

/// SplitMix64 finaliser: a bijective, well-mixed function of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fill `buf` with the stream `seed` starting at byte `offset`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut o = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix64(seed.wrapping_add(o / 8)).to_le_bytes();
        let start = (o % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[start..start + n]);
        i += n;
        o += n as u64;
    }
}

/// Checks consecutive reads against the stream `seed`, from offset 0.
#[derive(Debug)]
pub struct Verifier {
    seed: u64,
    offset: u64,
    first_mismatch: Option<u64>,
    scratch: Vec<u8>,
}

impl Verifier {
    /// A verifier expecting the stream `seed` from its first byte.
    pub fn new(seed: u64) -> Verifier {
        Verifier {
            seed,
            offset: 0,
            first_mismatch: None,
            scratch: Vec::new(),
        }
    }

    /// Check the next `data.len()` bytes of the stream.
    pub fn update(&mut self, data: &[u8]) {
        if self.first_mismatch.is_none() {
            self.scratch.resize(data.len(), 0);
            fill(self.seed, self.offset, &mut self.scratch);
            if let Some(i) = self.scratch.iter().zip(data).position(|(a, b)| a != b) {
                self.first_mismatch = Some(self.offset + i as u64);
            }
        }
        self.offset += data.len() as u64;
    }

    /// Bytes checked so far.
    pub fn bytes(&self) -> u64 {
        self.offset
    }

    /// Offset of the first byte that differed from the stream, if any.
    pub fn first_mismatch(&self) -> Option<u64> {
        self.first_mismatch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_offset_consistent() {
        let mut whole = vec![0u8; 1000];
        fill(7, 0, &mut whole);
        for (start, len) in [(0, 1), (3, 17), (8, 8), (13, 500), (999, 1)] {
            let mut part = vec![0u8; len];
            fill(7, start as u64, &mut part);
            assert_eq!(part, whole[start..start + len], "window {start}+{len}");
        }
    }

    #[test]
    fn seeds_differ() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fill(1, 0, &mut a);
        fill(2, 0, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn verifier_accepts_the_stream_in_any_split_and_finds_corruption() {
        let mut data = vec![0u8; 4096];
        fill(42, 0, &mut data);
        let mut v = Verifier::new(42);
        for chunk in data.chunks(333) {
            v.update(chunk);
        }
        assert_eq!(v.bytes(), 4096);
        assert_eq!(v.first_mismatch(), None);

        data[2049] ^= 0x10;
        let mut v = Verifier::new(42);
        for chunk in data.chunks(1000) {
            v.update(chunk);
        }
        assert_eq!(v.first_mismatch(), Some(2049));

        // A dropped byte shifts everything after it.
        let mut v = Verifier::new(42);
        v.update(&data[..100]);
        v.update(&data[101..200]);
        let at = v.first_mismatch().expect("a dropped byte must be detected");
        assert!((100..116).contains(&at), "detected at {at}");
    }
}
