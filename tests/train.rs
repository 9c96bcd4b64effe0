//! Tests of `fullbatch train` on the CPU (Flex backend, tiny ResNets on 16x16 synthetic images):
//! configuration validation (every kind of bad input is rejected, naming its key), checkpoint and
//! resume (identical log lines to an uninterrupted run, wall-time fields excluded), divergence
//! (stops with the last good checkpoint kept), a smoke run whose loss falls, and the command line.
//!
//! Run in release: burn's kernels are compiled in this crate and are very slow in debug builds.
#![cfg(feature = "burn")]

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use fullbatch::Error;
use fullbatch::deep::CpuAutodiff;
use fullbatch::deep::config::{Mode, RunConfig};
use fullbatch::deep::run::{self, RunOptions, RunSummary};

mod common;
use common::train_run::{TINY_RUN as TINY, check_resume_on, log_without_time, options};

fn tiny() -> RunConfig {
    RunConfig::from_toml(TINY).unwrap()
}

fn run(config: &RunConfig, dir: &Path, opts: &RunOptions<'_>) -> fullbatch::Result<RunSummary> {
    run::run::<CpuAutodiff>(config, dir, &Default::default(), opts)
}

fn latest_step(dir: &Path) -> usize {
    run::latest_checkpoint(dir).unwrap().unwrap().1
}

/// Checkpoint, stop, resume (from a stop request, from `max_steps`, and after a "crash" that
/// left log lines past the checkpoint): every log line equals the uninterrupted run's, wall-time
/// fields excluded. Also the smoke test: the training loss falls.
#[test]
fn resume_continues_bit_for_bit_and_loss_falls() {
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny();

    // Uninterrupted.
    let full = tmp.path().join("full");
    let summary = run(&config, &full, &options(false, None)).unwrap();
    assert_eq!((summary.steps_done, summary.stopped_early), (6, false));
    let reference = log_without_time(&full);
    assert_eq!(reference.len(), 6);
    assert_eq!(latest_step(&full), 6);
    for f in ["config.toml", "run.json", "checkpoints/step-000006/model.bin", "checkpoints/step-000006/optim.bin"] {
        assert!(full.join(f).is_file(), "{f} missing");
    }
    // Only the two newest checkpoints are kept.
    assert!(!full.join("checkpoints/step-000002").exists() && full.join("checkpoints/step-000004").exists());
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("run.json")).unwrap()).unwrap();
    for key in ["git_commit", "device", "seed", "backend"] {
        assert!(info.get(key).is_some(), "run.json lacks {key}");
    }
    // Evaluations at steps 3 and 6 only.
    let evaluated: Vec<u64> =
        reference.iter().filter(|e| !e["test_acc"].is_null()).map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(evaluated, [3, 6]);
    // Smoke: the loss falls (warmup 2 steps, then 4 real steps).
    let loss = |i: usize| reference[i]["train_loss"].as_f64().unwrap();
    assert!(loss(5) < 0.85 * loss(0), "training loss {} -> {}", loss(0), loss(5));

    // A stop request (Ctrl-C) before the first step: one step, a checkpoint, then resume.
    let stopped = tmp.path().join("stopped");
    let stop = AtomicBool::new(true);
    let summary = run(&config, &stopped, &RunOptions { stop: Some(&stop), ..options(false, None) }).unwrap();
    assert_eq!((summary.steps_done, summary.stopped_early), (1, true));
    assert_eq!(latest_step(&stopped), 1);
    // A new run into a used directory is refused.
    let err = run(&config, &stopped, &options(false, None)).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    run(&config, &stopped, &options(true, None)).unwrap();
    assert_eq!(log_without_time(&stopped), reference);

    // A "crash": 5 steps logged, checkpoints at 4 and 5; point `latest` back at step 4 as if the
    // process died before step 5's checkpoint. Resume cuts the log back to step 4 and replays.
    let crashed = tmp.path().join("crashed");
    let summary = run(&config, &crashed, &options(false, Some(5))).unwrap();
    assert_eq!((summary.steps_done, summary.stopped_early), (5, true));
    assert_eq!(log_without_time(&crashed).len(), 5);
    std::fs::write(crashed.join("checkpoints/latest"), "step-000004").unwrap();
    let summary = run(&config, &crashed, &options(true, None)).unwrap();
    assert_eq!(summary.steps_done, 6);
    assert_eq!(log_without_time(&crashed), reference);

    // Resume refuses another configuration.
    let mut other = config.clone();
    other.optimizer.lr = 0.3;
    let err = run(&other, &crashed, &options(true, None)).unwrap_err();
    assert!(err.to_string().contains("config"), "{err}");
    println!("resume test: {:.1} s", start.elapsed().as_secs_f64());
}

