import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from numpyro_coupling import Invert, fit_guide, neutra_mcmc, targets
from numpyro_coupling.diagnostics import guide_diagnostics
from numpyro_coupling.linear import DenseAffine
from numpyro_coupling.refinement import (
    guide_scores,
    refine_guide,
    refit_tails,
    score_matching_loss,
    tail_draws,
)


def _funnel_latents(n, seed):
    draws = targets.funnel_draws(n, dim=3, seed=seed)
    return jnp.concatenate([jnp.asarray(draws["v"])[:, None], jnp.asarray(draws["x"])], -1)


def test_score_matching_loss_vanishes_exactly_at_the_target():
    x = jr.normal(jr.key(0), (50, 2)) * jnp.array([2.0, 0.5])
    scale = jnp.diag(jnp.array([2.0, 0.5]))
    exact = score_matching_loss(
        Invert(DenseAffine(jnp.zeros(2), scale)), x, -x / scale.diagonal() ** 2
    )
    wrong = score_matching_loss(
        Invert(DenseAffine(jnp.zeros(2), jnp.eye(2))), x, -x / scale.diagonal() ** 2
    )
    assert float(exact) < 1e-10 and float(wrong) > 1.0


@pytest.fixture(scope="module")
def short_fit():
    """A reverse-KL guide of the 3-D funnel after a short fit: it under-covers the neck."""
    return fit_guide(
        targets.funnel,
        dim=3,
        guide={"n_layers": 4, "nn_width": 8, "precondition": None},
        steps=200,
        progress_bar=False,
    )


def test_refinement_improves_a_reverse_kl_guide_on_a_small_funnel(short_fit):
    # Score matching on draws of the funnel itself (what a chain would give) repairs the
    # guide, with no draw from the guide.
    guide, params, _ = short_fit
    draws, held_out = _funnel_latents(400, seed=1), _funnel_latents(1000, seed=2)
    scores = guide_scores(guide, draws)
    refined, losses = refine_guide(guide, params, draws, scores, steps=200, learning_rate=3e-3)
    assert set(refined) == set(params)
    assert losses[-30:].mean() < 0.2 * losses[:30].mean()

    def cross_entropy(p):  # KL(p || q) up to the funnel's entropy
        return float(-jnp.mean(guide.get_posterior(p).log_prob(held_out)))

    assert cross_entropy(refined) < cross_entropy(params) - 1.0
    before = guide_diagnostics(guide, params, jr.key(3), 1000)
    after = guide_diagnostics(guide, refined, jr.key(3), 1000)
    assert after.ess > 2 * before.ess and abs(after.log_z) < 0.1


def test_refine_guide_rejects_bad_draws(short_fit):
    guide, params, _ = short_fit
    with pytest.raises(ValueError, match="draws must have shape"):
        refine_guide(guide, params, jnp.zeros(3))
    with pytest.raises(ValueError, match="scores must have"):
        refine_guide(guide, params, jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="steps"):
        refine_guide(guide, params, jnp.zeros((4, 3)), steps=0)


def test_tail_draws_widen_half_of_the_base():
    identity = Invert(DenseAffine(jnp.zeros(2), jnp.eye(2)))
    x = np.asarray(tail_draws(identity, jr.key(0), 8000, widen=1.5))
    np.testing.assert_allclose(x[:4000].std(0), 1.0, rtol=0.05)
    np.testing.assert_allclose(x[4000:].std(0), 1.5, rtol=0.05)
    with pytest.raises(ValueError, match="n must be"):
        tail_draws(identity, jr.key(0), 1)
    with pytest.raises(ValueError, match="widen"):
        tail_draws(identity, jr.key(0), 4, widen=0.5)


def test_refit_tails_straightens_the_warped_posterior_where_the_fit_left_it(short_fit):
    guide, params, _ = short_fit
    refitted, losses, n_grads = refit_tails(
        guide, params, jr.key(1), n=400, steps=200, learning_rate=3e-3
    )
    assert n_grads == 400 and set(refitted) == set(params) and losses.shape == (200,)
    # Held out: other tail draws of the fitted guide, with their scores.
    held_out = tail_draws(guide.get_transform(params), jr.key(2), 1000)
    scores = guide_scores(guide, held_out)

    def loss(p):
        return float(score_matching_loss(guide.get_transform(p), held_out, scores))

    assert loss(refitted) < 0.5 * loss(params)


def test_neutra_refines_in_warm_up_and_counts_its_gradients():
    _, idata = neutra_mcmc(
        targets.funnel,
        dim=3,
        guide={"n_layers": 2, "nn_width": 4, "precondition": None},
        fit_kwargs={"steps": 50},
        num_warmup=60,
        num_samples=20,
        num_chains=2,
        refine={"steps": 20},
        progress_bar=False,
    )
    attrs = idata.attrs
    # The pilot's leapfrog steps and one score for each of its pooled draws (24 a chain).
    assert attrs["refine_grads"] > 48
    assert attrs["warmup_grads"] > attrs["refine_grads"]
    assert np.isfinite(attrs["refine_loss_last"])
    assert idata.posterior["v"].shape == (2, 20)
