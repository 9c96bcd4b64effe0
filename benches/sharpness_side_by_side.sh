#!/usr/bin/env bash
# Sharpness side by side: fullbatch's Lanczos (tol 1e-8) and power iteration (PyHessian, 1e-3)
# on the Hessian of a tanh MLP 784-128-10 (101,770 parameters, 1,000 Fashion-MNIST images,
# f64), then scipy's eigsh (ARPACK) on JAX's HVP of the same exported model, for k = 1 and 5.
# Writes benches/results/sharpness_side_by_side.json (or $SHARPNESS_SIDE_BY_SIDE_OUT) and prints a summary. See
# docs/performance.md.
#
# Usage: bash benches/sharpness_side_by_side.sh   (needs python3 with numpy, scipy, jax)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
OUT="${SHARPNESS_SIDE_BY_SIDE_OUT:-benches/results/sharpness_side_by_side.json}"
EXPORT="target/lanczos-export"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

cargo bench --bench lanczos_vs_power -- "$SCRATCH/fullbatch.json" "$EXPORT"
for k in 1 5; do
    "$PYTHON" scripts/check_export.py "$EXPORT/k$k" --eigsh --eigsh-tol 1e-8 2>/dev/null > "$SCRATCH/eigsh_k$k.json"
done
"$PYTHON" - "$SCRATCH" "$OUT" <<'PY'
import datetime, json, os, platform, subprocess, sys
scratch, out = sys.argv[1], sys.argv[2]
ours = json.load(open(os.path.join(scratch, "fullbatch.json")))
import jax, numpy, scipy
report = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "versions": {"jax": jax.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__},
    "fullbatch": ours,
    "eigsh": {},
}
print(f"{'k':>2} {'method':<44} {'HVPs':>6} {'seconds':>8} {'max rel. residual':>18}")
for run in ours["runs"]:
    k = run["k"]
    check = json.load(open(os.path.join(scratch, f"eigsh_k{k}.json")))
    e = check["eigsh"]
    e["relative_residuals"] = [r / abs(v) for r, v in zip(e["residuals"], e["values"])]
    e["independent_checks_pass"] = check["pass"]
    report["eigsh"][f"k{k}"] = e
    rows = [
        ("fullbatch Lanczos, tol 1e-8", run["lanczos"]),
        ("fullbatch Lanczos, tol 1e-8, no multiplicity check", run["lanczos_without_multiplicity_check"]),
        ("fullbatch Lanczos, tol 1e-3", run["lanczos_tol_1e-3"]),
        ("fullbatch power iteration, change 1e-3", run["power_iteration"]),
        ("fullbatch power iteration, change 1e-12", run["power_iteration_tol_1e-12"]),
    ]
    for name, r in rows:
        print(f"{k:>2} {name:<44} {r['operator_applications']:>6} {r['seconds']:>8.2f} {max(r['relative_residuals']):>18.1e}")
    print(f"{k:>2} {'scipy eigsh (ARPACK) on JAX HVP, tol 1e-8':<44} {e['matvecs']:>6} {e['seconds']:>8.2f} {max(e['relative_residuals']):>18.1e}")
    ratio = e["matvecs"] / run["lanczos"]["operator_applications"]
    print(f"   eigsh HVPs / fullbatch Lanczos HVPs = {ratio:.2f}; JAX's own check of our residuals: {'pass' if check['pass'] else 'FAIL'}")
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
os.replace(tmp, out)
print(f"wrote {out}")
PY
