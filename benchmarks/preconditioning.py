"""Gaussian preconditioning fits, compared; and NeuTra started from the fitted Gaussian.

Part 1 (``--fits``): on four posteriors in float64, each in its flat unconstrained space,
started at the prior median (``init_to_median``, as the guide starts):

* ``regression``: ``y = a + b x + noise`` with ``x`` the years 1950..2010 (uncentred),
  ``a ~ N(0, 1000)``, ``b ~ N(0, 10)``, ``sigma ~ HalfNormal(10)``: intercept and slope
  correlated at about -0.99996, their scales 2000 apart;
* ``gauss``: a 10-D Gaussian, covariance eigenvalues log-spaced over ``[1e-4, 1e4]``
  (condition number 1e8), randomly rotated, mean ``~ 5 N(0, I)``;
* ``funnel``: Neal's funnel, 10-D (:func:`numpyro_coupling.targets.funnel`);
* ``eightschools``: the centred eight schools.

Each method returns ``(loc, chol)``; reported: gradient evaluations of the potential,
wall time (first call, compilation included; for the L-BFGS fits also the second, warm
call), and ``KL(q || p)`` in nats (4000 draws of ``q``; ``log Z`` exact: 0 for the
normalised targets, a 1-D quadrature for the regression and the eight schools), with the
PSIS ``k-hat`` of the same draws. Methods: ``laplace`` (L-BFGS mode + Hessian),
``vi`` (fixed whitened draws, L-BFGS, from ``I``), ``laplace+vi`` (the VI fit
preconditioned by the Laplace fit where that one is usable), ``adam-mvn`` (SVI with
``AutoMultivariateNormal``, Adam, ``--adam-steps``) and ``pilot-nuts`` (dense-mass NUTS,
``--pilot`` warmup + ``--pilot`` draws: their mean and covariance).

Part 2 (``--neutra``): ``fit_guide`` + ``neutra_nuts`` with the default
``AutoCouplingFlow`` and with a prototype whose first layer is the dense affine map of
the ``laplace+vi`` fit (couplings starting at the identity): guide ``k-hat`` and IS ESS
over the draws (4000 draws),
divergences, mean leapfrog steps per draw, and the largest error of a posterior mean in
posterior standard deviations (reference: exact for ``gauss``; self-normalised importance
sampling with 200k draws of the ``laplace+vi`` Gaussian, ``k-hat < 0.5``, otherwise).

Run ``python benchmarks/preconditioning.py --fits`` and ``... --neutra`` (a few minutes
each on two cores).
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoMultivariateNormal  # noqa: E402
from numpyro.infer.initialization import init_to_median, init_to_value  # noqa: E402
from numpyro.infer.util import initialize_model  # noqa: E402
from scipy.special import logsumexp  # noqa: E402
from scipy.stats import multivariate_normal  # noqa: E402

from numpyro_coupling import (  # noqa: E402
    AutoCouplingFlow,
    fit_guide,
    neutra_nuts,
    targets,
)
from numpyro_coupling.demo import format_table  # noqa: E402
from numpyro_coupling.diagnostics import importance_diagnostics, pareto_khat  # noqa: E402
from numpyro_coupling.preconditioning import (  # noqa: E402
    gaussian_fit,
    gaussian_vi_fit,
    laplace_fit,
)

# ---------------------------------------------------------------------------- targets
YEARS = np.arange(1950.0, 2011.0)
REG_Y = 3.0 + 0.5 * (YEARS - 1980.0) + 2.0 * np.random.default_rng(0).normal(size=YEARS.size)
REG_PRIOR_SD = np.array([1000.0, 10.0])


def regression(x=YEARS, y=REG_Y):
    a = numpyro.sample("a", dist.Normal(0.0, REG_PRIOR_SD[0]))
    b = numpyro.sample("b", dist.Normal(0.0, REG_PRIOR_SD[1]))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    numpyro.sample("y", dist.Normal(a + b * x, sigma), obs=y)


def _regression_log_z():
    # (a, b) integrate out analytically, y | sigma ~ N(0, sigma^2 I + X S0 X^T), by the
    # Woodbury identity (that covariance is numerically singular); then a quadrature over
    # s = log sigma (the unconstrained coordinate, Jacobian included).
    design = np.stack([np.ones_like(YEARS), YEARS], 1)
    n = YEARS.size
    xtx, xty, yty = design.T @ design, design.T @ REG_Y, REG_Y @ REG_Y
    s = np.linspace(np.log(0.05), np.log(50.0), 4001)
    lp = []
    for si in s:
        var = np.exp(2 * si)
        inner = np.diag(REG_PRIOR_SD**-2.0) + xtx / var
        quad = yty / var - (xty / var) @ np.linalg.solve(inner, xty / var)
        log_det = n * np.log(var) + np.sum(np.log(REG_PRIOR_SD**2)) + np.linalg.slogdet(inner)[1]
        lik = -0.5 * (n * np.log(2 * np.pi) + log_det + quad)
        prior = dist.HalfNormal(10.0).log_prob(np.exp(si)) + si
        lp.append(lik + float(prior))
    return float(logsumexp(lp) + np.log(s[1] - s[0]))


def _eight_schools_log_z():
    y, sd = targets.EIGHT_SCHOOLS_Y, targets.EIGHT_SCHOOLS_SIGMA
    t = np.linspace(-12.0, 8.0, 4001)
    lp = []
    for ti in t:
        cov = np.diag(sd**2 + np.exp(2 * ti)) + 25.0
        prior = dist.HalfCauchy(5.0).log_prob(np.exp(ti)) + ti
        lp.append(multivariate_normal(np.zeros(8), cov).logpdf(y) + float(prior))
    return float(logsumexp(lp) + np.log(t[1] - t[0]))


def _gauss_params(d=10, log10_cond=8, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.logspace(-log10_cond / 2, log10_cond / 2, d)
    return 5.0 * rng.normal(size=d), (q * eig) @ q.T


GAUSS_MEAN, GAUSS_COV = _gauss_params()


def gauss():
    numpyro.sample("x", dist.MultivariateNormal(GAUSS_MEAN, GAUSS_COV))


def funnel():
    targets.funnel(10)


def eight_schools():
    targets.eight_schools()


def flat_potential(model):
    """``(U, x0)``: the potential of a flat unconstrained vector and the median start."""
    info = initialize_model(jr.key(0), model, init_strategy=init_to_median)
    x0, unravel = ravel_pytree(info.param_info.z)
    potential_fn = info.potential_fn

    def potential(x):
        # Blocked, so that it can run inside another model's trace (as a factor).
        with numpyro.handlers.block():
            return potential_fn(unravel(x))

    return potential, x0


TARGETS = {
    "regression": (regression, _regression_log_z),
    "gauss": (gauss, lambda: 0.0),
    "funnel": (funnel, lambda: 0.0),
    "eightschools": (eight_schools, _eight_schools_log_z),
}


# ---------------------------------------------------------------------------- methods
def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def fit_laplace(potential, x0, key, args):
    fn = jax.jit(lambda x: laplace_fit(potential, x))
    fit, first = _timed(fn, x0)
    _, warm = _timed(fn, x0)
    return fit.loc, fit.chol, int(fit.n_grad), bool(fit.ok), first, warm


def fit_vi(potential, x0, key, args):
    fn = jax.jit(lambda x, k: gaussian_vi_fit(potential, x, k, n_draws=args.n_draws))
    fit, first = _timed(fn, x0, key)
    _, warm = _timed(fn, x0, key)
    return fit.loc, fit.chol, int(fit.n_grad), bool(fit.ok), first, warm


def laplace_then_vi(potential, x0, key, n_draws=None):
    """The VI fit preconditioned (and started) by the Laplace fit: the guide's own fit."""
    return gaussian_fit(potential, x0, key, n_draws=n_draws)


