//! Which kernels OpenBLAS runs, and a remedy for CPUs newer than its CPU table.
//!
//! The matrix products of the theory module go through OpenBLAS (ndarray's `blas` feature,
//! system library). OpenBLAS built with `DYNAMIC_ARCH` (Debian's is) picks its kernels once, when
//! the library loads, from the CPU's family and model numbers. A CPU newer than the library falls
//! back to the generic SSE3 kernels ("Prescott"): Debian 12's OpenBLAS 0.3.21 does this on Intel
//! Xeon family 6 model 207 (Emerald Rapids), where its matrix products then run 2.8x slower than
//! with the AVX-512 kernels the CPU supports (`cargo bench --bench mlp_derivatives -- matmuls`:
//! 34.3 vs 9.0 ms at n = 1,000; docs/performance.md).
//!
//! [`select_native_kernels`] detects that case (a pre-AVX2 kernel set on a CPU with AVX2 and FMA)
//! and re-initialises OpenBLAS with the kernels the CPU's features allow, through OpenBLAS's own
//! `OPENBLAS_CORETYPE` mechanism. It does nothing when `OPENBLAS_CORETYPE` is set (the user's
//! choice stands), when the detected kernels already use AVX2, or when the library is not a
//! `DYNAMIC_ARCH` OpenBLAS. The binaries call it first thing in `main`.

use std::ffi::{CStr, CString, c_char};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The kernel sets OpenBLAS 0.3 falls back to or picks for CPUs without AVX2 and FMA: when one of
/// these runs on a CPU with AVX2 and FMA, OpenBLAS did not recognise the CPU.
const PRE_AVX2_CORES: [&str; 20] = [
    "Prescott",
    "Katmai",
    "Coppermine",
    "Northwood",
    "Banias",
    "Atom",
    "Core2",
    "Penryn",
    "Dunnington",
    "Nehalem",
    "Sandybridge",
    "Opteron",
    "Opteron_SSE3",
    "Barcelona",
    "Bobcat",
    "Athlon",
    "Nano",
    "Bulldozer",
    "Piledriver",
    "Steamroller",
];

/// What [`select_native_kernels`] found and did; recorded beside results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlasKernels {
    /// OpenBLAS's kernel set when the library loaded (`openblas_get_corename`), `None` when the
    /// BLAS is not OpenBLAS.
    pub detected: Option<String>,
    /// The kernel set in use afterwards.
    pub in_use: Option<String>,
    /// Why it was (or was not) changed.
    pub reason: String,
}

/// The result of the first call, returned again by later ones.
static SELECTED: Mutex<Option<BlasKernels>> = Mutex::new(None);

/// Looks up a symbol of the loaded libraries (OpenBLAS is linked dynamically).
fn symbol(name: &str) -> Option<*mut libc::c_void> {
    let name = CString::new(name).expect("symbol names have no NUL");
    // SAFETY: dlsym with RTLD_DEFAULT only reads the loaded objects' symbol tables.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// OpenBLAS's kernel set (`openblas_get_corename`), or `None` when the BLAS is not OpenBLAS.
pub fn core_name() -> Option<String> {
    let f = symbol("openblas_get_corename")?;
    // SAFETY: `char *openblas_get_corename(void)` returns a static NUL-terminated string.
    let name = unsafe {
        let f: extern "C" fn() -> *const c_char = std::mem::transmute(f);
        CStr::from_ptr(f())
    };
    Some(name.to_string_lossy().into_owned())
}

/// The best OpenBLAS kernel set for double precision this CPU's features allow, or `None` when
/// it has no AVX2 and FMA (OpenBLAS's own choice is then kept).
fn native_core() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512cd")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl");
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        if avx512 {
            Some("SkylakeX")
        } else if avx2 {
            Some("Haswell")
        } else {
            None
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Makes OpenBLAS use the kernels this CPU supports when it fell back to pre-AVX2 kernels on a
/// CPU with AVX2 and FMA (see the module docs); returns what it found and did. Later calls return
/// the first call's answer and change nothing.
///
/// # Safety
/// No other thread may be inside a BLAS call, or start one, while this runs: OpenBLAS's kernel
/// table is replaced. Call it at the start of `main`, before any threads that use BLAS exist.
/// It also sets the environment variable `OPENBLAS_CORETYPE` (inherited by child processes, which
/// then load the same kernels), which is only sound while no other thread reads the environment.
pub unsafe fn select_native_kernels() -> BlasKernels {
    let mut selected = SELECTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = selected.as_ref() {
        return k.clone();
    }
    let detected = core_name();
    let keep =
        |reason: &str| BlasKernels { detected: detected.clone(), in_use: detected.clone(), reason: reason.into() };
    let kernels = match (&detected, native_core()) {
        (None, _) => keep("the BLAS is not OpenBLAS"),
        (Some(_), _) if std::env::var_os("OPENBLAS_CORETYPE").is_some() => keep("OPENBLAS_CORETYPE is set"),
        (Some(d), Some(native)) if PRE_AVX2_CORES.iter().any(|c| c.eq_ignore_ascii_case(d)) => {
            match (symbol("gotoblas_dynamic_quit"), symbol("gotoblas_dynamic_init")) {
                (Some(quit), Some(init)) => {
                    // SAFETY: the caller guarantees no concurrent BLAS calls or environment reads.
                    // `gotoblas_dynamic_quit` clears the kernel table and `gotoblas_dynamic_init`
                    // fills it again from OPENBLAS_CORETYPE, as at load time.
                    unsafe {
                        std::env::set_var("OPENBLAS_CORETYPE", native);
                        let quit: extern "C" fn() = std::mem::transmute(quit);
                        let init: extern "C" fn() = std::mem::transmute(init);
                        quit();
                        init();
                    }
                    BlasKernels {
                        detected: detected.clone(),
                        in_use: core_name(),
                        reason: format!("OpenBLAS chose {d} on a CPU with the features of {native}"),
                    }
                }
                _ => keep("OpenBLAS is not a DYNAMIC_ARCH build"),
            }
        }
        (Some(_), _) => keep("OpenBLAS's choice matches the CPU"),
    };
    *selected = Some(kernels.clone());
    kernels
}

/// What [`select_native_kernels`] did in this process, or, when it was not called, OpenBLAS's
/// kernel set as loaded.
pub fn kernels() -> BlasKernels {
    let selected = SELECTED.lock().unwrap_or_else(|e| e.into_inner());
    selected.clone().unwrap_or_else(|| {
        let detected = core_name();
        BlasKernels { detected: detected.clone(), in_use: detected, reason: "not selected by this process".into() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openblas_reports_its_kernels() {
        // The crate links OpenBLAS (ndarray-linalg's openblas-system): its name must be readable.
        let name = core_name().expect("OpenBLAS is linked");
        assert!(!name.is_empty());
        // Without select_native_kernels the kernels in use are the ones loaded.
        let k = kernels();
        assert_eq!(k.detected, k.in_use);
    }
}
