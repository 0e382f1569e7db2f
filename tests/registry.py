"""The one registry of every bijection: each entry feeds the whole contract suite.

An entry is ``name -> make(key, shape, dtype)`` returning a bijection over the event
``shape``. :func:`build` then perturbs every trainable array, so no layer is tested at its
(identity) initialisation. Adding a bijection is one line here.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import numpyro_coupling as nc


def randomize(bijection, key, scale):
    """Perturb every trainable array so no layer sits at its (identity) initialisation."""
    params, static = eqx.partition(bijection, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jr.split(key, max(len(leaves), 1))
    leaves = [leaf + scale * jr.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)


def _coupling(cls, **kw):
    return lambda key, shape, dtype: cls(
        key, shape=shape, nn_width=16, nn_depth=2, dtype=dtype, **kw
    )


def _chain(key, shape, dtype):
    # Cheap-to-compile layers of every kind; each coupling is covered on its own as well.
    keys = jr.split(key, 4)
    return nc.Chain(
        [
            REGISTRY["actnorm"](keys[0], shape, dtype),
            REGISTRY["spline"](keys[1], shape, dtype),
            nc.Flip(shape),
            REGISTRY["affine"](keys[2], shape, dtype),
            REGISTRY["lu"](keys[3], shape, dtype),
            REGISTRY["householder"](keys[3], shape, dtype),
        ]
    )


def _guide_coupling(transformer):
    # The first coupling of AutoCouplingFlow's stack: its transformer and conditioner.
    return lambda key, shape, dtype: nc.coupling_layers(
        key,
        shape,
        transformer=transformer,
        n_layers=1,
        nn_width=16,
        permutation="bits",
        input_bound=5.0,
        linear_rank=2,
        dtype=dtype,
    ).bijections[0]


#: Every transformer, by the names of the package's own registry: the property suite
#: runs on each (the options keep the spline's interval and the mixture small).
TRANSFORMERS = {
    name: nc.make_transformer(name, **options)
    for name, options in {
        "affine": {},
        "additive": {},
        "spline": {"n_bins": 8, "interval": 4.0},
        "mixture": {"n_components": 5},
        "loc_scale": {},
        "loc_scale_spline": {"n_bins": 8, "interval": 4.0},
    }.items()
}
assert set(TRANSFORMERS) == set(nc.TRANSFORMERS)


COUPLING_NAMES = (
    "affine",
    "additive",
    "spline",
    "spline_wide",
    "mixture",
    "affine_alternating",
    "guide_loc_scale",
    "guide_loc_scale_spline",
)

#: Conditional couplings: ``name -> make(key, shape, dtype)`` reading a context of
#: ``CONTEXT_SHAPE``; :func:`build` perturbs them too. For a fixed context each is a
#: bijection of ``x`` (:class:`~numpyro_coupling.Conditioned`); the contract suite tests
#: them with contexts of their own (``test_conditional_*``).
CONTEXT_SHAPE = (3,)
CONDITIONAL = {
    "conditional_spline": _coupling(
        nc.RQSplineCoupling, n_bins=6, interval=3.0, context_shape=CONTEXT_SHAPE
    ),
    # Every coordinate active: parameters from the context alone (an elementwise layer).
    "conditional_all_active": lambda key, shape, dtype: _coupling(
        nc.AffineCoupling, mask=[True] * shape[0], context_shape=CONTEXT_SHAPE
    )(key, shape, dtype),
    # Affine couplings and LU layers (cheap to compile): the context through a Chain.
    "conditional_stack": lambda key, shape, dtype: nc.coupling_layers(
        key,
        shape,
        transformer="affine",
        n_layers=2,
        nn_width=16,
        dtype=dtype,
        permutation="lu",
        context_shape=CONTEXT_SHAPE,
    ),
}

REGISTRY = {
    "affine": _coupling(nc.AffineCoupling),
    "additive": _coupling(nc.AdditiveCoupling),
    "spline": _coupling(nc.RQSplineCoupling, n_bins=6, interval=3.0),
    "spline_wide": _coupling(nc.RQSplineCoupling, n_bins=12, interval=8.0, flip=True),
    "mixture": _coupling(nc.MixtureGaussianCDFCoupling, n_components=5),
    "affine_alternating": lambda key, shape, dtype: _coupling(
        nc.AffineCoupling, mask=nc.alternating_mask(shape)
    )(key, shape, dtype),
    "guide_loc_scale": _guide_coupling("loc_scale"),
    "guide_loc_scale_spline": _guide_coupling("loc_scale_spline"),
    "invert": lambda key, shape, dtype: nc.Invert(_coupling(nc.AffineCoupling)(key, shape, dtype)),
    "elementwise_spline": lambda key, shape, dtype: nc.Elementwise(
        shape, nc.RQSpline(n_bins=6, interval=3.0), dtype=dtype
    ),
    "elementwise_mixture": lambda key, shape, dtype: nc.Elementwise(
        shape, nc.MixtureGaussianCDF(3), dtype=dtype
    ),
    "flip": lambda key, shape, dtype: nc.Flip(shape),
    "permute": lambda key, shape, dtype: nc.Permute.random(key, shape[0]),
    "householder": lambda key, shape, dtype: nc.HouseholderRotation(
        n_reflections=3, shape=shape, key=key, dtype=dtype
    ),
    "lu": lambda key, shape, dtype: nc.LULinear(shape, key=key, dtype=dtype),
    "actnorm": lambda key, shape, dtype: nc.ActNorm1D(shape, dtype=dtype),
    "chain": _chain,
    "rbig_rotation": lambda key, shape, dtype: nc.Rotation(
        jnp.linalg.qr(jr.normal(key, (shape[0], shape[0])))[0]
    ),
    "rbig_layers": lambda key, shape, dtype: nc.RBIGLayers(
        jnp.linalg.qr(jr.normal(key, (2, shape[0], shape[0])))[0],
        jnp.broadcast_to(nc.MixtureGaussianCDF(3).constant_params(dtype), (2, shape[0], 9)),
        nc.MixtureGaussianCDF(3),
    ),
}


def build(name, shape=(4,), dtype=jnp.float32, seed=0, scale=0.3):
    """Registry entry ``name`` with every trainable array perturbed by ``scale * N(0, 1)``."""
    make_key, noise_key = jr.split(jr.key(seed))
    make = REGISTRY.get(name) or CONDITIONAL[name]
    return randomize(make(make_key, tuple(shape), dtype), noise_key, scale)
