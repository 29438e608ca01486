//! `/metrics` and `/healthz`.
//!
//! Room metrics are read from the kernel on each scrape (a Collector), so
//! they are as fresh as the scrape and cost nothing between scrapes. Names
//! follow Prometheus conventions: `kchat_` prefix, base units in the name,
//! `_total` on counters (added by the encoder), one bounded `room` label.

use crate::daemon::Daemon;
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use kchat_proto::api::RoomView;
use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::{Registry, Unit},
};
use std::{
    fmt::Error,
    sync::{atomic::Ordering, Arc},
    time::UNIX_EPOCH,
};

#[derive(Debug)]
struct KchatCollector {
    daemon: Arc<Daemon>,
}

/// One room metric: name, help, unit, type, and how to read it.
struct RoomMetric {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    counter: bool,
    value: fn(&RoomView) -> u64,
}

const ROOM_METRICS: &[RoomMetric] = &[
    RoomMetric {
        name: "kchat_room_messages",
        help: "Messages written to the room.",
        unit: None,
        counter: true,
        value: |r| r.counters.msgs_in,
    },
    RoomMetric {
        name: "kchat_room_written",
        help: "Payload bytes written to the room.",
        unit: Some(Unit::Bytes),
        counter: true,
        value: |r| r.counters.bytes_in,
    },
    RoomMetric {
        name: "kchat_room_deliveries",
        help: "Messages delivered, one per reader per message.",
        unit: None,
        counter: true,
        value: |r| r.counters.deliveries,
    },
    RoomMetric {
        name: "kchat_room_lost_messages",
        help: "Messages readers lost because the ring moved on (drop rooms).",
        unit: None,
        counter: true,
        value: |r| r.counters.lost,
    },
    RoomMetric {
        name: "kchat_room_throttled_writes",
        help: "Writes refused or delayed by the room's rate limit.",
        unit: None,
        counter: true,
        value: |r| r.counters.throttled,
    },
    RoomMetric {
        name: "kchat_room_writer_waits",
        help: "Times a writer waited for a slow reader (block rooms).",
        unit: None,
        counter: true,
        value: |r| r.counters.writer_waits,
    },
    RoomMetric {
        name: "kchat_room_laggard_evictions",
        help: "Times a writer evicted readers that held a block room past its max_wait.",
        unit: None,
        counter: true,
        value: |r| r.counters.laggard_evictions,
    },
    RoomMetric {
        name: "kchat_room_readers",
        help: "Files open for reading.",
        unit: None,
        counter: false,
        value: |r| u64::from(r.counters.readers),
    },
    RoomMetric {
        name: "kchat_room_writers",
        help: "Files open for writing.",
        unit: None,
        counter: false,
        value: |r| u64::from(r.counters.writers),
    },
    RoomMetric {
        name: "kchat_room_ring_used",
        help: "Ring budget in use: payloads plus per-message overhead.",
        unit: Some(Unit::Bytes),
        counter: false,
        value: |r| r.counters.ring_used_bytes,
    },
    RoomMetric {
        name: "kchat_room_ring_size",
        help: "Ring budget of the room.",
        unit: Some(Unit::Bytes),
        counter: false,
        value: |r| u64::from(r.settings.ring_bytes),
    },
    RoomMetric {
        name: "kchat_room_ring_messages",
        help: "Messages retained in the ring.",
        unit: None,
        counter: false,
        value: |r| r.counters.ring_msgs,
    },
];

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: u64,
) -> Result<(), Error> {
    let gauge = ConstGauge::new(as_i64(value));
    gauge.encode(encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?)
}

