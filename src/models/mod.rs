//! Toy models with exact derivatives, and a catalogue of named default instances.
//!
//! Every model implements [`Objective`](crate::objective::Objective) with an exact gradient
//! and an exact Hessian-vector product; the networks also implement
//! [`FiniteSum`](crate::objective::FiniteSum).

mod activation;
mod buffer_pool;
mod network;
mod quadratic;

pub use activation::Activation;
pub use network::{Network, NetworkHessian, NetworkSpec, OutputLoss, ParameterBlock};
pub use quadratic::{Quadratic, random_orthogonal};

use ndarray::Array1;
use serde::Serialize;

use crate::data::{self, Dataset};
use crate::objective::{FiniteSum, Objective};
use crate::{Choice, Result};

/// Linear least squares $\frac1{2n}\|XW^\top + \mathbf 1 b^\top - Y\|^2$.
///
/// # Errors
/// As [`Network::new`].
pub fn least_squares(data: &Dataset, outputs: usize) -> Result<Network> {
    generalised_linear(data, outputs, OutputLoss::MeanSquaredError)
}

/// Binary logistic regression: one output $a = w^\top x + b$, loss $\log(1 + e^a) - y a$.
///
/// # Errors
/// As [`Network::new`] (needs two classes).
pub fn logistic_regression(data: &Dataset) -> Result<Network> {
    generalised_linear(data, 1, OutputLoss::BinaryCrossEntropy)
}

/// Multinomial (softmax) logistic regression with `n_classes` outputs.
///
/// # Errors
/// As [`Network::new`].
pub fn softmax_regression(data: &Dataset, n_classes: usize) -> Result<Network> {
    generalised_linear(data, n_classes, OutputLoss::SoftmaxCrossEntropy)
}

fn generalised_linear(data: &Dataset, outputs: usize, loss: OutputLoss) -> Result<Network> {
    Network::new(
        NetworkSpec {
            input_dim: data.input_dim(),
            hidden: vec![],
            output_dim: outputs,
            activation: Activation::Identity,
            bias: true,
            loss,
        },
        data,
    )
}

/// An MLP with biases, the given hidden widths and activation.
///
/// # Errors
/// As [`Network::new`].
pub fn mlp(
    data: &Dataset,
    hidden: &[usize],
    outputs: usize,
    activation: Activation,
    loss: OutputLoss,
) -> Result<Network> {
    Network::new(
        NetworkSpec {
            input_dim: data.input_dim(),
            hidden: hidden.to_vec(),
            output_dim: outputs,
            activation,
            bias: true,
            loss,
        },
        data,
    )
}

/// A deep linear network $x \mapsto W_L \cdots W_1 x$ (no biases) with squared error: matrix
/// factorisation when the targets are a low-rank linear map of the inputs.
///
/// # Errors
/// As [`Network::new`].
pub fn deep_linear(data: &Dataset, hidden: &[usize], outputs: usize) -> Result<Network> {
    Network::new(
        NetworkSpec {
            input_dim: data.input_dim(),
            hidden: hidden.to_vec(),
            output_dim: outputs,
            activation: Activation::Identity,
            bias: false,
            loss: OutputLoss::MeanSquaredError,
        },
        data,
    )
}

/// The catalogue of toy models, each with a small default instance on seeded synthetic data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Indefinite 12-dimensional quadratic with eigenvalues evenly spread over [-1, 10].
    Quadratic,
    /// Least squares, 8 inputs to 3 outputs, teacher-student data.
    LeastSquares,
    /// Binary logistic regression on a 2-class Gaussian mixture in 6 dimensions.
    Logistic,
    /// Softmax regression on a 4-class Gaussian mixture in 6 dimensions.
    Softmax,
    /// Tanh MLP 6-10-3 with squared error on teacher-student regression.
    MlpTanhMse,
    /// Softplus MLP 6-8-4 with cross-entropy on a 4-class teacher-student task.
    MlpSoftplusCe,
    /// GELU MLP 6-8-6-4 (two hidden layers) with cross-entropy on a 4-class Gaussian mixture.
    MlpGeluCe,
    /// Deep linear network 6-5-5-4 on rank-2 regression (matrix factorisation).
    DeepLinear,
}

/// A model, held once: a quadratic (no example structure) or a network (a finite sum over
/// examples).
pub enum Model {
    /// A loss without example structure.
    Quadratic(Quadratic),
    /// A mean over examples.
    Network(Network),
}

/// A model together with the point its checks start from.
pub struct ModelInstance {
    /// The model.
    pub model: Model,
    /// A seeded starting point (the network's initialisation, or a random point).
    pub theta0: Array1<f64>,
}

impl ModelInstance {
    /// A network with its seeded initialisation as the start point.
    pub fn network(net: Network, seed: u64) -> ModelInstance {
        let theta0 = net.initial_parameters(seed.wrapping_add(1000));
        ModelInstance { model: Model::Network(net), theta0 }
    }

