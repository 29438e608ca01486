//! Creating and deleting rooms through the control node: nodes, owners,
//! modes, the default room, and every refusal with its errno.

use crate::{
    client::{raw_ioctl, spec, Control, TempRoom},
    helper::open_as,
    module, Test,
};
use anyhow::{bail, ensure, Context, Result};
use kchat_uapi::abi;
use nix::errno::Errno;
use std::{os::unix::fs::MetadataExt, path::Path};

pub const TESTS: &[Test] = &[
    (
        "rooms::default_room_is_world_read_write",
        default_room_is_world_read_write,
    ),
    (
        "rooms::default_room_can_be_renamed_or_disabled",
        default_room_can_be_renamed_or_disabled,
    ),
    (
        "rooms::node_gets_requested_owner_group_and_mode",
        node_gets_requested_owner_group_and_mode,
    ),
    ("rooms::room_mode_is_enforced", room_mode_is_enforced),
    ("rooms::bad_names_are_refused", bad_names_are_refused),
    (
        "rooms::duplicate_names_are_refused",
        duplicate_names_are_refused,
    ),
    ("rooms::bad_settings_are_refused", bad_settings_are_refused),
    ("rooms::struct_size_rules", struct_size_rules),
    ("rooms::delete_removes_the_node", delete_removes_the_node),
    (
        "rooms::info_reports_settings_fill_and_counters",
        info_reports_settings_fill_and_counters,
    ),
    ("rooms::list_names_every_room", list_names_every_room),
    (
        "rooms::unload_is_refused_while_a_room_is_open",
        unload_is_refused_while_a_room_is_open,
    ),
    (
        "rooms::global_limits_apply_and_refuse_bad_values",
        global_limits_apply_and_refuse_bad_values,
    ),
];

fn mode_of(path: &Path) -> Result<(u32, u32, u32)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{} does not exist", path.display()))?;
    Ok((meta.mode() & 0o7777, meta.uid(), meta.gid()))
}

fn default_room_is_world_read_write() -> Result<()> {
    module::ensure_loaded()?;
    let (mode, uid, gid) = mode_of(Path::new("/dev/kchat/lobby"))?;
    ensure!(
        mode == 0o666 && uid == 0 && gid == 0,
        "lobby is {mode:o} {uid}:{gid}, expected 0666 root:root"
    );
    Ok(())
}

fn default_room_can_be_renamed_or_disabled() -> Result<()> {
    module::ensure_unloaded()?;
    module::load_with(c"default_room=hall")?;
    let renamed = mode_of(Path::new("/dev/kchat/hall")).map(drop);
    let lobby_gone = !Path::new("/dev/kchat/lobby").exists();
    module::ensure_unloaded()?;
    renamed.context("default_room=hall made no /dev/kchat/hall")?;
    ensure!(lobby_gone, "lobby exists although default_room=hall");

    module::load_with(c"default_room=")?;
    let rooms: Vec<_> = std::fs::read_dir("/dev/kchat")?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    module::ensure_unloaded()?;
    ensure!(
        rooms == ["control"],
        "default_room= (empty) still made rooms: {rooms:?}"
    );

    match module::load_with(c"default_room=../etc") {
        Err(err) if err.downcast_ref::<Errno>() == Some(&Errno::EINVAL) => {}
        other => bail!("loading with default_room=../etc: {other:?}, expected EINVAL"),
    }
    ensure!(
        !module::is_loaded(),
        "kchat stayed loaded with an invalid default room"
    );
    Ok(())
}

fn node_gets_requested_owner_group_and_mode() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        uid: 1000,
        gid: 100,
        mode: 0o640,
        ..spec("team")
    })?;
    let got = mode_of(&room.path())?;
    ensure!(
        got == (0o640, 1000, 100),
        "team is {got:?}, expected (0o640, 1000, 100)"
    );
    Ok(())
}

