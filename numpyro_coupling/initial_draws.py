"""Random initial weights without one XLA compilation per array shape.

``jax.random.uniform(key, shape)`` called eagerly compiles a program for every new
``shape``; a flow's conditioners have a different input or output size in nearly every
layer, so building a guide compiled dozens of tiny programs (about a second of CPU time
before the first SVI step). :func:`uniform` and :func:`normal` draw a flat array whose
length is the next power of two instead, and keep its first ``prod(shape)`` entries on the
host: under JAX's partitionable Threefry (its default) an entry depends only on the key and
its position, so the result is bit for bit ``jax.random.uniform(key, shape, ...)``, with
one compilation per power of two. Under a JAX transformation (building a flow inside
``jit`` or ``vmap``) they call ``jax.random`` directly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

__all__ = ["normal", "pool_size", "uniform"]


def pool_size(n: int) -> int:
    """Length of the flat draw that :func:`uniform` and :func:`normal` slice ``n`` entries from.

    Example:
        >>> pool_size(10), pool_size(64), pool_size(65)
        (64, 64, 128)
    """
    return max(64, 1 << max(int(n) - 1, 0).bit_length())


def _pooled(draw, key, shape, dtype):
    shape = tuple(int(s) for s in shape)
    dtype = jnp.dtype(dtype or jnp.zeros(()).dtype)
    if isinstance(key, jax.core.Tracer):
        return draw(key, shape, dtype)
    n = math.prod(shape)
    flat = np.asarray(draw(key, (pool_size(n),), dtype))
    return jnp.asarray(flat[:n].reshape(shape))


def uniform(key, shape, dtype=None, minval=0.0, maxval=1.0):
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, compiled once per pool size.

    Args:
        key: PRNG key.
        shape: output shape.
        dtype: float dtype (default: JAX's default float).
        minval: lower bound (a scalar).
        maxval: upper bound (a scalar).

    Returns:
        An array of ``shape``.

    Example:
        >>> import jax.random as jr
        >>> a = uniform(jr.key(0), (3, 5), minval=-1.0, maxval=1.0)
        >>> bool((a == jr.uniform(jr.key(0), (3, 5), minval=-1.0, maxval=1.0)).all())
        True
    """
    return _pooled(lambda k, s, d: jr.uniform(k, s, d, minval, maxval), key, shape, dtype)


def normal(key, shape, dtype=None):
    """``jax.random.normal(key, shape, dtype)``, compiled once per pool size.

    Example:
        >>> import jax.random as jr
        >>> bool((normal(jr.key(1), (4, 2)) == jr.normal(jr.key(1), (4, 2))).all())
        True
    """
    return _pooled(jr.normal, key, shape, dtype)