impl Collector for KchatCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), Error> {
        let rooms = self.daemon.rooms().ok();
        let up = ConstGauge::new(i64::from(rooms.is_some()));
        up.encode(encoder.encode_descriptor(
            "kchat_up",
            "Whether kchatd can reach the kchat module (1) or not (0).",
            None,
            up.metric_type(),
        )?)?;
        let Some(rooms) = rooms else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "kchat_rooms",
            "Rooms the module has.",
            None,
            rooms.len() as u64,
        )?;
        // The label cap: the first rooms by name get their own series; the
        // rest get none, only a count. (Summing them under one label made a
        // series that rooms moved in and out of, which Prometheus reads as
        // counter resets.) The module itself caps rooms at 255.
        let cap = self.daemon.with_config(|c| c.metrics.max_room_labels);
        let (named, unlabelled) = rooms.split_at(rooms.len().min(cap));
        gauge(
            &mut encoder,
            "kchat_rooms_unlabelled",
            "Rooms beyond [metrics] max_room_labels, which get no per-room series.",
            None,
            unlabelled.len() as u64,
        )?;
        gauge(
            &mut encoder,
            "kchat_rooms_ring_size",
            "Ring budgets of all rooms together, against kchat_module_max_total_ring_bytes.",
            Some(Unit::Bytes),
            rooms.iter().map(|r| u64::from(r.settings.ring_bytes)).sum(),
        )?;
        if let Some(limits) = self.daemon.module_limits() {
            for (name, help, unit, value) in [
                (
                    "kchat_module_max_rooms",
                    "Rooms the module allows at once.",
                    None,
                    u64::from(limits.max_rooms),
                ),
                (
                    "kchat_module_max_readers_per_room",
                    "Read-mode opens the module allows per room.",
                    None,
                    u64::from(limits.max_readers),
                ),
                (
                    "kchat_module_max_total_ring",
                    "Ring budget the module allows for all rooms together.",
                    Some(Unit::Bytes),
                    limits.max_total_ring_bytes,
                ),
            ] {
                gauge(&mut encoder, name, help, unit, value)?;
            }
        }
        let mut info = encoder.encode_descriptor(
            "kchat_room_info",
            "Always 1; labels say how the room is set up.",
            None,
            MetricType::Gauge,
        )?;
        for room in named {
            let labels = [
                ("room", room.name.as_str()),
                ("policy", room.settings.policy.as_str()),
                ("origin", room.origin.as_str()),
            ];
            ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        }
        for metric in ROOM_METRICS {
            let kind = if metric.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut family =
                encoder.encode_descriptor(metric.name, metric.help, metric.unit.as_ref(), kind)?;
            for (room, value) in named
                .iter()
                .map(|room| (room.name.as_str(), (metric.value)(room)))
            {
                let labels = [("room", room)];
                let metric_encoder = family.encode_family(&labels)?;
                if metric.counter {
                    ConstCounter::new(value).encode(metric_encoder)?;
                } else {
                    ConstGauge::new(as_i64(value)).encode(metric_encoder)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct HealthCollector {
    daemon: Arc<Daemon>,
}

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), Error> {
        let health = &self.daemon.health;
        let counters = [
            (
                "kchat_daemon_reconciles",
                "Reconcile passes run.",
                &health.reconciles,
            ),
            (
                "kchat_daemon_reconcile_errors",
                "Reconcile passes with a failed step.",
                &health.reconcile_errors,
            ),
            (
                "kchat_daemon_reloads",
                "Config reloads (SIGHUP).",
                &health.reloads,
            ),
            (
                "kchat_daemon_reload_errors",
                "Config reloads refused (the old config kept running).",
                &health.reload_errors,
            ),
            (
                "kchat_daemon_requests",
                "Control socket requests answered.",
                &health.requests,
            ),
            (
                "kchat_daemon_denied_requests",
                "Control socket requests refused for lack of privilege.",
                &health.denied,
            ),
            (
                "kchat_daemon_refused_connections",
                "Control socket connections turned away: a caller over its share, or too many event streams.",
                &health.refused_connections,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let reload_ok = ConstGauge::new(i64::from(health.last_reload_ok.load(Ordering::Relaxed)));
        reload_ok.encode(encoder.encode_descriptor(
            "kchat_config_last_reload_successful",
            "Whether the last config reload applied (1) or was refused and the old config kept (0).",
            None,
            reload_ok.metric_type(),
        )?)?;
        let reloaded = ConstGauge::new(health.last_reload_success.load(Ordering::Relaxed) as f64);
        reloaded.encode(encoder.encode_descriptor(
            "kchat_config_last_reload_success_timestamp",
            "When the config was last loaded successfully (start or reload), in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            reloaded.metric_type(),
        )?)?;
        encode_process(&mut encoder, self.daemon.started)?;
        let started = self
            .daemon
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let start = ConstGauge::new(started);
        start.encode(encoder.encode_descriptor(
            "kchat_daemon_start_time",
            "When kchatd started, in seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            start.metric_type(),
        )?)?;
        let mut build = encoder.encode_descriptor(
            "kchat_daemon_build_info",
            "Always 1; the version label says which kchatd runs.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(build.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

/// The registry kchatd serves.
/// The standard `process_*` metrics (as every Prometheus client library
/// exports them), read from /proc with the `procfs` crate.
fn encode_process(
    encoder: &mut DescriptorEncoder<'_>,
    started: std::time::SystemTime,
) -> Result<(), Error> {
    let Ok(me) = procfs::process::Process::myself() else {
        return Ok(());
    };
    let Ok(stat) = me.stat() else {
        return Ok(());
    };
    let ticks = procfs::ticks_per_second().max(1) as f64;
    let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
    cpu.encode(encoder.encode_descriptor(
        "process_cpu",
        "Total user and system CPU time spent in seconds.",
        Some(&Unit::Seconds),
        cpu.metric_type(),
    )?)?;
    let mut gauges = vec![
        (
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(Unit::Bytes),
            stat.rss.saturating_mul(procfs::page_size()) as f64,
        ),
        (
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(Unit::Bytes),
            stat.vsize as f64,
        ),
        (
            "process_threads",
            "Number of OS threads in the process.",
            None,
            stat.num_threads as f64,
        ),
        (
            "process_start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(Unit::Seconds),
            started
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        ),
    ];
    if let Ok(open) = me.fd_count() {
        gauges.push((
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            open as f64,
        ));
    }
    if let Ok(limits) = me.limits()
        && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
    {
        gauges.push((
            "process_max_fds",
            "Maximum number of open file descriptors.",
            None,
            max as f64,
        ));
    }
    for (name, help, unit, value) in gauges {
        let gauge = ConstGauge::new(value);
        gauge.encode(encoder.encode_descriptor(
            name,
            help,
            unit.as_ref(),
            gauge.metric_type(),
        )?)?;
    }
    Ok(())
}

pub fn registry(daemon: Arc<Daemon>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(KchatCollector {
        daemon: daemon.clone(),
    }));
    registry.register_collector(Box::new(HealthCollector { daemon }));
    registry
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let body = tokio::task::block_in_place(|| {
        let mut body = String::new();
        encode(&mut body, &registry).map(|()| body)
    });
    match body {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response(),
    }
}

async fn healthz(State(daemon): State<Arc<Daemon>>) -> impl IntoResponse {
    // Up means kchatd runs; the module being away is kchat_up's business
    // (and an alert), not a reason to restart kchatd.
    let attached = daemon.attached();
    if attached {
        "ok: attached to the kchat module\n"
    } else {
        "ok: running, not attached to the kchat module\n"
    }
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    let registry = Arc::new(registry(daemon.clone()));
    Router::new()
        .route("/metrics", get(metrics).with_state(registry))
        .route("/healthz", get(healthz).with_state(daemon))
}
