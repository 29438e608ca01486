//! Where things live: the checkout, the build cache outside it, the pinned
//! toolchain.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The workspace root (the checkout).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// The cache for expensive, checkout-independent results (the test kernel).
///
/// Outside the checkout on purpose: CI clones into a fresh folder each run,
/// and the kernel build must survive that. `KCHAT_CACHE` overrides it.
pub fn cache() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KCHAT_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("kchat"));
    }
    let home = std::env::var_os("HOME").context("neither KCHAT_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/kchat"))
}

/// Scratch space for this checkout's build products (VM run folders).
pub fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The rustc channel pinned by `rust-toolchain.toml`, which the kernel and
/// the module must be built with.
pub fn toolchain() -> Result<String> {
    let file = root().join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    for line in text.lines() {
        if let Some(value) = line.trim().strip_prefix("channel") {
            let value = value
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            if !value.is_empty() {
                return Ok(value.to_owned());
            }
        }
    }
    bail!("{} names no channel", file.display())
}
