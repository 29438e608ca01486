// SPDX-License-Identifier: GPL-2.0
//! `Room`'s readers: their marks and positions, the per-user share of
//! reader slots, the slowest reader a `block` room waits for, and the
//! laggards a forced eviction releases.

use super::{Room, RoomInner};
use crate::{
    abi,
    compat::{
        errno::eusers,
        file::File,
        poll::events,
        task::{realtime_ns, Sender},
    },
    ring::Lookup,
};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kernel::{
    alloc::{
        flags::{__GFP_NOWARN, GFP_KERNEL_ACCOUNT},
        KVVec,
    },
    prelude::*,
    sync::Arc,
};

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

impl RoomInner {
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
    pub(super) fn slowest_reader(&mut self) -> u64 {
        let readers = &self.readers;
        self.slowest.get(
            readers
                .iter()
                .flatten()
                .filter(|mark| !mark.released.load(Ordering::Relaxed))
                .map(|mark| mark.seq.load(Ordering::Relaxed)),
        )
    }

    /// Readers that lost records to a forced eviction stop holding the
    /// room until they read again: a writer past the bound "evicts what
    /// the laggards have not read", once, not once per message.
    pub(super) fn release_laggards(&mut self) {
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

impl Room {
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
