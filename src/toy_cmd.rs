//! `fullbatch toy`: run toy experiments from their configs and print what they found.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use fullbatch::experiment::{ExperimentConfig, ExperimentResults, RunResult, VariantSummary, run_cached};
use fullbatch::stats::mean_and_stderr;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Arguments of `fullbatch toy`.
#[derive(Args)]
pub struct ToyArgs {
    /// Experiment configs (TOML, as in experiments/toy/).
    #[arg(required = true, value_name = "CONFIG")]
    configs: Vec<PathBuf>,
    /// Cache of results, keyed by config hash: a config already run there is read, not rerun.
    #[arg(long, default_value = "experiments/results/toy")]
    results: PathBuf,
    /// Print one JSON object per config and line (results directory, commit, per-variant
    /// summaries and paired differences) instead of tables.
    #[arg(long)]
    json: bool,
}

/// One variant against the config's first variant, paired by seed.
#[derive(Serialize)]
struct PairedDifference {
    variant: String,
    /// Seeds both ran without diverging.
    seeds: usize,
    /// (mean, standard error) over those seeds of this variant's final test accuracy minus the
    /// first variant's.
    test_accuracy: (f64, f64),
    /// The same for the final test loss.
    test_loss: (f64, f64),
    /// The same for the final $\lambda_{\max}$, where tracked.
    lambda_max: Option<(f64, f64)>,
}

/// What `--json` prints per config (the runs themselves are in the results directory).
#[derive(Serialize)]
struct ToyReport<'a> {
    config: String,
    results_dir: String,
    cached: bool,
    #[serde(skip)]
    results: &'a ExperimentResults,
    commit: &'a str,
    data_used: &'a str,
    seconds: f64,
    summary: &'a [VariantSummary],
    versus_first_variant: Vec<PairedDifference>,
}

/// Differences of each variant's final numbers from the first variant's, seed by seed.
fn paired_differences(results: &ExperimentResults) -> Vec<PairedDifference> {
    let Some(reference) = results.config.variants.first() else { return Vec::new() };
    let finished = |label: &str| -> Vec<&RunResult> {
        results.runs.iter().filter(|r| r.variant == label && r.diverged.is_none()).collect()
    };
    let base = finished(&reference.label);
    results.config.variants[1..]
        .iter()
        .map(|v| {
            let pairs: Vec<(&RunResult, &RunResult)> = finished(&v.label)
                .into_iter()
                .filter_map(|r| base.iter().find(|b| b.seed == r.seed).map(|b| (r, *b)))
                .collect();
            let diff = |f: &dyn Fn(&RunResult) -> f64| {
                mean_and_stderr(&pairs.iter().map(|(r, b)| f(r) - f(b)).collect::<Vec<_>>())
            };
            let lambda: Option<Vec<f64>> =
                pairs.iter().map(|(r, b)| Some(r.last.lambda_max? - b.last.lambda_max?)).collect();
            PairedDifference {
                variant: v.label.clone(),
                seeds: pairs.len(),
                test_accuracy: diff(&|r| r.last.test_accuracy),
                test_loss: diff(&|r| r.last.test_loss),
                lambda_max: lambda.filter(|l| !l.is_empty()).map(|l| mean_and_stderr(&l)),
            }
        })
        .collect()
}

fn pm(x: (f64, f64), digits: usize) -> String {
    format!("{:.*} ± {:.*}", digits, x.0, digits, x.1)
}

fn print_tables(report: &ToyReport) {
    let r = report.results;
    println!(
        "\n{} ({}; {}, {:.0} s when run; {} seeds)",
        r.config.name,
        report.results_dir,
        if report.cached { "cached" } else { "ran now" },
        r.seconds,
        r.config.seeds.len()
    );
    println!("data: {}", r.data_used);
    println!(
        "{:<40} {:>18} {:>18} {:>18} {:>16} {:>16} {:>9}",
        "variant", "train loss", "test accuracy", "test loss", "lambda_max", "penalised lmax", "diverged"
    );
    let opt = |x: Option<(f64, f64)>| x.map_or_else(|| "-".to_string(), |x| pm(x, 3));
    for s in &r.summary {
        let diverged = r.runs.iter().filter(|run| run.variant == s.variant && run.diverged.is_some()).count();
        println!(
            "{:<40} {:>18} {:>18} {:>18} {:>16} {:>16} {:>9}",
            s.variant,
            format!("{:.2e} ± {:.0e}", s.train_loss.0, s.train_loss.1),
            pm(s.test_accuracy, 4),
            pm(s.test_loss, 4),
            opt(s.lambda_max),
            opt(s.lambda_max_penalised),
            diverged
        );
    }
    if let Some(reference) = r.config.variants.first() {
        println!("\npaired by seed, minus \"{}\" (mean ± standard error; z = mean / se):", reference.label);
        for d in &report.versus_first_variant {
            let z = |x: (f64, f64)| if x.1 > 0.0 { format!("{:+.1}", x.0 / x.1) } else { "-".into() };
            println!(
                "  {:<38} seeds {:>2}  test acc {:>18} (z {:>5})  test loss {:>18} (z {:>5})  lambda_max {}",
                d.variant,
                d.seeds,
                pm(d.test_accuracy, 4),
                z(d.test_accuracy),
                pm(d.test_loss, 4),
                z(d.test_loss),
                d.lambda_max.map_or_else(|| "-".to_string(), |l| pm(l, 3))
            );
        }
    }
}

/// Runs (or reads from the cache) each config and prints its summary.
pub fn toy(args: ToyArgs) -> Result<ExitCode> {
    for path in &args.configs {
        let config = ExperimentConfig::load(path)?;
        let bar = ProgressBar::new(1).with_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} runs {msg} ({elapsed}, eta {eta})")?
                .progress_chars("=> "),
        );
        if args.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_prefix(config.name.clone());
        let (results, dir, cached) = run_cached(&config, &args.results, &mut |done, total, msg| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(msg.to_string());
        })
        .with_context(|| format!("running {}", path.display()))?;
        bar.finish_and_clear();
        let report = ToyReport {
            config: path.display().to_string(),
            results_dir: dir.display().to_string(),
            cached,
            versus_first_variant: paired_differences(&results),
            commit: &results.commit,
            data_used: &results.data_used,
            seconds: results.seconds,
            summary: &results.summary,
            results: &results,
        };
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_tables(&report);
        }
    }
    Ok(ExitCode::SUCCESS)
}
