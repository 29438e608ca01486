// SPDX-License-Identifier: GPL-2.0
//! `File`: a borrowed `struct file` and the credentials checks made on it.
//!
//! On 7.x it wraps the kernel's own `kernel::fs::File`, whose `flags()` and
//! `cred()` (a `kernel::cred::Credential`, with its `euid()`) it uses; on
//! 6.12, which has neither, it reads the same fields itself. What the
//! upstream types lack on every line (`f_mode`, the credential's `egid`,
//! `fsuid` and user namespace, the opener's capabilities) is read here or
//! in `glue.c` on both.

use kernel::bindings;
#[cfg(not(kchat_kapi7))]
use kernel::types::Opaque;

// `FMODE_*` are `__force` casts in C, which bindgen cannot evaluate;
// `glue.c` checks these values against the kernel's at build time.
const FMODE_READ: u32 = 1 << 0;
const FMODE_WRITE: u32 = 1 << 1;
const FMODE_PREAD: u32 = 1 << 3;
const FMODE_PWRITE: u32 = 1 << 4;
const FMODE_CAN_ODIRECT: u32 = 1 << 22;
const FMODE_NOWAIT: u32 = 1 << 27;

/// An open file, borrowed for the length of a file operation.
///
/// # Invariants
///
/// The inner `struct file` is valid for as long as the reference is.
#[cfg(not(kchat_kapi7))]
#[repr(transparent)]
pub(crate) struct File(Opaque<bindings::file>);

/// An open file, borrowed for the length of a file operation: the kernel's
/// own `File`, with kchat's checks on top.
///
/// # Invariants
///
/// The inner `struct file` is valid for as long as the reference is.
#[cfg(kchat_kapi7)]
#[repr(transparent)]
pub(crate) struct File(kernel::fs::File);

#[cfg(not(kchat_kapi7))]
impl File {
    /// Borrows a `struct file` for the length of a callback.
    ///
    /// # Safety
    ///
    /// `ptr` must point at a valid `struct file` that outlives `'a`; the VFS
    /// guarantees this for the file passed to a `file_operations` callback.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut bindings::file) -> &'a File {
        // SAFETY: `File` is `repr(transparent)` over the C struct, and the
        // caller promises it is valid for `'a`.
        unsafe { &*ptr.cast() }
    }

    /// The raw pointer, for the compat layer's own callbacks.
    pub(crate) fn as_raw(&self) -> *mut bindings::file {
        self.0.get()
    }

    /// The file's credentials (`f_cred`): its opener's, fixed at open.
    fn cred(&self) -> *const bindings::cred {
        // SAFETY: the file is valid (type invariant); `f_cred` is set before
        // `open` and never changed.
        unsafe { (*self.as_raw()).f_cred }
    }

    /// The effective kernel uid of the file's credentials.
    fn euid(&self) -> u32 {
        // SAFETY: the credentials are held (refcounted) until the file is
        // freed, and `euid` of a published `cred` never changes; the field
        // is read at its offset with its own alignment.
        unsafe {
            self.cred()
                .cast::<u8>()
                .add(core::mem::offset_of!(bindings::cred, euid))
                .cast::<bindings::kuid_t>()
                .read()
                .val
        }
    }

    fn flags(&self) -> u32 {
        // SAFETY: the file is valid; `fcntl` updates `f_flags` with plain
        // stores, so a racy read sees the old or the new flags.
        unsafe { core::ptr::read_volatile(&(*self.as_raw()).f_flags) }
    }
}

#[cfg(kchat_kapi7)]
impl File {
    /// Borrows a `struct file` for the length of a callback.
    ///
    /// # Safety
    ///
    /// `ptr` must point at a valid `struct file` that outlives `'a`; the VFS
    /// guarantees this for the file passed to a `file_operations` callback.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut bindings::file) -> &'a File {
        // SAFETY: the caller promises the file is valid, and referenced by
        // the VFS, for `'a`. `kernel::fs::File` also asks that no
        // `fdget_pos` region skip `f_pos_lock`: for a character device
        // (no `FMODE_ATOMIC_POS`) the VFS never takes it, as for the
        // upstream `MiscDevice`, which borrows its files the same way; what
        // that rule guards is `f_pos`, which neither kchat nor the methods
        // used here touch. `File` is `repr(transparent)` over it.
        unsafe { &*core::ptr::from_ref(kernel::fs::File::from_raw_file(ptr)).cast::<File>() }
    }

    /// The raw pointer, for the compat layer's own callbacks.
    pub(crate) fn as_raw(&self) -> *mut bindings::file {
        self.0.as_ptr()
    }

    /// The file's credentials (`f_cred`): its opener's, fixed at open.
    fn cred(&self) -> *const bindings::cred {
        self.0.cred().as_ptr()
    }

    /// The effective kernel uid of the file's credentials.
    fn euid(&self) -> u32 {
        self.0.cred().euid().into_raw().val
    }

    fn flags(&self) -> u32 {
        self.0.flags()
    }
}

