//! The writers' process: every run's writers run in a process of their
//! own, as writers and readers do in use, started afresh for the run with
//! `exec` (so it shares no page with the harness and its readers, and no
//! reader pays a copy-on-write fault for it). The harness hands it, over
//! a socket that is its standard input, the memfd of the run's `Progress`
//! (where the first writer past the start line sets the window's end), the
//! fds some senders need (a pipe tee's write ends), and an `Order`: what
//! each writer is (`SenderSpec`), the sizes, the window and the pace. It
//! answers with an `Outcome` once its writers are done.

use crate::{
    message::{self, Sizes, Stamper},
    system::{Pace, Sender},
    systems::{iceoryx2, kchat, nats, pipe, redis},
    tally::Progress,
};
use anyhow::{anyhow, bail, Context, Result};
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{
        recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
        SockFlag, SockType,
    },
    sys::{prctl::set_pdeathsig, signal::Signal},
};
use serde::{Deserialize, Serialize};
use std::{
    fs::File,
    io::{IoSlice, IoSliceMut},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Barrier, OnceLock},
    thread,
    time::{Duration, Instant},
};

/// One writer of a system, said so that another process can make it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SenderSpec {
    /// Opens the bench room for writing (framed writes for a mix).
    Kchat,
    /// Writes every message into each of the run's fds (the tee's pipes),
    /// at most `per_write` bytes of whole messages per `write`.
    PipeTee { per_write: usize },
    /// Connects to redis-server's socket and publishes.
    Redis { socket: PathBuf },
    /// Connects to the bench's nats-server and publishes.
    Nats,
    /// Publishes to the pub-sub service `data` and notifies `wake`.
    Iceoryx2 { data: String, wake: String },
    /// The harness's own tests: writes to the run's fds (pipes), damaging
    /// every `damage`th message, or fails to start.
    #[cfg(test)]
    Test { damage: Option<u64>, fail: bool },
}

impl SenderSpec {
    /// Makes the sender, in the writers' process, on the writer's thread.
    fn make(&self, sizes: Sizes, fds: &[OwnedFd]) -> Result<Box<dyn Sender>> {
        Ok(match self {
            SenderSpec::Kchat => Box::new(kchat::Writer::open(sizes)?),
            SenderSpec::PipeTee { per_write } => Box::new(pipe::Tee::new(fds, *per_write)?),
            SenderSpec::Redis { socket } => {
                Box::new(redis::Publisher::connect(socket, sizes.max())?)
            }
            SenderSpec::Nats => Box::new(nats::Publisher::connect(sizes.max())?),
            SenderSpec::Iceoryx2 { data, wake } => {
                Box::new(iceoryx2::publish(data, wake, sizes.max())?)
            }
            #[cfg(test)]
            SenderSpec::Test { damage, fail } => {
                if *fail {
                    bail!("no sender in process {}", std::process::id());
                }
                Box::new(crate::system::tests::ToAll::new(fds, *damage)?)
            }
        })
    }
}

/// What the writers' process is to do.
#[derive(Serialize, Deserialize)]
struct Order {
    senders: Vec<SenderSpec>,
    sizes: Sizes,
    window_ns: u64,
    pace: Pace,
}

/// What it did.
#[derive(Serialize, Deserialize)]
struct Outcome {
    /// Messages the writers handed to the system.
    written: u64,
    /// From the window's start until the last writer's last burst
    /// returned; none if no writer reached the start line.
    writing_ns: Option<u64>,
    /// The first writer's error, if any failed.
    error: Option<String>,
}

/// What the writers of one run did, as the harness sees it.
pub struct Written {
    pub written: u64,
    pub writing: Duration,
}

/// Fds per record of the socket: fewer than the kernel's limit of 253
/// per `SCM_RIGHTS` message.
const FDS_PER_RECORD: usize = 200;

/// The payload of a record that carries only fds.
const FDS_ONLY: &[u8] = b"fds";

/// Longest record: an `Order` of a few writers is far shorter.
const RECORD_BYTES: usize = 64 * 1024;

