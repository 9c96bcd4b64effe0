//! A saved run's checkpoint, loaded for analysis after the fact (`fullbatch sharpness --run`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;

use super::checkpoint::recorder_error;
use super::{RunData, build_model, latest_checkpoint, load_data, stored_config};
use crate::deep::{Batch, batch_from_images};
use crate::run_dir::config::RunConfig;
use crate::{Error, Result};

/// The model of one checkpoint of a run directory, with the run's configuration.
pub struct SavedModel<B: Backend> {
    /// The run's stored configuration (`config.toml`).
    pub config: RunConfig,
    /// The step (epoch in SGD mode) after which the checkpoint was written.
    pub step: usize,
    /// The checkpoint's directory.
    pub checkpoint: PathBuf,
    /// The network with the checkpoint's parameters and BatchNorm running statistics.
    pub model: crate::deep::resnet::ResNet<B>,
}

/// The steps of the checkpoints kept in run directory `dir`, in increasing order.
///
/// # Errors
/// [`Error::Io`] if `dir/checkpoints` exists but cannot be listed.
pub fn checkpoint_steps(dir: &Path) -> Result<Vec<usize>> {
    let root = dir.join("checkpoints");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut steps: Vec<usize> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// Loads the model of the checkpoint after `step` of the run in `dir` (`None`: the latest),
/// built as the run's configuration says for `channels` and `classes`.
///
/// # Errors
/// [`Error::BadFile`] for a directory without `config.toml` or checkpoints, or a checkpoint
/// that cannot be read; [`Error::InvalidParameter`] (`step`) naming the steps kept when `step`
/// has no checkpoint.
pub fn load_saved_model<B: Backend>(
    dir: &Path,
    step: Option<usize>,
    channels: usize,
    classes: usize,
    device: &B::Device,
) -> Result<SavedModel<B>> {
    let config = stored_config(dir)?;
    let (checkpoint, step) = match step {
        None => latest_checkpoint(dir)?
            .ok_or_else(|| Error::bad_file(dir, "no checkpoint (checkpoints/latest is missing)"))?,
        Some(s) => {
            let path = dir.join("checkpoints").join(format!("step-{s:06}"));
            if !path.is_dir() {
                let kept = checkpoint_steps(dir)?;
                return Err(Error::invalid(
                    "step",
                    format!("{} has no checkpoint after step {s}; it keeps steps {kept:?}", dir.display()),
                ));
            }
            (path, s)
        }
    };
    let model = build_model::<B>(&config, channels, classes, device)?;
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let model_path = checkpoint.join("model");
    let record =
        Recorder::<B>::load(&recorder, model_path.clone(), device).map_err(|e| recorder_error(&model_path, e))?;
    Ok(SavedModel { config, step, checkpoint, model: model.load_record(record) })
}

/// The images a sharpness measurement of a run uses: the first `max_images` (all when `None`)
/// un-augmented training images, normalised with the run's statistics, as one batch.
///
/// # Errors
/// As [`batch_from_images`].
pub fn sharpness_images<B: Backend>(data: &RunData, max_images: Option<usize>, device: &B::Device) -> Result<Batch<B>> {
    let n = max_images.map_or(data.train.len(), |m| m.min(data.train.len()));
    batch_from_images(&data.train.head(n), &data.mean, &data.std, device)
}

/// A saved run's model and the data its sharpness is measured on.
///
/// # Errors
/// As [`load_data`] (the data directory of a CIFAR-10 run: `data_dir`) and [`load_saved_model`].
pub fn load_saved_run<B: Backend>(
    dir: &Path,
    step: Option<usize>,
    data_dir: Option<&Path>,
    device: &B::Device,
) -> Result<(SavedModel<B>, RunData)> {
    let config = stored_config(dir)?;
    let data = load_data(&config, data_dir)?;
    let classes = data.train.n_classes;
    let saved = load_saved_model(dir, step, data.train.channels, classes, device)?;
    Ok((saved, data))
}
