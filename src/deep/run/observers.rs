//! The observers of a `fullbatch train` run (see [`crate::engine`]): the progress line and bar,
//! the step timing and warm-up record of the process, evaluation, sharpness, the log line and
//! checkpoints, in the order [`super::run`] runs them after each step.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{
    LogEntry, ResNetStepper, RunData, RunOptions, SegmentRecord, at_step, derive_seed, json_error, median,
    save_checkpoint, stream, unix_now,
};
use crate::deep::Batch;
use crate::deep::batch_from_images;
use crate::deep::device::{KernelCache, Warmup, WarmupReport};
use crate::deep::resnet::ResNet;
use crate::deep::sharpness::{SharpnessParams, network_lambda_max};
use crate::deep::train::evaluate;
use crate::engine::{Control, Observer, Stepper};
use crate::run_dir::config::RunConfig;
use crate::{Error, Result};

/// The progress bar (drawn from the second step on: the first one shows its own warm-up line)
/// and the report lines (above the bar, or on stderr without one).
pub(super) struct Reporter<'o> {
    pub(super) bar: ProgressBar,
    pub(super) options: &'o RunOptions<'o>,
}

impl<'o> Reporter<'o> {
    pub(super) fn new(
        config: &RunConfig,
        options: &'o RunOptions<'o>,
        start_step: usize,
        total: usize,
    ) -> Result<Self> {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}<{eta_precise}] {wide_bar} {pos}/{len} {msg}")
                .map_err(|e| Error::invalid("progress template", e.to_string()))?,
        );
        bar.set_prefix(config.name.clone());
        bar.set_position(start_step as u64);
        Ok(Reporter { bar, options })
    }

    pub(super) fn line(&self, line: String) {
        if self.options.progress {
            self.bar.println(line);
        } else if self.options.report_evaluations {
            eprintln!("{line}");
        }
    }

    /// The warm-up indicator of a process's first step or evaluation. Only the first step's
    /// sets `options.warming_up` (Ctrl-C then exits at once: nothing of the step is written). A
    /// first evaluation may come many steps after the last checkpoint, so Ctrl-C there asks for
    /// the usual stop with a checkpoint after the step.
    pub(super) fn warmup(&self, what: &str, interruptible: bool) -> Warmup {
        let show = self.options.progress || self.options.report_evaluations;
        let flag = if interruptible { self.options.warming_up.clone() } else { None };
        Warmup::start(what, self.options.kernel_cache.as_ref(), show, flag)
    }
}

/// What this process did to the run: the `segments.jsonl` line being built.
pub(super) struct SegmentProgress {
    pub(super) segment: SegmentRecord,
    pub(super) later_step_s: Vec<f64>,
}

impl SegmentProgress {
    pub(super) fn new(start_step: usize, options: &RunOptions<'_>) -> Self {
        let segment = SegmentRecord {
            start_step,
            end_step: start_step,
            backend: options.backend.clone(),
            device: options.device.clone(),
            git_commit: crate::provenance::git_commit(),
            started_unix_s: unix_now(),
            kernel_cache: options.kernel_cache.as_ref().map(|c| c.root.clone()),
            kernels_cached_before: options.kernel_cache.as_ref().map(KernelCache::kernel_count),
            ..SegmentRecord::default()
        };
        SegmentProgress { segment, later_step_s: Vec::new() }
    }

    pub(super) fn note_warmup(&mut self, r: &WarmupReport) {
        if let Some(n) = r.kernels_compiled {
            self.segment.kernels_compiled_warmup = Some(self.segment.kernels_compiled_warmup.unwrap_or(0) + n);
        }
    }

    pub(super) fn finish(
        mut self,
        t: usize,
        options: &RunOptions<'_>,
        result: &Result<Control>,
        stopped: bool,
    ) -> SegmentRecord {
        let s = &mut self.segment;
        s.end_step = t;
        s.steady_step_s = median(&self.later_step_s);
        s.steady_steps = self.later_step_s.len();
        s.kernels_compiled = options
            .kernel_cache
            .as_ref()
            .zip(s.kernels_cached_before)
            .map(|(c, before)| c.kernel_count().saturating_sub(before));
        s.outcome = match result {
            Ok(_) if stopped => "stopped".into(),
            Ok(_) => "finished".into(),
            Err(e) => format!("error: {e}"),
        };
        self.segment
    }
}

/// Times each step (evaluation excluded) into `step_s` and `images_per_s`; the first step of
/// the process shows the warm-up line and is recorded apart from the steady ones.
pub(super) struct StepTiming<'r> {
    pub(super) start_step: usize,
    pub(super) reporter: &'r Reporter<'r>,
    pub(super) progress: &'r RefCell<SegmentProgress>,
    pub(super) started: Option<(Instant, Option<Warmup>)>,
}

