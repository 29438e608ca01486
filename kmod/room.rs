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
//! - One writer at a time (`Room::writing`) fills a record: it evicts and
//!   picks the record's place under `Room::inner`, fills the bytes holding
//!   only `Room::writing`, and publishes the record (pushes its slot) under
//!   `Room::inner` again. Until then no reader knows the bytes exist, and
//!   they were no retained record's (`Ring::place`).
//! - A reader picks records under `Room::inner`, copies them out without
//!   it, and then checks under it that the first is still retained. Records
//!   go oldest first, so if it is, none was evicted and refilled during the
//!   copy; if it is not (a `drop` room's writer lapped the reader, or a
//!   laggard was evicted), the read discards the copy and counts the loss,
//!   as the seqcount readers of the perf and BPF rings do.

use crate::{
    abi,
    compat::{
        errno::{eidrm, emsgsize, eusers},
        file::File,
        iov::IovSource,
        poll::{events, PollQueue},
        ring_area::RingArea,
        task::{fatal_signal_pending, monotonic_ns, ns_to_jiffies, realtime_ns, Sender},
    },
    rate::Limiter,
    ring::{Lookup, Placement, Ring, Slot},
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
    sync::{
        lock::{mutex::MutexBackend, Guard},
        Arc, CondVar, CondVarTimeoutResult, Mutex,
    },
};

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
    /// Where the record's origin header is, for a record at `at`.
    pub(crate) fn origin_at(&self, at: usize) -> Option<usize> {
        self.relayed.then_some(at + RECORD_HEADER)
    }

    /// Where the record's payload is, for a record at `at`.
    pub(crate) fn payload_at(&self, at: usize) -> usize {
        at + RECORD_HEADER + if self.relayed { ORIGIN } else { 0 }
    }
}

/// How long one `read` or `write` call may wait.
#[derive(Clone, Copy)]
pub(crate) struct Blocking {
    /// `O_NONBLOCK` or `IOCB_NOWAIT`: no sleeping for messages, space or
    /// budget (`EAGAIN`).
    pub(crate) nonblock: bool,
    /// `IOCB_NOWAIT`: not even for the caller's own memory to be faulted
    /// in (`EAGAIN`; io_uring then retries where it may block).
    pub(crate) nowait: bool,
}

/// Who writes: the writing file's ids (fixed at open), the user its
/// per-user budget is charged to, and the file's own budget key.
pub(crate) struct Writer {
    kuid: u32,
    kgid: u32,
    charged_uid: u32,
    file_id: u64,
}

impl Writer {
    pub(crate) fn of(file: &File) -> Writer {
        let (kuid, kgid) = file.effective_ids();
        Writer {
            kuid,
            kgid,
            charged_uid: file.charged_uid(),
            file_id: file.id(),
        }
    }
}

const RECORD_HEADER: usize = core::mem::size_of::<abi::RingRecord>();
/// Bytes of the origin a relayed record carries after its header.
pub(crate) const ORIGIN: usize = core::mem::size_of::<abi::OriginHeader>();

/// What a message of `len` bytes costs against its room's ring budget:
/// `RECORD_OVERHEAD` (which covers the header and alignment in the area),
/// and the origin a relayed message carries.
pub(crate) fn record_cost(len: usize, relayed: bool) -> usize {
    len + abi::RECORD_OVERHEAD as usize + if relayed { ORIGIN } else { 0 }
}

/// The bytes a message of `len` takes in the area (before alignment):
/// never more than its cost, as `Ring` requires.
fn record_size(len: usize, relayed: bool) -> usize {
    RECORD_HEADER + len + if relayed { ORIGIN } else { 0 }
}

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

/// Most distinct senders a room tracks budgets for; beyond, idle ones are
/// forgotten, and if none is idle the newcomers share one budget.
const MAX_SENDERS: usize = 1024;
/// The shared budget's key; real keys are uids (below 2^32) or file ids.
const OVERFLOW_SENDER: u64 = u64::MAX;

/// Who shares a rate budget.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Uid,
    File,
}

/// A room's rate limit; rates of 0 are unlimited.
#[derive(Clone, Copy)]
pub(crate) struct LimitConfig {
    pub(crate) scope: Scope,
    pub(crate) msgs_per_sec: u32,
    pub(crate) msg_burst: u32,
    pub(crate) bytes_per_sec: u32,
    pub(crate) byte_burst: u32,
}

