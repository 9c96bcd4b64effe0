//! Data sets: a small in-memory [`Dataset`] type, seeded synthetic generators, and the reader of
//! Fashion-MNIST's idx files ([`fashion_mnist`]).
//! CIFAR-10's binary files and CIFAR-shaped byte images (padded Fashion-MNIST, synthetic, augmentation): [`cifar`].

pub mod cifar;
pub mod fashion_mnist;
pub mod idx;

use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{Error, Result};

/// What a data set's examples are labelled with.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Class labels in `0..n_classes`.
    Classes {
        /// One label per example.
        labels: Vec<usize>,
        /// The number of classes.
        n_classes: usize,
    },
    /// Real-valued targets, one row per example.
    Values(Array2<f64>),
}

/// Examples as rows of `inputs`, with their targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// $n \times d$ inputs.
    pub inputs: Array2<f64>,
    /// $n$ labels or an $n \times k$ target matrix.
    pub targets: Targets,
}

impl Dataset {
    /// The number of examples.
    pub fn len(&self) -> usize {
        self.inputs.nrows()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input dimension.
    pub fn input_dim(&self) -> usize {
        self.inputs.ncols()
    }

    /// The class labels, if the targets are classes.
    pub fn labels(&self) -> Option<&[usize]> {
        match &self.targets {
            Targets::Classes { labels, .. } => Some(labels),
            Targets::Values(_) => None,
        }
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let targets = match &self.targets {
            Targets::Classes { labels, n_classes } => {
                Targets::Classes { labels: indices.iter().map(|&i| labels[i]).collect(), n_classes: *n_classes }
            }
            Targets::Values(y) => Targets::Values(y.select(Axis(0), indices)),
        };
        Dataset { inputs: self.inputs.select(Axis(0), indices), targets }
    }

    /// A seeded random subset of `n` distinct examples (all of them, shuffled, if `n >= len`).
    pub fn random_subset(&self, n: usize, seed: u64) -> Dataset {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(n.min(self.len()));
        self.select(&idx)
    }
}

fn check_positive(field: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::invalid(field, "must be positive"));
    }
    Ok(())
}

fn gaussian_matrix(rows: usize, cols: usize, scale: f64, rng: &mut ChaCha8Rng) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |_| {
        let z: f64 = StandardNormal.sample(rng);
        z * scale
    })
}

/// A mixture of `n_classes` isotropic Gaussians in $\mathbb{R}^d$: class means drawn
/// $\mathcal N(0, (\text{separation}^2/d) I)$, so their distances are about
/// $\sqrt2\,\text{separation}$; each example is its class mean plus $\mathcal N(0, I)$ noise.
/// Classes are assigned round-robin, then shuffled, so the counts differ by at most one.
///
/// # Errors
/// [`Error::InvalidParameter`] for a zero size or fewer than two classes.
pub fn gaussian_mixture(n: usize, dim: usize, n_classes: usize, separation: f64, seed: u64) -> Result<Dataset> {
    check_positive("n", n)?;
    check_positive("dim", dim)?;
    if n_classes < 2 {
        return Err(Error::invalid("n_classes", "need at least 2 classes"));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let means = gaussian_matrix(n_classes, dim, separation / (dim as f64).sqrt(), &mut rng);
    let mut labels: Vec<usize> = (0..n).map(|i| i % n_classes).collect();
    labels.shuffle(&mut rng);
    let noise = gaussian_matrix(n, dim, 1.0, &mut rng);
    let inputs = Array2::from_shape_fn((n, dim), |(i, j)| means[[labels[i], j]] + noise[[i, j]]);
    Ok(Dataset { inputs, targets: Targets::Classes { labels, n_classes } })
}

/// A random tanh teacher network $f(x) = W_2 \tanh(W_1 x / \sqrt d)$ with standard normal
/// weights, on standard normal inputs.
pub struct Teacher {
    w1: Array2<f64>,
    w2: Array2<f64>,
}

impl Teacher {
    /// A seeded teacher with `dim` inputs, `hidden` units and `outputs` outputs.
    pub fn new(dim: usize, hidden: usize, outputs: usize, seed: u64) -> Teacher {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Teacher {
            w1: gaussian_matrix(hidden, dim, 1.0 / (dim as f64).sqrt(), &mut rng),
            w2: gaussian_matrix(outputs, hidden, 1.0 / (hidden as f64).sqrt(), &mut rng),
        }
    }

    /// The teacher's outputs on the rows of `x`.
    pub fn outputs(&self, x: &Array2<f64>) -> Array2<f64> {
        x.dot(&self.w1.t()).mapv(f64::tanh).dot(&self.w2.t())
    }
}

/// Teacher-student regression: inputs $\mathcal N(0, I_d)$, targets a random [`Teacher`]'s
/// outputs plus $\mathcal N(0, \text{noise}^2)$.
///
/// # Errors
/// [`Error::InvalidParameter`] for a zero size.
pub fn teacher_student_regression(
    n: usize,
    dim: usize,
    hidden: usize,
    outputs: usize,
    noise: f64,
    seed: u64,
) -> Result<Dataset> {
    for (f, v) in [("n", n), ("dim", dim), ("hidden", hidden), ("outputs", outputs)] {
        check_positive(f, v)?;
    }
    let teacher = Teacher::new(dim, hidden, outputs, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1));
    let inputs = gaussian_matrix(n, dim, 1.0, &mut rng);
    let y = teacher.outputs(&inputs) + gaussian_matrix(n, outputs, noise, &mut rng);
    Ok(Dataset { inputs, targets: Targets::Values(y) })
}

