//! Smooth elementwise activations $\sigma$ with their first and second derivatives, and the
//! activation applied to a whole array.
//!
//! # tanh over arrays
//! glibc's `tanh` is correctly rounded to about 1 ulp but scalar (about 20 ns per entry here),
//! and it was the largest cost of an MLP's loss after the matrix products. [`Activation::apply`]
//! computes tanh over contiguous arrays with a branch-free formula that the compiler vectorises
//! (compiled for AVX-512 and for AVX2 + FMA, chosen at run time; the portable build otherwise):
//! with $y = \min(2|x|, 40)$,
//! $$\tanh x = \operatorname{sign}(x)\,\frac{t}{t + 2}, \qquad t = \operatorname{expm1}(y) = 2^k\,(\operatorname{expm1}(r) + 1) - 1,$$
//! where $y = k\ln 2 + r$, $|r| \le \tfrac12 \ln 2$ (Cody-Waite: $\ln 2$ in two parts), and
//! $\operatorname{expm1}(r)$ is its Taylor polynomial to degree 13 (remainder below $10^{-17}$
//! relative). At $y = 40$, $t/(t+2)$ rounds to 1, so the clamp changes no result; NaN passes
//! through. Error: at most 4 ulp against glibc's tanh (tested below over $10^6$ points from
//! $10^{-300}$ to $10^3$). Small arrays use the same formula, so results do not depend on size.

use ndarray::{ArrayView2, ArrayViewMut2, Zip};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A smooth elementwise activation $\sigma$.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// $\sigma(x) = x$ (deep linear networks).
    Identity,
    /// $\sigma(x) = \tanh x$.
    Tanh,
    /// $\sigma(x) = \log(1 + e^x)$.
    Softplus,
    /// $\sigma(x) = x\,\Phi(x)$ with $\Phi$ the standard normal CDF (exact, erf-based GELU).
    Gelu,
}

const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// $1/\sqrt{2\pi}$.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Arrays with at least this many entries are updated elementwise on all cores (rayon); smaller
/// ones on the calling thread, where rayon's overhead would dominate.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// The logistic function $1/(1+e^{-x})$, without overflow.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// $\log(1 + e^x)$, without overflow.
pub(crate) fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

impl Activation {
    /// $\sigma(a)$.
    pub fn value(self, a: f64) -> f64 {
        match self {
            Activation::Identity => a,
            Activation::Tanh => tanh(a),
            Activation::Softplus => softplus(a),
            Activation::Gelu => a * 0.5 * (1.0 + libm::erf(a * INV_SQRT_2)),
        }
    }

    /// $\sigma'(a)$, given also $z = \sigma(a)$ (cheaper for tanh).
    pub fn first(self, a: f64, z: f64) -> f64 {
        match self {
            Activation::Identity => 1.0,
            Activation::Tanh => 1.0 - z * z,
            Activation::Softplus => sigmoid(a),
            Activation::Gelu => 0.5 * (1.0 + libm::erf(a * INV_SQRT_2)) + a * INV_SQRT_2PI * (-0.5 * a * a).exp(),
        }
    }

    /// $\sigma''(a)$, given also $z = \sigma(a)$.
    pub fn second(self, a: f64, z: f64) -> f64 {
        match self {
            Activation::Identity => 0.0,
            Activation::Tanh => -2.0 * z * (1.0 - z * z),
            Activation::Softplus => {
                let s = sigmoid(a);
                s * (1.0 - s)
            }
            Activation::Gelu => INV_SQRT_2PI * (-0.5 * a * a).exp() * (2.0 - a * a),
        }
    }

    /// $Z = \sigma(A)$ entrywise, on all cores for large arrays; equal to [`Activation::value`]
    /// entry by entry.
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn apply(self, a: ArrayView2<f64>, mut z: ArrayViewMut2<f64>) {
        assert_eq!(a.shape(), z.shape(), "activation input and output shapes differ");
        let same_layout = a.strides() == z.strides();
        if let (Activation::Tanh, true, Some(a), Some(z)) =
            (self, same_layout, a.as_slice_memory_order(), z.as_slice_memory_order_mut())
        {
            if a.len() >= PARALLEL_MIN {
                a.par_chunks(TANH_CHUNK).zip(z.par_chunks_mut(TANH_CHUNK)).for_each(|(a, z)| tanh_slice(a, z));
            } else {
                tanh_slice(a, z);
            }
            return;
        }
        let zip = Zip::from(&mut z).and(&a);
        if a.len() >= PARALLEL_MIN {
            zip.par_for_each(|z, &a| *z = self.value(a))
        } else {
            zip.for_each(|z, &a| *z = self.value(a))
        }
    }
}

/// Entries per rayon task of the array tanh.
const TANH_CHUNK: usize = 1 << 13;

/// $\ln 2$ in two parts (fdlibm's): the high part has 32 trailing zero bits, so
/// $k \ln 2_{hi}$ is exact.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// $1.5 \cdot 2^{52}$: adding it rounds to an integer held in the low mantissa bits.
const ROUND_SHIFT: f64 = 6_755_399_441_055_744.0;
/// $2|x|$ above which $\tanh x$ rounds to $\pm 1$ ($e^{-40} < 2^{-57}$).
const TANH_SATURATION: f64 = 40.0;

