//! The bridge's counters and `/metrics`.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoomLabel {
    pub room: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    pub room: String,
    pub reason: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    /// Local messages published to NATS.
    pub published: Family<RoomLabel, Counter>,
    /// NATS messages received on a room's subject (own echoes included).
    pub received: Family<RoomLabel, Counter>,
    /// Messages written into the local room as relayed.
    pub relayed: Family<RoomLabel, Counter>,
    /// Messages not passed on, by reason.
    pub dropped: Family<DropLabel, Counter>,
    /// Messages other nodes sent that never arrived (sequence gaps).
    pub gaps: Family<RoomLabel, Counter>,
    /// Messages the local room lost before the bridge read them.
    pub local_lost: Family<RoomLabel, Counter>,
    pub reconnects: Counter,
    /// Whether the NATS connection is up.
    pub connected: Gauge,
}

impl Metrics {
    pub fn dropped_one(&self, room: &str, reason: &'static str) {
        self.dropped
            .get_or_create(&DropLabel {
                room: room.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn room(family: &Family<RoomLabel, Counter>, room: &str) -> Counter {
        family
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
    ] {
        registry.register(name, help, family.clone());
    }
    registry.register(
        "dropped",
        "Messages not passed on, by reason",
        metrics.dropped.clone(),
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

pub async fn serve(listen: std::net::SocketAddr, registry: Registry) -> anyhow::Result<()> {
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
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen for metrics on {listen}: {err}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
