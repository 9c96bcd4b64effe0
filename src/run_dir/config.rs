//! Run configurations: one TOML file per experiment (`experiments/cifar10/*.toml`), read with
//! serde and checked before anything runs.
//!
//! Every table rejects keys it does not know (`#[serde(deny_unknown_fields)]`), so a misspelt key
//! is an error naming it rather than a silently ignored setting; [`RunConfig::validate`] rejects
//! impossible values (a learning rate that is not positive, a block size of 0, a warmup longer
//! than the cosine period, ...) with an [`Error::InvalidParameter`] whose field is the dotted key,
//! for example `optimizer.lr`.
//!
//! # Schema
//! ```toml
//! base = "fb5-strong-reg.toml" # optional: start from this file (relative path) and override its keys
//! name = "fb-strong-reg"      # free text, used in logs
//! seed = 0                    # every random draw of the run derives from it
//! eval_every = 100            # steps (epochs in SGD mode) between evaluations; the last step is always evaluated
//! checkpoint_every = 100      # steps (epochs) between checkpoints; the last step is always saved
//! eval_batch_size = 500       # optional, images per forward pass when evaluating (default 500)
//!
//! [data]
//! dataset = "cifar10"         # or "fashion-mnist", or a table for synthetic textures:
//! # [data.dataset.synthetic]
//! # n = 256, n_test = 128, side = 16, noise = 20.0, classes = 4, channels = 3 (one key per line)
//! train_subset = 5000         # optional: a seeded random subset of the training images
//! test_subset = 1000          # optional: a seeded random subset of the test images
//!
//! [augmentation]
//! enabled = true              # random crop (zero padding `pad`) + horizontal flip
//! pad = 4                     # optional (default 4)
//! fixed_copies = 10           # optional: replace the training set by this many augmented copies, drawn once
//!
//! [model]
//! width = 64                  # ResNet width (64 = ResNet-18)
//! blocks = [2, 2, 2, 2]       # BasicBlocks per stage
//!
//! [mode.full_batch]           # either full batch ...
//! steps = 3000
//! block_size = 32             # images per forward/backward (one BatchNorm batch)
//! shuffle_blocks = true       # visit the blocks in a new seeded order at every step
//! clip = 0.25                 # optional: global-norm clipping threshold
//! regulariser_alpha = 0.5     # 0 turns the finite-difference regulariser off
//! regulariser_eps = 0.01      # optional (default 0.01)
//! # ... or [mode.sgd] with batch_size = 128, epochs = 300, clip = ... (optional)
//!
//! [optimizer]                 # SGD with coupled weight decay and momentum (dampening 0)
//! lr = 0.8
//! momentum = 0.9
//! nesterov = true
//! weight_decay = 5e-4
//! warmup = 400                # linear warmup from 0, in steps (epochs in SGD mode)
//! t_max = 4000                # cosine period after the warmup, same unit
//!
//! [sharpness]                 # optional: lambda_max of the Hessian during training
//! every = 10                  # steps (epochs) between measurements; the last step is measured too
//! bn_mode = "train"           # optional: "train" (batch statistics per block) or "eval" (running)
//! max_images = 512            # optional: the first this many un-augmented training images (default all)
//! tol = 1e-2                  # optional: Lanczos tolerance on the relative true residual
//! max_hvps = 100              # optional: Hessian-vector products per measurement
//! eps_rel = 1e-4              # optional: finite-difference step relative to |theta|
//! ```
//!
//! The two enums (`data.dataset`, `mode`) are externally tagged (`dataset = "cifar10"`,
//! `[mode.full_batch]`) rather than tagged by a `kind` key: TOML errors inside an externally
//! tagged table keep their position, so a wrong type names its key.
//!
//! Units: in full-batch mode a step is one update with the gradient over the whole training set;
//! in SGD mode the scheduler, `eval_every`, `checkpoint_every`, `warmup` and `t_max` count epochs
//! (the paper's SGD baseline steps its schedule once per epoch).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The default relative finite-difference step: $\varepsilon = 10^{-4}\max(\lVert\theta\rVert, 1)$
/// (see the module documentation).
pub const DEFAULT_EPS_REL: f64 = 1e-4;

/// The default Lanczos tolerance on the relative true residual. The eigenvalue itself is more
/// accurate, about $(\text{tol}\,\lambda)^2/\text{gap}$ (plus the operator error).
pub const DEFAULT_TOL: f64 = 1e-2;

