// SPDX-License-Identifier: GPL-2.0
//! Module load and unload: the major, the class and the control node.
//!
//! Teardown order is the reverse of setup and is enforced by field order
//! (Rust drops fields top to bottom): nodes, then the class, then the major.
//! Unload cannot race with an open file: every `file_operations` names this
//! module as owner, so the VFS holds a module reference per open file.

use crate::{
    abi,
    compat::{
        chrdev::{Major, Router},
        device::{Class, Node, NodePerms},
        file::File,
        fops::open_as,
    },
    control::Control,
};
use kernel::{c_str, prelude::*};

/// The loaded module.
pub(crate) struct Kchat {
    _control_node: Node,
    _class: Class,
    _major: Major<MinorRouter>,
}

impl kernel::Module for Kchat {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let major = Major::<MinorRouter>::register(c_str!("kchat"), abi::MAX_MINORS)?;
        let class = Class::register()?;
        let control_perms = NodePerms {
            mode: 0o600,
            uid: 0,
            gid: 0,
        };
        let control_node = Node::new(
            &class,
            major.devt(abi::CONTROL_MINOR),
            c_str!("control"),
            control_perms,
        )?;
        pr_info!("loaded, ABI version {}\n", abi::ABI_VERSION);
        Ok(Kchat {
            _control_node: control_node,
            _class: class,
            _major: major,
        })
    }
}

impl Drop for Kchat {
    fn drop(&mut self) {
        pr_info!("unloading\n");
    }
}

/// Routes an open of one of kchat's minors to the right kind of file.
pub(crate) struct MinorRouter;

impl Router for MinorRouter {
    fn open(file: &File, minor: u32) -> Result {
        match minor {
            abi::CONTROL_MINOR => open_as::<Control>(file, ()),
            _ => Err(ENXIO),
        }
    }
}
