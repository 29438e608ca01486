//! The bridge's two handles on a local room: a reader that sees origins
//! (to publish what was written here) and a relay (to write in what other
//! nodes wrote), both non-blocking under tokio.

use crate::trust::Seen;
use kchat_uapi::abi;
use nix::errno::Errno;
use std::{
    collections::BTreeMap,
    fs::File,
    io::{ErrorKind, Read, Write},
    os::unix::fs::OpenOptionsExt,
};
use tokio::io::unix::AsyncFd;

/// One message as the room framed it.
pub struct Frame {
    pub header: abi::FrameHeader,
    pub origin: abi::OriginHeader,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn relayed(&self) -> bool {
        self.origin.flags & abi::ORIGIN_RELAYED != 0
    }
}

/// A `READ_FRAMED_ORIGIN` reader of a room.
pub struct Reader {
    room: String,
    fd: AsyncFd<File>,
    buf: Vec<u8>,
}

/// Why a room handle stopped.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("room {0} does not exist (yet): /dev/kchat/{0} is missing")]
    Missing(String),
    #[error("room {0} was deleted")]
    Deleted(String),
    #[error("room {room}: {what}: {err}")]
    Io {
        room: String,
        what: &'static str,
        err: std::io::Error,
    },
}

fn io(room: &str, what: &'static str, err: std::io::Error) -> RoomError {
    if err.kind() == ErrorKind::NotFound {
        return RoomError::Missing(room.to_owned());
    }
    if err.raw_os_error() == Some(Errno::EIDRM as i32) {
        return RoomError::Deleted(room.to_owned());
    }
    RoomError::Io {
        room: room.to_owned(),
        what,
        err,
    }
}

fn open(room: &str, write: bool) -> Result<File, RoomError> {
    File::options()
        .read(!write)
        .write(write)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(kchat_client::room_path(room))
        .map_err(|err| io(room, "open", err))
}

fn watch(room: &str, file: File) -> Result<AsyncFd<File>, RoomError> {
    // SAFETY: the `File` owns its descriptor and the `AsyncFd` owns the
    // `File`: the descriptor stays open and the same until the `AsyncFd`
    // is dropped.
    unsafe { AsyncFd::register(file) }.map_err(|err| io(room, "epoll", err.into()))
}

impl Reader {
    /// Opens `room` for reading at its end, with origins.
    pub fn open(room: &str) -> Result<Reader, RoomError> {
        let file = open(room, false)?;
        kchat_client::set_read_mode(&file, abi::READ_FRAMED_ORIGIN)
            .map_err(|err| io(room, "not a kchat room", err.into()))?;
        Ok(Reader {
            room: room.to_owned(),
            fd: watch(room, file)?,
            buf: vec![
                0u8;
                size_of::<abi::FrameHeader>()
                    + size_of::<abi::OriginHeader>()
                    + abi::MAX_MAX_MSG as usize
            ],
        })
    }

    /// The oldest retained and the next sequence number of the room.
    pub fn retained(&self) -> Result<(u64, u64), RoomError> {
        let fd = self.fd.get_ref();
        let seek = |whence| {
            nix::unistd::lseek(fd, 0, whence)
                .map(|seq| seq as u64)
                .map_err(|err| io(&self.room, "lseek", err.into()))
        };
        let here = seek(nix::unistd::Whence::SeekCur)?;
        let oldest = seek(nix::unistd::Whence::SeekSet)?;
        let next = seek(nix::unistd::Whence::SeekEnd)?;
        self.seek(here)?;
        Ok((oldest, next))
    }

    /// Moves to `seq` (retained or next).
    pub fn seek(&self, seq: u64) -> Result<(), RoomError> {
        kchat_client::seek_seq(self.fd.get_ref(), seq)
            .map_err(|err| io(&self.room, "seek", err.into()))
    }

