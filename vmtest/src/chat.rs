//! The data path, as users meet it: fan-out, message boundaries, blocking
//! and non-blocking I/O, poll, slow-reader policies, deletion, and the
//! shell tools as clients.

use crate::{
    client::{spec, Control, TempRoom},
    helper::PATIENCE,
    module, Test,
};
use anyhow::{bail, ensure, Context, Result};
use kchat_uapi::abi;
use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
};
use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    os::fd::AsFd,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

pub const TESTS: &[Test] = &[
    (
        "chat::every_reader_gets_every_message",
        every_reader_gets_every_message,
    ),
    (
        "chat::reads_return_whole_messages_that_fit",
        reads_return_whole_messages_that_fit,
    ),
    (
        "chat::a_message_larger_than_the_buffer_comes_in_parts",
        a_message_larger_than_the_buffer_comes_in_parts,
    ),
    (
        "chat::zero_length_write_is_a_no_op",
        zero_length_write_is_a_no_op,
    ),
    (
        "chat::new_readers_start_at_the_end",
        new_readers_start_at_the_end,
    ),
    (
        "chat::nonblocking_read_gets_eagain",
        nonblocking_read_gets_eagain,
    ),
    (
        "chat::blocking_read_wakes_on_write",
        blocking_read_wakes_on_write,
    ),
    ("chat::poll_reports_readiness", poll_reports_readiness),
    (
        "chat::deleted_room_drains_then_ends",
        deleted_room_drains_then_ends,
    ),
    (
        "chat::drop_policy_never_blocks_writers",
        drop_policy_never_blocks_writers,
    ),
    (
        "chat::block_policy_waits_for_the_slowest_reader",
        block_policy_waits_for_the_slowest_reader,
    ),
    (
        "chat::write_only_fds_never_hold_a_room_back",
        write_only_fds_never_hold_a_room_back,
    ),
    (
        "chat::long_writes_are_split_and_kept_in_order",
        long_writes_are_split_and_kept_in_order,
    ),
    ("chat::cat_and_echo_chat", cat_and_echo_chat),
    (
        "chat::select_on_stdin_and_the_room",
        select_on_stdin_and_the_room,
    ),
    (
        "chat::io_uring_polls_instead_of_parking_workers",
        io_uring_polls_instead_of_parking_workers,
    ),
];

fn read_some(file: &mut File, size: usize) -> Result<Vec<u8>, std::io::Error> {
    let mut buf = vec![0u8; size];
    let n = file.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn expect_eagain(file: &mut File, what: &str) -> Result<()> {
    match read_some(file, 4096) {
        Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(()),
        other => bail!("{what}: read gave {other:?}, expected EAGAIN"),
    }
}

fn every_reader_gets_every_message() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("fanout"))?;
    let mut readers: Vec<File> = (0..3)
        .map(|_| room.open_read_nonblock())
        .collect::<Result<_>>()?;
    let mut writer = room.open_write()?;
    for message in [&b"one\n"[..], b"two\n", b"three\n"] {
        writer.write_all(message)?;
    }
    for (i, reader) in readers.iter_mut().enumerate() {
        let got = read_some(reader, 4096)?;
        ensure!(
            got == b"one\ntwo\nthree\n",
            "reader {i} got {:?}",
            String::from_utf8_lossy(&got)
        );
        expect_eagain(reader, "after reading everything")?;
    }
    Ok(())
}

fn reads_return_whole_messages_that_fit() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("whole"))?;
    let mut reader = room.open_read_nonblock()?;
    let mut writer = room.open_write()?;
    writer.write_all(b"aaaa")?;
    writer.write_all(b"bbbb")?;
    writer.write_all(b"cc")?;
    ensure!(
        read_some(&mut reader, 6)? == b"aaaa",
        "a 6-byte read should stop after the whole first message"
    );
    ensure!(
        read_some(&mut reader, 6)? == b"bbbbcc",
        "the next read should take both remaining messages"
    );
    Ok(())
}

fn a_message_larger_than_the_buffer_comes_in_parts() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("parts"))?;
    let mut reader = room.open_read_nonblock()?;
    room.open_write()?.write_all(b"0123456789")?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(read_some(&mut reader, 4)?);
    }
    ensure!(got == [&b"0123"[..], b"4567", b"89"], "parts: {got:?}");
    expect_eagain(&mut reader, "after the last part")
}

fn zero_length_write_is_a_no_op() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("empty"))?;
    let mut reader = room.open_read_nonblock()?;
    let written = room.open_write()?.write(b"")?;
    ensure!(written == 0, "a zero-length write returned {written}");
    expect_eagain(&mut reader, "after a zero-length write")
}

