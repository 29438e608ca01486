// SPDX-License-Identifier: GPL-2.0
//! `RoomFile`: one open file on a room node, with its own cursor, read
//! mode and write mode.
//!
//! Readers start at the end (new messages only). Stream reads return as many
//! whole messages as fit, and a message larger than the buffer in parts,
//! like a pipe, so `dd bs=1` works. Packet reads return one message; framed
//! reads prefix each with the kernel's `FrameHeader`. Concurrent reads on
//! one file are serialised by its cursor lock; different files never wait
//! for each other beyond the room lock's brief hold.

use crate::{
    abi,
    compat::{
        errno::{emsgsize, erange},
        file::{current_capable, Capability, File, OpeningFile},
        fops::FileOps,
        iov::{IovDest, IovSource, Kiocb},
        poll::{events, PollTable},
        ring_area::Vma,
        task::{monotonic_ns, signal_pending},
        uaccess::user_slice,
    },
    ring::Lookup,
    room::{record_cost, Blocking, Hold, Policy, ReaderMark, Room, RoomInner, Stats, ORIGIN},
};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use kernel::{
    new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
};

/// Records planned under one hold of the room lock: a read plans and copies
/// this many at a time, and goes on while whole batches fit its buffer.
const BATCH: usize = 32;

const HEADER: usize = core::mem::size_of::<abi::FrameHeader>();

/// Bytes before a message's payload in a framed mode.
fn frame_len(mode: u32) -> usize {
    if mode == abi::READ_FRAMED_ORIGIN {
        HEADER + ORIGIN
    } else {
        HEADER
    }
}

/// Where this file reads: the message (`ReaderMark::seq`, which the room
/// reads too) and how many of its bytes stream reads already returned.
///
/// Behind `RoomFile::cursor`. The sequence number moves only through
/// [`Cursor::place`], which sets the byte offset with it, so an offset can
/// never outlive the message it belongs to (it once did: a loss query moved
/// the sequence past an evicted message and the next read subtracted the
/// stale offset from a shorter one).
struct Cursor {
    offset: usize,
}

impl Cursor {
    /// Puts the cursor `offset` bytes into message `seq`; `inner` is the
    /// room's locked state, which tracks every reader's position.
    fn place(&mut self, mark: &ReaderMark, inner: &mut RoomInner, seq: u64, offset: usize) {
        inner.move_reader(mark, seq);
        self.offset = offset;
    }

    /// Skips the messages the ring evicted before this reader read them,
    /// counting them as lost.
    fn catch_up(&mut self, mark: &ReaderMark, inner: &mut RoomInner, stats: &Stats) {
        if let Lookup::Lost { first, lost } = inner.ring.get(mark.seq.load(Ordering::Relaxed)) {
            mark.lost.fetch_add(lost, Ordering::Relaxed);
            Stats::add(&stats.lost, lost);
            self.place(mark, inner, first, 0);
        }
    }

    /// After a copy that a writer overtook: skips to halfway through what
    /// the ring holds, counting what it skips as lost. Resuming at the
    /// oldest record would race the writer for the very next record it
    /// evicts; halfway, the reader has half a ring of slack, so the retry
    /// loop ends.
    fn skip_in(&mut self, mark: &ReaderMark, inner: &mut RoomInner, stats: &Stats) {
        let (first, next) = (inner.ring.first_seq(), inner.ring.next_seq());
        let seq = mark.seq.load(Ordering::Relaxed);
        let target = first + (next - first) / 2;
        if target > seq {
            mark.lost.fetch_add(target - seq, Ordering::Relaxed);
            Stats::add(&stats.lost, target - seq);
            self.place(mark, inner, target, 0);
        }
    }
}

