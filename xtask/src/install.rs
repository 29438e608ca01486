//! `cargo xtask install`: puts kchat on a machine (or under `--destdir`, for
//! packaging and for the test that checks what gets installed): binaries,
//! the module built for a given kernel, the systemd unit, udev rules,
//! sysusers/tmpfiles/modules-load snippets, the example config, man pages,
//! shell completions, the dashboards and alert rules.

use crate::{kernel, paths, process};
use anyhow::{bail, Context, Result};
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    /// Install under DIR instead of / (for packages and tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub destdir: PathBuf,
    /// The kernel build tree to build kchat.ko against (default: the
    /// running kernel's, /lib/modules/$(uname -r)/build).
    #[arg(long, value_name = "DIR")]
    pub kdir: Option<PathBuf>,
    /// Leave the module out (install it separately, e.g. per kernel).
    #[arg(long)]
    pub no_module: bool,
    /// Install debug builds (faster to build; for tests).
    #[arg(long)]
    pub debug: bool,
}

/// Where each deploy file goes, relative to the destination.
const FILES: &[(&str, &str, u32)] = &[
    (
        "deploy/systemd/kchatd.service",
        "usr/lib/systemd/system/kchatd.service",
        0o644,
    ),
    (
        "deploy/systemd/kchat-bridge.service",
        "usr/lib/systemd/system/kchat-bridge.service",
        0o644,
    ),
    (
        "deploy/udev/60-kchat.rules",
        "usr/lib/udev/rules.d/60-kchat.rules",
        0o644,
    ),
    (
        "deploy/modules-load.d/kchat.conf",
        "usr/lib/modules-load.d/kchat.conf",
        0o644,
    ),
    (
        "deploy/modprobe.d/kchat.conf",
        "usr/lib/modprobe.d/kchat.conf",
        0o644,
    ),
    (
        "deploy/sysusers.d/kchat.conf",
        "usr/lib/sysusers.d/kchat.conf",
        0o644,
    ),
    (
        "deploy/tmpfiles.d/kchat.conf",
        "usr/lib/tmpfiles.d/kchat.conf",
        0o644,
    ),
    (
        "dashboards/kchat.json",
        "usr/share/kchat/dashboards/kchat.json",
        0o644,
    ),
    (
        "dashboards/kchat-alerts.yml",
        "usr/share/kchat/dashboards/kchat-alerts.yml",
        0o644,
    ),
    // For the NATS server's admin: each node's user speaks only for itself.
    (
        "deploy/nats/nats-server.conf",
        "usr/share/kchat/nats/nats-server.conf",
        0o644,
    ),
];

const BINARIES: &[&str] = &["kchatd", "kchatctl", "kchat", "kchat-bridge"];

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))
}

/// Builds the module against `kdir`; returns it and the kernel release.
fn build_module(kdir: &Path) -> Result<(PathBuf, String)> {
    let release_file = kdir.join("include/config/kernel.release");
    let release = fs::read_to_string(&release_file)
        .with_context(|| {
            format!(
                "{} is not a prepared kernel build tree (no {}); pass --kdir, or --no-module",
                kdir.display(),
                release_file.display()
            )
        })?
        .trim()
        .to_owned();
    // The script DKMS runs: it checks the kernel's Rust, metadata and
    // rustc, and picks the clang the kernel was built with.
    let mut make = kernel::kbuild_command("sh");
    // The pinned toolchain unless the caller picked one: make runs in the
    // kernel tree, outside this checkout's rust-toolchain.toml.
    if std::env::var_os("RUSTUP_TOOLCHAIN").is_none() {
        make.env("RUSTUP_TOOLCHAIN", paths::toolchain()?);
    }
    make.current_dir(paths::root())
        .arg("deploy/dkms/dkms-build")
        .arg(&release)
        .arg(kdir);
    process::run(&mut make)?;
    Ok((paths::root().join("kmod/kchat.ko"), release))
}

