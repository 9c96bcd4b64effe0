//! Data-parallel full-batch gradients over several devices of one machine (feature
//! `collective`), with burn 0.21's collective all-reduce.
//!
//! A full-batch step visits $K$ blocks. With $D$ devices, device $j$ takes a contiguous share of
//! $n_j$ blocks of the step's plan (the first $K \bmod D$ devices one more), computes the mean
//! $\bar g_j$ of its block gradients with [`blocks_gradient`] (the regulariser included) on a
//! replica of the model, and every device then all-reduces (sum) its weighted share
//! $\frac{n_j}{K}\bar g_j$, so each holds $\bar g = \frac1K\sum_k g_k$, the single-device
//! gradient; the mean loss and mean squared block-gradient norm are reduced the same way (in one
//! reduction with the BatchNorm terms below). One optimizer update follows, on the caller's model
//! (device 0).
//!
//! # BatchNorm running statistics
//! On one device the running statistic $r$ moves once per forward pass,
//! $r \leftarrow (1-m)\,r + m\,s$, through the $U = pK$ passes of the step in order ($p = 2$ with
//! the regulariser's second pass, else 1). Device $j$ starts its replica from the same $r_0$ and
//! makes the $u_j = pn_j$ passes of its share, ending at $r_j$; with $a_j$ the passes of the
//! devices after it, the single-device result is
//! $$r_U = (1-m)^{U} r_0 + \sum_j (1-m)^{a_j}\,\bigl(r_j - (1-m)^{u_j} r_0\bigr),$$
//! which each device contributes a term of to one more all-reduce. So the step's model equals
//! the single-device step's up to `f32` rounding (tested in `tests/parallel.rs`).
//!
//! # Failures
//! The collective calls block until every device arrives, so a device whose gradient failed
//! (for example a non-finite loss) still joins a first all-reduce of a status flag; when any
//! device failed, all skip the gradient reduction and the first error is returned.

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData, TensorPrimitive};

use super::Batch;
use super::resnet::ResNet;
use super::train::{FullGradient, Regulariser, blocks_gradient, scale_grads};
use crate::{Error, Result};

/// The contiguous shares of `k` blocks over `d` devices: `(start, len)` each, the first `k % d`
/// one block longer.
///
/// # Panics
/// If `d` is 0 or larger than `k` (callers check).
pub fn shares(k: usize, d: usize) -> Vec<(usize, usize)> {
    assert!(d > 0 && d <= k, "{d} devices for {k} blocks");
    let (base, extra) = (k / d, k % d);
    let mut start = 0;
    (0..d)
        .map(|j| {
            let len = base + usize::from(j < extra);
            let share = (start, len);
            start += len;
            share
        })
        .collect()
}

fn collective_error(e: collective::CollectiveError) -> Error {
    Error::invalid("collective", format!("{e:?}"))
}

/// Sums a tensor over all devices.
fn all_reduce_sum<B: AutodiffBackend, const D: usize>(
    peer: PeerId,
    t: Tensor<B::InnerBackend, D>,
) -> Result<Tensor<B::InnerBackend, D>> {
    let p = collective::all_reduce::<B::InnerBackend>(peer, t.into_primitive().tensor(), ReduceOperation::Sum)
        .map_err(collective_error)?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(p)))
}

/// A BatchNorm's running mean and variance.
type RunningPair<B> = (Tensor<B, 1>, Tensor<B, 1>);

/// What one device brings back.
struct Share<B: AutodiffBackend> {
    gradient: FullGradient,
    /// The merged running mean and variance of every BatchNorm (see the module docs).
    running: Vec<RunningPair<B::InnerBackend>>,
}

