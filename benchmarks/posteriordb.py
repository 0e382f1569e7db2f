"""Reference posteriors: six posteriordb posteriors translated from Stan, and six of our own.

Each entry of :data:`POSTERIORS` holds a NumPyro model whose keyword arguments are the names
of its Stan data block, the loader of those data, and the loader of reference draws
``site -> (n_draws, *site_shape)`` in the model's own (constrained) parameters.

The posteriordb files (``models/*.stan``, ``data/*.json.zip``,
``reference_draws/*.json.zip``) are looked up in :func:`posteriordb_dir`: the
``POSTERIORDB`` environment variable, else ``../shared/posteriordb`` beside the repository.

Translation rules: the same priors, constraints and parameterisation as the Stan program;
an improper flat Stan prior is an :class:`ImproperUniform` over the parameter's support;
a Stan ``transformed data`` block is computed in the model from the data (constants under
``jit``); Stan's transformed parameters that the reference draws hold are
``numpyro.deterministic`` sites; generated quantities that the reference lacks are left out.
Stan drops the normalising constants of ``~`` statements; NumPyro keeps them: the
posteriors are the same.

The two synthetic posteriors are Gaussian, so their reference draws are exact:

* ``uncentred_regression``: ``y = alpha + beta * year + noise`` with known noise sd, years
  1950-2010 (the covariate is not centred: ``alpha`` and ``beta`` correlate at about
  -0.99996 and their posterior sds differ by a factor of about 2000);
* ``ill_conditioned_gaussian``: a 10-D Gaussian whose covariance has condition number 1e8
  (log-spaced eigenvalues 1e-4 ... 1e4 along a random rotation).

And one exact hierarchical posterior, the centred eight-schools model on other data:

* ``hierarchy_informative``: twelve groups whose effects the data measure well (standard
  errors 0.5-2 against a spread of about 4 between groups), so that the centred
  parameterisation, as written, is the one close to Gaussian. Its reference draws are exact:
  ``tau`` by the inverse CDF of its marginal posterior on a fine grid, then ``mu`` and
  ``theta`` from their Gaussian conditionals (:func:`normal_hierarchy_draws`).

Three more, of classes the others lack:

* ``banana`` (curved): a 4-D banana, one flat-prior site with a potential, exact draws;
* ``student_t`` (heavy-tailed): a correlated 5-D Student-t with 5 degrees of freedom,
  exact draws;
* ``horseshoe`` (sparse regression): twelve coefficients, three of them active, under the
  horseshoe prior written centred; reference draws by an auxiliary-variable Gibbs sampler
  (:func:`horseshoe_gibbs`), compared on the log scale for ``tau`` and ``lam``, whose
  Cauchy-like tails leave their sds infinite.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

#: Draws in each exact reference (as many as posteriordb's 10 chains x 1000).
EXACT_DRAWS = 10_000


def posteriordb_dir() -> Path:
    """Where the posteriordb files are: ``$POSTERIORDB`` or ``<repo>/../shared/posteriordb``."""
    env = os.environ.get("POSTERIORDB")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "posteriordb"


def _read_zipped_json(path: Path):
    with zipfile.ZipFile(path) as z:
        (name,) = z.namelist()
        return json.loads(z.read(name))


def load_data(data_name: str, root: Path | None = None) -> dict:
    """The data of ``data/<data_name>.json.zip`` as numpy arrays (ints stay Python ints).

    Example:
        >>> data = load_data("eight_schools")  # doctest: +SKIP
        >>> data["J"], data["y"].shape  # doctest: +SKIP
        (8, (8,))
    """
    raw = _read_zipped_json((root or posteriordb_dir()) / "data" / f"{data_name}.json.zip")
    return {k: v if isinstance(v, int) else np.asarray(v) for k, v in raw.items()}


def split_stan_name(name: str) -> tuple[str, tuple[int, ...]]:
    """``"theta[3]"`` -> ``("theta", (2,))`` (Stan's 1-based index, made 0-based).

    Example:
        >>> split_stan_name("b[2,1]"), split_stan_name("sigma")
        (('b', (1, 0)), ('sigma', ()))
    """
    if "[" not in name:
        return name, ()
    site, index = name[:-1].split("[")
    return site, tuple(int(i) - 1 for i in index.split(","))


def stan_draws_to_sites(chains: list[dict]) -> dict:
    """Stan-named draws of several chains -> ``site -> (n_draws, *site_shape)`` arrays.

    Args:
        chains: one dict per chain, Stan parameter name (``"theta[1]"``) -> list of draws.

    Returns:
        dict site -> array whose first axis runs over the chains' draws, one chain after
        the other.

    Example:
        >>> chains = [{"mu": [0.0, 1.0], "theta[1]": [1, 2], "theta[2]": [3, 4]}]
        >>> {k: v.tolist() for k, v in stan_draws_to_sites(chains).items()}
        {'mu': [0.0, 1.0], 'theta': [[1.0, 3.0], [2.0, 4.0]]}
    """
    columns = {name: np.concatenate([c[name] for c in chains]) for name in chains[0]}
    shapes: dict[str, tuple[int, ...]] = {}
    for name in columns:
        site, index = split_stan_name(name)
        shapes[site] = tuple(max(a, i + 1) for a, i in zip(shapes.get(site, index), index))
    n = len(next(iter(columns.values())))
    out = {site: np.full((n, *shape), np.nan) for site, shape in shapes.items()}
    for name, values in columns.items():
        site, index = split_stan_name(name)
        out[site][(slice(None), *index)] = values
    return out


def load_reference(posterior_name: str, root: Path | None = None) -> dict:
    """Reference draws of ``reference_draws/<posterior_name>.json.zip`` by NumPyro site."""
    root = root or posteriordb_dir()
    return stan_draws_to_sites(
        _read_zipped_json(root / "reference_draws" / f"{posterior_name}.json.zip")
    )


def _flat(support, event_shape=()):
    """An improper flat prior over ``support`` (Stan's parameter without a ``~``)."""
    return dist.ImproperUniform(support, (), event_shape)


# --------------------------------------------------------------------------------------
# Stan models (keyword arguments: the Stan data block)
# --------------------------------------------------------------------------------------


def eight_schools_centered(J, y, sigma):
    """``models/eight_schools_centered.stan``."""
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    theta = numpyro.sample("theta", dist.Normal(mu, tau).expand([J]).to_event(1))
    numpyro.sample("y", dist.Normal(theta, jnp.asarray(sigma)).to_event(1), obs=jnp.asarray(y))


def eight_schools_noncentered(J, y, sigma):
    """``models/eight_schools_noncentered.stan`` (``theta`` is a transformed parameter)."""
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([J]).to_event(1))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", theta_trans * tau + mu)
    numpyro.sample("y", dist.Normal(theta, jnp.asarray(sigma)).to_event(1), obs=jnp.asarray(y))


def diamonds(N, Y, K, X, prior_only):
    """``models/diamonds.stan`` (brms): centred design without its intercept column.

    ``sigma ~ student_t(3, 0, 10)`` on ``sigma > 0`` with Stan's ``- student_t_lccdf(0 | ...)``
    correction is the Student-t truncated to the positive half-line, which for a Student-t
    centred at 0 is the folded one, ``|t|`` (NumPyro's truncated Student-t cannot sample
    without tensorflow_probability; the densities are equal).
    """
    X = jnp.asarray(X)
    means_x = X[:, 1:].mean(axis=0)
    xc = X[:, 1:] - means_x
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([K - 1]).to_event(1))
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = numpyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    if not prior_only:
        numpyro.sample("Y", dist.Normal(intercept + xc @ b, sigma).to_event(1), obs=jnp.asarray(Y))


