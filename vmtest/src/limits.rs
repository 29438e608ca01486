//! Rate limits, enforced in the kernel per writing uid (default) or per
//! file: non-blocking writers get EAGAIN, blocking ones sleep, and every
//! throttle is counted.

use crate::{
    client::{spec, Control, TempRoom},
    module, Test,
};
use anyhow::{bail, ensure, Context, Result};
use kchat_uapi::abi;
use nix::errno::Errno;
use std::{
    fs::File,
    io::{ErrorKind, Write},
    time::Instant,
};

pub const TESTS: &[Test] = &[
    (
        "limits::over_the_limit_nonblocking_writers_get_eagain",
        over_the_limit_nonblocking_writers_get_eagain,
    ),
    (
        "limits::more_fds_do_not_help_but_other_uids_have_their_own",
        more_fds_do_not_help_but_other_uids_have_their_own,
    ),
    (
        "limits::per_file_scope_gives_each_fd_a_budget",
        per_file_scope_gives_each_fd_a_budget,
    ),
    ("limits::byte_limits_apply", byte_limits_apply),
    (
        "limits::blocking_writers_sleep_instead",
        blocking_writers_sleep_instead,
    ),
    ("limits::bad_limits_are_refused", bad_limits_are_refused),
    (
        "limits::senders_beyond_the_table_share_one_budget",
        senders_beyond_the_table_share_one_budget,
    ),
];

fn limit(
    name: &str,
    scope: u32,
    msgs: u32,
    msg_burst: u32,
    bytes: u32,
    byte_burst: u32,
) -> abi::RateLimit {
    abi::RateLimit {
        size: size_of::<abi::RateLimit>() as u32,
        flags: 0,
        name: abi::name_field(name).unwrap_or([b'?'; abi::NAME_FIELD]),
        scope,
        msgs_per_sec: msgs,
        msg_burst,
        bytes_per_sec: bytes,
        byte_burst,
        reserved: 0,
    }
}

/// Writes until EAGAIN (at most `cap` times); how many went through.
fn writes_until_eagain(writer: &mut File, len: usize, cap: usize) -> Result<usize> {
    for sent in 0..cap {
        match writer.write(&vec![b'x'; len]) {
            Ok(n) if n == len => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(sent),
            other => bail!("write {sent}: {other:?}"),
        }
    }
    Ok(cap)
}

fn over_the_limit_nonblocking_writers_get_eagain() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("limited"))?;
    let control = Control::open()?;
    control.set_limit(&limit("limited", abi::LIMIT_PER_UID, 1, 5, 0, 0))?;
    let mut writer = room.open_write_nonblock()?;
    let sent = writes_until_eagain(&mut writer, 10, 100)?;
    ensure!(sent == 5, "a burst of 5 let {sent} messages through");
    let info = control.info("limited")?;
    ensure!(
        info.throttled >= 1,
        "throttles were not counted: {}",
        info.throttled
    );
    ensure!(
        info.msgs_in == 5,
        "msgs_in {} after 5 admitted writes",
        info.msgs_in
    );
    ensure!(
        (info.msgs_per_sec, info.msg_burst) == (1, 5),
        "info does not show the limit"
    );
    // Lifting the limit lets the writer go on at once.
    control.set_limit(&limit("limited", abi::LIMIT_PER_UID, 0, 0, 0, 0))?;
    writer
        .write_all(b"free again")
        .context("writing after the limit was lifted")?;
    Ok(())
}

fn more_fds_do_not_help_but_other_uids_have_their_own() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("peruid"))?;
    Control::open()?.set_limit(&limit("peruid", abi::LIMIT_PER_UID, 1, 3, 0, 0))?;
    let mut first = room.open_write_nonblock()?;
    ensure!(
        writes_until_eagain(&mut first, 10, 100)? == 3,
        "the first fd's burst was not 3"
    );
    let mut second = room.open_write_nonblock()?;
    ensure!(
        writes_until_eagain(&mut second, 10, 100)? == 0,
        "a second fd of the same uid got a fresh budget"
    );
    // nobody has a budget of their own.
    crate::helper::sh_as_nobody(&format!(
        "printf a > {0} && printf b > {0} && printf c > {0}",
        room.path().display()
    ))
    .context("another uid was throttled by root's budget")?;
    Ok(())
}

