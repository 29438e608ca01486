//! Framed writes (`IOC_SET_WRITE_MODE`, `WRITE_FRAMED`): many messages of
//! their own sizes in one `write`, whole records only, and the errors of a
//! bad record. (The model-based test runs them in random sequences too.)

use crate::{
    client::{spec, TempRoom},
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
    io::{Read, Write},
    os::fd::AsFd,
    time::Instant,
};

pub const TESTS: &[Test] = &[
    (
        "writes::one_framed_write_sends_messages_of_their_own_sizes",
        one_framed_write_sends_messages_of_their_own_sizes,
    ),
    (
        "writes::a_framed_write_stores_whole_records_only",
        a_framed_write_stores_whole_records_only,
    ),
    (
        "writes::a_framed_write_stops_at_a_record_when_a_block_room_is_full",
        a_framed_write_stops_at_a_record_when_a_block_room_is_full,
    ),
    (
        "writes::a_relay_writes_a_batch_each_record_with_its_origin",
        a_relay_writes_a_batch_each_record_with_its_origin,
    ),
    (
        "writes::the_write_mode_refuses_bad_input",
        the_write_mode_refuses_bad_input,
    ),
    (
        "writes::bursts_arrive_whole_where_a_record_ends_at_the_rings_end",
        bursts_arrive_whole_where_a_record_ends_at_the_rings_end,
    ),
    (
        "writes::bursts_arrive_whole_in_order_and_stamped_through_a_small_block_room",
        bursts_arrive_whole_in_order_and_stamped_through_a_small_block_room,
    ),
    (
        "writes::a_block_room_evicts_only_for_the_messages_that_go_in",
        a_block_room_evicts_only_for_the_messages_that_go_in,
    ),
];

const FRAME: usize = size_of::<abi::WriteFrame>();

/// The records of `bodies`, as one framed write takes them.
fn records(bodies: &[&[u8]]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for body in bodies {
        kchat_client::push_record(&mut out, body).context("a record too long to frame")?;
    }
    Ok(out)
}

/// A record whose header says `len` and `flags`, with `body` after it.
fn raw_record(len: u32, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut out = len.to_ne_bytes().to_vec();
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(body);
    out
}

fn framed_writer(room: &TempRoom, nonblock: bool) -> Result<File> {
    let writer = if nonblock {
        room.open_write_nonblock()?
    } else {
        room.open_write()?
    };
    kchat_client::set_write_mode(&writer, abi::WRITE_FRAMED).context("IOC_SET_WRITE_MODE")?;
    Ok(writer)
}

fn write_raw(file: &mut File, bytes: &[u8]) -> Result<usize, Errno> {
    file.write(bytes)
        .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(0)))
}

/// Every message a packet-mode reader has, oldest first.
fn packets(reader: &mut File) -> Result<Vec<Vec<u8>>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(n) => got.push(buf[..n].to_vec()),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(got),
            Err(err) => bail!("reading packets: {err}"),
        }
    }
}

fn packet_reader(room: &TempRoom) -> Result<File> {
    let reader = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&reader, abi::READ_PACKET)?;
    Ok(reader)
}

