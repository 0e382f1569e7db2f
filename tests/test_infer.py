"""AutoCouplingFlow as an SVI guide and a NeuTra reparameteriser; the demo's quick mode."""

import argparse
import logging
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO

from numpyro_coupling import (
    AutoCouplingFlow,
    fit_guide,
    neutra_mcmc,
    neutra_nuts,
    sampling_efficiency,
    temper_likelihood,
)
from numpyro_coupling import guide as guide_module
from numpyro_coupling import svi as svi_module
from numpyro_coupling.targets import eight_schools, funnel

COV = jnp.array([[1.0, 0.9], [0.9, 1.0]])


def gaussian_2d():
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), COV))


def banana():
    # Normalised, so the negative ELBO is the KL divergence.
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    numpyro.sample("b", dist.Normal(0.5 * a**2, 0.5))


def mixed_supports(y):
    scale = numpyro.sample("scale", dist.HalfNormal(1.0))
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(3)))
    p = numpyro.sample("p", dist.Uniform(0.0, 1.0))
    with numpyro.plate("groups", 2):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    loc = mu.sum() * p + weights[0]
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(loc, scale), obs=y)


def fit(model, guide, steps, lr, *args):
    return fit_guide(model, *args, guide=guide, steps=steps, learning_rate=lr, progress_bar=False)[
        1
    ]


def kl(model, guide, params, *args):
    return float(Trace_ELBO(num_particles=2000).loss(jr.key(7), params, model, guide, *args))


def test_fits_correlated_gaussian():
    guide = AutoCouplingFlow(gaussian_2d, n_layers=2, nn_width=8)
    params = fit(gaussian_2d, guide, 1500, 1e-2)
    assert kl(gaussian_2d, guide, params) < 0.03
    draws = guide.sample_posterior(jr.key(1), params, sample_shape=(4000,))["x"]
    assert abs(float(jnp.corrcoef(draws.T)[0, 1]) - 0.9) < 0.05


def test_fits_banana_with_spline():
    guide = AutoCouplingFlow(banana, transformer="loc_scale_spline", n_layers=4, n_bins=6)
    params = fit(banana, guide, 2000, 5e-3)
    assert kl(banana, guide, params) < 0.08


@pytest.fixture(scope="module")
def mixed_fit():
    y = jnp.array([0.3, -0.2, 1.1])
    guide, params, _ = fit_guide(
        mixed_supports,
        y,
        guide={"n_layers": 2, "nn_width": 8, "stl": False},
        steps=30,
        learning_rate=1e-2,
        progress_bar=False,
    )
    return guide, params, y


def test_summaries_have_site_shapes(mixed_fit):
    guide, params, y = mixed_fit
    draws = guide.sample_posterior(jr.key(1), params, sample_shape=(7,))
    shapes = {"scale": (), "weights": (3,), "p": (), "mu": (2,)}
    assert {k: v.shape for k, v in draws.items()} == {k: (7, *s) for k, s in shapes.items()}
    median = guide.median(params)
    assert {k: v.shape for k, v in median.items()} == shapes
    assert jnp.allclose(median["weights"].sum(), 1.0, atol=1e-5)
    q = guide.quantiles(params, [0.1, 0.5, 0.9], num_samples=256)
    assert {k: v.shape for k, v in q.items()} == {k: (3, *s) for k, s in shapes.items()}
    assert bool(jnp.all(q["p"][0] <= q["p"][2]))
    assert guide.get_posterior(params).log_prob(jnp.zeros(guide.latent_dim)).shape == ()
    sample = jax.jit(lambda k: guide.sample_posterior(k, params, y)["weights"])
    assert sample(jr.key(0)).shape == (3,)


def test_neutra_nuts_on_constrained_sites_and_plates(mixed_fit):
    # NumPyro's stock NeuTraReparam + NUTS, through neutra_nuts.
    guide, params, y = mixed_fit
    mcmc, idata = neutra_nuts(
        mixed_supports,
        guide,
        params,
        y,
        num_warmup=20,
        num_samples=10,
        num_chains=1,
        progress_bar=False,
    )
    assert mcmc.get_samples()["auto_shared_latent"].shape == (10, guide.latent_dim)
    post = idata.posterior
    assert post["weights"].shape == (1, 10, 3) and post["mu"].shape == (1, 10, 2)
    assert idata.unconstrained_posterior["weights"].shape == (1, 10, 2)
    assert bool((post["scale"] > 0).all()) and bool(((post["p"] > 0) & (post["p"] < 1)).all())
    np.testing.assert_allclose(post["weights"].sum("weights_dim_0"), 1.0, atol=1e-5)
    stats = sampling_efficiency(idata)
    assert stats["n_grads"] == int(mcmc.get_extra_fields()["num_steps"].sum())
    assert stats["min_ess"] > 0


