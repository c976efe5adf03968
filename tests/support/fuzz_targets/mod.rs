//! The fuzz targets, as ordinary functions: `fuzz/fuzz_targets/*.rs` call
//! them under libFuzzer, and `tests/fuzz_corpus_replay.rs` replays the
//! committed corpora through them on stable Rust.
//!
//! Each target takes arbitrary bytes and checks invariants, not only that
//! nothing panics:
//!
//! - [`frame_decode`], [`index_decode`], [`journal_decode`] and
//!   [`checkpoint_decode`] compare a decoder with an independent reference
//!   decoder written from `docs/format.md` (with its own CRC-32), and check
//!   that what decodes re-encodes to the same bytes.
//! - [`segment_recover`] plants the bytes as the newest and as a sealed
//!   segment of an in-memory store, opens it under both recovery modes and
//!   reads everything back through the reader, point reads and a consumer
//!   group: every message handed out is a frame with a valid CRC in the
//!   bytes, no valid frame after damage is lost, and failures are
//!   `Corruption` or `UnsupportedVersion` only.
//! - [`ops_vs_model`] runs the bytes as queue and group operations against
//!   a small reference model: nothing acked comes back, nothing unacked is
//!   lost, attempts are counted.

mod decoders;
mod ops;
mod recover;
mod seeds;

pub use decoders::{checkpoint_decode, frame_decode, index_decode, journal_decode};
pub use ops::ops_vs_model;
pub use recover::segment_recover;
pub use seeds::seeds;

/// A fuzz target: takes arbitrary bytes, panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` spell it.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_decode", frame_decode),
    ("segment_recover", segment_recover),
    ("index_decode", index_decode),
    ("journal_decode", journal_decode),
    ("checkpoint_decode", checkpoint_decode),
    ("ops_vs_model", ops_vs_model),
];

/// CRC-32/ISO-HDLC (the zlib CRC), written here from its definition so the
/// targets do not check the engine's checksums with the engine's crate.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_check_value() {
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(super::crc32(b""), 0);
    }
}