impl LimitConfig {
    pub(crate) const UNLIMITED: LimitConfig = LimitConfig {
        scope: Scope::Uid,
        msgs_per_sec: 0,
        msg_burst: 0,
        bytes_per_sec: 0,
        byte_burst: 0,
    };

    fn is_unlimited(&self) -> bool {
        self.msgs_per_sec == 0 && self.bytes_per_sec == 0
    }

    fn fresh(&self, now_ns: u64) -> Limiter {
        Limiter::new(
            u64::from(self.msgs_per_sec),
            u64::from(self.msg_burst),
            u64::from(self.bytes_per_sec),
            u64::from(self.byte_burst),
            now_ns,
        )
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

/// Where one reader is: the sequence number of the next message it reads,
/// and how many it lost without being told yet. Written under `Room::inner`,
/// `seq` only through [`RoomInner::move_reader`], which keeps the room's
/// slowest reader known; `block` writers read every reader's `seq`, poll
/// reads `lost`.
pub(crate) struct ReaderMark {
    pub(crate) seq: AtomicU64,
    pub(crate) lost: AtomicU64,
    /// `block` rooms: a laggard whose records were evicted past the room's
    /// bound no longer holds writers back until it reads (or seeks) again:
    /// otherwise each later write would wait a whole bound for it. Written
    /// under `Room::inner`; such a reader is not counted in `slowest`.
    released: AtomicBool,
    /// The user its reader slot is charged to (`File::charged_uid`).
    charged_uid: u32,
    /// Who opened it: its process and the file's kernel ids (the uid also
    /// counts against the per-uid share of reader slots), for admins who
    /// look for the reader that holds a room back.
    opener: Sender,
}

/// The part of a room's reader slots one uid may hold: one slot in this
/// many (at least one), so one user cannot lock everyone else out.
const READER_SHARE: usize = 4;

/// Who waits on a room, as seen under its lock. Wakers skip `notify_all`
/// when no reader or writer sleeps (the common case, where it would take
/// the wait queue's spinlock for nobody), and a message wakes pollers only
/// if one of them had found nothing to read since the last message did.
#[derive(Clone, Copy)]
pub(crate) struct Asleep {
    pub(crate) readers: bool,
    pub(crate) writers: bool,
    pub(crate) pollers: bool,
}

impl Asleep {
    /// For wakers that do not know (deletion wakes everyone).
    pub(crate) const ANY: Asleep = Asleep {
        readers: true,
        writers: true,
        pollers: true,
    };
    const NONE: Asleep = Asleep {
        readers: false,
        writers: false,
        pollers: false,
    };

    fn or(self, other: Asleep) -> Asleep {
        Asleep {
            readers: self.readers || other.readers,
            writers: self.writers || other.writers,
            pollers: self.pollers || other.pollers,
        }
    }
}

/// The wake-ups one `write` owes for the messages it stored so far: given
/// once, when the call ends, before it sleeps, or once it stored half a
/// ring (so readers of a `drop` room are not lapped before they hear of
/// it). A burst written in one call wakes a waiting reader once.
struct Wakes {
    events: u32,
    asleep: Asleep,
    bytes: usize,
}

impl Wakes {
    const NONE: Wakes = Wakes {
        events: 0,
        asleep: Asleep::NONE,
        bytes: 0,
    };

    fn add(&mut self, events: u32, asleep: Asleep, cost: usize) {
        self.events |= events;
        self.asleep = self.asleep.or(asleep);
        self.bytes += cost;
    }

    fn flush(&mut self, room: &Room) {
        if self.events != 0 {
            room.changed(self.events, self.asleep);
        }
        *self = Wakes::NONE;
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

impl RoomInner {
    /// Takes a message of `len` bytes from its writer's budget (by uid or by
    /// file, as the limit's scope says): `Ok(key)` names the budget charged
    /// (`None` when unlimited), `Err(ns)` how long to wait first.
    fn admit(
        &mut self,
        uid: u32,
        file_id: u64,
        now_ns: u64,
        len: u64,
    ) -> Result<core::result::Result<Option<u64>, u64>> {
        if self.limit.is_unlimited() {
            return Ok(Ok(None));
        }
        let mut key = match self.limit.scope {
            Scope::Uid => u64::from(uid),
            Scope::File => file_id,
        };
        if self.senders.get(&key).is_none() {
            if self.sender_count >= MAX_SENDERS {
                self.forget_idle_senders(now_ns);
            }
            if self.sender_count >= MAX_SENDERS {
                key = OVERFLOW_SENDER;
            }
            if self.senders.get(&key).is_none() {
                let fresh = self.limit.fresh(now_ns);
                // Charged to the writer's memory cgroup, as its messages are.
                self.senders
                    .try_create_and_insert(key, fresh, GFP_KERNEL_ACCOUNT)?;
                self.sender_count += 1;
            }
        }
        let limiter = self.senders.get_mut(&key).ok_or(EINVAL)?;
        Ok(limiter.admit(now_ns, len).map(|()| Some(key)))
    }

    /// How long until `admit` would take a message of `len` bytes from
    /// this writer's budget (0: now), taking nothing: what a poller asks.
    pub(crate) fn budget_wait(&self, uid: u32, file_id: u64, now_ns: u64, len: u64) -> u64 {
        if self.limit.is_unlimited() {
            return 0;
        }
        let key = match self.limit.scope {
            Scope::Uid => u64::from(uid),
            Scope::File => file_id,
        };
        let limiter = match self.senders.get(&key) {
            Some(limiter) => limiter,
            // A new sender gets a full budget, unless it would share the
            // overflow one.
            None if self.sender_count < MAX_SENDERS => return 0,
            None => match self.senders.get(&OVERFLOW_SENDER) {
                Some(limiter) => limiter,
                None => return 0,
            },
        };
        limiter.wait_ns(now_ns, len)
    }

    /// Gives back what `admit` charged for a message that was not sent.
    fn refund(&mut self, key: Option<u64>, len: u64) {
        if let Some(limiter) = key.and_then(|key| self.senders.get_mut(&key)) {
            limiter.refund(len);
        }
    }

    /// Drops budgets that have refilled: such a sender is no different from
    /// a new one.
    fn forget_idle_senders(&mut self, now_ns: u64) {
        let mut idle = [0u64; 64];
        let mut found = 0;
        for (key, limiter) in self.senders.iter() {
            if found == idle.len() {
                break;
            }
            if limiter.is_idle(now_ns) {
                idle[found] = *key;
                found += 1;
            }
        }
        for key in &idle[..found] {
            if self.senders.remove(key).is_some() {
                self.sender_count -= 1;
            }
        }
    }

    /// Forgets one sender's budget (a per-file budget at close).
    pub(crate) fn forget_sender(&mut self, key: u64) {
        if self.senders.remove(&key).is_some() {
            self.sender_count -= 1;
        }
    }

    /// Who sleeps on the room now.
    pub(crate) fn asleep(&self) -> Asleep {
        Asleep {
            readers: self.sleeping_readers > 0,
            writers: self.sleeping_writers > 0,
            pollers: true,
        }
    }

    /// A reader found nothing to read: the next message wakes pollers.
    pub(crate) fn park(&mut self) {
        self.parked = self.parked.saturating_add(1);
    }

    /// Who a new message wakes, and forgets the parked readers it wakes.
    fn asleep_for_message(&mut self, loss: bool) -> Asleep {
        let pollers = self.parked > 0 || (loss && self.pri_watched);
        self.parked = 0;
        Asleep {
            pollers,
            ..self.asleep()
        }
    }

    pub(crate) fn reader_count(&self) -> usize {
        self.reader_total
    }

    /// Moves a reader to `seq`: the only way a reader's position changes.
    /// A released laggard (see `ReaderMark::released`) holds the room
    /// again from where it moves to.
    pub(crate) fn move_reader(&mut self, mark: &ReaderMark, seq: u64) {
        let from = mark.seq.swap(seq, Ordering::Relaxed);
        if mark.released.swap(false, Ordering::Relaxed) {
            self.slowest.joined(seq);
        } else {
            self.slowest.moved(from, seq);
        }
    }

    /// The oldest record any reader still needs (`u64::MAX`: no readers).
    /// Walks the readers (at most `max_readers`) only after the last one
    /// on the known lowest position moved on.
    fn slowest_reader(&mut self) -> u64 {
        let readers = &self.readers;
        self.slowest.get(
            readers
                .iter()
                .flatten()
                .filter(|mark| !mark.released.load(Ordering::Relaxed))
                .map(|mark| mark.seq.load(Ordering::Relaxed)),
        )
    }

    /// Whether a write of `cost` would go through without waiting.
    pub(crate) fn could_write(&mut self, policy: Policy, cost: usize) -> bool {
        match policy {
            Policy::Drop => self.ring.could_ever_fit(cost),
            Policy::Block => {
                let slowest = self.slowest_reader();
                self.ring.fits_after_evicting_before(slowest, cost)
            }
        }
    }

    /// Makes room for a record of `cost` if the policy allows: `None` if it
    /// cannot, else whether a reader lost a message to make it.
    /// `force` evicts whatever it takes, as a `drop` room does (a `block`
    /// room whose laggard has held writers back too long).
    fn make_room(&mut self, policy: Policy, cost: usize, force: bool) -> Option<bool> {
        if self.ring.fits(cost) {
            return Some(false);
        }
        // Only reads move readers, and none happens under this lock.
        let slowest = self.slowest_reader();
        let mut loss = false;
        while !self.ring.fits(cost) {
            let first = self.ring.first_seq();
            let evictable = match policy {
                Policy::Drop => true,
                Policy::Block => force || slowest > first,
            };
            if !evictable || self.ring.pop_oldest().is_none() {
                return None;
            }
            loss |= slowest <= first;
        }
        if force && loss {
            self.release_laggards();
        }
        Some(loss)
    }

    /// Readers that lost records to a forced eviction stop holding the
    /// room until they read again: a writer past the bound "evicts what
    /// the laggards have not read", once, not once per message.
    fn release_laggards(&mut self) {
        let first = self.ring.first_seq();
        for mark in self.readers.iter().flatten() {
            let seq = mark.seq.load(Ordering::Relaxed);
            if seq < first && !mark.released.load(Ordering::Relaxed) {
                mark.released.store(true, Ordering::Relaxed);
                self.slowest.left(seq);
            }
        }
    }
}

/// Whether readers that keep a `block` room's writers back may go on
/// doing so.
pub(crate) enum Hold {
    /// No bound: a `drop` room, or `MAX_WAIT_FOREVER`.
    Unbounded,
    /// For this many nanoseconds more (the whole bound when nobody is held).
    Left(u64),
    /// No longer: the next write evicts what they hold.
    Overdue,
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
    pub(crate) stats: Stats,
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
                stats: Stats::default(),
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

    /// Tells whoever waits on the room what changed, after the room lock
    /// is dropped: `events` says what (`IN`: a message to read, `PRI`: a
    /// loss, `OUT`: room to write or budget back, `HUP`: deleted). Sleeping
    /// readers and writers are woken only for what they wait for, and only
    /// if the caller saw any asleep (`asleep`, counted under the lock);
    /// pollers get the events as epoll's key.
    pub(crate) fn changed(&self, events: u32, asleep: Asleep) {
        if events & (events::IN | events::HUP) != 0 && asleep.readers {
            self.readable.notify_all();
        }
        if events & (events::OUT | events::HUP) != 0 && asleep.writers {
            self.writable.notify_all();
        }
        if asleep.pollers {
            self.poll.wake(events);
        }
    }

    /// Tells mapped readers where the ring stands now; under the room lock.
    fn publish(&self, inner: &mut RoomInner) {
        let ring = &inner.ring;
        self.area.publish(
            ring.first_seq(),
            ring.tail_pos(),
            ring.next_seq(),
            ring.head_pos(),
        );
        inner.published_first = ring.first_seq();
    }

    /// Where a record of `size` bytes goes next. The only way to bytes a
    /// writer may fill: evicted records' bytes are handed out only after
    /// mapped readers were told they are gone, whichever path evicted them.
    fn reserve(&self, inner: &mut RoomInner, size: usize) -> Option<Placement> {
        if inner.published_first != inner.ring.first_seq() {
            self.publish(inner);
        }
        inner.ring.place(size)
    }

    /// Replaces the rate limit; every sender starts with a full budget.
    pub(crate) fn set_limit(&self, limit: LimitConfig) {
        let mut inner = self.inner.lock();
        inner.limit = limit;
        inner.senders = RBTree::new();
        inner.sender_count = 0;
        let asleep = inner.asleep();
        drop(inner);
        self.changed(events::OUT | events::WRNORM, asleep);
    }

    /// Replaces a `block` room's bound on laggards. Writers asleep wake to
    /// measure themselves against the new bound, pollers to poll again.
    pub(crate) fn set_max_wait(&self, max_wait_ms: u32) {
        let mut inner = self.inner.lock();
        inner.max_wait_ms = max_wait_ms;
        let asleep = inner.asleep();
        drop(inner);
        self.changed(events::OUT | events::WRNORM, asleep);
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

    /// Writes `src` as messages of at most `max_msg` bytes each; returns how
    /// many bytes were taken. Each message is atomic; after the first, an
    /// error ends the write short instead of failing it (pipe semantics).
    pub(crate) fn write(&self, file: &File, src: &mut IovSource, how: Blocking) -> Result<usize> {
        // The file's ids are fixed at open: read once per write, not per
        // message.
        let writer = Writer::of(file);
        let total = src.len();
        let max = self.settings.max_msg as usize;
        let mut written = 0;
        let mut wakes = Wakes::NONE;
        while written < total {
            let len = max.min(total - written);
            match self.write_message(src, len, &writer, how, None, &mut wakes) {
                Ok(()) => written += len,
                Err(_) if written > 0 => break,
                Err(err) => {
                    wakes.flush(self);
                    return Err(err);
                }
            }
            if wakes.bytes >= self.settings.ring_bytes as usize / 2 {
                wakes.flush(self);
            }
        }
        wakes.flush(self);
        Ok(written)
    }

    /// Writes one relayed message: a `RelayHeader`, then the payload (1 to
    /// `max_msg` bytes, all of the rest of the write). Returns the bytes
    /// taken (all of them). A bad header is `EINVAL`, a payload longer than
    /// `max_msg`, or one whose record (with its origin) could never fit
    /// the ring, `EMSGSIZE`; neither stores anything.
    pub(crate) fn write_relayed(
        &self,
        file: &File,
        src: &mut IovSource,
        how: Blocking,
    ) -> Result<usize> {
        let total = src.len();
        let header_len = core::mem::size_of::<abi::RelayHeader>();
        let Some(len) = total.checked_sub(header_len).filter(|len| *len > 0) else {
            return Err(EINVAL);
        };
        if len > self.settings.max_msg as usize || !self.could_ever_hold(record_cost(len, true)) {
            return Err(emsgsize());
        }
        let header: abi::RelayHeader = src.read()?;
        let origin = header.origin;
        let valid = header.size as usize == header_len
            && header.flags == 0
            && origin.flags == 0
            && origin.reserved == 0
            && origin.reserved2 == 0
            && abi::field_name(&origin.node)
                .is_some_and(|name| crate::name::validate(name).is_ok());
        if !valid {
            return Err(EINVAL);
        }
        let origin = abi::OriginHeader {
            flags: abi::ORIGIN_RELAYED,
            ..origin
        };
        let writer = Writer::of(file);
        let mut wakes = Wakes::NONE;
        let written = self.write_message(src, len, &writer, how, Some(origin), &mut wakes);
        wakes.flush(self);
        written.map(|()| total)
    }

    /// Whether a record of `cost` fits this room's ring at all (when it is
    /// empty). Writes of records that never could are refused up front:
    /// waiting for them could only sleep or spin forever.
    pub(crate) fn could_ever_hold(&self, cost: usize) -> bool {
        cost <= self.settings.ring_bytes as usize
    }

    /// Writes one message: waits for the rate budget and for space first,
    /// holding nothing, then places, fills and publishes it (see the module
    /// doc).
    ///
    /// A writer asleep (over its budget, in a full `block` room, or for its
    /// own memory to be faulted in) holds no lock and no place in the ring;
    /// only the one filling a record holds `writing`, and it copies with
    /// page faults off, so it never sleeps holding it: a writer whose
    /// buffer stalls (a FUSE file, an unserved userfaultfd) holds up only
    /// itself. The wake-ups the message owes go to `wakes`.
    fn write_message(
        &self,
        src: &mut IovSource,
        len: usize,
        writer: &Writer,
        how: Blocking,
        origin: Option<abi::OriginHeader>,
        wakes: &mut Wakes,
    ) -> Result {
        let relayed = origin.is_some();
        let cost = record_cost(len, relayed);
        let size = record_size(len, relayed);
        if !self.could_ever_hold(cost) {
            return Err(emsgsize());
        }
        let charged = {
            let mut inner = self.inner.lock();
            self.wait_for_budget(
                &mut inner,
                writer.charged_uid,
                writer.file_id,
                len,
                how.nonblock,
                wakes,
            )?
        };
        let refund = |err: Error| {
            self.inner.lock().refund(charged, len as u64);
            err
        };
        loop {
            if fatal_signal_pending() {
                return Err(refund(EINTR));
            }
            {
                let mut inner = self.inner.lock();
                if let Err(err) = self.wait_for_space(&mut inner, cost, how.nonblock, false, wakes)
                {
                    // Nothing was sent: a writer is throttled only for what
                    // it sent.
                    inner.refund(charged, len as u64);
                    return Err(err);
                }
            }
            let writing = self.writing.lock();
            let mut inner = self.inner.lock();
            let loss = match self.wait_for_space(&mut inner, cost, true, true, wakes) {
                Ok(loss) => loss,
                // Another writer took the space found before: wait for more
                // without holding `writing`.
                Err(err) if err == EAGAIN && !how.nonblock => continue,
                Err(err) => {
                    inner.refund(charged, len as u64);
                    return Err(err);
                }
            };
            let seq = inner.ring.next_seq();
            let Some(placement) = self.reserve(&mut inner, size) else {
                // The area is sized so that this cannot happen.
                drop(inner);
                return Err(refund(ENOSPC));
            };
            drop(inner);
            let sender = Sender::current(writer.kuid, writer.kgid);
            let time_ns = realtime_ns();
            let header = abi::RingRecord {
                seq,
                time_ns,
                len: len as u32,
                flags: if relayed { abi::RING_ORIGIN } else { 0 },
                pid: sender.pid_in_init_ns(),
                uid: writer.kuid,
                gid: writer.kgid,
                reserved: 0,
            };
            let stamp = Stamp {
                time_ns,
                sender,
                len: len as u32,
                relayed,
            };
            let copied = match self.fill(&placement, &header, origin.as_ref(), &stamp, len, src) {
                Ok(copied) => copied,
                Err(err) => return Err(refund(err)),
            };
            if copied < len {
                // Part of the writer's buffer is not in memory. Fault it in
                // holding nothing, then place the record again: the bytes
                // picked here may be another writer's by then.
                drop(writing);
                src.revert(copied);
                if how.nowait {
                    return Err(refund(EAGAIN));
                }
                if src.fault_in(len) == len {
                    return Err(refund(EFAULT));
                }
                continue;
            }
            let mut inner = self.inner.lock();
            if inner.deleted {
                inner.refund(charged, len as u64);
                return Err(eidrm());
            }
            if inner.ring.push(stamp, cost, size).is_err() {
                // Nothing took the place picked above: only writers push,
                // one at a time.
                inner.refund(charged, len as u64);
                return Err(ENOSPC);
            }
            self.publish(&mut inner);
            let asleep = inner.asleep_for_message(loss);
            drop(inner);
            drop(writing);
            Stats::add(&self.stats.msgs_in, 1);
            Stats::add(&self.stats.bytes_in, len as u64);
            let mut what = events::IN | events::RDNORM;
            if loss {
                what |= events::PRI;
            }
            wakes.add(what, asleep, cost);
            return Ok(());
        }
    }

    /// Writes a record's header, origin and payload at `placement`, holding
    /// `writing`; returns how many payload bytes came from `src` (fewer than
    /// `len` if the rest would have faulted).
    fn fill(
        &self,
        placement: &Placement,
        header: &abi::RingRecord,
        origin: Option<&abi::OriginHeader>,
        stamp: &Stamp,
        len: usize,
        src: &mut IovSource,
    ) -> Result<usize> {
        if let Some(pad_from) = placement.pad_from {
            if self.area.len() - pad_from >= RECORD_HEADER {
                let pad = abi::RingRecord {
                    flags: abi::RING_PAD,
                    ..abi::RingRecord::default()
                };
                self.area.put(pad_from, &pad)?;
            }
        }
        let at = placement.offset;
        self.area.put(at, header)?;
        if let (Some(origin), Some(origin_at)) = (origin, stamp.origin_at(at)) {
            self.area.put(origin_at, origin)?;
        }
        self.area.fill_from_nofault(stamp.payload_at(at), len, src)
    }

    /// Takes a message of `len` bytes from its writer's budget, sleeping
    /// (or `EAGAIN`) while it is spent; returns the budget charged.
    fn wait_for_budget(
        &self,
        inner: &mut Guard<'_, RoomInner, MutexBackend>,
        kuid: u32,
        file_id: u64,
        len: usize,
        nonblock: bool,
        wakes: &mut Wakes,
    ) -> Result<Option<u64>> {
        let mut throttled = false;
        loop {
            if inner.deleted {
                return Err(eidrm());
            }
            let wait_ns = match inner.admit(kuid, file_id, monotonic_ns(), len as u64)? {
                Ok(charged) => return Ok(charged),
                Err(wait_ns) => wait_ns,
            };
            if !throttled {
                throttled = true;
                Stats::add(&self.stats.throttled, 1);
            }
            if nonblock {
                return Err(EAGAIN);
            }
            // What this call wrote must reach its readers before it sleeps.
            wakes.flush(self);
            inner.sleeping_writers += 1;
            let woke = self
                .writable
                .wait_interruptible_timeout(inner, ns_to_jiffies(wait_ns));
            inner.sleeping_writers -= 1;
            if matches!(woke, CondVarTimeoutResult::Signal { .. }) {
                return Err(ERESTARTSYS);
            }
        }
    }

    /// Sleeps (or `EAGAIN`) until a record of `cost` can go in. With
    /// `evict`, also makes the room (evicting as the policy allows) and
    /// says whether a reader lost a message to it; without, only checks.
    ///
    /// In a `block` room, once readers have held writers back for
    /// `max_wait_ms`, a writer evicts what they hold (they learn it as a
    /// loss): one reader that stops cannot hold a room forever.
    fn wait_for_space(
        &self,
        inner: &mut Guard<'_, RoomInner, MutexBackend>,
        cost: usize,
        nonblock: bool,
        evict: bool,
        wakes: &mut Wakes,
    ) -> Result<bool> {
        let policy = self.settings.policy;
        let mut waited = false;
        loop {
            if inner.deleted {
                return Err(eidrm());
            }
            let force = matches!(self.hold(inner), Hold::Overdue);
            if evict {
                let first = inner.ring.first_seq();
                let made = inner.make_room(policy, cost, force);
                // Mapped readers hear of evictions at once, even those of a
                // write that then could not go in.
                if inner.ring.first_seq() != first {
                    self.publish(inner);
                }
                if let Some(loss) = made {
                    if force && loss {
                        Stats::add(&self.stats.laggard_evictions, 1);
                    }
                    // It went through: any hold starts afresh.
                    inner.held_since_ns = None;
                    return Ok(loss);
                }
                if force {
                    // Evicting everything always makes room for what
                    // `could_ever_hold` admits; never retry what cannot be.
                    return Err(ENOSPC);
                }
            } else if force || inner.could_write(policy, cost) {
                return Ok(false);
            }
            // Readers hold this writer back from now on, if not already.
            let now = monotonic_ns();
            inner.held_since_ns.get_or_insert(now);
            if nonblock {
                return Err(EAGAIN);
            }
            // One wait per message, however many wake-ups it takes.
            if !waited {
                waited = true;
                Stats::add(&self.stats.writer_waits, 1);
            }
            // Readers must hear of what this call wrote, or a `block`
            // room's writer would wait for readers that wait for it.
            wakes.flush(self);
            inner.sleeping_writers += 1;
            let interrupted = match self.hold(inner) {
                Hold::Left(left_ns) => matches!(
                    self.writable
                        .wait_interruptible_timeout(inner, ns_to_jiffies(left_ns)),
                    CondVarTimeoutResult::Signal { .. }
                ),
                _ => self.writable.wait_interruptible(inner),
            };
            inner.sleeping_writers -= 1;
            if interrupted {
                return Err(ERESTARTSYS);
            }
        }
    }

    /// Where this room stands against its bound on laggards.
    pub(crate) fn hold(&self, inner: &RoomInner) -> Hold {
        let max_wait_ms = inner.max_wait_ms;
        if self.settings.policy != Policy::Block || max_wait_ms == abi::MAX_WAIT_FOREVER {
            return Hold::Unbounded;
        }
        // `validate` makes a block room's bound at least 1 ms.
        let bound = u64::from(max_wait_ms) * 1_000_000;
        let held = inner
            .held_since_ns
            .map_or(0, |since| monotonic_ns().saturating_sub(since));
        if held >= bound {
            Hold::Overdue
        } else {
            Hold::Left(bound - held)
        }
    }

    /// Registers a reader starting at the end of the ring.
    ///
    /// At most `max_readers` in all, and at most a quarter of them (at
    /// least one) charged to one user (`charged_uid`, see
    /// `File::charged_uid`), unless `exempt()` says the opener may exceed
    /// that (`CAP_SYS_ADMIN`; asked only when it matters).
    pub(crate) fn add_reader(
        &self,
        max_readers: usize,
        (uid, gid): (u32, u32),
        charged_uid: u32,
        exempt: impl FnOnce() -> bool,
    ) -> Result<Arc<ReaderMark>> {
        let mut inner = self.inner.lock();
        if inner.deleted {
            return Err(ENOENT);
        }
        if inner.reader_count() >= max_readers {
            return Err(eusers());
        }
        let share = (max_readers / READER_SHARE).max(1);
        let held = inner
            .readers
            .iter()
            .flatten()
            .filter(|mark| mark.charged_uid == charged_uid)
            .count();
        if held >= share && !exempt() {
            return Err(eusers());
        }
        let seq = inner.ring.next_seq();
        let mark = Arc::new(
            ReaderMark {
                seq: AtomicU64::new(seq),
                lost: AtomicU64::new(0),
                released: AtomicBool::new(false),
                charged_uid,
                opener: Sender::current(uid, gid),
            },
            GFP_KERNEL_ACCOUNT,
        )?;
        match inner.readers.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(mark.clone()),
            None => inner.readers.push(Some(mark.clone()), GFP_KERNEL_ACCOUNT)?,
        }
        inner.reader_total += 1;
        inner.slowest.joined(seq);
        Ok(mark)
    }

    /// Where each reader stands (at most `capacity` of them), as `caller`
    /// (the control file asking) sees their ids and pids; and how many
    /// readers there are.
    pub(crate) fn reader_infos(
        &self,
        caller: &File,
        capacity: usize,
    ) -> Result<(KVVec<abi::ReaderInfo>, usize)> {
        let inner = self.inner.lock();
        let total = inner.reader_total;
        // Up to a few MiB for a room with many readers: vmalloc may serve
        // it, and failing is an answer (ENOMEM), not a warning.
        let mut infos = KVVec::with_capacity(capacity.min(total), GFP_KERNEL | __GFP_NOWARN)?;
        let (first, next) = (inner.ring.first_seq(), inner.ring.next_seq());
        let now = realtime_ns();
        for mark in inner.readers.iter().flatten().take(capacity) {
            let seq = mark.seq.load(Ordering::Relaxed);
            let unread = seq.max(first);
            let behind_ns = match inner.ring.get(unread) {
                Lookup::Ready(slot) => now.saturating_sub(slot.meta().time_ns).max(1),
                _ => 0,
            };
            let (uid, gid) = caller.ids_as_seen(mark.opener.kuid, mark.opener.kgid);
            infos.push(
                abi::ReaderInfo {
                    pid: mark.opener.pid_for_current(),
                    uid,
                    gid,
                    flags: 0,
                    lag_msgs: next.saturating_sub(unread),
                    lag_bytes: inner.ring.bytes_from(seq) as u64,
                    lost: mark.lost.load(Ordering::Relaxed) + first.saturating_sub(seq),
                    behind_ns,
                },
                GFP_KERNEL,
            )?;
        }
        Ok((infos, total))
    }

    /// Forgets a reader; a `block` room's writers may go on.
    pub(crate) fn remove_reader(&self, mark: &Arc<ReaderMark>) {
        let mut inner = self.inner.lock();
        let slot = inner
            .readers
            .iter_mut()
            .find(|slot| slot.as_ref().is_some_and(|m| Arc::ptr_eq(m, mark)));
        if let Some(slot) = slot {
            *slot = None;
            inner.reader_total -= 1;
            if !mark.released.load(Ordering::Relaxed) {
                inner.slowest.left(mark.seq.load(Ordering::Relaxed));
            }
        }
        let asleep = inner.asleep();
        drop(inner);
        self.changed(events::OUT | events::WRNORM, asleep);
    }
}
