#!/usr/bin/env python3
"""Summarise the regulariser ledger of `fullbatch train` run directories.

For each run directory under RUNS_DIR (a subdirectory holding run.json and log.jsonl with the
ledger fields implicit_gd, implicit_minibatch_variance, implicit_momentum and, with the paper's
regulariser, regulariser), reports the median over the second half of the run (steps, or SGD
epochs, after the first half; the early steps are dominated by the warmup) of each term and of
the ratios variance part / GD's term and explicit / variance part, and the values at the last
step. Medians, because single steps jump with the augmentation and the block order.

Usage: python3 scripts/ledger_summary.py RUNS_DIR OUT_JSON
"""

import argparse
import json
import os
import statistics

from results_json import write_atomically

TERMS = ["implicit_gd", "implicit_minibatch_variance", "implicit_momentum", "regulariser"]


def ratio(e, num, den):
    if e.get(num) is None or e.get(den) in (None, 0.0):
        return None
    return e[num] / e[den]


def summarise(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        log = [json.loads(line) for line in f if line.strip()]
    log = [e for e in log if e.get("implicit_gd") is not None]
    if not log:
        return None
    with open(os.path.join(run_dir, "run.json")) as f:
        info = json.load(f)
    second_half = [e for e in log if e["step"] > log[-1]["step"] // 2]
    out = {
        "config": info["name"],
        "git_commit": info["git_commit"],
        "steps": log[-1]["step"],
        "second_half_steps": [second_half[0]["step"], second_half[-1]["step"]],
        "median_second_half": {},
        "last": {},
    }
    rows = {t: (lambda e, t=t: e.get(t)) for t in TERMS}
    rows["variance_over_gd"] = lambda e: ratio(e, "implicit_minibatch_variance", "implicit_gd")
    rows["explicit_over_variance"] = lambda e: ratio(e, "regulariser", "implicit_minibatch_variance")
    rows["momentum_over_gd"] = lambda e: ratio(e, "implicit_momentum", "implicit_gd")
    for name, pick in rows.items():
        values = [v for v in (pick(e) for e in second_half) if v is not None]
        if values:
            out["median_second_half"][name] = statistics.median(values)
        last = pick(log[-1])
        if last is not None:
            out["last"][name] = last
    out["train_loss_last"] = log[-1]["train_loss"]
    out["wall_s"] = log[-1].get("wall_s")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir")
    ap.add_argument("out_json")
    args = ap.parse_args()
    runs = {}
    for name in sorted(os.listdir(args.runs_dir)):
        d = os.path.join(args.runs_dir, name)
        if os.path.isfile(os.path.join(d, "run.json")):
            s = summarise(d)
            if s is not None:
                runs[name] = s
    if not runs:
        raise SystemExit(f"error: no run directory with ledger fields under {args.runs_dir}")
    write_atomically(args.out_json, {"script": "scripts/ledger_summary.py", "runs": runs})
    for name, s in runs.items():
        m = s["median_second_half"]
        print(name, {k: round(v, 6) for k, v in m.items()})


if __name__ == "__main__":
    main()
