// SPDX-License-Identifier: GPL-2.0
//! `PollQueue` and `PollTable`: the wait queue poll/select/epoll sleep on.
//!
//! Shaped like `kernel::sync::poll` of Linux 6.13+. Sleeping in `read` and
//! `write` uses the kernel's `CondVar`; this queue only serves pollers.
//!
//! Some readiness comes back by itself, with time (a rate budget refills,
//! a `block` room's bound on laggards runs out) and no event marks it: a
//! sleeping writer sets itself a timeout, but a poller cannot. So the queue
//! has a timer that wakes its pollers at the earliest time a `poll` asked
//! for: on 7.x the kernel's Rust `HrTimer` (soft, so its callback runs in
//! softirq context as a `timer_list`'s does); on 6.12, which has no Rust
//! timer, a `timer_list`.
//!
//! Not the upstream `PollTable`/`PollCondVar` (7.x): `PollTable` registers
//! only a `PollCondVar` and cannot say which events the poller asked for,
//! and a `PollCondVar`'s queue is private to the kernel crate, so it can
//! only be woken without an event mask (epoll then wakes every waiter
//! whatever it waits for) and never skipped when nobody waits; its drop
//! also waits for an RCU grace period, which a room does not need (below).
//!
//! No `wake_up_pollfree` is needed at drop: every queue lives in a room that
//! each open file keeps alive (an `Arc`), select/poll remove their entries
//! before the syscall returns, and epoll removes its entries in `__fput`
//! before `release` drops the file's reference. So when the queue goes, no
//! poller is left on it.

use super::file::File;
#[cfg(not(kchat_kapi7))]
use super::task::ns_to_jiffies;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::{bindings, ffi, prelude::*, sync::LockClassKey, types::Opaque};

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

    /// The events the poller asked for (`poll_requested_events`): all of
    /// them when the VFS passed no table.
    pub(crate) fn requested(&self) -> u32 {
        extern "C" {
            /// `poll_requested_events()`, a static inline; in `glue.c`.
            fn kchat_poll_requested(table: *const ffi::c_void) -> u32;
        }
        // SAFETY: the table is null or valid for the current `poll` call,
        // and the function only reads it.
        unsafe { kchat_poll_requested(self.0.cast()) }
    }
}

/// A wait queue for pollers, with a timer for readiness that time brings.
#[cfg(not(kchat_kapi7))]
#[pin_data(PinnedDrop)]
pub(crate) struct PollQueue {
    #[pin]
    head: Opaque<bindings::wait_queue_head>,
    /// Fires `wake(later)` at the earliest time `wake_after` asked for.
    #[pin]
    timer: Opaque<bindings::timer_list>,
    /// The events the timer reports, gathered from every `wake_after`.
    later: AtomicU32,
}

/// A wait queue for pollers, with a timer for readiness that time brings.
///
/// # Invariants
///
/// `deadline` is `NO_DEADLINE`, or no earlier than the expiry the timer
/// was last started with, which is then pending or running.
#[cfg(kchat_kapi7)]
#[pin_data(PinnedDrop)]
pub(crate) struct PollQueue {
    #[pin]
    head: Opaque<bindings::wait_queue_head>,
    /// Fires `wake(later)` at the earliest time `wake_after` asked for.
    #[pin]
    timer: HrTimer<PollQueue>,
    /// What the deadlines below count from.
    epoch: Instant<Monotonic>,
    /// The earliest time asked for since the timer last fired, in
    /// nanoseconds after `epoch`; `NO_DEADLINE` when none is.
    deadline: AtomicI64,
    /// The events the timer reports, gathered from every `wake_after`.
    later: AtomicU32,
}

#[cfg(not(kchat_kapi7))]
#[pinned_drop]
impl PinnedDrop for PollQueue {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: the timer was initialised in `new`. Nothing arms it any
        // more (arming needs a reference, and this is the last), and its
        // callback does not re-arm it, so after this it neither runs nor is
        // queued, and the queue it points into may go.
        unsafe { bindings::timer_delete_sync(self.timer.get()) };
    }
}

