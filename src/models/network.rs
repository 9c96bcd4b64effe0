//! Fully connected networks with exact gradients, exact Hessian-vector products (Pearlmutter's
//! R-operator) and, for networks without hidden layers, exact third derivatives.
//!
//! One engine covers several toy models: linear least squares, binary and softmax logistic
//! regression (no hidden layer), MLPs with smooth activations, and deep linear networks
//! (identity activation, no biases: matrix factorisation).
//!
//! # Shapes
//! Examples are rows. With $L$ layers, $Z_0 = X \in \mathbb{R}^{n\times d_0}$,
//! $A_l = Z_{l-1} W_l^\top + \mathbf 1 b_l^\top \in \mathbb{R}^{n \times d_l}$,
//! $Z_l = \sigma(A_l)$ for $l < L$, and the output is $A_L$ (no activation). Parameters are
//! flattened layer by layer: $W_l$ row-major ($d_l \times d_{l-1}$), then $b_l$ when biases are on.
//!
//! # Losses (means over the $n$ examples of the batch)
//! - mean squared error: $\frac{1}{2n}\sum_i \|a_i - y_i\|^2$;
//! - binary cross-entropy (one output, $y_i \in \{0,1\}$): $\frac1n\sum_i \log(1+e^{a_i}) - y_i a_i$;
//! - softmax cross-entropy (one-hot $y_i$): $\frac1n\sum_i \log\sum_k e^{a_{ik}} - y_i^\top a_i$.
//!
//! # Derivatives
//! Backward: $\Delta_L = \partial L/\partial A_L$, $\nabla W_l = \Delta_l^\top Z_{l-1}$,
//! $\nabla b_l = \Delta_l^\top \mathbf 1$, $\Delta_{l-1} = \sigma'(A_{l-1}) \odot (\Delta_l W_l)$.
//! The HVP with direction $(V_l, c_l)$ applies the R-operator $R\{\cdot\}$ (directional
//! derivative) to every line: $R A_l = Z_{l-1}V_l^\top + RZ_{l-1}W_l^\top + \mathbf 1 c_l^\top$,
//! $RZ_l = \sigma'(A_l)\odot RA_l$, $R\Delta_L = \ell''(A_L)[RA_L]$,
//! $R\nabla W_l = R\Delta_l^\top Z_{l-1} + \Delta_l^\top RZ_{l-1}$,
//! $R\Delta_{l-1} = \sigma''(A_{l-1})\odot RA_{l-1}\odot(\Delta_l W_l) + \sigma'(A_{l-1})\odot(\Delta_l V_l + R\Delta_l W_l)$.

use ndarray::linalg::general_mat_mul;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, CowArray, Ix1, Zip, s};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::activation::{Activation, PARALLEL_MIN, sigmoid, softplus};
use super::buffer_pool::BufferPool;
use crate::data::{Dataset, Targets};
use crate::objective::{FiniteSum, Objective};
use crate::sharpness::LinearOperator;

mod hessian;
use crate::{Error, Result};
pub use hessian::NetworkHessian;

/// `Zip::for_each`, in parallel for large arrays.
macro_rules! zip_for_each {
    ($len:expr, $zip:expr, $f:expr) => {
        if $len >= PARALLEL_MIN { $zip.par_for_each($f) } else { $zip.for_each($f) }
    };
}

/// The loss on the network's output, averaged over examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputLoss {
    /// $\frac{1}{2n}\sum_i\|a_i - y_i\|^2$.
    MeanSquaredError,
    /// $\frac1n\sum_i \log(1+e^{a_i}) - y_i a_i$ (one output).
    BinaryCrossEntropy,
    /// $\frac1n\sum_i \mathrm{lse}(a_i) - y_i^\top a_i$.
    SoftmaxCrossEntropy,
}

/// The architecture of a [`Network`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Input dimension $d_0$.
    pub input_dim: usize,
    /// Hidden widths $d_1, \dots, d_{L-1}$ (empty: a generalised linear model).
    pub hidden: Vec<usize>,
    /// Output dimension $d_L$.
    pub output_dim: usize,
    /// Activation of the hidden layers.
    pub activation: Activation,
    /// Whether every layer has a bias.
    pub bias: bool,
    /// The loss on the outputs.
    pub loss: OutputLoss,
}

