"""GlobalMoves: NUTS mixed with independence moves leaves a two-mode target invariant."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from numpyro_coupling import GLOBAL_MOVE_FIELDS, GlobalMoves, neutra_mcmc, with_global_moves
from numpyro_coupling.global_moves import adapted_rate

WEIGHTS = jnp.array([0.3, 0.7])
MEANS = jnp.array([-4.0, 4.0])
SCALE = 0.7


def two_modes():
    # Modes 11 standard deviations apart: NUTS alone never crosses.
    mixture = dist.MixtureSameFamily(dist.Categorical(WEIGHTS), dist.Normal(MEANS, SCALE))
    numpyro.sample("x", mixture)


def _ess(x):
    import arviz as az

    return float(az.ess(np.asarray(x, float)[None]))


def test_moves_leave_two_modes_invariant():
    # The proposal, a wide Gaussian, plays the guide: mass on both modes, far from exact.
    proposal = dist.Normal(0.0, 5.0).expand([1]).to_event(1)
    # The rate adapts in warm-up (the default), then stays fixed.
    kernel = GlobalMoves(NUTS(two_modes), proposal=proposal)
    mcmc = MCMC(kernel, num_warmup=300, num_samples=3000, progress_bar=False)
    mcmc.run(jr.key(1), extra_fields=(*GLOBAL_MOVE_FIELDS, "num_steps"))
    x = np.asarray(mcmc.get_samples()["x"])
    extra = mcmc.get_extra_fields()

    right = x > 0
    # Within 4 Monte Carlo standard errors (ESS-based) of the exact values.
    share_se = np.sqrt(0.7 * 0.3 / _ess(right))
    assert abs(right.mean() - 0.7) < 4 * share_se
    mean, second = 0.4 * 4.0, 16.0 + SCALE**2
    assert abs(x.mean() - mean) < 4 * np.sqrt(np.var(x) / _ess(x))
    assert abs((x**2).mean() - second) < 4 * np.sqrt(np.var(x**2) / _ess(x**2))
    assert np.sum(right[1:] != right[:-1]) > 100

    prob = np.asarray(extra["global_accept_prob"])
    attempted = ~np.isnan(prob)
    assert 0.1 < np.mean(attempted) < 0.95
    assert np.all((prob[attempted] >= 0) & (prob[attempted] <= 1))
    accepted = np.asarray(extra["global_accepted"])
    assert not np.any(accepted & ~attempted)
    # A move is a transition of one gradient.
    assert np.all(np.asarray(extra["num_steps"])[attempted] == 1)
    assert np.all(np.asarray(extra["global_rate"]) == extra["global_rate"][0])


@pytest.mark.filterwarnings("ignore::numpyro_coupling.DiagnosticWarning")
def test_neutra_mcmc_records_the_moves():
    _, idata = neutra_mcmc(
        two_modes,
        guide={"n_layers": 1, "nn_width": 4, "precondition": None},
        fit_kwargs={"steps": 10},
        num_warmup=20,
        num_samples=40,
        progress_bar=False,
        global_moves=0.5,
    )
    stats = idata.sample_stats
    assert stats["global_accept_prob"].shape == (1, 40)
    assert stats["global_accepted"].dtype == bool
    attrs = idata.attrs
    assert attrs["global_attempts"] == int(np.sum(~np.isnan(stats["global_accept_prob"].values)))
    assert 0.0 <= attrs["global_acceptance_rate"] <= 1.0
    assert attrs["global_rate"] == 0.5


def test_options_are_checked():
    with pytest.raises(ValueError, match="rate"):
        GlobalMoves(NUTS(two_modes), rate=1.5)
    with pytest.raises(TypeError, match="inner"):
        GlobalMoves(two_modes)
    with pytest.raises(TypeError, match="global_moves"):
        with_global_moves(NUTS(two_modes), "often")
    assert with_global_moves(NUTS(two_modes), None).__class__ is NUTS
    assert float(adapted_rate(0.0, 10.0)) == pytest.approx(0.1)