#[cfg(kchat_kapi7)]
#[pinned_drop]
impl PinnedDrop for PollQueue {
    fn drop(self: Pin<&mut Self>) {
        let this: *const PollQueue = &*self;
        // SAFETY: `this` points at a live `PollQueue`, whose timer `new`
        // initialised. Nothing starts it any more (starting needs a
        // reference, and this is the last), and its callback does not
        // restart it, so after `hrtimer_cancel` it neither runs nor is
        // queued, and the queue it points into may go: this is what the
        // handles `wake_after` forgets would have done at their drop.
        unsafe {
            bindings::hrtimer_cancel(
                <PollQueue as HasHrTimer<PollQueue>>::c_timer_ptr(this).cast_mut(),
            )
        };
    }
}

// SAFETY: wait queues are meant to be used from any thread; their own
// spinlock protects them.
unsafe impl Send for PollQueue {}
// SAFETY: as above.
unsafe impl Sync for PollQueue {}

// `init_timer_key` was renamed `timer_init_key` in 6.16 (same arguments);
// 7.x uses an `HrTimer` instead (see the module documentation).
#[cfg(not(kchat_kapi7))]
use bindings::init_timer_key;

#[cfg(kchat_kapi7)]
use core::sync::atomic::AtomicI64;
#[cfg(kchat_kapi7)]
use kernel::time::{
    hrtimer::{
        AbsoluteSoftMode, HasHrTimer, HrTimer, HrTimerCallback, HrTimerCallbackContext,
        HrTimerRestart, RawHrTimerCallback, UnsafeHrTimerPointer,
    },
    Delta, Instant, Monotonic,
};

/// `deadline` when the timer is not asked for.
#[cfg(kchat_kapi7)]
const NO_DEADLINE: i64 = i64::MAX;

/// The longest delay `wake_after` arms the timer for (about 146 years):
/// `epoch` plus any deadline stays within `ktime_t`.
#[cfg(kchat_kapi7)]
const MAX_DELAY_NS: u64 = 1 << 62;

/// What `static_lock_class!()` gives: a pinned reference from 7.x on.
#[cfg(not(kchat_kapi7))]
pub(crate) type StaticLockKey = &'static LockClassKey;
/// What `static_lock_class!()` gives: a pinned reference from 7.x on.
#[cfg(kchat_kapi7)]
pub(crate) type StaticLockKey = Pin<&'static LockClassKey>;

/// The C key inside: `LockClassKey` is a `repr(transparent)` wrapper of it.
fn raw_key(key: StaticLockKey) -> *mut bindings::lock_class_key {
    #[cfg(kchat_kapi7)]
    let key = key.get_ref();
    core::ptr::from_ref(key).cast_mut().cast()
}

#[cfg(not(kchat_kapi7))]
impl PollQueue {
    /// A new queue; the names and keys are for lockdep (the queue's lock,
    /// and its timer, which `timer_delete_sync` tracks).
    pub(crate) fn new(
        name: &'static CStr,
        key: StaticLockKey,
        timer_name: &'static CStr,
        timer_key: StaticLockKey,
    ) -> impl PinInit<Self> {
        let key = raw_key(key);
        let timer_key = raw_key(timer_key);
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes; the name and the key are
            // `'static`, as lockdep requires.
            head <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_waitqueue_head(slot, name.as_char_ptr(), key)
            }),
            // SAFETY: as above; `timer_setup()` with no flags. The callback
            // finds the queue from the timer it is given, which only ever
            // is this queue's (see `wake_later`).
            timer <- Opaque::ffi_init(|slot| unsafe {
                init_timer_key(
                    slot,
                    Some(Self::wake_later),
                    0,
                    timer_name.as_char_ptr(),
                    timer_key,
                )
            }),
            later: AtomicU32::new(0),
        })
    }

    /// Wakes the pollers with `events` in `delay_ns` (or at an earlier
    /// time another call asked for): readiness that comes with time.
    /// A poller woken early polls again and asks again.
    pub(crate) fn wake_after(&self, delay_ns: u64, events: u32) {
        self.later.fetch_or(events, Ordering::Relaxed);
        // SAFETY: reading the jiffies counter, which the timer tick updates;
        // a torn or stale read only makes the wake-up a tick early or late.
        let now = unsafe { core::ptr::read_volatile(&raw const bindings::jiffies) };
        let at = now.wrapping_add(ns_to_jiffies(delay_ns) as ffi::c_ulong);
        // SAFETY: the timer is initialised and lives as long as `self`;
        // `timer_reduce` arms it, or brings an armed one forward, never later.
        unsafe { bindings::timer_reduce(self.timer.get(), at) };
    }

    /// The timer's callback (softirq context): wakes the pollers with what
    /// `wake_after` gathered.
    ///
    /// # Safety
    ///
    /// `timer` is the `timer` field of a live `PollQueue`: only the kernel
    /// calls this, for the timer `new` set it on.
    unsafe extern "C" fn wake_later(timer: *mut bindings::timer_list) {
        let offset = core::mem::offset_of!(PollQueue, timer);
        // SAFETY: per the contract above (drop stops the timer before the
        // queue goes); `Opaque` is `repr(transparent)`, so the field's
        // address is the timer's.
        let queue = unsafe { &*timer.cast::<u8>().sub(offset).cast::<PollQueue>() };
        let events = queue.later.swap(0, Ordering::Relaxed);
        queue.wake(events);
    }
}

