//! First-order optimizers over [`Objective`] and [`FiniteSum`]: gradient descent, SGD with
//! random reshuffling or with replacement, heavy-ball and Nesterov momentum (PyTorch's
//! convention, dampening 0), and GD on an explicit gradient-norm penalty (via
//! [`GradientNormPenalty`](crate::objective::GradientNormPenalty)).
//!
//! The update with learning rate $h$, momentum $\beta$ and (minibatch) gradient $g_t$ is
//! PyTorch's `torch.optim.SGD` with `dampening = 0`:
//! $$b_t = \beta b_{t-1} + g_t \ (b_0 = g_0),\qquad
//! \theta_{t+1} = \theta_t - h\,d_t,\quad d_t = \begin{cases} g_t & \text{no momentum}\\ b_t & \text{heavy ball}\\ g_t + \beta b_t & \text{Nesterov.}\end{cases}$$

use ndarray::{Array1, ArrayView1};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::objective::{FiniteSum, Objective};
use crate::{Error, Result};

/// Momentum variant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind", content = "beta")]
pub enum Momentum {
    /// Plain (stochastic) gradient descent.
    #[default]
    None,
    /// Heavy ball: $\theta \leftarrow \theta - h b$, $b \leftarrow \beta b + g$.
    HeavyBall(f64),
    /// Nesterov in PyTorch's form: $\theta \leftarrow \theta - h(g + \beta b)$.
    Nesterov(f64),
}

impl Momentum {
    /// The largest stable $s = h(\lambda + w)$ on a quadratic direction of curvature
    /// $\lambda$ with coupled weight decay $w$ (which adds to the gradient $w\theta$, so to the
    /// curvature): GD $2$, heavy ball $2 + 2\beta$, Nesterov in PyTorch's form
    /// $(2 + 2\beta)/(1 + 2\beta)$. Beyond it one eigenvalue of the step's linear map
    /// ([`Momentum::step_spectral_radius`]) leaves the unit disc at $-1$; docs/theory.md derives
    /// it. The edge-of-stability line is therefore $\lambda_{\max} = \text{limit}/h - w$, not
    /// $2/h$, for momentum.
    pub fn stability_limit(self) -> f64 {
        match self {
            Momentum::None => 2.0,
            Momentum::HeavyBall(b) => 2.0 + 2.0 * b,
            Momentum::Nesterov(b) => (2.0 + 2.0 * b) / (1.0 + 2.0 * b),
        }
    }

    /// The coefficient $c$ of the modified loss $L + c\,h\lVert\nabla L\rVert^2$ whose flow
    /// $\dot\theta = -\frac1{1-\beta}\nabla(L + c\,h\lVert\nabla L\rVert^2)$ the optimizer follows on
    /// its slow manifold to $O(h^2)$ (docs/theory.md, section 4): $\frac14$ for GD,
    /// $\frac{1+\beta}{4(1-\beta)^2}$ for heavy ball (Ghosh et al., ICLR 2023) and
    /// $\frac{1-\beta+2\beta^2}{4(1-\beta)^2}$ for PyTorch's Nesterov (derived in this crate).
    /// Measured by `bea::momentum_coefficient`; valid while $h\lambda/(1-\beta)^2 \ll 1$.
    pub fn modified_loss_coefficient(self) -> f64 {
        match self {
            Momentum::None => 0.25,
            Momentum::HeavyBall(b) => (1.0 + b) / (4.0 * (1.0 - b).powi(2)),
            Momentum::Nesterov(b) => (1.0 - b + 2.0 * b * b) / (4.0 * (1.0 - b).powi(2)),
        }
    }