fn new_readers_start_at_the_end() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("late"))?;
    let mut writer = room.open_write()?;
    writer.write_all(b"before")?;
    let mut reader = room.open_read_nonblock()?;
    expect_eagain(&mut reader, "a new reader")?;
    writer.write_all(b"after")?;
    ensure!(
        read_some(&mut reader, 64)? == b"after",
        "a new reader should see only new messages"
    );
    Ok(())
}

fn nonblocking_read_gets_eagain() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("quiet"))?;
    let mut reader = room.open_read_nonblock()?;
    expect_eagain(&mut reader, "an empty room")
}

fn blocking_read_wakes_on_write() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("wake"))?;
    let mut reader = room.open_read()?;
    let path = room.path();
    let me = crate::helper::thread_id();
    let writer = thread::spawn(move || -> Result<()> {
        // Speak once the reader blocks, so the write is what wakes it.
        crate::helper::wait_until_asleep(me)?;
        crate::client::open(&path, false, true, false)?.write_all(b"wake up")?;
        Ok(())
    });
    let got = read_some(&mut reader, 64)?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    ensure!(got == b"wake up", "blocked reader got {got:?}");
    Ok(())
}

fn poll_once(file: &File, wanted: PollFlags) -> Result<PollFlags> {
    let mut fds = [PollFd::new(file.as_fd(), wanted)];
    poll(&mut fds, PollTimeout::ZERO)?;
    Ok(fds[0].revents().unwrap_or(PollFlags::empty()))
}

fn poll_reports_readiness() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("polled"))?;
    let reader = room.open_read()?;
    let mut writer = room.open_write()?;
    let all = PollFlags::POLLIN | PollFlags::POLLOUT | PollFlags::POLLPRI;
    ensure!(
        poll_once(&reader, all)?.is_empty(),
        "an idle reader polled ready"
    );
    ensure!(
        poll_once(&writer, all)? == PollFlags::POLLOUT,
        "a writer of a drop room should poll POLLOUT only"
    );
    writer.write_all(b"x")?;
    let got = poll_once(&reader, all)?;
    ensure!(
        got == PollFlags::POLLIN,
        "a reader with a message polled {got:?}, expected POLLIN"
    );
    // A poller asleep is woken by a write.
    let path = room.path();
    let name = room.name.clone();
    let me = crate::helper::thread_id();
    let waker = thread::spawn(move || -> Result<()> {
        // Speak once the late reader is open (it starts at the end) and
        // asleep in poll, so the write is what wakes it.
        crate::client::wait_for_readers(&name, 2)?;
        crate::helper::wait_until_asleep(me)?;
        crate::client::open(&path, false, true, false)?.write_all(b"y")?;
        Ok(())
    });
    let mut late = room.open_read()?;
    let mut fds = [PollFd::new(late.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::try_from(PATIENCE)?)?;
    waker
        .join()
        .map_err(|_| anyhow::anyhow!("waker thread panicked"))??;
    ensure!(n == 1, "poll was not woken by a write");
    ensure!(
        read_some(&mut late, 16)? == b"y",
        "the woken reader read the wrong message"
    );
    Ok(())
}

fn deleted_room_drains_then_ends() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("closing"))?;
    let mut reader = room.open_read()?;
    let mut writer = room.open_write()?;
    writer.write_all(b"last words")?;
    room.delete().context("deleting 'closing'")?;
    ensure!(!room.path().exists(), "the node outlived the deletion");
    let hup = poll_once(&reader, PollFlags::POLLIN)?;
    ensure!(
        hup.contains(PollFlags::POLLHUP),
        "a deleted room's reader polled {hup:?}, no POLLHUP"
    );
    ensure!(
        read_some(&mut reader, 64)? == b"last words",
        "the reader did not drain what was left"
    );
    ensure!(
        read_some(&mut reader, 64)?.is_empty(),
        "the drained reader did not get end-of-file"
    );
    match writer.write(b"too late") {
        Err(err) if err.raw_os_error() == Some(Errno::EIDRM as i32) => Ok(()),
        other => bail!("writing to a deleted room: {other:?}, expected EIDRM"),
    }
}

