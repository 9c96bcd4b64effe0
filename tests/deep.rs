//! Tests of the burn half on the CPU (Flex backend): the ResNet's size and shapes, full-batch
//! gradients over blocks, global-norm clipping, the learning-rate schedule, Nesterov SGD against
//! a hand-written recurrence, the finite-difference regulariser, and a tiny training run.
//!
//! Run in release: burn's kernels are compiled in this crate and are very slow in debug builds.
#![cfg(feature = "burn")]

use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fullbatch::data::cifar;
use fullbatch::deep::resnet::{ResNet, ResNetConfig};
use fullbatch::deep::train::{
    self, BlockOrder, FullBatchOptions, Regulariser, WarmupCosine, block_gradient, block_plan, clip_global_norm,
    full_batch_gradient, grads_to_vec,
};
use fullbatch::deep::{Batch, Cpu, CpuAutodiff, batch_from_images};

type B = CpuAutodiff;

fn device() -> burn::backend::flex::FlexDevice {
    Default::default()
}

/// A tiny ResNet: width 4, two stages of one block, 3 channels, 4 classes.
fn tiny(seed: u64) -> ResNet<B> {
    ResNetConfig::new().with_width(4).with_blocks(vec![1, 1]).with_num_classes(4).init(&device(), seed).unwrap()
}

/// `n` synthetic 3-channel `side x side` images in 4 classes, normalised with their own stats.
fn data(n: usize, side: usize, seed: u64) -> Batch<B> {
    let set = cifar::synthetic(n, 3, side, 4, 20.0, seed).unwrap();
    let (mean, std) = cifar::channel_stats(&set);
    batch_from_images(&set, &mean, &std, &device()).unwrap()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Asserts `|a - b| <= rel * max|b|` elementwise.
fn assert_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = max_abs(b).max(f32::MIN_POSITIVE);
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst <= rel * scale, "{what}: max difference {worst:e} vs max |g| {scale:e} (tolerance {rel:e} relative)");
}

#[test]
fn resnet18_has_11_173_962_parameters() {
    let start = Instant::now();
    let model: ResNet<Cpu> = ResNetConfig::new().init(&Default::default(), 0).unwrap();
    // burn 0.21's num_params also counts BatchNorm's running mean and variance (4800 channels).
    assert_eq!(model.num_running_stats(), 9600);
    assert_eq!(model.num_params(), 11_173_962 + 9600);
    assert_eq!(model.num_trainable_params(), 11_173_962);
    // Eight BasicBlocks, three of them with a projection shortcut.
    assert_eq!(model.blocks.len(), 8);
    assert_eq!(model.blocks.iter().filter(|b| b.shortcut.is_some()).count(), 3);
    // One input channel and 100 classes change only the stem and the classifier.
    let other: ResNet<Cpu> =
        ResNetConfig::new().with_in_channels(1).with_num_classes(100).init(&Default::default(), 0).unwrap();
    assert_eq!(other.num_trainable_params(), 11_173_962 - 2 * 9 * 64 + 90 * 512 + 90);
    println!("built two ResNet-18s in {:.2} s", start.elapsed().as_secs_f64());
}

#[test]
fn config_is_validated() {
    let d = Default::default();
    assert!(ResNetConfig::new().with_width(0).init::<Cpu>(&d, 0).is_err());
    assert!(ResNetConfig::new().with_blocks(vec![]).init::<Cpu>(&d, 0).is_err());
    assert!(ResNetConfig::new().with_blocks(vec![2, 0]).init::<Cpu>(&d, 0).is_err());
    assert!(ResNetConfig::new().with_num_classes(1).init::<Cpu>(&d, 0).is_err());
    assert_eq!(ResNetConfig::new().out_width(), 512);
}

