"""Centred or non-centred hierarchical sites: detection, rewriting, the measured choice."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import Predictive

from numpyro_coupling import (
    AutoCouplingFlow,
    centredness,
    choose_parameterisation,
    hierarchical_sites,
    neutra_mcmc,
    noncentre,
    sampling_efficiency,
)

Y = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
SIGMA = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])


def eight_schools(sigma=SIGMA):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.sample("theta", dist.Normal(mu, tau).expand([8]).to_event(1))
    numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=Y)


def two_groups():
    # One level the data pin down (sd 0.5 around each group), one they barely touch.
    for name, sd in (("vague", 20.0), ("sharp", 0.5)):
        mu = numpyro.sample(f"mu_{name}", dist.Normal(0.0, 5.0))
        tau = numpyro.sample(f"tau_{name}", dist.HalfNormal(5.0))
        theta = numpyro.sample(f"theta_{name}", dist.Normal(mu, tau).expand([8]).to_event(1))
        numpyro.sample(f"y_{name}", dist.Normal(theta, sd).to_event(1), obs=Y)


def test_hierarchical_sites_finds_loc_scale_sites_that_depend_on_latents():
    def model():
        nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        numpyro.sample("t", dist.StudentT(nu, 0.0, s))  # scale from a latent: a candidate
        numpyro.sample("fixed", dist.Normal(0.0, 3.0))  # constant parameters
        numpyro.sample("positive", dist.HalfNormal(s))  # not a location-scale family
        numpyro.sample("obs", dist.Normal(0.0, s), obs=1.0)  # observed

    assert hierarchical_sites(model) == ["t"]
    assert hierarchical_sites(eight_schools) == ["theta"]


def sparse_regression():
    # A horseshoe-like sparse regression: two coefficients the data pin down, six they
    # leave to the prior (the same site, so no site-wide choice suits every element).
    x = np.random.default_rng(0).normal(size=(40, 8))
    y = x[:, :2] @ np.array([3.0, -2.0]) + 0.5 * np.random.default_rng(1).normal(size=40)
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    lam = numpyro.sample("lam", dist.HalfCauchy(jnp.ones(8)).to_event(1))
    beta = numpyro.sample("beta", dist.Normal(0.0, tau * lam).to_event(1))
    numpyro.sample("y", dist.Normal(jnp.asarray(x) @ beta, 0.5), obs=y)


@pytest.mark.parametrize("centring", [["t"], {"t": 0.3}, {"t": np.array(0.7)}])
def test_noncentre_keeps_the_prior_and_the_original_site(centring):
    def model():
        nu = numpyro.sample("nu", dist.Gamma(4.0, 1.0))
        s = numpyro.sample("s", dist.HalfNormal(2.0))
        numpyro.sample("t", dist.StudentT(nu, 1.0, s))

    n = 20_000
    centred = Predictive(model, num_samples=n)(jr.key(0))
    rewritten = Predictive(noncentre(model, centring), num_samples=n)(jr.key(1))
    assert "t_decentered" in rewritten and rewritten["t"].shape == (n,)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        a, b = np.quantile(centred["t"], q), np.quantile(rewritten["t"], q)
        assert abs(a - b) < 0.05 * (1 + abs(a)), q
    assert noncentre(model, []) is model


def test_choice_follows_the_data_site_by_site():
    choice = choose_parameterisation(two_groups)
    assert choice.noncentred == ("theta_vague",)
    assert choice.n_grad > 0 and () in choice.elbos
    assert all(np.isfinite(v) for v in choice.elbos.values())

    def flat():
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    nothing = choose_parameterisation(flat)
    assert nothing.model is flat and nothing.noncentred == () and nothing.n_grad == 0


def test_choice_centres_a_sparse_regression_element_by_element():
    c = centredness(sparse_regression)["beta"]
    assert c.shape == (8,) and np.all((c >= 0) & (c <= 1))
    assert c[:2].min() > 0.8 and c[2:].max() < c[:2].min()  # the active coefficients
    choice = choose_parameterisation(sparse_regression)
    partial = ("beta (partial)",)
    assert choice.noncentred == ("beta",) and set(choice.centring) == {"beta"}
    np.testing.assert_array_equal(choice.centring["beta"], c)
    assert choice.elbos[partial] > max(v for k, v in choice.elbos.items() if k != partial)
    trace = handlers.trace(handlers.seed(choice.model, 0)).get_trace()
    assert trace["beta"]["type"] == "deterministic" and "beta_decentered" in trace


TINY = {
    "guide": {"n_layers": 1, "nn_width": 4},
    "fit_kwargs": {"steps": 30},
    "num_warmup": 30,
    "num_samples": 20,
    "num_chains": 2,
    "progress_bar": False,
}


def test_neutra_mcmc_non_centres_a_vague_hierarchical_model():
    _, idata = neutra_mcmc(eight_schools, key=jr.key(0), **TINY)
    assert idata.attrs["noncentred_sites"] == ["theta"]
    assert idata.posterior["theta"].shape == (2, 20, 8)
    assert "theta_decentered" in idata.posterior
    assert idata.attrs["reparam_grads"] > 0 and "as written" in idata.attrs["reparam_elbos"]
    assert idata.attrs["centring"] == ""  # every element's centring 0: fully non-centred
    eff = sampling_efficiency(idata)
    spent = idata.attrs["svi_grads"] + idata.attrs["warmup_grads"] + idata.attrs["reparam_grads"]
    assert eff["total_grads"] == spent + eff["n_grads"]


def test_neutra_mcmc_centres_a_sparse_regression_partly():
    _, idata = neutra_mcmc(sparse_regression, key=jr.key(0), **TINY)
    assert idata.attrs["noncentred_sites"] == ["beta"]
    assert idata.attrs["centring"].startswith("beta: ")
    assert "beta (partial)" in idata.attrs["reparam_elbos"]
    assert idata.posterior["beta"].shape == (2, 20, 8)


def test_reparam_errors_name_the_argument():
    with pytest.raises(ValueError, match="reparam"):
        neutra_mcmc(eight_schools, reparam=["mu"], **TINY)
    with pytest.raises(ValueError, match="reparam"):
        neutra_mcmc(eight_schools, reparam="yes", **TINY)
    guide = AutoCouplingFlow(eight_schools, n_layers=1, nn_width=4)
    with pytest.raises(ValueError, match="noncentre"):
        neutra_mcmc(eight_schools, reparam=True, **(TINY | {"guide": guide}))
    # "auto" keeps a given guide's model as it is.
    _, idata = neutra_mcmc(eight_schools, **(TINY | {"guide": guide}))
    assert idata.attrs["noncentred_sites"] == [] and "theta_decentered" not in idata.posterior
    assert float(jnp.asarray(idata.posterior["theta"]).std()) > 0
