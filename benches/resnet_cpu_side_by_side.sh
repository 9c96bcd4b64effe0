#!/usr/bin/env bash
# ResNet-18 (CIFAR variant) training throughput on the CPU: burn's Flex backend
# (`fullbatch device bench --backend cpu`) against PyTorch (scripts/torch_resnet18.py
# --device cpu), the same network, batch and thread count, run INTERLEAVED (burn, torch, burn,
# torch, ...) so that load from other processes hits both alike. Also one full-batch step of
# fullbatch's own training loop (`fullbatch train --config ... --max-steps 1`, synthetic 32x32
# images in blocks of 128) read from the run's log (step_s).
#
# Builds nothing. Usage (from anywhere):
#   bash benches/resnet_cpu_side_by_side.sh
# Environment (defaults in brackets):
#   FULLBATCH_BIN   the fullbatch binary [target-burn/release/fullbatch], built with
#                   `CARGO_TARGET_DIR=target-burn cargo build --release --features burn`
#   PYTHON          a Python with torch [/usr/bin/python3: Debian's python3-torch]
#   THREADS [2]  WIDTH [64]  ROUNDS [2]
#   BATCHES [128 32]; per batch B: WARMUP_B, ITERS_B [128: 1 and 2; 32: 1 and 4]
#   FB_IMAGES [512] images of the full-batch step (blocks of 128; 0 skips it)
#   FULLBATCH_TCH_BIN  a build with the `tch` feature: adds burn's LibTorch backend on the CPU
#                      (`device bench --backend tch-cpu`) to each round [none]; LD_LIBRARY_PATH
#                      must reach libtorch (source scripts/libtorch.sh)
#   BENCH_OUT [benches/results/resnet_cpu_side_by_side.json]
# Output: BENCH_OUT (written to a temporary file, then moved).
# One width-64 step of 128 images takes 15-35 s with burn on a loaded 2-core VM; the defaults
# take about 8-10 minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${FULLBATCH_BIN:-target-burn/release/fullbatch}"
PYTHON="${PYTHON:-/usr/bin/python3}"
THREADS="${THREADS:-2}"
WIDTH="${WIDTH:-64}"
ROUNDS="${ROUNDS:-2}"
BATCHES="${BATCHES:-128 32}"
FB_IMAGES="${FB_IMAGES:-512}"
WARMUP_128="${WARMUP_128:-1}"; ITERS_128="${ITERS_128:-2}"
WARMUP_32="${WARMUP_32:-1}"; ITERS_32="${ITERS_32:-4}"
OUT="${BENCH_OUT:-benches/results/resnet_cpu_side_by_side.json}"
TCH_BIN="${FULLBATCH_TCH_BIN:-}"

[ -x "$BIN" ] || { echo "error: $BIN is not an executable (set FULLBATCH_BIN)" >&2; exit 1; }
"$PYTHON" -c "import torch" 2>/dev/null || {
  echo "error: $PYTHON cannot import torch (apt-get install python3-torch, or set PYTHON)" >&2; exit 1; }

export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
START_S=$(date +%s)
LOAD_BEFORE="$(cat /proc/loadavg)"

for b in $BATCHES; do
  wv="WARMUP_$b"; iv="ITERS_$b"
  warm="${!wv:-1}"; iters="${!iv:-3}"
  for r in $(seq 1 "$ROUNDS"); do
    echo "batch $b round $r: burn (warm-up $warm, $iters timed)" >&2
    "$BIN" device bench --backend cpu --width "$WIDTH" --batch "$b" \
      --warmup "$warm" --iters "$iters" --json-out "$TMP/burn-$b-$r.json" > /dev/null
    if [ -n "$TCH_BIN" ]; then
      echo "batch $b round $r: burn LibTorch (tch-cpu)" >&2
      "$TCH_BIN" device bench --backend tch-cpu --width "$WIDTH" --batch "$b" \
        --warmup "$warm" --iters "$iters" --json-out "$TMP/tch-$b-$r.json" > /dev/null
    fi
    echo "batch $b round $r: torch" >&2
    "$PYTHON" scripts/torch_resnet18.py --device cpu --threads "$THREADS" --width "$WIDTH" --batch "$b" \
      --warmup "$warm" --iters "$iters" --json-out "$TMP/torch-$b-$r.json" > /dev/null
  done
done

if [ "$FB_IMAGES" -gt 0 ]; then
  cat > "$TMP/fb.toml" <<EOF
# Written by benches/resnet_cpu_side_by_side.sh: one full-batch step of ResNet-18.
name = "bench-fb-w$WIDTH"
seed = 0
eval_every = 1000
checkpoint_every = 1000

[data]
dataset = { synthetic = { n = $FB_IMAGES, n_test = 16, side = 32, noise = 20.0, classes = 10 } }

[augmentation]
enabled = false

