//! kchat, the chat client: `kchat ROOM`. See `kchat --help`.

mod line;
mod render;
mod room;
mod tui;

use anyhow::Result;
use clap::Parser;
use std::process::ExitCode;

/// Chat in a kchat room: lines you type go to everyone in it; lines others
/// send show with the sender's user name and time, as the kernel stamped
/// them (nobody can pose as someone else).
///
/// Exit status: 0 when input ends (Ctrl-D) or --count messages were shown,
/// 1 on errors, 2 on usage errors, 4 when the room was deleted.
#[derive(Parser)]
#[command(version)]
pub struct Args {
    /// The room: a name (`lobby` is /dev/kchat/lobby) or a path.
    pub room: String,
    /// First show the last N messages the room still holds.
    #[arg(long, value_name = "N")]
    pub history: Option<u64>,
    /// Print bare payloads as they arrive, like `cat`.
    #[arg(long, conflicts_with = "tui")]
    pub raw: bool,
    /// Only listen: do not read standard input.
    #[arg(long)]
    pub listen: bool,
    /// Exit after showing N messages.
    #[arg(long, value_name = "N", conflicts_with = "tui")]
    pub count: Option<u64>,
    /// Full screen: scrollback, an input line, the room's state.
    #[arg(long)]
    pub tui: bool,
    /// kchatd's socket, asked for the reader count in --tui.
    #[arg(long, env = "KCHAT_SOCKET", default_value = kchat_proto::api::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
}

/// Exit status when the room was deleted under the client.
pub const EXIT_DELETED: u8 = 4;

fn main() -> ExitCode {
    let args = Args::parse();
    let result: Result<ExitCode> = if args.tui {
        tui::run(&args)
    } else {
        line::run(&args)
    };
    match result {
        Ok(code) => code,
        // Whoever read the output is gone (`kchat --raw lobby | head -1`):
        // done, as `cat` would be.
        Err(err)
            if err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("kchat: {err:#}");
            ExitCode::FAILURE
        }
    }
}
