// SPDX-License-Identifier: GPL-2.0
//! Who is writing and when: the identity and clock kchat stamps on each
//! message. 6.12 has no `Credential` or `Pid` type, so this reads them
//! directly.
//!
//! The ids are the *file's* credentials (`f_cred`, fixed at open), as the
//! kernel's own rule says for any check after open: a setuid program handed
//! an fd cannot be tricked into speaking as itself, and an fd passed on
//! keeps its opener's identity, as its write permission does. The process
//! is the writer's `struct pid`, referenced, not a number: a number means
//! something only in one pid namespace, and a writer in its own namespace
//! would otherwise choose it (`unshare -pf`, `clone3` with `set_tid`).
//! Readers get both translated into their own namespaces, the rule of
//! `SCM_CREDENTIALS` and `SO_PEERCRED`.
//!
//! `task_struct` is never dereferenced from Rust: bindgen gives it 64-byte
//! alignment the allocator does not, so with `CONFIG_RUST_DEBUG_ASSERTIONS`
//! any raw dereference panics (6.12's own `Task::group_leader` does here).

use kernel::bindings;

/// A message's sender: the writing process and the writing file's ids, as
/// kernel objects (the same in every namespace).
///
/// # Invariants
///
/// `pid` is null or a `struct pid` this value holds a reference on.
pub(crate) struct Sender {
    pid: *mut bindings::pid,
    /// Kernel uid and gid (`kuid_t`, `kgid_t`): the initial user
    /// namespace's numbers.
    pub(crate) kuid: u32,
    pub(crate) kgid: u32,
}

// SAFETY: a `struct pid` reference may be used and dropped from any thread
// (`put_pid` is atomic).
unsafe impl Send for Sender {}
// SAFETY: `&Sender` only reads the pointer and calls `pid_vnr`, which is
// safe from any thread.
unsafe impl Sync for Sender {}

impl Sender {
    /// The current process, writing through a file whose effective ids
    /// are `kuid` and `kgid` (`File::effective_ids`).
    pub(crate) fn current(kuid: u32, kgid: u32) -> Self {
        // SAFETY: `get_current` is valid in process context and is not
        // dereferenced here; `get_task_pid` takes a reference on the thread
        // group's pid under RCU itself (or returns null).
        let pid = unsafe {
            bindings::get_task_pid(bindings::get_current(), bindings::pid_type_PIDTYPE_TGID)
        };
        // INVARIANT: `get_task_pid` returned a reference or null.
        Sender { pid, kuid, kgid }
    }

    /// The writer's pid as the current task's pid namespace sees it; 0 if
    /// it is not visible there (an outer or a sibling namespace).
    pub(crate) fn pid_for_current(&self) -> u32 {
        if self.pid.is_null() {
            return 0;
        }
        // SAFETY: `pid` is referenced (type invariant); `pid_vnr` reads it
        // and the current task's namespace.
        unsafe { bindings::pid_vnr(self.pid) as u32 }
    }
}

impl Sender {
    /// The writer's pid as the initial pid namespace sees it (0 if it has
    /// gone): the number every namespace's view derives from.
    pub(crate) fn pid_in_init_ns(&self) -> u32 {
        if self.pid.is_null() {
            return 0;
        }
        // SAFETY: `pid` is referenced (type invariant); `init_pid_ns` is a
        // static that lives as long as the kernel, and `pid_nr_ns` only
        // reads both.
        unsafe {
            bindings::pid_nr_ns(self.pid, core::ptr::addr_of_mut!(bindings::init_pid_ns)) as u32
        }
    }
}

impl Clone for Sender {
    /// The same sender, for another message of the same write: a reference
    /// more on its pid rather than a lookup through the current task.
    fn clone(&self) -> Self {
        // SAFETY: `pid` is null or referenced (type invariant), so it is
        // live while `get_pid` takes another reference (a no-op for null).
        let pid = unsafe { kchat_get_pid(self.pid.cast()) }.cast();
        // INVARIANT: `kchat_get_pid` took a reference on a non-null `pid`.
        Sender {
            pid,
            kuid: self.kuid,
            kgid: self.kgid,
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // SAFETY: drops the reference the type invariant says this value
        // holds; `put_pid` accepts null.
        unsafe { bindings::put_pid(self.pid) };
    }
}

/// Monotonic time in nanoseconds (`CLOCK_MONOTONIC`), for rate limits.
pub(crate) fn monotonic_ns() -> u64 {
    // SAFETY: `ktime_get` has no preconditions in process context.
    unsafe { bindings::ktime_get() as u64 }
}

/// A duration in nanoseconds as jiffies, rounded up, at least one.
pub(crate) fn ns_to_jiffies(ns: u64) -> usize {
    // SAFETY: a pure conversion.
    let jiffies = unsafe { bindings::nsecs_to_jiffies(ns) } as usize;
    jiffies.max(1)
}

/// Wall-clock time in nanoseconds since the epoch (`CLOCK_REALTIME`).
pub(crate) fn realtime_ns() -> u64 {
    let mut ts = bindings::timespec64 {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes.
    unsafe { bindings::ktime_get_real_ts64(&mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

extern "C" {
    /// `fatal_signal_pending(current)`, a static inline; defined in `glue.c`.
    fn kchat_fatal_signal_pending() -> bool;
    /// `get_pid`, a static inline; defined in `glue.c`. Untyped: bindgen's
    /// `struct pid` ends in an array Rust calls FFI-unsafe.
    fn kchat_get_pid(pid: *mut kernel::ffi::c_void) -> *mut kernel::ffi::c_void;
}

#[cfg(not(kchat_kapi7))]
extern "C" {
    /// `signal_pending(current)`, a static inline; defined in `glue.c`
    /// (7.x: `Task::signal_pending`).
    fn kchat_signal_pending() -> bool;
}

/// Whether the current task is being killed: a loop that may repeat
/// stops at once.
pub(crate) fn fatal_signal_pending() -> bool {
    // SAFETY: reads the current task's pending signals; any process context.
    unsafe { kchat_fatal_signal_pending() }
}

/// Whether the current task has a signal to handle: a loop that may repeat
/// returns `ERESTARTSYS` then.
pub(crate) fn signal_pending() -> bool {
    #[cfg(not(kchat_kapi7))]
    // SAFETY: reads the current task's pending signals; any process context.
    return unsafe { kchat_signal_pending() };
    #[cfg(kchat_kapi7)]
    return kernel::current!().signal_pending();
}
