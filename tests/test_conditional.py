"""Conditional flows ``p(x | context)``: the distribution a context gives, fitting, files.

The couplings' own laws (round trip, log-det, passive coordinates, triangularity for a
fixed context, broadcasting) are in the contract suite.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO

import numpyro_coupling as nc
from numpyro_coupling.io import load, save


def _flow(d=2, c=2, **kw):
    options = dict(transformer="spline", n_layers=2, nn_width=8, n_bins=4, context_shape=(c,))
    return nc.coupling_flow(jr.key(0), (d,), **{**options, **kw})


def _pairs(n=400, d=2, seed=0):
    """``x | c ~ N(c_0, exp(c_1 / 2)^2)`` in every coordinate."""
    c = jr.normal(jr.key(seed), (n, 2))
    x = c[:, :1] + jnp.exp(0.5 * c[:, 1:]) * jr.normal(jr.key(seed + 1), (n, d))
    return x, c


@eqx.filter_jit
def _distribution_passes(flow, context, key):
    given = flow.condition(context)
    draws = given.sample(key, (7,))
    alone = flow.condition(context[1]).log_prob(draws[:, 1])  # row 1 on its own
    return (
        draws,
        given.rsample(key, (7,)),
        given.log_prob(draws),
        given.log_prob_two_pass(draws),
        alone,
    )


def test_condition_is_a_numpyro_distribution():
    flow = _flow(zero_init=False)
    context = jr.normal(jr.key(2), (5, 2))
    given = flow.condition(context)
    assert isinstance(given, numpyro.distributions.TransformedDistribution)
    assert given.batch_shape == (5,) and given.event_shape == (2,) and given.has_rsample
    draws, rdraws, log_p, two_pass, alone = _distribution_passes(flow, context, jr.key(3))
    assert draws.shape == rdraws.shape == (7, 5, 2) and log_p.shape == (7, 5)
    np.testing.assert_allclose(log_p, two_pass, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(log_p[:, 1], alone, rtol=1e-5, atol=1e-5)
    # At init the flow ignores the context: every context gives the same density.
    fresh = _flow()
    compute = eqx.filter_jit(lambda f, x, c: f.condition(c).log_prob(x))
    np.testing.assert_array_equal(
        compute(fresh, draws[0], context), compute(fresh, draws[0], 10 * context[::-1])
    )


def test_one_dimensional_conditional_flow():
    flow = _flow(d=1, n_layers=3, zero_init=False)
    assert all(isinstance(b, nc.Coupling) for b in flow.bijection.bijections)
    given = flow.condition(jnp.array([[0.0, 0.0], [2.0, -1.0]]))
    grid = jnp.linspace(-8, 8, 4001)[:, None, None]
    dens = jnp.exp(given.log_prob(grid))
    np.testing.assert_allclose(dens.sum(0) * 16 / 4000, 1.0, atol=2e-3)  # each integrates to 1
    assert float(jnp.abs(dens[:, 0] - dens[:, 1]).max()) > 1e-3  # and depends on the context


def test_errors_name_the_context():
    flow = _flow()
    with pytest.raises(ValueError, match=r"conditional \(context_shape=\(2,\)\).*condition"):
        flow.log_prob(jnp.zeros(2))
    with pytest.raises(ValueError, match="context"):
        flow.sample(jr.key(0))
    with pytest.raises(ValueError, match=r"context must have shape \(\*batch, 2\)"):
        flow.condition(jnp.zeros((4, 3)))
    plain = nc.coupling_flow(jr.key(0), (2,), n_layers=1)
    with pytest.raises(ValueError, match="reads no context"):
        plain.condition(jnp.zeros(2))
    with pytest.raises(ValueError, match="bijection must read a context"):
        nc.Conditioned(plain.bijection, jnp.zeros(2))
    with pytest.raises(ValueError, match="at least 2 event coordinates"):
        nc.coupling_flow(jr.key(0), (1,))  # without a context a 1-D event has no split


def test_fit_with_context_options_and_errors():
    x, c = _pairs()
    flow = _flow()
    # One shape of training and validation data throughout: one compilation.
    options = dict(steps=40, batch_size=64, chunk_size=20, progress_bar=False, key=jr.key(1))
    options.update(validation=0.25, average=0.1)
    _, _, half = nc.fit(flow, x, context=c, stop_at=20, return_state=True, **options)
    _, resumed, state = nc.fit(flow, x, context=c, resume=half, return_state=True, **options)
    assert resumed.shape == (40,) and len(state.val_losses) == 3
    assert bool(resumed[-10:].mean() < resumed[:10].mean())
    _, whole = nc.fit(flow, x, context=c, **options)
    np.testing.assert_array_equal(resumed, whole)  # resuming is the uninterrupted run
    options.update(validation=(x[:100], c[:100]), patience=1)
    _, held = nc.fit(flow, x[100:], context=c[100:], **options)
    assert held.shape[0] in (20, 40)
    with pytest.raises(ValueError, match=r"conditional.*pass context="):
        nc.fit(flow, x, **options)
    with pytest.raises(ValueError, match="context must have one row per row of data"):
        nc.fit(flow, x, context=c[:10], **options)
    with pytest.raises(ValueError, match=r"context must have shape \(n, 2\).*context_shape"):
        nc.fit(flow, x, context=c[:, :1], **options)
    with pytest.raises(ValueError, match=r"validation.*pair \(x, context\)"):
        nc.fit(flow, x, context=c, validation=x[:50], steps=10)
    with pytest.raises(ValueError, match="context was given, but the flow reads none"):
        nc.fit(nc.coupling_flow(jr.key(0), (2,), n_layers=1), x, context=c, steps=10)


def test_flow_module_in_a_model_learns_jointly():
    """``numpyro.sample("y", flow.condition(X), obs=Y)``: the flow and a slope by SVI."""
    x, c = _pairs(300)
    y = x + 2.0 * c[:, :1]  # the model must learn the extra slope 2 (the flow the rest)
    flow0 = _flow()

    def model(c, y):
        w = numpyro.param("w", 0.0)
        flow = nc.flow_module("noise", flow0)
        numpyro.sample("y", flow.condition(c), obs=y - w * c[:, :1])

    svi = SVI(model, lambda c, y: None, optax.adam(2e-2), Trace_ELBO())
    result = svi.run(jr.key(0), 150, c, y, progress_bar=False)
    assert float(result.losses[-20:].mean()) < float(result.losses[:20].mean())
    assert float(result.params["w"]) > 0.5  # on its way to 2
    learnt = nc.flow_from_params("noise", flow0, result.params)
    assert learnt.context_shape == (2,)
    # The bound context is data, never a trainable leaf.
    params, _ = nc.partition_flow(flow0.condition(c))
    assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(nc.partition_flow(flow0)[0]))


def test_save_and_load_conditional(tmp_path):
    flow = _flow(zero_init=False)
    x, c = _pairs(20)
    loaded = load(save(tmp_path / "flow.ncf", flow))
    assert loaded.context_shape == (2,)
    compute = eqx.filter_jit(lambda f, x, c: f.condition(c).log_prob(x))
    np.testing.assert_array_equal(compute(loaded, x, c), compute(flow, x, c))
    given = load(save(tmp_path / "given.ncf", flow.condition(c)))
    np.testing.assert_array_equal(given.log_prob(x), flow.condition(c).log_prob(x))


def test_context_elementwise_layer_in_front():
    options = dict(n_layers=2, nn_width=8, context_shape=(2,))
    plain = nc.coupling_layers(jr.key(0), 3, **options)
    with_front = nc.coupling_layers(jr.key(0), 3, context_elementwise=True, **options)
    front, *rest = with_front.bijections
    assert front.passive_idx == () and front.active_idx == (0, 1, 2)
    assert front.context_shape == (2,)
    same = jax.tree.map(lambda a, b: bool((a == b).all()), nc.Chain(rest), plain)
    assert all(jax.tree.leaves(same))  # the other layers are those of the plain stack
    with pytest.raises(ValueError, match="context_elementwise needs a context_shape"):
        nc.coupling_layers(jr.key(0), 3, context_elementwise=True)
