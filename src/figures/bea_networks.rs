//! The implicit-regulariser coefficients measured on networks written in burn (a twin of a toy
//! MLP and two small ResNets with BatchNorm), beside the toy models: the same four coefficients
//! as [`super::bea_coefficients`], from the rows `fullbatch bea --network ... --json` writes
//! (a build with the `burn` feature), so the figures binary draws them without burn.

use std::path::Path;

use super::bea_coefficients::{CoefficientFigureData, CoefficientKind, c_of_h_panel, extrapolation_series};
use crate::bea::{Check, CoefficientCurve, SuiteNetwork};
use crate::plot::{Figure, Legend, Mark, Panel, Scale, Series};
use crate::{Choice, Error, Result};

/// The networks the figure knows, in the order of its categories (every [`SuiteNetwork`]).
pub static NETWORK_NAMES: [&str; 3] = ["burn-mlp-tanh-mse", "resnet-gelu", "resnet-softplus"];

/// The suite's coefficient rows on networks, read from a JSON array of [`Check`]s.
#[derive(Debug, Clone, Default)]
pub struct NetworkCoefficients {
    /// Where the rows were read from (empty when no file was found).
    pub source: String,
    /// The rows that carry a curve, on a network of [`NETWORK_NAMES`].
    pub rows: Vec<Check>,
}

/// The check name of each coefficient in the suite's output.
fn check_name(kind: CoefficientKind) -> &'static str {
    match kind {
        CoefficientKind::Gd => "gd_coefficient",
        CoefficientKind::Sgd => "sgd_coefficient",
        CoefficientKind::HeavyBall => "heavy_ball_coefficient",
        CoefficientKind::Nesterov => "nesterov_coefficient",
    }
}

/// Reads the suite's rows from `path` (the output of `fullbatch bea --network ... --json`);
/// a missing file gives no rows.
///
/// # Errors
/// [`Error::Io`] for a file that exists but cannot be read, [`Error::BadFile`] when it is not a
/// JSON array of checks or names a network the figure does not know.
pub fn read_network_coefficients(path: &Path) -> Result<NetworkCoefficients> {
    if !path.exists() {
        return Ok(NetworkCoefficients::default());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let rows: Vec<Check> =
        serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("not the suite's JSON rows: {e}")))?;
    let mut kept = Vec::new();
    for r in rows {
        if r.curve.is_none() {
            continue;
        }
        if SuiteNetwork::from_name(&r.model).is_err() {
            return Err(Error::bad_file(path, format!("model '{}' is not a network of the suite", r.model)));
        }
        kept.push(r);
    }
    Ok(NetworkCoefficients { source: path.display().to_string(), rows: kept })
}

/// Parts per million.
const PPM: f64 = 1e6;

