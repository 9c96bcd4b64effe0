//! `fullbatch sharpness --run DIR`: the Hessian of a saved ResNet checkpoint's training loss,
//! after the fact, on the CPU (burn's Flex backend, `f32` network, `f64` linear algebra).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::SavedRunOptions;
use fullbatch::deep::config::BatchNormMode;
use fullbatch::deep::hessian_export::{HessianSamples, export_network_hessian, parameter_names};
use fullbatch::deep::run::saved::{load_saved_run, sharpness_images};
use fullbatch::deep::sharpness::{
    NetworkHessian, OperatorDiagnostics, SharpnessParams, operator_diagnostics, operator_error_along,
};
use fullbatch::deep::{Batch, CpuAutodiff};
use fullbatch::sharpness::trace::{DensityParams, SpectralDensity, TraceEstimate, hutch_plus_plus, spectral_density};
use fullbatch::sharpness::{Eigenpairs, LanczosParams, LinearOperator, Which, eigenvalue_intervals, lanczos};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array1, ArrayView1};
use serde::Serialize;

/// What `fullbatch sharpness --run` measures.
pub struct NetworkSharpnessArgs {
    pub k: usize,
    pub which: Which,
    pub tol: f64,
    pub seed: u64,
    pub json: bool,
    pub export: Option<PathBuf>,
    pub saved: SavedRunOptions,
}

impl NetworkSharpnessArgs {
    fn bn_mode(&self) -> BatchNormMode {
        if self.saved.bn_mode == "eval" { BatchNormMode::Eval } else { BatchNormMode::Train }
    }
}

#[derive(Serialize)]
struct Report {
    run: String,
    step: usize,
    checkpoint: String,
    bn_mode: BatchNormMode,
    images: usize,
    block_size: usize,
    dim: usize,
    eps: f64,
    which: Which,
    tol: f64,
    eps_rel: f64,
    seed: u64,
    git_commit: String,
    eigenpairs: Eigenpairs,
    eigen_s: f64,
    trace: Option<TraceEstimate>,
    density: Option<SpectralDensity>,
    diagnostics: Option<OperatorDiagnostics>,
    groups: Vec<GroupReport>,
    wall_s: f64,
}

/// The Hessian restricted to one parameter group: the principal submatrix $H_{GG}$.
#[derive(Serialize)]
struct GroupReport {
    /// The pattern (or layer name) that chose it.
    group: String,
    /// The tensors in it.
    tensors: Vec<String>,
    parameters: usize,
    eigenpairs: Eigenpairs,
    seconds: f64,
}

/// $H_{GG}$: products of the full operator on vectors supported on `indices`, read back there.
struct Restricted<'a, O: LinearOperator> {
    inner: &'a O,
    indices: &'a [usize],
}

impl<O: LinearOperator> Restricted<'_, O> {
    fn embed(&self, v: ArrayView1<f64>) -> Array1<f64> {
        let mut full = Array1::zeros(self.inner.dim());
        for (&i, &x) in self.indices.iter().zip(v.iter()) {
            full[i] = x;
        }
        full
    }
}

impl<O: LinearOperator> LinearOperator for Restricted<'_, O> {
    fn dim(&self) -> usize {
        self.indices.len()
    }
    fn apply(&self, v: ArrayView1<f64>) -> Array1<f64> {
        let w = self.inner.apply(self.embed(v).view());
        self.indices.iter().map(|&i| w[i]).collect()
    }
}

/// `*` matches any run of characters (dots included); everything else literally.
fn glob_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len())
                    .any(|k| name.is_char_boundary(head.len() + k) && glob_matches(rest, &name[head.len() + k..]))
        }
    }
}

/// An operator that moves a progress bar on every product.
struct Counted<'a, O: LinearOperator + ?Sized> {
    inner: &'a O,
    bar: &'a ProgressBar,
}

impl<O: LinearOperator + ?Sized> LinearOperator for Counted<'_, O> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn apply(&self, v: ArrayView1<f64>) -> Array1<f64> {
        let out = self.inner.apply(v);
        self.bar.inc(1);
        out
    }
}

