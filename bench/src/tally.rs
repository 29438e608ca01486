//! What receivers count: messages (checked whole, see `message::check`),
//! bytes, damaged messages, arrivals inside the write window and a latency
//! histogram each, merged at the end; and what all receivers share with
//! the harness: a counter it watches to know when delivery has settled,
//! and the end of the write window.

use crate::message::{self, Sizes, HEADER};
use crate::shared::{CrossProcess, Shared};
use anyhow::Result;
use hdrhistogram::Histogram;
use std::{
    os::fd::{BorrowedFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
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
    /// The sizes messages must have (`Fixed(0)` for a sum of tallies).
    sizes: Sizes,
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
            sizes: Sizes::Fixed(0),
            shared: None,
        }
    }
}

impl Tally {
    /// A receiver's tally of messages of `sizes`, in the run `progress`
    /// belongs to.
    pub fn new(sizes: Sizes, progress: &Arc<Progress>) -> Self {
        Tally {
            sizes,
            shared: Some(progress.clone()),
            ..Tally::default()
        }
    }

    /// Checks and counts one received message.
    pub fn record(&mut self, message: &[u8]) {
        let checked = message::check(message, self.sizes);
        self.record_checked(checked, message.len());
    }

    /// The sizes messages must have.
    pub fn sizes(&self) -> Sizes {
        self.sizes
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
        let (mut count, end) = self.record_whole(chunk);
        if end < chunk.len() {
            self.corrupt += 1;
            count += 1;
        }
        count
    }

