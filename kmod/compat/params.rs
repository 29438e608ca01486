// SPDX-License-Identifier: GPL-2.0
//! Module parameters, declared in `glue.c` because 6.12's `module!` has no
//! parameter support.

#[cfg(kchat_kapi7)]
use kernel::str::CStrExt;
use kernel::{ffi, str::CStr};

extern "C" {
    fn kchat_default_room() -> *const ffi::c_char;
}

/// `default_room=`: the room to create at load; empty for none.
pub(crate) fn default_room() -> &'static [u8] {
    // SAFETY: the parameter is a static, NUL-terminated buffer that the
    // kernel only writes while parsing parameters, before `init` runs; its
    // sysfs file is read-only (0444).
    let name = unsafe { CStr::from_char_ptr(kchat_default_room()) };
    #[cfg(not(kchat_kapi7))]
    return name.as_bytes();
    // 7.x's `CStr` is `core::ffi::CStr`, extended by `CStrExt`.
    #[cfg(kchat_kapi7)]
    return name.to_bytes();
}
