//! Exports a ResNet, the images its Hessian is measured on and our Hessian numbers as NumPy
//! `.npy` files and JSON, so that `scripts/check_network_export.py` can rebuild the loss in
//! PyTorch (`float64`), compute the Hessian-vector products by double backpropagation in both
//! BatchNorm modes, and $\lambda_{\max}$, and compare them with ours.
//!
//! Files:
//! - `spec.json` ([`NetworkExportSpec`]): the architecture, the block size, BatchNorm's
//!   $\epsilon$, every tensor's name, shape and offset in `theta.npy`, and our results;
//! - `theta.npy`: the trainable parameters, flat, in the operator's order (`float64` from `f32`);
//! - `<name>.npy` per tensor (parameters and BatchNorm running statistics), e.g.
//!   `blocks.0.conv1.weight.npy`, with PyTorch's shapes (the linear layer's weight transposed to
//!   `[out, in]`);
//! - `images.npy` (`[n, c, h, w]`, normalised) and `labels.npy` (`int64`);
//! - `v.npy`: a unit vector (the CLI exports the top eigenvector); `hv_train.npy`, `hv_eval.npy`: our products along it
//!   in the two BatchNorm modes (their estimated errors are in `spec.json`);
//!   `eigenvectors.npy`: our eigenvectors ($d \times k$).

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use super::Batch;
use super::resnet::ResNet;
use super::sharpness::trainable_to_vec;
use crate::export::{write_directory, write_npy};
use crate::{Error, Result};

/// The `format` tag of a network export's `spec.json`.
pub const NETWORK_EXPORT_FORMAT: &str = "fullbatch-resnet-hessian-v1";

/// One exported tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedTensor {
    /// PyTorch-style name, e.g. `blocks.0.bn1.weight` (file `<name>.npy`).
    pub name: String,
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// Offset of this tensor in `theta.npy` (in burn's layout, which for the linear weight is
    /// `[in, out]`), or `None` for a running statistic.
    pub offset: Option<usize>,
}

/// The contents of `spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkExportSpec {
    /// [`NETWORK_EXPORT_FORMAT`].
    pub format: String,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
    /// Blocks per stage.
    pub blocks: Vec<usize>,
    /// Images per BatchNorm batch (train mode) and per gradient block.
    pub block_size: usize,
    /// BatchNorm's $\epsilon$.
    pub bn_epsilon: f64,
    /// Every tensor, trainable ones in `theta.npy`'s order first.
    pub tensors: Vec<ExportedTensor>,
    /// The estimated errors of `hv_train.npy` and `hv_eval.npy` (`operator_error_along`).
    pub hv_error_estimates: [f64; 2],
    /// Our numbers (free-form JSON from the caller).
    pub results: serde_json::Value,
}

/// A tensor's values with its burn shape.
struct Values {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn values<B: Backend, const D: usize>(name: String, t: Tensor<B, D>) -> Result<Values> {
    let shape = t.dims().to_vec();
    let values = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::invalid("tensor", format!("{name}: {e:?}")))?;
    Ok(Values { name, shape, values })
}

fn conv<B: Backend>(name: &str, c: &Conv2d<B>, out: &mut Vec<Values>) -> Result<()> {
    out.push(values(format!("{name}.weight"), c.weight.val())?);
    Ok(())
}

fn bn<B: Backend>(name: &str, b: &BatchNorm<B>, out: &mut Vec<Values>, stats: &mut Vec<Values>) -> Result<()> {
    out.push(values(format!("{name}.weight"), b.gamma.val())?);
    out.push(values(format!("{name}.bias"), b.beta.val())?);
    stats.push(values(format!("{name}.running_mean"), b.running_mean.value())?);
    stats.push(values(format!("{name}.running_var"), b.running_var.value())?);
    Ok(())
}

