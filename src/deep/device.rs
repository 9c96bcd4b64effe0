//! What a GPU backend needs around the training code: one directory for every compiled-kernel
//! cache, and a visible warm-up while the first steps fill it.
//!
//! # Why
//! burn's CUDA backend compiles each kernel with NVRTC the first time it is launched, and its
//! autotuner compiles and times every candidate of each convolution shape. On a fresh H200 that
//! was about one kernel a second on one CPU thread, several minutes before the first ResNet-18
//! step, with nothing on the screen. Three caches make the second start fast:
//! - cubecl's PTX compilation cache (off by default in cubecl 0.10),
//! - cubecl's autotune results (by default under the nearest `target/` directory, lost with the
//!   machine),
//! - the CUDA driver's PTX-to-SASS cache (`CUDA_CACHE_PATH`, by default `~/.nv/ComputeCache`,
//!   256 MiB).
//!
//! [`KernelCache`] puts all three under one directory: `--kernel-cache DIR`, else
//! `$FULLBATCH_KERNEL_CACHE`, else `<user cache dir>/fullbatch/kernels/<device>-cubecl-0.10`
//! (`~/.cache/...` on Linux). Clearing it is `rm -rf DIR`; the next run compiles again.
//! cubecl's entries are keyed by a hash of the kernel, not of the GPU or CUDA version, hence one
//! directory per device name and cubecl series.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The environment variable naming the kernel-cache directory (below `--kernel-cache`).
pub const KERNEL_CACHE_ENV: &str = "FULLBATCH_KERNEL_CACHE";

/// The cubecl release series whose cache layout the directory holds (part of its default name):
/// a dependency upgrade starts a new directory instead of reading stale entries.
pub const CUBECL_SERIES: &str = "cubecl-0.10";

/// Size limit given to the CUDA driver's cache when the user has not set `CUDA_CACHE_MAXSIZE`
/// (its default, 256 MiB, is below what ResNet-18's autotune candidates need).
pub const DRIVER_CACHE_MAX_BYTES: u64 = 4 << 30;

/// A short file-name-safe name of a device: lowercase ASCII letters and digits, other runs of
/// characters become one `-` (`"NVIDIA H200"` gives `"nvidia-h200"`; empty gives `"device"`).
pub fn device_tag(name: &str) -> String {
    let mut tag = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            tag.push(c.to_ascii_lowercase());
        } else if !tag.is_empty() && !tag.ends_with('-') {
            tag.push('-');
        }
    }
    while tag.ends_with('-') {
        tag.pop();
    }
    if tag.is_empty() { "device".into() } else { tag }
}

/// The directories of the kernel caches of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCache {
    /// The directory holding everything below.
    pub root: PathBuf,
}

impl KernelCache {
    /// The cache directory for `device_name`: `explicit` if given, else `$FULLBATCH_KERNEL_CACHE`,
    /// else `<user cache dir>/fullbatch/kernels/<device_tag>-cubecl-0.10`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when no directory is given and the system has no user cache
    /// directory (no `$HOME`).
    pub fn locate(explicit: Option<&Path>, device_name: &str) -> Result<Self> {
        if let Some(dir) = explicit {
            return Ok(Self { root: dir.to_path_buf() });
        }
        if let Some(dir) = std::env::var_os(KERNEL_CACHE_ENV).filter(|d| !d.is_empty()) {
            return Ok(Self { root: PathBuf::from(dir) });
        }
        let base = dirs::cache_dir().ok_or_else(|| {
            Error::invalid("kernel cache", format!("no user cache directory; set --kernel-cache or {KERNEL_CACHE_ENV}"))
        })?;
        Ok(Self {
            root: base.join("fullbatch").join("kernels").join(format!("{}-{CUBECL_SERIES}", device_tag(device_name))),
        })
    }

    /// cubecl's part: `cuda/<version>/ptx/` (compiled kernels) and `autotune/<version>/...`
    /// (the fastest candidate of each autotuned operation and shape).
    pub fn cubecl_dir(&self) -> PathBuf {
        self.root.join("cubecl")
    }

    /// The CUDA driver's part (`CUDA_CACHE_PATH`): SASS translated from the PTX at load time.
    pub fn driver_dir(&self) -> PathBuf {
        self.root.join("nv-compute")
    }

    /// Creates the directories.
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory that could not be made.
    pub fn create(&self) -> Result<()> {
        for dir in [self.cubecl_dir(), self.driver_dir()] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }

    /// The number of compiled kernels stored: the entries of cubecl's compilation caches (one
    /// line each in the `toc.json.log` files under [`Self::cubecl_dir`]).
    pub fn kernel_count(&self) -> usize {
        count_lines(&self.cubecl_dir(), &|name| name == "toc.json.log")
    }

    /// The number of autotune results stored (one line each in the `.json.log` files under
    /// `cubecl/autotune`).
    pub fn autotune_count(&self) -> usize {
        count_lines(&self.cubecl_dir().join("autotune"), &|name| name.ends_with(".json.log"))
    }

    /// Bytes of all files under [`Self::root`].
    pub fn size_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(_) => e.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.root)
    }

    /// The committed cache archive for this cache's device, if the checkout has one:
    /// `experiments/kernel-cache/<directory name>.tar.xz` (e.g. `nvidia-h200-cubecl-0.10.tar.xz`)
    /// below the working directory, else below the source tree this binary was built from.
    pub fn committed_archive(&self) -> Option<PathBuf> {
        let name = format!("{}.tar.xz", self.root.file_name()?.to_string_lossy());
        let relative = Path::new("experiments").join("kernel-cache").join(name);
        [PathBuf::from("."), PathBuf::from(env!("CARGO_MANIFEST_DIR"))]
            .into_iter()
            .map(|base| base.join(&relative))
            .find(|path| path.is_file())
    }

    /// Fills an empty cache from a `.tar.xz` archive of a cache directory's `cubecl/` part (as
    /// `scripts/gpu-check.sh` packs it), unpacked with the system's `tar`. The archive goes into
    /// a temporary directory beside the cache first and is moved into place only when complete,
    /// so a failed import leaves the cache as it was. Returns the number of kernels imported.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when the cache already holds kernels (clear it first);
    /// [`Error::BadFile`] naming the archive when `tar` fails or the archive has no `cubecl/`;
    /// [`Error::Io`] naming the directory that could not be made or moved.
    pub fn import_archive(&self, archive: &Path) -> Result<usize> {
        let held = self.kernel_count();
        if held > 0 {
            return Err(Error::invalid(
                "kernel cache",
                format!("{} already holds {held} kernels; clear it before importing", self.root.display()),
            ));
        }
        let parent = self.root.parent().unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let staging = parent.join(format!(
            ".{}.import-{}",
            self.root.file_name().map_or("cache".into(), |n| n.to_string_lossy()),
            std::process::id()
        ));
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let result = self.import_staged(archive, &staging);
        // Best effort: the staging directory is ours alone; what is left of it is garbage.
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    fn import_staged(&self, archive: &Path, staging: &Path) -> Result<usize> {
        let output = std::process::Command::new("tar")
            .arg("-xJf")
            .arg(archive)
            .arg("-C")
            .arg(staging)
            .output()
            .map_err(|e| Error::io(archive, e))?;
        if !output.status.success() {
            let why = String::from_utf8_lossy(&output.stderr);
            return Err(Error::bad_file(archive, format!("tar -xJf failed: {}", why.trim())));
        }
        let unpacked = Self { root: staging.to_path_buf() };
        let kernels = unpacked.kernel_count();
        if !unpacked.cubecl_dir().is_dir() || kernels == 0 {
            return Err(Error::bad_file(archive, "holds no cubecl/ kernel cache (no toc.json.log entries)"));
        }
        self.create()?;
        let target = self.cubecl_dir();
        std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
        std::fs::rename(unpacked.cubecl_dir(), &target).map_err(|e| Error::io(&target, e))?;
        Ok(kernels)
    }

    /// The environment variables the CUDA driver reads when it starts, for this cache:
    /// `CUDA_CACHE_PATH` and `CUDA_CACHE_MAXSIZE` ([`DRIVER_CACHE_MAX_BYTES`]), each only when
    /// the user has not set it. They must be in the environment before the first CUDA call.
    pub fn driver_env(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        if std::env::var_os("CUDA_CACHE_PATH").is_none() {
            vars.push(("CUDA_CACHE_PATH", self.driver_dir().display().to_string()));
        }
        if std::env::var_os("CUDA_CACHE_MAXSIZE").is_none() {
            vars.push(("CUDA_CACHE_MAXSIZE", DRIVER_CACHE_MAX_BYTES.to_string()));
        }
        vars
    }

    /// Points cubecl's compilation cache and autotune cache at [`Self::cubecl_dir`]. The rest of
    /// cubecl's configuration is read as cubecl would (a `cubecl.toml` or `burn.toml` in the
    /// working directory or above, then the `CUBECL_*` environment overrides); only the two
    /// cache locations are replaced. Must run before the first use of a cubecl device.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if cubecl's configuration was already read or set (a device
    /// was used before); the errors of [`Self::create`].
    #[cfg(feature = "cuda")]
    pub fn install_in_cubecl(&self) -> Result<()> {
        use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
        self.create()?;
        let storage = CubeClRuntimeConfig::storage();
        let mut state = storage.lock();
        if state.is_some() {
            return Err(Error::invalid(
                "kernel cache",
                "cubecl's configuration was already read (a GPU device was used before the cache was set)",
            ));
        }
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        config.compilation.cache = Some(CacheConfig::File(self.cubecl_dir()));
        config.autotune.cache = CacheConfig::File(self.cubecl_dir());
        *state = Some(Arc::new(config));
        Ok(())
    }
}