#[test]
fn init_is_seeded_and_kaiming_fan_out() {
    let cfg = ResNetConfig::new().with_width(16).with_blocks(vec![1, 1]);
    let a: ResNet<Cpu> = cfg.init(&Default::default(), 3).unwrap();
    let b: ResNet<Cpu> = cfg.init(&Default::default(), 3).unwrap();
    let c: ResNet<Cpu> = cfg.init(&Default::default(), 4).unwrap();
    let (pa, pb, pc) =
        (train::params_to_vec(&a).unwrap(), train::params_to_vec(&b).unwrap(), train::params_to_vec(&c).unwrap());
    assert_eq!(pa, pb);
    assert_ne!(pa, pc);
    // Second stage's first conv: 32 x 16 x 3 x 3, std sqrt(2 / (32 * 9)).
    let w: Vec<f32> = a.blocks[1].conv1.weight.val().into_data().to_vec().unwrap();
    let var = w.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / w.len() as f64;
    let expected = 2.0 / (32.0 * 9.0);
    assert!((var / expected - 1.0).abs() < 0.1, "variance {var} vs {expected}");
    let gamma: Vec<f32> = a.blocks[0].bn1.gamma.val().into_data().to_vec().unwrap();
    assert!(gamma.iter().all(|&g| g == 1.0));
}

#[test]
fn forward_shapes_at_tiny_width() {
    let d = Default::default();
    let model: ResNet<Cpu> = ResNetConfig::new().with_width(4).init(&d, 1).unwrap();
    let x = Tensor::<Cpu, 4>::zeros([5, 3, 16, 16], &d);
    assert_eq!(model.forward(x).dims(), [5, 10]);
    let x = Tensor::<Cpu, 4>::ones([2, 3, 8, 8], &d);
    assert_eq!(model.forward(x).dims(), [2, 10]);
    let one_channel: ResNet<Cpu> = ResNetConfig::new().with_width(4).with_in_channels(1).init(&d, 1).unwrap();
    assert_eq!(one_channel.forward(Tensor::zeros([3, 1, 32, 32], &d)).dims(), [3, 10]);
}

#[test]
fn block_plan_drops_last_and_shuffles() {
    let plan = block_plan(10, 3, BlockOrder::Sequential).unwrap();
    assert_eq!(plan, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]]);
    let shuffled = block_plan(10, 3, BlockOrder::ShuffledBlocks { seed: 5 }).unwrap();
    let mut sorted = shuffled.clone();
    sorted.sort();
    assert_eq!(sorted, plan);
    let ex = block_plan(10, 3, BlockOrder::ShuffledExamples { seed: 5 }).unwrap();
    assert_eq!(ex.len(), 3);
    let mut all: Vec<usize> = ex.concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9);
    assert!(block_plan(10, 0, BlockOrder::Sequential).is_err());
    assert!(block_plan(10, 11, BlockOrder::Sequential).is_err());
}

