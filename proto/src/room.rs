//! Room declarations: how a room is described in `kchatd.toml`, in the state
//! file and in a create request. [`RoomDraft`] is what a user wrote;
//! [`RoomDecl`] is the checked, resolved form the daemon applies. Parsing a
//! `RoomDecl` runs every check, so a config error carries the position of
//! the offending table and a sentence naming the key.

use kchat_uapi::{abi, name};
use serde::{Deserialize, Serialize};
use std::{borrow::Borrow, fmt, str::FromStr};

/// A room name that passed the kernel's rules (`uapi::name`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomName(String);

impl RoomName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoomName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name::validate(name.as_bytes()) {
            Ok(()) => Ok(RoomName(name)),
            Err(err) => Err(format!("invalid room name {name:?}: {}", err.describe())),
        }
    }
}

impl From<RoomName> for String {
    fn from(name: RoomName) -> String {
        name.0
    }
}

impl FromStr for RoomName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        RoomName::try_from(name.to_owned())
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// What a full ring does to writers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Writers never wait; slow readers lose the oldest messages.
    #[default]
    Drop,
    /// Lossless: writers wait for the slowest reader.
    Block,
}

impl Policy {
    pub fn to_abi(self) -> u32 {
        match self {
            Policy::Drop => abi::POLICY_DROP,
            Policy::Block => abi::POLICY_BLOCK,
        }
    }

    pub fn from_abi(policy: u32) -> Option<Self> {
        match policy {
            abi::POLICY_DROP => Some(Policy::Drop),
            abi::POLICY_BLOCK => Some(Policy::Block),
            _ => None,
        }
    }
}

impl Policy {
    /// The name used in the config file, the API and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Drop => "drop",
            Policy::Block => "block",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Whose budget a write is charged to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The writer's uid: more fds or processes do not buy more.
    #[default]
    Uid,
    /// Each open file has its own budget.
    File,
}

impl Scope {
    /// The name used in the config file and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Uid => "uid",
            Scope::File => "file",
        }
    }

    pub fn to_abi(self) -> u32 {
        match self {
            Scope::Uid => abi::LIMIT_PER_UID,
            Scope::File => abi::LIMIT_PER_FILE,
        }
    }

    pub fn from_abi(scope: u32) -> Option<Self> {
        match scope {
            abi::LIMIT_PER_UID => Some(Scope::Uid),
            abi::LIMIT_PER_FILE => Some(Scope::File),
            _ => None,
        }
    }
}

/// A change to a room's rate limit: the fields given replace the room's,
/// the others stay (as `wg set` and `ip link set` do). A client that sends
/// a whole [`RateLimit`] sets every field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitChange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub byte_burst: Option<u32>,
}

impl LimitChange {
    pub fn is_empty(&self) -> bool {
        *self == LimitChange::default()
    }

    /// `current` with this change applied, checked as a whole.
    pub fn apply_to(&self, current: RateLimit) -> Result<RateLimit, String> {
        let limit = RateLimit {
            scope: self.scope.unwrap_or(current.scope),
            msgs_per_sec: self.msgs_per_sec.unwrap_or(current.msgs_per_sec),
            msg_burst: self.msg_burst.unwrap_or(current.msg_burst),
            bytes_per_sec: self.bytes_per_sec.unwrap_or(current.bytes_per_sec),
            byte_burst: self.byte_burst.unwrap_or(current.byte_burst),
        };
        limit.check()?;
        Ok(limit)
    }
}

/// A room's rate limit; a rate of 0 is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    pub scope: Scope,
    pub msgs_per_sec: u32,
    /// Messages a sender may send at once after being idle (0: one second's
    /// worth).
    pub msg_burst: u32,
    pub bytes_per_sec: u32,
    pub byte_burst: u32,
}

impl RateLimit {
    pub fn is_unlimited(&self) -> bool {
        self.msgs_per_sec == 0 && self.bytes_per_sec == 0
    }

    fn check(&self) -> Result<(), String> {
        if self.msgs_per_sec == 0 && self.msg_burst != 0 {
            return Err("rate_limit.msg_burst needs rate_limit.msgs_per_sec".into());
        }
        if self.bytes_per_sec == 0 && self.byte_burst != 0 {
            return Err("rate_limit.byte_burst needs rate_limit.bytes_per_sec".into());
        }
        Ok(())
    }

    /// Whether the limit is one the kernel will take as meant (a burst
    /// without its rate would be ignored).
    pub fn validate(&self) -> Result<(), String> {
        self.check()
    }

