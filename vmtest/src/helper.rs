//! The suite's own binary doubles as a helper process, so tests can try
//! things as another user or with fewer capabilities: `open_as` re-executes
//! it under `setpriv`, and it reports the errno of one `open(2)`.

use anyhow::{bail, ensure, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

const OPEN_VAR: &str = "KCHAT_VMTEST_HELPER_OPEN";

/// Helper job: open the room non-blocking for writing and write one
/// 100-byte message; prints "ok" or the errno name.
const WRITE_VAR: &str = "KCHAT_VMTEST_HELPER_WRITE";
/// Helper job: open the room for reading as often as allowed, up to the
/// count in `KCHAT_VMTEST_HELPER_COUNT`; prints how many opened and the
/// errno that stopped it.
const READERS_VAR: &str = "KCHAT_VMTEST_HELPER_READERS";
const COUNT_VAR: &str = "KCHAT_VMTEST_HELPER_COUNT";
/// Helper job: open the room for reading in framed mode, read one message
/// (at most `PATIENCE`) and print its header's "pid uid gid", or the errno
/// name.
const FRAMED_VAR: &str = "KCHAT_VMTEST_HELPER_FRAMED";
/// Helper job: write `KCHAT_VMTEST_HELPER_COUNT` messages of 1 KiB to the
/// room and print this process's cgroup's `memory.current` before and after.
const MEMCG_VAR: &str = "KCHAT_VMTEST_HELPER_MEMCG";
/// Helper job: create the room named here with a ring of
/// `KCHAT_VMTEST_HELPER_COUNT` bytes and print this process's cgroup's
/// `memory.current` before and after.
const MEMCG_CREATE_VAR: &str = "KCHAT_VMTEST_HELPER_MEMCG_CREATE";
/// Helper job: connect `KCHAT_VMTEST_HELPER_COUNT` times to the unix socket
/// and hold every connection (as far as this process's descriptors allow),
/// printing "held" once done, until killed.
const CONNECT_VAR: &str = "KCHAT_VMTEST_HELPER_CONNECT";
/// With `CONNECT_VAR`: a line to send on each connection (and then never
/// read what comes back).
const SEND_VAR: &str = "KCHAT_VMTEST_HELPER_SEND";
/// Helper job: open the room for writing and try `IOC_SET_RELAY`; prints
/// "ok" or the errno name.
const RELAY_VAR: &str = "KCHAT_VMTEST_HELPER_RELAY";
/// Helper job: open the room for reading and map it; prints "ok" or the
/// errno name.
const MAP_VAR: &str = "KCHAT_VMTEST_HELPER_MAP";

fn errno_of(err: &std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(0))
}

