"""Information measures estimated by greedy RBIG: total correlation, entropy, mutual information.

All three come from :func:`~numpyro_coupling.fit_rbig`. RBIG removes the total correlation
``TC(x) = sum_i H(x_i) - H(x)`` layer by layer, and each layer's reduction is estimated
from the marginal entropies before and after its rotation, so

* ``TC(x)`` is the sum of the per-layer reductions;
* ``H(x) = sum_i H(x_i) - TC(x)``, the marginal entropies coming from the first layer's
  mixture fits (through the standardisation's log-scale);
* ``I(x; y) = TC([x, y]) - TC(x) - TC(y)`` -- the marginal entropies cancel exactly, so
  only dependence is estimated.

The estimators assume continuous data: a column whose most frequent value holds more
than :data:`~numpyro_coupling.ties.MAX_TIE_FRACTION` of the rows (rounded or discrete
values, a point mass such as exact zeros) has no density, and the estimates would run off
to hundreds of nats. Such input raises a ``ValueError`` naming the argument, unless
``dequantize=True``, which spreads each tied column by uniform noise of its grid width
(:func:`~numpyro_coupling.ties.dequantize_ties`, seeded by ``key``) and estimates the
information of the dequantised data.

All values are in nats. Defaults favour accuracy over speed (16 mixture components,
200 EM steps, random rotations, which keep finding non-Gaussian dependence where
principal axes of already-white data would stall); any :func:`fit_rbig` keyword
overrides them.
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr

from .checks import as_key
from .rbig import RBIGFlow, fit_rbig
from .ties import check_continuous, dequantize_ties

__all__ = ["entropy", "mutual_information", "total_correlation"]

#: fit_rbig settings used by the estimators unless overridden.
INFORMATION_DEFAULTS = {
    "n_components": 16,
    "em_steps": 200,
    "rotation": "random",
    "progress_bar": False,
}


def _fit(X, key, dequantize, rbig_kw) -> RBIGFlow:
    kw = {**INFORMATION_DEFAULTS, **rbig_kw}
    return fit_rbig(X, as_key(key), dequantize=dequantize, **kw)


def _as_2d(X, name):
    X = jnp.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{name} must be (n_samples,) or (n_samples, n_features), got {X.shape}")
    return X


def total_correlation(X, *, key=None, dequantize: bool = False, **rbig_kw) -> float:
    """Total correlation (multi-information) ``sum_i H(x_i) - H(x)`` of samples, in nats.

    Zero exactly when the coordinates are independent; for a Gaussian with correlation
    matrix ``R`` it is ``-0.5 log det R``.

    Args:
        X: ``(n, d)`` samples of continuous data.
        key: PRNG key for the rotations and the dequantisation noise (default
            ``jax.random.key(0)``).
        dequantize: spread heavily tied columns by uniform noise of their grid width
            instead of refusing them.
        **rbig_kw: overrides of :data:`INFORMATION_DEFAULTS` / :func:`fit_rbig` keywords.

    Returns:
        The estimate (0.0 for ``d = 1``).

    Raises:
        ValueError: a column of ``X`` is heavily tied and ``dequantize`` is off.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], size=2000)
        >>> round(total_correlation(X, n_components=4, em_steps=50), 1)  # exact: 0.51
        0.5
    """
    X = _as_2d(X, "X")
    if not dequantize:
        check_continuous(X, "X")
    if X.shape[1] == 1:
        return 0.0
    return _fit(X, key, dequantize, rbig_kw).total_correlation


def entropy(X, *, key=None, dequantize: bool = False, **rbig_kw) -> float:
    """Differential entropy ``H(x)`` of samples in nats: ``sum_i H(x_i) - TC(x)``.

    Args:
        X: ``(n, d)`` or ``(n,)`` samples of continuous data.
        key: PRNG key for the rotations and the dequantisation noise.
        dequantize: spread heavily tied columns by uniform noise of their grid width
            instead of refusing them (the entropy is then that of the dequantised data).
        **rbig_kw: overrides of :data:`INFORMATION_DEFAULTS` / :func:`fit_rbig` keywords.

    Returns:
        The estimate (``log(b - a)`` per coordinate for uniforms, ``0.5 log(2 pi e
        sigma^2)`` for a Gaussian coordinate).

    Raises:
        ValueError: a column of ``X`` is heavily tied and ``dequantize`` is off.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(2000, 2))
        >>> round(entropy(X, n_components=4, em_steps=50), 1)  # exact: log(2 pi e) = 2.84
        2.8
    """
    X = _as_2d(X, "X")
    if not dequantize:
        check_continuous(X, "X")
    return _fit(X, key, dequantize, rbig_kw).entropy_estimate


def mutual_information(X, Y, *, key=None, dequantize: bool = False, **rbig_kw) -> float:
    """Mutual information ``I(x; y) = TC([x, y]) - TC(x) - TC(y)`` in nats.

    Args:
        X: ``(n, dx)`` or ``(n,)`` samples of continuous data.
        Y: ``(n, dy)`` or ``(n,)`` samples, paired row by row with ``X``.
        key: PRNG key for the rotations and the dequantisation noise.
        dequantize: spread heavily tied columns of ``X`` and ``Y`` by uniform noise of
            their grid width instead of refusing them; the noise is drawn once, so the
            three total correlations see the same data.
        **rbig_kw: overrides of :data:`INFORMATION_DEFAULTS` / :func:`fit_rbig` keywords.

    Returns:
        The estimate (about 0 for independent ``x`` and ``y``).

    Raises:
        ValueError: ``X`` and ``Y`` have different numbers of rows; a column of ``X`` or
            ``Y`` is heavily tied and ``dequantize`` is off.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> xy = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=2000)
        >>> mi = mutual_information(xy[:, 0], xy[:, 1], n_components=4, em_steps=50)
        >>> round(mi, 1)  # exact: -0.5 log(1 - 0.36) = 0.22
        0.2
    """
    X, Y = _as_2d(X, "X"), _as_2d(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X and Y must have the same number of rows, got {X.shape[0]}, {Y.shape[0]}"
        )
    key = as_key(key)
    if dequantize:
        # One draw of the noise for all three fits; fold_in keeps the rotation keys.
        XY = dequantize_ties(jnp.concatenate([X, Y], 1), jr.fold_in(key, 1))
        X, Y = XY[:, : X.shape[1]], XY[:, X.shape[1] :]
    else:
        check_continuous(X, "X")
        check_continuous(Y, "Y")
    kx, ky, kxy = jr.split(key, 3)
    joint = total_correlation(jnp.concatenate([X, Y], 1), key=kxy, **rbig_kw)
    return joint - total_correlation(X, key=kx, **rbig_kw) - total_correlation(Y, key=ky, **rbig_kw)
