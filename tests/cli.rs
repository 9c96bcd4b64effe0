//! End-to-end tests of the two binaries.

use std::process::Command;

mod common;

use common::TINY_EXPERIMENT;
use fullbatch::figures::FIGURES;

/// `fullbatch models --json` checks every model, exits 0, and reports a pass for each, with
/// errors that a correct derivative gives (the V bottoms out far below the tolerance).
#[test]
fn models_command_checks_every_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_fullbatch"))
        .args(["models", "--json", "--seed", "3"])
        .output()
        .expect("run fullbatch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON array");
    assert_eq!(checks.len(), <fullbatch::models::ModelKind as fullbatch::Choice>::ALL.len());
    for c in &checks {
        assert_eq!(c["pass"], true, "{c}");
        // A correct derivative's best central difference is ~1e-10 relative; 1e-8 would
        // already mean a lost term or a badly scaled model.
        assert!(c["best_gradient_error"].as_f64().unwrap() < 1e-8, "{c}");
        assert!(c["best_hvp_error"].as_f64().unwrap() < 1e-8, "{c}");
    }
}

/// An unknown model name is rejected with a message naming it, exit code non-zero.
#[test]
fn unknown_model_is_rejected() {
    let out = Command::new(env!("CARGO_BIN_EXE_fullbatch"))
        .args(["models", "--model", "resnet"])
        .output()
        .expect("run fullbatch");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("resnet"));
}

