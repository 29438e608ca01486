//! What every system under test provides, and the harness that drives one
//! workload through it: writers at full speed (or paced), then wait for
//! delivery to settle, then stop the receivers and add up.

use crate::{
    message,
    tally::{Progress, Tally},
};
use anyhow::{anyhow, Context, Result};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// Writers, readers and message size of one run.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub writers: usize,
    pub readers: usize,
    pub size: usize,
}

/// One writer's way into the system.
pub trait Sender: Send {
    /// Sends `count` messages; `fill` stamps each into the buffer just
    /// before it goes.
    fn burst(&mut self, count: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()>;
}

/// A system with its readers subscribed and ready.
pub struct Started {
    pub senders: Vec<Box<dyn Sender>>,
    /// Ends the receivers (after the harness saw delivery settle) and
    /// returns what they counted.
    pub finish: Box<dyn FnOnce() -> Result<Tally>>,
}

pub trait System {
    fn name(&self) -> &'static str;
    /// Whether every message must reach every reader (checked).
    fn lossless(&self) -> bool;
    /// Sets up readers (counting into `progress`) and writers.
    fn start(&mut self, workload: Workload, progress: Arc<Progress>) -> Result<Started>;
}

/// What one throughput run measured.
pub struct Measured {
    pub written: u64,
    pub elapsed: Duration,
    pub tally: Tally,
    /// Most io_uring worker threads (`iou-wrk-*`) alive at once.
    pub io_wq_workers: u32,
}

/// How writers pace themselves.
#[derive(Clone, Copy)]
pub enum Pace {
    /// As fast as the system takes them.
    Flat,
    /// This many messages per second per writer.
    Rate(u32),
}

/// Threads of this process named like io_uring's workers.
fn io_wq_workers() -> u32 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("iou-wrk"))
        })
        .count() as u32
}

pub fn measure(
    system: &mut dyn System,
    workload: Workload,
    duration: Duration,
    pace: Pace,
) -> Result<Measured> {
    let progress = Arc::new(Progress::default());
    let started = system.start(workload, progress.clone())?;
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let most_workers = Arc::new(AtomicU32::new(0));
    let sampler = {
        let (stop, most) = (stop_sampling.clone(), most_workers.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(io_wq_workers(), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let begun = Instant::now();
    let writers: Vec<_> = started
        .senders
        .into_iter()
        .enumerate()
        .map(|(id, mut sender)| {
            thread::spawn(move || -> Result<u64> {
                let mut seq = 0u64;
                let mut fill = |buf: &mut [u8]| {
                    message::stamp(buf, id as u32, seq);
                    seq += 1;
                };
                let mut sent = 0u64;
                while begun.elapsed() < duration {
                    match pace {
                        Pace::Flat => {
                            sender.burst(64, &mut fill)?;
                            sent += 64;
                        }
                        Pace::Rate(rate) => {
                            let due = Duration::from_secs_f64(sent as f64 / f64::from(rate));
                            if let Some(wait) = due.checked_sub(begun.elapsed()) {
                                thread::sleep(wait);
                            }
                            sender.burst(1, &mut fill)?;
                            sent += 1;
                        }
                    }
                }
                Ok(sent)
            })
        })
        .collect();
    let mut written = 0;
    for writer in writers {
        written += writer.join().map_err(|_| anyhow!("a writer panicked"))??;
    }
    let elapsed = begun.elapsed();
    // Delivery has settled when every copy arrived, or nothing moved for
    // half a second (lossy systems never reach the full count).
    let expected = written * workload.readers as u64;
    let mut last = (progress.get(), Instant::now());
    let give_up = Instant::now() + Duration::from_secs(60);
    while progress.get() < expected && last.1.elapsed() < Duration::from_millis(500) {
        thread::sleep(Duration::from_millis(20));
        let now = progress.get();
        if now != last.0 {
            last = (now, Instant::now());
        }
        if Instant::now() > give_up {
            break;
        }
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let tally = (started.finish)().context("stopping the receivers")?;
    if system.lossless() && tally.messages != expected {
        anyhow::bail!(
            "{} is lossless but delivered {} of {expected} messages",
            system.name(),
            tally.messages
        );
    }
    Ok(Measured {
        written,
        elapsed,
        tally,
        io_wq_workers: most_workers.load(Ordering::Relaxed),
    })
}

/// Joins receiver threads and merges their tallies.
pub fn join_all(handles: Vec<thread::JoinHandle<Result<Tally>>>) -> Result<Tally> {
    let mut total = Tally::default();
    for handle in handles {
        total.merge(
            handle
                .join()
                .map_err(|_| anyhow!("a receiver panicked"))??,
        )?;
    }
    Ok(total)
}
