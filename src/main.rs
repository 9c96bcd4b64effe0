//! `fullbatch`: the command-line entry to the toolkit.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fullbatch::derivative_check::{DerivativeCheckParams, DerivativeReport, check_model};
use fullbatch::models::ModelKind;
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "fullbatch",
    version,
    about = "Numerical checks of why SGD generalises (Geiping et al., ICLR 2022)"
)]
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
    let kinds = if kinds.is_empty() {
        ModelKind::all()
    } else {
        kinds
    };
    let params = DerivativeCheckParams {
        seed,
        ..DerivativeCheckParams::default()
    };
    let mut checks = Vec::new();
    for kind in kinds {
        let report = check_model(kind, seed, &params)?;
        let description = clap::ValueEnum::to_possible_value(&kind)
            .and_then(|v| v.get_help().map(|h| h.to_string()))
            .unwrap_or_default();
        checks.push(ModelCheck {
            model: kind.name(),
            description,
            seed,
            report,
        });
    }
    let all_pass = checks.iter().all(|c| c.report.pass);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        println!(
            "{:<16} {:>5} {:>10} {:>10} {:>7} {:>7} {:>10} {:>10}  {}",
            "model",
            "dim",
            "grad err",
            "hvp err",
            "g slope",
            "H slope",
            "H asym",
            "D3 asym",
            "result"
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
    Ok(if all_pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Models {
            models: kinds,
            seed,
            json,
        } => models(kinds, seed, json),
    }
}
