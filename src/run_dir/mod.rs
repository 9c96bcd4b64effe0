//! The run-directory format of `fullbatch train`, readable without burn (figures, analyses):
//!
//! | file | content | type |
//! |---|---|---|
//! | `config.toml` | the resolved configuration | [`config::RunConfig`], [`stored_config`] |
//! | `run.json` | name, seed, commit, device, backend, sizes | [`RunInfo`], [`read_run_info`] |
//! | `log.jsonl` | one line per step (per epoch in SGD mode) | [`LogEntry`], [`read_log`] |
//! | `segments.jsonl` | one line per process that worked on the run | [`SegmentRecord`], [`read_segments`] |
//! | `checkpoints/latest` | the name of the newest checkpoint, `step-NNNNNN` | [`latest_checkpoint`] |
//!
//! The training loop that writes these is `deep::run` (feature `burn`).

pub mod config;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};
use config::RunConfig;

/// One line of `segments.jsonl`: the part of a run one process did (a fresh start or a resume).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Steps (epochs) done when the process started.
    pub start_step: usize,
    /// Steps (epochs) done when it ended.
    pub end_step: usize,
    /// How it ended: `finished`, `stopped` (stop request or `--max-steps`), or `error: ...`.
    pub outcome: String,
    /// The backend.
    pub backend: String,
    /// The device description.
    pub device: String,
    /// The git commit of the binary's source (see [`crate::provenance::git_commit`]).
    pub git_commit: String,
    /// Seconds since the Unix epoch at the process's start of work on the run.
    pub started_unix_s: u64,
    /// Seconds of the first step of the process (evaluation excluded): the warm-up, which on a
    /// GPU includes compiling or loading the kernels.
    pub first_step_s: Option<f64>,
    /// Seconds of the first evaluation of the process (its kernels compile then).
    pub first_eval_s: Option<f64>,
    /// The median `step_s` of the later steps: the steady state.
    pub steady_step_s: Option<f64>,
    /// The number of later steps behind `steady_step_s`.
    pub steady_steps: usize,
    /// The kernel-cache directory, if the backend compiles kernels.
    pub kernel_cache: Option<PathBuf>,
    /// Kernels in the cache when the process started.
    pub kernels_cached_before: Option<usize>,
    /// Kernels the process compiled (added to the cache) during its first step and evaluation.
    pub kernels_compiled_warmup: Option<usize>,
    /// Kernels the process compiled in all.
    pub kernels_compiled: Option<usize>,
}

/// Reads `segments.jsonl` of a run directory (empty when the file does not exist).
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::BadFile`] naming the line that is not a
/// [`SegmentRecord`].
pub fn read_segments(dir: &Path) -> Result<Vec<SegmentRecord>> {
    let path = dir.join("segments.jsonl");
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(read_jsonl(&path)?.into_iter().map(|(_, record)| record).collect())
}

/// Reads `log.jsonl` of a run directory: its lines in file order.
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::BadFile`] naming the line that is not a
/// [`LogEntry`] or holds an accuracy outside $[0, 1]$ (accuracies are stored as fractions).
pub fn read_log(dir: &Path) -> Result<Vec<LogEntry>> {
    let path = dir.join("log.jsonl");
    read_jsonl::<LogEntry>(&path)?
        .into_iter()
        .map(|(line, entry)| {
            let accuracies = [
                ("train_acc", entry.train_acc),
                ("eval_train_acc", entry.eval_train_acc),
                ("test_acc", entry.test_acc),
            ];
            for (field, value) in accuracies {
                if let Some(a) = value.filter(|a| !(0.0..=1.0).contains(a)) {
                    return Err(Error::bad_file(
                        &path,
                        format!("line {line}: {field} {a} is not a fraction in [0, 1]"),
                    ));
                }
            }
            Ok(entry)
        })
        .collect()
}

