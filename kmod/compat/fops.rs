// SPDX-License-Identifier: GPL-2.0
//! `FileOps`: a `#[vtable]` trait per kind of kchat file, turned into a
//! `struct file_operations` at compile time.
//!
//! Shaped like `kernel::miscdevice::MiscDevice` of Linux 6.13+: `open`
//! returns the per-file state, which lives in `private_data` as a
//! [`ForeignOwnable`] until `release`. Kernel error codes become errnos here
//! and nowhere else.

use super::{
    file::{File, OpeningFile},
    iov::{IovDest, IovSource, Kiocb},
    poll::PollTable,
    ring_area::Vma,
};
use core::{marker::PhantomData, ptr};
use kernel::{
    bindings, build_error, error::VTABLE_DEFAULT_ERROR, ffi, prelude::*, types::ForeignOwnable,
};

/// `ForeignOwnable::into_foreign`, as the `*mut` C fields want it: it
/// gives `*const` on 6.12, `*mut` from 7.x on.
pub(crate) fn into_foreign_mut<P: ForeignOwnable>(owned: P) -> *mut ffi::c_void {
    let raw = owned.into_foreign();
    #[cfg(not(kchat_kapi7))]
    let raw = raw.cast_mut();
    raw
}

/// One kind of file under kchat's major (the control node, a room).
#[vtable]
pub(crate) trait FileOps: Sized {
    /// Per-open-file state kept in `private_data`.
    type Ptr: ForeignOwnable + Send + Sync;
    /// What the router hands to `open` (for a room: the room).
    type Target;

    /// Sets up a newly opened file.
    fn open(file: &OpeningFile, target: Self::Target) -> Result<Self::Ptr>;

    /// Tears down the file at its last close.
    fn release(state: Self::Ptr, _file: &File) {
        drop(state);
    }

    /// Handles `read(2)`, `readv(2)` and io_uring reads: fills `dest`,
    /// returns the bytes written to it.
    fn read_iter(
        _state: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _iocb: &Kiocb,
        _dest: &mut IovDest<'_>,
    ) -> Result<usize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles `write(2)`, `writev(2)` and io_uring writes: consumes `src`,
    /// returns the bytes taken from it.
    fn write_iter(
        _state: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _iocb: &Kiocb,
        _src: &mut IovSource<'_>,
    ) -> Result<usize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles poll/select/epoll: registers with `table` and returns the
    /// events that are ready now.
    fn poll(
        _state: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _table: &PollTable,
    ) -> u32 {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles `lseek(2)`; returns the new position.
    fn llseek(
        _state: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _offset: i64,
        _whence: u32,
    ) -> Result<i64> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Handles `ioctl(2)`.
    fn ioctl(
        _state: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _cmd: u32,
        _arg: usize,
    ) -> Result<isize> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    fn mmap(
        _state: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _vma: &Vma,
    ) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }
}

/// Switches a file being opened over to `T`'s operations and runs `T::open`.
///
/// Called from the major's open router, like `misc_open` does for misc
/// devices. All of kchat's `file_operations` share one owner module, so
/// replacing `f_op` keeps the module reference the VFS took balanced.
pub(crate) fn open_as<T: FileOps>(file: &OpeningFile, target: T::Target) -> Result {
    let state = T::open(file, target)?;
    let raw = file.as_raw();
    // SAFETY: `raw` is the file being opened, not yet visible to any other
    // thread, so writing its `f_op` and `private_data` cannot race. The new
    // table is `'static` and has the same owner as the old one.
    unsafe {
        (*raw).f_op = Vtable::<T>::build();
        (*raw).private_data = into_foreign_mut(state);
    }
    Ok(())
}

struct Vtable<T: FileOps>(PhantomData<T>);

