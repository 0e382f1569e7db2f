"""Same key, same bits: flows, samples, log-densities and fits are reproducible exactly."""

import hashlib
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import numpyro_coupling as nc
from numpyro_coupling import rbig, train

TRANSFORMERS = ("affine", "additive", "spline", "mixture")


def digest(tree) -> str:
    """SHA-256 of a pytree's structure and of every leaf's dtype, shape and bytes."""
    h = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    h.update(str(treedef).encode())
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array | np.ndarray):
            arr = np.asarray(leaf)
            h.update(f"{arr.dtype}{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()


def make_flow(transformer, seed=0):
    return nc.coupling_flow(
        jr.key(seed), (3,), transformer=transformer, n_layers=2, nn_width=8, zero_init=False
    )


@jax.jit
def sample_and_score(flow, key):
    x = flow.sample(key, (16,))
    return x, flow.log_prob(x)


@pytest.mark.parametrize("transformer", TRANSFORMERS)
def test_same_key_same_flow_samples_and_log_probs(transformer):
    a, b = make_flow(transformer), make_flow(transformer)
    assert digest(a) == digest(b)
    assert digest(a) != digest(make_flow(transformer, seed=1))
    x_a, lp_a = sample_and_score(a, jr.key(5))
    x_b, lp_b = sample_and_score(b, jr.key(5))
    assert digest((x_a, lp_a)) == digest((x_b, lp_b))
    assert bool(jnp.isfinite(lp_a).all())
    x_c, _ = sample_and_score(a, jr.key(6))
    assert not np.array_equal(x_a, x_c)


def test_same_key_same_fit():
    X = jr.normal(jr.key(0), (128, 2)) * jnp.array([1.0, 0.5])
    kw = dict(key=jr.key(1), steps=60, batch_size=32, chunk_size=30, progress_bar=False)
    flow = nc.coupling_flow(jr.key(2), (2,), transformer="spline", n_layers=2, nn_width=8)
    fitted_a, losses_a = train.fit(flow, X, **kw)
    fitted_b, losses_b = train.fit(flow, X, **kw)
    np.testing.assert_array_equal(losses_a, losses_b)
    assert digest(fitted_a) == digest(fitted_b)
    _, losses_c = train.fit(flow, X, **{**kw, "key": jr.key(3)})
    assert not np.array_equal(losses_a, losses_c)


def test_same_key_same_rbig_fit():
    X = np.random.default_rng(0).normal(size=(200, 3)) ** 3
    kw = dict(n_layers=2, n_components=3, rotation="random", em_steps=10, progress_bar=False)
    a = rbig.fit_rbig(X, jr.key(4), **kw)
    b = rbig.fit_rbig(X, jr.key(4), **kw)
    assert digest(a) == digest(b)
    lp = jax.jit(lambda f, x: f.log_prob(x))
    assert digest(lp(a, X[:8])) == digest(lp(b, X[:8]))


_CHILD = textwrap.dedent(
    """
    import hashlib, jax, jax.random as jr, numpy as np, numpyro_coupling as nc
    flow = nc.coupling_flow(
        jr.key(0), (3,), transformer="spline", n_layers=2, nn_width=8, zero_init=False
    )
    x = jr.normal(jr.key(5), (16, 3))
    leaves = jax.tree_util.tree_leaves((flow, flow.log_prob(x)))
    h = hashlib.sha256(b"".join(np.asarray(leaf).tobytes() for leaf in leaves))
    print(h.hexdigest())
    """
)


def test_fresh_process_gives_the_same_bits():
    """No hidden global state: another interpreter (other hash seed) computes the same bits."""
    env = {**os.environ, "PYTHONHASHSEED": "123", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    flow = make_flow("spline")
    x = jr.normal(jr.key(5), (16, 3))
    leaves = jax.tree_util.tree_leaves((flow, flow.log_prob(x)))
    here = hashlib.sha256(b"".join(np.asarray(leaf).tobytes() for leaf in leaves)).hexdigest()
    assert out.stdout.strip().splitlines()[-1] == here


@pytest.mark.parametrize("shape", [(1,), (3, 5), (64,), (7, 13), (130,)])
def test_initial_draws_are_jax_random_draws(shape, dtype):
    """The pooled initial draws are ``jax.random``'s own bits, whatever the pool size."""
    from numpyro_coupling import initial_draws

    key = jr.key(3)
    u = initial_draws.uniform(key, shape, dtype, -0.5, 0.5)
    assert u.shape == shape and u.dtype == dtype
    np.testing.assert_array_equal(u, jr.uniform(key, shape, dtype, -0.5, 0.5))
    np.testing.assert_array_equal(
        initial_draws.normal(key, shape, dtype), jr.normal(key, shape, dtype)
    )


def test_initial_draws_under_jit_and_vmap():
    """Traced keys (a flow built inside ``jit`` or ``vmap``) take ``jax.random`` directly."""
    import equinox as eqx

    from numpyro_coupling import initial_draws

    keys = jr.split(jr.key(0), 3)
    got = jax.jit(jax.vmap(lambda k: initial_draws.uniform(k, (4, 3))))(keys)
    np.testing.assert_array_equal(got, jax.vmap(lambda k: jr.uniform(k, (4, 3)))(keys))

    def layers(k):
        return nc.coupling_layers(k, (3,), n_layers=1, nn_width=4, zero_init=False)

    batched = eqx.filter_vmap(layers)(keys)[0].conditioner.weights[0]
    one = layers(keys[1])[0].conditioner.weights[0]
    np.testing.assert_array_equal(batched[1], one)
