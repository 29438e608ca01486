//! Relayed messages (the kernel side of rooms across machines): a relay fd
//! that only the control plane may make, relay frames that state an origin,
//! and readers that can always tell a relayed message from a local one.

use crate::{
    client::{raw_ioctl, spec, TempRoom},
    helper, module, Test,
};
use anyhow::{ensure, Context, Result};
use kchat_uapi::abi;
use nix::errno::Errno;
use std::{
    io::{ErrorKind, Read, Write},
    os::fd::AsFd,
};

pub const TESTS: &[Test] = &[
    (
        "relay::only_the_control_plane_may_relay",
        only_the_control_plane_may_relay,
    ),
    (
        "relay::relayed_messages_say_where_they_came_from",
        relayed_messages_say_where_they_came_from,
    ),
    (
        "relay::bad_relay_frames_store_nothing",
        bad_relay_frames_store_nothing,
    ),
    (
        "relay::the_incarnation_travels_in_every_origin_view",
        the_incarnation_travels_in_every_origin_view,
    ),
    (
        "relay::a_room_created_again_has_a_new_incarnation",
        a_room_created_again_has_a_new_incarnation,
    ),
];

/// An incarnation whose two words differ, so a swap shows.
const INCARNATION: u64 = 0x8123_4567_0000_0abc;

fn set_relay(file: impl AsFd, on: u32) -> Result<(), Errno> {
    raw_ioctl(file, abi::IOC_SET_RELAY, &on as *const u32 as usize).map(drop)
}

fn origin(node: &str) -> abi::OriginHeader {
    abi::OriginHeader {
        node: abi::name_field(node).unwrap_or_default(),
        seq: 41,
        time_ns: 123_456_789,
        pid: 777,
        uid: 1000,
        gid: 1001,
        incarnation_hi: (INCARNATION >> 32) as u32,
        incarnation_lo: INCARNATION as u32,
        ..abi::OriginHeader::default()
    }
}

fn only_the_control_plane_may_relay() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("relay-who"))?;
    // A user who may write the room may not make its fd a relay.
    let as_nobody = helper::set_relay_as(&helper::NOBODY, &room.path())?;
    ensure!(as_nobody == "EPERM", "IOC_SET_RELAY as nobody: {as_nobody}");
    // Root: only on a writable fd, only to turn it on.
    let reader = room.open_read_nonblock()?;
    ensure!(
        set_relay(&reader, 1) == Err(Errno::EBADF),
        "a read-only fd became a relay"
    );
    let writer = room.open_write()?;
    ensure!(set_relay(&writer, 0) == Err(Errno::EINVAL), "argument 0");
    set_relay(&writer, 1).context("root making its writer a relay")?;
    Ok(())
}

fn relayed_messages_say_where_they_came_from() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("relay-origin"))?;
    let mut plain = room.open_read_nonblock()?;
    let mut framed = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&framed, abi::READ_FRAMED)?;
    let mut with_origin = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&with_origin, abi::READ_FRAMED_ORIGIN)?;
    let mut relay = room.open_write()?;
    set_relay(&relay, 1)?;
    let sent = relay.write(&kchat_client::relay_frame(origin("node-a"), b"hi from a\n"))?;
    ensure!(
        sent == std::mem::size_of::<abi::RelayHeader>() + 10,
        "the relay write took {sent} bytes"
    );
    room.open_write()?.write_all(b"hi from here\n")?;
    let mut buf = vec![0u8; 4096];
    // `cat` sees payloads only.
    let n = plain.read(&mut buf)?;
    ensure!(
        &buf[..n] == b"hi from a\nhi from here\n",
        "a stream reader got {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // A framed reader sees the relay as the writer: a local process, never
    // the remote uid.
    let n = framed.read(&mut buf)?;
    let frames = kchat_client::split_frames(&buf[..n]).context("torn frames")?;
    ensure!(frames.len() == 2, "{} frames", frames.len());
    let (relayed, _) = &frames[0];
    ensure!(
        relayed.pid == std::process::id() && relayed.uid == 0 && relayed.gid == 0,
        "a framed reader was shown {relayed:?} for a relayed message"
    );
    // An origin reader sees where it came from, and that the local one is
    // local.
    let n = with_origin.read(&mut buf)?;
    let frames = kchat_client::split_origin_frames(&buf[..n]).context("torn origin frames")?;
    ensure!(frames.len() == 2, "{} origin frames", frames.len());
    let (header, from, payload) = &frames[0];
    let want = abi::OriginHeader {
        flags: abi::ORIGIN_RELAYED,
        ..origin("node-a")
    };
    ensure!(
        *from == want && *payload == b"hi from a\n" && header.pid == std::process::id(),
        "relayed: {header:?} {from:?} {payload:?}"
    );
    let (_, local, payload) = &frames[1];
    ensure!(
        *local == abi::OriginHeader::default() && *payload == b"hi from here\n",
        "local: {local:?}"
    );
    Ok(())
}