/// The default budget of Hessian-vector products per measurement.
pub const DEFAULT_MAX_HVPS: usize = 100;

/// How BatchNorm layers normalise while the Hessian is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormMode {
    /// Batch statistics of every block (the loss full-batch training sees).
    #[default]
    Train,
    /// The running statistics (the loss of the inference model).
    Eval,
}

/// One experiment, as read from its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// A short name for logs and the run directory.
    pub name: String,
    /// The seed every random draw of the run derives from (weights, subsets, augmentation,
    /// shuffles).
    pub seed: u64,
    /// Steps (epochs in SGD mode) between evaluations on the test set; the last step is always
    /// evaluated.
    pub eval_every: usize,
    /// Steps (epochs in SGD mode) between checkpoints; the last step is always saved.
    pub checkpoint_every: usize,
    /// Images per forward pass when evaluating (inference mode, so it does not change results
    /// beyond rounding).
    #[serde(default = "default_eval_batch_size")]
    pub eval_batch_size: usize,
    /// Where the images come from.
    pub data: DataConfig,
    /// Data augmentation.
    pub augmentation: AugmentationConfig,
    /// The network.
    pub model: ModelConfig,
    /// Full batch or SGD, and their settings.
    pub mode: Mode,
    /// Optimizer and learning-rate schedule.
    pub optimizer: OptimizerConfig,
    /// Optional measurements of $\lambda_{\max}$ of the Hessian during training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharpness: Option<SharpnessConfig>,
}

/// `[sharpness]`: measure $\lambda_{\max}$ of the Hessian of the training loss every `every`
/// steps (epochs in SGD mode) with `deep::sharpness::network_lambda_max`, on the first
/// `max_images` un-augmented training images in blocks of the run's block size (`batch_size` in
/// SGD mode); results go to the log (`lambda_max`, `lambda_residual`, `lambda_hvps`, `lambda_edge_fraction`,
/// `lambda_s`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharpnessConfig {
    /// Steps (epochs) between measurements; the last step is measured too.
    pub every: usize,
    /// How BatchNorm normalises during the measurement (default `train`).
    #[serde(default)]
    pub bn_mode: BatchNormMode,
    /// Measure on the first this many un-augmented training images (default: all of them).
    #[serde(default)]
    pub max_images: Option<usize>,
    /// Lanczos tolerance on $\lVert Hv - \lambda v\rVert / \lvert\lambda\rvert$.
    #[serde(default = "default_sharpness_tol")]
    pub tol: f64,
    /// Budget of Hessian-vector products per measurement.
    #[serde(default = "default_sharpness_max_hvps")]
    pub max_hvps: usize,
    /// The finite-difference step relative to $\max(\lVert\theta\rVert, 1)$.
    #[serde(default = "default_sharpness_eps_rel")]
    pub eps_rel: f64,
}

impl SharpnessConfig {
    /// Measurements every `every` steps with the defaults for everything else.
    pub fn every(every: usize) -> Self {
        SharpnessConfig {
            every,
            bn_mode: BatchNormMode::default(),
            max_images: None,
            tol: default_sharpness_tol(),
            max_hvps: default_sharpness_max_hvps(),
            eps_rel: default_sharpness_eps_rel(),
        }
    }
}

fn default_sharpness_tol() -> f64 {
    DEFAULT_TOL
}

fn default_sharpness_max_hvps() -> usize {
    DEFAULT_MAX_HVPS
}

fn default_sharpness_eps_rel() -> f64 {
    DEFAULT_EPS_REL
}

fn default_eval_batch_size() -> usize {
    500
}

fn default_pad() -> usize {
    4
}

fn default_eps() -> f64 {
    0.01
}

fn default_blocks() -> Vec<usize> {
    vec![2, 2, 2, 2]
}

fn default_channels() -> usize {
    3
}

