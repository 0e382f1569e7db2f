"""The NumPyro surface shared by every bijection of this package.

NumPyro registers each ``Transform`` subclass as a pytree, so a Transform cannot also be an
``eqx.Module``. :class:`Bijection` therefore keeps its trainable state in attributes named
by ``_params`` (arrays or equinox modules, flattened as pytree children) and its
configuration in attributes named by ``_static`` (hashable, kept in the aux data).

Subclasses implement two methods, each returning the output and the log-det together:

* ``transform_and_log_det(x) -> (y, log|det dy/dx|)``
* ``inverse_and_log_det(y) -> (x, log|det dx/dy|)``

Everything NumPyro asks for (``__call__``, ``_inverse``, ``log_abs_det_jacobian``,
``call_with_intermediates``, ``domain``/``codomain``) is derived from these, and the log-det
computed by a forward pass is handed back as the intermediates, so a
``TransformedDistribution`` evaluates each conditioner once.

A *conditional* bijection (``context_shape`` not ``None``) takes a second argument,
``transform_and_log_det(x, context)``: a map of ``x`` for each context. NumPyro's
``Transform`` API has room for one argument only, so :class:`Conditioned` binds a context
to it and is an ordinary bijection again.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

__all__ = [
    "Bijection",
    "Chain",
    "Conditioned",
    "Invert",
    "check_context",
    "event_constraint",
    "one_program",
    "reads_context",
]


def one_program(method):
    """Run ``method(self, ...)`` as one compiled program (``eqx.filter_jit``).

    Called eagerly, JAX compiles and dispatches each primitive of a flow on its own: a first
    call of a deep flow costs hundreds of small compilations (seconds), against one
    compilation of the whole map. Under an outer ``jit``, ``vmap`` or ``grad`` the wrapper
    is traced through and inlined, so it changes nothing there.

    Args:
        method: a method whose ``self`` is a pytree (a :class:`Bijection` or a NumPyro
            distribution); arguments that are not arrays are compiled in as constants.

    Returns:
        The method, compiled once per structure of ``self`` and shape of the arguments.

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro_coupling import Flip
        >>> Flip((3,)).transform(jnp.arange(3.0)).tolist()  # Bijection.transform is wrapped
        [2.0, 1.0, 0.0]
    """
    compiled = eqx.filter_jit(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return compiled(self, *args, **kwargs)

    return wrapper


def event_constraint(event_ndim: int):
    """``real`` reinterpreted over ``event_ndim`` dims (``real_vector`` for vectors)."""
    if event_ndim == 0:
        return constraints.real
    if event_ndim == 1:
        return constraints.real_vector
    return constraints.independent(constraints.real, event_ndim)


class Bijection(Transform):
    """Base class: a NumPyro ``Transform`` with pytree parameters and one-pass log-dets.

    Attributes:
        shape: the event shape the bijection acts on.
        context_shape: the shape of the context a conditional bijection reads beside its
            input (``None``: it reads none).
    """

    _params: tuple[str, ...] = ()
    _static: tuple[str, ...] = ("shape",)
    shape: tuple[int, ...] = ()
    context_shape: tuple[int, ...] | None = None

    # --- to implement -------------------------------------------------------------
    def transform_and_log_det(self, x):
        """Map ``x: (*batch, *shape)`` to ``(y, log_det)`` with ``log_det: batch``."""
        raise NotImplementedError

    def inverse_and_log_det(self, y):
        """Map ``y: (*batch, *shape)`` back to ``(x, log_det)`` (log-det of the inverse)."""
        raise NotImplementedError

    # --- the map or its inverse alone ---------------------------------------------
    @one_program
    def transform(self, x, context=None):
        """Forward map ``(*batch, *shape) -> (*batch, *shape)`` (``context``: if conditional)."""
        return _with_context(self, "transform_and_log_det", x, context)[0]

    @one_program
    def inverse(self, y, context=None):
        """Inverse map ``(*batch, *shape) -> (*batch, *shape)`` (``context``: if conditional)."""
        return _with_context(self, "inverse_and_log_det", y, context)[0]

    # --- NumPyro Transform API ----------------------------------------------------
    @property
    def domain(self):
        return event_constraint(len(self.shape))

    @property
    def codomain(self):
        return event_constraint(len(self.shape))

    def __call__(self, x):
        return self.transform(x)

    def _inverse(self, y):
        return self.inverse(y)

    def call_with_intermediates(self, x):
        return self.transform_and_log_det(x)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        if intermediates is not None:
            return intermediates
        return self.transform_and_log_det(x)[1]

    def forward_shape(self, shape):
        return tuple(shape)

    def inverse_shape(self, shape):
        return tuple(shape)

    def check_event(self, x):
        """Raise a ``ValueError`` unless ``x`` ends in this bijection's event shape."""
        n = len(self.shape)
        got = tuple(jnp.shape(x))
        if (n and got[len(got) - n :] != tuple(self.shape)) or len(got) < n:
            raise ValueError(
                f"{type(self).__name__} acts on events of shape {tuple(self.shape)}, "
                f"got an input of shape {got}"
            )

    def batch_shape_of(self, x):
        return tuple(jnp.shape(x))[: jnp.ndim(x) - len(self.shape)]

    # --- pytree -------------------------------------------------------------------
    def tree_flatten(self):
        children = tuple(getattr(self, k) for k in self._params)
        static = {k: getattr(self, k) for k in self._static}
        return children, (self._params, static)

    def __repr__(self):
        cfg = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._static)
        return f"{type(self).__name__}({cfg})"


