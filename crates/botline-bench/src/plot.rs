//! The run over time as an SVG a person can look at: acknowledgements and failed requests per
//! second; acknowledgement latency p50 / p99 / max per second on a log axis; and, when a managed
//! server was sampled, its resident memory. Kills of a managed server are dashed red lines.
//!
//! Drawn with `plotters`' SVG backend without its `ttf` feature: the SVG carries its text as
//! `<text>` elements for the viewer to set in its own sans-serif, and plotters only estimates
//! the text's size for the layout. So no font file is bundled and no system library
//! (fontconfig, freetype) is needed to build or to draw; only a bitmap backend would need them.

use crate::config::BenchError;
use crate::report::Report;
use crate::timeline::SecondStats;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1200;
const PANEL_HEIGHT: u32 = 300;
const TITLE_HEIGHT: u32 = 40;

const ACKED: RGBColor = RGBColor(31, 119, 180);
const FAILED: RGBColor = RGBColor(214, 39, 40);
const P50: RGBColor = RGBColor(44, 160, 44);
const P99: RGBColor = RGBColor(255, 127, 14);
const MAX: RGBColor = RGBColor(148, 103, 189);
const RSS: RGBColor = RGBColor(23, 190, 207);
const KILL: RGBColor = RGBColor(214, 39, 40);