/// In a helper process, does its one job and returns its exit code.
pub fn run_if_requested() -> Option<ExitCode> {
    if let Some(path) = std::env::var_os(RELAY_VAR) {
        let outcome = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|err| errno_of(&err))
            .and_then(kchat_client::set_relay);
        match outcome {
            Ok(_) => println!("ok"),
            Err(errno) => println!("{errno:?}"),
        }
        return Some(ExitCode::SUCCESS);
    }
    if let Some(path) = std::env::var_os(MAP_VAR) {
        let outcome = std::fs::File::open(&path)
            .map_err(|err| format!("{:?}", errno_of(&err)))
            .and_then(|file| {
                kchat_client::mapped::MappedRoom::map(file).map_err(|err| match err {
                    kchat_client::mapped::MapError::Map(errno) => format!("{errno:?}"),
                    other => other.to_string(),
                })
            });
        match outcome {
            Ok(_) => println!("ok"),
            Err(said) => println!("{said}"),
        }
        return Some(ExitCode::SUCCESS);
    }
    if let Some(path) = std::env::var_os(CONNECT_VAR) {
        use std::io::Write;
        let count: usize = std::env::var(COUNT_VAR).ok()?.parse().ok()?;
        // SAFETY: alarm only schedules SIGALRM, whose default action ends
        // this helper if the test never kills it: well after the test's own
        // wait for it (`PATIENCE`) and its use of the connections.
        unsafe { nix::libc::alarm(3 * PATIENCE.as_secs() as u32) };
        let line = std::env::var(SEND_VAR).ok();
        let held: Vec<_> = (0..count)
            .filter_map(|_| std::os::unix::net::UnixStream::connect(&path).ok())
            .filter_map(|mut stream| match &line {
                Some(line) => stream.write_all(line.as_bytes()).ok().map(|()| stream),
                None => Some(stream),
            })
            .collect();
        println!("held {}", held.len());
        std::io::stdout().flush().ok();
        loop {
            std::thread::park();
        }
    }
    if let Ok(name) = std::env::var(MEMCG_CREATE_VAR) {
        let bytes: u32 = std::env::var(COUNT_VAR).ok()?.parse().ok()?;
        match create_and_measure(&name, bytes) {
            Ok((before, after)) => println!("{before} {after}"),
            Err(err) => println!("{err:#}"),
        }
        return Some(ExitCode::SUCCESS);
    }
    if let Some(path) = std::env::var_os(MEMCG_VAR) {
        let count: usize = std::env::var(COUNT_VAR).ok()?.parse().ok()?;
        match write_and_measure(Path::new(&path), count) {
            Ok((before, after)) => println!("{before} {after}"),
            Err(err) => println!("{err:#}"),
        }
        return Some(ExitCode::SUCCESS);
    }
    if let Some(path) = std::env::var_os(FRAMED_VAR) {
        match read_one_frame(Path::new(&path)) {
            Ok(header) => println!("{} {} {}", header.pid, header.uid, header.gid),
            Err(err) => println!("{err:#}"),
        }
        return Some(ExitCode::SUCCESS);
    }
    if let Some(path) = std::env::var_os(WRITE_VAR) {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let outcome = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&path)
            .and_then(|mut room| room.write_all(&[b'x'; 100]));
        match outcome {
            Ok(()) => println!("ok"),
            Err(err) => println!("{:?}", errno_of(&err)),
        }
        return Some(ExitCode::SUCCESS);
    }
    if let Some(path) = std::env::var_os(READERS_VAR) {
        let count: usize = std::env::var(COUNT_VAR).ok()?.parse().ok()?;
        let mut open = Vec::new();
        let mut stopped = "none".to_owned();
        for _ in 0..count {
            match std::fs::File::open(&path) {
                Ok(file) => open.push(file),
                Err(err) => {
                    stopped = format!("{:?}", errno_of(&err));
                    break;
                }
            }
        }
        println!("{} {stopped}", open.len());
        return Some(ExitCode::SUCCESS);
    }
    let path = std::env::var_os(OPEN_VAR)?;
    let outcome = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path);
    match outcome {
        Ok(_) => println!("opened"),
        Err(err) => println!(
            "{:?}",
            nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(0))
        ),
    }
    Some(ExitCode::SUCCESS)
}

