//! Figures of the toy training experiments beyond the training curves: GD against the gradient
//! flow and its modified flow, the Hessian's spectral density at the end of training, and test
//! accuracy against sharpness over step sizes and seeds.

use crate::experiment::{Evaluation, ExperimentResults, mean_curve};
use crate::plot::{Figure, Legend, Mark, Panel, Scale, Series};

/// A panel with the given axes.
fn panel(
    title: &str,
    x_label: &str,
    y_label: &str,
    scales: (Scale, Scale),
    series: Vec<Series>,
    legend: Legend,
) -> Panel {
    Panel {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        x_scale: scales.0,
        y_scale: scales.1,
        series,
        legend,
    }
}

/// A variant's mean curve of `pick` against the flow time $t = nh$ instead of the step $n$.
fn against_time(log: &[Evaluation], label: &str, h: f64, pick: fn(&Evaluation) -> Option<f64>) -> Vec<(f64, f64)> {
    mean_curve(log, label, pick).into_iter().map(|(n, y)| (n * h, y)).collect()
}

/// The modified flow in practice: for each step size $h$, the distance of GD's iterate
/// $\theta_n$ from the gradient flow $\varphi_{nh}(\theta_0)$ (dashed) and from GD's modified
/// flow $\tilde\varphi_{nh}(\theta_0)$ of $L + \frac h4\|\nabla L\|^2$ (solid) against the time
/// $t = nh$; both distances at the last time all variants share against $h$ on log-log axes,
/// with fitted slopes (backward-error analysis: 1 and 2 while $h\lambda_{\max} \ll 2$); and
/// $h\lambda_{\max}(\theta_n)$ against $t$ with the stability limit 2, which is where the
/// expansion behind the modified flow breaks down.
///
/// Variants without flow measurements (`measure.gradient_flow`) are left out.
pub fn modified_flow_figure(results: &ExperimentResults, log: &[Evaluation]) -> Figure {
    let mut distances = Vec::new();
    let mut stability = Vec::new();
    let mut t_end: f64 = 0.0;
    let flow_variants: Vec<_> = results
        .config
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| log.iter().any(|e| e.variant == v.label && e.flow.is_some()))
        .collect();
    // The last time every variant reached, and each variant's distances there (first seed).
    let first_seed = results.config.seeds.first().copied().unwrap_or(0);
    let last_time = |label: &str| {
        log.iter().filter(|e| e.variant == label).filter_map(|e| e.flow.as_ref().map(|f| f.time)).fold(0.0, f64::max)
    };
    let t_common = flow_variants.iter().map(|(_, v)| last_time(&v.label)).fold(f64::INFINITY, f64::min);
    let at_common = |pick: fn(&crate::experiment::FlowComparison) -> Option<f64>| -> Vec<(f64, f64)> {
        flow_variants
            .iter()
            .filter_map(|(_, v)| {
                let e = log.iter().find(|e| {
                    e.variant == v.label
                        && e.seed == first_seed
                        && e.flow.as_ref().is_some_and(|f| (f.time - t_common).abs() <= 1e-9 * t_common)
                })?;
                Some((v.lr, pick(e.flow.as_ref()?)?))
            })
            .collect()
    };
    // Slopes are fitted where the expansion can hold from the start: h lambda_max(theta_0) < 1.
    let h_lambda0 = |h: f64, label: &str| {
        log.iter().find(|e| e.variant == label && e.step == 0).and_then(|e| e.lambda_max).map(|l| h * l)
    };
    let inside: Vec<f64> = flow_variants
        .iter()
        .filter(|(_, v)| h_lambda0(v.lr, &v.label).is_some_and(|x| x < 1.0))
        .map(|(_, v)| v.lr)
        .collect();
    let with_slope = |name: &str, points: &[(f64, f64)]| {
        let (x, y): (Vec<f64>, Vec<f64>) = points.iter().copied().filter(|p| inside.contains(&p.0)).unzip();
        match crate::stats::log_log_fit(&x, &y) {
            Some(fit) => format!("{name}: slope {:.2} where h·λ_max(θ_0) < 1", fit.slope),
            None => name.to_string(),
        }
    };
    let plain_at = at_common(|f| Some(f.plain_distance));
    let modified_at = at_common(|f| f.modified_distance);
    let orders = vec![
        Series {
            label: with_slope("from the gradient flow", &plain_at),
            points: plain_at,
            color: 0,
            mark: Mark::LinePoints,
        },
        Series {
            label: with_slope("from the modified flow", &modified_at),
            points: modified_at,
            color: 1,
            mark: Mark::LinePoints,
        },
    ];
    for &(i, v) in &flow_variants {
        let plain = against_time(log, &v.label, v.lr, |e| e.flow.as_ref().map(|f| f.plain_distance));
        distances.push(Series {
            label: v.label.clone(),
            points: against_time(log, &v.label, v.lr, |e| e.flow.as_ref().and_then(|f| f.modified_distance)),
            color: i,
            mark: Mark::Line,
        });
        // Same colour, dashed, no legend entry of its own (the title says what dashes mean).
        distances.push(Series { label: String::new(), points: plain, color: i, mark: Mark::Dashed });
        let h = v.lr;
        let h_lambda: Vec<(f64, f64)> =
            mean_curve(log, &v.label, |e| e.lambda_max).into_iter().map(|(n, l)| (n * h, h * l)).collect();
        t_end = t_end.max(h_lambda.last().map_or(0.0, |p| p.0));
        stability.push(Series {
            label: format!("h·λ_max(θ_n), {}", v.label),
            points: h_lambda,
            color: i,
            mark: Mark::Line,
        });
    }
    stability.push(Series {
        label: "stability limit h·λ = 2".into(),
        points: vec![(0.0, 2.0), (t_end, 2.0)],
        color: 7,
        mark: Mark::Dashed,
    });
    Figure {
        title: format!(
            "The modified flow in practice: GD iterates vs flows from the same start — {}",
            results.data_used
        ),
        panels: vec![
            panel(
                &format!("distances at t = {t_common} vs step size (seed {first_seed})"),
                "step size h",
                "‖θ_n − flow(nh)‖",
                (Scale::Log10, Scale::Log10),
                orders,
                Legend::UpperLeft,
            ),
            panel(
                "distance of θ_n from the modified flow (solid), gradient flow (dashed)",
                "flow time t = n·h",
                "‖θ_n − flow(t)‖",
                (Scale::Linear, Scale::Log10),
                distances,
                Legend::LowerRight,
            ),
            panel(
                "where the expansion holds: h·λ_max < 2",
                "flow time t = n·h",
                "h·λ_max of the training loss at θ_n",
                (Scale::Linear, Scale::Linear),
                stability,
                Legend::UpperRight,
            ),
        ],
        columns: 3,
        panel_size: (560, 460),
    }
}

