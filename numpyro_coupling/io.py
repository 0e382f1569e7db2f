"""Save and load flows, bijections, guide parameters and optimiser / fit states.

Anything that is a JAX pytree of arrays and this package's objects can be stored: a
:class:`~numpyro_coupling.CouplingFlow`, any :class:`~numpyro_coupling.Bijection` or
:class:`~numpyro_coupling.Chain`, a NumPyro ``TransformedDistribution`` of them, an SVI
``params`` dict, an optax state, a fit state, or a tuple/dict mixing these.

A file is one zip archive holding

* ``meta.json`` -- format name and version, package / JAX / NumPyro versions, the stored
  object's type, and the dtype and shape of every array;
* ``skeleton.pkl`` -- the object with each array replaced by a numbered placeholder, so
  the whole configuration (event shape, masks, transformer settings, layer order, ...) is
  rebuilt without calling any constructor;
* ``arrays.npz`` -- the arrays, bit for bit (readable on its own with ``numpy.load``).

Loading gives back an object of the same type whose arrays are bitwise equal to the
saved ones, with the same dtypes, so it behaves identically. Saving the same object
twice writes identical bytes.

The skeleton is a pickle: load only files you trust.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FORMAT_VERSION", "IncompatibleFormatError", "load", "metadata", "save"]

#: Version of the on-disk layout; bumped whenever a file written now could not be read
#: correctly by an older reader.
FORMAT_VERSION = 1
#: Format versions this reader understands.
SUPPORTED_FORMAT_VERSIONS = (1,)
FORMAT_NAME = "numpyro_coupling"

_META, _SKELETON, _ARRAYS = "meta.json", "skeleton.pkl", "arrays.npz"
_PICKLE_PROTOCOL = 4
# A fixed timestamp for every archive member, so equal objects give equal files.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# What reading a damaged or truncated archive raises (bad headers, CRC mismatch, broken
# deflate stream, seeks past the end, garbage in the compression-method field).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError)


class IncompatibleFormatError(ValueError):
    """The file was not written by :func:`save`, or by a format version this reader lacks."""


class _ArrayRef:
    """Placeholder that stands for the ``index``-th stored array inside the skeleton."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __getstate__(self):
        return self.index

    def __setstate__(self, index):
        self.index = index

    def __repr__(self):
        return f"_ArrayRef({self.index})"


def _is_array(leaf) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray)


def _encode(leaf, index):
    """Host copy of one array leaf, and the record that lets :func:`_decode` rebuild it."""
    if isinstance(leaf, jax.core.Tracer):
        raise TypeError("cannot save a traced value: call save() outside jit/grad/vmap")
    record = {"index": index}
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        record.update(kind="key", impl=str(jax.random.key_impl(leaf)))
        host = np.asarray(jax.random.key_data(leaf))
    else:
        record["kind"] = "jax" if isinstance(leaf, jax.Array) else "numpy"
        record["weak_type"] = bool(getattr(leaf, "weak_type", False))
        host = np.asarray(leaf)
    record["dtype"] = str(host.dtype)
    record["shape"] = list(host.shape)  # a key's shape plus its key-data dims
    if not _numpy_native(host.dtype):
        # bfloat16, float8, ...: keep the raw bytes; the dtype name restores them.
        host = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        record["raw_bytes"] = True
    return record, np.ascontiguousarray(host)


def _numpy_native(dtype) -> bool:
    return dtype.kind in "biufc" and type(dtype).__module__.startswith("numpy")


def _decode(record, stored):
    dtype = np.dtype(jnp.dtype(record["dtype"]))
    host = stored
    if record.get("raw_bytes"):
        host = np.frombuffer(stored.tobytes(), dtype=dtype)
    host = host.reshape(record["shape"])
    if host.dtype != dtype:
        raise IncompatibleFormatError(
            f"array {record['index']} is stored as {host.dtype}, its record says {dtype}"
        )
    if record["kind"] == "numpy":
        return host
    if jax.dtypes.canonicalize_dtype(dtype) != dtype:
        raise ValueError(
            f"the file holds {dtype} arrays, which JAX would silently downcast: run "
            "jax.config.update('jax_enable_x64', True) before loading it"
        )
    if record["kind"] == "key":
        return jax.random.wrap_key_data(jnp.asarray(host), impl=record["impl"])
    array = jnp.asarray(host)
    if record.get("weak_type"):
        array = _as_weak(array)
    return array


