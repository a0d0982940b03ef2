"""Memorisation (training-copy) detection: nearest-neighbour distances calibrated on held-out real images.

Rule (conformal nearest-neighbour test)
---------------------------------------
Let ``d(x) = min_j ||e(x) − e(t_j)||`` be the distance from an image's embedding to its nearest training
image. The null distribution is the same distance for *held-out real* images (never trained on):
``d_1 ≤ … ≤ d_m``. With ``k = ⌊α(m+1)⌋`` the threshold is the k-th smallest null distance ``τ = d_(k)`` and a
generated image is flagged as a copy when ``d(g) < τ``; equivalently its conformal p-value
``p(g) = (1 + #{i: d_i ≤ d(g)}) / (m+1)`` is ≤ α (Vovk et al. 2005; split conformal prediction). If generated
and held-out images are exchangeable (the model draws new images from the data distribution), each is
flagged with probability exactly ``k/(m+1) ≤ α``; an image closer to a training image than almost every
real unseen image is evidence of copying. Given one calibration set, the rate at which non-copies are
flagged is ``F(τ) ~ Beta(k, m+1−k)``, which gives ``null_rate_high``. The flagged fraction gets a
Clopper–Pearson interval and a one-sided binomial p-value against α (both conditional on τ; compare
``ci_low`` with ``null_rate_high`` to also allow for the calibration set's own sampling error).

Invariance to flips and shifts
------------------------------
A generator that memorised an augmented training set reproduces training images mirrored or moved. The distance
used here is therefore the minimum over the transformations that still count as a copy (:class:`CopyInvariance`),
as augmentation-invariant copy detectors do (e.g. Pizzi et al. 2022, SSCD): the pose-normalised thumbnail and its
left-right, up-down and double flips; and the plain image, flipped likewise, against each training image at every
shift of up to ``max_shift`` thumbnail pixels in half-pixel steps, compared on the pixels the two share
(:func:`copy_distances`). The held-out real images go through exactly the same minimum, so the conformal guarantee
above is unchanged: it holds for any score applied alike to the held-out and the generated images.

Volumes (N×1×D×H×W) are handled by the same code in 3D: a size³ thumbnail, pose normalised by centring the 3D centroid
and aligning the in-plane principal axes (a rotation about the axial D axis), the same in-plane flips (left-right,
anterior-posterior, both; never superior-inferior) and shifts along all three axes. A volume carries far more
information than a slice, so a coarser thumbnail (16³ = 4096 values) and shift grid keep the (4·max_shift + 1)³ shift
searches affordable.

We prefer this to the per-sample Authenticity ratio of Alaa et al. 2022 (``d(g)`` against the training
point's own NN distance) because its false-positive rate is set by α, not by the local density of the
training set, and it needs no training-set leave-one-out (adjacent slices of one patient would shrink it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import MetricError
from .copy_search import flips_of, shift_search

__all__ = ["CopyInvariance", "conformal_flags", "copy_distances", "copy_embedding", "copy_flags", "image_embedding",
           "nn_distances", "EMBEDDING_CONFIG"]

EMBEDDING_CONFIG: dict[str, Any] = {
    "name": "pose-normalised-thumbnail",
    "pose": "centroid of (x - min x) to the centre, principal axes rotated onto the nearest image axes (|angle| ≤ 45°)",
    "size": 32,
    "pool": "adaptive average",
    "normalise": "per image: subtract mean, divide by std and sqrt(size²) (unit-norm, intensity-affine invariant)",
}


def _as_rows(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """n × d float64 array: features as given, images (n × ...) flattened."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim < 2 or a.shape[0] < 1:
        raise MetricError(f"{name}: expected n×d features or n×C×H×W images with n ≥ 1, got shape {a.shape}")
    a = a.reshape(a.shape[0], -1).astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise MetricError(f"{name}: contains NaN or inf")
    return a


