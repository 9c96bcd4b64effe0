//! Property tests: the exact derivatives of every toy model agree with finite differences, with
//! the dense Hessian, and with the symmetries they must have.
//!
//! Models are drawn at random: architecture (0-2 hidden layers of width 1-6, any activation,
//! with or without biases, any loss), data (1-12 examples of 1-5 features), point and
//! directions. Tolerances are stated at each assertion with the reasoning behind them.

use fullbatch::models::{Network, OutputLoss, Quadratic};
use fullbatch::objective::{
    FiniteSum, GradientNormPenalty, Objective, gradient_by_difference, hvp_by_difference,
    third_derivative_by_hvp_difference,
};
use ndarray::{Array1, Array2};
use proptest::prelude::*;

mod common;

use common::{case, inf_norm, normal_vector};

proptest! {
    // A fixed seed: every run draws the same cases (failures found earlier are also replayed
    // from the committed proptest-regressions file).
    #![proptest_config(ProptestConfig { cases: 128, rng_seed: proptest::test_runner::RngSeed::Fixed(20_220_425), ..ProptestConfig::default() })]

    /// Exact gradient vs coordinate-wise central differences, step 1e-6.
    #[test]
    fn gradient_matches_central_differences(c in case()) {
        let net = c.network();
        let theta = c.point(&net);
        let (loss, g) = net.loss_and_gradient(theta.view());
        let fd = gradient_by_difference(&net, theta.view(), 1e-6);
        // Truncation: eps^2/6 |L'''| ~ 1e-12 * O(10); rounding: 1e-16 |L| / 1e-6 = 1e-10 |L|.
        // 1e-7 (1 + |L| + |g|) leaves a margin of ~100 over both; a wrong term is O(|g|).
        let tol = 1e-7 * (1.0 + loss.abs() + inf_norm(&g));
        prop_assert!(inf_norm(&(&g - &fd)) <= tol, "max error {} > {tol}", inf_norm(&(&g - &fd)));
        prop_assert!((net.loss(theta.view()) - loss).abs() <= 1e-14 * (1.0 + loss.abs()));
    }

    /// Exact HVP vs central differences of the exact gradient, step 1e-5, and Hessian
    /// symmetry <u, Hv> = <Hu, v>.
    #[test]
    fn hvp_matches_gradient_differences_and_is_symmetric(c in case(), dir_seed in any::<u64>()) {
        let net = c.network();
        let theta = c.point(&net);
        let u = normal_vector(net.dim(), 1.0, dir_seed);
        let v = normal_vector(net.dim(), 1.0, dir_seed.wrapping_add(1));
        let hv = net.hvp(theta.view(), v.view());
        let hu = net.hvp(theta.view(), u.view());
        let fd = hvp_by_difference(&net, theta.view(), v.view(), 1e-5);
        // Truncation: eps^2/6 |D4L[v,v,v]| ~ 1e-10 * O(10) |v|^3; rounding: 1e-16 |g| / 1e-5.
        // Relative to |v|^2 (1 + |Hv|), 1e-6 is ~100x above both.
        let scale = (1.0 + inf_norm(&hv)) * v.dot(&v);
        prop_assert!(inf_norm(&(&hv - &fd)) <= 1e-6 * scale, "HVP error {}", inf_norm(&(&hv - &fd)));
        // Symmetry holds exactly in exact arithmetic for a correct R-operator; in floating point
        // both sides are sums of O(dim) products: 1e-12 relative is ~1e4 ulps.
        let lhs = u.dot(&hv);
        let rhs = hu.dot(&v);
        let size = u.dot(&u).sqrt() * hv.dot(&hv).sqrt() + v.dot(&v).sqrt() * hu.dot(&hu).sqrt();
        prop_assert!((lhs - rhs).abs() <= 1e-12 * size.max(1e-300), "{lhs} vs {rhs}");
    }

    /// The HVP against the columns of the dense Hessian: for a network without hidden layers
    /// the Hessian has the closed form (1/n) sum_i J_i^T l''_i J_i, computed here from scratch;
    /// for all networks, the matrix of HVP columns is symmetric before symmetrising.
    #[test]
    fn hvp_matches_dense_hessian(c in case(), dir_seed in any::<u64>()) {
        let net = c.network();
        let theta = c.point(&net);
        let d = net.dim();
        let mut columns = Array2::<f64>::zeros((d, d));
        for j in 0..d {
            let mut e = Array1::zeros(d);
            e[j] = 1.0;
            columns.column_mut(j).assign(&net.hvp(theta.view(), e.view()));
        }
        let scale = 1.0 + columns.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        // Column j is a sum of O(n * width) rounded products: 1e-13 relative is ~500 ulps.
        let asym = (&columns - &columns.t()).iter().fold(0.0f64, |m, x| m.max(x.abs()));
        prop_assert!(asym <= 1e-13 * scale, "asymmetry {asym}");
        if c.hidden.is_empty() {
            let h = glm_hessian(&net, &theta);
            let err = (&columns - &h).iter().fold(0.0f64, |m, x| m.max(x.abs()));
            prop_assert!(err <= 1e-13 * scale, "dense Hessian mismatch {err}");
        }
        // The dense Hessian of the trait equals its HVP columns (symmetrised) ...
        let dense = net.hessian(theta.view());
        let v = normal_vector(d, 1.0, dir_seed);
        let hv = net.hvp(theta.view(), v.view());
        // ... so H v computed both ways agrees to rounding of a d-term dot product.
        let err = inf_norm(&(dense.dot(&v) - &hv));
        prop_assert!(err <= 1e-12 * scale * (1.0 + inf_norm(&v)) * d as f64, "{err}");
    }

    /// Third derivative: exact (networks without hidden layers) vs the central difference of the
    /// HVP, vs a second difference of the gradient that does not use the HVP code at all, and
    /// symmetric in its two directions.
    #[test]
    fn third_derivative_is_right(c in case(), dir_seed in any::<u64>()) {
        let net = c.network();
        let theta = c.point(&net);
        let u = normal_vector(net.dim(), 1.0, dir_seed);
        let v = normal_vector(net.dim(), 1.0, dir_seed.wrapping_add(7));
        let d_uv = net.third_derivative(theta.view(), u.view(), v.view());
        let d_vu = net.third_derivative(theta.view(), v.view(), u.view());
        let by_hvp = third_derivative_by_hvp_difference(&net, theta.view(), u.view(), v.view());
        let eps = 1e-4;
        let g = |a: f64, b: f64| net.gradient((&theta + &(&u * a) + &(&v * b)).view());
        let second_diff = (g(eps, eps) - g(eps, -eps) - g(-eps, eps) + g(-eps, -eps)) / (4.0 * eps * eps);
        let scale = 1.0 + inf_norm(&d_uv);
        // D3 by HVP difference: truncation ~ (6e-6)^2 D5 ~ 1e-10, rounding ~ 1e-16/6e-6 ~ 2e-11.
        prop_assert!(inf_norm(&(&d_uv - &by_hvp)) <= 1e-7 * scale * u.dot(&u) * v.dot(&v));
        // Symmetry: exact for the closed form; for the difference both sides carry ~1e-10 errors.
        prop_assert!(inf_norm(&(&d_uv - &d_vu)) <= 1e-7 * scale * u.dot(&u) * v.dot(&v));
        // Second difference of the gradient, step 1e-4: truncation ~ eps^2 D5 ~ 1e-8 * O(10),
        // rounding ~ 1e-16 |g| / 1e-8 = 1e-8 |g|; 1e-5 relative to |u|^2|v|^2 is >= 100x both.
        prop_assert!(
            inf_norm(&(&d_uv - &second_diff)) <= 1e-5 * scale * u.dot(&u) * v.dot(&v),
            "{}", inf_norm(&(&d_uv - &second_diff))
        );
    }

    /// Minibatch quantities: the mean of the per-batch gradients over a partition into equal
    /// batches is the full gradient; a batch of all examples is the full model.
    #[test]
    fn batch_gradients_average_to_the_full_gradient(c in case(), m in 1usize..=4) {
        let net = c.network();
        let theta = c.point(&net);
        let n = net.n_examples();
        prop_assume!(n % m == 0);
        let b = n / m;
        let all: Vec<usize> = (0..n).collect();
        let mut mean = Array1::<f64>::zeros(net.dim());
        for chunk in all.chunks(b) {
            mean += &(net.batch_gradient(theta.view(), chunk) / m as f64);
        }
        let g = net.gradient(theta.view());
        // Same sums in a different order: rounding only.
        prop_assert!(inf_norm(&(&mean - &g)) <= 1e-13 * (1.0 + inf_norm(&g)));
        let v = normal_vector(net.dim(), 1.0, c.seed);
        prop_assert!(inf_norm(&(net.batch_hvp(theta.view(), &all, v.view()) - net.hvp(theta.view(), v.view()))) <= 1e-13 * (1.0 + inf_norm(&g)) * (1.0 + inf_norm(&v)) * 10.0);
        prop_assert!((net.batch_loss(theta.view(), &all) - net.loss(theta.view())).abs() <= 1e-13 * (1.0 + net.loss(theta.view()).abs()));
    }

    /// The explicit penalty L + c |grad L|^2: exact gradient vs central differences of the
    /// penalised loss.
    #[test]
    fn gradient_norm_penalty_gradient_matches_differences(c in case(), coefficient in 0.0f64..0.5) {
        let net = c.network();
        let theta = c.point(&net);
        let p = GradientNormPenalty { inner: &net, coefficient };
        let (value, g) = p.loss_and_gradient(theta.view());
        let fd = gradient_by_difference(&p, theta.view(), 1e-6);
        // As for the plain gradient (the penalised loss is as smooth, one order of derivatives
        // more), with the same margin.
        let tol = 1e-7 * (1.0 + value.abs() + inf_norm(&g));
        prop_assert!(inf_norm(&(&g - &fd)) <= tol, "{} > {tol}", inf_norm(&(&g - &fd)));
    }

    /// Random symmetric (indefinite) quadratics: gradient, HVP and dense Hessian are A exactly.
    #[test]
    fn quadratic_derivatives_are_exact(eigs in prop::collection::vec(-5.0f64..5.0, 1..=10), seed in any::<u64>()) {
        let q = Quadratic::with_spectrum(&eigs, 1.0, seed).unwrap();
        let d = eigs.len();
        let theta = normal_vector(d, 1.0, seed ^ 3);
        let v = normal_vector(d, 1.0, seed ^ 5);
        let a = q.matrix();
        prop_assert!(inf_norm(&(q.hvp(theta.view(), v.view()) - a.dot(&v))) == 0.0);
        // Central differences of a quadratic have no truncation error: rounding only,
        // 1e-16 |L| / 1e-5 ~ 1e-10.
        let fd = gradient_by_difference(&q, theta.view(), 1e-5);
        prop_assert!(inf_norm(&(&fd - &q.gradient(theta.view()))) <= 1e-8 * (1.0 + q.loss(theta.view()).abs()));
        let fd = hvp_by_difference(&q, theta.view(), v.view(), 1e-3);
        prop_assert!(inf_norm(&(&fd - &a.dot(&v))) <= 1e-10 * (1.0 + inf_norm(&q.gradient(theta.view()))));
        prop_assert!(q.hessian(theta.view()) == *a);
    }
}