def _as_weak(array):
    # Weak types steer dtype promotion, so they are part of "the same behaviour".
    try:
        from jax._src.lax.lax import _convert_element_type
    except ImportError:  # pragma: no cover - private helper moved: keep the strong type
        return array
    return _convert_element_type(array, array.dtype, weak_type=True)


def _type_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _versions() -> dict:
    import numpyro

    from ._version import __version__

    return {"numpyro_coupling": __version__, "jax": jax.__version__, "numpyro": numpyro.__version__}


def _zip_write(archive: zipfile.ZipFile, name: str, data: bytes, compress: bool = True):
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _npz_bytes(arrays) -> bytes:
    # Same layout as numpy.savez, but with fixed timestamps (numpy stamps the current time).
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as npz:
        for i, array in enumerate(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            _zip_write(npz, f"arr_{i}.npy", member.getvalue(), compress=False)
    return buffer.getvalue()


def save(path, obj) -> Path:
    """Write ``obj`` (a flow, bijection, params dict, optimiser or fit state) to ``path``.

    Args:
        path: destination file; written atomically (a partial file never replaces an old one).
        obj: any JAX pytree whose leaves are arrays or picklable values, including this
            package's bijections and flows and NumPyro distributions built from them.

    Returns:
        The path written.

    Raises:
        IsADirectoryError: ``path`` is an existing directory (name a file inside it).
        TypeError: ``obj`` holds traced values (``save`` was called under a JAX transform).

    Example:
        >>> import os, tempfile, jax.numpy as jnp, jax.random as jr
        >>> from numpyro_coupling import coupling_flow
        >>> from numpyro_coupling.io import load, save
        >>> flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2)
        >>> path = save(os.path.join(tempfile.mkdtemp(), "flow.ncf"), flow)
        >>> bool((load(path).log_prob(jnp.ones(2)) == flow.log_prob(jnp.ones(2))).all())
        True
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"path {str(path)!r} is a directory: save needs a file name, "
            f"e.g. {str(path / 'flow.ncf')!r}"
        )
    leaves, treedef = jax.tree_util.tree_flatten(obj)
    records, arrays, skeleton_leaves = [], [], []
    for leaf in leaves:
        if _is_array(leaf):
            record, host = _encode(leaf, len(arrays))
            records.append(record)
            arrays.append(host)
            skeleton_leaves.append(_ArrayRef(record["index"]))
        else:
            skeleton_leaves.append(leaf)
    skeleton = jax.tree_util.tree_unflatten(treedef, skeleton_leaves)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "object_type": _type_name(obj),
        "arrays": records,
    }
    payload = {
        _META: json.dumps(meta, indent=1, sort_keys=True).encode(),
        _SKELETON: pickle.dumps(skeleton, protocol=_PICKLE_PROTOCOL),
        _ARRAYS: _npz_bytes(arrays),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w") as archive:
            for name, data in payload.items():
                _zip_write(archive, name, data, compress=name != _ARRAYS)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _read(path, names) -> dict:
    """The bytes of the archive members ``names`` of the file at ``path``, checked.

    Every member is read in full, so a damaged file (a flipped byte, a truncated copy)
    fails here, on its CRC or its zip structure, with an :class:`IncompatibleFormatError`.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a directory, not a {FORMAT_NAME} file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if not zipfile.is_zipfile(path):
        raise IncompatibleFormatError(
            f"{path} is not a {FORMAT_NAME} file (not a zip archive, or a truncated one)"
        )
    # Opened first, so that the errors caught below can only come from the bytes in it.
    with open(path, "rb") as f:
        try:
            with zipfile.ZipFile(f) as archive:
                missing = {_META, _SKELETON, _ARRAYS} - set(archive.namelist())
                if missing:
                    raise IncompatibleFormatError(
                        f"{path} is not a {FORMAT_NAME} file (missing {', '.join(sorted(missing))})"
                    )
                return {name: archive.read(name) for name in names}
        except _DAMAGED as err:
            raise IncompatibleFormatError(
                f"{path} is not a valid, complete {FORMAT_NAME} archive (damaged or "
                f"truncated: {type(err).__name__}: {err})"
            ) from err


def _check_meta(path, meta) -> dict:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise IncompatibleFormatError(f"{path} is not a {FORMAT_NAME} file")
    version = meta.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "; upgrade numpyro_coupling to read it" if newer else ""
        raise IncompatibleFormatError(
            f"{path} has format version {version!r}, this reader supports "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}{hint}"
        )
    return meta


