//! CIFAR-10 (Krizhevsky, 2009) and CIFAR-shaped image sets, as plain bytes.
//!
//! Everything here is plain Rust (no burn): the reader and writer of the official binary format,
//! Fashion-MNIST padded to 32x32 as a one-channel CIFAR-shaped set, a seeded synthetic set with
//! learnable labels, per-channel statistics, normalisation to `f32`, and the standard CIFAR
//! augmentation (random crop with zero padding, horizontal flip), all on [`ImageSet`]s of `u8`
//! pixels laid out `N x C x H x W`.
//!
//! # The binary format
//! The official "CIFAR-10 binary version" is a directory holding `data_batch_1.bin` ..
//! `data_batch_5.bin` (training, 10000 images each) and `test_batch.bin` (10000 test images).
//! Each file is a sequence of 3073-byte records: one label byte in `0..=9`, then 3072 pixel bytes,
//! the 1024 red values, then the 1024 green, then the 1024 blue, each plane row-major 32x32.
//! There is no header, so a file's size must be a multiple of 3073.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::fashion_mnist;
use super::idx;
use crate::{Error, Result};

/// The side of a CIFAR image in pixels.
pub const SIDE: usize = 32;

/// The number of colour channels of a CIFAR image (red, green, blue).
pub const CHANNELS: usize = 3;

/// The pixel bytes of one image, `3 * 32 * 32`.
pub const IMAGE_BYTES: usize = CHANNELS * SIDE * SIDE;

/// The bytes of one record: the label byte and the pixel bytes.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

/// The number of images in each official file.
pub const IMAGES_PER_FILE: usize = 10_000;

/// The number of classes (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck).
pub const N_CLASSES: usize = 10;

/// The five training files, in order.
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];

/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";

/// The per-channel mean of the CIFAR-10 training images in `[0, 1]` units (pixel / 255), the
/// values of the official code's `config/data/CIFAR10.yaml`. Not re-measured here:
/// [`channel_stats`] computes them from the real files when they are present.
pub const CIFAR10_MEAN: [f64; 3] = [0.4914672374725342, 0.4822617471218109, 0.4467701315879822];

/// The per-channel standard deviation (population, over all pixels of all training images) of
/// CIFAR-10 in `[0, 1]` units, as used with [`CIFAR10_MEAN`]. Not re-measured here.
pub const CIFAR10_STD: [f64; 3] = [0.24703224003314972, 0.24348513782024384, 0.26158785820007324];

/// The environment variable that names the CIFAR-10 binary directory for commands and tests.
pub const DIR_ENV: &str = "FULLBATCH_CIFAR10";

/// The training or the test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The 50000 training images ([`TRAIN_FILES`]).
    Train,
    /// The 10000 test images ([`TEST_FILE`]).
    Test,
}

impl Split {
    /// The file names of the split, in reading order.
    pub fn file_names(self) -> &'static [&'static str] {
        match self {
            Split::Train => &TRAIN_FILES,
            Split::Test => std::slice::from_ref(&TEST_FILE),
        }
    }
}

