//! `figures`: draws every figure of the toolkit into `figures/` (PNG and SVG) and writes the
//! index `figures/README.md`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use fullbatch::Choice;
use fullbatch::bea::{GdFlow, SuiteParams, expansion_rate, local_order_curve};
use fullbatch::data;
use fullbatch::derivative_check::{DerivativeCheckParams, check_model};
use fullbatch::experiment::{ExperimentConfig, FIGURE_EXPERIMENTS, read_log, run_cached};
use fullbatch::figures::bea_coefficients::measure_coefficients;
use fullbatch::figures::bea_networks::read_network_coefficients;
use fullbatch::figures::cifar_results::collect_cifar_runs;
use fullbatch::figures::ledger::collect_ledger_runs;
use fullbatch::figures::network_sharpness::read_network_sharpness;
use fullbatch::figures::{FIGURES, FigureInputs, SharpnessFigureData, ToyExperimentData};
use fullbatch::models::{self, Activation, ModelKind, OutputLoss};
use fullbatch::objective::Objective;
use fullbatch::optim::{OptimizerParams, gradient_descent};
use fullbatch::plot::render;
use fullbatch::sharpness::trace::{DensityParams, spectral_density};
use fullbatch::sharpness::{LanczosParams, PowerParams, lanczos, power_iteration};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray_linalg::{Eigh, UPLO};

#[derive(Parser)]
#[command(name = "figures", about = "Draw the toolkit's figures (PNG and SVG)")]
struct Cli {
    /// Output directory.
    #[arg(long, default_value = "figures")]
    out: PathBuf,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Toy-experiment configs (run when their results are missing).
    #[arg(long, default_value = "experiments/toy")]
    configs: PathBuf,
    /// Cache of experiment results, keyed by config hash.
    #[arg(long, default_value = "experiments/results/toy")]
    results: PathBuf,
    /// Run directories of `fullbatch train` (each subdirectory holding a run.json) for the
    /// CIFAR-10 results chart; a missing directory means no runs.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Run directories of `fullbatch train` whose regulariser ledger is drawn (besides those
    /// under `--runs`); the committed small CPU runs by default.
    #[arg(long, default_value = "experiments/results/ledger")]
    ledger_runs: PathBuf,
    /// The backward-error suite's rows on burn networks (`fullbatch bea --network ... --json`,
    /// a build with the `burn` feature); a missing file means none.
    #[arg(long, default_value = "experiments/results/bea/networks-seed0.json")]
    bea_networks: PathBuf,
    /// A `fullbatch train` run with sharpness measurements (a missing directory means none).
    #[arg(long, default_value = "experiments/results/sharpness/small-synthetic-fb")]
    sharpness_run: PathBuf,
    /// `scripts/lambda_vs_images.sh` output (a missing file means none).
    #[arg(long, default_value = "experiments/results/sharpness/lambda-vs-images.json")]
    sharpness_images: PathBuf,
}

/// The sharpness figure's model: a tanh MLP 20-40-4 with cross-entropy on 256 teacher-student
/// examples, after 300 GD steps at lr 0.5 (1,004 parameters: small enough for the dense eigh).
fn sharpness_data(seed: u64) -> Result<SharpnessFigureData> {
    let data = data::teacher_student_classes(256, 20, 10, 4, seed)?;
    let net = models::mlp(&data, &[40], 4, Activation::Tanh, OutputLoss::SoftmaxCrossEntropy)?;
    let train = OptimizerParams { lr: 0.5, steps: 300, seed, ..OptimizerParams::default() };
    let (theta, _) = gradient_descent(&net, net.initial_parameters(seed).view(), &train)?;
    let (mut exact, _) = net.hessian(theta.view()).eigh(UPLO::Lower)?;
    exact.as_slice_mut().context("contiguous eigenvalues")?.sort_by(|a, b| b.total_cmp(a));
    let op = net.hessian_at(theta.view());
    let k = 10;
    Ok(SharpnessFigureData {
        model: format!("a tanh MLP 20-40-4 ({} parameters) after 300 GD steps", net.dim()),
        exact: exact.to_vec(),
        density: spectral_density(&*op, &DensityParams { seed, ..DensityParams::default() })?,
        lanczos: lanczos(&*op, &LanczosParams { k, seed, ..LanczosParams::default() })?,
        power: power_iteration(&*op, &PowerParams { k, seed, ..PowerParams::default() })?,
    })
}

