// SPDX-License-Identifier: GPL-2.0
//! `Kiocb`, `IovDest` and `IovSource`: the `read_iter`/`write_iter` side of
//! a file, shaped like `kernel::fs::Kiocb` and `kernel::iov` of Linux 6.16.
//!
//! kchat uses the iter callbacks rather than `read`/`write` so io_uring can
//! ask for a non-blocking attempt (`IOCB_NOWAIT`) and poll, instead of
//! parking an io-wq worker thread on every pending read.

use super::file::File;
use kernel::{
    alloc::{
        flags::{__GFP_NOWARN, GFP_KERNEL_ACCOUNT},
        KVVec,
    },
    bindings, ffi,
    prelude::*,
    types::{AsBytes, FromBytes},
};

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
            core::slice::from_raw_parts((value as *const T).cast::<u8>(), core::mem::size_of::<T>())
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

    /// Takes the next `len` bytes into a new vector, without zero-filling it
    /// first; `EFAULT` if user memory is bad.
    ///
    /// The memory is charged to the caller's memory cgroup (a writer's
    /// messages count against its `memory.max`), and large sizes come from
    /// vmalloc rather than high-order pages.
    pub(crate) fn read_vec(&mut self, len: usize) -> Result<KVVec<u8>> {
        // A writer picks the size (up to the room's max_msg): a failure is
        // its ENOMEM, not a warning in the log.
        let mut out = KVVec::<u8>::with_capacity(len, GFP_KERNEL_ACCOUNT | __GFP_NOWARN)?;
        // SAFETY: the vector's buffer is valid for writes of `len` bytes (its
        // capacity); the iter is valid and advances by what was copied.
        let copied = unsafe { bindings::_copy_from_iter(out.as_mut_ptr().cast(), len, self.0) };
        if copied != len {
            return Err(EFAULT);
        }
        // SAFETY: the first `len` bytes were just written.
        unsafe { out.set_len(len) };
        Ok(out)
    }
}
