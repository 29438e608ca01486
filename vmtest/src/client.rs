//! A minimal client of the control ioctls, for the tests. (kchatctl and its
//! library come with the control-plane work; this stays test-only.)

use anyhow::{Context, Result};
use kchat_uapi::abi;
use nix::errno::Errno;
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::PathBuf,
};

pub const CONTROL: &str = "/dev/kchat/control";

/// `ioctl(fd, cmd, arg)` with a raw argument, for probing the ABI with
/// arguments no well-behaved caller passes.
pub fn raw_ioctl(file: &File, cmd: u32, arg: usize) -> Result<i32, Errno> {
    // SAFETY: the kernel validates `arg` before touching user memory; a bad
    // pointer comes back as EFAULT, which is what some tests look for. No
    // memory of this process is written except through a valid `arg`.
    let ret = unsafe { nix::libc::ioctl(file.as_raw_fd(), cmd as nix::libc::c_ulong, arg) };
    Errno::result(ret)
}

/// The control node, opened read-write.
pub struct Control(pub File);

impl Control {
    pub fn open() -> Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(CONTROL)
            .with_context(|| format!("opening {CONTROL}"))?;
        Ok(Control(file))
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
}

impl Control {
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
}

/// A create request with defaults: `drop`, default sizes, root, 0666.
pub fn spec(name: &str) -> abi::RoomSpec {
    abi::RoomSpec {
        size: size_of::<abi::RoomSpec>() as u32,
        policy: abi::POLICY_DROP,
        name: abi::name_field(name).unwrap_or([b'?'; abi::NAME_FIELD]),
        ring_bytes: 0,
        max_msg: 0,
        uid: 0,
        gid: 0,
        mode: 0o666,
        flags: 0,
    }
}

/// A room that is deleted when the test is done with it, pass or fail.
pub struct TempRoom {
    pub name: String,
    control: Control,
}

impl TempRoom {
    pub fn create(spec: abi::RoomSpec) -> Result<Self> {
        let control = Control::open()?;
        let name =
            String::from_utf8_lossy(abi::field_name(&spec.name).unwrap_or(b"?")).into_owned();
        control
            .create(&spec)
            .with_context(|| format!("creating room {name}"))?;
        Ok(TempRoom { name, control })
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/kchat/{}", self.name))
    }

    pub fn open_read(&self) -> Result<File> {
        open(&self.path(), true, false, false)
    }

    pub fn open_read_nonblock(&self) -> Result<File> {
        open(&self.path(), true, false, true)
    }

    pub fn open_write(&self) -> Result<File> {
        open(&self.path(), false, true, false)
    }

    pub fn open_write_nonblock(&self) -> Result<File> {
        open(&self.path(), false, true, true)
    }

    /// Deletes the room now (the drop then has nothing to do).
    pub fn delete(&self) -> Result<(), Errno> {
        self.control.delete(&self.name)
    }
}

impl Drop for TempRoom {
    fn drop(&mut self) {
        let _ = self.control.delete(&self.name);
    }
}

pub fn open(path: &std::path::Path, read: bool, write: bool, nonblock: bool) -> Result<File> {
    File::options()
        .read(read)
        .write(write)
        .custom_flags(if nonblock { nix::libc::O_NONBLOCK } else { 0 })
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}