impl File {
    /// Whether the file was opened for reading (`FMODE_READ`).
    pub(crate) fn readable(&self) -> bool {
        self.mode() & FMODE_READ != 0
    }

    /// Whether the file was opened for writing (`FMODE_WRITE`).
    pub(crate) fn writable(&self) -> bool {
        self.mode() & FMODE_WRITE != 0
    }

    /// The effective uid and gid of the file's credentials (`f_cred`), as
    /// kernel ids.
    pub(crate) fn effective_ids(&self) -> (u32, u32) {
        // SAFETY: `f_cred` is held (refcounted) until the file is freed,
        // and `egid` of a published `cred` never changes; the field is read
        // at its offset with its own alignment. (No line's `Credential`
        // has an `egid()`.)
        let gid = unsafe {
            self.cred()
                .cast::<u8>()
                .add(core::mem::offset_of!(bindings::cred, egid))
                .cast::<bindings::kgid_t>()
                .read()
        };
        (self.euid(), gid.val)
    }

    /// Kernel ids as this file's user namespace (its opener's) sees them;
    /// the overflow id (65534) for one not mapped there.
    pub(crate) fn ids_as_seen(&self, kuid: u32, kgid: u32) -> (u32, u32) {
        // SAFETY: as in `effective_ids`; `user_ns` of a live cred is a live
        // namespace, and the mapping functions only read it.
        unsafe {
            let ns = self
                .cred()
                .cast::<u8>()
                .add(core::mem::offset_of!(bindings::cred, user_ns))
                .cast::<*mut bindings::user_namespace>()
                .read();
            (
                bindings::from_kuid_munged(ns, bindings::kuid_t { val: kuid }),
                bindings::from_kgid_munged(ns, bindings::kgid_t { val: kgid }),
            )
        }
    }

    /// Whether the current task's pid namespace and this file's user
    /// namespace are the initial ones.
    pub(crate) fn in_initial_namespaces(&self) -> bool {
        extern "C" {
            /// Defined in `glue.c`.
            fn kchat_in_initial_namespaces(file: *mut kernel::ffi::c_void) -> bool;
        }
        // SAFETY: the file is valid (type invariant) and the function only
        // reads it and the current task.
        unsafe { kchat_in_initial_namespaces(self.as_raw().cast()) }
    }

    /// The user this file's opener is charged as for per-user limits (reader
    /// slots, per-uid rate budgets): the owner of the outermost user
    /// namespace up its chain that someone other than root made, else its
    /// effective kernel uid. Subordinate ids (`newuidmap`) are their
    /// owner's, not users of their own; root's containers stay apart.
    pub(crate) fn charged_uid(&self) -> u32 {
        extern "C" {
            /// Defined in `glue.c`.
            fn kchat_file_charged_uid(file: *const kernel::ffi::c_void) -> u32;
        }
        // SAFETY: the file is valid (type invariant); its credentials and
        // their user namespace chain are fixed and referenced while it is
        // open.
        unsafe { kchat_file_charged_uid(self.as_raw().cast()) }
    }

    /// Whether the file's opener held `CAP_SYS_ADMIN` (in the initial user
    /// namespace) when it opened it: privileges a file grants are its
    /// opener's, whoever holds it later.
    pub(crate) fn opened_with_sys_admin(&self) -> bool {
        extern "C" {
            /// Defined in `glue.c`.
            fn kchat_file_capable_sys_admin(file: *const kernel::ffi::c_void) -> bool;
        }
        // SAFETY: the file is valid (type invariant); `file_ns_capable` only
        // reads its credentials.
        unsafe { kchat_file_capable_sys_admin(self.as_raw().cast()) }
    }

    /// Whether `O_NONBLOCK` is set now (`fcntl` may change it at any time).
    pub(crate) fn nonblocking(&self) -> bool {
        self.flags() & bindings::O_NONBLOCK != 0
    }

    /// A number naming this open file while it is open (its address).
    pub(crate) fn id(&self) -> u64 {
        self.as_raw() as usize as u64
    }

    /// Whether the file was opened with `O_DIRECT`.
    pub(crate) fn direct(&self) -> bool {
        self.flags() & bindings::O_DIRECT != 0
    }

    fn mode(&self) -> u32 {
        // SAFETY: the file is valid; `f_mode` is set before `open` and not
        // changed afterwards except by the driver itself.
        unsafe { (*self.as_raw()).f_mode }
    }
}