/// The trainable tensors of `net` in the operator's (burn's visiting) order and the running
/// statistics, with PyTorch names and burn shapes.
fn resnet_values<B: Backend>(net: &ResNet<B>) -> Result<(Vec<Values>, Vec<Values>)> {
    let (mut params, mut stats) = (Vec::new(), Vec::new());
    conv("stem_conv", &net.stem_conv, &mut params)?;
    bn("stem_bn", &net.stem_bn, &mut params, &mut stats)?;
    for (i, b) in net.blocks.iter().enumerate() {
        conv(&format!("blocks.{i}.conv1"), &b.conv1, &mut params)?;
        bn(&format!("blocks.{i}.bn1"), &b.bn1, &mut params, &mut stats)?;
        conv(&format!("blocks.{i}.conv2"), &b.conv2, &mut params)?;
        bn(&format!("blocks.{i}.bn2"), &b.bn2, &mut params, &mut stats)?;
        if let Some(s) = &b.shortcut {
            conv(&format!("blocks.{i}.shortcut.conv"), &s.conv, &mut params)?;
            bn(&format!("blocks.{i}.shortcut.bn"), &s.bn, &mut params, &mut stats)?;
        }
    }
    params.push(values("fc.weight".into(), net.fc.weight.val())?);
    if let Some(bias) = &net.fc.bias {
        params.push(values("fc.bias".into(), bias.val())?);
    }
    Ok((params, stats))
}

/// The trainable tensors of `net` as (PyTorch-style name, number of entries), in the order of
/// the operator's flat parameter vector ([`trainable_to_vec`]), e.g. `("blocks.0.bn1.weight",
/// 8)`: the names parameter groups are chosen by.
///
/// # Errors
/// [`Error::InvalidParameter`] when the named tensors do not concatenate to the parameter
/// vector (a module layout this module does not know) or a tensor cannot be read.
pub fn parameter_names<B: AutodiffBackend>(net: &ResNet<B>) -> Result<Vec<(String, usize)>> {
    let theta = trainable_to_vec(net)?;
    let (params, _) = resnet_values(&net.valid())?;
    check_layout(&params, &theta)?;
    Ok(params.into_iter().map(|p| (p.name, p.values.len())).collect())
}

fn check_layout(params: &[Values], theta: &[f32]) -> Result<()> {
    let concatenated: Vec<f32> = params.iter().flat_map(|p| p.values.iter().copied()).collect();
    if concatenated != theta {
        return Err(Error::invalid(
            "layout",
            "the named tensors do not concatenate to the operator's parameters (unknown module order)",
        ));
    }
    Ok(())
}

/// Our numbers along one direction, for the export.
pub struct HessianSamples<'a> {
    /// The unit direction $v$.
    pub v: &'a Array1<f64>,
    /// $H_{\text{train}}v$.
    pub hv_train: &'a Array1<f64>,
    /// $H_{\text{eval}}v$.
    pub hv_eval: &'a Array1<f64>,
    /// The estimated errors of the two products (train, eval),
    /// `deep::sharpness::operator_error_along`.
    pub hv_error_estimates: [f64; 2],
    /// Eigenvectors as columns.
    pub eigenvectors: &'a Array2<f64>,
}

