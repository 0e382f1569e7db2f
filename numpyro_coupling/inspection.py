"""Read a flow's structure: its leaf layers, coupling masks and conditioner kernels.

Pure functions of a flow, returning NumPy arrays; :mod:`numpyro_coupling.plot` draws them.
A flow is walked by duck typing, so any nesting of
:class:`~numpyro_coupling.CouplingFlow`, :class:`~numpyro_coupling.Chain`, NumPyro
``ComposeTransform`` and ``TransformedDistribution`` works; a coupling layer is anything
with a ``.conditioner``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .linear import ActNorm1D, Permute

__all__ = ["final_kernel_magnitudes", "layer_masks", "leaf_bijections"]


def leaf_bijections(flow) -> Iterator:
    """The leaf layers of a flow, in data-to-latent order.

    Containers are opened: a wrapper's ``.bijection`` (``CouplingFlow``), a ``Chain``'s
    ``.bijections``, a NumPyro ``ComposeTransform``'s ``.parts`` and a
    ``TransformedDistribution``'s ``.transforms``. A coupling layer (anything with a
    ``.conditioner``) is a leaf, as is every object that is no container.

    Args:
        flow: a flow, a :class:`~numpyro_coupling.Chain`, a NumPyro transform or a
            single layer.

    Returns:
        An iterator over the leaf layers.

    Example:
        >>> import jax.random as jr
        >>> from numpyro_coupling import coupling_flow
        >>> flow = coupling_flow(jr.key(0), (2,), transformer="affine", n_layers=2)
        >>> [type(layer).__name__ for layer in leaf_bijections(flow)]
        ['Coupling', 'Flip', 'Coupling', 'Flip']
    """
    if hasattr(flow, "conditioner"):
        yield flow
        return
    for container in ("bijection", "bijections", "parts", "transforms"):
        if hasattr(flow, container):
            children = getattr(flow, container)
            # `bijection` holds one layer; the other containers hold sequences
            for child in [children] if container == "bijection" else children:
                yield from leaf_bijections(child)
            return
    yield flow


def final_kernel_magnitudes(flow) -> np.ndarray:
    """``max |W|`` of the final conditioner kernel of each coupling layer, in order.

    Zero means the coupling's conditioner is switched off: the layer is a fixed
    elementwise (diagonal) map, as under the zero-kernel warm start.

    Args:
        flow: a :class:`~numpyro_coupling.CouplingFlow`, a
            :class:`~numpyro_coupling.Chain` or a single coupling layer.

    Returns:
        ``(n_couplings,)`` array.

    Raises:
        ValueError: the flow holds no coupling layer.

    Example:
        >>> import jax.random as jr
        >>> from numpyro_coupling import coupling_flow
        >>> final_kernel_magnitudes(coupling_flow(jr.key(0), (2,), n_layers=3)).tolist()
        [0.0, 0.0, 0.0]
    """
    mags = []
    for layer in leaf_bijections(flow):
        cond = getattr(layer, "conditioner", None)
        if cond is None:
            continue
        # A guide's conditioner wraps its network (``.net``).
        net = getattr(cond, "net", cond)
        kernel = getattr(net, "final_kernel", None)
        if kernel is None:
            kernel = net.weights[-1]
        mags.append(float(np.max(np.abs(np.asarray(kernel)))))
    if not mags:
        raise ValueError(
            f"no coupling layer (an object with a .conditioner) in {type(flow).__name__}"
        )
    return np.asarray(mags)


def layer_masks(flow) -> tuple[np.ndarray, bool]:
    """The active set of every coupling of a flow, one row per coupling.

    Permutations between couplings (``Flip``, ``Permute``) are tracked, so each row is
    indexed by the *data* coordinates. Layers that mix coordinates (rotations, LU) end
    the tracking: rows are then indexed by each coupling's own input coordinates.

    Args:
        flow: a flow, a :class:`~numpyro_coupling.Chain`, or a coupling layer.

    Returns:
        ``(masks, in_data_coordinates)``: a boolean ``(n_couplings, d)`` array (``True``
        = active) and whether the columns are data coordinates.

    Raises:
        ValueError: the flow holds no coupling layer.

    Example:
        >>> import jax.random as jr
        >>> from numpyro_coupling import coupling_flow
        >>> masks, tracked = layer_masks(coupling_flow(jr.key(0), (4,), n_layers=2))
        >>> masks.astype(int).tolist(), tracked
        ([[0, 0, 1, 1], [1, 1, 0, 0]], True)
    """
    rows, origin, tracked = [], None, True
    for layer in leaf_bijections(flow):
        if hasattr(layer, "conditioner"):
            mask = np.asarray(layer.mask).reshape(-1)
            if origin is None:
                origin = np.arange(mask.size)
            row = np.zeros(mask.size, bool)
            if tracked:
                row[origin] = mask  # current coordinate i is data coordinate origin[i]
            else:
                row = mask
            rows.append(row)
        elif isinstance(layer, Permute):
            if origin is None:
                origin = np.arange(len(layer.permutation))
            origin = origin[np.asarray(layer.permutation)]
        elif not isinstance(layer, ActNorm1D):
            tracked = False  # a mixing layer: data coordinates are no longer separable
    if not rows:
        raise ValueError(f"no coupling layer (an object with a .mask) in {type(flow).__name__}")
    return np.stack(rows), tracked
