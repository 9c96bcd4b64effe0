#!/usr/bin/env bash
# GPU check of the burn half, made for a short lease of a fresh, offline GPU machine (15 minutes
# in all, at most 10 per command, results back only as a few files from $OUT). Stages run in this
# order: PyTorch and LibTorch first (short and certain), then the CUDA backend:
#   cold start  seconds to the first training step of ResNet-18 (width 64, batch 128) with the
#               kernel cache as found (empty on a fresh machine, unless a cache is carried),
#   warm start  the same in a new process with the cubecl cache the first one filled and an empty
#               driver cache (as on a fresh machine given the committed cache),
#   steady      images/s of forward + backward + Nesterov SGD, for the CUDA backend, the LibTorch
#               backend and PyTorch (scripts/torch_resnet18.py) in the same command, and ratios,
#   full batch  one full-batch step over 50,000 synthetic images in blocks of 128, plain and with
#               the regulariser (two passes per block), on CUDA, LibTorch and PyTorch,
#   gradient    one minibatch gradient on CUDA and on LibTorch-CUDA vs the CPU (Flex), rel. L2,
#   smoke       experiments/cifar10/gpu-smoke.toml on CUDA: first-step time, steady step time, loss,
#               and exact resume (stopped at step 6, resumed, log lines compared),
#   scaled      only when GPU_CHECK_STAGES names it: the scaled protocol (experiments/scaled/,
#               Fashion-MNIST from SCALED_DATA, default dist/fashion-mnist as gpu-bundle.sh
#               leaves it: carry it) with `fullbatch reproduce` on LibTorch; its report and each
#               row's log go to $OUT/scaled/ (SCALED_ARGS: extra reproduce options).
# Every stage prints progress as it goes (the binaries' warm-up lines count compiled kernels).
# A packer running every 30 s copies into $OUT: gpu-check.json (the summary so far),
# gpu-check.log (all stage logs, GPU utilisation every 5 s), kernel-cache.tar.xz (the cubecl
# kernel cache) and driver-cache.tar.xz (the driver's SASS cache, for its size), so a stage
# killed at the command's limit still returns what it did, and a later call that carries
# kernel-cache.tar.xz starts warm. Stages get what is left of GPU_CHECK_BUDGET, each up to its cap.
#
# Usage (repository root; the bundle from `make gpu-bundle` carried):
#   bash scripts/gpu-check.sh [BUNDLE]   BUNDLE: dist/fullbatch-gpu.tar.xz (default) or its
#                                        unpacked directory
# Environment:
#   OUT                   where results go (default experiments/results/gpu/DATE)
#   GPU_CHECK_BUDGET      seconds for all stages (default 540)
#   KERNEL_CACHE_ARCHIVE  a kernel-cache.tar.xz of an earlier run on the same GPU type: start warm
#                         (default: the bundle's kernel-cache/<gpu>-cubecl-0.10.tar.xz, a copy of
#                         experiments/kernel-cache/, if any; KERNEL_CACHE_ARCHIVE=none: empty)
#   GPU_CHECK_STAGES      comma-separated subset, in order (default: all in the order above but
#                         `scaled`, which runs only when named)
#   GPU_CHECK_CPU=1       dry run on a machine without a GPU: every stage on the CPU backends with
#                         a tiny model (checks this script, not a GPU)
#   CUDA_PATH             CUDA toolkit whose headers NVRTC needs (default /usr/local/cuda)
set -uo pipefail

BUNDLE=${1:-dist/fullbatch-gpu.tar.xz}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-540}
DEADLINE=$((START + BUDGET))
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
OUT=${OUT:-experiments/results/gpu/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d /tmp/gpu-check.XXXXXX)   # stage outputs; packed into $OUT
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
CPU=${GPU_CHECK_CPU:-0}
say() { echo "[gpu-check $(( $(date +%s) - START )) s] $*" >&2; }

# --- the bundle -------------------------------------------------------------------------------
if [ -d "$BUNDLE" ]; then
  BDIR=$BUNDLE
elif [ -f "$BUNDLE" ]; then
  mkdir -p "$W/bundle"
  tar -C "$W/bundle" -xJf "$BUNDLE" || { say "error: cannot unpack $BUNDLE"; exit 2; }
  BDIR=$W/bundle/fullbatch-gpu
