//! iceoryx2: zero-copy publish-subscribe over shared memory, the best local
//! fan-out there is, set up as its authors recommend: the single-threaded
//! `ipc::Service`, each port made on the thread that uses it (each thread
//! its own node, as each process would have). Writers loan a sample, fill
//! it (one copy in, as a kchat `write` makes) and send it; every
//! subscriber checks it in place. Each subscriber's buffer holds as many
//! bytes as kchat's ring (so many samples of the run's size), capped where
//! the shared-memory pool would not fit the guest (`buffer_samples`), and
//! overflows into the oldest sample (lossy, like a `drop` room). Readers sleep on an
//! event service between bursts, as iceoryx2's own event-driven examples
//! do; writers notify after each burst. Nothing stamps who sent a message.
//! Mixed sizes: each publisher's samples hold up to the longest message,
//! and each message loans a slice of its own length.

use crate::{
    message::{Sizes, Stamper},
    system::{join_all, Ready, ReadyHandle, Sender, Started, System, Workload},
    systems::kchat::RING_BYTES,
    tally::{Progress, Tally},
    writers::SenderSpec,
};
use anyhow::{anyhow, Result};
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

type Ipc = ipc::Service;

pub struct Iceoryx2 {
    node: Node<Ipc>,
    /// Each run opens services of its own, so nothing of one run's
    /// subscribers or history reaches the next.
    runs: AtomicU32,
}

impl Iceoryx2 {
    pub fn start() -> Result<Self> {
        quiet_logs();
        let node = NodeBuilder::new()
            .create::<Ipc>()
            .map_err(|err| anyhow!("creating an iceoryx2 node: {err:?}"))?;
        Ok(Iceoryx2 {
            node,
            runs: AtomicU32::new(0),
        })
    }
}

/// Warnings such as "No config file was loaded" (the defaults are what
/// the bench wants) belong to no report; errors still show. Each process
/// that makes ports says so (the harness and the writers' process).
pub fn quiet_logs() {
    set_log_level(LogLevel::Error);
}

pub struct Writer {
    // Dropped last: the ports belong to it.
    publisher: Publisher<Ipc, [u8], ()>,
    notifier: Notifier<Ipc>,
    buf: Vec<u8>,
    _node: Node<Ipc>,
}

impl Sender for Writer {
    fn burst(&mut self, count: usize, messages: &mut Stamper) -> Result<()> {
        for _ in 0..count {
            let message = &mut self.buf[..messages.next_len()];
            messages.fill(message);
            let sample = self
                .publisher
                .loan_slice_uninit(message.len())
                .map_err(|err| anyhow!("loaning a sample: {err:?}"))?;
            sample
                .write_from_slice(message)
                .send()
                .map_err(|err| anyhow!("sending a sample: {err:?}"))?;
        }
        self.notifier
            .notify()
            .map_err(|err| anyhow!("notifying: {err:?}"))?;
        Ok(())
    }
}

fn new_node() -> Result<Node<Ipc>> {
    NodeBuilder::new()
        .create::<Ipc>()
        .map_err(|err| anyhow!("creating an iceoryx2 node: {err:?}"))
}

/// Bytes of shared memory iceoryx2's sample pools may take, all writers
/// together. Each publisher has a pool of its own, sized for the worst
/// case (every subscriber holding a full buffer of distinct samples of
/// it), and the guest's /dev/shm is half of its 2 GiB: 256 subscribers of
/// 64 B with buffers of kchat's ring (65,536 samples each) took more than
/// that and the bench died of SIGBUS in a smoke run, and so did 4
/// publishers' pools of 256 MiB each at 256 readers.
const POOL_BUDGET: usize = 256 << 20;

/// Bytes a sample takes in the pool beyond its payload (a generous guess
/// at iceoryx2's header and alignment).
const SAMPLE_OVERHEAD: usize = 64;

/// Samples each subscriber's buffer holds: as many bytes as kchat's ring
/// (of a mix, as many messages as the ring holds at its mean size),
/// unless the writers' worst-case pools would pass `POOL_BUDGET` (then as
/// many as fit it: at 256 readers and 1 writer, 252 samples of 4 KiB or
/// 8,192 of 64 B; at 4 writers a quarter of that). Every sample of a pool
/// is as large as the longest message.
pub fn buffer_samples(writers: usize, readers: usize, sizes: Sizes) -> usize {
    let ring = (f64::from(RING_BYTES) / sizes.mean().max(1.0)) as usize;
    let fits = POOL_BUDGET / (writers.max(1) * readers.max(1) * (sizes.max() + SAMPLE_OVERHEAD));
    ring.min(fits).max(1)
}

/// A reader's node and ports.
type ReaderPorts = (Node<Ipc>, Subscriber<Ipc, [u8], ()>, Listener<Ipc>);

/// A reader's ports, made on its own thread.
fn subscribe(data: &ServiceName, wake: &ServiceName, buffer: usize) -> Result<ReaderPorts> {
    let node = new_node()?;
    let subscriber = node
        .service_builder(data)
        .publish_subscribe::<[u8]>()
        .open()
        .map_err(|err| anyhow!("opening the pub-sub service: {err:?}"))?
        .subscriber_builder()
        .buffer_size(buffer)
        .create()
        .map_err(|err| anyhow!("creating a subscriber: {err:?}"))?;
    let listener = node
        .service_builder(wake)
        .event()
        .open()
        .map_err(|err| anyhow!("opening the event service: {err:?}"))?
        .listener_builder()
        .create()
        .map_err(|err| anyhow!("creating a listener: {err:?}"))?;
    Ok((node, subscriber, listener))
}

