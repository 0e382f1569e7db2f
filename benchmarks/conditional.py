"""Conditional density fitting, p(x | c), this package next to flowjax (``cond_dim``).

The data: ``c ~ Uniform([-2, 2]^2)`` and, given ``c``, ``x`` in R^2 is a two-component
Gaussian mixture whose weight, means, scales and correlation all vary smoothly with ``c``
(:func:`mixture_params`), so the exact conditional log-density is known: the oracle
column is its mean over the test pairs. ``--n-train`` training pairs (50,000 by default,
``default_rng(seed)``) and 20,000 test pairs (``default_rng(10_000 + seed)``) per seed.

Both libraries' flows have the same architecture (8 coupling layers of a rational-quadratic
spline, 8 bins on [-4, 4], conditioners 64x2 reading the passive coordinate and the
context, a flip between layers) and are trained by the same loop,
:func:`numpyro_coupling.fit` with ``context=`` (Adam, ``clip_by_global_norm(1.0)``, cosine
one-cycle schedule, batch 512, the same minibatches, and the returned flow the moving
average of the iterates with a time constant of a tenth of the run). flowjax's flow goes
through an adapter giving it ``event_shape``, ``context_shape`` and ``condition``.

Wall times are the steady-state training time per 1000 steps (compilation excluded): the
best of the ``--chunk``-step slices, which run in alternation between the two libraries so
that a busy machine slows both alike.

    python benchmarks/conditional.py                 # seeds 0-2, 4000 steps
    python benchmarks/conditional.py --libraries numpyro_coupling "numpyro_coupling (lu)" flowjax
    python benchmarks/conditional.py --quick         # smoke test
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from numpyro_coupling import coupling_flow, fit, partition_flow

N_LAYERS, NN_WIDTH, NN_DEPTH, N_BINS, INTERVAL = 8, 64, 2, 8, 4.0


# ----------------------------------------------------------------------------- data


def mixture_params(c):
    """Weight of component 1, and per component its mean ``(n, 2)`` and Cholesky ``(n, 2, 2)``."""
    c0, c1 = c[:, 0], c[:, 1]
    weight = 1.0 / (1.0 + np.exp(-(1.2 * c0 + 0.6 * c1)))
    mean1 = np.stack([1.2 + 0.4 * np.sin(1.5 * c1), 0.6 * c0], -1)
    mean2 = np.stack([-1.0 - 0.3 * c0, -0.5 + 0.5 * np.cos(c1)], -1)
    chol1 = _cholesky(0.3 * np.exp(0.25 * c1), 0.4 * np.exp(-0.2 * c0), 0.0 * c0)
    chol2 = _cholesky(0.5 * np.exp(-0.2 * c1), 0.3 * np.exp(0.2 * c0), 0.6 * np.tanh(c1))
    return weight, (mean1, chol1), (mean2, chol2)


def _cholesky(scale_a, scale_b, rho):
    zero = np.zeros_like(scale_a)
    return np.stack(
        [
            np.stack([scale_a, zero], -1),
            np.stack([rho * scale_b, np.sqrt(1 - rho**2) * scale_b], -1),
        ],
        -2,
    )


def _gaussian_log_density(x, mean, chol):
    z = np.linalg.solve(chol, (x - mean)[..., None])[..., 0]
    log_det = np.log(np.abs(np.diagonal(chol, axis1=-2, axis2=-1))).sum(-1)
    return -0.5 * (z**2).sum(-1) - log_det - np.log(2 * np.pi)


def log_density(x, c):
    """The exact ``log p(x | c)``, ``(n,)``."""
    weight, (m1, l1), (m2, l2) = mixture_params(c)
    a = np.log(weight) + _gaussian_log_density(x, m1, l1)
    b = np.log1p(-weight) + _gaussian_log_density(x, m2, l2)
    return np.logaddexp(a, b)


def sample(n, seed):
    """``(x, c)``: ``n`` pairs."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-2.0, 2.0, (n, 2))
    weight, (m1, l1), (m2, l2) = mixture_params(c)
    eps = rng.standard_normal((n, 2, 1))
    first = (rng.random(n) < weight)[:, None]
    x = np.where(first, m1 + (l1 @ eps)[..., 0], m2 + (l2 @ eps)[..., 0])
    return x, c