    /// The kernel's request for room `name`.
    pub fn to_abi(&self, name: &RoomName) -> abi::RateLimit {
        abi::RateLimit {
            size: size_of::<abi::RateLimit>() as u32,
            flags: 0,
            name: abi::name_field(name.as_str()).unwrap_or([0; abi::NAME_FIELD]),
            scope: self.scope.to_abi(),
            msgs_per_sec: self.msgs_per_sec,
            msg_burst: self.msg_burst,
            bytes_per_sec: self.bytes_per_sec,
            byte_burst: self.byte_burst,
            reserved: 0,
        }
    }
}

/// A user or group as written: a name or a numeric id (a number, or a
/// string of digits, as `chown` takes them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Principal {
    Id(u32),
    Name(String),
}

/// The highest id a user or group may have (`(uid_t)-1` means "none").
const MAX_ID: u32 = u32::MAX - 1;

impl std::str::FromStr for Principal {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty user or group name".into());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(id) if id <= MAX_ID => Ok(Principal::Id(id)),
                _ => Err(format!("{text} is not an id from 0 to {MAX_ID}")),
            };
        }
        Ok(Principal::Name(text.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: serde::Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Principal;

            fn expecting(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(out, "a user or group name, or an id from 0 to {MAX_ID}")
            }

            fn visit_i64<E: serde::de::Error>(self, id: i64) -> Result<Principal, E> {
                u32::try_from(id)
                    .ok()
                    .filter(|id| *id <= MAX_ID)
                    .map(Principal::Id)
                    .ok_or_else(|| E::custom(format!("{id} is not an id from 0 to {MAX_ID}")))
            }

            fn visit_u64<E: serde::de::Error>(self, id: u64) -> Result<Principal, E> {
                self.visit_i64(i64::try_from(id).unwrap_or(i64::MAX))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Principal, E> {
                text.parse().map_err(E::custom)
            }
        }
        input.deserialize_any(Visitor)
    }
}

impl Principal {
    fn user(&self, key: &str) -> Result<u32, String> {
        match self {
            Principal::Id(uid) => Ok(*uid),
            Principal::Name(name) => match nix::unistd::User::from_name(name) {
                Ok(Some(user)) => Ok(user.uid.as_raw()),
                Ok(None) => Err(format!("{key}: no user named {name:?} on this system")),
                Err(err) => Err(format!("{key}: looking up user {name:?}: {err}")),
            },
        }
    }

    fn group(&self, key: &str) -> Result<u32, String> {
        match self {
            Principal::Id(gid) => Ok(*gid),
            Principal::Name(name) => match nix::unistd::Group::from_name(name) {
                Ok(Some(group)) => Ok(group.gid.as_raw()),
                Ok(None) => Err(format!("{key}: no group named {name:?} on this system")),
                Err(err) => Err(format!("{key}: looking up group {name:?}: {err}")),
            },
        }
    }
}

/// A room as a user wrote it: everything optional, nothing checked yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomDraft {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msg: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Principal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Principal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// `block` rooms: how long a stopped reader may hold writers back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<MaxWait>,
}

/// A `block` room's bound on a laggard: milliseconds, or `"forever"` for a
/// strictly lossless room that one stopped reader can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaxWait {
    Millis(u32),
    Forever(Forever),
}

/// The word `"forever"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forever {
    Forever,
}

impl MaxWait {
    /// As the kernel takes it (`abi::MAX_WAIT_FOREVER` for forever).
    fn to_abi(self) -> Result<u32, String> {
        match self {
            MaxWait::Forever(_) => Ok(abi::MAX_WAIT_FOREVER),
            MaxWait::Millis(ms) if ms == 0 || ms == abi::MAX_WAIT_FOREVER => Err(format!(
                "max_wait = {ms} is out of range: 1 to {} milliseconds, or \"forever\"",
                abi::MAX_WAIT_FOREVER - 1
            )),
            MaxWait::Millis(ms) => Ok(ms),
        }
    }
}

/// Mode of a room's node unless declared: anyone may chat, like the
/// module's default room, so `cat` and `echo` work for every user.
pub const DEFAULT_MODE: u32 = 0o666;

/// A checked room declaration with every default filled in and every name
/// resolved: what the kernel is asked for, and what drift is measured
/// against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RoomDraft")]
pub struct RoomDecl {
    pub ring_bytes: u32,
    pub max_msg: u32,
    pub policy: Policy,
    pub owner: u32,
    pub group: u32,
    pub mode: u32,
    pub rate_limit: RateLimit,
    /// `block` rooms' bound on a laggard in milliseconds
    /// (`abi::MAX_WAIT_FOREVER`: none); 0 for `drop` rooms. Written as the
    /// config's `max_wait`, so a declaration reads back as it was written.
    #[serde(
        rename = "max_wait",
        skip_serializing_if = "is_zero",
        serialize_with = "serialize_max_wait"
    )]
    pub max_wait_ms: u32,
}

fn is_zero(ms: &u32) -> bool {
    *ms == 0
}

