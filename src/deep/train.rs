//! Training primitives: the loss, full-batch gradients over blocks ("ghost" BatchNorm), global-norm
//! clipping, the paper's learning-rate schedule and SGD configuration, and the finite-difference
//! gradient-norm regulariser.
//!
//! Gradients are burn [`GradientsParams`] (one tensor per parameter, keyed by parameter id, on
//! the inner backend); the functions that combine them walk the model's parameters with a
//! [`ModuleVisitor`], so every parameter tensor of the model takes part. Host synchronisations
//! happen only where a number is returned (`f64` fields of reports), once per call.

use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Batch;
pub use super::grads::{ClipReport, clip_global_norm, global_grad_norm, grads_to_vec, params_to_vec, scale_grads};
pub(crate) use super::grads::{Coef, copy_grads, float_tensors_to_vec, grad_sq_norm_tensor, lerp_grads, perturb};
pub(crate) use super::grads::{add_opt, read_scalar};
use crate::{Error, Result};

/// A network that maps images to class logits.
pub trait ImageClassifier<B: Backend> {
    /// The logits.
    ///
    /// # Shapes
    /// - `images`: `[n, channels, height, width]`
    /// - output: `[n, classes]`
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2>;
}

/// The mean cross-entropy of `logits` against `labels`,
/// $L = -\frac1n \sum_i \log \mathrm{softmax}(z_i)_{y_i}$.
///
/// # Shapes
/// - `logits`: `[n, classes]`
/// - `labels`: `[n]`
/// - output: `[1]`
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let log_p = log_softmax(logits, 1);
    log_p.gather(1, labels.unsqueeze_dim(1)).mean().neg()
}

/// The gradient of the mean cross-entropy on one block, from one forward and one backward pass
/// (BatchNorm in training mode uses this block's statistics), and the block's loss (detached,
/// still on the device).
pub fn block_gradient<B, M>(
    model: &M,
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
) -> (GradientsParams, Tensor<B::InnerBackend, 1>)
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + ImageClassifier<B>,
{
    let loss = cross_entropy(model.logits(images), labels);
    let value = loss.clone().inner();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    (grads, value)
}

/// How the examples are split into blocks at each full-batch step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockOrder {
    /// Blocks of consecutive examples, in order: block $k$ holds examples $kb .. (k+1)b$.
    Sequential,
    /// The same blocks as [`BlockOrder::Sequential`], visited in an order shuffled with `seed`.
    /// Only rounding and the BatchNorm running statistics depend on the order.
    ShuffledBlocks {
        /// The seed of the permutation of blocks (use a new one each step).
        seed: u64,
    },
    /// The examples permuted with `seed` before cutting blocks, so blocks (their BatchNorm
    /// statistics) and the dropped remainder change, as with a shuffling data loader.
    ShuffledExamples {
        /// The seed of the permutation of examples (use a new one each step).
        seed: u64,
    },
}

/// The example indices of each block, in visiting order: $\lfloor n/b \rfloor$ blocks of
/// `block_size` examples; the last $n \bmod b$ examples (after any shuffle) are dropped
/// ("drop_last").
///
/// # Errors
/// [`Error::InvalidParameter`] if `block_size` is zero or larger than `n`.
pub fn block_plan(n: usize, block_size: usize, order: BlockOrder) -> Result<Vec<Vec<usize>>> {
    if block_size == 0 {
        return Err(Error::invalid("block_size", "must be positive"));
    }
    if block_size > n {
        return Err(Error::invalid("block_size", format!("{block_size} is larger than the {n} examples")));
    }
    let mut examples: Vec<usize> = (0..n).collect();
    if let BlockOrder::ShuffledExamples { seed } = order {
        examples.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    }
    let mut blocks: Vec<Vec<usize>> = examples.chunks_exact(block_size).map(<[usize]>::to_vec).collect();
    if let BlockOrder::ShuffledBlocks { seed } = order {
        blocks.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    }
    Ok(blocks)
}

