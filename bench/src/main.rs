//! `kchat-bench`: kchat against what people would use instead, in the
//! same guest and the same run, reported as ratios (absolute numbers under
//! TCG mean little). `run` measures (in the VM, through `cargo xtask
//! bench`) and saves JSON; `plot` draws the PNGs from that JSON on the host.

mod cross;
mod message;
mod plot;
mod progress;
mod reference;
mod report;
mod shared;
mod stopped;
mod system;
mod systems;
mod tally;
mod writers;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use message::Sizes;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use report::{LatencyRow, MemoryRow, Report, Row, Stats, StoppedRow};
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
    /// The writers of one run, in a process of their own: started by `run`
    /// with its order on standard input (a socket), never by hand.
    #[command(name = WRITERS_COMMAND, hide = true)]
    Writers,
}

/// The hidden subcommand that runs a run's writers.
pub const WRITERS_COMMAND: &str = "writers";

#[derive(clap::Args)]
struct RunArgs {
    /// Reader counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 256])]
    readers: Vec<usize>,
    /// Writer counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    writers: Vec<usize>,
    /// Message sizes in bytes (at least 20: the stamp): a size, or MIN-MAX
    /// for mixed sizes (each message's length drawn from its writer and
    /// number, uniform from MIN to MAX).
    #[arg(long, value_delimiter = ',', default_values = ["64", "1024", "4096"])]
    sizes: Vec<Sizes>,
    /// Mixed-size rows (MIN-MAX) run at one writer and `--mixed-readers`
    /// only, beside the rows of `--sizes` (a full product of mixes would
    /// cost as much again); `--mixed` with nothing after it: none.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values = ["64-1024"])]
    mixed: Vec<Sizes>,
    /// Reader counts of the `--mixed` rows.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [1, 16])]
    mixed_readers: Vec<usize>,
    /// How long each run's write window lasts, in milliseconds.
    #[arg(long, alias = "window-ms", default_value_t = 1500)]
    millis: u64,
    /// Repetitions of every row (systems in a random order each time).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seed of the random orders (default: from the clock; the report
    /// names it, so a run's order can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Systems to run (kchat, kchat-block, kchat-epoll, kchat-uring,
    /// kchat-mmap, pipe-tee, redis, nats, iceoryx2); all by default.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Paced latency runs: messages per second from one writer.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u32,
    /// Paced latency runs: reader counts (`--latency-readers` with nothing
    /// after it: none).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [1, 16])]
    latency_readers: Vec<usize>,
    /// Leave out the stopped-reader rows (for a profile of the other rows
    /// alone).
    #[arg(long)]
    no_stopped_reader: bool,
    /// The host's load average, for the report (`cargo xtask bench`
    /// passes /proc/loadavg of the host).
    #[arg(long)]
    host_load: Option<String>,
    /// Where to save the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to write the Markdown report (else standard output).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn machine() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!("Linux {}, {} vCPUs ({model})", release.trim(), vcpus())
}

fn vcpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn clocksource() -> String {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
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

/// Files the largest rows hold at once: a pipe tee with 4 writers and 256
/// readers 1,280 pipe ends, iceoryx2 at 4 writers and 256 readers about
/// 6,200 (every node and port is a file or two). Past the usual soft limit
/// of 1,024, and past the kernel's default hard limit of 4,096, which is
/// what the bench guest's init leaves.
const FILES_NEEDED: u64 = 65_536;

/// Lifts the file limit to `FILES_NEEDED` where the hard limit may be
/// raised (root, as in the bench guest), else takes the hard limit.
fn raise_file_limit() -> Result<()> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if hard < FILES_NEEDED && setrlimit(Resource::RLIMIT_NOFILE, FILES_NEEDED, FILES_NEEDED).is_ok()
    {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(RLIMIT_NOFILE)")
}

/// The order of `entries` things in each of `reps` repetitions: a fresh
/// shuffle each time, the same for the same seed.
pub fn orders(seed: u64, entries: usize, reps: usize) -> Vec<Vec<usize>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..reps)
        .map(|_| {
            let mut order: Vec<usize> = (0..entries).collect();
            rng.shuffle(&mut order);
            order
        })
        .collect()
}

