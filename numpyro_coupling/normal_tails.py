"""Log-space maths of the standard normal's tails, for the mixture-CDF transformer.

``log Phi`` and its inverse where ``Phi`` itself underflows, the inverse Mills ratio
without cancellation, and a cheaper ``log Phi`` for root-finding iterations.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtri

__all__ = [
    "MILLS_SWITCH",
    "log_inverse_mills",
    "log_ndtr_fast",
    "log_ndtri",
    "log_normal_pdf",
    "stable_log_ndtr",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def log_normal_pdf(z):
    """The standard normal's log density at ``z`` (any shape).

    Example:
        >>> round(float(log_normal_pdf(0.0)), 4)
        -0.9189
    """
    return -0.5 * z * z - _HALF_LOG_2PI


MILLS_SWITCH = 6.0  # below -6, phi/Phi by continued fraction; above, directly
# Continued-fraction terms for t >= 6: relative error 5e-10 (float32) and < 1e-15 (float64).
_MILLS_TERMS = {4: 8, 8: 16}


def log_inverse_mills(z, log_ndtr_z):
    """``log(phi(z) / Phi(z))`` without cancellation for any ``z``, given ``log Phi(z)``.

    Directly for ``z >= -6``; below, Laplace's continued fraction for the Mills ratio,
    ``Phi(-t) / phi(t) = 1 / (t + 1 / (t + 2 / (t + ...)))``, which avoids subtracting
    ``log Phi(z) ~ -z^2 / 2`` from ``log phi(z)``, two large and nearly equal numbers.
    Taking ``log Phi(z)`` as an argument lets callers reuse the value they already have.

    Example:
        >>> import jax.numpy as jnp
        >>> from jax.scipy.special import log_ndtr
        >>> z = jnp.array([-40.0, 0.0])
        >>> [round(float(v), 2) for v in log_inverse_mills(z, log_ndtr(z))]  # log(-z) far out
        [3.69, -0.23]
    """
    t = jnp.maximum(-z, MILLS_SWITCH)
    f = t
    for k in range(_MILLS_TERMS.get(jnp.dtype(t.dtype).itemsize, 16), 0, -1):
        f = t + k / f
    return jnp.where(z < -MILLS_SWITCH, jnp.log(f), log_normal_pdf(z) - log_ndtr_z)


#: ``(-1)^n (2n - 1)!!``, n = 0..10: the Mills-ratio series of ``Phi`` in ``1 / z^2``. Ten
#: terms leave a relative error of ``19!! / z^20``: 6e-18 at float64's segment (``z = -20``)
#: and 7e-12 at float32's (``-10``), below either's rounding (three terms: 4e-9 at -20).
_MILLS_SERIES = (1, -1, 3, -15, 105, -945, 10395, -135135, 2027025, -34459425, 654729075)


def _lower_segment(z):
    """Where ``log Phi`` switches from ``erfc`` to the series (``log_ndtr``'s segments)."""
    return -20.0 if jnp.dtype(z.dtype).itemsize == 8 else -10.0


def _log_ndtr_series(z):
    """``log Phi(z)`` for ``z`` at or below the lower segment, by the Mills-ratio series."""
    w = 1 / (z * z)
    series = jnp.zeros_like(z)
    for c in _MILLS_SERIES[::-1]:
        series = series * w + c
    return -0.5 * z * z - jnp.log(-z) - _HALF_LOG_2PI + jnp.log(series)


def log_ndtr_fast(z):
    """``log Phi(z)`` for the inverse's iterations: one ``erfc`` where ``log_ndtr`` takes four.

    Above ``log_ndtr``'s lower segment it is ``log(erfc(-z / sqrt 2) / 2)``, which loses only
    ``Phi(-z)`` (a few ulps) for large ``z``; below, the Mills-ratio series that
    :func:`stable_log_ndtr` uses. It steers the root-finding; the forward map keeps
    :func:`stable_log_ndtr`.

    Example:
        >>> import jax.numpy as jnp
        >>> [round(float(v), 2) for v in log_ndtr_fast(jnp.array([-30.0, 0.0]))]
        [-454.32, -0.69]
    """
    lower = _lower_segment(z)
    inner = jnp.maximum(z, lower)
    direct = jnp.log(0.5 * jax.scipy.special.erfc(-inner * (1 / math.sqrt(2))))
    return jnp.where(z > lower, direct, _log_ndtr_series(jnp.minimum(z, lower)))


@jax.custom_jvp
def stable_log_ndtr(z):
    """``log Phi(z)`` whose derivative ``phi(z) / Phi(z)`` stays accurate in the far tail.

    ``log_ndtr``, except below its lower segment (``z < -20`` in float64), where its
    three-term series is off by up to 4e-9: there the ten-term series, accurate to the
    last bit.

    Example:
        >>> import jax
        >>> round(float(jax.grad(stable_log_ndtr)(-50.0)), 2)  # about -z
        50.02
    """
    lower = _lower_segment(z)
    return jnp.where(z > lower, log_ndtr(z), _log_ndtr_series(jnp.minimum(z, lower)))


@stable_log_ndtr.defjvp
def _stable_log_ndtr_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    log_p = stable_log_ndtr(z)
    return log_p, dz * jnp.exp(log_inverse_mills(z, log_p))


@jax.custom_jvp
def log_ndtri(log_p):
    """Inverse of ``log_ndtr``: the ``y`` with ``log Phi(y) = log_p`` for ``log_p <= log 1/2``.

    Works where ``exp(log_p)`` underflows (far lower tail), which is what keeps the
    mixture-CDF transformer injective and its log-det finite in the tails.

    Args:
        log_p: ``(...)`` log-probabilities, at most ``log(0.5)``.

    Returns:
        ``(...)`` standard-normal quantiles (all ``<= 0``).

    Example:
        >>> import jax.numpy as jnp
        >>> [round(float(v), 2) for v in log_ndtri(jnp.array([-1000.0, jnp.log(0.5)]))]
        [-44.62, 0.0]
    """
    dtype = jnp.result_type(log_p)
    tiny = jnp.finfo(dtype).tiny
    # Start from the direct quantile where exp() is representable, else the
    # leading term of the Mills-ratio asymptotic; Newton on stable_log_ndtr (accurate
    # below log_ndtr's lower segment too) then polishes.
    direct = ndtri(jnp.clip(jnp.exp(log_p), tiny, 0.5))
    t = -2.0 * jnp.minimum(log_p, -1.0)
    asym = -jnp.sqrt(t - jnp.log(t) - math.log(2 * math.pi))
    y = jnp.where(log_p > -30.0, direct, asym)

    def newton(_, y):
        lp = stable_log_ndtr(y)
        return y - (lp - log_p) * jnp.exp(-log_inverse_mills(y, lp))

    # A loop, not three unrolled steps: one copy of the step in the compiled program.
    return jax.lax.fori_loop(0, 3, newton, y)


@log_ndtri.defjvp
def _log_ndtri_jvp(primals, tangents):
    (log_p,), (dlog_p,) = primals, tangents
    y = log_ndtri(log_p)
    # dy/dlog_p = Phi(y) / phi(y), with Phi(y) = exp(log_p)
    return y, dlog_p * jnp.exp(-log_inverse_mills(y, log_p))
