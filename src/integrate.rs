//! Flow integrators for autonomous vector fields $\dot y = f(y)$ over ndarray vectors: classical
//! RK4 with sub-stepping, and the adaptive embedded Dormand-Prince 5(4) pair with error
//! control (the reference flows of the backward-error analysis).

use ndarray::{Array1, ArrayView1};
use serde::Serialize;

use crate::{Error, Result};

/// A vector field $f:\mathbb{R}^d \to \mathbb{R}^d$.
pub type Field<'a> = dyn Fn(ArrayView1<f64>) -> Array1<f64> + 'a;

/// Classical fourth-order Runge-Kutta from `y0` over time `t` in `substeps` equal steps.
/// Global error $O((t/\text{substeps})^4)$.
///
/// # Panics
/// If `substeps` is zero.
pub fn rk4(field: &Field, y0: ArrayView1<f64>, t: f64, substeps: usize) -> Array1<f64> {
    assert!(substeps > 0, "rk4 needs at least one step");
    let dt = t / substeps as f64;
    let mut y = y0.to_owned();
    for _ in 0..substeps {
        let k1 = field(y.view());
        let k2 = field((&y + &(&k1 * (dt / 2.0))).view());
        let k3 = field((&y + &(&k2 * (dt / 2.0))).view());
        let k4 = field((&y + &(&k3 * dt)).view());
        y = y + (k1 + (k2 + k3) * 2.0 + k4) * (dt / 6.0);
    }
    y
}

/// Parameters of [`dormand_prince`].
#[derive(Debug, Clone, Serialize)]
pub struct AdaptiveParams {
    /// Relative tolerance per step.
    pub rtol: f64,
    /// Absolute tolerance per step.
    pub atol: f64,
    /// Largest number of attempted steps before giving up.
    pub max_steps: usize,
}

impl Default for AdaptiveParams {
    fn default() -> Self {
        AdaptiveParams { rtol: 1e-12, atol: 1e-14, max_steps: 1_000_000 }
    }
}

/// What [`dormand_prince`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdaptiveInfo {
    /// Accepted steps.
    pub accepted: usize,
    /// Rejected steps.
    pub rejected: usize,
    /// Evaluations of the vector field.
    pub evaluations: usize,
    /// Sum over accepted steps of the Euclidean norm of the embedded error estimate (the local
    /// error of the 4th-order solution): a pessimistic estimate of the global error of the
    /// returned 5th-order solution.
    pub error_estimate: f64,
}

