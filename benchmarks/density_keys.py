"""This package's density recipes over several PRNG keys: how much of a test LL is the key.

``density.py`` trains each flow once (initialisation key 0, minibatch key 1). This script
retrains our spline flow with keys ``(2k, 2k + 1)`` for each ``k`` in ``--keys``, under each
recipe of ``density.py``, and writes the test log-likelihood per key and its median
(``results/density_keys_<data>.md``). No peer runs here: it measures the spread, not a ratio.

    python benchmarks/density_keys.py                     # moons, keys 0-4, both recipes
    python benchmarks/density_keys.py --data spiral --keys 0 1 2
    python benchmarks/density_keys.py --quick             # smoke test
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
from density import DATASETS, ORACLE, RECIPES, load, mean_log_prob, ours
from report import write_markdown

from numpyro_coupling import fit


def test_ll(data_name, recipe_name, k, steps):
    train, test = load(data_name)
    recipe = RECIPES[recipe_name]
    flow = ours(jr.key(2 * k), "spline", recipe["n_layers"])
    fitted, _ = fit(
        flow,
        train,
        key=jr.key(2 * k + 1),
        steps=steps,
        batch_size=512,
        learning_rate=3e-3,
        clip_norm=1.0,
        weight_decay=recipe["weight_decay"],
        average=recipe["average"],
        progress_bar=False,
    )
    return mean_log_prob(fitted, test)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["moons"], choices=DATASETS)
    parser.add_argument("--keys", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.keys, args.data, args.recipes = 40, [0], ["moons"], ["baseline"]
    else:
        jax.config.update("jax_enable_x64", True)
    lines = [
        f"Our spline flow, {args.steps} steps (recipes as in `density.py`); test LL per key "
        "(initialisation key 2k, minibatch key 2k + 1).",
        "",
        "| data | recipe | " + " | ".join(f"key {k}" for k in args.keys) + " | median | "
        "median - oracle |",
        "|---|---|" + "---|" * (len(args.keys) + 2),
    ]
    for data_name in args.data:
        for recipe_name in args.recipes:
            lls = [test_ll(data_name, recipe_name, k, args.steps) for k in args.keys]
            print(data_name, recipe_name, np.round(lls, 4), flush=True)
            median = float(np.median(lls))
            lines.append(
                f"| {data_name} | {recipe_name} | "
                + " | ".join(f"{v:.4f}" for v in lls)
                + f" | {median:.4f} | {median - ORACLE[data_name]:+.4f} |"
            )
    name = "quick" if args.quick else "_".join(args.data)
    write_markdown(lines, args.out, f"density_keys_{name}")


if __name__ == "__main__":
    main()
