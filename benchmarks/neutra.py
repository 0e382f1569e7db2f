"""NeuTra benchmark: plain NUTS, NumPyro's flow guides and AutoCouplingFlow, side by side.

Protocol (one process, same budget for every method): SVI with ``Trace_ELBO`` and Adam
(3e-3) for ``--svi-steps`` steps (10,000) through ``fit_guide`` (every guide alike: a
cosine decay of the step to a tenth and gradient clipping at norm 10 by default,
``--schedule constant --clip-norm 0`` for plain Adam), then ``NeuTraReparam`` + NUTS, 1000 warmup +
1000 draws, one chain. Each row's key is fixed by ``--seed`` and the places of its target
and method in ``TARGETS`` and ``METHODS``, so a subset reproduces the full run's rows.
Reported per target and method:

* SVI loss: a 20,000-particle estimate of the negative ELBO at the final parameters
  (on the normalised funnel it is ``KL(q || p)`` in nats);
* SVI wall time (compilation included) and time per step;
* min ESS: the minimum bulk ESS (ArviZ) over every unconstrained latent coordinate;
* ESS per gradient: min ESS over the leapfrog steps after warmup;
* divergences after warmup, MCMC wall time and ESS per second;
* dual moon: the fraction of draws in the right-hand mode and the number of mode switches.

The warm-started guide first runs a pilot plain-NUTS chain (``--pilot`` draws); its cost
is reported in its own column. A second table gives the SVI step time against the latent
dimension (10, 100, 1000) for AutoCouplingFlow and AutoIAFNormal.

Run ``python benchmarks/neutra.py`` (all of it takes long), or subsets:
``--targets funnel --methods nuts,iaf,ours-affine``; ``--quick`` for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoBNAFNormal, AutoIAFNormal

from numpyro_coupling import (
    AutoCouplingFlow,
    SiteOrderedTraceELBO,
    fit_guide,
    guide_optimizer,
    neutra_nuts,
    nuts_mcmc,
    sampling_efficiency,
)
from numpyro_coupling.demo import (
    DEFAULT_TARGET_ACCEPT,
    comma_floats,
    format_table,
    probability,
)
from numpyro_coupling.targets import TARGETS

RESULTS = Path(__file__).parent / "results" / "neutra.md"


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------


def _ours(**kw):
    return lambda model, pilot: AutoCouplingFlow(model, **kw)


def _warm(**kw):
    return lambda model, pilot: AutoCouplingFlow(model, warm_start=pilot, **kw)


METHODS = {
    "nuts": ("plain NUTS", None),
    "iaf": ("AutoIAFNormal (2 flows, hidden [D,D])", lambda m, p: AutoIAFNormal(m, num_flows=2)),
    "iaf32": (
        "AutoIAFNormal (2 flows, hidden [32,32])",
        lambda m, p: AutoIAFNormal(m, num_flows=2, hidden_dims=[32, 32]),
    ),
    "bnaf": ("AutoBNAFNormal (hidden factors [8,8])", lambda m, p: AutoBNAFNormal(m)),
    # The rows measured before the Gaussian start: the guide from N(init_loc, 1).
    "ours-spline": (
        "AutoCouplingFlow loc_scale_spline, diagonal start",
        _ours(transformer="loc_scale_spline", precondition=None),
    ),
    "ours-affine": (
        "AutoCouplingFlow loc_scale, diagonal start",
        _ours(transformer="loc_scale", precondition=None),
    ),
    "ours-additive": ("AutoCouplingFlow additive", _ours(transformer="additive")),
    "ours-mixture": ("AutoCouplingFlow mixture", _ours(transformer="mixture")),
    "ours-warm": ("AutoCouplingFlow mixture, RBIG warm start", _warm()),
    # Last, so that the keys of the rows above stay where they were.
    "ours": ("AutoCouplingFlow (defaults: Gaussian start)", _ours()),
    "ours-unbounded": ("AutoCouplingFlow (defaults, input_bound=None)", _ours(input_bound=None)),
    "ours-bound10": ("AutoCouplingFlow (defaults, input_bound=10)", _ours(input_bound=10.0)),
}

#: Methods that differ from another by one guide option share its rows' key (the same
#: SVI draws and NUTS key), so their rows differ by that option alone.
SHARED_KEYS = {"ours-unbounded": "ours", "ours-bound10": "ours"}
DEFAULT_METHODS = [m for m in METHODS if m not in SHARED_KEYS]


def _n_params(params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def _mode_stats(idata):
    x0 = idata.posterior["x"].values[0, :, 0]
    side = x0 > 0
    return float(side.mean()), int(np.sum(side[1:] != side[:-1]))


def row_key_of(target, method, row) -> str:
    """A stored row's name: rows of other settings are kept beside the defaults' rows."""
    accept = row["target_accept"]
    suffix = "" if accept == DEFAULT_TARGET_ACCEPT else f"|accept {accept:g}"
    return f"{target}|{method}|{row['schedule']}{suffix}"


def target_key(seed: int, target: str):
    """The key of ``target``'s rows: by its place in ``TARGETS``, not on the command line."""
    return jr.fold_in(jr.key(seed), list(TARGETS).index(target))


