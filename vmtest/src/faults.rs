//! Fault injection: the kernel's failslab, fail_page_alloc and
//! fail_usercopy make kmalloc, page allocations and user copies fail at
//! random while kchat creates, opens, writes, reads and answers ioctls.
//!
//! Failures are limited to this test's own thread (`make-it-fail` with
//! `task-filter`) and, through the stack-trace filter, to calls made from
//! kchat.ko, so what fails is kchat's own error handling and not the test's
//! page faults (devtmpfs's node bookkeeping is spared: see
//! `devtmpfs_range`). Every failed call must return ENOMEM or EFAULT and change
//! nothing; every accepted message must reach every reader exactly once;
//! counters must agree; the suite's log check (kmemleak, KASAN, lockdep)
//! must stay clean. Length: `KCHAT_FAULT_ITERATIONS`.

use crate::{
    client::{open, Control},
    module, Test,
};
use anyhow::{bail, ensure, Context, Result};
use kchat_client::{set_read_mode, spec};
use kchat_uapi::abi;
use nix::errno::Errno;
use std::{
    fs::File,
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

pub const TESTS: &[Test] = &[
    (
        "faults::failed_creates_and_deletes_leave_no_half_made_room",
        failed_creates_and_deletes_leave_no_half_made_room,
    ),
    (
        "faults::io_under_failures_delivers_exactly_what_was_accepted",
        io_under_failures_delivers_exactly_what_was_accepted,
    ),
];

const DEFAULT_ITERATIONS: u64 = 300;
/// Percent of eligible calls that fail while armed.
const PROBABILITY: u32 = 20;
/// The fault budget each attribute starts with; what is left tells how many
/// were injected (the kernel counts `times` down on every failure).
const BUDGET: u64 = 1_000_000;
/// The room of the I/O test.
const IO_ROOM: &str = "fault-io";
const KINDS: [&str; 3] = ["failslab", "fail_page_alloc", "fail_usercopy"];

fn iterations() -> u64 {
    std::env::var("KCHAT_FAULT_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS)
}

/// The three fault attributes, aimed at kchat.ko and this thread; off again
/// (and this thread no longer failing) when dropped.
struct Faults {
    armed: bool,
}

impl Faults {
    fn attr(kind: &str, name: &str) -> PathBuf {
        Path::new("/sys/kernel/debug").join(kind).join(name)
    }

    fn set(kind: &str, name: &str, value: &str) -> Result<()> {
        std::fs::write(Self::attr(kind, name), value)
            .with_context(|| format!("setting {kind}/{name} to {value}"))
    }

    /// kchat.ko's address range, from /proc/modules (root sees real
    /// addresses there).
    fn module_range() -> Result<(u64, u64)> {
        let modules = std::fs::read_to_string("/proc/modules")?;
        let line = modules
            .lines()
            .find(|l| l.starts_with("kchat "))
            .context("kchat is not in /proc/modules")?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let size: u64 = fields.get(1).context("no size")?.parse()?;
        // "kchat SIZE REFS DEPS STATE ADDRESS [TAINTS]"
        let base = fields
            .iter()
            .find(|f| f.starts_with("0x"))
            .context("no address")?;
        let base = u64::from_str_radix(base.trim_start_matches("0x"), 16)?;
        ensure!(base != 0, "/proc/modules hides kchat's address");
        Ok((base, base + size))
    }

    /// devtmpfs's node creation and removal, which the driver core calls
    /// for kchat and which give up silently when an allocation fails
    /// (`device_add` and `device_del` ignore their errors): a failure
    /// there leaves a room without a node, or a node without a room,
    /// whatever the driver does. Not kchat's to handle, so spared.
    fn devtmpfs_range() -> Result<(u64, u64)> {
        let symbols = std::fs::read_to_string("/proc/kallsyms")?;
        let address = |line: &str| u64::from_str_radix(line.split(' ').next().unwrap_or(""), 16);
        let mut lines = symbols.lines();
        let start = lines
            .by_ref()
            .find(|l| l.ends_with(" devtmpfs_create_node"))
            .context("no devtmpfs_create_node in /proc/kallsyms")?;
        lines
            .by_ref()
            .find(|l| l.ends_with(" devtmpfs_delete_node"))
            .context("no devtmpfs_delete_node after devtmpfs_create_node")?;
        let end = lines.next().context("nothing after devtmpfs_delete_node")?;
        Ok((address(start)?, address(end)?))
    }

    fn aim() -> Result<Faults> {
        ensure!(
            Self::attr("failslab", "probability").exists(),
            "no /sys/kernel/debug/failslab: the test kernel lacks fault injection"
        );
        let (start, end) = Self::module_range()?;
        let (spared_start, spared_end) = Self::devtmpfs_range()?;
        for kind in KINDS {
            Self::set(kind, "probability", "0")?;
            Self::set(kind, "interval", "1")?;
            Self::set(kind, "times", &BUDGET.to_string())?;
            Self::set(kind, "space", "0")?;
            Self::set(kind, "verbose", "0")?;
            Self::set(kind, "task-filter", "Y")?;
            Self::set(kind, "require-start", &start.to_string())?;
            Self::set(kind, "require-end", &end.to_string())?;
            Self::set(kind, "reject-start", &spared_start.to_string())?;
            Self::set(kind, "reject-end", &spared_end.to_string())?;
            Self::set(kind, "stacktrace-depth", "32")?;
        }
        // By default both skip allocations that may sleep, which is every
        // allocation kchat makes.
        Self::set("failslab", "ignore-gfp-wait", "N")?;
        Self::set("fail_page_alloc", "ignore-gfp-wait", "N")?;
        Self::set("fail_page_alloc", "min-order", "0")?;
        for kind in KINDS {
            Self::set(kind, "probability", &PROBABILITY.to_string())?;
        }
        Ok(Faults { armed: false })
    }

    /// Whether this thread's calls into kchat may fail from now on.
    fn arm(&mut self, on: bool) -> Result<()> {
        std::fs::write("/proc/thread-self/make-it-fail", if on { "1" } else { "0" })
            .context("setting make-it-fail")?;
        self.armed = on;
        Ok(())
    }

    /// Failures injected so far, per kind.
    fn injected(&self) -> Result<[u64; 3]> {
        let mut counts = [0; 3];
        for (count, kind) in counts.iter_mut().zip(KINDS) {
            let left: u64 = std::fs::read_to_string(Self::attr(kind, "times"))?
                .trim()
                .parse()?;
            *count = BUDGET
                .checked_sub(left)
                .with_context(|| format!("{kind}: {left} failures left of {BUDGET}"))?;
        }
        Ok(counts)
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::write("/proc/thread-self/make-it-fail", "0");
        }
        for kind in KINDS {
            let _ = Self::set(kind, "probability", "0");
        }
    }
}

/// What an armed call may return besides success.
fn injected_error(what: &str, err: Errno) -> Result<()> {
    match err {
        Errno::ENOMEM | Errno::EFAULT => Ok(()),
        other => bail!("{what} failed with {other} under fault injection (want ENOMEM or EFAULT)"),
    }
}

fn io_errno(err: &std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(0))
}

