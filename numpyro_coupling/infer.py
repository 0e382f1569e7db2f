"""Coupling flows as variational guides, and Neural Transport (NeuTra) HMC with them.

:class:`AutoCouplingFlow` is an ``AutoContinuous`` guide: it flattens the model's latent
sites into one unconstrained vector ``x`` and models it as

``x = loc + scale * T^-1(z)``,  ``z ~ N(0, I)``,

where ``T`` is a stack of coupling layers (the normalising direction, data to latent, as
in :class:`~numpyro_coupling.CouplingFlow`). The learnt elementwise ``loc``/``scale`` layer
puts the couplings in standardised coordinates, so a spline's fixed interval covers the
bulk of the posterior whatever its scale; the conditioners start at zero, so with the
affine, spline and additive transformers the guide starts as ``N(init_loc, init_scale^2)``
(a mixture-CDF coupling at zero parameters is not the identity).

Sampling (what ``SVI`` and ``NeuTraReparam`` need) runs ``T^-1`` and its log-det in one
pass per coupling; density evaluation (``get_posterior(...).log_prob``) runs ``T`` in one
pass. With ``transformer="mixture"`` the sampling direction is the mixture-CDF's inverse,
a root-find, so that guide is slower.

:func:`fit_guide` runs ``SVI`` and averages the last iterates, :func:`neutra_nuts` runs
NUTS on the geometry a fitted guide warps (NumPyro's ``NeuTraReparam``), and
:func:`neutra_mcmc` chains the two, returning the MCMC object with an ArviZ
``InferenceData`` in the model's constrained space; :func:`nuts_mcmc` is the plain-NUTS
baseline with the same outputs and :func:`sampling_efficiency` their figures of merit.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
import warnings
import weakref

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions import TransformedDistribution, constraints
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_median, init_to_uniform
from numpyro.infer.reparam import NeuTraReparam
from numpyro.infer.util import unconstrain_fn
from tqdm.auto import tqdm

from .bijection import Bijection, Chain, one_program
from .coupling import Coupling
from .flows import _permutation_layer
from .linear import ActNorm1D
from .transformers import Additive, Affine, MixtureGaussianCDF, RQSpline, Transformer, soft_clamp

__all__ = [
    "GUIDE_TRANSFORMERS",
    "AffineRQSpline",
    "AutoCouplingFlow",
    "Elementwise",
    "GuideConditioner",
    "Invert",
    "LocScale",
    "SiteOrderedTraceELBO",
    "bit_masks",
    "fit_guide",
    "guide_flow_layers",
    "guide_optimizer",
    "neutra_mcmc",
    "neutra_nuts",
    "nuts_mcmc",
    "sampling_efficiency",
    "temper_likelihood",
    "unconstrained_draws",
]

#: ``transformer=`` choices of :class:`AutoCouplingFlow`.
GUIDE_TRANSFORMERS = ("spline", "affine", "mixture", "additive")
_PERMUTATIONS = ("bits", "random", "flip", "householder", "lu", "none")


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocScale(Affine):
    """``y = (x - shift) * exp(-log_scale)``: an affine map written as a standardisation.

    The family of :class:`~numpyro_coupling.Affine` (``x * exp(s) + t``), parameterised
    so that a hierarchical dependency is simple for the conditioner: when, given the
    context, ``x ~ N(m, exp(2 l))`` (eight schools' ``theta ~ N(mu, tau)``), the exact
    map has ``shift = m`` and ``log_scale = l``, while ``x * exp(s) + t`` needs
    ``t = -m exp(-l)``, a product that grows without bound in a funnel's neck.

    Raw parameters: ``shift``, ``log_scale`` (soft-bounded by ``log_scale_bound``). Zero
    raw parameters give the identity.

    Example:
        >>> import jax.numpy as jnp
        >>> t = LocScale()
        >>> params = jnp.array([1.0, 0.5])  # shift 1, log-scale about 0.5 (soft-bounded)
        >>> y, log_det = t.forward(jnp.array(3.0), params)
        >>> round(float(t.inverse(y, params)[0]), 4), bool(log_det < 0)
        (3.0, True)
        >>> float(t.forward(jnp.array(3.0), jnp.zeros(2))[0])  # zero parameters: identity
        3.0
    """

    log_scale_bound: float = 6.0

    # The same map as Affine, read the other way round: Affine's inverse is a
    # standardisation, ``(y - shift) * exp(-log_scale)``.
    forward = Affine.inverse
    inverse = Affine.forward


@dataclasses.dataclass(frozen=True)
class AffineRQSpline(Transformer):
    """A conditional affine map followed by a rational-quadratic spline.

    ``y = spline((x - shift) * exp(-log_scale))``: the affine part (:class:`LocScale`)
    moves and rescales the coordinate into the spline's interval, the spline reshapes it
    there. A plain spline is the identity outside ``[-interval, interval]``, so on its own
    it cannot follow a coordinate whose scale varies with the context (a funnel's neck and
    mouth); the affine part can. Zero raw parameters give the identity.

    Raw parameters: ``shift``, ``log_scale`` (soft-bounded by ``log_scale_bound``), then
    the spline's ``3 * n_bins - 1``.

    Args:
        n_bins: spline bins.
        interval: spline half-width (in the standardised coordinates the affine part
            produces).
        log_scale_bound: soft bound on ``|log_scale|``.

    Example:
        >>> import jax.numpy as jnp
        >>> t = AffineRQSpline(n_bins=4, interval=3.0)
        >>> params = jnp.zeros(t.n_params).at[1].set(jnp.log(2.0))
        >>> y, log_det = t.forward(jnp.array(1.0), params)
        >>> round(float(y), 4), round(float(t.inverse(y, params)[0]), 4)
        (0.5015, 1.0)
    """

    n_bins: int = 8
    interval: float = 4.0
    log_scale_bound: float = 6.0
    log_scale_index = 1  # a class constant, not a field

    def __post_init__(self):
        # The two stages, built once; equality and hashing see only the three options.
        object.__setattr__(self, "_affine", LocScale(self.log_scale_bound))
        object.__setattr__(self, "_spline", RQSpline(self.n_bins, self.interval))

    @property
    def n_params(self) -> int:
        return 2 + self._spline.n_params

    def forward(self, x, params):
        u, log_det = self._affine.forward(x, params[..., :2])
        y, spline_log_det = self._spline.forward(u, params[..., 2:])
        return y, log_det + spline_log_det

    def inverse(self, y, params):
        u, spline_log_det = self._spline.inverse(y, params[..., 2:])
        x, log_det = self._affine.inverse(u, params[..., :2])
        return x, log_det + spline_log_det


class Invert(Bijection):
    """The inverse of a :class:`~numpyro_coupling.Bijection`, still one pass each way.

    NumPyro's generic ``transform.inv`` computes a log-det by running the forward map a
    second time; this wrapper swaps ``transform_and_log_det`` and
    ``inverse_and_log_det`` instead, so sampling through the inverse of a flow costs one
    conditioner evaluation per coupling.

    Args:
        bijection: the bijection to invert.

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro_coupling import ActNorm1D
        >>> norm = ActNorm1D((2,)).initialize(jnp.array([[0.0, 0.0], [2.0, 4.0]]))
        >>> Invert(norm).transform(jnp.array([-1.0, 1.0])).tolist()
        [0.0, 4.0]
    """

    _params = ("bijection",)
    _static = ("shape",)

    def __init__(self, bijection: Bijection):
        self.bijection = bijection
        self.shape = tuple(bijection.shape)

    # Compiled passes: called eagerly (``svi.init``, ``sample_posterior``) a deep flow
    # would otherwise run op by op.
    @one_program
    def transform_and_log_det(self, x):
        return self.bijection.inverse_and_log_det(x)

    @one_program
    def inverse_and_log_det(self, y):
        return self.bijection.transform_and_log_det(y)

    def __repr__(self):
        return f"Invert({self.bijection!r})"


class _MemoInvert(Invert):
    """:class:`Invert` that remembers its last forward call.

    ``NeuTraReparam`` calls ``transform(z)`` and then ``log_abs_det_jacobian(z, x)``;
    the memo hands back the log-det of the first call instead of a second pass.
    """

    def __call__(self, x):
        y, log_det = self.transform_and_log_det(x)
        try:
            memo = (weakref.ref(x), weakref.ref(y), log_det)
        except TypeError:  # a Python scalar: nothing to remember it by
            return y
        self._memo = memo
        # The memo lives only as long as ``y``: a traced call leaves no tracer in the object.
        weakref.finalize(y, self._forget, memo)
        return y

    def _forget(self, memo):
        if getattr(self, "_memo", None) is memo:
            del self._memo

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        memo = getattr(self, "_memo", None)
        if intermediates is None and memo is not None and memo[0]() is x and memo[1]() is y:
            return memo[2]
        return super().log_abs_det_jacobian(x, y, intermediates)


class Elementwise(Bijection):
    """A transformer applied to every coordinate with its own learnt (unconditioned) parameters.

    The fallback for one-dimensional latents, where no coupling split exists.

    Args:
        transformer: the elementwise map.
        shape: event shape ``(d,)``.
        dtype: parameter dtype.

    Attributes:
        params: ``(d, n_params)`` raw parameters, initialised at
            ``transformer.constant_params``.

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro_coupling import RQSpline
        >>> layer = Elementwise(RQSpline(4, 3.0), (1,))
        >>> y, log_det = layer.transform_and_log_det(jnp.array([[0.5]]))
        >>> round(float(y[0, 0]), 6), abs(round(float(log_det[0]), 6))
        (0.5, 0.0)
    """

    _params = ("params",)
    _static = ("shape", "transformer")

    def __init__(self, transformer: Transformer, shape, dtype=None):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 1:
            raise ValueError(f"Elementwise acts on vector events (d,), got {shape}")
        dtype = dtype or jnp.zeros(()).dtype
        self.shape = shape
        self.transformer = transformer
        self.params = jnp.tile(transformer.constant_params(dtype), (*shape, 1))

    def _apply(self, x, fn):
        self.check_event(x)
        params = jnp.broadcast_to(self.params, jnp.shape(x) + self.params.shape[-1:])
        y, log_det = fn(x, params)
        return y, log_det.sum(-1)

    def transform_and_log_det(self, x):
        return self._apply(x, self.transformer.forward)

    def inverse_and_log_det(self, y):
        return self._apply(y, self.transformer.inverse)


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
        >>> from numpyro_coupling import MLP
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
            self.proj = jr.normal(key, (n_in, linear_rank), w_in.dtype) / np.sqrt(n_in)
            self.lift = jnp.zeros((linear_rank, n_active), w_in.dtype)

    def __call__(self, x):
        out = self.net(x if self.bound is None else soft_clamp(x, self.bound))
        if self.lift is None:
            return out
        by_coord = out.reshape((*out.shape[:-1], -1, self.n_params))
        # The path is linear over the bulk and well past it (to a few times ``bound``)
        # but not without end: a wild draw cannot compound through the layers.
        x_lin = x if self.bound is None else soft_clamp(x, _LINEAR_REACH * self.bound)
        by_coord = by_coord.at[..., self.scale_index].add((x_lin @ self.proj) @ self.lift)
        return by_coord.reshape(out.shape)


#: Flow leaves of up to this many entries share one flat vector (see :func:`_pack_leaves`).
_PACK_MAX_LEAF = 1024


def _pack_leaves(tree, max_leaf: int = _PACK_MAX_LEAF):
    """Pack a pytree's arrays for the optimiser: small leaves in one flat vector.

    Adam updates every array with its own kernels, so dozens of tiny leaves (biases,
    small kernels) dominate a small guide's step time; one flat vector updates them at
    once. Slicing a kernel back out of a flat vector copies it on every pass, though,
    which for large kernels costs more than their own update: they stay separate.

    Args:
        tree: pytree of arrays.
        max_leaf: largest leaf (in entries) that goes into the flat vector.

    Returns:
        ``(packed, unpack)``: the flat vector alone when every leaf is small, else a list
        ``[flat, *large_leaves]`` (``flat`` left out when no leaf is small), and the
        function mapping ``packed`` back to the pytree.
    """
    leaves, treedef = jax.tree.flatten(tree)
    small = [i for i, leaf in enumerate(leaves) if leaf.size <= max_leaf]
    large = [i for i, leaf in enumerate(leaves) if leaf.size > max_leaf]
    if not large:
        return ravel_pytree(tree)
    flat, unravel = ravel_pytree([leaves[i] for i in small])
    packed = ([flat] if small else []) + [leaves[i] for i in large]

    def unpack(packed):
        out = [None] * len(leaves)
        if small:
            for i, leaf in zip(small, unravel(packed[0])):
                out[i] = leaf
        for i, leaf in zip(large, packed[1:] if small else packed):
            out[i] = leaf
        return jax.tree.unflatten(treedef, out)

    return packed, unpack


#: The linear path reads ``soft_clamp(x, _LINEAR_REACH * bound)``.
_LINEAR_REACH = 4.0

#: The guides' default soft bound on a coupling's log-scale: wide, since a funnel's neck
#: needs one coupling to shrink a coordinate by ``exp(-7)`` and more (the conditioner's
#: saturated inputs already keep the network part bounded).
_GUIDE_LOG_SCALE_BOUND = 20.0


def _guide_transformer(name, transformer_kwargs) -> Transformer:
    kw = dict(transformer_kwargs)
    if name == "spline":
        t = AffineRQSpline(
            n_bins=kw.pop("n_bins", 8),
            interval=kw.pop("interval", 4.0),
            log_scale_bound=kw.pop("log_scale_bound", _GUIDE_LOG_SCALE_BOUND),
        )
    elif name == "affine":
        t = LocScale(kw.pop("log_scale_bound", _GUIDE_LOG_SCALE_BOUND))
    elif name == "additive":
        t = Additive()
    elif name == "mixture":
        t = MixtureGaussianCDF(kw.pop("n_components", 8))
    else:
        raise ValueError(f"transformer must be one of {GUIDE_TRANSFORMERS}, got {name!r}")
    if kw:
        raise ValueError(f"unexpected keyword arguments for transformer={name!r}: {sorted(kw)}")
    return t


def bit_masks(dim: int, n_layers: int) -> np.ndarray:
    """Coupling masks that condition every coordinate on every other one.

    Layer ``2b`` makes active the coordinates whose index has bit ``b`` set, layer
    ``2b + 1`` the complement, cycling over the ``ceil(log2 dim)`` bits. Two indices
    differ in some bit, so with ``2 * ceil(log2 dim)`` layers every ordered pair
    ``(i, j)`` meets once with ``i`` passive and ``j`` active: a hierarchical posterior
    (a scale variable and the coordinates it scales) is reachable in one coupling
    whichever coordinates play which role. Random masks miss a given pair in a given
    layer with probability 3/4.

    With fewer layers, ``p = n_layers // 2`` pairs, the first ``2^p`` coordinates keep
    those codes and the others take the remaining codes active in exactly ``p`` of the
    ``2p`` paired layers (in complementary pairs, so every layer stays half active). No
    code of that weight contains another, so every ordered pair still meets while
    ``dim <= C(2p, p)``: 70 coordinates for eight layers, 252 for ten, 924 for twelve,
    3432 for fourteen, the most any ``2p`` masks can reach (Sperner's theorem). Beyond
    that the codes repeat, and coordinates sharing one never meet.

    Args:
        dim: number of coordinates (``>= 2``).
        n_layers: number of masks.

    Returns:
        ``(n_layers, dim)`` boolean array, ``True`` = active.

    Example:
        >>> bit_masks(4, 4).astype(int).tolist()
        [[0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]]
        >>> bit_masks(5, 4).astype(int).T.tolist()  # the fifth coordinate: a new code
        [[0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0]]
    """
    masks = _index_bit_masks(dim, n_layers)
    n_pairs = n_layers // 2
    if 0 < n_pairs < _n_index_bits(dim):
        masks[: 2 * n_pairs] = _balanced_codes(dim, n_pairs).T
    return masks


def _n_index_bits(dim: int) -> int:
    return max(int(np.ceil(np.log2(dim))), 1)


def _index_bit_masks(dim: int, n_layers: int) -> np.ndarray:
    """The index-bit masks alone: layer ``2b`` active where bit ``b`` of the index is set,
    layer ``2b + 1`` the complement, cycling over the bits (see :func:`bit_masks`).

    Returns:
        ``(n_layers, dim)`` boolean array, ``True`` = active.
    """
    n_bits = _n_index_bits(dim)
    idx = np.arange(dim)
    masks = []
    for k in range(n_layers):
        active = (idx >> ((k // 2) % n_bits)) & 1 == 1
        masks.append(~active if k % 2 else active)
    return np.stack(masks)


def _balanced_codes(dim: int, n_pairs: int) -> np.ndarray:
    """``(dim, 2 * n_pairs)`` codes of weight ``n_pairs``: index bits first, then the rest."""
    n_layers = 2 * n_pairs
    bits = (np.arange(2**n_pairs)[:, None] >> np.arange(n_pairs)) & 1 == 1
    codes = [tuple(c) for c in np.stack([bits, ~bits], axis=-1).reshape(-1, n_layers)]
    used = set(codes)
    for active in itertools.combinations(range(n_layers), n_pairs):
        if len(codes) >= dim:
            break
        code = tuple(k in active for k in range(n_layers))
        if code in used:
            continue
        complement = tuple(not c for c in code)
        codes += [code, complement]
        used.update((code, complement))
    codes = np.array(codes, dtype=bool)
    return codes[np.arange(dim) % len(codes)]


def guide_flow_layers(
    key,
    dim: int,
    *,
    transformer: str = "affine",
    n_layers: int = 8,
    nn_width: int = 16,
    nn_depth: int = 2,
    permutation: str = "bits",
    activation: str = "relu",
    input_bound: float | None = 5.0,
    linear_rank: int = 2,
    dtype=None,
    **transformer_kwargs,
) -> Chain:
    """The coupling stack of :class:`AutoCouplingFlow` (normalising direction, no loc/scale).

    Data-to-latent order: ``[mix_1, coupling_1, mix_2, coupling_2, ...]`` where ``mix`` is
    a permutation or learnt rotation (none for ``permutation="bits"``, whose couplings
    carry :func:`bit_masks`). For ``dim == 1`` it is ``n_layers`` :class:`Elementwise`
    layers instead. Arguments as in :class:`AutoCouplingFlow`.

    Example:
        >>> import jax.random as jr
        >>> len(guide_flow_layers(jr.key(0), 3, n_layers=2))  # "bits" masks: couplings only
        2
        >>> len(guide_flow_layers(jr.key(0), 3, n_layers=2, permutation="random"))
        4
    """
    if permutation not in _PERMUTATIONS:
        raise ValueError(f"permutation must be one of {_PERMUTATIONS}, got {permutation!r}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    t = _guide_transformer(transformer, transformer_kwargs)
    if dim == 1:
        return Chain([Elementwise(t, (1,), dtype) for _ in range(n_layers)])
    layers = []
    masks = bit_masks(dim, n_layers) if permutation == "bits" else [None] * n_layers
    for k, mask in zip(jr.split(key, n_layers), masks):
        ck, pk = jr.split(k)
        mix = None if permutation == "bits" else _permutation_layer(permutation, pk, dim, dtype)
        if mix is not None:
            layers.append(mix)
        coupling = Coupling(
            ck,
            shape=(dim,),
            mask=mask,
            transformer=t,
            nn_width=nn_width,
            nn_depth=nn_depth,
            activation=activation,
            dtype=dtype,
        )
        coupling.conditioner = GuideConditioner(
            coupling.conditioner,
            n_params=t.n_params,
            bound=input_bound,
            scale_index=t.log_scale_index,
            linear_rank=linear_rank,
            key=jr.fold_in(ck, 1),
        )
        layers.append(coupling)
    return Chain(layers)


class _GuidePosterior(TransformedDistribution):
    """``TransformedDistribution(base, Invert(normaliser))`` with a one-pass ``log_prob``."""

    def __init__(self, base_dist, normaliser: Bijection, stl: bool = False):
        super().__init__(base_dist, [_MemoInvert(normaliser)])
        self.stl = stl

    @property
    def normaliser(self) -> Bijection:
        """The latent-to-base (normalising) bijection."""
        return self.transforms[0].bijection

    def log_prob(self, value, intermediates=None):
        if self.stl:
            # "Sticking the landing": the density's parameters get no gradient, only the
            # sample path does (unbiased; zero variance when q equals the posterior).
            z, log_det = jax.lax.stop_gradient(self.normaliser).transform_and_log_det(value)
            return self.base_dist.log_prob(z) + log_det
        if intermediates is not None:
            return super().log_prob(value, intermediates)
        z, log_det = self.normaliser.transform_and_log_det(value)
        return self.base_dist.log_prob(z) + log_det


def _checked_init_scale(value) -> float | str:
    """``"auto"``, or ``value`` as a positive float (a Python, NumPy or JAX scalar)."""
    if isinstance(value, str) and value == "auto":
        return value
    scale = float("nan")
    if not isinstance(value, (bool, np.bool_)) and np.ndim(value) == 0:
        try:
            scale = float(value)
        except (TypeError, ValueError):
            pass
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"init_scale must be 'auto' or a positive number, got {value!r}")
    return scale


def _discrete_latent_sites(model, args, kwargs) -> list[str]:
    tr = _prototype_trace(model, args, kwargs)
    return [
        name
        for name, site in tr.items()
        if site["type"] == "sample" and not site["is_observed"] and site["fn"].support.is_discrete
    ]


# --------------------------------------------------------------------------------------
# The guide
# --------------------------------------------------------------------------------------


class AutoCouplingFlow(AutoContinuous):
    """A coupling-flow autoguide: ``x = loc + scale * T^-1(z)``, ``z ~ N(0, I)``.

    Used exactly like ``AutoIAFNormal``: in ``SVI`` with ``Trace_ELBO``, then
    ``sample_posterior``, ``median``, ``quantiles``, ``get_transform`` and NumPyro's
    ``NeuTraReparam(guide, params)``.

    Parameters (``numpyro.param`` sites): ``{prefix}_loc`` and ``{prefix}_scale`` (the
    elementwise layer, ``(latent_dim,)``, the scale positive) and ``{prefix}_flow$params``
    (the couplings' trainable leaves: the leaves of up to 1024 entries raveled into one
    vector, so the optimiser updates them as one array, and when some kernel is larger, a
    list of that vector and each larger kernel; :meth:`get_normaliser` gives the layers
    back). The conditioners' final kernels start at zero, so with the affine, spline and
    additive transformers the guide starts as ``N(loc, scale^2)``.

    The defaults were chosen on the NeuTra benchmarks (``benchmarks/neutra.py``):

    * ``permutation="bits"`` masks (:func:`bit_masks`): every coordinate is transformed
      conditionally on every other one up to ``D = 70`` latent dimensions with the
      default eight layers (252 with ten, 924 with twelve, 3432 with fourteen; raise
      ``n_layers`` beyond), so a scale variable and the coordinates it scales (a funnel,
      a hierarchical model) always meet in some coupling; random permutations miss such
      pairs;
    * conditioners read ``5 * tanh(u / 5)`` of their (standardised) inputs, so a rare draw
      far in the tails cannot make an affine coupling's scale compound from layer to layer
      (the source of the loss spikes that otherwise undo SVI progress), while a rank-2
      linear path from the raw inputs to the log-scales (:class:`GuideConditioner`)
      keeps following a funnel's scale deep into its neck (without it, nearly all of the
      10-D funnel's KL came from the 1% of draws deepest in the neck, where the guide's
      scale stalled);
    * ``stl=True``: the "sticking the landing" gradient (Roeder et al., 2017): the guide's
      own density is evaluated with its parameters held fixed, so the gradient noise
      vanishes as the guide approaches the posterior. With objectives that average the
      ELBO over particles (``Trace_ELBO``, ``TraceMeanField_ELBO``,
      :class:`SiteOrderedTraceELBO`) the ELBO and its expected gradient are unchanged;
      objectives that weight particles by their density ratios (``RenyiELBO``, importance
      weighted bounds) get a biased gradient, so use ``stl=False`` with them. Each step
      costs one extra pass through the flow (the normalising direction). It applies to
      the draws SVI takes from the guide only: :meth:`get_posterior` returns a density
      differentiable in the parameters;
    * affine couplings: on the funnel the spline guide reaches a similar KL but leaves
      NUTS a much rougher warped space;
    * narrow conditioners (``nn_width=16``): with a constant Adam step every parameter
      keeps jittering by about the step size, so extra parameters cost accuracy. Pair the
      guide with the parameter averaging of :func:`fit_guide`.

    Args:
        model: a NumPyro model with continuous latent sites.
        transformer: the coupling's elementwise map: ``"affine"`` (:class:`LocScale`,
            ``(x - shift) * exp(-log_scale)``: exact for hierarchical scale/location
            dependencies, and the warped space stays smooth for NUTS), ``"spline"`` (a
            conditional affine map followed by a rational-quadratic spline,
            :class:`AffineRQSpline`: also reshapes, e.g. splits mass between modes),
            ``"mixture"`` (Gaussian-mixture CDF; sampling needs its
            root-find inverse, so it is several times slower and slow to compile) or
            ``"additive"`` (NICE). Defaults to ``"affine"``, or ``"mixture"`` with
            ``warm_start``.
        n_layers: coupling layers (for ``latent_dim == 1``: elementwise layers).
        nn_width: conditioner hidden width.
        nn_depth: conditioner hidden layers.
        permutation: how the couplings' active halves change from layer to layer:
            ``"bits"`` (:func:`bit_masks`), or a half mask preceded by a ``"random"``
            permutation, a ``"flip"``, a learnt ``"householder"`` rotation or ``"lu"``
            map, or ``"none"``.
        activation: conditioner activation (see :class:`~numpyro_coupling.MLP`).
        input_bound: conditioners read ``input_bound * tanh(u / input_bound)``; ``None``
            feeds ``u`` unchanged.
        linear_rank: rank of the linear path from a conditioner's raw inputs to the
            log-scales (:class:`GuideConditioner`; affine and spline couplings; ``0``: none).
        init_loc_fn: per-site initialisation of ``loc`` (NumPyro init strategy).
        init_scale: initial ``scale``: a positive float for every coordinate (default 1:
            broad enough to see several modes), or ``"auto"``: the inverse square root
            of the diagonal of the negative log-density's Hessian at the initial
            location, clipped to ``[1e-4, 5]`` and 1 where the curvature is not positive
            (exact up to 1024 latent dimensions, a 64-probe Hutchinson estimate above);
            use it for concentrated posteriors.
        prefix: name prefix of the guide's sites.
        warm_start: optional dict ``site -> draws`` (leading axis: draws, in the model's
            constrained space, e.g. from a pilot NUTS run). The flow is then
            :func:`~numpyro_coupling.rbig.fit_rbig_coupling` of the draws in the guide's
            unconstrained space (``n_layers // 2`` RBIG blocks of two mixture-CDF
            couplings with zero final kernels), so the guide starts as that fit exactly
            (``loc = 0``, ``scale = 1``). The fit is kept as ``warm_start_flow``. Its
            layers are the RBIG fit's own: ``permutation``, ``activation``,
            ``input_bound`` and ``linear_rank`` do not apply.
        stl: use the "sticking the landing" gradient estimator (``Trace_ELBO``-type
            objectives only; see above).
        **transformer_kwargs: ``n_bins``, ``interval``, ``log_scale_bound`` (spline),
            ``log_scale_bound`` (affine), ``n_components`` (mixture and warm start).

    Raises:
        ValueError: unknown options, or (at the first call) a model with discrete latent
            sites.

    Example:
        >>> import jax.random as jr, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 2.0).expand([3]).to_event(1))
        >>> guide = AutoCouplingFlow(model, n_layers=2, nn_width=8)
        >>> svi = SVI(model, guide, numpyro.optim.Adam(3e-3), Trace_ELBO())
        >>> result = svi.run(jr.key(0), 100, progress_bar=False)
        >>> guide.sample_posterior(jr.key(1), result.params, sample_shape=(5,))["x"].shape
        (5, 3)
    """

    def __init__(
        self,
        model,
        *,
        transformer: str | None = None,
        n_layers: int = 8,
        nn_width: int = 16,
        nn_depth: int = 2,
        permutation: str = "bits",
        activation: str = "relu",
        input_bound: float | None = 5.0,
        linear_rank: int = 2,
        init_loc_fn=init_to_median,
        init_scale: float | str = 1.0,
        prefix: str = "auto",
        warm_start: dict | None = None,
        stl: bool = True,
        **transformer_kwargs,
    ):
        if transformer is None:
            transformer = "mixture" if warm_start is not None else "affine"
        if warm_start is not None and transformer != "mixture":
            raise ValueError(
                "warm_start builds mixture-CDF couplings by the RBIG fit; "
                f"use transformer='mixture' (or leave it unset), got {transformer!r}"
            )
        init_scale = _checked_init_scale(init_scale)
        self.transformer = transformer
        self.n_layers = int(n_layers)
        self.nn_width = int(nn_width)
        self.nn_depth = int(nn_depth)
        self.permutation = permutation
        self.activation = activation
        self.input_bound = input_bound
        if not (isinstance(linear_rank, (int, np.integer)) and linear_rank >= 0):
            raise ValueError(f"linear_rank must be a non-negative integer, got {linear_rank!r}")
        self.linear_rank = int(linear_rank)
        self.init_scale = init_scale
        self.transformer_kwargs = dict(transformer_kwargs)
        self.warm_start = warm_start
        self.stl = bool(stl)
        # Validate the configuration now rather than at the first SVI step.
        _guide_transformer(transformer, transformer_kwargs)
        if permutation not in _PERMUTATIONS:
            raise ValueError(f"permutation must be one of {_PERMUTATIONS}, got {permutation!r}")
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    # --- setup ------------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs):
        discrete = _discrete_latent_sites(self.model, args, kwargs)
        if discrete:
            raise ValueError(
                f"{type(self).__name__} needs continuous latent sites; the model has discrete "
                f"latent sites {discrete}. Marginalise them out (e.g. enumerate with "
                "funsor) or use a guide for discrete variables."
            )
        super()._setup_prototype(*args, **kwargs)
        self._model_args = (args, kwargs)
        dtype = jnp.result_type(float, self._init_latent)
        d = self.latent_dim
        key = numpyro.prng_key()
        key = jr.key(0) if key is None else key
        if self.warm_start is not None:
            with handlers.block():
                flat = self.unconstrained_latent(self.warm_start).reshape(-1, d).astype(dtype)
                layers = self._rbig_layers(flat, key)
            loc, scale = jnp.zeros(d, dtype), jnp.ones(d, dtype)
        else:
            layers = guide_flow_layers(
                key,
                d,
                transformer=self.transformer,
                n_layers=self.n_layers,
                nn_width=self.nn_width,
                nn_depth=self.nn_depth,
                permutation=self.permutation,
                activation=self.activation,
                input_bound=self.input_bound,
                linear_rank=self.linear_rank,
                dtype=dtype,
                **self.transformer_kwargs,
            )
            loc = self._init_latent.astype(dtype)
            if self.init_scale == "auto":
                with handlers.block():
                    scale = self._curvature_scale(key).astype(dtype)
            else:
                scale = jnp.full(d, self.init_scale, dtype)
        self._init_loc, self._init_scale_vec = loc, scale
        flow_params, self._flow_static = eqx.partition(layers, eqx.is_inexact_array)
        # Arrays, not the module: numpyro.param would call a module as an initialiser.
        self._flow_init, self._unravel_flow = _pack_leaves(flow_params)

    def _curvature_scale(self, key, fallback=1.0, bounds=(1e-4, 5.0), max_exact=1024):
        def potential(x):
            return self._potential_fn(self._unpack_latent(x))

        x0 = self._init_latent
        grad = jax.grad(potential)

        def hvp(v):
            return jax.jvp(grad, (x0,), (v,))[1]

        d = x0.shape[0]
        if d <= max_exact:
            diag = jnp.diagonal(jax.jacfwd(grad)(x0))
        else:
            probes = jr.rademacher(jr.fold_in(key, 1), (64, d), dtype=x0.dtype)
            diag = jnp.mean(probes * jax.lax.map(hvp, probes), 0)
        ok = jnp.isfinite(diag) & (diag > 0)
        scale = jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, diag, 1.0)), fallback)
        return jnp.clip(scale, *bounds)

    def _rbig_layers(self, draws, key):
        from .rbig import fit_rbig_coupling

        if self.latent_dim < 2:
            raise ValueError("warm_start needs at least 2 latent dimensions (a coupling split)")
        self.warm_start_key = key
        # Each RBIG block becomes two couplings (one per half of the coordinates).
        self.warm_start_flow = fit_rbig_coupling(
            draws,
            key,
            n_layers=max(self.n_layers // 2, 1),
            n_components=self.transformer_kwargs.get("n_components", 8),
            nn_width=self.nn_width,
            nn_depth=self.nn_depth,
            progress_bar=False,
        )
        return self.warm_start_flow.bijection

    def unconstrained_latent(self, samples: dict, *args, **kwargs):
        """Flatten constrained draws into the guide's unconstrained latent vectors.

        Args:
            samples: dict ``site -> (*batch, *site_shape)`` for every latent site.
            *args: model arguments (default: those of the guide's first call).
            **kwargs: model keyword arguments (likewise).

        Returns:
            ``(*batch, latent_dim)`` array, ordered like the guide's latent vector, so
            ``guide.get_posterior(params).log_prob`` applies to it.
        """
        if self.prototype_trace is None:
            raise RuntimeError("call the guide (e.g. svi.init) before unconstrained_latent")
        if not args and not kwargs:
            args, kwargs = getattr(self, "_model_args", ((), {}))
        draws = unconstrained_draws(self.model, samples, *args, **kwargs)
        parts = []
        for name, init in self._init_locs.items():
            v = draws[name]
            n = jnp.ndim(init)
            parts.append(v.reshape((*v.shape[: v.ndim - n], -1)))
        return jnp.concatenate(parts, axis=-1)

    # --- the flow -------------------------------------------------------------------
    def _normaliser(self, loc, scale, flow_params) -> Chain:
        norm = ActNorm1D((self.latent_dim,), dtype=jnp.result_type(loc))
        norm.loc, norm.log_scale = loc, jnp.log(scale)
        return Chain([norm, eqx.combine(self._unravel_flow(flow_params), self._flow_static)])

    def _get_posterior(self, stl: bool | None = None):
        # SVI samples through this with ``self.stl``; public accessors pass ``stl=False`` so
        # that the density they hand out is differentiable in the parameters.
        loc = numpyro.param(f"{self.prefix}_loc", self._init_loc)
        scale = numpyro.param(
            f"{self.prefix}_scale", self._init_scale_vec, constraint=constraints.positive
        )
        flow_params = numpyro.param(f"{self.prefix}_flow$params", self._flow_init)
        stl = self.stl if stl is None else stl
        return _GuidePosterior(
            self.get_base_dist(), self._normaliser(loc, scale, flow_params), stl=stl
        )

    def get_base_dist(self):
        return dist.Normal(
            jnp.zeros(self.latent_dim, jnp.result_type(self._init_loc)), 1.0
        ).to_event(1)

    def get_transform(self, params):
        """The base-to-latent map (a :class:`~numpyro_coupling.Bijection`), one pass a coupling."""
        return self.get_posterior(params).transforms[0]

    def get_posterior(self, params):
        """The guide as a distribution over the flat unconstrained latent ``(latent_dim,)``.

        ``log_prob`` runs the normalising direction in one pass, and is differentiable in
        ``params`` whatever ``stl`` is (that estimator only concerns the guide's own SVI
        draws).
        """
        return handlers.substitute(functools.partial(self._get_posterior, stl=False), params)()

    def get_normaliser(self, params) -> Chain:
        """The learnt latent-to-base bijection ``z = T((x - loc) / scale)``."""
        return self.get_posterior(params).normaliser

    # --- summaries --------------------------------------------------------------------
    def median(self, params):
        """The image of the base median ``z = 0``, per site in constrained space.

        A point inside every site's support (a simplex site sums to one), exact for an
        untrained or elementwise flow; use :meth:`quantiles` for marginal medians.
        """
        x = self.get_transform(params)(jnp.zeros(self.latent_dim, jnp.result_type(self._init_loc)))
        return self._unpack_and_constrain(x, params)

    def quantiles(self, params, quantiles, *, num_samples: int = 4096, rng_key=None):
        """Monte-Carlo marginal quantiles of every site in constrained space.

        Args:
            params: the guide's parameters.
            quantiles: ``(q,)`` probabilities in ``[0, 1]``.
            num_samples: draws used for the estimate.
            rng_key: PRNG key (default ``jax.random.key(0)``, so calls are repeatable).

        Returns:
            dict ``site -> (q, *site_shape)``.
        """
        q = jnp.asarray(quantiles)
        if jnp.any((q < 0) | (q > 1)):
            raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
        rng_key = jr.key(0) if rng_key is None else rng_key
        draws = self.sample_posterior(rng_key, params, sample_shape=(num_samples,))
        return {k: jnp.quantile(v, q, axis=0) for k, v in draws.items()}


# --------------------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------------------


def unconstrained_draws(model, samples: dict, *args, **kwargs) -> dict:
    """Map constrained draws of a model's latent sites to its unconstrained space.

    Args:
        model: the NumPyro model.
        samples: dict ``site -> (*batch, *site_shape)`` holding every latent site (other
            keys are ignored).
        *args: model arguments.
        **kwargs: model keyword arguments.

    Returns:
        dict ``site -> (*batch, *unconstrained_site_shape)`` (a simplex of ``K`` entries
        becomes ``K - 1`` reals).

    Raises:
        ValueError: a latent site is missing or its draws have the wrong trailing shape.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> unconstrained_draws(model, {"s": jnp.array([1.0, jnp.e])})["s"].round(4).tolist()
        [0.0, 1.0]
    """
    shapes = _latent_shapes(_prototype_trace(model, args, kwargs))
    missing = sorted(set(shapes) - set(samples))
    if missing:
        raise ValueError(f"samples lack the latent sites {missing}")
    draws = {k: jnp.asarray(samples[k]) for k in shapes}
    batch = None
    for k, v in draws.items():
        n = len(shapes[k])
        if v.shape[v.ndim - n :] != shapes[k] or v.ndim < n:
            raise ValueError(f"draws of {k!r} have shape {v.shape}; expected (..., *{shapes[k]})")
        b = v.shape[: v.ndim - n]
        if batch is not None and b != batch:
            raise ValueError(f"draws disagree on the batch shape: {batch} vs {b} ({k!r})")
        batch = b
    flat = {k: v.reshape((-1,) + shapes[k]) for k, v in draws.items()}
    out = jax.vmap(lambda s: unconstrain_fn(model, args, kwargs, s))(flat)
    return {k: v.reshape(batch + v.shape[1:]) for k, v in out.items()}


def _prototype_trace(model, args, kwargs):
    # Continuous sites take values from init_to_uniform, so models with improper priors
    # trace too; discrete sites are sampled from their own distribution.
    with handlers.block():
        return handlers.trace(
            handlers.substitute(handlers.seed(model, 0), substitute_fn=init_to_uniform)
        ).get_trace(*args, **kwargs)


def _latent_shapes(tr) -> dict:
    """``site -> shape`` of a prototype trace's latent sample sites."""
    return {
        name: tuple(jnp.shape(site["value"]))
        for name, site in tr.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def _import_arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def _run_nuts(
    model,
    args,
    model_kwargs,
    *,
    key,
    num_warmup,
    num_samples,
    num_chains,
    progress_bar,
    nuts_kwargs,
):
    """Run NUTS on ``model`` with the sampler statistics kept; returns ``(mcmc, seconds)``."""
    mcmc = MCMC(
        NUTS(model, **(nuts_kwargs or {})),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=_chain_method(num_chains),
        progress_bar=progress_bar,
    )
    key = jr.key(1) if key is None else key
    start = time.perf_counter()
    mcmc.run(key, *args, extra_fields=_extra_fields(), **model_kwargs)
    jax.block_until_ready(mcmc.get_samples())
    return mcmc, time.perf_counter() - start


def _chain_method(num_chains):
    return "parallel" if jax.local_device_count() >= num_chains > 1 else "sequential"


def _extra_fields():
    return ("num_steps", "diverging", "accept_prob", "potential_energy")


def _sample_stats(mcmc) -> dict:
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return {
        "diverging": np.asarray(extra["diverging"]),
        "n_steps": np.asarray(extra["num_steps"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "lp": -np.asarray(extra["potential_energy"]),
    }


def _idata(posterior, unconstrained, mcmc, losses, attrs):
    az = _import_arviz()
    idata = az.from_dict(
        posterior={k: np.asarray(v) for k, v in posterior.items()},
        sample_stats=_sample_stats(mcmc),
    )
    idata.add_groups(
        {"unconstrained_posterior": {k: np.asarray(v) for k, v in unconstrained.items()}}
    )
    if losses is not None:
        import xarray as xr

        idata.add_groups({"svi": xr.Dataset({"loss": ("svi_step", np.asarray(losses))})})
    idata.attrs.update(attrs)
    return idata


def guide_optimizer(
    learning_rate: float = 3e-3,
    steps: int = 10_000,
    *,
    schedule: str = "cosine",
    final_fraction: float = 0.1,
    clip_norm: float | None = 10.0,
):
    """Adam for fitting a guide by SVI, as a NumPyro optimiser.

    ``schedule="cosine"`` decays the step from ``learning_rate`` to
    ``final_fraction * learning_rate`` over ``steps`` (a cosine), and ``clip_norm`` caps
    the gradient's global norm; a step whose gradient is not finite is skipped. With a
    constant step Adam keeps every parameter jittering by about the step size, and a
    flow guide pays for the jitter where the posterior is narrow (a funnel's neck, where
    the guide's scales must be right to a factor ``exp(-6)``); a rare draw deep in the
    neck can also throw a constant-step run off course. ``benchmarks/neutra.py`` runs
    every guide both ways (``--schedule``).

    Args:
        learning_rate: the (peak) Adam step size.
        steps: the number of SVI steps the schedule spans.
        schedule: ``"cosine"`` or ``"constant"``.
        final_fraction: the last step as a fraction of ``learning_rate`` (cosine only).
        clip_norm: global gradient-norm cap (``None``: no clipping).

    Returns:
        A ``numpyro.optim`` optimiser for ``SVI``.

    Example:
        >>> import numpyro
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> def model():
        ...     numpyro.sample("x", numpyro.distributions.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> guide = AutoCouplingFlow(model, n_layers=2)
        >>> svi = SVI(model, guide, guide_optimizer(3e-3, 500), Trace_ELBO())
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if not learning_rate > 0 or steps < 1:
        raise ValueError(f"need learning_rate > 0 and steps >= 1, got {learning_rate}, {steps}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
    if not 0 < final_fraction <= 1:
        raise ValueError(f"final_fraction must lie in (0, 1], got {final_fraction}")
    step = (
        optax.cosine_decay_schedule(learning_rate, steps, alpha=final_fraction)
        if schedule == "cosine"
        else learning_rate
    )
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    adam = optax.chain(*parts, optax.adam(step))
    # A draw far out in a tail can make one step's gradient non-finite: skip that step
    # rather than poison every parameter (up to 100 such steps in a row).
    return numpyro.optim.optax_to_numpyro(optax.apply_if_finite(adam, 100))


class SiteOrderedTraceELBO(Trace_ELBO):
    """``Trace_ELBO`` whose per-site terms are summed in the order of the sites' names.

    NumPyro's ``Trace_ELBO`` sums ``log p - log q`` over a Python ``set`` of site names,
    whose order changes with the interpreter's string hashing (``PYTHONHASHSEED``): the
    same fit from the same key differs in its last bits from process to process, and
    the difference grows along an SVI run. Summing in name order makes a fit repeat
    exactly. The value and its expectation are those of ``Trace_ELBO``.

    Args:
        num_particles: particles per estimate (their per-site terms are averaged
            before the sites are summed).
        vectorize_particles: as in ``Trace_ELBO``.

    Example:
        >>> import jax.random as jr, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     numpyro.sample("x", dist.Normal(numpyro.param("m", 0.5), 1.0))
        >>> from numpyro.infer import Trace_ELBO
        >>> ordered = SiteOrderedTraceELBO().loss(jr.key(0), {}, model, guide)
        >>> bool(abs(ordered - Trace_ELBO().loss(jr.key(0), {}, model, guide)) < 1e-6)
        True
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = True):
        super().__init__(
            num_particles=num_particles, vectorize_particles=vectorize_particles, sum_sites=False
        )

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        out = super().loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        by_site = out["loss"]
        out["loss"] = sum((by_site[name] for name in sorted(by_site)), start=jnp.array(0.0))
        return out


def fit_guide(
    model,
    *args,
    guide=None,
    svi_steps: int = 10_000,
    learning_rate: float = 3e-3,
    average: float | None = 0.1,
    schedule: str = "cosine",
    clip_norm: float | None = 10.0,
    temper=None,
    num_particles: int = 1,
    key=None,
    progress_bar: bool = True,
    return_last: bool = False,
    **model_kwargs,
):
    """Fit a guide by SVI (:class:`SiteOrderedTraceELBO`, :func:`guide_optimizer`), averaging.

    With a constant step size, Adam leaves the parameters jittering around the optimum
    (every step moves each parameter by about ``learning_rate``, gradient noise or not),
    and for a flow guide that jitter costs a good part of the final KL divergence. An
    exponential moving average of the (unconstrained) parameters over the last
    ``average`` fraction of the run (Polyak averaging, bias-corrected) removes most of it
    at no extra gradient cost. The loss curve is that of the raw iterates.

    A reverse-KL fit of a multimodal posterior usually settles on one mode. ``temper``
    first fits the guide to targets whose likelihood is flattened,
    ``prior(x) * likelihood(x)^beta`` (:func:`temper_likelihood`: the observed sites and
    ``numpyro.factor`` terms are scaled, the prior is not, so each tempered target stays
    proper), on which it spreads over every mode, and then sharpens them: with the
    inverse temperatures ``(0.1, 0.3, 0.6)`` a spline guide keeps both modes of the dual
    moon.

    Args:
        model: the NumPyro model.
        *args: model arguments.
        guide: an ``AutoContinuous`` guide, a dict of :class:`AutoCouplingFlow` keyword
            arguments, or ``None`` (an :class:`AutoCouplingFlow` with its defaults).
        svi_steps: optimisation steps.
        learning_rate: (peak) Adam step size.
        average: time constant of the parameter average as a fraction of the final fit's
            steps (``svi_steps`` without ``temper``; ``None`` or ``0``: return the last
            iterate).
        schedule: ``"cosine"`` (decay to a tenth) or ``"constant"``: see
            :func:`guide_optimizer`.
        clip_norm: global gradient-norm cap (``None``: none).
        temper: inverse temperatures in ``(0, 1)`` of warm-up phases, e.g.
            ``(0.1, 0.3, 0.6)``; ``None``: none. Needs a model with observed sites or
            factors (the likelihood). The ``svi_steps`` are split equally
            between the phases and the final fit at ``beta = 1``, which also takes the
            remainder (at the schedule's floor). Each phase restarts the learning-rate
            schedule; only the final fit is averaged. The phases share their compiled
            steps, ``beta`` being one of their arguments: one compilation per chunk
            length, and the progress bar's chunks divide the phases where they can.
        num_particles: guide draws per step whose ELBO terms are averaged (vectorised).
            More particles lower the gradient noise, which sets the final KL divergence
            of a flow guide. At small latent dimension a step costs far less than
            ``num_particles`` single-draw steps (on eight schools, 32 particles cost about
            five times one).
        key: PRNG key (default ``jax.random.key(0)``).
        progress_bar: show a progress bar.
        return_last: also return the last iterate's parameters.
        **model_kwargs: model keyword arguments.

    Returns:
        ``(guide, params, losses)``: the guide, its fitted (constrained) parameters and
        the ``(svi_steps,)`` loss curve (negative ELBO; in the ``temper`` phases, of the
        tempered target); with ``return_last``, the last iterate's parameters follow.

    Example:
        >>> import jax.random as jr, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> guide, params, losses = fit_guide(
        ...     model, guide={"n_layers": 1, "nn_width": 4}, svi_steps=10, progress_bar=False
        ... )
        >>> losses.shape
        (10,)
    """
    if guide is None:
        guide = AutoCouplingFlow(model)
    elif isinstance(guide, dict):
        guide = AutoCouplingFlow(model, **guide)
    elif not isinstance(guide, AutoContinuous):
        raise TypeError(f"guide must be an AutoContinuous guide, a dict or None, got {guide!r}")
    if svi_steps < 1:
        raise ValueError(f"svi_steps must be >= 1, got {svi_steps}")
    if not (isinstance(num_particles, (int, np.integer)) and num_particles >= 1):
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    if average is not None and not 0 <= average <= 1:
        raise ValueError(f"average must be a fraction in [0, 1] or None, got {average}")
    betas = [float(b) for b in (temper or ())]
    if not all(0.0 < b < 1.0 for b in betas):
        raise ValueError(f"temper must hold inverse temperatures in (0, 1), got {temper!r}")
    if svi_steps < len(betas) + 1:
        raise ValueError(f"svi_steps={svi_steps} is fewer than the {len(betas) + 1} phases")
    if betas and not _observed_sites(model, args, model_kwargs):
        raise ValueError(
            "temper flattens the likelihood, but the model has no observed sites or "
            "factors: write the target's log density as a numpyro.factor"
        )
    key = jr.key(0) if key is None else key
    phase_steps = svi_steps // (len(betas) + 1)
    # One schedule of ``phase_steps`` restarted by each phase (a fresh optimiser state);
    # the final fit's few extra steps, if any, run at its floor.
    optim = guide_optimizer(learning_rate, phase_steps, schedule=schedule, clip_norm=clip_norm)
    elbo = SiteOrderedTraceELBO(num_particles)
    if betas:
        # The inverse temperature is an argument of one compiled step, not a constant
        # of one per phase: the phases share a single compilation.
        svi = SVI(_beta_tempered(model), _beta_ignored(guide), optim, elbo)
    else:
        svi = SVI(model, guide, optim, elbo)
    run_chunk = _svi_chunk_runner(svi, args, model_kwargs)
    # (phase key, inverse temperature, steps, averaged) per phase, the final fit last.
    phases = [(jr.fold_in(key, i + 1), b, phase_steps, None) for i, b in enumerate(betas)]
    phases.append((key, 1.0, svi_steps - phase_steps * len(betas), average))

    init_params, losses = None, []
    with tqdm(total=svi_steps, disable=not progress_bar, desc="SVI") as bar:
        for phase_key, beta, steps, phase_average in phases:
            beta_kwarg = {"_beta": jnp.asarray(beta, jnp.result_type(float))} if betas else {}
            state = svi.init(
                phase_key, *args, init_params=init_params, **beta_kwarg, **model_kwargs
            )
            state, avg, phase_losses = _run_svi(
                run_chunk, svi, state, steps, phase_average, bar, beta_kwarg
            )
            init_params = svi.get_params(state)
            losses.append(phase_losses)
    last = svi.get_params(state)
    params = svi.constrain_fn(avg) if average else last
    if return_last:
        return guide, params, np.concatenate(losses), last
    return guide, params, np.concatenate(losses)


class temper_likelihood(numpyro.primitives.Messenger):
    """Scale the log density of a model's observed sites (and factors) by ``beta``.

    ``prior(x) * likelihood(x)^beta``: unlike ``numpyro.handlers.scale``, which flattens
    the prior too (and can make a proper one improper: a half-Cauchy to the power 0.1
    has no normalising constant), the tempered target stays proper.

    Args:
        fn: the model.
        beta: inverse temperature, ``> 0`` (checked unless it is traced, as in
            :func:`fit_guide`'s compiled steps).

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from numpyro import handlers
        >>> def model():
        ...     x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(x, 1.0), obs=1.0)
        >>> sites = handlers.trace(handlers.seed(temper_likelihood(model, 0.5), 0)).get_trace()
        >>> sites["x"]["scale"], sites["y"]["scale"]
        (None, 0.5)
    """

    def __init__(self, fn=None, beta: float = 1.0):
        # A traced ``beta`` (one compiled step for every phase of ``fit_guide``) is
        # checked where it is made.
        if not isinstance(beta, jax.core.Tracer) and not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.beta = beta
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["scale"] = self.beta if msg.get("scale") is None else self.beta * msg["scale"]


def _observed_sites(model, args, kwargs) -> list[str]:
    trace = _prototype_trace(model, args, kwargs)
    return [n for n, s in trace.items() if s["type"] == "sample" and s["is_observed"]]


def _beta_tempered(model):
    """``model`` with its likelihood tempered by a ``_beta`` keyword argument."""

    def tempered(*args, _beta, **kwargs):
        return temper_likelihood(model, _beta)(*args, **kwargs)

    return tempered


def _beta_ignored(guide):
    """``guide`` called as SVI calls it with a :func:`_beta_tempered` model."""

    def untempered(*args, _beta, **kwargs):
        return guide(*args, **kwargs)

    return untempered


def _svi_chunk_runner(svi, args, model_kwargs):
    """A compiled ``run_chunk(carry, beta_kwarg, decay, length)``: ``length`` SVI steps.

    ``carry = (state, avg, weight)``: ``avg`` is a bias-corrected exponential moving
    average of the unconstrained parameters with factor ``decay`` (a weighted mean with
    weights ``decay**(t - i)``, ``weight`` their sum). ``beta_kwarg`` is ``{"_beta": beta}``
    for a :func:`_beta_tempered` model, else ``{}``. Only ``length`` is static, so the
    phases of a tempered fit share one compilation per chunk length.
    """

    def step(beta_kwarg, decay, carry, _):
        state, avg, weight = carry
        state, loss = svi.update(state, *args, **beta_kwarg, **model_kwargs)
        weight = decay * weight + 1.0
        current = svi.optim.get_params(state.optim_state)
        avg = jax.tree.map(lambda a, p: a + (p - a) / weight, avg, current)
        return (state, avg, weight), loss

    @functools.partial(jax.jit, static_argnums=3)
    def run_chunk(carry, beta_kwarg, decay, length):
        return jax.lax.scan(functools.partial(step, beta_kwarg, decay), carry, None, length=length)

    return run_chunk


def _chunk_length(steps: int, target: int) -> int:
    """Steps per compiled chunk: about ``target``, and dividing ``steps`` where it can.

    Equal chunks compile once; a remainder would compile a second scan length (a tempered
    fit's phases of 2500 steps, advanced by 200, would need 100 as well). The chunk is the
    largest divisor of ``steps`` from about ``target / 2`` to ``target``, else ``target``.

    Example:
        >>> _chunk_length(10_000, 200), _chunk_length(2500, 200), _chunk_length(2503, 200)
        (200, 125, 200)
    """
    n_min = -(-steps // target)
    return next((steps // n for n in range(n_min, 2 * n_min + 1) if steps % n == 0), target)


def _run_svi(run_chunk, svi, state, steps, average, bar, beta_kwarg):
    """``steps`` SVI steps from ``state`` by ``run_chunk``, in chunks that advance ``bar``.

    ``beta_kwarg`` is passed on to each step (see :func:`_svi_chunk_runner`).

    Returns ``(state, avg, losses)``: ``avg`` the bias-corrected moving average of the
    unconstrained parameters (time constant ``average * steps``; the last iterate when
    ``average`` is falsy) and ``losses`` the ``(steps,)`` loss curve.
    """
    raw = svi.optim.get_params(state.optim_state)
    dtype = jnp.result_type(float)
    decay = jnp.asarray(1.0 - 1.0 / max(average * steps, 1.0) if average else 0.0, dtype)
    chunk = _chunk_length(steps, max(min(bar.total // 50, 500), 1)) if not bar.disable else steps
    carry = (state, raw, jnp.zeros((), dtype))
    losses = []
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        carry, chunk_losses = run_chunk(carry, beta_kwarg, decay, n)
        losses.append(np.asarray(chunk_losses))
        done += n
        bar.set_postfix(loss=f"{float(np.mean(losses[-1])):.3f}")
        bar.update(n)
    state, avg, _ = carry
    return state, avg, np.concatenate(losses)


def neutra_nuts(
    model,
    guide,
    params,
    *args,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 1,
    key=None,
    progress_bar: bool = True,
    losses=None,
    nuts_kwargs: dict | None = None,
    **model_kwargs,
):
    """NUTS on the geometry warped by a fitted guide (NumPyro's ``NeuTraReparam``).

    Args:
        model: the NumPyro model.
        guide: a fitted ``AutoContinuous`` guide.
        params: its parameters.
        *args: model arguments.
        num_warmup: warmup iterations per chain.
        num_samples: kept draws per chain.
        num_chains: chains (run in parallel when there are enough devices).
        key: PRNG key (default ``jax.random.key(1)``).
        progress_bar: show NumPyro's progress bar.
        losses: optional SVI loss curve, stored in the ``svi`` group.
        nuts_kwargs: extra ``NUTS`` arguments.
        **model_kwargs: model keyword arguments.

    Returns:
        ``(mcmc, idata)``; ``mcmc.get_samples()`` holds the warped draws
        (``{prefix}_shared_latent``); ``idata.posterior`` holds every latent site in the
        model's constrained space, ``idata.unconstrained_posterior`` the same draws
        unconstrained, ``idata.sample_stats`` ``diverging``/``n_steps``/... and
        ``idata.attrs["mcmc_seconds"]`` the wall time.
    """
    neutra = NeuTraReparam(guide, params)
    mcmc, seconds = _run_nuts(
        neutra.reparam(model),
        args,
        model_kwargs,
        key=key,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        progress_bar=progress_bar,
        nuts_kwargs=nuts_kwargs,
    )
    z = mcmc.get_samples(group_by_chain=True)[f"{guide.prefix}_shared_latent"]
    posterior = neutra.transform_sample(z)
    x = jax.vmap(jax.vmap(neutra.transform))(z)
    unconstrained = jax.vmap(jax.vmap(guide._unpack_latent))(x)
    return mcmc, _idata(posterior, unconstrained, mcmc, losses, {"mcmc_seconds": seconds})


def neutra_mcmc(
    model,
    *args,
    guide=None,
    svi_steps: int = 10_000,
    learning_rate: float = 3e-3,
    average: float | None = 0.1,
    schedule: str = "cosine",
    clip_norm: float | None = 10.0,
    temper=None,
    num_particles: int = 1,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 1,
    key=None,
    progress_bar: bool = True,
    nuts_kwargs: dict | None = None,
    **model_kwargs,
):
    """NeuTra HMC: fit a guide by ``SVI``, then run NUTS on the geometry it Gaussianises.

    Args:
        model: the NumPyro model.
        *args: model arguments.
        guide: an ``AutoContinuous`` guide, a dict of :class:`AutoCouplingFlow` keyword
            arguments, or ``None`` for :class:`AutoCouplingFlow` defaults.
        svi_steps: SVI steps of :func:`fit_guide` (:class:`SiteOrderedTraceELBO`, the
            ``Trace_ELBO`` summed in a fixed site order; Adam).
        learning_rate: (peak) Adam step size.
        average: parameter averaging of :func:`fit_guide`.
        schedule: ``"cosine"`` (decay to a tenth) or ``"constant"`` Adam step size.
        clip_norm: global gradient-norm cap (``None``: none).
        temper: tempered warm-up phases of :func:`fit_guide` (for multimodal
            posteriors).
        num_particles: guide draws per SVI step (see :func:`fit_guide`).
        num_warmup: NUTS warmup iterations per chain.
        num_samples: NUTS draws per chain.
        num_chains: chains.
        key: PRNG key (default ``jax.random.key(0)``).
        progress_bar: show progress bars.
        nuts_kwargs: extra ``NUTS`` arguments, e.g. ``{"target_accept_prob": 0.95}``
            where the chain diverges in a region the guide fits poorly.
        **model_kwargs: model keyword arguments.

    Returns:
        ``(mcmc, idata)``: the NumPyro ``MCMC`` object and an ArviZ ``InferenceData``
        with ``posterior`` (constrained space), ``unconstrained_posterior``,
        ``sample_stats`` (``diverging``, ``n_steps``, ``acceptance_rate``, ``lp``), an
        ``svi`` group holding the loss curve, and ``attrs`` ``svi_seconds`` and
        ``mcmc_seconds``.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> mcmc, idata = neutra_mcmc(
        ...     model, guide={"n_layers": 1, "nn_width": 4}, svi_steps=20,
        ...     num_warmup=20, num_samples=10, progress_bar=False,
        ... )
        >>> idata.posterior["x"].shape, idata.svi["loss"].shape
        ((1, 10, 2), (20,))
    """
    key = jr.key(0) if key is None else key
    svi_key, mcmc_key = jr.split(key)
    start = time.perf_counter()
    guide, params, losses = fit_guide(
        model,
        *args,
        guide=guide,
        svi_steps=svi_steps,
        learning_rate=learning_rate,
        average=average,
        schedule=schedule,
        clip_norm=clip_norm,
        temper=temper,
        num_particles=num_particles,
        key=svi_key,
        progress_bar=progress_bar,
        **model_kwargs,
    )
    svi_seconds = time.perf_counter() - start
    mcmc, idata = neutra_nuts(
        model,
        guide,
        params,
        *args,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        key=mcmc_key,
        progress_bar=progress_bar,
        losses=losses,
        nuts_kwargs=nuts_kwargs,
        **model_kwargs,
    )
    idata.attrs["svi_seconds"] = svi_seconds
    return mcmc, idata


def nuts_mcmc(
    model,
    *args,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 1,
    key=None,
    progress_bar: bool = True,
    nuts_kwargs: dict | None = None,
    **model_kwargs,
):
    """Plain NUTS with the same outputs as :func:`neutra_mcmc` (the baseline).

    Returns:
        ``(mcmc, idata)`` with ``posterior``, ``unconstrained_posterior``,
        ``sample_stats`` and ``attrs["mcmc_seconds"]``.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> mcmc, idata = nuts_mcmc(model, num_warmup=20, num_samples=10, progress_bar=False)
        >>> idata.unconstrained_posterior["s"].shape
        (1, 10)
    """
    mcmc, seconds = _run_nuts(
        model,
        args,
        model_kwargs,
        key=key,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        progress_bar=progress_bar,
        nuts_kwargs=nuts_kwargs,
    )
    trace = _prototype_trace(model, args, model_kwargs)
    # Latent and deterministic sites, as neutra_mcmc reports them.
    keep = set(_latent_shapes(trace))
    keep |= {name for name, site in trace.items() if site["type"] == "deterministic"}
    draws = mcmc.get_samples(group_by_chain=True)
    posterior = {k: v for k, v in draws.items() if k in keep}
    unconstrained = unconstrained_draws(model, posterior, *args, **model_kwargs)
    return mcmc, _idata(posterior, unconstrained, mcmc, None, {"mcmc_seconds": seconds})


def sampling_efficiency(idata) -> dict:
    """Sampler figures of merit from an ``InferenceData`` of :func:`neutra_mcmc`/:func:`nuts_mcmc`.

    Returns:
        dict with ``min_ess`` (bulk ESS, minimum over every unconstrained latent
        coordinate), ``n_grads`` (leapfrog steps after warmup), ``ess_per_grad``,
        ``divergences``, ``seconds`` (MCMC wall time, warmup included) and
        ``ess_per_second``.
    """
    az = _import_arviz()
    ess = az.ess(idata.unconstrained_posterior)
    min_ess = min(float(np.min(ess[k].values)) for k in ess.data_vars)
    n_grads = int(idata.sample_stats["n_steps"].values.sum())
    seconds = float(idata.attrs.get("mcmc_seconds", np.nan))
    return {
        "min_ess": min_ess,
        "n_grads": n_grads,
        "ess_per_grad": min_ess / max(n_grads, 1),
        "divergences": int(idata.sample_stats["diverging"].values.sum()),
        "seconds": seconds,
        "ess_per_second": min_ess / seconds,
    }