/// The running mean over blocks equals the mean of per-block gradients computed one by one, in
/// any block order; with one block it is the plain gradient. Tolerance: 1e-5 of the largest
/// gradient entry (f32).
#[test]
fn full_batch_gradient_is_mean_of_block_gradients() {
    let model = tiny(11);
    let data = data(26, 8, 1);
    let block = 8;
    let opts = FullBatchOptions { block_size: block, order: BlockOrder::Sequential, regulariser: None };
    let full = full_batch_gradient(&model, &data, &opts).unwrap();
    assert_eq!(full.blocks, 3);
    let got = grads_to_vec(&model, &full.grads).unwrap();

    let mut sum = vec![0f64; got.len()];
    let mut loss_sum = 0.0;
    let mut sq_sum = 0.0;
    for k in 0..3 {
        let images = data.images.clone().narrow(0, k * block, block);
        let labels = data.labels.clone().narrow(0, k * block, block);
        let (g, loss) = block_gradient(&model, images, labels);
        let v = grads_to_vec(&model, &g).unwrap();
        sq_sum += v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
        for (s, x) in sum.iter_mut().zip(&v) {
            *s += f64::from(*x);
        }
        loss_sum += f64::from(loss.into_data().to_vec::<f32>().unwrap()[0]);
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / 3.0) as f32).collect();
    assert!(max_abs(&mean) > 1e-4, "gradient too small to test");
    assert_close(&got, &mean, 1e-5, "running mean vs mean of blocks");
    assert!((full.loss - loss_sum / 3.0).abs() < 1e-5 * full.loss.abs(), "{} vs {}", full.loss, loss_sum / 3.0);
    assert!((full.mean_block_grad_sq_norm / (sq_sum / 3.0) - 1.0).abs() < 1e-4);

    let shuffled = FullBatchOptions { order: BlockOrder::ShuffledBlocks { seed: 3 }, ..opts };
    let g = grads_to_vec(&model, &full_batch_gradient(&model, &data, &shuffled).unwrap().grads).unwrap();
    assert_close(&g, &mean, 1e-5, "shuffled block order");

    // One block of all 26 images: the plain gradient of the whole batch.
    let one = FullBatchOptions { block_size: 26, ..opts };
    let g1 = grads_to_vec(&model, &full_batch_gradient(&model, &data, &one).unwrap().grads).unwrap();
    let (plain, _) = block_gradient(&model, data.images.clone(), data.labels.clone());
    assert_close(&g1, &grads_to_vec(&model, &plain).unwrap(), 1e-6, "one block vs plain gradient");

    // Shuffling examples changes the blocks (BatchNorm batches), so the gradient changes.
    let ex = FullBatchOptions { order: BlockOrder::ShuffledExamples { seed: 3 }, ..opts };
    let ge = grads_to_vec(&model, &full_batch_gradient(&model, &data, &ex).unwrap().grads).unwrap();
    assert_eq!(ge.len(), mean.len());
    assert!(ge.iter().zip(&mean).any(|(a, b)| (a - b).abs() > 1e-4 * max_abs(&mean)));
}

#[test]
fn global_clipping_scales_to_threshold_and_keeps_direction() {
    let model = tiny(2);
    let data = data(16, 8, 2);
    let (g, _) = block_gradient(&model, data.images.clone(), data.labels.clone());
    let v = grads_to_vec(&model, &g).unwrap();
    let host_norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let norm = train::global_grad_norm(&model, &g).unwrap();
    assert!((norm / host_norm - 1.0).abs() < 1e-5, "{norm} vs {host_norm}");

    // Above the threshold: norm becomes clip * norm / (norm + 1e-6), direction unchanged.
    let clip = norm / 3.0;
    let (clipped, report) = clip_global_norm(&model, g, clip).unwrap();
    assert!(report.clipped);
    assert!((report.norm / norm - 1.0).abs() < 1e-6);
    let c = grads_to_vec(&model, &clipped).unwrap();
    let after = c.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    assert!((after / clip - 1.0).abs() < 1e-5, "norm after clipping {after} vs {clip}");
    let scale = (clip / (norm + 1e-6)) as f32;
    let expected: Vec<f32> = v.iter().map(|x| x * scale).collect();
    assert_close(&c, &expected, 1e-6, "clipped = scale * g");
    let cos = c.iter().zip(&v).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() / (after * host_norm);
    assert!(cos > 1.0 - 1e-6, "cosine {cos}");

    // Below the threshold: untouched.
    let (g2, _) = block_gradient(&model, data.images.clone(), data.labels.clone());
    let (same, report) = clip_global_norm(&model, g2, 2.0 * norm).unwrap();
    assert!(!report.clipped && report.scale == 1.0);
    assert_eq!(grads_to_vec(&model, &same).unwrap(), v);
    let (g3, _) = block_gradient(&model, data.images.clone(), data.labels.clone());
    assert!(clip_global_norm(&model, g3, 0.0).is_err());
}

