//! A `block` room over JetStream: at least once on the wire, exactly once
//! in the room. Publishing waits for the server's acknowledgement and
//! carries an id the server de-duplicates by; relaying moves its place in
//! the stream only once a message is in the room, and skips what is
//! already there.
//! Both remember their place in a state file (the relay side its place in
//! the stream, read with an ordered consumer from there), so a restart of
//! the bridge or the server loses and duplicates nothing that the room and
//! the stream still retain.

use crate::{
    config::StreamLimits,
    local::{Reader, Relay, RoomError},
    metrics::{Metrics, RoomCounters},
    room::Bridged,
    state::{RoomState, StateFile},
    trust::Seen,
    wire,
};
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How often a moving room's state is written (and at most how much a
/// crash makes it publish again, which the server then drops).
const CHECKPOINT: Duration = Duration::from_millis(200);
/// How long the server remembers message ids: a restart that publishes
/// again what is older than this could store it twice.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The first wait before trying the server again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The stream holding a subject: stream names cannot hold '.', which
/// room names and subjects never hold '~' to collide with.
pub fn stream_name(subject: &str) -> String {
    subject.replace('.', "~")
}

/// The stream of a room as this bridge wants it: every node's subject.
fn stream_config(bridged: &Bridged) -> stream::Config {
    stream::Config {
        name: stream_name(&bridged.subject),
        subjects: vec![bridged.all_subjects()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..with_limits(stream::Config::default(), &bridged.limits)
    }
}

/// `config` with the configured limits (discarding the oldest past them).
fn with_limits(config: stream::Config, limits: &StreamLimits) -> stream::Config {
    stream::Config {
        max_bytes: limits.max_bytes,
        max_messages: limits.max_msgs,
        max_message_size: limits.max_msg_size,
        max_age: Duration::from_secs(limits.max_age_secs),
        num_replicas: limits.replicas,
        discard: stream::DiscardPolicy::Old,
        ..config
    }
}

/// Whether a stream's limits are the configured ones.
fn has_limits(config: &stream::Config, limits: &StreamLimits) -> bool {
    config.max_bytes == limits.max_bytes
        && config.max_messages == limits.max_msgs
        && config.max_message_size == limits.max_msg_size
        && config.max_age == Duration::from_secs(limits.max_age_secs)
        && config.num_replicas == limits.replicas
}

/// What a stored message costs besides its payload: the subject and the
/// headers a bridge sends (node, room, incarnation, stamp, message id), with room
/// to spare.
const STORED_OVERHEAD: u32 = 1024;

/// A room whose largest message the stream would refuse is not bridged:
/// each such message would hold the room up for ever.
pub fn fits(room_max_msg: u32, limits: &StreamLimits) -> Result<(), String> {
    let stored = u64::from(room_max_msg) + u64::from(STORED_OVERHEAD);
    if stored > u64::try_from(limits.max_msg_size).unwrap_or(0) {
        return Err(format!(
            "the room takes messages of up to {room_max_msg} bytes, which its stream would refuse \
             (jetstream.max_msg_size = {}, and a message carries up to {STORED_OVERHEAD} bytes of \
             subject and headers): raise jetstream.max_msg_size to at least {stored} or lower \
             the room's max_msg",
            limits.max_msg_size
        ));
    }
    Ok(())
}

/// What a stream covering `subjects` lacks to carry the room `subject`:
/// `None` when it covers every node's subject already; else the subjects
/// to give it (a stream made by a bridge from before per-node subjects
/// covers the room's bare subject, on which nobody publishes any more).
pub fn subjects_to_fix(subjects: &[String], subject: &str) -> Option<Vec<String>> {
    let wanted = crate::trust::room_wildcard(subject);
    if subjects
        .iter()
        .any(|s| *s == wanted || *s == format!("{subject}.>"))
    {
        return None;
    }
    let mut fixed: Vec<String> = subjects
        .iter()
        .filter(|s| s.as_str() != subject)
        .cloned()
        .collect();
    fixed.push(wanted);
    Some(fixed)
}

/// Finds the room's stream, or creates it, and makes an old one cover
/// every node's subject. A bridge whose NATS user may not manage streams
/// (deploy/nats/nats-server.conf) says what the operator does instead.
async fn ready_stream(
    js: &jetstream::Context,
    bridged: &Bridged,
) -> anyhow::Result<stream::Stream> {
    let wanted = stream_config(bridged);
    let limits = &bridged.limits;
    let name = wanted.name.clone();
    let all = bridged.all_subjects();
    let mut stream = js.get_or_create_stream(wanted).await.with_context(|| {
        format!(
            "cannot find or create the JetStream stream {name} for {all}: if this bridge's NATS user \
             may not create streams, create it as an admin (docs/federation.md, \"Trust\"): \
             nats stream add {name} --subjects '{all}' --storage file --dupe-window 2m \
             --max-bytes {} --max-msgs {} --max-msg-size {} --max-age {}s --replicas {} --discard old --defaults",
            limits.max_bytes, limits.max_msgs, limits.max_msg_size, limits.max_age_secs, limits.replicas
        )
    })?;
    let current = stream.cached_info().config.clone();
    let fixed = subjects_to_fix(&current.subjects, &bridged.subject);
    if let Some(fixed) = &fixed {
        tracing::warn!(stream = %name, subjects = ?current.subjects, ?fixed, "the stream covers the room's subject as bridges before per-node subjects did: updating it (every bridge of the room must be upgraded; old ones are refused)");
    }
    let limits_differ = !has_limits(&current, &bridged.limits);
    if fixed.is_some() || limits_differ {
        let config = with_limits(
            stream::Config {
                subjects: fixed.clone().unwrap_or_else(|| current.subjects.clone()),
                ..current.clone()
            },
            &bridged.limits,
        );
        match js.update_stream(&config).await {
            Ok(_) => {
                if limits_differ {
                    tracing::info!(stream = %name, limits = ?bridged.limits, "the stream's limits set as configured");
                }
                stream = js.get_stream(&name).await.with_context(|| {
                    format!("cannot read the JetStream stream {name} after updating it")
                })?;
            }
            // Limits are the admin's to set when bridges may not: bridge
            // under the stream's own.
            Err(err) if fixed.is_none() => {
                tracing::warn!(stream = %name, %err, limits = ?bridged.limits, "the stream's limits differ from [jetstream] and cannot be changed by this bridge: bridging under the stream's own (an admin can set them: nats stream edit)");
            }
            Err(err) => {
                return Err(anyhow::Error::from(err).context(format!(
                    "the JetStream stream {name} covers {:?}, not {all}, and cannot be updated: \
                     update it as an admin: nats stream edit {name} --subjects '{}' --force",
                    current.subjects,
                    fixed.unwrap_or_default().join(",")
                )));
            }
        }
    }
    Ok(stream)
}

/// The room's state, shared by its two directions, saved at checkpoints.
struct Shared {
    file: StateFile,
    state: Mutex<RoomState>,
    /// Held while writing the file: both directions save, through one
    /// temporary file.
    saving: Mutex<()>,
}

impl Shared {
    /// The last stream message handled, and when its stream was made.
    fn stream_place(&self) -> Option<StreamPlace> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Some(StreamPlace {
            seq: state.stream_seq?,
            created: state.stream_created.clone(),
        })
    }

    fn save(&self) {
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.file.save_reported(&state);
    }
}

