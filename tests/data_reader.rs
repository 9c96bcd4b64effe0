//! Integration tests of the idx reader/writer and the Fashion-MNIST loader: round trips, files
//! assembled by hand, every kind of bad file, and (when installed) the real test split.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use fullbatch::Error;
use fullbatch::data::Targets;
use fullbatch::data::fashion_mnist::{self, LoadOptions, Normalisation, Split};
use fullbatch::data::idx::{self, IdxImages};
use proptest::prelude::*;

/// Assembles an idx file by hand: magic, big-endian dims, data.
fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn sample_images(count: usize, rows: usize, cols: usize) -> IdxImages {
    IdxImages { count, rows, cols, pixels: (0..count * rows * cols).map(|i| (i * 31 % 256) as u8).collect() }
}

/// Asserts that `err` names `path`'s file and contains `problem`.
fn assert_names(err: &Error, path: &Path, problem: &str) {
    let msg = err.to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(name.as_ref()), "message {msg:?} does not name {name}");
    assert!(msg.contains(problem), "message {msg:?} does not say {problem:?}");
}

// ---------------------------------------------------------------- round trips

#[test]
fn images_round_trip_raw_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let images = sample_images(7, 5, 3);
    for name in ["images-idx3-ubyte", "images-idx3-ubyte.gz"] {
        let path = dir.path().join(name);
        idx::write_images(&path, &images).unwrap();
        assert_eq!(idx::read_images(&path).unwrap(), images);
    }
    // The raw file is exactly header + pixels; the .gz one is compressed.
    let raw = fs::read(dir.path().join("images-idx3-ubyte")).unwrap();
    assert_eq!(raw, idx_bytes(0x803, &[7, 5, 3], &images.pixels));
    let gz = fs::read(dir.path().join("images-idx3-ubyte.gz")).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
}

#[test]
fn labels_round_trip_raw_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<u8> = (0..=255).collect();
    for name in ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"] {
        let path = dir.path().join(name);
        idx::write_labels(&path, &labels).unwrap();
        assert_eq!(idx::read_labels(&path).unwrap(), labels);
    }
    let raw = fs::read(dir.path().join("labels-idx1-ubyte")).unwrap();
    assert_eq!(raw, idx_bytes(0x801, &[256], &labels));
}

#[test]
fn hand_written_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    // Two 2x3 images, written byte by byte.
    let bytes: Vec<u8> = vec![
        0x00, 0x00, 0x08, 0x03, // magic
        0x00, 0x00, 0x00, 0x02, // count
        0x00, 0x00, 0x00, 0x02, // rows
        0x00, 0x00, 0x00, 0x03, // cols
        1, 2, 3, 4, 5, 6, // image 0
        255, 254, 253, 0, 128, 7, // image 1
    ];
    let raw = dir.path().join("hand-images");
    fs::write(&raw, &bytes).unwrap();
    let gz = dir.path().join("hand-images.gz");
    fs::write(&gz, gzip(&bytes)).unwrap();
    for path in [&raw, &gz] {
        let images = idx::read_images(path).unwrap();
        assert_eq!((images.count, images.rows, images.cols), (2, 2, 3));
        assert_eq!(images.image(0), &[1, 2, 3, 4, 5, 6]);
        assert_eq!(images.image(1), &[255, 254, 253, 0, 128, 7]);
    }
    let labels = [0x00, 0x00, 0x08, 0x01, 0x00, 0x00, 0x00, 0x03, 9, 0, 4];
    let path = dir.path().join("hand-labels");
    fs::write(&path, labels).unwrap();
    assert_eq!(idx::read_labels(&path).unwrap(), vec![9, 0, 4]);
    // A gzip file whose name does not say so is still recognised.
    let path = dir.path().join("hand-labels-no-suffix");
    fs::write(&path, gzip(&labels)).unwrap();
    assert_eq!(idx::read_labels(&path).unwrap(), vec![9, 0, 4]);
}

#[test]
fn writer_validates_pixel_count_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut images = sample_images(2, 4, 4);
    images.pixels.push(0);
    let path = dir.path().join("bad-images.gz");
    let err = idx::write_images(&path, &images).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { .. }), "{err}");
    assert!(err.to_string().contains("33 pixels"), "{err}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing may be left behind");
}

// ---------------------------------------------------------------- bad files

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-images.gz");
    let err = idx::read_images(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_names(&err, &path, "No such file");
}

#[test]
fn truncated_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short-header-images");
    fs::write(&path, [0, 0, 8, 3, 0, 0, 0, 9, 0, 0]).unwrap();
    let err = idx::read_images(&path).unwrap_err();
    assert_names(&err, &path, "truncated header");
    let path = dir.path().join("tiny-labels.gz");
    fs::write(&path, gzip(&[0, 0])).unwrap();
    assert_names(&idx::read_labels(&path).unwrap_err(), &path, "truncated header");
    let path = dir.path().join("empty");
    fs::write(&path, []).unwrap();
    assert_names(&idx::read_labels(&path).unwrap_err(), &path, "truncated header");
}

