//! Test data: a deterministic byte pattern that can be generated and checked on the fly at
//! memcmp speed (for GiB streams, where sha256 in a debug build is too slow), and [`sha256_hex`].

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::OnceLock;

/// PATTERN_PERIOD is the period of the test byte pattern: a prime, so that a dropped or
/// repeated block of any power-of-two size shows up as a mismatch.
pub const PATTERN_PERIOD: usize = 1_048_573;

/// The pattern, two periods long so that any window of up to one period is contiguous.
fn pattern_buf() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut v = Vec::with_capacity(2 * PATTERN_PERIOD);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while v.len() < PATTERN_PERIOD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(PATTERN_PERIOD);
        v.extend_from_within(..PATTERN_PERIOD);
        v
    })
}

/// The pattern bytes at stream offset `pos`, `len <= PATTERN_PERIOD` of them.
pub fn pattern_at(pos: u64, len: usize) -> &'static [u8] {
    assert!(len <= PATTERN_PERIOD);
    let o = (pos % PATTERN_PERIOD as u64) as usize;
    &pattern_buf()[o..o + len]
}

/// The first `len` bytes of the pattern as an owned buffer.
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (len - v.len()).min(PATTERN_PERIOD);
        v.extend_from_slice(pattern_at(v.len() as u64, n));
    }
    v
}

/// PatternCheck verifies a stream against the pattern as it arrives.
#[derive(Debug, Clone, Default)]
pub struct PatternCheck {
    /// Bytes seen so far.
    pub len: u64,
    /// Offset of the first byte that differed from the pattern.
    pub first_mismatch: Option<u64>,
}

impl PatternCheck {
    /// Checks the next piece of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min(PATTERN_PERIOD);
            if self.first_mismatch.is_none() && data[..n] != *pattern_at(self.len, n) {
                let exp = pattern_at(self.len, n);
                let i = data[..n]
                    .iter()
                    .zip(exp)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                self.first_mismatch = Some(self.len + i as u64);
            }
            self.len += n as u64;
            data = &data[n..];
        }
    }

    /// Whether everything so far matched.
    pub fn ok(&self) -> bool {
        self.first_mismatch.is_none()
    }
}

/// Writes `len` pattern bytes to `w`, raw (`chunk = None`) or as chunks of that size.
pub fn write_pattern(w: &mut impl Write, len: u64, chunk: Option<usize>) -> io::Result<()> {
    let piece = chunk.unwrap_or(256 * 1024);
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(piece);
        let data = pattern_at(pos, n);
        if chunk.is_some() {
            let mut framed = Vec::with_capacity(n + 16);
            write!(framed, "{n:x}\r\n").expect("writing to a Vec cannot fail");
            framed.extend_from_slice(data);
            framed.extend_from_slice(b"\r\n");
            w.write_all(&framed)?;
        } else {
            w.write_all(data)?;
        }
        pos += n as u64;
    }
    if chunk.is_some() {
        w.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

/// The lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
