//! The figures that `cargo run --release --bin figures` draws, as data ([`Figure`]) built from
//! results, so that tests can draw them too.

pub mod bea_coefficients;
pub mod bea_networks;
pub mod cifar_results;
pub mod ledger;
pub mod network_sharpness;
pub mod training;

use crate::bea::{GdFlow, OrderMeasurement};
use crate::derivative_check::DerivativeReport;
use crate::experiment::{Evaluation, ExperimentResults};
use crate::optim::Momentum;
use crate::plot::{Figure, Legend, Mark, Panel, Scale, Series};
use bea_coefficients::{CoefficientFigureData, bea_coefficient_figure};
use bea_networks::{NetworkCoefficients, bea_network_figure};
use cifar_results::{CifarRun, cifar_results_figure};
use ledger::{LedgerRun, regulariser_ledger_figure};
use network_sharpness::{NetworkSharpnessData, network_sharpness_figure};
use training::{lr_sweep_figure, modified_flow_figure, spectral_density_figure};

/// One toy experiment's results and evaluation log, as the figures read them.
#[derive(Debug, Clone)]
pub struct ToyExperimentData {
    /// The results (`results.json`).
    pub results: ExperimentResults,
    /// The evaluations (`log.jsonl`).
    pub log: Vec<Evaluation>,
}

/// Everything the figures are drawn from: computed, or read from the caches, by the figures
/// binary; a test can fill it too.
pub struct FigureInputs {
    /// Derivative checks of the toy models, by model name.
    pub derivative_reports: Vec<(String, DerivativeReport)>,
    /// Local order curves of GD against the modified flows.
    pub bea_orders: Vec<ModelOrderCurves>,
    /// Measured implicit-regulariser coefficients.
    pub coefficients: CoefficientFigureData,
    /// The same coefficients measured on burn networks (read from the suite's JSON).
    pub network_coefficients: NetworkCoefficients,
    /// The sharpness figure's spectra.
    pub sharpness: SharpnessFigureData,
    /// `experiments/toy/generalisation.toml`.
    pub generalisation: ToyExperimentData,
    /// `experiments/toy/edge_of_stability.toml`.
    pub edge_of_stability: ToyExperimentData,
    /// `experiments/toy/modified_flow.toml`.
    pub modified_flow: ToyExperimentData,
    /// `experiments/toy/lr_sweep.toml`.
    pub lr_sweep: ToyExperimentData,
    /// The CIFAR-10 runs found.
    pub cifar_runs: Vec<CifarRun>,
    /// The `fullbatch train` runs with a regulariser ledger found.
    pub ledger_runs: Vec<LedgerRun>,
    /// A small ResNet's sharpness along a run and against the number of images.
    pub network_sharpness: NetworkSharpnessData,
}

/// One figure of `cargo run --release --bin figures`: its file name (without extension), what
/// it shows (the line of `figures/README.md`) and how it is drawn from the [`FigureInputs`].
#[derive(Debug, Clone, Copy)]
pub struct FigureEntry {
    /// The file stem: the figure is written as `<stem>.png` and `<stem>.svg`.
    pub stem: &'static str,
    /// What the figure shows, for the index.
    pub shows: &'static str,
    /// Draws it.
    pub build: fn(&FigureInputs) -> Figure,
}

