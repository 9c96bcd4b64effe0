//! `fullbatch train` and `fullbatch device`: the burn half's commands (feature `burn`; CUDA with
//! feature `cuda`, LibTorch with feature `tch`). Part of the `fullbatch` binary (`src/main.rs`),
//! not of the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use fullbatch::Error;
use fullbatch::deep::bench::{self, FullBatchTimingParams, ThroughputParams};
use fullbatch::deep::config::{RunConfig, SharpnessConfig};
use fullbatch::deep::device::{KernelCache, Warmup};
use fullbatch::deep::run::{self, RunOptions};

/// The backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BackendChoice {
    /// burn's Flex CPU backend (f32).
    Cpu,
    /// burn's CUDA backend (f32, TF32 tensor cores; needs the `cuda` feature). Kernels are
    /// compiled at run time and cached (see --kernel-cache).
    Cuda,
    /// burn's LibTorch backend (f32; needs the `tch` feature and libtorch): a CUDA device
    /// (--device) with cuDNN benchmark mode when libtorch sees a GPU, else the CPU.
    Tch,
    /// burn's LibTorch backend on the CPU.
    TchCpu,
}

/// The backend options shared by `train` and `device`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// The backend (default: tch when built with the `tch` feature, else cuda with the `cuda`
    /// feature, else cpu; tch trains ResNet-18 1.75x faster than cuda on an H200, see
    /// docs/performance.md).
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Where the CUDA backend caches compiled kernels, autotune results and the driver's
    /// translated kernels (default: FULLBATCH_KERNEL_CACHE, else
    /// ~/.cache/fullbatch/kernels/<gpu>-cubecl-0.10). Delete the directory to clear it.
    #[arg(long, value_name = "DIR")]
    kernel_cache: Option<PathBuf>,
    /// The GPU to run on (cuda and tch: its CUDA index); the cpu backends have only device 0.
    /// `train` takes several, comma-separated (`--devices 0,1`): data-parallel full-batch steps
    /// (build feature `collective`); on the CPU `--devices 0,0` runs two threads on the one
    /// device.
    #[arg(
        long = "device",
        visible_alias = "devices",
        value_delimiter = ',',
        default_value = "0",
        value_name = "INDEX"
    )]
    devices: Vec<usize>,
}

/// The options of `fullbatch train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The run configuration (TOML, see experiments/cifar10/). With --resume it may be left
    /// out: the run directory's config.toml is used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory: CIFAR-10 binary version, or Fashion-MNIST idx files (default:
    /// FULLBATCH_CIFAR10 / FULLBATCH_FASHION_MNIST / /usr/share/datasets/fashion-mnist).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The run directory (default: runs/NAME, NAME from the configuration).
    #[arg(long, value_name = "RUN_DIR")]
    out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint (same backend: bit-for-bit). A
    /// run stopped before its first checkpoint starts over from step 0.
    #[arg(long)]
    resume: bool,
    /// Stop with a checkpoint once this many steps (epochs in SGD mode) are done.
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    #[command(flatten)]
    backend: BackendArgs,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Measure lambda_max of the Hessian every N steps (epochs in SGD mode) and at the last
    /// one: sets `[sharpness] every = N` of the configuration (its other keys, or their
    /// defaults, stay). It becomes part of the run's stored configuration.
    #[arg(long, value_name = "N")]
    sharpness_every: Option<usize>,
    /// Train with this seed instead of the configuration's (weights, data order, augmentation);
    /// it becomes part of the run's stored configuration.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

/// `fullbatch device ...`: checks and timings of a backend, and its kernel cache.
#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Compare one minibatch gradient of a ResNet-18 on --backend with the CPU's (Flex; same
    /// weights and images); print JSON; exit 1 above --tolerance.
    CheckGradient(CheckGradientArgs),
    /// Time training steps of a ResNet-18 on --backend (forward + backward + Nesterov SGD on
    /// one batch) after a warm-up, or with --images one full-batch step; print JSON.
    Bench(BenchArgs),
    /// Show the kernel-cache directory of the CUDA backend (kernels, autotune results,
    /// size), or clear it.
    Cache(CacheArgs),
}

