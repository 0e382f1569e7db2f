"""Reference-posterior benchmark: NUTS and NeuTra guides against gold-standard draws.

For each posterior of ``posteriordb.POSTERIORS``, each method and each key, in one process
and float64: plain NUTS, and NeuTra (``neutra_mcmc``: the same ``fit_guide`` SVI fit and
budget for every guide, then NUTS on the warped space) with ``AutoCouplingFlow`` at its
defaults, ``AutoIAFNormal`` (2 flows, as ``neutra.py``) and ``AutoBNAFNormal``. NUTS runs
``--num-warmup`` + ``--num-samples`` iterations per chain (1000 + 1000) on ``--num-chains``
chains (the library's default, ``NUM_CHAINS``; the table's ``chains`` column).

Every row compares the chain's draws with the reference draws coordinate by coordinate,
over every scalar coordinate of the sites the reference holds (the model's own constrained
parameters, transformed parameters included), and counts every gradient of the log
density the method spent, as the run's ``InferenceData`` records them: the guide's
Gaussian fit and SVI steps x particles (``attrs["svi_grads"]``), and every leapfrog step of
NUTS's warm-up (``attrs["warmup_grads"]``) and sampling. ``k_hat`` and ``IS ESS`` are the
guide's own diagnostics (Pareto k-hat and importance-sampling ESS share of its weights),
and ``warned`` says whether the run warned its user (a ``DiagnosticWarning``).

Run ``python benchmarks/posteriors.py`` (all of it, keys 0-2, takes hours on a laptop), or
subsets: ``--posteriors arK,eight_schools_centered --methods nuts --seeds 0``; ``--quick``
for a smoke test. Rows of earlier runs (``results/posteriors.json``) are merged with this
run's unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import arviz as az
import jax
import jax.random as jr
import numpy as np
import numpyro
from numpyro.infer.autoguide import AutoBNAFNormal, AutoIAFNormal

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import posteriordb  # noqa: E402
from report import write_markdown  # noqa: E402

from numpyro_coupling import (  # noqa: E402
    GUIDE_DRAWS,
    NEUTRA_PARTICLES,
    NUM_CHAINS,
    neutra_mcmc,
    nuts_mcmc,
    sampling_efficiency,
)
from numpyro_coupling.demo import format_table  # noqa: E402

RESULTS = HERE / "results"

#: Reference draws' effective sample size assumed in the Monte Carlo standard error
#: (posteriordb's references: about 10,000 for every coordinate; the exact ones: 10,000).
REFERENCE_ESS = 10_000

#: The lower quantile of log tau that says whether a chain reached a funnel's neck.
NECK_QUANTILE = 0.005

#: method -> (label, guide factory or None for plain NUTS)
METHODS = {
    "nuts": ("plain NUTS", None),
    "ours": ("AutoCouplingFlow (defaults)", lambda model: None),
    "iaf": ("AutoIAFNormal (2 flows)", lambda model: AutoIAFNormal(model, num_flows=2)),
    "bnaf": ("AutoBNAFNormal", lambda model: AutoBNAFNormal(model)),
    "ours-refine": ("AutoCouplingFlow, refined in warm-up", lambda model: None),
    "ours-particles1": ("AutoCouplingFlow, 1 draw per SVI step", lambda model: None),
    "ours-particles1-refine": (
        "AutoCouplingFlow, 1 draw per SVI step, refined in warm-up",
        lambda model: None,
    ),
    "ours-unbounded": ("AutoCouplingFlow, input_bound=None", lambda model: {"input_bound": None}),
    "ours-bound10": ("AutoCouplingFlow, input_bound=10", lambda model: {"input_bound": 10.0}),
}

#: ``neutra_mcmc`` options of a method, and the method whose key it shares (the same SVI
#: fit, so the rows differ only by the option).
NEUTRA_OPTIONS = {
    "ours-refine": ({"refine": True}, "ours"),
    # The default before NEUTRA_PARTICLES: one guide draw per SVI step.
    "ours-particles1": ({"fit_kwargs": {"num_particles": 1}}, "ours"),
    "ours-particles1-refine": ({"refine": True, "fit_kwargs": {"num_particles": 1}}, "ours"),
    # The guide's conditioners without, or with a wider, input bound.
    "ours-unbounded": ({}, "ours"),
    "ours-bound10": ({}, "ours"),
}


def row_key(seed: int, posterior: str, method: str):
    """A row's key, fixed by its posterior's and method's places in the registries: a
    subset of posteriors or methods reproduces the full run's rows."""
    key = jr.fold_in(jr.key(seed), list(posteriordb.POSTERIORS).index(posterior))
    method = NEUTRA_OPTIONS.get(method, (None, method))[1]
    return jr.fold_in(key, list(METHODS).index(method))


