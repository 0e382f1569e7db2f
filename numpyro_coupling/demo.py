"""NeuTra on Neal's funnel: plain NUTS against NUTS warped by an ``AutoCouplingFlow``.

Run ``python -m numpyro_coupling.demo`` (or the console script ``numpyro-coupling-demo``).
The default run fits the guide by SVI, samples with both samplers, prints a side-by-side
table (ESS, ESS per gradient, divergences, time) and writes ``neutra_funnel.png`` to
``--out``. ``--quick`` is a smoke test with tiny budgets.

The helpers :func:`compare_samplers`, :func:`format_table` and :func:`plot_comparison`
are shared by the scripts in ``examples/``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .checks import as_key
from .compilation_cache import enable_compilation_cache
from .guide import AutoCouplingFlow
from .neutra import NUM_CHAINS, neutra_mcmc, nuts_mcmc, sampling_efficiency
from .targets import funnel, funnel_draws
from .transformers import TRANSFORMERS

__all__ = [
    "add_budget_arguments",
    "budgets",
    "comma_floats",
    "compare_samplers",
    "format_table",
    "main",
    "plot_comparison",
    "use_compilation_cache",
]


def compare_samplers(
    model,
    *args,
    guide: dict | None = None,
    fit_kwargs: dict | None = None,
    num_warmup: int = 500,
    num_samples: int = 500,
    key=None,
    progress_bar: bool = True,
    nuts_kwargs: dict | None = None,
    **model_kwargs,
) -> dict:
    """Plain NUTS and NeuTra (``AutoCouplingFlow`` + NUTS) on one model, same budget.

    Args:
        model: the NumPyro model.
        *args: model arguments.
        guide: :class:`~numpyro_coupling.AutoCouplingFlow` options.
        fit_kwargs: options of :func:`~numpyro_coupling.fit_guide` (``steps``, ``temper``,
            ``num_particles``, ...).
        num_warmup: NUTS warmup iterations (both samplers).
        num_samples: NUTS draws (both samplers).
        key: PRNG key (default ``jax.random.key(0)``).
        progress_bar: show progress bars.
        nuts_kwargs: extra ``NUTS`` arguments (both samplers), e.g.
            ``{"target_accept_prob": 0.95}``.
        **model_kwargs: model keyword arguments.

    Returns:
        dict with ``"rows"`` (one dict per sampler: ``method``, ``svi_loss``,
        ``svi_seconds`` and the fields of
        :func:`~numpyro_coupling.sampling_efficiency`), ``"nuts"`` and ``"neutra"``
        (``(mcmc, idata)`` pairs), ``"guide"``, ``"params"`` and ``"losses"``.
    """
    key_nuts, key_neutra = jr.split(as_key(key))
    common = {
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "progress_bar": progress_bar,
        "nuts_kwargs": nuts_kwargs,
    }
    nuts = nuts_mcmc(model, *args, key=key_nuts, **common, **model_kwargs)
    neutra = neutra_mcmc(
        model,
        *args,
        guide=AutoCouplingFlow(model, **(guide or {})),
        fit_kwargs=fit_kwargs,
        key=key_neutra,
        **common,
        **model_kwargs,
    )
    losses = neutra[1].svi["loss"].values
    tail = losses[-max(len(losses) // 10, 1) :]
    rows = [
        {"method": "NUTS", "svi_loss": np.nan, "svi_seconds": 0.0} | sampling_efficiency(nuts[1]),
        {
            "method": "NeuTra + AutoCouplingFlow",
            "svi_loss": float(np.mean(tail)),
            "svi_seconds": neutra[1].attrs["svi_seconds"],
        }
        | sampling_efficiency(neutra[1]),
    ]
    return {
        "rows": rows,
        "nuts": nuts,
        "neutra": neutra,
        "guide": neutra[0].guide,
        "params": neutra[0].guide_params,
        "losses": losses,
    }


_COLUMNS = (
    ("method", "method", "{}"),
    ("svi_loss", "SVI loss", "{:.3f}"),
    ("svi_seconds", "SVI s", "{:.1f}"),
    ("k_hat", "guide k-hat", "{:.2f}"),
    ("min_ess", "min ESS", "{:.0f}"),
    ("max_rhat", "max R-hat", "{:.3f}"),
    ("total_grads", "gradients (all)", "{:d}"),
    ("ess_per_total_grad", "ESS/grad (all)", "{:.4f}"),
    ("ess_per_grad", "ESS/grad (sampling)", "{:.4f}"),
    ("divergences", "divergences", "{:d}"),
    ("seconds", "MCMC s", "{:.1f}"),
    ("ess_per_second", "ESS/s", "{:.1f}"),
)


def format_table(rows, columns=_COLUMNS) -> str:
    """A markdown table of result rows (missing or NaN entries print as ``-``).

    Example:
        >>> print(format_table([{"method": "NUTS", "min_ess": 12.3}],
        ...                    [("method", "method", "{}"), ("min_ess", "min ESS", "{:.0f}")]))
        | method | min ESS |
        |---|---|
        | NUTS | 12 |
    """
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [head, "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            missing = value is None or (isinstance(value, float) and not np.isfinite(value))
            cells.append("-" if missing else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(
    result: dict,
    *,
    coords,
    title: str,
    reference=None,
    latent_coords=(0, 1),
    limits=None,
    log_density=None,
    log_y: bool = False,
):
    """Three panels: posterior pairs (NUTS vs NeuTra), the warped latent space, SVI loss.

    Args:
        result: the output of :func:`compare_samplers`.
        coords: two ``(site, index)`` pairs (index ``None`` for scalar sites) for the
            posterior panel's x and y axes.
        title: figure title.
        reference: optional ``(n, 2)`` exact draws drawn faintly behind the panel.
        latent_coords: the two warped-latent coordinates to show.
        limits: optional ``((xmin, xmax), (ymin, ymax))`` of the posterior panel.
        log_density: optional ``f((n, 2)) -> (n,)`` drawn as contours behind the draws
            (needs ``limits``).
        log_y: logarithmic y-axis on the posterior panel (a scale parameter).

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    from . import plot as ncplot
    from .plot_style import PALETTE

    def column(idata, site, index):
        v = np.asarray(idata.posterior[site].values)
        v = v.reshape(-1, *v.shape[2:])
        return v if index is None else v[:, index]

    def label(site, index):
        return site if index is None else f"{site}[{index}]"

    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.3), layout="constrained")
    ax = axes[0]
    if log_density is not None and limits is not None:
        gx, gy = np.meshgrid(np.linspace(*limits[0], 200), np.linspace(*limits[1], 200))
        grid = jnp.stack([jnp.asarray(gx.ravel()), jnp.asarray(gy.ravel())], -1)
        dens = np.exp(np.asarray(log_density(grid))).reshape(gx.shape)
        ax.contour(gx, gy, dens, levels=6, colors="0.6", linewidths=0.8)
    if reference is not None:
        ref = np.asarray(reference)
        ax.scatter(ref[:, 0], ref[:, 1], s=3, color="0.8", lw=0, label="exact", zorder=0)
    for (name, idata), color in zip(
        [("NUTS", result["nuts"][1]), ("NeuTra", result["neutra"][1])],
        [PALETTE[0], PALETTE[1]],
    ):
        x = column(idata, *coords[0])
        y = column(idata, *coords[1])
        ax.scatter(x, y, s=4, alpha=0.5, color=color, lw=0, label=name)
    ax.set(xlabel=label(*coords[0]), ylabel=label(*coords[1]), title="posterior draws")
    if log_y:
        ax.set_yscale("log")
    if limits is not None:
        ax.set(xlim=limits[0], ylim=limits[1])
    ax.legend(frameon=False, markerscale=3)

    ax = axes[1]
    mcmc = result["neutra"][0]
    z = np.asarray(mcmc.get_samples()[f"{result['guide'].prefix}_shared_latent"])
    i, j = latent_coords
    ax.scatter(z[:, i], z[:, j], s=4, alpha=0.5, color=PALETTE[1], lw=0)
    t = np.linspace(0, 2 * np.pi, 200)
    for r in (1, 2, 3):
        ax.plot(r * np.cos(t), r * np.sin(t), color="black", lw=0.8, ls="--")
    ax.set(
        xlabel=f"$z_{{{i}}}$",
        ylabel=f"$z_{{{j}}}$",
        title="warped space seen by NUTS",
        aspect="equal",
    )

    ncplot.plot_losses(
        result["losses"],
        ax=axes[2],
        smooth=max(len(result["losses"]) // 50, 1),
        xlabel="SVI step",
        ylabel="negative ELBO",
        title="SVI loss",
    )
    lo, hi = np.quantile(result["losses"], [0.0, 0.95])
    axes[2].set_ylim(lo - 0.1 * (hi - lo), hi)
    fig.suptitle(title)
    return fig


def comma_floats(text: str) -> list[float]:
    """Parse a command-line list of numbers, ``"0.1,0.3,0.6"`` (``""``: none).

    Example:
        >>> comma_floats("0.1,0.3,0.6"), comma_floats("")
        ([0.1, 0.3, 0.6], [])
    """
    return [float(b) for b in text.split(",") if b]


def probability(text: str) -> float:
    """Parse a command-line probability strictly between 0 and 1 (NUTS' target acceptance).

    Example:
        >>> probability("0.95")
        0.95
    """
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {text}")
    return value


#: NumPyro's default ``target_accept_prob`` for NUTS.
DEFAULT_TARGET_ACCEPT = 0.8


def add_budget_arguments(
    parser,
    *,
    svi_steps,
    num_warmup,
    num_samples,
    transformer="loc_scale",
    temper=None,
    target_accept=DEFAULT_TARGET_ACCEPT,
):
    """The command-line options shared by the demo and the NeuTra examples."""
    parser.add_argument("--out", default="out", help="directory for the figures (default out/)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    parser.add_argument(
        "--svi-steps", type=int, default=None, help=f"SVI steps (default {svi_steps})"
    )
    parser.add_argument(
        "--num-warmup", type=int, default=None, help=f"NUTS warmup (default {num_warmup})"
    )
    parser.add_argument(
        "--num-samples", type=int, default=None, help=f"NUTS draws (default {num_samples})"
    )
    parser.add_argument(
        "--transformer",
        default=transformer,
        choices=sorted(TRANSFORMERS),
        help=f"coupling transformer of the guide (default {transformer})",
    )
    parser.add_argument("--n-layers", type=int, default=None, help="coupling layers")
    default = ",".join(f"{b:g}" for b in temper or ())
    parser.add_argument(
        "--temper",
        type=comma_floats,
        default=None,
        help="inverse temperatures of the SVI warm-up phases, e.g. 0.1,0.3,0.6 "
        f"('' for none; default {default or 'none'})",
    )
    parser.add_argument(
        "--target-accept",
        type=probability,
        default=target_accept,
        help=f"NUTS target acceptance probability, both samplers (default {target_accept:g})",
    )
    parser.add_argument(
        "--particles", type=int, default=1, help="guide draws per SVI step (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="do not keep compiled programs on disk for the next run "
        "(default: kept in $NUMPYRO_COUPLING_CACHE_DIR or ~/.cache/numpyro_coupling/xla)",
    )
    parser.set_defaults(_budget=(svi_steps, num_warmup, num_samples), _temper=list(temper or ()))


def budgets(args) -> dict:
    """Keyword arguments of :func:`compare_samplers` from parsed :func:`add_budget_arguments`."""
    svi_steps, num_warmup, num_samples = args._budget
    quick = args.quick
    guide = {"transformer": args.transformer}
    if quick:
        guide |= {"n_layers": 2, "nn_width": 8}
    if args.n_layers is not None:
        guide["n_layers"] = args.n_layers
    # Without --temper, the script's own phases.
    temper = args._temper if args.temper is None else args.temper
    return {
        "guide": guide,
        "fit_kwargs": {
            "steps": args.svi_steps or (200 if quick else svi_steps),
            "temper": temper or None,
            "num_particles": args.particles,
        },
        "num_warmup": args.num_warmup or (100 if quick else num_warmup),
        "num_samples": args.num_samples or (100 if quick else num_samples),
        "key": jr.key(args.seed),
        "progress_bar": not args.no_progress,
        "nuts_kwargs": {"target_accept_prob": args.target_accept},
    }


def use_compilation_cache(args) -> Path | None:
    """Keep compiled programs on disk (:func:`~numpyro_coupling.enable_compilation_cache`)
    unless the run was given ``--no-cache``; returns the cache directory, if any.

    A directory that cannot be made (a read-only home, say) leaves the run uncached, with
    a warning: the cache only saves time.
    """
    if args.no_cache:
        return None
    try:
        return enable_compilation_cache()
    except OSError as error:
        warnings.warn(f"compiled programs are not kept for the next run: {error}", stacklevel=2)
        return None


def _funnel_xv(dim):
    draws = funnel_draws(3000, dim)
    return np.stack([draws["x"][:, 0], draws["v"]], -1)


def main(argv=None):
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="numpyro-coupling-demo",
        description="NeuTra with AutoCouplingFlow on Neal's funnel, against plain NUTS.",
    )
    parser.add_argument("--dim", type=int, default=10, help="funnel dimension (default 10)")
    add_budget_arguments(parser, svi_steps=4000, num_warmup=500, num_samples=500)
    args = parser.parse_args(argv)
    cache = use_compilation_cache(args)
    kw = budgets(args)
    result = compare_samplers(funnel, dim=args.dim, **kw)
    n = kw["fit_kwargs"]["num_particles"]
    particles = f" ({n} draws each)" if n > 1 else ""
    print(
        f"\nNeal's funnel, {args.dim}-D: SVI {kw['fit_kwargs']['steps']} steps{particles}, NUTS "
        f"{kw['num_warmup']} warmup + {kw['num_samples']} draws x {NUM_CHAINS} chains (the "
        "funnel is normalised, so its SVI loss is KL(q || p) in nats)\n"
    )
    print(format_table(result["rows"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_comparison(
        result,
        coords=[("x", 0), ("v", None)],
        title=f"Neal's funnel ({args.dim}-D): NUTS vs NeuTra + AutoCouplingFlow",
        reference=_funnel_xv(args.dim),
        limits=((-20, 20), (-10, 10)),
    )
    path = out / "neutra_funnel.png"
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")
    if cache is not None:
        print(f"compiled programs kept in {cache} for the next run (--no-cache: not kept)")
    # None: the console-script wrapper passes the return value to sys.exit.


if __name__ == "__main__":
    main()
