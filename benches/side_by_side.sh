#!/usr/bin/env bash
# Side-by-side timing of fullbatch and JAX on a tanh MLP 784-256-10 with softmax cross-entropy
# (f64): loss, gradient (loss and gradient) and Hessian-vector product at n = 1,000 and 10,000,
# plus fullbatch's matrix-product floor for the gradient. See docs/performance.md.
#
# Usage: bash benches/side_by_side.sh
# Environment: PYTHON (default python3), JAX_REPEATS (default 30), SIDE_BY_SIDE_OUT (default
# benches/results/side_by_side.json), and any thread or allocator settings (OPENBLAS_NUM_THREADS,
# OMP_NUM_THREADS, XLA_FLAGS, GLIBC_TUNABLES), which are recorded in the output.
# Writes the JSON file and prints a table. Run it on an otherwise idle machine: the CPU time
# other processes took during each phase is measured, recorded and flagged when above 5%.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
JAX_REPEATS="${JAX_REPEATS:-30}"
RESULTS_DIR="$ROOT/benches/results"
mkdir -p "$RESULTS_DIR"

TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
CRITERION_DIR="$TARGET_DIR/criterion"
GROUPS=(loss gradient hvp matmuls)

# Interference check. For each measured phase: CPU seconds used by other processes meanwhile,
# i.e. the machine's busy time (/proc/stat) minus this script's children (bash's `times`).
HZ="$(getconf CLK_TCK)"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
busy_s() { awk -v hz="$HZ" '/^cpu /{printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz}' /proc/stat; }
# mark VAR: stores "busy_s own_children_s epoch_s" in VAR. Must run in this shell, not in $(...):
# a subshell's `times` reports its own (empty) children.
mark() {
    times >"$SCRATCH/times"
    local own
    own="$(tail -n 1 "$SCRATCH/times" | awk '{
        t = 0; for (i = 1; i <= NF; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] }
        printf "%.2f", t }')"
    printf -v "$1" '%s %s %s' "$(busy_s)" "$own" "$(date +%s.%N)"
}
# Prints "wall_s other_cpu_s" between two marks.
phase() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        o = (y[1] - x[1]) - (y[2] - x[2]); printf "%.1f %.1f", y[3] - x[3], (o < 0 ? 0 : o) }'
}

START_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

echo "== cargo bench --bench mlp_derivatives --no-run (build only)" >&2
cargo bench --bench mlp_derivatives --no-run >&2

# Stale estimates from an earlier run must not be read if this run fails part-way.
for g in "${GROUPS[@]}"; do rm -rf "${CRITERION_DIR:?}/$g"; done

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "== cargo bench --bench mlp_derivatives" >&2
mark M0
export FULLBATCH_BLAS_REPORT="$SCRATCH/blas.json"
cargo bench --bench mlp_derivatives >&2
mark M1
echo "== $PYTHON benches/jax_mlp.py --repeats $JAX_REPEATS" >&2
JAX_OUT="$SCRATCH/jax.jsonl"
"$PYTHON" benches/jax_mlp.py --repeats "$JAX_REPEATS" | tee "$JAX_OUT" >&2
mark M2
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
PHASE_FULLBATCH="$(phase "$M0" "$M1")"
PHASE_JAX="$(phase "$M1" "$M2")"

export CRITERION_DIR JAX_OUT START_DATE LOAD_BEFORE LOAD_AFTER JAX_REPEATS PHASE_FULLBATCH PHASE_JAX
export OUT_JSON="${SIDE_BY_SIDE_OUT:-$RESULTS_DIR/side_by_side.json}"
"$PYTHON" - <<'PY'
import json
import os
import platform
import subprocess

crit = os.environ["CRITERION_DIR"]
sizes = [1000, 10000]


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def criterion_ms(group, n):
    path = os.path.join(crit, group, str(n), "new", "estimates.json")
    with open(path) as f:
        est = json.load(f)
    return est["median"]["point_estimate"] / 1e6  # ns -> ms


def criterion_min_ms(group, n):
    path = os.path.join(crit, group, str(n), "new", "sample.json")
    with open(path) as f:
        sample = json.load(f)
    return min(t / i for t, i in zip(sample["times"], sample["iters"])) / 1e6


jax = {}
jax_min = {}
with open(os.environ["JAX_OUT"]) as f:
    for line in f:
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            jax[(r["op"], r["n"])] = r["median_ms"]
            jax_min[(r["op"], r["n"])] = r["min_ms"]

rows = []
for op in ["loss", "gradient", "hvp", "matmuls"]:
    for n in sizes:
        fb = criterion_ms(op, n)
        jx = jax.get((op, n))
        rows.append({
            "op": op,
            "n": n,
            "fullbatch_ms": round(fb, 3),
            "jax_ms": None if jx is None else round(jx, 3),
            "ratio_fullbatch_over_jax": None if jx is None else round(fb / jx, 3),
            "fullbatch_min_ms": round(criterion_min_ms(op, n), 3),
            "jax_min_ms": jax_min.get((op, n)),
        })


def get(op, n, key):
    return next(r[key] for r in rows if r["op"] == op and r["n"] == n)


