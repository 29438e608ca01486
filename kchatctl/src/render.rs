//! Human-readable output. Scripts use `--json`; these tables may change.

use kchat_proto::{
    api::{Action, Change, Event, EventKind, ReaderView, RoomView, Status},
    room::{describe_max_wait, Policy},
};
use std::fmt::Write;

/// Left-aligned columns, two spaces apart, sized to the widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A uid as `ls -l` shows it: the name, or the number if it has none.
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |user| user.name)
}

/// A gid as `ls -l` shows it.
fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |group| group.name)
}

/// Bytes with a binary unit, as `ls -h` would.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

pub fn status(status: &Status) -> String {
    let mut out = String::new();
    let module = if status.attached {
        format!(
            "attached (ABI version {})",
            status.abi_version.unwrap_or_default()
        )
    } else {
        format!(
            "NOT attached: {}",
            status.detached_reason.as_deref().unwrap_or("unknown")
        )
    };
    let _ = writeln!(out, "kchatd {}", status.version);
    let _ = writeln!(out, "module:  {module}");
    let _ = writeln!(out, "rooms:   {}", status.rooms);
    let _ = writeln!(out, "config:  {}", status.config_path);
    let _ = writeln!(out, "state:   {}", status.state_path);
    if let Some(err) = &status.last_error {
        let _ = writeln!(out, "last error: {err}");
    }
    let names = |rooms: &[kchat_proto::room::RoomName]| {
        rooms
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !status.missing_rooms.is_empty() {
        let _ = writeln!(
            out,
            "declared but missing: {} (kchatd retries each pass; see last error)",
            names(&status.missing_rooms)
        );
    }
    if !status.deleted_config_rooms.is_empty() {
        let _ = writeln!(
            out,
            "deleted config rooms: {} (kchatctl reset ROOM brings one back)",
            names(&status.deleted_config_rooms)
        );
    }
    if !status.overridden_rooms.is_empty() {
        let _ = writeln!(
            out,
            "rate limits set over the config's: {} (kchatctl reset ROOM goes back)",
            names(&status.overridden_rooms)
        );
    }
    out
}

pub fn list(rooms: &[RoomView]) -> String {
    let rows: Vec<Vec<String>> = rooms
        .iter()
        .map(|room| {
            vec![
                room.name.to_string(),
                room.origin.as_str().into(),
                room.settings.policy.to_string(),
                room.counters.readers.to_string(),
                room.counters.writers.to_string(),
                percent(
                    room.counters.ring_used_bytes,
                    u64::from(room.settings.ring_bytes),
                ),
                bytes(u64::from(room.settings.ring_bytes)),
                format!("{:04o}", room.settings.mode),
                format!(
                    "{}:{}",
                    user_name(room.settings.owner),
                    group_name(room.settings.group)
                ),
                notes(room),
            ]
        })
        .collect();
    table(
        &[
            "ROOM", "ORIGIN", "POLICY", "READERS", "WRITERS", "FILL", "RING", "MODE", "OWNER", "",
        ],
        &rows,
    )
}

/// What `list` flags about a room: settings that differ from its
/// declaration, a limit that overrides the config's.
fn notes(room: &RoomView) -> String {
    let mut notes = Vec::new();
    if !room.drift.is_empty() {
        notes.push("drift");
    }
    if room.limit_overridden {
        notes.push("limit-set");
    }
    notes.join(",")
}

/// A duration for people: ms under a second, then seconds, minutes, hours.
fn age(ns: u64) -> String {
    if ns == 0 {
        return "-".into();
    }
    match ns as f64 / 1e9 {
        s if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

pub fn readers(readers: &[ReaderView]) -> String {
    if readers.is_empty() {
        return "no readers\n".into();
    }
    let rows: Vec<Vec<String>> = readers
        .iter()
        .map(|r| {
            vec![
                if r.pid == 0 {
                    "-".into()
                } else {
                    r.pid.to_string()
                },
                user_name(r.uid),
                group_name(r.gid),
                r.lag_msgs.to_string(),
                bytes(r.lag_bytes),
                age(r.behind_ns),
                r.lost.to_string(),
            ]
        })
        .collect();
    table(
        &["PID", "USER", "GROUP", "UNREAD", "BYTES", "BEHIND", "LOST"],
        &rows,
    )
}

pub fn info(room: &RoomView) -> String {
    let s = &room.settings;
    let c = &room.counters;
    let mut out = String::new();
    let mut field = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<14} {value}");
    };
    field("room", room.name.to_string());
    field("node", format!("/dev/kchat/{}", room.name));
    field("origin", room.origin.as_str().into());
    field("policy", s.policy.to_string());
    field(
        "ring",
        format!(
            "{} ({} used, {} messages)",
            bytes(u64::from(s.ring_bytes)),
            bytes(c.ring_used_bytes),
            c.ring_msgs
        ),
    );
    field("max message", bytes(u64::from(s.max_msg)));
    if s.policy == Policy::Block {
        let wait = describe_max_wait(s.max_wait_ms);
        field(
            "max wait",
            if wait == "forever" {
                wait
            } else {
                format!("{wait} ms")
            },
        );
    }
    field(
        "owner",
        format!(
            "{}:{} mode {:04o}",
            user_name(s.owner),
            group_name(s.group),
            s.mode
        ),
    );
    let overridden = if room.limit_overridden {
        " (set with kchatctl over the config's; kchatctl reset goes back)"
    } else {
        ""
    };
    field(
        "rate limit",
        format!("{}{overridden}", limit_text(&room.settings.rate_limit)),
    );
    field("readers", c.readers.to_string());
    field("writers", c.writers.to_string());
    field("sequence", format!("{} to {}", c.first_seq, c.next_seq));
    field("messages", format!("{} ({})", c.msgs_in, bytes(c.bytes_in)));
    field("deliveries", c.deliveries.to_string());
    field("lost", c.lost.to_string());
    field("throttled", c.throttled.to_string());
    field("writer waits", c.writer_waits.to_string());
    field("lag evictions", c.laggard_evictions.to_string());
    for drift in &room.drift {
        field("drift", format!("{drift} (recreate the room to apply)"));
    }
    out
}

fn limit_text(limit: &kchat_proto::room::RateLimit) -> String {
    if limit.is_unlimited() {
        return "none".into();
    }
    format!(
        "{} msg/s burst {}, {} B/s burst {}, per {}",
        limit.msgs_per_sec,
        limit.msg_burst,
        limit.bytes_per_sec,
        limit.byte_burst,
        limit.scope.as_str()
    )
}

pub fn stats(rooms: &[RoomView]) -> String {
    let rows: Vec<Vec<String>> = rooms
        .iter()
        .map(|room| {
            let c = &room.counters;
            vec![
                room.name.to_string(),
                c.msgs_in.to_string(),
                bytes(c.bytes_in),
                c.deliveries.to_string(),
                c.lost.to_string(),
                c.throttled.to_string(),
                c.writer_waits.to_string(),
                c.readers.to_string(),
                percent(c.ring_used_bytes, u64::from(room.settings.ring_bytes)),
            ]
        })
        .collect();
    table(
        &[
            "ROOM",
            "MESSAGES",
            "BYTES",
            "DELIVERED",
            "LOST",
            "THROTTLED",
            "WAITS",
            "READERS",
            "FILL",
        ],
        &rows,
    )
}

pub fn plan(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "nothing to change\n".into();
    }
    let mut out = String::new();
    for change in changes {
        let sign = match change.action {
            Action::Create => "+ create",
            Action::Delete => "- delete",
            Action::SetLimit => "~ set-limit",
            Action::SetMaxWait => "~ set-max-wait",
            Action::Drift => "! drift",
        };
        let _ = writeln!(out, "{sign:<12} {:<16} {}", change.room, change.detail);
    }
    out
}

