//! Backward-error analysis, measured: modified vector fields of GD, SGD and momentum, and the
//! measurements that recover their orders and coefficients from iterates.
//!
//! Notation: $g = \nabla L$, $H = \nabla^2 L$, step size $h$. The claims checked here (see
//! `docs/theory.md` for the derivations):
//! - one GD step $\theta - hg$ agrees with the flow of $-g$ to $O(h^2)$, with the flow of
//!   $-g - \frac h2 Hg$ (the gradient flow of $L + \frac h4\|g\|^2$) to $O(h^3)$, and with
//!   $-g - \frac h2 Hg - h^2(\frac13 H^2 g + \frac1{12} D^3L[g,g])$ to $O(h^4)$;
//! - one epoch of SGD over $m$ minibatches, averaged over the orderings, follows the flow of
//!   $L + \frac{h}{4m}\sum_k\|\nabla L_k\|^2$ for time $mh$ to $O(h^3)$;
//! - heavy-ball and Nesterov momentum $\beta$ follow
//!   $-\frac{1}{1-\beta}\nabla\big(L + c\,h\,\|g\|^2\big)$ on their slow manifold, with a
//!   coefficient $c$ that is measured here and compared with the claims (heavy ball: Ghosh et
//!   al. 2023; Nesterov: derived in `docs/theory.md`).
//!
//! Every reference flow is integrated with Dormand-Prince 5(4) at tolerance $10^{-12}$ and
//! again at $10^{-10}$; the difference bounds the reference's error, and each measurement
//! reports the largest ratio of that bound to the error it measures.

mod sgd;
mod suite;

pub use sgd::{Orderings, SgdMeasurement, equal_partition, orderings, sgd_coefficient, sgd_epoch, sgd_epoch_order};
pub use suite::{
    Check, CoefficientCurve, SuiteModel, SuiteNetwork, SuiteObjective, SuiteParams, local_order_curve, run_suite,
    suite_models,
};

use itertools::Itertools;
use ndarray::{Array1, ArrayView1};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize};

use crate::integrate::{AdaptiveParams, Field, dormand_prince};
use crate::objective::{FiniteSum, Objective};
use crate::optim::{Momentum, MomentumStep};
use crate::sharpness::{LanczosParams, Which, lanczos};
use crate::stats::{LinearFit, linear_fit, log_log_fit, mean_and_stderr};
use crate::{Error, Result};

/// Which flow a GD step is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GdFlow {
    /// Gradient flow $\dot\theta = -g$.
    Plain,
    /// First-order modified flow $\dot\theta = -g - \frac h2 Hg$.
    FirstOrder,
    /// Second-order modified flow $\dot\theta = -g - \frac h2 Hg - h^2(\frac13 H^2g + \frac1{12}D^3L[g,g])$.
    SecondOrder,
}

impl GdFlow {
    /// The local order of agreement with one GD step: the one-step error is $O(h^{p})$.
    pub fn local_order(self) -> f64 {
        match self {
            GdFlow::Plain => 2.0,
            GdFlow::FirstOrder => 3.0,
            GdFlow::SecondOrder => 4.0,
        }
    }
}

fn norm(x: &Array1<f64>) -> f64 {
    x.dot(x).sqrt()
}

/// The vector field of `flow` for step size `h` on `obj`.
pub fn gd_modified_field<'a, O: Objective + ?Sized>(obj: &'a O, flow: GdFlow, h: f64) -> Box<Field<'a>> {
    Box::new(move |theta: ArrayView1<f64>| {
        let g = obj.gradient(theta);
        match flow {
            GdFlow::Plain => -g,
            GdFlow::FirstOrder => {
                let hg = obj.hvp(theta, g.view());
                -(g + hg * (h / 2.0))
            }
            GdFlow::SecondOrder => {
                let hg = obj.hvp(theta, g.view());
                let hhg = obj.hvp(theta, hg.view());
                let d3 = obj.third_derivative(theta, g.view(), g.view());
                -(g + hg * (h / 2.0) + (hhg / 3.0 + d3 / 12.0) * (h * h))
            }
        }
    })
}

/// Gradient flow of $L$ scaled by `speed`: $\dot\theta = -\text{speed}\cdot g$.
pub fn scaled_gradient_field<'a, O: Objective + ?Sized>(obj: &'a O, speed: f64) -> Box<Field<'a>> {
    Box::new(move |theta: ArrayView1<f64>| obj.gradient(theta) * (-speed))
}

