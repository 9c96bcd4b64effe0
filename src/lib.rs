//! # fullbatch
//!
//! Numerical checks of why stochastic gradient descent generalises, and the pieces needed to
//! reproduce J. Geiping et al., "Stochastic Training is Not Necessary for Generalization"
//! (ICLR 2022).
//!
//! - [`objective`]: problems as traits ([`Objective`], [`FiniteSum`]) with exact gradients,
//!   Hessian-vector products and third derivatives, plus finite differences to check them.
//! - [`models`]: toy models with exact derivatives (quadratic, least squares, logistic and
//!   softmax regression, MLPs with smooth activations, deep linear networks).
//! - [`data`]: seeded synthetic data and the Fashion-MNIST idx reader.
//! - [`optim`]: GD, SGD (reshuffling, with replacement), heavy-ball and Nesterov momentum.
//! - [`derivative_check`]: finite-difference evidence that the exact derivatives are right.
//! - [`blas`]: which OpenBLAS kernels run, and the remedy for CPUs newer than OpenBLAS.
//! - [`plot`]: figures with plotters, text from an embedded font.
//! - `deep` (feature `burn`; `f32`): ResNet-18 on CIFAR with burn, full-batch gradients,
//!   clipping, schedule.
//!
//! - [`experiment`]: the toy-experiment runner (TOML configs, run directories, caching).
//! - [`export`]: a model, a point and results as `.npy` + JSON, to check our numbers in Python.
//! - [`reproduction`]: the paper's CIFAR-10 tables as one job (`fullbatch reproduce`): rows,
//!   run-directory states, the paper-vs-ours report.
//!
//! Precision: the theory (everything but `deep`) is `f64`; `deep` is `f32`, the precision of
//! burn's GPU kernels and of the paper's runs.

pub mod atomic_file;
pub mod bea;
pub mod blas;
pub mod choice;
pub mod data;
#[cfg(feature = "burn")]
pub mod deep;
pub mod derivative_check;
pub mod engine;
mod error;
pub mod experiment;
pub mod export;
pub mod figures;
pub mod integrate;
pub mod models;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod provenance;
pub mod reproduction;
pub mod run_dir;
pub mod sharpness;
pub mod stats;

pub use choice::Choice;
pub use error::{Error, Result};
pub use objective::{FiniteSum, Objective};

/// Links the BLAS implementation (OpenBLAS, system library) that ndarray's `blas` feature uses.
extern crate blas_src;