    /// The spectral radius of one step's linear map on a quadratic direction with
    /// $s = h(\lambda + w)$, acting on $(\theta, c)$ with $c = hb$ the scaled buffer:
    /// GD $\theta' = (1 - s)\theta$; heavy ball $c' = \beta c + s\theta$,
    /// $\theta' = \theta - c'$; Nesterov $c' = \beta c + s\theta$,
    /// $\theta' = \theta - s\theta - \beta c'$.
    pub fn step_spectral_radius(self, s: f64) -> f64 {
        // The 2 x 2 map [[a, b], [c, d]] by its trace and determinant.
        let (trace, det) = match self {
            Momentum::None => return (1.0 - s).abs(),
            // [[1 - s, -beta], [s, beta]]
            Momentum::HeavyBall(beta) => (1.0 - s + beta, beta),
            // [[1 - s (1 + beta), -beta^2], [s, beta]]
            Momentum::Nesterov(beta) => (1.0 - s * (1.0 + beta) + beta, beta * (1.0 - s)),
        };
        let disc = trace * trace - 4.0 * det;
        if disc >= 0.0 {
            let r = disc.sqrt();
            ((trace + r) / 2.0).abs().max(((trace - r) / 2.0).abs())
        } else {
            det.sqrt()
        }
    }
}

/// The state of the momentum update: PyTorch's `momentum_buffer`.
#[derive(Debug, Clone)]
pub struct MomentumStep {
    /// The variant and $\beta$.
    pub momentum: Momentum,
    /// The buffer $b$ (absent before the first step).
    pub buffer: Option<Array1<f64>>,
}

impl MomentumStep {
    /// A fresh state.
    pub fn new(momentum: Momentum) -> Self {
        MomentumStep { momentum, buffer: None }
    }

    /// Applies one update with gradient `g` and learning rate `lr` to `theta`.
    pub fn apply(&mut self, theta: &mut Array1<f64>, g: ArrayView1<f64>, lr: f64) {
        let beta = match self.momentum {
            Momentum::None => {
                theta.scaled_add(-lr, &g);
                return;
            }
            Momentum::HeavyBall(b) | Momentum::Nesterov(b) => b,
        };
        let buffer = match self.buffer.as_mut() {
            Some(b) => {
                b.mapv_inplace(|x| beta * x);
                *b += &g;
                b
            }
            None => self.buffer.insert(g.to_owned()),
        };
        match self.momentum {
            Momentum::Nesterov(_) => {
                theta.scaled_add(-lr, &g);
                theta.scaled_add(-lr * beta, buffer);
            }
            _ => theta.scaled_add(-lr, buffer),
        }
    }
}

/// How each step's gradient is formed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Sampling {
    /// The full gradient every step (gradient descent).
    #[default]
    Full,
    /// Random reshuffling: each epoch a seeded permutation of the examples is cut into
    /// $\lfloor n/b \rfloor$ minibatches of size $b$ (the last incomplete one is dropped), each
    /// used once.
    Reshuffle {
        /// Minibatch size $b$.
        batch_size: usize,
    },
    /// Each step draws $b$ examples independently and uniformly, with replacement.
    WithReplacement {
        /// Minibatch size $b$.
        batch_size: usize,
    },
    /// The given minibatches, cycled in the given order (for averaging over orderings).
    Cyclic {
        /// The minibatches of one epoch, in order.
        batches: Vec<Vec<usize>>,
    },
}

/// Seeded source of minibatches for a [`Sampling`] rule over `n` examples.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    sampling: Sampling,
    n: usize,
    rng: ChaCha8Rng,
    epoch: Vec<Vec<usize>>,
    position: usize,
}

