#!/usr/bin/env python3
"""Summary of scripts/gpu-check.sh: reads the stage outputs in $GC_W and writes $GC_OUT/gpu-check.json.

Called by gpu-check.sh every 30 s and at the end, so it must cope with stages that have not run,
were killed, or wrote nothing. Prints the summary's headline numbers.
"""
import json
import os

W = os.environ["GC_W"]
OUT = os.environ["GC_OUT"]
WALL_FIELDS = ("wall_s", "step_s", "images_per_s", "lambda_s")


def load(name):
    path = os.path.join(W, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:  # a stage killed while writing
        return {"error": f"{name}: {e}"}


def jsonl(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except Exception:
        return []


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


stages = {}
for item in os.environ.get("GC_STATUS", "").split():
    name, rest = item.split("=", 1)
    rc, secs = rest.split(":", 1)
    stages[name] = {"exit": rc, "seconds": int(secs)}

out = {
    "device": os.environ.get("GC_GPU", ""),
    "git_commit": os.environ.get("GC_COMMIT", ""),
    "date": os.environ.get("GC_DATE", ""),
    "cpu_dry_run": os.environ.get("GC_CPU") == "1",
    "elapsed_s": int(os.environ.get("GC_TOTAL", "0")),
    "kernel_cache": {
        "source": os.environ.get("GC_CACHE_SOURCE", ""),
        "kernels_at_start": int(os.environ.get("GC_K0", "0") or 0),
        "kernels_now": int(os.environ.get("GC_K1", "0") or 0),
    },
    "stages": stages,
}

cold, warm, b512 = load("bench_cuda_cold.json"), load("bench_cuda_warm.json"), load("bench_cuda_b512.json")
torch, tch = load("bench_torch.json"), load("bench_tch.json")
torch_fp32 = get(torch, "results", "fp32", "images_per_s")
out["cuda"] = {
    "cold_start_first_step_s": get(cold, "throughput", "first_iter_s"),
    "cold_start_kernels_compiled": get(cold, "throughput", "kernels_compiled"),
    "warm_start_first_step_s": get(warm, "throughput", "first_iter_s"),
    "warm_start_kernels_compiled": get(warm, "throughput", "kernels_compiled"),
    "images_per_s_b128": get(warm, "throughput", "images_per_s"),
    "images_per_s_b512": get(b512, "throughput", "images_per_s"),
    "bench_cold": cold,
    "bench_warm": warm,
    "bench_b512": b512,
}
out["tch"] = {
    "first_step_s": get(tch, "throughput", "first_iter_s"),
    "images_per_s_b128": get(tch, "throughput", "images_per_s"),
    "bench": tch,
}
out["torch"] = torch
out["ratios"] = {
    "cuda_over_torch_fp32_b128": ratio(out["cuda"]["images_per_s_b128"], torch_fp32),
    "tch_over_torch_fp32_b128": ratio(out["tch"]["images_per_s_b128"], torch_fp32),
    "cuda_over_tch_b128": ratio(out["cuda"]["images_per_s_b128"], out["tch"]["images_per_s_b128"]),
}
fb = {k: load(f"full_batch_{k}.json") for k in ("cuda", "tch", "torch")}
fb_plain = {k: get(v, "full_batch", "plain_step_s") for k, v in fb.items()}
fb_reg = {k: get(v, "full_batch", "regularised_step_s") for k, v in fb.items()}
out["full_batch"] = {
    "plain_step_s": fb_plain,
    "regularised_step_s": fb_reg,
    "cuda_over_torch_regularised_time": ratio(fb_reg["cuda"], fb_reg["torch"]),
    "tch_over_torch_regularised_time": ratio(fb_reg["tch"], fb_reg["torch"]),
    "runs": fb,
}
out["gradient_check"] = {
    "cuda": load("gradient_cuda.json"),
    "tch": load("gradient_tch.json"),
    "tch_tf32": load("gradient_tch_tf32.json"),
}

full, part = os.path.join(W, "smoke-full"), os.path.join(W, "smoke-part")
full_log, part_log = jsonl(os.path.join(full, "log.jsonl")), jsonl(os.path.join(part, "log.jsonl"))


def strip(lines):
    return [{k: v for k, v in line.items() if k not in WALL_FIELDS} for line in lines]


smoke = {"steps": len(full_log), "segments": jsonl(os.path.join(full, "segments.jsonl"))}
if full_log:
    smoke["train_loss_first_last"] = [full_log[0]["train_loss"], full_log[-1]["train_loss"]]
    later = sorted(line["step_s"] for line in full_log[1:])
    smoke["first_step_s"] = full_log[0]["step_s"]
    smoke["median_step_s_after_first"] = later[len(later) // 2] if later else None
    images = full_log[0]["images_per_s"] * full_log[0]["step_s"]
    if later and images > 0:
        # One CIFAR-10 full-batch step (50,000 images, blocks of 128, regulariser) by proportion.
        smoke["est_cifar10_step_s_block128_reg"] = smoke["median_step_s_after_first"] * 50000 / images
    smoke["log"] = full_log
part_segments = jsonl(os.path.join(part, "segments.jsonl"))
# The steps before the interruption ran in a fresh process with the same config and seed as the
# uninterrupted run: if they differ, the backend is not deterministic from run to run (e.g. an
# autotuner choosing other kernels), and an exact resume cannot be judged by comparison alone.
first_end = part_segments[0]["end_step"] if part_segments else 0
before = [line for line in part_log if line.get("step", 0) <= first_end]
by_step = {line.get("step"): line for line in full_log}
smoke["resume"] = {
    "steps_resumed_run": len(part_log),
    "segments": part_segments,
    "before_interruption_identical": bool(before) and strip(before) == strip(full_log[: len(before)]),
    "identical_to_uninterrupted": bool(full_log) and len(part_log) == len(full_log)
    and strip(part_log) == strip(full_log),
    "train_loss_rel_diff_by_step": {
        str(line["step"]): abs(line["train_loss"] - by_step[line["step"]]["train_loss"])
        / abs(by_step[line["step"]]["train_loss"])
        for line in part_log
        if line.get("step") in by_step and "train_loss" in line and by_step[line["step"]].get("train_loss")
    },
}
out["smoke"] = smoke

tmp = os.path.join(OUT, ".gpu-check.json.tmp")
with open(tmp, "w") as f:
    json.dump(out, f, indent=2)
os.replace(tmp, os.path.join(OUT, "gpu-check.json"))
headline = {
    "device": out["device"],
    "stages": stages,
    "cuda": {k: v for k, v in out["cuda"].items() if not k.startswith("bench")},
    "tch": {k: v for k, v in out["tch"].items() if k != "bench"},
    "torch_fp32_b128": torch_fp32,
    "ratios": out["ratios"],
    "full_batch": {k: v for k, v in out["full_batch"].items() if k != "runs"},
    "gradient_rel_l2": {k: get(v, "gradient", "rel_l2") for k, v in out["gradient_check"].items()},
    "smoke": {k: v for k, v in smoke.items() if k not in ("log", "segments")},
}
print(json.dumps(headline, indent=2))
