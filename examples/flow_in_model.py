"""A coupling flow inside a NumPyro model: the noise density of a linear regression.

The response ``y`` is 2-D, ``y = x * w + b + eps``, and the noise ``eps`` is far from
Gaussian (a curved, skewed banana). The model registers a coupling flow with
:func:`~numpyro_coupling.train.flow_module` and scores the residuals ``y - x * w`` under
it (a shift has a unit Jacobian, so this is the density of ``y`` given ``x``); the flow's
own location plays the intercept. SVI with an ``AutoDelta`` guide learns the slope and the
noise flow together. The same model with a Gaussian noise (learnt mean and scales) is
fitted for comparison.

    python examples/flow_in_model.py --out figures
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

from numpyro_coupling import coupling_flow, flow_from_params, flow_module

TRUE_W = np.array([2.0, -1.0])
TRUE_B = np.array([0.5, 1.0])


def simulate(n, seed=0):
    """``x ~ N(0, 1)``, ``y = x * w + b + eps`` with banana-shaped noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    u = rng.standard_normal(n)
    eps = np.stack([u, 0.6 * (u**2 - 1.0) + 0.25 * rng.standard_normal(n)], -1)
    y = x[:, None] * TRUE_W + TRUE_B + eps
    return jnp.asarray(x), jnp.asarray(y)


def regression(x, y, noise):
    """A prior on the slope; ``noise()`` returns the distribution of ``y - x * w``."""
    w = numpyro.sample("w", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
    numpyro.sample("residual", noise(), obs=y - x[:, None] * w)


def train(model, x, y, steps, lr, seed=0):
    start = {"w": jnp.zeros(2, y.dtype)}
    guide = AutoDelta(model, init_loc_fn=init_to_value(values=start))
    # A cosine-decayed rate settles the flow's parameters at the end of training.
    svi = SVI(model, guide, optax.adam(optax.cosine_decay_schedule(lr, steps)), Trace_ELBO())
    result = svi.run(jr.key(seed), steps, x, y, progress_bar=False)
    return guide, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="observations")
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps")
    parser.add_argument("--lr", type=float, default=1e-2, help="initial Adam learning rate")
    parser.add_argument("--quick", action="store_true", help="tiny run (float32, few steps)")
    parser.add_argument("--out", default="figures", help="folder for the figures")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.steps = 300, 300
    else:
        jax.config.update("jax_enable_x64", True)
    x, y = simulate(args.n)

    noise0 = coupling_flow(
        jr.key(1), (2,), transformer="spline", n_layers=4, nn_width=32, permutation="householder"
    )

    def flow_model(x, y):
        regression(x, y, lambda: flow_module("noise", noise0))

    def gaussian_model(x, y):
        loc = numpyro.param("loc", jnp.zeros(2))
        scale = numpyro.param("scale", jnp.ones(2), constraint=dist.constraints.positive)
        regression(x, y, lambda: dist.Normal(loc, scale).to_event(1))

    fits = {}
    for name, model in [("flow noise", flow_model), ("Gaussian noise", gaussian_model)]:
        guide, result = train(model, x, y, args.steps, args.lr)
        est = guide.median(result.params)
        fits[name] = (est, result)
        nll = float(result.losses[-1]) / args.n
        print(
            f"{name:15s} slope w = {np.round(np.asarray(est['w']), 3)}  "
            f"NLL per observation {nll:.3f}"
        )
    print(f"{'truth':15s} slope w = {TRUE_W}")

    est, result = fits["flow noise"]
    noise = flow_from_params("noise", noise0, result.params)
    residual = np.asarray(y - x[:, None] * est["w"])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained")
    ax = axes[0]
    ax.scatter(np.asarray(x), np.asarray(y[:, 1]), s=3, alpha=0.4, color="0.3", label="data")
    grid_x = np.linspace(float(x.min()), float(x.max()), 2)
    for name, color in [("flow noise", "tab:green"), ("Gaussian noise", "tab:red")]:
        slope = float(fits[name][0]["w"][1])
        intercept = float(jnp.mean(y[:, 1] - x * slope))
        ax.plot(
            grid_x,
            grid_x * slope + intercept,
            color=color,
            lw=2,
            label=f"{name}: slope {slope:.2f}",
        )
    ax.plot(grid_x, grid_x * TRUE_W[1] + TRUE_B[1], "k--", lw=1.5, label="truth: slope -1")
    ax.set(title="y[1] against x", xlabel="x", ylabel="y[1]")
    ax.legend(fontsize=8)

    ax = axes[1]
    lo, hi = np.percentile(residual, [0.5, 99.5], axis=0)
    pad = 0.15 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 160), np.linspace(lo[1], hi[1], 160))
    pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1), dtype=residual.dtype)
    log_dens = np.asarray(jax.jit(noise.log_prob)(pts)).reshape(gx.shape)
    ax.scatter(residual[:, 0], residual[:, 1], s=2, alpha=0.25, color="0.45")
    # Log-density contours, 1 nat apart, show the shape beyond the densest spot.
    top = float(log_dens.max())
    ax.contour(
        gx, gy, log_dens, levels=np.arange(top - 6, top, 1.0), cmap="viridis", linewidths=1.2
    )
    ax.set(
        title="residuals y - x w, learnt noise log-density",
        xlabel="residual[0]",
        ylabel="residual[1]",
        xlim=(lo[0], hi[0]),
        ylim=(lo[1], hi[1]),
    )

    ax = axes[2]
    for name, color in [("flow noise", "tab:green"), ("Gaussian noise", "tab:red")]:
        ax.plot(np.asarray(fits[name][1].losses) / args.n, color=color, lw=1.2, label=name)
    final = [float(r.losses[-1]) / args.n for _, r in fits.values()]
    ax.set(
        title="SVI loss per observation (MAP)",
        xlabel="step",
        ylabel="loss",
        ylim=(min(final) - 0.3, max(final) + 0.5),
    )
    ax.legend(fontsize=8)
    fig.suptitle("Linear regression with a coupling-flow noise model, trained jointly by SVI")
    path = out / "flow_in_model.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
