//! Results: what a run measured (saved as JSON, so plots are drawn on the
//! host from the same numbers), the Markdown tables BENCHMARKS.md
//! records, and the targets checked against them. Every figure of a
//! throughput row is the median of its repetitions with their min and
//! max; every ratio is a ratio of medians.

use crate::message::Sizes;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Min, median and max of a row's repetitions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stats {
    /// Of `samples` (NaN for none); the median of an even count is the
    /// mean of the middle two.
    pub fn of(samples: &[f64]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n == 0 {
            return Stats {
                min: f64::NAN,
                median: f64::NAN,
                max: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Stats {
            min: sorted[0],
            median,
            max: sorted[n - 1],
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    /// Kernel and CPU of the guest.
    pub machine: String,
    /// vCPUs the guest has.
    pub vcpus: usize,
    /// The guest's clock source (`current_clocksource`).
    pub clocksource: String,
    /// The host's load average when the run started, if it was given.
    pub host_load: Option<String>,
    /// Seed of the systems' order in each repetition.
    pub seed: u64,
    pub reps: usize,
    pub millis: u64,
    /// getppid(2), nanoseconds per call.
    pub syscall_ns: f64,
    pub throughput: Vec<Row>,
    /// The memory reference of each throughput workload.
    pub memory: Vec<MemoryRow>,
    pub latency: Vec<LatencyRow>,
    pub stopped_reader: Vec<StoppedRow>,
}

/// One system through one workload at full speed, over the repetitions.
#[derive(Serialize, Deserialize)]
pub struct Row {
    pub system: String,
    pub writers: usize,
    pub readers: usize,
    /// A number of bytes, or a mix as a string (`"64-1024"`).
    pub size: Sizes,
    /// Messages the writers handed to the system per second of writing.
    pub accepted_per_sec: Stats,
    /// Copies that arrived (checked whole) inside the write window, per
    /// second of the window, all readers together.
    pub delivered_per_sec: Stats,
    /// Share of the copies owed to readers that never arrived, drain
    /// after the window included.
    pub lost: Stats,
    /// Write-to-read latency under full load (queueing included), all
    /// repetitions pooled.
    pub p99_ns: u64,
    /// Most io_uring workers alive at once in any repetition.
    pub io_wq_workers: u32,
}

/// The memory reference of one workload: as many threads as readers,
/// copying and sweeping.
#[derive(Serialize, Deserialize)]
pub struct MemoryRow {
    pub writers: usize,
    pub readers: usize,
    pub size: Sizes,
    pub bytes_per_sec: Stats,
}

/// One system paced well below its capacity: latency without queueing,
/// every repetition's samples pooled.
#[derive(Serialize, Deserialize)]
pub struct LatencyRow {
    pub system: String,
    pub readers: usize,
    pub size: usize,
    /// Messages per second the writer sent.
    pub rate: u32,
    /// Latency samples pooled (every reader, every repetition).
    pub samples: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// (quantile, latency ns) points of the distribution, for the plot.
    pub cdf: Vec<(f64, u64)>,
}

/// A `drop` room's writer, alone with one reader and with a stopped one
/// added, over the repetitions.
#[derive(Serialize, Deserialize)]
pub struct StoppedRow {
    pub size: usize,
    pub alone_per_sec: Stats,
    pub with_stopped_per_sec: Stats,
}

/// Paced p99s are judged from at least this many samples.
pub const MIN_LATENCY_SAMPLES: u64 = 10_000;

pub fn human(rate: f64) -> String {
    match rate {
        r if r.is_nan() => "–".to_owned(),
        r if r >= 1e9 => format!("{:.2} G", r / 1e9),
        r if r >= 1e6 => format!("{:.2} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0} "),
    }
}

/// A median with its spread: `1.23 M (1.10 M–1.30 M)`.
fn spread(stats: Stats, unit: &str) -> String {
    format!(
        "{}{unit} ({}–{})",
        human(stats.median),
        human(stats.min).trim_end(),
        human(stats.max).trim_end()
    )
}

pub fn micros(ns: u64) -> String {
    let us = ns as f64 / 1e3;
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// A latency to the microsecond, for verdicts: two that differ never
/// print the same (`micros` rounds 1.43 and 1.41 ms both to "1.4 ms").
pub fn whole_micros(ns: u64) -> String {
    format!("{} µs", ns / 1000)
}

fn is_kchat(system: &str) -> bool {
    system.starts_with("kchat")
}

/// Peers that copy each message to each reader.
const COPYING_PEERS: [&str; 3] = ["pipe-tee", "redis", "nats"];

/// The one tie rule of every target: a ratio of medians meets a target of
/// `goal` when it is at least `goal` (a tie meets it). The verdict says
/// when the repetitions' spread straddles the goal: then the run cannot
/// tell either way.
fn ratio_verdict(ours: &Row, theirs: &Row, goal: f64, what: String) -> (bool, String) {
    stats_verdict(
        &ours.delivered_per_sec,
        &theirs.delivered_per_sec,
        goal,
        what,
    )
}

/// [`ratio_verdict`] of any two figures where more is better.
pub fn stats_verdict(ours: &Stats, theirs: &Stats, goal: f64, what: String) -> (bool, String) {
    let ratio = ours.median / theirs.median;
    let low = ours.min / theirs.max;
    let high = ours.max / theirs.min;
    let unsure = if low < goal && goal <= high {
        format!(" (the repetitions span {low:.2}x–{high:.2}x: within noise)")
    } else {
        String::new()
    };
    (
        ratio >= goal,
        format!("{what}: {ratio:.2}x (target {goal}x){unsure}"),
    )
}

/// The same rule where less is better (a latency): met at or below `goal`.
pub fn stats_verdict_at_most(
    ours: &Stats,
    theirs: &Stats,
    goal: f64,
    what: String,
) -> (bool, String) {
    let ratio = ours.median / theirs.median;
    let low = ours.min / theirs.max;
    let high = ours.max / theirs.min;
    let unsure = if low <= goal && goal < high {
        format!(" (the repetitions span {low:.2}x–{high:.2}x: within noise)")
    } else {
        String::new()
    };
    (
        ratio <= goal,
        format!("{what}: {ratio:.2}x (target at most {goal}x){unsure}"),
    )
}

/// The mixed-size target: each kchat engine's delivered msg/s on a mix's
/// row is at least its own on the row of the mix's smallest size (same
/// writers and readers) divided by this, i.e. that ratio is at most this.
pub const MIXED_GOAL: f64 = 1.5;

impl Report {
    /// The workloads, in the order they ran.
    fn workloads(&self) -> Vec<(usize, usize, Sizes)> {
        let mut seen = Vec::new();
        for row in &self.throughput {
            let key = (row.writers, row.readers, row.size);
            if !seen.contains(&key) {
                seen.push(key);
            }
        }
        seen
    }

    fn rows(&self, key: (usize, usize, Sizes)) -> impl Iterator<Item = &Row> {
        self.throughput
            .iter()
            .filter(move |r| (r.writers, r.readers, r.size) == key)
    }

    /// `system`'s row at one writer, `readers` readers, `size` bytes each.
    fn find(&self, system: &str, readers: usize, size: usize) -> Option<&Row> {
        self.throughput.iter().find(|r| {
            r.system == system
                && r.writers == 1
                && r.readers == readers
                && r.size == Sizes::Fixed(size)
        })
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Guest: {}; clock source {}; host load average at the start: {}.\n\n\
             Method: each row is run {} times, the systems (and the memory reference) in a \
             random order each time (seed {}); every figure is the median of the repetitions \
             with (min–max); every ratio is a ratio of medians. Writers write for {} ms once \
             every reader is ready. **delivered msg/s** counts the copies that arrived, checked \
             byte for byte, *inside* the write window, divided by the window (drain after it \
             counts only toward `lost`); **accepted msg/s** is what the writers handed to the \
             system per second of writing. An empty system call costs {:.0} ns here.\n",
            self.machine,
            self.clocksource,
            self.host_load.as_deref().unwrap_or("not given"),
            self.reps,
            self.seed,
            self.millis,
            self.syscall_ns
        );
        for key in self.workloads() {
            let (writers, readers, size) = key;
            let kchat = self
                .rows(key)
                .find(|r| r.system == "kchat")
                .map_or(f64::NAN, |r| r.delivered_per_sec.median);
            let _ = writeln!(
                out,
                "### {writers} writer{} → {readers} reader{}, {size}\n",
                if writers == 1 { "" } else { "s" },
                if readers == 1 { "" } else { "s" }
            );
            if let Sizes::Mixed { min, max } = size {
                let _ = writeln!(
                    out,
                    "Each message's length is drawn from its writer and number, uniform from \
                     {min} to {max} B; kchat writes them framed (one record each). Delivered B/s \
                     is at the mean size, {} B.\n",
                    size.mean()
                );
            }
            out.push_str(
                "| system | accepted msg/s | delivered msg/s (min–max) | per reader msg/s | delivered B/s | lost | p99 under load | io-wq workers | kchat ÷ this |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for row in self.rows(key) {
                let delivered = row.delivered_per_sec.median;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {}B | {:.1}% | {} | {} | {} |",
                    row.system,
                    human(row.accepted_per_sec.median),
                    spread(row.delivered_per_sec, ""),
                    human(delivered / readers as f64),
                    human(delivered * size.mean()),
                    row.lost.median * 100.0,
                    micros(row.p99_ns),
                    if row.system == "kchat-uring" {
                        row.io_wq_workers.to_string()
                    } else {
                        "–".into()
                    },
                    if kchat.is_nan() {
                        "–".to_owned()
                    } else {
                        format!("{:.2}x", kchat / delivered)
                    }
                );
            }
            if let Some(memory) = self
                .memory
                .iter()
                .find(|m| (m.writers, m.readers, m.size) == key)
            {
                let _ = writeln!(
                    out,
                    "| memory: {readers} thread{} copying and sweeping | – | – | – | {} | – | – | – | – |",
                    if readers == 1 { "" } else { "s" },
                    spread(memory.bytes_per_sec, "B")
                );
            }
            out.push('\n');
        }
        if !self.latency.is_empty() {
            out.push_str(
                "### Latency, paced (1 writer, no queueing; every repetition pooled)\n\n\
                 | system | readers | size | msg/s | samples | p50 | p99 | p99.9 | max |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for row in &self.latency {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    row.system,
                    row.readers,
                    row.size,
                    row.rate,
                    row.samples,
                    micros(row.p50_ns),
                    micros(row.p99_ns),
                    micros(row.p999_ns),
                    micros(row.max_ns)
                );
            }
            out.push('\n');
        }
        if !self.stopped_reader.is_empty() {
            out.push_str(
                "### A stopped reader in a `drop` room\n\n\
                 | size | writer msg/s, 1 reader | with a stopped reader too | ratio of medians |\n\
                 |---:|---:|---:|---:|\n",
            );
            for row in &self.stopped_reader {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.2} |",
                    row.size,
                    spread(row.alone_per_sec, ""),
                    spread(row.with_stopped_per_sec, ""),
                    row.with_stopped_per_sec.median / row.alone_per_sec.median
                );
            }
            out.push('\n');
        }
        out.push_str(
            "### Targets\n\n\
             Ratios of medians; a target is met at or past its goal (a tie meets it).\n\n",
        );
        for (outcome, what) in self.targets() {
            let mark = match outcome {
                Outcome::Met => "met:",
                Outcome::Missed => "**missed:**",
                Outcome::NotJudged => "not judged:",
            };
            let _ = writeln!(out, "- {mark} {what}");
        }
        out
    }

    /// Each target of the benchmark issue (#22), met or not, with the
    /// numbers; rows the run did not measure are left out.
    pub fn targets(&self) -> Vec<(Outcome, String)> {
        let mut verdicts = Vec::new();
        let mut unjudged = Vec::new();
        if let Some(pipe) = self.find("pipe-tee", 1, 64) {
            for (system, goal) in [("kchat", 1.0), ("kchat-mmap", 1.5)] {
                if let Some(row) = self.find(system, 1, 64) {
                    verdicts.push(ratio_verdict(
                        row,
                        pipe,
                        goal,
                        format!("1w→1r 64 B: {system} ÷ the pipe tee"),
                    ));
                }
            }
        }
        for readers in [16, 256] {
            for size in [64, 4096] {
                let key = (1, readers, Sizes::Fixed(size));
                // The kchat engine with the highest median, named.
                let best = self
                    .rows(key)
                    .filter(|r| is_kchat(&r.system))
                    .max_by(|a, b| {
                        a.delivered_per_sec
                            .median
                            .total_cmp(&b.delivered_per_sec.median)
                    });
                let Some(best) = best else { continue };
                for peer in self.rows(key).filter(|r| !is_kchat(&r.system)) {
                    verdicts.push(ratio_verdict(
                        best,
                        peer,
                        1.0,
                        format!(
                            "1w→{readers}r {size} B: the best kchat engine ({}) ÷ {}",
                            best.system, peer.system
                        ),
                    ));
                }
                if let Some(kchat) = self.find("kchat", readers, size) {
                    for peer in self
                        .rows(key)
                        .filter(|r| COPYING_PEERS.contains(&r.system.as_str()))
                    {
                        verdicts.push(ratio_verdict(
                            kchat,
                            peer,
                            1.0,
                            format!("1w→{readers}r {size} B: kchat (`read`) ÷ {}", peer.system),
                        ));
                    }
                }
                if let (Some(mapped), Some(peer)) = (
                    self.find("kchat-mmap", readers, size),
                    self.find("iceoryx2", readers, size),
                ) {
                    verdicts.push(ratio_verdict(
                        mapped,
                        peer,
                        1.0,
                        format!("1w→{readers}r {size} B: kchat-mmap ÷ iceoryx2"),
                    ));
                }
            }
        }
        for system in ["kchat", "kchat-mmap"] {
            for row in self.latency.iter().filter(|r| r.system == system) {
                let peers: Vec<_> = self
                    .latency
                    .iter()
                    .filter(|p| !is_kchat(&p.system) && p.readers == row.readers)
                    .collect();
                let fewest = peers.iter().map(|p| p.samples).fold(row.samples, u64::min);
                if fewest < MIN_LATENCY_SAMPLES {
                    unjudged.push(format!(
                        "paced p99, {} reader(s): {system}: a row has {fewest} samples (at least {MIN_LATENCY_SAMPLES} needed)",
                        row.readers
                    ));
                    continue;
                }
                let above: Vec<_> = peers
                    .iter()
                    .filter(|p| p.p99_ns < row.p99_ns)
                    .map(|p| format!("{} {}", p.system, whole_micros(p.p99_ns)))
                    .collect();
                verdicts.push((
                    above.is_empty(),
                    format!(
                        "paced p99, {} reader(s): {system} {}{}",
                        row.readers,
                        whole_micros(row.p99_ns),
                        if above.is_empty() {
                            " at or below every peer's".to_owned()
                        } else {
                            format!(", above {}", above.join(", "))
                        }
                    ),
                ));
            }
        }
        for row in &self.stopped_reader {
            verdicts.push(stats_verdict(
                &row.with_stopped_per_sec,
                &row.alone_per_sec,
                0.95,
                format!(
                    "{} B: a `drop` room's writer with a stopped reader too ÷ with one reader",
                    row.size
                ),
            ));
        }
        let (mixed, thin) = self.mixed_targets();
        verdicts.extend(mixed);
        unjudged.extend(thin);
        let uring: Vec<_> = self
            .throughput
            .iter()
            .filter(|r| r.system == "kchat-uring")
            .collect();
        if !uring.is_empty() {
            let most = uring.iter().map(|r| r.io_wq_workers).max().unwrap_or(0);
            verdicts.push((
                most == 0,
                format!("io_uring engine: at most {most} io-wq workers in any row (target 0)"),
            ));
        }
        verdicts
            .into_iter()
            .map(|(met, what)| (if met { Outcome::Met } else { Outcome::Missed }, what))
            .chain(unjudged.into_iter().map(|what| (Outcome::NotJudged, what)))
            .collect()
    }

    /// Mixed sizes: every kchat engine on a mix's row within
    /// [`MIXED_GOAL`] of its own figure on the row of the mix's smallest
    /// size at the same writers and readers (fixed ÷ mixed delivered
    /// msg/s at most the goal, the same tie and noise rule as every
    /// target). Framing, reading a length from each stamp and larger
    /// messages on average may cost something, not a collapse. A mixed
    /// row without its fixed pair is not judged. Returns the verdicts and
    /// the rows not judged.
    fn mixed_targets(&self) -> (Vec<(bool, String)>, Vec<String>) {
        let mut verdicts = Vec::new();
        let mut unjudged = Vec::new();
        for row in self.throughput.iter().filter(|r| is_kchat(&r.system)) {
            let Sizes::Mixed { min, .. } = row.size else {
                continue;
            };
            let (writers, readers) = (row.writers, row.readers);
            let what = format!(
                "mixed sizes, {writers}w→{readers}r: {}'s msg/s at {min} B ÷ at {}",
                row.system, row.size
            );
            let fixed = self.throughput.iter().find(|f| {
                f.system == row.system
                    && (f.writers, f.readers) == (writers, readers)
                    && f.size == Sizes::Fixed(min)
            });
            match fixed {
                Some(fixed) => verdicts.push(stats_verdict_at_most(
                    &fixed.delivered_per_sec,
                    &row.delivered_per_sec,
                    MIXED_GOAL,
                    what,
                )),
                None => unjudged.push(format!(
                    "{what}: the run has no {min} B row to pair it with"
                )),
            }
        }
        (verdicts, unjudged)
    }
}