/// The mean gradient over `batches` and $\sum_k H_k g_k$ (with $g_k$, $H_k$ the gradient and
/// Hessian of minibatch $k$).
fn batch_gradient_and_curvature<O: FiniteSum + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    batches: &[Vec<usize>],
) -> (Array1<f64>, Array1<f64>) {
    let mut g = Array1::zeros(obj.dim());
    let mut s = Array1::zeros(obj.dim());
    for b in batches {
        let gk = obj.batch_gradient(theta, b);
        s += &obj.batch_hvp(theta, b, gk.view());
        g += &gk;
    }
    (g / batches.len() as f64, s)
}

/// SGD's modified flow for minibatches `batches` (equal sizes, a partition of the data) and
/// step `h`: the gradient flow of $L + \frac{h}{4m}\sum_k \|\nabla L_k\|^2$,
/// $\dot\theta = -g - \frac{h}{2m}\sum_k H_k g_k$ (Smith, Dherin, Barrett & De 2021), with $g$ the
/// mean of the minibatch gradients.
pub fn sgd_modified_field<'a, O: FiniteSum + ?Sized>(obj: &'a O, batches: &'a [Vec<usize>], h: f64) -> Box<Field<'a>> {
    let m = batches.len() as f64;
    Box::new(move |theta: ArrayView1<f64>| {
        let (g, s) = batch_gradient_and_curvature(obj, theta, batches);
        -(g + s * (h / (2.0 * m)))
    })
}

/// The claimed coefficient $c$ of the momentum modified loss $L + c\,h\|g\|^2$ (flow
/// $\dot\theta = -\frac1{1-\beta}\nabla(\cdot)$), which the checks measure:
/// [`Momentum::modified_loss_coefficient`].
pub fn momentum_coefficient_claim(momentum: Momentum) -> f64 {
    momentum.modified_loss_coefficient()
}

/// The modified flow of momentum on its slow manifold with coefficient `coefficient`:
/// $\dot\theta = -\frac{1}{1-\beta}\big(g + 2c\,h\,Hg\big)$, the gradient flow of
/// $L + c\,h\|g\|^2$ sped up by $1/(1-\beta)$. Use [`momentum_coefficient_claim`] for the
/// published $c$.
pub fn momentum_modified_field<'a, O: Objective + ?Sized>(
    obj: &'a O,
    beta: f64,
    coefficient: f64,
    h: f64,
) -> Box<Field<'a>> {
    Box::new(move |theta: ArrayView1<f64>| {
        let g = obj.gradient(theta);
        let hg = obj.hvp(theta, g.view());
        (g + hg * (2.0 * coefficient * h)) * (-1.0 / (1.0 - beta))
    })
}

/// A reference flow and a bound on its error.
#[derive(Debug, Clone)]
pub struct ReferenceFlow {
    /// $\varphi_t(\theta)$ at the tight tolerance.
    pub state: Array1<f64>,
    /// The larger of $\|\varphi^{\text{tight}} - \varphi^{\text{loose}}\|$ (the loose run at 100x
    /// the tolerances) and the tight run's summed embedded error estimates: a pessimistic
    /// bound on the tight run's error (the second term matters when both runs take the same
    /// steps).
    pub error_bound: f64,
}

/// Integrates `field` from `theta` over time `t` at `params` and at 100x looser tolerances.
///
/// # Errors
/// As [`dormand_prince`].
pub fn reference_flow(field: &Field, theta: ArrayView1<f64>, t: f64, params: &AdaptiveParams) -> Result<ReferenceFlow> {
    let (state, info) = dormand_prince(field, theta, t, params)?;
    let loose = AdaptiveParams { rtol: params.rtol * 100.0, atol: params.atol * 100.0, ..params.clone() };
    let (other, _) = dormand_prince(field, theta, t, &loose)?;
    let error_bound = norm(&(&state - &other)).max(info.error_estimate);
    Ok(ReferenceFlow { state, error_bound })
}

/// Errors of an iteration against a flow for a sequence of step sizes, and the fitted order.
#[derive(Debug, Clone, Serialize)]
pub struct OrderMeasurement {
    /// Step sizes.
    pub hs: Vec<f64>,
    /// $\|\text{iterate} - \text{flow}\|$ for each step size.
    pub errors: Vec<f64>,
    /// Least squares of $\log(\text{error})$ on $\log h$: the slope is the measured order.
    pub fit: LinearFit,
    /// $\max_h$ (reference error bound / measured error): the reference is trustworthy when
    /// this is far below 1.
    pub reference_error_ratio: f64,
    /// How many times [`asymptotic_order`] moved the range of step sizes down.
    pub shrinks: usize,
}

