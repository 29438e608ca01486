//! The bench's message format: every message starts with the writer that
//! sent it, its number and when (nanoseconds on a clock all threads of the
//! process share), so receivers measure write-to-read latency and count
//! what arrived, whatever carries the bytes. The rest of the message is a
//! pattern derived from (writer, number), which every receiver checks
//! byte for byte: a reader touches every byte it is credited with, the
//! same way whatever the system, and a damaged message is caught.

use std::{sync::OnceLock, time::Instant};

/// Bytes of the stamp at the start of every message; messages are never
/// smaller than this.
pub const HEADER: usize = 20;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process's first call.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The first word of the pattern of `writer`'s `seq`th message
/// (splitmix64 of both, so neighbouring messages differ in every byte).
fn seed(writer: u32, seq: u64) -> u64 {
    let mut z = (u64::from(writer) << 48 ^ seq).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `k` of the pattern: a step from the seed, cheap to make and to
/// check, different in every word.
const STEP: u64 = 0x9E37_79B9_7F4A_7C15;

/// Fills the payload after the stamp with the pattern of (writer, seq).
fn fill_pattern(body: &mut [u8], writer: u32, seq: u64) {
    let mut word = seed(writer, seq);
    let mut chunks = body.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word.to_le_bytes());
        word = word.wrapping_add(STEP);
    }
    let tail = chunks.into_remainder();
    let len = tail.len();
    tail.copy_from_slice(&word.to_le_bytes()[..len]);
}

/// Whether `body` holds the pattern of (writer, seq), every byte read.
fn pattern_holds(body: &[u8], writer: u32, seq: u64) -> bool {
    let mut word = seed(writer, seq);
    // Differences are OR-ed rather than returned at the first one, so the
    // loop has no early exit and reads the whole payload every time.
    let mut diff = 0u64;
    let mut chunks = body.chunks_exact(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        diff |= u64::from_le_bytes(bytes) ^ word;
        word = word.wrapping_add(STEP);
    }
    let tail = chunks.remainder();
    for (byte, want) in tail.iter().zip(word.to_le_bytes()) {
        diff |= u64::from(byte ^ want);
    }
    diff == 0
}

/// Stamps `message` as the `seq`th of `writer`: the pattern first, the
/// send time last, just before it goes.
pub fn stamp(message: &mut [u8], writer: u32, seq: u64) {
    message[..4].copy_from_slice(&writer.to_le_bytes());
    message[4..12].copy_from_slice(&seq.to_le_bytes());
    fill_pattern(&mut message[HEADER..], writer, seq);
    message[12..HEADER].copy_from_slice(&now_ns().to_le_bytes());
}

/// When `message` was sent, if it carries a stamp.
pub fn sent_ns(message: &[u8]) -> Option<u64> {
    let bytes = message.get(12..HEADER)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Checks a received message: `size` bytes long, a stamp, and the pattern
/// its stamp names in every byte after it. Returns when it was sent, or
/// `None` for a damaged message.
pub fn check(message: &[u8], size: usize) -> Option<u64> {
    if message.len() != size || size < HEADER {
        return None;
    }
    let writer = u32::from_le_bytes(message[..4].try_into().ok()?);
    let seq = u64::from_le_bytes(message[4..12].try_into().ok()?);
    if !pattern_holds(&message[HEADER..], writer, seq) {
        return None;
    }
    sent_ns(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back() {
        let before = now_ns();
        let mut message = [0u8; 64];
        stamp(&mut message, 3, 99);
        let sent = sent_ns(&message).expect("stamped");
        assert!(sent >= before && sent <= now_ns());
        assert_eq!(&message[..4], &3u32.to_le_bytes());
        assert_eq!(sent_ns(&message[..10]), None);
    }

    #[test]
    fn a_stamped_message_checks_at_every_size() {
        for size in [HEADER, 21, 27, 28, 29, 64, 1000, 1024, 4096] {
            let mut message = vec![0u8; size];
            stamp(&mut message, 7, 12345);
            assert!(check(&message, size).is_some(), "size {size}");
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_after_the_stamp_is_caught() {
        for size in [21, 29, 64, 4096] {
            let mut message = vec![0u8; size];
            stamp(&mut message, 1, 2);
            for at in HEADER..size {
                for bit in [0x01, 0x80] {
                    message[at] ^= bit;
                    assert_eq!(check(&message, size), None, "size {size}, byte {at}");
                    message[at] ^= bit;
                }
            }
            assert!(check(&message, size).is_some());
        }
    }

    #[test]
    fn another_messages_payload_or_length_is_caught() {
        let mut one = vec![0u8; 64];
        let mut other = vec![0u8; 64];
        stamp(&mut one, 0, 1);
        stamp(&mut other, 0, 2);
        // One message's stamp over the next one's payload.
        other[..HEADER].copy_from_slice(&one[..HEADER]);
        assert_eq!(check(&other, 64), None);
        // Another writer, same number.
        let mut third = vec![0u8; 64];
        stamp(&mut third, 1, 1);
        third[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(check(&third, 64), None);
        // Cut short, or too long.
        assert_eq!(check(&one[..63], 64), None);
        assert_eq!(check(&one, 63), None);
    }
}