/// `n` images of `channels x height x width` bytes with a class label each.
///
/// Pixels are stored image after image, each channel plane row-major (the `N x C x H x W` layout
/// of the CIFAR files and of burn's image tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// The number of channels.
    pub channels: usize,
    /// The number of pixel rows of each image.
    pub height: usize,
    /// The number of pixel columns of each image.
    pub width: usize,
    /// The number of classes; every label is below it.
    pub n_classes: usize,
    /// `len() * channels * height * width` pixel bytes.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl ImageSet {
    /// An image set, after checking that the sizes agree and the labels are in range.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if a dimension is zero, `pixels` does not hold
    /// `labels.len()` images, `n_classes` is not in `2..=256`, or a label is `>= n_classes`.
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        n_classes: usize,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    ) -> Result<ImageSet> {
        for (field, v) in [("channels", channels), ("height", height), ("width", width)] {
            if v == 0 {
                return Err(Error::invalid(field, "must be positive"));
            }
        }
        if !(2..=256).contains(&n_classes) {
            return Err(Error::invalid("n_classes", format!("{n_classes} is not in 2..=256")));
        }
        let image_len = channels * height * width;
        if pixels.len() != labels.len() * image_len {
            return Err(Error::invalid(
                "pixels",
                format!(
                    "{} bytes for {} images of {channels}x{height}x{width} ({} bytes)",
                    pixels.len(),
                    labels.len(),
                    labels.len() * image_len
                ),
            ));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= n_classes) {
            return Err(Error::invalid("labels", format!("label {l} of image {i} is not below {n_classes}")));
        }
        Ok(ImageSet { channels, height, width, n_classes, pixels, labels })
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The bytes of one image, `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (`C x H x W`, row-major planes).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.pixels[i * len..(i + 1) * len]
    }

    /// The images at `indices`, in that order.
    ///
    /// # Panics
    /// If an index is `>= len()`.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet { pixels, labels: indices.iter().map(|&i| self.labels[i]).collect(), ..self.shape_only() }
    }

    /// A seeded random subset of `n` distinct images in shuffled order (all of them, shuffled, if
    /// `n >= len()`).
    pub fn random_subset(&self, n: usize, seed: u64) -> ImageSet {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(n.min(self.len()));
        self.select(&idx)
    }

    /// The first `n` images (all of them if `n >= len()`).
    pub fn head(&self, n: usize) -> ImageSet {
        let n = n.min(self.len());
        ImageSet {
            pixels: self.pixels[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.shape_only()
        }
    }

    /// An empty set with this set's shape and classes.
    fn shape_only(&self) -> ImageSet {
        ImageSet {
            channels: self.channels,
            height: self.height,
            width: self.width,
            n_classes: self.n_classes,
            pixels: Vec::new(),
            labels: Vec::new(),
        }
    }
}

/// The directory named by [`DIR_ENV`], if it is set and not empty.
pub fn env_dir() -> Option<PathBuf> {
    match std::env::var_os(DIR_ENV) {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => None,
    }
}

/// Reads one file of the binary format: any number of 3073-byte records.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::BadFile`] naming the file if its size is
/// not a multiple of 3073 (the message states the size) or a label is above 9 (the message states
/// the record index and the value).
pub fn read_batch_file(path: &Path) -> Result<ImageSet> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() % RECORD_BYTES != 0 {
        return Err(Error::bad_file(
            path,
            format!(
                "size {} bytes is not a multiple of the record size {RECORD_BYTES} (1 label byte + {IMAGE_BYTES} \
                 pixel bytes)",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        if usize::from(label) >= N_CLASSES {
            return Err(Error::bad_file(
                path,
                format!("record {i}: label {label} is out of range 0..={}", N_CLASSES - 1),
            ));
        }
        labels.push(label);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok(ImageSet { channels: CHANNELS, height: SIDE, width: SIDE, n_classes: N_CLASSES, pixels, labels })
}

/// Reads `split` from the directory `dir` (the training files concatenated in order).
///
/// No count is enforced: files with fewer (or more) than 10000 records are accepted, which lets
/// tests use small files.
///
/// # Errors
/// [`Error::Io`] naming `dir` if it is not a directory, or naming a file that is missing or
/// unreadable; the errors of [`read_batch_file`].
pub fn load(dir: &Path, split: Split) -> Result<ImageSet> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            io::Error::new(io::ErrorKind::NotFound, "the CIFAR-10 binary directory does not exist"),
        ));
    }
    let mut all: Option<ImageSet> = None;
    for name in split.file_names() {
        let part = read_batch_file(&dir.join(name))?;
        match &mut all {
            None => all = Some(part),
            Some(set) => {
                set.pixels.extend_from_slice(&part.pixels);
                set.labels.extend_from_slice(&part.labels);
            }
        }
    }
    all.ok_or_else(|| Error::invalid("split", "has no files"))
}

/// Checks, without reading the images, that `dir` holds every file of both splits, each a
/// non-empty multiple of the 3073-byte record: the check a long job makes before it starts.
///
/// # Errors
/// [`Error::Io`] naming `dir` if it is not a directory, or naming a missing file;
/// [`Error::BadFile`] naming a file of the wrong size (stated).
pub fn check_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            io::Error::new(io::ErrorKind::NotFound, "the CIFAR-10 binary directory does not exist"),
        ));
    }
    for name in Split::Train.file_names().iter().chain(Split::Test.file_names()) {
        let path = dir.join(name);
        let len = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        if len == 0 || len % RECORD_BYTES as u64 != 0 {
            return Err(Error::bad_file(
                &path,
                format!("size {len} bytes is not a positive multiple of the record size {RECORD_BYTES}"),
            ));
        }
    }
    Ok(())
}

