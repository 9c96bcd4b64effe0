//! The toy-experiment runner: GD, SGD and GD with explicit regularisers on an MLP, with exact
//! sharpness tracked during training, driven by TOML configs (`experiments/toy/*.toml`) and
//! cached by config hash.
//!
//! A config names the data, the model, what to measure and a list of variants (learning rate,
//! steps, batch size, regulariser), each run for every seed. [`run_cached`] runs it into
//! `<results>/<name>-<hash>/`, holding
//! - `config.toml`: the config as resolved (every default written out);
//! - `log.jsonl`: one [`Evaluation`] per line (variant, seed, step, losses, accuracies,
//!   gradient norm, $\lambda_{\max}$, wall time);
//! - `results.json`: [`ExperimentResults`] (final numbers per run and their mean and spread over
//!   seeds, the data actually used, git commit, timings).
//!
//! The directory is written under a temporary name and renamed when complete; the hash covers
//! the config, the data actually used (Fashion-MNIST, or the synthetic stand-in when it is not
//! installed) and [`RUNNER_VERSION`], so changing any value reruns and an existing directory is
//! reused as is.
//!
//! Regularisers, for step size $h$ (the variant's lr):
//! - `sgd`: $L + \frac{h}{4m}\sum_{k=1}^m \|\nabla L_k\|^2$ over $m$ fixed consecutive blocks
//!   of `regulariser_batch_size` examples, the last incomplete block dropped (SGD's implicit
//!   regulariser, Smith et al. 2021), exact gradient through block HVPs
//!   ([`MinibatchGradientPenalty`](crate::objective::MinibatchGradientPenalty));
//! - `gd`: $L + \frac h4\|\nabla L\|^2$ (GD's own, Barrett & Dherin 2021; [`GradientNormPenalty`](crate::objective::GradientNormPenalty)).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::{self, Dataset, fashion_mnist};
use crate::models::{Activation, Network, NetworkSpec, OutputLoss};
use crate::optim::Momentum;
use crate::sharpness::trace::SpectralDensity;
use crate::stats::mean_and_stderr;
use crate::{Error, Result};

mod training;

use training::{GradientFlowCache, run_one};

/// The toy experiments `figures` runs and draws: `experiments/toy/<name>.toml` each.
pub const FIGURE_EXPERIMENTS: [&str; 4] = ["generalisation", "edge_of_stability", "modified_flow", "lr_sweep"];

/// Bumped when the runner's semantics change, so cached results are not reused.
pub const RUNNER_VERSION: u32 = 3;

/// A run is stopped as diverged when its training loss exceeds this multiple of the initial
/// loss (or is not finite); its last evaluation before that is kept.
pub const DIVERGED_FACTOR: f64 = 1e3;

/// Where the data come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataSource {
    /// Fashion-MNIST subsets (a synthetic teacher-student task in 784 dimensions stands in when
    /// the data set is not installed; the results say so).
    FashionMnist,
    /// A teacher-student classification task in 784 dimensions (teacher: tanh MLP, 32 hidden).
    TeacherStudent,
}

/// The data of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Source.
    pub source: DataSource,
    /// Training examples.
    pub train: usize,
    /// Test examples.
    pub test: usize,
    /// Seed of the subsets (the same for every run seed).
    #[serde(default)]
    pub seed: u64,
}

/// The network (inputs 784, outputs 10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Activation.
    pub activation: Activation,
    /// Loss (cross-entropy, or squared error on one-hot targets).
    pub loss: OutputLoss,
}

