// SPDX-License-Identifier: GPL-2.0
//! `Kiocb`, `IovDest` and `IovSource`: the `read_iter`/`write_iter` side of
//! a file, shaped like `kernel::fs::Kiocb` and `kernel::iov` of Linux 6.16.
//!
//! kchat uses the iter callbacks rather than `read`/`write` so io_uring can
//! ask for a non-blocking attempt (`IOCB_NOWAIT`) and poll, instead of
//! parking an io-wq worker thread on every pending read.
//!
//! On 7.x `IovDest` and `IovSource` wrap the kernel's own `IovIterDest` and
//! `IovIterSource`; on 6.12, which has neither, they hold the raw iter.
//! Faulting a source in is not in the upstream type on any line. The
//! upstream `Kiocb` gives the file's private data (which `fops` takes from
//! it on 7.x) but neither the file nor `ki_flags`, so `Kiocb` here reads
//! those on both lines.

use super::{file::File, AsBytes, FromBytes};
#[cfg(not(kchat_kapi7))]
use core::marker::PhantomData;
use kernel::{bindings, prelude::*};

#[cfg(not(kchat_kapi7))]
extern "C" {
    /// `iov_iter_count()`, a static inline in C; defined in `glue.c`.
    fn kchat_iov_iter_count(iter: *const kernel::ffi::c_void) -> usize;
}

extern "C" {
    /// `copy_from_iter()` between `pagefault_disable()` and
    /// `pagefault_enable()`; defined in `glue.c`.
    pub(super) fn kchat_copy_from_iter_nofault(
        to: *mut kernel::ffi::c_void,
        len: usize,
        from: *mut bindings::iov_iter,
    ) -> usize;
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
        self.nowait() || self.file().nonblocking()
    }
}

/// Whether `ptr`, a valid iter, has the direction `dest` says (`ITER_DEST`
/// for a read's, `ITER_SOURCE` for a write's).
///
/// # Safety
///
/// `ptr` points at a valid `struct iov_iter`.
unsafe fn has_direction(ptr: *mut bindings::iov_iter, dest: bool) -> bool {
    let want = if dest {
        bindings::ITER_DEST
    } else {
        bindings::ITER_SOURCE
    };
    // SAFETY: the caller promises the iter is valid; `data_source` is set
    // when the iter is made and not changed while a callback runs.
    unsafe { (*ptr).data_source == (want != 0) }
}

/// The buffers a read fills.
#[cfg(not(kchat_kapi7))]
pub(crate) struct IovDest<'a>(*mut bindings::iov_iter, PhantomData<&'a mut ()>);

/// The buffers a read fills.
#[cfg(kchat_kapi7)]
pub(crate) struct IovDest<'a>(&'a mut kernel::iov::IovIterDest<'a>);

impl<'a> IovDest<'a> {
    /// The destination iter of a read; `EINVAL` for an iter that is not
    /// one (the VFS never passes such).
    ///
    /// # Safety
    ///
    /// `ptr` is the destination iter the VFS passed to `read_iter`, and
    /// `'a` ends before the callback returns.
    pub(crate) unsafe fn from_raw(ptr: *mut bindings::iov_iter) -> Result<Self> {
        // SAFETY: the caller promises the iter is valid.
        if !unsafe { has_direction(ptr, true) } {
            return Err(EINVAL);
        }
        #[cfg(not(kchat_kapi7))]
        return Ok(IovDest(ptr, PhantomData));
        // SAFETY: the iter is valid, and only used through the returned
        // value, for the callback (`'a`); it is a destination, as checked
        // above (so `from_raw`'s assertion holds); the buffers it names may
        // be written while the read runs, as the VFS made it for that.
        #[cfg(kchat_kapi7)]
        return Ok(IovDest(unsafe { kernel::iov::IovIterDest::from_raw(ptr) }));
    }

    /// Bytes of room left.
    pub(crate) fn len(&self) -> usize {
        #[cfg(not(kchat_kapi7))]
        // SAFETY: the iter is valid for the duration of the callback.
        return unsafe { kchat_iov_iter_count(self.0.cast()) };
        #[cfg(kchat_kapi7)]
        return self.0.len();
    }

    pub(super) fn as_raw(&mut self) -> *mut bindings::iov_iter {
        #[cfg(not(kchat_kapi7))]
        return self.0;
        #[cfg(kchat_kapi7)]
        return self.0.as_raw();
    }

    /// Takes back the last `bytes` appended (a read that returns less than
    /// it copied: its caller owns what is past the count it returns, but
    /// the iter must say where the read really ended).
    pub(crate) fn revert(&mut self, bytes: usize) {
        #[cfg(not(kchat_kapi7))]
        // SAFETY: the iter is valid, and at least `bytes` were copied into
        // it by this read, so it goes back no further than its start.
        unsafe {
            bindings::iov_iter_revert(self.as_raw(), bytes)
        };
        #[cfg(kchat_kapi7)]
        // SAFETY: at least `bytes` were copied into the iter by this read,
        // so it goes back no further than its start.
        unsafe {
            self.0.revert(bytes)
        };
    }