/// The data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Dataset {
    /// CIFAR-10, binary version (50,000 training and 10,000 test images, 3x32x32, 10 classes),
    /// from `--data DIR` or the `FULLBATCH_CIFAR10` environment variable.
    Cifar10,
    /// Fashion-MNIST padded to 1x32x32 (60,000 training and 10,000 test images, 10 classes),
    /// from `--data DIR`, `FULLBATCH_FASHION_MNIST` or `/usr/share/datasets/fashion-mnist`.
    FashionMnist,
    /// Seeded synthetic textures ([`crate::data::cifar::synthetic`]): `n` training and `n_test`
    /// test images drawn together (same class textures).
    Synthetic {
        /// Training images.
        n: usize,
        /// Test images.
        n_test: usize,
        /// Image side in pixels.
        side: usize,
        /// Pixel noise standard deviation (pixel units, 0..255 scale).
        noise: f64,
        /// Number of classes.
        classes: usize,
        /// Number of channels (default 3).
        #[serde(default = "default_channels")]
        channels: usize,
    },
}

impl Dataset {
    /// The name in configuration files: `cifar10`, `fashion-mnist` or `synthetic`.
    pub fn name(&self) -> &'static str {
        match self {
            Dataset::Cifar10 => "cifar10",
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Synthetic { .. } => "synthetic",
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The data set.
    pub dataset: Dataset,
    /// Train on a seeded random subset of this many training images.
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Evaluate on a seeded random subset of this many test images.
    #[serde(default)]
    pub test_subset: Option<usize>,
}

/// `[augmentation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentationConfig {
    /// Random crop with zero padding and horizontal flip, redrawn every step (every epoch in
    /// SGD mode) unless `fixed_copies` is set.
    pub enabled: bool,
    /// The zero padding of the random crop (4 for CIFAR).
    #[serde(default = "default_pad")]
    pub pad: usize,
    /// Replace the training set by this many augmented copies, drawn once at the start (the
    /// paper's "fixed augmented dataset" rows: 10 or 40); needs `enabled = true`.
    #[serde(default)]
    pub fixed_copies: Option<usize>,
}

/// `[model]`: a CIFAR ResNet (`deep::resnet::ResNetConfig`); channels and classes come from
/// the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The width of the first stage (64 for ResNet-18).
    pub width: usize,
    /// BasicBlocks per stage (default `[2, 2, 2, 2]`, ResNet-18).
    #[serde(default = "default_blocks")]
    pub blocks: Vec<usize>,
}

/// `[mode]`: how each update's gradient is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Mode {
    /// Minibatch SGD: every epoch the training set is shuffled (seeded from the run seed and the
    /// epoch) and cut into batches of `batch_size` (the last partial batch dropped).
    Sgd {
        /// Images per minibatch (128 in the paper).
        batch_size: usize,
        /// Epochs (300 in the paper).
        epochs: usize,
        /// Optional global-norm clipping of every minibatch gradient.
        #[serde(default)]
        clip: Option<f64>,
    },
    /// Full-batch gradient descent: every step's gradient is the mean over all training images,
    /// computed in blocks (`deep::train::full_batch_step`).
    FullBatch {
        /// Number of updates.
        steps: usize,
        /// Images per block (one forward/backward and one BatchNorm batch).
        block_size: usize,
        /// Visit the blocks in a new seeded order at every step (the paper's "in practice" row).
        shuffle_blocks: bool,
        /// Optional global-norm clipping threshold of the full gradient.
        #[serde(default)]
        clip: Option<f64>,
        /// The strength of the finite-difference gradient-norm regulariser (0: off).
        regulariser_alpha: f64,
        /// Its finite-difference step (default 0.01).
        #[serde(default = "default_eps")]
        regulariser_eps: f64,
    },
}

/// `[optimizer]`: SGD with momentum (dampening 0), coupled weight decay, linear warmup from 0
/// and cosine annealing (`deep::train::WarmupCosine`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// The base (peak) learning rate.
    pub lr: f64,
    /// Momentum in `[0, 1)`.
    pub momentum: f64,
    /// Nesterov momentum (PyTorch's form).
    pub nesterov: bool,
    /// Coupled L2 weight decay on every parameter.
    pub weight_decay: f64,
    /// Warmup length (steps; epochs in SGD mode).
    pub warmup: usize,
    /// Cosine period after the warmup (steps; epochs in SGD mode).
    pub t_max: usize,
}

impl OptimizerConfig {
    /// The momentum variant in the theory module's terms.
    pub fn momentum_kind(&self) -> crate::optim::Momentum {
        use crate::optim::Momentum;
        match (self.nesterov, self.momentum) {
            (true, b) => Momentum::Nesterov(b),
            (false, b) if b > 0.0 => Momentum::HeavyBall(b),
            _ => Momentum::None,
        }
    }

