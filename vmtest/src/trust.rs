//! What no local user may do to the module: open a room by a node that
//! does not carry its mode, open anything during a load that then fails,
//! stall another thread's calls on a shared file, or wait forever for a
//! wake-up that never comes. Each test failed before its fix.

use crate::{
    client::{open, spec, Control, TempRoom},
    helper::{self, NOBODY, PATIENCE},
    module, Test,
};
use anyhow::{ensure, Context, Result};
use kchat_uapi::abi;
use nix::{
    errno::Errno,
    libc,
    sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
};
use std::{
    ffi::CString,
    io::{ErrorKind, Read, Write},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

pub const TESTS: &[Test] = &[
    (
        "trust::a_node_made_with_mknod_gets_the_rooms_own_mode",
        a_node_made_with_mknod_gets_the_rooms_own_mode,
    ),
    (
        "trust::a_deleted_rooms_minor_is_not_reused_next",
        a_deleted_rooms_minor_is_not_reused_next,
    ),
    (
        "trust::a_failed_load_never_shows_a_node",
        a_failed_load_never_shows_a_node,
    ),
    (
        "trust::a_blocked_read_does_not_hold_its_file",
        a_blocked_read_does_not_hold_its_file,
    ),
    (
        "trust::a_loss_wakes_a_pri_only_poller",
        a_loss_wakes_a_pri_only_poller,
    ),
    (
        "trust::a_reader_that_read_everything_is_not_ready_for_an_old_loss",
        a_reader_that_read_everything_is_not_ready_for_an_old_loss,
    ),
    (
        "trust::a_burst_wakes_waiting_readers_and_loses_no_wake_up",
        a_burst_wakes_waiting_readers_and_loses_no_wake_up,
    ),
    (
        "trust::a_write_longer_than_a_block_rooms_ring_wakes_its_reader_before_waiting",
        a_write_longer_than_a_block_rooms_ring_wakes_its_reader_before_waiting,
    ),
    (
        "trust::a_seek_wakes_block_room_writers_polling",
        a_seek_wakes_block_room_writers_polling,
    ),
    (
        "trust::a_refused_write_costs_no_rate",
        a_refused_write_costs_no_rate,
    ),
    (
        "trust::a_stopped_reader_holds_a_block_room_only_for_its_bound",
        a_stopped_reader_holds_a_block_room_only_for_its_bound,
    ),
    (
        "trust::a_deleted_rooms_ring_counts_until_its_last_close",
        a_deleted_rooms_ring_counts_until_its_last_close,
    ),
    (
        "trust::a_rooms_ring_is_charged_to_its_creator_and_writers_allocate_nothing",
        a_rooms_ring_is_charged_to_its_creator_and_writers_allocate_nothing,
    ),
    (
        "trust::a_writer_in_its_own_pid_namespace_is_stamped_with_its_real_pid",
        a_writer_in_its_own_pid_namespace_is_stamped_with_its_real_pid,
    ),
    (
        "trust::a_reader_sees_pids_and_ids_in_its_own_namespaces",
        a_reader_sees_pids_and_ids_in_its_own_namespaces,
    ),
    (
        "trust::a_poller_is_writable_only_within_its_budget_and_woken_at_refill",
        a_poller_is_writable_only_within_its_budget_and_woken_at_refill,
    ),
    (
        "trust::a_poller_is_woken_when_a_laggards_bound_runs_out",
        a_poller_is_woken_when_a_laggards_bound_runs_out,
    ),
    (
        "trust::a_block_rooms_bound_changes_while_writers_wait",
        a_block_rooms_bound_changes_while_writers_wait,
    ),
];

fn room_minor(name: &str) -> Result<u32> {
    Ok(Control::open()?.info(name)?.minor)
}

fn a_node_made_with_mknod_gets_the_rooms_own_mode() -> Result<()> {
    module::ensure_loaded()?;
    let mut private = spec("private");
    private.mode = 0o600;
    let room = TempRoom::create(private)?;
    let major = module::major()?.context("no kchat major")?;
    let minor = room_minor(&room.name)?;
    let node = "/tmp/kchat-mknod-node";
    let _ = std::fs::remove_file(node);
    let path = CString::new(node)?;
    // SAFETY: a plain system call with a valid path.
    let ret = unsafe {
        libc::mknod(
            path.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    ensure!(ret == 0, "mknod: {}", Errno::last());
    std::fs::set_permissions(node, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    let outcome = helper::open_as(std::path::Path::new(node), &NOBODY);
    std::fs::remove_file(node).ok();
    let outcome = outcome?;
    ensure!(
        outcome == "EACCES",
        "nobody opened a root-only room (mode 0600) through a 0666 node made with mknod: {outcome}"
    );
    // The room's own node refuses too, and root (CAP_DAC_OVERRIDE) may.
    ensure!(helper::open_as(&room.path(), &NOBODY)? == "EACCES");
    open(&room.path(), true, true, true).context("root opening a 0600 room")?;
    Ok(())
}

fn a_deleted_rooms_minor_is_not_reused_next() -> Result<()> {
    module::ensure_loaded()?;
    let first = TempRoom::create(spec("minor-a"))?;
    let old = room_minor(&first.name)?;
    first.delete().context("deleting the first room")?;
    let second = TempRoom::create(spec("minor-b"))?;
    let new = room_minor(&second.name)?;
    ensure!(
        new != old,
        "the next room took the deleted room's minor {old} at once"
    );
    Ok(())
}

/// A kobject uevent socket: what udev hears.
fn uevent_socket() -> Result<OwnedFd> {
    // SAFETY: plain system calls; the fd is owned right after.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    ensure!(fd >= 0, "netlink socket: {}", Errno::last());
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed is a valid sockaddr_nl; then the family and group 1
    // (the kernel's uevents).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = 1;
    // SAFETY: `addr` is a valid sockaddr_nl of the given size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    ensure!(ret == 0, "binding the uevent socket: {}", Errno::last());
    Ok(fd)
}

/// The uevents queued on `socket`, as text.
fn drain_uevents(socket: &OwnedFd) -> Vec<String> {
    let mut events = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return events;
        }
        events.push(String::from_utf8_lossy(&buf[..n as usize]).replace('\0', " "));
    }
}

fn a_failed_load_never_shows_a_node() -> Result<()> {
    module::ensure_unloaded()?;
    let socket = uevent_socket()?;
    // A thread tries the control node all along: no open may succeed
    // while loads fail.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let opener = {
        let (stop, opened) = (stop.clone(), opened.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if std::fs::File::open(crate::control::PATH).is_ok() {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                thread::yield_now();
            }
        })
    };
    let mut outcome = Ok(());
    for _ in 0..20 {
        // "control" is reserved: creating the default room fails.
        match module::load_with(c"default_room=control") {
            Ok(()) => {
                outcome = Err(anyhow::anyhow!("kchat loaded with default_room=control"));
                break;
            }
            Err(err) => {
                if err.downcast_ref::<Errno>() != Some(&Errno::EINVAL) {
                    outcome = Err(err.context("the failing load failed otherwise than EINVAL"));
                    break;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    opener.join().ok();
    outcome?;
    ensure!(!module::is_loaded(), "kchat is loaded after failed loads");
    ensure!(
        opened.load(Ordering::Relaxed) == 0,
        "the control node opened during a load that failed"
    );
    let nodes: Vec<String> = drain_uevents(&socket)
        .into_iter()
        .filter(|event| event.contains("DEVNAME=kchat/"))
        .collect();
    ensure!(
        nodes.is_empty(),
        "failed loads made device nodes: {nodes:?}"
    );
    module::ensure_loaded()
}

fn a_blocked_read_does_not_hold_its_file() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("quiet"))?;
    let reader = Arc::new(room.open_read()?);
    let (done_tx, done_rx) = mpsc::channel();
    let (tid_tx, tid_rx) = mpsc::channel();
    let blocked = {
        let reader = reader.clone();
        thread::spawn(move || {
            tid_tx.send(helper::thread_id()).ok();
            let mut buf = [0u8; 64];
            let got = (&*reader).read(&mut buf).map(|n| buf[..n].to_vec());
            done_tx.send(got).ok();
        })
    };
    // Wait until the reader sleeps (in the module's read), then seek the
    // same file from another thread.
    helper::wait_until_asleep(tid_rx.recv_timeout(PATIENCE)?)?;
    let (seek_tx, seek_rx) = mpsc::channel();
    let seeker = {
        let reader = reader.clone();
        thread::spawn(move || {
            // SAFETY: a plain system call on an open fd.
            let pos = unsafe { libc::lseek(reader.as_raw_fd(), 0, libc::SEEK_END) };
            let lost = kchat_client::take_lost(&*reader);
            seek_tx.send((pos, lost)).ok();
        })
    };
    let seek = seek_rx.recv_timeout(PATIENCE);
    // Release the reader whatever happened.
    room.open_write()?.write_all(b"wake up")?;
    let read = done_rx
        .recv_timeout(PATIENCE)
        .context("the blocked read did not return after a write")?;
    blocked.join().ok();
    seeker.join().ok();
    let (pos, lost) = seek
        .context("lseek and IOC_TAKE_LOST on a file another thread reads waited for a message")?;
    ensure!(pos == 0 && lost == Ok(0), "lseek {pos}, lost {lost:?}");
    ensure!(read? == b"wake up", "the reader got the wrong message");
    Ok(())
}

/// A 4 KiB `block` room with the given bound, a reader that holds it, and
/// a non-blocking writer that filled it until it was refused.
fn full_block_room(
    name: &str,
    max_wait_ms: u32,
) -> Result<(TempRoom, std::fs::File, std::fs::File)> {
    let room = TempRoom::create(abi::RoomSpec {
        policy: abi::POLICY_BLOCK,
        ring_bytes: abi::MIN_RING_BYTES,
        max_wait_ms,
        ..spec(name)
    })?;
    let reader = room.open_read_nonblock()?;
    let mut writer = room.open_write_nonblock()?;
    fill(&mut writer)?;
    Ok((room, reader, writer))
}

/// Writes 100-byte messages without blocking until the room refuses one
/// (at most 1,000); returns how many went in.
fn fill(writer: &mut std::fs::File) -> Result<usize> {
    for sent in 0..1000 {
        match writer.write(&[b'x'; 100]) {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(sent),
            Err(err) => return Err(err.into()),
        }
    }
    anyhow::bail!("the room took 1,000 messages without refusing one")
}

fn epoll_with(file: &impl AsFd, flags: EpollFlags) -> Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(file, EpollEvent::new(flags, 7))?;
    Ok(epoll)
}

fn ready(epoll: &Epoll, wait: Duration) -> Result<EpollFlags> {
    let mut events = [EpollEvent::empty()];
    let timeout = EpollTimeout::try_from(wait).map_err(|_| anyhow::anyhow!("timeout"))?;
    let n = epoll.wait(&mut events, timeout)?;
    Ok(if n == 0 {
        EpollFlags::empty()
    } else {
        events[0].events()
    })
}

fn a_loss_wakes_a_pri_only_poller() -> Result<()> {
    module::ensure_loaded()?;
    let mut small = spec("pri");
    small.ring_bytes = abi::MIN_RING_BYTES;
    let room = TempRoom::create(small)?;
    let reader = room.open_read_nonblock()?;
    let epoll = epoll_with(&reader, EpollFlags::EPOLLPRI)?;
    ensure!(
        ready(&epoll, Duration::ZERO)?.is_empty(),
        "a loss reported before any"
    );
    let mut writer = room.open_write_nonblock()?;
    for i in 0..200u8 {
        writer.write_all(&[i])?;
    }
    let events = ready(&epoll, PATIENCE)?;
    ensure!(
        events.contains(EpollFlags::EPOLLPRI),
        "an epoll set watching only EPOLLPRI got {events:?} after its reader lost messages"
    );
    Ok(())
}

fn a_reader_that_read_everything_is_not_ready_for_an_old_loss() -> Result<()> {
    module::ensure_loaded()?;
    let mut small = spec("prilevel");
    small.ring_bytes = abi::MIN_RING_BYTES;
    let room = TempRoom::create(small)?;
    let mut reader = room.open_read_nonblock()?;
    let mut writer = room.open_write_nonblock()?;
    for i in 0..200u8 {
        writer.write_all(&[i])?;
    }
    // Stream reads return what is left and never report the loss.
    let mut buf = [0u8; 4096];
    while reader.read(&mut buf).is_ok() {}
    // io_uring asks every read's poll for EPOLLPRI: a level that stayed on
    // here made each of its reads retry at once, 128 times, and then park
    // on a worker thread.
    let epoll = epoll_with(&reader, EpollFlags::EPOLLIN | EpollFlags::EPOLLPRI)?;
    let events = ready(&epoll, Duration::ZERO)?;
    ensure!(
        events.is_empty(),
        "a reader that read everything polled {events:?}: pollers asking for EPOLLPRI spin"
    );
    // The loss is still there to ask for, and a new message brings it back.
    writer.write_all(b"next")?;
    let events = ready(&epoll, PATIENCE)?;
    ensure!(
        events.contains(EpollFlags::EPOLLPRI | EpollFlags::EPOLLIN),
        "a new message after a loss polled {events:?}"
    );
    let lost = kchat_client::take_lost(&reader)?;
    ensure!(lost > 0, "the loss was forgotten ({lost})");
    Ok(())
}

fn a_burst_wakes_waiting_readers_and_loses_no_wake_up() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("wakes"))?;
    // An edge-triggered reader that drains to EAGAIN, a level-triggered
    // one that polls, and a reader that never reads at all.
    let mut edge = room.open_read_nonblock()?;
    let mut level = room.open_read_nonblock()?;
    let _idle = room.open_read_nonblock()?;
    let edge_set = epoll_with(&edge, EpollFlags::EPOLLIN | EpollFlags::EPOLLET)?;
    let level_set = epoll_with(&level, EpollFlags::EPOLLIN)?;
    let mut writer = room.open_write_nonblock()?;
    let drain = |reader: &mut std::fs::File| -> Result<usize> {
        let mut buf = [0u8; 4096];
        let mut got = 0;
        loop {
            match reader.read(&mut buf) {
                Ok(n) => got += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(got),
                Err(err) => return Err(err.into()),
            }
        }
    };
    ensure!(
        ready(&level_set, Duration::ZERO)?.is_empty(),
        "ready before any message"
    );
    drain(&mut edge)?;
    // A message wakes pollers only if a reader waits (found nothing since
    // the last one did); every round here makes both wait again, and each
    // must be woken by the next burst, whatever the idle reader does.
    for round in 0..50 {
        for _ in 0..3 {
            writer.write_all(b"tick")?;
        }
        ensure!(
            ready(&edge_set, PATIENCE)?.contains(EpollFlags::EPOLLIN),
            "round {round}: the edge-triggered reader was not woken"
        );
        ensure!(
            ready(&level_set, PATIENCE)?.contains(EpollFlags::EPOLLIN),
            "round {round}: the level-triggered reader was not woken"
        );
        ensure!(
            drain(&mut edge)? == 12,
            "round {round}: the edge reader missed messages"
        );
        ensure!(
            drain(&mut level)? == 12,
            "round {round}: the level reader missed messages"
        );
        ensure!(
            ready(&level_set, Duration::ZERO)?.is_empty(),
            "round {round}: ready after draining"
        );
    }
    Ok(())
}

