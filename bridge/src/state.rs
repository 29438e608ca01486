//! What a JetStream room must remember across bridge restarts, one small
//! JSON file per room under `state_dir`: how far this node's messages were
//! published (and acknowledged), and how far each other node's were
//! relayed in. Written whole to a temporary file, fsynced, renamed into
//! place and the directory fsynced: a crash (of the bridge or the host)
//! leaves the old file or the new one, never half of one or none.

use crate::trust::Seen;
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

/// What a room remembers. Files from before incarnations (with `epoch`,
/// `published_time` and `relayed`) still load: those fields are ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomState {
    /// The last local sequence number the server acknowledged.
    #[serde(default)]
    pub published: Option<u64>,
    /// The room's incarnation `published` counts in (`RoomInfo`): a room
    /// created again since has another, and is published from its oldest
    /// message. `None` in a file from before incarnations: taken as this
    /// room's.
    #[serde(default)]
    pub published_incarnation: Option<u64>,
    /// Per origin node, the last message relayed into the room in each of
    /// its room's last incarnations.
    #[serde(default)]
    pub seen: BTreeMap<String, Seen>,
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

    /// Writes the state durably, as kchatd saves its own: a temporary file
    /// in the same directory, fsynced, renamed over the old one, and the
    /// directory fsynced (the rename is durable once the directory is).
    /// Without the fsyncs a host crash could leave an empty or missing
    /// file, and the bridge would start afresh.
    pub fn save(&self, state: &RoomState) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let text = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        temp.write_all(&text)?;
        temp.as_file().sync_all()?;
        temp.persist(&self.path).map_err(|err| err.error)?;
        std::fs::File::open(dir)?.sync_all()
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
            published: Some(41),
            published_incarnation: Some(u64::MAX),
            ..RoomState::default()
        };
        let mut seen = Seen::default();
        seen.note(7, 99);
        seen.note(u64::MAX, 3);
        state.seen.insert("node-b".into(), seen);
        file.save(&state).unwrap();
        assert_eq!(file.load(), state);
        // Nothing left beside it but the file.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("lobby.json")]);
        std::fs::write(file.path(), b"{ half").unwrap();
        assert_eq!(file.load(), RoomState::default());
        assert!(dir.path().join("lobby.json.bad").exists());
    }

    #[test]
    fn a_file_from_before_incarnations_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path(), "lobby");
        // As bridges with epochs wrote it.
        std::fs::write(
            file.path(),
            br#"{"epoch":3,"published":41,"published_time":1700000000000000000,"relayed":{"node-b":[2,99]},"stream_seq":7,"stream_created":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            file.load(),
            RoomState {
                published: Some(41),
                published_incarnation: None,
                seen: BTreeMap::new(),
                stream_seq: Some(7),
                stream_created: Some("2026-01-01T00:00:00Z".into()),
            }
        );
        assert!(!dir.path().join("lobby.json.bad").exists());
    }
}
