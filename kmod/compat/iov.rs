// SPDX-License-Identifier: GPL-2.0
//! `Kiocb`, `IovDest` and `IovSource`: the `read_iter`/`write_iter` side of
//! a file, shaped like `kernel::fs::Kiocb` and `kernel::iov` of Linux 6.16.
//!
//! kchat uses the iter callbacks rather than `read`/`write` so io_uring can
//! ask for a non-blocking attempt (`IOCB_NOWAIT`) and poll, instead of
//! parking an io-wq worker thread on every pending read.

use super::{file::File, AsBytes, FromBytes};
use kernel::{bindings, ffi, prelude::*};

extern "C" {
    /// `iov_iter_count()`, a static inline in C; defined in `glue.c`.
    fn kchat_iov_iter_count(iter: *const ffi::c_void) -> usize;
}

/// `IOCB_NOWAIT` (= `RWF_NOWAIT`), a `__force` cast bindgen cannot evaluate;
/// `glue.c` checks the value against the kernel's at build time.
const IOCB_NOWAIT: i32 = 0x0000_0008;

/// The I/O control block of one read or write.
pub(crate) struct Kiocb(*mut bindings::kiocb);

impl Kiocb {
    /// # Safety
    ///
    /// `ptr` is the kiocb the VFS passed to the current iter callback.
    pub(crate) unsafe fn from_raw(ptr: *mut bindings::kiocb) -> Self {
        Kiocb(ptr)
    }

    /// The file being read or written.
    pub(crate) fn file(&self) -> &File {
        // SAFETY: a kiocb's file is valid for the duration of the callback.
        unsafe { File::from_raw((*self.0).ki_filp) }
    }

    /// Whether the caller must not even wait for its own memory
    /// (`IOCB_NOWAIT`: io_uring's first attempt, `RWF_NOWAIT`): a write
    /// whose buffer is not in memory says `EAGAIN`, and io_uring retries it
    /// where it may block.
    pub(crate) fn nowait(&self) -> bool {
        // SAFETY: the kiocb is valid for the duration of the callback.
        let flags = unsafe { (*self.0).ki_flags };
        flags & IOCB_NOWAIT != 0
    }

    /// Whether the caller must not be made to wait (`O_NONBLOCK`, or
    /// `IOCB_NOWAIT` from io_uring and `RWF_NOWAIT`).
    pub(crate) fn nonblocking(&self) -> bool {
        // SAFETY: the kiocb is valid for the duration of the callback.
        let flags = unsafe { (*self.0).ki_flags };
        flags & IOCB_NOWAIT != 0 || self.file().nonblocking()
    }
}

/// The buffers a read fills.
pub(crate) struct IovDest(*mut bindings::iov_iter);

impl IovDest {
    /// # Safety
    ///
    /// `ptr` is the destination iter the VFS passed to `read_iter`.
    pub(crate) unsafe fn from_raw(ptr: *mut bindings::iov_iter) -> Self {
        IovDest(ptr)
    }

    /// Bytes of room left.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: the iter is valid for the duration of the callback.
        unsafe { kchat_iov_iter_count(self.0.cast()) }
    }

    pub(super) fn as_raw(&mut self) -> *mut bindings::iov_iter {
        self.0
    }

    /// Takes back the last `bytes` appended (a read that returns less than
    /// it copied: its caller owns what is past the count it returns, but
    /// the iter must say where the read really ended).
    pub(crate) fn revert(&mut self, bytes: usize) {
        // SAFETY: the iter is valid, and at least `bytes` were copied into
        // it by this read.
        unsafe { bindings::iov_iter_revert(self.0, bytes) };
    }

    /// Appends `data`; `EFAULT` (and a partial copy) if user memory is bad.
    pub(crate) fn write_slice(&mut self, data: &[u8]) -> Result {
        // SAFETY: `data` is valid for reads of its length; the iter is valid
        // and advances by what was copied.
        let copied = unsafe { bindings::_copy_to_iter(data.as_ptr().cast(), data.len(), self.0) };
        if copied != data.len() {
            return Err(EFAULT);
        }
        Ok(())
    }

    /// Appends the bytes of `value`.
    pub(crate) fn write<T: AsBytes>(&mut self, value: &T) -> Result {
        // SAFETY: `AsBytes` means every byte of `T` is initialised.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                core::ptr::from_ref(value).cast::<u8>(),
                core::mem::size_of::<T>(),
            )
        };
        self.write_slice(bytes)
    }
}

/// The buffers a write drains.
pub(crate) struct IovSource(*mut bindings::iov_iter);

impl IovSource {
    /// # Safety
    ///
    /// `ptr` is the source iter the VFS passed to `write_iter`.
    pub(crate) unsafe fn from_raw(ptr: *mut bindings::iov_iter) -> Self {
        IovSource(ptr)
    }

    /// Bytes left to take.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: the iter is valid for the duration of the callback.
        unsafe { kchat_iov_iter_count(self.0.cast()) }
    }

    pub(super) fn as_raw(&mut self) -> *mut bindings::iov_iter {
        self.0
    }

    /// Gives back the last `bytes` taken, to be taken again.
    pub(crate) fn revert(&mut self, bytes: usize) {
        // SAFETY: the iter is valid, and at least `bytes` were taken from
        // it by this write.
        unsafe { bindings::iov_iter_revert(self.0, bytes) };
    }

    /// Faults in the next `len` bytes (sleeping for them as long as their
    /// backing takes, killably); returns how many of them could not be.
    pub(crate) fn fault_in(&self, len: usize) -> usize {
        // SAFETY: the iter is valid for the duration of the callback; the
        // call only touches the user memory it describes.
        unsafe { bindings::fault_in_iov_iter_readable(self.0, len) }
    }

    /// Takes the next `size_of::<T>()` bytes as a `T`; `EFAULT` if user
    /// memory is bad or the write is shorter.
    pub(crate) fn read<T: FromBytes>(&mut self) -> Result<T> {
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        let len = core::mem::size_of::<T>();
        // SAFETY: `value` is valid for writes of `len` bytes; the iter is
        // valid and advances by what was copied.
        let copied = unsafe { bindings::_copy_from_iter(value.as_mut_ptr().cast(), len, self.0) };
        if copied != len {
            return Err(EFAULT);
        }
        // SAFETY: all `len` bytes were written, and any bytes are a valid
        // `T` (`FromBytes`).
        Ok(unsafe { value.assume_init() })
    }
}