fn drop_policy_never_blocks_writers() -> Result<()> {
    module::ensure_loaded()?;
    let ring = abi::MIN_RING_BYTES;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: ring,
        max_msg: 100,
        ..spec("lossy")
    })?;
    let mut slow = room.open_read_nonblock()?;
    let mut writer = room.open_write_nonblock()?;
    // Far more than the ring holds; a drop room never says EAGAIN.
    let count = 4 * ring / (100 + abi::RECORD_OVERHEAD);
    for i in 0..count {
        writer
            .write_all(&[b'a' + (i % 26) as u8; 100])
            .with_context(|| format!("write {i} of {count}"))?;
    }
    let mut got = Vec::new();
    loop {
        match read_some(&mut slow, 1 << 16) {
            Ok(chunk) if !chunk.is_empty() => got.extend(chunk),
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            other => bail!("draining the slow reader: {other:?}"),
        }
    }
    let retained = ring / (100 + abi::RECORD_OVERHEAD);
    ensure!(
        got.len() == retained as usize * 100,
        "slow reader got {} bytes, expected the {retained} newest messages",
        got.len()
    );
    let last = b'a' + ((count - 1) % 26) as u8;
    ensure!(
        got.ends_with(&[last; 100]),
        "the newest message is not the last one read"
    );
    Ok(())
}

fn block_policy_waits_for_the_slowest_reader() -> Result<()> {
    module::ensure_loaded()?;
    let ring = abi::MIN_RING_BYTES;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: ring,
        max_msg: 100,
        policy: abi::POLICY_BLOCK,
        ..spec("lossless")
    })?;
    let mut slow = room.open_read_nonblock()?;
    let mut writer = room.open_write_nonblock()?;
    let mut sent = 0u32;
    loop {
        match writer.write(&sent.to_le_bytes().repeat(25)) {
            Ok(100) => sent += 1,
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            other => bail!("write {sent}: {other:?}"),
        }
        ensure!(sent < 1000, "a block room never pushed back");
    }
    ensure!(
        poll_once(&writer, PollFlags::POLLOUT)?.is_empty(),
        "a full block room polled writable"
    );
    // Reading one message makes room for exactly one more.
    ensure!(
        read_some(&mut slow, 100)? == 0u32.to_le_bytes().repeat(25),
        "the first message came back wrong"
    );
    ensure!(
        poll_once(&writer, PollFlags::POLLOUT)? == PollFlags::POLLOUT,
        "space did not make the writer writable"
    );
    writer.write_all(&sent.to_le_bytes().repeat(25))?;
    sent += 1;
    let mut got = 1u32;
    loop {
        match read_some(&mut slow, 100) {
            Ok(message) => {
                ensure!(
                    message == got.to_le_bytes().repeat(25),
                    "message {got} lost or out of order"
                );
                got += 1;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) => return Err(err.into()),
        }
    }
    ensure!(
        got == sent,
        "read {got} of {sent} messages from a block room"
    );
    // A blocking writer sleeps until the reader makes room.
    while writer.write(&[0; 100]).is_ok() {}
    let path = room.path();
    let waits_before = Control::open()?.info(&room.name)?.writer_waits;
    let blocked = thread::spawn(move || -> Result<()> {
        crate::client::open(&path, false, true, false)?.write_all(&[1; 100])?;
        Ok(())
    });
    // The room counts the writer's wait when it starts.
    crate::helper::wait_for("the writer to wait", PATIENCE, || {
        Ok(Control::open()?.info(&room.name)?.writer_waits > waits_before)
    })?;
    ensure!(
        !blocked.is_finished(),
        "a blocking writer did not wait in a full block room"
    );
    read_some(&mut slow, 100)?;
    blocked
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    Ok(())
}

fn write_only_fds_never_hold_a_room_back() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: 100,
        policy: abi::POLICY_BLOCK,
        ..spec("writers")
    })?;
    let _other_writer = room.open_write()?;
    let mut writer = room.open_write_nonblock()?;
    for i in 0..1000 {
        writer
            .write_all(&[7; 100])
            .with_context(|| format!("write {i} with no readers"))?;
    }
    Ok(())
}

fn long_writes_are_split_and_kept_in_order() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        max_msg: 100,
        ..spec("split")
    })?;
    let mut reader = room.open_read_nonblock()?;
    let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
    let written = room.open_write()?.write(&data)?;
    ensure!(
        written == 250,
        "a 250-byte write to a max_msg=100 room wrote {written}"
    );
    // Three messages: a 100-byte read returns exactly one of them.
    let parts = [
        read_some(&mut reader, 100)?,
        read_some(&mut reader, 100)?,
        read_some(&mut reader, 100)?,
    ];
    ensure!(
        parts.iter().map(Vec::len).collect::<Vec<_>>() == [100, 100, 50],
        "split sizes wrong"
    );
    ensure!(
        parts.concat() == data,
        "the parts do not reassemble the write"
    );
    Ok(())
}

