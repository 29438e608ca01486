//! kchat-bridge: rooms across machines over NATS. See docs/federation.md.

mod config;
mod connect;
mod core;
mod local;
mod lock;
mod metrics;
mod room;
mod state;
mod status;
mod stream;
mod trust;
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
    /// Print the kchat-bridge(8) man page (roff) and exit.
    #[arg(long)]
    man: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Show each bridged room's state, from the running bridge's /metrics
    /// (exit 3 if it does not answer).
    Status {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `kchat-bridge status`: exit 3 when the bridge is not there to ask, as
/// kchatctl does for an unavailable daemon.
fn status(config: &Config, json: bool) -> Result<std::process::ExitCode> {
    let url = format!("http://{}/metrics", config.metrics.listen);
    let text = match ureq::get(&url)
        .config()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .call()
        .and_then(|mut response| response.body_mut().read_to_string())
    {
        Ok(text) => text,
        Err(err) => {
            eprintln!("kchat-bridge status: the bridge does not answer at {url} ({err}): is kchat-bridge.service running?");
            return Ok(std::process::ExitCode::from(3));
        }
    };
    let status = status::from_metrics(config, &text);
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        status::print(&status);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn main() -> Result<std::process::ExitCode> {
    let args = Args::parse();
    if args.man {
        let mut page = Vec::new();
        clap_mangen::Man::new(<Args as clap::CommandFactory>::command())
            .section("8")
            .render(&mut page)
            .context("cannot render the man page")?;
        std::io::Write::write_all(&mut std::io::stdout(), &page)?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let config = Config::load(&args.config)?;
    if args.check {
        println!(
            "{}: ok, {} room(s)",
            args.config.display(),
            config.rooms.len()
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(Command::Status { json }) = args.command {
        return status(&config, json);
    }
    kchat_logging::init_with_fields(&[("NODE", &config.node)]);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(config))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run(config: Config) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let listener = metrics::bind(config.metrics.listen).await?;
    let mut options = connect::options(&config.nats)
        .await?
        .name(format!("kchat-bridge {}", config.node))
        .retry_on_initial_connect();
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
    let registry = metrics::registry(&metrics);
    tokio::spawn(async move {
        if let Err(err) = metrics::serve(listener, registry).await {
            tracing::error!(error = %format!("{err:#}"), "the metrics server stopped");
        }
    });
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            config.state_dir.display()
        )
    })?;
    let mut rooms = tokio::task::JoinSet::new();
    for (room, bridge) in &config.rooms {
        let bridged = room::Bridged {
            room: room.clone(),
            subject: config.subject(room, bridge),
            node: config.node.clone(),
            direction: bridge.direction,
            state_dir: config.state_dir.clone(),
            max_nodes: config.max_nodes,
            limits: config.jetstream,
        };
        rooms.spawn(room::supervise(bridged, client.clone(), metrics.clone()));
    }
    // Ready once set up, whether or not NATS answers yet: a server away at
    // boot is a state to report (kchat_bridge_connected), not a failed start.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(node = %config.node, rooms = config.rooms.len(), "kchat-bridge ready");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            done = rooms.join_next() => match done {
                // Rooms retry for ever; only a panic ends one.
                Some(Err(err)) => tracing::error!(error = %err, "a room task panicked"),
                Some(Ok(())) => {}
                None => anyhow::bail!("no room is bridged any more"),
            },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    Ok(())
}
