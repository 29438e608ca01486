// SPDX-License-Identifier: GPL-2.0
//! `Room`'s space: what a record costs, when it fits, what a policy may
//! evict for it (and the bound on laggards in `block` rooms), and how
//! evictions reach mapped readers before their bytes are reused.

use super::{wake::Wakes, Policy, Room, RoomInner, Stats, RECORD_HEADER};
use crate::{
    abi,
    compat::{
        errno::eidrm,
        poll::events,
        task::{monotonic_ns, ns_to_jiffies},
    },
    ring::Places,
};
use kernel::{
    prelude::*,
    sync::{
        lock::{mutex::MutexBackend, Guard},
        CondVarTimeoutResult,
    },
};

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
pub(super) fn record_size(len: usize, relayed: bool) -> usize {
    RECORD_HEADER + len + if relayed { ORIGIN } else { 0 }
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

impl RoomInner {
    /// Whether a write of `cost` would go through without waiting.
    pub(crate) fn could_write(&mut self, policy: Policy, cost: usize) -> bool {
        self.could_write_many(policy, 1, cost)
    }

    /// Whether `records` records of `cost` together would go in without
    /// waiting, evicting only what the policy allows without force.
    fn could_write_many(&mut self, policy: Policy, records: usize, cost: usize) -> bool {
        match policy {
            Policy::Drop => self.ring.could_ever_fit_many(records, cost),
            Policy::Block => {
                let slowest = self.slowest_reader();
                self.ring
                    .fits_many_after_evicting_before(slowest, records, cost)
            }
        }
    }

    /// Makes room for `records` records of `cost` together if the policy
    /// allows: `None` if it cannot, else whether a reader lost a message to
    /// make it. `force` evicts whatever it takes, as a `drop` room does (a
    /// `block` room whose laggard has held writers back too long).
    fn make_room(
        &mut self,
        policy: Policy,
        records: usize,
        cost: usize,
        force: bool,
    ) -> Option<bool> {
        if self.ring.fits_many(records, cost) {
            return Some(false);
        }
        // Only reads move readers, and none happens under this lock.
        let slowest = self.slowest_reader();
        let mut loss = false;
        while !self.ring.fits_many(records, cost) {
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
}

impl Room {
    /// Tells mapped readers where the ring stands now; under the room lock.
    pub(super) fn publish(&self, inner: &mut RoomInner) {
        let ring = &inner.ring;
        self.area.publish(
            ring.first_seq(),
            ring.tail_pos(),
            ring.next_seq(),
            ring.head_pos(),
        );
        inner.published_first = ring.first_seq();
    }

    /// Where the records pushed next go, one after another. The only way
    /// to bytes a writer may fill: evicted records' bytes are handed out
    /// only after mapped readers were told they are gone, whichever path
    /// evicted them.
    pub(super) fn reserve(&self, inner: &mut RoomInner) -> Places {
        if inner.published_first != inner.ring.first_seq() {
            self.publish(inner);
        }
        inner.ring.places()
    }

    /// Makes room for `records` records of `cost` together (a batch's first
    /// ones, or all of it) as far as the policy allows without waiting or
    /// forcing a laggard out: `None`, having evicted nothing, if it cannot
    /// now; else whether a reader lost a message to it. What a `block` room
    /// evicts here every reader had read; `Room::reserve` tells mapped
    /// readers before the bytes are reused.
    pub(super) fn make_room_now(
        &self,
        inner: &mut RoomInner,
        records: usize,
        cost: usize,
    ) -> Option<bool> {
        // A batch that could never fit would evict everything first, and
        // a `block` room must not evict for messages that then do not go
        // in (a refused message evicts nothing).
        let policy = self.settings.policy;
        if inner.deleted || !inner.could_write_many(policy, records, cost) {
            return None;
        }
        inner.make_room(policy, records, cost, false)
    }

    /// Whether a record of `cost` fits this room's ring at all (when it is
    /// empty). Writes of records that never could are refused up front:
    /// waiting for them could only sleep or spin forever.
    pub(crate) fn could_ever_hold(&self, cost: usize) -> bool {
        cost <= self.settings.ring_bytes as usize
    }

    /// Sleeps (or `EAGAIN`) until a record of `cost` can go in. With
    /// `evict`, also makes the room (evicting as the policy allows) and
    /// says whether a reader lost a message to it; without, only checks.
    ///
    /// In a `block` room, once readers have held writers back for
    /// `max_wait_ms`, a writer evicts what they hold (they learn it as a
    /// loss): one reader that stops cannot hold a room forever.
    pub(super) fn wait_for_space(
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
                let made = inner.make_room(policy, 1, cost, force);
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
            let hold = self.hold(inner);
            if matches!(hold, Hold::Overdue) {
                // The bound ran out since the check above: evict now rather
                // than sleep with no timeout.
                continue;
            }
            inner.sleeping_writers += 1;
            let interrupted = match hold {
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

    /// Replaces a `block` room's bound on laggards. Writers asleep wake to
    /// measure themselves against the new bound, pollers to poll again.
    pub(crate) fn set_max_wait(&self, max_wait_ms: u32) {
        let mut inner = self.inner.lock();
        inner.max_wait_ms = max_wait_ms;
        let asleep = inner.asleep();
        drop(inner);
        self.changed(events::OUT | events::WRNORM, asleep);
    }
}
