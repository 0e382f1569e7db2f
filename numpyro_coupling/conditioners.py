"""Conditioner networks: equinox modules that map the passive half to raw parameters.

:class:`MLP` is the plain network of a density flow's couplings; :class:`GuideConditioner`
wraps one for a guide's couplings (saturated inputs and a linear path to the log-scales).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from . import initial_draws
from .transformers import soft_clamp

__all__ = ["ACTIVATIONS", "LINEAR_REACH", "MLP", "GuideConditioner"]

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
            # Host zeros and pooled draws: no compilation per layer shape.
            if last and zero_init:
                w = jnp.asarray(np.zeros((n_in, n_out), dtype))
            else:
                w = initial_draws.uniform(wkey, (n_in, n_out), dtype, -lim, lim)
            if last and final_bias is not None:
                b = jnp.asarray(final_bias, dtype)
            elif last and zero_init:
                b = jnp.asarray(np.zeros((n_out,), dtype))
            else:
                b = initial_draws.uniform(bkey, (n_out,), dtype, -lim, lim)
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


#: :class:`GuideConditioner`'s linear path reads ``soft_clamp(x, LINEAR_REACH * bound)``.
LINEAR_REACH = 4.0


class GuideConditioner(eqx.Module):
    """The guide's conditioner: an MLP on bounded inputs plus a linear path to the log-scales.

    ``params = net(c(x, b)) + [0, (c(x, 4 b) @ proj) @ lift, 0...]`` with
    ``c(x, b) = b tanh(x / b)``: the network reads inputs saturated at the bound ``b``, so
    a rare extreme draw cannot drive it into extrapolation (an affine coupling's scale
    compounding from layer to layer), while a rank-``r`` linear map of the inputs,
    saturated only at ``4 b``, is added to each active coordinate's log-scale. That
    path is fitted on the bulk of the draws and extrapolates exactly where a scale
    depends log-linearly on another coordinate, as in every hierarchical funnel
    (``x ~ N(0, exp(v / 2))``: the log-scale of ``x`` is linear in ``v`` however far into
    the neck ``v`` goes). ``lift`` starts at zero, so the path starts switched off.

    Args:
        net: the network, ``(..., n_in) -> (..., n_active * n_params)``.
        n_params: raw parameters per active coordinate.
        bound: input saturation level (``None``: no saturation).
        scale_index: position of the log-scale among each coordinate's raw parameters
            (``None``: no linear path).
        linear_rank: rank ``r`` of the linear path (``0``: none).
        key: PRNG key for ``proj``.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> net = MLP(jr.key(0), 3, 4 * 2, width=8)
        >>> c = GuideConditioner(net, n_params=2, bound=5.0, scale_index=1, key=jr.key(1))
        >>> bool(jnp.all(c(jnp.ones((6, 3))) == net(jnp.ones((6, 3)))))  # lift starts at 0
        True
    """

    net: eqx.Module
    proj: jax.Array | None
    lift: jax.Array | None
    n_params: int = eqx.field(static=True)
    bound: float | None = eqx.field(static=True)
    scale_index: int | None = eqx.field(static=True)

    def __init__(
        self,
        net: eqx.Module,
        *,
        n_params: int,
        bound: float | None = 5.0,
        scale_index: int | None = None,
        linear_rank: int = 2,
        key=None,
    ):
        if linear_rank < 0:
            raise ValueError(f"linear_rank must be >= 0, got {linear_rank}")
        self.net, self.n_params, self.bound = net, int(n_params), bound
        w_in, w_out = net.weights[0], net.weights[-1]
        n_in, n_active = w_in.shape[0], w_out.shape[1] // self.n_params
        if scale_index is None or linear_rank == 0:
            self.scale_index, self.proj, self.lift = None, None, None
        else:
            self.scale_index = int(scale_index)
            key = jr.key(0) if key is None else key
            proj = initial_draws.normal(key, (n_in, linear_rank), w_in.dtype)
            self.proj = proj / np.sqrt(n_in)
            self.lift = jnp.asarray(np.zeros((linear_rank, n_active), w_in.dtype))

    def __call__(self, x):
        out = self.net(x if self.bound is None else soft_clamp(x, self.bound))
        if self.lift is None:
            return out
        by_coord = out.reshape((*out.shape[:-1], -1, self.n_params))
        # The path is linear over the bulk and well past it (to a few times ``bound``)
        # but not without end: a wild draw cannot compound through the layers.
        x_lin = x if self.bound is None else soft_clamp(x, LINEAR_REACH * self.bound)
        by_coord = by_coord.at[..., self.scale_index].add((x_lin @ self.proj) @ self.lift)
        return by_coord.reshape(out.shape)
