#![cfg(feature = "burn")]
//! Backward-error analysis on a small ResNet written in burn (`f64` on Flex, BatchNorm in
//! training mode on the full batch): its derivatives are right, and the unchanged `bea` harness
//! measures GD's local orders 2 and 3 and the coefficient 1/4 with smooth activations.

mod common;

use common::{inf_norm, normal_vector};
use fullbatch::bea::{GdFlow, expansion_rate, gd_coefficient, gd_local_order};
use fullbatch::data::cifar;
use fullbatch::deep::flat_resnet::{FlatResNet, FlatResNetSpec, ResNetActivation};
use fullbatch::derivative_check::geometric_steps;
use fullbatch::integrate::AdaptiveParams;
use fullbatch::objective::Objective;

/// Width 4, stages [1, 1], on eight 8x8 synthetic images of 4 classes (seed 0).
fn tiny(activation: ResNetActivation) -> (FlatResNet, ndarray::Array1<f64>) {
    let data = cifar::synthetic(8, 3, 8, 4, 20.0, 0).unwrap();
    let net = FlatResNet::new(FlatResNetSpec { width: 4, blocks: vec![1, 1], activation }, &data).unwrap();
    let theta = net.initial_parameters(0);
    (net, theta)
}

/// The gradient (burn's reverse mode) against central differences of the loss along three
/// random directions, within 1e-6 relative, for each activation.
#[test]
fn tiny_resnet_gradient_matches_differences_of_the_loss() {
    for activation in [ResNetActivation::Gelu, ResNetActivation::Softplus, ResNetActivation::Relu] {
        let (net, theta) = tiny(activation);
        let g = net.gradient(theta.view());
        for seed in 0..3 {
            let v = normal_vector(net.dim(), 1.0, seed);
            let eps = 1e-5;
            let fd = (net.loss((&theta + &(&v * eps)).view()) - net.loss((&theta - &(&v * eps)).view())) / (2.0 * eps);
            let exact = g.dot(&v);
            assert!((fd - exact).abs() <= 1e-6 * exact.abs().max(1e-3), "{activation:?}: {fd} vs {exact}");
        }
    }
}

/// With BatchNorm after every convolution the loss is invariant to scaling the stem's weights
/// (the first 108 parameters: 4 x 3 x 3 x 3), so the gradient is orthogonal to them.
#[test]
fn batch_norm_makes_the_loss_invariant_to_a_convolution_scale() {
    let (net, theta) = tiny(ResNetActivation::Gelu);
    let mut scaled = theta.clone();
    scaled.slice_mut(ndarray::s![..108]).mapv_inplace(|x| 3.0 * x);
    let (l, l3) = (net.loss(theta.view()), net.loss(scaled.view()));
    // Not exactly invariant: BatchNorm's epsilon (1e-5) against the variance.
    assert!((l - l3).abs() <= 1e-4 * l, "{l} vs {l3}");
    let g = net.gradient(theta.view());
    let w = theta.slice(ndarray::s![..108]);
    let cos = g.slice(ndarray::s![..108]).dot(&w) / (inf_norm(&g) * w.dot(&w).sqrt());
    assert!(cos.abs() <= 1e-4, "cosine {cos}");
}

/// GD on the tiny ResNet, measured by the unchanged harness at steps 0.1-0.01 of the expansion's
/// time scale: local order 2 against the plain flow and 3 against the first-order modified flow
/// (slopes within 0.15), and the coefficient within 1% of 1/4, for GELU and softplus (measured:
/// c = 0.250002 and 0.250028, slopes 1.99-2.00 and 2.99-3.01). ReLU is left out: its kinks break
/// the smoothness the expansion assumes, and the adaptive reference flow did not finish in 90 s.
#[test]
fn tiny_resnet_gd_orders_and_coefficient() {
    let params = AdaptiveParams::default();
    for activation in [ResNetActivation::Gelu, ResNetActivation::Softplus] {
        let (net, theta) = tiny(activation);
        let tau = 1.0 / expansion_rate(&net, theta.view());
        let hs = geometric_steps(0.1 * tau, 0.01 * tau, 6);
        let c = gd_coefficient(&net, theta.view(), &hs, &params).unwrap();
        let plain = gd_local_order(&net, theta.view(), GdFlow::Plain, &hs, &params).unwrap();
        let first = gd_local_order(&net, theta.view(), GdFlow::FirstOrder, &hs, &params).unwrap();
        assert!((c.estimate - 0.25).abs() <= 0.0025, "{activation:?}: c {} per h {:?}", c.estimate, c.per_h);
        assert!((plain.fit.slope - 2.0).abs() <= 0.15, "{activation:?}: plain slope {}", plain.fit.slope);
        assert!((first.fit.slope - 3.0).abs() <= 0.15, "{activation:?}: first-order slope {}", first.fit.slope);
    }
}
