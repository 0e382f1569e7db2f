"""Ties: refusing or dequantising heavily tied columns, for estimators of continuous data.

Rounded or discrete data, or a point mass, have no density: greedy RBIG
(:mod:`numpyro_coupling.rbig`) and the information estimators built on it
(:mod:`numpyro_coupling.information`) would chase the ties and report hundreds of nats.
:func:`check_continuous` refuses such data with an error naming the argument;
:func:`dequantize_ties` spreads each tied column by uniform noise of its grid width.
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr
import numpy as np

__all__ = [
    "MAX_TIE_FRACTION",
    "add_grid_noise",
    "check_continuous",
    "dequantize_ties",
    "grid_widths",
]

#: A column whose most frequent value holds more than this fraction of the rows is
#: *heavily tied* (rounded or discrete data, or a point mass): RBIG needs continuous data.
#: On independent normals rounded to a grid, a 4% tie still estimates a total correlation
#: of 0.00 nats, an 8% tie 0.16 nats and a 19% tie 88 nats (true value 0).
MAX_TIE_FRACTION = 0.05


def _ties(host):
    """Per column of ``host: (n, d)``: ``(most frequent value, its count, distinct values)``."""
    out = []
    for column in host.T:
        values, counts = np.unique(column, return_counts=True)
        top = int(np.argmax(counts))
        out.append((float(values[top]), int(counts[top]), len(values)))
    return out


def _tied(host):
    """``[(column, value, count, n_distinct), ...]`` of the heavily tied columns."""
    n = host.shape[0]
    return [
        (j, value, count, distinct)
        for j, (value, count, distinct) in enumerate(_ties(host))
        if count >= 2 and count > MAX_TIE_FRACTION * n
    ]


def grid_widths(host):
    """Per column: the median gap between consecutive distinct values if it is heavily
    tied (the grid width of rounded data), else 0 (the column is left as it is).

    Args:
        host: ``(n, d)`` NumPy samples.

    Returns:
        ``(d,)`` NumPy array of noise widths.

    Example:
        >>> import numpy as np
        >>> X = np.c_[np.round(np.linspace(-3, 3, 200)), np.linspace(-3, 3, 200)]
        >>> grid_widths(X).tolist()
        [1.0, 0.0]
    """
    widths = np.zeros(host.shape[1])
    for j, *_ in _tied(host):
        gaps = np.diff(np.unique(host[:, j]))
        widths[j] = np.median(gaps) if gaps.size else 0.0
    return widths


def check_continuous(X, name: str = "X") -> None:
    """Raise if a column of ``X`` is heavily tied: RBIG needs continuous data.

    A column is heavily tied when its most frequent value holds more than
    :data:`MAX_TIE_FRACTION` of the rows: rounded or discrete data, or a point mass such as
    exact zeros. Such data have no density, so a fitted density spikes at the ties and
    the total correlation, entropy and mutual information estimates run off to hundreds
    of nats whatever the true dependence.

    Args:
        X: ``(n, d)`` or ``(n,)`` samples.
        name: the argument's name, for the error message.

    Raises:
        ValueError: a column of ``X`` is heavily tied (the message names it, its most
            frequent value and the remedy: ``dequantize=True`` or jitter).

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(500, 2))
        >>> check_continuous(X)  # continuous: nothing to say
        >>> check_continuous(np.round(X), "X")
        Traceback (most recent call last):
        ...
        ValueError: X is heavily tied: in column 0 the value 0 holds 37% of the 500 rows ...
    """
    host = np.asarray(X, dtype=np.float64)
    host = host[:, None] if host.ndim == 1 else host
    tied = _tied(host) if host.ndim == 2 and host.shape[0] else []
    if tied:
        j, value, count, distinct = tied[0]
        raise ValueError(
            f"{name} is heavily tied: in column {j} the value {value:g} holds "
            f"{count / host.shape[0]:.0%} of the {host.shape[0]} rows ({distinct} distinct "
            f"values; tied columns: {[t[0] for t in tied]}). RBIG and its information "
            "estimators assume continuous data: ties make the fitted density spike and the "
            "estimates diverge. Pass dequantize=True to spread each tied column by uniform "
            "noise of its grid width, or add your own jitter."
        )


def dequantize_ties(X, key):
    """Spread every heavily tied column of ``X`` by uniform noise of its grid width.

    Each tied column (see :func:`check_continuous`) gets ``U(-w/2, w/2)`` noise, ``w``
    the median gap between its consecutive distinct values: for data rounded to a grid
    that is the grid width, so the result is the continuous data the grid came from, up
    to where in its cell each point lies. Columns without heavy ties are returned as they
    are. The noise is independent of everything else, so it adds no dependence.

    Args:
        X: ``(n, d)`` samples.
        key: PRNG key of the noise.

    Returns:
        ``(n, d)`` array of ``X``'s float dtype (JAX's default float for integer input).

    Example:
        >>> import numpy as np, jax.random as jr
        >>> X = np.c_[np.round(np.linspace(-3, 3, 200)), np.linspace(-3, 3, 200)]
        >>> Y = dequantize_ties(X, jr.key(0))
        >>> float(np.abs(Y[:, 0] - X[:, 0]).max()) <= 0.5, bool((Y[:, 1] == X[:, 1]).all())
        (True, True)
    """
    X = jnp.asarray(X)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        X = X.astype(jnp.zeros(()).dtype)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    widths = grid_widths(np.asarray(X, dtype=np.float64))
    return add_grid_noise(X, widths, key)


def add_grid_noise(X, widths, key):
    """``X`` plus ``U(-w/2, w/2)`` noise in every column, ``w`` its entry of ``widths``.

    Args:
        X: ``(n, d)`` float samples.
        widths: ``(d,)`` noise widths (0 leaves a column as it is), as from
            :func:`grid_widths`.
        key: PRNG key of the noise.

    Returns:
        ``(n, d)`` array of ``X``'s dtype.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> Y = add_grid_noise(jnp.zeros((3, 2)), [1.0, 0.0], jr.key(0))
        >>> bool((abs(Y[:, 0]) <= 0.5).all()), Y[:, 1].tolist()
        (True, [0.0, 0.0, 0.0])
    """
    noise = jr.uniform(key, X.shape, X.dtype, -0.5, 0.5)
    return X + noise * jnp.asarray(widths, X.dtype)
