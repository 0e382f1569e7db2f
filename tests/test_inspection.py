"""A flow's structure read back as arrays: leaf layers, coupling masks, conditioner kernels."""

import jax.random as jr
import numpy as np
import pytest
from numpyro.distributions.transforms import ComposeTransform

from numpyro_coupling import AffineCoupling, Chain, Flip, coupling_flow
from numpyro_coupling.inspection import final_kernel_magnitudes, layer_masks, leaf_bijections


def test_leaf_bijections_open_every_container():
    flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2, nn_width=4)
    names = [type(layer).__name__ for layer in leaf_bijections(flow)]
    assert names == ["Coupling", "Flip", "Coupling", "Flip"]
    # a Chain nested in a NumPyro ComposeTransform yields the same leaves, in order
    composed = ComposeTransform([Chain([flow.bijection]), Flip((2,))])
    assert [type(x).__name__ for x in leaf_bijections(composed)] == [*names, "Flip"]
    # a layer that is no container is its own only leaf
    flip = Flip((2,))
    assert list(leaf_bijections(flip)) == [flip]


def test_final_kernel_magnitudes_zero_then_positive():
    warm = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=3, nn_width=4)
    cold = coupling_flow(
        jr.key(0), (2,), transformer="affine", n_layers=3, nn_width=4, zero_init=False
    )
    assert final_kernel_magnitudes(warm).tolist() == [0.0, 0.0, 0.0]
    assert (final_kernel_magnitudes(cold) > 0).all()
    # a single coupling layer and a bare Chain work too
    layer = AffineCoupling(jr.key(1), shape=(2,), nn_width=4, zero_init=False)
    assert final_kernel_magnitudes(layer).shape == (1,)
    assert final_kernel_magnitudes(cold.bijection).shape == (3,)
    with pytest.raises(ValueError, match="no coupling layer"):
        final_kernel_magnitudes(Flip((2,)))


@pytest.mark.parametrize(
    "permutation, tracked", [("flip", True), ("random", True), ("householder", False)]
)
def test_layer_masks_follow_permutations(permutation, tracked):
    f = coupling_flow(
        jr.key(3), (4,), transformer="affine", n_layers=3, nn_width=4, permutation=permutation
    )
    masks, in_data = layer_masks(f)
    assert masks.shape == (3, 4) and in_data is tracked
    assert (masks.sum(1) == 2).all()
    if permutation == "flip":
        assert masks.astype(int).tolist() == [[0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]]


def test_layer_masks_of_one_layer_and_of_no_coupling():
    layer = AffineCoupling(jr.key(0), shape=(4,), nn_width=4)
    masks, in_data = layer_masks(layer)
    assert masks.dtype == np.bool_ and masks.astype(int).tolist() == [[0, 0, 1, 1]]
    assert in_data is True
    with pytest.raises(ValueError, match="no coupling layer"):
        layer_masks(Chain([Flip((4,))]))
