"""Rotation-based iterative Gaussianisation (RBIG) and the RBIG warm-started coupling flow.

Greedy RBIG (Laparra, Camps-Valls & Malo, 2011) Gaussianises data one layer at a time. The
data are first standardised; layer 0 maps every coordinate through its own fitted
Gaussianising marginal ``z = Phi^-1(F(x))``, with ``F`` the CDF of a 1-D Gaussian mixture
fitted by EM; every later layer rotates the data and Gaussianises the marginals again.
Marginal maps leave the total correlation (TC, the multi-information) unchanged and
rotations leave the joint entropy unchanged, so each layer's TC reduction is the drop in
the sum of marginal entropies caused by its rotation. Fitting stops once that reduction
stays under ``tol`` for ``patience`` layers.

Three choices keep the fit honest on data it has not seen:

* every mixture holds a small *anchor* component, the column's own Gaussian, so the
  Gaussianising map is no steeper than standardisation in the far tails and held-out
  points beyond the training range are not pushed outward layer after layer;
* a layer's TC reduction compares the rotated data with the same rotation of the data
  with each column shuffled independently (same marginals, no dependence), so the
  optimism of in-sample entropy estimates cancels and "nothing left" scores about zero;
* all mixture maths is :class:`~numpyro_coupling.MixtureGaussianCDF`'s, in log space, so
  the density stays finite far in the tails.

The result is a :class:`~numpyro_coupling.CouplingFlow` whose ``log_prob`` is the RBIG
density, its layers stacked in one :class:`RBIGLayers` (one ``lax.scan``, so compile time
does not grow with depth). :func:`fit_rbig_coupling` turns the same greedy fit into a
coupling flow that is *exactly* that density at initialisation: each marginal layer is
split into two mixture-CDF couplings whose conditioners have a zero final kernel and a
final bias equal to the fitted mixture parameters, so gradient training starts from the
RBIG solution and switches the conditioners on.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.scipy.special import logsumexp
from tqdm.auto import tqdm

from .bijection import Bijection, Chain
from .coupling import MixtureGaussianCDFCoupling
from .elementwise import Elementwise
from .flows import CouplingFlow
from .linear import ActNorm1D, Flip, FrozenMatrix, HouseholderRotation, Rotation
from .transformers import MixtureGaussianCDF, Transformer

__all__ = [
    "MAX_TIE_FRACTION",
    "ROTATIONS",
    "RBIGFlow",
    "RBIGLayers",
    "check_continuous",
    "dequantize_ties",
    "fit_gaussian_mixture",
    "fit_rbig",
    "fit_rbig_coupling",
]

#: Rotation choices of the greedy fit.
ROTATIONS = ("pca", "random", "householder")

#: A column whose most frequent value holds more than this fraction of the rows is
#: *heavily tied* (rounded or discrete data, or a point mass): RBIG needs continuous data.
#: On independent normals rounded to a grid, a 4% tie still estimates a total correlation
#: of 0.00 nats, an 8% tie 0.16 nats and a 19% tie 88 nats (true value 0).
MAX_TIE_FRACTION = 0.05

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Folded into the fit's key for the dequantisation noise.
_DEQUANTIZE_TAG = 0x7E1E5


# --- bijections -------------------------------------------------------------------------
class RBIGLayers(Bijection):
    """``L`` greedy RBIG layers ``x -> T(x @ M_l^T; params_l)``, run by one ``lax.scan``.

    Layer ``l`` rotates by the fixed orthogonal ``M_l`` and then Gaussianises every
    coordinate with the elementwise transformer (a :class:`Rotation` followed by a
    :class:`~numpyro_coupling.Elementwise` layer). Scanning over stacked layers compiles one layer
    whatever the depth, so a 100-layer fit costs no more to compile than a 1-layer one.

    Args:
        matrices: ``(L, d, d)`` orthogonal matrices (fixed); the identity for a layer
            without rotation.
        params: ``(L, d, transformer.n_params)`` raw transformer parameters (trainable).
        transformer: the elementwise map (default ``MixtureGaussianCDF(8)``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro_coupling import MixtureGaussianCDF
        >>> mix = MixtureGaussianCDF(2)
        >>> params = jnp.broadcast_to(mix.constant_params(), (3, 2, mix.n_params))
        >>> layers = RBIGLayers(jnp.broadcast_to(jnp.eye(2), (3, 2, 2)), params, mix)
        >>> z, log_det = jax.jit(layers.transform_and_log_det)(jnp.ones((5, 2)))
        >>> z.shape, log_det.shape, len(layers)
        ((5, 2), (5,), 3)
    """

    _params = ("params",)
    _static = ("shape", "transformer", "frozen_matrices")

    def __init__(self, matrices, params, transformer: Transformer | None = None):
        m = np.asarray(matrices, dtype=np.float64)
        if m.ndim != 3 or m.shape[1] != m.shape[2] or m.shape[0] < 1:
            raise ValueError(f"matrices must have shape (L, d, d), got {m.shape}")
        err = np.abs(m @ np.swapaxes(m, 1, 2) - np.eye(m.shape[1])).max()
        if not err < 1e-5:
            raise ValueError(f"matrices are not orthogonal (max |M M^T - I| = {err:.2g})")
        self.transformer = MixtureGaussianCDF(8) if transformer is None else transformer
        params = jnp.asarray(params)
        expected = (*m.shape[:2], self.transformer.n_params)
        if params.shape != expected:
            raise ValueError(f"params must have shape {expected}, got {params.shape}")
        self.frozen_matrices = FrozenMatrix(m)
        self.params = params
        self.shape = (m.shape[1],)

    def __len__(self):
        return self.frozen_matrices.array.shape[0]

    def _matrices(self, dtype):
        return jnp.asarray(self.frozen_matrices.array, dtype)

    def transform_and_log_det(self, x):
        self.check_event(x)
        dtype = jnp.result_type(x, self.params)

        def layer(carry, weights):
            x, total = carry
            matrix, params = weights
            x, log_det = self.transformer.forward(x @ matrix.T, params)
            return (x, total + log_det.sum(-1)), None

        init = (jnp.asarray(x, dtype), jnp.zeros(self.batch_shape_of(x), dtype))
        (z, total), _ = jax.lax.scan(layer, init, (self._matrices(dtype), self.params))
        return z, total

    def inverse_and_log_det(self, y):
        self.check_event(y)
        dtype = jnp.result_type(y, self.params)

        def layer(carry, weights):
            y, total = carry
            matrix, params = weights
            params = jnp.broadcast_to(params, jnp.shape(y) + params.shape[-1:])
            x, log_det = self.transformer.inverse(y, params)
            return (x @ matrix, total + log_det.sum(-1)), None

        init = (jnp.asarray(y, dtype), jnp.zeros(self.batch_shape_of(y), dtype))
        (x, total), _ = jax.lax.scan(
            layer, init, (self._matrices(dtype), self.params), reverse=True
        )
        return x, total

    @property
    def layers(self):
        """``[(Rotation or None, Elementwise), ...]``: the layers one by one."""
        out = []
        for matrix, params in zip(self.frozen_matrices.array, self.params):
            identity = np.array_equal(matrix, np.eye(len(matrix)))
            rotation = None if identity else Rotation(matrix)
            out.append((rotation, Elementwise(self.shape, self.transformer, params)))
        return out


class RBIGFlow(CouplingFlow):
    """A flow built by greedy RBIG, with the fit's total-correlation record.

    Attributes:
        tc_reductions: per-layer TC reduction estimates in nats (layer 0, which only
            Gaussianises the marginals, reduces nothing).
        marginal_entropy: estimated sum of the marginal entropies of the data (nats).
        validation_nll: held-out NLL after each layer, when fitted with ``validation``.
    """

    pytree_aux_fields = ("tc_reductions", "marginal_entropy", "validation_nll")

    def __init__(
        self,
        bijection,
        tc_reductions=(),
        marginal_entropy=float("nan"),
        validation_nll=(),
        **kw,
    ):
        super().__init__(bijection, **kw)
        self.tc_reductions = tuple(float(t) for t in tc_reductions)
        self.marginal_entropy = float(marginal_entropy)
        self.validation_nll = tuple(float(v) for v in validation_nll)

    @property
    def n_layers(self) -> int:
        """Number of greedy layers (layer 0 included)."""
        return len(self.tc_reductions)

    @property
    def total_correlation(self) -> float:
        """Estimated total correlation of the data (nats): the sum of the reductions."""
        return float(sum(self.tc_reductions))

    @property
    def tc_trace(self) -> np.ndarray:
        """Estimated TC left after each layer, ``(n_layers + 1,)``, starting with the data's."""
        left = self.total_correlation - np.cumsum(self.tc_reductions)
        return np.concatenate([[self.total_correlation], left])

    @property
    def entropy_estimate(self) -> float:
        """``sum_i H(x_i) - TC(x)``: the data's joint entropy in nats."""
        return self.marginal_entropy - self.total_correlation


# --- the maths: vectorised EM and rotations ----------------------------------------------
def _log_mixture_density(x, log_w, means, scales):
    """``log sum_k w_k N(x; mu_k, s_k)`` for ``x: (n, d)`` and mixtures ``(d, K)``."""
    z = (x[..., None] - means) / scales
    return logsumexp(log_w - 0.5 * z * z - jnp.log(scales) - _HALF_LOG_2PI, -1)


@functools.partial(
    jax.jit, static_argnames=("n_components", "em_steps", "min_scale", "anchor_weight")
)
def fit_gaussian_mixture(
    x,
    n_components: int = 8,
    em_steps: int = 100,
    min_scale: float = 1e-3,
    anchor_weight: float = 1e-3,
):
    """Fit a 1-D Gaussian mixture to every column of ``x`` at once by EM.

    One compiled EM runs all columns together (the E-step is a ``(n, d, K)`` array), in
    log space throughout. Components start at evenly spaced quantiles; scales are floored
    at ``min_scale`` times the column's standard deviation, so no component collapses
    onto a single point; an empty component keeps its previous mean and scale.

    With ``K >= 2`` the first component is an *anchor*: the column's own Gaussian
    ``N(mean, std^2)`` held at weight ``anchor_weight``. It governs the far tails, so the
    Gaussianising map ``Phi^-1(F(x))`` is no steeper than standardisation there and
    points beyond the training range are not flung outward layer after layer.

    Args:
        x: ``(n, d)`` samples.
        n_components: mixture components ``K`` per column (the anchor included).
        em_steps: EM iterations.
        min_scale: scale floor relative to each column's standard deviation.
        anchor_weight: weight of the anchor component (0 to fit all ``K`` freely).

    Returns:
        ``(weights, means, scales)``, each ``(d, K)``; weights sum to one per column.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> x = jnp.concatenate([jr.normal(jr.key(0), (500, 1)) - 3,
        ...                      jr.normal(jr.key(1), (500, 1)) + 3])
        >>> w, m, s = fit_gaussian_mixture(x, n_components=3, em_steps=50)
        >>> [round(v) for v in sorted(m[0, 1:].tolist())]
        [-3, 3]
    """
    n, _ = x.shape
    k = n_components
    dtype = x.dtype
    mean, std = jnp.mean(x, 0)[:, None], jnp.std(x, 0)[:, None]
    floor = min_scale * std
    q = (jnp.arange(k, dtype=dtype) + 0.5) / k
    means = jnp.quantile(x, q, axis=0).T
    scales = jnp.broadcast_to(std / math.sqrt(k), means.shape)
    log_w = jnp.full(means.shape, -math.log(k), dtype)
    anchored = k > 1 and anchor_weight > 0
    if anchored:
        means = means.at[:, 0].set(mean[:, 0])
        scales = scales.at[:, 0].set(std[:, 0])
        log_w = log_w.at[:, 0].set(jnp.log(anchor_weight))
        log_w = log_w.at[:, 1:].set(jnp.log1p(-anchor_weight) - math.log(k - 1))
    free = jnp.arange(k) >= (1 if anchored else 0)
    # A component keeps at least this weight so its logit stays finite under training.
    log_w_floor = math.log(1e-8)

    def em_step(_, state):
        log_w, means, scales = state
        z = (x[..., None] - means) / scales
        log_joint = log_w - 0.5 * z * z - jnp.log(scales)
        resp = jnp.exp(log_joint - logsumexp(log_joint, -1, keepdims=True))
        nk = resp.sum(0)
        alive = (nk > 1e-6 * n) & free
        nk_safe = jnp.where(alive, nk, 1.0)
        new_means = (resp * x[..., None]).sum(0) / nk_safe
        var = (resp * (x[..., None] - new_means) ** 2).sum(0) / nk_safe
        new_scales = jnp.maximum(jnp.sqrt(var), floor)
        means = jnp.where(alive, new_means, means)
        scales = jnp.where(alive, new_scales, scales)
        new_log_w = jnp.maximum(jnp.log(nk), log_w_floor + math.log(n))
        new_log_w = jnp.where(free, new_log_w, -jnp.inf)
        new_log_w = new_log_w - logsumexp(new_log_w, -1, keepdims=True)
        if anchored:
            new_log_w = jnp.where(free, new_log_w + jnp.log1p(-anchor_weight), log_w)
        return new_log_w, means, scales

    log_w, means, scales = jax.lax.fori_loop(0, em_steps, em_step, (log_w, means, scales))
    return jnp.exp(log_w), means, scales


def _pca_matrix(x):
    """Rows = principal directions of ``x: (n, d)``, largest variance first, sign-fixed."""
    xc = x - x.mean(0)
    _, vecs = jnp.linalg.eigh(xc.T @ xc / x.shape[0])
    vecs = vecs[:, ::-1]
    # Eigenvectors are defined up to sign: make the largest entry of each positive.
    pivot = jnp.take_along_axis(vecs, jnp.argmax(jnp.abs(vecs), 0)[None], 0)
    return (vecs * jnp.sign(pivot)).T


def _haar_matrix(key, d, dtype):
    """A Haar-distributed random orthogonal ``(d, d)`` matrix."""
    q, r = jnp.linalg.qr(jr.normal(key, (d, d), dtype))
    return q * jnp.sign(jnp.diagonal(r))


def _cross_entropy(x, mixture):
    """``-mean log p(x)`` per column of ``x: (n, d)`` under fitted mixtures ``(d, K)``."""
    weights, means, scales = mixture
    return -_log_mixture_density(x, jnp.log(weights), means, scales).mean(0)


def _shuffle_columns(key, x):
    """Permute the rows of every column independently: same marginals, no dependence."""
    order = jnp.argsort(jr.uniform(key, x.shape), axis=0)
    return jnp.take_along_axis(x, order, 0)


@functools.partial(jax.jit, static_argnames=("transformer", "em_steps"))
def _rbig_layer(x, matrix, key, transformer, em_steps):
    """One greedy layer on ``x: (n, d)``: rotate by ``matrix``, Gaussianise the marginals.

    TC reduction of the rotation: ``sum_i H(x_i) - sum_i H(y_i)``. Rather than comparing
    ``x`` with ``y`` -- whose marginals were Gaussianised by mixtures fitted to these very
    points, so an in-sample entropy estimate is optimistic on ``y`` but not on ``x`` --
    it compares ``y`` with the same rotation of ``x`` with its columns shuffled
    independently (same marginals, dependence destroyed). Both sides are then fresh
    rotations of the same marginals, the mixture estimator's optimism cancels, and a
    rotation that finds no dependence scores about zero. (For Gaussian marginals the
    shuffled rotation has exactly the marginal entropies of ``x``.)

    Returns:
        ``(params (d, n_params), z (n, d), tc_reduction, sum of marginal entropies of y)``.
    """
    d = x.shape[1]
    y = x @ matrix.T
    y_null = _shuffle_columns(key, x) @ matrix.T
    both = jnp.concatenate([y, y_null], 1)
    mixture = fit_gaussian_mixture(both, transformer.n_components, em_steps)
    h = _cross_entropy(both, mixture)
    params = transformer.pack(*(a[:d] for a in mixture))
    z, _ = transformer.forward(y, params)
    return params, z, h[d:].sum() - h[:d].sum(), h[:d].sum()


@functools.partial(jax.jit, static_argnames=("rotation",))
def _rotation_array(x, key, rotation):
    """PCA or Haar matrix, or Householder reflection vectors, for the data ``x``."""
    d = x.shape[1]
    if rotation == "pca":
        return _pca_matrix(x)
    if rotation == "random":
        return _haar_matrix(key, d, x.dtype)
    return jr.normal(key, (d, d), x.dtype)


def _rotation_layer(kind, rotation_array):
    """The bijection for a rotation array, and its ``(d, d)`` matrix."""
    if kind == "householder":
        d = rotation_array.shape[0]
        rot = HouseholderRotation(d, (d,), params=rotation_array)
        return rot, np.asarray(jax.jit(lambda r: r.matrix)(rot), np.float64)
    return Rotation(np.asarray(rotation_array)), np.asarray(rotation_array, np.float64)


# --- ties: continuous data only ---------------------------------------------------------
def _ties(host):
    """Per column of ``host: (n, d)``: ``(most frequent value, its count, distinct values)``."""
    out = []
    for column in host.T:
        values, counts = np.unique(column, return_counts=True)
        top = int(np.argmax(counts))
        out.append((float(values[top]), int(counts[top]), len(values)))
    return out


def _tied(host):
    """``[(column, value, count, n_distinct), ...]`` of the heavily tied columns."""
    n = host.shape[0]
    return [
        (j, value, count, distinct)
        for j, (value, count, distinct) in enumerate(_ties(host))
        if count >= 2 and count > MAX_TIE_FRACTION * n
    ]


def _grid_widths(host):
    """Per column: the median gap between consecutive distinct values if it is heavily
    tied (the grid width of rounded data), else 0 (the column is left as it is)."""
    widths = np.zeros(host.shape[1])
    for j, *_ in _tied(host):
        gaps = np.diff(np.unique(host[:, j]))
        widths[j] = np.median(gaps) if gaps.size else 0.0
    return widths


def check_continuous(X, name: str = "X") -> None:
    """Raise if a column of ``X`` is heavily tied: RBIG needs continuous data.

    A column is heavily tied when its most frequent value holds more than
    :data:`MAX_TIE_FRACTION` of the rows: rounded or discrete data, or a point mass such as
    exact zeros. Such data have no density, so a fitted density spikes at the ties and
    the total correlation, entropy and mutual information estimates run off to hundreds
    of nats whatever the true dependence.

    Args:
        X: ``(n, d)`` or ``(n,)`` samples.
        name: the argument's name, for the error message.

    Raises:
        ValueError: a column of ``X`` is heavily tied (the message names it, its most
            frequent value and the remedy: ``dequantize=True`` or jitter).

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(500, 2))
        >>> check_continuous(X)  # continuous: nothing to say
        >>> check_continuous(np.round(X), "X")
        Traceback (most recent call last):
        ...
        ValueError: X is heavily tied: in column 0 the value 0 holds 37% of the 500 rows ...
    """
    host = np.asarray(X, dtype=np.float64)
    host = host[:, None] if host.ndim == 1 else host
    tied = _tied(host) if host.ndim == 2 and host.shape[0] else []
    if tied:
        j, value, count, distinct = tied[0]
        raise ValueError(
            f"{name} is heavily tied: in column {j} the value {value:g} holds "
            f"{count / host.shape[0]:.0%} of the {host.shape[0]} rows ({distinct} distinct "
            f"values; tied columns: {[t[0] for t in tied]}). RBIG and its information "
            "estimators assume continuous data: ties make the fitted density spike and the "
            "estimates diverge. Pass dequantize=True to spread each tied column by uniform "
            "noise of its grid width, or add your own jitter."
        )


def dequantize_ties(X, key):
    """Spread every heavily tied column of ``X`` by uniform noise of its grid width.

    Each tied column (see :func:`check_continuous`) gets ``U(-w/2, w/2)`` noise, ``w``
    the median gap between its consecutive distinct values: for data rounded to a grid
    that is the grid width, so the result is the continuous data the grid came from, up
    to where in its cell each point lies. Columns without heavy ties are returned as they
    are. The noise is independent of everything else, so it adds no dependence.

    Args:
        X: ``(n, d)`` samples.
        key: PRNG key of the noise.

    Returns:
        ``(n, d)`` array of ``X``'s float dtype (JAX's default float for integer input).

    Example:
        >>> import numpy as np, jax.random as jr
        >>> X = np.c_[np.round(np.linspace(-3, 3, 200)), np.linspace(-3, 3, 200)]
        >>> Y = dequantize_ties(X, jr.key(0))
        >>> float(np.abs(Y[:, 0] - X[:, 0]).max()) <= 0.5, bool((Y[:, 1] == X[:, 1]).all())
        (True, True)
    """
    X = jnp.asarray(X)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        X = X.astype(jnp.zeros(()).dtype)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    widths = _grid_widths(np.asarray(X, dtype=np.float64))
    return _add_grid_noise(X, widths, key)


def _add_grid_noise(X, widths, key):
    noise = jr.uniform(key, X.shape, X.dtype, -0.5, 0.5)
    return X + noise * jnp.asarray(widths, X.dtype)


# --- the greedy fit ---------------------------------------------------------------------
def _check_data(X, n_components, rotation, dequantize=False):
    if isinstance(n_components, bool) or int(n_components) != n_components or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
    X = jnp.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    if not jnp.issubdtype(X.dtype, jnp.floating):
        X = X.astype(jnp.zeros(()).dtype)
    n, d = X.shape
    if n < max(2 * n_components, 4) or d < 1:
        raise ValueError(
            f"X needs at least {max(2 * n_components, 4)} samples and 1 feature "
            f"(n_components={n_components}), got shape {X.shape}"
        )
    host = np.asarray(X, dtype=np.float64)
    if not np.isfinite(host).all():
        bad = np.argwhere(~np.isfinite(host))[0]
        raise ValueError(f"X contains NaN or inf (first at row {bad[0]}, column {bad[1]})")
    std = host.std(0)
    scale = np.maximum(np.abs(host).max(0), 1.0)
    constant = np.flatnonzero(std <= 1e-12 * scale)
    if constant.size:
        raise ValueError(
            f"column(s) {constant.tolist()} of X are constant (zero variance): a constant "
            "has no density; drop them or add noise"
        )
    if not dequantize:
        check_continuous(host, "X")
    if d > 1:
        eig = np.linalg.eigvalsh(np.corrcoef(host, rowvar=False))
        if eig[0] <= 1e-10 * d:
            raise ValueError(
                "X is degenerate: its columns are (numerically) linearly dependent, so the "
                "data lie on a lower-dimensional subspace and have no density in R^d"
            )
    return X


@functools.partial(jax.jit, static_argnames=("transformer",))
def _apply_layer(x, matrix, params, transformer):
    z, log_det = transformer.forward(x @ matrix.T, params)
    return z, log_det.sum(-1)


def _split_validation(X, validation, key):
    """``(train, held_out or None)`` from a fraction of ``X`` or from given held-out data."""
    if validation is None:
        return X, None
    if np.ndim(validation) == 0:
        fraction = float(validation)
        n_val = round(fraction * X.shape[0])
        if not 0.0 < fraction < 1.0 or n_val < 1:
            raise ValueError(f"validation must be a fraction in (0, 1) or data, got {validation}")
        order = jr.permutation(key, X.shape[0])
        return X[order[n_val:]], X[order[:n_val]]
    held_out = jnp.asarray(validation, X.dtype)
    if held_out.ndim != 2 or held_out.shape[1] != X.shape[1] or held_out.shape[0] < 1:
        raise ValueError(f"validation data must be (m, {X.shape[1]}), got {held_out.shape}")
    if not bool(jnp.isfinite(held_out).all()):
        raise ValueError("validation data contain NaN or inf")
    return X, held_out


def _greedy(
    X,
    key,
    *,
    n_layers,
    n_components,
    rotation,
    tol,
    patience,
    max_layers,
    em_steps,
    progress_bar,
    validation=None,
    dequantize=False,
):
    """Run the greedy layers; return their pieces (shared by both public fits)."""
    X = _check_data(X, n_components, rotation, dequantize)
    if n_layers is not None and n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if patience < 1 or max_layers < 1:
        raise ValueError(f"patience and max_layers must be >= 1, got {patience}, {max_layers}")
    key = jr.key(0) if key is None else key
    widths = _grid_widths(np.asarray(X, dtype=np.float64)) if dequantize else None
    if widths is not None:
        # fold_in: the noise gets its own key, and the rotations the ones they had.
        X = _add_grid_noise(X, widths, jr.fold_in(key, _DEQUANTIZE_TAG))
    split_key, key = jr.split(key)
    X, held_out = _split_validation(X, validation, split_key)
    if widths is not None and held_out is not None and np.ndim(validation) != 0:
        # Given held-out data lie on the same grid: the same noise width, fresh noise.
        held_out = _add_grid_noise(held_out, widths, jr.fold_in(key, _DEQUANTIZE_TAG))
    d = X.shape[1]
    transformer = MixtureGaussianCDF(int(n_components))
    total = n_layers if n_layers is not None else max_layers
    if d == 1 and n_layers is None and held_out is None:
        total = 1  # one coordinate: nothing to rotate, the marginal fit is the density

    actnorm = ActNorm1D((d,), dtype=X.dtype).initialize(X)
    x = actnorm.transform(X)
    if held_out is not None:
        x_val, log_det_val = actnorm.transform_and_log_det(held_out)
    eye = np.eye(d)
    rotations, matrices, params, reductions, val_nll = [], [], [], [], []
    marginal_entropy = float(actnorm.log_scale.sum())
    stall = 0
    bar = tqdm(total=total, desc="RBIG layers", disable=not progress_bar, leave=False)
    for layer in range(total):
        # fold_in: layer l gets the same key whatever the depth, so fits nest.
        rot_key, null_key = jr.split(jr.fold_in(key, layer))
        if layer == 0:
            rot, matrix = None, eye
        else:
            rot, matrix = _rotation_layer(rotation, _rotation_array(x, rot_key, rotation))
        matrix_x = jnp.asarray(matrix, x.dtype)
        p, x, reduction, marginal_h = _rbig_layer(x, matrix_x, null_key, transformer, em_steps)
        reduction = 0.0 if layer == 0 else float(reduction)
        if layer == 0:
            marginal_entropy += float(marginal_h)
        rotations.append(rot)
        matrices.append(matrix)
        params.append(p)
        reductions.append(reduction)
        progress = reduction
        if held_out is not None:
            x_val, log_det = _apply_layer(x_val, matrix_x, p, transformer)
            log_det_val = log_det_val + log_det
            base = -0.5 * jnp.sum(x_val * x_val, -1) - d * _HALF_LOG_2PI
            val_nll.append(-float(jnp.mean(base + log_det_val)))
            progress = val_nll[-2] - val_nll[-1] if layer > 0 else np.inf
        bar.update(1)
        bar.set_postfix(tc_reduction=f"{reduction:.2e}")
        if n_layers is None and layer > 0:
            stall = stall + 1 if progress < tol else 0
            if stall >= patience:
                # The layers after the last real progress only confirmed convergence.
                keep = len(reductions) - patience
                if held_out is not None:
                    keep = int(np.argmin(val_nll)) + 1
                for pieces in (rotations, matrices, params, reductions, val_nll):
                    del pieces[keep:]
                break
    bar.close()
    return actnorm, transformer, rotations, matrices, params, reductions, marginal_entropy, val_nll


def fit_rbig(
    X,
    key=None,
    *,
    n_layers: int | None = None,
    n_components: int = 8,
    rotation: str = "pca",
    tol: float = 1e-3,
    patience: int = 3,
    max_layers: int = 100,
    em_steps: int = 100,
    validation=None,
    progress_bar: bool = True,
    dequantize: bool = False,
) -> RBIGFlow:
    """Greedy RBIG: Gaussianise ``X`` layer by layer and return its density.

    The flow is ``ActNorm1D -> RBIGLayers``: the data are standardised, layer 0
    Gaussianises each coordinate, and every later layer rotates and Gaussianises the
    marginals again. Each marginal map is a
    :class:`~numpyro_coupling.MixtureGaussianCDF` whose parameters come from
    :func:`fit_gaussian_mixture` (one compiled EM for all coordinates).

    Stopping rule (when ``n_layers`` is ``None``): after each layer the reduction of the
    total correlation is estimated; once it stays below ``tol`` for ``patience``
    consecutive layers, fitting stops and those trailing layers are dropped. The TC
    reduction is measured on the training data, so it keeps counting real dependence
    that the mixtures can no longer learn from this many samples; with ``validation``
    the rule watches the held-out NLL instead (its drop per layer is the held-out TC
    reduction) and keeps the layers up to its minimum: the choice for density estimation.

    RBIG assumes continuous data. Rounded or discrete columns, or point masses (a value
    holding more than :data:`MAX_TIE_FRACTION` of a column), have no density: the fit
    would chase the ties for ``max_layers`` layers and report a total correlation of
    hundreds of nats. They are refused unless ``dequantize=True``, which first spreads
    each such column by uniform noise of its grid width (:func:`dequantize_ties`, seeded
    by ``key``); the flow is then the density of the dequantised data.

    Args:
        X: ``(n, d)`` continuous data.
        key: PRNG key for random rotations (default ``jax.random.key(0)``).
        n_layers: fit exactly this many layers (layer 0 included), no stopping rule.
        n_components: mixture components per coordinate and layer.
        rotation: ``"pca"`` (principal axes of the current data), ``"random"`` (a
            Haar-random orthogonal matrix) or ``"householder"`` (a product of ``d``
            random Householder reflections; trainable in :func:`fit_rbig_coupling`).
        tol: TC reduction (nats) below which a layer counts as making no progress.
        patience: consecutive no-progress layers before stopping.
        max_layers: upper bound on the number of layers.
        em_steps: EM iterations per layer.
        validation: ``None``, a fraction of ``X`` to hold out (e.g. ``0.1``; those rows
            are then not fitted), or held-out data ``(m, d)``: stop on the held-out NLL.
        progress_bar: show a tqdm bar over layers.
        dequantize: spread heavily tied columns of ``X`` (and of given ``validation``
            data) by uniform noise of their grid width instead of refusing them.

    Returns:
        An :class:`RBIGFlow` (a :class:`~numpyro_coupling.CouplingFlow`) over events
        ``(d,)`` in ``X``'s float dtype, with ``tc_reductions``, ``tc_trace``,
        ``total_correlation``, ``entropy_estimate`` (and ``validation_nll``).

    Raises:
        ValueError: ``X`` is not a finite 2-D array, has a constant column, a heavily
            tied column (without ``dequantize``) or linearly dependent columns;
            ``n_components < 1``; unknown ``rotation``; bad ``validation``.

    Example:
        >>> import jax, jax.random as jr
        >>> X = jr.normal(jr.key(0), (400, 3))
        >>> flow = fit_rbig(X, n_layers=3, n_components=2, em_steps=10, progress_bar=False)
        >>> jax.jit(flow.log_prob)(X).shape, flow.n_layers
        ((400,), 3)
    """
    actnorm, transformer, _, matrices, params, reductions, marginal_h, val_nll = _greedy(
        X,
        key,
        n_layers=n_layers,
        n_components=n_components,
        rotation=rotation,
        tol=tol,
        patience=patience,
        max_layers=max_layers,
        em_steps=em_steps,
        progress_bar=progress_bar,
        validation=validation,
        dequantize=dequantize,
    )
    layers = RBIGLayers(np.stack(matrices), jnp.stack(params), transformer)
    return RBIGFlow(Chain([actnorm, layers]), reductions, marginal_h, val_nll)


# --- the warm-started coupling flow -----------------------------------------------------
def _second_half_mask(d):
    """Mask of the second coupling, acting on the reversed vector: the complement of the
    first coupling's active set, so each coordinate is transformed exactly once."""
    return np.arange(d) >= d - d // 2


def _warm_coupling(key, d, transformer, params, mask, nn_width, nn_depth, dtype):
    layer = MixtureGaussianCDFCoupling(
        key,
        shape=(d,),
        n_components=transformer.n_components,
        mask=mask,
        nn_width=nn_width,
        nn_depth=nn_depth,
        zero_init=True,
        dtype=dtype,
    )
    bias = jnp.asarray(params[np.asarray(layer.active_idx)], dtype).reshape(-1)
    return eqx.tree_at(lambda c: c.conditioner.biases[-1], layer, bias)


def fit_rbig_coupling(
    X,
    key=None,
    *,
    n_layers: int = 4,
    n_components: int = 8,
    nn_width: int = 64,
    nn_depth: int = 2,
    rotation: str = "pca",
    em_steps: int = 100,
    progress_bar: bool = True,
    dequantize: bool = False,
) -> RBIGFlow:
    """A mixture-CDF coupling flow that starts as the greedy RBIG density of ``X``.

    Runs the greedy fit of :func:`fit_rbig` for ``n_layers`` layers, then replaces every
    marginal layer by ``coupling(A) -> Flip -> coupling(B) -> Flip`` where ``A`` is the
    second half of the coordinates and ``B`` the rest, so each coordinate is transformed
    exactly once. Every conditioner has a zero final kernel and a final bias equal to
    the fitted mixture parameters of its active coordinates (the zero-kernel contract):
    the coupling ignores its context and applies exactly the RBIG marginal, so at
    initialisation ``log_prob`` equals that of ``fit_rbig(X, jax.random.split(key)[0],
    ...)`` (the greedy fit's key; the second half seeds the conditioners) to rounding
    error at any depth. Training (e.g. with :func:`~numpyro_coupling.train.fit`) moves the
    kernels off zero and makes the couplings genuinely conditional.

    Layout (data to latent): ``ActNorm1D``, then per block ``[rotation] -> coupling ->
    Flip -> coupling -> Flip``; block 0 has no rotation (see :func:`fit_rbig`).

    Args:
        X: ``(n, d)`` continuous data, ``d >= 2`` (heavily tied columns are refused, as
            in :func:`fit_rbig`).
        key: PRNG key (rotations and the conditioners' hidden layers).
        n_layers: number of RBIG blocks.
        n_components: mixture components per coordinate.
        nn_width: conditioner hidden width.
        nn_depth: conditioner hidden layers.
        rotation: as in :func:`fit_rbig`; ``"householder"`` rotations stay trainable.
        em_steps: EM iterations per layer.
        progress_bar: show a tqdm bar over the greedy layers.
        dequantize: as in :func:`fit_rbig`.

    Returns:
        An :class:`RBIGFlow` whose bijection is the coupling stack, with the greedy
        fit's TC record.

    Example:
        >>> import jax.random as jr
        >>> from numpyro_coupling.inspection import final_kernel_magnitudes
        >>> X = jr.normal(jr.key(0), (400, 3))
        >>> warm = fit_rbig_coupling(X, jr.key(1), n_layers=2, n_components=2, nn_width=8,
        ...                          em_steps=10, progress_bar=False)
        >>> final_kernel_magnitudes(warm).tolist()  # every conditioner switched off
        [0.0, 0.0, 0.0, 0.0]
    """
    X = jnp.asarray(X)
    if X.ndim != 2 or X.shape[1] < 2:
        raise ValueError(f"fit_rbig_coupling needs (n, d) data with d >= 2, got {X.shape}")
    key = jr.key(0) if key is None else key
    fit_key, net_key = jr.split(key)
    actnorm, transformer, rotations, _, params, reductions, marginal_entropy, _ = _greedy(
        X,
        fit_key,
        n_layers=n_layers,
        n_components=n_components,
        rotation=rotation,
        tol=0.0,
        patience=1,
        max_layers=n_layers,
        em_steps=em_steps,
        progress_bar=progress_bar,
        dequantize=dequantize,
    )
    d = X.shape[1]
    dtype = actnorm.loc.dtype
    second_mask = _second_half_mask(d)
    bijections = [actnorm]
    for rot, p, k in zip(rotations, params, jr.split(net_key, n_layers)):
        k1, k2 = jr.split(k)
        if rot is not None:
            bijections.append(rot)
        flip = Flip((d,))
        first = _warm_coupling(k1, d, transformer, p, None, nn_width, nn_depth, dtype)
        second = _warm_coupling(k2, d, transformer, p[::-1], second_mask, nn_width, nn_depth, dtype)
        bijections += [first, flip, second, flip]
    return RBIGFlow(Chain(bijections), reductions, marginal_entropy)
