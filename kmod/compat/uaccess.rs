// SPDX-License-Identifier: GPL-2.0
//! User memory named by an ioctl argument: 7.x's `UserSlice` takes a typed
//! `UserPtr` where 6.12's takes the address.

use kernel::uaccess::UserSlice;

/// The `len` bytes of user memory at `addr`.
pub(crate) fn user_slice(addr: usize, len: usize) -> UserSlice {
    #[cfg(not(kchat_kapi7))]
    return UserSlice::new(addr, len);
    #[cfg(kchat_kapi7)]
    return UserSlice::new(kernel::uaccess::UserPtr::from_addr(addr), len);
}
