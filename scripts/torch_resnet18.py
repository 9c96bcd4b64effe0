#!/usr/bin/env python3
"""Training throughput of ResNet-18 (CIFAR variant) in PyTorch, the reference for burn's number.

The model is the one of src/deep/resnet.rs: 3x3 stem convolution (stride 1, no max-pool),
BasicBlocks [2, 2, 2, 2] with widths w, 2w, 4w, 8w, downsampling shortcut = 2x2 average pool +
1x1 convolution + BatchNorm, global average pool, linear classifier; 11,173,962 parameters at
width 64. One timed iteration = forward + cross-entropy + backward + SGD step (Nesterov momentum
0.9, weight decay 5e-4) on one batch of random 3x32x32 images already on the GPU, the same work
as `fullbatch device bench`. Timing starts after `--warmup` iterations (cudnn.benchmark picks its
algorithms there) and ends with torch.cuda.synchronize() (on the GPU).

On the CPU (`--device cpu`, used by benches/resnet_cpu_side_by_side.sh) the images are float32
NCHW, the threads are set with `--threads` (torch.set_num_threads), and only "fp32" is timed by
default (TF32 does not exist there, so "fp32_strict" is the same computation).

Variants timed (all recorded; the burn/torch ratio in gpu-check.sh uses "fp32"):
  fp32            float32 weights and activations, NCHW, TF32 allowed for convolutions and matmuls
                  (burn's CUDA backend also runs f32 convolutions on TF32 tensor cores)
  fp32_strict     TF32 off (true fp32 arithmetic)
  bf16_autocast   autocast to bfloat16, channels_last (what a PyTorch user would run for speed)
  fp32_burn_bn    fp32 with TF32, BatchNorm decomposed into tensor operations as burn 0.21 does it
                  (BurnLikeBatchNorm2d): how much of burn's gap that decomposition explains
  fp32_lean_bn    the same with fullbatch's own BatchNorm (LeanBatchNorm2d, six operations)

With --full-batch N: one full-batch step over N random images in blocks of --batch, plain and
with the paper's finite-difference regulariser (two passes per block), fp32/TF32, as
`fullbatch device bench --images N` (time_full_batch).

Usage: python3 scripts/torch_resnet18.py [--device cuda|cpu] [--threads N] [--width 64]
       [--batch 128] [--warmup 15] [--iters 50] [--variants fp32,...] [--full-batch N]
       [--json-out FILE]
"""
import argparse
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Shortcut(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(F.avg_pool2d(x, 2, 2)))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = Shortcut(c_in, c_out) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet(nn.Module):
    def __init__(self, width=64, blocks=(2, 2, 2, 2), in_channels=3, num_classes=10):
        super().__init__()
        self.stem_conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        layers, c_in = [], width
        for stage, count in enumerate(blocks):
            c_out = width << stage
            for b in range(count):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and b == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BurnLikeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm in training mode as burn 0.21's `BatchNorm::forward_train` computes it: separate
    tensor operations (swap_dims + reshape + mean_dim for the mean, the same over the squared
    deviation for the variance, then sub, div by sqrt(var + eps), mul, add), differentiated
    operation by operation by autograd, where nn.BatchNorm2d calls cuDNN's fused kernels. Used by
    the `fp32_burn_bn` variant to measure what that decomposition costs in PyTorch itself."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        n, c = x.shape[0], x.shape[1]
        flat = lambda t: t.transpose(0, 1).reshape(c, -1)  # noqa: E731
        mean = flat(x).mean(1).reshape(1, c, 1, 1)
        var = flat((x - mean).square()).mean(1).reshape(1, c, 1, 1)
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.reshape(c))
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.reshape(c))
        out = (x - mean) / (var + self.eps).sqrt()
        return out * self.weight.reshape(1, c, 1, 1) + self.bias.reshape(1, c, 1, 1)


class LeanBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm in training mode as fullbatch's `deep::resnet::batch_norm` computes it: the means
    reduce the batch dimension first (no transposed copy), the centred activation is shared and
    the scale is formed on the per-channel statistics (six full-size operations against burn's
    ten). Used by the `fp32_lean_bn` variant."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        c = x.shape[1]
        mean = x.mean(0, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        centred = x - mean
        var = centred.square().mean(0, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.reshape(c))
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.reshape(c))
        scale = (var + self.eps).sqrt().reciprocal() * self.weight.reshape(1, c, 1, 1)
        return centred * scale + self.bias.reshape(1, c, 1, 1)