fn main() -> Result<()> {
    // SAFETY: first thing in main: no BLAS call or other thread exists yet.
    let blas = unsafe { fullbatch::blas::select_native_kernels() };
    let cli = Cli::parse();
    if blas.detected != blas.in_use {
        println!(
            "OpenBLAS: {} (kernels {} instead of {})",
            blas.reason,
            blas.in_use.as_deref().unwrap_or("?"),
            blas.detected.as_deref().unwrap_or("?")
        );
    }
    let started = std::time::Instant::now();
    let kinds = ModelKind::ALL.to_vec();
    let bar = ProgressBar::new(kinds.len() as u64)
        .with_style(ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")?.progress_chars("=> "));
    bar.set_prefix("derivatives");
    let params = DerivativeCheckParams { seed: cli.seed, ..DerivativeCheckParams::default() };
    let mut reports = Vec::new();
    for kind in kinds {
        bar.set_message(kind.name());
        reports.push((kind.name().to_string(), check_model(kind, cli.seed, &params)?));
        bar.inc(1);
    }
    bar.finish_and_clear();

    bar.set_prefix("bea orders");
    let bea_kinds = [ModelKind::Quadratic, ModelKind::Logistic, ModelKind::MlpTanhMse];
    bar.set_length(bea_kinds.len() as u64);
    bar.set_position(0);
    let suite = SuiteParams { seed: cli.seed, ..SuiteParams::default() };
    let mut bea_curves = Vec::new();
    for kind in bea_kinds {
        bar.set_message(kind.name());
        let inst = kind.instance(cli.seed)?;
        let obj = inst.objective();
        let tau = 1.0 / expansion_rate(obj, inst.theta0.view());
        let curves = [GdFlow::Plain, GdFlow::FirstOrder, GdFlow::SecondOrder]
            .into_iter()
            .map(|flow| Ok((flow, local_order_curve(obj, inst.theta0.view(), flow, tau, &suite)?)))
            .collect::<Result<Vec<_>>>()?;
        bea_curves.push((kind.name().to_string(), tau, curves));
        bar.inc(1);
    }
    bar.finish_and_clear();

    bar.set_prefix("bea coeffs");
    bar.set_length(1);
    bar.set_position(0);
    bar.set_message("7 toy models");
    let coefficients = measure_coefficients(cli.seed)?;
    bar.inc(1);
    bar.finish_and_clear();

    bar.set_prefix("sharpness");
    bar.set_length(1);
    bar.set_position(0);
    bar.set_message("MLP 20-40-4");
    let sharpness = sharpness_data(cli.seed)?;
    bar.inc(1);
    bar.finish_and_clear();

    // Toy experiments: run what is missing (cached by config hash), then draw.
    let mut experiments = Vec::new();
    for name in FIGURE_EXPERIMENTS {
        let path = cli.configs.join(format!("{name}.toml"));
        let config = ExperimentConfig::load(&path)?;
        let bar = ProgressBar::new(1).with_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} runs {msg} ({elapsed}, eta {eta})")?
                .progress_chars("=> "),
        );
        bar.set_prefix(name);
        let run_started = std::time::Instant::now();
        let (results, dir, cached) = run_cached(&config, &cli.results, &mut |done, total, msg| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(msg.to_string());
            bar.suspend(|| {
                eprintln!(
                    "  {name}: {done}/{total} runs done at {:.0} s; next: {msg}",
                    run_started.elapsed().as_secs_f64()
                )
            });
        })?;
        bar.finish_and_clear();
        println!(
            "{name}: {} ({}, {:.0} s when run, data: {})",
            dir.display(),
            if cached { "cached" } else { "ran now" },
            results.seconds,
            results.data_used
        );
        let log = read_log(&dir)?;
        experiments.push(ToyExperimentData { results, log });
    }

    let Ok([generalisation, edge_of_stability, modified_flow, lr_sweep]) =
        <[ToyExperimentData; 4]>::try_from(experiments)
    else {
        anyhow::bail!("four toy experiments expected");
    };
    let cifar_runs = collect_cifar_runs(&cli.runs)?;
    println!("CIFAR-10 runs found under {}: {}", cli.runs.display(), cifar_runs.len());
    let ledger_runs = collect_ledger_runs(&[cli.ledger_runs.clone(), cli.runs.clone()])?;
    println!(
        "runs with a regulariser ledger under {} and {}: {}",
        cli.ledger_runs.display(),
        cli.runs.display(),
        ledger_runs.len()
    );
    let network_coefficients = read_network_coefficients(&cli.bea_networks)?;
    println!(
        "backward-error rows on burn networks in {}: {}",
        cli.bea_networks.display(),
        network_coefficients.rows.len()
    );
    let network_sharpness = read_network_sharpness(&cli.sharpness_run, &cli.sharpness_images)?;
    let inputs = FigureInputs {
        derivative_reports: reports,
        bea_orders: bea_curves,
        coefficients,
        network_coefficients,
        sharpness,
        generalisation,
        edge_of_stability,
        modified_flow,
        lr_sweep,
        cifar_runs,
        ledger_runs,
        network_sharpness,
    };
    for entry in &FIGURES {
        for path in render(&(entry.build)(&inputs), &cli.out.join(entry.stem))? {
            println!("wrote {}", path.display());
        }
    }

    let mut index = String::from(
        "# Figures\n\nDrawn by `cargo run --release --bin figures` (or `make figures`); each as PNG and SVG.\n\n",
    );
    for e in &FIGURES {
        writeln!(index, "- `{0}.png` / `{0}.svg`: {1}.", e.stem, e.shows)?;
    }
    let index_path = cli.out.join("README.md");
    let tmp = cli.out.join("README.md.tmp");
    std::fs::write(&tmp, index).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &index_path).with_context(|| format!("writing {}", index_path.display()))?;
    println!("wrote {}", index_path.display());
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