/// A target's line in the report: a row too thin to judge is neither met
/// nor missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Met,
    Missed,
    NotJudged,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_min_median_max() {
        assert_eq!(
            Stats::of(&[5.0, 1.0, 3.0]),
            Stats {
                min: 1.0,
                median: 3.0,
                max: 5.0
            }
        );
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 10.0]).median, 3.0);
        assert_eq!(Stats::of(&[7.0]).median, 7.0);
        assert!(Stats::of(&[]).median.is_nan());
    }

    fn row(system: &str, samples: &[f64]) -> Row {
        Row {
            system: system.to_owned(),
            writers: 1,
            readers: 1,
            size: Sizes::Fixed(64),
            accepted_per_sec: Stats::of(samples),
            delivered_per_sec: Stats::of(samples),
            lost: Stats::of(&[0.0]),
            p99_ns: 0,
            io_wq_workers: 0,
        }
    }

    #[test]
    fn a_ratio_is_of_medians_a_tie_meets_it_and_overlap_is_said() {
        let ours = row("kchat", &[1.0, 10.0, 100.0]);
        let theirs = row("pipe-tee", &[9.0, 10.0, 11.0]);
        let (met, what) = ratio_verdict(&ours, &theirs, 1.0, "x".into());
        assert!(met, "{what}");
        assert!(
            what.contains("1.00x") && what.contains("within noise"),
            "{what}"
        );
        let clear = row("kchat", &[30.0, 31.0, 32.0]);
        let (met, what) = ratio_verdict(&clear, &theirs, 1.5, "x".into());
        assert!(met && !what.contains("noise"), "{what}");
        let (met, _) = ratio_verdict(&theirs, &clear, 1.0, "x".into());
        assert!(!met);
    }

    #[test]
    fn a_latency_meets_its_target_at_or_below_it() {
        let nats = Stats::of(&[10.0, 10.0, 10.0]);
        let (met, what) =
            stats_verdict_at_most(&Stats::of(&[12.0, 12.0, 12.0]), &nats, 1.2, "x".into());
        assert!(met && !what.contains("noise"), "{what}");
        let (met, what) =
            stats_verdict_at_most(&Stats::of(&[11.0, 15.0, 16.0]), &nats, 1.2, "x".into());
        assert!(
            !met && what.contains("1.50x") && what.contains("within noise"),
            "{what}"
        );
        let (met, _) =
            stats_verdict_at_most(&Stats::of(&[20.0, 20.0, 20.0]), &nats, 1.2, "x".into());
        assert!(!met);
    }

    #[test]
    fn a_paced_p99_verdict_tells_close_latencies_apart() {
        let paced = |system: &str, p99_ns| LatencyRow {
            system: system.into(),
            readers: 16,
            size: 64,
            rate: 1000,
            samples: MIN_LATENCY_SAMPLES,
            p50_ns: 100_000,
            p99_ns,
            p999_ns: p99_ns,
            max_ns: p99_ns,
            cdf: Vec::new(),
        };
        let mut report = report(Vec::new());
        report.latency = vec![
            paced("kchat", 1_434_000),
            paced("kchat-mmap", 1_300_000),
            paced("pipe-tee", 1_412_000),
        ];
        let targets = report.targets();
        let kchat = targets
            .iter()
            .find(|(_, what)| what.contains("16 reader(s): kchat "))
            .map(|(_, what)| what.as_str())
            .expect("a verdict on kchat's paced p99");
        assert!(
            kchat.contains("kchat 1434 µs, above pipe-tee 1412 µs"),
            "{kchat}"
        );
    }

    fn report(throughput: Vec<Row>) -> Report {
        Report {
            machine: String::new(),
            vcpus: 2,
            clocksource: "tsc".into(),
            host_load: None,
            seed: 1,
            reps: 3,
            millis: 100,
            syscall_ns: 100.0,
            throughput,
            memory: Vec::new(),
            latency: Vec::new(),
            stopped_reader: Vec::new(),
        }
    }

    fn at(system: &str, readers: usize, size: Sizes, samples: &[f64]) -> Row {
        Row {
            readers,
            size,
            ..row(system, samples)
        }
    }

    const MIX: Sizes = Sizes::Mixed { min: 64, max: 1024 };

    #[test]
    fn each_kchat_engine_on_a_mix_is_judged_against_its_own_smallest_size() {
        let fixed = Sizes::Fixed(64);
        let report = report(vec![
            at("kchat", 16, fixed, &[100.0, 100.0, 100.0]),
            at("kchat-mmap", 16, fixed, &[100.0, 100.0, 100.0]),
            at("kchat-uring", 16, fixed, &[90.0, 100.0, 110.0]),
            at("nats", 16, fixed, &[10.0, 10.0, 10.0]),
            at("kchat", 16, MIX, &[70.0, 70.0, 70.0]),
            // Exactly 1.5x slower: a tie meets the target.
            at("kchat-mmap", 16, MIX, &[40.0, 100.0 / 1.5, 80.0]),
            // Past it, with repetitions on both sides: missed, said noisy.
            at("kchat-uring", 16, MIX, &[60.0, 62.0, 80.0]),
            // No fixed row at 1 reader: not judged.
            at("kchat", 1, MIX, &[70.0, 70.0, 70.0]),
            // Peers have no such target.
            at("nats", 16, MIX, &[1.0, 1.0, 1.0]),
        ]);
        let targets = report.targets();
        let mixed: Vec<_> = targets
            .iter()
            .filter(|(_, what)| what.starts_with("mixed sizes"))
            .collect();
        assert_eq!(mixed.len(), 4, "{mixed:#?}");
        let find = |system: &str, readers: usize| {
            mixed
                .iter()
                .find(|(_, what)| what.contains(&format!("{readers}r: {system}'s")))
                .unwrap_or_else(|| panic!("{system} at {readers}: {mixed:#?}"))
        };
        let (outcome, what) = find("kchat", 16);
        assert_eq!(*outcome, Outcome::Met, "{what}");
        assert!(
            what.contains("64–1024 B mixed") && what.contains("1.43x"),
            "{what}"
        );
        assert!(what.contains("at most 1.5x"), "{what}");
        let (outcome, what) = find("kchat-mmap", 16);
        assert_eq!(*outcome, Outcome::Met, "{what}");
        let (outcome, what) = find("kchat-uring", 16);
        assert_eq!(*outcome, Outcome::Missed, "{what}");
        assert!(what.contains("within noise"), "{what}");
        let (outcome, what) = find("kchat", 1);
        assert_eq!(*outcome, Outcome::NotJudged, "{what}");
        assert!(what.contains("no 64 B row"), "{what}");
        assert!(!targets.iter().any(|(_, what)| what.contains("nats's")));
    }

    #[test]
    fn a_mix_is_a_row_of_its_own_in_the_tables_and_the_json() {
        let mut report = report(vec![
            at("kchat", 1, Sizes::Fixed(64), &[100.0]),
            at("kchat", 1, MIX, &[80.0]),
        ]);
        report.memory.push(MemoryRow {
            writers: 1,
            readers: 1,
            size: MIX,
            bytes_per_sec: Stats::of(&[1e9]),
        });
        let markdown = report.markdown();
        assert!(
            markdown.contains("### 1 writer → 1 reader, 64 B\n"),
            "{markdown}"
        );
        assert!(
            markdown.contains("### 1 writer → 1 reader, 64–1024 B mixed\n"),
            "{markdown}"
        );
        // Bytes per second at the mean size: 80 x 544 B.
        assert!(markdown.contains("| 43.5 kB |"), "{markdown}");
        let json = serde_json::to_string(&report).expect("serialises");
        assert!(
            json.contains("\"size\":64,") && json.contains("\"size\":\"64-1024\""),
            "{json}"
        );
        let back: Report = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back.throughput[1].size, MIX);
        assert_eq!(back.memory[0].size, MIX);
    }
}
