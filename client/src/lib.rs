//! Userspace access to kchat's kernel interface: the control node's ioctls
//! (rooms, info, limits) and a room fd's own (read mode, losses, seeking).
//!
//! Errors are the kernel's errno, unchanged: callers (tests, tools) decide
//! what each means to their users. `docs/kernel-abi.md` lists them.

use kchat_uapi::abi;
use nix::errno::Errno;
use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

pub mod mapped;

pub use kchat_uapi::abi::{FrameHeader, RateLimit, RoomInfo, RoomSpec};

/// The control node.
pub const CONTROL: &str = "/dev/kchat/control";

/// Where a room's node is.
pub fn room_path(name: &str) -> PathBuf {
    Path::new("/dev/kchat").join(name)
}

/// `ioctl(fd, cmd, arg)` with a raw argument. Public so tests can probe the
/// ABI with arguments no well-behaved caller passes.
pub fn raw_ioctl(fd: impl AsFd, cmd: u32, arg: usize) -> Result<i32, Errno> {
    // SAFETY: the kernel validates `arg` before it touches user memory; a bad
    // pointer comes back as EFAULT. The kernel writes through `arg` only as
    // much as the command's struct, which callers of the typed wrappers
    // below pass by exclusive reference.
    let ret = unsafe { nix::libc::ioctl(fd.as_fd().as_raw_fd(), cmd as nix::libc::c_ulong, arg) };
    Errno::result(ret)
}

/// A create request with defaults: `drop`, default sizes, root, 0666.
pub fn spec(name: &str) -> abi::RoomSpec {
    abi::RoomSpec::chat_room(abi::name_field(name).unwrap_or([b'?'; abi::NAME_FIELD]))
}

/// An unlimited rate-limit request for `name`, to fill in.
pub fn rate_limit(name: &str) -> abi::RateLimit {
    abi::RateLimit {
        size: size_of::<abi::RateLimit>() as u32,
        flags: 0,
        name: abi::name_field(name).unwrap_or([b'?'; abi::NAME_FIELD]),
        scope: abi::LIMIT_PER_UID,
        msgs_per_sec: 0,
        msg_burst: 0,
        bytes_per_sec: 0,
        byte_burst: 0,
        reserved: 0,
    }
}

/// The control node, open.
pub struct Control(pub File);

impl Control {
    /// Opens `/dev/kchat/control` (root with `CAP_SYS_ADMIN`).
    pub fn open() -> std::io::Result<Self> {
        File::options()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map(Control)
    }

    /// The module's ABI version.
    pub fn version(&self) -> Result<u32, Errno> {
        let mut version = 0u32;
        raw_ioctl(&self.0, abi::IOC_VERSION, &mut version as *mut u32 as usize)?;
        Ok(version)
    }

    pub fn create(&self, spec: &abi::RoomSpec) -> Result<(), Errno> {
        raw_ioctl(&self.0, abi::IOC_CREATE_ROOM, spec as *const _ as usize).map(drop)
    }

    pub fn delete(&self, name: &str) -> Result<(), Errno> {
        let request = abi::RoomName {
            size: size_of::<abi::RoomName>() as u32,
            flags: 0,
            name: abi::name_field(name).ok_or(Errno::EINVAL)?,
        };
        raw_ioctl(&self.0, abi::IOC_DELETE_ROOM, &request as *const _ as usize).map(drop)
    }

    pub fn info(&self, name: &str) -> Result<abi::RoomInfo, Errno> {
        // SAFETY: RoomInfo is plain integers; all-zero is a valid value.
        let mut info: abi::RoomInfo = unsafe { std::mem::zeroed() };
        info.size = size_of::<abi::RoomInfo>() as u32;
        info.name = abi::name_field(name).ok_or(Errno::EINVAL)?;
        raw_ioctl(&self.0, abi::IOC_ROOM_INFO, &mut info as *mut _ as usize)?;
        Ok(info)
    }

    pub fn set_limit(&self, limit: &abi::RateLimit) -> Result<(), Errno> {
        raw_ioctl(&self.0, abi::IOC_SET_RATE_LIMIT, limit as *const _ as usize).map(drop)
    }

    /// Changes a `block` room's bound on laggards (0: the default,
    /// `abi::MAX_WAIT_FOREVER`: none).
    pub fn set_max_wait(&self, name: &str, max_wait_ms: u32) -> Result<(), Errno> {
        let request = abi::MaxWait {
            size: size_of::<abi::MaxWait>() as u32,
            flags: 0,
            name: abi::name_field(name).ok_or(Errno::EINVAL)?,
            max_wait_ms,
            reserved: 0,
        };
        raw_ioctl(
            &self.0,
            abi::IOC_SET_MAX_WAIT,
            &request as *const _ as usize,
        )
        .map(drop)
    }

