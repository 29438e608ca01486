// SPDX-License-Identifier: GPL-2.0
//! `RoomFile`: one open file on a room node, with its own cursor.
//!
//! Readers start at the end (new messages only). A read returns as many
//! whole messages as fit; a message larger than the buffer is returned in
//! parts, like a pipe, so `dd bs=1` works. Concurrent reads on one file are
//! serialised by its cursor lock; different files never wait for each other
//! beyond the room lock's brief hold.

use crate::{
    compat::{
        file::File,
        fops::FileOps,
        poll::{events, PollTable},
    },
    ring::Lookup,
    room::{Policy, ReaderMark, Record, Room},
};
use core::sync::atomic::Ordering;
use kernel::{
    new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
    uaccess::{UserSliceReader, UserSliceWriter},
};

/// Largest number of records one `read` collects before copying.
const BATCH: usize = 16;

/// Most read-mode opens per room.
pub(crate) const MAX_READERS: usize = 1024;

/// Per-file read state, behind the cursor lock.
struct Cursor {
    /// Bytes of the message at the cursor already returned (stream reads).
    offset: usize,
    /// Messages this reader lost and has not been told about.
    lost: u64,
}

#[pin_data(PinnedDrop)]
pub(crate) struct RoomFile {
    room: Arc<Room>,
    /// Set for read-mode opens; a write-only open never holds a room back.
    mark: Option<Arc<ReaderMark>>,
    #[pin]
    cursor: Mutex<Cursor>,
}

#[pinned_drop]
impl PinnedDrop for RoomFile {
    fn drop(self: Pin<&mut Self>) {
        if let Some(mark) = &self.mark {
            self.room.remove_reader(mark);
        }
    }
}

#[vtable]
impl FileOps for RoomFile {
    type Ptr = Pin<KBox<RoomFile>>;
    type Target = Arc<Room>;

    fn open(file: &File, room: Arc<Room>) -> Result<Self::Ptr> {
        let mark = if file.readable() {
            Some(room.add_reader(MAX_READERS)?)
        } else {
            None
        };
        let init = pin_init!(RoomFile {
            room,
            mark,
            cursor <- new_mutex!(Cursor { offset: 0, lost: 0 }, "RoomFile::cursor"),
        });
        KBox::pin_init(init, GFP_KERNEL)
    }

    fn read(this: Pin<&RoomFile>, file: &File, dest: &mut UserSliceWriter) -> Result<usize> {
        this.read_stream(dest, file.nonblocking())
    }

    fn write(this: Pin<&RoomFile>, file: &File, src: &mut UserSliceReader) -> Result<usize> {
        this.room.write(file, src)
    }

    fn poll(this: Pin<&RoomFile>, file: &File, table: &PollTable) -> u32 {
        let room = &this.room;
        room.poll.register(file, table);
        let inner = room.inner.lock();
        let mut mask = 0;
        if let Some(mark) = &this.mark {
            let seq = mark.seq.load(Ordering::Relaxed);
            match inner.ring.get(seq) {
                Lookup::Ready(_) => mask |= events::IN | events::RDNORM,
                Lookup::Lost { .. } => mask |= events::IN | events::RDNORM | events::PRI,
                Lookup::Pending if inner.deleted => mask |= events::IN | events::RDNORM,
                Lookup::Pending => {}
            }
        }
        if file.writable() && !inner.deleted {
            let worst = room.settings.max_msg as usize + crate::abi::RECORD_OVERHEAD as usize;
            let could_write = inner.could_write(room.settings.policy, worst);
            if could_write {
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
}

impl RoomFile {
    /// A stream read: whole messages while they fit, the first in parts if
    /// it alone does not.
    fn read_stream(&self, dest: &mut UserSliceWriter, nonblock: bool) -> Result<usize> {
        let mark = self.mark.as_ref().ok_or(EBADF)?;
        let room = &self.room;
        let mut cursor = self.cursor.lock();
        let mut batch: [Option<Arc<Record>>; BATCH] = [const { None }; BATCH];
        let seq;
        {
            let mut inner = room.inner.lock();
            loop {
                let at = mark.seq.load(Ordering::Relaxed);
                match inner.ring.get(at) {
                    Lookup::Ready(_) => {
                        seq = at;
                        break;
                    }
                    Lookup::Lost { first, lost } => {
                        cursor.lost += lost;
                        cursor.offset = 0;
                        mark.seq.store(first, Ordering::Relaxed);
                    }
                    Lookup::Pending if inner.deleted => return Ok(0),
                    Lookup::Pending if nonblock => return Err(EAGAIN),
                    Lookup::Pending => {
                        if room.readable.wait_interruptible(&mut inner) {
                            return Err(ERESTARTSYS);
                        }
                    }
                }
            }
            let space = dest.len();
            let mut planned = 0;
            for (n, slot) in batch.iter_mut().enumerate() {
                let Lookup::Ready(record) = inner.ring.get(seq + n as u64) else {
                    break;
                };
                let skip = if n == 0 { cursor.offset } else { 0 };
                let size = record.data.len() - skip;
                if n > 0 && planned + size > space {
                    break;
                }
                *slot = Some(record.clone());
                planned += size;
                if planned >= space {
                    break;
                }
            }
        }

        // Copy without the room lock: user memory may fault and sleep.
        let mut copied = 0;
        let mut finished = 0u64;
        for record in batch.iter().flatten() {
            let skip = if finished == 0 { cursor.offset } else { 0 };
            let rest = &record.data[skip..];
            let take = rest.len().min(dest.len());
            if let Err(err) = dest.write_slice(&rest[..take]) {
                if copied == 0 {
                    return Err(err);
                }
                break;
            }
            copied += take;
            if take < rest.len() {
                cursor.offset = skip + take;
                break;
            }
            cursor.offset = 0;
            finished += 1;
        }
        if finished > 0 {
            let inner = room.inner.lock();
            mark.seq.store(seq + finished, Ordering::Relaxed);
            drop(inner);
            if room.settings.policy == Policy::Block {
                room.writable.notify_all();
                room.poll.wake(events::OUT | events::WRNORM);
            }
        }
        Ok(copied)
    }
}
