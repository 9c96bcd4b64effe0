//! The CIFAR-10 results table of Geiping et al. (ICLR 2022) as a chart: the paper's validation
//! accuracies beside ours, read from the run directories that `fullbatch train` writes.
//!
//! A run directory holds `config.toml` (the resolved configuration), `run.json` (name, seed,
//! `git_commit`, ...) and `log.jsonl` (one JSON object per logged step, with `step` and, at
//! evaluation steps, `test_acc` as a fraction in $[0, 1]$). This module reads them through the
//! typed run-directory format of [`crate::run_dir`], which builds without the `burn` feature.

use std::path::{Path, PathBuf};

use crate::plot::{Figure, Legend, Mark, Panel, Scale, Series};
use crate::run_dir;
use crate::{Error, Result};

/// One row of the paper's table, keyed by the name of its configuration in
/// `experiments/cifar10/`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperRow {
    /// The configuration's `name` (`experiments/cifar10/<config>.toml`).
    pub config: &'static str,
    /// The axis label: the name and the paper's number (or that none is used here).
    pub label: &'static str,
    /// Whether the row trains with data augmentation.
    pub augmentation: bool,
    /// The paper's validation accuracy in %, where this project has checked it.
    pub accuracy: Option<f64>,
}

const fn row(config: &'static str, label: &'static str, augmentation: bool, accuracy: Option<f64>) -> PaperRow {
    PaperRow { config, label, augmentation, accuracy }
}

/// The paper's ResNet-18 / CIFAR-10 validation accuracies (%), last evaluation, one entry per
/// CIFAR-10 configuration of `experiments/cifar10/`.
///
/// Numbers: J. Geiping et al., "Stochastic Training is Not Necessary for Generalization" (ICLR
/// 2022, arXiv 2109.14119), ResNet-18 on CIFAR-10, validation accuracy %: SGD baseline 95.70 /
/// without augmentation 84.32; naive full batch 75.42; full batch, longer training + warmup
/// 87.36; full batch + clipping + regulariser + 32-sample BN/blocks 95.67 / without augmentation
/// 89.17. The last row's settings (clipping, the regulariser, blocks of 32) are those of "FB
/// strong reg" in the official code's configurations, i.e. `fb5-strong-reg`. The paper's
/// figures for "FB clipped", "FB regularized" and "FB in practice" have not been checked here,
/// so those rows, the other rows without augmentation and the fixed-augmentation rows have no
/// number here.
pub const PAPER_ROWS: [PaperRow; 16] = [
    row("sgd", "sgd  (paper 95.70)", true, Some(95.70)),
    row("sgd-noaug", "sgd-noaug  (paper 84.32)", false, Some(84.32)),
    row("fb1-naive", "fb1-naive  (paper 75.42)", true, Some(75.42)),
    row("fb1-naive-noaug", "fb1-naive-noaug  (no paper number)", false, None),
    row("fb2-longer", "fb2-longer  (paper 87.36)", true, Some(87.36)),
    row("fb2-longer-noaug", "fb2-longer-noaug  (no paper number)", false, None),
    row("fb3-clip", "fb3-clip  (paper number not checked)", true, None),
    row("fb3-clip-noaug", "fb3-clip-noaug  (no paper number)", false, None),
    row("fb4-reg", "fb4-reg  (paper number not checked)", true, None),
    row("fb4-reg-noaug", "fb4-reg-noaug  (no paper number)", false, None),
    row("fb5-strong-reg", "fb5-strong-reg  (paper 95.67)", true, Some(95.67)),
    row("fb5-strong-reg-noaug", "fb5-strong-reg-noaug  (paper 89.17)", false, Some(89.17)),
    row("fb6-in-practice", "fb6-in-practice  (paper number not checked)", true, None),
    row("fb6-in-practice-noaug", "fb6-in-practice-noaug  (no paper number)", false, None),
    row("fb6-in-practice-fixed10", "fb6-in-practice-fixed10  (paper number not checked)", true, None),
    row("fb6-in-practice-fixed40", "fb6-in-practice-fixed40  (paper number not checked)", true, None),
];

/// The first panel's categories: the labels of [`PAPER_ROWS`], in order.
static PAPER_AXIS: [&str; PAPER_ROWS.len()] = {
    let mut labels = [""; PAPER_ROWS.len()];
    let mut i = 0;
    while i < PAPER_ROWS.len() {
        labels[i] = PAPER_ROWS[i].label;
        i += 1;
    }
    labels
};

/// The scaled protocol (`experiments/scaled/`), the small configurations of `experiments/cifar10/`
/// (other data, smaller networks), and a last category for runs of any other configuration: the
/// categories of the figure's second panel.
pub const OTHER_CONFIGS: [&str; 10] = [
    "scaled-sgd",
    "scaled-fb1-naive",
    "scaled-fb2-longer",
    "scaled-fb4-reg",
    "small-synthetic-fb",
    "small-synthetic-sgd",
    "small-fashion-mnist-fb",
    "small-fashion-mnist-sgd",
    "gpu-smoke",
    "other configuration",
];

