//! Thick-restart Lanczos with full reorthogonalisation and locking, and power iteration with
//! deflation.

use ndarray::{Array1, Array2, ArrayView1};
use ndarray_linalg::{Eigh, UPLO};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use super::LinearOperator;
use crate::{Error, Result};

/// Which end of the spectrum to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    /// The largest (algebraic) eigenvalues.
    Largest,
    /// The smallest (algebraic) eigenvalues.
    Smallest,
    /// The eigenvalues of largest magnitude.
    LargestMagnitude,
}

impl Which {
    /// Sort key: smaller comes first.
    fn key(self, x: f64) -> f64 {
        match self {
            Which::Largest => -x,
            Which::Smallest => x,
            Which::LargestMagnitude => -x.abs(),
        }
    }
}

/// Parameters of [`lanczos`].
#[derive(Debug, Clone, Serialize)]
pub struct LanczosParams {
    /// Number of eigenpairs.
    pub k: usize,
    /// Which ones.
    pub which: Which,
    /// Stop when every residual $\|Av - \lambda v\| \le \max(\text{tol}\,|\lambda|, \text{floor}\,\|A\|)$
    /// ($\|A\|$ estimated by the largest Ritz value seen).
    pub tol: f64,
    /// The residual floor relative to $\|A\|$, for eigenvalues at or near zero, where no
    /// relative accuracy exists: $64\varepsilon_{\text{mach}}$ (rounding level) by default; raise
    /// it to the operator's accuracy for inexact operators (about $10^{-8}$ for
    /// [`FiniteDifferenceHessian`](super::FiniteDifferenceHessian)).
    pub floor: f64,
    /// Largest basis before a restart (0: $\max(2k + 20, 30)$); memory is $d \times$ this.
    pub max_basis: usize,
    /// Budget of operator applications.
    pub max_applications: usize,
    /// Seed of the start vectors.
    pub seed: u64,
}

impl Default for LanczosParams {
    fn default() -> Self {
        LanczosParams {
            k: 1,
            which: Which::Largest,
            tol: 1e-10,
            floor: 64.0 * f64::EPSILON,
            max_basis: 0,
            max_applications: 20_000,
            seed: 0,
        }
    }
}

/// Eigenpairs with the evidence for them.
#[derive(Debug, Clone, Serialize)]
pub struct Eigenpairs {
    /// Eigenvalues, in the requested order.
    pub values: Vec<f64>,
    /// Unit eigenvectors as columns ($d \times k$), in the same order.
    #[serde(skip)]
    pub vectors: Array2<f64>,
    /// True residuals $\|Av_i - \lambda_i v_i\|$, recomputed with the operator at the end.
    pub residuals: Vec<f64>,
    /// Lanczos (or power) steps.
    pub iterations: usize,
    /// Thick restarts (Lanczos) or eigenpairs deflated (power iteration).
    pub restarts: usize,
    /// Operator applications, the final residual checks included.
    pub operator_applications: usize,
    /// Whether every residual met the tolerance.
    pub converged: bool,
}

/// Counts applications and rejects non-finite results.
struct Counted<'a> {
    op: &'a dyn LinearOperator,
    applications: usize,
}

impl Counted<'_> {
    fn apply(&mut self, v: &Array1<f64>) -> Result<Array1<f64>> {
        self.applications += 1;
        let w = self.op.apply(v.view());
        if w.iter().all(|x| x.is_finite()) {
            Ok(w)
        } else {
            Err(Error::Diverged { step: self.applications, quantity: "operator application".into() })
        }
    }
}

/// Eigen-decomposition of a small symmetric matrix (LAPACK), handling the 1 x 1 case that
/// ndarray-linalg rejects.
pub(crate) fn symmetric_eigen(t: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    if t.nrows() == 1 {
        return Ok((Array1::from_elem(1, t[[0, 0]]), Array2::from_elem((1, 1), 1.0)));
    }
    Ok(t.eigh(UPLO::Lower)?)
}

fn norm(x: &Array1<f64>) -> f64 {
    x.dot(x).sqrt()
}

