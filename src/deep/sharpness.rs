//! Sharpness of a network: the Hessian of the full-batch training loss of a burn model as a
//! [`LinearOperator`] over its flattened trainable parameters, applied by central differences of
//! full-batch gradients, so that [`lanczos`] measures $\lambda_{\max}$ of a ResNet.
//!
//! # The operator
//! With $\theta \in \mathbb R^d$ the trainable parameters (every float tensor that requires a
//! gradient, in the model's visiting order; BatchNorm running statistics are not parameters) and
//! $\bar g(\theta) = \frac1K\sum_{k=1}^K \nabla L_k(\theta)$ the full-batch gradient of the mean
//! cross-entropy over $K$ blocks ([`full_batch_gradient`]: blocks of consecutive images,
//! drop-last), [`NetworkHessian`] applies
//! $$Hv \approx \lVert v\rVert\,\frac{\bar g(\theta + \varepsilon\hat v) - \bar g(\theta - \varepsilon\hat v)}{2\varepsilon},
//!   \qquad \hat v = v/\lVert v\rVert .$$
//! Two full-batch gradients per product (each a forward and a backward pass per block).
//!
//! # ReLU gates
//! The gradient of a ReLU network jumps where a unit changes sign, and a central difference
//! would add, divided by $\varepsilon$, the jumps of all units crossing zero between
//! $\theta \pm \varepsilon\hat v$: a term that does not vanish as $\varepsilon \to 0$ and makes
//! the "operator" nonlinear and ill-defined (measured on a tiny ResNet without gates: products
//! changing by about 100% between steps, $H(u+v)$ off $Hu + Hv$ by 50-70%, no Lanczos
//! convergence at 10% in 300 products). So the gradients are taken of the network with every
//! ReLU gated by the activation pattern at $\theta$ on the same block ([`HessianModel`],
//! [`GatedResNet`]): smooth in the parameters, its Hessian at $\theta$ is the almost-everywhere
//! Hessian that automatic differentiation gives (PyTorch's double backward), and the difference
//! converges to it. Cost: one more forward pass per block and gradient.
//!
//! # BatchNorm mode ([`BatchNormMode`])
//! - [`BatchNormMode::Train`]: every block is normalised with its own batch statistics, so the
//!   loss is the one full-batch training minimises (the block size is part of its definition:
//!   use the run's `block_size`). Its Hessian includes the dependence of the batch statistics on
//!   the parameters.
//! - [`BatchNormMode::Eval`]: BatchNorm is the fixed affine map of the running statistics, the
//!   loss the inference model is evaluated with; blocks only bound the memory.
//!
//! In both modes the running statistics of the measured model are left exactly as they were:
//! the operator works on a copy made with `M::from_inner(model.valid())`, whose running-statistic
//! cells are new (burn shares them between clones of one module, so forward passes on perturbed
//! clones of the model itself would move its statistics). The parameters are never changed: the
//! perturbed points are new tensors.
//!
//! # Weight decay
//! Not included: the operator is the Hessian of the data loss only (the usual definition of
//! sharpness, and what the edge-of-stability threshold $2/\eta$ compares with for plain
//! gradient descent). Coupled L2 weight decay $\lambda$ would add $\lambda I$, shifting every
//! eigenvalue by $\lambda$ ($5\cdot10^{-4}$ in the paper).
//!
//! # Precision
//! burn computes in `f32` (the only float type of the CPU and CUDA backends used here, and the
//! precision the network trains in). The operator reads gradients back as `f32`, takes the
//! difference and the scaling in `f64`, and exposes `f64` vectors to [`lanczos`]. The accuracy of
//! a product is therefore limited by `f32`: with unit roundoff $u = 2^{-24} \approx 6\cdot10^{-8}$,
//! - rounding the perturbed parameters $\theta \pm \varepsilon\hat v$ to `f32` moves them by up to
//!   $u\lvert\theta_i\rvert$ per entry, a relative error of about $u\lVert\theta\rVert/\varepsilon$ in $Hv$;
//! - the rounding of the two gradients (relative $\sim 10^{-6}$, correlated between the nearby
//!   points) enters divided by $\varepsilon$;
//! - the truncation error is $O(\varepsilon^2)$ for smooth losses, and $O(\varepsilon)$ where
//!   ReLU kinks are crossed.
//!
//! The step is $\varepsilon = \texttt{eps\_rel}\cdot\max(\lVert\theta\rVert, 1)$ with
//! `eps_rel` $= 10^{-4}$ by default ([`DEFAULT_EPS_REL`]). Rounding and truncation pull in
//! opposite directions, and near a minimum truncation is the one that matters:
//! - On a tanh MLP at its initialisation (`tests/deep_sharpness.rs`), the product's error
//!   against the exact `f64` HVP is $4.9\cdot10^{-4}$ at `eps_rel` $10^{-4}$, $5\cdot10^{-5}$ at
//!   $10^{-3}$, $2\cdot10^{-3}$ at $10^{-2}$ (rounding below $10^{-3}$, truncation above), and
//!   $\lambda_{\max}$ agrees to $10^{-5}$ relative at $10^{-4}$.
//! - Near a minimum the truncation error grows: the cross-entropy's higher derivatives along the
//!   sharpest direction grow relative to the Hessian as the softmax saturates. Measured on
//!   `small-synthetic-fb` (`fullbatch sharpness --run DIR --step N --diagnose`, which prints
//!   $x^\top H_\varepsilon x$ along the top eigenvector $x$ for six steps): the Rayleigh quotients
//!   at `eps_rel` $10^{-5}$, $3\cdot10^{-5}$ and $10^{-4}$ agree within $2\cdot10^{-4}$ relative,
//!   and the one at $10^{-3}$ is off by $-0.1\%$, $+0.4\%$, $+1.6\%$, $+2.4\%$ after steps 10,
//!   20, 30, 40 ($+62\%$ at $10^{-2}$ after step 40), growing like $\varepsilon^2$. The
//!   operator at $10^{-3}$ is then also nonlinear along the top direction, and warm-started
//!   Lanczos needed 101 products at step 30 (an earlier version stopped unconverged after 121
//!   at steps 30 and 40); at $10^{-4}$ it converges in 6 products at both.
//!
//! Every measurement estimates the operator's error along its eigenvector $v$,
//! $\lVert(H_\varepsilon - H)v\rVert$, as truncation (step doubling) plus rounding (a nearby
//! step) ([`operator_error_along`], three products), and adds it to the residual in the reported
//! interval ([`NetworkSharpness::interval`]). The default Lanczos tolerance is $10^{-2}$ on the true
//! residual $\lVert Hv - \lambda v\rVert \le \text{tol}\cdot\lvert\lambda\rvert$ ([`DEFAULT_TOL`]).

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::BatchNorm;

