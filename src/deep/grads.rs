//! Arithmetic on a model's gradients (`GradientsParams`) and flat views of its tensors: the
//! global norm, scaling, global-norm clipping, interpolation of two gradients, the parameters
//! moved along a gradient, and the gradients or parameters as one `f32` vector. Used by the
//! full-batch step and the regulariser in [`super::train`] and by the network Hessian.

use std::marker::PhantomData;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A coefficient of [`lerp_grads`]: a host number or a one-element device tensor.
pub(crate) enum Coef<B: Backend> {
    Scalar(f64),
    Tensor(Tensor<B, 1>),
}

/// $a + c\,(b - a)$ for every parameter of `model` (parameters without a gradient in `b` keep
/// `a`'s; parameters only in `b` get `c b`).
pub(crate) fn lerp_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    a: GradientsParams,
    mut b: GradientsParams,
    c: Coef<B::InnerBackend>,
) -> GradientsParams {
    struct Lerp<'a, B: AutodiffBackend> {
        a: GradientsParams,
        b: &'a mut GradientsParams,
        c: Coef<B::InnerBackend>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Lerp<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let id = param.id;
            let Some(y) = self.b.remove::<B::InnerBackend, D>(id) else { return };
            let x = self.a.remove::<B::InnerBackend, D>(id);
            let diff = match &x {
                Some(x) => y - x.clone(),
                None => y,
            };
            let step = match &self.c {
                Coef::Scalar(c) => diff.mul_scalar(*c),
                Coef::Tensor(c) => diff.mul(c.clone().reshape([1; D])),
            };
            let out = match x {
                Some(x) => x + step,
                None => step,
            };
            self.a.register::<B::InnerBackend, D>(id, out);
        }
    }
    let mut v = Lerp::<B> { a, b: &mut b, c };
    model.visit(&mut v);
    v.a
}

/// A copy of `model` with every float parameter moved to $\theta + s\,g$ ($s$ a one-element
/// tensor), as fresh leaves that require gradients.
pub(crate) fn perturb<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    grads: &GradientsParams,
    s: Tensor<B::InnerBackend, 1>,
) -> M {
    struct Shift<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        s: Tensor<B::InnerBackend, 1>,
        _b: PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Shift<'_, B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            // Only parameters with a gradient move. Others (BatchNorm running statistics, which
            // burn visits as float tensors and which clones share) stay exactly as they are.
            match self.grads.get::<B::InnerBackend, D>(id) {
                Some(g) => {
                    let moved = tensor.inner() + g.mul(self.s.clone().reshape([1; D]));
                    Param::from_mapped_value(id, Tensor::from_inner(moved).require_grad(), mapper)
                }
                None => Param::from_mapped_value(id, tensor, mapper),
            }
        }
    }
    model.map(&mut Shift::<B> { grads, s, _b: PhantomData })
}

/// $\sum_p \lVert g_p\rVert^2$ over the parameters of `model`, as a one-element device tensor.
pub(crate) fn grad_sq_norm_tensor<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> Tensor<B::InnerBackend, 1> {
    struct SqNorm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SqNorm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.square().sum();
                self.sum = Some(add_opt(self.sum.take(), s));
            }
        }
    }
    let mut v = SqNorm::<B> { grads, sum: None };
    model.visit(&mut v);
    v.sum.unwrap_or_else(|| Tensor::zeros([1], &Default::default()))
}

/// The global L2 norm of a gradient over all parameter tensors of `model`,
/// $\lVert g\rVert = (\sum_p \sum_i g_{p,i}^2)^{1/2}$ (one host synchronisation).
///
/// # Errors
/// [`Error::InvalidParameter`] if the value cannot be read back.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &GradientsParams) -> Result<f64> {
    Ok(read_scalar(Some(grad_sq_norm_tensor(model, grads)))?.sqrt())
}

/// `grads` times `factor`, parameter by parameter.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    struct Scale<B> {
        grads: GradientsParams,
        factor: f64,
        _b: PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut v = Scale::<B> { grads, factor, _b: PhantomData };
    model.visit(&mut v);
    v.grads
}

/// A copy of `grads` for the parameters of `model` (the tensors are shared until one side
/// changes, as burn tensors are).
pub(crate) fn copy_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> GradientsParams {
    struct Copy<'a, B> {
        from: &'a GradientsParams,
        to: GradientsParams,
        _b: PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Copy<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.from.get::<B::InnerBackend, D>(param.id) {
                self.to.register::<B::InnerBackend, D>(param.id, g);
            }
        }
    }
    let mut v = Copy::<B> { from: grads, to: GradientsParams::default(), _b: PhantomData };
    model.visit(&mut v);
    v.to
}

