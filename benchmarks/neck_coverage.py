"""How far into eight schools' funnel neck each NeuTra chain reaches.

Divergences alone do not tell a sampler that explores the neck from one that never gets
there. This script draws a long reference from the *non-centred* eight-schools model (plain
NUTS is exact and mixes well there) and compares its lower quantiles of ``log tau`` with
those of (a) 20,000 draws of each fitted guide and (b) each guide's NeuTra chain, along
with the chain's divergences and ESS per gradient. It also maps the reference draws at those
quantiles through each guide's normalising direction: NUTS runs in that warped space, and a
neck the guide under-covers lands far out in it (a perfect guide puts the draws at a norm of
about 3.2 to 4), where the warped density is stiff. Guides, SVI and NUTS settings are
those of ``neutra.py`` (``fit_guide``: cosine decay, clip 10, 10,000 steps; NUTS 1000 + 1000).

    python benchmarks/neck_coverage.py                 # nuts, ours-affine, iaf32, bnaf; key 0
    python benchmarks/neck_coverage.py --seeds 0 1 --methods ours-affine
    python benchmarks/neck_coverage.py --particles 32  # fit_guide's num_particles, all guides
    python benchmarks/neck_coverage.py --quick         # smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import neutra  # noqa: E402
from report import write_markdown  # noqa: E402

from numpyro_coupling import (  # noqa: E402
    fit_guide,
    neutra_nuts,
    nuts_mcmc,
    sampling_efficiency,
    unconstrained_draws,
)
from numpyro_coupling.targets import (  # noqa: E402
    EIGHT_SCHOOLS_SIGMA,
    EIGHT_SCHOOLS_Y,
    eight_schools,
)

QUANTILES = (0.005, 0.02, 0.05)


def non_centred():
    """The same posterior as ``eight_schools``, with ``theta = mu + tau * eta``."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(EIGHT_SCHOOLS_Y)):
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
        y = jnp.asarray(EIGHT_SCHOOLS_Y)
        numpyro.sample("y", dist.Normal(mu + tau * eta, jnp.asarray(EIGHT_SCHOOLS_SIGMA)), obs=y)


def reference_draws(n, key):
    """``n`` posterior draws of the centred model's sites ``mu``, ``tau``, ``theta``."""
    mcmc = MCMC(NUTS(non_centred), num_warmup=2000, num_samples=n, progress_bar=False)
    mcmc.run(key)
    d = mcmc.get_samples()
    theta = d["mu"][:, None] + d["tau"][:, None] * d["eta"]
    return {"mu": d["mu"], "tau": d["tau"], "theta": theta}


def neck_draws(ref, band=25):
    """The reference draws around each of ``QUANTILES`` of ``log tau``, unconstrained.

    Args:
        ref: reference draws (see :func:`reference_draws`).
        band: draws on each side of a quantile's position in the ``log tau`` order.

    Returns:
        dict ``site -> (len(QUANTILES) * (2 * band + 1), *site_shape)``, quantile by quantile.
    """
    order = np.argsort(np.log(np.asarray(ref["tau"])))
    pos = [int(q * len(order)) for q in QUANTILES]
    idx = np.concatenate([order[max(p - band, 0) : p + band + 1] for p in pos])
    return unconstrained_draws(eight_schools, {k: v[idx] for k, v in ref.items()})


def warped_norms(guide, params, neck):
    """Median norm, in the guide's base space, of the neck draws at each quantile.

    Args:
        guide: fitted ``AutoContinuous`` guide.
        params: its parameters.
        neck: the output of :func:`neck_draws`.

    Returns:
        ``(len(QUANTILES),)`` median norms, or ``None`` for a guide without an inverse.
    """
    n = len(neck["tau"])
    # Flattened in the guide's own order of its latent vector.
    x = jnp.concatenate([neck[k].reshape(n, -1) for k in guide._init_locs], -1)
    try:
        z = guide.get_transform(params).inv(x)
    except NotImplementedError:  # AutoBNAFNormal: no inverse
        return None
    norms = np.linalg.norm(np.asarray(z), axis=-1).reshape(len(QUANTILES), -1)
    return np.median(norms, axis=1)


