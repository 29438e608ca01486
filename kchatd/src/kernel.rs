//! The module as kchatd sees it: the control node, opened per use, and a
//! snapshot of its rooms.
//!
//! kchatd does not keep the control node open: an open file pins the module
//! (its unload is refused while files are open), and kchatd must let an
//! admin unload and reload it, then notice and restore the rooms.

use kchat_client::Control;
use kchat_proto::room::RoomName;
use kchat_uapi::abi;
use nix::errno::Errno;
use std::collections::BTreeMap;

/// The module's rooms at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub rooms: BTreeMap<RoomName, abi::RoomInfo>,
}

/// Opens the control node and checks the module speaks our ABI; the error
/// says why kchatd is detached, in words an operator can act on.
pub fn attach() -> Result<(Control, u32), String> {
    let control = Control::open().map_err(|err| match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => format!(
            "{} does not exist: the kchat module is not loaded (modprobe kchat)",
            kchat_client::CONTROL
        ),
        Some(Errno::EACCES | Errno::EPERM) => format!(
            "not allowed to open {}: kchatd needs root with CAP_SYS_ADMIN; under systemd, \
             a unit whose DeviceAllow= names the node must start after the module made it \
             (the shipped kchatd.service is bound to it): restart kchatd",
            kchat_client::CONTROL
        ),
        Some(Errno::ENODEV | Errno::ENXIO) => "the kchat module is being unloaded".to_owned(),
        _ => format!("cannot open {}: {err}", kchat_client::CONTROL),
    })?;
    let version = control
        .version()
        .map_err(|err| format!("the kchat module does not answer its version ioctl: {err}"))?;
    if version != abi::ABI_VERSION {
        return Err(format!(
            "the kchat module speaks ABI version {version}, this kchatd speaks {}; \
             install matching versions",
            abi::ABI_VERSION
        ));
    }
    Ok((control, version))
}

/// Every room with its settings and counters. A room deleted between the
/// list and its info is left out, not an error.
pub fn snapshot(control: &Control) -> Result<Snapshot, Errno> {
    let (names, total) = control.list(abi::MAX_MINORS as usize)?;
    debug_assert!(total as usize <= abi::MAX_MINORS as usize);
    let mut rooms = BTreeMap::new();
    for name in names {
        let Ok(room) = name.parse::<RoomName>() else {
            continue;
        };
        match control.info(&name) {
            Ok(info) => {
                rooms.insert(room, info);
            }
            Err(Errno::ENOENT) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Snapshot { rooms })
}