/// What [`clip_global_norm`] did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipReport {
    /// The global norm before clipping.
    pub norm: f64,
    /// The factor applied (1 when not clipped).
    pub scale: f64,
    /// Whether the norm exceeded the threshold.
    pub clipped: bool,
}

/// Global-L2 gradient clipping across all parameter tensors (burn's `GradientClippingConfig`
/// clips each tensor separately): with $\nu = \lVert g\rVert$ the global norm, if $\nu > c$ the
/// gradient is scaled by $c/(\nu + 10^{-6})$, else left unchanged (as the official code and
/// PyTorch's `clip_grad_norm_`).
///
/// # Errors
/// [`Error::InvalidParameter`] if `max_norm` is not positive and finite; [`Error::Diverged`]
/// (step 0) if the norm is not finite.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> Result<(GradientsParams, ClipReport)> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid("max_norm", format!("{max_norm} is not positive and finite")));
    }
    let norm = global_grad_norm(model, &grads)?;
    if !norm.is_finite() {
        return Err(Error::Diverged { step: 0, quantity: "gradient norm".into() });
    }
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        Ok((scale_grads(model, grads, scale), ClipReport { norm, scale, clipped: true }))
    } else {
        Ok((grads, ClipReport { norm, scale: 1.0, clipped: false }))
    }
}

/// The gradient as one flat `f32` vector, parameters in the model's visiting order (zeros for a
/// float tensor without a gradient, such as BatchNorm running statistics). For tests and diagnostics: it copies everything to the host.
///
/// # Errors
/// [`Error::InvalidParameter`] if a tensor cannot be read back.
pub fn grads_to_vec<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &GradientsParams) -> Result<Vec<f32>> {
    struct Flatten<'a, B> {
        grads: &'a GradientsParams,
        out: Vec<f32>,
        error: Option<Error>,
        _b: PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            match self.grads.get::<B::InnerBackend, D>(param.id) {
                Some(g) => match g.into_data().convert::<f32>().to_vec::<f32>() {
                    Ok(v) => self.out.extend(v),
                    Err(e) => self.error = Some(Error::invalid("gradient", format!("{e:?}"))),
                },
                None => self.out.extend(std::iter::repeat_n(0.0, param.shape().num_elements())),
            }
        }
    }
    let mut v = Flatten::<B> { grads, out: Vec::new(), error: None, _b: PhantomData };
    model.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(v.out),
    }
}

/// The float tensors of `model` as one flat `f32` vector, in visiting order (host copy); this
/// includes BatchNorm running statistics, which burn visits as float tensors.
///
/// # Errors
/// [`Error::InvalidParameter`] if a tensor cannot be read back.
pub fn params_to_vec<B: Backend, M: burn::module::Module<B>>(model: &M) -> Result<Vec<f32>> {
    float_tensors_to_vec(model, false)
}

/// The float tensors of `model` (only those that require a gradient when `trainable_only`) as
/// one flat `f32` vector, in visiting order.
pub(crate) fn float_tensors_to_vec<B: Backend, M: burn::module::Module<B>>(
    model: &M,
    trainable_only: bool,
) -> Result<Vec<f32>> {
    struct Flatten<B> {
        trainable_only: bool,
        out: Vec<f32>,
        error: Option<Error>,
        _b: PhantomData<B>,
    }
    impl<B: Backend> ModuleVisitor<B> for Flatten<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            if self.trainable_only && !t.is_require_grad() {
                return;
            }
            match t.into_data().convert::<f32>().to_vec::<f32>() {
                Ok(v) => self.out.extend(v),
                Err(e) => self.error = Some(Error::invalid("parameter", format!("{e:?}"))),
            }
        }
    }
    let mut v = Flatten::<B> { trainable_only, out: Vec::new(), error: None, _b: PhantomData };
    model.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(v.out),
    }
}

/// `acc + x`, or `x` when there is no sum yet.
pub(crate) fn add_opt<B: Backend>(acc: Option<Tensor<B, 1>>, x: Tensor<B, 1>) -> Tensor<B, 1> {
    match acc {
        None => x,
        Some(a) => a + x,
    }
}

/// Reads a one-element tensor back to the host (0 for `None`).
pub(crate) fn read_scalar<B: Backend>(t: Option<Tensor<B, 1>>) -> Result<f64> {
    match t {
        None => Ok(0.0),
        Some(t) => {
            let values = t
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| Error::invalid("tensor", format!("{e:?}")))?;
            values.first().map(|&v| f64::from(v)).ok_or_else(|| Error::invalid("tensor", "is empty"))
        }
    }
}
