//! Sharpness: eigenvalues, trace and spectral density of a Hessian through a matrix-free
//! [`LinearOperator`], each number with the residual that proves it.
//!
//! - [`lanczos`]: thick-restart Lanczos with full reorthogonalisation and locking, for the
//!   largest, smallest or largest-magnitude eigenpairs, stopping on the true Ritz residual
//!   $\|Av - \lambda v\| \le \text{tol}\cdot|\lambda|$;
//! - [`power_iteration`]: power iteration with deflation (PyHessian's method), as a baseline;
//! - [`trace`]: Hutchinson and Hutch++ estimates with standard errors, and stochastic Lanczos
//!   quadrature for the spectral density.
//!
//! Operators: [`HessianOperator`] (exact HVP of an [`Objective`]), [`DenseOperator`], and
//! [`FiniteDifferenceHessian`] (central differences of any gradient oracle), so the same solvers
//! serve toy models and, later, networks whose only oracle is a gradient.

mod basis;
pub mod intervals;
mod lanczos;
mod power;
pub mod trace;

pub use intervals::{EigenvalueInterval, eigenvalue_intervals};
pub use lanczos::{Eigenpairs, LanczosParams, Which, lanczos};
pub use power::{PowerParams, power_iteration};

use ndarray::{Array1, Array2, ArrayView1};

use crate::objective::Objective;

/// A symmetric linear map $\mathbb{R}^d \to \mathbb{R}^d$, given only by its action.
pub trait LinearOperator {
    /// The dimension $d$.
    fn dim(&self) -> usize;
    /// $Av$.
    fn apply(&self, v: ArrayView1<f64>) -> Array1<f64>;
}

/// The Hessian of an objective at a point, applied by the exact HVP.
pub struct HessianOperator<'a, O: ?Sized> {
    /// The objective.
    pub objective: &'a O,
    /// The point $\theta$.
    pub theta: Array1<f64>,
}

impl<O: Objective + ?Sized> LinearOperator for HessianOperator<'_, O> {
    fn dim(&self) -> usize {
        self.objective.dim()
    }
    fn apply(&self, v: ArrayView1<f64>) -> Array1<f64> {
        self.objective.hvp(self.theta.view(), v)
    }
}

/// A dense symmetric matrix as an operator.
pub struct DenseOperator(pub Array2<f64>);

impl LinearOperator for DenseOperator {
    fn dim(&self) -> usize {
        self.0.nrows()
    }
    fn apply(&self, v: ArrayView1<f64>) -> Array1<f64> {
        self.0.dot(&v)
    }
}

/// The Hessian of any gradient oracle by central differences:
/// $Hv \approx \|v\|\,\frac{\nabla L(\theta + \varepsilon\hat v) - \nabla L(\theta - \varepsilon\hat v)}{2\varepsilon}$,
/// $\hat v = v/\|v\|$, with $\varepsilon = \varepsilon_{\text{mach}}^{1/3}(1 + \|\theta\|_\infty)$
/// (about $6\times10^{-6}$ at unit scale), which balances the $O(\varepsilon^2)$ truncation error
/// against the $O(\varepsilon_{\text{mach}}/\varepsilon)$ rounding error: about $10^{-10}$ relative
/// on well-scaled models (tested against the exact HVP). Only the gradient is used, so this is
/// the operator for models without an exact HVP.
pub struct FiniteDifferenceHessian<'a, O: ?Sized> {
    /// The objective (only its gradient is used).
    pub objective: &'a O,
    /// The point $\theta$.
    pub theta: Array1<f64>,
}

impl<O: Objective + ?Sized> FiniteDifferenceHessian<'_, O> {
    /// The absolute difference step $\varepsilon$ used at this point.
    pub fn step(&self) -> f64 {
        crate::objective::central_difference_step(self.theta.view())
    }
}

impl<O: Objective + ?Sized> LinearOperator for FiniteDifferenceHessian<'_, O> {
    fn dim(&self) -> usize {
        self.objective.dim()
    }
    fn apply(&self, v: ArrayView1<f64>) -> Array1<f64> {
        crate::objective::central_difference_along(|t| self.objective.gradient(t), self.theta.view(), v)
    }
}
