//! The control node, `/dev/kchat/control`: who may open it, and its ioctls.

use crate::{client::raw_ioctl, helper::open_as, module, Test};
use anyhow::{bail, ensure, Context, Result};
use kchat_uapi::abi;
use nix::{
    errno::Errno,
    sys::stat::{makedev, mknod, Mode, SFlag},
};
use std::{fs::File, os::unix::fs::MetadataExt, path::Path};

pub const PATH: &str = "/dev/kchat/control";

pub const TESTS: &[Test] = &[
    (
        "control::node_is_a_root_only_char_device",
        node_is_a_root_only_char_device,
    ),
    (
        "control::unprivileged_user_cannot_open",
        unprivileged_user_cannot_open,
    ),
    (
        "control::root_without_cap_sys_admin_cannot_open",
        root_without_cap_sys_admin_cannot_open,
    ),
    ("control::reports_the_abi_version", reports_the_abi_version),
    (
        "control::unknown_ioctls_get_enotty",
        unknown_ioctls_get_enotty,
    ),
    ("control::bad_pointer_gets_efault", bad_pointer_gets_efault),
    (
        "control::unknown_minor_gets_enxio",
        unknown_minor_gets_enxio,
    ),
    (
        "control::each_reader_shows_who_it_is_and_how_far_behind",
        each_reader_shows_who_it_is_and_how_far_behind,
    ),
];

fn open() -> Result<File> {
    File::options()
        .read(true)
        .write(true)
        .open(PATH)
        .with_context(|| format!("opening {PATH}"))
}

fn node_is_a_root_only_char_device() -> Result<()> {
    module::ensure_loaded()?;
    let meta = std::fs::metadata(PATH).with_context(|| format!("{PATH} does not exist"))?;
    let kind = SFlag::from_bits_truncate(meta.mode() & SFlag::S_IFMT.bits());
    ensure!(
        kind == SFlag::S_IFCHR,
        "{PATH} is not a character device (mode {:o})",
        meta.mode()
    );
    ensure!(
        meta.mode() & 0o7777 == 0o600,
        "{PATH} has mode {:o}, not 0600",
        meta.mode() & 0o7777
    );
    ensure!(
        meta.uid() == 0 && meta.gid() == 0,
        "{PATH} belongs to {}:{}",
        meta.uid(),
        meta.gid()
    );
    let major = module::major()?.context("no kchat major in /proc/devices")?;
    let rdev = meta.rdev();
    ensure!(
        nix::sys::stat::major(rdev) == u64::from(major)
            && nix::sys::stat::minor(rdev) == u64::from(abi::CONTROL_MINOR),
        "{PATH} is device {}:{}, expected {major}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev),
        abi::CONTROL_MINOR
    );
    Ok(())
}

fn unprivileged_user_cannot_open() -> Result<()> {
    module::ensure_loaded()?;
    let outcome = open_as(Path::new(PATH), &crate::helper::NOBODY)?;
    ensure!(
        outcome == "EACCES",
        "nobody opening {PATH}: {outcome}, expected EACCES"
    );
    Ok(())
}

fn root_without_cap_sys_admin_cannot_open() -> Result<()> {
    module::ensure_loaded()?;
    let outcome = open_as(
        Path::new(PATH),
        &["--bounding-set=-sys_admin", "--inh-caps=-sys_admin"],
    )?;
    ensure!(
        outcome == "EPERM",
        "root without CAP_SYS_ADMIN opening {PATH}: {outcome}, expected EPERM"
    );
    // The same helper with all capabilities does open it, so the refusal
    // above is the capability check and not a broken helper.
    let outcome = open_as(Path::new(PATH), &["--reuid=0"])?;
    ensure!(
        outcome == "opened",
        "root opening {PATH} through the helper: {outcome}"
    );
    Ok(())
}

fn reports_the_abi_version() -> Result<()> {
    module::ensure_loaded()?;
    let control = open()?;
    let mut version: u32 = 0;
    raw_ioctl(
        &control,
        abi::IOC_VERSION,
        &mut version as *mut u32 as usize,
    )
    .context("version ioctl")?;
    ensure!(
        version == abi::ABI_VERSION,
        "module speaks ABI {version}, userspace {}",
        abi::ABI_VERSION
    );
    Ok(())
}

