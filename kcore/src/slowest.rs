// SPDX-License-Identifier: GPL-2.0
//! `Slowest`: the lowest reader position of a room, kept without walking
//! every reader on every question.
//!
//! A `block` room asks for its slowest reader on every write and every
//! poll; with tens of thousands of readers a walk each time makes a poll
//! loop quadratic. The tracker knows the lowest position and how many
//! readers stand on it; a walk is needed only after the last of them moved
//! away, so readers that move in step (the usual case) cost one walk per
//! message, not one per reader.

/// The slowest reader's position, or "unknown" until the next walk.
#[derive(Debug, Clone)]
pub struct Slowest {
    /// The lowest position, meaningful when `known`.
    seq: u64,
    /// How many readers stand at `seq` (0 with `known`: no readers).
    at: usize,
    known: bool,
}

impl Default for Slowest {
    fn default() -> Self {
        Self::new()
    }
}

impl Slowest {
    /// A room without readers.
    pub const fn new() -> Self {
        Slowest {
            seq: u64::MAX,
            at: 0,
            known: true,
        }
    }

    /// A reader appeared at `seq`.
    pub fn joined(&mut self, seq: u64) {
        if !self.known {
            return;
        }
        if self.at == 0 || seq < self.seq {
            self.seq = seq;
            self.at = 1;
        } else if seq == self.seq {
            self.at += 1;
        }
    }

    /// A reader at `seq` went away.
    pub fn left(&mut self, seq: u64) {
        if self.known && self.at > 0 && seq == self.seq {
            self.at -= 1;
            if self.at == 0 {
                // Others may stand anywhere above: ask them at the next walk.
                self.known = false;
            }
        }
    }

    /// A reader moved from `from` to `to`.
    pub fn moved(&mut self, from: u64, to: u64) {
        if from != to {
            self.left(from);
            self.joined(to);
        }
    }

    /// The lowest position of `positions` (every reader's, as they stand
    /// now), `u64::MAX` if there are none; walks them only when the
    /// answer is not known.
    pub fn get(&mut self, positions: impl Iterator<Item = u64>) -> u64 {
        if !self.known {
            let mut seq = u64::MAX;
            let mut at = 0;
            for position in positions {
                if position < seq {
                    seq = position;
                    at = 1;
                } else if position == seq {
                    at += 1;
                }
            }
            *self = Slowest {
                seq,
                at,
                known: true,
            };
        }
        self.seq
    }

    /// Whether the next `get` walks the readers.
    pub fn needs_walk(&self) -> bool {
        !self.known
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[derive(Debug, Clone)]
    enum Op {
        Join(u64),
        Leave(usize),
        Move(usize, u64),
        Ask,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct positions, so readers often share one.
        prop_oneof![
            (0u64..6).prop_map(Op::Join),
            any::<usize>().prop_map(Op::Leave),
            (any::<usize>(), 0u64..6).prop_map(|(i, to)| Op::Move(i, to)),
            Just(Op::Ask),
        ]
    }

    proptest! {
        #[test]
        fn always_agrees_with_a_plain_minimum(ops in proptest::collection::vec(op(), 0..200)) {
            let mut readers: Vec<u64> = Vec::new();
            let mut slowest = Slowest::new();
            for op in ops {
                match op {
                    Op::Join(seq) => {
                        readers.push(seq);
                        slowest.joined(seq);
                    }
                    Op::Leave(i) if !readers.is_empty() => {
                        let seq = readers.swap_remove(i % readers.len());
                        slowest.left(seq);
                    }
                    Op::Move(i, to) if !readers.is_empty() => {
                        let i = i % readers.len();
                        let from = readers[i];
                        readers[i] = to;
                        slowest.moved(from, to);
                    }
                    _ => {}
                }
                let expected = readers.iter().copied().min().unwrap_or(u64::MAX);
                prop_assert_eq!(slowest.get(readers.iter().copied()), expected);
            }
        }
    }

    #[test]
    fn readers_moving_in_step_walk_once_per_step() {
        let mut slowest = Slowest::new();
        for _ in 0..1000 {
            slowest.joined(7);
        }
        for moved in 0..1000 {
            slowest.moved(7, 8);
            // Until the last one leaves 7, the answer is known without a walk.
            assert_eq!(slowest.needs_walk(), moved == 999);
        }
        assert_eq!(slowest.get(core::iter::repeat_n(8, 1000)), 8);
        assert!(!slowest.needs_walk());
    }
}
