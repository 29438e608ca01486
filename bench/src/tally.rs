//! What receivers count: messages, bytes and a latency histogram each,
//! merged at the end; and a shared counter the harness watches to know
//! when delivery has settled.

use crate::message;
use anyhow::Result;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};

/// Latencies from 1 µs to 100 s at 3 significant digits.
fn histogram() -> Histogram<u64> {
    // The bounds are constants that HdrHistogram accepts.
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

pub struct Tally {
    pub messages: u64,
    pub bytes: u64,
    pub latency: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            messages: 0,
            bytes: 0,
            latency: histogram(),
        }
    }
}

impl Tally {
    /// Counts one received message.
    pub fn record(&mut self, message: &[u8]) {
        self.record_stamp(message::sent_ns(message), message.len());
    }

    /// Counts one message read in place: its length and its stamp (`None`
    /// for a message too short to carry one).
    pub fn record_stamp(&mut self, sent_ns: Option<u64>, len: usize) {
        self.messages += 1;
        self.bytes += len as u64;
        if let Some(sent) = sent_ns {
            let latency = message::now_ns().saturating_sub(sent);
            self.latency.saturating_record(latency.max(1_000));
        }
    }

    /// Counts every whole `size`-byte message in `chunk` (stream reads
    /// return whole messages back to back).
    pub fn record_chunk(&mut self, chunk: &[u8], size: usize) -> u64 {
        let mut count = 0;
        for message in chunk.chunks_exact(size) {
            self.record(message);
            count += 1;
        }
        count
    }

    pub fn merge(&mut self, other: Tally) -> Result<()> {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.latency.add(other.latency)?;
        Ok(())
    }
}

/// Messages delivered so far, all receivers together.
#[derive(Default)]
pub struct Progress(AtomicU64);

impl Progress {
    pub fn add(&self, messages: u64) {
        self.0.fetch_add(messages, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Reassembles fixed-size messages from a byte stream that may cut them
/// anywhere (a pipe).
pub struct Reassembler {
    size: usize,
    partial: Vec<u8>,
}

impl Reassembler {
    pub fn new(size: usize) -> Self {
        Reassembler {
            size,
            partial: Vec::with_capacity(size),
        }
    }

    /// Feeds `bytes`; records each completed message; returns how many.
    pub fn feed(&mut self, mut bytes: &[u8], tally: &mut Tally) -> u64 {
        let mut count = 0;
        if !self.partial.is_empty() {
            let take = (self.size - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() < self.size {
                return 0;
            }
            tally.record(&self.partial);
            self.partial.clear();
            count += 1;
        }
        let whole = bytes.len() / self.size * self.size;
        count += tally.record_chunk(&bytes[..whole], self.size);
        self.partial.extend_from_slice(&bytes[whole..]);
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cut_anywhere_are_counted_once() {
        let mut stream = Vec::new();
        for seq in 0..10 {
            let mut message = vec![0u8; 32];
            message::stamp(&mut message, 0, seq);
            stream.extend_from_slice(&message);
        }
        let mut tally = Tally::default();
        let mut joiner = Reassembler::new(32);
        let mut total = 0;
        for piece in stream.chunks(7) {
            total += joiner.feed(piece, &mut tally);
        }
        assert_eq!((total, tally.messages, tally.bytes), (10, 10, 320));
        assert_eq!(tally.latency.len(), 10);
    }
}