def gp_exp_quad_cov(x, alpha, rho):
    """Stan's ``gp_exp_quad_cov``: ``alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2))``, ``(N, N)``.

    Example:
        >>> cov = gp_exp_quad_cov(jnp.array([0.0, 1.0]), 2.0, 1.0)
        >>> np.asarray(cov, dtype=float).round(3).tolist()
        [[4.0, 2.426], [2.426, 4.0]]
    """
    d = x[:, None] - x[None, :]
    return alpha**2 * jnp.exp(-0.5 * (d / rho) ** 2)


def gp_pois_regr(N, x, k, **unused):
    """``models/gp_pois_regr.stan`` (``f`` is a transformed parameter).

    The data file also holds a ``y`` that the Stan program does not declare: ignored.
    """
    x = jnp.asarray(x, dtype=float)
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([N]).to_event(1))
    cov = gp_exp_quad_cov(x, alpha, rho) + 1e-10 * jnp.eye(N)
    f = numpyro.deterministic("f", jnp.linalg.cholesky(cov) @ f_tilde)
    numpyro.sample("k", dist.Poisson(jnp.exp(f)).to_event(1), obs=jnp.asarray(k))


def lag_matrix(y, K):
    """``(T - K, K)`` matrix whose row ``t`` holds ``y[t + K - 1], ..., y[t]`` (lags 1..K).

    Example:
        >>> lag_matrix(np.arange(5.0), 2).tolist()
        [[1.0, 0.0], [2.0, 1.0], [3.0, 2.0]]
    """
    T = len(y)
    return np.stack([np.asarray(y)[K - k : T - k] for k in range(1, K + 1)], axis=1)


