//! `fullbatch`: the command-line entry to the toolkit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fullbatch::bea::{SuiteParams, run_suite, suite_models};
use fullbatch::data::fashion_mnist;
use fullbatch::derivative_check::{DerivativeCheckParams, DerivativeReport, check_model};
use fullbatch::export::export_model;
use fullbatch::models::ModelKind;
use fullbatch::optim::{OptimizerParams, gradient_descent};
use fullbatch::sharpness::trace::{TraceEstimate, hutch_plus_plus};
use fullbatch::sharpness::{Eigenpairs, HessianOperator, LanczosParams, PowerParams, Which, lanczos, power_iteration};
use indicatif::ProgressBar;
use ndarray_linalg::{Eigh, UPLO};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "fullbatch", version, about = "Numerical checks of why SGD generalises (Geiping et al., ICLR 2022)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the toy models and check their exact derivatives against finite differences.
    Models {
        /// Only these models (repeatable); default: all.
        #[arg(long = "model", value_enum)]
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
        #[arg(long, value_enum, default_value = "mlp-tanh-mse")]
        model: ModelKind,
        /// Full-batch GD steps before measuring.
        #[arg(long, default_value_t = 0)]
        train_steps: usize,
        /// Learning rate of those steps.
        #[arg(long, default_value_t = 0.1)]
        lr: f64,
        /// Number of eigenvalues.
        #[arg(long, default_value_t = 3)]
        k: usize,
        /// Which end of the spectrum Lanczos computes (power iteration always finds the largest
        /// magnitudes, as in PyHessian).
        #[arg(long, value_enum, default_value = "largest")]
        which: Which,
        /// Relative residual tolerance of Lanczos.
        #[arg(long, default_value_t = 1e-10)]
        tol: f64,
        /// Seed of data, start point and random vectors.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also write the model, its data, the point and these results as .npy + JSON into
        /// this directory (check them with `python3 scripts/check_export.py DIR`).
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
    },
    /// Backward-error analysis: measure the orders and coefficients of the modified flows of
    /// GD, SGD and momentum on toy models, and compare them with the theory.
    Bea {
        /// Models (repeatable); default: quadratic, logistic, mlp-tanh-mse.
        #[arg(long = "model", value_enum)]
        models: Vec<ModelKind>,
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
    /// Train a ResNet as a configuration file says (full batch or SGD), into a run directory
    /// with a JSONL log and checkpoints; or, with --check-gradient / --bench, the device checks.
    #[cfg(feature = "burn")]
    Train(Box<train_cmd::TrainArgs>),
}

#[derive(Serialize)]
struct ModelCheck {
    model: String,
    description: String,
    seed: u64,
    #[serde(flatten)]
    report: DerivativeReport,
}

fn models(kinds: Vec<ModelKind>, seed: u64, json: bool) -> Result<ExitCode> {
    let kinds = if kinds.is_empty() { ModelKind::all() } else { kinds };
    let params = DerivativeCheckParams { seed, ..DerivativeCheckParams::default() };
    let mut checks = Vec::new();
    for kind in kinds {
        let report = check_model(kind, seed, &params)?;
        let description = clap::ValueEnum::to_possible_value(&kind)
            .and_then(|v| v.get_help().map(|h| h.to_string()))
            .unwrap_or_default();
        checks.push(ModelCheck { model: kind.name(), description, seed, report });
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

#[allow(clippy::too_many_arguments)]
fn bea(kinds: Vec<ModelKind>, no_fashion_mnist: bool, params: SuiteParams, json: bool) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let kinds =
        if kinds.is_empty() { vec![ModelKind::Quadratic, ModelKind::Logistic, ModelKind::MlpTanhMse] } else { kinds };
    let dir = fashion_mnist::default_dir();
    let with_fashion = !no_fashion_mnist && fashion_mnist::available(&dir);
    if !no_fashion_mnist && !with_fashion {
        eprintln!(
            "note: Fashion-MNIST not found in {} (install dataset-fashion-mnist or set {}); running the synthetic models only",
            dir.display(),
            fashion_mnist::DIR_ENV
        );
    }
    let models = suite_models(&kinds, with_fashion, params.seed)?;
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
    let op = HessianOperator { objective: obj, theta: theta.clone() };
    let lanczos_result = lanczos(&op, &LanczosParams { k, which, tol, seed, ..LanczosParams::default() })?;
    let power = power_iteration(&op, &PowerParams { k, seed, ..PowerParams::default() })?;
    let trace = hutch_plus_plus(&op, 3 * (obj.dim() / 3).clamp(2, 100), seed)?;
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
        model: model.name(),
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

fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        #[cfg(feature = "burn")]
        Command::Train(args) => train_cmd::train(*args),
        Command::Models { models: kinds, seed, json } => models(kinds, seed, json),
        Command::Sharpness { model, train_steps, lr, k, which, tol, seed, json, export } => {
            sharpness(SharpnessArgs { model, train_steps, lr, k, which, tol, seed, json, export })
        }
        Command::Bea {
            models: kinds,
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
            bea(kinds, no_fashion_mnist, params, json)
        }
    }
}

