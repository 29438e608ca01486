// SPDX-License-Identifier: GPL-2.0
//! `Ring`: where a room's records live, stored once, addressed by sequence
//! number.
//!
//! The records' bytes are laid out one after another in a data area the
//! caller owns (allocated once, at the room's creation: no allocation per
//! message); this file only computes where each record goes and keeps, per
//! record, a slot: its place, its cost, and caller metadata the bytes must
//! not carry (kernel pointers). A record never wraps: one that would cross
//! the end of the area starts again at its beginning, and the bytes it
//! skipped are padding.
//!
//! Each record has a cost (payload plus overhead) against a byte budget
//! (`max_bytes`) and a size in the area (at most its cost); the ring holds
//! at most `slots.len()` records and at most `max_bytes` of cost. An area of
//! [`Ring::area_for`] bytes always has room for whatever the budget admits
//! (the padding lost at the wrap is less than one largest record), so
//! whether a record fits is a question of budget alone.
//!
//! Readers keep their own cursor (the next sequence number they want) and
//! ask [`Ring::get`]; a cursor that fell behind the oldest record learns how
//! many it lost. Whether to evict or to wait when a record does not fit is
//! the caller's policy.

use core::ops::DerefMut;

/// Records start on this boundary, so headers in the area are aligned.
pub const ALIGN: usize = 8;

/// What a reader finds at its cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a, T> {
    /// The record at the cursor.
    Ready(&'a Slot<T>),
    /// The cursor's records were evicted; resume at `first`, having lost
    /// `lost` records.
    Lost { first: u64, lost: u64 },
    /// Nothing newer yet: the cursor is at the end.
    Pending,
}

/// A stored record: where its bytes are, what it cost, the cost of every
/// record pushed before it (so the cost of any run of records is one
/// subtraction), and the caller's metadata.
#[derive(Debug, PartialEq, Eq)]
pub struct Slot<T> {
    meta: T,
    /// Where the record starts, counted from the area's first byte ever
    /// (the offset in the area is this modulo its length).
    pos: u64,
    size: u32,
    cost: u32,
    cost_before: u64,
}

impl<T> Slot<T> {
    pub fn meta(&self) -> &T {
        &self.meta
    }

    /// The record's bytes in the area: `offset..offset + size`.
    pub fn offset(&self, area: usize) -> usize {
        self.pos.checked_rem(area as u64).unwrap_or(0) as usize
    }

    pub fn size(&self) -> usize {
        self.size as usize
    }
}

/// Where a record about to be pushed goes in the area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// First byte of the record.
    pub offset: usize,
    /// Bytes rounded up to [`ALIGN`].
    pub size: usize,
    /// Where padding starts, if the record wraps: the bytes from here to
    /// the end of the area are skipped.
    pub pad_from: Option<usize>,
}

/// The placements of records about to be pushed one after another
/// ([`Ring::places`]).
#[derive(Debug, Clone, Copy)]
pub struct Places {
    head: u64,
    tail: u64,
    area: u64,
}

impl Places {
    /// Where the next record, of `size` bytes, goes: at the head, or at the
    /// area's start if it would cross the end; the head then moves past it.
    /// `None` (and nothing moves) if the bytes there are still retained or
    /// `size` exceeds the area: never for records the budget admits
    /// ([`Ring::fits_many`]) in an area of [`Ring::area_for`] bytes.
    pub fn next(&mut self, size: usize) -> Option<Placement> {
        let size = aligned(size)?;
        let area = self.area;
        if size == 0 || size as u64 > area {
            return None;
        }
        let offset = self.head.checked_rem(area)?;
        let (start, pad_from) = if offset + size as u64 > area {
            (self.head + (area - offset), Some(offset as usize))
        } else {
            (self.head, None)
        };
        if start + size as u64 - self.tail > area {
            return None;
        }
        self.head = start + size as u64;
        Some(Placement {
            offset: (start % area) as usize,
            size,
            pad_from,
        })
    }
}

/// A ring of records in caller-provided slots, over a data area of `area`
/// bytes.
pub struct Ring<T, S: DerefMut<Target = [Option<Slot<T>>]>> {
    slots: S,
    first: u64,
    next: u64,
    bytes: usize,
    max_bytes: usize,
    /// Cost of every record ever pushed.
    pushed_cost: u64,
    area: usize,
    /// Where the next record would start (same count as `Slot::pos`).
    head: u64,
}