    /// The next batch of messages, waiting for one; `None` at the end of a
    /// deleted room.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Frame>>, RoomError> {
        loop {
            let mut ready = self
                .fd
                .readable_mut()
                .await
                .map_err(|err| io(&self.room, "epoll", err))?;
            let buf = &mut self.buf;
            match ready.try_io(|inner| inner.get_mut().read(buf)) {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => return self.frames(n).map(Some),
                Ok(Err(err)) if err.kind() == ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(io(&self.room, "read", err)),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next batch as [`Reader::next_batch`] waits for it, then
    /// whatever else the room holds now, until about `most` bytes of
    /// payload and headers: a `read` returns what fits the buffer (an
    /// older module returned at most 16 records), so a burst larger than
    /// one buffer is still one batch. Returns without
    /// waiting once caught up, so a lone message goes out as soon as it did
    /// before.
    pub async fn next_batches(&mut self, most: usize) -> Result<Option<Vec<Frame>>, RoomError> {
        let Some(mut frames) = self.next_batch().await? else {
            return Ok(None);
        };
        let bytes = |frames: &[Frame]| -> usize {
            frames
                .iter()
                .map(|frame| size_of::<abi::FrameHeader>() + frame.payload.len())
                .sum()
        };
        let mut taken = bytes(&frames);
        while taken < most {
            match self.fd.get_mut().read(&mut self.buf) {
                // The end of a deleted room: the next call says so.
                Ok(0) => break,
                Ok(n) => {
                    let more = self.frames(n)?;
                    taken += bytes(&more);
                    frames.extend(more);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(io(&self.room, "read", err)),
            }
        }
        Ok(Some(frames))
    }

    /// What is there now, without waiting (empty when caught up).
    pub fn drain_now(&mut self) -> Result<Vec<Frame>, RoomError> {
        let mut all = Vec::new();
        loop {
            match self.fd.get_mut().read(&mut self.buf) {
                Ok(0) => return Ok(all),
                Ok(n) => all.extend(self.frames(n)?),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(all),
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(io(&self.room, "read", err)),
            }
        }
    }

    fn frames(&self, n: usize) -> Result<Vec<Frame>, RoomError> {
        let frames = kchat_client::split_origin_frames(&self.buf[..n]).ok_or_else(|| {
            io(
                &self.room,
                "read",
                std::io::Error::other("the kernel returned a torn frame"),
            )
        })?;
        Ok(frames
            .into_iter()
            .map(|(header, origin, payload)| Frame {
                header,
                origin,
                payload: payload.to_vec(),
            })
            .collect())
    }
}

/// A relay fd on a room (`IOC_SET_RELAY`), in the framed write mode
/// where the module has it, so a batch of messages is one `write`.
pub struct Relay {
    room: String,
    fd: AsyncFd<File>,
    /// `WRITE_FRAMED` is on: each write is records of relay frames.
    framed: bool,
}

/// What became of each message of a batch written in: written, or
/// refused by the kernel (why, and its error); the batch goes on after a
/// refused one.
pub type Outcomes = Vec<Result<(), (&'static str, std::io::Error)>>;

/// One message's write as a batch counts it: a room that cannot take
/// messages any more ends the batch.
fn outcome(
    written: Result<(), Refused>,
) -> Result<Result<(), (&'static str, std::io::Error)>, RoomError> {
    match written {
        Ok(()) => Ok(Ok(())),
        Err(Refused::Message(reason, err)) => Ok(Err((reason, err))),
        Err(Refused::Room(err)) => Err(err),
    }
}

/// A batch on its way into a room through framed writes: the records,
/// where each ends, how far the room took them, and what became of each.
struct Batch {
    records: Vec<u8>,
    ends: Vec<usize>,
    at: usize,
    outcomes: Outcomes,
}

impl Batch {
    fn new(frames: &[Vec<u8>]) -> Batch {
        let mut records = Vec::new();
        let mut ends = Vec::with_capacity(frames.len());
        for frame in frames {
            // A relay frame is at most a header and 1 MiB: it fits a record.
            let _ = kchat_client::push_record(&mut records, frame);
            ends.push(records.len());
        }
        Batch {
            records,
            ends,
            at: 0,
            outcomes: Outcomes::with_capacity(frames.len()),
        }
    }

    fn done(&self) -> bool {
        self.outcomes.len() == self.ends.len()
    }

    fn rest(&self) -> &[u8] {
        &self.records[self.at..]
    }

    /// Takes in what one framed write of `rest()` returned: whole records
    /// stored, or the error of the record at `at` (which is then passed).
    fn take(&mut self, written: std::io::Result<usize>, relay: &Relay) -> Result<(), RoomError> {
        let next = self.outcomes.len();
        match written {
            Ok(n) => {
                self.at += n;
                while !self.done() && self.ends[self.outcomes.len()] <= self.at {
                    self.outcomes.push(Ok(()));
                }
                // Whole records only: the count ends at a record's end.
                if self.outcomes.len() == next || self.ends[self.outcomes.len() - 1] != self.at {
                    let torn = std::io::Error::other(format!(
                        "a framed write took {n} bytes, not whole records"
                    ));
                    return Err(io(&relay.room, "relay write", torn));
                }
                Ok(())
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => Ok(()),
            Err(err) => match relay.refused(err) {
                Refused::Message(reason, err) => {
                    self.outcomes.push(Err((reason, err)));
                    self.at = self.ends[next];
                    Ok(())
                }
                Refused::Room(err) => Err(err),
            },
        }
    }
}

/// A relay write that did not store its message.
#[derive(Debug)]
pub enum Refused {
    /// The kernel refused this message (too long, bad origin): skip it.
    Message(&'static str, std::io::Error),
    /// The room cannot take messages any more.
    Room(RoomError),
}

/// One relay write: the kernel takes a message whole or not at all.
fn write_message(mut file: &File, frame: &[u8]) -> std::io::Result<()> {
    let written = file.write(frame)?;
    if written != frame.len() {
        return Err(std::io::Error::other(format!(
            "the room took {written} of {} bytes of one message",
            frame.len()
        )));
    }
    Ok(())
}

impl Relay {
    pub fn open(room: &str) -> Result<Relay, RoomError> {
        let file = open(room, true)?;
        kchat_client::set_relay(&file).map_err(|err| {
            io(
                room,
                "IOC_SET_RELAY (kchat-bridge needs CAP_SYS_ADMIN)",
                err.into(),
            )
        })?;
        // A module from before framed writes says ENOTTY: one write per
        // message then, as before.
        let framed = match kchat_client::set_write_mode(&file, abi::WRITE_FRAMED) {
            Ok(()) => true,
            Err(Errno::ENOTTY) => false,
            Err(err) => return Err(io(room, "IOC_SET_WRITE_MODE", err.into())),
        };
        Ok(Relay {
            room: room.to_owned(),
            fd: watch(room, file)?,
            framed,
        })
    }

    /// What one write of `frame` (a relay frame) must say: itself, or in
    /// the framed mode itself as a record.
    fn one(&self, frame: &[u8]) -> Vec<u8> {
        if !self.framed {
            return frame.to_vec();
        }
        let mut record = Vec::with_capacity(size_of::<abi::WriteFrame>() + frame.len());
        // A relay frame is at most a header and 1 MiB: it fits a record.
        let _ = kchat_client::push_record(&mut record, frame);
        record
    }

    /// Writes a batch of relay frames now, in order, in as few writes as
    /// the module allows (one when nothing is refused); says what became
    /// of each (a full room or a spent budget refuses the rest one by one,
    /// as a `drop` room does). A room that cannot take messages any more
    /// is the error.
    pub fn write_batch_now(&self, frames: &[Vec<u8>]) -> Result<Outcomes, RoomError> {
        if !self.framed {
            return frames
                .iter()
                .map(|frame| outcome(self.write_now(frame)))
                .collect();
        }
        let mut batch = Batch::new(frames);
        while !batch.done() {
            let written = self.fd.get_ref().write(batch.rest());
            batch.take(written, self)?;
        }
        Ok(batch.outcomes)
    }

    /// Writes a batch of relay frames, waiting while the room is full or
    /// the relay's budget spent (a `block` room's contract); says what
    /// became of each (refused only for what it is: too long, malformed).
    pub async fn write_batch_waiting(&self, frames: &[Vec<u8>]) -> Result<Outcomes, RoomError> {
        if !self.framed {
            let mut outcomes = Outcomes::with_capacity(frames.len());
            for frame in frames {
                outcomes.push(outcome(self.write_waiting(frame).await)?);
            }
            return Ok(outcomes);
        }
        let mut batch = Batch::new(frames);
        while !batch.done() {
            let mut ready = self
                .fd
                .writable()
                .await
                .map_err(|err| io(&self.room, "epoll", err))?;
            match ready.try_io(|inner| inner.get_ref().write(batch.rest())) {
                Ok(written) => batch.take(written, self)?,
                Err(_would_block) => continue,
            }
        }
        Ok(batch.outcomes)
    }

    /// Writes one message now; `EAGAIN` (room full, budget spent) is an
    /// error for the caller to count.
    pub fn write_now(&self, frame: &[u8]) -> Result<(), Refused> {
        match write_message(self.fd.get_ref(), &self.one(frame)) {
            Ok(_) => Ok(()),
            Err(err) => Err(self.refused(err)),
        }
    }

    /// Writes one message, waiting while the room is full or the relay's
    /// budget spent (a `block` room's contract: wait, never lose).
    pub async fn write_waiting(&self, frame: &[u8]) -> Result<(), Refused> {
        let frame = &self.one(frame);
        loop {
            let mut ready = self
                .fd
                .writable()
                .await
                .map_err(|err| Refused::Room(io(&self.room, "epoll", err)))?;
            match ready.try_io(|inner| write_message(inner.get_ref(), frame)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(err)) if err.kind() == ErrorKind::Interrupted => continue,
                Ok(Err(err)) => return Err(self.refused(err)),
                Err(_would_block) => continue,
            }
        }
    }

    fn refused(&self, err: std::io::Error) -> Refused {
        match err.raw_os_error().map(Errno::from_raw) {
            Some(Errno::EMSGSIZE) => Refused::Message("oversize", err),
            Some(Errno::EINVAL) => Refused::Message("malformed", err),
            Some(Errno::EAGAIN) => Refused::Message("room_full_or_throttled", err),
            _ => Refused::Room(io(&self.room, "relay write", err)),
        }
    }
}

/// The last message of each other node the room already holds, per
/// incarnation of its room: the saved places, moved on by what the room's
/// history shows was relayed after the last save (a crash between writing
/// and saving). Each relayed message in the ring says its origin's node,
/// incarnation and sequence number (`OriginHeader`), so messages of an
/// origin's earlier incarnation move only that incarnation's place. At
/// most `max_nodes` nodes: the room's history adds none past the bound.
pub fn relayed_so_far(
    room: &str,
    saved: &BTreeMap<String, Seen>,
    max_nodes: usize,
) -> Result<BTreeMap<String, Seen>, RoomError> {
    let mut last = saved.clone();
    let mut history = Reader::open(room)?;
    let (oldest, _) = history.retained()?;
    history.seek(oldest)?;
    for frame in history.drain_now()? {
        if !frame.relayed() {
            continue;
        }
        let Some(node) = kchat_uapi::abi::field_name(&frame.origin.node) else {
            continue;
        };
        let node = String::from_utf8_lossy(node).into_owned();
        if crate::trust::admit(&last, &node, max_nodes).is_err() {
            continue;
        }
        last.entry(node)
            .or_default()
            .note(frame.origin.incarnation(), frame.origin.seq);
    }
    Ok(last)
}
