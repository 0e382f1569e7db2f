"""Refining a fitted guide on a chain's draws by score matching (a Fisher divergence).

A guide fitted by reverse KL is mode-seeking: where it under-covers, a NeuTra chain still
goes, because NUTS follows the posterior. This module refits the guide's parameters on such
draws ``x_i`` and their scores ``s_i = grad log p(x_i)``: in the guide's base space, where
NeuTra samples, the posterior pulled back through the guide's map ``x = T(z)`` has the score

    ``g(z) = J_T(z)^T s(T(z)) + grad_z log |det J_T(z)|``

and a perfect guide makes it ``-z`` (a standard normal's). The loss is the mean of
``|g(z_i) + z_i|^2`` over the draws, with ``z_i = T^{-1}(x_i)``. It needs no further
gradient of the model while it trains (the scores are fixed), it uses where the chain went
and how the posterior tilts there, and, unlike maximum likelihood on a few hundred
correlated draws, it does not shrink the guide onto them.

The same loss refits a guide on its own draws (:func:`refit_tails`): half of them from a
widened base, so it straightens the tails that the reverse-KL fit rarely sampled, where
NUTS on the warped space diverges.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from numpyro import handlers
from numpyro.distributions import biject_to

from .checks import as_key
from .loop import all_finite, chunk_runner, run_chunks, start_carry

__all__ = [
    "TAIL_WIDEN",
    "guide_scores",
    "refine_guide",
    "refit_tails",
    "score_matching_loss",
    "tail_draws",
]

#: :func:`tail_draws` pushes half of its base draws from ``N(0, TAIL_WIDEN^2 I)``.
TAIL_WIDEN = 1.5


def guide_scores(guide, draws):
    """The model's log-density gradients at flat unconstrained latents.

    Args:
        guide: a set-up ``AutoContinuous`` guide (called once, e.g. by SVI).
        draws: ``(n, latent_dim)`` flat unconstrained latents.

    Returns:
        ``(n, latent_dim)`` scores ``grad log p(x)`` (one model gradient per draw).

    Example:
        >>> import numpyro, numpyro.distributions as dist, jax.numpy as jnp
        >>> from numpyro_coupling import AutoCouplingFlow
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
        >>> guide = AutoCouplingFlow(model, n_layers=2, nn_width=4, precondition=None)
        >>> _ = numpyro.handlers.seed(guide, 0)()  # sets the guide up
        >>> guide_scores(guide, jnp.array([[2.0, -4.0]]))
        Array([[-0.5,  1. ]], dtype=float32)
    """
    if getattr(guide, "prototype_trace", None) is None:
        raise RuntimeError("call the guide (e.g. fit it by SVI) before guide_scores")

    def log_p(x):
        return -guide._potential_fn(guide._unpack_latent(x))

    return jax.vmap(jax.grad(log_p))(jnp.asarray(draws))


def score_matching_loss(transform, draws, scores):
    """The mean Fisher divergence of a base-to-latent bijection at draws with known scores.

    Args:
        transform: the guide's map ``x = T(z)`` (a :class:`~numpyro_coupling.Bijection`).
        draws: ``(n, d)`` latents ``x_i``.
        scores: ``(n, d)`` the target's scores at them, ``grad log p(x_i)``.

    Returns:
        Scalar: the mean over draws of ``|J_T(z)^T s + grad_z log|det J_T(z)| + z|^2``
        at ``z = T^{-1}(x)``, zero when ``T`` maps the standard normal onto the target.

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro_coupling import Invert
        >>> from numpyro_coupling.linear import DenseAffine
        >>> x = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
        >>> t = Invert(DenseAffine(jnp.zeros(2), 2.0 * jnp.eye(2)))  # x = 2 z: N(0, 4)
        >>> float(score_matching_loss(t, x, -x / 4.0))
        0.0
    """

    def one(x, s):
        z = transform.inverse_and_log_det(x)[0]
        _, pull_back = jax.vjp(lambda u: transform.transform_and_log_det(u)[0], z)
        grad_log_det = jax.grad(lambda u: transform.transform_and_log_det(u)[1])(z)
        return jnp.sum((pull_back(s)[0] + grad_log_det + z) ** 2)

    return jnp.mean(jax.vmap(one)(draws, scores))


def _param_constraints(guide, params) -> dict:
    # The parameters' constraints, as the guide declares them when it is traced.
    with handlers.trace() as tr, handlers.substitute(data=params), handlers.seed(rng_seed=0):
        guide._get_posterior()
    return {k: s["kwargs"].get("constraint") for k, s in tr.items() if s["type"] == "param"}


def refine_guide(
    guide,
    params,
    draws,
    scores=None,
    *,
    steps: int = 500,
    learning_rate: float = 1e-3,
    batch_size: int = 256,
    key=None,
):
    """Refit a guide's parameters to draws and scores by score matching.

    Adam on :func:`score_matching_loss` of ``guide.get_transform`` in the parameters'
    unconstrained space, on minibatches of the draws, starting from ``params``; the model
    is not evaluated again (its scores are given or computed once by
    :func:`guide_scores`). A step whose loss or gradient is not finite is skipped.

    Args:
        guide: a fitted ``AutoContinuous`` guide with ``get_transform(params)`` (e.g.
            :class:`~numpyro_coupling.AutoCouplingFlow`).
        params: its (constrained) parameters, as SVI returns them.
        draws: ``(n, latent_dim)`` flat unconstrained latents, e.g. a NeuTra warm-up's.
        scores: ``(n, latent_dim)`` ``grad log p`` at the draws (``None``: computed, one
            model gradient per draw).
        steps: Adam steps.
        learning_rate: Adam's step size.
        batch_size: draws per step (all of them when fewer).
        key: PRNG key for the minibatches (default ``jax.random.key(0)``).

    Returns:
        ``(params, losses)``: the refined parameters (same keys as ``params``) and the
        ``(steps,)`` minibatch losses.

    Example:
        >>> import numpyro, numpyro.distributions as dist, jax.random as jr, optax
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> from numpyro_coupling import AutoCouplingFlow
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(3.0, 2.0).expand([2]).to_event(1))
        >>> guide = AutoCouplingFlow(model, n_layers=2, nn_width=4, precondition=None)
        >>> svi = SVI(model, guide, optax.adam(1e-3), Trace_ELBO())
        >>> params = svi.get_params(svi.init(jr.key(0)))  # the guide at its start
        >>> draws = 3.0 + 2.0 * jr.normal(jr.key(1), (200, 2))
        >>> new, losses = refine_guide(guide, params, draws, steps=300, learning_rate=1e-2)
        >>> bool(losses[-20:].mean() < losses[:20].mean())
        True
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    draws = jnp.asarray(draws)
    if draws.ndim != 2 or draws.shape[0] < 1:
        raise ValueError(f"draws must have shape (n, latent_dim) with n >= 1, got {draws.shape}")
    scores = guide_scores(guide, draws) if scores is None else jnp.asarray(scores)
    if scores.shape != draws.shape:
        raise ValueError(f"scores must have the draws' shape {draws.shape}, got {scores.shape}")
    keep = jnp.all(jnp.isfinite(draws), -1) & jnp.all(jnp.isfinite(scores), -1)
    draws, scores = draws[np.asarray(keep)], scores[np.asarray(keep)]
    constraint = _param_constraints(guide, params)
    to_free = {k: biject_to(c).inv for k, c in constraint.items() if c is not None}
    to_params = {k: biject_to(c) for k, c in constraint.items() if c is not None}
    free = {k: to_free[k](v) if k in to_free else v for k, v in params.items()}
    optimiser = optax.adam(learning_rate)
    batch = min(batch_size, draws.shape[0])

    def loss(free, x, s):
        constrained = {k: to_params[k](v) if k in to_params else v for k, v in free.items()}
        return score_matching_loss(guide.get_transform(constrained), x, s)

    def step(state, t, x, s, key):
        free, opt_state = state
        idx = jr.choice(jr.fold_in(key, t), x.shape[0], (batch,), replace=False)
        value, grad = jax.value_and_grad(loss)(free, x[idx], s[idx])
        updates, new_opt_state = optimiser.update(grad, opt_state, free)
        finite = all_finite((value, grad))
        return (optax.apply_updates(free, updates), new_opt_state), value, finite

    state = (free, optimiser.init(free))
    carry, losses, _ = run_chunks(
        chunk_runner(step, lambda state: state[0]),
        start_carry(state, lambda state: state[0]),
        (draws, scores, as_key(key)),
        steps=steps,
        chunk=steps,
        decay=0.0,
        halt=False,
    )
    free = carry.state[0]
    refined = {k: to_params[k](v) if k in to_params else v for k, v in free.items()}
    return refined, losses