fn serialize_max_wait<S: serde::Serializer>(ms: &u32, out: S) -> Result<S::Ok, S::Error> {
    let wait = match *ms {
        abi::MAX_WAIT_FOREVER => MaxWait::Forever(Forever::Forever),
        ms => MaxWait::Millis(ms),
    };
    wait.serialize(out)
}

impl TryFrom<RoomDraft> for RoomDecl {
    type Error = String;

    fn try_from(draft: RoomDraft) -> Result<Self, String> {
        let ring_bytes = draft.ring_bytes.unwrap_or(abi::DEFAULT_RING_BYTES);
        if !(abi::MIN_RING_BYTES..=abi::MAX_RING_BYTES).contains(&ring_bytes) {
            return Err(format!(
                "ring_bytes = {ring_bytes} is out of range: {} to {}",
                abi::MIN_RING_BYTES,
                abi::MAX_RING_BYTES
            ));
        }
        let room_for_one = ring_bytes - abi::RECORD_OVERHEAD;
        let max_msg = draft
            .max_msg
            .unwrap_or(abi::DEFAULT_MAX_MSG.min(room_for_one));
        if max_msg == 0 || max_msg > abi::MAX_MAX_MSG {
            return Err(format!(
                "max_msg = {max_msg} is out of range: 1 to {}",
                abi::MAX_MAX_MSG
            ));
        }
        if max_msg > room_for_one {
            return Err(format!(
                "max_msg = {max_msg} does not fit ring_bytes = {ring_bytes}: a message \
                 takes max_msg + {} bytes of the ring; raise ring_bytes or lower max_msg",
                abi::RECORD_OVERHEAD
            ));
        }
        let mode = draft.mode.unwrap_or(DEFAULT_MODE);
        if mode > 0o777 {
            // `mode = 660` is decimal in TOML; say so only when that is what
            // happened (its digits read as octal make a mode).
            let digits = mode.to_string();
            let hint = match u32::from_str_radix(&digits, 8) {
                Ok(octal) if octal <= 0o777 => {
                    format!(" (TOML reads {digits} as decimal: write 0o{digits})")
                }
                _ => String::new(),
            };
            return Err(format!("mode = {mode:#o} has bits beyond 0o777{hint}"));
        }
        let rate_limit = draft.rate_limit.unwrap_or_default();
        rate_limit.check()?;
        let policy = draft.policy.unwrap_or_default();
        let max_wait_ms = match (policy, draft.max_wait) {
            (Policy::Drop, None) => 0,
            (Policy::Drop, Some(_)) => {
                return Err("max_wait applies to block rooms only (a drop room never \
                            makes writers wait)"
                    .to_owned());
            }
            (Policy::Block, None) => abi::DEFAULT_MAX_WAIT_MS,
            (Policy::Block, Some(wait)) => wait.to_abi()?,
        };
        Ok(RoomDecl {
            ring_bytes,
            max_msg,
            policy,
            owner: draft.owner.map_or(Ok(0), |p| p.user("owner"))?,
            group: draft.group.map_or(Ok(0), |p| p.group("group"))?,
            mode,
            rate_limit,
            max_wait_ms,
        })
    }
}

impl RoomDecl {
    /// The kernel's create request for room `name`.
    pub fn to_abi(&self, name: &RoomName) -> abi::RoomSpec {
        abi::RoomSpec {
            size: size_of::<abi::RoomSpec>() as u32,
            policy: self.policy.to_abi(),
            name: abi::name_field(name.as_str()).unwrap_or([0; abi::NAME_FIELD]),
            ring_bytes: self.ring_bytes,
            max_msg: self.max_msg,
            uid: self.owner,
            gid: self.group,
            mode: self.mode,
            flags: 0,
            max_wait_ms: self.max_wait_ms,
            reserved: 0,
        }
    }

    /// What the kernel reports for an existing room.
    pub fn from_info(info: &abi::RoomInfo) -> RoomDecl {
        RoomDecl {
            ring_bytes: info.ring_bytes,
            max_msg: info.max_msg,
            policy: Policy::from_abi(info.policy).unwrap_or_default(),
            owner: info.uid,
            group: info.gid,
            mode: info.mode,
            rate_limit: RateLimit {
                scope: Scope::from_abi(info.limit_scope).unwrap_or_default(),
                msgs_per_sec: info.msgs_per_sec,
                msg_burst: info.msg_burst,
                bytes_per_sec: info.bytes_per_sec,
                byte_burst: info.byte_burst,
            },
            max_wait_ms: info.max_wait_ms,
        }
    }

