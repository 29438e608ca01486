// SPDX-License-Identifier: GPL-2.0
//! kchat's user/kernel ABI, shared by the kernel module and userspace.
//!
//! Every module here is `core`-only: the kernel module includes the very same
//! files with `#[path]`, so the two sides cannot drift apart. Host unit tests
//! for the logic the module runs live beside each file.
#![no_std]

pub mod abi;
pub mod name;

#[cfg(test)]
mod tests {
    #[test]
    fn the_control_node_name_is_reserved() {
        assert_eq!(
            crate::name::validate(crate::abi::CONTROL_NAME.as_bytes()),
            Err(crate::name::NameError::Reserved)
        );
    }
}
