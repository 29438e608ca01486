//! PNG plots of a report, drawn on the host: delivered messages per
//! second against readers (one panel per message size), and the paced
//! latency distributions. Text uses DejaVu Sans from fonts-dejavu-core.

use crate::report::{human, Report};
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn load_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    // Plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can use"))
}

fn colour(system: &str) -> RGBColor {
    match system {
        "kchat" => RGBColor(0x1f, 0x77, 0xb4),
        "kchat-block" => RGBColor(0x17, 0xbe, 0xcf),
        "kchat-epoll" => RGBColor(0x2c, 0xa0, 0x2c),
        "kchat-uring" => RGBColor(0x94, 0x67, 0xbd),
        "pipe-tee" => RGBColor(0x7f, 0x7f, 0x7f),
        "redis" => RGBColor(0xd6, 0x27, 0x28),
        "nats" => RGBColor(0xff, 0x7f, 0x0e),
        _ => BLACK,
    }
}

fn ordered_systems<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut systems: Vec<&str> = Vec::new();
    for name in names {
        if !systems.contains(&name) {
            systems.push(name);
        }
    }
    systems
}

/// The legend box both plots use.
fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

/// `throughput.png`: one panel per size, one writer.
fn throughput(report: &Report, path: &Path) -> Result<()> {
    let mut sizes: Vec<usize> = report.throughput.iter().map(|r| r.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let root = BitMapBackend::new(path, (480 * sizes.len().max(1) as u32, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, sizes.len().max(1)));
    for (panel, &size) in panels.iter().zip(&sizes) {
        let rows: Vec<_> = report
            .throughput
            .iter()
            .filter(|r| r.size == size && r.writers == 1)
            .collect();
        let top = rows
            .iter()
            .map(|r| r.delivered_per_sec)
            .fold(10.0, f64::max)
            * 2.0;
        let most = rows.iter().map(|r| r.readers).max().unwrap_or(1) as f64 * 1.5;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{size} B messages, 1 writer"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d((0.8f64..most).log_scale(), (100f64..top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("readers")
            .y_desc("delivered msg/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| human(*y))
            .light_line_style(WHITE)
            .label_style(("sans-serif", 12))
            .draw()?;
        for system in ordered_systems(rows.iter().map(|r| r.system.as_str())) {
            let colour = colour(system);
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.system == system)
                .map(|r| (r.readers as f64, r.delivered_per_sec.max(100.0)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(system)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, colour.filled())),
            )?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    }
    root.present()?;
    Ok(())
}

/// `latency.png`: one panel per reader count, the share of messages
/// delivered within each latency.
fn latency(report: &Report, path: &Path) -> Result<()> {
    let mut counts: Vec<usize> = report.latency.iter().map(|r| r.readers).collect();
    counts.sort_unstable();
    counts.dedup();
    let root =
        BitMapBackend::new(path, (560 * counts.len().max(1) as u32, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, counts.len().max(1)));
    for (panel, &readers) in panels.iter().zip(&counts) {
        let rows: Vec<_> = report
            .latency
            .iter()
            .filter(|r| r.readers == readers)
            .collect();
        let slowest = rows.iter().map(|r| r.max_ns).max().unwrap_or(1_000_000) as f64 / 1e3 * 2.0;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "paced latency, {readers} reader{}",
                    if readers == 1 { "" } else { "s" }
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d((1f64..slowest.max(10.0)).log_scale(), 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("write → read latency (µs)")
            .y_desc("% of messages within")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE)
            .label_style(("sans-serif", 12))
            .draw()?;
        for row in rows {
            let colour = colour(&row.system);
            let points = row
                .cdf
                .iter()
                .map(|&(quantile, ns)| ((ns as f64 / 1e3).max(1.0), quantile * 100.0));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(row.system.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    root.present()?;
    Ok(())
}

/// Writes both plots into `dir`; returns their paths.
pub fn draw(report: &Report, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    load_font()?;
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    if !report.throughput.is_empty() {
        let path = dir.join("throughput.png");
        throughput(report, &path).with_context(|| format!("drawing {}", path.display()))?;
        written.push(path);
    }
    if !report.latency.is_empty() {
        let path = dir.join("latency.png");
        latency(report, &path).with_context(|| format!("drawing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
