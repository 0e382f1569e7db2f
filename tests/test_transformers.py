"""Targeted numerics of the pure transformer functions (tails, saturation, gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from numpyro_coupling.normal_tails import log_ndtri
from numpyro_coupling.transformers import MixtureGaussianCDF, RQSpline


def test_spline_identity_tails_far_out(dtype):
    t = RQSpline(n_bins=8, interval=4.0)
    params = 0.7 * jax.random.normal(jax.random.key(0), (5, t.n_params), dtype)
    x = jnp.array([-1e4, -4.0, 0.3, 4.0, 1e4], dtype)
    y, log_det = jax.jit(t.forward)(x, params)
    assert y[0] == x[0] and y[-1] == x[-1]  # identity outside the interval, bit for bit
    assert bool(jnp.isfinite(log_det).all()) and log_det[0] == 0 and log_det[-1] == 0
    # Continuous at the boundaries: the interval's ends map to themselves.
    np.testing.assert_allclose(y[1], -4.0, atol=1e-5)
    np.testing.assert_allclose(y[3], 4.0, atol=1e-5)
    xr, inv_log_det = jax.jit(t.inverse)(y, params)
    np.testing.assert_allclose(xr, x, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(inv_log_det, -log_det, atol=1e-4)


def test_spline_gradients_finite_at_knots_and_boundaries():
    t = RQSpline(n_bins=4, interval=2.0)
    params = jnp.zeros(t.n_params)  # uniform knots at -2, -1, 0, 1, 2
    xs = jnp.array([-2.0, -1.0, 0.0, 1.0, 2.0])

    def f(x, p):
        y, ld = t.forward(x, p)
        return y + ld

    gx = jax.vmap(jax.grad(f), (0, None))(xs, params)
    gp = jax.vmap(jax.grad(f, argnums=1), (0, None))(xs, params)
    assert bool(jnp.isfinite(gx).all() and jnp.isfinite(gp).all())


@pytest.mark.parametrize("x_far", [12.0, 40.0, 1e3])
def test_mixture_cdf_stays_injective_in_the_tails(x_far, dtype):
    """Far tails go through log-space, never a clipped CDF (which saturates near |z| 4.75)."""
    t = MixtureGaussianCDF(n_components=3)
    params = t.pack(
        jnp.array([0.2, 0.5, 0.3]), jnp.array([-1.0, 0.0, 2.0]), jnp.array([0.5, 1.0, 0.7])
    ).astype(dtype)
    x = jnp.array([-x_far, -x_far / 2, x_far / 2, x_far], dtype)
    y, log_det = jax.jit(t.forward)(x, jnp.broadcast_to(params, (4, t.n_params)))
    assert bool(jnp.all(jnp.diff(y) > 0)) and bool(jnp.isfinite(log_det).all())
    assert float(jnp.abs(y).max()) > 4.75
    xr, _ = jax.jit(t.inverse)(y, jnp.broadcast_to(params, (4, t.n_params)))
    rtol = 1e-5 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(xr, x, rtol=rtol)


def test_mixture_cdf_absurd_inputs_stay_finite(dtype):
    # Past |z| ~ 1e19 (float32) z^2 overflows; the map saturates there instead of NaN.
    t = MixtureGaussianCDF(n_components=3)
    params = t.pack(
        jnp.array([0.2, 0.5, 0.3]), jnp.array([-1.0, 0.0, 2.0]), jnp.array([0.5, 1.0, 0.7])
    ).astype(dtype)
    big = float(jnp.finfo(dtype).max)
    x = jnp.array([-big, -1e20, 1e20, big], dtype)
    y, log_det = t.forward(x, jnp.broadcast_to(params, (4, t.n_params)))
    assert bool(jnp.isfinite(y).all() and jnp.isfinite(log_det).all())
    assert bool(jnp.all(jnp.diff(y) >= 0))


def test_mixture_cdf_inverse_gradients_by_implicit_function(x64):
    t = MixtureGaussianCDF(n_components=3)
    params = 0.5 * jax.random.normal(jax.random.key(1), (t.n_params,), jnp.float64)
    y = jnp.array(0.7, jnp.float64)
    check_grads(
        jax.jit(lambda y, p: t.inverse(y, p)[0]), (y, params), order=1, modes=["fwd", "rev"]
    )
    check_grads(
        jax.jit(lambda y, p: t.inverse(y, p)[1]), (y, params), order=1, modes=["fwd", "rev"]
    )


def test_log_ndtri_inverts_log_ndtr_deep_in_the_tail(x64):
    from jax.scipy.special import log_ndtr

    y = jnp.array([-1e4, -300.0, -40.0, -5.0, -0.5, 0.0])
    np.testing.assert_allclose(log_ndtri(log_ndtr(y)), y, rtol=1e-12)
    check_grads(log_ndtri, (log_ndtr(jnp.array([-30.0, -2.0])),), order=1, modes=["fwd"])
