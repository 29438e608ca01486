// SPDX-License-Identifier: GPL-2.0
//! kchat: local chat rooms and broadcast IPC as character devices.
//!
//! The crate root only declares the module and its parts; see
//! `lifecycle.rs` for what loading and unloading do.

// Shared verbatim with userspace, which uses all of it, publicly.
#[allow(dead_code, unreachable_pub)]
#[path = "../uapi/src/abi.rs"]
mod abi;
mod compat;
mod control;
mod lifecycle;
#[allow(dead_code, unreachable_pub)] // Shared with userspace, as `abi`.
#[path = "../uapi/src/name.rs"]
mod name;
mod registry;
mod room;
mod room_file;
mod uabi;

// The module's pure logic, shared with the host-tested `kchat-kcore` crate.
#[allow(dead_code, unreachable_pub)]
#[path = "../kcore/src/rate.rs"]
mod rate;
#[allow(dead_code, unreachable_pub)]
#[path = "../kcore/src/ring.rs"]
mod ring;
#[allow(dead_code, unreachable_pub)]
#[path = "../kcore/src/slowest.rs"]
mod slowest;

use kernel::prelude::*;
use lifecycle::Kchat;

module! {
    type: Kchat,
    name: "kchat",
    description: "Local chat rooms and broadcast IPC as character devices",
    license: "GPL",
}
