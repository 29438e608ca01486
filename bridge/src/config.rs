//! `/etc/kchat/bridge.toml`: this node's name, the NATS servers, which
//! rooms go where. Checked whole when read (`kchat-bridge --check`).

use serde::Deserialize;
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

pub const DEFAULT_PATH: &str = "/etc/kchat/bridge.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name in relayed messages (a room name's rules).
    pub node: String,
    pub nats: Nats,
    #[serde(default)]
    pub metrics: Metrics,
    /// Where JetStream rooms keep their place across restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How many other nodes a room remembers (gap counts, saved places):
    /// past it, messages from a node not yet known are refused and counted,
    /// so that made-up node names cannot grow memory or state files.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
    /// The limits of the streams `block` rooms go through.
    #[serde(default)]
    pub jetstream: StreamLimits,
    pub rooms: BTreeMap<String, RoomBridge>,
}

/// What a room's JetStream stream may hold: past `max_bytes`, `max_msgs`
/// or `max_age_secs` the server discards the oldest messages (a node away
/// longer than that misses them); a message over `max_msg_size` is never
/// stored, so a room that takes one is not bridged. `replicas` copies on a
/// clustered server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamLimits {
    pub max_bytes: i64,
    /// -1: no limit on the count (the bytes and the age still bound it).
    pub max_msgs: i64,
    pub max_msg_size: i32,
    pub max_age_secs: u64,
    pub replicas: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_bytes: 1 << 30,
            max_msgs: -1,
            max_msg_size: 1 << 20,
            max_age_secs: 24 * 3600,
            replicas: 1,
        }
    }
}