fn a_write_longer_than_a_block_rooms_ring_wakes_its_reader_before_waiting() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        policy: abi::POLICY_BLOCK,
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: 100,
        max_wait_ms: abi::MAX_WAIT_FOREVER,
        ..spec("longwrite")
    })?;
    let mut reader = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&reader, abi::READ_PACKET)?;
    let waiting = epoll_with(&reader, EpollFlags::EPOLLIN)?;
    // One write of 200 messages, about four rings' worth: the writer must
    // wake the reader for what it stored before it waits for room.
    let burst: Vec<u8> = (0..200u32)
        .flat_map(|n| {
            let mut message = vec![b'.'; 100];
            message[..4].copy_from_slice(&n.to_le_bytes());
            message
        })
        .collect();
    let mut writer = room.open_write()?;
    let (done_tx, done_rx) = mpsc::channel();
    let writing = thread::spawn(move || {
        done_tx.send(writer.write_all(&burst)).ok();
    });
    let mut buf = [0u8; 100];
    for n in 0..200u32 {
        let woke = ready(&waiting, PATIENCE)?;
        if !woke.contains(EpollFlags::EPOLLIN) {
            let _ = Control::open()?.delete(&room.name);
            writing.join().ok();
            anyhow::bail!("the reader was not woken for message {n}: the writer waits for it");
        }
        let got = reader.read(&mut buf)?;
        ensure!(got == 100, "message {n}: {got} bytes");
        let seen = u32::from_le_bytes(buf[..4].try_into()?);
        ensure!(seen == n, "message {n} came as {seen}");
    }
    let written = done_rx.recv_timeout(PATIENCE);
    if written.is_err() {
        let _ = Control::open()?.delete(&room.name);
    }
    writing.join().ok();
    written.context("the long write never finished")??;
    Ok(())
}

