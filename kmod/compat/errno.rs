// SPDX-License-Identifier: GPL-2.0
//! Error codes kchat documents: from `kernel::error::code` where the line's
//! `kernel` crate has them (all four on 7.x, `ERANGE` on both), else made
//! from their bindings (6.12).

#[cfg(not(kchat_kapi7))]
use kernel::bindings;
use kernel::error::Error;

/// `EIDRM`: the room was deleted.
pub(crate) fn eidrm() -> Error {
    #[cfg(not(kchat_kapi7))]
    return Error::from_errno(-(bindings::EIDRM as i32));
    #[cfg(kchat_kapi7)]
    return kernel::error::code::EIDRM;
}

/// `EUSERS`: the room has as many readers as it allows.
pub(crate) fn eusers() -> Error {
    #[cfg(not(kchat_kapi7))]
    return Error::from_errno(-(bindings::EUSERS as i32));
    #[cfg(kchat_kapi7)]
    return kernel::error::code::EUSERS;
}

/// `EMSGSIZE`: the buffer cannot hold the next message (packet and framed
/// reads).
pub(crate) fn emsgsize() -> Error {
    #[cfg(not(kchat_kapi7))]
    return Error::from_errno(-(bindings::EMSGSIZE as i32));
    #[cfg(kchat_kapi7)]
    return kernel::error::code::EMSGSIZE;
}

/// `ERANGE`: a sequence number that is no longer, or not yet, in the room.
pub(crate) fn erange() -> Error {
    kernel::error::code::ERANGE
}
