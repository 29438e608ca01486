//! A reference model of one kchat room, in plain Rust, and the machinery
//! to check the real module against it.
//!
//! [`room::Model`] is what `docs/kernel-abi.md` promises, written as the
//! simplest code that could do it (a `VecDeque` of messages, a cursor per
//! open file), independent of the module's own ring. [`ops`] generates
//! random operation sequences (several readers and writers, buffer sizes
//! around the edges, tiny rings), and [`check`] runs a sequence on the model
//! and on any other [`System`] (in the test VM: the real module) and
//! compares every answer: return values, errnos, bytes, frame headers and
//! counters.

pub mod check;
pub mod ops;
pub mod room;

pub use check::{run_case, CaseReport, Mismatch, System};
pub use ops::{Api, Case, Op, Settings, Who};
pub use room::{InfoView, Model, Outcome, Policy};