pub fn event(event: &Event) -> String {
    let room = event
        .room
        .as_ref()
        .map_or("-".to_owned(), |r| r.to_string());
    let what = match event.kind {
        EventKind::Attached => "kchatd attached to the module".to_owned(),
        EventKind::Detached => "kchatd lost the module".to_owned(),
        EventKind::RoomCreated => "room created".to_owned(),
        EventKind::RoomDeleted => "room deleted".to_owned(),
        EventKind::Lost => format!("{} message(s) lost by slow readers", event.count),
        EventKind::Throttled => format!("{} write(s) throttled", event.count),
    };
    format!("{} {room} {what}\n", event_time(event))
}

/// When an event happened, in UTC to the millisecond (as journalctl's
/// `-o short-iso-precise` does, but one zone for every reader).
fn event_time(event: &Event) -> String {
    let time = if event.time_ns > 0 {
        chrono::DateTime::from_timestamp_nanos(event.time_ns as i64)
    } else {
        chrono::DateTime::from_timestamp(event.time as i64, 0).unwrap_or_default()
    };
    time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kchat_proto::{
        api::{Counters, Origin},
        room::RoomDecl,
    };

    fn room(name: &str, origin: Origin, settings: &str, counters: Counters) -> RoomView {
        RoomView {
            name: name.parse().unwrap(),
            origin,
            settings: serde_json::from_str::<RoomDecl>(settings).unwrap(),
            counters,
            drift: Vec::new(),
            limit_overridden: false,
            mode_octal: String::new(),
        }
    }

    fn rooms() -> Vec<RoomView> {
        let mut ops = room(
            "ops",
            Origin::Config,
            r#"{"policy":"block","mode":416,"group":0,"ring_bytes":65536,"rate_limit":{"msgs_per_sec":10,"msg_burst":20}}"#,
            Counters {
                readers: 3,
                writers: 1,
                ring_used_bytes: 16384,
                ring_msgs: 100,
                first_seq: 20,
                next_seq: 120,
                msgs_in: 120,
                bytes_in: 9000,
                deliveries: 360,
                throttled: 4,
                writer_waits: 2,
                ..Counters::default()
            },
        );
        ops.drift = vec!["ring_bytes 65536 -> 131072".into()];
        ops.limit_overridden = true;
        vec![
            room(
                "lobby",
                Origin::Adopted,
                "{}",
                Counters {
                    readers: 2,
                    msgs_in: 5,
                    bytes_in: 200,
                    deliveries: 9,
                    lost: 1,
                    ..Counters::default()
                },
            ),
            ops,
        ]
    }

    #[test]
    fn list_output() {
        insta::assert_snapshot!(list(&rooms()));
    }

    #[test]
    fn info_output() {
        insta::assert_snapshot!(info(&rooms()[1]));
    }

    #[test]
    fn stats_output() {
        insta::assert_snapshot!(stats(&rooms()));
    }

    #[test]
    fn readers_output() {
        let reader = |pid, lag_msgs, behind_ns| ReaderView {
            pid,
            uid: 0,
            gid: 0,
            lag_msgs,
            lag_bytes: lag_msgs * 80,
            lost: 0,
            behind_ns,
        };
        let out = readers(&[reader(42, 100, 75_000_000_000), reader(0, 0, 0)]);
        assert_eq!(
            out,
            "PID  USER  GROUP  UNREAD  BYTES    BEHIND  LOST\n\
             42   root  root   100     7.8 KiB  75.0 s  0\n\
             -    root  root   0       0 B      -       0\n"
        );
        assert_eq!(readers(&[]), "no readers\n");
    }

    #[test]
    fn status_output() {
        let status = Status {
            version: "0.1.0".into(),
            attached: false,
            detached_reason: Some("/dev/kchat/control does not exist: the kchat module is not loaded (modprobe kchat)".into()),
            abi_version: None,
            rooms: 0,
            config_path: "/etc/kchat/kchatd.toml".into(),
            state_path: "/var/lib/kchat/state.json".into(),
            last_error: None,
            deleted_config_rooms: Vec::new(),
            missing_rooms: Vec::new(),
            overridden_rooms: Vec::new(),
        };
        insta::assert_snapshot!(super::status(&status));
        let attached = Status {
            attached: true,
            detached_reason: None,
            abi_version: Some(1),
            rooms: 3,
            last_error: Some(
                "cannot create room big: the module's ring memory limit would be exceeded".into(),
            ),
            deleted_config_rooms: vec!["old".parse().unwrap()],
            missing_rooms: vec!["big".parse().unwrap()],
            overridden_rooms: vec!["ops".parse().unwrap()],
            ..status
        };
        insta::assert_snapshot!("status_output_attached", super::status(&attached));
    }

    #[test]
    fn plan_output() {
        let changes = vec![
            Change {
                room: "new".parse().unwrap(),
                action: Action::Create,
                detail: "drop ring_bytes=262144 max_msg=4096 owner=0 group=0 mode=0o666".into(),
            },
            Change {
                room: "ops".parse().unwrap(),
                action: Action::SetLimit,
                detail: "per uid: 5 msg/s (burst 0), 0 B/s (burst 0)".into(),
            },
            Change {
                room: "old".parse().unwrap(),
                action: Action::Delete,
                detail: "no longer declared".into(),
            },
        ];
        insta::assert_snapshot!(plan(&changes));
        assert_eq!(plan(&[]), "nothing to change\n");
    }
}
