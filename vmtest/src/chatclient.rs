//! The `kchat` chat client against the real module: two clients talking,
//! the kernel's identity shown whatever the text claims, history, the loss
//! marker, throttling, raw mode, deletion and the full-screen mode.

use crate::{
    client::{spec, Control, TempRoom},
    helper::{bin, wait_for, NOBODY, PATIENCE},
    module, Test,
};
use anyhow::{ensure, Context, Result};
use kchat_uapi::abi;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use std::{
    io::{Read, Write},
    process::{Child, Command, Output, Stdio},
};

pub const TESTS: &[Test] = &[
    (
        "kchat::two_clients_chat_and_the_kernel_names_the_sender",
        two_clients_chat_and_the_kernel_names_the_sender,
    ),
    (
        "kchat::history_shows_the_last_messages",
        history_shows_the_last_messages,
    ),
    (
        "kchat::a_reader_that_fell_behind_sees_a_loss_marker",
        a_reader_that_fell_behind_sees_a_loss_marker,
    ),
    (
        "kchat::throttled_lines_are_retried_not_lost",
        throttled_lines_are_retried_not_lost,
    ),
    (
        "kchat::raw_mode_prints_bare_payloads",
        raw_mode_prints_bare_payloads,
    ),
    (
        "kchat::count_counts_messages_history_included",
        count_counts_messages_history_included,
    ),
    (
        "kchat::a_reader_that_goes_away_ends_raw_mode_quietly",
        a_reader_that_goes_away_ends_raw_mode_quietly,
    ),
    (
        "kchat::a_deleted_room_ends_the_client",
        a_deleted_room_ends_the_client,
    ),
    (
        "kchat::full_screen_mode_sends_and_shows",
        full_screen_mode_sends_and_shows,
    ),
    ("kchat::bad_rooms_are_explained", bad_rooms_are_explained),
];

fn room(name: &str) -> Result<TempRoom> {
    module::ensure_loaded()?;
    TempRoom::create(spec(name))
}

fn readers(name: &str) -> Result<u32> {
    Ok(Control::open()?.info(name)?.readers)
}

/// `kchat ARGS` in the background, its output captured.
fn spawn(args: &[&str]) -> Result<Child> {
    Command::new(bin("kchat")?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kchat")
}

/// Starts a listener and waits until it has the room open.
fn listener(name: &str, args: &[&str]) -> Result<Child> {
    let before = readers(name)?;
    let mut all = vec![name, "--listen"];
    all.extend_from_slice(args);
    let child = spawn(&all)?;
    wait_for("kchat to open the room", PATIENCE, || {
        Ok(readers(name)? > before)
    })?;
    Ok(child)
}

/// Pipes `input` into `kchat ROOM` (run as nobody when `as_nobody`).
fn send(name: &str, input: &str, as_nobody: bool) -> Result<Output> {
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(NOBODY).arg("--").arg(bin("kchat")?);
        c
    } else {
        Command::new(bin("kchat")?)
    };
    let mut child = command
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kchat")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kchat sending {input:?} failed: {out:?}"
    );
    Ok(out)
}

fn finish(child: Child) -> Result<(String, String)> {
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kchat exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn two_clients_chat_and_the_kernel_names_the_sender() -> Result<()> {
    let room = room("kc-chat")?;
    let alice = listener(&room.name, &["--count", "2"])?;
    send(&room.name, "hello from root\n", false)?;
    // The text claims to be root; the kernel says who wrote it.
    send(&room.name, "root: trust me, I am root\x1b[2J\n", true)?;
    let (out, _) = finish(alice)?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() == 2, "listener printed {out:?}");
    ensure!(
        lines[0].starts_with('[') && lines[0].ends_with("] root: hello from root"),
        "{out}"
    );
    // The escape sequence is shown, not obeyed.
    ensure!(
        lines[1].ends_with("] nobody: root: trust me, I am root^[[2J"),
        "{out}"
    );
    Ok(())
}

fn history_shows_the_last_messages() -> Result<()> {
    let room = room("kc-history")?;
    let mut writer = room.open_write()?;
    for n in 1..=5 {
        writer.write_all(format!("m{n}\n").as_bytes())?;
    }
    let child = spawn(&[&room.name, "--listen", "--history", "3", "--count", "3"])?;
    let (out, _) = finish(child)?;
    let texts: Vec<&str> = out.lines().filter_map(|l| l.rsplit(": ").next()).collect();
    ensure!(texts == ["m3", "m4", "m5"], "history showed {out:?}");
    Ok(())
}

