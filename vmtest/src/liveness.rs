//! Liveness (issue 20): nobody's stall holds anyone else up. A writer or
//! reader stalled in its own page fault holds no other writer, a
//! non-blocking write never waits for its own memory, a message that can
//! never fit is refused at once, a laggard is evicted once, not once per
//! write, every waiter is woken, and one user's subordinate ids are that
//! user. Each test failed on the module before its fix.
//!
//! A buffer whose page fault nobody serves (a userfaultfd registered over
//! it, its fault never resolved) stands in for a stalled FUSE or network
//! file: reading the fault's event from the userfaultfd tells, without
//! guessing at time, that a task is stalled in it. Processes that may
//! stall, or must be another user, are forked children that make raw
//! system calls only and report over a pipe; every wait for them is
//! bounded, and a test that finds one stuck releases it (serves its fault,
//! deletes the room, kills it) before it fails.

use crate::{
    client::{open, spec, Control, TempRoom},
    helper::PATIENCE,
    module, Test,
};
use anyhow::{bail, ensure, Context, Result};
use kchat_client::mapped::{MappedRoom, Next};
use kchat_uapi::abi;
use nix::{
    errno::Errno,
    libc,
    poll::{PollFd, PollFlags, PollTimeout},
    sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
};
use std::{
    ffi::CString,
    fs::File,
    io::{ErrorKind, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = &[
    (
        "liveness::a_writer_stalled_in_a_page_fault_holds_up_no_other_writer",
        a_writer_stalled_in_a_page_fault_holds_up_no_other_writer,
    ),
    (
        "liveness::messages_before_a_stalled_fault_reach_waiting_readers",
        messages_before_a_stalled_fault_reach_waiting_readers,
    ),
    (
        "liveness::a_write_running_into_a_hole_is_efault",
        a_write_running_into_a_hole_is_efault,
    ),
    (
        "liveness::a_write_running_into_a_hole_midway_keeps_the_messages_before_it",
        a_write_running_into_a_hole_midway_keeps_the_messages_before_it,
    ),
    (
        "liveness::a_nowait_write_from_a_stalled_buffer_is_eagain",
        a_nowait_write_from_a_stalled_buffer_is_eagain,
    ),
    (
        "liveness::a_relayed_message_that_can_never_fit_is_emsgsize",
        a_relayed_message_that_can_never_fit_is_emsgsize,
    ),
    (
        "liveness::a_relay_fd_is_made_by_its_opener_not_its_holder",
        a_relay_fd_is_made_by_its_opener_not_its_holder,
    ),
    (
        "liveness::a_relay_fd_is_writable_only_when_a_relayed_message_fits",
        a_relay_fd_is_writable_only_when_a_relayed_message_fits,
    ),
    (
        "liveness::a_laggard_evicted_past_its_bound_holds_the_room_no_more",
        a_laggard_evicted_past_its_bound_holds_the_room_no_more,
    ),
    (
        "liveness::edge_triggered_epoll_wakes_a_mapped_reader_for_every_message",
        edge_triggered_epoll_wakes_a_mapped_reader_for_every_message,
    ),
    (
        "liveness::the_control_page_tells_of_every_eviction_at_once",
        the_control_page_tells_of_every_eviction_at_once,
    ),
    (
        "liveness::a_reader_lapped_while_its_copy_faults_gets_whole_messages",
        a_reader_lapped_while_its_copy_faults_gets_whole_messages,
    ),
    (
        "liveness::mapped_rings_are_never_executable_and_survive_madvise",
        mapped_rings_are_never_executable_and_survive_madvise,
    ),
    (
        "liveness::per_user_limits_count_a_users_subordinate_ids_as_that_user",
        per_user_limits_count_a_users_subordinate_ids_as_that_user,
    ),
];

const PAGE: usize = 4096;

/// Bytes a relayed message's record carries besides a plain one's.
const ORIGIN: u32 = size_of::<abi::OriginHeader>() as u32;
/// Bytes of a relay write before its payload.
const RELAY_HEADER: usize = size_of::<abi::RelayHeader>();

// --- userfaultfd (linux/userfaultfd.h; neither libc nor nix has it) ---

const UFFD_API: u64 = 0xaa;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg` with its `pagefault` arm.
#[repr(C)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    flags: u64,
    address: u64,
    feat: u64,
}

const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdMsg>() == 32);

/// `_IOWR(0xAA, nr, size)`.
const fn uffdio(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xaa << 8) | nr
}

const UFFDIO_API: u64 = uffdio(0x3f, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = uffdio(0x00, size_of::<UffdioRegister>());
const UFFDIO_COPY: u64 = uffdio(0x03, size_of::<UffdioCopy>());

/// A new userfaultfd (non-blocking reads; kernel-mode faults caught too:
/// no `UFFD_USER_MODE_ONLY`, which root may leave out). Raw system calls
/// only: forked children call it.
fn uffd_open() -> Result<OwnedFd, Errno> {
    // SAFETY: a plain system call; the fd is owned right after.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `uffdio_api`, which `api` is.
    Errno::result(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            UFFDIO_API as libc::Ioctl,
            &mut api as *mut UffdioApi,
        )
    })?;
    Ok(fd)
}

/// Makes missing-page faults on `start..start + len` events on `uffd`.
fn uffd_register(uffd: RawFd, start: usize, len: usize) -> Result<(), Errno> {
    let mut register = UffdioRegister {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes a `uffdio_register`.
    Errno::result(unsafe {
        libc::ioctl(
            uffd,
            UFFDIO_REGISTER as libc::Ioctl,
            &mut register as *mut UffdioRegister,
        )
    })
    .map(drop)
}

/// Serves the fault on page `dst` (of the process whose userfaultfd
/// `uffd` is) with the page at `src`, waking who waits for it.
fn uffd_copy(uffd: BorrowedFd<'_>, dst: u64, src: &Pages) -> Result<()> {
    let mut copy = UffdioCopy {
        dst,
        src: src.addr(0) as u64,
        len: PAGE as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads a `uffdio_copy` and writes its `copy`;
    // it reads `len` bytes at `src`, a mapped page of `src`.
    let ret = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_COPY as libc::Ioctl,
            &mut copy as *mut UffdioCopy,
        )
    };
    Errno::result(ret).context("UFFDIO_COPY serving the stalled page")?;
    Ok(())
}

/// The address of the next page fault `uffd` reports within `bound`, or
/// `None` if none comes: a task is stalled in that fault once it is read.
fn uffd_fault(uffd: BorrowedFd<'_>, bound: Duration) -> Result<Option<u64>> {
    if !readable(uffd, bound)? {
        return Ok(None);
    }
    let mut msg = UffdMsg {
        event: 0,
        reserved1: 0,
        reserved2: 0,
        reserved3: 0,
        flags: 0,
        address: 0,
        feat: 0,
    };
    // SAFETY: `msg` is valid for writes of its size.
    let n = unsafe {
        libc::read(
            uffd.as_raw_fd(),
            (&mut msg as *mut UffdMsg).cast(),
            size_of::<UffdMsg>(),
        )
    };
    ensure!(
        n == size_of::<UffdMsg>() as isize,
        "reading the userfaultfd: {n} ({})",
        Errno::last()
    );
    ensure!(
        msg.event == UFFD_EVENT_PAGEFAULT,
        "the userfaultfd reported event {:#x}, not a page fault",
        msg.event
    );
    Ok(Some(msg.address))
}

/// Anonymous private pages, unmapped when dropped.
struct Pages {
    ptr: *mut u8,
    count: usize,
}

impl Pages {
    /// `count` fresh pages, none of them touched yet. Raw system calls
    /// only: forked children call it.
    fn map(count: usize) -> Result<Pages, Errno> {
        // SAFETY: a new private mapping at an address the kernel picks.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                count * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(Pages {
            ptr: ptr.cast(),
            count,
        })
    }

    /// One page holding `pattern(n)` at its byte `n`.
    fn filled(pattern: impl Fn(usize) -> u8) -> Result<Pages> {
        let pages = Pages::map(1).context("mapping a page")?;
        for n in 0..PAGE {
            // SAFETY: inside the page just mapped, which only this
            // function touches.
            unsafe { pages.ptr.add(n).write(pattern(n)) };
        }
        Ok(pages)
    }

    fn addr(&self, page: usize) -> usize {
        self.ptr as usize + page * PAGE
    }

    /// The bytes `offset..offset + len` of the pages (which must be
    /// readable there, and not written meanwhile).
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.count * PAGE);
        // SAFETY: inside the mapping (checked), which lives as long as
        // `self`; the callers read it only once no one writes it.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset), len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: mapped in `map` with this length; nothing borrowed from
        // it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.count * PAGE) };
    }
}

/// The seed of the ordinary page a `StalledWriter::start_after` write
/// begins in.
const LEAD_SEED: u8 = 3;

/// The byte a page pattern has at `n` (period 251: no page-sized echo).
fn pattern_byte(seed: u8, n: usize) -> u8 {
    ((n % 251) as u8).wrapping_add(seed)
}

// --- forked children ---

/// What a child reports: a tag, then two values.
type Report = [i64; 3];

/// The child has what the parent needs: its userfaultfd's number and the
/// address of the page it stalls on.
const READY: i64 = 1;
/// The call under test returned: its return value or `-errno`.
const DONE: i64 = 2;
/// Something before the call under test failed: step, `-errno`.
const FAILED: i64 = 3;
/// The child made its own user namespace.
const UNSHARED: i64 = 4;
/// A grandchild opened the room (or not): its number, 0 or `-errno`.
const OPENED: i64 = 5;
/// A mapped ring read differently than `read()`: which field, its value.
const MISMATCH: i64 = 6;

/// A child's end of the report pipe: each report is one 24-byte write,
/// which a pipe keeps whole.
#[derive(Clone, Copy)]
struct Reporter(RawFd);

impl Reporter {
    fn send(self, tag: i64, a: i64, b: i64) {
        let report: Report = [tag, a, b];
        // SAFETY: `report` is valid for reads of its size.
        unsafe { libc::write(self.0, report.as_ptr().cast(), size_of::<Report>()) };
    }
}

/// A system call's return value as a report value: `-errno` on failure.
fn outcome(ret: isize) -> i64 {
    if ret < 0 {
        -(Errno::last() as i64)
    } else {
        ret as i64
    }
}

/// What a report value that may be `-errno` says, for messages.
fn said(value: i64) -> String {
    if value < 0 {
        format!("{:?}", Errno::from_raw(-value as i32))
    } else {
        value.to_string()
    }
}

/// What waiting for a child's report found.
#[derive(Debug)]
enum Heard {
    Report(Report),
    /// Nothing within the bound.
    Silent,
    /// The child ended without (another) report: how (see [`status`]).
    Exited(String),
}

/// A forked child: it runs a closure of raw system calls (no allocation,
/// no locks: the suite has threads) and reports over a pipe. Dropping it
/// kills it.
struct Child {
    pid: i32,
    pidfd: OwnedFd,
    reports: File,
    /// Its wait status, once reaped.
    status: Option<i32>,
}

impl Child {
    fn spawn(body: impl FnOnce(Reporter)) -> Result<Child> {
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("making a pipe")?;
        // SAFETY: the child runs only `body` (raw system calls on memory
        // set up before the fork) and `_exit`s, as a child of a threaded
        // process must.
        match unsafe { nix::unistd::fork() }.context("forking a child")? {
            nix::unistd::ForkResult::Child => {
                // SAFETY: closing this process's copy of the read end.
                unsafe { libc::close(read_end.as_raw_fd()) };
                let reporter = Reporter(write_end.as_raw_fd());
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(reporter)));
                // SAFETY: ends the child at once, running nothing of the
                // parent's (no destructors, no atexit handlers).
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(write_end);
                let pid = child.as_raw();
                // SAFETY: a plain system call; the pid is our unreaped
                // child, so it names no other process.
                let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
                if pidfd < 0 {
                    let err = Errno::last();
                    // SAFETY: our unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    let _ = nix::sys::wait::waitpid(child, None);
                    bail!("pidfd_open: {err}");
                }
                Ok(Child {
                    pid,
                    // SAFETY: just opened, owned by nobody else.
                    pidfd: unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) },
                    reports: File::from(read_end),
                    status: None,
                })
            }
        }
    }

    /// The child's next report, if it sends one within `bound`.
    fn hear(&mut self, bound: Duration) -> Result<Heard> {
        if !readable(self.reports.as_fd(), bound)? {
            return Ok(Heard::Silent);
        }
        let mut bytes = [0u8; size_of::<Report>()];
        match self.reports.read_exact(&mut bytes) {
            Ok(()) => {
                let mut report: Report = [0; 3];
                for (value, chunk) in report.iter_mut().zip(bytes.chunks_exact(8)) {
                    *value = i64::from_ne_bytes(chunk.try_into()?);
                }
                Ok(Heard::Report(report))
            }
            Err(err) if err.kind() == ErrorKind::UnexpectedEof => {
                let how = match self.exited(PATIENCE)? {
                    Some(status) => describe(status),
                    None => "closed its pipe but did not exit".to_owned(),
                };
                Ok(Heard::Exited(how))
            }
            Err(err) => Err(err).context("reading a child's report"),
        }
    }

    fn kill(&self) {
        if self.status.is_none() {
            // SAFETY: our child, not reaped yet, so the pid is still its.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    /// Its wait status if it exits within `bound` (reaped then).
    fn exited(&mut self, bound: Duration) -> Result<Option<i32>> {
        if self.status.is_none() && readable(self.pidfd.as_fd(), bound)? {
            let mut status = 0;
            // SAFETY: a plain system call on our own child, which exited.
            let ret = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            ensure!(ret == self.pid, "waitpid: {}", Errno::last());
            self.status = Some(status);
        }
        Ok(self.status)
    }

    /// What the kernel says the child is doing now, for failure messages.
    fn state(&self) -> String {
        task_state(self.pid)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
        // A child that ignores SIGKILL (stuck in the kernel) is left; it
        // is reaped with the suite.
        let _ = self.exited(Duration::from_secs(10));
    }
}

/// A wait status in words.
fn describe(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let signal = nix::sys::signal::Signal::try_from(libc::WTERMSIG(status))
            .map_or_else(|_| libc::WTERMSIG(status).to_string(), |s| s.to_string());
        format!("killed by {signal}")
    } else {
        format!("exited with {}", libc::WEXITSTATUS(status))
    }
}

/// A task's state, wait channel and innermost kernel frames, as /proc
/// shows them.
fn task_state(pid: i32) -> String {
    let proc = format!("/proc/{pid}");
    let state = std::fs::read_to_string(format!("{proc}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit(')').next()?.trim_start();
            rest.chars().next()
        })
        .map_or_else(|| "?".to_owned(), |c| c.to_string());
    let wchan = std::fs::read_to_string(format!("{proc}/wchan")).unwrap_or_default();
    let stack: Vec<String> = std::fs::read_to_string(format!("{proc}/stack"))
        .unwrap_or_default()
        .lines()
        .take(5)
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    format!(
        "state {state}, wchan {}, stack {}",
        if wchan.is_empty() { "?" } else { &wchan },
        if stack.is_empty() {
            "?".to_owned()
        } else {
            stack.join(" < ")
        }
    )
}

/// Whether `fd` polls readable (or hung up) within `bound`.
fn readable(fd: BorrowedFd<'_>, bound: Duration) -> Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(bound).map_err(|_| anyhow::anyhow!("bound {bound:?}"))?;
    loop {
        match nix::poll::poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err).context("poll"),
        }
    }
}

/// Whether `file` polls writable now.
fn writable_now(file: &File) -> Result<bool> {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLOUT)];
    nix::poll::poll(&mut fds, PollTimeout::ZERO)?;
    Ok(fds[0]
        .revents()
        .is_some_and(|events| events.contains(PollFlags::POLLOUT)))
}

/// Drops to `uid` and `gid`, with no supplementary groups. Raw system
/// calls only: they change this thread alone, which in a forked child is
/// the whole process.
fn become_user(uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: plain system calls with no pointers but a null list.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0 {
            return Err(Errno::last());
        }
        if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
            return Err(Errno::last());
        }
        if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// How a stalled writer writes.
#[derive(Clone, Copy)]
enum How {
    /// `write(2)`.
    Write,
    /// `pwritev2(fd, iov, 1, -1, RWF_NOWAIT)`.
    NoWait,
}

/// A child writing to a room from a page whose fault nobody serves until
/// the test does: its userfaultfd (fetched from the child with
/// `pidfd_getfd`) tells when it is stalled and serves the page.
struct StalledWriter {
    child: Child,
    uffd: OwnedFd,
    /// The page's address in the child.
    page: u64,
}

impl StalledWriter {
    /// Starts a child that writes `len` bytes to `room` (an fd it
    /// inherits) from the start of a fresh page registered with its own
    /// userfaultfd; returns once the parent holds that userfaultfd.
    fn start(room: RawFd, len: usize, how: How) -> Result<StalledWriter> {
        StalledWriter::start_after(room, 0, len, how)
    }

    /// As `start`, but the write begins `lead` bytes before the stalled
    /// page, in an ordinary page holding `pattern_byte(LEAD_SEED, n)` at
    /// its byte `n`.
    fn start_after(room: RawFd, lead: usize, len: usize, how: How) -> Result<StalledWriter> {
        // The child writes only once the parent holds its userfaultfd: one
        // whose write returns at once must not be gone by then.
        let (go_read, go_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("making a pipe")?;
        let go_fd = go_read.as_raw_fd();
        let go_ms = i32::try_from(PATIENCE.as_millis()).unwrap_or(i32::MAX);
        let mut child = Child::spawn(|report| {
            let uffd = match uffd_open() {
                Ok(uffd) => uffd,
                Err(err) => return report.send(FAILED, 1, -(err as i64)),
            };
            let leading = usize::from(lead > 0);
            let page = match Pages::map(1 + leading) {
                Ok(page) => page,
                Err(err) => return report.send(FAILED, 2, -(err as i64)),
            };
            if leading > 0 {
                for n in 0..PAGE {
                    // SAFETY: inside the ordinary first page, which only
                    // this child touches.
                    unsafe { page.ptr.add(n).write(pattern_byte(LEAD_SEED, n)) };
                }
            }
            if let Err(err) = uffd_register(uffd.as_raw_fd(), page.addr(leading), PAGE) {
                return report.send(FAILED, 3, -(err as i64));
            }
            report.send(
                READY,
                i64::from(uffd.as_raw_fd()),
                page.addr(leading) as i64,
            );
            // The write starts `lead` bytes before the stalled page.
            let start = (page.addr(leading) - lead) as *mut libc::c_void;
            let mut go = [libc::pollfd {
                fd: go_fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            let mut byte = 0u8;
            // SAFETY: plain system calls on this process's own fd and memory.
            let went = unsafe {
                libc::poll(go.as_mut_ptr(), 1, go_ms) == 1
                    && libc::read(go_fd, (&mut byte as *mut u8).cast(), 1) == 1
            };
            if !went {
                // The parent gave up on it: write nothing.
                return report.send(FAILED, 4, 0);
            }
            let ret = match how {
                // SAFETY: the page is mapped (its fault stalls until served).
                How::Write => unsafe { libc::write(room, start, len) },
                How::NoWait => {
                    let iov = libc::iovec {
                        iov_base: start,
                        iov_len: len,
                    };
                    // SAFETY: one iovec over the mapped page.
                    unsafe { libc::pwritev2(room, &iov, 1, -1, libc::RWF_NOWAIT) }
                }
            };
            report.send(DONE, outcome(ret), 0);
        })?;
        drop(go_read);
        let (fd, page) = match child.hear(PATIENCE)? {
            Heard::Report([READY, fd, page]) => (fd, page),
            Heard::Report([FAILED, step, errno]) => bail!(
                "the stalled writer could not set up its userfaultfd (step {step}: {}; \
                 is CONFIG_USERFAULTFD on?)",
                said(errno)
            ),
            other => bail!("the stalled writer did not start: {other:?}"),
        };
        // SAFETY: a plain system call on our child's pidfd.
        let uffd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, child.pidfd.as_raw_fd(), fd, 0) };
        ensure!(
            uffd >= 0,
            "pidfd_getfd of the child's userfaultfd: {}",
            Errno::last()
        );
        File::from(go_write)
            .write_all(b"w")
            .context("telling the stalled writer to write")?;
        Ok(StalledWriter {
            child,
            // SAFETY: just received, owned by nobody else.
            uffd: unsafe { OwnedFd::from_raw_fd(uffd as RawFd) },
            page: page as u64,
        })
    }

    /// Waits (within `bound`) until the child is stalled in its page's
    /// fault; fails if its write returns or the bound runs out first.
    fn stalled(&mut self, bound: Duration) -> Result<()> {
        match uffd_fault(self.uffd.as_fd(), bound)? {
            Some(address) if address & !(PAGE as u64 - 1) == self.page => Ok(()),
            Some(address) => bail!(
                "the writer faulted at {address:#x}, not on its page {:#x}",
                self.page
            ),
            None => bail!(
                "the writer never faulted on its unserved page within {bound:?}: {:?} ({})",
                self.child.hear(Duration::ZERO)?,
                self.child.state()
            ),
        }
    }

    /// Serves the page (a copy of `src`): the child's write goes on.
    fn serve(&self, src: &Pages) -> Result<()> {
        uffd_copy(self.uffd.as_fd(), self.page, src)
    }

    /// What the child's write returned, if it returns within `bound`.
    fn returned(&mut self, bound: Duration) -> Result<Option<i64>> {
        match self.child.hear(bound)? {
            Heard::Report([DONE, ret, _]) => Ok(Some(ret)),
            Heard::Silent => Ok(None),
            other => bail!("the stalled writer: {other:?}"),
        }
    }
}

// --- rooms ---

fn origin() -> abi::OriginHeader {
    abi::OriginHeader {
        node: abi::name_field("far-node").unwrap_or_default(),
        seq: 9,
        time_ns: 1_000,
        pid: 42,
        uid: 1000,
        gid: 1000,
        ..abi::OriginHeader::default()
    }
}

/// A relay fd on `room`: open for writing, `IOC_SET_RELAY`.
fn relay(room: &TempRoom, nonblock: bool) -> Result<File> {
    let file = open(&room.path(), false, true, nonblock)?;
    kchat_client::set_relay(&file).context("IOC_SET_RELAY")?;
    Ok(file)
}

/// Payload bytes that say their length.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|n| pattern_byte(len as u8, n)).collect()
}

fn errno(result: &std::io::Result<usize>) -> Option<Errno> {
    result
        .as_ref()
        .err()
        .and_then(|err| err.raw_os_error().map(Errno::from_raw))
}

/// Writes 100-byte messages without blocking until the room refuses one
/// (at most 1,000); returns how many went in.
fn fill(writer: &mut File) -> Result<usize> {
    for sent in 0..1000 {
        match writer.write(&[b'f'; 100]) {
            Ok(100) => {}
            Ok(n) => bail!("a 100-byte write took {n} bytes"),
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(sent),
            Err(err) => return Err(err).context("filling the room"),
        }
    }
    bail!("the room took 1,000 messages without refusing one: nobody holds it")
}

/// Reads without blocking until `EAGAIN`; returns the bytes read.
fn drain(reader: &mut File) -> Result<usize> {
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got += n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(got),
            Err(err) => return Err(err).context("reading"),
        }
    }
}

/// A frame read: its header, the bytes between header and payload (an
/// `OriginHeader`'s, or none), and the payload.
type Frame = (abi::FrameHeader, Vec<u8>, Vec<u8>);

/// The frames a framed (non-blocking) reader has, once it has any
/// (within `PATIENCE`); `extra` bytes sit between header and payload
/// (`READ_FRAMED_ORIGIN`: an `OriginHeader`).
fn frames(reader: &mut File, extra: usize) -> Result<Vec<Frame>> {
    ensure!(
        readable(reader.as_fd(), PATIENCE)?,
        "nothing to read within {PATIENCE:?}"
    );
    let mut buf = vec![0u8; 1 << 16];
    let n = reader.read(&mut buf).context("reading frames")?;
    let frames = kchat_client::split_frames_after(&buf[..n], extra).context("torn frames")?;
    Ok(frames
        .into_iter()
        .map(|(header, between, payload)| (header, between.to_vec(), payload.to_vec()))
        .collect())
}

/// Module-wide limits, put back as they were when dropped.
struct LimitsRestored {
    control: Control,
    before: abi::GlobalLimits,
}

impl LimitsRestored {
    fn set(change: impl FnOnce(&mut abi::GlobalLimits)) -> Result<LimitsRestored> {
        let control = Control::open().context("opening the control node")?;
        let before = control.limits()?;
        let mut limits = before;
        change(&mut limits);
        control.set_limits(&limits).context("IOC_SET_LIMITS")?;
        Ok(LimitsRestored { control, before })
    }
}

impl Drop for LimitsRestored {
    fn drop(&mut self) {
        let _ = self.control.set_limits(&self.before);
    }
}

/// A read-only shared mapping of a room's ring, unmapped when dropped.
struct Mapping {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize, prot: nix::sys::mman::ProtFlags) -> Result<Mapping, Errno> {
        let size = std::num::NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // SAFETY: a new mapping at an address the kernel picks.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                size,
                prot,
                nix::sys::mman::MapFlags::MAP_SHARED,
                file,
                0,
            )
        }?;
        Ok(Mapping { ptr, len })
    }

    /// The whole ring of `file` (opened for reading), read-only.
    fn ring(file: &File) -> Result<Mapping> {
        let page = Mapping::new(file, PAGE, nix::sys::mman::ProtFlags::PROT_READ)
            .context("mapping the control page")?;
        let control = page.control();
        drop(page);
        Mapping::new(
            file,
            control.records_offset as usize + control.area_len as usize,
            nix::sys::mman::ProtFlags::PROT_READ,
        )
        .context("mapping the ring")
    }

    fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The control page as it is now (fields may be mid-update: see
    /// [`Mapping::stand`]).
    fn control(&self) -> abi::RingControl {
        // SAFETY: a room mapping starts with a `RingControl`; a volatile
        // copy, as the kernel may be writing it.
        unsafe { self.ptr.cast::<abi::RingControl>().as_ptr().read_volatile() }
    }

    /// `(first_seq, next_seq)` read under the control page's seqcount, as
    /// `kchat_client::mapped` reads them: the same even count before and
    /// after.
    fn stand(&self) -> (u64, u64) {
        use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
        let at = |offset: usize| self.addr() + offset;
        // SAFETY: aligned fields of the mapped `RingControl`, which lives
        // as long as `self`; the kernel writes them atomically.
        let (seqcount, first, next) = unsafe {
            (
                AtomicU32::from_ptr(
                    at(std::mem::offset_of!(abi::RingControl, seqcount)) as *mut u32
                ),
                AtomicU64::from_ptr(
                    at(std::mem::offset_of!(abi::RingControl, first_seq)) as *mut u64
                ),
                AtomicU64::from_ptr(
                    at(std::mem::offset_of!(abi::RingControl, next_seq)) as *mut u64
                ),
            )
        };
        loop {
            let before = seqcount.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let stand = (first.load(Ordering::Acquire), next.load(Ordering::Acquire));
            fence(Ordering::SeqCst);
            if seqcount.load(Ordering::Acquire) == before {
                return stand;
            }
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; nothing borrowed from
        // it outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

/// The permissions /proc/self/maps shows for the mapping at `addr`.
fn map_perms(addr: usize) -> Result<String> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let start = format!("{addr:x}-");
    maps.lines()
        .find(|line| line.starts_with(&start))
        .and_then(|line| line.split_whitespace().nth(1))
        .map(str::to_owned)
        .with_context(|| format!("no mapping at {addr:#x} in /proc/self/maps"))
}

// --- the tests ---

fn a_writer_stalled_in_a_page_fault_holds_up_no_other_writer() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("stalled-writer"))?;
    let mut reader = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&reader, abi::READ_FRAMED)?;
    let writer = room.open_write()?;
    let served = Pages::filled(|n| pattern_byte(7, n))?;
    // A writes 100 bytes from a page nobody serves yet.
    let mut a = StalledWriter::start(writer.as_raw_fd(), 100, How::Write)?;
    a.stalled(PATIENCE).context("writer A")?;
    // B, another user, writes "hello" meanwhile.
    let path = CString::new(room.path().as_os_str().as_bytes())?;
    let mut b = Child::spawn(|report| {
        if let Err(err) = become_user(1000, 1000) {
            return report.send(FAILED, 1, -(err as i64));
        }
        // SAFETY: plain system calls on a valid path and buffer.
        let ret = unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return report.send(FAILED, 2, -(Errno::last() as i64));
            }
            libc::write(fd, b"hello".as_ptr().cast(), 5)
        };
        report.send(DONE, outcome(ret), 0);
    })?;
    match b.hear(PATIENCE)? {
        Heard::Report([DONE, 5, _]) => {}
        Heard::Silent => {
            let state = b.state();
            b.kill();
            // How it takes SIGKILL, for the message only.
            let grace = Duration::from_secs(5);
            let killed = b.exited(grace)?.is_some();
            // Release both before failing.
            a.serve(&served)?;
            let _ = b.exited(PATIENCE);
            bail!(
                "writer B (uid 1000) writing \"hello\" is still blocked after {PATIENCE:?} \
                 while writer A is stalled in its own page fault ({state}){}: one writer's \
                 stalled buffer holds every writer of the room",
                if killed {
                    String::new()
                } else {
                    format!("; B was still there {grace:?} after SIGKILL")
                }
            );
        }
        other => {
            a.serve(&served)?;
            bail!("writer B (uid 1000) writing \"hello\": {other:?}");
        }
    }
    let got = frames(&mut reader, 0).context("reading B's message while A is stalled")?;
    ensure!(
        got.len() == 1 && got[0].2 == b"hello" && got[0].0.uid == 1000,
        "while A is stalled, a reader got {:?} (uid {:?}), not B's \"hello\" alone",
        got.iter()
            .map(|(_, _, p)| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>(),
        got.first().map(|(header, _, _)| header.uid)
    );
    ensure!(
        a.returned(Duration::ZERO)?.is_none(),
        "writer A's write returned while its page was not served"
    );
    // Served, A's write goes on, whole.
    a.serve(&served)?;
    let ret = a.returned(PATIENCE)?.with_context(|| {
        format!(
            "writer A's write did not return within {PATIENCE:?} of its page being served ({})",
            a.child.state()
        )
    })?;
    ensure!(ret == 100, "writer A's write returned {}", said(ret));
    let got = frames(&mut reader, 0).context("reading A's message")?;
    ensure!(
        got.len() == 1 && got[0].0.len == 100 && got[0].2 == served.bytes(0, 100),
        "A's 100 bytes did not come as one whole message: {} frames, lengths {:?}",
        got.len(),
        got.iter()
            .map(|(header, _, _)| header.len)
            .collect::<Vec<_>>()
    );
    // A writer stalled in its fault can be killed, and leaves nothing.
    let mut stuck = StalledWriter::start(writer.as_raw_fd(), 100, How::Write)?;
    stuck.stalled(PATIENCE).context("the writer to kill")?;
    stuck.child.kill();
    let status = stuck.child.exited(PATIENCE)?.with_context(|| {
        format!(
            "a writer stalled in its page fault survived SIGKILL for {PATIENCE:?} ({})",
            stuck.child.state()
        )
    })?;
    ensure!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the killed writer {}",
        describe(status)
    );
    let info = room.control().info(&room.name)?;
    ensure!(
        info.msgs_in == 2,
        "{} messages stored: the killed writer's write stored something",
        info.msgs_in
    );
    Ok(())
}

/// A write of two messages whose second stalls in its page fault: the
/// first is stored, and a reader already waiting in edge-triggered epoll
/// hears of it while the writer waits for its page, not only after.
fn messages_before_a_stalled_fault_reach_waiting_readers() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        max_msg: 64,
        ..spec("stalled-second")
    })?;
    let mut reader = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&reader, abi::READ_PACKET)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        &reader,
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
    )?;
    let writer = room.open_write()?;
    let served = Pages::filled(|n| pattern_byte(9, n))?;
    // 64 bytes from an ordinary page, then 64 from the stalled one.
    let mut w = StalledWriter::start_after(writer.as_raw_fd(), 64, 128, How::Write)?;
    w.stalled(PATIENCE).context("the writer's second message")?;
    let mut events = [EpollEvent::empty()];
    let woke = epoll.wait(&mut events, EpollTimeout::try_from(PATIENCE)?)?;
    if woke == 0 {
        w.serve(&served)?;
        bail!(
            "a reader waiting in edge-triggered epoll was not woken within {PATIENCE:?} for the \
             message a writer stored before it stalled faulting in its next one: the writer \
             slept owing the wake-up"
        );
    }
    let mut buf = [0u8; 64];
    let n = reader.read(&mut buf).context("reading the first message")?;
    let lead: Vec<u8> = (PAGE - 64..PAGE)
        .map(|n| pattern_byte(LEAD_SEED, n))
        .collect();
    ensure!(
        buf[..n] == lead[..],
        "the first message was {n} bytes, not the writer's first 64"
    );
    w.serve(&served)?;
    let ret = w.returned(PATIENCE)?.with_context(|| {
        format!(
            "the writer did not return once served ({})",
            w.child.state()
        )
    })?;
    ensure!(ret == 128, "the two-message write returned {}", said(ret));
    let n = reader
        .read(&mut buf)
        .context("reading the second message")?;
    ensure!(
        buf[..n] == served.bytes(0, 64)[..],
        "the second message was {n} bytes, not the served page's first 64"
    );
    Ok(())
}

/// A message whose buffer runs from good memory into a hole is `EFAULT`,
/// at once: faulting it in cannot make it whole, so retrying would spin.
fn a_write_running_into_a_hole_is_efault() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("into-a-hole"))?;
    let writer = room.open_write()?;
    let fd = writer.as_raw_fd();
    let mut child = Child::spawn(|report| {
        let pages = match Pages::map(2) {
            Ok(pages) => pages,
            Err(err) => return report.send(FAILED, 1, -(err as i64)),
        };
        // SAFETY: the second page of this child's own fresh mapping.
        if unsafe { libc::mprotect(pages.addr(1) as *mut libc::c_void, PAGE, libc::PROT_NONE) } != 0
        {
            return report.send(FAILED, 2, -(Errno::last() as i64));
        }
        // SAFETY: 100 readable bytes, then 100 that are not: what the test
        // is about; the kernel checks every byte.
        let ret = unsafe { libc::write(fd, (pages.addr(1) - 100) as *const libc::c_void, 200) };
        report.send(DONE, outcome(ret), 0);
    })?;
    match child.hear(PATIENCE)? {
        Heard::Report([DONE, ret, _]) => ensure!(
            ret == -(Errno::EFAULT as i64),
            "a write running into a hole returned {}, not EFAULT",
            said(ret)
        ),
        Heard::Silent => {
            let state = child.state();
            child.kill();
            bail!(
                "a write running into a hole did not return within {PATIENCE:?} ({state}): the \
                 writer retried a buffer that faulting in cannot make whole"
            );
        }
        other => bail!("the writer into a hole: {other:?}"),
    }
    let info = room.control().info(&room.name)?;
    ensure!(info.msgs_in == 0, "{} messages stored", info.msgs_in);
    Ok(())
}

/// Messages in the test below: 10 of `MIDWAY_MAX` bytes (plain), or 10
/// records of `midway_len(k)` bytes (framed); the hole starts halfway
/// through the sixth.
const MIDWAY_MAX: usize = 64;
const MIDWAY_COUNT: usize = 10;
const MIDWAY_WHOLE: usize = 5;

fn midway_len(framed: bool, k: usize) -> usize {
    if framed {
        1 + (k * 37) % MIDWAY_MAX
    } else {
        MIDWAY_MAX
    }
}

/// Byte `n` of message `k`'s body.
fn midway_byte(k: usize, n: usize) -> u8 {
    (k * 31 + n * 7 + 1) as u8
}

/// A write of ten messages whose buffer runs into a hole halfway through
/// the sixth returns the bytes of the first five, which readers get whole
/// and in order, and stores nothing of the rest: the write path fills a
/// batch with one copy and keeps only what came in whole. Plain and
/// framed (a `WriteFrame` before each body in the source).
fn a_write_running_into_a_hole_midway_keeps_the_messages_before_it() -> Result<()> {
    module::ensure_loaded()?;
    for framed in [false, true] {
        let what = if framed { "framed" } else { "plain" };
        let room = TempRoom::create(abi::RoomSpec {
            max_msg: MIDWAY_MAX as u32,
            ..spec(&format!("midway-{what}"))
        })?;
        let reader = room.open_read_nonblock()?;
        kchat_client::set_read_mode(&reader, abi::READ_PACKET).context("IOC_SET_READ_MODE")?;
        let writer = room.open_write()?;
        let frame = if framed {
            kchat_client::set_write_mode(&writer, abi::WRITE_FRAMED)
                .context("IOC_SET_WRITE_MODE")?;
            std::mem::size_of::<abi::WriteFrame>()
        } else {
            0
        };
        let size = |k: usize| frame + midway_len(framed, k);
        let whole: usize = (0..MIDWAY_WHOLE).map(size).sum();
        let total: usize = (0..MIDWAY_COUNT).map(size).sum();
        // The hole starts after the sixth message's header and half its body.
        let readable = whole + frame + midway_len(framed, MIDWAY_WHOLE) / 2;
        let fd = writer.as_raw_fd();
        let mut child = Child::spawn(|report| {
            let pages = match Pages::map(2) {
                Ok(pages) => pages,
                Err(err) => return report.send(FAILED, 1, -(err as i64)),
            };
            // SAFETY: the second page of this child's own fresh mapping.
            if unsafe { libc::mprotect(pages.addr(1) as *mut libc::c_void, PAGE, libc::PROT_NONE) }
                != 0
            {
                return report.send(FAILED, 2, -(Errno::last() as i64));
            }
            let start = pages.addr(1) - readable;
            // Lays out what fits before the hole, without allocating (this
            // is a forked child).
            let mut at = 0;
            for k in 0..MIDWAY_COUNT {
                let len = midway_len(framed, k);
                let mut put = |byte: u8| {
                    if at < readable {
                        // SAFETY: inside the first page, before the hole.
                        unsafe { ((start + at) as *mut u8).write(byte) };
                    }
                    at += 1;
                };
                if framed {
                    for byte in (len as u32).to_ne_bytes().into_iter().chain([0; 4]) {
                        put(byte);
                    }
                }
                for n in 0..len {
                    put(midway_byte(k, n));
                }
            }
            // SAFETY: `total` bytes from `start`, the last of them in the
            // hole: what the test is about; the kernel checks every byte.
            let ret = unsafe { libc::write(fd, start as *const libc::c_void, total) };
            report.send(DONE, outcome(ret), 0);
        })?;
        match child.hear(PATIENCE)? {
            Heard::Report([DONE, ret, _]) => ensure!(
                ret == whole as i64,
                "a {what} write of {MIDWAY_COUNT} messages running into a hole in the sixth \
                 returned {}, not the {whole} bytes of the five before it",
                said(ret)
            ),
            Heard::Silent => {
                let state = child.state();
                child.kill();
                bail!("a {what} write running into a hole midway did not return within {PATIENCE:?} ({state})");
            }
            other => bail!("the {what} writer into a hole midway: {other:?}"),
        }
        let mut got = Vec::new();
        let mut buf = [0u8; MIDWAY_MAX];
        loop {
            match (&reader).read(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) => return Err(err).context("reading the messages back"),
            }
            ensure!(got.len() <= MIDWAY_COUNT, "more messages than were written");
        }
        ensure!(
            got.len() == MIDWAY_WHOLE,
            "{what}: readers got {} messages, not the {MIDWAY_WHOLE} before the hole",
            got.len()
        );
        for (k, body) in got.iter().enumerate() {
            let sent: Vec<u8> = (0..midway_len(framed, k))
                .map(|n| midway_byte(k, n))
                .collect();
            ensure!(
                body == &sent,
                "{what}: message {k} arrived as {body:?}, not {sent:?}"
            );
        }
        let info = room.control().info(&room.name)?;
        ensure!(
            info.msgs_in == MIDWAY_WHOLE as u64,
            "{what}: {} messages stored, not {MIDWAY_WHOLE}",
            info.msgs_in
        );
    }
    Ok(())
}

/// `IOC_SET_RELAY` judges who opened the fd, not who holds it: root's fd
/// handed to an unprivileged process may be made a relay (it is a
/// capability), and an unprivileged user's fd handed to root may not (root
/// must not lend its privilege to whatever fd it is given).
fn a_relay_fd_is_made_by_its_opener_not_its_holder() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("relay-opener"))?;
    let roots = room.open_write()?;
    let raw = roots.as_raw_fd();
    let mut holder = Child::spawn(|report| {
        if let Err(err) = become_user(1000, 1000) {
            return report.send(FAILED, 1, -(err as i64));
        }
        let on: u32 = 1;
        // SAFETY: an ioctl on an inherited fd with a pointer to a live u32.
        let ret = unsafe { libc::ioctl(raw, abi::IOC_SET_RELAY as libc::Ioctl, &on as *const u32) };
        report.send(DONE, outcome(ret as isize), 0);
    })?;
    match holder.hear(PATIENCE)? {
        Heard::Report([DONE, 0, _]) => {}
        Heard::Report([DONE, ret, _]) => bail!(
            "an unprivileged process holding root's room fd could not make it a relay: {}",
            said(ret)
        ),
        other => bail!("the unprivileged holder: {other:?}"),
    }
    let path = CString::new(room.path().as_os_str().as_bytes())?;
    let mut opener = Child::spawn(|report| {
        if let Err(err) = become_user(1000, 1000) {
            return report.send(FAILED, 1, -(err as i64));
        }
        // SAFETY: plain system calls on a valid path.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return report.send(FAILED, 2, -(Errno::last() as i64));
        }
        report.send(READY, i64::from(fd), 0);
        // Keeps the fd until the test is done with it (dropping the child
        // kills it).
        // SAFETY: waits for a signal.
        unsafe { libc::pause() };
    })?;
    let fd = match opener.hear(PATIENCE)? {
        Heard::Report([READY, fd, _]) => fd,
        other => bail!("the unprivileged opener: {other:?}"),
    };
    // SAFETY: a plain system call on our child's pidfd.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, opener.pidfd.as_raw_fd(), fd, 0) };
    ensure!(
        got >= 0,
        "pidfd_getfd of the opener's fd: {}",
        Errno::last()
    );
    // SAFETY: just received, owned by nobody else.
    let theirs = unsafe { OwnedFd::from_raw_fd(got as RawFd) };
    match kchat_client::set_relay(&theirs) {
        Err(Errno::EPERM) => Ok(()),
        other => bail!(
            "root made a relay of an fd an unprivileged user opened ({other:?}, not EPERM): \
             whoever hands root an fd would state origins through it"
        ),
    }
}

fn a_nowait_write_from_a_stalled_buffer_is_eagain() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("nowait-stalled"))?;
    let writer = room.open_write()?;
    let served = Pages::filled(|n| pattern_byte(3, n))?;
    let mut w = StalledWriter::start(writer.as_raw_fd(), 100, How::NoWait)?;
    // Whichever comes first: its answer, or its fault (it then waits for
    // its own memory).
    let mut fds = [
        PollFd::new(w.child.reports.as_fd(), PollFlags::POLLIN),
        PollFd::new(w.uffd.as_fd(), PollFlags::POLLIN),
    ];
    let timeout =
        PollTimeout::try_from(PATIENCE).map_err(|_| anyhow::anyhow!("bound {PATIENCE:?}"))?;
    nix::poll::poll(&mut fds, timeout).context("poll")?;
    let answered = fds[0].any().unwrap_or(false);
    let faulted = fds[1].any().unwrap_or(false);
    if !answered {
        let state = w.child.state();
        if faulted {
            // Let it finish before failing.
            w.serve(&served)?;
            let after = w.returned(PATIENCE)?;
            bail!(
                "a RWF_NOWAIT write from a buffer whose page fault is not served blocked in \
                 that fault ({state}); served, it returned {}",
                after.map_or_else(|| "nothing".to_owned(), said)
            );
        }
        bail!("a RWF_NOWAIT write returned nothing within {PATIENCE:?} ({state})");
    }
    let ret = w.returned(Duration::ZERO)?.context("no answer")?;
    ensure!(
        ret == -(Errno::EAGAIN as i64),
        "a RWF_NOWAIT write from a stalled buffer returned {}, not EAGAIN",
        said(ret)
    );
    ensure!(
        uffd_fault(w.uffd.as_fd(), Duration::ZERO)?.is_none(),
        "the RWF_NOWAIT write said EAGAIN, but only after waiting in its page fault"
    );
    let info = room.control().info(&room.name)?;
    ensure!(
        info.msgs_in == 0,
        "a RWF_NOWAIT write refused with EAGAIN stored {} messages",
        info.msgs_in
    );
    Ok(())
}

fn a_relayed_message_that_can_never_fit_is_emsgsize() -> Result<()> {
    module::ensure_loaded()?;
    let ring = abi::MIN_RING_BYTES;
    let max_msg = ring - abi::RECORD_OVERHEAD;
    // A relayed record costs payload + 64 + 72: the most that fits a
    // 4096-byte ring is 3960 bytes, though max_msg allows 4032.
    let fits = (ring - abi::RECORD_OVERHEAD - ORIGIN) as usize;
    for (name, policy, max_wait_ms) in [
        ("neverfit-drop", abi::POLICY_DROP, 0),
        ("neverfit-block", abi::POLICY_BLOCK, 50),
    ] {
        let room = TempRoom::create(abi::RoomSpec {
            policy,
            ring_bytes: ring,
            max_msg,
            max_wait_ms,
            ..spec(name)
        })?;
        let mut reader = room.open_read_nonblock()?;
        kchat_client::set_read_mode(&reader, abi::READ_FRAMED_ORIGIN)?;
        let mut nonblocking = relay(&room, true)?;
        let never = kchat_client::relay_frame(origin(), &payload(4000));
        let refused = nonblocking.write(&never);
        ensure!(
            errno(&refused) == Some(Errno::EMSGSIZE),
            "{name}: a non-blocking relayed write of 4000 bytes (a record of 4136 in a \
             {ring}-byte ring) got {refused:?}, not EMSGSIZE: a message that can never fit \
             was refused as if it might fit later"
        );
        let blocking = relay(&room, false)?;
        let fd = blocking.as_raw_fd();
        let mut child = Child::spawn(|report| {
            // SAFETY: a plain system call on a valid buffer.
            let ret = unsafe { libc::write(fd, never.as_ptr().cast(), never.len()) };
            report.send(DONE, outcome(ret), 0);
        })?;
        match child.hear(PATIENCE)? {
            Heard::Report([DONE, ret, _]) if ret == -(Errno::EMSGSIZE as i64) => {}
            Heard::Silent => {
                let state = child.state();
                // Deleting the room is what frees such a writer.
                let _ = room.delete();
                let after = child.hear(PATIENCE)?;
                bail!(
                    "{name}: a blocking relayed write of a message that can never fit is still \
                     blocked after {PATIENCE:?} ({state}); deleting the room then gave {after:?}"
                );
            }
            other => bail!("{name}: a blocking relayed write that can never fit: {other:?}"),
        }
        // One byte more than the most that fits never fits either; the most
        // that fits goes in, and is read whole.
        let refused = nonblocking.write(&kchat_client::relay_frame(origin(), &payload(fits + 1)));
        ensure!(
            errno(&refused) == Some(Errno::EMSGSIZE),
            "{name}: a relayed payload of {} bytes (a record of {}): {refused:?}",
            fits + 1,
            ring + 1
        );
        let most = payload(fits);
        let sent = nonblocking
            .write(&kchat_client::relay_frame(origin(), &most))
            .with_context(|| {
                format!("{name}: a relayed payload of {fits} bytes (a record of {ring})")
            })?;
        ensure!(
            sent == RELAY_HEADER + fits,
            "{name}: the relay write took {sent} bytes"
        );
        let got = frames(&mut reader, size_of::<abi::OriginHeader>())?;
        ensure!(
            got.len() == 1 && got[0].0.len as usize == fits && got[0].2 == most,
            "{name}: the reader got {} frames, lengths {:?}",
            got.len(),
            got.iter()
                .map(|(header, _, _)| header.len)
                .collect::<Vec<_>>()
        );
        // SAFETY: exactly an `OriginHeader`'s bytes, any of which are one.
        let from: abi::OriginHeader = unsafe { std::ptr::read_unaligned(got[0].1.as_ptr().cast()) };
        ensure!(
            from.flags == abi::ORIGIN_RELAYED && from.node == origin().node,
            "{name}: the relayed message's origin reads {from:?}"
        );
        let info = room.control().info(&room.name)?;
        ensure!(
            info.msgs_in == 1,
            "{name}: {} messages stored",
            info.msgs_in
        );
    }
    Ok(())
}

fn a_relay_fd_is_writable_only_when_a_relayed_message_fits() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        policy: abi::POLICY_BLOCK,
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: 1000,
        max_wait_ms: abi::MAX_WAIT_FOREVER,
        ..spec("relay-poll")
    })?;
    // A reader that never reads: nothing written leaves the ring.
    let _reader = room.open_read_nonblock()?;
    let mut writer = room.open_write_nonblock()?;
    let mut relayer = relay(&room, true)?;
    ensure!(
        writable_now(&writer)? && writable_now(&relayer)?,
        "an empty room's writer or relay did not poll writable"
    );
    // Three records of 1000 (936 + 64): 1096 bytes left, room for a plain
    // max_msg record (1064) but not a relayed one (1136).
    for _ in 0..3 {
        writer.write_all(&[b'p'; 936])?;
    }
    let used = room.control().info(&room.name)?.ring_used_bytes;
    ensure!(
        used == 3000,
        "three 936-byte messages use {used} ring bytes, not 3000"
    );
    ensure!(
        writable_now(&writer)?,
        "a plain writer with room for its largest record (1064 of 1096 bytes) did not poll writable"
    );
    ensure!(
        !writable_now(&relayer)?,
        "a relay fd polled writable with 1096 bytes left, where its largest record (with \
         its origin) costs 1136: a poller would spin on EAGAIN"
    );
    // What poll said is what writes find.
    let refused = relayer.write(&kchat_client::relay_frame(origin(), &[b'r'; 1000]));
    ensure!(
        errno(&refused) == Some(Errno::EAGAIN),
        "a relayed max_msg write with 1096 bytes left: {refused:?}"
    );
    writer
        .write_all(&[b'p'; 1000])
        .context("the plain max_msg write poll said would go in")?;
    Ok(())
}

fn a_laggard_evicted_past_its_bound_holds_the_room_no_more() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        policy: abi::POLICY_BLOCK,
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: 100,
        max_wait_ms: 200,
        ..spec("laggard-once")
    })?;
    let mut laggard = room.open_read_nonblock()?;
    let mut nonblocking = room.open_write_nonblock()?;
    let filled = fill(&mut nonblocking)?;
    ensure!(filled > 0, "the room refused its first message");
    let before = room.control().info(&room.name)?.laggard_evictions;
    // 20 blocking writes past the stopped reader, bounded.
    let path = room.path();
    let (done_tx, done_rx) = mpsc::channel();
    let started = Instant::now();
    let writing = thread::spawn(move || {
        let outcome = open(&path, false, true, false).and_then(|mut file| {
            for n in 0..20u8 {
                file.write_all(&[b'a' + n; 100])?;
            }
            Ok(())
        });
        done_tx.send(outcome).ok();
    });
    let outcome = done_rx.recv_timeout(PATIENCE);
    if outcome.is_err() {
        // Deleting the room frees the writer.
        let _ = room.delete();
    }
    writing.join().ok();
    outcome
        .with_context(|| {
            format!("20 blocking writes past a stopped reader took over {PATIENCE:?}")
        })?
        .context("the blocking writes")?;
    let took = started.elapsed();
    let evicted = room.control().info(&room.name)?.laggard_evictions - before;
    ensure!(
        evicted == 1,
        "20 blocking writes past one stopped reader evicted it {evicted} times, in {took:?}: \
         once evicted, a laggard must hold no writer until it reads again, not make each \
         write wait out the 200 ms bound"
    );
    // The laggard reads: it learns its loss, and holds the room again.
    let got = drain(&mut laggard)?;
    let lost = kchat_client::take_lost(&laggard)?;
    ensure!(
        got > 0 && lost > 0,
        "the evicted laggard read {got} bytes and was told of {lost} lost"
    );
    let refilled = fill(&mut nonblocking).context("refilling after the laggard read")?;
    ensure!(
        refilled > 0,
        "the room refused the first message after the laggard read everything"
    );
    let got = drain(&mut laggard)?;
    let lost = kchat_client::take_lost(&laggard)?;
    ensure!(
        got == refilled * 100 && lost == 0,
        "the laggard, holding the room again, read {got} bytes of {} written and lost {lost}",
        refilled * 100
    );
    nonblocking
        .write_all(&[b'z'; 100])
        .context("a write once the laggard had read")?;
    let evicted = room.control().info(&room.name)?.laggard_evictions - before;
    ensure!(evicted == 1, "{evicted} laggard evictions in all, not 1");
    Ok(())
}

fn edge_triggered_epoll_wakes_a_mapped_reader_for_every_message() -> Result<()> {
    use io_uring::{cqueue, opcode, types, IoUring};
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("mapped-edge"))?;
    let mut writer = room.open_write()?;
    let message = |round: usize| format!("round {round}").into_bytes();
    let read_in_place = |mapped: &mut MappedRoom, what: &str| -> Result<Vec<u8>> {
        match mapped.read(|m| m.payload.to_vec())? {
            Next::Message(payload) => Ok(payload),
            other => bail!("{what}: woken, the mapped reader found {other:?}"),
        }
    };

    // epoll, edge-triggered.
    let mut mapped = MappedRoom::map(room.open_read_nonblock()?)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        mapped.file(),
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 1),
    )?;
    let bound = EpollTimeout::try_from(PATIENCE).map_err(|_| anyhow::anyhow!("bound"))?;
    for round in 0..10 {
        // Reports its place (the end), drops any event already taken.
        mapped.report()?;
        let mut events = [EpollEvent::empty()];
        epoll.wait(&mut events, EpollTimeout::ZERO)?;
        writer.write_all(&message(round))?;
        let n = epoll.wait(&mut events, bound)?;
        ensure!(
            n == 1 && events[0].events().contains(EpollFlags::EPOLLIN),
            "round {round}: a mapped reader waiting in edge-triggered epoll after reporting \
             its place (the end) with IOC_SEEK_SEQ was not woken for a new message within \
             {PATIENCE:?}: reporting its place did not make it a waiter, so only the first \
             message after the epoll_ctl woke it"
        );
        let got = read_in_place(&mut mapped, &format!("epoll round {round}"))?;
        ensure!(got == message(round), "epoll round {round}: read {got:?}");
    }
    drop(mapped);

    // io_uring, a multishot poll (edge-triggered too).
    let mut mapped = MappedRoom::map(room.open_read_nonblock()?)?;
    let mut ring = IoUring::new(8)?;
    let poll = opcode::PollAdd::new(types::Fd(mapped.file().as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(7);
    // SAFETY: the entry names only the file, which outlives the ring's use.
    unsafe { ring.submission().push(&poll)? };
    ring.submit()?;
    for round in 0..10 {
        mapped.report()?;
        ring.completion().for_each(drop);
        writer.write_all(&message(round))?;
        let deadline = Instant::now() + PATIENCE;
        while ring.completion().is_empty() && Instant::now() < deadline {
            let left = types::Timespec::from(deadline.saturating_duration_since(Instant::now()));
            let waited = ring
                .submitter()
                .submit_with_args(1, &types::SubmitArgs::new().timespec(&left));
            if let Err(err) = &waited {
                ensure!(
                    matches!(err.raw_os_error(), Some(libc::ETIME | libc::EINTR)),
                    "io_uring_enter: {err}"
                );
            }
        }
        let cqe = ring.completion().next().with_context(|| {
            format!(
                "round {round}: a mapped reader's multishot io_uring poll was not woken for a \
                 new message within {PATIENCE:?} after it reported its place (the end) with \
                 IOC_SEEK_SEQ"
            )
        })?;
        ensure!(
            cqe.user_data() == 7 && cqe.result() > 0 && cqe.result() & i32::from(libc::POLLIN) != 0,
            "round {round}: the poll completed with {}",
            cqe.result()
        );
        ensure!(
            cqueue::more(cqe.flags()),
            "round {round}: the multishot poll ended"
        );
        let got = read_in_place(&mut mapped, &format!("io_uring round {round}"))?;
        ensure!(
            got == message(round),
            "io_uring round {round}: read {got:?}"
        );
    }
    Ok(())
}

/// Whether room `room`'s control page (mapped as `control`) names the
/// oldest retained message the room does: what `lseek(SEEK_SET)` returns
/// on a fresh reader.
fn control_page_agrees(room: &TempRoom, control: &Mapping, what: &str) -> Result<()> {
    let fresh = room.open_read_nonblock()?;
    // SAFETY: a plain system call on an open fd.
    let oldest = unsafe { libc::lseek(fresh.as_raw_fd(), 0, libc::SEEK_SET) };
    ensure!(oldest >= 0, "lseek: {}", Errno::last());
    let (first, next) = control.stand();
    let info = room.control().info(&room.name)?;
    ensure!(
        first == oldest as u64 && first == info.first_seq && next == info.next_seq,
        "{what}: the control page says messages {first}..{next} are retained, the room \
         {oldest} (lseek SEEK_SET on a fresh reader), {}..{} (IOC_ROOM_INFO): a mapped \
         reader would trust bytes a later writer reuses",
        info.first_seq,
        info.next_seq
    );
    Ok(())
}

fn the_control_page_tells_of_every_eviction_at_once() -> Result<()> {
    module::ensure_loaded()?;
    // Four 900-byte messages (964 each, 3856 of 4096); L has read the
    // first, the mapped reader M holds nothing; a 2000-byte write (2064)
    // would need records 0 and 1, and L holds 1.
    let room = TempRoom::create(abi::RoomSpec {
        policy: abi::POLICY_BLOCK,
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: 2000,
        max_wait_ms: abi::MAX_WAIT_FOREVER,
        ..spec("control-page")
    })?;
    let mut l = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&l, abi::READ_PACKET)?;
    let m = room.open_read_nonblock()?;
    let control = Mapping::new(&m, PAGE, nix::sys::mman::ProtFlags::PROT_READ)
        .context("mapping M's control page")?;
    let mut writer = room.open_write_nonblock()?;
    for n in 0..4u8 {
        writer.write_all(&[b'0' + n; 900])?;
    }
    let mut buf = [0u8; 2000];
    let got = l.read(&mut buf)?;
    ensure!(got == 900, "L read {got} bytes, not one 900-byte message");
    kchat_client::seek_seq(&m, 4).context("M reporting the end")?;
    let refused = writer.write(&[b'x'; 2000]);
    ensure!(
        errno(&refused) == Some(Errno::EAGAIN),
        "a 2000-byte write with record 1 held: {refused:?}"
    );
    control_page_agrees(&room, &control, "after a write refused for a held record")?;

    // A held block room past its bound, and a relayed write that could
    // never fit: whatever it evicts (or not), the control page says so.
    let room = TempRoom::create(abi::RoomSpec {
        policy: abi::POLICY_BLOCK,
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: abi::MIN_RING_BYTES - abi::RECORD_OVERHEAD,
        max_wait_ms: 50,
        ..spec("control-page-relay")
    })?;
    let m = room.open_read_nonblock()?;
    let control = Mapping::new(&m, PAGE, nix::sys::mman::ProtFlags::PROT_READ)
        .context("mapping the laggard's control page")?;
    let mut writer = room.open_write_nonblock()?;
    let mut sent = 0;
    loop {
        match writer.write(&[b'w'; 1000]) {
            Ok(_) => sent += 1,
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) => return Err(err).context("filling the room"),
        }
        ensure!(
            sent < 10,
            "a held 4 KiB room took {sent} 1000-byte messages"
        );
    }
    // The refusal started the hold; the poller is woken when it is due.
    ensure!(
        writable_within(&writer, PATIENCE)?,
        "the held room's writer was not told its bound ran out within {PATIENCE:?}"
    );
    let mut relayer = relay(&room, true)?;
    let refused = relayer.write(&kchat_client::relay_frame(origin(), &payload(4000)));
    ensure!(
        refused.is_err(),
        "a relayed record of 4136 bytes went into a 4096-byte ring"
    );
    control_page_agrees(
        &room,
        &control,
        &format!("after a relayed write that could never fit ({refused:?})"),
    )?;
    Ok(())
}

/// Whether `file` polls writable within `bound`.
fn writable_within(file: &File, bound: Duration) -> Result<bool> {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLOUT)];
    let timeout = PollTimeout::try_from(bound).map_err(|_| anyhow::anyhow!("bound {bound:?}"))?;
    nix::poll::poll(&mut fds, timeout)?;
    Ok(fds[0]
        .revents()
        .is_some_and(|events| events.contains(PollFlags::POLLOUT)))
}

/// Message `n` of the lapped-reader test: 100 bytes, its number then
/// bytes derived from it.
fn numbered(n: u64) -> Vec<u8> {
    let mut bytes = n.to_le_bytes().to_vec();
    bytes.extend((8..100u64).map(|i| n.wrapping_mul(31).wrapping_add(i) as u8));
    bytes
}

/// How the test ends the reader's stalled copy.
#[derive(Clone, Copy, Debug)]
enum Resolve {
    /// The page becomes inaccessible and the userfaultfd is closed: the
    /// fault is retried and fails, and so does the copy (`EFAULT`).
    /// (Closing the userfaultfd alone makes the retried fault succeed,
    /// with a zeroed page.)
    Fail,
    /// `UFFDIO_COPY` serves the page: the copy completes.
    Serve,
}

fn a_reader_lapped_while_its_copy_faults_gets_whole_messages() -> Result<()> {
    module::ensure_loaded()?;
    lapped_read(Resolve::Fail, "lapped-efault")?;
    lapped_read(Resolve::Serve, "lapped-served")
}

fn lapped_read(resolve: Resolve, name: &str) -> Result<()> {
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: 100,
        ..spec(name)
    })?;
    let reader = room.open_read()?;
    let mut writer = room.open_write_nonblock()?;
    for n in 0..20 {
        writer.write_all(&numbered(n))?;
    }
    // The read's buffer: the last 150 bytes of a page, then a page whose
    // fault nobody serves. The second message crosses into it.
    let pages = Pages::map(2).context("mapping the read buffer")?;
    // SAFETY: the first page is mapped and nobody else uses it yet.
    unsafe { std::ptr::write_bytes(pages.ptr, 0, PAGE) };
    let uffd = uffd_open().context("userfaultfd (is CONFIG_USERFAULTFD on?)")?;
    uffd_register(uffd.as_raw_fd(), pages.addr(1), PAGE).context("UFFDIO_REGISTER")?;
    let start = PAGE - 150;
    let target = pages.addr(0) + start;
    let fd = reader.as_raw_fd();
    let (done_tx, done_rx) = mpsc::channel();
    let reading = thread::spawn(move || {
        // SAFETY: the buffer is the test's two pages, which stay mapped
        // until this thread is joined.
        let n = unsafe { libc::read(fd, target as *mut libc::c_void, 4000) };
        done_tx
            .send(if n < 0 {
                Err(Errno::last())
            } else {
                Ok(n as usize)
            })
            .ok();
    });
    let stalled = uffd_fault(uffd.as_fd(), PATIENCE);
    if !matches!(stalled, Ok(Some(_))) {
        // Whatever happened, release the reader before failing.
        drop(uffd);
        let returned = done_rx.recv_timeout(PATIENCE);
        if returned.is_err() {
            let _ = room.delete();
            std::mem::forget(pages);
        } else {
            reading.join().ok();
        }
        bail!("{name}: the reader never faulted on its buffer's second page ({stalled:?}); its read: {returned:?}");
    }
    // The reader is stalled mid-copy: lap it several times over.
    for n in 20..220 {
        writer.write_all(&numbered(n))?;
    }
    let page = pages.addr(1) as *mut libc::c_void;
    match resolve {
        Resolve::Fail => {
            // SAFETY: the test's own page; nothing but the stalled copy
            // touches it.
            Errno::result(unsafe { libc::mprotect(page, PAGE, libc::PROT_NONE) })
                .context("mprotect")?;
            drop(uffd);
        }
        Resolve::Serve => {
            let served = Pages::filled(|n| pattern_byte(5, n))?;
            uffd_copy(uffd.as_fd(), pages.addr(1) as u64, &served)?;
            drop(uffd);
        }
    }
    let returned = done_rx.recv_timeout(PATIENCE);
    if returned.is_err() {
        let _ = room.delete();
        if done_rx.recv_timeout(PATIENCE).is_err() {
            // The thread still writes into the pages: leave them.
            std::mem::forget(pages);
            bail!(
                "{name}: the lapped reader's read never returned, even after the room was deleted"
            );
        }
        reading.join().ok();
        bail!("{name}: the lapped reader's read did not return within {PATIENCE:?} of its fault ending");
    }
    reading.join().ok();
    // SAFETY: the test's own page; the read has returned.
    Errno::result(unsafe { libc::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_WRITE) })
        .context("mprotect")?;
    let n = returned
        .context("the read")?
        .with_context(|| format!("{name}: the lapped reader's read failed"))?;
    let bytes = pages.bytes(start, n.min(2 * PAGE - start));
    ensure!(
        n > 0 && n % 100 == 0,
        "{name} ({resolve:?}): the read returned {n} bytes, not whole 100-byte messages"
    );
    let numbers: Option<Vec<u64>> = bytes
        .chunks(100)
        .map(|chunk| {
            let n = u64::from_le_bytes(chunk.get(..8)?.try_into().ok()?);
            (chunk == numbered(n).as_slice()).then_some(n)
        })
        .collect();
    let numbers = numbers.with_context(|| {
        format!(
            "{name} ({resolve:?}): the lapped reader's read returned {n} bytes that are not \
             whole messages from the buffer's start (first bytes {:?}): bytes of the copy \
             the writer overtook were left in place",
            &bytes[..bytes.len().min(24)]
        )
    })?;
    let first = numbers[0];
    ensure!(
        numbers.iter().zip(first..).all(|(got, want)| *got == want),
        "{name}: the read returned messages {numbers:?}, not consecutive ones"
    );
    let lost = kchat_client::take_lost(&reader)?;
    ensure!(
        lost == first,
        "{name} ({resolve:?}): the reader's first message was {first}, but IOC_TAKE_LOST says \
         {lost} were lost"
    );
    Ok(())
}

fn mapped_rings_are_never_executable_and_survive_madvise() -> Result<()> {
    use nix::sys::mman::ProtFlags;
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: abi::MIN_RING_BYTES,
        ..spec("mapped-noexec")
    })?;
    let reader = room.open_read_nonblock()?;
    let mut framed = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&framed, abi::READ_FRAMED)?;
    match Mapping::new(&reader, PAGE, ProtFlags::PROT_READ | ProtFlags::PROT_EXEC) {
        Err(Errno::EPERM) => {}
        Ok(mapping) => bail!(
            "an executable mapping of a room's ring was allowed ({})",
            map_perms(mapping.addr())?
        ),
        Err(err) => bail!("mapping a ring PROT_READ|PROT_EXEC: {err}, not EPERM"),
    }
    let mut writer = room.open_write()?;
    for n in 0..3 {
        writer.write_all(format!("message {n} for the mapping").as_bytes())?;
    }
    let ring = Mapping::ring(&reader)?;
    let perms = map_perms(ring.addr())?;
    ensure!(perms == "r--s", "a read-only ring mapping shows as {perms}");
    // SAFETY: the test's own mapping; only its protection is asked for.
    let upgraded = unsafe {
        nix::sys::mman::mprotect(
            ring.ptr,
            ring.len,
            ProtFlags::PROT_READ | ProtFlags::PROT_EXEC,
        )
    };
    ensure!(
        upgraded == Err(Errno::EACCES),
        "mprotect(PROT_READ|PROT_EXEC) on a ring mapping: {upgraded:?}, not EACCES ({} now)",
        map_perms(ring.addr())?
    );
    // What read() says, to compare the mapping with after its pages were
    // dropped.
    let got = frames(&mut framed, 0)?;
    ensure!(got.len() == 3, "read() got {} frames, not 3", got.len());
    let (header, _, expected) = &got[0];
    let control = ring.control();
    let (records, area) = (control.records_offset as usize, control.area_len);
    let (len, time_ns) = (header.len, header.time_ns);
    // In a child: a SIGBUS there is an answer, not the suite's end.
    let base = ring.addr();
    let mut child = Child::spawn(|report| {
        // SAFETY: the child's copy of the mapping; reading it afterwards is
        // what is tested.
        if unsafe { libc::madvise(base as *mut libc::c_void, ring.len, libc::MADV_DONTNEED) } != 0 {
            return report.send(FAILED, 1, -(Errno::last() as i64));
        }
        // SAFETY: the mapping starts with a `RingControl`.
        let control = unsafe { (base as *const abi::RingControl).read_volatile() };
        if control.magic != abi::RING_MAGIC {
            return report.send(MISMATCH, 1, i64::from(control.magic));
        }
        if control.first_seq != 0 {
            return report.send(MISMATCH, 2, control.first_seq as i64);
        }
        if control.next_seq != 3 {
            return report.send(MISMATCH, 3, control.next_seq as i64);
        }
        let at = base + records + (control.first_pos % area) as usize;
        // SAFETY: the first retained record's header, inside the mapping
        // (its position is within the area).
        let record = unsafe { (at as *const abi::RingRecord).read_volatile() };
        if record.seq != 0 || record.len != len || record.time_ns != time_ns {
            return report.send(MISMATCH, 4, record.seq as i64);
        }
        // SAFETY: the record's payload follows its header in the area.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (at + size_of::<abi::RingRecord>()) as *const u8,
                len as usize,
            )
        };
        if bytes != expected.as_slice() {
            return report.send(MISMATCH, 5, 0);
        }
        report.send(DONE, 0, 0);
    })?;
    match child.hear(PATIENCE)? {
        Heard::Report([DONE, 0, _]) => {}
        Heard::Report([MISMATCH, what, value]) => bail!(
            "after madvise(MADV_DONTNEED) the mapping no longer shows what read() does: {} \
             ({value})",
            match what {
                1 => "the control page's magic",
                2 => "first_seq",
                3 => "next_seq",
                4 => "the first record's header",
                _ => "the first record's payload",
            }
        ),
        Heard::Report([FAILED, _, err]) => bail!("madvise(MADV_DONTNEED): {}", said(err)),
        Heard::Exited(how) => bail!(
            "reading a room's mapping after madvise(MADV_DONTNEED): the reader was {how} \
             (the dropped pages did not come back)"
        ),
        other => bail!("the child reading the mapping: {other:?}"),
    }
    Ok(())
}

fn per_user_limits_count_a_users_subordinate_ids_as_that_user() -> Result<()> {
    module::ensure_loaded()?;
    // Eight readers a room: one user may hold two.
    let _limits = LimitsRestored::set(|limits| limits.max_readers = 8)?;
    let room = TempRoom::create(spec("subordinate"))?;
    let path = CString::new(room.path().as_os_str().as_bytes())?;
    // `go`: the parent has written the id maps. `hold`: the grandchildren
    // keep their readers open until its write end closes.
    let (go_read, go_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (hold_read, hold_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let hold_ms = i32::try_from(3 * PATIENCE.as_millis()).unwrap_or(i32::MAX);
    let go_ms = i32::try_from(PATIENCE.as_millis()).unwrap_or(i32::MAX);
    let (go_fd, go_write_fd) = (go_read.as_raw_fd(), go_write.as_raw_fd());
    let (hold_fd, hold_write_fd) = (hold_read.as_raw_fd(), hold_write.as_raw_fd());
    let mut user = Child::spawn(|report| {
        // SAFETY: raw system calls in the forked child, on its own fds and
        // memory set up before the fork.
        unsafe {
            libc::close(go_write_fd);
            libc::close(hold_write_fd);
            if let Err(err) = become_user(1000, 1000) {
                return report.send(FAILED, 1, -(err as i64));
            }
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return report.send(FAILED, 2, -(Errno::last() as i64));
            }
            report.send(UNSHARED, 0, 0);
            let mut go = [libc::pollfd {
                fd: go_fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            let mut byte = 0u8;
            if libc::poll(go.as_mut_ptr(), 1, go_ms) != 1
                || libc::read(go_fd, (&mut byte as *mut u8).cast(), 1) != 1
            {
                return report.send(FAILED, 3, 0);
            }
            let mut pids = [0; 4];
            for (k, pid) in pids.iter_mut().enumerate() {
                *pid = libc::fork();
                if *pid == 0 {
                    // Ids k in the namespace: kernel uid and gid 100000 + k.
                    let id = k as libc::uid_t;
                    if libc::syscall(libc::SYS_setresgid, id, id, id) != 0
                        || libc::syscall(libc::SYS_setresuid, id, id, id) != 0
                    {
                        report.send(FAILED, 10 + k as i64, -(Errno::last() as i64));
                    } else {
                        let fd = libc::open(
                            path.as_ptr(),
                            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
                        );
                        report.send(
                            OPENED,
                            k as i64,
                            if fd < 0 { -(Errno::last() as i64) } else { 0 },
                        );
                    }
                    let mut hold = [libc::pollfd {
                        fd: hold_fd,
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    libc::poll(hold.as_mut_ptr(), 1, hold_ms);
                    libc::_exit(0);
                }
            }
            for pid in pids {
                if pid > 0 {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        }
    })?;
    drop(go_read);
    drop(hold_read);
    match user.hear(PATIENCE)? {
        Heard::Report([UNSHARED, _, _]) => {}
        Heard::Report([FAILED, step, err]) => bail!(
            "the uid-1000 child could not {}: {}",
            if step == 1 {
                "become uid 1000"
            } else {
                "make a user namespace"
            },
            said(err)
        ),
        other => bail!("the uid-1000 child: {other:?}"),
    }
    // Its subordinate ids: 0..8 inside are kernel ids 100000..100008.
    let proc = format!("/proc/{}", user.pid);
    std::fs::write(format!("{proc}/setgroups"), "deny").context("denying setgroups")?;
    std::fs::write(format!("{proc}/uid_map"), "0 100000 8").context("writing uid_map")?;
    std::fs::write(format!("{proc}/gid_map"), "0 100000 8").context("writing gid_map")?;
    File::from(go_write).write_all(b"g")?;
    let mut results = Vec::new();
    while results.len() < 4 {
        match user.hear(PATIENCE)? {
            Heard::Report([OPENED, k, opened]) => results.push((k, opened)),
            Heard::Report([FAILED, step, err]) if step >= 10 => bail!(
                "a grandchild could not take id {} in uid 1000's namespace: {}",
                step - 10,
                said(err)
            ),
            other => bail!(
                "the ids of uid 1000 opening the room ({} reported: {results:?}): {other:?}",
                results.len()
            ),
        }
    }
    let readers = room.control().readers(&room.name)?;
    // Done: the grandchildren close their readers and exit, then the child.
    drop(hold_write);
    let ended = user.exited(PATIENCE)?;
    results.sort_unstable();
    let described: Vec<String> = results
        .iter()
        .map(|(k, opened)| {
            format!(
                "uid {}: {}",
                100_000 + k,
                if *opened == 0 {
                    "opened".to_owned()
                } else {
                    said(*opened)
                }
            )
        })
        .collect();
    let opened = results.iter().filter(|(_, opened)| *opened == 0).count();
    ensure!(
        opened == 2
            && results
                .iter()
                .all(|(_, r)| *r == 0 || *r == -(Errno::EUSERS as i64)),
        "uid 1000's subordinate ids, each opening a room whose share is 2 readers a user: \
         {described:?}: each of them was given a share of its own"
    );
    let uids: Vec<u32> = readers.iter().map(|reader| reader.uid).collect();
    ensure!(
        uids.len() == 2 && uids.iter().all(|uid| (100_000..100_004).contains(uid)),
        "the room's readers are uids {uids:?}, not two of 100000..100003"
    );
    ensure!(
        ended.is_some(),
        "the uid-1000 child did not end once released ({})",
        user.state()
    );
    Ok(())
}
