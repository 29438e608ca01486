// SPDX-License-Identifier: GPL-2.0
//! kchat: local chat rooms and broadcast IPC as character devices.
//!
//! The crate root only declares the module and its parts; see
//! `lifecycle.rs` for what loading and unloading do.

#[allow(dead_code)] // Shared with userspace, which uses all of it.
#[path = "../uapi/src/abi.rs"]
mod abi;
mod compat;
mod control;
mod lifecycle;

kernel::prelude::module! {
    type: lifecycle::Kchat,
    name: "kchat",
    author: "kchat developers",
    description: "Local chat rooms and broadcast IPC as character devices",
    license: "GPL",
}
