"""Which coordinate pairs the guide's masks bring together, and what it costs the fit.

A funnel with one scale coordinate ``v`` and ``dim - 1`` coordinates ``x_i ~ N(0, e^{v/2})``
needs every ``x_i`` transformed in some coupling that reads ``v``. With eight layers the
``"bits"`` masks of :func:`~numpyro_coupling.masks.bit_masks` bring every ordered pair
together up to 70 coordinates. Masks built from the low index bits alone (what the
coordinates beyond ``2^4`` would otherwise share) leave pairs apart past 16 coordinates,
and a random permutation before each half mask misses a given pair in a layer with
probability 3/4. The table gives the ordered pairs never split, and the guide's KL (in
nats, the funnel being normalised) after ``fit_guide`` with its defaults.

    python benchmarks/mask_coverage.py                 # 33-D funnel, keys 0-2
    python benchmarks/mask_coverage.py --quick         # smoke test
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax.random as jr
import numpy as np
from numpyro.infer import Trace_ELBO
from report import write_markdown

from numpyro_coupling import AutoCouplingFlow, fit_guide, flows, masks
from numpyro_coupling.targets import funnel


def pairs_apart(masks: np.ndarray) -> int:
    """Ordered pairs ``(i, j)`` never split with ``i`` passive and ``j`` active."""
    dim = masks.shape[1]
    meets = (~masks[:, :, None] & masks[:, None, :]).any(0)
    return int(dim * (dim - 1) - meets.sum())


METHODS = {
    "bits": ("`bits` masks (default)", "bits", masks.bit_masks),
    # The index bits 0 .. n_layers // 2 - 1 only: the reference.
    "low-bits": ("masks from the low index bits only", "bits", masks.index_bit_masks),
    "random": ("random permutation + half mask", "random", None),
}


def run(method, dim, key, steps, loss_particles):
    _, permutation, bit_masks = METHODS[method]
    saved = flows.bit_masks
    if bit_masks is not None:
        flows.bit_masks = bit_masks
    try:

        def model():
            funnel(dim=dim)

        guide = AutoCouplingFlow(model, permutation=permutation)
        start = time.perf_counter()
        guide, params, _ = fit_guide(
            model, guide=guide, steps=steps, key=jr.key(key), progress_bar=False
        )
        seconds = time.perf_counter() - start
        kl = Trace_ELBO(num_particles=loss_particles).loss(jr.key(99), params, model, guide)
    finally:
        flows.bit_masks = saved
    return float(kl), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=33, help="funnel dimension (v and x)")
    parser.add_argument("--keys", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--svi-steps", type=int, default=10_000)
    parser.add_argument("--loss-particles", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.keys, args.svi_steps, args.loss_particles = [0], 200, 500
    n_layers = AutoCouplingFlow(funnel).n_layers
    lines = [
        f"{args.dim}-D funnel (`v` and {args.dim - 1} coordinates `x_i`), "
        f"`AutoCouplingFlow` defaults ({n_layers} affine couplings), `fit_guide` "
        f"{args.svi_steps} steps; KL from {args.loss_particles} draws. "
        "Pairs apart: ordered pairs of coordinates never split with the first passive and "
        f"the second active, of {args.dim * (args.dim - 1)}; for the random permutations, "
        "per layer a given pair is split that way with probability 1/4.",
        "",
        "| masks | pairs apart | " + " | ".join(f"KL, key {k}" for k in args.keys) + " | SVI s |",
        "|---|---|" + "---|" * (len(args.keys) + 1),
    ]
    for method in args.methods:
        label, _, masks = METHODS[method]
        apart = pairs_apart(masks(args.dim, n_layers)) if masks is not None else "-"
        runs = [run(method, args.dim, k, args.svi_steps, args.loss_particles) for k in args.keys]
        kls = " | ".join(f"{kl:.3f}" for kl, _ in runs)
        seconds = np.median([s for _, s in runs])
        lines.append(f"| {label} | {apart} | {kls} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    name = f"mask_coverage_{args.dim}d"
    write_markdown(lines, args.out, f"{name}_quick" if args.quick else name)


if __name__ == "__main__":
    main()
