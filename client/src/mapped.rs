//! Mapped readers: a room's ring mapped read-only into this process and
//! read in place, no copy and no system call per message, every message
//! still stamped by the kernel (docs/kernel-abi.md, "Mapped readers").
//!
//! The kernel may reuse a record's bytes while a reader looks at them (a
//! `drop` room's writer laps a slow reader), so a message is only lent to a
//! closure ([`MappedRoom::read`]) and checked afterwards, the seqcount way:
//! if its bytes were reused meanwhile, what the closure returned is thrown
//! away and the message counts as lost. Losses are exact: every message is
//! either read whole or counted.

use kchat_uapi::abi;
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout},
    sys::mman::{mmap, munmap, MapFlags, ProtFlags},
};
use std::{
    ffi::c_void,
    fs::File,
    num::NonZeroUsize,
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

const HEADER: usize = std::mem::size_of::<abi::RingRecord>();
const ORIGIN: usize = std::mem::size_of::<abi::OriginHeader>();
/// Passes over a record's place before giving up on a ring that keeps
/// changing under the reader (only a writer lapping it on every try).
const MAX_TRIES: usize = 1000;

/// Why mapping a room failed.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("finding the room's size: {0}")]
    Size(#[source] std::io::Error),
    #[error("mapping the room: {0} (EPERM: in a pid or user namespace other than the initial one, where read() still works; EACCES: not opened for reading)")]
    Map(#[source] Errno),
    #[error("the mapped ring is not one this client knows (magic {magic:#x}, version {version})")]
    Unknown { magic: u32, version: u32 },
    #[error("telling the room where this reader is: {0}")]
    Report(#[source] Errno),
}

/// A message as the kernel stamped it: lent to [`MappedRoom::read`]'s
/// closure with the payload in place (`Message<&[u8]>`), or copied out of
/// the ring ([`OwnedMessage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<P> {
    pub seq: u64,
    pub time_ns: u64,
    /// Messages this reader lost just before this one.
    pub lost: u64,
    /// The writer, as the initial namespaces see it.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Where a relayed message was written (`None`: written here).
    pub origin: Option<abi::OriginHeader>,
    pub payload: P,
}

/// A [`Message`] copied out of the ring.
pub type OwnedMessage = Message<Vec<u8>>;

impl<P> Message<P> {
    /// The same message with its payload turned into another form.
    pub fn map_payload<Q>(self, f: impl FnOnce(P) -> Q) -> Message<Q> {
        Message {
            seq: self.seq,
            time_ns: self.time_ns,
            lost: self.lost,
            pid: self.pid,
            uid: self.uid,
            gid: self.gid,
            origin: self.origin,
            payload: f(self.payload),
        }
    }
}

impl Message<&[u8]> {
    /// A copy that outlives the read (checked like any closure result: a
    /// copy of reused bytes is thrown away).
    pub fn to_owned(&self) -> OwnedMessage {
        self.clone().map_payload(<[u8]>::to_vec)
    }
}

/// What [`MappedRoom::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<R> {
    /// A message, read whole: what the closure returned.
    Message(R),
    /// Nothing new yet.
    Empty,
    /// The room is deleted and everything retained was read.
    Ended,
}

/// A room's ring mapped into this process, and where this reader is in it.
pub struct MappedRoom {
    file: File,
    base: NonNull<c_void>,
    map_len: usize,
    records: *const u8,
    area_len: u64,
    seq: u64,
    pos: u64,
    /// Lost since the last message lent out.
    lost: u64,
}

// SAFETY: the mapping belongs to the process, not a thread; `MappedRoom`
// only reads it, and moves with its own position.
unsafe impl Send for MappedRoom {}

impl MappedRoom {
    /// Maps the room open as `file` (opened for reading), starting at the
    /// end, as a new `read` reader does: new messages only.
    pub fn map(file: File) -> Result<MappedRoom, MapError> {
        let page = 4096usize;
        // The control page says how large the rest is: map it alone first.
        let control_only = map(&file, page).map_err(MapError::Map)?;
        // SAFETY: the first page of a room mapping is a `RingControl`.
        let control = unsafe {
            control_only
                .cast::<abi::RingControl>()
                .as_ptr()
                .read_volatile()
        };
        // SAFETY: mapped just above, `page` bytes, and not used after this.
        unsafe { munmap(control_only, page) }.map_err(MapError::Map)?;
        if control.magic != abi::RING_MAGIC || control.version != abi::RING_VERSION {
            return Err(MapError::Unknown {
                magic: control.magic,
                version: control.version,
            });
        }
        let map_len = control.records_offset as usize + control.area_len as usize;
        let base = map(&file, map_len).map_err(MapError::Map)?;
        // SAFETY: `records_offset` is inside the mapping just made.
        let records = unsafe {
            base.cast::<u8>()
                .as_ptr()
                .add(control.records_offset as usize)
        };
        let mut room = MappedRoom {
            file,
            base,
            map_len,
            records,
            area_len: control.area_len,
            seq: 0,
            pos: 0,
            lost: 0,
        };
        let (_, _, next_seq, next_pos) = room.stand();
        room.seq = next_seq;
        room.pos = next_pos;
        room.report().map_err(MapError::Report)?;
        Ok(room)
    }

    /// Moves to the oldest message the room still holds.
    pub fn seek_oldest(&mut self) -> Result<(), Errno> {
        let (first_seq, first_pos, _, _) = self.stand();
        self.seq = first_seq;
        self.pos = first_pos;
        self.lost = 0;
        self.report()
    }

    /// The sequence number of the next message this reader reads.
    pub fn position(&self) -> u64 {
        self.seq
    }

    /// The room file the mapping came from.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Tells the kernel where this reader is: a `block` room's writers wait
    /// for mapped readers only as far as they reported, and poll compares
    /// the room with this position. A reader already lapped (a `drop` room)
    /// has nothing to report; that is no error.
    pub fn report(&self) -> Result<(), Errno> {
        match crate::seek_seq(&self.file, self.seq) {
            Err(Errno::ERANGE) => Ok(()),
            other => other,
        }
    }

    /// Reports this reader's place and sleeps until the room has something
    /// past it, it is deleted, or `timeout` passes; returns whether it woke
    /// for the room.
    pub fn wait(&self, timeout: Duration) -> Result<bool, Errno> {
        self.report()?;
        let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        Ok(nix::poll::poll(&mut fds, PollTimeout::from(millis))? > 0)
    }

    /// Lends the next message to `f` and returns what it returned, once the
    /// message is known to have been read whole; a message whose bytes the
    /// kernel reused meanwhile counts as lost, and the next one is tried.
    pub fn read<R>(&mut self, mut f: impl FnMut(&Message<&[u8]>) -> R) -> Result<Next<R>, Errno> {
        for _ in 0..MAX_TRIES {
            let control = self.control();
            if self.seq >= control.next_seq.load(Ordering::Acquire) {
                return Ok(
                    if control.flags.load(Ordering::Acquire) & abi::RING_DELETED != 0
                        && self.seq >= control.next_seq.load(Ordering::Acquire)
                    {
                        Next::Ended
                    } else {
                        Next::Empty
                    },
                );
            }
            let Some((offset, header)) = self.locate() else {
                self.catch_up()?;
                continue;
            };
            let relayed = header.flags & abi::RING_ORIGIN != 0;
            let payload_at = offset + HEADER + if relayed { ORIGIN } else { 0 };
            let len = header.len as usize;
            if payload_at + len > self.area_len as usize {
                // A header read while being rewritten: the check below
                // tells; never lend bytes outside the area.
                self.catch_up()?;
                continue;
            }
            // SAFETY: inside the mapped area (checked above); the bytes may
            // change under the reader, which is what the check after `f`
            // is for (u8 has no invalid values).
            let payload = unsafe { std::slice::from_raw_parts(self.records.add(payload_at), len) };
            let origin = relayed.then(|| {
                // SAFETY: `offset + HEADER + ORIGIN <= payload_at`, inside
                // the area; any bytes are a valid `OriginHeader`.
                unsafe {
                    self.records
                        .add(offset + HEADER)
                        .cast::<abi::OriginHeader>()
                        .read_unaligned()
                }
            });
            let message = Message {
                seq: self.seq,
                time_ns: header.time_ns,
                lost: self.lost,
                pid: header.pid,
                uid: header.uid,
                gid: header.gid,
                origin,
                payload,
            };
            let answer = f(&message);
            // Everything read above before the check below (smp_rmb).
            fence(Ordering::SeqCst);
            if self.control().first_seq.load(Ordering::Acquire) > self.seq {
                self.catch_up()?;
                continue;
            }
            self.lost = 0;
            self.seq += 1;
            self.pos += ((payload_at - offset + len + 7) & !7) as u64;
            return Ok(Next::Message(answer));
        }
        Err(Errno::EAGAIN)
    }

    /// Where the record `self.seq` starts in the area, and its header; skips
    /// padding. `None` if the bytes there are no longer that record.
    fn locate(&mut self) -> Option<(usize, abi::RingRecord)> {
        for _ in 0..2 {
            let offset = (self.pos % self.area_len) as usize;
            let room_left = self.area_len as usize - offset;
            let header = (room_left >= HEADER).then(|| {
                // SAFETY: `offset + HEADER` is inside the area; a volatile
                // copy, as the kernel may be rewriting it.
                unsafe {
                    self.records
                        .add(offset)
                        .cast::<abi::RingRecord>()
                        .read_volatile()
                }
            });
            match header {
                Some(header) if header.flags & abi::RING_PAD == 0 => {
                    return (header.seq == self.seq).then_some((offset, header));
                }
                // Padding to the end: the record starts the next lap.
                _ => self.pos += room_left as u64,
            }
        }
        None
    }

    /// After finding `self.seq`'s bytes reused: counts what the ring
    /// dropped since, and moves to the oldest record it holds.
    fn catch_up(&mut self) -> Result<(), Errno> {
        fence(Ordering::SeqCst);
        let (first_seq, first_pos, _, _) = self.stand();
        if first_seq <= self.seq {
            // The ring moves `first_seq` before reusing bytes; seeing them
            // reused without that means this reader lost its way.
            return Err(Errno::EIO);
        }
        self.lost += first_seq - self.seq;
        self.seq = first_seq;
        self.pos = first_pos;
        Ok(())
    }

    /// `(first_seq, first_pos, next_seq, next_pos)`, read consistently.
    fn stand(&self) -> (u64, u64, u64, u64) {
        let control = self.control();
        loop {
            let before = control.seqcount.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let stand = (
                control.first_seq.load(Ordering::Acquire),
                control.first_pos.load(Ordering::Acquire),
                control.next_seq.load(Ordering::Acquire),
                control.next_pos.load(Ordering::Acquire),
            );
            fence(Ordering::SeqCst);
            if control.seqcount.load(Ordering::Acquire) == before {
                return stand;
            }
        }
    }

    fn control(&self) -> &Control {
        // SAFETY: the mapping starts with a `RingControl`, whose layout
        // `Control` mirrors with atomics (the kernel writes it
        // concurrently); it lives as long as `self`.
        unsafe { self.base.cast::<Control>().as_ref() }
    }
}

impl Drop for MappedRoom {
    fn drop(&mut self) {
        // SAFETY: mapped in `map` with this length; nothing borrowed from
        // it outlives `self`.
        let _ = unsafe { munmap(self.base, self.map_len) };
    }
}

/// `abi::RingControl` as this process sees it: fields the kernel changes,
/// read atomically.
#[repr(C)]
struct Control {
    magic: u32,
    version: u32,
    records_offset: u32,
    flags: AtomicU32,
    area_len: u64,
    seqcount: AtomicU32,
    reserved: u32,
    first_seq: AtomicU64,
    first_pos: AtomicU64,
    next_seq: AtomicU64,
    next_pos: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Control>() == std::mem::size_of::<abi::RingControl>());
const _: () = assert!(
    std::mem::offset_of!(Control, next_pos) == std::mem::offset_of!(abi::RingControl, next_pos)
);

/// Maps `len` bytes of `file` read-only and shared.
fn map(file: &File, len: usize) -> Result<NonNull<c_void>, Errno> {
    let len = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
    // SAFETY: a new mapping at an address the kernel picks; nothing else
    // is affected.
    unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            file,
            0,
        )
    }
}
