//! `cargo xtask bench`: runs `kchat-bench` in the test VM and keeps its
//! tables in `target/bench/latest.md` (copied into BENCHMARKS.md by hand,
//! with the machine it ran on).

use crate::{bootstrap, kernel, kmod, paths, process, vm};
use anyhow::{Context, Result};
use std::{
    process::{Command, ExitCode},
    time::Duration,
};

pub fn run(variant: kernel::Variant, extra: &[String]) -> Result<ExitCode> {
    bootstrap::ensure()?;
    let kernel = kernel::ensure(variant)?;
    let modules = kmod::build(&kernel)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    process::run(
        Command::new(cargo)
            .args(["build", "--release", "--locked", "-p", "kchat-bench"])
            .current_dir(paths::root()),
    )?;
    let bench = paths::target().join("release/kchat-bench");
    let script = format!(
        "insmod {} default_room= && {} {}",
        modules.kchat.display(),
        bench.display(),
        extra.join(" ")
    );
    eprintln!("bench: running in the VM ({variant} kernel, TCG)");
    let run = vm::run(
        &kernel,
        &vm::VmArgs::scripted(Duration::from_secs(1800)),
        Some(&script),
        true,
    )?;
    if !run.passed() {
        eprint!("bench: {}", run.verdict(20));
        return Ok(ExitCode::FAILURE);
    }
    let out = paths::target().join("bench");
    std::fs::create_dir_all(&out)?;
    let file = out.join("latest.md");
    std::fs::write(&file, &run.output).with_context(|| format!("writing {}", file.display()))?;
    eprintln!("bench: tables saved to {}", file.display());
    Ok(ExitCode::SUCCESS)
}
