//! The model-based test: random operation sequences run on the real module
//! and on `kchat-model`'s reference room, every answer compared.
//!
//! Each case runs on a fresh tiny room (4 or 8 KiB ring, small `max_msg`)
//! so eviction and back-pressure happen constantly. A case is written to
//! the run folder (JSON) before it runs, so a case that takes the guest
//! down is still there to replay. A mismatch is shrunk to a minimal case,
//! printed with the seed that finds it again.
//!
//! Knobs (environment): `KCHAT_MODEL_SEED` (replay a run), `KCHAT_MODEL_CASES`
//! and `KCHAT_MODEL_SECONDS` (how much to run; `cargo xtask model --minutes N`
//! sets the latter), `KCHAT_MODEL_REPLAY=FILE` (run one logged case).

use crate::{
    client::{spec, Control, TempRoom},
    module, Test,
};
use anyhow::{bail, Context, Result};
use kchat_client::mapped::{MapError, MappedRoom, Next};
use kchat_model::{
    ops,
    room::{frame_header_bytes, Step, MAPPED_END},
    run_case, Api, Case, InfoView, Mismatch, Outcome, Policy, System, Who,
};
use kchat_uapi::abi;
use nix::{
    errno::Errno,
    libc,
    poll::{poll, PollFd, PollFlags, PollTimeout},
};
use proptest::{
    strategy::{Strategy, ValueTree},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use std::{
    fs::File,
    io::Write,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = &[
    (
        "model::the_module_matches_the_model",
        the_module_matches_the_model,
    ),
    (
        "model::a_loss_query_inside_a_message_is_safe",
        a_loss_query_inside_a_message_is_safe,
    ),
];

const ROOM: &str = "model";
/// Cases per kernel in CI, and the time they may take at most.
const CI_CASES: u32 = 400;
const CI_SECONDS: u64 = 100;
/// Longest case, in operations (a burst counts as one).
const MAX_OPS: usize = 120;
/// Most shrinking steps after a failure.
const MAX_SHRINK: u32 = 2000;

/// The room and the files a case opened on it, in open order, with each
/// file's mapping once a step mapped it.
struct Kernel {
    room: TempRoom,
    files: Vec<File>,
    maps: Vec<Option<MappedRoom>>,
    /// Before the case began (`CLOCK_REALTIME` ns): no stamp is older.
    started_ns: u64,
}

impl Kernel {
    fn new(case: &Case) -> Result<Self> {
        let mut spec = spec(ROOM);
        spec.policy = match case.settings.policy {
            Policy::Drop => abi::POLICY_DROP,
            Policy::Block => abi::POLICY_BLOCK,
        };
        spec.ring_bytes = case.settings.ring_bytes;
        spec.max_msg = case.settings.max_msg;
        spec.mode = 0o666;
        // The model has no clock: block rooms never evict their laggards
        // here (the bound has tests of its own, in trust.rs).
        if case.settings.policy == Policy::Block {
            spec.max_wait_ms = abi::MAX_WAIT_FOREVER;
        }
        Ok(Kernel {
            room: TempRoom::create(spec)?,
            files: Vec::new(),
            maps: Vec::new(),
            started_ns: realtime_ns(),
        })
    }

    fn open(
        &mut self,
        who: Who,
        read: bool,
        write: bool,
        direct: bool,
        nonblock: bool,
    ) -> Result<(), i32> {
        let mut flags = 0;
        if direct {
            flags |= libc::O_DIRECT;
        }
        if nonblock {
            flags |= libc::O_NONBLOCK;
        }
        let path = self.room.path();
        let opened = as_user(who, || {
            File::options()
                .read(read)
                .write(write)
                .custom_flags(flags)
                .open(&path)
        });
        let file = opened.map_err(|err| err.raw_os_error().unwrap_or(0))?;
        self.files.push(file);
        self.maps.push(None);
        Ok(())
    }

    /// `Step::MapRead`: up to `max` messages through the file's mapping
    /// (made now if it has none), as frames with their time checked and
    /// zeroed; then the reader's place reported.
    fn map_read(&mut self, fd: usize, max: usize) -> Result<Vec<u8>, i32> {
        if self.maps[fd].is_none() {
            let dup = self.files[fd]
                .try_clone()
                .map_err(|err| err.raw_os_error().unwrap_or(0))?;
            let mapped = MappedRoom::map(dup).map_err(|err| match err {
                MapError::Map(errno) | MapError::Report(errno) => errno as i32,
                // Not an errno the model knows: the mismatch shows.
                _ => -1,
            })?;
            self.maps[fd] = Some(mapped);
        }
        let Some(mapped) = self.maps[fd].as_mut() else {
            return Err(-1);
        };
        let (started, now) = (self.started_ns, realtime_ns());
        let mut out = Vec::new();
        for _ in 0..max {
            let next = mapped.read(|m| {
                let header = abi::FrameHeader {
                    seq: m.seq,
                    // A stamp outside the case's window shows as a
                    // mismatch (the model's are 0).
                    time_ns: if (started..=now + 1_000_000_000).contains(&m.time_ns) {
                        0
                    } else {
                        m.time_ns
                    },
                    lost: m.lost,
                    len: m.payload.len() as u32,
                    pid: m.pid,
                    uid: m.uid,
                    gid: m.gid,
                };
                let mut frame = frame_header_bytes(&header);
                frame.extend_from_slice(m.payload);
                frame
            });
            match next.map_err(|errno| errno as i32)? {
                Next::Message(frame) => out.extend(frame),
                Next::Empty => break,
                Next::Ended => {
                    out.extend_from_slice(MAPPED_END);
                    break;
                }
            }
        }
        mapped.report().map_err(|errno| errno as i32)?;
        Ok(out)
    }
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs `open` with the effective ids of `who` (the file keeps them as its
/// credentials, which is what the kernel stamps).
fn as_user<T>(who: Who, open: impl FnOnce() -> T) -> T {
    let id = who.uid();
    if id == 0 {
        return open();
    }
    // SAFETY: plain system calls; glibc applies them to every thread. Root
    // keeps its saved ids, so the switch back below succeeds.
    unsafe {
        libc::setresgid(u32::MAX, id, u32::MAX);
        libc::setresuid(u32::MAX, id, u32::MAX);
    }
    let result = open();
    // SAFETY: as above.
    unsafe {
        libc::setresuid(u32::MAX, 0, u32::MAX);
        libc::setresgid(u32::MAX, 0, u32::MAX);
    }
    result
}

fn errno() -> i32 {
    Errno::last_raw()
}

/// A blocking call that the model said returns at once gets 10 s, then
/// SIGALRM interrupts it (EINTR, which no model answer matches).
fn bounded<T>(call: impl FnOnce() -> T) -> T {
    // SAFETY: alarm only schedules a signal; the handler is installed once
    // in `install_alarm_handler`.
    unsafe { libc::alarm(10) };
    let result = call();
    // SAFETY: as above.
    unsafe { libc::alarm(0) };
    result
}

extern "C" fn on_alarm(_: libc::c_int) {}

fn install_alarm_handler() {
    // SAFETY: the handler does nothing, which is async-signal-safe; no
    // SA_RESTART, so the interrupted call returns EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_alarm as *const () as usize;
        libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());
    }
}

fn value(ret: i64) -> Outcome {
    Outcome::Value(if ret < 0 { Err(errno()) } else { Ok(ret) })
}

fn errno_of(result: Result<(), Errno>) -> Outcome {
    Outcome::Value(result.map(|()| 0).map_err(|e| e as i32))
}

impl System for Kernel {
    fn apply(&mut self, step: &Step) -> Outcome {
        match step {
            Step::Open {
                who,
                read,
                write,
                direct,
                nonblock,
            } => Outcome::Value(
                self.open(*who, *read, *write, *direct, *nonblock)
                    .map(|()| 0),
            ),
            Step::Close { fd } => {
                drop(self.maps.remove(*fd));
                drop(self.files.remove(*fd));
                Outcome::Value(Ok(0))
            }
            Step::MapRead { fd, max } => Outcome::Bytes(self.map_read(*fd, *max)),
            Step::Write { fd, data, api } => {
                let raw = self.files[*fd].as_raw_fd();
                let iov = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                // SAFETY: `iov` describes `data`, valid for reads.
                let ret = bounded(|| unsafe {
                    match api {
                        Api::Plain => libc::writev(raw, &iov, 1),
                        Api::NoWait => libc::pwritev2(raw, &iov, 1, -1, libc::RWF_NOWAIT),
                    }
                });
                value(ret as i64)
            }
            Step::Read { fd, space, api } => {
                let raw = self.files[*fd].as_raw_fd();
                let mut buf = vec![0u8; *space];
                // SAFETY: `buf` is valid for writes of its length.
                let ret = bounded(|| unsafe {
                    match api {
                        Api::Plain => libc::read(raw, buf.as_mut_ptr().cast(), buf.len()),
                        Api::NoWait => {
                            let iov = libc::iovec {
                                iov_base: buf.as_mut_ptr().cast(),
                                iov_len: buf.len(),
                            };
                            libc::preadv2(raw, &iov, 1, -1, libc::RWF_NOWAIT)
                        }
                    }
                });
                Outcome::Bytes(if ret < 0 {
                    Err(errno())
                } else {
                    buf.truncate(ret as usize);
                    Ok(buf)
                })
            }
            Step::SetMode { fd, mode } => {
                errno_of(kchat_client::set_read_mode(&self.files[*fd], *mode))
            }
            Step::SetWriteMode { fd, mode } => {
                errno_of(kchat_client::set_write_mode(&self.files[*fd], *mode))
            }
            Step::TakeLost { fd } => Outcome::Value(
                kchat_client::take_lost(&self.files[*fd])
                    .map(|n| n as i64)
                    .map_err(|e| e as i32),
            ),
            Step::Lseek { fd, offset, whence } => {
                // SAFETY: a plain system call on an open fd.
                let ret =
                    unsafe { libc::lseek(self.files[*fd].as_raw_fd(), *offset, *whence as i32) };
                value(ret)
            }
            Step::SeekSeq { fd, seq } => errno_of(kchat_client::seek_seq(&self.files[*fd], *seq)),
            Step::Poll { fd } => {
                let asked = PollFlags::from_bits_truncate(kchat_model::room::events::ASKED as i16);
                let mut fds = [PollFd::new(self.files[*fd].as_fd(), asked)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    Ok(_) => {
                        Outcome::Events(fds[0].revents().map_or(0, |r| r.bits() as u16 as u32))
                    }
                    Err(err) => Outcome::Value(Err(err as i32)),
                }
            }
            Step::Info => Outcome::Info(
                self.room
                    .control()
                    .info(ROOM)
                    .map(|info| InfoView::from_info(&info))
                    .map_err(|e| e as i32),
            ),
            Step::SetLimit(limit) => {
                let mut request = kchat_client::rate_limit(ROOM);
                request.scope = if limit.per_file {
                    abi::LIMIT_PER_FILE
                } else {
                    abi::LIMIT_PER_UID
                };
                request.msgs_per_sec = limit.msgs_per_sec;
                request.msg_burst = limit.msg_burst;
                request.bytes_per_sec = limit.bytes_per_sec;
                request.byte_burst = limit.byte_burst;
                errno_of(self.room.control().set_limit(&request))
            }
            Step::Delete => errno_of(self.room.control().delete(ROOM)),
        }
    }
}

/// Where each case is written before it runs: the run folder, which the
/// host keeps if the guest dies.
fn case_log() -> PathBuf {
    let run = Path::new("/run/kchat-vm");
    if run.is_dir() {
        run.join("model-case.json")
    } else {
        std::env::temp_dir().join("kchat-model-case.json")
    }
}

fn log_case(case: &Case) -> Result<()> {
    let path = case_log();
    // One write: the run folder is 9p, where each write is a round trip.
    let text = serde_json::to_vec(case)?;
    let mut file = File::create(&path).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(&text)?;
    file.sync_all()?;
    Ok(())
}

fn run_one(case: &Case) -> Result<Result<kchat_model::CaseReport, Box<Mismatch>>> {
    log_case(case)?;
    let mut kernel = Kernel::new(case)?;
    Ok(run_case(case, std::process::id(), &mut kernel))
}

fn env_number(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(text) => Ok(Some(
            text.parse().with_context(|| format!("{name}={text}"))?,
        )),
        Err(_) => Ok(None),
    }
}

fn the_module_matches_the_model() -> Result<()> {
    module::ensure_loaded()?;
    install_alarm_handler();
    if let Ok(path) = std::env::var("KCHAT_MODEL_REPLAY") {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let case: Case = serde_json::from_str(&text).context("parsing the logged case")?;
        return match run_one(&case)? {
            Ok(report) => {
                eprintln!("model: the logged case matches ({} steps)", report.steps);
                Ok(())
            }
            Err(mismatch) => bail!("the logged case differs from the model:\n{mismatch}"),
        };
    }
    let seed = env_number("KCHAT_MODEL_SEED")?.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let seconds = env_number("KCHAT_MODEL_SECONDS")?;
    let cases = env_number("KCHAT_MODEL_CASES")?.unwrap_or(if seconds.is_some() {
        u64::MAX
    } else {
        u64::from(CI_CASES)
    });
    let budget = Duration::from_secs(seconds.unwrap_or(CI_SECONDS));
    eprintln!("model: seed {seed} (replay: KCHAT_MODEL_SEED={seed})");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = ops::case(MAX_OPS);
    let started = Instant::now();
    let (mut ran, mut steps, mut truncated) = (0u64, 0usize, 0u64);
    while ran < cases && started.elapsed() < budget {
        let mut tree = strategy
            .new_tree(&mut runner)
            .map_err(|e| anyhow::anyhow!("generating a case: {e}"))?;
        let case = tree.current();
        ran += 1;
        let mismatch = match run_one(&case)? {
            Ok(report) => {
                steps += report.steps;
                truncated += u64::from(report.truncated);
                continue;
            }
            Err(mismatch) => mismatch,
        };
        eprintln!("model: case {ran} differs; shrinking");
        let (case, mismatch) = shrink(&mut tree, case, mismatch)?;
        log_case(&case)?;
        bail!(
            "the module differs from the model (seed {seed}, case {ran}; the minimal case is \
             in {} and replays with KCHAT_MODEL_REPLAY):\nsettings: {:?}\n{mismatch}",
            case_log().display(),
            case.settings,
        );
    }
    eprintln!(
        "model: {ran} cases, {steps} steps in {:.0?} ({truncated} ended early for rate refills)",
        started.elapsed()
    );
    std::fs::remove_file(case_log()).ok();
    Ok(())
}

/// Shrinks a failing case as proptest does: simplify while it still
/// fails, step back when it passes.
fn shrink(
    tree: &mut impl ValueTree<Value = Case>,
    mut case: Case,
    mut mismatch: Box<Mismatch>,
) -> Result<(Case, Box<Mismatch>)> {
    if !tree.simplify() {
        return Ok((case, mismatch));
    }
    for _ in 0..MAX_SHRINK {
        let candidate = tree.current();
        let failed = match run_one(&candidate)? {
            Err(found) => {
                case = candidate;
                mismatch = found;
                true
            }
            Ok(_) => false,
        };
        let more = if failed {
            tree.simplify()
        } else {
            tree.complicate()
        };
        if !more {
            break;
        }
    }
    Ok((case, mismatch))
}

/// The crash this test was built to catch, as a plain test: a stream read
/// 10 bytes into a message, the ring moves past it, `IOC_TAKE_LOST`, then a
/// read. Before the fix this panicked the kernel (subtraction overflow).
fn a_loss_query_inside_a_message_is_safe() -> Result<()> {
    module::ensure_loaded()?;
    let mut room_spec = spec("lossquery");
    room_spec.ring_bytes = abi::MIN_RING_BYTES;
    let room = TempRoom::create(room_spec)?;
    let mut reader = crate::client::open(&room.path(), true, true, true)?;
    let mut writer = room.open_write_nonblock()?;
    reader.write_all(&[b'a'; 100])?;
    let mut buf = [0u8; 4096];
    let n = std::io::Read::read(&mut reader, &mut buf[..10])?;
    anyhow::ensure!(n == 10, "the first read returned {n} bytes, not 10");
    for i in 0..200u8 {
        writer.write_all(&[i])?;
    }
    let lost = kchat_client::take_lost(&reader).context("IOC_TAKE_LOST")?;
    let info = Control::open()?.info("lossquery")?;
    anyhow::ensure!(
        lost == info.first_seq,
        "lost {lost}, expected everything before the oldest message {}",
        info.first_seq
    );
    let n = std::io::Read::read(&mut reader, &mut buf)?;
    // The oldest retained one-byte message is number first_seq - 1; the
    // read starts at its first byte and returns whole messages. Wrapping:
    // a wrong first_seq (0) must show as a mismatch, not overflow.
    let expected: Vec<u8> = (0..n as u64)
        .map(|i| info.first_seq.wrapping_sub(1).wrapping_add(i) as u8)
        .collect();
    anyhow::ensure!(
        buf[..n] == expected[..],
        "after the loss query the read returned {:?}, expected whole messages from the oldest",
        &buf[..n]
    );
    Ok(())
}
