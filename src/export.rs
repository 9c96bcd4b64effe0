//! Exports a model, a point and our numbers as NumPy `.npy` files and JSON, so that anyone can
//! check them in Python (`scripts/check_export.py` does, with JAX or NumPy).
//!
//! An export directory holds:
//! - `spec.json`: format tag, the model kind and the loss as a formula, the parameter layout
//!   (name, offset and shape of each tensor in the flat vector), and whatever results the caller
//!   attaches (for `fullbatch sharpness`: eigenvalues, residuals, trace);
//! - `theta.npy`: the point, a flat `float64` vector;
//! - quadratics: `a.npy` and `b.npy`; networks: `inputs.npy` ($n \times d_0$) and `targets.npy`
//!   ($n \times d_L$, one-hot for classes, as the loss sees them);
//! - any extra arrays the caller names (`fullbatch sharpness`: `eigenvectors.npy`, $d \times k$).
//!
//! The directory is written next to its final place and renamed into it, so it is never
//! half-written. An existing directory is replaced only if it is an earlier export.

use std::fs;
use std::path::{Path, PathBuf};

use ndarray::{ArrayBase, Data, Dimension};
use ndarray_npy::WritableElement;
use serde::{Deserialize, Serialize};

use crate::models::{Model, NetworkSpec, ParameterBlock};
use crate::{Error, Result};

/// The `format` tag of `spec.json`.
pub const EXPORT_FORMAT: &str = "fullbatch-export/1";

/// What `spec.json` says about the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExportedModel {
    /// $L(\theta) = \frac12\theta^\top A\theta + b^\top\theta$ (`a.npy`, `b.npy`).
    Quadratic {
        /// The loss as a formula.
        loss: String,
    },
    /// A fully connected network on `inputs.npy`, `targets.npy`.
    Network {
        /// The loss as a formula.
        loss: String,
        /// The architecture.
        spec: NetworkSpec,
        /// Where each tensor sits in `theta`.
        layout: Vec<ParameterBlock>,
    },
}

/// The contents of `spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportSpec {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// The model.
    pub model: ExportedModel,
    /// The dimension of `theta`.
    pub dim: usize,
    /// Results attached by the caller (free-form JSON).
    pub results: serde_json::Value,
}

pub(crate) fn write_npy<A, S, D>(dir: &Path, name: &str, array: &ArrayBase<S, D>) -> Result<()>
where
    A: WritableElement,
    S: Data<Elem = A>,
    D: Dimension,
{
    let path = dir.join(name);
    ndarray_npy::write_npy(&path, array).map_err(|e| Error::io(&path, std::io::Error::other(e.to_string())))
}

/// Writes `model` at `theta`, with `results` and extra named `float64` arrays (e.g.
/// `eigenvectors.npy`), into `dir` (see the module docs for the files). Returns the paths
/// written.
///
/// # Errors
/// [`Error::Io`] when a file cannot be written or `dir` exists and is not an earlier export
/// (it is then left untouched); [`Error::InvalidParameter`] when `theta` has the wrong length.
pub fn export_model(
    model: &Model,
    theta: ndarray::ArrayView1<f64>,
    results: serde_json::Value,
    arrays: &[(&str, ndarray::ArrayView2<f64>)],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let dim = match model {
        Model::Quadratic(q) => q.matrix().nrows(),
        Model::Network(n) => crate::Objective::dim(n),
    };
    if theta.len() != dim {
        return Err(Error::invalid("theta", format!("length {} for a model of dimension {dim}", theta.len())));
    }
    write_directory(dir, is_export, |staging| {
        write_files(model, theta, results, dim, staging)?;
        arrays.iter().try_for_each(|(name, a)| write_npy(staging, &format!("{name}.npy"), a))
    })
}

/// Writes a directory of files atomically: `fill` writes into a staging directory beside `dir`,
/// which then replaces `dir`; on failure the staging directory is removed and `dir` is left as
/// it was. An existing `dir` is replaced only when `is_ours` says it is an earlier export.
/// Returns the paths written, sorted.
///
/// # Errors
/// [`Error::Io`] when `dir` exists and is not ours, or a directory operation fails; whatever
/// `fill` returns.
pub(crate) fn write_directory(
    dir: &Path,
    is_ours: fn(&Path) -> bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    if dir.exists() && !is_ours(dir) {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a fullbatch export; not replaced",
            ),
        ));
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
    if let Err(e) = fill(&staging) {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    fs::rename(&staging, dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> =
        fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.filter_map(|entry| entry.ok().map(|e| e.path())).collect();
    files.sort();
    Ok(files)
}

fn is_export(dir: &Path) -> bool {
    fs::read_to_string(dir.join("spec.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<ExportSpec>(&text).ok())
        .is_some_and(|spec| spec.format == EXPORT_FORMAT)
}

fn write_files(
    model: &Model,
    theta: ndarray::ArrayView1<f64>,
    results: serde_json::Value,
    dim: usize,
    dir: &Path,
) -> Result<()> {
    write_npy(dir, "theta.npy", &theta)?;
    let exported = match model {
        Model::Quadratic(q) => {
            write_npy(dir, "a.npy", q.matrix())?;
            write_npy(dir, "b.npy", q.linear_term())?;
            ExportedModel::Quadratic { loss: "0.5 * theta @ a @ theta + b @ theta".into() }
        }
        Model::Network(n) => {
            write_npy(dir, "inputs.npy", n.inputs())?;
            write_npy(dir, "targets.npy", n.targets())?;
            let loss = match n.spec().loss {
                crate::models::OutputLoss::MeanSquaredError => "mean over examples of 0.5 * |a_L - y|^2",
                crate::models::OutputLoss::BinaryCrossEntropy => "mean over examples of log(1 + exp(a_L)) - y * a_L",
                crate::models::OutputLoss::SoftmaxCrossEntropy => {
                    "mean over examples of logsumexp(a_L) - y . a_L (y one-hot)"
                }
            };
            ExportedModel::Network {
                loss: format!("{loss}; a_l = W_l z_(l-1) + b_l, z_l = activation(a_l), z_0 = x"),
                spec: n.spec().clone(),
                layout: n.parameter_layout(),
            }
        }
    };
    let spec = ExportSpec { format: EXPORT_FORMAT.into(), model: exported, dim, results };
    let path = dir.join("spec.json");
    let text = serde_json::to_string_pretty(&spec).map_err(|e| Error::io(&path, std::io::Error::other(e)))?;
    fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
}

/// Reads `spec.json` of an export directory.
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::BadFile`] if it is not an export's spec.
pub fn read_export_spec(dir: &Path) -> Result<ExportSpec> {
    let path = dir.join("spec.json");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let spec: ExportSpec = serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, e.to_string()))?;
    if spec.format != EXPORT_FORMAT {
        return Err(Error::bad_file(&path, format!("format {:?}, expected {EXPORT_FORMAT:?}", spec.format)));
    }
    Ok(spec)
}