fn a_seek_wakes_block_room_writers_polling() -> Result<()> {
    module::ensure_loaded()?;
    let (_room, reader, writer) = full_block_room("blockseek", abi::MAX_WAIT_FOREVER)?;
    let epoll = epoll_with(&writer, EpollFlags::EPOLLOUT)?;
    ensure!(
        ready(&epoll, Duration::ZERO)?.is_empty(),
        "a full block room polled writable"
    );
    // SAFETY: a plain system call on an open fd.
    let pos = unsafe { libc::lseek(reader.as_raw_fd(), 0, libc::SEEK_END) };
    ensure!(pos > 0, "lseek: {}", Errno::last());
    let events = ready(&epoll, PATIENCE)?;
    ensure!(
        events.contains(EpollFlags::EPOLLOUT),
        "the writer's poller was not woken when the only reader skipped to the end ({events:?})"
    );
    Ok(())
}

fn a_refused_write_costs_no_rate() -> Result<()> {
    module::ensure_loaded()?;
    let (room, mut reader, mut writer) = full_block_room("refund", abi::MAX_WAIT_FOREVER)?;
    // One message a second, a burst of one: the next write is the budget.
    let mut limit = kchat_client::rate_limit(&room.name);
    limit.scope = abi::LIMIT_PER_FILE;
    limit.msgs_per_sec = 1;
    limit.msg_burst = 1;
    Control::open()?.set_limit(&limit)?;
    let refused = writer.write(&[b'y'; 100]);
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::WouldBlock),
        "a write to a full block room: {refused:?}"
    );
    let mut buf = vec![0u8; 1 << 16];
    while reader.read(&mut buf).is_ok() {}
    writer
        .write_all(&[b'z'; 100])
        .context("the first write after a refused one was throttled for the refused one")?;
    let info = Control::open()?.info(&room.name)?;
    ensure!(info.throttled == 0, "{} throttles counted", info.throttled);
    Ok(())
}

