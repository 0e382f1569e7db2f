"""Curvature of the NeuTra potential: where the guide leaves the warped space curved.

NUTS on the warped space diverges where the potential ``U(z) = -log p(T(z)) - log|J_T(z)|``
curves more sharply than its adapted step can follow (a leapfrog step ``eps`` is unstable
once the largest Hessian eigenvalue passes about ``4 / eps^2``). For each guide option
this runs ``neutra_mcmc`` at its defaults on one reference posterior, then evaluates the
Hessian of ``U`` at ``--points`` draws ``z ~ N(0, r^2 I)`` for each radius factor ``r``,
and reports the quantiles of its largest eigenvalue, the adapted step sizes, the
divergences, and the constrained-space point of the worst eigenvalue.

Writes ``<out>/warped_curvature.md``.

Usage:
    python benchmarks/warped_curvature.py --posterior banana --input-bounds 5,10,none
    python benchmarks/warped_curvature.py --quick
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from functools import partial
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import posteriordb  # noqa: E402
from numpyro.infer.reparam import NeuTraReparam  # noqa: E402
from numpyro.infer.util import potential_energy  # noqa: E402

from numpyro_coupling import neutra_mcmc  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def warped_potential(model, guide, params):
    """``U(z)`` of NeuTra's warped space for a fitted ``AutoContinuous`` guide: the
    potential energy of the model reparameterised by NumPyro's ``NeuTraReparam``."""
    warped = NeuTraReparam(guide, params).reparam(model)
    site = f"{guide.prefix}_shared_latent"
    return lambda z: potential_energy(warped, (), {}, {site: z})


def curvature_rows(name, bound, args):
    """One row per radius factor: ``neutra_mcmc`` with ``input_bound=bound``, then Hessians."""
    entry = posteriordb.POSTERIORS[name]
    model = partial(entry.model, **entry.data())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc, idata = neutra_mcmc(
            model,
            guide={"input_bound": bound},
            key=jr.key(args.seed),
            retry=None,
            fit_kwargs={"steps": args.svi_steps},
            num_warmup=args.num_warmup,
            num_samples=args.num_samples,
            progress_bar=False,
        )
    guide, params = mcmc.guide, mcmc.guide_params
    potential = warped_potential(model, guide, params)
    hessians = jax.jit(jax.vmap(jax.hessian(potential)))
    transform = jax.jit(jax.vmap(guide.get_transform(params)))
    step = np.atleast_1d(np.asarray(mcmc.last_state.adapt_state.step_size))
    rows = []
    for radius in args.radii:
        z = radius * jr.normal(jr.key(1), (args.points, guide.latent_dim))
        top = np.linalg.eigvalsh(np.asarray(hessians(z)))[:, -1]
        worst = int(np.nanargmax(top))
        x = np.asarray(transform(z[worst : worst + 1]))[0]
        q50, q99, q999 = np.nanquantile(top, [0.5, 0.99, 0.999])
        rows.append(
            f"| {name} | {bound} | {args.seed} | {int(idata.attrs['divergences'])} "
            f"| {step.min():.2f}-{step.max():.2f} | {radius} | {q50:.1f} | {q99:.1f} "
            f"| {q999:.1f} | {np.nanmax(top):.1f} | {np.array2string(x[:4], precision=1)} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posterior", default="banana", choices=list(posteriordb.POSTERIORS))
    parser.add_argument("--input-bounds", default="5,10,none", help="'none': no bound")
    parser.add_argument("--radii", default="1.0,1.5", help="radius factors r of z ~ N(0, r^2 I)")
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--svi-steps", type=int, default=10_000)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    args.radii = [float(r) for r in args.radii.split(",")]
    if args.quick:
        args.points, args.svi_steps, args.num_warmup, args.num_samples = 50, 20, 20, 20
    bounds = [None if b.lower() == "none" else float(b) for b in args.input_bounds.split(",")]
    rows = []
    for bound in bounds:
        rows += curvature_rows(args.posterior, bound, args)
    command = "python benchmarks/warped_curvature.py " + shlex.join(argv or sys.argv[1:])
    text = "\n".join(
        [
            "# Curvature of the NeuTra potential",
            "",
            f"`{command.strip()}`. Largest Hessian eigenvalue of the warped potential at "
            f"{args.points} points z ~ N(0, r^2 I): quantiles and maximum; the adapted step "
            "sizes of the chains (a leapfrog step eps is unstable past about 4 / eps^2); "
            "NUTS divergences (no retry); the first four constrained coordinates of the worst "
            "point.",
            "",
            "| posterior | input_bound | key | div. | step sizes | r | median | 99% | 99.9% "
            "| max | worst x |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "warped_curvature.md").write_text(text)
    print(f"wrote {out / 'warped_curvature.md'}")


if __name__ == "__main__":
    main()
