//! What every system under test provides, and the harness that drives one
//! workload through it: readers ready first, then writers at full speed
//! (or paced) for the window, then wait for delivery to settle, then stop
//! the receivers and add up. Delivered counts arrivals inside the window.

use crate::{
    message::{self, Sizes, Stamper},
    tally::{Progress, Tally},
};
use anyhow::{anyhow, bail, Context, Result};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc, Arc, Barrier, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

/// Writers, readers and message sizes of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub writers: usize,
    pub readers: usize,
    pub size: Sizes,
}

/// One writer's way into the system, made and used on the writer's own
/// thread (some systems' ports must stay on the thread that made them).
pub trait Sender {
    /// Sends `count` messages, the next ones of `messages`: each is as
    /// long as `next_len` says and stamped by `fill` just before it goes.
    fn burst(&mut self, count: usize, messages: &mut Stamper) -> Result<()>;
    /// After the window: push out anything the client still buffers.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Makes one writer's `Sender`, on the writer's thread.
pub type MakeSender = Box<dyn FnOnce() -> Result<Box<dyn Sender>> + Send>;

/// A system with its readers subscribed, mapped and waiting: `start`
/// returns only once every reader is ready, so nothing of the set-up
/// falls inside the write window.
pub struct Started {
    pub senders: Vec<MakeSender>,
    /// Ends the receivers (after the harness saw delivery settle) and
    /// returns what they counted.
    pub finish: Box<dyn FnOnce() -> Result<Tally>>,
}

pub trait System {
    fn name(&self) -> &'static str;
    /// Whether every message must reach every reader (checked).
    fn lossless(&self) -> bool;
    /// Sets up readers (counting into `progress`) and writers; returns
    /// when every reader is ready.
    fn start(&mut self, workload: Workload, progress: Arc<Progress>) -> Result<Started>;
}

/// Readers report here once they are ready; `start` waits for all.
pub struct Ready {
    tx: mpsc::Sender<Result<(), String>>,
    rx: mpsc::Receiver<Result<(), String>>,
}

impl Ready {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Ready { tx, rx }
    }

    /// The handle one reader reports through.
    pub fn handle(&self) -> ReadyHandle {
        ReadyHandle(self.tx.clone())
    }

    /// Waits until `readers` readers said they are ready (or one failed).
    pub fn wait(self, readers: usize) -> Result<()> {
        drop(self.tx);
        let deadline = Instant::now() + READY_WITHIN;
        for n in 0..readers {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => bail!("a reader failed to get ready: {err}"),
                Err(_) => bail!(
                    "{n} of {readers} readers were ready after {}s (or one ended before)",
                    READY_WITHIN.as_secs()
                ),
            }
        }
        Ok(())
    }
}

const READY_WITHIN: Duration = Duration::from_secs(120);

/// One reader's side of `Ready`.
pub struct ReadyHandle(mpsc::Sender<Result<(), String>>);

impl ReadyHandle {
    /// Reports the reader's set-up: ready, or why not; passes it on.
    pub fn report<T>(self, setup: Result<T>) -> Result<T> {
        let _ = self
            .0
            .send(setup.as_ref().map(|_| ()).map_err(|err| format!("{err:#}")));
        setup
    }
}

/// What one throughput run measured.
pub struct Measured {
    /// Messages the writers handed to the system.
    pub written: u64,
    /// The write window, from the first writer's start (arrivals after
    /// it are not counted as delivered in it).
    pub window: Duration,
    /// From the writers' start until the last writer's last burst
    /// returned (its last burst may end after the window).
    pub writing: Duration,
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

/// The start of a window: set once, by the first thread past the start
/// line, which also fixes when the window closes. Every thread reads the
/// same instant, and nothing depends on when a busy scheduler wakes the
/// thread that runs the harness (with hundreds of busy threads on two
/// vCPUs that can be seconds).
pub struct StartLine {
    barrier: Barrier,
    begun: OnceLock<Instant>,
    duration: Duration,
}

impl StartLine {
    pub fn new(threads: usize, duration: Duration) -> Self {
        StartLine {
            barrier: Barrier::new(threads),
            begun: OnceLock::new(),
            duration,
        }
    }

