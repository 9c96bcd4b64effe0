//! The quadratic $L(\theta) = \tfrac12 \theta^\top A \theta + b^\top \theta$ with any symmetric
//! $A$ (indefinite allowed).

use ndarray::{Array1, Array2, ArrayView1};
use ndarray_linalg::QR;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::objective::Objective;
use crate::{Error, Result};

/// $L(\theta) = \tfrac12 \theta^\top A \theta + b^\top \theta$.
///
/// Gradient $A\theta + b$, Hessian $A$, third derivative zero: every derivative is exact, and
/// gradient descent on it has the closed form $\theta_n = (I - hA)^n(\theta_0 + A^{-1}b) - A^{-1}b$.
#[derive(Debug, Clone)]
pub struct Quadratic {
    a: Array2<f64>,
    b: Array1<f64>,
}

impl Quadratic {
    /// A quadratic with Hessian `a` and linear term `b`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `a` is not square, not symmetric (to $10^{-12}$ relative),
    /// not finite, or `b` has the wrong length.
    pub fn new(a: Array2<f64>, b: Array1<f64>) -> Result<Self> {
        let (r, c) = a.dim();
        if r != c {
            return Err(Error::invalid("a", format!("matrix is {r}x{c}, not square")));
        }
        if b.len() != r {
            return Err(Error::invalid("b", format!("length {} does not match the {r}x{r} matrix", b.len())));
        }
        if a.iter().chain(b.iter()).any(|x| !x.is_finite()) {
            return Err(Error::invalid("a", "entries must be finite"));
        }
        let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(f64::MIN_POSITIVE);
        for i in 0..r {
            for j in 0..i {
                if (a[[i, j]] - a[[j, i]]).abs() > 1e-12 * scale {
                    return Err(Error::invalid(
                        "a",
                        format!("not symmetric: a[{i},{j}] = {} but a[{j},{i}] = {}", a[[i, j]], a[[j, i]]),
                    ));
                }
            }
        }
        Ok(Quadratic { a, b })
    }

    /// $A = Q\,\mathrm{diag}(\lambda)\,Q^\top$ with $Q$ a random orthogonal matrix (QR of a
    /// Gaussian matrix, seeded) and $b$ standard normal times `b_scale`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for an empty or non-finite spectrum; [`Error::Linalg`] if QR
    /// fails.
    pub fn with_spectrum(eigenvalues: &[f64], b_scale: f64, seed: u64) -> Result<Self> {
        let d = eigenvalues.len();
        if d == 0 || eigenvalues.iter().any(|x| !x.is_finite()) {
            return Err(Error::invalid("eigenvalues", "need at least one, all finite"));
        }
        let q = random_orthogonal(d, seed)?;
        let lam = Array1::from(eigenvalues.to_vec());
        let a = (&q * &lam).dot(&q.t());
        let a = (&a + &a.t()) * 0.5;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let b = Array1::from_shape_fn(d, |_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            z * b_scale
        });
        Quadratic::new(a, b)
    }

    /// The matrix $A$.
    pub fn matrix(&self) -> &Array2<f64> {
        &self.a
    }

    /// The vector $b$.
    pub fn linear_term(&self) -> &Array1<f64> {
        &self.b
    }
}

/// A Haar-ish random orthogonal matrix: $Q$ of the QR factorisation of a seeded Gaussian
/// matrix, with column signs fixed so that $R$ has a positive diagonal.
///
/// # Errors
/// [`Error::Linalg`] if LAPACK's QR fails.
pub fn random_orthogonal(d: usize, seed: u64) -> Result<Array2<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let g = Array2::from_shape_fn((d, d), |_| StandardNormal.sample(&mut rng));
    let (mut q, r) = g.qr()?;
    for j in 0..d {
        if r[[j, j]] < 0.0 {
            q.column_mut(j).mapv_inplace(|x: f64| -x);
        }
    }
    Ok(q)
}

impl Objective for Quadratic {
    fn dim(&self) -> usize {
        self.b.len()
    }
    fn loss(&self, theta: ArrayView1<f64>) -> f64 {
        0.5 * theta.dot(&self.a.dot(&theta)) + self.b.dot(&theta)
    }
    fn gradient(&self, theta: ArrayView1<f64>) -> Array1<f64> {
        self.a.dot(&theta) + &self.b
    }
    fn hvp(&self, _theta: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        self.a.dot(&v)
    }
    fn third_derivative(&self, _theta: ArrayView1<f64>, _u: ArrayView1<f64>, _v: ArrayView1<f64>) -> Array1<f64> {
        Array1::zeros(self.dim())
    }
    fn hessian(&self, _theta: ArrayView1<f64>) -> Array2<f64> {
        self.a.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn rejects_asymmetric_and_misshaped() {
        let e = Quadratic::new(array![[1.0, 2.0], [0.0, 1.0]], array![0.0, 0.0]).unwrap_err();
        assert!(e.to_string().contains("not symmetric"), "{e}");
        let e = Quadratic::new(array![[1.0, 0.0], [0.0, 1.0]], array![0.0]).unwrap_err();
        assert!(e.to_string().contains("invalid b"), "{e}");
    }

    #[test]
    fn prescribed_spectrum_is_the_spectrum() {
        use ndarray_linalg::{Eigh, UPLO};
        let eig = [-2.0, 0.5, 0.5, 3.0, 10.0];
        let q = Quadratic::with_spectrum(&eig, 1.0, 7).unwrap();
        let (got, _) = q.matrix().eigh(UPLO::Lower).unwrap();
        for (a, b) in got.iter().zip(eig.iter()) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }
}
