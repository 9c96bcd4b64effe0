//! Problems as traits: a smooth loss with exact derivatives ([`Objective`]) and its finite-sum
//! view over examples ([`FiniteSum`]).
//!
//! Optimizers, flow integrators and eigensolvers are written once against these traits, so the
//! same code serves a quadratic, a logistic regression and an MLP.
//!
//! Notation: $L:\mathbb{R}^d\to\mathbb{R}$ the loss, $g = \nabla L(\theta)$,
//! $H = \nabla^2 L(\theta)$, and $D^3L(\theta)[u, v] = \frac{d}{d\varepsilon} H(\theta + \varepsilon u)\, v
//! \big|_{\varepsilon = 0}$, the third derivative contracted with two directions (a vector).

use crate::sharpness::{HessianOperator, LinearOperator};
use ndarray::{Array1, Array2, ArrayView1};

/// A twice-differentiable loss $L(\theta)$ on $\mathbb{R}^d$ with exact gradient and exact
/// Hessian-vector products.
///
/// Implementations must make [`Objective::hvp`] exact (an R-operator or dual numbers), never a
/// finite difference: the finite differences in this module are what the exact ones are
/// checked against.
///
/// # Panics
/// Every method may panic when a vector's length differs from [`Objective::dim`].
pub trait Objective {
    /// The number of parameters $d$.
    fn dim(&self) -> usize;

    /// $L(\theta)$.
    fn loss(&self, theta: ArrayView1<f64>) -> f64;

    /// $\nabla L(\theta)$.
    fn gradient(&self, theta: ArrayView1<f64>) -> Array1<f64>;

    /// $(L(\theta), \nabla L(\theta))$ in one pass where the model allows it.
    fn loss_and_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>) {
        (self.loss(theta), self.gradient(theta))
    }

    /// The Hessian-vector product $\nabla^2 L(\theta)\, v$.
    fn hvp(&self, theta: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64>;

    /// $(L, g, Hg)$ with $g = \nabla L(\theta)$, $H = \nabla^2 L(\theta)$: what a
    /// gradient-norm penalty $\|g\|^2$ needs ($\nabla \|g\|^2 = 2Hg$). The default makes two
    /// calls; networks share one forward pass between them, with the same results.
    fn gradient_and_hvp_at_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>, Array1<f64>) {
        let (l, g) = self.loss_and_gradient(theta);
        let hg = self.hvp(theta, g.view());
        (l, g, hg)
    }

    /// The Hessian at `theta` as a [`LinearOperator`], for many products at one point (Lanczos,
    /// Hutch++, spectral densities). The default is a [`HessianOperator`], which calls
    /// [`Objective::hvp`] for each product; objectives whose products share work at a fixed point
    /// override it with the same products, faster (a [`Network`](crate::models::Network) does its
    /// forward pass once: [`NetworkHessian`](crate::models::NetworkHessian)).
    fn hessian_at(&self, theta: ArrayView1<f64>) -> Box<dyn LinearOperator + '_> {
        Box::new(HessianOperator { objective: self, theta: theta.to_owned() })
    }

    /// The third derivative contracted twice, $D^3L(\theta)[u, v]$ (symmetric in $u, v$).
    ///
    /// The default is [`third_derivative_by_hvp_difference`], a central difference of the exact
    /// HVP with relative accuracy about $10^{-9}$; models that can do better override it.
    fn third_derivative(&self, theta: ArrayView1<f64>, u: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        third_derivative_by_hvp_difference(self, theta, u, v)
    }

    /// The dense Hessian $\nabla^2 L(\theta)$, for small $d$. The default assembles it from $d$
    /// exact HVPs with the unit vectors and symmetrises it (the asymmetry before symmetrising
    /// is rounding only, checked by the tests).
    fn hessian(&self, theta: ArrayView1<f64>) -> Array2<f64> {
        dense_hessian_from_hvp(self, theta)
    }
}

/// A loss that is a mean over examples, $L(\theta) = \frac1n \sum_{i=1}^n \ell_i(\theta)$, with
/// the same quantities on any minibatch $B$: $L_B = \frac1{|B|}\sum_{i\in B}\ell_i$.
///
/// A minibatch is a slice of example indices; repeated indices count with multiplicity (as in
/// sampling with replacement).
pub trait FiniteSum: Objective {
    /// The number of examples $n$.
    fn n_examples(&self) -> usize;

    /// $L_B(\theta)$.
    fn batch_loss(&self, theta: ArrayView1<f64>, batch: &[usize]) -> f64;

    /// $\nabla L_B(\theta)$.
    fn batch_gradient(&self, theta: ArrayView1<f64>, batch: &[usize]) -> Array1<f64>;