    /// Counts the whole messages at the start of `bytes`, back to back;
    /// returns how many and where the first one cut short starts (the
    /// end of `bytes` if none is). One size cuts at multiples of it, as
    /// fast as ever; a mix cuts where each message's stamp says it ends
    /// (a damaged stamp puts the cuts wrong, and the messages after it
    /// count as damaged: the run fails either way).
    fn record_whole(&mut self, bytes: &[u8]) -> (u64, usize) {
        let mut count = 0;
        match self.sizes {
            Sizes::Fixed(size) => {
                let mut messages = bytes.chunks_exact(size.max(1));
                for message in &mut messages {
                    self.record(message);
                    count += 1;
                }
                (count, bytes.len() - messages.remainder().len())
            }
            Sizes::Mixed { .. } => {
                let mut at = 0;
                while let Some(message) = message::stamped_len(&bytes[at..], self.sizes)
                    .and_then(|len| bytes.get(at..at + len))
                {
                    self.record(message);
                    count += 1;
                    at += message.len();
                }
                (count, at)
            }
        }
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
/// closed (`now_ns`; `u64::MAX` while it is open). It lives in memory the
/// writers' process maps too (`Progress::fd`): the first writer past the
/// start line sets the window's end there.
pub struct Progress {
    cells: Shared<Cells>,
}

struct Cells {
    delivered: AtomicU64,
    window_end: AtomicU64,
}

// SAFETY: two atomic integers.
unsafe impl CrossProcess for Cells {}

impl Progress {
    pub fn new() -> Result<Self> {
        Ok(Progress {
            cells: Shared::new(Cells {
                delivered: AtomicU64::new(0),
                window_end: AtomicU64::new(u64::MAX),
            })?,
        })
    }

    /// The writers' process's view of the harness's `Progress`.
    pub fn open(fd: OwnedFd) -> Result<Self> {
        Ok(Progress {
            cells: Shared::open(fd)?,
        })
    }

    /// The memory to hand the writers' process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.cells.fd()
    }

    pub fn add(&self, messages: u64) {
        self.cells.delivered.fetch_add(messages, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.cells.delivered.load(Ordering::Relaxed)
    }

    /// Sets when the write window closes (`message::now_ns` time): later
    /// arrivals are drain, not counted as delivered inside it.
    pub fn close_window_at(&self, end_ns: u64) {
        self.cells.window_end.store(end_ns, Ordering::Release);
    }

    fn window_end(&self) -> u64 {
        self.cells.window_end.load(Ordering::Acquire)
    }
}

/// Reassembles messages from a byte stream that may cut them anywhere (a
/// pipe): of one size, or of a mix, each as long as its stamp says.
pub struct Reassembler {
    sizes: Sizes,
    partial: Vec<u8>,
}

impl Reassembler {
    pub fn new(sizes: Sizes) -> Self {
        Reassembler {
            sizes,
            partial: Vec::with_capacity(sizes.max()),
        }
    }

    /// Moves bytes from the front of `bytes` to the message begun until
    /// it holds `len` (or `bytes` run out).
    fn take(&mut self, bytes: &mut &[u8], len: usize) {
        let take = len.saturating_sub(self.partial.len()).min(bytes.len());
        self.partial.extend_from_slice(&bytes[..take]);
        *bytes = &bytes[take..];
    }

    /// Feeds `bytes`; records each completed message; returns how many.
    pub fn feed(&mut self, mut bytes: &[u8], tally: &mut Tally) -> u64 {
        let mut count = 0;
        if !self.partial.is_empty() {
            // Its stamp first: a mixed message's length is in it.
            if self.sizes.is_mixed() {
                self.take(&mut bytes, HEADER);
            }
            let Some(len) = message::stamped_len(&self.partial, self.sizes) else {
                return 0;
            };
            self.take(&mut bytes, len);
            if self.partial.len() < len {
                return 0;
            }
            tally.record(&self.partial);
            self.partial.clear();
            count += 1;
        }
        let (whole, end) = tally.record_whole(bytes);
        self.partial.extend_from_slice(&bytes[end..]);
        count + whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(count: u64, size: usize) -> Vec<u8> {
        mixed_stream(count, Sizes::Fixed(size))
    }

    /// `count` messages of one writer back to back, as a pipe or a kchat
    /// stream read carries them.
    fn mixed_stream(count: u64, sizes: Sizes) -> Vec<u8> {
        let mut stamper = message::Stamper::new(0, sizes);
        let mut stream = Vec::new();
        for _ in 0..count {
            let at = stream.len();
            stream.resize(at + stamper.next_len(), 0);
            stamper.fill(&mut stream[at..]);
        }
        stream
    }

    const MIX: Sizes = Sizes::Mixed { min: 20, max: 100 };

    #[test]
    fn messages_cut_anywhere_are_counted_once() {
        let progress = Arc::new(Progress::new().expect("progress"));
        let mut tally = Tally::new(Sizes::Fixed(32), &progress);
        let mut joiner = Reassembler::new(Sizes::Fixed(32));
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
        let progress = Arc::new(Progress::new().expect("progress"));
        let mut tally = Tally::new(Sizes::Fixed(64), &progress);
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
        let progress = Arc::new(Progress::new().expect("progress"));
        let mut tally = Tally::new(Sizes::Fixed(64), &progress);
        let bytes = stream(5, 64);
        tally.record_chunk(&bytes[..3 * 64]);
        progress.close_window_at(message::now_ns());
        tally.record_chunk(&bytes[3 * 64..]);
        assert_eq!((tally.messages, tally.in_window), (5, 3));
        let mut total = Tally::default();
        total.merge(tally).expect("merge");
        assert_eq!((total.messages, total.in_window), (5, 3));
    }

    #[test]
    fn mixed_messages_cut_at_every_offset_are_counted_once() {
        let bytes = mixed_stream(40, MIX);
        let total_len = bytes.len() as u64;
        // One cut anywhere, then pieces of every length.
        for cut in 0..=bytes.len() {
            let progress = Arc::new(Progress::new().expect("progress"));
            let mut tally = Tally::new(MIX, &progress);
            let mut joiner = Reassembler::new(MIX);
            let total =
                joiner.feed(&bytes[..cut], &mut tally) + joiner.feed(&bytes[cut..], &mut tally);
            assert_eq!(
                (total, tally.messages, tally.corrupt),
                (40, 40, 0),
                "cut at {cut}"
            );
            assert_eq!(tally.bytes, total_len);
        }
        for piece in 1..=MIX.max() + 1 {
            let progress = Arc::new(Progress::new().expect("progress"));
            let mut tally = Tally::new(MIX, &progress);
            let mut joiner = Reassembler::new(MIX);
            let total: u64 = bytes
                .chunks(piece)
                .map(|p| joiner.feed(p, &mut tally))
                .sum();
            assert_eq!(
                (total, tally.messages, tally.corrupt),
                (40, 40, 0),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_chunk_of_mixed_messages_splits_where_their_stamps_say() {
        let progress = Arc::new(Progress::new().expect("progress"));
        let mut tally = Tally::new(MIX, &progress);
        let bytes = mixed_stream(50, MIX);
        assert_eq!(tally.record_chunk(&bytes), 50);
        assert_eq!((tally.messages, tally.corrupt), (50, 0));
        assert_eq!(tally.bytes, bytes.len() as u64);
        // Cut anywhere but between messages, the piece left is damage.
        let mut ends = vec![0];
        let mut stamper = message::Stamper::new(0, MIX);
        for _ in 0..50 {
            ends.push(ends[ends.len() - 1] + stamper.next_len());
            stamper.fill(&mut vec![0u8; stamper.next_len()]);
        }
        for cut in 1..bytes.len() {
            let mut tally = Tally::new(MIX, &progress);
            let whole = ends.iter().filter(|&&end| end > 0 && end <= cut).count() as u64;
            let torn = u64::from(!ends.contains(&cut));
            assert_eq!(
                tally.record_chunk(&bytes[..cut]),
                whole + torn,
                "cut at {cut}"
            );
            assert_eq!(
                (tally.messages, tally.corrupt),
                (whole, torn),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_mixed_message_of_the_wrong_length_is_damage() {
        let progress = Arc::new(Progress::new().expect("progress"));
        let mut stamper = message::Stamper::new(2, MIX);
        let first = stamper.next_len();
        let mut bytes = vec![0u8; first];
        stamper.fill(&mut bytes);
        // A message one byte longer than its stamp says: its pattern goes
        // on, so only the length gives it away.
        let len = stamper.next_len();
        let mut long = vec![0u8; len + 1];
        message::stamp(&mut long, 2, 1);
        // As one message on its own (a mapped or packet read, a Redis or
        // NATS payload):
        let mut tally = Tally::new(MIX, &progress);
        tally.record(&long);
        tally.record(&long[..len - 1]);
        tally.record(&long[..len]);
        assert_eq!((tally.messages, tally.corrupt), (1, 2));
        // In a stream: the extra byte is read as the next message's start.
        bytes.extend_from_slice(&long);
        let mut tally = Tally::new(MIX, &progress);
        assert_eq!(tally.record_chunk(&bytes), 3);
        assert_eq!((tally.messages, tally.corrupt), (2, 1));
        // A message whose stamp names a longer one than came, then the
        // next: the cut runs into the next and both are lost.
        let mut stamper = message::Stamper::new(3, MIX);
        let mut bytes = Vec::new();
        for _ in 0..3 {
            let at = bytes.len();
            bytes.resize(at + stamper.next_len(), 0);
            stamper.fill(&mut bytes[at..]);
        }
        let first = MIX.len_of(3, 0);
        bytes.remove(first - 1);
        let mut tally = Tally::new(MIX, &progress);
        tally.record_chunk(&bytes);
        assert!(tally.corrupt >= 1, "{} damaged", tally.corrupt);
        assert!(tally.messages < 3);
    }
}