#[pin_data(PinnedDrop)]
pub(crate) struct RoomFile {
    room: Arc<Room>,
    /// Set for read-mode opens; a write-only open never holds a room back.
    mark: Option<Arc<ReaderMark>>,
    /// Opened for writing (counted in the room's `writers`).
    writer: bool,
    /// The file's id, its per-file rate budget key.
    file_id: u64,
    /// `abi::READ_*`.
    mode: AtomicU32,
    /// A relay (`IOC_SET_RELAY`): its writes are relay frames.
    relay: AtomicBool,
    /// `abi::WRITE_*`.
    write_mode: AtomicU32,
    #[pin]
    cursor: Mutex<Cursor>,
}

#[pinned_drop]
impl PinnedDrop for RoomFile {
    fn drop(self: Pin<&mut Self>) {
        if let Some(mark) = &self.mark {
            self.room.remove_reader(mark);
        }
        if self.writer {
            self.room.stats.writers.fetch_sub(1, Ordering::Relaxed);
            self.room.inner.lock().forget_sender(self.file_id);
        }
    }
}

#[vtable]
impl FileOps for RoomFile {
    type Ptr = Pin<KBox<RoomFile>>;
    /// The room, and how many readers it may have.
    type Target = (Arc<Room>, usize);

    fn open(file: &OpeningFile, (room, max_readers): (Arc<Room>, usize)) -> Result<Self::Ptr> {
        // Access belongs to the room, not to whatever node reached it: a
        // node made with `mknod`, or a stale one after its room went, may
        // carry another mode or name another room than it was made for.
        let settings = &room.settings;
        if !file.opener_may_access(settings.uid, settings.gid, settings.mode) {
            return Err(EACCES);
        }
        let mark = if file.readable() {
            let ids = file.effective_ids();
            let charged = file.charged_uid();
            Some(room.add_reader(max_readers, ids, charged, || {
                current_capable(Capability::SysAdmin)
            })?)
        } else {
            None
        };
        let writer = file.writable();
        let registered = mark.clone();
        file.refuse_positional_io();
        file.allow_nowait();
        // O_DIRECT selects packet mode, as it does for pipes.
        let mode = if file.direct() {
            file.allow_direct();
            abi::READ_PACKET
        } else {
            abi::READ_STREAM
        };
        let shared = room.clone();
        let init = pin_init!(RoomFile {
            room: shared,
            mark,
            writer,
            file_id: file.id(),
            mode: AtomicU32::new(mode),
            relay: AtomicBool::new(false),
            write_mode: AtomicU32::new(abi::WRITE_PLAIN),
            cursor <- new_mutex!(Cursor { offset: 0 }, "RoomFile::cursor"),
        });
        let state = match KBox::pin_init(init, GFP_KERNEL_ACCOUNT) {
            Ok(state) => state,
            Err(err) => {
                // The reader must not linger and hold a `block` room back.
                if let Some(mark) = &registered {
                    room.remove_reader(mark);
                }
                return Err(err);
            }
        };
        if writer {
            room.stats.writers.fetch_add(1, Ordering::Relaxed);
        }
        Ok(state)
    }

    fn read_iter(this: Pin<&RoomFile>, iocb: &Kiocb, dest: &mut IovDest<'_>) -> Result<usize> {
        this.read_messages(iocb.file(), dest, iocb.nonblocking())
    }

    fn write_iter(this: Pin<&RoomFile>, iocb: &Kiocb, src: &mut IovSource<'_>) -> Result<usize> {
        let how = Blocking {
            nonblock: iocb.nonblocking(),
            nowait: iocb.nowait(),
        };
        let relay = this.relay.load(Ordering::Relaxed);
        if this.write_mode.load(Ordering::Relaxed) == abi::WRITE_FRAMED {
            return this.room.write_framed(iocb.file(), src, how, relay);
        }
        if relay {
            return this.room.write_relayed(iocb.file(), src, how);
        }
        this.room.write(iocb.file(), src, how)
    }

