// SPDX-License-Identifier: GPL-2.0
//! Module load and unload.
//!
//! Unload cannot race with an open file: every `file_operations` names this
//! module as owner, so the VFS holds a module reference per open file. A
//! failed load frees the module whatever references there are, so nothing
//! can be opened before loading has fully succeeded.

use crate::{abi, compat::params, registry::Registry};
use kernel::{prelude::*, sync::Arc};

/// The loaded module.
pub(crate) struct Kchat {
    _registry: Arc<Registry>,
}

impl kernel::Module for Kchat {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Nothing opens until everything that can fail has succeeded: a
        // file opened during a load that then fails would point into the
        // freed module. Until `publish`, opens get ENXIO, and the control
        // node is made last.
        let registry = Registry::new()?;
        let default_room = params::default_room();
        if !default_room.is_empty() {
            if let Err(err) = create_default_room(&registry, default_room) {
                pr_err!(
                    "cannot create the default room (default_room=): {:?}\n",
                    err
                );
                return Err(err);
            }
        }
        registry.add_control_node()?;
        Registry::publish(&registry);
        pr_info!("loaded, ABI version {}\n", abi::ABI_VERSION);
        Ok(Kchat {
            _registry: registry,
        })
    }
}

/// The room `insmod` makes so that `cat` and `echo` work with no daemon:
/// world read/write, default sizes, `drop` policy.
fn create_default_room(registry: &Registry, name: &[u8]) -> Result {
    let mut field = [0u8; abi::NAME_FIELD];
    field
        .get_mut(..name.len())
        .ok_or(EINVAL)?
        .copy_from_slice(name);
    registry.create(&abi::RoomSpec::chat_room(field))
}

impl Drop for Kchat {
    fn drop(&mut self) {
        Registry::unpublish();
        pr_info!("unloading\n");
    }
}
