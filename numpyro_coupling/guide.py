"""The coupling-flow autoguide, :class:`AutoCouplingFlow`.

It flattens a model's latent sites into one unconstrained vector ``x`` and models it as
``x = loc + scale * T^-1(z)``, ``z ~ N(0, I)``, where ``T`` is a stack of coupling layers
in the normalising direction (data to latent). Sampling (what ``SVI`` and
``NeuTraReparam`` need) runs ``T^-1`` and its log-det in one pass per coupling; density
evaluation (``get_posterior(...).log_prob``) runs ``T`` in one pass.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
import weakref

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions import TransformedDistribution, constraints
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.elbo import ELBO, RenyiELBO
from numpyro.infer.initialization import init_to_median

from .bijection import Bijection, Chain, Invert
from .checks import as_key
from .flows import PERMUTATIONS, coupling_layers
from .linear import ActNorm1D, DenseAffine
from .preconditioning import gaussian_fit
from .rbig_coupling import fit_rbig_coupling
from .sites import discrete_latent_sites, prototype_trace, unconstrained_draws
from .transformers import make_transformer

__all__ = [
    "DENSE_CONDITION",
    "MAX_AUTO_DENSE_DIM",
    "PRECONDITIONS",
    "STL_BIASED_OBJECTIVES",
    "WARM_START_DRAWS",
    "AutoCouplingFlow",
]

#: The guide's conditioner defaults (see the autoguide docs for what they were chosen on).
_INPUT_BOUND = 5.0

#: ``precondition=`` choices of :class:`AutoCouplingFlow`.
PRECONDITIONS = ("auto", "dense", None)

#: ``precondition="auto"`` fits the Gaussian up to this many latent dimensions (its
#: variational fit costs ``4 d`` gradients an iteration and ``d^2`` parameters).
MAX_AUTO_DENSE_DIM = 200

#: Base draws on which ``warm_start``'s initial guide is scored against the cold start.
WARM_START_DRAWS = 256

#: ``precondition="auto"`` starts from the fitted Gaussian (a dense layer) when the
#: condition number of its correlation matrix exceeds this (two coordinates correlated at
#: 0.98 give 99), and from ``N(init_loc, init_scale^2)`` otherwise.
DENSE_CONDITION = 100.0


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


#: Objectives whose gradient "sticking the landing" biases: it drops the score term
#: ``grad_phi log q``, whose expectation is zero only when each draw's weight in the loss is
#: constant (KL objectives); Renyi/IWAE weights depend on the draw.
STL_BIASED_OBJECTIVES = (RenyiELBO,)


def _traced_objective():
    """The NumPyro ELBO whose trace calls the guide now (from the call stack), or ``None``.

    The guide is called by the objective (``ELBO.loss``) or by ``SVI.init``, which holds
    it; neither tells the guide, so their frames are looked for. Only runs while tracing.
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ELBO):
            return owner
        if isinstance(owner, SVI):
            return owner.loss
        frame = frame.f_back
    return None


def _guide_chain(layers, loc, scale, gaussian) -> Chain:
    """The guide's normaliser: ``[DenseAffine(gaussian)] -> ActNorm(loc, scale) -> layers``."""
    norm = ActNorm1D((loc.shape[-1],), dtype=jnp.result_type(loc))
    norm.loc, norm.log_scale = loc, jnp.log(scale)
    chain = [norm, layers]
    if gaussian is not None:
        # A fixed layer (no numpyro.param): the Gaussian the fit started from.
        chain.insert(0, DenseAffine(gaussian.loc, gaussian.chol))
    return Chain(chain)


def _condition_number(chol) -> float:
    """The condition number of ``chol @ chol.T`` (its singular values' squared ratio)."""
    singular = np.linalg.svd(np.asarray(chol, dtype=float), compute_uv=False)
    return float((singular[0] / singular[-1]) ** 2)


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