/// `fullbatch train`: the burn half's command (feature `burn`; CUDA with feature `cuda`).
#[cfg(feature = "burn")]
mod train_cmd {
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::atomic::AtomicBool;

    use anyhow::{Context, Result, bail};
    use burn::tensor::backend::AutodiffBackend;
    use fullbatch::Error;
    use fullbatch::deep::config::{RunConfig, SharpnessConfig};
    use fullbatch::deep::run::{self, RunOptions};

    /// The backend to run on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum BackendChoice {
        /// burn's Flex CPU backend (f32).
        Cpu,
        /// burn's CUDA backend (f32, TF32 tensor cores; needs the `cuda` feature).
        Cuda,
    }

    /// The options of `fullbatch train`.
    #[derive(Debug, clap::Args)]
    pub struct TrainArgs {
        /// The run configuration (TOML, see experiments/cifar10/). With --resume it may be left
        /// out: the run directory's config.toml is used.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The data directory: CIFAR-10 binary version, or Fashion-MNIST idx files (default:
        /// FULLBATCH_CIFAR10 / FULLBATCH_FASHION_MNIST / /usr/share/datasets/fashion-mnist).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// The run directory (default: runs/NAME, NAME from the configuration).
        #[arg(long, value_name = "RUN_DIR")]
        out: Option<PathBuf>,
        /// Continue the run in --out from its latest checkpoint (same backend: bit-for-bit).
        #[arg(long)]
        resume: bool,
        /// Stop with a checkpoint once this many steps (epochs in SGD mode) are done.
        #[arg(long, value_name = "N")]
        max_steps: Option<usize>,
        /// The backend (default: cuda when built with the `cuda` feature, else cpu).
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Instead of training: compare one minibatch gradient of a ResNet-18 on --backend with
        /// the CPU's (same weights and images); print JSON; fail above --check-tolerance.
        #[arg(long)]
        check_gradient: bool,
        /// Width of the gradient-check ResNet-18.
        #[arg(long, default_value_t = 16)]
        check_width: usize,
        /// Images in the gradient-check batch (32x32).
        #[arg(long, default_value_t = 16)]
        check_batch: usize,
        /// Tolerance on the relative L2 difference of the gradient check.
        #[arg(long, default_value_t = 1e-2)]
        check_tolerance: f64,
        /// Instead of training: time training steps (forward + backward + SGD update) of a
        /// ResNet-18 on --backend after a warm-up; print JSON.
        #[arg(long)]
        bench: bool,
        /// Width of the benchmarked ResNet-18.
        #[arg(long, default_value_t = 64)]
        bench_width: usize,
        /// Images per benchmark step (32x32).
        #[arg(long, default_value_t = 128)]
        bench_batch: usize,
        /// Untimed warm-up steps (autotune, kernel compilation).
        #[arg(long, default_value_t = 15)]
        bench_warmup: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 50)]
        bench_iters: usize,
        /// Also write the JSON of --check-gradient / --bench to this file.
        #[arg(long, value_name = "FILE")]
        json_out: Option<PathBuf>,
        /// Measure lambda_max of the Hessian every N steps (epochs in SGD mode) and at the last
        /// one: sets `[sharpness] every = N` of the configuration (its other keys, or their
        /// defaults, stay). It becomes part of the run's stored configuration.
        #[arg(long, value_name = "N")]
        sharpness_every: Option<usize>,
    }

    /// Set by SIGINT/SIGTERM: the run saves a checkpoint after the current step and exits.
    static STOP: AtomicBool = AtomicBool::new(false);

    /// Ctrl-C (SIGINT) and SIGTERM set [`STOP`]; a second one exits at once (status 130).
    fn install_stop_handler() -> Result<()> {
        ctrlc::set_handler(|| {
            if STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::process::exit(130);
            }
        })?;
        Ok(())
    }

    fn print_json(value: &impl serde::Serialize, out: Option<&Path>) -> Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        println!("{text}");
        if let Some(path) = out {
            std::fs::write(path, format!("{text}\n")).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    fn default_backend() -> BackendChoice {
        if cfg!(feature = "cuda") { BackendChoice::Cuda } else { BackendChoice::Cpu }
    }

    /// Runs `fullbatch train`.
    pub fn train(args: TrainArgs) -> Result<ExitCode> {
        match args.backend.unwrap_or_else(default_backend) {
            BackendChoice::Cpu => {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let device = format!("cpu ({threads} threads)");
                on_backend::<fullbatch::deep::CpuAutodiff>(args, &Default::default(), "flex-f32", &device)
            }
            #[cfg(feature = "cuda")]
            BackendChoice::Cuda => {
                let name = std::process::Command::new("nvidia-smi")
                    .args(["--query-gpu=name", "--format=csv,noheader", "-i", "0"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_else(|| "cuda device 0".into());
                on_backend::<fullbatch::deep::CudaAutodiff>(args, &Default::default(), "cuda-f32", &name)
            }
            #[cfg(not(feature = "cuda"))]
            BackendChoice::Cuda => bail!("this binary was built without the `cuda` feature"),
        }
    }

    fn on_backend<B: AutodiffBackend>(
        args: TrainArgs,
        device: &B::Device,
        backend: &str,
        desc: &str,
    ) -> Result<ExitCode> {
        if args.check_gradient {
            let cpu = burn::backend::flex::FlexDevice;
            let report = run::gradient_agreement::<B, fullbatch::deep::CpuAutodiff>(
                device,
                &cpu,
                args.check_width,
                args.check_batch,
                32,
                args.check_tolerance,
                0,
            )?;
            let value =
                serde_json::json!({ "backend": backend, "device": desc, "reference": "flex-f32", "gradient": report });
            print_json(&value, args.json_out.as_deref())?;
            return Ok(if report.pass { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        if args.bench {
            let report = run::throughput::<B>(
                device,
                args.bench_width,
                args.bench_batch,
                32,
                args.bench_warmup,
                args.bench_iters,
                0,
            )?;
            let value = serde_json::json!({ "backend": backend, "device": desc, "throughput": report });
            print_json(&value, args.json_out.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut config = match (&args.config, args.resume, &args.out) {
            (Some(path), _, _) => RunConfig::load(path)?,
            (None, true, Some(out)) => run::stored_config(out)?,
            _ => bail!("--config FILE is needed (or --resume with --out RUN_DIR)"),
        };
        if let Some(every) = args.sharpness_every {
            config.sharpness = Some(match config.sharpness.take() {
                Some(s) => SharpnessConfig { every, ..s },
                None => SharpnessConfig::every(every),
            });
            config.validate()?;
        }
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
        install_stop_handler()?;
        let options = RunOptions {
            data_dir: args.data.clone(),
            resume: args.resume,
            max_steps: args.max_steps,
            stop: Some(&STOP),
            progress: !args.no_progress,
            report_evaluations: true,
            device: desc.to_string(),
            backend: backend.to_string(),
        };
        eprintln!("run {} ({backend}, {desc}) in {}", config.name, out.display());
        match run::run::<B>(&config, &out, device, &options) {
            Ok(summary) => {
                if let Some(last) = &summary.last {
                    eprintln!(
                        "{} of {} steps; last: train loss {:.4}, test acc {}",
                        summary.steps_done,
                        summary.total_steps,
                        last.train_loss,
                        last.test_acc.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a))
                    );
                }
                if summary.stopped_early {
                    eprintln!("stopped early with a checkpoint; continue with --resume --out {}", out.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ Error::Diverged { .. }) => {
                let kept = match run::latest_checkpoint(&out) {
                    Ok(Some((path, step))) => format!("the last good checkpoint is {} (step {step})", path.display()),
                    _ => "no checkpoint was written".into(),
                };
                eprintln!("error: {e}; stopped, {kept}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        }
    }
}
