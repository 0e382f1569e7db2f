"""The look shared by every figure: the colour palette, axes styling and point thinning.

Every figure function of :mod:`numpyro_coupling.plot` and :mod:`numpyro_coupling.pair_plot`
draws with these, so all figures share one palette and one style, and none of them
touches matplotlib's global settings.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["PALETTE", "new_axes", "style_axes", "subsample"]

#: Colour cycle shared by every figure (colour-blind friendly Okabe-Ito hues).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")


def style_axes(ax, grid: bool = True):
    """Hide the top and right spines of ``ax`` and, with ``grid``, draw a light grid.

    Args:
        ax: a matplotlib ``Axes``.
        grid: draw a light grid behind the data.

    Returns:
        ``ax``.

    Example:
        >>> import matplotlib.pyplot as plt
        >>> ax = style_axes(plt.figure().add_subplot())
        >>> ax.spines["top"].get_visible()
        False
    """
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if grid:
        ax.grid(True, color="0.9", lw=0.8)
        ax.set_axisbelow(True)
    return ax


def new_axes(ax, figsize):
    """``ax`` itself, or the ``Axes`` of a new figure of ``figsize`` when ``ax`` is ``None``.

    Args:
        ax: a matplotlib ``Axes`` or ``None``.
        figsize: ``(width, height)`` in inches of the new figure.

    Returns:
        An ``Axes``.

    Example:
        >>> ax = new_axes(None, (3, 2))
        >>> new_axes(ax, (3, 2)) is ax, ax.figure.get_size_inches().tolist()
        (True, [3.0, 2.0])
    """
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def subsample(x: np.ndarray, max_points: int | None, seed: int = 0) -> np.ndarray:
    """At most ``max_points`` rows of ``x``: a fixed random subset, in their original order.

    Args:
        x: ``(n, ...)`` array.
        max_points: the most rows kept (``None``: all).
        seed: seed of the subset, so a figure is the same on every call.

    Returns:
        ``x`` itself, or ``(max_points, ...)`` of its rows.

    Example:
        >>> import numpy as np
        >>> subsample(np.arange(10), 3).shape, subsample(np.arange(10), None).shape
        ((3,), (10,))
    """
    if max_points is None or len(x) <= max_points:
        return x
    idx = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
    return x[np.sort(idx)]
