"""When to trust a run: diagnostics of a guide's fit and of the NUTS chains it warps.

A chain can be wrong without looking wrong. These functions turn what a run already holds
into figures and, where a figure says the result is not to be trusted, a
:class:`DiagnosticWarning` that names the remedy.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import numpy as np

__all__ = [
    "ChainDiagnostics",
    "DiagnosticWarning",
    "chain_diagnostics",
    "guide_log_weights",
    "import_arviz",
    "warn_about_chains",
]


def import_arviz():
    """ArviZ, imported without its announcement of a coming refactor (a ``FutureWarning``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


class DiagnosticWarning(UserWarning):
    """A run's diagnostics say its result may be wrong (the message names the remedy)."""


class ChainDiagnostics(NamedTuple):
    """What the NUTS chains of a run say about themselves (see :func:`chain_diagnostics`).

    Attributes:
        num_chains: chains.
        num_draws: draws per chain.
        divergences: divergent transitions after warm-up, all chains.
        depth_saturation: fraction of transitions that hit the maximum tree depth.
        min_ess: the smallest bulk ESS over every unconstrained latent coordinate.
        max_rhat: the largest rank-normalised split R-hat (``nan`` with one chain).
    """

    num_chains: int
    num_draws: int
    divergences: int
    depth_saturation: float
    min_ess: float
    max_rhat: float


def chain_diagnostics(idata, max_tree_depth: int = 10) -> ChainDiagnostics:
    """Divergences, tree-depth saturation, ESS and R-hat of a run's chains.

    Args:
        idata: an ``InferenceData`` of :func:`~numpyro_coupling.neutra_mcmc` or
            :func:`~numpyro_coupling.nuts_mcmc` (``sample_stats`` with ``diverging`` and
            ``n_steps``, and ``unconstrained_posterior``).
        max_tree_depth: the NUTS maximum tree depth the run used (NumPyro's default 10):
            a transition that takes ``2**max_tree_depth - 1`` leapfrog steps hit it.

    Returns:
        A :class:`ChainDiagnostics`.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from numpyro_coupling import nuts_mcmc
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> _, idata = nuts_mcmc(model, num_warmup=50, num_samples=50, progress_bar=False)
        >>> diag = chain_diagnostics(idata)
        >>> diag.divergences, diag.depth_saturation
        (0, 0.0)
    """
    az = import_arviz()
    stats = idata.sample_stats
    n_steps = np.asarray(stats["n_steps"].values)
    num_chains, num_draws = n_steps.shape[:2]
    saturated = n_steps >= 2**max_tree_depth - 1
    posterior = idata.unconstrained_posterior
    ess = az.ess(posterior)
    min_ess = min(float(np.min(ess[k].values)) for k in ess.data_vars)
    max_rhat = float("nan")
    if num_chains > 1:
        rhat = az.rhat(posterior)
        max_rhat = max(float(np.max(rhat[k].values)) for k in rhat.data_vars)
    return ChainDiagnostics(
        num_chains=int(num_chains),
        num_draws=int(num_draws),
        divergences=int(np.asarray(stats["diverging"].values).sum()),
        depth_saturation=float(saturated.mean()),
        min_ess=min_ess,
        max_rhat=max_rhat,
    )


def warn_about_chains(diag: ChainDiagnostics, *, neutra: bool) -> list[str]:
    """Warn (:class:`DiagnosticWarning`) about each diagnostic that says not to trust a run.

    Args:
        diag: from :func:`chain_diagnostics`.
        neutra: whether the chains ran on a guide's warped geometry (the remedies differ).

    Returns:
        The messages warned (empty when the chains look sound).

    Example:
        >>> diag = ChainDiagnostics(1, 1000, 0, 0.0, 400.0, float("nan"))
        >>> warn_about_chains(diag, neutra=True)
        []
    """
    messages = []
    n = diag.num_chains * diag.num_draws
    if diag.divergences:
        where = (
            "regions the guide warps poorly (a funnel's neck, say): fit the guide longer or "
            "with more particles (fit_kwargs={'num_particles': 16}), or"
            if neutra
            else "regions of high curvature: reparameterise the model (non-centred), use "
            "neutra_mcmc, or"
        )
        messages.append(
            f"{diag.divergences} of {n} NUTS transitions diverged: the chains may miss "
            f"{where} raise nuts_kwargs={{'target_accept_prob': 0.95}}."
        )
    if diag.depth_saturation > 0.01:
        messages.append(
            f"{diag.depth_saturation:.0%} of NUTS transitions hit the maximum tree depth: "
            "the (warped) posterior is badly scaled or strongly correlated, so each draw "
            "costs up to 1023 gradients and the chains barely move; "
            + (
                "the guide did not whiten it (check its k-hat, fit it longer)."
                if neutra
                else "try neutra_mcmc or NUTS(dense_mass=True)."
            )
        )
    if diag.num_chains > 1 and not diag.max_rhat < 1.01:
        messages.append(
            f"R-hat reaches {diag.max_rhat:.3f} (> 1.01): the chains disagree; run them "
            "longer or look for several modes."
        )
    if diag.min_ess < 100:
        messages.append(
            f"The smallest bulk ESS is {diag.min_ess:.0f} (< 100): too few effective draws "
            "for reliable means and quantiles; run longer."
        )
    for message in messages:
        warnings.warn(message, DiagnosticWarning, stacklevel=3)
    return messages


def guide_log_weights(guide, params, key, num_draws: int = 2000):
    """``(log p, log q)`` of draws from a fitted ``AutoContinuous`` guide.

    The draws are taken in the guide's flat unconstrained space; ``log p`` is the model's
    unnormalised log density there (the Jacobian of the constraining transforms included),
    so ``log p - log q`` are the importance weights of the guide as a proposal for the
    posterior.

    Args:
        guide: a fitted ``AutoContinuous`` guide (called once, e.g. by ``svi.init``).
        params: its parameters.
        key: PRNG key.
        num_draws: draws.

    Returns:
        ``(log_p, log_q)``, two ``(num_draws,)`` NumPy arrays.
    """
    posterior = guide.get_posterior(params)

    @jax.jit
    def weights(key):
        x = posterior.sample(key, (num_draws,))
        log_p = -jax.vmap(lambda v: guide._potential_fn(guide._unpack_latent(v)))(x)
        return log_p, posterior.log_prob(x)

    log_p, log_q = weights(key)
    return np.asarray(log_p, dtype=float), np.asarray(log_q, dtype=float)
