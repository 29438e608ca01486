//! The test kernels: two lines, Debian's linux-source-6.12 (installed from
//! the machine's own suites) and linux-source-7.3 (fetched from
//! trixie-backports, see [`crate::debsuite`]), each configured as
//! tinyconfig plus `xtask/vm/kernel.config` (and `kasan.config` for the
//! KASAN variant), built with clang and the pinned rustc into the cache,
//! keyed by everything that changes the result.

use crate::{bootstrap, debsuite, paths, process};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

/// Bump when the build recipe below changes in a way the other inputs miss.
const RECIPE: &str = "kchat-kernel-recipe-1";
const DONE_MARKER: &str = ".kchat-build-complete";

/// Which kernel line: the LTS the project started on, and the newer line
/// distributions ship with Rust enabled.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Line {
    /// Linux 6.12 LTS (Debian's linux-source-6.12), built with the
    /// distribution's clang.
    #[value(name = "6.12")]
    V6_12,
    /// Linux 7.3 (Debian's linux-source-7.3 from trixie-backports), built
    /// with clang 19: 7.x needs LLVM 17 or later, bookworm's default is 14.
    #[value(name = "7.3")]
    V7_3,
}

impl Line {
    /// The line of the demo, `cargo xtask vm` and the debug suites.
    pub const DEFAULT: Line = Line::V7_3;