impl BatchSampler {
    /// A sampler over `n` examples, seeded.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when the batch size is zero or larger than `n`, or a cyclic
    /// batch list is empty, contains an empty batch or an index `>= n`.
    pub fn new(sampling: Sampling, n: usize, seed: u64) -> Result<Self> {
        match &sampling {
            Sampling::Full => {}
            Sampling::Reshuffle { batch_size } | Sampling::WithReplacement { batch_size } => {
                if *batch_size == 0 || *batch_size > n {
                    return Err(Error::invalid(
                        "batch_size",
                        format!("{batch_size} is not in 1..={n} (the number of examples)"),
                    ));
                }
            }
            Sampling::Cyclic { batches } => {
                if batches.is_empty() || batches.iter().any(Vec::is_empty) {
                    return Err(Error::invalid("batches", "need at least one non-empty batch"));
                }
                if let Some(&i) = batches.iter().flatten().find(|&&i| i >= n) {
                    return Err(Error::invalid("batches", format!("index {i} >= {n} examples")));
                }
            }
        }
        Ok(BatchSampler { sampling, n, rng: ChaCha8Rng::seed_from_u64(seed), epoch: Vec::new(), position: 0 })
    }

    /// The number of steps in one pass over the data ($\lfloor n/b\rfloor$ for reshuffling and
    /// with replacement, the number of batches for cyclic, 1 for full batch).
    pub fn steps_per_epoch(&self) -> usize {
        match &self.sampling {
            Sampling::Full => 1,
            Sampling::Reshuffle { batch_size } | Sampling::WithReplacement { batch_size } => self.n / batch_size,
            Sampling::Cyclic { batches } => batches.len(),
        }
    }

    /// The next minibatch; `None` means the full data set.
    pub fn next_batch(&mut self) -> Option<Vec<usize>> {
        match &self.sampling {
            Sampling::Full => None,
            Sampling::WithReplacement { batch_size } => {
                let b = *batch_size;
                Some((0..b).map(|_| self.rng.random_range(0..self.n)).collect())
            }
            Sampling::Reshuffle { batch_size } => {
                if self.position == self.epoch.len() {
                    let mut perm: Vec<usize> = (0..self.n).collect();
                    perm.shuffle(&mut self.rng);
                    self.epoch = perm.chunks_exact(*batch_size).map(<[usize]>::to_vec).collect();
                    self.position = 0;
                }
                self.position += 1;
                Some(self.epoch[self.position - 1].clone())
            }
            Sampling::Cyclic { batches } => {
                let batch = batches[self.position % batches.len()].clone();
                self.position += 1;
                Some(batch)
            }
        }
    }
}

/// Parameters of [`optimize`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerParams {
    /// Learning rate $h > 0$.
    pub lr: f64,
    /// Momentum variant.
    pub momentum: Momentum,
    /// How each step's gradient is formed.
    pub sampling: Sampling,
    /// Number of steps.
    pub steps: usize,
    /// Seed of the minibatch sampler.
    pub seed: u64,
    /// Record the full-data loss every this many steps (0: never).
    pub record_every: usize,
}

impl Default for OptimizerParams {
    fn default() -> Self {
        OptimizerParams {
            lr: 0.1,
            momentum: Momentum::None,
            sampling: Sampling::Full,
            steps: 100,
            seed: 0,
            record_every: 0,
        }
    }
}

/// What [`optimize`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OptimizerInfo {
    /// Steps taken.
    pub steps: usize,
    /// Gradient evaluations, counted in examples (a full gradient counts $n$).
    pub examples_processed: usize,
    /// `(step, full-data loss)` at step 0, every `record_every` steps and at the end.
    pub losses: Vec<(usize, f64)>,
}

fn check_finite(step: usize, quantity: &str, x: &Array1<f64>) -> Result<()> {
    if x.iter().all(|v| v.is_finite()) { Ok(()) } else { Err(Error::Diverged { step, quantity: quantity.to_string() }) }
}

