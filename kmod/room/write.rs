// SPDX-License-Identifier: GPL-2.0
//! `Room`'s write path: messages in batches, budget and space first, then
//! placed together under one pass of the room lock, filled with page
//! faults off and published together (see the module doc of `room.rs`);
//! plain, relayed and framed writes (records of their own sizes) all come
//! down to `write_batch`.

use super::{
    payload_at,
    space::{record_cost, record_size},
    wake::{Asleep, Wakes},
    Room, RoomInner, Stamp, Stats, RECORD_HEADER,
};
use crate::{
    abi,
    compat::{
        errno::{eidrm, emsgsize},
        file::File,
        iov::IovSource,
        poll::events,
        task::{fatal_signal_pending, realtime_ns, signal_pending, Sender},
    },
    ring::Placement,
};
use core::sync::atomic::Ordering;
use kernel::{
    prelude::*,
    sync::lock::{mutex::MutexBackend, Guard},
};

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

/// The most messages one pass of the room lock places: a burst of small
/// messages costs one lock pass, one stamp (clock and sender) and one
/// publish per this many, not per message. The lengths live on the stack.
const BATCH: usize = 32;

/// The messages one pass places, in order: their payload lengths, and the
/// bytes of source before each payload (a framed write's `WriteFrame`,
/// read and checked before the pass; 0 for plain and relayed writes).
struct Batch {
    lens: [u32; BATCH],
    count: usize,
    frame: usize,
}

impl Batch {
    fn new(frame: usize) -> Batch {
        Batch {
            lens: [0; BATCH],
            count: 0,
            frame,
        }
    }

    fn one(len: usize) -> Batch {
        let mut batch = Batch::new(0);
        batch.push(len);
        batch
    }

    /// Adds a message of `len` (at most `max_msg`) bytes, if there is room.
    fn push(&mut self, len: usize) {
        if let Some(slot) = self.lens.get_mut(self.count) {
            *slot = len as u32;
            self.count += 1;
        }
    }

    fn len(&self, index: usize) -> usize {
        self.lens.get(index).map_or(0, |len| *len as usize)
    }

    /// The bytes of source messages `from..to` take.
    fn source_bytes(&self, from: usize, to: usize) -> usize {
        (from..to).map(|index| self.frame + self.len(index)).sum()
    }

    /// Their payload bytes.
    fn payload_bytes(&self, count: usize) -> usize {
        (0..count).map(|index| self.len(index)).sum()
    }

    /// What the first `count` messages cost against the ring's budget.
    fn cost(&self, count: usize, relayed: bool) -> usize {
        (0..count)
            .map(|index| record_cost(self.len(index), relayed))
            .sum()
    }
}

/// What one `write` call keeps from one batch to the next: `writing`
/// while it fills them one after another, and the room lock from one
/// batch's push to the next one's placement. Both are let go of before
/// anything sleeps or touches user memory with faults on (`end`), and the
/// room lock before a framed write's headers are read.
struct Run<'a> {
    writing: Option<Guard<'a, (), MutexBackend>>,
    inner: Option<Guard<'a, RoomInner, MutexBackend>>,
}

impl Run<'_> {
    const NONE: Run<'static> = Run {
        writing: None,
        inner: None,
    };

    fn end(&mut self) {
        self.inner = None;
        self.writing = None;
    }
}

/// Reads the `WriteFrame` at the start of `src`'s `left` bytes and
/// returns its body's length, checked: `flags` zero, a body of 1 byte or
/// more that the write holds whole (else `EINVAL`, nothing taken). The
/// header is copied with page faults off (the caller may hold `writing`);
/// one not in memory ends the run and is copied holding nothing if
/// `may_fault`, else is `Ok(None)`, nothing taken.
fn read_frame(
    src: &mut IovSource<'_>,
    left: usize,
    may_fault: bool,
    run: &mut Run<'_>,
) -> Result<Option<usize>> {
    let header_len = core::mem::size_of::<abi::WriteFrame>();
    if left < header_len {
        return Err(EINVAL);
    }
    let frame: abi::WriteFrame = match src.read_nofault() {
        Some(frame) => frame,
        None if may_fault => {
            run.end();
            src.read()?
        }
        None => return Ok(None),
    };
    let len = frame.len as usize;
    if frame.flags != 0 || len == 0 || len > left - header_len {
        src.revert(header_len);
        return Err(EINVAL);
    }
    Ok(Some(len))
}

