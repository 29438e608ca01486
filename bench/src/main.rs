//! `kchat-bench`: kchat against what people would use instead, in the
//! same guest and the same run, reported as ratios (absolute numbers under
//! TCG mean little). `run` measures (in the VM, through `cargo xtask
//! bench`) and saves JSON; `plot` draws the PNGs from that JSON on the host.

mod cross;
mod message;
mod plot;
mod reference;
mod report;
mod stopped;
mod system;
mod systems;
mod tally;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use report::{LatencyRow, Report, Row};
use std::{path::PathBuf, time::Duration};
use system::{Pace, System, Workload};
use systems::{iceoryx2::Iceoryx2, kchat::Kchat, nats::Nats, pipe::PipeTee, redis::Redis};

#[derive(Parser)]
#[command(about = "kchat against a pipe tee, Redis Pub/Sub and NATS, side by side")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure (needs kchat.ko loaded, redis-server and nats-server).
    Run(RunArgs),
    /// Draw throughput.png and latency.png from a run's JSON.
    Plot {
        json: PathBuf,
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Print a run's JSON as the Markdown tables.
    Report { json: PathBuf },
    /// The cross-node row, first machine: nats-server, its bridge, the
    /// writer and the report (`cargo xtask bench --cross`).
    Cross(cross::CrossArgs),
    /// The cross-node row, second machine: its bridge and the readers.
    CrossPeer(cross::PeerArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Reader counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 256])]
    readers: Vec<usize>,
    /// Writer counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    writers: Vec<usize>,
    /// Message sizes in bytes (at least 20: the stamp).
    #[arg(long, value_delimiter = ',', default_values_t = [64, 1024, 4096])]
    sizes: Vec<usize>,
    /// How long each throughput run writes, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    millis: u64,
    /// Systems to run (kchat, kchat-block, kchat-epoll, kchat-uring,
    /// kchat-mmap, pipe-tee, redis, nats, iceoryx2); all by default.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Paced latency runs: messages per second from one writer.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u32,
    /// Paced latency runs: reader counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16])]
    latency_readers: Vec<usize>,
    /// Where to save the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn machine() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!("Linux {}, {cpus} vCPUs ({model})", release.trim())
}

/// (quantile, latency) points: every percent, then the tail.
fn cdf(histogram: &hdrhistogram::Histogram<u64>) -> Vec<(f64, u64)> {
    let tail = [0.995, 0.999, 0.9995, 0.9999, 1.0];
    (0..100)
        .map(|p| f64::from(p) / 100.0)
        .chain(tail)
        .map(|q| (q, histogram.value_at_quantile(q)))
        .collect()
}

/// A pipe tee with 4 writers and 256 readers holds 1,280 pipe ends, past
/// the usual soft limit of 1,024 files: take the hard limit.
fn raise_file_limit() -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads one rlimit from the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    raise_file_limit()?;
    let wanted = |name: &str| args.systems.is_empty() || args.systems.iter().any(|s| s == name);
    let mut systems: Vec<Box<dyn System>> = Vec::new();
    for kchat in Kchat::all() {
        if wanted(kchat.name()) {
            systems.push(Box::new(kchat));
        }
    }
    if wanted("pipe-tee") {
        systems.push(Box::new(PipeTee));
    }
    if wanted("redis") {
        systems.push(Box::new(Redis::start()?));
    }
    if wanted("nats") {
        systems.push(Box::new(Nats::start()?));
    }
    if wanted("iceoryx2") {
        systems.push(Box::new(Iceoryx2::start()?));
    }
    let duration = Duration::from_millis(args.millis);
    let mut report = Report {
        machine: machine(),
        millis: args.millis,
        reference: reference::measure(),
        throughput: Vec::new(),
        latency: Vec::new(),
        stopped_reader: Vec::new(),
    };
    for &size in &args.sizes {
        anyhow::ensure!(
            size >= message::HEADER,
            "messages must hold the {}-byte stamp",
            message::HEADER
        );
        for &writers in &args.writers {
            for &readers in &args.readers {
                let workload = Workload {
                    writers,
                    readers,
                    size,
                };
                for system in &mut systems {
                    let name = system.name();
                    eprintln!("bench: {name}, {writers} writer(s), {readers} reader(s), {size} B");
                    let measured = system::measure(system.as_mut(), workload, duration, Pace::Flat)
                        .with_context(|| {
                            format!("{name} with {writers} writers, {readers} readers, {size} B")
                        })?;
                    let seconds = measured.elapsed.as_secs_f64();
                    let owed = (measured.written * readers as u64).max(1) as f64;
                    report.throughput.push(Row {
                        system: name.to_owned(),
                        writers,
                        readers,
                        size,
                        written_per_sec: measured.written as f64 / seconds,
                        delivered_per_sec: measured.tally.messages as f64 / seconds,
                        lost: (1.0 - measured.tally.messages as f64 / owed).max(0.0),
                        p99_ns: measured.tally.latency.value_at_quantile(0.99),
                        io_wq_workers: measured.io_wq_workers,
                    });
                }
            }
        }
    }
    let paced = Duration::from_millis(args.millis.max(2000));
    for &readers in &args.latency_readers {
        for system in &mut systems {
            let name = system.name();
            eprintln!(
                "bench: {name}, paced at {} msg/s, {readers} reader(s)",
                args.latency_rate
            );
            let workload = Workload {
                writers: 1,
                readers,
                size: 64,
            };
            let measured = system::measure(
                system.as_mut(),
                workload,
                paced,
                Pace::Rate(args.latency_rate),
            )
            .with_context(|| format!("{name} paced with {readers} readers"))?;
            let latency = &measured.tally.latency;
            report.latency.push(LatencyRow {
                system: name.to_owned(),
                readers,
                size: 64,
                rate: args.latency_rate,
                p50_ns: latency.value_at_quantile(0.5),
                p99_ns: latency.value_at_quantile(0.99),
                p999_ns: latency.value_at_quantile(0.999),
                max_ns: latency.max(),
                cdf: cdf(latency),
            });
        }
    }
    if wanted("kchat") {
        for &size in &args.sizes {
            eprintln!("bench: a stopped reader, {size} B");
            report
                .stopped_reader
                .push(stopped::measure(size, duration)?);
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", report.markdown());
    Ok(())
}

fn load(json: &PathBuf) -> Result<Report> {
    let text = std::fs::read(json).with_context(|| format!("reading {}", json.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a kchat-bench report", json.display()))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Plot { json, out_dir } => {
            for path in plot::draw(&load(&json)?, &out_dir)? {
                eprintln!("bench: wrote {}", path.display());
            }
            Ok(())
        }
        Command::Report { json } => {
            print!("{}", load(&json)?.markdown());
            Ok(())
        }
        Command::Cross(args) => cross::drive(args),
        Command::CrossPeer(args) => cross::peer(args),
    }
}