fn unknown_ioctls_get_enotty() -> Result<()> {
    module::ensure_loaded()?;
    let control = open()?;
    let mut scratch = [0u8; 64];
    let arg = scratch.as_mut_ptr() as usize;
    for cmd in [
        abi::ior::<u64>(0x7f),
        abi::iowr::<[u8; 64]>(0xfe),
        nix::libc::TCGETS as u32,
        0,
    ] {
        match raw_ioctl(&control, cmd, arg) {
            Err(Errno::ENOTTY) => {}
            other => bail!("ioctl {cmd:#x} on {PATH}: {other:?}, expected ENOTTY"),
        }
    }
    ensure!(
        scratch.iter().all(|&b| b == 0),
        "a refused ioctl wrote to its argument"
    );
    Ok(())
}

fn bad_pointer_gets_efault() -> Result<()> {
    module::ensure_loaded()?;
    let control = open()?;
    for bad in [0usize, 1, usize::MAX - 2] {
        match raw_ioctl(&control, abi::IOC_VERSION, bad) {
            Err(Errno::EFAULT) => {}
            other => bail!("version ioctl with pointer {bad:#x}: {other:?}, expected EFAULT"),
        }
    }
    Ok(())
}

fn unknown_minor_gets_enxio() -> Result<()> {
    module::ensure_loaded()?;
    let major = module::major()?.context("no kchat major in /proc/devices")?;
    let path = Path::new("/tmp/kchat-minor-200");
    let _ = std::fs::remove_file(path);
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(major.into(), 200),
    )?;
    let outcome = File::options().read(true).write(true).open(path);
    std::fs::remove_file(path)?;
    match outcome {
        Err(err) if err.raw_os_error() == Some(nix::libc::ENXIO) => Ok(()),
        other => bail!("opening an unused kchat minor: {other:?}, expected ENXIO"),
    }
}

/// `IOC_ROOM_READERS`: the admin's view of who holds a room back.
fn each_reader_shows_who_it_is_and_how_far_behind() -> Result<()> {
    use std::io::{Read, Write};
    module::ensure_loaded()?;
    let room = crate::client::TempRoom::create(abi::RoomSpec {
        ring_bytes: abi::MIN_RING_BYTES,
        ..crate::client::spec("watched")
    })?;
    let control = room.control();
    let mut keeping_up = room.open_read_nonblock()?;
    let _behind = room.open_read_nonblock()?;
    let mut writer = room.open_write()?;
    for n in 0..5u8 {
        writer.write_all(&[b'0' + n; 10])?;
    }
    let mut buf = [0u8; 4096];
    ensure!(keeping_up.read(&mut buf)? == 50, "the reader that keeps up");
    let mut readers = control.readers(&room.name)?;
    readers.sort_by_key(|r| r.lag_msgs);
    let me = std::process::id();
    ensure!(readers.len() == 2, "{} readers reported", readers.len());
    let (up, behind) = (&readers[0], &readers[1]);
    ensure!(
        up.lag_msgs == 0 && up.lag_bytes == 0 && up.behind_ns == 0,
        "the reader that read everything: {up:?}"
    );
    ensure!(
        behind.lag_msgs == 5
            && behind.lag_bytes == 5 * (10 + u64::from(abi::RECORD_OVERHEAD))
            && behind.behind_ns > 0
            && behind.lost == 0,
        "the reader that read nothing: {behind:?}"
    );
    ensure!(
        readers
            .iter()
            .all(|r| r.pid == me && r.uid == 0 && r.gid == 0),
        "readers not named as this process and root: {readers:?}"
    );
    // Messages evicted before it read them show as losses it was not told
    // of yet: 4 KiB of 100-byte messages pushes its five out.
    for _ in 0..60 {
        writer.write_all(&[b'x'; 100])?;
    }
    let behind = control
        .readers(&room.name)?
        .into_iter()
        .max_by_key(|r| r.lost)
        .context("no readers")?;
    ensure!(
        behind.lost >= 5,
        "evicted unread messages not counted: {behind:?}"
    );
    // Bad input: no such room, reserved flags.
    ensure!(
        control.readers("no-such-room").err() == Some(Errno::ENOENT),
        "readers of no room"
    );
    let mut list = abi::ReaderList {
        size: std::mem::size_of::<abi::ReaderList>() as u32,
        flags: 1,
        name: abi::name_field(&room.name).context("name")?,
        capacity: 0,
        count: 0,
        readers: 0,
    };
    let flagged = raw_ioctl(
        &control.0,
        abi::IOC_ROOM_READERS,
        &mut list as *mut _ as usize,
    );
    ensure!(flagged == Err(Errno::EINVAL), "reserved flags: {flagged:?}");
    // Capacity 0 is a count.
    list.flags = 0;
    raw_ioctl(
        &control.0,
        abi::IOC_ROOM_READERS,
        &mut list as *mut _ as usize,
    )?;
    ensure!(
        list.count == 2,
        "count with no room for entries: {}",
        list.count
    );
    Ok(())
}