ratios = []
for n in sizes:
    fb_g, fb_h, fb_m = (get(o, n, "fullbatch_ms") for o in ("gradient", "hvp", "matmuls"))
    jx_g, jx_h = get("gradient", n, "jax_ms"), get("hvp", n, "jax_ms")
    ratios.append({
        "n": n,
        "fullbatch_hvp_over_gradient": round(fb_h / fb_g, 3),
        "jax_hvp_over_gradient": None if jx_g is None else round(jx_h / jx_g, 3),
        "fullbatch_gradient_over_matmuls": round(fb_g / fb_m, 3),
    })

targets = {
    "hvp_at_most_1.5x_gradient": all(r["fullbatch_hvp_over_gradient"] <= 1.5 for r in ratios),
    "gradient_at_least_as_fast_as_jax": all(
        get("gradient", n, "ratio_fullbatch_over_jax") <= 1.0 for n in sizes),
    "hvp_at_least_as_fast_as_jax": all(
        get("hvp", n, "ratio_fullbatch_over_jax") <= 1.0 for n in sizes),
    "loss_within_1.2x_of_jax": all(
        get("loss", n, "ratio_fullbatch_over_jax") <= 1.2 for n in sizes),
    "gradient_within_1.5x_of_matmuls": all(
        r["fullbatch_gradient_over_matmuls"] <= 1.5 for r in ratios),
}

interference = {}
for phase in ("fullbatch", "jax"):
    wall, other = (float(x) for x in os.environ["PHASE_" + phase.upper()].split())
    interference[phase] = {
        "wall_s": wall,
        "other_processes_cpu_s": other,
        # Share of the machine's CPU time that other processes took during this phase.
        "other_share": round(other / (wall * os.cpu_count()), 3) if wall > 0 else None,
    }

cpu = None
lscpu = run(["lscpu"])
if lscpu:
    for line in lscpu.splitlines():
        if line.startswith("Model name:"):
            cpu = line.split(":", 1)[1].strip()
commit = run(["git", "rev-parse", "HEAD"])
dirty = run(["git", "status", "--porcelain", "--untracked-files=no"])
thread_env = {k: os.environ.get(k) for k in
              ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "RAYON_NUM_THREADS", "XLA_FLAGS", "GLIBC_TUNABLES"]}
jax_version = run([os.environ.get("PYTHON", "python3"), "-c",
                   "import jax, jaxlib; print(jax.__version__, jaxlib.__version__)"])
result = {
    "date": os.environ["START_DATE"],
    "command": "bash benches/side_by_side.sh",
    "git_commit": commit,
    "git_worktree_dirty": bool(dirty),
    "cpu_model": cpu,
    "logical_cpus": os.cpu_count(),
    "thread_env": thread_env,  # unset: OpenBLAS and XLA use every logical CPU
    "load_average_before": os.environ["LOAD_BEFORE"],
    "load_average_after": os.environ["LOAD_AFTER"],
    "interference": interference,
    "rustc": run(["rustc", "--version"]),
    # OpenBLAS's kernels as loaded and as used (fullbatch::blas::select_native_kernels).
    "openblas_kernels": json.load(open(os.environ["FULLBATCH_BLAS_REPORT"])),
    "jax": jax_version,
    "python": platform.python_version(),
    "model": "tanh MLP 784-256-10, biases, softmax cross-entropy (mean), f64",
    "fullbatch_statistic": "criterion median point estimate (target/criterion/<group>/<n>/new/estimates.json);"
                           " min: fastest sample's time per iteration (sample.json)",
    "jax_statistic": f"median (and min) of {os.environ['JAX_REPEATS']} jit calls after warm-up,"
                     " block_until_ready",
    "rows": rows,
    "ratios": ratios,
    "targets_met": targets,
}
with open(os.environ["OUT_JSON"], "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


print()
print("medians (min in brackets)")
print(f"{'op':<10} {'n':>6} {'fullbatch ms':>20} {'JAX ms':>20} {'fullbatch/JAX':>14}")
for r in rows:
    fb = f"{r['fullbatch_ms']:.2f} [{r['fullbatch_min_ms']:.2f}]"
    jx = "-" if r["jax_ms"] is None else f"{r['jax_ms']:.2f} [{r['jax_min_ms']:.2f}]"
    print(f"{r['op']:<10} {r['n']:>6} {fb:>20} {jx:>20} {fmt(r['ratio_fullbatch_over_jax'], '>14.2f')}")
print()
print(f"{'n':>6} {'HVP/grad fullbatch':>19} {'HVP/grad JAX':>13} {'grad/matmuls fullbatch':>23}")
for r in ratios:
    print(f"{r['n']:>6} {r['fullbatch_hvp_over_gradient']:>19.2f}"
          f" {fmt(r['jax_hvp_over_gradient'], '>13.2f')} {r['fullbatch_gradient_over_matmuls']:>23.2f}")
print()
for k, v in targets.items():
    print(f"target {k}: {'met' if v else 'NOT met'}")
print(f"\nload average before/after: {os.environ['LOAD_BEFORE']} / {os.environ['LOAD_AFTER']}")
for phase, i in interference.items():
    flag = "  <- other processes were busy: rerun on an idle machine" if i["other_share"] > 0.05 else ""
    print(f"{phase} phase: {i['wall_s']:.0f} s wall, other processes used {i['other_processes_cpu_s']:.1f} CPU s"
          f" ({100 * i['other_share']:.0f}% of the machine){flag}")
print(f"wrote {os.path.relpath(os.environ['OUT_JSON'])}")
PY