/// In a build without burn, `fullbatch train`, `fullbatch device`, `fullbatch bea --network` and
/// `fullbatch sharpness --run` exist and say which feature to build with (exit 2), whatever their options, instead of
/// clap's "unrecognized subcommand" or "invalid value".
#[cfg(not(feature = "burn"))]
#[test]
fn train_without_burn_names_the_feature() {
    for args in [
        &["train", "--config", "experiments/cifar10/sgd.toml", "--backend", "cuda"][..],
        &["device", "bench"],
        &["bea", "--network", "resnet-gelu"],
        &["sharpness", "--run", "runs/any"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fullbatch")).args(args).output().expect("run fullbatch");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(args[0]) && err.contains("--features burn") && err.contains("--features cuda"), "{err}");
    }
}

/// `figures --out DIR` writes non-empty PNG and SVG files and the index, running the toy
/// experiments it finds no results for.
#[test]
fn figures_command_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    // Hermetic: tiny toy-experiment configs under the expected names, results in a fresh cache
    // (so the experiments run here, not read from experiments/results/toy).
    let scratch = tempfile::tempdir().unwrap();
    let configs = scratch.path().join("configs");
    std::fs::create_dir(&configs).unwrap();
    for name in fullbatch::experiment::FIGURE_EXPERIMENTS {
        let tiny = TINY_EXPERIMENT.replace("name = \"tiny\"", &format!("name = \"{name}\""));
        std::fs::write(configs.join(format!("{name}.toml")), tiny).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_figures"))
        .args(["--out".as_ref(), dir.path().as_os_str()])
        .args(["--configs".as_ref(), configs.as_os_str()])
        .args(["--results".as_ref(), scratch.path().join("results").as_os_str()])
        .args(["--runs".as_ref(), scratch.path().join("no-runs").as_os_str()])
        .output()
        .expect("run figures");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> =
        FIGURES.iter().flat_map(|f| [format!("{}.png", f.stem), format!("{}.svg", f.stem)]).collect();
    names.push("README.md".into());
    for name in &names {
        let meta = std::fs::metadata(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(meta.len() > 1000 || name == "README.md" && meta.len() > 50, "{name} is too small");
    }
    // Nothing else: every file written is in the registry.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), names.len());
    let index = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
    assert!(FIGURES.iter().all(|f| index.contains(&format!("`{}.png`", f.stem))), "{index}");
    let png = std::fs::read(dir.path().join("derivative_check.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(dir.path().join("derivative_check.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("deep-linear"));
    // No temporary files are left behind.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains("tmp"), "left behind: {name}");
    }
}

/// `fullbatch bea --json` on the synthetic models: every named check is present, each row has
/// the documented fields, and all pass.
#[test]
fn bea_command_reports_every_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_fullbatch"))
        .args(["bea", "--json", "--no-fashion-mnist", "--model", "logistic", "--model", "quadratic"])
        .output()
        .expect("run fullbatch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON array");
    for name in [
        "gd_local_order_plain",
        "gd_local_order_first",
        "gd_local_order_second",
        "gd_global_order_plain",
        "gd_global_order_first",
        "gd_coefficient",
        "sgd_epoch_order_first",
        "sgd_coefficient",
        "heavy_ball_coefficient",
        "nesterov_coefficient",
    ] {
        let row = rows
            .iter()
            .find(|r| r["check"] == name && r["model"] == "logistic")
            .unwrap_or_else(|| panic!("missing {name}"));
        for field in ["measured", "stderr", "expected", "tolerance"] {
            assert!(row[field].is_number(), "{name}.{field}: {row}");
        }
        assert_eq!(row["pass"], true, "{row}");
    }
    // The quadratic has no finite-sum structure: no SGD rows for it.
    assert!(!rows.iter().any(|r| r["model"] == "quadratic" && r["check"] == "sgd_coefficient"));
}

/// `fullbatch sharpness --json`: Lanczos eigenvalues agree with the dense eigh to 1e-8
/// relative, with residuals at most the tolerance, and the trace estimate is within 4 of its
/// standard errors of the exact trace.
#[test]
fn sharpness_command_matches_the_dense_answer() {
    let out = Command::new(env!("CARGO_BIN_EXE_fullbatch"))
        .args(["sharpness", "--json", "--model", "mlp-softplus-ce", "--train-steps", "50", "--k", "2"])
        .output()
        .expect("run fullbatch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON object");
    let lanczos = r["lanczos"]["values"].as_array().unwrap();
    let dense = r["dense_top"].as_array().unwrap();
    for (l, d) in lanczos.iter().zip(dense) {
        let (l, d) = (l.as_f64().unwrap(), d.as_f64().unwrap());
        assert!((l - d).abs() <= 1e-8 * d.abs(), "{l} vs {d}");
    }
    for (res, l) in r["lanczos"]["residuals"].as_array().unwrap().iter().zip(lanczos) {
        assert!(res.as_f64().unwrap() <= 1e-10 * l.as_f64().unwrap().abs() * (1.0 + 1e-9));
    }
    let (t, se, exact) = (
        r["trace"]["estimate"].as_f64().unwrap(),
        r["trace"]["stderr"].as_f64().unwrap(),
        r["dense_trace"].as_f64().unwrap(),
    );
    assert!((t - exact).abs() <= 4.0 * se, "{t} ± {se} vs {exact}");
}

/// `fullbatch sharpness --export DIR`: the files are complete (a network rebuilt from spec.json,
/// inputs.npy and targets.npy has the reported loss at theta.npy; the exported eigenvectors
/// have the reported residuals), `--which smallest` is honoured, and a directory that is not an
/// export is refused and left untouched.
#[test]
fn sharpness_export_is_complete() {
    use fullbatch::data::{Dataset, Targets};
    use fullbatch::export::{ExportedModel, read_export_spec};
    use fullbatch::models::Network;
    use fullbatch::objective::Objective;
    use ndarray::{Array1, Array2};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("export");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fullbatch"));
    // The loss is compared bit for bit below: the binary must run the BLAS kernels this test
    // process runs (it would otherwise pick the CPU's own: fullbatch::blas).
    if let Some(core) = fullbatch::blas::core_name() {
        cmd.env("OPENBLAS_CORETYPE", core);
    }
    let out = cmd
        .args(["sharpness", "--json", "--model", "mlp-gelu-ce", "--train-steps", "20", "--k", "2"])
        .args(["--which", "smallest", "--export"])
        .arg(&dir)
        .output()
        .expect("run fullbatch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON object");
    assert_eq!(report["which"], "smallest");
    let spec = read_export_spec(&dir).unwrap();
    assert_eq!(spec.results["lanczos"]["values"], report["lanczos"]["values"]);
    let theta: Array1<f64> = ndarray_npy::read_npy(dir.join("theta.npy")).unwrap();
    let inputs: Array2<f64> = ndarray_npy::read_npy(dir.join("inputs.npy")).unwrap();
    let targets: Array2<f64> = ndarray_npy::read_npy(dir.join("targets.npy")).unwrap();
    let vectors: Array2<f64> = ndarray_npy::read_npy(dir.join("eigenvectors.npy")).unwrap();
    let ExportedModel::Network { spec: net_spec, layout, .. } = spec.model else { panic!("not a network") };
    // Targets are one-hot for this cross-entropy model: recover the labels.
    let labels = targets.rows().into_iter().map(|r| r.iter().position(|&t| t == 1.0).unwrap()).collect();
    let data = Dataset { inputs, targets: Targets::Classes { labels, n_classes: net_spec.output_dim } };
    let net = Network::new(net_spec, &data).unwrap();
    assert_eq!(net.parameter_layout(), layout);
    assert_eq!(net.loss(theta.view()), report["loss"].as_f64().unwrap());
    let values = report["lanczos"]["values"].as_array().unwrap();
    let dense = report["dense_top"].as_array().unwrap();
    for (i, value) in values.iter().enumerate() {
        let (lambda, exact) = (value.as_f64().unwrap(), dense[i].as_f64().unwrap());
        assert!((lambda - exact).abs() <= 1e-8 * exact.abs().max(1e-5), "{lambda} vs {exact}");
        let v = vectors.column(i);
        let residual = (net.hvp(theta.view(), v) - &v * lambda).mapv(|x| x * x).sum().sqrt();
        let reported = report["lanczos"]["residuals"][i].as_f64().unwrap();
        assert!((residual - reported).abs() <= 1e-3 * reported + 1e-14, "{residual} vs {reported}");
    }
    // Smallest first.
    assert!(values[0].as_f64().unwrap() <= values[1].as_f64().unwrap());

    let other = tmp.path().join("not-an-export");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fullbatch"))
        .args(["sharpness", "--model", "quadratic", "--export"])
        .arg(&other)
        .output()
        .expect("run fullbatch");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a fullbatch export"));
    assert_eq!(std::fs::read_to_string(other.join("keep.txt")).unwrap(), "mine");
}

/// The README's count of figures ("Ten figures in all") is the registry's, and every figure of
/// the registry has its line in the committed figures/README.md index.
#[test]
fn readme_counts_the_registered_figures() {
    const WORDS: [&str; 21] = [
        "Zero",
        "One",
        "Two",
        "Three",
        "Four",
        "Five",
        "Six",
        "Seven",
        "Eight",
        "Nine",
        "Ten",
        "Eleven",
        "Twelve",
        "Thirteen",
        "Fourteen",
        "Fifteen",
        "Sixteen",
        "Seventeen",
        "Eighteen",
        "Nineteen",
        "Twenty",
    ];
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let phrase = format!("{} figures in all", WORDS[FIGURES.len()]);
    assert!(readme.contains(&phrase), "README.md should say \"{phrase}\"");
    let index = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/figures/README.md")).unwrap();
    for f in &FIGURES {
        assert!(index.contains(&format!("- `{0}.png` / `{0}.svg`: {1}.", f.stem, f.shows)), "{} not indexed", f.stem);
    }
}
