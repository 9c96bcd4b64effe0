//! Lanczos (tolerance 1e-8) against power iteration (PyHessian's 1e-3 change criterion) on the
//! Hessian of a tanh MLP 784-128-10 with softmax cross-entropy: 101,770 parameters, 1,000
//! Fashion-MNIST training images (seeded synthetic Gaussian-mixture data when the data set is
//! not installed; the output says which), after 100 GD steps at lr 0.5.
//!
//! For k = 1 and k = 5: operator applications (exact HVPs), wall time, eigenvalues, residuals
//! |Hv - lambda v| and the relative error of each power-iteration value against Lanczos's.
//! Exports both points with `fullbatch::export` so that `scripts/check_export.py --eigsh` can
//! time scipy's eigsh on JAX's HVP on the same model (benches/sharpness_side_by_side.sh).
//!
//! Usage: cargo bench --bench lanczos_vs_power [-- OUT_JSON EXPORT_DIR]
//! (defaults: benches/results/lanczos_vs_power.json, target/lanczos-export).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use fullbatch::data::{self, fashion_mnist};
use fullbatch::export::export_model;
use fullbatch::models::{self, Activation, Model, OutputLoss};
use fullbatch::objective::Objective;
use fullbatch::optim::{OptimizerParams, gradient_descent};
use fullbatch::sharpness::{Eigenpairs, LanczosParams, PowerParams, lanczos, power_iteration};
use serde_json::json;

fn summary(e: &Eigenpairs, seconds: f64) -> serde_json::Value {
    json!({
        "values": e.values,
        "residuals": e.residuals,
        "relative_residuals": e.values.iter().zip(&e.residuals).map(|(l, r)| r / l.abs()).collect::<Vec<_>>(),
        "operator_applications": e.operator_applications,
        "iterations": e.iterations,
        "restarts": e.restarts,
        "converged": e.converged,
        "seconds": seconds,
    })
}

