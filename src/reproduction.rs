//! Full-scale reproduction of the paper's CIFAR-10 tables as one job: which rows to run, what
//! each row's run directory already holds, and the paper-vs-ours report.
//!
//! Plain Rust (no burn): `fullbatch reproduce` (feature `burn`) plans with [`plan`], runs each
//! row that is not finished as a `fullbatch train` process in its own run directory, and
//! writes the report with [`write_report`]; the report can be rewritten at any time from the
//! run directories alone.
//!
//! # Rows, seeds and run directories
//! A row is a configuration file `NAME.toml` in the configurations directory (default
//! `experiments/cifar10/`); the paper's tables are the rows of [`PAPER_ROWS`]. Each row runs once
//! per seed: with no seeds given, with the seed its file states, in `RUNS/NAME` (where `fullbatch
//! train` puts it by default); with seeds given, seed `s` runs in `RUNS/NAME` when `s` is the
//! file's seed and in `RUNS/NAME-seedS` otherwise, with the configuration's `seed` set to `s`.
//!
//! # The report
//! [`Report`] groups every run directory under `RUNS` by configuration name (so runs started by
//! hand count too). A row's accuracy is the last evaluation's test accuracy, as the paper reports
//! its last evaluation, averaged over the row's finished runs: mean $\bar a = \frac1n\sum_i a_i$
//! and sample standard deviation $s = \sqrt{\frac{1}{n-1}\sum_i (a_i - \bar a)^2}$ ($n \ge 2$).
//! Unfinished runs are listed with their progress and not averaged. A run stands beside the
//! paper's number only when [`CifarRun::comparable`] (full CIFAR-10, the row's augmentation).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::choice::Choice;
use crate::figures::cifar_results::{CifarRun, PAPER_ROWS, collect_cifar_runs, paper_row};
use crate::run_dir::config::RunConfig;
use crate::run_dir::{LogEntry, stored_config};
use crate::{Error, Result};

/// A table of the paper, as rows of [`PAPER_ROWS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The rows trained with data augmentation.
    Aug,
    /// The rows trained without.
    Noaug,
    /// Both.
    All,
}

impl Choice for Table {
    const WHAT: &'static str = "table";
    const ALL: &'static [Self] = &[Table::Aug, Table::Noaug, Table::All];

    fn name(self) -> &'static str {
        match self {
            Table::Aug => "aug",
            Table::Noaug => "noaug",
            Table::All => "all",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Table::Aug => "the paper's rows with data augmentation (SGD, FB1-FB6, fixed copies)",
            Table::Noaug => "the paper's rows without data augmentation",
            Table::All => "every row of the paper's tables",
        }
    }
}

impl Table {
    /// The configuration names of the table's rows, in the paper's order.
    pub fn rows(self) -> Vec<&'static str> {
        PAPER_ROWS
            .iter()
            .filter(|r| match self {
                Table::Aug => r.augmentation,
                Table::Noaug => !r.augmentation,
                Table::All => true,
            })
            .map(|r| r.config)
            .collect()
    }
}

/// The configuration names (file stems) of the `.toml` files in `dir`, sorted.
///
/// # Errors
/// [`Error::InvalidParameter`] (`configs`) naming `dir` if it is not a directory; [`Error::Io`]
/// if it cannot be listed.
pub fn config_names(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Err(Error::invalid(
            "configs",
            format!("the configurations directory {} does not exist (give --configs DIR)", dir.display()),
        ));
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "toml")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The rows to run from the configurations in `configs`: `rows` when given (in that order,
/// repeats dropped), else the rows of `table`, else the paper's tables when `configs` holds any
/// of their rows, else every configuration there.
///
/// # Errors
/// [`Error::InvalidParameter`] (`rows`) naming a row without a configuration file and listing
/// the ones there; [`Error::Io`] if `configs` cannot be listed.
pub fn select_rows(configs: &Path, rows: &[String], table: Option<Table>) -> Result<Vec<String>> {
    let available = config_names(configs)?;
    let wanted: Vec<String> = if !rows.is_empty() {
        rows.to_vec()
    } else if let Some(table) = table {
        table.rows().into_iter().map(String::from).collect()
    } else if PAPER_ROWS.iter().any(|r| available.iter().any(|a| a == r.config)) {
        Table::All.rows().into_iter().map(String::from).collect()
    } else {
        available.clone()
    };
    let mut selected: Vec<String> = Vec::new();
    for row in wanted {
        if !available.contains(&row) {
            return Err(Error::invalid(
                "rows",
                format!(
                    "unknown row '{row}': there is no {}; rows there: {}",
                    configs.join(format!("{row}.toml")).display(),
                    if available.is_empty() { "none".to_string() } else { available.join(", ") }
                ),
            ));
        }
        if !selected.contains(&row) {
            selected.push(row);
        }
    }
    if selected.is_empty() {
        return Err(Error::invalid("rows", format!("no configurations (.toml) in {}", configs.display())));
    }
    Ok(selected)
}

/// What a row's run directory holds before the job starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowState {
    /// Nothing of a run: start it.
    New,
    /// The same configuration, not finished (or stopped before its first checkpoint):
    /// continue it with `--resume` (which starts over from step 0 without a checkpoint).
    Unfinished {
        /// The last logged step (epoch).
        steps_done: usize,
    },
    /// Every planned step is logged: skip it.
    Finished,
}