class Chain(Bijection):
    """Composition ``bijections[-1] o ... o bijections[0]`` (applied first to last).

    Args:
        bijections: sequence of :class:`Bijection` (any NumPyro ``Transform`` with an
            identical event shape also works; it then costs NumPyro's usual two passes).

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro_coupling import Chain, Flip
        >>> chain = Chain([Flip((3,)), Flip((3,))])
        >>> chain.transform(jnp.arange(3.0)).tolist()
        [0.0, 1.0, 2.0]
    """

    _params = ("bijections",)
    _static = ("shape",)

    def __init__(self, bijections, shape=None):
        bijections = tuple(bijections)
        if not bijections:
            raise ValueError("Chain needs at least one bijection")
        if shape is None:
            shapes = [b.shape for b in bijections if isinstance(b, Bijection)]
            if not shapes:
                raise ValueError("pass shape= for a Chain of plain NumPyro transforms")
            shape = shapes[0]
        contexts = {b.context_shape for b in bijections if reads_context(b)}
        if len(contexts) > 1:
            raise ValueError(
                f"the bijections of a Chain must read one context shape, got {sorted(contexts)}"
            )
        self.bijections = bijections
        self.shape = tuple(shape)

    @property
    def context_shape(self):
        """The context shape its conditional members read (``None`` if none does)."""
        return next((b.context_shape for b in self.bijections if reads_context(b)), None)

    def transform_and_log_det(self, x, context=None):
        total = 0.0
        for b in self.bijections:
            x, ld = _forward_and_log_det(b, x, len(self.shape), context)
            total = total + ld
        return x, jnp.broadcast_to(total, jnp.shape(x)[: jnp.ndim(x) - len(self.shape)])

    def inverse_and_log_det(self, y, context=None):
        total = 0.0
        for b in reversed(self.bijections):
            y, ld = _inverse_and_log_det(b, y, len(self.shape), context)
            total = total + ld
        return y, jnp.broadcast_to(total, jnp.shape(y)[: jnp.ndim(y) - len(self.shape)])

    # A chain may start or end with a constrained NumPyro transform (e.g. ``ExpTransform``).
    @property
    def domain(self):
        return _at_event_rank(self.bijections[0].domain, len(self.shape))

    @property
    def codomain(self):
        return _at_event_rank(self.bijections[-1].codomain, len(self.shape))

    def __len__(self):
        return len(self.bijections)

    def __getitem__(self, i):
        return self.bijections[i]

    def __repr__(self):
        inner = ",\n  ".join(repr(b) for b in self.bijections)
        return f"Chain([\n  {inner}\n])"