/// The run directories under `dir`: `dir` itself if it holds `run.json`, else each immediate
/// subdirectory that does, sorted by path; a missing `dir` has none.
///
/// # Errors
/// [`Error::Io`] if `dir` exists but cannot be listed.
pub fn find_run_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join("run.json").is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() && path.join("run.json").is_file() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Reads `run.json` of a run directory.
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::BadFile`] naming the file if it is not a
/// [`RunInfo`].
pub fn read_run_info(dir: &Path) -> Result<RunInfo> {
    let path = dir.join("run.json");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, e.to_string()))
}

/// The non-empty lines of a JSONL file, each with its 1-based line number.
fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<(usize, T)>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// One line of `log.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Updates done (full batch) or epochs done (SGD) after this step: 1 for the first line.
    pub step: usize,
    /// The learning rate of this step's update(s).
    pub lr: f64,
    /// Training loss: the mean block loss before the update (full batch), or the mean minibatch
    /// loss over the epoch (SGD); BatchNorm in training mode, on the augmented images.
    pub train_loss: f64,
    /// The mean minibatch accuracy over the epoch (SGD only).
    pub train_acc: Option<f64>,
    /// The global norm of the gradient before clipping (full batch: of the regularised full
    /// gradient; SGD: the mean over the epoch's minibatches).
    pub grad_norm: f64,
    /// The mean squared norm of the unregularised block gradients, $\frac1K\sum_k\lVert\nabla L_k\rVert^2$
    /// (full batch); SGD: of the epoch's minibatch gradients before clipping,
    /// $\frac1m\sum_k\lVert g_k\rVert^2$, each at the iterate it was taken at.
    pub mean_block_grad_sq_norm: Option<f64>,
    /// The regulariser's value as the update implements it, $\alpha\frac{\eta_t}{8}\frac1K\sum_k\lVert\nabla L_k\rVert^2$
    /// (the official code logs twice this, with $\eta_t/4$); `None` without regulariser.
    pub regulariser: Option<f64>,
    /// The factor clipping applied (1 if not clipped; SGD: the mean over minibatches).
    pub clip_factor: f64,
    /// Loss of the inference model (running BatchNorm statistics) on the un-augmented training
    /// images, at evaluation steps.
    pub eval_train_loss: Option<f64>,
    /// Accuracy of the same.
    pub eval_train_acc: Option<f64>,
    /// Loss of the inference model on the test images, at evaluation steps.
    pub test_loss: Option<f64>,
    /// Accuracy of the same.
    pub test_acc: Option<f64>,
    /// Seconds since the run started (all segments of a resumed run together).
    pub wall_s: f64,
    /// Seconds of this step (evaluation excluded).
    pub step_s: f64,
    /// Training images processed per second in this step (gradient images / `step_s`).
    pub images_per_s: f64,
    /// $\lambda_{\max}$ of the Hessian of the training loss after this step's update, at
    /// sharpness steps (`[sharpness]`).
    pub lambda_max: Option<f64>,
    /// The true residual $\lVert Hv - \lambda v\rVert$ of its unit eigenvector.
    pub lambda_residual: Option<f64>,
    /// Hessian-vector products the measurement used (two full-batch gradients each).
    pub lambda_hvps: Option<usize>,
    /// Seconds of the measurement (not in `step_s`).
    pub lambda_s: Option<f64>,
    /// $(\lambda_{\max} + w)\,\eta_t / \text{limit}$: the sharpness against the optimizer's
    /// stability edge (`OptimizerConfig::fraction_of_stability_edge`; 1 is the edge, which is
    /// $1.357/\eta$ for Nesterov at 0.9, not $2/\eta$), at sharpness steps, with this step's lr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_edge_fraction: Option<f64>,
    /// Whether the measurement met its tolerance; `false`: `lambda_max` is the best Ritz value
    /// within the budget, an estimate, not certified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_converged: Option<bool>,
    /// The estimated error of the finite-difference operator along the eigenvector,
    /// $\lVert (H_\varepsilon - H)v\rVert$ (`NetworkSharpness::operator_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_operator_error: Option<f64>,
    /// The interval that contains an eigenvalue of the exact Hessian, $\lambda_{\max} \pm$
    /// (residual + operator error), as `[lower, upper]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_interval: Option<[f64; 2]>,
    /// $\lVert\bar g\rVert^2$, the squared norm of the mean of the unregularised block gradients
    /// (full batch: $\bar g = \nabla L$ on this step's images); SGD: of the mean of the epoch's
    /// minibatch gradients before clipping (taken along the epoch, at moving iterates). Weight
    /// decay's gradient is not included. The input of the regulariser ledger
    /// ([`RegulariserLedger`]), whose terms follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_grad_sq_norm: Option<f64>,
    /// [`RegulariserLedger::implicit_gd`]: $\frac{\eta_t}4\lVert\bar g\rVert^2$.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_gd: Option<f64>,
    /// [`RegulariserLedger::implicit_minibatch_variance`]:
    /// $\frac{\eta_t}{4m}\sum_k\lVert g_k - \bar g\rVert^2$.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_minibatch_variance: Option<f64>,
    /// [`RegulariserLedger::implicit_momentum`]: $c(\beta)\,\eta_t\lVert\bar g\rVert^2$.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_momentum: Option<f64>,
}

