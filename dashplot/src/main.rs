//! `kchat-dashplot`: the Grafana dashboard as a picture, without Grafana.
//! `query` (in the VM, beside kchatd and Prometheus) evaluates every panel's
//! PromQL over a time window and saves the series; `render` (on the host)
//! lays them out as the dashboard does and writes a PNG.

mod dashboard;
mod query;
mod render;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Draw the kchat Grafana dashboard from a real Prometheus")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate the dashboard's queries over [start, end] and save them.
    Query {
        #[arg(long)]
        dashboard: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        prometheus: String,
        /// Unix seconds.
        #[arg(long)]
        start: f64,
        /// Unix seconds.
        #[arg(long)]
        end: f64,
        #[arg(long, default_value_t = 2.0)]
        step: f64,
        /// What `$__rate_interval` becomes (Grafana: at least four scrape
        /// intervals).
        #[arg(long, default_value = "8s")]
        rate_interval: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Draw a saved recording as a PNG.
    Render {
        recording: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Query {
            dashboard,
            prometheus,
            start,
            end,
            step,
            rate_interval,
            out,
        } => {
            let text = std::fs::read_to_string(&dashboard)
                .with_context(|| format!("reading {}", dashboard.display()))?;
            let dashboard: dashboard::Dashboard = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a Grafana dashboard", dashboard.display()))?;
            let window = query::Window {
                prometheus,
                start,
                end,
                step,
                rate_interval,
            };
            let recording = query::record(&dashboard, &window)?;
            let empty: Vec<_> = recording
                .panels
                .iter()
                .filter(|p| p.series.is_empty())
                .map(|p| p.title.as_str())
                .collect();
            std::fs::write(&out, serde_json::to_vec(&recording)?)
                .with_context(|| format!("writing {}", out.display()))?;
            anyhow::ensure!(
                empty.is_empty(),
                "panels without data: {}",
                empty.join(", ")
            );
            Ok(())
        }
        Command::Render { recording, out } => {
            let text = std::fs::read(&recording)
                .with_context(|| format!("reading {}", recording.display()))?;
            render::draw(&serde_json::from_slice(&text)?, &out)?;
            eprintln!("dashplot: wrote {}", out.display());
            Ok(())
        }
    }
}
