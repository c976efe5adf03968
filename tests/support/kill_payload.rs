//! The payloads the kill child pushes, shared by the child and the test:
//! a 16-byte header naming (round, thread, seq), then filler derived from
//! them, so every message in the log says which push it came from.

use millpond_suite::payload;

/// Largest filler after the header.
pub const FILLER_BYTES_MAX: u64 = 200;

fn key(round: u32, thread: u32, seq: u64) -> u64 {
    (u64::from(round) << 48) ^ (u64::from(thread) << 40) ^ seq
}

/// The payload of push `seq` of `thread` in `round`.
pub fn message(round: u32, thread: u32, seq: u64) -> Vec<u8> {
    let key = key(round, thread, seq);
    let filler = (key.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % (FILLER_BYTES_MAX + 1);
    let mut bytes = Vec::with_capacity(16 + filler as usize);
    bytes.extend_from_slice(&round.to_le_bytes());
    bytes.extend_from_slice(&thread.to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&payload(key, filler as usize));
    bytes
}

/// The (round, thread, seq) a payload claims, if it is long enough.
#[allow(dead_code, reason = "used by the test, not by the child")]
pub fn claimed(bytes: &[u8]) -> Option<(u32, u32, u64)> {
    Some((
        u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?),
        u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?),
        u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?),
    ))
}