use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};

use burn::tensor::{Tensor, TensorData};
use ndarray::{Array1, ArrayView1};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use super::Batch;
use super::resnet::{Layers, ResNet};
use super::train::{BlockOrder, FullBatchOptions, ImageClassifier, full_batch_gradient, grads_to_vec};
use crate::sharpness::{EigenvalueInterval, LanczosParams, LinearOperator, Which, eigenvalue_intervals, lanczos};
use crate::{Error, Result};

pub use crate::run_dir::config::{BatchNormMode, DEFAULT_EPS_REL, DEFAULT_MAX_HVPS, DEFAULT_TOL};

/// A model whose Hessian [`NetworkHessian`] can take: it gives, at its own parameters, a
/// network to differentiate with BatchNorm in a given [`BatchNormMode`] and, where the model has
/// ReLUs, every ReLU gated by the activation pattern of a reference model (the unperturbed point
/// $\theta$) on the same images.
///
/// Why the gates: the gradient of a ReLU network jumps where a unit changes sign, so a central
/// difference over $\theta \pm \varepsilon\hat v$ adds the jumps of every unit that crosses zero
/// in between, divided by $\varepsilon$. Their number grows like $\varepsilon$, so this term does
/// not vanish as $\varepsilon \to 0$ (measured on a tiny ResNet: the product changed by about
/// 100% between steps $10^{-4}$ and $3\cdot10^{-2}$, and $H(u+v)$ differed from $Hu + Hv$ by
/// 50-70%). With the activation pattern frozen at $\theta$ the network is smooth in the
/// parameters near $\theta$, and the difference converges to the almost-everywhere Hessian, the
/// one automatic differentiation computes (PyTorch's double backward treats $\mathrm{relu}'$ as
/// a constant mask).
pub trait HessianModel<B: AutodiffBackend>: AutodiffModule<B> + ImageClassifier<B> {
    /// The differentiated network (the same parameter ids as the model, so gradients apply to
    /// both).
    type View: AutodiffModule<B> + ImageClassifier<B>;
    /// The network at `self`'s parameters, with BatchNorm in `mode` and ReLUs gated by
    /// `reference`'s activation pattern. Evaluating it must not change `self`'s running
    /// statistics.
    fn view(&self, reference: &Self, mode: BatchNormMode) -> Self::View;
}