/// Reference: the official schedulers' state machines, simulated step by step with PyTorch's
/// recursive (chainable) cosine formula, not the closed form the library uses.
fn reference_schedule(base: f64, warmup: usize, t_max: usize, steps: usize) -> Vec<f64> {
    let pi = std::f64::consts::PI;
    let mut out = Vec::new();
    // CosineAnnealingLR state (eta_min = 0): its own epoch counter and last lr.
    let mut cos_epoch = 0usize;
    let mut cos_lr = base;
    let mut finished = false;
    let mut last_epoch = 0usize; // GradualWarmupScheduler's counter; lr at construction = 0.
    for _ in 0..steps {
        let lr = if warmup == 0 {
            cos_lr
        } else if last_epoch <= warmup {
            base * last_epoch as f64 / warmup as f64
        } else {
            cos_lr
        };
        out.push(lr);
        // scheduler.step() after the optimizer step.
        if warmup == 0 || finished {
            cos_epoch += 1;
            let e = cos_epoch as f64;
            let t = t_max as f64;
            if (cos_epoch as i64 - 1 - t_max as i64).rem_euclid(2 * t_max as i64) == 0 {
                // PyTorch's special case at the bottom of the cosine (the ratio would be 0/0).
                cos_lr += base * (1.0 - (pi / t).cos()) / 2.0;
            } else {
                cos_lr *= (1.0 + (pi * e / t).cos()) / (1.0 + (pi * (e - 1.0) / t).cos());
            }
        } else {
            last_epoch += 1;
            if last_epoch > warmup {
                finished = true; // hands over with the cosine scheduler's initial lr (base)
            }
        }
    }
    out
}

#[test]
fn lr_schedule_matches_reference_table() {
    let s = WarmupCosine { base_lr: 0.4, warmup_steps: 400, t_max: 4000 };
    s.validate().unwrap();
    let reference = reference_schedule(0.4, 400, 4000, 3000);
    for (t, r) in reference.iter().enumerate() {
        assert!((s.lr(t) - r).abs() < 1e-9, "step {t}: {} vs {r}", s.lr(t));
    }
    assert_eq!(s.lr(0), 0.0);
    assert!((s.lr(200) - 0.2).abs() < 1e-12);
    assert!((s.lr(400) - 0.4).abs() < 1e-12);
    assert!((s.lr(401) - 0.4).abs() < 1e-12);
    // T_max > steps: never anneals to zero; the paper's "ends near 0.11 for base 0.4".
    let end = s.lr(2999);
    let closed = 0.2 * (1.0 + (std::f64::consts::PI * 2598.0 / 4000.0).cos());
    assert!((end - closed).abs() < 1e-12 && (end - 0.109).abs() < 0.001, "{end}");
    // No warmup, T_max shorter than the run: plain cosine, rising again after T_max.
    let c = WarmupCosine { base_lr: 0.1, warmup_steps: 0, t_max: 300 };
    let r = reference_schedule(0.1, 0, 300, 400);
    for (t, x) in r.iter().enumerate() {
        assert!((c.lr(t) - x).abs() < 1e-9, "step {t}: {} vs {x}", c.lr(t));
    }
    assert!(c.lr(300).abs() < 1e-12 && c.lr(350) > 0.0);
    let small = WarmupCosine { base_lr: 0.1, warmup_steps: 5, t_max: 300 };
    let r = reference_schedule(0.1, 5, 300, 300);
    for (t, x) in r.iter().enumerate() {
        assert!((small.lr(t) - x).abs() < 1e-9, "step {t}");
    }
    assert!(WarmupCosine { base_lr: 0.0, warmup_steps: 1, t_max: 1 }.validate().is_err());
    assert!(WarmupCosine { base_lr: 0.1, warmup_steps: 1, t_max: 0 }.validate().is_err());
}

/// One parameter vector, for the optimizer test.
/// (burn's derive recognises the backend parameter by its name `B`, which shadows the alias.)
#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    w: Param<Tensor<B, 1>>,
}