[model]
width = $WIDTH

[mode.full_batch]
steps = 10
block_size = 128
shuffle_blocks = false
regulariser_alpha = 0.0

[optimizer]
lr = 0.1
momentum = 0.9
nesterov = true
weight_decay = 5e-4
warmup = 1
t_max = 10
EOF
  echo "full-batch step: $FB_IMAGES images in blocks of 128" >&2
  "$BIN" train --backend cpu --config "$TMP/fb.toml" --out "$TMP/fb-run" --max-steps 1 --no-progress \
    > /dev/null 2> "$TMP/fb.stderr"
fi

LOAD_AFTER="$(cat /proc/loadavg)"
END_S=$(date +%s)
COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT-dirty"; fi
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
mkdir -p benches/results
"$PYTHON" - "$TMP" "$OUT.tmp" <<EOF
import glob, json, os, statistics, sys, torch
tmp, out = sys.argv[1], sys.argv[2]
batches = [int(b) for b in "$BATCHES".split()]
res = {}
for b in batches:
    burn = [json.load(open(p))["throughput"] for p in sorted(glob.glob(f"{tmp}/burn-{b}-*.json"))]
    tor = [json.load(open(p))["results"]["fp32"] for p in sorted(glob.glob(f"{tmp}/torch-{b}-*.json"))]
    bi = [r["images_per_s"] for r in burn]
    ti = [r["images_per_s"] for r in tor]
    res[str(b)] = {
        "warmup_iters": burn[0]["warmup_iters"], "iters": burn[0]["iters"], "rounds": len(bi),
        "burn_images_per_s": bi, "torch_images_per_s": ti,
        "burn_s_per_iter": [r["s_per_iter"] for r in burn], "torch_s_per_iter": [r["s_per_iter"] for r in tor],
        "burn_median_images_per_s": statistics.median(bi),
        "torch_median_images_per_s": statistics.median(ti),
        "burn_over_torch": statistics.median(bi) / statistics.median(ti),
        "torch_over_burn": statistics.median(ti) / statistics.median(bi),
    }
    tch = [json.load(open(p))["throughput"] for p in sorted(glob.glob(f"{tmp}/tch-{b}-*.json"))]
    if tch:
        ci = [r["images_per_s"] for r in tch]
        res[str(b)].update({
            "tch_cpu_images_per_s": ci,
            "tch_cpu_median_images_per_s": statistics.median(ci),
            "tch_cpu_over_torch": statistics.median(ci) / statistics.median(ti),
            "tch_cpu_over_burn_flex": statistics.median(ci) / statistics.median(bi),
        })
fb = None
log = os.path.join(tmp, "fb-run", "log.jsonl")
if os.path.exists(log):
    e = json.loads(open(log).readline())
    fb = {"images": $FB_IMAGES, "block_size": 128, "blocks": $FB_IMAGES // 128,
          "command": "fullbatch train --backend cpu --config <generated synthetic 32x32 config> --max-steps 1",
          "step_s": e["step_s"], "images_per_s": e["images_per_s"], "train_loss": e["train_loss"]}
doc = {
    "what": "ResNet-18 (CIFAR variant) training iteration (forward + cross-entropy + backward + Nesterov SGD "
            "update) on 32x32 images, burn Flex (fullbatch device bench) vs PyTorch CPU fp32 "
            "(scripts/torch_resnet18.py --device cpu), interleaved burn/torch per round",
    "command": "bash benches/resnet_cpu_side_by_side.sh"
               + (" (FULLBATCH_TCH_BIN=$TCH_BIN)" if "$TCH_BIN" else ""),
    "git_commit": "$COMMIT",
    "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "cpu_model": "$CPU",
    "cpus_online": os.cpu_count(),
    "threads": $THREADS,
    "width": $WIDTH,
    "torch_version": torch.__version__,
    "loadavg_before": "$LOAD_BEFORE",
    "loadavg_after": "$LOAD_AFTER",
    "total_s": $END_S - $START_S,
    "batches": res,
    "full_batch_step": fb,
}
json.dump(doc, open(out, "w"), indent=2)
open(out, "a").write("\n")
for b, r in res.items():
    print(f"batch {b}: burn {r['burn_median_images_per_s']:.2f} img/s, torch {r['torch_median_images_per_s']:.2f} img/s, "
          f"burn/torch {r['burn_over_torch']:.3f}"
          + (f"; LibTorch {r['tch_cpu_median_images_per_s']:.2f} img/s, LibTorch/torch {r['tch_cpu_over_torch']:.3f}"
             if "tch_cpu_over_torch" in r else ""), file=sys.stderr)
if fb:
    print(f"full-batch step of {fb['images']} images: {fb['step_s']:.1f} s ({fb['images_per_s']:.2f} img/s)", file=sys.stderr)
EOF
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT" >&2
