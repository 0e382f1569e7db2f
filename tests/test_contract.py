"""Contract suite: every bijection in the registry obeys the same laws.

Bijections are evaluated through ``eqx.filter_jit`` (compiled once per structure and shape),
as users run them; op-by-op dispatch would only slow the suite down.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from numpyro.distributions.transforms import ComposeTransform

import numpyro_coupling as nc
from numpyro_coupling import Chain, Coupling

from registry import CONDITIONAL, CONTEXT_SHAPE, COUPLING_NAMES, REGISTRY, build

NAMES = sorted(REGISTRY)
# Round-trip error relative to (1 + |x|) for parameters of a trained flow (``scale=0.1``).
ROUND_TRIP_TOL = {jnp.float32: 1e-5, jnp.float64: 1e-10}

forward = eqx.filter_jit(lambda b, x: b.transform_and_log_det(x))
inverse = eqx.filter_jit(lambda b, y: b.inverse_and_log_det(y))
jacobians = eqx.filter_jit(lambda b, x: jax.vmap(jax.jacfwd(b.transform))(x))
inverse_jacobians = eqx.filter_jit(lambda b, y: jax.vmap(jax.jacfwd(b.inverse))(y))


def _inputs(shape, dtype, scale=1.0, n=64, seed=1):
    return (scale * jr.normal(jr.key(seed), (n, *shape))).astype(dtype)


def _rel_err(a, b):
    """Per-sample ``max |a - b| / (1 + max |b|)``."""
    return jnp.max(jnp.abs(a - b), -1) / (1.0 + jnp.max(jnp.abs(b), -1))


def _condition(b, x):
    """Relative condition number of inverting ``b`` at ``x`` (per sample, at least 1).

    Any inverse computed in floating point carries an error of order ``eps * cond``: where
    a map is nearly flat its inverse is ill-posed, whatever the algorithm. For a chain the
    bound is the product over its layers, evaluated along the path.
    """
    if isinstance(b, Chain):
        total = jnp.ones(x.shape[0], x.dtype)
        for layer in b.bijections:
            total = total * _condition(layer, x)
            x = forward(layer, x)[0]
        return total
    y = forward(b, x)[0]
    inv_norm = jnp.abs(inverse_jacobians(b, y)).sum(-1).max(-1)
    return jnp.maximum(1.0, inv_norm * (1 + jnp.abs(y).max(-1)) / (1 + jnp.abs(x).max(-1)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 10.0], ids=["standardised", "10x-outside"])
def test_round_trip(name, scale, dtype):
    """Trained-flow-sized parameters: the round trip meets the absolute tolerance."""
    b = build(name, (4,), dtype, scale=0.1)
    x = _inputs((4,), dtype, scale)
    z = forward(b, x)[0]
    assert z.dtype == dtype
    # Rounding errors add up over the layers of a chain.
    tol = ROUND_TRIP_TOL[dtype] * (len(b) if isinstance(b, Chain) else 1)
    assert float(_rel_err(inverse(b, z)[0], x).max()) <= tol
    assert float(_rel_err(forward(b, inverse(b, x)[0])[0], x).max()) <= tol


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 10.0], ids=["standardised", "10x-outside"])
def test_round_trip_within_conditioning(name, scale, dtype):
    """Arbitrary (large) parameters: the round trip is as accurate as the map allows."""
    b = build(name, (4,), dtype, scale=0.3)
    x = _inputs((4,), dtype, scale)
    z, log_det = forward(b, x)
    assert bool(jnp.isfinite(z).all() and jnp.isfinite(log_det).all())
    err = _rel_err(inverse(b, z)[0], x)
    bound = 32 * jnp.finfo(dtype).eps * _condition(b, x)
    assert bool((err <= bound).all()), float(jnp.max(err / bound))


@pytest.mark.parametrize("name", NAMES)
def test_log_det_matches_autodiff(name, dtype):
    b = build(name, (5,), dtype)
    tol = 1e-9 if dtype == jnp.float64 else 2e-4
    x = _inputs((5,), dtype, 1.5, n=4)
    z, log_det = forward(b, x)
    sign, expected = jnp.linalg.slogdet(jacobians(b, x))
    assert bool((sign != 0).all())
    np.testing.assert_allclose(log_det, expected, atol=tol, rtol=tol)
    _, inv_log_det = inverse(b, z)
    _, expected_inv = jnp.linalg.slogdet(inverse_jacobians(b, z))
    np.testing.assert_allclose(inv_log_det, expected_inv, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", NAMES)
def test_inverse_log_det_is_minus_forward(name, dtype):
    b = build(name, (4,), dtype, scale=0.1)
    x = _inputs((4,), dtype, 2.0)
    z, log_det = forward(b, x)
    _, inv_log_det = inverse(b, z)
    tol = 1e-10 if dtype == jnp.float64 else 1e-4
    np.testing.assert_allclose(log_det + inv_log_det, 0.0, atol=tol)


@pytest.mark.parametrize("name", COUPLING_NAMES)
def test_passive_coordinates_bit_for_bit(name, dtype):
    b = build(name, (5,), dtype)
    x = _inputs((5,), dtype, 3.0)
    passive = np.asarray(b.passive_idx)
    assert np.array_equal(np.asarray(forward(b, x)[0])[:, passive], np.asarray(x)[:, passive])
    assert np.array_equal(np.asarray(inverse(b, x)[0])[:, passive], np.asarray(x)[:, passive])


@pytest.mark.parametrize("name", COUPLING_NAMES)
def test_jacobian_block_triangular(name, x64):
    b = build(name, (5,), jnp.float64)
    x = _inputs((5,), jnp.float64, n=1)[0]
    J = np.asarray(jacobians(b, x[None])[0])
    p, a = np.asarray(b.passive_idx), np.asarray(b.active_idx)
    np.testing.assert_array_equal(J[np.ix_(p, p)], np.eye(len(p)))
    np.testing.assert_array_equal(J[np.ix_(p, a)], 0.0)
    active_block = J[np.ix_(a, a)]
    np.testing.assert_array_equal(active_block - np.diag(np.diag(active_block)), 0.0)
    assert np.all(np.diag(active_block) > 0)
    if name != "additive":
        assert np.abs(J[np.ix_(a, p)]).max() > 0  # the conditioner really conditions


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [(), (13,), (3, 4)])
def test_batch_shapes(name, batch):
    b = build(name, (4,))
    x = jr.normal(jr.key(2), (*batch, 4))
    z, log_det = forward(b, x)
    assert z.shape == x.shape and log_det.shape == batch
    xr, inv_log_det = inverse(b, z)
    assert xr.shape == x.shape and inv_log_det.shape == batch
    assert eqx.filter_jit(lambda b, x, z: b.log_abs_det_jacobian(x, z))(b, x, z).shape == batch
    # Batched evaluation agrees with one-at-a-time evaluation.
    flat = x.reshape(-1, 4)[:3]
    one_by_one = jnp.stack([forward(b, v)[1] for v in flat])
    np.testing.assert_allclose(log_det.reshape(-1)[:3], one_by_one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_grad(name):
    b = build(name, (4,))
    x = jr.normal(jr.key(3), (7, 4))
    ref_z, ref_ld = forward(b, x)

    # jax.jit of a closure over the bijection, vmap over single events.
    z, ld = jax.jit(lambda v: b.transform_and_log_det(v))(x)
    np.testing.assert_allclose(z, ref_z, rtol=1e-5, atol=1e-5)
    z, ld = jax.jit(jax.vmap(b.transform_and_log_det))(x)
    np.testing.assert_allclose(ld, ref_ld, rtol=1e-5, atol=1e-5)
    # The pytree passes through jax.jit as an argument too.
    z = jax.jit(lambda bij, v: bij.inverse(v))(b, ref_z)
    np.testing.assert_allclose(z, x, rtol=1e-4, atol=1e-4)

    def loss(bij, v):
        z, ld = bij.transform_and_log_det(v)
        return jnp.mean(0.5 * jnp.sum(z**2, -1) - ld) + jnp.mean(bij.inverse(v) ** 2)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(b, x)
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert all(bool(jnp.isfinite(g).all()) for g in leaves)
    if leaves:  # a trainable bijection gets a gradient for every parameter
        n_params = len(jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_inexact_array)))
        assert len(leaves) == n_params
    gx = jax.jit(jax.grad(lambda v: loss(b, v)))(x)
    assert bool(jnp.isfinite(gx).all())
    params, static = eqx.partition(b, eqx.is_inexact_array)
    np.testing.assert_array_equal(forward(eqx.combine(params, static), x)[0], ref_z)


@eqx.filter_jit
def _numpyro_api(b, x):
    y, inter = b.call_with_intermediates(x)
    composed = ComposeTransform([b, b.inv, b])
    cy = composed(x)
    return {
        "y": y,
        "call": b(x),
        "inv": b.inv(y),
        "inverse": b.inverse(y),
        "ld_inter": b.log_abs_det_jacobian(x, y, inter),
        "ld": b.log_abs_det_jacobian(x, y),
        "composed": cy,
        "composed_ld": composed.log_abs_det_jacobian(x, cy),
    }


@pytest.mark.parametrize("name", NAMES)
def test_numpyro_transform_api(name):
    b = build(name, (4,))
    x = jr.normal(jr.key(4), (6, 4))
    out = _numpyro_api(b, x)
    # The same maths compiled as different programs (with or without the log-det):
    # float32 rounding may differ by a few ulps (the mixture CDF's tails amplify them).
    np.testing.assert_allclose(out["call"], out["y"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["inv"], out["inverse"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["ld_inter"], out["ld"], rtol=1e-5, atol=1e-6)
    assert b.domain.event_dim == 1 and b.codomain.event_dim == 1
    assert b.forward_shape((6, 4)) == (6, 4) and b.inverse_shape((6, 4)) == (6, 4)
    np.testing.assert_allclose(out["composed"], out["y"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["composed_ld"], out["ld"], rtol=1e-4, atol=1e-4)
    # A ComposeTransform of bijections is itself a pytree with the same trainable leaves.
    composed = ComposeTransform([b, b.inv, b])
    n_leaves = len(jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_inexact_array)))
    params, _ = eqx.partition(composed, eqx.is_inexact_array)
    assert len(jax.tree_util.tree_leaves(params)) == 3 * n_leaves


@pytest.mark.parametrize("name", NAMES)
def test_odd_dimension(name):
    b = build(name, (7,), scale=0.1)
    x = jr.normal(jr.key(5), (9, 7))
    assert float(_rel_err(inverse(b, forward(b, x)[0])[0], x).max()) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_wrong_event_shape_is_a_clear_error(name):
    b = build(name, (4,))
    with pytest.raises(ValueError, match="shape"):
        b.transform(jnp.zeros((3, 5)))


@pytest.mark.parametrize(
    "cls_name",
    ["AffineCoupling", "AdditiveCoupling", "RQSplineCoupling", "MixtureGaussianCDFCoupling"],
)
def test_unsplittable_and_bad_masks(cls_name):
    import numpyro_coupling as nc

    cls = getattr(nc, cls_name)
    with pytest.raises(ValueError, match="at least 2"):
        cls(jr.key(0), shape=(1,))
    with pytest.raises(ValueError, match="mask has shape"):
        cls(jr.key(0), shape=(4,), mask=np.array([True, False, True]))
    with pytest.raises(ValueError, match="at least one coordinate active"):
        cls(jr.key(0), shape=(4,), mask=np.zeros(4, bool))


def test_seed00_affine_coupling_on_four_dims(x64):
    import numpyro_coupling as nc

    coupling = nc.AffineCoupling(jr.key(0), shape=(4,), nn_width=32, nn_depth=2, zero_init=False)
    x = jr.normal(jr.key(1), (4,))
    z, log_det = coupling.transform_and_log_det(x)
    assert [int(i) for i in np.flatnonzero(np.asarray(z) == np.asarray(x))] == [0, 1]
    J = jax.jacfwd(coupling.transform)(x)
    assert float(jnp.abs(jnp.triu(J, 1)).max()) == 0.0
    np.testing.assert_allclose(log_det, jnp.linalg.slogdet(J)[1], atol=1e-14)
    xb = jr.normal(jr.key(2), (2000, 4))
    assert float(jnp.abs(coupling.inverse(coupling.transform(xb)) - xb).max()) < 1e-14


def test_masks_flip_and_custom():
    import numpyro_coupling as nc

    default = nc.AffineCoupling(jr.key(0), shape=(2,))
    assert default.passive_idx == (0,) and default.active_idx == (1,)
    flipped = nc.AffineCoupling(jr.key(0), shape=(2,), flip=True)
    assert flipped.passive_idx == (1,)
    odd = nc.AffineCoupling(jr.key(0), shape=(5,))
    assert odd.passive_idx == (0, 1) and odd.active_idx == (2, 3, 4)
    custom = nc.AffineCoupling(jr.key(0), shape=(4,), mask=[True, False, True, False])
    assert custom.active_idx == (0, 2)
    assert custom.mask.tolist() == [True, False, True, False]


@pytest.mark.parametrize("dim", [2, 3, 10, 11, 64, 100])
def test_mask_split_and_merge_match_indexing(dim):
    """Bit masks take the strided-slice path; other masks fall back to a gather."""
    from numpyro_coupling import bit_masks
    from numpyro_coupling.coupling import _merge, _periodic, _take

    rng = np.random.default_rng(dim)
    masks = [*bit_masks(dim, 16), rng.random(dim) < 0.5, np.arange(dim) % 3 == 0]
    x = rng.normal(size=(2, 3, dim)).astype(np.float32)
    n_strided = 0
    for mask in masks:
        a, b = tuple(np.flatnonzero(~mask)), tuple(np.flatnonzero(mask))
        if not a or not b:
            continue
        n_strided += _periodic(a, dim) is not None
        xa, xb = _take(jnp.asarray(x), a), _take(jnp.asarray(x), b)
        np.testing.assert_array_equal(xa, x[..., list(a)])
        np.testing.assert_array_equal(xb, x[..., list(b)])
        expected = x.copy()
        expected[..., list(b)] = -x[..., list(b)]
        np.testing.assert_array_equal(_merge(jnp.asarray(x), xa, a, -xb, b), expected)
    assert n_strided >= 2  # every bit mask of these sizes is alternating blocks


def test_checkerboard_image_coupling():
    import numpyro_coupling as nc

    mask = nc.checkerboard_mask(4, 4, channels=2)
    assert mask.shape == (4, 4, 2) and mask.sum() == 16
    assert (nc.checkerboard_mask(4, 4) ^ nc.checkerboard_mask(4, 4, parity=1)).all()
    layer = nc.RQSplineCoupling(jr.key(0), shape=(4, 4, 2), mask=mask, zero_init=False)
    x = jr.normal(jr.key(1), (3, 4, 4, 2))
    z, log_det = layer.transform_and_log_det(x)
    assert z.shape == x.shape and log_det.shape == (3,)
    assert layer.domain.event_dim == 3
    np.testing.assert_array_equal(np.asarray(z)[:, ~mask], np.asarray(x)[:, ~mask])
    np.testing.assert_allclose(layer.inverse(z), x, atol=1e-5)


def test_zero_init_is_constant_transform():
    import numpyro_coupling as nc

    for cls in nc.COUPLINGS.values():
        layer = cls(jr.key(0), shape=(4,))
        assert float(jnp.abs(layer.conditioner.final_kernel).max()) == 0.0
        x = jr.normal(jr.key(1), (5, 4))
        shifted = x.at[:, :2].add(1.0)  # moving the passive half changes nothing
        np.testing.assert_array_equal(
            forward(layer, x)[0][:, 2:], forward(layer, shifted)[0][:, 2:]
        )
    for cls in (nc.AffineCoupling, nc.AdditiveCoupling, nc.RQSplineCoupling):
        x = jr.normal(jr.key(1), (5, 4))
        np.testing.assert_allclose(forward(cls(jr.key(0), shape=(4,)), x)[0], x, atol=1e-6)


def test_isinstance_coupling():
    for name in COUPLING_NAMES:
        assert isinstance(build(name), Coupling)


# ---------------------------------------------------------------------------------------
# Conditional couplings: the laws for a fixed context, and how contexts broadcast.
# ---------------------------------------------------------------------------------------

CONDITIONAL_NAMES = sorted(CONDITIONAL)
forward_given = eqx.filter_jit(lambda b, x, c: b.transform_and_log_det(x, c))
inverse_given = eqx.filter_jit(lambda b, y, c: b.inverse_and_log_det(y, c))


def _contexts(n, seed=7, dtype=jnp.float32):
    return jr.normal(jr.key(seed), (n, *CONTEXT_SHAPE)).astype(dtype)


@eqx.filter_jit
def _round_trip_and_jacobian(b, x, c):
    z, log_det = b.transform_and_log_det(x, c)
    xr, inv_log_det = b.inverse_and_log_det(z, c)
    jac = jax.vmap(jax.jacfwd(lambda v, w: b.transform_and_log_det(v, w)[0]))(x, c)
    return xr, log_det, inv_log_det, jac


@pytest.mark.parametrize("name", CONDITIONAL_NAMES)
def test_conditional_round_trip_and_log_det(name, x64):
    """Each row at its own context: round trip, log-det of the Jacobian in x."""
    b = build(name, (4,), jnp.float64, scale=0.3)
    x, c = _inputs((4,), jnp.float64, 2.0, n=16), _contexts(16, dtype=jnp.float64)
    xr, log_det, inv_log_det, jac = _round_trip_and_jacobian(b, x, c)
    assert float(_rel_err(xr, x).max()) <= 1e-10
    np.testing.assert_allclose(log_det + inv_log_det, 0.0, atol=1e-10)
    np.testing.assert_allclose(log_det, jnp.linalg.slogdet(jac)[1], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ["conditional_spline", "conditional_all_active"])
def test_conditional_passive_and_triangular(name, x64):
    """For a fixed context: passive coordinates copied, the Jacobian in x block-triangular."""
    b = build(name, (5,), jnp.float64)
    x, c = _inputs((5,), jnp.float64, 3.0, n=3), _contexts(3, dtype=jnp.float64)
    p, a = np.asarray(b.passive_idx, int), np.asarray(b.active_idx)
    for fn in (forward_given, inverse_given):
        np.testing.assert_array_equal(np.asarray(fn(b, x, c)[0])[:, p], np.asarray(x)[:, p])
    jac_x, jac_c = eqx.filter_jit(
        jax.vmap(jax.jacfwd(lambda v, w: b.transform(v, w), argnums=(0, 1)))
    )(x, c)
    for J, Jc in zip(np.asarray(jac_x), np.asarray(jac_c)):
        np.testing.assert_array_equal(J[np.ix_(p, p)], np.eye(len(p)))
        np.testing.assert_array_equal(J[np.ix_(p, a)], 0.0)
        active = J[np.ix_(a, a)]
        np.testing.assert_array_equal(active - np.diag(np.diag(active)), 0.0)
        assert np.all(np.diag(active) > 0)
        np.testing.assert_array_equal(Jc[p], 0.0)  # the context moves active coordinates only
        assert np.abs(Jc[a]).max() > 0


@eqx.filter_jit
def _broadcast_passes(b, x, c):
    z, log_det = b.transform_and_log_det(x, c)
    xr, inv_log_det = b.inverse_and_log_det(z, c)
    batch = log_det.shape
    xs = jnp.broadcast_to(x, (*batch, x.shape[-1])).reshape(-1, x.shape[-1])
    cs = jnp.broadcast_to(c, (*batch, c.shape[-1])).reshape(-1, c.shape[-1])
    return z, xr, log_det, inv_log_det, b.transform_and_log_det(xs, cs)[1]


def test_conditional_batch_shapes():
    """Context and x batch axes broadcast (NumPy rules), as row-by-row evaluation does."""
    b = build("conditional_all_active", (4,))
    for x_batch, c_batch in [((), (6,)), ((2, 1), (3,))]:
        x = jr.normal(jr.key(2), (*x_batch, 4))
        c = jr.normal(jr.key(3), (*c_batch, *CONTEXT_SHAPE))
        batch = jnp.broadcast_shapes(x_batch, c_batch)
        z, xr, log_det, inv_log_det, rows = _broadcast_passes(b, x, c)
        assert z.shape == xr.shape == (*batch, 4)
        assert log_det.shape == inv_log_det.shape == batch
        np.testing.assert_allclose(log_det.reshape(-1), rows, rtol=1e-5, atol=1e-5)


def test_conditional_context_errors():
    b = build("conditional_stack", (4,))
    x = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="reads a context of shape"):
        b.transform(x)
    with pytest.raises(ValueError, match=r"context must have shape \(\*batch, 3\)"):
        b.transform(x, jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="context was given"):
        nc.AffineCoupling(jr.key(0), shape=(4,)).transform(x, jnp.zeros(3))
    with pytest.raises(ValueError, match="at least one coordinate active and one passive"):
        nc.AffineCoupling(jr.key(0), shape=(4,), mask=[True] * 4)  # all active needs a context
    with pytest.raises(ValueError, match="context was given, but Flip reads no context"):
        nc.Flip((4,)).transform(x, jnp.zeros(3))
    other = nc.AffineCoupling(jr.key(0), shape=(4,), context_shape=(2,))
    with pytest.raises(ValueError, match="must read one context shape"):
        nc.Chain([b, other])


def test_conditional_zero_init_ignores_context():
    layer = nc.RQSplineCoupling(jr.key(0), shape=(4,), context_shape=CONTEXT_SHAPE)
    x = jr.normal(jr.key(1), (5, 4))
    z1, ld1 = forward_given(layer, x, _contexts(5, seed=1))
    z2, ld2 = forward_given(layer, x, _contexts(5, seed=2) * 10)
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_array_equal(ld1, ld2)
    unconditional = nc.RQSplineCoupling(jr.key(0), shape=(4,))
    np.testing.assert_array_equal(forward(unconditional, x)[0], z1)