#[test]
fn nesterov_sgd_matches_hand_recurrence() {
    let d = device();
    let w0 = [0.5f32, -1.5, 2.0];
    let c = [1.0f64, 3.0, -0.5];
    let mut model = Tiny::<B> { w: Param::from_data(TensorData::new(w0.to_vec(), [3]), &d) };
    let mut optim = train::paper_sgd().init::<B, Tiny<B>>();
    let lrs = [0.1, 0.05, 0.2];

    // Hand recurrence in f64 (PyTorch SGD, dampening 0, Nesterov, coupled weight decay).
    let (mu, lambda) = (train::PAPER_MOMENTUM, f64::from(train::PAPER_WEIGHT_DECAY));
    let mut theta: Vec<f64> = w0.iter().map(|&x| f64::from(x)).collect();
    let mut v: Option<Vec<f64>> = None;
    for &lr in &lrs {
        // Loss 0.5 * sum c_i w_i^2 * (1 + w_i) ... keep it quadratic-plus-cubic so grads vary.
        let coef = Tensor::<B, 1>::from_data(TensorData::new(c.iter().map(|&x| x as f32).collect(), [3]), &d);
        let w = model.w.val();
        let loss = (coef * w.clone().powi_scalar(2) * (w + 1.0)).sum().mul_scalar(0.5);
        let grads = GradientsParams::from_grads::<B, _>(loss.backward(), &model);
        model = optim.step(lr, model, grads);

        let g: Vec<f64> = theta.iter().zip(&c).map(|(t, ci)| ci * (t + 1.5 * t * t)).collect();
        let dvec: Vec<f64> = g.iter().zip(&theta).map(|(gi, t)| gi + lambda * t).collect();
        let vel: Vec<f64> = match &v {
            None => dvec.clone(),
            Some(prev) => prev.iter().zip(&dvec).map(|(p, di)| mu * p + di).collect(),
        };
        for i in 0..3 {
            theta[i] -= lr * (dvec[i] + mu * vel[i]);
        }
        v = Some(vel);
        let got: Vec<f32> = model.w.val().into_data().to_vec().unwrap();
        for i in 0..3 {
            assert!(
                (f64::from(got[i]) - theta[i]).abs() < 1e-5 * (1.0 + theta[i].abs()),
                "lr {lr}: {got:?} vs {theta:?}"
            );
        }
    }
}

/// The regulariser's correction is linear in alpha * lr, vanishes at alpha = 0, and agrees with
/// a finite difference along the normalised gradient computed here by hand.
#[test]
fn regulariser_correction_is_the_finite_difference() {
    let model = tiny(5);
    let data = data(16, 8, 5);
    let base = FullBatchOptions { block_size: 16, order: BlockOrder::Sequential, regulariser: None };
    let g = grads_to_vec(&model, &full_batch_gradient(&model, &data, &base).unwrap().grads).unwrap();
    let with = |alpha: f64, lr: f64| {
        let o = FullBatchOptions { regulariser: Some(Regulariser { alpha, eps: 0.01, lr }), ..base };
        grads_to_vec(&model, &full_batch_gradient(&model, &data, &o).unwrap().grads).unwrap()
    };
    assert_close(&with(0.0, 0.4), &g, 1e-6, "alpha 0");
    let r1 = with(0.5, 0.4);
    let r2 = with(1.0, 0.4);
    let d1: Vec<f32> = r1.iter().zip(&g).map(|(a, b)| a - b).collect();
    let d2: Vec<f32> = r2.iter().zip(&g).map(|(a, b)| a - b).collect();
    assert!(max_abs(&d1) > 1e-5, "correction too small to test: {:e}", max_abs(&d1));
    let twice: Vec<f32> = d1.iter().map(|x| 2.0 * x).collect();
    assert_close(&d2, &twice, 1e-3, "linear in alpha");

    // By hand: move every parameter by eps * g / |g| and take the gradient there.
    let norm = g.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let step = (0.01 / norm) as f32;
    let mut offset = 0;
    let moved = model.clone().map(&mut Shift { g: &g, offset: &mut offset, step });
    let (gp, _) = block_gradient(&moved, data.images.clone(), data.labels.clone());
    let gp = grads_to_vec(&moved, &gp).unwrap();
    let coef = (0.5 * 0.4 / 4.0 * norm / 0.01) as f32;
    let expected: Vec<f32> = gp.iter().zip(&g).map(|(p, b)| coef * (p - b)).collect();
    assert_close(&d1, &expected, 1e-3, "correction vs hand-made finite difference");
}