# ---------------------------------------------------------------------------- flows


def ours(key, permutation="flip"):
    return coupling_flow(
        key,
        (2,),
        context_shape=(2,),
        transformer="spline",
        n_layers=N_LAYERS,
        nn_width=NN_WIDTH,
        nn_depth=NN_DEPTH,
        n_bins=N_BINS,
        interval=INTERVAL,
        permutation=permutation,
    )


def ours_lu(key):
    """The same couplings with a learnt ``LULinear`` mixing layer instead of each flip."""
    return ours(key, permutation="lu")


class FlowjaxGiven(eqx.Module):
    """flowjax's flow at fixed conditioning variables (the member ``fit`` uses)."""

    dist: eqx.Module
    context: jax.Array

    def log_prob(self, x):
        return self.dist.log_prob(x, self.context)


class FlowjaxConditional(eqx.Module):
    """Adapter giving a flowjax conditional distribution ``event_shape`` and ``condition``."""

    dist: eqx.Module

    @property
    def event_shape(self):
        return self.dist.shape

    @property
    def context_shape(self):
        return self.dist.cond_shape

    def condition(self, context):
        return FlowjaxGiven(self.dist, context)


def flowjax_flow(key):
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow as flowjax_coupling_flow

    flow = flowjax_coupling_flow(
        key,
        base_dist=Normal(jnp.zeros(2)),
        transformer=RationalQuadraticSpline(knots=N_BINS, interval=INTERVAL),
        cond_dim=2,
        flow_layers=N_LAYERS,
        nn_width=NN_WIDTH,
        nn_depth=NN_DEPTH,
    )
    return FlowjaxConditional(flow)


LIBRARIES = {"numpyro_coupling": ours, "numpyro_coupling (lu)": ours_lu, "flowjax": flowjax_flow}


def n_params(flow):
    return sum(int(np.size(p)) for p in jax.tree.leaves(partition_flow(flow)[0]))


@eqx.filter_jit
def _mean_log_prob(flow, x, c):
    return flow.condition(c).log_prob(x).mean()


def mean_log_prob(flow, x, c):
    return float(_mean_log_prob(flow, jnp.asarray(x), jnp.asarray(c)))


# ---------------------------------------------------------------------------- runs


def run_seed(seed, args):
    """Train both libraries' flows on one seed's data, alternating timing slices."""
    x, c = sample(args.n_train, seed)
    x_test, c_test = sample(args.n_test, 10_000 + seed)
    oracle = float(np.mean(log_density(x_test, c_test)))
    recipe = dict(
        context=c,
        key=jr.key(seed + 1),
        steps=args.steps,
        batch_size=512,
        learning_rate=args.lr,
        clip_norm=1.0,
        weight_decay=args.weight_decay,
        average=args.average,
        progress_bar=False,
    )
    flows, states, fitted = {}, {}, {}
    times = {lib: [] for lib in args.libraries}
    for lib in args.libraries:
        make = LIBRARIES[lib]
        flows[lib] = make(jr.key(seed))
        # A discarded first slice compiles the training loop (excluded from the timing).
        fit(flows[lib], x, stop_at=args.chunk, **recipe)
        states[lib] = None
    done = 0
    while done < args.steps:
        stop = min(done + args.chunk, args.steps)
        for lib in args.libraries:
            start = time.perf_counter()
            fitted[lib], _, states[lib] = fit(
                flows[lib], x, stop_at=stop, resume=states[lib], return_state=True, **recipe
            )
            jax.block_until_ready(states[lib].params)
            times[lib].append((time.perf_counter() - start) / (stop - done))
        done = stop
    rows = {}
    for lib in args.libraries:
        rows[lib] = {
            "test": mean_log_prob(fitted[lib], x_test, c_test),
            "train": mean_log_prob(fitted[lib], x, c),
            "oracle": oracle,
            "ms_per_step": 1e3 * float(np.min(times[lib])),
            "params": n_params(fitted[lib]),
        }
        print(f"seed {seed} {lib:16s}", rows[lib], flush=True)
    return rows, fitted


