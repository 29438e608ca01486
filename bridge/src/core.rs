//! A `drop` room over core NATS: at most once, like the room itself. A
//! slow or absent subscriber loses messages; the receiving bridge counts
//! each origin's gaps, so losses are seen, not hidden. What a bridge
//! publishes is numbered per (incarnation, run) without holes (the room's
//! own sequence numbers have holes where relayed messages took them), so
//! only what never came counts. What one local read returns goes out as
//! one NATS message (a batch, `wire::batch`), and comes in through one
//! relay write.

use crate::{
    local::{Reader, Relay, RoomError},
    metrics::{Metrics, RoomCounters},
    room::Bridged,
    wire,
};
use async_nats::Client;
use futures_util::StreamExt;
use std::sync::Arc;

pub async fn run(
    bridged: Arc<Bridged>,
    client: Client,
    metrics: Arc<Metrics>,
    incarnation: u64,
) -> anyhow::Result<()> {
    let counters = metrics.counters(&bridged.room);
    let mut tasks = tokio::task::JoinSet::new();
    if bridged.direction.publishes() {
        tasks.spawn(publish(
            bridged.clone(),
            client.clone(),
            counters.clone(),
            incarnation,
        ));
    }
    if bridged.direction.relays() {
        tasks.spawn(relay(bridged.clone(), client, counters));
    } else {
        counters.up.set(1);
    }
    crate::room::until_one_ends(tasks).await
}

/// Publishes what was written here, a batch per local read. Relayed
/// messages (those this or another bridge wrote in) never go out again:
/// that is what keeps two bridges from looping. Each published message is
/// numbered in this run (random, so a restarted bridge's numbers are never
/// taken for the last run's): 1, 2, 3..., counting only what is published.
async fn publish(
    bridged: Arc<Bridged>,
    client: Client,
    counters: RoomCounters,
    incarnation: u64,
) -> anyhow::Result<()> {
    let mut reader = Reader::open(&bridged.room)?;
    crate::room::still(&bridged.room, incarnation)?;
    let run = fastrand::u64(..);
    let mut num = 0u64;
    let mut body = Vec::new();
    let mut first = 0u64;
    let batches = Batches {
        client: &client,
        bridged: &bridged,
        counters: &counters,
        incarnation,
        run,
    };
    while let Some(batch) = reader.next_batches(batch_bytes(&client)).await? {
        // Asked again after the wait: a reconnect meanwhile may have
        // brought a server that takes less, and the split must fit it.
        let most = batch_bytes(&client);
        for frame in batch {
            counters.local_lost.inc_by(frame.header.lost);
            if frame.relayed() {
                continue;
            }
            if !body.is_empty() && body.len() + wire::RECORD_HEADER + frame.payload.len() > most {
                batches.send(first, num, &mut body).await?;
            }
            num += 1;
            if body.is_empty() {
                first = num;
            }
            wire::push_record(&mut body, &frame.header, &frame.payload);
        }
        if !body.is_empty() {
            batches.send(first, num, &mut body).await?;
        }
    }
    Err(RoomError::Deleted(bridged.room.clone()).into())
}

/// Bytes of a NATS message kept for its headers: a batch's body is at most
/// the server's `max_payload` less this.
const BATCH_HEADROOM: usize = 4096;

/// `max_payload` of a server that has not said (its first INFO not in yet,
/// while the client connects): the server's default, 1 MiB.
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// The most bytes of records one batch may hold: what the server takes in
/// one message less room for subject and headers. Asked per batch: the
/// server says it only once connected, and another server may say less.
pub fn batch_bytes(client: &Client) -> usize {
    let max = match client.server_info().max_payload {
        0 => DEFAULT_MAX_PAYLOAD,
        max => max,
    };
    max.saturating_sub(BATCH_HEADROOM).max(BATCH_HEADROOM)
}

/// Where a run's batches go and what they count in.
struct Batches<'a> {
    client: &'a Client,
    bridged: &'a Bridged,
    counters: &'a RoomCounters,
    incarnation: u64,
    run: u64,
}

impl Batches<'_> {
    /// Publishes the batch in `body` (numbers `first..=last`) and empties it.
    async fn send(&self, first: u64, last: u64, body: &mut Vec<u8>) -> anyhow::Result<()> {
        let bridged = self.bridged;
        let headers = wire::batch_headers(&bridged.node, self.incarnation, self.run, first);
        let payload = std::mem::take(body);
        self.client
            .publish_with_headers(bridged.own_subject(), headers, payload.into())
            .await?;
        self.counters.published.inc_by(last - first + 1);
        Ok(())
    }
}

