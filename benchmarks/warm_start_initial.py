"""The initial KL of a warm-started guide against a cold one, on a funnel from NUTS draws.

A pilot NUTS run (``nuts_mcmc`` defaults: warm-up and draws ``--pilot``) gives draws of the
funnel; ``AutoCouplingFlow(model, warm_start=draws)`` scores the RBIG fit of the draws and
the start without draws by their negative ELBO on ``WARM_START_DRAWS`` base draws and keeps
the lower. Reported: both scores, and the KL (the funnel is normalised, so the negative
ELBO is the KL, here on ``--particles`` draws) of the guide's initial parameters for the
warm-started guide and for cold guides (the default ``loc_scale`` and ``mixture``).

Writes ``<out>/warm_start_initial.md``.

Usage:
    python benchmarks/warm_start_initial.py
    python benchmarks/warm_start_initial.py --quick
"""

from __future__ import annotations

import argparse
import warnings
from functools import partial
from pathlib import Path

import jax.random as jr
import numpyro
from numpyro.infer import SVI, Trace_ELBO
from report import write_markdown

from numpyro_coupling import AutoCouplingFlow, nuts_mcmc
from numpyro_coupling.demo import format_table
from numpyro_coupling.targets import funnel

RESULTS = Path(__file__).parent / "results"


def initial_kl(model, guide, particles, seed):
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    params = svi.get_params(svi.init(jr.key(seed + 1)))
    elbo = Trace_ELBO(num_particles=particles)
    return float(elbo.loss(jr.key(seed + 2), params, model, guide))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--pilot", type=int, default=1000)
    parser.add_argument("--particles", type=int, default=4000)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.pilot, args.particles = 100, 200
    model = partial(funnel, args.dim)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, idata = nuts_mcmc(
                model,
                num_warmup=args.pilot,
                num_samples=args.pilot,
                num_chains=1,
                key=jr.key(seed),
                progress_bar=False,
            )
        draws = {k: idata.posterior[k].values[0] for k in idata.posterior.data_vars}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warm = AutoCouplingFlow(model, warm_start=draws)
            warm_kl = initial_kl(model, warm, args.particles, seed)
        chose_cold = any("starting cold" in str(w.message) for w in caught)
        scores = warm.warm_start_scores
        row = {
            "seed": seed,
            "RBIG start (score)": f"{scores['warm']:.2f}",
            "cold mixture start (score)": f"{scores['cold']:.2f}",
            "warm_start guide KL": f"{warm_kl:.2f}",
            "started": "cold" if chose_cold else "warm",
        }
        for name in ("loc_scale", "mixture"):
            guide = AutoCouplingFlow(model, transformer=name)
            row[f"cold {name} KL"] = f"{initial_kl(model, guide, args.particles, seed):.2f}"
        rows.append(row)
        print(row, flush=True)
    table = format_table(rows, [(c, c, "{}") for c in rows[0]])
    command = "python benchmarks/warm_start_initial.py" + (" --quick" if args.quick else "")
    header = (
        f"# Initial KL of a warm start\n\n`{command}` ({args.dim}-D funnel, pilot NUTS "
        f"{args.pilot} + {args.pilot}, seeds {args.seeds}). Scores: negative ELBO on 256 base "
        f"draws (what the guide compares); KL: on {args.particles} draws, nats.\n\n"
    )
    write_markdown([header + table], args.out, "warm_start_initial")


if __name__ == "__main__":
    main()
