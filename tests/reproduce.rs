//! Tests of `fullbatch reproduce` on the CPU (Flex backend, the tiny run of tests/train.rs as
//! rows): rows in concurrent device slots, continuation of unfinished rows with logs identical
//! to uninterrupted runs, finished rows skipped untouched, a stop request forwarded to every row,
//! the report's mean and standard deviation against the logs, and every kind of bad input
//! refused before anything runs.
//!
//! Run in release: burn's kernels are compiled in this crate and are very slow in debug builds.
#![cfg(feature = "burn")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fullbatch::deep::CpuAutodiff;
use fullbatch::deep::config::RunConfig;
use fullbatch::deep::run;

mod common;
use common::train_run::{TINY_RUN, log_without_time, options};

/// Two rows: `tiny-a` (the tiny run, `steps` steps) and `tiny-b` (the same with lr 0.1).
fn write_rows(dir: &Path, steps: usize) -> PathBuf {
    let configs = dir.join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    let tiny = TINY_RUN.replace("steps = 6", &format!("steps = {steps}")).replace("t_max = 10", "t_max = 60");
    std::fs::write(configs.join("tiny-a.toml"), tiny.replace("name = \"tiny\"", "name = \"tiny-a\"")).unwrap();
    let b = tiny.replace("name = \"tiny\"", "name = \"tiny-b\"").replace("lr = 0.2", "lr = 0.1");
    std::fs::write(configs.join("tiny-b.toml"), b).unwrap();
    configs
}

fn reproduce(configs: &Path, runs: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["reproduce", "--backend", "cpu", "--no-progress"];
    let (c, r) = (configs.to_str().unwrap(), runs.to_str().unwrap());
    args.extend_from_slice(&["--configs", c, "--runs", r]);
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_fullbatch")).args(&args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The log of an uninterrupted run of `row` with `seed`, made by the library directly.
fn reference_log(configs: &Path, row: &str, seed: u64, dir: &Path) -> Vec<serde_json::Value> {
    let mut config = RunConfig::load(&configs.join(format!("{row}.toml"))).unwrap();
    config.seed = seed;
    let out = dir.join(format!("reference-{row}-{seed}"));
    run::run::<CpuAutodiff>(&config, &out, &Default::default(), &options(false, None)).unwrap();
    log_without_time(&out)
}

/// The last logged test accuracy of a run directory, in %.
fn last_test_acc(dir: &Path) -> f64 {
    let log = log_without_time(dir);
    100.0 * log.iter().rev().find_map(|e| e["test_acc"].as_f64()).unwrap()
}

/// Two rows x two seeds in two slots of device 0: stopped after 2 steps, continued to the end
/// (logs equal to uninterrupted runs), skipped when finished (files untouched), and reported.
#[test]
fn rows_run_in_parallel_continue_exactly_and_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let configs = write_rows(tmp.path(), 6);
    let runs = tmp.path().join("runs");
    let seeds = ["--seeds", "3,4", "--devices", "0,0"];

    let first = reproduce(&configs, &runs, &[&seeds[..], &["--max-steps", "2"]].concat());
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stderr(&first);
    // Both slots start before any row ends.
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("started") && lines[1].contains("started"), "{text}");
    assert_eq!(text.matches("stopped with a checkpoint at step 2").count(), 8, "{text}");
    // Seed 3 is tiny-a's own: plain directory; seed 4 gets a suffix.
    let dirs = ["tiny-a", "tiny-a-seed4", "tiny-b", "tiny-b-seed4"];
    for d in dirs {
        assert_eq!(log_without_time(&runs.join(d)).len(), 2, "{d}");
    }

    // Called again with the same --max-steps, nothing starts and nothing is written.
    let segments = |d: &str| std::fs::read_to_string(runs.join(d).join("segments.jsonl")).unwrap();
    let before: Vec<String> = dirs.iter().map(|d| segments(d)).collect();
    let again = reproduce(&configs, &runs, &[&seeds[..], &["--max-steps", "2"]].concat());
    assert!(again.status.success() && !stderr(&again).contains("started"), "{}", stderr(&again));
    assert_eq!(dirs.iter().map(|d| segments(d)).collect::<Vec<_>>(), before);

    let second = reproduce(&configs, &runs, &seeds);
    assert!(second.status.success(), "{}", stderr(&second));
    for (row, seed, d) in [("tiny-a", 3, "tiny-a"), ("tiny-b", 4, "tiny-b-seed4")] {
        assert_eq!(log_without_time(&runs.join(d)), reference_log(&configs, row, seed, tmp.path()), "{d}");
    }

    // Finished rows are skipped and left as they are.
    let before: Vec<Vec<u8>> = dirs.iter().map(|d| std::fs::read(runs.join(d).join("log.jsonl")).unwrap()).collect();
    let third = reproduce(&configs, &runs, &seeds);
    assert!(third.status.success(), "{}", stderr(&third));
    assert_eq!(stderr(&third).matches("finished earlier").count(), 4, "{}", stderr(&third));
    let after: Vec<Vec<u8>> = dirs.iter().map(|d| std::fs::read(runs.join(d).join("log.jsonl")).unwrap()).collect();
    assert_eq!(before, after);

    // The report: mean and sample standard deviation of the last test accuracies of the logs.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(runs.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    // Only rows of other configurations ran: the paper's rows are left out.
    assert_eq!(rows.len(), 2, "{report}");
    let a = rows.iter().find(|r| r["row"] == "tiny-a").unwrap();
    let (x, y) = (last_test_acc(&runs.join("tiny-a")), last_test_acc(&runs.join("tiny-a-seed4")));
    let mean = a["mean"].as_f64().unwrap();
    assert!((mean - (x + y) / 2.0).abs() < 1e-9, "{a}");
    let std = ((x - mean).powi(2) + (y - mean).powi(2)).sqrt();
    assert!((a["std"].as_f64().unwrap() - std).abs() < 1e-9, "{a}");
    assert_eq!(a["comparable"], false);
    let md = std::fs::read_to_string(runs.join("report.md")).unwrap();
    assert!(md.contains(&format!("| tiny-a | - | {mean:.2} ± {std:.2} (n = 2), not comparable | 3, 4 |")), "{md}");
}

