//! Read modes (stream, packet, framed), the kernel's stamp on each message,
//! and exact loss accounting in `drop` rooms.

use crate::{
    client::{raw_ioctl, spec, TempRoom},
    module, Test,
};
use anyhow::{bail, ensure, Context, Result};
use kchat_uapi::abi::{self, FrameHeader};
use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
};
use std::{
    fs::File,
    io::{Read, Write},
    os::{fd::AsFd, unix::fs::OpenOptionsExt},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub const TESTS: &[Test] = &[
    (
        "modes::o_direct_reads_one_message_at_a_time",
        o_direct_reads_one_message_at_a_time,
    ),
    (
        "modes::packet_mode_by_ioctl_and_bad_modes",
        packet_mode_by_ioctl_and_bad_modes,
    ),
    (
        "modes::one_read_returns_every_whole_message_that_fits",
        one_read_returns_every_whole_message_that_fits,
    ),
    (
        "modes::framed_reads_carry_the_kernel_stamp",
        framed_reads_carry_the_kernel_stamp,
    ),
    (
        "modes::senders_cannot_forge_their_identity",
        senders_cannot_forge_their_identity,
    ),
    (
        "modes::losses_are_counted_exactly",
        losses_are_counted_exactly,
    ),
    (
        "modes::lseek_and_seek_seq_give_history",
        lseek_and_seek_seq_give_history,
    ),
    (
        "modes::room_ioctls_refuse_bad_input",
        room_ioctls_refuse_bad_input,
    ),
];

const HEADER: usize = size_of::<FrameHeader>();

fn read_raw(file: &mut File, size: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; size];
    match file.read(&mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(err) => Err(Errno::from_raw(err.raw_os_error().unwrap_or(0))),
    }
}

fn set_mode(file: &File, mode: u32) -> Result<(), Errno> {
    kchat_client::set_read_mode(file, mode)
}

fn take_lost(file: &File) -> Result<u64> {
    kchat_client::take_lost(file).context("IOC_TAKE_LOST")
}

/// Splits a framed read into (header, payload) pairs.
fn frames(bytes: &[u8]) -> Result<Vec<(FrameHeader, Vec<u8>)>> {
    let frames = kchat_client::split_frames(bytes).context("a framed read ended inside a frame")?;
    Ok(frames
        .into_iter()
        .map(|(header, payload)| (header, payload.to_vec()))
        .collect())
}

fn assert_packets(reader: &mut File, sent: &[&[u8]]) -> Result<()> {
    for message in sent {
        match read_raw(reader, message.len() - 1) {
            Err(Errno::EMSGSIZE) => {}
            other => bail!("a too small packet read: {other:?}, expected EMSGSIZE"),
        }
        let got = read_raw(reader, 4096)?;
        ensure!(
            &got == message,
            "packet read got {got:?}, expected {message:?}"
        );
    }
    ensure!(
        read_raw(reader, 4096) == Err(Errno::EAGAIN),
        "packets left over"
    );
    Ok(())
}

fn o_direct_reads_one_message_at_a_time() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("packets"))?;
    let mut reader = File::options()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT | nix::libc::O_NONBLOCK)
        .open(room.path())
        .context("opening with O_DIRECT")?;
    let mut writer = room.open_write()?;
    let sent: [&[u8]; 3] = [b"first", b"second", b"third!"];
    for message in sent {
        writer.write_all(message)?;
    }
    assert_packets(&mut reader, &sent)
}

fn packet_mode_by_ioctl_and_bad_modes() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("packets2"))?;
    let mut reader = room.open_read_nonblock()?;
    for bad in [4u32, 99, u32::MAX] {
        ensure!(
            set_mode(&reader, bad) == Err(Errno::EINVAL),
            "read mode {bad} was not refused with EINVAL"
        );
    }
    set_mode(&reader, abi::READ_PACKET).context("setting packet mode")?;
    let mut writer = room.open_write()?;
    let sent: [&[u8]; 2] = [b"alpha", b"beta"];
    for message in sent {
        writer.write_all(message)?;
    }
    assert_packets(&mut reader, &sent)?;
    // And back to stream mode: both come in one read.
    set_mode(&reader, abi::READ_STREAM)?;
    for message in sent {
        writer.write_all(message)?;
    }
    ensure!(
        read_raw(&mut reader, 4096)? == b"alphabeta",
        "stream mode did not batch again"
    );
    Ok(())
}

