//! Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 28x28 greyscale images of clothing in ten
//! classes, 60000 for training and 10000 for testing, read from the gzip-compressed idx files
//! that Debian's `dataset-fashion-mnist` package installs in [`DEFAULT_DIR`].

use std::fmt;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use super::{Dataset, Targets, idx};
use crate::{Error, Result};

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The environment variable that, when set, overrides [`DEFAULT_DIR`].
pub const DIR_ENV: &str = "FULLBATCH_FASHION_MNIST";

/// The side of an image in pixels.
pub const SIDE: usize = 28;

/// The number of pixels of an image, `28 * 28`.
pub const PIXELS: usize = SIDE * SIDE;

/// The number of classes (T-shirt/top, trouser, pullover, dress, coat, sandal, shirt, sneaker,
/// bag, ankle boot).
pub const N_CLASSES: usize = 10;

/// The mean of all pixels of the training images, in `[0, 1]` units (pixel / 255), measured
/// from `train-images-idx3-ubyte.gz`.
pub const TRAIN_PIXEL_MEAN: f64 = 0.286_040_596_988_795_5;

/// The standard deviation (population, over all pixels of all training images) in `[0, 1]`
/// units, measured from `train-images-idx3-ubyte.gz`.
pub const TRAIN_PIXEL_STD: f64 = 0.353_024_244_514_922_4;

/// The directory to read from: the value of [`DIR_ENV`] if it is set and not empty, else
/// [`DEFAULT_DIR`].
pub fn default_dir() -> PathBuf {
    match std::env::var_os(DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DIR),
    }
}

/// The training or the test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The 60000 training examples.
    Train,
    /// The 10000 test examples.
    Test,
}

impl Split {
    /// The file name of the split's images.
    pub fn images_file_name(self) -> &'static str {
        match self {
            Split::Train => "train-images-idx3-ubyte.gz",
            Split::Test => "t10k-images-idx3-ubyte.gz",
        }
    }

    /// The file name of the split's labels.
    pub fn labels_file_name(self) -> &'static str {
        match self {
            Split::Train => "train-labels-idx1-ubyte.gz",
            Split::Test => "t10k-labels-idx1-ubyte.gz",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// The paths of `split`'s images file and labels file in `dir`.
pub fn files(dir: &Path, split: Split) -> (PathBuf, PathBuf) {
    (dir.join(split.images_file_name()), dir.join(split.labels_file_name()))
}

/// Whether all four files (images and labels of both splits) exist in `dir`.
pub fn available(dir: &Path) -> bool {
    [Split::Train, Split::Test].into_iter().all(|split| {
        let (images, labels) = files(dir, split);
        images.is_file() && labels.is_file()
    })
}

/// How pixel bytes become inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalisation {
    /// `x / 255`, in `[0, 1]`.
    UnitInterval,
    /// `(x / 255 - mean) / std`.
    Standardise {
        /// Subtracted after scaling to `[0, 1]`.
        mean: f64,
        /// Divided by after centring; must be positive and finite.
        std: f64,
    },
}

impl Normalisation {
    /// Standardisation with the training set's global pixel statistics, [`TRAIN_PIXEL_MEAN`]
    /// and [`TRAIN_PIXEL_STD`] (the same for every pixel and for both splits).
    pub fn fashion_mnist() -> Normalisation {
        Normalisation::Standardise { mean: TRAIN_PIXEL_MEAN, std: TRAIN_PIXEL_STD }
    }

    /// The input value of a pixel byte.
    pub fn apply(&self, pixel: u8) -> f64 {
        let x = f64::from(pixel) / 255.0;
        match *self {
            Normalisation::UnitInterval => x,
            Normalisation::Standardise { mean, std } => (x - mean) / std,
        }
    }

    /// Checks that a standardisation's mean is finite and its std positive and finite.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming `normalisation.mean` or `normalisation.std`.
    pub fn validate(&self) -> Result<()> {
        if let Normalisation::Standardise { mean, std } = *self {
            if !mean.is_finite() {
                return Err(Error::invalid("normalisation.mean", format!("{mean} is not finite")));
            }
            if !(std.is_finite() && std > 0.0) {
                return Err(Error::invalid("normalisation.std", format!("{std} is not positive and finite")));
            }
        }
        Ok(())
    }
}

impl Default for Normalisation {
    /// [`Normalisation::fashion_mnist`].
    fn default() -> Self {
        Normalisation::fashion_mnist()
    }
}