pub async fn run(
    bridged: Arc<Bridged>,
    client: async_nats::Client,
    metrics: Arc<Metrics>,
    max_msg: u32,
    incarnation: u64,
) -> anyhow::Result<()> {
    fits(max_msg, &bridged.limits).map_err(anyhow::Error::msg)?;
    let js = jetstream::new(client);
    let stream = ready_stream(&js, &bridged).await?;
    tracing::debug!(room = %bridged.room, "stream ready");
    let file = StateFile::new(&bridged.state_dir, &bridged.room)
        .reporting(metrics.save_health(&bridged.room));
    let mut loaded = file.load();
    for seen in loaded.seen.values_mut() {
        seen.bound();
    }
    let dropped = crate::trust::bound_nodes(&mut loaded.seen, bridged.max_nodes);
    if !dropped.is_empty() {
        tracing::warn!(room = %bridged.room, ?dropped, max_nodes = bridged.max_nodes, "the saved state knows more nodes than max_nodes: forgetting the last ones (their messages still in the stream may be relayed again)");
    }
    let state = Mutex::new(loaded);
    let shared = Arc::new(Shared {
        file,
        state,
        saving: Mutex::new(()),
    });
    let counters = metrics.counters(&bridged.room);
    let mut tasks = tokio::task::JoinSet::new();
    if bridged.direction.publishes() {
        tasks.spawn(publish(
            bridged.clone(),
            js.clone(),
            shared.clone(),
            counters.clone(),
            incarnation,
        ));
    }
    if bridged.direction.relays() {
        tasks.spawn(relay(bridged.clone(), stream, shared.clone(), counters));
    } else {
        counters.up.set(1);
    }
    // One direction failing takes the room down (the supervisor starts it
    // again); the state is saved on the way out.
    let outcome = crate::room::until_one_ends(tasks).await;
    shared.save();
    outcome
}

