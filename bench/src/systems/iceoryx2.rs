//! iceoryx2: zero-copy publish-subscribe over shared memory, the best local
//! fan-out there is. Writers loan a sample, fill it (one copy in, as a
//! kchat `write` makes) and send it; every subscriber reads it in place.
//! Readers sleep on an event service between bursts, as iceoryx2's own
//! event-driven examples do; writers notify after each burst. Subscribers'
//! buffers overflow into the oldest sample (lossy, like a `drop` room).
//! Nothing stamps who sent a message.

use crate::{
    message,
    system::{join_all, Sender, Started, System, Workload},
    tally::{Progress, Tally},
};
use anyhow::{anyhow, Context, Result};
use iceoryx2::{
    port::{listener::Listener, notifier::Notifier, publisher::Publisher, subscriber::Subscriber},
    prelude::*,
};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

type Ipc = ipc_threadsafe::Service;

/// Samples each subscriber may hold queued: a few bursts' worth, as a
/// shared-memory pool sized for 256 subscribers of 4 KiB must stay small.
const BUFFER: usize = 256;

pub struct Iceoryx2 {
    node: Node<Ipc>,
    /// Each run opens services of its own, so nothing of one run's
    /// subscribers or history reaches the next.
    runs: AtomicU32,
}

impl Iceoryx2 {
    pub fn start() -> Result<Self> {
        let node = NodeBuilder::new()
            .create::<Ipc>()
            .map_err(|err| anyhow!("creating an iceoryx2 node: {err:?}"))?;
        Ok(Iceoryx2 {
            node,
            runs: AtomicU32::new(0),
        })
    }
}

struct Writer {
    publisher: Publisher<Ipc, [u8], ()>,
    notifier: Notifier<Ipc>,
    buf: Vec<u8>,
}

impl Sender for Writer {
    fn burst(&mut self, count: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        for _ in 0..count {
            fill(&mut self.buf);
            let sample = self
                .publisher
                .loan_slice_uninit(self.buf.len())
                .map_err(|err| anyhow!("loaning a sample: {err:?}"))?;
            sample
                .write_from_slice(&self.buf)
                .send()
                .map_err(|err| anyhow!("sending a sample: {err:?}"))?;
        }
        self.notifier
            .notify()
            .map_err(|err| anyhow!("notifying: {err:?}"))?;
        Ok(())
    }
}

fn reader(
    subscriber: Subscriber<Ipc, [u8], ()>,
    listener: Listener<Ipc>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Result<Tally> {
    let mut tally = Tally::default();
    loop {
        let mut got = 0;
        while let Some(sample) = subscriber
            .receive()
            .map_err(|err| anyhow!("receiving: {err:?}"))?
        {
            let payload = sample.payload();
            tally.record_stamp(message::sent_ns(payload), payload.len());
            got += 1;
        }
        progress.add(got);
        if got == 0 && stop.load(Ordering::Acquire) {
            return Ok(tally);
        }
        listener
            .timed_wait(|_| {}, Duration::from_millis(100))
            .map_err(|err| anyhow!("waiting for an event: {err:?}"))?;
    }
}

impl System for Iceoryx2 {
    fn name(&self) -> &'static str {
        "iceoryx2"
    }

    fn lossless(&self) -> bool {
        false
    }

    fn start(&mut self, workload: Workload, progress: Arc<Progress>) -> Result<Started> {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let name = |what: &str| -> Result<ServiceName> {
            format!("kchat-bench/{}/{run}/{what}", std::process::id())
                .as_str()
                .try_into()
                .map_err(|err| anyhow!("a service name: {err:?}"))
        };
        let service = self
            .node
            .service_builder(&name("data")?)
            .publish_subscribe::<[u8]>()
            .max_publishers(workload.writers)
            .max_subscribers(workload.readers)
            .max_nodes(2)
            .subscriber_max_buffer_size(BUFFER)
            .subscriber_max_borrowed_samples(1)
            .history_size(0)
            .enable_safe_overflow(true)
            .create()
            .map_err(|err| anyhow!("creating the pub-sub service: {err:?}"))?;
        let events = self
            .node
            .service_builder(&name("wake")?)
            .event()
            .max_notifiers(workload.writers)
            .max_listeners(workload.readers)
            .max_nodes(2)
            .create()
            .map_err(|err| anyhow!("creating the event service: {err:?}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..workload.readers {
            let subscriber = service
                .subscriber_builder()
                .create()
                .map_err(|err| anyhow!("creating a subscriber: {err:?}"))?;
            let listener = events
                .listener_builder()
                .create()
                .map_err(|err| anyhow!("creating a listener: {err:?}"))?;
            let (stop, progress) = (stop.clone(), progress.clone());
            handles.push(thread::spawn(move || {
                reader(subscriber, listener, stop, progress)
            }));
        }
        let senders = (0..workload.writers)
            .map(|_| {
                let publisher = service
                    .publisher_builder()
                    .initial_max_slice_len(workload.size)
                    .create()
                    .map_err(|err| anyhow!("creating a publisher: {err:?}"))?;
                let notifier = events
                    .notifier_builder()
                    .create()
                    .map_err(|err| anyhow!("creating a notifier: {err:?}"))?;
                Ok(Box::new(Writer {
                    publisher,
                    notifier,
                    buf: vec![0; workload.size],
                }) as Box<dyn Sender>)
            })
            .collect::<Result<Vec<_>>>()
            .context("setting up iceoryx2 writers")?;
        Ok(Started {
            senders,
            finish: Box::new(move || {
                stop.store(true, Ordering::Release);
                join_all(handles)
            }),
        })
    }
}
