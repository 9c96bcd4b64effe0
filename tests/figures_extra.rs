//! The BEA-coefficient figure and the CIFAR-10 results figure: the run-directory reader on
//! directories written here in `fullbatch train`'s format, both figures rendered, and the
//! measured coefficients against the theory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fullbatch::Choice;
use fullbatch::figures::bea_coefficients::{
    COEFFICIENT_MODELS, CoefficientFigureData, CoefficientKind, bea_coefficient_figure, measure_coefficients,
};
use fullbatch::figures::cifar_results::{PAPER_ROWS, cifar_results_figure, collect_cifar_runs};
use fullbatch::plot::render;
use serde_json::json;

/// The repository root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One `log.jsonl` line with every field of `deep::run::LogEntry` (by name, as serde writes
/// them); evaluation fields only when `test_acc` is given.
fn log_line(step: usize, test_acc: Option<f64>) -> String {
    let eval = test_acc.is_some();
    json!({
        "step": step,
        "lr": 0.1,
        "train_loss": 1.5,
        "train_acc": null,
        "grad_norm": 0.7,
        "mean_block_grad_sq_norm": 2.0,
        "regulariser": null,
        "clip_factor": 1.0,
        "eval_train_loss": if eval { json!(0.9) } else { json!(null) },
        "eval_train_acc": if eval { json!(0.8) } else { json!(null) },
        "test_loss": if eval { json!(1.1) } else { json!(null) },
        "test_acc": test_acc,
        "wall_s": 12.5 * step as f64,
        "step_s": 12.5,
        "images_per_s": 4000.0,
    })
    .to_string()
}

/// Writes a run directory as `fullbatch train` does: `config.toml` (the committed experiment
/// file, resolved), `run.json` with every field of `run_dir::RunInfo`, and `log.jsonl`.
fn write_run(dir: &Path, experiment: &str, lines: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    let config = repo().join("experiments/cifar10").join(format!("{experiment}.toml"));
    let resolved = fullbatch::run_dir::config::RunConfig::load(&config).unwrap().to_toml().unwrap();
    std::fs::write(dir.join("config.toml"), resolved).unwrap();
    let info = json!({
        "name": experiment,
        "seed": 0,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "device": "test",
        "backend": "flex",
        "version": "0.1.0",
        "train_images": 50000,
        "test_images": 10000,
        "parameters": 11173962,
        "started_unix_s": 1_700_000_000u64,
    });
    std::fs::write(dir.join("run.json"), serde_json::to_vec_pretty(&info).unwrap()).unwrap();
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(dir.join("log.jsonl"), text).unwrap();
}

/// `runs/` with a finished SGD run, an unfinished naive full-batch run, a small synthetic run,
/// a directory that is not a run and a stray file.
fn write_runs(root: &Path) -> PathBuf {
    let runs = root.join("runs");
    let mut sgd: Vec<String> = (1..=4).map(|s| log_line(s, None)).collect();
    sgd.push(log_line(5, Some(0.61)));
    sgd.push(log_line(300, Some(0.9512)));
    write_run(&runs.join("sgd"), "sgd", &sgd);
    write_run(&runs.join("fb1-naive"), "fb1-naive", &[log_line(100, Some(0.5)), log_line(120, None)]);
    write_run(&runs.join("small-synthetic-fb"), "small-synthetic-fb", &[log_line(40, Some(0.75))]);
    std::fs::create_dir_all(runs.join("notes")).unwrap();
    std::fs::write(runs.join("notes/readme.txt"), "not a run").unwrap();
    std::fs::write(runs.join("stray.txt"), "not a run either").unwrap();
    runs
}

#[test]
fn collect_reads_runs_in_the_run_directory_format_and_skips_other_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = collect_cifar_runs(&write_runs(tmp.path())).unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r.config.as_str()).collect();
    assert_eq!(names, ["fb1-naive", "sgd", "small-synthetic-fb"]);

    let fb1 = &runs[0];
    assert_eq!((fb1.steps_done, fb1.steps_planned), (120, 300));
    assert!(!fb1.finished());
    assert_eq!(fb1.last_test_acc, Some(50.0));
    assert_eq!(fb1.last_eval_step, Some(100));
    assert!(fb1.comparable(), "full CIFAR-10 with the row's augmentation");

    let sgd = &runs[1];
    assert_eq!((sgd.steps_done, sgd.steps_planned), (300, 300));
    assert!(sgd.finished());
    assert!((sgd.last_test_acc.unwrap() - 95.12).abs() < 1e-9);
    assert_eq!(sgd.dataset, "cifar10");
    assert!(sgd.augmentation);
    assert_eq!(sgd.commit, "0123456789abcdef0123456789abcdef01234567");

    let small = &runs[2];
    assert_eq!(small.dataset, "synthetic");
    assert_eq!((small.steps_done, small.steps_planned), (40, 40));
    assert!(!small.comparable(), "synthetic data is not the paper's");

    // The directory of one run is read as that run; a missing directory has none.
    assert_eq!(collect_cifar_runs(&tmp.path().join("runs/sgd")).unwrap().len(), 1);
    assert!(collect_cifar_runs(&tmp.path().join("nowhere")).unwrap().is_empty());
}