/// `segments.jsonl` on the CPU backend: one record per process, and a resumed run equals the
/// uninterrupted one (the check shared with the LibTorch tests).
#[test]
fn segments_are_recorded_per_process() {
    check_resume_on::<CpuAutodiff>(&Default::default(), "flex-f32");
}

/// A run killed before its first checkpoint (here: its directory as a fresh start leaves it
/// after the first files, with no checkpoint) is neither a dead end nor silently mixed: with
/// `--resume` it starts over from step 0 and ends as an uninterrupted run.
#[test]
fn resume_without_checkpoint_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny();
    let full = tmp.path().join("full");
    run(&config, &full, &options(false, None)).unwrap();
    let reference = log_without_time(&full);

    let killed = tmp.path().join("killed");
    run(&config, &killed, &options(false, Some(1))).unwrap();
    std::fs::remove_dir_all(killed.join("checkpoints")).unwrap();
    // Without --resume the directory is refused, with it the run starts again from step 0.
    let err = run(&config, &killed, &options(false, None)).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let summary = run(&config, &killed, &options(true, None)).unwrap();
    assert_eq!(summary.segment.start_step, 0);
    assert_eq!(log_without_time(&killed), reference);
    // Killed even before run.json was written.
    std::fs::remove_dir_all(killed.join("checkpoints")).unwrap();
    std::fs::remove_file(killed.join("run.json")).unwrap();
    run(&config, &killed, &options(true, None)).unwrap();
    assert_eq!(log_without_time(&killed), reference);
}

/// SGD mode on the same data: per-epoch logs with accuracy, the loss falls, and resume after
/// an epoch gives the same lines.
#[test]
fn sgd_mode_trains_and_resumes() {
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = tiny();
    config.mode = Mode::Sgd { batch_size: 16, epochs: 4, clip: None };
    config.optimizer.warmup = 1;
    config.optimizer.t_max = 4;
    config.eval_every = 2;
    config.checkpoint_every = 1;
    config.validate().unwrap();
    let full = tmp.path().join("full");
    run(&config, &full, &options(false, None)).unwrap();
    let reference = log_without_time(&full);
    assert_eq!(reference.len(), 4);
    assert!(reference.iter().all(|e| e["train_acc"].is_f64()));
    let loss = |i: usize| reference[i]["train_loss"].as_f64().unwrap();
    assert!(loss(3) < loss(0), "SGD loss {} -> {}", loss(0), loss(3));
    let part = tmp.path().join("part");
    run(&config, &part, &options(false, Some(2))).unwrap();
    run(&config, &part, &options(true, None)).unwrap();
    assert_eq!(log_without_time(&part), reference);
    println!("sgd test: {:.1} s", start.elapsed().as_secs_f64());
}

/// A learning rate far too large without clipping: the run stops with `Diverged` and the last
/// checkpoint, written before the failing step, stays.
#[test]
fn divergence_stops_and_keeps_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = tiny();
    config.optimizer.lr = 1e30;
    config.optimizer.warmup = 0;
    config.checkpoint_every = 1;
    config.augmentation.enabled = false;
    if let Mode::FullBatch { clip, regulariser_alpha, steps, .. } = &mut config.mode {
        *clip = None;
        *regulariser_alpha = 0.0;
        *steps = 8;
    }
    let dir = tmp.path().join("div");
    let err = run(&config, &dir, &options(false, None)).unwrap_err();
    let Error::Diverged { step, quantity } = &err else { panic!("expected Diverged, got {err}") };
    println!("diverged at step {step}: {quantity}");
    assert!(*step >= 1, "diverged at step {step}");
    // Every step before the failing one completed and was saved; the failing one was not.
    assert_eq!(latest_step(&dir), *step);
    let lines = log_without_time(&dir);
    assert_eq!(lines.len(), *step);
    assert!(lines.iter().all(|e| e["train_loss"].as_f64().unwrap().is_finite()));
}

