//! The suite behind `fullbatch bea`: every backward-error check on a set of models, as rows
//! `{check, model, measured, stderr, expected, tolerance, pass}`.

use ndarray::{Array1, ArrayView1};
use serde::{Deserialize, Serialize};

use super::{
    CoefficientMeasurement, GdFlow, OrderMeasurement, Orderings, RangeSearch, asymptotic_order, equal_partition,
    f64_or_nan, gd_coefficient, gd_global_order, gd_local_order, momentum_coefficient, momentum_coefficient_claim,
    sgd_coefficient_asymptotic, sgd_epoch_order,
};
use crate::data::fashion_mnist;
use crate::derivative_check::geometric_steps;
use crate::integrate::AdaptiveParams;
use crate::models::{self, Activation, Model, ModelInstance, ModelKind, OutputLoss};
use crate::objective::{FiniteSum, Minibatch, Objective};
use crate::optim::Momentum;
use crate::{Choice, Result};

/// A model the suite runs on: any [`Objective`], toy or network. A [`FiniteSum`] also gets
/// the SGD checks.
pub enum SuiteObjective {
    /// A loss without example structure: the GD and momentum checks.
    Smooth(Box<dyn Objective>),
    /// A mean over examples (or over BatchNorm groups): every check.
    FiniteSum(Box<dyn FiniteSum>),
}

impl SuiteObjective {
    /// The model as an objective.
    pub fn objective(&self) -> &dyn Objective {
        match self {
            SuiteObjective::Smooth(o) => o.as_ref(),
            SuiteObjective::FiniteSum(f) => f.as_ref(),
        }
    }

    /// The model as a finite sum, when it is one.
    pub fn finite_sum(&self) -> Option<&dyn FiniteSum> {
        match self {
            SuiteObjective::Smooth(_) => None,
            SuiteObjective::FiniteSum(f) => Some(f.as_ref()),
        }
    }
}

/// A model the suite runs on, with its name in the output and its start point.
pub struct SuiteModel {
    /// Name in the output.
    pub name: String,
    /// The model.
    pub objective: SuiteObjective,
    /// The point every check starts from.
    pub theta0: Array1<f64>,
}

impl SuiteModel {
    /// A catalogue model with its start point.
    pub fn from_instance(name: impl Into<String>, instance: ModelInstance) -> Self {
        let objective = match instance.model {
            Model::Quadratic(q) => SuiteObjective::Smooth(Box::new(q)),
            Model::Network(n) => SuiteObjective::FiniteSum(Box::new(n)),
        };
        SuiteModel { name: name.into(), objective, theta0: instance.theta0 }
    }
}

/// Parameters of [`run_suite`]. Step sizes are relative to the model's time scale
/// $\tau = 1/$[`expansion_rate`](super::expansion_rate) at the start point (for SGD, the
/// largest rate over the full loss and each minibatch).
#[derive(Debug, Clone, Serialize)]
pub struct SuiteParams {
    /// Largest step for the local measurements, in units of $\tau$.
    pub h_max: f64,
    /// Smallest step, in units of $\tau$.
    pub h_min: f64,
    /// Number of step sizes (geometric).
    pub steps: usize,
    /// The second-order flow's steps are the others times this (its next term involves
    /// fourth derivatives, which the rate does not bound).
    pub second_order_scale: f64,
    /// Horizon of the global-error measurement, in units of $\tau$.
    pub horizon: f64,
    /// Step counts of the global-error measurement.
    pub step_counts: Vec<usize>,
    /// Minibatches per epoch for the SGD checks.
    pub minibatches: usize,
    /// Orderings: 0 means all $m!$ (exact), otherwise that many sampled.
    pub sampled_orderings: usize,
    /// Momentum $\beta$ of the heavy-ball and Nesterov checks.
    pub beta: f64,
    /// Seed of the partition and of sampled orderings.
    pub seed: u64,
    /// Reference-flow tolerances.
    pub reference: AdaptiveParams,
    /// How order measurements find their asymptotic range.
    pub range: RangeSearch,
}

impl Default for SuiteParams {
    fn default() -> Self {
        SuiteParams {
            h_max: 0.1,
            h_min: 0.01,
            steps: 6,
            second_order_scale: 0.3,
            horizon: 1.0,
            step_counts: vec![16, 32, 64, 128, 256],
            minibatches: 4,
            sampled_orderings: 0,
            beta: 0.9,
            seed: 0,
            reference: AdaptiveParams::default(),
            range: RangeSearch::default(),
        }
    }
}