def nn_distances(query: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, exclude_self: bool = False,
                 batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest reference row, and that row's index.

    ``d_i = min_j ||q_i − r_j||₂`` on features (n × d) or flattened images (n × C × H × W). Computed in query
    batches of ``batch_size`` (memory ``batch_size × n_ref`` distances): the neighbour is found with the
    matrix-product form ``||q||² + ||r||² − 2 q·r`` (one BLAS call per batch, like ``torch.cdist``'s mm mode),
    then its distance is recomputed exactly as ``||q_i − r_j||`` (a copy gives exactly 0).
    ``exclude_self=True`` (query and reference are the same set) ignores ``j = i`` (leave-one-out).
    """
    q, r = _as_rows(query, "query"), _as_rows(reference, "reference")
    if q.shape[1] != r.shape[1]:
        raise MetricError(f"query and reference: feature dimensions differ ({q.shape[1]} vs {r.shape[1]})")
    if exclude_self and q.shape[0] != r.shape[0]:
        raise MetricError(f"exclude_self: needs query and reference to be the same set, got {q.shape[0]} and {r.shape[0]} rows")
    if exclude_self and r.shape[0] < 2:
        raise MetricError("reference: exclude_self needs at least 2 rows")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise MetricError(f"batch_size: expected an integer ≥ 1, got {batch_size!r}")
    r2 = (r * r).sum(1)
    dist = np.empty(q.shape[0])
    idx = np.empty(q.shape[0], dtype=np.int64)
    for s in range(0, q.shape[0], batch_size):
        qb = q[s:s + batch_size]
        d2 = r2[None, :] - 2.0 * (qb @ r.T)  # + ||q||², constant per row: irrelevant to the argmin
        if exclude_self:
            rows = np.arange(qb.shape[0])
            d2[rows, rows + s] = np.inf
        i = d2.argmin(axis=1)
        diff = qb - r[i]
        dist[s:s + batch_size] = np.sqrt((diff * diff).sum(1))  # exact distance to the chosen neighbour
        idx[s:s + batch_size] = i
    return dist, idx


def _canonical_pose(x: torch.Tensor) -> torch.Tensor:
    """Resample so the intensity centroid is centred and the (in-plane) principal axes lie on the nearest image axes;
    ``x`` is n×1×H×W or n×1×D×H×W (a volume is rotated about its D axis only)."""
    nd = x.ndim - 2
    dims = tuple(range(1, nd + 1))
    grids = torch.meshgrid(*[torch.linspace(-1, 1, k, dtype=x.dtype) for k in x.shape[2:]], indexing="ij")
    yy, xx = grids[-2], grids[-1]
    wgt = x[:, 0] - x[:, 0].amin(dim=dims, keepdim=True)  # offset-invariant weights
    s = wgt.sum(dims).clamp(min=1e-12)
    cx, cy = (wgt * xx).sum(dims) / s, (wgt * yy).sum(dims) / s
    per_item = (slice(None),) + (None,) * nd
    dx, dy = xx - cx[per_item], yy - cy[per_item]
    mxx, myy, mxy = (wgt * dx * dx).sum(dims) / s, (wgt * dy * dy).sum(dims) / s, (wgt * dx * dy).sum(dims) / s
    angle = 0.5 * torch.atan2(2 * mxy, mxx - myy)  # principal-axis angle, defined modulo 90° for the axis pair
    delta = torch.remainder(angle + math.pi / 4, math.pi / 2) - math.pi / 4
    cos, sin = torch.cos(delta), torch.sin(delta)
    if nd == 2:
        theta = torch.stack([torch.stack([cos, -sin, cx], 1), torch.stack([sin, cos, cy], 1)], 1)
    else:  # affine_grid's (x, y, z) = (W, H, D)
        cz, zero, one = (wgt * grids[0]).sum(dims) / s, torch.zeros_like(cos), torch.ones_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero, cx], 1), torch.stack([sin, cos, zero, cy], 1),
                             torch.stack([zero, zero, one, cz], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _as_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """n×1×H×W or n×1×D×H×W float32 tensor (n×H×W gets its channel); MetricError otherwise."""
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).detach().cpu()
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim not in (4, 5) or t.shape[1] != 1 or t.shape[0] < 1:
        raise MetricError(f"images: expected n×1×H×W (or n×H×W) grey images or n×1×D×H×W grey volumes, got shape {tuple(t.shape)}")
    return t.to(torch.float32)


def _pool(t: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling of n×1×(D×)H×W to ``size`` per spatial axis."""
    return (F.adaptive_avg_pool2d if t.ndim == 4 else F.adaptive_avg_pool3d)(t, size)


def image_embedding(images: np.ndarray | torch.Tensor, size: int = 32, pose: bool = True,
                    batch_size: int = 256) -> np.ndarray:
    """A cheap copy-detection embedding of grey images (n × 1 × H × W → n × size², float64, unit norm), or of grey volumes
    (n × 1 × D × H × W → n × size³; pose: 3D centroid, in-plane principal axes).

    Steps: (1) pose normalisation, so small rotations and shifts of a copy are undone: translate the
    centroid of ``x − min(x)`` to the centre and rotate the principal axes of its second moments onto the
    nearest image axes (|angle| ≤ 45°; Hu 1962 moment normalisation; border padding); (2) adaptive average pooling to
    ``size × size`` (low-pass, removes pixel noise); (3) per-image z-normalisation divided by ``size``
    (invariant to intensity gain and offset; embeddings have unit norm, distances lie in [0, 2]).
    A constant image embeds as the zero vector. Its config is :data:`EMBEDDING_CONFIG`.
    """
    t = _as_images(images)
    if not isinstance(size, (int, np.integer)) or not 2 <= size <= min(t.shape[2:]):
        raise MetricError(f"size: expected an integer in [2, {min(t.shape[2:])}], got {size!r}")
    norm = size ** ((t.ndim - 2) / 2)  # sqrt of the thumbnail's value count: unit-norm rows
    if not torch.isfinite(t).all():
        raise MetricError("images: contain NaN or inf")
    out = []
    for s in range(0, t.shape[0], batch_size):
        x = t[s:s + batch_size]
        if pose:
            x = _canonical_pose(x)
        y = _pool(x, size).flatten(1).to(torch.float64)
        y = y - y.mean(1, keepdim=True)
        sd = y.std(1, correction=0, keepdim=True)
        out.append(torch.where(sd > 1e-12, y / (sd * norm), torch.zeros_like(y)))
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class CopyInvariance:
    """What still counts as a copy of a training image: its flips and shifts of up to ``max_shift`` thumbnail pixels
    (in half-pixel steps; a thumbnail pixel is H/size image pixels, 4 px on a 128-px slice at size 32)."""

    flips: bool = True
    max_shift: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.flips, bool):
            raise MetricError(f"flips: expected true or false, got {self.flips!r}")
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, (int, np.integer)) or not 0 <= self.max_shift <= 8:
            raise MetricError(f"max_shift: expected an integer number of thumbnail pixels in [0, 8], got {self.max_shift!r}")

    def config(self, size: int = 32) -> dict[str, Any]:
        """What the report records."""
        return {"flips": "none, left-right, up-down, both" if self.flips else "none",
                "shifts": (f"every shift of up to ±{self.max_shift} thumbnail px in steps of ½ (±{self.max_shift}·H/{size} image px "
                           "on an H-pixel slice), compared on the window the shifted images share" if self.max_shift
                           else "none beyond pose normalisation"),
                "max_shift_thumbnail_px": int(self.max_shift)}


