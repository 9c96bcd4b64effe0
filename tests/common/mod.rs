//! Shared by the property tests: random networks with their data, drawn from a few integers so
//! that proptest can shrink them.
#![allow(dead_code)]

#[cfg(feature = "burn")]
pub mod train_run;

use fullbatch::data::{self, Dataset};
use fullbatch::models::{Activation, Network, NetworkSpec, OutputLoss};
use fullbatch::objective::Objective;
use ndarray::Array1;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A seeded standard normal vector times `scale`.
pub fn normal_vector(dim: usize, scale: f64, seed: u64) -> Array1<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array1::from_shape_fn(dim, |_| {
        let z: f64 = StandardNormal.sample(&mut rng);
        z * scale
    })
}

pub fn inf_norm(x: &Array1<f64>) -> f64 {
    x.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// A random network with its data, described by a few integers so proptest can shrink it.
#[derive(Debug, Clone)]
pub struct Case {
    pub input_dim: usize,
    pub hidden: Vec<usize>,
    pub classes: usize,
    pub activation: Activation,
    pub bias: bool,
    pub loss: OutputLoss,
    pub n: usize,
    pub seed: u64,
    pub scale: f64,
}

pub fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=5,
        prop::collection::vec(1usize..=6, 0..=2),
        2usize..=4,
        prop_oneof![
            Just(Activation::Identity),
            Just(Activation::Tanh),
            Just(Activation::Softplus),
            Just(Activation::Gelu)
        ],
        any::<bool>(),
        prop_oneof![
            Just(OutputLoss::MeanSquaredError),
            Just(OutputLoss::BinaryCrossEntropy),
            Just(OutputLoss::SoftmaxCrossEntropy)
        ],
        1usize..=12,
        any::<u64>(),
        0.2f64..1.2,
    )
        .prop_map(|(input_dim, hidden, classes, activation, bias, loss, n, seed, scale)| Case {
            input_dim,
            hidden,
            classes,
            activation,
            bias,
            loss,
            n,
            seed,
            scale,
        })
}

impl Case {
    pub fn data(&self) -> Dataset {
        let classes = if self.loss == OutputLoss::BinaryCrossEntropy { 2 } else { self.classes };
        match self.loss {
            OutputLoss::MeanSquaredError => {
                data::teacher_student_regression(self.n, self.input_dim, 3, self.classes, 0.1, self.seed).unwrap()
            }
            _ => data::gaussian_mixture(self.n, self.input_dim, classes, 2.0, self.seed).unwrap(),
        }
    }

    pub fn network(&self) -> Network {
        let output_dim = match self.loss {
            OutputLoss::BinaryCrossEntropy => 1,
            _ => self.classes,
        };
        let spec = NetworkSpec {
            input_dim: self.input_dim,
            hidden: self.hidden.clone(),
            output_dim,
            activation: self.activation,
            bias: self.bias,
            loss: self.loss,
        };
        Network::new(spec, &self.data()).unwrap()
    }

    pub fn point(&self, net: &Network) -> Array1<f64> {
        normal_vector(net.dim(), self.scale, self.seed ^ 1)
    }
}

/// A config that runs in about a second: teacher-student data (no data set needed), a 784-4-10
/// MLP, two variants, two seeds.
pub const TINY_EXPERIMENT: &str = r#"
name = "tiny"
seeds = [0, 1]

[data]
source = "teacher-student"
train = 40
test = 30

[model]
hidden = [4]
activation = "tanh"
loss = "softmax_cross_entropy"

[measure]
every = 5
trace_budget = 12

[[variants]]
label = "SGD"
lr = 0.1
steps = 10
batch_size = 10

[[variants]]
label = "GD + SGD's regulariser"
lr = 0.1
steps = 10
regulariser = "sgd"
regulariser_batch_size = 10
"#;
