//! `fullbatch`: the command-line entry to the toolkit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fullbatch::Choice;
use fullbatch::bea::{SuiteModel, SuiteNetwork, SuiteParams, run_suite, suite_models};
use fullbatch::data::fashion_mnist;
use fullbatch::derivative_check::{DerivativeCheckParams, DerivativeReport, check_model};
use fullbatch::export::export_model;
use fullbatch::models::ModelKind;
use fullbatch::optim::{OptimizerParams, gradient_descent};
use fullbatch::sharpness::trace::{TraceEstimate, hutch_plus_plus};
use fullbatch::sharpness::{Eigenpairs, LanczosParams, PowerParams, Which, lanczos, power_iteration};
use indicatif::ProgressBar;
use ndarray_linalg::{Eigh, UPLO};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "fullbatch", version, about = "Numerical checks of why SGD generalises (Geiping et al., ICLR 2022)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `fullbatch sharpness --run DIR` and its options (the network path; needs the `burn` feature).
#[derive(clap::Args)]
pub struct SavedRunOptions {
    /// Measure a saved `fullbatch train` run instead of a toy model: the Hessian of its
    /// training loss at a checkpoint (needs a build with the `burn` feature).
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// With --run: the checkpoint after this step (default: the latest).
    #[arg(long, requires = "run")]
    pub step: Option<usize>,
    /// With --run on CIFAR-10: the data directory (or FULLBATCH_CIFAR10).
    #[arg(long, value_name = "DIR", requires = "run")]
    pub data: Option<PathBuf>,
    /// With --run: BatchNorm with each block's statistics (train) or the running ones (eval).
    #[arg(long, value_parser = ["train", "eval"], default_value = "train", requires = "run")]
    pub bn_mode: String,
    /// With --run: the first this many un-augmented training images (default: all).
    #[arg(long, requires = "run")]
    pub max_images: Option<usize>,
    /// With --run: budget of Hessian-vector products for the eigenvalues.
    #[arg(long, default_value_t = 100, requires = "run")]
    pub max_hvps: usize,
    /// With --run: the finite-difference step relative to max(|theta|, 1).
    #[arg(long, default_value_t = fullbatch::run_dir::config::DEFAULT_EPS_REL, requires = "run")]
    pub eps_rel: f64,
    /// With --run: Hutch++ trace with this many products (0: none).
    #[arg(long, default_value_t = 0, requires = "run")]
    pub trace: usize,
    /// With --run: SLQ spectral density with this many probes of 40 products (0: none).
    #[arg(long, default_value_t = 0, requires = "run")]
    pub density: usize,
    /// With --run: also measure the operator's own error (repeatability, symmetry,
    /// linearity, and how a product moves with the step; 11 products).
    #[arg(long, requires = "run")]
    pub diagnose: bool,
    /// With --run: also the top eigenvalues of the Hessian restricted to the parameters whose
    /// names match this pattern (`*` any characters; names like `stem_conv.weight`,
    /// `blocks.1.bn2.bias`, `fc.weight`). Repeatable: one measurement per pattern.
    #[arg(long = "group", value_name = "PATTERN", requires = "run")]
    pub groups: Vec<String>,
    /// With --run: also one restricted measurement per layer (each convolution, BatchNorm
    /// and the linear head).
    #[arg(long, requires = "run")]
    pub per_layer: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List the toy models and check their exact derivatives against finite differences.
    Models {
        /// Only these models (repeatable); default: all.
        #[arg(long = "model", value_parser = choice::<ModelKind>())]
        models: Vec<ModelKind>,
        /// Seed of the data, starting point and directions.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print a JSON array (one object per model) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sharpness of a toy model at its start or after GD training: top Hessian eigenvalues by
    /// Lanczos with residuals, the dense answer when small enough, power iteration, and the
    /// trace (Hutch++).
    Sharpness {
        /// The model.
        #[arg(long, value_parser = choice::<ModelKind>(), default_value = "mlp-tanh-mse")]
        model: ModelKind,
        /// Full-batch GD steps before measuring.
        #[arg(long, default_value_t = 0)]
        train_steps: usize,
        /// Learning rate of those steps.
        #[arg(long, default_value_t = 0.1)]
        lr: f64,
        /// Number of eigenvalues (default: 3 for a toy model, 1 for --run).
        #[arg(long)]
        k: Option<usize>,
        /// Which end of the spectrum Lanczos computes (power iteration always finds the largest
        /// magnitudes, as in PyHessian).
        #[arg(long, value_parser = choice::<Which>(), default_value = "largest")]
        which: Which,
        /// Relative residual tolerance of Lanczos (default: 1e-10 for a toy model, 1e-2 for
        /// --run, whose operator is a finite difference of f32 gradients).
        #[arg(long)]
        tol: Option<f64>,
        /// Seed of data, start point and random vectors.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also write the model, its data, the point and these results as .npy + JSON into
        /// this directory (check them with `python3 scripts/check_export.py DIR`; with --run,
        /// `python3 scripts/check_network_export.py DIR`, which needs PyTorch).
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
        /// A saved run to measure instead of a toy model.
        #[command(flatten)]
        saved: SavedRunOptions,
    },
    /// Backward-error analysis: measure the orders and coefficients of the modified flows of
    /// GD, SGD and momentum on toy models, and compare them with the theory.
    Bea {
        /// Models (repeatable); default: quadratic, logistic, mlp-tanh-mse (none when only
        /// networks are named).
        #[arg(long = "model", value_parser = choice::<ModelKind>())]
        models: Vec<ModelKind>,
        /// Networks written in burn, f64 on the CPU (repeatable; needs a build with the `burn`
        /// feature). With networks and no --model, only the networks run.
        #[arg(long = "network", value_parser = choice::<SuiteNetwork>())]
        networks: Vec<SuiteNetwork>,
        /// Skip the Fashion-MNIST MLP even when the data set is installed.
        #[arg(long)]
        no_fashion_mnist: bool,
        /// Largest step, in units of the model's time scale 1/rate (see `bea::expansion_rate`).
        #[arg(long, default_value_t = 0.1)]
        h_max: f64,
        /// Smallest step, in units of 1/rate.
        #[arg(long, default_value_t = 0.01)]
        h_min: f64,
        /// Number of step sizes.
        #[arg(long, default_value_t = 6)]
        steps: usize,
        /// Minibatches per SGD epoch.
        #[arg(long, default_value_t = 4)]
        minibatches: usize,
        /// Average SGD over this many sampled orderings (0: all m! orderings, exact).
        #[arg(long, default_value_t = 0)]
        orderings: usize,
        /// Momentum beta of the heavy-ball and Nesterov checks.
        #[arg(long, default_value_t = 0.9)]
        beta: f64,
        /// Seed of data, start point, partition and orderings.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print a JSON array, one object per check.
        #[arg(long)]
        json: bool,
    },
    /// Run toy experiments (full-batch GD, SGD, explicit regularisers on a Fashion-MNIST MLP) from
    /// their configs, cached by config hash as `make figures` does, and print each variant's final
    /// numbers over seeds with its differences from the first variant, paired by seed.
    Toy(toy_cmd::ToyArgs),
    /// Train a ResNet as a configuration file says (full batch or SGD), into a run directory
    /// with a JSONL log and checkpoints.
    #[cfg(feature = "burn")]
    Train(Box<burn_cmd::TrainArgs>),
    /// Checks and timings of a training backend (gradient vs the CPU, images/s, a full-batch
    /// step) and its kernel cache.
    #[cfg(feature = "burn")]
    Device {
        #[command(subcommand)]
        command: burn_cmd::DeviceCommand,
    },
    /// Run the paper's CIFAR-10 tables (or chosen rows, seeds) as one job: each row in its own
    /// run directory, one per device at a time, unfinished rows continued, finished ones
    /// skipped; then the paper-vs-ours report (RUNS/report.md, report.json).
    #[cfg(feature = "burn")]
    Reproduce(Box<reproduce_cmd::ReproduceArgs>),
    /// Run the paper's tables as one job (needs a build with the `burn` feature: this one has
    /// none).
    #[cfg(not(feature = "burn"))]
    #[command(disable_help_flag = true)]
    Reproduce {
        /// Whatever was given: a build without burn cannot use it.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Train a ResNet (needs a build with the `burn` feature: this one has none).
    #[cfg(not(feature = "burn"))]
    #[command(disable_help_flag = true)]
    Train {
        /// Whatever was given: a build without burn cannot use it.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Checks and timings of a training backend (needs a build with the `burn` feature: this
    /// one has none).
    #[cfg(not(feature = "burn"))]
    #[command(disable_help_flag = true)]
    Device {
        /// Whatever was given: a build without burn cannot use it.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

#[derive(Serialize)]
struct ModelCheck {
    model: String,
    description: String,
    seed: u64,
    #[serde(flatten)]
    report: DerivativeReport,
}

/// A clap parser for a library [`Choice`]: its names as the possible values (listed with their
/// descriptions in `--help`).
fn choice<T: Choice + Send + Sync>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(T::ALL.iter().map(|c| PossibleValue::new(c.name()).help(c.description())))
        .map(|name| T::from_name(&name).expect("clap only passes listed names"))
}

fn models(kinds: Vec<ModelKind>, seed: u64, json: bool) -> Result<ExitCode> {
    let kinds = if kinds.is_empty() { ModelKind::ALL.to_vec() } else { kinds };
    let params = DerivativeCheckParams { seed, ..DerivativeCheckParams::default() };
    let mut checks = Vec::new();
    for kind in kinds {
        let report = check_model(kind, seed, &params)?;
        checks.push(ModelCheck { model: kind.name().into(), description: kind.description().into(), seed, report });
    }
    let all_pass = checks.iter().all(|c| c.report.pass);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        println!(
            "{:<16} {:>5} {:>10} {:>10} {:>7} {:>7} {:>10} {:>10}  result",
            "model", "dim", "grad err", "hvp err", "g slope", "H slope", "H asym", "D3 asym"
        );
        for c in &checks {
            let r = &c.report;
            println!(
                "{:<16} {:>5} {:>10.2e} {:>10.2e} {:>7.2} {:>7.2} {:>10.1e} {:>10.1e}  {}",
                c.model,
                r.dim,
                r.best_gradient_error,
                r.best_hvp_error,
                r.gradient_truncation_slope,
                r.hvp_truncation_slope,
                r.hessian_asymmetry,
                r.third_derivative_asymmetry,
                if r.pass { "ok" } else { "FAIL" }
            );
        }
        println!();
        for c in &checks {
            println!("{:<16} {}", c.model, c.description);
        }
        println!(
            "\nerrors: smallest relative error of a central finite difference over steps 1e-1..1e-11 \
             (tolerance {:.0e}); slopes: log-log slope for steps >= 1e-3 (2 = truncation-dominated, \
             NaN or ~0 = exact already); asym: Hessian and third-derivative symmetry.",
            params.tolerance
        );
    }
    Ok(if all_pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The suite's burn networks.
#[cfg(feature = "burn")]
fn network_models(networks: &[SuiteNetwork], seed: u64) -> Result<Vec<SuiteModel>> {
    Ok(networks
        .iter()
        .map(|&n| fullbatch::deep::bea_suite::suite_network(n, seed))
        .collect::<fullbatch::Result<_>>()?)
}

#[cfg(not(feature = "burn"))]
fn network_models(networks: &[SuiteNetwork], _seed: u64) -> Result<Vec<SuiteModel>> {
    assert!(networks.is_empty(), "bea checks for networks before it builds models");
    Ok(Vec::new())
}

fn bea(
    kinds: Vec<ModelKind>,
    networks: Vec<SuiteNetwork>,
    no_fashion_mnist: bool,
    params: SuiteParams,
    json: bool,
) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    #[cfg(not(feature = "burn"))]
    if let Some(network) = networks.first() {
        return without_burn(&format!("bea --network {}", network.name()));
    }
    let only_networks = kinds.is_empty() && !networks.is_empty();
    let kinds = if kinds.is_empty() && !only_networks {
        vec![ModelKind::Quadratic, ModelKind::Logistic, ModelKind::MlpTanhMse]
    } else {
        kinds
    };
    let no_fashion_mnist = no_fashion_mnist || only_networks;
    let dir = fashion_mnist::default_dir();
    let with_fashion = !no_fashion_mnist && fashion_mnist::available(&dir);
    if !no_fashion_mnist && !with_fashion {
        eprintln!(
            "note: Fashion-MNIST not found in {} (install dataset-fashion-mnist or set {}); running the synthetic models only",
            dir.display(),
            fashion_mnist::DIR_ENV
        );
    }
    let mut models = suite_models(&kinds, with_fashion, params.seed)?;
    models.extend(network_models(&networks, params.seed)?);
    let bar = ProgressBar::new_spinner();
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let rows = run_suite(&models, &params, |label| bar.set_message(label.to_string()))?;
    bar.finish_and_clear();
    let all_pass = rows.iter().all(|r| r.pass);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<24} {:<18} {:>11} {:>9} {:>10} {:>9} {:>9}  result",
            "check", "model", "measured", "stderr", "expected", "tolerance", "ref err"
        );
        for r in &rows {
            println!(
                "{:<24} {:<18} {:>11.5} {:>9.1e} {:>10.5} {:>9.1e} {:>9.0e}  {}",
                r.check,
                r.model,
                r.measured,
                r.stderr,
                r.expected,
                r.tolerance,
                r.reference_error_ratio,
                if r.pass { "ok" } else { "FAIL" }
            );
        }
        println!(
            "\nsteps h in [{}, {}] x 1/rate ({} sizes; rate = max(lambda_max, |H^2 g|/|Hg|, |D3L[g,g]|/|Hg|); ranges move down until the errors follow one power law); reference flows: Dormand-Prince 5(4), rtol {:.0e}; \
             'ref err' = reference error bound / measured effect (must be < 1e-2).",
            params.h_min, params.h_max, params.steps, params.reference.rtol
        );
        println!(
            "{} of {} checks passed in {:.1} s",
            rows.iter().filter(|r| r.pass).count(),
            rows.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if all_pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Largest dimension for which the dense Hessian and LAPACK's eigh are computed as a check.
const DENSE_LIMIT: usize = 5000;

/// The options of `fullbatch sharpness`.
struct SharpnessArgs {
    model: ModelKind,
    train_steps: usize,
    lr: f64,
    k: usize,
    which: Which,
    tol: f64,
    seed: u64,
    json: bool,
    export: Option<PathBuf>,
}

#[derive(Serialize)]
struct SharpnessReport {
    model: String,
    seed: u64,
    train_steps: usize,
    lr: f64,
    dim: usize,
    loss: f64,
    which: Which,
    lanczos: Eigenpairs,
    dense_top: Option<Vec<f64>>,
    power_iteration: Eigenpairs,
    trace: TraceEstimate,
    dense_trace: Option<f64>,
}

fn sharpness(args: SharpnessArgs) -> Result<ExitCode> {
    let SharpnessArgs { model, train_steps, lr, k, which, tol, seed, json, export } = args;
    let inst = model.instance(seed)?;
    let obj = inst.objective();
    let params = OptimizerParams { lr, steps: train_steps, seed, ..OptimizerParams::default() };
    let (theta, _) = gradient_descent(obj, inst.theta0.view(), &params)?;
    let op = obj.hessian_at(theta.view());
    let lanczos_result = lanczos(&*op, &LanczosParams { k, which, tol, seed, ..LanczosParams::default() })?;
    let power = power_iteration(&*op, &PowerParams { k, seed, ..PowerParams::default() })?;
    let trace = hutch_plus_plus(&*op, 3 * (obj.dim() / 3).clamp(2, 100), seed)?;
    let (dense_top, dense_trace) = if obj.dim() <= DENSE_LIMIT {
        let h = obj.hessian(theta.view());
        let (mut values, _) = h.eigh(UPLO::Lower)?;
        let key = |x: f64| match which {
            Which::Largest => -x,
            Which::Smallest => x,
            Which::LargestMagnitude => -x.abs(),
        };
        values.as_slice_mut().expect("fresh array").sort_by(|a, b| key(*a).total_cmp(&key(*b)));
        (Some(values.iter().take(k).cloned().collect::<Vec<_>>()), Some(h.diag().sum()))
    } else {
        (None, None)
    };
    let report = SharpnessReport {
        model: model.name().into(),
        seed,
        train_steps,
        lr,
        dim: obj.dim(),
        loss: obj.loss(theta.view()),
        which,
        lanczos: lanczos_result,
        dense_top,
        power_iteration: power,
        trace,
        dense_trace,
    };
    if let Some(dir) = &export {
        let vectors = [("eigenvectors", report.lanczos.vectors.view())];
        let files = export_model(&inst.model, theta.view(), serde_json::to_value(&report)?, &vectors, dir)?;
        eprintln!("exported {} files to {}", files.len(), dir.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} (dim {}), after {} GD steps at lr {}: loss {:.6e}",
            report.model, report.dim, train_steps, lr, report.loss
        );
        println!(
            "\n{:>3} {:>22} {:>10} {:>22} {:>22} {:>10}",
            "i", "Lanczos", "residual", "dense eigh", "power (|largest|)", "residual"
        );
        for i in 0..report.lanczos.values.len() {
            let dense = report.dense_top.as_ref().map_or("-".to_string(), |d| format!("{:.15e}", d[i]));
            let (pv, pr) = (report.power_iteration.values.get(i), report.power_iteration.residuals.get(i));
            println!(
                "{:>3} {:>22.15e} {:>10.1e} {:>22} {:>22.15e} {:>10.1e}",
                i,
                report.lanczos.values[i],
                report.lanczos.residuals[i],
                dense,
                pv.copied().unwrap_or(f64::NAN),
                pr.copied().unwrap_or(f64::NAN)
            );
        }
        println!(
            "\nLanczos: {} operator applications, {} restarts, converged: {}; power iteration (PyHessian, 1e-3): {} applications",
            report.lanczos.operator_applications,
            report.lanczos.restarts,
            report.lanczos.converged,
            report.power_iteration.operator_applications
        );
        print!(
            "trace (Hutch++, {} applications): {:.6e} ± {:.1e}",
            report.trace.applications, report.trace.estimate, report.trace.stderr
        );
        match report.dense_trace {
            Some(t) => println!("; exact {t:.6e}"),
            None => println!(),
        }
    }
    Ok(if report.lanczos.converged { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The answer of a burn command in a build without burn: which feature to build with (exit 2).
#[cfg(not(feature = "burn"))]
fn without_burn(command: &str) -> Result<ExitCode> {
    eprintln!(
        "error: `fullbatch {command}` needs the burn half, which this binary was built without: build with \
         `cargo build --release --features burn` (CPU), `--features cuda` (GPU, CUDA) or `--features tch` \
         (LibTorch); docs/gpu.md says how"
    );
    Ok(ExitCode::from(2))
}

fn main() -> Result<ExitCode> {
    // SAFETY: first thing in main: no BLAS call or other thread exists yet.
    unsafe { fullbatch::blas::select_native_kernels() };
    match Cli::parse().command {
        #[cfg(feature = "burn")]
        Command::Train(args) => burn_cmd::train(*args),
        #[cfg(feature = "burn")]
        Command::Device { command } => burn_cmd::device(command),
        #[cfg(not(feature = "burn"))]
        Command::Train { .. } => without_burn("train"),
        #[cfg(feature = "burn")]
        Command::Reproduce(args) => reproduce_cmd::reproduce(*args),
        #[cfg(not(feature = "burn"))]
        Command::Reproduce { .. } => without_burn("reproduce"),
        #[cfg(not(feature = "burn"))]
        Command::Device { .. } => without_burn("device"),
        Command::Models { models: kinds, seed, json } => models(kinds, seed, json),
        Command::Toy(args) => toy_cmd::toy(args),
        Command::Sharpness { model, train_steps, lr, k, which, tol, seed, json, export, saved } => match &saved.run {
            #[cfg(feature = "burn")]
            Some(_) => network_sharpness_cmd::network_sharpness(network_sharpness_cmd::NetworkSharpnessArgs {
                k: k.unwrap_or(1),
                which,
                tol: tol.unwrap_or(fullbatch::deep::config::DEFAULT_TOL),
                seed,
                json,
                export,
                saved,
            }),
            #[cfg(not(feature = "burn"))]
            Some(_) => without_burn("sharpness --run"),
            None => sharpness(SharpnessArgs {
                model,
                train_steps,
                lr,
                k: k.unwrap_or(3),
                which,
                tol: tol.unwrap_or(1e-10),
                seed,
                json,
                export,
            }),
        },
        Command::Bea {
            models: kinds,
            networks,
            no_fashion_mnist,
            h_max,
            h_min,
            steps,
            minibatches,
            orderings,
            beta,
            seed,
            json,
        } => {
            let params = SuiteParams {
                h_max,
                h_min,
                steps,
                minibatches,
                sampled_orderings: orderings,
                beta,
                seed,
                ..SuiteParams::default()
            };
            bea(kinds, networks, no_fashion_mnist, params, json)
        }
    }
}

#[cfg(feature = "burn")]
mod burn_cmd;
#[cfg(feature = "burn")]
mod network_sharpness_cmd;
#[cfg(feature = "burn")]
mod reproduce_cmd;
mod toy_cmd;
