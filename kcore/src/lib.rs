// SPDX-License-Identifier: GPL-2.0
//! The kernel module's pure logic, compiled twice: into `kchat.ko` (the
//! module includes these files with `#[path]`) and here, where `cargo test`
//! and proptest exercise it on the host.
//!
//! Rules for these files: `core` only, no allocation (storage is handed in),
//! no floating point, no 128-bit division, nothing named outside the file.
#![no_std]

pub mod rate;
pub mod ring;
pub mod slowest;
