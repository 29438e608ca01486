//! Mapped readers (`mmap` of a room fd, `kchat_client::mapped`): the ring
//! read in place shows what `read` shows, counts its losses exactly under a
//! racing writer, holds a `block` room's writers as a reader should, sees a
//! deleted room end, and cannot be written or mapped where its ids would
//! not be the reader's.

use crate::{
    client::{spec, Control, TempRoom},
    helper::{self, PATIENCE},
    module, Test,
};
use anyhow::{bail, ensure, Context, Result};
use kchat_client::mapped::{MappedRoom, Next};
use kchat_uapi::abi;
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout},
    sys::mman::{mmap, mprotect, munmap, MapFlags, ProtFlags},
};
use std::{
    fs::File,
    io::{Read, Write},
    num::NonZeroUsize,
    os::fd::AsFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = &[
    (
        "mapped::a_mapped_reader_sees_what_read_sees",
        a_mapped_reader_sees_what_read_sees,
    ),
    (
        "mapped::losses_are_exact_under_a_racing_writer",
        losses_are_exact_under_a_racing_writer,
    ),
    (
        "mapped::a_block_room_is_lossless_with_mapped_readers",
        a_block_room_is_lossless_with_mapped_readers,
    ),
    (
        "mapped::a_mapped_reader_of_a_deleted_room_sees_the_end",
        a_mapped_reader_of_a_deleted_room_sees_the_end,
    ),
    (
        "mapped::mappings_are_read_only_and_refused_where_ids_would_not_be_the_readers",
        mappings_are_read_only_and_refused_where_ids_would_not_be_the_readers,
    ),
];

/// Message `n`: its number, then bytes derived from it, of a length that
/// varies with it (so records wrap at every offset). Wrapping arithmetic
/// throughout: `check` calls this with whatever number a torn payload
/// starts with, and garbage must make a mismatch, not a panic.
fn message(n: u64, max: usize) -> Vec<u8> {
    let len = 8 + (n as usize).wrapping_mul(37) % (max - 8);
    let mut bytes = n.to_le_bytes().to_vec();
    bytes.extend((8..len).map(|i| (n as usize).wrapping_mul(31).wrapping_add(i) as u8));
    bytes
}

/// The number of an intact message, `None` if its bytes are not
/// `message(n)`'s. The payload may be torn (a mapped reader looks at bytes
/// the writer may be reusing): any bytes at all give an answer.
fn check(payload: &[u8], max: usize) -> Option<u64> {
    let n = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    (payload == message(n, max).as_slice()).then_some(n)
}

fn read_all_framed(reader: &mut File) -> Result<Vec<(abi::FrameHeader, Vec<u8>)>> {
    let mut buf = vec![0u8; 1 << 16];
    let mut frames = Vec::new();
    loop {
        match reader.read(&mut buf) {
            Ok(n) => {
                let split = kchat_client::split_frames(&buf[..n]).context("torn frames")?;
                frames.extend(split.into_iter().map(|(h, p)| (h, p.to_vec())));
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(frames),
            Err(err) => return Err(err.into()),
        }
    }
}

/// Reads every message the mapped reader has now, as owned copies.
fn drain(mapped: &mut MappedRoom) -> Result<Vec<kchat_client::mapped::OwnedMessage>> {
    let mut out = Vec::new();
    loop {
        match mapped.read(|m| m.to_owned())? {
            Next::Message(m) => out.push(m),
            Next::Empty | Next::Ended => return Ok(out),
        }
    }
}

fn a_mapped_reader_sees_what_read_sees() -> Result<()> {
    module::ensure_loaded()?;
    let max = 700usize;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: max as u32,
        ..spec("mapsame")
    })?;
    let mut framed = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&framed, abi::READ_FRAMED)?;
    let mut mapped = MappedRoom::map(room.open_read()?)?;
    let mut writer = room.open_write()?;
    let mut relay = room.open_write()?;
    kchat_client::set_relay(&relay)?;
    let origin = abi::OriginHeader {
        node: abi::name_field("elsewhere").context("node name")?,
        seq: 77,
        time_ns: 1_234,
        pid: 4,
        uid: 5,
        gid: 6,
        ..abi::OriginHeader::default()
    };
    // Many times around the smallest ring, each message read by both
    // before the next is written.
    for n in 0..400u64 {
        let payload = message(n, max);
        if n % 50 == 7 {
            relay.write_all(&kchat_client::relay_frame(origin, &payload))?;
        } else {
            writer.write_all(&payload)?;
        }
        let frames = read_all_framed(&mut framed)?;
        let seen = drain(&mut mapped)?;
        ensure!(
            frames.len() == 1 && seen.len() == 1,
            "message {n}: read() got {} frames, the mapping {} messages",
            frames.len(),
            seen.len()
        );
        let (header, data) = &frames[0];
        let m = &seen[0];
        ensure!(
            (m.seq, m.time_ns, m.pid, m.uid, m.gid, m.lost)
                == (
                    header.seq,
                    header.time_ns,
                    header.pid,
                    header.uid,
                    header.gid,
                    0
                ),
            "message {n}: the mapping says seq {} time {} pid {} uid {} gid {} lost {}, \
             read() {header:?}",
            m.seq,
            m.time_ns,
            m.pid,
            m.uid,
            m.gid,
            m.lost
        );
        ensure!(
            m.payload == *data && *data == payload,
            "message {n}: payloads differ"
        );
        let expected_origin = (n % 50 == 7).then_some(abi::OriginHeader {
            flags: abi::ORIGIN_RELAYED,
            ..origin
        });
        ensure!(
            m.origin == expected_origin,
            "message {n}: origin {:?}, not {expected_origin:?}",
            m.origin
        );
    }
    ensure!(
        m_pid_is_ours(&mut mapped, &mut writer)?,
        "the mapping's pid is not this process's"
    );
    Ok(())
}

