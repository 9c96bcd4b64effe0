#!/usr/bin/env python3
"""Check the numbers of a `fullbatch sharpness --export DIR` run independently, in JAX.

Rebuilds the loss from DIR/spec.json and the .npy files (nothing from fullbatch's code), then
  1. compares the loss at theta with the reported one;
  2. recomputes |H v - lambda v| for every exported Lanczos pair with JAX's HVP
     (forward-over-reverse), float64;
  3. when the dimension is at most --dense-limit, computes the dense Hessian (jax.hessian) and
     numpy's eigvalsh, and compares the reported eigenvalues with it;
  4. with --eigsh, runs scipy.sparse.linalg.eigsh on a LinearOperator whose matvec is JAX's HVP,
     the reference a user would otherwise pick, and reports its matvecs, time and residuals.
Prints one JSON object; exits 1 if a check fails.

Usage: python3 scripts/check_export.py DIR [--eigsh] [--eigsh-tol 1e-8] [--dense-limit 5000]
Needs numpy and jax (scipy for --eigsh).
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

try:
    import jax
except ImportError:
    sys.exit("check_export.py needs jax (pip install jax): not found")

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

ACTIVATIONS = {
    "identity": lambda a: a,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "gelu": lambda a: jax.nn.gelu(a, approximate=False),
}


def network_loss(spec, layout, x, y):
    net = spec["spec"]
    act = ACTIVATIONS[net["activation"]]
    blocks = {b["name"]: b for b in layout}
    n_layers = len(net["hidden"]) + 1

    def take(theta, name):
        b = blocks[name]
        size = int(np.prod(b["shape"]))
        return theta[b["offset"] : b["offset"] + size].reshape(b["shape"])

    def loss(theta):
        z = x
        for layer in range(1, n_layers + 1):
            a = z @ take(theta, f"W{layer}").T
            if net["bias"]:
                a = a + take(theta, f"b{layer}")
            z = act(a) if layer < n_layers else a
        kind = net["loss"]
        if kind == "mean_squared_error":
            return 0.5 * jnp.mean(jnp.sum((z - y) ** 2, axis=1))
        if kind == "binary_cross_entropy":
            return jnp.mean(jax.nn.softplus(z[:, 0]) - y[:, 0] * z[:, 0])
        if kind == "softmax_cross_entropy":
            return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.sum(y * z, axis=1))
        raise ValueError(f"spec.json: unknown loss {kind!r}")

    return loss


def build_loss(directory, spec):
    model = spec["model"]
    if model["kind"] == "quadratic":
        a = jnp.asarray(np.load(directory / "a.npy"))
        b = jnp.asarray(np.load(directory / "b.npy"))
        return lambda theta: 0.5 * theta @ a @ theta + b @ theta
    if model["kind"] == "network":
        x = jnp.asarray(np.load(directory / "inputs.npy"))
        y = jnp.asarray(np.load(directory / "targets.npy"))
        return network_loss(model, model["layout"], x, y)
    raise ValueError(f"spec.json: unknown model kind {model['kind']!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("--eigsh", action="store_true", help="also run scipy's eigsh on the JAX HVP")
    parser.add_argument("--eigsh-tol", type=float, default=1e-8)
    parser.add_argument("--dense-limit", type=int, default=5000)
    args = parser.parse_args()

    spec = json.loads((args.dir / "spec.json").read_text())
    if spec.get("format") != "fullbatch-export/1":
        sys.exit(f"{args.dir / 'spec.json'}: not a fullbatch export (format {spec.get('format')!r})")
    results = spec["results"]
    theta = jnp.asarray(np.load(args.dir / "theta.npy"))
    loss = build_loss(args.dir, spec)
    grad = jax.grad(loss)
    hvp = jax.jit(lambda v: jax.jvp(grad, (theta,), (v,))[1])

    out = {"dir": str(args.dir), "dim": int(theta.shape[0]), "checks": []}
    failed = False

    def check(name, ok, **values):
        nonlocal failed
        failed |= not ok
        out["checks"].append({"check": name, "pass": bool(ok), **values})

    ours = results.get("loss")
    if ours is not None:
        theirs = float(loss(theta))
        check("loss", abs(theirs - ours) <= 1e-12 * max(1.0, abs(ours)), ours=ours, jax=theirs)

    lanczos = results.get("lanczos", {})
    values = lanczos.get("values", [])
    vectors_path = args.dir / "eigenvectors.npy"
    if values and vectors_path.exists():
        vectors = np.load(vectors_path)
        norm_h = max(abs(v) for v in values)
        for i, lam in enumerate(values):
            v = jnp.asarray(vectors[:, i])
            residual = float(jnp.linalg.norm(hvp(v) - lam * v))
            reported = lanczos["residuals"][i]
            # Independent HVPs round differently: agree to 1e-12 ||H|| or 10% of the residual.
            ok = abs(residual - reported) <= max(0.1 * reported, 1e-12 * norm_h)
            check(f"residual {i}", ok, value=lam, ours=reported, jax=residual)

    if values and theta.shape[0] <= args.dense_limit:
        h = np.asarray(jax.hessian(loss)(theta))
        exact = np.linalg.eigvalsh(0.5 * (h + h.T))
        which = results.get("which", "largest")
        order = {"largest": -exact, "smallest": exact, "largest_magnitude": -np.abs(exact)}[which]
        exact = exact[np.argsort(order, kind="stable")]
        scale = np.max(np.abs(exact))
        for i, lam in enumerate(values):
            ok = abs(lam - exact[i]) <= 1e-8 * max(abs(exact[i]), 1e-5 * scale)
            check(f"eigenvalue {i} vs dense eigvalsh", ok, ours=lam, numpy=float(exact[i]))

    if args.eigsh:
        from scipy.sparse.linalg import LinearOperator, eigsh

        d = int(theta.shape[0])
        counter = {"matvecs": 0}

        def matvec(v):
            counter["matvecs"] += 1
            return np.asarray(hvp(jnp.asarray(np.ravel(v))))

        op = LinearOperator((d, d), matvec=matvec, dtype=np.float64)
        matvec(np.ones(d))  # compile outside the timing
        counter["matvecs"] = 0
        k = max(1, len(values))
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        w, u = eigsh(op, k=k, which="LA", tol=args.eigsh_tol, v0=rng.standard_normal(d))
        seconds = time.perf_counter() - start
        order = np.argsort(-w)
        w, u = w[order], u[:, order]
        residuals = [float(jnp.linalg.norm(hvp(jnp.asarray(u[:, i])) - w[i] * jnp.asarray(u[:, i]))) for i in range(k)]
        out["eigsh"] = {
            "k": k,
            "tol": args.eigsh_tol,
            "matvecs": counter["matvecs"],
            "seconds": seconds,
            "values": w.tolist(),
            "residuals": residuals,
        }

    out["pass"] = not failed
    print(json.dumps(out, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
