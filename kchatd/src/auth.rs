//! Who may change rooms through the control socket: root, and processes
//! that hold the configured admin group (primary or supplementary). Anyone
//! may read.
//!
//! The kernel vouches for the caller: its ids (`SO_PEERCRED`) and the
//! groups it actually holds (`SO_PEERGROUPS`), both as they were when it
//! connected. That is the rule the kernel applies to the room nodes in the
//! same run, so kchatd agrees with it: a process started with the group
//! (`SupplementaryGroups=`, `setpriv --groups`, `sg`) is an admin, a member
//! of the group in `/etc/group` that runs with its groups dropped is not.
//! No user-database lookup happens, so nothing on the request path waits
//! for NSS.

use std::os::fd::AsRawFd;

/// The caller of one connection, as the kernel saw it at `connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    /// The peer of a connected unix stream socket.
    pub fn of(socket: &impl AsRawFd, uid: u32, gid: u32) -> std::io::Result<Peer> {
        Ok(Peer {
            uid,
            gid,
            groups: peer_groups(socket.as_raw_fd())?,
        })
    }

    /// Whether this caller may change state.
    pub fn is_admin(&self, admin_gid: Option<u32>) -> bool {
        self.uid == 0
            || admin_gid.is_some_and(|admin| self.gid == admin || self.groups.contains(&admin))
    }
}

/// `getsockopt(SO_PEERGROUPS)`: the peer's supplementary groups at connect.
fn peer_groups(fd: i32) -> std::io::Result<Vec<u32>> {
    use nix::libc;
    // NGROUPS_MAX is 65536; start small and grow to what the kernel says.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for writes of `len` bytes; the kernel
        // writes at most that and sets `len` to what it wrote or needs.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(err);
        }
        groups.resize(count, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn root_always_others_only_by_a_group_they_hold() {
        let peer = |uid, gid, groups: &[u32]| Peer {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        assert!(peer(0, 0, &[]).is_admin(None));
        assert!(!peer(65534, 65534, &[]).is_admin(None));
        assert!(peer(65534, 4242, &[]).is_admin(Some(4242)));
        assert!(peer(65534, 65534, &[7, 4242]).is_admin(Some(4242)));
        assert!(!peer(65534, 65534, &[7]).is_admin(Some(4242)));
    }

    #[test]
    fn a_socket_pair_reports_this_processs_groups() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let groups = peer_groups(ours.as_raw_fd()).unwrap();
        let mut expected: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = groups.clone();
        got.sort_unstable();
        expected.sort_unstable();
        expected.dedup();
        got.dedup();
        assert_eq!(got, expected);
    }
}
