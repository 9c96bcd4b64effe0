//! The implicit-regulariser coefficients of backward-error analysis, derived from iterates on
//! the toy catalogue, with their error bars, and the step-size curves they are extrapolated from.
//!
//! Four coefficients $c$ of modified losses $L + c\,h\,\|\cdot\|^2$ (see `docs/theory.md`):
//! - GD: $L + c\,h\|\nabla L\|^2$, theory $c = \frac14$ ([`gd_coefficient`]);
//! - SGD with $m$ minibatches per epoch: $L + \kappa\,h\sum_k\|\nabla L_k\|^2$, theory
//!   $\kappa = \frac1{4m}$, and the split of the displacement into GD's part and the
//!   minibatch-variance part, both weights 1 in theory ([`sgd_coefficient_asymptotic`]);
//! - heavy ball and Nesterov momentum $\beta$: the claims $\frac{1+\beta}{4(1-\beta)^2}$ and
//!   $\frac{1-\beta+2\beta^2}{4(1-\beta)^2}$ ([`momentum_coefficient`],
//!   [`momentum_coefficient_claim`]).
//!
//! Each is measured at several step sizes, $c(h) = c + O(h)$, and extrapolated linearly to
//! $h = 0$; the step sizes are those of [`run_suite`](crate::bea::run_suite) (`fullbatch bea`)
//! with [`SuiteParams::default`], so the figure shows the suite's numbers.

use std::time::Instant;

use crate::Result;
use crate::bea::{
    CoefficientMeasurement, Orderings, SuiteParams, gd_coefficient, momentum_coefficient, momentum_coefficient_claim,
    sgd_coefficient_asymptotic,
};
use crate::models::ModelKind;
use crate::optim::Momentum;
use crate::plot::{Figure, Legend, Mark, Panel, Scale, Series};
use crate::stats::linear_fit;

/// The catalogue models the figure measures, with their command-line names (the category
/// labels of the figure's x axis). The least-squares model is left out to keep the Okabe-Ito
/// palette's seven colours plus black for the theory.
pub const COEFFICIENT_MODELS: [(ModelKind, &str); 7] = [
    (ModelKind::Quadratic, "quadratic"),
    (ModelKind::Logistic, "logistic"),
    (ModelKind::Softmax, "softmax"),
    (ModelKind::MlpTanhMse, "mlp-tanh-mse"),
    (ModelKind::MlpSoftplusCe, "mlp-softplus-ce"),
    (ModelKind::MlpGeluCe, "mlp-gelu-ce"),
    (ModelKind::DeepLinear, "deep-linear"),
];

/// The names of [`COEFFICIENT_MODELS`], in order.
pub static COEFFICIENT_MODEL_NAMES: [&str; 7] = {
    let mut names = [""; 7];
    let mut i = 0;
    while i < 7 {
        names[i] = COEFFICIENT_MODELS[i].1;
        i += 1;
    }
    names
};

/// Which coefficient a measurement is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoefficientKind {
    /// GD's $c$ in $L + c\,h\|\nabla L\|^2$ (theory $\frac14$).
    Gd,
    /// SGD's $\kappa$ in $L + \kappa\,h\sum_k\|\nabla L_k\|^2$ (theory $\frac1{4m}$).
    Sgd,
    /// Heavy-ball momentum's $c$ (claim $\frac{1+\beta}{4(1-\beta)^2}$).
    HeavyBall,
    /// PyTorch-Nesterov momentum's $c$ (claim $\frac{1-\beta+2\beta^2}{4(1-\beta)^2}$).
    Nesterov,
}

impl CoefficientKind {
    /// Every kind, in the figure's panel order.
    pub const ALL: [CoefficientKind; 4] =
        [CoefficientKind::Gd, CoefficientKind::Sgd, CoefficientKind::HeavyBall, CoefficientKind::Nesterov];

