//! The bench's message format: every message starts with the writer that
//! sent it, its number and when (nanoseconds on a clock all threads of the
//! process share), so receivers measure write-to-read latency and count
//! what arrived, whatever carries the bytes. The rest of the message is a
//! pattern derived from (writer, number), which every receiver checks
//! byte for byte: a reader touches every byte it is credited with, the
//! same way whatever the system, and a damaged message is caught.
//!
//! A workload's messages are all one size, or a mix: then each message's
//! length is drawn from (writer, number) too, so a receiver finds where a
//! message ends from its stamp alone (a stream of them needs no framing)
//! and a message of the wrong length is caught like a wrong byte.

use nix::time::{clock_gettime, ClockId};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, str::FromStr};

/// Bytes of the stamp at the start of every message; messages are never
/// smaller than this.
pub const HEADER: usize = 20;

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process of the
/// machine, so a stamp made in the writers' process is read in the
/// harness's readers (`Instant` is that clock too, but says nothing
/// across processes).
pub fn now_ns() -> u64 {
    // Never fails for a clock every Linux has; 0 would only make a
    // latency look long, never a message damaged.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        (now.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec() as u64)
    })
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

/// The writer and number a message's stamp names, if it has one.
fn identity(message: &[u8]) -> Option<(u32, u64)> {
    let writer = u32::from_le_bytes(message.get(..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(message.get(4..12)?.try_into().ok()?);
    Some((writer, seq))
}

/// Checks a received message: a stamp, the length `sizes` gives the
/// message it names, and the pattern it names in every byte after it.
/// Returns when it was sent, or `None` for a damaged message.
pub fn check(message: &[u8], sizes: Sizes) -> Option<u64> {
    if message.len() < HEADER {
        return None;
    }
    let (writer, seq) = identity(message)?;
    if message.len() != sizes.len_of(writer, seq) {
        return None;
    }
    if !pattern_holds(&message[HEADER..], writer, seq) {
        return None;
    }
    sent_ns(message)
}

/// How long the message whose stamp starts `bytes` is, as `sizes` says;
/// `None` while `bytes` hold less than a stamp (a mixed message's length
/// is known only from its stamp). For receivers that cut a stream of
/// messages apart.
pub fn stamped_len(bytes: &[u8], sizes: Sizes) -> Option<usize> {
    match sizes {
        Sizes::Fixed(size) => Some(size),
        Sizes::Mixed { .. } => {
            if bytes.len() < HEADER {
                return None;
            }
            let (writer, seq) = identity(bytes)?;
            Some(sizes.len_of(writer, seq))
        }
    }
}

/// The sizes of a workload's messages: all one size, or a mix whose every
/// message has a length drawn from its (writer, number), uniform from
/// `min` to `max` bytes, both included. Written `64` or `64-1024` on the
/// command line and in the JSON report (a number for one size, as reports
/// before mixes had it, a string for a mix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sizes {
    Fixed(usize),
    Mixed { min: usize, max: usize },
}

impl Sizes {
    /// The length of `writer`'s `seq`th message.
    pub fn len_of(self, writer: u32, seq: u64) -> usize {
        match self {
            Sizes::Fixed(size) => size,
            Sizes::Mixed { min, max } => {
                // The top half of another splitmix word than the pattern's
                // first (the length stays apart from the bytes), scaled onto
                // the span by a multiply (Lemire's method, no division).
                // `parse` keeps `max` within u32, so the product fits u64.
                let span = (max - min + 1) as u64;
                let draw = seed(writer, !seq) >> 32;
                min + ((draw * span) >> 32) as usize
            }
        }
    }

    /// The longest message: what a room's `max_msg`, a buffer or a sample
    /// must hold.
    pub fn max(self) -> usize {
        match self {
            Sizes::Fixed(size) => size,
            Sizes::Mixed { max, .. } => max,
        }
    }

    /// The mean length, for bytes per second from messages per second.
    pub fn mean(self) -> f64 {
        match self {
            Sizes::Fixed(size) => size as f64,
            Sizes::Mixed { min, max } => (min + max) as f64 / 2.0,
        }
    }

    pub fn fixed(self) -> Option<usize> {
        match self {
            Sizes::Fixed(size) => Some(size),
            Sizes::Mixed { .. } => None,
        }
    }

    pub fn is_mixed(self) -> bool {
        matches!(self, Sizes::Mixed { .. })
    }

    /// How it is written on the command line and in the JSON: `64`,
    /// `64-1024`.
    pub fn spec(self) -> String {
        match self {
            Sizes::Fixed(size) => size.to_string(),
            Sizes::Mixed { min, max } => format!("{min}-{max}"),
        }
    }
}

/// For tables and plots: `64 B`, `64–1024 B mixed`.
impl fmt::Display for Sizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sizes::Fixed(size) => write!(f, "{size} B"),
            Sizes::Mixed { min, max } => write!(f, "{min}–{max} B mixed"),
        }
    }
}