def metadata(path) -> dict:
    """The ``meta.json`` of a saved file (format and package versions, array dtypes).

    Reads no pickle, so it is safe on untrusted files.

    Args:
        path: the file.

    Returns:
        The metadata dict (``format``, ``format_version``, ``versions``, ``object_type``,
        ``arrays``).

    Raises:
        IncompatibleFormatError: not a file written by :func:`save`, a damaged or
            truncated one, or an unknown format version.
        FileNotFoundError: no file at ``path``.
        IsADirectoryError: ``path`` is a directory.

    Example:
        >>> import os, tempfile, jax.numpy as jnp
        >>> from numpyro_coupling.io import metadata, save
        >>> path = save(os.path.join(tempfile.mkdtemp(), "params.ncf"), {"w": jnp.ones(3)})
        >>> metadata(path)["arrays"][0]["shape"]
        [3]
    """
    raw = _read(path, [_META])[_META]
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IncompatibleFormatError(f"{path} has an unreadable {_META}") from err
    return _check_meta(path, meta)


def load(path, expected_type: type | None = None):
    """Read an object written by :func:`save`.

    Args:
        path: the file.
        expected_type: if given, raise ``TypeError`` unless the loaded object is an
            instance of it (e.g. ``CouplingFlow``).

    Returns:
        The object, with arrays bitwise equal to (and of the same dtypes as) those saved.

    Raises:
        IncompatibleFormatError: the file was not written by :func:`save`, is damaged or
            truncated, or has a format version this reader does not support.
        FileNotFoundError: no file at ``path``.
        IsADirectoryError: ``path`` is a directory.
        ValueError: the file holds 64-bit arrays and ``jax_enable_x64`` is off.
        TypeError: the object is not an ``expected_type``.
    """
    meta = metadata(path)
    raw = _read(path, [_SKELETON, _ARRAYS])
    try:
        skeleton = pickle.loads(raw[_SKELETON])
    except Exception as err:
        raise IncompatibleFormatError(
            f"cannot rebuild the object stored in {path} (written by {meta['versions']}): {err}"
        ) from err
    try:
        with np.load(io.BytesIO(raw[_ARRAYS]), allow_pickle=False) as npz:
            stored = [npz[f"arr_{r['index']}"] for r in meta["arrays"]]
    except (*_DAMAGED, ValueError, KeyError) as err:
        raise IncompatibleFormatError(f"{path} holds unreadable arrays ({err})") from err
    arrays = [_decode(r, s) for r, s in zip(meta["arrays"], stored)]
    leaves, treedef = jax.tree_util.tree_flatten(skeleton)
    refs = [leaf.index for leaf in leaves if isinstance(leaf, _ArrayRef)]
    if sorted(refs) != list(range(len(arrays))):
        raise IncompatibleFormatError(f"{path}: skeleton and arrays do not match")
    leaves = [arrays[leaf.index] if isinstance(leaf, _ArrayRef) else leaf for leaf in leaves]
    obj = jax.tree_util.tree_unflatten(treedef, leaves)
    if expected_type is not None and not isinstance(obj, expected_type):
        raise TypeError(
            f"{path} holds a {meta['object_type']}, expected {expected_type.__qualname__}"
        )
    return obj