/// Parameters of [`asymptotic_order`].
#[derive(Debug, Clone, Serialize)]
pub struct RangeSearch {
    /// Largest number of times the range is moved down.
    pub max_shrinks: usize,
    /// Each move multiplies every step size by this.
    pub factor: f64,
    /// The range is accepted when the slopes fitted on its larger and its smaller half differ
    /// by at most this.
    pub slope_spread: f64,
    /// The search also stops when the reference error ratio exceeds this (smaller steps would
    /// measure the reference's error, not the method's).
    pub max_reference_ratio: f64,
    /// For coefficients: the range is accepted when the intercepts extrapolated from its larger
    /// and its smaller half differ by at most this, relative to the coefficient (absolute for
    /// the split weights, which are near 1).
    pub coefficient_spread: f64,
}

impl Default for RangeSearch {
    fn default() -> Self {
        RangeSearch {
            max_shrinks: 4,
            factor: 0.3,
            slope_spread: 0.1,
            max_reference_ratio: 1e-3,
            coefficient_spread: 0.005,
        }
    }
}

/// Measures an order in its asymptotic range. `measure` is run on `hs`; while the errors do
/// not yet follow one power law (the slopes fitted on the larger and the smaller half of the
/// range differ by more than `search.slope_spread`), the whole range is multiplied by
/// `search.factor` and measured again. The criterion uses only the errors' self-consistency,
/// never the order the theory predicts, so a wrong theory still fails. Near-cancellation of a
/// leading coefficient (which pushes the asymptotic range to smaller steps) is the usual reason
/// for a move.
///
/// # Errors
/// Whatever `measure` returns.
pub fn asymptotic_order(
    hs: &[f64],
    search: &RangeSearch,
    mut measure: impl FnMut(&[f64]) -> Result<OrderMeasurement>,
) -> Result<OrderMeasurement> {
    let mut hs = hs.to_vec();
    let mut shrinks = 0;
    loop {
        let mut m = measure(&hs)?;
        m.shrinks = shrinks;
        let half = hs.len().div_ceil(2);
        let large = log_log_fit(&m.hs[..half], &m.errors[..half]).map(|f| f.slope);
        let small = log_log_fit(&m.hs[hs.len() - half..], &m.errors[hs.len() - half..]).map(|f| f.slope);
        let settled = match (large, small) {
            (Some(a), Some(b)) => (a - b).abs() <= search.slope_spread,
            _ => true,
        };
        if settled || shrinks == search.max_shrinks || m.reference_error_ratio > search.max_reference_ratio {
            return Ok(m);
        }
        hs.iter_mut().for_each(|h| *h *= search.factor);
        shrinks += 1;
    }
}

/// Whether the line through `(hs, values)` extrapolates to the same intercept from its larger
/// and its smaller half, to within `tolerance`.
fn extrapolation_settled(hs: &[f64], values: &[f64], tolerance: f64) -> bool {
    let half = hs.len().div_ceil(2);
    let n = hs.len();
    match (linear_fit(&hs[..half], &values[..half]), linear_fit(&hs[n - half..], &values[n - half..])) {
        (Some(a), Some(b)) => (a.intercept - b.intercept).abs() <= tolerance,
        _ => true,
    }
}

/// [`sgd_coefficient`] in its asymptotic range: the range of step sizes moves down by
/// `search.factor` (at most `search.max_shrinks` times) until the coefficient and both split
/// weights extrapolate to the same values from either half of the range
/// (`search.coefficient_spread`), or the reference flow's error would start to matter.
///
/// # Errors
/// As [`sgd_coefficient`].
pub fn sgd_coefficient_asymptotic<O: FiniteSum + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    batches: &[Vec<usize>],
    hs: &[f64],
    which: Orderings,
    params: &AdaptiveParams,
    search: &RangeSearch,
) -> Result<SgdMeasurement> {
    let mut hs = hs.to_vec();
    let mut shrinks = 0;
    loop {
        let m = sgd_coefficient(obj, theta, batches, &hs, which, params)?;
        let c = &m.coefficient;
        let tol = search.coefficient_spread;
        let part = |k: usize| m.split_per_h.iter().map(|p| if k == 0 { p.0 } else { p.1 }).collect::<Vec<_>>();
        let settled = extrapolation_settled(&hs, &c.per_h, tol * c.estimate.abs())
            && (m.split_per_h.is_empty()
                || (extrapolation_settled(&hs, &part(0), tol) && extrapolation_settled(&hs, &part(1), tol)));
        if settled || shrinks == search.max_shrinks || c.reference_error_ratio > search.max_reference_ratio {
            return Ok(SgdMeasurement { shrinks, ..m });
        }
        hs.iter_mut().for_each(|h| *h *= search.factor);
        shrinks += 1;
    }
}

