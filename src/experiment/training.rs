//! One toy run on the [`crate::engine`]: the stepper (GD, SGD on reshuffled minibatches, or GD
//! on a regularised loss), the evaluations with their λ_max and divergence stop, and the gradient
//! flows advanced beside GD for the flow comparisons.

use std::time::Instant;

use ndarray::Array1;

use super::{
    DIVERGED_FACTOR, Evaluation, ExperimentConfig, FlowComparison, MeasureConfig, Regulariser, RunResult, Variant,
};
use crate::bea::{GdFlow, gd_modified_field};
use crate::data::Dataset;
use crate::engine::{Control, Observer, Stepper, drive};
use crate::integrate::{AdaptiveParams, dormand_prince};
use crate::models::Network;
use crate::objective::{FiniteSum, GradientNormPenalty, MinibatchGradientPenalty, Objective};
use crate::optim::{BatchSampler, Momentum, MomentumStep, Sampling};
use crate::sharpness::trace::{DensityParams, hutch_plus_plus, spectral_density};
use crate::sharpness::{LanczosParams, lanczos};
use crate::{Error, Result};

/// One variant with one seed: the evaluations along the way and the result. `flow` is the
/// gradient flow from this seed's start, present when the config asks for flow comparisons (made
/// with plain GD runs only).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_one(
    config: &ExperimentConfig,
    variant: &Variant,
    seed: u64,
    net: &Network,
    test_net: &Network,
    train: &Dataset,
    test: &Dataset,
    flow: Option<&mut GradientFlowCache<'_>>,
) -> Result<(RunResult, Vec<Evaluation>)> {
    let started = Instant::now();
    let train_labels = train.labels().ok_or_else(|| Error::invalid("data", "training set has no class labels"))?;
    let test_labels = test.labels().ok_or_else(|| Error::invalid("data", "test set has no class labels"))?;
    let theta = net.initial_parameters(seed);
    let n = net.n_examples();
    let sampler = match variant.batch_size {
        Some(b) => Some(BatchSampler::new(Sampling::Reshuffle { batch_size: b }, n, seed)?),
        None => None,
    };
    let blocks: Vec<Vec<usize>> = match variant.regulariser_batch_size {
        Some(b) => (0..n / b).map(|k| (k * b..(k + 1) * b).collect()).collect(),
        None => Vec::new(),
    };
    // "In practice": a fresh random partition into the same number of blocks at every step, the
    // first one drawn now (used by step 0 and the evaluation before it).
    let mut block_sampler = match (variant.regulariser_reshuffle, variant.regulariser_batch_size) {
        (true, Some(b)) => Some(BatchSampler::new(Sampling::Reshuffle { batch_size: b }, n, seed)?),
        _ => None,
    };
    let blocks = match &mut block_sampler {
        Some(s) => random_partition(s),
        None => blocks,
    };
    let sgd_penalty =
        MinibatchGradientPenalty { inner: net, coefficient: variant.lr / (4.0 * blocks.len().max(1) as f64), blocks };
    let gd_penalty = GradientNormPenalty { inner: net, coefficient: variant.lr / 4.0 };
    let measure = &config.measure;
    let evaluate = |stepper: &ToyStepper<'_>, step: usize, warm: &mut WarmStarts| -> Result<Evaluation> {
        let theta = &stepper.theta;
        let (train_loss, g) = net.loss_and_gradient(theta.view());
        let (lambda_max, lambda_residual) = if measure.sharpness {
            top_eigenvalue(net, theta, measure.sharpness_tol, seed, 0, &mut warm.loss)?
        } else {
            (None, None)
        };
        let (lambda_max_penalised, lambda_penalised_residual) = match stepper.regularised_objective() {
            Some(objective) if measure.penalised_sharpness => {
                // The sgd penalty's HVP is a central difference of its gradient: Lanczos's
                // residual stagnates near 1e-7 relative (measured on the tests' tiny networks),
                // so no tolerance below 1e-5, and the best pair is kept (with its residual) when
                // 1,000 products do not reach it.
                let tol = measure.sharpness_tol.max(1e-5);
                top_eigenvalue(objective, theta, tol, seed, 1_000, &mut warm.penalised)?
            }
            _ => (None, None),
        };
        Ok(Evaluation {
            variant: variant.label.clone(),
            seed,
            step,
            train_loss,
            train_accuracy: net.accuracy(theta.view(), train.inputs.view(), train_labels),
            test_loss: test_net.loss(theta.view()),
            test_accuracy: test_net.accuracy(theta.view(), test.inputs.view(), test_labels),
            gradient_norm: g.dot(&g).sqrt(),
            lambda_max,
            lambda_residual,
            lambda_max_penalised,
            lambda_penalised_residual,
            flow: None,
            seconds: started.elapsed().as_secs_f64(),
        })
    };
    let theta0 = theta.clone();
    let mut flows = flow
        .filter(|_| {
            variant.batch_size.is_none()
                && variant.regulariser == Regulariser::None
                && variant.momentum == Momentum::None
        })
        .map(|plain| Flows::new(plain, &theta0, variant.lr, measure));
    let mut stepper = ToyStepper {
        net,
        theta,
        lr: variant.lr,
        sampler,
        regulariser: variant.regulariser,
        sgd_penalty,
        gd_penalty,
        block_sampler,
        momentum: MomentumStep::new(variant.momentum),
    };
    let mut warm = WarmStarts::default();
    let mut first = evaluate(&stepper, 0, &mut warm)?;
    if let Some(f) = &mut flows {
        first.flow = Some(f.compare(&stepper.theta, &theta0, 0)?);
    }
    let first_loss = first.train_loss;
    let mut evaluator = ToyEvaluations {
        every: variant.every.unwrap_or(measure.every),
        steps: variant.steps,
        evaluate,
        warm,
        first_loss,
        flows,
        flow_until: measure.flow_until,
        theta0: &theta0,
        evaluations: vec![first],
    };
    let end = drive(&mut stepper, 0, variant.steps, &mut [&mut evaluator]);
    let diverged = match end.result {
        Ok(Control::Continue) => None,
        Ok(Control::Stop(reason)) => Some(reason),
        Err(Error::Diverged { step, quantity }) => Some(format!("{quantity} at step {step}")),
        Err(e) => return Err(e),
    };
    let (theta, evaluations) = (stepper.theta, evaluator.evaluations);
    let trace = if config.measure.trace_budget >= 6 && diverged.is_none() {
        let op = net.hessian_at(theta.view());
        let t = hutch_plus_plus(&*op, config.measure.trace_budget, seed)?;
        Some((t.estimate, t.stderr))
    } else {
        None
    };
    let density = if config.measure.density && diverged.is_none() && config.seeds.first() == Some(&seed) {
        let op = net.hessian_at(theta.view());
        Some(spectral_density(&*op, &DensityParams { seed, ..DensityParams::default() })?)
    } else {
        None
    };
    let last = evaluations.last().cloned().ok_or_else(|| Error::invalid("steps", "no evaluation"))?;
    Ok((RunResult { variant: variant.label.clone(), seed, last, trace, diverged, density }, evaluations))
}

