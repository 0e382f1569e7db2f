"""Global moves: NUTS mixed with independence Metropolis-Hastings proposals from a guide.

A NUTS chain is local: to go from one mode to another it must cross the low-density gap
between them, which it rarely does. On the geometry a fitted guide warps (NeuTra), the
guide's density is the standard normal of the base variable, and a draw from it is a
proposal that can land in any mode the guide covers. :class:`GlobalMoves` wraps a NUTS
(or HMC) kernel: a transition is, with probability ``rate``, an independence move
``z' ~ q`` accepted with probability

``min(1, exp(U(z) - U(z') + log q(z) - log q(z')))``

(``U`` the kernel's potential energy: the ratio ``w(z') / w(z)`` of the importance
weights ``w = p / q``), and otherwise a NUTS transition. Both leave the target invariant,
so the chain is exact whatever the guide; the guide only decides how often a move is
accepted. The rate is set by the user, or adapted during warm-up to the measured
acceptance and frozen afterwards.

NUTS adapts its step size and mass matrix on the first part of the warm-up only
(``nuts_warmup``, a quarter of it by default): on a geometry the guide has whitened the
adaptation settles quickly, and where the moves are accepted most of the chain's
transitions are moves, so a full-length NUTS warm-up would spend most of the run's
gradients on steps that the sampling phase hardly uses. The rest of the warm-up runs the
final kernel and is discarded as burn-in.
"""

from __future__ import annotations

from collections import namedtuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc import HMCState
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from .wrapped_kernel import WrappedKernel

__all__ = [
    "GLOBAL_MOVE_FIELDS",
    "GlobalMoves",
    "GlobalMovesState",
    "adapted_rate",
    "default_nuts_warmup",
    "global_move_summary",
    "with_global_moves",
]

#: The per-transition statistics a :class:`GlobalMoves` kernel adds to the NUTS state, to
#: collect with ``MCMC.run(..., extra_fields=GLOBAL_MOVE_FIELDS)``.
GLOBAL_MOVE_FIELDS = ("global_accept_prob", "global_accepted", "global_rate")

_EXTRA = (
    "global_accept_prob",  # MH acceptance probability of this transition's move (nan: none)
    "global_accepted",  # whether a move was accepted
    "global_rate",  # the probability of attempting a move (adapted during warm-up)
    "global_iteration",  # transitions so far, warm-up included (never reset)
    "global_accept_sum",  # second half of warm-up: sum of the moves' acceptance probabilities
    "global_attempts",  # second half of warm-up: moves attempted
    "global_steps_mean",  # second half of warm-up: mean leapfrog steps of a NUTS transition
)

#: The state of :class:`GlobalMoves`: NumPyro's ``HMCState`` fields, then the moves'.
GlobalMovesState = namedtuple("GlobalMovesState", HMCState._fields + _EXTRA)

_N_HMC = len(HMCState._fields)


def adapted_rate(accept_mean, steps_mean, min_rate=0.1, max_rate=0.95):
    """The share of transitions to make moves: ``r / (1 + r)``, ``r = accept_mean * steps_mean``.

    A move costs one gradient and is a fresh draw with probability ``accept_mean``; a NUTS
    transition costs ``steps_mean`` gradients. ``r`` is the moves' return per gradient
    relative to NUTS's: where they pay (``r > 1``) most transitions are moves, where they
    do not (a guide that misses mass) few. The bounds keep some of each: NUTS unsticks a
    chain that sits on a large importance weight (at the ceiling, one transition in
    twenty is still a NUTS step), moves keep crossing between modes.

    Args:
        accept_mean: mean acceptance probability of the moves.
        steps_mean: mean leapfrog steps of a NUTS transition.
        min_rate: the share's floor.
        max_rate: its ceiling.

    Returns:
        The share, in ``[min_rate, max_rate]``.

    Example:
        >>> round(float(adapted_rate(0.02, 10.0)), 3), round(float(adapted_rate(0.8, 10.0)), 3)
        (0.167, 0.889)
    """
    ratio = accept_mean * steps_mean
    return jnp.clip(ratio / (1.0 + ratio), min_rate, max_rate)