/// Every figure the figures binary draws, in its order: the binary draws and indexes these, and
/// the tests check the files and the README's count against this list.
pub const FIGURES: [FigureEntry; 13] = [
    FigureEntry {
        stem: "derivative_check",
        shows: "finite-difference error of the gradient and HVP against the exact ones vs the difference step, per toy model (V shape: the exact derivatives are right)",
        build: |i| derivative_check_figure(&i.derivative_reports),
    },
    FigureEntry {
        stem: "bea_orders",
        shows: "one-step error of GD against the plain, first- and second-order modified flows vs the step size, with fitted slopes (theory: 2, 3, 4)",
        build: |i| bea_order_figure(&i.bea_orders),
    },
    FigureEntry {
        stem: "bea_coefficients",
        shows: "implicit-regulariser coefficients derived from iterates on 7 toy models vs theory: GD 1/4, SGD 1/(4m) with its GD/variance split, heavy-ball and Nesterov claims at beta = 0.9, as deviation from theory in ppm with +-2 s.e. bars (top), and c(h) against the step size with the linear extrapolation to h = 0 that gives each estimate (bottom)",
        build: |i| bea_coefficient_figure(&i.coefficients),
    },
    FigureEntry {
        stem: "bea_networks",
        shows: "the same four coefficients on networks written in burn (f64): the twin of the toy tanh MLP and two ResNets (width 4, BatchNorm over 4 ghost groups, GELU and softplus), as deviation from theory in ppm (top) and c(h) beside the toy models' (bottom); from experiments/results/bea/networks-seed0.json",
        build: |i| bea_network_figure(&i.network_coefficients, &i.coefficients),
    },
    FigureEntry {
        stem: "sharpness",
        shows: "Hessian of a trained tanh MLP 20-40-4 (1,004 parameters): SLQ spectral density vs the exact eigenvalues, top-10 eigenvalues by dense eigh, Lanczos and power iteration, and their relative residuals",
        build: |i| sharpness_figure(&i.sharpness),
    },
    FigureEntry {
        stem: "network_sharpness",
        shows: "lambda_max of a small ResNet's training-loss Hessian (finite differences of f32 gradients) along the small-synthetic-fb run with intervals (residual + estimated operator error), and after its last step against the number of images measured on; from experiments/results/sharpness/",
        build: |i| network_sharpness_figure(&i.network_sharpness),
    },
    FigureEntry {
        stem: "generalisation",
        shows: "experiments/toy/generalisation.toml: SGD, GD, GD + SGD's explicit regulariser, GD + GD's, GD at 4x the lr on a tanh MLP (Fashion-MNIST subset): training loss, test accuracy and lambda_max over training, and final test accuracy vs lambda_max per run",
        build: |i| generalisation_figure(&i.generalisation.results, &i.generalisation.log),
    },
    FigureEntry {
        stem: "edge_of_stability",
        shows: "experiments/toy/edge_of_stability.toml: full-batch GD at three step sizes h and the gradient flow from the same start (Dormand-Prince); training loss and lambda_max (warm-started Lanczos) against the time t = step x h, with the stability threshold 2/h",
        build: |i| edge_of_stability_figure(&i.edge_of_stability.results, &i.edge_of_stability.log),
    },
    FigureEntry {
        stem: "modified_flow",
        shows: "experiments/toy/modified_flow.toml: distance of GD's iterates from the gradient flow and from GD's modified flow of L + (h/4)|grad L|^2 at t = step x h, both at the last common time against h with fitted slopes (theory: 1 and 2), and h lambda_max against the stability limit 2 (where the modified flow stops describing GD)",
        build: |i| modified_flow_figure(&i.modified_flow.results, &i.modified_flow.log),
    },
    FigureEntry {
        stem: "spectral_density",
        shows: "experiments/toy/generalisation.toml: Hessian spectral density (stochastic Lanczos quadrature) at the end of training for each optimizer, whole spectrum and outliers",
        build: |i| spectral_density_figure(&i.generalisation.results),
    },
    FigureEntry {
        stem: "lr_sweep",
        shows: "experiments/toy/lr_sweep.toml: GD and SGD at four learning rates x three seeds: final test accuracy vs final lambda_max per run, and both against the learning rate (with 2/h)",
        build: |i| lr_sweep_figure(&i.lr_sweep.results),
    },
    FigureEntry {
        stem: "cifar_results",
        shows: "the paper's CIFAR-10 ResNet-18 validation accuracies (only the numbers the paper states) beside the last evaluation of each of our runs under runs/ (labelled with run directory, progress and commit; unfinished runs marked), rows without a run listed as not run; runs on other data (synthetic, Fashion-MNIST, subsets) in a separate panel marked not comparable",
        build: |i| cifar_results_figure(&i.cifar_runs),
    },
    FigureEntry {
        stem: "regulariser_ledger",
        shows: "the regulariser ledger along each fullbatch train run found (experiments/results/ledger/: the four small CPU configs, synthetic and Fashion-MNIST; runs/): GD's implicit term (lr/4)|mean g|^2, the minibatch-variance part SGD adds (lr/4K) sum |g_k - mean g|^2, GD's term with the momentum coefficient, and the paper's explicit regulariser, per step or SGD epoch, and their ratios",
        build: |i| regulariser_ledger_figure(&i.ledger_runs),
    },
];

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

