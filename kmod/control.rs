// SPDX-License-Identifier: GPL-2.0
//! The control device, `/dev/kchat/control`: how kchatd and admins manage
//! rooms.
//!
//! Privileged: the node is root's with mode 0600, and `open` also requires
//! `CAP_SYS_ADMIN`. Ioctls check nothing more, so a privileged process may
//! open it and hand the fd to a daemon that runs without capabilities.

use crate::{
    abi,
    compat::{
        file::{current_capable, Capability, File},
        fops::FileOps,
    },
};
use kernel::{prelude::*, uaccess::UserSlice};

/// Files opened on the control node.
pub(crate) struct Control;

#[vtable]
impl FileOps for Control {
    type Ptr = ();
    type Target = ();

    fn open(_file: &File, (): ()) -> Result<()> {
        if !current_capable(Capability::SysAdmin) {
            return Err(EPERM);
        }
        Ok(())
    }

    fn ioctl((): (), _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            abi::IOC_VERSION => {
                let mut writer = UserSlice::new(arg, core::mem::size_of::<u32>()).writer();
                writer.write(&abi::ABI_VERSION)?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}
