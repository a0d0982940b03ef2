"""Set-level distribution metrics on feature arrays (n × d, float64): FID, FRD, KID, MMD², PRDC, Vendi.

All functions take features already extracted (Inception, a segmenter encoder, radiomic features, ...);
which extractor, resize rule and ``n`` were used must be recorded by the caller, because they change the
numbers. Every function validates its input and raises :class:`~mriq_validate.errors.MetricError` with a
one-line message naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ...errors import MetricError
from .pairwise import BLOCK_BYTES, _block_rows, _blocks, _dists, _psd_factor, _rng, _same_dim, _sq_dists, as_features, capped_rows

__all__ = [
    "KidResult",
    "BLOCK_BYTES",
    "as_features",
    "capped_rows",
    "fid_from_features",
    "frd",
    "frechet_distance",
    "gaussian_stats",
    "kid",
    "median_bandwidth",
    "mmd2",
    "poly_kernel",
    "prdc",
    "standardise",
    "vendi_score",
]


# ----------------------------------------------------------------------------------------------- FID
def gaussian_stats(f: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d × d, ddof=1) of features ``f`` (n × d, n ≥ 2)."""
    a = as_features(f, "f", min_rows=2)
    return a.mean(0), np.atleast_2d(np.cov(a, rowvar=False))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2) (Heusel et al. 2017, FID).

    ``d² = ||mu1 − mu2||² + tr(cov1) + tr(cov2) − 2 tr((cov1 cov2)^½)``. The trace term is computed as
    ``Σ sqrt(λ_i)`` with λ the eigenvalues of the symmetric PSD matrix ``Fᵀ cov2 F`` where ``F Fᵀ = cov1``
    (same spectrum as ``cov1 cov2``): real and stable for singular covariances (n < d), no eps offset needed.
    """
    m1, m2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    c1, c2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = m1.shape[0]
    if m1.ndim != 1 or m2.shape != m1.shape:
        raise MetricError(f"mu1, mu2: expected two vectors of equal length, got shapes {m1.shape} and {m2.shape}")
    if c1.shape != (d, d) or c2.shape != (d, d):
        raise MetricError(f"cov1, cov2: expected {d}×{d} matrices, got {c1.shape} and {c2.shape}")
    for name, x in (("mu1", m1), ("mu2", m2), ("cov1", c1), ("cov2", c2)):
        if not np.all(np.isfinite(x)):
            raise MetricError(f"{name}: contains NaN or inf")
    f = _psd_factor(c1)
    lam = np.linalg.eigvalsh(f.T @ c2 @ f)
    tr_covmean = float(np.sqrt(np.clip(lam, 0.0, None)).sum())
    diff = m1 - m2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_covmean)


def fid_from_features(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets: :func:`frechet_distance` of their :func:`gaussian_stats`.

    When ``d > min(n1, n2)`` it is computed without d × d matrices: with centred features ``A`` (n1 × d), ``B``
    (n2 × d), ``cov1 = AᵀA/(n1−1)`` and ``cov2 = BᵀB/(n2−1)``, so ``tr((cov1 cov2)^½) = ||A Bᵀ||_* /
    sqrt((n1−1)(n2−1))`` (nuclear norm: the non-zero eigenvalues of ``AᵀA BᵀB`` are the squared singular
    values of ``A Bᵀ``) and ``tr(cov1) = ||A||²_F/(n1−1)``. Same value, O(n1 n2 d) instead of O(d³).

    Args:
        f1: features of one set, n1 × d (n1 ≥ 2), array or tensor.
        f2: features of the other set, n2 × d (n2 ≥ 2).

    Returns:
        The Fréchet distance (≥ 0 up to rounding; 0 for identical sets).

    Raises:
        MetricError: a set is not 2-D, has fewer than 2 rows, holds NaN/inf, or the dimensions differ.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> real, shifted = rng.normal(size=(500, 4)), rng.normal(loc=1.0, size=(500, 4))
        >>> abs(fid_from_features(real, real)) < 1e-9
        True
        >>> round(fid_from_features(real, shifted), 2)  # ||Δμ||² = 4 plus sampling noise
        4.24
    """
    a, b = as_features(f1, "f1", 2), as_features(f2, "f2", 2)
    _same_dim(a, b, "f1", "f2")
    n1, n2, d = a.shape[0], b.shape[0], a.shape[1]
    if d <= min(n1, n2):
        return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    mu1, mu2 = a.mean(0), b.mean(0)
    ac, bc = a - mu1, b - mu2
    sv = np.linalg.svd(ac @ bc.T, compute_uv=False)
    tr_covmean = float(sv.sum()) / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + (ac * ac).sum() / (n1 - 1) + (bc * bc).sum() / (n2 - 1) - 2.0 * tr_covmean)


