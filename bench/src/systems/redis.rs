//! Redis Pub/Sub over a unix socket: the bench starts Debian's
//! redis-server (no persistence, no limit on subscriber output buffers, so
//! it never drops a slow subscriber and so loses nothing), one connection
//! per reader subscribed to one channel, one per writer publishing in
//! pipelines of a burst each, sent without waiting for the replies (a
//! thread per writer reads and drops them), as a pipelining client does.
//! Mixed sizes are payloads of their own lengths.

use crate::{
    message::Stamper,
    system::{join_all, Sender, Started, System, Workload},
    tally::{Progress, Tally},
    writers::SenderSpec,
};
use anyhow::{bail, Context, Result};
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier,
    },
    thread,
    time::{Duration, Instant},
};

const CHANNEL: &str = "bench";

/// redis-server, for as long as this lives.
pub struct Redis {
    server: Child,
    socket: PathBuf,
}

impl Redis {
    pub fn start() -> Result<Redis> {
        let socket =
            std::env::temp_dir().join(format!("kchat-bench-redis-{}.sock", std::process::id()));
        let server = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--client-output-buffer-limit", "pubsub 0 0 0"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package redis-server)")?;
        let redis = Redis { server, socket };
        let started = Instant::now();
        while redis.client()?.get_connection().is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("redis-server did not listen on {}", redis.socket.display());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(redis)
    }

    fn client(&self) -> Result<redis::Client> {
        Ok(redis::Client::open(format!(
            "redis+unix://{}",
            self.socket.display()
        ))?)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Writes each burst's pipeline (packed by the `redis` crate) to the
/// socket and goes on; `replies` reads the server's answers meanwhile.
pub struct Publisher {
    socket: UnixStream,
    replies: Option<thread::JoinHandle<std::io::Result<u64>>>,
    buf: Vec<u8>,
}

impl Publisher {
    /// A publisher of messages up to `longest` bytes.
    pub fn connect(path: &std::path::Path, longest: usize) -> Result<Publisher> {
        let socket = UnixStream::connect(path)
            .with_context(|| format!("connecting to redis-server at {}", path.display()))?;
        let mut answers = socket.try_clone()?;
        let replies = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match answers.read(&mut buf) {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n as u64,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
        });
        Ok(Publisher {
            socket,
            replies: Some(replies),
            buf: vec![0; longest],
        })
    }
}

impl Sender for Publisher {
    fn burst(&mut self, count: usize, messages: &mut Stamper) -> Result<()> {
        let mut pipeline = redis::pipe();
        for _ in 0..count {
            let message = &mut self.buf[..messages.next_len()];
            messages.fill(message);
            pipeline.cmd("PUBLISH").arg(CHANNEL).arg(&*message);
        }
        self.socket.write_all(&pipeline.get_packed_pipeline())?;
        Ok(())
    }

    /// Ends the connection once the server answered everything.
    fn finish(&mut self) -> Result<()> {
        self.socket.shutdown(std::net::Shutdown::Write)?;
        if let Some(replies) = self.replies.take() {
            replies
                .join()
                .map_err(|_| anyhow::anyhow!("the reply reader panicked"))?
                .context("reading redis-server's replies")?;
        }
        Ok(())
    }
}

fn subscriber(
    client: Result<redis::Client>,
    ready: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    mut tally: Tally,
    progress: Arc<Progress>,
) -> Result<Tally> {
    let connection = client.and_then(|client| Ok(client.get_connection()?));
    let mut connection = match connection {
        Ok(connection) => connection,
        Err(err) => {
            // Everyone waits for every subscriber, failed or not.
            ready.wait();
            return Err(err);
        }
    };
    let mut pubsub = connection.as_pubsub();
    let subscribed = pubsub.subscribe(CHANNEL);
    ready.wait();
    subscribed?;
    pubsub.set_read_timeout(Some(Duration::from_millis(100)))?;
    while !stop.load(Ordering::Relaxed) {
        match pubsub.get_message() {
            Ok(message) => {
                tally.record(message.get_payload_bytes());
                progress.add(1);
            }
            Err(err) if err.is_timeout() => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(tally)
}

impl System for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn lossless(&self) -> bool {
        true
    }

    fn start(&mut self, workload: Workload, progress: Arc<Progress>) -> Result<Started> {
        let ready = Arc::new(Barrier::new(workload.readers + 1));
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..workload.readers)
            .map(|_| {
                let (client, ready, stop, progress) =
                    (self.client(), ready.clone(), stop.clone(), progress.clone());
                let tally = Tally::new(workload.size, &progress);
                thread::spawn(move || subscriber(client, ready, stop, tally, progress))
            })
            .collect();
        // Every SUBSCRIBE has its reply: publishing now reaches everyone.
        ready.wait();
        let socket = self.socket.clone();
        Ok(Started {
            senders: vec![SenderSpec::Redis { socket }; workload.writers],
            fds: Vec::new(),
            finish: Box::new(move || {
                stop.store(true, Ordering::Relaxed);
                join_all(handles)
            }),
        })
    }
}