/// Spectral densities (stochastic Lanczos quadrature, Gaussian-smoothed) of the training loss's
/// Hessian at the end of training, one curve per variant (its first seed), on a log scale
/// floored at $10^{-7}$ of each curve's peak;
/// the second panel zooms on the outliers above a tenth of the largest $\lambda_{\max}$.
///
/// Runs without a density (`measure.density`) are left out.
pub fn spectral_density_figure(results: &ExperimentResults) -> Figure {
    let first_seed = results.config.seeds.first().copied().unwrap_or(0);
    let mut all = Vec::new();
    let mut top = Vec::new();
    let lambda_top = results.runs.iter().filter_map(|r| r.last.lambda_max).fold(0.0_f64, f64::max);
    for (i, v) in results.config.variants.iter().enumerate() {
        let Some(density) =
            results.runs.iter().find(|r| r.variant == v.label && r.seed == first_seed).and_then(|r| r.density.as_ref())
        else {
            continue;
        };
        // Densities below 1e-7 of the peak are the Gaussians' tails between nodes, not
        // eigenvalues: drawn at that floor (a log axis cannot show zero).
        let peak = density.density.iter().copied().fold(0.0_f64, f64::max);
        let points: Vec<(f64, f64)> =
            density.grid.iter().zip(&density.density).map(|(&x, &p)| (x, p.max(1e-7 * peak))).collect();
        top.push(Series {
            label: v.label.clone(),
            points: points.iter().copied().filter(|p| p.0 >= 0.1 * lambda_top).collect(),
            color: i,
            mark: Mark::Line,
        });
        all.push(Series { label: v.label.clone(), points, color: i, mark: Mark::Line });
    }
    Figure {
        title: format!(
            "Hessian spectral density at the end of training (SLQ, seed {first_seed}) — {}",
            results.data_used
        ),
        panels: vec![
            panel(
                "whole spectrum",
                "eigenvalue λ",
                "density (1/unit of λ)",
                (Scale::Linear, Scale::Log10),
                all,
                Legend::UpperRight,
            ),
            panel(
                "outliers (λ ≥ λ_max/10)",
                "eigenvalue λ",
                "density (1/unit of λ)",
                (Scale::Linear, Scale::Log10),
                top,
                Legend::UpperRight,
            ),
        ],
        columns: 2,
        panel_size: (640, 460),
    }
}