# --------------------------------------------------------------------------------------
# Comparison with the reference
# --------------------------------------------------------------------------------------


def bulk_ess(draws: dict) -> dict:
    """Bulk ESS (ArviZ) of every coordinate: ``site -> (chains, draws, *shape)`` -> ``shape``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(1, 1000, 2))
        >>> bool(np.all(bulk_ess({"x": x})["x"] > 700))
        True
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az

    ess = az.ess(az.convert_to_dataset({k: np.asarray(v) for k, v in draws.items()}))
    return {k: np.asarray(ess[k].values) for k in draws}


def compare(draws: dict, reference: dict, ess: dict, reference_ess: float = REFERENCE_ESS):
    """Coordinate-wise agreement of a chain's draws with reference draws.

    Args:
        draws: site -> ``(chains, draws, *shape)``.
        reference: site -> ``(n, *shape)``; only its sites are compared.
        ess: site -> ``shape``, the chain's bulk ESS per coordinate.
        reference_ess: the reference's ESS per coordinate.

    Returns:
        dict: ``mean_err`` (max ``|mean - ref mean| / ref sd``), ``sd_err``
        (max ``|log(sd / ref sd)|``), ``max_z`` (max ``|mean - ref mean| / MCSE`` with
        ``MCSE = ref sd * sqrt(1 / ESS + 1 / reference_ess)``), ``n_off`` (coordinates
        with ``z > 4``), ``n_coords``, ``min_ess`` and ``worst`` (the coordinate of
        ``max_z``, e.g. ``"theta[3]"``, 1-based like Stan).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ref = {"x": rng.normal(size=(10000, 2))}
        >>> out = compare({"x": rng.normal(size=(1, 4000, 2))}, ref, {"x": np.full(2, 4000.0)})
        >>> out["n_off"], out["n_coords"], bool(out["mean_err"] < 0.1)
        (0, 2, True)
    """
    mean_err, sd_err, z, min_ess, names = [], [], [], [], []
    for site, ref in reference.items():
        x = np.asarray(draws[site])
        x = x.reshape(-1, *x.shape[2:])
        ref_mean, ref_sd = ref.mean(0), ref.std(0, ddof=1)
        err = np.abs(x.mean(0) - ref_mean) / ref_sd
        site_ess = np.asarray(ess[site], float)
        mean_err.append(err.ravel())
        with np.errstate(divide="ignore"):  # a coordinate that never moved: inf
            sd_err.append(np.abs(np.log(x.std(0, ddof=1) / ref_sd)).ravel())
        z.append((err / np.sqrt(1.0 / site_ess + 1.0 / reference_ess)).ravel())
        min_ess.append(site_ess.ravel())
        idx = np.ndindex(*ref.shape[1:])
        names += [f"{site}[{','.join(str(i + 1) for i in j)}]" if j else site for j in idx]
    mean_err, sd_err, z = np.concatenate(mean_err), np.concatenate(sd_err), np.concatenate(z)
    return {
        "mean_err": float(mean_err.max()),
        "sd_err": float(sd_err.max()),
        "max_z": float(z.max()),
        "n_off": int(np.sum(z > 4.0)),
        "n_coords": int(z.size),
        "min_ess": float(np.concatenate(min_ess).min()),
        "worst": names[int(np.argmax(z))],
    }


# --------------------------------------------------------------------------------------
# One row
# --------------------------------------------------------------------------------------


def neck_reference(name: str, reference: dict) -> float:
    """The reference's :data:`NECK_QUANTILE` quantile of ``log tau``: exact where the
    posterior knows it, else the reference draws' own (with their Monte Carlo error)."""
    exact = posteriordb.POSTERIORS[name].log_tau_quantile
    if exact is not None:
        return float(exact(NECK_QUANTILE))
    return float(np.quantile(np.log(reference["tau"]), NECK_QUANTILE))


