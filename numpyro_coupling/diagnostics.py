"""When to trust a run: diagnostics of a guide's fit and of the NUTS chains it warps.

A chain can be wrong without looking wrong. These functions turn what a run already holds
into figures and, where a figure says the result is not to be trusted, a
:class:`DiagnosticWarning` that names the remedy.

**The guide.** Given ``S`` draws ``x_s ~ q`` from a guide, the log importance weights are
``log w_s = log p(x_s) - log q(x_s)`` with ``log p`` the unnormalised log posterior. Their
right tail says whether ``q`` covers ``p``: a guide that misses mass of ``p`` gives
heavy-tailed weights, and the shape ``k`` of a generalized Pareto distribution fitted to
the tail (Pareto smoothed importance sampling) flags it: ``k < 0.5`` good,
``0.5 <= k < 0.7`` usable, ``k >= 0.7`` not to be trusted. A guide far too wide has light
weight tails but a tiny importance-sampling ESS, so both are read.

**The chains.** Divergences, tree-depth saturation, bulk and tail ESS, and R-hat.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import numpy as np
from numpyro.distributions import TransformedDistribution

__all__ = [
    "ChainDiagnostics",
    "DiagnosticWarning",
    "chain_diagnostics",
    "guide_diagnostics",
    "guide_log_weights",
    "import_arviz",
    "warn_about_chains",
    "warn_about_guide",
]


def gpd_fit(exceedances) -> tuple[float, float]:
    """Generalized Pareto fit of positive exceedances (Zhang & Stephens, 2009).

    The empirical-Bayes estimate of the shape ``k`` and scale ``sigma`` of
    ``GPD(k, sigma)``, with the weakly informative prior that pulls ``k`` towards 0.5 with
    the weight of 10 observations, as PSIS uses it.

    Args:
        exceedances: ``(n,)`` positive values (the tail above a threshold, minus it).

    Returns:
        ``(k, sigma)``.

    Example:
        >>> import numpy as np
        >>> draws = np.random.default_rng(0).exponential(size=2000)  # GPD with k = 0
        >>> k, sigma = gpd_fit(draws)
        >>> abs(k) < 0.1, abs(sigma - 1) < 0.1
        (True, True)
    """
    x = np.sort(np.asarray(exceedances, dtype=float).reshape(-1))
    n = x.size
    if n < 2 or not np.all(np.isfinite(x)) or x[-1] <= 0:
        raise ValueError(f"exceedances must hold at least 2 finite values > 0, got {n} values")
    m = 30 + int(np.sqrt(n))
    # Candidate values of theta = -k / sigma, spread by the first quartile (Zhang-Stephens).
    theta = 1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    theta = theta / (3.0 * x[int(n / 4 + 0.5) - 1]) + 1.0 / x[-1]
    k = np.mean(np.log1p(-theta[:, None] * x), axis=1)
    profile = n * (np.log(-theta / k) - k - 1.0)
    # Posterior weights of the candidates: softmax of the profile log likelihood.
    weights = np.exp(profile - _logsumexp(profile))
    keep = weights >= 10 * np.finfo(float).eps
    weights, theta = weights[keep] / weights[keep].sum(), theta[keep]
    theta_hat = np.sum(theta * weights)
    k_hat = np.mean(np.log1p(-theta_hat * x))
    sigma = -k_hat / theta_hat
    k_hat = (n * k_hat + 10 * 0.5) / (n + 10)
    return float(k_hat), float(sigma)


def pareto_khat(log_weights) -> float:
    """PSIS Pareto shape ``k-hat`` of the right tail of importance weights.

    The tail is the ``M = ceil(min(S / 5, 3 sqrt(S)))`` largest weights (as ArviZ's
    ``psislw`` with ``reff = 1``); their excess over the next largest is fitted by
    :func:`gpd_fit`.

    Args:
        log_weights: ``(S,)`` log importance weights (any additive constant).

    Returns:
        ``k-hat``: ``-inf`` when the largest weights all tie (bounded weights, e.g. the
        constant weights of an exact guide; ArviZ returns ``inf`` there), ``inf`` when
        the tail above the cutoff has 1 to 4 draws or a weight is not finite.

    Example:
        >>> import numpy as np
        >>> z = np.random.default_rng(0).normal(size=4000)
        >>> # proposal N(0, 1) for the target N(0, 0.5^2): light tail, k < 0
        >>> bool(pareto_khat(-0.5 * (z / 0.5) ** 2 + 0.5 * z**2) < 0.5)
        True
        >>> # proposal N(0, 1) for the target N(0, 4^2): far too narrow, k = 1 - 1/4^2
        >>> bool(pareto_khat(-0.5 * (z / 4) ** 2 + 0.5 * z**2) > 0.7)
        True
    """
    lw = np.asarray(log_weights, dtype=float).reshape(-1)
    if not np.all(np.isfinite(lw)):
        return float("inf")
    s = lw.size
    m = int(np.ceil(min(s / 5.0, 3.0 * np.sqrt(s))))
    lw = np.sort(lw - lw.max())
    cutoff = max(lw[-m - 1], np.log(np.finfo(float).tiny))
    tail = lw[lw > cutoff]
    if tail.size == 0:
        # The largest weights tie: bounded weights (an exact guide gives constant ones).
        return float("-inf")
    if tail.size <= 4:
        return float("inf")
    return gpd_fit(np.exp(tail) - np.exp(cutoff))[0]


def is_ess(log_weights) -> float:
    """Kish's effective sample size ``1 / sum(w_s^2)`` of the self-normalised weights.

    Args:
        log_weights: ``(S,)`` log importance weights.

    Returns:
        ESS in ``[1, S]`` (``S`` for equal weights).

    Example:
        >>> is_ess([0.0, 0.0, 0.0, 0.0]), round(is_ess([0.0, -50.0, -50.0]), 6)
        (4.0, 1.0)
    """
    lw = np.asarray(log_weights, dtype=float).reshape(-1)
    w = np.exp(lw - _logsumexp(lw))
    return float(1.0 / np.sum(w * w))


def log_evidence(log_weights) -> tuple[float, float]:
    """Importance-sampling estimate of ``log Z``: the log-mean-exp of the log weights.

    With ``log w = log p~ - log q`` and ``p~`` the unnormalised posterior,
    ``mean(w)`` estimates ``Z``. The standard error is the delta method's,
    ``sd(w) / (sqrt(S) mean(w))``, i.e. ``sqrt((S / ESS - 1) / S)``; it is itself
    unreliable when :func:`pareto_khat` exceeds 0.7.

    Args:
        log_weights: ``(S,)`` log importance weights.

    Returns:
        ``(log_z, se)``.

    Example:
        >>> log_z, se = log_evidence([1.0, 1.0, 1.0])
        >>> round(log_z, 6), round(se, 6)
        (1.0, 0.0)
    """
    lw = np.asarray(log_weights, dtype=float).reshape(-1)
    s = lw.size
    log_z = _logsumexp(lw) - np.log(s)
    r = np.exp(lw - log_z)
    return float(log_z), float(np.std(r) / np.sqrt(s))


class ImportanceDiagnostics(NamedTuple):
    """Summary of a guide's importance weights (see :func:`importance_diagnostics`)."""

    k_hat: float
    ess: float
    log_z: float
    log_z_se: float