#[test]
fn truncated_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut-images.gz");
    fs::write(&path, gzip(&idx_bytes(0x803, &[60000, 28, 28], &[0; 1234]))).unwrap();
    let err = idx::read_images(&path).unwrap_err();
    assert_names(
        &err,
        &path,
        "truncated: header says 60000 images of 28x28 (47040000 bytes) but only 1234 bytes follow",
    );
    let path = dir.path().join("cut-labels");
    fs::write(&path, idx_bytes(0x801, &[10], &[1, 2, 3])).unwrap();
    assert_names(
        &idx::read_labels(&path).unwrap_err(),
        &path,
        "truncated: header says 10 labels (10 bytes) but only 3 bytes follow",
    );
}

#[test]
fn wrong_magic_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels-not-images");
    fs::write(&path, idx_bytes(0x801, &[3], &[1, 2, 3])).unwrap();
    assert_names(
        &idx::read_images(&path).unwrap_err(),
        &path,
        "wrong magic number 0x00000801, expected 0x00000803 (idx3 unsigned-byte images)",
    );
    let path = dir.path().join("images-not-labels.gz");
    fs::write(&path, gzip(&idx_bytes(0x803, &[1, 1, 1], &[1]))).unwrap();
    assert_names(
        &idx::read_labels(&path).unwrap_err(),
        &path,
        "wrong magic number 0x00000803, expected 0x00000801 (idx1 unsigned-byte labels)",
    );
    // A float-typed idx file (type code 0x0d) is not an unsigned-byte file.
    let path = dir.path().join("floats");
    fs::write(&path, idx_bytes(0x0d01, &[1], &[0; 4])).unwrap();
    assert_names(&idx::read_labels(&path).unwrap_err(), &path, "wrong magic number 0x00000d01");
}

#[test]
fn trailing_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long-images.gz");
    fs::write(&path, gzip(&idx_bytes(0x803, &[1, 2, 2], &[0; 9]))).unwrap();
    assert_names(&idx::read_images(&path).unwrap_err(), &path, "5 trailing bytes after the data");
    let path = dir.path().join("long-labels");
    fs::write(&path, idx_bytes(0x801, &[2], &[0; 3])).unwrap();
    assert_names(&idx::read_labels(&path).unwrap_err(), &path, "1 trailing bytes after the data");
}

#[test]
fn corrupt_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let good = gzip(&idx_bytes(0x801, &[1000], &[3; 1000]));
    // Garbage after the gzip magic.
    let path = dir.path().join("garbage-labels.gz");
    fs::write(&path, [0x1f, 0x8b, 0xff, 0xff, 0x00, 0x01, 0x02, 0x03]).unwrap();
    assert_names(&idx::read_labels(&path).unwrap_err(), &path, "corrupt gzip stream");
    // A stream cut short.
    let path = dir.path().join("cut-labels.gz");
    fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert_names(&idx::read_labels(&path).unwrap_err(), &path, "corrupt gzip stream");
    // A damaged checksum.
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let path = dir.path().join("crc-labels.gz");
    fs::write(&path, &bad_crc).unwrap();
    assert_names(&idx::read_labels(&path).unwrap_err(), &path, "corrupt gzip stream");
}

// ---------------------------------------------------------------- the Fashion-MNIST loader

/// Writes the four Fashion-MNIST files into `dir`: both splits with `count` images of
/// `side x side` and the given labels (the same for both splits).
fn write_fake_fashion_mnist(dir: &Path, side: usize, image_count: usize, labels: &[u8]) {
    for split in [Split::Train, Split::Test] {
        let (images_path, labels_path) = fashion_mnist::files(dir, split);
        idx::write_images(&images_path, &sample_images(image_count, side, side)).unwrap();
        idx::write_labels(&labels_path, labels).unwrap();
    }
}

fn options(dir: &Path) -> LoadOptions {
    LoadOptions { dir: dir.to_path_buf(), subset: None, seed: 1, normalisation: Normalisation::UnitInterval }
}

#[test]
fn fake_fashion_mnist_loads() {
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<u8> = (0..20).map(|i| (i * 3 % 10) as u8).collect();
    write_fake_fashion_mnist(dir.path(), 28, 20, &labels);
    assert!(fashion_mnist::available(dir.path()));
    let data = fashion_mnist::load(Split::Test, &options(dir.path())).unwrap();
    assert_eq!(data.inputs.dim(), (20, 784));
    let expected: Vec<usize> = labels.iter().map(|&l| usize::from(l)).collect();
    assert_eq!(data.targets, Targets::Classes { labels: expected, n_classes: 10 });
    let images = sample_images(20, 28, 28);
    assert_eq!(data.inputs[[3, 100]], f64::from(images.image(3)[100]) / 255.0);
    let sub = fashion_mnist::load(Split::Train, &LoadOptions { subset: Some(5), ..options(dir.path()) }).unwrap();
    assert_eq!(sub.inputs.dim(), (5, 784));
    assert_eq!(sub, data.random_subset(5, 1));
}

