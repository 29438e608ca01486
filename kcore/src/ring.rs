// SPDX-License-Identifier: GPL-2.0
//! `Ring`: a room's records, stored once, addressed by sequence number.
//!
//! Each record has a cost in bytes (payload plus overhead); the ring holds at
//! most `slots.len()` records and at most `max_bytes` of cost. Readers keep
//! their own cursor (the next sequence number they want) and ask [`Ring::get`];
//! a cursor that fell behind the oldest record learns how many it lost.
//! Whether to evict or to wait when a record does not fit is the caller's
//! policy.

use core::ops::DerefMut;

/// Something stored in a ring, with what it costs against the byte budget.
pub trait Cost {
    fn cost(&self) -> usize;
}

/// What a reader finds at its cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a, T> {
    /// The record at the cursor.
    Ready(&'a T),
    /// The cursor's records were evicted; resume at `first`, having lost
    /// `lost` records.
    Lost { first: u64, lost: u64 },
    /// Nothing newer yet: the cursor is at the end.
    Pending,
}

/// A stored record and the cost of every record pushed before it, so the
/// cost of any run of records is one subtraction.
pub struct Slot<T> {
    record: T,
    cost_before: u64,
}

/// A ring of records in caller-provided slots.
pub struct Ring<T, S: DerefMut<Target = [Option<Slot<T>>]>> {
    slots: S,
    first: u64,
    next: u64,
    bytes: usize,
    max_bytes: usize,
    /// Cost of every record ever pushed.
    pushed_cost: u64,
}

impl<T: Cost, S: DerefMut<Target = [Option<Slot<T>>]>> Ring<T, S> {
    /// An empty ring over `slots` (all `None`, at least one) holding at most
    /// `max_bytes` of cost.
    pub fn new(slots: S, max_bytes: usize) -> Self {
        Ring {
            slots,
            first: 0,
            next: 0,
            bytes: 0,
            max_bytes,
            pushed_cost: 0,
        }
    }

    /// Sequence number of the oldest retained record (== `next_seq` if empty).
    pub fn first_seq(&self) -> u64 {
        self.first
    }

    /// Sequence number the next pushed record will get.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Number of retained records.
    pub fn len(&self) -> usize {
        (self.next - self.first) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.next == self.first
    }

    /// Cost of the retained records.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Highest cost the ring can ever hold.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Number of slots (the most records the ring can hold).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Whether a record of `cost` fits without evicting anything.
    pub fn fits(&self, cost: usize) -> bool {
        self.len() < self.slots.len() && self.bytes + cost <= self.max_bytes
    }

    /// Whether a record of `cost` would fit once the records before
    /// `keep_from` (which nobody needs any more) were evicted. Constant
    /// time, however many records that is.
    pub fn fits_after_evicting_before(&self, keep_from: u64, cost: usize) -> bool {
        let until = keep_from.clamp(self.first, self.next);
        let (Some(from), Some(to)) = (self.cost_before(self.first), self.cost_before(until)) else {
            return false;
        };
        let freed = to.saturating_sub(from) as usize;
        let len = self.len() - (until - self.first) as usize;
        len < self.slots.len() && self.bytes.saturating_sub(freed) + cost <= self.max_bytes
    }

    /// What the retained records from `seq` on cost (a reader at `seq`
    /// has that much to read); `seq` is clamped to the retained ones.
    /// Constant time.
    pub fn bytes_from(&self, seq: u64) -> usize {
        let from = seq.clamp(self.first, self.next);
        self.cost_before(from)
            .map_or(0, |before| self.pushed_cost.saturating_sub(before) as usize)
    }

    /// Cost of every record pushed before `seq` (retained or next).
    fn cost_before(&self, seq: u64) -> Option<u64> {
        if seq == self.next {
            return Some(self.pushed_cost);
        }
        match self.slots.get(self.index(seq)) {
            Some(Some(slot)) if seq >= self.first && seq < self.next => Some(slot.cost_before),
            _ => None,
        }
    }