impl Room {
    /// Writes `src` as messages of at most `max_msg` bytes each; returns how
    /// many bytes were taken. Each message is atomic; after the first, an
    /// error ends the write short instead of failing it (pipe semantics).
    pub(crate) fn write(
        &self,
        file: &File,
        src: &mut IovSource<'_>,
        how: Blocking,
    ) -> Result<usize> {
        // The file's ids are fixed at open: read once per write, not per
        // message.
        let writer = Writer::of(file);
        let total = src.len();
        self.write_pieces(total, |run, wakes, remaining| {
            let batch = self.plain_batch(remaining, wakes.bytes);
            self.write_batch(src, &batch, &writer, how, None, run, wakes)
        })
    }

    /// Writes the `total` bytes of one call piece by piece: `piece` writes
    /// the next ones (given the bytes left) and says how many it took.
    /// After the first piece an error ends the call short (pipe
    /// semantics); readers are woken once per half ring and at the end.
    fn write_pieces<'a>(
        &'a self,
        total: usize,
        mut piece: impl FnMut(&mut Run<'a>, &mut Wakes, usize) -> Result<usize>,
    ) -> Result<usize> {
        let mut written = 0;
        let mut wakes = Wakes::NONE;
        let mut run = Run::NONE;
        while written < total {
            match piece(&mut run, &mut wakes, total - written) {
                Ok(bytes) => written += bytes,
                Err(_) if written > 0 => break,
                Err(err) => {
                    run.end();
                    wakes.flush(self);
                    return Err(err);
                }
            }
            if wakes.bytes >= self.half_ring() {
                run.end();
                wakes.flush(self);
            }
        }
        run.end();
        wakes.flush(self);
        Ok(written)
    }

    /// Half the ring's budget: what one call stores at most before it
    /// wakes readers, so readers of a `drop` room hear of messages before
    /// the writer laps them.
    fn half_ring(&self) -> usize {
        self.settings.ring_bytes as usize / 2
    }

    /// How many messages a batch may hold: one in a room with a rate
    /// limit (its budget is waited for and charged message by message).
    fn batch_limit(&self) -> usize {
        if self.limited.load(Ordering::Relaxed) {
            1
        } else {
            BATCH
        }
    }

    /// The next batch of a plain write with `remaining` bytes left:
    /// `max_msg` pieces, as many as `BATCH` allows and until they reach
    /// the half ring less the `owed` cost readers have not been woken for
    /// (the message that reaches it is the batch's last, so the wake-up
    /// comes where it did when messages went one by one); at least one.
    fn plain_batch(&self, remaining: usize, owed: usize) -> Batch {
        let max = self.settings.max_msg as usize;
        let room = self.half_ring().saturating_sub(owed);
        let most = self.batch_limit();
        let mut batch = Batch::new(0);
        let mut left = remaining;
        let mut cost = 0;
        while batch.count < most && left > 0 && (batch.count == 0 || cost < room) {
            let len = max.min(left);
            batch.push(len);
            cost += record_cost(len, false);
            left -= len;
        }
        batch
    }

