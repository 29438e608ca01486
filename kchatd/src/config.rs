//! `/etc/kchat/kchatd.toml`: rooms, global limits, where to listen.
//!
//! Every key is checked while the file is parsed: an unknown key, a value
//! out of range or an unknown user or group is an error that names the key
//! and its line, and the daemon then refuses to start (or, on reload, keeps
//! the config it runs).

use kchat_proto::room::{RoomDecl, RoomName};
use kchat_uapi::abi;
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

pub const DEFAULT_PATH: &str = "/etc/kchat/kchatd.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid, {problem}")]
    Parse { path: PathBuf, problem: ParseError },
}

/// What is wrong with a TOML file, at the line of the key it is about.
///
/// toml reports checks that look at a whole table (a value out of range, an
/// unknown user, limits that do not fit together) at the table's header;
/// when the message names one of the table's keys, this points at that
/// key's line instead, as a reader looks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
    source_line: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            out,
            "line {}: {}\n  {} | {}",
            self.line, self.message, self.line, self.source_line
        )
    }
}

impl std::error::Error for ParseError {}

/// Whether TOML line `line` sets `key` (`key = ...`).
fn assigns(line: &str, key: &str) -> bool {
    line.trim_start()
        .strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

impl ParseError {
    pub fn new(text: &str, err: &toml::de::Error) -> ParseError {
        let message = err.message().trim_end().to_owned();
        let lines: Vec<&str> = text.lines().collect();
        let mut line = err.span().map_or(1, |span| {
            text[..span.start.min(text.len())].matches('\n').count() + 1
        });
        // The key the message is about: its first word, before " =" or
        // ":", without a table prefix (`limits.max_rooms` -> `max_rooms`).
        let key = message
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .rsplit('.')
            .next()
            .unwrap_or("");
        let at_header = lines
            .get(line - 1)
            .is_some_and(|l| l.trim_start().starts_with('['));
        if at_header
            && !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            let key_line = lines
                .iter()
                .enumerate()
                .skip(line)
                .take_while(|(_, l)| !l.trim_start().starts_with('['))
                .find(|(_, l)| assigns(l, key));
            if let Some((index, _)) = key_line {
                line = index + 1;
            }
        }
        ParseError {
            line,
            message,
            source_line: lines.get(line - 1).unwrap_or(&"").to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The control socket kchatctl talks to.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where the state file (`state.json`) lives.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Members of this group may change rooms through the socket, besides
    /// root. Anyone may read.
    #[serde(default)]
    pub admin_group: Option<AdminGroup>,
    #[serde(default)]
    pub metrics: Metrics,
    /// Module-wide limits, applied when kchatd attaches.
    #[serde(default)]
    pub limits: Option<GlobalLimits>,
    #[serde(default)]
    pub rooms: BTreeMap<RoomName, RoomDecl>,
}

fn default_socket() -> PathBuf {
    kchat_proto::api::DEFAULT_SOCKET.into()
}

fn default_state_dir() -> PathBuf {
    "/var/lib/kchat".into()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: default_socket(),
            state_dir: default_state_dir(),
            admin_group: None,
            metrics: Metrics::default(),
            limits: None,
            rooms: BTreeMap::new(),
        }
    }
}

/// The admin group, resolved to its gid when the config is read.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AdminGroup {
    pub name: String,
    pub gid: u32,
}

