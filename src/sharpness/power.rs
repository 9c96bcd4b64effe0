//! Power iteration with deflation (PyHessian's `eigenvalues`), the baseline Lanczos is measured
//! against.

use ndarray::{Array1, Array2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::LinearOperator;
use super::basis::{Counted, Rows, norm, orthogonalise, random_unit};
use super::intervals::{EigenvalueInterval, eigenvalue_intervals};
use super::lanczos::{Eigenpairs, Which};
use crate::{Error, Result};

/// Parameters of [`power_iteration`], defaults as in PyHessian.
#[derive(Debug, Clone, Serialize)]
pub struct PowerParams {
    /// Number of eigenpairs.
    pub k: usize,
    /// Stop when the eigenvalue estimate changes by less than `tol` relative
    /// ($|\lambda_t - \lambda_{t-1}| / (|\lambda_{t-1}| + 10^{-6})$).
    pub tol: f64,
    /// Iterations per eigenpair at most.
    pub max_iterations: usize,
    /// Seed.
    pub seed: u64,
    /// A bound on the operator's error, as [`LanczosParams::operator_error`].
    pub operator_error: f64,
}

impl Default for PowerParams {
    fn default() -> Self {
        PowerParams { k: 1, tol: 1e-3, max_iterations: 100, seed: 0, operator_error: 0.0 }
    }
}

/// The `k` eigenvalues of largest magnitude by power iteration, deflating each found vector by
/// orthogonalising the iterate against it (PyHessian's `eigenvalues`). `converged` means each
/// pair met the change criterion, not a residual bound; the residuals are reported.
///
/// # Errors
/// [`Error::InvalidParameter`] for `k` out of range; [`Error::Diverged`] for non-finite output.
pub fn power_iteration(op: &dyn LinearOperator, params: &PowerParams) -> Result<Eigenpairs> {
    let d = op.dim();
    if params.k == 0 || params.k > d {
        return Err(Error::invalid("k", format!("{} is not in 1..={d}", params.k)));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut counted = Counted { op, applications: 0 };
    // The pairs found so far: vectors (rows) and values.
    let mut found = Rows::with_capacity(params.k, d);
    let mut values = Vec::new();
    let mut iterations = 0;
    let mut all_converged = true;
    for _ in 0..params.k {
        let mut v = Array1::<f64>::zeros(d);
        random_unit(v.view_mut(), &mut rng, &[found.view()]);
        let mut lambda = 0.0;
        let mut converged = false;
        for it in 0..params.max_iterations {
            orthogonalise(v.view_mut(), &[found.view()]);
            v /= norm(v.view());
            let w = counted.apply(v.view())?;
            iterations += 1;
            let new = v.dot(&w);
            let n = norm(w.view());
            if it > 0 && (new - lambda).abs() / (lambda.abs() + 1e-6) < params.tol {
                lambda = new;
                converged = true;
                break;
            }
            lambda = new;
            if n == 0.0 {
                converged = true;
                break;
            }
            v = w / n;
        }
        all_converged &= converged;
        orthogonalise(v.view_mut(), &[found.view()]);
        v /= norm(v.view());
        found.push_copy(v.view());
        values.push(lambda);
    }
    let mut vectors = Array2::<f64>::zeros((d, found.len()));
    let mut residuals = Vec::new();
    for (col, l) in values.iter().enumerate() {
        let x = found.row(col);
        residuals.push(norm((counted.apply(x)? - &x * *l).view()));
        vectors.column_mut(col).assign(&x);
    }
    // The residual bound holds for any value; Kato-Temple needs the Rayleigh quotient of the
    // returned vector, which the last power step's value is not: no Kato-Temple here.
    let intervals = eigenvalue_intervals(&values, &residuals, params.operator_error, Which::LargestMagnitude)
        .into_iter()
        .map(|i| EigenvalueInterval { kato_temple: None, gap: None, ..i })
        .collect();
    Ok(Eigenpairs {
        values,
        vectors,
        residuals,
        iterations,
        restarts: params.k,
        operator_applications: counted.applications,
        converged: all_converged,
        intervals,
    })
}