else
  say "error: no bundle at $BUNDLE (build it with: make gpu-bundle)"; exit 2
fi
# shellcheck source=/dev/null
source "$BDIR/env.sh"
# The helper scripts beside this one (the checkout's), else the bundle's copies.
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -f "$SCRIPTS/torch_resnet18.py" ] && [ -f "$SCRIPTS/gpu-check-summary.py" ] || SCRIPTS=$BDIR/scripts
BIN=$FULLBATCH_BIN
TCH_BIN=$FULLBATCH_TCH_BIN
COMMIT=$FULLBATCH_GIT_COMMIT
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
GPU_NAME=${GPU%%,*}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$OUT/nvidia-smi.txt"
say "device: ${GPU:-none}; commit $COMMIT; bundle $BDIR"

# --- the kernel cache -------------------------------------------------------------------------
K=$W/kernel-cache
mkdir -p "$K"
# The name fullbatch gives this GPU's default cache directory (e.g. nvidia-h200-cubecl-0.10).
TAG=$("$BIN" device cache --gpu "${GPU_NAME:-device}" 2>/dev/null \
  | python3 -c 'import json, os, sys; print(os.path.basename(json.load(sys.stdin)["dir"]))' 2>/dev/null)
CACHE_SOURCE=empty
if [ "${KERNEL_CACHE_ARCHIVE:-}" = none ]; then
  CACHE_SOURCE="empty (KERNEL_CACHE_ARCHIVE=none)"
elif [ -n "${KERNEL_CACHE_ARCHIVE:-}" ] && [ -f "$KERNEL_CACHE_ARCHIVE" ]; then
  tar -C "$K" -xJf "$KERNEL_CACHE_ARCHIVE" && CACHE_SOURCE="carried $KERNEL_CACHE_ARCHIVE"
elif [ -n "$TAG" ] && [ -f "$BDIR/kernel-cache/$TAG.tar.xz" ]; then
  tar -C "$K" -xJf "$BDIR/kernel-cache/$TAG.tar.xz" && CACHE_SOURCE="bundle kernel-cache/$TAG.tar.xz"
fi
export FULLBATCH_KERNEL_CACHE=$K
count_kernels() { find "$K" -name toc.json.log -exec cat {} + 2>/dev/null | grep -c . ; }
KERNELS_AT_START=$(count_kernels)
say "kernel cache: $CACHE_SOURCE ($KERNELS_AT_START kernels)"