fn order_measurement(hs: &[f64], errors: Vec<f64>, ratios: &[f64]) -> Result<OrderMeasurement> {
    let fit = log_log_fit(hs, &errors)
        .ok_or_else(|| Error::invalid("hs", "need at least two distinct step sizes with non-zero errors"))?;
    Ok(OrderMeasurement {
        hs: hs.to_vec(),
        errors,
        fit,
        reference_error_ratio: ratios.iter().cloned().fold(0.0, f64::max),
        shrinks: 0,
    })
}

/// One-step error $\|\theta - hg(\theta) - \varphi^{\text{flow}}_h(\theta)\|$ for each `h`.
///
/// # Errors
/// As [`reference_flow`], or fewer than two usable step sizes.
pub fn gd_local_order<O: Objective + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    flow: GdFlow,
    hs: &[f64],
    params: &AdaptiveParams,
) -> Result<OrderMeasurement> {
    let g = obj.gradient(theta);
    let mut errors = Vec::new();
    let mut ratios = Vec::new();
    for &h in hs {
        let step = &theta - &(&g * h);
        let reference = reference_flow(&gd_modified_field(obj, flow, h), theta, h, params)?;
        let e = norm(&(step - &reference.state));
        ratios.push(reference.error_bound / e);
        errors.push(e);
    }
    order_measurement(hs, errors, &ratios)
}

/// Global error at time `horizon` after $N$ GD steps of size $h = \text{horizon}/N$, for each
/// $N$ in `step_counts`, against `flow`: $O(h)$ for the plain flow, $O(h^2)$ for the first-order
/// modified flow.
///
/// # Errors
/// As [`reference_flow`], or fewer than two usable step counts.
pub fn gd_global_order<O: Objective + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    flow: GdFlow,
    horizon: f64,
    step_counts: &[usize],
    params: &AdaptiveParams,
) -> Result<OrderMeasurement> {
    let mut hs = Vec::new();
    let mut errors = Vec::new();
    let mut ratios = Vec::new();
    for &n in step_counts {
        let h = horizon / n as f64;
        let mut x = theta.to_owned();
        for _ in 0..n {
            let g = obj.gradient(x.view());
            x.scaled_add(-h, &g);
        }
        let reference = reference_flow(&gd_modified_field(obj, flow, h), theta, horizon, params)?;
        let e = norm(&(x - &reference.state));
        hs.push(h);
        ratios.push(reference.error_bound / e);
        errors.push(e);
    }
    order_measurement(&hs, errors, &ratios)
}

/// An `f64` written by `serde_json`, which writes NaN and infinities as `null`: `null` reads
/// back as NaN.
pub(crate) fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A coefficient measured at several step sizes and extrapolated to $h \to 0$.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoefficientMeasurement {
    /// Step sizes.
    pub hs: Vec<f64>,
    /// The coefficient measured at each step size, $c(h) = c + O(h)$.
    pub per_h: Vec<f64>,
    /// The extrapolated coefficient (intercept of the line through $(h, c(h))$, or the mean of
    /// per-ordering intercepts for sampled orderings).
    #[serde(deserialize_with = "f64_or_nan")]
    pub estimate: f64,
    /// Its standard error.
    #[serde(deserialize_with = "f64_or_nan")]
    pub stderr: f64,
    /// At the smallest $h$: the part of the measured displacement not along the regressor,
    /// relative to the displacement ($O(h)$ when the modified field is along the regressor).
    #[serde(deserialize_with = "f64_or_nan")]
    pub unexplained: f64,
    /// As in [`OrderMeasurement::reference_error_ratio`].
    #[serde(deserialize_with = "f64_or_nan")]
    pub reference_error_ratio: f64,
}