    /// Whether a record of `cost` could fit in the empty ring.
    pub fn could_ever_fit(&self, cost: usize) -> bool {
        !self.slots.is_empty() && cost <= self.max_bytes
    }

    /// The slot of `seq`. Never panics: the module must not, whatever the
    /// input (an empty ring has no slot, and every lookup misses).
    fn index(&self, seq: u64) -> usize {
        seq.checked_rem(self.slots.len() as u64).unwrap_or(0) as usize
    }

    /// Appends `record` and returns its sequence number, or gives it back if
    /// it does not fit (see [`Ring::fits`]).
    pub fn push(&mut self, record: T) -> Result<u64, T> {
        let cost = record.cost();
        if !self.fits(cost) {
            return Err(record);
        }
        let seq = self.next;
        let index = self.index(seq);
        let Some(slot) = self.slots.get_mut(index) else {
            return Err(record);
        };
        *slot = Some(Slot {
            record,
            cost_before: self.pushed_cost,
        });
        self.bytes += cost;
        self.pushed_cost += cost as u64;
        self.next += 1;
        Ok(seq)
    }

    /// Removes and returns the oldest record.
    pub fn pop_oldest(&mut self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let index = self.index(self.first);
        let record = self.slots.get_mut(index)?.take()?.record;
        self.bytes -= record.cost();
        self.first += 1;
        Some(record)
    }

