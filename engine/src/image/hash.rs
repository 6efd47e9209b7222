//! The checksum of every image file: XXH3-64 (seed 0), written in the
//! manifest as 16 lower-case hex digits. The implementation picks its vector
//! instructions when it runs (AVX2 where the CPU has them), so one build is
//! fast on every x86-64 machine; the digest is the same whichever it picks.

use std::hash::Hasher;

/// A running XXH3-64 of the bytes given so far.
pub struct Checksum(twox_hash::XxHash3_64);

impl Checksum {
    pub fn new() -> Self {
        Checksum(twox_hash::XxHash3_64::with_seed(0))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    pub fn digest(&self) -> u64 {
        self.0.finish()
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

/// XXH3-64 of `bytes`.
pub fn xxh3_64(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published XXH3-64 digests (seed 0): images written by any build
    /// verify with any other.
    #[test]
    fn known_digests() {
        assert_eq!(xxh3_64(b""), 0x2d06800538d394c2);
        assert_eq!(xxh3_64(b"a"), 0xe6c632b61e964e1f);
        assert_eq!(xxh3_64(b"abc"), 0x78af5f94892f3950);
    }

    #[test]
    fn streamed_equals_one_shot() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + i / 4096) as u8).collect();
        for len in [
            0, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 4096, 100_000, 300_000,
        ] {
            let mut c = Checksum::new();
            let (a, b) = data[..len].split_at(len / 3);
            c.update(a);
            c.update(b);
            assert_eq!(c.digest(), xxh3_64(&data[..len]), "length {len}");
        }
    }
}