/// Removes from `w` its components along `basis` (classical Gram-Schmidt, applied twice for
/// full reorthogonalisation) and returns the removed coefficients.
fn orthogonalise(w: &mut Array1<f64>, basis: &[Array1<f64>]) -> Vec<f64> {
    let mut coefficients = vec![0.0; basis.len()];
    for _ in 0..2 {
        for (c, b) in coefficients.iter_mut().zip(basis) {
            let h = b.dot(w);
            w.scaled_add(-h, b);
            *c += h;
        }
    }
    coefficients
}

fn random_unit(d: usize, rng: &mut ChaCha8Rng, against: &[&[Array1<f64>]]) -> Array1<f64> {
    loop {
        let mut v: Array1<f64> = Array1::from_shape_fn(d, |_| StandardNormal.sample(rng));
        for basis in against {
            orthogonalise(&mut v, basis);
        }
        let n = norm(&v);
        if n > 1e-8 {
            return v / n;
        }
    }
}

/// Extends the orthonormal basis `v` (whose first `j` columns have their products in `t`) to
/// `m` computed columns, with full reorthogonalisation against `v` and `locked`. Returns the
/// remainder $f$ of the last product ($A V_m = V_m T_m + f e_m^\top$).
#[allow(clippy::too_many_arguments)]
fn expand(
    op: &mut Counted,
    v: &mut Vec<Array1<f64>>,
    t: &mut Array2<f64>,
    mut j: usize,
    m: usize,
    locked: &[Array1<f64>],
    rng: &mut ChaCha8Rng,
    scale: f64,
) -> Result<Array1<f64>> {
    let d = v[0].len();
    loop {
        let mut w = op.apply(&v[j])?;
        let size = norm(&w).max(scale);
        orthogonalise(&mut w, locked);
        let h = orthogonalise(&mut w, v);
        for (i, hi) in h.iter().enumerate() {
            t[[i, j]] = *hi;
            t[[j, i]] = *hi;
        }
        j += 1;
        if j == m {
            return Ok(w);
        }
        let beta = norm(&w);
        if v.len() == j {
            // When most of A v lay in the basis, the remainder carries rounding errors that are
            // large relative to itself: orthogonalise the normalised remainder once more, and
            // if little survives, the basis is (numerically) invariant: continue with a fresh
            // random direction. T holds explicit projections, so either way it stays exact.
            let mut q = if beta > 1e-14 * size { w / beta } else { Array1::zeros(d) };
            orthogonalise(&mut q, locked);
            orthogonalise(&mut q, v);
            let nq = norm(&q);
            if nq > 0.5 {
                v.push(q / nq);
            } else {
                let fresh = random_unit(d, rng, &[locked, v]);
                v.push(fresh);
            }
        }
    }
}

