"""Corner plots of draws: two sets of samples overlaid, coordinate by coordinate.

Built for NeuTra (:mod:`numpyro_coupling.neutra`): plain NUTS draws against NUTS on the
flow-reparameterised model, or data against flow samples. Same conventions as
:mod:`numpyro_coupling.plot`: draws on the ``ax=`` it is given (or a new figure) and
returns what it drew on; the "before" set in blue, the "after" set in orange.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from .plot_style import PALETTE, style_axes, subsample

__all__ = ["plot_pairs"]

_PAIR_COLORS = PALETTE[:2]  # the "before" and "after" sets of a pair plot


def _columns(samples) -> dict[str, np.ndarray]:
    """Flatten a dict of per-site draws, or an ``(n, d)`` array, to named 1-D columns."""
    if isinstance(samples, Mapping):
        cols = {}
        for name, value in samples.items():
            v = np.asarray(value, dtype=float)
            if v.ndim == 1:
                cols[name] = v
                continue
            flat = v.reshape(len(v), -1)
            for j in range(flat.shape[1]):
                cols[f"{name}[{j}]"] = flat[:, j]
        return cols
    v = np.asarray(samples, dtype=float)
    if v.ndim != 2:
        raise ValueError(
            f"samples must be a dict of arrays or an (n, d) array, got shape {v.shape}"
        )
    return {f"$x_{{{j}}}$": v[:, j] for j in range(v.shape[1])}


def _plot_range(columns, tail: float = 0.002):
    """Axis range covering all but the outermost ``tail`` of every set, padded by 5%."""
    lo = min(np.nanquantile(c, tail) for c in columns)
    hi = max(np.nanquantile(c, 1 - tail) for c in columns)
    pad = 0.05 * (hi - lo) or 0.5
    return float(lo - pad), float(hi + pad)


def plot_pairs(
    samples_before,
    samples_after=None,
    *,
    ax=None,
    coords: Sequence | None = None,
    max_coords: int = 4,
    labels: Sequence[str] = ("before", "after"),
    max_points: int | None = 1000,
    bins: int = 40,
):
    """Corner plot of a handful of coordinates, overlaying two sets of draws.

    Built for NeuTra: ``samples_before`` from plain NUTS and ``samples_after`` from NUTS
    on the flow-reparameterised model (or draws in the data space against draws in the
    latent space). Lower panels scatter pairs of coordinates, the diagonal shows the
    marginal histograms; each axis spans all but the outermost 0.2% of the draws.

    Args:
        samples_before: a dict ``site -> (n, ...)`` array (as ``mcmc.get_samples()``) or
            an ``(n, d)`` array.
        samples_after: optional second set, in the same format and with the same names.
        ax: a ``(k, k)`` array of Axes for ``k`` coordinates, or a single Axes, which
            then shows the scatter of the first two coordinates only.
        coords: names (dict input; vector sites are named ``"site[i]"``) or column
            indices (array input) of the coordinates to show; default: the first
            ``max_coords``.
        max_coords: number of coordinates shown when ``coords`` is not given.
        labels: legend labels of the two sets.
        max_points: scatter at most this many draws per set (a fixed random subset).
        bins: bins of the diagonal histograms.

    Returns:
        The ``(k, k)`` array of ``Axes`` (upper triangle hidden), or the single ``Axes``.

    Raises:
        ValueError: unknown coordinates, fewer than two coordinates, or a wrong ``ax``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> axes = plot_pairs(rng.normal(size=(100, 3)), rng.normal(size=(100, 3)))
        >>> axes.shape
        (3, 3)
    """
    sets = [_columns(samples_before)]
    if samples_after is not None:
        sets.append(_columns(samples_after))
    chosen = _chosen_coordinates(sets, coords, max_coords)
    draws = [{c: subsample(s[c], max_points) for c in chosen} for s in sets]
    if ax is not None and not isinstance(ax, (np.ndarray, list, tuple)):
        return _scatter_first_pair(ax, draws, chosen, labels)

    limits = {c: _plot_range([s[c] for s in sets]) for c in chosen}
    k = len(chosen)
    if ax is None:
        _, axes = plt.subplots(k, k, figsize=(2.3 * k + 0.5, 2.3 * k), layout="constrained")
    else:
        axes = np.asarray(ax, dtype=object)
        if axes.shape != (k, k):
            raise ValueError(
                f"need a ({k}, {k}) array of Axes for {k} coordinates, got {axes.shape}"
            )
    for r in range(k):
        for c in range(k):
            if c > r:
                axes[r, c].set_visible(False)
            elif r == c:
                _draw_marginal(axes[r, c], [s[chosen[r]] for s in sets], limits[chosen[r]], bins)
            else:
                _draw_pair(axes[r, c], [(d[chosen[c]], d[chosen[r]]) for d in draws])
            if c <= r:
                _label_corner_panel(axes[r, c], r, c, chosen)
    _share_corner_limits(axes, chosen, limits)
    if len(sets) > 1:
        handles = [Patch(color=_PAIR_COLORS[i], label=labels[i]) for i in range(len(sets))]
        axes[0, 0].figure.legend(handles=handles, loc="upper right", frameon=False)
    return axes


def _chosen_coordinates(sets, coords, max_coords: int) -> list[str]:
    """Names of the shown coordinates, checked against every sample set."""
    names = list(sets[0])
    if coords is None:
        chosen = names[:max_coords]
    else:
        chosen = [names[c] if isinstance(c, (int, np.integer)) else c for c in coords]
    missing = [c for c in chosen if any(c not in s for s in sets)]
    if missing:
        raise ValueError(f"coordinates {missing} not in every sample set; available: {names}")
    if len(chosen) < 2:
        raise ValueError(f"a pair plot needs at least two coordinates, got {chosen}")
    return chosen


def _scatter_first_pair(ax, draws, chosen, labels):
    """The single-Axes pair plot: a scatter of the first two coordinates of each set."""
    cx, cy = chosen[:2]
    for i, d in enumerate(draws):
        ax.scatter(d[cx], d[cy], s=4, alpha=0.4, color=_PAIR_COLORS[i], label=labels[i], lw=0)
    ax.set(xlabel=cx, ylabel=cy)
    if len(draws) > 1:
        ax.legend(frameon=False, markerscale=3)
    return style_axes(ax)


def _draw_marginal(ax, columns, limits, bins: int):
    """Diagonal panel: step histograms of one coordinate, one per sample set."""
    edges = np.linspace(*limits, bins + 1)
    for i, column in enumerate(columns):
        ax.hist(column, bins=edges, density=True, histtype="step", lw=1.5, color=_PAIR_COLORS[i])
    ax.set_yticks([])


def _draw_pair(ax, pairs):
    """Lower panel: a scatter of ``(x, y)`` draws, one pair of columns per sample set."""
    for i, (x, y) in enumerate(pairs):
        ax.scatter(x, y, s=3, alpha=0.35, color=_PAIR_COLORS[i], lw=0)


def _label_corner_panel(ax, r: int, c: int, chosen):
    """Labels on the outer panels of the corner only; inner panels hide their tick labels."""
    style_axes(ax, grid=False)
    if r == len(chosen) - 1:
        ax.set_xlabel(chosen[c])
    else:
        ax.tick_params(labelbottom=False)
    if c == 0 and r > 0:
        ax.set_ylabel(chosen[r])
    elif c > 0:
        ax.tick_params(labelleft=False)


def _share_corner_limits(axes, chosen, limits):
    """One range per coordinate, shared by its column and its row, so panels line up."""
    for j, name in enumerate(chosen):
        lo, hi = limits[name]
        for r in range(j, len(chosen)):
            axes[r, j].set_xlim(lo, hi)
        for c in range(j):
            axes[j, c].set_ylim(lo, hi)
