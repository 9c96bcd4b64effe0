//! Data-parallel full-batch steps (feature `collective`) against the single-device step, on the
//! CPU: two and three "devices" are threads sharing burn's Flex device, each with its own model
//! replica, joined by burn's collective all-reduce. The gradient, the loss, the mean squared
//! block-gradient norm and the BatchNorm running statistics after the step must equal the
//! single-device ones to `f32` accuracy (relative 1e-5 of the largest entry), with and without
//! the regulariser, in sequential and shuffled block order.
//!
//! Run in release: burn's kernels are compiled in this crate and are very slow in debug builds.
#![cfg(feature = "collective")]

use burn::tensor::Tensor;
use fullbatch::Error;
use fullbatch::data::cifar;
use fullbatch::deep::parallel::{data_parallel_gradient, shares};
use fullbatch::deep::resnet::{ResNet, ResNetConfig};
use fullbatch::deep::train::{BlockOrder, Regulariser, block_plan, blocks_gradient, grads_to_vec};
use fullbatch::deep::{Batch, CpuAutodiff, batch_from_images};

type B = CpuAutodiff;

fn tiny(seed: u64) -> ResNet<B> {
    ResNetConfig::new()
        .with_width(4)
        .with_blocks(vec![1, 1])
        .with_num_classes(4)
        .init(&Default::default(), seed)
        .unwrap()
}

fn data(n: usize, seed: u64) -> Batch<B> {
    let set = cifar::synthetic(n, 3, 8, 4, 20.0, seed).unwrap();
    let (mean, std) = cifar::channel_stats(&set);
    batch_from_images(&set, &mean, &std, &Default::default()).unwrap()
}

fn values(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Every BatchNorm's running mean and variance, concatenated.
fn running(model: &ResNet<B>) -> Vec<f32> {
    model
        .batch_norms()
        .iter()
        .flat_map(|bn| [values(bn.running_mean.value_sync()), values(bn.running_var.value_sync())].concat())
        .collect()
}

/// `|a - b| <= rel * max|b|` elementwise.
fn assert_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst <= rel * scale, "{what}: max difference {worst:e} vs max {scale:e} (tolerance {rel:e} relative)");
}

#[test]
fn shares_are_contiguous_and_balanced() {
    assert_eq!(shares(8, 3), [(0, 3), (3, 3), (6, 2)]);
    assert_eq!(shares(4, 4), [(0, 1), (1, 1), (2, 1), (3, 1)]);
    assert_eq!(shares(5, 1), [(0, 5)]);
}

#[test]
fn data_parallel_step_equals_the_single_device_step() {
    let data = data(64, 5);
    let regularised = Regulariser { alpha: 0.5, eps: 0.01, lr: 0.4 };
    for (devices, order, regulariser) in [
        (2, BlockOrder::Sequential, None),
        (3, BlockOrder::ShuffledBlocks { seed: 4 }, Some(regularised)),
        (2, BlockOrder::Sequential, Some(regularised)),
    ] {
        let what = format!("{devices} devices, {order:?}, regulariser {}", regulariser.is_some());
        let plan = block_plan(64, 8, order).unwrap();
        let single = tiny(7);
        let before = running(&single);
        let reference = blocks_gradient(&single, &data, &plan, regulariser.as_ref()).unwrap();
        let parallel = tiny(7);
        let on = vec![Default::default(); devices];
        let got = data_parallel_gradient(&parallel, &on, &data, &plan, regulariser.as_ref()).unwrap();
        assert_eq!(got.blocks, 8);
        let (g, r) = (grads_to_vec(&parallel, &got.grads).unwrap(), grads_to_vec(&single, &reference.grads).unwrap());
        assert_close(&g, &r, 1e-5, &format!("gradient, {what}"));
        assert!((got.loss - reference.loss).abs() <= 1e-5 * reference.loss, "loss, {what}");
        let sq = (got.mean_block_grad_sq_norm - reference.mean_block_grad_sq_norm).abs();
        assert!(sq <= 1e-5 * reference.mean_block_grad_sq_norm, "squared norm, {what}");
        // The running statistics moved (8 or 16 passes) and ended where one device's did.
        let (after_single, after_parallel) = (running(&single), running(&parallel));
        assert!(before.iter().zip(&after_single).any(|(a, b)| (a - b).abs() > 1e-3), "{what}: nothing moved");
        assert_close(&after_parallel, &after_single, 1e-5, &format!("running statistics, {what}"));
    }
}