    /// The model as an objective.
    pub fn objective(&self) -> &dyn Objective {
        match &self.model {
            Model::Quadratic(q) => q,
            Model::Network(n) => n,
        }
    }

    /// The model as a finite sum, when it is one.
    pub fn finite_sum(&self) -> Option<&dyn FiniteSum> {
        match &self.model {
            Model::Quadratic(_) => None,
            Model::Network(n) => Some(n),
        }
    }
}

impl Choice for ModelKind {
    const WHAT: &'static str = "model";
    const ALL: &'static [Self] = &[
        ModelKind::Quadratic,
        ModelKind::LeastSquares,
        ModelKind::Logistic,
        ModelKind::Softmax,
        ModelKind::MlpTanhMse,
        ModelKind::MlpSoftplusCe,
        ModelKind::MlpGeluCe,
        ModelKind::DeepLinear,
    ];

    fn name(self) -> &'static str {
        match self {
            ModelKind::Quadratic => "quadratic",
            ModelKind::LeastSquares => "least-squares",
            ModelKind::Logistic => "logistic",
            ModelKind::Softmax => "softmax",
            ModelKind::MlpTanhMse => "mlp-tanh-mse",
            ModelKind::MlpSoftplusCe => "mlp-softplus-ce",
            ModelKind::MlpGeluCe => "mlp-gelu-ce",
            ModelKind::DeepLinear => "deep-linear",
        }
    }

    fn description(self) -> &'static str {
        match self {
            ModelKind::Quadratic => "Indefinite 12-dimensional quadratic with eigenvalues evenly spread over [-1, 10]",
            ModelKind::LeastSquares => "Least squares, 8 inputs to 3 outputs, teacher-student data",
            ModelKind::Logistic => "Binary logistic regression on a 2-class Gaussian mixture in 6 dimensions",
            ModelKind::Softmax => "Softmax regression on a 4-class Gaussian mixture in 6 dimensions",
            ModelKind::MlpTanhMse => "Tanh MLP 6-10-3 with squared error on teacher-student regression",
            ModelKind::MlpSoftplusCe => "Softplus MLP 6-8-4 with cross-entropy on a 4-class teacher-student task",
            ModelKind::MlpGeluCe => {
                "GELU MLP 6-8-6-4 (two hidden layers) with cross-entropy on a 4-class Gaussian mixture"
            }
            ModelKind::DeepLinear => "Deep linear network 6-5-5-4 on rank-2 regression (matrix factorisation)",
        }
    }
}

impl ModelKind {
    /// The default instance, with data and starting point drawn from `seed`.
    ///
    /// # Errors
    /// Only if a generator rejects its (fixed, valid) sizes, which would be a bug.
    pub fn instance(self, seed: u64) -> Result<ModelInstance> {
        let network = |net: Network| ModelInstance::network(net, seed);
        Ok(match self {
            ModelKind::Quadratic => {
                let d = 12;
                let spectrum: Vec<f64> = (0..d).map(|i| -1.0 + 11.0 * i as f64 / (d - 1) as f64).collect();
                let q = Quadratic::with_spectrum(&spectrum, 1.0, seed)?;
                let theta0 = Array1::from_shape_fn(d, |i| ((i as f64 + 1.0) * 0.7 + seed as f64).sin());
                ModelInstance { model: Model::Quadratic(q), theta0 }
            }
            ModelKind::LeastSquares => {
                network(least_squares(&data::teacher_student_regression(64, 8, 6, 3, 0.1, seed)?, 3)?)
            }
            ModelKind::Logistic => network(logistic_regression(&data::gaussian_mixture(64, 6, 2, 2.0, seed)?)?),
            ModelKind::Softmax => network(softmax_regression(&data::gaussian_mixture(64, 6, 4, 3.0, seed)?, 4)?),
            ModelKind::MlpTanhMse => network(mlp(
                &data::teacher_student_regression(48, 6, 5, 3, 0.1, seed)?,
                &[10],
                3,
                Activation::Tanh,
                OutputLoss::MeanSquaredError,
            )?),
            ModelKind::MlpSoftplusCe => network(mlp(
                &data::teacher_student_classes(48, 6, 5, 4, seed)?,
                &[8],
                4,
                Activation::Softplus,
                OutputLoss::SoftmaxCrossEntropy,
            )?),
            ModelKind::MlpGeluCe => network(mlp(
                &data::gaussian_mixture(48, 6, 4, 3.0, seed)?,
                &[8, 6],
                4,
                Activation::Gelu,
                OutputLoss::SoftmaxCrossEntropy,
            )?),
            ModelKind::DeepLinear => {
                network(deep_linear(&data::low_rank_regression(48, 6, 4, 2, 0.05, seed)?, &[5, 5], 4)?)
            }
        })
    }
}