/// What the sharpness figure shows: one model's exact spectrum and what the matrix-free
/// solvers found.
pub struct SharpnessFigureData {
    /// Model description for the title.
    pub model: String,
    /// Every eigenvalue of the dense Hessian, largest first.
    pub exact: Vec<f64>,
    /// Stochastic Lanczos quadrature.
    pub density: crate::sharpness::trace::SpectralDensity,
    /// Lanczos's top pairs.
    pub lanczos: crate::sharpness::Eigenpairs,
    /// Power iteration's top pairs (PyHessian's method).
    pub power: crate::sharpness::Eigenpairs,
}

/// Three panels: the SLQ spectral density beside the exact eigenvalues smoothed with the same
/// Gaussian; the top eigenvalues by dense eigh, Lanczos and power iteration; and their relative
/// residuals $\|Hv - \lambda v\|/|\lambda|$ (the evidence for each number).
pub fn sharpness_figure(data: &SharpnessFigureData) -> Figure {
    let sigma = data.density.sigma;
    let smoothed_exact: Vec<(f64, f64)> = data
        .density
        .grid
        .iter()
        .map(|&x| {
            let norm = 1.0 / ((2.0 * std::f64::consts::PI).sqrt() * sigma * data.exact.len() as f64);
            let y: f64 = data.exact.iter().map(|l| (-0.5 * ((x - l) / sigma).powi(2)).exp()).sum();
            (x, y * norm)
        })
        .collect();
    let peak = smoothed_exact.iter().fold(0.0f64, |m, p| m.max(p.1));
    // Below 1e-6 of the peak the Gaussian tails only stretch the log axis.
    let visible = |points: Vec<(f64, f64)>| points.into_iter().filter(|p| p.1 > 1e-6 * peak).collect::<Vec<_>>();
    let slq: Vec<(f64, f64)> = data.density.grid.iter().cloned().zip(data.density.density.iter().cloned()).collect();
    let indexed = |values: &[f64]| values.iter().enumerate().map(|(i, v)| (i as f64 + 1.0, *v)).collect::<Vec<_>>();
    let relative = |e: &crate::sharpness::Eigenpairs| {
        e.values.iter().zip(&e.residuals).enumerate().map(|(i, (l, r))| (i as f64 + 1.0, r / l.abs())).collect()
    };
    let k = data.lanczos.values.len();
    Figure {
        title: format!("Hessian spectrum of {}", data.model),
        panels: vec![
            Panel {
                title: format!(
                    "spectral density: SLQ ({} probes, {} HVPs) vs exact",
                    data.density.nodes.len(),
                    data.density.applications
                ),
                x_label: "eigenvalue λ".into(),
                y_label: format!("density (Gaussian σ = {sigma:.2e})"),
                x_scale: Scale::Linear,
                y_scale: Scale::Log10,
                series: vec![
                    Series { label: "SLQ estimate".into(), points: visible(slq), color: 0, mark: Mark::Line },
                    Series {
                        label: "exact eigenvalues, same smoothing".into(),
                        points: visible(smoothed_exact),
                        color: 1,
                        mark: Mark::Dashed,
                    },
                ],
                legend: Legend::UpperRight,
            },
            Panel {
                title: format!("top {k} eigenvalues"),
                x_label: "index i".into(),
                y_label: "eigenvalue λᵢ".into(),
                x_scale: Scale::Linear,
                y_scale: Scale::Linear,
                series: vec![
                    Series {
                        label: "dense eigh (LAPACK)".into(),
                        points: indexed(&data.exact[..k.min(data.exact.len())]),
                        color: 7,
                        mark: Mark::Line,
                    },
                    Series {
                        label: format!("Lanczos ({} HVPs)", data.lanczos.operator_applications),
                        points: indexed(&data.lanczos.values),
                        color: 0,
                        mark: Mark::Points,
                    },
                    Series {
                        label: format!("power iteration ({} HVPs)", data.power.operator_applications),
                        points: indexed(&data.power.values),
                        color: 1,
                        mark: Mark::Points,
                    },
                ],
                legend: Legend::UpperRight,
            },
            Panel {
                title: "evidence: relative residuals".into(),
                x_label: "index i".into(),
                y_label: "‖Hv − λv‖ / |λ|".into(),
                x_scale: Scale::Linear,
                y_scale: Scale::Log10,
                series: vec![
                    Series {
                        label: "Lanczos (tol 1e-10)".into(),
                        points: relative(&data.lanczos),
                        color: 0,
                        mark: Mark::LinePoints,
                    },
                    Series {
                        label: "power iteration (PyHessian, 1e-3)".into(),
                        points: relative(&data.power),
                        color: 1,
                        mark: Mark::LinePoints,
                    },
                ],
                legend: Legend::MiddleRight,
            },
        ],
        columns: 3,
        panel_size: (560, 440),
    }
}

