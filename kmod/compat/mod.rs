// SPDX-License-Identifier: GPL-2.0
//! The compat layer: the only code that touches raw `bindings::` or defines
//! `extern "C"` callbacks.
//!
//! Linux 6.12's `kernel` crate has no file, chrdev, class or poll
//! abstractions. These files fill the gap, shaped like the upstream ones of
//! 6.13+ (`File`, `MiscDevice`-style `#[vtable]` traits), so the logic
//! outside `compat/` is the same on every line. On 7.x (`kchat_kapi7`) they
//! are built on the kernel's own `File`, `Credential`, `IovIter*`, `Kiocb`,
//! `VmaNew` and `HrTimer` where those fit; docs/kernel-module.md ("Which
//! shims remain") says what is still kchat's own on each line, and why.

// Plain-data marker traits: in `types` up to 6.x, in `transmute` from 7.x.
#[cfg(kchat_kapi7)]
pub(crate) use kernel::transmute::{AsBytes, FromBytes};
#[cfg(not(kchat_kapi7))]
pub(crate) use kernel::types::{AsBytes, FromBytes};

pub(crate) mod chrdev;
pub(crate) mod device;
pub(crate) mod errno;
pub(crate) mod file;
pub(crate) mod fops;
pub(crate) mod iov;
pub(crate) mod params;
pub(crate) mod poll;
pub(crate) mod random;
pub(crate) mod ring_area;
pub(crate) mod task;
pub(crate) mod uaccess;
