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
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

__all__ = ["Bijection", "Chain", "Invert", "event_constraint", "one_program"]


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
    """

    _params: tuple[str, ...] = ()
    _static: tuple[str, ...] = ("shape",)
    shape: tuple[int, ...] = ()

    # --- to implement -------------------------------------------------------------
    def transform_and_log_det(self, x):
        """Map ``x: (*batch, *shape)`` to ``(y, log_det)`` with ``log_det: batch``."""
        raise NotImplementedError

    def inverse_and_log_det(self, y):
        """Map ``y: (*batch, *shape)`` back to ``(x, log_det)`` (log-det of the inverse)."""
        raise NotImplementedError

    # --- the map or its inverse alone ---------------------------------------------
    @one_program
    def transform(self, x):
        """Forward map ``(*batch, *shape) -> (*batch, *shape)``."""
        return self.transform_and_log_det(x)[0]

    @one_program
    def inverse(self, y):
        """Inverse map ``(*batch, *shape) -> (*batch, *shape)``."""
        return self.inverse_and_log_det(y)[0]

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
        self.bijections = bijections
        self.shape = tuple(shape)

    def transform_and_log_det(self, x):
        total = 0.0
        for b in self.bijections:
            x, ld = _forward_and_log_det(b, x, len(self.shape))
            total = total + ld
        return x, jnp.broadcast_to(total, jnp.shape(x)[: jnp.ndim(x) - len(self.shape)])

    def inverse_and_log_det(self, y):
        total = 0.0
        for b in reversed(self.bijections):
            y, ld = _inverse_and_log_det(b, y, len(self.shape))
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

    # Compiled passes: called eagerly (``svi.init``, ``sample_posterior``) a deep flow
    # would otherwise run op by op.
    @one_program
    def transform_and_log_det(self, x):
        return self.bijection.inverse_and_log_det(x)

    @one_program
    def inverse_and_log_det(self, y):
        return self.bijection.transform_and_log_det(y)

    @property
    def domain(self):
        return self.bijection.codomain

    @property
    def codomain(self):
        return self.bijection.domain

    def __repr__(self):
        return f"Invert({self.bijection!r})"


def _at_event_rank(constraint, ndim_event):
    extra = ndim_event - constraint.event_dim
    return constraints.independent(constraint, extra) if extra > 0 else constraint


def _sum_event(t, ld, ndim_event):
    # NumPyro transforms report elementwise log-dets for their own event rank.
    extra = ndim_event - t.codomain.event_dim
    return ld.sum(tuple(range(-extra, 0))) if extra > 0 else ld


def _forward_and_log_det(t, x, event_ndim):
    if isinstance(t, Bijection):
        return t.transform_and_log_det(x)
    y = t(x)
    return y, _sum_event(t, t.log_abs_det_jacobian(x, y), event_ndim)


def _inverse_and_log_det(t, y, event_ndim):
    if isinstance(t, Bijection):
        return t.inverse_and_log_det(y)
    x = t.inv(y)
    return x, -_sum_event(t, t.log_abs_det_jacobian(x, y), event_ndim)
