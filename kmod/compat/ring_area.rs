// SPDX-License-Identifier: GPL-2.0
//! `RingArea`: the memory a room's records are laid out in, allocated once
//! at the room's creation, the copies in and out of it, and its mapping
//! into readers: one page of `RingControl` (where the ring stands), then
//! the records.
//!
//! Records are written while readers copy other records out, without one
//! lock over both (user memory may fault and sleep), so the area is only
//! ever touched through raw pointers and the kernel's copy routines, never
//! through Rust references to its bytes. Who may touch which bytes when is
//! the room's protocol (`room.rs`): a writer fills only bytes no retained
//! record holds; a reader that raced with their reuse learns it afterwards
//! and discards what it copied.

use super::iov::{kchat_copy_from_iter_nofault, IovDest, IovSource};
use crate::abi;
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use kernel::{bindings, ffi, prelude::*};

use super::AsBytes;

extern "C" {
    /// `__vmalloc()`, zeroed and charged; defined in `glue.c`.
    fn kchat_ring_alloc(size: ffi::c_ulong) -> *mut ffi::c_void;
    /// `vfree()`; defined in `glue.c`.
    fn kchat_ring_free(area: *mut ffi::c_void);
}

#[cfg(not(kchat_kapi7))]
extern "C" {
    /// Maps `area` (its control page and records) into `vma`, read-only
    /// for good, and keeps a pointer to it for faults; defined in
    /// `glue.c`.
    fn kchat_map_ring(vma: *mut ffi::c_void, area: *const RingArea) -> ffi::c_int;
}

#[cfg(kchat_kapi7)]
extern "C" {
    /// Points `vma` at `area` and at the fault handler that brings a zapped
    /// page of it back (no line's Rust API sets `vm_ops`); defined in
    /// `glue.c`.
    fn kchat_ring_vm_setup(vma: *mut ffi::c_void, area: *const RingArea);
}

/// The mapping an `mmap` call is setting up.
///
/// # Invariants
///
/// The vma is being set up by the current `mmap` callback.
#[cfg(not(kchat_kapi7))]
#[repr(transparent)]
pub(crate) struct Vma(kernel::types::Opaque<bindings::vm_area_struct>);

/// The mapping an `mmap` call is setting up: the kernel's own `VmaNew`.
#[cfg(kchat_kapi7)]
#[repr(transparent)]
pub(crate) struct Vma(kernel::mm::virt::VmaNew);

impl Vma {
    /// # Safety
    ///
    /// `ptr` is the vma the VFS passed to the current `mmap` callback, and
    /// `'a` ends before the callback returns.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut bindings::vm_area_struct) -> &'a Self {
        #[cfg(not(kchat_kapi7))]
        // SAFETY: `Vma` is `repr(transparent)` over the C struct, which the
        // caller promises is valid, and being set up, for `'a`.
        return unsafe { &*ptr.cast::<Vma>() };
        #[cfg(kchat_kapi7)]
        // SAFETY: the caller promises the vma is undergoing its initial
        // setup in `mmap` for `'a`; `Vma` is `repr(transparent)` over
        // `VmaNew`.
        return unsafe {
            &*core::ptr::from_ref(kernel::mm::virt::VmaNew::from_raw(ptr)).cast::<Vma>()
        };
    }
}

const PAGE: usize = bindings::PAGE_SIZE;