def arK(K, T, y):
    """``models/arK.stan``: ``y[t] ~ normal(alpha + sum_k beta[k] y[t-k], sigma)``, t > K."""
    y = np.asarray(y, dtype=float)
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    mu = alpha + jnp.asarray(lag_matrix(y, K)) @ beta
    numpyro.sample("y", dist.Normal(mu, sigma).to_event(1), obs=jnp.asarray(y[K:T]))


def logearn_interaction(N, earn, height, male):
    """``models/logearn_interaction.stan``: flat priors on ``beta`` and ``sigma > 0``."""
    log_earn = jnp.log(jnp.asarray(earn, dtype=float))
    height = jnp.asarray(height, dtype=float)
    male = jnp.asarray(male, dtype=float)
    inter = height * male
    beta = numpyro.sample("beta", _flat(constraints.real, (4,)))
    sigma = numpyro.sample("sigma", _flat(constraints.positive))
    mu = beta[0] + beta[1] * height + beta[2] * male + beta[3] * inter
    numpyro.sample("log_earn", dist.Normal(mu, sigma).to_event(1), obs=log_earn)


# --------------------------------------------------------------------------------------
# Exact synthetic posteriors
# --------------------------------------------------------------------------------------


def uncentred_regression_data() -> dict:
    """61 yearly observations, 1950-2010, of ``y = -30 + 0.015 year + N(0, 0.1^2)``."""
    year = np.arange(1950.0, 2011.0)
    noise = np.random.default_rng(20240601).normal(0.0, 0.1, year.shape)
    return {"year": year, "y": -30.0 + 0.015 * year + noise, "noise_sd": 0.1, "prior_sd": 1e3}


