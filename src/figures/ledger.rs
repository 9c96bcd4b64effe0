//! The regulariser ledger along `fullbatch train` runs (full batch and SGD): the implicit
//! gradient-norm regularisers that backward-error analysis attributes to the optimizer, beside
//! the paper's explicit one, from the fields [`crate::run_dir::RegulariserLedger`] writes into
//! `log.jsonl`.

use std::path::{Path, PathBuf};

use crate::optim::Momentum;
use crate::plot::{Figure, Legend, Mark, Panel, Scale, Series};
use crate::run_dir::config::Mode;
use crate::run_dir::{self, LogEntry};
use crate::{Error, Result};

/// One run's ledger, as the figure needs it.
#[derive(Debug, Clone)]
pub struct LedgerRun {
    /// The run directory.
    pub dir: PathBuf,
    /// The configuration's name.
    pub config: String,
    /// Whether the run is minibatch SGD (one log line per epoch) rather than full batch.
    pub sgd: bool,
    /// Blocks per full-batch step, or minibatches per SGD epoch: the $K$ of the ledger.
    pub blocks: usize,
    /// The optimizer's momentum.
    pub momentum: Momentum,
    /// The log lines that carry the ledger.
    pub log: Vec<LogEntry>,
}

/// Reads the ledger of the run in `dir` (a directory holding `run.json`): `None` when its log
/// has no ledger fields (a run written before the ledger existed).
///
/// # Errors
/// As [`run_dir::read_run_info`], [`run_dir::stored_config`] and [`run_dir::read_log`] (the file,
/// and for `log.jsonl` the line, are named).
pub fn read_ledger_run(dir: &Path) -> Result<Option<LedgerRun>> {
    let info = run_dir::read_run_info(dir)?;
    let config = run_dir::stored_config(dir)?;
    let log: Vec<LogEntry> = run_dir::read_log(dir)?.into_iter().filter(|e| e.implicit_gd.is_some()).collect();
    if log.is_empty() {
        return Ok(None);
    }
    let (sgd, size) = match config.mode {
        Mode::Sgd { batch_size, .. } => (true, batch_size),
        Mode::FullBatch { block_size, .. } => (false, block_size),
    };
    if size == 0 {
        return Err(Error::bad_file(dir.join("config.toml"), "block or batch size 0"));
    }
    Ok(Some(LedgerRun {
        dir: dir.to_path_buf(),
        config: config.name.clone(),
        sgd,
        blocks: info.train_images / size,
        momentum: config.optimizer.momentum_kind(),
        log,
    }))
}

/// The runs with a ledger under each of `dirs` (each a run directory or a directory of them,
/// as [`run_dir::find_run_dirs`]), in order; missing directories have none.
///
/// # Errors
/// As [`read_ledger_run`], and [`Error::Io`] for a directory that cannot be listed.
pub fn collect_ledger_runs(dirs: &[PathBuf]) -> Result<Vec<LedgerRun>> {
    let mut runs = Vec::new();
    for dir in dirs {
        for run in run_dir::find_run_dirs(dir)? {
            runs.extend(read_ledger_run(&run)?);
        }
    }
    Ok(runs)
}

/// The curve of `pick` against the step (epoch for SGD), positive values only (log axis).
fn curve(run: &LedgerRun, pick: fn(&LogEntry) -> Option<f64>) -> Vec<(f64, f64)> {
    run.log.iter().filter_map(|e| Some((e.step as f64, pick(e)?))).filter(|(_, y)| *y > 0.0).collect()
}

/// How the momentum is named in a legend.
fn momentum_name(momentum: Momentum) -> String {
    match momentum {
        Momentum::None => "no momentum".into(),
        Momentum::HeavyBall(b) => format!("heavy ball β = {b}"),
        Momentum::Nesterov(b) => format!("Nesterov β = {b}"),
    }
}

/// The ledger figure: one panel per run with, against the step (epoch for SGD), on a log axis,
/// GD's implicit term $\frac\eta4\lVert\bar g\rVert^2$, the minibatch-variance part
/// $\frac{\eta}{4K}\sum_k\lVert g_k - \bar g\rVert^2$ that SGD adds (for a full-batch run: with its
/// blocks as minibatches), GD's term with the momentum coefficient $c(\beta)\eta\lVert\bar g\rVert^2$
/// (runs with momentum) and the explicit regulariser $\alpha\frac\eta8\frac1K\sum_k\lVert g_k\rVert^2$
/// (runs with one); then one panel of ratios over all runs: variance part / GD's term, and
/// explicit / variance part. Without runs, one panel says where runs are looked for.
pub fn regulariser_ledger_figure(runs: &[LedgerRun]) -> Figure {
    let mut panels = Vec::new();
    for run in runs {
        let mut series = Vec::new();
        if run.momentum != Momentum::None {
            let c = format!("{:.4}", run.momentum.modified_loss_coefficient());
            series.push(Series {
                label: format!(
                    "c(β) η |ḡ|²: GD's term, {} (c = {})",
                    momentum_name(run.momentum),
                    c.trim_end_matches('0').trim_end_matches('.')
                ),
                points: curve(run, |e| e.implicit_momentum),
                color: 0,
                mark: Mark::Line,
            });
        }
        series.push(Series {
            label: "η/4 |ḡ|²: GD's implicit term".into(),
            points: curve(run, |e| e.implicit_gd),
            color: 1,
            mark: Mark::Line,
        });
        series.push(Series {
            label: format!("η/(4K) Σ|g_k − ḡ|²: minibatch variance (SGD's extra), K = {}", run.blocks),
            points: curve(run, |e| e.implicit_minibatch_variance),
            color: 2,
            mark: Mark::Line,
        });
        if run.log.iter().any(|e| e.regulariser.is_some()) {
            series.push(Series {
                label: "α η/8 mean|g_k|²: explicit regulariser".into(),
                points: curve(run, |e| e.regulariser),
                color: 3,
                mark: Mark::Dashed,
            });
        }
        let (unit, kind) = if run.sgd { ("epoch", "SGD") } else { ("step", "full batch") };
        panels.push(Panel {
            title: format!("{} ({kind}): {}", run.config, run.dir.display()),
            x_label: unit.into(),
            y_label: "regulariser value".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Log10,
            series,
            legend: Legend::Below,
        });
    }
    let mut ratios = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        ratios.push(Series {
            label: format!("{}: variance part / GD's term", run.config),
            points: curve(run, |e| Some(e.implicit_minibatch_variance? / e.implicit_gd?)),
            color: i,
            mark: Mark::Line,
        });
        if run.log.iter().any(|e| e.regulariser.is_some()) {
            ratios.push(Series {
                label: format!("{}: explicit / variance part", run.config),
                points: curve(run, |e| Some(e.regulariser? / e.implicit_minibatch_variance?)),
                color: i,
                mark: Mark::Dashed,
            });
        }
    }
    if runs.is_empty() {
        ratios.push(Series::note(
            "no run directories with ledger fields found (experiments/results/ledger/, runs/): fullbatch train writes them",
        ));
    }
    panels.push(Panel {
        title: "ratios along each run".into(),
        x_label: "step (full batch) or epoch (SGD)".into(),
        y_label: "ratio".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Log10,
        series: ratios,
        legend: Legend::Below,
    });
    Figure {
        title: "The regulariser ledger: implicit (backward-error analysis) and explicit gradient-norm terms".into(),
        columns: 2,
        panel_size: (760, 560),
        panels,
    }
}
