//! The training loop behind `fullbatch train`: a run directory with the resolved configuration,
//! a JSONL log and atomic checkpoints; exact resume; divergence and interruption handling. (The
//! device checks and timings are in [`super::bench`].)
//!
//! # The run directory
//! - `config.toml`: the resolved configuration ([`RunConfig::to_toml`]).
//! - `run.json`: name, seed, git commit, device, backend, crate version, data sizes, start time.
//! - `log.jsonl`: one [`LogEntry`] per step (per epoch in SGD mode), as a JSON object per line.
//! - `segments.jsonl`: one [`SegmentRecord`] per process that worked on the run (the first
//!   start and each resume): its steps, backend, device, git commit, the time of its first step
//!   (the warm-up: kernel compilation on a GPU) apart from the median of its later steps, and the
//!   kernels it compiled.
//! - `checkpoints/step-NNNNNN/`: `model.bin` and `optim.bin` (burn's `BinFileRecorder` with
//!   full `f32` precision: weights, BatchNorm running statistics, momentum buffers) and
//!   `state.json` (the step and the accumulated wall time); `checkpoints/latest` names the newest
//!   one. A checkpoint is written into a temporary directory, synced, then renamed; `latest` is
//!   replaced by a rename too, so a crash never leaves a half-written checkpoint in use. The two
//!   newest checkpoints are kept.
//!
//! # Randomness and exact resume
//! No random state is saved: every random draw is a pure function of the run seed and the step
//! (epoch in SGD mode). [`derive_seed`]`(seed, stream, index)` gives the seed of the weights
//! (the run seed itself), of the synthetic data, of the subsets, of each fixed augmented copy, and
//! of each step's augmentation and block (or minibatch) order. Resuming from the checkpoint of
//! step `s` therefore replays steps `s, s+1, ...` exactly as an uninterrupted run would, on the
//! same backend and machine (bit for bit, since the weights and optimizer state are stored in
//! full precision): the log lines after resume are identical except for the wall-time fields
//! (`wall_s`, `step_s`, `images_per_s`, `lambda_s`). The log is cut back to the checkpoint's
//! step on resume.
//!
//! # Sharpness
//! With a `[sharpness]` section ([`super::config::SharpnessConfig`]) $\lambda_{\max}$ of the
//! Hessian is measured after the update of every `every`-th step and of the last one
//! ([`super::sharpness::network_lambda_max`]), on the first `max_images` un-augmented training
//! images, and logged (`lambda_max`, `lambda_residual`, `lambda_hvps`, `lambda_s`). The
//! measurement changes neither the parameters nor the BatchNorm running statistics and draws no
//! training randomness (its random start vector, used at the first measurement only, has its own
//! stream [`stream::SHARPNESS`]). Each measurement is warm-started from the previous eigenvector,
//! rounded to `f32`; checkpoints store that vector (`sharpness_start.bin`, little-endian `f32`)
//! so a resumed run starts its next measurement from the same vector as an uninterrupted one.
//!
//! # Stopping
//! A non-finite loss or gradient norm stops the run with [`Error::Diverged`] (the step is the
//! 0-based index of the failing update); nothing is saved after it, so the last checkpoint is the
//! last good state. A stop request ([`RunOptions::stop`], set by Ctrl-C in the command line)
//! or [`RunOptions::max_steps`] ends the run after the current step (epoch) with a checkpoint.
//! During the warm-up ([`RunOptions::warming_up`]: the first step and evaluation of a process,
//! minutes of kernel compilation on a fresh GPU) the command line exits at once instead. A
//! directory whose run stopped before its first checkpoint starts over from step 0 on resume.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::config::{Dataset, Mode, RunConfig};
use super::device::KernelCache;
use super::resnet::{ResNet, ResNetConfig};
use super::train::{
    self, BlockOrder, FullBatchOptions, Regulariser, WarmupCosine, clip_global_norm, cross_entropy, full_batch_step,
    global_grad_norm, read_scalar,
};
use super::{Batch, batch_from_images};
use crate::data::cifar::{self, ImageSet};
use crate::data::fashion_mnist;
use crate::engine::{Control, Observer, Stepper, drive};
pub use crate::run_dir::{
    LogEntry, RegulariserLedger, RunInfo, SegmentRecord, WALL_TIME_FIELDS, latest_checkpoint, read_segments,
    stored_config,
};
use crate::{Error, Result};

