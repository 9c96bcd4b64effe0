//! Thick-restart Lanczos with full reorthogonalisation and locking.

use ndarray::linalg::{general_mat_mul, general_mat_vec_mul};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, s};
use ndarray_linalg::{Eigh, UPLO};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::LinearOperator;
use super::basis::{Counted, Rows, norm, orthogonalise, random_unit};
use super::intervals::{EigenvalueInterval, eigenvalue_intervals};
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

impl crate::Choice for Which {
    const WHAT: &'static str = "which";
    const ALL: &'static [Self] = &[Which::Largest, Which::Smallest, Which::LargestMagnitude];

    fn name(self) -> &'static str {
        match self {
            Which::Largest => "largest",
            Which::Smallest => "smallest",
            Which::LargestMagnitude => "largest-magnitude",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Which::Largest => "The largest (algebraic) eigenvalues",
            Which::Smallest => "The smallest (algebraic) eigenvalues",
            Which::LargestMagnitude => "The eigenvalues of largest magnitude",
        }
    }
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
    /// Largest basis before a restart (0: $\max(2k + 20, 30)$); memory is $2d \times$ this (the
    /// basis, and the storage a thick restart builds the next one in).
    pub max_basis: usize,
    /// Budget of operator applications.
    pub max_applications: usize,
    /// Seed of the start vectors.
    pub seed: u64,
    /// Whether to prove the multiplicities: when pairs were locked from one Krylov space, run
    /// once more in the complement of the answer to find missed copies of repeated eigenvalues
    /// (see [`lanczos`]); costs about one more eigenpair. ARPACK (scipy's `eigsh`) does not.
    pub verify_multiplicity: bool,
    /// Start vector of the first run (a warm start, e.g. the previous eigenvector when tracking
    /// $\lambda_{\max}$ during training); a random one when `None`.
    #[serde(skip)]
    pub start: Option<Array1<f64>>,
    /// When the budget runs out with fewer than `k` pairs locked, also return the best Ritz
    /// pairs of the last Krylov space (after the final Rayleigh-Ritz step with the locked ones),
    /// each with its true residual, and `converged: false`; this costs one more application per
    /// pair. Off by default: then only pairs that met the tolerance are returned.
    #[serde(skip)]
    pub keep_unconverged: bool,
    /// A bound $\eta \ge 0$ on $\|\tilde A - A\|$, the error of the operator applied (e.g. a
    /// finite-difference Hessian) against the exact one; added to every eigenvalue interval
    /// ([`Eigenpairs::intervals`]). 0 for an exact operator.
    pub operator_error: f64,
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
            verify_multiplicity: true,
            start: None,
            keep_unconverged: false,
            operator_error: 0.0,
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
    /// True residuals $\|Av_i - \lambda_i v_i\|$, from operator outputs (not estimates).
    pub residuals: Vec<f64>,
    /// Lanczos (or power) steps.
    pub iterations: usize,
    /// Thick restarts (Lanczos) or eigenpairs deflated (power iteration).
    pub restarts: usize,
    /// Operator applications, the final residual checks included.
    pub operator_applications: usize,
    /// Whether every residual met the tolerance.
    pub converged: bool,
    /// For each value, the enclosures of an eigenvalue of the exact operator near it: the
    /// residual bound (certified) and, where the gap estimate allows, Kato-Temple's
    /// ([`eigenvalue_intervals`](super::intervals::eigenvalue_intervals)).
    pub intervals: Vec<EigenvalueInterval>,
}

/// Pairs are locked at this fraction of their tolerance: the final Rayleigh-Ritz step mixes the
/// vectors of (nearly) equal eigenvalues, whose residuals then add in quadrature (up to four
/// copies stay within the tolerance).
const LOCK: f64 = 0.5;

/// Eigen-decomposition of a small symmetric matrix (LAPACK), handling the 1 x 1 case that
/// ndarray-linalg rejects.
pub(crate) fn symmetric_eigen(t: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    if t.nrows() == 1 {
        return Ok((Array1::from_elem(1, t[[0, 0]]), Array2::from_elem((1, 1), 1.0)));
    }
    Ok(t.eigh(UPLO::Lower)?)
}