/// A run killed before its first checkpoint (config, run.json and a log line, no checkpoint)
/// is continued by starting it over, and ends as an uninterrupted run.
#[test]
fn a_row_killed_before_its_first_checkpoint_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let configs = write_rows(tmp.path(), 6);
    let runs = tmp.path().join("runs");
    let o = reproduce(&configs, &runs, &["--rows", "tiny-a", "--max-steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(runs.join("tiny-a/checkpoints")).unwrap();
    let o = reproduce(&configs, &runs, &["--rows", "tiny-a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("unfinished at 1/6"), "{}", stderr(&o));
    assert_eq!(log_without_time(&runs.join("tiny-a")), reference_log(&configs, "tiny-a", 3, tmp.path()));
}

/// SIGTERM to the job: every running row stops after its step with a checkpoint, the job exits
/// 130, and the next call continues both rows to logs equal to uninterrupted runs.
#[test]
fn a_stop_request_reaches_every_row() {
    let tmp = tempfile::tempdir().unwrap();
    let configs = write_rows(tmp.path(), 40);
    let runs = tmp.path().join("runs");
    let (c, r) = (configs.to_str().unwrap(), runs.to_str().unwrap());
    let job = Command::new(env!("CARGO_BIN_EXE_fullbatch"))
        .args(["reproduce", "--backend", "cpu", "--no-progress", "--configs", c, "--runs", r, "--devices", "0,0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let logged = |d: &str| std::fs::read_to_string(runs.join(d).join("log.jsonl")).map_or(0, |t| t.lines().count());
    while logged("tiny-a") < 1 || logged("tiny-b") < 1 {
        assert!(started.elapsed() < Duration::from_secs(120), "no steps logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(job.id() as libc::pid_t, libc::SIGTERM) };
    let out = job.wait_with_output().unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{text}");
    for d in ["tiny-a", "tiny-b"] {
        let (_, step) = run::latest_checkpoint(&runs.join(d)).unwrap().unwrap();
        assert!(step < 40 && step == log_without_time(&runs.join(d)).len(), "{d}: checkpoint {step}\n{text}");
    }
    let o = reproduce(&configs, &runs, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    for row in ["tiny-a", "tiny-b"] {
        assert_eq!(log_without_time(&runs.join(row)), reference_log(&configs, row, 3, tmp.path()), "{row}");
    }
}

/// Unknown rows, a missing configurations directory, a device that does not exist, missing
/// CIFAR-10 files and a run directory of another configuration: each a clear error naming the
/// thing, exit status non-zero, nothing started or overwritten.
#[test]
fn bad_input_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let configs = write_rows(tmp.path(), 6);
    let runs = tmp.path().join("runs");
    let refused = |extra: &[&str], configs: &Path, wanted: &[&str]| {
        let o = reproduce(configs, &runs, extra);
        let text = stderr(&o);
        assert!(!o.status.success(), "{extra:?} was accepted: {text}");
        for w in wanted {
            assert!(text.contains(w), "{extra:?}: '{w}' not in {text}");
        }
    };
    refused(&["--rows", "tiny-c"], &configs, &["tiny-c", "tiny-a, tiny-b"]);
    refused(&[], &tmp.path().join("nowhere"), &["nowhere", "--configs"]);
    refused(&["--devices", "0,1"], &configs, &["device 1 does not exist"]);
    assert!(!runs.exists(), "a refused job created {}", runs.display());

    // A CIFAR-10 row: without --data, and with a directory that lacks a file.
    let cifar = tmp.path().join("cifar-configs");
    std::fs::create_dir_all(&cifar).unwrap();
    let row = TINY_RUN.replace("name = \"tiny\"", "name = \"tiny-cifar\"").replace(
        "dataset = { synthetic = { n = 64, n_test = 32, side = 16, noise = 20.0, classes = 4 } }",
        "dataset = \"cifar10\"",
    );
    std::fs::write(cifar.join("tiny-cifar.toml"), row).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fullbatch"))
        .args(["reproduce", "--backend", "cpu", "--configs", cifar.to_str().unwrap(), "--runs", runs.to_str().unwrap()])
        .env_remove("FULLBATCH_CIFAR10")
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("--data"), "{}", stderr(&o));
    let data = tmp.path().join("cifar-data");
    std::fs::create_dir_all(&data).unwrap();
    refused(&["--data", data.to_str().unwrap()], &cifar, &["data_batch_1.bin"]);
    assert!(!runs.exists(), "a refused job created {}", runs.display());

    // A second job on the same runs directory (the lock names a live process: this test's) is
    // refused; a lock left by a process that is gone is taken over.
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::write(runs.join("reproduce.lock"), format!("{}\n", std::process::id())).unwrap();
    refused(&["--rows", "tiny-a", "--max-steps", "1"], &configs, &["another `fullbatch reproduce`", "reproduce.lock"]);
    assert!(!runs.join("tiny-a").exists(), "a refused job started tiny-a");
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(runs.join("reproduce.lock"), format!("{}\n", gone.id())).unwrap();

    // A run directory holding another configuration of the row.
    let o = reproduce(&configs, &runs, &["--rows", "tiny-a", "--max-steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read(runs.join("tiny-a/log.jsonl")).unwrap();
    let changed = std::fs::read_to_string(configs.join("tiny-a.toml")).unwrap().replace("lr = 0.2", "lr = 0.3");
    std::fs::write(configs.join("tiny-a.toml"), changed).unwrap();
    refused(&[], &configs, &["different configuration", "tiny-a", "nothing was changed"]);
    assert_eq!(std::fs::read(runs.join("tiny-a/log.jsonl")).unwrap(), log);
    assert!(!runs.join("tiny-b").exists(), "a refused job started tiny-b");
    assert!(!runs.join("reproduce.lock").exists(), "the lock outlived its job");
}
