//! Figures with plotters: line charts in panels, written as PNG and SVG, with text rendered from
//! an embedded DejaVu Sans (no system fonts needed) and the Okabe-Ito colour-blind-safe palette.
//!
//! Logarithmic axes are drawn by plotting $\log_{10}$ of the data on a linear axis and labelling
//! the ticks with powers of ten, so every panel uses one code path. Categorical axes
//! ([`Scale::Categories`]) are linear axes with one tick per category, labelled with its name.
//! Error bars are series of their own ([`Mark::ErrorBar`], built by [`Series::error_bars`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::{Error, Result};

static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

/// Registers the embedded font as plotters' "sans-serif" (once per process).
///
/// # Errors
/// [`Error::Plot`] if the embedded font cannot be parsed (a build defect).
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Plot {
            path: PathBuf::from("src/fonts/DejaVuSans.ttf"),
            message: "embedded font could not be parsed".into(),
        })
    }
}

/// The Okabe-Ito palette (colour-blind safe), black last.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(240, 228, 66),  // yellow
    RGBColor(0, 0, 0),       // black
];

/// Axis scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Linear.
    Linear,
    /// Base-10 logarithmic (non-positive values are dropped).
    Log10,
    /// Categories: category $i$ sits at the data value $i$ (a real number, so series can be
    /// offset a little to either side of it) and its tick is labelled with `names[i]`. The axis
    /// spans $[-\frac12, n - \frac12]$ for $n$ names. On the y axis the first category is at
    /// the top, as in a table.
    Categories(&'static [&'static str]),
}

impl Scale {
    fn map(self, v: f64) -> Option<f64> {
        match self {
            Scale::Linear | Scale::Categories(_) => v.is_finite().then_some(v),
            Scale::Log10 => (v > 0.0 && v.is_finite()).then(|| v.log10()),
        }
    }

    /// The name of category `v` when `v` is (within rounding) a category's index.
    fn category(names: &[&str], v: f64) -> String {
        let r = v.round();
        if (v - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < names.len() {
            names[r as usize].to_string()
        } else {
            String::new()
        }
    }

    fn label(self, v: f64) -> String {
        match self {
            Scale::Categories(names) => Scale::category(names, v),
            Scale::Linear => {
                if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
                    format!("{v:.1e}")
                } else {
                    format!("{}", (v * 1000.0).round() / 1000.0)
                }
            }
            Scale::Log10 => {
                let r = v.round();
                if (v - r).abs() < 1e-9 { format!("1e{r}") } else { format!("{:.2e}", 10f64.powf(v)) }
            }
        }
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A solid line.
    Line,
    /// A dashed line (reference curves).
    Dashed,
    /// A line with a circle at each point.
    LinePoints,
    /// Circles only.
    Points,
    /// Error bars with caps: the points are read in pairs, one bar from the first point of a
    /// pair to the second: vertical bars $(x, y_{\text{lo}})$, $(x, y_{\text{hi}})$
    /// ([`Series::error_bars`]) or horizontal ones $(x_{\text{lo}}, y)$, $(x_{\text{hi}}, y)$
    /// ([`Series::error_bars_x`]); the caps are across the bar. A bar with an end that a scale
    /// drops (non-positive on a log axis) is not drawn.
    ErrorBar,
    /// Draws nothing: the label appears in the legend as a line of text without a symbol (a
    /// note, e.g. which rows have no data).
    Note,
}

/// One labelled series of a panel.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Data points (x, y), in data units.
    pub points: Vec<(f64, f64)>,
    /// Index into [`PALETTE`] (wraps around).
    pub color: usize,
    /// How it is drawn.
    pub mark: Mark,
}

impl Series {
    /// Error bars $y \pm e$ for each $(x, y, e)$ in `points`, with no legend entry (pair it
    /// with a labelled [`Mark::Points`] series of the same colour for the centres).
    pub fn error_bars(color: usize, points: &[(f64, f64, f64)]) -> Series {
        Series {
            label: String::new(),
            points: points.iter().flat_map(|&(x, y, e)| [(x, y - e.abs()), (x, y + e.abs())]).collect(),
            color,
            mark: Mark::ErrorBar,
        }
    }

    /// Horizontal error bars $x \pm e$ for each $(x, y, e)$ in `points`, with no legend entry.
    pub fn error_bars_x(color: usize, points: &[(f64, f64, f64)]) -> Series {
        Series {
            label: String::new(),
            points: points.iter().flat_map(|&(x, y, e)| [(x - e.abs(), y), (x + e.abs(), y)]).collect(),
            color,
            mark: Mark::ErrorBar,
        }
    }

    /// A legend line of text without a symbol ([`Mark::Note`]).
    pub fn note(text: impl Into<String>) -> Series {
        Series { label: text.into(), points: Vec::new(), color: 7, mark: Mark::Note }
    }
}

