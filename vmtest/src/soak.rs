//! Soak: the stress traffic (writers, churning readers, processes killed
//! mid-read and mid-write) for `KCHAT_SOAK_SECONDS` (CI: 20), while kchatd
//! is reloaded every round and restarted every third (every sixth with
//! SIGKILL), a room is deleted under its reader every round (it must drain,
//! then end), and the module is asked to unload every round (it must refuse
//! while rooms are open). Then: every reader session accounted for exactly
//! (as in `stress`), kchatd's config room intact, and kernel slab memory
//! back near where it started. `cargo xtask soak --minutes N` runs it long.

use crate::{
    client::{spec, Control, TempRoom},
    daemon::Kchatd,
    module, stress, Test,
};
use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use std::{
    io::{Read, Write},
    time::Duration,
};

pub const TESTS: &[Test] = &[(
    "soak::traffic_restarts_deletes_and_unload_attempts",
    traffic_restarts_deletes_and_unload_attempts,
)];

const DEFAULT_SECONDS: u64 = 20;
/// Slab growth tolerated after everything is closed and caches dropped.
const SLAB_SLACK_KIB: u64 = 4096;

fn slab_kib() -> Result<u64> {
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping caches")?;
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no Slab in /proc/meminfo")
}

/// Whether the kernel runs with KASAN (it says so at boot).
fn kasan() -> Result<bool> {
    let log = std::process::Command::new("dmesg")
        .output()
        .context("dmesg")?;
    Ok(String::from_utf8_lossy(&log.stdout).contains("KernelAddressSanitizer initialized"))
}

/// A room deleted under its reader: what was written drains, then EOF.
fn delete_under_a_reader() -> Result<()> {
    let room = TempRoom::create(spec("soak-temp"))?;
    let mut reader = room.open_read()?;
    room.open_write()?.write_all(b"last words\n")?;
    room.delete()?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    ensure!(rest == b"last words\n", "a deleted room drained {rest:?}");
    Ok(())
}

fn traffic_restarts_deletes_and_unload_attempts() -> Result<()> {
    module::ensure_loaded()?;
    let seconds = std::env::var("KCHAT_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let slab_before = slab_kib()?;
    let dir = Kchatd::prepare("soak", "[rooms.soak-cfg]\npolicy = \"block\"\n")?;
    let mut daemon = Some(Kchatd::start(&dir)?);
    let (mut round, mut restarts, mut deletes, mut refusals) = (0u64, 0, 0, 0);
    let report = stress::traffic(Duration::from_secs(seconds), || {
        round += 1;
        let killed = stress::kill_a_reader_and_a_writer()?;
        delete_under_a_reader()?;
        deletes += 1;
        if module::try_unload().is_ok() {
            bail!("the module unloaded with rooms open");
        }
        refusals += 1;
        let running = daemon.take().context("no kchatd")?;
        if round % 3 == 0 {
            if round % 6 == 0 {
                running.signal(Signal::SIGKILL)?;
                drop(running);
            } else {
                running.stop()?;
            }
            daemon = Some(Kchatd::start(&dir)?);
            restarts += 1;
        } else {
            running.signal(Signal::SIGHUP)?;
            daemon = Some(running);
        }
        Ok(killed)
    })?;
    let daemon = daemon.context("no kchatd at the end")?;
    let room = daemon.room("soak-cfg")?;
    ensure!(
        room["origin"] == "config" && room["settings"]["policy"] == "block",
        "{room}"
    );
    daemon.stop()?;
    Control::open()?.delete("soak-cfg")?;
    let slab_after = slab_kib()?;
    eprintln!(
        "soak: {seconds} s, {} messages, {} reader sessions, {} processes killed, \
         {restarts} kchatd restarts, {deletes} rooms deleted under readers, \
         {refusals} unloads refused; slab {slab_before} -> {slab_after} KiB",
        report.sent, report.sessions, report.disruptions
    );
    // KASAN's quarantine holds freed objects back for a while, so slab use
    // says nothing there; kmemleak still checks for leaks on that kernel.
    if !kasan()? {
        ensure!(
            slab_after <= slab_before + SLAB_SLACK_KIB,
            "slab grew from {slab_before} to {slab_after} KiB"
        );
    }
    Ok(())
}