/// One throughput repetition of one system.
struct Sample {
    accepted: f64,
    delivered: f64,
    lost: f64,
    tally: tally::Tally,
    io_wq_workers: u32,
}

/// The throughput workloads in the order they run: every size of
/// `--sizes` at every writer and reader count, then each mix of `--mixed`
/// at one writer and each of `--mixed-readers` (a row already there is
/// not run twice).
fn workloads(args: &RunArgs) -> Result<Vec<Workload>> {
    if let Some(fixed) = args.mixed.iter().find(|s| !s.is_mixed()) {
        anyhow::bail!(
            "--mixed takes MIN-MAX ranges ({} is one size: give it to --sizes)",
            fixed.spec()
        );
    }
    let mut workloads = Vec::new();
    let mut add = |workload: Workload| {
        if !workloads.contains(&workload) {
            workloads.push(workload);
        }
    };
    for &size in &args.sizes {
        for &writers in &args.writers {
            for &readers in &args.readers {
                add(Workload {
                    writers,
                    readers,
                    size,
                });
            }
        }
    }
    for &size in &args.mixed {
        for &readers in &args.mixed_readers {
            add(Workload {
                writers: 1,
                readers,
                size,
            });
        }
    }
    Ok(workloads)
}

fn run(args: RunArgs) -> Result<()> {
    anyhow::ensure!(args.reps >= 1, "--reps must be at least 1");
    anyhow::ensure!(args.millis >= 1, "--millis must be at least 1");
    // Sizes were checked as they were parsed (at least the stamp, a
    // range from smaller to larger).
    let workloads = workloads(&args)?;
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
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let duration = Duration::from_millis(args.millis);
    // 1,000 msg/s for 2.1 s: 2,100 samples a repetition, so 5 make the
    // 10,000 a p99 is judged from even when a repetition's last message
    // falls just past its window (2 s made 9,995 in one run).
    let paced = Duration::from_millis(args.millis.max(2100));
    // The stopped-reader rows are of one size each (mixes have their
    // rows above).
    let stopped_sizes: Vec<usize> = if wanted("kchat") && !args.no_stopped_reader {
        args.sizes.iter().filter_map(|s| s.fixed()).collect()
    } else {
        Vec::new()
    };
    let mut progress = progress::Bar::new(
        args.reps
            * (workloads.len() * (systems.len() + 1)
                + args.latency_readers.len() * systems.len()
                + stopped_sizes.len()),
        duration,
    );
    let mut report = Report {
        machine: machine(),
        vcpus: vcpus(),
        clocksource: clocksource(),
        host_load: args.host_load.clone(),
        seed,
        reps: args.reps,
        millis: args.millis,
        syscall_ns: reference::syscall_ns(),
        throughput: Vec::new(),
        memory: Vec::new(),
        latency: Vec::new(),
        stopped_reader: Vec::new(),
    };
    // One order stream per table, so a seed replays every table's orders.
    let mut streams = 0u64;
    let mut next_orders = |entries: usize| {
        streams += 1;
        orders(seed.wrapping_add(streams), entries, args.reps)
    };
    for workload in &workloads {
        let Workload {
            writers,
            readers,
            size,
        } = *workload;
        let label = format!("{writers}w/{readers}r/{size}");
        // The memory reference is the last entry of each shuffled order.
        let mut samples: Vec<Vec<Sample>> = (0..systems.len()).map(|_| Vec::new()).collect();
        let mut memory = Vec::new();
        for (rep, order) in next_orders(systems.len() + 1).into_iter().enumerate() {
            for entry in order {
                let Some(system) = systems.get_mut(entry) else {
                    progress.step(&format!("memory, {label}, rep {}", rep + 1));
                    memory.push(reference::memory(readers, duration)?);
                    continue;
                };
                let name = system.name();
                progress.step(&format!("{name}, {label}, rep {}", rep + 1));
                let measured = system::measure(system.as_mut(), *workload, duration, Pace::Flat)
                    .with_context(|| format!("{name}, {label}"))?;
                let owed = (measured.written * readers as u64).max(1) as f64;
                samples[entry].push(Sample {
                    accepted: measured.written as f64 / measured.writing.as_secs_f64(),
                    delivered: measured.tally.in_window as f64 / measured.window.as_secs_f64(),
                    lost: (1.0 - measured.tally.messages as f64 / owed).max(0.0),
                    tally: measured.tally,
                    io_wq_workers: measured.io_wq_workers,
                });
            }
        }
        for (system, samples) in systems.iter().zip(samples) {
            let stats =
                |f: fn(&Sample) -> f64| Stats::of(&samples.iter().map(f).collect::<Vec<_>>());
            let (accepted, delivered, lost) = (
                stats(|s| s.accepted),
                stats(|s| s.delivered),
                stats(|s| s.lost),
            );
            let workers = samples.iter().map(|s| s.io_wq_workers).max().unwrap_or(0);
            let mut pooled = tally::Tally::default();
            for sample in samples {
                pooled.merge(sample.tally)?;
            }
            report.throughput.push(Row {
                system: system.name().to_owned(),
                writers,
                readers,
                size,
                accepted_per_sec: accepted,
                delivered_per_sec: delivered,
                lost,
                p99_ns: pooled.latency.value_at_quantile(0.99),
                io_wq_workers: workers,
            });
        }
        report.memory.push(MemoryRow {
            writers,
            readers,
            size,
            bytes_per_sec: Stats::of(&memory),
        });
        save(&args, &report)?;
    }
    for &readers in &args.latency_readers {
        let workload = Workload {
            writers: 1,
            readers,
            size: Sizes::Fixed(64),
        };
        let mut pooled: Vec<tally::Tally> =
            (0..systems.len()).map(|_| Default::default()).collect();
        for (rep, order) in next_orders(systems.len()).into_iter().enumerate() {
            for entry in order {
                let system = &mut systems[entry];
                let name = system.name();
                progress.step(&format!(
                    "{name}, paced at {} msg/s, {readers} reader(s), rep {}",
                    args.latency_rate,
                    rep + 1
                ));
                let measured = system::measure(
                    system.as_mut(),
                    workload,
                    paced,
                    Pace::Rate(args.latency_rate),
                )
                .with_context(|| format!("{name} paced with {readers} readers"))?;
                pooled[entry].merge(measured.tally)?;
            }
        }
        for (system, tally) in systems.iter().zip(pooled) {
            let latency = &tally.latency;
            report.latency.push(LatencyRow {
                system: system.name().to_owned(),
                readers,
                size: 64,
                rate: args.latency_rate,
                samples: latency.len(),
                p50_ns: latency.value_at_quantile(0.5),
                p99_ns: latency.value_at_quantile(0.99),
                p999_ns: latency.value_at_quantile(0.999),
                max_ns: latency.max(),
                cdf: cdf(latency),
            });
        }
        save(&args, &report)?;
    }
    if !stopped_sizes.is_empty() {
        for &size in &stopped_sizes {
            let mut rates = (Vec::new(), Vec::new());
            for rep in 0..args.reps {
                progress.step(&format!("a stopped reader, {size} B, rep {}", rep + 1));
                let (alone, with_stopped) = stopped::measure(size, duration)?;
                rates.0.push(alone);
                rates.1.push(with_stopped);
            }
            report.stopped_reader.push(StoppedRow {
                size,
                alone_per_sec: Stats::of(&rates.0),
                with_stopped_per_sec: Stats::of(&rates.1),
            });
            save(&args, &report)?;
        }
    }
    progress.done();
    // A kernel that gave up on its clock mid-run (the TSC watchdog under
    // emulation) made every clock read dearer from then on: say so.
    let clock_at_end = clocksource();
    if clock_at_end != report.clocksource {
        report.clocksource = format!(
            "{} at the start but {clock_at_end} at the end (the kernel switched during the run, \
             so rows before and after the switch are not comparable)",
            report.clocksource
        );
    }
    save(&args, &report)?;
    if args.markdown.is_none() {
        print!("{}", report.markdown());
    }
    Ok(())
}