fn listed(control: &Control, name: &str) -> Result<bool> {
    let (names, _) = control.list(256)?;
    Ok(names.iter().any(|n| n == name))
}

/// Rooms created and deleted with allocations and copies failing: a create
/// either makes the whole room (listed, node present, usable) or nothing,
/// and a delete either removes it all or leaves it whole.
fn failed_creates_and_deletes_leave_no_half_made_room() -> Result<()> {
    module::ensure_loaded()?;
    let control = Control::open()?;
    let name = "fault-cr";
    let node = kchat_client::room_path(name);
    let _ = control.delete(name);
    let mut faults = Faults::aim()?;
    let (mut made, mut refused, mut deleted, mut kept) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..iterations() {
        faults.arm(true)?;
        let created = control.create(&spec(name));
        faults.arm(false)?;
        match created {
            Ok(()) => {
                made += 1;
                ensure!(listed(&control, name)?, "a created room is not listed");
                ensure!(node.exists(), "a created room has no node");
                let mut writer = open(&node, false, true, true)?;
                writer.write_all(b"alive")?;
            }
            Err(err) => {
                injected_error("create", err)?;
                refused += 1;
                ensure!(
                    !listed(&control, name)?,
                    "a refused create left a listed room"
                );
                ensure!(!node.exists(), "a refused create left {}", node.display());
                // The name must be free again, and the slot reusable.
                control.create(&spec(name))?;
            }
        }
        faults.arm(true)?;
        let removed = control.delete(name);
        faults.arm(false)?;
        match removed {
            Ok(()) => deleted += 1,
            Err(err) => {
                injected_error("delete", err)?;
                kept += 1;
                ensure!(listed(&control, name)?, "a refused delete removed the room");
                control.delete(name)?;
            }
        }
        ensure!(!node.exists(), "a deleted room left {}", node.display());
    }
    let [slab, pages, copies] = faults.injected()?;
    drop(faults);
    eprintln!(
        "faults: create/delete: {made} made, {refused} refused, {deleted} deleted, \
         {kept} deletes refused; injected {slab} slab, {pages} page, {copies} copy failures"
    );
    ensure!(refused > 0, "no create ever failed: nothing was injected");
    Ok(())
}