/// The first frame a room file reads, blocking at most `PATIENCE`.
fn first_frame(reader: &mut std::fs::File) -> Result<abi::FrameHeader> {
    helper::wait_for("a message", PATIENCE, || {
        let mut fds = [nix::poll::PollFd::new(
            reader.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        Ok(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO)? > 0)
    })?;
    let mut buf = [0u8; 4096];
    let n = reader.read(&mut buf)?;
    let frames = kchat_client::split_frames(&buf[..n]).context("a torn frame")?;
    Ok(frames.first().context("no frame")?.0)
}

fn a_writer_in_its_own_pid_namespace_is_stamped_with_its_real_pid() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("pidns"))?;
    let mut reader = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&reader, abi::READ_FRAMED)?;
    // The writer is pid 1 of a new namespace, and stays alive until its
    // stdin closes, so its real pid can be looked up.
    let mut writer = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--", "sh", "-c"])
        .arg(format!(
            "echo \"I am $$\" > {}; read _",
            room.path().display()
        ))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running unshare --pid --fork")?;
    let header = first_frame(&mut reader);
    let status = std::fs::read_to_string(format!(
        "/proc/{}/status",
        header.as_ref().map_or(0, |h| h.pid)
    ));
    drop(writer.stdin.take());
    writer.wait().ok();
    let header = header?;
    ensure!(
        header.pid != 1,
        "a reader in the initial pid namespace saw pid 1: the writer's own namespace's number"
    );
    let nspid = status
        .context("the stamped pid names no live process")?
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:").map(str::to_owned))
        .context("no NSpid line")?;
    let ids: Vec<&str> = nspid.split_whitespace().collect();
    ensure!(
        ids == [header.pid.to_string().as_str(), "1"],
        "pid {} is not the writer (NSpid: {nspid})",
        header.pid
    );
    Ok(())
}

