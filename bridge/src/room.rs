//! One bridged room, kept bridged: its delivery follows the room's policy
//! (`drop`: core NATS, `block`: JetStream), and when it stops (the room
//! not created yet, deleted, the server refusing) it is logged, counted
//! and tried again while the other rooms go on.

use crate::{config::Direction, metrics::DeliveryLabel, metrics::Metrics};
use kchat_uapi::abi;
use std::{path::PathBuf, sync::Arc, time::Duration};

pub struct Bridged {
    pub room: String,
    /// The room's subject, `<prefix>.<room>`: this node publishes on
    /// `<subject>.<node>` ([`Bridged::own_subject`]) and takes in
    /// `<subject>.*`.
    pub subject: String,
    pub node: String,
    pub direction: Direction,
    pub state_dir: PathBuf,
    /// How many other nodes the room remembers (`max_nodes`).
    pub max_nodes: usize,
    /// Its stream's limits (`block` rooms).
    pub limits: crate::config::StreamLimits,
}

impl Bridged {
    /// Where this node publishes the room's messages.
    pub fn own_subject(&self) -> String {
        crate::trust::node_subject(&self.subject, &self.node)
    }

    /// Every node's subject of the room.
    pub fn all_subjects(&self) -> String {
        crate::trust::room_wildcard(&self.subject)
    }
}

/// How long a failed room waits before it is tried again, first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Delivery {
    Core,
    JetStream,
}

impl Delivery {
    fn name(self) -> &'static str {
        match self {
            Delivery::Core => "core",
            Delivery::JetStream => "jetstream",
        }
    }
}

/// What the bridge learns of a room on the control node when it sets the
/// room up.
pub struct Setup {
    /// The room's policy decides: a `block` room promises to lose nothing.
    pub delivery: Delivery,
    /// Its largest message, which its stream must take.
    pub max_msg: u32,
    /// Its incarnation (`RoomInfo::incarnation`): new for a room created
    /// again, so its sequence numbers starting over are told apart. 0 from
    /// a module from before incarnations.
    pub incarnation: u64,
}

fn room_info(room: &str) -> anyhow::Result<abi::RoomInfo> {
    let control = kchat_client::Control::open().map_err(|err| {
        anyhow::anyhow!("cannot open /dev/kchat/control to learn room {room}'s settings: {err}")
    })?;
    let info = control.info(room).map_err(|err| match err {
        nix::errno::Errno::ENOENT => anyhow::anyhow!("room {room} does not exist (yet)"),
        err => anyhow::anyhow!("cannot read room {room}'s settings: {err}"),
    })?;
    Ok(info)
}

fn setup(room: &str) -> anyhow::Result<Setup> {
    let info = room_info(room)?;
    let delivery = if info.policy == abi::POLICY_BLOCK {
        Delivery::JetStream
    } else {
        Delivery::Core
    };
    if info.incarnation == 0 {
        tracing::warn!(room, "the kchat module reports no room incarnation (a module from before them): a room created again under this name is not told apart; upgrade the module");
    }
    Ok(Setup {
        delivery,
        max_msg: info.max_msg,
        incarnation: info.incarnation,
    })
}

/// Checks, once the room is open, that it is still the incarnation the
/// bridge set up: a room deleted and created again in between is set up
/// again instead of published under the old one's incarnation.
pub fn still(room: &str, incarnation: u64) -> anyhow::Result<()> {
    let now = room_info(room)?.incarnation;
    if now != incarnation {
        anyhow::bail!("room {room} was created again while the bridge set it up (incarnation {incarnation} is now {now}): setting it up again");
    }
    Ok(())
}

