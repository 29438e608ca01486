//! One bridge per room on a machine: two bridges on one room would each
//! publish what is written there and each relay in what others send, so
//! every message would travel and land twice. A bridge takes an exclusive
//! `flock` on `/run/kchat-bridge/<room>.lock` before it bridges the room,
//! and holds it while it runs; the kernel drops it when the process ends,
//! however it ends, so a crash never leaves a room locked.
//!
//! The directory is fixed, not configured: two bridges with different
//! configs (different state directories, different NATS servers) must
//! still meet on it. See docs/federation.md.

use nix::fcntl::{Flock, FlockArg};
use std::{
    fs::File,
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
};

/// Where every kchat-bridge on the machine takes its rooms' locks (the
/// unit's `RuntimeDirectory=`).
pub const LOCK_DIR: &str = "/run/kchat-bridge";

/// A room this bridge holds; dropping it lets another bridge take it.
pub struct RoomLock {
    _file: Flock<File>,
}

/// What came of trying to take a room.
pub enum Taken {
    Held(RoomLock),
    /// Another process holds it: its pid as it wrote it, if readable.
    Elsewhere {
        path: PathBuf,
        holder: String,
    },
}

pub fn lock_path(dir: &Path, room: &str) -> PathBuf {
    dir.join(format!("{room}.lock"))
}

/// Takes `room`'s lock in `dir` if no one holds it, without waiting.
pub fn take(dir: &Path, room: &str) -> anyhow::Result<Taken> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot create the room lock directory {}: {err}",
                dir.display()
            )
        })?;
    let path = lock_path(dir, room);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|err| anyhow::anyhow!("cannot open the room lock {}: {err}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut file) => {
            // Who holds it, for the message the next bridge gives.
            let pid = std::process::id();
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{pid}"));
            Ok(Taken::Held(RoomLock { _file: file }))
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Ok(Taken::Elsewhere {
                path,
                holder: holder.trim().to_owned(),
            })
        }
        Err((_, errno)) => anyhow::bail!("cannot lock {}: {errno}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_held_by_one_lock_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run");
        let Taken::Held(first) = take(&runtime, "lobby").unwrap() else {
            panic!("a free room was not taken");
        };
        match take(&runtime, "lobby").unwrap() {
            Taken::Elsewhere { path, holder } => {
                assert_eq!(path, lock_path(&runtime, "lobby"));
                assert_eq!(holder, std::process::id().to_string());
            }
            Taken::Held(_) => panic!("a held room was taken again"),
        }
        assert!(matches!(take(&runtime, "ops").unwrap(), Taken::Held(_)));
        drop(first);
        assert!(matches!(take(&runtime, "lobby").unwrap(), Taken::Held(_)));
    }
}