/// Draws `report`'s timeline (see the module's documentation) and writes it to `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), BenchError> {
    let svg = render_svg(report)?;
    std::fs::write(path, svg).map_err(|source| BenchError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The SVG text of `report`'s timeline.
pub fn render_svg(report: &Report) -> Result<String, BenchError> {
    let with_rss = report.rss_series().next().is_some();
    let panels = if with_rss { 3 } else { 2 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, TITLE_HEIGHT + panels * PANEL_HEIGHT))
            .into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let root = root
            .titled(&title(report), ("sans-serif", 20))
            .map_err(plot_error)?;
        let areas = root.split_evenly((panels as usize, 1));
        let series = Series::of(report);
        let mut areas = areas.iter();
        if let Some(area) = areas.next() {
            throughput_panel(area, &series)?;
        }
        if let Some(area) = areas.next() {
            latency_panel(area, &series)?;
        }
        if let Some(area) = areas.next() {
            rss_panel(area, &series)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn plot_error(error: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(error.to_string())
}

/// `open loop at 300/s, 40 connections, 1000 chats: 18000 acknowledged in 60.0 s, p99 2.1 ms,
/// 5 kills`.
fn title(report: &Report) -> String {
    let mode = match report.target_rate {
        Some(rate) => format!("open loop at {rate}/s"),
        None => "closed loop".to_owned(),
    };
    let mut title = format!(
        "botline-bench: {mode}, {} connections, {} chats: {} acknowledged in {:.1} s, p99 {:.1} ms",
        report.connections,
        report.chats,
        report.acknowledged,
        report.duration_secs,
        report.ack_latency.p99_ms
    );
    if let Some(server) = &report.server
        && server.kills_planned > 0
    {
        title.push_str(&format!(", {} kills", server.kills));
    }
    title
}

/// The points to draw: x is the middle of each second.
struct Series {
    end: f64,
    acked: Vec<(f64, f64)>,
    failed: Vec<(f64, f64)>,
    p50: Vec<(f64, f64)>,
    p99: Vec<(f64, f64)>,
    max: Vec<(f64, f64)>,
    rss_mib: Vec<(f64, f64)>,
    kills: Vec<f64>,
}

impl Series {
    fn of(report: &Report) -> Self {
        let end = report
            .duration_secs
            .max(report.timeline.len() as f64)
            .max(1.0);
        let mut series = Self {
            end,
            acked: Vec::new(),
            failed: Vec::new(),
            p50: Vec::new(),
            p99: Vec::new(),
            max: Vec::new(),
            rss_mib: Vec::new(),
            kills: Vec::new(),
        };
        for second in &report.timeline {
            series.add(second, report.duration_secs);
        }
        series
    }

    fn add(&mut self, second: &SecondStats, duration_secs: f64) {
        let start = second.second as f64;
        // The last second ends with the run; a short one would draw a rate from too few events.
        let length = (duration_secs - start).clamp(0.0, 1.0);
        let whole = length <= 0.0 || length >= 1.0;
        let x = start + if whole { 0.5 } else { length / 2.0 };
        if whole || length >= 0.5 {
            let per_second = if whole { 1.0 } else { 1.0 / length };
            self.acked
                .push((x, second.acknowledged as f64 * per_second));
            self.failed
                .push((x, second.failed_requests() as f64 * per_second));
        }
        for (points, value) in [
            (&mut self.p50, second.ack_p50_ms),
            (&mut self.p99, second.ack_p99_ms),
            (&mut self.max, second.ack_max_ms),
        ] {
            if let Some(ms) = value {
                points.push((x, ms.max(LATENCY_FLOOR_MS)));
            }
        }
        if let Some(kib) = second.server_rss_kib {
            self.rss_mib.push((x, kib as f64 / 1024.0));
        }
        if second.kills > 0 {
            self.kills.push(x);
        }
    }
}

/// The bottom of the latency axis: 1 µs, the histograms' resolution.
const LATENCY_FLOOR_MS: f64 = 0.001;

/// An axis label: `300`, `4`, `2.5`, `0.125`.
fn number(value: f64) -> String {
    if value.abs() >= 10.0 || value.fract() == 0.0 {
        return format!("{value:.0}");
    }
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A label for 1, 2 and 5 times a power of ten, none for the other key points of a log axis.
fn decade_label(value: f64) -> String {
    if value <= 0.0 {
        return String::new();
    }
    let mantissa = value / 10f64.powf(value.log10().floor());
    if [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6)
    {
        number(value)
    } else {
        String::new()
    }
}

fn highest(points: &[(f64, f64)]) -> Option<f64> {
    points.iter().map(|&(_, y)| y).reduce(f64::max)
}

fn lowest(points: &[(f64, f64)]) -> Option<f64> {
    points.iter().map(|&(_, y)| y).reduce(f64::min)
}

fn throughput_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    series: &Series,
) -> Result<(), BenchError> {
    let top = highest(&series.acked)
        .into_iter()
        .chain(highest(&series.failed))
        .fold(1.0, f64::max)
        // Head room for the legend above the lines.
        * 1.4;
    let mut chart = linear_panel(area, "Throughput per second", "per second", series.end, top)?;
    draw_line(&mut chart, &series.acked, ACKED, "acknowledged updates")?;
    draw_line(
        &mut chart,
        &series.failed,
        FAILED,
        "failed requests (non-2xx, no answer)",
    )?;
    draw_kills(&mut chart, &series.kills, 0.0, top)?;
    draw_legend(&mut chart)
}

fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    series: &Series,
) -> Result<(), BenchError> {
    let bottom = lowest(&series.p50).map_or(0.1, |low| low / 2.0);
    let top = highest(&series.max)
        .map_or(1000.0, |high| high * 2.0)
        .max(bottom * 10.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Acknowledgement latency per second (ms, log scale)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..series.end, (bottom..top).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("ms")
        // A log axis has a bold line at each of its many key points already; labels at 1, 2
        // and 5 of each decade are enough.
        .y_max_light_lines(0)
        .x_label_formatter(&|x| number(*x))
        .y_label_formatter(&|y| decade_label(*y))
        .draw()
        .map_err(plot_error)?;
    draw_line(&mut chart, &series.max, MAX, "max")?;
    draw_line(&mut chart, &series.p99, P99, "p99")?;
    draw_line(&mut chart, &series.p50, P50, "p50")?;
    draw_kills(&mut chart, &series.kills, bottom, top)?;
    draw_legend(&mut chart)
}

fn rss_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, series: &Series) -> Result<(), BenchError> {
    let top = highest(&series.rss_mib).map_or(1.0, |high| high * 1.35);
    let caption = "Server resident memory (VmRSS, MiB)";
    let mut chart = linear_panel(area, caption, "MiB", series.end, top)?;
    draw_line(&mut chart, &series.rss_mib, RSS, "RSS")?;
    draw_kills(&mut chart, &series.kills, 0.0, top)?;
    draw_legend(&mut chart)
}

type Chart<'a, 'b, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>;

/// A panel over the run's seconds with a linear y axis from 0 to `top`, its grid drawn.
fn linear_panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    y_desc: &str,
    end: f64,
    top: f64,
) -> Result<Chart<'a, 'b, RangedCoordf64>, BenchError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end, 0f64..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc(y_desc)
        .x_label_formatter(&|x| number(*x))
        .y_label_formatter(&|y| number(*y))
        .draw()
        .map_err(plot_error)?;
    Ok(chart)
}

