//! The stability edge of each optimizer (`Momentum::stability_limit`): on a quadratic direction
//! of curvature λ with coupled weight decay w, the step's linear map has spectral radius below 1
//! just under s = h(λ + w) = limit and above 1 just over it; and the optimizer's own update
//! (`MomentumStep::apply`) decays or grows accordingly. Tolerances: the radius is tested at
//! limit·(1 ∓ 1e-6) (its slope there is O(1), so the margin is far above rounding); the
//! optimizer at limit·(1 ∓ 0.05) over 4,000 steps, where |θ| changes by a factor far from 1.

use fullbatch::optim::{Momentum, MomentumStep};
use ndarray::Array1;
use proptest::prelude::*;

fn variants(beta: f64) -> [Momentum; 3] {
    [Momentum::None, Momentum::HeavyBall(beta), Momentum::Nesterov(beta)]
}

/// |θ| after `steps` updates of the optimizer on L = κθ²/2 with coupled weight decay `wd`
/// (gradient (κ + wd)θ), from θ = 1; it stops early once |θ| leaves [1e-9, 1e9] (before
/// overflow).
fn run(momentum: Momentum, kappa: f64, wd: f64, lr: f64, steps: usize) -> f64 {
    let mut theta = Array1::from_elem(1, 1.0);
    let mut state = MomentumStep::new(momentum);
    for _ in 0..steps {
        let g = &theta * (kappa + wd);
        state.apply(&mut theta, g.view(), lr);
        if !(1e-9..=1e9).contains(&theta[0].abs()) {
            break;
        }
    }
    theta[0].abs()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(20_220_425), ..ProptestConfig::default() })]

    #[test]
    fn spectral_radius_crosses_one_at_the_limit(beta in 0.0f64..0.99) {
        for m in variants(beta) {
            let limit = m.stability_limit();
            prop_assert!(m.step_spectral_radius(limit * (1.0 - 1e-6)) < 1.0, "{m:?} below the limit");
            prop_assert!(m.step_spectral_radius(limit * (1.0 + 1e-6)) > 1.0, "{m:?} above the limit");
            // Stable everywhere in (0, limit): the radius stays below 1 on a grid.
            for i in 1..100 {
                let s = limit * i as f64 / 100.0;
                prop_assert!(m.step_spectral_radius(s) < 1.0, "{m:?} unstable at s = {s}");
            }
        }
    }

    #[test]
    fn the_optimizer_diverges_exactly_beyond_the_limit(
        beta in 0.0f64..0.9,
        kappa in 0.1f64..100.0,
        wd in prop_oneof![Just(0.0), 1e-4f64..1.0],
    ) {
        for m in variants(beta) {
            let edge = m.stability_limit() / (kappa + wd);
            let below = run(m, kappa, wd, 0.95 * edge, 4_000);
            let above = run(m, kappa, wd, 1.05 * edge, 4_000);
            prop_assert!(below < 1e-3, "{m:?} at 0.95 of the edge: |theta| = {below}");
            prop_assert!(above > 1e3, "{m:?} at 1.05 of the edge: |theta| = {above}");
        }
    }
}

#[test]
fn the_limits_at_beta_0_9() {
    // The values the paper's configs meet (Nesterov 0.9): 2/h would be off by a factor 1.47.
    assert_eq!(Momentum::None.stability_limit(), 2.0);
    assert!((Momentum::HeavyBall(0.9).stability_limit() - 3.8).abs() < 1e-15);
    assert!((Momentum::Nesterov(0.9).stability_limit() - 3.8 / 2.8).abs() < 1e-15);
}
