"""One-pass ``log_prob`` versus NumPyro's default two-pass path.

NumPyro's ``TransformedDistribution.log_prob`` inverts each transform and then asks it for
its log-det, evaluating every conditioner twice. ``CouplingFlow.log_prob`` computes the
latent and the log-det together, evaluating each conditioner once. This script times both
(jitted, with and without the parameter gradient) and writes a markdown table.

    python benchmarks/one_pass.py            # d = 2 and 64, batch 512, 8 spline layers
    python benchmarks/one_pass.py --quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.random as jr

from numpyro_coupling import coupling_flow


def best_time(fn, *args, repeats):
    """Best wall time of ``fn(*args)`` over ``repeats`` runs, after one compiling call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def measure(d, batch, n_layers, transformer, repeats):
    flow = coupling_flow(
        jr.key(0), (d,), transformer=transformer, n_layers=n_layers, zero_init=False
    )
    x = jr.normal(jr.key(1), (batch, d))
    row = {}
    for label, method in [("one-pass", "log_prob"), ("two-pass", "log_prob_two_pass")]:
        value = eqx.filter_jit(lambda f, v, m=method: getattr(f, m)(v).mean())
        grad = eqx.filter_jit(eqx.filter_grad(lambda f, v, m=method: getattr(f, m)(v).mean()))
        row[label] = (
            best_time(value, flow, x, repeats=repeats),
            best_time(grad, flow, x, repeats=repeats),
        )
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--transformers", nargs="+", default=["spline", "affine", "mixture"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.repeats, args.transformers = [2], 3, ["spline"]

    lines = [
        f"One-pass vs two-pass log_prob, {args.layers} coupling layers, batch {args.batch} "
        f"({jax.default_backend()}, best of {args.repeats}).",
        "",
        "| transformer | d | one-pass log_prob (ms) | two-pass (ms) | speed-up | "
        "one-pass grad (ms) | two-pass grad (ms) | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for transformer in args.transformers:
        for d in args.dims:
            row = measure(d, args.batch, args.layers, transformer, args.repeats)
            (v1, g1), (v2, g2) = row["one-pass"], row["two-pass"]
            lines.append(
                f"| {transformer} | {d} | {1e3 * v1:.3f} | {1e3 * v2:.3f} | {v2 / v1:.2f}x | "
                f"{1e3 * g1:.3f} | {1e3 * g2:.3f} | {g2 / g1:.2f}x |"
            )
            print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "one_pass.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
