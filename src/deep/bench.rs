//! Device checks and timings of a training backend, behind `fullbatch device` and
//! `scripts/gpu-check.sh`: one minibatch gradient on two backends compared entry by entry
//! ([`gradient_agreement`]), training throughput on one batch ([`throughput`]), and one
//! full-batch step, plain and regularised ([`full_batch_timing`]). Every timing ends with a
//! parameter read back, so queued GPU work is inside it, and the warm-up (kernel compilation on
//! a GPU) is timed apart.

use std::time::Instant;

use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::device::{KernelCache, Warmup};
use super::resnet::{ResNet, ResNetConfig};
use super::train::{
    self, BlockOrder, FullBatchOptions, Regulariser, cross_entropy, full_batch_step, grads_to_vec, read_scalar,
};
use super::{Batch, batch_from_images};
use crate::data::cifar;
use crate::{Error, Result};

/// The agreement of one minibatch gradient computed on two backends from the same weights and
/// images (see [`gradient_agreement`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradientAgreement {
    /// The model width.
    pub width: usize,
    /// Images in the batch.
    pub batch: usize,
    /// Image side.
    pub side: usize,
    /// The loss on backend A.
    pub loss_a: f64,
    /// The loss on backend B.
    pub loss_b: f64,
    /// The number of gradient entries.
    pub entries: usize,
    /// $\max_i |a_i - b_i|$.
    pub max_abs_diff: f64,
    /// $\max_i |b_i|$.
    pub max_abs: f64,
    /// $\lVert a - b\rVert / \lVert b\rVert$.
    pub rel_l2: f64,
    /// Whether `rel_l2` is below the tolerance.
    pub pass: bool,
    /// The tolerance on `rel_l2`.
    pub tolerance: f64,
}

/// The gradient of the mean cross-entropy of a ResNet (`width`, blocks `[2, 2, 2, 2]`,
/// training-mode BatchNorm) on `batch` synthetic `side x side` images, on backend `A` and on
/// backend `Bk` from the same seeded weights, compared entry by entry. `tolerance` bounds the
/// relative L2 difference (TF32 convolutions on a GPU give about 1e-3).
///
/// # Errors
/// [`Error::InvalidParameter`] for impossible sizes or unreadable tensors.
pub fn gradient_agreement<A: AutodiffBackend, Bk: AutodiffBackend>(
    device_a: &A::Device,
    device_b: &Bk::Device,
    width: usize,
    batch: usize,
    side: usize,
    tolerance: f64,
    seed: u64,
) -> Result<GradientAgreement> {
    let set = cifar::synthetic(batch, 3, side, 10, 20.0, seed)?;
    let (mean, std) = cifar::channel_stats(&set);
    let config = ResNetConfig::new().with_width(width);
    let (loss_a, ga) = {
        let model: ResNet<A> = config.init(device_a, seed)?;
        let data: Batch<A> = batch_from_images(&set, &mean, &std, device_a)?;
        let (g, loss) = train::block_gradient(&model, data.images, data.labels);
        (read_scalar(Some(loss))?, grads_to_vec(&model, &g)?)
    };
    let (loss_b, gb) = {
        let model: ResNet<Bk> = config.init(device_b, seed)?;
        let data: Batch<Bk> = batch_from_images(&set, &mean, &std, device_b)?;
        let (g, loss) = train::block_gradient(&model, data.images, data.labels);
        (read_scalar(Some(loss))?, grads_to_vec(&model, &g)?)
    };
    if ga.len() != gb.len() {
        return Err(Error::invalid("gradient", format!("{} entries vs {}", ga.len(), gb.len())));
    }
    let (mut max_abs_diff, mut max_abs, mut diff_sq, mut ref_sq) = (0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in ga.iter().zip(&gb) {
        let (a, b) = (f64::from(a), f64::from(b));
        max_abs_diff = max_abs_diff.max((a - b).abs());
        max_abs = max_abs.max(b.abs());
        diff_sq += (a - b) * (a - b);
        ref_sq += b * b;
    }
    let rel_l2 = (diff_sq / ref_sq.max(f64::MIN_POSITIVE)).sqrt();
    Ok(GradientAgreement {
        width,
        batch,
        side,
        loss_a,
        loss_b,
        entries: ga.len(),
        max_abs_diff,
        max_abs,
        rel_l2,
        pass: rel_l2.is_finite() && rel_l2 <= tolerance,
        tolerance,
    })
}

/// Reads a parameter of `model` back to the host: waits for all queued device work (the
/// clock of a GPU timing stops after it).
fn read_back<B: AutodiffBackend>(model: &ResNet<B>) -> Result<()> {
    model
        .fc
        .weight
        .val()
        .inner()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map(|_| ())
        .map_err(|e| Error::invalid("parameter", format!("{e:?}")))
}

/// What [`throughput`] measures.
#[derive(Debug, Clone)]
pub struct ThroughputParams {
    /// The ResNet-18 width (64 is the paper's).
    pub width: usize,
    /// Images per iteration.
    pub batch: usize,
    /// Image side.
    pub side: usize,
    /// Untimed iterations (the first one timed apart as `first_iter_s`), at least 1.
    pub warmup_iters: usize,
    /// Timed iterations, at least 1.
    pub iters: usize,
    /// Seed of the weights and images.
    pub seed: u64,
    /// Show the warm-up line (see [`Warmup`]).
    pub show_warmup: bool,
    /// The backend's kernel cache, whose new entries are counted.
    pub kernel_cache: Option<KernelCache>,
}

impl Default for ThroughputParams {
    fn default() -> Self {
        Self {
            width: 64,
            batch: 128,
            side: 32,
            warmup_iters: 15,
            iters: 50,
            seed: 0,
            show_warmup: false,
            kernel_cache: None,
        }
    }
}

/// Training throughput of ResNet-18 (see [`throughput`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// The model width.
    pub width: usize,
    /// Images per iteration.
    pub batch: usize,
    /// Image side.
    pub side: usize,
    /// Untimed iterations before timing (autotune, kernel compilation).
    pub warmup_iters: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Seconds from the start (model and data on the device) to the end of the first iteration
    /// (read back): the cold or warm start, kernel compilation included.
    pub first_iter_s: f64,
    /// Seconds of the whole warm-up (the first iteration included).
    pub warmup_s: f64,
    /// Kernels compiled into the cache during the warm-up (GPU backends with a cache).
    pub kernels_compiled: Option<usize>,
    /// Kernels compiled into the cache during the timed iterations (should be 0).
    pub kernels_compiled_timed: Option<usize>,
    /// Seconds per timed iteration.
    pub s_per_iter: f64,
    /// Images per second over the timed iterations.
    pub images_per_s: f64,
}

