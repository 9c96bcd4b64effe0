#!/usr/bin/env python3
"""Compare the toy runs at matched training loss instead of matched step count.

For each variant of a toy experiment's log (log.jsonl of a results directory) and each threshold,
takes every seed's first evaluation whose training loss is at or below the threshold and reports
the mean and standard error over seeds of the step, lambda_max, test accuracy and test loss (only
when every seed reaches the threshold). Evaluations are as logged (every 100 steps in
generalisation.toml), so "first at or below" is resolved to that interval.

Usage: python3 scripts/matched_loss.py RESULTS_DIR OUT_JSON [--thresholds 0.05 0.02 0.01]
"""

import argparse
import json
import math
import os

from results_json import write_atomically


def mean_se(xs):
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return [m, 0.0]
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return [m, math.sqrt(var / len(xs))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir")
    ap.add_argument("out_json")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.02, 0.01])
    args = ap.parse_args()
    log = [json.loads(line) for line in open(os.path.join(args.results_dir, "log.jsonl"))]
    variants = list(dict.fromkeys(e["variant"] for e in log))
    seeds = sorted(set(e["seed"] for e in log))
    rows = []
    for v in variants:
        for t in args.thresholds:
            firsts = []
            for s in seeds:
                run = sorted((e for e in log if e["variant"] == v and e["seed"] == s), key=lambda e: e["step"])
                hit = next((e for e in run if e["train_loss"] <= t), None)
                if hit is not None:
                    firsts.append(hit)
            row = {"variant": v, "threshold": t, "seeds_reached": len(firsts), "seeds": len(seeds)}
            if len(firsts) == len(seeds):
                for key in ["step", "train_loss", "lambda_max", "test_accuracy", "test_loss"]:
                    row[key] = mean_se([float(e[key]) for e in firsts])
            rows.append(row)
    out = {"source": args.results_dir, "command": "python3 scripts/matched_loss.py " + " ".join(
        [args.results_dir, args.out_json]), "thresholds": args.thresholds, "rows": rows}
    write_atomically(args.out_json, out)
    print(f"{'variant':<34} {'loss <=':>7} {'step':>12} {'lambda_max':>13} {'test acc':>16} {'test loss':>14}")
    for r in rows:
        if "step" not in r:
            print(f"{r['variant']:<34} {r['threshold']:>7} reached by {r['seeds_reached']} of {r['seeds']} seeds")
            continue
        f = lambda k, p: f"{r[k][0]:.{p}f} ± {r[k][1]:.{p}f}"
        print(f"{r['variant']:<34} {r['threshold']:>7} {f('step', 0):>12} {f('lambda_max', 2):>13} "
              f"{f('test_accuracy', 4):>16} {f('test_loss', 3):>14}")


if __name__ == "__main__":
    main()