#[test]
fn more_devices_than_blocks_is_refused() {
    let data = data(16, 5);
    let plan = block_plan(16, 8, BlockOrder::Sequential).unwrap();
    let model = tiny(7);
    match data_parallel_gradient(
        &model,
        &[Default::default(), Default::default(), Default::default()],
        &data,
        &plan,
        None,
    ) {
        Err(Error::InvalidParameter { field, problem }) => {
            assert_eq!(field, "devices");
            assert!(problem.contains("3 devices") && problem.contains("2 blocks"), "{problem}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

mod common;

/// `fullbatch train --devices 0,0`: a tiny full-batch run (regulariser, clipping, shuffled
/// blocks, augmentation) data-parallel over two CPU threads. Its log equals the one-device log to
/// `f32` accuracy (losses and gradient norms within relative 1e-4 after six steps), it records
/// two devices with its backend, and resuming it on one device is refused.
#[test]
fn train_on_two_devices_logs_what_one_device_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tiny.toml");
    std::fs::write(&config, common::train_run::TINY_RUN).unwrap();
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec!["train", "--backend", "cpu", "--no-progress", "--config", config.to_str().unwrap()];
        let out = tmp.path().join(out);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_fullbatch")).args(&args).output().unwrap()
    };
    let one = train("one", &[]);
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let two = train("two", &["--devices", "0,0"]);
    assert!(two.status.success(), "{}", String::from_utf8_lossy(&two.stderr));
    let (a, b) = (
        common::train_run::log_without_time(&tmp.path().join("one")),
        common::train_run::log_without_time(&tmp.path().join("two")),
    );
    assert_eq!(a.len(), 6);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for key in ["train_loss", "grad_norm", "mean_block_grad_sq_norm"] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!((u - v).abs() <= 1e-4 * u.abs(), "step {}: {key} {u} vs {v}", x["step"]);
        }
    }
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("two/run.json")).unwrap()).unwrap();
    assert_eq!(info["backend"], "flex-f32 x2");
    let resumed = train("two", &["--resume", "--max-steps", "7"]);
    let text = String::from_utf8_lossy(&resumed.stderr);
    assert!(!resumed.status.success() && text.contains("flex-f32 x2"), "{text}");
}

/// Several devices for an SGD row are refused before anything is written.
#[test]
fn an_sgd_row_runs_on_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("sgd.toml");
    let text = common::train_run::TINY_RUN.replace(
        "[mode.full_batch]\nsteps = 6\nblock_size = 16\nshuffle_blocks = true\nclip = 2.0\nregulariser_alpha = 0.5",
        "[mode.sgd]\nbatch_size = 16\nepochs = 4",
    );
    assert!(text.contains("[mode.sgd]"));
    std::fs::write(&config, text).unwrap();
    let out = tmp.path().join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fullbatch"))
        .args(["train", "--backend", "cpu", "--devices", "0,0", "--config", config.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && text.contains("SGD row runs on one"), "{text}");
    assert!(!out.join("log.jsonl").exists());
}

/// `fullbatch reproduce --devices-per-row 2`: a full-batch row runs data-parallel on its group
/// of two devices, an SGD row on the group's first; a count that does not divide --devices is
/// refused.
#[test]
fn reproduce_gives_full_batch_rows_a_group_of_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let configs = tmp.path().join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    let fb = common::train_run::TINY_RUN.replace("name = \"tiny\"", "name = \"tiny-fb\"");
    std::fs::write(configs.join("tiny-fb.toml"), &fb).unwrap();
    let sgd = fb.replace("name = \"tiny-fb\"", "name = \"tiny-sgd\"").replace(
        "[mode.full_batch]\nsteps = 6\nblock_size = 16\nshuffle_blocks = true\nclip = 2.0\nregulariser_alpha = 0.5",
        "[mode.sgd]\nbatch_size = 16\nepochs = 4",
    );
    std::fs::write(configs.join("tiny-sgd.toml"), sgd).unwrap();
    let runs = tmp.path().join("runs");
    let reproduce = |devices: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fullbatch"))
            .args(["reproduce", "--backend", "cpu", "--no-progress", "--devices-per-row", "2", "--devices", devices])
            .args(["--configs", configs.to_str().unwrap(), "--runs", runs.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = reproduce("0,0,0");
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && text.contains("--devices-per-row 2 does not divide the 3 devices"), "{text}");
    let o = reproduce("0,0");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let backend = |row: &str| -> serde_json::Value {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(runs.join(row).join("run.json")).unwrap()).unwrap();
        info["backend"].clone()
    };
    assert_eq!(backend("tiny-fb"), "flex-f32 x2");
    assert_eq!(backend("tiny-sgd"), "flex-f32");
    assert_eq!(common::train_run::log_without_time(&runs.join("tiny-fb")).len(), 6);
    assert_eq!(common::train_run::log_without_time(&runs.join("tiny-sgd")).len(), 4);
}
