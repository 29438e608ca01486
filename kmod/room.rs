// SPDX-License-Identifier: GPL-2.0
//! `Room`: one chat room: its ring of records, stored once for all readers,
//! and the waiters on it.
//!
//! Lock order (outer first): `Registry::inner` -> `RoomFile::cursor` ->
//! `Room::inner`, and `Room::writing` -> `Room::inner` (a file never holds
//! its cursor while writing). Nothing is taken while `Room::inner` is held,
//! user memory is never touched under it (copies happen before or after),
//! and waiters are woken after it is released.
//!
//! The ring's bytes (`Room::area`) are shared without a lock over them:
//! - One writer at a time (`Room::writing`) fills records: it evicts and
//!   picks a batch of records' places under `Room::inner`, fills the bytes
//!   holding only `Room::writing`, and publishes the records (pushes their
//!   slots) under `Room::inner` again. Until then no reader knows the bytes
//!   exist, and they were no retained record's (`Ring::places`).
//! - A reader picks records under `Room::inner`, copies them out without
//!   it, and then checks under it that the first is still retained. Records
//!   go oldest first, so if it is, none was evicted and refilled during the
//!   copy; if it is not (a `drop` room's writer lapped the reader, or a
//!   laggard was evicted), the read discards the copy and counts the loss,
//!   as the seqcount readers of the perf and BPF rings do.
//!
//! One concern per file, each with the invariant it keeps: `write.rs` the
//! write path (nothing sleeps holding `writing`), `space.rs` costs,
//! eviction and the laggard bound (evictions published before reuse),
//! `readers.rs` reader marks, shares and the slowest reader (released
//! laggards hold nothing), `budget.rs` rate budgets, `wake.rs` who sleeps
//! and the wake-ups a write owes.

mod budget;
mod readers;
mod space;
mod wake;
mod write;

pub(crate) use self::{
    budget::{LimitConfig, Scope},
    readers::ReaderMark,
    space::{record_cost, Hold, ORIGIN},
    wake::Asleep,
    write::Blocking,
};

use crate::{
    abi,
    compat::{
        poll::{events, PollQueue},
        ring_area::RingArea,
        task::Sender,
    },
    rate::Limiter,
    ring::{Ring, Slot},
    slowest::Slowest,
};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::{
    alloc::{
        flags::{__GFP_NOWARN, GFP_KERNEL_ACCOUNT},
        KVVec,
    },
    c_str, new_condvar, new_mutex,
    prelude::*,
    rbtree::RBTree,
    static_lock_class,
    sync::{Arc, CondVar, Mutex},
};
use space::record_size;

/// What the kernel keeps of a stored message beside its bytes in the ring:
/// what readers' views are made from and the area must not show (a kernel
/// pointer).
pub(crate) struct Stamp {
    pub(crate) time_ns: u64,
    /// Who wrote it, translated into each reader's namespaces as it reads
    /// (for a relayed message: the relay, a local process).
    pub(crate) sender: Sender,
    /// Payload bytes.
    pub(crate) len: u32,
    /// An `OriginHeader` (the origin the relay stated) precedes the payload
    /// in the area: `READ_FRAMED_ORIGIN` readers see it.
    pub(crate) relayed: bool,
}

impl Stamp {
    /// Where the record's payload is, for a record at `at`.
    pub(crate) fn payload_at(&self, at: usize) -> usize {
        payload_at(at, self.relayed)
    }
}

/// Where the payload of a record at `at` starts: after its header, and its
/// origin if it was relayed.
fn payload_at(at: usize, relayed: bool) -> usize {
    at + RECORD_HEADER + if relayed { ORIGIN } else { 0 }
}

const RECORD_HEADER: usize = core::mem::size_of::<abi::RingRecord>();

/// What happens when the ring is full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Evict the oldest record; slow readers learn what they lost.
    Drop,
    /// Wait until every reader has read the oldest record.
    Block,
}

/// A room's validated, fixed settings.
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) name: [u8; abi::NAME_FIELD],
    pub(crate) policy: Policy,
    pub(crate) ring_bytes: u32,
    pub(crate) max_msg: u32,
    /// `block` rooms: the bound on laggards the room was created with;
    /// the room keeps the current one (`RoomInner::max_wait_ms`).
    pub(crate) max_wait_ms: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mode: u16,
}

impl Settings {
    pub(crate) fn name(&self) -> &[u8] {
        abi::field_name(&self.name).unwrap_or(&self.name)
    }
}

/// A room's counters: atomics, so the data path takes no lock for them.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) msgs_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) writer_waits: AtomicU64,
    pub(crate) laggard_evictions: AtomicU64,
    pub(crate) writers: AtomicU32,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A room's ring: where each record is in `Room::area`, in slots allocated
/// once at creation.
pub(crate) type RecordRing = Ring<Stamp, KVVec<Option<Slot<Stamp>>>>;