/// The regulariser ledger of one full-batch step or SGD epoch: the implicit gradient-norm
/// regularisers that backward-error analysis attributes to the optimizer, beside the explicit
/// one, all computed from two gradient norms the step measured anyway.
///
/// With $K$ blocks (full batch; SGD: $m$ minibatches) of gradients $g_k$, their mean $\bar g$,
/// learning rate $\eta$ and the optimizer's coefficient $c(\beta)$
/// ([`crate::optim::Momentum::modified_loss_coefficient`]):
/// - `implicit_gd` $= \frac\eta4\lVert\bar g\rVert^2$: GD's own regulariser (the flow of
///   $L + \frac h4\lVert\nabla L\rVert^2$);
/// - `implicit_minibatch_variance` $= \frac{\eta}{4K}\sum_k\lVert g_k - \bar g\rVert^2 =
///   \frac\eta4\big(\frac1K\sum_k\lVert g_k\rVert^2 - \lVert\bar g\rVert^2\big)$: what SGD with
///   these blocks as minibatches adds on top (docs/theory.md, section 3); for a full-batch run
///   it is the term the explicit regulariser stands in for. It can come out slightly negative
///   from rounding when the blocks agree; it is logged as computed;
/// - `implicit_momentum` $= c(\beta)\,\eta\lVert\bar g\rVert^2$: GD's term with the momentum
///   coefficient (Nesterov at $\beta = 0.9$: $c = 43$, i.e. 172 times `implicit_gd`); it
///   equals `implicit_gd` without momentum. The minibatch-variance part's momentum coefficient
///   is not derived here, so it is not scaled;
/// - `explicit` $= \alpha\frac\eta8\frac1K\sum_k\lVert g_k\rVert^2$: the paper's regulariser
///   as the update implements it ([`LogEntry::regulariser`]), when `alpha` is given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegulariserLedger {
    /// $\lVert\bar g\rVert^2$.
    pub mean_grad_sq_norm: f64,
    /// $\frac1K\sum_k\lVert g_k\rVert^2$.
    pub mean_block_grad_sq_norm: f64,
    /// $\frac\eta4\lVert\bar g\rVert^2$.
    pub implicit_gd: f64,
    /// $\frac\eta4\big(\frac1K\sum_k\lVert g_k\rVert^2 - \lVert\bar g\rVert^2\big)$.
    pub implicit_minibatch_variance: f64,
    /// $c(\beta)\,\eta\lVert\bar g\rVert^2$.
    pub implicit_momentum: f64,
    /// $\alpha\frac\eta8\frac1K\sum_k\lVert g_k\rVert^2$, with a regulariser.
    pub explicit: Option<f64>,
}

impl RegulariserLedger {
    /// The ledger from the learning rate `lr`, the optimizer's `momentum`, $\lVert\bar g\rVert^2$
    /// (`mean_grad_sq_norm`), $\frac1K\sum_k\lVert g_k\rVert^2$ (`mean_block_grad_sq_norm`) and the
    /// explicit regulariser's strength `alpha`, if any.
    pub fn new(
        lr: f64,
        momentum: crate::optim::Momentum,
        mean_grad_sq_norm: f64,
        mean_block_grad_sq_norm: f64,
        alpha: Option<f64>,
    ) -> Self {
        RegulariserLedger {
            mean_grad_sq_norm,
            mean_block_grad_sq_norm,
            implicit_gd: lr / 4.0 * mean_grad_sq_norm,
            implicit_minibatch_variance: lr / 4.0 * (mean_block_grad_sq_norm - mean_grad_sq_norm),
            implicit_momentum: momentum.modified_loss_coefficient() * lr * mean_grad_sq_norm,
            explicit: alpha.map(|a| a * lr / 8.0 * mean_block_grad_sq_norm),
        }
    }

    /// `entry` with the ledger's fields, its two norms and the explicit regulariser filled in.
    pub fn record(self, entry: LogEntry) -> LogEntry {
        LogEntry {
            mean_grad_sq_norm: Some(self.mean_grad_sq_norm),
            mean_block_grad_sq_norm: Some(self.mean_block_grad_sq_norm),
            implicit_gd: Some(self.implicit_gd),
            implicit_minibatch_variance: Some(self.implicit_minibatch_variance),
            implicit_momentum: Some(self.implicit_momentum),
            regulariser: self.explicit,
            ..entry
        }
    }
}

