//! The bridge's counters and `/metrics`.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::{atomic::AtomicU64, Arc};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoomLabel {
    pub room: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    pub room: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    pub room: String,
    pub delivery: &'static str,
    pub direction: &'static str,
}

type Rooms = Family<RoomLabel, Counter>;

#[derive(Default)]
pub struct Metrics {
    /// Local messages published to NATS (acknowledged, for JetStream).
    pub published: Rooms,
    /// NATS messages received on a room's subject (own echoes included).
    pub received: Rooms,
    /// Messages written into the local room as relayed.
    pub relayed: Rooms,
    /// Messages not passed on, by reason.
    pub dropped: Family<DropLabel, Counter>,
    /// Messages not believed, by reason: a node speaking on another's
    /// subject (`forged_node`), a node past `max_nodes`
    /// (`too_many_nodes`).
    pub refused: Family<DropLabel, Counter>,
    /// Messages other nodes published that never arrived (`drop` rooms:
    /// gaps in each origin's numbers per incarnation and run).
    pub gaps: Rooms,
    /// Messages the local room lost before the bridge read them.
    pub local_lost: Rooms,
    /// Messages seen again and not stored twice (JetStream rooms).
    pub duplicates: Rooms,
    /// Publications the server did not acknowledge, tried again.
    pub retries: Rooms,
    /// Times a room's bridging stopped on an error (and was started again).
    pub room_errors: Rooms,
    /// 1 while the room is bridged, 0 while it is waiting to be.
    pub room_up: Family<RoomLabel, Gauge>,
    /// How each room is bridged (value 1).
    pub room_delivery: Family<DeliveryLabel, Gauge>,
    /// JetStream messages waiting for this node's consumer.
    pub pending: Family<RoomLabel, Gauge>,
    /// Age of the last relayed message when it was written in, by its
    /// origin's clock.
    pub lag: Family<RoomLabel, Gauge<f64, AtomicU64>>,
    pub state_save_failing: Family<RoomLabel, Gauge>,
    pub state_save_failures: Rooms,
    pub room_locked: Family<RoomLabel, Gauge>,
    pub reconnects: Counter,
    /// Whether the NATS connection is up.
    pub connected: Gauge,
}

/// One room's handles on the families (cheap clones of shared atomics).
#[derive(Clone)]
pub struct RoomCounters {
    room: String,
    metrics: Arc<Metrics>,
    pub published: Counter,
    pub received: Counter,
    pub relayed: Counter,
    pub gaps: Counter,
    pub local_lost: Counter,
    pub duplicates: Counter,
    pub retries: Counter,
    pub pending: Gauge,
    /// 1 once the room's subscription (or consumer) is in place.
    pub up: Gauge,
    lag: Gauge<f64, AtomicU64>,
}

impl RoomCounters {
    pub fn dropped(&self, reason: &'static str) {
        self.metrics
            .dropped
            .get_or_create(&DropLabel {
                room: self.room.clone(),
                reason,
            })
            .inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.metrics
            .refused
            .get_or_create(&DropLabel {
                room: self.room.clone(),
                reason,
            })
            .inc();
    }

    /// Notes how old a message written at `time_ns` (origin's realtime
    /// clock) is now.
    pub fn observe_lag(&self, time_ns: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.lag.set(now.saturating_sub(time_ns) as f64 / 1e9);
    }
}

impl Metrics {
    pub fn counters(self: &Arc<Self>, room: &str) -> RoomCounters {
        let label = RoomLabel {
            room: room.to_owned(),
        };
        let counter = |family: &Rooms| family.get_or_create(&label).clone();
        for reason in crate::trust::REFUSAL_REASONS {
            drop(self.refused.get_or_create(&DropLabel {
                room: room.to_owned(),
                reason,
            }));
        }
        RoomCounters {
            room: room.to_owned(),
            metrics: self.clone(),
            published: counter(&self.published),
            received: counter(&self.received),
            relayed: counter(&self.relayed),
            gaps: counter(&self.gaps),
            local_lost: counter(&self.local_lost),
            duplicates: counter(&self.duplicates),
            retries: counter(&self.retries),
            pending: self.pending.get_or_create(&label).clone(),
            up: self.room_up.get_or_create(&label).clone(),
            lag: self.lag.get_or_create(&label).clone(),
        }
    }

    pub fn room_up(&self, room: &str) -> Gauge {
        self.room_up
            .get_or_create(&RoomLabel {
                room: room.to_owned(),
            })
            .clone()
    }

