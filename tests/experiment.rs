//! The toy-experiment runner: a tiny config end to end (run directory, log, results, figure),
//! caching keyed by the config, config validation, and the explicit regulariser's gradient
//! against a finite difference of the penalised loss.

mod common;

use common::{TINY_EXPERIMENT as TINY, case, inf_norm};
use fullbatch::experiment::{ExperimentConfig, read_log, run_cached};
use fullbatch::figures::generalisation_figure;
use fullbatch::figures::training::{lr_sweep_figure, modified_flow_figure, spectral_density_figure};
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
        (TINY.replace("every = 5", "every = 5\nmodified_flow = true"), "measure.modified_flow"),
        (TINY.replace("every = 5", "every = 5\ngradient_flow = true\nflow_until = -1.0"), "measure.flow_until"),
        (TINY.replace("every = 5", "every = 5\nflow_rtol = 2.0"), "measure.flow_rtol"),
        (TINY.replace("steps = 10\nbatch_size", "steps = 10\nevery = 0\nbatch_size"), "variants[0].every"),
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

/// GD on a tiny network against the gradient flow and GD's modified flow from the same start,
/// at step sizes h and h/2 evaluated at the same times: backward-error analysis says the
/// distance at a fixed time is O(h) from the gradient flow and O(h^2) from the modified flow
/// (lambda_max is 7-9 along the way, so h lambda_max <= 0.18). Checked at t = 0.5 and 1 (h = 0.02
/// vs 0.01): halving h divides the first by 2^(1 +- 0.15) and the second by 2^(2 +- 0.3)
/// (measured: 1.01 and 2.01 at t = 0.5, 0.93 and 1.99 at t = 1), the modified flow is the closer one, the integration error
/// bound is below 1% of every distance, and the flows stop at `flow_until`. Also: the spectral
/// density at the end integrates to 1, and the three training figures render.
#[test]
fn gd_follows_the_modified_flow_to_second_order() {
    let config = TINY
        .replace("seeds = [0, 1]", "seeds = [0]")
        .replace(
            "every = 5\ntrace_budget = 12",
            "every = 5\ngradient_flow = true\nmodified_flow = true\nflow_until = 1.0\ndensity = true",
        )
        .split("[[variants]]")
        .next()
        .unwrap()
        .to_string()
        + "[[variants]]\nlabel = \"GD, h = 0.02\"\nlr = 0.02\nsteps = 60\nevery = 25\n\n[[variants]]\nlabel = \"GD, h = 0.01\"\nlr = 0.01\nsteps = 120\nevery = 50\n";
    let config = ExperimentConfig::from_toml(&config, Path::new("flows.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (results, dir, _) = run_cached(&config, tmp.path(), &mut |_, _, _| {}).unwrap();
    let log = read_log(&dir).unwrap();
    let at = |label: &str, t: f64| {
        log.iter()
            .filter(|e| e.variant == label)
            .filter_map(|e| e.flow.clone())
            .find(|f| (f.time - t).abs() < 1e-9)
            .unwrap_or_else(|| panic!("{label}: no flow comparison at t = {t}"))
    };
    for label in ["GD, h = 0.02", "GD, h = 0.01"] {
        // Evaluations at t = 0, 0.5, 1 carry flows; the last one (t = 1.2) is past flow_until.
        let times: Vec<f64> = log
            .iter()
            .filter(|e| e.variant == label && e.flow.is_some())
            .map(|e| e.flow.as_ref().unwrap().time)
            .collect();
        assert_eq!(times.len(), 3, "{label}: {times:?}");
        assert!(log.iter().any(|e| e.variant == label && e.flow.is_none()), "{label}: flows past flow_until");
        for t in [0.5, 1.0] {
            let f = at(label, t);
            let modified = f.modified_distance.unwrap();
            assert!(f.error_bound < 1e-2 * modified, "{label} t={t}: bound {} vs {modified}", f.error_bound);
            assert!(modified < f.plain_distance, "{label} t={t}: {modified} vs {}", f.plain_distance);
            assert!(f.flow_lambda_max > 0.0 && f.flow_lambda_residual < 1e-4 * f.flow_lambda_max);
        }
    }
    for t in [0.5, 1.0] {
        let (big, small) = (at("GD, h = 0.02", t), at("GD, h = 0.01", t));
        let plain_order = (big.plain_distance / small.plain_distance).log2();
        let modified_order = (big.modified_distance.unwrap() / small.modified_distance.unwrap()).log2();
        assert!((plain_order - 1.0).abs() < 0.15, "t={t}: order from the gradient flow {plain_order}");
        assert!((modified_order - 2.0).abs() < 0.3, "t={t}: order from the modified flow {modified_order}");
    }
    for run in &results.runs {
        let d = run.density.as_ref().expect("density at the end");
        let mass: f64 =
            d.grid.windows(2).zip(d.density.windows(2)).map(|(x, p)| (x[1] - x[0]) * (p[0] + p[1]) / 2.0).sum();
        assert!((mass - 1.0).abs() < 1e-3, "{}: density integrates to {mass}", run.variant);
    }
    for (name, fig) in [
        ("flows", modified_flow_figure(&results, &log)),
        ("density", spectral_density_figure(&results)),
        ("sweep", lr_sweep_figure(&results)),
    ] {
        for path in render(&fig, &tmp.path().join(name)).unwrap() {
            assert!(std::fs::metadata(&path).unwrap().len() > 1000, "{}", path.display());
        }
    }
}

/// The runner's network and starting point for a `teacher-student` config (as the runner builds
/// them: the first `train` of `train + test` examples).
fn runner_network(config: &ExperimentConfig, seed: u64) -> (fullbatch::models::Network, ndarray::Array1<f64>) {
    let all =
        fullbatch::data::teacher_student_classes(config.data.train + config.data.test, 784, 32, 10, config.data.seed)
            .unwrap();
    let train = all.select(&(0..config.data.train).collect::<Vec<_>>());
    let net =
        fullbatch::models::mlp(&train, &config.model.hidden, 10, config.model.activation, config.model.loss).unwrap();
    let theta = net.initial_parameters(seed);
    (net, theta)
}

/// Regularised variants with `penalised_sharpness` on a tiny network (805 parameters): the
/// logged lambda_max of the regularised loss at the start equals the largest eigenvalue of that
/// loss's dense Hessian, built independently here (coefficient h/4 for GD's regulariser, h/(4m)
/// over the right blocks for SGD's, fixed or the first random partition of the reshuffled
/// variant), to 1e-5 relative (its HVP is a central difference, ~1e-9); plain variants log none.
#[test]
fn penalised_sharpness_is_the_regularised_losss_top_eigenvalue() {
    use fullbatch::objective::GradientNormPenalty;
    use fullbatch::optim::{BatchSampler, Sampling};
    use ndarray_linalg::{Eigh, UPLO};
    let text = TINY
        .replace("seeds = [0, 1]", "seeds = [3]")
        .replace("hidden = [4]", "hidden = [1]")
        .replace("every = 5\ntrace_budget = 12", "every = 5\nsharpness_tol = 1e-9\npenalised_sharpness = true")
        + "\n[[variants]]\nlabel = \"GD + GD's regulariser\"\nlr = 0.3\nsteps = 10\nregulariser = \"gd\"\n"
        + "\n[[variants]]\nlabel = \"reshuffled\"\nlr = 0.2\nsteps = 10\nregulariser = \"sgd\"\nregulariser_batch_size = 10\nregulariser_reshuffle = true\n";
    let config = ExperimentConfig::from_toml(&text, Path::new("penalised.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir, _) = run_cached(&config, tmp.path(), &mut |_, _, _| {}).unwrap();
    let log = read_log(&dir).unwrap();
    let (net, theta) = runner_network(&config, 3);
    assert_eq!(net.dim(), 805);
    let top = |obj: &dyn Objective| {
        let (values, _) = obj.hessian(theta.view()).eigh(UPLO::Lower).unwrap();
        values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    };
    let consecutive: Vec<Vec<usize>> = (0..4).map(|k| (k * 10..(k + 1) * 10).collect()).collect();
    let mut sampler = BatchSampler::new(Sampling::Reshuffle { batch_size: 10 }, 40, 3).unwrap();
    let first_partition: Vec<Vec<usize>> = (0..4).map(|_| sampler.next_batch().unwrap()).collect();
    assert_ne!(first_partition, consecutive);
    let expected = [
        (
            "GD + SGD's regulariser",
            top(&MinibatchGradientPenalty { inner: &net, blocks: consecutive, coefficient: 0.1 / 16.0 }),
        ),
        ("GD + GD's regulariser", top(&GradientNormPenalty { inner: &net, coefficient: 0.3 / 4.0 })),
        (
            "reshuffled",
            top(&MinibatchGradientPenalty { inner: &net, blocks: first_partition, coefficient: 0.2 / 16.0 }),
        ),
    ];
    for (label, dense) in expected {
        let start = log.iter().find(|e| e.variant == label && e.step == 0).unwrap();
        let logged = start.lambda_max_penalised.unwrap_or_else(|| panic!("{label}: no penalised lambda_max"));
        let residual = start.lambda_penalised_residual.unwrap();
        assert!(
            (logged - dense).abs() <= 1e-5 * dense.abs(),
            "{label}: logged {logged} (residual {residual:.1e}) vs dense {dense}"
        );
        // The regulariser adds curvature here: the penalised loss is sharper than L.
        assert!(logged > start.lambda_max.unwrap(), "{label}: {logged} vs {}", start.lambda_max.unwrap());
        assert!(log.iter().filter(|e| e.variant == label).all(|e| e.lambda_max_penalised.is_some()));
    }
    assert!(log.iter().filter(|e| e.variant == "SGD").all(|e| e.lambda_max_penalised.is_none()));
}

/// `regulariser_reshuffle`: each step descends the SGD regulariser over a fresh random partition
/// (the sampler's next epoch); replayed here step by step, the logged training losses agree to
/// 1e-12 relative, and differ from the fixed-blocks run's.
#[test]
fn reshuffled_regulariser_draws_new_blocks_every_step() {
    use fullbatch::optim::{BatchSampler, Sampling};
    let text = TINY
        .replace("seeds = [0, 1]", "seeds = [1]")
        .replace("every = 5\ntrace_budget = 12", "every = 1\nsharpness = false")
        .replace("steps = 10\nregulariser = \"sgd\"", "steps = 4\nregulariser = \"sgd\"")
        + "\n[[variants]]\nlabel = \"reshuffled\"\nlr = 0.1\nsteps = 4\nregulariser = \"sgd\"\nregulariser_batch_size = 10\nregulariser_reshuffle = true\n";
    let config = ExperimentConfig::from_toml(&text, Path::new("reshuffle.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir, _) = run_cached(&config, tmp.path(), &mut |_, _, _| {}).unwrap();
    let log = read_log(&dir).unwrap();
    let (net, mut theta) = runner_network(&config, 1);
    let mut sampler = BatchSampler::new(Sampling::Reshuffle { batch_size: 10 }, 40, 1).unwrap();
    for step in 1..=4 {
        let blocks: Vec<Vec<usize>> = (0..4).map(|_| sampler.next_batch().unwrap()).collect();
        let penalty = MinibatchGradientPenalty { inner: &net, blocks, coefficient: 0.1 / 16.0 };
        theta = &theta - &(penalty.gradient(theta.view()) * 0.1);
        let replayed = net.loss(theta.view());
        let logged = log.iter().find(|e| e.variant == "reshuffled" && e.step == step).unwrap().train_loss;
        assert!((logged - replayed).abs() <= 1e-12 * replayed, "step {step}: {logged} vs {replayed}");
        let fixed = log.iter().find(|e| e.variant == "GD + SGD's regulariser" && e.step == step).unwrap().train_loss;
        assert!((fixed - logged).abs() > 1e-9 * logged, "step {step}: reshuffling changed nothing");
    }
    let bad = TINY.replace("batch_size = 10\n\n", "batch_size = 10\nregulariser_reshuffle = true\n\n");
    let err = ExperimentConfig::from_toml(&bad, Path::new("bad.toml")).unwrap_err().to_string();
    assert!(err.contains("variants[0].regulariser_reshuffle"), "{err}");
}

/// A variant with `momentum` steps with `MomentumStep` (replayed here for both kinds: the logged
/// training losses agree to 1e-12 relative) and differs from plain GD; beta outside [0, 1) is
/// rejected naming the key.
#[test]
fn momentum_variants_follow_the_momentum_update() {
    use fullbatch::optim::{Momentum, MomentumStep};
    let text = TINY
        .replace("seeds = [0, 1]", "seeds = [2]")
        .replace("every = 5\ntrace_budget = 12", "every = 1\nsharpness = false")
        .split("[[variants]]")
        .next()
        .unwrap()
        .to_string()
        + "[[variants]]\nlabel = \"GD\"\nlr = 0.1\nsteps = 4\n\n"
        + "[[variants]]\nlabel = \"heavy ball\"\nlr = 0.1\nsteps = 4\nmomentum = { kind = \"heavy_ball\", beta = 0.9 }\n\n"
        + "[[variants]]\nlabel = \"Nesterov\"\nlr = 0.1\nsteps = 4\nmomentum = { kind = \"nesterov\", beta = 0.5 }\n";
    let config = ExperimentConfig::from_toml(&text, Path::new("momentum.toml")).unwrap();
    assert_eq!(config.variants[1].momentum, Momentum::HeavyBall(0.9));
    let tmp = tempfile::tempdir().unwrap();
    let (_, dir, _) = run_cached(&config, tmp.path(), &mut |_, _, _| {}).unwrap();
    let log = read_log(&dir).unwrap();
    for (label, momentum) in [("heavy ball", Momentum::HeavyBall(0.9)), ("Nesterov", Momentum::Nesterov(0.5))] {
        let (net, mut theta) = runner_network(&config, 2);
        let mut update = MomentumStep::new(momentum);
        for step in 1..=4 {
            let g = net.gradient(theta.view());
            update.apply(&mut theta, g.view(), 0.1);
            let replayed = net.loss(theta.view());
            let logged = log.iter().find(|e| e.variant == label && e.step == step).unwrap().train_loss;
            assert!((logged - replayed).abs() <= 1e-12 * replayed, "{label} step {step}: {logged} vs {replayed}");
            if step > 1 {
                let plain = log.iter().find(|e| e.variant == "GD" && e.step == step).unwrap().train_loss;
                assert!((plain - logged).abs() > 1e-9 * plain, "{label} step {step}: same as GD");
            }
        }
    }
    let bad = text.replace("beta = 0.9", "beta = 1.0");
    let err = ExperimentConfig::from_toml(&bad, Path::new("bad.toml")).unwrap_err().to_string();
    assert!(err.contains("variants[1].momentum"), "{err}");
}