    /// A short name for titles.
    pub fn name(self) -> &'static str {
        match self {
            CoefficientKind::Gd => "GD",
            CoefficientKind::Sgd => "SGD",
            CoefficientKind::HeavyBall => "heavy ball",
            CoefficientKind::Nesterov => "Nesterov",
        }
    }

    /// The theory's formula, as text.
    pub fn formula(self) -> &'static str {
        match self {
            CoefficientKind::Gd => "1/4",
            CoefficientKind::Sgd => "1/(4m)",
            CoefficientKind::HeavyBall => "(1+β)/(4(1−β)²)",
            CoefficientKind::Nesterov => "(1−β+2β²)/(4(1−β)²)",
        }
    }

    /// What the step sizes of the $c(h)$ curve are measured in (the label of its x axis).
    pub fn step_unit(self) -> &'static str {
        match self {
            CoefficientKind::Gd => "step size h / τ",
            CoefficientKind::Sgd => "epoch time m·h / τ_SGD",
            CoefficientKind::HeavyBall | CoefficientKind::Nesterov => "h / ((1−β)² τ)",
        }
    }
}

/// One coefficient measured on one model.
#[derive(Debug, Clone)]
pub struct ModelCoefficient {
    /// Index into [`CoefficientFigureData::models`].
    pub model: usize,
    /// Which coefficient.
    pub kind: CoefficientKind,
    /// The theory's (or the published claim's) value.
    pub theory: f64,
    /// The unit of the step sizes in the $c(h)$ panel: $\tau = 1/$[`expansion_rate`](crate::bea::expansion_rate) for GD,
    /// $1/(m\,\text{rate})$ for SGD (rate: the largest over the full loss and each minibatch,
    /// so the axis is the epoch time $mh$ in units of $\tau_{\text{SGD}}$), $(1-\beta)^2\tau$
    /// for momentum.
    pub step_unit: f64,
    /// The per-$h$ values, the extrapolated estimate and its standard error.
    pub measurement: CoefficientMeasurement,
}

/// SGD's displacement split into GD's part and the minibatch-variance part (weights 1 in
/// theory), on one model.
#[derive(Debug, Clone)]
pub struct SgdSplit {
    /// Index into [`CoefficientFigureData::models`].
    pub model: usize,
    /// The weight of GD's part $mHg$, extrapolated to $h = 0$.
    pub gd_part: f64,
    /// The weight of the variance part $\sum_k H_k(g_k - g)$, extrapolated.
    pub variance_part: f64,
    /// Standard errors of the two weights.
    pub stderr: (f64, f64),
}

/// What [`bea_coefficient_figure`] draws.
#[derive(Debug, Clone)]
pub struct CoefficientFigureData {
    /// Model names (the figure's categories).
    pub models: &'static [&'static str],
    /// The suite parameters the step sizes, minibatches and $\beta$ come from.
    pub params: SuiteParams,
    /// Every coefficient on every model it applies to (SGD needs a finite sum, so not on the
    /// quadratic).
    pub coefficients: Vec<ModelCoefficient>,
    /// SGD's split, per model where it is identifiable.
    pub splits: Vec<SgdSplit>,
    /// Seconds the measurements took.
    pub seconds: f64,
}