/// Where a panel's legend goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legend {
    /// Top right corner.
    UpperRight,
    /// Top left corner.
    UpperLeft,
    /// Bottom left corner.
    LowerLeft,
    /// Bottom right corner.
    LowerRight,
    /// Right edge, half-way up.
    MiddleRight,
    /// Below the chart, outside the plotting area (one line per labelled series): for charts
    /// whose data may fill every corner.
    Below,
}

/// One chart.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above the chart.
    pub title: String,
    /// X-axis label, with units.
    pub x_label: String,
    /// Y-axis label, with units.
    pub y_label: String,
    /// X-axis scale.
    pub x_scale: Scale,
    /// Y-axis scale.
    pub y_scale: Scale,
    /// The series.
    pub series: Vec<Series>,
    /// Legend position.
    pub legend: Legend,
}

/// A figure: a title and panels on a grid.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Title across the top.
    pub title: String,
    /// Panels, filled row by row.
    pub panels: Vec<Panel>,
    /// Panels per row.
    pub columns: usize,
    /// Size of one panel in pixels.
    pub panel_size: (u32, u32),
}

impl Figure {
    fn size(&self) -> (u32, u32) {
        let cols = self.columns.max(1);
        let rows = self.panels.len().div_ceil(cols).max(1);
        (self.panel_size.0 * cols as u32, self.panel_size.1 * rows as u32 + 50)
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.04 * (hi - lo) } else { 0.5 };
    (lo - pad, hi + pad)
}

/// The number of categories of a categorical scale.
fn categories(scale: Scale) -> Option<usize> {
    match scale {
        Scale::Categories(names) => Some(names.len()),
        _ => None,
    }
}

/// Height in pixels of one line of a legend drawn below the chart.
const LEGEND_LINE: u32 = 18;

/// Draws the legend of `panel` as lines of text under the chart, starting at pixel column `left`.
fn draw_legend_below<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    left: i32,
) -> std::result::Result<(), String> {
    let labelled = panel.series.iter().filter(|s| !s.label.is_empty());
    for (i, s) in labelled.enumerate() {
        let y = 8 + (i as u32 * LEGEND_LINE) as i32 + LEGEND_LINE as i32 / 2;
        let color = PALETTE[s.color % PALETTE.len()];
        let marker = match s.mark {
            Mark::Note => None,
            Mark::ErrorBar => Some(vec![(left + 9, y - 6), (left + 9, y + 6)]),
            _ => Some(vec![(left, y), (left + 18, y)]),
        };
        if let Some(points) = marker {
            area.draw(&PathElement::new(points, color.stroke_width(2))).map_err(|e| format!("{e:?}"))?;
        }
        area.draw(&Text::new(s.label.clone(), (left + 26, y - 7), ("sans-serif", 13).into_font()))
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> std::result::Result<(), String> {
    let lines = panel.series.iter().filter(|s| !s.label.is_empty()).count() as u32;
    if panel.legend == Legend::Below && lines > 0 {
        let height = area.dim_in_pixel().1;
        let legend_height = (lines * LEGEND_LINE + 16).min(height / 2);
        let (chart_area, legend_area) = area.split_vertically(height - legend_height);
        let y_label_area = draw_chart(&chart_area, panel)?;
        return draw_legend_below(&legend_area, panel, CHART_MARGIN as i32 + y_label_area as i32);
    }
    draw_chart(area, panel).map(|_| ())
}

/// Margin around a chart, in pixels.
const CHART_MARGIN: u32 = 12;

/// Draws the chart of `panel` (and its legend, unless [`Legend::Below`]); returns the width of
/// the y-label area in pixels.
fn draw_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> std::result::Result<u32, String> {
    let (xs, ys) = (panel.x_scale, panel.y_scale);
    // A categorical y axis runs top-down: category i is drawn at n - 1 - i.
    let y_flip = categories(ys).map(|n| n as f64 - 1.0);
    let map = move |&(x, y): &(f64, f64)| {
        let y = ys.map(y)?;
        Some((xs.map(x)?, y_flip.map_or(y, |top| top - y)))
    };
    let mapped: Vec<Vec<(f64, f64)>> = panel
        .series
        .iter()
        .map(|s| {
            if s.mark == Mark::ErrorBar {
                // Keep whole bars only, so the pairs stay aligned.
                s.points.chunks_exact(2).filter_map(|bar| Some([map(&bar[0])?, map(&bar[1])?])).flatten().collect()
            } else {
                s.points.iter().filter_map(map).collect()
            }
        })
        .collect();
    let axis_range = |scale: Scale, values: Vec<f64>| match categories(scale) {
        Some(n) if n > 0 => (-0.5, n as f64 - 0.5),
        _ => bounds(values.into_iter()),
    };
    let (x0, x1) = axis_range(xs, mapped.iter().flatten().map(|p| p.0).collect());
    let (y0, y1) = axis_range(ys, mapped.iter().flatten().map(|p| p.1).collect());
    let longest = |scale: Scale| match scale {
        Scale::Categories(names) => names.iter().map(|n| n.chars().count()).max().unwrap_or(0),
        _ => 0,
    };
    let y_label_area = 70.max(15 * longest(ys) as u32 / 2 + 45);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(CHART_MARGIN)
        .x_label_area_size(45)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| format!("{e:?}"))?;
    let x_fmt = move |v: &f64| xs.label(*v);
    let y_fmt = move |v: &f64| ys.label(y_flip.map_or(*v, |top| top - *v));
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0));
    if let Some(n) = categories(xs) {
        mesh.x_labels(n.max(1));
    } else if xs == Scale::Log10 {
        // Off-decade log labels are long ("1.26e-3"): fewer of them, so they do not overlap.
        mesh.x_labels(6);
    }
    if let Some(n) = categories(ys) {
        mesh.y_labels(n.max(1));
    }
    mesh.draw().map_err(|e| format!("{e:?}"))?;
    for (s, pts) in panel.series.iter().zip(mapped) {
        let color = PALETTE[s.color % PALETTE.len()];
        let style = color.stroke_width(2);
        let anno = match s.mark {
            // Segment by segment: plotters' bitmap backend joins the segments of a wide polyline
            // with unlimited miters, which draw long spikes where a curve turns back on itself
            // (a drop and a one-pixel rise, as lambda_max does after its first step).
            Mark::Line | Mark::LinePoints => {
                chart.draw_series(pts.windows(2).map(|w| PathElement::new(vec![w[0], w[1]], style)))
            }
            Mark::Dashed => chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style)),
            Mark::Points => chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))),
            Mark::ErrorBar => {
                let caps = pts.chunks_exact(2).flat_map(|bar| {
                    // Across the bar: horizontal caps on a vertical bar, vertical on a horizontal one.
                    let vertical = (bar[0].0 - bar[1].0).abs() <= f64::EPSILON * bar[0].0.abs().max(1.0);
                    let cap = if vertical { vec![(-5, 0), (5, 0)] } else { vec![(0, -5), (0, 5)] };
                    bar.iter()
                        .map(move |&p| EmptyElement::at(p) + PathElement::new(cap.clone(), style))
                        .collect::<Vec<_>>()
                });
                chart.draw_series(caps).map_err(|e| format!("{e:?}"))?;
                chart.draw_series(pts.chunks_exact(2).map(|bar| PathElement::new(vec![bar[0], bar[1]], style)))
            }
            Mark::Note => chart.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>()),
        }
        .map_err(|e| format!("{e:?}"))?;
        if !s.label.is_empty() {
            anno.label(s.label.clone());
            match s.mark {
                Mark::Note => {}
                Mark::ErrorBar => {
                    anno.legend(move |(x, y)| {
                        PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], color.stroke_width(2))
                    });
                }
                _ => {
                    anno.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                }
            }
        }
        if s.mark == Mark::LinePoints {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| format!("{e:?}"))?;
        }
    }
    let position = match panel.legend {
        _ if panel.series.iter().all(|s| s.label.is_empty()) => return Ok(y_label_area),
        Legend::Below => return Ok(y_label_area),
        Legend::UpperRight => SeriesLabelPosition::UpperRight,
        Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
        Legend::LowerLeft => SeriesLabelPosition::LowerLeft,
        Legend::LowerRight => SeriesLabelPosition::LowerRight,
        Legend::MiddleRight => SeriesLabelPosition::MiddleRight,
    };
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .position(position)
        .draw()
        .map_err(|e| format!("{e:?}"))?;
    Ok(y_label_area)
}