fn a_reader_sees_pids_and_ids_in_its_own_namespaces() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("userns"))?;
    // A reader in its own user namespace (root mapped to root, nothing
    // else) and one in its own pid namespace.
    // `timeout`: the helper must not be the namespace's init, which
    // ignores the SIGALRM that bounds its read.
    let timeout = PATIENCE.as_secs().to_string();
    let in_userns = helper::framed_reader_under(
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "--",
            "timeout",
            &timeout,
        ],
        &room.path(),
    )?;
    let in_pidns = helper::framed_reader_under(
        &["unshare", "--pid", "--fork", "--", "timeout", &timeout],
        &room.path(),
    )?;
    crate::client::wait_for_readers(&room.name, 2)?;
    // uid and gid 1000 write: unmapped in the reader's user namespace.
    helper::write_once_as(
        &["--reuid=1000", "--regid=1000", "--clear-groups"],
        &room.path(),
    )?;
    let out = |child: std::process::Child| -> Result<String> {
        let out = child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let userns = out(in_userns)?;
    let pidns = out(in_pidns)?;
    // "pid uid gid"; anything else (an error, or nothing from a helper
    // that was killed) fails with what the helper said.
    let fields = |text: &str| -> Result<Vec<u32>> {
        let fields = text
            .split_whitespace()
            .map(|f| f.parse().with_context(|| format!("helper said {text:?}")))
            .collect::<Result<Vec<u32>>>()?;
        ensure!(
            fields.len() == 3,
            "helper said {text:?}, not \"pid uid gid\""
        );
        Ok(fields)
    };
    let userns = fields(&userns)?;
    let pidns = fields(&pidns)?;
    ensure!(
        userns[1..] == [65534, 65534],
        "a reader whose user namespace does not map uid 1000 saw ids {:?}, not the overflow id",
        &userns[1..]
    );
    ensure!(
        pidns[0] == 0,
        "a reader in its own pid namespace saw the outside writer as pid {}, not 0",
        pidns[0]
    );
    ensure!(
        pidns[1..] == [1000, 1000],
        "the pid-namespace reader (initial user namespace) saw ids {:?}",
        &pidns[1..]
    );
    Ok(())
}