    /// $\nabla^2 L_B(\theta)\, v$.
    fn batch_hvp(&self, theta: ArrayView1<f64>, batch: &[usize], v: ArrayView1<f64>) -> Array1<f64>;

    /// $(L_B, g_B, H_B g_B)$, as [`Objective::gradient_and_hvp_at_gradient`] for the minibatch.
    fn batch_gradient_and_hvp_at_gradient(
        &self,
        theta: ArrayView1<f64>,
        batch: &[usize],
    ) -> (f64, Array1<f64>, Array1<f64>) {
        let g = self.batch_gradient(theta, batch);
        let hg = self.batch_hvp(theta, batch, g.view());
        (self.batch_loss(theta, batch), g, hg)
    }
}

/// One minibatch of a [`FiniteSum`] as an [`Objective`]: $L_B$ with its exact derivatives.
#[derive(Debug, Clone, Copy)]
pub struct Minibatch<'a, O: ?Sized> {
    /// The finite sum.
    pub inner: &'a O,
    /// The example indices of the minibatch.
    pub batch: &'a [usize],
}

impl<O: FiniteSum + ?Sized> Objective for Minibatch<'_, O> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn loss(&self, theta: ArrayView1<f64>) -> f64 {
        self.inner.batch_loss(theta, self.batch)
    }
    fn gradient(&self, theta: ArrayView1<f64>) -> Array1<f64> {
        self.inner.batch_gradient(theta, self.batch)
    }
    fn hvp(&self, theta: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        self.inner.batch_hvp(theta, self.batch, v)
    }
}

/// Blanket impl so that `&O` is an objective wherever `O` is.
impl<O: Objective + ?Sized> Objective for &O {
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn loss(&self, theta: ArrayView1<f64>) -> f64 {
        (**self).loss(theta)
    }
    fn gradient(&self, theta: ArrayView1<f64>) -> Array1<f64> {
        (**self).gradient(theta)
    }
    fn loss_and_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>) {
        (**self).loss_and_gradient(theta)
    }
    fn hvp(&self, theta: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        (**self).hvp(theta, v)
    }
    fn gradient_and_hvp_at_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>, Array1<f64>) {
        (**self).gradient_and_hvp_at_gradient(theta)
    }
    fn hessian_at(&self, theta: ArrayView1<f64>) -> Box<dyn LinearOperator + '_> {
        (**self).hessian_at(theta)
    }
    fn third_derivative(&self, theta: ArrayView1<f64>, u: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        (**self).third_derivative(theta, u, v)
    }
    fn hessian(&self, theta: ArrayView1<f64>) -> Array2<f64> {
        (**self).hessian(theta)
    }
}

/// Dense Hessian from $d$ exact HVPs, symmetrised as $(M + M^\top)/2$.
pub fn dense_hessian_from_hvp<O: Objective + ?Sized>(obj: &O, theta: ArrayView1<f64>) -> Array2<f64> {
    let d = obj.dim();
    let mut m = Array2::<f64>::zeros((d, d));
    let mut e = Array1::<f64>::zeros(d);
    for j in 0..d {
        e[j] = 1.0;
        m.column_mut(j).assign(&obj.hvp(theta, e.view()));
        e[j] = 0.0;
    }
    let mt = m.t().to_owned();
    (m + mt) * 0.5
}

/// Relative step of [`third_derivative_by_hvp_difference`]: $\varepsilon_{\text{mach}}^{1/3}
/// \approx 6.06\times10^{-6}$, which balances the $O(\varepsilon^2)$ truncation error of a
/// central difference against its $O(\varepsilon_{\text{mach}}/\varepsilon)$ rounding error.
pub fn third_derivative_step() -> f64 {
    f64::EPSILON.cbrt()
}

/// The absolute step of [`central_difference_along`] at $\theta$:
/// $\varepsilon = \varepsilon_{\text{mach}}^{1/3}(1 + \|\theta\|_\infty)$.
pub fn central_difference_step(theta: ArrayView1<f64>) -> f64 {
    third_derivative_step() * (1.0 + theta.iter().fold(0.0f64, |m, x| m.max(x.abs())))
}

