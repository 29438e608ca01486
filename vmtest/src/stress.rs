//! Concurrency stress: 8 writers and 64 readers on three rooms (two `drop`,
//! one `block`), readers that come and go, processes killed mid-read and
//! mid-write, for a bounded time. Then, per reader session, exactly
//! `delivered + lost == written since it opened`, no message torn or
//! interleaved, each writer's messages in order, nothing lost in the `block`
//! room. The debug kernel's checks (lockdep, KASAN, kmemleak) watch it all.

use crate::{
    client::{raw_ioctl, spec, Control, TempRoom},
    helper::{wait_for, PATIENCE},
    module, Test,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use kchat_uapi::abi;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    os::fd::AsFd,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = &[(
    "stress::writers_readers_churn_and_kills",
    writers_readers_churn_and_kills,
)];

const WRITERS: u32 = 8;
const READERS: u32 = 64;
const ROOMS: [(&str, u32); 3] = [
    ("stress-a", abi::POLICY_DROP),
    ("stress-b", abi::POLICY_DROP),
    ("stress-c", abi::POLICY_BLOCK),
];
const RUN: Duration = Duration::from_secs(6);
const MAX_MSG: u32 = 256;

/// A message: writer id, its counter, then a fill derived from both, so a
/// torn or interleaved message cannot pass the check.
fn message(writer: u32, counter: u32, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&writer.to_le_bytes());
    bytes.extend_from_slice(&counter.to_le_bytes());
    let fill = (writer.wrapping_mul(31) ^ counter) as u8;
    bytes.resize(len, fill);
    bytes
}

fn check_message(payload: &[u8]) -> Result<(u32, u32)> {
    ensure!(
        payload.len() >= 8,
        "a message of {} bytes is shorter than its header",
        payload.len()
    );
    let writer = u32::from_le_bytes(payload[..4].try_into()?);
    let counter = u32::from_le_bytes(payload[4..8].try_into()?);
    let fill = (writer.wrapping_mul(31) ^ counter) as u8;
    ensure!(
        writer < WRITERS,
        "message from unknown writer {writer}: torn?"
    );
    ensure!(
        payload[8..].iter().all(|&b| b == fill),
        "message {writer}/{counter} is torn or interleaved"
    );
    Ok((writer, counter))
}

fn writer_thread(id: u32, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15 ^ u64::from(id + 1));
    let mut files: Vec<File> = ROOMS
        .iter()
        .map(|(name, _)| {
            crate::client::open(
                &PathBuf::from(format!("/dev/kchat/{name}")),
                false,
                true,
                true,
            )
        })
        .collect::<Result<_>>()?;
    let mut counters = [0u32; ROOMS.len()];
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let room = rng.usize(..ROOMS.len());
        let len = rng.usize(8..MAX_MSG as usize);
        match files[room].write(&message(id, counters[room], len)) {
            Ok(n) => {
                ensure!(n == len, "a {len}-byte write wrote {n}");
                counters[room] += 1;
                sent += 1;
            }
            // The block room is full: its readers are slow. Try elsewhere.
            Err(err) if err.kind() == ErrorKind::WouldBlock => thread::yield_now(),
            Err(err) => return Err(err).context(format!("writer {id}")),
        }
    }
    Ok(sent)
}

/// One reader session's accounting.
#[derive(Default)]
struct Session {
    first_seen: Option<u64>,
    delivered: u64,
    lost: u64,
    last_counter: [Option<u32>; WRITERS as usize],
}

impl Session {
    /// The sequence number after the last one accounted for (delivered,
    /// lost, or `more`); `None` if the module's numbers make it overflow.
    fn end(&self, open: u64, more: u64) -> Option<u64> {
        open.checked_add(self.delivered)?
            .checked_add(self.lost)?
            .checked_add(more)
    }
}