def fit_laplace_vi(potential, x0, key, args):
    fn = jax.jit(lambda x, k: laplace_then_vi(potential, x, k, args.n_draws))
    fit, first = _timed(fn, x0, key)
    _, warm = _timed(fn, x0, key)
    return fit.loc, fit.chol, int(fit.n_grad), bool(fit.ok), first, warm


def _flat_model(potential, d):
    def model():
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (d,)))
        numpyro.factor("lp", -potential(x))

    return model


def fit_adam_mvn(potential, x0, key, args):
    model = _flat_model(potential, x0.shape[0])
    guide = AutoMultivariateNormal(model, init_loc_fn=init_to_value(values={"x": x0}))
    svi = SVI(model, guide, numpyro.optim.Adam(args.adam_lr), Trace_ELBO())
    start = time.perf_counter()
    res = svi.run(key, args.adam_steps, progress_bar=False)
    seconds = time.perf_counter() - start
    loc, chol = res.params["auto_loc"], res.params["auto_scale_tril"]
    ok = bool(np.all(np.isfinite(loc)) and np.all(np.isfinite(chol)))
    return loc, chol, args.adam_steps, ok, seconds, None


def fit_pilot_nuts(potential, x0, key, args):
    mcmc = MCMC(
        NUTS(potential_fn=potential, dense_mass=True),
        num_warmup=args.pilot,
        num_samples=args.pilot,
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.warmup(key, init_params=x0, extra_fields=("num_steps",), collect_warmup=True)
    n_grad = int(mcmc.get_extra_fields()["num_steps"].sum())
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",))
    seconds = time.perf_counter() - start
    n_grad += int(mcmc.get_extra_fields()["num_steps"].sum())
    draws = np.asarray(mcmc.get_samples())
    cov = np.cov(draws.T)
    try:
        chol, ok = np.linalg.cholesky(cov), True
    except np.linalg.LinAlgError:
        chol, ok = np.diag(np.sqrt(np.abs(np.diag(cov)))), False
    return draws.mean(0), chol, n_grad, ok, seconds, None


METHODS = {
    "laplace": fit_laplace,
    "vi": fit_vi,
    "laplace+vi": fit_laplace_vi,
    "adam-mvn": fit_adam_mvn,
    "pilot-nuts": fit_pilot_nuts,
}


def gaussian_quality(potential, loc, chol, log_z, key, n=4000):
    """``KL(q || p)`` (nats, Monte Carlo) and PSIS k-hat of ``q = N(loc, chol chol^T)``."""
    loc, chol = jnp.asarray(loc), jnp.asarray(chol)
    eps = jr.normal(key, (n, loc.shape[0]), loc.dtype)
    xs = loc + eps @ chol.T
    log_q = dist.MultivariateNormal(loc, scale_tril=chol).log_prob(xs)
    log_p = -jax.vmap(potential)(xs)
    log_p = np.where(np.isfinite(log_p), log_p, -np.inf)
    kl = float(np.mean(log_q - log_p) + log_z)
    diag = importance_diagnostics(np.nan_to_num(log_p, neginf=-1e300), log_q)
    return kl, diag.k_hat


def run_fits(args):
    rows = []
    for t_name in args.targets:
        model, log_z_fn = TARGETS[t_name]
        potential, x0 = flat_potential(model)
        log_z = log_z_fn()
        for i, m_name in enumerate(args.methods):
            key = jr.fold_in(jr.key(args.seed), i)
            loc, chol, n_grad, ok, first, warm = METHODS[m_name](potential, x0, key, args)
            kl, k_hat = gaussian_quality(potential, loc, chol, log_z, jr.key(99))
            rows.append(
                {
                    "target": t_name,
                    "method": m_name,
                    "n_grad": n_grad,
                    "first": first,
                    "warm": warm,
                    "ok": "yes" if ok else "no",
                    "kl": kl,
                    "k_hat": k_hat,
                }
            )
            print(rows[-1], flush=True)
    columns = [
        ("target", "target", "{}"),
        ("method", "method", "{}"),
        ("n_grad", "grad evals", "{:,}"),
        ("first", "wall s (first call)", "{:.2f}"),
        ("warm", "wall s (warm)", "{:.3f}"),
        ("ok", "ok", "{}"),
        ("kl", "KL(q||p) nats", "{:.3g}"),
        ("k_hat", "k-hat", "{:.2f}"),
    ]
    return format_table(rows, columns)


# ---------------------------------------------------------------------------- NeuTra
def _guide_diagnostics(guide, params, model, key, n=4000):
    potential, _ = flat_potential(model)
    post = guide.get_posterior(params)
    xs = post.sample(key, (n,))
    log_q = post.log_prob(xs)
    log_p = -jax.vmap(potential)(xs)
    return importance_diagnostics(np.asarray(log_p), np.asarray(log_q))


def _reference_moments(t_name, potential, x0):
    if t_name == "gauss":
        return GAUSS_MEAN, np.sqrt(np.diag(GAUSS_COV)), 0.0
    fit = laplace_then_vi(potential, x0, jr.key(1))
    xs = fit.loc + jr.normal(jr.key(7), (200_000, x0.shape[0])) @ fit.chol.T
    log_q = dist.MultivariateNormal(fit.loc, scale_tril=fit.chol).log_prob(xs)
    lw = np.asarray(-jax.vmap(potential)(xs) - log_q)
    w = np.exp(lw - logsumexp(lw))
    mean = w @ np.asarray(xs)
    sd = np.sqrt(w @ (np.asarray(xs) - mean) ** 2)
    return mean, sd, pareto_khat(lw)


def run_neutra(args):
    rows = []
    for t_name in args.targets:
        model, _ = TARGETS[t_name]
        potential, x0 = flat_potential(model)
        ref_mean, ref_sd, ref_k = _reference_moments(t_name, potential, x0)
        for g_name in ("default", "preconditioned"):
            # "default": the guide from N(init_loc, 1); "preconditioned": from the dense
            # Gaussian fit (what precondition="auto" does where correlations are strong).
            guide = AutoCouplingFlow(model, precondition=None if g_name == "default" else "dense")
            start = time.perf_counter()
            guide, params, _ = fit_guide(
                model,
                guide=guide,
                steps=args.svi_steps,
                key=jr.key(args.seed),
                progress_bar=False,
            )
            svi_s = time.perf_counter() - start
            diag = _guide_diagnostics(guide, params, model, jr.key(3))
            mcmc, idata = neutra_nuts(
                model,
                guide,
                params,
                num_warmup=args.warmup,
                num_samples=args.samples,
                key=jr.key(args.seed + 1),
                progress_bar=False,
            )
            z = mcmc.get_samples()[f"{guide.prefix}_shared_latent"]
            # NeuTraReparam's transform (base -> latent) of the chain's draws, unconstrained.
            xs = np.asarray(jax.vmap(guide.get_transform(params))(z))
            err = np.max(np.abs(xs.mean(0) - ref_mean) / ref_sd)
            stats = idata.sample_stats
            rows.append(
                {
                    "target": t_name,
                    "guide": g_name,
                    "svi_s": svi_s,
                    "k_hat": diag.k_hat,
                    "ess": diag.ess / 4000,
                    "div": int(stats["diverging"].sum()),
                    "steps": float(stats["n_steps"].mean()),
                    "err": float(err),
                    "ref_k": ref_k,
                }
            )
            print(rows[-1], flush=True)
    columns = [
        ("target", "target", "{}"),
        ("guide", "guide", "{}"),
        ("svi_s", "SVI s", "{:.0f}"),
        ("k_hat", "guide k-hat", "{:.2f}"),
        ("ess", "guide IS ESS / S", "{:.3g}"),
        ("div", "divergences", "{}"),
        ("steps", "leapfrog/draw", "{:.1f}"),
        ("err", "max mean error (sd)", "{:.3g}"),
        ("ref_k", "reference k-hat", "{:.2f}"),
    ]
    return format_table(rows, columns)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fits", action="store_true", help="part 1: the Gaussian fits")
    parser.add_argument("--neutra", action="store_true", help="part 2: NeuTra from the fit")
    parser.add_argument("--targets", default=None, help="comma list (default: all / part 2: two)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of methods")
    parser.add_argument("--n-draws", type=int, default=None, help="VI base draws (max(4d, 32))")
    parser.add_argument("--adam-steps", type=int, default=10_000)
    parser.add_argument("--adam-lr", type=float, default=1e-2)
    parser.add_argument("--pilot", type=int, default=500, help="pilot NUTS warmup = draws")
    parser.add_argument("--svi-steps", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    if args.fits:
        args.targets = (args.targets or ",".join(TARGETS)).split(",")
        print(run_fits(args))
    if args.neutra:
        args.targets = (args.targets or "regression,gauss").split(",")
        print(run_neutra(args))


if __name__ == "__main__":
    main()