/// What the figure (and the reproduction report) needs from one run directory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CifarRun {
    /// The run directory.
    pub dir: PathBuf,
    /// The configuration's `name` (from `config.toml`).
    pub config: String,
    /// The run's seed (from `config.toml`).
    pub seed: u64,
    /// The data set: `cifar10`, `fashion-mnist` or `synthetic`.
    pub dataset: String,
    /// `data.train_subset`, when the run trains on a subset.
    pub train_subset: Option<usize>,
    /// `data.test_subset`, when the run evaluates on a subset.
    pub test_subset: Option<usize>,
    /// `augmentation.enabled`.
    pub augmentation: bool,
    /// `augmentation.fixed_copies`.
    pub fixed_copies: Option<usize>,
    /// The `step` of the last log line (0 for an empty log).
    pub steps_done: usize,
    /// The configured total: `mode.full_batch.steps` or `mode.sgd.epochs`.
    pub steps_planned: usize,
    /// The last logged `test_acc`, in % (the log stores a fraction).
    pub last_test_acc: Option<f64>,
    /// The step of that evaluation.
    pub last_eval_step: Option<usize>,
    /// `git_commit` from `run.json`.
    pub commit: String,
}

impl CifarRun {
    /// Whether every planned step is done.
    pub fn finished(&self) -> bool {
        self.steps_done >= self.steps_planned
    }

    /// Whether the run can stand beside the paper's number: full CIFAR-10 (no subsets), a
    /// configuration with a row in [`PAPER_ROWS`] whose augmentation setting it matches.
    pub fn comparable(&self) -> bool {
        self.dataset == "cifar10"
            && self.train_subset.is_none()
            && self.test_subset.is_none()
            && paper_row(&self.config).is_some_and(|(_, r)| r.augmentation == self.augmentation)
    }
}

/// The row of [`PAPER_ROWS`] for a configuration name.
pub fn paper_row(config: &str) -> Option<(usize, &'static PaperRow)> {
    PAPER_ROWS.iter().enumerate().find(|(_, r)| r.config == config)
}

/// Reads the run in `dir`; `dir` must hold `run.json`. The files are read through the
/// run-directory types of [`crate::run_dir`].
///
/// # Errors
/// [`Error::Io`] for a missing or unreadable file; [`Error::BadFile`] naming the file (and for
/// `log.jsonl` the line) whose contents are not in the run-directory format.
pub fn read_cifar_run(dir: &Path) -> Result<CifarRun> {
    let info = run_dir::read_run_info(dir)?;
    let config_path = dir.join("config.toml");
    let config = run_dir::stored_config(dir).map_err(|e| match e {
        Error::InvalidParameter { field, problem } => Error::bad_file(&config_path, format!("{field}: {problem}")),
        e => e,
    })?;
    let log = run_dir::read_log(dir)?;
    let steps_done = log.iter().map(|e| e.step).max().unwrap_or(0);
    let last_eval = log.iter().rev().find_map(|e| Some((e.step, e.test_acc?)));
    Ok(CifarRun {
        dir: dir.to_path_buf(),
        config: config.name.clone(),
        seed: config.seed,
        dataset: config.data.dataset.name().to_string(),
        train_subset: config.data.train_subset,
        test_subset: config.data.test_subset,
        augmentation: config.augmentation.enabled,
        fixed_copies: config.augmentation.fixed_copies,
        steps_done,
        steps_planned: config.total_steps(),
        last_test_acc: last_eval.map(|(_, acc)| 100.0 * acc),
        last_eval_step: last_eval.map(|(step, _)| step),
        commit: info.git_commit,
    })
}

/// The runs under `dir`: `dir` itself if it is a run directory (it holds `run.json`), else
/// each immediate subdirectory that is one, sorted by path. Subdirectories without `run.json`
/// are skipped; a missing `dir` has no runs.
///
/// # Errors
/// As [`read_cifar_run`] for a directory that holds `run.json` but not a readable run (a
/// malformed `log.jsonl` names the file and the line); [`Error::Io`] if `dir` cannot be listed.
pub fn collect_cifar_runs(dir: &Path) -> Result<Vec<CifarRun>> {
    run_dir::find_run_dirs(dir)?.iter().map(|d| read_cifar_run(d)).collect()
}

/// How a run is described in the legend.
fn run_label(run: &CifarRun) -> String {
    let acc = run.last_test_acc.map_or_else(|| "no evaluation yet".into(), |a| format!("{a:.2}%"));
    let progress = if run.finished() {
        format!("{} steps", run.steps_done)
    } else {
        format!("UNFINISHED: step {} of {}", run.steps_done, run.steps_planned)
    };
    let commit: String = run.commit.chars().take(12).collect();
    format!("ours: {} — {acc}, {progress}, {commit}", run.dir.display())
}

