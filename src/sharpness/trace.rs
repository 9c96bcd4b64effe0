//! Trace estimators (Hutchinson, Hutch++) with standard errors, and the spectral density by
//! stochastic Lanczos quadrature.

use ndarray::{Array1, Array2};
use ndarray_linalg::QR;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::LinearOperator;
use super::lanczos::{rayleigh_matrix, symmetric_eigen};
use crate::stats::mean_and_stderr;
use crate::{Error, Result};

/// A trace estimate.
#[derive(Debug, Clone, Serialize)]
pub struct TraceEstimate {
    /// The estimate of $\mathrm{tr}(A)$.
    pub estimate: f64,
    /// Its standard error (0 when the estimate is exact).
    pub stderr: f64,
    /// Operator applications used.
    pub applications: usize,
}

fn rademacher(d: usize, rng: &mut ChaCha8Rng) -> Array1<f64> {
    Array1::from_shape_fn(d, |_| if rng.random::<bool>() { 1.0 } else { -1.0 })
}

/// Hutchinson's estimator $\frac1p\sum_{i=1}^p z_i^\top A z_i$ with Rademacher $z_i$
/// (unbiased; variance $2(\|A\|_F^2 - \sum_i A_{ii}^2)/p$), standard error from the samples.
///
/// # Errors
/// [`Error::InvalidParameter`] for fewer than two probes.
pub fn hutchinson(op: &dyn LinearOperator, probes: usize, seed: u64) -> Result<TraceEstimate> {
    if probes < 2 {
        return Err(Error::invalid("probes", "need at least 2 for a standard error"));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let samples: Vec<f64> = (0..probes)
        .map(|_| {
            let z = rademacher(op.dim(), &mut rng);
            z.dot(&op.apply(z.view()))
        })
        .collect();
    let (estimate, stderr) = mean_and_stderr(&samples);
    Ok(TraceEstimate { estimate, stderr, applications: probes })
}

/// Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with about `budget` applications: the trace of
/// $A$ on the range $Q$ of $AS$ ($S$: $s = \lfloor\text{budget}/3\rfloor$ Rademacher vectors)
/// exactly, plus Hutchinson on the deflated $(I - QQ^\top)A(I - QQ^\top)$ with $s$ more probes.
/// The standard error is that of the Hutchinson part.
///
/// # Errors
/// [`Error::InvalidParameter`] for a budget below 6; [`Error::Linalg`] if QR fails.
pub fn hutch_plus_plus(op: &dyn LinearOperator, budget: usize, seed: u64) -> Result<TraceEstimate> {
    if budget < 6 {
        return Err(Error::invalid("budget", "Hutch++ needs at least 6 applications"));
    }
    let d = op.dim();
    let s = (budget / 3).min(d);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut y = Array2::<f64>::zeros((d, s));
    for mut col in y.columns_mut() {
        let z = rademacher(d, &mut rng);
        col.assign(&op.apply(z.view()));
    }
    let (q, _) = y.qr()?;
    let mut exact_part = 0.0;
    for col in q.columns() {
        exact_part += col.dot(&op.apply(col));
    }
    let mut applications = 2 * s;
    if s == d {
        return Ok(TraceEstimate { estimate: exact_part, stderr: 0.0, applications });
    }
    let samples: Vec<f64> = (0..s)
        .map(|_| {
            let g = rademacher(d, &mut rng);
            let g = &g - &q.dot(&q.t().dot(&g));
            g.dot(&op.apply(g.view()))
        })
        .collect();
    applications += s;
    let (mean, stderr) = mean_and_stderr(&samples);
    Ok(TraceEstimate { estimate: exact_part + mean, stderr, applications })
}

/// Parameters of [`spectral_density`].
#[derive(Debug, Clone, Serialize)]
pub struct DensityParams {
    /// Random probe vectors.
    pub probes: usize,
    /// Lanczos steps per probe (quadrature nodes).
    pub steps: usize,
    /// Gaussian smoothing width, relative to the width of the spectrum found.
    pub relative_sigma: f64,
    /// Grid points.
    pub grid_points: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for DensityParams {
    fn default() -> Self {
        DensityParams { probes: 10, steps: 40, relative_sigma: 0.01, grid_points: 400, seed: 0 }
    }
}

/// A smoothed spectral density with its quadrature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpectralDensity {
    /// Grid of eigenvalue positions.
    pub grid: Vec<f64>,
    /// Density on the grid; integrates to 1 up to the grid's resolution.
    pub density: Vec<f64>,
    /// Ritz nodes, per probe.
    pub nodes: Vec<Vec<f64>>,
    /// Gauss weights (squared first components), per probe; each sums to 1.
    pub weights: Vec<Vec<f64>>,
    /// The smoothing width used.
    pub sigma: f64,
    /// Operator applications used.
    pub applications: usize,
}

impl SpectralDensity {
    /// The quadrature estimate of $\frac1d\mathrm{tr}(A^p)$: $\frac1{\#\text{probes}}\sum_{\text{probes}}\sum_i w_i\theta_i^p$,
    /// with its standard error over the probes.
    pub fn moment(&self, p: i32) -> (f64, f64) {
        let per_probe: Vec<f64> = self
            .nodes
            .iter()
            .zip(&self.weights)
            .map(|(n, w)| n.iter().zip(w).map(|(t, w)| w * t.powi(p)).sum())
            .collect();
        mean_and_stderr(&per_probe)
    }
}

/// Stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; as in PyHessian): for each
/// Rademacher probe $z$ (normalised), `steps` Lanczos steps give nodes $\theta_i$ and weights
/// $w_i$ with $\sum_i w_i f(\theta_i) \approx \hat z^\top f(A)\hat z$ (exact for polynomials of
/// degree below $2\cdot$steps); the density is $\frac1{\#\text{probes}}\sum\sum_i w_i
/// \mathcal N(\lambda; \theta_i, \sigma^2)$.
///
/// # Errors
/// [`Error::InvalidParameter`] for zero probes, steps or grid points; [`Error::Linalg`].
pub fn spectral_density(op: &dyn LinearOperator, params: &DensityParams) -> Result<SpectralDensity> {
    if params.probes == 0 || params.steps == 0 || params.grid_points < 2 {
        return Err(Error::invalid("density parameters", "probes, steps and grid points must be positive"));
    }
    let d = op.dim();
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut nodes = Vec::new();
    let mut weights = Vec::new();
    let mut applications = 0;
    for p in 0..params.probes {
        let z = rademacher(d, &mut rng);
        let (t, apps) = rayleigh_matrix(op, z.view(), params.steps, params.seed.wrapping_add(p as u64))?;
        applications += apps;
        let (theta, y) = symmetric_eigen(&t)?;
        nodes.push(theta.to_vec());
        weights.push(y.row(0).iter().map(|c| c * c).collect());
    }
    let (lo, hi) = nodes.iter().flatten().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let width = (hi - lo).max(1e-12 * hi.abs().max(1.0));
    let sigma = params.relative_sigma * width;
    let (g0, g1) = (lo - 5.0 * sigma, hi + 5.0 * sigma);
    let grid: Vec<f64> =
        (0..params.grid_points).map(|i| g0 + (g1 - g0) * i as f64 / (params.grid_points - 1) as f64).collect();
    let norm = 1.0 / (params.probes as f64 * sigma * (2.0 * std::f64::consts::PI).sqrt());
    let density = grid
        .iter()
        .map(|&x| {
            nodes
                .iter()
                .zip(&weights)
                .map(|(n, w): (&Vec<f64>, &Vec<f64>)| {
                    n.iter().zip(w).map(|(t, w)| w * (-0.5 * ((x - t) / sigma).powi(2)).exp()).sum::<f64>()
                })
                .sum::<f64>()
                * norm
        })
        .collect();
    Ok(SpectralDensity { grid, density, nodes, weights, sigma, applications })
}