def standardise(f: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(f − mean(reference)) / (std(reference) + 1e-8)`` per column: ``f`` z-scored by a reference set's statistics."""
    a, ref = as_features(f, "f"), as_features(reference, "reference")
    _same_dim(a, ref, "f", "reference")
    return (a - ref.mean(0)) / (ref.std(0) + 1e-8)


def frd(f: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    """Fréchet radiomic distance (FRD-style; Konz et al. 2024): the Fréchet distance of the two sets after z-scoring both
    by the reference's per-feature mean and SD (:func:`standardise`), so features of different units weigh alike.

    Args:
        f: radiomic features of the evaluated set, n × d (e.g. :func:`~.radiomics.radiomic_features`).
        reference: radiomic features of the real reference set, m × d.

    Returns:
        ``fid_from_features(standardise(f, reference), standardise(reference, reference))``.

    Raises:
        MetricError: as :func:`fid_from_features`.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> ref = rng.normal(size=(300, 3)) * [1.0, 100.0, 0.01]  # three features in very different units
        >>> moved = ref + [0.0, 0.0, 0.01]  # the small-unit feature moves by about one of its SDs
        >>> round(fid_from_features(moved, ref), 6), round(frd(moved, ref), 2)  # FID sees 0.01², FRD (0.01 / SD)²
        (0.0001, 1.08)
    """
    return fid_from_features(standardise(f, reference), standardise(reference, reference))


# ----------------------------------------------------------------------------------------------- KID / MMD
def poly_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """Polynomial kernel ``k(x, y) = (gamma · x·y + coef0)^degree`` with ``gamma = 1/d`` by default."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (g * (x @ y.T) + coef0) ** degree


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD² from kernel blocks (diagonals of kxx and kyy excluded)."""
    n, m = kxx.shape[0], kyy.shape[0]
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


#: KID takes the Gram matrices of both sets whole up to this many rows together (4096 rows: 128 MiB of float64).
GRAM_MAX_ROWS = 4096


@dataclass(frozen=True)
class KidResult:
    """KID over random subsets: ``mean`` and ``std`` (ddof=0, as torch-fidelity) of the per-subset MMD².

    ``subset_size`` is the size actually used; ``capped`` is True when the requested size was larger than
    ``min(n1, n2)`` and was reduced to it. Unpacks as ``mean, std = kid(...)``.
    """

    mean: float
    std: float
    subsets: int
    subset_size: int
    requested_subset_size: int
    capped: bool

    def __iter__(self) -> Iterator[float]:
        return iter((self.mean, self.std))

    def as_dict(self) -> dict[str, float | int | bool]:
        """JSON-ready fields."""
        return {"mean": self.mean, "std": self.std, "subsets": self.subsets, "subset_size": self.subset_size,
                "requested_subset_size": self.requested_subset_size, "capped": self.capped}


def kid(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor, subsets: int = 100, subset_size: int = 100,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
        rng: np.random.Generator | int | None = 0) -> KidResult:
    """Kernel Inception Distance (Bińkowski et al. 2018; torch-fidelity's estimator).

    For each of ``subsets`` draws, ``m = subset_size`` rows of each set are sampled without replacement and the
    unbiased MMD² with the polynomial kernel ``k(x, y) = (x·y/d + 1)³`` is computed:
    ``MMD²_u = Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(m(m−1)) − 2 Σ_{i,j} k(x_i, y_j)/m²``.
    Returns the mean and std over subsets. ``subset_size`` is capped at ``min(n1, n2)`` (reported in the result).

    Args:
        f1: features of one set, n1 × d (n1 ≥ 2).
        f2: features of the other set, n2 × d.
        subsets: how many random subset pairs to average over.
        subset_size: rows drawn from each set per subset (capped at ``min(n1, n2)``).
        degree, gamma, coef0: the polynomial kernel ``(gamma x·y + coef0)^degree`` (gamma = 1/d by default).
        rng: a ``numpy`` Generator or a seed for the subset draws.

    Returns:
        A :class:`KidResult` (``mean``, ``std``, the subset size used and whether it was capped).

    Raises:
        MetricError: bad features (as :func:`fid_from_features`) or a non-positive ``subsets``, ``subset_size`` < 2,
            ``degree`` < 1 or ``gamma`` ≤ 0.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(200, 8)), rng.normal(loc=0.5, size=(200, 8))
        >>> same, apart = kid(a, rng.normal(size=(200, 8)), rng=1), kid(a, b, rng=1)
        >>> abs(same.mean) < 0.05, apart.mean > 0.1
        (True, True)
        >>> apart.subset_size, apart.capped
        (100, False)
    """
    a, b = as_features(f1, "f1", 2), as_features(f2, "f2", 2)
    _same_dim(a, b, "f1", "f2")
    if not isinstance(subsets, (int, np.integer)) or subsets < 1:
        raise MetricError(f"subsets: expected an integer ≥ 1, got {subsets!r}")
    if not isinstance(subset_size, (int, np.integer)) or subset_size < 2:
        raise MetricError(f"subset_size: expected an integer ≥ 2, got {subset_size!r}")
    if not isinstance(degree, (int, np.integer)) or degree < 1:
        raise MetricError(f"degree: expected an integer ≥ 1, got {degree!r}")
    if gamma is not None and not gamma > 0:
        raise MetricError(f"gamma: expected a positive number or None (1/d), got {gamma!r}")
    m = int(min(subset_size, a.shape[0], b.shape[0]))
    gen = _rng(rng)
    g = 1.0 / a.shape[1] if gamma is None else gamma
    # Each subset's kernels are entries of the sets' Gram matrices: taken once (three products of the whole sets instead
    # of three per subset, tens of times fewer operations at the default 50 subsets of 100), then indexed. Larger sets
    # than GRAM_MAX_ROWS multiply per subset, so memory stays bounded. Both give the same estimate up to rounding.
    grams = (a @ a.T, b @ b.T, a @ b.T) if a.shape[0] + b.shape[0] <= GRAM_MAX_ROWS else None
    vals = np.empty(subsets)
    for s in range(subsets):
        i, j = gen.choice(a.shape[0], m, replace=False), gen.choice(b.shape[0], m, replace=False)
        x, y = a[i], b[j]
        dots = (grams[0][np.ix_(i, i)], grams[1][np.ix_(j, j)], grams[2][np.ix_(i, j)]) if grams else (x @ x.T, y @ y.T, x @ y.T)
        kxx, kyy, kxy = ((g * d + coef0) ** degree for d in dots)
        vals[s] = _mmd2_unbiased(kxx, kyy, kxy)
    return KidResult(float(vals.mean()), float(vals.std()), int(subsets), m, int(subset_size), m < subset_size)


def _upper_distances(z: np.ndarray, block_rows: int | None = None) -> np.ndarray:
    """The euclidean distances ``||z_i − z_j||``, i < j, in the order of ``np.triu_indices`` (n(n−1)/2 values), computed
    in row blocks (memory: the output plus one block)."""
    n = z.shape[0]
    rows = _block_rows(n, block_rows)
    out, pos, cols = np.empty(n * (n - 1) // 2), 0, np.arange(n)
    for b in _blocks(n, rows):
        upper = _sq_dists(z[b], z)[cols[None, :] > cols[b, None]]  # row-major: the order of triu_indices
        out[pos:pos + upper.size] = np.sqrt(upper)
        pos += upper.size
    return out


def median_bandwidth(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor, block_rows: int | None = None) -> float:
    """Median heuristic: the median of the non-zero pairwise euclidean distances of the pooled sample (computed in row
    blocks of ``block_rows``, default :data:`BLOCK_BYTES`; memory: the n(n−1)/2 distances)."""
    z = np.concatenate([as_features(f1, "f1"), as_features(f2, "f2")])
    d = _upper_distances(z, block_rows)
    d = d[d > 0]
    if d.size == 0:
        raise MetricError("f1, f2: all points are identical, the median-heuristic bandwidth is undefined; pass bandwidth")
    return float(np.median(d))


def _kernel_sum(k: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, rows: int,
                same: bool = False) -> float:
    """``Σ_ij k(x_i, y_j)``, without the diagonal when ``same`` (x is y), ``rows`` rows of x at a time."""
    total = 0.0
    for b in _blocks(x.shape[0], rows):
        kb = k(x[b], y)
        total += kb.sum() - (np.trace(kb, offset=b.start) if same else 0.0)
    return float(total)


def mmd2(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor, kernel: Literal["rbf", "poly"] = "rbf",
         bandwidth: float | None = None, degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
         block_rows: int | None = None) -> float:
    """Unbiased squared maximum mean discrepancy (Gretton et al. 2012), on all rows (no subsets).

    ``MMD²_u = Σ_{i≠j} k(x_i,x_j)/(n(n−1)) + Σ_{i≠j} k(y_i,y_j)/(m(m−1)) − 2 Σ k(x_i,y_j)/(nm)``, with
    ``kernel="rbf"``: ``k = exp(−||x−y||²/(2σ²))``, σ = ``bandwidth`` or the median heuristic
    (:func:`median_bandwidth`); ``kernel="poly"``: ``(gamma x·y + coef0)^degree``, gamma = 1/d by default.
    The estimate is unbiased, so it can be slightly negative when the sets come from one distribution. The kernel sums
    are taken ``block_rows`` rows at a time (default: :data:`BLOCK_BYTES` of a block), never as an n × n matrix; time
    stays quadratic in n, so measures on large sets evaluate it on a capped subset (:func:`capped_rows`).

    Args:
        f1: features of one set, n × d (n ≥ 2).
        f2: features of the other set, m × d (m ≥ 2).
        kernel: ``"rbf"`` or ``"poly"``.
        bandwidth: the RBF's σ; None for the median heuristic.
        degree, gamma, coef0: the polynomial kernel's parameters.
        block_rows: rows per block of the kernel matrices (None: as many as :data:`BLOCK_BYTES` hold).

    Returns:
        The unbiased MMD².

    Raises:
        MetricError: bad features, an unknown kernel, a non-positive bandwidth, or all points identical (no median).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=(200, 2))
        >>> near, far = mmd2(a, rng.normal(size=(200, 2))), mmd2(a, rng.normal(loc=2.0, size=(200, 2)))
        >>> abs(near) < 0.02, far > 0.3
        (True, True)
    """
    a, b = as_features(f1, "f1", 2), as_features(f2, "f2", 2)
    _same_dim(a, b, "f1", "f2")
    if kernel == "rbf":
        sigma = median_bandwidth(a, b, block_rows) if bandwidth is None else float(bandwidth)
        if not sigma > 0:
            raise MetricError(f"bandwidth: expected a positive number or None (median heuristic), got {bandwidth!r}")
        k = lambda x, y: np.exp(-_sq_dists(x, y) / (2.0 * sigma * sigma))  # noqa: E731
    elif kernel == "poly":
        k = lambda x, y: poly_kernel(x, y, degree, gamma, coef0)  # noqa: E731
    else:
        raise MetricError(f"kernel: expected 'rbf' or 'poly', got {kernel!r}")
    n, m = a.shape[0], b.shape[0]
    sxx = _kernel_sum(k, a, a, _block_rows(n, block_rows), same=True) / (n * (n - 1))
    syy = _kernel_sum(k, b, b, _block_rows(m, block_rows), same=True) / (m * (m - 1))
    return float(sxx + syy - 2.0 * (_kernel_sum(k, a, b, _block_rows(m, block_rows)) / (n * m)))


# ----------------------------------------------------------------------------------------------- PRDC
def _kth_radius(x: np.ndarray, k: int, rows: int) -> np.ndarray:
    """Each row's distance to its k-th nearest neighbour in ``x`` (itself excluded), ``rows`` rows at a time."""
    out = np.empty(x.shape[0])
    for b in _blocks(x.shape[0], rows):
        d = _dists(x[b], x)
        d[np.arange(d.shape[0]), np.arange(b.start, b.stop)] = 0.0
        out[b] = np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself (distance 0)
    return out


def prdc(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 5,
         block_rows: int | None = None) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020, reference ``prdc`` package).

    With ``r_k(x)`` the distance from a point to its k-th nearest neighbour in its own set (itself excluded)
    and ``B(x, r)`` the open ball:
    precision = mean_j 1[∃i: Y_j ∈ B(X_i, r_k(X_i))]; recall = mean_i 1[∃j: X_i ∈ B(Y_j, r_k(Y_j))];
    density = (1/(kM)) Σ_j Σ_i 1[Y_j ∈ B(X_i, r_k(X_i))]; coverage = mean_i 1[min_j ||X_i − Y_j|| < r_k(X_i)].

    Args:
        real: features of the real set X, n × d.
        fake: features of the generated set Y, m × d.
        k: the nearest neighbour that sets each ball's radius, 1 ≤ k < min(n, m).
        block_rows: rows per block of the distance matrices (None: as many as :data:`BLOCK_BYTES` hold): memory is
            one block, never n × n; time stays quadratic, so measures on large sets use a capped subset
            (:func:`capped_rows`).

    Returns:
        ``{"precision", "recall", "density", "coverage"}``: three shares in [0, 1] and a density ≥ 0 (1 on average for
        sets from one distribution).

    Raises:
        MetricError: bad features or ``k`` outside ``[1, min(n, m) − 1]``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> real = rng.normal(size=(300, 2))
        >>> collapsed = rng.normal(scale=0.1, size=(300, 2))  # realistic but not diverse
        >>> r = prdc(real, collapsed, k=5)
        >>> r["precision"] > 0.9, r["coverage"] < 0.3
        (True, True)
    """
    x, y = as_features(real, "real", 2), as_features(fake, "fake", 2)
    _same_dim(x, y, "real", "fake")
    if not isinstance(k, (int, np.integer)) or k < 1 or k >= min(x.shape[0], y.shape[0]):
        raise MetricError(f"k: expected an integer in [1, {min(x.shape[0], y.shape[0]) - 1}] (fewer than each set's size), got {k!r}")
    rx = _kth_radius(x, k, _block_rows(x.shape[0], block_rows))
    ry = _kth_radius(y, k, _block_rows(y.shape[0], block_rows))
    inside = np.zeros(y.shape[0], dtype=np.int64)  # per fake item: the real balls it lies in
    recalled, covered = np.empty(x.shape[0], dtype=bool), np.empty(x.shape[0], dtype=bool)
    for b in _blocks(x.shape[0], _block_rows(y.shape[0], block_rows)):
        dxy = _dists(x[b], y)
        inside += (dxy < rx[b, None]).sum(axis=0)
        recalled[b] = (dxy < ry[None, :]).any(axis=1)
        covered[b] = dxy.min(axis=1) < rx[b]
    return {
        "precision": float((inside > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(inside.mean() / k),
        "coverage": float(covered.mean()),
    }


# ----------------------------------------------------------------------------------------------- Vendi
def vendi_score(f: np.ndarray | torch.Tensor, kernel: Literal["cosine", "rbf"] = "cosine",
                bandwidth: float | None = None) -> float:
    """Vendi score (Friedman & Dieng 2023): ``exp(−Σ λ_i log λ_i)``, λ the eigenvalues of ``K/n``.

    ``kernel="cosine"``: ``K_ij = x_i·x_j / (||x_i|| ||x_j||)`` (eigenvalues taken from the d × d Gram matrix
    when d < n, same non-zero spectrum); ``kernel="rbf"``: ``exp(−||x−y||²/(2σ²))`` with σ = ``bandwidth`` or
    the median pairwise distance. Ranges from 1 (all identical) to n (all orthogonal / far apart).

    Args:
        f: features of the set, n × d.
        kernel: ``"cosine"`` or ``"rbf"``.
        bandwidth: the RBF's σ; None for the median pairwise distance.

    Returns:
        The effective number of distinct items, in [1, n].

    Raises:
        MetricError: bad features, an unknown kernel, a zero row (cosine) or a non-positive bandwidth.

    Example:
        >>> import numpy as np
        >>> round(vendi_score(np.eye(4)), 6)  # four orthogonal items
        4.0
        >>> round(vendi_score(np.ones((4, 3))), 6)  # four copies of one item
        1.0
    """
    a = as_features(f, "f", 1)
    n = a.shape[0]
    if kernel == "cosine":
        norms = np.linalg.norm(a, axis=1)
        if np.any(norms == 0):
            raise MetricError(f"f: cosine kernel needs non-zero vectors, row(s) {np.flatnonzero(norms == 0)[:10].tolist()} are zero")
        u = a / norms[:, None]
        gram = (u.T @ u) if u.shape[1] < n else (u @ u.T)
    elif kernel == "rbf":
        if bandwidth is None:
            iu = np.triu_indices(n, 1)
            d = np.sqrt(_sq_dists(a, a)[iu])
            d = d[d > 0]
            sigma = float(np.median(d)) if d.size else 1.0
        else:
            sigma = float(bandwidth)
        if not sigma > 0:
            raise MetricError(f"bandwidth: expected a positive number or None (median heuristic), got {bandwidth!r}")
        gram = np.exp(-_sq_dists(a, a) / (2.0 * sigma * sigma))
    else:
        raise MetricError(f"kernel: expected 'cosine' or 'rbf', got {kernel!r}")
    lam = np.linalg.eigvalsh(gram / n)
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))
