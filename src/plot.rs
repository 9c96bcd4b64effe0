//! Figures with plotters: line charts in panels, written as PNG and SVG, with text rendered from
//! an embedded DejaVu Sans (no system fonts needed) and the Okabe-Ito colour-blind-safe palette.
//!
//! Logarithmic axes are drawn by plotting $\log_{10}$ of the data on a linear axis and labelling
//! the ticks with powers of ten, so every panel uses one code path.

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
}

impl Scale {
    fn map(self, v: f64) -> Option<f64> {
        match self {
            Scale::Linear => v.is_finite().then_some(v),
            Scale::Log10 => (v > 0.0 && v.is_finite()).then(|| v.log10()),
        }
    }

    fn label(self, v: f64) -> String {
        match self {
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

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> std::result::Result<(), String> {
    let mapped: Vec<Vec<(f64, f64)>> = panel
        .series
        .iter()
        .map(|s| s.points.iter().filter_map(|&(x, y)| Some((panel.x_scale.map(x)?, panel.y_scale.map(y)?))).collect())
        .collect();
    let (x0, x1) = bounds(mapped.iter().flatten().map(|p| p.0));
    let (y0, y1) = bounds(mapped.iter().flatten().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| format!("{e:?}"))?;
    let (xs, ys) = (panel.x_scale, panel.y_scale);
    let x_fmt = move |v: &f64| xs.label(*v);
    let y_fmt = move |v: &f64| ys.label(*v);
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| format!("{e:?}"))?;
    for (s, pts) in panel.series.iter().zip(mapped) {
        let color = PALETTE[s.color % PALETTE.len()];
        let style = color.stroke_width(2);
        let anno = match s.mark {
            Mark::Line | Mark::LinePoints => chart.draw_series(LineSeries::new(pts.clone(), style)),
            Mark::Dashed => chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style)),
            Mark::Points => chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))),
        }
        .map_err(|e| format!("{e:?}"))?;
        anno.label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if s.mark == Mark::LinePoints {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| format!("{e:?}"))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .position(match panel.legend {
            Legend::UpperRight => SeriesLabelPosition::UpperRight,
            Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
            Legend::LowerLeft => SeriesLabelPosition::LowerLeft,
            Legend::LowerRight => SeriesLabelPosition::LowerRight,
            Legend::MiddleRight => SeriesLabelPosition::MiddleRight,
        })
        .draw()
        .map_err(|e| format!("{e:?}"))?;
    Ok(())
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