def uncentred_regression(year, y, noise_sd, prior_sd):
    """Bayesian linear regression on the uncentred covariate ``year``, known noise sd."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, prior_sd))
    beta = numpyro.sample("beta", dist.Normal(0.0, prior_sd))
    mu = alpha + beta * jnp.asarray(year)
    numpyro.sample("y", dist.Normal(mu, noise_sd).to_event(1), obs=jnp.asarray(y))


def regression_posterior(year, y, noise_sd, prior_sd):
    """Exact Gaussian posterior of :func:`uncentred_regression`: ``(mean (2,), cov (2, 2))``.

    Example:
        >>> mean, cov = regression_posterior(**uncentred_regression_data())
        >>> corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
        >>> bool(corr < -0.9999)
        True
    """
    design = np.stack([np.ones_like(year), year], axis=1)
    precision = design.T @ design / noise_sd**2 + np.eye(2) / prior_sd**2
    cov = np.linalg.inv(precision)
    return cov @ (design.T @ y / noise_sd**2), cov


def uncentred_regression_reference(n: int = EXACT_DRAWS) -> dict:
    """``n`` exact posterior draws of :func:`uncentred_regression` by site."""
    mean, cov = regression_posterior(**uncentred_regression_data())
    draws = np.random.default_rng(1).multivariate_normal(mean, cov, size=n, method="cholesky")
    return {"alpha": draws[:, 0], "beta": draws[:, 1]}


def ill_conditioned_data(dim: int = 10, condition: float = 1e8) -> dict:
    """Mean and covariance of a ``dim``-D Gaussian with the given condition number.

    Eigenvalues log-spaced from ``condition**-0.5`` to ``condition**0.5`` along a random
    rotation (QR of a Gaussian matrix, signs fixed), mean drawn from ``N(0, I)``.

    Example:
        >>> cov = ill_conditioned_data()["cov"]
        >>> float(np.round(np.log10(np.linalg.cond(cov)), 3))
        8.0
    """
    rng = np.random.default_rng(20240602)
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    q = q * np.sign(np.diag(r))
    eig = np.logspace(-0.5 * np.log10(condition), 0.5 * np.log10(condition), dim)
    cov = (q * eig) @ q.T
    return {"mean": rng.normal(size=dim), "cov": 0.5 * (cov + cov.T)}


def ill_conditioned_gaussian(mean, cov):
    """``x ~ MultivariateNormal(mean, cov)``, one 10-D site."""
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(mean), jnp.asarray(cov)))


def ill_conditioned_reference(n: int = EXACT_DRAWS) -> dict:
    """``n`` exact draws of :func:`ill_conditioned_gaussian`."""
    data = ill_conditioned_data()
    # eigh rather than Cholesky: exact along the tiny eigenvalues too.
    eig, vec = np.linalg.eigh(data["cov"])
    z = np.random.default_rng(2).normal(size=(n, len(eig)))
    return {"x": data["mean"] + (z * np.sqrt(np.clip(eig, 0, None))) @ vec.T}


def banana_data() -> dict:
    """The banana's curvature ``b`` and dimension."""
    return {"b": 0.1, "dim": 4}


def banana(b, dim):
    """A curved posterior: ``x_1 ~ N(0, 3^2)``, ``x_2 ~ N(b (x_1^2 - 9), 1)``, the other
    coordinates ``N(0, 1)``, written as one flat-prior site with a potential (no structure
    for a reparameterisation to use: the flow must learn the bend)."""
    x = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), (dim,)))
    log_p = dist.Normal(0.0, 3.0).log_prob(x[0])
    log_p += dist.Normal(b * (x[0] ** 2 - 9.0), 1.0).log_prob(x[1])
    numpyro.factor("log_p", log_p + dist.Normal(0.0, 1.0).log_prob(x[2:]).sum())


def banana_reference(n: int = EXACT_DRAWS) -> dict:
    """``n`` exact draws of :func:`banana` (``x_1``, then ``x_2`` given it)."""
    data = banana_data()
    rng = np.random.default_rng(4)
    x1 = 3.0 * rng.normal(size=n)
    x2 = data["b"] * (x1**2 - 9.0) + rng.normal(size=n)
    return {"x": np.column_stack([x1, x2, rng.normal(size=(n, data["dim"] - 2))])}


def student_t_data(dim: int = 5) -> dict:
    """Degrees of freedom, location and scale factor of a correlated ``dim``-D Student-t."""
    rng = np.random.default_rng(20240603)
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T / dim + 0.2 * np.eye(dim)
    return {"df": 5.0, "loc": np.arange(dim, dtype=float), "scale_tril": np.linalg.cholesky(cov)}


def student_t(df, loc, scale_tril):
    """A heavy-tailed posterior: one multivariate Student-t site (5 degrees of freedom)."""
    numpyro.sample("x", dist.MultivariateStudentT(df, jnp.asarray(loc), jnp.asarray(scale_tril)))


