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

use kernel::prelude::*;
use lifecycle::Kchat;

module! {
    type: Kchat,
    name: "kchat",
    author: "kchat developers",
    description: "Local chat rooms and broadcast IPC as character devices",
    license: "GPL",
}
