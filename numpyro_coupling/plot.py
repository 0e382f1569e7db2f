"""Figures for coupling flows: densities, Gaussianised marginals, curves and diagnostics.

Every function draws on the ``ax=`` it is given (or on a new figure), returns the
``Axes`` it drew on (an array of ``Axes`` for multi-panel figures; ``.figure`` reaches
the ``Figure``) and leaves matplotlib's global settings alone.

Colour convention: data and "before" in blue, model output and "after" in orange, the
``N(0, 1)`` reference as a dashed black line; in masks, passive (context) coordinates
are blue and active (transformed) ones orange. Corner plots of draws are
:mod:`numpyro_coupling.pair_plot`'s; the shared palette and styling,
:mod:`numpyro_coupling.plot_style`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from .inspection import final_kernel_magnitudes, layer_masks
from .plot_style import PALETTE, new_axes, style_axes, subsample

__all__ = [
    "plot_density",
    "plot_kernel_magnitudes",
    "plot_latent_marginals",
    "plot_losses",
    "plot_mask",
    "plot_tc_trace",
]

PASSIVE_COLOR, ACTIVE_COLOR = PALETTE[0], PALETTE[1]
_REFERENCE_KW = {"color": "black", "lw": 1.4, "ls": "--"}


# --- shared helpers -----------------------------------------------------------------
def _standard_normal_pdf(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


@eqx.filter_jit
def _log_prob(flow, x):
    return flow.log_prob(x)


@eqx.filter_jit
def _to_latent(flow, x):
    if hasattr(flow, "to_latent"):
        return flow.to_latent(x)
    return flow.transform(x)


def _as_named(values, labels, what: str) -> dict:
    """Normalise "one array | dict label->array | sequence of arrays" to a dict."""
    if isinstance(values, Mapping):
        if labels is not None:
            raise ValueError(f"pass labels only with a sequence of {what}, not with a dict")
        return dict(values)
    arr = values if isinstance(values, (list, tuple)) else [values]
    if labels is None:
        labels = [None] * len(arr) if len(arr) == 1 else [f"{what} {i}" for i in range(len(arr))]
    elif isinstance(labels, str):
        labels = [labels]
    if len(labels) != len(arr):
        raise ValueError(f"got {len(arr)} {what} but {len(labels)} labels")
    return dict(zip(labels, arr))


# --- densities ------------------------------------------------------------------------
def plot_density(
    flow,
    data=None,
    *,
    ax=None,
    bounds=None,
    n_grid: int = 120,
    levels: int = 16,
    cmap: str = "viridis",
    max_points: int | None = 2000,
    title: str | None = None,
    colorbar: bool = False,
):
    """Filled contours of a 2-D flow's density, with the data on top.

    Args:
        flow: anything with ``log_prob(x: (n, 2)) -> (n,)``, e.g. a
            :class:`~numpyro_coupling.CouplingFlow` over ``(2,)`` events.
        data: optional ``(n, 2)`` points drawn as small white dots.
        ax: Axes to draw on (default: a new figure).
        bounds: ``((x_min, x_max), (y_min, y_max))``; default: the data's range padded by
            15%, or ``[-3, 3]`` on each axis without data.
        n_grid: grid points per axis.
        levels: number of contour levels.
        cmap: colour map of the density.
        max_points: draw at most this many data points (a fixed random subset).
        title: Axes title.
        colorbar: add a colour bar of the density values.

    Returns:
        The ``Axes``.

    Raises:
        ValueError: ``data`` is not ``(n, 2)``, or ``bounds`` is malformed.

    Example:
        >>> import jax.random as jr
        >>> from numpyro_coupling import coupling_flow
        >>> flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2)
        >>> ax = plot_density(flow, n_grid=20)
        >>> [float(v) for v in ax.get_xlim()]
        [-3.0, 3.0]
    """
    if data is not None:
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != 2:
            raise ValueError(
                f"plot_density draws 2-D densities; data must be (n, 2), got {data.shape}"
            )
    bounds = _density_bounds(bounds, data)
    gx, gy, density = _density_on_grid(flow, bounds, n_grid)

    ax = new_axes(ax, (4.6, 4.2))
    filled = ax.contourf(gx, gy, density, levels=levels, cmap=cmap)
    if colorbar:
        ax.figure.colorbar(filled, ax=ax, label="density", shrink=0.85)
    if data is not None:
        pts = subsample(data, max_points)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, color="white", alpha=0.35, linewidths=0)
    ax.set(xlim=tuple(bounds[0].tolist()), ylim=tuple(bounds[1].tolist()))
    ax.set(xlabel="$x_0$", ylabel="$x_1$")
    ax.set_aspect("equal", adjustable="box")
    if title is not None:
        ax.set_title(title)
    return style_axes(ax, grid=False)


def _density_bounds(bounds, data) -> np.ndarray:
    """``(2, 2)`` plot bounds: as given, else the data's range padded by 15%, else ``[-3, 3]``."""
    if bounds is None:
        if data is None:
            bounds = ((-3.0, 3.0), (-3.0, 3.0))
        else:
            lo, hi = data.min(0), data.max(0)
            pad = 0.15 * (hi - lo)
            bounds = tuple(zip(lo - pad, hi + pad))
    bounds = np.asarray(bounds, dtype=float)
    if bounds.shape != (2, 2):
        raise ValueError(f"bounds must be ((x_min, x_max), (y_min, y_max)), got {bounds.tolist()}")
    return bounds