/// Opens `path` read-write in a child run by `setpriv` with `setpriv_args`
/// (`--reuid=...`, `--bounding-set=...`); returns "opened" or the errno name.
pub fn open_as(path: &Path, setpriv_args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().context("finding the suite's own binary")?;
    let out = Command::new("setpriv")
        .args(setpriv_args)
        .arg("--")
        .arg(exe)
        .env(OPEN_VAR, path)
        .output()
        .context("running setpriv (util-linux)")?;
    if !out.status.success() {
        bail!(
            "helper under setpriv {setpriv_args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `setpriv` arguments that drop to nobody (65534) with no groups.
pub const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// Runs `script` with `sh -c` as nobody; fails unless it exits 0.
pub fn sh_as_nobody(script: &str) -> Result<()> {
    let status = Command::new("setpriv")
        .args(NOBODY)
        .args(["--", "sh", "-c", script])
        .status()
        .context("running setpriv (util-linux)")?;
    if !status.success() {
        bail!("`{script}` as nobody failed ({status})");
    }
    Ok(())
}

/// A binary of the workspace, built next to this suite.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the suite's own binary")?;
    let path = exe.with_file_name(name);
    ensure!(
        path.exists(),
        "{} is missing: build the workspace first",
        path.display()
    );
    Ok(path)
}

/// How long the suite waits for anything whose time scales with the guest's
/// speed: a process starting, `cat` opening a room, a shell's first writes,
/// kchatd starting or answering, a thread reaching a blocking call, a wake-up.
/// Sized for the slowest guest the suite runs on, the KASAN kernel under TCG
/// (about ten times slower than the debug kernel) on a busy two-core host,
/// where such steps took over 10 s (and kchatd's start over 30 s): only a real
/// stall runs out of it, and a stalled test still fails within minutes.
/// Bounds a test measures on purpose (a laggard's 300 ms, a completion that
/// must not come) are the test's own and stay short.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Polls `done` every 50 ms until it holds or `limit` passes (for what
/// scales with the guest's speed, [`PATIENCE`]).
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

/// Runs this binary as a helper under `setpriv` with `setpriv_args` and the
/// given environment; returns what it printed.
pub fn helper_as(setpriv_args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let exe = std::env::current_exe().context("finding the suite's own binary")?;
    let out = Command::new("setpriv")
        .args(setpriv_args)
        .arg("--")
        .arg(exe)
        .envs(env.iter().copied())
        .output()
        .context("running setpriv (util-linux)")?;
    ensure!(out.status.success(), "helper failed: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Helper: one non-blocking write of a 100-byte message to `room`.
pub fn write_once_as(setpriv_args: &[&str], room: &Path) -> Result<String> {
    helper_as(setpriv_args, &[(WRITE_VAR, &room.display().to_string())])
}

/// Helper: opens `room` for reading up to `count` times; returns how many
/// opened and the errno that stopped it ("none" if none did).
pub fn open_readers_as(
    setpriv_args: &[&str],
    room: &Path,
    count: usize,
) -> Result<(usize, String)> {
    let out = helper_as(
        setpriv_args,
        &[
            (READERS_VAR, &room.display().to_string()),
            (COUNT_VAR, &count.to_string()),
        ],
    )?;
    let (opened, stopped) = out.split_once(' ').context("helper output")?;
    Ok((opened.parse()?, stopped.to_owned()))
}

fn read_one_frame(path: &Path) -> Result<kchat_uapi::abi::FrameHeader> {
    use std::io::Read;
    let mut room = std::fs::File::open(path).context("opening the room")?;
    kchat_client::set_read_mode(&room, kchat_uapi::abi::READ_FRAMED)?;
    // SAFETY: alarm only schedules SIGALRM, whose default action ends this
    // helper: a read that never returns cannot hang the test.
    unsafe { nix::libc::alarm(PATIENCE.as_secs() as u32) };
    let mut buf = [0u8; 4096];
    let n = room.read(&mut buf).context("reading")?;
    let frames = kchat_client::split_frames(&buf[..n]).context("a torn frame")?;
    Ok(frames.first().context("no frame")?.0)
}

/// Runs the helper that reads one framed message from `room` under
/// `wrapper` (e.g. `unshare -U -r`), in the background; its output is the
/// first frame's "pid uid gid".
pub fn framed_reader_under(wrapper: &[&str], room: &Path) -> Result<std::process::Child> {
    let exe = std::env::current_exe().context("finding the suite's own binary")?;
    Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(exe)
        .env(FRAMED_VAR, room)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {wrapper:?}"))
}

fn memory_current() -> Result<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
    let path = cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .context("not in a cgroup v2 hierarchy")?;
    let file = format!("/sys/fs/cgroup{path}/memory.current");
    Ok(std::fs::read_to_string(&file)
        .with_context(|| format!("reading {file}"))?
        .trim()
        .parse()?)
}

fn write_and_measure(path: &Path, count: usize) -> Result<(u64, u64)> {
    use std::io::Write;
    let mut room = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .context("opening the room")?;
    let message = [b'm'; 1024];
    let before = memory_current()?;
    for _ in 0..count {
        room.write_all(&message).context("writing")?;
    }
    Ok((before, memory_current()?))
}

fn create_and_measure(name: &str, ring_bytes: u32) -> Result<(u64, u64)> {
    let control = kchat_client::Control::open().context("opening the control node")?;
    let spec = kchat_uapi::abi::RoomSpec {
        ring_bytes,
        ..kchat_client::spec(name)
    };
    let before = memory_current()?;
    control.create(&spec).context("creating the room")?;
    Ok((before, memory_current()?))
}

/// Runs the memory helper in cgroup `cgroup` (a directory under
/// /sys/fs/cgroup): `count` 1 KiB messages to `room`; returns
/// `memory.current` before and after.
pub fn write_in_cgroup(cgroup: &Path, room: &Path, count: usize) -> Result<(u64, u64)> {
    memory_helper(cgroup, MEMCG_VAR, room.as_os_str(), count as u64)
}

/// Runs the memory helper in cgroup `cgroup`: creates room `name` with a
/// ring of `ring_bytes`; returns `memory.current` before and after.
pub fn create_in_cgroup(cgroup: &Path, name: &str, ring_bytes: u32) -> Result<(u64, u64)> {
    memory_helper(
        cgroup,
        MEMCG_CREATE_VAR,
        std::ffi::OsStr::new(name),
        u64::from(ring_bytes),
    )
}

fn memory_helper(
    cgroup: &Path,
    job: &str,
    arg: &std::ffi::OsStr,
    count: u64,
) -> Result<(u64, u64)> {
    let exe = std::env::current_exe().context("finding the suite's own binary")?;
    let out = Command::new("timeout")
        .arg(PATIENCE.as_secs().to_string())
        .args(["sh", "-c", "echo $$ > \"$1/cgroup.procs\" && exec \"$0\""])
        .arg(exe)
        .arg(cgroup)
        .env(job, arg)
        .env(COUNT_VAR, count.to_string())
        .output()
        .context("running the memory helper")?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (before, after) = text
        .split_once(' ')
        .with_context(|| format!("the memory helper said {text:?} ({:?})", out.status))?;
    Ok((before.parse()?, after.parse()?))
}

/// This thread's kernel thread id, for [`wait_until_asleep`] in another.
pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { nix::libc::gettid() }
}

/// Waits (at most `PATIENCE`) until thread `tid` of this process sleeps: a
/// test that wants to wake a blocked call acts only once the call blocks.
pub fn wait_until_asleep(tid: i32) -> Result<()> {
    wait_for(&format!("thread {tid} to block"), PATIENCE, || {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
        Ok(stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('S')))
    })
}

/// Starts a helper under `setpriv` that connects `count` times to the unix
/// socket `path` and holds the connections until killed; returns once it
/// has made them all (at most `PATIENCE`).
pub fn hold_connections_as(
    setpriv_args: &[&str],
    path: &Path,
    count: usize,
) -> Result<std::process::Child> {
    hold_connections_sending_as(setpriv_args, path, count, None)
}

/// Like [`hold_connections_as`], sending `line` on each connection first
/// (and never reading the replies).
pub fn hold_connections_sending_as(
    setpriv_args: &[&str],
    path: &Path,
    count: usize,
    line: Option<&str>,
) -> Result<std::process::Child> {
    use std::io::BufRead;
    let exe = std::env::current_exe().context("finding the suite's own binary")?;
    // Descriptors for every connection: raised as root, kept by setpriv.
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={}", count + 64))
        .arg("setpriv")
        .args(setpriv_args)
        .arg("--")
        .arg(exe)
        .env(CONNECT_VAR, path)
        .env(COUNT_VAR, count.to_string())
        .envs(line.map(|line| (SEND_VAR, line)))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running prlimit and setpriv (util-linux)")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        tx.send(line).ok();
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(line) if line.starts_with("held ") => Ok(child),
        outcome => {
            // An early exit shows in its status; a stall is killed.
            let exited = child.try_wait().ok().flatten();
            child.kill().ok();
            let status = child.wait().ok();
            bail!(
                "the connection helper did not hold its connections: {outcome:?} \
                 (exited on its own: {exited:?}, status {status:?})"
            )
        }
    }
}

