"""One coupling mechanism, and a thin named class per transformer.

``z_A = x_A``, ``z_B = T(x_B; c(x_A))``: the passive coordinates ``A`` are copied, the
active coordinates ``B`` go through an elementwise transformer whose raw parameters come
from a conditioner network reading ``x_A``. The Jacobian is block-triangular, so the
log-det is the sum of the transformer's elementwise log-dets over ``B``.

A conditional coupling (``context_shape`` set) feeds its conditioner a context ``c``
beside ``x_A``: ``z_B = T(x_B; c(x_A, c))``. For a fixed context the Jacobian in ``x`` is
as before; with a context a coupling may also leave no coordinate passive (every
coordinate transformed, by parameters read from the context alone), the conditional
counterpart of an elementwise layer.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from .bijection import Bijection, check_context
from .checks import as_shape
from .conditioners import MLP
from .masks import as_mask
from .transformers import Additive, Affine, MixtureGaussianCDF, RQSpline, Transformer

__all__ = [
    "COUPLINGS",
    "AdditiveCoupling",
    "AffineCoupling",
    "Coupling",
    "MixtureGaussianCDFCoupling",
    "RQSplineCoupling",
]


class Coupling(Bijection):
    """Generic masked coupling layer around any :class:`~numpyro_coupling.transformers.Transformer`.

    Args:
        key: PRNG key for the conditioner.
        shape: event shape, e.g. ``(d,)`` or ``(H, W, C)``.
        transformer: the elementwise map applied to the active coordinates.
        mask: boolean array of ``shape``, ``True`` = active. Default: first half passive.
        flip: swap passive and active.
        nn_width: conditioner hidden width.
        nn_depth: conditioner hidden layers.
        activation: conditioner activation name.
        zero_init: final conditioner kernel exactly zero, so the layer starts as the
            constant (diagonal) transform given by ``transformer.constant_params`` (and,
            conditional, ignores its context).
        dtype: parameter dtype (default: JAX's default float).
        context_shape: shape of a context the conditioner reads beside the passive
            coordinates (an int ``c`` means ``(c,)``); ``None``: unconditional. A
            conditional coupling is called as ``transform_and_log_det(x, context)``, its
            context ``(*batch, *context_shape)`` broadcasting against ``x``'s batch axes;
            its mask may then leave every coordinate active.

    Attributes:
        conditioner: the :class:`~numpyro_coupling.conditioners.MLP`; it reads
            ``(*batch, n_passive + prod(context_shape))`` (the passive coordinates, then
            the flattened context) and returns ``(*batch, n_active * n_params)``.
    """

    _params = ("conditioner",)
    _static = ("shape", "transformer", "passive_idx", "active_idx", "context_shape")

    def __init__(
        self,
        key,
        *,
        shape,
        transformer: Transformer,
        mask=None,
        flip: bool = False,
        nn_width: int = 64,
        nn_depth: int = 2,
        activation: str = "relu",
        zero_init: bool = True,
        dtype=None,
        context_shape=None,
    ):
        shape = as_shape(shape)
        if context_shape is not None:
            context_shape = as_shape(context_shape, "context_shape")
        mask = as_mask(shape, mask, flip, context=context_shape is not None).reshape(-1)
        self.shape = shape
        self.context_shape = context_shape
        self.transformer = transformer
        self.passive_idx = tuple(int(i) for i in np.flatnonzero(~mask))
        self.active_idx = tuple(int(i) for i in np.flatnonzero(mask))
        dtype = dtype or jnp.zeros(()).dtype
        bias = jnp.tile(transformer.constant_params(dtype), len(self.active_idx))
        n_context = 0 if context_shape is None else int(np.prod(context_shape))
        self.conditioner = MLP(
            key,
            len(self.passive_idx) + n_context,
            len(self.active_idx) * transformer.n_params,
            width=nn_width,
            depth=nn_depth,
            activation=activation,
            zero_init=zero_init,
            final_bias=bias,
            dtype=dtype,
        )

    @property
    def mask(self) -> np.ndarray:
        """Boolean array of the event shape, ``True`` where the coordinate is transformed."""
        m = np.zeros(int(np.prod(self.shape)), bool)
        m[list(self.active_idx)] = True
        return m.reshape(self.shape)

    def transformer_params(self, x_passive, context=None):
        """Raw parameters ``(*batch, n_active, n_params)`` from ``(*batch, n_passive)`` inputs.

        A conditional coupling also takes the flattened ``(*batch, n_context)`` context.
        """
        inputs = x_passive if context is None else jnp.concatenate([x_passive, context], -1)
        out = self.conditioner(inputs)
        return out.reshape((*out.shape[:-1], len(self.active_idx), self.transformer.n_params))

    def _apply(self, x, elementwise, context):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            # Integer data (pixels, counts): scatters below would cast results back to int.
            x = x.astype(jnp.result_type(float))
        self.check_event(x)
        batch = self.batch_shape_of(x)
        size = int(np.prod(self.shape))
        flat = jnp.reshape(x, (*batch, size))
        if self.context_shape is not None:
            flat, context = self._with_context(flat, context)
            batch = flat.shape[:-1]
        elif context is not None:
            raise ValueError(f"context was given, but this {type(self).__name__} reads none")
        x_passive = _take(flat, self.passive_idx) if self.passive_idx else flat[..., :0]
        params = self.transformer_params(x_passive, context)
        out_b, log_det = elementwise(_take(flat, self.active_idx), params)
        if self.passive_idx:
            out = _merge(flat, x_passive, self.passive_idx, out_b, self.active_idx)
        else:
            out = out_b  # every coordinate active, in order
        return out.reshape((*batch, *self.shape)), log_det.sum(-1)

    def _with_context(self, flat, context):
        """``flat`` and the flattened context, both broadcast to their common batch shape."""
        if context is None:
            raise ValueError(
                f"this {type(self).__name__} reads a context of shape {self.context_shape}: "
                "pass context= (a conditional flow is evaluated through flow.condition(context))"
            )
        context = check_context(context, self.context_shape).astype(flat.dtype)
        n = len(self.context_shape)
        context_batch = context.shape[: context.ndim - n]
        context = context.reshape((*context_batch, -1))
        batch = jnp.broadcast_shapes(flat.shape[:-1], context_batch)
        flat = jnp.broadcast_to(flat, (*batch, flat.shape[-1]))
        return flat, jnp.broadcast_to(context, (*batch, context.shape[-1]))

    def transform_and_log_det(self, x, context=None):
        return self._apply(x, self.transformer.forward, context)

    def inverse_and_log_det(self, y, context=None):
        return self._apply(y, self.transformer.inverse, context)


class AffineCoupling(Coupling):
    """RealNVP affine coupling ``z_B = x_B * exp(s(x_A)) + t(x_A)``, log-scale soft-bounded.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> layer = AffineCoupling(jr.key(0), shape=(4,), nn_width=32, nn_depth=2, zero_init=False)
        >>> z, log_det = layer.transform_and_log_det(jnp.ones(4))
        >>> bool((z[:2] == 1.0).all()), log_det.shape
        (True, ())
    """

    def __init__(self, key, *, shape, log_scale_bound: float = 5.0, **kwargs):
        super().__init__(key, shape=shape, transformer=Affine(log_scale_bound), **kwargs)


class AdditiveCoupling(Coupling):
    """NICE additive coupling ``z_B = x_B + t(x_A)``: volume preserving (log-det 0).

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> layer = AdditiveCoupling(jr.key(0), shape=(3,), zero_init=False)
        >>> float(layer.transform_and_log_det(jnp.ones(3))[1])
        0.0
    """

    def __init__(self, key, *, shape, **kwargs):
        super().__init__(key, shape=shape, transformer=Additive(), **kwargs)


class RQSplineCoupling(Coupling):
    """Neural spline coupling (NSF): rational-quadratic spline with identity tails.

    Args:
        n_bins: spline bins.
        interval: the spline acts on ``[-interval, interval]``; identity outside.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> layer = RQSplineCoupling(jr.key(0), shape=(2,), n_bins=8, interval=4.0)
        >>> x = jnp.array([0.3, -0.2])
        >>> bool(jnp.allclose(layer.transform(x), x, atol=1e-6))  # zero-init: identity
        True
    """

    def __init__(self, key, *, shape, n_bins: int = 8, interval: float = 4.0, **kwargs):
        super().__init__(key, shape=shape, transformer=RQSpline(n_bins, interval), **kwargs)


class MixtureGaussianCDFCoupling(Coupling):
    """Gaussianisation coupling ``z_B = Phi^-1(sum_k w_k Phi((x_B - mu_k) / sigma_k))``.

    The forward direction (data to latent) is closed form; the inverse is a safeguarded
    root-find accurate to machine precision, with implicit-function gradients.

    Args:
        n_components: mixture components per active coordinate.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> layer = MixtureGaussianCDFCoupling(jr.key(0), shape=(2,), n_components=4)
        >>> x = jnp.array([0.5, 1.5])
        >>> bool(jnp.allclose(layer.inverse(layer.transform(x)), x, atol=1e-5))
        True
    """

    def __init__(self, key, *, shape, n_components: int = 8, **kwargs):
        super().__init__(key, shape=shape, transformer=MixtureGaussianCDF(n_components), **kwargs)


#: The named coupling classes by their transformer's name.
COUPLINGS = {
    "affine": AffineCoupling,
    "additive": AdditiveCoupling,
    "spline": RQSplineCoupling,
    "mixture": MixtureGaussianCDFCoupling,
}


def _contiguous(idx) -> bool:
    """Whether the (sorted) indices are one run ``start, start + 1, ..., stop - 1``."""
    return len(idx) > 0 and idx[-1] - idx[0] == len(idx) - 1


# Cached: every pass asks again for the same masks (static tuples).
@functools.cache
def _periodic(idx, size: int) -> tuple[int, int] | None:
    """``(period, phase)`` if ``idx == {i < size : (i // period) % 2 == phase}``, else ``None``.

    Alternating blocks of one length, as in every mask of
    :func:`~numpyro_coupling.masks.bit_masks` and the checkerboard of a vector. Such a set is a
    strided slice of the vector padded to whole blocks, which fuses with its neighbours
    where a gather (and the scatter-add of its gradient) would not.
    """
    if not idx:
        return None
    if idx[0] == 0:
        period, phase = next((n for n in range(1, len(idx)) if idx[n] != n), len(idx)), 0
    else:
        period, phase = idx[0], 1
    blocks = np.flatnonzero(np.arange(size) // period % 2 == phase)
    return (period, phase) if np.array_equal(blocks, idx) else None


def _blocks(flat_size: int, period: int) -> int:
    return -(-flat_size // (2 * period))


def _take(flat, idx):
    """``flat[..., idx]``: a slice if ``idx`` is one run or alternating blocks, else a gather."""
    size = flat.shape[-1]
    if _contiguous(idx):
        return flat[..., idx[0] : idx[-1] + 1]
    periodic = _periodic(idx, size)
    if periodic is None:
        return flat[..., np.asarray(idx)]
    period, phase = periodic
    n_blocks = _blocks(size, period)
    pad = [(0, 0)] * (flat.ndim - 1) + [(0, 2 * period * n_blocks - size)]
    blocked = jnp.pad(flat, pad).reshape((*flat.shape[:-1], n_blocks, 2, period))
    # Padding lies past the last index, so it is cut off the end.
    return blocked[..., phase, :].reshape((*flat.shape[:-1], -1))[..., : len(idx)]


def _merge(flat, a, a_idx, b, b_idx):
    """``flat`` with ``b`` written at ``b_idx``, where ``a == flat[..., a_idx]`` (the complement).

    The slice and strided paths build the vector from ``a`` and ``b``; the fallback writes
    ``b`` into ``flat``, so ``a`` must be what ``flat`` already holds at ``a_idx``.
    """
    size = flat.shape[-1]
    if _contiguous(a_idx) and _contiguous(b_idx):
        # Half masks: a concatenation instead of a scatter.
        return jnp.concatenate([a, b] if a_idx[0] == 0 else [b, a], -1)
    periodic = _periodic(a_idx, size)
    if periodic is None:
        return flat.at[..., np.asarray(b_idx)].set(b)
    period, phase = periodic
    n_blocks = _blocks(size, period)

    def blocked(v):
        pad = [(0, 0)] * (v.ndim - 1) + [(0, period * n_blocks - v.shape[-1])]
        return jnp.pad(v, pad).reshape((*v.shape[:-1], n_blocks, 1, period))

    parts = [blocked(a), blocked(b)]
    out = jnp.concatenate(parts if phase == 0 else parts[::-1], -2)
    return out.reshape((*flat.shape[:-1], -1))[..., :size]
