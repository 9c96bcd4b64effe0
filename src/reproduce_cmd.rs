//! `fullbatch reproduce`: the paper's CIFAR-10 tables (or any set of configurations) as one
//! job. Each row runs as a `fullbatch train` process of this binary, in its own run directory
//! and process group, one per device slot at a time; the parent shows one progress line per
//! row, forwards Ctrl-C / SIGTERM once (each row then stops with a checkpoint), and writes the
//! paper-vs-ours report ([`fullbatch::reproduction`]). Part of the `fullbatch` binary.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fullbatch::data::{cifar, fashion_mnist};
use fullbatch::deep::config::{Dataset, Mode};
use fullbatch::reproduction::{self, RowRun, RowState, Table, logged_steps};
use fullbatch::run_dir::read_log;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::burn_cmd::{BackendChoice, backend_name, check_device, default_backend};

/// The options of `fullbatch reproduce`.
#[derive(Debug, clap::Args)]
pub struct ReproduceArgs {
    /// Rows to run: configuration names in --configs, comma-separated (default: the paper's
    /// tables, or every configuration of --configs when it holds none of their rows).
    #[arg(long, value_delimiter = ',', conflicts_with = "table", value_name = "ROW,...")]
    rows: Vec<String>,
    /// Run one table of the paper.
    #[arg(long, value_parser = crate::choice::<Table>())]
    table: Option<Table>,
    /// The directory of the row configurations.
    #[arg(long, default_value = "experiments/cifar10", value_name = "DIR")]
    configs: PathBuf,
    /// The data directory (CIFAR-10 binary version; default FULLBATCH_CIFAR10), passed to
    /// every row; checked before anything runs.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The runs directory: one run directory per row and seed, and report.md / report.json.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    runs: PathBuf,
    /// Seeds, comma-separated: each row runs once per seed (default: the seed of its file).
    /// Seed S of row R runs in RUNS/R when S is the file's seed, else in RUNS/R-seedS.
    #[arg(long, value_delimiter = ',', value_name = "S,...")]
    seeds: Vec<u64>,
    /// Device slots, comma-separated (GPU indices for cuda and tch): one row runs in each slot
    /// at a time; an index given twice runs two rows on that device at once.
    #[arg(long, value_delimiter = ',', default_value = "0", value_name = "I,...")]
    devices: Vec<usize>,
    /// Devices per row: --devices is cut into groups of this many, one full-batch row running
    /// data-parallel on each group (`train --devices`; a build with the `collective` feature).
    /// An SGD row runs on its group's first device.
    #[arg(long, default_value_t = 1, value_name = "K")]
    devices_per_row: usize,
    /// The backend of every row (default as for `train`).
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// The CUDA backend's kernel cache (as for `train`).
    #[arg(long, value_name = "DIR")]
    kernel_cache: Option<PathBuf>,
    /// Stop each row with a checkpoint once this many steps (epochs) are done (e.g. a dry run
    /// of one step per row); a later call continues.
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    /// Print what would run (row, seed, directory, state) and exit.
    #[arg(long, conflicts_with = "report")]
    plan: bool,
    /// Only write the report from the run directories in --runs (nothing runs).
    #[arg(long)]
    report: bool,
    /// Plain lines (start, evaluations, end) instead of progress bars.
    #[arg(long)]
    no_progress: bool,
}

/// Stop requests received (SIGINT/SIGTERM): the first is forwarded to the rows, which stop with
/// a checkpoint; the second is forwarded too, and the rows exit at once.
static STOPS: AtomicUsize = AtomicUsize::new(0);

/// A row being trained by a child process.
struct Running {
    /// Index into the plan.
    index: usize,
    child: Child,
    bar: ProgressBar,
    /// Stop requests already forwarded to it.
    forwarded: usize,
    /// The last step reported in plain mode.
    reported_step: usize,
    /// The size of the log when it was last read: it is read again only when that changes
    /// (once a step), not at every poll.
    log_len: u64,
}