    fn poll(this: Pin<&RoomFile>, file: &File, table: &PollTable) -> u32 {
        let room = &this.room;
        room.poll.register(file, table);
        let mut inner = room.inner.lock();
        let mut mask = 0;
        if let Some(mark) = &this.mark {
            match inner.ring.get(mark.seq.load(Ordering::Relaxed)) {
                Lookup::Ready(_) => mask |= events::IN | events::RDNORM,
                Lookup::Lost { .. } => mask |= events::IN | events::RDNORM | events::PRI,
                Lookup::Pending if inner.deleted => mask |= events::IN | events::RDNORM,
                Lookup::Pending => {}
            }
            // An unreported loss is urgent while there is something to
            // read. A reader that read everything has no use for a level
            // it cannot clear by reading (stream and packet reads never
            // report losses), and pollers that always ask for it would spin
            // on it: io_uring arms every read's poll with `EPOLLPRI`, and
            // after 128 such futile retries parks the read on an io-wq
            // worker thread.
            if mark.lost.load(Ordering::Relaxed) > 0 && mask & events::IN != 0 {
                mask |= events::PRI;
            }
            if mask & events::IN == 0 {
                inner.park();
            }
            let asked = table.requested();
            if asked & events::PRI != 0 && asked & events::IN == 0 {
                inner.pri_watched = true;
            }
        }
        if file.writable() && !inner.deleted {
            // Writable means a message of any allowed size would go in now:
            // room for it, and budget for it. A relay's records carry their
            // origin too.
            let max_msg = room.settings.max_msg;
            let relay = this.relay.load(Ordering::Relaxed);
            let worst = record_cost(max_msg as usize, relay);
            let hold = room.hold(&inner);
            // Past a laggard's bound a write evicts it, so it would go in.
            let space =
                inner.could_write(room.settings.policy, worst) || matches!(hold, Hold::Overdue);
            if !space {
                if let Hold::Left(left_ns) = hold {
                    // Readiness that only time brings; no event would say so.
                    room.poll.wake_after(left_ns, events::OUT | events::WRNORM);
                }
            }
            let budget_ns = inner.budget_wait(
                file.charged_uid(),
                this.file_id,
                monotonic_ns(),
                u64::from(max_msg),
            );
            if budget_ns > 0 {
                room.poll
                    .wake_after(budget_ns, events::OUT | events::WRNORM);
            }
            if space && budget_ns == 0 {
                mask |= events::OUT | events::WRNORM;
            }
        }
        if inner.deleted {
            mask |= events::HUP;
            if file.writable() {
                mask |= events::ERR;
            }
        }
        mask
    }

    fn ioctl(this: Pin<&RoomFile>, file: &File, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            abi::IOC_SET_READ_MODE => {
                let mode = user_slice(arg, core::mem::size_of::<u32>())
                    .reader()
                    .read::<u32>()?;
                if !matches!(
                    mode,
                    abi::READ_STREAM
                        | abi::READ_PACKET
                        | abi::READ_FRAMED
                        | abi::READ_FRAMED_ORIGIN
                ) {
                    return Err(EINVAL);
                }
                // A message half read in stream mode restarts in the new mode.
                let mut cursor = this.cursor.lock();
                cursor.offset = 0;
                this.mode.store(mode, Ordering::Relaxed);
            }
            abi::IOC_TAKE_LOST => {
                let mark = this.mark.as_ref().ok_or(EBADF)?;
                let mut writer = user_slice(arg, core::mem::size_of::<u64>()).writer();
                let mut cursor = this.cursor.lock();
                let lost = {
                    let mut inner = this.room.inner.lock();
                    cursor.catch_up(mark, &mut inner, &this.room.stats);
                    mark.lost.swap(0, Ordering::Relaxed)
                };
                drop(cursor);
                if let Err(err) = writer.write(&lost) {
                    // Nothing was reported, so nothing is forgotten.
                    mark.lost.fetch_add(lost, Ordering::Relaxed);
                    return Err(err);
                }
            }
            abi::IOC_SEEK_SEQ => {
                let seq = user_slice(arg, core::mem::size_of::<u64>())
                    .reader()
                    .read::<u64>()?;
                this.seek(|first, next, _| {
                    if (first..=next).contains(&seq) {
                        Ok(seq)
                    } else {
                        Err(erange())
                    }
                })?;
            }
            abi::IOC_SET_RELAY => {
                let on = user_slice(arg, core::mem::size_of::<u32>())
                    .reader()
                    .read::<u32>()?;
                if on != 1 {
                    return Err(EINVAL);
                }
                if !this.writer {
                    return Err(EBADF);
                }
                // The control plane's privilege: relayed messages carry an
                // origin the kernel cannot check, so only those trusted
                // with rooms may relay. Judged by who opened the file, not
                // by who calls: a privileged program handed an
                // unprivileged user's fd must not make it a relay. A relay
                // fd is a capability from then on, whoever holds it.
                if !file.opened_with_sys_admin() {
                    return Err(EPERM);
                }
                this.relay.store(true, Ordering::Relaxed);
            }
            abi::IOC_SET_WRITE_MODE => {
                let mode = user_slice(arg, core::mem::size_of::<u32>())
                    .reader()
                    .read::<u32>()?;
                if !matches!(mode, abi::WRITE_PLAIN | abi::WRITE_FRAMED) {
                    return Err(EINVAL);
                }
                if !this.writer {
                    return Err(EBADF);
                }
                // A write under way keeps the mode it started in: the mode
                // is read once per write.
                this.write_mode.store(mode, Ordering::Relaxed);
            }
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }

