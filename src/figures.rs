//! The figures that `cargo run --release --bin figures` draws, as data ([`Figure`]) built from
//! results, so that tests can draw them too.

use crate::derivative_check::DerivativeReport;
use crate::plot::{Figure, Legend, Mark, Panel, Scale, Series};

/// Finite-difference error of the gradient and of the HVP against the exact ones, as the
/// difference step shrinks, one line per model: the V-shaped curves (slope 2 from truncation,
/// slope -1 from rounding) that show the exact derivatives are right.
pub fn derivative_check_figure(reports: &[(String, DerivativeReport)]) -> Figure {
    let panel = |title: &str, y_label: &str, pick: fn(&DerivativeReport) -> &Vec<f64>| Panel {
        title: title.to_string(),
        x_label: "difference step ε".into(),
        y_label: y_label.into(),
        x_scale: Scale::Log10,
        y_scale: Scale::Log10,
        series: reports
            .iter()
            .enumerate()
            .map(|(i, (name, r))| Series {
                label: name.clone(),
                points: r.steps.iter().cloned().zip(pick(r).iter().cloned()).collect(),
                color: i,
                mark: Mark::Line,
            })
            .collect(),
        legend: Legend::LowerLeft,
    };
    Figure {
        title: "Exact derivatives vs central finite differences".into(),
        panels: vec![
            panel("gradient: |ΔL/2ε − gᵀv| / |g|", "relative error", |r| &r.gradient_errors),
            panel("Hessian-vector product: |Δg/2ε − Hv| / |Hv|", "relative error", |r| &r.hvp_errors),
        ],
        columns: 2,
        panel_size: (640, 480),
    }
}
