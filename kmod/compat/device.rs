// SPDX-License-Identifier: GPL-2.0
//! `Class` and `Node`: the `kchat` device class and the devices in it, which
//! devtmpfs and udev turn into `/dev/kchat/<name>` with the owner, group and
//! mode each node asks for.

use core::{mem::MaybeUninit, ptr};
use kernel::{alloc::flags, bindings, error::to_result, ffi, prelude::*, str::CStr, types::Opaque};

/// Owner, group and mode of a device node.
#[derive(Clone, Copy)]
pub(crate) struct NodePerms {
    /// Permission bits (no file type), e.g. `0o600`.
    pub(crate) mode: u16,
    /// Owner, a uid in the initial user namespace.
    pub(crate) uid: u32,
    /// Group, a gid in the initial user namespace.
    pub(crate) gid: u32,
}

/// `struct class` is only read by the driver core once registered, so one
/// static, constant instance serves; the wrapper makes it `Sync`.
struct StaticClass(bindings::class);

// SAFETY: the driver core never writes through the `class` pointer it is
// given (it keeps its state in its own `subsys_private`), and the pointers in
// it are to `'static` constants.
unsafe impl Sync for StaticClass {}

static KCHAT_CLASS: StaticClass = StaticClass(bindings::class {
    name: c"kchat".to_bytes_with_nul().as_ptr().cast(),
    devnode: Some(class_devnode),
    // SAFETY: all-zero is a valid `struct class`: nullable pointers only.
    ..unsafe { core::mem::zeroed() }
});

/// Places every node of the class under `/dev/kchat/`.
///
/// # Safety
///
/// Called by the driver core with a valid device of this class.
unsafe extern "C" fn class_devnode(
    dev: *const bindings::device,
    _mode: *mut bindings::umode_t,
) -> *mut ffi::c_char {
    // SAFETY: the device is valid and registered, so its kobject name is a
    // valid C string; kasprintf copies it.
    unsafe {
        bindings::kasprintf(
            bindings::GFP_KERNEL,
            c"kchat/%s".to_bytes_with_nul().as_ptr().cast(),
            (*dev).kobj.name,
        )
    }
}

/// The registered device class. Unregisters at drop.
///
/// # Invariants
///
/// [`KCHAT_CLASS`] is registered for the lifetime of the value.
pub(crate) struct Class(());

impl Class {
    /// Registers the `kchat` class (`/sys/class/kchat`).
    pub(crate) fn register() -> Result<Self> {
        // SAFETY: the class is a `'static` constant that is not registered
        // yet: only the one `Class` value registers it.
        to_result(unsafe { bindings::class_register(&KCHAT_CLASS.0) })?;
        Ok(Class(()))
    }
}

impl Drop for Class {
    fn drop(&mut self) {
        // SAFETY: registered by `register`, per the type invariant. The one
        // `Class` is the registry's, whose nodes (rooms' and the control
        // node, in `Registry::inner`) drop before it by field order, so no
        // device of the class is left.
        unsafe { bindings::class_unregister(&KCHAT_CLASS.0) };
    }
}

/// A `struct device` with the node permissions that `node_devnode` reports.
#[repr(C)]
struct NodeDevice {
    dev: Opaque<bindings::device>,
    perms: NodePerms,
}

struct StaticDeviceType(bindings::device_type);

// SAFETY: as for `StaticClass`: a constant the driver core only reads.
unsafe impl Sync for StaticDeviceType {}

static NODE_TYPE: StaticDeviceType = StaticDeviceType(bindings::device_type {
    devnode: Some(node_devnode),
    // SAFETY: all-zero is a valid `struct device_type`.
    ..unsafe { core::mem::zeroed() }
});

