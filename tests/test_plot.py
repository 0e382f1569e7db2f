"""Every figure function runs on tiny inputs, returns its Axes and draws on a given ``ax=``."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax.random as jr
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes

from numpyro_coupling import AffineCoupling, checkerboard_mask, coupling_flow, half_mask
from numpyro_coupling import plot as ncplot
from numpyro_coupling.pair_plot import plot_pairs


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def flow():
    # zero-initialised affine couplings: the flow is exactly N(0, I) at start
    return coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2, nn_width=4, nn_depth=1)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)


# --- densities ---------------------------------------------------------------------------
def test_plot_density_on_given_ax(flow, data):
    _fig, ax = plt.subplots()
    out = ncplot.plot_density(flow, data, ax=ax, n_grid=8, title="t")
    assert out is ax and ax.get_title() == "t"
    # the data overlay and the filled contours are both there
    assert len(ax.collections) >= 2
    # N(0, I) peaks at 1 / (2 pi) ~ 0.159, which the top contour level must bracket
    levels = ax.collections[0].levels
    assert 0.12 < levels.max() < 0.2


def test_plot_density_defaults_and_bounds(flow):
    ax = ncplot.plot_density(flow, n_grid=6)
    assert isinstance(ax, Axes)
    assert [float(v) for v in ax.get_xlim()] == [-3.0, 3.0]
    ax = ncplot.plot_density(flow, n_grid=6, bounds=((-1, 2), (0, 1)), colorbar=True)
    assert [float(v) for v in ax.get_ylim()] == [0.0, 1.0]
    assert len(ax.figure.axes) == 2  # the colour bar


@pytest.mark.parametrize("bad", [np.zeros((5, 3)), np.zeros(5)])
def test_plot_density_rejects_non_2d_data(flow, bad):
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        ncplot.plot_density(flow, bad, n_grid=4)


def test_plot_density_rejects_bad_bounds(flow):
    with pytest.raises(ValueError, match="bounds"):
        ncplot.plot_density(flow, n_grid=4, bounds=(-1, 1))


def test_plot_latent_marginals(flow, data):
    axes = ncplot.plot_latent_marginals(flow, data, bins=10)
    assert len(axes) == 2 and all(isinstance(a, Axes) for a in axes)
    # identity flow: the latent is the data, so the titles report the data's moments
    assert f"{data[:, 1].std():.2f}" in axes[1].get_title()


def test_plot_latent_marginals_on_given_axes_and_without_flow(data):
    _fig, axes = plt.subplots(1, 2)
    out = ncplot.plot_latent_marginals(None, data, ax=axes, bins=10)
    assert list(out) == list(axes)
    one = ncplot.plot_latent_marginals(None, data[:, :1], ax=plt.gca(), bins=10)
    assert len(one) == 1
    with pytest.raises(ValueError, match="need 2 Axes"):
        ncplot.plot_latent_marginals(None, data, ax=axes[:1])
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        ncplot.plot_latent_marginals(None, data[:, 0])


def test_plot_latent_marginals_max_dims():
    z = np.random.default_rng(1).normal(size=(50, 5))
    assert len(ncplot.plot_latent_marginals(None, z, max_dims=3, bins=5)) == 3


# --- curves ------------------------------------------------------------------------------
def test_plot_losses_single_array_dict_and_list():
    ax = ncplot.plot_losses(np.linspace(3, 1, 20))
    assert isinstance(ax, Axes) and len(ax.get_lines()) == 1 and ax.get_legend() is None
    _fig, ax2 = plt.subplots()
    out = ncplot.plot_losses({"a": [3.0, 2.0], "b": [2.5, 1.5]}, ax=ax2)
    assert out is ax2
    assert [t.get_text() for t in ax2.get_legend().get_texts()] == ["a", "b"]
    ax3 = ncplot.plot_losses([[1.0, 0.5], [2.0, 1.0]], labels=["x", "y"], log_scale=True)
    assert ax3.get_yscale() == "log"
    # A plain list of numbers (what a training loop appends to) is one curve.
    assert len(ncplot.plot_losses([3.0, 2.0, 1.5]).get_lines()) == 1


def test_plot_losses_smoothing_is_a_trailing_mean():
    y = np.array([4.0, 2.0, 0.0, 2.0])
    ax = ncplot.plot_losses(y, smooth=2)
    raw, smooth = ax.get_lines()
    np.testing.assert_allclose(raw.get_ydata(), y)
    np.testing.assert_allclose(smooth.get_ydata(), [4.0, 3.0, 1.0, 1.0])


def test_plot_losses_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        ncplot.plot_losses(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="labels"):
        ncplot.plot_losses([[1.0], [2.0]], labels=["only one"])
    with pytest.raises(ValueError, match="smooth"):
        ncplot.plot_losses([1.0, 2.0], smooth=0)


def test_plot_tc_trace():
    _fig, ax = plt.subplots()
    out = ncplot.plot_tc_trace([0.8, 0.4, 0.1], ax=ax, label="moons", start=1)
    assert out is ax
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "moons")
    assert line.get_xdata().tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="1-D"):
        ncplot.plot_tc_trace(np.zeros((2, 2)))


# --- conditioner diagnostics ---------------------------------------------------------------
def test_plot_kernel_magnitudes(flow):
    cold = coupling_flow(
        jr.key(0), (2,), transformer="affine", n_layers=2, nn_width=4, zero_init=False
    )
    _fig, ax = plt.subplots()
    out = ncplot.plot_kernel_magnitudes({"init": flow, "random": cold}, ax=ax)
    assert out is ax
    assert len(ax.patches) == 4  # 2 flows x 2 couplings
    # the zero-kernel flow's bars are marked so they stay visible
    assert any(len(c.get_offsets()) == 2 for c in ax.collections)
    ax2 = ncplot.plot_kernel_magnitudes(cold)
    assert isinstance(ax2, Axes) and len(ax2.patches) == 2


# --- masks -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mask, shape",
    [(half_mask((6,)), (1, 6)), (checkerboard_mask(3, 4), (3, 4)), ([[0, 1], [1, 0]], (2, 2))],
)
def test_plot_mask_arrays(mask, shape):
    _fig, ax = plt.subplots()
    out = ncplot.plot_mask(mask, ax=ax, title="m")
    assert out is ax and ax.get_title() == "m"
    assert ax.images[0].get_array().shape == shape


def test_plot_mask_layer_and_flow(flow):
    layer = AffineCoupling(jr.key(0), shape=(4,), nn_width=4)
    ax = ncplot.plot_mask(layer, legend=False)
    assert ax.images[0].get_array().tolist() == [[0, 0, 1, 1]] and ax.get_legend() is None
    ax = ncplot.plot_mask(flow)
    assert ax.images[0].get_array().shape == (2, 2)
    assert ax.get_ylabel() == "coupling layer" and ax.get_xlabel() == "data coordinate"


def test_plot_mask_rejects_3d():
    with pytest.raises(ValueError, match="1-D or 2-D"):
        ncplot.plot_mask(checkerboard_mask(2, 2, channels=3))


# --- posterior samples -------------------------------------------------------------------
def test_plot_pairs_arrays_and_dicts():
    rng = np.random.default_rng(0)
    axes = plot_pairs(rng.normal(size=(30, 5)), rng.normal(size=(30, 5)), max_coords=3)
    assert axes.shape == (3, 3) and not axes[0, 2].get_visible()
    before = {"v": rng.normal(size=30), "x": rng.normal(size=(30, 2))}
    axes = plot_pairs(before, coords=["v", "x[1]"])
    assert axes.shape == (2, 2) and axes[1, 0].get_xlabel() == "v"
    assert axes[1, 0].get_ylabel() == "x[1]"


def test_plot_pairs_on_given_axes():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
    _, grid = plt.subplots(2, 2)
    assert plot_pairs(a, b, ax=grid) is grid
    _, ax = plt.subplots()
    assert plot_pairs(a, b, ax=ax, labels=("nuts", "neutra")) is ax
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["nuts", "neutra"]
    with pytest.raises(ValueError, match=r"\(2, 2\) array"):
        plot_pairs(a, ax=grid[:1])


def test_plot_pairs_bad_coords():
    z = np.zeros((10, 3))
    with pytest.raises(ValueError, match="not in every sample set"):
        plot_pairs({"a": z[:, 0]}, {"b": z[:, 0]})
    with pytest.raises(ValueError, match="at least two"):
        plot_pairs(z, coords=[0])


def test_inspection_functions_are_not_plot_api():
    # a flow's structure is read with numpyro_coupling.inspection; plot only draws it
    assert not {"layer_masks", "final_kernel_magnitudes"} & set(ncplot.__all__)
