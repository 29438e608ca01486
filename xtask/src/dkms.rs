//! `kchat-dkms`: the module's sources as a Debian package that DKMS builds
//! for each installed kernel (`cargo xtask deb` makes it beside
//! `kchat.deb`), and its tests: the real `dkms` building the packaged
//! sources against a test kernel's build tree, in a private DKMS tree so
//! the host's own DKMS state is left alone, and the refusals of kernels it
//! cannot build for.

use crate::{kernel::Kernel, paths, process};
use anyhow::{bail, ensure, Context, Result};
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The module's package and DKMS name.
const NAME: &str = "kchat";

/// The version of the package and of the sources it holds: the workspace's.
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Builds `target/deb/kchat-dkms_VERSION_all.deb`; returns its path.
pub fn build_package() -> Result<PathBuf> {
    let out = paths::target().join("deb");
    let stage = out.join("dkms-root");
    let _ = fs::remove_dir_all(&stage);
    let src = stage.join(format!("usr/src/{NAME}-{}", version()));
    stage_sources(&src)?;
    let deb = out.join(format!("{NAME}-dkms_{}_all.deb", version()));
    build_deb(
        &stage,
        "deploy/dkms/debian",
        &["control", "postinst", "prerm"],
        &[("@VERSION@", version())],
        &deb,
    )?;
    Ok(deb)
}

/// Writes `stage`'s `DEBIAN/` from the templates in `templates` (the
/// control file, then maintainer scripts), with `replace` applied, and
/// builds `deb` from `stage`.
fn build_deb(
    stage: &Path,
    templates: &str,
    files: &[&str],
    replace: &[(&str, &str)],
    deb: &Path,
) -> Result<()> {
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let templates = paths::root().join(templates);
    for name in files {
        let mut text = fs::read_to_string(templates.join(name))
            .with_context(|| format!("reading {}", templates.join(name).display()))?;
        for (from, to) in replace {
            text = text.replace(from, to);
        }
        let path = debian.join(name);
        fs::write(&path, text)?;
        set_mode(&path, if *name == "control" { 0o644 } else { 0o755 })?;
    }
    process::output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(stage)
            .arg(deb),
    )?;
    Ok(())
}

/// Packages the `kchat.ko` DKMS built for `kernel` as
/// `kchat-modules-RELEASE_VERSION_ARCH.deb`, the binary package `dkms
/// mkbmdeb` made before dkms 3 dropped it: the module where DKMS installs
/// it, and `depmod` on install and removal. For machines that run one
/// kernel and build nothing; the tests install it on the line whose
/// emulated guest is too slow to compile the module.
pub fn modules_package(kernel: &Kernel, ko: &Path) -> Result<PathBuf> {
    let release = release(kernel)?;
    let out = paths::target().join("deb");
    let stage = out.join(format!("modules-root-{release}"));
    let _ = fs::remove_dir_all(&stage);
    copy(
        ko,
        &stage.join(format!("lib/modules/{release}/updates/dkms/{NAME}.ko")),
        0o644,
    )?;
    let arch = process::stdout(Command::new("dpkg").arg("--print-architecture"))?;
    let deb = out.join(format!("{NAME}-modules-{release}_{}_{arch}.deb", version()));
    build_deb(
        &stage,
        "deploy/dkms/modules",
        &["control", "postinst", "postrm"],
        &[
            ("@VERSION@", version()),
            ("@RELEASE@", &release),
            ("@ARCH@", &arch),
        ],
        &deb,
    )?;
    fs::remove_dir_all(&stage)?;
    Ok(deb)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// The sources DKMS builds from, laid out as in the checkout (the module
/// includes `../uapi` and `../kcore` files by path): `kmod/` without its
/// fixtures and build products, the included files, `dkms.conf` and
/// `dkms-build`.
fn stage_sources(src: &Path) -> Result<()> {
    let root = paths::root();
    copy_module_tree(&root.join("kmod"), &src.join("kmod"))?;
    for file in [
        "uapi/src/abi.rs",
        "uapi/src/name.rs",
        "kcore/src/rate.rs",
        "kcore/src/ring.rs",
        "kcore/src/slowest.rs",
    ] {
        copy(&root.join(file), &src.join(file), 0o644)?;
    }
    let conf =
        fs::read_to_string(root.join("deploy/dkms/dkms.conf"))?.replace("@VERSION@", version());
    fs::write(src.join("dkms.conf"), conf)?;
    copy(
        &root.join("deploy/dkms/dkms-build"),
        &src.join("dkms-build"),
        0o755,
    )?;
    // Every `#[path]` the module names must be in the package.
    let main = fs::read_to_string(root.join("kmod/kchat_main.rs"))?;
    for line in main.lines() {
        if let Some(path) = line
            .trim()
            .strip_prefix("#[path = \"")
            .and_then(|rest| rest.strip_suffix("\"]"))
        {
            let staged = src.join("kmod").join(path);
            ensure!(
                staged.exists(),
                "kmod/kchat_main.rs includes {path}, which the DKMS package does not hold: \
                 add it to xtask/src/dkms.rs"
            );
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    set_mode(to, mode)
}

/// Sources only: Rust and C files (not Kbuild's generated `*.mod.c`),
/// `Kbuild` and the `Makefile`; the test fixtures stay out.
fn copy_module_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            if name != "fixtures" && !name.starts_with('.') {
                copy_module_tree(&path, &to.join(&name))?;
            }
            continue;
        }
        let source = name == "Kbuild"
            || name == "Makefile"
            || name.ends_with(".rs")
            || (name.ends_with(".c") && !name.ends_with(".mod.c"));
        if source {
            copy(&path, &to.join(&name), 0o644)?;
        }
    }
    Ok(())
}

