"""Worst round-trip error of every bijection in the contract registry, float32 and float64.

Parameters are perturbed as in the contract suite (``scale`` times N(0, 1) on every trainable
array; 0.1 is the size of a trained flow's parameters). Inputs are standard normal
("standardised") and ten times wider ("10x outside"). The error is
``max |inverse(transform(x)) - x| / (1 + max |x|)`` over 4096 draws.

    python benchmarks/round_trip.py [--scale 0.1] [--n 4096]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from registry import REGISTRY, build


def worst_error(name, dtype, input_scale, param_scale, n):
    b = build(name, (4,), dtype, scale=param_scale)
    x = (input_scale * jr.normal(jr.key(1), (n, 4))).astype(dtype)
    round_trip = eqx.filter_jit(lambda b, x: b.inverse(b.transform(x)))
    err = jnp.max(jnp.abs(round_trip(b, x) - x), -1) / (1 + jnp.max(jnp.abs(x), -1))
    return float(err.max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1, help="parameter perturbation")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    lines = [
        f"Worst relative round-trip error, parameters perturbed by {args.scale} x N(0, 1), "
        f"{args.n} draws.",
        "",
        "| bijection | float32 standardised | float32 10x outside | "
        "float64 standardised | float64 10x outside |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(REGISTRY):
        cells = []
        for dtype in (jnp.float32, jnp.float64):
            with jax.enable_x64(dtype == jnp.float64):
                for input_scale in (1.0, 10.0):
                    cells.append(f"{worst_error(name, dtype, input_scale, args.scale, args.n):.1e}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"round_trip_scale{args.scale}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