fn one_framed_write_sends_messages_of_their_own_sizes() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("framed-sizes"))?;
    let mut reader = packet_reader(&room)?;
    let mut writer = framed_writer(&room, false)?;
    let max = abi::DEFAULT_MAX_MSG as usize;
    let bodies: Vec<Vec<u8>> = [1usize, 16, 999, 1024, max, 3]
        .iter()
        .enumerate()
        .map(|(i, &len)| (0..len).map(|j| (i * 31 + j * 7) as u8).collect())
        .collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let batch = records(&refs)?;
    let took = writer.write(&batch).context("a framed write")?;
    ensure!(
        took == batch.len(),
        "a framed write of {} bytes took {took}",
        batch.len()
    );
    let got = packets(&mut reader)?;
    ensure!(
        got == bodies,
        "a packet reader got messages of {:?} bytes, expected {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        bodies.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let info = room.control().info(&room.name)?;
    ensure!(
        info.msgs_in == bodies.len() as u64,
        "msgs_in {} after one write of {} records",
        info.msgs_in,
        bodies.len()
    );
    // The same bytes in plain mode are one message of all of them.
    kchat_client::set_write_mode(&writer, abi::WRITE_PLAIN)?;
    writer.write_all(&batch[..100])?;
    let got = packets(&mut reader)?;
    ensure!(
        got == [batch[..100].to_vec()],
        "plain mode again: {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    Ok(())
}

fn a_framed_write_stores_whole_records_only() -> Result<()> {
    module::ensure_loaded()?;
    let max_msg = 100;
    let room = TempRoom::create(abi::RoomSpec {
        max_msg,
        ..spec("framed-whole")
    })?;
    let mut reader = packet_reader(&room)?;
    let mut writer = framed_writer(&room, true)?;
    let good = records(&[b"one", b"two"])?;
    // Each bad record alone fails the write and stores nothing; after good
    // records it ends the write short, just before it. (A record cut short
    // is one the write ends inside: nothing follows it.)
    let bad: [(&str, Vec<u8>, Errno); 6] = [
        ("flags set", raw_record(1, 1, b"x"), Errno::EINVAL),
        ("an empty body", raw_record(0, 0, b""), Errno::EINVAL),
        (
            "a header cut short",
            3u32.to_ne_bytes().to_vec(),
            Errno::EINVAL,
        ),
        ("a body cut short", raw_record(5, 0, b"abc"), Errno::EINVAL),
        (
            "a body longer than max_msg",
            raw_record(max_msg + 1, 0, &vec![b'x'; max_msg as usize + 1]),
            Errno::EMSGSIZE,
        ),
        (
            "a length past the write",
            raw_record(u32::MAX, 0, b"x"),
            Errno::EINVAL,
        ),
    ];
    for (what, record, errno) in &bad {
        match write_raw(&mut writer, record) {
            Err(e) if e == *errno => {}
            other => bail!("a framed write of {what} alone: {other:?}, expected {errno}"),
        }
        let mut batch = good.clone();
        batch.extend_from_slice(record);
        if !what.contains("cut short") {
            batch.extend(records(&[b"never"])?);
        }
        let took = write_raw(&mut writer, &batch);
        ensure!(
            took == Ok(good.len()),
            "good records then {what}: the write took {took:?}, expected {} (the good ones)",
            good.len()
        );
        let got = packets(&mut reader)?;
        ensure!(
            got == [b"one".to_vec(), b"two".to_vec()],
            "after good records then {what} readers got {got:?}"
        );
    }
    let info = room.control().info(&room.name)?;
    ensure!(
        info.msgs_in == 2 * bad.len() as u64,
        "msgs_in {}: a bad record stored something",
        info.msgs_in
    );
    // A zero-length write does nothing, in this mode too.
    ensure!(
        write_raw(&mut writer, b"") == Ok(0),
        "an empty framed write"
    );
    Ok(())
}

fn a_framed_write_stops_at_a_record_when_a_block_room_is_full() -> Result<()> {
    module::ensure_loaded()?;
    let ring = abi::MIN_RING_BYTES;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: ring,
        max_msg: 200,
        policy: abi::POLICY_BLOCK,
        max_wait_ms: abi::MAX_WAIT_FOREVER,
        ..spec("framed-full")
    })?;
    let mut reader = packet_reader(&room)?;
    let mut writer = framed_writer(&room, true)?;
    // Sizes that vary, together far more than the ring holds.
    let bodies: Vec<Vec<u8>> = (0..80usize)
        .map(|i| vec![b'a' + (i % 26) as u8; 1 + (i * 37) % 200])
        .collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let batch = records(&refs)?;
    let took = write_raw(&mut writer, &batch).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Where it stopped must be a record boundary: the records it took.
    let mut at = 0;
    let mut stored = 0;
    while at < took {
        at += FRAME + bodies[stored].len();
        stored += 1;
    }
    ensure!(
        at == took && stored > 0 && stored < bodies.len(),
        "a full block room took {took} bytes of {}: not a record boundary, or all or nothing",
        batch.len()
    );
    ensure!(
        write_raw(&mut writer, &batch[took..]) == Err(Errno::EAGAIN),
        "the rest went in while the reader held the room"
    );
    let got = packets(&mut reader)?;
    ensure!(
        got == bodies[..stored],
        "the reader got {} messages, expected the {stored} records the write took",
        got.len()
    );
    // The reader made room: the rest goes on where the write stopped.
    let more = write_raw(&mut writer, &batch[took..]).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(more > 0, "nothing went in after the reader read");
    Ok(())
}