/// Training curves of a toy experiment, one series per variant (mean over seeds): training
/// loss, test accuracy and $\lambda_{\max}$ against the step, and each run's final test accuracy
/// against its final $\lambda_{\max}$.
pub fn generalisation_figure(
    results: &crate::experiment::ExperimentResults,
    log: &[crate::experiment::Evaluation],
) -> Figure {
    use crate::experiment::mean_curve;
    let variants: Vec<&str> = results.config.variants.iter().map(|v| v.label.as_str()).collect();
    let curves = |pick: fn(&crate::experiment::Evaluation) -> Option<f64>, mark: Mark| {
        variants
            .iter()
            .enumerate()
            .map(|(i, v)| Series { label: v.to_string(), points: mean_curve(log, v, pick), color: i, mark })
            .collect::<Vec<_>>()
    };
    let panel = |title: &str, y_label: &str, y_scale: Scale, series: Vec<Series>, legend: Legend| Panel {
        title: title.into(),
        x_label: "step".into(),
        y_label: y_label.into(),
        x_scale: Scale::Linear,
        y_scale,
        series,
        legend,
    };
    let seeds = results.config.seeds.len();
    let scatter = variants
        .iter()
        .enumerate()
        .map(|(i, v)| Series {
            label: v.to_string(),
            points: results
                .runs
                .iter()
                .filter(|r| r.variant == *v && r.diverged.is_none())
                .filter_map(|r| Some((r.last.lambda_max?, r.last.test_accuracy)))
                .collect(),
            color: i,
            mark: Mark::Points,
        })
        .collect();
    Figure {
        title: format!("{} — {} (mean of {seeds} seeds)", results.config.name, results.data_used),
        panels: vec![
            panel(
                "training loss",
                "L(θ) (unregularised)",
                Scale::Log10,
                curves(|e| Some(e.train_loss), Mark::Line),
                Legend::LowerLeft,
            ),
            panel(
                "test accuracy",
                "accuracy",
                Scale::Linear,
                curves(|e| Some(e.test_accuracy), Mark::Line),
                Legend::LowerRight,
            ),
            panel(
                "sharpness",
                "λ_max of the training loss",
                Scale::Linear,
                curves(|e| e.lambda_max, Mark::Line),
                Legend::UpperLeft,
            ),
            Panel {
                title: "end of training, one point per run".into(),
                x_label: "λ_max".into(),
                y_label: "test accuracy".into(),
                x_scale: Scale::Linear,
                y_scale: Scale::Linear,
                series: scatter,
                legend: Legend::LowerLeft,
            },
        ],
        columns: 2,
        panel_size: (640, 460),
    }
}