fn room_mode_is_enforced() -> Result<()> {
    module::ensure_loaded()?;
    let private = TempRoom::create(abi::RoomSpec {
        mode: 0o600,
        ..spec("private")
    })?;
    let nobody = crate::helper::NOBODY;
    let outcome = open_as(&private.path(), &nobody)?;
    ensure!(outcome == "EACCES", "nobody opening a 0600 room: {outcome}");
    let outcome = open_as(Path::new("/dev/kchat/lobby"), &nobody)?;
    ensure!(
        outcome == "opened",
        "nobody opening the 0666 lobby: {outcome}"
    );
    Ok(())
}

fn bad_names_are_refused() -> Result<()> {
    module::ensure_loaded()?;
    let control = Control::open()?;
    let before: Vec<_> = std::fs::read_dir("/dev/kchat")?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let mut bad: Vec<[u8; abi::NAME_FIELD]> =
        ["", ".", "..", ".hidden", "-x", "a/b", "a b", "control"]
            .iter()
            .map(|name| abi::name_field(name).expect("short"))
            .collect();
    bad.push([b'x'; abi::NAME_FIELD]); // no NUL terminator
    let mut utf8 = [0u8; abi::NAME_FIELD];
    utf8[..3].copy_from_slice("é1".as_bytes());
    bad.push(utf8);
    for name in bad {
        match control.create(&abi::RoomSpec { name, ..spec("x") }) {
            Err(Errno::EINVAL) => {}
            other => bail!(
                "creating a room named {:?}: {other:?}, expected EINVAL",
                String::from_utf8_lossy(&name)
            ),
        }
    }
    let after: Vec<_> = std::fs::read_dir("/dev/kchat")?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(
        before == after,
        "refused creations changed /dev/kchat: {before:?} -> {after:?}"
    );
    Ok(())
}

fn duplicate_names_are_refused() -> Result<()> {
    module::ensure_loaded()?;
    let _room = TempRoom::create(spec("twice"))?;
    match Control::open()?.create(&spec("twice")) {
        Err(Errno::EEXIST) => Ok(()),
        other => bail!("creating 'twice' twice: {other:?}, expected EEXIST"),
    }
}

fn bad_settings_are_refused() -> Result<()> {
    module::ensure_loaded()?;
    let control = Control::open()?;
    let base = spec("settings");
    let cases = [
        (
            "ring_bytes below the minimum",
            abi::RoomSpec {
                ring_bytes: abi::MIN_RING_BYTES - 1,
                ..base
            },
        ),
        (
            "ring_bytes above the maximum",
            abi::RoomSpec {
                ring_bytes: abi::MAX_RING_BYTES + 1,
                ..base
            },
        ),
        (
            "max_msg larger than the ring",
            abi::RoomSpec {
                ring_bytes: 8192,
                max_msg: 8192,
                ..base
            },
        ),
        (
            "max_msg above the maximum",
            abi::RoomSpec {
                max_msg: abi::MAX_MAX_MSG + 1,
                ..base
            },
        ),
        ("an unknown policy", abi::RoomSpec { policy: 7, ..base }),
        (
            "setuid mode bits",
            abi::RoomSpec {
                mode: 0o4666,
                ..base
            },
        ),
        ("reserved flags", abi::RoomSpec { flags: 1, ..base }),
    ];
    for (what, bad) in cases {
        match control.create(&bad) {
            Err(Errno::EINVAL) => {}
            other => bail!("a room with {what}: {other:?}, expected EINVAL"),
        }
        ensure!(
            !Path::new("/dev/kchat/settings").exists(),
            "a refused room ({what}) left a node"
        );
    }
    // The limits themselves are accepted.
    for good in [
        abi::RoomSpec {
            ring_bytes: abi::MIN_RING_BYTES,
            max_msg: abi::MIN_RING_BYTES - abi::RECORD_OVERHEAD,
            ..base
        },
        abi::RoomSpec {
            policy: abi::POLICY_BLOCK,
            mode: 0o777,
            ..base
        },
    ] {
        let room = TempRoom::create(good)?;
        room.delete().context("deleting 'settings'")?;
    }
    Ok(())
}