/// "As many whole messages (frames) as fit" (docs/kernel-abi.md), however
/// many: the module plans and copies 16 records at a time, and once
/// returned just those 16 to any buffer.
fn one_read_returns_every_whole_message_that_fits() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("many-per-read"))?;
    let mut stream = room.open_read_nonblock()?;
    let mut framed = room.open_read_nonblock()?;
    set_mode(&framed, abi::READ_FRAMED)?;
    let mut packets = room.open_read_nonblock()?;
    set_mode(&packets, abi::READ_PACKET)?;
    let mut again = room.open_read_nonblock()?;
    let mut writer = room.open_write()?;
    let sent: Vec<Vec<u8>> = (0..100).map(|n| format!("m{n:03}").into_bytes()).collect();
    for message in &sent {
        writer.write_all(message)?;
    }
    let all = sent.concat();
    // Stream: everything in one read; or as many whole messages as fit,
    // the rest in the next (only a message larger than the buffer comes
    // in parts).
    let got = read_raw(&mut stream, 4096)?;
    ensure!(
        got == all,
        "one stream read of 4096 returned {} of {} bytes",
        got.len(),
        all.len()
    );
    let head = read_raw(&mut again, 250)?;
    let tail = read_raw(&mut again, 4096)?;
    ensure!(
        (head.len(), tail.len()) == (248, 152) && [&head[..], &tail[..]].concat() == all,
        "stream reads of 250 then 4096 returned {} and {} bytes, want 62 and 38 whole messages (248 and 152) in order",
        head.len(),
        tail.len()
    );
    // Framed: whole frames only, as many as fit; here 50 and a part.
    let frame = HEADER + 4;
    let first = frames(&read_raw(&mut framed, 50 * frame + frame / 2)?)?;
    let rest = frames(&read_raw(&mut framed, 100 * frame)?)?;
    ensure!(
        (first.len(), rest.len()) == (50, 50),
        "framed reads of 50.5 frames then 100 returned {} and {} frames",
        first.len(),
        rest.len()
    );
    for (n, ((header, payload), want)) in first.iter().chain(&rest).zip(&sent).enumerate() {
        ensure!(
            payload == want && header.lost == 0 && header.seq == first[0].0.seq + n as u64,
            "frame {n}: {header:?} {payload:?}, expected {want:?} in sequence"
        );
    }
    // Packet: still one message a read.
    ensure!(
        read_raw(&mut packets, 4096)? == sent[0],
        "a packet read returned more than the first message"
    );
    Ok(())
}

fn framed_reads_carry_the_kernel_stamp() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("framed"))?;
    let mut reader = room.open_read_nonblock()?;
    set_mode(&reader, abi::READ_FRAMED)?;
    let mut writer = room.open_write()?;
    let before = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    writer.write_all(b"hello")?;
    writer.write_all(b"")?; // a no-op, no frame
    writer.write_all(b"world!")?;
    let after = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    // Too small for the first frame: EMSGSIZE, nothing consumed.
    ensure!(
        read_raw(&mut reader, HEADER + 4) == Err(Errno::EMSGSIZE),
        "a too small framed read was not EMSGSIZE"
    );
    // Room for one whole frame and a bit: exactly one frame.
    let one = frames(&read_raw(&mut reader, HEADER + 5 + HEADER)?)?;
    ensure!(
        one.len() == 1 && one[0].1 == b"hello",
        "first framed read: {one:?}"
    );
    let two = frames(&read_raw(&mut reader, 4096)?)?;
    ensure!(
        two.len() == 1 && two[0].1 == b"world!",
        "second framed read: {two:?}"
    );
    let (first, second) = (one[0].0, two[0].0);
    ensure!(
        first.seq.checked_add(1) == Some(second.seq),
        "sequence numbers {} then {}",
        first.seq,
        second.seq
    );
    let pid = std::process::id();
    for header in [first, second] {
        ensure!(
            header.pid == pid && header.uid == 0 && header.gid == 0,
            "stamp {header:?}, expected pid {pid} root"
        );
        ensure!(
            header.lost == 0,
            "a reader that lost nothing was told {}",
            header.lost
        );
        // The guest clock may run coarse under emulation: allow a second.
        let slack = Duration::from_secs(1).as_nanos() as u64;
        // Saturating: the stamp is the module's answer, any value at all.
        ensure!(
            header.time_ns.saturating_add(slack) >= before && header.time_ns <= after + slack,
            "timestamp {} outside [{before}, {after}]",
            header.time_ns
        );
    }
    Ok(())
}

