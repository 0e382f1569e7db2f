"""Posteriors with awkward geometry, as NumPyro models: the NeuTra test bed.

* :func:`funnel` -- Neal's funnel, normalised, so a guide's negative ELBO is exactly its
  KL divergence to the posterior.
* :func:`dual_moon` -- a ring with two modes (the potential of NumPyro's NeuTra example).
* :func:`eight_schools` -- the centred eight-schools model, with its real data.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints

__all__ = [
    "EIGHT_SCHOOLS_SIGMA",
    "EIGHT_SCHOOLS_Y",
    "TARGETS",
    "dual_moon",
    "dual_moon_log_density",
    "eight_schools",
    "funnel",
    "funnel_draws",
]

#: Estimated treatment effects of the eight schools (Rubin, 1981).
EIGHT_SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
#: Their standard errors.
EIGHT_SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def funnel(dim: int = 10):
    """Neal's funnel in ``dim`` dimensions: ``v ~ N(0, 3)``, ``x[:dim-1] | v ~ N(0, exp(v/2))``.

    Every factor is a normalised density, so the model's log joint is the log posterior
    itself and ``-ELBO = KL(q || p)`` in nats. Latent sites: ``v`` (scalar) and ``x``
    (``(dim - 1,)``).

    Args:
        dim: total dimension (``>= 2``).

    Example:
        >>> from numpyro import handlers
        >>> tr = handlers.trace(handlers.seed(funnel, 0)).get_trace(dim=4)
        >>> tr["x"]["value"].shape
        (3,)
    """
    if dim < 2:
        raise ValueError(f"the funnel needs dim >= 2, got {dim}")
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([dim - 1]).to_event(1))


def funnel_draws(n: int, dim: int = 10, seed: int = 0) -> dict:
    """Exact independent draws from :func:`funnel` (a reference for plots and tests).

    Returns:
        dict with ``"v"``: ``(n,)`` and ``"x"``: ``(n, dim - 1)``.

    Example:
        >>> draws = funnel_draws(5, dim=3)
        >>> draws["v"].shape, draws["x"].shape
        ((5,), (5, 2))
    """
    rng = np.random.default_rng(seed)
    v = 3.0 * rng.normal(size=n)
    x = np.exp(v / 2)[:, None] * rng.normal(size=(n, dim - 1))
    return {"v": v, "x": x}


def dual_moon_log_density(x):
    """Unnormalised log density of the dual moon: a ring of radius 2, modes at ``x0 = ±2``.

    Args:
        x: ``(..., 2)`` points.

    Returns:
        ``(...)`` log densities.

    Example:
        >>> import jax.numpy as jnp
        >>> bool(dual_moon_log_density(jnp.array([2.0, 0.0])) > dual_moon_log_density(jnp.zeros(2)))
        True
    """
    ring = 0.5 * ((jnp.linalg.norm(x, axis=-1) - 2.0) / 0.4) ** 2
    modes = -0.5 * ((x[..., :1] + jnp.array([-2.0, 2.0])) / 0.6) ** 2
    return logsumexp(modes, axis=-1) - ring


def dual_moon():
    """The dual-moon potential as a model: one latent site ``x`` of shape ``(2,)``.

    An improper flat prior on ``R^2`` plus a ``numpyro.factor`` carrying
    :func:`dual_moon_log_density` (unnormalised, so a guide's loss is ``KL - log Z``).

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro import handlers
        >>> model = handlers.substitute(dual_moon, data={"x": jnp.zeros(2)})
        >>> handlers.trace(model).get_trace()["x"]["fn"].event_shape
        (2,)
    """
    x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (2,)))
    numpyro.factor("dual_moon", dual_moon_log_density(x))


def eight_schools(y=EIGHT_SCHOOLS_Y, sigma=EIGHT_SCHOOLS_SIGMA):
    """The centred eight-schools model (a funnel between ``tau`` and ``theta``).

    ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``, ``theta_j ~ N(mu, tau)``,
    ``y_j ~ N(theta_j, sigma_j)``.

    Args:
        y: ``(J,)`` observed effects (default: the classic data).
        sigma: ``(J,)`` their standard errors.

    Example:
        >>> from numpyro import handlers
        >>> tr = handlers.trace(handlers.seed(eight_schools, 0)).get_trace()
        >>> tr["theta"]["value"].shape, tr["tau"]["fn"].support
        ((8,), Positive(lower_bound=0.0))
    """
    y, sigma = jnp.asarray(y), jnp.asarray(sigma)
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


#: name -> model, as used by the examples and benchmarks.
TARGETS = {"funnel": funnel, "dualmoon": dual_moon, "eightschools": eight_schools}
