//! The control socket's protocol: one JSON object per line. A client sends
//! one [`Request`] and reads [`Reply`] lines: one for every request except
//! [`Request::Events`], which gets `done` with [`SUBSCRIBED`] once the
//! subscription is in place and then events until the client hangs up.
//!
//! JSON lines rather than a binary RPC: an admin can speak it with `socat`,
//! and both ends are ours, so there is no schema tooling to win.

use crate::room::{LimitChange, RoomDecl, RoomDraft, RoomName};
use serde::{Deserialize, Serialize};

/// The `done` reply that opens an event stream: from it on, the client
/// sees every event.
pub const SUBSCRIBED: &str = "subscribed";

/// Where kchatd listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/kchat/kchatd.sock";

/// Longest request line kchatd reads (an `apply` carries a config file).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Whether kchatd is attached to the module, and why not.
    Status,
    /// Every room the kernel has, with settings and counters.
    List,
    /// One room.
    Info { room: RoomName },
    /// Creates a room and keeps it across restarts (admin).
    CreateRoom { room: RoomName, settings: RoomDraft },
    /// Deletes a room and forgets it (admin).
    DeleteRoom { room: RoomName },
    /// Changes the given fields of a room's rate limit and keeps the
    /// result (admin).
    SetLimit { room: RoomName, limit: LimitChange },
    /// Forgets what was changed at run time about a room the config
    /// declares (its deletion, its rate limit), so the next reconcile makes
    /// it what the config says (admin).
    Reset { room: RoomName },
    /// Makes the rooms kchatctl manages those of `config` (TOML with
    /// `[rooms.NAME]` tables, as in kchatd.toml); with `dry_run`, only says
    /// what would change (admin unless dry run).
    Apply { config: String, dry_run: bool },
    /// Streams [`Event`]s as they happen.
    Events,
    /// Who reads a room and how far behind each is (admin: it names the
    /// processes and users that listen).
    Readers { room: RoomName },
}

impl Request {
    /// Whether the request needs an admin: it changes something, or shows
    /// who is reading.
    pub fn needs_admin(&self) -> bool {
        match self {
            Request::CreateRoom { .. }
            | Request::DeleteRoom { .. }
            | Request::SetLimit { .. }
            | Request::Reset { .. }
            | Request::Readers { .. } => true,
            Request::Apply { dry_run, .. } => !dry_run,
            Request::Status | Request::List | Request::Info { .. } | Request::Events => false,
        }
    }
}

/// One reader of a room, as the module reports it (`IOC_ROOM_READERS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderView {
    /// The opening process, as kchatd's pid namespace sees it (0: not
    /// visible there).
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Retained messages it has not read, and their cost of the ring.
    pub lag_msgs: u64,
    pub lag_bytes: u64,
    /// Messages it lost and has not been told of.
    pub lost: u64,
    /// How old the oldest message it has not read is (0: caught up).
    pub behind_ns: u64,
}

impl ReaderView {
    pub fn from_info(info: &kchat_uapi::abi::ReaderInfo) -> ReaderView {
        ReaderView {
            pid: info.pid,
            uid: info.uid,
            gid: info.gid,
            lag_msgs: info.lag_msgs,
            lag_bytes: info.lag_bytes,
            lost: info.lost,
            behind_ns: info.behind_ns,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", content = "data", rename_all = "kebab-case")]
pub enum Reply {
    Status(Status),
    Rooms(Vec<RoomView>),
    Room(RoomView),
    Plan(Vec<Change>),
    Done(String),
    Event(Event),
    Readers(Vec<ReaderView>),
    Error(ApiError),
}

/// Why a request failed; kchatctl maps each kind to an exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request is malformed or a value is out of range.
    Invalid,
    /// The caller is neither root nor in the admin group.
    Denied,
    NotFound,
    AlreadyExists,
    /// The config file owns this room; change it there.
    Conflict,
    /// The module is not loaded (or kchatd cannot open its control node).
    Unavailable,
    /// Anything else: the message says what.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// Whether the module's control node answers.
    pub attached: bool,
    /// Why not, when not attached.
    pub detached_reason: Option<String>,
    pub abi_version: Option<u32>,
    pub rooms: usize,
    pub config_path: String,
    pub state_path: String,
    /// Why the last reconcile failed, if it did.
    pub last_error: Option<String>,
    /// Rooms the config declares that an admin deleted: kchatd does not
    /// bring them back until `reset`.
    #[serde(default)]
    pub deleted_config_rooms: Vec<RoomName>,
    /// Rooms declared (config or kchatctl) that the module does not have,
    /// although kchatd tries to create them (see `last_error`).
    #[serde(default)]
    pub missing_rooms: Vec<RoomName>,
    /// Rooms whose rate limit was set with kchatctl over the config's.
    #[serde(default)]
    pub overridden_rooms: Vec<RoomName>,
}

/// Where kchatd's idea of a room comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Declared in kchatd.toml.
    Config,
    /// Created with kchatctl (kept in the state file).
    Runtime,
    /// Found in the kernel, made by someone else (the module's default
    /// room, another tool): kchatd watches it and never deletes it.
    Adopted,
}

impl Origin {
    /// The name used in the API, kchatctl's tables and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Runtime => "runtime",
            Origin::Adopted => "adopted",
        }
    }
}

