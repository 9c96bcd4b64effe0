//! Enclosures of eigenvalues from Ritz pairs: what a computed $(\theta, x)$ proves.
//!
//! For a symmetric $A$, a unit vector $x$ with Rayleigh quotient $\theta = x^\top A x$ and
//! residual $r = Ax - \theta x$, some eigenvalue $\lambda$ of $A$ satisfies
//! $|\lambda - \theta| \le \|r\|$ (Krylov-Weinstein). When the operator actually applied is
//! $\tilde A = A + E$ with $\|E\| \le \eta$ (a finite-difference Hessian, say), the residual
//! computed from $\tilde A$ is off by at most $\eta$, so with $\varepsilon = \|\tilde r\| + \eta$:
//! $$|\lambda - \theta| \le \varepsilon \quad \text{for some eigenvalue } \lambda \text{ of } A.$$
//! This is the certified interval [`EigenvalueInterval::lower`]..[`EigenvalueInterval::upper`].
//!
//! Kato-Temple tightens it when $\lambda$ is the only eigenvalue in an interval $(\alpha, \beta)$
//! around $\theta$: $\theta - \varepsilon^2/(\beta - \theta) \le \lambda \le \theta +
//! \varepsilon^2/(\theta - \alpha)$. The gap is not known; it is estimated from the other computed
//! pairs ($\alpha$: the highest upper end of the enclosures below $\theta$, $\beta$: the lowest
//! lower end above), and on the outer side of the extreme pair of [`Which::Largest`] or
//! [`Which::Smallest`] from the solver's premise that it found the extreme eigenvalue (no
//! eigenvalue beyond it). Where a side has no such estimate, or the estimated gap does not
//! exceed $\varepsilon$, there is no Kato-Temple interval. The Kato-Temple interval is therefore
//! conditional on the gap estimate; the Krylov-Weinstein one is not.

use serde::{Deserialize, Serialize};

use super::lanczos::Which;

/// Enclosures of the eigenvalue near one Ritz value $\theta$ (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EigenvalueInterval {
    /// $\theta - \varepsilon$ with $\varepsilon = \|r\| + \eta$: an eigenvalue of the exact
    /// operator lies in [`lower`](Self::lower)..[`upper`](Self::upper).
    pub lower: f64,
    /// $\theta + \varepsilon$.
    pub upper: f64,
    /// The operator error $\eta$ included in the bound.
    pub operator_error: f64,
    /// Kato-Temple's interval given the gap estimate, when it exists.
    pub kato_temple: Option<(f64, f64)>,
    /// The gap estimate $(\alpha, \beta)$ it used ($\pm\infty$ on the outer side of an extreme
    /// pair).
    pub gap: Option<(f64, f64)>,
}