/// The options of `fullbatch device check-gradient`.
#[derive(Debug, clap::Args)]
pub struct CheckGradientArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Width of the ResNet-18.
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Images in the batch (32x32).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tolerance on the relative L2 difference.
    #[arg(long, default_value_t = 1e-2)]
    tolerance: f64,
    /// Also write the JSON to this file.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

/// The options of `fullbatch device bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Width of the ResNet-18.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Images per step (32x32); with --images, images per block.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Untimed warm-up steps (kernel compilation, autotune); the first is timed alone.
    #[arg(long, default_value_t = 15)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Instead of minibatch steps: time one full-batch step over N synthetic images in
    /// blocks of --batch, plain and with the regulariser (N = 50000: the paper's CIFAR-10
    /// step).
    #[arg(long, value_name = "N")]
    images: Option<usize>,
    /// Also write the JSON to this file.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

/// The options of `fullbatch device cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// The cache directory (default as for `train --backend cuda`).
    #[arg(long, value_name = "DIR")]
    kernel_cache: Option<PathBuf>,
    /// The GPU whose default directory to use (default: GPU 0's name from nvidia-smi).
    #[arg(long, value_name = "NAME")]
    gpu: Option<String>,
    /// Delete the directory (the next run compiles every kernel again).
    #[arg(long)]
    clear: bool,
    /// Fill the (empty) cache from a .tar.xz of a cache's cubecl/ part, as
    /// scripts/gpu-check.sh packs it (a CUDA run does this by itself when the checkout has
    /// experiments/kernel-cache/<directory name>.tar.xz).
    #[arg(long, value_name = "ARCHIVE", conflicts_with = "clear")]
    import: Option<PathBuf>,
}

/// Set by SIGINT/SIGTERM: the run saves a checkpoint after the current step and exits.
static STOP: AtomicBool = AtomicBool::new(false);

/// Ctrl-C (SIGINT) and SIGTERM: during a warm-up (`warming_up`: the first step of this
/// process, when a GPU compiles kernels for minutes) or in a mode that
/// writes nothing (`at_once`), exit at once with status 130; else set [`STOP`], so the run
/// saves a checkpoint after the current step and exits, and a second one exits at once.
fn install_stop_handler(warming_up: Arc<AtomicBool>, at_once: bool) -> Result<()> {
    ctrlc::set_handler(move || {
        if at_once {
            eprintln!("interrupted");
            std::process::exit(130);
        }
        if warming_up.load(Ordering::SeqCst) {
            eprintln!(
                "interrupted during the warm-up (the first step of this process); nothing of it \
                 was written: the run directory holds its last checkpoint (or none; --resume then starts over), \
                 and the kernels compiled so far stay in the kernel cache"
            );
            std::process::exit(130);
        }
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("interrupted again: exiting without a checkpoint of the current step");
            std::process::exit(130);
        }
        eprintln!("stopping after the current step with a checkpoint (Ctrl-C again to exit at once)");
    })?;
    Ok(())
}

/// What a [`Job`] runs on: names, the kernel cache, the warm-up flag.
pub struct Setup {
    backend: &'static str,
    device: String,
    kernel_cache: Option<KernelCache>,
    warming_up: Arc<AtomicBool>,
}

/// A command that runs on any backend.
trait Job {
    /// The backend the job asks for.
    fn backend(&self) -> &BackendArgs;
    /// Whether Ctrl-C exits at once: only for jobs that write nothing an interruption could
    /// leave half-done, which say so; others stop at their next safe point.
    fn exits_at_once(&self) -> bool {
        false
    }
    /// Runs the job on backend `B`.
    fn run<B: AutodiffBackend>(self, devices: &[B::Device], setup: Setup) -> Result<ExitCode>;
}

/// The name of GPU `index` from nvidia-smi ("cuda device INDEX" when it cannot say).
fn gpu_name(index: usize) -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", &index.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("cuda device {index}"))
}

/// The number of CUDA devices a process started now would see: the entries of
/// `CUDA_VISIBLE_DEVICES` when it is set, else the GPUs nvidia-smi lists (0 without it).
pub(crate) fn cuda_device_count() -> usize {
    if let Ok(visible) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return visible.split(',').filter(|d| !d.trim().is_empty()).count();
    }
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("GPU ")).count())
}