// Dormand & Prince (1980), the RK5(4)7M pair: stages (the nodes are not needed for autonomous
// fields), 5th-order weights (last row), and the 5th-minus-4th-order weights (error estimator).
const A: [[f64; 6]; 7] = [
    [0.0; 6],
    [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
    [19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0, 0.0, 0.0],
    [9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0, 0.0],
    [35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
];
const E: [f64; 7] =
    [71.0 / 57600.0, 0.0, -71.0 / 16695.0, 71.0 / 1920.0, -17253.0 / 339200.0, 22.0 / 525.0, -1.0 / 40.0];

/// Integrates $\dot y = f(y)$ from `y0` over time `t_end` with the Dormand-Prince 5(4) pair,
/// local extrapolation and first-same-as-last. Steps are accepted when the RMS of the
/// embedded error estimate, each component scaled by $\text{atol} + \text{rtol}\max(|y|,|y_{\text{new}}|)$,
/// is at most 1; the next step is $h\min(5, \max(0.2, 0.9\,\text{err}^{-1/5}))$.
///
/// # Errors
/// [`Error::Diverged`] when the field returns a non-finite value; [`Error::InvalidParameter`]
/// when the tolerances are not positive; [`Error::StepBudget`] when `max_steps` steps do not
/// reach `t_end`.
pub fn dormand_prince(
    field: &Field,
    y0: ArrayView1<f64>,
    t_end: f64,
    params: &AdaptiveParams,
) -> Result<(Array1<f64>, AdaptiveInfo)> {
    if !(params.rtol > 0.0 && params.atol > 0.0) {
        return Err(Error::invalid("tolerance", "rtol and atol must be positive"));
    }
    let mut info = AdaptiveInfo::default();
    let mut y = y0.to_owned();
    if t_end == 0.0 {
        return Ok((y, info));
    }
    let dir = t_end.signum();
    let mut t = 0.0;
    let eval = |y: ArrayView1<f64>, info: &mut AdaptiveInfo| -> Result<Array1<f64>> {
        info.evaluations += 1;
        let f = field(y);
        if f.iter().all(|v| v.is_finite()) {
            Ok(f)
        } else {
            Err(Error::Diverged { step: info.accepted, quantity: "vector field".into() })
        }
    };
    let mut k0 = eval(y.view(), &mut info)?;
    // Initial step from the field's size (Hairer, Norsett & Wanner, II.4), kept simple.
    let scale = |y: &Array1<f64>| y.mapv(|v| params.atol + params.rtol * v.abs());
    let d0 = rms(&(&y / &scale(&y)));
    let d1 = rms(&(&k0 / &scale(&y)));
    let mut h = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { 0.01 * d0 / d1 };
    h = h.min(t_end.abs());
    let mut k = vec![Array1::<f64>::zeros(0); 7];
    while (t_end - t) * dir > 0.0 {
        if info.accepted + info.rejected >= params.max_steps {
            return Err(Error::StepBudget { steps: params.max_steps, reached: t, t_end });
        }
        h = h.min((t_end - t).abs());
        let hs = h * dir;
        k[0] = k0.clone();
        for s in 1..7 {
            let mut ys = y.clone();
            for (j, kj) in k.iter().enumerate().take(s) {
                if A[s][j] != 0.0 {
                    ys.scaled_add(hs * A[s][j], kj);
                }
            }
            k[s] = eval(ys.view(), &mut info)?;
        }
        // Stage 7 is evaluated at the 5th-order solution: y_new = y + h * sum A[6][j] k_j.
        let mut y_new = y.clone();
        for (j, kj) in k.iter().enumerate().take(6) {
            y_new.scaled_add(hs * A[6][j], kj);
        }
        let mut err = Array1::<f64>::zeros(y.len());
        for (j, kj) in k.iter().enumerate() {
            if E[j] != 0.0 {
                err.scaled_add(hs * E[j], kj);
            }
        }
        let tol =
            ndarray::Zip::from(&y).and(&y_new).map_collect(|a, b| params.atol + params.rtol * a.abs().max(b.abs()));
        let e = rms(&(&err / &tol));
        if e <= 1.0 {
            info.error_estimate += err.dot(&err).sqrt();
            t += hs;
            y = y_new;
            k0 = k[6].clone();
            info.accepted += 1;
        } else {
            info.rejected += 1;
        }
        let factor = if e == 0.0 { 5.0 } else { (0.9 * e.powf(-0.2)).clamp(0.2, 5.0) };
        h *= factor;
    }
    Ok((y, info))
}

fn rms(x: &Array1<f64>) -> f64 {
    if x.is_empty() { 0.0 } else { (x.dot(x) / x.len() as f64).sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// y' = A y with A a rotation-plus-decay generator: y(t) = e^{-t}(cos t, -sin t)-style
    /// closed form.
    fn spiral(y: ArrayView1<f64>) -> Array1<f64> {
        array![-y[0] + y[1], -y[0] - y[1]]
    }

    fn exact(t: f64) -> Array1<f64> {
        // y0 = (1, 0): y(t) = e^{-t} (cos t, -sin t).
        array![(-t).exp() * t.cos(), -(-t).exp() * t.sin()]
    }

    #[test]
    fn dormand_prince_meets_its_tolerance() {
        let (y, info) = dormand_prince(&spiral, array![1.0, 0.0].view(), 3.0, &AdaptiveParams::default()).unwrap();
        let err = (&y - &exact(3.0)).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // Per-step tolerance 1e-12 relative, a few hundred steps: global error <= ~1e-11.
        assert!(err < 1e-11, "error {err}, {info:?}");
        assert!(info.accepted > 10);
    }

    #[test]
    fn rk4_is_fourth_order() {
        let e = |n| {
            (&rk4(&spiral, array![1.0, 0.0].view(), 1.0, n) - &exact(1.0))
                .iter()
                .fold(0.0f64, |m: f64, v: &f64| m.max(v.abs()))
        };
        let ratio = e(20) / e(40);
        // Halving the step divides the error by 2^4 = 16 in the asymptotic regime.
        assert!((ratio - 16.0).abs() < 1.0, "ratio {ratio}");
    }

    /// y' = -sign(y) from y = 1: the field jumps at y = 0, reached at t = 1, after which an exact
    /// solution sits at 0 while every step across it is rejected or chatters. The step budget
    /// ends the integration with a typed error past t = 1 (not a hang).
    #[test]
    fn a_jumping_field_uses_up_the_step_budget() {
        let field = |y: ArrayView1<f64>| y.mapv(|v| -v.signum());
        let params = AdaptiveParams { max_steps: 500, ..AdaptiveParams::default() };
        match dormand_prince(&field, array![1.0].view(), 2.0, &params) {
            Err(Error::StepBudget { steps, reached, t_end }) => {
                assert_eq!((steps, t_end), (500, 2.0));
                assert!((0.99..2.0).contains(&reached), "reached {reached}");
            }
            other => panic!("expected StepBudget, got {other:?}"),
        }
    }
}