/// One more message: the mapping stamps it with this process's pid (the
/// suite runs in the initial namespaces).
fn m_pid_is_ours(mapped: &mut MappedRoom, writer: &mut File) -> Result<bool> {
    writer.write_all(b"me")?;
    let seen = drain(mapped)?;
    Ok(seen.len() == 1 && seen[0].pid == std::process::id())
}

fn losses_are_exact_under_a_racing_writer() -> Result<()> {
    module::ensure_loaded()?;
    let max = 300usize;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: 16 * 1024,
        max_msg: max as u32,
        ..spec("maprace")
    })?;
    let mut mapped = MappedRoom::map(room.open_read()?)?;
    let total = 20_000u64;
    // At most this many messages fit the ring: waiting until the writer is
    // that far ahead guarantees the reader was lapped.
    let lap = u64::from(16 * 1024 / abi::RECORD_OVERHEAD);
    let written = Arc::new(AtomicU64::new(0));
    let mut writer = room.open_write()?;
    let counter = written.clone();
    let writing = thread::spawn(move || -> Result<()> {
        for n in 0..total {
            writer.write_all(&message(n, max))?;
            counter.store(n + 1, Ordering::Release);
        }
        Ok(())
    });
    let until = |n: u64| -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while written.load(Ordering::Acquire) < n.min(total) {
            ensure!(
                Instant::now() < deadline,
                "the writer stopped at {}",
                written.load(Ordering::Acquire)
            );
            thread::yield_now();
        }
        Ok(())
    };
    let (mut delivered, mut lost, mut next_expected) = (0u64, 0u64, 0u64);
    let mut held: Option<u64> = None;
    let deadline = Instant::now() + PATIENCE;
    loop {
        ensure!(
            Instant::now() < deadline,
            "reading {total} messages took over {PATIENCE:?}"
        );
        let position = mapped.position();
        let outcome = mapped.read(|m| {
            // Once, hold a message until the writer has certainly reused
            // its bytes: the check after the read must count it lost.
            if held.is_none() && m.seq >= 5_000 && m.seq + 2 * lap < total {
                held = Some(m.seq);
                let _ = until(m.seq + 2 * lap);
            }
            (m.seq, m.lost, check(m.payload, max))
        })?;
        match outcome {
            Next::Message((seq, lost_before, intact)) => {
                let Some(n) = intact else {
                    bail!("message {seq} came out torn, yet the check after reading it passed");
                };
                ensure!(n == seq, "message {n} came as seq {seq}");
                ensure!(
                    held != Some(seq),
                    "message {seq} was held while the writer lapped it, yet it was delivered"
                );
                ensure!(
                    n == next_expected + lost_before,
                    "after {next_expected} came {n} with {lost_before} lost: the count is off"
                );
                delivered += 1;
                lost += lost_before;
                next_expected = n + 1;
                // Now and then fall a lap behind the writer.
                if n % 3_000 == 0 {
                    until(n + 2 * lap)?;
                }
            }
            Next::Empty if written.load(Ordering::Acquire) == total && position == total => break,
            Next::Empty => thread::yield_now(),
            Next::Ended => bail!("the room ended early"),
        }
        if mapped.position() == total {
            break;
        }
    }
    writing
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    ensure!(held.is_some(), "the test never held a message across a lap");
    ensure!(
        delivered + lost == total,
        "{delivered} delivered + {lost} lost != {total} written"
    );
    ensure!(
        lost > 0,
        "the reader was never lapped: the test proved nothing"
    );
    eprint!("mapped: {delivered} delivered, {lost} lost of {total} ... ");
    Ok(())
}

