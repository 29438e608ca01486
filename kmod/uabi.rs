// SPDX-License-Identifier: GPL-2.0
//! Extensible ioctl structs, read the way `copy_struct_from_user` does: the
//! struct's first `u32` is the size the caller knows; bytes we do not know
//! must be zero (`E2BIG` otherwise), so old modules refuse new requests
//! instead of half-applying them.

use crate::{
    abi,
    compat::{uaccess::user_slice, AsBytes, FromBytes},
};
use kernel::prelude::*;

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
unsafe impl FromBytes for abi::MaxWait {}
// SAFETY: as above.
unsafe impl FromBytes for abi::ReaderList {}
// SAFETY: as above.
unsafe impl FromBytes for abi::GlobalLimits {}
// SAFETY: as above.
unsafe impl FromBytes for abi::RelayHeader {}
// SAFETY: as above.
unsafe impl FromBytes for abi::WriteFrame {}
// SAFETY: `repr(C)` integers without padding: every byte is initialised.
unsafe impl AsBytes for abi::FrameHeader {}
// SAFETY: as above.
unsafe impl AsBytes for abi::RingRecord {}
// SAFETY: as above.
unsafe impl AsBytes for abi::RoomInfo {}
// SAFETY: as above.
unsafe impl AsBytes for abi::RoomList {}
// SAFETY: as above.
unsafe impl AsBytes for abi::ReaderList {}
// SAFETY: as above.
unsafe impl AsBytes for abi::ReaderInfo {}
// SAFETY: as above.
unsafe impl AsBytes for abi::OriginHeader {}
// SAFETY: as above.
unsafe impl AsBytes for abi::GlobalLimits {}

/// Writes the first `len` bytes of `value` (at most all of it) to user
/// address `arg`: a caller compiled against an older, smaller version of a
/// grown struct gets the fields it knows and nothing past its buffer.
pub(crate) fn write_prefix<T: AsBytes>(arg: usize, value: &T, len: usize) -> Result {
    let len = len.min(core::mem::size_of::<T>());
    // SAFETY: `AsBytes` says every byte of a `T` is initialised; the slice
    // covers at most `size_of::<T>()` bytes of `value`, which outlives it.
    let bytes =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(value).cast::<u8>(), len) };
    user_slice(arg, len).writer().write_slice(bytes)
}

/// Reads a `T` whose first field is its size, from user address `arg`.
pub(crate) fn read_extensible<T: FromBytes>(arg: usize) -> Result<T> {
    read_extensible_from::<T>(arg, core::mem::size_of::<T>())
}

/// As [`read_extensible`], for a struct that grew: a caller may pass any
/// size from `oldest` (its first version's) on, and fields it does not
/// know read as zero, as `copy_struct_from_user` does.
pub(crate) fn read_extensible_from<T: FromBytes>(arg: usize, oldest: usize) -> Result<T> {
    let size = user_slice(arg, core::mem::size_of::<u32>())
        .reader()
        .read::<u32>()?;
    if size > abi::MAX_STRUCT_SIZE {
        return Err(E2BIG);
    }
    let size = size as usize;
    if size < oldest.min(core::mem::size_of::<T>()) {
        return Err(EINVAL);
    }
    let mut reader = user_slice(arg, size).reader();
    let mut value = core::mem::MaybeUninit::<T>::zeroed();
    let known = size.min(core::mem::size_of::<T>());
    // SAFETY: `value` is `size_of::<T>()` bytes, all initialised (zeroed),
    // and `known` is at most that; the slice ends before `value` is read.
    let bytes = unsafe { core::slice::from_raw_parts_mut(value.as_mut_ptr().cast::<u8>(), known) };
    reader.read_slice(bytes)?;
    // SAFETY: every byte is initialised (zeroed, then partly read), and
    // `FromBytes` says any bytes are a valid `T`.
    let value = unsafe { value.assume_init() };
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
