// SPDX-License-Identifier: GPL-2.0
//! `Room`'s write path: one message at a time, budget and space first,
//! then placed, filled with page faults off and published (see the
//! module doc of `room.rs`); plain, relayed and framed writes (records of
//! their own sizes) all come down to `write_message`.

use super::{
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

/// What one `write` call keeps from one message to the next: `writing`
/// while it fills them one after another, and the room lock from one
/// message's push to the next one's placement, so a burst costs one pass
/// of the room lock per message. Both are let go of before anything
/// sleeps or touches user memory with faults on (`end`).
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
        let max = self.settings.max_msg as usize;
        self.write_pieces(total, |run, wakes, remaining| {
            let len = max.min(remaining);
            self.write_message(src, len, &writer, how, None, run, wakes)
                .map(|()| len)
        })
    }

    /// Writes the `total` bytes of one call piece by piece: `piece` writes
    /// the next one (given the bytes left) and says its size. After the
    /// first piece an error ends the call short (pipe semantics); readers
    /// are woken once per half ring and at the end.
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
            if wakes.bytes >= self.settings.ring_bytes as usize / 2 {
                run.end();
                wakes.flush(self);
            }
        }
        run.end();
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
            self.write_record(src, remaining, &writer, how, relay, run, wakes)
        })
    }

    /// Writes the record at the start of `src`'s `remaining` bytes;
    /// returns its size (header and body). Its header's `flags` must be
    /// zero, and its body 1 byte or more and all there (`EINVAL`); a body
    /// longer than a message may be is `EMSGSIZE`.
    ///
    /// The header is copied with page faults off, keeping the `Run` (a
    /// framed burst then costs one room lock pass per record, as a plain
    /// one does); only a header not in memory ends the run and is copied
    /// holding nothing, where it may fault. What it says is read once.
    #[allow(clippy::too_many_arguments)]
    fn write_record<'a>(
        &'a self,
        src: &mut IovSource<'_>,
        remaining: usize,
        writer: &Writer,
        how: Blocking,
        relay: bool,
        run: &mut Run<'a>,
        wakes: &mut Wakes,
    ) -> Result<usize> {
        let header_len = core::mem::size_of::<abi::WriteFrame>();
        if remaining < header_len {
            return Err(EINVAL);
        }
        let frame: abi::WriteFrame = match src.read_nofault() {
            Some(frame) => frame,
            None => {
                run.end();
                src.read()?
            }
        };
        let len = frame.len as usize;
        if frame.flags != 0 || len == 0 || len > remaining - header_len {
            return Err(EINVAL);
        }
        if relay {
            self.write_relayed_body(src, len, writer, how, run, wakes)?;
        } else {
            if len > self.settings.max_msg as usize {
                return Err(emsgsize());
            }
            self.write_message(src, len, writer, how, None, run, wakes)?;
        }
        Ok(header_len + len)
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
        self.write_message(src, len, writer, how, Some(origin), run, wakes)
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
    #[allow(clippy::too_many_arguments)]
    fn write_message<'a>(
        &'a self,
        src: &mut IovSource<'_>,
        len: usize,
        writer: &Writer,
        how: Blocking,
        origin: Option<abi::OriginHeader>,
        run: &mut Run<'a>,
        wakes: &mut Wakes,
    ) -> Result {
        let cost = record_cost(len, origin.is_some());
        if !self.could_ever_hold(cost) {
            return Err(emsgsize());
        }
        // Unlimited rooms (the common case) charge no budget: no lock pass.
        let charged = if self.limited.load(Ordering::Relaxed) {
            // The budget may be waited for: nothing held.
            run.end();
            let mut inner = self.inner.lock();
            self.wait_for_budget(
                &mut inner,
                writer.charged_uid,
                writer.file_id,
                len,
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
            len,
            writer,
            how,
            origin.as_ref(),
            &mut lost,
            run,
            wakes,
        );
        match stored {
            Ok(asleep) => {
                Stats::add(&self.stats.msgs_in, 1);
                Stats::add(&self.stats.bytes_in, len as u64);
                let mut what = events::IN | events::RDNORM;
                if lost {
                    what |= events::PRI;
                }
                wakes.add(what, asleep, cost);
                Ok(())
            }
            Err(err) => {
                // Nothing was sent: a writer is throttled only for what it
                // sent.
                if charged.is_some() {
                    run.end();
                    self.inner.lock().refund(charged, len as u64);
                }
                if lost {
                    wakes.add(events::PRI, Asleep::POLLERS, 0);
                }
                Err(err)
            }
        }
    }

    /// The part of `write_message` after the budget: waits for space, then
    /// places, fills and pushes the record, again from the space check
    /// whenever the copy comes up short. Returns who the message wakes;
    /// `lost` says whether any pass evicted what a reader had not read.
    #[allow(clippy::too_many_arguments)]
    fn place_fill_push<'a>(
        &'a self,
        src: &mut IovSource<'_>,
        len: usize,
        writer: &Writer,
        how: Blocking,
        origin: Option<&abi::OriginHeader>,
        lost: &mut bool,
        run: &mut Run<'a>,
        wakes: &mut Wakes,
    ) -> Result<Asleep> {
        let relayed = origin.is_some();
        let cost = record_cost(len, relayed);
        let size = record_size(len, relayed);
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
                .wait_for_space(&mut inner, cost, true, false, wakes)
                .and_then(|_| self.wait_for_space(&mut inner, cost, true, true, wakes));
            match checked {
                Ok(loss) => *lost |= loss,
                // No space yet: wait for it holding only the room lock
                // (which the wait lets go of), never `writing`, then try
                // again.
                Err(err) if err == EAGAIN && !how.nonblock => {
                    run.writing = None;
                    self.wait_for_space(&mut inner, cost, false, false, wakes)?;
                    continue;
                }
                Err(err) => return Err(err),
            }
            let seq = inner.ring.next_seq();
            // The area is sized so that `None` cannot happen.
            let placement = self.reserve(&mut inner, size).ok_or(ENOSPC)?;
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
            let copied = self.fill(&placement, &header, origin, &stamp, len, src)?;
            if copied < len {
                // Part of the writer's buffer is not in memory. Fault it in
                // holding nothing, then place the record again: the bytes
                // picked here may be another writer's by then.
                run.writing = None;
                src.revert(copied);
                if how.nowait {
                    return Err(EAGAIN);
                }
                // Readers hear of what this call wrote before it sleeps for
                // its memory (a userfaultfd server may be waiting to read
                // it).
                wakes.flush(self);
                let missing = src.fault_in(len);
                // A wait for the buffer that a signal ended, or a buffer
                // that keeps going away between the fault-in and the copy,
                // costs only its own writer, who stays interruptible.
                if signal_pending() {
                    return Err(ERESTARTSYS);
                }
                // The whole message must be readable: a buffer that runs
                // into a hole would otherwise be retried forever.
                if missing != 0 {
                    return Err(EFAULT);
                }
                continue;
            }
            let mut inner = self.inner.lock();
            if inner.deleted {
                return Err(eidrm());
            }
            // Nothing took the place picked above: only writers push, one
            // at a time.
            inner.ring.push(stamp, cost, size).map_err(|_| ENOSPC)?;
            self.publish(&mut inner);
            let asleep = inner.asleep_for_message(*lost);
            // Kept for the next message's placement (`Run`).
            run.inner = Some(inner);
            return Ok(asleep);
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
        if let (Some(origin), Some(origin_at)) = (origin, stamp.origin_at(at)) {
            self.area.put(origin_at, origin)?;
        }
        self.area.fill_from_nofault(stamp.payload_at(at), len, src)
    }
}