/// A [`ResNet`] at the parameters of `net` whose ReLUs are gated by the activation pattern of
/// `reference` on the same images, $\mathrm{relu}(x) \to x \odot \mathbb 1[x_{\text{ref}} > 0]$,
/// and whose BatchNorms use batch statistics (`eval = false`, burn's training forward) or the
/// running statistics (`eval = true`):
/// $\mathrm{bn}(x) = \gamma\,(x - \hat\mu)/\sqrt{\hat\sigma^2 + \epsilon} + \beta$ with the running
/// mean $\hat\mu$ and (biased) running variance $\hat\sigma^2$ held constant, the operations of
/// burn's inference forward. With `reference` equal to `net` the logits are the ResNet's.
#[derive(Module, Debug)]
pub struct GatedResNet<B: Backend> {
    /// The network whose parameters are differentiated.
    pub net: ResNet<B>,
    /// The network whose activation pattern gates the ReLUs (its parameters should not require
    /// gradients: [`NetworkHessian`] passes a `no_grad` copy).
    pub reference: ResNet<B>,
    /// Running statistics instead of batch statistics.
    pub eval: bool,
}

/// The gates of a forward pass: recorded from a reference pass, then applied in order; and
/// BatchNorm with batch statistics or (`eval`) the running ones.
struct GatedLayers<B: Backend> {
    gates: Gates<B>,
    eval: bool,
}

enum Gates<B: Backend> {
    Record(Vec<Tensor<B, 4>>),
    Apply(std::vec::IntoIter<Tensor<B, 4>>),
}

impl<B: Backend> Layers<B> for GatedLayers<B> {
    /// `relu(x)` while recording (the gate is $\mathbb 1[x > 0]$), `x * gate` while applying.
    fn relu(&mut self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match &mut self.gates {
            Gates::Record(gates) => {
                gates.push(x.clone().greater_elem(0.0).float().detach());
                relu(x)
            }
            Gates::Apply(gates) => match gates.next() {
                Some(g) => x.mul(g),
                None => relu(x),
            },
        }
    }

    fn batch_norm(&mut self, bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if self.eval { bn_running(bn, x) } else { super::resnet::batch_norm(bn, x) }
    }
}

fn bn_running<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let c = x.dims()[1];
    let shape = [1, c, 1, 1];
    let mean = bn.running_mean.value().reshape(shape);
    let std = bn.running_var.value().add_scalar(bn.epsilon).sqrt().reshape(shape);
    x.sub(mean).div(std).mul(bn.gamma.val().reshape(shape)).add(bn.beta.val().reshape(shape))
}

impl<B: Backend> GatedResNet<B> {
    /// The logits (shapes as [`ResNet::forward`]): a forward pass of `reference` records the
    /// gates, a forward pass of `net` applies them (both [`ResNet::forward_with`]).
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut record = GatedLayers { gates: Gates::Record(Vec::new()), eval: self.eval };
        self.reference.forward_with(images.clone(), &mut record);
        let gates = match record.gates {
            Gates::Record(g) => g,
            Gates::Apply(_) => Vec::new(),
        };
        self.net.forward_with(images, &mut GatedLayers { gates: Gates::Apply(gates.into_iter()), eval: self.eval })
    }
}

impl<B: Backend> ImageClassifier<B> for GatedResNet<B> {
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward(images)
    }
}

impl<B: AutodiffBackend> HessianModel<B> for ResNet<B> {
    type View = GatedResNet<B>;
    fn view(&self, reference: &Self, mode: BatchNormMode) -> GatedResNet<B> {
        GatedResNet { net: self.clone(), reference: reference.clone(), eval: mode == BatchNormMode::Eval }
    }
}

/// The trainable parameters of `model` (float tensors that require a gradient) as one flat
/// `f32` vector, in visiting order.
///
/// # Errors
/// [`Error::InvalidParameter`] if a tensor cannot be read back.
pub fn trainable_to_vec<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Result<Vec<f32>> {
    super::train::float_tensors_to_vec(model, true)
}