/// The finite-difference regulariser of the paper (its "gradient regularisation" at block level).
///
/// For a block with gradient $g_k = \nabla L_k(\theta)$, a forward difference along the normalised
/// gradient,
/// $$H_k g_k \approx \frac{\nabla L_k(\theta + \varepsilon\, g_k/\lVert g_k\rVert) - g_k}{\varepsilon}\,\lVert g_k\rVert,$$
/// and the block's gradient becomes $g_k + \alpha\,\frac{\eta_t}{4}\,H_k g_k$, where $\eta_t$ is
/// the current scheduled learning rate. Since $\nabla\lVert g_k\rVert^2 = 2H_kg_k$, this is the
/// gradient of $L_k + \alpha\frac{\eta_t}{8}\lVert\nabla L_k\rVert^2$ (the official code logs the
/// penalty with $\eta_t/4$); this implements the update. The second gradient is evaluated on the
/// same block, so its BatchNorm statistics are the perturbed network's on that block; its forward
/// pass also updates the shared BatchNorm running statistics once more.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Regulariser {
    /// The strength $\alpha$ (0.5 in the paper's regularised rows).
    pub alpha: f64,
    /// The finite-difference step $\varepsilon$ (0.01 in the paper).
    pub eps: f64,
    /// The current scheduled learning rate $\eta_t$ (set it at every step).
    pub lr: f64,
}

/// What [`full_batch_gradient`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FullBatchOptions {
    /// Images per block (one forward/backward and one BatchNorm batch each); 128 or 32 in the
    /// paper.
    pub block_size: usize,
    /// How examples are assigned to blocks and blocks ordered.
    pub order: BlockOrder,
    /// The finite-difference regulariser, if any.
    pub regulariser: Option<Regulariser>,
}

/// The full-batch gradient and what was measured on the way.
#[derive(Debug)]
pub struct FullGradient {
    /// $\bar g = \frac1K\sum_k g_k$ (regularised block gradients when a regulariser is set).
    pub grads: GradientsParams,
    /// With a regulariser, the mean of the unregularised block gradients, $\frac1K\sum_k\nabla L_k$
    /// (without one, `grads` is that mean): the regulariser ledger's $\bar g$.
    pub plain_grads: Option<GradientsParams>,
    /// The mean of the block losses, $\frac1K\sum_k L_k$.
    pub loss: f64,
    /// The mean squared norm of the unregularised block gradients, $\frac1K\sum_k\lVert\nabla L_k\rVert^2$.
    pub mean_block_grad_sq_norm: f64,
    /// The number of blocks $K$.
    pub blocks: usize,
}

/// The full-batch gradient of the mean cross-entropy over `data`, block by block.
///
/// The examples are cut into $K = \lfloor n/b\rfloor$ blocks by [`block_plan`]; each block gets one
/// forward/backward pass ([`block_gradient`], BatchNorm statistics per block), optionally the
/// [`Regulariser`]'s correction, and enters a numerically stable running mean,
/// $$\bar g_k = \bar g_{k-1} + \frac{g_k - \bar g_{k-1}}{k},\qquad \bar g_1 = g_1,$$
/// so $\bar g_K = \frac1K\sum_k g_k$ (as the official code's `_stable_mean_accumulation`).
/// Weight decay is not included (the optimizer adds it).
///
/// # Errors
/// [`Error::InvalidParameter`] from [`block_plan`]; [`Error::Diverged`] (step 0) if the loss is
/// not finite.
pub fn full_batch_gradient<B, M>(model: &M, data: &Batch<B>, options: &FullBatchOptions) -> Result<FullGradient>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + ImageClassifier<B>,
{
    let plan = block_plan(data.len(), options.block_size, options.order)?;
    blocks_gradient(model, data, &plan, options.regulariser.as_ref())
}

