#!/usr/bin/env bash
# lambda_max of a saved run's checkpoint against the number of training images it is measured
# on (the first N un-augmented images; blocks of the run's block size), each with its interval:
# how much a subset Hessian, as PyHessian users often compute, differs from the full one.
#
# Usage: scripts/lambda_vs_images.sh RUN STEP OUT.json [N ...]   (default N: 32 64 128 256 512)
# Needs a `fullbatch` built with --features burn (FULLBATCH, default target/release/fullbatch).
set -euo pipefail
run="$1"; step="$2"; out="$3"; shift 3
sizes=("${@:-32 64 128 256 512}")
[ "$#" -eq 0 ] && sizes=(32 64 128 256 512)
bin="${FULLBATCH:-target/release/fullbatch}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for n in "${sizes[@]}"; do
  echo "lambda_max on $n images..." >&2
  # Exit status 1 means not converged: the report says so, and it is kept.
  "$bin" sharpness --run "$run" --step "$step" --max-images "$n" --json > "$tmp/$n.json" || [ "$?" -eq 1 ]
done
python3 - "$tmp" "$out" "${sizes[@]}" <<'PY'
import json, os, sys
tmp, out, sizes = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = []
for n in sizes:
    r = json.load(open(os.path.join(tmp, f"{n}.json")))
    e = r["eigenpairs"]
    iv = e["intervals"][0]
    rows.append({
        "images": r["images"], "lambda_max": e["values"][0], "lower": iv["lower"], "upper": iv["upper"],
        "residual": e["residuals"][0], "operator_error": iv["operator_error"], "converged": e["converged"],
        "products": e["operator_applications"], "seconds": r["wall_s"], "step": r["step"], "run": r["run"],
        "git_commit": r["git_commit"],
    })
partial = out + ".partial"
with open(partial, "w") as f:
    json.dump(rows, f, indent=2)
os.replace(partial, out)
print(f"wrote {out}: {len(rows)} sizes", file=sys.stderr)
PY
