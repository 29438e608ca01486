//! `kchat-bridge status`: each bridged room's state, read from the running
//! bridge's own `/metrics` (the address its config names), as a table or
//! `--json`.

use crate::config::Config;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct RoomStatus {
    pub delivery: String,
    pub direction: String,
    pub up: bool,
    pub published: u64,
    pub received: u64,
    pub relayed: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub dropped: u64,
    /// Messages not believed (another node's subject, too many nodes).
    pub refused: u64,
    pub local_lost: u64,
    pub pending: u64,
    pub errors: u64,
    pub lag_seconds: f64,
    /// The room's last state save failed (and none worked since).
    pub state_save_failing: bool,
    pub state_save_failures: u64,
    /// Another kchat-bridge on this machine bridges the room, so this one
    /// does not.
    pub locked_elsewhere: bool,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub connected: bool,
    pub reconnects: u64,
    pub rooms: BTreeMap<String, RoomStatus>,
}

/// One sample line of the text exposition: name, labels, value.
fn sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key, value.strip_prefix('"')?.strip_suffix('"')?))
        })
        .collect();
    Some((name, labels, value))
}

/// The status the metrics `text` tell, for the rooms `config` bridges.
pub fn from_metrics(config: &Config, text: &str) -> Status {
    let mut status = Status {
        node: config.node.clone(),
        ..Status::default()
    };
    for room in config.rooms.keys() {
        status.rooms.insert(room.clone(), RoomStatus::default());
    }
    for (name, labels, value) in text.lines().filter_map(sample) {
        let Some(name) = name.strip_prefix("kchat_bridge_") else {
            continue;
        };
        let count = value as u64;
        match name {
            "connected" => status.connected = value == 1.0,
            "reconnects_total" => status.reconnects = count,
            _ => {}
        }
        let Some(room) = labels.get("room").and_then(|r| status.rooms.get_mut(*r)) else {
            continue;
        };
        match name {
            "room_delivery" if value == 1.0 => {
                room.delivery = labels.get("delivery").unwrap_or(&"").to_string();
                room.direction = labels.get("direction").unwrap_or(&"").to_string();
            }
            "room_up" => room.up = value == 1.0,
            "published_total" => room.published = count,
            "received_total" => room.received = count,
            "relayed_total" => room.relayed = count,
            "gaps_total" => room.gaps = count,
            "duplicates_total" => room.duplicates = count,
            "dropped_total" => room.dropped += count,
            "refused_total" => room.refused += count,
            "local_lost_total" => room.local_lost = count,
            "pending" => room.pending = count,
            "room_errors_total" => room.errors = count,
            "relay_lag_seconds" => room.lag_seconds = value,
            "state_save_failing" => room.state_save_failing = value == 1.0,
            "state_save_failures_total" => room.state_save_failures = count,
            "room_locked" => room.locked_elsewhere = value == 1.0,
            _ => {}
        }
    }
    status
}

pub fn print(status: &Status) {
    println!(
        "node {}: NATS {} ({} connections made)",
        status.node,
        if status.connected {
            "connected"
        } else {
            "disconnected"
        },
        status.reconnects
    );
    println!(
        "{:<20} {:<9} {:<4} {:<9} {:<7} {:>10} {:>10} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "ROOM",
        "DELIVERY",
        "DIR",
        "STATE",
        "SAVES",
        "PUBLISHED",
        "RELAYED",
        "GAPS",
        "DUPS",
        "DROPPED",
        "REFUSED",
        "PENDING",
        "ERRORS",
        "LAG"
    );
    for (name, room) in &status.rooms {
        println!(
            "{:<20} {:<9} {:<4} {:<9} {:<7} {:>10} {:>10} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7.3}s",
            name,
            if room.delivery.is_empty() {
                "-"
            } else {
                &room.delivery
            },
            if room.direction.is_empty() {
                "-"
            } else {
                &room.direction
            },
            if room.locked_elsewhere {
                "elsewhere"
            } else if room.up {
                "up"
            } else {
                "waiting"
            },
            if room.state_save_failing {
                "FAILING"
            } else {
                "ok"
            },
            room.published,
            room.relayed,
            room.gaps,
            room.duplicates,
            room.dropped,
            room.refused,
            room.pending,
            room.errors,
            room.lag_seconds
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_become_a_status() {
        let config = Config::parse(
            "node = \"n1\"\n[nats]\nservers = [\"nats://x:1\"]\n[rooms.lobby]\n[rooms.ops]\n",
        )
        .unwrap();
        let text = "# HELP x\nkchat_bridge_connected 1\nkchat_bridge_reconnects_total 2\n\
            kchat_bridge_room_delivery{room=\"lobby\",delivery=\"jetstream\",direction=\"both\"} 1\n\
            kchat_bridge_room_up{room=\"lobby\"} 1\nkchat_bridge_published_total{room=\"lobby\"} 5\n\
            kchat_bridge_dropped_total{room=\"lobby\",reason=\"oversize\"} 2\n\
            kchat_bridge_dropped_total{room=\"lobby\",reason=\"malformed\"} 1\n\
            kchat_bridge_refused_total{room=\"lobby\",reason=\"forged_node\"} 4\n\
            kchat_bridge_relayed_total{room=\"elsewhere\"} 9\n\
            kchat_bridge_state_save_failing{room=\"lobby\"} 1\n\
            kchat_bridge_state_save_failures_total{room=\"lobby\"} 7\n\
            kchat_bridge_room_locked{room=\"ops\"} 1\n# EOF\n";
        let status = from_metrics(&config, text);
        assert!(status.connected);
        assert_eq!(status.reconnects, 2);
        let lobby = &status.rooms["lobby"];
        assert_eq!(
            (
                lobby.delivery.as_str(),
                lobby.up,
                lobby.published,
                lobby.dropped
            ),
            ("jetstream", true, 5, 3)
        );
        assert_eq!(lobby.refused, 4);
        assert!(lobby.state_save_failing && !lobby.locked_elsewhere);
        assert_eq!(lobby.state_save_failures, 7);
        assert_eq!(
            status.rooms["ops"],
            RoomStatus {
                locked_elsewhere: true,
                ..RoomStatus::default()
            }
        );
        assert!(!status.rooms.contains_key("elsewhere"));
    }
}
