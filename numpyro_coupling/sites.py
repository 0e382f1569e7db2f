"""Reading a NumPyro model's sites: one prototype trace, latent shapes, unconstrained draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import unconstrain_fn

__all__ = [
    "discrete_latent_sites",
    "latent_shapes",
    "observed_sites",
    "prototype_trace",
    "unconstrained_draws",
]


def prototype_trace(model, args=(), kwargs=None) -> dict:
    """One trace of ``model``, with no effect outside it.

    Continuous sites take values from ``init_to_uniform``, so models with improper priors
    trace too; discrete sites are sampled from their own distribution.

    Args:
        model: the NumPyro model.
        args: model arguments.
        kwargs: model keyword arguments.

    Returns:
        The trace (an ordered dict ``site name -> site``).

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> list(prototype_trace(model))
        ['s']
    """
    with handlers.block():
        return handlers.trace(
            handlers.substitute(handlers.seed(model, 0), substitute_fn=init_to_uniform)
        ).get_trace(*args, **(kwargs or {}))


def latent_shapes(trace) -> dict:
    """``site -> shape`` of a trace's latent (unobserved) sample sites.

    Example:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        >>> latent_shapes(prototype_trace(model))
        {'x': (3,)}
    """
    return {
        name: tuple(jnp.shape(site["value"]))
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def discrete_latent_sites(trace) -> list[str]:
    """The names of a trace's latent sample sites with a discrete support."""
    return [
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"] and site["fn"].support.is_discrete
    ]


def observed_sites(trace) -> list[str]:
    """The names of a trace's observed sample sites (``numpyro.factor`` terms included)."""
    return [n for n, s in trace.items() if s["type"] == "sample" and s["is_observed"]]


def unconstrained_draws(model, samples: dict, *args, **kwargs) -> dict:
    """Map constrained draws of a model's latent sites to its unconstrained space.

    Args:
        model: the NumPyro model.
        samples: dict ``site -> (*batch, *site_shape)`` holding every latent site (other
            keys are ignored).
        *args: model arguments.
        **kwargs: model keyword arguments.

    Returns:
        dict ``site -> (*batch, *unconstrained_site_shape)`` (a simplex of ``K`` entries
        becomes ``K - 1`` reals).

    Raises:
        ValueError: a latent site is missing or its draws have the wrong trailing shape.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> unconstrained_draws(model, {"s": jnp.array([1.0, jnp.e])})["s"].round(4).tolist()
        [0.0, 1.0]
    """
    shapes = latent_shapes(prototype_trace(model, args, kwargs))
    missing = sorted(set(shapes) - set(samples))
    if missing:
        raise ValueError(f"samples lack the latent sites {missing}")
    draws = {k: jnp.asarray(samples[k]) for k in shapes}
    batch = None
    for k, v in draws.items():
        n = len(shapes[k])
        if v.shape[v.ndim - n :] != shapes[k] or v.ndim < n:
            raise ValueError(f"draws of {k!r} have shape {v.shape}; expected (..., *{shapes[k]})")
        b = v.shape[: v.ndim - n]
        if batch is not None and b != batch:
            raise ValueError(f"draws disagree on the batch shape: {batch} vs {b} ({k!r})")
        batch = b
    flat = {k: v.reshape((-1,) + shapes[k]) for k, v in draws.items()}
    out = jax.vmap(lambda s: unconstrain_fn(model, args, kwargs, s))(flat)
    return {k: v.reshape(batch + v.shape[1:]) for k, v in out.items()}