fn struct_size_rules() -> Result<()> {
    module::ensure_loaded()?;
    let control = Control::open()?;
    let create =
        |bytes: &[u8]| raw_ioctl(&control.0, abi::IOC_CREATE_ROOM, bytes.as_ptr() as usize);
    let spec_bytes = |spec: &abi::RoomSpec| -> Vec<u8> {
        // SAFETY: RoomSpec is repr(C) plain data without padding.
        unsafe {
            std::slice::from_raw_parts(spec as *const _ as *const u8, size_of::<abi::RoomSpec>())
        }
        .to_vec()
    };
    let size = size_of::<abi::RoomSpec>();

    let v1 = abi::ROOM_SPEC_V1_SIZE as usize;
    let mut short = spec_bytes(&abi::RoomSpec {
        size: v1 as u32 - 4,
        ..spec("sized")
    });
    short.truncate(v1 - 4);
    ensure!(
        create(&short) == Err(Errno::EINVAL),
        "a struct smaller than v1 was not refused with EINVAL"
    );

    // A v1 caller (no max_wait_ms) still creates rooms: the new field's
    // default applies.
    let mut old_caller = spec_bytes(&abi::RoomSpec {
        size: v1 as u32,
        policy: abi::POLICY_BLOCK,
        ..spec("sized")
    });
    old_caller.truncate(v1);
    create(&old_caller).context("a v1-sized create request")?;
    let info = control.info("sized")?;
    ensure!(
        info.max_wait_ms == abi::DEFAULT_MAX_WAIT_MS,
        "a v1 request's block room got max_wait_ms {}",
        info.max_wait_ms
    );
    control.delete("sized").context("deleting 'sized'")?;

    let mut longer = spec_bytes(&abi::RoomSpec {
        size: size as u32 + 16,
        ..spec("sized")
    });
    longer.extend_from_slice(&[0; 16]);
    create(&longer).context("a longer struct with zero trailing bytes")?;
    control.delete("sized").context("deleting 'sized'")?;

    longer[size + 7] = 1;
    ensure!(
        create(&longer) == Err(Errno::E2BIG),
        "unknown non-zero trailing bytes were not refused with E2BIG"
    );
    ensure!(
        !Path::new("/dev/kchat/sized").exists(),
        "the E2BIG request made a room"
    );

    let huge = spec_bytes(&abi::RoomSpec {
        size: abi::MAX_STRUCT_SIZE + 1,
        ..spec("sized")
    });
    ensure!(
        create(&huge) == Err(Errno::E2BIG),
        "a size above MAX_STRUCT_SIZE was not refused with E2BIG"
    );

    for bad in [0usize, 1, usize::MAX - 8] {
        let got = raw_ioctl(&control.0, abi::IOC_CREATE_ROOM, bad);
        ensure!(
            got == Err(Errno::EFAULT),
            "create with pointer {bad:#x}: {got:?}, expected EFAULT"
        );
    }
    Ok(())
}

fn delete_removes_the_node() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("gone"))?;
    ensure!(room.path().exists(), "no node for a new room");
    room.delete().context("deleting 'gone'")?;
    ensure!(!room.path().exists(), "the node outlived its room");
    let control = Control::open()?;
    ensure!(
        control.delete("gone") == Err(Errno::ENOENT),
        "deleting a deleted room did not give ENOENT"
    );
    ensure!(
        control.delete("never-was") == Err(Errno::ENOENT),
        "deleting an unknown room did not give ENOENT"
    );
    // The name is free again.
    TempRoom::create(spec("gone"))?;
    Ok(())
}

