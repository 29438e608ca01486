//! An unprivileged user trying to get around kchat's limits. What each
//! attempt runs into is in RELIABILITY.md; the tests for the control node,
//! room modes and forged identities live with their features (`control`,
//! `rooms`, `modes`), these cover the rest.

use crate::{
    client::{spec, Control, TempRoom},
    helper::{open_readers_as, write_once_as, NOBODY},
    module, Test,
};
use anyhow::{ensure, Result};
use kchat_uapi::abi;

pub const TESTS: &[Test] = &[
    (
        "abuse::more_processes_do_not_buy_more_rate",
        more_processes_do_not_buy_more_rate,
    ),
    (
        "abuse::readers_per_room_are_capped",
        readers_per_room_are_capped,
    ),
];

/// Twelve processes of one user, each with its own fd, share the user's
/// budget: no more writes go through than the burst allows.
fn more_processes_do_not_buy_more_rate() -> Result<()> {
    module::ensure_loaded()?;
    let room = TempRoom::create(spec("abuse-rate"))?;
    let mut limit = kchat_client::rate_limit(&room.name);
    // Three 100-byte messages of burst, refilling at 1 byte/s: no write
    // earns its way back in the seconds the test takes.
    limit.bytes_per_sec = 1;
    limit.byte_burst = 300;
    Control::open()?.set_limit(&limit)?;
    let mut accepted = 0;
    for _ in 0..12 {
        match write_once_as(&NOBODY, &room.path())?.as_str() {
            "ok" => accepted += 1,
            "EAGAIN" => {}
            other => anyhow::bail!("a write as nobody got {other}"),
        }
    }
    ensure!(
        accepted == 3,
        "{accepted} writes from 12 processes went through, not 3"
    );
    let info = Control::open()?.info(&room.name)?;
    ensure!(
        info.msgs_in == 3 && info.throttled == 9,
        "msgs_in {} throttled {}",
        info.msgs_in,
        info.throttled
    );
    Ok(())
}

/// Opening a room over and over stops at a quarter of `max_readers` for
/// one uid and at `max_readers` in all, with EUSERS: readers (each a little
/// kernel memory) cannot be multiplied at will, and one user cannot take
/// every slot of a shared room.
fn readers_per_room_are_capped() -> Result<()> {
    module::ensure_loaded()?;
    let control = Control::open()?;
    let before = control.limits()?;
    let room = TempRoom::create(spec("abuse-readers"))?;
    let capped = abi::GlobalLimits {
        max_readers: 16,
        ..before
    };
    control.set_limits(&capped)?;
    let result = (|| -> Result<_> {
        let nobody = open_readers_as(&NOBODY, &room.path(), 100)?;
        // Root with CAP_SYS_ADMIN is exempt from the share, not the total.
        let root = open_readers_as(&[], &room.path(), 100)?;
        Ok((nobody, root))
    })();
    control.set_limits(&before)?;
    let (nobody, root) = result?;
    ensure!(
        nobody == (4, "EUSERS".to_owned()),
        "one uid opened {nobody:?}: expected its share, 4 of 16, then EUSERS"
    );
    ensure!(
        root == (16, "EUSERS".to_owned()),
        "root opened {root:?}: expected all 16, then EUSERS"
    );
    Ok(())
}