/// Images per second of training steps of a ResNet (`width`, blocks `[2, 2, 2, 2]`) on
/// backend `B`: each iteration is a forward pass, a backward pass and a Nesterov SGD update on
/// `batch` images of `3 x side x side` (the same batch every time, already on the device). Each
/// update depends on the previous one, and the clock stops after a parameter is read back, so
/// all queued GPU work is inside the timing. `warmup_iters` untimed iterations come first; the
/// first of them is timed alone (`first_iter_s`).
///
/// # Errors
/// [`Error::InvalidParameter`] for impossible sizes or unreadable tensors.
pub fn throughput<B: AutodiffBackend>(device: &B::Device, p: &ThroughputParams) -> Result<Throughput> {
    if p.iters == 0 || p.warmup_iters == 0 {
        return Err(Error::invalid("iters", "timed and warm-up iterations must be positive"));
    }
    let warmup = Warmup::start("first benchmark step", p.kernel_cache.as_ref(), p.show_warmup, None);
    let start = Instant::now();
    let set = cifar::synthetic(p.batch, 3, p.side, 10, 20.0, p.seed)?;
    let (mean, std) = cifar::channel_stats(&set);
    let data: Batch<B> = batch_from_images(&set, &mean, &std, device)?;
    let mut model: ResNet<B> = ResNetConfig::new().with_width(p.width).init(device, p.seed)?;
    let mut optim = train::paper_sgd().init::<B, ResNet<B>>();
    let mut step = |model: ResNet<B>| -> ResNet<B> {
        let loss = cross_entropy(model.forward(data.images.clone()), data.labels.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(0.01, model, grads)
    };
    model = step(model);
    read_back(&model)?;
    let first_iter_s = start.elapsed().as_secs_f64();
    for _ in 1..p.warmup_iters {
        model = step(model);
    }
    read_back(&model)?;
    let warm = warmup.finish();
    let warmup_s = start.elapsed().as_secs_f64();
    let before_timed = p.kernel_cache.as_ref().map(KernelCache::kernel_count);
    let start = Instant::now();
    for _ in 0..p.iters {
        model = step(model);
    }
    read_back(&model)?;
    let s = start.elapsed().as_secs_f64();
    let kernels_compiled_timed =
        p.kernel_cache.as_ref().zip(before_timed).map(|(c, before)| c.kernel_count().saturating_sub(before));
    Ok(Throughput {
        width: p.width,
        batch: p.batch,
        side: p.side,
        warmup_iters: p.warmup_iters,
        iters: p.iters,
        first_iter_s,
        warmup_s,
        kernels_compiled: warm.kernels_compiled,
        kernels_compiled_timed,
        s_per_iter: s / p.iters as f64,
        images_per_s: (p.batch * p.iters) as f64 / s,
    })
}

/// What [`full_batch_timing`] measures.
#[derive(Debug, Clone)]
pub struct FullBatchTimingParams {
    /// The ResNet-18 width (64 is the paper's).
    pub width: usize,
    /// Images in the full batch (50,000 is CIFAR-10's training set).
    pub images: usize,
    /// Images per block (128 in the paper's rows; 32 in "strong reg").
    pub block: usize,
    /// Image side.
    pub side: usize,
    /// Seed of the weights and images.
    pub seed: u64,
    /// Show the warm-up line (see [`Warmup`]).
    pub show_warmup: bool,
    /// The backend's kernel cache, whose new entries are counted.
    pub kernel_cache: Option<KernelCache>,
}

impl Default for FullBatchTimingParams {
    fn default() -> Self {
        Self { width: 64, images: 50_000, block: 128, side: 32, seed: 0, show_warmup: false, kernel_cache: None }
    }
}

/// Seconds of one full-batch training step (see [`full_batch_timing`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullBatchTiming {
    /// The model width.
    pub width: usize,
    /// Images in the full batch.
    pub images: usize,
    /// Images per block.
    pub block: usize,
    /// Seconds of the warm-up: one plain and one regularised step on two blocks (kernel
    /// compilation on a GPU), the upload of the images included.
    pub warmup_s: f64,
    /// Kernels compiled into the cache during the warm-up.
    pub kernels_compiled: Option<usize>,
    /// Seconds of one step without the regulariser: the gradient over every block (one forward
    /// and backward pass each), global-norm clipping, the Nesterov SGD update.
    pub plain_step_s: f64,
    /// Seconds of one step with the finite-difference regulariser (two forward and backward
    /// passes per block).
    pub regularised_step_s: f64,
    /// Training images per second of the plain step (`images / plain_step_s`).
    pub plain_images_per_s: f64,
}

