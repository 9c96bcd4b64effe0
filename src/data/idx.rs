//! Reader and writer of the idx format used by MNIST and Fashion-MNIST.
//!
//! An idx file is a big-endian `u32` magic number (`0x00000803` for three-dimensional
//! unsigned-byte image files, `0x00000801` for one-dimensional unsigned-byte label files), one
//! big-endian `u32` per dimension, then the data as bytes in row-major order. Files may be
//! gzip-compressed; the readers recognise that by the gzip magic bytes `1f 8b`, not by the file
//! name. The writers compress when the path ends in `.gz` and replace the file atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::{Error, Result};

/// The magic number of an idx file of unsigned-byte images (three dimensions).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;

/// The magic number of an idx file of unsigned-byte labels (one dimension).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A stack of greyscale images as stored in an idx3 unsigned-byte file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// The number of images.
    pub count: usize,
    /// The number of pixel rows of each image.
    pub rows: usize,
    /// The number of pixel columns of each image.
    pub cols: usize,
    /// `count * rows * cols` pixels: image after image, each row-major.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// The number of pixels of one image, `rows * cols`.
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of image `i`, row-major.
    ///
    /// # Panics
    /// If `i >= count` or `pixels` is shorter than `count * rows * cols`.
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(i < self.count, "image {i} of {}", self.count);
        let len = self.image_len();
        &self.pixels[i * len..(i + 1) * len]
    }
}

/// What one kind of idx file looks like.
struct Kind {
    magic: u32,
    dims: usize,
    description: &'static str,
}

const IMAGES: Kind = Kind { magic: IMAGES_MAGIC, dims: 3, description: "idx3 unsigned-byte images" };

const LABELS: Kind = Kind { magic: LABELS_MAGIC, dims: 1, description: "idx1 unsigned-byte labels" };

impl Kind {
    fn header_len(&self) -> usize {
        4 * (1 + self.dims)
    }
}

/// Reads the images of an idx3 unsigned-byte file, gzip-compressed or not.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::BadFile`] for a corrupt gzip stream, a
/// truncated header, a wrong magic number, fewer data bytes than the header promises, or
/// trailing bytes after the data.
pub fn read_images(path: &Path) -> Result<IdxImages> {
    let (dims, pixels) = read_idx(path, &IMAGES)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    Ok(IdxImages { count, rows, cols, pixels })
}

/// Reads the labels of an idx1 unsigned-byte file, gzip-compressed or not.
///
/// # Errors
/// As [`read_images`].
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let (_, labels) = read_idx(path, &LABELS)?;
    Ok(labels)
}

/// Writes `images` as an idx3 unsigned-byte file, gzip-compressed if `path` ends in `.gz`.
///
/// The file is written under a temporary name in the same directory and then renamed over
/// `path`, so `path` is either left as it was or holds the whole new file.
///
/// # Errors
/// [`Error::InvalidParameter`] if `pixels.len() != count * rows * cols` or a dimension does not
/// fit in a `u32`; [`Error::Io`] if the file cannot be written.
pub fn write_images(path: &Path, images: &IdxImages) -> Result<()> {
    let dims = [images.count, images.rows, images.cols];
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected != Some(images.pixels.len()) {
        let promised = match expected {
            Some(n) => n.to_string(),
            None => "more than usize::MAX".to_string(),
        };
        return Err(Error::invalid(
            "images.pixels",
            format!(
                "{} pixels for {} images of {}x{} ({promised} pixels)",
                images.pixels.len(),
                images.count,
                images.rows,
                images.cols
            ),
        ));
    }
    write_idx(path, &IMAGES, &dims, &images.pixels)
}

/// Writes `labels` as an idx1 unsigned-byte file, gzip-compressed if `path` ends in `.gz`.
///
/// Atomic as [`write_images`].
///
/// # Errors
/// [`Error::InvalidParameter`] if there are more than `u32::MAX` labels; [`Error::Io`] if the
/// file cannot be written.
pub fn write_labels(path: &Path, labels: &[u8]) -> Result<()> {
    write_idx(path, &LABELS, &[labels.len()], labels)
}