/// Reads `file` into `session` until `until`; with `drain`, returns as soon
/// as nothing is left to read (the writers have stopped), and failing to
/// get there by `until` is an error.
fn read_session(
    room: usize,
    file: &mut File,
    session: &mut Session,
    until: Instant,
    drain: bool,
) -> Result<()> {
    let mut buf = vec![0u8; 8192];
    loop {
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        if Instant::now() >= until {
            ensure!(
                !drain,
                "the room still had messages to read after {PATIENCE:?} of draining"
            );
            return Ok(());
        }
        if !drain {
            poll(&mut fds, PollTimeout::from(50u8))?;
        }
        let n = match file.read(&mut buf) {
            Ok(0) => bail!("unexpected end of file"),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::WouldBlock && drain => return Ok(()),
            Err(err) if err.kind() == ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err.into()),
        };
        let frames =
            kchat_client::split_frames(&buf[..n]).context("a read ended inside a frame")?;
        for (header, payload) in frames {
            let (writer, counter) = check_message(payload)?;
            if ROOMS[room].1 == abi::POLICY_BLOCK {
                ensure!(
                    header.lost == 0,
                    "the block room lost {} messages",
                    header.lost
                );
            }
            // The header's numbers are the module's answer, checked here:
            // nonsense must fail the test with what it was, not overflow.
            let expected = match session.first_seen {
                None => {
                    let open = header.seq.checked_sub(header.lost).with_context(|| {
                        format!(
                            "the first frame says seq {} with {} lost before it",
                            header.seq, header.lost
                        )
                    })?;
                    session.first_seen = Some(open);
                    header.seq
                }
                Some(open) => open
                    .wrapping_add(session.delivered)
                    .wrapping_add(session.lost)
                    .wrapping_add(header.lost),
            };
            ensure!(
                header.seq == expected,
                "frame seq {} where {expected} was due",
                header.seq
            );
            session.lost = session.lost.wrapping_add(header.lost);
            session.delivered += 1;
            let last = &mut session.last_counter[writer as usize];
            if let Some(previous) = *last {
                ensure!(
                    counter > previous,
                    "writer {writer}'s message {counter} came after {previous}"
                );
            }
            *last = Some(counter);
        }
    }
}

fn open_framed(room: usize) -> Result<File> {
    let path = PathBuf::from(format!("/dev/kchat/{}", ROOMS[room].0));
    let file = crate::client::open(&path, true, false, true)?;
    raw_ioctl(
        &file,
        abi::IOC_SET_READ_MODE,
        &abi::READ_FRAMED as *const u32 as usize,
    )?;
    Ok(file)
}

/// Reads in sessions of random length; when writers stop, finishes the
/// current session by draining it and checks its accounting exactly.
fn reader_thread(id: u32, stop: Arc<AtomicBool>, drained: Arc<AtomicBool>) -> Result<u64> {
    let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d ^ u64::from(id + 1));
    let room = (id as usize) % ROOMS.len();
    let mut sessions = 0;
    loop {
        let mut file = open_framed(room)?;
        let mut session = Session::default();
        let until = Instant::now() + Duration::from_millis(rng.u64(50..450));
        read_session(room, &mut file, &mut session, until, false)?;
        sessions += 1;
        let Some(open) = session.first_seen else {
            // Saw nothing; once writers stop, nothing more will come.
            if stop.load(Ordering::Relaxed) {
                return Ok(sessions);
            }
            continue;
        };
        if !stop.load(Ordering::Relaxed) {
            // Closed mid-stream: what it saw cannot run past the end.
            let info = Control::open()?.info(ROOMS[room].0)?;
            ensure!(
                session.end(open, 0).is_some_and(|end| end <= info.next_seq),
                "reader {id} accounted past the end"
            );
            continue;
        }
        wait_for("the writers to finish", PATIENCE, || {
            Ok(drained.load(Ordering::Relaxed))
        })?;
        // Everything left, however long that takes on a slow guest: what
        // stays unread would count as neither delivered nor lost.
        read_session(
            room,
            &mut file,
            &mut session,
            Instant::now() + PATIENCE,
            true,
        )?;
        let mut unreported = 0u64;
        raw_ioctl(
            &file,
            abi::IOC_TAKE_LOST,
            &mut unreported as *mut u64 as usize,
        )?;
        let info = Control::open()?.info(ROOMS[room].0)?;
        ensure!(
            session.end(open, unreported) == Some(info.next_seq),
            "reader {id}: delivered {} + lost {} (+{unreported}) != {} written since it opened",
            session.delivered,
            session.lost,
            info.next_seq.wrapping_sub(open) as i64
        );
        return Ok(sessions);
    }
}