fn info_reports_settings_fill_and_counters() -> Result<()> {
    use std::io::{Read, Write};
    module::ensure_loaded()?;
    let room = TempRoom::create(abi::RoomSpec {
        ring_bytes: 8192,
        max_msg: 200,
        policy: abi::POLICY_BLOCK,
        uid: 7,
        gid: 8,
        mode: 0o620,
        ..spec("counted")
    })?;
    let mut reader = room.open_read_nonblock()?;
    let _idle_reader = room.open_read_nonblock()?;
    let mut writer = room.open_write()?;
    for _ in 0..3 {
        writer.write_all(&[1; 10])?;
    }
    let mut buf = [0u8; 64];
    ensure!(
        reader.read(&mut buf)? == 30,
        "the reader did not get the three messages"
    );
    let info = Control::open()?.info("counted").context("room info")?;
    let expected = abi::RoomInfo {
        size: size_of::<abi::RoomInfo>() as u32,
        flags: 0,
        name: abi::name_field("counted").expect("short"),
        policy: abi::POLICY_BLOCK,
        ring_bytes: 8192,
        max_msg: 200,
        uid: 7,
        gid: 8,
        mode: 0o620,
        minor: info.minor,
        readers: 2,
        writers: 1,
        max_wait_ms: abi::DEFAULT_MAX_WAIT_MS,
        ring_used_bytes: 3 * (10 + u64::from(abi::RECORD_OVERHEAD)),
        ring_msgs: 3,
        first_seq: 0,
        next_seq: 3,
        msgs_in: 3,
        bytes_in: 30,
        deliveries: 3,
        lost: 0,
        throttled: 0,
        writer_waits: 0,
        limit_scope: abi::LIMIT_PER_UID,
        msgs_per_sec: 0,
        msg_burst: 0,
        bytes_per_sec: 0,
        byte_burst: 0,
        laggard_evictions: 0,
        incarnation: info.incarnation,
    };
    ensure!(
        info == expected,
        "info:\n{info:#?}\nexpected:\n{expected:#?}"
    );
    ensure!(info.minor >= 1, "a room got the control node's minor");
    let control = Control::open()?;
    ensure!(
        control.info("nosuch") == Err(Errno::ENOENT),
        "info on an unknown room was not ENOENT"
    );
    let mut flagged: abi::RoomInfo = expected;
    flagged.flags = 1;
    let got = raw_ioctl(
        &control.0,
        abi::IOC_ROOM_INFO,
        &mut flagged as *mut _ as usize,
    );
    ensure!(
        got == Err(Errno::EINVAL),
        "info with reserved flags: {got:?}"
    );
    Ok(())
}