/// What [`load`] reads and how it prepares it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// The directory holding the four `.gz` files.
    pub dir: PathBuf,
    /// If set, a seeded random subset of this many examples (in shuffled order) instead of the
    /// whole split (in file order).
    pub subset: Option<usize>,
    /// The seed of the subset's draw.
    pub seed: u64,
    /// How pixels become inputs.
    pub normalisation: Normalisation,
}

impl Default for LoadOptions {
    /// [`default_dir`], the whole split, seed 0, [`Normalisation::fashion_mnist`].
    fn default() -> Self {
        LoadOptions { dir: default_dir(), subset: None, seed: 0, normalisation: Normalisation::fashion_mnist() }
    }
}

/// Loads `split` as an $n \times 784$ input matrix (images flattened row-major, normalised) with
/// [`Targets::Classes`] over 10 classes.
///
/// With `options.subset = Some(n)` the examples are the same as
/// [`Dataset::random_subset`]`(n, options.seed)` of the whole split would give, but only those
/// `n` images are converted.
///
/// # Errors
/// [`Error::Io`] or [`Error::BadFile`] from the idx reader; [`Error::BadFile`] if the images are
/// not 28x28, the two files hold different numbers of examples, or a label is above 9;
/// [`Error::InvalidParameter`] if `subset` is zero or larger than the split, or the
/// normalisation is invalid.
pub fn load(split: Split, options: &LoadOptions) -> Result<Dataset> {
    options.normalisation.validate()?;
    let (images_path, labels_path) = files(&options.dir, split);
    let images = idx::read_images(&images_path)?;
    if (images.rows, images.cols) != (SIDE, SIDE) {
        return Err(Error::bad_file(
            &images_path,
            format!("images are {}x{}, expected {SIDE}x{SIDE} for Fashion-MNIST", images.rows, images.cols),
        ));
    }
    let labels = idx::read_labels(&labels_path)?;
    if labels.len() != images.count {
        return Err(Error::bad_file(
            &images_path,
            format!("{} images, but {} has {} labels", images.count, labels_path.display(), labels.len()),
        ));
    }
    if let Some((i, &label)) = labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= N_CLASSES) {
        return Err(Error::bad_file(
            &labels_path,
            format!("label {label} at index {i} is out of range 0..={}", N_CLASSES - 1),
        ));
    }

    let indices: Vec<usize> = match options.subset {
        None => (0..images.count).collect(),
        Some(0) => return Err(Error::invalid("subset", "must be positive")),
        Some(n) if n > images.count => {
            return Err(Error::invalid(
                "subset",
                format!("{n} examples requested but the {split} split has only {}", images.count),
            ));
        }
        Some(n) => subset_indices(images.count, n, options.seed),
    };

    let table: Vec<f64> = (0..=255u8).map(|p| options.normalisation.apply(p)).collect();
    let mut inputs = Array2::<f64>::zeros((indices.len(), PIXELS));
    for (mut row, &i) in inputs.outer_iter_mut().zip(&indices) {
        for (x, &p) in row.iter_mut().zip(images.image(i)) {
            *x = table[usize::from(p)];
        }
    }
    Ok(Dataset {
        inputs,
        targets: Targets::Classes {
            labels: indices.iter().map(|&i| usize::from(labels[i])).collect(),
            n_classes: N_CLASSES,
        },
    })
}

