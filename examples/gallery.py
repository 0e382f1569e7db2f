"""Every figure of ``numpyro_coupling.plot`` and ``pair_plot``, on a flow fitted to two moons.

The flow is trained by a plain Optax loop (Adam, gradient clipping, one-cycle schedule); the
total-correlation trace comes from a greedy RBIG fit of the same data. Run
``python examples/gallery.py --out figures`` (add ``--quick`` for a small, fast run).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import make_moons

from numpyro_coupling import checkerboard_mask, coupling_flow, half_mask
from numpyro_coupling import plot as ncplot
from numpyro_coupling.pair_plot import plot_pairs
from numpyro_coupling.rbig import fit_rbig


def two_moons(n: int, seed: int = 0) -> np.ndarray:
    """Standardised two-moons data ``(n, 2)`` (noise 0.06, as in the density benchmarks)."""
    x, _ = make_moons(n_samples=n, noise=0.06, random_state=seed)
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


def train(flow, data, *, steps: int, batch: int, lr: float, seed: int = 1):
    """Maximum likelihood with Adam, gradient clipping and a one-cycle schedule."""
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    opt = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_onecycle_schedule(steps, lr))
    )
    state = opt.init(params)

    def loss_fn(p, xb):
        return -eqx.combine(p, static).log_prob(xb).mean()

    @jax.jit
    def step(p, s, key):
        xb = data[jr.randint(key, (batch,), 0, data.shape[0])]
        loss, grads = jax.value_and_grad(loss_fn)(p, xb)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for key in jr.split(jr.key(seed), steps):
        params, state, loss = step(params, state, key)
        losses.append(loss)
    return eqx.combine(params, static), np.asarray(jnp.stack(losses))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (a few seconds)")
    parser.add_argument("--out", default="figures", help="directory for the PNG figures")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--dpi", type=int, default=90)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    n_data, n_layers, width = (1000, 4, 32) if args.quick else (3000, 8, 64)
    steps = args.steps or (250 if args.quick else 3000)
    data = jnp.asarray(two_moons(n_data))
    init = coupling_flow(
        jr.key(0), (2,), transformer="spline", n_layers=n_layers, nn_width=width, interval=4.0
    )
    t0 = time.perf_counter()
    flow, losses = train(init, data, steps=steps, batch=256, lr=3e-3)
    mean_lp = float(flow.log_prob(data).mean())
    print(
        f"trained {n_layers} spline couplings for {steps} steps in {time.perf_counter() - t0:.1f} s"
    )
    print(f"mean train log p(x) = {mean_lp:.3f}")

    def save(fig, name):
        fig.savefig(out / name, dpi=args.dpi)
        plt.close(fig)
        print(f"wrote {out / name}")

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), layout="constrained")
    ncplot.plot_density(init, data, ax=axes[0], title="at initialisation (N(0, I))")
    ncplot.plot_density(flow, data, ax=axes[1], title=f"trained: mean log p = {mean_lp:.2f}")
    save(fig, "gallery_density.png")

    axes = ncplot.plot_latent_marginals(flow, data)
    axes[0].figure.suptitle("Latent marginals of the trained flow against N(0, 1)")
    save(axes[0].figure, "gallery_latent_marginals.png")

    ax = ncplot.plot_losses({"spline coupling flow": losses}, smooth=max(steps // 50, 1))
    ax.set_title("Training loss (negative log-likelihood, batch)")
    save(ax.figure, "gallery_losses.png")

    t0 = time.perf_counter()
    rbig = fit_rbig(
        data, max_layers=8 if args.quick else 40, n_components=6, em_steps=40, progress_bar=False
    )
    print(
        f"RBIG: {len(rbig.tc_reductions)} layers in {time.perf_counter() - t0:.1f} s, "
        f"total correlation of the data = {rbig.total_correlation:.3f} nats"
    )
    ax = ncplot.plot_tc_trace(rbig.tc_trace)
    ax.set_title("RBIG: total correlation left after each layer")
    save(ax.figure, "gallery_tc_trace.png")

    ax = ncplot.plot_kernel_magnitudes({"at initialisation (zero kernels)": init, "trained": flow})
    ax.set_title("Conditioner final-kernel magnitude per coupling")
    save(ax.figure, "gallery_kernel_magnitudes.png")

    fig, axes = plt.subplots(
        1, 3, figsize=(11, 3.4), layout="constrained", gridspec_kw={"width_ratios": [1.2, 2, 1.4]}
    )
    ncplot.plot_mask(flow, ax=axes[0], title="this flow's layers", legend=False)
    ncplot.plot_mask(half_mask((8,)), ax=axes[1], title="half mask (vector)", legend=False)
    ncplot.plot_mask(checkerboard_mask(6, 6), ax=axes[2], title="checkerboard (image)")
    save(fig, "gallery_masks.png")

    samples = np.asarray(flow.sample(jr.key(2), (n_data,)))
    axes = plot_pairs(np.asarray(data), samples, labels=("data", "flow samples"))
    axes[0, 0].figure.suptitle("Data against samples of the trained flow")
    save(axes[0, 0].figure, "gallery_pairs.png")


if __name__ == "__main__":
    main()