def run_row(name: str, method: str, seed: int, args) -> dict:
    """Sample ``name``'s posterior with ``method`` on key ``seed``; compare and count."""
    entry = posteriordb.POSTERIORS[name]
    model = partial(entry.model, **entry.data())
    reference = entry.reference()
    label, make_guide = METHODS[method]
    key = row_key(seed, name, method)
    common = {
        "num_warmup": args.num_warmup,
        "num_samples": args.num_samples,
        "num_chains": args.num_chains,
        "progress_bar": args.progress,
        "nuts_kwargs": {"max_tree_depth": args.max_tree_depth},
    }
    if make_guide is None:
        _, idata = nuts_mcmc(model, key=key, **common)
        svi_seconds = 0.0
    else:
        options = dict(NEUTRA_OPTIONS.get(method, ({}, None))[0])
        fit_kwargs = {"steps": args.svi_steps} | options.pop("fit_kwargs", {})
        _, idata = neutra_mcmc(
            model,
            guide=make_guide(model),
            fit_kwargs=fit_kwargs,
            key=key,
            **options,
            **common,
        )
        svi_seconds = float(idata.attrs["svi_seconds"])
    efficiency = sampling_efficiency(idata)
    missing = sorted(set(reference) - set(idata.posterior.data_vars))
    if missing:
        raise KeyError(f"the {method} posterior of {name} lacks the reference sites {missing}")
    draws = {k: idata.posterior[k].values for k in reference}
    row = {"posterior": name, "method": label, "seed": seed, "chains": args.num_chains}
    if make_guide is not None:
        row["svi_draws"] = fit_kwargs.get("num_particles", NEUTRA_PARTICLES)

    # Sites with a Cauchy-like tail compare on the log scale (bulk ESS, rank-based, is
    # the same on either scale).
    def scaled(sites):
        return {k: np.log(v) if k in entry.log_sites else v for k, v in sites.items()}

    row |= compare(scaled(draws), scaled(reference), bulk_ess(draws))
    n_steps = idata.sample_stats["n_steps"].values
    row["svi_grads"] = int(idata.attrs.get("svi_grads", 0))
    row["warmup_grads"] = int(idata.attrs["warmup_grads"])
    row["sample_grads"] = efficiency["n_grads"]
    row["grads"] = efficiency["total_grads"]
    row["ess_per_grad"] = row["min_ess"] / row["grads"]
    row["divergences"] = efficiency["divergences"]
    row["treedepth_sat"] = float(np.mean(n_steps >= 2**args.max_tree_depth - 1))
    row["seconds"] = svi_seconds + efficiency["seconds"]
    row["k_hat"] = efficiency["k_hat"]
    row["is_ess"] = float(idata.attrs.get("guide_ess", np.nan)) / GUIDE_DRAWS
    row["warned"] = "yes" if list(idata.attrs.get("warnings", [])) else "no"
    row["noncentred"] = ",".join(idata.attrs.get("noncentred_sites", [])) or "-"
    if idata.attrs.get("centring"):
        row["noncentred"] += " (partial)"
    if "tau" in reference:
        # A hierarchical scale's neck: how far into it the chain went, against the reference.
        row["neck"] = float(np.quantile(np.log(draws["tau"]), NECK_QUANTILE))
        # Its Monte Carlo error: a tail quantile of a few thousand correlated draws is noisy.
        row["neck_mcse"] = float(
            az.mcse(np.log(draws["tau"]), method="quantile", prob=NECK_QUANTILE)
        )
        row["neck_ref"] = neck_reference(name, reference)
    return row