    /// $(\lambda + w)\,\eta / \text{limit}$: a curvature $\lambda$ at learning rate $\eta$
    /// against this optimizer's stability edge (`Momentum::stability_limit`, with the coupled
    /// weight decay $w$ added to the curvature); 1 is the edge.
    pub fn fraction_of_stability_edge(&self, lambda: f64, lr: f64) -> f64 {
        (lambda + self.weight_decay) * lr / self.momentum_kind().stability_limit()
    }
}

impl RunConfig {
    /// Reads and validates the TOML file at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read; [`Error::BadFile`] naming the file for TOML syntax,
    /// unknown keys, missing keys and wrong types (the message names the key and shows the
    /// line); [`Error::InvalidParameter`] from [`RunConfig::validate`].
    ///
    /// A file may name a base configuration, `base = "fb2-longer.toml"` (relative to the file's
    /// directory): the base is read first (itself possibly with a base) and the file's keys
    /// override it (see [`resolved_table`]). The result is one complete, checked configuration;
    /// a run directory stores that, not the chain of files.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| Error::bad_file(path, e.to_string()))?;
        let config: RunConfig = if table.contains_key(BASE_KEY) {
            resolved_table(path)?.try_into().map_err(|e: toml::de::Error| Error::bad_file(path, e.to_string()))?
        } else {
            // Parsed from the text again so that errors show the offending line.
            toml::from_str(&text).map_err(|e| Error::bad_file(path, e.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] with field `config` for TOML syntax, unknown or missing keys
    /// and wrong types (the message names the key); the errors of [`RunConfig::validate`].
    pub fn from_toml(text: &str) -> Result<RunConfig> {
        let config: RunConfig = toml::from_str(text).map_err(|e| Error::invalid("config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML text (what a run directory stores as `config.toml`).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if serialisation fails.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::invalid("config", e.to_string()))
    }

    /// Checks every value; the error's field is the dotted key.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the first impossible value.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid("name", "must not be empty"));
        }
        positive("eval_every", self.eval_every)?;
        positive("checkpoint_every", self.checkpoint_every)?;
        positive("eval_batch_size", self.eval_batch_size)?;
        if let Dataset::Synthetic { n, n_test, side, noise, classes, channels } = &self.data.dataset {
            positive("data.dataset.synthetic.n", *n)?;
            positive("data.dataset.synthetic.n_test", *n_test)?;
            positive("data.dataset.synthetic.side", *side)?;
            positive("data.dataset.synthetic.channels", *channels)?;
            if !(2..=256).contains(classes) {
                return Err(Error::invalid("data.dataset.synthetic.classes", format!("{classes} is not in 2..=256")));
            }
            if !(noise.is_finite() && *noise >= 0.0) {
                return Err(Error::invalid(
                    "data.dataset.synthetic.noise",
                    format!("{noise} is not finite and non-negative"),
                ));
            }
            let min_side = 1usize << self.model.blocks.len().saturating_sub(1);
            if *side < min_side {
                return Err(Error::invalid(
                    "data.dataset.synthetic.side",
                    format!(
                        "{side} is below {min_side}, the smallest side {} stages can downsample",
                        self.model.blocks.len()
                    ),
                ));
            }
        }
        if let Some(n) = self.data.train_subset {
            positive("data.train_subset", n)?;
        }
        if let Some(n) = self.data.test_subset {
            positive("data.test_subset", n)?;
        }
        if let Some(k) = self.augmentation.fixed_copies {
            positive("augmentation.fixed_copies", k)?;
            if !self.augmentation.enabled {
                return Err(Error::invalid("augmentation.fixed_copies", "needs augmentation.enabled = true"));
            }
        }
        if self.augmentation.pad > 16 {
            return Err(Error::invalid("augmentation.pad", format!("{} is above 16", self.augmentation.pad)));
        }
        positive("model.width", self.model.width)?;
        if self.model.blocks.is_empty() || self.model.blocks.contains(&0) {
            return Err(Error::invalid(
                "model.blocks",
                format!("{:?}: need at least one stage, each with a block", self.model.blocks),
            ));
        }
        match &self.mode {
            Mode::Sgd { batch_size, epochs, clip } => {
                positive("mode.sgd.batch_size", *batch_size)?;
                positive("mode.sgd.epochs", *epochs)?;
                check_clip("mode.sgd.clip", *clip)?;
                if let Some(n) = self.train_len_hint()
                    && *batch_size > n
                {
                    return Err(Error::invalid(
                        "mode.sgd.batch_size",
                        format!("{batch_size} is larger than the {n} training images"),
                    ));
                }
            }
            Mode::FullBatch { steps, block_size, clip, regulariser_alpha, regulariser_eps, .. } => {
                positive("mode.full_batch.steps", *steps)?;
                positive("mode.full_batch.block_size", *block_size)?;
                check_clip("mode.full_batch.clip", *clip)?;
                if !(regulariser_alpha.is_finite() && *regulariser_alpha >= 0.0) {
                    return Err(Error::invalid(
                        "mode.full_batch.regulariser_alpha",
                        format!("{regulariser_alpha} is not finite and non-negative"),
                    ));
                }
                if !(regulariser_eps.is_finite() && *regulariser_eps > 0.0) {
                    return Err(Error::invalid(
                        "mode.full_batch.regulariser_eps",
                        format!("{regulariser_eps} is not positive and finite"),
                    ));
                }
                if let Some(n) = self.train_len_hint()
                    && *block_size > n
                {
                    return Err(Error::invalid(
                        "mode.full_batch.block_size",
                        format!("{block_size} is larger than the {n} training images"),
                    ));
                }
            }
        }
        if let Some(sh) = &self.sharpness {
            positive("sharpness.every", sh.every)?;
            positive("sharpness.max_hvps", sh.max_hvps)?;
            if !(sh.tol.is_finite() && sh.tol > 0.0 && sh.tol < 1.0) {
                return Err(Error::invalid("sharpness.tol", format!("{} is not in (0, 1)", sh.tol)));
            }
            if !(sh.eps_rel.is_finite() && sh.eps_rel > 0.0 && sh.eps_rel < 1.0) {
                return Err(Error::invalid("sharpness.eps_rel", format!("{} is not in (0, 1)", sh.eps_rel)));
            }
            if let Some(m) = sh.max_images {
                positive("sharpness.max_images", m)?;
                let block = self.block_size();
                if m < block {
                    return Err(Error::invalid(
                        "sharpness.max_images",
                        format!("{m} is below the block size {block} (one BatchNorm batch)"),
                    ));
                }
            }
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(Error::invalid("optimizer.lr", format!("{} is not positive and finite", o.lr)));
        }
        if !(o.momentum.is_finite() && (0.0..1.0).contains(&o.momentum)) {
            return Err(Error::invalid("optimizer.momentum", format!("{} is not in [0, 1)", o.momentum)));
        }
        if o.nesterov && o.momentum == 0.0 {
            return Err(Error::invalid("optimizer.nesterov", "needs a positive optimizer.momentum"));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(Error::invalid(
                "optimizer.weight_decay",
                format!("{} is not finite and non-negative", o.weight_decay),
            ));
        }
        positive("optimizer.t_max", o.t_max)?;
        if o.warmup > o.t_max {
            return Err(Error::invalid(
                "optimizer.warmup",
                format!("{} is larger than optimizer.t_max = {}", o.warmup, o.t_max),
            ));
        }
        if o.warmup >= self.total_steps() {
            return Err(Error::invalid(
                "optimizer.warmup",
                format!("{} leaves no step after the warmup ({} steps in all)", o.warmup, self.total_steps()),
            ));
        }
        Ok(())
    }

    /// The number of logged steps: full-batch updates, or epochs in SGD mode.
    pub fn total_steps(&self) -> usize {
        match &self.mode {
            Mode::Sgd { epochs, .. } => *epochs,
            Mode::FullBatch { steps, .. } => *steps,
        }
    }

    /// Images per forward/backward pass of training: `block_size` (full batch) or `batch_size`
    /// (SGD).
    pub fn block_size(&self) -> usize {
        match &self.mode {
            Mode::Sgd { batch_size, .. } => *batch_size,
            Mode::FullBatch { block_size, .. } => *block_size,
        }
    }

    /// The number of training images when it is known without reading files (synthetic data,
    /// or a subset), times the fixed augmented copies.
    pub fn train_len_hint(&self) -> Option<usize> {
        let base = match (&self.data.dataset, self.data.train_subset) {
            (Dataset::Synthetic { n, .. }, Some(s)) => Some((*n).min(s)),
            (Dataset::Synthetic { n, .. }, None) => Some(*n),
            (_, Some(s)) => Some(s),
            (_, None) => None,
        };
        base.map(|n| n * self.augmentation.fixed_copies.unwrap_or(1))
    }
}

/// The key that names a base configuration file.
pub const BASE_KEY: &str = "base";

/// How many bases one file may stack (a longer chain is almost surely a mistake).
pub const MAX_BASE_DEPTH: usize = 8;

/// Tables that hold one variant of an enum (`[mode.full_batch]` or `[mode.sgd]`; a dataset name
/// or `{ synthetic = ... }`): an override naming another variant replaces the base's variant
/// instead of being merged into it.
const VARIANT_TABLES: [&str; 2] = ["mode", "dataset"];

/// The TOML table of the configuration file at `path` with its chain of bases merged in: the
/// base named by `base = "FILE"` (relative to `path`'s directory) is resolved first, then every
/// key of `path` overrides it. Tables merge key by key, any other value (arrays included)
/// replaces the base's; in `mode` and `data.dataset` a different variant replaces the base's.
/// The `base` key itself is removed.
///
/// # Errors
/// [`Error::Io`] naming a file that cannot be read; [`Error::BadFile`] naming the file for TOML
/// syntax, a `base` that is not a string, a base chain that loops or is deeper than
/// [`MAX_BASE_DEPTH`].
pub fn resolved_table(path: &Path) -> Result<toml::Table> {
    resolve_chain(path, &mut Vec::new())
}

fn resolve_chain(path: &Path, chain: &mut Vec<std::path::PathBuf>) -> Result<toml::Table> {
    let canonical = path.canonicalize().map_err(|e| Error::io(path, e))?;
    if chain.contains(&canonical) {
        let names: Vec<String> = chain.iter().chain([&canonical]).map(|p| p.display().to_string()).collect();
        return Err(Error::bad_file(path, format!("the chain of bases loops: {}", names.join(" -> "))));
    }
    if chain.len() > MAX_BASE_DEPTH {
        return Err(Error::bad_file(path, format!("more than {MAX_BASE_DEPTH} bases in a chain")));
    }
    chain.push(canonical);
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| Error::bad_file(path, e.to_string()))?;
    let Some(base) = table.remove(BASE_KEY) else { return Ok(table) };
    let base = base.as_str().ok_or_else(|| Error::bad_file(path, "`base` must be a file name in quotes"))?;
    let base_path = path.parent().unwrap_or_else(|| Path::new(".")).join(base);
    let mut merged = resolve_chain(&base_path, chain)?;
    merge_into(&mut merged, table);
    Ok(merged)
}

/// Merges `over` into `base`: tables key by key, any other value replaces.
fn merge_into(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o))
                if !(VARIANT_TABLES.contains(&key.as_str()) && o.keys().any(|k| !b.contains_key(k))) =>
            {
                merge_into(b, o);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn positive(field: &str, v: usize) -> Result<()> {
    if v == 0 { Err(Error::invalid(field, "must be positive")) } else { Ok(()) }
}

fn check_clip(field: &str, clip: Option<f64>) -> Result<()> {
    match clip {
        Some(c) if !(c.is_finite() && c > 0.0) => Err(Error::invalid(field, format!("{c} is not positive and finite"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_optimizer_edge_is_not_two_over_lr() {
        let o = OptimizerConfig { lr: 0.4, momentum: 0.9, nesterov: true, weight_decay: 5e-4, warmup: 0, t_max: 1 };
        // Nesterov 0.9: limit 3.8 / 2.8; at lambda + wd = limit / lr the fraction is 1.
        let lambda = 3.8 / 2.8 / 0.4 - 5e-4;
        assert!((o.fraction_of_stability_edge(lambda, 0.4) - 1.0).abs() < 1e-12);
        // Plain SGD: the classical 2 / lr.
        let plain = OptimizerConfig { momentum: 0.0, nesterov: false, weight_decay: 0.0, ..o };
        assert!((plain.fraction_of_stability_edge(2.0 / 0.4, 0.4) - 1.0).abs() < 1e-12);
    }
}