impl TryFrom<String> for AdminGroup {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match nix::unistd::Group::from_name(&name) {
            Ok(Some(group)) => Ok(AdminGroup {
                name,
                gid: group.gid.as_raw(),
            }),
            Ok(None) => Err(format!(
                "admin_group: no group named {name:?} on this system; the kchat package makes \
                 \"kchat\" (systemd-sysusers kchat.conf), or create one with groupadd"
            )),
            Err(err) => Err(format!("admin_group: looking up {name:?}: {err}")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where `/metrics` and `/healthz` are served; loopback by default. Set
    /// `enabled = false` to serve nothing.
    #[serde(default = "default_listen", deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most rooms given their own `room` label (the first by name); the
    /// rest get no per-room series, counted by `kchat_rooms_unlabelled`.
    #[serde(default = "default_room_labels", deserialize_with = "room_labels")]
    pub max_room_labels: usize,
}

/// `listen`: an address and port, `:PORT` for every interface (as
/// Prometheus exporters take it), or `HOST:PORT` with a name resolved when
/// the config is read.
fn listen_address<'de, D: serde::Deserializer<'de>>(input: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(input)?;
    parse_listen(&text).map_err(serde::de::Error::custom)
}

pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let hint = "not an address: give \"127.0.0.1:9477\", \"[::1]:9477\", \":9477\" (every interface) or \"localhost:9477\"";
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("{text:?} is {hint}"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    match text.to_socket_addrs() {
        Ok(mut addresses) => addresses
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(err) => Err(format!("{text:?} is {hint} ({err})")),
    }
}

fn room_labels<'de, D: serde::Deserializer<'de>>(input: D) -> Result<usize, D::Error> {
    let labels = usize::deserialize(input)?;
    let most = abi::MAX_MINORS as usize;
    if (1..=most).contains(&labels) {
        Ok(labels)
    } else {
        Err(serde::de::Error::custom(format!(
            "max_room_labels = {labels} is out of range: 1 to {most}"
        )))
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9477))
}

fn default_true() -> bool {
    true
}

fn default_room_labels() -> usize {
    abi::MAX_MINORS as usize
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: default_listen(),
            enabled: true,
            max_room_labels: default_room_labels(),
        }
    }
}

/// `[limits]`: each key optional; what is left out keeps the module's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawLimits")]
pub struct GlobalLimits {
    pub max_rooms: Option<u32>,
    pub max_readers: Option<u32>,
    pub max_total_ring_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_rooms: Option<u32>,
    max_readers: Option<u32>,
    max_total_ring_bytes: Option<u64>,
}

impl TryFrom<RawLimits> for GlobalLimits {
    type Error = String;

    fn try_from(raw: RawLimits) -> Result<Self, String> {
        let check = |key: &str, value: Option<u64>, low: u64, high: u64| match value {
            Some(v) if !(low..=high).contains(&v) => Err(format!(
                "limits.{key} = {v} is out of range: {low} to {high}"
            )),
            _ => Ok(()),
        };
        check(
            "max_rooms",
            raw.max_rooms.map(u64::from),
            1,
            u64::from(abi::MAX_MINORS - 1),
        )?;
        check(
            "max_readers",
            raw.max_readers.map(u64::from),
            1,
            u64::from(abi::MAX_READERS_LIMIT),
        )?;
        check(
            "max_total_ring_bytes",
            raw.max_total_ring_bytes,
            u64::from(abi::MIN_RING_BYTES),
            abi::MAX_TOTAL_RING_LIMIT,
        )?;
        Ok(GlobalLimits {
            max_rooms: raw.max_rooms,
            max_readers: raw.max_readers,
            max_total_ring_bytes: raw.max_total_ring_bytes,
        })
    }
}

impl GlobalLimits {
    /// `current` with the keys this config sets.
    pub fn merged(&self, current: abi::GlobalLimits) -> abi::GlobalLimits {
        abi::GlobalLimits {
            max_rooms: self.max_rooms.unwrap_or(current.max_rooms),
            max_readers: self.max_readers.unwrap_or(current.max_readers),
            max_total_ring_bytes: self
                .max_total_ring_bytes
                .unwrap_or(current.max_total_ring_bytes),
            ..current
        }
    }
}

/// Parses TOML into `T`, errors at the line of the key they are about.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    toml::from_str(text).map_err(|err| ParseError::new(text, &err))
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, ParseError> {
        let config: Config = parse_toml(text)?;
        // Relative paths would depend on the directory kchatd was started
        // in; checked here, after parsing, at the key's own line.
        for (key, path) in [("socket", &config.socket), ("state_dir", &config.state_dir)] {
            if path.is_relative() {
                let line = text
                    .lines()
                    .position(|l| assigns(l, key))
                    .map_or(1, |i| i + 1);
                return Err(ParseError {
                    line,
                    message: format!(
                        "{key} = {:?} is a relative path; give an absolute one",
                        path.display().to_string()
                    ),
                    source_line: text.lines().nth(line - 1).unwrap_or("").to_owned(),
                });
            }
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|problem| ConfigError::Parse {
            path: path.to_owned(),
            problem,
        })
    }
}