/// One room, three readers and a writer, with every call armed: writes,
/// reads, opens and ioctls fail at random. Afterwards each reader holds
/// exactly the accepted messages, in order, and the counters agree.
fn io_under_failures_delivers_exactly_what_was_accepted() -> Result<()> {
    module::ensure_loaded()?;
    let control = Control::open()?;
    let _ = control.delete(IO_ROOM);
    let mut room_spec = spec(IO_ROOM);
    room_spec.max_msg = 4096;
    // Room for every message, so nothing is lost to the ring moving on.
    room_spec.ring_bytes = 1 << 20;
    control.create(&room_spec)?;
    let node = kchat_client::room_path(IO_ROOM);
    let result = io_under_failures(&control, &node);
    let _ = control.delete(IO_ROOM);
    result
}

fn io_under_failures(control: &Control, node: &Path) -> Result<()> {
    const READERS: usize = 3;
    let mut writer = open(node, false, true, true)?;
    let mut faults = Faults::aim()?;
    let mut open_errors = 0;
    let mut readers: Vec<(File, Vec<String>)> = Vec::new();
    // Readers join under faults; a refused open must not count as one.
    for _ in 0..1000 {
        if readers.len() == READERS {
            break;
        }
        faults.arm(true)?;
        let opened = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(node);
        faults.arm(false)?;
        match opened {
            Ok(reader) => {
                set_read_mode(&reader, abi::READ_PACKET)?;
                readers.push((reader, Vec::new()));
            }
            Err(err) => {
                injected_error("open", io_errno(&err))?;
                open_errors += 1;
            }
        }
        let info = control.info(IO_ROOM)?;
        ensure!(
            info.readers as usize == readers.len(),
            "{} readers counted, {} open",
            info.readers,
            readers.len()
        );
    }
    ensure!(
        readers.len() == READERS,
        "only {} readers joined",
        readers.len()
    );
    let mut accepted = Vec::new();
    let (mut write_errors, mut read_errors, mut ioctl_errors) = (0, 0, 0);
    // Copy failures injected into writes: a write copies with page faults
    // off and, when the copy comes up short, faults its buffer in and
    // tries again, so a failed copy of good memory is retried, not an
    // error. These count what writes absorbed.
    let mut write_copy_faults = 0u64;
    let mut buf = vec![0u8; 4096];
    for i in 0..iterations() {
        let message = format!("message {i} {}", "x".repeat((i % 200) as usize));
        let [_, _, copies_before] = faults.injected()?;
        faults.arm(true)?;
        let written = writer.write(message.as_bytes());
        faults.arm(false)?;
        let [_, _, copies_after] = faults.injected()?;
        write_copy_faults += copies_after.saturating_sub(copies_before);
        faults.arm(true)?;
        match written {
            Ok(n) if n == message.len() => accepted.push(message),
            Ok(n) => bail!("a {}-byte message was written in part ({n})", message.len()),
            Err(err) => {
                injected_error("write", io_errno(&err))?;
                write_errors += 1;
            }
        }
        for (reader, got) in &mut readers {
            match reader.read(&mut buf) {
                Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(err) if io_errno(&err) == Errno::EAGAIN => {}
                Err(err) => {
                    injected_error("read", io_errno(&err))?;
                    read_errors += 1;
                }
            }
        }
        if let Err(err) = control.info(IO_ROOM) {
            injected_error("info", err)?;
            ioctl_errors += 1;
        }
        faults.arm(false)?;
    }
    let [slab, pages, copies] = faults.injected()?;
    drop(faults);
    for (reader, got) in &mut readers {
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(err) if io_errno(&err) == Errno::EAGAIN => break,
                Err(err) => return Err(err).context("reading after the faults"),
            }
        }
    }
    for (n, (_, got)) in readers.iter().enumerate() {
        if *got != accepted {
            let first_bad = got.iter().zip(&accepted).position(|(a, b)| a != b);
            bail!(
                "reader {n} got {} messages, {} were accepted; first difference at {first_bad:?}",
                got.len(),
                accepted.len()
            );
        }
    }
    let info = control.info(IO_ROOM)?;
    let accepted_count = accepted.len() as u64;
    ensure!(
        info.msgs_in == accepted_count,
        "msgs_in {} != accepted {accepted_count}",
        info.msgs_in
    );
    ensure!(
        info.deliveries == READERS as u64 * accepted_count,
        "deliveries {} != {READERS} x {accepted_count}",
        info.deliveries
    );
    ensure!(info.lost == 0, "{} messages lost", info.lost);
    ensure!(
        info.readers == READERS as u32,
        "{} readers counted, {READERS} open",
        info.readers
    );
    eprintln!(
        "faults: io: {accepted_count} messages accepted, {write_errors} writes, {read_errors} reads, \
         {open_errors} opens, {ioctl_errors} info calls failed; every reader got every accepted \
         message; injected {slab} slab, {pages} page, {copies} copy failures \
         ({write_copy_faults} in writes, retried)"
    );
    ensure!(
        write_copy_faults > 0 && read_errors > 0,
        "faults never reached writes' copies ({write_copy_faults}) or reads ({read_errors})"
    );
    Ok(())
}