fn bar(len: usize, what: &str, hidden: bool) -> Result<ProgressBar> {
    let bar = ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} products ({elapsed}, eta {eta})")?
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    Ok(bar)
}

/// Lanczos on `op` as `args` say (k, which, tol, budget, seed), with a progress bar labelled
/// `what`; then `error_along` each eigenvector (the operator's own error), whose largest value
/// is added to every interval.
fn eigenpairs_with_intervals(
    args: &NetworkSharpnessArgs,
    op: &dyn LinearOperator,
    what: &str,
    error_along: impl Fn(ArrayView1<f64>) -> Result<f64>,
) -> Result<Eigenpairs> {
    let progress = bar(args.saved.max_hvps, what, args.json)?;
    let lp = LanczosParams {
        k: args.k.min(op.dim()),
        which: args.which,
        tol: args.tol,
        floor: args.tol,
        max_basis: 0,
        max_applications: args.saved.max_hvps,
        seed: args.seed,
        verify_multiplicity: false,
        start: None,
        keep_unconverged: true,
        operator_error: 0.0,
    };
    let result = lanczos(&Counted { inner: op, bar: &progress }, &lp);
    progress.finish_and_clear();
    let mut eigenpairs = result?;
    let mut operator_error: f64 = 0.0;
    for v in eigenpairs.vectors.columns() {
        operator_error = operator_error.max(error_along(v)?);
    }
    eigenpairs.intervals = eigenvalue_intervals(&eigenpairs.values, &eigenpairs.residuals, operator_error, args.which);
    Ok(eigenpairs)
}

