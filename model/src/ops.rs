//! The operations a model-based test runs, and proptest strategies that
//! generate sequences of them.
//!
//! Operations name open files by index into the files opened so far in the
//! case (modulo how many are open), so every sequence is valid, and
//! proptest's shrinking (dropping and simplifying operations) keeps it so.

use crate::room::Policy;
use kchat_uapi::abi;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Who opens a file: root, or an ordinary user (uid and gid 1000), so that
/// frames carry two different stamps and per-uid budgets differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Who {
    Root,
    User,
}

impl Who {
    pub const USER_ID: u32 = 1000;

    pub fn uid(self) -> u32 {
        match self {
            Who::Root => 0,
            Who::User => Who::USER_ID,
        }
    }
}

/// How a read or write is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Api {
    /// `read(2)`/`write(2)`: blocks unless the file is `O_NONBLOCK`. The
    /// runner issues it only where the model says it will not block, and
    /// otherwise as [`Api::NoWait`].
    Plain,
    /// `preadv2`/`pwritev2` with `RWF_NOWAIT` (the kernel's `IOCB_NOWAIT`,
    /// io_uring's first attempt).
    NoWait,
}

/// The fixed settings of the room a case runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub policy: Policy,
    pub ring_bytes: u32,
    pub max_msg: u32,
}

impl Settings {
    /// Records the ring can hold at most, whatever their size.
    pub fn slots(&self) -> usize {
        (self.ring_bytes / abi::RECORD_OVERHEAD) as usize
    }
}

/// One step of a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Open {
        who: Who,
        read: bool,
        write: bool,
        /// `O_DIRECT`: packet mode from the start.
        direct: bool,
        nonblock: bool,
    },
    Close {
        fd: usize,
    },
    /// One write of `len` bytes (split into `max_msg` messages).
    Write {
        fd: usize,
        len: usize,
        api: Api,
    },
    /// `count` non-blocking writes of `len` bytes each: fills small rings
    /// so eviction and `block` back-pressure happen all the time.
    Burst {
        fd: usize,
        count: u16,
        len: usize,
    },
    Read {
        fd: usize,
        space: usize,
        api: Api,
    },
    /// `IOC_SET_READ_MODE` (valid modes and invalid ones).
    SetMode {
        fd: usize,
        mode: u32,
    },
    /// `IOC_SET_WRITE_MODE` (valid modes and invalid ones).
    SetWriteMode {
        fd: usize,
        mode: u32,
    },
    /// One write of records as `WRITE_FRAMED` takes them: per record its
    /// body's length and the header's `flags` (0 but now and then not), the
    /// last `cut` bytes of the whole left off (a record cut short). On a
    /// file in plain mode it is just bytes.
    WriteFramed {
        fd: usize,
        records: Vec<(usize, u32)>,
        cut: usize,
        api: Api,
    },
    /// `IOC_TAKE_LOST`.
    TakeLost {
        fd: usize,
    },
    Lseek {
        fd: usize,
        offset: i64,
        whence: u32,
    },
    /// `IOC_SEEK_SEQ` to the oldest retained (or next) sequence number plus
    /// `delta`.
    SeekSeq {
        fd: usize,
        from_next: bool,
        delta: i8,
    },
    /// `poll` with a zero timeout, for every event kchat reports.
    Poll {
        fd: usize,
    },
    /// Up to `max` messages through a mapping of the room (mapped at the
    /// file's first such operation), then its place reported.
    MapRead {
        fd: usize,
        max: u8,
    },
    /// `IOC_ROOM_INFO`: fill and counters.
    Info,
    /// `IOC_SET_RATE_LIMIT`: one message (or `burst` bytes) per second at
    /// most after a burst, per uid or per file. Rates are this slow so that
    /// no budget refills while a case runs (the runner ends a case early if
    /// one could have).
    SetLimit {
        per_file: bool,
        bytes: bool,
        burst: u32,
    },
    /// `IOC_SET_RATE_LIMIT` back to unlimited.
    ClearLimit,
    /// `IOC_DELETE_ROOM`.
    Delete,
}

/// A room and what to do to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub settings: Settings,
    pub ops: Vec<Op>,
}

/// The bytes of write `n` (a case's operation index, times 1000 plus the
/// message within a burst): distinct per write, so a message returned in the
/// wrong place shows.
pub fn payload(n: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (n.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

fn settings() -> impl Strategy<Value = Settings> {
    let policy = prop_oneof![2 => Just(Policy::Drop), 1 => Just(Policy::Block)];
    let ring = prop_oneof![3 => Just(abi::MIN_RING_BYTES), 1 => Just(2 * abi::MIN_RING_BYTES)];
    (policy, ring, 0usize..6).prop_map(|(policy, ring_bytes, pick)| {
        let max_msg = [1, 7, 40, 100, 500, ring_bytes - abi::RECORD_OVERHEAD][pick];
        Settings {
            policy,
            ring_bytes,
            max_msg,
        }
    })
}

/// The bytes of a framed write: each record's `WriteFrame` and body (the
/// body `payload(n + i, len)`), the last `cut` bytes left off.
pub fn framed(n: u64, records: &[(usize, u32)], cut: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &(len, flags)) in records.iter().enumerate() {
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend(payload(n + i as u64, len));
    }
    out.truncate(out.len().saturating_sub(cut));
    out
}

/// Write lengths around the edges: 0, 1, a frame header, a message, a
/// few messages, and the ring where a message can be that large. (A 4 KiB
/// write to a room of 1-byte messages is 4,000 messages: slow, and no
/// different from a few.)
fn write_length(max_msg: u32) -> impl Strategy<Value = usize> {
    let header = size_of::<abi::FrameHeader>();
    let msg = max_msg as usize;
    let most = (msg * 6).min(4200);
    prop_oneof![
        Just(0),
        Just(1),
        (header - 1..=header + 1),
        (msg.saturating_sub(1)..=msg + 1),
        Just(2 * msg + 1),
        0usize..=most,
    ]
}

/// Read buffer sizes around the edges: 0, 1, a frame header, a message,
/// a header and a message, the ring.
fn read_space(max_msg: u32) -> impl Strategy<Value = usize> {
    let header = size_of::<abi::FrameHeader>();
    let msg = max_msg as usize;
    prop_oneof![
        1 => Just(0),
        1 => Just(1),
        // Stream reads inside a message: the state losses must clear.
        3 => 2usize..16,
        1 => header - 1..=header + 1,
        1 => msg.saturating_sub(1)..=msg + 1,
        1 => header + msg - 1..=header + msg + 1,
        1 => 4095usize..=4097,
        1 => 0usize..600,
    ]
}

fn api() -> impl Strategy<Value = Api> {
    prop_oneof![Just(Api::Plain), Just(Api::NoWait)]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![3 => Just(Who::Root), 1 => Just(Who::User)]
}

/// Mostly the first reader and writer: state bugs need several operations
/// on one file in a row (a partial read, a loss, a query, a read).
fn fd() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(0usize), 2 => Just(1usize), 2 => 0usize..8]
}

