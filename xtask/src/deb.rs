//! `cargo xtask deb`: the Debian package of kchat's userspace, made by
//! cargo-deb from the files `cargo xtask install --no-module` stages (so a
//! package and a plain install hold the same files). The module is built
//! per kernel with `cargo xtask install --kdir`, or by DKMS from the
//! `kchat-dkms` package made beside it ([`crate::dkms`]).

use crate::{bootstrap, install, paths, process};
use anyhow::{ensure, Context, Result};
use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

#[derive(clap::Args)]
pub struct DebArgs {
    /// Package debug builds (quicker to build; what the tests install).
    #[arg(long)]
    pub debug: bool,
}

/// Builds the package; returns its path.
pub fn build(debug: bool) -> Result<PathBuf> {
    let cargo_deb = bootstrap::cargo_deb()?;
    let out = paths::target().join("deb");
    let stage = out.join("root");
    let _ = std::fs::remove_dir_all(&stage);
    install::run(&install::InstallArgs {
        destdir: stage,
        kdir: None,
        no_module: true,
        debug,
    })?;
    let deb = out.join("kchat.deb");
    let mut cmd = Command::new(cargo_deb);
    // cargo-deb runs as a cargo subcommand: its first argument is "deb".
    cmd.args(["deb", "-p", "kchatd", "--no-build", "--output"])
        .arg(&deb)
        .current_dir(paths::root());
    if debug {
        // Debug binaries are big: keep their symbols, and use the system's
        // gzip at its fastest (cargo-deb's own gzip is Zopfli, minutes on
        // 120 MB), which the emulated guest also unpacks faster than xz.
        cmd.args([
            "--no-strip",
            "--fast",
            "--compress-type",
            "gz",
            "--compress-system",
        ]);
    }
    process::run(&mut cmd)?;
    Ok(deb)
}

/// The package holds every file an install does, with the fields a Debian
/// admin expects.
pub fn check(deb: &std::path::Path) -> Result<()> {
    let contents = process::stdout(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    for want in [
        "./usr/bin/kchatd",
        "./usr/bin/kchatctl",
        "./usr/bin/kchat",
        "./usr/lib/systemd/system/kchatd.service",
        "./usr/bin/kchat-bridge",
        "./usr/lib/systemd/system/kchat-bridge.service",
        "./usr/share/man/man8/kchat-bridge.8.gz",
        "./etc/kchat/bridge.toml",
        "./usr/lib/udev/rules.d/60-kchat.rules",
        "./usr/lib/sysusers.d/kchat.conf",
        "./usr/lib/tmpfiles.d/kchat.conf",
        "./usr/lib/modules-load.d/kchat.conf",
        "./usr/lib/modprobe.d/kchat.conf",
        // cargo-deb compresses man pages, as Debian policy asks.
        "./usr/share/man/man1/kchatctl.1.gz",
        "./usr/share/man/man8/kchatd.8.gz",
        "./usr/share/man/man5/kchatd.toml.5.gz",
        "./usr/share/bash-completion/completions/kchatctl",
        "./usr/share/kchat/dashboards/kchat.json",
        "./usr/share/kchat/nats/nats-server.conf",
        "./etc/kchat/kchatd.toml",
    ] {
        ensure!(
            contents.lines().any(|line| line.ends_with(want)),
            "the package lacks {want}"
        );
    }
    let fields = process::stdout(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .args(["Package", "Depends"]),
    )?;
    ensure!(fields.contains("Package: kchat"), "{fields}");
    ensure!(
        fields.contains("systemd") && fields.contains("libc6"),
        "dependencies: {fields}"
    );
    // The maintainer scripts and the config kept as a conffile.
    let info = process::stdout(Command::new("dpkg-deb").arg("--info").arg(deb))
        .context("reading the package's control part")?;
    for part in ["postinst", "prerm", "postrm", "conffiles"] {
        ensure!(info.contains(part), "the package has no {part}:\n{info}");
    }
    // Every maintainer script is valid shell once cargo-deb filled it in
    // (a placeholder in a comment once produced a broken postinst).
    for script in ["postinst", "prerm", "postrm"] {
        let text = process::stdout(Command::new("dpkg-deb").arg("--info").arg(deb).arg(script))?;
        let path = deb.with_file_name(format!("{script}.sh"));
        std::fs::write(&path, &text)?;
        process::run(Command::new("sh").arg("-n").arg(&path))
            .with_context(|| format!("the package's {script} is not valid shell"))?;
    }
    // The unit is enabled and restarted through deb-systemd-helper (which
    // keeps an admin's disable across upgrades), never by hand.
    let postinst = process::stdout(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg("postinst"),
    )?;
    ensure!(
        postinst.contains("deb-systemd-helper --quiet was-enabled kchatd.service")
            && postinst.contains("deb-systemd-invoke try-restart kchatd.service")
            && !postinst.contains("systemctl enable")
            && !postinst.contains("#DEBHELPER#"),
        "postinst does not handle kchatd.service through deb-systemd-helper:\n{postinst}"
    );
    Ok(())
}

pub fn run(args: DebArgs) -> Result<ExitCode> {
    bootstrap::ensure()?;
    let deb = build(args.debug)?;
    check(&deb)?;
    eprintln!("deb: {}", deb.display());
    let dkms = crate::dkms::build_package()?;
    crate::dkms::check_package(&dkms)?;
    eprintln!("deb: {}", dkms.display());
    Ok(ExitCode::SUCCESS)
}