/// Closed-form Hessian of a network without hidden layers: $a_i = W x_i + b$ is linear in the
/// parameters with Jacobian $J_i$, so $H = \frac1n\sum_i J_i^\top \ell''(a_i) J_i$, where
/// $\ell''$ is $I$ (squared error), $p(1-p)$ (binary) or $\mathrm{diag}(p) - pp^\top$ (softmax).
fn glm_hessian(net: &Network, theta: &Array1<f64>) -> Array2<f64> {
    let spec = net.spec();
    let (n, d_in) = net.inputs().dim();
    let k = spec.output_dim;
    let dim = net.dim();
    let outputs = net.outputs(theta.view(), net.inputs().view());
    let mut h = Array2::<f64>::zeros((dim, dim));
    for i in 0..n {
        let mut jac = Array2::<f64>::zeros((k, dim));
        for row in 0..k {
            for j in 0..d_in {
                jac[[row, row * d_in + j]] = net.inputs()[[i, j]];
            }
            if spec.bias {
                jac[[row, k * d_in + row]] = 1.0;
            }
        }
        let a = outputs.row(i);
        let curvature = match spec.loss {
            OutputLoss::MeanSquaredError => Array2::eye(k),
            OutputLoss::BinaryCrossEntropy => {
                let p = 1.0 / (1.0 + (-a[0]).exp());
                Array2::from_elem((1, 1), p * (1.0 - p))
            }
            OutputLoss::SoftmaxCrossEntropy => {
                let m = a.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let e = a.mapv(|x| (x - m).exp());
                let p = &e / e.sum();
                Array2::from_diag(&p)
                    - &p.view().insert_axis(ndarray::Axis(1)).dot(&p.view().insert_axis(ndarray::Axis(0)))
            }
        };
        h += &jac.t().dot(&curvature).dot(&jac);
    }
    h / n as f64
}

