"""Persistence: every bijection, flow and state round-trips bit for bit."""

import json
import zipfile

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import numpyro_coupling as nc
from numpyro_coupling import train
from numpyro_coupling.io import FORMAT_VERSION, IncompatibleFormatError, load, metadata, save

from registry import REGISTRY, build, randomize

TRANSFORMERS = ("affine", "additive", "spline", "mixture")


def assert_bitwise_equal(a, b):
    """Same pytree structure (static config included), same leaf dtypes, same bits."""
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert type(x) is type(y)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if isinstance(x, jax.Array | np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert getattr(x, "weak_type", False) == getattr(y, "weak_type", False)
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
        else:
            assert x == y


# Equal arrays and an equal tree structure (static configuration included) already fix the
# behaviour; one jitted forward pass per entry confirms it (the loaded object hits the same
# compiled function, so the check costs a single compilation).
@jax.jit
def _forward(bijection, x):
    return bijection.transform_and_log_det(x)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_bijection_round_trips(name, dtype, tmp_path):
    bijection = build(name, (4,), dtype)
    loaded = load(save(tmp_path / f"{name}.ncf", bijection))
    assert type(loaded) is type(bijection)
    assert repr(loaded) == repr(bijection)
    assert_bitwise_equal(loaded, bijection)
    x = (2.0 * jr.normal(jr.key(1), (7, 4))).astype(dtype)
    for got, want in zip(_forward(loaded, x), _forward(bijection, x)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)


@jax.jit
def _flow_outputs(flow, x):
    return flow.log_prob(x), flow.to_latent(x)


@pytest.mark.parametrize("transformer", TRANSFORMERS)
def test_coupling_flow_round_trips(transformer, dtype, tmp_path):
    flow = nc.coupling_flow(
        jr.key(0),
        (3,),
        transformer=transformer,
        n_layers=3,
        nn_width=8,
        permutation="lu",
        dtype=dtype,
    )
    # Leave the zero-kernel start so every parameter matters.
    flow = nc.CouplingFlow(randomize(flow.bijection, jr.key(1), scale=0.1))
    loaded = load(save(tmp_path / "flow.ncf", flow), expected_type=nc.CouplingFlow)
    assert type(loaded) is nc.CouplingFlow
    assert loaded.event_shape == flow.event_shape
    assert_bitwise_equal(loaded, flow)
    x = jr.normal(jr.key(2), (5, 3), dtype)
    for got, want in zip(_flow_outputs(loaded, x), _flow_outputs(flow, x)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)


def test_states_and_mixed_pytrees_round_trip(tmp_path):
    flow = nc.coupling_flow(jr.key(0), (2,), transformer="spline", n_layers=1, nn_width=4)
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.zeros(3)}
    optimiser = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = optimiser.init(params)
    state = {
        "params": {"loc": jnp.arange(3.0), "scale": jnp.ones((2, 2), jnp.bfloat16)},
        "opt_state": opt_state,
        "flow": flow,
        "key": jr.key(7),
        "raw_key": jr.PRNGKey(7),
        "step": 100,
        "host": np.arange(4, dtype=np.int16),
        "weak": jnp.asarray(0.5),
        "history": [1.5, 2.5],
        "nothing": None,
    }
    loaded = load(save(tmp_path / "state.ncf", state))
    assert_bitwise_equal(loaded, state)
    assert isinstance(loaded["host"], np.ndarray) and isinstance(loaded["params"]["loc"], jax.Array)
    assert loaded["weak"].weak_type
    # The optimiser keeps working on the restored state.
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    update = jax.jit(optimiser.update)
    got, want = update(grads, loaded["opt_state"], params), update(grads, opt_state, params)
    assert_bitwise_equal(got, want)


def test_same_object_same_bytes(tmp_path):
    flow = nc.coupling_flow(jr.key(0), (4,), transformer="mixture", n_layers=2, nn_width=8)
    a, b = save(tmp_path / "a.ncf", flow), save(tmp_path / "b.ncf", flow)
    assert a.read_bytes() == b.read_bytes()


def test_metadata_records_versions_and_dtypes(tmp_path, x64):
    flow = nc.coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=1, dtype=jnp.float64)
    meta = metadata(save(tmp_path / "f.ncf", flow))
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["versions"]["numpyro_coupling"] == nc.__version__
    assert meta["object_type"] == "numpyro_coupling.flows.CouplingFlow"
    assert {r["dtype"] for r in meta["arrays"]} == {"float64"}