/// Measures the four coefficients on [`COEFFICIENT_MODELS`] (seeded data and start points),
/// with the step sizes of [`run_suite`](crate::bea::run_suite) at [`SuiteParams::default`]
/// (all $m!$ orderings for SGD). About a second in release.
///
/// # Errors
/// As the model constructors and the measurements ([`gd_coefficient`],
/// [`sgd_coefficient_asymptotic`], [`momentum_coefficient`]).
pub fn measure_coefficients(seed: u64) -> Result<CoefficientFigureData> {
    let started = Instant::now();
    let params = SuiteParams { seed, ..SuiteParams::default() };
    let p = &params.reference;
    let mut coefficients = Vec::new();
    let mut splits = Vec::new();
    for (model, (kind, _)) in COEFFICIENT_MODELS.iter().enumerate() {
        let instance = kind.instance(seed)?;
        let obj = instance.objective();
        let theta = instance.theta0.view();
        let (tau, hs) = params.gd_steps(obj, theta);
        coefficients.push(ModelCoefficient {
            model,
            kind: CoefficientKind::Gd,
            theory: 0.25,
            step_unit: tau,
            measurement: gd_coefficient(obj, theta, &hs, p)?,
        });

        if let Some(fs) = instance.finite_sum() {
            let (batches, rate, sgd_hs) = params.sgd_steps(fs, theta, tau)?;
            let m = params.minibatches as f64;
            let s = sgd_coefficient_asymptotic(fs, theta, &batches, &sgd_hs, Orderings::All, p, &params.range)?;
            coefficients.push(ModelCoefficient {
                model,
                kind: CoefficientKind::Sgd,
                theory: 1.0 / (4.0 * m),
                step_unit: 1.0 / (m * rate),
                measurement: s.coefficient,
            });
            if s.gd_part.is_finite() && s.variance_part.is_finite() {
                splits.push(SgdSplit {
                    model,
                    gd_part: s.gd_part,
                    variance_part: s.variance_part,
                    stderr: s.part_stderr,
                });
            }
        }

        for (ck, momentum) in [
            (CoefficientKind::HeavyBall, Momentum::HeavyBall(params.beta)),
            (CoefficientKind::Nesterov, Momentum::Nesterov(params.beta)),
        ] {
            let mhs = params.momentum_steps(&hs);
            coefficients.push(ModelCoefficient {
                model,
                kind: ck,
                theory: momentum_coefficient_claim(momentum),
                step_unit: (1.0 - params.beta).powi(2) * tau,
                measurement: momentum_coefficient(obj, theta, momentum, &mhs, p)?,
            });
        }
    }
    Ok(CoefficientFigureData {
        models: &COEFFICIENT_MODEL_NAMES,
        params,
        coefficients,
        splits,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Parts per million.
const PPM: f64 = 1e6;

/// One coefficient's $c(h)/c_{\text{theory}} - 1$ (%) against $h$ in units of `step_unit`: the
/// points (labelled), the least-squares line extended dashed to $h = 0$, and the extrapolated
/// value's $\pm 2$ standard-error bar at $h = 0$; with the largest $h$ in those units.
pub(crate) fn extrapolation_series(
    label: String,
    color: usize,
    e: &CoefficientMeasurement,
    theory: f64,
    step_unit: f64,
) -> (Vec<Series>, f64) {
    let pct = |v: f64| (v / theory - 1.0) * 100.0;
    let xs: Vec<f64> = e.hs.iter().map(|h| h / step_unit).collect();
    let ys: Vec<f64> = e.per_h.iter().map(|&v| pct(v)).collect();
    let end = xs.iter().cloned().fold(0.0, f64::max);
    let mut series =
        vec![Series { label, points: xs.iter().cloned().zip(ys.iter().cloned()).collect(), color, mark: Mark::Points }];
    if let Some(fit) = linear_fit(&xs, &ys) {
        series.push(Series {
            label: String::new(),
            points: vec![(0.0, fit.intercept), (end, fit.intercept + fit.slope * end)],
            color,
            mark: Mark::Dashed,
        });
    }
    series.push(Series::error_bars(color, &[(0.0, pct(e.estimate), 200.0 * e.stderr / theory)]));
    (series, end)
}

/// The bottom-row panel of $c(h)$ curves for `kind`, with the theory as a dashed line at 0 up
/// to `x_max`.
pub(crate) fn c_of_h_panel(kind: CoefficientKind, title: String, mut curves: Vec<Series>, x_max: f64) -> Panel {
    curves.insert(
        0,
        Series { label: "theory".into(), points: vec![(0.0, 0.0), (x_max, 0.0)], color: 7, mark: Mark::Dashed },
    );
    Panel {
        title,
        x_label: kind.step_unit().into(),
        y_label: "c(h) / theory − 1 (%)".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Linear,
        series: curves,
        // The curves start at the theory at h = 0 and fall (GD, SGD) or rise (momentum).
        legend: if matches!(kind, CoefficientKind::Gd | CoefficientKind::Sgd) {
            Legend::LowerLeft
        } else {
            Legend::UpperLeft
        },
    }
}

/// The theory as a dashed black vertical line at zero deviation across `n` categories.
fn theory_line(n: usize, label: &str) -> Series {
    Series { label: label.into(), points: vec![(0.0, -0.5), (0.0, n as f64 - 0.5)], color: 7, mark: Mark::Dashed }
}

/// Points $(x, \text{category})$ with horizontal bars $x \pm e$ for each $(x, \text{category}, e)$,
/// as two series.
fn with_bars(label: String, color: usize, points: Vec<(f64, f64, f64)>) -> [Series; 2] {
    [
        Series { label, points: points.iter().map(|&(x, y, _)| (x, y)).collect(), color, mark: Mark::Points },
        Series::error_bars_x(color, &points),
    ]
}

/// Two rows of panels, one column per coefficient (GD, SGD, heavy ball, Nesterov).
///
/// Top row: the extrapolated coefficient's relative deviation from the theory,
/// $(\hat c/c_{\text{theory}} - 1)\cdot 10^6$ (ppm), per model with $\pm 2$ standard-error
/// bars; the theory is the dashed line at 0. The SGD panel adds the two split weights'
/// deviations from 1, beside each model's coefficient.
///
/// Bottom row: where each estimate comes from: $c(h)/c_{\text{theory}} - 1$ (%) against the
/// step size (in the model's unit, [`ModelCoefficient::step_unit`]), one colour per model, the
/// least-squares line through the points extended dashed to $h = 0$, and the extrapolated value
/// at $h = 0$ with its $\pm 2$ standard-error bar.
pub fn bea_coefficient_figure(data: &CoefficientFigureData) -> Figure {
    let n = data.models.len();
    let models = Scale::Categories(data.models);
    let of_kind = |kind: CoefficientKind| data.coefficients.iter().filter(move |c| c.kind == kind);
    let beta = data.params.beta;
    let m = data.params.minibatches;
    let mut top = Vec::new();
    let mut bottom = Vec::new();
    for kind in CoefficientKind::ALL {
        let theory = of_kind(kind).next().map_or(f64::NAN, |c| c.theory);
        let title = match kind {
            CoefficientKind::Gd => format!("GD: c vs theory {} (dashed)", kind.formula()),
            CoefficientKind::Sgd => format!("SGD (m = {m}): κ vs {} = {theory:.4}", kind.formula()),
            _ => format!("{} β = {beta}: c vs {} = {theory:.2} (dashed)", kind.name(), kind.formula()),
        };
        let offset = if kind == CoefficientKind::Sgd { -0.2 } else { 0.0 };
        let deviations: Vec<(f64, f64, f64)> = of_kind(kind)
            .map(|c| {
                let e = &c.measurement;
                ((e.estimate / c.theory - 1.0) * PPM, c.model as f64 + offset, 2.0 * e.stderr / c.theory * PPM)
            })
            .collect();
        // Only SGD's panel, with three quantities, needs a legend; the others say it in the title.
        let sgd = kind == CoefficientKind::Sgd;
        let mut series = vec![theory_line(n, if sgd { "theory" } else { "" })];
        let label = if sgd { "κ / (1/(4m)) − 1".to_string() } else { String::new() };
        series.extend(with_bars(label, 0, deviations));
        if kind == CoefficientKind::Sgd {
            let split = |pick: fn(&SgdSplit) -> (f64, f64), dx: f64| {
                data.splits
                    .iter()
                    .map(|s| {
                        let (w, se) = pick(s);
                        ((w - 1.0) * PPM, s.model as f64 + dx, 2.0 * se * PPM)
                    })
                    .collect::<Vec<_>>()
            };
            series.extend(with_bars("GD-part weight − 1".into(), 1, split(|s| (s.gd_part, s.stderr.0), 0.0)));
            series.extend(with_bars(
                "variance-part weight − 1".into(),
                2,
                split(|s| (s.variance_part, s.stderr.1), 0.2),
            ));
        }
        top.push(Panel {
            title,
            x_label: "estimate / theory − 1 (ppm = 10⁻⁶), ±2 s.e.".into(),
            y_label: "model".into(),
            x_scale: Scale::Linear,
            y_scale: models,
            series,
            // The quadratic (top row) has no SGD measurement: room for the legend.
            legend: Legend::UpperLeft,
        });

        let mut curves = Vec::new();
        let mut x_max = 0.0f64;
        for c in of_kind(kind) {
            let label = data.models.get(c.model).map_or_else(String::new, |s| s.to_string());
            let (series, x) = extrapolation_series(label, c.model, &c.measurement, c.theory, c.step_unit);
            curves.extend(series);
            x_max = x_max.max(x);
        }
        bottom.push(c_of_h_panel(kind, format!("{}: c(h), extrapolated to h = 0", kind.name()), curves, x_max));
    }
    let mut panels = top;
    panels.extend(bottom);
    Figure {
        title: format!(
            "Implicit-regulariser coefficients derived from iterates vs theory ({} toy models, {:.1} s)",
            n, data.seconds
        ),
        panels,
        columns: 4,
        panel_size: (560, 460),
    }
}
