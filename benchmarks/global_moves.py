"""Global moves benchmark: plain NUTS, NeuTra, and NeuTra mixed with moves from the guide.

Protocol (one process, keys ``--seeds``, the package's default number of chains, each of
``--num-warmup`` + ``--num-samples`` transitions, per method):

* multimodal targets: the guide is fitted once per target and key (``fit_guide``,
  tempered) and shared by the two NeuTra rows, which also share their MCMC key;
  ``neutra_nuts`` runs it without moves and with ``global_moves=True`` (the rate adapted
  in warm-up);
* unimodal targets: ``neutra_mcmc`` at its defaults (parameterisation chosen, guide fitted
  with its plateau rule), once without moves and once with ``global_moves=True``, from the
  same key, so that both rows run on the same guide;
* plain NUTS runs on the model itself.

Every gradient and log-density evaluation is counted: the parameterisation choice's, the
SVI fit's (steps times particles, and the Gaussian fit's), the guide diagnostics' 2000
draws, NUTS's leapfrog steps in warm-up and sampling, and one per global move
(``num_steps`` of a :class:`~numpyro_coupling.GlobalMoves` transition includes it).
Reported per row:

* min ESS: the minimum bulk ESS over every unconstrained latent coordinate;
* ESS/grad (sampling): min ESS over the gradients after warm-up; ESS/grad (all): over
  every evaluation above;
* multimodal targets: each mode's share of the draws and mode switches per 1000 draws;
* the moves' acceptance rate and the rate the chain ran at.

Targets: the dual moon; a 10-D mixture of four unit Gaussians at ``(±5, ±5, 0, ...)`` with
weights 0.4/0.3/0.2/0.1; the 10-D funnel and the centred eight schools (unimodal).
flowMC, the peer whose proposals this mirrors, is imported where installed; its row is
marked missing otherwise.

Run ``python benchmarks/global_moves.py`` (``--targets``, ``--seeds 0,1,2``, ``--quick``
for a smoke test).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints

from numpyro_coupling import (
    GUIDE_DRAWS,
    NUM_CHAINS,
    AutoCouplingFlow,
    fit_guide,
    neutra_mcmc,
    neutra_nuts,
    nuts_mcmc,
    sampling_efficiency,
)
from numpyro_coupling.demo import format_table
from numpyro_coupling.targets import dual_moon, eight_schools, funnel

RESULTS = Path(__file__).parent / "results" / "global_moves.md"

MIXTURE_WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
MIXTURE_MEANS = np.zeros((4, 10))
MIXTURE_MEANS[:, :2] = [[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]]


def mixture10():
    """Four unit Gaussians in 10-D, 10 standard deviations apart, weights 0.4/0.3/0.2/0.1."""
    x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (10,)))
    log_w = jnp.log(jnp.asarray(MIXTURE_WEIGHTS))
    sq = jnp.sum((x - jnp.asarray(MIXTURE_MEANS)) ** 2, axis=-1)
    numpyro.factor("mixture", logsumexp(log_w - 0.5 * sq))


def _dual_moon_modes(x):
    return (x[..., 0] > 0).astype(int)  # 0: left, 1: right


def _mixture_modes(x):
    d = ((x[..., None, :] - MIXTURE_MEANS) ** 2).sum(-1)
    return d.argmin(-1)


# name -> (model, guide options, fit options, mode labeller, exact mode weights); the
# unimodal targets run neutra_mcmc's defaults (their options are for --quick only).
TARGETS = {
    "dualmoon": (
        dual_moon,
        {"transformer": "loc_scale_spline", "precondition": None},
        {"steps": 4000, "temper": (0.1, 0.3, 0.6)},
        _dual_moon_modes,
        np.array([0.5, 0.5]),
    ),
    "mixture10": (
        mixture10,
        {"transformer": "loc_scale_spline", "precondition": None},
        {"steps": 6000, "temper": (0.05, 0.1, 0.3, 0.6)},
        _mixture_modes,
        MIXTURE_WEIGHTS,
    ),
    "funnel": (funnel, {}, {}, None, None),
    "eightschools": (eight_schools, {}, {}, None, None),
}


def _mode_stats(idata, labeller, weights):
    modes = labeller(np.asarray(idata.posterior["x"].values))  # (chain, draw)
    shares = np.bincount(modes.ravel(), minlength=len(weights)) / modes.size
    switches = np.sum(modes[:, 1:] != modes[:, :-1]) * 1000 / modes.size
    return {
        "shares": "/".join(f"{s:.3f}" for s in shares),
        "max_share_error": float(np.max(np.abs(shares - weights))),
        "switches_per_1000": float(switches),
    }


def _row(target, key, method, idata, labeller, weights):
    eff = sampling_efficiency(idata)
    # Everything: the choice, SVI, warm-up and sampling, and the guide diagnostics' draws.
    guide = "guide_k_hat" in idata.attrs
    total = eff["total_grads"] + (GUIDE_DRAWS if guide else 0)
    row = {
        "target": target,
        "key": key,
        "method": method,
        "min_ess": eff["min_ess"],
        "n_grads": eff["n_grads"],
        "ess_per_grad": eff["ess_per_grad"],
        "total": total,
        "ess_per_total": eff["min_ess"] / total,
        "divergences": eff["divergences"],
        "k_hat": idata.attrs.get("guide_k_hat", np.nan),
        "accept": idata.attrs.get("global_acceptance_rate", np.nan),
        "rate": idata.attrs.get("global_rate", np.nan),
        "seconds": eff["seconds"],
    }
    if labeller is not None:
        row |= _mode_stats(idata, labeller, weights)
    return row


def run_target(name, key, args):
    model, guide_kw, fit_kw, labeller, weights = TARGETS[name]
    guide_kw, fit_kw = dict(guide_kw), dict(fit_kw)
    if args.quick:
        guide_kw |= {"n_layers": 2, "nn_width": 8}
        fit_kw["steps"] = 100
    if args.svi_steps:
        fit_kw["steps"] = args.svi_steps
    common = {
        "num_warmup": args.num_warmup,
        "num_samples": args.num_samples,
        "progress_bar": False,
    }
    rows = []
    _, idata = nuts_mcmc(model, key=jr.fold_in(jr.key(key), 1), **common)
    rows.append(_row(name, key, "NUTS", idata, labeller, weights))
    methods = (("NeuTra", None), ("NeuTra + global moves", True))
    if labeller is None:
        fit_kwargs = {"steps": fit_kw["steps"]} if "steps" in fit_kw else None
        guide = guide_kw or None
        for method, moves in methods:
            _, idata = neutra_mcmc(
                model, key=jr.key(key), global_moves=moves, guide=guide, fit_kwargs=fit_kwargs,
                **common,
            )  # fmt: skip
            rows.append(_row(name, key, method, idata, labeller, weights))
        return rows
    start = time.perf_counter()
    guide, params, losses, state = fit_guide(
        model,
        guide=AutoCouplingFlow(model, **guide_kw),
        key=jr.key(key),
        progress_bar=False,
        return_state=True,
        **fit_kw,
    )
    svi_seconds = time.perf_counter() - start
    mcmc_key = jr.fold_in(jr.key(key), 2)
    for method, moves in methods:
        _, idata = neutra_nuts(
            model, guide, params, key=mcmc_key, global_moves=moves, losses=losses, **common
        )
        idata.attrs["svi_grads"] = state.n_grads
        row = _row(name, key, method, idata, labeller, weights)
        rows.append(row | {"svi_seconds": svi_seconds})
    return rows


COLUMNS = [
    ("target", "target", "{}"),
    ("key", "key", "{}"),
    ("method", "method", "{}"),
    ("k_hat", "guide k-hat", "{:.2f}"),
    ("min_ess", "min ESS", "{:.0f}"),
    ("n_grads", "gradients (sampling)", "{:d}"),
    ("ess_per_grad", "ESS/grad (sampling)", "{:.4f}"),
    ("total", "evaluations (all)", "{:d}"),
    ("ess_per_total", "ESS/grad (all)", "{:.4f}"),
    ("divergences", "divergences", "{:d}"),
    ("shares", "mode shares", "{}"),
    ("max_share_error", "max share error", "{:.3f}"),
    ("switches_per_1000", "switches / 1000", "{:.0f}"),
    ("accept", "move acceptance", "{:.2f}"),
    ("rate", "move rate", "{:.2f}"),
    ("seconds", "MCMC s", "{:.1f}"),
]


def unimodal_loss(rows) -> list[dict]:
    """Per unimodal target and key: ESS per gradient with moves over without."""
    out = []
    for r in rows:
        if r["method"] != "NeuTra + global moves" or "shares" in r:
            continue
        base = next(
            b
            for b in rows
            if b["target"] == r["target"] and b["key"] == r["key"] and b["method"] == "NeuTra"
        )
        out.append(
            {
                "target": r["target"],
                "key": r["key"],
                "sampling": r["ess_per_grad"] / base["ess_per_grad"],
                "all": r["ess_per_total"] / base["ess_per_total"],
            }
        )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated keys")
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--svi-steps", type=int, default=None, help="override every target's")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.num_warmup, args.num_samples = 100, 100
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows = []
    for name in args.targets.split(","):
        for key in seeds:
            rows += run_target(name, key, args)
            print(format_table(rows[-3:], COLUMNS), flush=True)
            # Every run compiles new programs; a long run otherwise exhausts the kernel's
            # memory mappings (LLVM: "Cannot allocate memory", then a crash).
            jax.clear_caches()
    flowmc = importlib.util.find_spec("flowMC") is not None
    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/global_moves.py " + shlex.join(given)
    lines = [
        "# Global moves: NUTS, NeuTra, NeuTra + independence moves from the guide",
        "",
        f"`{command.strip()}`; {NUM_CHAINS} chains of {args.num_warmup} warm-up + "
        f"{args.num_samples} draws per method.",
        "",
        format_table(rows, COLUMNS),
        "",
    ]
    loss = unimodal_loss(rows)
    if loss:
        lines += [
            "ESS per gradient with moves over without (unimodal targets):",
            "",
            format_table(
                loss,
                [
                    ("target", "target", "{}"),
                    ("key", "key", "{}"),
                    ("sampling", "sampling", "{:.2f}"),
                    ("all", "all", "{:.2f}"),
                ],
            ),
            "",
        ]
    if not flowmc:
        lines.append("flowMC: not installed here (and no network to install it): no row.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