/// The full-batch gradient of `model` over the blocks of `plan` (example indices into `data`),
/// computed on `devices` (the first is `model`'s), and the BatchNorm running statistics of
/// `model` moved as the single-device passes would move them.
///
/// Each device works on a replica, `ResNet::from_inner(model.valid())` moved to it: the same
/// parameter ids and values, but fresh autodiff leaves and its own BatchNorm running state. (A
/// clone would share both: its threads would then merge their autodiff graphs, which deadlocks
/// burn 0.21's graph locks, and mix their running statistics.) The result equals
/// [`blocks_gradient`]`(model, data, plan, ..)` up to `f32` rounding, and lives on device 0.
///
/// # Errors
/// [`Error::InvalidParameter`] for fewer blocks than devices or a failed collective operation;
/// the first device's error of [`blocks_gradient`] (e.g. [`Error::Diverged`]).
pub fn data_parallel_gradient<B: AutodiffBackend>(
    model: &ResNet<B>,
    devices: &[B::Device],
    data: &Batch<B>,
    plan: &[Vec<usize>],
    regulariser: Option<&Regulariser>,
) -> Result<FullGradient> {
    let (k, d) = (plan.len(), devices.len());
    if d == 0 || d > k {
        return Err(Error::invalid("devices", format!("{d} devices for a step of {k} blocks")));
    }
    let passes = if regulariser.is_some() { 2 } else { 1 };
    let start: Vec<RunningPair<B>> =
        model.batch_norms().iter().map(|bn| (bn.running_mean.value_sync(), bn.running_var.value_sync())).collect();
    let momentum = model.batch_norms().first().map_or(0.1, |bn| bn.momentum);
    let config = CollectiveConfig::default().with_num_devices(d);
    let shares = shares(k, d);
    // Each device's examples, gathered on the main device, then moved: blocks become consecutive.
    let mut inputs = Vec::with_capacity(d);
    for (device, &(first, len)) in devices.iter().zip(&shares) {
        let replica = ResNet::<B>::from_inner(model.valid()).fork(device);
        let device = device.clone();
        let blocks = &plan[first..first + len];
        let indices: Vec<i64> = blocks.iter().flatten().map(|&i| i as i64).collect();
        let idx =
            Tensor::<B, 1, Int>::from_data(TensorData::new(indices.clone(), [indices.len()]), &data.images.device());
        let batch = Batch {
            images: data.images.clone().select(0, idx.clone()).to_device(&device),
            labels: data.labels.clone().select(0, idx).to_device(&device),
        };
        let mut next = 0;
        let local: Vec<Vec<usize>> = blocks
            .iter()
            .map(|b| {
                let block: Vec<usize> = (next..next + b.len()).collect();
                next += b.len();
                block
            })
            .collect();
        inputs.push((replica, device, batch, local));
    }
    let after: Vec<usize> = (0..d).map(|j| passes * shares[j + 1..].iter().map(|s| s.1).sum::<usize>()).collect();
    let results: Vec<Result<Share<B>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .into_iter()
            .enumerate()
            .map(|(j, (replica, device, batch, local))| {
                let (config, start, after) = (config.clone(), &start, after[j]);
                let weight = local.len() as f64 / k as f64;
                let total = passes * k;
                scope.spawn(move || -> Result<Share<B>> {
                    let peer = PeerId::from(j);
                    collective::register::<B::InnerBackend>(peer, device.clone(), config).map_err(collective_error)?;
                    let result = (|| {
                        let own = blocks_gradient(&replica, &batch, &local, regulariser);
                        // Every device joins this reduction, failed or not: a failure anywhere
                        // stops all before the gradient reduction (which would wait forever).
                        let failed = Tensor::<B::InnerBackend, 1>::from_data(
                            TensorData::new(vec![f32::from(u8::from(own.is_err()))], [1]),
                            &device,
                        );
                        let failures: f64 = all_reduce_sum::<B, 1>(peer, failed)?.into_scalar().elem();
                        let own = own?;
                        if failures > 0.0 {
                            return Err(Error::invalid("devices", "another device's gradient failed"));
                        }
                        let grads = scale_grads(&replica, own.grads, weight)
                            .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Sum)
                            .map_err(collective_error)?;
                        // With a regulariser, the unregularised mean too (every device has one).
                        let plain_grads = match own.plain_grads {
                            Some(plain) => Some(
                                scale_grads(&replica, plain, weight)
                                    .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Sum)
                                    .map_err(collective_error)?,
                            ),
                            None => None,
                        };
                        // Everything else in one reduction: [loss, squared norm] (weighted), then
                        // each BatchNorm's running-mean and running-variance term of the merge.
                        let stats = Tensor::<B::InnerBackend, 1>::from_data(
                            TensorData::new(
                                vec![(own.loss * weight) as f32, (own.mean_block_grad_sq_norm * weight) as f32],
                                [2],
                            ),
                            &device,
                        );
                        let (keep, own_passes) = (1.0 - momentum, (passes * local.len()) as i32);
                        let term = |r: Tensor<B, 1>, r0: &Tensor<B, 1>| {
                            let r0 = r0.clone().inner().to_device(&device);
                            let term = (r.inner() - r0.clone().mul_scalar(keep.powi(own_passes)))
                                .mul_scalar(keep.powi(after as i32));
                            if j == 0 { term + r0.mul_scalar(keep.powi(total as i32)) } else { term }
                        };
                        let mut parts = vec![stats];
                        for (bn, (mean0, var0)) in replica.batch_norms().into_iter().zip(start) {
                            parts.push(term(bn.running_mean.value_sync(), mean0));
                            parts.push(term(bn.running_var.value_sync(), var0));
                        }
                        let lengths: Vec<usize> = parts.iter().map(|t| t.dims()[0]).collect();
                        let reduced = all_reduce_sum::<B, 1>(peer, Tensor::cat(parts, 0))?;
                        let mut pieces = Vec::with_capacity(lengths.len());
                        let mut at = 0;
                        for len in lengths {
                            pieces.push(reduced.clone().narrow(0, at, len));
                            at += len;
                        }
                        let mut pieces = pieces.into_iter();
                        let stats: Vec<f32> = pieces
                            .next()
                            .ok_or_else(|| Error::invalid("tensor", "empty reduction"))?
                            .into_data()
                            .to_vec()
                            .map_err(|e| Error::invalid("tensor", format!("{e:?}")))?;
                        let mut running = Vec::new();
                        while let (Some(mean), Some(var)) = (pieces.next(), pieces.next()) {
                            running.push((mean, var));
                        }
                        let gradient = FullGradient {
                            grads,
                            plain_grads,
                            loss: f64::from(stats[0]),
                            mean_block_grad_sq_norm: f64::from(stats[1]),
                            blocks: k,
                        };
                        Ok(Share { gradient, running })
                    })();
                    let finished = collective::finish_collective::<B::InnerBackend>(peer).map_err(collective_error);
                    let share = result?;
                    finished?;
                    Ok(share)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::invalid("devices", "a device's thread panicked"))))
            .collect()
    });
    let mut first: Option<Share<B>> = None;
    let mut error: Option<Error> = None;
    for (j, r) in results.into_iter().enumerate() {
        match r {
            // A device's own failure comes before the others' "another device failed".
            Err(e @ Error::Diverged { .. }) => error = Some(e),
            Err(e) => {
                error.get_or_insert(e);
            }
            Ok(share) if j == 0 => first = Some(share),
            Ok(_) => {}
        }
    }
    if let Some(e) = error {
        collective::reset_collective::<B::InnerBackend>();
        return Err(e);
    }
    let share = first.ok_or_else(|| Error::invalid("devices", "device 0 returned nothing"))?;
    let main_device = data.images.device();
    for (bn, (mean, var)) in model.batch_norms().into_iter().zip(share.running) {
        bn.running_mean.update(Tensor::from_inner(mean).to_device(&main_device));
        bn.running_var.update(Tensor::from_inner(var).to_device(&main_device));
    }
    Ok(share.gradient)
}