/// Teacher-student classification: the label is the argmax of a random [`Teacher`]'s
/// `n_classes` outputs (learnable exactly by a wide enough student).
///
/// # Errors
/// [`Error::InvalidParameter`] for a zero size or fewer than two classes.
pub fn teacher_student_classes(n: usize, dim: usize, hidden: usize, n_classes: usize, seed: u64) -> Result<Dataset> {
    if n_classes < 2 {
        return Err(Error::invalid("n_classes", "need at least 2 classes"));
    }
    let data = teacher_student_regression(n, dim, hidden, n_classes, 0.0, seed)?;
    let Targets::Values(y) = &data.targets else { unreachable!("regression targets are values") };
    let labels = y
        .outer_iter()
        .map(|row| row.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (j, &v)| if v > b.1 { (j, v) } else { b }).0)
        .collect();
    Ok(Dataset { inputs: data.inputs, targets: Targets::Classes { labels, n_classes } })
}

/// Low-rank linear regression (matrix factorisation / sensing): inputs $\mathcal N(0, I_d)$,
/// targets $x^\top M + $ noise with $M = U V^\top / \sqrt{d}$ of rank `rank`.
///
/// # Errors
/// [`Error::InvalidParameter`] for a zero size.
pub fn low_rank_regression(
    n: usize,
    dim: usize,
    outputs: usize,
    rank: usize,
    noise: f64,
    seed: u64,
) -> Result<Dataset> {
    for (f, v) in [("n", n), ("dim", dim), ("outputs", outputs), ("rank", rank)] {
        check_positive(f, v)?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let u = gaussian_matrix(dim, rank, 1.0, &mut rng);
    let v = gaussian_matrix(outputs, rank, 1.0, &mut rng);
    let m = u.dot(&v.t()) / ((dim * rank) as f64).sqrt();
    let inputs = gaussian_matrix(n, dim, 1.0, &mut rng);
    let y = inputs.dot(&m) + gaussian_matrix(n, outputs, noise, &mut rng);
    Ok(Dataset { inputs, targets: Targets::Values(y) })
}

/// Per-feature standardisation $(x - \mu)/\sigma$ with $\mu, \sigma$ from `reference`'s
/// columns (features with $\sigma = 0$ are only centred). Returns $(\mu, \sigma)$ so a test set
/// can use the training statistics.
pub fn feature_statistics(reference: &Array2<f64>) -> (Array1<f64>, Array1<f64>) {
    let mean = reference.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(reference.ncols()));
    let std = reference.std_axis(Axis(0), 0.0).mapv(|s| if s > 0.0 { s } else { 1.0 });
    (mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_seeded_and_shaped() {
        let a = gaussian_mixture(30, 4, 3, 3.0, 5).unwrap();
        let b = gaussian_mixture(30, 4, 3, 3.0, 5).unwrap();
        let c = gaussian_mixture(30, 4, 3, 3.0, 6).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let labels = a.labels().unwrap();
        for k in 0..3 {
            assert_eq!(labels.iter().filter(|&&l| l == k).count(), 10);
        }
        let t = teacher_student_classes(50, 6, 8, 4, 1).unwrap();
        assert_eq!(t.inputs.dim(), (50, 6));
        assert!(t.labels().unwrap().iter().all(|&l| l < 4));
        let r = low_rank_regression(20, 5, 3, 2, 0.0, 1).unwrap();
        let Targets::Values(y) = &r.targets else { panic!() };
        assert_eq!(y.dim(), (20, 3));
        assert!(gaussian_mixture(0, 4, 3, 1.0, 0).is_err());
    }

    #[test]
    fn subset_is_distinct_examples() {
        let a = gaussian_mixture(40, 2, 2, 1.0, 0).unwrap();
        let s = a.random_subset(10, 3);
        assert_eq!(s.len(), 10);
        let rows: Vec<_> = s.inputs.outer_iter().map(|r| r.to_vec()).collect();
        for i in 0..rows.len() {
            for j in 0..i {
                assert_ne!(rows[i], rows[j]);
            }
        }
    }
}