/// The derivative of a vector-valued map $f$ at $\theta$ along $u$ by a central difference:
/// $$Df(\theta)[u] \approx \|u\|\,\frac{f(\theta + \varepsilon \hat u) - f(\theta - \varepsilon \hat u)}{2\varepsilon},
/// \qquad \hat u = u/\|u\|,\ \varepsilon = \varepsilon_{\text{mach}}^{1/3}(1 + \|\theta\|_\infty)$$
/// ([`central_difference_step`]); zero for $u = 0$. Truncation error
/// $\frac{\varepsilon^2}{6}\|u\|\,D^3f[\hat u,\hat u,\hat u]$, rounding error about
/// $\varepsilon_{\text{mach}}\|f\|\|u\|/\varepsilon$: both near $10^{-10}$ relative for well-scaled
/// models. With $f = \nabla L$ it is the finite-difference HVP, with $f = H(\cdot)v$ the third
/// derivative $D^3L[u, v]$.
pub fn central_difference_along(
    f: impl Fn(ArrayView1<f64>) -> Array1<f64>,
    theta: ArrayView1<f64>,
    u: ArrayView1<f64>,
) -> Array1<f64> {
    let norm_u = u.dot(&u).sqrt();
    if norm_u == 0.0 {
        return Array1::zeros(theta.len());
    }
    let eps = central_difference_step(theta);
    let step = &u * (eps / norm_u);
    let plus = &theta + &step;
    let minus = &theta - &step;
    (f(plus.view()) - f(minus.view())) * (norm_u / (2.0 * eps))
}

/// $D^3L(\theta)[u, v]$ by a central difference of the exact HVP along $u$
/// ([`central_difference_along`] of $\theta \mapsto H(\theta)v$). Tested against the exact third
/// derivative of the generalised linear models.
pub fn third_derivative_by_hvp_difference<O: Objective + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    u: ArrayView1<f64>,
    v: ArrayView1<f64>,
) -> Array1<f64> {
    central_difference_along(|t| obj.hvp(t, v), theta, u)
}

/// The directional derivative $\nabla L(\theta)^\top v$ by the central difference
/// $\frac{L(\theta + \varepsilon v) - L(\theta - \varepsilon v)}{2\varepsilon}$ (absolute step
/// `eps`).
pub fn directional_derivative_by_difference<O: Objective + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    v: ArrayView1<f64>,
    eps: f64,
) -> f64 {
    let plus = &theta + &(&v * eps);
    let minus = &theta - &(&v * eps);
    (obj.loss(plus.view()) - obj.loss(minus.view())) / (2.0 * eps)
}

/// The full gradient by coordinate-wise central differences (absolute step `eps`); costs $2d$
/// loss evaluations.
pub fn gradient_by_difference<O: Objective + ?Sized>(obj: &O, theta: ArrayView1<f64>, eps: f64) -> Array1<f64> {
    let mut x = theta.to_owned();
    let mut g = Array1::zeros(obj.dim());
    for j in 0..obj.dim() {
        let t = x[j];
        x[j] = t + eps;
        let lp = obj.loss(x.view());
        x[j] = t - eps;
        let lm = obj.loss(x.view());
        x[j] = t;
        g[j] = (lp - lm) / (2.0 * eps);
    }
    g
}

/// The HVP by a central difference of the exact gradient,
/// $\frac{\nabla L(\theta + \varepsilon v) - \nabla L(\theta - \varepsilon v)}{2\varepsilon}$
/// (absolute step `eps`).
pub fn hvp_by_difference<O: Objective + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    v: ArrayView1<f64>,
    eps: f64,
) -> Array1<f64> {
    let plus = &theta + &(&v * eps);
    let minus = &theta - &(&v * eps);
    (obj.gradient(plus.view()) - obj.gradient(minus.view())) / (2.0 * eps)
}

/// $L(\theta) + c\,\|\nabla L(\theta)\|^2$: an explicit gradient-norm penalty with exact
/// derivatives.
///
/// With $g = \nabla L$ and $H = \nabla^2 L$:
/// $\nabla = g + 2cHg$ and $\nabla^2\, v = Hv + 2c\,(D^3L[g, v] + H H v)$.
/// GD on it with $c = h/4$ is GD with the explicit form of its own implicit regulariser
/// (Barrett & Dherin 2021).
#[derive(Debug, Clone)]
pub struct GradientNormPenalty<O> {
    /// The unpenalised loss $L$.
    pub inner: O,
    /// The coefficient $c \ge 0$.
    pub coefficient: f64,
}

impl<O: Objective> Objective for GradientNormPenalty<O> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn loss(&self, theta: ArrayView1<f64>) -> f64 {
        let (l, g) = self.inner.loss_and_gradient(theta);
        l + self.coefficient * g.dot(&g)
    }
    fn gradient(&self, theta: ArrayView1<f64>) -> Array1<f64> {
        self.loss_and_gradient(theta).1
    }
    fn loss_and_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>) {
        let (l, g, hg) = self.inner.gradient_and_hvp_at_gradient(theta);
        let value = l + self.coefficient * g.dot(&g);
        (value, g + hg * (2.0 * self.coefficient))
    }
    fn hvp(&self, theta: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        let g = self.inner.gradient(theta);
        let hv = self.inner.hvp(theta, v);
        let hhv = self.inner.hvp(theta, hv.view());
        let d3 = self.inner.third_derivative(theta, g.view(), v);
        hv + (d3 + hhv) * (2.0 * self.coefficient)
    }
}