/// Random streams of [`derive_seed`].
mod checkpoint;
mod observers;
pub mod saved;

use checkpoint::{json_error, load_checkpoint, load_sharpness_start, save_checkpoint, truncate_log, write_atomic};

use observers::{Checkpoints, Evaluation, LogWriter, Reporter, SegmentProgress, SharpnessMeasurement, StepTiming};

pub mod stream {
    /// The synthetic data set.
    pub const DATA: u64 = 1;
    /// The training subset.
    pub const TRAIN_SUBSET: u64 = 2;
    /// The test subset.
    pub const TEST_SUBSET: u64 = 3;
    /// Fixed augmented copy `index`.
    pub const FIXED_COPY: u64 = 4;
    /// The augmentation of step (epoch) `index`.
    pub const AUGMENT: u64 = 5;
    /// The block order (full batch) or minibatch permutation (SGD) of step (epoch) `index`.
    pub const ORDER: u64 = 6;
    /// The random start vector of the sharpness measurement after step (epoch) `index`.
    pub const SHARPNESS: u64 = 7;
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of draw `index` of random stream `stream` (see [`stream`]) of a run with seed `seed`:
/// `splitmix64(seed ^ splitmix64(splitmix64(stream) ^ index))`.
pub fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    splitmix64(seed ^ splitmix64(splitmix64(stream) ^ index))
}

/// How a run is started.
#[derive(Debug, Default)]
pub struct RunOptions<'a> {
    /// The data directory (CIFAR-10 binary directory or Fashion-MNIST idx directory); default
    /// from `FULLBATCH_CIFAR10` / `FULLBATCH_FASHION_MNIST`.
    pub data_dir: Option<PathBuf>,
    /// Continue the run in the directory from its latest checkpoint.
    pub resume: bool,
    /// Stop (with a checkpoint) once this many steps (epochs) are done, before the configured
    /// end; the run can be resumed later.
    pub max_steps: Option<usize>,
    /// When set (by a signal handler), the run saves a checkpoint after the current step and
    /// returns.
    pub stop: Option<&'a AtomicBool>,
    /// Draw a progress bar with ETA on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
    /// Without a progress bar: print each evaluation on stderr.
    pub report_evaluations: bool,
    /// A description of the device, stored in `run.json`.
    pub device: String,
    /// The backend's name, stored in `run.json` (resume refuses another backend).
    pub backend: String,
    /// Where the backend caches compiled kernels (GPU backends compiling at run time): the
    /// warm-up line counts the kernels compiled into it, and [`SegmentRecord`] records them.
    pub kernel_cache: Option<KernelCache>,
    /// True while the first step of this process runs, when kernels are compiled: a signal
    /// handler may then exit at once instead of waiting for the step to end (nothing is being
    /// written to the run directory meanwhile). Not set during the first evaluation, which may
    /// come many steps after the last checkpoint.
    pub warming_up: Option<Arc<AtomicBool>>,
}

/// The median of `values` (`None` when empty).
fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) })
}

/// Appends `record` to `segments.jsonl` (one line, flushed).
fn append_segment(dir: &Path, record: &SegmentRecord) -> Result<()> {
    let path = dir.join("segments.jsonl");
    let line = serde_json::to_string(record).map_err(json_error)?;
    let mut f = OpenOptions::new().append(true).create(true).open(&path).map_err(|e| Error::io(&path, e))?;
    writeln!(f, "{line}").and_then(|_| f.flush()).map_err(|e| Error::io(&path, e))
}