/// One control page, then a zeroed, page-aligned records area of `len`
/// bytes.
///
/// # Invariants
///
/// `ptr` is a live vmalloc allocation of `PAGE + len` bytes, owned by this
/// value; its first page holds a `RingControl`.
///
/// `#[repr(C)]`: `glue.c` reads it as `struct kchat_ring_area` when a
/// mapped page faults back in.
#[repr(C)]
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
    /// A control page and a zeroed records area of at least `len` bytes,
    /// rounded up to whole pages; `ENOMEM` if there is no such memory.
    pub(crate) fn new(len: usize) -> Result<Self> {
        let len = len
            .checked_next_multiple_of(PAGE)
            .filter(|len| *len > 0 && u32::try_from(*len).is_ok())
            .ok_or(EINVAL)?;
        // SAFETY: any size may be asked for; null means failure.
        let ptr = unsafe { kchat_ring_alloc((PAGE + len) as ffi::c_ulong) }.cast::<u8>();
        if ptr.is_null() {
            return Err(ENOMEM);
        }
        let control = abi::RingControl {
            magic: abi::RING_MAGIC,
            version: abi::RING_VERSION,
            records_offset: PAGE as u32,
            area_len: len as u64,
            ..abi::RingControl::default()
        };
        // SAFETY: the allocation's first page is valid for writes, aligned,
        // and nobody else knows it yet.
        unsafe { ptr.cast::<abi::RingControl>().write(control) };
        // INVARIANT: a live allocation of `PAGE + len` bytes, owned from
        // here, starting with a `RingControl`.
        Ok(RingArea { ptr, len })
    }

    /// Bytes of records area.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A pointer to `len` bytes at `offset` of the records, if they are
    /// inside the area.
    fn span(&self, offset: usize, len: usize) -> Result<*mut u8> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                // SAFETY: `PAGE + offset` is within the allocation
                // (invariant).
                Ok(unsafe { self.ptr.add(PAGE + offset) })
            }
            _ => Err(EINVAL),
        }
    }

    /// A control page field, as an atomic: mapped readers read it while
    /// the kernel writes it.
    fn control_u64(&self, field: usize) -> &AtomicU64 {
        // SAFETY: `field` is the offset of an aligned `u64` field of the
        // `RingControl` at the start of the allocation (invariant), which
        // lives as long as `self`, and which the kernel only ever accesses
        // atomically after `new`.
        unsafe { AtomicU64::from_ptr(self.ptr.add(field).cast()) }
    }

    fn control_u32(&self, field: usize) -> &AtomicU32 {
        // SAFETY: as for `control_u64`, for an aligned `u32` field.
        unsafe { AtomicU32::from_ptr(self.ptr.add(field).cast()) }
    }

    /// Tells mapped readers where the ring stands. The caller holds the
    /// room lock (one updater at a time) and calls this after evicting and
    /// before reusing any evicted bytes, and after publishing a record.
    pub(crate) fn publish(&self, first_seq: u64, first_pos: u64, next_seq: u64, next_pos: u64) {
        use core::mem::offset_of;
        let seqcount = self.control_u32(offset_of!(abi::RingControl, seqcount));
        seqcount.fetch_add(1, Ordering::Relaxed);
        // The odd count before the fields (smp_wmb); on the way out, the
        // fields before the even count, and both before the bytes a writer
        // puts in evicted space next.
        fence(Ordering::SeqCst);
        self.control_u64(offset_of!(abi::RingControl, first_seq))
            .store(first_seq, Ordering::Relaxed);
        self.control_u64(offset_of!(abi::RingControl, first_pos))
            .store(first_pos, Ordering::Relaxed);
        self.control_u64(offset_of!(abi::RingControl, next_pos))
            .store(next_pos, Ordering::Relaxed);
        self.control_u64(offset_of!(abi::RingControl, next_seq))
            .store(next_seq, Ordering::Release);
        fence(Ordering::SeqCst);
        seqcount.fetch_add(1, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Tells mapped readers that nothing more will come.
    pub(crate) fn mark_deleted(&self) {
        self.control_u32(core::mem::offset_of!(abi::RingControl, flags))
            .fetch_or(abi::RING_DELETED, Ordering::Release);
    }

    /// Maps the control page and the records (or the first pages of them)
    /// into `vma`, read-only (the mapping can never be made writable);
    /// `EINVAL` unless it starts at offset 0 and ends within them, `EPERM`
    /// if it asks to write.
    #[cfg(not(kchat_kapi7))]
    pub(crate) fn map_read_only(&self, vma: &Vma) -> Result {
        // SAFETY: `vma` is being set up by the current `mmap` call, with
        // the mmap lock held; `self` is a vmalloc allocation of `PAGE +
        // len` bytes (invariant) inside a pinned room, which the mapping
        // keeps alive (it holds the file, the file the room), so the
        // pointer the fault handler keeps stays valid as long as the
        // mapping; inserted pages hold their own references.
        let ret = unsafe { kchat_map_ring(vma.0.get().cast(), self) };
        kernel::error::to_result(ret)
    }

    /// Maps the control page and the records (or the first pages of them)
    /// into `vma`, read-only (the mapping can never be made writable);
    /// `EINVAL` unless it starts at offset 0 and ends within them, `EPERM`
    /// if it asks to write. The steps of `glue.c`'s `kchat_map_ring` (the
    /// 6.12 line's), through `VmaNew`.
    #[cfg(kchat_kapi7)]
    pub(crate) fn map_read_only(&self, vma: &Vma) -> Result {
        let vma = &vma.0;
        // SAFETY: the vma is valid and being set up by this `mmap` call,
        // under the mmap lock; `vm_pgoff` was set before the call and is
        // not changed during it. (`VmaNew` has no accessor for it.)
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff };
        let size = vma.end().wrapping_sub(vma.start());
        // From the start, at most all of it: the control page alone says
        // how large the rest is.
        if pgoff != 0 || size > PAGE + self.len {
            return Err(EINVAL);
        }
        // Records are data: never writable, never executable, now or later
        // (mprotect cannot add what the VM_MAY* bits lack).
        if vma.writable() || vma.executable() {
            return Err(EPERM);
        }
        vma.try_clear_maywrite()?;
        vma.try_clear_mayexec()?;
        vma.set_dontexpand();
        vma.set_dontdump();
        // SAFETY: as for 6.12's `kchat_map_ring`: the vma is being set up by
        // this `mmap` call; `self` is a vmalloc allocation of `PAGE + len`
        // bytes (invariant) inside a pinned room, which the mapping keeps
        // alive (it holds the file, the file the room), so the pointer the
        // fault handler keeps stays valid as long as the mapping.
        unsafe { kchat_ring_vm_setup(vma.as_ptr().cast(), self) };
        // `vm_insert_page` would set `VM_MIXEDMAP` itself at the first page.
        let mixed = vma.set_mixedmap();
        for off in (0..size).step_by(PAGE) {
            // SAFETY: `off < size <= PAGE + len`, so the address is inside
            // the vmalloc allocation (invariant).
            let page = unsafe { bindings::vmalloc_to_page(self.ptr.add(off).cast()) };
            let page = core::ptr::NonNull::new(page).ok_or(EFAULT)?;
            // SAFETY: the page belongs to the allocation, which outlives this
            // call (`&self`); the mapping takes its own reference on it.
            let page = unsafe { kernel::page::BorrowedPage::from_raw(page) };
            mixed.vm_insert_page(vma.start() + off, &page)?;
        }
        Ok(())
    }

    /// Writes the bytes of `value` at `offset`.
    pub(crate) fn put<T: AsBytes>(&self, offset: usize, value: &T) -> Result {
        let len = core::mem::size_of::<T>();
        let to = self.span(offset, len)?;
        // SAFETY: `to` is valid for `len` bytes of the area; `value` is
        // `len` initialised bytes (`AsBytes`) that cannot overlap the area,
        // which no Rust reference covers.
        unsafe { core::ptr::copy_nonoverlapping(core::ptr::from_ref(value).cast::<u8>(), to, len) };
        Ok(())
    }

    /// Fills `len` bytes at `offset` from a writer's buffers without ever
    /// waiting for them: page faults are off, so a copy that would fault
    /// stops short. Returns how many bytes were copied (the iter advanced
    /// by as many); the rest of the bytes are then garbage, and unused.
    pub(crate) fn fill_from_nofault(
        &self,
        offset: usize,
        len: usize,
        src: &mut IovSource<'_>,
    ) -> Result<usize> {
        let to = self.span(offset, len)?;
        // SAFETY: `to` is valid for writes of `len` bytes; the iter is valid
        // and advances by what was copied; nothing here sleeps.
        Ok(unsafe { kchat_copy_from_iter_nofault(to.cast(), len, src.as_raw()) })
    }

    /// Copies `len` bytes at `offset` to a reader's buffers; `EFAULT` (and
    /// a partial copy) if user memory is bad.
    pub(crate) fn copy_to(&self, offset: usize, len: usize, dest: &mut IovDest<'_>) -> Result {
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