/// Where the local reader starts: after the last acknowledged message if the
/// room still holds what follows it (nothing lost), else at the oldest it
/// holds (the gap counted). A room created again under the same name (its
/// numbers start over) has another incarnation than the one the saved
/// number counts in: it is published from its oldest message, so none of
/// its messages is skipped, and its ids (which carry the incarnation)
/// never collide with the old room's.
fn resume(
    reader: &mut Reader,
    state: &mut RoomState,
    incarnation: u64,
    counters: &RoomCounters,
) -> Result<(), RoomError> {
    let (oldest, next) = reader.retained()?;
    let saved_incarnation = state.published_incarnation;
    let Some(last) = state.published else {
        // A room bridged for the first time joins from now.
        state.published = next.checked_sub(1);
        state.published_incarnation = Some(incarnation);
        return reader.seek(next);
    };
    // A file from before incarnations: the same room unless its saved
    // number is past the room's end.
    let same_room = saved_incarnation.map_or(last < next, |saved| saved == incarnation);
    if !same_room {
        // The saved place stays the old room's until a message of this
        // one is acknowledged: a restart before that starts from the
        // oldest again.
        tracing::info!(
            incarnation,
            ?saved_incarnation,
            "the room was created again since the bridge last ran: publishing it from its oldest message"
        );
        return reader.seek(oldest);
    }
    state.published_incarnation = Some(incarnation);
    if last + 1 >= oldest {
        return reader.seek(last + 1);
    }
    counters.local_lost.inc_by(oldest - last - 1);
    tracing::warn!(
        lost = oldest - last - 1,
        "the room no longer holds what was written while the bridge was away"
    );
    reader.seek(oldest)
}

/// Publishes what was written here, a batch per local read (one NATS
/// message of records, as large as the server and the stream allow), each acknowledged before
/// the next goes: one batch in flight, so the saved place is always a
/// batch's end.
async fn publish(
    bridged: Arc<Bridged>,
    js: jetstream::Context,
    shared: Arc<Shared>,
    counters: RoomCounters,
    incarnation: u64,
) -> anyhow::Result<()> {
    let mut reader = Reader::open(&bridged.room)?;
    // A batch stays under what the stream takes in one message (less what
    // its subject and headers need) as well as what the server takes.
    let stream_most = usize::try_from(bridged.limits.max_msg_size)
        .unwrap_or(0)
        .saturating_sub(STORED_OVERHEAD as usize);
    crate::room::still(&bridged.room, incarnation)?;
    {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        resume(&mut reader, &mut state, incarnation, &counters)?;
    }
    shared.save();
    let mut saved = Instant::now();
    let publisher = Publisher {
        bridged: &bridged,
        js: &js,
        shared: &shared,
        counters: &counters,
        incarnation,
    };
    loop {
        let most = crate::core::batch_bytes(&js.client()).min(stream_most);
        let batch = tokio::time::timeout(CHECKPOINT, reader.next_batches(most)).await;
        let Ok(batch) = batch else {
            if saved.elapsed() >= CHECKPOINT {
                shared.save();
                saved = Instant::now();
            }
            continue;
        };
        let Some(batch) = batch? else {
            return Err(RoomError::Deleted(bridged.room.clone()).into());
        };
        // Asked again after the wait, as for `drop` rooms: a reconnect
        // meanwhile may have brought a server that takes less.
        let most = crate::core::batch_bytes(&js.client()).min(stream_most);
        let mut records = Records::default();
        for frame in batch {
            counters.local_lost.inc_by(frame.header.lost);
            if frame.relayed() {
                continue;
            }
            if !records.body.is_empty()
                && records.body.len() + wire::RECORD_HEADER + frame.payload.len() > most
            {
                publisher.send(std::mem::take(&mut records)).await?;
            }
            records.push(&frame);
        }
        if !records.body.is_empty() {
            publisher.send(records).await?;
        }
        if saved.elapsed() >= CHECKPOINT {
            shared.save();
            saved = Instant::now();
        }
    }
}

