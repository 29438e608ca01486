//! The room as the client uses it: one non-blocking fd, framed reads (so
//! every message carries the kernel's stamp), writes that report throttling
//! and deletion instead of failing.

use anyhow::{bail, Context, Result};
use kchat_uapi::abi::{self, FrameHeader};
use nix::errno::Errno;
use std::{
    collections::VecDeque,
    fs::File,
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
};

pub struct Room {
    pub file: File,
    pub name: String,
    pub writable: bool,
    buf: Vec<u8>,
}

/// One message as the kernel stamped it; `origin` says where a relayed
/// one (written on another machine, `kchat-bridge`) came from.
pub struct Received {
    pub header: FrameHeader,
    pub origin: Option<abi::OriginHeader>,
    pub payload: Vec<u8>,
}

/// What one read brought.
pub enum Incoming {
    Frames(Vec<Received>),
    /// Nothing now.
    Empty,
    /// The room was deleted and everything left in it was read.
    Deleted,
}

/// What one write did.
enum Sent {
    Done,
    /// Rate-limited, or a `block` room is full: the first `.0` bytes went
    /// (a message longer than the room's `max_msg` goes in parts); send the
    /// rest later.
    Again(usize),
    Deleted,
}

/// What sending the queue came to.
pub enum Flushed {
    /// Everything queued went.
    All,
    /// The room stalled (rate limit, or a full `block` room) after `sent`
    /// whole messages; the rest stays queued.
    Stalled {
        sent: usize,
    },
    Deleted,
}

/// `lobby` is `/dev/kchat/lobby`; anything with a `/` is a path.
pub fn resolve(room: &str) -> (String, PathBuf) {
    if room.contains('/') {
        let path = PathBuf::from(room);
        let name = path
            .file_name()
            .map_or_else(|| room.to_owned(), |n| n.to_string_lossy().into_owned());
        (name, path)
    } else {
        (room.to_owned(), kchat_client::room_path(room))
    }
}

impl Room {
    /// Opens the room for reading and, if allowed, writing.
    /// Reads are framed even for `--raw`, which prints only payloads: one
    /// frame is one message, so counts are of messages, not of reads.
    pub fn open(room: &str, want_write: bool) -> Result<Room> {
        let (name, path) = resolve(room);
        let open = |write: bool| {
            File::options()
                .read(true)
                .write(write)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&path)
        };
        let (file, writable) = match open(want_write) {
            Ok(file) => (file, want_write),
            Err(err) if want_write && err.kind() == std::io::ErrorKind::PermissionDenied => {
                let file =
                    open(false).with_context(|| format!("cannot open {}", path.display()))?;
                eprintln!("kchat: you may read {name} but not write to it; listening only");
                (file, false)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "no room {name} ({} does not exist; `kchatctl list` shows the rooms)",
                    path.display()
                )
            }
            Err(err) => return Err(err).with_context(|| format!("cannot open {}", path.display())),
        };
        kchat_client::set_read_mode(&file, abi::READ_FRAMED_ORIGIN)
            .with_context(|| format!("{} is not a kchat room", path.display()))?;
        let size =
            size_of::<FrameHeader>() + size_of::<abi::OriginHeader>() + abi::MAX_MAX_MSG as usize;
        Ok(Room {
            file,
            name,
            writable,
            buf: vec![0; size],
        })
    }

    /// Starts reading at the last `count` retained messages.
    pub fn rewind(&self, count: u64) -> Result<()> {
        let back = i64::try_from(count).unwrap_or(i64::MAX).saturating_neg();
        nix::unistd::lseek(&self.file, back, nix::unistd::Whence::SeekEnd)
            .context("cannot seek back in the room's history")?;
        Ok(())
    }

    pub fn read(&mut self) -> Result<Incoming> {
        let n = match self.file.read(&mut self.buf) {
            Ok(0) => return Ok(Incoming::Deleted),
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(Incoming::Empty),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {
                return Ok(Incoming::Empty)
            }
            Err(err) => return Err(err).context("reading the room"),
        };
        let bytes = &self.buf[..n];
        let frames = kchat_client::split_origin_frames(bytes)
            .context("the room returned a torn frame (module and client versions differ?)")?;
        Ok(Incoming::Frames(
            frames
                .into_iter()
                .map(|(header, origin, payload)| Received {
                    header,
                    origin: (origin.flags & abi::ORIGIN_RELAYED != 0).then_some(origin),
                    payload: payload.to_vec(),
                })
                .collect(),
        ))
    }

    /// Sends queued messages in order until the room stalls; a message the
    /// room took in part keeps only its rest.
    pub fn flush(&mut self, queue: &mut VecDeque<Vec<u8>>) -> Result<Flushed> {
        let mut sent = 0;
        while let Some(message) = queue.front_mut() {
            match self.send(message)? {
                Sent::Done => {
                    queue.pop_front();
                    sent += 1;
                }
                Sent::Again(taken) => {
                    message.drain(..taken);
                    return Ok(Flushed::Stalled { sent });
                }
                Sent::Deleted => return Ok(Flushed::Deleted),
            }
        }
        Ok(Flushed::All)
    }

    /// Sends one message.
    fn send(&mut self, message: &[u8]) -> Result<Sent> {
        let mut taken = 0;
        while taken < message.len() {
            match self.file.write(&message[taken..]) {
                // Longer than max_msg: the kernel took whole parts of it.
                Ok(n) => taken += n,
                Err(err) => {
                    return match Errno::from_raw(err.raw_os_error().unwrap_or(0)) {
                        Errno::EAGAIN | Errno::EINTR => Ok(Sent::Again(taken)),
                        Errno::EIDRM => Ok(Sent::Deleted),
                        Errno::EBADF => bail!("you may not write to {}", self.name),
                        _ => Err(err).context("writing to the room"),
                    };
                }
            }
        }
        Ok(Sent::Done)
    }
}