fn a_relay_writes_a_batch_each_record_with_its_origin() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("framed-relay"))?;
    let mut reader = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&reader, abi::READ_FRAMED_ORIGIN)?;
    let mut relay = room.open_write()?;
    kchat_client::set_relay(&relay)?;
    kchat_client::set_write_mode(&relay, abi::WRITE_FRAMED)?;
    let origin = |seq: u64, uid: u32| {
        let mut origin = abi::OriginHeader {
            node: abi::name_field("node-a").unwrap_or_default(),
            seq,
            time_ns: 1_000 + seq,
            pid: 42,
            uid,
            gid: uid,
            ..abi::OriginHeader::default()
        };
        origin.set_incarnation(0x1234_5678_9abc_def0);
        origin
    };
    let sent: [(abi::OriginHeader, &[u8]); 3] = [
        (origin(7, 1000), b"first"),
        (origin(8, 1001), b"a second, longer one"),
        (origin(9, 0), b"3"),
    ];
    let mut batch = Vec::new();
    for (from, payload) in &sent {
        kchat_client::push_record(&mut batch, &kchat_client::relay_frame(*from, payload))
            .context("framing a relay record")?;
    }
    let took = relay.write(&batch).context("a framed relay write")?;
    ensure!(took == batch.len(), "took {took} of {}", batch.len());
    let mut buf = vec![0u8; 4096];
    let n = reader.read(&mut buf)?;
    let frames = kchat_client::split_origin_frames(&buf[..n]).context("torn origin frames")?;
    ensure!(frames.len() == sent.len(), "{} frames", frames.len());
    for ((_, got_from, got), (from, payload)) in frames.iter().zip(&sent) {
        let want = abi::OriginHeader {
            flags: abi::ORIGIN_RELAYED,
            ..*from
        };
        ensure!(
            *got_from == want && got == payload,
            "record {}: {got_from:?} {got:?}",
            from.seq
        );
    }
    // A relay record is what one relay write would be: a bad header in the
    // second ends the write after the first.
    let mut bad = kchat_client::relay_frame(origin(10, 0), b"x");
    bad[4] = 1; // RelayHeader::flags
    let mut batch = Vec::new();
    kchat_client::push_record(&mut batch, &kchat_client::relay_frame(origin(10, 0), b"ok"))
        .context("framing")?;
    let first = batch.len();
    kchat_client::push_record(&mut batch, &bad).context("framing")?;
    ensure!(
        relay.write(&batch)? == first,
        "a bad relay record did not end the write short"
    );
    ensure!(
        write_raw(&mut relay, &batch[first..]) == Err(Errno::EINVAL),
        "a bad relay record alone"
    );
    Ok(())
}

fn the_write_mode_refuses_bad_input() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("framed-mode"))?;
    let read_only = room.open_read_nonblock()?;
    ensure!(
        kchat_client::set_write_mode(&read_only, abi::WRITE_FRAMED) == Err(Errno::EBADF),
        "a read-only fd took a write mode"
    );
    let writer = room.open_write()?;
    for mode in [2, 3, u32::MAX] {
        ensure!(
            kchat_client::set_write_mode(&writer, mode) == Err(Errno::EINVAL),
            "write mode {mode} was taken"
        );
    }
    // A refused mode changed nothing: the fd still writes plain messages.
    let mut reader = packet_reader(&room)?;
    let mut writer = writer;
    writer.write_all(b"plain")?;
    ensure!(
        packets(&mut reader)? == [b"plain".to_vec()],
        "a refused write mode changed the fd"
    );
    Ok(())
}

/// Every frame a framed reader gets until it has `count` messages, read as
/// they come (the reader is non-blocking; each wait is bounded).
fn frames_until(reader: &mut File, count: usize) -> Result<Vec<(abi::FrameHeader, Vec<u8>)>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let start = Instant::now();
    while got.len() < count {
        ensure!(
            start.elapsed() < crate::helper::PATIENCE,
            "the reader had {} of {count} messages after {:?}",
            got.len(),
            crate::helper::PATIENCE
        );
        match reader.read(&mut buf) {
            Ok(n) => {
                let frames = kchat_client::split_frames(&buf[..n])
                    .context("a framed read ended inside a frame")?;
                got.extend(
                    frames
                        .into_iter()
                        .map(|(header, body)| (header, body.to_vec())),
                );
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::from(1000u16)).context("polling the reader")?;
            }
            Err(err) => bail!("a framed read: {err}"),
        }
    }
    Ok(got)
}

