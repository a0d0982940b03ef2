"""Feature arrays for the set measures (:mod:`.distribution`): validation, seeded caps on the set size, row blocks
that bound the memory of pairwise matrices, and pairwise distances."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ...errors import MetricError

__all__ = ["BLOCK_BYTES", "as_features", "capped_rows"]


def as_features(f: np.ndarray | torch.Tensor, name: str = "features", min_rows: int = 1) -> np.ndarray:
    """``f`` as a finite 2-D float64 array with at least ``min_rows`` rows; MetricError otherwise.

    >>> as_features(torch.ones(2, 3)).dtype, as_features([[0.0, 1.0]]).shape
    (dtype('float64'), (1, 2))
    """
    if isinstance(f, torch.Tensor):
        f = f.detach().cpu().numpy()
    a = np.asarray(f, dtype=np.float64)
    if a.ndim != 2:
        raise MetricError(f"{name}: expected a 2-D n×d feature array, got shape {a.shape}")
    if a.shape[0] < min_rows or a.shape[1] < 1:
        raise MetricError(f"{name}: expected at least {min_rows} rows and 1 column, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise MetricError(f"{name}: contains NaN or inf in row(s) {np.flatnonzero(~np.isfinite(a).all(1))[:10].tolist()}")
    return a


def _same_dim(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"{na} and {nb}: feature dimensions differ ({a.shape[1]} vs {b.shape[1]})")


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


#: Bytes of one block of a pairwise (rows × n float64) matrix: pairwise distances and kernels are computed this many bytes
#: of rows at a time, never as a whole n × n matrix (sets of up to 4096 items, the embedded data's included, are one block).
BLOCK_BYTES = 32 << 20


def _block_rows(n: int, block_rows: int | None) -> int:
    """Rows per block against ``n`` columns: ``block_rows`` or as many as :data:`BLOCK_BYTES` hold (at least 1)."""
    if block_rows is None:
        return max(1, BLOCK_BYTES // (8 * max(n, 1)))
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise MetricError(f"block_rows: expected an integer ≥ 1 or None, got {block_rows!r}")
    return int(block_rows)


def _blocks(n: int, rows: int) -> Iterator[slice]:
    return (slice(s, min(s + rows, n)) for s in range(0, n, rows))


def capped_rows(n: int, max_items: int, rng: np.random.Generator | int | None) -> np.ndarray | None:
    """A seeded random subset of at most ``max_items`` of ``range(n)`` (sorted indices), or None when ``n ≤ max_items``
    (every item is used): how a measure whose cost is quadratic in the set size bounds it."""
    if n <= max_items:
        return None
    return np.sort(_rng(rng).choice(n, max_items, replace=False))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared euclidean distances, clipped at 0 (expansion form, float64)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise euclidean distances (float64, matrix-product form: fast; absolute error ≈ 1e-8·||x|| near 0)."""
    return np.sqrt(_sq_dists(a, b))


def _psd_factor(c: np.ndarray) -> np.ndarray:
    """``F`` with ``F Fᵀ = c`` for a symmetric PSD ``c``: Cholesky, or eigen-decomposition (negative
    eigenvalues clipped) when ``c`` is singular."""
    c = (c + c.T) / 2
    try:
        return np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(c)
        return v * np.sqrt(np.clip(w, 0.0, None))
