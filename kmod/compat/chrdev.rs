// SPDX-License-Identifier: GPL-2.0
//! `Major`: one dynamically allocated character-device major with a range of
//! minors, whose `open` hands each minor to a [`Router`].
//!
//! 6.12 has neither a chrdev nor a miscdevice abstraction and `cdev_add` is
//! out of the bindings' reach, so this wraps `__register_chrdev`.

use super::file::OpeningFile;
use core::marker::PhantomData;
use kernel::{bindings, error::to_result, ffi, prelude::*, str::CStr};

/// Decides which kind of file a minor opens, and opens it with
/// [`super::fops::open_as`].
pub(crate) trait Router: 'static {
    /// Opens `file` on `minor`; `ENXIO` when no device has that minor.
    fn open(file: &OpeningFile, minor: u32) -> Result;
}

/// A registered major. Unregisters at drop.
///
/// # Invariants
///
/// `major` is registered with `count` minors under `name` until drop.
pub(crate) struct Major<R: Router> {
    major: u32,
    count: u32,
    name: &'static CStr,
    _router: PhantomData<R>,
}

impl<R: Router> Major<R> {
    /// Asks the kernel for a free major with `count` minors.
    pub(crate) fn register(name: &'static CStr, count: u32) -> Result<Self> {
        // SAFETY: `name` and the `file_operations` are `'static`; major 0
        // asks for a dynamic major, returned on success.
        let ret = unsafe {
            bindings::__register_chrdev(0, 0, count, name.as_char_ptr(), &Self::ROUTER_FOPS)
        };
        to_result(ret)?;
        Ok(Self {
            major: ret as u32,
            count,
            name,
            _router: PhantomData,
        })
    }

    /// The device number of `minor` under this major (`MKDEV`).
    pub(crate) fn devt(&self, minor: u32) -> bindings::dev_t {
        (self.major << bindings::MINORBITS) | minor
    }

    const ROUTER_FOPS: bindings::file_operations = bindings::file_operations {
        owner: super::fops::owner(),
        open: Some(Self::open),
        llseek: Some(bindings::noop_llseek),
        // SAFETY: all-zero is a valid `file_operations`: every field is a
        // nullable pointer or an integer.
        ..unsafe { core::mem::zeroed() }
    };

    /// # Safety
    ///
    /// Called by `chrdev_open` with the inode and file being opened.
    unsafe extern "C" fn open(inode: *mut bindings::inode, raw: *mut bindings::file) -> ffi::c_int {
        // SAFETY: the VFS passes a valid inode; `i_rdev` is fixed for a
        // device inode. MINOR() is the low MINORBITS bits.
        let minor = unsafe { (*inode).i_rdev } & ((1 << bindings::MINORBITS) - 1);
        // SAFETY: this is the `open` callback, and `raw` the file it opens;
        // the borrow ends with the call.
        let file = unsafe { OpeningFile::from_raw(raw) };
        match R::open(file, minor) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }
}

impl<R: Router> Drop for Major<R> {
    fn drop(&mut self) {
        // SAFETY: the type invariant says this range is registered by us.
        unsafe {
            bindings::__unregister_chrdev(self.major, 0, self.count, self.name.as_char_ptr())
        };
    }
}