/// One named parameter tensor inside the flattened parameter vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterBlock {
    /// `W1`, `b1`, `W2`, ...
    pub name: String,
    /// Index of its first entry.
    pub offset: usize,
    /// Its shape (row-major).
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Layer {
    fan_in: usize,
    fan_out: usize,
    weight_offset: usize,
    bias_offset: Option<usize>,
}

impl NetworkSpec {
    fn layers(&self) -> (Vec<Layer>, usize) {
        let mut widths = vec![self.input_dim];
        widths.extend(&self.hidden);
        widths.push(self.output_dim);
        let mut offset = 0;
        let mut layers = Vec::new();
        for w in widths.windows(2) {
            let weight_offset = offset;
            offset += w[0] * w[1];
            let bias_offset = self.bias.then(|| {
                let o = offset;
                offset += w[1];
                o
            });
            layers.push(Layer { fan_in: w[0], fan_out: w[1], weight_offset, bias_offset });
        }
        (layers, offset)
    }
}

/// A fully connected network with its training data: an [`Objective`] and [`FiniteSum`] in the
/// flattened parameters.
#[derive(Debug, Clone)]
pub struct Network {
    spec: NetworkSpec,
    layers: Vec<Layer>,
    dim: usize,
    inputs: Array2<f64>,
    targets: Array2<f64>,
    pool: BufferPool,
}

/// Values kept from the forward pass.
struct Forward {
    /// $A_1, \dots, A_L$.
    pre: Vec<Array2<f64>>,
    /// $Z_1, \dots, Z_{L-1}$.
    post: Vec<Array2<f64>>,
    /// Softmax or sigmoid probabilities of the output (cross-entropy losses only).
    probabilities: Option<Array2<f64>>,
}

impl Network {
    /// The network `spec` on `data`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when a width is zero, the data's input dimension differs from
    /// `spec.input_dim`, or the targets do not fit the loss (softmax cross-entropy needs
    /// `output_dim` classes; binary cross-entropy one output and two classes or values in
    /// $[0,1]$; mean squared error values with `output_dim` columns or `output_dim` classes,
    /// one-hot encoded).
    pub fn new(spec: NetworkSpec, data: &Dataset) -> Result<Self> {
        if spec.input_dim == 0 || spec.output_dim == 0 || spec.hidden.contains(&0) {
            return Err(Error::invalid("network widths", "every width must be positive"));
        }
        let (n, d) = data.inputs.dim();
        if n == 0 {
            return Err(Error::invalid("data", "no examples"));
        }
        if d != spec.input_dim {
            return Err(Error::invalid(
                "input_dim",
                format!("network expects {} inputs, data has {d}", spec.input_dim),
            ));
        }
        let k = spec.output_dim;
        let targets = match (&spec.loss, &data.targets) {
            (
                OutputLoss::SoftmaxCrossEntropy | OutputLoss::MeanSquaredError,
                Targets::Classes { labels, n_classes },
            ) => {
                if *n_classes != k {
                    return Err(Error::invalid("output_dim", format!("{k} outputs for {n_classes} classes")));
                }
                one_hot(labels, k)
            }
            (OutputLoss::BinaryCrossEntropy, Targets::Classes { labels, n_classes }) => {
                if *n_classes != 2 || k != 1 {
                    return Err(Error::invalid(
                        "output_dim",
                        format!(
                            "binary cross-entropy needs 1 output and 2 classes, got {k} outputs and {n_classes} classes"
                        ),
                    ));
                }
                Array2::from_shape_fn((n, 1), |(i, _)| labels[i] as f64)
            }
            (OutputLoss::MeanSquaredError, Targets::Values(y)) => {
                if y.ncols() != k {
                    return Err(Error::invalid("output_dim", format!("{k} outputs for {} target columns", y.ncols())));
                }
                y.clone()
            }
            (OutputLoss::BinaryCrossEntropy, Targets::Values(y)) => {
                if y.ncols() != 1 || k != 1 || y.iter().any(|t| !(0.0..=1.0).contains(t)) {
                    return Err(Error::invalid(
                        "targets",
                        "binary cross-entropy needs one target column with values in [0, 1]",
                    ));
                }
                y.clone()
            }
            (OutputLoss::SoftmaxCrossEntropy, Targets::Values(_)) => {
                return Err(Error::invalid("targets", "softmax cross-entropy needs class labels"));
            }
        };
        let (layers, dim) = spec.layers();
        Ok(Network { spec, layers, dim, inputs: data.inputs.clone(), targets, pool: BufferPool::default() })
    }

