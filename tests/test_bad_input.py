"""Bad input fails early, with a ValueError that says what is wrong."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import numpyro_coupling as nc
from numpyro_coupling import rbig, rbig_coupling, train
from numpyro_coupling.transformers import Affine, MixtureGaussianCDF, RQSpline

KEY = jr.key(0)


@pytest.fixture(scope="module")
def coupling():
    return nc.AffineCoupling(KEY, shape=(4,), nn_width=4)


@pytest.fixture(scope="module")
def flow():
    return nc.coupling_flow(KEY, (4,), transformer="affine", n_layers=2, nn_width=4)


# --- event shapes -----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5), (3,), (), (2, 4, 1)])
@pytest.mark.parametrize("method", ["transform", "inverse", "transform_and_log_det"])
def test_coupling_rejects_wrong_event_shape(coupling, method, shape):
    got = str(shape).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"events of shape \(4,\), got an input of shape {got}"):
        getattr(coupling, method)(jnp.ones(shape))


def test_chain_rejects_wrong_event_shape(coupling):
    chain = nc.Chain([nc.Flip((4,)), coupling])
    with pytest.raises(ValueError, match=r"Flip acts on events of shape \(4,\).*\(2, 3\)"):
        chain.transform(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"AffineCoupling acts on events of shape \(4,\)"):
        chain.inverse(jnp.ones((2, 5)))


def test_flow_rejects_wrong_event_shape(flow):
    with pytest.raises(ValueError, match=r"events of shape \(4,\), got an input of shape \(7, 3\)"):
        flow.log_prob(jnp.ones((7, 3)))
    with pytest.raises(ValueError, match=r"events of shape \(4,\)"):
        flow.to_latent(jnp.ones(5))


# --- coupling construction -------------------------------------------------------------------
@pytest.mark.parametrize("cls", [nc.AffineCoupling, nc.RQSplineCoupling])
def test_one_dimensional_coupling(cls):
    with pytest.raises(ValueError, match=r"at least 2 event coordinates.*got shape \(1,\)"):
        cls(KEY, shape=(1,))
    with pytest.raises(ValueError, match="at least 2 event coordinates"):
        nc.coupling_flow(KEY, (1,))


def test_mask_of_wrong_shape():
    with pytest.raises(ValueError, match=r"mask has shape \(3,\), expected the event shape \(4,\)"):
        nc.AffineCoupling(KEY, shape=(4,), mask=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\)"):
        nc.AffineCoupling(KEY, shape=(4,), mask=np.ones((2, 2), bool))


@pytest.mark.parametrize("fill", [False, True], ids=["nothing-active", "nothing-passive"])
@pytest.mark.parametrize("flip", [False, True])
def test_mask_without_active_or_passive_coordinates(fill, flip):
    with pytest.raises(ValueError, match="at least one coordinate active and one passive"):
        nc.AffineCoupling(KEY, shape=(4,), mask=np.full(4, fill), flip=flip)


def test_conditioner_settings():
    with pytest.raises(ValueError, match="width >= 1"):
        nc.AffineCoupling(KEY, shape=(4,), nn_width=0)
    with pytest.raises(ValueError, match="depth >= 0"):
        nc.AffineCoupling(KEY, shape=(4,), nn_depth=-1)
    with pytest.raises(ValueError, match="activation must be one of"):
        nc.AffineCoupling(KEY, shape=(4,), activation="sigmoid")


def test_flow_factory_arguments():
    with pytest.raises(ValueError, match="transformer must be one of"):
        nc.coupling_flow(KEY, (4,), transformer="maf")
    with pytest.raises(ValueError, match="permutation must be one of"):
        nc.coupling_flow(KEY, (4,), permutation="reverse")
    with pytest.raises(ValueError, match="n_layers must be >= 1"):
        nc.coupling_flow(KEY, (4,), n_layers=0)
    with pytest.raises(ValueError, match=r"vector events \(d,\)"):
        nc.coupling_flow(KEY, (2, 2))


def test_linear_layer_arguments():
    with pytest.raises(ValueError, match="not a permutation"):
        nc.Permute([0, 0, 1])
    with pytest.raises(ValueError, match="n_reflections must be >= 1"):
        nc.HouseholderRotation(0, (3,))
    with pytest.raises(ValueError, match=r"ActNorm1D acts on vector events"):
        nc.ActNorm1D((2, 2))


# --- transformer settings ----------------------------------------------------------------------
@pytest.mark.parametrize("n_components", [0, -2])
def test_n_components_below_one(n_components):
    with pytest.raises(ValueError, match=rf"n_components must be >= 1, got {n_components}"):
        MixtureGaussianCDF(n_components)
    with pytest.raises(ValueError, match="n_components must be >= 1"):
        nc.MixtureGaussianCDFCoupling(KEY, shape=(4,), n_components=n_components)


@pytest.mark.parametrize("n_bins", [0, -1])
def test_n_bins_below_one(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        RQSpline(n_bins)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(interval=0.0), "interval"),
        (dict(interval=-4.0), "interval"),
        # n_bins * min_bin_size >= 1 makes the bin widths negative: not monotone.
        (dict(n_bins=2000), "min_bin_size"),
        (dict(min_derivative=0.0), "min_derivative"),
    ],
)
def test_spline_settings(kwargs, word):
    with pytest.raises(ValueError, match=word):
        RQSpline(**kwargs)


@pytest.mark.parametrize(
    "make", [Affine, lambda b: MixtureGaussianCDF(4, b)], ids=["affine", "mixture"]
)
def test_log_scale_bound_must_be_positive(make):
    # Affine(0.0) would divide by zero inside soft_clamp: every output NaN.
    with pytest.raises(ValueError, match="log_scale_bound"):
        make(0.0)


# --- data with NaN ----------------------------------------------------------------------------
def _data_with_nan():
    X = np.random.default_rng(0).normal(size=(64, 4))
    X[3, 1] = np.nan
    X[10, 0] = np.inf
    return X


def test_fit_rejects_nan_data(flow):
    with pytest.raises(ValueError, match=r"1 NaN and 1 infinite values \(in 2 of 64 rows\)"):
        train.fit(flow, _data_with_nan(), key=KEY, steps=2, progress_bar=False)
    X = np.zeros((64, 4))
    with pytest.raises(ValueError, match="validation contains 1 NaN"):
        train.fit(flow, X, key=KEY, steps=2, validation=_data_with_nan(), progress_bar=False)
    with pytest.raises(ValueError, match=r"shape \(n, 4\).*got shape \(64, 3\)"):
        train.fit(flow, X[:, :3], key=KEY, steps=2, progress_bar=False)
    with pytest.raises(ValueError, match="must be real, got complex"):
        train.fit(flow, X.astype(complex), key=KEY, steps=2, progress_bar=False)
    with pytest.raises(ValueError, match="must be numeric"):
        train.fit(flow, X.astype(str), key=KEY, steps=2, progress_bar=False)


def test_fit_rbig_rejects_nan_data():
    with pytest.raises(ValueError, match=r"NaN or inf \(first at row 3, column 1\)"):
        rbig.fit_rbig(_data_with_nan(), progress_bar=False)
    with pytest.raises(ValueError, match="NaN or inf"):
        rbig_coupling.fit_rbig_coupling(_data_with_nan(), progress_bar=False)


def test_rbig_constant_columns():
    X = np.random.default_rng(0).normal(size=(200, 3))
    X[:, 1] = 2.0
    for fit in (rbig.fit_rbig, rbig_coupling.fit_rbig_coupling):
        with pytest.raises(ValueError, match=r"column\(s\) \[1\] of X are constant"):
            fit(X, progress_bar=False)