/// What is measured during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureConfig {
    /// Evaluate every this many steps (and at the start and end).
    pub every: usize,
    /// Track $\lambda_{\max}$ by warm-started Lanczos at each evaluation.
    #[serde(default = "yes")]
    pub sharpness: bool,
    /// Relative residual tolerance of those Lanczos runs.
    #[serde(default = "default_sharpness_tol")]
    pub sharpness_tol: f64,
    /// HVP budget of the Hutch++ trace at the end (0: no trace).
    #[serde(default)]
    pub trace_budget: usize,
    /// Stochastic Lanczos quadrature spectral density of the Hessian at the end of each run of
    /// the first seed (400 HVPs each).
    #[serde(default)]
    pub density: bool,
    /// For full-batch variants without regulariser: integrate the gradient flow from the same
    /// start (Dormand-Prince 5(4)) and record, at each evaluation after $n$ steps, the distance
    /// of the iterate $\theta_n$ from it at time $t = nh$ and its loss and $\lambda_{\max}$
    /// ([`FlowComparison`]).
    #[serde(default)]
    pub gradient_flow: bool,
    /// With `gradient_flow`: also GD's modified flow $\dot\theta = -\nabla(L + \frac
    /// h4\|\nabla L\|^2)$ and the iterate's distance from it. Its stiffness grows like
    /// $\lambda + \frac h2\lambda^2$: costly for large $h\lambda$.
    #[serde(default)]
    pub modified_flow: bool,
    /// Follow the flows up to this time only (default: the whole run).
    #[serde(default)]
    pub flow_until: Option<f64>,
    /// Relative tolerance of the flow integrations (absolute: 1e-3 of it).
    #[serde(default = "default_flow_rtol")]
    pub flow_rtol: f64,
    /// For variants with an explicit regulariser: also $\lambda_{\max}$ of the regularised loss
    /// that GD descends ($L + \frac h4\|\nabla L\|^2$, or $L + \frac h{4m}\sum_k\|\nabla L_k\|^2$
    /// over the blocks of the step just taken), whose stability limit is $2/h$ (`Evaluation::lambda_max_penalised`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub penalised_sharpness: bool,
}

fn yes() -> bool {
    true
}

fn default_sharpness_tol() -> f64 {
    1e-6
}

fn default_flow_rtol() -> f64 {
    1e-8
}

/// An explicit regulariser added to the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Regulariser {
    /// None.
    None,
    /// SGD's: $\frac{h}{4m}\sum_k\|\nabla L_k\|^2$.
    Sgd,
    /// GD's: $\frac h4\|\nabla L\|^2$.
    Gd,
}

/// One optimizer setting, run for every seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Name in logs and figures.
    pub label: String,
    /// Step size $h$.
    pub lr: f64,
    /// Steps.
    pub steps: usize,
    /// Minibatch size with random reshuffling; `None`: full batch.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Explicit regulariser.
    #[serde(default = "no_regulariser")]
    pub regulariser: Regulariser,
    /// Block size $n/m$ of the `sgd` regulariser.
    #[serde(default)]
    pub regulariser_batch_size: Option<usize>,
    /// With the `sgd` regulariser: a fresh random partition of the examples into the $m$ blocks
    /// at every step (the paper's "in practice" row shuffles its blocks each step), instead of
    /// fixed consecutive blocks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regulariser_reshuffle: bool,
    /// Evaluate every this many steps instead of `measure.every` (e.g. to evaluate variants
    /// with different step sizes at the same times $t = nh$).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<usize>,
    /// Momentum of the update (`{ kind = "heavy_ball", beta = 0.9 }` or `"nesterov"`, PyTorch's
    /// convention); plain GD or SGD by default. Its stability limit is
    /// [`Momentum::stability_limit`]$/h$, not $2/h$.
    #[serde(default, skip_serializing_if = "is_plain")]
    pub momentum: Momentum,
}

fn is_plain(m: &Momentum) -> bool {
    *m == Momentum::None
}

fn no_regulariser() -> Regulariser {
    Regulariser::None
}

/// A toy experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Name (directory prefix).
    pub name: String,
    /// One line on what it tests.
    #[serde(default)]
    pub description: String,
    /// Seeds of initialisation and minibatch order.
    pub seeds: Vec<u64>,
    /// Data.
    pub data: DataConfig,
    /// Model.
    pub model: ModelConfig,
    /// Measurements.
    pub measure: MeasureConfig,
    /// Optimizer settings.
    pub variants: Vec<Variant>,
}

