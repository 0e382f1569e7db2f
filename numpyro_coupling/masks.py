"""Coupling masks: which event coordinates are passive (context) and which are active.

A mask is a boolean array of the event shape, ``True`` where the coordinate is *active*
(transformed). Couplings store it as two static tuples of flat indices.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = [
    "alternating_mask",
    "as_mask",
    "bit_masks",
    "checkerboard_mask",
    "half_mask",
    "index_bit_masks",
]


def half_mask(shape, flip: bool = False) -> np.ndarray:
    """First ``size // 2`` coordinates passive, the rest active (``flip`` swaps the halves).

    Args:
        shape: event shape; the split is over the flattened event.
        flip: make the first half active instead.

    Returns:
        Boolean array of ``shape``.

    Example:
        >>> half_mask((4,)).tolist()
        [False, False, True, True]
    """
    size = int(np.prod(shape))
    mask = np.arange(size) >= size // 2
    return (~mask if flip else mask).reshape(shape)


def alternating_mask(shape, parity: int = 0) -> np.ndarray:
    """Every other flattened coordinate active, starting at index ``1 - parity``.

    Example:
        >>> alternating_mask((4,)).tolist()
        [False, True, False, True]
    """
    idx = np.arange(int(np.prod(shape)))
    return ((idx + parity) % 2 == 1).reshape(shape)


def checkerboard_mask(height: int, width: int, channels: int | None = None, parity: int = 0):
    """RealNVP checkerboard for image events: active where ``(i + j + parity)`` is odd.

    Args:
        height: image height.
        width: image width.
        channels: if given, the mask is broadcast to ``(height, width, channels)``.
        parity: 0 or 1; the two parities are complementary.

    Returns:
        Boolean array ``(height, width)`` or ``(height, width, channels)``.

    Example:
        >>> checkerboard_mask(2, 2).astype(int).tolist()
        [[0, 1], [1, 0]]
    """
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    mask = (i + j + parity) % 2 == 1
    if channels is not None:
        mask = np.broadcast_to(mask[..., None], (height, width, channels)).copy()
    return mask


def as_mask(shape, mask=None, flip: bool = False, *, context: bool = False) -> np.ndarray:
    """Validate a user mask (or build the default) for an event ``shape``.

    Args:
        shape: the event shape.
        mask: boolean array of ``shape``, ``True`` = active (default: first half passive).
        flip: swap passive and active.
        context: the coupling also reads a context, so it may leave no coordinate passive
            (a one-coordinate event is then all active by default).

    Raises:
        ValueError: the event cannot be split, or the mask has the wrong shape, or leaves
            no coordinate active or (without a context) none passive.
    """
    shape = tuple(int(s) for s in shape)
    size = int(np.prod(shape))
    if size < 2 and not (context and size == 1):
        raise ValueError(
            f"a coupling needs at least 2 event coordinates to split, got shape {shape}; "
            "use an elementwise transform for 1-D events"
        )
    if mask is None:
        mask = np.ones(shape, bool) if size == 1 else half_mask(shape)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask has shape {mask.shape}, expected the event shape {shape}")
    mask = mask.astype(bool)
    if flip:
        mask = ~mask
    if not mask.any() or (mask.all() and not context):
        raise ValueError("mask must leave at least one coordinate active and one passive")
    return mask


def bit_masks(dim: int, n_layers: int) -> np.ndarray:
    """Coupling masks that condition every coordinate on every other one.

    Layer ``2b`` makes active the coordinates whose index has bit ``b`` set, layer
    ``2b + 1`` the complement, cycling over the ``ceil(log2 dim)`` bits. Two indices
    differ in some bit, so with ``2 * ceil(log2 dim)`` layers every ordered pair
    ``(i, j)`` meets once with ``i`` passive and ``j`` active: a hierarchical posterior
    (a scale variable and the coordinates it scales) is reachable in one coupling
    whichever coordinates play which role. Random masks miss a given pair in a given
    layer with probability 3/4.

    With fewer layers, ``p = n_layers // 2`` pairs, the first ``2^p`` coordinates keep
    those codes and the others take the remaining codes active in exactly ``p`` of the
    ``2p`` paired layers (in complementary pairs, so every layer stays half active). No
    code of that weight contains another, so every ordered pair still meets while
    ``dim <= C(2p, p)``: 70 coordinates for eight layers, 252 for ten, 924 for twelve,
    3432 for fourteen, the most any ``2p`` masks can reach (Sperner's theorem). Beyond
    that the codes repeat, and coordinates sharing one never meet.

    Args:
        dim: number of coordinates (``>= 2``).
        n_layers: number of masks.

    Returns:
        ``(n_layers, dim)`` boolean array, ``True`` = active.

    Example:
        >>> bit_masks(4, 4).astype(int).tolist()
        [[0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]]
        >>> bit_masks(5, 4).astype(int).T.tolist()  # the fifth coordinate: a new code
        [[0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0]]
    """
    masks = index_bit_masks(dim, n_layers)
    n_pairs = n_layers // 2
    if 0 < n_pairs < _n_index_bits(dim):
        masks[: 2 * n_pairs] = _balanced_codes(dim, n_pairs).T
    return masks


def _n_index_bits(dim: int) -> int:
    return max(int(np.ceil(np.log2(dim))), 1)


def index_bit_masks(dim: int, n_layers: int) -> np.ndarray:
    """The index-bit masks alone: layer ``2b`` active where bit ``b`` of the index is set,
    layer ``2b + 1`` the complement, cycling over the bits (see :func:`bit_masks`).

    Args:
        dim: number of coordinates.
        n_layers: number of masks.

    Returns:
        ``(n_layers, dim)`` boolean array, ``True`` = active.

    Example:
        >>> index_bit_masks(4, 2).astype(int).tolist()
        [[0, 1, 0, 1], [1, 0, 1, 0]]
    """
    n_bits = _n_index_bits(dim)
    idx = np.arange(dim)
    masks = []
    for k in range(n_layers):
        active = (idx >> ((k // 2) % n_bits)) & 1 == 1
        masks.append(~active if k % 2 else active)
    return np.stack(masks)


def _balanced_codes(dim: int, n_pairs: int) -> np.ndarray:
    """``(dim, 2 * n_pairs)`` codes of weight ``n_pairs``: index bits first, then the rest."""
    n_layers = 2 * n_pairs
    bits = (np.arange(2**n_pairs)[:, None] >> np.arange(n_pairs)) & 1 == 1
    codes = [tuple(c) for c in np.stack([bits, ~bits], axis=-1).reshape(-1, n_layers)]
    used = set(codes)
    for active in itertools.combinations(range(n_layers), n_pairs):
        if len(codes) >= dim:
            break
        code = tuple(k in active for k in range(n_layers))
        if code in used:
            continue
        complement = tuple(not c for c in code)
        codes += [code, complement]
        used.update((code, complement))
    codes = np.array(codes, dtype=bool)
    return codes[np.arange(dim) % len(codes)]