/// The LibTorch device `fullbatch` trains on with `--backend tch`: CUDA device `index` when
/// libtorch sees a GPU (then with cuDNN's benchmark mode on: it times the convolution algorithms
/// of each new shape once and keeps the fastest), else the CPU. With `cpu_only` the CPU always.
/// Returns the device and its description.
///
/// # Errors
/// [`Error::InvalidParameter`] (`device`) when there is no CUDA device `index` (the CPU is
/// device 0 only).
#[cfg(feature = "tch")]
pub fn libtorch_device(cpu_only: bool, index: usize) -> Result<(burn::backend::libtorch::LibTorchDevice, String)> {
    use burn::backend::libtorch::LibTorchDevice;
    if !cpu_only && tch::Cuda::is_available() {
        let count = tch::Cuda::device_count();
        if index as i64 >= count {
            return Err(Error::invalid(
                "device",
                format!("libtorch sees {count} CUDA device(s), so there is no device {index}"),
            ));
        }
        tch::Cuda::cudnn_set_benchmark(true);
        let cudnn = if tch::Cuda::cudnn_is_available() { "cuDNN benchmark mode" } else { "no cuDNN" };
        Ok((LibTorchDevice::Cuda(index), format!("libtorch cuda:{index} ({count} GPUs, {cudnn})")))
    } else if index > 0 {
        Err(Error::invalid("device", format!("libtorch sees no CUDA device, so there is no device {index}")))
    } else {
        let threads = tch::get_num_threads();
        Ok((LibTorchDevice::Cpu, format!("libtorch cpu ({threads} threads)")))
    }
}

/// The total number of non-empty lines of the files under `dir` whose name `wanted` accepts (0 if
/// there are none).
fn count_lines(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => n += count_lines(&path, wanted),
            Ok(_) if wanted(&entry.file_name().to_string_lossy()) => {
                n += std::fs::read(&path)
                    .map_or(0, |bytes| bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count());
            }
            _ => {}
        }
    }
    n
}

/// What a warm-up took (see [`Warmup`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupReport {
    /// Seconds from the start of the warm-up to its end.
    pub seconds: f64,
    /// Kernels in the cache before.
    pub kernels_cached_before: Option<usize>,
    /// Kernels added to the cache during the warm-up (compiled by this process).
    pub kernels_compiled: Option<usize>,
    /// The cache directory.
    pub kernel_cache: Option<PathBuf>,
}

/// A visible warm-up: while the first steps run (and on a GPU compile kernels), a line on
/// stderr says what is happening, for how long, and how many kernels were compiled so far:
/// a spinner redrawn every second on a terminal, else one line every [`Warmup::PLAIN_EVERY`].
/// [`Warmup::finish`] stops it and reports the time.
#[derive(Debug)]
pub struct Warmup {
    started: Instant,
    cache: Option<KernelCache>,
    kernels_before: Option<usize>,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    flag: Option<Arc<AtomicBool>>,
}

impl Warmup {
    /// How often a line is printed when stderr is not a terminal.
    pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