fn a_reader_that_fell_behind_sees_a_loss_marker() -> Result<()> {
    module::ensure_loaded()?;
    let mut small = spec("kc-loss");
    small.ring_bytes = abi::MIN_RING_BYTES;
    let room = TempRoom::create(small)?;
    let child = listener(&room.name, &["--count", "1"])?;
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGSTOP)?;
    let mut writer = room.open_write()?;
    for n in 0..200 {
        writer.write_all(format!("filler {n:03}\n").as_bytes())?;
    }
    kill(pid, Signal::SIGCONT)?;
    let (out, _) = finish(child)?;
    let first = out.lines().next().unwrap_or("");
    ensure!(
        first.starts_with("-- ") && first.contains("message(s) lost"),
        "no loss marker first: {out:?}"
    );
    let lost: u64 = first
        .trim_start_matches("-- ")
        .split(' ')
        .next()
        .unwrap_or("")
        .parse()
        .context("lost count")?;
    let shown: u64 = out
        .lines()
        .nth(1)
        .and_then(|l| l.rsplit("filler ").next())
        .and_then(|n| n.parse().ok())
        .context("message after the marker")?;
    // Exactly the messages before the first one shown were lost.
    ensure!(
        lost == shown,
        "marker says {lost} lost, first shown is #{shown}"
    );
    Ok(())
}

fn throttled_lines_are_retried_not_lost() -> Result<()> {
    let room = room("kc-throttle")?;
    let mut limit = kchat_client::rate_limit(&room.name);
    limit.msgs_per_sec = 4;
    limit.msg_burst = 1;
    Control::open()?.set_limit(&limit)?;
    let mut reader = room.open_read()?;
    let out = send(&room.name, "a\nb\nc\n", false)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("throttling"),
        "no throttle notice: {stderr}"
    );
    let mut got = [0u8; 16];
    let n = reader.read(&mut got)?;
    ensure!(&got[..n] == b"a\nb\nc\n", "delivered {:?}", &got[..n]);
    Ok(())
}

fn raw_mode_prints_bare_payloads() -> Result<()> {
    let room = room("kc-raw")?;
    let child = listener(&room.name, &["--raw", "--count", "1"])?;
    room.open_write()?.write_all(b"just bytes\n")?;
    let (out, _) = finish(child)?;
    ensure!(out == "just bytes\n", "raw printed {out:?}");
    Ok(())
}

fn a_deleted_room_ends_the_client() -> Result<()> {
    let room = room("kc-delete")?;
    let child = listener(&room.name, &[])?;
    room.delete()?;
    let out = child.wait_with_output()?;
    ensure!(out.status.code() == Some(4), "exit {:?}", out.status);
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("was deleted"),
        "{out:?}"
    );
    Ok(())
}

/// Drives `kchat --tui` through a pseudo-terminal (`script`), types a line
/// and Esc, and checks the room got the line and the screen drew.
fn full_screen_mode_sends_and_shows() -> Result<()> {
    let room = room("kc-tui")?;
    let mut reader = room.open_read()?;
    // A fresh pty has no size; give it one, as a terminal emulator would.
    let command = format!(
        "stty rows 24 cols 80 && exec {} {} --tui",
        bin("kchat")?.display(),
        room.name
    );
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running script (util-linux)")?;
    let mut keys = child.stdin.take().context("stdin")?;
    // Collect the screen as it is drawn: keys typed before the client has
    // put the terminal in raw mode would be cooked (Enter arriving as ^J).
    let mut stdout = child.stdout.take().context("stdout")?;
    let screen_bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let collector = {
        let screen_bytes = screen_bytes.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut bytes) = screen_bytes.lock() {
                    bytes.extend_from_slice(&chunk[..n]);
                }
            }
        })
    };
    // ratatui switches to the alternate screen right after raw mode.
    wait_for("the client to take the terminal", PATIENCE, || {
        let bytes = screen_bytes
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(String::from_utf8_lossy(&bytes).contains("\x1b[?1049h"))
    })?;
    ensure!(
        readers(&room.name)? >= 2,
        "the client has not opened the room"
    );
    keys.write_all(b"hi from the tui\r")?;
    keys.flush()?;
    // Bounded, so a lost line fails the test instead of hanging the suite.
    wait_for("the typed line to reach the room", PATIENCE, || {
        Ok(Control::open()?.info(&room.name)?.msgs_in >= 1)
    })?;
    let mut got = [0u8; 64];
    let n = reader.read(&mut got)?;
    ensure!(
        &got[..n] == b"hi from the tui\n",
        "room got {:?}",
        &got[..n]
    );
    // Leave with Esc once the echo came back and was drawn.
    wait_for("the client to draw its own message", PATIENCE, || {
        let bytes = screen_bytes
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(visible_text(&String::from_utf8_lossy(&bytes)).contains("root: hi from the tui"))
    })?;
    keys.write_all(b"\x1b")?;
    keys.flush()?;
    drop(keys);
    let status = child.wait()?;
    collector
        .join()
        .map_err(|_| anyhow::anyhow!("the screen collector panicked"))?;
    let bytes = screen_bytes
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let screen = visible_text(&String::from_utf8_lossy(&bytes));
    ensure!(status.success(), "kchat --tui exited {status}: {screen}");
    ensure!(
        screen.contains("kc-tui | readers ? | lost 0"),
        "no status bar drawn"
    );
    ensure!(
        screen.contains("root: hi from the tui"),
        "own message not shown: {screen:?}"
    );
    Ok(())
}