    /// Where a room's state file reports how its saves go.
    pub fn save_health(&self, room: &str) -> crate::state::SaveHealth {
        let label = RoomLabel {
            room: room.to_owned(),
        };
        crate::state::SaveHealth {
            room: room.to_owned(),
            failing: self.state_save_failing.get_or_create(&label).clone(),
            failures: self.state_save_failures.get_or_create(&label).clone(),
        }
    }

    /// 1 while another kchat-bridge on this machine holds the room.
    pub fn room_locked(&self, room: &str) -> Gauge {
        self.room_locked
            .get_or_create(&RoomLabel {
                room: room.to_owned(),
            })
            .clone()
    }

    pub fn room_errors(&self, room: &str) -> Counter {
        self.room_errors
            .get_or_create(&RoomLabel {
                room: room.to_owned(),
            })
            .clone()
    }
}

pub fn registry(metrics: &Arc<Metrics>) -> Registry {
    let mut registry = Registry::with_prefix("kchat_bridge");
    for (name, help, family) in [
        (
            "published",
            "Local messages published to NATS",
            &metrics.published,
        ),
        (
            "received",
            "NATS messages received on a bridged subject",
            &metrics.received,
        ),
        (
            "relayed",
            "Messages written into a local room as relayed",
            &metrics.relayed,
        ),
        (
            "gaps",
            "Messages another node sent that never arrived",
            &metrics.gaps,
        ),
        (
            "local_lost",
            "Messages a local room lost before the bridge read them",
            &metrics.local_lost,
        ),
        (
            "duplicates",
            "Messages seen again and not stored twice (JetStream rooms)",
            &metrics.duplicates,
        ),
        (
            "publish_retries",
            "Publications not acknowledged and sent again (JetStream rooms)",
            &metrics.retries,
        ),
        (
            "room_errors",
            "Times a room's bridging stopped on an error and was started again",
            &metrics.room_errors,
        ),
        (
            "state_save_failures",
            "Saves of the room's state file that failed (JetStream rooms)",
            &metrics.state_save_failures,
        ),
    ] {
        registry.register(name, help, family.clone());
    }
    registry.register(
        "dropped",
        "Messages not passed on, by reason",
        metrics.dropped.clone(),
    );
    registry.register(
        "refused",
        "Messages not believed, by reason (forged_node, too_many_nodes)",
        metrics.refused.clone(),
    );
    registry.register(
        "room_up",
        "Whether the room is bridged now (0: waiting for it)",
        metrics.room_up.clone(),
    );
    registry.register(
        "room_delivery",
        "How the room is bridged: core NATS or JetStream, and which way",
        metrics.room_delivery.clone(),
    );
    registry.register(
        "state_save_failing",
        "Whether the room's last state save failed (1) until one succeeds (JetStream rooms)",
        metrics.state_save_failing.clone(),
    );
    registry.register(
        "room_locked",
        "Whether another kchat-bridge on this machine bridges the room, so this one does not (1)",
        metrics.room_locked.clone(),
    );
    registry.register(
        "pending",
        "JetStream messages waiting for this node's consumer",
        metrics.pending.clone(),
    );
    registry.register(
        "relay_lag_seconds",
        "Age of the last relayed message when written in, by its origin's clock",
        metrics.lag.clone(),
    );
    registry.register(
        "reconnects",
        "Reconnections to NATS",
        metrics.reconnects.clone(),
    );
    registry.register(
        "connected",
        "Whether the NATS connection is up",
        metrics.connected.clone(),
    );
    registry
}

/// Binds the metrics address: a bridge that cannot be watched (`status`,
/// alerts) must not run as if it were, so a taken or bad address stops it
/// at start with what to do.
pub async fn bind(listen: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await.map_err(|err| {
        let hint = if err.kind() == std::io::ErrorKind::AddrInUse {
            "another process (another kchat-bridge? kchatd?) listens there: stop it, or set [metrics] listen to a free address"
        } else {
            "set [metrics] listen to an address of this machine"
        };
        anyhow::anyhow!("cannot listen for metrics on {listen}: {err}; {hint}")
    })
}

pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) -> anyhow::Result<()> {
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match encode(&mut text, &registry) {
                    Ok(()) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    ),
                    Err(_) => (
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        "encoding failed".into(),
                    ),
                }
            }
        }),
    );
    axum::serve(listener, app).await?;
    Ok(())
}
