//! `cargo xtask dashboard`: draws `docs/dashboard.png`, the Grafana
//! dashboard with data from a VM run (Grafana itself is not in the package
//! registries this project may use). `xtask/vm/dashboard.sh` runs kchatd,
//! Prometheus and traffic in the guest and evaluates the dashboard's
//! queries; `kchat-dashplot render` draws them here.

use crate::{bootstrap, kernel, kmod, paths, process, vm};
use anyhow::Result;
use std::{
    path::Path,
    process::{Command, ExitCode},
    time::Duration,
};

/// Runs the traffic and queries in the VM; returns the recording's path,
/// or `None` after printing why the run failed.
pub fn record(kernel: &kernel::Kernel, phase_seconds: u64) -> Result<Option<std::path::PathBuf>> {
    let script = format!(
        "KCHAT_PHASE_SECONDS={phase_seconds} KCHAT_OUT=/run/kchat-vm/dashboard.json \
         KCHAT_BIN={} bash {}",
        paths::target().join("debug").display(),
        paths::root().join("xtask/vm/dashboard.sh").display()
    );
    let run = vm::run(
        kernel,
        &vm::VmArgs::scripted(Duration::from_secs(300 + 3 * phase_seconds)),
        Some(&script),
        true,
    )?;
    if !run.passed() {
        eprint!("dashboard: {}", run.verdict(20));
        return Ok(None);
    }
    Ok(Some(run.dir.join("dashboard.json")))
}

pub fn build() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    process::run(
        Command::new(cargo)
            .args(["build", "--locked"])
            .args(["-p", "kchatd", "-p", "kchatctl", "-p", "kchat-bridge"])
            .args(["-p", "kchat-dashplot"])
            .current_dir(paths::root()),
    )
}

pub fn render(recording: &Path, png: &Path) -> Result<()> {
    process::run(
        Command::new(paths::target().join("debug/kchat-dashplot"))
            .arg("render")
            .arg(recording)
            .arg("--out")
            .arg(png),
    )
}

pub fn run() -> Result<ExitCode> {
    bootstrap::ensure()?;
    let kernel = kernel::ensure(kernel::Variant::Debug)?;
    kmod::build(&kernel)?;
    build()?;
    eprintln!("dashboard: kchatd, Prometheus and traffic in the VM (about two minutes)");
    let Some(recording) = record(&kernel, 30)? else {
        return Ok(ExitCode::FAILURE);
    };
    render(&recording, &paths::root().join("docs/dashboard.png"))?;
    Ok(ExitCode::SUCCESS)
}