    /// Maps the room's ring read-only (docs/kernel-abi.md, "Mapped
    /// readers"). Only for readers, and only where the ids the ring shows
    /// (as the initial namespaces see them) are the ones `read` would show:
    /// elsewhere `EPERM`, and `read` still works.
    fn mmap(this: Pin<&RoomFile>, file: &File, vma: &Vma) -> Result {
        if this.mark.is_none() {
            return Err(EACCES);
        }
        if !file.in_initial_namespaces() {
            return Err(EPERM);
        }
        this.room.area.map_read_only(vma)
    }

    fn llseek(this: Pin<&RoomFile>, _file: &File, offset: i64, whence: u32) -> Result<i64> {
        let seq = this.seek(|first, next, here| {
            let base = match whence {
                SEEK_SET => first,
                SEEK_CUR => here,
                SEEK_END => next,
                _ => return Err(EINVAL),
            };
            let target =
                (i128::from(base) + i128::from(offset)).clamp(i128::from(first), i128::from(next));
            Ok(target as u64)
        })?;
        Ok(seq as i64)
    }
}

const SEEK_SET: u32 = 0;
const SEEK_CUR: u32 = 1;
const SEEK_END: u32 = 2;

impl RoomFile {
    /// Moves the cursor to where `pick(first, next, here)` says; returns it.
    fn seek(&self, pick: impl FnOnce(u64, u64, u64) -> Result<u64>) -> Result<u64> {
        let mark = self.mark.as_ref().ok_or(EBADF)?;
        let mut cursor = self.cursor.lock();
        let mut inner = self.room.inner.lock();
        cursor.catch_up(mark, &mut inner, &self.room.stats);
        let here = mark.seq.load(Ordering::Relaxed);
        let seq = pick(inner.ring.first_seq(), inner.ring.next_seq(), here)?;
        cursor.place(mark, &mut inner, seq, 0);
        if seq == inner.ring.next_seq() {
            // A reader that seeks to the end waits for the next message as
            // one that found nothing to read does: a mapped reader reports
            // its place this way, then sleeps in (edge-triggered) epoll.
            inner.park();
        }
        let asleep = inner.asleep();
        drop(inner);
        drop(cursor);
        if self.room.settings.policy == Policy::Block {
            // Seeking forward may free writers and pollers; back holds them
            // (readers only ever hold what is retained, so nothing breaks).
            self.room.changed(events::OUT | events::WRNORM, asleep);
        }
        Ok(seq)
    }