    /// Where each weight matrix and bias sits in the flattened parameter vector, in order:
    /// `W1` ($d_1 \times d_0$, row-major), `b1` (when biases are on), `W2`, ...
    pub fn parameter_layout(&self) -> Vec<ParameterBlock> {
        let mut blocks = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            blocks.push(ParameterBlock {
                name: format!("W{}", l + 1),
                offset: layer.weight_offset,
                shape: vec![layer.fan_out, layer.fan_in],
            });
            if let Some(offset) = layer.bias_offset {
                blocks.push(ParameterBlock { name: format!("b{}", l + 1), offset, shape: vec![layer.fan_out] });
            }
        }
        blocks
    }

    /// The architecture.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    /// The training inputs ($n \times d_0$).
    pub fn inputs(&self) -> &Array2<f64> {
        &self.inputs
    }

    /// The targets as the loss sees them ($n \times d_L$: one-hot for classes).
    pub fn targets(&self) -> &Array2<f64> {
        &self.targets
    }

    /// Seeded initial parameters: $W_l$ entries $\mathcal N(0, 1/d_{l-1})$ (LeCun normal),
    /// biases zero.
    pub fn initial_parameters(&self, seed: u64) -> Array1<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut theta = Array1::zeros(self.dim);
        for layer in &self.layers {
            let std = 1.0 / (layer.fan_in as f64).sqrt();
            let n = layer.fan_in * layer.fan_out;
            for x in theta.slice_mut(s![layer.weight_offset..layer.weight_offset + n]) {
                let z: f64 = StandardNormal.sample(&mut rng);
                *x = z * std;
            }
        }
        theta
    }

    /// The network's outputs $A_L$ on `inputs` (rows are examples).
    ///
    /// # Panics
    /// If `theta` or the input width is wrong.
    pub fn outputs(&self, theta: ArrayView1<f64>, inputs: ArrayView2<f64>) -> Array2<f64> {
        let theta = self.contiguous(theta);
        let theta = theta.as_slice().expect("standard layout");
        let mut fwd = self.forward(theta, inputs, None);
        fwd.pre.pop().expect("at least one layer")
    }

    /// Classification accuracy on `inputs` with labels `labels` (argmax of the outputs; for one
    /// output, output > 0 means class 1).
    pub fn accuracy(&self, theta: ArrayView1<f64>, inputs: ArrayView2<f64>, labels: &[usize]) -> f64 {
        let out = self.outputs(theta, inputs);
        let correct = out
            .outer_iter()
            .zip(labels)
            .filter(|(row, label)| {
                let predicted = if row.len() == 1 {
                    usize::from(row[0] > 0.0)
                } else {
                    row.iter()
                        .enumerate()
                        .fold((0, f64::NEG_INFINITY), |best, (j, &x)| if x > best.1 { (j, x) } else { best })
                        .0
                };
                predicted == **label
            })
            .count();
        correct as f64 / labels.len().max(1) as f64
    }

    fn contiguous<'a>(&self, theta: ArrayView1<'a, f64>) -> CowArray<'a, f64, Ix1> {
        assert_eq!(theta.len(), self.dim, "parameter vector has the wrong length");
        if theta.is_standard_layout() { CowArray::from(theta) } else { CowArray::from(theta.to_owned()) }
    }

    fn weight<'a>(&self, theta: &'a [f64], l: usize) -> ArrayView2<'a, f64> {
        let layer = self.layers[l];
        let n = layer.fan_in * layer.fan_out;
        ArrayView2::from_shape((layer.fan_out, layer.fan_in), &theta[layer.weight_offset..layer.weight_offset + n])
            .expect("weight block has its layer's shape")
    }

    fn bias<'a>(&self, theta: &'a [f64], l: usize) -> Option<ArrayView1<'a, f64>> {
        let layer = self.layers[l];
        layer.bias_offset.map(|o| ArrayView1::from(&theta[o..o + layer.fan_out]))
    }

    fn weight_mut<'a>(&self, out: &'a mut [f64], l: usize) -> ArrayViewMut2<'a, f64> {
        let layer = self.layers[l];
        let n = layer.fan_in * layer.fan_out;
        ArrayViewMut2::from_shape((layer.fan_out, layer.fan_in), &mut out[layer.weight_offset..layer.weight_offset + n])
            .expect("weight block has its layer's shape")
    }

    /// $Z W^\top + \mathbf 1 b^\top$, into a pooled buffer.
    fn affine(&self, z: ArrayView2<f64>, w: ArrayView2<f64>, b: Option<ArrayView1<f64>>) -> Array2<f64> {
        let mut a = self.pool.take(z.nrows(), w.nrows());
        general_mat_mul(1.0, &z, &w.t(), 0.0, &mut a);
        if let Some(b) = b {
            a += &b;
        }
        a
    }

    /// `delta W` into a pooled buffer.
    fn backprop(&self, delta: &Array2<f64>, w: ArrayView2<f64>) -> Array2<f64> {
        let mut out = self.pool.take(delta.nrows(), w.ncols());
        general_mat_mul(1.0, delta, &w, 0.0, &mut out);
        out
    }

    /// Returns the forward pass's buffers to the pool.
    fn recycle(&self, fwd: Forward) {
        fwd.pre.into_iter().chain(fwd.post).for_each(|a| self.pool.give(a));
    }

    fn forward(&self, theta: &[f64], x: ArrayView2<f64>, targets: Option<ArrayView2<f64>>) -> Forward {
        assert_eq!(x.ncols(), self.spec.input_dim, "input has the wrong width");
        let n_layers = self.layers.len();
        let act = self.spec.activation;
        let mut pre = Vec::with_capacity(n_layers);
        let mut post: Vec<Array2<f64>> = Vec::with_capacity(n_layers - 1);
        for l in 0..n_layers {
            let z_prev = if l == 0 { x } else { post[l - 1].view() };
            let a = self.affine(z_prev, self.weight(theta, l), self.bias(theta, l));
            if l + 1 < n_layers {
                let mut z = self.pool.take(a.nrows(), a.ncols());
                act.apply(a.view(), z.view_mut());
                post.push(z);
            }
            pre.push(a);
        }
        let probabilities = match (targets, self.spec.loss) {
            (None, _) | (_, OutputLoss::MeanSquaredError) => None,
            (Some(_), OutputLoss::BinaryCrossEntropy) => Some(pre[n_layers - 1].mapv(sigmoid)),
            (Some(_), OutputLoss::SoftmaxCrossEntropy) => Some(softmax_rows(pre[n_layers - 1].view())),
        };
        Forward { pre, post, probabilities }
    }

    fn output_loss(&self, fwd: &Forward, y: ArrayView2<f64>) -> f64 {
        let a = fwd.pre.last().expect("at least one layer");
        let n = a.nrows() as f64;
        let total: f64 = match self.spec.loss {
            OutputLoss::MeanSquaredError => 0.5 * Zip::from(a).and(y).fold(0.0, |acc, &a, &y| acc + (a - y) * (a - y)),
            OutputLoss::BinaryCrossEntropy => Zip::from(a).and(y).fold(0.0, |acc, &a, &y| acc + softplus(a) - y * a),
            OutputLoss::SoftmaxCrossEntropy => a
                .outer_iter()
                .zip(y.outer_iter())
                .map(|(row, yrow)| {
                    let m = row.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                    let lse = m + row.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
                    lse * yrow.sum() - row.dot(&yrow)
                })
                .sum(),
        };
        total / n
    }

    /// $\Delta_L = \partial L / \partial A_L$.
    fn output_delta(&self, fwd: &Forward, y: ArrayView2<f64>) -> Array2<f64> {
        let a = fwd.pre.last().expect("at least one layer");
        let n = a.nrows() as f64;
        let mut delta = match &fwd.probabilities {
            None => a - &y,
            Some(p) => match self.spec.loss {
                // d/da [lse(a) * sum(y) - y.a] = p * sum(y) - y; sum(y) = 1 for one-hot rows.
                OutputLoss::SoftmaxCrossEntropy => {
                    let ysum = y.sum_axis(Axis(1)).insert_axis(Axis(1));
                    p * &ysum - y
                }
                _ => p - &y,
            },
        };
        delta /= n;
        delta
    }

    /// $\ell''(A_L)[R]$, the output loss's Hessian applied to $R$ (row by row).
    fn output_hessian_apply(&self, fwd: &Forward, y: ArrayView2<f64>, r: &Array2<f64>) -> Array2<f64> {
        let n = r.nrows() as f64;
        let mut out = match (&fwd.probabilities, self.spec.loss) {
            (None, _) | (_, OutputLoss::MeanSquaredError) => r.clone(),
            (Some(p), OutputLoss::BinaryCrossEntropy) => Zip::from(p).and(r).map_collect(|&p, &r| p * (1.0 - p) * r),
            (Some(p), OutputLoss::SoftmaxCrossEntropy) => {
                let pr = p * r;
                let dot = pr.sum_axis(Axis(1)).insert_axis(Axis(1));
                let ysum = y.sum_axis(Axis(1)).insert_axis(Axis(1));
                (pr - p * &dot) * &ysum
            }
        };
        out /= n;
        out
    }

    /// $\ell'''(A_L)[R, S]$, the output loss's third derivative contracted with $R$ and $S$.
    fn output_third_apply(&self, fwd: &Forward, y: ArrayView2<f64>, r: &Array2<f64>, q: &Array2<f64>) -> Array2<f64> {
        let n = r.nrows() as f64;
        let mut out = match (&fwd.probabilities, self.spec.loss) {
            (None, _) | (_, OutputLoss::MeanSquaredError) => Array2::zeros(r.raw_dim()),
            (Some(p), OutputLoss::BinaryCrossEntropy) => {
                Zip::from(p).and(r).and(q).map_collect(|&p, &r, &q| p * (1.0 - p) * (1.0 - 2.0 * p) * r * q)
            }
            (Some(p), OutputLoss::SoftmaxCrossEntropy) => {
                // p.r.q - (p.r)(p.q) - (p.q)(p.r) - p (p.(r q)) + 2 p (p.r)(p.q), rowwise dots.
                let row_dot = |a: &Array2<f64>| a.sum_axis(Axis(1)).insert_axis(Axis(1));
                let pr = p * r;
                let pq = p * q;
                let dr = row_dot(&pr);
                let dq = row_dot(&pq);
                let drq = row_dot(&(&pr * q));
                let ysum = y.sum_axis(Axis(1)).insert_axis(Axis(1));
                let t = &pr * q - &pr * &dq - &pq * &dr - p * &drq + p * &(&dr * &dq * 2.0);
                t * &ysum
            }
        };
        out /= n;
        out
    }

    /// Writes $\Delta^\top Z$ into the weight block and $\Delta^\top\mathbf 1$ into the bias block
    /// of layer `l` of `out`.
    fn write_layer_gradient(&self, out: &mut [f64], l: usize, delta: ArrayView2<f64>, z_prev: ArrayView2<f64>) {
        general_mat_mul(1.0, &delta.t(), &z_prev, 0.0, &mut self.weight_mut(out, l));
        if let Some(o) = self.layers[l].bias_offset {
            let gb = delta.sum_axis(Axis(0));
            for (t, g) in out[o..o + self.layers[l].fan_out].iter_mut().zip(gb.iter()) {
                *t = *g;
            }
        }
    }

    /// Backpropagates $\Delta_L$ through the layers.
    fn backward(&self, theta: &[f64], x: ArrayView2<f64>, fwd: &Forward, delta_out: Array2<f64>) -> Array1<f64> {
        let mut grad = vec![0.0; self.dim];
        let mut delta = delta_out;
        let act = self.spec.activation;
        for l in (0..self.layers.len()).rev() {
            let z_prev = if l == 0 { x } else { fwd.post[l - 1].view() };
            self.write_layer_gradient(&mut grad, l, delta.view(), z_prev);
            if l > 0 {
                let mut next = self.backprop(&delta, self.weight(theta, l));
                zip_for_each!(
                    next.len(),
                    Zip::from(&mut next).and(&fwd.pre[l - 1]).and(&fwd.post[l - 1]),
                    |d, &a, &z| *d *= act.first(a, z)
                );
                self.pool.give(std::mem::replace(&mut delta, next));
            }
        }
        self.pool.give(delta);
        Array1::from(grad)
    }

    fn loss_on(&self, theta: ArrayView1<f64>, x: ArrayView2<f64>, y: ArrayView2<f64>) -> f64 {
        let theta = self.contiguous(theta);
        let theta = theta.as_slice().expect("standard layout");
        // The loss needs the outputs only, not the probabilities.
        let fwd = self.forward(theta, x, None);
        let loss = self.output_loss(&fwd, y);
        self.recycle(fwd);
        loss
    }

    fn loss_and_gradient_on(
        &self,
        theta: ArrayView1<f64>,
        x: ArrayView2<f64>,
        y: ArrayView2<f64>,
    ) -> (f64, Array1<f64>) {
        let theta = self.contiguous(theta);
        let theta = theta.as_slice().expect("standard layout");
        let fwd = self.forward(theta, x, Some(y));
        let (loss, grad) = self.loss_and_gradient_after_forward(theta, x, y, &fwd);
        self.recycle(fwd);
        (loss, grad)
    }

    /// The loss and the backward pass, given the forward pass at `theta`.
    fn loss_and_gradient_after_forward(
        &self,
        theta: &[f64],
        x: ArrayView2<f64>,
        y: ArrayView2<f64>,
        fwd: &Forward,
    ) -> (f64, Array1<f64>) {
        let delta = self.output_delta(fwd, y);
        (self.output_loss(fwd, y), self.backward(theta, x, fwd, delta))
    }

    /// The R-forward pass: $RA_l$ for every layer and $RZ_l$ for the hidden ones.
    fn r_forward(
        &self,
        theta: &[f64],
        v: &[f64],
        x: ArrayView2<f64>,
        fwd: &Forward,
    ) -> (Vec<Array2<f64>>, Vec<Array2<f64>>) {
        let n_layers = self.layers.len();
        let act = self.spec.activation;
        let mut r_pre: Vec<Array2<f64>> = Vec::with_capacity(n_layers);
        let mut r_post: Vec<Array2<f64>> = Vec::with_capacity(n_layers - 1);
        for l in 0..n_layers {
            let z_prev = if l == 0 { x } else { fwd.post[l - 1].view() };
            let mut ra = self.affine(z_prev, self.weight(v, l), self.bias(v, l));
            if l > 0 {
                general_mat_mul(1.0, &r_post[l - 1], &self.weight(theta, l).t(), 1.0, &mut ra);
            }
            if l + 1 < n_layers {
                let mut rz = self.pool.take(ra.nrows(), ra.ncols());
                zip_for_each!(
                    ra.len(),
                    Zip::from(&mut rz).and(&ra).and(&fwd.pre[l]).and(&fwd.post[l]),
                    |r, &ra, &a, &z| *r = ra * act.first(a, z)
                );
                r_post.push(rz);
            }
            r_pre.push(ra);
        }
        (r_pre, r_post)
    }

    fn hvp_on(
        &self,
        theta: ArrayView1<f64>,
        v: ArrayView1<f64>,
        x: ArrayView2<f64>,
        y: ArrayView2<f64>,
    ) -> Array1<f64> {
        let theta = self.contiguous(theta);
        let theta = theta.as_slice().expect("standard layout");
        let v = self.contiguous(v);
        let v = v.as_slice().expect("standard layout");
        let fwd = self.forward(theta, x, Some(y));
        let hv = self.hvp_after_forward(theta, v, x, y, &fwd);
        self.recycle(fwd);
        hv
    }

    /// $(L, g, Hg)$ on `(x, y)` with one forward pass.
    fn gradient_and_hvp_at_gradient_on(
        &self,
        theta: ArrayView1<f64>,
        x: ArrayView2<f64>,
        y: ArrayView2<f64>,
    ) -> (f64, Array1<f64>, Array1<f64>) {
        let theta = self.contiguous(theta);
        let theta = theta.as_slice().expect("standard layout");
        let fwd = self.forward(theta, x, Some(y));
        let (loss, grad) = self.loss_and_gradient_after_forward(theta, x, y, &fwd);
        let hg = self.hvp_after_forward(theta, grad.as_slice().expect("standard layout"), x, y, &fwd);
        self.recycle(fwd);
        (loss, grad, hg)
    }

    /// The R-operator passes of the HVP with direction `v`, given the forward pass at `theta`.
    fn hvp_after_forward(
        &self,
        theta: &[f64],
        v: &[f64],
        x: ArrayView2<f64>,
        y: ArrayView2<f64>,
        fwd: &Forward,
    ) -> Array1<f64> {
        let act = self.spec.activation;
        let (r_pre, r_post) = self.r_forward(theta, v, x, fwd);
        let mut delta = self.output_delta(fwd, y);
        let mut r_delta = self.output_hessian_apply(fwd, y, r_pre.last().expect("at least one layer"));
        let mut out = vec![0.0; self.dim];
        for l in (0..self.layers.len()).rev() {
            let z_prev = if l == 0 { x } else { fwd.post[l - 1].view() };
            self.write_layer_gradient(&mut out, l, r_delta.view(), z_prev);
            if l == 0 {
                break;
            }
            // R Z_0 = 0: the Delta^T R Z term exists only above the first layer, and only in
            // the weights (R of the bias gradient is the column sum of R Delta alone).
            general_mat_mul(1.0, &delta.t(), &r_post[l - 1], 1.0, &mut self.weight_mut(&mut out, l));
            let w = self.weight(theta, l);
            let mut dw = self.backprop(&delta, w);
            let mut next_r = self.backprop(&r_delta, w);
            general_mat_mul(1.0, &delta, &self.weight(v, l), 1.0, &mut next_r);
            zip_for_each!(
                next_r.len(),
                Zip::from(&mut next_r).and(&dw).and(&fwd.pre[l - 1]).and(&fwd.post[l - 1]).and(&r_pre[l - 1]),
                |nr, &dw, &a, &z, &ra| *nr = act.second(a, z) * ra * dw + act.first(a, z) * *nr
            );
            self.pool.give(std::mem::replace(&mut r_delta, next_r));
            // Delta of the layer below is needed only if that layer has weights above the input.
            if l > 1 {
                zip_for_each!(dw.len(), Zip::from(&mut dw).and(&fwd.pre[l - 1]).and(&fwd.post[l - 1]), |d, &a, &z| {
                    *d *= act.first(a, z)
                });
                self.pool.give(std::mem::replace(&mut delta, dw));
            } else {
                self.pool.give(dw);
            }
        }
        for a in r_pre.into_iter().chain(r_post).chain([delta, r_delta]) {
            self.pool.give(a);
        }
        Array1::from(out)
    }

    /// Exact $D^3L[u, v]$ for a network without hidden layers, where $A = XW^\top + \mathbf 1 b^\top$
    /// is linear in the parameters: $D^3L[u,v] = J^\top \ell'''(A)[RA_u, RA_v]$.
    fn third_derivative_linear(&self, theta: ArrayView1<f64>, u: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        let theta = self.contiguous(theta);
        let theta = theta.as_slice().expect("standard layout");
        let u = self.contiguous(u);
        let v = self.contiguous(v);
        let x = self.inputs.view();
        let y = self.targets.view();
        let fwd = self.forward(theta, x, Some(y));
        let ru = self.affine(
            x,
            self.weight(u.as_slice().expect("standard"), 0),
            self.bias(u.as_slice().expect("standard"), 0),
        );
        let rv = self.affine(
            x,
            self.weight(v.as_slice().expect("standard"), 0),
            self.bias(v.as_slice().expect("standard"), 0),
        );
        let t = self.output_third_apply(&fwd, y, &ru, &rv);
        let mut out = vec![0.0; self.dim];
        self.write_layer_gradient(&mut out, 0, t.view(), x);
        Array1::from(out)
    }

    fn batch_rows(&self, batch: &[usize]) -> (Array2<f64>, Array2<f64>) {
        (self.inputs.select(Axis(0), batch), self.targets.select(Axis(0), batch))
    }
}

