#!/usr/bin/env python3
"""How far TF32 convolutions move a ResNet-18 gradient: the yardstick for `device check-gradient`.

On an NVIDIA GPU, cuDNN runs float32 convolutions on TF32 tensor cores by default (PyTorch's
`torch.backends.cudnn.allow_tf32` is on, and libtorch, hence burn's tch backend, keeps that
default): each operand is rounded to a 10-bit mantissa before the products, with float32
accumulation. A GPU gradient is then compared with a float32 CPU gradient at a tolerance that
must allow for that rounding. This script measures the effect without a GPU: it computes one
minibatch gradient of the CIFAR ResNet-18 of scripts/torch_resnet18.py (the model of
src/deep/resnet.rs) on the CPU in float64 (the reference), in float32, and in float32 with
every convolution's operands rounded to TF32 (forward, input gradient and weight gradient, as
cuDNN's TF32 algorithms do), and prints the relative L2 distances between the three gradients.

Rounding: float32 bit pattern + 0x1000, low 13 bits cleared (round half up on the magnitude,
which differs from the hardware's round-to-nearest-even only on exact ties).

Usage: python3 scripts/tf32_gradient_error.py [--width 16] [--batch 16] [--side 32]
       [--seeds 0,1,2] [--json-out FILE]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_resnet18 import ResNet  # noqa: E402


def to_tf32(t):
    """Round a float32 tensor to TF32 (8-bit exponent, 10-bit mantissa), kept in float32."""
    if t.dtype != torch.float32:
        return t
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


class Tf32Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, stride, padding):
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(to_tf32(x), to_tf32(w), None, stride, padding)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = to_tf32(g)
        gx = torch.nn.grad.conv2d_input(x.shape, to_tf32(w), g, ctx.stride, ctx.padding)
        gw = torch.nn.grad.conv2d_weight(to_tf32(x), w.shape, g, ctx.stride, ctx.padding)
        return gx, gw, None, None


def use_tf32_convolutions(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert m.bias is None and m.dilation == (1, 1) and m.groups == 1
            m.forward = (lambda mod: lambda x: Tf32Conv2d.apply(x, mod.weight, mod.stride, mod.padding))(m)


def gradient(model, x, y):
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])


def rel_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-out")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        torch.manual_seed(seed)
        model = ResNet(width=a.width).train()
        x = torch.randn(a.batch, 3, a.side, a.side)
        y = torch.randint(0, 10, (a.batch,))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        l64, g64 = gradient(model.double(), x.double(), y)
        model.float().load_state_dict(state)
        l32, g32 = gradient(model, x, y)
        model.load_state_dict(state)
        use_tf32_convolutions(model)
        ltf, gtf = gradient(model, x, y)
        row = {
            "seed": seed,
            "loss_f64": l64, "loss_f32": l32, "loss_tf32": ltf,
            "rel_l2_f32_vs_f64": rel_l2(g32, g64),
            "rel_l2_tf32_vs_f64": rel_l2(gtf, g64),
            "rel_l2_tf32_vs_f32": rel_l2(gtf, g32),
            "max_abs_diff_tf32_vs_f32": (gtf - g32).abs().max().item(),
            "max_abs_f32": g32.abs().max().item(),
        }
        rows.append(row)
        print(f"seed {seed}: rel L2 f32 vs f64 {row['rel_l2_f32_vs_f64']:.2e}, "
              f"tf32 vs f64 {row['rel_l2_tf32_vs_f64']:.2e}, tf32 vs f32 {row['rel_l2_tf32_vs_f32']:.2e}")
    out = {"width": a.width, "batch": a.batch, "side": a.side, "torch": torch.__version__, "rows": rows}
    if a.json_out:
        tmp = a.json_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, a.json_out)


if __name__ == "__main__":
    main()