/// A write of many small messages, plain or framed, goes in as batches
/// (one pass of the room lock places many). Through a `block` room whose
/// ring holds a few dozen of them, with a reader draining it meanwhile,
/// the reader must get every message of both writes whole, in order, with
/// consecutive sequence numbers, the writer's stamp and times that never
/// go back: whatever the batches, the waits for space between them and the
/// half-ring wake-ups. The smallest ring cuts batches at half of it (16
/// messages of cost 128); one of 64 KiB at their most (32).
fn bursts_arrive_whole_in_order_and_stamped_through_a_small_block_room() -> Result<()> {
    module::ensure_loaded()?;
    bursts_through(abi::MIN_RING_BYTES, 500)?;
    bursts_through(64 * 1024, 2000)
}

/// Writes of a few messages each, read back after every write: the ring's
/// records go round many times, at every phase these lengths make, so
/// some batch has a record that ends exactly at the ring's end and the
/// next one at its start without padding. A version of the write path
/// that filled the records a batch placed back to back with one copy
/// took that seam for back to back and failed the write with `EINVAL`
/// (the model test found it: a `drop` room of 4 KiB, 40-byte messages,
/// writes of 81 bytes, the 79th).
fn bursts_arrive_whole_where_a_record_ends_at_the_rings_end() -> Result<()> {
    module::ensure_loaded()?;
    let max_msg = 40usize;
    for write_len in [81usize, 121, 2 * max_msg + 17] {
        let room = TempRoom::create(abi::RoomSpec {
            ring_bytes: abi::MIN_RING_BYTES,
            max_msg: max_msg as u32,
            policy: abi::POLICY_DROP,
            ..spec(&format!("seam-{write_len}"))
        })?;
        let mut reader = room.open_read_nonblock()?;
        kchat_client::set_read_mode(&reader, abi::READ_FRAMED)?;
        let mut writer = room.open_write()?;
        let per_write = write_len.div_ceil(max_msg);
        let mut seq = None;
        for round in 0..400usize {
            let data: Vec<u8> = (0..write_len).map(|j| (round * 13 + j) as u8).collect();
            let took = writer
                .write(&data)
                .with_context(|| format!("write {round} of {write_len} bytes"))?;
            ensure!(
                took == write_len,
                "write {round} of {write_len} bytes took {took}"
            );
            let got = frames_until(&mut reader, per_write)?;
            ensure!(
                got.len() == per_write,
                "write {round}: {} messages read back, not {per_write}",
                got.len()
            );
            for (index, ((header, body), sent)) in got.iter().zip(data.chunks(max_msg)).enumerate()
            {
                ensure!(
                    body == sent && header.lost == 0,
                    "{write_len}-byte write {round}, message {index}: {} bytes (lost {}), not the \
                     {} sent",
                    body.len(),
                    header.lost,
                    sent.len()
                );
                let expected = *seq.get_or_insert(header.seq);
                ensure!(
                    header.seq == expected,
                    "message seq {} where {expected} was next",
                    header.seq
                );
                seq = Some(expected + 1);
            }
        }
    }
    Ok(())
}

