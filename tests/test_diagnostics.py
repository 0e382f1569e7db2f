import numpy as np
import pytest
from scipy import stats

from numpyro_coupling.diagnostics import (
    gpd_fit,
    importance_diagnostics,
    is_ess,
    log_evidence,
    pareto_khat,
)


def _normal_log_density(x, sd):
    return stats.norm(0.0, sd).logpdf(x).sum(-1)


def test_khat_fires_on_a_too_narrow_proposal():
    # Proposal N(0, I) for the target N(0, 3^2 I) in 3-D: infinite-variance weights.
    x = np.random.default_rng(0).normal(size=(4000, 3))
    k = pareto_khat(_normal_log_density(x, 3.0) - _normal_log_density(x, 1.0))
    assert k > 0.7


def test_khat_is_small_for_an_exact_proposal():
    x = np.random.default_rng(1).normal(size=(4000, 3))
    # Unnormalised target (log Z = 2) evaluated another way: weights equal up to rounding.
    log_p = -0.5 * np.sum(x * x, -1) + 2.0
    log_q = _normal_log_density(x, 1.0) + 0.5 * 3 * np.log(2 * np.pi)
    assert pareto_khat(log_p - log_q) < 0.5
    assert pareto_khat(np.zeros(100)) == -np.inf


def test_khat_is_small_for_a_wider_proposal():
    x = 1.5 * np.random.default_rng(2).normal(size=(4000, 3))
    assert pareto_khat(_normal_log_density(x, 1.0) - _normal_log_density(x, 1.5)) < 0.5


@pytest.mark.parametrize("n", [50, 1000, 4000])
def test_khat_matches_arviz_psislw(n):
    arviz = pytest.importorskip("arviz")
    if not hasattr(arviz, "psislw"):
        pytest.skip("this ArviZ has no psislw")
    rng = np.random.default_rng(n)
    for sd in (0.7, 1.3, 2.5, 5.0):
        x = rng.normal(size=n)
        lw = _normal_log_density(x[:, None], sd) - _normal_log_density(x[:, None], 1.0)
        _, k_ref = arviz.psislw(lw.copy())
        assert abs(pareto_khat(lw) - float(k_ref)) < 1e-8


@pytest.mark.parametrize("k_true", [0.0, 0.5, 1.0])
def test_gpd_fit_recovers_the_shape(k_true):
    draws = stats.genpareto(c=k_true, scale=2.0).rvs(size=20000, random_state=3)
    k, sigma = gpd_fit(draws)
    assert abs(k - k_true) < 0.05
    assert abs(sigma / 2.0 - 1.0) < 0.1


def test_gpd_fit_rejects_empty_or_non_positive_data():
    with pytest.raises(ValueError, match="exceedances"):
        gpd_fit([0.0, 0.0])


def test_ess_and_log_evidence_of_a_known_normaliser():
    # Target 5 * N(0, 1) (log Z = log 5), proposal N(0, 1.5^2): a good, inexact proposal.
    x = 1.5 * np.random.default_rng(4).normal(size=20000)
    log_p = np.log(5.0) + stats.norm.logpdf(x)
    log_q = stats.norm(0.0, 1.5).logpdf(x)
    log_z, se = log_evidence(log_p - log_q)
    assert abs(log_z - np.log(5.0)) < 4 * se
    assert 0 < se < 0.02
    ess = is_ess(log_p - log_q)
    assert 0.5 * x.size < ess < x.size
    # The delta-method se is sqrt((S / ESS - 1) / S).
    assert np.isclose(se, np.sqrt((x.size / ess - 1) / x.size))


def test_importance_diagnostics_bundles_the_three():
    x = np.random.default_rng(5).normal(size=1000)
    log_q = stats.norm.logpdf(x)
    diag = importance_diagnostics(log_q + 1.0, log_q)
    assert np.isclose(diag.ess, 1000) and np.isclose(diag.log_z, 1.0) and diag.log_z_se < 1e-12
    with pytest.raises(ValueError, match="log_p and log_q"):
        importance_diagnostics(np.zeros(3), np.zeros(4))
