// SPDX-License-Identifier: GPL-2.0
//! Extensible ioctl structs, read the way `copy_struct_from_user` does: the
//! struct's first `u32` is the size the caller knows; bytes we do not know
//! must be zero (`E2BIG` otherwise), so old modules refuse new requests
//! instead of half-applying them.

use crate::abi;
use kernel::{
    prelude::*,
    types::{AsBytes, FromBytes},
    uaccess::UserSlice,
};

// SAFETY: `repr(C)` structs of integers and byte arrays without padding:
// every bit pattern is a valid value.
unsafe impl FromBytes for abi::RoomSpec {}
// SAFETY: as above.
unsafe impl FromBytes for abi::RoomName {}
// SAFETY: as above.
unsafe impl FromBytes for abi::RoomInfo {}
// SAFETY: as above.
unsafe impl FromBytes for abi::RoomList {}
// SAFETY: as above.
unsafe impl FromBytes for abi::RateLimit {}
// SAFETY: as above.
unsafe impl FromBytes for abi::GlobalLimits {}
// SAFETY: `repr(C)` integers without padding: every byte is initialised.
unsafe impl AsBytes for abi::FrameHeader {}
// SAFETY: as above.
unsafe impl AsBytes for abi::RoomInfo {}
// SAFETY: as above.
unsafe impl AsBytes for abi::RoomList {}
// SAFETY: as above.
unsafe impl AsBytes for abi::GlobalLimits {}

/// Reads a `T` whose first field is its size, from user address `arg`.
pub(crate) fn read_extensible<T: FromBytes>(arg: usize) -> Result<T> {
    let size = UserSlice::new(arg, core::mem::size_of::<u32>())
        .reader()
        .read::<u32>()?;
    if size > abi::MAX_STRUCT_SIZE {
        return Err(E2BIG);
    }
    let size = size as usize;
    if size < core::mem::size_of::<T>() {
        return Err(EINVAL);
    }
    let mut reader = UserSlice::new(arg, size).reader();
    let value = reader.read::<T>()?;
    let mut chunk = [0u8; 64];
    while !reader.is_empty() {
        let len = reader.len().min(chunk.len());
        reader.read_slice(&mut chunk[..len])?;
        if chunk[..len].iter().any(|&byte| byte != 0) {
            return Err(E2BIG);
        }
    }
    Ok(value)
}
