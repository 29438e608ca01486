// SPDX-License-Identifier: GPL-2.0
//! ioctl numbers, device names and ABI version of kchat.
//!
//! Shared verbatim with the kernel module (`#[path]`), so it uses `core` only
//! and names nothing outside this file.

/// Version of the ioctl ABI. Bumped only for incompatible changes; compatible
/// growth happens through size-prefixed structs instead.
pub const ABI_VERSION: u32 = 1;

/// The ioctl type byte; unused in the kernel's ioctl-number registry.
pub const IOC_MAGIC: u8 = 0xB9;

/// Name of the device class, and of the `/dev` directory the nodes live in.
pub const DEV_DIR: &str = "kchat";

/// Name of the control node, `/dev/kchat/control`. Reserved as a room name.
pub const CONTROL_NAME: &str = "control";

/// Minor number of the control node; rooms take the minors after it.
pub const CONTROL_MINOR: u32 = 0;

/// Highest number of minors the module asks for under its one major.
pub const MAX_MINORS: u32 = 256;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Encodes an ioctl number the way `<asm-generic/ioctl.h>` does (x86, arm64,
/// riscv). A size that does not fit the 14-bit field fails the build.
const fn ioc_typed(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < (1 << IOC_SIZEBITS));
    (dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

const fn ioc(dir: u32, nr: u8, size: usize) -> u32 {
    ioc_typed(dir, IOC_MAGIC, nr, size)
}

/// `_IOR(IOC_MAGIC, nr, T)`: the kernel writes a `T` to the caller.
pub const fn ior<T>(nr: u8) -> u32 {
    ioc(IOC_READ, nr, core::mem::size_of::<T>())
}

/// `_IOW(IOC_MAGIC, nr, T)`: the caller passes a `T` to the kernel.
pub const fn iow<T>(nr: u8) -> u32 {
    ioc(IOC_WRITE, nr, core::mem::size_of::<T>())
}

/// `_IOWR(IOC_MAGIC, nr, T)`: both ways.
pub const fn iowr<T>(nr: u8) -> u32 {
    ioc(IOC_READ | IOC_WRITE, nr, core::mem::size_of::<T>())
}

/// Decoded number of an ioctl (its `nr` byte), if it is one of kchat's.
pub const fn ioc_nr(cmd: u32) -> Option<u8> {
    if (cmd >> IOC_TYPESHIFT) & 0xff == IOC_MAGIC as u32 {
        Some((cmd & 0xff) as u8)
    } else {
        None
    }
}

/// Control ioctl: the kernel writes [`ABI_VERSION`] as a `u32`. Never changes,
/// so any tool can ask any module what it speaks.
pub const IOC_VERSION: u32 = ior::<u32>(0x00);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_the_c_macros() {
        // TIOCGPTN is _IOR('T', 0x30, unsigned int) in the C headers; same
        // formula, different magic.
        let tiocgptn = ioc_typed(IOC_READ, b'T', 0x30, 4);
        assert_eq!(tiocgptn as libc::Ioctl, libc::TIOCGPTN);
        // TIOCSPTLCK is _IOW('T', 0x31, int).
        let tiocsptlck = ioc_typed(IOC_WRITE, b'T', 0x31, 4);
        assert_eq!(tiocsptlck as libc::Ioctl, libc::TIOCSPTLCK);
    }

    #[test]
    fn version_ioctl_is_stable() {
        // Old tools hard-code this number; it must never move.
        assert_eq!(IOC_VERSION, 0x8004_b900);
        assert_eq!(ioc_nr(IOC_VERSION), Some(0));
        assert_eq!(ioc_nr(libc::TIOCGPTN as u32), None);
    }

    #[test]
    fn directions_differ() {
        assert_ne!(ior::<u64>(1), iow::<u64>(1));
        assert_ne!(iow::<u64>(1), iowr::<u64>(1));
        assert_eq!((ior::<[u8; 24]>(3) >> IOC_SIZESHIFT) & 0x3fff, 24);
    }
}
