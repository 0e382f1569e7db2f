"""fit() and flow_module(): tiny, deterministic runs (a few hundred steps, small nets)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta

from numpyro_coupling import Bijection, CouplingFlow, coupling_flow
from numpyro_coupling.train import (
    FitState,
    NonFiniteLossError,
    fit,
    flow_from_params,
    flow_module,
    partition_flow,
)

# One setting shared by most tests, so they reuse a single compilation of the training loop.
KW = dict(batch_size=64, learning_rate=1e-2, chunk_size=50, progress_bar=False)
N = 256


def small_flow(key=0, d=2, transformer="affine", n_layers=2):
    return coupling_flow(jr.key(key), (d,), transformer=transformer, n_layers=n_layers, nn_width=8)


def banana(n, key=0):
    """Curved 2-D data (standardised scale): x1 ~ N(0,1), x2 | x1 ~ N(x1^2 - 1, 0.5^2)."""
    k1, k2 = jr.split(jr.key(key))
    x1 = jr.normal(k1, (n,))
    x2 = x1**2 - 1.0 + 0.5 * jr.normal(k2, (n,))
    return jnp.stack([x1, x2], -1)


def mean_nll(flow, x):
    return float(-jnp.mean(flow.log_prob(x)))


def flat_params(flow):
    return np.concatenate([np.ravel(p) for p in jax.tree.leaves(partition_flow(flow)[0])])


# ----------------------------------------------------------------------------- fit


def test_fit_lowers_the_nll():
    X = banana(N)
    flow = small_flow()
    fitted, losses = fit(flow, X, key=jr.key(1), steps=200, **KW)
    assert losses.shape == (200,) and np.isfinite(losses).all()
    assert losses[-30:].mean() < losses[:30].mean() - 0.3
    assert mean_nll(fitted, X) < mean_nll(flow, X) - 0.3
    # The base distribution stays the fixed reference N(0, I).
    for before, after in zip(jax.tree.leaves(flow.base_dist), jax.tree.leaves(fitted.base_dist)):
        np.testing.assert_array_equal(before, after)


def test_early_stopping_returns_best_parameters():
    # Validation data from another distribution: its NLL soon rises while training goes on.
    X = banana(N) + jnp.array([3.0, 0.0])
    val = banana(N, key=5)
    flow = small_flow()
    fitted, losses, state = fit(
        flow, X, key=jr.key(1), steps=200, validation=val, patience=2, return_state=True, **KW
    )
    assert len(losses) < 200, "early stopping did not trigger"
    assert state.since_best == 2
    best = int(np.argmin(state.val_losses))
    assert best < len(state.val_losses) - 1
    assert mean_nll(fitted, val) == pytest.approx(state.val_losses.min(), abs=1e-5)
    assert state.val_losses.min() < state.val_losses[-1]


def test_validation_fraction_holds_data_out():
    X = banana(N + 64)
    _, losses, state = fit(
        small_flow(), X, key=jr.key(1), steps=200, validation=0.2, return_state=True, **KW
    )
    assert len(losses) == 200 and len(state.val_losses) == 5  # steps 0, 50, ..., 200


class DriftingShift(Bijection):
    """``z = x + c`` whose log-det turns NaN once ``c`` passes 1: a loss that breaks mid-run."""

    _params = ("c",)

    def __init__(self, c):
        self.c = c
        self.shape = (2,)

    def transform_and_log_det(self, x):
        log_det = jnp.where(self.c > 1.0, jnp.nan, 0.0) * jnp.ones(x.shape[:-1])
        return x + self.c, log_det

    def inverse_and_log_det(self, y):
        return y - self.c, jnp.zeros(y.shape[:-1])


def test_nan_loss_raises_with_step_and_last_finite_flow():
    X = jr.normal(jr.key(0), (128, 2)) - 5.0  # pulls c up from 0 towards 5
    flow = CouplingFlow(DriftingShift(jnp.zeros(())))
    with pytest.raises(FloatingPointError, match=r"non-finite at step \d+") as info:
        fit(flow, X, key=jr.key(1), steps=300, **{**KW, "learning_rate": 0.1})
    err = info.value
    assert isinstance(err, NonFiniteLossError)
    assert 0 < err.step < 300
    assert len(err.losses) == err.step and np.isfinite(err.losses).all()
    # The parameters the failing step started from: finite, and past the breaking point.
    c_last = float(err.last_finite_flow.bijection.c)
    assert np.isfinite(c_last) and c_last > 1.0
    assert err.state.step == err.step


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones((10, 3)), r"shape \(n, 2\).*got shape \(10, 3\)"),
        (np.ones(10), r"shape \(n, 2\).*got shape \(10,\)"),
        (np.ones((0, 2)), "empty"),
        (np.array([[0.0, np.nan], [1.0, 1.0], [np.inf, np.nan]]), r"2 NaN and 1 infinite.*2 of 3"),
    ],
)
def test_bad_data_is_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        fit(small_flow(), bad, key=jr.key(0), steps=10, **KW)


def test_weight_decay_shrinks_the_parameters():
    X = banana(N)
    plain, _ = fit(small_flow(), X, key=jr.key(1), steps=100, **KW)
    decayed, losses = fit(small_flow(), X, key=jr.key(1), steps=100, weight_decay=5.0, **KW)
    assert np.isfinite(losses).all()
    # AdamW shrinks every leaf by lr_t * weight_decay per step (exp(-2.5) in all here,
    # against which the gradient pulls back): the norm comes out at 0.43 of the plain run's.
    assert np.linalg.norm(flat_params(decayed)) < 0.7 * np.linalg.norm(flat_params(plain))


def test_average_returns_the_debiased_average_of_the_iterates():
    X, steps = banana(N), 6
    average = 0.4  # a time constant of 2.4 steps
    decay = 1 - 1 / (average * steps)
    # The iterates of the plain run, one step at a time (resume keeps the same schedule).
    state, iterates = None, []
    for stop in range(1, steps + 1):
        flow, _, state = fit(
            small_flow(), X, key=jr.key(4), steps=steps, stop_at=stop, resume=state,
            return_state=True, **KW,
        )  # fmt: skip
        iterates.append(flat_params(flow))
    weights = (1 - decay) * decay ** np.arange(steps - 1, -1, -1)
    expected = weights @ np.stack(iterates) / (1 - decay**steps)
    averaged, _ = fit(small_flow(), X, key=jr.key(4), steps=steps, average=average, **KW)
    np.testing.assert_allclose(flat_params(averaged), expected, rtol=0, atol=1e-6)
    assert np.abs(flat_params(averaged) - iterates[-1]).max() > 1e-4  # not the last iterate


def test_bad_arguments_are_rejected():
    X = banana(N)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="average"):
            fit(small_flow(), X, key=jr.key(0), steps=10, average=bad, **KW)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="weight_decay"):
            fit(small_flow(), X, key=jr.key(0), steps=10, weight_decay=bad, **KW)
    with pytest.raises(ValueError, match="patience needs validation"):
        fit(small_flow(), X, key=jr.key(0), steps=10, patience=3, **KW)
    with pytest.raises(ValueError, match="fraction"):
        fit(small_flow(), X, key=jr.key(0), steps=10, validation=1.5, **KW)
    with pytest.raises(ValueError, match="validation must have shape"):
        fit(small_flow(), X, key=jr.key(0), steps=10, validation=np.ones((4, 3)), **KW)


def test_resume_equals_an_uninterrupted_run():
    X = banana(N)
    flow = small_flow()
    whole, losses = fit(flow, X, key=jr.key(3), steps=200, **KW)
    _, first, state = fit(flow, X, key=jr.key(3), steps=200, stop_at=100, return_state=True, **KW)
    assert isinstance(state, FitState) and state.step == 100 and len(first) == 100
    resumed, all_losses = fit(flow, X, key=jr.key(3), resume=state, **KW)
    np.testing.assert_allclose(all_losses, losses, rtol=0, atol=1e-6)
    np.testing.assert_allclose(flat_params(resumed), flat_params(whole), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="resume continues a run of steps=200"):
        fit(flow, X, key=jr.key(3), steps=300, resume=state, **KW)


MESH_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, jax.random as jr, numpy as np
    from numpyro_coupling import coupling_flow
    from numpyro_coupling.train import fit, partition_flow
    assert len(jax.devices()) == 4, jax.devices()
    X = jr.normal(jr.key(0), (256, 2)) * jnp.array([1.0, 0.3])
    flow = coupling_flow(jr.key(1), (2,), transformer="affine", n_layers=2, nn_width=8)
    kw = dict(key=jr.key(2), steps=60, batch_size=64, chunk_size=30, progress_bar=False)
    one, l1 = fit(flow, X, **kw)
    explicit = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    four, l4 = fit(flow, X, mesh=explicit, **kw)
    auto, la = fit(flow, X, mesh="auto", **kw)
    flat = lambda f: np.concatenate([np.ravel(p) for p in jax.tree.leaves(partition_flow(f)[0])])
    np.testing.assert_allclose(l4, l1, atol=1e-5)
    np.testing.assert_allclose(la, l1, atol=1e-5)
    np.testing.assert_allclose(flat(four), flat(one), atol=1e-5)
    print("MESH_OK", float(np.abs(l4 - l1).max()))
    """
)