/// A file during its `open`: not yet visible to any other thread, and the
/// current task is its opener. What may only be done then (changing its
/// mode, checking the opener's groups and capabilities) is only here.
///
/// # Invariants
///
/// The inner file is being opened by the current task and is not yet
/// installed in any file table.
#[repr(transparent)]
pub(crate) struct OpeningFile(File);

impl OpeningFile {
    /// Borrows the file an `open` callback was given.
    ///
    /// # Safety
    ///
    /// `ptr` must be the `struct file` passed to the `open` callback that is
    /// running now, and `'a` must end before the callback returns.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut bindings::file) -> &'a OpeningFile {
        // SAFETY: `OpeningFile` is `repr(transparent)` over `File`, itself
        // over the C struct; the caller promises validity and the open
        // callback (the type invariant).
        unsafe { &*ptr.cast() }
    }

    /// Whether the opener may have this file's access (read, write) to an
    /// object owned by `uid`:`gid` with permission bits `mode`, by the
    /// kernel's rule for inodes (`generic_permission`): the owner's bits,
    /// else the group's, else the others'; `CAP_DAC_OVERRIDE` overrides,
    /// and `CAP_DAC_READ_SEARCH` for reading. It reads the current task's
    /// groups and capabilities, which during `open` are the file's.
    pub(crate) fn opener_may_access(&self, uid: u32, gid: u32, mode: u16) -> bool {
        let want =
            (if self.0.readable() { 4 } else { 0 }) | (if self.0.writable() { 2 } else { 0 });
        // SAFETY: `f_cred` is set before `open` and held until the file is
        // freed; the field is read at its offset. (No line's `Credential`
        // has an `fsuid()`.)
        let fsuid = unsafe {
            self.0
                .cred()
                .cast::<u8>()
                .add(core::mem::offset_of!(bindings::cred, fsuid))
                .cast::<bindings::kuid_t>()
                .read()
                .val
        };
        // SAFETY: `in_group_p` reads the current task's credentials, which
        // are the opener's (type invariant).
        let in_group = || unsafe { bindings::in_group_p(bindings::kgid_t { val: gid }) != 0 };
        let class_bits = if fsuid == uid {
            mode >> 6
        } else if in_group() {
            mode >> 3
        } else {
            mode
        };
        if class_bits & want == want {
            return true;
        }
        current_capable(Capability::DacOverride)
            || (want == 4 && current_capable(Capability::DacReadSearch))
    }

    /// Makes `pread`/`pwrite` fail with `ESPIPE` (positions are not byte
    /// offsets here).
    pub(crate) fn refuse_positional_io(&self) {
        // SAFETY: as in `allow_direct`.
        unsafe { (*self.0.as_raw()).f_mode &= !(FMODE_PREAD | FMODE_PWRITE) };
    }

    /// Tells io_uring that non-blocking attempts work (`FMODE_NOWAIT`), so it
    /// polls instead of parking a worker.
    pub(crate) fn allow_nowait(&self) {
        // SAFETY: as in `allow_direct`.
        unsafe { (*self.0.as_raw()).f_mode |= FMODE_NOWAIT };
    }

    /// Lets an `O_DIRECT` open succeed.
    pub(crate) fn allow_direct(&self) {
        // SAFETY: an `OpeningFile` is not yet shared with any other thread
        // (type invariant), so this read-modify-write cannot race.
        unsafe { (*self.0.as_raw()).f_mode |= FMODE_CAN_ODIRECT };
    }
}

impl core::ops::Deref for OpeningFile {
    type Target = File;

    fn deref(&self) -> &File {
        &self.0
    }
}

/// Capabilities kchat checks.
#[derive(Clone, Copy)]
pub(crate) enum Capability {
    /// `CAP_SYS_ADMIN`: administering kchat (the control device).
    SysAdmin,
    /// `CAP_DAC_OVERRIDE`: opening a room its mode does not allow.
    DacOverride,
    /// `CAP_DAC_READ_SEARCH`: reading a room its mode does not allow.
    DacReadSearch,
}

/// Whether the current task holds `cap` (and records its use, as `capable()`
/// does for audit).
pub(crate) fn current_capable(cap: Capability) -> bool {
    let cap = match cap {
        Capability::SysAdmin => bindings::CAP_SYS_ADMIN,
        Capability::DacOverride => bindings::CAP_DAC_OVERRIDE,
        Capability::DacReadSearch => bindings::CAP_DAC_READ_SEARCH,
    };
    // SAFETY: `capable` only reads the current task's credentials; the
    // capability number is one of the kernel's own constants.
    unsafe { bindings::capable(cap as i32) }
}
