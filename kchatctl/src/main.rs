//! kchatctl: kchat's admin CLI. See `kchatctl --help`.

mod cli;
mod client;
mod render;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use client::{Client, Failure};
use kchat_proto::{
    api::{Reply, Request},
    room::RoomDraft,
};
use std::{io::Write, process::ExitCode, time::Duration};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                if json {
                    // Scripts read stdout; a failure is JSON there too.
                    let error = serde_json::json!({
                        "error": { "kind": failure.kind, "message": failure.message }
                    });
                    println!("{error}");
                }
                eprintln!("kchatctl: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let timeout =
        if cli.timeout > 0.0 {
            Some(Duration::try_from_secs_f64(cli.timeout).map_err(|_| {
                Failure::failed(format!("--timeout {} is not a duration", cli.timeout))
            })?)
        } else {
            None
        };
    let client = Client::new(cli.socket.clone(), timeout);
    let json = cli.json;
    match cli.command {
        Command::Status => match client.call(&Request::Status)? {
            // Detached is a status worth a non-zero exit, as `systemctl
            // is-active` has: scripts check it without parsing.
            Reply::Status(status) => {
                let attached = status.attached;
                show(json, Reply::Status(status))?;
                if attached {
                    Ok(())
                } else {
                    Err(Failure::unavailable_quietly())
                }
            }
            other => show(json, other),
        },
        Command::List => show(json, client.call(&Request::List)?),
        Command::Info { room } => show(json, client.call(&Request::Info { room })?),
        Command::Stats { room } => match client.call(&Request::List)? {
            Reply::Rooms(rooms) => {
                let rooms: Vec<_> = rooms
                    .into_iter()
                    .filter(|r| room.as_ref().is_none_or(|want| &r.name == want))
                    .collect();
                if let Some(want) = &room
                    && rooms.is_empty()
                {
                    return Err(Failure::not_found(format!("no room named {want}")));
                }
                if json {
                    print_json(&rooms)
                } else {
                    print(&render::stats(&rooms))
                }
            }
            other => show(json, other),
        },
        Command::CreateRoom { room, settings } => {
            let draft = RoomDraft {
                ring_bytes: settings.ring_size,
                max_msg: settings.max_msg,
                policy: settings.policy,
                owner: settings.owner.map(cli::principal),
                group: settings.group.map(cli::principal),
                mode: settings.mode,
                rate_limit: settings.limit.into_limit(None),
                max_wait: settings.max_wait,
            };
            show(
                json,
                client.call(&Request::CreateRoom {
                    room,
                    settings: draft,
                })?,
            )
        }
        Command::DeleteRoom { room } => show(json, client.call(&Request::DeleteRoom { room })?),
        Command::Reset { room } => show(json, client.call(&Request::Reset { room })?),
        Command::Readers { room } => show(json, client.call(&Request::Readers { room })?),
        Command::SetLimit { room, limit } => {
            let limit = limit.into_change();
            show(json, client.call(&Request::SetLimit { room, limit })?)
        }
        Command::Apply { file, dry_run } => {
            let config = std::fs::read_to_string(&file)
                .map_err(|err| Failure::failed(format!("cannot read {}: {err}", file.display())))?;
            show(json, client.call(&Request::Apply { config, dry_run })?)
        }
        Command::Events { count, follow: _ } => {
            let limit = count;
            // On stderr, so stdout stays events only; scripts and tests wait
            // for it before causing the events they want to see.
            let subscribed = || eprintln!("kchatctl: listening for events");
            client.events(limit, subscribed, |event| {
                if json {
                    // One object per line, so `--follow` output is JSON lines.
                    let line = serde_json::to_string(&event)
                        .map_err(|err| Failure::failed(format!("cannot encode JSON: {err}")))?;
                    print(&(line + "\n"))
                } else {
                    print(&render::event(&event))
                }
            })
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kchatctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { out_dir: Some(dir) } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            .map_err(|err| {
                Failure::failed(format!(
                    "cannot write man pages to {}: {err}",
                    dir.display()
                ))
            }),
        Command::Man { out_dir: None } => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(|err| Failure::failed(format!("cannot render the man page: {err}")))?;
            std::io::stdout()
                .write_all(&out)
                .map_err(|err| Failure::failed(format!("cannot write: {err}")))
        }
    }
}

fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // The reader is gone (`kchatctl events -f | head -1`): done, not failed.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => Err(Failure::failed(format!("cannot write the output: {err}"))),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| Failure::failed(format!("cannot encode JSON: {err}")))?;
    print(&(text + "\n"))
}

/// Prints a reply, or turns an error reply into the exit code it means.
fn show(json: bool, reply: Reply) -> Result<(), Failure> {
    match reply {
        Reply::Error(err) => Err(Failure::from_api(err)),
        Reply::Status(status) if json => print_json(&status),
        Reply::Rooms(rooms) if json => print_json(&rooms),
        Reply::Room(room) if json => print_json(&room),
        Reply::Plan(plan) if json => print_json(&plan),
        Reply::Done(message) if json => print_json(&serde_json::json!({ "done": message })),
        Reply::Event(event) if json => print_json(&event),
        Reply::Readers(readers) if json => print_json(&readers),
        Reply::Readers(readers) => print(&render::readers(&readers)),
        Reply::Status(status) => print(&render::status(&status)),
        Reply::Rooms(rooms) => print(&render::list(&rooms)),
        Reply::Room(room) => print(&render::info(&room)),
        Reply::Plan(plan) => print(&render::plan(&plan)),
        Reply::Done(message) => print(&format!("{message}\n")),
        Reply::Event(event) => print(&render::event(&event)),
    }
}