fn per_file_scope_gives_each_fd_a_budget() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("perfile"))?;
    Control::open()?.set_limit(&limit("perfile", abi::LIMIT_PER_FILE, 1, 2, 0, 0))?;
    let mut first = room.open_write_nonblock()?;
    let mut second = room.open_write_nonblock()?;
    ensure!(
        writes_until_eagain(&mut first, 10, 100)? == 2,
        "the first fd's burst was not 2"
    );
    ensure!(
        writes_until_eagain(&mut second, 10, 100)? == 2,
        "the second fd did not get its own burst"
    );
    Ok(())
}

fn byte_limits_apply() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("bytes"))?;
    Control::open()?.set_limit(&limit("bytes", abi::LIMIT_PER_UID, 0, 0, 10, 100))?;
    let mut writer = room.open_write_nonblock()?;
    let sent = writes_until_eagain(&mut writer, 25, 100)?;
    ensure!(
        sent == 4,
        "100 bytes of burst let {sent} writes of 25 through"
    );
    Ok(())
}

fn blocking_writers_sleep_instead() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("sleepy"))?;
    let control = Control::open()?;
    control.set_limit(&limit("sleepy", abi::LIMIT_PER_UID, 10, 1, 0, 0))?;
    let mut writer = room.open_write()?;
    let started = Instant::now();
    for _ in 0..4 {
        writer.write_all(b"tick")?;
    }
    // One from the burst, then three at 10/s: at least 0.3 s, however fast
    // or slow the machine (a lower bound only).
    let took = started.elapsed();
    ensure!(
        took.as_millis() >= 280,
        "4 writes at 10/s with a burst of 1 took only {took:?}"
    );
    ensure!(
        control.info("sleepy")?.throttled >= 1,
        "sleeping writers were not counted as throttled"
    );
    Ok(())
}

fn bad_limits_are_refused() -> Result<()> {
    module::ensure_loaded()?;
    let _room = TempRoom::create(spec("badlimit"))?;
    let control = Control::open()?;
    let good = limit("badlimit", abi::LIMIT_PER_UID, 5, 5, 0, 0);
    for (what, bad) in [
        ("an unknown scope", abi::RateLimit { scope: 2, ..good }),
        ("reserved flags", abi::RateLimit { flags: 1, ..good }),
        (
            "a reserved field",
            abi::RateLimit {
                reserved: 1,
                ..good
            },
        ),
    ] {
        ensure!(
            control.set_limit(&bad) == Err(Errno::EINVAL),
            "a limit with {what} was not refused with EINVAL"
        );
    }
    let unknown = limit("nosuchroom", abi::LIMIT_PER_UID, 5, 5, 0, 0);
    ensure!(
        control.set_limit(&unknown) == Err(Errno::ENOENT),
        "a limit on an unknown room was not ENOENT"
    );
    let info = control.info("badlimit")?;
    ensure!(info.msgs_per_sec == 0, "a refused limit was applied anyway");
    Ok(())
}

/// Senders the module tracks budgets for, per room (`MAX_SENDERS`).
const TRACKED_SENDERS: usize = 1024;

/// Per-file budgets for 1024 fds, then the 1025th and 1026th share the
/// overflow budget: the first of them gets its burst, the second nothing.
fn senders_beyond_the_table_share_one_budget() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    module::ensure_loaded()?;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let need = (TRACKED_SENDERS + 64) as u64;
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, need.max(soft), need.max(hard))?;
    }
    let room = TempRoom::create(spec("overflow"))?;
    // 10 bytes of burst refilling at 1 byte/s: a spent budget stays spent
    // (not idle, so not forgotten) for the 10 s this test takes at most.
    Control::open()?.set_limit(&limit("overflow", abi::LIMIT_PER_FILE, 0, 0, 1, 10))?;
    let mut writers = Vec::new();
    for n in 0..TRACKED_SENDERS {
        let mut writer = room.open_write_nonblock()?;
        ensure!(
            writes_until_eagain(&mut writer, 10, 2)? == 1,
            "tracked fd {n} did not get exactly its own burst"
        );
        writers.push(writer);
    }
    let mut first_extra = room.open_write_nonblock()?;
    ensure!(
        writes_until_eagain(&mut first_extra, 10, 2)? == 1,
        "the first untracked fd did not get the overflow budget's burst"
    );
    let mut second_extra = room.open_write_nonblock()?;
    ensure!(
        writes_until_eagain(&mut second_extra, 10, 2)? == 0,
        "the second untracked fd got a budget of its own"
    );
    let info = Control::open()?.info("overflow")?;
    ensure!(
        info.msgs_in == TRACKED_SENDERS as u64 + 1,
        "{} messages went in",
        info.msgs_in
    );
    Ok(())
}
