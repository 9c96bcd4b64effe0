//! The figures that `cargo run --release --bin figures` draws, as data ([`Figure`]) built from
//! results, so that tests can draw them too.

use crate::bea::{GdFlow, OrderMeasurement};
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

/// One model's local-order curves: its name, its time scale `tau`, and a measurement per flow.
pub type ModelOrderCurves = (String, f64, Vec<(GdFlow, OrderMeasurement)>);

/// Local error of one GD step against the plain, first- and second-order modified flows, as
/// the step shrinks, one panel per model; step sizes in units of the model's time scale
/// `tau` (see [`expansion_rate`](crate::bea::expansion_rate)). Legends give the fitted slopes:
/// 2, 3 and 4 in theory.
pub fn bea_order_figure(models: &[ModelOrderCurves]) -> Figure {
    let flow_name = |f: GdFlow| match f {
        GdFlow::Plain => "plain flow",
        GdFlow::FirstOrder => "1st-order modified",
        GdFlow::SecondOrder => "2nd-order modified",
    };
    let panels = models
        .iter()
        .map(|(name, tau, curves)| Panel {
            title: name.clone(),
            x_label: "step size h / τ".into(),
            y_label: "one-step error |θ − hg − φ_h(θ)|".into(),
            x_scale: Scale::Log10,
            y_scale: Scale::Log10,
            series: curves
                .iter()
                .enumerate()
                .map(|(i, (flow, m))| Series {
                    label: format!("{}: slope {:.2} ± {:.2}", flow_name(*flow), m.fit.slope, m.fit.slope_ci95()),
                    points: m.hs.iter().map(|h| h / tau).zip(m.errors.iter().cloned()).collect(),
                    color: i,
                    mark: Mark::LinePoints,
                })
                .collect(),
            legend: Legend::LowerRight,
        })
        .collect();
    Figure {
        title: "One GD step vs the flows of backward-error analysis (slopes: 95% CI)".into(),
        panels,
        columns: 3,
        panel_size: (560, 440),
    }
}