def _density_on_grid(flow, bounds: np.ndarray, n_grid: int):
    """``(gx, gy, density)``, each ``(n_grid, n_grid)``; non-finite densities read as 0."""
    gx, gy = np.meshgrid(np.linspace(*bounds[0], n_grid), np.linspace(*bounds[1], n_grid))
    grid = jnp.asarray(np.column_stack([gx.ravel(), gy.ravel()]), dtype=jnp.zeros(()).dtype)
    density = np.exp(np.asarray(_log_prob(flow, grid), dtype=float)).reshape(gx.shape)
    return gx, gy, np.where(np.isfinite(density), density, 0.0)


def plot_latent_marginals(
    flow,
    data,
    *,
    ax=None,
    bins: int = 50,
    max_dims: int = 6,
    span: float = 4.0,
):
    """Histogram of each latent coordinate of ``flow.to_latent(data)`` against ``N(0, 1)``.

    A flow that Gaussianises the data puts every panel on the dashed reference curve.
    Each title reports the coordinate's mean and standard deviation.

    Args:
        flow: a flow with ``to_latent`` (or any bijection with ``transform``) from data
            to latent space; ``None`` when ``data`` already are latent values.
        data: ``(n, d)`` points in data space.
        ax: one Axes per shown coordinate (a sequence, or a single Axes for ``d = 1``);
            default: a new row of panels.
        bins: histogram bins.
        max_dims: show at most the first ``max_dims`` coordinates.
        span: histograms and the reference cover ``[-span, span]``.

    Returns:
        An array of ``Axes``, one per shown coordinate.

    Raises:
        ValueError: ``data`` is not 2-D, or ``ax`` holds the wrong number of Axes.

    Example:
        >>> import numpy as np
        >>> axes = plot_latent_marginals(None, np.random.default_rng(0).normal(size=(200, 3)))
        >>> len(axes)
        3
    """
    x = jnp.asarray(data)
    if x.ndim != 2:
        raise ValueError(f"data must be (n, d), got shape {tuple(x.shape)}")
    z = np.asarray(x if flow is None else _to_latent(flow, x), dtype=float)
    n_show = min(z.shape[1], max_dims)
    if ax is None:
        _, axes = plt.subplots(
            1, n_show, figsize=(2.9 * n_show + 0.4, 2.8), sharey=True, layout="constrained"
        )
    else:
        axes = ax
    axes = np.atleast_1d(np.asarray(axes, dtype=object)).ravel()
    if len(axes) != n_show:
        raise ValueError(f"need {n_show} Axes (one per shown coordinate), got {len(axes)}")
    grid = np.linspace(-span, span, 200)
    for i, a in enumerate(axes):
        zi = z[:, i]
        a.hist(zi, bins=bins, range=(-span, span), density=True, color=PALETTE[0], alpha=0.75)
        a.plot(grid, _standard_normal_pdf(grid), **_REFERENCE_KW, label="$\\mathcal{N}(0, 1)$")
        mean = round(float(zi.mean()), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
        a.set_title(f"$z_{{{i}}}$: mean {mean:+.2f}, std {zi.std():.2f}", fontsize=10)
        a.set_xlabel(f"$z_{{{i}}}$")
        a.set_xlim(-span, span)
        style_axes(a)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8, frameon=False, loc="upper left")
    return axes


