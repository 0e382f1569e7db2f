"""Compile time: how long the training and sampling entry points take to show progress.

Each measurement runs in a fresh Python process (nothing compiled before), timed from the
call to the first progress-bar update, i.e. compilation plus the first chunk of steps:

* ``fit``: a coupling flow (``affine``, ``spline``, ``mixture``; the other options at
  their defaults) on 2-D data, first chunk of 100 steps;
* ``fit_guide``: ``AutoCouplingFlow`` (``loc_scale``, the default, ``loc_scale_spline``,
  ``mixture``) on the 10-D funnel, default 10 000 steps, first chunk of 200;
* ``neutra_mcmc``: the same guides, a short run to its end (200 SVI steps, 100 + 100 NUTS
  iterations, one chain): SVI and NUTS compilation dominate it;
* ``sample``: 10^6 draws from a 2-D coupling flow (``affine``, ``mixture``), compilation
  included.

``--code DIR`` times the package found in ``DIR`` (default: this checkout); ``--before DIR``
adds a column for another checkout of the package (e.g. an older version). ``--warm-cache``
times a rerun instead: each case first runs once to fill a fresh compilation cache
(``enable_compilation_cache``), then the timed processes load their programs from it.

Writes ``<out>/compile_time.md``.

Usage:
    python benchmarks/compile_time.py
    python benchmarks/compile_time.py --before /path/to/older/checkout
    python benchmarks/compile_time.py --quick
    python benchmarks/compile_time.py --warm-cache --cases fit_guide:loc_scale
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

CASES = [
    ("fit", "affine"),
    ("fit", "spline"),
    ("fit", "mixture"),
    ("fit_guide", "loc_scale"),
    ("fit_guide", "loc_scale_spline"),
    ("fit_guide", "mixture"),
    ("neutra_mcmc", "loc_scale"),
    ("neutra_mcmc", "loc_scale_spline"),
    ("neutra_mcmc", "mixture"),
    ("sample", "affine"),
    ("sample", "mixture"),
]


class FirstUpdate(Exception):
    """Raised by the probe bar at its first update, to end a run there."""


def probe_bars(modules, stop: bool, record: dict):
    """Make every training bar of ``modules`` note the time of its first update."""

    class Probe:
        def __init__(self, bar):
            self.bar = bar

        def __getattr__(self, name):
            return getattr(self.bar, name)

        def update(self, n):
            record.setdefault("first", time.perf_counter())
            record.setdefault("first_cpu", time.process_time())
            if stop:
                raise FirstUpdate
            return self.bar.update(n)

    for module in modules:
        original = module.training_bar
        module.training_bar = lambda *a, _orig=original, **k: Probe(_orig(*a, **k))


def measure(entry: str, transformer: str, quick: bool, cache: str | None = None) -> dict:
    """One measurement, in this process: seconds to the first update (or to the end)."""
    import equinox as eqx
    import jax
    import jax.random as jr
    import numpy as np

    from numpyro_coupling import coupling_flow, fit, fit_guide, neutra_mcmc
    from numpyro_coupling import svi as svi_module
    from numpyro_coupling import train as train_module
    from numpyro_coupling.targets import funnel

    if cache:
        from numpyro_coupling import enable_compilation_cache

        enable_compilation_cache(cache)
    record: dict = {}
    probe_bars([svi_module, train_module], stop=entry in ("fit", "fit_guide"), record=record)
    rng = np.random.default_rng(0)
    if entry == "fit":
        data = np.concatenate([rng.normal(-2, 0.5, (1000, 2)), rng.normal(2, 1.0, (1000, 2))])
        flow = coupling_flow(jr.key(0), (2,), transformer=transformer)
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            fit(flow, data, steps=10 if quick else 2000, chunk_size=100, key=jr.key(1))
        except FirstUpdate:
            pass
    elif entry == "fit_guide":
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            fit_guide(funnel, 10, guide={"transformer": transformer}, steps=10 if quick else 10_000)
        except FirstUpdate:
            pass
    elif entry == "neutra_mcmc":
        start, cpu_start = time.perf_counter(), time.process_time()
        n = 10 if quick else 100
        neutra_mcmc(
            funnel,
            10,
            guide={"transformer": transformer},
            fit_kwargs={"steps": 2 * n},
            num_warmup=n,
            num_samples=n,
            num_chains=1,
        )
        record["end"], record["end_cpu"] = time.perf_counter(), time.process_time()
    else:
        flow = coupling_flow(jr.key(0), (2,), transformer=transformer)
        n = 10_000 if quick else 1_000_000
        start, cpu_start = time.perf_counter(), time.process_time()
        draws = eqx.filter_jit(lambda flow, key: flow.sample(key, (n,)))(flow, jr.key(1))
        jax.block_until_ready(draws)
        record["end"], record["end_cpu"] = time.perf_counter(), time.process_time()
    out = {k: record.get(k, np.nan) - start for k in ("first", "end") if k in record}
    out |= {k: record[k] - cpu_start for k in ("first_cpu", "end_cpu") if k in record}
    return out


def run_case(code: str, entry: str, transformer: str, quick: bool, cache=None) -> dict:
    env = dict(os.environ, PYTHONPATH=code)
    cmd = [sys.executable, __file__, "--one", f"{entry}:{transformer}"] + (["--quick"] * quick)
    cmd += ["--cache-dir", cache] if cache else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        print(done.stderr[-2000:], file=sys.stderr)
        return {}
    return json.loads(lines[-1])


def describe(result: dict, entry: str) -> str:
    """``wall (cpu)`` seconds; for neutra_mcmc the first update, then the end."""
    nan = float("nan")

    def pair(name):
        return f"{result.get(name, nan):.1f} ({result.get(name + '_cpu', nan):.1f})"

    if entry == "neutra_mcmc":
        return f"{pair('first')} / {pair('end')}"
    return pair("end" if entry == "sample" else "first")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=str(ROOT), help="checkout whose package is timed")
    parser.add_argument("--before", default=None, help="another checkout, for comparison")
    parser.add_argument("--cases", default=None, help="e.g. fit_guide:mixture,sample:affine")
    parser.add_argument("--seeds", default="0", help="repeats (the runs are deterministic)")
    parser.add_argument("--quick", action="store_true", help="tiny runs (a smoke test)")
    parser.add_argument("--warm-cache", action="store_true", help="time a rerun (see above)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.one:
        entry, transformer = args.one.split(":")
        print(json.dumps(measure(entry, transformer, args.quick, args.cache_dir)), flush=True)
        return
    cases = CASES
    if args.cases:
        cases = [tuple(c.split(":")) for c in args.cases.split(",")]
    codes = {"after": args.code} | ({"before": args.before} if args.before else {})
    repeats = len(args.seeds.split(","))
    rows = []
    for entry, transformer in cases:
        row = {"entry": entry, "transformer": transformer}
        for label, code in reversed(codes.items()):
            with tempfile.TemporaryDirectory() as cache:
                cache = cache if args.warm_cache else None
                if cache:  # the run that fills the cache
                    run_case(code, entry, transformer, args.quick, cache)
                results = [
                    run_case(code, entry, transformer, args.quick, cache) for _ in range(repeats)
                ]
            best = min(results, key=lambda r: r.get("end", r.get("first", float("nan"))))
            row[label] = describe(best, entry)
        rows.append(row)
        print(row, flush=True)
    # Imported here, not at the top: every ``--one`` child runs this file, and would
    # otherwise load jax and the package before ``measure`` starts its clocks.
    import jax
    from report import write_markdown

    from numpyro_coupling.demo import format_table

    table = format_table(rows, [(c, c, "{}") for c in rows[0]])

    command = "python benchmarks/compile_time.py" + (" --quick" if args.quick else "")
    command += " --warm-cache" if args.warm_cache else ""
    if args.before:
        command += " --before BEFORE"
    header = (
        f"# Compile time\n\n`{command}`: wall seconds (CPU seconds of the process in "
        f"brackets; the best of {repeats} fresh process(es)"
        f"{', each with the cache a first run filled' if args.warm_cache else ''}). "
        "fit, fit_guide: call to first progress update (compilation and the first chunk); "
        "neutra_mcmc: first progress update / end of the short run; sample: 10^6 draws, "
        f"compilation included. Machine: {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"jax {jax.__version__}.\n\n"
    )
    write_markdown([header + table], args.out, "compile_time")


if __name__ == "__main__":
    main()
