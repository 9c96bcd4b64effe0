//! Loss, gradient and Hessian-vector product of a tanh MLP 784-256-10 with softmax
//! cross-entropy (f64), on n = 1,000 and n = 10,000 seeded synthetic examples, and the matrix
//! products the gradient needs (the floor the gradient is compared against).
//!
//! Run with `cargo bench --bench mlp_derivatives`; `bash benches/side_by_side.sh` runs this and
//! the JAX twin (`benches/jax_mlp.py`) and prints the comparison. See docs/performance.md.
//!
//! Data: `fullbatch::data::gaussian_mixture(n, 784, 10, 3.0, seed)`, synthetic rather than
//! Fashion-MNIST so the bench needs no download and is reproducible bit for bit. The cost of
//! every measured operation depends on the shapes, hardly on the values (only glibc's `tanh`
//! branches on its argument's magnitude).
//!
//! Criterion ids are `<group>/<n>`: groups `loss`, `gradient` (`loss_and_gradient`), `hvp`,
//! `matmuls`; results land in `target/criterion/<group>/<n>/new/estimates.json`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use fullbatch::Objective;
use fullbatch::models::{self, Activation, Network, OutputLoss};
use ndarray::{Array1, Array2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const INPUTS: usize = 784;
const HIDDEN: usize = 256;
const CLASSES: usize = 10;
const SIZES: [usize; 2] = [1_000, 10_000];
const DATA_SEED: u64 = 20_220_425;
const INIT_SEED: u64 = 1;
const DIRECTION_SEED: u64 = 2;

struct Setup {
    net: Network,
    theta: Array1<f64>,
    v: Array1<f64>,
}

fn normal_vector(len: usize, seed: u64) -> Array1<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array1::from_shape_fn(len, |_| StandardNormal.sample(&mut rng))
}

fn normal_matrix(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |_| StandardNormal.sample(rng))
}

fn setup(n: usize) -> Setup {
    let data = fullbatch::data::gaussian_mixture(n, INPUTS, CLASSES, 3.0, DATA_SEED).expect("valid mixture sizes");
    let net = models::mlp(&data, &[HIDDEN], CLASSES, Activation::Tanh, OutputLoss::SoftmaxCrossEntropy)
        .expect("valid network");
    let theta = net.initial_parameters(INIT_SEED);
    let v = normal_vector(net.dim(), DIRECTION_SEED);
    Setup { net, theta, v }
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    // Calls take 5-500 ms: flat sampling (the same iteration count in every sample), 20
    // samples, so the whole bench takes about a minute.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group
}

/// Enough for 20 samples of the slowest call (an HVP at n = 10,000 is about 0.4-0.6 s).
fn measurement_time(n: usize) -> Duration {
    if n >= 10_000 { Duration::from_secs(12) } else { Duration::from_secs(3) }
}

fn bench_derivatives(c: &mut Criterion) {
    // SAFETY: the first thing this process does, before any BLAS call or thread that makes one.
    let kernels = unsafe { fullbatch::blas::select_native_kernels() };
    eprintln!("OpenBLAS kernels: {kernels:?}");
    // benches/side_by_side.sh records which kernels ran.
    if let Some(path) = std::env::var_os("FULLBATCH_BLAS_REPORT") {
        let json = serde_json::to_string(&kernels).expect("serialisable");
        std::fs::write(&path, json).expect("FULLBATCH_BLAS_REPORT is writable");
    }
    let setups: Vec<(usize, Setup)> = SIZES.iter().map(|&n| (n, setup(n))).collect();

    let mut group = configure(c, "loss");
    for (n, s) in &setups {
        group.measurement_time(measurement_time(*n));
        group.bench_with_input(BenchmarkId::from_parameter(n), s, |b, s| {
            b.iter(|| black_box(s.net.loss(black_box(s.theta.view()))))
        });
    }
    group.finish();

    let mut group = configure(c, "gradient");
    for (n, s) in &setups {
        group.measurement_time(measurement_time(*n));
        group.bench_with_input(BenchmarkId::from_parameter(n), s, |b, s| {
            b.iter(|| black_box(s.net.loss_and_gradient(black_box(s.theta.view()))))
        });
    }
    group.finish();

    let mut group = configure(c, "hvp");
    for (n, s) in &setups {
        group.measurement_time(measurement_time(*n));
        group.bench_with_input(BenchmarkId::from_parameter(n), s, |b, s| {
            b.iter(|| black_box(s.net.hvp(black_box(s.theta.view()), black_box(s.v.view()))))
        });
    }
    group.finish();
}

/// The five matrix products of one loss-and-gradient pass, with ndarray's `.dot()` on the same
/// BLAS: forward $X W_1^\top$ ($n\times784\times256$) and $Z_1 W_2^\top$, backward
/// $\Delta_2^\top Z_1$, $\Delta_2 W_2$ and $\Delta_1^\top X$ ($256\times n\times784$).
fn bench_matmuls(c: &mut Criterion) {
    let mut group = configure(c, "matmuls");
    for n in SIZES {
        let mut rng = ChaCha8Rng::seed_from_u64(DATA_SEED ^ n as u64);
        let x = normal_matrix(n, INPUTS, &mut rng);
        let w1 = normal_matrix(HIDDEN, INPUTS, &mut rng);
        let z1 = normal_matrix(n, HIDDEN, &mut rng);
        let w2 = normal_matrix(CLASSES, HIDDEN, &mut rng);
        let d2 = normal_matrix(n, CLASSES, &mut rng);
        let d1 = normal_matrix(n, HIDDEN, &mut rng);
        group.measurement_time(measurement_time(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let a1 = black_box(&x).dot(&black_box(&w1).t()); // X W1^T: n x 256
                let a2 = black_box(&z1).dot(&w2.t()); // Z1 W2^T: n x 10
                let gw2 = black_box(&d2).t().dot(&z1); // D2^T Z1: 10 x 256
                let back = d2.dot(&w2); // D2 W2: n x 256
                let gw1 = black_box(&d1).t().dot(&x); // D1^T X: 256 x 784
                black_box((a1, a2, gw2, back, gw1))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_derivatives, bench_matmuls);
criterion_main!(benches);
