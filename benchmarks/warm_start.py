"""Warm versus cold start of the AutoCouplingFlow guide: how fast SVI reaches a given ELBO.

For each target, a short plain-NUTS pilot run provides draws; the warm guide's flow is
:func:`~numpyro_coupling.rbig_coupling.fit_rbig_coupling` of those draws (mixture-CDF couplings,
zero final kernels), the cold guide is the same architecture started at
``N(init_loc, 1)``. Both are trained by :func:`~numpyro_coupling.svi.fit_guide` with the
same key, steps and learning rate. Reported per guide: the negative ELBO at step 0 and at
the end (many-particle estimates), and the number of steps until the trailing mean of the
training loss first reaches each of several levels (the cold run's final loss plus a
margin). The pilot's cost is reported too: it is the price of the warm start.

Writes ``<out>/warm_start.md`` and ``<out>/warm_start.png``.

Usage:
    python benchmarks/warm_start.py
    python benchmarks/warm_start.py --quick
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax
import jax.random as jr
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpyro
from numpyro.infer import SVI, Trace_ELBO

from numpyro_coupling import AutoCouplingFlow, fit_guide, nuts_mcmc
from numpyro_coupling.targets import TARGETS

RESULTS = Path(__file__).parent / "results"
MARGINS = (2.0, 1.0, 0.5, 0.25)  # nats above the cold run's final loss


def trailing_mean(losses, window):
    losses = np.asarray(losses, float)
    csum = np.cumsum(np.insert(losses, 0, 0.0))
    idx = np.arange(window, len(losses) + 1)
    return idx, (csum[idx] - csum[idx - window]) / window


def steps_to(idx, smooth, level):
    below = np.flatnonzero(smooth <= level)
    return int(idx[below[0]]) if below.size else None


def initial_loss(model, guide, key, particles):
    """Negative ELBO of the guide's initial parameters (what SVI starts from)."""
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    params = svi.get_params(svi.init(key))
    return float(Trace_ELBO(num_particles=particles).loss(key, params, model, guide))


def run_target(target, args, key):
    model = TARGETS[target]
    k_pilot, k_svi, k_loss = jr.split(key, 3)
    start = time.perf_counter()
    _, idata = nuts_mcmc(
        model, num_warmup=args.pilot, num_samples=args.pilot, key=k_pilot, progress_bar=False
    )
    pilot_seconds = time.perf_counter() - start
    draws = {k: idata.posterior[k].values[0] for k in idata.posterior.data_vars}
    arch = {"transformer": "mixture", "n_layers": args.layers, "nn_width": args.width}
    guides = {
        "cold": lambda: AutoCouplingFlow(model, **arch),
        "warm (RBIG)": lambda: AutoCouplingFlow(model, warm_start=draws, **arch),
    }
    runs = {}
    for name, make in guides.items():
        start = time.perf_counter()
        guide = make()
        loss0 = initial_loss(model, guide, k_svi, args.loss_particles)
        guide, params, losses = fit_guide(
            model,
            guide=guide,
            steps=args.steps,
            learning_rate=args.learning_rate,
            key=k_svi,
            progress_bar=False,
        )
        seconds = time.perf_counter() - start
        elbo = Trace_ELBO(num_particles=args.loss_particles)
        final = float(elbo.loss(k_loss, params, model, guide))
        runs[name] = {"losses": np.asarray(losses), "loss0": loss0, "final": final, "s": seconds}
        print(f"{target} {name}: loss {loss0:.3f} -> {final:.3f} ({seconds:.0f} s)", flush=True)
    window = max(args.steps // 50, 10)
    _, cold_smooth = trailing_mean(runs["cold"]["losses"], window)
    reference = float(cold_smooth[-1])
    rows = []
    for name, run in runs.items():
        idx, smooth = trailing_mean(run["losses"], window)
        run["curve"] = (idx, smooth)
        row = {
            "target": target,
            "guide": name,
            "pilot s": f"{pilot_seconds:.0f}" if name != "cold" else "-",
            "loss at step 0": f"{run['loss0']:.3f}",
            "final loss": f"{run['final']:.3f}",
            "SVI s": f"{run['s']:.0f}",
        }
        for m in MARGINS:
            hit = steps_to(idx, smooth, reference + m)
            row[f"steps to cold final + {m:g}"] = "never" if hit is None else str(hit)
        rows.append(row)
    return rows, runs, reference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="funnel,eightschools")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--pilot", type=int, default=500, help="pilot NUTS warmup = draws")
    parser.add_argument("--loss-particles", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.pilot, args.loss_particles = 100, 50, 500
    targets = [t for t in args.targets.split(",") if t]
    key = jr.key(args.seed)
    rows, curves = [], {}
    for i, target in enumerate(targets):
        target_rows, runs, reference = run_target(target, args, jr.fold_in(key, i))
        rows += target_rows
        curves[target] = (runs, reference)

    columns = list(rows[0])
    table = "\n".join(
        ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Warm versus cold start\n\n`python benchmarks/warm_start.py"
        f"{' --quick' if args.quick else ''}`: mixture-CDF guide, {args.layers} couplings, "
        f"width {args.width}; SVI {args.steps} steps, Adam {args.learning_rate}; pilot NUTS "
        f"{args.pilot} + {args.pilot}. Machine: {platform.machine()}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}.\n\n"
        "Steps: first step at which the trailing mean of the training loss reaches the cold "
        "run's final (smoothed) loss plus the margin.\n\n"
    )
    (out / "warm_start.md").write_text(header + table + "\n")
    print(table)

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (target, (runs, reference)) in zip(axes[0], curves.items()):
        for (name, run), color in zip(runs.items(), ("tab:blue", "tab:orange")):
            idx, smooth = run["curve"]
            ax.plot(idx, smooth, color=color, label=name)
        ax.axhline(reference, color="0.5", ls=":", lw=1, label="cold final")
        lo = min(float(np.min(r["curve"][1])) for r in runs.values())
        ax.set(
            title=target,
            xlabel="SVI step",
            ylabel="negative ELBO (trailing mean)",
            ylim=(lo - 0.5, reference + 3 * max(MARGINS)),
        )
        ax.legend()
    fig.suptitle("RBIG warm start versus cold start of the mixture-CDF guide")
    fig.tight_layout()
    fig.savefig(out / "warm_start.png", dpi=110)
    print(f"wrote {out / 'warm_start.md'} and {out / 'warm_start.png'}")


if __name__ == "__main__":
    main()
