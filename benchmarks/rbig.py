"""Greedy RBIG: fitting time, and held-out NLL against depth under the stopping rule.

Data:

* ``moons``: ``make_moons(3000, noise=0.06, random_state=0)``, standardised; test set
  20,000 fresh points (``random_state=123``) standardised with the training statistics.
* ``moons8``: 8-D, four independent two-moons pairs (5000 points) mixed by a fixed random
  rotation, standardised; test set 20,000 fresh points from the same generator.

Timing: :func:`~numpyro_coupling.rbig.fit_rbig` for 10 layers (first call, which
compiles, and a steady-state call), and with the stopping rule. Side by side, in the same
process, a reference loop in the style of the earlier library: a Python loop over layers
and dimensions with scikit-learn's CPU ``GaussianMixture`` (8 components) per dimension,
PCA rotations and a clipped normal quantile.

Depth: one deep fit (the layers of a shorter fit are a prefix of it), whose train and test
NLL are read off after every layer, next to the depth at which the default stopping rule
(TC reduction under ``tol = 1e-3`` for ``patience = 3`` layers) stopped, and the depth and
test NLL of a fit that stops on a 10% validation split instead.

    python benchmarks/rbig.py             # full run, writes benchmarks/results/rbig.md
    python benchmarks/rbig.py --quick     # smoke test
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
import numpy as np

ROTATIONS = ("pca", "random", "householder")
EARLIER_LIBRARY_SECONDS = 11.0  # 10 layers on 5000 x 8, project benchmark notes


# ----------------------------------------------------------------------------- data
def _moons(n, seed):
    from sklearn.datasets import make_moons

    return make_moons(n_samples=n, noise=0.06, random_state=seed)[0]


def _moons8(n, seed):
    pairs = [_moons(n, seed * 10 + i) for i in range(4)]
    q = np.linalg.qr(np.random.default_rng(2024).normal(size=(8, 8)))[0]
    return np.concatenate(pairs, 1) @ q.T


DATASETS = {"moons": (_moons, 3000), "moons8": (_moons8, 5000)}


def load(name, n_test):
    make, n_train = DATASETS[name]
    train, test = make(n_train, 0), make(n_test, 123)
    mean, std = train.mean(0), train.std(0)
    return (train - mean) / std, (test - mean) / std


# ----------------------------------------------------------------------------- peers
def reference_rbig(X, n_layers, n_components=8):
    """The earlier library's scheme: Python loops, CPU EM per dimension, PCA, clipped CDF."""
    from scipy.stats import norm
    from sklearn.mixture import GaussianMixture

    x = (X - X.mean(0)) / X.std(0)
    for layer in range(n_layers):
        if layer:
            _, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
            x = x @ vecs
        for j in range(x.shape[1]):
            gm = GaussianMixture(n_components, random_state=0).fit(x[:, j : j + 1])
            sd = np.sqrt(gm.covariances_.ravel())
            cdf = (gm.weights_ * norm.cdf((x[:, j : j + 1] - gm.means_.ravel()) / sd)).sum(1)
            x[:, j] = norm.ppf(np.clip(cdf, 1e-6, 1 - 1e-6))
    return x


# ----------------------------------------------------------------------------- helpers
def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(jax.tree_util.tree_leaves(out))
    return out, time.perf_counter() - start