/// Waits until this bridge holds the room's lock (see [`crate::lock`]):
/// while another bridge on the machine holds it, the room is not bridged
/// here, which `kchat_bridge_room_locked` and `status` show, and the log
/// says once.
async fn hold(bridged: &Bridged, metrics: &Metrics) -> crate::lock::RoomLock {
    let locked = metrics.room_locked(&bridged.room);
    let errors = metrics.room_errors(&bridged.room);
    let dir = std::path::Path::new(crate::lock::LOCK_DIR);
    let mut said = String::new();
    loop {
        match crate::lock::take(dir, &bridged.room) {
            Ok(crate::lock::Taken::Held(lock)) => {
                if locked.set(0) != 0 {
                    tracing::info!(room = %bridged.room, "the other kchat-bridge let the room go; bridging it here");
                }
                return lock;
            }
            Ok(crate::lock::Taken::Elsewhere { path, holder }) => {
                if locked.set(1) == 0 {
                    tracing::error!(
                        room = %bridged.room,
                        lock = %path.display(),
                        holder = %holder,
                        "another kchat-bridge on this machine (pid {holder}) bridges room {}: not bridging it here, which would relay every message twice; remove the room from one bridge's config (this one takes it over if the other lets it go)",
                        bridged.room
                    );
                }
            }
            Err(err) => {
                errors.inc();
                let text = format!("{err:#}");
                if text != said {
                    tracing::error!(room = %bridged.room, error = %text, "cannot take the room's lock; not bridging it until it can");
                    said = text;
                }
            }
        }
        tokio::time::sleep(RETRY_MAX).await;
    }
}

pub async fn supervise(bridged: Bridged, client: async_nats::Client, metrics: Arc<Metrics>) {
    let bridged = Arc::new(bridged);
    let _lock = hold(&bridged, &metrics).await;
    // Every series of the room from now on, at 0: a rate or an alert sees
    // the first event, and a dashboard the room before it is bridged.
    let _ = metrics.counters(&bridged.room);
    let _ = metrics.save_health(&bridged.room);
    let up = metrics.room_up(&bridged.room);
    let errors = metrics.room_errors(&bridged.room);
    let mut wait = RETRY_FIRST;
    let mut shown: Option<Delivery> = None;
    loop {
        let attempt = async {
            let Setup {
                delivery,
                max_msg,
                incarnation,
            } = setup(&bridged.room)?;
            if shown != Some(delivery) {
                for old in shown.iter() {
                    metrics.room_delivery.remove(&label(&bridged, *old));
                }
                metrics
                    .room_delivery
                    .get_or_create(&label(&bridged, delivery))
                    .set(1);
                shown = Some(delivery);
            }
            tracing::info!(room = %bridged.room, subject = %bridged.subject, delivery = delivery.name(), incarnation, "bridging");
            match delivery {
                Delivery::Core => {
                    crate::core::run(
                        bridged.clone(),
                        client.clone(),
                        metrics.clone(),
                        incarnation,
                    )
                    .await
                }
                Delivery::JetStream => {
                    crate::stream::run(
                        bridged.clone(),
                        client.clone(),
                        metrics.clone(),
                        max_msg,
                        incarnation,
                    )
                    .await
                }
            }
        };
        let started = std::time::Instant::now();
        let outcome = attempt.await;
        up.set(0);
        errors.inc();
        match outcome {
            Ok(()) => tracing::warn!(room = %bridged.room, "bridging stopped; starting again"),
            Err(err) => {
                tracing::warn!(room = %bridged.room, error = %format!("{err:#}"), "room not bridged; trying again")
            }
        }
        // A room that ran a while starts again quickly.
        if started.elapsed() > RETRY_MAX * 2 {
            wait = RETRY_FIRST;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Waits for a room's directions until one ends, then stops the other: the
/// supervisor starts the room again whole.
pub async fn until_one_ends(
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let outcome = match tasks.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(err)) => Err(anyhow::anyhow!("a task of the room panicked: {err}")),
        None => Ok(()),
    };
    tasks.shutdown().await;
    outcome
}

fn label(bridged: &Bridged, delivery: Delivery) -> DeliveryLabel {
    DeliveryLabel {
        room: bridged.room.clone(),
        delivery: delivery.name(),
        direction: bridged.direction.name(),
    }
}
