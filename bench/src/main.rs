//! `kchat-bench`: fan-out throughput of kchat against its baseline in the
//! same guest, reported as ratios (absolute numbers under TCG mean little).
//!
//! For 1 writer and N readers and a message size, each engine runs for a
//! fixed time; readers count the bytes they receive:
//!
//! - `kchat-block`: a `block` room (lossless, like pipes);
//! - `kchat-drop`: a `drop` room (the default: writers never wait);
//! - `pipe-tee`: one pipe per reader, the writer writes each message N times.
//!
//! Then the cost of one stopped reader to a `drop` room's writer.

use anyhow::{bail, Context, Result};
use clap::Parser;
use kchat_client::{room_path, spec, Control};
use kchat_uapi::abi;
use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    thread,
    time::{Duration, Instant},
};

#[derive(Parser)]
#[command(about = "Fan-out throughput of kchat against a pipe-per-reader tee")]
struct Args {
    /// Reader counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 256])]
    readers: Vec<usize>,
    /// Message sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 4096])]
    sizes: Vec<usize>,
    /// How long each run writes, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    millis: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    KchatBlock,
    KchatDrop,
    PipeTee,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::KchatBlock => "kchat-block",
            Engine::KchatDrop => "kchat-drop",
            Engine::PipeTee => "pipe-tee",
        }
    }
}

/// What one run measured.
struct Outcome {
    /// Messages written per second by the writer.
    written_per_sec: f64,
    /// Messages received per second, all readers together.
    delivered_per_sec: f64,
}

const ROOM: &str = "bench";
const RING_BYTES: u32 = 1 << 20;

fn create_room(policy: u32, size: usize) -> Result<Control> {
    let control = Control::open().context("opening /dev/kchat/control (load kchat.ko first)")?;
    let _ = control.delete(ROOM);
    let spec = abi::RoomSpec {
        policy,
        ring_bytes: RING_BYTES,
        max_msg: size.max(64) as u32,
        ..spec(ROOM)
    };
    control.create(&spec).context("creating the bench room")?;
    Ok(control)
}

/// Reads until end-of-file, counting bytes.
fn drain(mut source: File) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match source.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => return total,
        }
    }
}

fn run(engine: Engine, readers: usize, size: usize, duration: Duration) -> Result<Outcome> {
    let message = vec![0x5a; size];
    let (mut sinks, sources): (Vec<File>, Vec<File>) = match engine {
        Engine::KchatBlock | Engine::KchatDrop => {
            let policy = if engine == Engine::KchatBlock {
                abi::POLICY_BLOCK
            } else {
                abi::POLICY_DROP
            };
            drop(create_room(policy, size)?);
            let sources = (0..readers)
                .map(|_| File::open(room_path(ROOM)))
                .collect::<std::io::Result<Vec<_>>>()?;
            let writer = File::options().write(true).open(room_path(ROOM))?;
            (vec![writer], sources)
        }
        Engine::PipeTee => {
            let mut sinks = Vec::new();
            let mut sources = Vec::new();
            for _ in 0..readers {
                let (reader, writer) = std::io::pipe()?;
                sources.push(File::from(std::os::fd::OwnedFd::from(reader)));
                sinks.push(File::from(std::os::fd::OwnedFd::from(writer)));
            }
            (sinks, sources)
        }
    };
    let counters: Vec<_> = sources
        .into_iter()
        .map(|source| thread::spawn(move || drain(source)))
        .collect();
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < duration {
        for _ in 0..64 {
            for sink in sinks.iter_mut() {
                sink.write_all(&message)?;
            }
            written += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // End of input: deleting the room ends its readers after they drain,
    // closing the pipes ends theirs.
    match engine {
        Engine::PipeTee => sinks.clear(),
        _ => Control::open()?
            .delete(ROOM)
            .context("deleting the bench room")?,
    }
    drop(sinks);
    let mut received = 0u64;
    for counter in counters {
        received += counter
            .join()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))?;
    }
    let delivered = received / size as u64;
    if engine != Engine::KchatDrop && delivered != written * readers as u64 {
        bail!(
            "{} lost messages: {delivered} of {}",
            engine.name(),
            written * readers as u64
        );
    }
    Ok(Outcome {
        written_per_sec: written as f64 / elapsed,
        delivered_per_sec: delivered as f64 / elapsed,
    })
}

/// Writer throughput in a drop room with one active reader, with and
/// without a second reader that never reads.
fn stopped_reader(size: usize, duration: Duration) -> Result<(f64, f64)> {
    let mut rates = [0.0; 2];
    for (stopped, rate) in rates.iter_mut().enumerate() {
        drop(create_room(abi::POLICY_DROP, size)?);
        let active = File::open(room_path(ROOM))?;
        let idle = (stopped == 1)
            .then(|| File::open(room_path(ROOM)))
            .transpose()?;
        let counter = thread::spawn(move || drain(active));
        let mut writer = File::options().write(true).open(room_path(ROOM))?;
        let message = vec![0x33; size];
        let started = Instant::now();
        let mut written = 0u64;
        while started.elapsed() < duration {
            for _ in 0..64 {
                writer.write_all(&message)?;
                written += 1;
            }
        }
        *rate = written as f64 / started.elapsed().as_secs_f64();
        Control::open()?.delete(ROOM)?;
        drop(idle);
        counter
            .join()
            .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    }
    Ok((rates[0], rates[1]))
}

fn human(rate: f64) -> String {
    match rate {
        r if r >= 1e9 => format!("{:.2} G", r / 1e9),
        r if r >= 1e6 => format!("{:.2} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0} "),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let duration = Duration::from_millis(args.millis);
    println!("| readers | size | engine | written msg/s | delivered msg/s | delivered B/s | per reader msg/s | vs pipe-tee |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    for &size in &args.sizes {
        for &readers in &args.readers {
            let mut results = Vec::new();
            for engine in [Engine::PipeTee, Engine::KchatBlock, Engine::KchatDrop] {
                let outcome = run(engine, readers, size, duration).with_context(|| {
                    format!("{} with {readers} readers of {size} B", engine.name())
                })?;
                results.push((engine, outcome));
            }
            let baseline = results[0].1.delivered_per_sec;
            for (engine, outcome) in &results {
                println!(
                    "| {readers} | {size} | {} | {} | {} | {}B | {} | {:.2}x |",
                    engine.name(),
                    human(outcome.written_per_sec),
                    human(outcome.delivered_per_sec),
                    human(outcome.delivered_per_sec * size as f64),
                    human(outcome.delivered_per_sec / readers as f64),
                    outcome.delivered_per_sec / baseline
                );
            }
        }
    }
    println!();
    println!("| size | writer msg/s, 1 reader | with a stopped reader too | ratio |");
    println!("|---:|---:|---:|---:|");
    for &size in &args.sizes {
        let (alone, with_stopped) = stopped_reader(size, duration)?;
        println!(
            "| {size} | {} | {} | {:.2} |",
            human(alone),
            human(with_stopped),
            with_stopped / alone
        );
    }
    Ok(())
}