fn op(max_msg: u32) -> impl Strategy<Value = Op> {
    let open = (
        who(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(who, read, write, direct, nonblock)| Op::Open {
            who,
            // At least one of the two: an open with neither is O_RDONLY.
            read: read || !write,
            write,
            direct,
            nonblock,
        });
    let mode = prop_oneof![
        4 => Just(abi::READ_STREAM),
        4 => Just(abi::READ_PACKET),
        4 => Just(abi::READ_FRAMED),
        3 => Just(abi::READ_FRAMED_ORIGIN),
        1 => Just(4u32),
        1 => any::<u32>(),
    ];
    let write_mode = prop_oneof![
        4 => Just(abi::WRITE_FRAMED),
        3 => Just(abi::WRITE_PLAIN),
        1 => Just(2u32),
        1 => any::<u32>(),
    ];
    let record = (
        write_length(max_msg).prop_map(|len| len.min(1200)),
        prop_oneof![12 => Just(0u32), 1 => Just(1u32), 1 => any::<u32>()],
    );
    let records = proptest::collection::vec(record, 1..12);
    let cut = prop_oneof![6 => Just(0usize), 1 => 1usize..10];
    let whence = prop_oneof![6 => 0u32..3, 1 => 3u32..5];
    let offset = prop_oneof![-3i64..=3, Just(i64::MIN), Just(i64::MAX), -100i64..100];
    prop_oneof![
        2 => open,
        1 => fd().prop_map(|fd| Op::Close { fd }),
        8 => (fd(), write_length(max_msg), api())
            .prop_map(|(fd, len, api)| Op::Write { fd, len, api }),
        4 => (fd(), 1u16..120, write_length(max_msg).prop_map(|len| len.min(600)))
            .prop_map(|(fd, count, len)| Op::Burst { fd, count, len }),
        10 => (fd(), read_space(max_msg), api())
            .prop_map(|(fd, space, api)| Op::Read { fd, space, api }),
        2 => (fd(), mode).prop_map(|(fd, mode)| Op::SetMode { fd, mode }),
        2 => (fd(), write_mode).prop_map(|(fd, mode)| Op::SetWriteMode { fd, mode }),
        5 => (fd(), records, cut, api())
            .prop_map(|(fd, records, cut, api)| Op::WriteFramed { fd, records, cut, api }),
        4 => fd().prop_map(|fd| Op::TakeLost { fd }),
        2 => (fd(), offset, whence).prop_map(|(fd, offset, whence)| Op::Lseek { fd, offset, whence }),
        2 => (fd(), any::<bool>(), -2i8..=2).prop_map(|(fd, from_next, delta)| Op::SeekSeq {
            fd,
            from_next,
            delta
        }),
        2 => fd().prop_map(|fd| Op::Poll { fd }),
        4 => (fd(), prop_oneof![Just(0u8), Just(1u8), 2u8..20, Just(u8::MAX)])
            .prop_map(|(fd, max)| Op::MapRead { fd, max }),
        2 => Just(Op::Info),
        1 => (any::<bool>(), any::<bool>(), 1u32..6).prop_map(|(per_file, bytes, burst)| {
            Op::SetLimit {
                per_file,
                bytes,
                // A byte budget of a few messages' worth.
                burst: if bytes { burst * 100 } else { burst },
            }
        }),
        1 => Just(Op::ClearLimit),
        // Rare: most of a case should exercise a live room.
        1 => Just(Op::Delete),
    ]
}

/// Cases of up to `max_ops` operations. Each opens two files first, so
/// that short cases already move messages.
pub fn case(max_ops: usize) -> impl Strategy<Value = Case> {
    // File 0 reads and writes (most operations go to it), file 1 is another
    // user's writer.
    let start = [
        Op::Open {
            who: Who::Root,
            read: true,
            write: true,
            direct: false,
            nonblock: false,
        },
        Op::Open {
            who: Who::User,
            read: false,
            write: true,
            direct: false,
            nonblock: false,
        },
    ];
    settings().prop_flat_map(move |settings| {
        let start = start.clone();
        proptest::collection::vec(op(settings.max_msg), 1..max_ops).prop_map(move |rest| {
            let mut ops = start.to_vec();
            ops.extend(rest);
            Case { settings, ops }
        })
    })
}