    /// Settings that only a new room can change (the kernel fixes them at
    /// creation), named as in the config file, where `self` and `other`
    /// differ.
    pub fn fixed_differences(&self, other: &RoomDecl) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |key: &str, want: String, have: String| {
            if want != have {
                out.push(format!("{key} {have} -> {want}"));
            }
        };
        diff(
            "ring_bytes",
            self.ring_bytes.to_string(),
            other.ring_bytes.to_string(),
        );
        diff(
            "max_msg",
            self.max_msg.to_string(),
            other.max_msg.to_string(),
        );
        diff("policy", self.policy.to_string(), other.policy.to_string());
        diff("owner", self.owner.to_string(), other.owner.to_string());
        diff("group", self.group.to_string(), other.group.to_string());
        diff(
            "mode",
            format!("{:#o}", self.mode),
            format!("{:#o}", other.mode),
        );
        out
    }

    /// The bound on laggards to set on the live room `have`, if it differs
    /// (kchatd changes it in place; a `drop` room has none).
    pub fn max_wait_change(&self, have: &RoomDecl) -> Option<u32> {
        let both_block = self.policy == Policy::Block && have.policy == Policy::Block;
        (both_block && self.max_wait_ms != have.max_wait_ms).then_some(self.max_wait_ms)
    }
}

/// A bound as the config file writes it.
pub fn describe_max_wait(ms: u32) -> String {
    match ms {
        abi::MAX_WAIT_FOREVER => "forever".to_owned(),
        ms => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(text: &str) -> Result<RoomDecl, String> {
        toml::from_str::<RoomDecl>(text).map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_fill_in_and_resolve() {
        let room = decl("").unwrap();
        assert_eq!(room.ring_bytes, abi::DEFAULT_RING_BYTES);
        assert_eq!(room.max_msg, abi::DEFAULT_MAX_MSG);
        assert_eq!(room.policy, Policy::Drop);
        assert_eq!((room.owner, room.group, room.mode), (0, 0, 0o666));
        assert!(room.rate_limit.is_unlimited());
        let small = decl("ring_bytes = 4096").unwrap();
        assert_eq!(small.max_msg, 4096 - abi::RECORD_OVERHEAD);
        let named = decl("owner = \"root\"\ngroup = \"root\"\nmode = 0o640").unwrap();
        assert_eq!((named.owner, named.group, named.mode), (0, 0, 0o640));
        assert_eq!(room.max_wait_ms, 0);
        let block = decl("policy = \"block\"").unwrap();
        assert_eq!(block.max_wait_ms, abi::DEFAULT_MAX_WAIT_MS);
        let bounded = decl("policy = \"block\"\nmax_wait = 2500").unwrap();
        assert_eq!(bounded.max_wait_ms, 2500);
        assert_eq!(bounded.to_abi(&"x".parse().unwrap()).max_wait_ms, 2500);
        let strict = decl("policy = \"block\"\nmax_wait = \"forever\"").unwrap();
        assert_eq!(strict.max_wait_ms, abi::MAX_WAIT_FOREVER);
    }

    #[test]
    fn the_decimal_hint_only_when_it_is_one() {
        let err = decl("mode = 0o1777").unwrap_err();
        assert!(!err.contains("decimal"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, needle) in [
            ("ring_bytes = 10", "ring_bytes = 10 is out of range"),
            (
                "ring_bytes = 4096\nmax_msg = 4096",
                "does not fit ring_bytes",
            ),
            ("max_msg = 0", "max_msg = 0 is out of range"),
            ("mode = 0o1777", "beyond 0o777"),
            ("mode = 660", "TOML reads 660 as decimal: write 0o660"),
            ("policy = \"fast\"", "unknown variant `fast`"),
            ("owner = \"no-such-user-kchat\"", "owner: no user named"),
            ("group = \"no-such-group-kchat\"", "group: no group named"),
            ("colour = 1", "unknown field `colour`"),
            ("[rate_limit]\nmsg_burst = 5", "msg_burst needs"),
            ("[rate_limit]\nscope = \"host\"", "unknown variant `host`"),
            ("ring_bytes = -1", "ring_bytes"),
            ("max_wait = 100", "block rooms only"),
            (
                "policy = \"block\"\nmax_wait = 0",
                "max_wait = 0 is out of range",
            ),
            ("policy = \"block\"\nmax_wait = \"soon\"", "max_wait"),
        ] {
            let err = decl(text).expect_err(text);
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn names_follow_the_kernel_rules() {
        assert!("lobby".parse::<RoomName>().is_ok());
        for bad in ["", "a/b", ".hidden", "control", &"x".repeat(32)] {
            assert!(bad.parse::<RoomName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_decl_survives_the_state_file() {
        let room =
            decl("ring_bytes = 8192\npolicy = \"block\"\n[rate_limit]\nmsgs_per_sec = 5").unwrap();
        let json = serde_json::to_string(&room).unwrap();
        assert_eq!(serde_json::from_str::<RoomDecl>(&json).unwrap(), room);
    }
}