/// How [`run`] ended without error.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Steps (epochs) done.
    pub steps_done: usize,
    /// The configured total.
    pub total_steps: usize,
    /// The last log line written, if any.
    pub last: Option<LogEntry>,
    /// Whether the run stopped early (stop request or `max_steps`).
    pub stopped_early: bool,
    /// What this process did: the line appended to `segments.jsonl`.
    pub segment: SegmentRecord,
}

/// The images of a run, on the host.
#[derive(Debug, Clone)]
pub struct RunData {
    /// The training images before any augmentation (after the subset).
    pub train: ImageSet,
    /// The fixed augmented copies, when configured (the training set of every step).
    pub fixed: Option<ImageSet>,
    /// The test images.
    pub test: ImageSet,
    /// Per-channel normalisation mean (CIFAR-10's constants, else the training images').
    pub mean: Vec<f64>,
    /// Per-channel normalisation standard deviation.
    pub std: Vec<f64>,
}

impl RunData {
    /// The number of images a step trains on.
    pub fn train_len(&self) -> usize {
        self.fixed.as_ref().map_or(self.train.len(), ImageSet::len)
    }
}

/// Loads (or draws) the images of `config`.
///
/// # Errors
/// [`Error::InvalidParameter`] (`data`) if CIFAR-10 has no directory; the readers' errors.
pub fn load_data(config: &RunConfig, data_dir: Option<&Path>) -> Result<RunData> {
    let seed = config.seed;
    let (train, test) = match &config.data.dataset {
        Dataset::Cifar10 => {
            let dir = data_dir.map(Path::to_path_buf).or_else(cifar::env_dir).ok_or_else(|| {
                Error::invalid(
                    "data",
                    format!("CIFAR-10 needs --data DIR (the binary version) or {} set", cifar::DIR_ENV),
                )
            })?;
            (cifar::load(&dir, cifar::Split::Train)?, cifar::load(&dir, cifar::Split::Test)?)
        }
        Dataset::FashionMnist => {
            let dir = data_dir.map(Path::to_path_buf).unwrap_or_else(fashion_mnist::default_dir);
            (
                cifar::fashion_mnist_padded(&dir, fashion_mnist::Split::Train)?,
                cifar::fashion_mnist_padded(&dir, fashion_mnist::Split::Test)?,
            )
        }
        Dataset::Synthetic { n, n_test, side, noise, classes, channels } => {
            let all =
                cifar::synthetic(n + n_test, *channels, *side, *classes, *noise, derive_seed(seed, stream::DATA, 0))?;
            let test: Vec<usize> = (*n..n + n_test).collect();
            (all.head(*n), all.select(&test))
        }
    };
    let train = match config.data.train_subset {
        Some(k) => train.random_subset(k, derive_seed(seed, stream::TRAIN_SUBSET, 0)),
        None => train,
    };
    let test = match config.data.test_subset {
        Some(k) => test.random_subset(k, derive_seed(seed, stream::TEST_SUBSET, 0)),
        None => test,
    };
    let (mean, std) = match config.data.dataset {
        Dataset::Cifar10 => (cifar::CIFAR10_MEAN.to_vec(), cifar::CIFAR10_STD.to_vec()),
        _ => cifar::channel_stats(&train),
    };
    let fixed = match (config.augmentation.enabled, config.augmentation.fixed_copies) {
        (true, Some(k)) => {
            let mut all = cifar::augment(&train, config.augmentation.pad, derive_seed(seed, stream::FIXED_COPY, 0));
            for c in 1..k {
                let copy =
                    cifar::augment(&train, config.augmentation.pad, derive_seed(seed, stream::FIXED_COPY, c as u64));
                all.pixels.extend_from_slice(&copy.pixels);
                all.labels.extend_from_slice(&copy.labels);
            }
            Some(all)
        }
        _ => None,
    };
    Ok(RunData { train, fixed, test, mean, std })
}

