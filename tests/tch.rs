//! Tests of the LibTorch backend (feature `tch`) on the CPU: its ResNet-18 gradient against the
//! Flex backend's, and a tiny training run whose loss falls and whose resume is exact.
//!
//! Run with `make test-tch`, which installs libtorch 2.11 (from the torch wheel) when missing
//! and builds in release. CI does not run these (libtorch is 4.6 GB with its CUDA libraries).
#![cfg(feature = "tch")]

use burn::backend::flex::FlexDevice;
use burn::backend::libtorch::LibTorchDevice;
use fullbatch::deep::bench::gradient_agreement;
use fullbatch::deep::{CpuAutodiff, TchAutodiff};

mod common;
use common::train_run::check_resume_on;

/// Relative L2 tolerance between the two backends' gradients of one minibatch.
///
/// Both compute in `f32` from bit-identical weights and images, but with different convolution
/// algorithms and summation orders (libtorch's oneDNN kernels vs Flex's), so their rounding errors
/// differ: one rounding is 6e-8 relative, and a width-8 ResNet-18 sums up to 3·3·64 = 576 products
/// per output in each of 20 layers, with BatchNorm dividing by batch standard deviations. Measured
/// (`make test-tch`, printed): 1.4e-6. The bound 1e-5 leaves a factor of 7 for other seeds and
/// thread counts, and is still far below what a wrong gradient (a missing term, a wrong BatchNorm
/// mode) gives: order 1e-1 to 1.
const GRADIENT_TOLERANCE: f64 = 1e-5;

#[test]
fn libtorch_and_flex_gradients_agree() {
    let report = gradient_agreement::<TchAutodiff, CpuAutodiff>(
        &LibTorchDevice::Cpu,
        &FlexDevice,
        8,
        16,
        16,
        GRADIENT_TOLERANCE,
        5,
    )
    .unwrap();
    println!("{report:?}");
    assert!(report.entries > 100_000, "{} gradient entries", report.entries);
    assert!((report.loss_a - report.loss_b).abs() <= 1e-5 * report.loss_b.abs(), "{report:?}");
    assert!(report.pass, "relative L2 difference {:.3e} above {GRADIENT_TOLERANCE:e}", report.rel_l2);
}

#[test]
fn libtorch_run_trains_and_resumes_exactly() {
    check_resume_on::<TchAutodiff>(&LibTorchDevice::Cpu, "tch-cpu-f32");
}
