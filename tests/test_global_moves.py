"""GlobalMoves: NUTS mixed with independence moves leaves a two-mode target invariant."""

import arviz as az
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDiagonalNormal

from numpyro_coupling import GlobalMoves, neutra_nuts, with_global_moves
from numpyro_coupling.global_moves import adapted_rate

WEIGHTS = jnp.array([0.3, 0.7])
MEANS = jnp.array([-4.0, 4.0])
SCALE = 0.7


def two_modes():
    # Modes 11 standard deviations apart: NUTS alone never crosses.
    mixture = dist.MixtureSameFamily(dist.Categorical(WEIGHTS), dist.Normal(MEANS, SCALE))
    numpyro.sample("x", mixture)


def _within_mc_error(draws, exact):
    """``(chain, draw)`` draws average to ``exact`` within 4 Monte Carlo standard errors."""
    draws = np.asarray(draws, float)
    se = np.sqrt(np.var(draws) / float(az.ess(draws)))
    return abs(draws.mean() - exact) < 4 * se


@pytest.mark.filterwarnings("ignore::numpyro_coupling.DiagnosticWarning")
def test_neutra_moves_leave_two_modes_invariant():
    # A hand-made guide, N(0, 4^2): mass on both modes, far from the posterior.
    guide = AutoDiagonalNormal(two_modes, init_scale=4.0)
    svi = SVI(two_modes, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    params = svi.get_params(svi.init(jr.key(0)))
    # Two chains run as one vectorised chain: the batched code path.
    _, idata = neutra_nuts(
        two_modes, guide, params, num_warmup=200, num_samples=1000, num_chains=2,
        key=jr.key(1), progress_bar=False, global_moves=True,
        mcmc_kwargs={"chain_method": "vectorized"},
    )  # fmt: skip
    x = idata.posterior["x"].values
    right = x > 0
    assert _within_mc_error(right, 0.7)
    assert _within_mc_error(x, 0.4 * 4.0)
    assert _within_mc_error(x**2, 16.0 + SCALE**2)
    assert np.all(np.sum(right[:, 1:] != right[:, :-1], axis=1) > 30)

    stats = idata.sample_stats
    prob = stats["global_accept_prob"].values
    attempted = ~np.isnan(prob)
    assert 0.1 < attempted.mean() < 0.95
    assert np.all((prob[attempted] >= 0) & (prob[attempted] <= 1))
    accepted = stats["global_accepted"].values
    assert not np.any(accepted & ~attempted)
    # A move is a transition of one gradient; the adapted rate stays fixed after warm-up.
    assert np.all(stats["n_steps"].values[attempted] == 1)
    rate = stats["global_rate"].values
    assert np.all(rate == rate[:, :1])
    attrs = idata.attrs
    assert attrs["global_attempts"] == attempted.sum()
    assert attrs["global_accepts"] == accepted.sum()
    assert attrs["global_acceptance_rate"] == pytest.approx(accepted.sum() / attempted.sum())


def test_options_are_checked():
    with pytest.raises(ValueError, match="rate"):
        GlobalMoves(NUTS(two_modes), rate=1.5)
    with pytest.raises(TypeError, match="inner"):
        GlobalMoves(two_modes)
    with pytest.raises(TypeError, match="global_moves"):
        with_global_moves(NUTS(two_modes), "often")
    assert with_global_moves(NUTS(two_modes), None).__class__ is NUTS
    assert float(adapted_rate(0.0, 10.0)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="nuts_warmup"):
        GlobalMoves(NUTS(two_modes), nuts_warmup=-1)


def test_nuts_adapts_on_the_first_part_of_warmup():
    # NUTS adapts over nuts_warmup transitions, each followed by a move; the rest of the
    # warm-up is the final kernel: a move or a NUTS step, with the step size frozen.
    def normal():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    mcmc = MCMC(
        GlobalMoves(NUTS(normal), rate=0.5, nuts_warmup=40),
        num_warmup=100, num_samples=5, progress_bar=False,
    )  # fmt: skip
    fields = ("adapt_state.step_size", "num_steps", "global_accept_prob")
    mcmc.warmup(jr.key(0), collect_warmup=True, extra_fields=fields)
    extra = mcmc.get_extra_fields()
    step_size = np.asarray(extra["adapt_state.step_size"])
    assert len(np.unique(step_size[:40])) > 1
    assert np.all(step_size[40:] == step_size[40])
    moved = ~np.isnan(np.asarray(extra["global_accept_prob"]))
    n_steps = np.asarray(extra["num_steps"])
    assert np.all(n_steps[:40] >= 1 + moved[:40])  # NUTS, and a move where attempted
    assert np.all(n_steps[40:][moved[40:]] == 1)  # a move instead of NUTS
    assert 0 < moved[40:].mean() < 1