def test_float64_file_needs_x64(tmp_path):
    with jax.enable_x64(True):
        path = save(tmp_path / "f64.ncf", build("affine", (4,), jnp.float64))
    with pytest.raises(ValueError, match="jax_enable_x64"):
        load(path)


def _rewrite(path, name, data):
    with zipfile.ZipFile(path) as src:
        members = {n: src.read(n) for n in src.namelist()}
    members[name] = data
    with zipfile.ZipFile(path, "w") as dst:
        for n, d in members.items():
            dst.writestr(n, d)


def test_newer_format_version_is_refused(tmp_path):
    path = save(tmp_path / "new.ncf", build("spline"))
    meta = json.loads(zipfile.ZipFile(path).read("meta.json"))
    meta["format_version"] = FORMAT_VERSION + 1
    _rewrite(path, "meta.json", json.dumps(meta))
    with pytest.raises(IncompatibleFormatError, match=r"format version 2.*upgrade"):
        load(path)


def test_foreign_files_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a flow")
    with pytest.raises(IncompatibleFormatError, match="not a numpyro_coupling file"):
        load(text)
    npz = tmp_path / "weights.npz"
    np.savez(npz, w=np.ones(3))
    with pytest.raises(
        IncompatibleFormatError, match=r"not a numpyro_coupling file \(missing .*meta\.json"
    ):
        load(npz)
    other = save(tmp_path / "other.ncf", build("flip"))
    _rewrite(other, "meta.json", json.dumps({"format": "something_else", "format_version": 1}))
    with pytest.raises(IncompatibleFormatError, match="not a numpyro_coupling file"):
        load(other)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.ncf")


def test_damaged_files_are_refused_by_name(tmp_path):
    path = save(tmp_path / "params.ncf", {"w": jnp.arange(3.0), "n": 2})
    data = path.read_bytes()
    damaged = tmp_path / "damaged.ncf"
    # Every single flipped byte: the file loads unchanged (a flip in a timestamp or other
    # unused header field) or is refused as a damaged archive, never a raw zip/zlib error.
    refused = 0
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        damaged.write_bytes(bytes(flipped))
        for read in (metadata, load):
            try:
                read(damaged)
            except IncompatibleFormatError as err:
                assert str(damaged) in str(err)
                refused += 1
    assert refused > len(data)
    damaged.write_bytes(data[: len(data) // 2])  # a truncated copy
    with pytest.raises(IncompatibleFormatError, match=r"damaged\.ncf.*truncated"):
        load(damaged)
    # One flipped bit in the (uncompressed) array bytes is caught by the member's CRC.
    flipped = bytearray(data)
    flipped[data.index(np.asarray(jnp.arange(3.0)).tobytes()) + 5] ^= 0x01
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(IncompatibleFormatError, match="not a valid, complete"):
        load(damaged)


def test_directories_are_refused_by_name(tmp_path):
    folder = tmp_path / "flows"
    folder.mkdir()
    for read in (load, metadata):
        with pytest.raises(IsADirectoryError, match=r"'.*flows' is a directory"):
            read(folder)
    with pytest.raises(IsADirectoryError, match=r"'.*flows' is a directory.*flow\.ncf"):
        save(folder, build("flip"))
    assert list(folder.iterdir()) == []  # no temporary file left behind


def test_expected_type_and_traced_save(tmp_path):
    path = save(tmp_path / "b.ncf", build("affine"))
    with pytest.raises(TypeError, match="expected CouplingFlow"):
        load(path, expected_type=nc.CouplingFlow)
    with pytest.raises(TypeError, match="traced"):
        jax.jit(lambda x: save(tmp_path / "t.ncf", x))(jnp.ones(2))


def test_resumed_fit_equals_uninterrupted_fit(tmp_path):
    x = jr.normal(jr.key(0), (256, 2))
    flow = nc.coupling_flow(jr.key(2), (2,), transformer="affine", n_layers=2, nn_width=8)
    kwargs = dict(key=jr.key(1), steps=200, batch_size=64, chunk_size=50, progress_bar=False)

    full_flow, full_losses, full_state = train.fit(flow, x, return_state=True, **kwargs)
    _, _, half_state = train.fit(flow, x, stop_at=100, return_state=True, **kwargs)
    restored = load(save(tmp_path / "state.ncf", half_state), expected_type=train.FitState)
    assert_bitwise_equal(restored, half_state)
    flow_b, losses_b, state_b = train.fit(flow, x, resume=restored, return_state=True, **kwargs)
    np.testing.assert_array_equal(losses_b, full_losses)
    assert_bitwise_equal(state_b, full_state)
    assert_bitwise_equal(flow_b, full_flow)
