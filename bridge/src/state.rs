//! What a JetStream room must remember across bridge restarts, one small
//! JSON file per room under `state_dir`: how far this node's messages were
//! published (and acknowledged), and how far each other node's were
//! relayed in. Written whole and renamed into place, so a crash leaves the
//! old file or the new one, never half of one.

use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// A position in one node's messages of one room: the room's incarnation
/// there (it grows when that room's sequence numbers start over, the room
/// having been deleted and created again) and the kernel's sequence number.
pub type Position = (u64, u64);

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomState {
    /// This node's incarnation of the room.
    pub epoch: u64,
    /// The last local sequence number the server acknowledged.
    pub published: Option<u64>,
    /// When that message was written (its kernel stamp): tells this room
    /// from one created again under the same name since.
    #[serde(default)]
    pub published_time: Option<u64>,
    /// Per origin node, the last message relayed into the room.
    pub relayed: BTreeMap<String, Position>,
    /// The last JetStream stream sequence handled (relayed, skipped as
    /// this node's own or a duplicate, or refused).
    #[serde(default)]
    pub stream_seq: Option<u64>,
    /// When the stream `stream_seq` counts in was made, as the server
    /// reports it: a stream made anew (deleted, or its store lost) counts
    /// from 1 again, so a saved number means nothing in it.
    #[serde(default)]
    pub stream_created: Option<String>,
}

pub struct StateFile {
    path: PathBuf,
    health: Option<SaveHealth>,
}

/// Where a room's saves are reported: a failing save is an error state
/// (`kchat_bridge_state_save_failing`, `status`, an alert), logged once
/// when it starts and once when it ends, not on every checkpoint.
#[derive(Clone)]
pub struct SaveHealth {
    pub room: String,
    pub failing: prometheus_client::metrics::gauge::Gauge,
    pub failures: prometheus_client::metrics::counter::Counter,
}

impl StateFile {
    pub fn new(dir: &Path, room: &str) -> StateFile {
        StateFile {
            path: dir.join(format!("{room}.json")),
            health: None,
        }
    }

    /// Reports [`StateFile::save_reported`]'s outcomes to `health`.
    pub fn reporting(mut self, health: SaveHealth) -> StateFile {
        self.health = Some(health);
        self
    }

    /// Saves, and reports a failure (or the end of one) instead of
    /// returning it: the bridge goes on relaying, but until a save works a
    /// restart takes it back to the last saved position.
    pub fn save_reported(&self, state: &RoomState) {
        let outcome = self.save(state);
        let Some(health) = &self.health else {
            if let Err(err) = outcome {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot save the room's state");
            }
            return;
        };
        match outcome {
            Ok(()) => {
                if health.failing.set(0) != 0 {
                    tracing::info!(room = %health.room, path = %self.path.display(), "the room's state is saved again");
                }
            }
            Err(err) => {
                health.failures.inc();
                if health.failing.set(1) == 0 {
                    tracing::error!(
                        room = %health.room,
                        path = %self.path.display(),
                        error = %err,
                        "cannot save the room's state; relaying goes on, but a restart now goes back to the last saved position (messages relayed or published again, de-duplicated by the server only within its window): make the state directory writable"
                    );
                }
            }
        }
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; a missing file is a fresh start. An unreadable one
    /// is set aside (`.bad`) with a warning: the server's de-duplication
    /// still suppresses what is published again.
    pub fn load(&self) -> RoomState {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return RoomState::default(),
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot read the room's state; starting afresh");
                return RoomState::default();
            }
        };
        match serde_json::from_str(&text) {
            Ok(state) => state,
            Err(err) => {
                let aside = self.path.with_extension("json.bad");
                let _ = std::fs::rename(&self.path, &aside);
                tracing::warn!(path = %self.path.display(), error = %err, aside = %aside.display(), "the room's state is corrupt; set aside, starting afresh");
                RoomState::default()
            }
        }
    }

    pub fn save(&self, state: &RoomState) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod reporting {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn a_failing_save_is_a_state_not_a_stream_of_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::default();
        let health = metrics.save_health("lobby");
        let file = StateFile::new(dir.path(), "lobby").reporting(health.clone());
        file.save_reported(&RoomState::default());
        assert_eq!((health.failing.get(), health.failures.get()), (0, 0));
        // A directory where the file goes: renaming over it fails, as root
        // too.
        std::fs::remove_file(file.path()).unwrap();
        std::fs::create_dir(file.path()).unwrap();
        file.save_reported(&RoomState::default());
        file.save_reported(&RoomState::default());
        assert_eq!((health.failing.get(), health.failures.get()), (1, 2));
        std::fs::remove_dir(file.path()).unwrap();
        file.save_reported(&RoomState::default());
        assert_eq!((health.failing.get(), health.failures.get()), (0, 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_save_and_a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path(), "lobby");
        assert_eq!(file.load(), RoomState::default());
        let mut state = RoomState {
            epoch: 2,
            published: Some(41),
            ..RoomState::default()
        };
        state.relayed.insert("node-b".into(), (1, 99));
        file.save(&state).unwrap();
        assert_eq!(file.load(), state);
        std::fs::write(file.path(), b"{ half").unwrap();
        assert_eq!(file.load(), RoomState::default());
        assert!(dir.path().join("lobby.json.bad").exists());
    }
}