/// Whether each float tensor of `model`, in visiting order, is trainable, with its size.
fn layout<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Vec<(usize, bool)> {
    struct Layout<B> {
        out: Vec<(usize, bool)>,
        _b: PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Layout<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            self.out.push((t.shape().num_elements(), t.is_require_grad()));
        }
    }
    let mut v = Layout::<B> { out: Vec::new(), _b: PhantomData };
    model.visit(&mut v);
    v.out
}

/// A copy of `model` with its trainable parameters replaced by `values` (flat, visiting order,
/// as [`trainable_to_vec`]), as fresh leaves that require gradients; other float tensors
/// (running statistics) are left as they are.
///
/// # Errors
/// [`Error::InvalidParameter`] if `values` has the wrong length.
pub fn with_trainable<B: AutodiffBackend, M: AutodiffModule<B>>(model: M, values: &[f32]) -> Result<M> {
    struct Set<'a, B> {
        values: &'a [f32],
        offset: usize,
        short: bool,
        _b: PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Set<'_, B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            if !tensor.is_require_grad() {
                return Param::from_mapped_value(id, tensor, mapper);
            }
            let shape = tensor.shape();
            let n = shape.num_elements();
            let Some(slice) = self.values.get(self.offset..self.offset + n) else {
                self.short = true;
                return Param::from_mapped_value(id, tensor, mapper);
            };
            self.offset += n;
            let inner =
                Tensor::<B::InnerBackend, D>::from_data(TensorData::new(slice.to_vec(), shape), &tensor.device());
            Param::from_mapped_value(id, Tensor::from_inner(inner).require_grad(), mapper)
        }
    }
    let mut m = Set::<B> { values, offset: 0, short: false, _b: PhantomData };
    let out = model.map(&mut m);
    if m.short || m.offset != values.len() {
        return Err(Error::invalid(
            "values",
            format!("{} values for a model with {} or more trainable entries", values.len(), m.offset),
        ));
    }
    Ok(out)
}

/// The Hessian of the full-batch loss of a burn model at its current parameters, applied by
/// central differences of full-batch gradients (see the module documentation for the formula,
/// the BatchNorm modes, the step and the accuracy).
///
/// [`LinearOperator::apply`] cannot return an error: a failed product returns a vector of NaN
/// (which [`lanczos`] rejects) and keeps the error for [`NetworkHessian::take_error`].
pub struct NetworkHessian<'a, B: AutodiffBackend, M: HessianModel<B>> {
    /// The model with fresh running-statistic cells (see the module documentation).
    base: M,
    /// The same without gradients: the reference of the ReLU gates.
    reference: M,
    data: &'a Batch<B>,
    block_size: usize,
    mode: BatchNormMode,
    theta: Vec<f32>,
    eps: f64,
    layout: Vec<(usize, bool)>,
    applications: Cell<usize>,
    error: RefCell<Option<Error>>,
}

impl<'a, B: AutodiffBackend, M: HessianModel<B>> NetworkHessian<'a, B, M> {
    /// The operator of `model` on `data` in blocks of `block_size` (the BatchNorm batch in
    /// [`BatchNormMode::Train`]), with step $\varepsilon = \texttt{eps\_rel}\max(\lVert\theta\rVert, 1)$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `block_size` is zero or larger than the data, `eps_rel` is
    /// not positive and finite, the model has no trainable parameter, or a tensor cannot be read.
    pub fn new(model: &M, data: &'a Batch<B>, block_size: usize, mode: BatchNormMode, eps_rel: f64) -> Result<Self> {
        if block_size == 0 || block_size > data.len() {
            return Err(Error::invalid(
                "block_size",
                format!("{block_size} is not in 1..={} (the images measured)", data.len()),
            ));
        }
        if !(eps_rel.is_finite() && eps_rel > 0.0) {
            return Err(Error::invalid("eps_rel", format!("{eps_rel} is not positive and finite")));
        }
        let base = M::from_inner(model.valid());
        let reference = base.clone().no_grad();
        let theta = trainable_to_vec(&base)?;
        if theta.is_empty() {
            return Err(Error::invalid("model", "has no trainable parameters"));
        }
        let norm = theta.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        let layout = layout(&base);
        Ok(NetworkHessian {
            base,
            reference,
            data,
            block_size,
            mode,
            theta,
            eps: eps_rel * norm.max(1.0),
            layout,
            applications: Cell::new(0),
            error: RefCell::new(None),
        })
    }