/// Writes what other nodes published into the room through a relay fd.
async fn relay(
    bridged: Arc<Bridged>,
    client: Client,
    counters: RoomCounters,
) -> anyhow::Result<()> {
    let relay = Relay::open(&bridged.room)?;
    let mut subscriber = client.subscribe(bridged.all_subjects()).await?;
    client.flush().await?;
    counters.up.set(1);
    // Gaps count from what the room holds: messages that went by while
    // the bridge was away are counted once the next one comes.
    let mut gaps = wire::Gaps::default();
    let held = crate::local::relayed_so_far(&bridged.room, &Default::default(), bridged.max_nodes)?;
    for (node, seen) in held {
        if let (Some(field), Some((incarnation, seq))) =
            (kchat_uapi::abi::name_field(&node), seen.latest())
        {
            gaps.seed(field, incarnation, seq);
        }
    }
    let mut quiet = crate::trust::Quiet::default();
    let own = bridged.own_subject();
    while let Some(message) = subscriber.next().await {
        counters.received.inc();
        let headers = message.headers.as_ref();
        let node = wire::node(headers);
        if node == Some(bridged.node.as_str()) && message.subject.as_str() == own {
            // Our own publication, back from the server.
            continue;
        }
        // A batch, or one message from a bridge from before batches.
        let parsed = if wire::is_batch(headers) {
            wire::batch(headers, &message.payload)
        } else {
            wire::origin(headers, message.payload.len()).and_then(|origin| {
                Ok(vec![wire::Record {
                    origin,
                    numbering: wire::numbering(headers)?,
                    payload: &message.payload,
                }])
            })
        };
        let records = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                if let Some(held) = quiet.due(std::time::Instant::now()) {
                    tracing::warn!(room = %bridged.room, %reason, held_back = held, "not relayed");
                }
                counters.dropped("malformed");
                continue;
            }
        };
        // Believed only on its own node's subject (the server's
        // permissions say who may publish there); ours is not relayed in.
        if let Err(untrusted) =
            crate::trust::check_sender(&bridged.subject, message.subject.as_str(), node)
        {
            refuse(&bridged, &counters, &mut quiet, &untrusted);
            continue;
        }
        if node == Some(bridged.node.as_str()) {
            continue;
        }
        // Every record of a batch is from the node its headers name.
        let origin_node = records[0].origin.node;
        if let Err(untrusted) =
            gaps.admit(&origin_node, node.unwrap_or_default(), bridged.max_nodes)
        {
            refuse(&bridged, &counters, &mut quiet, &untrusted);
            continue;
        }
        let mut frames = Vec::with_capacity(records.len());
        for record in &records {
            let skipped = gaps.note(origin_node, &record.origin, record.numbering);
            counters.gaps.inc_by(skipped);
            frames.push(kchat_client::relay_frame(record.origin, record.payload));
        }
        // Each relayed message is taken whole or not at all; a full room
        // drops it, as a drop room does, and the batch goes on.
        let outcomes = relay.write_batch_now(&frames)?;
        for (outcome, record) in outcomes.into_iter().zip(&records) {
            count(&bridged, &counters, &mut quiet, outcome, &record.origin);
        }
    }
    anyhow::bail!("the subscription to {} ended", bridged.all_subjects())
}

/// Counts what became of one relayed message (see `Relay`'s batches), and
/// logs a refusal unless many came lately.
pub fn count(
    bridged: &Bridged,
    counters: &RoomCounters,
    quiet: &mut crate::trust::Quiet,
    outcome: Result<(), (&'static str, std::io::Error)>,
    origin: &kchat_uapi::abi::OriginHeader,
) {
    match outcome {
        Ok(()) => {
            counters.relayed.inc();
            counters.observe_lag(origin.time_ns);
        }
        Err((reason, err)) => {
            if let Some(held) = quiet.due(std::time::Instant::now()) {
                tracing::warn!(room = %bridged.room, error = %err, reason, held_back = held, "not relayed");
            }
            counters.dropped(reason);
        }
    }
}

/// Counts a message not believed, and logs it unless many came lately.
pub fn refuse(
    bridged: &Bridged,
    counters: &RoomCounters,
    quiet: &mut crate::trust::Quiet,
    untrusted: &crate::trust::Untrusted,
) {
    counters.refused(untrusted.reason());
    if let Some(held) = quiet.due(std::time::Instant::now()) {
        tracing::warn!(
            room = %bridged.room,
            reason = %untrusted,
            held_back = held,
            "refused, not relayed (see kchat_bridge_refused_total)"
        );
    }
}
