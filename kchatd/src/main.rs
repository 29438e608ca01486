//! kchatd: see the library documentation and `kchatd --help`.

use anyhow::{Context, Result};
use clap::Parser;
use kchatd::{
    api,
    config::Config,
    daemon::{Daemon, ReloadError},
    metrics,
    notify::Notifier,
    state::{State, StateLock},
};
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio::signal::unix::{signal, SignalKind};

/// The kchat daemon: keeps the rooms declared in its config (and changed
/// with kchatctl) in the kchat module, serves kchatctl on a unix socket and
/// Prometheus metrics over HTTP. Chat never passes through it.
///
/// Signals: SIGHUP rereads the config (a bad file keeps the old one);
/// SIGTERM and SIGINT stop kchatd and leave the rooms in the kernel.
///
/// The config's keys are in kchatd.toml(5); kchatctl(1) is the admin CLI.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The config file.
    #[arg(long, short, default_value = kchatd::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Check the config file and exit: 0 if valid, 1 with the error if not.
    #[arg(long)]
    check: bool,
    /// Seconds between reconcile passes (how soon a reloaded module gets its
    /// rooms back).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print the kchatd(8) man page (roff) and exit.
    #[arg(long, hide = true)]
    man: bool,
}

/// How often to tell systemd kchatd is alive: half of `WatchdogSec`, at
/// least 50 ms; `None` without a watchdog.
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec)
        .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(50)))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.man {
        let mut page = Vec::new();
        clap_mangen::Man::new(<Args as clap::CommandFactory>::command())
            .section("8")
            .render(&mut page)
            .context("cannot render the man page")?;
        std::io::Write::write_all(&mut std::io::stdout(), &page)?;
        return Ok(());
    }
    let config = Config::load(&args.config)?;
    if args.check {
        println!(
            "{}: ok, {} room(s)",
            args.config.display(),
            config.rooms.len()
        );
        return Ok(());
    }
    kchat_logging::init();
    let interval = Duration::try_from_secs_f64(args.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--interval must be a positive number of seconds")?;
    let _lock = StateLock::take(&config.state_dir)?;
    let state = State::load(&State::path(&config.state_dir))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(args.config, config, state, interval))
}

async fn run(config_path: PathBuf, config: Config, state: State, interval: Duration) -> Result<()> {
    // Before READY: a signal that arrives once systemd (or a test) thinks
    // kchatd is up must find its handler, not the default action.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let listener = api::bind(&config.socket).await?;
    let _socket = api::SocketGuard(config.socket.clone());
    let daemon = Arc::new(Daemon::new(config_path, config.clone(), state));
    if config.metrics.enabled {
        let http = tokio::net::TcpListener::bind(config.metrics.listen)
            .await
            .with_context(|| format!("cannot listen for metrics on {}", config.metrics.listen))?;
        let router = metrics::router(daemon.clone());
        tokio::spawn(async move {
            if let Err(err) = axum::serve(http, router).await {
                tracing::error!(%err, "the metrics server stopped");
            }
        });
    }
    tokio::task::block_in_place(|| daemon.reconcile());
    tokio::spawn(api::serve(listener, daemon.clone()));
    tracing::info!(
        socket = %config.socket.display(),
        metrics = %config.metrics.listen,
        "kchatd ready"
    );
    let notifier = Notifier::start().context("cannot start the sd_notify thread")?;
    let notify = |states: &[sd_notify::NotifyState<'_>]| notifier.send(states);
    let mut shown = daemon.summary();
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&shown),
    ]);

    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Pinged from this loop, so a reconcile that hangs stops the pings.
    // Its own timer: a tiny WatchdogSec must not make kchatd reconcile
    // (or tokio's interval, at zero, panic).
    let mut watchdog = watchdog_interval().map(|period| {
        let mut dog = tokio::time::interval(period);
        dog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        dog
    });
    loop {
        tokio::select! {
            _ = async { watchdog.as_mut()?.tick().await; Some(()) }, if watchdog.is_some() => {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            _ = tick.tick() => {
                tokio::task::block_in_place(|| daemon.reconcile());
                let summary = tokio::task::block_in_place(|| daemon.summary());
                if summary != shown {
                    notify(&[sd_notify::NotifyState::Status(&summary)]);
                    shown = summary;
                }
            }
            _ = hangup.recv() => {
                notify(&[
                    sd_notify::NotifyState::Reloading,
                    sd_notify::NotifyState::monotonic_usec_now()?,
                ]);
                match tokio::task::block_in_place(|| daemon.reload()) {
                    Ok(()) => tracing::info!("config reloaded"),
                    Err(err @ ReloadError::Config(_)) => tracing::error!(%err, "config reload refused; the old config stays"),
                    Err(err @ ReloadError::Apply(_)) => tracing::error!(%err, "config reloaded, but not applied in full"),
                }
                shown = tokio::task::block_in_place(|| daemon.summary());
                notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status(&shown),
                ]);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("kchatd stopping; rooms stay in the kernel");
    // Told, unless the manager has stopped reading: then exit all the same.
    notifier.flush(Duration::from_secs(1));
    Ok(())
}