/// The fields of [`LogEntry`] that depend on time, not on the computation.
pub const WALL_TIME_FIELDS: [&str; 4] = ["wall_s", "step_s", "images_per_s", "lambda_s"];

/// What `run.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// The configuration's name.
    pub name: String,
    /// The run seed.
    pub seed: u64,
    /// `git rev-parse HEAD` (with `-dirty` if the tree has changes), `FULLBATCH_GIT_COMMIT`, or
    /// `unknown`.
    pub git_commit: String,
    /// The device description.
    pub device: String,
    /// The backend.
    pub backend: String,
    /// The crate version.
    pub version: String,
    /// Training images per step (after subsets and fixed copies).
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Trainable parameters of the model.
    pub parameters: usize,
    /// Seconds since the Unix epoch when the run (first segment) started.
    pub started_unix_s: u64,
}

/// Reads a [`RunConfig`] stored in a run directory (`config.toml`).
///
/// # Errors
/// As [`RunConfig::load`].
pub fn stored_config(dir: &Path) -> Result<RunConfig> {
    RunConfig::load(&dir.join("config.toml"))
}

/// The newest checkpoint of a run directory and its step, if any.
///
/// # Errors
/// [`Error::Io`] if `checkpoints/latest` exists but cannot be read; [`Error::BadFile`] if it
/// names no checkpoint.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<(PathBuf, usize)>> {
    let latest = dir.join("checkpoints").join("latest");
    if !latest.exists() {
        return Ok(None);
    }
    let name = fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
    let name = name.trim();
    let step = name
        .strip_prefix("step-")
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or_else(|| Error::bad_file(&latest, format!("`{name}` is not a checkpoint name (step-NNNNNN)")))?;
    let path = dir.join("checkpoints").join(name);
    if !path.is_dir() {
        return Err(Error::bad_file(&latest, format!("names {} which does not exist", path.display())));
    }
    Ok(Some((path, step)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::Momentum;

    /// Two blocks with gradients $g_1 = (3, 0)$, $g_2 = (1, 2)$: $\bar g = (2, 1)$,
    /// $\lVert\bar g\rVert^2 = 5$, $\frac12(9 + 5) = 7$, $\frac12\sum_k\lVert g_k - \bar g\rVert^2 = \frac12(2 + 2) = 2$.
    #[test]
    fn ledger_matches_a_hand_computation() {
        let ledger = RegulariserLedger::new(0.4, Momentum::Nesterov(0.9), 5.0, 7.0, Some(0.5));
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        assert!(close(ledger.implicit_gd, 0.4 / 4.0 * 5.0));
        assert!(close(ledger.implicit_minibatch_variance, 0.4 / 4.0 * 2.0));
        // Nesterov at 0.9: c = (1 - 0.9 + 2 * 0.81) / (4 * 0.01) = 43.
        assert!(close(ledger.implicit_momentum, 43.0 * 0.4 * 5.0));
        assert!(close(ledger.explicit.unwrap_or(f64::NAN), 0.5 * 0.4 / 8.0 * 7.0));
        let plain = RegulariserLedger::new(0.4, Momentum::None, 5.0, 7.0, None);
        assert_eq!(plain.implicit_momentum, plain.implicit_gd);
        assert_eq!(plain.explicit, None);
        let entry = plain.record(LogEntry { step: 3, ..LogEntry::default() });
        assert_eq!((entry.step, entry.mean_grad_sq_norm, entry.mean_block_grad_sq_norm), (3, Some(5.0), Some(7.0)));
        assert_eq!(entry.implicit_minibatch_variance, Some(plain.implicit_minibatch_variance));
    }

    /// Logs written before the ledger existed still read: its fields are optional.
    #[test]
    fn log_lines_without_ledger_fields_read() {
        let line = r#"{"step":1,"lr":0.1,"train_loss":2.3,"train_acc":null,"grad_norm":1.0,"mean_block_grad_sq_norm":2.0,"regulariser":null,"clip_factor":1.0,"eval_train_loss":null,"eval_train_acc":null,"test_loss":null,"test_acc":null,"wall_s":1.0,"step_s":1.0,"images_per_s":10.0,"lambda_max":null,"lambda_residual":null,"lambda_hvps":null,"lambda_s":null}"#;
        let entry: LogEntry = serde_json::from_str(line).expect("an old log line");
        assert_eq!((entry.mean_grad_sq_norm, entry.implicit_gd), (None, None));
    }
}
