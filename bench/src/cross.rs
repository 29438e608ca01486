//! The cross-node row: a writer on one machine, readers on another, through
//! kchat rooms joined by `kchat-bridge` against a plain NATS publisher to
//! NATS subscribers, on the same link in the same run. `cargo xtask bench
//! --cross` boots two guests: the first runs `cross` (nats-server, its
//! bridge, the writers, the report), the second `cross-peer` (its bridge and
//! the readers). The two talk over NATS subjects `kbench.*`; every wait is
//! bounded.
//!
//! Throughput counts what the second machine's readers got between the
//! first and the last arrival (its own clock); latency is the round trip of
//! a ping answered from the second machine (the guests' clocks are not
//! comparable), paced well below capacity.

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use kchat_uapi::abi;
use serde::{Deserialize, Serialize};
use std::{
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

const ROOM: &str = "xnode";
const DATA: &str = "kbench.data";
const PING: &str = "kbench.ping";
const PONG: &str = "kbench.pong";
/// Longest a reader waits for the rest once arrivals stop.
const SETTLE: Duration = Duration::from_secs(3);

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
    /// Where to save the results as JSON (and the table beside it, .md).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct PeerArgs {
    #[arg(long, default_value = "nats://10.77.0.1:4222")]
    nats: String,
}

/// What the other machine is asked to set up.
#[derive(Serialize, Deserialize, Clone, Copy)]
struct Arm {
    kchat: bool,
    readers: usize,
    count: u64,
}

/// What the other machine's readers got.
#[derive(Serialize, Deserialize, Default)]
struct Got {
    received: u64,
    span_ns: u64,
}

#[derive(Serialize, Deserialize)]
pub struct CrossRow {
    pub system: String,
    pub sent_per_sec: f64,
    pub delivered_per_sec: f64,
    pub lost: f64,
    pub rtt_p50_ns: u64,
    pub rtt_p99_ns: u64,
    pub pings_lost: u32,
}