fn one_hot(labels: &[usize], k: usize) -> Array2<f64> {
    let mut y = Array2::zeros((labels.len(), k));
    for (i, &c) in labels.iter().enumerate() {
        y[[i, c]] = 1.0;
    }
    y
}

/// Row-wise softmax, stabilised by the row maximum.
fn softmax_rows(a: ArrayView2<f64>) -> Array2<f64> {
    let mut p = a.to_owned();
    for mut row in p.outer_iter_mut() {
        let m = row.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
        row.mapv_inplace(|x| (x - m).exp());
        let s = row.sum();
        row /= s;
    }
    p
}

impl Objective for Network {
    fn dim(&self) -> usize {
        self.dim
    }
    fn loss(&self, theta: ArrayView1<f64>) -> f64 {
        self.loss_on(theta, self.inputs.view(), self.targets.view())
    }
    fn gradient(&self, theta: ArrayView1<f64>) -> Array1<f64> {
        self.loss_and_gradient(theta).1
    }
    fn loss_and_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>) {
        self.loss_and_gradient_on(theta, self.inputs.view(), self.targets.view())
    }
    fn hvp(&self, theta: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        self.hvp_on(theta, v, self.inputs.view(), self.targets.view())
    }
    fn gradient_and_hvp_at_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>, Array1<f64>) {
        self.gradient_and_hvp_at_gradient_on(theta, self.inputs.view(), self.targets.view())
    }
    fn hessian_at(&self, theta: ArrayView1<f64>) -> Box<dyn LinearOperator + '_> {
        Box::new(NetworkHessian::new(self, theta))
    }
    fn third_derivative(&self, theta: ArrayView1<f64>, u: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        if self.spec.hidden.is_empty() {
            self.third_derivative_linear(theta, u, v)
        } else {
            crate::objective::third_derivative_by_hvp_difference(self, theta, u, v)
        }
    }
}

