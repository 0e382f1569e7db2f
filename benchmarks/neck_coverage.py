"""How far into eight schools' funnel neck each NeuTra chain reaches.

Divergences alone do not tell a sampler that explores the neck from one that never gets
there. This script draws a long reference from the *non-centred* eight-schools model (plain
NUTS is exact and mixes well there) and compares its lower quantiles of ``log tau`` with
those of (a) 20,000 draws of each fitted guide and (b) each guide's NeuTra chain, along
with the chain's divergences and ESS per gradient. Guides, SVI and NUTS settings are those
of ``neutra.py`` (``fit_guide``: cosine decay, clip 10, 10,000 steps; NUTS 1000 + 1000).

    python benchmarks/neck_coverage.py                 # nuts, ours-affine, iaf32, bnaf; key 0
    python benchmarks/neck_coverage.py --seeds 0 1 --methods ours-affine
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

from numpyro_coupling.infer import (  # noqa: E402
    fit_guide,
    neutra_nuts,
    nuts_mcmc,
    sampling_efficiency,
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


def reference_log_tau(n, key):
    mcmc = MCMC(NUTS(non_centred), num_warmup=2000, num_samples=n, progress_bar=False)
    mcmc.run(key)
    return np.log(np.asarray(mcmc.get_samples()["tau"]))


def fmt(q):
    return " / ".join(f"{v:.2f}" for v in q)


def chain_row(label, seed, guide_quantiles, idata):
    eff = sampling_efficiency(idata)
    chain = np.log(idata.posterior["tau"].values[0])
    return (
        f"| {label} | {seed} | {guide_quantiles} | {fmt(np.quantile(chain, QUANTILES))} | "
        f"{eff['divergences']} | {eff['ess_per_grad']:.4f} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["nuts", "ours-affine", "iaf32", "bnaf"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--svi-steps", type=int, default=10_000)
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

    ref = reference_log_tau(args.reference_samples, jr.key(0))
    lines = [
        "Eight schools (centred): lower quantiles "
        + ", ".join(f"{q:g}" for q in QUANTILES)
        + " of log tau. Reference: plain NUTS on the non-centred model, "
        f"{args.reference_samples} draws. Guides: `fit_guide` ({args.svi_steps} steps); "
        f"chains: NeuTra NUTS (plain NUTS for its row) {args.num_warmup} + {args.num_samples}.",
        "",
        "| method | key | guide draws | chain | divergences | ESS / gradient |",
        "|---|---|---|---|---|---|",
        f"| reference (non-centred NUTS) | 0 | - | {fmt(np.quantile(ref, QUANTILES))} | - | - |",
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
                lines.append(chain_row(label, seed, "-", idata))
                print(lines[-1], flush=True)
                continue
            guide, params, _ = fit_guide(
                eight_schools,
                guide=make_guide(eight_schools, None),
                svi_steps=args.svi_steps,
                key=k_svi,
                progress_bar=False,
            )
            draws = guide.sample_posterior(k_draw, params, sample_shape=(20_000,))
            _, idata = neutra_nuts(eight_schools, guide, params, key=k_mcmc, **mcmc_kw)
            guide_q = fmt(np.quantile(np.log(draws["tau"]), QUANTILES))
            lines.append(chain_row(label, seed, guide_q, idata))
            print(lines[-1], flush=True)
    write_markdown(lines, args.out, "neck_coverage_quick" if args.quick else "neck_coverage")


if __name__ == "__main__":
    main()
