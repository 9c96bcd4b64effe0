#!/usr/bin/env bash
# GPU check of the burn half, in one device call of under 8 minutes:
#   1. correctness: one minibatch gradient of a ResNet-18 (width 16, 16 images) on CUDA vs the CPU
#      (Flex), same weights and images; relative L2 difference must be below 1e-2 (TF32);
#   2. throughput: training steps (forward + backward + Nesterov SGD) of ResNet-18 width 64,
#      batch 128, 32x32, on CUDA after a warm-up (autotune), in images/s;
#   3. the same model and work in PyTorch (scripts/torch_resnet18.py), and the ratio burn/torch;
#   4. a short real run: experiments/cifar10/gpu-smoke.toml (full batch, blocks of 128, clipping,
#      regulariser, 12 steps on 2560 synthetic images), its time per step and the estimate for a
#      50,000-image CIFAR-10 step.
# Writes $DIR/gpu-check.json (device from nvidia-smi, git commit, date, all numbers) plus each
# stage's JSON and log, where DIR is the first argument, else $OUT, else experiments/results/gpu.
#
# The device has no cargo and no network: build here, carry the binary, run there:
#   CUDARC_CUDA_VERSION=13000 CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda --bin fullbatch
#   strip target-cuda/release/fullbatch          # ~37 MB; the carry limit is 64 MiB
#   run(command="FULLBATCH_BIN=target-cuda/release/fullbatch bash scripts/gpu-check.sh",
#       carry=["target-cuda/release/fullbatch"], timeout_s=540)
# Environment: FULLBATCH_BIN (default target/release/fullbatch), CUDA_PATH (default /usr/local/cuda;
# NVRTC needs its headers at run time), GPU_CHECK_FAST=1 for shorter timings.
set -uo pipefail

BIN=${FULLBATCH_BIN:-target/release/fullbatch}
DIR=${1:-${OUT:-experiments/results/gpu}}
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
if [ -d "$CUDA_PATH/lib64" ]; then export LD_LIBRARY_PATH="$CUDA_PATH/lib64:${LD_LIBRARY_PATH:-}"; fi
mkdir -p "$DIR"
START=$(date +%s)

if [ ! -x "$BIN" ]; then
  echo "error: $BIN is not an executable (set FULLBATCH_BIN to the CUDA build of fullbatch)" >&2
  exit 2
fi
COMMIT=${FULLBATCH_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || cat GIT_COMMIT 2>/dev/null || echo unknown)}
export FULLBATCH_GIT_COMMIT=$COMMIT
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
echo "device: ${GPU:-unknown}; commit $COMMIT; $DATE" >&2
nvidia-smi >"$DIR/nvidia-smi.txt" 2>&1

ITERS=50; WARM=15
if [ "${GPU_CHECK_FAST:-0}" = 1 ]; then ITERS=20; WARM=8; fi

# stage NAME TIMEOUT COMMAND...: runs with a time limit, logs to $DIR/NAME.log, records the status.
declare -A STATUS
stage() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)" >&2
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$DIR/$name.out" 2>"$DIR/$name.log"
  local rc=$?
  STATUS[$name]=$rc
  echo "   $name: exit $rc in $(( $(date +%s) - t0 )) s" >&2
  tail -n 3 "$DIR/$name.log" >&2
}

stage gradient 100 "$BIN" train --backend cuda --check-gradient --check-width 16 --check-batch 16 \
  --json-out "$DIR/gradient.json"
stage bench_burn 170 "$BIN" train --backend cuda --bench --bench-width 64 --bench-batch 128 \
  --bench-warmup "$WARM" --bench-iters "$ITERS" --json-out "$DIR/bench_burn.json"
stage bench_torch 90 python3 scripts/torch_resnet18.py --width 64 --batch 128 --warmup "$WARM" \
  --iters "$ITERS" --json-out "$DIR/bench_torch.json"
rm -rf "$DIR/smoke-run"
stage smoke 120 "$BIN" train --backend cuda --config experiments/cifar10/gpu-smoke.toml \
  --out "$DIR/smoke-run" --no-progress

export GC_DIR=$DIR GC_DATE=$DATE GC_GPU=$GPU GC_COMMIT=$COMMIT GC_TOTAL=$(( $(date +%s) - START ))
export GC_STATUS="gradient=${STATUS[gradient]} bench_burn=${STATUS[bench_burn]} bench_torch=${STATUS[bench_torch]} smoke=${STATUS[smoke]}"
python3 - <<'PY'
import json, os
d = os.environ["GC_DIR"]
def load(name):
    try:
        with open(os.path.join(d, name)) as f:
            return json.load(f)
    except Exception as e:
        return {"error": f"{name}: {e}"}
status = dict(kv.split("=") for kv in os.environ["GC_STATUS"].split())
out = {
    "device": os.environ["GC_GPU"],
    "git_commit": os.environ["GC_COMMIT"],
    "date": os.environ["GC_DATE"],
    "total_s": int(os.environ["GC_TOTAL"]),
    "exit_status": {k: int(v) for k, v in status.items()},
    "gradient_check": load("gradient.json"),
    "burn": load("bench_burn.json"),
    "torch": load("bench_torch.json"),
}
try:
    b = out["burn"]["throughput"]["images_per_s"]
    t = out["torch"]["results"]["fp32"]["images_per_s"]
    out["burn_over_torch_fp32"] = b / t
    if "bf16_autocast" in out["torch"]["results"]:
        out["burn_over_torch_bf16_autocast"] = b / out["torch"]["results"]["bf16_autocast"]["images_per_s"]
except Exception as e:
    out["burn_over_torch_fp32"] = None
    out["ratio_error"] = str(e)
smoke = {}
try:
    with open(os.path.join(d, "smoke-run", "log.jsonl")) as f:
        lines = [json.loads(l) for l in f if l.strip()]
    if not lines:
        raise ValueError("no step completed (see smoke.log)")
    warm = lines[2:] if len(lines) > 2 else lines
    step_s = sum(l["step_s"] for l in warm) / len(warm)
    smoke = {
        "steps": len(lines),
        "first_step_s": lines[0]["step_s"],
        "mean_step_s_after_2": step_s,
        "images_per_step": 2560,
        "est_cifar10_step_s_block128_reg": step_s * 50000 / 2560,
        "train_loss_first_last": [lines[0]["train_loss"], lines[-1]["train_loss"]],
        "last": lines[-1],
    }
except Exception as e:
    smoke = {"error": str(e)}
out["smoke_run"] = smoke
with open(os.path.join(d, "gpu-check.json"), "w") as f:
    json.dump(out, f, indent=2)
print(json.dumps({k: out[k] for k in ("device", "exit_status", "burn_over_torch_fp32")}, indent=2))
for k in ("burn", "torch"):
    print(k, json.dumps(out[k])[:400])
print("smoke", json.dumps(smoke)[:600])
PY
echo "wrote $DIR/gpu-check.json in $(( $(date +%s) - START )) s" >&2
for s in gradient bench_burn smoke; do [ "${STATUS[$s]}" = 0 ] || exit 1; done