/// The toy training state: one step of GD, of SGD on the sampler's next minibatch, or of GD
/// on a regularised loss.
struct ToyStepper<'a> {
    net: &'a Network,
    theta: Array1<f64>,
    lr: f64,
    sampler: Option<BatchSampler>,
    regulariser: Regulariser,
    sgd_penalty: MinibatchGradientPenalty<'a, Network>,
    gd_penalty: GradientNormPenalty<&'a Network>,
    /// Draws the `sgd` penalty's blocks anew before each step after the first (`regulariser_reshuffle`).
    block_sampler: Option<BatchSampler>,
    /// The momentum buffer (unused for plain GD and SGD, which keep their original update).
    momentum: MomentumStep,
}

impl ToyStepper<'_> {
    /// The regularised loss a full-batch variant with an explicit regulariser descends (with the
    /// blocks of the step just taken); `None` for plain GD and SGD.
    fn regularised_objective(&self) -> Option<&dyn Objective> {
        match (&self.sampler, self.regulariser) {
            (None, Regulariser::Sgd) => Some(&self.sgd_penalty),
            (None, Regulariser::Gd) => Some(&self.gd_penalty),
            _ => None,
        }
    }
}

/// The seeded sampler's next epoch: a random partition of the examples into blocks of its batch
/// size (the remainder dropped).
fn random_partition(sampler: &mut BatchSampler) -> Vec<Vec<usize>> {
    (0..sampler.steps_per_epoch()).filter_map(|_| sampler.next_batch()).collect()
}

/// Warm starts of the two λ_max trackings: the loss's and the regularised loss's.
#[derive(Default)]
struct WarmStarts {
    loss: Option<Array1<f64>>,
    penalised: Option<Array1<f64>>,
}