/// How long writers may go on past the window before the run fails (a
/// system stalled with its writers blocked): far more than the slowest
/// guest's drain of a full ring or a client's buffer.
const OVERRUN: Duration = Duration::from_secs(300);

/// This program, through the link that stays right if the file is
/// replaced while it runs (a rebuild during a run).
const THIS_PROGRAM: &str = "/proc/self/exe";

/// The command that starts the writers' process: this program again.
#[cfg(not(test))]
fn writers_command() -> Command {
    let mut command = Command::new(THIS_PROGRAM);
    command.arg(crate::WRITERS_COMMAND);
    command
}

/// Set in the environment of the harness's tests' writers' process.
#[cfg(test)]
const TEST_WRITERS: &str = "KCHAT_BENCH_TEST_WRITERS";

/// In the harness's tests, the test binary again, running only the
/// (otherwise ignored) entry point `tests::writers_process`, its output
/// not captured (its errors must reach the terminal).
#[cfg(test)]
fn writers_command() -> Command {
    let mut command = Command::new(THIS_PROGRAM);
    command
        .args([
            "writers::tests::writers_process",
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
            "--quiet",
        ])
        .env(TEST_WRITERS, "1");
    command
}

/// Runs the writers of one run in a process of their own; returns when
/// they are done (or fails, killing the process, when they overrun the
/// window by `OVERRUN`). `fds` go to the senders and are closed here once
/// sent, so the writers' process holds the only copies.
pub fn run(
    senders: Vec<SenderSpec>,
    fds: Vec<OwnedFd>,
    sizes: Sizes,
    window: Duration,
    pace: Pace,
    progress: &Progress,
) -> Result<Written> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("a socket pair for the writers' process")?;
    // Spawned without a `pre_exec` hook, so std uses `posix_spawn`
    // (`vfork`-like): the harness's pages are never marked copy-on-write
    // for the child, not even until its `exec`.
    let child = writers_command()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .context("starting the writers' process")?;
    let mut child = KillOnDrop(child);
    let mut handed: Vec<BorrowedFd> = vec![progress.fd()];
    handed.extend(fds.iter().map(AsFd::as_fd));
    for chunk in handed.chunks(FDS_PER_RECORD) {
        let raw: Vec<RawFd> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
        sendmsg::<()>(
            ours.as_raw_fd(),
            &[IoSlice::new(FDS_ONLY)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .context("handing fds to the writers' process")?;
    }
    drop(handed);
    drop(fds);
    let order = Order {
        senders,
        sizes,
        window_ns: window.as_nanos() as u64,
        pace,
    };
    send_json(ours.as_fd(), &order).context("sending the writers' process its order")?;
    // Its answer comes once the window is over and the writers returned.
    let within = window + OVERRUN;
    let mut ready = [PollFd::new(ours.as_fd(), PollFlags::POLLIN)];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let left = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut ready, left) {
            Ok(0) => bail!(
                "the writers were still writing {}s after the window closed (a stalled \
                 system?); killed them",
                OVERRUN.as_secs()
            ),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err).context("waiting for the writers' process"),
        }
    }
    let mut buf = vec![0u8; RECORD_BYTES];
    let got = recv_record(ours.as_fd(), &mut buf, &mut Vec::new())?;
    if got == 0 {
        let status = child.wait()?;
        bail!(
            "the writers' process ended without an answer ({status}; what it said is on \
             standard error)"
        );
    }
    let outcome: Outcome =
        serde_json::from_slice(&buf[..got]).context("reading the writers' answer")?;
    // It ends right after answering: its writers are done.
    let status = child.wait()?;
    if let Some(error) = outcome.error {
        bail!("a writer failed: {error}");
    }
    if !status.success() {
        bail!("the writers' process ended with {status}");
    }
    let writing_ns = outcome
        .writing_ns
        .ok_or_else(|| anyhow!("no writer reached the start line"))?;
    Ok(Written {
        written: outcome.written,
        writing: Duration::from_nanos(writing_ns),
    })
}