    pub fn limits(&self) -> Result<abi::GlobalLimits, Errno> {
        let mut limits = abi::GlobalLimits {
            size: size_of::<abi::GlobalLimits>() as u32,
            flags: 0,
            max_rooms: 0,
            max_readers: 0,
            max_total_ring_bytes: 0,
        };
        raw_ioctl(&self.0, abi::IOC_GET_LIMITS, &mut limits as *mut _ as usize)?;
        Ok(limits)
    }

    pub fn set_limits(&self, limits: &abi::GlobalLimits) -> Result<(), Errno> {
        raw_ioctl(&self.0, abi::IOC_SET_LIMITS, limits as *const _ as usize).map(drop)
    }

    /// Room names (at most `capacity`) and the total number of rooms.
    pub fn list(&self, capacity: usize) -> Result<(Vec<String>, u32), Errno> {
        let mut names = vec![[0u8; abi::NAME_FIELD]; capacity];
        let mut list = abi::RoomList {
            size: size_of::<abi::RoomList>() as u32,
            capacity: capacity as u32,
            count: 0,
            flags: 0,
            names: names.as_mut_ptr() as u64,
        };
        raw_ioctl(&self.0, abi::IOC_LIST_ROOMS, &mut list as *mut _ as usize)?;
        let shown = (list.count as usize).min(capacity);
        let names = names[..shown]
            .iter()
            .map(|field| {
                String::from_utf8_lossy(abi::field_name(field).unwrap_or(b"?")).into_owned()
            })
            .collect();
        Ok((names, list.count))
    }

    /// Every reader of room `name` and how far behind it is (readers that
    /// open meanwhile may be left out; the next call sees them).
    pub fn readers(&self, name: &str) -> Result<Vec<abi::ReaderInfo>, Errno> {
        let field = abi::name_field(name).ok_or(Errno::EINVAL)?;
        let mut capacity = 64usize;
        // Readers come and go meanwhile: a few tries, then what fitted.
        for tries_left in (0..4).rev() {
            let mut infos = vec![abi::ReaderInfo::default(); capacity];
            let mut list = abi::ReaderList {
                size: size_of::<abi::ReaderList>() as u32,
                flags: 0,
                name: field,
                capacity: capacity as u32,
                count: 0,
                readers: infos.as_mut_ptr() as u64,
            };
            raw_ioctl(&self.0, abi::IOC_ROOM_READERS, &mut list as *mut _ as usize)?;
            let count = list.count as usize;
            if count <= capacity || tries_left == 0 {
                infos.truncate(count.min(capacity));
                return Ok(infos);
            }
            // More opened than there was room for: once more, with room.
            capacity = count + 16;
        }
        Ok(Vec::new())
    }
}

/// Makes a writable room fd a relay (`IOC_SET_RELAY`; needs
/// `CAP_SYS_ADMIN`): each write on it is then one [`relay_frame`].
pub fn set_relay(room: impl AsFd) -> Result<(), Errno> {
    let on = 1u32;
    raw_ioctl(room, abi::IOC_SET_RELAY, &on as *const u32 as usize).map(drop)
}

/// One relay write: the kernel's relay header stating `origin`, then the
/// payload.
pub fn relay_frame(origin: abi::OriginHeader, payload: &[u8]) -> Vec<u8> {
    let header = abi::RelayHeader {
        size: size_of::<abi::RelayHeader>() as u32,
        flags: 0,
        origin,
    };
    let mut out = Vec::with_capacity(size_of::<abi::RelayHeader>() + payload.len());
    // SAFETY: RelayHeader is repr(C) integers without padding; its bytes
    // are its value.
    out.extend_from_slice(unsafe {
        std::slice::from_raw_parts(
            (&header as *const abi::RelayHeader).cast::<u8>(),
            size_of::<abi::RelayHeader>(),
        )
    });
    out.extend_from_slice(payload);
    out
}

/// Sets a room fd's read mode (`abi::READ_*`).
pub fn set_read_mode(room: impl AsFd, mode: u32) -> Result<(), Errno> {
    raw_ioctl(room, abi::IOC_SET_READ_MODE, &mode as *const u32 as usize).map(drop)
}

/// Sets a writable fd's write mode: `abi::WRITE_PLAIN` (one message per
/// write) or `abi::WRITE_FRAMED` (records built with [`push_record`], many
/// messages of any sizes per write).
pub fn set_write_mode(room: impl AsFd, mode: u32) -> Result<(), Errno> {
    raw_ioctl(room, abi::IOC_SET_WRITE_MODE, &mode as *const u32 as usize).map(drop)
}