impl ExperimentConfig {
    /// Parses and validates a TOML config; `origin` names it in errors.
    ///
    /// # Errors
    /// [`Error::BadFile`] for TOML errors and unknown keys (the parser names the key);
    /// [`Error::InvalidParameter`] for impossible values, naming the key.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let config: ExperimentConfig = toml::from_str(text).map_err(|e| Error::bad_file(origin, e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a config file.
    ///
    /// # Errors
    /// As [`ExperimentConfig::from_toml`], and [`Error::Io`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text, path)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the key of the first impossible value.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, problem: String| Err(Error::invalid(key, problem));
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return bad("name", format!("{:?}: use letters, digits, '-' and '_'", self.name));
        }
        if self.seeds.is_empty() {
            return bad("seeds", "at least one seed".into());
        }
        if self.data.train < 2 || self.data.test == 0 {
            return bad("data.train", format!("{} train / {} test examples", self.data.train, self.data.test));
        }
        if self.model.hidden.contains(&0) {
            return bad("model.hidden", "widths must be positive".into());
        }
        if self.model.loss == OutputLoss::BinaryCrossEntropy {
            return bad("model.loss", "10 classes: use softmax_cross_entropy or mean_squared_error".into());
        }
        if self.measure.every == 0 {
            return bad("measure.every", "must be positive".into());
        }
        if self.measure.sharpness_tol.is_nan() || self.measure.sharpness_tol <= 0.0 {
            return bad("measure.sharpness_tol", "must be positive".into());
        }
        if !(self.measure.flow_rtol > 0.0 && self.measure.flow_rtol < 1.0) {
            return bad("measure.flow_rtol", format!("{} is not in (0, 1)", self.measure.flow_rtol));
        }
        if self.measure.modified_flow && !self.measure.gradient_flow {
            return bad("measure.modified_flow", "needs gradient_flow = true".into());
        }
        if let Some(t) = self.measure.flow_until
            && !(t.is_finite() && t > 0.0)
        {
            return bad("measure.flow_until", format!("{t} must be positive"));
        }
        if self.variants.is_empty() {
            return bad("variants", "at least one variant".into());
        }
        for (i, v) in self.variants.iter().enumerate() {
            let key = |field: &str| format!("variants[{i}].{field}");
            if !(v.lr.is_finite() && v.lr > 0.0) {
                return bad(&key("lr"), format!("{} must be positive", v.lr));
            }
            if v.steps == 0 {
                return bad(&key("steps"), "must be positive".into());
            }
            if v.every == Some(0) {
                return bad(&key("every"), "must be positive".into());
            }
            if let Some(b) = v.batch_size
                && (b == 0 || b > self.data.train)
            {
                return bad(&key("batch_size"), format!("{b} is not in 1..={}", self.data.train));
            }
            match (v.regulariser, v.regulariser_batch_size) {
                (Regulariser::Sgd, None) => {
                    return bad(&key("regulariser_batch_size"), "the sgd regulariser needs a block size".into());
                }
                (Regulariser::Sgd, Some(b)) if b == 0 || b > self.data.train => {
                    return bad(&key("regulariser_batch_size"), format!("{b} is not in 1..={}", self.data.train));
                }
                (Regulariser::None | Regulariser::Gd, Some(_)) => {
                    return bad(&key("regulariser_batch_size"), "only for the sgd regulariser".into());
                }
                _ => {}
            }
            if let Momentum::HeavyBall(b) | Momentum::Nesterov(b) = v.momentum
                && !(0.0..1.0).contains(&b)
            {
                return bad(&key("momentum"), format!("beta {b} is not in [0, 1)"));
            }
            if v.regulariser_reshuffle && v.regulariser != Regulariser::Sgd {
                return bad(&key("regulariser_reshuffle"), "only for the sgd regulariser".into());
            }
            if v.regulariser != Regulariser::None && v.batch_size.is_some() {
                return bad(&key("regulariser"), "explicit regularisers are for full-batch variants".into());
            }
        }
        Ok(())
    }

    /// The cache key: SHA-256 of the config, the data actually used and [`RUNNER_VERSION`]
    /// (first 16 hex digits).
    pub fn hash(&self, data_used: &str) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let digest = Sha256::digest(format!("{RUNNER_VERSION}\n{data_used}\n{json}"));
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// One evaluation during training (a line of `log.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// Variant label.
    pub variant: String,
    /// Seed.
    pub seed: u64,
    /// Steps done.
    pub step: usize,
    /// Full training loss (unregularised).
    pub train_loss: f64,
    /// Training accuracy.
    pub train_accuracy: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// $\|\nabla L\|$ of the unregularised training loss.
    pub gradient_norm: f64,
    /// $\lambda_{\max}$ of the unregularised training loss's Hessian (`null` if not tracked).
    pub lambda_max: Option<f64>,
    /// Its Lanczos residual.
    pub lambda_residual: Option<f64>,
    /// $\lambda_{\max}$ of the regularised loss the variant descends (with
    /// `measure.penalised_sharpness`, regularised variants only). Its HVP is a central difference
    /// of the exact penalised gradient for the `sgd` regulariser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_max_penalised: Option<f64>,
    /// Its Lanczos residual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_penalised_residual: Option<f64>,
    /// The iterate against the gradient flow and GD's modified flow (with `measure.flows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowComparison>,
    /// Seconds since the run started.
    pub seconds: f64,
}