/// The file `kchatctl apply` sends: only rooms.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsFile {
    #[serde(default)]
    pub rooms: BTreeMap<RoomName, RoomDecl>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kchat_proto::room::Policy;

    #[test]
    fn listen_takes_the_forms_exporters_take() {
        assert_eq!(
            parse_listen("127.0.0.1:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert_eq!(parse_listen(":9477").unwrap().to_string(), "0.0.0.0:9477");
        assert!(parse_listen("localhost:9477").unwrap().ip().is_loopback());
        assert!(parse_listen(":x").is_err());
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn a_full_file_parses() {
        let config = Config::parse(
            r#"
socket = "/tmp/k.sock"
state_dir = "/tmp/kstate"
admin_group = "root"

[metrics]
listen = "127.0.0.1:9999"
max_room_labels = 10

[limits]
max_rooms = 32

[rooms.ops]
policy = "block"
mode = 0o660
group = "root"

[rooms.ops.rate_limit]
msgs_per_sec = 10
msg_burst = 20
"#,
        )
        .unwrap();
        assert_eq!(config.admin_group.unwrap().gid, 0);
        assert_eq!(config.metrics.listen.port(), 9999);
        assert_eq!(config.limits.unwrap().max_rooms, Some(32));
        let ops = &config.rooms[&"ops".parse::<RoomName>().unwrap()];
        assert_eq!(ops.policy, Policy::Block);
        assert_eq!(ops.mode, 0o660);
        assert_eq!(ops.rate_limit.msg_burst, 20);
    }

    /// Each bad file is refused with the key and the line named.
    #[test]
    fn bad_files_name_key_and_line() {
        for (text, line, needle) in [
            ("sokcet = \"/x\"", 1, "unknown field `sokcet`"),
            (
                "\n[rooms.ops]\nmode = 0o600\nring_bytes = 1",
                4,
                "ring_bytes = 1 is out of range",
            ),
            ("\n\n[rooms.\"a/b\"]", 3, "invalid room name"),
            ("[metrics]\nlisten = \"nowhere\"", 2, "not an address"),
            ("[limits]\nmax_rooms = 0", 2, "limits.max_rooms = 0"),
            (
                "[rooms.a]\npolicy = \"drop\"\nmax_msg = 0\n[rooms.b]\nmax_msg = 0",
                3,
                "max_msg = 0",
            ),
            ("[rooms.a]\nowner = -1", 2, "-1 is not an id"),
            ("state_dir = \"var/lib\"", 1, "relative path"),
            ("[metrics]\nmax_room_labels = 0", 2, "max_room_labels = 0"),
            (
                "admin_group = \"no-such-group-kchat\"",
                1,
                "admin_group: no group named",
            ),
            ("[rooms.x]\npolicy = \"slow\"", 2, "unknown variant `slow`"),
            ("[rooms.x]\nmode = 0o7777", 2, "beyond 0o777"),
            ("rooms = 3", 1, "invalid type"),
        ] {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?} gave {err}");
            assert!(
                err.contains(&format!("line {line}")),
                "{text:?} does not name line {line}: {err}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever the file holds, parsing ends in a config or an error
        /// that says where, never in a panic.
        #[test]
        fn any_text_parses_or_says_where(text in "\\PC{0,400}") {
            if let Err(err) = Config::parse(&text) {
                let message = err.to_string();
                proptest::prop_assert!(message.contains("line") || message.contains("TOML"), "{message}");
            }
        }

        /// Mangled values of real keys are refused with their line.
        #[test]
        fn bad_values_of_real_keys_name_their_line(
            key in proptest::sample::select(vec!["ring_bytes", "max_msg", "policy", "mode", "owner", "group"]),
            value in "-?[0-9]{1,12}|\"[a-z/ ]{0,10}\"|0o[0-9]{1,6}|true",
        ) {
            let text = format!("[rooms.fuzz]\n{key} = {value}\n");
            if let Err(err) = Config::parse(&text) {
                proptest::prop_assert!(err.to_string().contains("line"), "{err}");
            }
        }
    }
}