# --- packing ----------------------------------------------------------------------------------
declare -A STATUS ELAPSED
STAGES_DONE=""
pack() {
  # The cache (cubecl's part: PTX and autotune results; the driver's SASS is rebuilt from PTX).
  if [ -d "$K/cubecl" ]; then
    tar -C "$K" -cf - cubecl 2>/dev/null | xz -1 -T0 >"$W/kc.tmp" && mv "$W/kc.tmp" "$OUT/kernel-cache.tar.xz"
  fi
  # The driver's SASS cache, to see its size (valid only for the same GPU and driver).
  if [ -d "$K/nv-compute" ]; then
    tar -C "$K" -cf - nv-compute 2>/dev/null | xz -1 -T0 >"$W/nv.tmp" && mv "$W/nv.tmp" "$OUT/driver-cache.tar.xz"
  fi
  for f in "$W"/*.log; do [ -e "$f" ] && { echo "===== $(basename "$f")"; cat "$f"; }; done >"$W/all.tmp" 2>/dev/null
  # The scaled protocol: its report and each row's small files (no checkpoints).
  if [ -d "$W/scaled" ]; then
    for f in "$W"/scaled/report.* "$W"/scaled/*/{config.toml,run.json,log.jsonl,segments.jsonl,train-output.log}; do
      [ -f "$f" ] || continue
      rel=${f#"$W"/}; mkdir -p "$OUT/$(dirname "$rel")" && cp "$f" "$OUT/$rel"
    done
  fi
  mv "$W/all.tmp" "$OUT/gpu-check.log"
  summarize >/dev/null 2>&1
}
summarize() {
  local status="" s
  for s in $STAGES_DONE; do status="$status $s=${STATUS[$s]}:${ELAPSED[$s]}"; done
  GC_W=$W GC_OUT=$OUT GC_DATE=$DATE GC_GPU=$GPU GC_COMMIT=$COMMIT GC_STATUS=$status \
  GC_TOTAL=$(( $(date +%s) - START )) GC_CACHE_SOURCE=$CACHE_SOURCE GC_K0=$KERNELS_AT_START \
  GC_K1=$(count_kernels) GC_CPU=$CPU python3 "$SCRIPTS/gpu-check-summary.py"
}
packer() { while sleep 30; do pack; done; }
packer &
PACKER=$!
# GPU utilisation and clocks every 5 s (is the GPU idle while kernels compile?).
if [ "$CPU" != 1 ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm --format=csv -l 5 \
    >"$W/gpu-utilisation.log" 2>&1 &
  SMI=$!
fi
finish() { kill "$PACKER" ${SMI:-} 2>/dev/null; pack; }
trap 'finish; exit 130' INT TERM

# stage NAME CAP COMMAND...: runs with the time left (at most CAP s), logs to $W/NAME.log,
# shows the log's new lines as they come, records exit status and seconds.
stage() {
  local name=$1 cap=$2; shift 2
  local left=$((DEADLINE - $(date +%s) - 10))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 15 ]; then
    say "skip $name: ${left} s left"; STATUS[$name]=skipped; ELAPSED[$name]=0; STAGES_DONE="$STAGES_DONE $name"; return
  fi
  local t0; t0=$(date +%s)
  say "== $name (limit ${limit} s)"
  # stderr (progress) to the log and the screen; stdout (JSON) to the log only.
  timeout --signal=INT --kill-after=10 "$limit" bash -c '"$@"' _ "$@" \
    > >(cat >>"$W/$name.log") 2> >(tee -a "$W/$name.log" >&2)
  local rc=$?
  STATUS[$name]=$rc; ELAPSED[$name]=$(( $(date +%s) - t0 )); STAGES_DONE="$STAGES_DONE $name"
  say "   $name: exit $rc in ${ELAPSED[$name]} s"
}
want() { [ -z "${GPU_CHECK_STAGES:-}" ] || [[ ",$GPU_CHECK_STAGES," == *",$1,"* ]]; }

# --- sizes and backends ---------------------------------------------------------------------------
if [ "$CPU" = 1 ]; then
  CUDA=cpu; TCH=tch-cpu; TORCH_DEV=cpu; WIDTH=8; BATCH=16; SMOKE_W=4; FB_IMAGES=64
else
  CUDA=cuda; TCH=tch; TORCH_DEV=cuda; WIDTH=64; BATCH=128; SMOKE_W=64; FB_IMAGES=50000
fi
bench() { # NAME BIN BACKEND WARMUP ITERS BATCH
  "$2" device bench --backend "$3" --width "$WIDTH" --batch "$6" \
    --warmup "$4" --iters "$5" --json-out "$W/$1.json"
}
SMOKE=$BDIR/experiments/cifar10/gpu-smoke.toml
if [ "$CPU" = 1 ]; then
  sed -e "s/^width = 64/width = $SMOKE_W/" -e 's/n = 2560, n_test = 512/n = 128, n_test = 64/' \
      -e 's/^block_size = 128/block_size = 32/' -e 's/^blocks = \[2, 2, 2, 2\]/blocks = [1, 1]/' "$SMOKE" >"$W/smoke.toml"
  SMOKE=$W/smoke.toml
fi
smoke_resume() {
  "$BIN" train --backend "$CUDA" --config "$SMOKE" --out "$W/smoke-full" --no-progress || return $?
  "$BIN" train --backend "$CUDA" --config "$SMOKE" --out "$W/smoke-part" --no-progress --max-steps 6 || return $?
  "$BIN" train --backend "$CUDA" --config "$SMOKE" --out "$W/smoke-part" --no-progress --resume
}

export W WIDTH BIN CUDA SMOKE
export -f bench smoke_resume

# The reference and LibTorch stages first: they are short and certain, and the CUDA cold start
# (NVRTC compiles about one kernel a second) then gets whatever is left.
want bench_torch && stage bench_torch 90 python3 "$SCRIPTS/torch_resnet18.py" --device "$TORCH_DEV" \
  --width "$WIDTH" --batch "$BATCH" --warmup 10 --iters 50 --json-out "$W/bench_torch.json"
if [ -x "$TCH_BIN" ]; then
  want bench_tch && stage bench_tch 90 bench bench_tch "$TCH_BIN" "$TCH" 10 50 "$BATCH"
  # Strict float32: NVIDIA_TF32_OVERRIDE=0 turns TF32 off in cuDNN and cuBLAS. With TF32 (the
  # default) the gradient moves by several percent (scripts/tf32_gradient_error.py), which the
  # second stage records.
  want gradient_tch && stage gradient_tch 60 env NVIDIA_TF32_OVERRIDE=0 "$TCH_BIN" device check-gradient \
    --backend "$TCH" --width 16 --batch 16 --json-out "$W/gradient_tch.json"
  want gradient_tch_tf32 && stage gradient_tch_tf32 60 "$TCH_BIN" device check-gradient --backend "$TCH" \
    --width 16 --batch 16 --tolerance 0.2 --json-out "$W/gradient_tch_tf32.json"
fi
want full_batch_torch && stage full_batch_torch 60 python3 "$SCRIPTS/torch_resnet18.py" --device "$TORCH_DEV" \
  --width "$WIDTH" --batch "$BATCH" --full-batch "$FB_IMAGES" --json-out "$W/full_batch_torch.json"
if [ -x "$TCH_BIN" ]; then
  want full_batch_tch && stage full_batch_tch 75 "$TCH_BIN" device bench --backend "$TCH" --width "$WIDTH" \
    --images "$FB_IMAGES" --batch "$BATCH" --json-out "$W/full_batch_tch.json"
fi
want bench_cuda_cold && stage bench_cuda_cold 480 bench bench_cuda_cold "$BIN" "$CUDA" 3 10 "$BATCH"
# Warm start as on a fresh machine given the committed cache: cubecl's PTX and autotune results
# carried, the driver's SASS cache empty (the driver translates every PTX again).
mkdir -p "$W/nv-fresh"
want bench_cuda_warm && stage bench_cuda_warm 120 env CUDA_CACHE_PATH="$W/nv-fresh" \
  bash -c 'bench bench_cuda_warm "$BIN" "$CUDA" 10 50 "$1"' _ "$BATCH"
# At the benchmark's shapes, whose kernels are compiled by now (other shapes autotune again: at
# width 16, batch 16 that took over two minutes on an H200). cubecl's f32 matmuls run on TF32.
want gradient_cuda && stage gradient_cuda 90 "$BIN" device check-gradient --backend "$CUDA" \
  --width "$WIDTH" --batch "$BATCH" --tolerance 0.2 --json-out "$W/gradient_cuda.json"
want full_batch_cuda && stage full_batch_cuda 120 "$BIN" device bench --backend "$CUDA" --width "$WIDTH" \
  --images "$FB_IMAGES" --batch "$BATCH" --json-out "$W/full_batch_cuda.json"
want smoke && stage smoke 180 smoke_resume
# The scaled protocol, only when asked for by name (it wants most of a call: estimated at most
# 8.3 minutes of training on an H200, docs/reproduction.md).
SCALED_DATA=${SCALED_DATA:-dist/fashion-mnist}
if [[ ",${GPU_CHECK_STAGES:-}," == *",scaled,"* ]] && [ -x "$TCH_BIN" ]; then
  # shellcheck disable=SC2086
  stage scaled 540 "$TCH_BIN" reproduce --configs "$BDIR/experiments/scaled" --data "$SCALED_DATA" \
    --runs "$W/scaled" --backend "$TCH" --no-progress ${SCALED_ARGS:-}
fi
want bench_cuda_b512 && stage bench_cuda_b512 90 bench bench_cuda_b512 "$BIN" "$CUDA" 5 20 $((BATCH * 4))

kill "$PACKER" ${SMI:-} 2>/dev/null
wait "$PACKER" 2>/dev/null
pack
summarize
say "results in $OUT ($(ls "$OUT" | tr '\n' ' '))"
rm -rf "$W"
