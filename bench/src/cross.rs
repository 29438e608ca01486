//! The cross-node rows: a writer on one machine, readers on another,
//! through kchat rooms joined by `kchat-bridge` against NATS doing the
//! same job its own way, on the same link in the same run. Two kinds of
//! delivery: a `drop` room against a plain NATS publisher with
//! subscribers, and a `block` room (JetStream under the bridge) against a
//! JetStream publisher that waits for its acknowledgements, read by
//! ordered consumers. `cargo xtask bench --cross` boots two guests: the
//! first runs `cross` (nats-server with JetStream, its bridge, the
//! writers, the report), the second `cross-peer` (its bridge, the readers
//! and the echo). The two talk over NATS subjects `kbench.*`; every wait
//! is bounded.
//!
//! Every system runs `--reps` times, in a random order each repetition
//! (the seed is in the report). Throughput counts what the second
//! machine's readers got between the first and the last arrival (its own
//! clock); latency is the round trip of a ping answered from the second
//! machine (the guests' clocks are not comparable), paced well below
//! capacity, with the echo set up only while pings run.

use crate::report::Stats;
use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use kchat_uapi::abi;
use serde::{Deserialize, Serialize};
use std::{
    collections::VecDeque,
    fmt::Write as _,
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const DROP_ROOM: &str = "xnode";
const BLOCK_ROOM: &str = "xblock";
const DATA: &str = "kbench.data";
const PING: &str = "kbench.ping";
const PONG: &str = "kbench.pong";
/// The JetStream peer's stream and its subjects.
const STREAM: &str = "KBENCH";
const JS_DATA: &str = "kbench.js.data";
const JS_PING: &str = "kbench.js.ping";
const JS_PONG: &str = "kbench.js.pong";
/// Acknowledgements the JetStream publisher lets run ahead of it: how its
/// users publish fast and still know every message was stored.
const ACKS_IN_FLIGHT: usize = 256;
/// Longest a reader waits for the rest once arrivals stop.
const SETTLE: Duration = Duration::from_secs(3);
/// The `block` room's ring: smaller than what one run writes, so the
/// bridge holds the writer back and the row measures what the room
/// sustains, not what its ring absorbs.
const BLOCK_RING: u32 = 1 << 20;

#[derive(clap::Args)]
pub struct CrossArgs {
    /// Where nats-server listens (this machine's address on the link).
    #[arg(long, default_value = "10.77.0.1:4222")]
    listen: String,
    /// Messages per throughput run.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Readers on the other machine.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Round trips per latency run (paced at 100 per second).
    #[arg(long, default_value_t = 300)]
    pings: u32,
    /// Repetitions of every system (in a random order each time).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seed of the random orders (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The host's load average, for the report.
    #[arg(long)]
    host_load: Option<String>,
    /// Where to save the results as JSON (and the table beside it, .md).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct PeerArgs {
    #[arg(long, default_value = "nats://10.77.0.1:4222")]
    nats: String,
}

/// The four ways across, in the order of the report.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    KchatDrop,
    Nats,
    KchatBlock,
    Jetstream,
}

impl System {
    const ALL: [System; 4] = [
        System::KchatDrop,
        System::Nats,
        System::KchatBlock,
        System::Jetstream,
    ];

    fn label(self) -> &'static str {
        match self {
            System::KchatDrop => "kchat (bridged `drop` room)",
            System::Nats => "NATS (publisher to subscribers)",
            System::KchatBlock => "kchat (bridged `block` room, JetStream)",
            System::Jetstream => "NATS JetStream (acked publisher, ordered consumers)",
        }
    }

    fn room(self) -> Option<&'static str> {
        match self {
            System::KchatDrop => Some(DROP_ROOM),
            System::KchatBlock => Some(BLOCK_ROOM),
            System::Nats | System::Jetstream => None,
        }
    }
}

/// What the other machine is asked to set up.
#[derive(Serialize, Deserialize, Clone, Copy)]
struct Arm {
    system: System,
    readers: usize,
    count: u64,
    /// Every message's length, checked with every byte by each reader.
    size: usize,
}

/// What the other machine's readers got.
#[derive(Serialize, Deserialize, Default)]
struct Got {
    /// Messages that arrived whole: the writer's length and every byte.
    received: u64,
    /// Messages that arrived but not as written (counted, never delivered).
    garbled: u64,
    span_ns: u64,
    /// The second machine's bridge's counters of the room after the run.
    bridge: String,
}

