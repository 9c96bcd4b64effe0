//! What the eigensolvers share: counted operator applications, and bases of vectors stored as
//! the rows of one matrix with blocked classical Gram-Schmidt over them (BLAS level 2 and 3).

use ndarray::linalg::general_mat_vec_mul;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, s};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::LinearOperator;
use crate::{Error, Result};

/// Counts applications and rejects non-finite results.
pub(super) struct Counted<'a> {
    /// The operator.
    pub(super) op: &'a dyn LinearOperator,
    /// Applications so far.
    pub(super) applications: usize,
}

impl Counted<'_> {
    /// $Av$, counted; an error if any entry is not finite.
    pub(super) fn apply(&mut self, v: ArrayView1<f64>) -> Result<Array1<f64>> {
        self.applications += 1;
        let w = self.op.apply(v);
        if w.iter().all(|x| x.is_finite()) {
            Ok(w)
        } else {
            Err(Error::Diverged { step: self.applications, quantity: "operator application".into() })
        }
    }
}

/// The Euclidean norm.
pub(super) fn norm(x: ArrayView1<f64>) -> f64 {
    x.dot(&x).sqrt()
}

/// Vectors of $\mathbb{R}^d$ stored as the rows of one row-major matrix, so that products with
/// all of them at once are single BLAS calls (level 2 for one vector, level 3 for several): rows
/// `0..len` are in use, the rest is spare capacity (grown by doubling when a push needs it).
pub(super) struct Rows {
    /// Shape (capacity, d), row-major.
    data: Array2<f64>,
    /// Rows in use.
    len: usize,
}

impl Rows {
    /// No rows, with room for `capacity` vectors of length `d` (zero pages: untouched capacity
    /// costs no memory traffic).
    pub(super) fn with_capacity(capacity: usize, d: usize) -> Self {
        Rows { data: Array2::zeros((capacity, d)), len: 0 }
    }

    /// Number of rows in use.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The rows in use, as a `len x d` matrix.
    pub(super) fn view(&self) -> ArrayView2<'_, f64> {
        self.first(self.len)
    }

    /// The first `n` rows in use, as an `n x d` matrix.
    pub(super) fn first(&self, n: usize) -> ArrayView2<'_, f64> {
        assert!(n <= self.len, "{n} rows asked of {}", self.len);
        self.data.slice(s![..n, ..])
    }

    /// Row `i` (in use).
    pub(super) fn row(&self, i: usize) -> ArrayView1<'_, f64> {
        assert!(i < self.len, "row {i} of {}", self.len);
        self.data.row(i)
    }

    /// Drops every row (the storage stays).
    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes `n` rows the rows in use, with unspecified contents (the caller fills them), and
    /// returns them.
    pub(super) fn reset(&mut self, n: usize) -> ArrayViewMut2<'_, f64> {
        if n > self.data.nrows() {
            self.data = Array2::zeros((n, self.data.ncols()));
        }
        self.len = n;
        self.data.slice_mut(s![..n, ..])
    }

    /// Appends a row whose contents are unspecified (the caller fills it) and returns the rows
    /// before it and the new row.
    pub(super) fn push(&mut self) -> (ArrayViewMut2<'_, f64>, ArrayViewMut1<'_, f64>) {
        if self.len == self.data.nrows() {
            let mut grown = Array2::zeros(((2 * self.len).max(1), self.data.ncols()));
            grown.slice_mut(s![..self.len, ..]).assign(&self.view());
            self.data = grown;
        }
        let n = self.len;
        self.len += 1;
        let (before, after) = self.data.slice_mut(s![..n + 1, ..]).split_at(Axis(0), n);
        (before, after.index_axis_move(Axis(0), 0))
    }

    /// Appends a copy of `x`.
    pub(super) fn push_copy(&mut self, x: ArrayView1<f64>) {
        self.push().1.assign(&x);
    }

    /// Removes row `i`, moving the last row into its place (as [`Vec::swap_remove`]).
    pub(super) fn swap_remove(&mut self, i: usize) {
        assert!(i < self.len, "row {i} of {}", self.len);
        let last = self.len - 1;
        if i != last {
            let (mut target, source) = self.data.multi_slice_mut((s![i, ..], s![last, ..]));
            target.assign(&source);
        }
        self.len = last;
    }
}