    pub fn name(self) -> &'static str {
        match self {
            Line::V6_12 => "6.12",
            Line::V7_3 => "7.3",
        }
    }

    fn source_package(self) -> &'static str {
        match self {
            Line::V6_12 => "linux-source-6.12",
            Line::V7_3 => "linux-source-7.3",
        }
    }

    /// The suite a line's source comes from when the machine does not
    /// install from it (`None`: `cargo xtask bootstrap` installs it).
    fn fetched_from(self) -> Option<&'static str> {
        match self {
            Line::V6_12 => None,
            Line::V7_3 => Some("trixie-backports"),
        }
    }

    /// `LLVM=` for Kbuild: "1" takes `clang`, "-19" takes `clang-19`.
    fn llvm(self) -> &'static str {
        match self {
            Line::V6_12 => "1",
            Line::V7_3 => "-19",
        }
    }

    fn llvm_suffix(self) -> &'static str {
        self.llvm().strip_prefix('1').unwrap_or(self.llvm())
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which test kernel.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Variant {
    /// SMP, PREEMPT, lockdep, DEBUG_ATOMIC_SLEEP, kmemleak: fast under TCG.
    Debug,
    /// The debug kernel plus KASAN: about ten times slower under TCG.
    Kasan,
    /// The debug kernel with lock validation, debug objects and kmemleak off
    /// again: what `cargo xtask bench` measures on.
    Bench,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Debug => "debug",
            Variant::Kasan => "kasan",
            Variant::Bench => "bench",
        }
    }

    /// Config fragments, merged in order over tinyconfig.
    fn fragments(self) -> &'static [&'static str] {
        match self {
            Variant::Debug => &["xtask/vm/kernel.config"],
            Variant::Kasan => &["xtask/vm/kernel.config", "xtask/vm/kasan.config"],
            Variant::Bench => &["xtask/vm/kernel.config", "xtask/vm/bench.config"],
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A built test kernel.
pub struct Kernel {
    pub line: Line,
    pub variant: Variant,
    /// The `O=` build directory: `KDIR` for out-of-tree modules.
    pub build_dir: PathBuf,
    /// The unpacked source tree.
    pub source_dir: PathBuf,
    toolchain: String,
    bindgen: PathBuf,
    /// The libclang bindgen must load: the one of the clang that builds
    /// the kernel. bindgen would take the newest installed (19, once the
    /// 7.3 line's clang is there), which rejects 6.12's clang-14 flags.
    libclang: PathBuf,
}

impl Kernel {
    pub fn bzimage(&self) -> PathBuf {
        self.build_dir.join("arch/x86/boot/bzImage")
    }

    /// `make` in the kernel's build system, with the toolchain the kernel was
    /// built with (modules must use the same rustc and compiler).
    pub fn make(&self) -> Command {
        let mut cmd = kbuild_make();
        cmd.env("RUSTUP_TOOLCHAIN", &self.toolchain)
            .arg("ARCH=x86_64")
            .arg(format!("LLVM={}", self.line.llvm()))
            .arg(format!("BINDGEN={}", self.bindgen.display()));
        cmd.env("LIBCLANG_PATH", &self.libclang);
        cmd
    }

    /// The kernel tree's rustfmt settings, used for `kmod/`.
    pub fn rustfmt_config(&self) -> PathBuf {
        self.source_dir.join(".rustfmt.toml")
    }
}

/// `make` for a kernel tree, without cargo's variables: they leak into
/// clippy-driver (CARGO_PKG_RUST_VERSION overrides the kernel's MSRV), and
/// the kernel build wants none of them.
pub fn kbuild_make() -> Command {
    kbuild_command("make")
}

/// `program` (make, or dkms running make) without cargo's variables.
pub fn kbuild_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("CARGO_") && n != "CARGO_HOME")
        {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Returns the default line's test kernel (the one `cargo xtask test` runs
/// its debug suites on), building it first if the cache has no build for
/// the current inputs.
pub fn ensure(variant: Variant) -> Result<Kernel> {
    ensure_line(Line::DEFAULT, variant)
}

/// Returns a line's test kernel, building it first if the cache has no
/// build for the current inputs.
pub fn ensure_line(line: Line, variant: Variant) -> Result<Kernel> {
    let toolchain = paths::toolchain()?;
    let bindgen = bootstrap::bindgen()?;
    let cache = paths::cache()?;
    let (version, tarball) = source(line, &cache)?;
    let source_dir = unpack(&cache, line.source_package(), &version, &tarball)?;
    let fragment_paths: Vec<PathBuf> = variant
        .fragments()
        .iter()
        .map(|f| paths::root().join(f))
        .collect();
    let mut fragment = String::new();
    for path in &fragment_paths {
        fragment +=
            &fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }

    let mut key = Sha256::new();
    for part in [
        RECIPE.to_owned(),
        variant.name().to_owned(),
        version.clone(),
        fragment.clone(),
        tool_version(
            Command::new("rustc")
                .env("RUSTUP_TOOLCHAIN", &toolchain)
                .arg("-vV"),
        )?,
        tool_version(Command::new(&bindgen).arg("--version"))?,
        tool_version(Command::new(format!("clang{}", line.llvm_suffix())).arg("--version"))?,
        tool_version(Command::new(format!("ld.lld{}", line.llvm_suffix())).arg("--version"))?,
    ] {
        key.update(part.as_bytes());
        key.update([0]);
    }
    let key: String = key
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let build_dir = cache
        .join("kernel")
        .join(format!("{version}-{variant}-{key}"));
    let libclang = libclang_of(&format!("clang{}", line.llvm_suffix()))?;
    let kernel = Kernel {
        libclang,
        line,
        variant,
        build_dir,
        source_dir,
        toolchain,
        bindgen,
    };
    if kernel.build_dir.join(DONE_MARKER).exists() && kernel.bzimage().exists() {
        return Ok(kernel);
    }
    build(&kernel, &fragment_paths, &fragment)?;
    Ok(kernel)
}

/// A line's source: its package version and the tarball inside.
fn source(line: Line, cache: &Path) -> Result<(String, PathBuf)> {
    let package = line.source_package();
    let tarball_in_package = format!("usr/src/{package}.tar.xz");
    let Some(suite) = line.fetched_from() else {
        let version =
            process::stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
                .with_context(|| format!("{package} is not installed (cargo xtask bootstrap)"))?;
        if version.is_empty() {
            bail!("{package} is not installed (cargo xtask bootstrap)");
        }
        return Ok((version, Path::new("/").join(tarball_in_package)));
    };
    let fetched = debsuite::fetch(cache, suite, package)?;
    // The tarball sits beside the .deb, taken out of it once per version.
    let tarball = fetched.deb.with_extension("tar.xz");
    if !tarball.exists() {
        let partial = fetched.deb.with_extension("tar.xz.partial");
        let mut extract = Command::new("sh");
        extract
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -xO \"./$2\" > \"$3\"")
            .arg("sh")
            .arg(&fetched.deb)
            .arg(&tarball_in_package)
            .arg(&partial);
        process::run(&mut extract).with_context(|| {
            format!(
                "taking {tarball_in_package} out of {}",
                fetched.deb.display()
            )
        })?;
        fs::rename(&partial, &tarball)?;
    }
    Ok((fetched.version, tarball))
}

fn tool_version(cmd: &mut Command) -> Result<String> {
    process::stdout(cmd)
}

/// Unpacks the Debian source tarball, again whenever the package version
/// changes. The path stays the same across versions: builds are keyed by
/// version anyway, and a stable path keeps the build's command lines stable.
fn unpack(cache: &Path, package: &str, version: &str, tarball: &Path) -> Result<PathBuf> {
    let dir = cache.join("src");
    let tree = dir.join(package);
    let marker = dir.join(format!("{package}.unpacked"));
    if fs::read_to_string(&marker).is_ok_and(|unpacked| unpacked == version) {
        return Ok(tree);
    }
    eprintln!("kernel: unpacking {} ({version})", tarball.display());
    let _ = fs::remove_file(&marker);
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing stale {}", tree.display()))?;
    }
    fs::create_dir_all(&dir)?;
    process::run(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(&dir),
    )?;
    fs::write(&marker, version)?;
    Ok(tree)
}