/// Adds `step * g` (flat, in visiting order) to the parameters.
struct Shift<'a> {
    g: &'a [f32],
    offset: &'a mut usize,
    step: f32,
}

impl burn::module::ModuleMapper<B> for Shift<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let range = *self.offset..*self.offset + n;
        *self.offset += n;
        if !tensor.is_require_grad() {
            // BatchNorm running statistics are visited as float tensors too (with zero gradient
            // entries in the flat vector): leave them alone.
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let delta: Vec<f32> = self.g[range].iter().map(|x| x * self.step).collect();
        let delta = Tensor::<B, D>::from_data(TensorData::new(delta, shape), &tensor.device());
        let moved = (tensor.inner() + delta.inner()).detach();
        Param::from_mapped_value(id, Tensor::from_inner(moved).require_grad(), mapper)
    }
}

/// A tiny ResNet (width 4, ResNet-18 depth) on 64 synthetic 16x16 images: full-batch steps with
/// warmup, cosine, clipping and Nesterov SGD reduce the training loss clearly.
#[test]
fn smoke_full_batch_training_reduces_loss() {
    let model: ResNet<B> = ResNetConfig::new().with_width(4).with_num_classes(4).init(&device(), 7).unwrap();
    let data = data(64, 16, 7);
    let mut optim = train::paper_sgd().init::<B, ResNet<B>>();
    let schedule = WarmupCosine { base_lr: 0.1, warmup_steps: 5, t_max: 40 };
    let steps = 30;
    let mut model = model;
    let mut losses = Vec::new();
    let start = Instant::now();
    for t in 0..steps {
        let opts = FullBatchOptions {
            block_size: 16,
            order: BlockOrder::ShuffledBlocks { seed: t as u64 },
            regulariser: None,
        };
        let (m, report) = train::full_batch_step(model, &mut optim, &data, &opts, schedule.lr(t), Some(5.0)).unwrap();
        model = m;
        assert!(report.loss.is_finite() && report.grad_norm.is_finite());
        losses.push(report.loss);
    }
    let per_step = start.elapsed().as_secs_f64() / steps as f64;
    let (final_loss, acc) = train::evaluate(&model, &data, 32).unwrap();
    println!("losses {losses:.3?}; final train loss {final_loss:.3}, accuracy {acc:.2}; {per_step:.3} s per step");
    assert!(final_loss < 0.6 * losses[0], "loss {} -> {final_loss}", losses[0]);

    // The regularised step runs and stays finite.
    let opts = FullBatchOptions {
        block_size: 16,
        order: BlockOrder::Sequential,
        regulariser: Some(Regulariser { alpha: 0.5, eps: 0.01, lr: 0.1 }),
    };
    let (_, report) = train::full_batch_step(model, &mut optim, &data, &opts, 0.1, Some(0.25)).unwrap();
    assert!(report.loss.is_finite() && report.grad_norm.is_finite());
}