/// One pass of blocked classical Gram-Schmidt against the rows of `block`: $h = Vw$, then
/// $w \leftarrow w - V^\top h$ (two matrix-vector products); `h` receives the coefficients.
pub(super) fn project_out(w: &mut ArrayViewMut1<f64>, block: ArrayView2<f64>, h: &mut Array1<f64>) {
    if block.nrows() == 0 {
        return;
    }
    general_mat_vec_mul(1.0, &block, &*w, 0.0, h);
    general_mat_vec_mul(-1.0, &block.t(), &*h, 1.0, w);
}

/// Removes from `w` its components along the rows of every block of `against` (each block
/// orthonormal, and the blocks orthogonal to each other) by blocked classical Gram-Schmidt applied
/// twice (DGKS: the second pass removes what rounding left after the first); each pass treats the
/// blocks in order. Returns the coefficients removed along the rows of the last block, summed over
/// both passes (empty without blocks).
pub(super) fn orthogonalise(mut w: ArrayViewMut1<f64>, against: &[ArrayView2<f64>]) -> Array1<f64> {
    let mut scratch: Vec<Array1<f64>> = against.iter().map(|b| Array1::zeros(b.nrows())).collect();
    let mut total = Array1::zeros(against.last().map_or(0, |b| b.nrows()));
    for _ in 0..2 {
        for (block, h) in against.iter().zip(&mut scratch) {
            project_out(&mut w, *block, h);
        }
        if let Some(h) = scratch.last() {
            total += h;
        }
    }
    total
}

/// Fills `out` with a random unit vector (standard normal entries drawn in order from `rng`)
/// orthogonal to the rows of the blocks of `against`.
pub(super) fn random_unit(mut out: ArrayViewMut1<f64>, rng: &mut ChaCha8Rng, against: &[ArrayView2<f64>]) {
    loop {
        out.iter_mut().for_each(|x| *x = StandardNormal.sample(rng));
        orthogonalise(out.view_mut(), against);
        let n = norm(out.view());
        if n > 1e-8 {
            out /= n;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray_linalg::QR;
    use rand::SeedableRng;

    /// `n` orthonormal rows of length `d`: the transposed Q factor of a seeded Gaussian matrix.
    fn orthonormal_rows(d: usize, n: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = Array2::from_shape_fn((d, n), |_| StandardNormal.sample(&mut rng));
        let (q, _) = a.qr().expect("QR of a Gaussian matrix");
        q.t().as_standard_layout().into_owned()
    }

    /// Blocked classical Gram-Schmidt, twice, against a locked block and a basis block: the
    /// result is orthogonal to both to 1e-14 relative, of the input's norm and of its own even
    /// when all but 1e-12 of the input lay in the span (measured: about 1e-16 of its own), and
    /// the coefficients returned are the basis block's projections of the input.
    #[test]
    fn blocked_gram_schmidt_leaves_w_orthogonal() {
        let d = 3000;
        let rows = orthonormal_rows(d, 25, 1);
        let (locked, basis) = (rows.slice(s![..5, ..]), rows.slice(s![5.., ..]));
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for outside in [1.0, 1e-3, 1e-8, 1e-12] {
            let c: Array1<f64> = Array1::from_shape_fn(25, |_| StandardNormal.sample(&mut rng));
            let noise: Array1<f64> = Array1::from_shape_fn(d, |_| StandardNormal.sample(&mut rng));
            let w0 = rows.t().dot(&c) + noise * (outside / (d as f64).sqrt());
            let mut w = w0.clone();
            let h = orthogonalise(w.view_mut(), &[locked, basis]);
            let (n0, n1) = (norm(w0.view()), norm(w.view()));
            let left = rows.dot(&w).iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(left <= 1e-14 * n0, "outside {outside}: {left} vs input norm {n0}");
            assert!(left <= 1e-14 * n1, "outside {outside}: {left} vs output norm {n1}");
            let want = basis.dot(&w0);
            let error = (&h - &want).iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(error <= 1e-13 * n0, "coefficients off by {error}");
        }
    }

    /// `Rows` keeps its rows through growth and removes as `Vec::swap_remove` does.
    #[test]
    fn rows_grow_and_swap_remove_like_a_vec() {
        let mut rows = Rows::with_capacity(1, 3);
        let mut reference: Vec<Array1<f64>> = Vec::new();
        for i in 0..5 {
            let x = Array1::from_elem(3, i as f64);
            rows.push_copy(x.view());
            reference.push(x);
        }
        for i in [1, 3, 2] {
            rows.swap_remove(i);
            reference.swap_remove(i);
        }
        assert_eq!(rows.len(), reference.len());
        for (i, x) in reference.iter().enumerate() {
            assert_eq!(rows.row(i), x.view());
        }
    }
}
