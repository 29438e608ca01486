//! Builds `kmod/` (kchat.ko and the test fixtures) against the test kernel,
//! through clippy, and checks its formatting with the kernel's rustfmt
//! settings. Any compiler or clippy warning fails the build.

use crate::{kernel::Kernel, paths, process::show};
use anyhow::{bail, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The built modules.
pub struct Modules {
    pub kchat: PathBuf,
    pub fixtures: PathBuf,
}

pub fn dir() -> PathBuf {
    paths::root().join("kmod")
}

/// Builds kchat.ko and the fixtures; returns where they are.
pub fn build(kernel: &Kernel) -> Result<Modules> {
    let kmod = dir();
    let fixtures = kmod.join("fixtures");
    for module_dir in [&kmod, &fixtures] {
        // Always from clean: Kbuild skips up-to-date objects, and with them
        // the warnings this build must fail on. It takes seconds.
        let mut clean = kernel.make();
        clean
            .arg("-C")
            .arg(&kernel.build_dir)
            .arg(format!("M={}", module_dir.display()))
            .arg("clean");
        quiet_unless_warnings(&mut clean)?;
        let mut cmd = kernel.make();
        cmd.arg("-C")
            .arg(&kernel.build_dir)
            .arg(format!("M={}", module_dir.display()))
            .arg("CLIPPY=1")
            .arg("W=1")
            .arg("modules");
        quiet_unless_warnings(&mut cmd)?;
    }
    Ok(Modules {
        kchat: kmod.join("kchat.ko"),
        fixtures,
    })
}

/// Runs a Kbuild command; fails on a non-zero exit or any warning, and shows
/// the output only then.
fn quiet_unless_warnings(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let warned = text
        .lines()
        .any(|line| line.contains("warning:") || line.contains("warning["));
    if !out.status.success() || warned {
        eprintln!("{text}");
        bail!(
            "`{}` {}",
            show(cmd),
            if out.status.success() {
                "printed warnings"
            } else {
                "failed"
            }
        );
    }
    Ok(())
}

/// The module's Rust files: the crate roots, from which rustfmt follows
/// `mod` declarations.
fn crate_roots() -> Result<Vec<PathBuf>> {
    let mut roots = vec![dir().join("kchat_main.rs")];
    for entry in std::fs::read_dir(dir().join("fixtures"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            roots.push(path);
        }
    }
    roots.sort();
    Ok(roots)
}

/// `rustfmt --check` with the kernel's settings, as the kernel's own
/// `make rustfmtcheck` runs it.
pub fn rustfmt_check(kernel: &Kernel) -> Result<()> {
    rustfmt(kernel.rustfmt_config().as_path(), true)
}

fn rustfmt(config: &Path, check: bool) -> Result<()> {
    let mut cmd = Command::new("rustfmt");
    cmd.env("RUSTUP_TOOLCHAIN", paths::toolchain()?)
        .arg("--edition=2021")
        .arg("--config-path")
        .arg(config);
    if check {
        cmd.arg("--check");
    }
    cmd.args(crate_roots()?);
    crate::process::run(&mut cmd).context("kmod/ is not formatted: run `cargo xtask kmod-fmt`")
}

/// Formats `kmod/` with the kernel's settings.
pub fn rustfmt_fix(kernel: &Kernel) -> Result<()> {
    rustfmt(kernel.rustfmt_config().as_path(), false)
}
