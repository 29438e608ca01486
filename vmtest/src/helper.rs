//! The suite's own binary doubles as a helper process, so tests can try
//! things as another user or with fewer capabilities: `open_as` re-executes
//! it under `setpriv`, and it reports the errno of one `open(2)`.

use anyhow::{bail, ensure, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

const OPEN_VAR: &str = "KCHAT_VMTEST_HELPER_OPEN";

/// In a helper process, does its one job and returns its exit code.
pub fn run_if_requested() -> Option<ExitCode> {
    let path = std::env::var_os(OPEN_VAR)?;
    let outcome = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path);
    match outcome {
        Ok(_) => println!("opened"),
        Err(err) => println!(
            "{:?}",
            nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(0))
        ),
    }
    Some(ExitCode::SUCCESS)
}

/// Opens `path` read-write in a child run by `setpriv` with `setpriv_args`
/// (`--reuid=...`, `--bounding-set=...`); returns "opened" or the errno name.
pub fn open_as(path: &Path, setpriv_args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().context("finding the suite's own binary")?;
    let out = Command::new("setpriv")
        .args(setpriv_args)
        .arg("--")
        .arg(exe)
        .env(OPEN_VAR, path)
        .output()
        .context("running setpriv (util-linux)")?;
    if !out.status.success() {
        bail!(
            "helper under setpriv {setpriv_args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `setpriv` arguments that drop to nobody (65534) with no groups.
pub const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// Runs `script` with `sh -c` as nobody; fails unless it exits 0.
pub fn sh_as_nobody(script: &str) -> Result<()> {
    let status = Command::new("setpriv")
        .args(NOBODY)
        .args(["--", "sh", "-c", script])
        .status()
        .context("running setpriv (util-linux)")?;
    if !status.success() {
        bail!("`{script}` as nobody failed ({status})");
    }
    Ok(())
}

/// A binary of the workspace, built next to this suite.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the suite's own binary")?;
    let path = exe.with_file_name(name);
    ensure!(
        path.exists(),
        "{} is missing: build the workspace first",
        path.display()
    );
    Ok(path)
}

/// Polls `done` every 50 ms until it holds or `limit` passes.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}