/// What a traffic run did.
pub struct Report {
    pub sent: u64,
    pub sessions: u64,
    pub disruptions: u64,
}

/// Runs the writers and churning readers on the stress rooms for `run`,
/// calling `disrupt` over and over meanwhile (each call one round of
/// trouble, returning how many things it broke); then checks every reader
/// session's accounting.
pub fn traffic(run: Duration, mut disrupt: impl FnMut() -> Result<u64>) -> Result<Report> {
    module::ensure_loaded()?;
    let _rooms: Vec<TempRoom> = ROOMS
        .iter()
        .map(|(name, policy)| {
            TempRoom::create(abi::RoomSpec {
                policy: *policy,
                ring_bytes: 64 * 1024,
                max_msg: MAX_MSG,
                // Strictly lossless: a reader starved for seconds on a
                // loaded guest must hold writers, not be evicted.
                max_wait_ms: if *policy == abi::POLICY_BLOCK {
                    abi::MAX_WAIT_FOREVER
                } else {
                    0
                },
                ..spec(name)
            })
        })
        .collect::<Result<_>>()?;
    let _spam = TempRoom::create(spec("stress-spam"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|id| {
            let (stop, drained) = (stop.clone(), drained.clone());
            thread::spawn(move || reader_thread(id, stop, drained))
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let stop = stop.clone();
            thread::spawn(move || writer_thread(id, stop))
        })
        .collect();
    let started = Instant::now();
    let mut disruptions = 0;
    let mut trouble = Ok(());
    while started.elapsed() < run {
        match disrupt() {
            Ok(n) => disruptions += n,
            Err(err) => {
                trouble = Err(err);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for writer in writers {
        sent += writer.join().map_err(|_| anyhow!("a writer panicked"))??;
    }
    drained.store(true, Ordering::Relaxed);
    let mut sessions = 0;
    for reader in readers {
        sessions += reader.join().map_err(|_| anyhow!("a reader panicked"))??;
    }
    trouble?;
    ensure!(
        sent > 100 && sessions > 64,
        "too little happened: {sent} messages, {sessions} sessions"
    );
    Ok(Report {
        sent,
        sessions,
        disruptions,
    })
}

/// One round of processes that die mid-read and mid-write.
pub fn kill_a_reader_and_a_writer() -> Result<u64> {
    let cat = Command::new("cat")
        .arg("/dev/kchat/stress-a")
        .stdout(Stdio::null())
        .spawn()?;
    let spam = Command::new("sh")
        .arg("-c")
        .arg("while :; do echo spam-from-a-doomed-shell; done > /dev/kchat/stress-spam")
        .spawn()?;
    // Kill them mid-flow: once `cat` has the room open and the shell's
    // lines arrive. Both start as processes do on the guest: on the KASAN
    // kernel, amid the traffic, that took over 10 s.
    let spam_before = Control::open()?.info("stress-spam")?.msgs_in;
    let flowing = wait_for("cat to open and the shell to write", PATIENCE, || {
        let cat_open = std::fs::read_dir(format!("/proc/{}/fd", cat.id()))?
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .any(|target| target == std::path::Path::new("/dev/kchat/stress-a"));
        Ok(cat_open
            && Control::open()?.info("stress-spam")?.msgs_in > spam_before.saturating_add(10))
    });
    // Killed whatever happened: a shell left spinning would load the rest.
    for mut child in [cat, spam] {
        child.kill()?;
        child.wait()?;
    }
    flowing.map(|()| 2)
}

fn writers_readers_churn_and_kills() -> Result<()> {
    let report = traffic(RUN, kill_a_reader_and_a_writer)?;
    eprintln!(
        "stress: {} messages, {} reader sessions, {} processes killed",
        report.sent, report.sessions, report.disruptions
    );
    Ok(())
}