def method_key(target_key, method: str):
    """The key of one row, fixed by the method's place in ``METHODS``: a row comes out the
    same whichever other targets and methods the command runs, and in whatever order."""
    return jr.fold_in(target_key, list(METHODS).index(SHARED_KEYS.get(method, method)))


def run_method(target, method, args, pilot, key):
    """One row of the table: fit (if a guide), sample, measure."""
    model = TARGETS[target]
    label, make_guide = METHODS[method]
    row = {"target": target, "method": label}
    row["schedule"] = "-" if make_guide is None else _schedule_label(args)
    k_svi, k_mcmc, k_loss = jr.split(key, 3)
    clip_norm = args.clip_norm or None
    row["target_accept"] = args.target_accept
    mcmc_kw = {
        "num_warmup": args.num_warmup,
        "num_samples": args.num_samples,
        "progress_bar": args.progress,
        "nuts_kwargs": {"target_accept_prob": args.target_accept},
    }
    if make_guide is None:
        _, idata = nuts_mcmc(model, key=k_mcmc, **mcmc_kw)
    else:
        if method == "ours-warm":
            row["pilot_seconds"] = pilot["seconds"]
        start = time.perf_counter()
        guide = make_guide(model, pilot["draws"] if pilot else None)
        guide, params, losses, fit_state = fit_guide(
            model,
            guide=guide,
            steps=args.svi_steps,
            learning_rate=args.learning_rate,
            average=args.average,
            schedule=args.schedule,
            clip_norm=clip_norm,
            temper=args.temper or None,
            num_particles=args.particles,
            key=k_svi,
            progress_bar=args.progress,
            return_state=True,
        )
        row["svi_seconds"] = time.perf_counter() - start
        row["steps_to_threshold"] = _steps_to(losses, LOSS_THRESHOLDS[target])
        optim = guide_optimizer(
            args.learning_rate, args.svi_steps, schedule=args.schedule, clip_norm=clip_norm
        )
        svi = SVI(model, guide, optim, Trace_ELBO(num_particles=args.particles))
        timer = _step_timer(svi, svi.init(k_svi))
        row["svi_ms_per_step"] = 1e3 * _median_seconds({"step": timer}, repeats=5)["step"]
        row["n_params"] = _n_params(params)
        elbo = SiteOrderedTraceELBO(num_particles=args.loss_particles)
        row["svi_loss"] = float(elbo.loss(k_loss, params, model, guide))
        row["svi_loss_last"] = float(elbo.loss(k_loss, fit_state.last_params, model, guide))
        _, idata = neutra_nuts(model, guide, params, key=k_mcmc, **mcmc_kw)
    row |= sampling_efficiency(idata)
    if target == "dualmoon":
        row["right_mode"], row["mode_switches"] = _mode_stats(idata)
    return row


def _schedule_label(args):
    clip = f", clip {args.clip_norm:g}" if args.clip_norm else ""
    temper = ", tempered " + "/".join(f"{b:g}" for b in args.temper) if args.temper else ""
    particles = f", {args.particles} particles" if args.particles > 1 else ""
    return f"{args.schedule}{clip}{temper}{particles}"