fn build(kernel: &Kernel, fragment_paths: &[PathBuf], fragment: &str) -> Result<()> {
    let started = Instant::now();
    let out = &kernel.build_dir;
    fs::create_dir_all(out)?;
    let log_path = out.join("kchat-build.log");
    eprintln!(
        "kernel: building the {} {} test kernel in {} (7 to 12 minutes on 2 cores: KASAN takes longest; log: {})",
        kernel.line,
        kernel.variant,
        out.display(),
        log_path.display()
    );
    let log = fs::File::create(&log_path)?;
    let src = &kernel.source_dir;
    let make = |args: &[&str]| -> Result<()> {
        let mut cmd = kernel.make();
        cmd.arg("-C")
            .arg(src)
            .arg(format!("O={}", out.display()))
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?);
        process::run(&mut cmd)
            .with_context(|| format!("kernel build failed; see {}", log_path.display()))
    };
    make(&["tinyconfig"])?;
    let mut merge = Command::new(src.join("scripts/kconfig/merge_config.sh"));
    merge
        .current_dir(out)
        .arg("-m")
        .arg("-O")
        .arg(out)
        .arg(out.join(".config"))
        .args(fragment_paths)
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    process::run(&mut merge)?;
    make(&["olddefconfig"])?;
    check_config(&out.join(".config"), fragment, src)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    make(&[&format!("-j{jobs}"), "all"])?;
    fs::write(out.join(DONE_MARKER), "")?;
    eprintln!("kernel: built in {:.0?}", started.elapsed());
    Ok(())
}

/// Fails when Kconfig silently dropped a requested option (an unmet
/// dependency, a toolchain that does not qualify for Rust). An option the
/// line's Kconfig does not define at all is not dropped but gone (7.x folded
/// `PROC_SYSCTL` into `SYSCTL`): one fragment serves both lines.
fn check_config(config: &Path, fragment: &str, src: &Path) -> Result<()> {
    let text = fs::read_to_string(config)?;
    let mut have = BTreeMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=')
            && key.starts_with("CONFIG_")
        {
            have.insert(key, value);
        } else if let Some(key) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            have.insert(key, "n");
        }
    }
    // Later fragments override earlier ones, as merge_config.sh does.
    let mut want = BTreeMap::new();
    for line in fragment.lines().map(str::trim) {
        if let Some((key, value)) = line.split_once('=')
            && key.starts_with("CONFIG_")
        {
            want.insert(key, value);
        } else if let Some(key) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            want.insert(key, "n");
        }
    }
    let mut wrong = Vec::new();
    for (key, want) in want {
        let got = have.get(key).copied().unwrap_or("n");
        if got != want {
            wrong.push((key, format!("{key}={want} (got {got})")));
        }
    }
    if !wrong.is_empty() {
        let defined = kconfig_symbols(src)?;
        wrong.retain(|(key, _)| {
            let known = defined.contains(key.trim_start_matches("CONFIG_"));
            if !known {
                eprintln!("kernel: {key} is not an option of this kernel; skipped");
            }
            known
        });
    }
    let wrong: Vec<String> = wrong.into_iter().map(|(_, text)| text).collect();
    if !wrong.is_empty() {
        bail!(
            "the kernel config did not take these options from its fragments (xtask/vm/*.config); \
             check their dependencies with `make menuconfig`:\n  {}",
            wrong.join("\n  ")
        );
    }
    Ok(())
}

/// Every symbol the tree's Kconfig files define.
fn kconfig_symbols(src: &Path) -> Result<std::collections::BTreeSet<String>> {
    let text = process::stdout(
        Command::new("grep")
            .args([
                "-rhoE",
                "--include=Kconfig*",
                "^(menu)?config [A-Za-z0-9_]+",
            ])
            .arg(src),
    )?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
        .collect())
}

/// The library directory of `clang`'s own LLVM (`/usr/lib/llvm-NN/lib`),
/// from the version it prints.
fn libclang_of(clang: &str) -> Result<PathBuf> {
    let text = process::stdout(Command::new(clang).arg("--version"))
        .with_context(|| format!("{clang} is missing (cargo xtask bootstrap)"))?;
    let major = text
        .split("clang version ")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .filter(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()))
        .with_context(|| format!("no version in `{clang} --version`: {text}"))?;
    let dir = PathBuf::from(format!("/usr/lib/llvm-{major}/lib"));
    if !dir.join("libclang.so").exists() {
        bail!(
            "no libclang for {clang} in {} (install libclang-{major}-dev)",
            dir.display()
        );
    }
    Ok(dir)
}