class Invert(Bijection):
    """The inverse of a :class:`Bijection`, still one pass each way.

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

    @property
    def context_shape(self):
        return self.bijection.context_shape

    # Compiled passes: called eagerly (``svi.init``, ``sample_posterior``) a deep flow
    # would otherwise run op by op.
    @one_program
    def transform_and_log_det(self, x, context=None):
        return _with_context(self.bijection, "inverse_and_log_det", x, context)

    @one_program
    def inverse_and_log_det(self, y, context=None):
        return _with_context(self.bijection, "transform_and_log_det", y, context)

    @property
    def domain(self):
        return self.bijection.codomain

    @property
    def codomain(self):
        return self.bijection.domain

    def __repr__(self):
        return f"Invert({self.bijection!r})"


class Conditioned(Bijection):
    """A conditional bijection with its context bound: an ordinary (unconditional) bijection.

    ``Conditioned(b, c).transform_and_log_det(x) == b.transform_and_log_det(x, c)``. The
    context's leading axes are batch axes: they broadcast against those of ``x`` (NumPy
    rules), so a ``TransformedDistribution`` built on it has the context's batch shape.
    The context is a pytree leaf but not a parameter:
    :func:`~numpyro_coupling.partition_flow` leaves it out of the trainable leaves.

    Args:
        bijection: a conditional bijection (``context_shape`` not ``None``).
        context: ``(*batch, *bijection.context_shape)`` context.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> from numpyro_coupling import AffineCoupling
        >>> layer = AffineCoupling(jr.key(0), shape=(2,), context_shape=(3,), zero_init=False)
        >>> bound = Conditioned(layer, jnp.ones((5, 3)))
        >>> bound.transform(jnp.zeros(2)).shape, bound.forward_shape((2,))
        ((5, 2), (5, 2))
    """

    _params = ("bijection", "context")
    _static = ("shape",)

    def __init__(self, bijection: Bijection, context):
        if not reads_context(bijection):
            raise ValueError(
                f"bijection must read a context (context_shape set), got a "
                f"{type(bijection).__name__} without one"
            )
        self.bijection = bijection
        self.shape = tuple(bijection.shape)
        self.context = check_context(context, bijection.context_shape)

    @property
    def batch_shape(self):
        """The context's batch shape (its leading axes)."""
        n = len(self.bijection.context_shape)
        return tuple(jnp.shape(self.context))[: jnp.ndim(self.context) - n]

    def transform_and_log_det(self, x):
        return self.bijection.transform_and_log_det(x, self.context)

    def inverse_and_log_det(self, y):
        return self.bijection.inverse_and_log_det(y, self.context)

    @property
    def domain(self):
        return self.bijection.domain

    @property
    def codomain(self):
        return self.bijection.codomain

    def forward_shape(self, shape):
        return self._broadcast(shape)

    def inverse_shape(self, shape):
        return self._broadcast(shape)

    def _broadcast(self, shape):
        n = len(self.shape)
        batch = tuple(shape)[: len(shape) - n]
        return (*jnp.broadcast_shapes(batch, self.batch_shape), *tuple(shape)[len(shape) - n :])

    def __repr__(self):
        return f"Conditioned({self.bijection!r}, context of shape {jnp.shape(self.context)})"


def reads_context(bijection) -> bool:
    """Whether ``bijection`` is conditional (reads a context beside its input).

    Example:
        >>> from numpyro_coupling import Flip
        >>> reads_context(Flip((2,)))
        False
    """
    return getattr(bijection, "context_shape", None) is not None


def check_context(context, context_shape):
    """``context`` as an array ending in ``context_shape``, or a ``ValueError`` naming it.

    An integer or boolean context is cast to JAX's default float.

    Example:
        >>> check_context([[1, 2]], (2,)).shape
        (1, 2)
    """
    context = jnp.asarray(context)
    if not jnp.issubdtype(context.dtype, jnp.inexact):
        context = context.astype(jnp.result_type(float))
    got, n = tuple(jnp.shape(context)), len(context_shape)
    if len(got) < n or got[len(got) - n :] != tuple(context_shape):
        raise ValueError(
            f"context must have shape (*batch, {', '.join(map(str, context_shape))}) to match "
            f"context_shape={tuple(context_shape)}, got shape {got}"
        )
    return context


def _with_context(b, method, x, context):
    """``b.method(x, context)`` for a conditional ``b``, ``b.method(x)`` otherwise."""
    if reads_context(b):
        return getattr(b, method)(x, context)
    if context is not None:
        raise ValueError(f"context was given, but {type(b).__name__} reads no context")
    return getattr(b, method)(x)


def _at_event_rank(constraint, ndim_event):
    extra = ndim_event - constraint.event_dim
    return constraints.independent(constraint, extra) if extra > 0 else constraint


def _sum_event(t, ld, ndim_event):
    # NumPyro transforms report elementwise log-dets for their own event rank.
    extra = ndim_event - t.codomain.event_dim
    return ld.sum(tuple(range(-extra, 0))) if extra > 0 else ld


def _forward_and_log_det(t, x, event_ndim, context=None):
    if reads_context(t):
        return t.transform_and_log_det(x, context)
    if isinstance(t, Bijection):
        return t.transform_and_log_det(x)
    y = t(x)
    return y, _sum_event(t, t.log_abs_det_jacobian(x, y), event_ndim)


def _inverse_and_log_det(t, y, event_ndim, context=None):
    if reads_context(t):
        return t.inverse_and_log_det(y, context)
    if isinstance(t, Bijection):
        return t.inverse_and_log_det(y)
    x = t.inv(y)
    return x, -_sum_event(t, t.log_abs_det_jacobian(x, y), event_ndim)
