"""An in-memory cache of the reference side of :mod:`.copy_search` (the bound rows of a block of training images).

A run searches the same training set once for the held-out images and once for each evaluated set, so the references'
windows are computed once and kept, keyed by their content: a fingerprint of the block finds the entry and the block
itself, compared value for value, confirms it (a changed image is never served stale rows). Least recently used
entries go first once the entries exceed :data:`CACHE_BYTES`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

from .copy_search_side import Family, ReferenceSide, reference_side

CACHE_BYTES = 512 << 20  # the cache's memory: ~58 MB per 512 training slices at the defaults, so ~4500 slices
_ENTRIES: OrderedDict[tuple[Hashable, ...], ReferenceSide] = OrderedDict()
_LOCK = threading.Lock()


def _fingerprint(images: np.ndarray) -> bytes:
    """A digest of the shape and of every 61st value of ``images`` (C-contiguous): it finds an entry, which the block
    itself, compared value for value, then confirms.

    >>> a = np.arange(12.0).reshape(3, 4)
    >>> _fingerprint(a) == _fingerprint(a.copy()), _fingerprint(a) == _fingerprint(a.reshape(4, 3))
    (True, False)
    """
    flat = images.reshape(-1)
    return hashlib.blake2b(np.ascontiguousarray(flat[::61]).tobytes() + repr(images.shape).encode(), digest_size=16).digest()


def reference_side_cached(images: np.ndarray, fam: Family, nd: int, groups: list[np.ndarray],
                          params: tuple[int, ...]) -> ReferenceSide:
    """:func:`.copy_search_side.reference_side` of ``images`` (m × (2s)^d, float64, C-contiguous), from the cache when
    the same block was searched before with the same ``params`` (what ``fam`` and ``groups`` were made from), else
    computed and kept."""
    key = (nd, *params, images.dtype.str, _fingerprint(images))
    with _LOCK:
        hit = _ENTRIES.get(key)
        if hit is not None and hit.views[0].shape == images.shape and np.array_equal(hit.views[0], images):
            _ENTRIES.move_to_end(key)
            return hit
    side = reference_side(images.copy(), fam, nd, groups)
    with _LOCK:
        _ENTRIES[key] = side
        _ENTRIES.move_to_end(key)
        total = sum(e.nbytes for e in _ENTRIES.values())
        while total > CACHE_BYTES and len(_ENTRIES) > 1:
            total -= _ENTRIES.popitem(last=False)[1].nbytes
        if total > CACHE_BYTES:
            _ENTRIES.clear()
    return side


def clear() -> None:
    """Forget every cached reference block."""
    with _LOCK:
        _ENTRIES.clear()