# --- curves -----------------------------------------------------------------------------
def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    # Trailing mean over the last `window` values (shorter at the start), NaN-free input.
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_losses(
    losses,
    *,
    ax=None,
    labels=None,
    smooth: int | None = None,
    log_scale: bool = False,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str | None = None,
):
    """Training-loss curves.

    Args:
        losses: one 1-D array, a sequence of 1-D arrays, or a dict ``label -> 1-D array``.
        ax: Axes to draw on (default: a new figure).
        labels: legend labels for a sequence of arrays (or one label for one array).
        smooth: width of a trailing moving average; the raw curve is then drawn faint
            behind the smoothed one. ``None`` or ``1`` draws the raw curve only.
        log_scale: logarithmic y-axis (all losses must then be positive).
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: Axes title.

    Returns:
        The ``Axes``.

    Raises:
        ValueError: a loss array is not 1-D, ``smooth < 1``, or labels do not match.

    Example:
        >>> ax = plot_losses({"affine": [3.0, 2.0, 1.5], "spline": [3.0, 1.8, 1.2]}, smooth=2)
        >>> [t.get_text() for t in ax.get_legend().get_texts()]
        ['affine', 'spline']
    """
    if smooth is not None and smooth < 1:
        raise ValueError(f"smooth must be a window of >= 1 steps, got {smooth}")
    if isinstance(losses, (list, tuple)) and losses and all(np.ndim(v) == 0 for v in losses):
        losses = np.asarray(losses)  # a plain list of numbers is one curve
    curves = _as_named(losses, labels, "losses")
    ax = new_axes(ax, (5.6, 3.6))
    for i, (label, y) in enumerate(curves.items()):
        y = np.asarray(y, dtype=float)
        if y.ndim != 1:
            raise ValueError(f"each loss curve must be 1-D, got shape {y.shape} for {label!r}")
        color = PALETTE[i % len(PALETTE)]
        steps = np.arange(len(y))
        if smooth is not None and smooth > 1:
            ax.plot(steps, y, color=color, lw=0.8, alpha=0.25)
            y = _moving_average(y, smooth)
        ax.plot(steps, y, color=color, lw=1.8, label=label)
    if log_scale:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title is not None:
        ax.set_title(title)
    if any(label is not None for label in curves):
        ax.legend(frameon=False)
    return style_axes(ax)


