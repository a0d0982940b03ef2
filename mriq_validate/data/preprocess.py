"""Slice preprocessing of Deo et al. 2025 (GenMed ``src/data_preprocessing/utils.py``).

Per slice: clip to the 1st-99th percentile, min-max scale to [0, 1], centre crop (zero-pad when smaller).
"""

from __future__ import annotations

import numpy as np

PREPROCESSING = {
    "orientation": "RAS, axial slices (axis 2), anterior at the top",
    "intensity": "per-slice clip to [p1, p99], then min-max to [0, 1] (eps 1e-6)",
    "crop": "centre crop, zero-padded where the slice is smaller",
}


def normalise_slice(x: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0, eps: float = 1e-6) -> np.ndarray:
    """Clip ``x`` to its [low_pct, high_pct] percentiles and min-max scale to [0, 1] (float32)."""
    lo, hi = np.percentile(x, [low_pct, high_pct])
    y = np.clip(x, lo, hi)
    return ((y - lo) / (hi - lo + eps)).astype(np.float32)


def centre_crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop the last two axes of ``x`` to ``size``, zero-padding axes that are smaller."""
    out = x
    for axis, target in zip((-2, -1), size):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif n < target:
            before = (target - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, target - n - before)
            out = np.pad(out, pad)
    return out


def axial_to_display(slice_xy: np.ndarray) -> np.ndarray:
    """Turn a RAS axial slice indexed [x, y] into an image indexed [row, col] with anterior at the top."""
    return np.rot90(slice_xy).copy()
