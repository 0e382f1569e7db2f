"""NeuTra benchmark over several keys: the spread of each guide's numbers.

One chain and one key per row make ESS per gradient and divergences noisy (two NUTS runs
on fits whose SVI losses agree to three decimals gave ESS per gradient 0.074 and 0.011).
This script runs ``neutra.py`` once per extra key (``--seed``) into
``results/neutra_seeds/``, then summarises those runs together with the main run
(``results/neutra.json``, key 0) as median [min, max] per target, method, Adam
schedule and NUTS target acceptance.

Run ``python benchmarks/neutra_seeds.py --seeds 1,2 --targets funnel,eightschools
--methods iaf,iaf32,bnaf,ours-affine``; runs already on disk are reused unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import neutra  # noqa: E402

SEED_DIR = HERE / "results" / "neutra_seeds"
OUT = HERE / "results" / "neutra_seeds.md"


def run_seed(seed, args):
    out = SEED_DIR / f"seed{seed}.md"
    if out.with_suffix(".json").exists() and not args.fresh:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    # Merged into the key's file: its rows of other settings (tempered, other NUTS
    # acceptance) stay.
    neutra.main(
        [
            "--seed",
            str(seed),
            "--targets",
            args.targets,
            "--methods",
            args.methods,
            "--schedule",
            args.schedule,
            "--scaling-dims",
            "",
            "--out",
            str(out),
        ]
    )


def _rows(path, seed):
    rows = json.loads(path.read_text())["rows"].values()
    return [dict(r, seed=seed) for r in rows]


def collect(main_json=HERE / "results" / "neutra.json"):
    rows = _rows(main_json, 0) if main_json.exists() else []
    for path in sorted(SEED_DIR.glob("seed*.json")):
        rows += _rows(path, int(path.stem.removeprefix("seed")))
    return rows


def _spread(values, fmt):
    v = np.asarray([x for x in values if x is not None], float)
    if v.size == 0:
        return "-"
    return f"{fmt.format(np.median(v))} [{fmt.format(v.min())}, {fmt.format(v.max())}]"


def summarise(rows, targets, methods):
    labels = {neutra.METHODS[m][0]: m for m in methods}
    groups = {}
    for r in rows:
        if r["target"] in targets and r["method"] in labels:
            group = (r["target"], r["method"], r.get("schedule", "-"), r["target_accept"])
            groups.setdefault(group, []).append(r)
    lines = [
        "| target | method | Adam step | NUTS accept | keys | SVI loss | ESS/grad | divergences |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(neutra.METHODS)}
    for (target, method, schedule, accept), rs in sorted(
        groups.items(),
        key=lambda kv: (targets.index(kv[0][0]), order[labels[kv[0][1]]], kv[0][2:]),
    ):
        keys = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
        lines.append(
            f"| {target} | {method} | {schedule} | {accept:g} | {keys} | "
            f"{_spread([r.get('svi_loss') for r in rs], '{:.3f}')} | "
            f"{_spread([r.get('ess_per_grad') for r in rs], '{:.4f}')} | "
            f"{_spread([r.get('divergences') for r in rs], '{:.0f}')} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2", help="extra keys to run ('' for none)")
    parser.add_argument("--targets", default="funnel,eightschools")
    parser.add_argument("--methods", default="iaf,iaf32,bnaf,ours-affine")
    parser.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    parser.add_argument("--fresh", action="store_true", help="rerun keys already on disk")
    args = parser.parse_args(argv)
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        run_seed(seed, args)
    targets = [t for t in args.targets.split(",") if t]
    table = summarise(collect(), targets, [m for m in args.methods.split(",") if m])
    text = (
        "# NeuTra benchmark over several keys\n\n"
        "Median [min, max] over keys (key 0: `results/neutra.md`; the others: "
        "`results/neutra_seeds/`), same protocol as `neutra.py`.\n\n" + table + "\n"
    )
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