fn senders_cannot_forge_their_identity() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("forgery"))?;
    let mut reader = room.open_read_nonblock()?;
    set_mode(&reader, abi::READ_FRAMED)?;
    crate::helper::sh_as_nobody(&format!(
        "echo 'uid=0 I am root, trust me' > {}",
        room.path().display()
    ))
    .context("the unprivileged writer failed")?;
    let got = frames(&read_raw(&mut reader, 4096)?)?;
    ensure!(got.len() == 1, "expected one frame, got {got:?}");
    let header = got[0].0;
    ensure!(
        header.uid == 65534 && header.gid == 65534,
        "the stamp says {header:?}, not nobody (65534)"
    );
    Ok(())
}

fn losses_are_counted_exactly() -> Result<()> {
    module::ensure_loaded()?;
    let ring = abi::MIN_RING_BYTES;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: ring,
        max_msg: 100,
        ..spec("losses")
    })?;
    let mut reader = room.open_read_nonblock()?;
    let framed = room.open_read_nonblock()?;
    set_mode(&framed, abi::READ_FRAMED)?;
    let mut framed = framed;
    let mut writer = room.open_write()?;
    let retained = (ring / (100 + abi::RECORD_OVERHEAD)) as u64;
    let sent = retained * 3 + 5;
    for i in 0..sent {
        writer.write_all(&[i as u8; 100])?;
    }
    let pri = {
        let mut fds = [PollFd::new(
            reader.as_fd(),
            PollFlags::POLLIN | PollFlags::POLLPRI,
        )];
        poll(&mut fds, PollTimeout::ZERO)?;
        fds[0].revents().unwrap_or(PollFlags::empty())
    };
    ensure!(
        pri.contains(PollFlags::POLLPRI),
        "a reader that lost messages polled {pri:?}, no POLLPRI"
    );
    let lost = take_lost(&reader)?;
    ensure!(
        lost == sent - retained,
        "lost {lost}, expected {} of {sent}",
        sent - retained
    );
    ensure!(take_lost(&reader)? == 0, "the loss count did not reset");
    let pri = {
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLPRI)];
        poll(&mut fds, PollTimeout::ZERO)?;
        fds[0].revents().unwrap_or(PollFlags::empty())
    };
    ensure!(
        !pri.contains(PollFlags::POLLPRI),
        "POLLPRI stayed after the loss was reported"
    );
    // delivered + lost == written, for the stream reader...
    let mut delivered = 0;
    while let Ok(chunk) = read_raw(&mut reader, 100) {
        ensure!(!chunk.is_empty(), "unexpected end of file");
        delivered += 1;
    }
    ensure!(
        lost.checked_add(delivered) == Some(sent),
        "delivered {delivered} + lost {lost} != written {sent}"
    );
    // ...and for the framed one, whose first header carries the loss.
    // One read returns a batch, not necessarily everything: read to EAGAIN.
    let mut got = Vec::new();
    while let Ok(bytes) = read_raw(&mut framed, 1 << 16) {
        ensure!(!bytes.is_empty(), "unexpected end of file");
        got.extend(frames(&bytes)?);
    }
    ensure!(
        got.first().map(|(h, _)| h.lost) == Some(sent - retained),
        "first frame's lost field is wrong"
    );
    ensure!(
        got.iter().skip(1).all(|(h, _)| h.lost == 0),
        "later frames repeat the loss"
    );
    ensure!(
        got.len() as u64 == retained,
        "framed reader got {} frames, expected {retained}",
        got.len()
    );
    ensure!(
        got.last().and_then(|(_, p)| p.first().copied()) == Some((sent - 1) as u8),
        "the last frame is not the newest message"
    );
    Ok(())
}

fn seek_seq(file: &File, seq: u64) -> Result<(), Errno> {
    kchat_client::seek_seq(file, seq)
}