/// The writers' process, killed (and reaped) if the harness gives up on it.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn wait(&mut self) -> Result<std::process::ExitStatus> {
        self.0
            .wait()
            .context("waiting for the writers' process to end")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Receives one record into `buf` and any fds it carries into `fds`;
/// returns its length (0 at the end of the stream).
fn recv_record(socket: BorrowedFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; FDS_PER_RECORD]);
    let mut iov = [IoSliceMut::new(buf)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receiving from the other side of the writers' socket")?;
    // Fds that did not fit are closed by the kernel, and nix will not
    // list the ones that did: say so rather than go on without them.
    if message.flags.intersects(MsgFlags::MSG_CTRUNC) {
        bail!(
            "fds handed over the writers' socket did not all arrive (out of files? raise \
             RLIMIT_NOFILE)"
        );
    }
    for control in message.cmsgs().context("reading the fds handed over")? {
        if let ControlMessageOwned::ScmRights(raw) = control {
            // SAFETY: SCM_RIGHTS installed these fds in this process just
            // now; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if message.flags.intersects(MsgFlags::MSG_TRUNC) {
        bail!("a record on the writers' socket was cut short");
    }
    Ok(message.bytes)
}

/// The writers' process's main: takes the order from standard input (the
/// socket), runs the writers, answers; an error before the writers ran is
/// the answer too, so the harness tells it.
pub fn serve() -> Result<()> {
    // Ends with the harness, should it die first (its main thread spawned
    // this process and lives as long as the harness).
    set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    // Whatever the harness had open without `O_CLOEXEC` (iceoryx2's
    // sockets) is not the writers' to hold.
    // SAFETY: closes fds 3 and up, which nothing in this process has
    // opened yet; the raw syscall takes three integers.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    iceoryx2::quiet_logs();
    let socket = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("standard input (the harness's socket)")?;
    let outcome = take_order(socket.as_fd()).map_or_else(
        |err| Outcome {
            written: 0,
            writing_ns: None,
            error: Some(format!("the writers' process: {err:#}")),
        },
        |(order, progress, fds)| {
            let outcome = write(&order, &fds, &progress);
            // The write ends close before the answer goes, so readers of
            // pipes see their end as soon as the harness goes on.
            drop(fds);
            outcome
        },
    );
    send_json(socket.as_fd(), &outcome).context("answering the harness")
}

/// Sends `value` as one record of JSON.
fn send_json(socket: BorrowedFd, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(value)?;
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &[],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// The senders' own copies of the fds handed over, as files to write.
pub fn files(fds: &[OwnedFd]) -> Result<Vec<File>> {
    fds.iter()
        .map(|fd| Ok(File::from(fd.try_clone()?)))
        .collect()
}

/// Receives the fds, then the order; the first fd is the run's `Progress`.
fn take_order(socket: BorrowedFd) -> Result<(Order, Progress, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let mut buf = vec![0u8; RECORD_BYTES];
    let order: Order = loop {
        let got = recv_record(socket, &mut buf, &mut fds)?;
        match &buf[..got] {
            [] => bail!("the harness closed the socket before sending an order"),
            FDS_ONLY => continue,
            order => break serde_json::from_slice(order).context("reading the order")?,
        }
    };
    let mut fds = fds.into_iter();
    let progress = Progress::open(fds.next().context("no progress memfd was handed over")?)?;
    Ok((order, progress, fds.collect()))
}

/// Runs the order's writers on threads of their own; all meet at the start
/// line, so the window opens once every sender is made.
fn write(order: &Order, fds: &[OwnedFd], progress: &Progress) -> Outcome {
    let window = Duration::from_nanos(order.window_ns);
    let start = StartLine::new(order.senders.len(), window);
    let results: Vec<Result<(u64, Instant)>> = thread::scope(|scope| {
        let writers: Vec<_> = order
            .senders
            .iter()
            .enumerate()
            .map(|(id, spec)| {
                let start = &start;
                scope.spawn(move || {
                    // A writer whose making panicked still meets the others
                    // at the start line (else they would wait there for it
                    // until the harness gives up), failed.
                    let sender = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        spec.make(order.sizes, fds)
                    }))
                    .unwrap_or_else(|_| Err(anyhow!("making the {spec:?} writer panicked")));
                    writer(id, sender, order.sizes, start, progress, order.pace)
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|writer| {
                writer
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("a writer panicked")))
            })
            .collect()
    });
    let mut outcome = Outcome {
        written: 0,
        writing_ns: None,
        error: None,
    };
    let mut last = None;
    for result in results {
        match result {
            Ok((sent, ended)) => {
                outcome.written += sent;
                last = last.max(Some(ended));
            }
            Err(err) => {
                outcome.error.get_or_insert(format!("{err:#}"));
            }
        }
    }
    if let (Some(begun), Some(last)) = (start.begun.get(), last) {
        outcome.writing_ns = Some(last.saturating_duration_since(*begun).as_nanos() as u64);
    }
    outcome
}