/// Reports the node's owner, group and mode; the name comes from the class.
///
/// # Safety
///
/// Called by the driver core with a device made by [`Node::new`]; the other
/// pointers are null or valid for writes.
unsafe extern "C" fn node_devnode(
    dev: *const bindings::device,
    mode: *mut bindings::umode_t,
    uid: *mut bindings::kuid_t,
    gid: *mut bindings::kgid_t,
) -> *mut ffi::c_char {
    // SAFETY: every device of `NODE_TYPE` is the `dev` field of a live
    // `NodeDevice` (see `Node::new`).
    let perms = unsafe {
        (*kernel::container_of!(dev.cast::<Opaque<bindings::device>>(), NodeDevice, dev)).perms
    };
    // SAFETY: the driver core passes each pointer null or valid for writes.
    unsafe {
        if !mode.is_null() {
            *mode = perms.mode;
        }
        if !uid.is_null() {
            (*uid).val = perms.uid;
        }
        if !gid.is_null() {
            (*gid).val = perms.gid;
        }
    }
    ptr::null_mut()
}

/// Frees a `NodeDevice` when the driver core drops its last reference.
///
/// # Safety
///
/// Called once, by the driver core, for a device made by [`Node::new`].
unsafe extern "C" fn node_release(dev: *mut bindings::device) {
    let node = kernel::container_of!(dev.cast::<Opaque<bindings::device>>(), NodeDevice, dev);
    // `container_of!` gives `*const` on 6.12, `*mut` from 7.x on.
    #[cfg(not(kchat_kapi7))]
    let node = node.cast_mut();
    // SAFETY: `Node::new` made `node` with `KBox::into_raw`, and this is the
    // last reference to it.
    drop(unsafe { KBox::from_raw(node) });
}

/// A device of the kchat class, and so a node `/dev/kchat/<name>`.
/// Unregisters at drop, which removes the node at once.
///
/// # Invariants
///
/// `dev` is a registered device owned by this value.
pub(crate) struct Node {
    dev: *mut bindings::device,
}

// SAFETY: the driver core's device functions may be called from any thread.
unsafe impl Send for Node {}
// SAFETY: `Node` offers no `&self` methods that mutate.
unsafe impl Sync for Node {}

impl Node {
    /// Creates `/dev/kchat/<name>` for `devt`.
    pub(crate) fn new(
        _class: &Class,
        devt: bindings::dev_t,
        name: &CStr,
        perms: NodePerms,
    ) -> Result<Self> {
        // Zeroed memory is what `device_initialize` expects.
        let mut boxed = KBox::<NodeDevice>::new_uninit(flags::GFP_KERNEL | flags::__GFP_ZERO)?;
        let slot: &mut MaybeUninit<NodeDevice> = &mut boxed;
        // SAFETY: `slot` is valid for writes; `perms` is plain data.
        unsafe { ptr::addr_of_mut!((*slot.as_mut_ptr()).perms).write(perms) };
        // SAFETY: every field is initialised: `dev` is `Opaque` (any bytes,
        // zero here) and `perms` was just written.
        let node = KBox::into_raw(unsafe { boxed.assume_init() });
        // SAFETY: `node` is valid; no reference is made. `Opaque<T>` is a
        // transparent wrapper of `T`, so the field's address is the device's.
        let dev = unsafe { ptr::addr_of_mut!((*node).dev) }.cast::<bindings::device>();
        // SAFETY: `dev` is zeroed and exclusively ours until `device_add`;
        // from `device_initialize` on, its reference count owns `node` and
        // `node_release` frees it.
        unsafe {
            bindings::device_initialize(dev);
            (*dev).devt = devt;
            (*dev).class = &KCHAT_CLASS.0;
            (*dev).type_ = &NODE_TYPE.0;
            (*dev).release = Some(node_release);
        }
        // SAFETY: `dev` is initialised; the format consumes one C string.
        let ret = unsafe {
            bindings::dev_set_name(
                dev,
                c"%s".to_bytes_with_nul().as_ptr().cast(),
                name.as_char_ptr(),
            )
        };
        // SAFETY: `dev` is initialised and not added yet.
        let ret = to_result(ret).and_then(|()| to_result(unsafe { bindings::device_add(dev) }));
        if let Err(err) = ret {
            // SAFETY: drops the reference `device_initialize` gave us, which
            // frees `node` through `node_release`.
            unsafe { bindings::put_device(dev) };
            return Err(err);
        }
        Ok(Node { dev })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: registered by `new`, per the type invariant. Open files do
        // not reference the device, so its memory may go now.
        unsafe { bindings::device_unregister(self.dev) };
    }
}
