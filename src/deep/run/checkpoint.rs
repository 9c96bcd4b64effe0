//! Checkpoints and the files of a run directory written atomically: a checkpoint is a
//! directory `checkpoints/step-NNNNNN` with the model and optimizer records, `state.json` and the
//! sharpness warm start, named by `checkpoints/latest` once complete; the log is cut back to a
//! checkpoint's step on resume.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::LogEntry;
use crate::deep::resnet::ResNet;
use crate::{Error, Result};

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CheckpointState {
    pub(super) step: usize,
    pub(super) seed: u64,
    pub(super) wall_s: f64,
}

pub(super) use crate::atomic_file::write as write_atomic;

pub(super) fn json_error(e: serde_json::Error) -> Error {
    Error::invalid("json", e.to_string())
}

pub(super) fn recorder_error(path: &Path, e: impl std::fmt::Debug) -> Error {
    Error::bad_file(path, format!("checkpoint record: {e:?}"))
}

/// Saves model, optimizer state and step as `checkpoints/step-NNNNNN` (atomically), points
/// `checkpoints/latest` at it and removes all but the two newest checkpoints.
pub(super) fn save_checkpoint<B, O>(
    dir: &Path,
    step: usize,
    seed: u64,
    wall_s: f64,
    model: &ResNet<B>,
    optim: &O,
    sharpness_start: Option<&[f32]>,
) -> Result<()>
where
    B: AutodiffBackend,
    O: Optimizer<ResNet<B>, B>,
{
    let root = dir.join("checkpoints");
    fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = format!("step-{step:06}");
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let model_path = tmp.join("model");
    Recorder::<B>::record(&recorder, model.clone().into_record(), model_path.clone())
        .map_err(|e| recorder_error(&model_path, e))?;
    let optim_path = tmp.join("optim");
    Recorder::<B>::record(&recorder, optim.to_record(), optim_path.clone())
        .map_err(|e| recorder_error(&optim_path, e))?;
    let state = serde_json::to_vec_pretty(&CheckpointState { step, seed, wall_s }).map_err(json_error)?;
    write_atomic(&tmp.join("state.json"), &state)?;
    if let Some(v) = sharpness_start {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        write_atomic(&tmp.join(SHARPNESS_START), &bytes)?;
    }
    for f in ["model.bin", "optim.bin"] {
        let p = tmp.join(f);
        File::open(&p).and_then(|f| f.sync_all()).map_err(|e| Error::io(&p, e))?;
    }
    let fin = root.join(&name);
    if fin.exists() {
        fs::remove_dir_all(&fin).map_err(|e| Error::io(&fin, e))?;
    }
    fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    // Keep the two newest checkpoints.
    let mut steps: Vec<(usize, PathBuf)> = fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok()).map(|s| (s, e.path()))
        })
        .collect();
    steps.sort();
    let keep_from = steps.len().saturating_sub(2);
    for (s, p) in &steps[..keep_from] {
        if *s != step {
            fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(())
}

/// The file of a checkpoint with the warm start of the next sharpness measurement.
const SHARPNESS_START: &str = "sharpness_start.bin";

/// Reads the warm start of a checkpoint (`None` if it has none).
pub(super) fn load_sharpness_start(checkpoint: &Path) -> Result<Option<Vec<f32>>> {
    let path = checkpoint.join(SHARPNESS_START);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if bytes.len() % 4 != 0 {
        return Err(Error::bad_file(&path, format!("{} bytes is not a whole number of f32", bytes.len())));
    }
    Ok(Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
}

/// Loads a checkpoint into `model` and `optim`.
pub(super) fn load_checkpoint<B, O>(
    path: &Path,
    model: ResNet<B>,
    optim: O,
    device: &B::Device,
) -> Result<(ResNet<B>, O, CheckpointState)>
where
    B: AutodiffBackend,
    O: Optimizer<ResNet<B>, B>,
{
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let model_path = path.join("model");
    let record =
        Recorder::<B>::load(&recorder, model_path.clone(), device).map_err(|e| recorder_error(&model_path, e))?;
    let model = model.load_record(record);
    let optim_path = path.join("optim");
    let record =
        Recorder::<B>::load(&recorder, optim_path.clone(), device).map_err(|e| recorder_error(&optim_path, e))?;
    let optim = optim.load_record(record);
    let state_path = path.join("state.json");
    let text = fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| Error::bad_file(&state_path, e.to_string()))?;
    Ok((model, optim, state))
}

/// Reads `log.jsonl`, keeps the lines with `step <= keep_until` and rewrites it atomically.
pub(super) fn truncate_log(path: &Path, keep_until: usize) -> Result<Option<LogEntry>> {
    if !path.exists() {
        return Ok(None);
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut kept = String::new();
    let mut last = None;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: LogEntry =
            serde_json::from_str(&line).map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1)))?;
        if entry.step <= keep_until {
            kept.push_str(&line);
            kept.push('\n');
            last = Some(entry);
        }
    }
    write_atomic(path, kept.as_bytes())?;
    Ok(last)
}
