"""Flows as NumPyro distributions: one-pass log_prob, sampling, pytree behaviour."""

import logging
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from numpyro_coupling import COUPLINGS, CouplingFlow, coupling_flow
from numpyro_coupling.conditioners import MLP
from numpyro_coupling.flows import PERMUTATIONS


def _count_conditioner_calls(fn, *args):
    """How many times ``fn`` evaluates a conditioner network (counted while tracing)."""
    calls = []
    original = MLP.__call__
    jax.clear_caches()  # a program compiled earlier would be reused without a trace

    def counting(self, x):
        calls.append(1)
        return original(self, x)

    MLP.__call__ = counting
    try:
        jax.make_jaxpr(fn)(*args)
    finally:
        MLP.__call__ = original
    return len(calls)


def test_eager_calls_compile_whole_programs():
    # Op by op, a first eager call compiles every primitive on its own (about a hundred
    # programs for this flow); each public method compiles as one program instead.
    flow = coupling_flow(jr.key(3), (3,), transformer="spline", n_layers=2, zero_init=False)
    x = jr.normal(jr.key(4), (5, 3))
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    jax.clear_caches()
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles(True):
            flow.log_prob(x)
            flow.bijection.inverse(x)
            flow.bijection.transform(x)
    finally:
        logging.getLogger("jax").removeHandler(handler)
    compiled = [m for m in messages if m.startswith("Finished XLA compilation")]
    assert len(compiled) == 3, compiled


@pytest.mark.parametrize("transformer", sorted(COUPLINGS))
def test_log_prob_one_pass_equals_numpyro_two_pass(transformer):
    flow = coupling_flow(
        jr.key(0), (4,), transformer=transformer, n_layers=3, nn_width=8, zero_init=False
    )
    x = jr.normal(jr.key(1), (16, 4))
    one, two = jax.jit(lambda f, v: (f.log_prob(v), f.log_prob_two_pass(v)))(flow, x)
    np.testing.assert_allclose(one, two, rtol=1e-4, atol=1e-4)
    assert _count_conditioner_calls(flow.log_prob, x) == 3
    assert _count_conditioner_calls(flow.log_prob_two_pass, x) == 6


@pytest.mark.parametrize("permutation", [p for p in PERMUTATIONS])
def test_factory_permutations_and_sampling(permutation):
    flow = coupling_flow(
        jr.key(0), (3,), transformer="affine", n_layers=2, nn_width=8, permutation=permutation
    )
    samples = jax.jit(lambda f, k: f.sample(k, (5, 2)))(flow, jr.key(1))
    assert samples.shape == (5, 2, 3)
    lp = jax.jit(lambda f, v: f.log_prob(v))(flow, samples)
    assert lp.shape == (5, 2) and bool(jnp.isfinite(lp).all())
    assert flow.batch_shape == () and flow.event_shape == (3,)


def test_zero_init_flow_is_standard_normal():
    flow = coupling_flow(jr.key(0), (2,), transformer="spline", n_layers=4)
    x = jr.normal(jr.key(1), (10, 2))
    np.testing.assert_allclose(flow.log_prob(x), dist.Normal().log_prob(x).sum(-1), atol=1e-5)


def test_reparameterised_sampling_gradients():
    flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2, nn_width=8)
    assert flow.has_rsample

    @eqx.filter_grad
    def grad_mean(f):
        return f.rsample(jr.key(2), (64,)).mean()

    grads = jax.tree_util.tree_leaves(eqx.filter(grad_mean(flow), eqx.is_inexact_array))
    assert any(float(jnp.abs(g).max()) > 0 for g in grads)


def test_flow_is_a_pytree_of_trainable_leaves():
    flow = coupling_flow(jr.key(0), (3,), transformer="spline", n_layers=2, nn_width=8)
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    n_leaves = len(jax.tree_util.tree_leaves(params))
    assert n_leaves == 2 * 6  # two conditioners of three dense layers (kernel + bias)
    rebuilt = eqx.combine(params, static)
    assert isinstance(rebuilt, CouplingFlow)
    x = jnp.ones((2, 3))
    np.testing.assert_array_equal(rebuilt.log_prob(x), flow.log_prob(x))
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, params)
    assert isinstance(eqx.combine(doubled, static), CouplingFlow)


def test_flow_as_observed_site_in_a_model():
    flow = coupling_flow(
        jr.key(0), (2,), transformer="affine", n_layers=2, nn_width=8, zero_init=False
    )
    X = jr.normal(jr.key(1), (20, 2))

    def model():
        numpyro.sample("x", flow, obs=X)

    trace = numpyro.handlers.trace(model).get_trace()
    np.testing.assert_allclose(trace["x"]["fn"].log_prob(X).sum(), flow.log_prob(X).sum())


def test_flow_as_a_prior_under_nuts():
    flow = coupling_flow(jr.key(0), (2,), transformer="spline", n_layers=2, nn_width=8)

    def model():
        numpyro.sample("theta", flow)

    mcmc = MCMC(NUTS(model), num_warmup=50, num_samples=50, progress_bar=False)
    mcmc.run(jr.key(3))
    assert mcmc.get_samples()["theta"].shape == (50, 2)