/// The enclosures of the computed eigenvalues `values` with residuals `residuals` (norms of
/// $\tilde A x - \theta x$ for unit $x$), for an operator within `operator_error` of the exact
/// one; `which` says which end of the spectrum the values were sought at.
///
/// # Panics
/// If the slices differ in length or `operator_error` is negative or NaN.
pub fn eigenvalue_intervals(
    values: &[f64],
    residuals: &[f64],
    operator_error: f64,
    which: Which,
) -> Vec<EigenvalueInterval> {
    assert_eq!(values.len(), residuals.len(), "one residual per value");
    assert!(operator_error >= 0.0, "operator error must be non-negative, got {operator_error}");
    let eps: Vec<f64> = residuals.iter().map(|r| r + operator_error).collect();
    let top = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let bottom = values.iter().copied().fold(f64::INFINITY, f64::min);
    values
        .iter()
        .zip(&eps)
        .enumerate()
        .map(|(i, (&theta, &e))| {
            let others = || values.iter().zip(&eps).enumerate().filter(move |(j, _)| *j != i).map(|(_, p)| p);
            // Enclosures of the other pairs below and above theta (a pair with the same value
            // counts on both sides: no gap).
            let below = others()
                .filter(|(v, _)| **v <= theta)
                .map(|(v, e)| v + e)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            let above = others()
                .filter(|(v, _)| **v >= theta)
                .map(|(v, e)| v - e)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
            let alpha = below.or((which == Which::Smallest && theta == bottom).then_some(f64::NEG_INFINITY));
            let beta = above.or((which == Which::Largest && theta == top).then_some(f64::INFINITY));
            let gap = alpha.zip(beta);
            let kato_temple = gap.and_then(|(a, b)| {
                (theta - a > e && b - theta > e).then(|| (theta - e * e / (b - theta), theta + e * e / (theta - a)))
            });
            EigenvalueInterval {
                lower: theta - e,
                upper: theta + e,
                operator_error,
                kato_temple,
                gap: kato_temple.and(gap),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharpness::{DenseOperator, LanczosParams, lanczos};
    use ndarray::{Array1, Array2};

    /// A symmetric matrix with eigenvalues `spectrum` (a rotation of the diagonal).
    fn matrix(spectrum: &[f64], seed: u64) -> Array2<f64> {
        let q = crate::models::random_orthogonal(spectrum.len(), seed).expect("valid size");
        let d = Array2::from_diag(&Array1::from(spectrum.to_vec()));
        q.dot(&d).dot(&q.t())
    }

    #[test]
    fn intervals_contain_the_eigenvalues_and_kato_temple_is_tighter() {
        let spectrum: Vec<f64> = (0..40).map(|i| if i < 3 { 10.0 - i as f64 } else { 0.1 * i as f64 - 2.0 }).collect();
        let a = matrix(&spectrum, 3);
        // A loose tolerance leaves residuals large enough to see the bounds work.
        let e = lanczos(&DenseOperator(a), &LanczosParams { k: 3, tol: 1e-4, seed: 1, ..LanczosParams::default() })
            .expect("converges");
        let iv = eigenvalue_intervals(&e.values, &e.residuals, 0.0, Which::Largest);
        for (i, (iv, exact)) in iv.iter().zip([10.0, 9.0, 8.0]).enumerate() {
            assert!(iv.lower <= exact && exact <= iv.upper, "pair {i}: {exact} not in {iv:?}");
            if let Some((lo, hi)) = iv.kato_temple {
                assert!(lo <= exact && exact <= hi, "pair {i}: {exact} not in Kato-Temple {iv:?}");
                assert!(hi - lo <= iv.upper - iv.lower, "pair {i}: Kato-Temple wider than the residual bound");
            }
        }
        // The top pair has the solver's premise above it and the second pair below: Kato-Temple
        // exists; the third has nothing computed below it: none.
        assert!(iv[0].kato_temple.is_some());
        assert_eq!(iv[0].gap.map(|g| g.1), Some(f64::INFINITY));
        assert!(iv[2].kato_temple.is_none());
    }

    #[test]
    fn operator_error_widens_the_interval_to_cover_the_exact_operator() {
        let spectrum = [5.0, 2.0, 1.0, 0.5, -1.0, 0.0, 0.25, 3.0];
        let a = matrix(&spectrum, 7);
        // The solver sees A + E with ||E|| = eta (a symmetric perturbation of known norm).
        let eta = 1e-3;
        let e_mat = matrix(&[eta, -eta, 0.0, 0.0, 0.0, 0.0, 0.0, eta / 2.0], 8);
        let e = lanczos(
            &DenseOperator(&a + &e_mat),
            &LanczosParams { k: 1, tol: 1e-12, seed: 2, ..LanczosParams::default() },
        )
        .expect("converges");
        // Without the operator error the interval is about the perturbed matrix and misses 5.
        let without = eigenvalue_intervals(&e.values, &e.residuals, 0.0, Which::Largest)[0];
        assert!(!(without.lower <= 5.0 && 5.0 <= without.upper), "{without:?}");
        let with = eigenvalue_intervals(&e.values, &e.residuals, eta, Which::Largest)[0];
        assert!(with.lower <= 5.0 && 5.0 <= with.upper, "{with:?}");
    }

    #[test]
    fn clustered_values_get_no_kato_temple() {
        let iv = eigenvalue_intervals(&[1.0, 1.0 + 1e-9], &[1e-6, 1e-6], 0.0, Which::Largest);
        assert!(iv.iter().all(|i| i.kato_temple.is_none()));
        assert!(iv.iter().all(|i| (i.upper - i.lower - 2e-6).abs() < 1e-15));
    }
}
