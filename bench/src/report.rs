//! Results: what a run measured (saved as JSON, so plots are drawn on the
//! host from the same numbers), the Markdown tables BENCHMARKS.md
//! records, and the targets checked against them.

use crate::reference::Reference;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

#[derive(Serialize, Deserialize)]
pub struct Report {
    /// Kernel and CPU of the guest.
    pub machine: String,
    pub millis: u64,
    pub reference: Reference,
    pub throughput: Vec<Row>,
    pub latency: Vec<LatencyRow>,
    pub stopped_reader: Vec<StoppedRow>,
}

/// One system through one workload at full speed.
#[derive(Serialize, Deserialize)]
pub struct Row {
    pub system: String,
    pub writers: usize,
    pub readers: usize,
    pub size: usize,
    pub written_per_sec: f64,
    pub delivered_per_sec: f64,
    /// Share of the copies owed to readers that never arrived.
    pub lost: f64,
    /// Write-to-read latency under full load (queueing included).
    pub p99_ns: u64,
    pub io_wq_workers: u32,
}

/// One system paced well below its capacity: latency without queueing.
#[derive(Serialize, Deserialize)]
pub struct LatencyRow {
    pub system: String,
    pub readers: usize,
    pub size: usize,
    /// Messages per second the writer sent.
    pub rate: u32,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// (quantile, latency ns) points of the distribution, for the plot.
    pub cdf: Vec<(f64, u64)>,
}

/// A `drop` room's writer, alone with one reader and with a stopped one
/// added.
#[derive(Serialize, Deserialize)]
pub struct StoppedRow {
    pub size: usize,
    pub alone_per_sec: f64,
    pub with_stopped_per_sec: f64,
}

pub fn human(rate: f64) -> String {
    match rate {
        r if r >= 1e9 => format!("{:.2} G", r / 1e9),
        r if r >= 1e6 => format!("{:.2} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0} "),
    }
}