/// The records of one batch, and the room sequence numbers of its first
/// and last.
#[derive(Default)]
struct Records {
    body: Vec<u8>,
    first: u64,
    last: u64,
    count: u64,
}

impl Records {
    fn push(&mut self, frame: &crate::local::Frame) {
        if self.count == 0 {
            self.first = frame.header.seq;
        }
        self.last = frame.header.seq;
        self.count += 1;
        wire::push_record(&mut self.body, &frame.header, &frame.payload);
    }
}

/// What publishing a batch needs.
struct Publisher<'a> {
    bridged: &'a Bridged,
    js: &'a jetstream::Context,
    shared: &'a Shared,
    counters: &'a RoomCounters,
    incarnation: u64,
}

impl Publisher<'_> {
    /// Publishes one batch until the server has it: a server away means
    /// waiting here, and the room holds back its writers as a block room
    /// does. Then its last message is the place to resume after.
    async fn send(&self, records: Records) -> anyhow::Result<()> {
        let bridged = self.bridged;
        let headers = wire::durable_batch_headers(
            &bridged.node,
            &bridged.room,
            self.incarnation,
            records.first,
            records.last,
        );
        let payload = bytes::Bytes::from(records.body);
        let mut wait = RETRY_FIRST;
        let ack = loop {
            let sent = self
                .js
                .publish_with_headers(bridged.own_subject(), headers.clone(), payload.clone())
                .await;
            let acked = match sent {
                Ok(future) => future.await,
                Err(err) => Err(err),
            };
            match acked {
                Ok(ack) => break ack,
                Err(err) if err.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                    // Deleted, or the server lost its store: waiting here
                    // would wait for ever; setting the room up again makes
                    // the stream anew.
                    anyhow::bail!(
                        "the room's JetStream stream is gone ({err}): setting the room up again"
                    );
                }
                Err(err) => {
                    self.counters.retries.inc();
                    tracing::warn!(room = %bridged.room, first = records.first, last = records.last, error = %err, "not acknowledged; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        };
        if ack.duplicate {
            self.counters.duplicates.inc_by(records.count);
        } else {
            self.counters.published.inc_by(records.count);
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.published = Some(records.last);
        state.published_incarnation = Some(self.incarnation);
        Ok(())
    }
}

async fn relay(
    bridged: Arc<Bridged>,
    mut stream: stream::Stream,
    shared: Arc<Shared>,
    counters: RoomCounters,
) -> anyhow::Result<()> {
    let relay = Relay::open(&bridged.room)?;
    let mut last = {
        let state = shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        crate::local::relayed_so_far(&bridged.room, &state.seen, bridged.max_nodes)?
    };
    let (deliver_policy, created) = start_at(&bridged, &mut stream, shared.stream_place()).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: bridged.all_subjects(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("cannot create this node's JetStream consumer")?;
    let mut messages = consumer
        .messages()
        .await
        .context("cannot pull from JetStream")?;
    counters.up.set(1);
    let mut saved = Instant::now();
    let mut quiet = crate::trust::Quiet::default();
    loop {
        let next = tokio::time::timeout(CHECKPOINT, messages.next()).await;
        let message = match next {
            Err(_idle) => {
                if saved.elapsed() >= CHECKPOINT {
                    shared.save();
                    saved = Instant::now();
                }
                continue;
            }
            Ok(None) => anyhow::bail!("the JetStream consumer of {} ended", bridged.all_subjects()),
            Ok(Some(Err(err))) => {
                // Heartbeats missed while the server is away and the like:
                // the stream reconnects by itself.
                tracing::warn!(room = %bridged.room, error = %err, "JetStream pull");
                continue;
            }
            Ok(Some(Ok(message))) => message,
        };
        counters.received.inc();
        if let Ok(info) = message.info() {
            counters
                .pending
                .set(i64::try_from(info.pending).unwrap_or(i64::MAX));
        }
        relay_one(&bridged, &relay, &message, &mut last, &counters, &mut quiet).await?;
        // Done with it (in the room, or refused for good). A crash before
        // the next save brings it again, and `last` skips it then.
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.seen = last.clone();
        if let Ok(info) = message.info() {
            state.stream_seq = Some(info.stream_sequence);
            state.stream_created = Some(created.clone());
        }
        drop(state);
        if saved.elapsed() >= CHECKPOINT {
            shared.save();
            saved = Instant::now();
        }
    }
}

/// Where a node's relay side stands in the room's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPlace {
    /// The last stream sequence number handled.
    pub seq: u64,
    /// When that stream was made (`None` in a state file from before
    /// this was saved).
    pub created: Option<String>,
}

/// Where a consumer starts reading a stream that holds `first..=last`
/// and was made at `created`, given its saved place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// With what is published from now: a room bridged for the first time.
    New,
    /// After the saved place.
    After(u64),
    /// From the stream's first message: the stream was made anew since
    /// (deleted, or the server lost its store), so the saved number counts
    /// in another stream; what the room already holds is skipped as seen.
    First,
}

pub fn start(place: Option<&StreamPlace>, created: &str, last: u64) -> Start {
    let Some(place) = place else {
        return Start::New;
    };
    let made_anew = place
        .created
        .as_deref()
        .is_some_and(|saved| saved != created);
    // A stream shorter than the saved place is another stream too (a
    // state file that does not say when its stream was made).
    if made_anew || place.seq > last {
        Start::First
    } else {
        Start::After(place.seq)
    }
}

/// Where this node's consumer starts (see [`start`]), and when the stream
/// was made, to save beside the place.
async fn start_at(
    bridged: &Bridged,
    stream: &mut stream::Stream,
    place: Option<StreamPlace>,
) -> anyhow::Result<(consumer::DeliverPolicy, String)> {
    let info = stream
        .info()
        .await
        .context("cannot read the JetStream stream's state")?;
    let created = info.created.to_string();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let policy = match start(place.as_ref(), &created, last) {
        Start::New => consumer::DeliverPolicy::New,
        Start::After(seq) => {
            if seq + 1 < first {
                tracing::warn!(room = %bridged.room, expired = first - seq - 1, "the stream no longer holds what was published while the bridge was away");
            }
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            }
        }
        Start::First => {
            tracing::warn!(room = %bridged.room, saved = ?place, %created, last, "the stream was made anew since this node last read it: reading it from its first message (what the room holds already is skipped)");
            consumer::DeliverPolicy::All
        }
    };
    Ok((policy, created))
}

/// Relays one stream message (a batch, or one message from a bridge from
/// before batches) if it is believed and another node's, each of its
/// messages that is new; `Ok` also when it is refused for good (counted).
async fn relay_one(
    bridged: &Bridged,
    relay: &Relay,
    message: &jetstream::Message,
    last: &mut std::collections::BTreeMap<String, Seen>,
    counters: &RoomCounters,
    quiet: &mut crate::trust::Quiet,
) -> Result<(), RoomError> {
    let headers = message.headers.as_ref();
    let node = wire::node(headers);
    if node == Some(bridged.node.as_str()) && message.subject.as_str() == bridged.own_subject() {
        // Our own publication.
        return Ok(());
    }
    let parsed = if wire::is_batch(headers) {
        wire::batch(headers, &message.payload)
    } else {
        wire::origin(headers, message.payload.len()).map(|origin| {
            vec![wire::Record {
                origin,
                numbering: None,
                payload: &message.payload,
            }]
        })
    };
    let records = match parsed {
        Ok(records) => records,
        Err(reason) => {
            if let Some(held) = quiet.due(Instant::now()) {
                tracing::warn!(room = %bridged.room, %reason, held_back = held, "not relayed");
            }
            counters.dropped("malformed");
            return Ok(());
        }
    };
    // Believed only on its own node's subject; ours is not relayed in.
    if let Err(untrusted) =
        crate::trust::check_sender(&bridged.subject, message.subject.as_str(), node)
    {
        crate::core::refuse(bridged, counters, quiet, &untrusted);
        return Ok(());
    }
    if node == Some(bridged.node.as_str()) {
        return Ok(());
    }
    let node = node.unwrap_or_default().to_owned();
    // A new node past the bound: not relayed, and not saved.
    if let Err(untrusted) = crate::trust::admit(last, &node, bridged.max_nodes) {
        crate::core::refuse(bridged, counters, quiet, &untrusted);
        return Ok(());
    }
    // No gaps here: a node's room numbers have holes where relayed
    // messages took them, and JetStream loses nothing between. What the
    // room already holds (a batch published again after a restart, cut
    // elsewhere) is skipped message by message.
    let seen = last.entry(node).or_default();
    let mut fresh = Vec::with_capacity(records.len());
    for record in &records {
        let (incarnation, seq) = (record.origin.incarnation(), record.origin.seq);
        if seen.judge(incarnation, seq) == crate::trust::Verdict::Duplicate {
            counters.duplicates.inc();
        } else {
            fresh.push(record);
        }
    }
    let frames: Vec<Vec<u8>> = fresh
        .iter()
        .map(|record| kchat_client::relay_frame(record.origin, record.payload))
        .collect();
    let outcomes = relay.write_batch_waiting(&frames).await?;
    for (outcome, record) in outcomes.into_iter().zip(&fresh) {
        crate::core::count(bridged, counters, quiet, outcome, &record.origin);
        seen.note(record.origin.incarnation(), record.origin.seq);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_whose_messages_the_stream_refuses_is_not_bridged() {
        let limits = StreamLimits::default();
        fits(4096, &limits).unwrap();
        fits((1 << 20) - STORED_OVERHEAD, &limits).unwrap();
        let err = fits((1 << 20) - STORED_OVERHEAD + 1, &limits).unwrap_err();
        assert!(
            err.contains("raise jetstream.max_msg_size to at least 1048577"),
            "{err}"
        );
    }

    #[test]
    fn a_stream_made_anew_is_read_from_its_first_message() {
        let place = |seq, created: Option<&str>| StreamPlace {
            seq,
            created: created.map(str::to_owned),
        };
        assert_eq!(start(None, "t1", 50), Start::New);
        assert_eq!(
            start(Some(&place(20, Some("t1"))), "t1", 50),
            Start::After(20)
        );
        assert_eq!(start(Some(&place(20, None)), "t1", 50), Start::After(20));
        // Made anew and grown past the saved number: 1..=20 would be skipped.
        assert_eq!(start(Some(&place(20, Some("t1"))), "t2", 50), Start::First);
        // Made anew and shorter: everything published meanwhile would be.
        assert_eq!(start(Some(&place(20, Some("t1"))), "t2", 5), Start::First);
        assert_eq!(start(Some(&place(20, None)), "t2", 5), Start::First);
        // Nothing handled yet in an empty stream.
        assert_eq!(start(Some(&place(0, Some("t1"))), "t1", 0), Start::After(0));
    }

    #[test]
    fn a_stream_is_named_after_the_room_subject() {
        assert_eq!(stream_name("kchat.lobby"), "kchat~lobby");
        assert_eq!(stream_name("a.b.lobby"), "a~b~lobby");
    }

    #[test]
    fn an_old_stream_is_moved_to_every_nodes_subject() {
        let old = vec!["kchat.lobby".to_owned()];
        assert_eq!(
            subjects_to_fix(&old, "kchat.lobby"),
            Some(vec!["kchat.lobby.*".to_owned()])
        );
        // An admin's own extra subjects stay.
        let mixed = vec!["kchat.lobby".to_owned(), "audit.lobby".to_owned()];
        assert_eq!(
            subjects_to_fix(&mixed, "kchat.lobby"),
            Some(vec!["audit.lobby".to_owned(), "kchat.lobby.*".to_owned()])
        );
        for good in [["kchat.lobby.*"], ["kchat.lobby.>"]] {
            let good: Vec<String> = good.iter().map(|s| s.to_string()).collect();
            assert_eq!(subjects_to_fix(&good, "kchat.lobby"), None);
        }
    }
}