def copy_embedding(images: np.ndarray | torch.Tensor, size: int = 32, invariance: CopyInvariance = CopyInvariance()) -> np.ndarray:
    """What :func:`copy_distances` compares, one row per image (float64): the pose-normalised thumbnail
    (:func:`image_embedding`, size² values; size³ for volumes) and, when ``invariance`` has shifts, the plain image
    average-pooled to twice that resolution ((2·size)² or (2·size)³ values, not normalised: every compared window is
    normalised on its own).
    """
    pose = image_embedding(images, size=size)
    if not invariance.max_shift:
        return pose
    fine = _pool(_as_images(images), 2 * size).flatten(1).to(torch.float64).numpy()
    return np.concatenate([pose, fine], axis=1)


def _side(values: int, nd: int) -> int:
    """The s with s^nd == values, or 0 when there is none."""
    s = int(round(values ** (1 / nd)))
    return s if s > 0 and s**nd == values else 0


def copy_distances(query: np.ndarray, reference: np.ndarray, invariance: CopyInvariance = CopyInvariance(),
                   batch_size: int = 1024, spatial_dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Invariant copy distance from each query image to its nearest reference image, and that image's index.

    ``query`` and ``reference`` are :func:`copy_embedding` rows made with the same ``invariance``, of slices
    (``spatial_dims=2``) or volumes (3). The distance is the smallest of :func:`nn_distances` over (a) each flip of the
    query's pose-normalised thumbnail against the reference's, and (b) for every shift of the query's content by
    (dy, dx) pixels ((dz, dy, dx) voxels) of the twice-resolution image, each at most 2·max_shift (half thumbnail
    pixels), each flip of the query against the reference, both cut to the pixels they share after the shift, pooled
    2 × 2 (× 2) to thumbnail resolution and unit-normalised there. Nothing is padded, so a copy whose border was cut off
    or filled by the shift matches its source exactly on what remains. Flips are in-plane (left-right, up-down, both).
    Every distance is between unit vectors: it lies in [0, 2], and an exact copy is at 0. Ties go to the earlier
    variant (pose flips, then shifts in ``itertools.product`` order, flips within), then to the lower reference index.
    The shifts are searched by branch and bound on the windows' DCT coefficients (:mod:`.copy_search`), with the same
    result: on 256 held-out × 2048 training slices, ~0.05 % of the 4·(4·max_shift + 1)^d shifted flips of a pair get
    past the bounds and one or two a query need the exact distance. The reference images' windows are kept in memory
    between calls, keyed by their content (:mod:`.copy_search_cache`).
    """
    if spatial_dims not in (2, 3):
        raise MetricError(f"spatial_dims: expected 2 (slices) or 3 (volumes), got {spatial_dims!r}")
    q, r = _as_rows(query, "query"), _as_rows(reference, "reference")
    d, nd = q.shape[1], spatial_dims
    parts = 1 + 2**nd if invariance.max_shift else 1  # pose thumbnail + the twice-resolution image
    size = _side(d // parts, nd)
    if r.shape[1] != d or d != size**nd * parts:
        expected = f"{parts}·size{'²' if nd == 2 else '³'}"
        raise MetricError(f"query and reference: expected copy embeddings of {expected} values per "
                          f"{'image' if nd == 2 else 'volume'} (copy_embedding with the same invariance), got {q.shape[1]} and {r.shape[1]}")
    if invariance.max_shift >= size:
        raise MetricError(f"max_shift: {invariance.max_shift} thumbnail px leaves nothing to compare on a {size}-px thumbnail; "
                          f"expected fewer than {size}")
    n, thumb = q.shape[0], size**nd
    views = flips_of(q[:, :thumb].reshape(n, *(size,) * nd), invariance.flips)
    dist, idx = nn_distances(np.concatenate([f.reshape(n, -1) for f in views]), r[:, :thumb], batch_size=batch_size)
    dist, idx = dist.reshape(-1, n), idx.reshape(-1, n)  # flips × n
    variant, cols = dist.argmin(0), np.arange(n)  # ties: the first flip
    best = (dist[variant, cols], variant, idx[variant, cols])
    if invariance.max_shift:
        best = shift_search(q[:, thumb:], r[:, thumb:], size, nd, invariance.max_shift, invariance.flips, best)
    return best[0], best[2]


def copy_flags(gen_feats: np.ndarray | torch.Tensor, train_feats: np.ndarray | torch.Tensor,
               null_feats: np.ndarray | torch.Tensor, alpha: float = 0.01, level: float = 0.95,
               batch_size: int = 1024, invariance: CopyInvariance | None = None, spatial_dims: int = 2) -> dict[str, Any]:
    """Flag generated images that are closer to a training image than held-out real images are.

    The distances, then :func:`conformal_flags`. With ``invariance``, the three inputs are :func:`copy_embedding` arrays
    and every distance (held-out and generated alike) is the invariant :func:`copy_distances`; without it they are
    features (n × d) or images, and the distance is :func:`nn_distances`.

    Args:
        gen_feats: the evaluated images' features (n × d) or images.
        train_feats: the training set's, same kind.
        null_feats: held-out real images' (never trained on), same kind; at least ``1/alpha − 1`` of them.
        alpha: the flag rate for images exchangeable with the held-out ones (the test's level).
        level: the confidence level of ``ci_low``/``ci_high`` and ``null_rate_high``.
        batch_size: query rows per nearest-neighbour batch.
        invariance: None for plain distances, or the flips and shifts that still count as a copy.
        spatial_dims: with ``invariance``, whether the embeddings are of slices (2) or volumes (3).

    Returns:
        :func:`conformal_flags`'s dict: per image ``flags``, ``p_values``, ``d_gen``, ``nn_index``; the ``fraction``
        flagged with its interval and the ``threshold``.

    Raises:
        MetricError: non-finite input, dimensions that differ, ``alpha`` outside (0, 1) or too few held-out images.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> train, held_out = rng.normal(size=(500, 16)), rng.normal(size=(199, 16))
        >>> copies = train[:20] + 0.01 * rng.normal(size=(20, 16))  # near-copies of 20 training items
        >>> r = copy_flags(np.concatenate([copies, rng.normal(size=(80, 16))]), train, held_out, alpha=0.05)
        >>> bool(r["flags"][:20].all()), r["null_rate"], r["fraction"]
        (True, 0.05, 0.28)
    """
    named = {"gen_feats": gen_feats, "train_feats": train_feats, "null_feats": null_feats}
    g, t, z = (_as_rows(x, name) for name, x in named.items())
    if not g.shape[1] == t.shape[1] == z.shape[1]:
        raise MetricError(f"gen_feats, train_feats, null_feats: feature dimensions differ ({g.shape[1]}, {t.shape[1]}, {z.shape[1]})")
    if invariance is None:
        distances = lambda q: nn_distances(q, t, batch_size=batch_size)  # noqa: E731
    else:
        distances = lambda q: copy_distances(q, t, invariance, batch_size, spatial_dims)  # noqa: E731
    _null_size(alpha, z.shape[0])
    return conformal_flags(*distances(g), distances(z)[0], alpha, level, "NN distances" if invariance is None else
                           f"copy distances (flips: {invariance.flips}, shifts up to ±{invariance.max_shift} thumbnail px)")


def _null_size(alpha: float, m: int, available: int | None = None) -> int:
    """``k = ⌊α(m+1)⌋``; MetricError when ``alpha`` is not in (0, 1) or the ``m`` held-out images are too few for it
    (``available``: how many there were before a cap cut them to ``m``, for the message)."""
    if not (isinstance(alpha, (float, int)) and 0 < alpha < 1):
        raise MetricError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    k = int(math.floor(alpha * (m + 1) + 1e-9))
    if k < 1:
        need = math.ceil(1 / alpha - 1 - 1e-9)
        fix = (f"the {available} held-out images available are cut to {m} (copy_fraction's max_items): raise max_items to "
               f"at least {need}, or use a larger alpha" if available is not None and available > m else
               f"use a larger alpha, or more held-out real images (at least {need})")
        raise MetricError(f"null_feats: alpha={alpha} needs at least {need} held-out images (α(m+1) ≥ 1: the threshold is the "
                          f"⌊α(m+1)⌋-th smallest of the m held-out distances, so m ≥ 1/α − 1), got {m}; with {m} held-out images "
                          f"alpha must be at least 1/{m + 1} = {1 / (m + 1):.4g}. Fix: {fix}")
    return k


def conformal_flags(d_gen: np.ndarray, nn_index: np.ndarray, d_null: np.ndarray, alpha: float = 0.01, level: float = 0.95,
                    distance: str = "NN distances") -> dict[str, Any]:
    """The conformal NN rule (module docstring) on distances already computed.

    ``τ = d_(k)`` with ``k = ⌊α(m+1)⌋`` over the ``m`` held-out→train distances ``d_null``; flag generated image ``g``
    when ``d_gen[g] < τ``. Needs ``m ≥ 1/α − 1`` held-out images. ``distance`` names the distance in ``rule``.

    Returns a dict: ``d_gen`` (per generated image), ``nn_index`` (its nearest training image), ``p_values``,
    ``flags``, ``d_null``, ``threshold``, ``k``, ``m``, ``alpha``, ``null_rate`` (= k/(m+1), the exact flag rate
    for non-copies), ``null_rate_high`` (upper ``level`` quantile of Beta(k, m+1−k): the rate given this
    calibration set), ``n``, ``n_flagged``, ``fraction``, ``ci_low``/``ci_high`` (Clopper–Pearson at ``level``),
    ``p_excess`` (one-sided binomial P(X ≥ n_flagged | n, α)) and ``rule``.
    """
    from scipy import stats

    if not (isinstance(level, (float, int)) and 0 < level < 1):
        raise MetricError(f"level: expected a number in (0, 1), got {level!r}")
    d_gen, d_null = np.asarray(d_gen, dtype=np.float64), np.asarray(d_null, dtype=np.float64)
    m = int(d_null.shape[0])
    k = _null_size(alpha, m)
    d_sorted = np.sort(d_null)
    tau = float(d_sorted[k - 1])
    if tau <= 0:
        raise MetricError(f"null_feats: {int((d_null == 0).sum())} held-out image(s) duplicate a training image (NN distance 0); deduplicate the split")
    flags = d_gen < tau
    p_values = (1 + np.searchsorted(d_sorted, d_gen, side="right")) / (m + 1)
    n, x = int(d_gen.shape[0]), int(flags.sum())
    a2 = (1 - level) / 2
    ci_low = 0.0 if x == 0 else float(stats.beta.ppf(a2, x, n - x + 1))
    ci_high = 1.0 if x == n else float(stats.beta.ppf(1 - a2, x + 1, n - x))
    return {
        "d_gen": d_gen,
        "nn_index": np.asarray(nn_index),
        "p_values": p_values,
        "flags": flags,
        "d_null": d_null,
        "threshold": tau,
        "k": k,
        "m": m,
        "alpha": float(alpha),
        "null_rate": k / (m + 1),
        "null_rate_high": float(stats.beta.ppf(level, k, m + 1 - k)),
        "n": n,
        "n_flagged": x,
        "fraction": x / n,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "level": float(level),
        "p_excess": float(stats.binomtest(x, n, alpha, alternative="greater").pvalue),
        "rule": f"flag d_gen < τ, τ = {k}-th smallest of {m} held-out→train {distance} (k = ⌊α(m+1)⌋, α = {alpha})",
    }
