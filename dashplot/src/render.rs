//! Draws a recording the way Grafana lays the dashboard out: the
//! 24-column grid, stat panels as their latest value, time series as
//! lines with a legend.

use crate::query::{PanelData, Recording, Series};
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const WIDTH: u32 = 1600;
/// Pixels per grid row (Grafana uses 30).
const ROW: u32 = 30;
const BACKGROUND: RGBColor = RGBColor(0x18, 0x1b, 0x1f);
const PANEL: RGBColor = RGBColor(0x22, 0x25, 0x2b);
const TEXT: RGBColor = RGBColor(0xd8, 0xd9, 0xda);
const GRID: RGBColor = RGBColor(0x3a, 0x3d, 0x44);
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x73, 0xbf, 0x69),
    RGBColor(0xf2, 0xcc, 0x0c),
    RGBColor(0x5f, 0x9c, 0xf5),
    RGBColor(0xff, 0x78, 0x0a),
    RGBColor(0xf2, 0x49, 0x5c),
    RGBColor(0xb8, 0x77, 0xd9),
    RGBColor(0x1f, 0xc7, 0xc1),
    RGBColor(0xff, 0xb3, 0x57),
];

fn load_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    // Plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can use"))
}

/// A value in the panel's unit, short.
fn format(value: f64, unit: &str) -> String {
    let scaled = |v: f64| match v.abs() {
        a if a >= 1e9 => format!("{:.1}G", v / 1e9),
        a if a >= 1e6 => format!("{:.1}M", v / 1e6),
        a if a >= 1e3 => format!("{:.1}k", v / 1e3),
        a if a >= 10.0 || v.fract() == 0.0 => format!("{v:.0}"),
        _ => format!("{v:.2}"),
    };
    match unit {
        "percentunit" => format!("{:.0}%", value * 100.0),
        "Bps" => format!("{}B/s", scaled(value)),
        "msg/s" => format!("{}/s", scaled(value)),
        "ops" => format!("{} ops/s", scaled(value)),
        _ => scaled(value),
    }
}

fn stat(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    panel: &PanelData,
) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        panel.title.clone(),
        (10, 8),
        ("sans-serif", 16).into_font().color(&TEXT),
    ))?;
    let latest = panel
        .series
        .first()
        .and_then(|s| s.points.last())
        .map_or_else(|| "no data".to_owned(), |&(_, v)| format(v, &panel.unit));
    let style = ("sans-serif", 40).into_font().color(&PALETTE[0]);
    let (tw, th) = area.estimate_text_size(&latest, &style)?;
    area.draw(&Text::new(
        latest,
        ((w as i32 - tw as i32) / 2, (h as i32 - th as i32) / 2 + 10),
        style,
    ))?;
    Ok(())
}

fn timeseries(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    panel: &PanelData,
    seconds: f64,
) -> Result<()> {
    let top = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let unit = panel.unit.clone();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16).into_font().color(&TEXT))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..top)?;
    chart
        .configure_mesh()
        .axis_style(GRID)
        .bold_line_style(GRID)
        .light_line_style(PANEL)
        .label_style(("sans-serif", 12).into_font().color(&TEXT))
        .x_label_formatter(&|x| format!("{x:.0}s"))
        .y_label_formatter(&|y| format(*y, &unit))
        .draw()?;
    // Series that stayed at zero (twelve "drops by reason" of which one
    // moved) would bury the legend; Grafana's "hide zero" does the same.
    // Colours follow the series' place in the panel, hidden or not.
    let moves = |s: &&Series| s.points.iter().any(|p| p.1 != 0.0);
    let any_moves = panel.series.iter().any(|s| moves(&s));
    for (n, series) in panel.series.iter().enumerate() {
        if any_moves && !moves(&series) {
            continue;
        }
        let colour = PALETTE[n % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                series.points.clone(),
                colour.stroke_width(2),
            ))?
            .label(series.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2)));
    }
    if !panel.series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(PANEL.mix(0.85))
            .border_style(GRID)
            .label_font(("sans-serif", 12).into_font().color(&TEXT))
            .draw()?;
    }
    Ok(())
}

pub fn draw(recording: &Recording, path: &Path) -> Result<()> {
    load_font()?;
    let rows = recording
        .panels
        .iter()
        .map(|p| p.grid.y + p.grid.h)
        .max()
        .unwrap_or(1);
    let height = rows * ROW;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&BACKGROUND)?;
    let column = f64::from(WIDTH) / 24.0;
    let seconds = (recording.end - recording.start).max(1.0);
    for panel in &recording.panels {
        let g = panel.grid;
        let x0 = (f64::from(g.x) * column) as i32 + 4;
        let x1 = (f64::from(g.x + g.w) * column) as i32 - 4;
        let y0 = (g.y * ROW) as i32 + 4;
        let y1 = ((g.y + g.h) * ROW) as i32 - 4;
        let area = root
            .clone()
            .shrink((x0, y0), ((x1 - x0) as u32, (y1 - y0) as u32));
        area.fill(&PANEL)?;
        match panel.kind.as_str() {
            "stat" => stat(&area, panel)?,
            _ => timeseries(&area, panel, seconds)?,
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
