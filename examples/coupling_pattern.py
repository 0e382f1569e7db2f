"""The coupling pattern: copy one half, transform the other conditioned on it.

A coupling layer on ``x = (x_A, x_B)`` returns ``z_A = x_A`` and ``z_B = T(x_B; c(x_A))``.
This script checks the three consequences on a 4-D affine coupling and on a
mixture-Gaussian-CDF coupling: the passive coordinates (0 and 1) come out unchanged, the
Jacobian is lower block-triangular so the log-det is the sum of the active diagonal (it
matches ``slogdet`` of the autodiff Jacobian), and the inverse recomputes the conditioner
instead of inverting it (round trip to machine precision).

    python examples/coupling_pattern.py --out figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
import numpy as np

from numpyro_coupling import AffineCoupling, MixtureGaussianCDFCoupling


@jax.jit
def _contract(layer, x, batch):
    # One compiled call per layer: the mixture inverse is an iterative root-find.
    z, log_det = layer.transform_and_log_det(x)
    jac = jax.jacfwd(layer.transform)(x)
    _, inv_log_det = layer.inverse_and_log_det(z)
    round_trip = jnp.abs(layer.inverse(layer.transform(batch)) - batch).max()
    return z, log_det, jac, inv_log_det, round_trip


def check_contract(name, layer, x, batch):
    """Print and return the coupling contract checks for one layer at one point."""
    d = x.shape[-1]
    z, log_det, jac, inv_log_det, round_trip = jax.device_get(_contract(layer, x, batch))
    unchanged = [i for i in range(d) if z[i] == x[i]]
    upper = float(np.abs(np.triu(jac, 1)).max())
    slogdet = float(np.linalg.slogdet(jac)[1])
    diag_sum = float(np.sum(np.log(np.abs(np.diag(jac)))))
    print(f"\n{name}")
    print(f"  x = {np.round(np.asarray(x), 3)}")
    print(f"  z = {np.round(np.asarray(z), 3)}")
    print(
        f"  unchanged (passive) coords: {unchanged}; transformed (active): "
        f"{[i for i in range(d) if i not in unchanged]}"
    )
    print(f"  max |strictly upper-triangular Jacobian| = {upper:.1e}")
    print(
        f"  log|det J|: slogdet {slogdet:+.6f}   sum log|diag| {diag_sum:+.6f}   "
        f"layer {float(log_det):+.6f}"
    )
    print(f"  forward + inverse log-det = {float(log_det + inv_log_det):.1e}")
    print(f"  round trip on {len(batch)} points: max error {round_trip:.1e}")
    return {
        "jac": np.asarray(jac),
        "unchanged": unchanged,
        "upper": upper,
        "logdet_gap": abs(slogdet - float(log_det)),
        "round_trip": round_trip,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=4, help="event dimension")
    parser.add_argument("--quick", action="store_true", help="fast run (float32)")
    parser.add_argument("--out", default="figures", help="folder for the figures")
    args = parser.parse_args(argv)
    if not args.quick:
        jax.config.update("jax_enable_x64", True)
    d = args.d
    # A random (not zero) last conditioner layer, so the layer is not the identity at init.
    layers = {
        "AffineCoupling": AffineCoupling(
            jr.key(0), shape=(d,), nn_width=32, nn_depth=2, zero_init=False
        ),
        "MixtureGaussianCDFCoupling": MixtureGaussianCDFCoupling(
            jr.key(0), shape=(d,), n_components=8, nn_width=32, nn_depth=2, zero_init=False
        ),
    }
    x = np.asarray(jr.normal(jr.key(1), (d,)))
    batch = jr.normal(jr.key(2), (2000, d))
    results = {name: check_contract(name, layer, x, batch) for name, layer in layers.items()}

    tol = 1e-4 if args.quick else 1e-9
    for name, r in results.items():
        assert r["unchanged"] == list(range(d // 2)), f"{name}: passive half changed"
        assert r["upper"] == 0.0, f"{name}: Jacobian not triangular"
        assert r["logdet_gap"] < tol, f"{name}: log-det differs from slogdet"

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(
        1, len(results), figsize=(4.8 * len(results), 4.8), layout="constrained"
    )
    for ax, (name, r) in zip(axes, results.items()):
        im = ax.imshow(np.abs(r["jac"]), cmap="viridis")
        for i in range(d):
            for j in range(d):
                ax.text(
                    j,
                    i,
                    f"{r['jac'][i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if abs(r["jac"][i, j]) < 0.6 else "black",
                )
        ax.axhline(d // 2 - 0.5, color="w", lw=1, ls="--")
        ax.axvline(d // 2 - 0.5, color="w", lw=1, ls="--")
        ax.set(
            title=f"{name}\nnumbers: dz_i/dx_j; log-det gap {r['logdet_gap']:.0e}",
            xticks=range(d),
            yticks=range(d),
            xlabel="input coordinate j",
            ylabel="output coordinate i",
        )
        fig.colorbar(im, ax=ax, fraction=0.046, label="$|\\partial z_i / \\partial x_j|$")
    fig.suptitle("Block-triangular Jacobians: passive block = I, upper-right block = 0")
    path = out / "coupling_jacobian.png"
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