/// `n` rounded up to [`ALIGN`], or `None` past `usize`.
pub fn aligned(n: usize) -> Option<usize> {
    Some(n.checked_add(ALIGN - 1)? & !(ALIGN - 1))
}

impl<T, S: DerefMut<Target = [Option<Slot<T>>]>> Ring<T, S> {
    /// The area a ring needs for a budget of `max_bytes` whose largest
    /// record takes `max_size` bytes: one largest record more than the
    /// budget, so the padding at the wrap never makes a record that the
    /// budget admits wait.
    pub fn area_for(max_bytes: usize, max_size: usize) -> Option<usize> {
        aligned(max_bytes.checked_add(aligned(max_size)?)?)
    }

    /// An empty ring over `slots` (all `None`, at least one) holding at most
    /// `max_bytes` of cost, in an area of `area` bytes (see
    /// [`Ring::area_for`]).
    pub fn new(slots: S, max_bytes: usize, area: usize) -> Self {
        Ring {
            slots,
            first: 0,
            next: 0,
            bytes: 0,
            max_bytes,
            pushed_cost: 0,
            area: area & !(ALIGN - 1),
            head: 0,
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

    /// Length of the data area the records are laid out in.
    pub fn area(&self) -> usize {
        self.area
    }

    /// Whether a record of `cost` fits without evicting anything.
    pub fn fits(&self, cost: usize) -> bool {
        self.fits_many(1, cost)
    }

    /// Whether `records` more records, of `cost` together, fit without
    /// evicting anything.
    pub fn fits_many(&self, records: usize, cost: usize) -> bool {
        self.len()
            .checked_add(records)
            .is_some_and(|len| len <= self.slots.len())
            && self
                .bytes
                .checked_add(cost)
                .is_some_and(|bytes| bytes <= self.max_bytes)
    }

    /// Whether a record of `cost` would fit once the records before
    /// `keep_from` (which nobody needs any more) were evicted. Constant
    /// time, however many records that is.
    pub fn fits_after_evicting_before(&self, keep_from: u64, cost: usize) -> bool {
        self.fits_many_after_evicting_before(keep_from, 1, cost)
    }

    /// Whether `records` more records, of `cost` together, would fit once
    /// the records before `keep_from` were evicted. Constant time.
    pub fn fits_many_after_evicting_before(
        &self,
        keep_from: u64,
        records: usize,
        cost: usize,
    ) -> bool {
        let until = keep_from.clamp(self.first, self.next);
        let (Some(from), Some(to)) = (self.cost_before(self.first), self.cost_before(until)) else {
            return false;
        };
        let freed = to.saturating_sub(from) as usize;
        let len = self.len() - (until - self.first) as usize;
        len.checked_add(records)
            .is_some_and(|len| len <= self.slots.len())
            && self
                .bytes
                .saturating_sub(freed)
                .checked_add(cost)
                .is_some_and(|bytes| bytes <= self.max_bytes)
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
        self.could_ever_fit_many(1, cost)
    }

    /// Whether `records` records, of `cost` together, could fit in the
    /// empty ring.
    pub fn could_ever_fit_many(&self, records: usize, cost: usize) -> bool {
        records <= self.slots.len() && !self.slots.is_empty() && cost <= self.max_bytes
    }

    /// The slot of `seq`. Never panics: the module must not, whatever the
    /// input (an empty ring has no slot, and every lookup misses).
    fn index(&self, seq: u64) -> usize {
        seq.checked_rem(self.slots.len() as u64).unwrap_or(0) as usize
    }

    /// Where the next record will start at the earliest (its position may
    /// skip padding): the position `next_seq` goes with.
    pub fn head_pos(&self) -> u64 {
        self.head
    }

    /// Where the oldest retained record starts ([`Ring::head_pos`] when
    /// empty): the position `first_seq` goes with.
    pub fn tail_pos(&self) -> u64 {
        match self.slots.get(self.index(self.first)) {
            Some(Some(slot)) if !self.is_empty() => slot.pos,
            _ => self.head,
        }
    }

    /// Where in the area the next record, of `size` bytes, would go: at the
    /// head, or at the area's start if it would cross the end. `None` if
    /// the bytes there are still retained (never within the budget and
    /// [`Ring::area_for`]) or `size` exceeds the area.
    pub fn place(&self, size: usize) -> Option<Placement> {
        self.places().next(size)
    }

    /// Where records pushed one after another from now on would go, in
    /// turn (see [`Places::next`]): what a writer fills before it pushes
    /// them. Only pushes move the head, so the placements stay true while
    /// nobody else pushes; evictions only free more of the area.
    pub fn places(&self) -> Places {
        Places {
            head: self.head,
            tail: self.tail_pos(),
            area: self.area as u64,
        }
    }

    /// Appends a record of `cost` taking `size` bytes of the area where
    /// [`Ring::place`] says; returns its sequence number, or gives `meta`
    /// back if it does not fit (see [`Ring::fits`]).
    pub fn push(&mut self, meta: T, cost: usize, size: usize) -> Result<u64, T> {
        if !self.fits(cost) {
            return Err(meta);
        }
        let Some(placement) = self.place(size) else {
            return Err(meta);
        };
        let (Ok(size32), Ok(cost32)) = (u32::try_from(placement.size), u32::try_from(cost)) else {
            return Err(meta);
        };
        let seq = self.next;
        let index = self.index(seq);
        let Some(slot) = self.slots.get_mut(index) else {
            return Err(meta);
        };
        let area = self.area as u64;
        let pos = self.head - self.head % area
            + placement.offset as u64
            + if placement.pad_from.is_some() {
                area
            } else {
                0
            };
        *slot = Some(Slot {
            meta,
            pos,
            size: size32,
            cost: cost32,
            cost_before: self.pushed_cost,
        });
        self.head = pos + placement.size as u64;
        self.bytes += cost;
        self.pushed_cost += cost as u64;
        self.next += 1;
        Ok(seq)
    }

    /// Removes the oldest record and returns its metadata.
    pub fn pop_oldest(&mut self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let index = self.index(self.first);
        let slot = self.slots.get_mut(index)?.take()?;
        self.bytes -= slot.cost as usize;
        self.first += 1;
        Some(slot.meta)
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
            Some(Some(slot)) => Lookup::Ready(slot),
            _ => Lookup::Pending,
        }
    }

    /// Takes every record out, oldest first, through `each`.
    pub fn drain(&mut self, mut each: impl FnMut(T)) {
        while let Some(meta) = self.pop_oldest() {
            each(meta);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::{collections::VecDeque, vec::Vec};

    type TestRing = Ring<u64, Vec<Option<Slot<u64>>>>;

    /// The largest record the model test pushes takes this much area.
    const LARGEST: usize = 5 * ALIGN;

    /// A ring whose area is as small as the budget and records up to
    /// `LARGEST` allow.
    fn ring(slots: usize, max_bytes: usize) -> TestRing {
        let area = TestRing::area_for(max_bytes, max_bytes.min(LARGEST)).unwrap();
        Ring::new((0..slots).map(|_| None).collect(), max_bytes, area)
    }

    fn push(r: &mut TestRing, id: u64, cost: usize) -> Result<u64, u64> {
        r.push(id, cost, cost)
    }

    fn ready(r: &TestRing, seq: u64) -> Option<u64> {
        match r.get(seq) {
            Lookup::Ready(slot) => Some(*slot.meta()),
            _ => None,
        }
    }

    #[test]
    fn push_then_read_in_order() {
        let mut r = ring(4, 100);
        assert_eq!(r.get(0), Lookup::Pending);
        assert_eq!(push(&mut r, 10, 5), Ok(0));
        assert_eq!(push(&mut r, 11, 5), Ok(1));
        assert_eq!(ready(&r, 0), Some(10));
        assert_eq!(ready(&r, 1), Some(11));
        assert_eq!(r.get(2), Lookup::Pending);
        assert_eq!(r.bytes(), 10);
        // Aligned, one after the other.
        let Lookup::Ready(second) = r.get(1) else {
            panic!()
        };
        assert_eq!((second.offset(r.area()), second.size()), (8, 8));
    }

    #[test]
    fn full_by_slots_or_bytes_refuses() {
        let mut r = ring(2, 100);
        push(&mut r, 0, 1).unwrap();
        push(&mut r, 1, 1).unwrap();
        assert_eq!(push(&mut r, 2, 1), Err(2));
        let mut r = ring(8, 10);
        push(&mut r, 0, 6).unwrap();
        assert!(!r.fits(5));
        assert_eq!(push(&mut r, 1, 5), Err(1));
        assert!(r.could_ever_fit(10) && !r.could_ever_fit(11));
    }

    #[test]
    fn a_record_that_would_cross_the_end_starts_over_with_padding() {
        // An area of 40 bytes, and a budget that never gets in the way.
        let mut r: TestRing = Ring::new((0..8).map(|_| None).collect(), 1000, 40);
        push(&mut r, 0, 16).unwrap();
        push(&mut r, 1, 8).unwrap();
        r.pop_oldest();
        // Head at 24: 16 bytes would end at 40, the area's end: no wrap.
        assert_eq!(
            r.place(16),
            Some(Placement {
                offset: 24,
                size: 16,
                pad_from: None
            })
        );
        push(&mut r, 2, 16).unwrap();
        r.pop_oldest();
        // Head at 40 = 0 of the next lap.
        assert_eq!(
            r.place(9).map(|p| (p.offset, p.size, p.pad_from)),
            Some((0, 16, None))
        );
        push(&mut r, 3, 8).unwrap();
        // Head at 8; record 2 holds 24..40: 16 bytes fit at 8..24.
        assert_eq!(r.place(16).map(|p| p.offset), Some(8));
        push(&mut r, 4, 8).unwrap();
        // Head at 16: 16 more would overlap record 2 (24..40).
        assert!(r.place(16).is_none());
        r.pop_oldest();
        // Record 2 gone: 16..32 is free.
        assert_eq!(
            r.place(16).map(|p| (p.offset, p.pad_from)),
            Some((16, None))
        );
        push(&mut r, 5, 16).unwrap();
        // Head at 32: 16 bytes would cross 40: padding from 32, start at 0,
        // where record 3 still is.
        assert!(r.place(16).is_none());
        r.pop_oldest();
        // Record 3 gone: 0..8 is free, 8..16 is still record 4's; a
        // small record still fits before the end.
        assert_eq!(r.place(16), None);
        assert_eq!(r.place(8).map(|p| (p.offset, p.pad_from)), Some((32, None)));
        r.pop_oldest();
        assert_eq!(
            r.place(16),
            Some(Placement {
                offset: 0,
                size: 16,
                pad_from: Some(32)
            })
        );
    }

    #[test]
    fn evicted_records_are_reported_lost() {
        let mut r = ring(2, 100);
        for i in 0..5 {
            while !r.fits(1) {
                r.pop_oldest();
            }
            push(&mut r, i, 1).unwrap();
        }
        assert_eq!(r.first_seq(), 3);
        assert_eq!(r.get(0), Lookup::Lost { first: 3, lost: 3 });
        assert_eq!(ready(&r, 3), Some(3));
    }

    #[test]
    fn fits_after_evicting_counts_only_what_may_go() {
        let mut r = ring(8, 30);
        for i in 0..3 {
            push(&mut r, i, 10).unwrap();
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
        /// A record of this cost (in units of `ALIGN`), taking this share
        /// (in 1/4) of it in the area: never more than its cost, as in the
        /// module, where a record's overhead covers its header and
        /// alignment.
        Push(usize, usize),
        /// Records pushed together, as a writer's batch is: placed first
        /// ([`Ring::places`]), then pushed one after another.
        PushMany(Vec<(usize, usize)>),
        Pop,
    }

    /// A record's size in the area: its share of its cost, at least 1.
    fn size_of(cost: usize, share: usize) -> usize {
        (cost * share / 4).max(1)
    }

    proptest! {
        /// The ring behaves like a bounded queue with sequence numbers, its
        /// byte accounting never drifts, and its layout never lets two
        /// retained records share a byte of the area, nor a record the
        /// budget admits wait for the area.
        #[test]
        fn matches_a_model(slots in 1usize..8, max_bytes in 1usize..64,
                           ops in proptest::collection::vec(
                               prop_oneof![
                                   (1usize..=LARGEST / ALIGN, 1usize..=4).prop_map(|(c, s)| Op::Push(c * ALIGN, s)),
                                   proptest::collection::vec((1usize..=LARGEST / ALIGN, 1usize..=4), 1..6)
                                       .prop_map(|v| Op::PushMany(v.into_iter().map(|(c, s)| (c * ALIGN, s)).collect())),
                                   Just(Op::Pop)
                               ], 0..200)) {
            let mut r = ring(slots, max_bytes);
            let mut model: VecDeque<(u64, usize)> = VecDeque::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Push(cost, share) => {
                        let used: usize = model.iter().map(|(_, c)| c).sum();
                        let fits = model.len() < slots && used + cost <= max_bytes;
                        prop_assert_eq!(r.fits(cost), fits);
                        let size = size_of(cost, share);
                        let pushed = r.push(next, cost, size);
                        if fits {
                            prop_assert_eq!(pushed, Ok(next));
                            model.push_back((next, cost));
                            next += 1;
                        } else {
                            prop_assert!(pushed.is_err());
                        }
                    }
                    Op::PushMany(records) => {
                        let used: usize = model.iter().map(|(_, c)| c).sum();
                        let total: usize = records.iter().map(|(c, _)| c).sum();
                        let fits = model.len() + records.len() <= slots && used + total <= max_bytes;
                        prop_assert_eq!(r.fits_many(records.len(), total), fits);
                        prop_assert_eq!(r.could_ever_fit_many(records.len(), total),
                            records.len() <= slots && total <= max_bytes);
                        if fits {
                            // Placed first, all of them, then pushed: each
                            // lands where it was placed.
                            let mut places = r.places();
                            let mut planned = Vec::new();
                            for &(cost, share) in &records {
                                let placed = places.next(size_of(cost, share));
                                prop_assert!(placed.is_some(), "a batch the budget admits found no place");
                                planned.push(placed);
                            }
                            for (&(cost, share), placed) in records.iter().zip(planned) {
                                prop_assert_eq!(r.push(next, cost, size_of(cost, share)), Ok(next));
                                let Lookup::Ready(slot) = r.get(next) else {
                                    return Err(TestCaseError::fail("pushed record missing"));
                                };
                                let placed = placed.map(|p| (p.offset, p.size));
                                prop_assert_eq!(Some((slot.offset(r.area()), slot.size())), placed);
                                model.push_back((next, cost));
                                next += 1;
                            }
                        }
                    }
                    Op::Pop => {
                        let popped = r.pop_oldest();
                        prop_assert_eq!(popped, model.pop_front().map(|(seq, _)| seq));
                    }
                }
                prop_assert_eq!(r.bytes(), model.iter().map(|(_, c)| c).sum::<usize>());
                // The layout: every retained record inside the area,
                // aligned, and no two overlapping.
                let mut taken: Vec<(usize, usize)> = Vec::new();
                for seq in r.first_seq()..r.next_seq() {
                    let Lookup::Ready(slot) = r.get(seq) else {
                        return Err(TestCaseError::fail("retained record missing"));
                    };
                    let (at, size) = (slot.offset(r.area()), slot.size());
                    prop_assert!(at % ALIGN == 0 && size % ALIGN == 0 && at + size <= r.area());
                    for &(other, other_size) in &taken {
                        prop_assert!(at + size <= other || other + other_size <= at,
                            "record {} at {}..{} overlaps {}..{}", seq, at, at + size, other, other + other_size);
                    }
                    taken.push((at, size));
                }
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
                        for records in [0usize, 2, 3] {
                            let fits = left + records <= slots && used + cost <= max_bytes;
                            prop_assert_eq!(r.fits_many_after_evicting_before(keep, records, cost), fits);
                        }
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
                        Some(&(s, _)) => Owned::Ready(s),
                        None if seq < r.first_seq() => Owned::Lost(r.first_seq(), r.first_seq() - seq),
                        None => Owned::Pending,
                    };
                    prop_assert_eq!(owned(&r.get(seq)), expected);
                }
            }
        }
    }

    #[derive(Debug, PartialEq)]
    enum Owned {
        Ready(u64),
        Lost(u64, u64),
        Pending,
    }

    fn owned(lookup: &Lookup<'_, u64>) -> Owned {
        match lookup {
            Lookup::Ready(slot) => Owned::Ready(*slot.meta()),
            Lookup::Lost { first, lost } => Owned::Lost(*first, *lost),
            Lookup::Pending => Owned::Pending,
        }
    }
}
