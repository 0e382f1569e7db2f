"""Importance-sampling diagnostics of a guide: Pareto k-hat, IS ESS and log Z.

Given ``S`` draws ``x_s ~ q`` from a guide, the log importance weights are
``log w_s = log p(x_s) - log q(x_s)`` with ``log p`` the unnormalised log posterior. Their
right tail says whether ``q`` covers ``p``: a guide that misses mass of ``p`` (too narrow,
wrongly placed or wrongly oriented) gives heavy-tailed weights, and the shape ``k`` of a
generalized Pareto distribution fitted to the tail (Vehtari et al., 2024, "Pareto smoothed
importance sampling") flags it: ``k < 0.5`` good, ``0.5 <= k < 0.7`` usable, ``k >= 0.7``
the guide's expectations (and a NeuTra chain warped by it) are not to be trusted.

All functions take NumPy-compatible arrays and return Python floats.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

__all__ = [
    "ImportanceDiagnostics",
    "gpd_fit",
    "importance_diagnostics",
    "is_ess",
    "log_evidence",
    "pareto_khat",
]


def gpd_fit(exceedances) -> tuple[float, float]:
    """Generalized Pareto fit of positive exceedances (Zhang & Stephens, 2009).

    The empirical-Bayes estimate of the shape ``k`` and scale ``sigma`` of
    ``GPD(k, sigma)``, with the weakly informative prior that pulls ``k`` towards 0.5 with
    the weight of 10 observations, as PSIS uses it.

    Args:
        exceedances: ``(n,)`` positive values (the tail above a threshold, minus it).

    Returns:
        ``(k, sigma)``.

    Example:
        >>> import numpy as np
        >>> draws = np.random.default_rng(0).exponential(size=2000)  # GPD with k = 0
        >>> k, sigma = gpd_fit(draws)
        >>> abs(k) < 0.1, abs(sigma - 1) < 0.1
        (True, True)
    """
    x = np.sort(np.asarray(exceedances, dtype=float).reshape(-1))
    n = x.size
    if n < 2 or not np.all(np.isfinite(x)) or x[-1] <= 0:
        raise ValueError(f"exceedances must hold at least 2 finite values > 0, got {n} values")
    m = 30 + int(np.sqrt(n))
    # Candidate values of theta = -k / sigma, spread by the first quartile (Zhang-Stephens).
    theta = 1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    theta = theta / (3.0 * x[int(n / 4 + 0.5) - 1]) + 1.0 / x[-1]
    k = np.mean(np.log1p(-theta[:, None] * x), axis=1)
    profile = n * (np.log(-theta / k) - k - 1.0)
    # Posterior weights of the candidates: softmax of the profile log likelihood.
    weights = np.exp(profile - logsumexp(profile))
    keep = weights >= 10 * np.finfo(float).eps
    weights, theta = weights[keep] / weights[keep].sum(), theta[keep]
    theta_hat = np.sum(theta * weights)
    k_hat = np.mean(np.log1p(-theta_hat * x))
    sigma = -k_hat / theta_hat
    k_hat = (n * k_hat + 10 * 0.5) / (n + 10)
    return float(k_hat), float(sigma)


def pareto_khat(log_weights) -> float:
    """PSIS Pareto shape ``k-hat`` of the right tail of importance weights.

    The tail is the ``M = ceil(min(S / 5, 3 sqrt(S)))`` largest weights (as ArviZ's
    ``psislw`` with ``reff = 1``); their excess over the next largest is fitted by
    :func:`gpd_fit`.

    Args:
        log_weights: ``(S,)`` log importance weights (any additive constant).

    Returns:
        ``k-hat``: ``-inf`` when the largest weights all tie (bounded weights, e.g. the
        constant weights of an exact guide; ArviZ returns ``inf`` there), ``inf`` when
        the tail above the cutoff has 1 to 4 draws or a weight is not finite.

    Example:
        >>> import numpy as np
        >>> z = np.random.default_rng(0).normal(size=4000)
        >>> # proposal N(0, 1) for the target N(0, 0.5^2): light tail, k < 0
        >>> bool(pareto_khat(-0.5 * (z / 0.5) ** 2 + 0.5 * z**2) < 0.5)
        True
        >>> # proposal N(0, 1) for the target N(0, 4^2): far too narrow, k = 1 - 1/4^2
        >>> bool(pareto_khat(-0.5 * (z / 4) ** 2 + 0.5 * z**2) > 0.7)
        True
    """
    lw = np.asarray(log_weights, dtype=float).reshape(-1)
    if not np.all(np.isfinite(lw)):
        return float("inf")
    s = lw.size
    m = int(np.ceil(min(s / 5.0, 3.0 * np.sqrt(s))))
    lw = np.sort(lw - lw.max())
    cutoff = max(lw[-m - 1], np.log(np.finfo(float).tiny))
    tail = lw[lw > cutoff]
    if tail.size == 0:
        # The largest weights tie: bounded weights (an exact guide gives constant ones).
        return float("-inf")
    if tail.size <= 4:
        return float("inf")
    return gpd_fit(np.exp(tail) - np.exp(cutoff))[0]


def is_ess(log_weights) -> float:
    """Kish's effective sample size ``1 / sum(w_s^2)`` of the self-normalised weights.

    Args:
        log_weights: ``(S,)`` log importance weights.

    Returns:
        ESS in ``[1, S]`` (``S`` for equal weights).

    Example:
        >>> is_ess([0.0, 0.0, 0.0, 0.0]), round(is_ess([0.0, -50.0, -50.0]), 6)
        (4.0, 1.0)
    """
    lw = np.asarray(log_weights, dtype=float).reshape(-1)
    w = np.exp(lw - logsumexp(lw))
    return float(1.0 / np.sum(w * w))


def log_evidence(log_weights) -> tuple[float, float]:
    """Importance-sampling estimate of ``log Z``: the log-mean-exp of the log weights.

    With ``log w = log p~ - log q`` and ``p~`` the unnormalised posterior,
    ``mean(w)`` estimates ``Z``. The standard error is the delta method's,
    ``sd(w) / (sqrt(S) mean(w))``, i.e. ``sqrt((S / ESS - 1) / S)``; it is itself
    unreliable when :func:`pareto_khat` exceeds 0.7.

    Args:
        log_weights: ``(S,)`` log importance weights.

    Returns:
        ``(log_z, se)``.

    Example:
        >>> log_z, se = log_evidence([1.0, 1.0, 1.0])
        >>> round(log_z, 6), round(se, 6)
        (1.0, 0.0)
    """
    lw = np.asarray(log_weights, dtype=float).reshape(-1)
    s = lw.size
    log_z = logsumexp(lw) - np.log(s)
    r = np.exp(lw - log_z)
    return float(log_z), float(np.std(r) / np.sqrt(s))


class ImportanceDiagnostics(NamedTuple):
    """Summary of a guide's importance weights (see :func:`importance_diagnostics`)."""

    k_hat: float
    ess: float
    log_z: float
    log_z_se: float