impl SuiteParams {
    /// GD's step sizes on `obj` at `theta`: `steps` geometric values from `h_max` to `h_min`
    /// in units of $\tau = 1/$[`expansion_rate`](super::expansion_rate); returns $(\tau, h\text{s})$.
    pub fn gd_steps<O: Objective + ?Sized>(&self, obj: &O, theta: ArrayView1<f64>) -> (f64, Vec<f64>) {
        let tau = 1.0 / super::expansion_rate(obj, theta);
        (tau, geometric_steps(self.h_max * tau, self.h_min * tau, self.steps))
    }

    /// Momentum's step sizes from GD's: the expansion of momentum's slow manifold is in powers
    /// of $h\lambda/(1-\beta)^2$ (see docs/theory.md), so the steps are scaled down by
    /// $0.1(1-\beta)^2$ to stay inside it.
    pub fn momentum_steps(&self, gd_steps: &[f64]) -> Vec<f64> {
        gd_steps.iter().map(|h| h * 0.1 * (1.0 - self.beta).powi(2)).collect()
    }

    /// SGD's minibatches (an equal partition, seeded) and step sizes on `fs` at `theta`: an
    /// epoch lasts $mh$, so the steps are $m$ times smaller than GD's for the same time scale,
    /// in units of $1/\text{rate}$ with the rate the largest over the full loss ($1/\tau$) and
    /// every minibatch loss (which can be sharper). Returns (minibatches, rate, step sizes).
    ///
    /// # Errors
    /// As [`equal_partition`].
    pub fn sgd_steps<O: FiniteSum + ?Sized>(
        &self,
        fs: &O,
        theta: ArrayView1<f64>,
        tau: f64,
    ) -> Result<(Vec<Vec<usize>>, f64, Vec<f64>)> {
        let batches = equal_partition(fs.n_examples(), self.minibatches, self.seed)?;
        let m = self.minibatches as f64;
        let rate = batches
            .iter()
            .map(|b| super::expansion_rate(&Minibatch { inner: fs, batch: b }, theta))
            .fold(1.0 / tau, f64::max);
        let hs = geometric_steps(self.h_max / rate, self.h_min / rate, self.steps).iter().map(|h| h / m).collect();
        Ok((batches, rate, hs))
    }
}

/// The burn networks the suite runs on (`fullbatch bea --network`, in a build with the `burn`
/// feature: `deep::bea_suite::suite_network` builds them). The names are here, in
/// every build, so that a build without burn can list them and say what it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuiteNetwork {
    /// The catalogue's `mlp-tanh-mse` written in burn ([`crate::deep::mlp::BurnMlp`]): every
    /// number should equal the toy model's.
    BurnMlpTanhMse,
    /// A ResNet of width 4 with stages [1, 1] and GELU, on 8 synthetic 8x8 images of 4
    /// classes, BatchNorm in train mode over 4 groups of 2 images (ghost BatchNorm: the
    /// finite sum SGD with 4 minibatches sees).
    ResnetGelu,
    /// The same ResNet with softplus.
    ResnetSoftplus,
}

impl Choice for SuiteNetwork {
    const WHAT: &'static str = "network";
    const ALL: &'static [Self] =
        &[SuiteNetwork::BurnMlpTanhMse, SuiteNetwork::ResnetGelu, SuiteNetwork::ResnetSoftplus];

    fn name(self) -> &'static str {
        match self {
            SuiteNetwork::BurnMlpTanhMse => "burn-mlp-tanh-mse",
            SuiteNetwork::ResnetGelu => "resnet-gelu",
            SuiteNetwork::ResnetSoftplus => "resnet-softplus",
        }
    }

    fn description(self) -> &'static str {
        match self {
            SuiteNetwork::BurnMlpTanhMse => "mlp-tanh-mse written in burn (f64 on Flex); must agree with the toy model",
            SuiteNetwork::ResnetGelu => {
                "ResNet width 4, stages [1, 1], GELU, 8 synthetic 8x8 images, BatchNorm over 4 groups (f64 on Flex)"
            }
            SuiteNetwork::ResnetSoftplus => "The same ResNet with softplus",
        }
    }
}

/// One row of the suite's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// Check name, e.g. `gd_local_order_first`.
    pub check: String,
    /// Model name.
    pub model: String,
    /// The measured value.
    #[serde(deserialize_with = "f64_or_nan")]
    pub measured: f64,
    /// Its standard error.
    #[serde(deserialize_with = "f64_or_nan")]
    pub stderr: f64,
    /// The value the theory predicts.
    pub expected: f64,
    /// Largest accepted $|\text{measured} - \text{expected}|$.
    pub tolerance: f64,
    /// Whether the measurement is within tolerance and its reference flow was accurate
    /// (reference error bound below 1% of the measured effect).
    pub pass: bool,
    /// Largest ratio of the reference flow's error bound to the measured quantity.
    #[serde(deserialize_with = "f64_or_nan")]
    pub reference_error_ratio: f64,
    /// For the coefficient checks: the curve $c(h)$ the value is extrapolated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<CoefficientCurve>,
}

