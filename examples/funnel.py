"""NeuTra on Neal's funnel: plain NUTS against NUTS warped by an ``AutoCouplingFlow``.

The funnel (``v ~ N(0, 3)``, ``x | v ~ N(0, exp(v/2))``) is the textbook geometry that
defeats a single NUTS step size: the neck needs tiny steps, the mouth large ones. A
coupling-flow guide fitted by SVI maps it to (nearly) ``N(0, I)``, where NUTS is easy.
The funnel is normalised, so the SVI loss is exactly ``KL(q || p)`` in nats.

Run ``python examples/funnel.py --out figures`` (``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from numpyro_coupling.demo import (
    add_budget_arguments,
    budgets,
    compare_samplers,
    format_table,
    plot_comparison,
    use_compilation_cache,
)
from numpyro_coupling.pair_plot import plot_pairs
from numpyro_coupling.targets import funnel, funnel_draws


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=10, help="funnel dimension (default 10)")
    add_budget_arguments(parser, svi_steps=10_000, num_warmup=1000, num_samples=1000)
    args = parser.parse_args(argv)
    use_compilation_cache(args)
    kw = budgets(args)
    result = compare_samplers(funnel, dim=args.dim, **kw)
    ref = funnel_draws(3000, args.dim)
    print(f"\nNeal's funnel ({args.dim}-D); SVI loss = KL(q || p) in nats\n")
    print(format_table(result["rows"]))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_comparison(
        result,
        coords=[("x", 0), ("v", None)],
        title=f"Neal's funnel ({args.dim}-D): NUTS vs NeuTra + AutoCouplingFlow",
        reference=np.stack([ref["x"][:, 0], ref["v"]], -1),
        limits=((-20, 20), (-10, 10)),
    )
    fig.savefig(out / "funnel_neutra.png", dpi=120)
    draws = {
        name: {
            k: idata.posterior[k].values.reshape(-1, *idata.posterior[k].shape[2:])
            for k in ("v", "x")
        }
        for name, idata in (("NUTS", result["nuts"][1]), ("NeuTra", result["neutra"][1]))
    }
    axes = plot_pairs(draws["NUTS"], draws["NeuTra"], max_coords=3, labels=("NUTS", "NeuTra"))
    axes[0, 0].figure.savefig(out / "funnel_pairs.png", dpi=120)
    print(f"\nwrote {out / 'funnel_neutra.png'} and {out / 'funnel_pairs.png'}")


if __name__ == "__main__":
    main()