impl<T: FileOps> Vtable<T> {
    const VTABLE: bindings::file_operations = bindings::file_operations {
        owner: owner(),
        open: None,
        release: Some(Self::release),
        read_iter: if T::HAS_READ_ITER {
            Some(Self::read_iter)
        } else {
            None
        },
        write_iter: if T::HAS_WRITE_ITER {
            Some(Self::write_iter)
        } else {
            None
        },
        poll: if T::HAS_POLL { Some(Self::poll) } else { None },
        unlocked_ioctl: if T::HAS_IOCTL {
            Some(Self::ioctl)
        } else {
            None
        },
        compat_ioctl: if T::HAS_IOCTL {
            Some(Self::ioctl)
        } else {
            None
        },
        mmap: if T::HAS_MMAP { Some(Self::mmap) } else { None },
        llseek: if T::HAS_LLSEEK {
            Some(Self::llseek)
        } else {
            Some(bindings::noop_llseek)
        },
        // SAFETY: all-zero is a valid `file_operations`: every field is a
        // nullable pointer or an integer.
        ..unsafe { core::mem::zeroed() }
    };

    const fn build() -> &'static bindings::file_operations {
        &Self::VTABLE
    }

    /// # Safety
    ///
    /// Called by the VFS at the last close of a file that `open_as::<T>` set up.
    unsafe extern "C" fn release(
        _inode: *mut bindings::inode,
        raw: *mut bindings::file,
    ) -> ffi::c_int {
        // SAFETY: the VFS passes a valid file for the duration of the call.
        let file = unsafe { File::from_raw(raw) };
        // SAFETY: `private_data` was set by `open_as::<T>` from `T::Ptr`, and
        // `release` runs once, after every other file operation has ended.
        let state = unsafe { T::Ptr::from_foreign((*raw).private_data) };
        T::release(state, file);
        0
    }

    /// # Safety
    ///
    /// Called by the VFS on a file that `open_as::<T>` set up.
    unsafe extern "C" fn llseek(
        raw: *mut bindings::file,
        offset: bindings::loff_t,
        whence: ffi::c_int,
    ) -> bindings::loff_t {
        // SAFETY: the VFS passes a valid file for the duration of the call.
        let file = unsafe { File::from_raw(raw) };
        // SAFETY: `private_data` holds a `T::Ptr` until `release`, which
        // cannot run while this call holds the file.
        let state = unsafe { T::Ptr::borrow((*raw).private_data) };
        match T::llseek(state, file, offset, whence as u32) {
            Ok(position) => position,
            Err(err) => bindings::loff_t::from(err.to_errno()),
        }
    }

    /// The state of the file a kiocb reads or writes.
    ///
    /// # Safety
    ///
    /// `iocb` is the kiocb the VFS passed to the current iter callback, on
    /// a file that `open_as::<T>` set up, and `'a` ends before the callback
    /// returns.
    unsafe fn iocb_state<'a>(
        iocb: *mut bindings::kiocb,
    ) -> <T::Ptr as ForeignOwnable>::Borrowed<'a> {
        #[cfg(kchat_kapi7)]
        // SAFETY: the kiocb is valid for `'a` (the callback), and its file's
        // private data is the `T::Ptr` `open_as::<T>` stored, valid until
        // `release`, which cannot run while this call holds the file.
        return unsafe { kernel::fs::Kiocb::<'a, T::Ptr>::from_raw(iocb) }.file();
        #[cfg(not(kchat_kapi7))]
        // SAFETY: as above: the kiocb and its file are valid, and
        // `private_data` holds a `T::Ptr` until `release`.
        return unsafe { T::Ptr::borrow((*(*iocb).ki_filp).private_data) };
    }

    /// # Safety
    ///
    /// Called by the VFS with a valid kiocb for a file that `open_as::<T>`
    /// set up, and the destination iter.
    unsafe extern "C" fn read_iter(
        iocb: *mut bindings::kiocb,
        iter: *mut bindings::iov_iter,
    ) -> isize {
        // SAFETY: the VFS passes a valid destination iter, used only here,
        // for the call.
        let mut dest = match unsafe { IovDest::from_raw(iter) } {
            Ok(dest) => dest,
            Err(err) => return err.to_errno() as isize,
        };
        // SAFETY: the VFS passes a valid kiocb for a file `open_as::<T>`
        // set up, for the call.
        let (state, iocb) = unsafe { (Self::iocb_state(iocb), Kiocb::from_raw(iocb)) };
        match T::read_iter(state, &iocb, &mut dest) {
            Ok(n) => n as isize,
            Err(err) => err.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// As for `read_iter`, with the source iter.
    unsafe extern "C" fn write_iter(
        iocb: *mut bindings::kiocb,
        iter: *mut bindings::iov_iter,
    ) -> isize {
        // SAFETY: the VFS passes a valid source iter, used only here, for
        // the call.
        let mut src = match unsafe { IovSource::from_raw(iter) } {
            Ok(src) => src,
            Err(err) => return err.to_errno() as isize,
        };
        // SAFETY: as in `read_iter`.
        let (state, iocb) = unsafe { (Self::iocb_state(iocb), Kiocb::from_raw(iocb)) };
        match T::write_iter(state, &iocb, &mut src) {
            Ok(n) => n as isize,
            Err(err) => err.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// Called by the VFS on a file that `open_as::<T>` set up; `table` is
    /// null or valid for this call.
    unsafe extern "C" fn poll(
        raw: *mut bindings::file,
        table: *mut bindings::poll_table_struct,
    ) -> bindings::__poll_t {
        // SAFETY: the VFS passes a valid file for the duration of the call.
        let file = unsafe { File::from_raw(raw) };
        // SAFETY: `private_data` holds a `T::Ptr` until `release`, which
        // cannot run while this call holds the file.
        let state = unsafe { T::Ptr::borrow((*raw).private_data) };
        // SAFETY: `table` is this call's poll table.
        let table = unsafe { PollTable::from_raw(table) };
        T::poll(state, file, &table)
    }

    /// # Safety
    ///
    /// Called by the VFS on a file that `open_as::<T>` set up, with the vma
    /// `mmap` is setting up.
    unsafe extern "C" fn mmap(
        raw: *mut bindings::file,
        vma: *mut bindings::vm_area_struct,
    ) -> ffi::c_int {
        // SAFETY: the VFS passes a valid file for the call's duration.
        let file = unsafe { File::from_raw(raw) };
        // SAFETY: `private_data` holds the state `open_as` stored, valid
        // until `release`, which cannot run during this call.
        let state = unsafe { T::Ptr::borrow((*raw).private_data) };
        // SAFETY: the vma is the one this `mmap` call sets up.
        let vma = unsafe { Vma::from_raw(vma) };
        match T::mmap(state, file, vma) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by the VFS on a file that `open_as::<T>` set up.
    unsafe extern "C" fn ioctl(
        raw: *mut bindings::file,
        cmd: ffi::c_uint,
        arg: ffi::c_ulong,
    ) -> ffi::c_long {
        // SAFETY: the VFS passes a valid file for the duration of the call.
        let file = unsafe { File::from_raw(raw) };
        // SAFETY: `private_data` holds a `T::Ptr` until `release`, which
        // cannot run while this call holds the file.
        let state = unsafe { T::Ptr::borrow((*raw).private_data) };
        match T::ioctl(state, file, cmd, arg) {
            Ok(ret) => ret as ffi::c_long,
            Err(err) => err.to_errno() as ffi::c_long,
        }
    }
}

/// This module's `struct module`, for `file_operations::owner`.
pub(super) const fn owner() -> *mut bindings::module {
    // Only the address is taken. It is valid for as long as any file using
    // these operations exists, because the VFS holds a module reference for
    // each of them.
    ptr::addr_of!(bindings::__this_module).cast_mut()
}
