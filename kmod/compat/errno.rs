// SPDX-License-Identifier: GPL-2.0
//! Error codes kchat documents that 6.12's `kernel::error::code` lacks.

use kernel::{bindings, error::Error};

/// `EIDRM`: the room was deleted.
pub(crate) fn eidrm() -> Error {
    Error::from_errno(-(bindings::EIDRM as i32))
}

/// `EUSERS`: the room has as many readers as it allows.
pub(crate) fn eusers() -> Error {
    Error::from_errno(-(bindings::EUSERS as i32))
}

/// `EMSGSIZE`: the buffer cannot hold the next message (packet and framed
/// reads).
pub(crate) fn emsgsize() -> Error {
    Error::from_errno(-(bindings::EMSGSIZE as i32))
}

/// `ERANGE`: a sequence number that is no longer, or not yet, in the room.
pub(crate) fn erange() -> Error {
    Error::from_errno(-(bindings::ERANGE as i32))
}