/// Appends one record of a framed write to `out`: its `WriteFrame`, then
/// `body` (a message of 1 to `max_msg` bytes; on a relay fd, what
/// [`relay_frame`] makes). A `write` of many records stores whole records
/// only and returns where it stopped, a record boundary. `None` if `body`
/// is longer than a record can say (`u32::MAX`).
pub fn push_record(out: &mut Vec<u8>, body: &[u8]) -> Option<()> {
    let frame = abi::WriteFrame {
        len: u32::try_from(body.len()).ok()?,
        flags: 0,
    };
    out.extend_from_slice(&frame.len.to_ne_bytes());
    out.extend_from_slice(&frame.flags.to_ne_bytes());
    out.extend_from_slice(body);
    Some(())
}

/// Messages this reader lost since it last asked; resets the count.
pub fn take_lost(room: impl AsFd) -> Result<u64, Errno> {
    let mut lost = 0u64;
    raw_ioctl(room, abi::IOC_TAKE_LOST, &mut lost as *mut u64 as usize)?;
    Ok(lost)
}

/// Moves a reader to a retained sequence number (or the next one).
pub fn seek_seq(room: impl AsFd, seq: u64) -> Result<(), Errno> {
    raw_ioctl(room, abi::IOC_SEEK_SEQ, &seq as *const u64 as usize).map(drop)
}

/// Splits the bytes of a framed read into headers and payloads; `None` if
/// they end inside a frame (which the kernel never does).
pub fn split_frames(bytes: &[u8]) -> Option<Vec<(abi::FrameHeader, &[u8])>> {
    let frames = split_frames_after(bytes, 0)?;
    Some(
        frames
            .into_iter()
            .map(|(header, _, payload)| (header, payload))
            .collect(),
    )
}

/// One frame of a framed read: its header, the bytes between header and
/// payload (an `OriginHeader`'s, or none), and the payload.
pub type RawFrame<'a> = (abi::FrameHeader, &'a [u8], &'a [u8]);

/// Splits a framed read whose headers are followed by `extra` more bytes
/// before each payload (`READ_FRAMED_ORIGIN`: an `OriginHeader`); returns
/// each header, those bytes and the payload, or `None` if the last frame
/// is torn.
pub fn split_frames_after(mut bytes: &[u8], extra: usize) -> Option<Vec<RawFrame<'_>>> {
    let header_len = size_of::<abi::FrameHeader>();
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < header_len + extra {
            return None;
        }
        // SAFETY: FrameHeader is plain integers, any bytes are a valid
        // value, and read_unaligned copies from the possibly unaligned buffer.
        let header: abi::FrameHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let start = header_len + extra;
        let end = start.checked_add(header.len as usize)?;
        let payload = bytes.get(start..end)?;
        frames.push((header, &bytes[header_len..start], payload));
        bytes = &bytes[end..];
    }
    Some(frames)
}

/// Splits a `READ_FRAMED_ORIGIN` read into header, origin and payload.
pub fn split_origin_frames(
    bytes: &[u8],
) -> Option<Vec<(abi::FrameHeader, abi::OriginHeader, &[u8])>> {
    let frames = split_frames_after(bytes, size_of::<abi::OriginHeader>())?;
    Some(
        frames
            .into_iter()
            .map(|(header, origin, payload)| {
                // SAFETY: OriginHeader is plain integers (any bytes are a
                // value), and `origin` is exactly its size.
                let origin: abi::OriginHeader =
                    unsafe { std::ptr::read_unaligned(origin.as_ptr().cast()) };
                (header, origin, payload)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_truncation_is_detected() {
        let header = abi::FrameHeader {
            seq: 7,
            len: 3,
            ..Default::default()
        };
        let mut bytes = Vec::new();
        for payload in [&b"abc"[..], b"xyz"] {
            // SAFETY: plain integers, no padding.
            let raw = unsafe {
                std::slice::from_raw_parts(
                    &header as *const _ as *const u8,
                    size_of::<abi::FrameHeader>(),
                )
            };
            bytes.extend_from_slice(raw);
            bytes.extend_from_slice(payload);
        }
        let frames = split_frames(&bytes).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].1, b"xyz");
        assert_eq!(frames[0].0.seq, 7);
        assert!(split_frames(&bytes[..bytes.len() - 1]).is_none());
        assert!(split_frames(&bytes[..10]).is_none());
    }

    #[test]
    fn default_spec_is_a_valid_request() {
        let spec = spec("lobby");
        assert_eq!(spec.size as usize, size_of::<abi::RoomSpec>());
        assert_eq!(abi::field_name(&spec.name), Some(&b"lobby"[..]));
    }
}