def test_four_device_mesh_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0 and "MESH_OK" in out.stdout, out.stdout + out.stderr[-3000:]


# ---------------------------------------------------------------------- flow_module


def run_svi(svi, n_steps, *args):
    """A jitted ``svi.update`` loop (compiles faster than ``svi.run`` for these tiny tests)."""
    state = svi.init(jr.key(0), *args)
    update = jax.jit(svi.update)
    losses = []
    for _ in range(n_steps):
        state, loss = update(state, *args)
        losses.append(loss)
    return svi.get_params(state), np.asarray(losses)


def test_flow_module_trains_with_svi_and_reads_back():
    X = banana(256)
    flow0 = small_flow()

    def model(X):
        numpyro.sample("x", flow_module("density", flow0), obs=X)

    svi = SVI(model, lambda X: None, optax.adam(1e-2), Trace_ELBO())
    params, losses = run_svi(svi, 300, X)
    assert set(params) == {"density$params"}
    learnt = flow_from_params("density", flow0, params)
    assert mean_nll(learnt, X) < mean_nll(flow0, X) - 0.3
    # The SVI loss is the summed NLL of the data under the read-back flow.
    assert float(losses[-1]) == pytest.approx(mean_nll(learnt, X) * len(X), rel=0.02)
    with pytest.raises(KeyError, match="density2"):
        flow_from_params("density2", flow0, params)
    # Called outside any handler (as numpyro.param would) the model sees the flow as given.
    assert flow_module("density", flow0) is flow0


