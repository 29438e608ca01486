//! The state file, `<state_dir>/state.json`: what admins changed at run time,
//! so a daemon restart or a module reload comes back to the same rooms.
//!
//! Written whole to a temporary file in the same directory, flushed, then
//! renamed over the old one: a crash leaves the old file or the new one,
//! never half of either.

use kchat_proto::room::{RateLimit, RoomDecl, RoomName};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
};

const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is corrupt ({source}); move it aside to start from the config alone"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state file {path} has format {found}, this kchatd reads {FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another kchatd (pid {holder}) uses the state directory {dir}; stop it first, or give this one its own state_dir"
    )]
    InUse { dir: PathBuf, holder: String },
    #[error("cannot lock the state directory {dir}: {source}")]
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The state directory's lock, held for the daemon's life: two kchatds on
/// one state file would overwrite each other's changes.
#[derive(Debug)]
pub struct StateLock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl StateLock {
    /// Takes `<state_dir>/kchatd.lock` (an `flock`, released by the kernel
    /// when kchatd exits however it exits), or says who holds it.
    pub fn take(state_dir: &Path) -> Result<StateLock, StateError> {
        let failed = |source| StateError::Lock {
            dir: state_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(failed)?;
        let path = state_dir.join("kchatd.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                // The holder's pid, for the message another kchatd prints.
                let pid = std::process::id().to_string();
                locked.set_len(0).map_err(failed)?;
                locked.write_all(pid.as_bytes()).map_err(failed)?;
                Ok(StateLock { _file: locked })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StateError::InUse {
                dir: state_dir.to_owned(),
                holder: std::fs::read_to_string(&path)
                    .map(|pid| pid.trim().to_owned())
                    .unwrap_or_else(|_| "unknown".to_owned()),
            }),
            Err((_, errno)) => Err(failed(errno.into())),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format: u32,
    /// Rooms created with kchatctl (or `kchatctl apply`).
    pub rooms: BTreeMap<RoomName, RoomDecl>,
    /// Config rooms an admin deleted: not recreated until created again.
    pub deleted: BTreeSet<RoomName>,
    /// Rate limits set with kchatctl; they win over the config's.
    pub limits: BTreeMap<RoomName, RateLimit>,
    /// Rooms kchatd created: the only ones it deletes when nobody declares
    /// them any more. Rooms it found (adopted) are never deleted by reconcile.
    pub owned: BTreeSet<RoomName>,
}

impl State {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    /// The saved state, or an empty one on first start.
    pub fn load(path: &Path) -> Result<State, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    format: FORMAT,
                    ..State::default()
                });
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let state: State = serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
        if state.format != FORMAT {
            return Err(StateError::Format {
                path: path.to_owned(),
                found: state.format,
            });
        }
        Ok(state)
    }

    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let fail = |source| StateError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(fail)?;
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
        let json = serde_json::to_vec_pretty(&State {
            format: FORMAT,
            ..self.clone()
        })
        .map_err(|err| fail(err.into()))?;
        temp.write_all(&json).map_err(fail)?;
        temp.as_file().sync_all().map_err(fail)?;
        temp.persist(path).map_err(|err| fail(err.error))?;
        // The rename is durable once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = State::path(dir.path());
        assert_eq!(State::load(&path).unwrap().rooms.len(), 0);
        let mut state = State::load(&path).unwrap();
        let name: RoomName = "ops".parse().unwrap();
        state.rooms.insert(
            name.clone(),
            serde_json::from_str::<RoomDecl>("{}").unwrap(),
        );
        state.owned.insert(name);
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
        // Only the state file is left: the temporary was renamed over it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_file_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = State::path(dir.path());
        std::fs::write(&path, "{\"format\": 1, \"rooms\": ").unwrap();
        let err = State::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("corrupt") && err.contains("move it aside"),
            "{err}"
        );
        std::fs::write(
            &path,
            "{\"format\": 9, \"rooms\": {}, \"deleted\": [], \"limits\": {}, \"owned\": []}",
        )
        .unwrap();
        assert!(State::load(&path)
            .unwrap_err()
            .to_string()
            .contains("format 9"));
    }
}