fn bad_relay_frames_store_nothing() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        max_msg: 64,
        ..spec("relay-bad")
    })?;
    let mut relay = room.open_write()?;
    set_relay(&relay, 1)?;
    let mut bad_size = kchat_client::relay_frame(origin("node-a"), b"x");
    bad_size[0] = 79;
    let mut flagged = origin("node-a");
    flagged.flags = abi::ORIGIN_RELAYED;
    let cases: [(&str, Vec<u8>, ErrorKind, Option<Errno>); 6] = [
        (
            "plain text",
            b"not a relay frame\n".to_vec(),
            ErrorKind::InvalidInput,
            None,
        ),
        (
            "a header without payload",
            kchat_client::relay_frame(origin("node-a"), b""),
            ErrorKind::InvalidInput,
            None,
        ),
        ("a wrong size", bad_size, ErrorKind::InvalidInput, None),
        (
            "a bad node name",
            kchat_client::relay_frame(origin("a/b"), b"x"),
            ErrorKind::InvalidInput,
            None,
        ),
        (
            "origin flags set",
            kchat_client::relay_frame(flagged, b"x"),
            ErrorKind::InvalidInput,
            None,
        ),
        (
            "a payload over max_msg",
            kchat_client::relay_frame(origin("node-a"), &[b'x'; 65]),
            ErrorKind::Other,
            Some(Errno::EMSGSIZE),
        ),
    ];
    for (what, bytes, kind, errno) in cases {
        let refused = relay.write(&bytes);
        let right = match (&refused, errno) {
            (Err(err), Some(errno)) => err.raw_os_error() == Some(errno as i32),
            (Err(err), None) => err.kind() == kind,
            _ => false,
        };
        ensure!(right, "{what}: {refused:?}");
    }
    let info = room.control().info(&room.name)?;
    ensure!(
        info.msgs_in == 0,
        "refused relay frames stored {} messages",
        info.msgs_in
    );
    Ok(())
}

/// A relay states the origin room's incarnation; `READ_FRAMED_ORIGIN`
/// readers and the mapping get it back, as the ring keeps it. A local
/// message's origin stays all zero.
fn the_incarnation_travels_in_every_origin_view() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("relay-inc"))?;
    let mut with_origin = room.open_read_nonblock()?;
    kchat_client::set_read_mode(&with_origin, abi::READ_FRAMED_ORIGIN)?;
    let mut mapped = kchat_client::mapped::MappedRoom::map(room.open_read()?)?;
    let mut relay = room.open_write()?;
    set_relay(&relay, 1)?;
    let mut other = origin("node-b");
    other.set_incarnation(u64::MAX);
    relay.write_all(&kchat_client::relay_frame(origin("node-a"), b"one"))?;
    relay.write_all(&kchat_client::relay_frame(other, b"two"))?;
    room.open_write()?.write_all(b"local")?;
    let mut buf = vec![0u8; 4096];
    let n = with_origin.read(&mut buf)?;
    let frames = kchat_client::split_origin_frames(&buf[..n]).context("torn origin frames")?;
    let read: Vec<(u64, u32)> = frames
        .iter()
        .map(|(_, from, _)| (from.incarnation(), from.flags))
        .collect();
    let want = vec![
        (INCARNATION, abi::ORIGIN_RELAYED),
        (u64::MAX, abi::ORIGIN_RELAYED),
        (0, 0),
    ];
    ensure!(
        read == want,
        "read(): incarnations {read:x?}, not {want:x?}"
    );
    ensure!(
        frames[0].1
            == abi::OriginHeader {
                flags: abi::ORIGIN_RELAYED,
                ..origin("node-a")
            },
        "read(): origin {:?}",
        frames[0].1
    );
    mapped.seek_oldest()?;
    let mut seen = Vec::new();
    while let kchat_client::mapped::Next::Message(m) = mapped.read(|m| m.origin)? {
        seen.push(m.map_or((0, 0), |o| (o.incarnation(), o.flags)));
    }
    ensure!(
        seen == want,
        "mapped: incarnations {seen:x?}, not {want:x?}"
    );
    Ok(())
}

/// `RoomInfo::incarnation`: nonzero, and another one for a room deleted and
/// created again under its name. A caller of the 184-byte v2 `RoomInfo`
/// still works and gets nothing past its struct.
fn a_room_created_again_has_a_new_incarnation() -> Result<()> {
    module::ensure_loaded()?;
    let control = kchat_client::Control::open()?;
    let name = "relay-again";
    let _ = control.delete(name);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let room = TempRoom::create(spec(name))?;
        let info = control.info(name)?;
        ensure!(info.incarnation != 0, "room {name} has incarnation 0");
        ensure!(
            !seen.contains(&info.incarnation),
            "room {name} created again has incarnation {:#x} again (seen {seen:x?})",
            info.incarnation
        );
        seen.push(info.incarnation);
        room.delete()?;
    }
    let room = TempRoom::create(spec(name))?;
    let now = control.info(name)?;
    // A v2 caller: its 184 bytes, then bytes it does not own.
    let mut buf = [0xaau8; size_of::<abi::RoomInfo>() + 8];
    // Its struct zero but for its size and the name, as a caller sends it.
    buf[..abi::ROOM_INFO_V1_SIZE as usize].fill(0);
    buf[..4].copy_from_slice(&abi::ROOM_INFO_V1_SIZE.to_ne_bytes());
    buf[8..8 + abi::NAME_FIELD].copy_from_slice(&abi::name_field(name).context("name")?);
    raw_ioctl(&control.0, abi::IOC_ROOM_INFO, buf.as_mut_ptr() as usize)
        .context("IOC_ROOM_INFO with the v2 size")?;
    let past = &buf[abi::ROOM_INFO_V1_SIZE as usize..];
    ensure!(
        past.iter().all(|&b| b == 0xaa),
        "the kernel wrote past a v2 caller's RoomInfo: {past:x?}"
    );
    let minor_at = std::mem::offset_of!(abi::RoomInfo, minor);
    let minor = u32::from_ne_bytes(buf[minor_at..minor_at + 4].try_into()?);
    ensure!(
        minor == now.minor,
        "a v2 caller got minor {minor}, not {}",
        now.minor
    );
    drop(room);
    Ok(())
}