impl<S: Stepper<Record = LogEntry>> Observer<S> for StepTiming<'_> {
    fn before_step(&mut self, _: &mut S, t: usize) -> Result<()> {
        let warmup = (t == self.start_step).then(|| self.reporter.warmup("first training step", true));
        self.started = Some((Instant::now(), warmup));
        Ok(())
    }

    fn after_step(&mut self, _: &mut S, _done: usize, entry: &mut LogEntry) -> Result<Control> {
        let (started, warmup) = self.started.take().ok_or_else(|| Error::invalid("timing", "no step started"))?;
        let step_s = started.elapsed().as_secs_f64();
        entry.step_s = step_s;
        entry.images_per_s /= step_s.max(1e-12);
        let mut progress = self.progress.borrow_mut();
        match warmup {
            Some(w) => {
                let r = w.finish();
                progress.note_warmup(&r);
                progress.segment.first_step_s = Some(step_s);
                self.reporter.line(format!(
                    "first step: {step_s:.1} s{}",
                    r.kernels_compiled.map_or(String::new(), |n| format!(
                        " ({n} kernels compiled, cached in {})",
                        r.kernel_cache.as_deref().map_or("-".into(), |p| p.display().to_string())
                    ))
                ));
                if self.reporter.options.progress {
                    self.reporter.bar.set_draw_target(ProgressDrawTarget::stderr());
                }
            }
            None => progress.later_step_s.push(step_s),
        }
        Ok(Control::Continue)
    }
}

/// The inference model's loss and accuracy on the test images and the un-augmented training
/// images, every `eval_every` steps and at the last.
pub(super) struct Evaluation<'r, B: AutodiffBackend> {
    pub(super) test: Batch<B::InnerBackend>,
    pub(super) train: Batch<B::InnerBackend>,
    pub(super) every: usize,
    pub(super) total: usize,
    pub(super) batch_size: usize,
    pub(super) reporter: &'r Reporter<'r>,
    pub(super) progress: &'r RefCell<SegmentProgress>,
}

impl<'r, B: AutodiffBackend> Evaluation<'r, B> {
    pub(super) fn new(
        config: &RunConfig,
        data: &RunData,
        device: &B::Device,
        reporter: &'r Reporter<'r>,
        progress: &'r RefCell<SegmentProgress>,
        total: usize,
    ) -> Result<Self> {
        Ok(Evaluation {
            test: batch_from_images(&data.test, &data.mean, &data.std, device)?,
            train: batch_from_images(&data.train, &data.mean, &data.std, device)?,
            every: config.eval_every,
            total,
            batch_size: config.eval_batch_size,
            reporter,
            progress,
        })
    }
}

impl<B: AutodiffBackend, O: Optimizer<ResNet<B>, B>> Observer<ResNetStepper<'_, B, O>> for Evaluation<'_, B> {
    fn after_step(&mut self, s: &mut ResNetStepper<'_, B, O>, done: usize, entry: &mut LogEntry) -> Result<Control> {
        if !done.is_multiple_of(self.every) && done != self.total {
            return Ok(Control::Continue);
        }
        let first = self
            .progress
            .borrow()
            .segment
            .first_eval_s
            .is_none()
            .then(|| self.reporter.warmup("first evaluation", false));
        let inference = s.model()?.valid();
        let (tl, ta) = evaluate(&inference, &self.test, self.batch_size)?;
        let (el, ea) = evaluate(&inference, &self.train, self.batch_size)?;
        if let Some(w) = first {
            let r = w.finish();
            let mut progress = self.progress.borrow_mut();
            progress.note_warmup(&r);
            progress.segment.first_eval_s = Some(r.seconds);
        }
        (entry.test_loss, entry.test_acc, entry.eval_train_loss, entry.eval_train_acc) =
            (Some(tl), Some(ta), Some(el), Some(ea));
        self.reporter.line(format!(
            "step {done}: lr {:.4}, train loss {:.4}, test loss {tl:.4}, test acc {:.2}%, train acc (inference) {:.2}%",
            entry.lr,
            entry.train_loss,
            100.0 * ta,
            100.0 * ea
        ));
        Ok(Control::Continue)
    }
}

/// λ_max of the training loss's Hessian at the steps of `[sharpness]`, warm-started from the
/// previous eigenvector (kept in the stepper, so checkpoints carry it).
pub(super) struct SharpnessMeasurement<'r, B: AutodiffBackend> {
    /// The configuration and the first `max_images` un-augmented training images.
    pub(super) setup: Option<(crate::run_dir::config::SharpnessConfig, Batch<B>)>,
    pub(super) seed: u64,
    pub(super) block_size: usize,
    /// For the sharpness against the optimizer's stability edge.
    pub(super) optimizer: crate::run_dir::config::OptimizerConfig,
    pub(super) total: usize,
    pub(super) reporter: &'r Reporter<'r>,
}

impl<'r, B: AutodiffBackend> SharpnessMeasurement<'r, B> {
    pub(super) fn new(
        config: &RunConfig,
        data: &RunData,
        device: &B::Device,
        reporter: &'r Reporter<'r>,
        total: usize,
    ) -> Result<Self> {
        let setup = match &config.sharpness {
            Some(sh) => Some((sh.clone(), super::saved::sharpness_images(data, sh.max_images, device)?)),
            None => None,
        };
        Ok(SharpnessMeasurement {
            setup,
            seed: config.seed,
            block_size: config.block_size(),
            optimizer: config.optimizer.clone(),
            total,
            reporter,
        })
    }
}