/// $\tanh x$ by the branch-free formula of the module docs.
#[inline(always)]
pub(crate) fn tanh(x: f64) -> f64 {
    let y = 2.0 * x.abs();
    // Not `min`: a NaN must stay NaN.
    let y = if y > TANH_SATURATION { TANH_SATURATION } else { y };
    let shifted = y.mul_add(std::f64::consts::LOG2_E, ROUND_SHIFT);
    let k = shifted - ROUND_SHIFT;
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, y));
    // 2^k from k's bits in the low mantissa of `shifted` (0 <= k <= 58).
    let scale = f64::from_bits((shifted.to_bits() << 52).wrapping_add(1023 << 52));
    // expm1(r) = r + r^2 (1/2! + r/3! + ... + r^11/13!), Horner.
    let mut q: f64 = 1.0 / 6_227_020_800.0; // 1/13!
    for c in [
        1.0 / 479_001_600.0, // 1/12!
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        1.0 / 2.0,
    ] {
        q = q.mul_add(r, c);
    }
    let expm1_r = (r * r).mul_add(q, r);
    let t = scale.mul_add(expm1_r, scale - 1.0);
    (t / (t + 2.0)).copysign(x)
}

/// `z[i] = tanh(a[i])`, compiled for the best vector instructions the CPU has.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512dq+avx512vl+fma", "x86_64+avx2+fma"))]
fn tanh_slice(a: &[f64], z: &mut [f64]) {
    for (z, &a) in z.iter_mut().zip(a) {
        *z = tanh(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Distance in units in the last place between two finite doubles of the same sign.
    fn ulps(a: f64, b: f64) -> u64 {
        if a == b {
            return 0;
        }
        assert_eq!(a.is_sign_negative(), b.is_sign_negative(), "{a} vs {b}");
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn tanh_within_four_ulps_of_glibc() {
        let mut rng = ChaCha8Rng::seed_from_u64(20_220_425);
        let mut worst = (0, 0.0);
        // Log-uniform magnitudes from 1e-300 to 1e3, both signs, plus a dense grid on [-20, 20].
        let random = (0..1_000_000).map(|_| {
            let m = 10f64.powf(rng.random_range(-300.0..3.0));
            if rng.random_bool(0.5) { m } else { -m }
        });
        let grid = (-200_000..=200_000).map(|i| i as f64 * 1e-4);
        for x in random.chain(grid) {
            let u = ulps(tanh(x), x.tanh());
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 4, "tanh off by {} ulp at {}", worst.0, worst.1);
    }

    #[test]
    fn tanh_special_values() {
        assert_eq!(tanh(0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(tanh(-0.0).to_bits(), (-0.0f64).to_bits());
        assert_eq!(tanh(f64::INFINITY), 1.0);
        assert_eq!(tanh(f64::NEG_INFINITY), -1.0);
        // 1 - 2e^{-40} rounds to 1; at 19 the true value rounds to 1 - 2^-53 (glibc gives 1).
        assert_eq!(tanh(20.0), 1.0);
        assert_eq!(tanh(19.0), 1.0 - f64::EPSILON / 2.0);
        assert!(tanh(f64::NAN).is_nan());
        assert_eq!(tanh(5e-324), 5e-324);
    }

    #[test]
    fn array_tanh_equals_scalar_at_every_size() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for n in [1, 7, 100, PARALLEL_MIN + 13] {
            let a = Array2::from_shape_fn((n, 3), |_| rng.random_range(-30.0..30.0));
            let mut z = Array2::zeros((n, 3));
            Activation::Tanh.apply(a.view(), z.view_mut());
            for (z, a) in z.iter().zip(&a) {
                assert_eq!(z.to_bits(), tanh(*a).to_bits());
            }
            // Non-contiguous input (column-major) takes the elementwise path: same values.
            let column_major = a.t().to_owned();
            let mut z2 = Array2::zeros((n, 3));
            Activation::Tanh.apply(column_major.t(), z2.view_mut());
            assert_eq!(z2, z);
        }
    }

    #[test]
    fn activation_derivatives_match_differences() {
        for act in [Activation::Identity, Activation::Tanh, Activation::Softplus, Activation::Gelu] {
            for &a in &[-3.0, -0.7, 0.0, 0.4, 2.5] {
                let h = 1e-5;
                let z = act.value(a);
                let d1 = (act.value(a + h) - act.value(a - h)) / (2.0 * h);
                let d2 = (act.first(a + h, act.value(a + h)) - act.first(a - h, act.value(a - h))) / (2.0 * h);
                // Central differences with h = 1e-5 on O(1) functions: error ~1e-10.
                assert!((act.first(a, z) - d1).abs() < 1e-8, "{act:?} first at {a}");
                assert!((act.second(a, z) - d2).abs() < 1e-8, "{act:?} second at {a}");
            }
        }
    }
}
