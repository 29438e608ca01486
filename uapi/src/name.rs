// SPDX-License-Identifier: GPL-2.0
//! Room name rules, checked by the kernel at creation and by tools before they
//! ask. Shared verbatim with the kernel module (`#[path]`): `core` only.
//!
//! A name becomes a path component under `/dev/kchat/`, a sysfs name and a
//! Prometheus label value, so the rules are strict: 1 to [`MAX_NAME_LEN`]
//! bytes of `[A-Za-z0-9_.-]`, not starting with `.` or `-`, and not the
//! reserved control node's name.

/// Longest room name in bytes; fits a 32-byte field with its NUL.
pub const MAX_NAME_LEN: usize = 31;

/// Why a room name was refused. The kernel answers each with `EINVAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong,
    /// The name holds a byte outside `[A-Za-z0-9_.-]` (such as `/`).
    BadChar(u8),
    /// The name starts with `.` (hidden files, `.` and `..`) or `-` (options).
    BadStart,
    /// The name is taken by the control node.
    Reserved,
}

impl NameError {
    /// A sentence for humans, naming what to change.
    pub const fn describe(&self) -> &'static str {
        match self {
            NameError::Empty => "room name is empty",
            NameError::TooLong => "room name is longer than 31 bytes",
            NameError::BadChar(_) => "room name may only hold letters, digits, '_', '-' and '.'",
            NameError::BadStart => "room name may not start with '.' or '-'",
            NameError::Reserved => "room name 'control' is reserved for the control device",
        }
    }
}

const fn allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.')
}

/// Checks a room name against the rules in the module documentation.
pub fn validate(name: &[u8]) -> Result<(), NameError> {
    let first = *name.first().ok_or(NameError::Empty)?;
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if let Some(&bad) = name.iter().find(|&&b| !allowed(b)) {
        return Err(NameError::BadChar(bad));
    }
    if first == b'.' || first == b'-' {
        return Err(NameError::BadStart);
    }
    if name == CONTROL.as_bytes() {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// The reserved name: the control node's, [`crate::abi::CONTROL_NAME`] in userspace.
const CONTROL: &str = "control";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "lobby",
            "a",
            "team-3",
            "ops_alerts",
            "v1.2",
            &"x".repeat(31),
        ] {
            assert_eq!(validate(ok.as_bytes()), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_each_rule() {
        assert_eq!(validate(b""), Err(NameError::Empty));
        assert_eq!(validate("x".repeat(32).as_bytes()), Err(NameError::TooLong));
        assert_eq!(validate(b"a/b"), Err(NameError::BadChar(b'/')));
        assert_eq!(validate(b"a b"), Err(NameError::BadChar(b' ')));
        assert_eq!(validate(b"caf\xc3\xa9"), Err(NameError::BadChar(0xc3)));
        assert_eq!(validate(b"nul\0"), Err(NameError::BadChar(0)));
        assert_eq!(validate(b"."), Err(NameError::BadStart));
        assert_eq!(validate(b".."), Err(NameError::BadStart));
        assert_eq!(validate(b".hidden"), Err(NameError::BadStart));
        assert_eq!(validate(b"-rf"), Err(NameError::BadStart));
        assert_eq!(validate(b"control"), Err(NameError::Reserved));
    }

    proptest! {
        #[test]
        fn accepted_names_are_safe_path_components(name in proptest::collection::vec(any::<u8>(), 0..40)) {
            if validate(&name).is_ok() {
                prop_assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
                prop_assert!(!name.contains(&b'/') && !name.contains(&0));
                prop_assert!(name != b"." && name != b"..");
                prop_assert!(core::str::from_utf8(&name).is_ok());
            }
        }

        #[test]
        fn names_from_the_allowed_alphabet_pass(name in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,30}") {
            prop_assume!(name != "control");
            prop_assert_eq!(validate(name.as_bytes()), Ok(()));
        }
    }
}