/// Checks that `backend` has device `index`.
///
/// # Errors
/// Naming the index and the devices there are.
pub(crate) fn check_device(backend: BackendChoice, index: usize) -> Result<()> {
    match backend {
        BackendChoice::Cpu | BackendChoice::TchCpu if index != 0 => {
            bail!("device {index} does not exist: the {} backend has one device, 0", backend_name(backend))
        }
        BackendChoice::Cuda | BackendChoice::Tch if index > 0 => {
            let n = cuda_device_count();
            if index >= n {
                bail!(
                    "device {index} does not exist: {n} CUDA device(s) visible{}",
                    if n > 0 { format!(" (0..={})", n - 1) } else { String::new() }
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The name `--backend` takes for `backend`.
pub(crate) fn backend_name(backend: BackendChoice) -> String {
    use clap::ValueEnum;
    backend.to_possible_value().map_or_else(|| format!("{backend:?}"), |v| v.get_name().to_string())
}

/// Puts every kernel cache of the CUDA backend under one directory. Runs before any
/// thread of this process is started (the driver's variables are set in the environment).
#[cfg(feature = "cuda")]
fn cuda_kernel_cache(explicit: Option<&Path>, gpu: &str) -> Result<KernelCache> {
    let cache = KernelCache::locate(explicit, gpu)?;
    for (key, value) in cache.driver_env() {
        // SAFETY: called before the signal handler or any other thread of this process
        // starts, so nothing reads the environment concurrently.
        unsafe { std::env::set_var(key, value) };
    }
    if cache.kernel_count() == 0
        && let Some(archive) = cache.committed_archive()
    {
        let kernels = cache.import_archive(&archive)?;
        eprintln!("kernel cache filled from {} ({kernels} kernels)", archive.display());
    }
    cache.install_in_cubecl()?;
    let (kernels, tuned) = (cache.kernel_count(), cache.autotune_count());
    let state = if kernels == 0 {
        "empty: the first steps compile every kernel, which takes minutes".to_string()
    } else {
        format!("{kernels} compiled kernels, {tuned} autotune results")
    };
    eprintln!("kernel cache {} ({state})", cache.root.display());
    Ok(cache)
}

fn print_json(value: &impl serde::Serialize, out: Option<&Path>) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    if let Some(path) = out {
        // Temporary file and rename: Ctrl-C exits these jobs at once, never leaving half a file.
        fullbatch::atomic_file::write(path, format!("{text}\n").as_bytes())?;
    }
    Ok(())
}

/// The fastest backend built in. Measured on an H200 (experiments/results/gpu/): ResNet-18
/// width 64, batch 128, LibTorch 4,934 images/s against the CUDA backend's 2,820, and a
/// regularised full-batch step over 50,000 images in 19.5 s against 37.9 s.
pub(crate) fn default_backend() -> BackendChoice {
    if cfg!(feature = "tch") {
        BackendChoice::Tch
    } else if cfg!(feature = "cuda") {
        BackendChoice::Cuda
    } else {
        BackendChoice::Cpu
    }
}

/// The one device of a job that takes one.
fn single<D>(devices: &[D]) -> Result<&D> {
    match devices {
        [device] => Ok(device),
        _ => bail!("this command runs on one device; --devices is for `train`"),
    }
}

/// Runs `job` on the backend it asks for.
fn dispatch<J: Job>(job: J) -> Result<ExitCode> {
    let args = job.backend().clone();
    let choice = args.backend.unwrap_or_else(default_backend);
    for &index in &args.devices {
        check_device(choice, index)?;
    }
    let warming_up = Arc::new(AtomicBool::new(false));
    let setup =
        |backend, device, kernel_cache| Setup { backend, device, kernel_cache, warming_up: Arc::clone(&warming_up) };
    let at_once = job.exits_at_once();
    match choice {
        BackendChoice::Cpu => {
            install_stop_handler(Arc::clone(&warming_up), at_once)?;
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let devices = vec![Default::default(); args.devices.len()];
            job.run::<fullbatch::deep::CpuAutodiff>(
                &devices,
                setup("flex-f32", format!("cpu ({threads} threads)"), None),
            )
        }
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => {
            let name = gpu_name(args.devices.first().copied().unwrap_or(0));
            let cache = cuda_kernel_cache(args.kernel_cache.as_deref(), &name)?;
            install_stop_handler(Arc::clone(&warming_up), at_once)?;
            let devices: Vec<_> = args.devices.iter().map(|&i| burn::backend::cuda::CudaDevice::new(i)).collect();
            job.run::<fullbatch::deep::CudaAutodiff>(&devices, setup("cuda-f32", name, Some(cache)))
        }
        #[cfg(not(feature = "cuda"))]
        BackendChoice::Cuda => {
            bail!("this binary was built without the `cuda` feature (cargo build --features cuda)")
        }
        #[cfg(feature = "tch")]
        BackendChoice::Tch | BackendChoice::TchCpu => {
            install_stop_handler(Arc::clone(&warming_up), at_once)?;
            let cpu_only = choice == BackendChoice::TchCpu;
            let first = args.devices.first().copied().unwrap_or(0);
            let (device, desc) = fullbatch::deep::device::libtorch_device(cpu_only, first)?;
            let name = if matches!(device, burn::backend::libtorch::LibTorchDevice::Cpu) {
                "tch-cpu-f32"
            } else {
                "tch-cuda-f32"
            };
            let mut devices = vec![device];
            for &i in &args.devices[1..] {
                devices.push(fullbatch::deep::device::libtorch_device(cpu_only, i)?.0);
            }
            job.run::<fullbatch::deep::TchAutodiff>(&devices, setup(name, desc, None))
        }
        #[cfg(not(feature = "tch"))]
        BackendChoice::Tch | BackendChoice::TchCpu => {
            bail!("this binary was built without the `tch` feature (see docs/gpu.md: make test-tch)")
        }
    }
}

/// Runs `fullbatch train`.
pub fn train(args: TrainArgs) -> Result<ExitCode> {
    dispatch(args)
}

/// Runs `fullbatch device ...`.
pub fn device(command: DeviceCommand) -> Result<ExitCode> {
    match command {
        DeviceCommand::CheckGradient(args) => dispatch(args),
        DeviceCommand::Bench(args) => dispatch(args),
        DeviceCommand::Cache(args) => cache(&args),
    }
}

fn cache(args: &CacheArgs) -> Result<ExitCode> {
    let name = args.gpu.clone().unwrap_or_else(|| gpu_name(0));
    let cache = KernelCache::locate(args.kernel_cache.as_deref(), &name)?;
    let dir = &cache.root;
    if args.clear {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            eprintln!("removed {}", dir.display());
        } else {
            eprintln!("{} does not exist: nothing to clear", dir.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(archive) = &args.import {
        let kernels = cache.import_archive(archive)?;
        eprintln!("imported {kernels} kernels from {} into {}", archive.display(), dir.display());
    }
    let value = serde_json::json!({
        "gpu": name,
        "committed_archive": cache.committed_archive(),
        "dir": dir,
        "exists": dir.exists(),
        "kernels": cache.kernel_count(),
        "autotune_results": cache.autotune_count(),
        "bytes": cache.size_bytes(),
    });
    print_json(&value, None)?;
    Ok(ExitCode::SUCCESS)
}

impl Job for CheckGradientArgs {
    fn backend(&self) -> &BackendArgs {
        &self.backend
    }

    /// Writes nothing: Ctrl-C exits at once.
    fn exits_at_once(&self) -> bool {
        true
    }

    fn run<B: AutodiffBackend>(self, devices: &[B::Device], setup: Setup) -> Result<ExitCode> {
        let device = single(devices)?;
        let cpu = burn::backend::flex::FlexDevice;
        let warmup = Warmup::start("gradient check", setup.kernel_cache.as_ref(), true, None);
        let report = bench::gradient_agreement::<B, fullbatch::deep::CpuAutodiff>(
            device,
            &cpu,
            self.width,
            self.batch,
            32,
            self.tolerance,
            0,
        )?;
        let warm = warmup.finish();
        let value = serde_json::json!({
            "backend": setup.backend, "device": setup.device, "reference": "flex-f32", "gradient": report,
            "seconds": warm.seconds, "kernels_compiled": warm.kernels_compiled,
        });
        print_json(&value, self.json_out.as_deref())?;
        Ok(if report.pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }
}

impl Job for BenchArgs {
    fn backend(&self) -> &BackendArgs {
        &self.backend
    }

    /// Writes nothing: Ctrl-C exits at once.
    fn exits_at_once(&self) -> bool {
        true
    }

    fn run<B: AutodiffBackend>(self, devices: &[B::Device], setup: Setup) -> Result<ExitCode> {
        let device = single(devices)?;
        let value = match self.images {
            Some(images) => {
                let params = FullBatchTimingParams {
                    width: self.width,
                    images,
                    block: self.batch,
                    show_warmup: true,
                    kernel_cache: setup.kernel_cache.clone(),
                    ..FullBatchTimingParams::default()
                };
                let report = bench::full_batch_timing::<B>(device, &params)?;
                serde_json::json!({ "backend": setup.backend, "device": setup.device, "full_batch": report })
            }
            None => {
                let params = ThroughputParams {
                    width: self.width,
                    batch: self.batch,
                    warmup_iters: self.warmup,
                    iters: self.iters,
                    show_warmup: true,
                    kernel_cache: setup.kernel_cache.clone(),
                    ..ThroughputParams::default()
                };
                let report = bench::throughput::<B>(device, &params)?;
                serde_json::json!({ "backend": setup.backend, "device": setup.device, "throughput": report })
            }
        };
        print_json(&value, self.json_out.as_deref())?;
        Ok(ExitCode::SUCCESS)
    }
}

impl Job for TrainArgs {
    fn backend(&self) -> &BackendArgs {
        &self.backend
    }

    fn run<B: AutodiffBackend>(self, devices: &[B::Device], setup: Setup) -> Result<ExitCode> {
        let args = self;
        let desc = setup.device.as_str();
        // A data-parallel run records its number of devices with the backend: resume then
        // needs the same (the sums run in another order).
        let backend =
            if devices.len() > 1 { format!("{} x{}", setup.backend, devices.len()) } else { setup.backend.to_string() };
        let backend = backend.as_str();
        let mut config = match (&args.config, args.resume, &args.out) {
            (Some(path), _, _) => RunConfig::load(path)?,
            (None, true, Some(out)) => run::stored_config(out)?,
            _ => bail!("--config FILE is needed (or --resume with --out RUN_DIR)"),
        };
        if let Some(seed) = args.seed {
            config.seed = seed;
        }
        if let Some(every) = args.sharpness_every {
            config.sharpness = Some(match config.sharpness.take() {
                Some(s) => SharpnessConfig { every, ..s },
                None => SharpnessConfig::every(every),
            });
            config.validate()?;
        }
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
        let options = RunOptions {
            data_dir: args.data.clone(),
            resume: args.resume,
            max_steps: args.max_steps,
            stop: Some(&STOP),
            progress: !args.no_progress,
            report_evaluations: true,
            device: desc.to_string(),
            backend: backend.to_string(),
            kernel_cache: setup.kernel_cache.clone(),
            warming_up: Some(Arc::clone(&setup.warming_up)),
        };
        eprintln!("run {} ({backend}, {desc}) in {}", config.name, out.display());
        match run::run_on::<B>(&config, &out, devices, &options) {
            Ok(summary) => {
                if let Some(last) = &summary.last {
                    eprintln!(
                        "{} of {} steps; last: train loss {:.4}, test acc {}",
                        summary.steps_done,
                        summary.total_steps,
                        last.train_loss,
                        last.test_acc.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a))
                    );
                }
                if summary.stopped_early {
                    eprintln!("stopped early with a checkpoint; continue with --resume --out {}", out.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ Error::Diverged { .. }) => {
                let kept = match run::latest_checkpoint(&out) {
                    Ok(Some((path, step))) => {
                        format!("the last good checkpoint is {} (step {step})", path.display())
                    }
                    _ => "no checkpoint was written".into(),
                };
                eprintln!("error: {e}; stopped, {kept}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        }
    }
}