def use_batch_norm(model, cls):
    """Replaces every nn.BatchNorm2d of `model` by `cls` (same parameters, fresh statistics)."""
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(m, child_name, cls(child.num_features).to(child.weight.device))
    return model


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_variant(name, width, batch, warmup, iters, device="cuda"):
    torch.manual_seed(0)
    dev = torch.device(device)
    if dev.type == "cuda":
        tf32 = name != "fp32_strict"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    model = ResNet(width).to(dev)
    if name == "fp32_burn_bn":
        use_batch_norm(model, BurnLikeBatchNorm2d)
    elif name == "fp32_lean_bn":
        use_batch_norm(model, LeanBatchNorm2d)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    autocast = name == "bf16_autocast"
    if autocast:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(dev)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(dev)
    s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    return {
        "variant": name,
        "device": dev.type,
        "width": width,
        "batch": batch,
        "warmup_iters": warmup,
        "iters": iters,
        "warmup_s": warmup_s,
        "s_per_iter": s / iters,
        "images_per_s": batch * iters / s,
        "parameters": params,
    }


def time_full_batch(width, images, block, device="cuda", alpha=0.5, eps=0.01, lr=0.1, clip=0.25):
    """One full-batch step over `images` random images in blocks of `block`, as `fullbatch device
    bench --images N`: per block a forward and backward pass (BatchNorm per block), the
    block gradients averaged, global-norm clipping, Nesterov SGD. Regularised: per block the
    official finite-difference correction, a second forward and backward pass at
    theta + eps g/|g| and g + alpha (lr/4) (g' - g) |g| / eps. fp32 with TF32 allowed (as burn).
    Warm-up: one step of each kind on two blocks. Returns seconds per step of each kind."""
    torch.manual_seed(0)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = ResNet(width).to(dev)
    params = [p for p in model.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(images, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (images,), device=dev)

    def block_grad(xb, yb):
        loss = F.cross_entropy(model(xb), yb)
        return torch.autograd.grad(loss, params)

    def step(n, regularised):
        k_blocks = n // block
        acc = [torch.zeros_like(p) for p in params]
        for k in range(k_blocks):
            xb, yb = x[k * block:(k + 1) * block], y[k * block:(k + 1) * block]
            g = block_grad(xb, yb)
            if regularised:
                norm = torch.sqrt(sum((gi * gi).sum() for gi in g))
                scale = eps / norm.clamp_min(1e-30)
                with torch.no_grad():
                    for p, gi in zip(params, g):
                        p.add_(gi * scale)
                g2 = block_grad(xb, yb)
                with torch.no_grad():
                    for p, gi in zip(params, g):
                        p.sub_(gi * scale)
                coef = norm * (alpha * lr / (4 * eps))
                g = [gi + coef * (g2i - gi) for gi, g2i in zip(g, g2)]
            for a_, gi in zip(acc, g):
                a_.add_(gi, alpha=1.0 / k_blocks)
        with torch.no_grad():
            total = torch.sqrt(sum((a_ * a_).sum() for a_ in acc))
            factor = torch.clamp(clip / (total + 1e-6), max=1.0)
            for p, a_ in zip(params, acc):
                p.grad = a_ * factor
        opt.step()

    t0 = time.perf_counter()
    step(2 * block, False)
    step(2 * block, True)
    sync(dev)
    warmup_s = time.perf_counter() - t0
    out = {"width": width, "images": images, "block": block, "device": dev.type, "warmup_s": warmup_s}
    for name, reg in (("plain_step_s", False), ("regularised_step_s", True)):
        t0 = time.perf_counter()
        step(images, reg)
        sync(dev)
        out[name] = time.perf_counter() - t0
    out["plain_images_per_s"] = images / out["plain_step_s"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--variants", help="default: fp32,fp32_strict,bf16_autocast,fp32_burn_bn,fp32_lean_bn (cuda), fp32 (cpu)")
    p.add_argument("--full-batch", type=int, default=0, metavar="N",
                   help="instead: time one full-batch step over N images in blocks of --batch, plain and regularised")
    p.add_argument("--json-out")
    a = p.parse_args()
    if a.variants is None:
        a.variants = "fp32,fp32_strict,bf16_autocast,fp32_burn_bn,fp32_lean_bn" if a.device == "cuda" else "fp32"
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device == "cuda":
        if not torch.cuda.is_available():
            print("torch: CUDA is not available", file=sys.stderr)
            return 1
        out = {
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
            "device": torch.cuda.get_device_name(0),
            "results": {},
        }
    else:
        out = {
            "torch_version": torch.__version__,
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "results": {},
        }
    if a.full_batch:
        out["full_batch"] = time_full_batch(a.width, a.full_batch, a.batch, a.device)
        r = out["full_batch"]
        print(f"torch full batch of {r['images']}: {r['plain_step_s']:.3f} s plain, "
              f"{r['regularised_step_s']:.3f} s regularised", file=sys.stderr)
        a.variants = ""
    for v in filter(None, a.variants.split(",")):
        out["results"][v] = time_variant(v, a.width, a.batch, a.warmup, a.iters, a.device)
        r = out["results"][v]
        print(f"torch {v}: {r['images_per_s']:.0f} images/s ({1000 * r['s_per_iter']:.2f} ms/iter)", file=sys.stderr)
    if a.width == 64 and not a.full_batch:
        assert out["results"][a.variants.split(",")[0]]["parameters"] == 11_173_962
    text = json.dumps(out, indent=2)
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
