//! SGD's epoch and its implicit regulariser: orderings of the minibatches, the epoch map, and
//! the measurements of the coefficient $1/(4m)$, its split and the epoch's order.

use super::*;

/// Which orderings of the minibatches an SGD epoch is averaged over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Orderings {
    /// All $m!$ orderings (exact average).
    All,
    /// `count` orderings drawn uniformly at random (seeded).
    Sampled {
        /// How many.
        count: usize,
        /// Seed.
        seed: u64,
    },
}

/// The orderings of `m` minibatches to average over.
pub fn orderings(m: usize, which: Orderings) -> Vec<Vec<usize>> {
    match which {
        Orderings::All => (0..m).permutations(m).collect(),
        Orderings::Sampled { count, seed } => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..count)
                .map(|_| {
                    let mut p: Vec<usize> = (0..m).collect();
                    p.shuffle(&mut rng);
                    p
                })
                .collect()
        }
    }
}

/// One epoch of SGD: a step of size `h` on each minibatch in `order`.
pub fn sgd_epoch<O: FiniteSum + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    batches: &[Vec<usize>],
    order: &[usize],
    h: f64,
) -> Array1<f64> {
    let mut x = theta.to_owned();
    for &k in order {
        let g = obj.batch_gradient(x.view(), &batches[k]);
        x.scaled_add(-h, &g);
    }
    x
}