class AutoCouplingFlow(AutoContinuous):
    """A coupling-flow autoguide: ``x = loc + scale * T^-1(z)``, ``z ~ N(0, I)``.

    Used exactly like ``AutoIAFNormal``: in ``SVI`` with ``Trace_ELBO``, then
    ``sample_posterior``, ``median``, ``quantiles``, ``get_transform`` and NumPyro's
    ``NeuTraReparam(guide, params)``. ``x`` is the model's latent sites flattened into one
    unconstrained vector ``(latent_dim,)``; ``T`` is a stack of couplings from
    :func:`~numpyro_coupling.flows.coupling_layers` whose conditioners start at zero, so
    with the ``loc_scale``, ``loc_scale_spline``, ``affine``, ``spline`` and ``additive``
    transformers the guide starts as ``N(loc, scale^2)``. The defaults and what they were
    measured against are in the docs (Concepts: the autoguide).

    Parameters (``numpyro.param`` sites): ``{prefix}_loc`` and ``{prefix}_scale``
    (``(latent_dim,)``, the scale positive) and ``{prefix}_flow$params`` (the couplings'
    arrays: the leaves of up to 1024 entries packed into one vector, larger kernels
    beside it; :meth:`get_normaliser` gives the layers back).

    Args:
        model: a NumPyro model with continuous latent sites.
        transformer: the couplings' elementwise map, a name of
            :data:`~numpyro_coupling.transformers.TRANSFORMERS`: ``"loc_scale"``
            (default; ``(x - shift) * exp(-log_scale)``, exact for hierarchical
            location/scale dependencies), ``"loc_scale_spline"`` (that map followed by a
            spline, which also reshapes, e.g. splits mass between modes), ``"affine"``,
            ``"spline"``, ``"additive"`` or ``"mixture"`` (sampling needs its root-find
            inverse: slower, and slow to compile). With ``warm_start``: ``"mixture"``.
        n_layers: coupling layers (for ``latent_dim == 1``: elementwise layers).
        nn_width: conditioner hidden width.
        nn_depth: conditioner hidden layers.
        permutation: ``"bits"`` (:func:`~numpyro_coupling.masks.bit_masks`: every
            coordinate is conditioned on every other one up to 70 latent dimensions with
            eight layers, 252 with ten, 924 with twelve) or a mixing layer between
            half-mask couplings (:data:`~numpyro_coupling.flows.PERMUTATIONS`).
        activation: conditioner activation.
        input_bound: conditioners read ``input_bound * tanh(u / input_bound)``
            (:class:`~numpyro_coupling.conditioners.GuideConditioner`); ``None``: ``u``.
        linear_rank: rank of the linear path from a conditioner's inputs to the
            log-scales (``0``: none).
        init_loc_fn: per-site initialisation of ``loc`` (a NumPyro init strategy).
        precondition: a Gaussian fitted to the posterior when the guide is first called
            (:func:`~numpyro_coupling.preconditioning.gaussian_fit`: Laplace, then a
            full-rank variational Gaussian; its gradients are counted in
            ``precondition_grads``). ``"dense"``: a fixed affine layer ``x = m + L u``
            before the couplings carries its location, scales and correlations, so the
            guide starts as that Gaussian and a posterior that is Gaussian up to an affine
            map is solved before SVI starts. ``"auto"`` (default): the same where the
            fitted correlations are strong (a correlation matrix of condition number above
            :data:`DENSE_CONDITION`) and up to :data:`MAX_AUTO_DENSE_DIM` latent
            dimensions; elsewhere the guide starts as with ``None``:
            ``N(init_loc, init_scale^2)``, the couplings working in the model's own
            coordinates, where hierarchical dependencies stay simple.
        init_scale: without a Gaussian fit, the initial ``scale``: a positive number for
            every coordinate, or ``"auto"``: the inverse square root of the diagonal of the negative
            log-density's Hessian at the initial location, clipped to ``[1e-4, 5]``.
        prefix: name prefix of the guide's sites.
        warm_start: optional dict ``site -> draws`` (leading axis: draws, constrained
            space, e.g. from a pilot NUTS run): the flow starts as
            :func:`~numpyro_coupling.rbig_coupling.fit_rbig_coupling` of the draws in the
            unconstrained space (kept as ``warm_start_flow``; ``loc = 0``, ``scale = 1``;
            repeated draws count once), unless the start without draws has the lower
            negative ELBO on :data:`WARM_START_DRAWS` draws: then the guide starts there,
            with a ``UserWarning`` (both scores kept as ``warm_start_scores``).
        stl: the "sticking the landing" gradient for the guide's own SVI draws (lower
            gradient noise near the optimum; :meth:`get_posterior` stays differentiable).
            It is unbiased for ``Trace_ELBO``-type objectives and biased for ``RenyiELBO``
            (:data:`STL_BIASED_OBJECTIVES`). ``"auto"`` (default): on, except under an
            objective it biases; ``True``: on (with a ``UserWarning`` under such an
            objective); ``False``: off.
        **transformer_kwargs: the transformer's own options (``n_bins``, ``interval``,
            ``log_scale_bound``, ``n_components``).

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
        input_bound: float | None = _INPUT_BOUND,
        linear_rank: int = 2,
        init_loc_fn=init_to_median,
        init_scale: float | str = 1.0,
        precondition: str | None = "auto",
        prefix: str = "auto",
        warm_start: dict | None = None,
        stl: bool | str = "auto",
        **transformer_kwargs,
    ):
        if transformer is None:
            transformer = "mixture" if warm_start is not None else "loc_scale"
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
        if precondition not in PRECONDITIONS:
            raise ValueError(f"precondition must be one of {PRECONDITIONS}, got {precondition!r}")
        self.precondition = precondition
        self.transformer_kwargs = dict(transformer_kwargs)
        self.warm_start = warm_start
        if not (stl == "auto" or isinstance(stl, (bool, np.bool_))):
            raise ValueError(f"stl must be 'auto', True or False, got {stl!r}")
        self.stl = stl if stl == "auto" else bool(stl)
        # Validate the configuration now rather than at the first SVI step.
        make_transformer(transformer, **transformer_kwargs)
        if permutation not in PERMUTATIONS:
            raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {permutation!r}")
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    # --- setup ------------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs):
        discrete = discrete_latent_sites(prototype_trace(self.model, args, kwargs))
        if discrete:
            raise ValueError(
                f"{type(self).__name__} needs continuous latent sites; the model has discrete "
                f"latent sites {discrete}. Marginalise them out: mark them "
                "infer={'enumerate': 'parallel'}, hide them from this guide with "
                f"{type(self).__name__}(numpyro.handlers.block(model, hide={discrete})) and "
                "fit with TraceEnum_ELBO (needs funsor)."
            )
        super()._setup_prototype(*args, **kwargs)
        self._model_args = (args, kwargs)
        dtype = jnp.result_type(float, self._init_latent)
        d = self.latent_dim
        self._warn_about_coverage(d)
        key = numpyro.prng_key()
        key = jr.key(0) if key is None else key
        layers, loc, scale = self._cold_start(key, dtype)
        self.gaussian, self.precondition_grads = None, 0
        if self._wants_gaussian():
            with handlers.block():
                fit = self._gaussian_fit(jr.fold_in(key, 2), dtype)
            self.precondition_grads = int(fit.n_grad)
            if bool(fit.ok):
                sd = jnp.sqrt(jnp.sum(fit.chol**2, axis=-1))
                if self.precondition == "dense" or (
                    self.precondition == "auto"
                    and _condition_number(fit.chol / sd[:, None]) > DENSE_CONDITION
                ):
                    # The guide starts as the fitted Gaussian: its loc/scale act after it.
                    self.gaussian = fit
                    loc, scale = jnp.zeros(d, dtype), jnp.ones(d, dtype)
        if self.warm_start is not None:
            layers, loc, scale = self._warm_or_cold(key, dtype, (layers, loc, scale))
        self._init_loc, self._init_scale_vec = loc, scale
        flow_params, self._flow_static = eqx.partition(layers, eqx.is_inexact_array)
        # Arrays, not the module: numpyro.param would call a module as an initialiser.
        self._flow_init, self._unravel_flow = _pack_leaves(flow_params)

    def _cold_start(self, key, dtype):
        """The couplings, ``loc`` and ``scale`` of a start without draws (before any fit)."""
        layers = coupling_layers(
            key,
            self.latent_dim,
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
            scale = jnp.full(self.latent_dim, self.init_scale, dtype)
        return layers, loc, scale

    def _warm_or_cold(self, key, dtype, cold):
        """The RBIG fit of ``warm_start`` or the ``cold`` start, whichever has the lower KL.

        A density fitted to draws covers their mass but can spread it where the posterior
        has none (RBIG's few greedy layers leave much of a funnel's dependence between
        scale and width out, so the guide puts wide coordinates in the narrow neck); the
        guide's loss is ``KL(q || p)``, which such mass makes large. Both starts are scored
        by their negative ELBO on the same :data:`WARM_START_DRAWS` base draws.
        """
        d = self.latent_dim
        with handlers.block():
            flat = self.unconstrained_latent(self.warm_start).reshape(-1, d).astype(dtype)
            warm = (self._rbig_layers(flat, key), jnp.zeros(d, dtype), jnp.ones(d, dtype))
            z = jr.normal(jr.fold_in(key, 3), (WARM_START_DRAWS, d), dtype)
            cold_score = self._start_score(_guide_chain(*cold, self.gaussian), z)
            warm_score = self._start_score(_guide_chain(*warm, None), z)
        self.warm_start_scores = {"warm": warm_score, "cold": cold_score}
        if warm_score <= cold_score:
            self.gaussian = None
            return warm
        warnings.warn(
            f"warm_start's initial guide scores a negative ELBO of {warm_score:.4g} against "
            f"{cold_score:.4g} for the cold start (on {WARM_START_DRAWS} draws): starting "
            "cold. The draws' density fit spreads the guide where the posterior has little "
            "mass; more draws, better-mixed draws (neutra_mcmc) or a larger n_layers may "
            "help, and warm_start=None skips the fit.",
            UserWarning,
            stacklevel=5,
        )
        return cold

    def _start_score(self, normaliser, z) -> float:
        """Monte-Carlo negative ELBO of the guide ``Invert(normaliser)`` of ``N(0, I)`` (inf
        where a draw is not finite)."""

        @eqx.filter_jit
        def negative_elbo(normaliser, z):
            x, log_det = Invert(normaliser).transform_and_log_det(z)
            log_q = jnp.sum(jax.scipy.stats.norm.logpdf(z), -1) - log_det
            return jnp.mean(log_q + jax.vmap(self._flat_potential)(x))

        score = float(negative_elbo(normaliser, z))
        return score if np.isfinite(score) else float("inf")

    def _flat_potential(self, x):
        """The model's potential (negative log density) at a flat unconstrained latent ``x``."""
        return self._potential_fn(self._unpack_latent(x))

    def _curvature_scale(self, key, fallback=1.0, bounds=(1e-4, 5.0), max_exact=1024):
        x0 = self._init_latent
        grad = jax.grad(self._flat_potential)

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
        if self.latent_dim < 2:
            raise ValueError("warm_start needs at least 2 latent dimensions (a coupling split)")
        self.warm_start_key = key
        # A Markov chain repeats its draw at every rejected proposal (a sticky funnel
        # neck repeats it dozens of times): repeats are not ties of the density, and
        # RBIG refuses tied columns, so each distinct draw counts once.
        draws = np.unique(np.asarray(draws), axis=0)
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
        layers = eqx.combine(self._unravel_flow(flow_params), self._flow_static)
        return _guide_chain(layers, loc, scale, self.gaussian)

    def _warn_about_coverage(self, dim: int):
        # Past C(2p, p) coordinates the bits masks repeat codes: some pairs never meet.
        covered = math.comb(2 * (self.n_layers // 2), self.n_layers // 2)
        bits = self.permutation == "bits" and self.warm_start is None and self.n_layers >= 2
        if bits and dim > covered:
            warnings.warn(
                f"{self.n_layers} coupling layers condition every coordinate on every other "
                f"one up to {covered} latent dimensions, and this model has {dim}: some "
                "pairs of coordinates never meet in a coupling. Raise n_layers (10 covers "
                "252, 12 covers 924, 14 covers 3432).",
                UserWarning,
                stacklevel=4,
            )

    def _wants_gaussian(self) -> bool:
        # With ``warm_start`` the fit is the cold start the warm one is scored against.
        if self.precondition is None:
            return False
        return self.precondition != "auto" or self.latent_dim <= MAX_AUTO_DENSE_DIM

    def _gaussian_fit(self, key, dtype):
        return jax.jit(lambda x, k: gaussian_fit(self._flat_potential, x, k))(
            self._init_latent.astype(dtype), key
        )

    def _get_posterior(self, stl: bool | None = None):
        # SVI samples through this with ``self.stl``; public accessors pass ``stl=False`` so
        # that the density they hand out is differentiable in the parameters.
        loc = numpyro.param(f"{self.prefix}_loc", self._init_loc)
        scale = numpyro.param(
            f"{self.prefix}_scale", self._init_scale_vec, constraint=constraints.positive
        )
        flow_params = numpyro.param(f"{self.prefix}_flow$params", self._flow_init)
        stl = self._stl_for_objective() if stl is None else stl
        return _GuidePosterior(
            self.get_base_dist(), self._normaliser(loc, scale, flow_params), stl=stl
        )

    def _stl_for_objective(self) -> bool:
        """Whether the guide's own draws take the STL gradient under the running objective."""
        if self.stl is False:
            return False
        objective = _traced_objective()
        if not isinstance(objective, STL_BIASED_OBJECTIVES):
            return True
        if self.stl is True:
            warnings.warn(
                f"stl=True biases the gradient of {type(objective).__name__}: the dropped "
                "score term averages to zero only for KL objectives (Trace_ELBO). Pass "
                "stl='auto' (the default: off under this objective) or stl=False.",
                UserWarning,
                stacklevel=2,
            )
            return True
        return False

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

    def quantiles(self, params, quantiles, *, num_samples: int = 4096, key=None):
        """Monte-Carlo marginal quantiles of every site in constrained space.

        Args:
            params: the guide's parameters.
            quantiles: ``(q,)`` probabilities in ``[0, 1]``.
            num_samples: draws used for the estimate.
            key: PRNG key (default ``jax.random.key(0)``, so calls are repeatable).

        Returns:
            dict ``site -> (q, *site_shape)``.
        """
        q = jnp.asarray(quantiles)
        # Checked where the values are known: under ``jit`` they are traced.
        if not isinstance(q, jax.core.Tracer) and np.any((np.asarray(q) < 0) | (np.asarray(q) > 1)):
            raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
        draws = self.sample_posterior(as_key(key), params, sample_shape=(num_samples,))
        return {k: jnp.quantile(v, q, axis=0) for k, v in draws.items()}