/// What a terminal shows of `raw`, roughly: escape sequences (cursor moves
/// and colours) become spaces, runs of spaces one.
fn visible_text(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for end in chars.by_ref() {
                    if ('@'..='~').contains(&end) {
                        break;
                    }
                }
            }
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn bad_rooms_are_explained() -> Result<()> {
    module::ensure_loaded()?;
    let out = Command::new(bin("kchat")?)
        .args(["no-such-room", "--listen"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && stderr.contains("no room no-such-room"),
        "{out:?}"
    );
    // A file that is not a room.
    let out = Command::new(bin("kchat")?)
        .args(["/dev/null", "--listen"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && stderr.contains("not a kchat room"),
        "{out:?}"
    );
    // A room nobody may write: the client says so and listens.
    let mut private = spec("kc-private");
    private.mode = 0o644;
    let room = TempRoom::create(private)?;
    let mut child = Command::new("setpriv")
        .args(NOBODY)
        .arg("--")
        .arg(bin("kchat")?)
        .arg(&room.name)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"let me in\n")?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("listening only") && stderr.contains("not sent"),
        "{stderr}"
    );
    ensure!(
        Control::open()?.info(&room.name)?.msgs_in == 0,
        "a read-only client wrote"
    );
    Ok(())
}

/// Waits (at most `PATIENCE`) for a client to exit; kills it if it does not.
fn exit_within(mut child: Child, what: &str) -> Result<std::process::ExitStatus> {
    let mut status = None;
    let waited = wait_for(what, PATIENCE, || {
        status = child.try_wait()?;
        Ok(status.is_some())
    });
    if waited.is_err() {
        child.kill().ok();
        child.wait().ok();
    }
    waited?;
    status.context("no exit status")
}

/// `--count` counts messages, in raw mode too (one read may bring several),
/// and what `--history` showed counts toward it.
fn count_counts_messages_history_included() -> Result<()> {
    let room = room("kc-count")?;
    let mut writer = room.open_write()?;
    for n in 1..=3 {
        writer.write_all(format!("m{n}\n").as_bytes())?;
    }
    for (args, want) in [
        (
            &["--raw", "--listen", "--history", "3", "--count", "2"][..],
            "m1\nm2\n",
        ),
        // Not listening only: standard input stays open (null here).
        (&["--raw", "--history", "2", "--count", "2"], "m2\nm3\n"),
    ] {
        let mut all = vec![room.name.as_str()];
        all.extend_from_slice(args);
        let mut child = spawn(&all)?;
        let mut stdout = child.stdout.take().context("stdout")?;
        let status = exit_within(child, &format!("kchat {args:?} to exit"))?;
        let mut out = String::new();
        stdout.read_to_string(&mut out)?;
        ensure!(
            status.success() && out == want,
            "kchat {args:?} exited {status} after printing {out:?}"
        );
    }
    Ok(())
}

/// `kchat --raw lobby | head -1`: once the reader is gone, kchat ends with
/// status 0 and says nothing, as `cat` does.
fn a_reader_that_goes_away_ends_raw_mode_quietly() -> Result<()> {
    let room = room("kc-pipe")?;
    let mut child = listener(&room.name, &["--raw"])?;
    let mut writer = room.open_write()?;
    writer.write_all(b"first\n")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first)?;
    drop(stdout);
    // The next message meets the closed pipe.
    writer.write_all(b"second\n")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let status = exit_within(child, "kchat to end on a closed pipe")?;
    let mut said = String::new();
    stderr.read_to_string(&mut said)?;
    ensure!(
        status.success() && said.is_empty(),
        "kchat exited {status} on a closed pipe, saying {said:?}"
    );
    Ok(())
}