    /// The absolute step $\varepsilon$.
    pub fn step(&self) -> f64 {
        self.eps
    }

    /// The parameters $\theta$ (as `f64`).
    pub fn theta(&self) -> Array1<f64> {
        self.theta.iter().map(|&x| f64::from(x)).collect()
    }

    /// The BatchNorm mode.
    pub fn mode(&self) -> BatchNormMode {
        self.mode
    }

    /// Products computed so far (successful or not).
    pub fn applications(&self) -> usize {
        self.applications.get()
    }

    /// The error of the last failed product, if any (cleared).
    pub fn take_error(&self) -> Option<Error> {
        self.error.borrow_mut().take()
    }

    /// The full-batch gradient $\bar g(\theta')$ (trainable entries, `f64`) at
    /// $\theta' = $ `point` (`None`: at $\theta$).
    ///
    /// # Errors
    /// As [`full_batch_gradient`]; [`Error::InvalidParameter`] for a point of the wrong length.
    pub fn gradient(&self, point: Option<&[f32]>) -> Result<Array1<f64>> {
        let model = match point {
            Some(p) => with_trainable(self.base.clone(), p)?,
            None => self.base.clone(),
        };
        let options =
            FullBatchOptions { block_size: self.block_size, order: BlockOrder::Sequential, regulariser: None };
        let view = model.view(&self.reference, self.mode);
        let full = full_batch_gradient(&view, self.data, &options)?;
        let all = grads_to_vec(&model, &full.grads)?;
        let mut out = Vec::with_capacity(self.theta.len());
        let mut offset = 0;
        for &(n, trainable) in &self.layout {
            let slice = all
                .get(offset..offset + n)
                .ok_or_else(|| Error::invalid("gradient", format!("{} entries, layout needs more", all.len())))?;
            if trainable {
                out.extend(slice.iter().map(|&x| f64::from(x)));
            }
            offset += n;
        }
        Ok(Array1::from(out))
    }

    /// $Hv$ (see the module documentation); 0 for $v = 0$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `v` has the wrong length or is not finite; the errors of
    /// [`NetworkHessian::gradient`].
    pub fn hvp(&self, v: ArrayView1<f64>) -> Result<Array1<f64>> {
        self.applications.set(self.applications.get() + 1);
        let d = self.theta.len();
        if v.len() != d {
            return Err(Error::invalid("v", format!("length {} for {d} parameters", v.len())));
        }
        let norm = v.dot(&v).sqrt();
        if !norm.is_finite() {
            return Err(Error::invalid("v", "is not finite"));
        }
        if norm == 0.0 {
            return Ok(Array1::zeros(d));
        }
        let s = self.eps / norm;
        let shifted = |sign: f64| -> Vec<f32> {
            self.theta.iter().zip(v.iter()).map(|(&t, &x)| (f64::from(t) + sign * s * x) as f32).collect()
        };
        let plus = self.gradient(Some(&shifted(1.0)))?;
        let minus = self.gradient(Some(&shifted(-1.0)))?;
        Ok((plus - minus) * (norm / (2.0 * self.eps)))
    }
}

impl<B: AutodiffBackend, M: HessianModel<B>> LinearOperator for NetworkHessian<'_, B, M> {
    fn dim(&self) -> usize {
        self.theta.len()
    }
    fn apply(&self, v: ArrayView1<f64>) -> Array1<f64> {
        match self.hvp(v) {
            Ok(w) => w,
            Err(e) => {
                *self.error.borrow_mut() = Some(e);
                Array1::from_elem(self.theta.len(), f64::NAN)
            }
        }
    }
}