/// Large arrays take the parallel (rayon) elementwise path and pooled buffers; small batches the
/// serial one. Both must give the same derivatives: the full gradient and HVP on 2,400 examples
/// (hidden activations of 48,000 entries) equal the mean over 12 batches of 200 (2,000
/// entries each), and repeated calls (reusing pooled buffers) return identical results.
#[test]
fn parallel_and_pooled_paths_agree_with_serial_batches() {
    use fullbatch::models::{Activation, mlp};
    for (activation, loss) in
        [(Activation::Tanh, OutputLoss::SoftmaxCrossEntropy), (Activation::Gelu, OutputLoss::MeanSquaredError)]
    {
        let data = fullbatch::data::gaussian_mixture(2400, 5, 4, 2.0, 1).unwrap();
        let net = mlp(&data, &[20, 20], 4, activation, loss).unwrap();
        let theta = net.initial_parameters(2) + normal_vector(net.dim(), 0.1, 3);
        let v = normal_vector(net.dim(), 1.0, 4);
        let g = net.gradient(theta.view());
        let hv = net.hvp(theta.view(), v.view());
        let mut g_mean = Array1::<f64>::zeros(net.dim());
        let mut hv_mean = Array1::<f64>::zeros(net.dim());
        let all: Vec<usize> = (0..2400).collect();
        for chunk in all.chunks(200) {
            g_mean += &(net.batch_gradient(theta.view(), chunk) / 12.0);
            hv_mean += &(net.batch_hvp(theta.view(), chunk, v.view()) / 12.0);
        }
        // Same sums in another order: rounding only.
        assert!(inf_norm(&(&g - &g_mean)) <= 1e-13 * (1.0 + inf_norm(&g)), "{activation:?} gradient");
        assert!(inf_norm(&(&hv - &hv_mean)) <= 1e-13 * (1.0 + inf_norm(&hv)), "{activation:?} hvp");
        assert_eq!(net.gradient(theta.view()), g);
        assert_eq!(net.hvp(theta.view(), v.view()), hv);
    }
}
