//! `cargo xtask demo`: builds what it needs, boots the VM and runs
//! `xtask/vm/demo.sh`, which shows kchat to a person.

use crate::{bootstrap, kernel, kmod, paths, vm};
use anyhow::Result;
use std::{process::ExitCode, time::Duration};

pub fn run() -> Result<ExitCode> {
    bootstrap::ensure()?;
    let kernel = kernel::ensure(kernel::Variant::Debug)?;
    kmod::build(&kernel)?;
    let script = format!("bash {}", paths::root().join("xtask/vm/demo.sh").display());
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
