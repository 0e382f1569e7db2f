"""Centred or non-centred: choosing a hierarchical model's parameterisation by measurement.

A latent site drawn from a location-scale family whose location or scale depends on
other latent sites (``theta ~ Normal(mu, tau)``) can be sampled as it is (centred) or as
``theta = mu + tau * eta`` with ``eta ~ Normal(0, 1)`` (non-centred, NumPyro's
``LocScaleReparam(0)``). Neither is right for every data set: where the data say little
about each ``theta``, the centred posterior is a funnel whose neck no flow fitted by
reverse KL extrapolates into, and the non-centred one is nearly Gaussian; where the data
pin each ``theta`` down, it is the other way round. The two parameterisations describe
the same posterior with the same evidence, so their variational Gaussians' ELBOs compare
directly: the higher one is the nearer to Gaussian, which is the geometry a NeuTra guide
and NUTS handle best.

One site can hold both kinds of element: a sparse regression's few large coefficients are
pinned down by the data and its many small ones are not. There each element gets its own
degree of centring (NumPyro's ``LocScaleReparam(c)``: ``theta = mu + tau^(1 - c) (eta -
c mu)``, ``eta ~ Normal(c mu, tau^c)``), ``c = 1 - v`` with ``v`` the variance of the
element's standardised draw under the Gaussian fit of the non-centred model: for a
Gaussian prior and likelihood this is the share of the element's precision that comes
from the data, the centring under which the element and its scale are uncorrelated. This
partial parameterisation is one more candidate, scored by the same ELBO.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.initialization import init_to_median
from numpyro.infer.inspect import get_dependencies
from numpyro.infer.reparam import LocScaleReparam
from numpyro.infer.util import initialize_model

from .checks import as_key
from .preconditioning import gaussian_vi_fit
from .sites import prototype_trace

__all__ = [
    "ELBO_DRAWS",
    "ELBO_FIT",
    "ELBO_MARGIN",
    "LOC_SCALE_FAMILIES",
    "NEAR_END",
    "Parameterisation",
    "centredness",
    "choose_parameterisation",
    "gaussian_elbo",
    "hierarchical_sites",
    "noncentre",
]

#: Location-scale families that can be non-centred, with the parameters copied unchanged.
LOC_SCALE_FAMILIES = {
    dist.Normal: (),
    dist.StudentT: ("df",),
    dist.Cauchy: (),
    dist.Laplace: (),
    dist.Logistic: (),
}

#: Draws of the fitted Gaussian its ELBO is estimated on (the same draws for every
#: parameterisation compared).
ELBO_DRAWS = 256

#: L-BFGS iterations and gradient tolerance of the comparison's Gaussian fits: the ELBO
#: differences that decide are tenths of a nat, and on the eight schools (classic data,
#: and with standard errors divided by 3 and 10) these fits gave the same differences to
#: 0.05 nats as fits run to convergence, at a third to a half of the cost.
ELBO_FIT = {"max_iter": 100, "gtol": 1e-3}

#: Nats by which another parameterisation's Gaussian ELBO must beat the model's own for
#: it to be chosen (a few Monte Carlo standard errors of the difference on the
#: posteriors measured; the model as written wins ties).
ELBO_MARGIN = 0.1


def _family(fn):
    # The location-scale distribution under expand/to_event wrappers, or None.
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn if type(fn) in LOC_SCALE_FAMILIES else None


def hierarchical_sites(model, *args, **kwargs) -> list[str]:
    """The latent location-scale sites whose location or scale depends on another latent.

    These are the sites :func:`noncentre` can rewrite: a ``Normal``, ``StudentT``,
    ``Cauchy``, ``Laplace`` or ``Logistic`` (expanded or ``to_event`` as well) that is not
    observed and whose parameters are computed from other latent sites.

    Args:
        model: a NumPyro model.
        *args: its positional arguments.
        **kwargs: its keyword arguments.

    Returns:
        The sites' names, in the model's order.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        ...     tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        ...     numpyro.sample("theta", dist.Normal(mu, tau).expand([8]).to_event(1))
        >>> hierarchical_sites(model)
        ['theta']
    """
    trace = prototype_trace(model, args, kwargs)
    latent = {
        name for name, site in trace.items() if site["type"] == "sample" and not site["is_observed"]
    }
    parents = get_dependencies(model, args, kwargs)["prior_dependencies"]
    return [
        name
        for name in trace
        if name in latent
        and _family(trace[name]["fn"]) is not None
        and any(p in latent and p != name for p in parents.get(name, {}))
    ]


def noncentre(model, sites):
    """``model`` with ``sites`` non-centred: ``theta = loc + scale * eta``, ``eta`` standard.

    NumPyro's ``LocScaleReparam`` on each site: the model samples ``{site}_decentered``
    and records the original site as a deterministic one, so predictions and posteriors
    still hold it.

    Args:
        model: a NumPyro model.
        sites: names of location-scale latent sites (e.g. from :func:`hierarchical_sites`),
            each non-centred fully; or a dict from such names to their degree of centring
            ``c`` in ``[0, 1]``, a number or an array of the site's shape (``0``:
            non-centred, ``1``: as written; see :func:`centredness`).

    Returns:
        The rewritten model (``model`` itself when ``sites`` is empty).

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> from numpyro import handlers
        >>> def model():
        ...     tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        ...     numpyro.sample("theta", dist.Normal(0.0, tau))
        >>> tr = handlers.trace(handlers.seed(noncentre(model, ["theta"]), 0)).get_trace()
        >>> tr["theta_decentered"]["type"], tr["theta"]["type"]
        ('sample', 'deterministic')
    """
    centring = dict(sites) if isinstance(sites, Mapping) else dict.fromkeys(sites, 0.0)
    if not centring:
        return model

    def config(site):
        if site["name"] in centring:
            shape_params = LOC_SCALE_FAMILIES.get(type(_family(site["fn"])), ())
            c = centring[site["name"]]
            c = float(c) if np.ndim(c) == 0 else jnp.asarray(c)
            return LocScaleReparam(c, shape_params=shape_params)
        return None

    return handlers.reparam(model, config=config)


class _Fit(NamedTuple):
    # A model's variational Gaussian, with what maps it back onto the model's sites.
    fit: object
    info: object
    unravel: object


def _gaussian_fit(model, args, kwargs, key) -> _Fit:
    info = initialize_model(
        jr.fold_in(key, 0),
        model,
        model_args=args,
        model_kwargs=kwargs,
        init_strategy=init_to_median,
        dynamic_args=False,
    )
    x0, unravel = ravel_pytree(info.param_info.z)

    def potential(x):
        return info.potential_fn(unravel(x))

    fit = jax.jit(lambda x, k: gaussian_vi_fit(potential, x, k, **ELBO_FIT))(x0, jr.fold_in(key, 1))
    return _Fit(fit, info, unravel)


def _elbo(fitted: _Fit, key, num_draws):
    fit, info, unravel = fitted
    d = fit.loc.shape[0]
    eps = jr.normal(jr.fold_in(key, 2), (num_draws, d), fit.loc.dtype)
    log_p = -jax.vmap(lambda x: info.potential_fn(unravel(x)))(fit.loc + eps @ fit.chol.T)
    log_q = -0.5 * jnp.sum(eps**2, -1) - jnp.sum(jnp.log(jnp.diagonal(fit.chol)))
    elbo = jnp.mean(log_p - log_q) + 0.5 * d * jnp.log(2 * jnp.pi)
    elbo = jnp.where(fit.ok & jnp.isfinite(elbo), elbo, -jnp.inf)
    return float(elbo), int(fit.n_grad) + num_draws


def _centring_of(noncentred: _Fit, sites) -> dict:
    # From the fit with every site non-centred: 1 - Var(eta_j), eta_j's prior being N(0, 1).
    variance = noncentred.unravel(jnp.sum(noncentred.fit.chol**2, -1))
    return {s: np.clip(1.0 - np.asarray(variance[f"{s}_decentered"]), 0.0, 1.0) for s in sites}


def centredness(model, *args, key=None, **kwargs) -> dict:
    """Each hierarchical site's per-element degree of centring, from a Gaussian fit.

    ``c = clip(1 - v, 0, 1)`` with ``v`` the variance of an element's standardised draw
    ``eta`` (prior ``N(0, 1)``) under the variational Gaussian of the model with every
    site non-centred (:func:`gaussian_elbo`'s fit): near 1 where the data pin the element
    down (centre it), near 0 where its prior dominates (non-centre it). For a Gaussian
    prior and likelihood, ``1 - v`` is the share of the element's posterior precision that
    comes from the data. ``noncentre(model, centredness(model))`` is the partial
    parameterisation :func:`choose_parameterisation` tries.

    Args:
        model: a NumPyro model with continuous latent sites.
        *args: its positional arguments.
        key: PRNG key (default ``jax.random.key(0)``).
        **kwargs: its keyword arguments.

    Returns:
        ``{site: c}``, ``c`` an array of the site's shape, for every
        :func:`hierarchical_sites` site.

    Example:
        >>> import numpy as np, numpyro, numpyro.distributions as dist
        >>> def model():  # two effects measured well, two hardly at all
        ...     tau = numpyro.sample("tau", dist.HalfNormal(3.0))
        ...     theta = numpyro.sample("theta", dist.Normal(0.0, tau).expand([4]).to_event(1))
        ...     sd, y = np.array([0.05, 0.1, 20.0, 30.0]), np.array([2.5, -1.0, 1.0, 0.0])
        ...     numpyro.sample("y", dist.Normal(theta, sd).to_event(1), obs=y)
        >>> (centredness(model)["theta"] > 0.5).tolist()
        [True, True, False, False]
    """
    sites = hierarchical_sites(model, *args, **kwargs)
    fitted = _gaussian_fit(noncentre(model, sites), args, kwargs, as_key(key))
    return _centring_of(fitted, sites)


#: A site whose elements' centring all lie within this of 0 (or of 1) is taken as fully
#: non-centred (centred): the partly centred candidate would differ little from a full
#: one already scored, and its Gaussian fit is not worth its gradients.
NEAR_END = 0.25


def gaussian_elbo(model, *args, key=None, num_draws: int = ELBO_DRAWS, **kwargs):
    """The ELBO of the variational Gaussian of a model's posterior (unconstrained space).

    :func:`~numpyro_coupling.preconditioning.gaussian_vi_fit` from the prior medians and
    the identity (:data:`ELBO_FIT`; no Laplace stage, which has no mode to find in a
    funnel and there costs more than the fit), then a Monte Carlo estimate of
    ``E_q[log p(x, y)] + H(q)`` on ``num_draws`` fresh draws.

    Args:
        model: a NumPyro model with continuous latent sites.
        *args: its positional arguments.
        key: PRNG key (default ``jax.random.key(0)``); the same key gives the same base
            draws to any model of the same dimension.
        num_draws: draws of the ELBO estimate.
        **kwargs: its keyword arguments.

    Returns:
        ``(elbo, n_grad)``: the estimate (``-inf`` where the fit failed) and the
        log-density evaluations spent (the fit's gradients and the estimate's draws).

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(1.0, 2.0).expand([2]).to_event(1))
        >>> elbo, _ = gaussian_elbo(model)
        >>> round(abs(float(elbo)), 3)  # a Gaussian posterior: the ELBO is log Z = 0
        0.0
    """
    key = as_key(key)
    return _elbo(_gaussian_fit(model, args, kwargs, key), key, num_draws)


class Parameterisation(NamedTuple):
    """The parameterisation :func:`choose_parameterisation` chose.

    Attributes:
        model: the model to sample (the given one, or it with ``noncentred`` rewritten).
        noncentred: the sites rewritten (empty: the model as written).
        elbos: ``{candidate: Gaussian ELBO}`` of every candidate tried; a candidate is the
            tuple of the sites it non-centres, ``"{site} (partial)"`` for a site centred
            element by element.
        n_grad: log-density evaluations spent on the choice.
        centring: ``{site: c}`` for the sites centred partially (:func:`centredness`;
            empty where every site in ``noncentred`` is fully non-centred).
    """

    model: object
    noncentred: tuple
    elbos: dict
    n_grad: int
    centring: dict = {}


def choose_parameterisation(model, *args, key=None, margin: float = ELBO_MARGIN, **kwargs):
    """Centre or non-centre a model's hierarchical sites, whichever is nearer to Gaussian.

    The candidates are the model as written and its :func:`hierarchical_sites` all
    non-centred, then, with several such sites, each one flipped from the better of the
    two, then every site centred element by element (:func:`centredness`, from the fit of
    the non-centred model; tried unless every site's elements lie within
    :data:`NEAR_END` of one end). Each is scored by :func:`gaussian_elbo` on the same base
    draws, and a
    candidate replaces the current choice when its ELBO is higher by more than ``margin``
    nats. A model without hierarchical sites costs nothing.

    Args:
        model: a NumPyro model with continuous latent sites.
        *args: its positional arguments.
        key: PRNG key (default ``jax.random.key(0)``).
        margin: nats a candidate must gain over the current choice.
        **kwargs: its keyword arguments.

    Returns:
        :class:`Parameterisation`.

    Example:
        >>> import numpy as np, numpyro, numpyro.distributions as dist
        >>> def model(sigma):  # eight schools, centred
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        ...     tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        ...     theta = numpyro.sample("theta", dist.Normal(mu, tau).expand([8]).to_event(1))
        ...     y = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
        ...     numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)
        >>> sigma = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])
        >>> choose_parameterisation(model, sigma).noncentred  # vague data: a funnel
        ('theta',)

        With ``sigma / 10`` (each school's effect well measured) the model stays as written.
    """
    sites = hierarchical_sites(model, *args, **kwargs)
    if not sites:
        return Parameterisation(model, (), {}, 0)
    key = as_key(key)
    elbos, spent, noncentred_fit = {}, 0, None

    def score(candidate, rewritten):
        nonlocal spent, noncentred_fit
        if candidate not in elbos:
            fitted = _gaussian_fit(rewritten, args, kwargs, key)
            if candidate == tuple(sites):  # the fit the per-element centring is read from
                noncentred_fit = fitted
            elbos[candidate], n_grad = _elbo(fitted, key, ELBO_DRAWS)
            spent += n_grad
        return elbos[candidate]

    def full(noncentred):
        return score(noncentred, noncentre(model, noncentred))

    best = tuple(sites) if full(tuple(sites)) > full(()) + margin else ()
    if len(sites) > 1:
        for site in sites:
            flipped = tuple(s for s in sites if (s in best) != (s == site))
            if full(flipped) > full(best) + margin:
                best = flipped
    centring = _centring_of(noncentred_fit, sites) if bool(noncentred_fit.fit.ok) else {}
    if any(not (np.all(c <= NEAR_END) or np.all(c >= 1 - NEAR_END)) for c in centring.values()):
        candidate = tuple(f"{s} (partial)" for s in sites)
        partly = noncentre(model, centring)
        if score(candidate, partly) > elbos[best] + margin:
            return Parameterisation(partly, tuple(sites), elbos, spent, centring)
    return Parameterisation(noncentre(model, best), best, elbos, spent)
