//! `cargo xtask test`: every test kchat has, in one command, closing with one
//! summary line `N passed, N failed`.
//!
//! Order: host checks (fmt, clippy, `cargo test`), the module's build and
//! formatting, the in-guest suite in the VM, and the fixture run that proves
//! the kernel log check catches real kernel bug reports.

use crate::{
    bootstrap, deploy,
    kernel::{self, Line, Variant},
    kmod, libtest,
    paths::{self, root},
    process::show,
    vm::{self, VmArgs},
};
use anyhow::{Context, Result};
use std::{
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the host checks and run only the module build and the VM suites.
    #[arg(long)]
    pub vm_only: bool,
    /// Run only the guest tests whose name contains this (skips fixtures).
    #[arg(long)]
    pub filter: Option<String>,
    /// How long the soak test runs, in seconds (default: its CI length).
    #[arg(long)]
    pub soak_seconds: Option<u64>,
    /// Boot only this kernel line (its variant in the matrix); both when
    /// not given.
    #[arg(long, value_enum)]
    pub line: Option<Line>,
    /// Settings for the model-based test in the guest (`cargo xtask model`).
    #[arg(skip)]
    pub model: ModelArgs,
}

/// What `cargo xtask model` asks of the model-based test.
#[derive(clap::Args, Clone, Default)]
pub struct ModelArgs {
    /// Run for this many minutes instead of CI's case count.
    #[arg(long)]
    pub minutes: Option<u64>,
    /// Replay a run: the seed it printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run one logged case (a model-case.json a failed run left).
    #[arg(long)]
    pub replay: Option<std::path::PathBuf>,
}

impl ModelArgs {
    /// The guest environment that carries these settings.
    fn guest_env(&self) -> String {
        let mut env = String::new();
        if let Some(minutes) = self.minutes {
            env += &format!("KCHAT_MODEL_SECONDS={} ", minutes * 60);
        }
        if let Some(seed) = self.seed {
            env += &format!("KCHAT_MODEL_SEED={seed} ");
        }
        if let Some(replay) = &self.replay {
            let path = std::path::absolute(replay).unwrap_or_else(|_| replay.clone());
            env += &format!(
                "KCHAT_MODEL_REPLAY={} ",
                shell_quote(&path.display().to_string())
            );
        }
        env
    }
}

/// Passed and failed checks, by name.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
}

impl Tally {
    fn check(&mut self, name: &str, outcome: Result<()>) {
        match outcome {
            Ok(()) => {
                self.passed += 1;
                eprintln!("ok: {name}");
            }
            Err(err) => {
                eprintln!("FAILED: {name}: {err:#}");
                self.failed.push(name.to_owned());
            }
        }
    }

    /// Adds what a libtest harness's `output` says: its passed tests, and
    /// each failed one by name with the line that says why; a test the
    /// output stops inside (the guest died or was killed) fails by name
    /// too. A run that failed with none of that (it never got to a test)
    /// fails as a whole.
    fn add_libtest(&mut self, name: &str, output: &str, succeeded: bool) {
        let report = libtest::parse(output);
        let before = self.failed.len();
        self.passed += report.passed;
        for failure in report.failed {
            self.failed
                .push(format!("{name}: {}: {}", failure.test, failure.why));
        }
        for test in report.unfinished {
            self.failed.push(format!(
                "{name}: {test}: did not finish (the run stopped while it ran)"
            ));
        }
        if report.unnamed > 0 {
            self.failed.push(format!(
                "{name}: {} more failed test(s) the output does not name",
                report.unnamed
            ));
        }
        if !succeeded && self.failed.len() == before {
            self.failed.push(format!(
                "{name}: failed outside any test (none failed or was cut short; see its output)"
            ));
        }
    }
}