/// Runs `fullbatch sharpness --run`.
pub fn network_sharpness(args: NetworkSharpnessArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let run = args.saved.run.clone().context("--run DIR is required")?;
    let device = Default::default();
    let (saved, data) = load_saved_run::<CpuAutodiff>(&run, args.saved.step, args.saved.data.as_deref(), &device)?;
    let images: Batch<CpuAutodiff> = sharpness_images(&data, args.saved.max_images, &device)?;
    let block_size = saved.config.block_size().min(images.len());
    let mut params = SharpnessParams::new(args.bn_mode(), block_size, args.seed);
    (params.tol, params.max_hvps, params.eps_rel) = (args.tol, args.saved.max_hvps, args.saved.eps_rel);
    let op = NetworkHessian::new(&saved.model, &images, block_size, args.bn_mode(), args.saved.eps_rel)?;
    if !args.json {
        eprintln!(
            "{} after step {}: {} trainable parameters, {} images in blocks of {block_size}, BatchNorm {:?}, eps {:.3e}",
            run.display(),
            saved.step,
            op.dim(),
            images.len(),
            args.bn_mode(),
            op.step()
        );
    }

    let eigen_started = Instant::now();
    let eigenpairs =
        eigenpairs_with_intervals(&args, &op, "lanczos", |v| Ok(operator_error_along(&op, &saved.model, &params, v)?));
    if let Some(e) = op.take_error() {
        return Err(e.into());
    }
    let eigenpairs = eigenpairs?;
    let eigen_s = eigen_started.elapsed().as_secs_f64();

    let trace = if args.saved.trace > 0 {
        let progress = bar(args.saved.trace, "hutch++", args.json)?;
        let t = hutch_plus_plus(&Counted { inner: &op, bar: &progress }, args.saved.trace, args.seed)?;
        progress.finish_and_clear();
        Some(t)
    } else {
        None
    };
    let density = if args.saved.density > 0 {
        let dp = DensityParams { probes: args.saved.density, seed: args.seed, ..DensityParams::default() };
        let progress = bar(dp.probes * dp.steps, "slq", args.json)?;
        let d = spectral_density(&Counted { inner: &op, bar: &progress }, &dp)?;
        progress.finish_and_clear();
        Some(d)
    } else {
        None
    };
    let mut group_reports = Vec::new();
    let diagnostics = if args.saved.diagnose {
        if !args.json {
            eprintln!("diagnosing the operator (11 products)...");
        }
        let top = eigenpairs.vectors.ncols().gt(&0).then(|| eigenpairs.vectors.column(0));
        Some(operator_diagnostics(&saved.model, &images, &params, top, &[1e-5, 3e-5, 3e-4, 1e-3, 3e-3, 1e-2])?)
    } else {
        None
    };

    let mut chosen: Vec<(String, Vec<String>)> = Vec::new();
    if !args.saved.groups.is_empty() || args.saved.per_layer {
        let names = parameter_names(&saved.model)?;
        for pattern in &args.saved.groups {
            let tensors: Vec<String> =
                names.iter().filter(|(n, _)| glob_matches(pattern, n)).map(|(n, _)| n.clone()).collect();
            anyhow::ensure!(
                !tensors.is_empty(),
                "--group {pattern} matches no parameter; the names are {:?}",
                names.iter().map(|(n, _)| n).collect::<Vec<_>>()
            );
            chosen.push((pattern.clone(), tensors));
        }
        if args.saved.per_layer {
            for (name, _) in &names {
                let layer = name.rsplit_once('.').map_or(name.as_str(), |(l, _)| l).to_string();
                match chosen.iter_mut().find(|(g, _)| *g == layer) {
                    Some((_, t)) => t.push(name.clone()),
                    None => chosen.push((layer, vec![name.clone()])),
                }
            }
        }
        let mut offsets = Vec::new();
        let mut offset = 0;
        for (name, len) in &names {
            offsets.push((name.clone(), offset, *len));
            offset += len;
        }
        let mut groups = Vec::new();
        for (group, tensors) in chosen {
            let started = Instant::now();
            let indices: Vec<usize> =
                offsets.iter().filter(|(n, _, _)| tensors.contains(n)).flat_map(|&(_, o, len)| o..o + len).collect();
            let restricted = Restricted { inner: &op, indices: &indices };
            let eigenpairs = eigenpairs_with_intervals(&args, &restricted, &group, |v| {
                Ok(operator_error_along(&op, &saved.model, &params, restricted.embed(v).view())?)
            });
            if let Some(e) = op.take_error() {
                return Err(e.into());
            }
            let eigenpairs = eigenpairs?;
            groups.push(GroupReport {
                group,
                tensors,
                parameters: indices.len(),
                eigenpairs,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        group_reports = groups;
    }

    let report = Report {
        run: run.display().to_string(),
        step: saved.step,
        checkpoint: saved.checkpoint.display().to_string(),
        bn_mode: args.bn_mode(),
        images: images.len(),
        block_size,
        dim: op.dim(),
        eps: op.step(),
        which: args.which,
        tol: args.tol,
        eps_rel: args.saved.eps_rel,
        seed: args.seed,
        git_commit: fullbatch::provenance::git_commit(),
        eigenpairs,
        eigen_s,
        trace,
        density,
        diagnostics,
        groups: group_reports,
        wall_s: started.elapsed().as_secs_f64(),
    };
    if let Some(dir) = &args.export {
        export(&args, &saved.model, &images, block_size, &report, dir)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.eigenpairs.converged { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_report(r: &Report) {
    let e = &r.eigenpairs;
    println!(
        "{} eigenvalue(s) ({:?}) in {} products, {:.1} s{}",
        e.values.len(),
        r.which,
        e.operator_applications,
        r.eigen_s,
        if e.converged { "" } else { "; NOT converged: values are the best Ritz values, not certified to tol" }
    );
    let eta = e.intervals.first().map_or(0.0, |iv| iv.operator_error);
    println!("operator error along the eigenvectors (truncation + rounding): {eta:.2e}, added to each interval");
    println!("{:>14} {:>11} {:>11} {:>26}", "eigenvalue", "residual", "rel. res.", "interval");
    for (i, (&v, &res)) in e.values.iter().zip(&e.residuals).enumerate() {
        let interval = e.intervals.get(i).map_or_else(String::new, |iv| format!("[{:.6}, {:.6}]", iv.lower, iv.upper));
        println!("{v:>14.6} {res:>11.3e} {:>11.3e} {interval:>26}", res / v.abs().max(f64::MIN_POSITIVE));
    }
    if let Some(t) = &r.trace {
        println!("trace (Hutch++): {:.6} ± {:.2e}", t.estimate, t.stderr);
    }
    if let Some(d) = &r.density {
        let (m1, se) = d.moment(1);
        println!("spectral density (SLQ): {} probes, mean eigenvalue {m1:.4e} ± {se:.1e}", d.nodes.len());
    }
    if let Some(d) = &r.diagnostics {
        println!(
            "operator (unit vectors, absolute): |Hu| {:.3e}; repeat {:.1e}; asymmetry {:.1e}; nonlinearity {:.1e}; eps {:.3e}",
            d.norm_hu, d.repeat, d.asymmetry, d.nonlinearity, d.eps
        );
        println!(
            "  along x (the top eigenvector): |Hx| {:.4e}, x'Hx {:.6} at eps_rel {:.0e}",
            d.norm_hx, d.rayleigh, r.eps_rel
        );
        for p in &d.step_sweep {
            println!("  eps_rel {:.0e}: |H'x - Hx| {:.3e}, x'H'x {:.6}", p.eps_rel, p.change, p.rayleigh);
        }
    }
    if !r.groups.is_empty() {
        println!(
            "{:<28} {:>10} {:>14} {:>26} {:>8}",
            "group (H restricted to it)", "parameters", "eigenvalue", "interval", "seconds"
        );
        for g in &r.groups {
            let e = &g.eigenpairs;
            for (i, v) in e.values.iter().enumerate() {
                let iv =
                    e.intervals.get(i).map_or_else(String::new, |iv| format!("[{:.6}, {:.6}]", iv.lower, iv.upper));
                let (name, n, t) = if i == 0 {
                    (g.group.as_str(), g.parameters.to_string(), format!("{:.1}", g.seconds))
                } else {
                    ("", String::new(), String::new())
                };
                println!(
                    "{name:<28} {n:>10} {v:>14.6} {iv:>26} {t:>8}{}",
                    if e.converged { "" } else { "  not converged" }
                );
            }
        }
    }
    println!("{:.1} s in all", r.wall_s);
}

/// Writes the export for `scripts/check_network_export.py`: the model, the images, our products
/// along the top eigenvector in both BatchNorm modes and their estimated errors
/// (four products), the eigenvectors and the report.
fn export(
    args: &NetworkSharpnessArgs,
    model: &fullbatch::deep::resnet::ResNet<CpuAutodiff>,
    images: &Batch<CpuAutodiff>,
    block_size: usize,
    report: &Report,
    dir: &std::path::Path,
) -> Result<()> {
    // Along the top eigenvector: there |Hv| is largest, so the comparison measures the operator,
    // not the f32 rounding floor (along a random direction near a minimum |Hv| is tiny and the
    // relative error of a product is rounding-dominated).
    let e = &report.eigenpairs.vectors;
    anyhow::ensure!(e.ncols() > 0, "no eigenvector to export");
    let v = e.column(0).to_owned();
    let product = |mode, eps_rel| -> Result<Array1<f64>> {
        Ok(NetworkHessian::new(model, images, block_size, mode, eps_rel)?.hvp(v.view())?)
    };
    let (train, eval) = (BatchNormMode::Train, BatchNormMode::Eval);
    let (hv_train, hv_eval) = (product(train, args.saved.eps_rel)?, product(eval, args.saved.eps_rel)?);
    // The error estimates along v that the script checks against PyTorch.
    let error = |mode| -> Result<f64> {
        let params =
            SharpnessParams { eps_rel: args.saved.eps_rel, ..SharpnessParams::new(mode, block_size, args.seed) };
        let op = NetworkHessian::new(model, images, block_size, mode, args.saved.eps_rel)?;
        Ok(operator_error_along(&op, model, &params, v.view())?)
    };
    let errors = [error(train)?, error(eval)?];
    let samples = HessianSamples {
        v: &v,
        hv_train: &hv_train,
        hv_eval: &hv_eval,
        hv_error_estimates: errors,
        eigenvectors: &report.eigenpairs.vectors,
    };
    let files = export_network_hessian(model, images, block_size, &samples, serde_json::to_value(report)?, dir)?;
    if !args.json {
        eprintln!(
            "exported {} files to {} (check: python3 scripts/check_network_export.py {})",
            files.len(),
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}