/// The model a configuration describes, for images with `channels` channels and `classes`
/// classes, with weights drawn from the run seed.
///
/// # Errors
/// [`Error::InvalidParameter`] from the model's validation.
pub fn build_model<B: Backend>(
    config: &RunConfig,
    channels: usize,
    classes: usize,
    device: &B::Device,
) -> Result<ResNet<B>> {
    ResNetConfig::new()
        .with_width(config.model.width)
        .with_blocks(config.model.blocks.clone())
        .with_in_channels(channels)
        .with_num_classes(classes)
        .init(device, config.seed)
}

/// Runs (or resumes) the training run of `config` in `dir` on `device`.
///
/// A new run needs `dir` absent or without a log and checkpoints; `options.resume` continues
/// from the latest checkpoint (or starts over from step 0 when there is none) and needs the
/// same configuration, and with a checkpoint the same backend, as stored. The steps run on
/// [`crate::engine::drive`]: a `ResNetStepper` (one full-batch update or SGD epoch) with the
/// observers `StepTiming`, `Evaluation`, `SharpnessMeasurement`, `LogWriter` and `Checkpoints`,
/// in that order after each step.
///
/// # Errors
/// [`Error::InvalidParameter`] for a directory in the wrong state, a configuration that
/// differs from the stored one, or impossible data sizes; [`Error::Diverged`] if the loss or
/// gradient norm becomes non-finite (the last checkpoint is kept); I/O and record errors.
pub fn run<B: AutodiffBackend>(
    config: &RunConfig,
    dir: &Path,
    device: &B::Device,
    options: &RunOptions<'_>,
) -> Result<RunSummary> {
    run_on::<B>(config, dir, std::slice::from_ref(device), options)
}