impl FromStr for Sizes {
    type Err = String;

    /// `SIZE` or `MIN-MAX`, in bytes: each at least the stamp, and at
    /// most what a record's `u32` length can say; `MIN` below `MAX`.
    fn from_str(text: &str) -> Result<Sizes, String> {
        let number = |part: &str| -> Result<usize, String> {
            let bytes: usize = part
                .trim()
                .parse()
                .map_err(|_| format!("{part:?} in {text:?} is not a number of bytes"))?;
            if bytes < HEADER {
                return Err(format!(
                    "{text:?}: messages must hold the {HEADER}-byte stamp ({bytes} B is less)"
                ));
            }
            if u32::try_from(bytes).is_err() {
                return Err(format!("{text:?}: {bytes} B is more than a message may be"));
            }
            Ok(bytes)
        };
        match text.split_once('-') {
            None => Ok(Sizes::Fixed(number(text)?)),
            Some((min, max)) => {
                let (min, max) = (number(min)?, number(max)?);
                if min >= max {
                    return Err(format!(
                        "{text:?}: a mix runs from a smaller size to a larger one (MIN-MAX)"
                    ));
                }
                Ok(Sizes::Mixed { min, max })
            }
        }
    }
}

impl Serialize for Sizes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Sizes::Fixed(size) => serializer.serialize_u64(*size as u64),
            Sizes::Mixed { .. } => serializer.serialize_str(&self.spec()),
        }
    }
}

