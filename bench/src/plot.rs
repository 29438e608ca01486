//! PNG plots of a report, drawn on the host: delivered messages per
//! second against readers (one panel per message size, a mix's after the
//! single sizes; the median of the repetitions, with a bar from their min
//! to their max), and the paced latency distributions. Each system has
//! its own colour and marker; the legend sits beside the panels, never
//! over data. Text uses DejaVu Sans from fonts-dejavu-core.

use crate::{
    message::Sizes,
    report::{human, Report},
};
use anyhow::{anyhow, Context, Result};
use plotters::{
    coord::{CoordTranslate, Shift},
    prelude::*,
};
use std::path::Path;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const LEGEND_WIDTH: u32 = 170;

fn load_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    // Plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can use"))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Marker {
    Dot,
    Ring,
    Triangle,
    Square,
    HollowSquare,
    Cross,
}

/// The colour and marker of each system (tab10 colours, all distinct).
fn look(system: &str) -> (RGBColor, Marker) {
    match system {
        "kchat" => (RGBColor(0x1f, 0x77, 0xb4), Marker::Dot),
        "kchat-block" => (RGBColor(0x17, 0xbe, 0xcf), Marker::Ring),
        "kchat-epoll" => (RGBColor(0x2c, 0xa0, 0x2c), Marker::Triangle),
        "kchat-uring" => (RGBColor(0x94, 0x67, 0xbd), Marker::Square),
        "kchat-mmap" => (RGBColor(0x8c, 0x56, 0x4b), Marker::HollowSquare),
        "pipe-tee" => (RGBColor(0x7f, 0x7f, 0x7f), Marker::Cross),
        "redis" => (RGBColor(0xd6, 0x27, 0x28), Marker::Triangle),
        "nats" => (RGBColor(0xff, 0x7f, 0x0e), Marker::Ring),
        "iceoryx2" => (RGBColor(0xe3, 0x77, 0xc2), Marker::Dot),
        _ => (BLACK, Marker::Cross),
    }
}

/// A marker of `kind` centred on `at`.
fn marker<'a, DB, C>(kind: Marker, at: C, colour: RGBColor) -> DynElement<'a, DB, C>
where
    DB: DrawingBackend + 'a,
    C: Clone + 'a,
{
    let filled = colour.filled();
    let line = colour.stroke_width(2);
    match kind {
        Marker::Dot => (EmptyElement::at(at) + Circle::new((0, 0), 4, filled)).into_dyn(),
        Marker::Ring => (EmptyElement::at(at) + Circle::new((0, 0), 4, line)).into_dyn(),
        Marker::Triangle => {
            (EmptyElement::at(at) + TriangleMarker::new((0, 0), 5, filled)).into_dyn()
        }
        Marker::Square => {
            (EmptyElement::at(at) + Rectangle::new([(-4, -4), (4, 4)], filled)).into_dyn()
        }
        Marker::HollowSquare => {
            (EmptyElement::at(at) + Rectangle::new([(-4, -4), (4, 4)], line)).into_dyn()
        }
        Marker::Cross => (EmptyElement::at(at) + Cross::new((0, 0), 4, line)).into_dyn(),
    }
}

/// Markers of `kind` at `points` of a chart.
fn draw_markers<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    kind: Marker,
    points: &[(f64, f64)],
    colour: RGBColor,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let filled = colour.filled();
    let line = colour.stroke_width(2);
    let at = points.iter().copied();
    match kind {
        Marker::Dot => chart.draw_series(at.map(|p| Circle::new(p, 4, filled)))?,
        Marker::Ring => chart.draw_series(at.map(|p| Circle::new(p, 4, line)))?,
        Marker::Triangle => chart.draw_series(at.map(|p| TriangleMarker::new(p, 5, filled)))?,
        Marker::Square => chart.draw_series(
            at.map(|p| EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], filled)),
        )?,
        Marker::HollowSquare => chart.draw_series(
            at.map(|p| EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], line)),
        )?,
        Marker::Cross => chart.draw_series(at.map(|p| Cross::new(p, 4, line)))?,
    };
    Ok(())
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

