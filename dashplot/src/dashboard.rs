//! The parts of a Grafana dashboard JSON this tool uses: each panel's kind,
//! title, place on the 24-column grid, unit and queries.

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct Dashboard {
    pub panels: Vec<Panel>,
}

#[derive(Deserialize)]
pub struct Panel {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    #[serde(rename = "gridPos")]
    pub grid: Grid,
    #[serde(rename = "fieldConfig", default)]
    pub field_config: FieldConfig,
    #[serde(default)]
    pub targets: Vec<Target>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct Grid {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

#[derive(Default, Deserialize)]
pub struct FieldConfig {
    #[serde(default)]
    pub defaults: Defaults,
}

#[derive(Default, Deserialize)]
pub struct Defaults {
    #[serde(default)]
    pub unit: Option<String>,
}

#[derive(Deserialize)]
pub struct Target {
    pub expr: String,
    #[serde(rename = "legendFormat", default)]
    pub legend: String,
}

/// The expression with the dashboard's variables set as a viewer with
/// every room and job selected would have them.
pub fn substitute(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$room", ".*")
        .replace("$job", ".*")
}

/// A series' name from the target's legend format (`{{room}}`) and its
/// labels.
pub fn legend(format: &str, labels: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut name = format.to_owned();
    for (key, value) in labels {
        name = name.replace(&format!("{{{{{key}}}}}"), value.as_str().unwrap_or(""));
    }
    if name.is_empty() {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_and_legends() {
        assert_eq!(
            substitute(
                "rate(x{room=~\"$room\",job=~\"$job\"}[$__rate_interval])",
                "4s"
            ),
            "rate(x{room=~\".*\",job=~\".*\"}[4s])"
        );
        let labels = serde_json::json!({"room": "lobby", "job": "kchatd"});
        let labels = labels.as_object().expect("an object");
        assert_eq!(legend("{{room}} readers", labels), "lobby readers");
        assert_eq!(legend("", labels), "job=kchatd,room=lobby");
    }

    #[test]
    fn the_shipped_dashboard_parses() {
        let text = include_str!("../../dashboards/kchat.json");
        let dashboard: Dashboard = serde_json::from_str(text).expect("kchat.json parses");
        assert!(dashboard.panels.iter().all(|p| !p.targets.is_empty()));
    }
}
