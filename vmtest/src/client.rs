//! Test helpers over `kchat-client`: rooms that clean up after themselves,
//! and opening room nodes in the modes the tests need.

use anyhow::{Context, Result};
use kchat_uapi::abi;
use nix::errno::Errno;
use std::{fs::File, os::unix::fs::OpenOptionsExt, path::PathBuf};

pub use kchat_client::{raw_ioctl, spec, Control};

/// A room that is deleted when the test is done with it, pass or fail.
pub struct TempRoom {
    pub name: String,
    control: Control,
}

impl TempRoom {
    pub fn create(spec: abi::RoomSpec) -> Result<Self> {
        let control = Control::open().context("opening /dev/kchat/control")?;
        let name =
            String::from_utf8_lossy(abi::field_name(&spec.name).unwrap_or(b"?")).into_owned();
        control
            .create(&spec)
            .with_context(|| format!("creating room {name}"))?;
        Ok(TempRoom { name, control })
    }

    /// The control node the room was made through.
    pub fn control(&self) -> &Control {
        &self.control
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

/// Waits (at most `PATIENCE`: readers are often processes just started)
/// until room `name` has `count` readers: a reader starts at the end, so a
/// test speaks only once its listener is there.
pub fn wait_for_readers(name: &str, count: u32) -> Result<()> {
    let control = Control::open().context("opening /dev/kchat/control")?;
    crate::helper::wait_for(
        &format!("{count} reader(s) in room {name}"),
        crate::helper::PATIENCE,
        || Ok(control.info(name)?.readers >= count),
    )
}
