"""Rotation-based iterative Gaussianisation (RBIG): the greedy fit and its flow.

Greedy RBIG (Laparra, Camps-Valls & Malo, 2011) Gaussianises data one layer at a time. The
data are first standardised; layer 0 maps every coordinate through its own fitted
Gaussianising marginal ``z = Phi^-1(F(x))``, with ``F`` the CDF of a 1-D Gaussian mixture
fitted by EM (:mod:`numpyro_coupling.mixture_em`); every later layer rotates the data and
Gaussianises the marginals again. Marginal maps leave the total correlation (TC, the
multi-information) unchanged and rotations leave the joint entropy unchanged, so each
layer's TC reduction is the drop in the sum of marginal entropies caused by its rotation.
Fitting stops once that reduction stays under ``tol`` for ``patience`` layers.

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
does not grow with depth). Heavily tied data are refused or dequantised
(:mod:`numpyro_coupling.ties`); :func:`~numpyro_coupling.fit_rbig_coupling`
(:mod:`numpyro_coupling.rbig_coupling`) turns the same greedy fit into a coupling flow.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm.auto import tqdm

from .bijection import Bijection, Chain
from .checks import as_key
from .elementwise import Elementwise
from .flows import CouplingFlow
from .linear import ActNorm1D, FrozenMatrix, HouseholderRotation, Rotation
from .mixture_em import fit_gaussian_mixture, mixture_cross_entropy
from .ties import add_grid_noise, check_continuous, grid_widths
from .transformers import MixtureGaussianCDF, Transformer

__all__ = [
    "ROTATIONS",
    "GreedyFit",
    "RBIGFlow",
    "RBIGLayers",
    "fit_greedy_layers",
    "fit_rbig",
]

#: Rotation choices of the greedy fit.
ROTATIONS = ("pca", "random", "householder")

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


# --- rotations and one greedy layer ----------------------------------------------------
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
    h = mixture_cross_entropy(both, mixture)
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


class GreedyFit(NamedTuple):
    """The pieces of a greedy RBIG fit, layer by layer (see :func:`fit_greedy_layers`)."""

    #: the standardisation fitted to the data (the flow's first bijection).
    actnorm: ActNorm1D
    #: the elementwise map of every marginal layer.
    transformer: MixtureGaussianCDF
    #: per layer: the rotation bijection, ``None`` for layer 0.
    rotations: list
    #: per layer: the ``(d, d)`` NumPy rotation matrix (the identity for layer 0).
    matrices: list
    #: per layer: ``(d, transformer.n_params)`` fitted marginal parameters.
    params: list
    #: per layer: the estimated TC reduction in nats (0 for layer 0).
    reductions: list
    #: estimated sum of the marginal entropies of the data (nats).
    marginal_entropy: float
    #: held-out NLL after each layer (empty without validation data).
    validation_nll: list


def fit_greedy_layers(
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
) -> GreedyFit:
    """Run the greedy RBIG layers on ``X`` and return their pieces, not yet a flow.

    The one greedy loop behind :func:`fit_rbig` (which stacks the pieces into
    :class:`RBIGLayers`) and :func:`~numpyro_coupling.fit_rbig_coupling` (which turns them
    into couplings). The arguments are :func:`fit_rbig`'s, all given by keyword.

    Returns:
        A :class:`GreedyFit`.

    Example:
        >>> import jax.random as jr
        >>> fit = fit_greedy_layers(
        ...     jr.normal(jr.key(0), (200, 2)), jr.key(1), n_layers=2, n_components=2,
        ...     rotation="pca", tol=0.0, patience=1, max_layers=2, em_steps=5,
        ...     progress_bar=False)
        >>> len(fit.params), fit.params[0].shape, fit.rotations[0] is None
        (2, (2, 6), True)
    """
    X = _check_data(X, n_components, rotation, dequantize)
    if n_layers is not None and n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if patience < 1 or max_layers < 1:
        raise ValueError(f"patience and max_layers must be >= 1, got {patience}, {max_layers}")
    key = as_key(key)
    widths = grid_widths(np.asarray(X, dtype=np.float64)) if dequantize else None
    if widths is not None:
        # fold_in: the noise gets its own key, and the rotations the ones they had.
        X = add_grid_noise(X, widths, jr.fold_in(key, _DEQUANTIZE_TAG))
    split_key, key = jr.split(key)
    X, held_out = _split_validation(X, validation, split_key)
    if widths is not None and held_out is not None and np.ndim(validation) != 0:
        # Given held-out data lie on the same grid: the same noise width, fresh noise.
        held_out = add_grid_noise(held_out, widths, jr.fold_in(key, _DEQUANTIZE_TAG))
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
    return GreedyFit(
        actnorm, transformer, rotations, matrices, params, reductions, marginal_entropy, val_nll
    )


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
    holding more than :data:`~numpyro_coupling.ties.MAX_TIE_FRACTION` of a column), have
    no density: the fit would chase the ties for ``max_layers`` layers and report a total
    correlation of hundreds of nats. They are refused unless ``dequantize=True``, which
    first spreads each such column by uniform noise of its grid width
    (:func:`~numpyro_coupling.ties.dequantize_ties`, seeded by ``key``); the flow is then
    the density of the dequantised data.

    Args:
        X: ``(n, d)`` continuous data.
        key: PRNG key for random rotations (default ``jax.random.key(0)``).
        n_layers: fit exactly this many layers (layer 0 included), no stopping rule.
        n_components: mixture components per coordinate and layer.
        rotation: ``"pca"`` (principal axes of the current data), ``"random"`` (a
            Haar-random orthogonal matrix) or ``"householder"`` (a product of ``d``
            random Householder reflections; trainable in
            :func:`~numpyro_coupling.fit_rbig_coupling`).
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
    actnorm, transformer, _, matrices, params, reductions, marginal_h, val_nll = fit_greedy_layers(
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