pub fn run(args: &InstallArgs) -> Result<Vec<PathBuf>> {
    let root = paths::root();
    let dest = &args.destdir;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--locked"]).current_dir(root);
    if !args.debug {
        build.arg("--release");
    }
    for bin in BINARIES {
        build.args(["-p", bin]);
    }
    process::run(&mut build)?;
    let profile = if args.debug { "debug" } else { "release" };
    let mut plan: Vec<(PathBuf, String, u32)> = Vec::new();
    for bin in BINARIES {
        plan.push((
            paths::target().join(profile).join(bin),
            format!("usr/bin/{bin}"),
            0o755,
        ));
    }
    for (from, to, mode) in FILES {
        plan.push((root.join(from), (*to).to_owned(), *mode));
    }
    if !args.no_module {
        let kdir = match &args.kdir {
            Some(kdir) => kdir.clone(),
            None => {
                let release = process::stdout(Command::new("uname").arg("-r"))?;
                PathBuf::from(format!("/lib/modules/{}/build", release.trim()))
            }
        };
        let (module, release) = build_module(&kdir)?;
        plan.push((
            module,
            format!("lib/modules/{release}/extra/kchat.ko"),
            0o644,
        ));
    }
    let mut installed = Vec::new();
    for (from, to, mode) in plan {
        let to = dest.join(to);
        copy(&from, &to, mode)?;
        installed.push(to);
    }
    // The example configs, unless the machine has them: they are the
    // admin's. The bridge's may hold a NATS token: root's alone.
    for (name, mode) in [("kchatd.toml", 0o644), ("bridge.toml", 0o600)] {
        let config = dest.join("etc/kchat").join(name);
        if !config.exists() {
            copy(&root.join("deploy").join(name), &config, mode)?;
            installed.push(config);
        } else {
            eprintln!("install: keeping the existing {}", config.display());
        }
    }
    // Man pages and completions, generated from kchatctl's clap definitions.
    let kchatctl = dest.join("usr/bin/kchatctl");
    let man_dir = dest.join("usr/share/man/man1");
    fs::create_dir_all(&man_dir)?;
    process::run(
        Command::new(&kchatctl)
            .arg("man")
            .arg("--out-dir")
            .arg(&man_dir),
    )?;
    for page in fs::read_dir(&man_dir)? {
        installed.push(page?.path());
    }
    // kchatd(8) and kchat-bridge(8) from their clap definitions,
    // kchatd.toml(5) written by hand.
    for daemon in ["kchatd", "kchat-bridge"] {
        let man8 = dest.join(format!("usr/share/man/man8/{daemon}.8"));
        fs::create_dir_all(man8.parent().context("man8 dir")?)?;
        let page = process::stdout(Command::new(dest.join("usr/bin").join(daemon)).arg("--man"))?;
        fs::write(&man8, page)?;
        installed.push(man8);
    }
    let man5 = dest.join("usr/share/man/man5/kchatd.toml.5");
    fs::create_dir_all(man5.parent().context("man5 dir")?)?;
    copy(&root.join("deploy/man/kchatd.toml.5"), &man5, 0o644)?;
    installed.push(man5);
    for (shell, to) in [
        ("bash", "usr/share/bash-completion/completions/kchatctl"),
        ("zsh", "usr/share/zsh/vendor-completions/_kchatctl"),
        ("fish", "usr/share/fish/vendor_completions.d/kchatctl.fish"),
    ] {
        let script = process::stdout(Command::new(&kchatctl).args(["completions", shell]))?;
        if script.is_empty() {
            bail!("kchatctl printed no {shell} completions");
        }
        let to = dest.join(to);
        write(&to, script.as_bytes())?;
        installed.push(to);
    }
    eprintln!(
        "install: {} files under {}",
        installed.len(),
        dest.display()
    );
    if dest == Path::new("/") {
        eprintln!(
            "install: next: depmod -a; systemd-sysusers; systemd-tmpfiles --create; \
             udevadm control --reload; systemctl daemon-reload; systemctl enable --now kchatd"
        );
    }
    Ok(installed)
}