/// $-\langle r, d\rangle / (\text{scale}\cdot\|d\|^2)$ and $\|r - \mathrm{proj}_d r\|/\|r\|$.
fn project(r: &Array1<f64>, d: &Array1<f64>, scale: f64) -> (f64, f64) {
    let dd = d.dot(d);
    let a = r.dot(d) / dd;
    let residual = norm(&(r - &(d * a))) / norm(r).max(f64::MIN_POSITIVE);
    (-a / scale, residual)
}

fn extrapolate(hs: &[f64], per_h: &[f64]) -> Result<(f64, f64)> {
    let fit = linear_fit(hs, per_h).ok_or_else(|| Error::invalid("hs", "need at least two distinct step sizes"))?;
    Ok((fit.intercept, fit.intercept_stderr))
}

/// A coefficient's measurements, step size by step size.
struct CoefficientSeries {
    hs: Vec<f64>,
    per_h: Vec<f64>,
    ratio: f64,
    unexplained: f64,
    smallest: f64,
}

impl CoefficientSeries {
    fn new() -> Self {
        CoefficientSeries {
            hs: Vec::new(),
            per_h: Vec::new(),
            ratio: 0.0,
            unexplained: f64::NAN,
            smallest: f64::INFINITY,
        }
    }

    /// Records $c(h) = -\langle r, d\rangle/(\text{scale}\,\|d\|^2)$ for the displacement `r`
    /// measured against a reference flow with error bound `error_bound`; returns $c(h)$.
    fn record(&mut self, h: f64, r: &Array1<f64>, d: &Array1<f64>, scale: f64, error_bound: f64) -> f64 {
        let (c, residual) = project(r, d, scale);
        self.ratio = self.ratio.max(error_bound / norm(r));
        if h < self.smallest {
            self.smallest = h;
            self.unexplained = residual;
        }
        self.hs.push(h);
        self.per_h.push(c);
        c
    }

    /// The measurement with the given estimate and standard error.
    fn with_estimate(self, estimate: f64, stderr: f64) -> CoefficientMeasurement {
        CoefficientMeasurement {
            hs: self.hs,
            per_h: self.per_h,
            estimate,
            stderr,
            unexplained: self.unexplained,
            reference_error_ratio: self.ratio,
        }
    }

    /// The measurement extrapolated linearly to $h = 0$.
    fn extrapolated(self) -> Result<CoefficientMeasurement> {
        let (estimate, stderr) = extrapolate(&self.hs, &self.per_h)?;
        Ok(self.with_estimate(estimate, stderr))
    }
}

/// GD's implicit-regulariser coefficient, derived from iterates: with
/// $r(h) = \theta - hg - \varphi^{\text{plain}}_h(\theta) = -2c\,h^2 Hg + O(h^3)$,
/// $c(h) = -\langle r, Hg\rangle / (2h^2\|Hg\|^2)$, extrapolated linearly to $h = 0$.
/// Backward-error analysis predicts $c = 1/4$ (the modified loss $L + \frac h4\|g\|^2$).
///
/// # Errors
/// As [`reference_flow`]; [`Error::InvalidParameter`] if $Hg = 0$.
pub fn gd_coefficient<O: Objective + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    hs: &[f64],
    params: &AdaptiveParams,
) -> Result<CoefficientMeasurement> {
    let g = obj.gradient(theta);
    let hg = obj.hvp(theta, g.view());
    if norm(&hg) == 0.0 {
        return Err(Error::invalid("theta", "H g = 0: no implicit regulariser to measure"));
    }
    let field = gd_modified_field(obj, GdFlow::Plain, 0.0);
    let mut series = CoefficientSeries::new();
    for &h in hs {
        let reference = reference_flow(&field, theta, h, params)?;
        let r = &theta - &(&g * h) - &reference.state;
        series.record(h, &r, &hg, 2.0 * h * h, reference.error_bound);
    }
    series.extrapolated()
}

/// Steps of burn-in after which the fast mode of momentum $\beta$ has decayed below $10^{-9}$
/// of its start: $\lceil \ln 10^{-9} / \ln\beta \rceil$.
pub fn momentum_burn_in(beta: f64) -> usize {
    if beta <= 0.0 { 0 } else { ((1e-9f64).ln() / beta.ln()).ceil() as usize }
}

