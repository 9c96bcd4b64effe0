//! The library's one error type.
//!
//! Numerical failures and bad input are values of [`Error`]; a broken invariant (for example a
//! parameter vector of the wrong length handed to a model) is a programming error and panics.

use std::path::PathBuf;

/// Everything that can go wrong in `fullbatch` and is the caller's or the data's fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file was read but its contents are not what its format requires.
    #[error("{path}: {problem}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, naming the field or value.
        problem: String,
    },
    /// A parameter or configuration value is out of its allowed range.
    #[error("invalid {field}: {problem}")]
    InvalidParameter {
        /// The parameter's name.
        field: String,
        /// Why the value is rejected.
        problem: String,
    },
    /// An iteration produced a non-finite value.
    #[error("diverged at step {step}: {quantity} is not finite")]
    Diverged {
        /// The step at which the non-finite value appeared (0-based).
        step: usize,
        /// What became non-finite.
        quantity: String,
    },
    /// An adaptive integrator used up its step budget before the end time: the field is stiff
    /// or not smooth (a ReLU network's gradient jumps at every kink the flow crosses, and each
    /// jump forces the step down to the tolerance).
    #[error(
        "integration stopped at t = {reached} of {t_end}: {steps} steps (accepted and rejected) used up the budget"
    )]
    StepBudget {
        /// The step budget (accepted and rejected steps).
        steps: usize,
        /// The time reached.
        reached: f64,
        /// The end time asked for.
        t_end: f64,
    },
    /// A LAPACK routine failed.
    #[error("linear algebra: {0}")]
    Linalg(#[from] ndarray_linalg::error::LinalgError),
    /// A figure could not be drawn or written.
    #[error("figure {path}: {message}")]
    Plot {
        /// The figure's file.
        path: PathBuf,
        /// The drawing backend's message.
        message: String,
    },
}

/// `Result` with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::InvalidParameter`] for `field`.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidParameter { field: field.into(), problem: problem.into() }
    }

    /// An [`Error::BadFile`] for `path`.
    pub fn bad_file(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::BadFile { path: path.into(), problem: problem.into() }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