/// Runs `params.steps` steps of (stochastic) gradient descent with momentum from `theta0`.
///
/// Full-batch sampling uses [`Objective::gradient`]; minibatch sampling uses
/// [`FiniteSum::batch_gradient`].
///
/// # Errors
/// [`Error::InvalidParameter`] for a non-positive or non-finite learning rate, a momentum
/// outside $[0, 1)$ or a bad sampling rule; [`Error::Diverged`] when a gradient or iterate
/// stops being finite.
pub fn optimize<O: FiniteSum + ?Sized>(
    obj: &O,
    theta0: ArrayView1<f64>,
    params: &OptimizerParams,
) -> Result<(Array1<f64>, OptimizerInfo)> {
    let mut sampler = BatchSampler::new(params.sampling.clone(), obj.n_examples(), params.seed)?;
    let n = obj.n_examples();
    optimize_with(obj, theta0, params, |theta| match sampler.next_batch() {
        None => (obj.gradient(theta), n),
        Some(batch) => (obj.batch_gradient(theta, &batch), batch.len()),
    })
}

/// Full-batch gradient descent (with momentum) on any [`Objective`]: [`optimize`] without the
/// finite-sum structure. `params.sampling` must be [`Sampling::Full`].
///
/// # Errors
/// As [`optimize`], and [`Error::InvalidParameter`] for a minibatch sampling rule.
pub fn gradient_descent<O: Objective + ?Sized>(
    obj: &O,
    theta0: ArrayView1<f64>,
    params: &OptimizerParams,
) -> Result<(Array1<f64>, OptimizerInfo)> {
    if params.sampling != Sampling::Full {
        return Err(Error::invalid("sampling", "gradient_descent needs full-batch sampling"));
    }
    optimize_with(obj, theta0, params, |theta| (obj.gradient(theta), 1))
}

fn optimize_with<O: Objective + ?Sized>(
    obj: &O,
    theta0: ArrayView1<f64>,
    params: &OptimizerParams,
    mut gradient: impl FnMut(ArrayView1<f64>) -> (Array1<f64>, usize),
) -> Result<(Array1<f64>, OptimizerInfo)> {
    if !(params.lr.is_finite() && params.lr > 0.0) {
        return Err(Error::invalid("lr", format!("{} must be positive and finite", params.lr)));
    }
    if let Momentum::HeavyBall(b) | Momentum::Nesterov(b) = params.momentum
        && !(0.0..1.0).contains(&b)
    {
        return Err(Error::invalid("momentum", format!("beta {b} is not in [0, 1)")));
    }
    let mut theta = theta0.to_owned();
    let mut state = MomentumStep::new(params.momentum);
    let mut info = OptimizerInfo::default();
    let record = |info: &mut OptimizerInfo, step: usize, theta: &Array1<f64>| {
        info.losses.push((step, obj.loss(theta.view())));
    };
    if params.record_every > 0 {
        record(&mut info, 0, &theta);
    }
    for step in 0..params.steps {
        let (g, examples) = gradient(theta.view());
        check_finite(step, "gradient", &g)?;
        state.apply(&mut theta, g.view(), params.lr);
        check_finite(step, "iterate", &theta)?;
        info.steps += 1;
        info.examples_processed += examples;
        let done = step + 1;
        if params.record_every > 0 && (done % params.record_every == 0 || done == params.steps) {
            record(&mut info, done, &theta);
        }
    }
    Ok((theta, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshuffle_batches_partition_each_epoch() {
        let mut s = BatchSampler::new(Sampling::Reshuffle { batch_size: 3 }, 10, 1).unwrap();
        assert_eq!(s.steps_per_epoch(), 3);
        for _ in 0..4 {
            let mut seen: Vec<usize> = (0..3).flat_map(|_| s.next_batch().unwrap()).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 9, "9 distinct examples per epoch (one dropped)");
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(BatchSampler::new(Sampling::Reshuffle { batch_size: 0 }, 10, 0).is_err());
        assert!(BatchSampler::new(Sampling::WithReplacement { batch_size: 11 }, 10, 0).is_err());
        let e = BatchSampler::new(Sampling::Cyclic { batches: vec![vec![0, 10]] }, 10, 0).unwrap_err();
        assert!(e.to_string().contains("index 10"), "{e}");
    }
}