/// The file's bytes, decompressed if they start with the gzip magic.
fn read_decompressed(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).map_err(|e| Error::io(path, e))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| Error::bad_file(path, format!("corrupt gzip stream: {e}")))?;
    Ok(out)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses an idx file of `kind`: its dimensions and its data.
fn read_idx(path: &Path, kind: &Kind) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut bytes = read_decompressed(path)?;
    let header_len = kind.header_len();
    let truncated_header = |len: usize| {
        Error::bad_file(
            path,
            format!("truncated header: {len} bytes, but an {} header is {header_len} bytes", kind.description),
        )
    };
    if bytes.len() < 4 {
        return Err(truncated_header(bytes.len()));
    }
    let magic = be_u32(&bytes, 0);
    if magic != kind.magic {
        return Err(Error::bad_file(
            path,
            format!("wrong magic number {magic:#010x}, expected {:#010x} ({})", kind.magic, kind.description),
        ));
    }
    if bytes.len() < header_len {
        return Err(truncated_header(bytes.len()));
    }
    let dims: Vec<usize> = (0..kind.dims).map(|k| be_u32(&bytes, 4 * (k + 1)) as usize).collect();
    let what = describe(&dims);
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::bad_file(path, format!("header says {what}, more bytes than fit in memory")))?;
    let available = bytes.len() - header_len;
    if available < expected {
        return Err(Error::bad_file(
            path,
            format!("truncated: header says {what} ({expected} bytes) but only {available} bytes follow"),
        ));
    }
    if available > expected {
        return Err(Error::bad_file(path, format!("{} trailing bytes after the data", available - expected)));
    }
    bytes.drain(..header_len);
    Ok((dims, bytes))
}

/// "60000 images of 28x28" or "60000 labels".
fn describe(dims: &[usize]) -> String {
    match dims {
        [count, rows, cols] => format!("{count} images of {rows}x{cols}"),
        [count] => format!("{count} labels"),
        _ => format!("dimensions {dims:?}"),
    }
}

/// Writes an idx file of `kind` atomically.
fn write_idx(path: &Path, kind: &Kind, dims: &[usize], data: &[u8]) -> Result<()> {
    debug_assert_eq!(dims.len(), kind.dims);
    let mut header = Vec::with_capacity(kind.header_len());
    header.extend_from_slice(&kind.magic.to_be_bytes());
    for (k, &d) in dims.iter().enumerate() {
        let d = u32::try_from(d).map_err(|_| {
            Error::invalid(format!("dimension {k}"), format!("{d} does not fit in the idx format's 32-bit sizes"))
        })?;
        header.extend_from_slice(&d.to_be_bytes());
    }
    let gzip = path.as_os_str().as_encoded_bytes().ends_with(b".gz");
    let (temp, file) = TempFile::create(path).map_err(|e| Error::io(path, e))?;
    write_contents(file, &header, data, gzip).map_err(|e| Error::io(path, e))?;
    temp.persist().map_err(|e| Error::io(path, e))
}

