"""Counting every gradient of an MCMC run, warm-up included, in one compiled loop.

NumPyro's ``MCMC`` compiles its transition loop once per phase: a run split into
``warmup`` (to collect the warm-up's ``num_steps``) and ``run`` compiles the NUTS program
twice, several seconds each. :class:`StepCount` wraps a kernel and carries a running total
of its ``num_steps`` in the state, so that one ``run`` both samples and tells how many
gradients its warm-up spent (``last_state.total_steps`` less the sampled transitions'
``num_steps``); the chains are the same, draw for draw.
"""

from __future__ import annotations

import functools
from collections import namedtuple

import jax.numpy as jnp

from .wrapped_kernel import WrappedKernel

__all__ = ["StepCount", "counted_state_type"]


@functools.cache
def counted_state_type(state_type):
    """The state type of :class:`StepCount` over ``state_type``: its fields and ``total_steps``.

    One class per wrapped state type, so that compiled programs are reused; its
    ``inner_type`` is ``state_type``.

    Example:
        >>> from numpyro.infer.hmc import HMCState
        >>> counted = counted_state_type(HMCState)
        >>> counted._fields[-2:], counted.inner_type is HMCState
        (('rng_key', 'total_steps'), True)
    """
    counted = namedtuple(f"Counted{state_type.__name__}", (*state_type._fields, "total_steps"))
    counted.inner_type = state_type
    return counted


class StepCount(WrappedKernel):
    """A kernel that runs ``inner`` and adds up its ``num_steps`` over every transition.

    The state is the inner kernel's with one more field, ``total_steps``: the gradients
    spent since ``init``, warm-up included (per chain). Everything else, from the draws to
    the progress bar's diagnostics, is the inner kernel's.

    Args:
        inner: a NumPyro kernel whose state has a ``num_steps`` field (``HMC``, ``NUTS``,
            :class:`~numpyro_coupling.GlobalMoves`).

    Example:
        >>> import jax.random as jr, numpy as np, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import MCMC, NUTS
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> mcmc = MCMC(StepCount(NUTS(model)), num_warmup=20, num_samples=10,
        ...             progress_bar=False)
        >>> mcmc.run(jr.key(0), extra_fields=("num_steps",))
        >>> sampled = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
        >>> int(mcmc.last_state.total_steps) > sampled  # the warm-up's steps as well
        True
    """

    def get_diagnostics_str(self, state):
        return self.inner.get_diagnostics_str(self._inner_state(state))

    @staticmethod
    def _inner_state(state):
        return type(state).inner_type(*state[:-1])

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        state = self.inner.init(rng_key, num_warmup, init_params, model_args, model_kwargs or {})
        total = jnp.zeros(jnp.shape(state.num_steps), jnp.int32)
        return counted_state_type(type(state))(*state, total)

    def sample(self, state, model_args, model_kwargs):
        new = self.inner.sample(self._inner_state(state), model_args, model_kwargs)
        total = state.total_steps + jnp.asarray(new.num_steps, jnp.int32)
        return type(state)(*new, total)
