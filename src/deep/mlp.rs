//! A fully connected network written in burn, evaluated in `f64` on burn's Flex CPU backend, as
//! an [`Objective`] over the same flattened parameter vector as [`crate::models::Network`]: the
//! backward-error harness ([`crate::bea`]) and the sharpness solvers run on it unchanged, and
//! every number can be cross-checked against the exact `f64` theory model.
//!
//! Why Flex in `f64`: Flex picks each tensor's element type at run time, so tensors created with
//! [`DType::F64`] are stored and computed in `f64` (matmul, tanh, erf, exp, log) through burn's
//! autodiff, with no second backend to compile. The backward-error measurements need this: the
//! residual they fit is $O(h^2)$ of a step and $\varepsilon_{\text{f32}} \approx 10^{-7}$ would
//! swamp it.
//!
//! Loss and gradient come from burn (reverse mode). The Hessian-vector product is a central
//! difference of two burn gradients ([`central_difference_along`]: step
//! $\varepsilon = \varepsilon_{\text{mach}}^{1/3}(1 + \lVert\theta\rVert_\infty)$ along $v/\lVert v\rVert$, error near
//! $10^{-10}$ relative on well-scaled models), since burn's autodiff has no second order.

use burn::tensor::activation::{gelu, log_softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use ndarray::{Array1, Array2, ArrayView1, Axis};

use super::{Cpu, CpuAutodiff};
use crate::models::{Activation, Network, NetworkSpec, OutputLoss};
use crate::objective::{FiniteSum, Objective, central_difference_along};

/// The network of a [`NetworkSpec`] on fixed data, in burn, `f64`; an [`Objective`] and a
/// [`FiniteSum`] (minibatches select rows of the data).
///
/// Parameters are the flat vector of [`Network::parameter_layout`]: per layer $W_l$
/// ($d_l \times d_{l-1}$, row-major), then $b_l$ when biases are on. The loss is the spec's
/// [`OutputLoss`] averaged over the examples, as in [`Network`].
///
/// # Shapes
/// - inputs: `[n, d_0]`; targets: `[n, d_L]` (one-hot for classes, as [`Network::targets`]).
#[derive(Debug, Clone)]
pub struct BurnMlp {
    spec: NetworkSpec,
    /// `(fan_in, fan_out)` per layer.
    layers: Vec<(usize, usize)>,
    dim: usize,
    inputs: Array2<f64>,
    targets: Array2<f64>,
}

impl BurnMlp {
    /// The burn twin of `network`: same architecture, same data and targets.
    pub fn from_network(network: &Network) -> Self {
        let spec = network.spec().clone();
        let mut widths = vec![spec.input_dim];
        widths.extend(&spec.hidden);
        widths.push(spec.output_dim);
        let layers: Vec<(usize, usize)> = widths.windows(2).map(|w| (w[0], w[1])).collect();
        let dim = layers.iter().map(|&(i, o)| i * o + if spec.bias { o } else { 0 }).sum();
        BurnMlp { spec, layers, dim, inputs: network.inputs().clone(), targets: network.targets().clone() }
    }

    /// The mean loss at `theta` (a tensor of shape `[dim]`) on backend `B`, over every example
    /// or over the examples of `batch` (with multiplicity).
    fn loss_tensor<B: Backend>(&self, theta: Tensor<B, 1>, batch: Option<&[usize]>) -> Tensor<B, 1> {
        let device = theta.device();
        let (inputs, targets) = match batch {
            Some(b) => (self.inputs.select(Axis(0), b), self.targets.select(Axis(0), b)),
            None => (self.inputs.clone(), self.targets.clone()),
        };
        let (n, d0) = inputs.dim();
        let x = f64_tensor::<B, 2>(inputs.iter().copied().collect(), [n, d0], &device);
        let mut a = x;
        let mut offset = 0;
        let last = self.layers.len() - 1;
        for (l, &(fan_in, fan_out)) in self.layers.iter().enumerate() {
            let w = theta.clone().slice(offset..offset + fan_in * fan_out).reshape([fan_out, fan_in]);
            offset += fan_in * fan_out;
            let mut z = a.matmul(w.transpose());
            if self.spec.bias {
                let b = theta.clone().slice(offset..offset + fan_out).reshape([1, fan_out]);
                offset += fan_out;
                z = z + b;
            }
            a = if l == last { z } else { activate(z, self.spec.activation) };
        }
        let k = self.spec.output_dim;
        let y = f64_tensor::<B, 2>(targets.iter().copied().collect(), [n, k], &device);
        let per_example = match self.spec.loss {
            OutputLoss::MeanSquaredError => (a - y).powi_scalar(2).sum_dim(1) * 0.5,
            OutputLoss::BinaryCrossEntropy => (softplus(a.clone()) - y * a).sum_dim(1),
            OutputLoss::SoftmaxCrossEntropy => (y * log_softmax(a, 1)).sum_dim(1).neg(),
        };
        per_example.reshape([n]).mean()
    }
}

/// A tensor of `f64` values stored as `f64` (not the backend's default float type).
pub(super) fn f64_tensor<B: Backend, const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F64))
}

/// $\log(1 + e^x) = \max(x, 0) + \log(1 + e^{-|x|})$, without overflow.
pub(super) fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p()
}

