//! `cargo xtask bench`: runs `kchat-bench run` in the test VM (bench
//! kernel), with redis-server and nats-server from the host's packages,
//! then draws the plots on the host. Tables go to `benchmarks/latest.md`
//! (or `--out DIR`), the raw numbers to `latest.json`, the plots beside
//! them;
//! BENCHMARKS.md quotes them with the machine they ran on.

use crate::{bootstrap, kernel, kmod, paths, process, vm};
use anyhow::{Context, Result};
use std::{
    process::{Command, ExitCode},
    time::Duration,
};

/// The cross-node row: two guests on the bench kernel joined by a link,
/// `kchat-bench cross` on the first, `cross-peer` on the second (each
/// loads its own module); the table goes to `benchmarks/cross.md`, the
/// numbers to `benchmarks/cross.json`.
pub fn cross(variant: kernel::Variant, extra: &[String]) -> Result<ExitCode> {
    let (kernel, modules, bench) = prepare(variant, &["kchat-bench", "kchat-bridge"])?;
    let insmod = format!("insmod {} default_room=", modules.kchat.display());
    let script_a = format!(
        "{insmod} && {} cross --listen {}:4222 --json /run/kchat-vm/cross.json --host-load '{}' {}",
        bench.display(),
        vm::PAIR_ADDRESSES[0],
        host_load(),
        extra.join(" ")
    );
    let script_b = format!(
        "{insmod} && {} cross-peer --nats nats://{}:4222",
        bench.display(),
        vm::PAIR_ADDRESSES[0]
    );
    eprintln!("bench: two guests ({variant} kernel, TCG), a writer on one, readers on the other");
    // Four systems, five repetitions of a throughput and a latency run
    // each: about ten minutes of TCG.
    let (run_a, run_b) = vm::run_pair(
        &kernel,
        &script_a,
        &script_b,
        Duration::from_secs(2400),
        true,
    )?;
    if !run_a.passed() || !run_b.passed() {
        eprint!("bench: first guest: {}", run_a.verdict(20));
        eprint!("bench: second guest: {}{}", run_b.verdict(20), run_b.output);
        return Ok(ExitCode::FAILURE);
    }
    let out = paths::root().join("benchmarks");
    std::fs::create_dir_all(&out)?;
    std::fs::copy(run_a.dir.join("cross.json"), out.join("cross.json"))
        .context("keeping the cross-node results")?;
    std::fs::copy(run_a.dir.join("cross.md"), out.join("cross.md"))
        .context("keeping the cross-node table")?;
    eprintln!(
        "bench: the cross-node table is in {}",
        out.join("cross.md").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What both bench commands need first: the tools, the kernel, kchat.ko
/// built for it, and release builds of `packages`; returns the kernel, the
/// module and the path of `kchat-bench`.
fn prepare(
    variant: kernel::Variant,
    packages: &[&str],
) -> Result<(kernel::Kernel, kmod::Modules, std::path::PathBuf)> {
    bootstrap::ensure()?;
    let kernel = kernel::ensure(variant)?;
    let modules = kmod::build(&kernel)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--release", "--locked"]);
    for package in packages {
        build.args(["-p", package]);
    }
    process::run(build.current_dir(paths::root()))?;
    Ok((kernel, modules, paths::target().join("release/kchat-bench")))
}

/// The host's load average (/proc/loadavg's first three fields), for the
/// report: the guest cannot see it, and a busy host slows the guest.
fn host_load() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |line| {
            line.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

/// Runs the bench; with `perf`, under `perf record -a -g` in the guest,
/// keeping `perf report`'s flat profile as `profile.txt`, the same split
/// by process as `profile-processes.txt` (the writers' process apart from
/// the readers'), and every sample
/// in the kernel's allocators as `profile-alloc.txt`. Everything goes to
/// `out` (`benchmarks/` unless told otherwise: a smoke run goes elsewhere,
/// so it never stands in for the record of a full run).
pub fn run(
    variant: kernel::Variant,
    perf: bool,
    out: Option<&std::path::Path>,
    extra: &[String],
) -> Result<ExitCode> {
    let (kernel, modules, bench) = prepare(variant, &["kchat-bench"])?;
    // The run folder is mounted at /run/kchat-vm in the guest. The report
    // goes to a file of its own: the console also carries the progress
    // lines and whatever libraries print, which belong to no report.
    let bench_cmd = format!(
        "{} run --json /run/kchat-vm/bench.json --markdown /run/kchat-vm/bench.md \
         --host-load '{}' {}",
        bench.display(),
        host_load(),
        extra.join(" ")
    );
    let bench_cmd = if perf {
        // Kernel and user stacks of every CPU; the report is made in the
        // guest, where its kallsyms (and kchat.ko's symbols) are.
        // Besides the flat profile, every sample in the allocators at any
        // share, and in which module: whether messages cost allocations.
        format!(
            "perf record -q -a -g -o /tmp/perf.data -- {bench_cmd} && \
             perf report -i /tmp/perf.data --stdio --no-children -g none --sort dso,symbol \
             --percent-limit 0.1 2>/dev/null | sed -e 's/  *$//' > /run/kchat-vm/profile.txt && \
             perf report -i /tmp/perf.data --stdio --no-children -g none --sort pid,dso,symbol \
             --percent-limit 0.1 2>/dev/null | sed -e 's/  *$//' > /run/kchat-vm/profile-processes.txt && \
             {{ perf report -i /tmp/perf.data --stdio --no-children -g none --sort dso,symbol \
             --percent-limit 0 2>/dev/null | sed -e 's/  *$//' \
             | grep -E '\\[k\\] _*(k[a-z]*alloc|kfree|kvfree|kmem_cache|krealloc|v[a-z]*alloc|vfree|alloc_pages|free_unref|get_page_from_freelist)' \
             > /run/kchat-vm/profile-alloc.txt || true; }}"
        )
    } else {
        bench_cmd
    };
    let script = format!(
        "insmod {} default_room= && {bench_cmd}",
        modules.kchat.display()
    );
    eprintln!("bench: running in the VM ({variant} kernel, TCG)");
    let run = vm::run(
        &kernel,
        // The rows the targets name (`-- --writers 1 --sizes 64,4096`, 8
        // rows, 5 repetitions) took 46 minutes of TCG on 2026-12-05, 256
        // readers most of it (~21 s a system a repetition, longer at 4 KiB
        // where NATS drains for a minute). The default's 20 rows have six
        // of 256 readers to those two: about 2.5 hours. Bounded all the same.
        &vm::VmArgs {
            tsc_reliable: true,
            ..vm::VmArgs::scripted(Duration::from_secs(5 * 3600))
        },
        Some(&script),
        true,
    )?;
    if !run.passed() {
        eprint!("bench: {}", run.verdict(20));
        // The guest saves the report after every row.
        let partial = run.dir.join("bench.md");
        if partial.exists() {
            eprintln!(
                "bench: the rows measured before it stopped are in {} (and bench.json beside it)",
                partial.display()
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    let out = out.map_or_else(|| paths::root().join("benchmarks"), |dir| dir.to_owned());
    std::fs::create_dir_all(&out)?;
    let json = out.join("latest.json");
    std::fs::copy(run.dir.join("bench.json"), &json)
        .with_context(|| format!("keeping the results as {}", json.display()))?;
    let tables = out.join("latest.md");
    std::fs::copy(run.dir.join("bench.md"), &tables)
        .with_context(|| format!("keeping the report as {}", tables.display()))?;
    process::run(
        Command::new(&bench)
            .arg("plot")
            .arg(&json)
            .arg("--out-dir")
            .arg(&out),
    )?;
    if perf {
        for name in ["profile.txt", "profile-processes.txt", "profile-alloc.txt"] {
            std::fs::copy(run.dir.join(name), out.join(name))
                .with_context(|| format!("keeping perf's {name}"))?;
        }
    }
    eprintln!("bench: tables, JSON and plots in {}", out.display());
    Ok(ExitCode::SUCCESS)
}
