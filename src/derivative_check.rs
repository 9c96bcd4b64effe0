//! Evidence that a model's exact derivatives are right: finite-difference sweeps over the
//! difference step and the symmetry of the Hessian.
//!
//! A central difference with step $\varepsilon$ has truncation error $O(\varepsilon^2)$ and
//! rounding error $O(\varepsilon_{\text{mach}}/\varepsilon)$, so the error of the difference
//! against a *correct* derivative, plotted against $\varepsilon$ on log-log axes, is a V: slope
//! 2 on the right, slope $-1$ on the left, bottoming out near $10^{-10}$. A wrong derivative
//! gives a floor at the size of the mistake instead. [`check_derivatives`] measures the V.

use ndarray::{Array1, ArrayView1};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::Result;
use crate::models::ModelKind;
use crate::objective::{Objective, directional_derivative_by_difference, hvp_by_difference};

/// Parameters of [`check_derivatives`].
#[derive(Debug, Clone)]
pub struct DerivativeCheckParams {
    /// Difference steps $\varepsilon$, largest first.
    pub steps: Vec<f64>,
    /// Random unit directions per step (errors are the maximum over them).
    pub directions: usize,
    /// Seed of the directions.
    pub seed: u64,
    /// A derivative passes when its smallest relative error over the steps is below this.
    pub tolerance: f64,
}

impl Default for DerivativeCheckParams {
    fn default() -> Self {
        DerivativeCheckParams {
            steps: geometric_steps(1e-1, 1e-11, 41),
            directions: 3,
            seed: 0,
            // The V bottoms out near 1e-10 for a correct derivative of an O(1) loss; an error in
            // one term of a derivative would typically leave an O(1e-2) or larger floor.
            tolerance: 1e-6,
        }
    }
}

/// `count` steps from `largest` down to `smallest`, equally spaced in $\log\varepsilon$.
pub fn geometric_steps(largest: f64, smallest: f64, count: usize) -> Vec<f64> {
    let (a, b) = (largest.ln(), smallest.ln());
    (0..count).map(|i| (a + (b - a) * i as f64 / (count.max(2) - 1) as f64).exp()).collect()
}

/// The result of [`check_derivatives`] for one model.
#[derive(Debug, Clone, Serialize)]
pub struct DerivativeReport {
    /// Number of parameters.
    pub dim: usize,
    /// The difference steps.
    pub steps: Vec<f64>,
    /// $\max_v |\frac{L(\theta+\varepsilon v) - L(\theta-\varepsilon v)}{2\varepsilon} - g^\top v| / \|g\|$ per step.
    pub gradient_errors: Vec<f64>,
    /// $\max_v \|\frac{g(\theta+\varepsilon v) - g(\theta-\varepsilon v)}{2\varepsilon} - Hv\| / \|Hv\|$ per step.
    pub hvp_errors: Vec<f64>,
    /// The smallest gradient error over the steps.
    pub best_gradient_error: f64,
    /// The smallest HVP error over the steps.
    pub best_hvp_error: f64,
    /// Least-squares slope of log error against log step over the truncation-dominated
    /// steps ($\varepsilon \ge 10^{-3}$): 2 for a correct gradient, unless the error is at
    /// rounding level already (quadratic models).
    pub gradient_truncation_slope: f64,
    /// The same for the HVP.
    pub hvp_truncation_slope: f64,
    /// $\max |u^\top H v - v^\top H u| / (\|u\|\|Hv\| + \|v\|\|Hu\|)$ over pairs of directions.
    pub hessian_asymmetry: f64,
    /// $\max \|D^3L[u,v] - D^3L[v,u]\| / (\|D^3L[u,v]\| + \|D^3L[v,u]\|)$; zero when both vanish.
    pub third_derivative_asymmetry: f64,
    /// Whether the best gradient and HVP errors are below the tolerance and the Hessian is
    /// symmetric to $10^{-10}$.
    pub pass: bool,
}

fn norm(x: &Array1<f64>) -> f64 {
    x.dot(x).sqrt()
}

fn random_unit(dim: usize, rng: &mut ChaCha8Rng) -> Array1<f64> {
    let v = Array1::from_shape_fn(dim, |_| StandardNormal.sample(rng));
    let n = norm(&v);
    v / n
}

/// Least-squares slope of $\log y$ against $\log x$ over the points with $x \ge$ `min_x` and
/// $y > 0$; NaN with fewer than two points.
pub fn log_log_slope(x: &[f64], y: &[f64], min_x: f64) -> f64 {
    let (x, y): (Vec<f64>, Vec<f64>) = x.iter().zip(y).filter(|(x, _)| **x >= min_x).map(|(a, b)| (*a, *b)).unzip();
    crate::stats::log_log_fit(&x, &y).map_or(f64::NAN, |f| f.slope)
}