fn a_block_room_is_lossless_with_mapped_readers() -> Result<()> {
    module::ensure_loaded()?;
    let max = 500usize;
    let room = TempRoom::create(abi::RoomSpec {
        policy: abi::POLICY_BLOCK,
        ring_bytes: 8 * 1024,
        max_msg: max as u32,
        max_wait_ms: abi::MAX_WAIT_FOREVER,
        ..spec("mapblock")
    })?;
    let mut readers = [
        MappedRoom::map(room.open_read()?)?,
        MappedRoom::map(room.open_read()?)?,
    ];
    let total = 3_000u64;
    let mut writer = room.open_write()?;
    let writing = thread::spawn(move || -> Result<()> {
        for n in 0..total {
            writer.write_all(&message(n, max))?;
        }
        Ok(())
    });
    let deadline = Instant::now() + PATIENCE;
    let mut next = [0u64; 2];
    while next.iter().any(|n| *n < total) {
        ensure!(
            Instant::now() < deadline,
            "block room readers stuck at {next:?} of {total}"
        );
        for (reader, next) in readers.iter_mut().zip(next.iter_mut()) {
            let mut read = 0;
            while let Next::Message((seq, lost, intact)) =
                reader.read(|m| (m.seq, m.lost, check(m.payload, max)))?
            {
                ensure!(lost == 0, "a block room lost {lost} before {seq}");
                ensure!(
                    intact == Some(*next),
                    "expected message {next}, got {intact:?} at {seq}"
                );
                *next += 1;
                read += 1;
            }
            if read == 0 && *next < total {
                reader.wait(Duration::from_millis(100))?;
            } else {
                reader.report()?;
            }
        }
    }
    writing
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    let info = Control::open()?.info("mapblock")?;
    ensure!(info.lost == 0, "the room counted {} lost", info.lost);
    Ok(())
}

fn a_mapped_reader_of_a_deleted_room_sees_the_end() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("mapgone"))?;
    let mut mapped = MappedRoom::map(room.open_read()?)?;
    let mut writer = room.open_write()?;
    for n in 0..3 {
        writer.write_all(format!("last {n}").as_bytes())?;
    }
    room.delete().context("deleting the room")?;
    // Poll says so, and the mapping still holds what was retained.
    let mut fds = [PollFd::new(mapped.file().as_fd(), PollFlags::POLLIN)];
    nix::poll::poll(&mut fds, PollTimeout::try_from(PATIENCE)?)?;
    let revents = fds[0].revents().unwrap_or(PollFlags::empty());
    ensure!(
        revents.contains(PollFlags::POLLHUP),
        "poll on a mapped reader of a deleted room gave {revents:?}"
    );
    let seen = drain(&mut mapped)?;
    let texts: Vec<_> = seen
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    ensure!(texts == ["last 0", "last 1", "last 2"], "read {texts:?}");
    ensure!(
        mapped.read(|_| ())? == Next::Ended,
        "the mapped reader did not see the end"
    );
    Ok(())
}

