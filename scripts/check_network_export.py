#!/usr/bin/env python3
"""Check a `fullbatch sharpness --run RUN --export DIR` export against PyTorch double backprop.

Rebuilds the ResNet from DIR/spec.json and the .npy files alone (nothing from fullbatch's code)
as a functional PyTorch model in float64, with the training loss the operator measures: the mean
over consecutive blocks of `block_size` images (drop-last) of the block's mean cross-entropy,
BatchNorm with each block's statistics (train mode) or the exported running statistics (eval
mode). Then
  1. checks that the named tensors are the slices of theta.npy (the layout in spec.json);
  2. computes H v by double backpropagation (ReLU' as a constant mask, as autograd does) in both
     BatchNorm modes and checks that our finite-difference products hv_train.npy and hv_eval.npy
     are within our own estimates of their errors (spec.json, hv_error_estimates);
  3. computes lambda_max in the report's BatchNorm mode by Lanczos (full reorthogonalisation)
     on the PyTorch HVP and checks that it lies in our reported interval;
  4. checks our eigenvector's true residual with the PyTorch HVP.
Prints one JSON object; exits 1 if a check fails.

Usage: /usr/bin/python3 scripts/check_network_export.py DIR [--steps 60]
Needs numpy and torch (Debian: apt-get install python3-torch).
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("check_network_export.py needs torch (apt-get install python3-torch): not found")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=pathlib.Path)
    ap.add_argument("--steps", type=int, default=60, help="Lanczos steps for lambda_max")
    args = ap.parse_args()
    d = args.dir
    torch.set_default_dtype(torch.float64)
    spec = json.loads((d / "spec.json").read_text())
    if spec.get("format") != "fullbatch-resnet-hessian-v1":
        sys.exit(f"{d / 'spec.json'}: format {spec.get('format')!r} is not fullbatch-resnet-hessian-v1")
    load = lambda name: torch.from_numpy(np.load(d / f"{name}.npy"))
    theta = load("theta")
    trainable = [t for t in spec["tensors"] if t["offset"] is not None]
    stats = {t["name"]: load(t["name"]) for t in spec["tensors"] if t["offset"] is None}
    eps = spec["bn_epsilon"]
    block = spec["block_size"]
    images, labels = load("images"), load("labels").long()
    report = spec["results"]

    def unflatten(flat):
        out = {}
        for t in trainable:
            n = int(np.prod(t["shape"]))
            piece = flat[t["offset"] : t["offset"] + n]
            if t["name"] == "fc.weight":  # stored as burn's [in, out]
                out[t["name"]] = piece.reshape(t["shape"][1], t["shape"][0]).T
            else:
                out[t["name"]] = piece.reshape(t["shape"])
        return out

    layout_error = max(float((unflatten(theta)[t["name"]] - load(t["name"])).abs().max()) for t in trainable)

    def bn(x, name, p, train):
        w, b = p[name + ".weight"], p[name + ".bias"]
        if train:
            return F.batch_norm(x, None, None, w, b, training=True, eps=eps)
        return F.batch_norm(x, stats[name + ".running_mean"], stats[name + ".running_var"], w, b, training=False, eps=eps)

    strides = []
    for s, count in enumerate(spec["blocks"]):
        strides += [2 if s > 0 and i == 0 else 1 for i in range(count)]

    def logits(x, p, train):
        x = F.relu(bn(F.conv2d(x, p["stem_conv.weight"], padding=1), "stem_bn", p, train))
        for i, stride in enumerate(strides):
            k = f"blocks.{i}"
            y = F.relu(bn(F.conv2d(x, p[k + ".conv1.weight"], stride=stride, padding=1), k + ".bn1", p, train))
            y = bn(F.conv2d(y, p[k + ".conv2.weight"], padding=1), k + ".bn2", p, train)
            if k + ".shortcut.conv.weight" in p:
                s = F.avg_pool2d(x, 2, 2) if stride == 2 else x
                s = bn(F.conv2d(s, p[k + ".shortcut.conv.weight"]), k + ".shortcut.bn", p, train)
            else:
                s = x
            x = F.relu(y + s)
        return x.mean(dim=(2, 3)) @ p["fc.weight"].T + p["fc.bias"]

    n_blocks = images.shape[0] // block

    def loss(flat, train):
        p = unflatten(flat)
        total = 0.0
        for b in range(n_blocks):
            sl = slice(b * block, (b + 1) * block)
            total = total + F.cross_entropy(logits(images[sl], p, train), labels[sl])
        return total / n_blocks

    def hvp(v, train):
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(t, train), t, create_graph=True)
        (hv,) = torch.autograd.grad(g @ v, t)
        return hv.detach()

    started = time.time()
    v = load("v")
    hvp_errors, hvp_error_ratios = {}, {}
    for i, (mode, train) in enumerate((("train", True), ("eval", False))):
        ours = load(f"hv_{mode}")
        ref = hvp(v, train)
        hvp_errors[mode] = float((ours - ref).norm() / ref.norm())
        hvp_error_ratios[mode] = float((ours - ref).norm()) / spec["hv_error_estimates"][i]
    hvp_s = time.time() - started

    train_mode = report["bn_mode"] == "train"
    dim = theta.numel()
    rng = np.random.default_rng(0)
    q = torch.from_numpy(rng.standard_normal(dim))
    q /= q.norm()
    basis, alphas, betas = [q], [], []
    started = time.time()
    for j in range(min(args.steps, dim)):
        w = hvp(basis[-1], train_mode)
        alphas.append(float(w @ basis[-1]))
        for b in basis:  # full reorthogonalisation
            w -= (w @ b) * b
        beta = float(w.norm())
        if beta < 1e-14:
            break
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    t = np.diag(alphas) + np.diag(betas[: k - 1], 1) + np.diag(betas[: k - 1], -1)
    values, vectors = np.linalg.eigh(t)
    ritz = torch.stack(basis[:k], dim=1) @ torch.from_numpy(vectors[:, -1])
    lam = float(values[-1])
    torch_residual = float((hvp(ritz, train_mode) - lam * ritz).norm())
    lanczos_s = time.time() - started

    ours = report["eigenpairs"]
    interval = ours["intervals"][0]
    x = torch.from_numpy(np.load(d / "eigenvectors.npy")[:, 0])
    our_residual_with_torch = float((hvp(x, train_mode) - ours["values"][0] * x).norm())
    result = {
        "dim": dim,
        "images": int(images.shape[0]),
        "block_size": block,
        "layout_max_abs_difference": layout_error,
        "hvp_relative_error": hvp_errors,
        "hvp_error_over_our_estimate": hvp_error_ratios,
        "hvp_seconds": hvp_s,
        "bn_mode": report["bn_mode"],
        "lambda_max_torch": lam,
        "torch_lanczos_steps": k,
        "torch_residual": torch_residual,
        "torch_lanczos_seconds": lanczos_s,
        "lambda_max_ours": ours["values"][0],
        "our_interval": [interval["lower"], interval["upper"]],
        "our_residual_with_torch_hvp": our_residual_with_torch,
        "torch": torch.__version__,
    }
    checks = {
        "layout": layout_error == 0.0,
        "hvp_train_within_our_error_estimate": hvp_error_ratios["train"] <= 1.0,
        "hvp_eval_within_our_error_estimate": hvp_error_ratios["eval"] <= 1.0,
        "lambda_in_interval": interval["lower"] - torch_residual <= lam <= interval["upper"] + torch_residual,
    }
    result["checks"] = checks
    result["pass"] = all(checks.values())
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()
