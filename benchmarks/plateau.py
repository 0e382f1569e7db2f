"""When SVI stops: ``fit_guide`` with its plateau rule against the full step budget.

For each target and key, ``fit_guide`` (``AutoCouplingFlow`` defaults, float64) runs with
``plateau=0.1`` (the default) and ``plateau=None`` from the same key, and the table gives
the steps each took (cool-down included), the gradients it spent (the Gaussian start's
included), the negative ELBO of the returned parameters on 4000 fresh particles (for the
funnel, whose every factor is normalised, this is the KL in nats), and the guide's
k-hat and IS ESS share on 4000 draws.

    python benchmarks/plateau.py                       # funnel, eight schools, diamonds; key 0
    python benchmarks/plateau.py --targets funnel --seeds 0,1
    python benchmarks/plateau.py --quick               # a smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import jax.random as jr
import numpyro
from numpyro.infer import Trace_ELBO

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import posteriordb  # noqa: E402
from report import write_markdown  # noqa: E402

from numpyro_coupling import fit_guide, guide_diagnostics, targets  # noqa: E402
from numpyro_coupling.demo import format_table  # noqa: E402

TARGETS = {
    "funnel": lambda: targets.funnel,
    "eight_schools_centered": lambda: _posterior("eight_schools_centered"),
    "diamonds": lambda: _posterior("diamonds"),
}

COLUMNS = [
    ("target", "target", "{}"),
    ("seed", "key", "{:d}"),
    ("plateau", "plateau", "{}"),
    ("steps", "steps", "{:d}"),
    ("grads", "gradients", "{:d}"),
    ("neg_elbo", "-ELBO", "{:.4f}"),
    ("k_hat", "k_hat", "{:.2f}"),
    ("is_ess", "IS ESS", "{:.2f}"),
    ("seconds", "s", "{:.0f}"),
]


def _posterior(name):
    entry = posteriordb.POSTERIORS[name]
    return partial(entry.model, **entry.data())


def run_row(target: str, seed: int, plateau, steps: int, draws: int) -> dict:
    model = TARGETS[target]()
    start = time.perf_counter()
    guide, params, losses, state = fit_guide(
        model,
        key=jr.key(seed),
        steps=steps,
        plateau=plateau,
        progress_bar=False,
        return_state=True,
    )
    seconds = time.perf_counter() - start
    neg_elbo = float(Trace_ELBO(num_particles=draws).loss(jr.key(99), params, model, guide))
    diag = guide_diagnostics(guide, params, jr.key(5), draws)
    return {
        "target": target,
        "seed": seed,
        "plateau": "none" if plateau is None else f"{plateau:g}",
        "steps": len(losses),
        "grads": state.n_grads,
        "neg_elbo": neg_elbo,
        "k_hat": float(diag.k_hat),
        "is_ess": float(diag.ess) / draws,
        "seconds": seconds,
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    args = parser.parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {list(TARGETS)}")
    if args.quick:
        args.steps, args.draws = 1000, 200
    numpyro.enable_x64()
    rows = []
    for target in names:
        for seed in (int(s) for s in args.seeds.split(",") if s):
            for plateau in (0.1, None):
                rows.append(run_row(target, seed, plateau, args.steps, args.draws))
                print(rows[-1], flush=True)
    command = f"python benchmarks/plateau.py {shlex.join(argv)}".strip()
    text = [
        "# When SVI stops: the plateau rule against the full budget",
        "",
        f"`{command}`: `fit_guide` with `AutoCouplingFlow` defaults, float64, "
        f"{args.steps} steps at most; -ELBO, k_hat and IS ESS on {args.draws} draws.",
        "",
        format_table(
            [{k: fmt.format(r[k]) for k, _, fmt in COLUMNS} for r in rows],
            [(k, title, "{}") for k, title, _ in COLUMNS],
        ),
    ]
    write_markdown(text, HERE / "results", "plateau_quick" if args.quick else "plateau")


if __name__ == "__main__":
    main()