/// The legend, in its own strip beside the panels.
fn legend(area: &DrawingArea<BitMapBackend<'_>, Shift>, systems: &[&str]) -> Result<()> {
    for (n, system) in systems.iter().enumerate() {
        let y = 50 + 24 * n as i32;
        let (colour, kind) = look(system);
        area.draw(&PathElement::new(
            [(10, y), (40, y)],
            colour.stroke_width(2),
        ))?;
        area.draw(&marker(kind, (25, y), colour))?;
        area.draw(&Text::new(
            system.to_string(),
            (48, y - 7),
            ("sans-serif", 14).into_font(),
        ))?;
    }
    Ok(())
}

/// `throughput.png`: one panel per size, one writer.
fn throughput(report: &Report, path: &Path) -> Result<()> {
    let mut sizes: Vec<Sizes> = report.throughput.iter().map(|r| r.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let panels_width = 480 * sizes.len().max(1) as u32;
    let root = BitMapBackend::new(path, (panels_width + LEGEND_WIDTH, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(panels_width);
    let panels = left.split_evenly((1, sizes.len().max(1)));
    let one_writer = || report.throughput.iter().filter(|r| r.writers == 1);
    for (panel, &size) in panels.iter().zip(&sizes) {
        let rows: Vec<_> = one_writer().filter(|r| r.size == size).collect();
        let top = rows
            .iter()
            .map(|r| r.delivered_per_sec.max)
            .fold(10.0, f64::max)
            * 2.0;
        let most = rows.iter().map(|r| r.readers).max().unwrap_or(1) as f64 * 1.5;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{size} messages, 1 writer"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d((0.8f64..most).log_scale(), (100f64..top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("readers")
            .y_desc("delivered msg/s (in the window)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| human(*y))
            .light_line_style(WHITE)
            .label_style(("sans-serif", 12))
            .draw()?;
        for system in ordered_systems(rows.iter().map(|r| r.system.as_str())) {
            let (colour, kind) = look(system);
            let mine: Vec<_> = rows.iter().filter(|r| r.system == system).collect();
            let floor = |v: f64| v.max(100.0);
            let points: Vec<(f64, f64)> = mine
                .iter()
                .map(|r| (r.readers as f64, floor(r.delivered_per_sec.median)))
                .collect();
            chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?;
            chart.draw_series(mine.iter().map(|r| {
                let d = r.delivered_per_sec;
                ErrorBar::new_vertical(
                    r.readers as f64,
                    floor(d.min),
                    floor(d.median),
                    floor(d.max),
                    colour.stroke_width(1),
                    8,
                )
            }))?;
            draw_markers(&mut chart, kind, &points, colour)?;
        }
    }
    legend(
        &right,
        &ordered_systems(one_writer().map(|r| r.system.as_str())),
    )?;
    root.present()?;
    Ok(())
}

/// `latency.png`: one panel per reader count, the share of messages
/// delivered within each latency.
fn latency(report: &Report, path: &Path) -> Result<()> {
    let mut counts: Vec<usize> = report.latency.iter().map(|r| r.readers).collect();
    counts.sort_unstable();
    counts.dedup();
    let panels_width = 560 * counts.len().max(1) as u32;
    let root = BitMapBackend::new(path, (panels_width + LEGEND_WIDTH, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(panels_width);
    let panels = left.split_evenly((1, counts.len().max(1)));
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
            let (colour, kind) = look(&row.system);
            let points: Vec<(f64, f64)> = row
                .cdf
                .iter()
                .map(|&(quantile, ns)| ((ns as f64 / 1e3).max(1.0), quantile * 100.0))
                .collect();
            chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?;
            // A marker every tenth percentile, so lines of one colour
            // family stay apart in print.
            let some: Vec<_> = points.into_iter().step_by(10).collect();
            draw_markers(&mut chart, kind, &some, colour)?;
        }
    }
    legend(
        &right,
        &ordered_systems(report.latency.iter().map(|r| r.system.as_str())),
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_system_has_its_own_colour_and_marker() {
        let systems = [
            "kchat",
            "kchat-block",
            "kchat-epoll",
            "kchat-uring",
            "kchat-mmap",
            "pipe-tee",
            "redis",
            "nats",
            "iceoryx2",
        ];
        for (n, a) in systems.iter().enumerate() {
            assert_ne!(look(a).0, BLACK, "{a} has no colour of its own");
            for b in &systems[n + 1..] {
                assert_ne!(look(a).0, look(b).0, "{a} and {b} share a colour");
            }
        }
    }
}