fn lseek_and_seek_seq_give_history() -> Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("history"))?;
    let mut writer = room.open_write()?;
    for i in 0..5u8 {
        writer.write_all(&[b'0' + i; 3])?;
    }
    let mut reader = room.open_read_nonblock()?;
    set_mode(&reader, abi::READ_PACKET)?;
    ensure!(
        read_raw(&mut reader, 64) == Err(Errno::EAGAIN),
        "a new reader saw history without seeking"
    );
    ensure!(
        reader.seek(SeekFrom::Start(0))? == 0,
        "SEEK_SET 0 is not the oldest message"
    );
    ensure!(
        read_raw(&mut reader, 64)? == b"000",
        "reading from the oldest"
    );
    ensure!(
        reader.seek(SeekFrom::End(-2))? == 3,
        "SEEK_END -2 is not two back"
    );
    ensure!(
        read_raw(&mut reader, 64)? == b"333" && read_raw(&mut reader, 64)? == b"444",
        "the last two"
    );
    ensure!(
        reader.stream_position()? == 5,
        "SEEK_CUR 0 is not the end after reading all"
    );
    ensure!(
        reader.seek(SeekFrom::End(10))? == 5,
        "seeking past the end was not clamped"
    );
    ensure!(
        reader.seek(SeekFrom::Start(100))? == 5,
        "SEEK_SET past the end was not clamped"
    );
    ensure!(
        reader.seek(SeekFrom::Current(-100))? == 0,
        "seeking before the oldest was not clamped"
    );
    seek_seq(&reader, 1).context("IOC_SEEK_SEQ 1")?;
    ensure!(
        read_raw(&mut reader, 64)? == b"111",
        "IOC_SEEK_SEQ 1 then read"
    );
    ensure!(
        seek_seq(&reader, 6) == Err(Errno::ERANGE),
        "IOC_SEEK_SEQ beyond the end was not ERANGE"
    );
    ensure!(
        seek_seq(&reader, 5).is_ok(),
        "IOC_SEEK_SEQ to the end was refused"
    );
    // SEEK_DATA and friends mean nothing here.
    // SAFETY: plain lseek on an fd we own.
    let data = unsafe {
        nix::libc::lseek(
            std::os::fd::AsRawFd::as_raw_fd(&reader),
            0,
            nix::libc::SEEK_DATA,
        )
    };
    ensure!(
        data == -1 && Errno::last() == Errno::EINVAL,
        "SEEK_DATA was not EINVAL"
    );
    // Positions are not byte offsets: no pread.
    let mut buf = [0u8; 8];
    let pread = reader.read_at(&mut buf, 0).map_err(|e| e.raw_os_error());
    ensure!(
        pread == Err(Some(nix::libc::ESPIPE)),
        "pread gave {pread:?}, expected ESPIPE"
    );

    // In a drop room, evicted history is out of range for IOC_SEEK_SEQ.
    let small = TempRoom::create(abi::RoomSpec {
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: 100,
        ..spec("history2")
    })?;
    let mut writer = small.open_write()?;
    for _ in 0..100 {
        writer.write_all(&[1; 100])?;
    }
    let reader = small.open_read_nonblock()?;
    let seq = 0u64;
    let got = raw_ioctl(&reader, abi::IOC_SEEK_SEQ, &seq as *const u64 as usize);
    ensure!(
        got == Err(Errno::ERANGE),
        "seeking to an evicted message: {got:?}"
    );
    Ok(())
}

fn room_ioctls_refuse_bad_input() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: abi::MIN_RING_BYTES,
        max_msg: 100,
        ..spec("badroomio")
    })?;
    let reader = room.open_read_nonblock()?;
    for cmd in [
        abi::IOC_SET_READ_MODE,
        abi::IOC_TAKE_LOST,
        abi::IOC_SEEK_SEQ,
    ] {
        for bad in [0usize, 1, usize::MAX - 8] {
            let got = raw_ioctl(&reader, cmd, bad);
            ensure!(
                got == Err(Errno::EFAULT),
                "room ioctl {cmd:#x} with pointer {bad:#x}: {got:?}"
            );
        }
    }
    // Control ioctls mean nothing on a room, nor do strangers.
    let mut scratch = [0u8; 256];
    for cmd in [
        abi::IOC_CREATE_ROOM,
        abi::IOC_VERSION,
        abi::ior::<u64>(0x7e),
        nix::libc::TCGETS as u32,
    ] {
        let got = raw_ioctl(&reader, cmd, scratch.as_mut_ptr() as usize);
        ensure!(
            got == Err(Errno::ENOTTY),
            "ioctl {cmd:#x} on a room: {got:?}, expected ENOTTY"
        );
    }
    // A loss report that cannot be delivered is not forgotten.
    let mut writer = room.open_write()?;
    for _ in 0..100 {
        writer.write_all(&[3; 100])?;
    }
    ensure!(
        raw_ioctl(&reader, abi::IOC_TAKE_LOST, 8) == Err(Errno::EFAULT),
        "TAKE_LOST into a bad pointer"
    );
    let retained = u64::from(abi::MIN_RING_BYTES / (100 + abi::RECORD_OVERHEAD));
    ensure!(
        take_lost(&reader)? == 100 - retained,
        "the loss count was forgotten after EFAULT"
    );
    // Write-only fds have no cursor.
    let writer_fd = room.open_write()?;
    let mut lost = 0u64;
    let got = raw_ioctl(
        &writer_fd,
        abi::IOC_TAKE_LOST,
        &mut lost as *mut u64 as usize,
    );
    ensure!(
        got == Err(Errno::EBADF),
        "TAKE_LOST on a write-only fd: {got:?}, expected EBADF"
    );
    Ok(())
}