    /// The next batch of a framed write with `remaining` bytes left: its
    /// records' headers read and checked, as many records as `BATCH` and
    /// the half ring allow (as in `plain_batch`). `src` is left at the
    /// first record. A bad first record is the batch's error (see
    /// `write_framed`); a later one ends the batch before it, and the
    /// next batch meets it first.
    ///
    /// Headers are copied with page faults off, holding `writing` at most
    /// (the room lock is let go of first); only a first header not in
    /// memory ends the run and is copied holding nothing, where it may
    /// fault. What each says is read once: the fill passes over the
    /// headers.
    fn framed_batch<'a>(
        &'a self,
        src: &mut IovSource<'_>,
        remaining: usize,
        owed: usize,
        run: &mut Run<'a>,
    ) -> Result<Batch> {
        let header_len = core::mem::size_of::<abi::WriteFrame>();
        let max = self.settings.max_msg as usize;
        let room = self.half_ring().saturating_sub(owed);
        let most = self.batch_limit();
        let mut batch = Batch::new(header_len);
        let mut taken = 0;
        let mut cost = 0;
        run.inner = None;
        let ended = loop {
            let left = remaining - taken;
            if batch.count == most || left == 0 || (batch.count > 0 && cost >= room) {
                break Ok(());
            }
            let len = match read_frame(src, left, batch.count == 0, run) {
                Ok(Some(len)) => len,
                Ok(None) => break Ok(()),
                Err(err) => break Err(err),
            };
            if len > max {
                src.revert(header_len);
                break Err(emsgsize());
            }
            src.skip(len);
            taken += header_len + len;
            cost += record_cost(len, false);
            batch.push(len);
        };
        src.revert(taken);
        match ended {
            Err(err) if batch.count == 0 => Err(err),
            _ => Ok(batch),
        }
    }

    /// Writes one relayed message: a `RelayHeader`, then the payload (1 to
    /// `max_msg` bytes, all of the rest of the write). Returns the bytes
    /// taken (all of them). A bad header is `EINVAL`, a payload longer than
    /// `max_msg`, or one whose record (with its origin) could never fit
    /// the ring, `EMSGSIZE`; neither stores anything.
    pub(crate) fn write_relayed(
        &self,
        file: &File,
        src: &mut IovSource<'_>,
        how: Blocking,
    ) -> Result<usize> {
        let total = src.len();
        let writer = Writer::of(file);
        let mut wakes = Wakes::NONE;
        let mut run = Run::NONE;
        let written = self.write_relayed_body(src, total, &writer, how, &mut run, &mut wakes);
        run.end();
        wakes.flush(self);
        written.map(|()| total)
    }

    /// Writes a framed write (`WRITE_FRAMED`): records, each a
    /// `WriteFrame` and its body, one message per record, in order; returns
    /// the bytes of the whole records stored. On a relay each body is what
    /// one relay write would be. A record that is malformed or cannot go
    /// now (`EAGAIN`, a signal, a deleted room) ends the write short just
    /// before it, as a failed piece ends a long plain write; if it is the
    /// first record, its error is the write's. So a write stores whole
    /// records only, and the count it returns is a record boundary.
    pub(crate) fn write_framed(
        &self,
        file: &File,
        src: &mut IovSource<'_>,
        how: Blocking,
        relay: bool,
    ) -> Result<usize> {
        let writer = Writer::of(file);
        let total = src.len();
        self.write_pieces(total, |run, wakes, remaining| {
            if relay {
                return self.write_relayed_record(src, remaining, &writer, how, run, wakes);
            }
            let batch = self.framed_batch(src, remaining, wakes.bytes, run)?;
            self.write_batch(src, &batch, &writer, how, None, run, wakes)
        })
    }

    /// Writes the relay record at the start of `src`'s `remaining` bytes
    /// (one message: relayed records carry an origin each and go one per
    /// pass); returns its size (header and body). Its header's `flags`
    /// must be zero, and its body 1 byte or more and all there (`EINVAL`).
    /// The header is read by `read_frame`.
    fn write_relayed_record<'a>(
        &'a self,
        src: &mut IovSource<'_>,
        remaining: usize,
        writer: &Writer,
        how: Blocking,
        run: &mut Run<'a>,
        wakes: &mut Wakes,
    ) -> Result<usize> {
        run.inner = None;
        // Faults allowed: a header is always read.
        let len = read_frame(src, remaining, true, run)?.ok_or(EFAULT)?;
        self.write_relayed_body(src, len, writer, how, run, wakes)?;
        Ok(core::mem::size_of::<abi::WriteFrame>() + len)
    }

    /// Writes one relayed message of `total` bytes from `src`: a
    /// `RelayHeader`, then the payload (the rest). See `write_relayed`.
    fn write_relayed_body<'a>(
        &'a self,
        src: &mut IovSource<'_>,
        total: usize,
        writer: &Writer,
        how: Blocking,
        run: &mut Run<'a>,
        wakes: &mut Wakes,
    ) -> Result {
        let header_len = core::mem::size_of::<abi::RelayHeader>();
        let Some(len) = total.checked_sub(header_len).filter(|len| *len > 0) else {
            return Err(EINVAL);
        };
        if len > self.settings.max_msg as usize || !self.could_ever_hold(record_cost(len, true)) {
            return Err(emsgsize());
        }
        // The header may fault: no lock held while it is copied.
        run.end();
        let header: abi::RelayHeader = src.read()?;
        let origin = header.origin;
        let valid = header.size as usize == header_len
            && header.flags == 0
            && origin.flags == 0
            && abi::field_name(&origin.node)
                .is_some_and(|name| crate::name::validate(name).is_ok());
        if !valid {
            return Err(EINVAL);
        }
        let origin = abi::OriginHeader {
            flags: abi::ORIGIN_RELAYED,
            ..origin
        };
        self.write_batch(src, &Batch::one(len), writer, how, Some(origin), run, wakes)
            .map(|_| ())
    }

    /// Writes the messages of `batch` (at least the first, as many as go
    /// now); returns the source bytes they took. Waits for the rate budget
    /// and for space first, holding nothing, then places, fills and
    /// publishes them (see the module doc).
    ///
    /// A writer asleep (over its budget, in a full `block` room, or for its
    /// own memory to be faulted in) holds no lock and no place in the ring;
    /// only the one filling records holds `writing`, and it copies with
    /// page faults off, so it never sleeps holding it: a writer whose
    /// buffer stalls (a FUSE file, an unserved userfaultfd) holds up only
    /// itself. The wake-ups the messages owe go to `wakes`.
    #[allow(clippy::too_many_arguments)]
    fn write_batch<'a>(
        &'a self,
        src: &mut IovSource<'_>,
        batch: &Batch,
        writer: &Writer,
        how: Blocking,
        origin: Option<abi::OriginHeader>,
        run: &mut Run<'a>,
        wakes: &mut Wakes,
    ) -> Result<usize> {
        let relayed = origin.is_some();
        let first_len = batch.len(0);
        if !self.could_ever_hold(record_cost(first_len, relayed)) {
            return Err(emsgsize());
        }
        // Unlimited rooms (the common case) charge no budget: no lock pass.
        // Limited ones wait for and charge it message by message, so they
        // place one message per pass.
        let limited = self.limited.load(Ordering::Relaxed);
        let count = if limited { 1 } else { batch.count };
        let charged = if limited {
            // The budget may be waited for: nothing held.
            run.end();
            let mut inner = self.inner.lock();
            self.wait_for_budget(
                &mut inner,
                writer.charged_uid,
                writer.file_id,
                first_len,
                how.nonblock,
                wakes,
            )?
        } else {
            None
        };
        // Whether a pass evicted what a reader had not read: owed as a loss
        // even if a later pass, or the write itself, fails.
        let mut lost = false;
        let stored = self.place_fill_push(
            src,
            batch,
            count,
            writer,
            how,
            origin.as_ref(),
            &mut lost,
            run,
            wakes,
        );
        match stored {
            Ok((stored, asleep)) => {
                let payload = batch.payload_bytes(stored);
                Stats::add(&self.stats.msgs_in, stored as u64);
                Stats::add(&self.stats.bytes_in, payload as u64);
                let mut what = events::IN | events::RDNORM;
                if lost {
                    what |= events::PRI;
                }
                wakes.add(what, asleep, batch.cost(stored, relayed));
                Ok(batch.source_bytes(0, stored))
            }
            Err(err) => {
                // Nothing was sent: a writer is throttled only for what it
                // sent.
                if charged.is_some() {
                    run.end();
                    self.inner.lock().refund(charged, first_len as u64);
                }
                if lost {
                    wakes.add(events::PRI, Asleep::POLLERS, 0);
                }
                Err(err)
            }
        }
    }

    /// The part of `write_batch` after the budget: waits for space for the
    /// batch's first message, makes room for as many of its first `count`
    /// as fit now, places them, fills and pushes them; again from the space
    /// check when the first one's copy comes up short. Returns how many
    /// went in and who they wake; `lost` says whether any pass evicted
    /// what a reader had not read.
    #[allow(clippy::too_many_arguments)]
    fn place_fill_push<'a>(
        &'a self,
        src: &mut IovSource<'_>,
        batch: &Batch,
        count: usize,
        writer: &Writer,
        how: Blocking,
        origin: Option<&abi::OriginHeader>,
        lost: &mut bool,
        run: &mut Run<'a>,
        wakes: &mut Wakes,
    ) -> Result<(usize, Asleep)> {
        let relayed = origin.is_some();
        let first_cost = record_cost(batch.len(0), relayed);
        loop {
            if fatal_signal_pending() {
                return Err(EINTR);
            }
            if run.writing.is_none() {
                // Lock order: `writing` before `inner`.
                run.inner = None;
                run.writing = Some(self.writing.lock());
            }
            let mut inner = match run.inner.take() {
                Some(inner) => inner,
                None => self.inner.lock(),
            };
            // First only whether it may go: a write refused now must not
            // have evicted anything (not even what every reader has read).
            let checked = self
                .wait_for_space(&mut inner, first_cost, true, false, wakes)
                .and_then(|_| self.wait_for_space(&mut inner, first_cost, true, true, wakes));
            match checked {
                Ok(loss) => *lost |= loss,
                // No space yet: wait for it holding only the room lock
                // (which the wait lets go of), never `writing`, then try
                // again.
                Err(err) if err == EAGAIN && !how.nonblock => {
                    run.writing = None;
                    self.wait_for_space(&mut inner, first_cost, false, false, wakes)?;
                    continue;
                }
                Err(err) => return Err(err),
            }
            // The rest of the batch, as far as it fits now: it never waits
            // (the first message went through; the rest go in later
            // passes). All of it at once if it fits (always, in a `drop`
            // room), else one more at a time.
            let mut placed = 1;
            if count > 1 {
                let whole = batch.cost(count, relayed);
                if let Some(loss) = self.make_room_now(&mut inner, count, whole) {
                    *lost |= loss;
                    placed = count;
                }
            }
            let mut cost = first_cost;
            while placed < count {
                let more = cost + record_cost(batch.len(placed), relayed);
                let Some(loss) = self.make_room_now(&mut inner, placed + 1, more) else {
                    break;
                };
                *lost |= loss;
                placed += 1;
                cost = more;
            }
            let first_seq = inner.ring.next_seq();
            let mut places = self.reserve(&mut inner);
            drop(inner);
            // One stamp for the batch: its messages are one writer's, placed
            // at one time.
            let sender = Sender::current(writer.kuid, writer.kgid);
            let header = abi::RingRecord {
                seq: first_seq,
                time_ns: realtime_ns(),
                len: 0,
                flags: if relayed { abi::RING_ORIGIN } else { 0 },
                pid: sender.pid_in_init_ns(),
                uid: writer.kuid,
                gid: writer.kgid,
                reserved: 0,
            };
            let mut filled = 0;
            let mut faulted = false;
            while filled < placed {
                let len = batch.len(filled);
                // The area is sized so that `None` cannot happen.
                let Some(placement) = places.next(record_size(len, relayed)) else {
                    break;
                };
                let header = abi::RingRecord {
                    seq: first_seq + filled as u64,
                    len: len as u32,
                    ..header
                };
                if batch.frame > 0 {
                    src.skip(batch.frame);
                }
                let copied = self.fill(&placement, &header, origin, len, src)?;
                if copied < len {
                    src.revert(batch.frame + copied);
                    faulted = true;
                    break;
                }
                filled += 1;
            }
            if filled == 0 && faulted {
                // Part of the writer's buffer is not in memory. Fault it in
                // holding nothing, then place the message again: the bytes
                // picked here may be another writer's by then.
                run.writing = None;
                if how.nowait {
                    return Err(EAGAIN);
                }
                // Readers hear of what this call wrote before it sleeps for
                // its memory (a userfaultfd server may be waiting to read
                // it).
                wakes.flush(self);
                // The whole batch, so that the next pass fills it whole
                // rather than stopping at each page it lacks.
                let wanted = batch.source_bytes(0, placed);
                let missing = src.fault_in(wanted);
                // A wait for the buffer that a signal ended, or a buffer
                // that keeps going away between the fault-in and the copy,
                // costs only its own writer, who stays interruptible.
                if signal_pending() {
                    return Err(ERESTARTSYS);
                }
                // The first message must be readable whole: a buffer that
                // runs into a hole would otherwise be retried forever. (A
                // hole further on ends a later batch the same way.)
                if wanted - missing < batch.source_bytes(0, 1) {
                    return Err(EFAULT);
                }
                continue;
            }
            let mut inner = self.inner.lock();
            if inner.deleted {
                return Err(eidrm());
            }
            // Nothing took the places picked above: only writers push, one
            // at a time, and evictions only free more of the area.
            let mut pushed = 0;
            let mut sender = Some(sender);
            while pushed < filled {
                let len = batch.len(pushed);
                // The last record takes the reference looked up for the batch.
                let this = if pushed + 1 == filled {
                    sender.take()
                } else {
                    sender.clone()
                };
                let Some(sender) = this else {
                    break;
                };
                let stamp = Stamp {
                    time_ns: header.time_ns,
                    sender,
                    len: len as u32,
                    relayed,
                };
                let cost = record_cost(len, relayed);
                if inner
                    .ring
                    .push(stamp, cost, record_size(len, relayed))
                    .is_err()
                {
                    break;
                }
                pushed += 1;
            }
            // What was filled and not pushed is taken again by a later pass.
            if pushed < filled {
                src.revert(batch.source_bytes(pushed, filled));
            }
            if pushed == 0 {
                return Err(ENOSPC);
            }
            self.publish(&mut inner);
            let asleep = inner.asleep_for_message(*lost);
            // Kept for the next batch's placement (`Run`).
            run.inner = Some(inner);
            return Ok((pushed, asleep));
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
        len: usize,
        src: &mut IovSource<'_>,
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
        if let Some(origin) = origin {
            self.area.put(at + RECORD_HEADER, origin)?;
        }
        self.area
            .fill_from_nofault(payload_at(at, origin.is_some()), len, src)
    }
}