/// `m` minibatches of `n / m` examples each: a seeded random partition of `0..n`.
///
/// # Errors
/// [`Error::InvalidParameter`] unless $m \ge 1$ divides $n$ (otherwise $L$ is not the mean of
/// the minibatch losses).
pub fn equal_partition(n: usize, m: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if m == 0 || !n.is_multiple_of(m) {
        return Err(Error::invalid("minibatches", format!("{m} minibatches do not divide {n} examples equally")));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    Ok(idx.chunks(n / m).map(<[usize]>::to_vec).collect())
}

/// SGD's implicit-regulariser coefficient and its split.
#[derive(Debug, Clone, Serialize)]
pub struct SgdMeasurement {
    /// Number of minibatches $m$.
    pub minibatches: usize,
    /// Orderings averaged over.
    pub orderings: usize,
    /// Whether all $m!$ orderings were used (exact average).
    pub exact: bool,
    /// $\kappa$ in $L + \kappa h \sum_k\|\nabla L_k\|^2$; predicted $\frac1{4m}$.
    pub coefficient: CoefficientMeasurement,
    /// The displacement regressed on $mHg$ (GD's part, from $\frac h4\|g\|^2$) and on
    /// $\sum_k H_k(g_k - g)$ (the minibatch-variance part, from $\frac{h}{4m}\sum_k\|g_k-g\|^2$):
    /// the first weight, extrapolated; predicted 1.
    pub gd_part: f64,
    /// The second weight, extrapolated; predicted 1.
    pub variance_part: f64,
    /// Standard errors of the two weights.
    pub part_stderr: (f64, f64),
    /// The smallest (over $h$) squared sine of the angle between the two regressors; the split
    /// is reported as NaN when it is below $10^{-8}$ (parallel regressors, e.g. one
    /// parameter), since the two parts are then not separately identifiable.
    pub split_conditioning: f64,
    /// The two weights at each step size (empty when not identifiable).
    pub split_per_h: Vec<(f64, f64)>,
    /// How many times [`sgd_coefficient_asymptotic`] moved the range down.
    pub shrinks: usize,
}

/// Measures SGD's coefficient from averaged epochs: with
/// $\bar r(h) = \overline{\theta_{\text{epoch}}} - \varphi^{\text{plain}}_{mh}(\theta) = -\frac{h^2}{2}\sum_k H_k g_k + O(h^3)$,
/// $\kappa(h) = -\langle \bar r, S\rangle / (2mh^2\|S\|^2)$, $S = \sum_k H_k g_k$, extrapolated to
/// $h = 0$. With sampled orderings each ordering's $\kappa$ is extrapolated separately and the
/// standard error is that of their mean.
///
/// # Errors
/// As [`reference_flow`]; [`Error::InvalidParameter`] for degenerate inputs.
pub fn sgd_coefficient<O: FiniteSum + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    batches: &[Vec<usize>],
    hs: &[f64],
    which: Orderings,
    params: &AdaptiveParams,
) -> Result<SgdMeasurement> {
    let m = batches.len();
    let mf = m as f64;
    let orders = orderings(m, which);
    if orders.is_empty() {
        return Err(Error::invalid("orderings", "need at least one ordering"));
    }
    let (g, s) = batch_gradient_and_curvature(obj, theta, batches);
    let u = obj.hvp(theta, g.view()) * mf;
    let w = &s - &u;
    if norm(&s) == 0.0 {
        return Err(Error::invalid("theta", "sum_k H_k g_k = 0: no implicit regulariser to measure"));
    }
    let plain = scaled_gradient_field(obj, 1.0);
    let mut series = CoefficientSeries::new();
    let mut per_order: Vec<Vec<f64>> = vec![Vec::new(); orders.len()];
    let mut parts: Vec<(f64, f64)> = Vec::new();
    let mut conditioning = f64::INFINITY;
    for &h in hs {
        let reference = reference_flow(&plain, theta, mf * h, params)?;
        let mut mean_r = Array1::<f64>::zeros(obj.dim());
        for (i, order) in orders.iter().enumerate() {
            let r = sgd_epoch(obj, theta, batches, order, h) - &reference.state;
            per_order[i].push(project(&r, &s, 2.0 * mf * h * h).0);
            mean_r += &r;
        }
        mean_r /= orders.len() as f64;
        series.record(h, &mean_r, &s, 2.0 * mf * h * h, reference.error_bound);
        // Two-regressor least squares of -2 r / h^2 on [u, w].
        let y = &mean_r * (-2.0 / (h * h));
        let (uu, uw, ww) = (u.dot(&u), u.dot(&w), w.dot(&w));
        let (uy, wy) = (u.dot(&y), w.dot(&y));
        let det = uu * ww - uw * uw;
        let sin2 = if uu > 0.0 && ww > 0.0 { det / (uu * ww) } else { 0.0 };
        conditioning = conditioning.min(sin2);
        parts.push(if sin2 > 1e-8 {
            ((ww * uy - uw * wy) / det, (uu * wy - uw * uy) / det)
        } else {
            (f64::NAN, f64::NAN)
        });
    }
    let exact = matches!(which, Orderings::All);
    let (estimate, stderr) = if exact {
        extrapolate(hs, &series.per_h)?
    } else {
        let intercepts: Vec<f64> = per_order.iter().map(|c| extrapolate(hs, c).map(|e| e.0)).collect::<Result<_>>()?;
        mean_and_stderr(&intercepts)
    };
    let (gd_part, gd_se) = extrapolate(hs, &parts.iter().map(|p| p.0).collect::<Vec<_>>())?;
    let (variance_part, var_se) = extrapolate(hs, &parts.iter().map(|p| p.1).collect::<Vec<_>>())?;
    Ok(SgdMeasurement {
        minibatches: m,
        orderings: orders.len(),
        exact,
        coefficient: series.with_estimate(estimate, stderr),
        gd_part,
        variance_part,
        part_stderr: (gd_se, var_se),
        split_conditioning: conditioning,
        split_per_h: if conditioning > 1e-8 { parts } else { Vec::new() },
        shrinks: 0,
    })
}

/// Error of the ordering-averaged SGD epoch against the flow of SGD's modified loss over time
/// $mh$ (`modified = true`, expected $O(h^3)$) or of $L$ (`false`, expected $O(h^2)$).
///
/// # Errors
/// As [`reference_flow`].
pub fn sgd_epoch_order<O: FiniteSum + ?Sized>(
    obj: &O,
    theta: ArrayView1<f64>,
    batches: &[Vec<usize>],
    hs: &[f64],
    modified: bool,
    which: Orderings,
    params: &AdaptiveParams,
) -> Result<OrderMeasurement> {
    let m = batches.len() as f64;
    let orders = orderings(batches.len(), which);
    let mut errors = Vec::new();
    let mut ratios = Vec::new();
    for &h in hs {
        let field = if modified { sgd_modified_field(obj, batches, h) } else { sgd_modified_field(obj, batches, 0.0) };
        let reference = reference_flow(&field, theta, m * h, params)?;
        let mut mean = Array1::<f64>::zeros(obj.dim());
        for order in &orders {
            mean += &sgd_epoch(obj, theta, batches, order, h);
        }
        mean /= orders.len() as f64;
        let e = norm(&(mean - &reference.state));
        ratios.push(reference.error_bound / e);
        errors.push(e);
    }
    order_measurement(hs, errors, &ratios)
}