    /// Reads in the file's mode; see the module documentation.
    ///
    /// A blocking read sleeps without the cursor lock, so another thread's
    /// seek, ioctl or non-blocking read on the same file never waits for a
    /// message to arrive.
    fn read_messages(&self, file: &File, dest: &mut IovDest<'_>, nonblock: bool) -> Result<usize> {
        let mark = self.mark.as_ref().ok_or(EBADF)?;
        let room = &self.room;
        let mut overtaken = false;
        loop {
            let mut cursor = self.cursor.lock();
            let mut inner = room.inner.lock();
            cursor.catch_up(mark, &mut inner, &room.stats);
            if core::mem::take(&mut overtaken) {
                cursor.skip_in(mark, &mut inner, &room.stats);
            }
            let seq = mark.seq.load(Ordering::Relaxed);
            if let Lookup::Ready(_) = inner.ring.get(seq) {
                // The mode is set under the cursor lock, so it holds for
                // this whole read.
                let mode = self.mode.load(Ordering::Relaxed);
                let mut batch = Batch::EMPTY;
                plan(
                    &inner,
                    file,
                    seq,
                    cursor.offset,
                    mode,
                    dest.len(),
                    true,
                    &mut batch,
                )?;
                drop(inner);
                match self.copy_batches(file, &mut cursor, mark, seq, mode, &mut batch, dest)? {
                    Some(copied) => return Ok(copied),
                    // Overwritten while copied: read again, past the loss.
                    None => {
                        if signal_pending() {
                            return Err(ERESTARTSYS);
                        }
                        overtaken = true;
                        continue;
                    }
                }
            }
            if inner.deleted {
                return Ok(0);
            }
            if nonblock {
                // io_uring and edge-triggered epoll wait for the next
                // message after this.
                inner.park();
                return Err(EAGAIN);
            }
            drop(cursor);
            while !inner.deleted
                && matches!(
                    inner.ring.get(mark.seq.load(Ordering::Relaxed)),
                    Lookup::Pending
                )
            {
                inner.sleeping_readers += 1;
                let interrupted = room.readable.wait_interruptible(&mut inner);
                inner.sleeping_readers -= 1;
                if interrupted {
                    return Err(ERESTARTSYS);
                }
            }
        }
    }

    /// Copies `batch` (the read's first, planned at `seq`) and, after each
    /// full batch copied whole, the next one while it fits `dest` and is
    /// ready, so one read returns as many whole messages as fit (what the
    /// ABI says) in passes of [`BATCH`]. Each next batch is planned under
    /// the hold of the room lock that moved the cursor past the one before:
    /// one hold per batch. Returns what it copied; `None` if the first
    /// batch was overtaken (nothing copied), and its error if the first
    /// batch failed. A later batch's trouble (a loss, a fault) ends the
    /// read with what it has: the next read meets it first.
    #[allow(clippy::too_many_arguments)]
    fn copy_batches(
        &self,
        file: &File,
        cursor: &mut Cursor,
        mark: &ReaderMark,
        mut seq: u64,
        mode: u32,
        batch: &mut Batch,
        dest: &mut IovDest<'_>,
    ) -> Result<Option<usize>> {
        let mut copied = 0;
        let mut first = true;
        // Each pass copies a whole batch: `dest` shrinks until it is empty
        // or the room has nothing ready, so this ends; the signal check
        // bounds a huge buffer on a busy room.
        loop {
            let outcome = self.copy_out(
                cursor,
                mark,
                seq,
                mode,
                batch,
                dest,
                |inner, batch, next, space| {
                    // A batch of none: nothing ready at `next`, or the
                    // first message there does not fit.
                    space > 0
                        && !signal_pending()
                        && plan(inner, file, next, 0, mode, space, false, batch).is_ok()
                        && batch.count > 0
                },
            );
            match outcome {
                Ok(Some((more, next))) => {
                    copied += more;
                    match next {
                        Some(next) => seq = next,
                        None => return Ok(Some(copied)),
                    }
                }
                Ok(None) if first => return Ok(None),
                Err(err) if first => return Err(err),
                // Overtaken or faulted: the next read says so.
                Ok(None) | Err(_) => return Ok(Some(copied)),
            }
            first = false;
        }
    }