def student_t_reference(n: int = EXACT_DRAWS) -> dict:
    """``n`` exact draws of :func:`student_t` (a Gaussian over a chi-square's root)."""
    data = student_t_data()
    rng = np.random.default_rng(5)
    z = rng.normal(size=(n, len(data["loc"]))) @ data["scale_tril"].T
    w = np.sqrt(rng.chisquare(data["df"], size=(n, 1)) / data["df"])
    return {"x": data["loc"] + z / w}


def horseshoe_data(n: int = 60, p: int = 12) -> dict:
    """``n`` observations of ``p`` standard-normal predictors, three of them active."""
    rng = np.random.default_rng(20240604)
    x = rng.normal(size=(n, p))
    beta = np.zeros(p)
    beta[:3] = [2.5, -1.5, 1.0]
    return {"X": x, "y": x @ beta + rng.normal(size=n)}


def horseshoe(X, y):
    """Sparse regression with the horseshoe prior, written centred as it is usually written:
    ``tau, lam_j ~ HalfCauchy(1)``, ``beta_j ~ N(0, tau lam_j)``, ``sigma2 ~
    InverseGamma(2, 2)``, ``y ~ N(X beta, sigma2)``."""
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    lam = numpyro.sample("lam", dist.HalfCauchy(jnp.ones(X.shape[1])).to_event(1))
    beta = numpyro.sample("beta", dist.Normal(0.0, tau * lam).to_event(1))
    sigma2 = numpyro.sample("sigma2", dist.InverseGamma(2.0, 2.0))
    numpyro.sample("y", dist.Normal(jnp.asarray(X) @ beta, jnp.sqrt(sigma2)), obs=jnp.asarray(y))


def horseshoe_gibbs(
    X, y, n: int = EXACT_DRAWS, chains: int = 20, thin: int = 20, seed: int = 6
) -> dict:
    """Draws of :func:`horseshoe`'s posterior by the auxiliary-variable Gibbs sampler.

    Every half-Cauchy is written as a scale mixture of inverse gammas (Makalic & Schmidt,
    2016: ``lam^2 | nu ~ IG(1/2, 1/nu)``, ``nu ~ IG(1/2, 1)``), so every conditional is
    a Gaussian or an inverse gamma: no step size and no divergence, only autocorrelation,
    which ``thin`` iterations between kept draws absorb (with the defaults every
    coordinate keeps a bulk ESS of 7,000-10,000 of its 10,000 draws, ``tau`` the least).
    ``chains`` independent chains run side by side, each dropping a tenth of its
    iterations first and keeping ``n / chains`` draws.
    """
    rng = np.random.default_rng(seed)
    num, p = X.shape
    xtx, xty = X.T @ X, X.T @ y

    def inv_gamma(shape, scale):
        return scale / rng.gamma(shape, size=np.shape(scale))

    lam2, nu = np.ones((chains, p)), np.ones((chains, p))
    tau2, xi, sigma2 = np.ones((chains, 1)), np.ones((chains, 1)), np.ones((chains, 1))
    per_chain = n // chains
    burn = per_chain * thin // 10
    kept = {"beta": [], "lam": [], "tau": [], "sigma2": []}
    for i in range(burn + per_chain * thin):
        precision = xtx / sigma2[..., None] + (1.0 / (tau2 * lam2))[..., None] * np.eye(p)
        # beta = P^-1 b + L^-T z with P = L L^T: one factorisation for mean and noise.
        chol = np.linalg.cholesky(precision)
        half = np.linalg.solve(chol, (xty / sigma2)[..., None])
        noise = rng.normal(size=(chains, p, 1))
        beta = np.linalg.solve(np.swapaxes(chol, -1, -2), half + noise)[..., 0]
        resid = y - beta @ X.T
        sigma2 = inv_gamma(2.0 + num / 2, 2.0 + np.sum(resid**2, -1, keepdims=True) / 2)
        lam2 = inv_gamma(1.0, 1.0 / nu + beta**2 / (2 * tau2))
        nu = inv_gamma(1.0, 1.0 + 1.0 / lam2)
        tau2 = inv_gamma((p + 1) / 2, 1.0 / xi + np.sum(beta**2 / (2 * lam2), -1, keepdims=True))
        xi = inv_gamma(1.0, 1.0 + 1.0 / tau2)
        if i >= burn and (i - burn) % thin == 0:
            kept["beta"].append(beta)
            kept["lam"].append(np.sqrt(lam2))
            kept["tau"].append(np.sqrt(tau2[:, 0]))
            kept["sigma2"].append(sigma2[:, 0])
    # (draws, chains, ...) -> (chains * draws, ...), chain by chain
    return {
        k: np.swapaxes(np.asarray(v), 0, 1).reshape(-1, *np.shape(v[0])[1:])
        for k, v in kept.items()
    }