/// GD's iterate $\theta_n$ against two flows from the same start $\theta_0$ at time $t = nh$:
/// the gradient flow $\varphi_t$ of $L$ and GD's first-order modified flow $\tilde\varphi_t$
/// of $L + \frac h4\|\nabla L\|^2$. Backward-error analysis predicts
/// $\|\theta_n - \varphi_{nh}\| = O(h)$ and $\|\theta_n - \tilde\varphi_{nh}\| = O(h^2)$ on a
/// fixed time interval, as long as $h\lambda_{\max}$ stays well below 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowComparison {
    /// Flow time $t = nh$.
    pub time: f64,
    /// $\|\theta_n - \varphi_t(\theta_0)\|$.
    pub plain_distance: f64,
    /// $\|\theta_n - \tilde\varphi_t(\theta_0)\|$ (with `measure.modified_flow`).
    pub modified_distance: Option<f64>,
    /// $\|\theta_n - \theta_0\|$: the scale of the distances.
    pub travelled: f64,
    /// Training loss at $\varphi_t(\theta_0)$.
    pub flow_train_loss: f64,
    /// $\lambda_{\max}$ of the Hessian at $\varphi_t(\theta_0)$ (warm-started Lanczos).
    pub flow_lambda_max: f64,
    /// Its Lanczos residual.
    pub flow_lambda_residual: f64,
    /// Integration error bound of the flows: the larger of their summed embedded error
    /// estimates (a distance below it is not resolved).
    pub error_bound: f64,
}

/// The end of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Variant label.
    pub variant: String,
    /// Seed.
    pub seed: u64,
    /// The last evaluation.
    pub last: Evaluation,
    /// Hutch++ estimate of $\mathrm{tr}\,H$ at the end, with its standard error.
    pub trace: Option<(f64, f64)>,
    /// Whether the run diverged (then `last` is the last finite evaluation).
    pub diverged: Option<String>,
    /// Spectral density of the Hessian at the end (with `measure.density`, first seed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<SpectralDensity>,
}