/// The `k` wanted eigenpairs of the symmetric `op` by thick-restart Lanczos with full
/// reorthogonalisation. Converged pairs are locked and the search continues in their orthogonal
/// complement from a fresh random vector, so repeated eigenvalues are found with their
/// multiplicity. Every returned residual is recomputed with the operator.
///
/// # Errors
/// [`Error::InvalidParameter`] for `k = 0` or a non-positive tolerance; [`Error::Diverged`] if
/// the operator returns a non-finite vector; [`Error::Linalg`] if LAPACK fails. Running out of
/// `max_applications` is not an error: the result says `converged: false`.
pub fn lanczos(op: &dyn LinearOperator, params: &LanczosParams) -> Result<Eigenpairs> {
    let d = op.dim();
    if params.k == 0 || params.k > d {
        return Err(Error::invalid("k", format!("{} is not in 1..={d}", params.k)));
    }
    if params.tol.is_nan() || params.tol <= 0.0 {
        return Err(Error::invalid("tol", "must be positive"));
    }
    let k = params.k;
    let max_basis = if params.max_basis == 0 { (2 * k + 20).max(30) } else { params.max_basis.max(k + 2) };
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut counted = Counted { op, applications: 0 };
    let mut locked: Vec<Array1<f64>> = Vec::new();
    let mut locked_values: Vec<f64> = Vec::new();
    let mut scale: f64 = 0.0;
    let mut iterations = 0;
    let mut restarts = 0;
    // Relative to |lambda|, with a floor relative to ||A||: the residual of an exact
    // eigenvector of a zero eigenvalue is computed as ~1e-16 ||A||, never 0.
    let threshold = |value: f64, scale: f64| (params.tol * value.abs()).max(params.floor * scale);

    let mut next_start: Option<Array1<f64>> = None;
    'runs: while locked.len() < k && counted.applications < params.max_applications {
        let need = k - locked.len();
        let m = max_basis.min(d - locked.len());
        let start = next_start.take().unwrap_or_else(|| random_unit(d, &mut rng, &[&locked]));
        let mut v = vec![start];
        let mut t = Array2::<f64>::zeros((m, m));
        let mut j = 0;
        loop {
            let before = counted.applications;
            let f = expand(&mut counted, &mut v, &mut t, j, m, &locked, &mut rng, scale)?;
            iterations += counted.applications - before;
            let (theta, y) = symmetric_eigen(&t)?;
            scale = theta.iter().fold(scale, |a, x| a.max(x.abs()));
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&a, &b| params.which.key(theta[a]).total_cmp(&params.which.key(theta[b])));
            let beta = norm(&f);
            // Lock the leading wanted pair once its residual estimate beta |y_m| meets the
            // tolerance: one pair per run, because one Krylov space holds one vector of each
            // eigenspace, so a second copy of a repeated eigenvalue is invisible to it. (When the
            // basis spans the whole complement every Ritz pair is exact and all are locked.)
            let exact = m == d - locked.len();
            let lead = order[0];
            if exact || beta * y[[m - 1, lead]].abs() <= threshold(theta[lead], scale) {
                let ritz = |i: usize| {
                    let mut x = Array1::<f64>::zeros(d);
                    for (c, b) in y.column(i).iter().zip(&v) {
                        x.scaled_add(*c, b);
                    }
                    x
                };
                let take = if exact { need } else { 1 };
                for &i in order.iter().take(take) {
                    let mut x = ritz(i);
                    orthogonalise(&mut x, &locked);
                    let nx = norm(&x);
                    if nx < 0.5 {
                        // Numerically inside the locked span (a non-symmetric operator, e.g. a
                        // finite-difference one, can do this): search again.
                        break;
                    }
                    x /= nx;
                    let r = norm(&(counted.apply(&x)? - &x * theta[i]));
                    if r > threshold(theta[i], scale) {
                        // The estimate was optimistic: search again.
                        break;
                    }
                    locked.push(x);
                    locked_values.push(theta[i]);
                }
                // The next run starts from the remaining wanted Ritz vectors (nearly converged)
                // plus an equal share of a random direction (which reaches eigenspaces this
                // Krylov space could not see).
                if locked.len() >= k {
                    break 'runs;
                }
                let mut start = random_unit(d, &mut rng, &[&locked]);
                let mut guide = Array1::<f64>::zeros(d);
                for &i in order.iter().skip(1).take(need.saturating_sub(1)) {
                    guide += &ritz(i);
                }
                orthogonalise(&mut guide, &locked);
                let g = norm(&guide);
                if g > 1e-8 {
                    let mut combined = &start + &(guide / g);
                    orthogonalise(&mut combined, &locked);
                    let nc = norm(&combined);
                    // (The two can cancel when the complement is tiny.)
                    if nc > 1e-3 {
                        start = combined / nc;
                    }
                }
                next_start = Some(start);
                continue 'runs;
            }
            if counted.applications >= params.max_applications {
                break 'runs;
            }
            // Thick restart: keep the best `keep` Ritz vectors and the remainder direction.
            let keep = (need + (m - need) / 2).min(m - 1).max(1);
            let kept: Vec<usize> = order.iter().take(keep).cloned().collect();
            let mut new_v = Vec::with_capacity(m);
            for &i in &kept {
                let mut x = Array1::<f64>::zeros(d);
                for (c, b) in y.column(i).iter().zip(&v) {
                    x.scaled_add(*c, b);
                }
                new_v.push(x);
            }
            let mut new_t = Array2::<f64>::zeros((m, m));
            for (a, &i) in kept.iter().enumerate() {
                new_t[[a, a]] = theta[i];
                new_t[[a, keep]] = beta * y[[m - 1, i]];
                new_t[[keep, a]] = beta * y[[m - 1, i]];
            }
            let next = if beta > 1e-12 * scale { f / beta } else { random_unit(d, &mut rng, &[&locked, &new_v]) };
            new_v.push(next);
            v = new_v;
            t = new_t;
            j = keep;
            restarts += 1;
        }
    }
    // Order the locked pairs as requested, recompute every residual.
    let mut idx: Vec<usize> = (0..locked.len()).collect();
    idx.sort_by(|&a, &b| params.which.key(locked_values[a]).total_cmp(&params.which.key(locked_values[b])));
    let mut vectors = Array2::<f64>::zeros((d, idx.len()));
    let mut values = Vec::new();
    let mut residuals = Vec::new();
    for (col, &i) in idx.iter().enumerate() {
        let x = &locked[i];
        let r = norm(&(counted.apply(x)? - x * locked_values[i]));
        vectors.column_mut(col).assign(x);
        values.push(locked_values[i]);
        residuals.push(r);
    }
    let converged = values.len() == k && values.iter().zip(&residuals).all(|(l, r)| *r <= threshold(*l, scale));
    Ok(Eigenpairs {
        values,
        vectors,
        residuals,
        iterations,
        restarts,
        operator_applications: counted.applications,
        converged,
    })
}

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
}