/// One run of the job: a row with one seed.
#[derive(Debug, Clone)]
pub struct RowRun {
    /// The row (configuration name).
    pub row: String,
    /// Its configuration file.
    pub config_file: PathBuf,
    /// The configuration, with the run's seed.
    pub config: RunConfig,
    /// The run directory.
    pub dir: PathBuf,
    /// What the directory holds.
    pub state: RowState,
}

impl RowRun {
    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.config.seed
    }
}

/// The run directory of `row` with `seed`, for a configuration whose file states `file_seed`.
pub fn row_dir(runs: &Path, row: &str, seed: u64, file_seed: u64) -> PathBuf {
    if seed == file_seed { runs.join(row) } else { runs.join(format!("{row}-seed{seed}")) }
}

/// The last step logged in `dir/log.jsonl` (0 without a log). Lines that do not parse are
/// skipped: a process killed while writing leaves a partial last line, which `fullbatch train
/// --resume` cuts away; here only the progress matters.
pub fn logged_steps(dir: &Path) -> usize {
    let Ok(text) = fs::read_to_string(dir.join("log.jsonl")) else { return 0 };
    text.lines().filter_map(|l| serde_json::from_str::<LogEntry>(l).ok()).map(|e| e.step).max().unwrap_or(0)
}

/// What `dir` holds for a run of `config`.
///
/// # Errors
/// [`Error::InvalidParameter`] (`runs`) if `dir` holds a run of a different configuration, or
/// files of a run without its `config.toml`; the errors of reading `config.toml`.
pub fn row_state(config: &RunConfig, dir: &Path) -> Result<RowState> {
    let stored_path = dir.join("config.toml");
    if stored_path.is_file() {
        let stored = stored_config(dir)?;
        if &stored != config {
            return Err(Error::invalid(
                "runs",
                format!(
                    "{} holds a run of a different configuration than row {} with seed {} (compare {} with the \
                     row's file); nothing was changed: move that directory away or choose another --runs",
                    dir.display(),
                    config.name,
                    config.seed,
                    stored_path.display()
                ),
            ));
        }
        let steps_done = logged_steps(dir);
        return Ok(if steps_done >= config.total_steps() {
            RowState::Finished
        } else {
            RowState::Unfinished { steps_done }
        });
    }
    if dir.join("log.jsonl").exists() || dir.join("checkpoints").exists() {
        return Err(Error::invalid(
            "runs",
            format!(
                "{} holds files of a run but no config.toml: not a directory `fullbatch train` wrote; nothing was \
                 changed",
                dir.display()
            ),
        ));
    }
    Ok(RowState::New)
}