/// A private DKMS: the package's sources unpacked into `dir`, with dkms's
/// own trees there too.
struct PrivateDkms {
    dir: PathBuf,
}

impl PrivateDkms {
    fn new(deb: &Path, name: &str) -> Result<Self> {
        let dir = paths::target().join("dkms").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        process::output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir))?;
        fs::create_dir_all(dir.join("dkms"))?;
        let dkms = PrivateDkms { dir };
        dkms.run(&["add", "-m", NAME, "-v", version()], &[])?;
        Ok(dkms)
    }

    fn trees(&self) -> [String; 4] {
        [
            "--sourcetree".into(),
            self.dir.join("usr/src").display().to_string(),
            "--dkmstree".into(),
            self.dir.join("dkms").display().to_string(),
        ]
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Command> {
        let mut cmd = crate::kernel::kbuild_command("dkms");
        cmd.args(args)
            .args(self.trees())
            .env("RUSTUP_TOOLCHAIN", paths::toolchain()?);
        for (key, value) in env {
            cmd.env(key, value);
        }
        Ok(cmd)
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
        let out = process::output(&mut self.command(args, env)?)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `dkms build` for `release` against `kdir`: its exit code, what it
    /// printed, and the build's make.log.
    fn build(
        &self,
        release: &str,
        kdir: &Path,
        env: &[(&str, &str)],
    ) -> Result<(Option<i32>, String)> {
        let kdir = kdir.display().to_string();
        let out = self
            .command(
                &[
                    "build",
                    "-m",
                    NAME,
                    "-v",
                    version(),
                    "-k",
                    release,
                    "--kernelsourcedir",
                    &kdir,
                ],
                env,
            )?
            .output()
            .context("running dkms (cargo xtask bootstrap installs it)")?;
        let log = fs::read_to_string(
            self.dir
                .join("dkms")
                .join(NAME)
                .join(version())
                .join("build/make.log"),
        )
        .unwrap_or_default();
        Ok((
            out.status.code(),
            format!(
                "{}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

/// The test kernel's release (`uname -r` in the guest).
fn release(kernel: &Kernel) -> Result<String> {
    let path = kernel.build_dir.join("include/config/kernel.release");
    Ok(fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

/// Builds the package's sources with the real `dkms` against `kernel`'s
/// build tree; returns the `kchat.ko` it made.
pub fn build_against(kernel: &Kernel, deb: &Path) -> Result<PathBuf> {
    let dkms = PrivateDkms::new(deb, &format!("{}-{}", kernel.line, kernel.variant))?;
    let release = release(kernel)?;
    let (code, output) = dkms.build(&release, &kernel.build_dir, &[])?;
    ensure!(
        code == Some(0),
        "dkms build for {release} failed ({code:?}):\n{output}"
    );
    let ko = find(&dkms.dir.join("dkms").join(NAME), "kchat.ko")?
        .with_context(|| format!("dkms build for {release} made no kchat.ko:\n{output}"))?;
    // Out of the private tree, which the next build replaces.
    let kept = paths::target()
        .join("dkms")
        .join(format!("kchat-{}-{}.ko", kernel.line, kernel.variant));
    fs::copy(&ko, &kept)?;
    Ok(kept)
}

fn find(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(found) = find(&path, name)? {
                return Ok(Some(found));
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The kernels kchat-dkms cannot build for are refused with a message that
/// names what is missing, through the real `dkms`: a kernel without Rust
/// (skipped as not applicable, exit 77), one without its Rust metadata,
/// and a rustc other than the kernel's.
pub fn refusals(kernel: &Kernel, deb: &Path) -> Result<()> {
    let dkms = PrivateDkms::new(deb, "refusals")?;
    let release = release(kernel)?;
    let fake = paths::target().join("dkms/fake-kernel");
    let _ = fs::remove_dir_all(&fake);
    fs::create_dir_all(fake.join("include"))?;
    let real_config = fs::read_to_string(kernel.build_dir.join(".config"))?;

    let without_rust: String = real_config
        .lines()
        .filter(|l| !l.starts_with("CONFIG_RUST"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(fake.join(".config"), without_rust)?;
    let (code, output) = dkms.build(&release, &fake, &[])?;
    ensure!(
        code == Some(77) && output.contains("BUILD_EXCLUSIVE"),
        "a kernel without CONFIG_RUST was not skipped as not applicable ({code:?}):\n{output}"
    );

    fs::write(fake.join(".config"), &real_config)?;
    let (code, output) = dkms.build(&release, &fake, &[])?;
    ensure!(
        code != Some(0) && output.contains(&format!("install linux-lib-rust-{release}")),
        "a kernel without its Rust metadata was not refused by name ({code:?}):\n{output}"
    );

    let wrong = fake.join("rustc-1.85.1");
    fs::write(
        &wrong,
        "#!/bin/sh\necho 'rustc 1.85.1 (4eb161250 2025-03-15)'\n",
    )?;
    set_mode(&wrong, 0o755)?;
    let wrong_path = wrong.display().to_string();
    let (code, output) = dkms.build(&release, &kernel.build_dir, &[("RUSTC", &wrong_path)])?;
    ensure!(
        code != Some(0) && output.contains("but") && output.contains("rustc 1.85.1"),
        "a rustc other than the kernel's was not refused by name ({code:?}):\n{output}"
    );
    Ok(())
}

/// The package holds the sources, `dkms.conf` and the maintainer scripts.
pub fn check_package(deb: &Path) -> Result<()> {
    let contents = process::stdout(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let src = format!("./usr/src/{NAME}-{}/", version());
    for want in [
        "dkms.conf",
        "dkms-build",
        "kmod/Kbuild",
        "kmod/kchat_main.rs",
        "kmod/compat/mod.rs",
        "kmod/glue.c",
        "uapi/src/abi.rs",
        "kcore/src/ring.rs",
    ] {
        ensure!(
            contents.contains(&format!("{src}{want}")),
            "{} lacks {src}{want}",
            deb.display()
        );
    }
    for unwanted in ["fixtures", ".ko", ".o\n", ".mod.c", ".cmd"] {
        if contents.contains(unwanted) {
            bail!(
                "{} holds build products or fixtures ({unwanted})",
                deb.display()
            );
        }
    }
    let fields = process::stdout(Command::new("dpkg-deb").arg("-f").arg(deb).args([
        "Package",
        "Depends",
        "Architecture",
    ]))?;
    ensure!(
        fields.contains("kchat-dkms") && fields.contains("dkms") && fields.contains("all"),
        "unexpected control fields: {fields}"
    );
    Ok(())
}
