"""Coupling flows as NumPyro ``TransformedDistribution``s with one-pass ``log_prob``.

:func:`coupling_layers` is the one factory of coupling stacks: :func:`coupling_flow`
wraps its stack in a :class:`CouplingFlow` (a density model), and
:class:`~numpyro_coupling.AutoCouplingFlow` builds its layers with it too. Built with a
``context_shape``, a flow is conditional, ``p(x | context)``: its couplings' conditioners
read the context, and :meth:`CouplingFlow.condition` binds one, giving an ordinary NumPyro
distribution over ``x``.
"""

from __future__ import annotations

import functools
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpyro.distributions as dist
from numpyro.distributions import TransformedDistribution

from .bijection import Bijection, Chain, Conditioned, event_constraint, one_program
from .checks import as_shape
from .conditioners import GuideConditioner
from .coupling import Coupling
from .elementwise import Elementwise
from .linear import MIXINGS, ActNorm1D, mixing_layer
from .masks import bit_masks
from .transformers import make_transformer

__all__ = [
    "PERMUTATIONS",
    "CouplingFlow",
    "StandardNormal",
    "coupling_flow",
    "coupling_layers",
    "parameter_dtype",
    "standard_normal",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

#: ``permutation=`` choices: a mixing layer between couplings (``linear.MIXINGS``), or
#: ``"bits"``: no mixing layer, couplings with :func:`~numpyro_coupling.masks.bit_masks`.
PERMUTATIONS = (*MIXINGS, "bits")


class StandardNormal(dist.Distribution):
    """Parameter-free ``N(0, I)`` over an event of ``shape``.

    Holding no arrays, it adds no leaves to a flow's pytree, so
    ``eqx.partition(flow, eqx.is_inexact_array)`` yields exactly the trainable parameters.

    Args:
        shape: event shape.
        dtype: dtype of samples (default: JAX's default float).

    Example:
        >>> import jax.numpy as jnp
        >>> float(StandardNormal((2,)).log_prob(jnp.zeros(2)))
        -1.837877...
    """

    arg_constraints = {}
    reparametrized_params = []
    pytree_aux_fields = ("dtype",)

    def __init__(self, shape, dtype=None, *, validate_args=None):
        shape = as_shape(shape)
        self.dtype = jnp.dtype(dtype or jnp.zeros(()).dtype).name
        super().__init__(batch_shape=(), event_shape=shape, validate_args=validate_args)

    @property
    def has_rsample(self):
        return True

    @property
    def support(self):
        return event_constraint(len(self.event_shape))

    def sample(self, key, sample_shape=()):
        return jr.normal(key, tuple(sample_shape) + self.event_shape, self.dtype)

    def log_prob(self, value):
        axes = tuple(range(-len(self.event_shape), 0))
        return jnp.sum(-0.5 * value**2 - _HALF_LOG_2PI, axes)

    @property
    def mean(self):
        return jnp.zeros(self.event_shape, self.dtype)

    @property
    def variance(self):
        return jnp.ones(self.event_shape, self.dtype)


def parameter_dtype(bijection):
    """The float dtype of a pytree's arrays (``None`` when it has none).

    Example:
        >>> import jax.numpy as jnp
        >>> parameter_dtype({"w": jnp.zeros(2, jnp.float32)}), parameter_dtype({})
        (dtype('float32'), None)
    """
    leaves = [x for x in jax.tree.leaves(bijection) if eqx.is_inexact_array(x)]
    return jnp.result_type(*leaves) if leaves else None


def standard_normal(shape, dtype=None) -> StandardNormal:
    """``N(0, I)`` over an event of ``shape`` (the default base of every flow)."""
    return StandardNormal(shape, dtype)


class CouplingFlow(TransformedDistribution):
    """A normalising flow: ``x = bijection^-1(z)``, ``z ~ base_dist``.

    ``bijection`` maps data to latent (the normalising direction), so
    ``log_prob(x) = base.log_prob(z) + log|det dz/dx|`` costs one forward pass: one
    conditioner evaluation per coupling. NumPyro's generic path (``inv`` then
    ``log_abs_det_jacobian``) would evaluate every conditioner twice.

    A conditional flow (its bijection reads a context, ``context_shape`` set) is a
    family of distributions, one per context: :meth:`condition` picks one.

    Args:
        bijection: a :class:`~numpyro_coupling.Bijection` (usually a
            :class:`~numpyro_coupling.Chain`) from data space to latent space.
        base_dist: the latent distribution; ``N(0, I)`` by default.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> from numpyro_coupling import coupling_flow
        >>> flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2)
        >>> flow.sample(jr.key(1), (5,)).shape, flow.log_prob(jnp.zeros((5, 2))).shape
        ((5, 2), (5,))
    """

    def __init__(self, bijection: Bijection, base_dist=None, *, validate_args=None):
        if base_dist is None:
            base_dist = standard_normal(bijection.shape, parameter_dtype(bijection))
        super().__init__(base_dist, bijection.inv, validate_args=validate_args)

    @property
    def bijection(self) -> Bijection:
        """The data-to-latent bijection."""
        # A transformed base_dist has its transforms merged in front of this one.
        return self.transforms[-1].inv

    @property
    def context_shape(self) -> tuple[int, ...] | None:
        """The shape of the context a conditional flow reads (``None``: unconditional)."""
        return getattr(self.bijection, "context_shape", None)

    def condition(self, context) -> CouplingFlow:
        """The distribution of ``x`` given ``context``: an ordinary NumPyro distribution.

        It is a :class:`CouplingFlow` (a ``TransformedDistribution``) whose bijection is
        this one with the context bound (:class:`~numpyro_coupling.Conditioned`), so
        ``log_prob`` (one pass), ``sample`` and ``rsample`` work as for any flow, and it
        drops into ``numpyro.sample("y", flow.condition(X), obs=Y)``.

        Args:
            context: ``(*batch, *context_shape)``; its leading axes are the batch shape
                of the result (one distribution per row of contexts).

        Returns:
            A :class:`CouplingFlow` with batch shape ``batch`` and this flow's event shape.

        Raises:
            ValueError: the flow reads no context, or ``context`` does not end in
                ``context_shape``.

        Example:
            >>> import jax.numpy as jnp, jax.random as jr
            >>> from numpyro_coupling import coupling_flow
            >>> flow = coupling_flow(jr.key(0), (2,), context_shape=(3,), n_layers=2)
            >>> given = flow.condition(jnp.zeros((5, 3)))
            >>> given.batch_shape, given.event_shape, given.sample(jr.key(1), (4,)).shape
            ((5,), (2,), (4, 5, 2))
            >>> given.log_prob(jnp.zeros(2)).shape  # one x under five contexts
            (5,)
        """
        if self.context_shape is None:
            raise ValueError(
                "this flow reads no context: build it with context_shape= to condition it"
            )
        base = self.base_dist
        if len(self.transforms) > 1:  # a transformed base: keep its transforms in front
            base = TransformedDistribution(base, self.transforms[:-1])
        return CouplingFlow(
            Conditioned(self.bijection, context), base, validate_args=self._validate_args
        )

    def log_prob(self, value, intermediates=None):
        """Log-density of ``value``: ``base.log_prob(z) + log|det dz/dx|``, ``z = bijection(x)``.

        Under ``validate_args`` (NumPyro's default) values outside the support (NaN or
        infinite entries) get log-density ``-inf`` and, called eagerly, raise NumPyro's
        out-of-support warning, as for any NumPyro distribution.

        Args:
            value: ``(*batch, *event)`` points.
            intermediates: NumPyro's sampling intermediates (then NumPyro's own route).

        Returns:
            ``(*batch,)`` log-densities.

        Example:
            >>> import warnings, jax.numpy as jnp, jax.random as jr
            >>> from numpyro_coupling import coupling_flow
            >>> flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=1)
            >>> checked = CouplingFlow(flow.bijection, validate_args=True)
            >>> with warnings.catch_warnings(record=True) as caught:
            ...     warnings.simplefilter("always")
            ...     log_p = checked.log_prob(jnp.array([[0.0, 0.0], [jnp.nan, 0.0]]))
            >>> log_p.tolist()[1], "Out-of-support" in str(caught[0].message)
            (-inf, True)
        """
        if self.context_shape is not None:
            raise ValueError(
                f"this flow is conditional (context_shape={self.context_shape}): evaluate "
                "flow.condition(context).log_prob(value)"
            )
        # An empty batch has nothing to check (NumPyro's support mask cannot reshape it).
        check = bool(self._validate_args) and jnp.size(value) > 0
        log_p, in_support = self._log_prob_in_support(value, intermediates, check)
        # The mask is computed inside the compiled program; only the warning is eager
        # (a traced call cannot warn, its out-of-support values just get -inf).
        if check and not isinstance(in_support, jax.core.Tracer):
            if not jax.device_get(in_support).all():
                warnings.warn(
                    "Out-of-support values provided to log prob method. "
                    "The value argument should be within the support.",
                    stacklevel=2,
                )
        return log_p

    @one_program
    def _log_prob_in_support(self, value, intermediates, check):
        """``(log_prob, support mask or None)`` as one program: the one-pass density."""
        if intermediates is not None:
            log_p = TransformedDistribution.log_prob(self, value, intermediates)
        else:
            z, log_det = self.bijection.transform_and_log_det(value)
            latent = self.base_dist
            if len(self.transforms) > 1:  # the base's own transforms: NumPyro's route
                latent = TransformedDistribution(self.base_dist, self.transforms[:-1])
            log_p = latent.log_prob(z) + log_det
        if not check:
            return log_p, None
        in_support = self._validate_sample(value)  # traced here: the mask, no warning
        return jnp.where(in_support, log_p, -jnp.inf), in_support

    def log_prob_two_pass(self, value):
        """NumPyro's default ``TransformedDistribution.log_prob`` (for comparison only)."""
        return TransformedDistribution.log_prob(self, value)

    def to_latent(self, x):
        """Map data ``(*batch, *event)`` to the latent space (the Gaussianised data)."""
        return self.bijection.transform(x)


def coupling_layers(
    key,
    shape,
    *,
    transformer="spline",
    n_layers: int = 8,
    nn_width: int = 64,
    nn_depth: int = 2,
    permutation: str = "flip",
    activation: str = "relu",
    actnorm: bool = False,
    zero_init: bool = True,
    input_bound: float | None = None,
    linear_rank: int = 0,
    dtype=None,
    context_shape=None,
    context_elementwise: bool = False,
    **transformer_kwargs,
) -> Chain:
    """A stack of coupling layers (data-to-latent order) as one :class:`~numpyro_coupling.Chain`.

    Per layer: ``[ActNorm1D] -> coupling -> mixing layer``. With ``permutation="flip"``
    the halves alternate, so every coordinate is both transformed and used as context,
    except for odd ``d`` the middle one (``"random"``, ``"householder"`` or ``"lu"`` mix it
    in). ``"bits"`` puts no mixing layer between the couplings but gives them
    :func:`~numpyro_coupling.masks.bit_masks`, which condition every coordinate on every
    other one. A one-dimensional event has no coupling split: it gets ``n_layers``
    :class:`~numpyro_coupling.Elementwise` layers, or with a context ``n_layers``
    couplings whose conditioners read the context alone.

    With ``context_shape`` every coupling's conditioner reads the context beside its
    passive coordinates (a conditional stack, ``p(x | context)``); the mixing layers do
    not. ``context_elementwise`` puts in front one more layer that transforms every
    coordinate by parameters read from the context alone (a coupling with no passive
    coordinate): a shift and reshaping of each coordinate by the context before any
    coupling. Zero-initialised, the stack starts as the same map for every context.

    Args:
        key: PRNG key.
        shape: event shape ``(d,)`` (or the int ``d``).
        transformer: a name of :data:`~numpyro_coupling.transformers.TRANSFORMERS`
            (``"spline"``, ``"affine"``, ``"additive"``, ``"mixture"``, ``"loc_scale"``,
            ``"loc_scale_spline"``) or a :class:`~numpyro_coupling.Transformer`.
        n_layers: number of coupling layers.
        nn_width: conditioner hidden width.
        nn_depth: conditioner hidden layers.
        permutation: one of :data:`PERMUTATIONS`.
        activation: conditioner activation.
        actnorm: put an :class:`~numpyro_coupling.ActNorm1D` before each coupling.
        zero_init: conditioners start with a zero final kernel.
        input_bound: conditioners read ``input_bound * tanh(u / input_bound)``
            (:class:`~numpyro_coupling.conditioners.GuideConditioner`; ``None``: ``u``).
        linear_rank: rank of a linear path from a conditioner's inputs to the log-scales
            (transformers with a log-scale only; ``0``: none).
        dtype: parameter dtype.
        context_shape: shape of the context the couplings read (an int ``c`` means
            ``(c,)``); ``None``: an unconditional stack.
        context_elementwise: with a context, begin with an elementwise layer whose
            parameters the context sets (its key is ``fold_in(key, n_layers)``, so the
            other layers are those of the stack without it).
        **transformer_kwargs: the transformer's own options (``n_bins``, ``interval``,
            ``n_components``, ``log_scale_bound``).

    Returns:
        The :class:`~numpyro_coupling.Chain` of layers.

    Example:
        >>> import jax.random as jr
        >>> len(coupling_layers(jr.key(0), 3, n_layers=2))  # coupling, flip, coupling, flip
        4
        >>> len(coupling_layers(jr.key(0), 3, n_layers=2, permutation="bits"))
        2
    """
    if permutation not in PERMUTATIONS:
        raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {permutation!r}")
    if not (isinstance(n_layers, int) and n_layers >= 1):
        raise ValueError(f"n_layers must be >= 1 (an integer), got {n_layers!r}")
    if not (isinstance(linear_rank, int) and linear_rank >= 0):
        raise ValueError(f"linear_rank must be a non-negative integer, got {linear_rank!r}")
    shape = as_shape(shape)
    if len(shape) != 1:
        raise ValueError(f"coupling stacks act on vector events (d,), got shape {shape}")
    t = make_transformer(transformer, **transformer_kwargs)
    if context_shape is not None:
        context_shape = as_shape(context_shape, "context_shape")
    (d,) = shape
    if d == 1 and context_shape is None:
        return Chain([Elementwise(shape, t, dtype=dtype) for _ in range(n_layers)])
    if context_elementwise and context_shape is None:
        raise ValueError("context_elementwise needs a context_shape")
    masks = bit_masks(d, n_layers) if permutation == "bits" and d > 1 else [None] * n_layers
    wrap = input_bound is not None or (linear_rank > 0 and t.log_scale_index is not None)
    make_coupling = functools.partial(
        Coupling,
        shape=shape,
        transformer=t,
        nn_width=nn_width,
        nn_depth=nn_depth,
        activation=activation,
        zero_init=zero_init,
        dtype=dtype,
        context_shape=context_shape,
    )
    layers = []
    if context_elementwise:
        layers.append(make_coupling(jr.fold_in(key, n_layers), mask=[True] * d))
    for k, mask in zip(jr.split(key, n_layers), masks):
        ck, pk = jr.split(k)
        if actnorm:
            layers.append(ActNorm1D(shape, dtype=dtype))
        coupling = make_coupling(ck, mask=mask)
        if wrap:
            coupling.conditioner = GuideConditioner(
                coupling.conditioner,
                n_params=t.n_params,
                bound=input_bound,
                scale_index=t.log_scale_index,
                linear_rank=linear_rank,
                key=jr.fold_in(ck, 1),
            )
        layers.append(coupling)
        mix = None if permutation == "bits" or d == 1 else mixing_layer(permutation, pk, d, dtype)
        if mix is not None:
            layers.append(mix)
    return Chain(layers)


def coupling_flow(key, shape, *, base_dist=None, **options) -> CouplingFlow:
    """A stack of coupling layers as a NumPyro distribution (a :class:`CouplingFlow`).

    Args:
        key: PRNG key.
        shape: event shape ``(d,)`` (or the int ``d``; ``d >= 2``, or ``d >= 1`` with a
            context).
        base_dist: latent distribution (default ``N(0, I)``).
        **options: the options of :func:`coupling_layers`: ``transformer`` (default
            ``"spline"``), ``n_layers`` (8), ``nn_width`` (64), ``nn_depth`` (2),
            ``permutation`` (``"flip"``), ``activation``, ``actnorm``, ``zero_init``,
            ``dtype``, ``context_shape`` (a conditional flow, see
            :meth:`CouplingFlow.condition`) and the transformer's own options
            (``n_bins``, ``interval``, ``n_components``, ``log_scale_bound``).

    Returns:
        A :class:`CouplingFlow`.

    Example:
        >>> import jax.random as jr
        >>> flow = coupling_flow(jr.key(0), (3,), transformer="spline", n_layers=4, n_bins=6)
        >>> flow.event_shape
        (3,)
    """
    shape = as_shape(shape)
    least = 1 if options.get("context_shape") is not None else 2
    if len(shape) == 1 and shape[0] < least:
        raise ValueError(
            f"coupling_flow needs at least {least} event coordinates, got shape {shape}"
        )
    return CouplingFlow(coupling_layers(key, shape, **options), base_dist)