/// One system over its repetitions: rates and the per-repetition median
/// round trip as min/median/max, the tail pooled over every round trip.
#[derive(Serialize, Deserialize)]
pub struct CrossRow {
    pub system: System,
    pub sent_per_sec: Stats,
    pub delivered_per_sec: Stats,
    pub lost: Stats,
    pub rtt_p50_ns: Stats,
    pub rtt_p99_ns: u64,
    pub round_trips: u64,
    pub pings_lost: u32,
    /// Times the first machine's `block` room evicted a reader that held
    /// its writer back past `max_wait` (the bridge is its only reader).
    pub laggard_evictions: u32,
}

#[derive(Serialize, Deserialize)]
pub struct CrossReport {
    pub machine: String,
    pub clocksource: String,
    pub host_load: Option<String>,
    pub seed: u64,
    pub reps: usize,
    pub count: u64,
    pub size: usize,
    pub readers: usize,
    pub pings: u32,
    pub rows: Vec<CrossRow>,
}

/// Killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn create_rooms() -> Result<()> {
    let control = kchat_client::Control::open()
        .context("opening /dev/kchat/control (is kchat.ko loaded?)")?;
    let mut spec = kchat_client::spec(DROP_ROOM);
    spec.ring_bytes = 4 << 20;
    control
        .create(&spec)
        .with_context(|| format!("creating room {DROP_ROOM}"))?;
    let mut spec = kchat_client::spec(BLOCK_ROOM);
    spec.ring_bytes = BLOCK_RING;
    spec.policy = abi::POLICY_BLOCK;
    control
        .create(&spec)
        .with_context(|| format!("creating room {BLOCK_ROOM}"))
}

fn laggard_evictions() -> Result<u32> {
    let control = kchat_client::Control::open().context("opening /dev/kchat/control")?;
    Ok(control
        .info(BLOCK_ROOM)
        .with_context(|| format!("reading {BLOCK_ROOM}'s counters"))?
        .laggard_evictions)
}

/// The JetStream peer's stream, stored as the bridge stores a `block`
/// room's (file, the same duplicate window), so the two rows differ only
/// in what sits around JetStream.
async fn bench_stream(js: &jetstream::Context) -> Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["kbench.js.>".to_owned()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        // No byte bound, as the bridge's default: one is reserved whole
        // from the guest's small JetStream store.
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating the JetStream stream {STREAM}"))
}

/// An ordered consumer of `subject` from the next message on.
async fn ordered(stream: &stream::Stream, subject: &str) -> Result<consumer::pull::Ordered> {
    stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating an ordered consumer of {subject}"))?
        .messages()
        .await
        .with_context(|| format!("pulling {subject}"))
}