/// [`run`] on several devices: each full-batch step's blocks are split across `devices` (the
/// model, its updates and the evaluations live on the first), with burn's collective all-reduce
/// (feature `collective`, `deep::parallel`); one device is [`run`] itself. The log equals the
/// one-device log up to `f32` rounding (the sums run in another order), so resume needs the same
/// number of devices: record it in [`RunOptions::backend`].
///
/// # Errors
/// As [`run`]; [`Error::InvalidParameter`] (`devices`) for no device, several devices for an
/// SGD row, or several devices in a build without the `collective` feature.
pub fn run_on<B: AutodiffBackend>(
    config: &RunConfig,
    dir: &Path,
    devices: &[B::Device],
    options: &RunOptions<'_>,
) -> Result<RunSummary> {
    config.validate()?;
    let device = devices.first().ok_or_else(|| Error::invalid("devices", "none given"))?;
    if devices.len() > 1 {
        if !cfg!(feature = "collective") {
            return Err(Error::invalid(
                "devices",
                "data-parallel steps need a build with the `collective` feature (cargo build --features collective)",
            ));
        }
        if matches!(config.mode, Mode::Sgd { .. }) {
            return Err(Error::invalid(
                "devices",
                format!("{} devices: data parallelism splits full-batch steps; an SGD row runs on one", devices.len()),
            ));
        }
    }
    let checkpoint = check_run_dir(config, dir, options)?;
    let data = load_data(config, options.data_dir.as_deref())?;
    let model: ResNet<B> = build_model(config, data.train.channels, data.train.n_classes, device)?;
    let o = &config.optimizer;
    let optim = train::sgd_config(o.momentum, o.nesterov, o.weight_decay as f32).init::<B, ResNet<B>>();
    let schedule = WarmupCosine { base_lr: o.lr, warmup_steps: o.warmup, t_max: o.t_max };
    schedule.validate()?;
    let total = config.total_steps();
    let log_path = dir.join("log.jsonl");
    // The training images when they do not change from step to step.
    let fixed = match (&data.fixed, config.augmentation.enabled) {
        (Some(set), _) => Some(batch_from_images(set, &data.mean, &data.std, device)?),
        (None, false) => Some(batch_from_images(&data.train, &data.mean, &data.std, device)?),
        (None, true) => None,
    };
    let mut stepper = ResNetStepper {
        config,
        data: &data,
        fixed,
        device,
        devices,
        model: Some(model),
        optim,
        schedule,
        sharpness_start: None,
    };
    let (mut start_step, mut wall_offset, mut last) = (0usize, 0.0f64, None);
    if options.resume && checkpoint.is_none() && (options.progress || options.report_evaluations) {
        eprintln!("{} has no checkpoint: starting the run over from step 0", dir.display());
    }
    if let Some((path, _)) = checkpoint {
        stepper.sharpness_start = load_sharpness_start(&path)?;
        let model = stepper.model.take().ok_or_else(|| Error::invalid("model", "missing"))?;
        let (m, opt, state) = load_checkpoint(&path, model, stepper.optim, device)?;
        (stepper.model, stepper.optim) = (Some(m), opt);
        (start_step, wall_offset) = (state.step, state.wall_s);
        last = truncate_log(&log_path, start_step)?;
    } else {
        write_new_run(config, dir, options, &data, stepper.model()?)?;
    }
    let end = options.max_steps.map_or(total, |m| m.min(total));
    let reporter = Reporter::new(config, options, start_step, total)?;
    let progress = std::cell::RefCell::new(SegmentProgress::new(start_step, options));
    let mut timing = StepTiming { start_step, reporter: &reporter, progress: &progress, started: None };
    let mut evaluation = Evaluation::new(config, &data, device, &reporter, &progress, total)?;
    let mut sharpness = SharpnessMeasurement::new(config, &data, device, &reporter, total)?;
    let log = OpenOptions::new().append(true).create(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let started = Instant::now();
    let mut writer = LogWriter { log, path: log_path, wall_offset, started, reporter: &reporter, last };
    let mut checkpoints = Checkpoints { dir, end, wall_offset, started, stop: options.stop };
    let observers: &mut [&mut dyn Observer<ResNetStepper<'_, B, _>>] =
        &mut [&mut timing, &mut evaluation, &mut sharpness, &mut writer, &mut checkpoints];
    let ended = drive(&mut stepper, start_step, end, observers);
    reporter.bar.finish_and_clear();
    let t = ended.steps_done;
    let stopped_early = matches!(ended.result, Ok(Control::Stop(_))) || t < total;
    let segment = progress.into_inner().finish(t, options, &ended.result, stopped_early);
    // The run's own error comes first; a failed append is reported only after a clean run.
    let appended = append_segment(dir, &segment);
    ended.result?;
    appended?;
    Ok(RunSummary { steps_done: t, total_steps: total, last: writer.last, stopped_early, segment })
}

/// Checks the run directory before anything is loaded: a new run needs an empty one; a resumed
/// run the same configuration and, when continuing from a checkpoint, the same backend. Returns
/// the checkpoint to continue from (none: start from step 0; a run stopped before its first
/// checkpoint, killed or interrupted during the warm-up, starts over in the same directory).
fn check_run_dir(config: &RunConfig, dir: &Path, options: &RunOptions<'_>) -> Result<Option<(PathBuf, usize)>> {
    let checkpoint = if options.resume { latest_checkpoint(dir)? } else { None };
    if options.resume {
        let stored = stored_config(dir)?;
        if &stored != config {
            return Err(Error::invalid(
                "config",
                format!(
                    "differs from the one stored in {} (resume needs the same configuration)",
                    dir.join("config.toml").display()
                ),
            ));
        }
        // The backend matters only when continuing from a checkpoint (run.json may not even
        // exist when the run is started over).
        if checkpoint.is_some() {
            let info = crate::run_dir::read_run_info(dir)?;
            if info.backend != options.backend {
                return Err(Error::invalid(
                    "backend",
                    format!(
                        "the run was made with {}, not {} (resume is exact only on the same backend)",
                        info.backend, options.backend
                    ),
                ));
            }
        }
    } else if dir.join("log.jsonl").exists() || dir.join("checkpoints").exists() {
        return Err(Error::invalid(
            "out",
            format!("{} already holds a run; use --resume to continue it or choose another directory", dir.display()),
        ));
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    Ok(checkpoint)
}

/// Writes a new run's `config.toml`, `run.json` and an empty `log.jsonl`.
fn write_new_run<B: Backend>(
    config: &RunConfig,
    dir: &Path,
    options: &RunOptions<'_>,
    data: &RunData,
    model: &ResNet<B>,
) -> Result<()> {
    write_atomic(&dir.join("config.toml"), config.to_toml()?.as_bytes())?;
    let info = RunInfo {
        name: config.name.clone(),
        seed: config.seed,
        git_commit: crate::provenance::git_commit(),
        device: options.device.clone(),
        backend: options.backend.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        train_images: data.train_len(),
        test_images: data.test.len(),
        parameters: model.num_trainable_params(),
        started_unix_s: unix_now(),
    };
    write_atomic(&dir.join("run.json"), &serde_json::to_vec_pretty(&info).map_err(json_error)?)?;
    write_atomic(&dir.join("log.jsonl"), b"")
}

/// The training state of `fullbatch train`: one step is one full-batch update, or one SGD epoch.
struct ResNetStepper<'a, B: AutodiffBackend, O> {
    config: &'a RunConfig,
    data: &'a RunData,
    /// The training batch of every step, when it does not change.
    fixed: Option<Batch<B>>,
    device: &'a B::Device,
    /// All devices of a data-parallel run (`device` first); one otherwise.
    devices: &'a [B::Device],
    /// `None` only while a step moves it through the update.
    model: Option<ResNet<B>>,
    optim: O,
    schedule: WarmupCosine,
    /// The warm start of the next sharpness measurement (the last eigenvector, rounded to f32).
    sharpness_start: Option<Vec<f32>>,
}

impl<B: AutodiffBackend, O> ResNetStepper<'_, B, O> {
    fn model(&self) -> Result<&ResNet<B>> {
        self.model.as_ref().ok_or_else(|| Error::invalid("model", "lost in a failed step"))
    }

    /// The training images of step `t`: fixed, or augmented with a seed derived from `t`.
    fn batch(&self, t: usize) -> Result<Batch<B>> {
        if let Some(b) = &self.fixed {
            return Ok(b.clone());
        }
        let (data, config) = (self.data, self.config);
        let set =
            cifar::augment(&data.train, config.augmentation.pad, derive_seed(config.seed, stream::AUGMENT, t as u64));
        batch_from_images(&set, &data.mean, &data.std, self.device)
    }
}

impl<B: AutodiffBackend, O: Optimizer<ResNet<B>, B>> ResNetStepper<'_, B, O> {
    /// One full-batch step with its blocks split across `devices`
    /// ([`super::parallel::data_parallel_gradient`]), then the update on the first device.
    #[cfg(feature = "collective")]
    fn data_parallel_step(
        &mut self,
        model: ResNet<B>,
        batch: &Batch<B>,
        options: &FullBatchOptions,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<(ResNet<B>, train::StepReport)> {
        let plan = train::block_plan(batch.len(), options.block_size, options.order)?;
        let full =
            super::parallel::data_parallel_gradient(&model, self.devices, batch, &plan, options.regulariser.as_ref())?;
        train::full_batch_update(model, &mut self.optim, full, lr, clip)
    }

    /// Without the `collective` feature [`run_on`] refuses several devices before any step.
    #[cfg(not(feature = "collective"))]
    fn data_parallel_step(
        &mut self,
        _model: ResNet<B>,
        _batch: &Batch<B>,
        _options: &FullBatchOptions,
        _lr: f64,
        _clip: Option<f64>,
    ) -> Result<(ResNet<B>, train::StepReport)> {
        Err(Error::invalid("devices", "data-parallel steps need the `collective` feature"))
    }
}

impl<B: AutodiffBackend, O: Optimizer<ResNet<B>, B>> Stepper for ResNetStepper<'_, B, O> {
    type Record = LogEntry;

    /// # Errors
    /// A failed update (named with its step); [`Error::Diverged`] for a non-finite gradient norm
    /// or training loss.
    fn step(&mut self, t: usize) -> Result<LogEntry> {
        let config = self.config;
        let batch = self.batch(t)?;
        let lr = self.schedule.lr(t);
        let model = self.model.take().ok_or_else(|| Error::invalid("model", "lost in a failed step"))?;
        let entry = match &config.mode {
            Mode::FullBatch { block_size, shuffle_blocks, clip, regulariser_alpha, regulariser_eps, .. } => {
                let order = if *shuffle_blocks {
                    BlockOrder::ShuffledBlocks { seed: derive_seed(config.seed, stream::ORDER, t as u64) }
                } else {
                    BlockOrder::Sequential
                };
                let regulariser = (*regulariser_alpha > 0.0).then_some(Regulariser {
                    alpha: *regulariser_alpha,
                    eps: *regulariser_eps,
                    lr,
                });
                let opts = FullBatchOptions { block_size: *block_size, order, regulariser };
                let (m, report) = if self.devices.len() > 1 {
                    self.data_parallel_step(model, &batch, &opts, lr, *clip)
                } else {
                    full_batch_step(model, &mut self.optim, &batch, &opts, lr, *clip)
                }
                .map_err(|e| at_step(e, t))?;
                self.model = Some(m);
                if !report.grad_norm.is_finite() {
                    return Err(Error::Diverged { step: t, quantity: "gradient norm".into() });
                }
                let clip_factor = match clip {
                    Some(c) if report.clipped => c / (report.grad_norm + 1e-6),
                    _ => 1.0,
                };
                let entry = LogEntry {
                    step: t + 1,
                    lr,
                    train_loss: report.loss,
                    grad_norm: report.grad_norm,
                    clip_factor,
                    // Images now; divided by the step's time by [`StepTiming`].
                    images_per_s: ((batch.len() / block_size) * block_size) as f64,
                    ..LogEntry::default()
                };
                RegulariserLedger::new(
                    lr,
                    config.optimizer.momentum_kind(),
                    report.mean_grad_sq_norm,
                    report.mean_block_grad_sq_norm,
                    regulariser.map(|r| r.alpha),
                )
                .record(entry)
            }
            Mode::Sgd { batch_size, clip, .. } => {
                let seed = derive_seed(config.seed, stream::ORDER, t as u64);
                let (m, e) = sgd_epoch(model, &mut self.optim, &batch, *batch_size, *clip, lr, seed)
                    .map_err(|e| at_step(e, t))?;
                self.model = Some(m);
                let (g_sq, blocks_sq) =
                    (e.mean_grad_sq_norm.unwrap_or(f64::NAN), e.mean_block_grad_sq_norm.unwrap_or(f64::NAN));
                RegulariserLedger::new(lr, config.optimizer.momentum_kind(), g_sq, blocks_sq, None)
                    .record(LogEntry { step: t + 1, ..e })
            }
        };
        if !entry.train_loss.is_finite() {
            return Err(Error::Diverged { step: t, quantity: "training loss".into() });
        }
        Ok(entry)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Gives a [`Error::Diverged`] from a step function the run's step index.
fn at_step(e: Error, step: usize) -> Error {
    match e {
        Error::Diverged { quantity, .. } => Error::Diverged { step, quantity },
        other => other,
    }
}

/// One epoch of minibatch SGD over `data`: a seeded permutation, batches of `batch_size` (the
/// last partial batch dropped), optional global-norm clipping of each minibatch gradient, one
/// update per batch at learning rate `lr`. The returned entry has the epoch's mean loss,
/// accuracy, gradient norm and clip factor, the number of images in `images_per_s`, and the
/// regulariser ledger's two inputs over the epoch's minibatch gradients $g_k$ (before clipping,
/// each at the iterate it was taken at): `mean_block_grad_sq_norm` $=\frac1m\sum_k\lVert g_k\rVert^2$
/// and `mean_grad_sq_norm` $=\lVert\frac1m\sum_k g_k\rVert^2$ (a running mean of the
/// gradients, one extra parameter-sized buffer).
///
/// # Errors
/// [`Error::InvalidParameter`] if `batch_size` is zero or larger than the data, or a value
/// cannot be read back; [`Error::Diverged`] (step 0) for a non-finite minibatch gradient norm.
pub fn sgd_epoch<B, O>(
    mut model: ResNet<B>,
    optim: &mut O,
    data: &Batch<B>,
    batch_size: usize,
    clip: Option<f64>,
    lr: f64,
    seed: u64,
) -> Result<(ResNet<B>, LogEntry)>
where
    B: AutodiffBackend,
    O: Optimizer<ResNet<B>, B>,
{
    let n = data.len();
    if batch_size == 0 || batch_size > n {
        return Err(Error::invalid("mode.batch_size", format!("{batch_size} does not fit {n} images")));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let device = data.images.device();
    let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut hits_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    let (mut norm_sum, mut sq_sum, mut clip_sum) = (0.0, 0.0, 0.0);
    let mut mean_grad: Option<GradientsParams> = None;
    let batches = n / batch_size;
    for (k, idx) in order.chunks_exact(batch_size).enumerate() {
        let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [idx.len()]), &device);
        let images = data.images.clone().select(0, ids.clone());
        let labels = data.labels.clone().select(0, ids);
        let logits = model.forward(images);
        let hits = logits.clone().argmax(1).squeeze_dim::<1>(1).equal(labels.clone()).float().sum();
        let loss = cross_entropy(logits, labels);
        let value = loss.clone().inner();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let copy = train::copy_grads(&model, &grads);
        mean_grad = Some(match mean_grad {
            None => copy,
            Some(m) => train::lerp_grads(&model, m, copy, train::Coef::Scalar(1.0 / (k + 1) as f64)),
        });
        let (grads, norm, factor) = match clip {
            Some(c) => {
                let (g, r) = clip_global_norm(&model, grads, c)?;
                (g, r.norm, r.scale)
            }
            None => {
                let norm = global_grad_norm(&model, &grads)?;
                (grads, norm, 1.0)
            }
        };
        if !norm.is_finite() {
            return Err(Error::Diverged { step: 0, quantity: "minibatch gradient norm".into() });
        }
        norm_sum += norm;
        sq_sum += norm * norm;
        clip_sum += factor;
        model = optim.step(lr, model, grads);
        loss_sum = Some(match loss_sum {
            None => value,
            Some(s) => s + value,
        });
        let hits = hits.inner();
        hits_sum = Some(match hits_sum {
            None => hits,
            Some(s) => s + hits,
        });
    }
    let k = batches as f64;
    let mean_grad_sq_norm = match &mean_grad {
        Some(g) => global_grad_norm(&model, g)?.powi(2),
        None => f64::NAN,
    };
    let entry = LogEntry {
        step: 0,
        lr,
        train_loss: read_scalar(loss_sum)? / k,
        train_acc: Some(read_scalar(hits_sum)? / (k * batch_size as f64)),
        grad_norm: norm_sum / k,
        clip_factor: clip_sum / k,
        mean_block_grad_sq_norm: Some(sq_sum / k),
        mean_grad_sq_norm: Some(mean_grad_sq_norm),
        images_per_s: (batches * batch_size) as f64,
        ..LogEntry::default()
    };
    Ok((model, entry))
}
