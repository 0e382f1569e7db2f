"""How many chains NUTS should run by default: wall time, ESS and R-hat of 1, 2 and 4 chains.

On each target, NeuTra HMC (one guide fitted once, :func:`~numpyro_coupling.neutra_nuts`)
and plain NUTS (:func:`~numpyro_coupling.nuts_mcmc`) run with 1, 2 and 4 chains,
``chain_method="vectorized"`` (one CPU device), at the same total number of draws
(``draws / chains`` each) and at the same draws per chain. Reported: wall time (warm-up,
compilation and sampling), the smallest bulk ESS, ESS per second, the largest R-hat and
whether ``az.summary`` warns.

Writes ``<out>/chains.md``.

Usage:
    python benchmarks/chains.py
    python benchmarks/chains.py --quick
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
import warnings
from functools import partial
from pathlib import Path

import arviz as az
import jax
import jax.random as jr
import numpy as np

from numpyro_coupling import fit_guide, neutra_nuts, nuts_mcmc, sampling_efficiency
from numpyro_coupling.targets import eight_schools, funnel

RESULTS = Path(__file__).parent / "results"
TARGETS = {"funnel10": partial(funnel, 10), "eightschools": eight_schools}


def summary_warns(idata) -> bool:
    """Whether ``az.summary`` warns (by ``warnings`` or ArviZ's logger, as for one chain)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("arviz")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            az.summary(idata)
    finally:
        logger.removeHandler(handler)
    return bool(caught) or any(r.levelno >= logging.WARNING for r in records)


def run(method, model, guide, params, chains, per_chain, args, key):
    common = dict(
        num_warmup=args.warmup,
        num_samples=per_chain,
        num_chains=chains,
        key=key,
        progress_bar=False,
        mcmc_kwargs={"chain_method": "vectorized"},
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "neutra":
            _, idata = neutra_nuts(model, guide, params, **common)
        else:
            _, idata = nuts_mcmc(model, **common)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    eff = sampling_efficiency(idata)
    return {
        "s": seconds,
        "CPU s": cpu,
        "min ESS": eff["min_ess"],
        "ESS/s": eff["min_ess"] / seconds,
        "ESS/CPU s": eff["min_ess"] / cpu,
        "max R-hat": float(idata.attrs["max_rhat"]),
        "divergences": eff["divergences"],
        "summary warns": summary_warns(idata),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="funnel10,eightschools")
    parser.add_argument("--methods", default="neutra,nuts")
    parser.add_argument("--chains", default="1,2,4")
    parser.add_argument("--draws", type=int, default=1000, help="total draws (same-total runs)")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--fit-steps", type=int, default=3000)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--plans", default="same total,same per chain")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.draws, args.warmup, args.fit_steps = 100, 100, 200
    chain_counts = [int(c) for c in args.chains.split(",")]
    rows = []
    for target in args.targets.split(","):
        model = TARGETS[target]
        for seed in (int(s) for s in args.seeds.split(",")):
            key = jr.key(seed)
            guide, params = None, None
            if "neutra" in args.methods:
                guide, params, _ = fit_guide(
                    model, steps=args.fit_steps, key=jr.fold_in(key, 1), progress_bar=False
                )
            for method in args.methods.split(","):
                for chains in chain_counts:
                    plans = {"same total": args.draws // chains, "same per chain": args.draws}
                    plans = {k: v for k, v in plans.items() if k in args.plans.split(",")}
                    for plan, per_chain in plans.items():
                        if chains == 1 and plan != next(iter(plans)):
                            continue
                        r = run(method, model, guide, params, chains, per_chain, args, key)
                        row = {
                            "target": target,
                            "seed": seed,
                            "method": method,
                            "chains": chains,
                            "draws/chain": per_chain,
                            "plan": plan if chains > 1 else "-",
                        } | r
                        rows.append(row)
                        print(row, flush=True)
    columns = list(rows[0])

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    table = "\n".join(
        ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        + ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/chains.py" + (" --quick" if args.quick else "")
    command += f" --methods {args.methods} --plans '{args.plans}'"
    header = (
        f"# Chains\n\n`{command}` (targets {args.targets}, seeds {args.seeds}): warm-up "
        f"{args.warmup} per chain, {args.draws} draws in total or per chain, "
        f"chain_method='vectorized'; NeuTra guide: AutoCouplingFlow defaults, "
        f"{args.fit_steps} SVI steps. Time: wall seconds of the whole MCMC call (compilation, "
        f"warm-up, sampling); CPU s: the process's CPU seconds over it (less sensitive to "
        f"other jobs on the machine). Machine: {platform.machine()}, {jax.device_count()} "
        f"{jax.default_backend()} device(s), jax {jax.__version__}.\n\n"
    )
    (out / "chains.md").write_text(header + table + "\n")
    print(table)
    return rows


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
