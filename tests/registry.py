"""The one registry of every bijection: each entry feeds the whole contract suite.

An entry is ``name -> build(key, shape, dtype)``; the builder returns a bijection with
generic (non-zero, non-identity) parameters. Adding a bijection is one line here.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import numpyro_coupling as nc


def randomize(bijection, key, scale=0.3):
    """Perturb every trainable array so no layer sits at its (identity) initialisation."""
    params, static = eqx.partition(bijection, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jr.split(key, max(len(leaves), 1))
    leaves = [leaf + scale * jr.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)


def _coupling(cls, **kw):
    def build(key, shape, dtype):
        k1, k2 = jr.split(key)
        layer = cls(k1, shape=shape, nn_width=16, nn_depth=2, dtype=dtype, **kw)
        return randomize(layer, k2)

    return build


def _layer(make):
    def build(key, shape, dtype):
        k1, k2 = jr.split(key)
        return randomize(make(k1, shape, dtype), k2)

    return build


def _chain(key, shape, dtype):
    keys = jr.split(key, 4)
    return nc.Chain(
        [
            REGISTRY["spline"](keys[0], shape, dtype),
            nc.Flip(shape),
            REGISTRY["affine"](keys[1], shape, dtype),
            REGISTRY["lu"](keys[2], shape, dtype),
            REGISTRY["mixture"](keys[3], shape, dtype),
        ]
    )


COUPLING_NAMES = ("affine", "additive", "spline", "spline_wide", "mixture", "affine_alternating")

REGISTRY = {
    "affine": _coupling(nc.AffineCoupling),
    "additive": _coupling(nc.AdditiveCoupling),
    "spline": _coupling(nc.RQSplineCoupling, n_bins=6, interval=3.0),
    "spline_wide": _coupling(nc.RQSplineCoupling, n_bins=12, interval=8.0, flip=True),
    "mixture": _coupling(nc.MixtureGaussianCDFCoupling, n_components=5),
    "affine_alternating": lambda key, shape, dtype: _coupling(
        nc.AffineCoupling, mask=nc.alternating_mask(shape)
    )(key, shape, dtype),
    "flip": lambda key, shape, dtype: nc.Flip(shape),
    "permute": lambda key, shape, dtype: nc.Permute.random(key, shape[0]),
    "householder": lambda key, shape, dtype: nc.HouseholderRotation(
        n_reflections=3, shape=shape, key=key, dtype=dtype
    ),
    "lu": _layer(lambda key, shape, dtype: nc.LULinear(shape, key=key, dtype=dtype)),
    "actnorm": _layer(lambda key, shape, dtype: nc.ActNorm1D(shape, dtype=dtype)),
    "chain": _chain,
}


def build(name, shape=(4,), dtype=jnp.float32, seed=0):
    return REGISTRY[name](jr.key(seed), tuple(shape), dtype)