/// Two writes of `count` messages each, one plain and one framed, through
/// a `block` room of `ring_bytes` (see the caller).
fn bursts_through(ring_bytes: u32, count: usize) -> Result<()> {
    let max_msg = 64usize;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes,
        max_msg: max_msg as u32,
        policy: abi::POLICY_BLOCK,
        max_wait_ms: abi::MAX_WAIT_FOREVER,
        ..spec(&format!("bursts-{ring_bytes}"))
    })?;
    let mut reader = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&reader, abi::READ_FRAMED)?;
    let plain: Vec<Vec<u8>> = (0..count)
        .map(|i| (0..max_msg).map(|j| (i * 7 + j) as u8).collect())
        .collect();
    let framed: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            (0..1 + (i * 37) % max_msg)
                .map(|j| (i * 11 + j) as u8)
                .collect()
        })
        .collect();
    let draining = std::thread::spawn(move || frames_until(&mut reader, 2 * count));
    let mut writer = room.open_write()?;
    let took = writer.write(&plain.concat()).context("one plain write")?;
    ensure!(
        took == count * max_msg,
        "a blocking plain write of {count} messages took {took} bytes"
    );
    kchat_client::set_write_mode(&writer, abi::WRITE_FRAMED).context("IOC_SET_WRITE_MODE")?;
    let refs: Vec<&[u8]> = framed.iter().map(Vec::as_slice).collect();
    let batch = records(&refs)?;
    let took = writer.write(&batch).context("one framed write")?;
    ensure!(
        took == batch.len(),
        "a blocking framed write of {count} records took {took} of {} bytes",
        batch.len()
    );
    let got = draining
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    ensure!(
        got.len() == 2 * count,
        "the reader got {} messages, expected {}",
        got.len(),
        2 * count
    );
    let pid = std::process::id();
    let first = got[0].0.seq;
    let mut time = 0;
    for (index, ((header, body), sent)) in got.iter().zip(plain.iter().chain(&framed)).enumerate() {
        ensure!(
            body == sent,
            "ring {ring_bytes}, message {index}: {} bytes, not the {} sent (or other bytes)",
            body.len(),
            sent.len()
        );
        ensure!(
            header.seq == first + index as u64 && header.lost == 0,
            "ring {ring_bytes}, message {index}: seq {} (first {first}), lost {}",
            header.seq,
            header.lost
        );
        ensure!(
            header.pid == pid && header.len as usize == sent.len(),
            "message {index}: stamp {header:?}, expected pid {pid}"
        );
        ensure!(
            header.time_ns >= time,
            "message {index}: time {} before the previous one's {time}",
            header.time_ns
        );
        time = header.time_ns;
    }
    Ok(())
}

/// A write of two messages into a full `block` room, where the first fits
/// once read records go and the second would need one the reader has not
/// read: the first goes in, having evicted the one record it needed, and
/// the second is refused (`EAGAIN`, a short write), having evicted
/// nothing, however the kernel batches them. (Batching once evicted for
/// the whole batch before finding the second could not go in: a record
/// every reader had read, but one `IOC_ROOM_INFO`, `lseek` and
/// `IOC_SEEK_SEQ` would still have shown.)
fn a_block_room_evicts_only_for_the_messages_that_go_in() -> Result<()> {
    module::ensure_loaded()?;
    let ring = abi::MIN_RING_BYTES as u64;
    let max_msg = 500usize;
    let overhead = abi::RECORD_OVERHEAD as usize;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: ring as u32,
        max_msg: max_msg as u32,
        policy: abi::POLICY_BLOCK,
        max_wait_ms: abi::MAX_WAIT_FOREVER,
        ..spec("evict-exact")
    })?;
    let mut reader = packet_reader(&room)?;
    let mut writer = room.open_write_nonblock()?;
    // Eight records of cost 500: 4,000 of the ring's 4,096 bytes.
    let small = 500 - overhead;
    for i in 0..8u8 {
        writer
            .write_all(&vec![i; small])
            .context("filling the room")?;
    }
    let before = room.control().info(&room.name)?;
    ensure!(
        before.ring_msgs == 8 && before.ring_used_bytes == 8 * 500,
        "after 8 records of cost 500: {} records, {} bytes",
        before.ring_msgs,
        before.ring_used_bytes
    );
    // The reader reads two: records 0 and 1 may go, 2 on may not.
    let mut buf = vec![0u8; max_msg];
    for _ in 0..2 {
        let got = reader
            .read(&mut buf)
            .context("reading one of the first two")?;
        ensure!(
            got == small,
            "a packet read of a {small}-byte message gave {got}"
        );
    }
    // Two messages of cost 564: the first fits once record 0 goes (3,500 +
    // 564); the second would need record 2 too.
    let took = write_raw(&mut writer, &vec![b'x'; 2 * max_msg]);
    ensure!(
        took == Ok(max_msg),
        "a write of two messages into the held room took {took:?}, expected {max_msg} (the first)"
    );
    let after = room.control().info(&room.name)?;
    ensure!(
        after.first_seq == before.first_seq + 1 && after.ring_msgs == 8,
        "the write evicted {} records for the one it stored (first_seq {} -> {}, {} records \
         retained): a refused message evicted what it would have needed",
        after.first_seq.wrapping_sub(before.first_seq),
        before.first_seq,
        after.first_seq,
        after.ring_msgs
    );
    ensure!(
        after.ring_used_bytes == 7 * 500 + (max_msg + overhead) as u64
            && after.ring_used_bytes <= ring,
        "{} bytes used after the write",
        after.ring_used_bytes
    );
    Ok(())
}
