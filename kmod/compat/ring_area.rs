// SPDX-License-Identifier: GPL-2.0
//! `RingArea`: the memory a room's records are laid out in, allocated once
//! at the room's creation, and the copies in and out of it.
//!
//! Records are written while readers copy other records out, without one
//! lock over both (user memory may fault and sleep), so the area is only
//! ever touched through raw pointers and the kernel's copy routines, never
//! through Rust references to its bytes. Who may touch which bytes when is
//! the room's protocol (`room.rs`): a writer fills only bytes no retained
//! record holds; a reader that raced with their reuse learns it afterwards
//! and discards what it copied.

use super::iov::{IovDest, IovSource};
use kernel::{bindings, ffi, prelude::*, types::AsBytes};

extern "C" {
    /// `vmalloc_user()`; defined in `glue.c`.
    fn kchat_ring_alloc(size: ffi::c_ulong) -> *mut ffi::c_void;
    /// `vfree()`; defined in `glue.c`.
    fn kchat_ring_free(area: *mut ffi::c_void);
}

/// A zeroed, page-aligned area of `len` bytes.
///
/// # Invariants
///
/// `ptr` is a live `vmalloc_user` allocation of at least `len` bytes, owned
/// by this value.
pub(crate) struct RingArea {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the allocation belongs to no thread; every access goes through
// the kernel's copy routines, from whichever thread the room's protocol
// allows.
unsafe impl Send for RingArea {}
// SAFETY: as above; `&RingArea` hands out no references to the bytes.
unsafe impl Sync for RingArea {}

impl RingArea {
    /// A zeroed area of at least `len` bytes, rounded up to whole pages
    /// (the part that a mapping sees); `ENOMEM` if there is no such memory.
    pub(crate) fn new(len: usize) -> Result<Self> {
        let len = len
            .checked_next_multiple_of(bindings::PAGE_SIZE)
            .filter(|len| *len > 0)
            .ok_or(EINVAL)?;
        // SAFETY: any size may be asked for; null means failure.
        let ptr = unsafe { kchat_ring_alloc(len as ffi::c_ulong) }.cast::<u8>();
        if ptr.is_null() {
            return Err(ENOMEM);
        }
        // INVARIANT: a live allocation of `len` bytes, owned from here.
        Ok(RingArea { ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A pointer to `len` bytes at `offset`, if they are inside the area.
    fn span(&self, offset: usize, len: usize) -> Result<*mut u8> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                // SAFETY: `offset` is within the allocation (invariant).
                Ok(unsafe { self.ptr.add(offset) })
            }
            _ => Err(EINVAL),
        }
    }

    /// Writes the bytes of `value` at `offset`.
    pub(crate) fn put<T: AsBytes>(&self, offset: usize, value: &T) -> Result {
        let len = core::mem::size_of::<T>();
        let to = self.span(offset, len)?;
        // SAFETY: `to` is valid for `len` bytes of the area; `value` is
        // `len` initialised bytes (`AsBytes`) that cannot overlap the area,
        // which no Rust reference covers.
        unsafe { core::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), to, len) };
        Ok(())
    }

    /// Fills `len` bytes at `offset` from a writer's buffers; `EFAULT` if
    /// user memory is bad (the bytes are then garbage, and unused).
    pub(crate) fn fill_from(&self, offset: usize, len: usize, src: &mut IovSource) -> Result {
        let to = self.span(offset, len)?;
        // SAFETY: `to` is valid for writes of `len` bytes; the iter is valid
        // and advances by what was copied.
        let copied = unsafe { bindings::_copy_from_iter(to.cast(), len, src.as_raw()) };
        if copied != len {
            return Err(EFAULT);
        }
        Ok(())
    }

    /// Copies `len` bytes at `offset` to a reader's buffers; `EFAULT` (and
    /// a partial copy) if user memory is bad.
    pub(crate) fn copy_to(&self, offset: usize, len: usize, dest: &mut IovDest) -> Result {
        let from = self.span(offset, len)?;
        // SAFETY: `from` is valid for reads of `len` bytes; the iter is
        // valid and advances by what was copied.
        let copied = unsafe { bindings::_copy_to_iter(from.cast(), len, dest.as_raw()) };
        if copied != len {
            return Err(EFAULT);
        }
        Ok(())
    }
}

impl Drop for RingArea {
    fn drop(&mut self) {
        // SAFETY: the allocation is owned by this value (invariant) and no
        // longer used by anyone.
        unsafe { kchat_ring_free(self.ptr.cast()) };
    }
}