@jax.jit
def _layer_step(x, matrix, params, log_det):
    from numpyro_coupling import MixtureGaussianCDF

    z, ld = MixtureGaussianCDF(params.shape[-1] // 3).forward(x @ matrix.T, params)
    return z, log_det + ld.sum(-1)


def nll_by_depth(flow, x):
    """Mean NLL of the first ``k`` layers, for every ``k`` (one pass through the layers)."""
    actnorm, stack = flow.bijection.bijections
    x, log_det = actnorm.transform_and_log_det(jnp.asarray(x))
    matrices = jnp.asarray(stack.frozen_matrices.array, x.dtype)
    out = []
    for matrix, params in zip(matrices, stack.params):
        x, log_det = _layer_step(x, matrix, params, log_det)
        base = -0.5 * jnp.sum(x * x, -1) - 0.5 * x.shape[-1] * np.log(2 * np.pi)
        out.append(-float(jnp.mean(base + log_det)))
    return np.asarray(out)


# ----------------------------------------------------------------------------- runs
def timing_rows(args):
    from numpyro_coupling.rbig import fit_rbig

    rows = []
    for name in args.data:
        X, _ = load(name, 10)
        n, d = X.shape
        for dtype in ("float32", "float64"):
            with jax.enable_x64(dtype == "float64"):
                Xd = jnp.asarray(X, dtype)
                kw = dict(n_components=8, progress_bar=False)
                _, first = timed(fit_rbig, Xd, jr.key(0), n_layers=args.layers, **kw)
                _, steady = timed(fit_rbig, Xd, jr.key(1), n_layers=args.layers, **kw)
                auto, t_auto = timed(fit_rbig, Xd, jr.key(1), **kw)
            rows.append((name, f"{n}x{d}", dtype, first, steady, auto.n_layers, t_auto))
            print(
                f"  {name} {n}x{d} {dtype}: {args.layers} layers {first:.2f} s first call, "
                f"{steady:.2f} s steady; stopping rule {auto.n_layers} layers in {t_auto:.2f} s",
                flush=True,
            )
        _, ref = timed(reference_rbig, np.array(X), args.layers)
        rows.append((name, f"{n}x{d}", "reference loop (sklearn EM)", ref, ref, None, None))
        print(f"  {name} reference loop: {ref:.2f} s for {args.layers} layers", flush=True)
    return rows


def depth_curves(args):
    from numpyro_coupling.rbig import fit_rbig

    curves = {}
    for name in args.data:
        X, X_test = load(name, args.n_test)
        for rotation in args.rotations:
            kw = dict(rotation=rotation, progress_bar=False)
            deep = fit_rbig(X, jr.key(0), n_layers=args.max_depth, **kw)
            auto = fit_rbig(X, jr.key(0), max_layers=args.max_depth, **kw)
            held = fit_rbig(X, jr.key(0), max_layers=args.max_depth, validation=0.1, **kw)
            train, test = nll_by_depth(deep, X), nll_by_depth(deep, X_test)
            held_test = nll_by_depth(held, X_test)[-1]
            curves[(name, rotation)] = (train, test, auto.n_layers, held.n_layers, held_test)
            best = int(np.argmin(test))
            print(
                f"  {name} {rotation:11s}: TC rule stops at {auto.n_layers} layers (test NLL "
                f"{test[auto.n_layers - 1]:.3f}); validation rule at {held.n_layers} "
                f"(test NLL {held_test:.3f}); best {test[best]:.3f} at {best + 1}; "
                f"{test[-1]:.3f} at {len(test)}",
                flush=True,
            )
    return curves


def write(rows, curves, args, out):
    lines = [
        "# Greedy RBIG: time and held-out NLL against depth",
        "",
        "Produced by `python benchmarks/rbig.py"
        + (" --quick" if args.quick else "")
        + f"` ({jax.default_backend()}, jax {jax.__version__}). Times are wall-clock seconds "
        "on a shared machine; compare within a table.",
        "",
        f"## Fitting time ({args.layers} layers, 8 mixture components, 100 EM steps)",
        "",
        "| data | shape | implementation | first call (compiles) | steady | stopping rule |",
        "|---|---|---|---|---|---|",
    ]
    for name, shape, impl, first, steady, n_auto, t_auto in rows:
        auto = "" if n_auto is None else f"{n_auto} layers, {t_auto:.2f} s"
        impl_name = impl if "reference" in impl else f"`fit_rbig` {impl}"
        lines.append(f"| {name} | {shape} | {impl_name} | {first:.2f} | {steady:.2f} | {auto} |")
    lines += [
        "",
        f"The earlier library took {EARLIER_LIBRARY_SECONDS:.0f} s for 10 layers on 5000 x 8 "
        "(project benchmark notes). The reference loop is its scheme re-run here "
        "(scikit-learn EM, stopping at its default tolerance).",
        "",
        "## Held-out NLL against depth",
        "",
        "Train and test NLL (nats) after each layer of one deep fit on all training data. "
        "*TC rule*: the default stopping rule (TC reduction under `tol = 1e-3` for "
        "`patience = 3` layers; the fits nest, so its layers are a prefix of the deep fit). "
        "*Validation rule*: `validation=0.1` (10% of the training rows held out, the "
        "held-out NLL must fall by `tol` within `patience` layers, the best depth is kept); "
        "its flow is fitted on the other 90%, and its test NLL is its own.",
        "",
        "| data | rotation | TC rule: depth | test NLL | validation rule: depth | test NLL "
        f"| best test NLL of the deep fit (depth) | test NLL at {args.max_depth} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, rotation), (_, test, stop, held_stop, held_test) in curves.items():
        best = int(np.argmin(test))
        cap = " (cap, still going)" if stop == args.max_depth else ""
        lines.append(
            f"| {name} | {rotation} | {stop}{cap} | {test[stop - 1]:.3f} | {held_stop} "
            f"| {held_test:.3f} | {test[best]:.3f} ({best + 1}) | {test[-1]:.3f} |"
        )
    lines += ["", "![held-out NLL against depth](rbig_depth.png)", ""]
    (out / "rbig.md").write_text("\n".join(lines))

    names = list(dict.fromkeys(name for name, _ in curves))
    fig, axes = plt.subplots(1, len(names), figsize=(6.2 * len(names), 4.3), squeeze=False)
    colors = dict(zip(ROTATIONS, ("#0072B2", "#E69F00", "#009E73")))
    for ax, name in zip(axes[0], names):
        for (data_name, rotation), (train, test, stop, held_stop, held_test) in curves.items():
            if data_name != name:
                continue
            depth = np.arange(1, len(test) + 1)
            c = colors[rotation]
            ax.plot(depth, test, color=c, lw=2, label=f"{rotation}: test")
            ax.plot(depth, train, color=c, lw=1, ls="--", label=f"{rotation}: train")
            ax.plot(stop, test[stop - 1], "o", color=c, ms=9, mec="black")
            ax.plot(held_stop, held_test, "s", color=c, ms=8, mec="black")
        ax.set(
            title=f"{name}: NLL against depth\n(dot: TC rule; square: validation rule)",
            xlabel="RBIG layers",
            ylabel="mean NLL (nats)",
        )
        lo = min(min(c[0].min(), c[1].min()) for k, c in curves.items() if k[0] == name)
        hi = max(c[1][min(2, len(c[1]) - 1)] for k, c in curves.items() if k[0] == name)
        ax.set_ylim(lo - 0.05 * abs(lo), hi)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "rbig_depth.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--rotations", nargs="+", default=list(ROTATIONS), choices=ROTATIONS)
    parser.add_argument("--layers", type=int, default=10, help="layers of the timing fits")
    parser.add_argument("--max-depth", type=int, default=40, help="depth of the deep fits")
    parser.add_argument("--n-test", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.rotations, args.layers = ["moons"], ["pca"], 2
        args.max_depth, args.n_test = 4, 1000
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("timing", flush=True)
    rows = timing_rows(args)
    print("held-out NLL against depth", flush=True)
    curves = depth_curves(args)
    write(rows, curves, args, out)
    print(f"wrote {out / 'rbig.md'}")


if __name__ == "__main__":
    main()
