//! Loading and unloading kchat.ko, and the tests of that.

use crate::Test;
use anyhow::{bail, ensure, Context, Result};
use nix::{
    errno::Errno,
    kmod::{delete_module, finit_module, DeleteModuleFlags, ModuleInitFlags},
};
use std::{
    ffi::{CStr, CString},
    fs::File,
    os::fd::AsFd,
    path::Path,
};

pub const TESTS: &[Test] = &[
    (
        "module::loads_and_registers_its_major",
        loads_and_registers_its_major,
    ),
    (
        "module::unload_is_refused_while_a_file_is_open",
        unload_is_refused_while_a_file_is_open,
    ),
    (
        "module::unloads_and_removes_every_trace",
        unloads_and_removes_every_trace,
    ),
    ("module::loads_again_after_unload", loads_again_after_unload),
];

const NAME: &str = "kchat";

pub fn is_loaded() -> bool {
    Path::new("/sys/module/kchat").exists()
}

/// Loads kchat.ko (from `KCHAT_KMOD`) unless it is loaded.
pub fn ensure_loaded() -> Result<()> {
    if is_loaded() {
        return Ok(());
    }
    load_with(c"")
}

/// Loads kchat.ko with module parameters; an error carries the `Errno`.
pub fn load_with(params: &CStr) -> Result<()> {
    let path = std::env::var("KCHAT_KMOD").context("KCHAT_KMOD must name kchat.ko")?;
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    finit_module(file.as_fd(), params, ModuleInitFlags::empty())?;
    Ok(())
}

/// One unload attempt.
pub fn try_unload() -> nix::Result<()> {
    unload()
}

/// Unloads kchat unless it is not loaded.
pub fn ensure_unloaded() -> Result<()> {
    if !is_loaded() {
        return Ok(());
    }
    unload().context("unloading kchat")
}

fn unload() -> nix::Result<()> {
    let name = CString::new(NAME).expect("static name has no NUL");
    delete_module(&name, DeleteModuleFlags::O_NONBLOCK)
}

/// The major kchat registered, from /proc/devices.
pub fn major() -> Result<Option<u32>> {
    let devices = std::fs::read_to_string("/proc/devices")?;
    Ok(devices
        .lines()
        .filter_map(|line| line.trim().split_once(' '))
        .find(|(_, name)| *name == NAME)
        .and_then(|(major, _)| major.parse().ok()))
}

fn loads_and_registers_its_major() -> Result<()> {
    ensure_unloaded()?;
    ensure_loaded()?;
    ensure!(is_loaded(), "/sys/module/kchat is missing after loading");
    ensure!(major()?.is_some(), "/proc/devices lists no kchat major");
    ensure!(
        Path::new("/sys/class/kchat").is_dir(),
        "/sys/class/kchat is missing"
    );
    Ok(())
}

fn unload_is_refused_while_a_file_is_open() -> Result<()> {
    ensure_loaded()?;
    let control = File::options()
        .read(true)
        .write(true)
        .open(crate::control::PATH)?;
    match unload() {
        Err(Errno::EWOULDBLOCK) => {}
        Err(other) => {
            bail!("unload with the control node open failed with {other}, not EWOULDBLOCK")
        }
        Ok(()) => bail!("kchat unloaded while its control node was open"),
    }
    ensure!(is_loaded(), "kchat is gone although the unload was refused");
    drop(control);
    unload().context("unload after the last close")?;
    Ok(())
}

fn unloads_and_removes_every_trace() -> Result<()> {
    ensure_loaded()?;
    unload().context("unloading kchat")?;
    ensure!(!is_loaded(), "/sys/module/kchat is still there");
    ensure!(major()?.is_none(), "/proc/devices still lists kchat");
    ensure!(
        !Path::new("/sys/class/kchat").exists(),
        "/sys/class/kchat is still there"
    );
    ensure!(
        !Path::new(crate::control::PATH).exists(),
        "{} is still there",
        crate::control::PATH
    );
    Ok(())
}

fn loads_again_after_unload() -> Result<()> {
    ensure_unloaded()?;
    ensure_loaded()?;
    ensure!(
        Path::new(crate::control::PATH).exists(),
        "no control node after reloading"
    );
    ensure_unloaded()?;
    ensure_loaded()?;
    ensure!(
        Path::new(crate::control::PATH).exists(),
        "no control node after a second reload"
    );
    Ok(())
}