pub(crate) struct RoomInner {
    pub(crate) ring: RecordRing,
    /// The oldest record mapped readers were last told of
    /// (`Room::publish`): bytes are handed out for reuse only once it is
    /// the ring's (`Room::reserve`).
    published_first: u64,
    pub(crate) deleted: bool,
    /// Marks of the read-mode opens; `None` slots are reused.
    readers: KVec<Option<Arc<ReaderMark>>>,
    /// How many of `readers` are `Some`.
    reader_total: usize,
    /// The lowest `seq` of `readers`, kept so that `block` writers and
    /// pollers do not walk every reader each time.
    slowest: Slowest,
    pub(crate) limit: LimitConfig,
    /// Rate budgets by sender key (uid or file id).
    senders: RBTree<u64, Limiter>,
    sender_count: usize,
    /// Tasks asleep on `Room::readable` / `Room::writable`. Counted under
    /// this lock, which a sleeper holds until it is on the queue, so a waker
    /// that reads zero here can skip the wake-up: the common case, where
    /// it would take the queue's spinlock for nobody.
    pub(crate) sleeping_readers: u32,
    pub(crate) sleeping_writers: u32,
    /// Readers that found nothing to read (a poll without `EPOLLIN`, a
    /// non-blocking read's `EAGAIN`) since a message last woke pollers:
    /// the next message wakes pollers only if there are any. So a burst of
    /// messages wakes a waiting reader once, not once per message; a reader
    /// that is awake finds the rest when it reads.
    pub(crate) parked: u32,
    /// Someone polled for `EPOLLPRI` without `EPOLLIN`: it must learn of
    /// every loss, parked or not (kept once seen).
    pub(crate) pri_watched: bool,
    /// `block` rooms: since when (monotonic ns) a reader has kept a writer
    /// from writing, if one has; cleared when a write goes through.
    held_since_ns: Option<u64>,
    /// `block` rooms: how long a laggard may hold writers back
    /// (`abi::MAX_WAIT_FOREVER`: no bound); kchatd may change it.
    pub(crate) max_wait_ms: u32,
}

/// A room's ring budget, counted against the module's total from the
/// room's creation until its memory goes at its last close (not merely
/// until it is deleted: open files keep a deleted room's ring alive).
pub(crate) struct RingCharge {
    total: Arc<AtomicU64>,
    bytes: u64,
}

impl RingCharge {
    /// Adds `bytes` to `total` until the charge is dropped.
    pub(crate) fn new(total: &Arc<AtomicU64>, bytes: u64) -> Self {
        total.fetch_add(bytes, Ordering::Relaxed);
        RingCharge {
            total: total.clone(),
            bytes,
        }
    }
}

impl Drop for RingCharge {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A chat room.
#[pin_data]
pub(crate) struct Room {
    pub(crate) settings: Settings,
    _ring_charge: RingCharge,
    pub(crate) minor: u32,
    /// Random and nonzero, chosen at creation (`RoomInfo::incarnation`):
    /// tells this room from any other that had its name, here or before a
    /// reload or boot.
    pub(crate) incarnation: u64,
    pub(crate) stats: Stats,
    /// Whether `RoomInner::limit` limits anything: set under `inner` with
    /// it, read without, so an unlimited room's writers skip the lock pass
    /// a budget takes. A write that races a new limit goes as if it came
    /// just before it.
    limited: AtomicBool,
    /// The records' bytes, laid out as `RoomInner::ring` says.
    pub(crate) area: RingArea,
    /// Held by the one writer filling the ring (see the module doc).
    #[pin]
    writing: Mutex<()>,
    #[pin]
    pub(crate) inner: Mutex<RoomInner>,
    /// Readers sleeping in `read` for a new message.
    #[pin]
    pub(crate) readable: CondVar,
    /// Writers sleeping in `write` for space (`block` rooms).
    #[pin]
    pub(crate) writable: CondVar,
    #[pin]
    pub(crate) poll: PollQueue,
}

impl Room {
    /// A new, empty room.
    pub(crate) fn new(settings: Settings, minor: u32, charge: RingCharge) -> Result<Arc<Room>> {
        // Every record costs at least RECORD_OVERHEAD, so this many slots
        // never limit the ring before its byte budget does.
        let slots = (settings.ring_bytes / abi::RECORD_OVERHEAD) as usize;
        // The size is the caller's choice (up to 64 MiB of ring): failing
        // is an answer (ENOMEM), not something to warn the log about.
        // Charged to the creator's memory cgroup, as the ring is.
        let mut storage = KVVec::with_capacity(slots, GFP_KERNEL_ACCOUNT | __GFP_NOWARN)?;
        for _ in 0..slots {
            storage.push(None, GFP_KERNEL_ACCOUNT)?;
        }
        let largest = record_size(settings.max_msg as usize, true);
        let area_len = RecordRing::area_for(settings.ring_bytes as usize, largest).ok_or(EINVAL)?;
        let area = RingArea::new(area_len)?;
        let ring = Ring::new(storage, settings.ring_bytes as usize, area.len());
        let inner = RoomInner {
            ring,
            published_first: 0,
            deleted: false,
            readers: KVec::new(),
            reader_total: 0,
            slowest: Slowest::new(),
            sleeping_readers: 0,
            sleeping_writers: 0,
            parked: 0,
            pri_watched: false,
            held_since_ns: None,
            max_wait_ms: settings.max_wait_ms,
            limit: LimitConfig::UNLIMITED,
            senders: RBTree::new(),
            sender_count: 0,
        };
        Arc::pin_init(
            pin_init!(Room {
                settings,
                _ring_charge: charge,
                minor,
                incarnation: crate::compat::random::nonzero_u64(),
                stats: Stats::default(),
                limited: AtomicBool::new(false),
                area,
                writing <- new_mutex!((), "Room::writing"),
                inner <- new_mutex!(inner, "Room::inner"),
                readable <- new_condvar!("Room::readable"),
                writable <- new_condvar!("Room::writable"),
                poll <- PollQueue::new(
                    c_str!("Room::poll"),
                    static_lock_class!(),
                    c_str!("Room::poll_timer"),
                    static_lock_class!()
                ),
            }),
            GFP_KERNEL,
        )
    }

    /// Marks the room deleted and wakes everyone: readers drain what is
    /// left, then read end-of-file; writers get `EIDRM`.
    pub(crate) fn mark_deleted(&self) {
        self.inner.lock().deleted = true;
        self.area.mark_deleted();
        self.changed(
            events::HUP | events::IN | events::RDNORM | events::OUT | events::ERR,
            Asleep::ANY,
        );
    }
}