#: Loss levels for the "steps to reach" column (about the best peer's final loss).
LOSS_THRESHOLDS = {"funnel": 0.5, "dualmoon": -1.5, "eightschools": 32.5}


def _steps_to(losses, level, window=200):
    """First step where the trailing mean of the training loss is at or below ``level``."""
    losses = np.asarray(losses, float)
    csum = np.cumsum(np.insert(losses, 0, 0.0))
    idx = np.arange(window, len(losses) + 1)
    below = np.flatnonzero((csum[idx] - csum[idx - window]) / window <= level)
    return int(idx[below[0]]) if below.size else None


def _step_timer(svi, state, n=200):
    """A function timing one SVI step: ``n`` steps in one compiled scan, per step.

    A scan (as ``fit_guide`` runs SVI) rather than ``n`` separate calls, whose Python
    dispatch costs about as much as a small guide's step. Compilation is excluded.
    """
    run = jax.jit(lambda s: jax.lax.scan(lambda c, _: svi.update(c), s, None, length=n))
    jax.block_until_ready(run(state))

    def once():
        start = time.perf_counter()
        jax.block_until_ready(run(state))
        return (time.perf_counter() - start) / n

    return once


def _median_seconds(timers, repeats=7):
    """Median of ``repeats`` timings of each timer, taken in turn so drift hits all alike."""
    times = {name: [] for name in timers}
    for _ in range(repeats):
        for name, once in timers.items():
            times[name].append(once())
    return {name: float(np.median(t)) for name, t in times.items()}


