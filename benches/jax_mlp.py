#!/usr/bin/env python3
"""JAX twin of benches/mlp_derivatives.rs.

Tanh MLP 784-256-10 with biases and softmax cross-entropy (mean over examples), float64,
on n = 1,000 and n = 10,000 random examples. Times, under `jax.jit`:

  loss      L(theta)
  gradient  jax.value_and_grad(L)(theta)            (loss and gradient, like loss_and_gradient)
  hvp       jax.jvp(jax.grad(L), (theta,), (v,))[1]  (forward-over-reverse)

Parameters are a pytree (W1, b1, W2, b2) with W_l of shape (fan_out, fan_in), LeCun-normal
weights (N(0, 1/fan_in)) and zero biases, as `Network::initial_parameters`. Inputs and targets
are jit arguments (not closed-over constants), so XLA cannot fold them into the program.

Each op is compiled and run a few times first (warm-up), then timed `--repeats` times with
`block_until_ready`; prints one JSON line per (op, n):
  {"impl": "jax", "op": ..., "n": ..., "median_ms": ..., "min_ms": ..., "repeats": ...}

Usage: python3 benches/jax_mlp.py [--sizes 1000 10000] [--repeats 30] [--warmup 3]
"""

import argparse
import json
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402  (after enabling x64)
import numpy as np  # noqa: E402

INPUTS, HIDDEN, CLASSES = 784, 256, 10


def init_params(key):
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (HIDDEN, INPUTS), jnp.float64) / np.sqrt(INPUTS)
    w2 = jax.random.normal(k2, (CLASSES, HIDDEN), jnp.float64) / np.sqrt(HIDDEN)
    return (w1, jnp.zeros(HIDDEN, jnp.float64), w2, jnp.zeros(CLASSES, jnp.float64))


def loss_fn(params, x, y):
    w1, b1, w2, b2 = params
    z1 = jnp.tanh(x @ w1.T + b1)
    a2 = z1 @ w2.T + b2
    lse = jax.nn.logsumexp(a2, axis=1)
    return jnp.mean(lse - jnp.sum(y * a2, axis=1))


loss = jax.jit(loss_fn)
value_and_grad = jax.jit(jax.value_and_grad(loss_fn))


@jax.jit
def hvp(params, v, x, y):
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, x, y), (params,), (v,))[1]


def time_op(fn, args, warmup, repeats):
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    for n in args.sizes:
        rng = np.random.default_rng(20220425 + n)
        x = jnp.asarray(rng.standard_normal((n, INPUTS)))
        y = jax.nn.one_hot(jnp.asarray(rng.integers(0, CLASSES, n)), CLASSES, dtype=jnp.float64)
        params = init_params(jax.random.PRNGKey(1))
        leaves, tree = jax.tree_util.tree_flatten(params)
        vkeys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
        v = jax.tree_util.tree_unflatten(
            tree, [jax.random.normal(k, l.shape, jnp.float64) for k, l in zip(vkeys, leaves)]
        )
        assert x.dtype == jnp.float64 and params[0].dtype == jnp.float64
        ops = [
            ("loss", loss, (params, x, y)),
            ("gradient", value_and_grad, (params, x, y)),
            ("hvp", hvp, (params, v, x, y)),
        ]
        for op, fn, fn_args in ops:
            median_ms, min_ms = time_op(fn, fn_args, args.warmup, args.repeats)
            print(
                json.dumps(
                    {
                        "impl": "jax",
                        "op": op,
                        "n": n,
                        "median_ms": round(median_ms, 4),
                        "min_ms": round(min_ms, 4),
                        "repeats": args.repeats,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