def fmt(q):
    return " / ".join(f"{v:.2f}" for v in q)


def chain_row(label, seed, guide_quantiles, warped, idata):
    eff = sampling_efficiency(idata)
    chain = np.log(idata.posterior["tau"].values[0])
    return (
        f"| {label} | {seed} | {guide_quantiles} | {warped} | "
        f"{fmt(np.quantile(chain, QUANTILES))} | {eff['divergences']} | "
        f"{eff['ess_per_grad']:.4f} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["nuts", "ours-affine", "iaf32", "bnaf"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--svi-steps", type=int, default=10_000)
    parser.add_argument("--particles", type=int, default=1, help="fit_guide's num_particles")
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--reference-samples", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(neutra.METHODS))
    if unknown or "ours-warm" in args.methods:
        parser.error(f"methods must be those of neutra.py other than ours-warm, got {unknown}")
    if args.quick:
        args.svi_steps, args.num_warmup, args.num_samples = 50, 50, 50
        args.reference_samples, args.methods, args.seeds = 2000, args.methods[:1], [0]

    ref = reference_draws(args.reference_samples, jr.key(0))
    ref_log_tau = np.log(np.asarray(ref["tau"]))
    neck = neck_draws(ref)  # the same for every guide: mapped through each in turn
    particles = f", {args.particles} particles per step" if args.particles > 1 else ""
    lines = [
        "Eight schools (centred): lower quantiles "
        + ", ".join(f"{q:g}" for q in QUANTILES)
        + " of log tau. Reference: plain NUTS on the non-centred model, "
        f"{args.reference_samples} draws. Guides: `fit_guide` ({args.svi_steps} steps"
        f"{particles}); chains: NeuTra NUTS (plain NUTS for its row) {args.num_warmup} + "
        f"{args.num_samples}. Warped: the median norm, in the guide's base space, of the "
        "reference draws at those quantiles (a perfect guide: about 3.2 to 4).",
        "",
        "| method | key | guide draws | warped | chain | divergences | ESS / gradient |",
        "|---|---|---|---|---|---|---|",
        f"| reference (non-centred NUTS) | 0 | - | - | {fmt(np.quantile(ref_log_tau, QUANTILES))} "
        "| - | - |",
    ]
    for method in args.methods:
        label, make_guide = neutra.METHODS[method]
        for seed in args.seeds:
            k_svi, k_mcmc, k_draw = jr.split(jr.fold_in(jr.key(100), seed), 3)
            mcmc_kw = dict(
                num_warmup=args.num_warmup, num_samples=args.num_samples, progress_bar=False
            )
            if make_guide is None:  # plain NUTS on the centred model
                _, idata = nuts_mcmc(eight_schools, key=k_mcmc, **mcmc_kw)
                lines.append(chain_row(label, seed, "-", "-", idata))
                print(lines[-1], flush=True)
                continue
            guide, params, _ = fit_guide(
                eight_schools,
                guide=make_guide(eight_schools, None),
                steps=args.svi_steps,
                num_particles=args.particles,
                key=k_svi,
                progress_bar=False,
            )
            draws = guide.sample_posterior(k_draw, params, sample_shape=(20_000,))
            _, idata = neutra_nuts(eight_schools, guide, params, key=k_mcmc, **mcmc_kw)
            guide_q = fmt(np.quantile(np.log(draws["tau"]), QUANTILES))
            norms = warped_norms(guide, params, neck)
            warped = "-" if norms is None else " / ".join(f"{v:.1f}" for v in norms)
            lines.append(chain_row(label, seed, guide_q, warped, idata))
            print(lines[-1], flush=True)
    name = "neck_coverage" + (f"_particles{args.particles}" if args.particles > 1 else "")
    write_markdown(lines, args.out, name + ("_quick" if args.quick else ""))


if __name__ == "__main__":
    main()