#[test]
fn malformed_log_is_rejected_naming_the_file_and_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runs/sgd");
    write_run(&dir, "sgd", &[log_line(1, None), log_line(2, None), "{\"step\": 3, \"test_acc\": ".into()]);
    let message = collect_cifar_runs(&tmp.path().join("runs")).unwrap_err().to_string();
    assert!(message.contains("log.jsonl") && message.contains("line 3"), "{message}");

    // A percentage where the log stores a fraction is format drift, not a result.
    write_run(&dir, "sgd", &[log_line(1, None), log_line(2, Some(95.1))]);
    let message = collect_cifar_runs(&dir).unwrap_err().to_string();
    assert!(message.contains("log.jsonl") && message.contains("line 2") && message.contains("test_acc"), "{message}");

    // A line without a step.
    write_run(&dir, "sgd", &[json!({"test_acc": 0.5}).to_string()]);
    let message = collect_cifar_runs(&dir).unwrap_err().to_string();
    assert!(message.contains("line 1") && message.contains("step"), "{message}");
}

#[test]
fn paper_rows_are_the_cifar10_configurations() {
    for row in &PAPER_ROWS {
        let path = repo().join("experiments/cifar10").join(format!("{}.toml", row.config));
        let config = fullbatch::run_dir::config::resolved_table(&path).unwrap();
        assert_eq!(config["name"].as_str(), Some(row.config), "{}", path.display());
        assert_eq!(config["data"]["dataset"].as_str(), Some("cifar10"), "{}", path.display());
        assert_eq!(config["augmentation"]["enabled"].as_bool(), Some(row.augmentation), "{}", path.display());
        assert!(row.label.starts_with(row.config));
        if let Some(a) = row.accuracy {
            assert!(row.label.contains(&format!("{a:.2}")), "{}", row.label);
        }
    }
    // The numbers of the paper this project has checked, and only those.
    let stated: Vec<(&str, f64)> = PAPER_ROWS.iter().filter_map(|r| Some((r.config, r.accuracy?))).collect();
    assert_eq!(
        stated,
        [
            ("sgd", 95.70),
            ("sgd-noaug", 84.32),
            ("fb1-naive", 75.42),
            ("fb2-longer", 87.36),
            ("fb5-strong-reg", 95.67),
            ("fb5-strong-reg-noaug", 89.17)
        ]
    );
}

fn coefficients() -> &'static CoefficientFigureData {
    static DATA: OnceLock<CoefficientFigureData> = OnceLock::new();
    DATA.get_or_init(|| measure_coefficients(0).unwrap())
}

#[test]
fn measured_coefficients_match_the_theory() {
    let data = coefficients();
    for (kind, name) in COEFFICIENT_MODELS {
        assert_eq!(kind.name(), name);
    }
    let m = data.params.minibatches as f64;
    let mut seen = [0usize; 4];
    for c in &data.coefficients {
        let expected = match c.kind {
            CoefficientKind::Gd => 0.25,
            CoefficientKind::Sgd => 1.0 / (4.0 * m),
            CoefficientKind::HeavyBall => 47.5,
            CoefficientKind::Nesterov => 43.0,
        };
        let model = data.models[c.model];
        let e = c.measurement.estimate;
        assert!((e / expected - 1.0).abs() < 0.02, "{:?} on {model}: {e} vs {expected}", c.kind);
        assert!(c.measurement.stderr > 0.0 && c.measurement.stderr < 0.01 * expected);
        seen[CoefficientKind::ALL.iter().position(|k| *k == c.kind).unwrap()] += 1;
    }
    let n = COEFFICIENT_MODELS.len();
    // GD and momentum on every model, SGD on every finite sum (all but the quadratic).
    assert_eq!(seen, [n, n - 1, n, n]);
    for s in &data.splits {
        assert!((s.gd_part - 1.0).abs() < 0.02 && (s.variance_part - 1.0).abs() < 0.02);
    }
}

/// Renders into a temporary directory, or into `FULLBATCH_FIG_CHECK` when set (to look at).
#[test]
fn both_figures_render_to_png_and_svg() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::env::var_os("FULLBATCH_FIG_CHECK").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    let runs = collect_cifar_runs(&write_runs(tmp.path())).unwrap();
    let figures = [
        ("bea_coefficients", bea_coefficient_figure(coefficients())),
        ("cifar_results", cifar_results_figure(&runs)),
        ("cifar_results_no_runs", cifar_results_figure(&[])),
    ];
    for (stem, fig) in &figures {
        for path in render(fig, &out.join(stem)).unwrap() {
            let size = std::fs::metadata(&path).unwrap().len();
            assert!(size > 1024, "{}: {size} bytes", path.display());
        }
    }
}