def test_latent_dim_one_is_elementwise():
    def model():
        numpyro.sample("s", dist.Gamma(3.0, 2.0))

    guide = AutoCouplingFlow(model, transformer="loc_scale_spline", n_layers=2)
    params = fit(model, guide, 1500, 1e-2)
    assert guide.latent_dim == 1
    # The best Gaussian in log-space (AutoDiagonalNormal) has KL 0.027 here.
    assert kl(model, guide, params) < 0.012
    assert guide.sample_posterior(jr.key(1), params, sample_shape=(3,))["s"].shape == (3,)


def test_discrete_latent_site_raises():
    def model():
        k = numpyro.sample("k", dist.Bernoulli(0.3))
        numpyro.sample("x", dist.Normal(k, 1.0))

    svi = SVI(model, AutoCouplingFlow(model), numpyro.optim.Adam(1e-3), Trace_ELBO())
    with pytest.raises(ValueError, match="discrete latent"):
        svi.init(jr.key(0))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="transformer"):
        AutoCouplingFlow(banana, transformer="cubic")
    with pytest.raises(ValueError, match="permutation"):
        AutoCouplingFlow(banana, permutation="shuffle")
    with pytest.raises(ValueError, match="warm_start"):
        AutoCouplingFlow(banana, transformer="affine", warm_start={"a": jnp.zeros(3)})
    for bad in (0.0, -1.0, True, float("nan"), "wide", jnp.ones(2)):
        with pytest.raises(ValueError, match="init_scale"):
            AutoCouplingFlow(banana, init_scale=bad)
    # Any real scalar will do, NumPy's and JAX's included.
    for good in (2, np.float32(0.5), jnp.array(0.5)):
        assert isinstance(AutoCouplingFlow(banana, init_scale=good).init_scale, float)


@pytest.mark.parametrize("n_layers", [4, 7, 8, 10])
def test_bit_masks_condition_every_coordinate_on_every_other(n_layers):
    from math import comb

    from numpyro_coupling import bit_masks

    def pairs_met(active):
        # Ordered pair (i, j) meets when some layer has i passive and j active.
        return int((~active[:, :, None] & active[:, None, :]).any(0).sum())

    n_pairs = n_layers // 2
    capacity = comb(2 * n_pairs, n_pairs)
    for dim in sorted({2, 3, 2**n_pairs, 2**n_pairs + 1, capacity - 1, capacity}):
        active = bit_masks(dim, n_layers)
        assert pairs_met(active) == dim * (dim - 1), (dim, n_layers)
        assert np.all(np.abs(active[: 2 * n_pairs].sum(1) - dim / 2) <= 1)
    # Past the capacity the codes repeat: only pairs sharing one never meet.
    assert pairs_met(bit_masks(capacity + 1, n_layers)) == capacity * (capacity + 1) - 2


def test_warm_start_is_the_rbig_fit(x64):
    from numpyro_coupling.rbig import RBIGFlow

    def model():
        numpyro.sample("s", dist.LogNormal(0.0, 0.5))
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    rng = np.random.default_rng(0)
    draws = {
        "s": np.exp(0.5 * rng.normal(size=300)),
        "x": rng.normal(size=(300, 2)) @ [[1, 0.8], [0, 0.6]],
    }
    kw = {"n_layers": 2, "nn_width": 8, "n_components": 3}
    guide = AutoCouplingFlow(model, warm_start=draws, **kw)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    params = svi.get_params(svi.init(jr.key(0)))
    X = guide.unconstrained_latent(draws)
    assert X.shape == (300, 3) and X.dtype == jnp.float64
    # The guide keeps the fit_rbig_coupling result (n_layers // 2 RBIG blocks of two
    # couplings each) it was built from.
    rbig = guide.warm_start_flow
    assert isinstance(rbig, RBIGFlow) and len(rbig.tc_reductions) == 1
    # Jitted: op-by-op, the mixture CDFs compile dozens of tiny programs.
    got = jax.jit(lambda p, x: guide.get_posterior(p).log_prob(x))(params, X)
    np.testing.assert_allclose(got, jax.jit(rbig.log_prob)(X), atol=1e-6, rtol=0)