/// Two rows of panels, one column per coefficient (GD, SGD, heavy ball, Nesterov).
///
/// Top row: each network's extrapolated coefficient as its relative deviation from the theory
/// in ppm, with $\pm 2$ standard-error bars; the theory is the dashed line at 0.
///
/// Bottom row: $c(h)/c_{\text{theory}} - 1$ (%) against the step size in the model's unit
/// ([`CoefficientCurve::step_unit`]): each network in its colour with its least-squares line
/// extended dashed to $h = 0$ and the extrapolated value's $\pm 2$ s.e. bar, and the seven toy
/// models of `toy` as black points, so the networks' curves sit beside the toy models'.
pub fn bea_network_figure(networks: &NetworkCoefficients, toy: &CoefficientFigureData) -> Figure {
    let n = NETWORK_NAMES.len();
    let index = |model: &str| NETWORK_NAMES.iter().position(|&m| m == model);
    let mut top = Vec::new();
    let mut bottom = Vec::new();
    for kind in CoefficientKind::ALL {
        let rows: Vec<(usize, &Check, &CoefficientCurve)> = networks
            .rows
            .iter()
            .filter(|r| r.check == check_name(kind))
            .filter_map(|r| Some((index(&r.model)?, r, r.curve.as_ref()?)))
            .collect();
        let theory = rows.first().map_or_else(
            || toy.coefficients.iter().find(|c| c.kind == kind).map_or(f64::NAN, |c| c.theory),
            |(_, r, _)| r.expected,
        );
        let mut series = vec![Series {
            label: String::new(),
            points: vec![(0.0, -0.5), (0.0, n as f64 - 0.5)],
            color: 7,
            mark: Mark::Dashed,
        }];
        for &(i, r, _) in &rows {
            let point = ((r.measured / theory - 1.0) * PPM, i as f64, 2.0 * r.stderr / theory * PPM);
            series.push(Series {
                label: String::new(),
                points: vec![(point.0, point.1)],
                color: i,
                mark: Mark::Points,
            });
            series.push(Series::error_bars_x(i, &[point]));
        }
        top.push(Panel {
            title: format!("{}: networks vs {} = {theory:.4}", kind.name(), kind.formula()),
            x_label: "estimate / theory − 1 (ppm), ±2 s.e.".into(),
            y_label: "network".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Categories(&NETWORK_NAMES),
            series,
            legend: Legend::UpperLeft,
        });

        let mut curves = Vec::new();
        let toy_points: Vec<(f64, f64)> = toy
            .coefficients
            .iter()
            .filter(|c| c.kind == kind)
            .flat_map(|c| {
                let m = &c.measurement;
                m.hs.iter().zip(&m.per_h).map(move |(h, v)| (h / c.step_unit, (v / c.theory - 1.0) * 100.0))
            })
            .collect();
        let mut x_max = toy_points.iter().map(|p| p.0).fold(0.0f64, f64::max);
        curves.push(Series { label: "toy models (7)".into(), points: toy_points, color: 7, mark: Mark::Points });
        for &(i, r, curve) in &rows {
            let (series, x) = extrapolation_series(r.model.clone(), i, &curve.measurement, r.expected, curve.step_unit);
            curves.extend(series);
            x_max = x_max.max(x);
        }
        bottom.push(c_of_h_panel(kind, format!("{}: c(h) on networks and toy models", kind.name()), curves, x_max));
    }
    let mut panels = top;
    panels.extend(bottom);
    let source = if networks.rows.is_empty() {
        "no network results found: run `fullbatch bea --network ... --json` (burn feature)".to_string()
    } else {
        networks.source.clone()
    };
    Figure {
        title: format!("Implicit-regulariser coefficients on burn networks (f64) beside the toy models ({source})"),
        panels,
        columns: 4,
        panel_size: (560, 460),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed suite output on networks: four coefficient rows per network, each with
    /// a curve of six step sizes.
    #[test]
    fn the_committed_network_rows_read_back() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/results/bea/networks-seed0.json");
        let read = read_network_coefficients(&path).unwrap();
        assert_eq!(read.rows.len(), 4 * NETWORK_NAMES.len());
        for name in NETWORK_NAMES {
            assert_eq!(read.rows.iter().filter(|r| r.model == name).count(), 4, "{name}");
        }
        assert!(read.rows.iter().all(|r| r.curve.as_ref().is_some_and(|c| c.measurement.per_h.len() == 6)));
    }

    /// A missing file is no rows; a malformed one or an unknown network is an error naming the
    /// file.
    #[test]
    fn bad_network_rows_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_network_coefficients(&dir.path().join("none.json")).unwrap().rows.is_empty());
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        let e = read_network_coefficients(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("not the suite's JSON rows"), "{e}");
        let unknown = dir.path().join("unknown.json");
        let row = r#"[{"check":"gd_coefficient","model":"alexnet","measured":0.25,"stderr":null,"expected":0.25,
            "tolerance":0.0025,"pass":true,"reference_error_ratio":0.0,
            "curve":{"step_unit":1.0,"measurement":{"hs":[0.1],"per_h":[0.25],"estimate":0.25,"stderr":null,
            "unexplained":0.0,"reference_error_ratio":0.0}}}]"#;
        std::fs::write(&unknown, row).unwrap();
        let e = read_network_coefficients(&unknown).unwrap_err().to_string();
        assert!(e.contains("unknown.json") && e.contains("alexnet"), "{e}");
    }
}
