//! The command line: object-verb commands in the habit of `ip` and `wg`.

use clap::{Args, Parser, Subcommand};
use kchat_proto::room::{
    Forever, LimitChange, MaxWait, Policy, Principal, RateLimit, RoomName, Scope,
};
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  the request failed (the message says why: the room exists, the config owns it, the kernel refused)
  2  usage error (bad command line)
  3  kchatd is not running or did not answer in time, or it cannot reach the kchat module (status: not attached)
  4  no such room
  5  permission denied (changes need root or kchatd's admin group)
  6  invalid request (a value out of range, a bad file)
With --json, a failure also prints {\"error\": {\"kind\": ..., \"message\": ...}} on stdout.";

/// Manage kchat rooms through kchatd.
///
/// Read commands (status, list, info, stats, events, apply --dry-run) work
/// for anyone; changes need root or kchatd's admin group.
#[derive(Parser)]
#[command(version, after_help = EXIT_CODES, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// kchatd's control socket.
    #[arg(long, global = true, env = "KCHAT_SOCKET", default_value = kchat_proto::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of tables, for scripts (errors too).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for kchatd to take the connection and for each part
    /// of its answer (0: no limit).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Whether kchatd is attached to the module, and why not.
    Status,
    /// Every room with its settings and readers.
    List,
    /// One room: settings, counters, where it comes from.
    Info { room: RoomName },
    /// Counters of every room (or one).
    Stats { room: Option<RoomName> },
    /// Who reads a room and how far behind each reader is, the furthest
    /// first: the one holding a block room back, or losing messages
    /// (admin).
    Readers { room: RoomName },
    /// Create a room; kchatd keeps it across restarts and module reloads.
    CreateRoom {
        room: RoomName,
        #[command(flatten)]
        settings: RoomSettings,
    },
    /// Delete a room: readers drain what is left, then see end of file.
    DeleteRoom { room: RoomName },
    /// Undo what was changed at run time about a room kchatd.toml declares
    /// (its deletion, a rate limit set with set-limit): kchatd makes it what
    /// the config says again.
    Reset { room: RoomName },
    /// Change a room's rate limit: the fields given change, the others stay
    /// (0 in a field: no limit of that kind).
    SetLimit {
        room: RoomName,
        #[command(flatten)]
        limit: LimitArgs,
    },
    /// Make the rooms managed with kchatctl those of FILE (`[rooms.NAME]`
    /// tables as in kchatd.toml): create, change limits, delete the rest.
    Apply {
        file: PathBuf,
        /// Show what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show rooms created and deleted, messages lost and writes throttled,
    /// as they happen. "listening for events" on stderr says the
    /// subscription is in place: whatever happens after it is shown.
    Events {
        /// Stop after this many events (default: stream until interrupted).
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// Accepted for older scripts; streaming is the default.
        #[arg(long, short, hide = true)]
        follow: bool,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), or write one page per command into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct RoomSettings {
    /// Ring budget in bytes (messages plus 64 bytes each).
    #[arg(long, value_name = "BYTES")]
    pub ring_size: Option<u32>,
    /// Largest message in bytes; longer writes are split.
    #[arg(long, value_name = "BYTES")]
    pub max_msg: Option<u32>,
    /// What a full ring does: drop the oldest message, or block writers.
    #[arg(long, value_enum)]
    pub policy: Option<Policy>,
    /// Owner of /dev/kchat/ROOM (name or uid).
    #[arg(long)]
    pub owner: Option<String>,
    /// Group of /dev/kchat/ROOM (name or gid).
    #[arg(long)]
    pub group: Option<String>,
    /// Permission bits of /dev/kchat/ROOM, in octal (default 666).
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<u32>,
    /// Block rooms: how long one stopped reader may hold writers back before
    /// it loses what it has not read, in milliseconds, or "forever" (default
    /// 10000).
    #[arg(long, value_name = "MS|forever", value_parser = parse_max_wait)]
    pub max_wait: Option<MaxWait>,
    #[command(flatten)]
    pub limit: LimitArgs,
}

fn parse_max_wait(text: &str) -> Result<MaxWait, String> {
    if text == "forever" {
        return Ok(MaxWait::Forever(Forever::Forever));
    }
    text.parse()
        .map(MaxWait::Millis)
        .map_err(|_| format!("{text:?} is neither milliseconds nor \"forever\""))
}

#[derive(Args)]
pub struct LimitArgs {
    /// Messages per second each sender may write (0: no message limit).
    #[arg(long, value_name = "N")]
    pub msgs_per_sec: Option<u32>,
    /// Messages a sender may send at once after being idle (0: one second's
    /// worth); needs a message rate.
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// Payload bytes per second each sender may write (0: no byte limit).
    #[arg(long, value_name = "N")]
    pub bytes_per_sec: Option<u32>,
    /// Bytes a sender may send at once after being idle (0: one second's
    /// worth); needs a byte rate.
    #[arg(long, value_name = "N")]
    pub byte_burst: Option<u32>,
    /// Whose budget a write is charged to: the writer's uid, or each open file.
    #[arg(long, value_enum)]
    pub scope: Option<Scope>,
}

impl LimitArgs {
    /// For `set-limit`: only the fields given change; kchatd keeps the rest.
    pub fn into_change(self) -> LimitChange {
        LimitChange {
            scope: self.scope,
            msgs_per_sec: self.msgs_per_sec,
            msg_burst: self.burst,
            bytes_per_sec: self.bytes_per_sec,
            byte_burst: self.byte_burst,
        }
    }

    /// The limit these flags set, or `unset` when none is given.
    pub fn into_limit(self, unset: Option<RateLimit>) -> Option<RateLimit> {
        let given = self.msgs_per_sec.is_some()
            || self.burst.is_some()
            || self.bytes_per_sec.is_some()
            || self.byte_burst.is_some()
            || self.scope.is_some();
        if !given {
            return unset;
        }
        Some(RateLimit {
            scope: self.scope.unwrap_or_default(),
            msgs_per_sec: self.msgs_per_sec.unwrap_or(0),
            msg_burst: self.burst.unwrap_or(0),
            bytes_per_sec: self.bytes_per_sec.unwrap_or(0),
            byte_burst: self.byte_burst.unwrap_or(0),
        })
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal mode from 0 to 777")),
    }
}

pub fn principal(text: String) -> Principal {
    // The server says what is wrong with a bad one.
    text.parse().unwrap_or(Principal::Name(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert_eq!(parse_mode("0o660"), Ok(0o660));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("1777").is_err());
    }

    #[test]
    fn completions_and_man_page_cover_every_command() {
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "kchatctl",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        // roff escapes hyphens.
        let man = String::from_utf8(man).unwrap().replace("\\-", "-");
        for command in ["create-room", "delete-room", "set-limit", "apply", "events"] {
            assert!(bash.contains(command), "completion lacks {command}");
            assert!(man.contains(command), "man page lacks {command}");
        }
        assert!(man.contains("usage error"), "man page lacks the exit codes");
    }
}