/// An estimated bound on the error $\lVert(H_\varepsilon - H)v\rVert$ of `op` along the unit
/// vector `v`: twice the sum of two parts, from three products (one of `op`, one at the doubled
/// step, one at 1.25 times the step):
/// - truncation, $\lVert H_{2\varepsilon}v - H_\varepsilon v\rVert / 3$: with a truncation error
///   $c\,\varepsilon^2$ the two differ by $3c\,\varepsilon^2$;
/// - rounding, $\lVert H_{1.25\varepsilon}v - H_\varepsilon v\rVert / \sqrt2$: the `f32` rounding
///   of the perturbed parameters and of the two gradients does not vary smoothly with the step,
///   so two different steps carry nearly independent noise (their truncation errors differ by
///   $0.56\,c\,\varepsilon^2$, which this part then also counts).
///
/// The factor 2 is a safety margin measured against PyTorch's double backpropagation in
/// `float64` (`scripts/check_network_export.py` on `small-synthetic-fb`; products along the top
/// eigenvector after steps 10 and 40, both BatchNorm modes, 64 and 512 images): the actual
/// error was 0.52-1.32 times the sum of the two parts. It is an estimate, not a proof. The
/// truncation part alone underestimated a rounding-dominated product by 3x, and a rounding part
/// from a step only $1 + 2^{-6}$ times larger by 2x (the perturbed parameters then round alike).
/// `model` and `params` must be those `op` was built from.
///
/// # Errors
/// As [`NetworkHessian::new`] and [`NetworkHessian::hvp`].
pub fn operator_error_along<B, M>(
    op: &NetworkHessian<'_, B, M>,
    model: &M,
    params: &SharpnessParams,
    v: ArrayView1<f64>,
) -> Result<f64>
where
    B: AutodiffBackend,
    M: HessianModel<B>,
{
    let at = |factor: f64| -> Result<Array1<f64>> {
        NetworkHessian::new(model, op.data, params.block_size, params.mode, factor * params.eps_rel)?.hvp(v)
    };
    let hv = op.hvp(v)?;
    let norm = |d: Array1<f64>| d.dot(&d).sqrt();
    let truncation = norm(at(2.0)? - &hv) / 3.0;
    let rounding = norm(at(1.25)? - &hv) / std::f64::consts::SQRT_2;
    Ok(2.0 * (truncation + rounding))
}

/// What [`network_lambda_max`] does.
#[derive(Debug, Clone, Serialize)]
pub struct SharpnessParams {
    /// How BatchNorm normalises.
    pub mode: BatchNormMode,
    /// Images per block (the BatchNorm batch in [`BatchNormMode::Train`]).
    pub block_size: usize,
    /// The relative finite-difference step ([`DEFAULT_EPS_REL`]).
    pub eps_rel: f64,
    /// Lanczos tolerance on $\lVert Hv - \lambda v\rVert / \lvert\lambda\rvert$ ([`DEFAULT_TOL`]).
    pub tol: f64,
    /// Budget of Hessian-vector products ([`DEFAULT_MAX_HVPS`]).
    pub max_hvps: usize,
    /// Seed of the random start vector (used when `start` is `None`).
    pub seed: u64,
    /// Warm start: the previous eigenvector (its length must be the number of trainable
    /// parameters).
    #[serde(skip)]
    pub start: Option<Array1<f64>>,
}

impl SharpnessParams {
    /// The defaults for blocks of `block_size` in `mode`, with start seed `seed`.
    pub fn new(mode: BatchNormMode, block_size: usize, seed: u64) -> Self {
        SharpnessParams {
            mode,
            block_size,
            eps_rel: DEFAULT_EPS_REL,
            tol: DEFAULT_TOL,
            max_hvps: DEFAULT_MAX_HVPS,
            seed,
            start: None,
        }
    }
}

/// $\lambda_{\max}$ of a network's Hessian, with the evidence.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkSharpness {
    /// The largest (algebraic) eigenvalue found.
    pub lambda_max: f64,
    /// The true residual $\lVert Hv - \lambda v\rVert$ of the unit eigenvector (from an operator
    /// output, not an estimate).
    pub residual: f64,
    /// Hessian-vector products used (two full-batch gradients each).
    pub hvps: usize,
    /// Whether the residual met `tol` $\cdot\lvert\lambda\rvert$ within the budget.
    pub converged: bool,
    /// Whether no pair met the tolerance within the budget, so the value is the best Ritz value
    /// of the last Krylov space with its true residual: an estimate, not a certified
    /// eigenvalue (`!converged`; kept as a field of its own for readers of earlier results).
    pub fallback: bool,
    /// The absolute finite-difference step $\varepsilon$.
    pub eps: f64,
    /// The estimated error of the operator along the eigenvector $v$,
    /// $\lVert(H_\varepsilon - H)v\rVert$: truncation plus rounding ([`operator_error_along`],
    /// three more products).
    pub operator_error: f64,
    /// An eigenvalue of the Hessian lies in $\lambda_{\max} \pm$ (`residual` + `operator_error`)
    /// (Krylov-Weinstein: $\lVert Hv - \lambda v\rVert \le \lVert H_\varepsilon v - \lambda v\rVert + \lVert(H_\varepsilon - H)v\rVert$),
    /// certified up to the operator error being an estimate; Kato-Temple's tighter interval
    /// where the solver's premise (no eigenvalue above) gives the gap.
    pub interval: EigenvalueInterval,
    /// The number of trainable parameters $d$.
    pub dim: usize,
    /// Images used (in whole blocks).
    pub images: usize,
    /// Wall time of the measurement, seconds.
    pub wall_s: f64,
    /// The unit eigenvector (the next measurement's warm start).
    #[serde(skip)]
    pub vector: Array1<f64>,
}

