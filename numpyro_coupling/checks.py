"""Argument conventions shared by the whole API: PRNG keys and event shapes.

Every function that draws random numbers takes a ``key`` (a JAX PRNG key); builders take
it as their first argument, the training and sampling verbs as the keyword ``key``, where
``None`` means ``jax.random.key(0)``. An event shape is a tuple, or an int ``d`` for
``(d,)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

__all__ = ["as_key", "as_shape"]


def as_key(key, name: str = "key", default: int | None = 0):
    """Check a PRNG key argument, or give the default key for ``None``.

    Args:
        key: a typed key (``jax.random.key(0)``), a legacy ``uint32[2]`` key
            (``jax.random.PRNGKey(0)``), or ``None``.
        name: the argument's name, for the error message.
        default: the seed of the key that ``None`` stands for (``None``: the key is
            required).

    Returns:
        The key.

    Raises:
        TypeError: ``key`` is not a PRNG key (an int, say), or is missing where required.

    Example:
        >>> import jax.random as jr
        >>> as_key(None).dtype == jr.key(0).dtype
        True
        >>> as_key(3)
        Traceback (most recent call last):
        ...
        TypeError: key must be a PRNG key such as jax.random.key(0), got int
    """
    if key is None:
        if default is None:
            raise TypeError(f"{name} is required: pass a PRNG key such as jax.random.key(0)")
        return jr.key(default)
    if isinstance(key, jax.Array | np.ndarray):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return key
        if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
            return key
    raise TypeError(
        f"{name} must be a PRNG key such as jax.random.key(0), got {type(key).__name__}"
    )


def as_shape(shape, name: str = "shape") -> tuple[int, ...]:
    """An event shape as a tuple of ints (an int ``d`` means ``(d,)``).

    Args:
        shape: an int or a sequence of ints.
        name: the argument's name, for the error message.

    Returns:
        The shape as a tuple.

    Raises:
        TypeError: not an int or a sequence of ints.

    Example:
        >>> as_shape(3), as_shape([2, 2])
        ((3,), (2, 2))
    """
    if isinstance(shape, int | np.integer) and not isinstance(shape, bool):
        return (int(shape),)
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(
            f"{name} must be an int or a tuple of ints such as (2,), got {shape!r}"
        ) from None
    if any(s != t for s, t in zip(out, shape)) or any(s < 0 for s in out):
        raise TypeError(f"{name} must hold non-negative ints, got {shape!r}")
    return out
