#!/usr/bin/env python3
"""When does a logged lambda_max cross the optimizer's stability limit (2/h for GD)?

For each variant and seed of a toy experiment's log (log.jsonl of a results directory; the step
size h and momentum of each variant from its results.json; the limit is 2/h for GD,
(2 + 2 beta)/h for heavy ball and (2 + 2 beta)/((1 + 2 beta) h) for PyTorch's Nesterov), reports for the chosen key (lambda_max of the
training loss, or lambda_max_penalised of the regularised loss a regularised variant descends):
the value at the start and at the end, the first evaluated step after the start where it is
below the limit, the last evaluated step where it is above it, and its largest value after the start
(with the step). Resolution is the log's evaluation interval.

Usage: python3 scripts/stability_crossings.py RESULTS_DIR OUT_JSON [--key lambda_max]
"""

import argparse
import json
import os

from results_json import write_atomically


def stability_limit(momentum):
    """The largest stable h * lambda of GD, heavy ball or Nesterov (fullbatch::optim::Momentum)."""
    kind, beta = momentum["kind"], momentum.get("beta", 0.0)
    if kind == "none":
        return 2.0
    if kind == "heavy_ball":
        return 2.0 + 2.0 * beta
    if kind == "nesterov":
        return (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta)
    raise ValueError(f"unknown momentum {kind!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir")
    ap.add_argument("out_json")
    ap.add_argument("--key", default="lambda_max", choices=["lambda_max", "lambda_max_penalised"])
    args = ap.parse_args()
    results = json.load(open(os.path.join(args.results_dir, "results.json")))
    lr = {v["label"]: v["lr"] for v in results["config"]["variants"]}
    momentum = {v["label"]: v.get("momentum", {"kind": "none"}) for v in results["config"]["variants"]}
    log = [json.loads(line) for line in open(os.path.join(args.results_dir, "log.jsonl"))]
    rows = []
    for variant in lr:
        limit = stability_limit(momentum[variant]) / lr[variant]
        for seed in results["config"]["seeds"]:
            run = sorted(
                (e for e in log if e["variant"] == variant and e["seed"] == seed and e.get(args.key) is not None),
                key=lambda e: e["step"],
            )
            if not run:
                continue
            later = [e for e in run if e["step"] > 0]
            top = max(later, key=lambda e: e[args.key]) if later else None
            rows.append({
                "variant": variant,
                "seed": seed,
                "limit": limit,
                "start": run[0][args.key],
                "end": run[-1][args.key],
                "end_step": run[-1]["step"],
                "first_step_below_limit": next((e["step"] for e in later if e[args.key] < limit), None),
                "value_at_first_step_below_limit": next((e[args.key] for e in later if e[args.key] < limit), None),
                "last_step_above_limit": max((e["step"] for e in run if e[args.key] > limit), default=None),
                "largest_after_start": top[args.key] if top else None,
                "largest_after_start_step": top["step"] if top else None,
            })
    out = {
        "source": args.results_dir,
        "key": args.key,
        "command": f"python3 scripts/stability_crossings.py {args.results_dir} {args.out_json} --key {args.key}",
        "rows": rows,
    }
    write_atomically(args.out_json, out)
    print(f"{'variant':<44} {'seed':>4} {'limit':>6} {'start':>8} {'end':>8} {'first below':>11} {'last above':>10} {'largest (step)':>16}")
    for r in rows:
        top = f"{r['largest_after_start']:.2f} ({r['largest_after_start_step']})" if r["largest_after_start"] else "-"
        print(f"{r['variant']:<44} {r['seed']:>4} {r['limit']:>6.1f} {r['start']:>8.2f} {r['end']:>8.2f} "
              f"{str(r['first_step_below_limit']):>11} {str(r['last_step_above_limit']):>10} {top:>16}")


if __name__ == "__main__":
    main()