def horseshoe_reference(n: int = EXACT_DRAWS) -> dict:
    """``n`` draws of :func:`horseshoe`'s posterior (:func:`horseshoe_gibbs`)."""
    return horseshoe_gibbs(**horseshoe_data(), n=n)


def normal_hierarchy(y, sigma, mu_sd, tau_scale):
    """``mu ~ N(0, mu_sd)``, ``tau ~ HalfCauchy(tau_scale)``, ``theta_j ~ N(mu, tau)``,
    ``y_j ~ N(theta_j, sigma_j)``: the centred eight schools with its priors as data."""
    mu = numpyro.sample("mu", dist.Normal(0.0, mu_sd))
    tau = numpyro.sample("tau", dist.HalfCauchy(tau_scale))
    theta = numpyro.sample("theta", dist.Normal(mu, tau).expand([len(y)]).to_event(1))
    numpyro.sample("y", dist.Normal(theta, jnp.asarray(sigma)).to_event(1), obs=jnp.asarray(y))


def log_tau_marginal(y, sigma, mu_sd, tau_scale, n_grid: int = 40_001):
    """The marginal posterior of ``log tau`` of :func:`normal_hierarchy` on a grid.

    ``mu`` and ``theta`` integrate out given ``tau`` (``y ~ N(0, diag(sigma^2 + tau^2) +
    mu_sd^2)``), so the density is exact up to the grid over ``[-16, 8]``.

    Returns:
        ``(grid, cdf)``: ``n_grid`` points and the normalised CDF at each.

    Example:
        >>> grid, cdf = log_tau_marginal(np.zeros(3), np.ones(3), 5.0, 5.0, n_grid=101)
        >>> grid.shape, float(cdf[-1])
        ((101,), 1.0)
    """
    y, var = np.asarray(y, float), np.asarray(sigma, float) ** 2
    grid = np.linspace(-16.0, 8.0, n_grid)
    tau2 = np.exp(2 * grid)[:, None]
    marginal_var = var + tau2  # (grid, J), plus mu_sd^2 in every entry of the covariance
    inv = 1.0 / marginal_var
    # Sherman-Morrison for the rank-one mu_sd^2 11^T term.
    quad = np.sum(y**2 * inv, 1) - mu_sd**2 * np.sum(y * inv, 1) ** 2 / (
        1 + mu_sd**2 * np.sum(inv, 1)
    )
    log_det = np.sum(np.log(marginal_var), 1) + np.log1p(mu_sd**2 * np.sum(inv, 1))
    # HalfCauchy on tau, times the Jacobian tau of u = log tau.
    log_prior = grid - np.log1p(np.exp(2 * grid) / tau_scale**2)
    log_post = log_prior - 0.5 * (quad + log_det)
    cdf = np.cumsum(np.exp(log_post - log_post.max()))
    return grid, cdf / cdf[-1]


#: Grid points of :func:`log_tau_marginal` behind an exact quantile (a tenth of the draws'
#: grid spacing).
QUANTILE_GRID = 400_001


