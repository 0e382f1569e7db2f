"""The best ESS per gradient any NeuTra guide can reach on the 10-D funnel.

A perfect guide maps the funnel to a standard normal: the map ``v = 3 z_0``,
``x_i = exp(v / 2) z_i`` is the exact one. NUTS on ``z`` with that map is NeuTra with a
perfect flow (KL = 0), so its ESS per gradient, measured exactly as ``neutra.py`` measures
it (bulk ESS of the model's unconstrained coordinates ``v, x``, minimum over coordinates,
per leapfrog step after warmup; NUTS 1000 + 1000, one chain), bounds what any guide can
reach. ESS is not invariant under the map, so the ESS of ``z`` itself (higher) is shown
too.

    python benchmarks/funnel_ceiling.py              # keys 0-4
    python benchmarks/funnel_ceiling.py --quick      # smoke test
"""

from __future__ import annotations

import argparse
from pathlib import Path

import arviz as az
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from report import write_markdown


def standard_normal_latent():
    """The funnel's exact NeuTra space: a 10-D standard normal."""
    numpyro.sample("z", dist.Normal(0.0, 1.0).expand([10]).to_event(1))


def min_bulk_ess(draws):
    """Minimum bulk ESS over the columns of ``draws`` (one chain, ``(n, d)``)."""
    ess = az.ess(az.convert_to_dataset({"a": np.asarray(draws)[None]}))
    return float(np.min(ess["a"].values))


def run(key, num_warmup, num_samples):
    mcmc = MCMC(
        NUTS(standard_normal_latent),
        num_warmup=num_warmup,
        num_samples=num_samples,
        progress_bar=False,
    )
    mcmc.run(key, extra_fields=("num_steps",))
    z = mcmc.get_samples()["z"]
    v = 3.0 * z[:, 0]
    x = jnp.exp(v / 2)[:, None] * z[:, 1:]
    grads = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    model_ess = min_bulk_ess(jnp.concatenate([v[:, None], x], axis=1))
    return model_ess / grads, min_bulk_ess(z) / grads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.keys, args.num_warmup, args.num_samples = [0], 100, 100
    rows = [run(jr.key(k), args.num_warmup, args.num_samples) for k in args.keys]
    model, latent = np.array(rows).T
    lines = [
        "10-D funnel, NUTS on the exact NeuTra space (a perfect guide), "
        f"{args.num_warmup} + {args.num_samples}, one chain per key.",
        "",
        "| ESS per gradient | " + " | ".join(f"key {k}" for k in args.keys) + " | median |",
        "|---|" + "---|" * (len(args.keys) + 1),
        "| model coordinates v, x (as `neutra.py`) | "
        + " | ".join(f"{r:.4f}" for r in model)
        + f" | {np.median(model):.4f} |",
        "| latent z | " + " | ".join(f"{r:.4f}" for r in latent) + f" | {np.median(latent):.4f} |",
    ]
    write_markdown(lines, args.out, "funnel_ceiling_quick" if args.quick else "funnel_ceiling")


if __name__ == "__main__":
    main()