def plot_tc_trace(
    trace,
    *,
    ax=None,
    label: str | None = None,
    start: int = 0,
    xlabel: str = "RBIG layers applied",
    ylabel: str = "total correlation (nats)",
    title: str | None = None,
):
    """Total correlation left after each RBIG layer.

    A Gaussianising sequence drives the curve to 0 (the dotted line): the coordinates
    have become independent. ``RBIGFlow.tc_trace`` is exactly this input.

    Args:
        trace: 1-D array; ``trace[0]`` is the data's total correlation, ``trace[l]`` what
            is left after ``l`` layers.
        ax: Axes to draw on (default: a new figure).
        label: legend label for this trace (lets several traces share one Axes).
        start: number of layers applied at ``trace[0]`` (0 for the untransformed data).
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: Axes title.

    Returns:
        The ``Axes``.

    Raises:
        ValueError: ``trace`` is not 1-D.

    Example:
        >>> ax = plot_tc_trace([0.9, 0.3, 0.05, 0.01])
        >>> ax.get_xlabel()
        'RBIG layers applied'
    """
    trace = np.asarray(trace, dtype=float)
    if trace.ndim != 1:
        raise ValueError(f"trace must be a 1-D array, got shape {trace.shape}")
    ax = new_axes(ax, (5.0, 3.4))
    layers = np.arange(start, start + len(trace))
    n_existing = len(ax.get_lines())
    ax.axhline(0.0, color="0.4", lw=1.0, ls=":")
    color = PALETTE[(n_existing // 2) % len(PALETTE)]
    ax.plot(layers, trace, "o-", color=color, lw=1.8, ms=4, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if title is not None:
        ax.set_title(title)
    if label is not None:
        ax.legend(frameon=False)
    return style_axes(ax)


# --- conditioner diagnostics ------------------------------------------------------------
def plot_kernel_magnitudes(
    flows,
    *,
    ax=None,
    labels=None,
    title: str | None = None,
):
    """Bars of ``max |final conditioner kernel|`` per coupling layer.

    Comparing a flow before and after training shows which couplings switched their
    conditioners on. Exact zeros (purely diagonal layers) are drawn as open circles.

    Args:
        flows: one flow, a sequence of flows, or a dict ``label -> flow``; each is walked
            for coupling layers as in
            :func:`~numpyro_coupling.inspection.final_kernel_magnitudes`.
        ax: Axes to draw on (default: a new figure).
        labels: legend labels for a sequence of flows.
        title: Axes title.

    Returns:
        The ``Axes``.

    Example:
        >>> import jax.random as jr
        >>> from numpyro_coupling import coupling_flow
        >>> flow = coupling_flow(jr.key(0), (2,), n_layers=2, zero_init=False)
        >>> ax = plot_kernel_magnitudes({"random init": flow})
        >>> len(ax.patches)
        2
    """
    named = _as_named(flows, labels, "flows")
    mags = {label: final_kernel_magnitudes(f) for label, f in named.items()}
    ax = new_axes(ax, (5.2, 3.4))
    n_groups = max(len(m) for m in mags.values())
    width = 0.8 / len(mags)
    for i, (label, m) in enumerate(mags.items()):
        offset = (i - (len(mags) - 1) / 2) * width
        x, color = np.arange(len(m)) + offset, PALETTE[i % len(PALETTE)]
        ax.bar(x, m, width, color=color, label=label)
        # a zero-height bar is invisible: mark exact zeros (switched-off conditioners)
        zero = m == 0
        ax.scatter(
            x[zero],
            m[zero],
            marker="o",
            s=28,
            facecolor="white",
            edgecolor=color,
            linewidths=1.5,
            zorder=3,
            clip_on=False,
        )
    ax.set_xticks(np.arange(n_groups))
    ax.set(xlabel="coupling layer", ylabel="max |final kernel|")
    if title is not None:
        ax.set_title(title)
    if any(label is not None for label in mags):
        ax.legend(frameon=False)
    return style_axes(ax)


# --- masks ------------------------------------------------------------------------------
def plot_mask(mask, *, ax=None, title: str | None = None, legend: bool = True):
    """Passive/active picture of a coupling mask.

    Args:
        mask: a boolean array (``True`` = active): 1-D for a vector event, 2-D for an
            image event or for a stack of vector masks (rows = layers); a coupling layer
            (its ``.mask``); or a whole flow, drawn as
            :func:`~numpyro_coupling.inspection.layer_masks` (rows = coupling layers,
            columns = coordinates).
        ax: Axes to draw on (default: a new figure).
        title: Axes title.
        legend: add the passive/active legend.

    Returns:
        The ``Axes``.

    Raises:
        ValueError: the mask has more than two dimensions (draw one channel at a time).

    Example:
        >>> from numpyro_coupling import checkerboard_mask
        >>> ax = plot_mask(checkerboard_mask(4, 4))
        >>> ax.images[0].get_array().shape
        (4, 4)
    """
    m, xlabel, ylabel = _mask_and_labels(mask)
    image = m.reshape(1, -1) if m.ndim == 1 else m
    n_rows, n_cols = image.shape
    if ax is None:
        figsize = (min(0.45 * n_cols + 1.5, 9.0), min(0.45 * n_rows + 1.5, 7.0))
        ax = new_axes(None, (max(figsize[0], 3.0), max(figsize[1], 2.0)))
    _draw_mask_cells(ax, image, vector=m.ndim == 1)
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    if legend:
        _mask_legend(ax)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax


def _mask_and_labels(mask) -> tuple[np.ndarray, str, str | None]:
    """A mask, coupling layer or flow as a 1-D/2-D boolean array, with its axis labels."""
    xlabel, ylabel = "coordinate", None
    if hasattr(mask, "bijection") or hasattr(mask, "bijections"):
        mask, tracked = layer_masks(mask)
        xlabel = "data coordinate" if tracked else "coupling input coordinate"
        ylabel = "coupling layer"
    elif hasattr(mask, "mask"):
        mask = mask.mask
    m = np.asarray(mask).astype(bool)
    if m.ndim == 0 or m.ndim > 2:
        raise ValueError(f"plot_mask draws 1-D or 2-D masks, got shape {m.shape}")
    if m.ndim == 2 and ylabel is None and m.shape[0] > 1:
        xlabel, ylabel = "column", "row"
    return m, xlabel, ylabel


def _draw_mask_cells(ax, image: np.ndarray, vector: bool):
    """Draw a 2-D boolean ``image`` as passive/active cells; ``vector``: one row, no y ticks."""
    n_rows, n_cols = image.shape
    cmap = ListedColormap([PASSIVE_COLOR, ACTIVE_COLOR])
    ax.imshow(image.astype(int), cmap=cmap, vmin=0, vmax=1, aspect="equal")
    # white cell borders make single coordinates countable
    ax.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows, 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
    if n_cols <= 16:
        ax.set_xticks(np.arange(n_cols))
    if vector:
        ax.set_yticks([])
    elif n_rows <= 16:
        ax.set_yticks(np.arange(n_rows))


def _mask_legend(ax):
    handles = [
        Patch(color=PASSIVE_COLOR, label="passive (context)"),
        Patch(color=ACTIVE_COLOR, label="active (transformed)"),
    ]
    ax.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.02, 0.5),
        frameon=False,
        fontsize=8,
    )