impl Default for PowerParams {
    fn default() -> Self {
        PowerParams { k: 1, tol: 1e-3, max_iterations: 100, seed: 0 }
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
    let mut found: Vec<Array1<f64>> = Vec::new();
    let mut values = Vec::new();
    let mut iterations = 0;
    let mut all_converged = true;
    for _ in 0..params.k {
        let mut v = random_unit(d, &mut rng, &[&found]);
        let mut lambda = 0.0;
        let mut converged = false;
        for it in 0..params.max_iterations {
            orthogonalise(&mut v, &found);
            v /= norm(&v);
            let w = counted.apply(&v)?;
            iterations += 1;
            let new = v.dot(&w);
            let n = norm(&w);
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
        orthogonalise(&mut v, &found);
        v /= norm(&v);
        found.push(v);
        values.push(lambda);
    }
    let mut vectors = Array2::<f64>::zeros((d, found.len()));
    let mut residuals = Vec::new();
    for (col, (x, l)) in found.iter().zip(&values).enumerate() {
        residuals.push(norm(&(counted.apply(x)? - x * *l)));
        vectors.column_mut(col).assign(x);
    }
    Ok(Eigenpairs {
        values,
        vectors,
        residuals,
        iterations,
        restarts: params.k,
        operator_applications: counted.applications,
        converged: all_converged,
    })
}

/// The Lanczos tridiagonalisation from the unit vector `start` for `steps` steps (full
/// reorthogonalisation): the Rayleigh-quotient matrix $T = V^\top A V$. Its eigenvalues and
/// the squared first components of its eigenvectors are the nodes and weights of the Gauss
/// quadrature of $v^\top f(A) v$ (stochastic Lanczos quadrature).
///
/// # Errors
/// As [`lanczos`].
pub fn rayleigh_matrix(
    op: &dyn LinearOperator,
    start: ArrayView1<f64>,
    steps: usize,
    seed: u64,
) -> Result<(Array2<f64>, usize)> {
    let m = steps.min(op.dim()).max(1);
    let mut counted = Counted { op, applications: 0 };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![start.to_owned() / norm(&start.to_owned())];
    let mut t = Array2::<f64>::zeros((m, m));
    expand(&mut counted, &mut v, &mut t, 0, m, &[], &mut rng, 0.0)?;
    Ok((t, counted.applications))
}