def importance_diagnostics(log_p, log_q) -> ImportanceDiagnostics:
    """Pareto k-hat, IS ESS and ``log Z +- se`` of draws from a guide.

    Args:
        log_p: ``(S,)`` unnormalised log posterior density of the guide's draws.
        log_q: ``(S,)`` the guide's log density of the same draws.

    Returns:
        :class:`ImportanceDiagnostics` ``(k_hat, ess, log_z, log_z_se)``.

    Example:
        >>> import numpy as np
        >>> z = np.random.default_rng(1).normal(size=1000)
        >>> log_q = -0.5 * z**2 - 0.5 * np.log(2 * np.pi)
        >>> diag = importance_diagnostics(log_q + 3.0, log_q)  # exact guide, Z = e^3
        >>> round(diag.ess, 6), round(diag.log_z, 6), round(diag.log_z_se, 6)
        (1000.0, 3.0, 0.0)
    """
    log_p = np.asarray(log_p, dtype=float).reshape(-1)
    log_q = np.asarray(log_q, dtype=float).reshape(-1)
    if log_p.shape != log_q.shape:
        raise ValueError(f"log_p and log_q must match, got {log_p.shape} and {log_q.shape}")
    lw = log_p - log_q
    log_z, se = log_evidence(lw)
    return ImportanceDiagnostics(pareto_khat(lw), is_ess(lw), log_z, se)
