// SPDX-License-Identifier: GPL-2.0
//! The kernel's random numbers: neither line's `kernel` crate wraps them.

/// A random nonzero `u64` from the kernel's CRNG, for a room's
/// incarnation: unique across module reloads and boots without any clock
/// or counter to trust, and never 0, which means "not stated".
pub(crate) fn nonzero_u64() -> u64 {
    loop {
        // SAFETY: `get_random_u64` has no preconditions; it never sleeps
        // (before the CRNG is seeded it still returns, from what it has).
        let value = unsafe { kernel::bindings::get_random_u64() };
        if value != 0 {
            return value;
        }
    }
}