    /// Copies the planned records out, without the room lock (user memory
    /// may fault and sleep), and moves the cursor past what was returned;
    /// `None` if the first record was evicted and its bytes reused while
    /// they were copied (see `room.rs`): nothing is returned then, and the
    /// cursor stays, so the next look counts the loss.
    ///
    /// When every record of a full batch was copied, `plan_next` runs under
    /// the same hold of the room lock that moved the cursor, given where
    /// the cursor now is and the bytes `dest` has left: if it planned the
    /// next batch in `batch`, where that starts is returned with the bytes
    /// copied.
    #[allow(clippy::too_many_arguments)]
    fn copy_out(
        &self,
        cursor: &mut Cursor,
        mark: &ReaderMark,
        seq: u64,
        mode: u32,
        batch: &mut Batch,
        dest: &mut IovDest<'_>,
        plan_next: impl FnOnce(&RoomInner, &mut Batch, u64, usize) -> bool,
    ) -> Result<Option<(usize, Option<u64>)>> {
        let room = &self.room;
        let area = &room.area;
        // Where the read started: a failed record's copy may have moved the
        // iter past what the read returns.
        let space = dest.len();
        let mut copied = 0;
        let mut finished = 0u64;
        // Bytes returned of the first record not finished (stream reads).
        let mut partial = cursor.offset;
        // What the first framed header reported as lost.
        let mut reported = 0;
        for (n, record) in batch.records().iter().enumerate() {
            let len = record.len as usize;
            let result = match mode {
                abi::READ_STREAM => {
                    let skip = if finished == 0 { cursor.offset } else { 0 };
                    let rest = len.saturating_sub(skip);
                    let take = rest.min(dest.len());
                    match area.copy_to(record.payload_at + skip, take, dest) {
                        Ok(()) if take < rest => {
                            copied += take;
                            partial = skip + take;
                            break;
                        }
                        Ok(()) => Ok(take),
                        Err(err) => Err(err),
                    }
                }
                abi::READ_PACKET => area.copy_to(record.payload_at, len, dest).map(|()| len),
                // READ_FRAMED, READ_FRAMED_ORIGIN.
                _ => {
                    let lost = if finished == 0 {
                        reported = mark.lost.swap(0, Ordering::Relaxed);
                        reported
                    } else {
                        0
                    };
                    let header = record.header(seq + n as u64, lost);
                    let written = dest.write(&header).and_then(|()| {
                        if mode == abi::READ_FRAMED_ORIGIN {
                            match record.origin_at() {
                                Some(at) => area.copy_to(at, ORIGIN, dest)?,
                                None => dest.write(&abi::OriginHeader::default())?,
                            }
                        }
                        area.copy_to(record.payload_at, len, dest)
                    });
                    if written.is_err() && finished == 0 {
                        mark.lost
                            .fetch_add(core::mem::take(&mut reported), Ordering::Relaxed);
                    }
                    written.map(|()| frame_len(mode) + len)
                }
            };
            match result {
                Ok(n) => {
                    copied += n;
                    partial = 0;
                    finished += 1;
                }
                Err(err) if copied == 0 => return Err(err),
                Err(_) => break,
            }
        }
        let mut inner = room.inner.lock();
        let advanced = space - dest.len();
        if seq < inner.ring.first_seq() {
            drop(inner);
            dest.revert(advanced);
            mark.lost.fetch_add(reported, Ordering::Relaxed);
            return Ok(None);
        }
        // The read returns `copied`; the iter must say so too.
        dest.revert(advanced.saturating_sub(copied));
        let next = seq + finished;
        cursor.place(mark, &mut inner, next, partial);
        let whole = batch.is_full() && finished == batch.count as u64;
        let next = (whole && plan_next(&inner, batch, next, dest.len())).then_some(next);
        let asleep = inner.asleep();
        drop(inner);
        if finished > 0 {
            Stats::add(&room.stats.deliveries, finished);
            if room.settings.policy == Policy::Block {
                room.changed(events::OUT | events::WRNORM, asleep);
            }
        }
        Ok(Some((copied, next)))
    }
}