COLUMNS = [
    ("posterior", "posterior", "{}"),
    ("method", "method", "{}"),
    ("seed", "key", "{:d}"),
    ("chains", "chains", "{:d}"),
    ("svi_draws", "SVI draws", "{:d}"),
    ("mean_err", "max mean err / sd", "{:.3f}"),
    ("sd_err", "max abs log sd ratio", "{:.3f}"),
    ("max_z", "max z", "{:.1f}"),
    ("n_off", "z > 4", "{:d}"),
    ("n_coords", "coords", "{:d}"),
    ("min_ess", "min ESS", "{:.0f}"),
    ("grads", "gradients", "{:d}"),
    ("ess_per_grad", "ESS / grad", "{:.2e}"),
    ("divergences", "div.", "{:d}"),
    ("treedepth_sat", "depth sat.", "{:.2f}"),
    ("seconds", "wall s", "{:.0f}"),
    ("k_hat", "k_hat", "{:.2f}"),
    ("is_ess", "IS ESS", "{:.2f}"),
    ("warned", "warned", "{}"),
    ("noncentred", "non-centred", "{}"),
    ("neck", "q0.5% log tau", "{:.2f}"),
    ("neck_mcse", "its MCSE", "{:.2f}"),
    ("neck_ref", "ref.", "{:.2f}"),
]


def table(rows) -> str:
    """The markdown table of ``rows``: NaN and missing entries print as ``-``, infinities
    (a coordinate whose draws never moved) as ``inf``."""

    def cell(value, fmt):
        if isinstance(value, float) and np.isinf(value):
            return "inf"
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        return fmt.format(value)

    shown = [{k: cell(r.get(k), fmt) for k, _, fmt in COLUMNS} for r in rows]
    return format_table(shown, [(k, title, "{}") for k, title, _ in COLUMNS])


def _store_key(row, args) -> str:
    settings = f"{args.num_warmup}+{args.num_samples}x{args.num_chains}|svi {args.svi_steps}"
    draws = f"|draws {row['svi_draws']}" if "svi_draws" in row else ""
    return f"{row['posterior']}|{row['method']}|{row['seed']}|{settings}{draws}"


def _sort_key(row):
    labels = [label for label, _ in METHODS.values()]
    return (
        list(posteriordb.POSTERIORS).index(row["posterior"]),
        labels.index(row["method"]),
        row["seed"],
    )


def _comma_list(text: str, known, what: str, parser) -> list[str]:
    items = [t for t in text.split(",") if t]
    unknown = sorted(set(items) - set(known))
    if unknown:
        parser.error(f"unknown {what} {unknown}; known: {list(known)}")
    return items


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriors", default=",".join(posteriordb.POSTERIORS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=NUM_CHAINS)
    parser.add_argument("--max-tree-depth", type=int, default=10)
    parser.add_argument("--svi-steps", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--fresh", action="store_true", help="forget the rows of earlier runs")
    args = parser.parse_args(argv)
    posteriors = _comma_list(args.posteriors, posteriordb.POSTERIORS, "posteriors", parser)
    methods = _comma_list(args.methods, METHODS, "methods", parser)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.quick:
        args.num_warmup, args.num_samples, args.svi_steps = 50, 50, 100
    numpyro.enable_x64()

    name = "posteriors_quick" if args.quick else "posteriors"
    store = RESULTS / f"{name}.json"
    saved = {} if args.fresh or not store.exists() else json.loads(store.read_text())
    command = f"python benchmarks/posteriors.py {shlex.join(argv)}".strip()
    for posterior in posteriors:
        for method in methods:
            for seed in seeds:
                start = time.perf_counter()
                row = run_row(posterior, method, seed, args)
                row["command"] = command
                saved[_store_key(row, args)] = row
                store.parent.mkdir(parents=True, exist_ok=True)
                store.write_text(json.dumps(saved, indent=1))
                took = time.perf_counter() - start
                line = table([row]).splitlines()[-1]
                print(f"{line}  (worst {row['worst']}, {took:.0f} s)", flush=True)
                # Every row compiles new programs; a long run otherwise exhausts the
                # kernel's memory mappings (LLVM: "Cannot allocate memory").
                jax.clear_caches()

    rows = sorted(saved.values(), key=_sort_key)
    text = [
        "# Reference posteriors",
        "",
        f"Machine: {platform.machine()}, {jax.device_count()} JAX device(s) "
        f"({jax.devices()[0].platform}), jax {jax.__version__}, numpyro {numpyro.__version__}, "
        "float64. Each row: one key; NUTS warm-up + draws x chains and SVI steps as in its "
        "command. Columns: see `benchmarks/README.md`. Commands:",
        "",
        *sorted({f"- `{r['command']}`" for r in rows}),
        "",
        table(rows),
    ]
    write_markdown(text, RESULTS, name)


if __name__ == "__main__":
    main()