fn a_deleted_rooms_ring_counts_until_its_last_close() -> Result<()> {
    module::ensure_loaded()?;
    let control = Control::open()?;
    let before = control.limits()?;
    let (names, _) = control.list(256)?;
    let mut used = 0u64;
    for name in &names {
        used += u64::from(control.info(name)?.ring_bytes);
    }
    let ring = 64 * 1024;
    // Room for exactly two more 64 KiB rings.
    control.set_limits(&abi::GlobalLimits {
        max_total_ring_bytes: used + 2 * u64::from(ring),
        ..before
    })?;
    let result = (|| -> Result<()> {
        let sized = |name: &str| abi::RoomSpec {
            ring_bytes: ring,
            ..spec(name)
        };
        let first = TempRoom::create(sized("ring-a"))?;
        let reader = first.open_read()?;
        first.delete().context("deleting ring-a")?;
        let _second = TempRoom::create(sized("ring-b"))?;
        match TempRoom::create(sized("ring-c")) {
            Err(err) if err.root_cause().downcast_ref::<Errno>() == Some(&Errno::ENOSPC) => {}
            Err(err) => return Err(err.context("creating ring-c")),
            Ok(_) => anyhow::bail!(
                "a deleted room's ring, still held by an open reader, no longer counted"
            ),
        }
        drop(reader);
        TempRoom::create(sized("ring-c")).context("after the deleted room's last close")?;
        Ok(())
    })();
    control.set_limits(&before)?;
    result
}

fn a_rooms_ring_is_charged_to_its_creator_and_writers_allocate_nothing() -> Result<()> {
    module::ensure_loaded()?;
    let root = std::path::Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.controllers").exists() {
        let status = std::process::Command::new("mount")
            .args(["-t", "cgroup2", "cgroup2"])
            .arg(root)
            .status()?;
        ensure!(status.success(), "mounting cgroup2 failed");
    }
    std::fs::write(root.join("cgroup.subtree_control"), "+memory")
        .context("enabling the memory controller")?;
    let cgroup = root.join("kchat-memcg");
    if !cgroup.exists() {
        std::fs::create_dir(&cgroup)?;
    }
    let ring: u32 = 16 << 20;
    let created = helper::create_in_cgroup(&cgroup, "memcg", ring);
    let control = Control::open()?;
    let measured = created.and_then(|created| {
        let written =
            helper::write_in_cgroup(&cgroup, std::path::Path::new("/dev/kchat/memcg"), 2048);
        Ok((created, written?))
    });
    control.delete("memcg").ok();
    std::fs::remove_dir(&cgroup).ok();
    let ((before, after), (before_write, after_write)) = measured?;
    // The whole ring is allocated at creation, charged to whoever created
    // the room (in practice kchatd's cgroup).
    let grew = after.saturating_sub(before);
    ensure!(
        grew >= 3 * u64::from(ring) / 4,
        "creating a room with a {ring}-byte ring grew its creator's memory cgroup by \
         {grew} bytes only: the ring is not allocated up front, or not charged"
    );
    // Messages are written into that ring: 2 MiB of them allocate nothing
    // (what grows is the writer's own stack and buffers).
    let grew = after_write.saturating_sub(before_write);
    ensure!(
        grew < 2048 * 1024 / 4,
        "2 MiB of messages grew the writer's memory cgroup by {grew} bytes: \
         writes allocate per message"
    );
    Ok(())
}