/// One Lanczos step with full reorthogonalisation: applies the operator to row `j` of `v`,
/// stores the explicit projections $\langle v_i, A v_j\rangle$ in row and column `j` of `t`, and
/// returns the remainder $f_j$ (orthogonal to `v` and `locked`), so that
/// $A V_{j+1} = V_{j+1} T_{j+1} + f_j e_{j+1}^\top$. When `push` is set and the basis has no
/// row `j + 1` yet, the normalised remainder becomes it.
#[allow(clippy::too_many_arguments)]
fn lanczos_step(
    op: &mut Counted,
    v: &mut Rows,
    t: &mut Array2<f64>,
    j: usize,
    push: bool,
    locked: ArrayView2<f64>,
    rng: &mut ChaCha8Rng,
    scale: f64,
) -> Result<Array1<f64>> {
    let mut w = op.apply(v.row(j))?;
    let size = norm(w.view()).max(scale);
    let h = orthogonalise(w.view_mut(), &[locked, v.view()]);
    for (i, hi) in h.iter().enumerate() {
        t[[i, j]] = *hi;
        t[[j, i]] = *hi;
    }
    if push && v.len() == j + 1 {
        // When most of A v lay in the basis, the remainder carries rounding errors that are
        // large relative to itself: orthogonalise the normalised remainder once more, and if
        // little survives, the basis is (numerically) invariant: continue with a fresh random
        // direction. T holds explicit projections, so either way it stays exact.
        let beta = norm(w.view());
        let (basis, mut q) = v.push();
        if beta > 1e-14 * size {
            q.assign(&w);
            q /= beta;
        } else {
            q.fill(0.0);
        }
        orthogonalise(q.view_mut(), &[locked, basis.view()]);
        let nq = norm(q.view());
        if nq > 0.5 {
            q /= nq;
        } else {
            random_unit(q, rng, &[locked, basis.view()]);
        }
    }
    Ok(w)
}

/// The Ritz vector $x = V_n^\top y = \sum_i y_i v_i$ over the first $n$ = `y.len()` rows of `v`,
/// as one matrix-vector product, written into `x`.
fn combine(y: ArrayView1<f64>, v: &Rows, mut x: ArrayViewMut1<f64>) {
    general_mat_vec_mul(1.0, &v.first(y.len()).t(), &y, 0.0, &mut x);
}