fn write_contents(file: File, header: &[u8], data: &[u8], gzip: bool) -> io::Result<()> {
    let mut out = BufWriter::new(file);
    if gzip {
        let mut encoder = GzEncoder::new(&mut out, Compression::default());
        encoder.write_all(header)?;
        encoder.write_all(data)?;
        encoder.finish()?;
    } else {
        out.write_all(header)?;
        out.write_all(data)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// A temporary file beside the target, removed on drop unless renamed over the target.
struct TempFile {
    target: PathBuf,
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    /// A new, empty temporary file beside `target`, and the file opened for writing.
    fn create(target: &Path) -> io::Result<(TempFile, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"))?;
        loop {
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
            let path = dir.join(temp_name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let temp = TempFile { target: target.to_path_buf(), path, persisted: false };
                    return Ok((temp, file));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Renames the temporary file over the target.
    fn persist(mut self) -> io::Result<()> {
        fs::rename(&self.path, &self.target)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: the file may already be gone; there is nothing useful to report.
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(count: usize, rows: usize, cols: usize) -> IdxImages {
        IdxImages { count, rows, cols, pixels: (0..count * rows * cols).map(|i| (i * 7 % 256) as u8).collect() }
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = images(3, 4, 5);
        for name in ["a-images", "a-images.gz"] {
            let p = dir.path().join(name);
            write_images(&p, &imgs).unwrap();
            assert_eq!(read_images(&p).unwrap(), imgs);
        }
        let raw = fs::read(dir.path().join("a-images")).unwrap();
        assert_eq!(raw.len(), 16 + 60);
        assert_eq!(&raw[..4], &[0, 0, 8, 3]);
        let gz = fs::read(dir.path().join("a-images.gz")).unwrap();
        assert_eq!(&gz[..2], &GZIP_MAGIC);
        let labels = vec![0u8, 9, 3, 255];
        let p = dir.path().join("l.gz");
        write_labels(&p, &labels).unwrap();
        assert_eq!(read_labels(&p).unwrap(), labels);
        assert_eq!(imgs.image(1), &imgs.pixels[20..40]);
    }

    #[test]
    fn gzip_is_detected_by_content_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("x.gz");
        write_labels(&gz, &[1, 2, 3]).unwrap();
        let renamed = dir.path().join("plain-name");
        fs::rename(&gz, &renamed).unwrap();
        assert_eq!(read_labels(&renamed).unwrap(), vec![1, 2, 3]);
        // And a raw file whose name ends in .gz.
        let raw = dir.path().join("raw.gz");
        fs::write(&raw, [0, 0, 8, 1, 0, 0, 0, 1, 7]).unwrap();
        assert_eq!(read_labels(&raw).unwrap(), vec![7]);
    }

    #[test]
    fn writer_rejects_inconsistent_sizes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut imgs = images(2, 3, 3);
        imgs.pixels.pop();
        let p = dir.path().join("bad.gz");
        let err = write_images(&p, &imgs).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { .. }), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn overwrite_replaces_whole_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        write_labels(&p, &[1; 100]).unwrap();
        write_labels(&p, &[2; 3]).unwrap();
        assert_eq!(read_labels(&p).unwrap(), vec![2; 3]);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("l")]);
    }

    #[test]
    fn write_into_missing_directory_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/l.gz");
        let err = write_labels(&p, &[1]).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("l.gz"), "{err}");
    }

    #[test]
    fn header_messages() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, [0, 0, 8]).unwrap();
        assert!(read_labels(&p).unwrap_err().to_string().contains("truncated header"));
        fs::write(&p, [0, 0, 8, 3, 0, 0, 0, 1]).unwrap();
        assert!(read_images(&p).unwrap_err().to_string().contains("truncated header"));
        let err = read_images(&p).unwrap_err().to_string();
        assert!(err.contains("16"), "{err}");
        fs::write(&p, [0, 0, 8, 1, 0, 0, 0, 0]).unwrap();
        let err = read_images(&p).unwrap_err().to_string();
        assert!(
            err.contains("wrong magic number 0x00000801, expected 0x00000803 (idx3 unsigned-byte images)"),
            "{err}"
        );
        assert_eq!(read_labels(&p).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn truncation_message_states_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut bytes = vec![0, 0, 8, 3];
        for d in [60000u32, 28, 28] {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend(std::iter::repeat_n(0u8, 1234));
        fs::write(&p, &bytes).unwrap();
        let err = read_images(&p).unwrap_err().to_string();
        assert!(
            err.contains("truncated: header says 60000 images of 28x28 (47040000 bytes) but only 1234 bytes follow"),
            "{err}"
        );
    }
}