/// Test accuracy against sharpness over step sizes and seeds: one point per run (final test
/// accuracy vs final $\lambda_{\max}$), GD and SGD apart; and final $\lambda_{\max}$ and test
/// accuracy against the step size (mean over seeds) with GD's stability limit $2/h$.
/// Diverged runs are left out (their count is in the title).
pub fn lr_sweep_figure<'a>(results: &'a ExperimentResults) -> Figure {
    let groups = [("GD (full batch)", false), ("SGD", true)];
    let mut scatter = Vec::new();
    let mut sharpness = Vec::new();
    let mut accuracy = Vec::new();
    let mut lrs: Vec<f64> = results.config.variants.iter().map(|v| v.lr).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    for (color, (name, stochastic)) in groups.into_iter().enumerate() {
        let variants: Vec<_> =
            results.config.variants.iter().filter(|v| v.batch_size.is_some() == stochastic).collect();
        if variants.is_empty() {
            continue;
        }
        let label = match variants[0].batch_size {
            Some(b) => format!("{name} (batch {b})"),
            None => name.to_string(),
        };
        fn finished<'a>(
            results: &'a ExperimentResults,
            label: &'a str,
        ) -> impl Iterator<Item = &'a crate::experiment::RunResult> + 'a {
            results.runs.iter().filter(move |r| r.variant == label && r.diverged.is_none())
        }
        let runs_of = |label: &'a str| finished(results, label);
        scatter.push(Series {
            label: label.clone(),
            points: variants
                .iter()
                .flat_map(|v| runs_of(&v.label).filter_map(|r| Some((r.last.lambda_max?, r.last.test_accuracy))))
                .collect(),
            color,
            mark: Mark::Points,
        });
        let mean_over_seeds = |pick: fn(&crate::experiment::RunResult) -> Option<f64>| {
            variants
                .iter()
                .filter_map(|v| {
                    let values: Vec<f64> = runs_of(&v.label).filter_map(pick).collect();
                    (!values.is_empty()).then(|| (v.lr, values.iter().sum::<f64>() / values.len() as f64))
                })
                .collect::<Vec<_>>()
        };
        sharpness.push(Series {
            label: label.clone(),
            points: mean_over_seeds(|r| r.last.lambda_max),
            color,
            mark: Mark::LinePoints,
        });
        accuracy.push(Series {
            label,
            points: mean_over_seeds(|r| Some(r.last.test_accuracy)),
            color,
            mark: Mark::LinePoints,
        });
    }
    sharpness.push(Series {
        label: "2/h".into(),
        points: lrs.iter().map(|&h| (h, 2.0 / h)).collect(),
        color: 7,
        mark: Mark::Dashed,
    });
    let diverged = results.runs.iter().filter(|r| r.diverged.is_some()).count();
    let seeds = results.config.seeds.len();
    Figure {
        title: format!(
            "Test accuracy vs sharpness over step sizes ({seeds} seeds, {diverged} diverged runs left out) — {}",
            results.data_used
        ),
        panels: vec![
            panel(
                "end of training, one point per run",
                "λ_max of the training loss",
                "test accuracy",
                (Scale::Log10, Scale::Linear),
                scatter,
                Legend::LowerLeft,
            ),
            panel(
                "final sharpness vs step size (mean over seeds)",
                "learning rate h",
                "λ_max",
                (Scale::Log10, Scale::Log10),
                sharpness,
                Legend::UpperRight,
            ),
            panel(
                "final test accuracy vs step size (mean over seeds)",
                "learning rate h",
                "test accuracy",
                (Scale::Log10, Scale::Linear),
                accuracy,
                Legend::LowerLeft,
            ),
        ],
        columns: 3,
        panel_size: (560, 460),
    }
}