/// The mean of the block gradients of `blocks` (example indices into `data`, visited in
/// order), as [`full_batch_gradient`] computes it for its plan: one pass per block (two with the
/// regulariser), a stable running mean, the mean block loss and squared gradient norm. Data
/// parallelism runs it on each device's share of the plan.
///
/// # Errors
/// [`Error::InvalidParameter`] if `blocks` is empty or a value cannot be read back;
/// [`Error::Diverged`] (step 0) if the loss is not finite.
pub fn blocks_gradient<B, M>(
    model: &M,
    data: &Batch<B>,
    blocks: &[Vec<usize>],
    regulariser: Option<&Regulariser>,
) -> Result<FullGradient>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + ImageClassifier<B>,
{
    if blocks.is_empty() {
        return Err(Error::invalid("blocks", "none to compute a gradient over"));
    }
    let device = data.images.device();
    let mut mean: Option<GradientsParams> = None;
    let mut plain_mean: Option<GradientsParams> = None;
    let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut sq_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    for (k, block) in blocks.iter().enumerate() {
        let (images, labels) = take_block(data, block, &device);
        let (mut grads, loss) = block_gradient(model, images.clone(), labels.clone());
        let sq = grad_sq_norm_tensor(model, &grads);
        let running_mean = |m: Option<GradientsParams>, g| match m {
            None => g,
            Some(m) => lerp_grads(model, m, g, Coef::Scalar(1.0 / (k + 1) as f64)),
        };
        if let Some(reg) = regulariser {
            plain_mean = Some(running_mean(plain_mean, copy_grads(model, &grads)));
            grads = regularise_block(model, grads, sq.clone(), images, labels, reg);
        }
        loss_sum = Some(add_opt(loss_sum, loss));
        sq_sum = Some(add_opt(sq_sum, sq));
        mean = Some(running_mean(mean, grads));
    }
    let n = blocks.len();
    let loss = read_scalar(loss_sum)? / n as f64;
    if !loss.is_finite() {
        return Err(Error::Diverged { step: 0, quantity: "full-batch loss".into() });
    }
    let mean_block_grad_sq_norm = read_scalar(sq_sum)? / n as f64;
    Ok(FullGradient {
        grads: mean.unwrap_or_default(),
        plain_grads: plain_mean,
        loss,
        mean_block_grad_sq_norm,
        blocks: n,
    })
}

/// The images and labels of one block: a slice when the indices are consecutive, a gather
/// otherwise.
fn take_block<B: Backend>(data: &Batch<B>, block: &[usize], device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let start = block.first().copied().unwrap_or(0);
    let consecutive = block.iter().enumerate().all(|(j, &i)| i == start + j);
    if consecutive {
        (data.images.clone().narrow(0, start, block.len()), data.labels.clone().narrow(0, start, block.len()))
    } else {
        let idx: Vec<i64> = block.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [block.len()]), device);
        (data.images.clone().select(0, idx.clone()), data.labels.clone().select(0, idx))
    }
}

/// The block gradient with the [`Regulariser`]'s correction; `sq` is $\lVert g\rVert^2$ as a
/// one-element tensor.
fn regularise_block<B, M>(
    model: &M,
    grads: GradientsParams,
    sq: Tensor<B::InnerBackend, 1>,
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
    reg: &Regulariser,
) -> GradientsParams
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + ImageClassifier<B>,
{
    let norm = sq.sqrt();
    // theta' = theta + (eps / |g|) g. A zero gradient gives no correction: guard the division.
    let step = norm.clone().clamp_min(1e-30).recip().mul_scalar(reg.eps);
    let perturbed = perturb(model.clone(), &grads, step);
    let (grads_perturbed, _) = block_gradient(&perturbed, images, labels);
    // g + alpha (lr/4) (g' - g) |g| / eps  =  lerp(g, g', alpha lr |g| / (4 eps)).
    let coef = norm.mul_scalar(reg.alpha * reg.lr / (4.0 * reg.eps));
    lerp_grads(model, grads, grads_perturbed, Coef::Tensor(coef))
}

