// SPDX-License-Identifier: GPL-2.0
//! `Limiter`: token buckets for messages and bytes per second, with a burst.
//!
//! Integer arithmetic on nanosecond timestamps only. A request larger than
//! the burst is admitted when the bucket is full and leaves a debt, so a
//! sender's long-run rate never exceeds the limit whatever its sizes.

/// Nanoseconds per second.
const NS: u64 = 1_000_000_000;

/// Largest rate or burst accepted; keeps every product below `u64::MAX`.
pub const MAX_RATE: u64 = 1 << 32;

/// One token bucket. A `rate` of 0 means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    /// Tokens available; negative after an oversized request (debt).
    tokens: i64,
    /// When `tokens` was last brought up to date.
    stamp_ns: u64,
}

impl Bucket {
    /// A full bucket refilling `rate` tokens per second up to `burst`
    /// (`burst` 0 means one second's worth). Values above [`MAX_RATE`] are
    /// clamped; callers validate them first.
    pub const fn new(rate: u64, burst: u64, now_ns: u64) -> Self {
        let rate = if rate > MAX_RATE { MAX_RATE } else { rate };
        let burst = if burst == 0 {
            rate
        } else if burst > MAX_RATE {
            MAX_RATE
        } else {
            burst
        };
        Bucket {
            rate,
            burst,
            tokens: burst as i64,
            stamp_ns: now_ns,
        }
    }

    pub const fn unlimited() -> Self {
        Bucket {
            rate: 0,
            burst: 0,
            tokens: 0,
            stamp_ns: 0,
        }
    }

    pub const fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.stamp_ns);
        let missing = (self.burst as i64 - self.tokens).max(0) as u64;
        // Time to refill completely; beyond it the bucket is simply full.
        let fill_ns = missing.saturating_mul(NS).div_ceil(self.rate);
        if elapsed >= fill_ns {
            self.tokens = self.burst as i64;
            self.stamp_ns = now_ns;
            return;
        }
        // elapsed < fill_ns <= 2^32 * 2^30 / rate, so the product fits.
        let added = elapsed * self.rate / NS;
        self.tokens += added as i64;
        // Advance only by the time those whole tokens took, keeping the rest.
        self.stamp_ns += added * NS / self.rate;
    }

    /// Nanoseconds after `now_ns` until `n` tokens could be taken (0: now).
    /// Call right after `refill(now_ns)`.
    fn wait_ns(&self, now_ns: u64, n: u64) -> u64 {
        let needed = n.min(self.burst) as i64;
        if self.tokens >= needed {
            return 0;
        }
        let short = (needed - self.tokens) as u64;
        // `tokens` is exact as of `stamp_ns`; the time since then already
        // counts toward the next token.
        let ready_at = self.stamp_ns + short.saturating_mul(NS).div_ceil(self.rate);
        ready_at.saturating_sub(now_ns).max(1)
    }

    /// Whether the bucket would be full at `now_ns` (an idle sender, no
    /// different from a new one).
    fn full_at(&self, now_ns: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        let mut probe = *self;
        probe.refill(now_ns);
        probe.tokens >= probe.burst as i64
    }

    fn take(&mut self, n: u64) {
        self.tokens -= n.min(MAX_RATE) as i64;
    }

    /// Gives back what `take(n)` took, never beyond the burst.
    fn give_back(&mut self, n: u64) {
        self.tokens = (self.tokens + n.min(MAX_RATE) as i64).min(self.burst as i64);
    }
}

/// A writer's message and byte buckets, taken together or not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limiter {
    pub msgs: Bucket,
    pub bytes: Bucket,
}

impl Limiter {
    pub const fn unlimited() -> Self {
        Limiter {
            msgs: Bucket::unlimited(),
            bytes: Bucket::unlimited(),
        }
    }

    pub const fn is_unlimited(&self) -> bool {
        self.msgs.is_unlimited() && self.bytes.is_unlimited()
    }

    /// Full buckets for the given limits; a rate of 0 is unlimited.
    pub fn new(
        msgs_per_sec: u64,
        msg_burst: u64,
        bytes_per_sec: u64,
        byte_burst: u64,
        now_ns: u64,
    ) -> Self {
        let bucket = |rate, burst| {
            if rate == 0 {
                Bucket::unlimited()
            } else {
                Bucket::new(rate, burst, now_ns)
            }
        };
        Limiter {
            msgs: bucket(msgs_per_sec, msg_burst),
            bytes: bucket(bytes_per_sec, byte_burst),
        }
    }

    /// Whether this sender has been quiet long enough to be forgotten.
    pub fn is_idle(&self, now_ns: u64) -> bool {
        self.msgs.full_at(now_ns) && self.bytes.full_at(now_ns)
    }

    /// Brings both buckets up to `now_ns`; returns how many nanoseconds
    /// a message of `len` bytes must wait (0: none).
    fn refill(&mut self, now_ns: u64, len: u64) -> u64 {
        let mut wait = 0;
        for (bucket, n) in [(&mut self.msgs, 1), (&mut self.bytes, len)] {
            if !bucket.is_unlimited() {
                bucket.refill(now_ns);
                wait = wait.max(bucket.wait_ns(now_ns, n));
            }
        }
        wait
    }

    /// How many nanoseconds after `now_ns` a message of `len` bytes would
    /// be admitted (0: now), without taking anything: what a poller asks.
    pub fn wait_ns(&self, now_ns: u64, len: u64) -> u64 {
        let mut probe = *self;
        probe.refill(now_ns, len)
    }