impl<B: AutodiffBackend, O: Optimizer<ResNet<B>, B>> Observer<ResNetStepper<'_, B, O>> for SharpnessMeasurement<'_, B> {
    fn after_step(&mut self, s: &mut ResNetStepper<'_, B, O>, done: usize, entry: &mut LogEntry) -> Result<Control> {
        let Some((sh, data)) = &self.setup else { return Ok(Control::Continue) };
        if !done.is_multiple_of(sh.every) && done != self.total {
            return Ok(Control::Continue);
        }
        let mut params =
            SharpnessParams::new(sh.bn_mode, self.block_size, derive_seed(self.seed, stream::SHARPNESS, done as u64));
        (params.tol, params.max_hvps, params.eps_rel) = (sh.tol, sh.max_hvps, sh.eps_rel);
        let model = s.model()?;
        let d = model.num_trainable_params();
        params.start = s
            .sharpness_start
            .as_ref()
            .filter(|v| v.len() == d && v.iter().any(|&x| x != 0.0))
            .map(|v| v.iter().map(|&x| f64::from(x)).collect());
        let r = network_lambda_max(model, data, &params).map_err(|e| at_step(e, done - 1))?;
        (entry.lambda_max, entry.lambda_residual, entry.lambda_hvps, entry.lambda_s) =
            (Some(r.lambda_max), Some(r.residual), Some(r.hvps), Some(r.wall_s));
        (entry.lambda_converged, entry.lambda_operator_error, entry.lambda_interval) =
            (Some(r.converged), Some(r.operator_error), Some([r.interval.lower, r.interval.upper]));
        let edge = self.optimizer.fraction_of_stability_edge(r.lambda_max, entry.lr);
        entry.lambda_edge_fraction = Some(edge);
        s.sharpness_start = Some(r.vector.iter().map(|&x| x as f32).collect());
        self.reporter.line(format!(
            "step {done}: lambda_max {:.4} in [{:.4}, {:.4}] = {edge:.3} of the stability edge (residual {:.2e}, operator error {:.1e}, {} HVPs, {:.1} s{})",
            r.lambda_max,
            r.interval.lower,
            r.interval.upper,
            r.residual,
            r.operator_error,
            r.hvps,
            r.wall_s,
            if r.converged { "" } else { ", not converged" }
        ));
        Ok(Control::Continue)
    }
}

/// Appends each step's line to `log.jsonl` (flushed) with the run's wall time, and moves the bar.
pub(super) struct LogWriter<'r> {
    pub(super) log: File,
    pub(super) path: PathBuf,
    pub(super) wall_offset: f64,
    pub(super) started: Instant,
    pub(super) reporter: &'r Reporter<'r>,
    pub(super) last: Option<LogEntry>,
}

impl<S: Stepper<Record = LogEntry>> Observer<S> for LogWriter<'_> {
    fn after_step(&mut self, _: &mut S, done: usize, entry: &mut LogEntry) -> Result<Control> {
        entry.wall_s = self.wall_offset + self.started.elapsed().as_secs_f64();
        let line = serde_json::to_string(&*entry).map_err(json_error)?;
        writeln!(self.log, "{line}").and_then(|_| self.log.flush()).map_err(|e| Error::io(&self.path, e))?;
        self.reporter.bar.set_message(format!("loss {:.4} |g| {:.3e}", entry.train_loss, entry.grad_norm));
        self.reporter.bar.set_position(done as u64);
        self.last = Some(entry.clone());
        Ok(Control::Continue)
    }
}

/// Saves a checkpoint every `checkpoint_every` steps, at the last step of the process and when a
/// stop is requested (then the run stops after this step).
pub(super) struct Checkpoints<'a> {
    pub(super) dir: &'a Path,
    pub(super) end: usize,
    pub(super) wall_offset: f64,
    pub(super) started: Instant,
    pub(super) stop: Option<&'a AtomicBool>,
}

impl<B: AutodiffBackend, O: Optimizer<ResNet<B>, B>> Observer<ResNetStepper<'_, B, O>> for Checkpoints<'_> {
    fn after_step(&mut self, s: &mut ResNetStepper<'_, B, O>, done: usize, _: &mut LogEntry) -> Result<Control> {
        let stop = self.stop.is_some_and(|s| s.load(Ordering::SeqCst));
        if done.is_multiple_of(s.config.checkpoint_every) || done == self.end || stop {
            let wall = self.wall_offset + self.started.elapsed().as_secs_f64();
            save_checkpoint(self.dir, done, s.config.seed, wall, s.model()?, &s.optim, s.sharpness_start.as_deref())?;
        }
        Ok(if stop && done < self.end { Control::Stop("stop requested".into()) } else { Control::Continue })
    }
}
