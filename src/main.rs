//! `fullbatch`: the command-line entry to the toolkit.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fullbatch::bea::{SuiteParams, run_suite, suite_models};
use fullbatch::data::fashion_mnist;
use fullbatch::derivative_check::{DerivativeCheckParams, DerivativeReport, check_model};
use fullbatch::models::ModelKind;
use indicatif::ProgressBar;
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

fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Models { models: kinds, seed, json } => models(kinds, seed, json),
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