/// A room's counters, as the kernel keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub readers: u32,
    pub writers: u32,
    pub ring_used_bytes: u64,
    pub ring_msgs: u64,
    pub first_seq: u64,
    pub next_seq: u64,
    pub msgs_in: u64,
    pub bytes_in: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub throttled: u64,
    pub writer_waits: u64,
    /// Times a `block` room's writer evicted readers that held it past
    /// its bound (`max_wait`).
    #[serde(default)]
    pub laggard_evictions: u64,
}

impl Counters {
    /// The counters of a kernel `IOC_ROOM_INFO` answer.
    pub fn from_info(info: &kchat_uapi::abi::RoomInfo) -> Counters {
        Counters {
            readers: info.readers,
            writers: info.writers,
            ring_used_bytes: info.ring_used_bytes,
            ring_msgs: info.ring_msgs,
            first_seq: info.first_seq,
            next_seq: info.next_seq,
            msgs_in: info.msgs_in,
            bytes_in: info.bytes_in,
            deliveries: info.deliveries,
            lost: info.lost,
            throttled: info.throttled,
            writer_waits: info.writer_waits,
            laggard_evictions: u64::from(info.laggard_evictions),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomView {
    pub name: RoomName,
    pub origin: Origin,
    pub settings: RoomDecl,
    pub counters: Counters,
    /// Declared settings the live room lacks (it must be recreated to get
    /// them), as "key have -> want".
    pub drift: Vec<String>,
    /// The rate limit was set with kchatctl and wins over the config's
    /// (`reset` goes back to the config's).
    #[serde(default)]
    pub limit_overridden: bool,
    /// `settings.mode` as people write it ("0o660"), beside the number.
    #[serde(default)]
    pub mode_octal: String,
}

/// One step of a reconcile or apply plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub room: RoomName,
    pub action: Action,
    /// What exactly, for humans.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Delete,
    SetLimit,
    /// A `block` room's bound on laggards changes in place.
    SetMaxWait,
    /// The room exists with fixed settings other than declared; kchatd
    /// leaves it (recreating would drop its readers) and reports it.
    Drift,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// The same moment in nanoseconds since the Unix epoch (0 from a
    /// kchatd older than this field).
    #[serde(default)]
    pub time_ns: u64,
    pub kind: EventKind,
    /// The room, for room events.
    pub room: Option<RoomName>,
    /// How many (messages lost or throttled) since the last event.
    pub count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Attached,
    Detached,
    RoomCreated,
    RoomDeleted,
    Lost,
    Throttled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_lines_an_admin_can_type() {
        let request: Request = serde_json::from_str(r#"{"op":"info","room":"lobby"}"#).unwrap();
        assert_eq!(
            request,
            Request::Info {
                room: "lobby".parse().unwrap()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"info","room":"a/b"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        let create = r#"{"op":"create-room","room":"ops","settings":{"mode":416}}"#;
        let request: Request = serde_json::from_str(create).unwrap();
        assert!(request.needs_admin());
        assert!(!Request::Apply {
            config: String::new(),
            dry_run: true
        }
        .needs_admin());
    }
}