/// Replaces `key = ...` on the line starting with `key` (first occurrence after `section`).
fn with(section: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut in_section = section.is_empty();
    let mut done = false;
    for line in TINY.lines() {
        if line.starts_with('[') {
            in_section = line.trim() == format!("[{section}]");
        }
        if in_section && !done && line.split('=').next().map(str::trim) == Some(key) {
            out.push_str(&format!("{key} = {value}\n"));
            done = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(done, "no key {key} in [{section}]");
    out
}

/// Adds `line` at the end of `section`'s table (or the top level for "").
fn adding(section: &str, line: &str) -> String {
    if section.is_empty() {
        return format!("{line}\n{TINY}");
    }
    TINY.replace(&format!("[{section}]\n"), &format!("[{section}]\n{line}\n"))
}

fn removing(key: &str) -> String {
    TINY.lines().filter(|l| l.split('=').next().map(str::trim) != Some(key)).collect::<Vec<_>>().join("\n")
}

#[test]
fn bad_configs_are_rejected_naming_the_key() {
    assert!(RunConfig::from_toml(TINY).is_ok());
    let data_line = |inner: &str| with("data", "dataset", &format!("{{ synthetic = {{ {inner} }} }}"));
    let cases: Vec<(String, &str)> = vec![
        // Unknown keys, at every level.
        (adding("", "seeed = 1"), "seeed"),
        (adding("optimizer", "lrate = 0.1"), "lrate"),
        (adding("mode.full_batch", "clip_norm = 0.25"), "clip_norm"),
        (adding("model", "depth = 18"), "depth"),
        (adding("augmentation", "flip = true"), "flip"),
        (adding("data", "root = \"x\""), "root"),
        (data_line("n = 64, n_test = 32, side = 16, noise = 1.0, classes = 4, colour = 1"), "colour"),
        (TINY.replace("[model]", "[modle]"), "modle"),
        // Unknown names of variants.
        (with("data", "dataset", "\"cifar100\""), "cifar100"),
        (TINY.replace("[mode.full_batch]", "[mode.minibatch]"), "minibatch"),
        (format!("{TINY}\n[mode.sgd]\nbatch_size = 16\nepochs = 3\n"), "mode"),
        // Wrong types.
        (with("optimizer", "lr", "\"fast\""), "lr"),
        (with("mode.full_batch", "steps", "-3"), "steps"),
        (with("model", "blocks", "2"), "blocks"),
        // Missing keys.
        (removing("momentum"), "momentum"),
        (removing("checkpoint_every"), "checkpoint_every"),
        // Impossible values.
        (with("optimizer", "lr", "0.0"), "optimizer.lr"),
        (with("optimizer", "lr", "-0.1"), "optimizer.lr"),
        (with("optimizer", "lr", "nan"), "optimizer.lr"),
        (with("optimizer", "momentum", "1.0"), "optimizer.momentum"),
        (with("optimizer", "weight_decay", "-1e-4"), "optimizer.weight_decay"),
        (with("optimizer", "warmup", "20"), "optimizer.warmup"),
        (with("optimizer", "warmup", "6"), "optimizer.warmup"),
        (with("optimizer", "t_max", "0"), "optimizer.t_max"),
        (with("mode.full_batch", "block_size", "0"), "mode.full_batch.block_size"),
        (with("mode.full_batch", "block_size", "65"), "mode.full_batch.block_size"),
        (with("mode.full_batch", "steps", "0"), "mode.full_batch.steps"),
        (with("mode.full_batch", "clip", "0.0"), "mode.full_batch.clip"),
        (with("mode.full_batch", "clip", "-1.0"), "mode.full_batch.clip"),
        (with("mode.full_batch", "regulariser_alpha", "-0.5"), "mode.full_batch.regulariser_alpha"),
        (with("model", "width", "0"), "model.width"),
        (with("model", "blocks", "[]"), "model.blocks"),
        (with("model", "blocks", "[1, 0]"), "model.blocks"),
        (with("", "eval_every", "0"), "eval_every"),
        (with("", "checkpoint_every", "0"), "checkpoint_every"),
        (with("", "name", "\"\""), "name"),
        (adding("augmentation", "fixed_copies = 0"), "augmentation.fixed_copies"),
        (
            with("augmentation", "enabled", "false").replace("pad = 2", "pad = 2\nfixed_copies = 10"),
            "augmentation.fixed_copies",
        ),
        (data_line("n = 64, n_test = 32, side = 16, noise = 1.0, classes = 1"), "data.dataset.synthetic.classes"),
        (data_line("n = 64, n_test = 32, side = 16, noise = -1.0, classes = 4"), "data.dataset.synthetic.noise"),
        (data_line("n = 0, n_test = 32, side = 16, noise = 1.0, classes = 4"), "data.dataset.synthetic.n"),
        (data_line("n = 64, n_test = 32, side = 1, noise = 1.0, classes = 4"), "data.dataset.synthetic.side"),
        (adding("data", "train_subset = 0"), "data.train_subset"),
        // Syntax.
        (TINY.replace("lr = 0.2", "lr = "), "lr"),
    ];
    for (text, key) in &cases {
        match RunConfig::from_toml(text) {
            Ok(_) => panic!("accepted a config with bad `{key}`:\n{text}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(key), "the message does not name `{key}`: {msg}");
            }
        }
    }
    // SGD: a batch larger than the data set.
    let sgd = TINY.replace(
        "[mode.full_batch]\nsteps = 6\nblock_size = 16\nshuffle_blocks = true\nclip = 2.0\nregulariser_alpha = 0.5",
        "[mode.sgd]\nbatch_size = 128\nepochs = 3",
    );
    let msg = RunConfig::from_toml(&sgd).unwrap_err().to_string();
    assert!(msg.contains("mode.sgd.batch_size"), "{msg}");
    assert!(RunConfig::from_toml(&sgd.replace("batch_size = 128", "batch_size = 16")).is_ok());
    // A file: the error names the file and the key.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, adding("optimizer", "lrate = 0.1")).unwrap();
    let msg = RunConfig::load(&path).unwrap_err().to_string();
    assert!(msg.contains("bad.toml") && msg.contains("lrate"), "{msg}");
}

/// The command line: train two steps, stop, resume to the end.
#[test]
fn cli_trains_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(&cfg, with("mode.full_batch", "steps", "3").replace("eval_every = 3", "eval_every = 2")).unwrap();
    let out = tmp.path().join("run");
    let bin = env!("CARGO_BIN_EXE_fullbatch");
    let go = |extra: &[&str]| {
        let mut args =
            vec!["train", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-progress"];
        args.extend_from_slice(extra);
        let o = std::process::Command::new(bin).args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = go(&["--backend", "cpu", "--max-steps", "2"]);
    assert!(err.contains("--resume"), "{err}");
    go(&["--backend", "cpu", "--resume"]);
    assert_eq!(log_without_time(&out).len(), 3);
    // A bad config fails with the key in the message.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, with("optimizer", "lr", "0.0")).unwrap();
    let o = std::process::Command::new(bin)
        .args([
            "train",
            "--backend",
            "cpu",
            "--config",
            bad.to_str().unwrap(),
            "--out",
            tmp.path().join("x").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("optimizer.lr"));
}

/// Several devices need the `collective` feature; a build without it says so, and commands that
/// run on one device refuse several.
#[cfg(not(feature = "collective"))]
#[test]
fn several_devices_need_the_collective_feature() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let bin = env!("CARGO_BIN_EXE_fullbatch");
    let out = tmp.path().join("run");
    let o = std::process::Command::new(bin)
        .args(["train", "--backend", "cpu", "--devices", "0,0", "--config", cfg.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && text.contains("`collective` feature"), "{text}");
    let o = std::process::Command::new(bin)
        .args(["device", "bench", "--backend", "cpu", "--devices", "0,0", "--width", "4", "--batch", "4"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && text.contains("runs on one device"), "{text}");
}

/// `fullbatch device check-gradient | bench | cache` on the CPU: the JSON each prints, the
/// full-batch timing, and the kernel cache shown and cleared.
#[test]
fn device_commands_run_on_the_cpu() {
    let bin = env!("CARGO_BIN_EXE_fullbatch");
    let tmp = tempfile::tempdir().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let g = json(&["device", "check-gradient", "--backend", "cpu", "--width", "4", "--batch", "4"]);
    // The same backend on both sides: the same gradient.
    assert_eq!(g["gradient"]["rel_l2"], 0.0, "{g}");
    assert_eq!(g["gradient"]["pass"], true);
    let b =
        json(&["device", "bench", "--backend", "cpu", "--width", "4", "--batch", "4", "--warmup", "2", "--iters", "2"]);
    let t = &b["throughput"];
    assert!(t["images_per_s"].as_f64().unwrap() > 0.0 && t["first_iter_s"].as_f64().unwrap() > 0.0, "{b}");
    assert!(t["first_iter_s"].as_f64().unwrap() <= t["warmup_s"].as_f64().unwrap(), "{b}");
    let f = json(&["device", "bench", "--backend", "cpu", "--width", "4", "--batch", "4", "--images", "12"]);
    let fb = &f["full_batch"];
    assert_eq!((fb["images"].as_u64(), fb["block"].as_u64()), (Some(12), Some(4)), "{f}");
    assert!(fb["regularised_step_s"].as_f64().unwrap() > 0.0 && fb["plain_step_s"].as_f64().unwrap() > 0.0);
    // Too few images for two blocks: an error naming the value.
    let o = std::process::Command::new(bin)
        .args(["device", "bench", "--backend", "cpu", "--width", "4", "--batch", "4", "--images", "6"])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("images"));

    let dir = tmp.path().join("kc");
    std::fs::create_dir_all(dir.join("cubecl/cuda/0.10.0/ptx")).unwrap();
    std::fs::write(dir.join("cubecl/cuda/0.10.0/ptx/toc.json.log"), "{}\n{}\n").unwrap();
    let c = json(&["device", "cache", "--kernel-cache", dir.to_str().unwrap()]);
    assert_eq!((c["kernels"].as_u64(), c["exists"].as_bool()), (Some(2), Some(true)), "{c}");
    json_ok(bin, &["device", "cache", "--kernel-cache", dir.to_str().unwrap(), "--clear"]);
    assert!(!dir.exists());
}

fn json_ok(bin: &str, args: &[&str]) {
    let o = std::process::Command::new(bin).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}