fn is_network_export(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("spec.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<NetworkExportSpec>(&text).ok())
        .is_some_and(|spec| spec.format == NETWORK_EXPORT_FORMAT)
}

/// Writes the export of `net` on `images` (blocks of `block_size`) with `samples` and `results`
/// into `dir` atomically (see the module docs). Returns the paths written.
///
/// # Errors
/// [`Error::InvalidParameter`] when the named tensors do not concatenate to the operator's
/// parameter vector (a layout this module does not know) or a tensor cannot be read;
/// [`Error::Io`] as [`crate::export::export_model`].
pub fn export_network_hessian<B: AutodiffBackend>(
    net: &ResNet<B>,
    images: &Batch<B>,
    block_size: usize,
    samples: &HessianSamples<'_>,
    results: serde_json::Value,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let theta = trainable_to_vec(net)?;
    let (params, stats) = resnet_values(&net.valid())?;
    check_layout(&params, &theta)?;
    let mut tensors = Vec::new();
    let mut offset = 0;
    for p in &params {
        tensors.push(ExportedTensor { name: p.name.clone(), shape: torch_shape(p), offset: Some(offset) });
        offset += p.values.len();
    }
    tensors.extend(stats.iter().map(|s| ExportedTensor { name: s.name.clone(), shape: s.shape.clone(), offset: None }));
    let bn_epsilon = net.stem_bn.epsilon;
    let [_, in_channels, _, _] = net.stem_conv.weight.dims();
    let spec = NetworkExportSpec {
        format: NETWORK_EXPORT_FORMAT.into(),
        in_channels,
        num_classes: net.fc.weight.dims()[1],
        blocks: stage_blocks(net),
        block_size,
        bn_epsilon,
        tensors,
        hv_error_estimates: samples.hv_error_estimates,
        results,
    };
    let image_dims = images.images.dims();
    let pixels: Vec<f64> = to_f64(images.images.clone().inner())?;
    let labels: Vec<i64> = images
        .labels
        .clone()
        .inner()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| Error::invalid("labels", format!("{e:?}")))?;
    write_directory(dir, is_network_export, |staging| {
        let text = serde_json::to_string_pretty(&spec).map_err(|e| Error::invalid("spec", e.to_string()))?;
        crate::atomic_file::write(&staging.join("spec.json"), text.as_bytes())?;
        write_npy(staging, "theta.npy", &Array1::from_iter(theta.iter().map(|&x| f64::from(x))))?;
        for p in params.iter().chain(&stats) {
            let (shape, values) = torch_values(p);
            let array = ArrayD::from_shape_vec(IxDyn(&shape), values)
                .map_err(|e| Error::invalid("tensor", format!("{}: {e}", p.name)))?;
            write_npy(staging, &format!("{}.npy", p.name), &array)?;
        }
        let array = ArrayD::from_shape_vec(IxDyn(&image_dims), pixels.clone())
            .map_err(|e| Error::invalid("images", e.to_string()))?;
        write_npy(staging, "images.npy", &array)?;
        write_npy(staging, "labels.npy", &Array1::from(labels.clone()))?;
        write_npy(staging, "v.npy", samples.v)?;
        write_npy(staging, "hv_train.npy", samples.hv_train)?;
        write_npy(staging, "hv_eval.npy", samples.hv_eval)?;
        write_npy(staging, "eigenvectors.npy", samples.eigenvectors)
    })
}

/// Blocks per stage: a stage starts at every block with a downsampling shortcut after the first.
fn stage_blocks<B: Backend>(net: &ResNet<B>) -> Vec<usize> {
    let mut stages: Vec<usize> = Vec::new();
    for (i, b) in net.blocks.iter().enumerate() {
        if i == 0 || b.shortcut.is_some() {
            stages.push(1);
        } else if let Some(last) = stages.last_mut() {
            *last += 1;
        }
    }
    stages
}

/// PyTorch's shape of a tensor: burn's, except the linear weight, `[in, out]` in burn.
fn torch_shape(p: &Values) -> Vec<usize> {
    if p.name == "fc.weight" { vec![p.shape[1], p.shape[0]] } else { p.shape.clone() }
}

/// PyTorch's shape and row-major `float64` values of a tensor (the linear weight transposed).
fn torch_values(p: &Values) -> (Vec<usize>, Vec<f64>) {
    if p.name == "fc.weight" {
        let (rows, cols) = (p.shape[0], p.shape[1]);
        let mut out = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = f64::from(p.values[r * cols + c]);
            }
        }
        (vec![cols, rows], out)
    } else {
        (p.shape.clone(), p.values.iter().map(|&x| f64::from(x)).collect())
    }
}

fn to_f64<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f64>> {
    t.into_data().convert::<f64>().to_vec::<f64>().map_err(|e| Error::invalid("tensor", format!("{e:?}")))
}
