//! Installs what building and testing kchat need, idempotently: Debian
//! packages, the pinned Rust toolchain's components, and bindgen. Prints what
//! it installs; takes well under a second when everything is present.

use crate::{
    paths,
    process::{self, show},
};
use anyhow::{bail, Context, Result};
use std::{path::PathBuf, process::Command};

/// Debian packages and why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("linux-source-6.12", "source of the test kernel"),
    ("qemu-system-x86", "the test VM"),
    ("clang", "compiles the kernel (KASAN with Rust needs clang)"),
    ("lld", "links the kernel (LLVM=1)"),
    ("llvm", "binutils for the kernel (LLVM=1)"),
    ("libclang-dev", "bindgen's libclang"),
    (
        "clang-19",
        "compiles the 7.3 test kernel (7.x needs LLVM 17 or later)",
    ),
    ("lld-19", "links the 7.3 test kernel"),
    ("llvm-19", "binutils for the 7.3 test kernel"),
    (
        "libclang-19-dev",
        "bindgen's libclang for the 7.3 test kernel",
    ),
    ("flex", "kernel build"),
    ("bison", "kernel build"),
    ("bc", "kernel build"),
    ("make", "kernel build"),
    ("xz-utils", "unpacks the kernel source"),
    ("libelf-dev", "kernel build (objtool)"),
    ("libssl-dev", "kernel build (sign-file)"),
    ("cpio", "kernel build"),
    ("kmod", "insmod/rmmod in the guest"),
    (
        "dkms",
        "builds the kchat-dkms package's sources in its test",
    ),
    ("iproute2", "loopback networking in the guest"),
    ("util-linux", "setpriv, setsid and mount in the guest"),
    ("procps", "ps, sysctl in the guest"),
    ("curl", "the demo scrapes kchatd's /metrics in the guest"),
    (
        "prometheus",
        "promtool checks the alert rules and dashboard queries",
    ),
    (
        "systemd",
        "systemd-analyze checks kchatd.service; PID 1 in the deploy VM test",
    ),
    (
        "udev",
        "applies /dev/kchat/* ownership in the deploy VM test",
    ),
    (
        "redis-server",
        "a peer in cargo xtask bench (Redis Pub/Sub)",
    ),
    ("nats-server", "a peer in cargo xtask bench (NATS core)"),
    ("fonts-dejavu-core", "the font of the benchmark plots"),
    (
        "groff-base",
        "checks that the man pages render without warnings",
    ),
    (
        "linux-perf",
        "cargo xtask bench --perf: where the time goes, in the VM",
    ),
];

/// The bindgen the kernel build uses; 6.12 is tested with 0.65+, and this is
/// the version the project pins.
const BINDGEN_VERSION: &str = "0.73.2";

/// The cargo-deb `cargo xtask deb` and the package test use.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Makes sure everything is installed.
pub fn ensure() -> Result<()> {
    ensure_packages()?;
    ensure_toolchain()?;
    bindgen()?;
    cargo_deb()?;
    Ok(())
}

fn ensure_packages() -> Result<()> {
    let names: Vec<&str> = PACKAGES.iter().map(|(name, _)| *name).collect();
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${binary:Package} ${db:Status-Abbrev}\n")
        .args(&names)
        .output()
        .context("could not run dpkg-query: kchat's set-up expects a Debian machine")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some("ii"))
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    let missing: Vec<&(&str, &str)> = PACKAGES
        .iter()
        .filter(|(name, _)| !installed.contains(name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bootstrap: installing Debian packages:");
    for (name, why) in &missing {
        eprintln!("  {name:<20} {why}");
    }
    if !is_root() {
        let list: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
        bail!(
            "not root: run `sudo apt-get install {}` and try again",
            list.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    process::run(apt(&["update", "-q"]).arg("-o=Dpkg::Use-Pty=0"))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(missing.iter().map(|(name, _)| *name));
    process::run(&mut install)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn ensure_toolchain() -> Result<()> {
    let channel = paths::toolchain()?;
    let wanted = ["rust-src", "rustfmt", "clippy"];
    let listing = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", &channel])
        .output()
        .context("could not run rustup: install it (https://rustup.rs) and try again")?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|component| !listing.lines().any(|line| line.starts_with(component)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "bootstrap: installing Rust {channel} with {}",
        missing.join(", ")
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", &channel, "--profile", "minimal"]);
    for component in &missing {
        cmd.args(["--component", component]);
    }
    process::run(&mut cmd)
}

/// The path of the pinned bindgen, installed with `cargo install` if missing.
pub fn bindgen() -> Result<PathBuf> {
    cargo_tool("bindgen-cli", "bindgen", BINDGEN_VERSION, "about 2 minutes")
}

/// The path of the pinned cargo-deb (`cargo xtask deb`), installed with
/// `cargo install` if missing.
pub fn cargo_deb() -> Result<PathBuf> {
    cargo_tool(
        "cargo-deb",
        "cargo-deb",
        CARGO_DEB_VERSION,
        "about 4 minutes",
    )
}

/// `binary` of `krate` at `version` in CARGO_HOME/bin, installed if it is
/// missing or another version.
fn cargo_tool(krate: &str, binary: &str, version: &str, takes: &str) -> Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let path = cargo_home.join("bin").join(binary);
    let out = Command::new(&path).arg("--version").output();
    if let Ok(out) = out
        && String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|word| word == version)
    {
        return Ok(path);
    }
    eprintln!("bootstrap: installing {krate} {version} (cargo install, {takes})");
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "--locked",
        "--force",
        krate,
        "--version",
        version,
    ])
    .env("RUSTUP_TOOLCHAIN", paths::toolchain()?)
    .env("CARGO_HOME", &cargo_home);
    process::run(&mut cmd).with_context(|| format!("installing {krate} with `{}`", show(&cmd)))?;
    Ok(path)
}
