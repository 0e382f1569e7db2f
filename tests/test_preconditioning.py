import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from numpyro_coupling.linear import DenseAffine
from numpyro_coupling.preconditioning import (
    gaussian_vi_fit,
    laplace_fit,
    whitened_normal_draws,
)


def _ill_conditioned_gaussian(d=10, log10_cond=8, seed=0):
    """Mean and covariance of a randomly rotated Gaussian of condition number 10^log10_cond."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.logspace(-log10_cond / 2, log10_cond / 2, d)
    return 5.0 * rng.normal(size=d), (q * eig) @ q.T


def _gaussian_kl(loc, chol, mean, cov):
    """KL(N(loc, chol chol^T) || N(mean, cov)) in closed form."""
    loc, chol = np.asarray(loc), np.asarray(chol)
    prec = np.linalg.inv(cov)
    diff = mean - loc
    d = mean.shape[0]
    log_det_q = 2 * np.sum(np.log(np.diag(chol)))
    log_det_p = np.linalg.slogdet(cov)[1]
    return 0.5 * (np.trace(prec @ chol @ chol.T) + diff @ prec @ diff - d + log_det_p - log_det_q)


def _potential(mean, cov):
    prec = jnp.asarray(np.linalg.inv(cov))
    mean = jnp.asarray(mean)
    return lambda x: 0.5 * (x - mean) @ prec @ (x - mean)


def test_laplace_fit_solves_a_badly_conditioned_gaussian(x64):
    mean, cov = _ill_conditioned_gaussian()
    assert np.linalg.cond(cov) > 0.99e8
    fit = jax.jit(lambda x: laplace_fit(_potential(mean, cov), x))(jnp.zeros(10))
    assert bool(fit.ok)
    assert _gaussian_kl(fit.loc, fit.chol, mean, cov) < 1e-6
    assert np.allclose(np.tril(fit.chol), fit.chol) and np.all(np.diag(fit.chol) > 0)
    assert 0 < int(fit.n_grad) < 1000


def test_preconditioned_vi_fit_is_exact_on_a_badly_conditioned_gaussian(x64):
    mean, cov = _ill_conditioned_gaussian()
    potential = _potential(mean, cov)
    # A rough preconditioner (the true factor, distorted) and a start away from the mean.
    rng = np.random.default_rng(3)
    rough = np.linalg.cholesky(cov) @ (np.eye(10) + np.tril(0.3 * rng.normal(size=(10, 10))))
    rough = rough * np.sign(np.diag(rough))
    x0 = jnp.asarray(mean + rough @ rng.normal(size=10))
    fit = jax.jit(lambda x, k: gaussian_vi_fit(potential, x, k, init_chol=rough))(x0, jr.key(0))
    assert bool(fit.ok)
    assert _gaussian_kl(fit.loc, fit.chol, mean, cov) < 1e-6


def test_vi_fit_with_whitened_draws_is_exact_on_a_correlated_gaussian(x64):
    # Few draws suffice: with sample mean 0 and covariance I the quadratic is averaged exactly.
    mean, cov = _ill_conditioned_gaussian(d=4, log10_cond=2, seed=1)
    potential = _potential(mean, cov)
    fit = jax.jit(lambda x, k: gaussian_vi_fit(potential, x, k, n_draws=5))(jnp.zeros(4), jr.key(1))
    assert _gaussian_kl(fit.loc, fit.chol, mean, cov) < 1e-8
    assert int(fit.n_grad) % 5 == 0


def test_laplace_fit_flags_a_potential_without_a_mode(x64):
    def linear(x):
        return jnp.sum(x)

    fit = jax.jit(lambda x: laplace_fit(linear, x, max_iter=50))(jnp.zeros(3))
    assert not bool(fit.ok)
    assert np.allclose(fit.chol, np.eye(3))


def test_fits_reject_a_start_that_is_not_a_vector():
    with pytest.raises(ValueError, match="x0"):
        laplace_fit(jnp.sum, jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="n must exceed"):
        whitened_normal_draws(jr.key(0), 3, 3)


def test_whitened_draws_have_exact_moments(x64):
    eps = whitened_normal_draws(jr.key(2), 7, 4)
    assert np.allclose(eps.mean(0), 0.0, atol=1e-12)
    assert np.allclose(eps.T @ eps / 7, np.eye(4), atol=1e-12)


def test_dense_affine_whitens_and_inverts(x64):
    mean, cov = _ill_conditioned_gaussian(d=3, log10_cond=3, seed=2)
    chol = np.linalg.cholesky(cov)
    layer = DenseAffine(jnp.asarray(mean), jnp.asarray(chol))
    x = jr.normal(jr.key(3), (5, 3))
    u, log_det = layer.transform_and_log_det(x)
    back, inv_log_det = layer.inverse_and_log_det(u)
    assert np.allclose(back, x)
    assert np.allclose(log_det, -inv_log_det) and log_det.shape == (5,)
    jac = jax.jacobian(layer.transform)(x[0])
    assert np.allclose(log_det[0], np.linalg.slogdet(jac)[1])
    # Gaussian draws N(mean, cov) map to standard normal draws.
    draws = mean + np.random.default_rng(0).normal(size=(20000, 3)) @ chol.T
    white = np.asarray(layer.transform(jnp.asarray(draws)))
    assert np.allclose(np.cov(white.T), np.eye(3), atol=0.05)


def test_dense_affine_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="chol"):
        DenseAffine(jnp.zeros(3), jnp.eye(2))


def test_the_guide_starts_as_the_fit_of_an_ill_conditioned_gaussian(x64):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO

    from numpyro_coupling import AutoCouplingFlow

    mean, cov = _ill_conditioned_gaussian(d=6)

    def model():
        numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(mean), jnp.asarray(cov)))

    guide = AutoCouplingFlow(model, n_layers=2, nn_width=8)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    params = svi.get_params(svi.init(jr.key(0)))
    # Strong correlations: the fitted Gaussian is held by a dense layer, the couplings start
    # at the identity, so the guide before any SVI step is that Gaussian, and it is exact.
    assert guide.gaussian is not None and guide.precondition_grads > 0
    fit = guide.gaussian
    assert _gaussian_kl(fit.loc, fit.chol, mean, cov) < 1e-6
    draws = guide.get_posterior(params).sample(jr.key(1), (20000,))
    z = np.linalg.solve(np.linalg.cholesky(cov), (np.asarray(draws) - mean).T)
    np.testing.assert_allclose(np.cov(z), np.eye(6), atol=0.05)  # whitened by the true cov
    # Without the fit the guide starts as N(init_loc, 1): far off in every direction.
    plain = AutoCouplingFlow(model, n_layers=2, nn_width=8, precondition=None)
    SVI(model, plain, numpyro.optim.Adam(1e-3), Trace_ELBO()).init(jr.key(0))
    assert plain.gaussian is None and plain.precondition_grads == 0
    with pytest.raises(ValueError, match="precondition"):
        AutoCouplingFlow(model, precondition="full")


def test_neutra_warns_about_a_guide_that_misses_mass():
    import numpyro
    import numpyro.distributions as dist

    from numpyro_coupling import DiagnosticWarning, neutra_mcmc

    def narrow():  # a guide started at scale 1 and barely fitted is far too wide here
        numpyro.sample("x", dist.Normal(0.0, 0.01).expand([3]).to_event(1))

    with pytest.warns(DiagnosticWarning, match="misses posterior mass"):
        _, idata = neutra_mcmc(
            narrow,
            guide={"n_layers": 1, "nn_width": 4, "precondition": None},
            fit_kwargs={"steps": 2},
            num_warmup=20,
            num_samples=20,
            progress_bar=False,
        )
    assert idata.attrs["guide_ess"] < 0.1 * 2000
    assert any("misses posterior mass" in w for w in idata.attrs["warnings"])


def test_chain_warnings_name_the_remedy():
    from numpyro_coupling.diagnostics import ChainDiagnostics, DiagnosticWarning, warn_about_chains

    bad = ChainDiagnostics(2, 500, 7, 0.2, 40.0, 1.05)
    with pytest.warns(DiagnosticWarning) as record:
        messages = warn_about_chains(bad, neutra=True)
    assert len(messages) == len(record) == 4
    assert "target_accept_prob" in messages[0] and "refine=True" in messages[0]
    assert "maximum tree depth" in messages[1]
    assert "R-hat" in messages[2] and "ESS" in messages[3]
    assert (
        warn_about_chains(ChainDiagnostics(1, 1000, 0, 0.0, 500.0, float("nan")), neutra=False)
        == []
    )
    # A chain whose bulk is well sampled but whose tails are not.
    tails = ChainDiagnostics(4, 1000, 0, 0.0, 900.0, 1.001, min_tail_ess=40.0)
    with pytest.warns(DiagnosticWarning, match="tail ESS is 40"):
        (message,) = warn_about_chains(tails, neutra=True)
    assert "refine=True" in message


def test_tail_ess_sees_a_chain_that_rarely_visits_a_tail():
    # Independent draws, except that the upper 10% of the distribution is reached in long,
    # rare excursions: the bulk ESS stays high, the tail ESS does not.
    from numpyro_coupling.diagnostics import chain_diagnostics

    az = pytest.importorskip("arviz")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 4000))
    x = np.where(x > 1.28, -np.abs(x), x)  # no draw in the upper tail ...
    x[:, 2000:2200] = 1.28 + np.abs(rng.normal(size=(4, 200)))  # ... but in one excursion
    idata = az.from_dict(
        posterior={"x": x},
        sample_stats={"diverging": np.zeros((4, 4000), bool), "n_steps": np.ones((4, 4000))},
    )
    idata.add_groups({"unconstrained_posterior": {"x": x}})
    diag = chain_diagnostics(idata)
    assert diag.min_ess > 300 and diag.min_tail_ess < 100