fn a_stopped_reader_holds_a_block_room_only_for_its_bound() -> Result<()> {
    module::ensure_loaded()?;
    let (room, laggard, _writer) = full_block_room("bounded", 300)?;
    // A blocking writer waits out the bound, then evicts what the laggard
    // holds; bounded here so a writer that waits forever fails the test.
    let path = room.path();
    let (done_tx, done_rx) = mpsc::channel();
    let blocked = thread::spawn(move || {
        let outcome = open(&path, false, true, false).and_then(|mut file| {
            file.write_all(&[b'z'; 100])?;
            Ok(())
        });
        done_tx.send(outcome).ok();
    });
    let outcome = done_rx.recv_timeout(PATIENCE);
    if outcome.is_err() {
        // Release the writer before failing.
        let _ = Control::open()?.delete(&room.name);
    }
    blocked.join().ok();
    outcome
        .context("a stopped reader held a block room's writer past max_wait_ms")?
        .context("the blocking write")?;
    let info = Control::open()?.info(&room.name)?;
    ensure!(
        info.laggard_evictions == 1,
        "{} laggard evictions counted",
        info.laggard_evictions
    );
    let lost = kchat_client::take_lost(&laggard)?;
    ensure!(lost > 0, "the evicted laggard was not told of its loss");
    // A room made with no bound stays strictly lossless.
    let strict = TempRoom::create(abi::RoomSpec {
        policy: abi::POLICY_BLOCK,
        ring_bytes: abi::MIN_RING_BYTES,
        max_wait_ms: abi::MAX_WAIT_FOREVER,
        ..spec("strict")
    })?;
    let _stopped = strict.open_read_nonblock()?;
    let mut writer = strict.open_write_nonblock()?;
    let sent = fill(&mut writer)?;
    ensure!(
        fill(&mut writer)? == 0,
        "a strict block room took more after refusing a writer ({sent} before)"
    );
    ensure!(
        Control::open()?.info(&strict.name)?.lost == 0,
        "a strict block room lost messages"
    );
    // Bad input: a bound on a drop room is refused.
    let bad = Control::open()?.create(&abi::RoomSpec {
        max_wait_ms: 100,
        ..spec("badbound")
    });
    ensure!(
        bad == Err(Errno::EINVAL),
        "max_wait_ms on a drop room: {bad:?}"
    );
    Ok(())
}

fn a_poller_is_writable_only_within_its_budget_and_woken_at_refill() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("budget"))?;
    // Two messages a second, a burst of one: after one write the budget
    // comes back in 500 ms.
    let mut limit = kchat_client::rate_limit(&room.name);
    limit.msgs_per_sec = 2;
    limit.msg_burst = 1;
    room.control().set_limit(&limit)?;
    let mut writer = room.open_write_nonblock()?;
    let epoll = epoll_with(&writer, EpollFlags::EPOLLOUT)?;
    ensure!(
        ready(&epoll, Duration::ZERO)?.contains(EpollFlags::EPOLLOUT),
        "a writer with its whole budget did not poll writable"
    );
    writer.write_all(b"one")?;
    let refused = writer.write(b"two");
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::WouldBlock),
        "a write over the budget: {refused:?}"
    );
    // Level-triggered pollers would spin on EAGAIN if this said writable.
    let early = ready(&epoll, Duration::ZERO)?;
    ensure!(
        !early.contains(EpollFlags::EPOLLOUT),
        "a writer that spent its budget polled writable ({early:?})"
    );
    // Nothing happens in the room: only the refill can wake the poller.
    let events = ready(&epoll, PATIENCE)?;
    ensure!(
        events.contains(EpollFlags::EPOLLOUT),
        "a writer polling for EPOLLOUT was not woken when its budget refilled ({events:?})"
    );
    writer
        .write_all(b"two")
        .context("the write after the poller was told it may write")?;
    Ok(())
}

