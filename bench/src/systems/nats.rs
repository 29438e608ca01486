//! NATS core over loopback: the bench starts Debian's nats-server; each
//! reader is its own client connection with one subscription, each writer
//! its own publishing connection: the readers share a runtime of two
//! workers in the harness, each writer has its own runtime of one worker
//! in the writers' process (it connects there, on its thread). Publishers do
//! not flush per burst (async-nats coalesces what is queued into large
//! writes); each flushes once after the window. NATS core is at-most-once:
//! a subscriber that falls behind loses messages, which the tables show as
//! loss. The slow-consumer limits are the defaults, stated here because
//! they decide the loss: async-nats buffers 65,536 messages per
//! subscription (`subscription_capacity`) and drops beyond it; nats-server
//! lets a connection fall 64 MiB behind (`max_pending`) before it closes
//! it as a slow consumer. Mixed sizes are payloads of their own lengths.

use crate::{
    message::Stamper,
    system::{Sender, Started, System, Workload},
    tally::{Progress, Tally},
    writers::SenderSpec,
};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

const SUBJECT: &str = "bench";
const ADDRESS: &str = "127.0.0.1:14222";

/// nats-server, for as long as this lives.
pub struct Nats {
    server: Child,
}

impl Nats {
    pub fn start() -> Result<Nats> {
        let server = Command::new("nats-server")
            .args(["--addr", "127.0.0.1", "--port", "14222"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (Debian package nats-server)")?;
        let nats = Nats { server };
        let started = Instant::now();
        while TcpStream::connect(ADDRESS).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("nats-server did not listen on {ADDRESS}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(nats)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub struct Publisher {
    client: async_nats::Client,
    /// The writer's own: it blocks on each burst, while the runtime's one
    /// worker thread runs the connection (writes what the bursts queue).
    runtime: tokio::runtime::Runtime,
    buf: Vec<u8>,
}

impl Publisher {
    /// Connects on the writer's thread, in the writers' process.
    pub fn connect(longest: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let client = runtime
            .block_on(async_nats::connect(ADDRESS))
            .with_context(|| format!("a NATS publisher connecting to {ADDRESS}"))?;
        Ok(Publisher {
            client,
            runtime,
            buf: vec![0; longest],
        })
    }
}

impl Sender for Publisher {
    fn burst(&mut self, count: usize, messages: &mut Stamper) -> Result<()> {
        let (client, buf) = (&self.client, &mut self.buf);
        self.runtime.block_on(async {
            for _ in 0..count {
                let message = &mut buf[..messages.next_len()];
                messages.fill(message);
                client
                    .publish(SUBJECT, Bytes::copy_from_slice(message))
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        })
    }

    fn finish(&mut self) -> Result<()> {
        self.runtime.block_on(self.client.flush())?;
        Ok(())
    }
}

impl System for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn lossless(&self) -> bool {
        false
    }

    fn start(&mut self, workload: Workload, progress: Arc<Progress>) -> Result<Started> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (ready, subscribed) = mpsc::channel();
        let tasks: Vec<_> = (0..workload.readers)
            .map(|_| {
                let (progress, ready, mut stopped) =
                    (progress.clone(), ready.clone(), stopped.clone());
                let mut tally = Tally::new(workload.size, &progress);
                runtime.spawn(async move {
                    let setup = async {
                        let client = async_nats::connect(ADDRESS).await?;
                        let subscription = client.subscribe(SUBJECT).await?;
                        // The server has the SUB once a flush returns.
                        client.flush().await?;
                        Ok::<_, anyhow::Error>((client, subscription))
                    }
                    .await;
                    let _ = ready.send(setup.is_ok());
                    let (_client, mut subscription) = setup?;
                    loop {
                        tokio::select! {
                            message = subscription.next() => match message {
                                Some(message) => {
                                    tally.record(&message.payload);
                                    progress.add(1);
                                }
                                None => break,
                            },
                            _ = stopped.changed() => break,
                        }
                    }
                    Ok::<_, anyhow::Error>(tally)
                })
            })
            .collect();
        for _ in 0..workload.readers {
            let ok = subscribed
                .recv_timeout(Duration::from_secs(60))
                .context("a NATS subscriber never got ready")?;
            if !ok {
                bail!("a NATS subscriber could not connect or subscribe");
            }
        }
        Ok(Started {
            senders: vec![SenderSpec::Nats; workload.writers],
            fds: Vec::new(),
            finish: Box::new(move || {
                let _ = stop.send(true);
                let mut total = Tally::default();
                for task in tasks {
                    let tally = runtime
                        .block_on(task)
                        .map_err(|err| anyhow!("a NATS subscriber failed: {err}"))??;
                    total.merge(tally)?;
                }
                runtime.shutdown_background();
                Ok(total)
            }),
        })
    }
}
