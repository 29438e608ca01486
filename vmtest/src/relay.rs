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
];

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
