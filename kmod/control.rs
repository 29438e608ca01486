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
        file::{current_capable, Capability, File, OpeningFile},
        fops::FileOps,
        uaccess::user_slice,
    },
    registry::Registry,
    uabi::{read_extensible, read_extensible_from, write_prefix},
};
use kernel::{
    prelude::*,
    sync::{Arc, ArcBorrow},
};

/// Files opened on the control node.
pub(crate) struct Control;

#[vtable]
impl FileOps for Control {
    type Ptr = Arc<Registry>;
    type Target = Arc<Registry>;

    fn open(_file: &OpeningFile, registry: Arc<Registry>) -> Result<Arc<Registry>> {
        if !current_capable(Capability::SysAdmin) {
            return Err(EPERM);
        }
        Ok(registry)
    }

    fn ioctl(
        registry: ArcBorrow<'_, Registry>,
        file: &File,
        cmd: u32,
        arg: usize,
    ) -> Result<isize> {
        match cmd {
            abi::IOC_VERSION => {
                let mut writer = user_slice(arg, core::mem::size_of::<u32>()).writer();
                writer.write(&abi::ABI_VERSION)?;
            }
            abi::IOC_CREATE_ROOM => {
                let spec =
                    read_extensible_from::<abi::RoomSpec>(arg, abi::ROOM_SPEC_V1_SIZE as usize)?;
                registry.create(&spec)?;
            }
            abi::IOC_DELETE_ROOM => {
                let request = read_extensible::<abi::RoomName>(arg)?;
                if request.flags != 0 {
                    return Err(EINVAL);
                }
                let name = abi::field_name(&request.name).ok_or(EINVAL)?;
                registry.delete(name)?;
            }
            abi::IOC_SET_RATE_LIMIT => {
                let request = read_extensible::<abi::RateLimit>(arg)?;
                registry.set_limit(&request)?;
            }
            abi::IOC_ROOM_READERS => {
                let mut list = read_extensible::<abi::ReaderList>(arg)?;
                let infos = registry.readers(file, &mut list)?;
                let size = core::mem::size_of::<abi::ReaderInfo>();
                let mut out =
                    user_slice(list.readers as usize, infos.len().saturating_mul(size)).writer();
                for info in infos.iter() {
                    out.write(info)?;
                }
                user_slice(arg, core::mem::size_of::<abi::ReaderList>())
                    .writer()
                    .write(&list)?;
            }
            abi::IOC_SET_MAX_WAIT => {
                let request = read_extensible::<abi::MaxWait>(arg)?;
                registry.set_max_wait(&request)?;
            }
            abi::IOC_SET_LIMITS => {
                let limits = read_extensible::<abi::GlobalLimits>(arg)?;
                registry.set_limits(&limits)?;
            }
            abi::IOC_GET_LIMITS => {
                let request = read_extensible::<abi::GlobalLimits>(arg)?;
                if request.flags != 0 {
                    return Err(EINVAL);
                }
                user_slice(arg, core::mem::size_of::<abi::GlobalLimits>())
                    .writer()
                    .write(&registry.limits())?;
            }
            abi::IOC_ROOM_INFO => {
                let mut info =
                    read_extensible_from::<abi::RoomInfo>(arg, abi::ROOM_INFO_V1_SIZE as usize)?;
                if info.flags != 0 {
                    return Err(EINVAL);
                }
                // The caller's size, before `info` is filled: an older
                // caller's buffer ends before the fields it does not know.
                let size = info.size as usize;
                registry.info(file, &mut info)?;
                write_prefix(arg, &info, size)?;
            }
            abi::IOC_LIST_ROOMS => {
                let mut list = read_extensible::<abi::RoomList>(arg)?;
                if list.flags != 0 {
                    return Err(EINVAL);
                }
                let field = abi::NAME_FIELD;
                let capacity = list.capacity as usize;
                let mut names =
                    user_slice(list.names as usize, capacity.saturating_mul(field)).writer();
                let mut written = 0;
                list.count = registry.for_each_name(|name| {
                    if written < capacity {
                        names.write_slice(name)?;
                        written += 1;
                    }
                    Ok(())
                })?;
                user_slice(arg, core::mem::size_of::<abi::RoomList>())
                    .writer()
                    .write(&list)?;
            }
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}
