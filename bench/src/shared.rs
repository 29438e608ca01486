//! Memory the harness shares with its writers' process: a value in a
//! memfd that both processes map, so both see the same bytes (the same
//! physical pages). The writers' process is started with `exec`, so it
//! shares nothing else with the harness: no page of the readers is ever
//! copy-on-write. Only for values made of atomics: nothing in one may
//! point into either process.

use anyhow::{bail, Context, Result};
use nix::{
    sys::{
        memfd::{memfd_create, MFdFlags},
        mman::{mmap, munmap, MapFlags, ProtFlags},
        stat::fstat,
    },
    unistd::ftruncate,
};
use std::{
    ffi::c_void,
    num::NonZeroUsize,
    ops::Deref,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    ptr::NonNull,
};

/// Types that may live in memory two processes share.
///
/// # Safety
///
/// Implementors hold nothing but atomics of integers (or arrays of them):
/// every bit pattern is a valid value, a copy in another process is the
/// same value, and they need no `Drop`.
pub unsafe trait CrossProcess: Sync {}

/// A `T` in a memfd mapping, shareable by passing `fd()` to another
/// process, which maps it with `open`.
pub struct Shared<T: CrossProcess> {
    ptr: NonNull<T>,
    fd: OwnedFd,
}

// SAFETY: `T` is `Sync` (a `CrossProcess` bound) and lives in the mapping,
// so moving the handle to another thread moves only a pointer to it.
unsafe impl<T: CrossProcess> Send for Shared<T> {}
// SAFETY: as above; every access goes through `&T`, which `T: Sync` allows
// from any thread.
unsafe impl<T: CrossProcess> Sync for Shared<T> {}

fn length<T>() -> NonZeroUsize {
    NonZeroUsize::new(std::mem::size_of::<T>()).unwrap_or(NonZeroUsize::MIN)
}

impl<T: CrossProcess> Shared<T> {
    /// A new shared `value`.
    pub fn new(value: T) -> Result<Self> {
        let fd = memfd_create("kchat-bench-shared", MFdFlags::MFD_CLOEXEC)
            .context("memfd_create for memory shared with the writers' process")?;
        ftruncate(&fd, length::<T>().get() as i64).context("sizing the shared memfd")?;
        let shared = Self::map(fd)?;
        // SAFETY: the mapping is page-aligned (enough for any atomic), at
        // least `size_of::<T>()` long, writable, and no other process has
        // its fd yet.
        unsafe { shared.ptr.as_ptr().write(value) };
        Ok(shared)
    }

    /// Maps what another process made with `new` and passed as `fd`.
    pub fn open(fd: OwnedFd) -> Result<Self> {
        let size = fstat(&fd).context("fstat of the shared memfd")?.st_size;
        if usize::try_from(size).unwrap_or(0) < length::<T>().get() {
            bail!("the shared memfd holds {size} bytes, too few for what it should hold");
        }
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> Result<Self> {
        // SAFETY: a new shared mapping of the memfd, placed where the
        // kernel likes, overlaps no other mapping; another mapping of the
        // same memfd (the other process's, or a second one here) holds the
        // same `T`, made of atomics (`CrossProcess`), so sharing it is
        // what its type allows.
        let mapped = unsafe {
            mmap(
                None,
                length::<T>(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .context("mapping the memfd shared with the writers' process")?;
        Ok(Shared {
            ptr: mapped.cast::<T>(),
            fd,
        })
    }

    /// The memfd, to pass to the other process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl<T: CrossProcess> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `new` wrote a `T` there (or, through `open`, the process
        // that made it did; any bytes are a valid `T`, `CrossProcess`),
        // and it stays mapped until drop.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: CrossProcess> Drop for Shared<T> {
    fn drop(&mut self) {
        // `T` needs no drop (`CrossProcess`): unmapping is all. A failure
        // leaks one page, nothing worse.
        // SAFETY: the mapping `map` made, of that length; no reference to
        // it outlives `self`.
        let _ = unsafe { munmap(self.ptr.cast::<c_void>(), length::<T>().get()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Counter(AtomicU64);
    // SAFETY: one atomic integer.
    unsafe impl CrossProcess for Counter {}

    #[test]
    fn a_second_mapping_of_the_fd_sees_and_makes_the_same_changes() {
        let first = Shared::new(Counter(AtomicU64::new(1))).expect("shared");
        let second: Shared<Counter> =
            Shared::open(first.fd().try_clone_to_owned().expect("dup")).expect("mapped again");
        assert_eq!(second.0.load(Ordering::Acquire), 1);
        second.0.store(42, Ordering::Release);
        assert_eq!(first.0.load(Ordering::Acquire), 42);
    }

    #[test]
    fn an_fd_too_small_is_refused() {
        let small = memfd_create("small", MFdFlags::MFD_CLOEXEC).expect("memfd");
        let err = Shared::<Counter>::open(small).err().expect("refused");
        assert!(err.to_string().contains("too few"), "{err:#}");
    }
}
