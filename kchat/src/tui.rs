//! `kchat --tui`: full screen, with scrollback, an input line and a status
//! bar (readers, losses, throttling). Same room handling as line mode.

use crate::{
    render::{self, Names},
    room::{Flushed, Incoming, Room},
    Args, EXIT_DELETED,
};
use anyhow::{Context, Result};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use kchat_proto::api::{Reply, Request};
use ratatui::{
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::Paragraph,
    DefaultTerminal, Frame,
};
use std::{
    collections::VecDeque,
    process::ExitCode,
    time::{Duration, Instant},
};

/// Lines kept for scrolling back.
const SCROLLBACK: usize = 10_000;
/// How long the screen waits for a key before looking at the room again.
const TICK: Duration = Duration::from_millis(50);
/// How often kchatd is asked for the reader count.
const READERS_EVERY: Duration = Duration::from_secs(2);

struct Screen {
    room: Room,
    names: Names,
    lines: VecDeque<String>,
    input: String,
    /// Lines scrolled up from the bottom.
    scroll: usize,
    outgoing: VecDeque<Vec<u8>>,
    lost: u64,
    throttled: bool,
    readers: Option<u32>,
    socket: std::path::PathBuf,
    asked: Option<Instant>,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let room = Room::open(&args.room, !args.listen)?;
    if let Some(count) = args.history {
        room.rewind(count)?;
    }
    let mut screen = Screen {
        room,
        names: Names::default(),
        lines: VecDeque::new(),
        input: String::new(),
        scroll: 0,
        outgoing: VecDeque::new(),
        lost: 0,
        throttled: false,
        readers: None,
        socket: args.socket.clone(),
        asked: None,
    };
    // ratatui::init puts the terminal back on panic too.
    let mut terminal = ratatui::init();
    let result = screen.main_loop(&mut terminal);
    ratatui::restore();
    let code = result?;
    if code == ExitCode::from(EXIT_DELETED) {
        eprintln!("kchat: room {} was deleted", screen.room.name);
    }
    Ok(code)
}

impl Screen {
    fn main_loop(&mut self, terminal: &mut DefaultTerminal) -> Result<ExitCode> {
        loop {
            if self.asked.is_none_or(|at| at.elapsed() >= READERS_EVERY) {
                self.readers = ask_readers(&self.socket, &self.room.name);
                self.asked = Some(Instant::now());
            }
            if let Some(code) = self.pump()? {
                return Ok(code);
            }
            terminal.draw(|frame| self.draw(frame)).context("drawing")?;
            if !event::poll(TICK).context("reading the terminal")? {
                continue;
            }
            let Event::Key(key) = event::read().context("reading the terminal")? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
            match key.code {
                KeyCode::Char('c') if ctrl => return Ok(ExitCode::SUCCESS),
                KeyCode::Char('d') if ctrl && self.input.is_empty() => {
                    return Ok(ExitCode::SUCCESS);
                }
                KeyCode::Esc => return Ok(ExitCode::SUCCESS),
                KeyCode::Enter if !self.input.is_empty() => {
                    let mut line = std::mem::take(&mut self.input).into_bytes();
                    line.push(b'\n');
                    if self.room.writable {
                        self.outgoing.push_back(line);
                    } else {
                        self.push_line(format!(
                            "-- not sent: you may not write to {} --",
                            self.room.name
                        ));
                    }
                }
                KeyCode::Backspace => {
                    self.input.pop();
                }
                KeyCode::PageUp => self.scroll = (self.scroll + 10).min(self.lines.len()),
                KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(10),
                KeyCode::Char(c) if !ctrl => self.input.push(c),
                _ => {}
            }
        }
    }

    fn push_line(&mut self, line: String) {
        if self.lines.len() == SCROLLBACK {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// Sends what is queued and takes in what arrived; `Some` to exit.
    fn pump(&mut self) -> Result<Option<ExitCode>> {
        match self.room.flush(&mut self.outgoing)? {
            Flushed::All => self.throttled = false,
            Flushed::Stalled { .. } => self.throttled = true,
            Flushed::Deleted => return Ok(Some(ExitCode::from(EXIT_DELETED))),
        }
        loop {
            match self.room.read()? {
                Incoming::Empty => return Ok(None),
                Incoming::Deleted => return Ok(Some(ExitCode::from(EXIT_DELETED))),
                Incoming::Frames(frames) => {
                    for received in frames {
                        let lost = received.header.lost;
                        if lost > 0 {
                            self.lost += lost;
                            self.push_line(render::lost(lost));
                        }
                        for line in render::message(&received, &mut self.names) {
                            self.push_line(line);
                        }
                    }
                }
            }
        }
    }

    fn draw(&self, frame: &mut Frame) {
        let [messages, status, input] = Layout::vertical([
            Constraint::Min(1),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let height = usize::from(messages.height);
        let end = self.lines.len().saturating_sub(self.scroll);
        let start = end.saturating_sub(height);
        let shown: Vec<Line> = self
            .lines
            .range(start..end)
            .map(|l| Line::raw(l.as_str()))
            .collect();
        frame.render_widget(Paragraph::new(shown), messages);
        let readers = self
            .readers
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let mut bar = format!(
            " {} | readers {readers} | lost {}",
            self.room.name, self.lost
        );
        if self.throttled {
            bar.push_str(" | THROTTLED, retrying");
        }
        if !self.room.writable {
            bar.push_str(" | read-only");
        }
        if self.scroll > 0 {
            bar.push_str(&format!(" | scrolled up {} (PgDn)", self.scroll));
        }
        frame.render_widget(
            Paragraph::new(bar).style(Style::default().add_modifier(Modifier::REVERSED)),
            status,
        );
        let prompt = format!("> {}", self.input);
        let cursor_x = input.x + u16::try_from(prompt.chars().count()).unwrap_or(u16::MAX);
        frame.render_widget(Paragraph::new(prompt), input);
        frame.set_cursor_position((cursor_x.min(input.right().saturating_sub(1)), input.y));
    }
}

/// The room's reader count from kchatd, which anyone may ask; `None` when
/// kchatd does not run (the module itself tells only root).
fn ask_readers(socket: &std::path::Path, room: &str) -> Option<u32> {
    let request = Request::Info {
        room: room.parse().ok()?,
    };
    // Asked from the UI thread: a kchatd that does not answer at once costs
    // the status bar its count, not the user their screen.
    let patience = Some(std::time::Duration::from_millis(500));
    match kchat_proto::client::call_within(socket, &request, patience) {
        Ok(Reply::Room(view)) => Some(view.counters.readers),
        _ => None,
    }
}