    /// Admits one message of `len` bytes at `now_ns`, or says how many
    /// nanoseconds to wait before asking again.
    pub fn admit(&mut self, now_ns: u64, len: u64) -> Result<(), u64> {
        let wait = self.refill(now_ns, len);
        if wait > 0 {
            return Err(wait);
        }
        for (bucket, n) in [(&mut self.msgs, 1), (&mut self.bytes, len)] {
            if !bucket.is_unlimited() {
                bucket.take(n);
            }
        }
        Ok(())
    }

    /// Returns what admitting a message of `len` bytes took, for a message
    /// that was then not sent: a writer is throttled only for what it sent.
    pub fn refund(&mut self, len: u64) {
        for (bucket, n) in [(&mut self.msgs, 1), (&mut self.bytes, len)] {
            if !bucket.is_unlimited() {
                bucket.give_back(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn unlimited_admits_everything() {
        let mut l = Limiter::unlimited();
        for i in 0..1000 {
            assert_eq!(l.admit(i, 1 << 20), Ok(()));
        }
    }

    #[test]
    fn burst_then_rate() {
        let mut l = Limiter {
            msgs: Bucket::new(10, 3, 0),
            bytes: Bucket::unlimited(),
        };
        for _ in 0..3 {
            assert_eq!(l.admit(0, 1), Ok(()));
        }
        // Empty: the next token comes 100 ms later.
        assert_eq!(l.admit(0, 1), Err(100 * MS));
        assert_eq!(l.admit(99 * MS, 1), Err(MS));
        assert_eq!(l.admit(100 * MS, 1), Ok(()));
        // A long pause refills up to the burst, no more.
        for _ in 0..3 {
            assert_eq!(l.admit(10_000 * MS, 1), Ok(()));
        }
        assert!(l.admit(10_000 * MS, 1).is_err());
    }

    #[test]
    fn a_refund_restores_the_budget_but_not_beyond_the_burst() {
        let mut l = Limiter::new(10, 2, 100, 150, 0);
        assert_eq!(l.admit(0, 100), Ok(()));
        assert!(l.admit(0, 100).is_err());
        l.refund(100);
        assert_eq!(l.admit(0, 100), Ok(()));
        l.refund(100);
        l.refund(100);
        assert_eq!(l, Limiter::new(10, 2, 100, 150, 0));
    }

    #[test]
    fn idle_means_refilled() {
        let mut l = Limiter::new(10, 2, 0, 0, 0);
        assert!(l.is_idle(0));
        assert_eq!(l.admit(0, 1), Ok(()));
        assert!(!l.is_idle(0));
        assert!(!l.is_idle(99 * MS));
        assert!(l.is_idle(100 * MS));
        assert!(Limiter::new(0, 0, 0, 0, 0).is_unlimited());
    }

    #[test]
    fn both_budgets_must_agree() {
        let mut l = Limiter {
            msgs: Bucket::new(100, 100, 0),
            bytes: Bucket::new(1000, 1000, 0),
        };
        assert_eq!(l.admit(0, 1000), Ok(()));
        // Messages are left but bytes are not; nothing is taken on refusal.
        let before = l;
        assert_eq!(l.admit(0, 10), Err(10 * MS));
        assert_eq!(l, before);
    }

    #[test]
    fn oversized_requests_wait_for_a_full_bucket_and_leave_debt() {
        let mut l = Limiter {
            msgs: Bucket::unlimited(),
            bytes: Bucket::new(100, 50, 0),
        };
        assert_eq!(l.admit(0, 200), Ok(()));
        // 150 tokens of debt plus 50 to be full again: 2 s.
        assert_eq!(l.admit(0, 200), Err(2000 * MS));
        assert_eq!(l.admit(2000 * MS, 200), Ok(()));
    }

    proptest! {
        /// Over any schedule, admitted volume never exceeds burst + rate * t.
        #[test]
        fn never_exceeds_the_rate(rate in 1u64..10_000, burst in 1u64..10_000,
                                  steps in proptest::collection::vec((0u64..50_000_000, 1u64..100), 1..300)) {
            let mut l = Limiter { msgs: Bucket::unlimited(), bytes: Bucket::new(rate, burst, 0) };
            let (mut now, mut admitted) = (0u64, 0u64);
            for (dt, len) in steps {
                now += dt;
                if l.admit(now, len).is_ok() {
                    admitted += len;
                }
                // Oversized requests may overshoot by at most one request.
                let bound = burst + rate * now / NS + 100;
                prop_assert!(admitted <= bound, "{} > {}", admitted, bound);
            }
        }

        /// A refusal's wait is honest: asking again after it succeeds.
        #[test]
        fn waiting_as_told_succeeds(rate in 1u64..1_000_000, burst in 1u64..1_000, len in 1u64..2_000,
                                    pre in 0u64..20) {
            let mut l = Limiter { msgs: Bucket::new(rate, burst, 0), bytes: Bucket::new(rate, burst, 0) };
            let mut now = 0;
            for _ in 0..pre {
                let _ = l.admit(now, len);
            }
            if let Err(wait) = l.admit(now, len) {
                now += wait;
                prop_assert_eq!(l.admit(now, len), Ok(()));
            }
        }

        /// What a poller is told (`wait_ns`) is what `admit` would answer,
        /// and asking takes nothing.
        #[test]
        fn asking_agrees_with_admitting(rate in 1u64..1_000_000, burst in 1u64..1_000,
                                        steps in proptest::collection::vec((0u64..5_000_000, 1u64..2_000), 1..100)) {
            let mut l = Limiter::new(rate, burst, rate, burst, 0);
            let mut now = 0;
            for (dt, len) in steps {
                now += dt;
                let before = l;
                let told = l.wait_ns(now, len);
                prop_assert_eq!(l, before);
                match l.admit(now, len) {
                    Ok(()) => prop_assert_eq!(told, 0),
                    Err(wait) => prop_assert_eq!(told, wait),
                }
            }
        }
    }
}