/// $L(\theta) + c\sum_{k=1}^m \|\nabla L_k(\theta)\|^2$ over fixed blocks $B_1, \dots, B_m$ of
/// a [`FiniteSum`] ($L_k$ the mean loss of block $k$): the explicit form of SGD's implicit
/// regulariser (Smith et al. 2021) with $c = h/(4m)$.
///
/// Gradient: $g + 2c\sum_k H_k g_k$ (exact: one block gradient and one block HVP per block).
/// The HVP of the penalised loss needs block third derivatives, which [`FiniteSum`] does not
/// provide: it is a central difference of that exact gradient (step as
/// [`third_derivative_step`], about $10^{-10}$ relative), documented here because sharpness
/// measured on this objective is then approximate at that level.
pub struct MinibatchGradientPenalty<'a, O: ?Sized> {
    /// The finite sum $L$.
    pub inner: &'a O,
    /// The blocks $B_k$ (indices of examples).
    pub blocks: Vec<Vec<usize>>,
    /// The coefficient $c \ge 0$.
    pub coefficient: f64,
}

impl<O: FiniteSum + ?Sized> Objective for MinibatchGradientPenalty<'_, O> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn loss(&self, theta: ArrayView1<f64>) -> f64 {
        let penalty: f64 = self
            .blocks
            .iter()
            .map(|b| {
                let g = self.inner.batch_gradient(theta, b);
                g.dot(&g)
            })
            .sum();
        self.inner.loss(theta) + self.coefficient * penalty
    }
    fn gradient(&self, theta: ArrayView1<f64>) -> Array1<f64> {
        self.loss_and_gradient(theta).1
    }
    fn loss_and_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>) {
        let (l, mut grad) = self.inner.loss_and_gradient(theta);
        let mut penalty = 0.0;
        for b in &self.blocks {
            let (_, g, hg) = self.inner.batch_gradient_and_hvp_at_gradient(theta, b);
            penalty += g.dot(&g);
            grad.scaled_add(2.0 * self.coefficient, &hg);
        }
        (l + self.coefficient * penalty, grad)
    }
    fn hvp(&self, theta: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        central_difference_along(|t| self.gradient(t), theta, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// $L = \sum_i \theta_i^4 / 4$: gradient $\theta^3$, Hessian diag$(3\theta^2)$,
    /// $D^3L[u,v] = 6\,\theta \odot u \odot v$. Small enough to check the defaults by hand.
    struct Quartic;
    impl Objective for Quartic {
        fn dim(&self) -> usize {
            3
        }
        fn loss(&self, t: ArrayView1<f64>) -> f64 {
            t.iter().map(|x| x.powi(4) / 4.0).sum()
        }
        fn gradient(&self, t: ArrayView1<f64>) -> Array1<f64> {
            t.mapv(|x| x.powi(3))
        }
        fn hvp(&self, t: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
            t.mapv(|x| 3.0 * x * x) * v
        }
    }

    #[test]
    fn third_derivative_difference_matches_closed_form() {
        let t = array![0.3, -1.2, 2.0];
        let u = array![1.0, 0.5, -0.25];
        let v = array![-0.7, 2.0, 1.5];
        let got = Quartic.third_derivative(t.view(), u.view(), v.view());
        let want = &t * &u * &v * 6.0;
        // Central difference of an HVP that is quadratic in theta: truncation is exactly zero,
        // so only rounding (~1e-16 / 6e-6 relative) remains.
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() <= 1e-8 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn dense_hessian_is_diagonal_for_quartic() {
        let t = array![0.3, -1.2, 2.0];
        let h = Quartic.hessian(t.view());
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 3.0 * t[i] * t[i] } else { 0.0 };
                assert!((h[[i, j]] - want).abs() < 1e-15);
            }
        }
    }

    #[test]
    fn penalty_gradient_matches_difference_of_penalised_loss() {
        let t = array![0.3, -1.2, 2.0];
        let p = GradientNormPenalty { inner: Quartic, coefficient: 0.05 };
        let exact = p.gradient(t.view());
        let fd = gradient_by_difference(&p, t.view(), 1e-5);
        for (a, b) in exact.iter().zip(fd.iter()) {
            // Step 1e-5: truncation ~ 1e-10 * |L'''|, rounding ~ 1e-16 * |L| / 1e-5.
            assert!((a - b).abs() <= 1e-7 * a.abs().max(1.0), "{a} vs {b}");
        }
        let v = array![1.0, -2.0, 0.5];
        let hv = p.hvp(t.view(), v.view());
        let fd = hvp_by_difference(&p, t.view(), v.view(), 1e-5);
        for (a, b) in hv.iter().zip(fd.iter()) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
}