/// The runs of `rows` (configurations in `configs`) with `seeds` (empty: each file's own seed)
/// under `runs`, each with the state of its directory. Every row is checked before any is
/// returned, so a conflict anywhere stops the job before it starts.
///
/// # Errors
/// The configuration's load and validation errors (naming the file and key); the errors of
/// [`row_state`].
pub fn plan(configs: &Path, rows: &[String], seeds: &[u64], runs: &Path) -> Result<Vec<RowRun>> {
    let mut planned = Vec::new();
    for row in rows {
        let config_file = configs.join(format!("{row}.toml"));
        let file_config = RunConfig::load(&config_file)?;
        file_config.validate()?;
        let seeds: Vec<u64> = if seeds.is_empty() { vec![file_config.seed] } else { seeds.to_vec() };
        for seed in seeds {
            let config = RunConfig { seed, ..file_config.clone() };
            let dir = row_dir(runs, row, seed, file_config.seed);
            let state = row_state(&config, &dir)?;
            planned.push(RowRun { row: row.clone(), config_file: config_file.clone(), config, dir, state });
        }
    }
    Ok(planned)
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    /// The configuration name.
    pub row: String,
    /// The paper's accuracy for the row, %, where this project has checked it.
    pub paper: Option<f64>,
    /// Whether the runs can stand beside the paper's number (full CIFAR-10, the row's
    /// augmentation setting); false for other data or settings.
    pub comparable: bool,
    /// The data the runs trained on (`cifar10`, `fashion-mnist`, `synthetic`), with subsets.
    pub data: String,
    /// Finished runs with an evaluation.
    pub finished: Vec<CifarRun>,
    /// Unfinished runs.
    pub unfinished: Vec<CifarRun>,
    /// Mean test accuracy of the finished runs, %.
    pub mean: Option<f64>,
    /// Sample standard deviation of those accuracies, % (two or more runs).
    pub std: Option<f64>,
}

/// The paper-vs-ours table of a runs directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The runs directory read.
    pub runs_dir: PathBuf,
    /// Seconds since the Unix epoch when the report was made.
    pub generated_unix_s: u64,
    /// The commit of the program that wrote the report.
    pub git_commit: String,
    /// Every paper row (run or not; left out when every run found is of other configurations),
    /// then every other configuration found, sorted.
    pub rows: Vec<ReportRow>,
}

/// The sample mean and standard deviation (`None` below one and two values).
fn mean_std(values: &[f64]) -> (Option<f64>, Option<f64>) {
    let n = values.len();
    if n == 0 {
        return (None, None);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = (n >= 2).then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
    (Some(mean), std)
}

/// How a run's data is named in the report.
fn data_name(run: &CifarRun) -> String {
    let mut s = run.dataset.clone();
    if let Some(n) = run.train_subset {
        s.push_str(&format!(", {n} train"));
    }
    if let Some(n) = run.test_subset {
        s.push_str(&format!(", {n} test"));
    }
    s
}

impl Report {
    /// The report of `runs` (the run directories under `runs_dir`).
    pub fn new(runs_dir: &Path, runs: &[CifarRun]) -> Report {
        let mut groups: BTreeMap<&str, Vec<&CifarRun>> = BTreeMap::new();
        for run in runs {
            groups.entry(run.config.as_str()).or_default().push(run);
        }
        // The paper's rows are listed (run or not) unless every run is of other configurations.
        let paper_rows = runs.is_empty() || groups.keys().any(|k| paper_row(k).is_some());
        let mut names: Vec<&str> = if paper_rows { PAPER_ROWS.iter().map(|r| r.config).collect() } else { Vec::new() };
        names.extend(groups.keys().filter(|k| paper_row(k).is_none()));
        let rows = names
            .into_iter()
            .map(|name| {
                let runs = groups.get(name).cloned().unwrap_or_default();
                let (done, open): (Vec<&CifarRun>, Vec<&CifarRun>) =
                    runs.iter().partition(|r| r.finished() && r.last_test_acc.is_some());
                let accuracies: Vec<f64> = done.iter().filter_map(|r| r.last_test_acc).collect();
                let (mean, std) = mean_std(&accuracies);
                let mut data: Vec<String> = runs.iter().map(|r| data_name(r)).collect();
                data.sort();
                data.dedup();
                ReportRow {
                    row: name.to_string(),
                    paper: paper_row(name).and_then(|(_, r)| r.accuracy),
                    comparable: !runs.is_empty() && runs.iter().all(|r| r.comparable()),
                    data: data.join("; "),
                    finished: done.into_iter().cloned().collect(),
                    unfinished: open.into_iter().cloned().collect(),
                    mean,
                    std,
                }
            })
            .collect();
        Report {
            runs_dir: runs_dir.to_path_buf(),
            generated_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            git_commit: crate::provenance::git_commit(),
            rows,
        }
    }

    /// The report as a markdown table: row, the paper's accuracy, ours (mean ± std over the
    /// finished seeds, n), the seeds, unfinished runs with their progress, and the data.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "# CIFAR-10 reproduction: the paper vs ours\n\nRuns under `{}`. Accuracy: test accuracy (%) of the last \
             evaluation; ours is the mean ± sample standard deviation over finished runs (n = number of seeds). \
             Paper: J. Geiping et al., \"Stochastic Training is Not Necessary for Generalization\", ICLR 2022, \
             ResNet-18 on CIFAR-10 (- where this project has not checked the paper's number). Rows on other data \
             are not comparable with the paper.\n\n\
             | row | paper | ours | seeds | unfinished | data |\n|---|---|---|---|---|---|\n",
            self.runs_dir.display()
        );
        for r in &self.rows {
            let paper = r.paper.map_or("-".into(), |a| format!("{a:.2}"));
            let ours = match (r.mean, r.std) {
                (Some(m), Some(s)) => format!("{m:.2} ± {s:.2} (n = {})", r.finished.len()),
                (Some(m), None) => format!("{m:.2} (n = 1)"),
                _ if r.unfinished.is_empty() => "not run".into(),
                _ => "-".into(),
            };
            let ours = if r.mean.is_some() && !r.comparable { format!("{ours}, not comparable") } else { ours };
            let seeds: Vec<String> = r.finished.iter().map(|x| x.seed.to_string()).collect();
            let open: Vec<String> = r
                .unfinished
                .iter()
                .map(|x| {
                    let acc = x.last_test_acc.map_or(String::new(), |a| format!(", {a:.2}%"));
                    format!("seed {} at {}/{}{acc}", x.seed, x.steps_done, x.steps_planned)
                })
                .collect();
            let cell = |v: Vec<String>| if v.is_empty() { "-".to_string() } else { v.join(", ") };
            let data = if r.data.is_empty() { "-".to_string() } else { r.data.clone() };
            out.push_str(&format!("| {} | {paper} | {ours} | {} | {} | {data} |\n", r.row, cell(seeds), cell(open)));
        }
        out.push_str(&format!("\nWritten by fullbatch at commit {}.\n", self.git_commit));
        out
    }
}

