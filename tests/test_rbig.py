"""Greedy RBIG, its information measures, and the zero-kernel RBIG warm start."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from sklearn.datasets import make_moons

from numpyro_coupling import (
    Elementwise,
    MixtureGaussianCDF,
    MixtureGaussianCDFCoupling,
    Rotation,
    io,
)
from numpyro_coupling.information import entropy, mutual_information, total_correlation
from numpyro_coupling.mixture_em import fit_gaussian_mixture
from numpyro_coupling.rbig import RBIGFlow, RBIGLayers, fit_rbig
from numpyro_coupling.rbig_coupling import fit_rbig_coupling
from numpyro_coupling.ties import check_continuous, dequantize_ties

FAST = {"n_components": 4, "em_steps": 30, "progress_bar": False}


def moons(n=1000, seed=0):
    x, _ = make_moons(n, noise=0.06, random_state=seed)
    return (x - x.mean(0)) / x.std(0)


# --- building blocks --------------------------------------------------------------------
def test_em_fits_all_columns_at_once():
    rng = np.random.default_rng(0)
    left = np.concatenate([rng.normal(-3, 0.5, 600), rng.normal(2, 1.0, 400)])
    x = jnp.asarray(np.stack([left, rng.normal(1.0, 2.0, 1000)], 1), jnp.float32)
    weights, means, scales = fit_gaussian_mixture(x, n_components=3, em_steps=200)
    assert weights.shape == means.shape == scales.shape == (2, 3)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
    # Column 0: the two free components find the two modes (component 0 is the anchor).
    order = np.argsort(np.asarray(means[0, 1:]))
    np.testing.assert_allclose(np.asarray(means[0, 1:])[order], [-3, 2], atol=0.2)
    np.testing.assert_allclose(np.asarray(weights[0, 1:])[order], [0.6, 0.4], atol=0.05)
    assert float(weights[0, 0]) == pytest.approx(1e-3, rel=1e-3)


def test_elementwise_is_the_transformer_per_coordinate():
    mix = MixtureGaussianCDF(3)
    params = jr.normal(jr.key(0), (4, mix.n_params))
    layer = Elementwise((4,), mix, params)
    x = 2.0 * jr.normal(jr.key(1), (6, 4))
    z, log_det = jax.jit(layer.transform_and_log_det)(x)
    per_column = jax.jit(jax.vmap(mix.forward, in_axes=(1, 0), out_axes=1))
    z_cols, log_det_cols = per_column(x, params)
    np.testing.assert_allclose(z, z_cols, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(log_det, log_det_cols.sum(1), rtol=1e-5)
    with pytest.raises(ValueError, match="params must have shape"):
        Elementwise((4,), mix, params[:3])


def test_rotation_is_fixed_and_checked():
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    rot = Rotation(q)
    assert not jax.tree_util.tree_leaves(eqx.filter(rot, eqx.is_inexact_array))
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(rot.transform(x), np.asarray(x) @ q.T, rtol=1e-6)

    # The matrix is static pytree data: an equal matrix is equal, hashes equal and reuses
    # the compiled program; a different one compares unequal and compiles anew.
    def frozen(r):
        return r.tree_flatten()[1][1]["frozen_matrix"]

    same, other = Rotation(q.copy()), Rotation(q[:, ::-1])
    assert frozen(same) == frozen(rot) and hash(frozen(same)) == hash(frozen(rot))
    assert {frozen(rot): "rot"}[frozen(same)] == "rot"
    assert frozen(other) != frozen(rot) and frozen(rot) != frozen(rot).array
    traces = []

    @jax.jit
    def apply(r, x):
        traces.append(None)
        return r.transform(x)

    apply(rot, x)
    apply(same, x)
    assert len(traces) == 1
    np.testing.assert_allclose(apply(other, x), np.asarray(x) @ q[:, ::-1].T, rtol=1e-6)
    assert len(traces) == 2
    with pytest.raises(ValueError, match="not orthogonal"):
        Rotation(2 * q)
    with pytest.raises(ValueError, match="square"):
        Rotation(q[:2])


# --- the greedy fit ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[0.0, np.nan]] * 50), "NaN or inf"),
        (np.array([[0.0, np.inf]] * 50), "NaN or inf"),
        (np.c_[np.random.default_rng(0).normal(size=50), np.full(50, 3.0)], r"column\(s\) \[1\]"),
        (np.random.default_rng(0).normal(size=50), "2-D"),
        (np.random.default_rng(0).normal(size=(50, 1)) * [1.0, 2.0], "linearly dependent"),
    ],
)
def test_fit_rbig_rejects_bad_data(bad, match):
    with pytest.raises(ValueError, match=match):
        fit_rbig(bad, **FAST)


def test_fit_rbig_rejects_bad_arguments():
    X = np.random.default_rng(0).normal(size=(100, 2))
    with pytest.raises(ValueError, match="n_components"):
        fit_rbig(X, n_components=0, progress_bar=False)
    with pytest.raises(ValueError, match="rotation"):
        fit_rbig(X, rotation="ica", progress_bar=False)
    with pytest.raises(ValueError, match="n_layers"):
        fit_rbig(X, n_layers=0, progress_bar=False)


@pytest.fixture(scope="module")
def moons_fit():
    """A 6-layer float32 fit on two moons (the earlier library gave -inf at (2.5, 0))."""
    X = moons()
    return X, fit_rbig(X, jr.key(0), n_layers=6, **FAST)


def test_rbig_density_is_normalised_and_finite(moons_fit):
    X, flow = moons_fit
    assert isinstance(flow, RBIGFlow) and flow.n_layers == 6
    stack = flow.bijection.bijections[1]
    assert isinstance(stack, RBIGLayers) and len(stack) == 6
    assert stack.layers[0][0] is None and isinstance(stack.layers[1][0], Rotation)
    g = np.linspace(-7.0, 7.0, 161)
    grid = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), jnp.float32)
    log_p = jax.jit(flow.log_prob)(grid)
    assert bool(jnp.isfinite(log_p).all())
    mass = float(jnp.exp(log_p).sum()) * (g[1] - g[0]) ** 2
    assert mass == pytest.approx(1.0, abs=0.02)
    outliers = jnp.asarray([[2.5, 0.0], [8.0, -8.0], [30.0, 0.0]], jnp.float32)
    assert bool(jnp.isfinite(jax.jit(flow.log_prob)(outliers)).all())
    # The greedy layers made progress: the training NLL fell well below layer 0's.
    assert float(-jax.jit(flow.log_prob)(jnp.asarray(X, jnp.float32)).mean()) < 2.1


def test_rbig_sampling_round_trip(moons_fit):
    _, flow = moons_fit
    x = jax.jit(lambda k: flow.sample(k, (64,)))(jr.key(1))
    assert x.shape == (64, 2) and bool(jnp.isfinite(x).all())
    z = flow.base_dist.sample(jr.key(1), (64,))
    np.testing.assert_allclose(jax.jit(flow.to_latent)(x), z, atol=2e-3)


def test_stopping_rule_on_independent_data():
    X = np.random.default_rng(0).normal(size=(1000, 2))
    flow = fit_rbig(X, tol=1e-3, patience=2, **FAST)
    # Nothing to remove: after layer 0 every reduction is noise, so fitting stops at once
    # and the layers that only confirmed convergence are dropped.
    assert flow.n_layers <= 3
    assert len(flow.tc_trace) == len(flow.tc_reductions) + 1
    assert abs(flow.total_correlation) < 0.02
    fixed = fit_rbig(X, n_layers=5, **FAST)
    assert fixed.n_layers == len(fixed.bijection.bijections[1]) == 5
    # On held-out data: stop once the held-out NLL stalls, keep the best depth.
    held = fit_rbig(X, validation=0.2, tol=1e-3, patience=2, **FAST)
    assert held.n_layers == len(held.validation_nll) == int(np.argmin(held.validation_nll)) + 1
    assert held.n_layers <= 3
    with pytest.raises(ValueError, match="validation"):
        fit_rbig(X, validation=1.5, **FAST)


def test_rbig_survives_jit_partition_and_saving(moons_fit, tmp_path):
    X, flow = moons_fit
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    rebuilt = eqx.combine(params, static)
    assert isinstance(rebuilt, RBIGFlow) and rebuilt.tc_reductions == flow.tc_reductions
    loaded = io.load(io.save(tmp_path / "rbig.zip", flow))
    assert isinstance(loaded, RBIGFlow) and loaded.marginal_entropy == flow.marginal_entropy
    x = jnp.asarray(X[:16], jnp.float32)
    log_p = eqx.filter_jit(lambda f: f.log_prob(x))
    np.testing.assert_array_equal(log_p(rebuilt), log_p(flow))
    np.testing.assert_array_equal(log_p(loaded), log_p(flow))


# --- the zero-kernel warm start ---------------------------------------------------------
@eqx.filter_jit
def _layer(bijection, x):
    return bijection.transform_and_log_det(x)


def _log_prob_layerwise(flow, x):
    """``flow.log_prob`` one compiled layer at a time: equal couplings share one compile."""
    total = 0.0
    for b in flow.bijection.bijections:
        x, log_det = _layer(b, x)
        total = total + log_det
    return flow.base_dist.log_prob(x) + total


@pytest.mark.parametrize("d, depth", [(2, 6), (3, 2)])
def test_warm_start_equals_diagonal_rbig_exactly(x64, d, depth):
    rng = np.random.default_rng(d)
    X = moons(400) if d == 2 else rng.standard_t(4, size=(400, d)) @ rng.normal(size=(d, d))
    X = X / X.std(0)
    key = jr.key(3)
    warm = fit_rbig_coupling(X, key, n_layers=depth, nn_width=16, **FAST)
    diag = fit_rbig(X, jr.split(key)[0], n_layers=depth, **FAST)
    Xt = jnp.asarray(np.concatenate([X, 3.0 * rng.normal(size=(50, d))]))
    gap = jnp.abs(_log_prob_layerwise(warm, Xt) - _log_prob_layerwise(diag, Xt))
    assert float(gap.max()) <= 1e-6
    couplings = [b for b in warm.bijection.bijections if isinstance(b, MixtureGaussianCDFCoupling)]
    assert len(couplings) == 2 * depth
    assert all(float(jnp.abs(c.conditioner.final_kernel).max()) == 0.0 for c in couplings)
    # Per block: the first coupling transforms A, the second (on the reversed vector) the
    # rest, so every coordinate is transformed exactly once.
    for first, second in zip(couplings[::2], couplings[1::2]):
        covered = sorted(first.active_idx + tuple(d - 1 - i for i in second.active_idx))
        assert covered == list(range(d))


def test_warm_start_kernels_receive_gradients():
    X = moons()
    warm = fit_rbig_coupling(X, jr.key(0), n_layers=1, nn_width=8, **FAST)
    coupling = warm.bijection.bijections[1]
    assert isinstance(coupling, MixtureGaussianCDFCoupling)
    x = jnp.asarray(X, jnp.float32)
    grads = eqx.filter_jit(eqx.filter_grad(lambda c: c.transform_and_log_det(x)[1].mean()))(
        coupling
    )
    assert float(jnp.abs(grads.conditioner.weights[-1]).max()) > 0
    with pytest.raises(ValueError, match="d >= 2"):
        fit_rbig_coupling(X[:, :1], **FAST)


# --- information measures against closed forms -----------------------------------------
N = 1500
INFO = {"em_steps": 100, "progress_bar": False}


def test_information_of_correlated_gaussians():
    rho, d = 0.6, 3
    R = np.full((d, d), rho) + (1 - rho) * np.eye(d)
    X = np.random.default_rng(0).multivariate_normal(np.zeros(d), R, size=N)
    exact_tc = -0.5 * np.linalg.slogdet(R)[1]
    assert total_correlation(X, **INFO) == pytest.approx(exact_tc, abs=0.05)
    exact_mi = 0.5 * (np.linalg.slogdet(R[:2, :2])[1] - np.linalg.slogdet(R)[1])
    assert mutual_information(X[:, :2], X[:, 2], **INFO) == pytest.approx(exact_mi, abs=0.05)
    exact_h = 0.5 * d * np.log(2 * np.pi * np.e) + 0.5 * np.linalg.slogdet(R)[1]
    assert entropy(X, **INFO) == pytest.approx(exact_h, abs=0.05)


def test_information_of_uniforms():
    rng = np.random.default_rng(1)
    U = rng.uniform(size=(N, 2))
    # Independent but far from Gaussian: no dependence to find, and unit volume.
    assert abs(total_correlation(U, **INFO)) < 0.03
    assert entropy(U, **INFO) == pytest.approx(0.0, abs=0.05)
    assert abs(mutual_information(rng.normal(size=N), rng.uniform(size=N), **INFO)) < 0.03
    with pytest.raises(ValueError, match="same number of rows"):
        mutual_information(U[:10], U[:11])


# --- continuous data only: ties are refused or dequantised -------------------------------
def _tied_examples(n=1000):
    """Rounded normals; a column with 30% exact zeros; half the rows one repeated point."""
    rng = np.random.default_rng(0)
    rounded = np.round(rng.normal(size=(n, 2)))
    zeros = rng.normal(size=n) * (rng.random(n) >= 0.3)
    repeated = rng.normal(size=(n, 2))
    repeated[: n // 2] = repeated[0]
    return rounded, zeros, rng.normal(size=n), repeated


def test_ties_are_refused_naming_the_argument():
    rounded, zeros, other, repeated = _tied_examples()
    remedy = r"is heavily tied.*continuous data.*dequantize=True"
    with pytest.raises(ValueError, match=r"^X " + remedy):
        total_correlation(rounded, **FAST)
    with pytest.raises(ValueError, match=r"^X " + remedy):
        entropy(zeros, **FAST)
    with pytest.raises(ValueError, match=r"^Y is heavily tied: in column 0 the value 0 "):
        mutual_information(other, zeros, **FAST)
    for fit in (fit_rbig, fit_rbig_coupling):
        with pytest.raises(ValueError, match=r"^X is heavily tied.*tied columns: \[0, 1\]"):
            fit(repeated, **FAST)
    # Continuous data pass, however few rows (a value seen once is no tie).
    check_continuous(np.random.default_rng(1).normal(size=(16, 3)))
    check_continuous(np.arange(100.0) % 30)  # 4 copies of each value: 4%, under the limit


def test_dequantized_ties_give_sensible_information():
    rounded, zeros, other, repeated = _tied_examples()
    # Without dequantisation these were 447 nats, 1.5 nats and 326 nats over 100 layers.
    assert abs(total_correlation(rounded, dequantize=True, **FAST)) < 0.05
    assert abs(mutual_information(zeros, other, dequantize=True, **FAST)) < 0.05
    flow = fit_rbig(repeated, jr.key(0), dequantize=True, **FAST)
    # A point shared by both coordinates is real dependence, about log 2 nats once spread.
    assert flow.n_layers < 30 and 0.2 < flow.total_correlation < 1.0


def test_dequantize_ties_spreads_only_tied_columns():
    rounded, zeros, other, _ = _tied_examples(400)
    X = np.asarray(jnp.asarray(np.c_[rounded[:, 0], other, zeros]))  # JAX's float dtype
    Y = np.asarray(dequantize_ties(X, jr.key(0)))
    noise = Y - X
    assert np.abs(noise[:, 0]).max() <= 0.5 and np.abs(noise[:, 0]).min() > 0  # grid 1
    assert (noise[:, 1] == 0).all()  # continuous: left alone
    gap = np.median(np.diff(np.unique(zeros)))
    assert 0 < np.abs(noise[:, 2]).max() <= gap / 2 + 1e-12
    check_continuous(Y)
    np.testing.assert_array_equal(Y, dequantize_ties(X, jr.key(0)))
    assert not np.array_equal(Y, dequantize_ties(X, jr.key(1)))
