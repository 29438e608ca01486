//! What every system under test provides, and the harness that drives one
//! workload through it: readers ready first, then writers at full speed
//! (or paced) for the window, then wait for delivery to settle, then stop
//! the receivers and add up. Delivered counts arrivals inside the window.

use crate::{
    message::{Sizes, Stamper},
    tally::{Progress, Tally},
    writers::{self, SenderSpec},
};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::{
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc, Arc,
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

/// One writer's way into the system, made (from its `SenderSpec`) and
/// used on the writer's own thread in the writers' process (some systems'
/// ports must stay on the thread that made them).
pub trait Sender {
    /// Sends `count` messages, the next ones of `messages`: each is as
    /// long as `next_len` says and stamped by `fill` just before it goes.
    fn burst(&mut self, count: usize, messages: &mut Stamper) -> Result<()>;
    /// After the window: push out anything the client still buffers.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A system with its readers subscribed, mapped and waiting: `start`
/// returns only once every reader is ready, so nothing of the set-up
/// falls inside the write window.
pub struct Started {
    /// The writers, made in the writers' process.
    pub senders: Vec<SenderSpec>,
    /// What the writers need of this process's fds (a tee's pipes); the
    /// harness closes these once it handed them over.
    pub fds: Vec<OwnedFd>,
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
#[derive(Clone, Copy, Serialize, Deserialize)]
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
    let progress = Arc::new(Progress::new()?);
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
    // Readers are ready (`start` returned); the writers start the clock
    // together once each has its sender, and stop at the window's end.
    let written = writers::run(
        started.senders,
        started.fds,
        workload.size,
        duration,
        pace,
        &progress,
    );
    let written = match written {
        Ok(written) => written,
        Err(err) => {
            stop_sampling.store(true, Ordering::Relaxed);
            let _ = sampler.join();
            // The receivers end all the same (nothing of them outlives
            // the run); the writers' error is the one to tell.
            let _ = (started.finish)();
            return Err(err);
        }
    };
    let window = duration;
    let writing = written.writing;
    let written = written.written;
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
pub(crate) mod tests {
    use super::*;
    use std::{
        fs::File,
        io::{Read, Write},
    };

    /// A system of pipes, like the tee but with knobs: a pipe per reader
    /// holding one page (64 messages of 64 B, so writers wait for slow
    /// readers), a reader thread that reads one message's worth at a
    /// time and takes `delay` per message, and optionally a byte flipped
    /// in every `damage`th message on the way (`SenderSpec::Test`).
    struct Pipes {
        delay: Duration,
        damage: Option<u64>,
        /// The writer fails to start instead.
        fail: bool,
    }

    /// The writer of `Pipes`, in the writers' process.
    pub(crate) struct ToAll {
        pipes: Vec<File>,
        damage: Option<u64>,
        sent: u64,
    }

    impl ToAll {
        pub(crate) fn new(fds: &[OwnedFd], damage: Option<u64>) -> Result<Self> {
            Ok(ToAll {
                pipes: writers::files(fds)?,
                damage,
                sent: 0,
            })
        }
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
                for pipe in &mut self.pipes {
                    pipe.write_all(&message)?;
                }
            }
            Ok(())
        }
    }

    impl System for Pipes {
        fn name(&self) -> &'static str {
            "pipes"
        }

        fn lossless(&self) -> bool {
            true
        }

        fn start(&mut self, workload: Workload, progress: Arc<Progress>) -> Result<Started> {
            let mut ends = Vec::new();
            let mut handles = Vec::new();
            for _ in 0..workload.readers {
                let (mut read_end, write_end) = std::io::pipe()?;
                let write_end = OwnedFd::from(write_end);
                nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096))?;
                ends.push(write_end);
                let (mut tally, progress, delay) = (
                    Tally::new(workload.size, &progress),
                    progress.clone(),
                    self.delay,
                );
                handles.push(thread::spawn(move || {
                    let mut joiner = crate::tally::Reassembler::new(tally.sizes());
                    let mut buf = [0u8; 64];
                    loop {
                        let n = read_end.read(&mut buf)?;
                        if n == 0 {
                            return Ok(tally);
                        }
                        let got = joiner.feed(&buf[..n], &mut tally);
                        thread::sleep(delay * got as u32);
                        progress.add(got);
                    }
                }));
            }
            Ok(Started {
                senders: vec![SenderSpec::Test {
                    damage: self.damage,
                    fail: self.fail,
                }],
                fds: ends,
                finish: Box::new(move || join_all(handles)),
            })
        }
    }

    fn pipes() -> Pipes {
        Pipes {
            delay: Duration::ZERO,
            damage: None,
            fail: false,
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
        // window, while the 64 its pipe holds and the rest of the burst
        // in flight arrive after it.
        let mut system = Pipes {
            delay: Duration::from_millis(2),
            ..pipes()
        };
        let measured = measure(&mut system, WORKLOAD, Duration::from_millis(50), Pace::Flat)
            .expect("measured");
        let tally = &measured.tally;
        assert_eq!(
            tally.messages,
            measured.written * 2,
            "all arrive in the end"
        );
        // The window's end is set by the writers' process and read here,
        // and stamps cross too: one clock for both.
        assert!(
            tally.in_window > 0 && tally.in_window < tally.messages / 2,
            "{} of {} counted inside the window",
            tally.in_window,
            tally.messages
        );
        assert!(measured.window >= Duration::from_millis(50));
    }

    #[test]
    fn writers_run_in_a_process_of_their_own_and_their_errors_come_back() {
        let mut system = Pipes {
            fail: true,
            ..pipes()
        };
        let err = measure(&mut system, WORKLOAD, Duration::from_millis(20), Pace::Flat)
            .err()
            .expect("a writer that cannot start fails the run");
        let text = format!("{err:#}");
        assert!(text.contains("a writer failed: no sender"), "{text}");
        let pid: u32 = text
            .rsplit(' ')
            .next()
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {text:?}"));
        assert_ne!(pid, std::process::id(), "the writer ran in the harness");
    }

    #[test]
    fn paced_writers_send_at_their_rate() {
        // 1,000 messages a second for 200 ms: about 200, each to both
        // readers (a writer that ignored the pace would send thousands).
        let measured = measure(
            &mut pipes(),
            WORKLOAD,
            Duration::from_millis(200),
            Pace::Rate(1000),
        )
        .expect("measured");
        assert!(
            (150..=210).contains(&measured.written),
            "{} written",
            measured.written
        );
        let tally = &measured.tally;
        assert_eq!(tally.messages, measured.written * 2);
        // Nothing queues at this rate: all but the last few arrive inside
        // the window, each within well under a second of its stamp.
        assert!(
            tally.in_window >= tally.messages * 3 / 4,
            "{} of {} inside the window",
            tally.in_window,
            tally.messages
        );
        // Latencies below 1 µs are recorded as 1 µs: a median at that
        // floor means stamps from a clock ahead of the readers'.
        let p50 = tally.latency.value_at_quantile(0.5);
        assert!(
            (2_000..1_000_000_000).contains(&p50),
            "median latency {p50} ns"
        );
    }

    #[test]
    fn a_damaged_message_fails_the_run() {
        let mut system = Pipes {
            damage: Some(100),
            ..pipes()
        };
        let err = measure(&mut system, WORKLOAD, Duration::from_millis(20), Pace::Flat)
            .err()
            .expect("a run with damaged messages fails");
        assert!(err.to_string().contains("damaged messages"), "{err:#}");
    }

    #[test]
    fn mixed_sizes_go_through_whole_and_a_damaged_one_fails_the_run() {
        let mut system = pipes();
        let measured =
            measure(&mut system, MIXED, Duration::from_millis(20), Pace::Flat).expect("measured");
        let tally = &measured.tally;
        assert_eq!(tally.messages, measured.written * 2);
        // Lengths spread over the mix: the mean is near its middle.
        let mean = tally.bytes as f64 / tally.messages as f64;
        assert!((130.0..190.0).contains(&mean), "mean {mean} B");
        let mut system = Pipes {
            damage: Some(100),
            ..pipes()
        };
        let err = measure(&mut system, MIXED, Duration::from_millis(20), Pace::Flat)
            .err()
            .expect("a run with damaged messages fails");
        assert!(err.to_string().contains("damaged messages"), "{err:#}");
    }
}