/// `resnet::batch_norm` is burn's `BatchNorm::forward` in fewer operations: same output, same
/// gradients with respect to the input, gamma and beta, same running statistics, on a batch with
/// non-zero mean and non-unit spread per channel (f32: agreement to 1e-5 relative).
#[test]
fn lean_batch_norm_equals_burns() {
    use burn::nn::BatchNormConfig;
    use fullbatch::deep::resnet::batch_norm;
    let dev = device();
    let (n, c, h, w) = (6, 3, 5, 4);
    let values: Vec<f32> = (0..n * c * h * w)
        .map(|i| {
            let ch = (i / (h * w)) % c;
            (i as f32 * 0.37).sin() * (1.0 + ch as f32) + 0.5 * ch as f32 - 0.3
        })
        .collect();
    // A new BatchNorm per run: clones share their running statistics.
    let new_bn = || {
        let mut bn = BatchNormConfig::new(c).init::<B>(&dev);
        bn.gamma = Param::from_data(TensorData::new(vec![0.7f32, -1.3, 2.1], [c]), &dev);
        bn.beta = Param::from_data(TensorData::new(vec![0.2f32, 0.0, -0.4], [c]), &dev);
        bn
    };
    let upstream: Tensor<B, 4> = Tensor::from_data(
        TensorData::new((0..n * c * h * w).map(|i| (i as f32 * 0.11).cos()).collect(), [n, c, h, w]),
        &dev,
    );
    let run = |lean: bool| {
        let bn = new_bn();
        let x: Tensor<B, 4> = Tensor::from_data(TensorData::new(values.clone(), [n, c, h, w]), &dev).require_grad();
        let y = if lean { batch_norm(&bn, x.clone()) } else { bn.forward(x.clone()) };
        let loss = (y.clone() * upstream.clone()).sum();
        let grads = loss.backward();
        let vec = |t: Tensor<Cpu, 4>| t.into_data().to_vec::<f32>().unwrap();
        let vec1 = |t: Tensor<Cpu, 1>| t.into_data().to_vec::<f32>().unwrap();
        (
            vec(y.inner()),
            vec(x.grad(&grads).unwrap()),
            vec1(bn.gamma.val().grad(&grads).unwrap()),
            vec1(bn.beta.val().grad(&grads).unwrap()),
            vec1(bn.running_mean.value_sync().inner()),
            vec1(bn.running_var.value_sync().inner()),
        )
    };
    let (burn_out, lean_out) = (run(false), run(true));
    assert_close(&lean_out.0, &burn_out.0, 1e-5, "output");
    assert_close(&lean_out.1, &burn_out.1, 1e-5, "input gradient");
    assert_close(&lean_out.2, &burn_out.2, 1e-5, "gamma gradient");
    assert_close(&lean_out.3, &burn_out.3, 1e-5, "beta gradient");
    assert_close(&lean_out.4, &burn_out.4, 1e-5, "running mean");
    assert_close(&lean_out.5, &burn_out.5, 1e-5, "running variance");
    assert!(max_abs(&burn_out.4) > 0.01 && max_abs(&burn_out.1) > 0.01, "a test that can fail");
}

/// The flat gradient of each block of `blocks` (example indices into `data`), in f64.
fn block_gradients_by_hand(model: &ResNet<B>, data: &Batch<B>, blocks: &[Vec<usize>]) -> Vec<Vec<f64>> {
    blocks
        .iter()
        .map(|block| {
            let ids: Vec<i64> = block.iter().map(|&i| i as i64).collect();
            let ids = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(ids, [block.len()]), &device());
            let images = data.images.clone().select(0, ids.clone());
            let labels = data.labels.clone().select(0, ids);
            let (g, _) = block_gradient(model, images, labels);
            grads_to_vec(model, &g).unwrap().into_iter().map(f64::from).collect()
        })
        .collect()
}

/// $(\lVert\bar g\rVert^2, \frac1K\sum_k\lVert g_k\rVert^2)$ of vectors $g_k$, in f64.
fn ledger_inputs_by_hand(grads: &[Vec<f64>]) -> (f64, f64) {
    let k = grads.len() as f64;
    let mean: Vec<f64> = (0..grads[0].len()).map(|i| grads.iter().map(|g| g[i]).sum::<f64>() / k).collect();
    let mean_sq = mean.iter().map(|x| x * x).sum::<f64>();
    let blocks_sq = grads.iter().map(|g| g.iter().map(|x| x * x).sum::<f64>()).sum::<f64>() / k;
    (mean_sq, blocks_sq)
}