def test_flow_noise_regression_learns_the_slope():
    # y = 2 x + eps with skewed, non-Gaussian noise eps in R^2 (second coordinate unused).
    k1, k2 = jr.split(jr.key(0))
    n = 400
    x = jr.normal(k1, (n,))
    eps = jnp.stack([jr.exponential(k2, (n,)) - 1.0, 0.3 * jr.normal(jr.key(7), (n,))], -1)
    y = jnp.stack([2.0 * x, jnp.zeros(n)], -1) + eps
    noise0 = small_flow()

    def model(x, y):
        slope = numpyro.sample("slope", dist.Normal(0.0, 10.0))
        noise = flow_module("noise", noise0)
        mean = jnp.stack([slope * x, jnp.zeros_like(x)], -1)
        # A shift has a unit Jacobian, so the residual density is the density of y given x.
        numpyro.sample("residual", noise, obs=y - mean)

    guide = AutoDelta(model)
    svi = SVI(model, guide, optax.adam(2e-2), Trace_ELBO())
    params, _ = run_svi(svi, 300, x, y)
    slope = float(guide.median(params)["slope"])
    assert slope == pytest.approx(2.0, abs=0.15)
    noise = flow_from_params("noise", noise0, params)
    assert mean_nll(noise, y - jnp.stack([slope * x, 0 * x], -1)) < mean_nll(noise0, eps)


def test_chain_of_plain_numpyro_transforms_is_trainable():
    # fit works for any TransformedDistribution whose transforms hold float arrays.
    from numpyro.distributions.transforms import AffineTransform

    base = dist.Normal(jnp.zeros(2), 1.0).to_event(1)
    flow = dist.TransformedDistribution(base, AffineTransform(jnp.zeros(2), jnp.ones(2)))
    X = jr.normal(jr.key(0), (256, 2)) * 0.5 + 2.0
    fitted, _ = fit(flow, X, key=jr.key(1), steps=200, **{**KW, "learning_rate": 5e-2})
    np.testing.assert_allclose(fitted.transforms[0].loc, [2.0, 2.0], atol=0.15)