def tail_draws(transform, key, n: int, widen: float = TAIL_WIDEN):
    """Latents through a guide's map from a base widened for half of them.

    A reverse-KL fit sees its base's tails rarely (``|z| > 3.5`` in one coordinate: 5 of
    10,000 draws), so the flow is barely trained where a NUTS trajectory on the warped
    space sometimes goes. Half of these draws come from ``N(0, I)`` and half from
    ``N(0, widen^2 I)``, so the tails are covered as often as the bulk.

    Args:
        transform: the guide's map ``x = T(z)`` (a :class:`~numpyro_coupling.Bijection`).
        key: PRNG key.
        n: number of draws (``>= 2``).
        widen: the scale of the second half's base (``>= 1``).

    Returns:
        ``(n, d)`` latents ``x = T(z)``.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> from numpyro_coupling import Invert
        >>> from numpyro_coupling.linear import DenseAffine
        >>> t = Invert(DenseAffine(jnp.zeros(2), jnp.eye(2)))
        >>> tail_draws(t, jr.key(0), 4).shape
        (4, 2)
    """
    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not widen >= 1:
        raise ValueError(f"widen must be >= 1, got {widen!r}")
    (d,) = transform.shape
    z = jr.normal(key, (n, d))
    z = z.at[n // 2 :].multiply(widen)
    return jax.vmap(lambda u: transform.transform_and_log_det(u)[0])(z)


def refit_tails(guide, params, key=None, *, n: int = 2000, widen: float = TAIL_WIDEN, **options):
    """Refit a guide by score matching on :func:`tail_draws` of itself.

    The draws are the guide's own, half from a widened base; their scores cost one model
    gradient each. Score matching (:func:`refine_guide`) then straightens the warped
    posterior where the reverse-KL fit left it curved: in the tails, where NUTS on the
    warped space diverges. :func:`~numpyro_coupling.neutra_nuts` does so when its chains
    diverged, before it runs NUTS a second time.

    Args:
        guide: a fitted guide whose ``get_transform(params)`` is a
            :class:`~numpyro_coupling.Bijection` (an
            :class:`~numpyro_coupling.AutoCouplingFlow`).
        params: its parameters.
        key: PRNG key (default ``jax.random.key(0)``).
        n: draws (model gradients spent).
        widen: the widened base's scale.
        **options: :func:`refine_guide` options (``steps``, ``learning_rate``,
            ``batch_size``).

    Returns:
        ``(params, losses, n_grads)``: the refitted parameters, the score-matching loss
        curve and the model gradients spent.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from numpyro_coupling import fit_guide
        >>> def model():  # a scale set by the other coordinate: curved
        ...     v = numpyro.sample("v", dist.Normal(0.0, 1.5))
        ...     numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)))
        >>> options = {"n_layers": 2, "nn_width": 8, "precondition": None}
        >>> guide, params, _ = fit_guide(model, guide=options, steps=100, progress_bar=False)
        >>> new, losses, n_grads = refit_tails(guide, params, n=200, steps=300)
        >>> n_grads, bool(losses[-20:].mean() < losses[:20].mean())
        (200, True)
    """
    draw_key, fit_key = jr.split(as_key(key))
    draws = tail_draws(guide.get_transform(params), draw_key, n, widen)
    scores = guide_scores(guide, draws)
    new, losses = refine_guide(guide, params, draws, scores, key=fit_key, **options)
    return new, losses, int(draws.shape[0])