#[test]
fn label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_fashion_mnist(dir.path(), 28, 5, &[0, 1, 9, 12, 3]);
    let err = fashion_mnist::load(Split::Train, &options(dir.path())).unwrap_err();
    let (_, labels_path) = fashion_mnist::files(dir.path(), Split::Train);
    assert_names(&err, &labels_path, "label 12 at index 3 is out of range 0..=9");
}

#[test]
fn image_label_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_fashion_mnist(dir.path(), 28, 6, &[0, 1, 2, 3]);
    let err = fashion_mnist::load(Split::Test, &options(dir.path())).unwrap_err();
    let (images_path, labels_path) = fashion_mnist::files(dir.path(), Split::Test);
    assert_names(&err, &images_path, "6 images");
    assert_names(&err, &labels_path, "4 labels");
}

#[test]
fn wrong_image_size() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_fashion_mnist(dir.path(), 27, 2, &[0, 1]);
    let err = fashion_mnist::load(Split::Train, &options(dir.path())).unwrap_err();
    let (images_path, _) = fashion_mnist::files(dir.path(), Split::Train);
    assert_names(&err, &images_path, "images are 27x27, expected 28x28");
}

#[test]
fn subset_too_large() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_fashion_mnist(dir.path(), 28, 3, &[0, 1, 2]);
    let err = fashion_mnist::load(Split::Test, &LoadOptions { subset: Some(4), ..options(dir.path()) }).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("subset"), "{msg}");
    assert!(msg.contains("4 examples requested but the test split has only 3"), "{msg}");
}

#[test]
fn missing_split_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_fashion_mnist(dir.path(), 28, 2, &[0, 1]);
    let (_, labels_path) = fashion_mnist::files(dir.path(), Split::Train);
    fs::remove_file(&labels_path).unwrap();
    assert!(!fashion_mnist::available(dir.path()));
    let err = fashion_mnist::load(Split::Train, &options(dir.path())).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_names(&err, &labels_path, "No such file");
}

// ---------------------------------------------------------------- the real data

#[test]
fn real_test_split_subset() {
    let dir: PathBuf = fashion_mnist::default_dir();
    // `make test` installs the data (Debian's dataset-fashion-mnist): missing data is a failure.
    assert!(
        fashion_mnist::available(&dir),
        "Fashion-MNIST not found in {} (install dataset-fashion-mnist, or set {})",
        dir.display(),
        fashion_mnist::DIR_ENV
    );
    let data = fashion_mnist::load(Split::Test, &LoadOptions { subset: Some(200), seed: 42, ..LoadOptions::default() })
        .unwrap();
    assert_eq!(data.inputs.dim(), (200, 784));
    let labels = data.labels().unwrap();
    assert_eq!(labels.len(), 200);
    assert!(labels.iter().all(|&l| l < 10));
    for class in 0..10 {
        assert!(labels.contains(&class), "class {class} missing from the subset");
    }
    assert!(data.inputs.iter().all(|x| x.is_finite()));
    let mean = data.inputs.mean().unwrap();
    let std = data.inputs.std(0.0);
    assert!(mean.abs() < 0.1, "standardised mean {mean}");
    assert!((std - 1.0).abs() < 0.15, "standardised std {std}");
    // Seeded: the same options give the same examples.
    let again =
        fashion_mnist::load(Split::Test, &LoadOptions { subset: Some(200), seed: 42, ..LoadOptions::default() })
            .unwrap();
    assert_eq!(data, again);
}

// ---------------------------------------------------------------- property

proptest! {
    // A fixed seed: every run draws the same cases (failures found earlier are also replayed
    // from the committed proptest-regressions file).
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(20_220_425), ..ProptestConfig::default() })]

    /// Whatever is written (or assembled by hand) is read back unchanged, raw or compressed.
    #[test]
    fn idx_round_trip(
        (count, rows, cols, pixels) in (0usize..6, 0usize..7, 0usize..7).prop_flat_map(|(c, r, k)| {
            (Just(c), Just(r), Just(k), proptest::collection::vec(any::<u8>(), c * r * k))
        }),
        labels in proptest::collection::vec(any::<u8>(), 0..40),
        compress in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let suffix = if compress { ".gz" } else { "" };
        let images = IdxImages { count, rows, cols, pixels };
        let images_path = dir.path().join(format!("images{suffix}"));
        idx::write_images(&images_path, &images).unwrap();
        prop_assert_eq!(idx::read_images(&images_path).unwrap(), images.clone());
        let labels_path = dir.path().join(format!("labels{suffix}"));
        idx::write_labels(&labels_path, &labels).unwrap();
        prop_assert_eq!(idx::read_labels(&labels_path).unwrap(), labels.clone());

        let dims = [count as u32, rows as u32, cols as u32];
        let mut hand = idx_bytes(0x803, &dims, &images.pixels);
        if compress {
            hand = gzip(&hand);
        }
        let hand_path = dir.path().join("hand");
        fs::write(&hand_path, &hand).unwrap();
        prop_assert_eq!(idx::read_images(&hand_path).unwrap(), images);
    }
}
