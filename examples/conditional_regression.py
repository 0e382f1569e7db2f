"""A conditional flow p(y | u): heteroscedastic, bimodal regression noise.

The response is ``y = a + b u + eps`` where the noise ``eps`` given the covariate ``u`` is
a two-component mixture whose modes drift apart, whose weights shift and whose spread grows
with ``u``: no Gaussian (or any fixed-shape) likelihood fits it. A coupling flow built with
``context_shape=(1,)`` is a density of ``y`` for each ``u``:

* standalone, fitted by :func:`~numpyro_coupling.fit` with ``context=u`` to the pairs;
* inside a NumPyro regression model, as the likelihood of the residuals ``y - b u``
  (``numpyro.sample("y", noise.condition(u), obs=y - b * u)``, the flow registered with
  :func:`~numpyro_coupling.flow_module`), the slope ``b`` and the flow learnt together by
  SVI; the flow's own location plays the intercept ``a``.

The figure shows the data and the conditional densities at a few covariates: the truth,
the standalone fit and the in-model fit.

    python examples/conditional_regression.py --out figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI, Trace_ELBO, init_to_value
from numpyro.infer.autoguide import AutoDelta

from numpyro_coupling import coupling_flow, fit, flow_from_params, flow_module

TRUE_A, TRUE_B = 1.0, 0.8
CONTEXTS = (-1.5, 0.0, 1.5)


def noise_params(u):
    """Weight of the upper mode, the two modes and their common scale at covariate ``u``."""
    weight = 1.0 / (1.0 + np.exp(-1.5 * u))
    gap = 0.8 + 0.3 * u
    scale = 0.15 * np.exp(0.35 * u)
    return weight, gap, -gap, scale


def true_log_density(y, u):
    """``log p(y | u)`` of the simulated data."""
    weight, upper, lower, scale = noise_params(u)
    eps = y - TRUE_A - TRUE_B * u

    def normal(m):
        return -0.5 * ((eps - m) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)

    return np.logaddexp(np.log(weight) + normal(upper), np.log1p(-weight) + normal(lower))


def simulate(n, seed=0):
    """``u ~ U(-2, 2)``, ``y = a + b u + eps`` with the bimodal, heteroscedastic noise."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-2.0, 2.0, n)
    weight, upper, lower, scale = noise_params(u)
    mode = np.where(rng.random(n) < weight, upper, lower)
    y = TRUE_A + TRUE_B * u + mode + scale * rng.standard_normal(n)
    return u, y


def regression(u, y, noise0):
    """``y - b u`` has the density of the noise flow at context ``u``."""
    b = numpyro.sample("b", dist.Normal(0.0, 10.0))
    noise = flow_module("noise", noise0)
    numpyro.sample("residual", noise.condition(u[:, None]), obs=(y - b * u)[:, None])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="observations")
    parser.add_argument("--steps", type=int, default=3000, help="training steps (both fits)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak / initial learning rate")
    parser.add_argument("--quick", action="store_true", help="tiny run (few steps)")
    parser.add_argument("--out", default="figures", help="folder for the figure")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.steps = 300, 100
    u, y = simulate(args.n)
    u_test, y_test = simulate(20_000, seed=1)
    oracle = float(np.mean(true_log_density(y_test, u_test)))

    def make_flow(key):
        # A 1-D event: each layer is a spline of y whose parameters the context sets; the
        # interval (the spline is the identity outside it) covers the unstandardised y.
        return coupling_flow(
            key, (1,), context_shape=(1,), n_layers=4, nn_width=32, n_bins=8, interval=5.0
        )

    # ---- standalone: p(y | u) fitted to the pairs -------------------------------------
    standalone, _ = fit(
        make_flow(jr.key(0)),
        y[:, None],
        context=u[:, None],
        key=jr.key(1),
        steps=args.steps,
        batch_size=256,
        learning_rate=args.lr,
        progress_bar=False,
    )
    log_p = jax.jit(lambda f, y, u: f.condition(u).log_prob(y))
    test_ll = float(jnp.mean(log_p(standalone, y_test[:, None], u_test[:, None])))
    print(f"standalone flow  test log-likelihood {test_ll:.3f}  (oracle {oracle:.3f})")

    # ---- inside a model: the slope and the noise flow by SVI ---------------------------
    noise0 = make_flow(jr.key(2))
    uj, yj = jnp.asarray(u), jnp.asarray(y)

    def model(u, y):
        regression(u, y, noise0)

    guide = AutoDelta(model, init_loc_fn=init_to_value(values={"b": 0.0}))
    schedule = optax.cosine_onecycle_schedule(args.steps, args.lr)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    svi = SVI(model, guide, optimizer, Trace_ELBO())
    result = svi.run(jr.key(3), args.steps, uj, yj, progress_bar=False)
    b_hat = float(guide.median(result.params)["b"])
    noise = flow_from_params("noise", noise0, result.params)
    resid_test = (y_test - b_hat * u_test)[:, None]
    model_ll = float(jnp.mean(log_p(noise, resid_test, u_test[:, None])))
    print(
        f"in-model flow    slope b = {b_hat:.3f} (truth {TRUE_B}), test log-likelihood "
        f"{model_ll:.3f}"
    )

    # ---- figure --------------------------------------------------------------------------
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 1 + len(CONTEXTS), figsize=(16, 4.2), layout="constrained")
    ax = axes[0]
    ax.scatter(u, y, s=2, alpha=0.3, color="0.3")
    for u0 in CONTEXTS:
        ax.axvline(u0, color="tab:blue", lw=1, ls=":")
    ax.set(title="data: y against u", xlabel="u", ylabel="y")
    for ax, u0 in zip(axes[1:], CONTEXTS):
        center = TRUE_A + TRUE_B * u0
        grid = np.linspace(center - 2.5, center + 2.5, 600)
        context = jnp.full((len(grid), 1), u0)
        truth = np.exp(true_log_density(grid, np.full_like(grid, u0)))
        alone = np.exp(np.asarray(log_p(standalone, jnp.asarray(grid)[:, None], context)))
        in_model = np.exp(
            np.asarray(log_p(noise, jnp.asarray(grid - b_hat * u0)[:, None], context))
        )
        ax.fill_between(grid, truth, color="0.85", label="truth")
        ax.plot(grid, alone, color="tab:green", lw=1.8, label="flow, fitted standalone")
        ax.plot(grid, in_model, color="tab:purple", lw=1.4, ls="--", label="flow, in the model")
        ax.set(title=f"p(y | u = {u0:g})", xlabel="y", yticks=[])
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"Conditional coupling flow: test log-likelihood {test_ll:.3f} standalone, "
        f"{model_ll:.3f} in the model (slope {b_hat:.2f}, truth {TRUE_B}); oracle {oracle:.3f}"
    )
    path = out / "conditional_regression.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
