"""NeuTra on the dual moon: can one NUTS chain visit both modes of a ring?

The target (the potential of NumPyro's NeuTra example) is a ring of radius 2 with two
modes at ``x0 = ±2``, joined by thin arcs. Plain NUTS tends to stay in the mode it starts
in. A reverse-KL fit settles on one mode too, unless it is tempered: the guide is first
fitted to the flattened targets ``p^0.1``, ``p^0.3``, ``p^0.6`` (``--temper``), spreads over
both modes, and keeps them when the target sharpens; NUTS on the warped space then hops
between them, now and then. With global moves (``global_moves=True``) most transitions
are independence proposals from the guide, accepted with the exact Metropolis-Hastings
ratio, and the chain crosses between the modes hundreds of times. The density is
unnormalised: the SVI loss is ``KL(q || p) - log Z``.

Run ``python examples/dual_moon.py --out figures`` (``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from numpyro_coupling import neutra_nuts, sampling_efficiency
from numpyro_coupling.demo import (
    add_budget_arguments,
    budgets,
    compare_samplers,
    format_table,
    plot_comparison,
    use_compilation_cache,
)
from numpyro_coupling.targets import dual_moon, dual_moon_log_density


def mode_fraction(idata) -> float:
    """Fraction of draws in the right-hand mode (``x0 > 0``); 0.5 for a perfect sampler."""
    return float((idata.posterior["x"].values[..., 0] > 0).mean())


def mode_switches(idata) -> int:
    """How many times the first chain changes mode (the sign of ``x0``)."""
    right = idata.posterior["x"].values[0, :, 0] > 0
    return int((right[1:] != right[:-1]).sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_arguments(
        parser,
        svi_steps=10_000,
        num_warmup=1000,
        num_samples=1000,
        transformer="loc_scale_spline",
        temper=(0.1, 0.3, 0.6),
    )
    args = parser.parse_args(argv)
    use_compilation_cache(args)
    kw = budgets(args)
    result = compare_samplers(dual_moon, **kw)
    # The same guide, with independence moves proposed from it between NUTS steps.
    moves = neutra_nuts(
        dual_moon,
        result["guide"],
        result["params"],
        num_warmup=kw["num_warmup"],
        num_samples=kw["num_samples"],
        key=kw["key"],
        progress_bar=kw["progress_bar"],
        nuts_kwargs=kw["nuts_kwargs"],
        global_moves=True,
    )
    rows = result["rows"]
    rows.append(
        {"method": "NeuTra + global moves", "svi_loss": rows[1]["svi_loss"]}
        | sampling_efficiency(moves[1])
    )
    for row, (_, idata) in zip(rows, (result["nuts"], result["neutra"], moves)):
        row["right_mode"] = mode_fraction(idata)
        row["switches"] = mode_switches(idata)
    print("\nDual moon; SVI loss = KL(q || p) - log Z\n")
    columns = [
        ("method", "method", "{}"),
        ("svi_loss", "SVI loss", "{:.3f}"),
        ("min_ess", "min ESS", "{:.0f}"),
        ("ess_per_grad", "ESS/grad", "{:.4f}"),
        ("divergences", "divergences", "{:d}"),
        ("right_mode", "draws with x0 > 0", "{:.2f}"),
        ("switches", "mode switches", "{:d}"),
        ("seconds", "MCMC s", "{:.1f}"),
    ]
    print(format_table(rows, columns))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_comparison(
        result,
        coords=[("x", 0), ("x", 1)],
        title="Dual moon: NUTS vs NeuTra + AutoCouplingFlow",
        limits=((-3.2, 3.2), (-3.2, 3.2)),
        log_density=dual_moon_log_density,
    )
    fig.axes[0].set_aspect("equal")
    fig.savefig(out / "dual_moon_neutra.png", dpi=120)

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
    runs = (("NUTS", result["nuts"]), ("NeuTra", result["neutra"]), ("+ global moves", moves))
    for name, (_, idata) in runs:
        ax.plot(np.asarray(idata.posterior["x"].values[0, :, 0]), lw=0.7, label=name)
    ax.set(xlabel="draw", ylabel="x0", title="trace of x0: mode hopping")
    ax.legend(frameon=False)
    fig.savefig(out / "dual_moon_trace.png", dpi=120)
    print(f"\nwrote {out / 'dual_moon_neutra.png'} and {out / 'dual_moon_trace.png'}")


if __name__ == "__main__":
    main()