def test_warm_start_never_starts_worse_than_cold():
    from numpyro_coupling.targets import funnel_draws

    # Draws from a funnel, repeated as a sticky chain repeats them: two RBIG layers leave
    # the dependence of the width on v out, and the guide would put wide x in the neck.
    draws = {k: np.repeat(v, 2, axis=0) for k, v in funnel_draws(300, dim=2).items()}
    kw = {
        "transformer": "mixture",
        "n_layers": 2,
        "nn_width": 4,
        "n_components": 2,
        "precondition": None,
    }

    def init(**extra):
        guide = AutoCouplingFlow(funnel, **kw, **extra)
        svi = SVI(funnel, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
        return guide, svi.get_params(svi.init(jr.key(0), 2))

    with pytest.warns(UserWarning, match="starting cold"):
        warm, warm_params = init(warm_start=draws)
    assert warm.warm_start_scores["warm"] > warm.warm_start_scores["cold"]
    _, cold_params = init()
    for a, b in zip(jax.tree.leaves(warm_params), jax.tree.leaves(cold_params)):
        np.testing.assert_array_equal(a, b)


def test_fit_guide_accepts_kwargs_and_instances():
    guide, _, losses = fit_guide(
        gaussian_2d, guide={"n_layers": 1, "nn_width": 4}, steps=5, progress_bar=False
    )
    assert isinstance(guide, AutoCouplingFlow) and losses.shape == (5,)
    with pytest.raises(TypeError):
        fit_guide(gaussian_2d, guide="spline", steps=1, progress_bar=False)


def test_fit_guide_stops_on_a_plateau_and_counts_the_steps_it_took():
    # The dense Gaussian start makes this guide exact: its loss is flat from the start.
    guide = {"n_layers": 1, "nn_width": 4, "precondition": "dense"}
    kw = dict(guide=guide, steps=5000, progress_bar=False)
    _, _, losses, state = fit_guide(gaussian_2d, return_state=True, **kw)
    # Two windows of 500 steps, then a cool-down of one window (a quarter of 1000 is less).
    assert losses.shape == (1000 + 500,)
    _, _, full, full_state = fit_guide(gaussian_2d, plateau=None, return_state=True, **kw)
    assert full.shape == (5000,)
    # The rule's two checks cost PLATEAU_DRAWS log densities each.
    assert full_state.n_grads - state.n_grads == 5000 - 1500 - 2 * svi_module.PLATEAU_DRAWS
    # Windows under MIN_PLATEAU_WINDOW steps: every step runs.
    _, _, short = fit_guide(gaussian_2d, **(kw | {"steps": 4000}))
    assert short.shape == (4000,)
    with pytest.raises(ValueError, match="plateau"):
        fit_guide(gaussian_2d, plateau=0.9, **kw)


def test_plateau_rule_compares_the_last_two_fixed_draw_scores():
    from numpyro_coupling import plateau_reached

    assert plateau_reached([5.0, 4.0, 3.99])
    assert plateau_reached([5.0, 5.1])  # worse counts as no gain
    assert not plateau_reached([5.0, 4.0])
    assert not plateau_reached([5.0])  # one window: nothing to compare
    assert not plateau_reached([5.0, np.nan])


def test_fit_guide_averages_num_particles_per_step():
    # With the parameters held nearly still, each step's loss is an estimate of one
    # fixed negative ELBO: averaging 64 draws shrinks its spread eightfold. (Without the
    # Gaussian start, which would make this guide exact and every estimate the same.)
    def loss_spread(num_particles):
        _, _, losses = fit_guide(
            gaussian_2d,
            guide={"n_layers": 1, "nn_width": 4, "precondition": None},
            steps=40,
            learning_rate=1e-8,
            average=None,
            num_particles=num_particles,
            progress_bar=False,
        )
        return float(np.std(losses))

    assert loss_spread(64) < loss_spread(1) / 4
    with pytest.raises(ValueError, match="num_particles"):
        fit_guide(gaussian_2d, steps=1, num_particles=0, progress_bar=False)
    with pytest.raises(ValueError, match="num_particles"):  # passed on by neutra_mcmc
        neutra_mcmc(gaussian_2d, fit_kwargs={"num_particles": 0}, progress_bar=False)


def two_modes():
    # Modes at x0 = -2.5 and 2.5 of equal mass, 10 standard deviations apart.
    x = numpyro.sample("x", dist.Normal(0.0, 4.0).expand([2]).to_event(1))
    modes = -0.5 * ((x[0] + jnp.array([-2.5, 2.5])) / 0.5) ** 2
    numpyro.factor("modes", jax.scipy.special.logsumexp(modes) - 0.5 * x[1] ** 2)


def test_tempering_keeps_both_modes():
    guide = {"transformer": "loc_scale_spline", "n_layers": 2, "nn_width": 8}
    kw = dict(guide=guide, steps=1500, key=jr.key(1), progress_bar=False, plateau=None)

    def right_mode_share(temper):
        g, params, losses = fit_guide(two_modes, temper=temper, **kw)
        assert losses.shape == (1500,)
        draws = g.sample_posterior(jr.key(9), params, sample_shape=(4000,))["x"]
        return float((draws[:, 0] > 0).mean())

    assert right_mode_share(None) > 0.95  # the plain reverse-KL fit settles on one mode
    assert 0.3 < right_mode_share((0.1, 0.3)) < 0.7
    for bad in ((0.5, 1.0), (0.0,), (-0.2,)):
        with pytest.raises(ValueError, match="temper"):
            fit_guide(two_modes, temper=bad, **kw)


def test_tempering_flattens_the_likelihood_not_the_prior():
    def log_joint(model):
        trace = handlers.trace(handlers.seed(model, 0)).get_trace()
        return {
            n: site["fn"].log_prob(site["value"]).sum() * (site["scale"] or 1.0)
            for n, site in trace.items()
            if site["type"] == "sample"
        }

    plain = log_joint(handlers.substitute(eight_schools, data={"tau": 0.3}))
    tempered = log_joint(
        temper_likelihood(handlers.substitute(eight_schools, data={"tau": 0.3}), 0.25)
    )
    for name in ("mu", "tau", "theta"):  # the half-Cauchy prior stays proper
        assert tempered[name] == plain[name]
    np.testing.assert_allclose(tempered["y"], 0.25 * plain["y"], rtol=1e-6)
    # A model without observed sites or factors has no likelihood to temper.
    with pytest.raises(ValueError, match="observed"):
        fit_guide(funnel, temper=(0.5,), steps=4, progress_bar=False)
    with pytest.raises(ValueError, match="beta"):
        temper_likelihood(eight_schools, 0.0)


def test_tempered_phases_share_one_compiled_step(monkeypatch):
    # The inverse temperature may be traced, so a jitted density serves every phase.
    values = {"tau": 0.3, "mu": 1.0, "theta": jnp.full(8, 0.5)}

    def log_density(beta):
        return numpyro.infer.util.log_density(
            temper_likelihood(eight_schools, beta), (), {}, values
        )[0]

    for beta in (0.1, 0.6):
        np.testing.assert_allclose(jax.jit(log_density)(beta), log_density(beta), rtol=1e-6)
    # Linear in beta: only the likelihood is scaled.
    np.testing.assert_allclose(
        log_density(0.6) - log_density(0.1), 5 * (log_density(0.2) - log_density(0.1)), rtol=1e-5
    )
    # Every phase runs the same compiled chunk of steps: one compilation for three
    # tempered phases and the final fit (chunks of one length, no progress bar).
    traces, make_runner = [], svi_module.chunk_runner

    def counting(step, view):
        def counted(*args):
            traces[-1] += 1  # once per compilation of the chunk
            return step(*args)

        return make_runner(counted, view)

    monkeypatch.setattr(svi_module, "chunk_runner", counting)
    # Without a bar each phase is one chunk; with one, chunks of 4000 // 50 = 80 steps would
    # leave a remainder of each 1000-step phase, so they are made 50 steps long. (No
    # plateau rule: its cool-down is a fit of its own, with its own optimiser.)
    for steps, bar in ((40, False), (4000, True)):
        traces.append(0)
        fit_guide(
            two_modes,
            guide={"n_layers": 1, "nn_width": 4},
            steps=steps,
            temper=(0.1, 0.3, 0.6),
            progress_bar=bar,
            plateau=None,
        )
        assert traces[-1] == 1


def test_fit_guide_runs_the_flow_only_in_its_compiled_steps(caplog):
    # SVI.init runs the guide once, eagerly, to trace its parameters: a draw through the
    # flow there would compile the flow's whole sampling pass for that one call.
    def compiled():
        messages = [r.getMessage() for r in caplog.records]
        caplog.clear()
        return [m for m in messages if "Finished XLA compilation" in m]

    guide = {"n_layers": 1, "nn_width": 5}  # a flow no other test compiles
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        for temper in (None, (0.5,)):
            fit, params, _ = fit_guide(
                two_modes, guide=guide, steps=4, temper=temper, progress_bar=False, plateau=None
            )
        programs = compiled()
        # What SVI.init did before: the guide called eagerly compiles the flow's pass.
        handlers.substitute(handlers.seed(fit, 0), params)()
        eager = compiled()
    assert any("run_chunk" in m for m in programs)
    assert not any("transform_and_log_det" in m for m in programs)
    assert any("transform_and_log_det" in m for m in eager)


def test_get_transform_is_one_pass_with_memo():
    guide = AutoCouplingFlow(gaussian_2d, n_layers=2, nn_width=4)
    params = fit(gaussian_2d, guide, 3, 1e-2)
    t = guide.get_transform(params)
    z = jr.normal(jr.key(3), (2,))
    x = t(z)
    x2, log_det = t.transform_and_log_det(z)
    assert jnp.allclose(x, x2)
    assert jnp.allclose(t.log_abs_det_jacobian(z, x), log_det)
    # The inverse gives back the base point and the opposite log-det.
    z2, inv_log_det = t.inverse_and_log_det(x)
    assert jnp.allclose(z2, z, atol=1e-5) and jnp.allclose(inv_log_det, -log_det, atol=1e-5)


def test_flow_params_pack_small_leaves_into_one_vector():
    tree = {"a": jnp.ones((3, 4)), "b": [jnp.arange(2000.0).reshape(40, 50), jnp.zeros(5)]}
    packed, unpack = guide_module._pack_leaves(tree, max_leaf=1024)
    # Small leaves (12 + 5 entries) share one vector; the large kernel stays an array.
    assert [p.shape for p in packed] == [(17,), (40, 50)]
    assert jax.tree.all(jax.tree.map(jnp.array_equal, unpack(packed), tree))
    # Only small leaves: the flat vector itself; only large leaves: no empty vector.
    assert guide_module._pack_leaves(tree, max_leaf=10**6)[0].shape == (2017,)
    only_large, unpack_large = guide_module._pack_leaves(tree, max_leaf=0)
    assert len(only_large) == 3
    assert jax.tree.all(jax.tree.map(jnp.array_equal, unpack_large(only_large), tree))
    # A guide whose kernels exceed the limit keeps them as separate parameters.
    guide = AutoCouplingFlow(gaussian_2d, n_layers=2, nn_width=40)
    svi = SVI(gaussian_2d, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    flow = svi.get_params(svi.init(jr.key(0)))["auto_flow$params"]
    assert [p.shape for p in flow[1:]] == [(40, 40)] * 2 and flow[0].ndim == 1


_REPEAT_FIT = """
import hashlib, jax, jax.random as jr
from numpyro_coupling import AutoCouplingFlow, SiteOrderedTraceELBO, fit_guide
from numpyro_coupling.targets import eight_schools
guide = AutoCouplingFlow(eight_schools, n_layers=2, nn_width=4)
_, params, losses = fit_guide(
    eight_schools, guide=guide, steps=20, key=jr.key(1), progress_bar=False
)
print([float(x).hex() for x in losses])
elbo = SiteOrderedTraceELBO(num_particles=2)
program = jax.jit(lambda p: elbo.loss(jr.key(0), p, eight_schools, guide)).lower(params).as_text()
print(hashlib.sha256(program.encode()).hexdigest())
"""


def test_fit_guide_repeats_across_processes():
    # NumPyro's Trace_ELBO forms and sums its per-site terms in set order, which follows
    # the interpreter's string hashing: with it the two processes' losses differ, and so
    # do their programs (which the persistent compilation cache then cannot share).
    def losses(hash_seed):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        run = [sys.executable, "-c", _REPEAT_FIT]
        return subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout

    assert losses("1") == losses("2")


def test_site_ordered_elbo_matches_trace_elbo_and_refuses_mutable_state():
    from numpyro_coupling import SiteOrderedTraceELBO

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        scale = numpyro.sample("scale", dist.HalfNormal(2.0))
        numpyro.sample("y", dist.Normal(mu, scale), obs=y)

    def guide(y):
        numpyro.sample("mu", dist.Normal(numpyro.param("m", 0.3), 1.0))
        numpyro.sample("scale", dist.LogNormal(numpyro.param("s", -0.2), 0.5))

    y = jnp.array([0.5, -0.1, 1.2])
    for particles in (1, 3):
        ours = SiteOrderedTraceELBO(num_particles=particles).loss(jr.key(2), {}, model, guide, y)
        theirs = Trace_ELBO(num_particles=particles).loss(jr.key(2), {}, model, guide, y)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)

    def stateful(y):
        numpyro.primitives.mutable("count", jnp.zeros(()))
        guide(y)

    with pytest.raises(NotImplementedError, match="mutable"):
        SiteOrderedTraceELBO().loss(jr.key(2), {}, model, stateful, y)


def test_get_posterior_is_differentiable_whatever_stl():
    x = jnp.array([0.3, -1.2])
    guide = AutoCouplingFlow(gaussian_2d, n_layers=2, nn_width=4, stl=True)
    params = fit(gaussian_2d, guide, 5, 1e-2)

    def grads():
        return jax.grad(lambda p: guide.get_posterior(p).log_prob(x))(params)

    with_stl = grads()
    guide.stl = False
    without = grads()
    assert float(jnp.abs(with_stl["auto_loc"]).sum()) > 0.1
    for a, b in zip(jax.tree.leaves(with_stl), jax.tree.leaves(without)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_memo_serves_the_traced_log_det_and_keeps_no_tracer():
    import gc

    guide = AutoCouplingFlow(gaussian_2d, n_layers=2, nn_width=4)
    transform = guide.get_transform(fit(gaussian_2d, guide, 3, 1e-2))
    passes = []
    pass_ = transform.transform_and_log_det
    transform.transform_and_log_det = lambda z: passes.append(1) or pass_(z)

    def warped(z):  # what NeuTraReparam does: the draw, then its log-det
        x = transform(z)
        return x, transform.log_abs_det_jacobian(z, x)

    with jax.checking_leaks():
        _, log_det = jax.jit(warped)(jnp.array([0.5, -0.5]))
    gc.collect()
    assert len(passes) == 1 and not hasattr(transform, "_memo")
    np.testing.assert_allclose(log_det, pass_(jnp.array([0.5, -0.5]))[1], rtol=1e-5)


def test_neutra_mcmc_takes_the_fit_options_and_both_keep_deterministic_sites(caplog):
    import warnings

    import arviz as az

    from numpyro_coupling import NUM_CHAINS, nuts_mcmc

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.deterministic("twice", 2 * x)

    small = {"num_warmup": 10, "num_samples": 5, "progress_bar": False}
    _, neutra = neutra_mcmc(
        model,
        guide={"n_layers": 1, "nn_width": 4},
        fit_kwargs={"steps": 10, "schedule": "constant", "clip_norm": None},
        **small,
    )
    _, plain = nuts_mcmc(model, **small)
    for idata in (neutra, plain):
        # Several chains by default, vectorised on one device: R-hat is there.
        assert idata.posterior.sizes["chain"] == NUM_CHAINS and np.isfinite(idata.attrs["max_rhat"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert np.isfinite(az.summary(idata)["r_hat"]).all()
        assert not [r for r in caplog.records if r.name.startswith("arviz")]
        assert set(idata.posterior.data_vars) == {"x", "twice"}
        np.testing.assert_allclose(idata.posterior["twice"], 2 * idata.posterior["x"], rtol=1e-6)
        assert set(idata.unconstrained_posterior.data_vars) == {"x"}


def test_neutra_mcmc_passes_nuts_kwargs():
    def accept(nuts_kwargs):
        _, idata = neutra_mcmc(
            gaussian_2d,
            guide={"n_layers": 1, "nn_width": 4},
            fit_kwargs={"steps": 20},
            num_warmup=200,
            num_samples=200,
            num_chains=1,
            progress_bar=False,
            nuts_kwargs=nuts_kwargs,
        )
        return float(idata.sample_stats["acceptance_rate"].mean())

    # Step-size adaptation aims at the target acceptance probability.
    assert accept({"target_accept_prob": 0.99}) > accept({"target_accept_prob": 0.6}) + 0.1


def test_neutra_retries_with_a_smaller_step_when_its_chains_diverge():
    # A guide fitted for a few steps leaves the funnel's neck curved: NUTS diverges there.
    guide, params, _ = fit_guide(
        funnel, 3, guide={"n_layers": 1, "nn_width": 4}, steps=5, progress_bar=False
    )

    def run(**kw):
        return neutra_nuts(
            funnel,
            guide,
            params,
            3,
            num_warmup=150,
            num_samples=150,
            num_chains=1,
            progress_bar=False,
            key=jr.key(1),
            **kw,
        )

    _, once = run(retry=None)
    diverged = int(once.sample_stats["diverging"].values.sum())
    assert diverged > 0 and "retry_divergences" not in once.attrs
    mcmc, retried = run()
    # The same first run, then a second one on the guide refitted in its tails: the one
    # that diverged less is kept, and every gradient of the other and of the refit counts.
    kept = retried.attrs["retry_kept"]
    again = retried.attrs["retry_divergences"]
    assert kept == ("second" if again <= diverged else "first")
    assert int(retried.sample_stats["diverging"].values.sum()) == min(again, diverged)
    refit = retried.attrs["retry_refit_grads"]
    assert refit == 2000
    assert retried.attrs["retry_refit_loss_last"] < retried.attrs["retry_refit_loss_first"]
    first = once.attrs["warmup_grads"] + int(once.sample_stats["n_steps"].values.sum())
    assert retried.attrs["warmup_grads"] > first + refit
    # The chain comes with the parameters it ran on.
    moved = any(not np.array_equal(mcmc.guide_params[k], params[k]) for k in params)
    assert moved == (kept == "second")
    # No second run where the first one asked for as small a step already.
    _, strict = run(nuts_kwargs={"target_accept_prob": 0.9})
    assert "retry_divergences" not in strict.attrs


def test_fit_guide_raises_when_no_step_had_a_finite_loss():
    def model():  # finite near its initial point only: some of 64 guide draws fall outside
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.factor("broken", jnp.where(jnp.abs(x).sum() > 2.0, jnp.nan, 0.0))

    with pytest.raises(FloatingPointError, match="every one of the 20 SVI steps"):
        fit_guide(
            model,
            guide={"n_layers": 1, "nn_width": 4, "precondition": None},
            steps=20,
            num_particles=64,
            progress_bar=False,
        )


def test_demo_quick(tmp_path):
    from numpyro_coupling.demo import add_budget_arguments, budgets, main

    argv = ["--quick", "--target-accept", "0.9", "--out", str(tmp_path), "--no-cache"]
    assert main(argv) is None
    parser = argparse.ArgumentParser()
    add_budget_arguments(parser, svi_steps=10, num_warmup=10, num_samples=10)
    assert budgets(parser.parse_args(["--target-accept", "0.9"]))["nuts_kwargs"] == {
        "target_accept_prob": 0.9
    }
    assert budgets(parser.parse_args(["--particles", "4"]))["fit_kwargs"]["num_particles"] == 4
    with pytest.raises(SystemExit):  # not a probability
        parser.parse_args(["--target-accept", "1.5"])
    assert (tmp_path / "neutra_funnel.png").exists()


def test_guide_conditioner_linear_path_reaches_only_the_log_scales():
    from numpyro_coupling import MLP, GuideConditioner

    net = MLP(jr.key(0), 3, 4 * 2, width=8)  # 4 active coordinates, [shift, log_scale] each
    cond = GuideConditioner(net, n_params=2, bound=5.0, scale_index=1, key=jr.key(1))
    x = jr.normal(jr.key(2), (6, 3))
    np.testing.assert_array_equal(cond(x), net(5 * jnp.tanh(x / 5)))  # lift starts at 0
    lift = jr.normal(jr.key(3), cond.lift.shape)
    kernel = jr.normal(jr.key(4), net.weights[-1].shape)  # a trained-looking network
    cond = eqx.tree_at(lambda c: (c.lift, c.net.weights[-1]), cond, (lift, kernel))

    def path(y):  # what the conditioner adds to its network, per [shift, log_scale]
        return (cond(y) - cond.net(5 * jnp.tanh(y / 5))).reshape(6, 4, 2)

    np.testing.assert_array_equal(path(x)[..., 0], 0.0)  # the shifts are the network's alone
    # The log-scales' path is linear well past the network's bound (to a few times it)...
    far = 3.5 * x / jnp.abs(x).max()  # the network reads 5 tanh(7 / 5) = 4.4 for 7
    np.testing.assert_allclose(path(2 * far)[..., 1], 2 * path(far)[..., 1], rtol=0.05, atol=1e-5)
    # ...and bounded beyond, so a wild draw cannot compound through the layers.
    bound = 20 * jnp.abs(cond.proj).sum(0) @ jnp.abs(lift)
    assert bool(jnp.all(jnp.abs(path(1e6 * x)[..., 1]) <= bound + 1e-4))
    no_path = GuideConditioner(net, n_params=2, bound=None, scale_index=1, linear_rank=0)
    assert no_path.lift is None
    np.testing.assert_array_equal(no_path(x), net(x))
    with pytest.raises(ValueError, match="linear_rank"):
        GuideConditioner(net, n_params=2, scale_index=1, linear_rank=-1)


def test_guide_follows_the_funnel_scale_into_the_neck():
    from numpyro_coupling.targets import funnel

    def model():
        funnel(dim=3)

    guide, params, _ = fit_guide(model, steps=3000, progress_bar=False, key=jr.key(3))
    transform = guide.get_transform(params)
    # x_i ~ N(0, exp(v / 2)): the guide's conditional log-scale must follow v / 2 in the
    # bulk and, within 0.7, at z0 = -3.5 (v about -10), where SVI draws hardly ever land
    # (without the linear path it is 1.1-1.6 off there).
    for z0, tol in ((-3.5, 0.7), (-2.0, 0.3), (0.0, 0.3), (2.0, 0.3)):
        z = jnp.zeros(3).at[0].set(z0)
        v = transform(z)[0]
        log_scales = jnp.log(jnp.abs(jnp.diagonal(jax.jacfwd(transform)(z))[1:]))
        np.testing.assert_allclose(log_scales, v / 2, atol=tol)


def test_guide_optimizer_decays_and_validates():
    from numpyro_coupling import guide_optimizer

    opt = guide_optimizer(0.1, 50, clip_norm=None)
    state = opt.init({"a": jnp.zeros(())})
    steps = []
    for _ in range(50):
        before = opt.get_params(state)["a"]
        state = opt.update({"a": jnp.ones(())}, state, value=jnp.zeros(()))
        steps.append(float(before - opt.get_params(state)["a"]))
    assert steps[0] == pytest.approx(0.1, rel=1e-3)  # Adam's first step: the full peak
    assert steps[-1] == pytest.approx(0.01, rel=0.05)  # a tenth of it at the end
    flat = guide_optimizer(0.1, 50, schedule="constant", clip_norm=None)
    state = flat.update({"a": jnp.ones(())}, flat.init({"a": jnp.zeros(())}), value=0.0)
    assert float(flat.get_params(state)["a"]) == pytest.approx(-0.1, rel=1e-3)
    for bad in ({"schedule": "linear"}, {"clip_norm": 0.0}, {"final_fraction": 0.0}):
        with pytest.raises(ValueError):
            guide_optimizer(0.1, 50, **bad)


def test_guide_diagnostics_score_peer_guides_without_an_inverse():
    from numpyro.infer.autoguide import AutoBNAFNormal

    # NumPyro's BNAF has no analytic inverse: its draws are scored by their own log-dets.
    _, idata = neutra_mcmc(
        gaussian_2d,
        guide=AutoBNAFNormal(gaussian_2d),
        fit_kwargs={"steps": 20},
        num_warmup=10,
        num_samples=10,
        progress_bar=False,
    )
    assert np.isfinite(idata.attrs["guide_k_hat"]) and idata.attrs["guide_ess"] > 0
    assert np.isfinite(sampling_efficiency(idata)["k_hat"])


def _svi_grads(guide, elbo):
    svi = SVI(gaussian_2d, guide, numpyro.optim.Adam(1e-3), elbo)
    params = svi.get_params(svi.init(jr.key(0)))
    return jax.jit(jax.grad(lambda p: elbo.loss(jr.key(1), p, gaussian_2d, guide)))(params)


def test_stl_is_off_under_objectives_it_biases():
    from numpyro.infer import RenyiELBO

    def guide(stl):
        return AutoCouplingFlow(gaussian_2d, n_layers=1, nn_width=2, precondition=None, stl=stl)

    def close(a, b):
        return all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    renyi = RenyiELBO(alpha=0.5, num_particles=4)
    unbiased = _svi_grads(guide(False), renyi)
    assert close(_svi_grads(guide("auto"), renyi), unbiased)
    with pytest.warns(UserWarning, match="stl=True biases the gradient of RenyiELBO"):
        assert not close(_svi_grads(guide(True), renyi), unbiased)
    # Under Trace_ELBO "auto" is the STL gradient.
    assert not close(
        _svi_grads(guide("auto"), Trace_ELBO()), _svi_grads(guide(False), Trace_ELBO())
    )
    with pytest.raises(ValueError, match="stl"):
        AutoCouplingFlow(gaussian_2d, stl="yes")
