//! The deep-learning half: ResNet-18 on CIFAR-shaped images with burn 0.21, full-batch gradients
//! over blocks, global-norm clipping, the paper's learning-rate schedule and optimizer, and the
//! finite-difference gradient-norm regulariser.
//!
//! Compiled only with the `burn` feature; the CUDA backend alias also needs `cuda`, the LibTorch
//! one `tch`.
//!
//! - [`resnet`]: the CIFAR variant of ResNet-18 ([`resnet::ResNetConfig`], [`resnet::ResNet`]).
//! - [`train`]: training primitives as functions of a model, data tensors and plain numbers.
//! - [`grads`]: arithmetic on gradients (norm, scaling, clipping, interpolation) and flat views
//!   of a model's tensors.
//! - `parallel` (feature `collective`): a full-batch step's blocks over several devices.
//! - [`config`]: run configurations (TOML, validated: unknown keys and impossible values are
//!   errors naming the key); defined in [`crate::run_dir`], which builds without burn.
//! - [`run`]: `fullbatch train` on the [`crate::engine`]: the ResNet stepper and its observers
//!   (timing, evaluation, sharpness, log, checkpoints), the run directory, atomic checkpoints,
//!   exact resume from (seed, step)-derived randomness, divergence and Ctrl-C handling.
//! - [`bench`]: device checks and timings (gradient agreement between backends, throughput, one
//!   full-batch step).
//! - [`device`]: the kernel caches of the GPU backends and the visible warm-up of the first
//!   steps.
//! - [`mlp`]: a fully connected network in burn, `f64` on Flex, as an [`crate::objective::Objective`]
//!   over the theory module's flat parameters, so that backward-error analysis runs on burn.
//! - [`flat_resnet`]: a small ResNet in burn, `f64` on Flex, over a flat parameter vector, as an
//!   [`crate::objective::Objective`] (BatchNorm in training mode on the full batch; ReLU, GELU or
//!   softplus).
//! - [`sharpness`]: the Hessian of the full-batch loss as a finite-difference
//!   [`crate::sharpness::LinearOperator`] over the flattened parameters (BatchNorm in training or
//!   inference mode), and $\lambda_{\max}$ by Lanczos ([`sharpness::network_lambda_max`]).
//!
//! Precision: everything here except [`mlp`] and [`flat_resnet`] (`f64`) is `f32`, burn's default float type on both the CPU backend (Flex)
//! and the GPU path (CUDA, where f32 matmuls and convolutions may run as TF32 on tensor cores).
//! Host-side reductions that are reported (norms, mean losses) are converted to `f64` at the end.
//!
//! Randomness: no burn random op is used. Weights are drawn from a ChaCha8 generator with an
//! explicit seed, on the host, and uploaded; shuffles take explicit seeds too.

pub mod bea_suite;
pub mod bench;
pub use crate::run_dir::config;
pub mod device;
pub mod flat_resnet;
pub mod grads;
pub mod hessian_export;
pub mod mlp;
#[cfg(feature = "collective")]
pub mod parallel;
pub mod resnet;
pub mod run;
pub mod sharpness;
pub mod train;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::cifar::{self, ImageSet};
use crate::{Error, Result};

/// The CPU backend without autodiff: burn's Flex backend (pure Rust, rayon threads, SIMD), `f32`.
pub type Cpu = burn_flex::Flex;

/// The CPU training backend: [`Cpu`] with reverse-mode autodiff.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

/// The CUDA backend without autodiff (`f32` floats, `i32` ints; fused when burn's `fusion`
/// feature is on, which the crate's `cuda` feature turns on).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;

/// The CUDA training backend: [`Cuda`] with reverse-mode autodiff.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;

/// burn's LibTorch backend without autodiff (`f32`; CPU, or CUDA when libtorch was built with
/// it; feature `tch`). Convolutions forward run in libtorch (cuDNN on a GPU); their gradients and
/// BatchNorm go through burn's generic decompositions.
#[cfg(feature = "tch")]
pub type Tch = burn::backend::LibTorch<f32>;

/// The LibTorch training backend: [`Tch`] with burn's reverse-mode autodiff.
#[cfg(feature = "tch")]
pub type TchAutodiff = burn::backend::Autodiff<Tch>;

/// A block of labelled images as tensors on a device.
///
/// # Shapes
/// - `images`: `[n, channels, height, width]`
/// - `labels`: `[n]`, class indices
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// The input images (normalised).
    pub images: Tensor<B, 4>,
    /// The class index of each image.
    pub labels: Tensor<B, 1, Int>,
}

impl<B: Backend> Batch<B> {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.dims()[0]
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Uploads `set` to `device` as a [`Batch`], each pixel normalised to
/// $(x/255 - \mu_c)/\sigma_c$ (see [`cifar::normalise`]).
///
/// # Errors
/// The errors of [`cifar::normalise`]; [`Error::InvalidParameter`] if `set` is empty.
pub fn batch_from_images<B: Backend>(
    set: &ImageSet,
    mean: &[f64],
    std: &[f64],
    device: &B::Device,
) -> Result<Batch<B>> {
    if set.is_empty() {
        return Err(Error::invalid("set", "has no images"));
    }
    let values = cifar::normalise(set, mean, std)?;
    let shape = [set.len(), set.channels, set.height, set.width];
    let images = Tensor::<B, 4>::from_data(TensorData::new(values, shape), device);
    let labels: Vec<i64> = set.labels.iter().map(|&l| i64::from(l)).collect();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [set.len()]), device);
    Ok(Batch { images, labels })
}