/// $\lambda_{\max}$ of the Hessian of the full-batch loss of `model` on `data` (see
/// [`NetworkHessian`]) by [`lanczos`] (one eigenpair, largest algebraic, stopping on the true
/// residual; no multiplicity check). When no pair meets the tolerance within `max_hvps` products
/// (the finite-difference operator of a ReLU network is noisy, see the module documentation),
/// Lanczos returns the best Ritz pair of the Krylov space it ended in
/// ([`LanczosParams::keep_unconverged`]): its Rayleigh quotient and true residual (one more
/// product), marked `converged: false`, `fallback: true`. Neither the parameters nor the BatchNorm running statistics
/// of `model` change, and no random generator of the caller is used (the start vector comes from
/// `params.seed` or `params.start`).
///
/// # Errors
/// The errors of [`NetworkHessian::new`]; [`Error::InvalidParameter`] for a `tol` that is not
/// positive, a zero budget or a start vector of the wrong length; a failed product's error;
/// [`Error::Diverged`] if a product is not finite.
pub fn network_lambda_max<B, M>(model: &M, data: &Batch<B>, params: &SharpnessParams) -> Result<NetworkSharpness>
where
    B: AutodiffBackend,
    M: HessianModel<B>,
{
    let start = Instant::now();
    if params.max_hvps == 0 {
        return Err(Error::invalid("max_hvps", "must be positive"));
    }
    let op = NetworkHessian::new(model, data, params.block_size, params.mode, params.eps_rel)?;
    let lp = LanczosParams {
        k: 1,
        which: Which::Largest,
        tol: params.tol,
        floor: params.tol,
        max_basis: 0,
        max_applications: params.max_hvps,
        seed: params.seed,
        verify_multiplicity: false,
        start: params.start.clone(),
        keep_unconverged: true,
        // The finite-difference operator's own error is not measured yet: the intervals in
        // `pairs` cover the residual only (docs/reproduction.md, sharpness).
        operator_error: 0.0,
    };
    let result = lanczos(&op, &lp);
    if let Some(e) = op.take_error() {
        return Err(e);
    }
    let pairs = result?;
    let lambda_max = *pairs.values.first().ok_or_else(|| {
        Error::invalid("max_hvps", format!("{} products left no Ritz pair; allow more", params.max_hvps))
    })?;
    let (residual, vector, converged) =
        (pairs.residuals.first().copied().unwrap_or(f64::NAN), pairs.vectors.column(0).to_owned(), pairs.converged);
    let operator_error = operator_error_along(&op, model, params, vector.view())?;
    let interval = eigenvalue_intervals(&[lambda_max], &[residual], operator_error, Which::Largest)[0];
    let fallback = !converged;
    Ok(NetworkSharpness {
        lambda_max,
        residual,
        hvps: op.applications() + 2,
        converged,
        fallback,
        eps: op.step(),
        operator_error,
        interval,
        dim: op.dim(),
        images: (data.len() / params.block_size) * params.block_size,
        wall_s: start.elapsed().as_secs_f64(),
        vector,
    })
}

