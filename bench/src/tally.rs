//! What receivers count: messages (checked whole, see `message::check`),
//! bytes, damaged messages, arrivals inside the write window and a latency
//! histogram each, merged at the end; and what all receivers share with
//! the harness: a counter it watches to know when delivery has settled,
//! and the end of the write window.

use crate::message;
use anyhow::Result;
use hdrhistogram::Histogram;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// Latencies from 1 µs to 100 s at 3 significant digits.
fn histogram() -> Histogram<u64> {
    // The bounds are constants that HdrHistogram accepts.
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

pub struct Tally {
    /// Messages received whole and intact.
    pub messages: u64,
    /// Of those, the ones that arrived before the write window closed.
    pub in_window: u64,
    pub bytes: u64,
    /// Messages whose length or pattern was wrong (never counted above).
    pub corrupt: u64,
    pub latency: Histogram<u64>,
    /// The size every message must have (0 for a sum of tallies).
    size: usize,
    shared: Option<Arc<Progress>>,
}

impl Default for Tally {
    /// An empty sum, for merging receivers' tallies into.
    fn default() -> Self {
        Tally {
            messages: 0,
            in_window: 0,
            bytes: 0,
            corrupt: 0,
            latency: histogram(),
            size: 0,
            shared: None,
        }
    }
}

impl Tally {
    /// A receiver's tally of `size`-byte messages, in the run `progress`
    /// belongs to.
    pub fn new(size: usize, progress: &Arc<Progress>) -> Self {
        Tally {
            size,
            shared: Some(progress.clone()),
            ..Tally::default()
        }
    }

    /// Checks and counts one received message.
    pub fn record(&mut self, message: &[u8]) {
        let checked = message::check(message, self.size);
        self.record_checked(checked, message.len());
    }

    /// The size every message must have.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Counts one message checked in place (`message::check` on its bytes,
    /// `len` long): for readers that must confirm the bytes were not
    /// reused while they read them before the message counts.
    pub fn record_checked(&mut self, checked: Option<u64>, len: usize) {
        let Some(sent) = checked else {
            self.corrupt += 1;
            return;
        };
        let now = message::now_ns();
        self.messages += 1;
        self.bytes += len as u64;
        if self
            .shared
            .as_ref()
            .is_none_or(|shared| now <= shared.window_end())
        {
            self.in_window += 1;
        }
        self.latency
            .saturating_record(now.saturating_sub(sent).max(1_000));
    }

    /// Counts every whole message in `chunk` (stream reads return whole
    /// messages back to back); a piece left over is damage. Returns how
    /// many messages the chunk held, damaged ones included, for progress.
    pub fn record_chunk(&mut self, chunk: &[u8]) -> u64 {
        let size = self.size.max(1);
        let mut count = 0;
        let mut messages = chunk.chunks_exact(size);
        for message in &mut messages {
            self.record(message);
            count += 1;
        }
        if !messages.remainder().is_empty() {
            self.corrupt += 1;
            count += 1;
        }
        count
    }

    pub fn merge(&mut self, other: Tally) -> Result<()> {
        self.messages += other.messages;
        self.in_window += other.in_window;
        self.bytes += other.bytes;
        self.corrupt += other.corrupt;
        self.latency.add(other.latency)?;
        Ok(())
    }
}

/// What the receivers of one run share with the harness: messages
/// delivered so far, all receivers together, and when the write window
/// closed (`now_ns`; `u64::MAX` while it is open).
pub struct Progress {
    delivered: AtomicU64,
    window_end: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            delivered: AtomicU64::new(0),
            window_end: AtomicU64::new(u64::MAX),
        }
    }
}

impl Progress {
    pub fn add(&self, messages: u64) {
        self.delivered.fetch_add(messages, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Sets when the write window closes (`message::now_ns` time): later
    /// arrivals are drain, not counted as delivered inside it.
    pub fn close_window_at(&self, end_ns: u64) {
        self.window_end.store(end_ns, Ordering::Release);
    }

    fn window_end(&self) -> u64 {
        self.window_end.load(Ordering::Acquire)
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
        count += tally.record_chunk(&bytes[..whole]);
        self.partial.extend_from_slice(&bytes[whole..]);
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(count: u64, size: usize) -> Vec<u8> {
        let mut stream = Vec::new();
        for seq in 0..count {
            let mut message = vec![0u8; size];
            message::stamp(&mut message, 0, seq);
            stream.extend_from_slice(&message);
        }
        stream
    }

    #[test]
    fn messages_cut_anywhere_are_counted_once() {
        let progress = Arc::new(Progress::default());
        let mut tally = Tally::new(32, &progress);
        let mut joiner = Reassembler::new(32);
        let mut total = 0;
        for piece in stream(10, 32).chunks(7) {
            total += joiner.feed(piece, &mut tally);
        }
        assert_eq!((total, tally.messages, tally.bytes), (10, 10, 320));
        assert_eq!((tally.corrupt, tally.in_window), (0, 10));
        assert_eq!(tally.latency.len(), 10);
    }

    #[test]
    fn a_damaged_message_is_counted_as_corrupt_not_delivered() {
        let progress = Arc::new(Progress::default());
        let mut tally = Tally::new(64, &progress);
        let mut bytes = stream(4, 64);
        bytes[64 + 40] ^= 0x10;
        assert_eq!(tally.record_chunk(&bytes), 4);
        assert_eq!((tally.messages, tally.corrupt, tally.bytes), (3, 1, 192));
        // A piece of a message at the end of a read is damage too.
        assert_eq!(tally.record_chunk(&bytes[..100]), 2);
        assert_eq!((tally.messages, tally.corrupt), (4, 2));
    }

    #[test]
    fn arrivals_after_the_window_closed_are_not_in_it() {
        let progress = Arc::new(Progress::default());
        let mut tally = Tally::new(64, &progress);
        let bytes = stream(5, 64);
        tally.record_chunk(&bytes[..3 * 64]);
        progress.close_window_at(message::now_ns());
        tally.record_chunk(&bytes[3 * 64..]);
        assert_eq!((tally.messages, tally.in_window), (5, 3));
        let mut total = Tally::default();
        total.merge(tally).expect("merge");
        assert_eq!((total.messages, total.in_window), (5, 3));
    }
}