impl StreamLimits {
    fn check(&self) -> Result<(), String> {
        if self.max_bytes <= 0 {
            return Err(format!(
                "jetstream.max_bytes = {}: give a size in bytes (the default is 1 GiB)",
                self.max_bytes
            ));
        }
        if self.max_msgs == 0 || self.max_msgs < -1 {
            return Err(format!(
                "jetstream.max_msgs = {}: give a count, or -1 for none",
                self.max_msgs
            ));
        }
        if self.max_msg_size <= 0 {
            return Err(format!(
                "jetstream.max_msg_size = {}: give a size in bytes",
                self.max_msg_size
            ));
        }
        if self.max_age_secs == 0 {
            return Err("jetstream.max_age_secs = 0: give seconds (the default is a day)".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!(
                "jetstream.replicas = {}: 1 to 5 (JetStream's range)",
                self.replicas
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nats {
    /// `nats://host:port` URLs.
    pub servers: Vec<String>,
    /// A token, or a credentials file (`.creds`), if the server wants one.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// Or a user and password: a user of its own per node is what lets
    /// the server hold each node to its own subjects
    /// (deploy/nats/nats-server.conf).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// TLS: required (also implied by `tls://` URLs), the CA to trust
    /// instead of the system's, a client certificate and its key.
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Send a token or password over a plain connection to a server that
    /// is not on this machine (a link private already, such as a VPN).
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// A room's subject is `<subject_prefix>.<room>`; each node publishes
    /// on `<subject_prefix>.<room>.<node>`.
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/kchat-bridge")
}

fn default_max_nodes() -> usize {
    crate::trust::DEFAULT_MAX_NODES
}

fn default_prefix() -> String {
    "kchat".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9478))
}

/// What crosses for one room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Publish what is written here; relay nothing in.
    Out,
    /// Relay in what others publish; publish nothing.
    In,
    #[default]
    Both,
}

impl Direction {
    pub fn publishes(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn relays(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
            Direction::Both => "both",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomBridge {
    #[serde(default)]
    pub direction: Direction,
    /// The subject's last part, if not the room's name (a room bridged to
    /// another room's subject).
    #[serde(default)]
    pub subject: Option<String>,
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|err| err.to_string())?;
        let valid = |name: &str| kchat_uapi::name::validate(name.as_bytes()).is_ok();
        if !valid(&config.node) {
            return Err(format!(
                "node = {:?}: 1 to 31 letters, digits, '_', '.', '-'",
                config.node
            ));
        }
        if config.max_nodes == 0 {
            return Err("max_nodes = 0: give at least 1 (the default is 64)".into());
        }
        if config.nats.servers.is_empty() {
            return Err("nats.servers is empty: name at least one nats://host:port".into());
        }
        if config.nats.user.is_some() != config.nats.password.is_some() {
            return Err("nats.user and nats.password: give both or neither".into());
        }
        let ways = [
            config.nats.token.is_some(),
            config.nats.credentials.is_some(),
            config.nats.user.is_some(),
        ];
        if ways.into_iter().filter(|&way| way).count() > 1 {
            return Err(
                "nats.token, nats.credentials, nats.user and password: give one way to log in"
                    .into(),
            );
        }
        if config.nats.tls_cert.is_some() != config.nats.tls_key.is_some() {
            return Err("nats.tls_cert and nats.tls_key: give both or neither".into());
        }
        for (key, path) in [
            ("credentials", &config.nats.credentials),
            ("tls_ca", &config.nats.tls_ca),
            ("tls_cert", &config.nats.tls_cert),
            ("tls_key", &config.nats.tls_key),
        ] {
            if let Some(path) = path
                && !path.is_absolute()
            {
                return Err(format!("nats.{key} = {path:?}: give an absolute path"));
            }
        }
        crate::connect::check(&config.nats)?;
        config.jetstream.check()?;
        if !config.state_dir.is_absolute() {
            return Err(format!(
                "state_dir = {:?}: give an absolute path",
                config.state_dir
            ));
        }
        let prefix_ok = config.nats.subject_prefix.split('.').all(valid);
        if !prefix_ok {
            return Err(format!(
                "nats.subject_prefix = {:?}: dot-separated parts of letters, digits, '_', '-'",
                config.nats.subject_prefix
            ));
        }
        for (room, bridge) in &config.rooms {
            if !valid(room) {
                return Err(format!("[rooms.{room:?}]: not a room name"));
            }
            if let Some(subject) = &bridge.subject
                && !valid(subject)
            {
                return Err(format!(
                    "rooms.{room}.subject = {subject:?}: not a subject part"
                ));
            }
        }
        Ok(config)
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))?;
        Config::parse(&text).map_err(|err| anyhow::anyhow!("{} is invalid: {err}", path.display()))
    }

    /// The NATS subject of `room`: its nodes publish one token below it.
    pub fn subject(&self, room: &str, bridge: &RoomBridge) -> String {
        format!(
            "{}.{}",
            self.nats.subject_prefix,
            bridge.subject.as_deref().unwrap_or(room)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "node = \"node-a\"\n[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n[rooms.lobby]\n[rooms.ops]\ndirection = \"out\"\nsubject = \"ops-all\"\n";

    #[test]
    fn a_good_file_parses() {
        let config = Config::parse(GOOD).unwrap();
        assert_eq!(config.rooms["lobby"].direction, Direction::Both);
        assert_eq!(config.max_nodes, 64);
        assert_eq!(config.subject("ops", &config.rooms["ops"]), "kchat.ops-all");
        assert_eq!(
            config.subject("lobby", &config.rooms["lobby"]),
            "kchat.lobby"
        );
    }

    #[test]
    fn bad_files_say_why() {
        for (text, needle) in [
            (GOOD.replace("node-a", "a/b"), "node"),
            (
                GOOD.replace("[\"nats://127.0.0.1:4222\"]", "[]"),
                "servers is empty",
            ),
            (
                GOOD.replace("direction = \"out\"", "direction = \"sideways\""),
                "sideways",
            ),
            (
                GOOD.replace("[rooms.lobby]", "[rooms.\"a b\"]"),
                "not a room name",
            ),
            (format!("{GOOD}colour = 1\n"), "unknown field"),
            (format!("state_dir = \"rel\"\n{GOOD}"), "absolute"),
            (format!("max_nodes = 0\n{GOOD}"), "max_nodes"),
            (
                GOOD.replace("[nats]\n", "[nats]\nuser = \"node-a\"\n"),
                "nats.password",
            ),
            (
                GOOD.replace(
                    "[nats]\n",
                    "[nats]\nuser = \"a\"\npassword = \"p\"\ntoken = \"t\"\n",
                ),
                "one way to log in",
            ),
            (
                GOOD.replace("[nats]\n", "[nats]\ntls_cert = \"/a.pem\"\n"),
                "tls_key",
            ),
            (
                GOOD.replace("[nats]\n", "[nats]\ntls_ca = \"ca.pem\"\n"),
                "absolute",
            ),
            (
                GOOD.replace("[nats]\n", "[nats]\nsubject_prefix = \"a.*\"\n"),
                "subject_prefix",
            ),
            (
                format!("{GOOD}[jetstream]\nreplicas = 7\n"),
                "jetstream.replicas",
            ),
            (
                format!("{GOOD}[jetstream]\nmax_msgs = 0\n"),
                "jetstream.max_msgs",
            ),
            (
                format!("{GOOD}[jetstream]\nmax_bytes = -5\n"),
                "jetstream.max_bytes",
            ),
            (
                format!("{GOOD}[jetstream]\nmax_size = 5\n"),
                "unknown field",
            ),
            (
                GOOD.replace("127.0.0.1", "10.0.0.5")
                    .replace("[nats]\n", "[nats]\ntoken = \"t\"\n"),
                "in clear",
            ),
        ] {
            let err = Config::parse(&text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
