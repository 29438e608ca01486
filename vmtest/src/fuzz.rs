//! A structured ioctl fuzzer against the real module: threads throwing
//! random control and room ioctls (right and wrong sizes, garbage fields,
//! unset flags, null, unmapped and kernel pointers), interleaved with room
//! creation and deletion, opens, closes, reads, writes and seeks.
//!
//! Every call must return success or an errno the ABI documents; the
//! kernel must report nothing (the suite's log check: lockdep, KASAN,
//! kmemleak, WARN); and afterwards every room must go and the module must
//! unload, so no reference leaked. Seed and length: `KCHAT_FUZZ_SEED`,
//! `KCHAT_FUZZ_ITERATIONS` (per thread; CI runs the default).

use crate::{client::Control, module, Test};
use anyhow::{bail, ensure, Context, Result};
use kchat_client::raw_ioctl;
use kchat_uapi::abi;
use nix::errno::Errno;
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    sync::atomic::{AtomicU64, Ordering},
};

pub const TESTS: &[Test] = &[(
    "fuzz::random_ioctls_and_io_under_churn",
    random_ioctls_and_io_under_churn,
)];

const THREADS: u64 = 4;
const DEFAULT_ITERATIONS: u64 = 3000;
/// Room names the fuzzer uses, so it can clean up after itself.
const ROOMS: [&str; 4] = ["fz0", "fz1", "fz2", "fz3"];

/// Errors the ABI documents for some call; anything else is a bug.
const DOCUMENTED: &[Errno] = &[
    Errno::EINVAL,
    Errno::E2BIG,
    Errno::EFAULT,
    Errno::ENOENT,
    Errno::EEXIST,
    Errno::ENOSPC,
    Errno::EMFILE,
    Errno::EUSERS,
    Errno::ENOTTY,
    Errno::EAGAIN,
    Errno::EIDRM,
    Errno::EBADF,
    Errno::ERANGE,
    Errno::EMSGSIZE,
    Errno::ENOMEM,
];

/// Calls made and errors seen, for the report.
static CALLS: AtomicU64 = AtomicU64::new(0);
static SUCCESSES: AtomicU64 = AtomicU64::new(0);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn check(what: &str, result: Result<i32, Errno>) -> Result<()> {
    CALLS.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(_) => {
            SUCCESSES.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(err) if DOCUMENTED.contains(&err) => Ok(()),
        Err(err) => bail!("{what} returned undocumented {err}"),
    }
}

/// A struct-sized buffer (8 KiB, bigger than any struct, so the kernel never
/// writes past it) with random bytes and a size field picked to hit every
/// rule of the extensible-struct check.
fn random_struct(rng: &mut fastrand::Rng, true_size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let random_fill = rng.u8(..4);
    for byte in &mut buf {
        *byte = match random_fill {
            0 => 0,
            _ => rng.u8(..),
        };
    }
    let size: u32 = match rng.u8(..6) {
        0 => 0,
        1 => true_size as u32,
        2 => rng.u32(1..true_size as u32),
        3 => rng.u32(true_size as u32..4096),
        4 => rng.u32(4097..),
        _ => rng.u32(..),
    };
    buf[..4].copy_from_slice(&size.to_ne_bytes());
    // Usually a real room name, so calls get past the lookup.
    if rng.bool() && buf.len() > 8 + abi::NAME_FIELD {
        let name = abi::name_field(ROOMS[rng.usize(..ROOMS.len())]).unwrap_or_default();
        buf[NAME_OFFSET..NAME_OFFSET + abi::NAME_FIELD].copy_from_slice(&name);
    }
    buf
}

/// Where the name sits in every struct that has one: after `size` and
/// `policy` (RoomSpec) or `flags` (the others).
const NAME_OFFSET: usize = 8;

/// An argument: a buffer, or a pointer the kernel must refuse.
fn random_arg(rng: &mut fastrand::Rng, buf: &mut [u8]) -> usize {
    match rng.u8(..10) {
        0 => 0,
        1 => 0x1000,                // unmapped
        2 => 0xffff_8880_0000_0000, // kernel memory
        3 => usize::MAX - 7,        // wraps
        _ => buf.as_mut_ptr() as usize,
    }
}

fn control_call(rng: &mut fastrand::Rng, control: &Control) -> Result<()> {
    let commands: [(u32, usize); 9] = [
        (abi::IOC_VERSION, 4),
        (abi::IOC_CREATE_ROOM, size_of::<abi::RoomSpec>()),
        (abi::IOC_DELETE_ROOM, size_of::<abi::RoomName>()),
        (abi::IOC_ROOM_INFO, size_of::<abi::RoomInfo>()),
        (abi::IOC_LIST_ROOMS, size_of::<abi::RoomList>()),
        (abi::IOC_SET_RATE_LIMIT, size_of::<abi::RateLimit>()),
        (abi::IOC_GET_LIMITS, size_of::<abi::GlobalLimits>()),
        (abi::IOC_SET_LIMITS, size_of::<abi::GlobalLimits>()),
        (abi::ior::<u64>(rng.u8(..0x20)), 8),
    ];
    let (cmd, size) = commands[rng.usize(..commands.len())];
    let mut buf = random_struct(rng, size);
    let mut names = vec![[0u8; abi::NAME_FIELD]; 256];
    if cmd == abi::IOC_LIST_ROOMS {
        // The names pointer must be ours or refused: the kernel writes
        // `capacity` names through it.
        let capacity = rng.u32(..=256);
        buf[4..8].copy_from_slice(&capacity.to_ne_bytes());
        let names_ptr: u64 = match rng.u8(..3) {
            0 => 0,
            1 => 0x1000,
            _ => names.as_mut_ptr() as u64,
        };
        buf[16..24].copy_from_slice(&names_ptr.to_ne_bytes());
    }
    let arg = random_arg(rng, &mut buf);
    check(
        &format!("control ioctl {cmd:#x}"),
        raw_ioctl(&control.0, cmd, arg),
    )
}