def test_factory_rejects_bad_arguments():
    with pytest.raises(ValueError, match="transformer"):
        coupling_flow(jr.key(0), (2,), transformer="nope")
    with pytest.raises(ValueError, match="permutation"):
        coupling_flow(jr.key(0), (2,), permutation="nope")
    with pytest.raises(ValueError, match="n_layers"):
        coupling_flow(jr.key(0), (2,), n_layers=0)
    with pytest.raises(ValueError, match="at least 2"):
        coupling_flow(jr.key(0), (1,))
    # A transformer's option given to another transformer.
    with pytest.raises(ValueError, match="takes \\['n_components', 'log_scale_bound'\\]"):
        coupling_flow(jr.key(0), (2,), transformer="mixture", n_bins=4)
    with pytest.raises(ValueError, match="no options"):
        coupling_flow(jr.key(0), (2,), transformer="additive", n_bins=4)


def test_transformed_base_keeps_the_flow_outermost():
    from numpyro.distributions.transforms import AffineTransform

    from numpyro_coupling import AffineCoupling

    x = jnp.array([[0.3, -1.2], [1.5, 0.7]])
    outer = AffineCoupling(jr.key(1), shape=(2,), zero_init=False, flip=True)
    inner = CouplingFlow(AffineCoupling(jr.key(0), shape=(2,), zero_init=False))
    shifted = dist.TransformedDistribution(
        dist.Normal(jnp.zeros(2), 1.0).to_event(1), AffineTransform(1.0, 2.0)
    )
    z, log_det = outer.transform_and_log_det(x)
    for base in (inner, shifted):
        # NumPyro merges a transformed base's transforms in front of the flow's.
        flow = CouplingFlow(outer, base_dist=base)
        assert flow.bijection is outer
        np.testing.assert_allclose(flow.log_prob(x), base.log_prob(z) + log_det, rtol=1e-5)
        np.testing.assert_allclose(flow.log_prob(x), flow.log_prob_two_pass(x), rtol=1e-5)


def test_integer_data_and_empty_batches():
    from numpyro_coupling import AffineCoupling
    from numpyro_coupling.masks import checkerboard_mask

    # A checkerboard merges by a scatter, which would cast the result back to the input's ints.
    mask = checkerboard_mask(4, 4).reshape(4, 4, 1)
    layer = AffineCoupling(jr.key(2), shape=(4, 4, 1), mask=mask, zero_init=False)
    pixels = jr.randint(jr.key(3), (2, 4, 4, 1), 0, 255).astype(jnp.uint8)
    as_ints, as_floats = (
        layer.transform_and_log_det(pixels),
        layer.transform_and_log_det(pixels.astype(jnp.float32)),
    )
    for a, b in zip(as_ints, as_floats):
        np.testing.assert_array_equal(a, b)
    flow = coupling_flow(jr.key(0), (3,), transformer="affine", n_layers=2)
    assert flow.log_prob(jnp.zeros((0, 3))).shape == (0,)
    assert flow.sample(jr.key(0), (0,)).shape == (0, 3)


def test_chain_support_follows_its_constrained_ends():
    from numpyro.distributions.transforms import ExpTransform

    from numpyro_coupling import AffineCoupling, Chain

    # Data -> latent: log first, so the flow lives on the positive orthant.
    chain = Chain([ExpTransform().inv, AffineCoupling(jr.key(0), shape=(2,))], shape=(2,))
    flow = CouplingFlow(chain)
    assert flow.support.event_dim == 1
    assert bool(flow.support(jnp.array([1.0, 2.0]))) and not bool(
        flow.support(jnp.array([-1.0, 2.0]))
    )
    assert chain.codomain.event_dim == 1


def test_samples_keep_the_parameters_dtype_under_x64(x64):
    flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2, dtype=jnp.float32)
    assert flow.sample(jr.key(1), (3,)).dtype == jnp.float32


def test_validate_args_checks_the_support_of_log_prob_values():
    flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2, zero_init=False)
    x = jnp.array([[0.3, -1.2], [jnp.nan, 0.7], [jnp.inf, 0.0]])
    checked = CouplingFlow(flow.bijection, validate_args=True)
    with pytest.warns(UserWarning, match="Out-of-support"):
        log_p = checked.log_prob(x)
    np.testing.assert_allclose(log_p[0], flow.log_prob(x[:1])[0], rtol=1e-6)
    assert log_p[1:].tolist() == [-np.inf, -np.inf]
    # Under jit the check cannot warn, but the out-of-support values still get -inf.
    assert jax.jit(lambda f, v: f.log_prob(v))(checked, x)[1:].tolist() == [-np.inf, -np.inf]
    # With validate_args=False nothing is checked.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unchecked = CouplingFlow(flow.bijection, validate_args=False)
        assert np.isnan(unchecked.log_prob(x)[1])
