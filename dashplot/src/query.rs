//! Runs every panel's queries over a time window against Prometheus's
//! HTTP API (`/api/v1/query_range`) and keeps the series.

use crate::dashboard::{self, Dashboard, Grid};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What the queries returned, ready to draw.
#[derive(Serialize, Deserialize)]
pub struct Recording {
    pub start: f64,
    pub end: f64,
    pub panels: Vec<PanelData>,
}

#[derive(Serialize, Deserialize)]
pub struct PanelData {
    pub kind: String,
    pub title: String,
    pub grid: Grid,
    pub unit: String,
    pub series: Vec<Series>,
}

#[derive(Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    /// (seconds since the window's start, value)
    pub points: Vec<(f64, f64)>,
}

pub struct Window {
    pub prometheus: String,
    pub start: f64,
    pub end: f64,
    pub step: f64,
    pub rate_interval: String,
}

fn query_range(window: &Window, expr: &str) -> Result<serde_json::Value> {
    let url = format!(
        "{}/api/v1/query_range",
        window.prometheus.trim_end_matches('/')
    );
    let body = ureq::get(&url)
        .query("query", expr)
        .query("start", window.start.to_string())
        .query("end", window.end.to_string())
        .query("step", window.step.to_string())
        .call()
        .with_context(|| format!("querying {url} for {expr}"))?
        .body_mut()
        .read_to_string()?;
    let reply: serde_json::Value = serde_json::from_str(&body)?;
    if reply["status"] != "success" {
        bail!("Prometheus refused {expr}: {}", reply["error"]);
    }
    Ok(reply["data"]["result"].clone())
}

pub fn record(dashboard: &Dashboard, window: &Window) -> Result<Recording> {
    let mut panels = Vec::new();
    for panel in &dashboard.panels {
        let mut series = Vec::new();
        for target in &panel.targets {
            let expr = dashboard::substitute(&target.expr, &window.rate_interval);
            let result = query_range(window, &expr)?;
            for item in result.as_array().into_iter().flatten() {
                let empty = serde_json::Map::new();
                let labels = item["metric"].as_object().unwrap_or(&empty);
                let points = item["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|pair| {
                        let t = pair.get(0)?.as_f64()?;
                        let v: f64 = pair.get(1)?.as_str()?.parse().ok()?;
                        v.is_finite().then_some((t - window.start, v))
                    })
                    .collect();
                series.push(Series {
                    name: dashboard::legend(&target.legend, labels),
                    points,
                });
            }
        }
        panels.push(PanelData {
            kind: panel.kind.clone(),
            title: panel.title.clone(),
            grid: panel.grid,
            unit: panel
                .field_config
                .defaults
                .unit
                .clone()
                .unwrap_or_else(|| "none".into()),
            series,
        });
    }
    Ok(Recording {
        start: window.start,
        end: window.end,
        panels,
    })
}
