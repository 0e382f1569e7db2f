"""Fitting a 1-D Gaussian mixture to every column of an array at once, by EM.

The marginal maps of greedy RBIG (:mod:`numpyro_coupling.rbig`) are
:class:`~numpyro_coupling.MixtureGaussianCDF` maps whose parameters come from
:func:`fit_gaussian_mixture`: one compiled EM for all columns, in log space throughout,
with an *anchor* component (the column's own Gaussian) that governs the far tails.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

__all__ = ["fit_gaussian_mixture", "mixture_cross_entropy"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _log_mixture_density(x, log_w, means, scales):
    """``log sum_k w_k N(x; mu_k, s_k)`` for ``x: (n, d)`` and mixtures ``(d, K)``."""
    z = (x[..., None] - means) / scales
    return logsumexp(log_w - 0.5 * z * z - jnp.log(scales) - _HALF_LOG_2PI, -1)


@functools.partial(
    jax.jit, static_argnames=("n_components", "em_steps", "min_scale", "anchor_weight")
)
def fit_gaussian_mixture(
    x,
    n_components: int = 8,
    em_steps: int = 100,
    min_scale: float = 1e-3,
    anchor_weight: float = 1e-3,
):
    """Fit a 1-D Gaussian mixture to every column of ``x`` at once by EM.

    One compiled EM runs all columns together (the E-step is a ``(n, d, K)`` array), in
    log space throughout. Components start at evenly spaced quantiles; scales are floored
    at ``min_scale`` times the column's standard deviation, so no component collapses
    onto a single point; an empty component keeps its previous mean and scale.

    With ``K >= 2`` the first component is an *anchor*: the column's own Gaussian
    ``N(mean, std^2)`` held at weight ``anchor_weight``. It governs the far tails, so the
    Gaussianising map ``Phi^-1(F(x))`` is no steeper than standardisation there and
    points beyond the training range are not flung outward layer after layer.

    Args:
        x: ``(n, d)`` samples.
        n_components: mixture components ``K`` per column (the anchor included).
        em_steps: EM iterations.
        min_scale: scale floor relative to each column's standard deviation.
        anchor_weight: weight of the anchor component (0 to fit all ``K`` freely).

    Returns:
        ``(weights, means, scales)``, each ``(d, K)``; weights sum to one per column.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> x = jnp.concatenate([jr.normal(jr.key(0), (500, 1)) - 3,
        ...                      jr.normal(jr.key(1), (500, 1)) + 3])
        >>> w, m, s = fit_gaussian_mixture(x, n_components=3, em_steps=50)
        >>> [round(v) for v in sorted(m[0, 1:].tolist())]
        [-3, 3]
    """
    n, _ = x.shape
    k = n_components
    dtype = x.dtype
    mean, std = jnp.mean(x, 0)[:, None], jnp.std(x, 0)[:, None]
    floor = min_scale * std
    q = (jnp.arange(k, dtype=dtype) + 0.5) / k
    means = jnp.quantile(x, q, axis=0).T
    scales = jnp.broadcast_to(std / math.sqrt(k), means.shape)
    log_w = jnp.full(means.shape, -math.log(k), dtype)
    anchored = k > 1 and anchor_weight > 0
    if anchored:
        means = means.at[:, 0].set(mean[:, 0])
        scales = scales.at[:, 0].set(std[:, 0])
        log_w = log_w.at[:, 0].set(jnp.log(anchor_weight))
        log_w = log_w.at[:, 1:].set(jnp.log1p(-anchor_weight) - math.log(k - 1))
    free = jnp.arange(k) >= (1 if anchored else 0)
    # A component keeps at least this weight so its logit stays finite under training.
    log_w_floor = math.log(1e-8)

    def em_step(_, state):
        log_w, means, scales = state
        z = (x[..., None] - means) / scales
        log_joint = log_w - 0.5 * z * z - jnp.log(scales)
        resp = jnp.exp(log_joint - logsumexp(log_joint, -1, keepdims=True))
        nk = resp.sum(0)
        alive = (nk > 1e-6 * n) & free
        nk_safe = jnp.where(alive, nk, 1.0)
        new_means = (resp * x[..., None]).sum(0) / nk_safe
        var = (resp * (x[..., None] - new_means) ** 2).sum(0) / nk_safe
        new_scales = jnp.maximum(jnp.sqrt(var), floor)
        means = jnp.where(alive, new_means, means)
        scales = jnp.where(alive, new_scales, scales)
        new_log_w = jnp.maximum(jnp.log(nk), log_w_floor + math.log(n))
        new_log_w = jnp.where(free, new_log_w, -jnp.inf)
        new_log_w = new_log_w - logsumexp(new_log_w, -1, keepdims=True)
        if anchored:
            new_log_w = jnp.where(free, new_log_w + jnp.log1p(-anchor_weight), log_w)
        return new_log_w, means, scales

    log_w, means, scales = jax.lax.fori_loop(0, em_steps, em_step, (log_w, means, scales))
    return jnp.exp(log_w), means, scales


def mixture_cross_entropy(x, mixture):
    """``-mean log p(x)`` per column of ``x`` under one fitted 1-D mixture per column.

    The in-sample estimate of each column's entropy (nats) when ``mixture`` was fitted
    to ``x`` itself, in log space throughout.

    Args:
        x: ``(n, d)`` samples.
        mixture: ``(weights, means, scales)``, each ``(d, K)``, as returned by
            :func:`fit_gaussian_mixture`.

    Returns:
        ``(d,)`` cross-entropies in nats.

    Example:
        >>> import jax.numpy as jnp
        >>> one = jnp.ones((1, 1))
        >>> h = mixture_cross_entropy(jnp.zeros((4, 1)), (one, 0 * one, one))
        >>> round(float(h[0]), 4)  # -log N(0; 0, 1) = log(2 pi) / 2
        0.9189
    """
    weights, means, scales = mixture
    return -_log_mixture_density(x, jnp.log(weights), means, scales).mean(0)