fn cat_and_echo_chat() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("shell"))?;
    let path = room.path();
    // `timeout`: a head that misses a line must fail the test, not hang it.
    let listener = Command::new("timeout")
        .arg(PATIENCE.as_secs().to_string())
        .args(["head", "-n", "2"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting head")?;
    // Readers start at the end: speak only once head has the room open.
    crate::client::wait_for_readers(&room.name, 1)?;
    for line in ["hello from echo", "second line"] {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("echo '{line}' > {}", path.display()))
            .status()?;
        ensure!(status.success(), "echo into the room failed");
    }
    let out = listener.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text == "hello from echo\nsecond line\n",
        "head -n 2 printed {text:?}"
    );
    let dd = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'via dd\\n' | dd of={} bs=64 status=none",
            path.display()
        ))
        .status()?;
    ensure!(dd.success(), "dd into the room failed");
    Ok(())
}

/// The 2016 client's loop: select() on stdin and the room at once.
fn select_on_stdin_and_the_room() -> Result<()> {
    use nix::sys::{
        select::{select, FdSet},
        time::{TimeVal, TimeValLike},
    };
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("selected"))?;
    let reader = room.open_read()?;
    let (stdin, mut typing) = std::io::pipe()?;
    let ready = |timeout_ms: i64| -> Result<(bool, bool)> {
        let mut set = FdSet::new();
        set.insert(stdin.as_fd());
        set.insert(reader.as_fd());
        let mut timeout = TimeVal::milliseconds(timeout_ms);
        select(None, &mut set, None, None, &mut timeout)?;
        Ok((set.contains(stdin.as_fd()), set.contains(reader.as_fd())))
    };
    ensure!(ready(0)? == (false, false), "select saw input before any");
    room.open_write()?.write_all(b"from the room")?;
    ensure!(
        ready(1000)? == (false, true),
        "select did not see the room's message alone"
    );
    let mut buf = [0u8; 64];
    let n = (&reader).read(&mut buf)?;
    ensure!(&buf[..n] == b"from the room", "the room's message");
    typing.write_all(b"typed\n")?;
    ensure!(
        ready(1000)? == (true, false),
        "select did not see stdin alone"
    );
    Ok(())
}

/// Threads of this process that io_uring started to block on its behalf.
fn io_wq_workers() -> Result<usize> {
    let mut count = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let comm = std::fs::read_to_string(task?.path().join("comm")).unwrap_or_default();
        if comm.starts_with("iou-wrk-") {
            count += 1;
        }
    }
    Ok(count)
}

fn io_uring_polls_instead_of_parking_workers() -> Result<()> {
    use io_uring::{opcode, types::Fd, IoUring};
    use std::os::fd::AsRawFd;
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("uring"))?;
    let reader = room.open_read()?;
    let writer = room.open_write()?;
    let mut ring = IoUring::new(8)?;
    let mut buf = vec![0u8; 256];
    let read = opcode::Read::new(Fd(reader.as_raw_fd()), buf.as_mut_ptr(), buf.len() as u32)
        .build()
        .user_data(1);
    // SAFETY: `buf` and `reader` outlive the submission: both live until
    // the completion is reaped below.
    unsafe { ring.submission().push(&read)? };
    // Submission issues the read inline: by the time `submit` returns it
    // either armed a poll or went to an io-wq worker (created then).
    ring.submit()?;
    // A completion would come at once; wait for it, boundedly, to be sure
    // none does.
    let timeout = io_uring::types::Timespec::from(Duration::from_millis(300));
    let waited = ring
        .submitter()
        .submit_with_args(1, &io_uring::types::SubmitArgs::new().timespec(&timeout));
    ensure!(
        waited
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(nix::libc::ETIME))
            && ring.completion().next().is_none(),
        "a read of an empty room completed ({waited:?})"
    );
    let parked = io_wq_workers()?;
    ensure!(
        parked == 0,
        "the pending read parked {parked} io-wq worker thread(s)"
    );

    let message = b"via io_uring";
    let write = opcode::Write::new(
        Fd(writer.as_raw_fd()),
        message.as_ptr(),
        message.len() as u32,
    )
    .build()
    .user_data(2);
    // SAFETY: `message` is static and `writer` lives until the end.
    unsafe { ring.submission().push(&write)? };
    ring.submit_and_wait(2)?;
    let mut results: Vec<(u64, i32)> = ring
        .completion()
        .map(|c| (c.user_data(), c.result()))
        .collect();
    results.sort();
    let len = message.len() as i32;
    ensure!(
        results == [(1, len), (2, len)],
        "completions {results:?}, expected both of {len} bytes"
    );
    ensure!(
        &buf[..message.len()] == message,
        "the io_uring read got {:?}",
        &buf[..message.len()]
    );
    ensure!(
        io_wq_workers()? == 0,
        "io_uring started worker threads for kchat I/O"
    );
    Ok(())
}
