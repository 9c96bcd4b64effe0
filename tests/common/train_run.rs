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