/// The `k` wanted eigenpairs of the symmetric `op` by thick-restart Lanczos with full
/// reorthogonalisation and locking.
///
/// Convergence is tested after every step on the Ritz residual estimate
/// $\beta\,|e_j^\top y|$; a pair is locked only after its residual, computed with the operator
/// (in the complement of the pairs locked before), meets half the tolerance. After a lock the
/// search goes on in the same Krylov space deflated by the locked vectors (a thick restart that
/// keeps the other Ritz vectors). At the end a Rayleigh-Ritz step on the locked vectors, with the
/// products $Ax$ stored at locking, removes their couplings; the returned residuals
/// $\|Ax - \lambda x\|$ are computed from those operator outputs. A single Krylov space holds one vector of each eigenspace, so
/// when one run has locked several pairs, the run that would complete the answer is followed by a
/// verification run in the complement of all locked vectors: if it finds a better eigenvalue
/// (a missed copy of a repeated one), that pair replaces the worst locked one, and the check
/// repeats. Repeated eigenvalues are thus found with their multiplicity.
///
/// # Errors
/// [`Error::InvalidParameter`] for `k` out of range, a non-positive tolerance or a start vector
/// of the wrong length or zero; [`Error::Diverged`] if the operator returns a non-finite vector;
/// [`Error::Linalg`] if LAPACK fails. Running out of `max_applications` is not an error: the
/// result says `converged: false`.
///
/// The Krylov basis $V$, the locked vectors $Q$ and their products $AQ$ are each stored as the
/// rows of one row-major matrix, so that the reorthogonalisation of a new vector is four
/// matrix-vector products per pass ($h = Vw$, $w \leftarrow w - V^\top h$ against $Q$ and $V$),
/// a Ritz vector $V^\top y$ is one, and a thick restart (the kept Ritz vectors $Y^\top V$) is one
/// matrix product.
pub fn lanczos(op: &dyn LinearOperator, params: &LanczosParams) -> Result<Eigenpairs> {
    let d = op.dim();
    if params.k == 0 || params.k > d {
        return Err(Error::invalid("k", format!("{} is not in 1..={d}", params.k)));
    }
    if params.tol.is_nan() || params.tol <= 0.0 {
        return Err(Error::invalid("tol", "must be positive"));
    }
    if let Some(s) = &params.start
        && (s.len() != d || !(norm(s.view()).is_finite() && norm(s.view()) > 0.0))
    {
        return Err(Error::invalid(
            "start",
            format!("needs a finite non-zero vector of length {d}, got length {}", s.len()),
        ));
    }
    let k = params.k;
    let max_basis = if params.max_basis == 0 { (2 * k + 20).max(30) } else { params.max_basis.max(k + 2) };
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut counted = Counted { op, applications: 0 };
    // Locked pairs: vectors x (rows), values, and the products A x (rows). A verification run
    // may hold k + 1 for a moment.
    let mut locked = Rows::with_capacity(k + 1, d);
    let mut locked_values: Vec<f64> = Vec::new();
    let mut locked_products = Rows::with_capacity(k + 1, d);
    // The Krylov basis (rows), and the storage the next one is built in at a thick restart.
    let mut v = Rows::with_capacity(max_basis.min(d), d);
    let mut spare = Rows::with_capacity(max_basis.min(d), d);
    // Reused buffers: a Ritz vector and its residual.
    let mut x = Array1::<f64>::zeros(d);
    let mut r_vec = Array1::<f64>::zeros(d);
    let mut scale: f64 = 0.0;
    let mut iterations = 0;
    let mut restarts = 0;
    // Relative to |lambda|, with a floor relative to ||A||: the residual of an exact
    // eigenvector of a zero eigenvalue is computed as ~1e-16 ||A||, never 0.
    let threshold = |value: f64, scale: f64| (params.tol * value.abs()).max(params.floor * scale);
    let key = |x: f64| params.which.key(x);
    // Whether a Krylov space went on after a lock (then the answer needs a verification run).
    let mut several_per_run = false;
    let mut verifying = false;
    // The best unlocked Ritz vectors of the Krylov space the budget ended in (keep_unconverged).
    let mut unconverged = Rows::with_capacity(0, d);

    let mut next_start: Option<Array1<f64>> = params.start.as_ref().map(|s| s / norm(s.view()));
    'runs: while counted.applications < params.max_applications {
        if locked.len() >= k {
            if !several_per_run || !params.verify_multiplicity || locked.len() == d {
                break;
            }
            verifying = true;
        }
        let need = if verifying { 1 } else { k - locked.len() };
        let mut m = max_basis.min(d - locked.len());
        v.clear();
        let (_, mut start) = v.push();
        match next_start.take() {
            Some(s) => {
                start.assign(&s);
                orthogonalise(start.view_mut(), &[locked.view()]);
                let n = norm(start.view());
                if n > 1e-8 {
                    start /= n;
                } else {
                    random_unit(start, &mut rng, &[locked.view()]);
                }
            }
            None => random_unit(start, &mut rng, &[locked.view()]),
        }
        let mut t = Array2::<f64>::zeros((m, m));
        let mut j = 0;
        loop {
            let f = lanczos_step(&mut counted, &mut v, &mut t, j, j + 1 < m, locked.view(), &mut rng, scale)?;
            iterations += 1;
            j += 1;
            let (theta, y) = symmetric_eigen(&t.slice(s![..j, ..j]).to_owned())?;
            scale = theta.iter().fold(scale, |a, x| a.max(x.abs()));
            let mut order: Vec<usize> = (0..j).collect();
            order.sort_by(|&a, &b| key(theta[a]).total_cmp(&key(theta[b])));
            let beta = norm(f.view());
            // When the basis spans the whole complement every Ritz pair is exact.
            let exact = j == d - locked.len();
            let estimate_met = |i: usize| exact || beta * y[[j - 1, i]].abs() <= LOCK * threshold(theta[i], scale);
            let mut newly = 0;
            if estimate_met(order[0]) {
                for &i in order.iter().take(if exact { need } else { need.min(j) }) {
                    if !estimate_met(i) {
                        break;
                    }
                    combine(y.column(i), &v, x.view_mut());
                    orthogonalise(x.view_mut(), &[locked.view()]);
                    let nx = norm(x.view());
                    if nx < 0.5 {
                        // Numerically inside the locked span (a non-symmetric operator, e.g. a
                        // finite-difference one, can do this): search again.
                        break;
                    }
                    x /= nx;
                    // The residual in the complement of the locked vectors: its coupling to them
                    // (as large as their own residuals) is removed by the final Rayleigh-Ritz.
                    let ax = counted.apply(x.view())?;
                    r_vec.assign(&ax);
                    r_vec.scaled_add(-theta[i], &x);
                    orthogonalise(r_vec.view_mut(), &[locked.view()]);
                    let r = norm(r_vec.view());
                    if r > LOCK * threshold(theta[i], scale) {
                        // The estimate was optimistic: search again.
                        break;
                    }
                    if verifying {
                        // The complement's best pair: does it beat the worst locked one?
                        let worst = (0..locked.len())
                            .max_by(|&a, &b| key(locked_values[a]).total_cmp(&key(locked_values[b])))
                            .unwrap_or(0);
                        let margin = threshold(theta[i], scale) + threshold(locked_values[worst], scale);
                        if key(theta[i]) < key(locked_values[worst]) - margin {
                            // A missed copy: take it and drop the worst locked pair (which
                            // returns to the search space); check again.
                            locked.push_copy(x.view());
                            locked_values.push(theta[i]);
                            locked_products.push_copy(ax.view());
                            locked.swap_remove(worst);
                            locked_values.swap_remove(worst);
                            locked_products.swap_remove(worst);
                            verifying = false;
                            continue 'runs;
                        }
                        verifying = false;
                        break 'runs;
                    }
                    locked.push_copy(x.view());
                    locked_values.push(theta[i]);
                    locked_products.push_copy(ax.view());
                    newly += 1;
                }
                several_per_run |= newly > 1;
                if newly > 0 && locked.len() >= k {
                    continue 'runs;
                }
            }
            if newly == 0 {
                if counted.applications >= params.max_applications {
                    if params.keep_unconverged && !verifying {
                        for &i in order.iter().take(need.min(j)) {
                            combine(y.column(i), &v, x.view_mut());
                            orthogonalise(x.view_mut(), &[locked.view(), unconverged.view()]);
                            let nx = norm(x.view());
                            if nx > 0.5 {
                                x /= nx;
                                unconverged.push_copy(x.view());
                            }
                        }
                    }
                    break 'runs;
                }
                if j < m {
                    continue;
                }
            } else {
                // The search goes on in this Krylov space, deflated: a missed copy of a repeated
                // eigenvalue is left to the verification run.
                several_per_run = true;
            }
            // Thick restart, also right after a lock: keep the best Ritz vectors (the locked
            // ones excepted) and the remainder direction. The kept vectors satisfy
            // A x_i = theta_i x_i + (beta y_{j,i}) f/beta exactly, so T becomes an arrowhead.
            let m_next = max_basis.min(d - locked.len());
            let need = if verifying { 1 } else { k - locked.len() };
            let keep = if newly > 0 { (j - newly).min(m_next - 1) } else { (need + (m - need) / 2).min(m - 1).max(1) };
            let kept: Vec<usize> = order.iter().skip(newly).take(keep).cloned().collect();
            // The kept Ritz vectors Y_kept^T V_j, one matrix product, into the spare storage.
            let mut kept_rows = spare.reset(keep);
            if keep > 0 {
                let y_kept = Array2::from_shape_fn((j, keep), |(r, c)| y[[r, kept[c]]]);
                general_mat_mul(1.0, &y_kept.t(), &v.first(j), 0.0, &mut kept_rows);
            }
            m = m_next;
            let mut new_t = Array2::<f64>::zeros((m, m));
            for (a, &i) in kept.iter().enumerate() {
                new_t[[a, a]] = theta[i];
                new_t[[a, keep]] = beta * y[[j - 1, i]];
                new_t[[keep, a]] = beta * y[[j - 1, i]];
            }
            let (kept_rows, mut next) = spare.push();
            if beta > 1e-12 * scale {
                next.assign(&f);
                next /= beta;
            } else {
                random_unit(next, &mut rng, &[locked.view(), kept_rows.view()]);
            }
            std::mem::swap(&mut v, &mut spare);
            t = new_t;
            j = keep;
            restarts += 1;
        }
    }
    // Final Rayleigh-Ritz on the span of the locked vectors Q (rows), with the stored products
    // A Q: removes the couplings between locked pairs. Only the unconverged vectors kept on
    // request cost one more application each. Each residual below is ||A q - lambda q|| from
    // operator outputs.
    for u in 0..unconverged.len() {
        let row = unconverged.row(u);
        let ax = counted.apply(row)?;
        locked.push_copy(row);
        locked_products.push_copy(ax.view());
    }
    let p = locked.len();
    let (values_all, vectors_all, residuals_all) = if p == 0 {
        (Array1::zeros(0), Array2::zeros((d, 0)), Vec::new())
    } else {
        let (q, aq) = (locked.view(), locked_products.view());
        let g = q.dot(&aq.t());
        let (theta, y) = symmetric_eigen(&((&g + &g.t()) * 0.5))?;
        let vectors = q.t().dot(&y);
        let products = aq.t().dot(&y);
        let residuals = (0..p).map(|i| norm((&products.column(i) - &(&vectors.column(i) * theta[i])).view())).collect();
        (theta, vectors, residuals)
    };
    // Ordered as requested (a verification run may have left more than k).
    let mut idx: Vec<usize> = (0..p).collect();
    idx.sort_by(|&a, &b| key(values_all[a]).total_cmp(&key(values_all[b])));
    idx.truncate(k);
    let mut vectors = Array2::<f64>::zeros((d, idx.len()));
    for (col, &i) in idx.iter().enumerate() {
        vectors.column_mut(col).assign(&vectors_all.column(i));
    }
    let values: Vec<f64> = idx.iter().map(|&i| values_all[i]).collect();
    let residuals: Vec<f64> = idx.iter().map(|&i| residuals_all[i]).collect();
    let converged =
        values.len() == k && !verifying && values.iter().zip(&residuals).all(|(l, r)| *r <= threshold(*l, scale));
    let intervals = eigenvalue_intervals(&values, &residuals, params.operator_error, params.which);
    Ok(Eigenpairs {
        values,
        vectors,
        residuals,
        iterations,
        restarts,
        operator_applications: counted.applications,
        converged,
        intervals,
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
    let d = op.dim();
    let m = steps.min(d).max(1);
    let mut counted = Counted { op, applications: 0 };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = Rows::with_capacity(m, d);
    let (_, mut first) = v.push();
    first.assign(&start);
    first /= norm(start);
    let no_locked = Array2::<f64>::zeros((0, d));
    let mut t = Array2::<f64>::zeros((m, m));
    for j in 0..m {
        lanczos_step(&mut counted, &mut v, &mut t, j, j + 1 < m, no_locked.view(), &mut rng, 0.0)?;
    }
    Ok((t, counted.applications))
}