def log_tau_quantile(y, sigma, mu_sd, tau_scale, q: float) -> float:
    """The exact ``q`` quantile of ``log tau`` under :func:`normal_hierarchy` (on
    :data:`QUANTILE_GRID` points: the eight schools' 0.5% quantile is -3.704)."""
    grid, cdf = log_tau_marginal(y, sigma, mu_sd, tau_scale, n_grid=QUANTILE_GRID)
    return float(np.interp(q, cdf, grid))


def quantile_spread(y, sigma, mu_sd, tau_scale, q: float, n: int, repeats: int = 2000):
    """How noisy the ``q`` quantile of ``log tau`` is from ``n`` independent exact draws.

    Returns:
        ``(sd, miss)``: the sd of the sample quantile over ``repeats`` sets of draws, and
        the share of sets whose quantile is more than 0.3 from the exact one.
    """
    grid, cdf = log_tau_marginal(y, sigma, mu_sd, tau_scale, n_grid=QUANTILE_GRID)
    exact = float(np.interp(q, cdf, grid))
    rng = np.random.default_rng(0)
    draws = np.interp(rng.uniform(size=(repeats, n)), cdf, grid)
    estimates = np.quantile(draws, q, axis=1)
    return float(estimates.std()), float(np.mean(np.abs(estimates - exact) > 0.3))


def normal_hierarchy_draws(y, sigma, mu_sd, tau_scale, n: int = EXACT_DRAWS, seed: int = 3):
    """``n`` exact posterior draws of :func:`normal_hierarchy`.

    ``log tau`` is drawn by the inverse CDF of :func:`log_tau_marginal` (uniform within a
    cell), then ``mu | tau, y`` and ``theta | mu, tau, y`` from their Gaussian conditionals.

    Example:
        >>> draws = normal_hierarchy_draws(np.zeros(3), np.ones(3), 5.0, 5.0, n=4)
        >>> draws["theta"].shape, bool((draws["tau"] > 0).all())
        ((4, 3), True)
    """
    y, var = np.asarray(y, float), np.asarray(sigma, float) ** 2
    grid, cdf = log_tau_marginal(y, sigma, mu_sd, tau_scale)
    rng = np.random.default_rng(seed)
    cell = np.searchsorted(cdf, rng.uniform(size=n))
    log_tau = grid[cell] - rng.uniform(size=n) * (grid[1] - grid[0])
    tau = np.exp(log_tau)
    w = 1.0 / (var + tau[:, None] ** 2)
    mu_prec = 1.0 / mu_sd**2 + w.sum(1)
    mu = (w @ y) / mu_prec + rng.normal(size=n) / np.sqrt(mu_prec)
    theta_prec = 1.0 / tau[:, None] ** 2 + 1.0 / var
    theta_mean = (mu[:, None] / tau[:, None] ** 2 + y / var) / theta_prec
    theta = theta_mean + rng.normal(size=(n, len(y))) / np.sqrt(theta_prec)
    return {"mu": mu, "tau": tau, "theta": theta}


def hierarchy_informative_data() -> dict:
    """Twelve groups, effects ``N(2, 4)``, measured with standard errors 0.5-2."""
    rng = np.random.default_rng(20261207)
    sigma = rng.uniform(0.5, 2.0, 12)
    theta = 2.0 + 4.0 * rng.normal(size=12)
    return {
        "y": theta + sigma * rng.normal(size=12),
        "sigma": sigma,
        "mu_sd": 10.0,
        "tau_scale": 5.0,
    }


