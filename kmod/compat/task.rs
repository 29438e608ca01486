// SPDX-License-Identifier: GPL-2.0
//! Who is writing and when: the identity and clock kchat stamps on each
//! message. 6.12 has no `Credential` type, so this reads them directly.
//!
//! The ids are the *file's* credentials (`f_cred`, fixed at open), as the
//! kernel's own rule says for any check after open: a setuid program handed
//! an fd cannot be tricked into speaking as itself, and an fd passed on
//! keeps its opener's identity, as its write permission does.
//!
//! `task_struct` is never dereferenced from Rust: bindgen gives it 64-byte
//! alignment the allocator does not, so with `CONFIG_RUST_DEBUG_ASSERTIONS`
//! any raw dereference panics (6.12's own `Task::group_leader` does here).

use super::file::File;
use core::mem::offset_of;
use kernel::bindings;

/// A message's sender: the writing process and the ids of the file.
#[derive(Clone, Copy)]
pub(crate) struct Identity {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl Identity {
    pub(crate) fn of_writer(file: &File) -> Self {
        // SAFETY: `get_current` is valid in process context; the exported
        // helper reads the thread-group id under RCU itself.
        let pid = unsafe {
            bindings::__task_pid_nr_ns(
                bindings::get_current(),
                bindings::pid_type_PIDTYPE_TGID,
                core::ptr::null_mut(),
            )
        };
        // SAFETY: the file is valid, and `f_cred` is set at open and held
        // (refcounted) until the file is freed. Fields are read at their
        // offsets with their own alignment.
        let (uid, gid) = unsafe {
            let cred = (*file.as_raw()).f_cred.cast::<u8>();
            let uid = cred
                .add(offset_of!(bindings::cred, euid))
                .cast::<bindings::kuid_t>()
                .read();
            let gid = cred
                .add(offset_of!(bindings::cred, egid))
                .cast::<bindings::kgid_t>()
                .read();
            (uid.val, gid.val)
        };
        Identity {
            pid: pid as u32,
            uid,
            gid,
        }
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
