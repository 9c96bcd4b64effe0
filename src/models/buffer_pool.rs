//! Reused buffers for the network engine's temporaries.

use std::sync::Mutex;

use ndarray::{Array2, ShapeBuilder};

/// Spare buffers reused across calls. Large temporaries freed by one call would otherwise go
/// back to the operating system and be faulted in again by the next (glibc returns blocks
/// above its mmap threshold): measured at 25k page faults and ~60 ms per gradient of a
/// 784-256-10 MLP on 10,000 examples (docs/performance.md).
#[derive(Debug, Default)]
pub(super) struct BufferPool(Mutex<Vec<Vec<f64>>>);

/// The most buffers a pool keeps.
const POOL_CAPACITY: usize = 32;

impl Clone for BufferPool {
    fn clone(&self) -> Self {
        BufferPool::default()
    }
}

impl BufferPool {
    /// A column-major `rows x cols` array whose contents are unspecified (a reused buffer of
    /// exactly that size, or zeros): callers overwrite every entry. Column-major because
    /// OpenBLAS writes `X W^T` about 10% faster into it (docs/performance.md).
    pub(super) fn take(&self, rows: usize, cols: usize) -> Array2<f64> {
        let len = rows * cols;
        let reused = {
            let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter().position(|v| v.len() == len).map(|i| pool.swap_remove(i))
        };
        let data = reused.unwrap_or_else(|| vec![0.0; len]);
        Array2::from_shape_vec((rows, cols).f(), data).expect("buffer length is rows * cols")
    }

    /// Returns `a`'s storage to the pool.
    pub(super) fn give(&self, a: Array2<f64>) {
        let (data, _) = a.into_raw_vec_and_offset();
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() == POOL_CAPACITY {
            pool.remove(0);
        }
        pool.push(data);
    }
}