/// The indices that [`Dataset::random_subset`]`(n, seed)` picks from `count` examples, found by
/// running it on a featureless data set whose labels are the example indices.
fn subset_indices(count: usize, n: usize, seed: u64) -> Vec<usize> {
    let index_set = Dataset {
        inputs: Array2::zeros((count, 0)),
        targets: Targets::Classes { labels: (0..count).collect(), n_classes: count },
    };
    match index_set.random_subset(n, seed).targets {
        Targets::Classes { labels, .. } => labels,
        Targets::Values(_) => unreachable!("random_subset keeps class targets"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::IdxImages;

    /// Writes a small split (`count` images of `side x side`) with the given labels into `dir`.
    fn write_split(dir: &Path, split: Split, side: usize, labels: &[u8]) {
        let count = labels.len();
        let images = IdxImages {
            count,
            rows: side,
            cols: side,
            pixels: (0..count * side * side).map(|i| (i % 251) as u8).collect(),
        };
        let (ip, lp) = files(dir, split);
        idx::write_images(&ip, &images).unwrap();
        idx::write_labels(&lp, labels).unwrap();
    }

    #[test]
    fn file_names_and_availability() {
        let dir = tempfile::tempdir().unwrap();
        let (i, l) = files(dir.path(), Split::Train);
        assert_eq!(i, dir.path().join("train-images-idx3-ubyte.gz"));
        assert_eq!(l, dir.path().join("train-labels-idx1-ubyte.gz"));
        let (i, l) = files(dir.path(), Split::Test);
        assert_eq!(i, dir.path().join("t10k-images-idx3-ubyte.gz"));
        assert_eq!(l, dir.path().join("t10k-labels-idx1-ubyte.gz"));
        assert!(!available(dir.path()));
        write_split(dir.path(), Split::Train, SIDE, &[1, 2]);
        assert!(!available(dir.path()));
        write_split(dir.path(), Split::Test, SIDE, &[3]);
        assert!(available(dir.path()));
        assert_eq!(Split::Test.to_string(), "test");
    }

    #[test]
    fn normalisations() {
        assert_eq!(Normalisation::UnitInterval.apply(0), 0.0);
        assert_eq!(Normalisation::UnitInterval.apply(255), 1.0);
        let s = Normalisation::Standardise { mean: 0.5, std: 0.25 };
        assert!((s.apply(255) - 2.0).abs() < 1e-12);
        assert!((s.apply(0) + 2.0).abs() < 1e-12);
        assert_eq!(Normalisation::default(), Normalisation::fashion_mnist());
        assert!(Normalisation::Standardise { mean: 0.0, std: 0.0 }.validate().is_err());
        assert!(Normalisation::Standardise { mean: f64::NAN, std: 1.0 }.validate().is_err());
        assert!(Normalisation::fashion_mnist().validate().is_ok());
    }

    #[test]
    fn default_options() {
        let o = LoadOptions::default();
        assert_eq!(o.subset, None);
        assert_eq!(o.seed, 0);
        assert_eq!(o.normalisation, Normalisation::fashion_mnist());
        assert_eq!(o.dir, default_dir());
    }

    #[test]
    fn load_small_split_and_subset_matches_random_subset() {
        let dir = tempfile::tempdir().unwrap();
        let labels: Vec<u8> = (0..30).map(|i| (i % 10) as u8).collect();
        write_split(dir.path(), Split::Train, SIDE, &labels);
        let mut options = LoadOptions {
            dir: dir.path().to_path_buf(),
            subset: None,
            seed: 7,
            normalisation: Normalisation::UnitInterval,
        };
        let full = load(Split::Train, &options).unwrap();
        assert_eq!(full.inputs.dim(), (30, PIXELS));
        assert_eq!(full.labels().unwrap()[..3], [0, 1, 2]);
        assert_eq!(full.inputs[[0, 5]], 5.0 / 255.0);
        assert_eq!(full.inputs[[1, 0]], (PIXELS % 251) as f64 / 255.0);
        options.subset = Some(12);
        let sub = load(Split::Train, &options).unwrap();
        assert_eq!(sub, full.random_subset(12, 7));
        options.subset = Some(30);
        assert_eq!(load(Split::Train, &options).unwrap(), full.random_subset(30, 7));
        options.subset = Some(0);
        assert!(matches!(load(Split::Train, &options), Err(Error::InvalidParameter { .. })));
    }

    /// Recomputes the training set's pixel mean and std from the real file and checks the
    /// constants behind [`Normalisation::fashion_mnist`].
    #[test]
    fn normalisation_constants_match_training_file() {
        let dir = default_dir();
        let (images_path, _) = files(&dir, Split::Train);
        if !images_path.is_file() {
            println!("skipped: {} not found (install dataset-fashion-mnist or set {DIR_ENV})", images_path.display());
            return;
        }
        let images = idx::read_images(&images_path).unwrap();
        assert_eq!((images.count, images.rows, images.cols), (60000, 28, 28));
        let mut histogram = [0u64; 256];
        for &p in &images.pixels {
            histogram[usize::from(p)] += 1;
        }
        let n = images.pixels.len() as f64;
        let mean = histogram.iter().enumerate().map(|(v, &c)| v as f64 / 255.0 * c as f64).sum::<f64>() / n;
        let var =
            histogram.iter().enumerate().map(|(v, &c)| (v as f64 / 255.0 - mean).powi(2) * c as f64).sum::<f64>() / n;
        println!("training pixel mean {mean:.17}, std {:.17}", var.sqrt());
        assert!((mean - TRAIN_PIXEL_MEAN).abs() < 1e-4, "mean {mean}");
        assert!((var.sqrt() - TRAIN_PIXEL_STD).abs() < 1e-4, "std {}", var.sqrt());
    }
}
