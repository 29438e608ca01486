//! Line mode, the default: works in a terminal and in a pipeline, like the
//! 2016 client (poll on standard input and the room), done properly.

use crate::{
    render::{self, Names},
    room::{Flushed, Incoming, Room},
    Args, EXIT_DELETED,
};
use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::{
    collections::VecDeque,
    io::{Read, Write},
    os::fd::AsFd,
    process::ExitCode,
};

/// How often a throttled message is retried.
const RETRY_MS: u16 = 100;

pub fn run(args: &Args) -> Result<ExitCode> {
    let mut room = Room::open(&args.room, !args.listen)?;
    if let Some(count) = args.history {
        room.rewind(count)?;
    }
    let mut names = Names::default();
    let mut stdout = std::io::stdout().lock();
    let mut stdin = std::io::stdin().lock();
    let mut input_open = !args.listen;
    let mut partial = Vec::new();
    let mut outgoing: VecDeque<Vec<u8>> = VecDeque::new();
    let mut throttled = false;
    let mut shown = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Send what is queued, as far as the room takes it; say so once
        // each time it stalls after progress.
        match room.flush(&mut outgoing)? {
            Flushed::All => throttled = false,
            Flushed::Stalled { sent } => {
                if sent > 0 {
                    throttled = false;
                }
                if !throttled {
                    eprintln!(
                        "kchat: {} is throttling you (rate limit, or a full block room); retrying",
                        room.name
                    );
                    throttled = true;
                }
            }
            Flushed::Deleted => return deleted(&room),
        }
        if !input_open && outgoing.is_empty() && !args.listen {
            return Ok(ExitCode::SUCCESS);
        }
        let (room_ready, input_ready) = {
            let mut fds = vec![PollFd::new(
                room.file.as_fd(),
                PollFlags::POLLIN | PollFlags::POLLPRI,
            )];
            if input_open && outgoing.is_empty() {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            let timeout = if outgoing.is_empty() {
                PollTimeout::NONE
            } else {
                PollTimeout::from(RETRY_MS)
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err).context("poll"),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if room_ready {
            loop {
                match room.read()? {
                    Incoming::Empty => break,
                    Incoming::Deleted => return deleted(&room),
                    Incoming::Frames(frames) => {
                        for received in frames {
                            let (header, payload) = (&received.header, &received.payload);
                            if args.raw {
                                // Bare payloads, like `cat`; a loss goes to
                                // stderr so the data stays clean.
                                if header.lost > 0 {
                                    eprintln!("kchat: {}", render::lost(header.lost));
                                }
                                stdout.write_all(payload)?;
                            } else {
                                if header.lost > 0 {
                                    writeln!(stdout, "{}", render::lost(header.lost))?;
                                }
                                for line in render::message(&received, &mut names) {
                                    writeln!(stdout, "{line}")?;
                                }
                            }
                            shown += 1;
                            if args.count.is_some_and(|count| shown >= count) {
                                stdout.flush()?;
                                return Ok(ExitCode::SUCCESS);
                            }
                        }
                    }
                }
            }
            stdout.flush()?;
        }
        if input_ready {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err).context("reading standard input"),
            };
            if n == 0 {
                input_open = false;
                if !partial.is_empty() {
                    partial.push(b'\n');
                    outgoing.push_back(std::mem::take(&mut partial));
                }
                continue;
            }
            partial.extend_from_slice(&buf[..n]);
            while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                if !room.writable {
                    eprintln!("kchat: not sent: you may not write to {}", room.name);
                    continue;
                }
                outgoing.push_back(line);
            }
        }
    }
}

fn deleted(room: &Room) -> Result<ExitCode> {
    eprintln!("kchat: room {} was deleted", room.name);
    Ok(ExitCode::from(EXIT_DELETED))
}