def hierarchy_informative_reference(n: int = EXACT_DRAWS) -> dict:
    """``n`` exact posterior draws of :func:`normal_hierarchy` on its informative data."""
    return normal_hierarchy_draws(**hierarchy_informative_data(), n=n)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Posterior:
    """One benchmark posterior.

    Attributes:
        model: NumPyro model taking the data as keyword arguments.
        data: loader of those keyword arguments.
        reference: loader of the reference draws, ``site -> (n_draws, *site_shape)``.
        source: where the reference draws come from (a posteriordb name, ``"exact"`` or
            ``"gibbs"``).
        to_latent: where the reference holds transformed parameters in place of some
            latent sites, ``(data, point) -> latent values`` of one point (``None``: the
            reference's sites are the latent sites).
        log_tau_quantile: for a normal hierarchy, ``q -> `` the exact ``q`` quantile of
            ``log tau`` (the reference draws' own tail quantile carries their Monte Carlo
            error; ``None``: none known).
        log_sites: positive sites compared with the reference on the log scale (a scale
            with a Cauchy-like right tail, whose sd is infinite or rests on a few draws).
    """

    model: Callable
    data: Callable[[], dict]
    reference: Callable[[], dict]
    source: str
    to_latent: Callable[[dict, dict], dict] | None = None
    log_tau_quantile: Callable[[float], float] | None = None
    log_sites: tuple[str, ...] = ()


def _pdb(model, data_name, reference_name, to_latent=None, log_tau_quantile=None) -> Posterior:
    return Posterior(
        model,
        cache(lambda: load_data(data_name)),
        cache(lambda: load_reference(reference_name)),
        reference_name,
        to_latent,
        log_tau_quantile,
    )


def _eight_schools_log_tau_quantile(q: float) -> float:
    # Stan's eight schools: mu ~ normal(0, 5), tau ~ cauchy(0, 5) (half, by tau's bound).
    data = load_data("eight_schools")
    return log_tau_quantile(data["y"], data["sigma"], 5.0, 5.0, q)


def _eight_schools_latent(data, point):
    theta_trans = (point["theta"] - point["mu"]) / point["tau"]
    return {"theta_trans": theta_trans, "mu": point["mu"], "tau": point["tau"]}


def _gp_latent(data, point):
    x = jnp.asarray(data["x"], dtype=float)
    cov = gp_exp_quad_cov(x, point["alpha"], point["rho"]) + 1e-10 * jnp.eye(data["N"])
    f_tilde = jnp.linalg.solve(jnp.linalg.cholesky(cov), point["f"])
    return {"rho": point["rho"], "alpha": point["alpha"], "f_tilde": f_tilde}


POSTERIORS = {
    # The reference of the centred model is the non-centred one's (same mu, tau, theta).
    "eight_schools_centered": _pdb(
        eight_schools_centered,
        "eight_schools",
        "eight_schools-eight_schools_noncentered",
        log_tau_quantile=_eight_schools_log_tau_quantile,
    ),
    "diamonds": _pdb(diamonds, "diamonds", "diamonds-diamonds"),
    "gp_pois_regr": _pdb(gp_pois_regr, "gp_pois_regr", "gp_pois_regr-gp_pois_regr", _gp_latent),
    "arK": _pdb(arK, "arK", "arK-arK"),
    "logearn_interaction": _pdb(logearn_interaction, "earnings", "earnings-logearn_interaction"),
    "eight_schools_noncentered": _pdb(
        eight_schools_noncentered,
        "eight_schools",
        "eight_schools-eight_schools_noncentered",
        _eight_schools_latent,
        _eight_schools_log_tau_quantile,
    ),
    "uncentred_regression": Posterior(
        uncentred_regression,
        uncentred_regression_data,
        cache(uncentred_regression_reference),
        "exact",
    ),
    "ill_conditioned_gaussian": Posterior(
        ill_conditioned_gaussian, ill_conditioned_data, cache(ill_conditioned_reference), "exact"
    ),
    "hierarchy_informative": Posterior(
        normal_hierarchy,
        hierarchy_informative_data,
        cache(hierarchy_informative_reference),
        "exact",
        log_tau_quantile=lambda q: log_tau_quantile(**hierarchy_informative_data(), q=q),
    ),
    "banana": Posterior(banana, banana_data, cache(banana_reference), "exact"),
    "student_t": Posterior(student_t, student_t_data, cache(student_t_reference), "exact"),
    # Gibbs draws: as good as exact, not exact (the sampler's own autocorrelation).
    "horseshoe": Posterior(
        horseshoe,
        horseshoe_data,
        cache(horseshoe_reference),
        "gibbs",
        log_sites=("tau", "lam"),
    ),
}