/// One record a read returns: where its payload is, and what its frame
/// header says (framed modes), looked up under the room lock.
#[derive(Clone, Copy)]
struct Planned {
    time_ns: u64,
    len: u32,
    pid: u32,
    uid: u32,
    gid: u32,
    payload_at: usize,
    relayed: bool,
}

impl Planned {
    const EMPTY: Planned = Planned {
        time_ns: 0,
        len: 0,
        pid: 0,
        uid: 0,
        gid: 0,
        payload_at: 0,
        relayed: false,
    };

    /// Its frame header as this reader sees it: record `seq`, `lost` just
    /// before it.
    fn header(&self, seq: u64, lost: u64) -> abi::FrameHeader {
        abi::FrameHeader {
            seq,
            time_ns: self.time_ns,
            lost,
            len: self.len,
            pid: self.pid,
            uid: self.uid,
            gid: self.gid,
        }
    }

    /// Where its origin header is, if it was relayed.
    fn origin_at(&self) -> Option<usize> {
        self.relayed.then(|| self.payload_at - ORIGIN)
    }
}

/// The records one pass of a read returns, oldest first.
struct Batch {
    records: [Planned; BATCH],
    count: usize,
}

impl Batch {
    const EMPTY: Batch = Batch {
        records: [Planned::EMPTY; BATCH],
        count: 0,
    };

    fn records(&self) -> &[Planned] {
        self.records.get(..self.count).unwrap_or(&[])
    }

    /// Whether it took all [`BATCH`] records: only then may more follow.
    fn is_full(&self) -> bool {
        self.count == BATCH
    }
}

/// Picks the records a read of `space` bytes in `mode` returns, starting
/// `offset` bytes into record `seq` (which is ready), into `batch`;
/// `EMSGSIZE` when a packet or frame does not fit. Only the read's `first`
/// pass may return part of a message (one larger than the buffer, in
/// stream mode) or fail; a later pass takes whole messages, or none.
/// Framed modes get their senders as `file`'s namespaces see them: its pid
/// namespace for the pid, its user namespace for the ids
/// (`SCM_CREDENTIALS`' rule).
#[allow(clippy::too_many_arguments)]
fn plan(
    inner: &RoomInner,
    file: &File,
    seq: u64,
    offset: usize,
    mode: u32,
    space: usize,
    first: bool,
    batch: &mut Batch,
) -> Result {
    batch.count = 0;
    let mut planned = 0usize;
    let area = inner.ring.area();
    let framed = mode == abi::READ_FRAMED || mode == abi::READ_FRAMED_ORIGIN;
    for (n, entry) in batch.records.iter_mut().enumerate() {
        let Lookup::Ready(slot) = inner.ring.get(seq + n as u64) else {
            break;
        };
        let stamp = slot.meta();
        let len = stamp.len as usize;
        // The message the read starts with.
        let opening = first && n == 0;
        let size = match mode {
            abi::READ_STREAM if opening => len.saturating_sub(offset),
            abi::READ_STREAM => len,
            abi::READ_PACKET if n > 0 => break,
            abi::READ_PACKET => len,
            _ => frame_len(mode) + len,
        };
        if planned.saturating_add(size) > space {
            if opening && mode != abi::READ_STREAM {
                return Err(emsgsize());
            }
            if !opening {
                break;
            }
        }
        *entry = Planned {
            time_ns: stamp.time_ns,
            len: stamp.len,
            payload_at: stamp.payload_at(slot.offset(area)),
            relayed: stamp.relayed,
            ..Planned::EMPTY
        };
        if framed {
            let (uid, gid) = file.ids_as_seen(stamp.sender.kuid, stamp.sender.kgid);
            entry.pid = stamp.sender.pid_for_current();
            entry.uid = uid;
            entry.gid = gid;
        }
        batch.count += 1;
        planned = planned.saturating_add(size);
        if planned >= space {
            break;
        }
    }
    Ok(())
}
