"""Coupling flows as NumPyro ``TransformedDistribution``s with one-pass ``log_prob``."""

from __future__ import annotations

import inspect
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpyro.distributions as dist
from numpyro.distributions import TransformedDistribution

from .bijection import Bijection, Chain, event_constraint, one_program
from .coupling import AdditiveCoupling, AffineCoupling, MixtureGaussianCDFCoupling, RQSplineCoupling
from .linear import ActNorm1D, Flip, HouseholderRotation, LULinear, Permute

__all__ = [
    "COUPLINGS",
    "PERMUTATIONS",
    "CouplingFlow",
    "StandardNormal",
    "coupling_flow",
    "standard_normal",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

#: transformer name -> coupling class (the factory's ``transformer=`` choices).
COUPLINGS = {
    "affine": AffineCoupling,
    "additive": AdditiveCoupling,
    "spline": RQSplineCoupling,
    "mixture": MixtureGaussianCDFCoupling,
}

PERMUTATIONS = ("flip", "random", "householder", "lu", "none")


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
        shape = tuple(int(s) for s in shape)
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


def _parameter_dtype(bijection):
    """The float dtype of a bijection's arrays (``None`` when it has none)."""
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
            base_dist = standard_normal(bijection.shape, _parameter_dtype(bijection))
        super().__init__(base_dist, bijection.inv, validate_args=validate_args)

    @property
    def bijection(self) -> Bijection:
        """The data-to-latent bijection."""
        # A transformed base_dist has its transforms merged in front of this one.
        return self.transforms[-1].inv

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


def _transformer_options(cls) -> set[str]:
    """The transformer's own keyword arguments of a coupling class (``n_bins``, ...)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "shape"}


def _permutation_layer(kind, key, d, dtype=None):
    """The layer that mixes coordinates between couplings; ``None`` for ``"none"``."""
    if kind == "flip":
        return Flip((d,))
    if kind == "random":
        return Permute.random(key, d)
    if kind == "householder":
        return HouseholderRotation(n_reflections=2, shape=(d,), key=key, dtype=dtype)
    if kind == "lu":
        return LULinear((d,), key=key, dtype=dtype)
    if kind == "none":
        return None
    raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {kind!r}")


def coupling_flow(
    key,
    shape,
    *,
    transformer: str = "spline",
    n_layers: int = 8,
    nn_width: int = 64,
    nn_depth: int = 2,
    permutation: str = "flip",
    activation: str = "relu",
    actnorm: bool = False,
    zero_init: bool = True,
    base_dist=None,
    dtype=None,
    **transformer_kwargs,
) -> CouplingFlow:
    """Build a stack of coupling layers as a NumPyro distribution.

    Data-to-latent order per layer: ``[ActNorm1D] -> coupling -> permutation``. With
    ``permutation="flip"`` the halves alternate, so every coordinate is both transformed
    and used as context, except for odd ``d`` the middle one, which is transformed in
    every layer and never read as context (``"random"``, ``"householder"`` or ``"lu"``
    mix it in).

    Args:
        key: PRNG key.
        shape: event shape ``(d,)`` (``d >= 2``).
        transformer: ``"spline"``, ``"affine"``, ``"additive"`` or ``"mixture"``.
        n_layers: number of coupling layers.
        nn_width: conditioner hidden width.
        nn_depth: conditioner hidden layers.
        permutation: ``"flip"``, ``"random"``, ``"householder"``, ``"lu"`` or ``"none"``.
        activation: conditioner activation.
        actnorm: put an :class:`ActNorm1D` before each coupling.
        zero_init: conditioners start with a zero final kernel.
        base_dist: latent distribution (default ``N(0, I)``).
        dtype: parameter dtype.
        **transformer_kwargs: forwarded to the coupling class (``n_bins``, ``interval``,
            ``n_components``, ``log_scale_bound``).

    Returns:
        A :class:`CouplingFlow`.

    Example:
        >>> import jax.random as jr
        >>> flow = coupling_flow(jr.key(0), (3,), transformer="spline", n_layers=4, n_bins=6)
        >>> flow.event_shape
        (3,)
    """
    if transformer not in COUPLINGS:
        raise ValueError(f"transformer must be one of {sorted(COUPLINGS)}, got {transformer!r}")
    if permutation not in PERMUTATIONS:
        raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {permutation!r}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 1:
        raise ValueError(f"coupling_flow builds flows over vector events (d,), got {shape}")
    (d,) = shape
    cls = COUPLINGS[transformer]
    options = _transformer_options(cls)
    foreign = set(transformer_kwargs) - options
    if foreign & set().union(*map(_transformer_options, COUPLINGS.values())):
        raise ValueError(
            f"transformer={transformer!r} takes {sorted(options) or 'no options'}, "
            f"got {sorted(transformer_kwargs)}"
        )
    layers = []
    for k in jr.split(key, n_layers):
        ck, pk = jr.split(k)
        if actnorm:
            layers.append(ActNorm1D(shape, dtype=dtype))
        layers.append(
            cls(
                ck,
                shape=shape,
                nn_width=nn_width,
                nn_depth=nn_depth,
                activation=activation,
                zero_init=zero_init,
                dtype=dtype,
                **transformer_kwargs,
            )
        )
        mix = _permutation_layer(permutation, pk, d, dtype)
        if mix is not None:
            layers.append(mix)
    return CouplingFlow(Chain(layers), base_dist)