def importance_diagnostics(log_p, log_q) -> ImportanceDiagnostics:
    """Pareto k-hat, IS ESS and ``log Z +- se`` of draws from a guide.

    Args:
        log_p: ``(S,)`` unnormalised log posterior density of the guide's draws.
        log_q: ``(S,)`` the guide's log density of the same draws.

    Returns:
        :class:`ImportanceDiagnostics` ``(k_hat, ess, log_z, log_z_se)``.

    Example:
        >>> import numpy as np
        >>> z = np.random.default_rng(1).normal(size=1000)
        >>> log_q = -0.5 * z**2 - 0.5 * np.log(2 * np.pi)
        >>> diag = importance_diagnostics(log_q + 3.0, log_q)  # exact guide, Z = e^3
        >>> round(diag.ess, 6), round(diag.log_z, 6), round(diag.log_z_se, 6)
        (1000.0, 3.0, 0.0)
    """
    log_p = np.asarray(log_p, dtype=float).reshape(-1)
    log_q = np.asarray(log_q, dtype=float).reshape(-1)
    if log_p.shape != log_q.shape:
        raise ValueError(f"log_p and log_q must match, got {log_p.shape} and {log_q.shape}")
    lw = log_p - log_q
    log_z, se = log_evidence(lw)
    return ImportanceDiagnostics(pareto_khat(lw), is_ess(lw), log_z, se)


