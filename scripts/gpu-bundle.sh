#!/usr/bin/env bash
# Builds the GPU bundle: one archive to copy to a GPU machine (no cargo, no network, no OpenBLAS
# needed there) and unpack.
#
#   bash scripts/gpu-bundle.sh          (or: make gpu-bundle)
#
# Writes dist/fullbatch-gpu.tar.xz (and dist/fullbatch-gpu.json, its manifest) holding:
#   bin/fullbatch          the CUDA build (feature `cuda`, stripped): burn's CUDA backend, kernels
#                          compiled by NVRTC at run time (needs the CUDA headers: CUDA_PATH)
#   bin/fullbatch-tch      the LibTorch build (feature `tch`, stripped): needs torch 2.11's
#                          libraries at run time (env.sh finds them through python3)
#   lib/                   the shared libraries the binaries need beyond glibc, libstdc++ and
#                          libtorch: OpenBLAS and its Fortran run time (the GPU image has none)
#   kernel-cache/          the committed kernel caches, experiments/kernel-cache/<gpu>-cubecl-0.10.tar.xz
#   scripts/, experiments/cifar10/gpu-smoke.toml   what gpu-check.sh runs
#   env.sh                 `source env.sh`: LD_LIBRARY_PATH, CUDA_PATH, FULLBATCH_BIN, ...
#   MANIFEST.json          git commit, build date, versions, file sizes
# Fails if the archive is over 40 MiB.
#
# Build directories: target-cuda (CUDARC_CUDA_VERSION=13000: no nvcc needed here) and target-tch
# (libtorch from scripts/libtorch.sh). A clean build of both takes about half an hour on 2 cores.
# Environment: BUNDLE_SKIP_TCH=1 leaves the LibTorch build out; BUNDLE_OUT (default dist).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${BUNDLE_OUT:-dist}
LIMIT_BYTES=$((40 * 1024 * 1024))
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT-dirty"; fi

echo "== CUDA build (target-cuda)" >&2
CUDARC_CUDA_VERSION=13000 CARGO_TARGET_DIR=target-cuda FULLBATCH_GIT_COMMIT=$COMMIT \
  cargo build --release --features cuda --bin fullbatch
if [ "${BUNDLE_SKIP_TCH:-0}" != 1 ]; then
  echo "== LibTorch build (target-tch)" >&2
  # shellcheck source=scripts/libtorch.sh
  source scripts/libtorch.sh
  CARGO_TARGET_DIR=target-tch FULLBATCH_GIT_COMMIT=$COMMIT cargo build --release --features tch --bin fullbatch
fi

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
B=$STAGE/fullbatch-gpu
mkdir -p "$B/bin" "$B/lib" "$B/scripts" "$B/experiments/cifar10"
strip -o "$B/bin/fullbatch" target-cuda/release/fullbatch
if [ "${BUNDLE_SKIP_TCH:-0}" != 1 ]; then strip -o "$B/bin/fullbatch-tch" target-tch/release/fullbatch; fi

# Shared libraries: every one a binary resolves outside glibc, the GCC run time and libtorch's
# directory, copied with links followed (the GPU image has no OpenBLAS).
system_lib() {
  case "$(basename "$1")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libutil.so*|ld-linux*|libgcc_s.so*|libstdc++.so*) return 0 ;;
    *) return 1 ;;
  esac
}
for bin in "$B"/bin/*; do
  ldd "$bin" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    if system_lib "$name"; then continue; fi
    if [ -n "${LIBTORCH:-}" ] && [[ "$path" == "$LIBTORCH"* || "$path" == *"/site-packages/"* ]]; then continue; fi
    [ -e "$B/lib/$name" ] || cp -L "$path" "$B/lib/$name"
  done
done
for need in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
  [ -e "$B/lib/$need" ] || { echo "error: $need was not found by ldd" >&2; exit 1; }
done

cp scripts/gpu-check.sh scripts/gpu-check-summary.py scripts/torch_resnet18.py "$B/scripts/"
cp experiments/cifar10/*.toml "$B/experiments/cifar10/"
mkdir -p "$B/experiments/scaled" && cp experiments/scaled/*.toml "$B/experiments/scaled/"
if compgen -G "experiments/kernel-cache/*.tar.xz" >/dev/null; then
  mkdir -p "$B/kernel-cache" && cp experiments/kernel-cache/*.tar.xz "$B/kernel-cache/"
fi
echo "$COMMIT" >"$B/GIT_COMMIT"
cat >"$B/env.sh" <<'ENV'
# source env.sh: run the bundled binaries. CUDA_PATH: the CUDA toolkit whose headers NVRTC needs.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
export FULLBATCH_BIN="$_here/bin/fullbatch"
export FULLBATCH_TCH_BIN="$_here/bin/fullbatch-tch"
export FULLBATCH_GIT_COMMIT="$(cat "$_here/GIT_COMMIT")"
_torch_lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)"
export LD_LIBRARY_PATH="$_here/lib${_torch_lib:+:$_torch_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _here _torch_lib
ENV

python3 - "$B" "$COMMIT" <<'PY'
import json, os, subprocess, sys, datetime
b, commit = sys.argv[1], sys.argv[2]
files = {}
for root, _, names in os.walk(b):
    for n in names:
        p = os.path.join(root, n)
        files[os.path.relpath(p, b)] = os.path.getsize(p)
def version(pkg):
    try:
        out = subprocess.run(["cargo", "tree", "-i", pkg, "--depth", "0", "-e", "normal", "--features", "cuda"],
                             capture_output=True, text=True).stdout.split()
        return out[1] if len(out) > 1 else None
    except Exception:
        return None
manifest = {
    "git_commit": commit,
    "built_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "burn": version("burn"), "cubecl": version("cubecl"), "libtorch": "2.11.0 (torch wheel, CUDA 13.0)",
    "files": files,
}
with open(os.path.join(b, "MANIFEST.json"), "w") as f:
    json.dump(manifest, f, indent=2)
PY

mkdir -p "$OUT_DIR"
tmp="$OUT_DIR/.fullbatch-gpu.tar.xz.tmp"
tar -C "$STAGE" -cf - fullbatch-gpu | xz -T0 -9 >"$tmp"
size=$(stat -c %s "$tmp")
cp "$B/MANIFEST.json" "$OUT_DIR/fullbatch-gpu.json"
mv "$tmp" "$OUT_DIR/fullbatch-gpu.tar.xz"
echo "wrote $OUT_DIR/fullbatch-gpu.tar.xz: $((size / 1024 / 1024)) MiB ($size bytes)" >&2
# Fashion-MNIST for gpu-check.sh's stage `scaled`, beside the bundle (30 MB of gzip files that
# xz cannot shrink; inside, they would push the bundle over its limit): carry it as well.
FMNIST=${FULLBATCH_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
if [ -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  mkdir -p "$OUT_DIR/fashion-mnist" && cp "$FMNIST"/*-ubyte.gz "$OUT_DIR/fashion-mnist/"
  echo "copied Fashion-MNIST to $OUT_DIR/fashion-mnist (carry it for the stage scaled)" >&2
fi
du -b "$B"/bin/* "$B"/lib/* | sed "s|$B/||" >&2
if [ "$size" -gt "$LIMIT_BYTES" ]; then
  echo "error: the bundle is over 40 MiB" >&2
  exit 1
fi