/// Starts this machine's bridge for both rooms and waits until it is up.
fn start_bridge(node: &str, nats: &str) -> Result<Process> {
    let exe = std::env::current_exe()?;
    let bridge = exe.with_file_name("kchat-bridge");
    let dir = Path::new("/tmp/kbench");
    std::fs::create_dir_all(dir)?;
    let config = dir.join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "node = \"{node}\"\nstate_dir = \"/tmp/kbench/state\"\n[nats]\nservers = [\"{nats}\"]\n\
             [metrics]\nlisten = \"127.0.0.1:9478\"\n[rooms.{DROP_ROOM}]\n[rooms.{BLOCK_ROOM}]\n"
        ),
    )?;
    let child = Command::new(&bridge)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("bridge.log"))?)
        .spawn()
        .with_context(|| format!("starting {}", bridge.display()))?;
    let process = Process(child);
    let started = Instant::now();
    loop {
        let up = bridge_metrics().map(|text| {
            [DROP_ROOM, BLOCK_ROOM]
                .iter()
                .all(|room| text.contains(&format!("kchat_bridge_room_up{{room=\"{room}\"}} 1")))
        });
        if up == Some(true) {
            return Ok(process);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the bridge did not bridge {DROP_ROOM} and {BLOCK_ROOM} within a minute: {}",
            std::fs::read_to_string(dir.join("bridge.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// This machine's bridge's metrics page, if it answers.
fn bridge_metrics() -> Option<String> {
    let mut s = std::net::TcpStream::connect("127.0.0.1:9478").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The bridge's counters of `room`, for the terminal: where a slow row
/// spent its time.
fn room_counters(room: &str) -> String {
    let label = format!("room=\"{room}\"");
    bridge_metrics()
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&label) && !line.starts_with('#'))
        .map(|line| line.replace(&format!("{{{label}}}"), ""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn open_room(room: &str, write: bool) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(if write { 0 } else { nix::libc::O_NONBLOCK })
        .open(kchat_client::room_path(room))
        .with_context(|| format!("opening room {room}"))?;
    if !write {
        kchat_client::set_read_mode(&file, abi::READ_FRAMED_ORIGIN)?;
    }
    Ok(file)
}

/// Reads relayed messages from `node` off a non-blocking framed-origin fd,
/// calling `each` with each payload, until `stop` or `limit`.
fn read_relayed(
    file: &mut std::fs::File,
    node: &str,
    stop: &AtomicBool,
    limit: Duration,
    mut each: impl FnMut(&[u8]) -> bool,
) -> Result<()> {
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(file),
        nix::poll::PollFlags::POLLIN,
    )];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16))?;
        let n = match (&*file).read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err.into()),
        };
        for (_, origin, payload) in
            kchat_client::split_origin_frames(&buf[..n]).context("torn frames")?
        {
            if origin.flags & abi::ORIGIN_RELAYED != 0
                && abi::field_name(&origin.node) == Some(node.as_bytes())
                && !each(payload)
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The second machine's answer to pings, up only while a latency run is.
enum Echo {
    Room(std::thread::JoinHandle<Result<()>>, Arc<AtomicBool>),
    Task(tokio::task::JoinHandle<Result<()>>),
}

impl Echo {
    async fn start(client: &async_nats::Client, system: System) -> Result<Echo> {
        Ok(match system {
            System::KchatDrop | System::KchatBlock => {
                let room = system.room().unwrap_or(DROP_ROOM);
                let mut reader = open_room(room, false)?;
                let mut writer = open_room(room, true)?;
                let stop = Arc::new(AtomicBool::new(false));
                let stopped = stop.clone();
                let thread = std::thread::spawn(move || {
                    read_relayed(
                        &mut reader,
                        "node-a",
                        &stopped,
                        Duration::from_secs(600),
                        |payload| {
                            if payload.starts_with(b"ping ") {
                                let mut pong = payload.to_vec();
                                pong[1] = b'o';
                                let _ = writer.write_all(&pong);
                            }
                            true
                        },
                    )
                });
                Echo::Room(thread, stop)
            }
            System::Nats => {
                let mut pings = client.subscribe(PING).await?;
                client.flush().await?;
                let client = client.clone();
                Echo::Task(tokio::spawn(async move {
                    while let Some(message) = pings.next().await {
                        client.publish(PONG, message.payload).await?;
                    }
                    Ok(())
                }))
            }
            System::Jetstream => {
                let js = jetstream::new(client.clone());
                let mut pings = ordered(&bench_stream(&js).await?, JS_PING).await?;
                Echo::Task(tokio::spawn(async move {
                    while let Some(message) = pings.next().await {
                        let message = message.context("reading a ping")?;
                        js.publish(JS_PONG, message.payload.clone())
                            .await?
                            .await
                            .context("storing a pong")?;
                    }
                    Ok(())
                }))
            }
        })
    }

    async fn stop(self) {
        match self {
            Echo::Room(thread, stop) => {
                stop.store(true, Ordering::Relaxed);
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            Echo::Task(task) => {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// The second machine: its bridge, then readers and the echo on demand.
pub fn peer(args: PeerArgs) -> Result<()> {
    create_rooms()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(async {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&args.nats)
            .await
    })?;
    let _bridge = start_bridge("node-b", &args.nats)?;
    runtime.block_on(async {
        let mut arm = client.subscribe("kbench.arm").await?;
        let mut ready = client.subscribe("kbench.ready").await?;
        let mut echo_on = client.subscribe("kbench.echo").await?;
        let mut echo_off = client.subscribe("kbench.echo-off").await?;
        let mut done = client.subscribe("kbench.done").await?;
        let mut echo = None;
        loop {
            tokio::select! {
                Some(message) = ready.next() => {
                    if let Some(reply) = message.reply {
                        client.publish(reply, "ready".into()).await?;
                    }
                }
                Some(message) = echo_on.next() => {
                    let system: System = serde_json::from_slice(&message.payload)?;
                    echo = Some(Echo::start(&client, system).await?);
                    if let Some(reply) = message.reply {
                        client.publish(reply, "on".into()).await?;
                    }
                }
                Some(message) = echo_off.next() => {
                    if let Some(echo) = echo.take() {
                        echo.stop().await;
                    }
                    if let Some(reply) = message.reply {
                        client.publish(reply, "off".into()).await?;
                    }
                }
                Some(message) = arm.next() => {
                    let arm: Arm = serde_json::from_slice(&message.payload)?;
                    let got = readers(&client, arm).await?;
                    if let Some(reply) = message.reply {
                        client.publish(reply, serde_json::to_vec(&got)?.into()).await?;
                    }
                }
                _ = done.next() => break,
            }
        }
        if let Some(echo) = echo {
            echo.stop().await;
        }
        anyhow::Ok(())
    })
}

/// Sets up the readers, says so on `kbench.armed`, and counts until every
/// reader has `count` or arrivals stop for `SETTLE`.
async fn readers(client: &async_nats::Client, arm: Arm) -> Result<Got> {
    let received = Arc::new(AtomicU64::new(0));
    let garbled = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(u64::MAX));
    let last = Arc::new(AtomicU64::new(0));
    let clock = Instant::now();
    // Every reader of every system reads each byte of what it counts.
    let note = {
        let (received, garbled) = (received.clone(), garbled.clone());
        let (first, last) = (first.clone(), last.clone());
        move |payload: &[u8]| {
            if !is_whole(payload, arm.size) {
                garbled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let now = clock.elapsed().as_nanos() as u64;
            first.fetch_min(now, Ordering::Relaxed);
            last.fetch_max(now, Ordering::Relaxed);
            received.fetch_add(1, Ordering::Relaxed);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut tasks = Vec::new();
    let js = jetstream::new(client.clone());
    let js_stream = match arm.system {
        System::Jetstream => Some(bench_stream(&js).await?),
        _ => None,
    };
    for _ in 0..arm.readers {
        let (note, stop) = (note.clone(), stop.clone());
        match (arm.system.room(), &js_stream) {
            (Some(room), _) => {
                let mut reader = open_room(room, false)?;
                threads.push(std::thread::spawn(move || {
                    let mut n = 0;
                    read_relayed(
                        &mut reader,
                        "node-a",
                        &stop,
                        Duration::from_secs(300),
                        |payload| {
                            note(payload);
                            n += 1;
                            n < arm.count
                        },
                    )
                }));
            }
            (None, Some(js_stream)) => {
                let mut messages = ordered(js_stream, JS_DATA).await?;
                tasks.push(tokio::spawn(async move {
                    let mut n = 0;
                    while n < arm.count {
                        tokio::select! {
                            Some(Ok(message)) = messages.next() => { note(&message.payload); n += 1; }
                            _ = tokio::time::sleep(Duration::from_millis(100)) => if stop.load(Ordering::Relaxed) { break },
                        }
                    }
                }));
            }
            (None, None) => {
                let mut subscriber = client.subscribe(DATA).await?;
                tasks.push(tokio::spawn(async move {
                    let mut n = 0;
                    while n < arm.count {
                        tokio::select! {
                            Some(message) = subscriber.next() => { note(&message.payload); n += 1; }
                            _ = tokio::time::sleep(Duration::from_millis(100)) => if stop.load(Ordering::Relaxed) { break },
                        }
                    }
                }));
            }
        }
    }
    client.flush().await?;
    client.publish("kbench.armed", "".into()).await?;
    client.flush().await?;
    let owed = arm.count * arm.readers as u64;
    let mut seen = 0;
    let mut quiet = Instant::now();
    let started = Instant::now();
    while received.load(Ordering::Relaxed) < owed
        && quiet.elapsed() < SETTLE
        && started.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = received.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            quiet = Instant::now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    let (first, last) = (first.load(Ordering::Relaxed), last.load(Ordering::Relaxed));
    Ok(Got {
        received: received.load(Ordering::Relaxed),
        garbled: garbled.load(Ordering::Relaxed),
        span_ns: last.saturating_sub(first).max(1),
        bridge: arm.system.room().map(room_counters).unwrap_or_default(),
    })
}

/// One repetition of one system.
struct Sample {
    sent_per_sec: f64,
    delivered_per_sec: f64,
    lost: f64,
    rtt_p50_ns: u64,
    pings_lost: u32,
    laggard_evictions: u32,
}

/// The first machine: server, bridge, writers, report.
pub fn drive(args: CrossArgs) -> Result<()> {
    ensure!(args.size >= 16, "messages must hold \"data\" and a number");
    ensure!(args.reps >= 1, "--reps must be at least 1");
    let (host, port) = args.listen.rsplit_once(':').context("--listen HOST:PORT")?;
    let store = Path::new("/tmp/kbench/js");
    std::fs::create_dir_all(store)?;
    let _server = Process(
        Command::new("nats-server")
            .args(["-a", host, "-p", port, "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?,
    );
    let nats = format!("nats://{}", args.listen);
    create_rooms()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(async {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&nats)
            .await
    })?;
    // The JetStream context spawns onto the runtime it is made in.
    let js = runtime.block_on(async { jetstream::new(client.clone()) });
    let js_stream = runtime.block_on(bench_stream(&js))?;
    let _bridge = start_bridge("node-a", &nats)?;
    runtime.block_on(async {
        // The other machine is ready once it answers.
        let started = Instant::now();
        loop {
            let asked = tokio::time::timeout(
                Duration::from_secs(2),
                client.request("kbench.ready", "".into()),
            )
            .await;
            if matches!(asked, Ok(Ok(_))) {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(240),
                "the other machine never answered"
            );
        }
        anyhow::Ok(())
    })?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let clock_at_start = crate::clocksource();
    let mut samples: Vec<Vec<Sample>> = System::ALL.iter().map(|_| Vec::new()).collect();
    let mut pooled: Vec<hdrhistogram::Histogram<u64>> = System::ALL
        .iter()
        .map(|_| hdrhistogram::Histogram::new(3))
        .collect::<Result<_, _>>()?;
    let orders = crate::orders(seed, System::ALL.len(), args.reps);
    for (rep, order) in orders.iter().enumerate() {
        for &index in order {
            let system = System::ALL[index];
            eprintln!(
                "bench cross: repetition {}/{}: {}",
                rep + 1,
                args.reps,
                system.label()
            );
            let evictions_before = laggard_evictions()?;
            let (sent_per_sec, got) = throughput(&runtime, &client, &js, &args, system)?;
            let laggard_evictions = laggard_evictions()?.wrapping_sub(evictions_before);
            ensure!(
                got.garbled == 0,
                "{}: {} messages arrived garbled (not the length or bytes written)",
                system.label(),
                got.garbled
            );
            if let Some(room) = system.room() {
                eprintln!(
                    "bench cross: {room} on this machine's bridge: {}",
                    room_counters(room)
                );
                eprintln!("bench cross: {room} on the other's: {}", got.bridge);
            }
            if system == System::KchatBlock {
                let stored = runtime.block_on(async {
                    let mut stream = js.get_stream(format!("kchat~{BLOCK_ROOM}")).await?;
                    anyhow::Ok(stream.info().await?.state.messages)
                });
                eprintln!("bench cross: {BLOCK_ROOM}'s stream holds {stored:?} messages");
            }
            let (rtt, pings_lost) = latency(&runtime, &client, &js, &js_stream, &args, system)?;
            let owed = (args.count * args.readers as u64).max(1) as f64;
            pooled[index].add(&rtt)?;
            samples[index].push(Sample {
                sent_per_sec,
                delivered_per_sec: got.received as f64 / (got.span_ns as f64 / 1e9),
                lost: (1.0 - got.received as f64 / owed).max(0.0),
                rtt_p50_ns: rtt.value_at_quantile(0.5),
                pings_lost,
                laggard_evictions,
            });
        }
    }
    runtime.block_on(async {
        client.publish("kbench.done", "".into()).await?;
        client.flush().await?;
        anyhow::Ok(())
    })?;
    let clock_at_end = crate::clocksource();
    let rows = System::ALL
        .iter()
        .zip(&samples)
        .zip(&pooled)
        .map(|((&system, samples), pooled)| {
            let stats =
                |f: fn(&Sample) -> f64| Stats::of(&samples.iter().map(f).collect::<Vec<_>>());
            CrossRow {
                system,
                sent_per_sec: stats(|s| s.sent_per_sec),
                delivered_per_sec: stats(|s| s.delivered_per_sec),
                lost: stats(|s| s.lost),
                rtt_p50_ns: stats(|s| s.rtt_p50_ns as f64),
                rtt_p99_ns: pooled.value_at_quantile(0.99),
                round_trips: pooled.len(),
                pings_lost: samples.iter().map(|s| s.pings_lost).sum(),
                laggard_evictions: samples.iter().map(|s| s.laggard_evictions).sum(),
            }
        })
        .collect();
    let report = CrossReport {
        machine: crate::machine(),
        clocksource: if clock_at_end == clock_at_start {
            clock_at_start
        } else {
            format!("{clock_at_start} at the start but {clock_at_end} at the end (not comparable)")
        },
        host_load: args.host_load.clone(),
        seed,
        reps: args.reps,
        count: args.count,
        size: args.size,
        readers: args.readers,
        pings: args.pings,
        rows,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        std::fs::write(path.with_extension("md"), report.markdown())?;
    }
    print!("{}", report.markdown());
    Ok(())
}

/// The writer's `count` messages, each tagged `data N` and padded to `size`.
fn messages(count: u64, size: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..count).map(move |n| {
        let mut message = vec![b'.'; size];
        let tag = format!("data {n} ");
        message[..tag.len()].copy_from_slice(tag.as_bytes());
        message
    })
}

/// Whether `payload` is one of [`messages`] as written: its length, the
/// tag and a number, and every padding byte.
fn is_whole(payload: &[u8], size: usize) -> bool {
    let Some(rest) = payload.strip_prefix(b"data ") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    payload.len() == size
        && digits > 0
        && rest.get(digits) == Some(&b' ')
        && rest[digits + 1..].iter().all(|&b| b == b'.')
}

fn throughput(
    runtime: &tokio::runtime::Runtime,
    client: &async_nats::Client,
    js: &jetstream::Context,
    args: &CrossArgs,
    system: System,
) -> Result<(f64, Got)> {
    let arm = Arm {
        system,
        readers: args.readers,
        count: args.count,
        size: args.size,
    };
    runtime.block_on(async {
        let mut armed = client.subscribe("kbench.armed").await?;
        client.flush().await?;
        let asking = client.clone();
        let request = serde_json::to_vec(&arm)?;
        // The answer comes once the readers are done: no 10 s default.
        let answer = tokio::spawn(async move {
            asking
                .send_request(
                    "kbench.arm",
                    async_nats::Request::new()
                        .payload(request.into())
                        .timeout(Some(Duration::from_secs(400))),
                )
                .await
        });
        tokio::time::timeout(Duration::from_secs(60), armed.next())
            .await
            .context("the other machine did not arm its readers")?;
        // Made before the clock starts: the writers only send.
        let messages: Vec<Vec<u8>> = messages(args.count, args.size).collect();
        let started = Instant::now();
        match system.room() {
            Some(room) => {
                let mut room = open_room(room, true)?;
                for message in &messages {
                    room.write_all(message)?;
                }
            }
            None if system == System::Nats => {
                for message in messages {
                    client.publish(DATA, message.into()).await?;
                }
                client.flush().await?;
            }
            None => {
                let mut acks: VecDeque<jetstream::context::PublishAckFuture> =
                    VecDeque::with_capacity(ACKS_IN_FLIGHT);
                for message in messages {
                    if acks.len() == ACKS_IN_FLIGHT
                        && let Some(ack) = acks.pop_front()
                    {
                        ack.await.context("a message JetStream did not store")?;
                    }
                    acks.push_back(js.publish(JS_DATA, message.into()).await?);
                }
                for ack in acks {
                    ack.await.context("a message JetStream did not store")?;
                }
            }
        }
        let sent = args.count as f64 / started.elapsed().as_secs_f64();
        let reply = tokio::time::timeout(Duration::from_secs(400), answer)
            .await
            .context("no count from the other machine")???;
        Ok((sent, serde_json::from_slice(&reply.payload)?))
    })
}

fn latency(
    runtime: &tokio::runtime::Runtime,
    client: &async_nats::Client,
    js: &jetstream::Context,
    js_stream: &stream::Stream,
    args: &CrossArgs,
    system: System,
) -> Result<(hdrhistogram::Histogram<u64>, u32)> {
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut lost = 0;
    let period = Duration::from_millis(10);
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(30),
            client.request("kbench.echo", serde_json::to_vec(&system)?.into()),
        )
        .await
        .context("the other machine did not start its echo")??;
        anyhow::Ok(())
    })?;
    match system.room() {
        Some(room) => {
            let mut writer = open_room(room, true)?;
            let mut reader = open_room(room, false)?;
            let stop = AtomicBool::new(false);
            for n in 0..args.pings {
                let ping = format!("ping {n:08}");
                let sent = Instant::now();
                writer.write_all(ping.as_bytes())?;
                let want = format!("pong {n:08}");
                let mut back = false;
                read_relayed(
                    &mut reader,
                    "node-b",
                    &stop,
                    Duration::from_secs(2),
                    |payload| {
                        back = payload == want.as_bytes();
                        !back
                    },
                )?;
                if back {
                    histogram.record(sent.elapsed().as_nanos() as u64)?;
                } else {
                    lost += 1;
                }
                std::thread::sleep(period.saturating_sub(sent.elapsed()));
            }
        }
        None => runtime.block_on(async {
            let jetstream = system == System::Jetstream;
            let mut pongs = if jetstream {
                ordered(js_stream, JS_PONG)
                    .await?
                    .map(|m| m.map(|m| m.payload.clone()).ok())
                    .boxed()
            } else {
                let pongs = client.subscribe(PONG).await?;
                client.flush().await?;
                pongs.map(|m| Some(m.payload)).boxed()
            };
            for n in 0..args.pings {
                let ping = format!("ping {n:08}");
                let sent = Instant::now();
                let ack = if jetstream {
                    Some(
                        js.publish(JS_PING, ping.clone().into_bytes().into())
                            .await?,
                    )
                } else {
                    client
                        .publish(PING, ping.clone().into_bytes().into())
                        .await?;
                    client.flush().await?;
                    None
                };
                let mut back = false;
                while let Ok(Some(payload)) = tokio::time::timeout(
                    Duration::from_secs(2).saturating_sub(sent.elapsed()),
                    pongs.next(),
                )
                .await
                {
                    if payload.as_deref() == Some(ping.as_bytes()) {
                        back = true;
                        break;
                    }
                }
                if back {
                    histogram.record(sent.elapsed().as_nanos() as u64)?;
                } else {
                    lost += 1;
                }
                // After the pong: the ack is no part of the round trip,
                // but a ping JetStream did not store is an error.
                if let Some(ack) = ack {
                    ack.await.context("a ping JetStream did not store")?;
                }
                tokio::time::sleep(period.saturating_sub(sent.elapsed())).await;
            }
            anyhow::Ok(())
        })?,
    }
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(30),
            client.request("kbench.echo-off", "".into()),
        )
        .await
        .context("the other machine did not stop its echo")??;
        anyhow::Ok(())
    })?;
    if histogram.is_empty() {
        bail!("no round trip came back ({})", system.label());
    }
    Ok((histogram, lost))
}

impl CrossReport {
    fn row(&self, system: System) -> Option<&CrossRow> {
        self.rows.iter().find(|row| row.system == system)
    }

    /// The targets of issue #23, each met or missed, from medians.
    pub fn targets(&self) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        let pair = |a, b| Some((self.row(a)?, self.row(b)?));
        if let Some((kchat, nats)) = pair(System::KchatDrop, System::Nats) {
            out.push(crate::report::stats_verdict(
                &kchat.delivered_per_sec,
                &nats.delivered_per_sec,
                0.9,
                "`drop` room delivered ÷ NATS".into(),
            ));
            out.push(crate::report::stats_verdict_at_most(
                &kchat.rtt_p50_ns,
                &nats.rtt_p50_ns,
                1.2,
                "`drop` room RTT p50 ÷ NATS".into(),
            ));
        }
        if let Some((kchat, nats)) = pair(System::KchatBlock, System::Nats) {
            out.push(crate::report::stats_verdict(
                &kchat.delivered_per_sec,
                &nats.delivered_per_sec,
                0.5,
                "`block` room delivered ÷ NATS".into(),
            ));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n### Across two machines ({})\n", self.machine);
        let _ = writeln!(
            out,
            "One writer on the first guest, {} readers on the second, {} messages of {} B per \
             run; {} round trips per run paced at 100/s. Two guests under TCG on one host, linked \
             by QEMU. Every system {} times, in a random order each time (seed {}); rates and \
             the RTT p50 are the median (min–max) of the repetitions, the RTT p99 is of every \
             round trip pooled. Clock source: {}; host load: {}.\n",
            self.readers,
            self.count,
            self.size,
            self.pings,
            self.reps,
            self.seed,
            self.clocksource,
            self.host_load.as_deref().unwrap_or("not given")
        );
        let _ = writeln!(
            out,
            "| system | sent/s | delivered/s | lost (max) | RTT p50 | RTT p99 | pings lost | laggard evictions |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let rate = |s: &Stats| {
            format!(
                "{} ({}–{})",
                crate::report::human(s.median),
                crate::report::human(s.min),
                crate::report::human(s.max)
            )
        };
        let rtt = |s: &Stats| {
            format!(
                "{} ({}–{})",
                crate::report::micros(s.median as u64),
                crate::report::micros(s.min as u64),
                crate::report::micros(s.max as u64)
            )
        };
        for row in &self.rows {
            let evictions = if row.system == System::KchatBlock {
                row.laggard_evictions.to_string()
            } else {
                "–".to_owned()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1}% | {} | {} | {} of {} | {evictions} |",
                row.system.label(),
                crate::report::human(row.sent_per_sec.median),
                rate(&row.delivered_per_sec),
                row.lost.max * 100.0,
                rtt(&row.rtt_p50_ns),
                crate::report::micros(row.rtt_p99_ns),
                row.pings_lost,
                u64::from(self.pings) * self.reps as u64,
            );
        }
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        if let (Some(block), Some(js)) = (self.row(System::KchatBlock), self.row(System::Jetstream))
        {
            let _ = writeln!(
                out,
                "\n`block` room ÷ JetStream: delivered {:.2}x, RTT p50 {:.2}x, p99 {:.2}x",
                ratio(block.delivered_per_sec.median, js.delivered_per_sec.median),
                ratio(block.rtt_p50_ns.median, js.rtt_p50_ns.median),
                ratio(block.rtt_p99_ns as f64, js.rtt_p99_ns as f64),
            );
        }
        let _ = writeln!(out, "\nTargets (issue #23, ratios of medians):\n");
        for (met, what) in self.targets() {
            let _ = writeln!(out, "- {}: {what}", if met { "met" } else { "MISSED" });
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: System, delivered: &[f64], rtt: &[f64]) -> CrossRow {
        CrossRow {
            system,
            sent_per_sec: Stats::of(delivered),
            delivered_per_sec: Stats::of(delivered),
            lost: Stats::of(&[0.0]),
            rtt_p50_ns: Stats::of(rtt),
            rtt_p99_ns: 0,
            round_trips: 300,
            pings_lost: 0,
            laggard_evictions: 0,
        }
    }

    #[test]
    fn the_report_judges_each_target_from_medians() {
        let report = CrossReport {
            machine: "test".into(),
            clocksource: "tsc".into(),
            host_load: None,
            seed: 1,
            reps: 3,
            count: 10,
            size: 64,
            readers: 4,
            pings: 10,
            rows: vec![
                row(System::KchatDrop, &[95.0, 90.0, 200.0], &[13.0, 11.0, 12.0]),
                row(System::Nats, &[100.0, 100.0, 100.0], &[10.0, 10.0, 10.0]),
                row(System::KchatBlock, &[40.0, 45.0, 49.0], &[30.0, 30.0, 30.0]),
                row(System::Jetstream, &[60.0, 60.0, 60.0], &[20.0, 20.0, 20.0]),
            ],
        };
        let targets = report.targets();
        assert_eq!(targets.len(), 3, "{targets:?}");
        assert!(
            targets[0].0,
            "drop delivered 0.95x >= 0.9x: {:?}",
            targets[0]
        );
        assert!(
            targets[1].0,
            "drop RTT 1.2x <= 1.2x (a tie meets it): {:?}",
            targets[1]
        );
        assert!(
            !targets[2].0,
            "block delivered 0.45x < 0.5x: {:?}",
            targets[2]
        );
        let text = report.markdown();
        assert!(
            text.contains("- MISSED: `block` room delivered ÷ NATS: 0.45x"),
            "{text}"
        );
        assert!(
            text.contains("`block` room ÷ JetStream: delivered 0.75x, RTT p50 1.50x"),
            "{text}"
        );
        assert!(text.contains("random order each time (seed 1)"), "{text}");
    }

    #[test]
    fn only_whole_messages_count() {
        for message in messages(3, 64) {
            assert!(is_whole(&message, 64));
            assert!(!is_whole(&message[..63], 64), "short");
            let mut flipped = message.clone();
            flipped[63] ^= 1;
            assert!(!is_whole(&flipped, 64), "last byte");
            let mut tag = message.clone();
            tag[5] = b'x';
            assert!(!is_whole(&tag, 64), "number");
        }
        assert!(!is_whole(b"ping 1", 6));
    }

    #[test]
    fn each_system_has_its_own_label_and_room() {
        let labels: std::collections::HashSet<_> = System::ALL.iter().map(|s| s.label()).collect();
        assert_eq!(labels.len(), System::ALL.len());
        assert_eq!(System::KchatBlock.room(), Some(BLOCK_ROOM));
        assert_eq!(System::Jetstream.room(), None);
    }
}