pub fn run(args: TestArgs) -> Result<ExitCode> {
    let started = Instant::now();
    bootstrap::ensure()?;
    let mut tally = Tally::default();

    if !args.vm_only {
        tally.check(
            "cargo fmt --check",
            cargo(&["fmt", "--all", "--", "--check"]),
        );
        tally.check(
            "cargo clippy -D warnings",
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]),
        );
        let (ok, output) = cargo_captured(&["test", "--workspace", "--locked"])?;
        tally.add_libtest("cargo test", &output, ok);
    }

    let guest_suite = cargo(&[
        "build",
        "--locked",
        "-p",
        "kchat-vmtest",
        "-p",
        "kchatd",
        "-p",
        "kchatctl",
        "-p",
        "kchat",
        "-p",
        "kchat-dashplot",
        "-p",
        "kchat-bridge",
    ]);
    let guest_suite_built = guest_suite.is_ok();
    tally.check("build the guest suite", guest_suite);

    if !args.vm_only && guest_suite_built {
        for unit in deploy::UNITS {
            tally.check(
                &format!("deploy: {unit}.service verifies"),
                deploy::unit_verifies(unit),
            );
            match deploy::unit_exposure(unit) {
                Ok(score) => tally.check(
                    &format!("deploy: {unit}.service exposure {score} (systemd-analyze security)"),
                    Ok(()),
                ),
                Err(err) => tally.check(&format!("deploy: {unit}.service exposure"), Err(err)),
            }
        }
        tally.check(
            "dashboards: promtool check rules",
            deploy::alert_rules_check(),
        );
        tally.check(
            "dashboards: promtool test rules (the alerts fire on the series they watch)",
            deploy::alert_rules_test(),
        );
        tally.check(
            "dashboards: every dashboard query parses",
            deploy::dashboard_queries_parse(),
        );
    }
    let dkms_deb = if args.vm_only {
        None
    } else {
        let deb = crate::dkms::build_package()
            .and_then(|deb| crate::dkms::check_package(&deb).map(|()| deb));
        let path = deb.as_ref().ok().cloned();
        tally.check(
            "deploy: kchat-dkms packages the module's sources, dkms.conf and scripts",
            deb.map(drop),
        );
        path
    };

    let mut userspace_deb = UserspaceDeb::default();

    // One kernel per line, so a fresh machine builds two: 7.3 with lockdep
    // (the fast debug kernel, first, and host of the suites that boot two
    // guests or systemd), and 6.12 with lockdep and KASAN (ten times
    // slower, last). docs/kernel-module.md says what each line covers.
    for (line, variant) in [(Line::V7_3, Variant::Debug), (Line::V6_12, Variant::Kasan)] {
        if args.line.is_some_and(|only| only != line) {
            continue;
        }
        // Not built beside the 7.3 guests: tried at SCHED_IDLE on 2 cores,
        // the guests slowed by what the build gained (docs/kernel-module.md).
        let kernel = kernel::ensure_line(line, variant)?;
        let label = |what: &str| format!("{what} [{line} {variant} kernel]");
        let modules = match kmod::build(&kernel) {
            Ok(modules) => {
                tally.check(&label("kmod builds with clippy and no warnings"), Ok(()));
                modules
            }
            Err(err) => {
                tally.check(&label("kmod builds with clippy and no warnings"), Err(err));
                continue;
            }
        };
        let mut dkms_ko = None;
        if let Some(deb) = &dkms_deb {
            let built = crate::dkms::build_against(&kernel, deb);
            dkms_ko = built.as_ref().ok().cloned();
            tally.check(
                &label("dkms builds kchat.ko from kchat-dkms"),
                built.map(drop),
            );
            if variant == Variant::Debug {
                tally.check(
                    "dkms refuses a kernel without Rust, without Rust metadata, or with another rustc",
                    crate::dkms::refusals(&kernel, deb),
                );
            }
        }
        // The suites load what DKMS made, the module users get; the build
        // above is for clippy and the broken fixtures, and stands in only
        // when DKMS failed (that failure is counted) or was not run.
        let modules = match &dkms_ko {
            Some(ko) => kmod::Modules {
                kchat: ko.clone(),
                fixtures: modules.fixtures,
            },
            None => modules,
        };
        if variant == Variant::Debug {
            tally.check(
                "kmod is formatted (kernel rustfmt)",
                kmod::rustfmt_check(&kernel),
            );
        }
        if !guest_suite_built {
            continue;
        }
        guest_suite_run(
            &kernel,
            &modules,
            args.filter.as_deref(),
            args.soak_seconds,
            &args.model,
            &mut tally,
            &label,
        )?;
        if variant == Variant::Debug
            && args
                .filter
                .as_deref()
                .is_none_or(|f| "twonode::".contains(f) || f.starts_with("twonode::"))
        {
            two_node_run(&kernel, &modules, args.filter.as_deref(), &mut tally)?;
        }
        if variant == Variant::Debug && args.filter.is_none() {
            fixtures(&kernel, &modules, &mut tally, &label)?;
            if !args.vm_only {
                let staged = deploy::install_stages_everything(&kernel);
                let staged_ok = staged.is_ok();
                tally.check("deploy: xtask install --destdir stages every file", staged);
                if staged_ok
                    && let Some(deb) = userspace_deb.get(&mut tally)
                    && let Some(dkms_deb) = &dkms_deb
                {
                    systemd_boot_run(&kernel, &deb, ModuleInstall::Dkms(dkms_deb), &mut tally)?;
                }
                eprintln!("vm: kchatd, Prometheus and traffic for the dashboard's queries");
                let recorded = crate::dashboard::record(&kernel, 8).and_then(|recording| {
                    recording.map(drop).ok_or_else(|| {
                        anyhow::anyhow!("a dashboard query had no data, or the run failed (above)")
                    })
                });
                tally.check(
                    "dashboards: every panel has data in a real Prometheus over a real kchatd",
                    recorded,
                );
            }
        }
        // The emulated KASAN guest would take too long to compile the
        // module: it installs what the host's DKMS built, packaged.
        if variant == Variant::Kasan
            && args.filter.is_none()
            && let Some(ko) = dkms_ko
        {
            let package = crate::dkms::modules_package(&kernel, &ko);
            let package_path = package.as_ref().ok().cloned();
            tally.check(
                &label("deploy: kchat-modules packages the module DKMS built"),
                package.map(drop),
            );
            if let Some(package) = package_path
                && let Some(deb) = userspace_deb.get(&mut tally)
            {
                systemd_boot_run(&kernel, &deb, ModuleInstall::Binary(&package), &mut tally)?;
            }
        }
    }

    eprintln!("\ntook {:.0?}", started.elapsed());
    for name in &tally.failed {
        eprintln!("failed: {name}");
    }
    println!("{} passed, {} failed", tally.passed, tally.failed.len());
    Ok(if tally.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the in-guest suite in one VM boot.
fn guest_suite_run(
    kernel: &kernel::Kernel,
    modules: &kmod::Modules,
    filter: Option<&str>,
    soak_seconds: Option<u64>,
    model: &ModelArgs,
    tally: &mut Tally,
    label: &dyn Fn(&str) -> String,
) -> Result<()> {
    let suite = guest_suite();
    let soak_env = soak_seconds.map_or_else(String::new, |s| format!("KCHAT_SOAK_SECONDS={s} "));
    let model_env = model.guest_env();
    let script = format!(
        "{soak_env}{model_env}KCHAT_KMOD={} {} --test-threads 1 --color never {}",
        modules.kchat.display(),
        suite.display(),
        shell_quote(filter.unwrap_or(""))
    );
    eprintln!(
        "vm: running the guest suite on the {} kernel",
        kernel.variant
    );
    let soak = Duration::from_secs(soak_seconds.unwrap_or(0) + model.minutes.unwrap_or(0) * 60);
    let timeout = match kernel.variant {
        Variant::Debug | Variant::Bench => Duration::from_secs(600) + soak * 2,
        Variant::Kasan => Duration::from_secs(1800) + soak * 2,
    };
    let run = vm::run(kernel, &VmArgs::scripted(timeout), Some(&script), true)?;
    let model_case = run.dir.join("model-case.json");
    if run.exit_status != Some(0) && model_case.exists() {
        eprintln!(
            "vm: the model-based test left its last case in {}: replay it with \
             `cargo xtask model --replay {}`",
            model_case.display(),
            model_case.display()
        );
    }
    tally.add_libtest(
        &label("guest suite"),
        &run.output,
        run.exit_status == Some(0),
    );
    tally.check(
        &label("guest kernel log is clean after the suite"),
        log_clean(&run),
    );
    Ok(())
}

/// `kchat.deb`, built once for every systemd boot that installs it; the
/// tally says once whether it could be.
#[derive(Default)]
struct UserspaceDeb(Option<Option<std::path::PathBuf>>);

impl UserspaceDeb {
    fn get(&mut self, tally: &mut Tally) -> Option<std::path::PathBuf> {
        self.0
            .get_or_insert_with(|| {
                let deb =
                    crate::deb::build(true).and_then(|deb| crate::deb::check(&deb).map(|()| deb));
                let path = deb.as_ref().ok().cloned();
                tally.check(
                    "deploy: cargo deb packages every file, with maintainer scripts",
                    deb.map(drop),
                );
                path
            })
            .clone()
    }
}

/// How a systemd boot gets the module: `kchat-dkms`, which DKMS builds in
/// the guest, or the `kchat-modules` package of what DKMS built on the host.
enum ModuleInstall<'a> {
    Dkms(&'a std::path::Path),
    Binary(&'a std::path::Path),
}

/// Boots `kernel` with systemd as PID 1 and runs the `systemd::` tests:
/// the userspace and the module installed with dpkg.
fn systemd_boot_run(
    kernel: &kernel::Kernel,
    deb: &std::path::Path,
    module: ModuleInstall,
    tally: &mut Tally,
) -> Result<()> {
    let suite = guest_suite();
    let (module_env, skips) = match module {
        ModuleInstall::Dkms(dkms_deb) => {
            let rustc = crate::process::stdout(
                Command::new("rustup")
                    .args(["which", "rustc"])
                    .env("RUSTUP_TOOLCHAIN", paths::toolchain()?),
            )?;
            // DKMS compiles the module in the guest, under emulation: minutes.
            eprintln!(
                "vm: booting the {} kernel with systemd as PID 1 for the deploy tests \
                 (DKMS builds in the guest)",
                kernel.line
            );
            let env = format!(
                "KCHAT_DKMS_DEB={} KCHAT_KDIR={} KCHAT_RUSTC={}",
                dkms_deb.display(),
                kernel.build_dir.display(),
                shell_quote(&rustc),
            );
            (env, String::new())
        }
        ModuleInstall::Binary(package) => {
            eprintln!(
                "vm: booting the {} kernel with systemd as PID 1 for the deploy tests \
                 (the module DKMS built on the host, packaged)",
                kernel.line
            );
            // What the tests below check is the userspace's and systemd's,
            // the same on every kernel and run on 7.3; under KASAN each
            // costs minutes. The install, udev starting kchatd,
            // `systemctl start`, rooms and the removal run here.
            let skips: String = [
                "the_sandbox_is_in_force",
                "reload_applies_a_changed_config",
                "stop_leaves_the_rooms_working",
                "the_bridge_runs_sandboxed_from_its_shipped_unit",
                "an_upgrade_keeps_an_admins_disable",
            ]
            .iter()
            .map(|name| format!(" --skip systemd::{name}"))
            .collect();
            (format!("KCHAT_MODULES_DEB={}", package.display()), skips)
        }
    };
    let script = format!(
        "KCHAT_DEB={} {module_env} {} --test-threads 1 --color never{skips} systemd::",
        deb.display(),
        suite.display(),
    );
    let timeout = match kernel.variant {
        Variant::Kasan => Duration::from_secs(1800),
        Variant::Debug | Variant::Bench => Duration::from_secs(1200),
    };
    let args = VmArgs {
        systemd: true,
        ..VmArgs::scripted(timeout)
    };
    let run = vm::run(kernel, &args, Some(&script), true)?;
    let label = |what: &str| format!("{what} [{} {} kernel]", kernel.line, kernel.variant);
    tally.add_libtest(
        &label("deploy: systemd boot"),
        &run.output,
        run.exit_status == Some(0),
    );
    tally.check(
        &label("deploy: guest kernel log is clean after the systemd boot"),
        log_clean(&run),
    );
    Ok(())
}

/// The guest suite's binary, beside the programs it tests. `KCHAT_GUEST_BINS`
/// names another directory holding all of them: how a new test is run
/// against the old programs, to see it fail there first.
fn guest_suite() -> std::path::PathBuf {
    std::env::var_os("KCHAT_GUEST_BINS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| paths::target().join("debug"))
        .join("kchat-vmtest")
}

/// Boots two guests joined by a link and runs the `twonode::` tests on the
/// first; the second serves as the other machine (its agent). Each has its
/// own kernel, module and log check.
fn two_node_run(
    kernel: &kernel::Kernel,
    modules: &kmod::Modules,
    filter: Option<&str>,
    tally: &mut Tally,
) -> Result<()> {
    let suite = guest_suite();
    let script_a = format!(
        "KCHAT_PEER={peer}:7070 KCHAT_KMOD={kmod} {suite} --test-threads 1 --color never {filter}; \
         status=$?; {suite} job release {peer}:7070; exit $status",
        peer = vm::PAIR_ADDRESSES[1],
        kmod = modules.kchat.display(),
        suite = suite.display(),
        filter = shell_quote(filter.unwrap_or("twonode::")),
    );
    let script_b = format!(
        "KCHAT_KMOD={} KCHAT_VMTEST_AGENT=7070 {}",
        modules.kchat.display(),
        suite.display()
    );
    eprintln!("vm: booting two guests joined by a link for the two-node tests");
    let (run_a, run_b) = vm::run_pair(
        kernel,
        &script_a,
        &script_b,
        Duration::from_secs(900),
        false,
    )?;
    tally.add_libtest(
        "two-node suite",
        &run_a.output,
        run_a.exit_status == Some(0),
    );
    tally.check(
        "two-node: first guest's kernel log is clean",
        log_clean(&run_a),
    );
    tally.check(
        "two-node: second guest served and its kernel log is clean",
        if run_b.exit_status == Some(0) {
            log_clean(&run_b)
        } else {
            Err(anyhow::anyhow!(
                "the agent guest failed: {}\n{}",
                run_b.verdict(40),
                run_b.output
            ))
        },
    );
    Ok(())
}

/// A run's kernel log check, as a check result: nothing reported, no timeout.
fn log_clean(run: &vm::VmRun) -> Result<()> {
    if run.findings.is_empty() && !run.timed_out {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{}", run.verdict(40)))
    }
}

/// Loads the deliberately broken fixture modules in one VM run; the run must
/// fail, and the log check must name each fixture's bug.
fn fixtures(
    kernel: &kernel::Kernel,
    modules: &kmod::Modules,
    tally: &mut Tally,
    label: &dyn Fn(&str) -> String,
) -> Result<()> {
    let dir = &modules.fixtures;
    // kmemleak reports only allocations older than 5 s, hence the sleep.
    let script = format!(
        "insmod {0}/kchat_fixture_warn.ko && insmod {0}/kchat_fixture_sleep.ko && \
         insmod {0}/kchat_fixture_leak.ko && sleep 6",
        dir.display()
    );
    eprintln!("vm: loading the broken fixture modules (the log check must catch each)");
    let run = vm::run(
        kernel,
        &VmArgs::scripted(Duration::from_secs(300)),
        Some(&script),
        false,
    )?;
    let logs = ["console.log", "dmesg.log", "kmemleak.log"]
        .map(|name| std::fs::read_to_string(run.dir.join(name)).unwrap_or_default())
        .join("\n");
    let expect = |what: &str, line_has: &[&str], log_has: &str| -> Result<()> {
        anyhow::ensure!(
            run.exit_status == Some(0),
            "the fixture script failed: {}",
            run.verdict(10)
        );
        anyhow::ensure!(!run.passed(), "the run passed although a fixture {what}");
        anyhow::ensure!(
            run.findings
                .iter()
                .any(|f| line_has.iter().all(|part| f.line.contains(part))),
            "no finding with {line_has:?}; findings: {:#?}",
            run.findings
        );
        anyhow::ensure!(logs.contains(log_has), "the logs never name {log_has}");
        Ok(())
    };
    tally.check(
        &label("log check catches a WARN (fixture)"),
        expect(
            "warned",
            &["WARNING:", "kchat_fixture_warn"],
            "kchat_fixture_warn: deliberate warning",
        ),
    );
    tally.check(
        &label("log check catches sleeping under a spinlock (Rust fixture)"),
        expect(
            "slept in atomic context",
            // msleep() has no might_sleep(), so schedule() is what notices.
            &["BUG: scheduling while atomic"],
            "kchat_fixture_sleep",
        ),
    );
    tally.check(
        &label("log check catches a leak (kmemleak fixture)"),
        expect("leaked", &["unreferenced object"], "kchat_fixture_leak"),
    );
    Ok(())
}

fn cargo_command(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root());
    cmd
}

fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = cargo_command(args);
    crate::process::run(&mut cmd)
}

/// Runs cargo, echoing and returning its stdout.
fn cargo_captured(args: &[&str]) -> Result<(bool, String)> {
    let mut cmd = cargo_command(args);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", show(&cmd)))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    Ok((out.status.success(), text))
}

fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_a_panicking_test_and_its_panic() {
        let output = "\
running 2 tests
test chat::ok_test                                  ... ok
test mapped::losses_are_exact_under_a_racing_writer ... thread 'main' panicked at vmtest/src/mapped.rs:61:23:
attempt to multiply with overflow
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace
FAILED

failures:

---- mapped::losses_are_exact_under_a_racing_writer ----
test panicked: attempt to multiply with overflow


failures:
    mapped::losses_are_exact_under_a_racing_writer

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.10s
";
        let mut tally = Tally::default();
        tally.add_libtest("guest suite [debug kernel]", output, false);
        assert_eq!(tally.passed, 1);
        assert_eq!(
            tally.failed,
            [
                "guest suite [debug kernel]: mapped::losses_are_exact_under_a_racing_writer: \
              panicked at vmtest/src/mapped.rs:61:23: attempt to multiply with overflow"
            ]
        );
    }

    #[test]
    fn the_summary_names_the_test_a_dead_guest_was_running() {
        let output = "running 3 tests\n\
                      test chat::a ... ok\n\
                      test soak::traffic_restarts_deletes_and_unload_attempts ... ";
        let mut tally = Tally::default();
        tally.add_libtest("guest suite [kasan kernel]", output, false);
        assert_eq!(tally.passed, 1);
        assert_eq!(
            tally.failed,
            [
                "guest suite [kasan kernel]: soak::traffic_restarts_deletes_and_unload_attempts: \
              did not finish (the run stopped while it ran)"
            ]
        );
    }

    #[test]
    fn a_run_that_fails_before_any_test_fails_as_a_whole() {
        let mut tally = Tally::default();
        tally.add_libtest(
            "two-node suite",
            "insmod: ERROR: could not insert module\n",
            false,
        );
        assert_eq!(tally.passed, 0);
        assert_eq!(
            tally.failed,
            ["two-node suite: failed outside any test (none failed or was cut short; see its output)"]
        );
        let mut tally = Tally::default();
        tally.add_libtest(
            "cargo test",
            "running 1 test\ntest a ... ok\n\ntest result: ok. 1 passed; 0 failed\n",
            true,
        );
        assert_eq!((tally.passed, tally.failed.len()), (1, 0));
    }
}