/// $\lambda_{\max}$ of `objective`'s Hessian at `theta` and its Lanczos residual (`None`s when
/// Lanczos returned no pair), warm-started from (and updating) `warm`. `budget` > 0: at most
/// that many products, then the best pair with its residual (0: Lanczos's default budget, and
/// only a converged pair).
fn top_eigenvalue(
    objective: &dyn Objective,
    theta: &Array1<f64>,
    tol: f64,
    seed: u64,
    budget: usize,
    warm: &mut Option<Array1<f64>>,
) -> Result<(Option<f64>, Option<f64>)> {
    let op = objective.hessian_at(theta.view());
    let mut params = LanczosParams { k: 1, tol, seed, start: warm.clone(), ..LanczosParams::default() };
    if budget > 0 {
        params.max_applications = budget;
        params.keep_unconverged = true;
    }
    let e = lanczos(&*op, &params)?;
    *warm = (e.vectors.ncols() > 0).then(|| e.vectors.column(0).to_owned());
    Ok((e.values.first().copied(), e.residuals.first().copied()))
}

impl Stepper for ToyStepper<'_> {
    type Record = ();

    /// # Errors
    /// [`Error::Diverged`] for a non-finite gradient or iterate (quantity and the 0-based step).
    fn step(&mut self, step: usize) -> Result<()> {
        if let Some(s) = &mut self.block_sampler
            && step > 0
        {
            self.sgd_penalty.blocks = random_partition(s);
        }
        let theta = self.theta.view();
        let g = match (&mut self.sampler, self.regulariser) {
            (Some(s), _) => match s.next_batch() {
                Some(batch) => self.net.batch_gradient(theta, &batch),
                None => self.net.gradient(theta),
            },
            (None, Regulariser::None) => self.net.gradient(theta),
            (None, Regulariser::Sgd) => self.sgd_penalty.gradient(theta),
            (None, Regulariser::Gd) => self.gd_penalty.gradient(theta),
        };
        if !g.iter().all(|x| x.is_finite()) {
            return Err(Error::Diverged { step, quantity: "non-finite gradient".into() });
        }
        let next = if self.momentum.momentum == Momentum::None {
            &self.theta - &(g * self.lr)
        } else {
            let mut next = self.theta.clone();
            self.momentum.apply(&mut next, g.view(), self.lr);
            next
        };
        if !next.iter().all(|x| x.is_finite()) {
            return Err(Error::Diverged { step, quantity: "non-finite iterate".into() });
        }
        self.theta = next;
        Ok(())
    }
}

/// The toy run's evaluations every `every` steps and at the end: losses, accuracies, λ_max
/// (`evaluate`), the flow comparisons, and the stop when the training loss exceeds
/// [`DIVERGED_FACTOR`] times its first value.
struct ToyEvaluations<'a, 'c, 'n, F> {
    every: usize,
    steps: usize,
    evaluate: F,
    warm: WarmStarts,
    first_loss: f64,
    flows: Option<Flows<'c, 'n>>,
    flow_until: Option<f64>,
    theta0: &'a Array1<f64>,
    evaluations: Vec<Evaluation>,
}

impl<'s, F> Observer<ToyStepper<'s>> for ToyEvaluations<'_, '_, '_, F>
where
    F: FnMut(&ToyStepper<'s>, usize, &mut WarmStarts) -> Result<Evaluation>,
{
    fn after_step(&mut self, stepper: &mut ToyStepper<'s>, done: usize, _: &mut ()) -> Result<Control> {
        if !done.is_multiple_of(self.every) && done != self.steps {
            return Ok(Control::Continue);
        }
        let mut e = (self.evaluate)(stepper, done, &mut self.warm)?;
        if !(e.train_loss.is_finite() && e.train_loss <= DIVERGED_FACTOR * self.first_loss) {
            return Ok(Control::Stop(format!("training loss {:.3e} at step {done}", e.train_loss)));
        }
        if let Some(f) = &mut self.flows
            && self.flow_until.is_none_or(|t| done as f64 * stepper.lr <= t * (1.0 + 1e-12))
        {
            e.flow = Some(f.compare(&stepper.theta, self.theta0, done)?);
        }
        self.evaluations.push(e);
        Ok(Control::Continue)
    }
}

/// One state of the gradient flow, with what the comparisons report about it.
#[derive(Debug, Clone)]
struct FlowPoint {
    time: f64,
    theta: Array1<f64>,
    /// Summed embedded error estimates of the segments that led here.
    error: f64,
    loss: f64,
    lambda_max: f64,
    lambda_residual: f64,
}

/// The gradient flow $\varphi_t(\theta_0)$ from one seed's start, shared by every GD run of an
/// experiment that compares against it (the flow does not depend on the step size): each state
/// is integrated once, from the latest earlier state, and its $\lambda_{\max}$ (Lanczos, tol
/// $10^{-6}$, warm-started from the previous state's vector) computed once.
pub(super) struct GradientFlowCache<'n> {
    net: &'n Network,
    params: AdaptiveParams,
    seed: u64,
    /// Computed states in increasing time, from $t = 0$.
    points: Vec<FlowPoint>,
    warm: Option<Array1<f64>>,
}

