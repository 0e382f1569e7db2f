"""Conditioner networks: equinox modules that map the passive half to raw parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

__all__ = ["ACTIVATIONS", "MLP"]

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}


class MLP(eqx.Module):
    """A dense network acting on the trailing axis; leading axes broadcast.

    Unlike ``eqx.nn.MLP`` it needs no ``vmap``: every layer is ``x @ W + b``, so any batch
    shape passes straight through.

    Args:
        key: PRNG key for the hidden layers.
        in_size: input features.
        out_size: output features.
        width: hidden width.
        depth: number of hidden layers (0 gives a single affine layer).
        activation: one of ``ACTIVATIONS``.
        zero_init: if true the final kernel is exactly zero, so the network starts as the
            constant ``final_bias``.
        final_bias: ``(out_size,)`` initial bias of the last layer (zeros if ``None``).
        dtype: parameter dtype.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> net = MLP(jr.key(0), 3, 4, width=8, depth=2)
        >>> net(jnp.ones((5, 3))).shape
        (5, 4)
    """

    weights: list
    biases: list
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        key,
        in_size: int,
        out_size: int,
        *,
        width: int = 64,
        depth: int = 2,
        activation: str = "relu",
        zero_init: bool = True,
        final_bias=None,
        dtype=None,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if width < 1 or depth < 0:
            raise ValueError(f"need width >= 1 and depth >= 0, got width={width}, depth={depth}")
        dtype = dtype or jnp.zeros(()).dtype
        sizes: Sequence[int] = [in_size] + [width] * depth + [out_size]
        keys = jr.split(key, len(sizes) - 1)
        self.weights, self.biases = [], []
        for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            wkey, bkey = jr.split(k)
            lim = 1.0 / math.sqrt(max(n_in, 1))
            if last and zero_init:
                w = jnp.zeros((n_in, n_out), dtype)
            else:
                w = jr.uniform(wkey, (n_in, n_out), dtype, -lim, lim)
            if last and final_bias is not None:
                b = jnp.asarray(final_bias, dtype)
            elif last and zero_init:
                b = jnp.zeros((n_out,), dtype)
            else:
                b = jr.uniform(bkey, (n_out,), dtype, -lim, lim)
            self.weights.append(w)
            self.biases.append(b)
        self.activation = activation

    def __call__(self, x):
        """Apply the network: ``(..., in_size) -> (..., out_size)``."""
        act = ACTIVATIONS[self.activation]
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = act(x @ w + b)
        return x @ self.weights[-1] + self.biases[-1]

    @property
    def final_kernel(self):
        """The last layer's weight matrix ``(hidden, out_size)`` (zero under the warm start)."""
        return self.weights[-1]