/// The regulariser ledger's inputs of a full-batch step, |mean block gradient|^2 and the mean
/// squared block-gradient norm, against a hand computation from separately computed block
/// gradients: without the regulariser, and with it (where the update's gradient is not the plain
/// mean, so the ledger must use the separately kept unregularised mean). Tolerance 1e-4
/// relative (f32 gradients summed in different orders).
#[test]
fn full_batch_ledger_inputs_match_a_hand_computation() {
    let model = tiny(11);
    let data = data(24, 8, 1);
    let blocks: Vec<Vec<usize>> = (0..3).map(|k| (8 * k..8 * (k + 1)).collect()).collect();
    let (mean_sq, blocks_sq) = ledger_inputs_by_hand(&block_gradients_by_hand(&model, &data, &blocks));
    assert!(blocks_sq > 1.05 * mean_sq, "blocks too alike to tell the two apart: {blocks_sq} vs {mean_sq}");
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    for regulariser in [None, Some(Regulariser { alpha: 0.5, eps: 0.01, lr: 0.4 })] {
        let opts = FullBatchOptions { block_size: 8, order: BlockOrder::Sequential, regulariser };
        let full = full_batch_gradient(&model, &data, &opts).unwrap();
        assert_eq!(full.plain_grads.is_some(), regulariser.is_some());
        let mut optim = train::paper_sgd().init::<B, ResNet<B>>();
        let (_, report) = train::full_batch_update(model.clone(), &mut optim, full, 0.0, None).unwrap();
        assert!(
            rel(report.mean_grad_sq_norm, mean_sq) < 1e-4,
            "{regulariser:?}: {} vs {mean_sq}",
            report.mean_grad_sq_norm
        );
        assert!(rel(report.mean_block_grad_sq_norm, blocks_sq) < 1e-4, "{regulariser:?}");
        if regulariser.is_some() {
            // The update's (regularised) gradient differs: the ledger did not take its norm.
            assert!(rel(report.grad_norm.powi(2), mean_sq) > 1e-3, "regulariser had no effect");
        } else {
            assert!(rel(report.grad_norm.powi(2), mean_sq) < 1e-4);
        }
    }
}

/// The ledger's inputs of an SGD epoch against a hand computation: at learning rate 0 the model
/// does not move, so the epoch's minibatch gradients are those of the epoch's permutation (the
/// same seeded shuffle) at the start. Tolerance 1e-4 relative.
#[test]
fn sgd_epoch_ledger_inputs_match_a_hand_computation() {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let model = tiny(12);
    let data = data(32, 8, 2);
    let seed = 5;
    let mut order: Vec<usize> = (0..32).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let blocks: Vec<Vec<usize>> = order.chunks_exact(8).map(<[usize]>::to_vec).collect();
    let (mean_sq, blocks_sq) = ledger_inputs_by_hand(&block_gradients_by_hand(&model, &data, &blocks));
    assert!(blocks_sq > 1.05 * mean_sq, "minibatches too alike: {blocks_sq} vs {mean_sq}");
    let mut optim = train::paper_sgd().init::<B, ResNet<B>>();
    let (_, entry) = fullbatch::deep::run::sgd_epoch(model, &mut optim, &data, 8, None, 0.0, seed).unwrap();
    let rel = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() / b;
    assert!(rel(entry.mean_grad_sq_norm, mean_sq) < 1e-4, "{:?} vs {mean_sq}", entry.mean_grad_sq_norm);
    assert!(rel(entry.mean_block_grad_sq_norm, blocks_sq) < 1e-4, "{:?} vs {blocks_sq}", entry.mean_block_grad_sq_norm);
}
