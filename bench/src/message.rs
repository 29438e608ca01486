//! The bench's message format: every message starts with the writer that
//! sent it, its number and when (nanoseconds on a clock all threads of the
//! process share), so receivers measure write-to-read latency and count
//! what arrived, whatever carries the bytes.

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

/// Stamps `message` as the `seq`th of `writer`, sent now.
pub fn stamp(message: &mut [u8], writer: u32, seq: u64) {
    message[..4].copy_from_slice(&writer.to_le_bytes());
    message[4..12].copy_from_slice(&seq.to_le_bytes());
    message[12..HEADER].copy_from_slice(&now_ns().to_le_bytes());
}

/// When `message` was sent, if it carries a stamp.
pub fn sent_ns(message: &[u8]) -> Option<u64> {
    let bytes = message.get(12..HEADER)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
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
}