/// Helper: maps `room` under `wrapper` (`unshare ... --`); "ok" or the
/// errno name.
pub fn map_under(wrapper: &[&str], room: &Path) -> Result<String> {
    let exe = std::env::current_exe().context("finding the suite's own binary")?;
    let (program, args) = wrapper.split_first().context("an empty wrapper")?;
    let out = Command::new("timeout")
        .arg(PATIENCE.as_secs().to_string())
        .arg(program)
        .args(args)
        .arg(exe)
        .env(MAP_VAR, room)
        .output()
        .with_context(|| format!("running {wrapper:?}"))?;
    ensure!(out.status.success(), "the mapping helper failed: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Helper: opens `room` for writing under `setpriv` and tries to make the
/// fd a relay; "ok" or the errno name.
pub fn set_relay_as(setpriv_args: &[&str], room: &Path) -> Result<String> {
    helper_as(setpriv_args, &[(RELAY_VAR, &room.display().to_string())])
}

/// The metric names starting with `prefix` that the Grafana dashboard and
/// the alert rules use, per file; each file must name at least five.
pub fn dashboard_metric_names(
    prefix: &str,
) -> Result<Vec<(&'static str, std::collections::BTreeSet<String>)>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for file in ["dashboards/kchat.json", "dashboards/kchat-alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file))?;
        let used: std::collections::BTreeSet<String> = text
            .match_indices(prefix)
            .map(|(at, _)| {
                let rest = &text[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                rest[..end].to_owned()
            })
            .collect();
        ensure!(used.len() >= 5, "{file} names only {used:?}");
        files.push((file, used));
    }
    Ok(files)
}