/// The momentum coefficient $c$, derived from iterates on the slow manifold. Start with the
/// buffer at its slow-manifold value $g/(1-\beta)$ (to first order), run
/// [`momentum_burn_in`] steps so the fast mode ($\propto\beta^t$) is gone, then compare one more
/// step with the flow of $-g/(1-\beta)$ over time $h$:
/// $r = \theta_{t+1} - \varphi_h(\theta_t) = -\frac{2c}{1-\beta}h^2 Hg + O(h^3)$, so
/// $c(h) = -(1-\beta)\langle r, Hg\rangle/(2h^2\|Hg\|^2)$, extrapolated to $h = 0$.
///
/// # Errors
/// As [`reference_flow`]; [`Error::InvalidParameter`] without momentum.
pub fn momentum_coefficient<O: Objective + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    momentum: Momentum,
    hs: &[f64],
    params: &AdaptiveParams,
) -> Result<CoefficientMeasurement> {
    let beta = match momentum {
        Momentum::HeavyBall(b) | Momentum::Nesterov(b) if (0.0..1.0).contains(&b) => b,
        _ => return Err(Error::invalid("momentum", "needs heavy ball or Nesterov with beta in [0, 1)")),
    };
    let flow = scaled_gradient_field(obj, 1.0 / (1.0 - beta));
    let burn_in = momentum_burn_in(beta);
    let mut series = CoefficientSeries::new();
    // buffer_{-1} = g0 / (1 - beta) makes the first buffer beta g0/(1-beta) + g0 = g0/(1-beta).
    let slow_buffer = obj.gradient(theta) / (1.0 - beta);
    for &h in hs {
        let mut x = theta.to_owned();
        let mut state = MomentumStep::new(momentum);
        state.buffer = Some(slow_buffer.clone());
        for _ in 0..burn_in {
            let g = obj.gradient(x.view());
            state.apply(&mut x, g.view(), h);
        }
        let start = x.clone();
        let g = obj.gradient(start.view());
        state.apply(&mut x, g.view(), h);
        if !x.iter().all(|v| v.is_finite()) {
            return Err(Error::Diverged { step: burn_in, quantity: "momentum iterate".into() });
        }
        let hg = obj.hvp(start.view(), g.view());
        let reference = reference_flow(&flow, start.view(), h, params)?;
        let r = x - &reference.state;
        series.record(h, &r, &hg, 2.0 * h * h / (1.0 - beta), reference.error_bound);
    }
    series.extrapolated()
}

/// The largest $|\lambda|$ of the Hessian at `theta`, by Lanczos on the exact HVP to $10^{-6}$
/// relative (seeded; 0 if the Lanczos budget runs out, which the callers' other terms cover).
pub fn largest_curvature<O: Objective + ?Sized>(obj: &O, theta: ArrayView1<f64>) -> f64 {
    let op = obj.hessian_at(theta);
    let params = LanczosParams { k: 1, which: Which::LargestMagnitude, tol: 1e-6, ..LanczosParams::default() };
    lanczos(&*op, &params).ok().and_then(|e| e.values.first().map(|l| l.abs())).unwrap_or(0.0)
}

/// The rate at which the backward-error expansion at `theta` loses accuracy, in units of
/// 1/time: $\max(\lambda_{\max}, \|H^2 g\|/\|Hg\|, \|D^3L[g,g]\|/\|Hg\|)$. The ratio of the
/// $h^3$ to the $h^2$ term of a GD step's deviation from the gradient flow is
/// $\frac h3 (H^2g + D^3L[g,g])/Hg$, so steps $h \le 0.1/\text{rate}$ keep each measured
/// expansion within a few percent of its leading term. The curvature $\lambda_{\max}$ alone
/// is not enough: where $g$ lies near the Hessian's null space (logistic tails), the
/// third-derivative term dominates.
pub fn expansion_rate<O: Objective + ?Sized>(obj: &O, theta: ArrayView1<f64>) -> f64 {
    let g = obj.gradient(theta);
    let hg = obj.hvp(theta, g.view());
    let hhg = obj.hvp(theta, hg.view());
    let d3 = obj.third_derivative(theta, g.view(), g.view());
    let n = norm(&hg).max(f64::MIN_POSITIVE);
    largest_curvature(obj, theta).max(norm(&hhg) / n).max(norm(&d3) / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_reduce_to_gd_without_momentum() {
        assert_eq!(momentum_coefficient_claim(Momentum::HeavyBall(0.0)), 0.25);
        assert_eq!(momentum_coefficient_claim(Momentum::Nesterov(0.0)), 0.25);
        assert_eq!(orderings(3, Orderings::All).len(), 6);
        assert!(equal_partition(10, 3, 0).is_err());
        let p = equal_partition(12, 3, 0).unwrap();
        let mut all: Vec<usize> = p.concat();
        all.sort_unstable();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
    }
}
