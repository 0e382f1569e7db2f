"""The reference posteriors' NumPyro translations trace and have a finite log density."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import init_to_uniform
from numpyro.infer.util import log_density

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import posteriordb  # noqa: E402

PDB = posteriordb.posteriordb_dir()
NAMES = list(posteriordb.POSTERIORS)


def _needs_files(name):
    if posteriordb.POSTERIORS[name].source not in ("exact", "gibbs") and not PDB.is_dir():
        pytest.skip(f"posteriordb files not found at {PDB} (set POSTERIORDB to their folder)")


@pytest.mark.parametrize("name", NAMES)
def test_traces_and_log_density_finite_at_reference_mean(name, x64):
    _needs_files(name)
    entry = posteriordb.POSTERIORS[name]
    data, reference = entry.data(), entry.reference()
    point = {k: v.mean(0) for k, v in reference.items()}
    if entry.to_latent is not None:
        point = entry.to_latent(data, point)
    # Values from init_to_uniform: the flat priors' ImproperUniform cannot be sampled.
    seeded = handlers.substitute(handlers.seed(entry.model, 0), substitute_fn=init_to_uniform)
    trace = handlers.trace(seeded).get_trace(**data)
    latent = {k for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
    assert latent == set(point)
    for k in reference:  # the reference's sites are the model's, with the same shapes
        assert jax.numpy.shape(trace[k]["value"]) == reference[k].shape[1:], k
    lp, _ = log_density(entry.model, (), data, point)
    assert np.isfinite(float(lp))


def test_stan_names_map_to_sites():
    chains = [
        {"b[1]": [1.0], "b[2]": [2.0], "s": [3.0]},
        {"b[1]": [4.0], "b[2]": [5.0], "s": [6.0]},
    ]
    sites = posteriordb.stan_draws_to_sites(chains)
    assert sites["b"].tolist() == [[1.0, 2.0], [4.0, 5.0]]
    assert sites["s"].tolist() == [3.0, 6.0]


def test_exact_references_match_their_gaussians():
    mean, cov = posteriordb.regression_posterior(**posteriordb.uncentred_regression_data())
    draws = posteriordb.uncentred_regression_reference()
    x = np.stack([draws["alpha"], draws["beta"]], axis=1)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(x.mean(0) - mean) / sd < 0.05)
    assert np.allclose(np.corrcoef(x.T)[0, 1], cov[0, 1] / (sd[0] * sd[1]), atol=1e-5)
    data = posteriordb.ill_conditioned_data()
    g = posteriordb.ill_conditioned_reference()["x"]
    assert np.all(np.abs(g.mean(0) - data["mean"]) / np.sqrt(np.diag(data["cov"])) < 0.05)


def test_exact_hierarchy_draws_match_the_posteriordb_reference():
    # The grid-and-conditionals sampler against eight schools' gold-standard draws.
    _needs_files("eight_schools_centered")
    reference = posteriordb.POSTERIORS["eight_schools_centered"].reference()
    data = posteriordb.load_data("eight_schools")
    exact = posteriordb.normal_hierarchy_draws(data["y"], data["sigma"], 5.0, 5.0, n=40_000)
    for site in ("mu", "tau", "theta"):
        ref, ours = reference[site], exact[site]
        sd = ref.std(0)
        # Monte Carlo error of the difference: about sd * sqrt(1/10,000 + 1/40,000).
        assert np.all(np.abs(ours.mean(0) - ref.mean(0)) / sd < 0.05), site
        assert np.all(np.abs(np.log(ours.std(0) / sd)) < 0.05), site
    # The exact neck: the reference draws' 0.5% quantile of log tau lies within their
    # own Monte Carlo error (about 0.11 for 10,000 draws) of the grid's.
    exact_q = posteriordb.POSTERIORS["eight_schools_centered"].log_tau_quantile(0.005)
    assert abs(exact_q - np.quantile(np.log(reference["tau"]), 0.005)) < 0.3
    assert abs(exact_q - np.quantile(np.log(exact["tau"]), 0.005)) < 0.2


def test_exact_references_of_the_other_classes():
    # The banana: x2 given x1 is N(b (x1^2 - 9), 1), so x2 - b (x1^2 - 9) is standard.
    b = posteriordb.banana_data()["b"]
    x = posteriordb.banana_reference()["x"]
    resid = x[:, 1] - b * (x[:, 0] ** 2 - 9.0)
    assert abs(resid.mean()) < 0.05 and abs(resid.std() - 1.0) < 0.03
    assert abs(x[:, 0].std() - 3.0) < 0.1
    # The Student-t: covariance df / (df - 2) L L^T.
    data = posteriordb.student_t_data()
    t = posteriordb.student_t_reference()["x"]
    cov = data["df"] / (data["df"] - 2) * data["scale_tril"] @ data["scale_tril"].T
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(t.mean(0) - data["loc"]) / sd < 0.05)
    assert np.all(np.abs(np.log(t.std(0) / sd)) < 0.06)


def test_horseshoe_gibbs_keeps_its_draws_in_the_support():
    data = posteriordb.horseshoe_data()
    draws = posteriordb.horseshoe_gibbs(**data, n=200, chains=4, thin=2)
    assert draws["beta"].shape == (200, data["X"].shape[1]) and draws["tau"].shape == (200,)
    assert np.all(draws["lam"] > 0) and np.all(draws["tau"] > 0) and np.all(draws["sigma2"] > 0)
    # Three large coefficients, found: their posterior means sit near the ones simulated.
    assert np.allclose(draws["beta"][:, :3].mean(0), [2.5, -1.5, 1.0], atol=0.4)