/// How a row ended in this job.
#[derive(Debug, Clone)]
enum Outcome {
    /// Finished before the job started.
    Skipped,
    /// Finished in this job.
    Finished,
    /// Stopped with a checkpoint (--max-steps or a stop request) at this step.
    Stopped(usize),
    /// The process failed.
    Failed(String),
    /// Not started (the job was stopped first).
    NotStarted,
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Skipped => "finished earlier".into(),
            Outcome::Finished => "finished".into(),
            Outcome::Stopped(step) => format!("stopped with a checkpoint at step {step} (run again to continue)"),
            Outcome::NotStarted => "not started".into(),
            Outcome::Failed(why) => format!("FAILED: {why}"),
        }
    }
}

/// Runs `fullbatch reproduce`.
pub fn reproduce(args: ReproduceArgs) -> Result<ExitCode> {
    if args.report {
        let report = reproduction::write_report(&args.runs)?;
        println!("{}", report.to_markdown());
        eprintln!("wrote {} and report.json", args.runs.join("report.md").display());
        return Ok(ExitCode::SUCCESS);
    }
    let rows = reproduction::select_rows(&args.configs, &args.rows, args.table)?;
    let plan = reproduction::plan(&args.configs, &rows, &args.seeds, &args.runs)?;
    let backend = args.backend.unwrap_or_else(default_backend);
    for &d in &args.devices {
        check_device(backend, d)?;
    }
    if args.devices_per_row == 0 || !args.devices.len().is_multiple_of(args.devices_per_row) {
        bail!(
            "--devices-per-row {} does not divide the {} devices of --devices into groups",
            args.devices_per_row,
            args.devices.len()
        );
    }
    check_data(&plan, args.data.as_deref())?;
    if args.plan {
        for r in &plan {
            println!("{:<28} seed {:<4} {:<40} {}", r.row, r.seed(), r.dir.display(), state_text(r));
        }
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&args.runs).with_context(|| format!("creating {}", args.runs.display()))?;
    let _lock = RunsLock::take(&args.runs)?;
    ctrlc::set_handler(|| {
        let n = STOPS.fetch_add(1, Ordering::SeqCst) + 1;
        eprintln!(
            "{}",
            if n == 1 {
                "stopping: each running row stops after its current step with a checkpoint (Ctrl-C again: at once)"
            } else {
                "stopping the rows at once"
            }
        );
    })?;
    let outcomes = run_rows(&args, backend, &plan)?;
    let report = reproduction::write_report(&args.runs)?;
    for (r, outcome) in plan.iter().zip(&outcomes) {
        eprintln!("{:<28} seed {:<4} {}", r.row, r.seed(), outcome.describe());
    }
    let failed = outcomes.iter().any(|o| matches!(o, Outcome::Failed(_)));
    println!("{}", report.to_markdown());
    eprintln!("report: {} (and report.json)", args.runs.join("report.md").display());
    Ok(if failed {
        ExitCode::FAILURE
    } else if STOPS.load(Ordering::SeqCst) > 0 {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// `RUNS/reproduce.lock`, holding the job's process id while it runs, so that a second job on the
/// same runs directory does not start the same rows beside it. Removed when dropped; a lock whose
/// process is gone (killed) is taken over.
struct RunsLock {
    path: PathBuf,
}

impl RunsLock {
    fn take(runs: &Path) -> Result<RunsLock> {
        let path = runs.join("reproduce.lock");
        // The pid is written to a file of this process's own first and hard-linked into place:
        // linking fails if the lock exists, so the lock never exists without its pid (another
        // job could otherwise read it empty and take it as stale).
        let own = runs.join(format!(".reproduce.lock.{}", std::process::id()));
        std::fs::write(&own, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", own.display()))?;
        let result = Self::link(runs, &own, path);
        let _ = std::fs::remove_file(&own);
        result
    }

    fn link(runs: &Path, own: &Path, path: PathBuf) -> Result<RunsLock> {
        for _ in 0..2 {
            match std::fs::hard_link(own, &path) {
                Ok(()) => return Ok(RunsLock { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid = holder.trim();
                    if !pid.is_empty() && Path::new("/proc").join(pid).exists() {
                        bail!(
                            "another `fullbatch reproduce` (process {pid}) is running on {}; wait for it, or remove {} \
                             if that process is not a reproduce job",
                            runs.display(),
                            path.display()
                        );
                    }
                    // Its process is gone: a stale lock.
                    std::fs::remove_file(&path).with_context(|| format!("removing the stale {}", path.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("could not take {}", path.display())
    }
}

impl Drop for RunsLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn state_text(r: &RowRun) -> String {
    match r.state {
        RowState::New => "new".into(),
        RowState::Unfinished { steps_done } => {
            format!("unfinished at {steps_done}/{}: continues", r.config.total_steps())
        }
        RowState::Finished => "finished: skipped".into(),
    }
}

/// Checks, before anything runs, that the rows' data can be read: the CIFAR-10 files (sizes
/// only) or the Fashion-MNIST files. Rows of different data sets cannot share one --data.
fn check_data(plan: &[RowRun], data: Option<&Path>) -> Result<()> {
    let todo: Vec<&RowRun> = plan.iter().filter(|r| r.state != RowState::Finished).collect();
    // Synthetic rows read no files, so only the others must agree on --data.
    let mut kinds: Vec<&str> = todo
        .iter()
        .filter(|r| !matches!(r.config.data.dataset, Dataset::Synthetic { .. }))
        .map(|r| r.config.data.dataset.name())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    if data.is_some() && kinds.len() > 1 {
        bail!(
            "the rows use different data sets ({}) but --data names one directory: run them separately",
            kinds.join(", ")
        );
    }
    for r in todo {
        match r.config.data.dataset {
            Dataset::Cifar10 => {
                let dir = data.map(Path::to_path_buf).or_else(cifar::env_dir).with_context(|| {
                    format!(
                        "row {} trains on CIFAR-10: give --data DIR (the binary version) or set {}",
                        r.row,
                        cifar::DIR_ENV
                    )
                })?;
                cifar::check_dir(&dir).with_context(|| format!("row {}: CIFAR-10 in {}", r.row, dir.display()))?;
            }
            Dataset::FashionMnist => {
                let dir = data.map_or_else(fashion_mnist::default_dir, Path::to_path_buf);
                if !fashion_mnist::available(&dir) {
                    bail!(
                        "row {}: Fashion-MNIST is not in {} (install dataset-fashion-mnist or give --data DIR)",
                        r.row,
                        dir.display()
                    );
                }
            }
            Dataset::Synthetic { .. } => {}
        }
    }
    Ok(())
}

/// Runs the rows that are not finished, one per device slot at a time, until all have ended or
/// a stop request came; returns each planned row's outcome.
fn run_rows(args: &ReproduceArgs, backend: BackendChoice, plan: &[RowRun]) -> Result<Vec<Outcome>> {
    let plain = args.no_progress || !std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if plain {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template("{prefix:<30} [{bar:24}] {pos:>5}/{len:<5} {msg} (eta {eta})")?
        .progress_chars("=> ");
    // Rows already finished, or already at --max-steps, do not start.
    let mut outcomes: Vec<Outcome> = plan
        .iter()
        .map(|r| match (r.state, args.max_steps) {
            (RowState::Finished, _) => Outcome::Skipped,
            (RowState::Unfinished { steps_done }, Some(n)) if steps_done >= n => Outcome::Stopped(steps_done),
            _ => Outcome::NotStarted,
        })
        .collect();
    let mut pending: std::collections::VecDeque<usize> =
        (0..plan.len()).filter(|&i| matches!(outcomes[i], Outcome::NotStarted)).collect();
    let groups: Vec<&[usize]> = args.devices.chunks(args.devices_per_row).collect();
    let mut slots: Vec<Option<Running>> = groups.iter().map(|_| None).collect();
    loop {
        let stops = STOPS.load(Ordering::SeqCst);
        for (slot, group) in slots.iter_mut().zip(&groups) {
            if let Some(running) = slot {
                let r = &plan[running.index];
                if running.forwarded < stops {
                    // SAFETY: kill(2) with the pid of our own child, which has not been waited for.
                    unsafe { libc::kill(running.child.id() as libc::pid_t, libc::SIGTERM) };
                    running.forwarded += 1;
                }
                show_progress(running, r, plain);
                if let Some(status) = running.child.try_wait()? {
                    let done = logged_steps(&r.dir);
                    outcomes[running.index] = if status.success() && done >= r.config.total_steps() {
                        Outcome::Finished
                    } else if status.success() || (stops > 0 && status.code() == Some(130)) {
                        Outcome::Stopped(done)
                    } else {
                        Outcome::Failed(format!("{status}; see {}", r.dir.join(OUTPUT_FILE).display()))
                    };
                    running.bar.finish_with_message(outcomes[running.index].describe());
                    if plain {
                        eprintln!("{} seed {}: {}", r.row, r.seed(), outcomes[running.index].describe());
                    }
                    *slot = None;
                }
            }
            if slot.is_none()
                && stops == 0
                && let Some(index) = pending.pop_front()
            {
                // Data parallelism splits full-batch steps only: an SGD row takes one device.
                let devices = match plan[index].config.mode {
                    Mode::Sgd { .. } => &group[..1],
                    Mode::FullBatch { .. } => *group,
                };
                let device: Vec<String> = devices.iter().map(usize::to_string).collect();
                let device = device.join(",");
                let bar = multi.add(ProgressBar::new(plan[index].config.total_steps() as u64));
                bar.set_style(style.clone());
                bar.set_prefix(format!("{} s{} [dev {device}]", plan[index].row, plan[index].seed()));
                bar.set_position(logged_steps(&plan[index].dir) as u64);
                bar.reset_eta();
                let child = match spawn_row(args, backend, &device, &plan[index]) {
                    Ok(child) => child,
                    Err(e) => {
                        outcomes[index] = Outcome::Failed(format!("{e:#}"));
                        bar.finish_with_message(outcomes[index].describe());
                        continue;
                    }
                };
                if plain {
                    eprintln!(
                        "{} seed {}: started on device {device} ({})",
                        plan[index].row,
                        plan[index].seed(),
                        state_text(&plan[index])
                    );
                }
                *slot = Some(Running { index, child, bar, forwarded: 0, reported_step: 0, log_len: 0 });
            }
        }
        if slots.iter().all(Option::is_none) && (pending.is_empty() || STOPS.load(Ordering::SeqCst) > 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(outcomes)
}

/// The file in a run directory that takes the output of the row's `fullbatch train` process.
const OUTPUT_FILE: &str = "train-output.log";

/// Starts `fullbatch train` for row `r` on `devices` (comma-separated), in its own process group (a terminal's
/// Ctrl-C reaches the parent only, which forwards it once), its output appended to
/// `OUTPUT_FILE` in the run directory.
fn spawn_row(args: &ReproduceArgs, backend: BackendChoice, devices: &str, r: &RowRun) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&r.dir).with_context(|| format!("creating {}", r.dir.display()))?;
    let path = r.dir.join(OUTPUT_FILE);
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let exe = std::env::current_exe().context("locating the fullbatch binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("train")
        .arg("--config")
        .arg(&r.config_file)
        .arg("--out")
        .arg(&r.dir)
        .args(["--seed", &r.seed().to_string()])
        .args(["--backend", &backend_name(backend)])
        .args(["--devices", devices])
        .arg("--no-progress");
    if r.state != RowState::New {
        cmd.arg("--resume");
    }
    if let Some(data) = &args.data {
        cmd.arg("--data").arg(data);
    }
    if let Some(cache) = &args.kernel_cache {
        cmd.arg("--kernel-cache").arg(cache);
    }
    if let Some(n) = args.max_steps {
        cmd.args(["--max-steps", &n.to_string()]);
    }
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
    cmd.spawn().with_context(|| format!("starting the row {} (fullbatch train)", r.row))
}

/// Updates a running row's progress from its log: the step, the last training loss and test
/// accuracy; in plain mode one line per new evaluation.
fn show_progress(running: &mut Running, r: &RowRun, plain: bool) {
    let len = std::fs::metadata(r.dir.join("log.jsonl")).map_or(0, |m| m.len());
    if len == running.log_len {
        return;
    }
    running.log_len = len;
    let Ok(log) = read_log(&r.dir) else { return };
    let Some(last) = log.last() else { return };
    running.bar.set_position(last.step as u64);
    let acc = log.iter().rev().find_map(|e| Some((e.step, e.test_acc?)));
    let acc_text = acc.map_or(String::new(), |(s, a)| format!(", test acc {:.2}% at {s}", 100.0 * a));
    running.bar.set_message(format!("loss {:.4}{acc_text}", last.train_loss));
    if plain
        && let Some((step, _)) = acc
        && step > running.reported_step
    {
        running.reported_step = step;
        eprintln!(
            "{} seed {}: step {}/{}, loss {:.4}{acc_text}",
            r.row,
            r.seed(),
            last.step,
            r.config.total_steps(),
            last.train_loss
        );
    }
}