/// Writes the report as it stands to `--json` and `--markdown`: after
/// every row, so a run of hours that fails late keeps what it measured.
fn save(args: &RunArgs, report: &Report) -> Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report.markdown())
            .with_context(|| format!("writing {}", path.display()))?;
    }
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
        Command::Writers => writers::serve(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_is_random_per_repetition_and_replays_from_its_seed() {
        let one = orders(42, 10, 5);
        assert_eq!(one, orders(42, 10, 5));
        assert_ne!(one, orders(43, 10, 5));
        for order in &one {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        }
        assert!(one.windows(2).any(|w| w[0] != w[1]), "{one:?}");
    }

    fn run_args(argv: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["kchat-bench", "run"].iter().chain(argv))?;
        match cli.command {
            Command::Run(args) => Ok(args),
            _ => unreachable!("parsed as run"),
        }
    }

    fn rows(argv: &[&str]) -> Vec<(usize, usize, String)> {
        let args = run_args(argv).expect("arguments parse");
        workloads(&args)
            .expect("workloads")
            .iter()
            .map(|w| (w.writers, w.readers, w.size.spec()))
            .collect()
    }

    #[test]
    fn the_default_run_adds_two_mixed_rows_at_one_writer() {
        let all = rows(&[]);
        assert_eq!(all.len(), 3 * 2 * 3 + 2);
        assert_eq!(all[0], (1, 1, "64".to_owned()));
        let mixed: Vec<_> = all.iter().filter(|w| w.2.contains('-')).collect();
        assert_eq!(
            mixed,
            [
                &(1, 1, "64-1024".to_owned()),
                &(1, 16, "64-1024".to_owned())
            ]
        );
        // Turned off, or moved; a range among --sizes runs the product,
        // and a row asked for twice runs once.
        assert_eq!(rows(&["--mixed"]).len(), 18);
        assert_eq!(rows(&["--mixed-readers"]).len(), 18);
        assert_eq!(
            rows(&[
                "--sizes",
                "64",
                "--writers",
                "1",
                "--readers",
                "1",
                "--mixed",
                "20-64,64-4096",
                "--mixed-readers",
                "4"
            ]),
            [
                (1, 1, "64".to_owned()),
                (1, 4, "20-64".to_owned()),
                (1, 4, "64-4096".to_owned())
            ]
        );
        assert_eq!(
            rows(&["--sizes", "64-1024", "--writers", "1,4", "--readers", "1"]),
            [
                (1, 1, "64-1024".to_owned()),
                (4, 1, "64-1024".to_owned()),
                (1, 16, "64-1024".to_owned())
            ]
        );
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        for (argv, says) in [
            (["--sizes", "64,19"], "20-byte stamp"),
            (["--sizes", "1024-64"], "MIN-MAX"),
            (["--mixed", "10-100"], "20-byte stamp"),
            (["--mixed", "64-x"], "not a number"),
        ] {
            let err = run_args(&argv).err().expect("refused");
            assert!(err.to_string().contains(says), "{argv:?}: {err}");
        }
        let args = run_args(&["--mixed", "64"]).expect("parses");
        let err = workloads(&args).expect_err("one size is no mix");
        assert!(err.to_string().contains("MIN-MAX ranges"), "{err}");
    }
}