/// A coefficient's $c(h)$ and the unit its step sizes are naturally measured in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoefficientCurve {
    /// The step sizes' unit: $\tau$ for GD, $1/(m\,\text{rate})$ for SGD (so that $h$ over
    /// it is the epoch time over $\tau_{\text{SGD}}$), $(1-\beta)^2\tau$ for momentum.
    pub step_unit: f64,
    /// The measurement.
    pub measurement: CoefficientMeasurement,
}

/// Tolerance on fitted orders (the 0.15).
const ORDER_TOLERANCE: f64 = 0.15;
/// Relative tolerance on GD's coefficient.
const GD_COEFFICIENT_TOLERANCE: f64 = 0.01;
/// Relative tolerance on SGD's and the momentum coefficients.
const COEFFICIENT_TOLERANCE: f64 = 0.02;
/// A reference flow must be 100x more accurate than the effect it measures.
const REFERENCE_RATIO: f64 = 0.01;

fn row(
    check: &str,
    model: &str,
    measured: f64,
    stderr: f64,
    expected: f64,
    tolerance: f64,
    reference_error_ratio: f64,
) -> Check {
    Check {
        check: check.into(),
        model: model.into(),
        measured,
        stderr,
        expected,
        tolerance,
        pass: (measured - expected).abs() <= tolerance && reference_error_ratio < REFERENCE_RATIO,
        reference_error_ratio,
        curve: None,
    }
}

/// The row of a coefficient check, with its curve.
fn coefficient_row(
    check: &str,
    model: &str,
    c: CoefficientMeasurement,
    expected: f64,
    tolerance: f64,
    step_unit: f64,
) -> Check {
    let mut r = row(check, model, c.estimate, c.stderr, expected, tolerance, c.reference_error_ratio);
    r.curve = Some(CoefficientCurve { step_unit, measurement: c });
    r
}

/// The default models: the catalogue's quadratic, logistic regression and tanh MLP, and a tanh
/// MLP 784-8-10 on 64 Fashion-MNIST training images when the data set is installed (its
/// absence is reported by the caller).
///
/// # Errors
/// As the model constructors and the Fashion-MNIST loader.
pub fn suite_models(kinds: &[ModelKind], fashion_mnist: bool, seed: u64) -> Result<Vec<SuiteModel>> {
    let mut out = Vec::new();
    for &kind in kinds {
        out.push(SuiteModel::from_instance(kind.name(), kind.instance(seed)?));
    }
    if fashion_mnist {
        let data = fashion_mnist::load(
            fashion_mnist::Split::Train,
            &fashion_mnist::LoadOptions { subset: Some(64), seed, ..fashion_mnist::LoadOptions::default() },
        )?;
        let net = models::mlp(&data, &[8], 10, Activation::Tanh, OutputLoss::SoftmaxCrossEntropy)?;
        out.push(SuiteModel::from_instance("fashion-mnist-mlp", ModelInstance::network(net, seed)));
    }
    Ok(out)
}

/// The local error of one GD step against `flow` over the suite's step sizes (in units of
/// `tau`), in its asymptotic range ([`asymptotic_order`]). The second-order flow starts from
/// steps `second_order_scale` times smaller and integrates its reference 10x tighter: its
/// effects are the smallest measured, and its next term involves fourth derivatives, which
/// the rate does not bound.
///
/// # Errors
/// As [`gd_local_order`].
pub fn local_order_curve(
    obj: &dyn Objective,
    theta: ArrayView1<f64>,
    flow: GdFlow,
    tau: f64,
    params: &SuiteParams,
) -> Result<OrderMeasurement> {
    let hs = geometric_steps(params.h_max * tau, params.h_min * tau, params.steps);
    let p = &params.reference;
    let tight = AdaptiveParams { rtol: p.rtol / 10.0, atol: p.atol / 10.0, ..p.clone() };
    let (start, reference): (Vec<f64>, _) = if flow == GdFlow::SecondOrder {
        (hs.iter().map(|h| h * params.second_order_scale).collect(), &tight)
    } else {
        (hs, p)
    };
    asymptotic_order(&start, &params.range, |hs| gd_local_order(obj, theta, flow, hs, reference))
}