pub fn micros(ns: u64) -> String {
    let us = ns as f64 / 1e3;
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn is_kchat(system: &str) -> bool {
    system.starts_with("kchat")
}

impl Report {
    /// The workloads, in the order they ran.
    fn workloads(&self) -> Vec<(usize, usize, usize)> {
        let mut seen = Vec::new();
        for row in &self.throughput {
            let key = (row.writers, row.readers, row.size);
            if !seen.contains(&key) {
                seen.push(key);
            }
        }
        seen
    }

    fn rows(&self, key: (usize, usize, usize)) -> impl Iterator<Item = &Row> {
        self.throughput
            .iter()
            .filter(move |r| (r.writers, r.readers, r.size) == key)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let r = &self.reference;
        let _ = writeln!(
            out,
            "Guest: {}. Each run writes for {} ms.\n\nPhysical reference in this guest: \
             memcpy {}B/s, an empty system call {:.0} ns.\n",
            self.machine,
            self.millis,
            human(r.memcpy_bytes_per_sec),
            r.syscall_ns
        );
        for key in self.workloads() {
            let (writers, readers, size) = key;
            let kchat = self
                .rows(key)
                .find(|r| r.system == "kchat")
                .map_or(f64::NAN, |r| r.delivered_per_sec);
            let _ = writeln!(
                out,
                "### {writers} writer{} → {readers} reader{}, {size} B\n",
                if writers == 1 { "" } else { "s" },
                if readers == 1 { "" } else { "s" }
            );
            out.push_str(
                "| system | written msg/s | delivered msg/s | per reader msg/s | delivered B/s | lost | p99 under load | io-wq workers | kchat ÷ this |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for row in self.rows(key) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {}B | {:.1}% | {} | {} | {:.2}x |",
                    row.system,
                    human(row.written_per_sec),
                    human(row.delivered_per_sec),
                    human(row.delivered_per_sec / readers as f64),
                    human(row.delivered_per_sec * size as f64),
                    row.lost * 100.0,
                    micros(row.p99_ns),
                    if row.system == "kchat-uring" {
                        row.io_wq_workers.to_string()
                    } else {
                        "–".into()
                    },
                    kchat / row.delivered_per_sec
                );
            }
            out.push('\n');
        }
        if !self.latency.is_empty() {
            out.push_str(
                "### Latency, paced (1 writer, no queueing)\n\n\
                 | system | readers | size | msg/s | p50 | p99 | p99.9 | max |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for row in &self.latency {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    row.system,
                    row.readers,
                    row.size,
                    row.rate,
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
                 | size | writer msg/s, 1 reader | with a stopped reader too | ratio |\n\
                 |---:|---:|---:|---:|\n",
            );
            for row in &self.stopped_reader {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.2} |",
                    row.size,
                    human(row.alone_per_sec),
                    human(row.with_stopped_per_sec),
                    row.with_stopped_per_sec / row.alone_per_sec
                );
            }
            out.push('\n');
        }
        out.push_str("### Targets\n\n");
        for (met, what) in self.targets() {
            let _ = writeln!(out, "- {} {what}", if met { "met:" } else { "**missed:**" });
        }
        out
    }

    /// The targets of the fast-path issue (#14): ratios to the pipe tee,
    /// to memcpy and to iceoryx2, paced p99s, io_uring workers.
    fn fast_path_targets(&self) -> Vec<(bool, String)> {
        let mut verdicts = Vec::new();
        let find = |system: &str, readers: usize, size: usize| {
            self.throughput.iter().find(|r| {
                r.system == system && r.writers == 1 && r.readers == readers && r.size == size
            })
        };
        if let Some(pipe) = find("pipe-tee", 1, 64) {
            for (system, goal) in [("kchat", 1.0), ("kchat-mmap", 1.5)] {
                if let Some(row) = find(system, 1, 64) {
                    let ratio = row.delivered_per_sec / pipe.delivered_per_sec;
                    verdicts.push((
                        ratio >= goal,
                        format!(
                            "1w→1r 64 B: {system} at {ratio:.2}x the pipe tee (target {goal}x)"
                        ),
                    ));
                }
            }
        }
        let memcpy = self.reference.memcpy_bytes_per_sec;
        for readers in [16, 256] {
            let Some(mapped) = find("kchat-mmap", readers, 4096) else {
                continue;
            };
            let bytes = mapped.delivered_per_sec * 4096.0;
            verdicts.push((
                bytes >= 2.0 * memcpy,
                format!(
                    "1w→{readers}r 4 KiB: kchat-mmap delivers {:.2}x the guest's memcpy bandwidth (target 2x)",
                    bytes / memcpy
                ),
            ));
            if let Some(peer) = find("iceoryx2", readers, 4096) {
                let ratio = mapped.delivered_per_sec / peer.delivered_per_sec;
                verdicts.push((
                    ratio >= 0.5,
                    format!("1w→{readers}r 4 KiB: kchat-mmap at {ratio:.2}x iceoryx2 (target 0.5x; goal: pass it)"),
                ));
            }
        }
        for system in ["kchat", "kchat-mmap"] {
            for row in self.latency.iter().filter(|r| r.system == system) {
                let above: Vec<_> = self
                    .latency
                    .iter()
                    .filter(|p| matches!(p.system.as_str(), "pipe-tee" | "iceoryx2"))
                    .filter(|p| {
                        p.readers == row.readers && p.size == row.size && p.p99_ns < row.p99_ns
                    })
                    .map(|p| format!("{} {}", p.system, micros(p.p99_ns)))
                    .collect();
                verdicts.push((
                    above.is_empty(),
                    format!(
                        "paced p99, {} reader(s): {system} {}{}",
                        row.readers,
                        micros(row.p99_ns),
                        if above.is_empty() {
                            " at or below the pipe tee's and iceoryx2's".to_owned()
                        } else {
                            format!(", above {}", above.join(", "))
                        }
                    ),
                ));
            }
        }
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
    }

    /// Each target from the benchmark issue, met or not, with the numbers.
    pub fn targets(&self) -> Vec<(bool, String)> {
        let mut verdicts = Vec::new();
        // kchat (best engine) ahead of every peer on every fan-out row.
        let mut behind = Vec::new();
        for key in self.workloads().into_iter().filter(|k| k.1 > 1) {
            let best = self
                .rows(key)
                .filter(|r| is_kchat(&r.system))
                .map(|r| r.delivered_per_sec)
                .fold(0.0, f64::max);
            for peer in self.rows(key).filter(|r| !is_kchat(&r.system)) {
                if peer.delivered_per_sec >= best {
                    behind.push(format!(
                        "{} at {}w/{}r/{} B ({:.2}x)",
                        peer.system,
                        key.0,
                        key.1,
                        key.2,
                        best / peer.delivered_per_sec
                    ));
                }
            }
        }
        verdicts.push((
            behind.is_empty(),
            if behind.is_empty() {
                "kchat delivers more than every peer on every fan-out row".to_owned()
            } else {
                format!("kchat is not ahead of: {}", behind.join(", "))
            },
        ));
        // Per-reader throughput from 16 to 256 readers within 2x.
        let mut worst = (0.0f64, String::new());
        for row16 in self
            .throughput
            .iter()
            .filter(|r| is_kchat(&r.system) && r.readers == 16)
        {
            let Some(row256) = self.throughput.iter().find(|r| {
                r.system == row16.system
                    && r.readers == 256
                    && (r.writers, r.size) == (row16.writers, row16.size)
            }) else {
                continue;
            };
            let drop = (row16.delivered_per_sec / 16.0) / (row256.delivered_per_sec / 256.0);
            if drop > worst.0 {
                worst = (
                    drop,
                    format!("{} {}w {} B", row16.system, row16.writers, row16.size),
                );
            }
        }
        if !worst.1.is_empty() {
            verdicts.push((
            worst.0 <= 2.0,
            format!(
                "per-reader throughput from 16 to 256 readers falls at most {:.2}x (worst: {}; target 2x)",
                worst.0, worst.1
            ),
        ));
        }
        for row in &self.stopped_reader {
            let ratio = row.with_stopped_per_sec / row.alone_per_sec;
            verdicts.push((
                ratio >= 0.95,
                format!(
                    "a stopped reader leaves a `drop` room's writer {:.0}% of its rate at {} B (target ≥ 95%)",
                    ratio * 100.0,
                    row.size
                ),
            ));
        }
        verdicts.extend(self.fast_path_targets());
        // p99 below every peer's, paced.
        for row in self.latency.iter().filter(|r| r.system == "kchat") {
            let beaten: Vec<_> = self
                .latency
                .iter()
                .filter(|p| !is_kchat(&p.system) && p.readers == row.readers && p.size == row.size)
                .filter(|p| p.p99_ns <= row.p99_ns)
                .map(|p| format!("{} {}", p.system, micros(p.p99_ns)))
                .collect();
            verdicts.push((
                beaten.is_empty(),
                format!(
                    "paced p99 with {} reader(s): kchat {}{}",
                    row.readers,
                    micros(row.p99_ns),
                    if beaten.is_empty() {
                        ", below every peer".to_owned()
                    } else {
                        format!(", not below {}", beaten.join(", "))
                    }
                ),
            ));
        }
        verdicts
    }
}
