// SPDX-License-Identifier: GPL-2.0
//! `Room`'s rate limits: each writer's budget (by uid, charged to the user
//! behind it, or by file), admitted, refunded and waited for.

use super::{wake::Wakes, Room, RoomInner, Stats};
use crate::{
    compat::{
        errno::eidrm,
        poll::events,
        task::{monotonic_ns, ns_to_jiffies},
    },
    rate::Limiter,
};
use core::sync::atomic::Ordering;
use kernel::{
    alloc::flags::GFP_KERNEL_ACCOUNT,
    prelude::*,
    rbtree::RBTree,
    sync::{
        lock::{mutex::MutexBackend, Guard},
        CondVarTimeoutResult,
    },
};

/// Most distinct senders a room tracks budgets for; beyond, idle ones are
/// forgotten, and if none is idle the newcomers share one budget.
const MAX_SENDERS: usize = 1024;

/// The shared budget's key; real keys are uids (below 2^32) or file ids.
const OVERFLOW_SENDER: u64 = u64::MAX;

/// Who shares a rate budget.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Uid,
    File,
}

/// A room's rate limit; rates of 0 are unlimited.
#[derive(Clone, Copy)]
pub(crate) struct LimitConfig {
    pub(crate) scope: Scope,
    pub(crate) msgs_per_sec: u32,
    pub(crate) msg_burst: u32,
    pub(crate) bytes_per_sec: u32,
    pub(crate) byte_burst: u32,
}

impl LimitConfig {
    pub(crate) const UNLIMITED: LimitConfig = LimitConfig {
        scope: Scope::Uid,
        msgs_per_sec: 0,
        msg_burst: 0,
        bytes_per_sec: 0,
        byte_burst: 0,
    };

    fn is_unlimited(&self) -> bool {
        self.msgs_per_sec == 0 && self.bytes_per_sec == 0
    }

    fn fresh(&self, now_ns: u64) -> Limiter {
        Limiter::new(
            u64::from(self.msgs_per_sec),
            u64::from(self.msg_burst),
            u64::from(self.bytes_per_sec),
            u64::from(self.byte_burst),
            now_ns,
        )
    }
}

impl RoomInner {
    /// Takes a message of `len` bytes from its writer's budget (by uid or by
    /// file, as the limit's scope says): `Ok(key)` names the budget charged
    /// (`None` when unlimited), `Err(ns)` how long to wait first.
    fn admit(
        &mut self,
        uid: u32,
        file_id: u64,
        now_ns: u64,
        len: u64,
    ) -> Result<core::result::Result<Option<u64>, u64>> {
        if self.limit.is_unlimited() {
            return Ok(Ok(None));
        }
        let mut key = match self.limit.scope {
            Scope::Uid => u64::from(uid),
            Scope::File => file_id,
        };
        if self.senders.get(&key).is_none() {
            if self.sender_count >= MAX_SENDERS {
                self.forget_idle_senders(now_ns);
            }
            if self.sender_count >= MAX_SENDERS {
                key = OVERFLOW_SENDER;
            }
            if self.senders.get(&key).is_none() {
                let fresh = self.limit.fresh(now_ns);
                // Charged to the writer's memory cgroup, as its messages are.
                self.senders
                    .try_create_and_insert(key, fresh, GFP_KERNEL_ACCOUNT)?;
                self.sender_count += 1;
            }
        }
        let limiter = self.senders.get_mut(&key).ok_or(EINVAL)?;
        Ok(limiter.admit(now_ns, len).map(|()| Some(key)))
    }

    /// How long until `admit` would take a message of `len` bytes from
    /// this writer's budget (0: now), taking nothing: what a poller asks.
    pub(crate) fn budget_wait(&self, uid: u32, file_id: u64, now_ns: u64, len: u64) -> u64 {
        if self.limit.is_unlimited() {
            return 0;
        }
        let key = match self.limit.scope {
            Scope::Uid => u64::from(uid),
            Scope::File => file_id,
        };
        let limiter = match self.senders.get(&key) {
            Some(limiter) => limiter,
            // A new sender gets a full budget, unless it would share the
            // overflow one.
            None if self.sender_count < MAX_SENDERS => return 0,
            None => match self.senders.get(&OVERFLOW_SENDER) {
                Some(limiter) => limiter,
                None => return 0,
            },
        };
        limiter.wait_ns(now_ns, len)
    }

    /// Gives back what `admit` charged for a message that was not sent.
    pub(super) fn refund(&mut self, key: Option<u64>, len: u64) {
        if let Some(limiter) = key.and_then(|key| self.senders.get_mut(&key)) {
            limiter.refund(len);
        }
    }

    /// Drops budgets that have refilled: such a sender is no different from
    /// a new one.
    fn forget_idle_senders(&mut self, now_ns: u64) {
        let mut idle = [0u64; 64];
        let mut found = 0;
        for (key, limiter) in self.senders.iter() {
            if found == idle.len() {
                break;
            }
            if limiter.is_idle(now_ns) {
                idle[found] = *key;
                found += 1;
            }
        }
        for key in &idle[..found] {
            if self.senders.remove(key).is_some() {
                self.sender_count -= 1;
            }
        }
    }

    /// Forgets one sender's budget (a per-file budget at close).
    pub(crate) fn forget_sender(&mut self, key: u64) {
        if self.senders.remove(&key).is_some() {
            self.sender_count -= 1;
        }
    }
}

impl Room {
    /// Takes a message of `len` bytes from its writer's budget, sleeping
    /// (or `EAGAIN`) while it is spent; returns the budget charged.
    pub(super) fn wait_for_budget(
        &self,
        inner: &mut Guard<'_, RoomInner, MutexBackend>,
        kuid: u32,
        file_id: u64,
        len: usize,
        nonblock: bool,
        wakes: &mut Wakes,
    ) -> Result<Option<u64>> {
        let mut throttled = false;
        loop {
            if inner.deleted {
                return Err(eidrm());
            }
            let wait_ns = match inner.admit(kuid, file_id, monotonic_ns(), len as u64)? {
                Ok(charged) => return Ok(charged),
                Err(wait_ns) => wait_ns,
            };
            if !throttled {
                throttled = true;
                Stats::add(&self.stats.throttled, 1);
            }
            if nonblock {
                return Err(EAGAIN);
            }
            // What this call wrote must reach its readers before it sleeps.
            wakes.flush(self);
            inner.sleeping_writers += 1;
            let woke = self
                .writable
                .wait_interruptible_timeout(inner, ns_to_jiffies(wait_ns));
            inner.sleeping_writers -= 1;
            if matches!(woke, CondVarTimeoutResult::Signal { .. }) {
                return Err(ERESTARTSYS);
            }
        }
    }

    /// Replaces the rate limit; every sender starts with a full budget.
    pub(crate) fn set_limit(&self, limit: LimitConfig) {
        let mut inner = self.inner.lock();
        inner.limit = limit;
        self.limited.store(!limit.is_unlimited(), Ordering::Relaxed);
        inner.senders = RBTree::new();
        inner.sender_count = 0;
        let asleep = inner.asleep();
        drop(inner);
        self.changed(events::OUT | events::WRNORM, asleep);
    }
}