/// Edge of stability: training loss and $\lambda_{\max}$ against the flow time $t = nh$ for
/// each step size $h$, with the stability threshold $2/h$ dashed in the same colour; with
/// `measure.flows`, the same quantities along the gradient flow from the same start (black),
/// which has no threshold to stop its sharpening.
pub fn edge_of_stability_figure(
    results: &crate::experiment::ExperimentResults,
    log: &[crate::experiment::Evaluation],
) -> Figure {
    use crate::experiment::mean_curve;
    let in_time = |curve: Vec<(f64, f64)>, h: f64| curve.into_iter().map(|(n, y)| (n * h, y)).collect::<Vec<_>>();
    let mut loss = Vec::new();
    let mut sharp = Vec::new();
    // The gradient flow does not depend on h: draw it from the variant that follows it longest.
    // (last time, lambda_max curve, loss curve) of the longest-followed flow.
    type Curve = Vec<(f64, f64)>;
    let mut flow: Option<(f64, Curve, Curve)> = None;
    for (i, v) in results.config.variants.iter().enumerate() {
        let h = v.lr;
        loss.push(Series {
            label: v.label.clone(),
            points: in_time(mean_curve(log, &v.label, |e| Some(e.train_loss)), h),
            color: i,
            mark: Mark::Line,
        });
        let curve = in_time(mean_curve(log, &v.label, |e| e.lambda_max), h);
        let t_end = curve.last().map_or(v.steps as f64 * h, |p| p.0);
        sharp.push(Series { label: format!("λ_max, {}", v.label), points: curve, color: i, mark: Mark::Line });
        // Each optimizer against its own limit: 2/h for GD, (2 + 2β)/h for heavy ball,
        // (2 + 2β)/((1 + 2β) h) for Nesterov.
        let limit = v.momentum.stability_limit() / h;
        let limit_label = match v.momentum {
            Momentum::None => format!("2/h = {limit}"),
            _ => format!("its limit {:.3}/h = {limit:.1}", v.momentum.stability_limit()),
        };
        sharp.push(Series {
            label: limit_label,
            points: vec![(0.0, limit), (t_end, limit)],
            color: i,
            mark: Mark::Dashed,
        });
        let flow_lambda = in_time(mean_curve(log, &v.label, |e| e.flow.as_ref().map(|f| f.flow_lambda_max)), h);
        let flow_end = flow_lambda.last().map_or(0.0, |p| p.0);
        if !flow_lambda.is_empty() && flow.as_ref().is_none_or(|f| f.0 < flow_end) {
            let flow_loss = in_time(mean_curve(log, &v.label, |e| e.flow.as_ref().map(|f| f.flow_train_loss)), h);
            flow = Some((flow_end, flow_lambda, flow_loss));
        }
    }
    if let Some((_, lambda, flow_loss)) = flow {
        sharp.push(Series { label: "λ_max, gradient flow".into(), points: lambda, color: 7, mark: Mark::Line });
        loss.push(Series { label: "gradient flow".into(), points: flow_loss, color: 7, mark: Mark::Line });
    }
    Figure {
        title: format!(
            "Edge of stability: full-batch GD, with and without momentum, vs gradient flow — {}",
            results.data_used
        ),
        panels: vec![
            Panel {
                title: "training loss".into(),
                x_label: "time t = step × h".into(),
                y_label: "L(θ)".into(),
                x_scale: Scale::Linear,
                y_scale: Scale::Log10,
                series: loss,
                legend: Legend::UpperRight,
            },
            Panel {
                title: "sharpness vs each optimizer's stability threshold".into(),
                x_label: "time t = step × h".into(),
                y_label: "λ_max (Lanczos, warm-started)".into(),
                x_scale: Scale::Linear,
                y_scale: Scale::Linear,
                series: sharp,
                legend: Legend::UpperRight,
            },
        ],
        columns: 2,
        panel_size: (640, 460),
    }
}