def default_nuts_warmup(num_warmup: int) -> int:
    """The warm-up transitions in which NUTS adapts, by default: a quarter, at least 100.

    Never more than ``num_warmup``. NumPyro's adaptation schedule (Stan's: a 75-step
    initial buffer, doubling mass-matrix windows, a 50-step final buffer) fits in 250
    transitions, the share of a default 1000-transition warm-up.

    Example:
        >>> default_nuts_warmup(1000), default_nuts_warmup(200), default_nuts_warmup(50)
        (250, 100, 50)
    """
    return min(int(num_warmup), max(100, int(num_warmup) // 4))


class GlobalMoves(WrappedKernel):
    """A NUTS (or HMC) kernel mixed with independence Metropolis-Hastings moves.

    A transition is, with probability ``rate``, a move: ``z' ~ proposal``, drawn
    independently of the current state and accepted with the exact Metropolis-Hastings
    ratio; otherwise a NUTS transition. In the first ``nuts_warmup`` transitions of the
    warm-up, instead, every transition runs NUTS (whose step size and mass matrix adapt)
    followed by a move (with probability ``rate``; every time when it is adapted); the
    rest of the warm-up runs the final kernel as burn-in. An accepted move replaces the
    state's ``z``, ``potential_energy`` and ``z_grad`` (computed together, one gradient),
    so that NUTS continues from it. ``num_steps`` counts every gradient of a transition:
    NUTS's leapfrog steps plus one for a move.

    With ``rate=None`` the rate is :func:`adapted_rate` of the mean acceptance and NUTS
    steps over the second half of NUTS's adaptation, then frozen: from there on the chain
    is a fixed mixture of two exact kernels.

    Args:
        inner: a NumPyro ``HMC`` or ``NUTS`` kernel (on a NeuTra-reparameterised model:
            NumPyro's ``NeuTraReparam``, as :func:`~numpyro_coupling.neutra_nuts` builds).
        rate: probability that a transition is a move, in ``[0, 1]``; ``None`` adapts it
            during warm-up.
        proposal: distribution of the flattened state ``z`` (event shape ``(d,)``) with
            ``sample`` and ``log_prob``; ``None`` means the standard normal, which on the
            NeuTra geometry is the guide itself.
        min_rate: the adapted rate's floor.
        max_rate: the adapted rate's ceiling.
        nuts_warmup: the warm-up transitions in which NUTS adapts; ``None`` means
            :func:`default_nuts_warmup` of the run's warm-up (a quarter, at least 100);
            capped at the run's warm-up.

    The statistics of each transition (:data:`GLOBAL_MOVE_FIELDS`) are in the state:
    ``global_accept_prob`` (the move's acceptance probability, ``nan`` where none was
    proposed), ``global_accepted`` and ``global_rate``. On a move transition NUTS's own
    fields (``accept_prob``, ``mean_accept_prob``) keep their last values and
    ``diverging`` is false.

    Example:
        >>> import jax.random as jr, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import MCMC, NUTS
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> mcmc = MCMC(GlobalMoves(NUTS(model), rate=0.5), num_warmup=20, num_samples=20,
        ...             progress_bar=False)
        >>> mcmc.run(jr.key(0), extra_fields=GLOBAL_MOVE_FIELDS)
        >>> mcmc.get_samples()["x"].shape, mcmc.get_extra_fields()["global_accepted"].shape
        ((20,), (20,))
    """

    def __init__(
        self,
        inner,
        *,
        rate: float | None = None,
        proposal=None,
        min_rate: float = 0.1,
        max_rate: float = 0.95,
        nuts_warmup: int | None = None,
    ):
        if not isinstance(inner, MCMCKernel) or not hasattr(inner, "get_potential_fn"):
            raise TypeError(f"inner must be a NumPyro HMC or NUTS kernel, got {inner!r}")
        if rate is not None and not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"rate must be in [0, 1] or None, got {rate}")
        if not 0.0 <= float(min_rate) <= float(max_rate) <= 1.0:
            raise ValueError(
                f"min_rate and max_rate must satisfy 0 <= min_rate <= max_rate <= 1, "
                f"got {min_rate} and {max_rate}"
            )
        if nuts_warmup is not None and int(nuts_warmup) < 0:
            raise ValueError(f"nuts_warmup must be a non-negative integer, got {nuts_warmup}")
        super().__init__(inner)
        self.rate = None if rate is None else float(rate)
        self.proposal = proposal
        self.min_rate = float(min_rate)
        self.max_rate = float(max_rate)
        self.nuts_warmup = None if nuts_warmup is None else int(nuts_warmup)
        self._nuts_warmup = 0
        self._vectorized = False

    def get_diagnostics_str(self, state):
        inner = self.inner.get_diagnostics_str(HMCState(*state[:_N_HMC]))
        return f"{inner}, move rate {float(np.mean(state.global_rate)):.2f}"

    # --- the kernel ---------------------------------------------------------------------
    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        nuts_warmup = (
            default_nuts_warmup(num_warmup) if self.nuts_warmup is None else self.nuts_warmup
        )
        self._nuts_warmup = min(int(nuts_warmup), int(num_warmup))
        state = self.inner.init(rng_key, self._nuts_warmup, init_params, model_args, model_kwargs)
        self._vectorized = not is_prng_key(rng_key)
        batch = jnp.shape(state.potential_energy)
        dtype = jnp.result_type(state.potential_energy)
        # Adapted: the first half of warm-up runs at the ceiling.
        rate = self.max_rate if self.rate is None else self.rate
        extra = (
            jnp.full(batch, jnp.nan, dtype),
            jnp.zeros(batch, bool),
            jnp.full(batch, rate, dtype),
            jnp.zeros(batch, jnp.int32),
            jnp.zeros(batch, dtype),
            jnp.zeros(batch, jnp.int32),
            jnp.zeros(batch, dtype),
        )
        return GlobalMovesState(*state, *extra)

    def sample(self, state, model_args, model_kwargs):
        vectorized = self._vectorized
        split = jax.vmap(lambda k: jr.split(k, 3)) if vectorized else lambda k: jr.split(k, 3)
        keys = split(state.rng_key)
        nuts_key, choice_key, move_key = (keys[:, i] for i in range(3)) if vectorized else keys
        inner = HMCState(*state[:_N_HMC])._replace(rng_key=nuts_key)
        extra = state[_N_HMC:]
        rate, iteration = extra[2], extra[3]
        uniform = jax.vmap(jr.uniform) if vectorized else jr.uniform
        adapting = iteration < self._nuts_warmup
        # Once NUTS has adapted, a transition is either a move (probability ``rate``) or NUTS.
        do_nuts = adapting | (uniform(choice_key) >= rate)

        def run_nuts(s):
            return self.inner.sample(s, model_args, model_kwargs)

        def skip_nuts(s):
            zero = jnp.zeros_like(s.num_steps)
            return s._replace(num_steps=zero, diverging=jnp.zeros_like(s.diverging))

        if vectorized:
            # vmapped NUTS runs every chain anyway: keep each chain's own branch.
            stepped, skipped = run_nuts(inner), skip_nuts(inner)
            inner = jax.tree.map(
                lambda a, b: jnp.where(do_nuts.reshape(do_nuts.shape + (1,) * (a.ndim - 1)), a, b),
                stepped,
                skipped,
            )
            move = jax.vmap(self._move, in_axes=(0, 0, 0, 0, None, None))
        else:
            inner = jax.lax.cond(do_nuts, run_nuts, skip_nuts, inner)
            move = self._move
        return move(inner, extra, move_key, do_nuts, model_args, model_kwargs)

    def _log_proposal(self, flat):
        if self.proposal is None:
            # The normalising constant cancels in the ratio.
            return -0.5 * jnp.sum(flat**2)
        return self.proposal.log_prob(flat)

    def _draw(self, key, flat):
        if self.proposal is None:
            return jr.normal(key, flat.shape, flat.dtype)
        return self.proposal.sample(key).astype(flat.dtype)

    def _move(self, state, extra, key, did_nuts, model_args, model_kwargs):
        """The independence Metropolis-Hastings move of one chain's transition, if any."""
        (_, _, rate, iteration, accept_sum, attempts, steps_mean) = extra
        potential_fn = self.inner.get_potential_fn(model_args, model_kwargs or {})
        flat, unravel = ravel_pytree(state.z)
        key_attempt, key_draw, key_accept = jr.split(key, 3)
        adapting = iteration < self._nuts_warmup
        # While NUTS adapts: a move after each NUTS step (adaptive: every one, to measure
        # the acceptance); afterwards: a move wherever NUTS did not run.
        p_warmup = 1.0 if self.rate is None else rate
        attempt = jnp.where(adapting, jr.uniform(key_attempt) < p_warmup, ~did_nuts)
        pe_dtype = jnp.result_type(state.potential_energy)

        def propose(_):
            new_flat = self._draw(key_draw, flat)
            new_z = unravel(new_flat)
            pe, grad = jax.value_and_grad(potential_fn)(new_z)
            log_ratio = (
                state.potential_energy
                - pe
                + self._log_proposal(flat)
                - self._log_proposal(new_flat)
            )
            prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
            # A proposal off the support (nan or infinite potential) is refused.
            prob = jnp.where(jnp.isfinite(pe) & ~jnp.isnan(log_ratio), prob, 0.0)
            return new_z, pe.astype(pe_dtype), grad, prob.astype(pe_dtype)

        def stay(_):
            nan = jnp.asarray(jnp.nan, pe_dtype)
            return state.z, state.potential_energy, state.z_grad, nan

        new_z, new_pe, new_grad, prob = jax.lax.cond(attempt, propose, stay, None)
        accepted = attempt & (jr.uniform(key_accept) < prob)

        def pick(new, old):
            return jax.tree.map(lambda a, b: jnp.where(accepted, a, b), new, old)

        pe = jnp.where(accepted, new_pe, state.potential_energy)
        nuts_steps = state.num_steps
        state = state._replace(
            z=pick(new_z, state.z),
            z_grad=pick(new_grad, state.z_grad),
            potential_energy=pe,
            energy=state.energy - state.potential_energy + pe,
            num_steps=nuts_steps + attempt.astype(jnp.result_type(nuts_steps)),
        )
        # Statistics from the second half of NUTS's adaptation (the chain near stationarity,
        # the step size settled); the rate they give is frozen once the adaptation ends.
        counted = adapting & attempt & (2 * iteration >= self._nuts_warmup)
        accept_sum = accept_sum + jnp.where(counted, prob, 0.0)
        attempts = attempts + counted.astype(attempts.dtype)
        weight = 1.0 / jnp.maximum(attempts, 1).astype(steps_mean.dtype)
        steps = nuts_steps.astype(steps_mean.dtype)
        steps_mean = jnp.where(counted, steps_mean + weight * (steps - steps_mean), steps_mean)
        if self.rate is None:
            accept_mean = accept_sum / jnp.maximum(attempts, 1)
            estimate = adapted_rate(accept_mean, steps_mean, self.min_rate, self.max_rate)
            rate = jnp.where(counted, estimate, rate).astype(rate.dtype)
        extra = (prob, accepted, rate, iteration + 1, accept_sum, attempts, steps_mean)
        return GlobalMovesState(*state, *extra)


def with_global_moves(kernel, global_moves):
    """``kernel`` wrapped in :class:`GlobalMoves` as ``global_moves`` asks, or unchanged.

    Args:
        kernel: a NumPyro ``HMC``/``NUTS`` kernel.
        global_moves: ``None`` or ``False`` (no moves), ``True`` (adapted rate), a float
            (a fixed rate) or a dict of :class:`GlobalMoves` keyword arguments.

    Returns:
        The kernel to run.

    Example:
        >>> from numpyro.infer import NUTS
        >>> type(with_global_moves(NUTS(lambda: None), 0.3)).__name__
        'GlobalMoves'
    """
    if global_moves is None or global_moves is False:
        return kernel
    if global_moves is True:
        return GlobalMoves(kernel)
    if isinstance(global_moves, dict):
        return GlobalMoves(kernel, **global_moves)
    if isinstance(global_moves, (int, float)):
        return GlobalMoves(kernel, rate=float(global_moves))
    raise TypeError(
        f"global_moves must be None, a bool, a rate or a dict of options, got {global_moves!r}"
    )


def global_move_summary(extra: dict) -> dict:
    """A run's global-move figures from its collected extra fields (after warm-up).

    Args:
        extra: ``MCMC.get_extra_fields()`` holding :data:`GLOBAL_MOVE_FIELDS`.

    Returns:
        dict with ``global_attempts``, ``global_accepts``, ``global_acceptance_rate``
        (accepted moves over attempted ones; ``nan`` without any) and ``global_rate``
        (the mean rate the chains ran at).

    Example:
        >>> import numpy as np
        >>> s = global_move_summary({"global_accept_prob": np.array([0.5, np.nan, 1.0]),
        ...                          "global_accepted": np.array([False, False, True]),
        ...                          "global_rate": np.array([0.6, 0.6, 0.6])})
        >>> s["global_attempts"], s["global_accepts"], s["global_acceptance_rate"]
        (2, 1, 0.5)
    """
    prob = np.asarray(extra["global_accept_prob"])
    attempts = int(np.sum(~np.isnan(prob)))
    accepts = int(np.sum(np.asarray(extra["global_accepted"])))
    return {
        "global_attempts": attempts,
        "global_accepts": accepts,
        "global_acceptance_rate": accepts / attempts if attempts else float("nan"),
        "global_rate": float(np.mean(np.asarray(extra["global_rate"]))),
    }