impl FiniteSum for Network {
    fn n_examples(&self) -> usize {
        self.inputs.nrows()
    }
    fn batch_loss(&self, theta: ArrayView1<f64>, batch: &[usize]) -> f64 {
        let (x, y) = self.batch_rows(batch);
        self.loss_on(theta, x.view(), y.view())
    }
    fn batch_gradient(&self, theta: ArrayView1<f64>, batch: &[usize]) -> Array1<f64> {
        let (x, y) = self.batch_rows(batch);
        self.loss_and_gradient_on(theta, x.view(), y.view()).1
    }
    fn batch_hvp(&self, theta: ArrayView1<f64>, batch: &[usize], v: ArrayView1<f64>) -> Array1<f64> {
        let (x, y) = self.batch_rows(batch);
        self.hvp_on(theta, v, x.view(), y.view())
    }
    fn batch_gradient_and_hvp_at_gradient(
        &self,
        theta: ArrayView1<f64>,
        batch: &[usize],
    ) -> (f64, Array1<f64>, Array1<f64>) {
        let (x, y) = self.batch_rows(batch);
        self.gradient_and_hvp_at_gradient_on(theta, x.view(), y.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_gradient_and_hvp_at_gradient_equal_the_separate_calls() {
        let data = crate::data::gaussian_mixture(60, 5, 3, 2.0, 11).expect("valid sizes");
        let net = crate::models::mlp(&data, &[7, 6], 3, Activation::Tanh, OutputLoss::SoftmaxCrossEntropy)
            .expect("valid network");
        let theta = net.initial_parameters(3);
        let (l, g) = net.loss_and_gradient(theta.view());
        let hg = net.hvp(theta.view(), g.view());
        // Same arithmetic in the same order: equal to the last bit.
        assert_eq!(net.gradient_and_hvp_at_gradient(theta.view()), (l, g, hg));
        let batch = [4, 9, 9, 30, 59];
        let g = net.batch_gradient(theta.view(), &batch);
        let hg = net.batch_hvp(theta.view(), &batch, g.view());
        let l = net.batch_loss(theta.view(), &batch);
        assert_eq!(net.batch_gradient_and_hvp_at_gradient(theta.view(), &batch), (l, g, hg));
    }

    #[test]
    fn parameter_count() {
        let spec = NetworkSpec {
            input_dim: 784,
            hidden: vec![256],
            output_dim: 10,
            activation: Activation::Tanh,
            bias: true,
            loss: OutputLoss::SoftmaxCrossEntropy,
        };
        assert_eq!(spec.layers().1, 784 * 256 + 256 + 256 * 10 + 10);
    }
}