/// Linear warmup from 0 followed by cosine annealing, as the official code's
/// `GradualWarmupScheduler` (multiplier 1, from `pytorch-gradual-warmup-lr`) wrapping PyTorch's
/// `CosineAnnealingLR` (`eta_min = 0`), both stepped once after every optimizer step.
///
/// With base rate $\eta$, warmup $W$ steps and cosine period $T$ (`t_max`), the rate used by the
/// update at step $t$ (0-based: $t$ updates were taken before it) is
/// $$\eta_t = \begin{cases} \eta\, t / W & t \le W,\\
///   \frac{\eta}{2}\big(1 + \cos\frac{\pi\,(t - W - 1)}{T}\big) & t > W,\end{cases}$$
/// so $\eta_0 = 0$, $\eta_W = \eta_{W+1} = \eta$ (the warmup scheduler hands over one step late),
/// and with $T$ larger than the run the rate never reaches 0 (paper: $\eta = 0.4$, $W = 400$,
/// $T = 4000$, 3000 steps ends at $\eta_{2999} \approx 0.109$). With $W = 0$ (no warmup
/// scheduler in the official code) $\eta_t = \frac\eta2(1 + \cos(\pi t/T))$. For $t > W + T$ the
/// cosine rises again, as PyTorch's closed form.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    /// The base (peak) learning rate $\eta$.
    pub base_lr: f64,
    /// The number of warmup steps $W$.
    pub warmup_steps: usize,
    /// The cosine period $T$ (PyTorch's `T_max`), in steps after the warmup.
    pub t_max: usize,
}

impl WarmupCosine {
    /// Checks that the base rate is positive and finite and `t_max` positive.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return Err(Error::invalid("base_lr", format!("{} is not positive and finite", self.base_lr)));
        }
        if self.t_max == 0 {
            return Err(Error::invalid("t_max", "must be positive"));
        }
        Ok(())
    }

    /// The learning rate $\eta_t$ of the update at step `step` (see the type's documentation).
    pub fn lr(&self, step: usize) -> f64 {
        let (w, t_max) = (self.warmup_steps, self.t_max.max(1) as f64);
        if w == 0 {
            return 0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * step as f64 / t_max).cos());
        }
        if step <= w {
            self.base_lr * step as f64 / w as f64
        } else {
            0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * (step - w - 1) as f64 / t_max).cos())
        }
    }
}

/// The paper's momentum $\mu = 0.9$.
pub const PAPER_MOMENTUM: f64 = 0.9;

/// The paper's weight decay $\lambda = 5\cdot10^{-4}$ (coupled L2 on every parameter).
pub const PAPER_WEIGHT_DECAY: f32 = 5e-4;

/// SGD with coupled weight decay $\lambda$ and momentum $\mu$ with dampening 0 (PyTorch's
/// `torch.optim.SGD(momentum=mu, dampening=0, weight_decay=lambda, nesterov=...)`; burn's
/// `MomentumConfig` defaults to dampening 0.1, set to 0 here). For a parameter $\theta$ with
/// gradient $g$ and learning rate $\eta_t$:
/// $$d_t = g_t + \lambda\theta_t,\quad v_t = \mu v_{t-1} + d_t\ (v_0 = d_0),\quad
///   \theta_{t+1} = \theta_t - \eta_t\,(d_t + \mu v_t)\ \text{(Nesterov)}\ \text{or}\ \theta_t - \eta_t v_t.$$
/// No gradient clipping here: use [`clip_global_norm`] on the gradient first.
pub fn sgd_config(momentum: f64, nesterov: bool, weight_decay: f32) -> SgdConfig {
    let momentum = MomentumConfig::new().with_momentum(momentum).with_dampening(0.0).with_nesterov(nesterov);
    let decay = if weight_decay != 0.0 { Some(WeightDecayConfig::new(weight_decay)) } else { None };
    SgdConfig::new().with_momentum(Some(momentum)).with_weight_decay(decay)
}

/// The paper's optimizer: [`sgd_config`] with Nesterov momentum [`PAPER_MOMENTUM`] and weight
/// decay [`PAPER_WEIGHT_DECAY`].
pub fn paper_sgd() -> SgdConfig {
    sgd_config(PAPER_MOMENTUM, true, PAPER_WEIGHT_DECAY)
}