/// Mean and spread over seeds of one variant's final numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantSummary {
    /// Variant label.
    pub variant: String,
    /// (mean, standard error over seeds) of: train loss, train accuracy, test loss, test
    /// accuracy, gradient norm, $\lambda_{\max}$, trace.
    pub train_loss: (f64, f64),
    /// See `train_loss`.
    pub train_accuracy: (f64, f64),
    /// See `train_loss`.
    pub test_loss: (f64, f64),
    /// See `train_loss`.
    pub test_accuracy: (f64, f64),
    /// See `train_loss`.
    pub gradient_norm: (f64, f64),
    /// See `train_loss`.
    pub lambda_max: Option<(f64, f64)>,
    /// See `train_loss`.
    pub trace: Option<(f64, f64)>,
    /// See `train_loss` (`Evaluation::lambda_max_penalised`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_max_penalised: Option<(f64, f64)>,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentResults {
    /// The config.
    pub config: ExperimentConfig,
    /// The cache key.
    pub hash: String,
    /// The data actually used.
    pub data_used: String,
    /// Git commit of the code that ran (`unknown` outside a checkout).
    pub commit: String,
    /// When it finished (UTC, seconds since the epoch).
    pub finished_unix: u64,
    /// Wall time of the whole experiment.
    pub seconds: f64,
    /// Per run.
    pub runs: Vec<RunResult>,
    /// Per variant, over seeds.
    pub summary: Vec<VariantSummary>,
}

/// The data used: train and test sets, and a description of what they are.
fn load_data(config: &DataConfig) -> Result<(Dataset, Dataset, String)> {
    let options = fashion_mnist::LoadOptions::default();
    if config.source == DataSource::FashionMnist && fashion_mnist::available(&options.dir) {
        let load = |split, n| {
            fashion_mnist::load(
                split,
                &fashion_mnist::LoadOptions { subset: Some(n), seed: config.seed, ..options.clone() },
            )
        };
        let train = load(fashion_mnist::Split::Train, config.train)?;
        let test = load(fashion_mnist::Split::Test, config.test)?;
        return Ok((train, test, format!("fashion-mnist ({} train, {} test)", config.train, config.test)));
    }
    let all = data::teacher_student_classes(config.train + config.test, 784, 32, 10, config.seed)?;
    let train = all.select(&(0..config.train).collect::<Vec<_>>());
    let test = all.select(&(config.train..config.train + config.test).collect::<Vec<_>>());
    let what = if config.source == DataSource::FashionMnist {
        "teacher-student stand-in (Fashion-MNIST not installed)"
    } else {
        "teacher-student"
    };
    Ok((train, test, format!("{what} ({} train, {} test)", config.train, config.test)))
}

