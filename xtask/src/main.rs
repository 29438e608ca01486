//! `cargo xtask`: the one entry point for everything that is not plain
//! `cargo build` / `cargo test` in kchat: set-up, the test kernel, the
//! module, the VM, the full test run and the demo.

mod bench;
mod bootstrap;
mod compat_lines;
mod dashboard;
mod deb;
mod debsuite;
mod demo;
mod deploy;
mod dkms;
mod install;
mod kernel;
mod kmod;
mod libtest;
mod logcheck;
mod paths;
mod process;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kernel::{Line, Variant};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, boot and test kchat", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (Debian packages, rust-src,
    /// bindgen); quick when everything is there.
    Bootstrap,
    /// Build the test kernel into the cache (or reuse it) and print its path.
    Kernel {
        #[arg(long, value_enum, default_value_t = Variant::Debug)]
        variant: Variant,
        /// The kernel line.
        #[arg(long, value_enum, default_value_t = Line::DEFAULT)]
        line: Line,
    },
    /// Build kchat.ko and the test fixtures against the test kernel.
    Kmod {
        #[arg(long, value_enum, default_value_t = Variant::Debug)]
        variant: Variant,
        /// The kernel line.
        #[arg(long, value_enum, default_value_t = Line::DEFAULT)]
        line: Line,
    },
    /// Format kmod/ with the kernel's rustfmt settings.
    KmodFmt,
    /// Print how many lines of kmod/compat/ and glue.c each kernel line
    /// compiles (the table in docs/kernel-module.md).
    KmodLines,
    /// Boot the test kernel and run CMD in the guest (a shell without CMD).
    Vm(vm::VmArgs),
    /// Run every test: host tests, fmt, clippy, then the suite in the VM.
    Test(test::TestArgs),
    /// Boot the VM and show kchat working.
    Demo,
    /// The soak test alone, for longer than CI runs it (on both kernels).
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// The model-based test alone (random operation sequences on the
    /// module and on the reference model), on both kernels: longer than CI
    /// runs it, from a seed, or one logged case.
    Model(test::ModelArgs),
    /// Install kchat (binaries, module, systemd/udev files) on this machine
    /// or under --destdir.
    Install(install::InstallArgs),
    /// Build the Debian packages: the userspace (cargo-deb) into
    /// target/deb/kchat.deb, the module's DKMS sources into
    /// target/deb/kchat-dkms_VERSION_all.deb.
    Deb(deb::DebArgs),
    /// Build kchat-dkms, then build its sources with the real dkms against
    /// a test kernel (a private DKMS tree; the host's is left alone) and
    /// check its refusals; prints the kchat.ko DKMS made and the
    /// kchat-modules package of it (for machines running that kernel).
    Dkms {
        /// The kernel line.
        #[arg(long, value_enum, default_value_t = Line::DEFAULT)]
        line: Line,
        #[arg(long, value_enum, default_value_t = Variant::Debug)]
        variant: Variant,
    },
    /// Draw docs/dashboard.png: the Grafana dashboard's queries, evaluated
    /// by Prometheus over kchatd and traffic in the VM.
    Dashboard,
    /// Measure kchat against a pipe tee, Redis and NATS in the VM (bench
    /// kernel); tables, JSON and plots go to benchmarks/.
    Bench {
        /// The kernel to measure on: `bench` (no lock validation or debug
        /// objects) unless comparing with the debug kernel on purpose.
        #[arg(long, value_enum, default_value_t = Variant::Bench)]
        variant: Variant,
        /// Record a system-wide profile with perf while it runs
        /// (benchmarks/profile.txt).
        #[arg(long)]
        perf: bool,
        /// The cross-node row instead: two guests linked, a writer on one,
        /// readers on the other, kchat through its bridges against plain
        /// NATS (benchmarks/cross.md).
        #[arg(long, conflicts_with = "perf")]
        cross: bool,
        /// Where the report, JSON and plots go instead of benchmarks/ (for
        /// smoke runs, which must not replace the record of a full run).
        #[arg(long, conflicts_with = "cross")]
        out: Option<std::path::PathBuf>,
        /// Arguments for `kchat-bench run` (--readers, --writers, --sizes,
        /// --millis, --reps, --seed, --systems, --latency-rate,
        /// --latency-readers; `kchat-bench run --help` says more).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Bootstrap => bootstrap::ensure().map(|()| ExitCode::SUCCESS),
        Command::Kernel { variant, line } => {
            bootstrap::ensure()?;
            let kernel = kernel::ensure_line(line, variant)?;
            println!("{}", kernel.bzimage().display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Kmod { variant, line } => {
            bootstrap::ensure()?;
            let kernel = kernel::ensure_line(line, variant)?;
            kmod::build(&kernel)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::KmodFmt => {
            let kernel = kernel::ensure(Variant::Debug)?;
            kmod::rustfmt_fix(&kernel)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::KmodLines => {
            compat_lines::print(&kmod::dir())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Vm(args) => vm::command(args),
        Command::Test(args) => test::run(args),
        Command::Demo => demo::run(),
        Command::Dkms { line, variant } => {
            bootstrap::ensure()?;
            let kernel = kernel::ensure_line(line, variant)?;
            let deb = dkms::build_package()?;
            dkms::check_package(&deb)?;
            let ko = dkms::build_against(&kernel, &deb)?;
            dkms::refusals(&kernel, &deb)?;
            let modules = dkms::modules_package(&kernel, &ko)?;
            println!("{}\n{}", ko.display(), modules.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard => dashboard::run(),
        Command::Deb(args) => deb::run(args),
        Command::Soak { minutes } => test::run(test::TestArgs {
            vm_only: true,
            filter: Some("soak::".into()),
            soak_seconds: Some(minutes * 60),
            line: None,
            model: test::ModelArgs::default(),
        }),
        Command::Model(model) => test::run(test::TestArgs {
            vm_only: true,
            filter: Some("model::the_module_matches_the_model".into()),
            soak_seconds: None,
            line: None,
            model,
        }),
        Command::Install(args) => install::run(&args).map(|_| ExitCode::SUCCESS),
        Command::Bench {
            variant,
            cross: true,
            args,
            ..
        } => bench::cross(variant, &args),
        Command::Bench {
            variant,
            perf,
            out,
            args,
            ..
        } => bench::run(variant, perf, out.as_deref(), &args),
    }
}