/// Times one full-batch step of ResNet-18 over `images` synthetic images in blocks of `block`,
/// once without and once with the paper's regulariser (α = 0.5, ε = 0.01), after a warm-up of
/// one of each on two blocks. Each step ends with a parameter read back, so all queued GPU
/// work is inside its time. This is the step of the paper's full-batch rows on CIFAR-10
/// (`images` = 50,000, `block` = 128).
///
/// # Errors
/// [`Error::InvalidParameter`] for impossible sizes (fewer than two blocks of images);
/// the errors of [`full_batch_step`].
pub fn full_batch_timing<B: AutodiffBackend>(device: &B::Device, p: &FullBatchTimingParams) -> Result<FullBatchTiming> {
    if p.block == 0 || p.images < 2 * p.block {
        return Err(Error::invalid(
            "images",
            format!("need at least two blocks of {} images, got {}", p.block, p.images),
        ));
    }
    let warmup = Warmup::start("full-batch warm-up", p.kernel_cache.as_ref(), p.show_warmup, None);
    let start = Instant::now();
    let set = cifar::synthetic(p.images, 3, p.side, 10, 20.0, p.seed)?;
    let (mean, std) = cifar::channel_stats(&set);
    let data: Batch<B> = batch_from_images(&set, &mean, &std, device)?;
    let warm_data: Batch<B> = batch_from_images(&set.head(2 * p.block), &mean, &std, device)?;
    let mut model: ResNet<B> = ResNetConfig::new().with_width(p.width).init(device, p.seed)?;
    let mut optim = train::paper_sgd().init::<B, ResNet<B>>();
    let (lr, clip) = (0.1, Some(0.25));
    let plain = FullBatchOptions { block_size: p.block, order: BlockOrder::Sequential, regulariser: None };
    let regularised = FullBatchOptions { regulariser: Some(Regulariser { alpha: 0.5, eps: 0.01, lr }), ..plain };
    for options in [&plain, &regularised] {
        model = full_batch_step(model, &mut optim, &warm_data, options, lr, clip)?.0;
    }
    read_back(&model)?;
    let warm = warmup.finish();
    let warmup_s = start.elapsed().as_secs_f64();
    let mut times = [0.0; 2];
    for (options, time) in [&plain, &regularised].into_iter().zip(&mut times) {
        let t = Instant::now();
        model = full_batch_step(model, &mut optim, &data, options, lr, clip)?.0;
        read_back(&model)?;
        *time = t.elapsed().as_secs_f64();
    }
    Ok(FullBatchTiming {
        width: p.width,
        images: p.images,
        block: p.block,
        warmup_s,
        kernels_compiled: warm.kernels_compiled,
        plain_step_s: times[0],
        regularised_step_s: times[1],
        plain_images_per_s: p.images as f64 / times[0],
    })
}
