//! The sharpness of a small ResNet: $\lambda_{\max}$ along a `fullbatch train` run with its
//! intervals (from `log.jsonl`), and $\lambda_{\max}$ of one checkpoint against the number of
//! training images it is measured on (`scripts/lambda_vs_images.sh`), the question of how much
//! a subset Hessian differs from the full one.

use std::path::Path;

use serde::Deserialize;

use crate::plot::{Figure, Legend, Mark, Panel, Scale, Series};
use crate::run_dir::{self, LogEntry};
use crate::{Error, Result};

/// One measurement of `scripts/lambda_vs_images.sh`.
#[derive(Debug, Clone, Deserialize)]
pub struct ImagesPoint {
    /// Images measured on.
    pub images: usize,
    /// The value.
    pub lambda_max: f64,
    /// Lower end of its interval.
    pub lower: f64,
    /// Upper end of its interval.
    pub upper: f64,
    /// Whether Lanczos met its tolerance.
    pub converged: bool,
    /// Products used.
    pub products: usize,
    /// Seconds.
    pub seconds: f64,
}

/// What [`network_sharpness_figure`] draws.
#[derive(Debug, Clone, Default)]
pub struct NetworkSharpnessData {
    /// The run's name and its log lines with a sharpness measurement.
    pub run: Option<(String, Vec<LogEntry>)>,
    /// The checkpoint step and the measurements against the number of images.
    pub images: Option<(usize, Vec<ImagesPoint>)>,
}

/// Reads the run in `run_dir` (a missing directory gives no run) and the measurements in
/// `images_file` (a missing file gives none).
///
/// # Errors
/// As [`run_dir::read_log`] and [`run_dir::stored_config`]; [`Error::BadFile`] for an images file
/// that is not the script's JSON, or empty.
pub fn read_network_sharpness(run: &Path, images_file: &Path) -> Result<NetworkSharpnessData> {
    let run = if run.join("log.jsonl").exists() {
        let config = run_dir::stored_config(run)?;
        let log: Vec<LogEntry> = run_dir::read_log(run)?.into_iter().filter(|e| e.lambda_max.is_some()).collect();
        Some((config.name, log))
    } else {
        None
    };
    let images = if images_file.exists() {
        let text = std::fs::read_to_string(images_file).map_err(|e| Error::io(images_file, e))?;
        let raw: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(images_file, format!("not a JSON array: {e}")))?;
        let step = raw
            .first()
            .and_then(|r| r["step"].as_u64())
            .ok_or_else(|| Error::bad_file(images_file, "no measurement with a `step`"))?;
        let points: Vec<ImagesPoint> = raw
            .into_iter()
            .map(serde_json::from_value)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::bad_file(images_file, e.to_string()))?;
        Some((step as usize, points))
    } else {
        None
    };
    Ok(NetworkSharpnessData { run, images })
}

/// Two panels: $\lambda_{\max}$ after each measured step of the run with its interval (error
/// bars; hollow where Lanczos did not converge), and $\lambda_{\max}$ of one checkpoint against
/// the number of images, with intervals.
pub fn network_sharpness_figure(data: &NetworkSharpnessData) -> Figure {
    let mut along = vec![];
    let title_run = match &data.run {
        Some((name, log)) => {
            let point = |e: &LogEntry| Some((e.step as f64, e.lambda_max?));
            let bars: Vec<(f64, f64, f64)> = log
                .iter()
                .filter_map(|e| {
                    let [lo, hi] = e.lambda_interval?;
                    Some((e.step as f64, 0.5 * (lo + hi), 0.5 * (hi - lo)))
                })
                .collect();
            along.push(Series {
                label: "λ_max (converged)".into(),
                points: log.iter().filter(|e| e.lambda_converged != Some(false)).filter_map(point).collect(),
                color: 0,
                mark: Mark::Points,
            });
            along.push(Series {
                label: "λ_max (not converged)".into(),
                points: log.iter().filter(|e| e.lambda_converged == Some(false)).filter_map(point).collect(),
                color: 1,
                mark: Mark::Points,
            });
            along.push(Series::error_bars(0, &bars));
            along.retain(|s| !s.points.is_empty());
            format!("{name}: λ_max after each measured step, interval as bars")
        }
        None => "no run found".into(),
    };
    let mut by_images = vec![];
    let title_images = match &data.images {
        Some((step, points)) => {
            by_images.push(Series {
                label: "λ_max on the first N images".into(),
                points: points.iter().map(|p| (p.images as f64, p.lambda_max)).collect(),
                color: 2,
                mark: Mark::Points,
            });
            let bars: Vec<(f64, f64, f64)> = points
                .iter()
                .map(|p| (p.images as f64, 0.5 * (p.lower + p.upper), 0.5 * (p.upper - p.lower)))
                .collect();
            by_images.push(Series::error_bars(2, &bars));
            if let Some(all) = points.iter().max_by_key(|p| p.images) {
                let (lo, hi) = (points.iter().map(|p| p.images).min().unwrap_or(1) as f64, all.images as f64);
                by_images.push(Series {
                    label: format!("all {} images", all.images),
                    points: vec![(lo, all.lambda_max), (hi, all.lambda_max)],
                    color: 7,
                    mark: Mark::Dashed,
                });
            }
            format!("after step {step}: λ_max vs the number of images measured on")
        }
        None => "no images sweep found".into(),
    };
    Figure {
        title: "Sharpness of a small ResNet (finite-difference Hessian, intervals = residual + operator error)".into(),
        panels: vec![
            Panel {
                title: title_run,
                x_label: "step".into(),
                y_label: "λ_max of the training loss's Hessian".into(),
                x_scale: Scale::Linear,
                y_scale: Scale::Log10,
                series: along,
                legend: Legend::UpperRight,
            },
            Panel {
                title: title_images,
                x_label: "images N (first N, un-augmented)".into(),
                y_label: "λ_max".into(),
                x_scale: Scale::Log10,
                y_scale: Scale::Log10,
                series: by_images,
                legend: Legend::LowerRight,
            },
        ],
        columns: 2,
        panel_size: (640, 460),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed run and images sweep read back: eight measured steps (every 5 of 40), each
    /// converged with an interval around its value; nine image counts up to 512.
    #[test]
    fn the_committed_sharpness_results_read_back() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/results/sharpness");
        let data =
            read_network_sharpness(&root.join("small-synthetic-fb"), &root.join("lambda-vs-images.json")).unwrap();
        let (name, log) = data.run.unwrap();
        assert_eq!(name, "small-synthetic-fb");
        assert_eq!(log.iter().map(|e| e.step).collect::<Vec<_>>(), vec![5, 10, 15, 20, 25, 30, 35, 40]);
        for e in &log {
            let [lo, hi] = e.lambda_interval.unwrap();
            let l = e.lambda_max.unwrap();
            assert!(lo < l && l < hi && e.lambda_converged == Some(true), "step {}", e.step);
        }
        let (step, points) = data.images.unwrap();
        assert_eq!(step, 40);
        assert_eq!(points.last().map(|p| p.images), Some(512));
        assert_eq!(points.len(), 9);
    }

    /// Missing inputs are empty panels; a malformed sweep names its file.
    #[test]
    fn missing_and_bad_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let none = read_network_sharpness(&dir.path().join("no-run"), &dir.path().join("none.json")).unwrap();
        assert!(none.run.is_none() && none.images.is_none());
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "[{\"images\": 3}]").unwrap();
        let e = read_network_sharpness(&dir.path().join("no-run"), &bad).unwrap_err().to_string();
        assert!(e.contains("bad.json"), "{e}");
    }
}
