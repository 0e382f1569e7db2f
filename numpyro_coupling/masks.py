"""Coupling masks: which event coordinates are passive (context) and which are active.

A mask is a boolean array of the event shape, ``True`` where the coordinate is *active*
(transformed). Couplings store it as two static tuples of flat indices.
"""

from __future__ import annotations

import numpy as np

__all__ = ["alternating_mask", "as_mask", "checkerboard_mask", "half_mask"]


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


def as_mask(shape, mask=None, flip: bool = False) -> np.ndarray:
    """Validate a user mask (or build the default) for an event ``shape``.

    Raises:
        ValueError: the event cannot be split, or the mask has the wrong shape, or leaves
            no coordinate active or none passive.
    """
    shape = tuple(int(s) for s in shape)
    size = int(np.prod(shape))
    if size < 2:
        raise ValueError(
            f"a coupling needs at least 2 event coordinates to split, got shape {shape}; "
            "use an elementwise transform for 1-D events"
        )
    if mask is None:
        mask = half_mask(shape)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask has shape {mask.shape}, expected the event shape {shape}")
    mask = mask.astype(bool)
    if flip:
        mask = ~mask
    if mask.all() or not mask.any():
        raise ValueError("mask must leave at least one coordinate active and one passive")
    return mask