fn draw_figure<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| format!("{e:?}"))?;
    let root = root.titled(&fig.title, ("sans-serif", 24)).map_err(|e| format!("{e:?}"))?;
    let cols = fig.columns.max(1);
    let rows = fig.panels.len().div_ceil(cols).max(1);
    let areas = root.split_evenly((rows, cols));
    for (panel, area) in fig.panels.iter().zip(areas.iter()) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(|e| format!("{e:?}"))
}

/// Renders `fig` to `<stem>.png` and `<stem>.svg`, each written to a temporary file first and
/// renamed into place, and returns the two paths.
///
/// # Errors
/// [`Error::Plot`] when drawing fails, [`Error::Io`] when a file cannot be written or renamed.
pub fn render(fig: &Figure, stem: &Path) -> Result<[PathBuf; 2]> {
    ensure_font()?;
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let size = fig.size();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    // The PNG encoder picks the format from the extension, so the temporary name ends in .png.
    let png_tmp = stem.with_extension("tmp.png");
    let svg_tmp = stem.with_extension("tmp.svg");
    let plot_err = |path: &Path, message: String| Error::Plot { path: path.to_path_buf(), message };
    draw_figure(BitMapBackend::new(&png_tmp, size).into_drawing_area(), fig).map_err(|m| plot_err(&png, m))?;
    draw_figure(SVGBackend::new(&svg_tmp, size).into_drawing_area(), fig).map_err(|m| plot_err(&svg, m))?;
    for (tmp, dst) in [(&png_tmp, &png), (&svg_tmp, &svg)] {
        std::fs::rename(tmp, dst).map_err(|e| Error::io(dst, e))?;
    }
    Ok([png, svg])
}