    /// What a reader whose cursor is `seq` reads next.
    pub fn get(&self, seq: u64) -> Lookup<'_, T> {
        if seq < self.first {
            return Lookup::Lost {
                first: self.first,
                lost: self.first - seq,
            };
        }
        if seq >= self.next {
            return Lookup::Pending;
        }
        match self.slots.get(self.index(seq)) {
            Some(Some(slot)) => Lookup::Ready(&slot.record),
            _ => Lookup::Pending,
        }
    }

    /// Takes every record out, oldest first, through `each`.
    pub fn drain(&mut self, mut each: impl FnMut(T)) {
        while let Some(record) = self.pop_oldest() {
            each(record);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::{collections::VecDeque, vec::Vec};

    #[derive(Debug, PartialEq, Eq, Clone)]
    struct Rec(u64, usize);
    impl Cost for Rec {
        fn cost(&self) -> usize {
            self.1
        }
    }

    fn ring(slots: usize, max_bytes: usize) -> Ring<Rec, Vec<Option<Slot<Rec>>>> {
        Ring::new((0..slots).map(|_| None).collect(), max_bytes)
    }

    #[test]
    fn push_then_read_in_order() {
        let mut r = ring(4, 100);
        assert_eq!(r.get(0), Lookup::Pending);
        assert_eq!(r.push(Rec(10, 5)), Ok(0));
        assert_eq!(r.push(Rec(11, 5)), Ok(1));
        assert_eq!(r.get(0), Lookup::Ready(&Rec(10, 5)));
        assert_eq!(r.get(1), Lookup::Ready(&Rec(11, 5)));
        assert_eq!(r.get(2), Lookup::Pending);
        assert_eq!(r.bytes(), 10);
    }

    #[test]
    fn full_by_slots_or_bytes_refuses() {
        let mut r = ring(2, 100);
        r.push(Rec(0, 1)).unwrap();
        r.push(Rec(1, 1)).unwrap();
        assert_eq!(r.push(Rec(2, 1)), Err(Rec(2, 1)));
        let mut r = ring(8, 10);
        r.push(Rec(0, 6)).unwrap();
        assert!(!r.fits(5));
        assert_eq!(r.push(Rec(1, 5)), Err(Rec(1, 5)));
        assert!(r.could_ever_fit(10) && !r.could_ever_fit(11));
    }

    #[test]
    fn evicted_records_are_reported_lost() {
        let mut r = ring(2, 100);
        for i in 0..5 {
            while !r.fits(1) {
                r.pop_oldest();
            }
            r.push(Rec(i, 1)).unwrap();
        }
        assert_eq!(r.first_seq(), 3);
        assert_eq!(r.get(0), Lookup::Lost { first: 3, lost: 3 });
        assert_eq!(r.get(3), Lookup::Ready(&Rec(3, 1)));
    }

    #[test]
    fn fits_after_evicting_counts_only_what_may_go() {
        let mut r = ring(8, 30);
        for i in 0..3 {
            r.push(Rec(i, 10)).unwrap();
        }
        assert!(!r.fits(10));
        // Nobody needs record 0: evicting it frees 10, enough for 10.
        assert!(r.fits_after_evicting_before(1, 10));
        assert!(!r.fits_after_evicting_before(1, 11));
        // Records 0 and 1 may go: 20 bytes.
        assert!(r.fits_after_evicting_before(2, 20));
        // A reader still at 0 holds everything back.
        assert!(!r.fits_after_evicting_before(0, 1));
        // No readers at all: everything may go, but never more than the ring.
        assert!(r.fits_after_evicting_before(u64::MAX, 30));
        assert!(!r.fits_after_evicting_before(u64::MAX, 31));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Pop,
    }

    proptest! {
        /// The ring behaves like a bounded queue with sequence numbers, and
        /// its byte accounting never drifts.
        #[test]
        fn matches_a_model(slots in 1usize..8, max_bytes in 1usize..64,
                           ops in proptest::collection::vec(
                               prop_oneof![(0usize..20).prop_map(Op::Push), Just(Op::Pop)], 0..200)) {
            let mut r = ring(slots, max_bytes);
            let mut model: VecDeque<(u64, usize)> = VecDeque::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Push(cost) => {
                        let used: usize = model.iter().map(|(_, c)| c).sum();
                        let fits = model.len() < slots && used + cost <= max_bytes;
                        prop_assert_eq!(r.fits(cost), fits);
                        let pushed = r.push(Rec(next, cost));
                        if fits {
                            prop_assert_eq!(pushed, Ok(next));
                            model.push_back((next, cost));
                            next += 1;
                        } else {
                            prop_assert!(pushed.is_err());
                        }
                    }
                    Op::Pop => {
                        let popped = r.pop_oldest().map(|rec| rec.0);
                        prop_assert_eq!(popped, model.pop_front().map(|(seq, _)| seq));
                    }
                }
                prop_assert_eq!(r.bytes(), model.iter().map(|(_, c)| c).sum::<usize>());
                // Evicting everything before each point, against the plain
                // sum over the model.
                for keep in r.first_seq()..=next + 1 {
                    for cost in [0usize, 1, 5, 19] {
                        let gone = model.iter().filter(|(s, _)| *s < keep);
                        let freed: usize = gone.clone().map(|(_, c)| c).sum();
                        let left = model.len() - gone.count();
                        let used = model.iter().map(|(_, c)| c).sum::<usize>() - freed;
                        let fits = left < slots && used + cost <= max_bytes;
                        prop_assert_eq!(r.fits_after_evicting_before(keep, cost), fits);
                    }
                }
                for from in 0..=next + 1 {
                    let owed: usize = model.iter().filter(|(s, _)| *s >= from).map(|(_, c)| c).sum();
                    prop_assert_eq!(r.bytes_from(from), owed);
                }
                prop_assert_eq!(r.len(), model.len());
                prop_assert_eq!(r.next_seq(), next);
                for seq in 0..next + 2 {
                    let expected = match model.iter().find(|(s, _)| *s == seq) {
                        Some(&(s, c)) => Lookup::Ready(&Rec(s, c)).clone_owned(),
                        None if seq < r.first_seq() => Owned::Lost(r.first_seq(), r.first_seq() - seq),
                        None => Owned::Pending,
                    };
                    prop_assert_eq!(r.get(seq).clone_owned(), expected);
                }
            }
        }
    }

    #[derive(Debug, PartialEq)]
    enum Owned {
        Ready(Rec),
        Lost(u64, u64),
        Pending,
    }

    impl Lookup<'_, Rec> {
        fn clone_owned(&self) -> Owned {
            match self {
                Lookup::Ready(rec) => Owned::Ready((*rec).clone()),
                Lookup::Lost { first, lost } => Owned::Lost(*first, *lost),
                Lookup::Pending => Owned::Pending,
            }
        }
    }
}