/// Writes `set` as one file of the binary format, atomically (a temporary file in the same
/// directory renamed over `path`).
///
/// # Errors
/// [`Error::InvalidParameter`] if the images are not 3x32x32 or a label is above 9;
/// [`Error::Io`] if the file cannot be written.
pub fn write_batch_file(path: &Path, set: &ImageSet) -> Result<()> {
    if (set.channels, set.height, set.width) != (CHANNELS, SIDE, SIDE) {
        return Err(Error::invalid(
            "set",
            format!("images are {}x{}x{}, the CIFAR format needs 3x32x32", set.channels, set.height, set.width),
        ));
    }
    if set.pixels.len() != set.len() * IMAGE_BYTES {
        return Err(Error::invalid("set.pixels", format!("{} bytes for {} images", set.pixels.len(), set.len())));
    }
    if let Some((i, &l)) = set.labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= N_CLASSES) {
        return Err(Error::invalid("set.labels", format!("label {l} of image {i} is above 9")));
    }
    crate::atomic_file::write_with(path, |out| {
        for i in 0..set.len() {
            out.write_all(&[set.labels[i]])?;
            out.write_all(set.image(i))?;
        }
        Ok(())
    })
    .map_err(|e| Error::io(path, e))
}

/// Writes a whole directory in the binary format: `test` into [`TEST_FILE`] and `train` split
/// into the five [`TRAIN_FILES`] in order (the first `len % 5` files get one image more).
/// Creates `dir` if needed.
///
/// # Errors
/// As [`write_batch_file`]; [`Error::Io`] if `dir` cannot be created.
pub fn write_dir(dir: &Path, train: &ImageSet, test: &ImageSet) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let files = TRAIN_FILES.len();
    let mut start = 0;
    for (f, name) in TRAIN_FILES.iter().enumerate() {
        let count = train.len() / files + usize::from(f < train.len() % files);
        let part: Vec<usize> = (start..start + count).collect();
        write_batch_file(&dir.join(name), &train.select(&part))?;
        start += count;
    }
    write_batch_file(&dir.join(TEST_FILE), test)
}

/// Pads each `height x width` plane of `set` with `pad` zero pixels on every side.
pub fn pad_zeros(set: &ImageSet, pad: usize) -> ImageSet {
    let (h, w) = (set.height, set.width);
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    let mut pixels = vec![0u8; set.len() * set.channels * ph * pw];
    for (plane_in, plane_out) in set.pixels.chunks_exact(h * w).zip(pixels.chunks_exact_mut(ph * pw)) {
        for r in 0..h {
            let dst = (r + pad) * pw + pad;
            plane_out[dst..dst + w].copy_from_slice(&plane_in[r * w..(r + 1) * w]);
        }
    }
    ImageSet { pixels, labels: set.labels.clone(), height: ph, width: pw, ..set.shape_only() }
}

/// Fashion-MNIST `split` from `dir` (the idx files of [`fashion_mnist::files`]) as a CIFAR-shaped
/// one-channel set: each 28x28 image padded with two zero pixels on every side to 32x32.
///
/// # Errors
/// The idx reader's errors; [`Error::BadFile`] if the images are not 28x28, the label count
/// differs from the image count, or a label is above 9.
pub fn fashion_mnist_padded(dir: &Path, split: fashion_mnist::Split) -> Result<ImageSet> {
    let (images_path, labels_path) = fashion_mnist::files(dir, split);
    let images = idx::read_images(&images_path)?;
    if (images.rows, images.cols) != (fashion_mnist::SIDE, fashion_mnist::SIDE) {
        return Err(Error::bad_file(
            &images_path,
            format!("images are {}x{}, expected 28x28 for Fashion-MNIST", images.rows, images.cols),
        ));
    }
    let labels = idx::read_labels(&labels_path)?;
    if labels.len() != images.count {
        return Err(Error::bad_file(
            &images_path,
            format!("{} images, but {} has {} labels", images.count, labels_path.display(), labels.len()),
        ));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= fashion_mnist::N_CLASSES) {
        return Err(Error::bad_file(&labels_path, format!("label {l} at index {i} is out of range 0..=9")));
    }
    let raw = ImageSet {
        channels: 1,
        height: images.rows,
        width: images.cols,
        n_classes: fashion_mnist::N_CLASSES,
        pixels: images.pixels,
        labels,
    };
    Ok(pad_zeros(&raw, (SIDE - fashion_mnist::SIDE) / 2))
}