impl<'de> Deserialize<'de> for Sizes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Sizes, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Sizes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message size in bytes or a MIN-MAX mix")
            }

            fn visit_u64<E: de::Error>(self, size: u64) -> Result<Sizes, E> {
                usize::try_from(size)
                    .map(Sizes::Fixed)
                    .map_err(|_| E::custom(format!("{size} B is no size")))
            }

            fn visit_i64<E: de::Error>(self, size: i64) -> Result<Sizes, E> {
                u64::try_from(size)
                    .map_err(|_| E::custom(format!("{size} B is no size")))
                    .and_then(|size| self.visit_u64(size))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Sizes, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One writer's messages in order: how long the next one is, and its
/// bytes. Senders ask the length first (to loan, frame or place it), then
/// have it stamped where it goes.
pub struct Stamper {
    writer: u32,
    seq: u64,
    sizes: Sizes,
}

impl Stamper {
    pub fn new(writer: u32, sizes: Sizes) -> Self {
        Stamper {
            writer,
            seq: 0,
            sizes,
        }
    }

    /// The length of the next message.
    pub fn next_len(&self) -> usize {
        self.sizes.len_of(self.writer, self.seq)
    }

    /// Stamps the next message into `message` (`next_len` bytes; any
    /// other length reaches readers as a damaged message) and moves on.
    pub fn fill(&mut self, message: &mut [u8]) {
        debug_assert_eq!(message.len(), self.next_len());
        stamp(message, self.writer, self.seq);
        self.seq += 1;
    }
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
            assert!(check(&message, Sizes::Fixed(size)).is_some(), "size {size}");
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
                    assert_eq!(
                        check(&message, Sizes::Fixed(size)),
                        None,
                        "size {size}, byte {at}"
                    );
                    message[at] ^= bit;
                }
            }
            assert!(check(&message, Sizes::Fixed(size)).is_some());
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
        assert_eq!(check(&other, Sizes::Fixed(64)), None);
        // Another writer, same number.
        let mut third = vec![0u8; 64];
        stamp(&mut third, 1, 1);
        third[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(check(&third, Sizes::Fixed(64)), None);
        // Cut short, or too long.
        assert_eq!(check(&one[..63], Sizes::Fixed(64)), None);
        assert_eq!(check(&one, Sizes::Fixed(63)), None);
    }

    const MIX: Sizes = Sizes::Mixed { min: 64, max: 1024 };

    #[test]
    fn sizes_parse_from_a_size_or_a_range() {
        assert_eq!("64".parse(), Ok(Sizes::Fixed(64)));
        assert_eq!("20".parse(), Ok(Sizes::Fixed(HEADER)));
        assert_eq!("64-1024".parse(), Ok(MIX));
        assert_eq!(" 64 - 1024 ".trim().parse(), Ok(MIX));
        assert_eq!("20-21".parse(), Ok(Sizes::Mixed { min: 20, max: 21 }));
        for (bad, says) in [
            ("19", "20-byte stamp"),
            ("0", "20-byte stamp"),
            ("10-1024", "20-byte stamp"),
            ("64-19", "20-byte stamp"),
            ("1024-64", "MIN-MAX"),
            ("64-64", "MIN-MAX"),
            ("", "not a number"),
            ("64-", "not a number"),
            ("-64", "not a number"),
            ("64-1024-4096", "not a number"),
            ("64B", "not a number"),
            ("64..1024", "not a number"),
            ("99999999999", "more than a message"),
        ] {
            let err = bad.parse::<Sizes>().expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sizes_show_and_save_as_they_are_written() {
        assert_eq!(Sizes::Fixed(64).to_string(), "64 B");
        assert_eq!(MIX.to_string(), "64–1024 B mixed");
        for sizes in [Sizes::Fixed(64), MIX] {
            assert_eq!(sizes.spec().parse(), Ok(sizes));
            let json = serde_json::to_string(&sizes).expect("serialises");
            assert_eq!(serde_json::from_str::<Sizes>(&json).ok(), Some(sizes));
        }
        // One size stays a number, as in reports from before mixes.
        assert_eq!(
            serde_json::to_string(&Sizes::Fixed(64)).ok().as_deref(),
            Some("64")
        );
        assert_eq!(
            serde_json::to_string(&MIX).ok().as_deref(),
            Some("\"64-1024\"")
        );
        assert!(serde_json::from_str::<Sizes>("\"1024-64\"").is_err());
        assert!(serde_json::from_str::<Sizes>("-5").is_err());
        assert_eq!((MIX.max(), MIX.mean(), MIX.fixed()), (1024, 544.0, None));
        assert!(Sizes::Fixed(64) < MIX);
    }

    #[test]
    fn mixed_lengths_are_deterministic_within_bounds_and_spread() {
        let mut seen = [0u32; 4];
        let (mut shortest, mut longest) = (usize::MAX, 0);
        for writer in 0..4 {
            for seq in 0..10_000 {
                let len = MIX.len_of(writer, seq);
                assert_eq!(len, MIX.len_of(writer, seq));
                assert!((64..=1024).contains(&len), "{len}");
                shortest = shortest.min(len);
                longest = longest.max(len);
                seen[(len - 64) * 4 / 961] += 1;
            }
        }
        // Uniform: each quarter of the span gets about a quarter.
        assert!(
            seen.iter().all(|&n| (9_000..11_000).contains(&n)),
            "{seen:?}"
        );
        assert!(shortest < 70 && longest > 1018, "{shortest}..{longest}");
        // Both ends are reachable on the narrowest span.
        let two = Sizes::Mixed { min: 20, max: 21 };
        let lens: Vec<_> = (0..64).map(|seq| two.len_of(0, seq)).collect();
        assert!(lens.contains(&20) && lens.contains(&21), "{lens:?}");
        // A fixed size is what it says.
        assert_eq!(Sizes::Fixed(64).len_of(3, 9), 64);
    }

    #[test]
    fn a_mixed_message_checks_only_at_its_own_length() {
        let mut stamper = Stamper::new(5, MIX);
        for _ in 0..100 {
            let len = stamper.next_len();
            let mut message = vec![0u8; len];
            stamper.fill(&mut message);
            assert_eq!(stamped_len(&message, MIX), Some(len));
            assert_eq!(stamped_len(&message[..HEADER - 1], MIX), None);
            assert!(check(&message, MIX).is_some());
            // Cut short by a byte, or one byte too long: damaged.
            assert_eq!(check(&message[..len - 1], MIX), None);
            message.push(0);
            assert_eq!(check(&message, MIX), None);
        }
        // The right pattern at a wrong length for its stamp: damaged,
        // and a fixed size that the mix happened to give is no excuse.
        let mut message = vec![0u8; 1024];
        stamp(&mut message, 9, 0);
        let len = MIX.len_of(9, 0);
        assert_ne!(len, 1024);
        assert_eq!(check(&message, MIX), None);
        assert!(check(&message, Sizes::Fixed(1024)).is_some());
    }
}
