//! Who may change rooms through the control socket: root, and members of
//! the configured admin group (primary or supplementary). Anyone may read.
//!
//! The kernel vouches for the caller (SO_PEERCRED); group membership is
//! looked up in the user database, as `sudo` and polkit do, since
//! SO_PEERCRED carries only the primary group.

use nix::unistd::{Gid, Uid, User};
use std::ffi::CString;

/// Whether the peer `uid`/`gid` may change state.
pub fn is_admin(uid: u32, gid: u32, admin_gid: Option<u32>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(admin_gid) = admin_gid else {
        return false;
    };
    if gid == admin_gid {
        return true;
    }
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
        .is_ok_and(|groups| groups.contains(&Gid::from_raw(admin_gid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_always_others_only_by_group() {
        assert!(is_admin(0, 0, None));
        assert!(!is_admin(65534, 65534, None));
        assert!(is_admin(65534, 4242, Some(4242)));
        // nobody is in no group 4242 by the user database.
        assert!(!is_admin(65534, 65534, Some(4242)));
    }
}