/// The hidden layers' activation (GELU: burn's erf form, $x\,\Phi(x)$).
fn activate<B: Backend, const D: usize>(z: Tensor<B, D>, activation: Activation) -> Tensor<B, D> {
    match activation {
        Activation::Identity => z,
        Activation::Tanh => z.tanh(),
        Activation::Softplus => softplus(z),
        Activation::Gelu => gelu(z),
    }
}

/// The values of a 1-D tensor as `f64`.
pub(super) fn to_array<B: Backend>(t: Tensor<B, 1>) -> Array1<f64> {
    let data = t.into_data().convert::<f64>();
    Array1::from_iter(data.iter::<f64>())
}

impl BurnMlp {
    /// $(L_B, \nabla L_B)$ by burn's reverse mode, over `batch` (every example for `None`).
    fn loss_and_gradient_on(&self, theta: ArrayView1<f64>, batch: Option<&[usize]>) -> (f64, Array1<f64>) {
        reverse_mode(theta, |t| self.loss_tensor(t, batch))
    }

    /// $L_B$ without autodiff, over `batch` (every example for `None`).
    fn loss_on(&self, theta: ArrayView1<f64>, batch: Option<&[usize]>) -> f64 {
        forward(theta, |t| self.loss_tensor(t, batch))
    }
}

/// The value and gradient of the scalar `loss` at `theta` (`f64` on Flex) by burn's reverse mode.
pub(super) fn reverse_mode(
    theta: ArrayView1<f64>,
    loss: impl Fn(Tensor<CpuAutodiff, 1>) -> Tensor<CpuAutodiff, 1>,
) -> (f64, Array1<f64>) {
    let device = Default::default();
    let t = f64_tensor::<CpuAutodiff, 1>(theta.iter().copied().collect(), [theta.len()], &device).require_grad();
    let value = loss(t.clone());
    let grads = value.backward();
    let v = to_array(value.inner())[0];
    // Every parameter reaches the loss, so burn has a gradient for `t`.
    let g = t.grad(&grads).map(to_array).unwrap_or_else(|| Array1::zeros(theta.len()));
    (v, g)
}

/// The value of the scalar `loss` at `theta` (`f64` on Flex), without autodiff.
pub(super) fn forward(theta: ArrayView1<f64>, loss: impl Fn(Tensor<Cpu, 1>) -> Tensor<Cpu, 1>) -> f64 {
    let device = Default::default();
    to_array(loss(f64_tensor::<Cpu, 1>(theta.iter().copied().collect(), [theta.len()], &device)))[0]
}

impl Objective for BurnMlp {
    fn dim(&self) -> usize {
        self.dim
    }

    fn loss(&self, theta: ArrayView1<f64>) -> f64 {
        self.loss_on(theta, None)
    }

    fn gradient(&self, theta: ArrayView1<f64>) -> Array1<f64> {
        self.loss_and_gradient_on(theta, None).1
    }

    fn loss_and_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>) {
        self.loss_and_gradient_on(theta, None)
    }

    fn hvp(&self, theta: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        central_difference_along(|p| self.gradient(p), theta, v)
    }
}

impl FiniteSum for BurnMlp {
    fn n_examples(&self) -> usize {
        self.inputs.nrows()
    }

    fn batch_loss(&self, theta: ArrayView1<f64>, batch: &[usize]) -> f64 {
        self.loss_on(theta, Some(batch))
    }

    fn batch_gradient(&self, theta: ArrayView1<f64>, batch: &[usize]) -> Array1<f64> {
        self.loss_and_gradient_on(theta, Some(batch)).1
    }

    fn batch_hvp(&self, theta: ArrayView1<f64>, batch: &[usize], v: ArrayView1<f64>) -> Array1<f64> {
        central_difference_along(|p| self.batch_gradient(p, batch), theta, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, Targets};

    #[test]
    fn softplus_does_not_overflow() {
        let device = Default::default();
        let x = f64_tensor::<Cpu, 1>(vec![-800.0, 0.0, 800.0], [3], &device);
        let y = to_array(softplus(x));
        assert_eq!(y[0], 0.0);
        assert!((y[1] - 2f64.ln()).abs() < 1e-15);
        assert_eq!(y[2], 800.0);
    }

    #[test]
    fn loss_is_computed_in_f64() {
        // A loss whose f32 rounding would show: one linear output, MSE, on values near 1 + 1e-12.
        let data = Dataset {
            inputs: Array2::from_shape_vec((2, 1), vec![1.0, 1.0 + 1e-12]).unwrap(),
            targets: Targets::Values(Array2::zeros((2, 1))),
        };
        let spec = NetworkSpec {
            input_dim: 1,
            hidden: vec![],
            output_dim: 1,
            activation: Activation::Identity,
            bias: false,
            loss: OutputLoss::MeanSquaredError,
        };
        let net = Network::new(spec, &data).unwrap();
        let mlp = BurnMlp::from_network(&net);
        let theta = Array1::from(vec![1.0]);
        let exact = (1.0 + (1.0 + 1e-12f64).powi(2)) / 4.0;
        assert!((mlp.loss(theta.view()) - exact).abs() < 1e-15, "{}", mlp.loss(theta.view()));
    }
}
