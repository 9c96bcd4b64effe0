//! The Hessian of a network at a fixed point, with the forward pass done once.

use ndarray::{Array1, ArrayView1};

use super::{Forward, Network};
use crate::objective::Objective;
use crate::sharpness::LinearOperator;

/// $\nabla^2 L(\theta)$ of a [`Network`] on its training set at a fixed $\theta$, as a
/// [`LinearOperator`] (what [`Objective::hessian_at`] returns for a network).
///
/// The forward pass (pre-activations, activations, output probabilities) is computed once, when
/// the operator is made; each product then runs the R-forward and backward passes only. For an
/// MLP whose first layer dominates ($n \times d_0 \times d_1$ products), that is two such
/// products per HVP instead of three. Products are bit-identical to
/// [`Objective::hvp`]`(theta, v)`, which repeats the forward pass every time.
pub struct NetworkHessian<'a> {
    net: &'a Network,
    theta: Array1<f64>,
    /// `Some` until dropped (its buffers then go back to the network's pool).
    forward: Option<Forward>,
}

impl<'a> NetworkHessian<'a> {
    /// The operator at `theta`.
    ///
    /// # Panics
    /// When `theta` does not have [`Objective::dim`] entries.
    pub fn new(net: &'a Network, theta: ArrayView1<f64>) -> Self {
        let theta = net.contiguous(theta).into_owned();
        let forward = net.forward(theta.as_slice().expect("contiguous"), net.inputs.view(), Some(net.targets.view()));
        NetworkHessian { net, theta, forward: Some(forward) }
    }
}

impl LinearOperator for NetworkHessian<'_> {
    fn dim(&self) -> usize {
        self.net.dim()
    }

    fn apply(&self, v: ArrayView1<f64>) -> Array1<f64> {
        let v = self.net.contiguous(v);
        let forward = self.forward.as_ref().expect("present until dropped");
        self.net.hvp_after_forward(
            self.theta.as_slice().expect("contiguous"),
            v.as_slice().expect("standard layout"),
            self.net.inputs.view(),
            self.net.targets.view(),
            forward,
        )
    }
}

impl Drop for NetworkHessian<'_> {
    fn drop(&mut self) {
        if let Some(forward) = self.forward.take() {
            self.net.recycle(forward);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Activation, OutputLoss};

    /// Every product equals a fresh `hvp` at the same point to the last bit (same arithmetic in
    /// the same order), for each loss and activation kind, over several directions; a strided
    /// direction is accepted; the operator's buffers go back to the pool when it is dropped.
    #[test]
    fn products_equal_fresh_hvps_bit_for_bit() {
        let data = crate::data::gaussian_mixture(60, 5, 3, 2.0, 11).expect("valid sizes");
        for (activation, loss) in [
            (Activation::Tanh, OutputLoss::SoftmaxCrossEntropy),
            (Activation::Softplus, OutputLoss::MeanSquaredError),
            (Activation::Tanh, OutputLoss::MeanSquaredError),
        ] {
            let net = crate::models::mlp(&data, &[7, 6], 3, activation, loss).expect("valid network");
            let theta = net.initial_parameters(3);
            let op = net.hessian_at(theta.view());
            assert_eq!(op.dim(), net.dim());
            for seed in 0..3 {
                let v = net.initial_parameters(100 + seed);
                assert_eq!(op.apply(v.view()), net.hvp(theta.view(), v.view()), "{activation:?} {loss:?}");
            }
            let wide = ndarray::Array2::from_shape_fn((net.dim(), 2), |(i, j)| (i * 3 + j) as f64 / 100.0);
            let column = wide.column(1);
            assert_eq!(op.apply(column), net.hvp(theta.view(), column));
        }
    }
}