#[derive(Serialize, Deserialize)]
pub struct CrossReport {
    pub machine: String,
    pub count: u64,
    pub size: usize,
    pub readers: usize,
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

fn create_room() -> Result<()> {
    let control = kchat_client::Control::open()
        .context("opening /dev/kchat/control (is kchat.ko loaded?)")?;
    let mut spec = kchat_client::spec(ROOM);
    spec.ring_bytes = 4 << 20;
    control
        .create(&spec)
        .with_context(|| format!("creating room {ROOM}"))
}

/// Starts this machine's bridge for the room and waits until it is up.
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
             [metrics]\nlisten = \"127.0.0.1:9478\"\n[rooms.{ROOM}]\n"
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
        let up = std::net::TcpStream::connect("127.0.0.1:9478")
            .ok()
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
                let mut text = String::new();
                s.read_to_string(&mut text).ok()?;
                Some(text.contains(&format!("kchat_bridge_room_up{{room=\"{ROOM}\"}} 1")))
            });
        if up == Some(true) {
            return Ok(process);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the bridge did not bridge {ROOM} within a minute: {}",
            std::fs::read_to_string(dir.join("bridge.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn open_room(write: bool) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(if write { 0 } else { nix::libc::O_NONBLOCK })
        .open(kchat_client::room_path(ROOM))?;
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

/// The second machine: its bridge, then readers and the echo on demand.
pub fn peer(args: PeerArgs) -> Result<()> {
    create_room()?;
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
        let mut echo = client.subscribe(PING).await?;
        let mut done = client.subscribe("kbench.done").await?;
        // The kchat echo: pings relayed from node-a go back as pongs.
        let stop = Arc::new(AtomicBool::new(false));
        let echo_stop = stop.clone();
        let kchat_echo = std::thread::spawn(move || -> Result<()> {
            let mut reader = open_room(false)?;
            let mut writer = open_room(true)?;
            read_relayed(
                &mut reader,
                "node-a",
                &echo_stop,
                Duration::from_secs(3600),
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
        loop {
            tokio::select! {
                Some(message) = ready.next() => {
                    if let Some(reply) = message.reply {
                        client.publish(reply, "ready".into()).await?;
                    }
                }
                Some(message) = echo.next() => {
                    client.publish(PONG, message.payload).await?;
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
        stop.store(true, Ordering::Relaxed);
        let _ = kchat_echo.join();
        anyhow::Ok(())
    })
}

/// Sets up the readers, says so on `kbench.armed`, and counts until every
/// reader has `count` or arrivals stop for `SETTLE`.
async fn readers(client: &async_nats::Client, arm: Arm) -> Result<Got> {
    let received = Arc::new(AtomicU64::new(0));
    let first = Arc::new(AtomicU64::new(u64::MAX));
    let last = Arc::new(AtomicU64::new(0));
    let clock = Instant::now();
    let note = {
        let (received, first, last) = (received.clone(), first.clone(), last.clone());
        move || {
            let now = clock.elapsed().as_nanos() as u64;
            first.fetch_min(now, Ordering::Relaxed);
            last.fetch_max(now, Ordering::Relaxed);
            received.fetch_add(1, Ordering::Relaxed);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..arm.readers {
        let (note, stop) = (note.clone(), stop.clone());
        if arm.kchat {
            let mut reader = open_room(false)?;
            threads.push(std::thread::spawn(move || {
                let mut n = 0;
                read_relayed(
                    &mut reader,
                    "node-a",
                    &stop,
                    Duration::from_secs(300),
                    |payload| {
                        if payload.starts_with(b"data") {
                            note();
                            n += 1;
                        }
                        n < arm.count
                    },
                )
            }));
        } else {
            let mut subscriber = client.subscribe(DATA).await?;
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while n < arm.count {
                    tokio::select! {
                        Some(_) = subscriber.next() => { note(); n += 1; }
                        _ = tokio::time::sleep(Duration::from_millis(100)) => if stop.load(Ordering::Relaxed) { break },
                    }
                }
            }));
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
        let _ = thread.join();
    }
    for task in tasks {
        let _ = task.await;
    }
    let (first, last) = (first.load(Ordering::Relaxed), last.load(Ordering::Relaxed));
    Ok(Got {
        received: received.load(Ordering::Relaxed),
        span_ns: last.saturating_sub(first).max(1),
    })
}

/// The first machine: server, bridge, writers, report.
pub fn drive(args: CrossArgs) -> Result<()> {
    ensure!(args.size >= 16, "messages must hold \"data\" and a number");
    let (host, port) = args.listen.rsplit_once(':').context("--listen HOST:PORT")?;
    let _server = Process(
        Command::new("nats-server")
            .args(["-a", host, "-p", port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?,
    );
    let nats = format!("nats://{}", args.listen);
    create_room()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(async {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(&nats)
            .await
    })?;
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
    let mut rows = Vec::new();
    for kchat in [true, false] {
        let (sent_per_sec, got) = throughput(&runtime, &client, &args, kchat)?;
        let (rtt, pings_lost) = latency(&runtime, &client, &args, kchat)?;
        let owed = (args.count * args.readers as u64).max(1) as f64;
        rows.push(CrossRow {
            system: if kchat {
                "kchat (bridged drop room)"
            } else {
                "nats (publisher to subscribers)"
            }
            .to_owned(),
            sent_per_sec,
            delivered_per_sec: got.received as f64 / (got.span_ns as f64 / 1e9),
            lost: (1.0 - got.received as f64 / owed).max(0.0),
            rtt_p50_ns: rtt.value_at_quantile(0.5),
            rtt_p99_ns: rtt.value_at_quantile(0.99),
            pings_lost,
        });
    }
    runtime.block_on(async {
        client.publish("kbench.done", "".into()).await?;
        client.flush().await?;
        anyhow::Ok(())
    })?;
    let report = CrossReport {
        machine: crate::machine(),
        count: args.count,
        size: args.size,
        readers: args.readers,
        rows,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        std::fs::write(path.with_extension("md"), report.markdown())?;
    }
    print!("{}", report.markdown());
    Ok(())
}

fn throughput(
    runtime: &tokio::runtime::Runtime,
    client: &async_nats::Client,
    args: &CrossArgs,
    kchat: bool,
) -> Result<(f64, Got)> {
    let arm = Arm {
        kchat,
        readers: args.readers,
        count: args.count,
    };
    eprintln!(
        "bench cross: {} throughput, {} messages of {} B, {} readers over there",
        if kchat { "kchat" } else { "nats" },
        args.count,
        args.size,
        args.readers
    );
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
        let mut message = vec![b'.'; args.size];
        let started = Instant::now();
        if kchat {
            let mut room = open_room(true)?;
            for n in 0..args.count {
                let tag = format!("data {n} ");
                message[..tag.len()].copy_from_slice(tag.as_bytes());
                room.write_all(&message)?;
            }
        } else {
            for n in 0..args.count {
                let tag = format!("data {n} ");
                message[..tag.len()].copy_from_slice(tag.as_bytes());
                client
                    .publish(DATA, bytes::Bytes::copy_from_slice(&message))
                    .await?;
            }
            client.flush().await?;
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
    args: &CrossArgs,
    kchat: bool,
) -> Result<(hdrhistogram::Histogram<u64>, u32)> {
    eprintln!(
        "bench cross: {} round trips, {} at 100/s",
        if kchat { "kchat" } else { "nats" },
        args.pings
    );
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut lost = 0;
    let period = Duration::from_millis(10);
    if kchat {
        let mut writer = open_room(true)?;
        let mut reader = open_room(false)?;
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
    } else {
        runtime.block_on(async {
            let mut pongs = client.subscribe(PONG).await?;
            client.flush().await?;
            for n in 0..args.pings {
                let ping = format!("ping {n:08}");
                let sent = Instant::now();
                client.publish(PING, ping.into_bytes().into()).await?;
                client.flush().await?;
                let want = format!("ping {n:08}");
                let mut back = false;
                while let Ok(Some(message)) = tokio::time::timeout(
                    Duration::from_secs(2).saturating_sub(sent.elapsed()),
                    pongs.next(),
                )
                .await
                {
                    if message.payload == want.as_bytes() {
                        back = true;
                        break;
                    }
                }
                if back {
                    histogram.record(sent.elapsed().as_nanos() as u64)?;
                } else {
                    lost += 1;
                }
                tokio::time::sleep(period.saturating_sub(sent.elapsed())).await;
            }
            anyhow::Ok(())
        })?;
    }
    if histogram.is_empty() {
        bail!("no round trip came back");
    }
    Ok((histogram, lost))
}

impl CrossReport {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n### Across two machines ({})\n", self.machine);
        let _ = writeln!(
            out,
            "One writer on the first guest, {} readers on the second, {} messages of {} B; \
             round trips paced at 100/s. Two guests under TCG on one host, linked by QEMU.\n",
            self.readers, self.count, self.size
        );
        let _ = writeln!(
            out,
            "| system | sent/s | delivered/s | lost | RTT p50 | RTT p99 | pings lost |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1}% | {} | {} | {} |",
                row.system,
                crate::report::human(row.sent_per_sec),
                crate::report::human(row.delivered_per_sec),
                row.lost * 100.0,
                crate::report::micros(row.rtt_p50_ns),
                crate::report::micros(row.rtt_p99_ns),
                row.pings_lost
            );
        }
        if let [kchat, nats] = &self.rows[..] {
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            let _ = writeln!(
                out,
                "\nkchat / NATS: delivered {:.2}x, loss {:.1}% vs {:.1}%, RTT p50 {:.2}x, p99 {:.2}x\n",
                ratio(kchat.delivered_per_sec, nats.delivered_per_sec),
                kchat.lost * 100.0,
                nats.lost * 100.0,
                ratio(kchat.rtt_p50_ns as f64, nats.rtt_p50_ns as f64),
                ratio(kchat.rtt_p99_ns as f64, nats.rtt_p99_ns as f64),
            );
        }
        out
    }
}