fn draw_line<Y>(
    chart: &mut Chart<'_, '_, Y>,
    points: &[(f64, f64)],
    color: RGBColor,
    label: &str,
) -> Result<(), BenchError>
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(plot_error)?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

fn draw_kills<Y>(
    chart: &mut Chart<'_, '_, Y>,
    kills: &[f64],
    bottom: f64,
    top: f64,
) -> Result<(), BenchError>
where
    Y: Ranged<ValueType = f64>,
{
    for (n, &x) in kills.iter().enumerate() {
        let line = chart
            .draw_series(DashedLineSeries::new(
                [(x, bottom), (x, top)],
                6,
                4,
                KILL.mix(0.6).stroke_width(1),
            ))
            .map_err(plot_error)?;
        if n == 0 {
            line.label("server killed (SIGKILL)").legend(|(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], KILL.mix(0.6).stroke_width(1))
            });
        }
    }
    Ok(())
}

fn draw_legend<'a, 'b: 'a, Y>(chart: &mut Chart<'a, 'b, Y>) -> Result<(), BenchError>
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{LatencySummary, ServerReport};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn report(seconds: u64, rss: bool, kills: &[u64]) -> Report {
        let timeline = (0..seconds)
            .map(|second| SecondStats {
                second,
                acknowledged: 300,
                ack_p50_ms: Some(1.5),
                ack_p99_ms: Some(8.0),
                ack_max_ms: Some(if kills.contains(&second) { 900.0 } else { 20.0 }),
                non_2xx: 0,
                connection_errors: if kills.contains(&second) { 40 } else { 0 },
                given_up: 0,
                kills: u32::from(kills.contains(&second)),
                server_rss_kib: rss.then_some(40_000 + second * 10),
            })
            .collect();
        Report {
            mode: "open".to_owned(),
            target_rate: Some(300.0),
            connections: 40,
            chats: 1000,
            first_update_id: 1,
            seed: 1,
            started_at_unix_ms: 0,
            duration_secs: seconds as f64,
            updates_sent: seconds * 300,
            acknowledged: seconds * 300,
            throughput_per_sec: 300.0,
            ack_latency: LatencySummary {
                p99_ms: 8.0,
                ..LatencySummary::default()
            },
            non_2xx_by_status: BTreeMap::new(),
            connection_errors: 0,
            connection_errors_by_kind: BTreeMap::new(),
            retries: 0,
            given_up: 0,
            given_up_updates: Vec::new(),
            acked_updates: Vec::new(),
            flood: None,
            verification: None,
            replies: None,
            timeline,
            server: rss.then(|| ServerReport {
                bin: PathBuf::from("/bin/botline"),
                data_dir: PathBuf::from("/tmp/data"),
                log: PathBuf::from("/tmp/data/botline-serve.log"),
                listen: "127.0.0.1:1".to_owned(),
                kills_planned: kills.len() as u32,
                kills: kills.len() as u32,
                kill_seed: Some(3),
                rss_samples: seconds,
                max_rss_kib: Some(40_000 + seconds * 10),
                rss_second_third_max_kib: None,
                rss_last_third_max_kib: None,
                died: None,
                stop: "exit status: 0 after SIGTERM".to_owned(),
                stopped_cleanly: true,
            }),
        }
    }

    /// The texts and the polylines (with at least two points) of an SVG that must parse.
    fn parse(svg: &str) -> (Vec<String>, usize) {
        let document = roxmltree::Document::parse(svg).expect("well-formed SVG");
        assert_eq!(document.root_element().tag_name().name(), "svg");
        let texts = document
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
            .collect();
        let lines = document
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .filter(|n| {
                n.attribute("points")
                    .is_some_and(|p| p.split_whitespace().count() >= 2)
            })
            .count();
        (texts, lines)
    }

    #[test]
    fn draws_three_panels_with_kills() {
        let report = report(60, true, &[10, 30]);
        let svg = render_svg(&report).expect("drawn");
        let (texts, lines) = parse(&svg);
        for caption in [
            "Throughput per second",
            "Acknowledgement latency per second (ms, log scale)",
            "Server resident memory (VmRSS, MiB)",
            "server killed (SIGKILL)",
            "p99",
        ] {
            assert!(texts.iter().any(|t| t == caption), "{caption}: {texts:?}");
        }
        let title = texts
            .iter()
            .find(|t| t.starts_with("botline-bench: open loop at 300/s"))
            .expect("a title");
        assert!(title.ends_with(", 2 kills"), "{title}");
        // acked, failed, p50, p99, max, RSS; their legend marks; 2 kills × 3 panels.
        assert!(lines >= 6, "{lines} lines");
        assert!(svg.contains("height=\"940\""), "3 panels high");
    }

    #[test]
    fn leaves_the_memory_panel_out_without_samples() {
        let svg = render_svg(&report(5, false, &[])).expect("drawn");
        let (texts, _) = parse(&svg);
        assert!(texts.iter().any(|t| t == "Throughput per second"));
        assert!(
            !texts
                .iter()
                .any(|t| t.starts_with("Server resident memory"))
        );
    }

    #[test]
    fn draws_an_empty_run() {
        let mut empty = report(0, false, &[]);
        empty.duration_secs = 0.0;
        let svg = render_svg(&empty).expect("drawn");
        parse(&svg);
    }

    #[test]
    fn a_short_last_second_is_not_drawn_as_a_rate() {
        let mut report = report(3, false, &[]);
        report.duration_secs = 2.1;
        let series = Series::of(&report);
        assert_eq!(series.acked.len(), 2);
        report.duration_secs = 2.5;
        let series = Series::of(&report);
        assert_eq!(series.acked.last(), Some(&(2.25, 600.0)));
        // Its latency is drawn, in its middle.
        assert_eq!(series.p99.last(), Some(&(2.25, 8.0)));
    }

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(number(300.0), "300");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(4.0), "4");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(0.125), "0.125");
        assert_eq!(number(0.2), "0.2");
        assert_eq!(number(1.25), "1.25");
        assert_eq!(decade_label(100.0), "100");
        assert_eq!(decade_label(0.5), "0.5");
        assert_eq!(decade_label(20.0), "20");
        assert_eq!(decade_label(30.0), "");
        assert_eq!(decade_label(0.0), "");
    }

    #[test]
    fn writing_to_a_missing_directory_is_an_error() {
        let error = write_svg(
            &report(2, false, &[]),
            Path::new("/nonexistent/dir/plot.svg"),
        )
        .expect_err("cannot write");
        assert!(
            error.to_string().contains("/nonexistent/dir/plot.svg"),
            "{error}"
        );
    }
}
