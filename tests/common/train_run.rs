//! The tiny `fullbatch train` run shared by the burn tests (tests/train.rs,
//! tests/deep_sharpness.rs): its configuration, run options and log reader.

use std::path::Path;

use fullbatch::deep::run::{RunOptions, WALL_TIME_FIELDS};

/// A tiny full-batch run: width 4, two stages of one block, 64 synthetic 16x16 images in 4
/// classes, blocks of 16 in shuffled order, augmentation every step, clipping and the
/// regulariser on, 6 steps.
pub const TINY_RUN: &str = r#"
name = "tiny"
seed = 3
eval_every = 3
checkpoint_every = 2
eval_batch_size = 32

[data]
dataset = { synthetic = { n = 64, n_test = 32, side = 16, noise = 20.0, classes = 4 } }

[augmentation]
enabled = true
pad = 2

[model]
width = 4
blocks = [1, 1]

[mode.full_batch]
steps = 6
block_size = 16
shuffle_blocks = true
clip = 2.0
regulariser_alpha = 0.5

[optimizer]
lr = 0.2
momentum = 0.9
nesterov = true
weight_decay = 5e-4
warmup = 2
t_max = 10
"#;

/// Options of a CPU run: resume or not, and where to stop.
pub fn options(resume: bool, max_steps: Option<usize>) -> RunOptions<'static> {
    RunOptions { resume, max_steps, backend: "flex-f32".into(), device: "cpu".into(), ..RunOptions::default() }
}

/// The log lines as JSON objects without the wall-time fields.
pub fn log_without_time(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object_mut().unwrap();
            for f in WALL_TIME_FIELDS {
                assert!(obj.remove(f).is_some(), "field {f} missing");
            }
            v
        })
        .collect()
}

/// On backend `B`: the tiny run uninterrupted, and the same run stopped after 3 steps
/// (`--max-steps`) then resumed. Asserts that every log line of the resumed run equals the
/// uninterrupted one (wall-time fields excluded), that the training loss falls, and that
/// `segments.jsonl` holds one record per process with its steps, backend and first-step time.
/// Returns the uninterrupted run's log.
pub fn check_resume_on<B: burn::tensor::backend::AutodiffBackend>(
    device: &B::Device,
    backend: &str,
) -> Vec<serde_json::Value> {
    use fullbatch::deep::config::RunConfig;
    use fullbatch::deep::run;
    let config = RunConfig::from_toml(TINY_RUN).unwrap();
    let opts = |resume: bool, max_steps: Option<usize>| RunOptions {
        resume,
        max_steps,
        backend: backend.into(),
        device: "test".into(),
        ..RunOptions::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let summary = run::run::<B>(&config, &full, device, &opts(false, None)).unwrap();
    assert_eq!((summary.steps_done, summary.stopped_early), (6, false));
    let reference = log_without_time(&full);
    assert_eq!(reference.len(), 6);
    let loss = |i: usize| reference[i]["train_loss"].as_f64().unwrap();
    assert!(loss(5) < 0.85 * loss(0), "{backend}: training loss {} -> {}", loss(0), loss(5));

    let part = tmp.path().join("part");
    let first = run::run::<B>(&config, &part, device, &opts(false, Some(3))).unwrap();
    assert_eq!((first.steps_done, first.stopped_early), (3, true));
    run::run::<B>(&config, &part, device, &opts(true, None)).unwrap();
    assert_eq!(log_without_time(&part), reference, "{backend}: resumed log differs");

    let segments = run::read_segments(&part).unwrap();
    assert_eq!(segments.len(), 2);
    let steps: Vec<(usize, usize, &str)> =
        segments.iter().map(|s| (s.start_step, s.end_step, s.outcome.as_str())).collect();
    assert_eq!(steps, [(0, 3, "stopped"), (3, 6, "finished")]);
    for s in &segments {
        assert_eq!(s.backend, backend);
        assert!(s.first_step_s.is_some_and(|t| t > 0.0));
        assert_eq!(s.steady_steps, s.end_step - s.start_step - 1);
        assert!(s.steady_step_s.is_some_and(|t| t > 0.0));
        assert!(s.kernel_cache.is_none() && s.kernels_compiled.is_none());
    }
    assert_eq!(run::read_segments(&full).unwrap().len(), 1);
    reference
}