def pilot_draws(target, args, key):
    """A short plain-NUTS run whose draws warm-start the RBIG guide."""
    start = time.perf_counter()
    _, idata = nuts_mcmc(
        TARGETS[target],
        num_warmup=args.pilot,
        num_samples=args.pilot,
        key=key,
        progress_bar=args.progress,
    )
    draws = {k: idata.posterior[k].values[0] for k in idata.posterior.data_vars}
    return {"draws": draws, "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------------------
# SVI step time against the latent dimension
# --------------------------------------------------------------------------------------


def _gaussian_model(dim):
    def model():
        numpyro.sample("x", dist.Normal(jnp.zeros(dim), 1.0).to_event(1))

    return model


def _command(argv) -> str:
    """The command line of this run, with the CPU pinning that timings depend on."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = f"taskset -c {','.join(map(str, cpus))} " if len(cpus) < (os.cpu_count() or 1) else ""
    return f"{pinned}python benchmarks/neutra.py {shlex.join(argv or [])}"


def scaling_rows(dims, n_steps):
    rows = []
    for dim in dims:
        model = _gaussian_model(dim)
        iaf = AutoIAFNormal(model, num_flows=2)
        guides = {
            "AutoIAFNormal (2 flows, hidden [D,D])": iaf,
            "AutoCouplingFlow affine (default)": AutoCouplingFlow(model, transformer="loc_scale"),
            "AutoCouplingFlow spline (default)": AutoCouplingFlow(
                model, transformer="loc_scale_spline"
            ),
        }
        # A coupling guide with as many parameters as the IAF guide.
        iaf_svi = SVI(model, iaf, numpyro.optim.Adam(1e-3), Trace_ELBO())
        iaf_params = _n_params(iaf_svi.get_params(iaf_svi.init(jr.key(0))))
        width = _matching_width(model, iaf_params)
        guides[f"AutoCouplingFlow affine (width {width}: IAF's parameter count)"] = (
            AutoCouplingFlow(model, transformer="loc_scale", nn_width=width)
        )
        # As deep as the IAF guide (two couplings against its two autoregressive layers) and
        # as many parameters: the mechanism's own cost, apart from the default's depth.
        shallow = _matching_width(model, iaf_params, n_layers=2)
        guides[
            f"AutoCouplingFlow affine (2 layers, width {shallow}: IAF's depth and parameter count)"
        ] = AutoCouplingFlow(model, transformer="loc_scale", n_layers=2, nn_width=shallow)
        # The same without the "sticking the landing" estimator's second flow pass, without
        # the conditioners' linear path, and without both.
        for label, kw in [
            ("stl=False", {"stl": False}),
            ("linear_rank=0", {"linear_rank": 0}),
            ("stl=False, linear_rank=0", {"stl": False, "linear_rank": 0}),
        ]:
            guides[f"AutoCouplingFlow affine (width {width}, {label})"] = AutoCouplingFlow(
                model, transformer="loc_scale", nn_width=width, **kw
            )
        timers, counts = {}, {}
        for name, guide in guides.items():
            svi = SVI(model, guide, numpyro.optim.Adam(3e-3), Trace_ELBO())
            state = svi.init(jr.key(0))
            counts[name] = _n_params(svi.get_params(state))
            timers[name] = _step_timer(svi, state, n_steps)
        for name, seconds in _median_seconds(timers).items():
            rows.append(
                {"dim": dim, "guide": name, "n_params": counts[name], "ms_per_step": 1e3 * seconds}
            )
    return rows


def _matching_width(model, target_params, n_layers=8):
    best, best_gap = 1, np.inf
    for width in (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536):
        guide = AutoCouplingFlow(model, transformer="loc_scale", n_layers=n_layers, nn_width=width)
        svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
        n = _n_params(svi.get_params(svi.init(jr.key(0))))
        gap = abs(np.log(n / target_params))
        if gap < best_gap:
            best, best_gap = width, gap
        if n >= target_params:  # the count grows with the width: wider guides are further
            break
    return best


# --------------------------------------------------------------------------------------


COLUMNS = [
    ("target", "target", "{}"),
    ("method", "method", "{}"),
    ("schedule", "Adam step", "{}"),
    ("target_accept", "NUTS accept", "{:g}"),
    ("svi_loss", "SVI loss", "{:.3f}"),
    ("svi_loss_last", "last iterate", "{:.3f}"),
    ("steps_to_threshold", "steps to level", "{:d}"),
    ("svi_seconds", "SVI s", "{:.0f}"),
    ("svi_ms_per_step", "ms/step", "{:.3g}"),
    ("n_params", "params", "{:d}"),
    ("pilot_seconds", "pilot s", "{:.0f}"),
    ("min_ess", "min ESS", "{:.0f}"),
    ("ess_per_grad", "ESS/grad", "{:.4f}"),
    ("divergences", "div.", "{:d}"),
    ("seconds", "MCMC s", "{:.0f}"),
    ("ess_per_second", "ESS/s", "{:.1f}"),
    ("right_mode", "x0>0", "{:.2f}"),
    ("mode_switches", "switches", "{:d}"),
]
SCALING_COLUMNS = [
    ("dim", "latent dim", "{:d}"),
    ("guide", "guide", "{}"),
    ("n_params", "params", "{:d}"),
    ("ms_per_step", "ms / SVI step", "{:.3g}"),
]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="funnel,dualmoon,eightschools")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--svi-steps", type=int, default=10_000)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument(
        "--average",
        type=float,
        default=0.1,
        help="parameter averaging of fit_guide for every guide (0: last iterate)",
    )
    parser.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    parser.add_argument("--clip-norm", type=float, default=10.0, help="0: no clipping")
    parser.add_argument(
        "--temper",
        type=comma_floats,
        default=[],
        help="inverse temperatures of fit_guide's warm-up phases, e.g. 0.1,0.3,0.6",
    )
    parser.add_argument(
        "--particles",
        type=int,
        default=1,
        help="guide draws per SVI step (fit_guide's num_particles), for every guide alike",
    )
    parser.add_argument(
        "--target-accept",
        type=probability,
        default=DEFAULT_TARGET_ACCEPT,
        help="NUTS target acceptance probability, for every method alike",
    )
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--pilot", type=int, default=500, help="pilot NUTS warmup = draws")
    parser.add_argument("--loss-particles", type=int, default=20_000)
    parser.add_argument("--scaling-dims", default="10,100,1000", help="'' to skip")
    parser.add_argument("--scaling-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--out", default=str(RESULTS), help="markdown file to write")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="forget earlier rows (by default rows of earlier runs, kept next to --out as "
        "JSON, are merged with this run's, so subsets can be run one at a time)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.svi_steps, args.num_warmup, args.num_samples = 100, 50, 50
        args.pilot, args.loss_particles, args.scaling_steps = 50, 500, 10
        if args.scaling_dims == parser.get_default("scaling_dims"):  # '' stays ''
            args.scaling_dims = "10"
    targets = [t for t in args.targets.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(targets) - set(TARGETS)) + sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown targets/methods {unknown}; known: {list(TARGETS)}, {list(METHODS)}")

    out = Path(args.out)
    store = out.with_suffix(".json")
    saved = {} if args.fresh or not store.exists() else json.loads(store.read_text())
    saved.setdefault("rows", {})
    saved.setdefault("scaling", {})
    rows = []
    for target in targets:
        key = target_key(args.seed, target)
        pilot = pilot_draws(target, args, jr.fold_in(key, 999)) if "ours-warm" in methods else None
        for method in methods:
            row = run_method(target, method, args, pilot, method_key(key, method))
            rows.append(row)
            row_key = row_key_of(target, method, row)
            saved["rows"][row_key] = row | {"command": " ".join(argv or [])}
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(saved, indent=1))
            print(format_table([row], COLUMNS).splitlines()[-1], flush=True)

    scaling = []
    dims = [int(d) for d in args.scaling_dims.split(",") if d]
    if dims:
        scaling = scaling_rows(dims, args.scaling_steps)
        print(format_table(scaling, SCALING_COLUMNS), flush=True)
        for r in scaling:
            saved["scaling"][f"{r['dim']}|{r['guide']}"] = r | {"command": _command(argv)}
    order = {m: i for i, m in enumerate(METHODS)}
    t_order = {t: i for i, t in enumerate(TARGETS)}
    all_rows = sorted(
        saved["rows"].items(),
        key=lambda kv: (t_order[kv[0].split("|")[0]], order[kv[0].split("|")[1]], kv[0]),
    )
    all_scaling = sorted(saved["scaling"].values(), key=lambda r: (r["dim"], r["guide"]))

    text = [
        "# NeuTra benchmark",
        "",
        "Rows may come from separate runs of subsets (`--targets`, `--methods`); every run "
        "used the settings below unless its command says otherwise:",
        "",
        *sorted({f"- `python benchmarks/neutra.py {r.get('command', '')}`" for _, r in all_rows}),
        "",
        f"Machine: {platform.machine()}, {jax.device_count()} JAX device(s) "
        f"({jax.devices()[0].platform}), jax {jax.__version__}, numpyro {numpyro.__version__}. "
        f"SVI {args.svi_steps} steps (Adam, peak step {args.learning_rate}, Trace_ELBO; "
        "the `Adam step` column: constant or cosine decay to a tenth, the gradient "
        "clipping, and the particles per step where more than one); NUTS "
        f"{args.num_warmup} warmup + {args.num_samples} draws, one chain, at the target "
        "acceptance probability of the `NUTS accept` column. SVI loss: "
        f"{args.loss_particles}-particle estimate of the negative ELBO (funnel: KL in nats).",
        "",
        format_table([r for _, r in all_rows], COLUMNS),
    ]
    if all_scaling:
        text += [
            "",
            "## SVI step time against the latent dimension",
            "",
            "Per SVI step: median of 7 timings of a compiled scan of `--scaling-steps` steps "
            "(compilation excluded; the guides of one dimension timed in turn), model "
            "`x ~ N(0, I_D)`. On two or more cores XLA spreads these small kernels over "
            "threads and the times of the small guides scatter by tens of percent from run to "
            "run; on one core (`taskset -c 0`) they repeat to a few percent. Commands:",
            "",
            *sorted({f"- `{r.get('command', '')}`" for r in all_scaling}),
            "",
            format_table(all_scaling, SCALING_COLUMNS),
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n")
    store.write_text(json.dumps(saved, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