/// Runs every check on every model; `progress` is called with a short label before each
/// measurement.
///
/// # Errors
/// A failed reference integration or degenerate model; a check that merely misses its
/// expectation is a row with `pass = false`, not an error.
pub fn run_suite(models: &[SuiteModel], params: &SuiteParams, mut progress: impl FnMut(&str)) -> Result<Vec<Check>> {
    let mut rows = Vec::new();
    let p = &params.reference;
    for model in models {
        let name = model.name.as_str();
        let obj = model.objective.objective();
        let theta = model.theta0.view();
        let (tau, hs) = params.gd_steps(obj, theta);

        for (check, flow) in [
            ("gd_local_order_plain", GdFlow::Plain),
            ("gd_local_order_first", GdFlow::FirstOrder),
            ("gd_local_order_second", GdFlow::SecondOrder),
        ] {
            progress(&format!("{name}: {check}"));
            let m = local_order_curve(obj, theta, flow, tau, params)?;
            rows.push(row(
                check,
                name,
                m.fit.slope,
                m.fit.slope_stderr,
                flow.local_order(),
                ORDER_TOLERANCE,
                m.reference_error_ratio,
            ));
        }
        for (check, flow, order) in
            [("gd_global_order_plain", GdFlow::Plain, 1.0), ("gd_global_order_first", GdFlow::FirstOrder, 2.0)]
        {
            progress(&format!("{name}: {check}"));
            let m = gd_global_order(obj, theta, flow, params.horizon * tau, &params.step_counts, p)?;
            rows.push(row(
                check,
                name,
                m.fit.slope,
                m.fit.slope_stderr,
                order,
                ORDER_TOLERANCE,
                m.reference_error_ratio,
            ));
        }
        progress(&format!("{name}: gd_coefficient"));
        let c = gd_coefficient(obj, theta, &hs, p)?;
        rows.push(coefficient_row("gd_coefficient", name, c, 0.25, 0.25 * GD_COEFFICIENT_TOLERANCE, tau));

        if let Some(fs) = model.objective.finite_sum() {
            let (batches, rate, sgd_hs) = params.sgd_steps(fs, theta, tau)?;
            let which = if params.sampled_orderings == 0 {
                Orderings::All
            } else {
                Orderings::Sampled { count: params.sampled_orderings, seed: params.seed }
            };
            let m = params.minibatches as f64;
            progress(&format!("{name}: sgd_epoch_order"));
            let plain = asymptotic_order(&sgd_hs, &params.range, |hs| {
                sgd_epoch_order(fs, theta, &batches, hs, false, which, p)
            })?;
            rows.push(row(
                "sgd_epoch_order_plain",
                name,
                plain.fit.slope,
                plain.fit.slope_stderr,
                2.0,
                ORDER_TOLERANCE,
                plain.reference_error_ratio,
            ));
            let first = asymptotic_order(&sgd_hs, &params.range, |hs| {
                sgd_epoch_order(fs, theta, &batches, hs, true, which, p)
            })?;
            rows.push(row(
                "sgd_epoch_order_first",
                name,
                first.fit.slope,
                first.fit.slope_stderr,
                3.0,
                ORDER_TOLERANCE,
                first.reference_error_ratio,
            ));
            progress(&format!("{name}: sgd_coefficient"));
            let s = sgd_coefficient_asymptotic(fs, theta, &batches, &sgd_hs, which, p, &params.range)?;
            let expected = 1.0 / (4.0 * m);
            let ratio = s.coefficient.reference_error_ratio;
            rows.push(coefficient_row(
                "sgd_coefficient",
                name,
                s.coefficient,
                expected,
                expected * COEFFICIENT_TOLERANCE,
                1.0 / (m * rate),
            ));
            rows.push(row("sgd_split_gd_part", name, s.gd_part, s.part_stderr.0, 1.0, COEFFICIENT_TOLERANCE, ratio));
            rows.push(row(
                "sgd_split_variance_part",
                name,
                s.variance_part,
                s.part_stderr.1,
                1.0,
                COEFFICIENT_TOLERANCE,
                ratio,
            ));
        }

        for (check, momentum) in [
            ("heavy_ball_coefficient", Momentum::HeavyBall(params.beta)),
            ("nesterov_coefficient", Momentum::Nesterov(params.beta)),
        ] {
            progress(&format!("{name}: {check}"));
            let mhs = params.momentum_steps(&hs);
            let c = momentum_coefficient(obj, theta, momentum, &mhs, p)?;
            let claim = momentum_coefficient_claim(momentum);
            let unit = (1.0 - params.beta).powi(2) * tau;
            rows.push(coefficient_row(check, name, c, claim, claim * COEFFICIENT_TOLERANCE, unit));
        }
    }
    Ok(rows)
}