fn room_path(rng: &mut fastrand::Rng) -> String {
    format!("/dev/kchat/{}", ROOMS[rng.usize(..ROOMS.len())])
}

fn open_room(rng: &mut fastrand::Rng) -> Option<File> {
    let (read, write) = match rng.u8(..3) {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    let mut flags = nix::libc::O_NONBLOCK;
    if rng.bool() {
        flags |= nix::libc::O_DIRECT;
    }
    File::options()
        .read(read)
        .write(write)
        .custom_flags(flags)
        .open(room_path(rng))
        .ok()
}

fn room_call(rng: &mut fastrand::Rng, files: &mut Vec<File>) -> Result<()> {
    if files.is_empty() || rng.u8(..8) == 0 {
        if let Some(file) = open_room(rng) {
            files.push(file);
        }
        return Ok(());
    }
    let at = rng.usize(..files.len());
    match rng.u8(..7) {
        0 => {
            files.swap_remove(at);
        }
        1 => {
            let mut buf = vec![0u8; rng.usize(..9000)];
            let _ = files[at].read(&mut buf);
        }
        2 => {
            let data = vec![b'z'; rng.usize(..9000)];
            let _ = files[at].write(&data);
        }
        3 => {
            let whence = match rng.u8(..3) {
                0 => SeekFrom::Start(rng.u64(..100)),
                1 => SeekFrom::End(-rng.i64(..100)),
                _ => SeekFrom::Current(rng.i64(-100..100)),
            };
            let _ = files[at].seek(whence);
        }
        _ => {
            let commands = [
                abi::IOC_SET_READ_MODE,
                abi::IOC_TAKE_LOST,
                abi::IOC_SEEK_SEQ,
                abi::IOC_ROOM_INFO,
                rng.u32(..),
            ];
            let cmd = commands[rng.usize(..commands.len())];
            let mut buf = vec![0u8; 64];
            for byte in &mut buf[..8] {
                *byte = if rng.bool() { 0 } else { rng.u8(..4) };
            }
            let arg = random_arg(rng, &mut buf);
            check(
                &format!("room ioctl {cmd:#x}"),
                raw_ioctl(&files[at], cmd, arg),
            )?;
        }
    }
    Ok(())
}

fn churn(rng: &mut fastrand::Rng, control: &Control) -> Result<()> {
    let name = ROOMS[rng.usize(..ROOMS.len())];
    if rng.bool() {
        let mut spec = kchat_client::spec(name);
        spec.ring_bytes = [0, abi::MIN_RING_BYTES, 65536][rng.usize(..3)];
        spec.policy = rng.u32(..2);
        check("create", control.create(&spec).map(|()| 0))
    } else {
        check("delete", control.delete(name).map(|()| 0))
    }
}

fn worker(seed: u64, iterations: u64) -> Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let control = Control::open().context("opening the control node")?;
    let mut files = Vec::new();
    for _ in 0..iterations {
        match rng.u8(..10) {
            0..=3 => control_call(&mut rng, &control)?,
            4..=7 => room_call(&mut rng, &mut files)?,
            _ => churn(&mut rng, &control)?,
        }
    }
    Ok(())
}

fn random_ioctls_and_io_under_churn() -> Result<()> {
    module::ensure_loaded()?;
    let seed = env_u64("KCHAT_FUZZ_SEED", fastrand::u64(..));
    let iterations = env_u64("KCHAT_FUZZ_ITERATIONS", DEFAULT_ITERATIONS);
    println!("fuzz: seed {seed}, {THREADS} threads x {iterations} iterations");
    let control = Control::open()?;
    let limits = control.limits()?;
    let workers: Vec<_> = (0..THREADS)
        .map(|n| std::thread::spawn(move || worker(seed.wrapping_add(n), iterations)))
        .collect();
    let mut failures = Vec::new();
    for worker in workers {
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failures.push(format!("{err:#}")),
            Err(_) => failures.push("a fuzz thread panicked".into()),
        }
    }
    // Global limits the fuzz may have changed go back, then its rooms go.
    control.set_limits(&limits)?;
    for room in ROOMS {
        let _ = control.delete(room);
    }
    println!(
        "fuzz: {} calls checked, {} succeeded",
        CALLS.load(Ordering::Relaxed),
        SUCCESSES.load(Ordering::Relaxed)
    );
    ensure!(failures.is_empty(), "seed {seed}: {}", failures.join("; "));
    // Nothing the fuzz did holds the module: every file closed with its
    // thread, so it must unload now.
    drop(control);
    module::ensure_unloaded().context("unloading after the fuzz (a leaked reference?)")?;
    module::ensure_loaded()
}