impl<'n> GradientFlowCache<'n> {
    /// The flow of `net` from `theta0` with the integration tolerance of `measure`.
    pub(super) fn new(net: &'n Network, theta0: Array1<f64>, measure: &MeasureConfig, seed: u64) -> Self {
        let rtol = measure.flow_rtol;
        let start = FlowPoint {
            time: 0.0,
            theta: theta0,
            error: 0.0,
            loss: f64::NAN,
            lambda_max: f64::NAN,
            lambda_residual: f64::NAN,
        };
        GradientFlowCache {
            net,
            params: AdaptiveParams { rtol, atol: rtol * 1e-3, ..AdaptiveParams::default() },
            seed,
            points: vec![start],
            warm: None,
        }
    }

    /// Whether two flow times are the same evaluation time (`step * h` of different runs can
    /// differ in the last bit).
    fn same_time(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
    }

    /// The state at time `t >= 0`, computed when not yet known.
    fn at(&mut self, t: f64) -> Result<&FlowPoint> {
        let index = match self.points.iter().position(|p| Self::same_time(p.time, t)) {
            Some(i) => i,
            None => {
                // Integrate from the latest state before t; keep the list sorted.
                let from = self.points.iter().rposition(|p| p.time < t).expect("the list starts at t = 0 <= t");
                let plain = gd_modified_field(self.net, GdFlow::Plain, 0.0);
                let start = &self.points[from];
                let (theta, info) = dormand_prince(&plain, start.theta.view(), t - start.time, &self.params)?;
                let point = FlowPoint {
                    time: t,
                    theta,
                    error: start.error + info.error_estimate,
                    loss: f64::NAN,
                    lambda_max: f64::NAN,
                    lambda_residual: f64::NAN,
                };
                self.points.insert(from + 1, point);
                from + 1
            }
        };
        if self.points[index].lambda_max.is_nan() {
            let point = &mut self.points[index];
            let op = self.net.hessian_at(point.theta.view());
            let params = LanczosParams {
                k: 1,
                tol: 1e-6,
                seed: self.seed,
                start: self.warm.clone(),
                ..LanczosParams::default()
            };
            let e = lanczos(&*op, &params)?;
            self.warm = Some(e.vectors.column(0).to_owned());
            point.loss = self.net.loss(point.theta.view());
            point.lambda_max = e.values.first().copied().unwrap_or(f64::NAN);
            point.lambda_residual = e.residuals.first().copied().unwrap_or(f64::NAN);
        }
        Ok(&self.points[index])
    }
}

/// The gradient flow (shared, [`GradientFlowCache`]) and GD's modified flow (this run's step
/// size) from $\theta_0$, compared with a GD run's iterates.
struct Flows<'c, 'n> {
    plain: &'c mut GradientFlowCache<'n>,
    h: f64,
    params: AdaptiveParams,
    modified: Option<Array1<f64>>,
    time: f64,
    modified_error: f64,
}

impl<'c, 'n> Flows<'c, 'n> {
    fn new(plain: &'c mut GradientFlowCache<'n>, theta0: &Array1<f64>, h: f64, measure: &MeasureConfig) -> Self {
        let params = plain.params.clone();
        Flows {
            plain,
            h,
            params,
            modified: measure.modified_flow.then(|| theta0.clone()),
            time: 0.0,
            modified_error: 0.0,
        }
    }

    /// Advances the modified flow to $t = \text{step}\cdot h$, looks up the gradient flow there,
    /// and compares both with the iterate.
    fn compare(&mut self, theta: &Array1<f64>, theta0: &Array1<f64>, step: usize) -> Result<FlowComparison> {
        let t = step as f64 * self.h;
        let dt = t - self.time;
        if dt > 0.0 {
            if let Some(state) = &mut self.modified {
                let modified = gd_modified_field(self.plain.net, GdFlow::FirstOrder, self.h);
                let (next, info) = dormand_prince(&modified, state.view(), dt, &self.params)?;
                *state = next;
                self.modified_error += info.error_estimate;
            }
            self.time = t;
        }
        let distance = |a: &Array1<f64>, b: &Array1<f64>| (a - b).mapv(|x| x * x).sum().sqrt();
        let modified_distance = self.modified.as_ref().map(|m| distance(theta, m));
        let p = self.plain.at(t)?;
        Ok(FlowComparison {
            time: t,
            plain_distance: distance(theta, &p.theta),
            modified_distance,
            travelled: distance(theta, theta0),
            flow_train_loss: p.loss,
            flow_lambda_max: p.lambda_max,
            flow_lambda_residual: p.lambda_residual,
            error_bound: p.error.max(self.modified_error),
        })
    }
}
