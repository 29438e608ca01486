//! `cargo xtask demo`: builds what it needs, boots the VM and runs
//! `xtask/vm/demo.sh`, which shows kchat to a person.

use crate::{bootstrap, kernel, kmod, paths, process, vm};
use anyhow::Result;
use std::{
    process::{Command, ExitCode},
    time::Duration,
};

pub fn run() -> Result<ExitCode> {
    bootstrap::ensure()?;
    let kernel = kernel::ensure(kernel::Variant::Debug)?;
    kmod::build(&kernel)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    process::run(
        Command::new(cargo)
            .args(["build", "--locked", "-p", "kchatd", "-p", "kchatctl"])
            .current_dir(paths::root()),
    )?;
    let script = format!(
        "KCHAT_BIN={} bash {}",
        paths::target().join("debug").display(),
        paths::root().join("xtask/vm/demo.sh").display()
    );
    eprintln!("demo: booting the test VM (software emulation: give it a few seconds)");
    let run = vm::run(
        &kernel,
        &vm::VmArgs::scripted(Duration::from_secs(300)),
        Some(&script),
        true,
    )?;
    if run.passed() {
        return Ok(ExitCode::SUCCESS);
    }
    eprint!("demo: {}", run.verdict(20));
    Ok(ExitCode::FAILURE)
}