/// Sweeps the difference step for the gradient and the HVP of `obj` at `theta`, and checks the
/// symmetry of the Hessian and of the third derivative.
pub fn check_derivatives<O: Objective + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    params: &DerivativeCheckParams,
) -> DerivativeReport {
    let dim = obj.dim();
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let dirs: Vec<Array1<f64>> = (0..params.directions.max(1)).map(|_| random_unit(dim, &mut rng)).collect();
    let g = obj.gradient(theta);
    let g_norm = norm(&g).max(f64::MIN_POSITIVE);
    let hvs: Vec<Array1<f64>> = dirs.iter().map(|v| obj.hvp(theta, v.view())).collect();
    let mut gradient_errors = Vec::with_capacity(params.steps.len());
    let mut hvp_errors = Vec::with_capacity(params.steps.len());
    for &eps in &params.steps {
        let mut ge: f64 = 0.0;
        let mut he: f64 = 0.0;
        for (v, hv) in dirs.iter().zip(&hvs) {
            let fd = directional_derivative_by_difference(obj, theta, v.view(), eps);
            ge = ge.max((fd - g.dot(v)).abs() / g_norm);
            let fd = hvp_by_difference(obj, theta, v.view(), eps);
            he = he.max(norm(&(fd - hv)) / norm(hv).max(f64::MIN_POSITIVE));
        }
        gradient_errors.push(ge);
        hvp_errors.push(he);
    }
    let mut hessian_asymmetry: f64 = 0.0;
    let mut third_derivative_asymmetry: f64 = 0.0;
    for i in 0..dirs.len() {
        for j in 0..i {
            let (u, v) = (&dirs[i], &dirs[j]);
            let (hu, hv) = (&hvs[i], &hvs[j]);
            let denom = (norm(hv) + norm(hu)).max(f64::MIN_POSITIVE);
            hessian_asymmetry = hessian_asymmetry.max((u.dot(hv) - v.dot(hu)).abs() / denom);
            let duv = obj.third_derivative(theta, u.view(), v.view());
            let dvu = obj.third_derivative(theta, v.view(), u.view());
            let denom = norm(&duv) + norm(&dvu);
            if denom > 0.0 {
                third_derivative_asymmetry = third_derivative_asymmetry.max(norm(&(duv - dvu)) / denom);
            }
        }
    }
    let best = |e: &[f64]| e.iter().cloned().fold(f64::INFINITY, f64::min);
    let best_gradient_error = best(&gradient_errors);
    let best_hvp_error = best(&hvp_errors);
    DerivativeReport {
        dim,
        gradient_truncation_slope: log_log_slope(&params.steps, &gradient_errors, 1e-3),
        hvp_truncation_slope: log_log_slope(&params.steps, &hvp_errors, 1e-3),
        pass: best_gradient_error < params.tolerance && best_hvp_error < params.tolerance && hessian_asymmetry < 1e-10,
        steps: params.steps.clone(),
        gradient_errors,
        hvp_errors,
        best_gradient_error,
        best_hvp_error,
        hessian_asymmetry,
        third_derivative_asymmetry,
    }
}

/// [`check_derivatives`] on the default instance of a catalogued model, at its seeded starting
/// point.
///
/// # Errors
/// As [`ModelKind::instance`].
pub fn check_model(kind: ModelKind, seed: u64, params: &DerivativeCheckParams) -> Result<DerivativeReport> {
    let instance = kind.instance(seed)?;
    Ok(check_derivatives(instance.objective(), instance.theta0.view(), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_power_law() {
        let x = geometric_steps(1.0, 1e-4, 9);
        let y: Vec<f64> = x.iter().map(|x| 3.0 * x * x).collect();
        assert!((log_log_slope(&x, &y, 0.0) - 2.0).abs() < 1e-12);
        assert!(log_log_slope(&x, &y, 10.0).is_nan());
    }

    /// A model whose "HVP" is deliberately wrong must fail the check.
    #[test]
    fn wrong_hvp_fails() {
        struct Broken;
        impl Objective for Broken {
            fn dim(&self) -> usize {
                2
            }
            fn loss(&self, t: ArrayView1<f64>) -> f64 {
                t[0].powi(4) + t[0] * t[1]
            }
            fn gradient(&self, t: ArrayView1<f64>) -> Array1<f64> {
                ndarray::array![4.0 * t[0].powi(3) + t[1], t[0]]
            }
            fn hvp(&self, t: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
                // Correct would be [12 t0^2 v0 + v1, v0]; the cross term is dropped.
                ndarray::array![12.0 * t[0] * t[0] * v[0], v[0]]
            }
        }
        let r = check_derivatives(&Broken, ndarray::array![0.5, -1.0].view(), &DerivativeCheckParams::default());
        assert!(r.best_gradient_error < 1e-8);
        assert!(r.best_hvp_error > 1e-2);
        assert!(!r.pass);
    }
}