    /// Starts the indicator for `what` (e.g. "first training step"). With a `cache`, the line
    /// counts the kernels it gains. `show` false draws nothing (tests, `--no-progress` runs
    /// still get the report). `flag`, when given, is true from here until [`Self::finish`]:
    /// a signal handler can read it to exit at once during the warm-up.
    pub fn start(what: &str, cache: Option<&KernelCache>, show: bool, flag: Option<Arc<AtomicBool>>) -> Self {
        let started = Instant::now();
        let kernels_before = cache.map(KernelCache::kernel_count);
        if let Some(f) = &flag {
            f.store(true, Ordering::SeqCst);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = show.then(|| {
            let stop = Arc::clone(&stop);
            let cache = cache.cloned();
            let what = what.to_string();
            std::thread::spawn(move || tick(&what, cache.as_ref(), kernels_before, started, &stop))
        });
        Self { started, cache: cache.cloned(), kernels_before, stop, ticker, flag }
    }

    /// Stops the indicator and reports the warm-up.
    pub fn finish(mut self) -> WarmupReport {
        self.stop_ticker();
        let compiled =
            self.cache.as_ref().zip(self.kernels_before).map(|(c, before)| c.kernel_count().saturating_sub(before));
        WarmupReport {
            seconds: self.started.elapsed().as_secs_f64(),
            kernels_cached_before: self.kernels_before,
            kernels_compiled: compiled,
            kernel_cache: self.cache.as_ref().map(|c| c.root.clone()),
        }
    }

    /// Stops the ticker thread and clears the flag (idempotent).
    fn stop_ticker(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.take() {
            // A ticker that panicked only loses its display.
            let _ = t.join();
        }
        if let Some(f) = &self.flag {
            f.store(false, Ordering::SeqCst);
        }
    }
}

/// A warm-up left by an error (`?`) stops its line and clears its flag.
impl Drop for Warmup {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}

/// The indicator's text after `elapsed` seconds.
pub fn warmup_message(what: &str, cache: Option<&KernelCache>, kernels_before: Option<usize>, elapsed: f64) -> String {
    match (cache, kernels_before) {
        (Some(c), Some(before)) => {
            let compiled = c.kernel_count().saturating_sub(before);
            let first = if before == 0 { ", first run on this GPU" } else { "" };
            format!(
                "{what}: compiling GPU kernels{first}: {elapsed:.0} s, {compiled} compiled ({before} were cached); cached in {}",
                c.root.display()
            )
        }
        _ => format!("{what} (warm-up): {elapsed:.0} s"),
    }
}

fn tick(what: &str, cache: Option<&KernelCache>, before: Option<usize>, started: Instant, stop: &AtomicBool) {
    let terminal = std::io::stderr().is_terminal();
    let spinner = terminal.then(|| {
        let s = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            s.set_style(style);
        }
        s
    });
    let mut last_draw: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let due = match last_draw {
            None => true,
            Some(t) => t.elapsed() >= if terminal { Duration::from_secs(1) } else { Warmup::PLAIN_EVERY },
        };
        if due {
            let text = warmup_message(what, cache, before, started.elapsed().as_secs_f64());
            match &spinner {
                Some(s) => {
                    s.set_message(text);
                    s.tick();
                }
                None => eprintln!("{text}"),
            }
            last_draw = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tags_are_file_names() {
        assert_eq!(device_tag("NVIDIA H200"), "nvidia-h200");
        assert_eq!(device_tag("  NVIDIA H100 80GB HBM3 "), "nvidia-h100-80gb-hbm3");
        assert_eq!(device_tag("cuda device 0"), "cuda-device-0");
        assert_eq!(device_tag("///"), "device");
    }

    #[test]
    fn explicit_directory_wins_and_layout_is_under_it() {
        let c = KernelCache::locate(Some(Path::new("/x/k")), "NVIDIA H200").unwrap();
        assert_eq!(c.root, PathBuf::from("/x/k"));
        assert_eq!(c.cubecl_dir(), PathBuf::from("/x/k/cubecl"));
        assert_eq!(c.driver_dir(), PathBuf::from("/x/k/nv-compute"));
    }

    /// A cache directory with `kernels` toc lines and two autotune results, packed as
    /// gpu-check.sh packs it (`tar -cJf ARCHIVE -C ROOT cubecl`).
    fn packed_cache(dir: &Path, kernels: usize) -> PathBuf {
        let ptx = dir.join("src/cubecl/cuda/0.10.0/ptx");
        std::fs::create_dir_all(&ptx).unwrap();
        std::fs::write(ptx.join("toc.json.log"), "{}\n".repeat(kernels)).unwrap();
        let tune = dir.join("src/cubecl/autotune/0.10.0/device-0-0-cuda");
        std::fs::create_dir_all(&tune).unwrap();
        std::fs::write(tune.join("conv.json.log"), "{}\n{}\n").unwrap();
        let archive = dir.join("cache.tar.xz");
        let status = std::process::Command::new("tar")
            .arg("-cJf")
            .arg(&archive)
            .arg("-C")
            .arg(dir.join("src"))
            .arg("cubecl")
            .status()
            .unwrap();
        assert!(status.success());
        archive
    }

    #[test]
    fn import_fills_an_empty_cache_once() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = packed_cache(tmp.path(), 3);
        let c = KernelCache { root: tmp.path().join("caches/nvidia-h200-cubecl-0.10") };
        assert_eq!(c.import_archive(&archive).unwrap(), 3);
        assert_eq!((c.kernel_count(), c.autotune_count()), (3, 2));
        assert!(c.driver_dir().is_dir());
        match c.import_archive(&archive) {
            Err(Error::InvalidParameter { problem, .. }) => assert!(problem.contains("already holds 3 kernels")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Nothing but the cache itself is left beside it.
        let beside: Vec<_> = std::fs::read_dir(tmp.path().join("caches")).unwrap().flatten().collect();
        assert_eq!(beside.len(), 1);
    }

    #[test]
    fn a_bad_archive_is_named_and_leaves_the_cache_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = tmp.path().join("not-an-archive.tar.xz");
        std::fs::write(&bad, b"plain text").unwrap();
        let c = KernelCache { root: tmp.path().join("caches/k") };
        match c.import_archive(&bad) {
            Err(Error::BadFile { path, .. }) => assert_eq!(path, bad),
            other => panic!("expected BadFile, got {other:?}"),
        }
        assert_eq!(c.kernel_count(), 0);
        assert!(!c.cubecl_dir().exists());
        let beside: Vec<_> = std::fs::read_dir(tmp.path().join("caches")).unwrap().flatten().collect();
        assert!(beside.is_empty(), "left behind: {beside:?}");
        // An archive without cubecl/ is refused too.
        std::fs::create_dir_all(tmp.path().join("other")).unwrap();
        std::fs::write(tmp.path().join("other/x"), b"x").unwrap();
        let empty = tmp.path().join("other.tar.xz");
        let status = std::process::Command::new("tar")
            .arg("-cJf")
            .arg(&empty)
            .arg("-C")
            .arg(tmp.path().join("other"))
            .arg("x")
            .status()
            .unwrap();
        assert!(status.success());
        assert!(matches!(c.import_archive(&empty), Err(Error::BadFile { .. })));
    }

    /// The committed H200 cache is found by name and holds the kernels gpu-check.sh compiled on
    /// an H200 (ResNet-18 training, evaluation and the regularised full-batch step at width 64).
    #[test]
    fn the_committed_h200_cache_is_found_and_unpacks() {
        let tmp = tempfile::tempdir().unwrap();
        let c = KernelCache::locate(Some(&tmp.path().join("nvidia-h200-cubecl-0.10")), "NVIDIA H200").unwrap();
        let archive = c.committed_archive().expect("experiments/kernel-cache/nvidia-h200-cubecl-0.10.tar.xz");
        let kernels = c.import_archive(&archive).unwrap();
        assert!(kernels >= 700, "{kernels} kernels");
        assert!(c.autotune_count() >= 100, "{} autotune results", c.autotune_count());
        let other = KernelCache { root: tmp.path().join("no-such-gpu-cubecl-0.10") };
        assert_eq!(other.committed_archive(), None);
    }

    #[test]
    fn kernel_and_autotune_entries_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let c = KernelCache { root: tmp.path().to_path_buf() };
        assert_eq!(c.kernel_count(), 0);
        let ptx = c.cubecl_dir().join("cuda/0.10.0/ptx");
        std::fs::create_dir_all(&ptx).unwrap();
        std::fs::write(ptx.join("toc.json.log"), "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n").unwrap();
        std::fs::write(ptx.join("chunk0.cbor"), [0u8, 10, 10, 10]).unwrap();
        let tune = c.cubecl_dir().join("autotune/0.10.0/device-0-0-cuda");
        std::fs::create_dir_all(&tune).unwrap();
        std::fs::write(tune.join("conv.json.log"), "{}\n{}\n").unwrap();
        assert_eq!(c.kernel_count(), 3);
        assert_eq!(c.autotune_count(), 2);
        assert!(c.size_bytes() >= 30);
        let msg = warmup_message("first step", Some(&c), Some(1), 12.3);
        assert!(msg.contains("2 compiled (1 were cached)") && msg.contains("12 s"), "{msg}");
        let first = warmup_message("first step", Some(&c), Some(0), 1.0);
        assert!(first.contains("first run on this GPU"), "{first}");
    }

    #[test]
    fn warmup_flag_is_set_until_finish() {
        let flag = Arc::new(AtomicBool::new(false));
        let w = Warmup::start("test", None, false, Some(Arc::clone(&flag)));
        assert!(flag.load(Ordering::SeqCst));
        let report = w.finish();
        assert!(!flag.load(Ordering::SeqCst));
        assert!(report.seconds >= 0.0 && report.kernels_compiled.is_none());
    }
}