/// Reads every run under `runs_dir` and writes `report.md` and `report.json` there (each
/// atomically).
///
/// # Errors
/// The errors of [`collect_cifar_runs`] (a malformed run directory is named); [`Error::Io`]
/// if the runs directory cannot be created or a file cannot be written.
pub fn write_report(runs_dir: &Path) -> Result<Report> {
    let runs = collect_cifar_runs(runs_dir)?;
    let report = Report::new(runs_dir, &runs);
    fs::create_dir_all(runs_dir).map_err(|e| Error::io(runs_dir, e))?;
    crate::atomic_file::write(&runs_dir.join("report.md"), report.to_markdown().as_bytes())?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::invalid("report", e.to_string()))?;
    crate::atomic_file::write(&runs_dir.join("report.json"), &json)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[]), (None, None));
        assert_eq!(mean_std(&[90.0]), (Some(90.0), None));
        let (m, s) = mean_std(&[90.0, 92.0, 94.0]);
        assert_eq!(m, Some(92.0));
        // Deviations -2, 0, 2: sum of squares 8 over n - 1 = 2.
        assert_eq!(s, Some(2.0));
    }

    #[test]
    fn tables_split_the_paper_rows() {
        let (aug, noaug, all) = (Table::Aug.rows(), Table::Noaug.rows(), Table::All.rows());
        assert_eq!(aug.len() + noaug.len(), all.len());
        assert!(aug.contains(&"sgd") && aug.contains(&"fb6-in-practice-fixed40") && !aug.contains(&"sgd-noaug"));
        assert!(noaug.iter().all(|r| r.ends_with("-noaug")));
    }

    #[test]
    fn row_dirs_keep_the_files_seed_in_the_plain_name() {
        let runs = Path::new("runs");
        assert_eq!(row_dir(runs, "sgd", 0, 0), Path::new("runs/sgd"));
        assert_eq!(row_dir(runs, "sgd", 2, 0), Path::new("runs/sgd-seed2"));
    }
}