fn mappings_are_read_only_and_refused_where_ids_would_not_be_the_readers() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("mapro"))?;
    let reader = room.open_read()?;
    let page = NonZeroUsize::new(4096).context("page")?;
    let try_map = |file: &File, len: NonZeroUsize, prot: ProtFlags, offset: i64| {
        // SAFETY: a new mapping at an address the kernel picks, unmapped at
        // once.
        unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, file, offset) }
            .and_then(|ptr| unsafe { munmap(ptr, len.get()) })
    };
    // Even through a read-write fd (a read-only one the VFS refuses first).
    let both = crate::client::open(&room.path(), true, true, false)?;
    let writable = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    ensure!(
        try_map(&both, page, writable, 0) == Err(Errno::EPERM),
        "a writable mapping was not refused with EPERM"
    );
    ensure!(
        try_map(&reader, page, writable, 0) == Err(Errno::EACCES),
        "a writable mapping of a read-only fd was not refused"
    );
    ensure!(
        try_map(&reader, page, ProtFlags::PROT_READ, 4096) == Err(Errno::EINVAL),
        "a mapping from offset 4096 was not refused with EINVAL"
    );
    let huge = NonZeroUsize::new(1 << 30).context("size")?;
    ensure!(
        try_map(&reader, huge, ProtFlags::PROT_READ, 0) == Err(Errno::EINVAL),
        "a mapping past the ring was not refused with EINVAL"
    );
    ensure!(
        try_map(&room.open_write()?, page, ProtFlags::PROT_READ, 0) == Err(Errno::EACCES),
        "a write-only fd was mapped"
    );
    // A read-only mapping cannot be made writable later.
    // SAFETY: as above; unmapped before returning.
    let ptr = unsafe {
        mmap(
            None,
            page,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            &reader,
            0,
        )
    }?;
    // SAFETY: `ptr` is the page mapped just above.
    let upgraded = unsafe {
        mprotect(
            ptr,
            page.get(),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        )
    };
    // SAFETY: mapped above.
    unsafe { munmap(ptr, page.get()) }?;
    ensure!(
        upgraded == Err(Errno::EACCES),
        "mprotect made the ring writable: {upgraded:?}"
    );
    // Elsewhere the ids in the ring would not be the reader's: refused,
    // and read() (tested in trust::) still works there.
    for (wrapper, what) in [
        (
            &["unshare", "--user", "--map-root-user", "--"][..],
            "its own user namespace",
        ),
        (
            &["unshare", "--pid", "--fork", "--"][..],
            "its own pid namespace",
        ),
    ] {
        let said = helper::map_under(wrapper, &room.path())?;
        ensure!(
            said == "EPERM",
            "a reader in {what} mapping the room: {said}"
        );
    }
    ensure!(
        helper::map_under(&["env"], &room.path())? == "ok",
        "the mapping helper fails even in the initial namespaces"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapped reader lends bytes the writer may be reusing: whatever a
    /// torn payload holds, `check` answers (here, on the host, in a debug
    /// build, where overflow panics).
    #[test]
    fn a_torn_payload_is_a_mismatch_not_a_panic() {
        for first in [u64::MAX, u64::MAX / 3, 1 << 63, 0x0123_4567_89ab_cdef] {
            let mut torn = first.to_le_bytes().to_vec();
            torn.extend([0xa5; 100]);
            assert_eq!(check(&torn, 300), None, "{first:#x}");
        }
        assert_eq!(check(&[1, 2, 3], 300), None);
        for n in [0, 1, 12_345, u64::MAX / 3, u64::MAX] {
            assert_eq!(check(&message(n, 300), 300), Some(n));
        }
    }
}
