//! The toy-experiment runner: a tiny config end to end (run directory, log, results, figure),
//! caching keyed by the config, config validation, and the explicit regulariser's gradient
//! against a finite difference of the penalised loss.

mod common;

use common::{TINY_EXPERIMENT as TINY, case, inf_norm};
use fullbatch::experiment::{ExperimentConfig, read_log, run_cached};
use fullbatch::figures::generalisation_figure;
use fullbatch::objective::{MinibatchGradientPenalty, Objective, gradient_by_difference};
use fullbatch::plot::render;
use proptest::prelude::*;
use std::path::Path;

fn tiny() -> ExperimentConfig {
    ExperimentConfig::from_toml(TINY, Path::new("tiny.toml")).unwrap()
}

/// Run, log, results and a figure: every file is written and non-empty, the log holds one line
/// per evaluation (start, every 5 steps, end: 3 per run, 4 runs), and the summary has a mean
/// and spread per variant.
#[test]
fn tiny_config_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mut calls = 0;
    let (results, dir, cached) = run_cached(&tiny(), tmp.path(), &mut |_, _, _| calls += 1).unwrap();
    assert!(!cached);
    assert!(calls >= 4);
    for file in ["config.toml", "log.jsonl", "results.json"] {
        assert!(std::fs::metadata(dir.join(file)).unwrap().len() > 0, "{file}");
    }
    // The resolved config parses back to the same config.
    let back = ExperimentConfig::load(&dir.join("config.toml")).unwrap();
    assert_eq!(back, tiny());
    let log = read_log(&dir).unwrap();
    assert_eq!(log.len(), 4 * 3);
    assert!(log.iter().all(|e| e.lambda_max.is_some_and(|l| l > 0.0) && e.train_loss.is_finite()));
    assert_eq!(results.runs.len(), 4);
    assert_eq!(results.summary.len(), 2);
    assert!(results.runs.iter().all(|r| r.trace.is_some() && r.diverged.is_none()));
    assert!(results.data_used.starts_with("teacher-student"));
    let stem = tmp.path().join("figure");
    for path in render(&generalisation_figure(&results, &log), &stem).unwrap() {
        assert!(std::fs::metadata(&path).unwrap().len() > 1000, "{}", path.display());
    }
}

/// A second call with the same config reuses the directory; changing one value (a learning
/// rate) gives a new hash and reruns.
#[test]
fn results_are_cached_by_config() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny();
    let (first, dir, cached) = run_cached(&config, tmp.path(), &mut |_, _, _| {}).unwrap();
    assert!(!cached);
    let mut ran = false;
    let (again, dir_again, cached) = run_cached(&config, tmp.path(), &mut |_, _, _| ran = true).unwrap();
    assert!(cached && !ran);
    assert_eq!(dir, dir_again);
    assert_eq!(first.finished_unix, again.finished_unix);
    let mut changed = config.clone();
    changed.variants[0].lr = 0.05;
    let (_, dir_changed, cached) = run_cached(&changed, tmp.path(), &mut |_, _, _| {}).unwrap();
    assert!(!cached);
    assert_ne!(dir, dir_changed);
}

/// Unknown keys and impossible values are rejected, naming the key.
#[test]
fn bad_configs_are_rejected_naming_the_key() {
    let cases = [
        (TINY.replace("every = 5", "every = 5\nevrey = 3"), "evrey"),
        (TINY.replace("lr = 0.1\nsteps = 10\nbatch_size", "lr = -0.1\nsteps = 10\nbatch_size"), "variants[0].lr"),
        (TINY.replace("batch_size = 10\n\n", "batch_size = 41\n\n"), "variants[0].batch_size"),
        (TINY.replace("regulariser_batch_size = 10", ""), "variants[1].regulariser_batch_size"),
        (TINY.replace("seeds = [0, 1]", "seeds = []"), "seeds"),
        (TINY.replace("every = 5", "every = 0"), "measure.every"),
        (TINY.replace("hidden = [4]", "hidden = [0]"), "model.hidden"),
        (TINY.replace("source = \"teacher-student\"", "source = \"cifar\""), "cifar"),
    ];
    for (text, key) in cases {
        let err = ExperimentConfig::from_toml(&text, Path::new("bad.toml")).unwrap_err().to_string();
        assert!(err.contains(key), "expected {key:?} in {err:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, rng_seed: proptest::test_runner::RngSeed::Fixed(20_220_425), ..ProptestConfig::default() })]

    /// The gradient of L + c sum_k |grad L_k|^2 (exact, through block HVPs) equals a central
    /// difference of the penalised loss: to 1e-6 relative (the difference's own error is
    /// ~1e-10 relative at step 1e-5 on these unit-scale networks, times the conditioning of
    /// the penalised loss).
    #[test]
    fn sgd_regulariser_gradient_matches_difference(c in case(), blocks in 1usize..=4, coefficient in 0.01f64..1.0) {
        let net = c.network();
        let theta = c.point(&net);
        let n = c.n;
        let size = (n / blocks).max(1);
        let blocks: Vec<Vec<usize>> = (0..n / size).map(|k| (k * size..(k + 1) * size).collect()).collect();
        let penalty = MinibatchGradientPenalty { inner: &net, blocks, coefficient };
        let exact = penalty.gradient(theta.view());
        let approx = gradient_by_difference(&penalty, theta.view(), 1e-5);
        let scale = inf_norm(&exact).max(1e-3);
        prop_assert!(inf_norm(&(&exact - &approx)) <= 1e-6 * scale, "{} vs scale {scale}", inf_norm(&(&exact - &approx)));
    }
}