def write_table(results, args, path):
    dtype = jnp.zeros(()).dtype
    lines = [
        f"Conditional density p(x | c), x and c in R^2: {args.n_train} training pairs, "
        f"{args.n_test} test pairs per seed; {args.steps} steps, batch 512, clip 1.0 + "
        f"cosine one-cycle (peak {args.lr:g}), weight decay {args.weight_decay:g}, "
        f"average {args.average}, {dtype}, {jax.default_backend()} "
        f"({os.cpu_count()} CPU cores visible). Same training loop, recipe and minibatches "
        "for both libraries.",
        "",
        "| seed | library | test LL | train LL | oracle | test - oracle | s / 1000 steps | "
        "time vs flowjax | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gaps = {lib: [] for lib in args.libraries}
    ratios = {lib: [] for lib in args.libraries}
    for seed, rows in results.items():
        ref = rows["flowjax"]["ms_per_step"]
        for lib, r in rows.items():
            gap = r["test"] - r["oracle"]
            gaps[lib].append(gap)
            ratio = r["ms_per_step"] / ref
            ratios[lib].append(ratio)
            lines.append(
                f"| {seed} | {lib} | {r['test']:.4f} | {r['train']:.4f} | {r['oracle']:.4f} | "
                f"{gap:+.4f} | {r['ms_per_step']:.2f} | {ratio:.2f}x | {r['params']} |"
            )
    lines += [
        "",
        "| library | mean test - oracle | worst seed | time vs flowjax: median (mean) over seeds |",
        "|---|---|---|---|",
    ]
    for lib, g in gaps.items():
        r = ratios[lib]
        lines.append(
            f"| {lib} | {np.mean(g):+.4f} | {np.min(g):+.4f} | "
            f"{np.median(r):.2f}x ({np.mean(r):.2f}x) |"
        )
    lines += [
        "",
        f"Both flows: {N_LAYERS} coupling layers, RQ spline ({N_BINS} bins on "
        f"[-{INTERVAL:g}, {INTERVAL:g}]), ReLU conditioners {NN_WIDTH}x{NN_DEPTH} reading "
        "[passive coordinate, c], a flip between layers. Ours: `coupling_flow(key, (2,), "
        "context_shape=(2,), transformer='spline', ...)` (final conditioner layer starts at "
        "zero, so the flow starts as N(0, I) for every c); `(lu)`: the same with "
        "`permutation='lu'` (a learnt LU-factored linear layer in place of each flip, "
        "reading no context); flowjax: `coupling_flow(key, "
        "base_dist=Normal(zeros(2)), transformer=RationalQuadraticSpline(knots=8, "
        "interval=4), cond_dim=2, flow_layers=8, nn_width=64, nn_depth=2)`.",
    ]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=20_000)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--chunk", type=int, default=200, help="steps per timing slice")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decay (both)")
    parser.add_argument(
        "--average", type=float, default=0.1, help="moving average of the iterates (both)"
    )
    parser.add_argument("--x64", action="store_true", help="float64 (default float32)")
    parser.add_argument(
        "--libraries",
        nargs="+",
        default=["numpyro_coupling", "flowjax"],
        choices=list(LIBRARIES),
        help="flows to compare (flowjax among them)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.chunk, args.n_train, args.n_test = [0], 40, 20, 2000, 2000
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    if "flowjax" not in args.libraries:
        parser.error("--libraries must include flowjax (the reference of the time ratios)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {seed: run_seed(seed, args)[0] for seed in args.seeds}
    suffix = "_quick" if args.quick else ""
    write_table(results, args, out / f"conditional{suffix}.md")


if __name__ == "__main__":
    main()
