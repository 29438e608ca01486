// SPDX-License-Identifier: GPL-2.0
//! Module parameters, declared in `glue.c` because 6.12's `module!` has no
//! parameter support.

use core::ffi::CStr;
use kernel::ffi;

extern "C" {
    fn kchat_default_room() -> *const ffi::c_char;
}

/// `default_room=`: the room to create at load; empty for none.
pub(crate) fn default_room() -> &'static [u8] {
    // SAFETY: the parameter is a static, NUL-terminated buffer that the
    // kernel only writes while parsing parameters, before `init` runs; its
    // sysfs file is read-only (0444).
    // (`core`'s `c_char` is `i8`, the kernel's `u8`: the same bytes.)
    unsafe { CStr::from_ptr(kchat_default_room().cast()) }.to_bytes()
}