#[cfg(kchat_kapi7)]
kernel::impl_has_hr_timer! {
    impl HasHrTimer<Self> for PollQueue {
        mode: AbsoluteSoftMode<Monotonic>,
        field: self.timer
    }
}

#[cfg(kchat_kapi7)]
impl HrTimerCallback for PollQueue {
    type Pointer<'a> = Pin<&'a PollQueue>;

    /// The timer's callback (softirq context): wakes the pollers with what
    /// `wake_after` gathered.
    fn run(
        this: <Self::Pointer<'_> as RawHrTimerCallback>::CallbackTarget<'_>,
        _ctx: HrTimerCallbackContext<'_, Self>,
    ) -> HrTimerRestart {
        // First forget the deadline, then take the events: a `wake_after`
        // that still saw this deadline (and so started no timer) added its
        // events before, and they go now; one that comes later starts the
        // timer again.
        this.deadline.store(NO_DEADLINE, Ordering::SeqCst);
        let events = this.later.swap(0, Ordering::SeqCst);
        this.wake(events);
        HrTimerRestart::NoRestart
    }
}

#[cfg(kchat_kapi7)]
impl PollQueue {
    /// A new queue; the name and key are for lockdep (the queue's lock).
    /// The timer's are unused: an `hrtimer` has no lockdep class of its
    /// own.
    pub(crate) fn new(
        name: &'static CStr,
        key: StaticLockKey,
        _timer_name: &'static CStr,
        _timer_key: StaticLockKey,
    ) -> impl PinInit<Self> {
        let key = raw_key(key);
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes; the name and the key are
            // `'static`, as lockdep requires.
            head <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_waitqueue_head(slot, name.as_char_ptr(), key)
            }),
            timer <- HrTimer::new(),
            epoch: Instant::now(),
            deadline: AtomicI64::new(NO_DEADLINE),
            later: AtomicU32::new(0),
        })
    }

    /// Wakes the pollers with `events` in `delay_ns` (or at an earlier
    /// time another call asked for): readiness that comes with time.
    /// A poller woken early polls again and asks again.
    ///
    /// The timer is started only to bring the deadline forward, never
    /// later (what `timer_reduce` does for a `timer_list`): whoever lowers
    /// `deadline` starts the timer at it, then starts it again at the new
    /// `deadline` if another call lowered it meanwhile, so the last start
    /// is never later than the earliest time asked for.
    pub(crate) fn wake_after(&self, delay_ns: u64, events: u32) {
        self.later.fetch_or(events, Ordering::SeqCst);
        let since_epoch = (Instant::<Monotonic>::now() - self.epoch).as_nanos();
        // Both are at most 2^62: no overflow.
        let mut at = since_epoch + delay_ns.min(MAX_DELAY_NS) as i64;
        if self.deadline.fetch_min(at, Ordering::SeqCst) <= at {
            // A timer at least as early is pending, or being started by
            // the call that set that deadline, or running and taking these
            // events with it (it takes them after it forgets the deadline).
            return;
        }
        // SAFETY: every `PollQueue` is pinned: `new` only gives an
        // initialiser in place, and nothing moves it out.
        let this = unsafe { Pin::new_unchecked(self) };
        loop {
            // SAFETY: the queue outlives the timer: its drop cancels it, as
            // the handle would, which is why the handle may be forgotten.
            let handle =
                unsafe { UnsafeHrTimerPointer::start(this, self.epoch + Delta::from_nanos(at)) };
            core::mem::forget(handle);
            let deadline = self.deadline.load(Ordering::SeqCst);
            if deadline >= at {
                return;
            }
            at = deadline;
        }
    }
}

impl PollQueue {
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