/// How far a [`NetworkHessian`] is from an exact symmetric linear operator at its point,
/// measured with two seeded random unit vectors $u, v$ and a direction $x$ (the top eigenvector
/// when one is given, else $v$). Absolute errors are for unit vectors, so they compare directly with a residual
/// $\lVert Hx - \lambda x\rVert$ of a unit $x$: an operator error $\eta$ puts a floor of about
/// $\eta$ under every residual Lanczos can reach.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorDiagnostics {
    /// The absolute step $\varepsilon$ of the operator measured.
    pub eps: f64,
    /// $\lVert Hu\rVert$: the scale of a product along a random direction.
    pub norm_hu: f64,
    /// $\lVert H(u) - H(u)\rVert$ over two evaluations of the same product (0 when the
    /// backend is deterministic).
    pub repeat: f64,
    /// $\lvert\langle u, Hv\rangle - \langle v, Hu\rangle\rvert$ (0 for a symmetric operator).
    pub asymmetry: f64,
    /// $\lVert H(x + u) - Hx - Hu\rVert / \sqrt 2$ with $x$ the direction of the step sweep
    /// (0 for a linear operator; $x + u$ has norm about $\sqrt 2$).
    pub nonlinearity: f64,
    /// The product along $x = w$ (the eigenvector given) or $u$ at each relative step of the
    /// sweep: how much it moves with the step shows its truncation and rounding error.
    pub step_sweep: Vec<StepSweepPoint>,
    /// $\lVert H_\varepsilon x\rVert$ for the $x$ of the sweep.
    pub norm_hx: f64,
    /// $x^\top H_\varepsilon x$ (the Rayleigh quotient at the operator's own step).
    pub rayleigh: f64,
    /// Products computed.
    pub products: usize,
    /// Wall time, seconds.
    pub wall_s: f64,
}

/// One step of [`OperatorDiagnostics::step_sweep`].
#[derive(Debug, Clone, Serialize)]
pub struct StepSweepPoint {
    /// The relative step $\varepsilon'$.
    pub eps_rel: f64,
    /// $\lVert H_{\varepsilon'}x - H_\varepsilon x\rVert$.
    pub change: f64,
    /// $x^\top H_{\varepsilon'}x$: the Rayleigh quotient at this step.
    pub rayleigh: f64,
}

/// Measures [`OperatorDiagnostics`] of the Hessian of `model` on `data` with `params`' mode,
/// block size and step, and a step sweep over `eps_rels` along `direction` (a unit vector of the
/// model's trainable parameters, e.g. the top eigenvector; a random one when `None`).
/// Products: $Hu$ twice, $Hv$, $Hw$ when a direction is given, $H(x + u)$ ($x = w$, else $v$),
/// and one per sweep value (each two full-batch gradients).
///
/// # Errors
/// As [`NetworkHessian::new`] and [`NetworkHessian::hvp`]; [`Error::InvalidParameter`] for a
/// direction of the wrong length.
pub fn operator_diagnostics<B, M>(
    model: &M,
    data: &Batch<B>,
    params: &SharpnessParams,
    direction: Option<ArrayView1<f64>>,
    eps_rels: &[f64],
) -> Result<OperatorDiagnostics>
where
    B: AutodiffBackend,
    M: HessianModel<B>,
{
    let started = Instant::now();
    let op = NetworkHessian::new(model, data, params.block_size, params.mode, params.eps_rel)?;
    let d = op.dim();
    let norm = |x: &Array1<f64>| x.dot(x).sqrt();
    let unit = |seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Array1<f64> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
        &x / norm(&x)
    };
    let (u, v) = (unit(params.seed), unit(params.seed.wrapping_add(1)));
    let hu = op.hvp(u.view())?;
    let hu_again = op.hvp(u.view())?;
    let hv = op.hvp(v.view())?;
    let (x, hx) = match direction {
        Some(w) => {
            if w.len() != d {
                return Err(Error::invalid("direction", format!("length {} for {d} parameters", w.len())));
            }
            let w = &w / norm(&w.to_owned());
            let hw = op.hvp(w.view())?;
            (w, hw)
        }
        None => (v.clone(), hv.clone()),
    };
    let hxu = op.hvp((&x + &u).view())?;
    let mut products = op.applications();
    let mut step_sweep = Vec::with_capacity(eps_rels.len());
    for &eps_rel in eps_rels {
        let other = NetworkHessian::new(model, data, params.block_size, params.mode, eps_rel)?;
        let h = other.hvp(x.view())?;
        products += other.applications();
        step_sweep.push(StepSweepPoint { eps_rel, change: norm(&(&h - &hx)), rayleigh: x.dot(&h) });
    }
    Ok(OperatorDiagnostics {
        eps: op.step(),
        norm_hu: norm(&hu),
        repeat: norm(&(&hu_again - &hu)),
        asymmetry: (u.dot(&hv) - v.dot(&hu)).abs(),
        nonlinearity: norm(&(&hxu - &hx - &hu)) / std::f64::consts::SQRT_2,
        step_sweep,
        norm_hx: norm(&hx),
        rayleigh: x.dot(&hx),
        products,
        wall_s: started.elapsed().as_secs_f64(),
    })
}