/// How a non-comparable run's data is described.
fn data_label(run: &CifarRun) -> String {
    let mut s = run.dataset.clone();
    if let Some(n) = run.train_subset {
        s.push_str(&format!(", {n} training images"));
    }
    if let Some(n) = run.test_subset {
        s.push_str(&format!(", {n} test images"));
    }
    s.push_str(if run.augmentation { ", aug." } else { ", no aug." });
    s
}

/// Joins `names` into note lines of at most about `width` characters, the first prefixed.
fn note_lines(prefix: &str, names: &[&str], width: usize) -> Vec<Series> {
    let mut lines = Vec::new();
    let mut line = prefix.to_string();
    for (i, name) in names.iter().enumerate() {
        let piece = if i + 1 < names.len() { format!("{name}, ") } else { name.to_string() };
        if line.chars().count() + piece.chars().count() > width && line.len() > prefix.len() {
            lines.push(Series::note(line.trim_end().to_string()));
            line = "    ".into();
        }
        line.push_str(&piece);
    }
    lines.push(Series::note(line));
    lines
}

/// The paper's table beside our runs.
///
/// First panel: one row per configuration of [`PAPER_ROWS`] (top to bottom, the paper's number
/// in the row's label), validation accuracy (%) on the x axis: the paper's value (black) and
/// each of our comparable runs ([`CifarRun::comparable`]: full CIFAR-10, same augmentation), at
/// its last evaluation, labelled with its run directory, accuracy, progress (unfinished runs
/// say so) and commit. A note lists the rows without a run ("not run"), or says that no runs of
/// ours were found.
///
/// Second panel, only when there are such runs: runs on other data or subsets (the small
/// synthetic / Fashion-MNIST configurations, or configurations without a paper row), each
/// labelled with its data: not comparable with the paper's numbers.
pub fn cifar_results_figure(runs: &[CifarRun]) -> Figure {
    let palette = [0usize, 1, 2, 3, 4, 5];
    let mut main = vec![Series {
        label: "paper (Geiping et al., ICLR 2022)".into(),
        points: PAPER_ROWS.iter().enumerate().filter_map(|(i, r)| Some((r.accuracy?, i as f64))).collect(),
        color: 7,
        mark: Mark::Points,
    }];
    let (comparable, other): (Vec<&CifarRun>, Vec<&CifarRun>) = runs.iter().partition(|r| r.comparable());
    for (k, run) in comparable.iter().enumerate() {
        let Some((i, _)) = paper_row(&run.config) else { continue };
        main.push(Series {
            label: run_label(run),
            points: run.last_test_acc.map(|a| (a, i as f64)).into_iter().collect(),
            color: palette[k % palette.len()],
            mark: Mark::Points,
        });
    }
    let not_run: Vec<&str> =
        PAPER_ROWS.iter().filter(|r| !comparable.iter().any(|c| c.config == r.config)).map(|r| r.config).collect();
    if comparable.is_empty() {
        main.push(Series::note("no runs of ours found (fullbatch train writes runs/<config>/): every row not run"));
    } else if !not_run.is_empty() {
        main.extend(note_lines("not run: ", &not_run, 70));
    }
    let rows_run = PAPER_ROWS.len() - not_run.len();
    let mut panels = vec![Panel {
        title: format!("CIFAR-10, ResNet-18: paper vs ours ({rows_run} of {} rows run)", PAPER_ROWS.len()),
        x_label: "validation accuracy (%), last evaluation".into(),
        y_label: "configuration (experiments/cifar10/)".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Categories(&PAPER_AXIS),
        series: main,
        legend: Legend::Below,
    }];
    if !other.is_empty() {
        let last = OTHER_CONFIGS.len() - 1;
        let series = other
            .iter()
            .enumerate()
            .map(|(k, run)| {
                let i = OTHER_CONFIGS[..last].iter().position(|c| *c == run.config).unwrap_or(last);
                Series {
                    label: format!("{} [{}: {}]", run_label(run), run.config, data_label(run)),
                    points: run.last_test_acc.map(|a| (a, i as f64)).into_iter().collect(),
                    color: palette[k % palette.len()],
                    mark: Mark::Points,
                }
            })
            .collect();
        panels.push(Panel {
            title: "other data or settings: not comparable with the paper".into(),
            x_label: "test accuracy (%), last evaluation".into(),
            y_label: "configuration".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Categories(&OTHER_CONFIGS),
            series,
            legend: Legend::Below,
        });
    }
    Figure {
        title: "Stochastic training is not necessary for generalization: the CIFAR-10 table".into(),
        columns: 1,
        panel_size: (1200, 760),
        panels,
    }
}