fn main() -> Result<()> {
    // SAFETY: first thing in main: no BLAS call or other thread exists yet.
    let blas = unsafe { fullbatch::blas::select_native_kernels() };
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it:
    // then there is nothing to time.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("lanczos_vs_power: a benchmark; run it with `cargo bench --bench lanczos_vs_power`");
        return Ok(());
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let out = PathBuf::from(args.first().cloned().unwrap_or_else(|| "benches/results/lanczos_vs_power.json".into()));
    let export_dir = PathBuf::from(args.get(1).cloned().unwrap_or_else(|| "target/lanczos-export".into()));
    let seed = 0;
    let n = 1000;
    let options = fashion_mnist::LoadOptions { subset: Some(n), seed, ..fashion_mnist::LoadOptions::default() };
    let (data, source) = if fashion_mnist::available(&options.dir) {
        (fashion_mnist::load(fashion_mnist::Split::Train, &options)?, "fashion-mnist")
    } else {
        eprintln!("Fashion-MNIST not found: using a synthetic 10-class Gaussian mixture in 784 dimensions");
        (data::gaussian_mixture(n, 784, 10, 3.0, seed)?, "synthetic gaussian mixture")
    };
    let net = models::mlp(&data, &[128], 10, Activation::Tanh, OutputLoss::SoftmaxCrossEntropy)?;
    let theta0 = net.initial_parameters(seed);
    let train = OptimizerParams { lr: 0.5, steps: 100, seed, ..OptimizerParams::default() };
    let (theta, _) = gradient_descent(&net, theta0.view(), &train)?;
    let loss = net.loss(theta.view());
    eprintln!("MLP 784-128-10 on {n} {source} images: {} parameters, loss {loss:.4} after 100 GD steps", net.dim());

    // Time one HVP (the unit of cost).
    // The solvers' operator: the Hessian at theta with the forward pass done once.
    let op = net.hessian_at(theta.view());
    let v = net.gradient(theta.view());
    let start = Instant::now();
    let reps = 10;
    for _ in 0..reps {
        std::hint::black_box(net.hvp(theta.view(), v.view()));
    }
    let hvp_seconds = start.elapsed().as_secs_f64() / reps as f64;
    // One product of the solvers' operator (forward pass already done).
    let start = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(op.apply(v.view()));
    }
    let hvp_fixed_point_seconds = start.elapsed().as_secs_f64() / reps as f64;
    eprintln!(
        "one HVP: {:.1} ms fresh, {:.1} ms at the operator's fixed point",
        hvp_seconds * 1e3,
        hvp_fixed_point_seconds * 1e3
    );

    let mut runs = Vec::new();
    let model = Model::Network(net.clone());
    for k in [1usize, 5] {
        let t = Instant::now();
        let lz = lanczos(&*op, &LanczosParams { k, tol: 1e-8, seed, ..LanczosParams::default() })?;
        let lz_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let pw = power_iteration(&*op, &PowerParams { k, seed, ..PowerParams::default() })?;
        let pw_seconds = t.elapsed().as_secs_f64();
        let errors: Vec<f64> = pw.values.iter().zip(&lz.values).map(|(p, l)| (p - l).abs() / l.abs()).collect();
        // Equal accuracy, both ways: power iteration run until its change is below 1e-12 (up to
        // 3,000 iterations per pair), and Lanczos asked only for PyHessian's 1e-3.
        let t = Instant::now();
        let pw_tight = power_iteration(
            &*op,
            &PowerParams { k, tol: 1e-12, max_iterations: 3000, seed, ..PowerParams::default() },
        )?;
        let pw_tight_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let lz_loose = lanczos(&*op, &LanczosParams { k, tol: 1e-3, seed, ..LanczosParams::default() })?;
        let lz_loose_seconds = t.elapsed().as_secs_f64();
        // Without the multiplicity proof (as ARPACK).
        let t = Instant::now();
        let lz_unverified = lanczos(
            &*op,
            &LanczosParams { k, tol: 1e-8, seed, verify_multiplicity: false, ..LanczosParams::default() },
        )?;
        let lz_unverified_seconds = t.elapsed().as_secs_f64();
        eprintln!(
            "k = {k}: Lanczos {} HVPs in {lz_seconds:.2} s (rel. residual {:.1e}); power iteration {} HVPs in {pw_seconds:.2} s (rel. residual {:.1e}, value error {:.1e}); ratio {:.2}",
            lz.operator_applications,
            lz.residuals.iter().zip(&lz.values).map(|(r, l)| r / l.abs()).fold(0.0, f64::max),
            pw.operator_applications,
            pw.residuals.iter().zip(&pw.values).map(|(r, l)| r / l.abs()).fold(0.0, f64::max),
            errors.iter().cloned().fold(0.0, f64::max),
            pw.operator_applications as f64 / lz.operator_applications as f64,
        );
        eprintln!(
            "       power iteration at change 1e-12: {} HVPs (rel. residual {:.1e}); Lanczos at 1e-3: {} HVPs (rel. residual {:.1e}); Lanczos 1e-8 without the multiplicity check: {} HVPs",
            pw_tight.operator_applications,
            pw_tight.residuals.iter().zip(&pw_tight.values).map(|(r, l)| r / l.abs()).fold(0.0, f64::max),
            lz_loose.operator_applications,
            lz_loose.residuals.iter().zip(&lz_loose.values).map(|(r, l)| r / l.abs()).fold(0.0, f64::max),
            lz_unverified.operator_applications,
        );
        let dir = export_dir.join(format!("k{k}"));
        let results = json!({ "loss": loss, "which": "largest", "lanczos": &lz });
        export_model(&model, theta.view(), results, &[("eigenvectors", lz.vectors.view())], &dir)?;
        runs.push(json!({
            "k": k,
            "lanczos": summary(&lz, lz_seconds),
            "power_iteration": summary(&pw, pw_seconds),
            "power_value_relative_errors": errors,
            "power_iteration_tol_1e-12": summary(&pw_tight, pw_tight_seconds),
            "lanczos_tol_1e-3": summary(&lz_loose, lz_loose_seconds),
            "lanczos_without_multiplicity_check": summary(&lz_unverified, lz_unverified_seconds),
            "hvp_ratio_power_over_lanczos": pw.operator_applications as f64 / lz.operator_applications as f64,
            "export": dir,
        }));
    }
    let report = json!({
        "model": "tanh MLP 784-128-10, softmax cross-entropy, f64",
        "data": source,
        "examples": n,
        "parameters": net.dim(),
        "blas": blas,
        "train": { "optimizer": "gd", "lr": 0.5, "steps": 100, "seed": seed },
        "loss": loss,
        "hvp_seconds": hvp_seconds,
        "hvp_fixed_point_seconds": hvp_fixed_point_seconds,
        "lanczos_tol": 1e-8,
        "power_tol": 1e-3,
        "runs": runs,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = out.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::rename(&tmp, &out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