/// A seeded synthetic set of `n` images of `channels x side x side` in `n_classes` classes whose
/// labels a small convolutional network can learn.
///
/// Class `k` has a per-channel brightness offset $m_{k,c} \sim U(-40, 40)$ and a plane wave of
/// spatial frequency $(f_k^x, f_k^y)$ (integers in `0..=3`, not both zero) and amplitude 40;
/// image $i$ of class $k$ has pixels
/// $$x_{c,r,s} = \mathrm{clamp}_{[0,255]}\big(128 + m_{k,c} + 40 \cos(2\pi (f_k^x s + f_k^y r)/\text{side} +
///   \phi_i) + \sigma z\big),\qquad z \sim \mathcal N(0,1),$$
/// with a random phase $\phi_i$ per image (so the class is a texture, not a position) and noise
/// standard deviation $\sigma$ = `noise` (in pixel units). Labels are round-robin, then shuffled.
///
/// # Errors
/// [`Error::InvalidParameter`] for a zero size, fewer than two or more than 256 classes, or a
/// negative or non-finite noise level.
pub fn synthetic(n: usize, channels: usize, side: usize, n_classes: usize, noise: f64, seed: u64) -> Result<ImageSet> {
    for (field, v) in [("n", n), ("channels", channels), ("side", side)] {
        if v == 0 {
            return Err(Error::invalid(field, "must be positive"));
        }
    }
    if !(2..=256).contains(&n_classes) {
        return Err(Error::invalid("n_classes", format!("{n_classes} is not in 2..=256")));
    }
    if !(noise.is_finite() && noise >= 0.0) {
        return Err(Error::invalid("noise", format!("{noise} is not finite and non-negative")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let offsets: Vec<Vec<f64>> =
        (0..n_classes).map(|_| (0..channels).map(|_| rng.random_range(-40.0..40.0)).collect()).collect();
    let freqs: Vec<(f64, f64)> = (0..n_classes)
        .map(|k| {
            // Distinct for the first 15 classes: enumerate (fx, fy) in 0..=3 x 0..=3 without (0, 0).
            let j = k % 15 + 1;
            ((j % 4) as f64, (j / 4) as f64)
        })
        .collect();
    let mut labels: Vec<u8> = (0..n).map(|i| (i % n_classes) as u8).collect();
    labels.shuffle(&mut rng);
    let plane = side * side;
    let mut pixels = Vec::with_capacity(n * channels * plane);
    let tau = 2.0 * std::f64::consts::PI / side as f64;
    for &label in &labels {
        let k = usize::from(label);
        let phase: f64 = rng.random_range(0.0..2.0 * std::f64::consts::PI);
        let (fx, fy) = freqs[k];
        for offset in &offsets[k] {
            for r in 0..side {
                for s in 0..side {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    let wave = 40.0 * (tau * (fx * s as f64 + fy * r as f64) + phase).cos();
                    pixels.push((128.0 + offset + wave + noise * z).round().clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
    Ok(ImageSet { channels, height: side, width: side, n_classes, pixels, labels })
}

/// Per-channel mean and standard deviation (population) of all pixels of `set`, in `[0, 1]`
/// units (pixel / 255):
/// $$\mu_c = \frac{1}{NHW}\sum_{i,r,s} \frac{x_{i,c,r,s}}{255},\qquad
///   \sigma_c = \Big(\frac{1}{NHW}\sum_{i,r,s} \big(\tfrac{x_{i,c,r,s}}{255} - \mu_c\big)^2\Big)^{1/2}.$$
/// Computed exactly from per-channel byte histograms. An empty set gives zeros.
pub fn channel_stats(set: &ImageSet) -> (Vec<f64>, Vec<f64>) {
    let plane = set.height * set.width;
    let mut hist = vec![[0u64; 256]; set.channels];
    for (j, chunk) in set.pixels.chunks_exact(plane).enumerate() {
        let h = &mut hist[j % set.channels];
        for &p in chunk {
            h[usize::from(p)] += 1;
        }
    }
    let mut means = Vec::with_capacity(set.channels);
    let mut stds = Vec::with_capacity(set.channels);
    for h in &hist {
        let count: u64 = h.iter().sum();
        if count == 0 {
            means.push(0.0);
            stds.push(0.0);
            continue;
        }
        let n = count as f64;
        let mean = h.iter().enumerate().map(|(v, &c)| v as f64 / 255.0 * c as f64).sum::<f64>() / n;
        let var = h.iter().enumerate().map(|(v, &c)| (v as f64 / 255.0 - mean).powi(2) * c as f64).sum::<f64>() / n;
        means.push(mean);
        stds.push(var.sqrt());
    }
    (means, stds)
}

/// The pixels of `set` as `f32` inputs, $(x/255 - \mu_c)/\sigma_c$, in the same `N x C x H x W`
/// order.
///
/// # Errors
/// [`Error::InvalidParameter`] if `mean` or `std` does not have one entry per channel, or a
/// mean is not finite or a std not positive and finite.
pub fn normalise(set: &ImageSet, mean: &[f64], std: &[f64]) -> Result<Vec<f32>> {
    if mean.len() != set.channels || std.len() != set.channels {
        return Err(Error::invalid(
            "mean/std",
            format!("{} means and {} stds for {} channels", mean.len(), std.len(), set.channels),
        ));
    }
    if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
        return Err(Error::invalid("mean", format!("{m} is not finite")));
    }
    if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::invalid("std", format!("{s} is not positive and finite")));
    }
    let tables: Vec<[f32; 256]> =
        mean.iter().zip(std).map(|(&m, &s)| std::array::from_fn(|v| ((v as f64 / 255.0 - m) / s) as f32)).collect();
    let plane = set.height * set.width;
    let mut out = Vec::with_capacity(set.pixels.len());
    for (j, chunk) in set.pixels.chunks_exact(plane).enumerate() {
        let t = &tables[j % set.channels];
        out.extend(chunk.iter().map(|&p| t[usize::from(p)]));
    }
    Ok(out)
}

/// The standard CIFAR augmentation, redrawn per image from a ChaCha8 generator seeded with
/// `seed`: a random `height x width` crop of the image padded with `pad` zero pixels on every
/// side (offsets uniform in `0..=2*pad` in each direction), then a horizontal flip with
/// probability 1/2. Zero is the raw pixel value 0 (black), as torchvision's
/// `RandomCrop(32, padding=4)` on the unnormalised image.
///
/// The result has the shape of `set`; `pad = 0` gives only the flips.
pub fn augment(set: &ImageSet, pad: usize, seed: u64) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (h, w) = (set.height, set.width);
    let plane = h * w;
    let mut pixels = vec![0u8; set.pixels.len()];
    for (img_in, img_out) in set.pixels.chunks_exact(set.image_len()).zip(pixels.chunks_exact_mut(set.image_len())) {
        let dy = rng.random_range(0..=2 * pad) as isize - pad as isize;
        let dx = rng.random_range(0..=2 * pad) as isize - pad as isize;
        let flip = rng.random_bool(0.5);
        for (p_in, p_out) in img_in.chunks_exact(plane).zip(img_out.chunks_exact_mut(plane)) {
            for r in 0..h {
                let src_r = r as isize + dy;
                if src_r < 0 || src_r >= h as isize {
                    continue;
                }
                for s in 0..w {
                    // Output column s shows crop column c = (flip ? w-1-s : s); its source is c + dx.
                    let c = if flip { w - 1 - s } else { s };
                    let src_c = c as isize + dx;
                    if src_c < 0 || src_c >= w as isize {
                        continue;
                    }
                    p_out[r * w + s] = p_in[src_r as usize * w + src_c as usize];
                }
            }
        }
    }
    ImageSet { pixels, labels: set.labels.clone(), ..set.shape_only() }
}