fn list_names_every_room() -> Result<()> {
    module::ensure_loaded()?;
    let _a = TempRoom::create(spec("list-a"))?;
    let _b = TempRoom::create(spec("list-b"))?;
    let control = Control::open()?;
    let (names, count) = control.list(64)?;
    ensure!(
        count as usize == names.len(),
        "count {count} but {} names",
        names.len()
    );
    for name in ["lobby", "list-a", "list-b"] {
        ensure!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    let (few, total) = control.list(1)?;
    ensure!(
        few.len() == 1 && total == count,
        "capacity 1 gave {few:?} of {total}"
    );
    let (none, total) = control.list(0)?;
    ensure!(
        none.is_empty() && total == count,
        "capacity 0 gave {none:?} of {total}"
    );
    let mut bad = abi::RoomList {
        size: size_of::<abi::RoomList>() as u32,
        capacity: 4,
        count: 0,
        flags: 0,
        names: 8,
    };
    let got = raw_ioctl(&control.0, abi::IOC_LIST_ROOMS, &mut bad as *mut _ as usize);
    ensure!(
        got == Err(Errno::EFAULT),
        "list into a bad pointer: {got:?}"
    );
    Ok(())
}

fn unload_is_refused_while_a_room_is_open() -> Result<()> {
    module::ensure_loaded()?;
    let reader = crate::client::open(Path::new("/dev/kchat/lobby"), true, false, false)?;
    let refused = module::try_unload();
    ensure!(module::is_loaded(), "kchat unloaded with a room open");
    drop(reader);
    ensure!(
        refused == Err(Errno::EWOULDBLOCK),
        "unload with a room open: {refused:?}, expected EWOULDBLOCK"
    );
    module::ensure_unloaded()
}

/// Puts the module-wide limits back however the test ends.
struct RestoreLimits(abi::GlobalLimits);

impl Drop for RestoreLimits {
    fn drop(&mut self) {
        if let Ok(control) = Control::open() {
            let _ = control.set_limits(&self.0);
        }
    }
}

fn global_limits_apply_and_refuse_bad_values() -> Result<()> {
    module::ensure_loaded()?;
    let control = Control::open()?;
    let defaults = control.limits().context("IOC_GET_LIMITS")?;
    let _restore = RestoreLimits(defaults);
    ensure!(
        (
            defaults.max_rooms,
            defaults.max_readers,
            defaults.max_total_ring_bytes
        ) == (255, 1024, 256 << 20),
        "unexpected defaults {defaults:?}"
    );
    for (what, bad) in [
        (
            "zero rooms",
            abi::GlobalLimits {
                max_rooms: 0,
                ..defaults
            },
        ),
        (
            "more rooms than minors",
            abi::GlobalLimits {
                max_rooms: 256,
                ..defaults
            },
        ),
        (
            "zero readers",
            abi::GlobalLimits {
                max_readers: 0,
                ..defaults
            },
        ),
        (
            "too many readers",
            abi::GlobalLimits {
                max_readers: abi::MAX_READERS_LIMIT + 1,
                ..defaults
            },
        ),
        (
            "a tiny ring total",
            abi::GlobalLimits {
                max_total_ring_bytes: 1,
                ..defaults
            },
        ),
        (
            "reserved flags",
            abi::GlobalLimits {
                flags: 1,
                ..defaults
            },
        ),
    ] {
        ensure!(
            control.set_limits(&bad) == Err(Errno::EINVAL),
            "limits with {what} were not refused with EINVAL"
        );
        ensure!(
            control.limits()? == defaults,
            "refused limits ({what}) changed something"
        );
    }

    let (_, rooms_now) = control.list(0)?;
    control.set_limits(&abi::GlobalLimits {
        max_rooms: rooms_now + 1,
        ..defaults
    })?;
    let _one_more = TempRoom::create(spec("limit-1"))?;
    ensure!(
        control.create(&spec("limit-2")) == Err(Errno::EMFILE),
        "max_rooms did not refuse a room with EMFILE (ENOSPC is the ring total's)"
    );

    control.set_limits(&abi::GlobalLimits {
        max_readers: 2,
        ..defaults
    })?;
    let room = TempRoom::create(spec("limit-3"))?;
    let _r1 = room.open_read()?;
    let _r2 = room.open_read()?;
    let third = crate::client::open(&room.path(), true, false, false);
    let errno = third.err().and_then(|e| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|e| e.raw_os_error())
    });
    ensure!(
        errno == Some(Errno::EUSERS as i32),
        "a third reader with max_readers=2: {errno:?}, expected EUSERS"
    );
    let _writer = room
        .open_write()
        .context("writers do not count against max_readers")?;

    let used: u64 = control
        .list(256)?
        .0
        .iter()
        .map(|name| control.info(name).map(|i| u64::from(i.ring_bytes)))
        .sum::<Result<u64, Errno>>()?;
    control.set_limits(&abi::GlobalLimits {
        max_total_ring_bytes: used + 8192,
        ..defaults
    })?;
    let big = abi::RoomSpec {
        ring_bytes: 16384,
        ..spec("limit-4")
    };
    ensure!(
        control.create(&big) == Err(Errno::ENOSPC),
        "the ring total did not refuse a room"
    );
    TempRoom::create(abi::RoomSpec {
        ring_bytes: 8192,
        ..spec("limit-5")
    })
    .context("a room that fits the total")?;
    Ok(())
}