    /// Appends `data`; `EFAULT` (and a partial copy) if user memory is bad.
    pub(crate) fn write_slice(&mut self, data: &[u8]) -> Result {
        #[cfg(not(kchat_kapi7))]
        // SAFETY: `data` is valid for reads of its length; the iter is valid
        // and advances by what was copied.
        let copied =
            unsafe { bindings::_copy_to_iter(data.as_ptr().cast(), data.len(), self.as_raw()) };
        #[cfg(kchat_kapi7)]
        let copied = self.0.copy_to_iter(data);
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
#[cfg(not(kchat_kapi7))]
pub(crate) struct IovSource<'a>(*mut bindings::iov_iter, PhantomData<&'a mut ()>);

/// The buffers a write drains.
#[cfg(kchat_kapi7)]
pub(crate) struct IovSource<'a>(&'a mut kernel::iov::IovIterSource<'a>);

impl<'a> IovSource<'a> {
    /// The source iter of a write; `EINVAL` for an iter that is not one
    /// (the VFS never passes such).
    ///
    /// # Safety
    ///
    /// `ptr` is the source iter the VFS passed to `write_iter`, and `'a`
    /// ends before the callback returns.
    pub(crate) unsafe fn from_raw(ptr: *mut bindings::iov_iter) -> Result<Self> {
        // SAFETY: the caller promises the iter is valid.
        if !unsafe { has_direction(ptr, false) } {
            return Err(EINVAL);
        }
        #[cfg(not(kchat_kapi7))]
        return Ok(IovSource(ptr, PhantomData));
        // SAFETY: the iter is valid, and only used through the returned
        // value, for the callback (`'a`); it is a source, as checked above
        // (so `from_raw`'s assertion holds); the buffers it names may be
        // read while the write runs, as the VFS made it for that.
        #[cfg(kchat_kapi7)]
        return Ok(IovSource(unsafe {
            kernel::iov::IovIterSource::from_raw(ptr)
        }));
    }

    /// Bytes left to take.
    pub(crate) fn len(&self) -> usize {
        #[cfg(not(kchat_kapi7))]
        // SAFETY: the iter is valid for the duration of the callback.
        return unsafe { kchat_iov_iter_count(self.0.cast()) };
        #[cfg(kchat_kapi7)]
        return self.0.len();
    }

    pub(super) fn as_raw(&mut self) -> *mut bindings::iov_iter {
        #[cfg(not(kchat_kapi7))]
        return self.0;
        #[cfg(kchat_kapi7)]
        return self.0.as_raw();
    }

    /// Gives back the last `bytes` taken, to be taken again.
    pub(crate) fn revert(&mut self, bytes: usize) {
        #[cfg(not(kchat_kapi7))]
        // SAFETY: the iter is valid, and at least `bytes` were taken from
        // it by this write, so it goes back no further than its start.
        unsafe {
            bindings::iov_iter_revert(self.as_raw(), bytes)
        };
        #[cfg(kchat_kapi7)]
        // SAFETY: at least `bytes` were taken from the iter by this write,
        // so it goes back no further than its start.
        unsafe {
            self.0.revert(bytes)
        };
    }

    /// Passes over the next `bytes` (no further than the end): bytes
    /// already read once, whose values the write keeps.
    pub(crate) fn skip(&mut self, bytes: usize) {
        #[cfg(not(kchat_kapi7))]
        // SAFETY: the iter is valid for the duration of the callback;
        // `iov_iter_advance` stops at its end.
        unsafe {
            bindings::iov_iter_advance(self.as_raw(), bytes)
        };
        #[cfg(kchat_kapi7)]
        self.0.advance(bytes);
    }

    /// Faults in the next `len` bytes (sleeping for them as long as their
    /// backing takes, killably); returns how many of them could not be.
    pub(crate) fn fault_in(&mut self, len: usize) -> usize {
        // SAFETY: the iter is valid for the duration of the callback; the
        // call only touches the user memory it describes.
        unsafe { bindings::fault_in_iov_iter_readable(self.as_raw(), len) }
    }

    /// Takes the next `size_of::<T>()` bytes as a `T` if they are in memory
    /// now, without waiting for a fault (so a caller may hold a lock);
    /// `None`, with nothing taken, if they are not (or the write is
    /// shorter): [`IovSource::read`] then, holding nothing.
    pub(crate) fn read_nofault<T: FromBytes>(&mut self) -> Option<T> {
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        let len = core::mem::size_of::<T>();
        // SAFETY: `value` is valid for writes of `len` bytes; the iter is
        // valid and advances by what was copied; nothing here sleeps.
        let copied =
            unsafe { kchat_copy_from_iter_nofault(value.as_mut_ptr().cast(), len, self.as_raw()) };
        if copied != len {
            self.revert(copied);
            return None;
        }
        // SAFETY: all `len` bytes were written, and any bytes are a valid
        // `T` (`FromBytes`).
        Some(unsafe { value.assume_init() })
    }

    /// Takes the next `size_of::<T>()` bytes as a `T`; `EFAULT` if user
    /// memory is bad or the write is shorter.
    pub(crate) fn read<T: FromBytes>(&mut self) -> Result<T> {
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        let len = core::mem::size_of::<T>();
        #[cfg(not(kchat_kapi7))]
        // SAFETY: `value` is valid for writes of `len` bytes; the iter is
        // valid and advances by what was copied.
        let copied =
            unsafe { bindings::_copy_from_iter(value.as_mut_ptr().cast(), len, self.as_raw()) };
        #[cfg(kchat_kapi7)]
        let copied = {
            // SAFETY: `value` is `len` bytes, valid for writes, and any
            // bytes may be written to a `MaybeUninit`.
            let bytes = unsafe {
                core::slice::from_raw_parts_mut(
                    value.as_mut_ptr().cast::<core::mem::MaybeUninit<u8>>(),
                    len,
                )
            };
            self.0.copy_from_iter_raw(bytes).len()
        };
        if copied != len {
            return Err(EFAULT);
        }
        // SAFETY: all `len` bytes were written, and any bytes are a valid
        // `T` (`FromBytes`).
        Ok(unsafe { value.assume_init() })
    }
}
