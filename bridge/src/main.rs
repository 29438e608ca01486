//! kchat-bridge: rooms across machines over NATS. See docs/federation.md.

mod config;
mod metrics;
mod room;
mod wire;

use anyhow::{Context, Result};
use clap::Parser;
use config::Config;
use std::{path::PathBuf, sync::Arc};

/// Relays kchat rooms between machines over NATS: what is written into a
/// bridged room here is published, what other nodes publish is written in
/// as relayed (readers see where it came from), and nothing loops.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[arg(long, short, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Check the config file and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = Config::load(&args.config)?;
    if args.check {
        println!(
            "{}: ok, {} room(s)",
            args.config.display(),
            config.rooms.len()
        );
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(config))
}

async fn run(config: Config) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("kchat-bridge {}", config.node))
        .retry_on_initial_connect();
    if let Some(token) = &config.nats.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &config.nats.credentials {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("cannot read NATS credentials {}", path.display()))?;
    }
    let events = metrics.clone();
    options = options.event_callback(move |event| {
        let events = events.clone();
        async move {
            match event {
                async_nats::Event::Connected => {
                    events.connected.set(1);
                    events.reconnects.inc();
                    tracing::info!("connected to NATS");
                }
                async_nats::Event::Disconnected => {
                    events.connected.set(0);
                    tracing::warn!("disconnected from NATS; reconnecting");
                }
                other => tracing::info!(event = %other, "NATS"),
            }
        }
    });
    let client = async_nats::connect_with_options(config.nats.servers.join(","), options)
        .await
        .context("cannot connect to NATS")?;
    metrics.connected.set(1);
    let registry = metrics::registry(&metrics);
    tokio::spawn(metrics::serve(config.metrics.listen, registry));
    let mut rooms = tokio::task::JoinSet::new();
    for (room, bridge) in &config.rooms {
        let bridged = room::Bridged {
            room: room.clone(),
            subject: config.subject(room, bridge),
            node: config.node.clone(),
            direction: bridge.direction,
        };
        let (client, metrics) = (client.clone(), metrics.clone());
        let name = room.clone();
        rooms.spawn(async move { (name, room::run(bridged, client, metrics).await) });
    }
    client.flush().await.context("cannot reach NATS")?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(node = %config.node, rooms = config.rooms.len(), "kchat-bridge ready");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            done = rooms.join_next() => match done {
                // One room failing leaves the others served.
                Some(Ok((room, Err(err)))) => tracing::error!(%room, error = %err, "room no longer bridged"),
                Some(Ok((room, Ok(())))) => tracing::info!(%room, "room done"),
                Some(Err(err)) => tracing::error!(error = %err, "a room task panicked"),
                None => anyhow::bail!("no room is bridged any more"),
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    Ok(())
}
