"""Linear layers placed between couplings: permutations, rotations, LU, ActNorm.

All act on vector events ``(d,)`` and broadcast over any batch shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .bijection import Bijection
from .checks import as_shape

__all__ = [
    "MIXINGS",
    "ActNorm1D",
    "DenseAffine",
    "Flip",
    "FrozenMatrix",
    "HouseholderRotation",
    "LULinear",
    "Permute",
    "Rotation",
    "mixing_layer",
]


def _vector_shape(shape, name):
    shape = as_shape(shape)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"{name} acts on vector events (d,), got shape {shape}")
    return shape


class Permute(Bijection):
    """Fixed permutation of a vector event (log-det 0).

    Args:
        permutation: a permutation of ``range(d)``; ``y = x[..., permutation]``.

    Example:
        >>> import jax.numpy as jnp
        >>> Permute([2, 0, 1]).transform(jnp.array([10.0, 11.0, 12.0])).tolist()
        [12.0, 10.0, 11.0]
    """

    _static = ("shape", "permutation")

    def __init__(self, permutation):
        perm = tuple(int(i) for i in np.asarray(permutation).reshape(-1))
        if sorted(perm) != list(range(len(perm))):
            raise ValueError(f"not a permutation of range({len(perm)}): {perm}")
        self.permutation = perm
        self.shape = (len(perm),)

    @classmethod
    def random(cls, key, d: int):
        """A uniformly random permutation of ``d`` coordinates."""
        return cls(np.asarray(jr.permutation(key, d)))

    def transform_and_log_det(self, x):
        self.check_event(x)
        return x[..., np.asarray(self.permutation)], jnp.zeros(self.batch_shape_of(x), x.dtype)

    def inverse_and_log_det(self, y):
        self.check_event(y)
        inv = np.argsort(np.asarray(self.permutation))
        return y[..., inv], jnp.zeros(self.batch_shape_of(y), y.dtype)


class Flip(Permute):
    """Reverse a vector event; between couplings it swaps passive and active halves.

    Example:
        >>> import jax.numpy as jnp
        >>> Flip((3,)).transform(jnp.array([1.0, 2.0, 3.0])).tolist()
        [3.0, 2.0, 1.0]
    """

    def __init__(self, shape):
        (d,) = _vector_shape(shape, "Flip")
        super().__init__(np.arange(d)[::-1])


class HouseholderRotation(Bijection):
    """Orthogonal map ``H_n ... H_1 x`` with ``H_i = I - 2 v_i v_i^T / |v_i|^2`` (log-det 0).

    Args:
        n_reflections: number of Householder reflections.
        shape: event shape ``(d,)``.
        key: PRNG key for the reflection vectors. Random vectors give a non-trivial
            rotation from the start (two equal vectors would cancel to the identity).

    Attributes:
        params: ``(n_reflections, d)`` reflection vectors (trainable).

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> rot = HouseholderRotation(n_reflections=2, shape=(3,), key=jr.key(1))
        >>> x = jnp.array([1.0, 2.0, 3.0])
        >>> bool(jnp.allclose(jnp.linalg.norm(rot.transform(x)), jnp.linalg.norm(x)))
        True
    """

    _params = ("params",)

    def __init__(self, n_reflections: int = 2, shape=(2,), *, key=None, params=None, dtype=None):
        self.shape = _vector_shape(shape, "HouseholderRotation")
        if n_reflections < 1:
            raise ValueError(f"n_reflections must be >= 1, got {n_reflections}")
        if params is None:
            key = jr.key(0) if key is None else key
            params = jr.normal(key, (n_reflections, self.shape[0]), dtype or jnp.zeros(()).dtype)
        self.params = jnp.asarray(params)

    def _unit(self):
        v = self.params
        return v / jnp.sqrt(jnp.sum(v * v, -1, keepdims=True) + jnp.finfo(v.dtype).tiny)

    @staticmethod
    def _reflect(x, u):
        return x - 2.0 * (x @ u)[..., None] * u

    def transform_and_log_det(self, x):
        self.check_event(x)
        for u in self._unit():
            x = self._reflect(x, u)
        return x, jnp.zeros(self.batch_shape_of(x), x.dtype)

    def inverse_and_log_det(self, y):
        self.check_event(y)
        for u in self._unit()[::-1]:
            y = self._reflect(y, u)
        return y, jnp.zeros(self.batch_shape_of(y), y.dtype)

    @property
    def matrix(self):
        """The ``(d, d)`` orthogonal matrix ``M`` with ``transform(x) = x @ M.T``."""
        eye = jnp.eye(self.shape[0], dtype=self.params.dtype)
        return self.transform(eye).T


class LULinear(Bijection):
    """Invertible linear map ``y = x @ (P L U)^T`` (Glow's 1x1 convolution on vectors).

    ``L`` is unit lower-triangular, ``U`` upper-triangular with a positive diagonal
    ``exp(log_diag)``, ``P`` a fixed permutation; log-det ``sum(log_diag)``. Starts as the
    permutation ``P`` (identity if ``key`` is ``None``).

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> lin = LULinear((3,), key=jr.key(0))
        >>> x = jnp.array([1.0, 2.0, 3.0])
        >>> bool(jnp.allclose(lin.inverse(lin.transform(x)), x))
        True
    """

    _params = ("lower", "upper", "log_diag")
    _static = ("shape", "permutation")

    def __init__(self, shape, *, key=None, dtype=None):
        (d,) = self.shape = _vector_shape(shape, "LULinear")
        dtype = dtype or jnp.zeros(()).dtype
        perm = np.arange(d) if key is None else np.asarray(jr.permutation(key, d))
        self.permutation = tuple(int(i) for i in perm)
        self.lower = jnp.zeros((d, d), dtype)
        self.upper = jnp.zeros((d, d), dtype)
        self.log_diag = jnp.zeros((d,), dtype)

    def _factors(self):
        d = self.shape[0]
        eye = jnp.eye(d, dtype=self.log_diag.dtype)
        lower = jnp.tril(self.lower, -1) + eye
        upper = jnp.triu(self.upper, 1) + jnp.diag(jnp.exp(self.log_diag))
        return lower, upper

    @property
    def matrix(self):
        """The ``(d, d)`` matrix ``W = P L U`` with ``transform(x) = x @ W.T``."""
        lower, upper = self._factors()
        return (lower @ upper)[np.argsort(self.permutation)]

    def transform_and_log_det(self, x):
        self.check_event(x)
        lower, upper = self._factors()
        y = ((x @ upper.T) @ lower.T)[..., np.argsort(self.permutation)]
        return y, jnp.broadcast_to(self.log_diag.sum(), self.batch_shape_of(x))

    def inverse_and_log_det(self, y):
        self.check_event(y)
        lower, upper = self._factors()
        v = y[..., np.asarray(self.permutation)]
        flat = v.reshape(-1, self.shape[0]).T
        flat = jax.scipy.linalg.solve_triangular(lower, flat, lower=True, unit_diagonal=True)
        flat = jax.scipy.linalg.solve_triangular(upper, flat, lower=False)
        x = flat.T.reshape(jnp.shape(y))
        return x, jnp.broadcast_to(-self.log_diag.sum(), self.batch_shape_of(y))


class ActNorm1D(Bijection):
    """Per-coordinate affine normalisation ``z = (x - loc) * exp(-log_scale)``.

    Starts as the identity; :meth:`initialize` sets ``loc``/``log_scale`` from data so the
    layer's output has zero mean and unit variance (Glow's data-dependent init).

    Example:
        >>> import jax.numpy as jnp
        >>> X = jnp.array([[1.0, 10.0], [3.0, 30.0]])
        >>> norm = ActNorm1D((2,)).initialize(X)
        >>> norm.transform(X).round(4).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
    """

    _params = ("loc", "log_scale")

    def __init__(self, shape, *, dtype=None):
        (d,) = self.shape = _vector_shape(shape, "ActNorm1D")
        dtype = dtype or jnp.zeros(()).dtype
        self.loc = jnp.zeros((d,), dtype)
        self.log_scale = jnp.zeros((d,), dtype)

    def initialize(self, data):
        """Return a copy whose output on ``data: (n, d)`` is standardised per coordinate."""
        data = jnp.asarray(data)
        self.check_event(data)
        flat = data.reshape(-1, self.shape[0])
        std = jnp.maximum(flat.std(0), 1e-6)
        new = type(self).__new__(type(self))
        new.shape = self.shape
        new.loc = flat.mean(0).astype(self.loc.dtype)
        new.log_scale = jnp.log(std).astype(self.log_scale.dtype)
        return new

    def transform_and_log_det(self, x):
        self.check_event(x)
        z = (x - self.loc) * jnp.exp(-self.log_scale)
        return z, jnp.broadcast_to(-self.log_scale.sum(), self.batch_shape_of(x))

    def inverse_and_log_det(self, z):
        self.check_event(z)
        x = z * jnp.exp(self.log_scale) + self.loc
        return x, jnp.broadcast_to(self.log_scale.sum(), self.batch_shape_of(z))


class FrozenMatrix:
    """A read-only float64 matrix usable as hashable pytree auxiliary data."""

    __slots__ = ("array",)

    def __init__(self, array):
        array = np.array(array, dtype=np.float64)
        array.setflags(write=False)
        self.array = array

    def __hash__(self):
        return hash((self.array.shape, self.array.tobytes()))

    def __eq__(self, other):
        return (
            isinstance(other, FrozenMatrix)
            and self.array.shape == other.array.shape
            and bool(np.array_equal(self.array, other.array))
        )

    def __repr__(self):
        return f"matrix{self.array.shape}"


class Rotation(Bijection):
    """A fixed orthogonal map ``y = x @ matrix.T`` (log-det 0, not trainable).

    The matrix is configuration, not a parameter: training a flow that holds it leaves it
    untouched, so it stays orthogonal and its log-det stays exactly zero.

    Args:
        matrix: ``(d, d)`` orthogonal matrix.

    Raises:
        ValueError: ``matrix`` is not square or not orthogonal.

    Example:
        >>> import jax.numpy as jnp
        >>> rot = Rotation([[0.0, -1.0], [1.0, 0.0]])
        >>> rot.transform(jnp.array([1.0, 2.0])).tolist()
        [-2.0, 1.0]
        >>> rot.inverse(rot.transform(jnp.array([1.0, 2.0]))).tolist()
        [1.0, 2.0]
    """

    _static = ("shape", "frozen_matrix")

    def __init__(self, matrix):
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
            raise ValueError(f"Rotation needs a square (d, d) matrix, got shape {m.shape}")
        err = np.max(np.abs(m @ m.T - np.eye(m.shape[0])))
        if not err < 1e-5:
            raise ValueError(f"Rotation matrix is not orthogonal (max |M M^T - I| = {err:.2g})")
        self.frozen_matrix = FrozenMatrix(m)
        self.shape = (m.shape[0],)

    @property
    def matrix(self):
        """The ``(d, d)`` orthogonal matrix as a JAX array of the default float dtype."""
        return jnp.asarray(self.frozen_matrix.array)

    def transform_and_log_det(self, x):
        self.check_event(x)
        m = self.frozen_matrix.array.astype(jnp.result_type(x))
        return x @ m.T, jnp.zeros(self.batch_shape_of(x), jnp.result_type(x))

    def inverse_and_log_det(self, y):
        self.check_event(y)
        m = self.frozen_matrix.array.astype(jnp.result_type(y))
        return y @ m, jnp.zeros(self.batch_shape_of(y), jnp.result_type(y))


#: ``mixing_layer`` kinds: how coordinates are mixed between two couplings.
MIXINGS = ("flip", "random", "householder", "lu", "none")


def mixing_layer(kind: str, key, dim: int, dtype=None) -> Bijection | None:
    """The layer that mixes coordinates between two couplings (``None`` for ``"none"``).

    Args:
        kind: ``"flip"`` (reverse the order), ``"random"`` (a fixed random permutation),
            ``"householder"`` (a learnt rotation, two reflections), ``"lu"`` (a learnt
            invertible linear map) or ``"none"``.
        key: PRNG key (random and learnt kinds).
        dim: number of coordinates.
        dtype: parameter dtype of the learnt kinds.

    Returns:
        The :class:`~numpyro_coupling.Bijection`, or ``None``.

    Example:
        >>> import jax.random as jr
        >>> type(mixing_layer("flip", jr.key(0), 3)).__name__, mixing_layer("none", None, 3)
        ('Flip', None)
    """
    if kind == "flip":
        return Flip((dim,))
    if kind == "random":
        return Permute.random(key, dim)
    if kind == "householder":
        return HouseholderRotation(n_reflections=2, shape=(dim,), key=key, dtype=dtype)
    if kind == "lu":
        return LULinear((dim,), key=key, dtype=dtype)
    if kind == "none":
        return None
    raise ValueError(f"permutation must be one of {MIXINGS}, got {kind!r}")


class DenseAffine(Bijection):
    """Whitening map ``u = L^-1 (x - loc)`` with ``L`` lower-triangular (positive diagonal).

    The normalising direction of a Gaussian ``N(loc, L L^T)``: its ``inverse`` is
    ``x = loc + L u``. Log-det of ``transform``: ``-sum(log diag L)``. Both arrays are
    parameters (pytree leaves); fix them by holding them out of an optimiser.

    Args:
        loc: ``(d,)`` location.
        chol: ``(d, d)`` lower-triangular factor; only its lower triangle is read.

    Example:
        >>> import jax.numpy as jnp
        >>> layer = DenseAffine(jnp.array([1.0, 2.0]), jnp.array([[2.0, 0.0], [1.0, 1.0]]))
        >>> layer.transform(jnp.array([3.0, 4.0])).tolist()
        [1.0, 1.0]
        >>> layer.inverse(jnp.array([1.0, 1.0])).tolist()
        [3.0, 4.0]
    """

    _params = ("loc", "chol")

    def __init__(self, loc, chol):
        loc = jnp.asarray(loc)
        chol = jnp.asarray(chol, loc.dtype)
        if loc.ndim != 1 or chol.shape != (loc.shape[0], loc.shape[0]):
            raise ValueError(
                f"loc must be (d,) and chol (d, d), got loc {loc.shape} and chol {chol.shape}"
            )
        self.shape = (int(loc.shape[0]),)
        self.loc, self.chol = loc, chol

    def _lower(self):
        return jnp.tril(self.chol)

    def transform_and_log_det(self, x):
        self.check_event(x)
        lower = self._lower()
        flat = (x - self.loc).reshape(-1, self.shape[0]).T
        u = jax.scipy.linalg.solve_triangular(lower, flat, lower=True).T.reshape(jnp.shape(x))
        log_det = -jnp.sum(jnp.log(jnp.diagonal(lower)))
        return u, jnp.broadcast_to(log_det, self.batch_shape_of(x))

    def inverse_and_log_det(self, u):
        self.check_event(u)
        lower = self._lower()
        x = self.loc + u @ lower.T
        log_det = jnp.sum(jnp.log(jnp.diagonal(lower)))
        return x, jnp.broadcast_to(log_det, self.batch_shape_of(u))