def _logsumexp(a) -> float:
    """``log(sum(exp(a)))`` in float64 NumPy (the weights of a float32 model need the range)."""
    a = np.asarray(a, dtype=float)
    top = np.max(a)
    return float(top + np.log(np.sum(np.exp(a - top)))) if np.isfinite(top) else float(top)


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
        min_tail_ess: the smallest tail ESS (of the 5% and 95% quantiles) over the same
            coordinates: the draws' worth for intervals and tails, which a chain that
            rarely visits a tail (a funnel's neck, say) leaves low while its bulk ESS
            looks fine.
    """

    num_chains: int
    num_draws: int
    divergences: int
    depth_saturation: float
    min_ess: float
    max_rhat: float
    min_tail_ess: float = float("nan")


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
    tail_ess = az.ess(posterior, method="tail")
    min_tail_ess = min(float(np.min(tail_ess[k].values)) for k in tail_ess.data_vars)
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
        min_tail_ess=min_tail_ess,
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
            "regions the guide warps poorly (a funnel's neck, say): refine the guide on a "
            "pilot warm-up (neutra_mcmc(..., refine=True)), fit it longer or with more "
            "particles (fit_kwargs={'num_particles': 16}), non-centre a hierarchical "
            "model's sites (reparam=True, or noncentre(model, sites) for your own guide), or"
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
    elif diag.min_tail_ess < 100:
        messages.append(
            f"The smallest tail ESS is {diag.min_tail_ess:.0f} (< 100): the chains rarely "
            "visit a tail of the posterior, so its quantiles and intervals are unreliable; "
            "run longer" + (", or refine the guide there (refine=True)." if neutra else ".")
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
        if isinstance(posterior, TransformedDistribution):
            # The forward pass's own log-dets: a flow without an analytic inverse (NumPyro's
            # BNAF) is scored too, and no flow runs twice.
            x, intermediates = posterior.sample_with_intermediates(key, (num_draws,))
            log_q = posterior.log_prob(x, intermediates)
        else:
            x = posterior.sample(key, (num_draws,))
            log_q = posterior.log_prob(x)
        log_p = -jax.vmap(lambda v: guide._potential_fn(guide._unpack_latent(v)))(x)
        return log_p, log_q

    log_p, log_q = weights(key)
    return np.asarray(log_p, dtype=float), np.asarray(log_q, dtype=float)


def guide_diagnostics(guide, params, key, num_draws: int = 2000) -> ImportanceDiagnostics:
    """:func:`importance_diagnostics` of a fitted guide's own draws (:func:`guide_log_weights`).

    Example:
        >>> import jax.random as jr, numpyro, numpyro.distributions as dist
        >>> from numpyro_coupling import fit_guide
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> guide, params, _ = fit_guide(model, steps=10, progress_bar=False)
        >>> diag = guide_diagnostics(guide, params, jr.key(0))
        >>> bool(diag.k_hat < 0.5), abs(round(diag.log_z, 1))  # the guide starts exact: Z = 1
        (True, 0.0)
    """
    return importance_diagnostics(*guide_log_weights(guide, params, key, num_draws))


def warn_about_guide(diag: ImportanceDiagnostics, num_draws: int) -> list[str]:
    """Warn (:class:`DiagnosticWarning`) when a guide's importance weights say it misses mass.

    The rule: Pareto k-hat above 0.7 while fewer than 90% of the draws are effective (a
    heavy right tail of the weights: the guide is too narrow or misplaced somewhere), or
    fewer than 10% effective whatever k-hat says (a guide far too wide or misplaced has
    light-tailed but very uneven weights). Either way a NeuTra chain on its geometry can be
    slow or wrong.

    Args:
        diag: from :func:`guide_diagnostics`.
        num_draws: the draws it used.

    Returns:
        The messages warned (empty when the guide looks sound).

    Example:
        >>> warn_about_guide(ImportanceDiagnostics(0.3, 1900.0, 0.0, 0.01), 2000)
        []
    """
    share = diag.ess / num_draws
    if not ((diag.k_hat > 0.7 and share < 0.9) or share < 0.1):
        return []
    message = (
        f"The guide misses posterior mass (Pareto k-hat {diag.k_hat:.2f}, importance-sampling "
        f"ESS {share:.1%} of its draws): expect slow or biased NUTS on its geometry. Try "
        "more SVI steps or particles (fit_kwargs={'steps': ..., 'num_particles': 16}), "
        "precondition='dense', or a more flexible transformer ('loc_scale_spline')."
    )
    warnings.warn(message, DiagnosticWarning, stacklevel=3)
    return [message]