/// Progress reports of [`run_cached`]: called with (runs done, runs in all, message).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Runs `config` into `results_dir/<name>-<hash>/`, or loads the results there if that
/// directory is complete. Returns the results and whether they came from the cache.
///
/// # Errors
/// [`Error::Io`] for files; errors of the data loaders and solvers. A diverging run is not an
/// error: its result says so.
pub fn run_cached(
    config: &ExperimentConfig,
    results_dir: &Path,
    progress: Progress,
) -> Result<(ExperimentResults, PathBuf, bool)> {
    config.validate()?;
    let (train, test, data_used) = load_data(&config.data)?;
    let hash = config.hash(&data_used);
    let dir = results_dir.join(format!("{}-{hash}", config.name));
    let results_path = dir.join("results.json");
    if let Ok(text) = fs::read_to_string(&results_path) {
        let results: ExperimentResults =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&results_path, e.to_string()))?;
        return Ok((results, dir, true));
    }
    let staging = results_dir.join(format!(".{}-{hash}.partial-{}", config.name, std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let outcome = run_into(config, &train, &test, &data_used, &hash, &staging, progress);
    let results = match outcome {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    fs::rename(&staging, &dir).map_err(|e| Error::io(&dir, e))?;
    Ok((results, dir, false))
}

fn run_into(
    config: &ExperimentConfig,
    train: &Dataset,
    test: &Dataset,
    data_used: &str,
    hash: &str,
    dir: &Path,
    progress: Progress,
) -> Result<ExperimentResults> {
    let started = Instant::now();
    let config_path = dir.join("config.toml");
    let toml = toml::to_string_pretty(config).map_err(|e| Error::io(&config_path, std::io::Error::other(e)))?;
    fs::write(&config_path, toml).map_err(|e| Error::io(&config_path, e))?;
    let spec = NetworkSpec {
        input_dim: train.input_dim(),
        hidden: config.model.hidden.clone(),
        output_dim: 10,
        activation: config.model.activation,
        bias: true,
        loss: config.model.loss,
    };
    let net = Network::new(spec.clone(), train)?;
    let test_net = Network::new(spec, test)?;
    let mut log = String::new();
    let mut runs = Vec::new();
    let total = config.variants.len() * config.seeds.len();
    // One gradient flow per seed (its start), shared by the GD runs that compare against it.
    let mut flows: Vec<Option<GradientFlowCache>> = config
        .seeds
        .iter()
        .map(|&seed| {
            config
                .measure
                .gradient_flow
                .then(|| GradientFlowCache::new(&net, net.initial_parameters(seed), &config.measure, seed))
        })
        .collect();
    for variant in &config.variants {
        for (&seed, flow) in config.seeds.iter().zip(&mut flows) {
            progress(runs.len(), total, &format!("{} / seed {seed}", variant.label));
            let (result, evaluations) = run_one(config, variant, seed, &net, &test_net, train, test, flow.as_mut())?;
            for e in &evaluations {
                log.push_str(&serde_json::to_string(e).map_err(|e| Error::io(dir, std::io::Error::other(e)))?);
                log.push('\n');
            }
            runs.push(result);
        }
    }
    progress(total, total, "done");
    let log_path = dir.join("log.jsonl");
    fs::write(&log_path, log).map_err(|e| Error::io(&log_path, e))?;
    let summary = config.variants.iter().map(|v| summarise(&v.label, &runs)).collect();
    let results = ExperimentResults {
        config: config.clone(),
        hash: hash.to_string(),
        data_used: data_used.to_string(),
        commit: crate::provenance::git_commit(),
        finished_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        seconds: started.elapsed().as_secs_f64(),
        runs,
        summary,
    };
    let path = dir.join("results.json");
    let text = serde_json::to_string_pretty(&results).map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
    fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    Ok(results)
}

fn summarise(label: &str, runs: &[RunResult]) -> VariantSummary {
    let mine: Vec<&RunResult> = runs.iter().filter(|r| r.variant == label).collect();
    let stat = |f: &dyn Fn(&RunResult) -> f64| mean_and_stderr(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
    let optional = |f: &dyn Fn(&RunResult) -> Option<f64>| {
        let values: Option<Vec<f64>> = mine.iter().map(|r| f(r)).collect();
        values.map(|v| mean_and_stderr(&v))
    };
    VariantSummary {
        variant: label.to_string(),
        train_loss: stat(&|r| r.last.train_loss),
        train_accuracy: stat(&|r| r.last.train_accuracy),
        test_loss: stat(&|r| r.last.test_loss),
        test_accuracy: stat(&|r| r.last.test_accuracy),
        gradient_norm: stat(&|r| r.last.gradient_norm),
        lambda_max: optional(&|r| r.last.lambda_max),
        trace: optional(&|r| r.trace.map(|t| t.0)),
        lambda_max_penalised: optional(&|r| r.last.lambda_max_penalised),
    }
}

/// Reads `log.jsonl` of a run directory.
///
/// # Errors
/// [`Error::Io`]; [`Error::BadFile`] naming the line that does not parse.
pub fn read_log(dir: &Path) -> Result<Vec<Evaluation>> {
    let path = dir.join("log.jsonl");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| Error::bad_file(&path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// The evaluations of one variant, averaged over seeds at each step: (step, mean of `pick`).
pub fn mean_curve(log: &[Evaluation], variant: &str, pick: fn(&Evaluation) -> Option<f64>) -> Vec<(f64, f64)> {
    let mut steps: Vec<usize> = log.iter().filter(|e| e.variant == variant).map(|e| e.step).collect();
    steps.sort_unstable();
    steps.dedup();
    steps
        .into_iter()
        .filter_map(|s| {
            let values: Vec<f64> =
                log.iter().filter(|e| e.variant == variant && e.step == s).filter_map(pick).collect();
            (!values.is_empty()).then(|| (s as f64, values.iter().sum::<f64>() / values.len() as f64))
        })
        .collect()
}
