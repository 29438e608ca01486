// SPDX-License-Identifier: GPL-2.0
//! `PollQueue` and `PollTable`: the wait queue poll/select/epoll sleep on.
//!
//! Shaped like `kernel::sync::poll` of Linux 6.13+. Sleeping in `read` and
//! `write` uses the kernel's `CondVar`; this queue only serves pollers.
//!
//! No `wake_up_pollfree` is needed at drop: every queue lives in a room that
//! each open file keeps alive (an `Arc`), select/poll remove their entries
//! before the syscall returns, and epoll removes its entries in `__fput`
//! before `release` drops the file's reference. So when the queue goes, no
//! poller is left on it.

use super::file::File;
use kernel::{bindings, ffi, init::PinInit, prelude::*, sync::LockClassKey, types::Opaque};

extern "C" {
    /// `poll_wait()`, a static inline in C; defined in `glue.c`.
    // Opaque pointers: some of these structs have members bindgen cannot
    // express, which `improper_ctypes` flags.
    fn kchat_poll_wait(filp: *mut ffi::c_void, queue: *mut ffi::c_void, table: *mut ffi::c_void);
    /// `wq_has_sleeper()`: a full barrier, then whether anyone waits.
    fn kchat_wq_has_sleeper(queue: *mut ffi::c_void) -> bool;
}

/// Poll event bits (`EPOLL*` in `<uapi/linux/eventpoll.h>`), which the
/// bindings do not carry.
pub(crate) mod events {
    pub(crate) const IN: u32 = 0x0001;
    pub(crate) const PRI: u32 = 0x0002;
    pub(crate) const OUT: u32 = 0x0004;
    pub(crate) const ERR: u32 = 0x0008;
    pub(crate) const HUP: u32 = 0x0010;
    pub(crate) const RDNORM: u32 = 0x0040;
    pub(crate) const WRNORM: u32 = 0x0100;
}

/// The `poll_table` of one `poll` call.
pub(crate) struct PollTable(*mut bindings::poll_table_struct);

impl PollTable {
    /// # Safety
    ///
    /// `ptr` is null or the table the VFS passed to the current `poll` call.
    pub(crate) unsafe fn from_raw(ptr: *mut bindings::poll_table_struct) -> Self {
        PollTable(ptr)
    }
}

/// A wait queue for pollers.
#[pin_data]
pub(crate) struct PollQueue {
    #[pin]
    head: Opaque<bindings::wait_queue_head>,
}

// SAFETY: wait queues are meant to be used from any thread; their own
// spinlock protects them.
unsafe impl Send for PollQueue {}
// SAFETY: as above.
unsafe impl Sync for PollQueue {}

impl PollQueue {
    /// A new queue; `name` and `key` are for lockdep.
    pub(crate) fn new(name: &'static CStr, key: &'static LockClassKey) -> impl PinInit<Self> {
        // `LockClassKey` is a `repr(transparent)` wrapper of the C key.
        let key = key as *const LockClassKey as *mut bindings::lock_class_key;
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes; the name and the key are
            // `'static`, as lockdep requires.
            head <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_waitqueue_head(slot, name.as_char_ptr(), key)
            }),
        })
    }

    /// Adds the caller's poll table to this queue (`poll_wait`).
    pub(crate) fn register(&self, file: &File, table: &PollTable) {
        // SAFETY: `file` and `table` come from the current `poll` call, and
        // the queue outlives every poller (see the module documentation).
        unsafe { kchat_poll_wait(file.as_raw().cast(), self.head.get().cast(), table.0.cast()) };
    }

    /// Wakes every poller, telling epoll which `events` happened.
    ///
    /// Most writes have no poller; skipping `__wake_up` then saves taking
    /// the queue's spinlock. No wake-up is lost: callers change the state
    /// under the room lock before calling this, and a poller that registers
    /// later checks that state under the same lock.
    pub(crate) fn wake(&self, events: u32) {
        // SAFETY: the queue is initialised; the check only reads its list
        // head after a full barrier.
        if !unsafe { kchat_wq_has_sleeper(self.head.get().cast()) } {
            return;
        }
        // SAFETY: the queue is initialised; `__wake_up` takes its own lock.
        // The key is the event mask, as `wake_up_poll` passes it.
        unsafe {
            bindings::__wake_up(
                self.head.get(),
                bindings::TASK_NORMAL,
                0,
                events as usize as *mut ffi::c_void,
            )
        };
    }
}