fn a_poller_is_woken_when_a_laggards_bound_runs_out() -> Result<()> {
    module::ensure_loaded()?;
    // The refused write in `full_block_room` starts the laggard's hold.
    let (room, laggard, mut writer) = full_block_room("boundpoll", 300)?;
    let epoll = epoll_with(&writer, EpollFlags::EPOLLOUT)?;
    let early = ready(&epoll, Duration::ZERO)?;
    ensure!(
        !early.contains(EpollFlags::EPOLLOUT),
        "a held block room polled writable before its bound ran out ({early:?})"
    );
    // Nothing happens in the room: only the bound running out can wake it.
    let events = ready(&epoll, PATIENCE)?;
    ensure!(
        events.contains(EpollFlags::EPOLLOUT),
        "a writer polling a held block room was not woken when its bound ran out ({events:?})"
    );
    writer
        .write_all(&[b'z'; 100])
        .context("the write after the bound ran out")?;
    ensure!(
        room.control().info(&room.name)?.laggard_evictions == 1,
        "the laggard was not evicted"
    );
    ensure!(
        kchat_client::take_lost(&laggard)? > 0,
        "the laggard lost nothing"
    );
    Ok(())
}

fn a_block_rooms_bound_changes_while_writers_wait() -> Result<()> {
    module::ensure_loaded()?;
    let (room, _laggard, _writer) = full_block_room("rebound", abi::MAX_WAIT_FOREVER)?;
    let control = room.control();
    // A writer that may wait forever, asleep.
    let path = room.path();
    let (done_tx, done_rx) = mpsc::channel();
    let (tid_tx, tid_rx) = mpsc::channel();
    let blocked = thread::spawn(move || {
        tid_tx.send(helper::thread_id()).ok();
        let outcome = open(&path, false, true, false).and_then(|mut file| {
            file.write_all(&[b'z'; 100])?;
            Ok(())
        });
        done_tx.send(outcome).ok();
    });
    let tid = tid_rx.recv_timeout(PATIENCE)?;
    helper::wait_until_asleep(tid)?;
    ensure!(
        done_rx.try_recv().is_err(),
        "a write to a full strict block room went through"
    );
    control.set_max_wait(&room.name, 50)?;
    let outcome = done_rx.recv_timeout(PATIENCE);
    if outcome.is_err() {
        // Release the writer before failing.
        let _ = control.delete(&room.name);
    }
    blocked.join().ok();
    outcome
        .context("a writer already waiting did not go on once the room got a bound")?
        .context("the blocking write")?;
    let info = control.info(&room.name)?;
    ensure!(
        info.max_wait_ms == 50 && info.laggard_evictions == 1,
        "after the change: max_wait_ms {}, {} laggard evictions",
        info.max_wait_ms,
        info.laggard_evictions
    );
    // 0 is the default, as at creation; back to no bound.
    control.set_max_wait(&room.name, 0)?;
    ensure!(control.info(&room.name)?.max_wait_ms == abi::DEFAULT_MAX_WAIT_MS);
    control.set_max_wait(&room.name, abi::MAX_WAIT_FOREVER)?;
    // Bad input changes nothing.
    let drop_room = TempRoom::create(spec("reboundd"))?;
    let on_drop = control.set_max_wait(&drop_room.name, 100);
    ensure!(
        on_drop == Err(Errno::EINVAL),
        "a bound on a drop room: {on_drop:?}"
    );
    ensure!(control.info(&drop_room.name)?.max_wait_ms == 0);
    let missing = control.set_max_wait("nosuchroom", 100);
    ensure!(
        missing == Err(Errno::ENOENT),
        "a bound on no room: {missing:?}"
    );
    ensure!(
        control.info(&room.name)?.max_wait_ms == abi::MAX_WAIT_FOREVER,
        "a refused change changed the room"
    );
    Ok(())
}