/// What one [`full_batch_step`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The mean block loss before the update.
    pub loss: f64,
    /// The mean squared norm of the unregularised block gradients.
    pub mean_block_grad_sq_norm: f64,
    /// The squared norm of the mean of the unregularised block gradients,
    /// $\lVert\frac1K\sum_k\nabla L_k\rVert^2$.
    pub mean_grad_sq_norm: f64,
    /// The global norm of the (regularised) full gradient before clipping.
    pub grad_norm: f64,
    /// Whether clipping scaled the gradient.
    pub clipped: bool,
    /// The learning rate used.
    pub lr: f64,
}

/// One full-batch step: [`full_batch_gradient`], optional [`clip_global_norm`] at `clip`, then
/// `optim`'s update at learning rate `lr`.
///
/// # Errors
/// As [`full_batch_gradient`] and [`clip_global_norm`].
pub fn full_batch_step<B, M, O>(
    model: M,
    optim: &mut O,
    data: &Batch<B>,
    options: &FullBatchOptions,
    lr: f64,
    clip: Option<f64>,
) -> Result<(M, StepReport)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + ImageClassifier<B>,
    O: Optimizer<M, B>,
{
    let full = full_batch_gradient(&model, data, options)?;
    full_batch_update(model, optim, full, lr, clip)
}

/// The update of a full-batch step from its gradient: optional [`clip_global_norm`] at `clip`,
/// then `optim`'s update at learning rate `lr`.
///
/// # Errors
/// As [`clip_global_norm`] and [`global_grad_norm`].
pub fn full_batch_update<B, M, O>(
    model: M,
    optim: &mut O,
    full: FullGradient,
    lr: f64,
    clip: Option<f64>,
) -> Result<(M, StepReport)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + ImageClassifier<B>,
    O: Optimizer<M, B>,
{
    // The ledger's |g|^2: of the plain mean when the step is regularised, else the norm below.
    let plain_sq = match &full.plain_grads {
        Some(plain) => Some(global_grad_norm(&model, plain)?.powi(2)),
        None => None,
    };
    let (grads, grad_norm, clipped) = match clip {
        Some(c) => {
            let (g, report) = clip_global_norm(&model, full.grads, c)?;
            (g, report.norm, report.clipped)
        }
        None => {
            let norm = global_grad_norm(&model, &full.grads)?;
            (full.grads, norm, false)
        }
    };
    let model = optim.step(lr, model, grads);
    Ok((
        model,
        StepReport {
            loss: full.loss,
            mean_block_grad_sq_norm: full.mean_block_grad_sq_norm,
            mean_grad_sq_norm: plain_sq.unwrap_or(grad_norm * grad_norm),
            grad_norm,
            clipped,
            lr,
        },
    ))
}

/// Mean cross-entropy and accuracy of `model` on `data`, in blocks of `block_size` (the last
/// partial block included). Use the inference model (`model.valid()`) for BatchNorm with running
/// statistics.
///
/// # Errors
/// [`Error::InvalidParameter`] if `block_size` is zero, `data` is empty, or a value cannot be
/// read back.
pub fn evaluate<B: Backend, M: ImageClassifier<B>>(
    model: &M,
    data: &Batch<B>,
    block_size: usize,
) -> Result<(f64, f64)> {
    if block_size == 0 {
        return Err(Error::invalid("block_size", "must be positive"));
    }
    let n = data.len();
    if n == 0 {
        return Err(Error::invalid("data", "has no images"));
    }
    let mut loss_sum: Option<Tensor<B, 1>> = None;
    let mut correct: Option<Tensor<B, 1>> = None;
    let mut start = 0;
    while start < n {
        let len = block_size.min(n - start);
        let images = data.images.clone().narrow(0, start, len);
        let labels = data.labels.clone().narrow(0, start, len);
        let logits = model.logits(images);
        let hits = logits.clone().argmax(1).squeeze_dim::<1>(1).equal(labels.clone()).float().sum();
        let loss = cross_entropy(logits, labels).mul_scalar(len as f64);
        loss_sum = Some(add_opt(loss_sum, loss));
        correct = Some(add_opt(correct, hits));
        start += len;
    }
    Ok((read_scalar(loss_sum)? / n as f64, read_scalar(correct)? / n as f64))
}