/// The start of a window: set once, by the first thread past the start
/// line, which also fixes when the window closes. Every thread reads the
/// same instant, and nothing depends on when a busy scheduler wakes any
/// other thread (with hundreds of busy reader threads on two vCPUs that
/// can be seconds).
pub struct StartLine {
    barrier: Barrier,
    begun: OnceLock<Instant>,
    duration: Duration,
}

impl StartLine {
    pub fn new(threads: usize, duration: Duration) -> Self {
        StartLine {
            barrier: Barrier::new(threads),
            begun: OnceLock::new(),
            duration,
        }
    }

    /// Waits for everyone; returns the start of the window, calling
    /// `opened` with it once (whoever is first), before any thread goes
    /// past the start line (so nobody writes while the window's end is
    /// not set yet).
    pub fn wait(&self, opened: impl FnOnce(Instant)) -> Instant {
        self.barrier.wait();
        *self.begun.get_or_init(|| {
            let begun = Instant::now();
            opened(begun);
            begun
        })
    }

    /// Whether the window that began at `begun` is over.
    pub fn over(&self, begun: Instant) -> bool {
        begun.elapsed() >= self.duration
    }
}

/// One writer: waits for the start with its sender made, writes until the
/// window is over; returns what it wrote and when its last burst returned.
fn writer(
    id: usize,
    sender: Result<Box<dyn Sender>>,
    sizes: Sizes,
    start: &StartLine,
    progress: &Progress,
    pace: Pace,
) -> Result<(u64, Instant)> {
    // Everyone meets at the start line, a failed writer too.
    let begun = start.wait(|begun| open_window(progress, begun, start.duration));
    let mut sender = sender?;
    let mut messages = Stamper::new(id as u32, sizes);
    let mut sent = 0u64;
    while !start.over(begun) {
        match pace {
            Pace::Flat => {
                sender.burst(BURST, &mut messages)?;
                sent += BURST as u64;
            }
            Pace::Rate(rate) => {
                let due = Duration::from_secs_f64(sent as f64 / f64::from(rate));
                if let Some(wait) = due.checked_sub(begun.elapsed()) {
                    thread::sleep(wait);
                }
                sender.burst(1, &mut messages)?;
                sent += 1;
            }
        }
    }
    let ended = Instant::now();
    sender.finish()?;
    Ok((sent, ended))
}

/// Fixes the window's end for the receivers: `duration` after `begun`.
fn open_window(progress: &Progress, begun: Instant, duration: Duration) {
    let now = message::now_ns();
    let since = begun.elapsed().as_nanos() as u64;
    progress.close_window_at(now.saturating_sub(since) + duration.as_nanos() as u64);
}

/// Messages per burst at full speed.
pub const BURST: usize = 64;

#[cfg(test)]
mod tests {
    /// Not a test: the entry point of the writers' process when the
    /// harness's tests run it (`writers_command`), ignored otherwise.
    #[test]
    #[ignore = "the writers' process of the harness's tests; they run it"]
    fn writers_process() {
        // Run by hand (`--ignored`) it is nothing: no harness sent it
        // anything.
        if std::env::var_os(super::TEST_WRITERS).is_none() {
            return;
        }
        let code = match super::serve() {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("the writers' process: {err:#}");
                1
            }
        };
        std::process::exit(code);
    }
}