    /// Waits for everyone; returns the start of the window, calling
    /// `opened` with it once (whoever is first).
    pub fn wait(&self, opened: impl FnOnce(Instant)) -> Instant {
        self.barrier.wait();
        let mut first = false;
        let begun = *self.begun.get_or_init(|| {
            first = true;
            Instant::now()
        });
        if first {
            opened(begun);
        }
        begun
    }

    /// Whether the window that began at `begun` is over.
    pub fn over(&self, begun: Instant) -> bool {
        begun.elapsed() >= self.duration
    }
}

/// One writer: makes its sender, waits for the start, writes until the
/// window is over; returns what it wrote and when its last burst returned.
fn writer(
    id: usize,
    make: MakeSender,
    sizes: Sizes,
    start: Arc<StartLine>,
    progress: Arc<Progress>,
    pace: Pace,
) -> Result<(u64, Instant)> {
    let sender = make();
    // Everyone meets at the start line, a failed writer too.
    let begun = start.wait(|begun| open_window(&progress, begun, start.duration));
    let mut sender = sender?;
    let mut messages = Stamper::new(id as u32, sizes);
    let mut sent = 0u64;
    while !start.over(begun) {
        match pace {
            Pace::Flat => {
                sender.burst(BURST, &mut messages)?;
                sent += BURST as u64;
            }
            Pace::Rate(rate) => {
                let due = Duration::from_secs_f64(sent as f64 / f64::from(rate));
                if let Some(wait) = due.checked_sub(begun.elapsed()) {
                    thread::sleep(wait);
                }
                sender.burst(1, &mut messages)?;
                sent += 1;
            }
        }
    }
    let ended = Instant::now();
    sender.finish()?;
    Ok((sent, ended))
}

/// Fixes the window's end for the receivers: `duration` after `begun`.
fn open_window(progress: &Progress, begun: Instant, duration: Duration) {
    let now = message::now_ns();
    let since = begun.elapsed().as_nanos() as u64;
    progress.close_window_at(now.saturating_sub(since) + duration.as_nanos() as u64);
}

/// Messages per burst at full speed.
pub const BURST: usize = 64;

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
    let start = Arc::new(StartLine::new(started.senders.len(), duration));
    let writers: Vec<_> = started
        .senders
        .into_iter()
        .enumerate()
        .map(|(id, make)| {
            let (start, progress) = (start.clone(), progress.clone());
            let sizes = workload.size;
            thread::spawn(move || writer(id, make, sizes, start, progress, pace))
        })
        .collect();
    // Readers are ready (`start` returned); the writers start the clock
    // together once each has its sender, and stop at the window's end.
    let mut written = 0;
    let mut last = None;
    for writer in writers {
        let (sent, ended) = writer.join().map_err(|_| anyhow!("a writer panicked"))??;
        written += sent;
        last = last.max(Some(ended));
    }
    let begun = *start
        .begun
        .get()
        .ok_or_else(|| anyhow!("no writer reached the start line"))?;
    let window = duration;
    let last = last.unwrap_or(begun);
    let writing = last - begun;
    // Delivery has settled when every copy arrived, or nothing moved for
    // half a second (lossy systems never reach the full count).
    let expected = written * workload.readers as u64;
    let mut moved = (progress.get(), Instant::now());
    let give_up = Instant::now() + Duration::from_secs(60);
    while progress.get() < expected && moved.1.elapsed() < Duration::from_millis(500) {
        thread::sleep(Duration::from_millis(20));
        let now = progress.get();
        if now != moved.0 {
            moved = (now, Instant::now());
        }
        if Instant::now() > give_up {
            break;
        }
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let tally = (started.finish)().context("stopping the receivers")?;
    if tally.corrupt > 0 {
        bail!(
            "{}: {} damaged messages (wrong length or pattern) among {} received intact",
            system.name(),
            tally.corrupt,
            tally.messages
        );
    }
    if system.lossless() && tally.messages != expected {
        bail!(
            "{} is lossless but delivered {} of {expected} messages",
            system.name(),
            tally.messages
        );
    }
    Ok(Measured {
        written,
        window,
        writing,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A system in this process: a bounded channel per reader (a queue
    /// of 256 messages, so writers wait for slow readers), a reader thread
    /// that takes `delay` per message, and optionally a byte flipped in
    /// every `damage`th message on the way.
    struct Channels {
        delay: Duration,
        damage: Option<u64>,
    }

    struct ToAll {
        readers: Vec<mpsc::SyncSender<Vec<u8>>>,
        damage: Option<u64>,
        sent: u64,
    }

    impl Sender for ToAll {
        fn burst(&mut self, count: usize, messages: &mut Stamper) -> Result<()> {
            for _ in 0..count {
                let mut message = vec![0u8; messages.next_len()];
                messages.fill(&mut message);
                self.sent += 1;
                let damaged = self
                    .damage
                    .is_some_and(|every| self.sent.is_multiple_of(every));
                if let (true, Some(last)) = (damaged, message.last_mut()) {
                    *last ^= 1;
                }
                for reader in &self.readers {
                    reader.send(message.clone())?;
                }
            }
            Ok(())
        }
    }

    impl System for Channels {
        fn name(&self) -> &'static str {
            "channels"
        }

        fn lossless(&self) -> bool {
            true
        }

        fn start(&mut self, workload: Workload, progress: Arc<Progress>) -> Result<Started> {
            let mut ends = Vec::new();
            let mut handles = Vec::new();
            for _ in 0..workload.readers {
                let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(256);
                ends.push(tx);
                let (mut tally, progress, delay) = (
                    Tally::new(workload.size, &progress),
                    progress.clone(),
                    self.delay,
                );
                handles.push(thread::spawn(move || {
                    for message in rx {
                        thread::sleep(delay);
                        tally.record(&message);
                        progress.add(1);
                    }
                    Ok(tally)
                }));
            }
            let damage = self.damage;
            let sender: MakeSender = Box::new(move || {
                Ok(Box::new(ToAll {
                    readers: ends,
                    damage,
                    sent: 0,
                }) as Box<dyn Sender>)
            });
            Ok(Started {
                senders: vec![sender],
                finish: Box::new(move || join_all(handles)),
            })
        }
    }

    const WORKLOAD: Workload = Workload {
        writers: 1,
        readers: 2,
        size: Sizes::Fixed(64),
    };

    const MIXED: Workload = Workload {
        size: Sizes::Mixed { min: 20, max: 300 },
        ..WORKLOAD
    };

    #[test]
    fn what_arrives_after_the_window_is_drain_not_delivered_in_it() {
        // A reader takes 2 ms a message: about 25 arrive in a 50 ms
        // window, while the 256 queued and the burst in flight arrive
        // after it.
        let mut system = Channels {
            delay: Duration::from_millis(2),
            damage: None,
        };
        let measured = measure(&mut system, WORKLOAD, Duration::from_millis(50), Pace::Flat)
            .expect("measured");
        let tally = &measured.tally;
        assert_eq!(
            tally.messages,
            measured.written * 2,
            "all arrive in the end"
        );
        assert!(
            tally.in_window < tally.messages / 2,
            "{} of {} counted inside the window",
            tally.in_window,
            tally.messages
        );
        assert!(measured.window >= Duration::from_millis(50));
    }

    #[test]
    fn a_damaged_message_fails_the_run() {
        let mut system = Channels {
            delay: Duration::ZERO,
            damage: Some(100),
        };
        let err = measure(&mut system, WORKLOAD, Duration::from_millis(20), Pace::Flat)
            .err()
            .expect("a run with damaged messages fails");
        assert!(err.to_string().contains("damaged messages"), "{err:#}");
    }

    #[test]
    fn mixed_sizes_go_through_whole_and_a_damaged_one_fails_the_run() {
        let mut system = Channels {
            delay: Duration::ZERO,
            damage: None,
        };
        let measured =
            measure(&mut system, MIXED, Duration::from_millis(20), Pace::Flat).expect("measured");
        let tally = &measured.tally;
        assert_eq!(tally.messages, measured.written * 2);
        // Lengths spread over the mix: the mean is near its middle.
        let mean = tally.bytes as f64 / tally.messages as f64;
        assert!((130.0..190.0).contains(&mean), "mean {mean} B");
        let mut system = Channels {
            delay: Duration::ZERO,
            damage: Some(100),
        };
        let err = measure(&mut system, MIXED, Duration::from_millis(20), Pace::Flat)
            .err()
            .expect("a run with damaged messages fails");
        assert!(err.to_string().contains("damaged messages"), "{err:#}");
    }
}