fn reader(
    names: (ServiceName, ServiceName),
    buffer: usize,
    ready: ReadyHandle,
    stop: Arc<AtomicBool>,
    mut tally: Tally,
    progress: Arc<Progress>,
) -> Result<Tally> {
    let (_node, subscriber, listener) = ready.report(subscribe(&names.0, &names.1, buffer))?;
    loop {
        let mut got = 0;
        while let Some(sample) = subscriber
            .receive()
            .map_err(|err| anyhow!("receiving: {err:?}"))?
        {
            tally.record(sample.payload());
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

/// The service called `name`, or why iceoryx2 refuses the name.
fn service_name(name: &str) -> Result<ServiceName> {
    name.try_into()
        .map_err(|err| anyhow!("the service name {name:?}: {err:?}"))
}

/// A writer's node and ports for the services named `data` and `wake`,
/// made on its own thread (in the writers' process), for messages of up
/// to `longest` bytes (the publisher's samples are that large: loans of
/// any length up to it succeed, none past it).
pub fn publish(data: &str, wake: &str, longest: usize) -> Result<Writer> {
    let (data, wake) = (&service_name(data)?, &service_name(wake)?);
    let node = new_node()?;
    let publisher = node
        .service_builder(data)
        .publish_subscribe::<[u8]>()
        .open()
        .map_err(|err| anyhow!("opening the pub-sub service: {err:?}"))?
        .publisher_builder()
        .initial_max_slice_len(longest)
        .create()
        .map_err(|err| anyhow!("creating a publisher: {err:?}"))?;
    let notifier = node
        .service_builder(wake)
        .event()
        .open()
        .map_err(|err| anyhow!("opening the event service: {err:?}"))?
        .notifier_builder()
        .create()
        .map_err(|err| anyhow!("creating a notifier: {err:?}"))?;
    Ok(Writer {
        _node: node,
        publisher,
        notifier,
        buf: vec![0; longest],
    })
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
        let name =
            |what: &str| service_name(&format!("kchat-bench/{}/{run}/{what}", std::process::id()));
        let buffer = buffer_samples(workload.writers, workload.readers, workload.size);
        let nodes = workload.readers + workload.writers + 1;
        let (data, wake) = (name("data")?, name("wake")?);
        let service = self
            .node
            .service_builder(&data)
            .publish_subscribe::<[u8]>()
            .max_publishers(workload.writers)
            .max_subscribers(workload.readers)
            .max_nodes(nodes)
            .subscriber_max_buffer_size(buffer)
            .subscriber_max_borrowed_samples(1)
            .history_size(0)
            .enable_safe_overflow(true)
            .create()
            .map_err(|err| anyhow!("creating the pub-sub service: {err:?}"))?;
        let events = self
            .node
            .service_builder(&wake)
            .event()
            .max_notifiers(workload.writers)
            .max_listeners(workload.readers)
            .max_nodes(nodes)
            .create()
            .map_err(|err| anyhow!("creating the event service: {err:?}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Ready::new();
        let handles: Vec<_> = (0..workload.readers)
            .map(|_| {
                let names = (data, wake);
                let (handle, stop) = (ready.handle(), stop.clone());
                let (tally, progress) = (Tally::new(workload.size, &progress), progress.clone());
                thread::spawn(move || reader(names, buffer, handle, stop, tally, progress))
            })
            .collect();
        if let Err(err) = ready.wait(workload.readers) {
            stop.store(true, Ordering::Release);
            let _ = join_all(handles);
            return Err(err);
        }
        let writer = SenderSpec::Iceoryx2 {
            data: data.as_str().to_owned(),
            wake: wake.as_str().to_owned(),
        };
        Ok(Started {
            senders: vec![writer; workload.writers],
            fds: Vec::new(),
            finish: Box::new(move || {
                stop.store(true, Ordering::Release);
                let tally = join_all(handles);
                // The services live until every port is gone.
                drop((service, events));
                tally
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_hold_kchats_ring_unless_the_pools_would_not_fit() {
        let fixed = Sizes::Fixed;
        assert_eq!(buffer_samples(1, 1, fixed(64)), 65_536);
        assert_eq!(buffer_samples(1, 16, fixed(64)), 65_536);
        assert_eq!(buffer_samples(1, 16, fixed(4096)), 1024);
        assert_eq!(buffer_samples(1, 256, fixed(64)), 8192);
        assert_eq!(buffer_samples(1, 256, fixed(4096)), 252);
        assert_eq!(buffer_samples(4, 256, fixed(64)), 2048);
        assert_eq!(buffer_samples(4, 256, fixed(4096)), 63);
        assert_eq!(buffer_samples(4, 16, fixed(64)), 32_768);
        // A mix: the ring's count at the mean size (544 B), the pool's
        // samples at the longest.
        let mix = Sizes::Mixed { min: 64, max: 1024 };
        assert_eq!(buffer_samples(1, 1, mix), 7710);
        assert_eq!(buffer_samples(1, 256, mix), 963);
        for writers in [1, 4] {
            for readers in [1, 16, 256] {
                for sizes in [fixed(20), fixed(64), fixed(1024), fixed(4096), mix] {
                    let pools = writers
                        * readers
                        * buffer_samples(writers, readers, sizes)
                        * (sizes.max() + SAMPLE_OVERHEAD);
                    assert!(
                        pools <= POOL_BUDGET,
                        "{writers} x {readers} x {sizes}: {pools}"
                    );
                }
            }
        }
    }
}
