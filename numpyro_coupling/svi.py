"""Fitting a guide by SVI: the optimiser, an ELBO summed in a fixed order, tempering."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import optax
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.util import compute_log_probs
from numpyro.util import check_model_guide_match

from .checks import as_key
from .guide import AutoCouplingFlow
from .loop import average_decay, chunk_length, chunk_runner, run_chunks, start_carry, training_bar
from .sites import observed_sites, prototype_trace

__all__ = [
    "GuideFitState",
    "SiteOrderedTraceELBO",
    "fit_guide",
    "guide_optimizer",
    "plateau_reached",
    "temper_likelihood",
]


#: The step size at the end of a cosine schedule, as a fraction of its peak.
FINAL_FRACTION = 0.1

#: Fixed guide draws the plateau rule scores the fit on at each window's end.
PLATEAU_DRAWS = 128

#: Nats of negative ELBO per window below which the plateau rule stops a fit.
PLATEAU_TOL = 0.02

#: The shortest window the plateau rule judges (shorter fits run all their steps): its
#: scoring program and the cool-down's take a few seconds to compile (about 5 s on a
#: 10-D funnel guide on 2 cores), which a fit of a few thousand steps does not win back.
MIN_PLATEAU_WINDOW = 500


def guide_optimizer(
    learning_rate: float = 3e-3,
    steps: int = 10_000,
    *,
    schedule: str = "cosine",
    final_fraction: float = FINAL_FRACTION,
    clip_norm: float | None = 10.0,
):
    """Adam for fitting a guide by SVI, as a NumPyro optimiser.

    ``schedule="cosine"`` decays the step from ``learning_rate`` to
    ``final_fraction * learning_rate`` over ``steps`` (a cosine), and ``clip_norm`` caps
    the gradient's global norm; a step whose gradient is not finite is skipped. With a
    constant step Adam keeps every parameter jittering by about the step size, and a
    flow guide pays for the jitter where the posterior is narrow (a funnel's neck, where
    the guide's scales must be right to a factor ``exp(-6)``); a rare draw deep in the
    neck can also throw a constant-step run off course.

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
        >>> from numpyro_coupling import AutoCouplingFlow
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
    """``Trace_ELBO`` whose per-site terms are formed and summed in the order of the sites' names.

    NumPyro's ``Trace_ELBO`` forms ``log p - log q`` site by site over a Python ``set`` of
    site names, whose order changes with the interpreter's string hashing
    (``PYTHONHASHSEED``): summed in that order, the same fit from the same key differs in
    its last bits from process to process, and the difference grows along an SVI run; and
    even the terms' order changes the compiled program, so that a program kept by
    :func:`~numpyro_coupling.enable_compilation_cache` would not be found again by the next
    process. In name order a fit repeats exactly and compiles to the same program. The
    value and its expectation are those of ``Trace_ELBO``.

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
        def site_terms(key):
            # The keys, traces and terms of NumPyro's Trace_ELBO, with the terms in name order.
            model_key, guide_key = jr.split(key)
            guide_terms, guide_trace = compute_log_probs(
                handlers.seed(guide, guide_key), args, kwargs, param_map
            )
            replayed = handlers.replay(handlers.seed(model, model_key), guide_trace)
            model_terms, model_trace = compute_log_probs(replayed, args, kwargs, param_map)
            check_model_guide_match(model_trace, guide_trace)
            if any(s["type"] == "mutable" for s in (*guide_trace.values(), *model_trace.values())):
                raise NotImplementedError(
                    "SiteOrderedTraceELBO does not keep mutable state "
                    "(numpyro.primitives.mutable); use Trace_ELBO"
                )
            zero = jnp.array(0.0)
            names = sorted(set(model_terms) | set(guide_terms))
            return {n: model_terms.get(n, zero) - guide_terms.get(n, zero) for n in names}

        if self.num_particles == 1:
            terms = jax.tree.map(jnp.negative, site_terms(rng_key))
        else:
            keys = jr.split(rng_key, self.num_particles)
            terms = jax.tree.map(
                lambda x: -jnp.mean(x), self.vectorize_particles_fn(site_terms, keys)
            )
        loss = sum((terms[name] for name in sorted(terms)), start=jnp.array(0.0))
        return {"loss": loss, "mutable_state": None}


class GuideFitState(NamedTuple):
    """What :func:`fit_guide` leaves besides the averaged parameters.

    Attributes:
        last_params: the last iterate's (constrained) parameters.
        svi_state: NumPyro's ``SVIState`` after the last step.
        n_grads: gradients of the model's log density the fit spent (one per step and
            particle, and the guide's Gaussian fit), the unit NUTS is costed in.
    """

    last_params: dict
    svi_state: Any
    n_grads: int


def fit_guide(
    model,
    *args,
    guide=None,
    steps: int = 10_000,
    learning_rate: float = 3e-3,
    average: float | None = 0.1,
    schedule: str = "cosine",
    clip_norm: float | None = 10.0,
    temper=None,
    num_particles: int = 1,
    plateau: float | None = 0.1,
    key=None,
    progress_bar: bool = True,
    return_state: bool = False,
    **model_kwargs,
):
    """Fit a guide by SVI (:class:`SiteOrderedTraceELBO`, :func:`guide_optimizer`), averaging.

    The steps run in the training loop shared with :func:`~numpyro_coupling.fit`
    (:mod:`numpyro_coupling.loop`): compiled chunks, a moving average of the parameters
    over the last ``average`` fraction of the run (Polyak averaging, bias-corrected; the
    loss curve is that of the raw iterates), and steps with a non-finite loss skipped.
    ``temper`` first fits the guide to targets whose likelihood is flattened,
    ``prior(x) * likelihood(x)^beta`` (:func:`temper_likelihood`), on which it spreads
    over every mode, then sharpens them (see the NeuTra docs on several modes).

    Args:
        model: the NumPyro model.
        *args: model arguments.
        guide: an ``AutoContinuous`` guide, a dict of
            :class:`~numpyro_coupling.AutoCouplingFlow` keyword arguments, or ``None``
            (an ``AutoCouplingFlow`` with its defaults).
        steps: optimisation steps.
        learning_rate: (peak) Adam step size.
        average: time constant of the parameter average as a fraction of the final fit's
            steps (``None`` or ``0``: return the last iterate).
        schedule: ``"cosine"`` (decay to a tenth) or ``"constant"``: see
            :func:`guide_optimizer`.
        clip_norm: global gradient-norm cap (``None``: none).
        temper: inverse temperatures in ``(0, 1)`` of warm-up phases, e.g.
            ``(0.1, 0.3, 0.6)``; ``None``: none. Needs a model with observed sites or
            factors (the likelihood). The ``steps`` are split equally between the phases
            and the final fit at ``beta = 1``, which also takes the remainder; each phase
            restarts the learning-rate schedule, and only the final fit is averaged.
        num_particles: guide draws per step whose ELBO terms are averaged (vectorised);
            more lower the gradient noise, which sets a flow guide's final KL.
        plateau: stop the final fit early once it has stopped improving, then cool
            down: at the end of each window of ``plateau * steps`` steps (e.g. ``0.1``)
            the averaged parameters' negative ELBO is estimated on ``PLATEAU_DRAWS``
            (128) fixed guide draws, the same draws each time, so that the difference
            between two windows is the fit's change and not the estimate's noise; once
            a window gains at most ``PLATEAU_TOL`` (0.02) nats (:func:`plateau_reached`),
            the fit ends, and a last phase of a quarter of the
            steps taken (at least one window) decays the step size to the schedule's
            floor, averaged as the fit would have been. ``steps`` is then a cap. Fits
            whose window would be under ``MIN_PLATEAU_WINDOW`` (500) steps, and ``None``,
            run every step. The draws' log densities count as gradients in the
            :class:`GuideFitState`.
        key: PRNG key (default ``jax.random.key(0)``).
        progress_bar: show a progress bar.
        return_state: also return a :class:`GuideFitState` (the last iterate).
        **model_kwargs: model keyword arguments.

    Returns:
        ``(guide, params, losses)``: the guide, its fitted (constrained) parameters and
        the ``(steps,)`` loss curve (negative ELBO; in the ``temper`` phases, of the
        tempered target); with ``return_state``, a :class:`GuideFitState` follows.

    Raises:
        FloatingPointError: no step had a finite loss (the guide was never updated).

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> guide, params, losses = fit_guide(
        ...     model, guide={"n_layers": 1, "nn_width": 4}, steps=10, progress_bar=False
        ... )
        >>> losses.shape
        (10,)
    """
    key = as_key(key)
    if guide is None:
        guide = AutoCouplingFlow(model)
    elif isinstance(guide, dict):
        guide = AutoCouplingFlow(model, **guide)
    elif not isinstance(guide, AutoContinuous):
        raise TypeError(f"guide must be an AutoContinuous guide, a dict or None, got {guide!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (isinstance(num_particles, (int, np.integer)) and num_particles >= 1):
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    if average is not None and not 0 <= average <= 1:
        raise ValueError(f"average must be a fraction in [0, 1] or None, got {average}")
    if plateau is not None and not 0 < plateau <= 0.5:
        raise ValueError(f"plateau must be a fraction in (0, 0.5] or None, got {plateau}")
    betas = [float(b) for b in (temper or ())]
    if not all(0.0 < b < 1.0 for b in betas):
        raise ValueError(f"temper must hold inverse temperatures in (0, 1), got {temper!r}")
    if steps < len(betas) + 1:
        raise ValueError(f"steps={steps} is fewer than the {len(betas) + 1} phases")
    if betas and not observed_sites(prototype_trace(model, args, model_kwargs)):
        raise ValueError(
            "temper flattens the likelihood, but the model has no observed sites or "
            "factors: write the target's log density as a numpyro.factor"
        )
    phase_steps = steps // (len(betas) + 1)
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

    def runner(svi):
        """The compiled chunks of ``svi``'s steps, and what its average follows."""

        def step(state, _, beta_kwarg):
            state, loss = svi.update(state, *args, **beta_kwarg, **model_kwargs)
            return state, loss, jnp.isfinite(loss)

        def view(state):
            return svi.optim.get_params(state.optim_state)

        return chunk_runner(step, view), view

    def run_phase(svi, run, phase_key, init_params, beta_kwarg, n, phase_average, after_chunk):
        run_chunk, view = run
        state = _init_without_draw(
            svi, guide, phase_key, args, dict(beta_kwarg, **model_kwargs), init_params
        )
        # Without a bar or a plateau rule a phase is one compiled scan; else chunks that
        # divide every phase where they can (one compilation for all of them).
        chunked = progress_bar or after_chunk is not None
        chunk = chunk_length(n, max(min(steps // 50, 500), 1)) if chunked else n
        carry, phase_losses, _ = run_chunks(
            run_chunk,
            start_carry(state, view),
            (beta_kwarg,),
            steps=n,
            chunk=chunk,
            decay=average_decay(phase_average, n),
            halt=False,
            bar=bar,
            after_chunk=after_chunk,
        )
        return carry, phase_losses

    def fixed_draw_loss(beta_kwarg):
        """The negative ELBO of unconstrained parameters on fixed draws (jitted)."""
        check, check_key = SiteOrderedTraceELBO(PLATEAU_DRAWS), jr.fold_in(key, 2**20)

        # The inverse temperature is an argument, traced as in the steps.
        @jax.jit
        def loss(unconstrained, beta_kwarg):
            params = svi.constrain_fn(unconstrained)
            model_kw = beta_kwarg | model_kwargs
            return check.loss(check_key, params, svi.model, svi.guide, *args, **model_kw)

        return lambda unconstrained: loss(unconstrained, beta_kwarg)

    run = runner(svi)
    # (phase key, inverse temperature, steps, averaged) per phase, the final fit last.
    phases = [(jr.fold_in(key, i + 1), b, phase_steps, None) for i, b in enumerate(betas)]
    final_steps = steps - phase_steps * len(betas)
    phases.append((key, 1.0, final_steps, average))
    window = max(int((plateau or 0) * final_steps), 1)

    init_params, losses, rule = None, [], None
    bar = training_bar(steps, enabled=progress_bar, desc="SVI")
    try:
        for i, (phase_key, beta, n, phase_average) in enumerate(phases):
            beta_kwarg = {"_beta": jnp.asarray(beta, jnp.result_type(float))} if betas else {}
            final = i == len(phases) - 1
            watched = plateau is not None and final and window >= MIN_PLATEAU_WINDOW
            rule = (
                _PlateauRule(window, fixed_draw_loss(beta_kwarg), PLATEAU_DRAWS)
                if watched
                else None
            )
            carry, phase_losses = run_phase(
                svi, run, phase_key, init_params, beta_kwarg, n, phase_average, rule
            )
            init_params = svi.get_params(carry.state)
            losses.append(phase_losses)
        done = len(losses[-1])
        if done < final_steps:
            # Converged early: the step size has not decayed yet, so a short cool-down
            # takes it from where the schedule stands to the schedule's floor.
            cool = min(final_steps - done, max(window, done // 4))
            peak = learning_rate
            if schedule == "cosine":
                peak = float(
                    optax.cosine_decay_schedule(learning_rate, phase_steps, FINAL_FRACTION)(done)
                )
            cool_optim = guide_optimizer(
                peak,
                cool,
                schedule=schedule,
                final_fraction=min(FINAL_FRACTION * learning_rate / peak, 1.0),
                clip_norm=clip_norm,
            )
            svi = SVI(svi.model, svi.guide, cool_optim, elbo)
            carry, cool_losses = run_phase(
                svi, runner(svi), jr.fold_in(key, 0), init_params, beta_kwarg, cool, average, None
            )
            losses.append(cool_losses)
    finally:
        bar.close()
    if not any(np.isfinite(part).any() for part in losses):
        # Every step was skipped: the guide is where it started, and NUTS on its geometry
        # would fail later with an error that names neither the guide nor the fit.
        n_steps = sum(len(part) for part in losses)
        raise FloatingPointError(
            f"every one of the {n_steps} SVI steps had a non-finite loss, so the guide was "
            "never updated: its draws fall where the model's log density is not finite. "
            "Check the model at the guide's start, or start the guide elsewhere "
            "(guide={'precondition': None}, 'init_scale', 'init_loc_fn'); for a hierarchical "
            "model, try the non-centred parameterisation (neutra_mcmc(..., reparam=True))."
        )
    last = svi.get_params(carry.state)
    params = svi.constrain_fn(carry.average) if average else last
    if return_state:
        n_steps = sum(len(part) for part in losses)
        n_grads = n_steps * int(num_particles) + int(getattr(guide, "precondition_grads", 0))
        n_grads += rule.evaluations if rule is not None else 0
        return guide, params, np.concatenate(losses), GuideFitState(last, carry.state, n_grads)
    return guide, params, np.concatenate(losses)


def plateau_reached(scores, *, tol: float = PLATEAU_TOL) -> bool:
    """Whether a fit has stopped improving: its last fixed-draw loss gained at most ``tol``.

    ``scores`` are the fit's loss at the end of each window, each estimated on the same
    fixed guide draws (common random numbers), so that a difference between two of them
    is the change of the fit, not the noise of the estimate. False while fewer than two
    exist or the last is not finite.

    Args:
        scores: ``(n,)`` fixed-draw losses (for SVI, negative ELBOs in nats), one a window.
        tol: the gain per window that is not worth another window.

    Example:
        >>> plateau_reached([3.0, 2.5]), plateau_reached([3.0, 2.5, 2.49])
        (False, True)
    """
    scores = np.asarray(scores, float)
    if scores.shape[0] < 2 or not np.isfinite(scores[-1]):
        return False
    return bool(scores[-2] - scores[-1] <= tol)


class _PlateauRule:
    """``run_chunks``'s ``after_chunk``: at each window's end, score the averaged parameters
    on fixed draws and stop once :func:`plateau_reached`; ``evaluations`` counts the
    log densities spent."""

    def __init__(self, window: int, score, num_draws: int):
        self.window, self.score, self.num_draws = window, score, num_draws
        self.seen, self.scores, self.evaluations = 0, [], 0

    def __call__(self, carry, chunk_losses):
        self.seen += len(chunk_losses)
        if self.seen < self.window * (len(self.scores) + 1):
            return False, None
        self.scores.append(float(self.score(carry.average)))
        self.evaluations += self.num_draws
        stop = plateau_reached(self.scores)
        return stop, ("converged" if stop else None)


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


def _init_without_draw(svi, guide, key, args, kwargs, init_params):
    """``svi.init``, with the guide's latent set to its initial point instead of drawn.

    ``SVI.init`` runs the guide once, eagerly, only to trace its parameter sites; a flow
    guide's draw there compiles its whole sampling pass for that one call (10-13 s for a
    mixture guide on the 10-D funnel, a third of its SVI step's compilation). The sites,
    their initial values and the model's replay at a valid point are the same.
    """
    latent = f"_{guide.prefix}_latent"

    def initial(site):
        return guide._init_latent if site["name"] == latent else None

    guide_fn = svi.guide
    svi.guide = handlers.substitute(guide_fn, substitute_fn=initial)
    try:
        return svi.init(key, *args, init_params=init_params, **kwargs)
    finally:
        svi.guide = guide_fn


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
