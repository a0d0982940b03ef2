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

We prefer this to the per-sample Authenticity ratio of Alaa et al. 2022 (``d(g)`` against the training
point's own NN distance) because its false-positive rate is set by α, not by the local density of the
training set, and it needs no training-set leave-one-out (adjacent slices of one patient would shrink it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from ..errors import MetricError

__all__ = ["copy_flags", "image_embedding", "nn_distances", "EMBEDDING_CONFIG"]

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
    """Resample so the intensity centroid is centred and the principal axes lie on the nearest image axes."""
    n, _, h, w = x.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=x.dtype), torch.linspace(-1, 1, w, dtype=x.dtype), indexing="ij")
    wgt = x[:, 0] - x[:, 0].amin(dim=(1, 2), keepdim=True)  # offset-invariant weights
    s = wgt.sum((1, 2)).clamp(min=1e-12)
    cx, cy = (wgt * xx).sum((1, 2)) / s, (wgt * yy).sum((1, 2)) / s
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    mxx, myy, mxy = (wgt * dx * dx).sum((1, 2)) / s, (wgt * dy * dy).sum((1, 2)) / s, (wgt * dx * dy).sum((1, 2)) / s
    angle = 0.5 * torch.atan2(2 * mxy, mxx - myy)  # principal-axis angle, defined modulo 90° for the axis pair
    delta = torch.remainder(angle + math.pi / 4, math.pi / 2) - math.pi / 4
    cos, sin = torch.cos(delta), torch.sin(delta)
    theta = torch.stack([torch.stack([cos, -sin, cx], 1), torch.stack([sin, cos, cy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def image_embedding(images: np.ndarray | torch.Tensor, size: int = 32, pose: bool = True,
                    batch_size: int = 256) -> np.ndarray:
    """A cheap copy-detection embedding of grey images (n × 1 × H × W → n × size², float64, unit norm).

    Steps: (1) pose normalisation, so small rotations and shifts of a copy are undone: translate the
    centroid of ``x − min(x)`` to the centre and rotate the principal axes of its second moments onto the
    nearest image axes (|angle| ≤ 45°; Hu 1962 moment normalisation; border padding); (2) adaptive average pooling to
    ``size × size`` (low-pass, removes pixel noise); (3) per-image z-normalisation divided by ``size``
    (invariant to intensity gain and offset; embeddings have unit norm, distances lie in [0, 2]).
    A constant image embeds as the zero vector. Its config is :data:`EMBEDDING_CONFIG`.
    """
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).detach().cpu()
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1 or t.shape[0] < 1:
        raise MetricError(f"images: expected n×1×H×W (or n×H×W) grey images, got shape {tuple(t.shape)}")
    if not isinstance(size, (int, np.integer)) or not 2 <= size <= min(t.shape[-2:]):
        raise MetricError(f"size: expected an integer in [2, {min(t.shape[-2:])}], got {size!r}")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise MetricError("images: contain NaN or inf")
    out = []
    for s in range(0, t.shape[0], batch_size):
        x = t[s:s + batch_size]
        if pose:
            x = _canonical_pose(x)
        y = F.adaptive_avg_pool2d(x, size).flatten(1).to(torch.float64)
        y = y - y.mean(1, keepdim=True)
        sd = y.std(1, correction=0, keepdim=True)
        out.append(torch.where(sd > 1e-12, y / (sd * size), torch.zeros_like(y)))
    return torch.cat(out).numpy()


def copy_flags(gen_feats: np.ndarray | torch.Tensor, train_feats: np.ndarray | torch.Tensor,
               null_feats: np.ndarray | torch.Tensor, alpha: float = 0.01, level: float = 0.95,
               batch_size: int = 1024) -> dict[str, Any]:
    """Flag generated images that are closer to a training image than held-out real images are.

    Conformal NN rule (module docstring): ``τ = d_(k)`` with ``k = ⌊α(m+1)⌋`` over the ``m`` held-out→train
    NN distances; flag ``g`` when ``d(g) = min_j ||g − t_j|| < τ``. Needs ``m ≥ 1/α − 1`` held-out images.

    Returns a dict: ``d_gen`` (per generated image), ``nn_index`` (its nearest training image), ``p_values``,
    ``flags``, ``d_null``, ``threshold``, ``k``, ``m``, ``alpha``, ``null_rate`` (= k/(m+1), the exact flag rate
    for non-copies), ``null_rate_high`` (upper ``level`` quantile of Beta(k, m+1−k): the rate given this
    calibration set), ``n``, ``n_flagged``, ``fraction``, ``ci_low``/``ci_high`` (Clopper–Pearson at ``level``),
    ``p_excess`` (one-sided binomial P(X ≥ n_flagged | n, α)) and ``rule``.
    """
    if not (isinstance(alpha, (float, int)) and 0 < alpha < 1):
        raise MetricError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    if not (isinstance(level, (float, int)) and 0 < level < 1):
        raise MetricError(f"level: expected a number in (0, 1), got {level!r}")
    g, t, z = _as_rows(gen_feats, "gen_feats"), _as_rows(train_feats, "train_feats"), _as_rows(null_feats, "null_feats")
    if not g.shape[1] == t.shape[1] == z.shape[1]:
        raise MetricError(f"gen_feats, train_feats, null_feats: feature dimensions differ ({g.shape[1]}, {t.shape[1]}, {z.shape[1]})")
    m = z.shape[0]
    k = int(math.floor(alpha * (m + 1) + 1e-9))
    if k < 1:
        raise MetricError(f"null_feats: alpha={alpha} needs at least {math.ceil(1 / alpha - 1)} held-out images (α(m+1) ≥ 1), got {m}")
    d_null, _ = nn_distances(z, t, batch_size=batch_size)
    d_sorted = np.sort(d_null)
    tau = float(d_sorted[k - 1])
    if tau <= 0:
        raise MetricError(f"null_feats: {int((d_null == 0).sum())} held-out image(s) duplicate a training image (NN distance 0); deduplicate the split")
    d_gen, nn_idx = nn_distances(g, t, batch_size=batch_size)
    flags = d_gen < tau
    p_values = (1 + np.searchsorted(d_sorted, d_gen, side="right")) / (m + 1)
    n, x = int(g.shape[0]), int(flags.sum())
    a2 = (1 - level) / 2
    ci_low = 0.0 if x == 0 else float(stats.beta.ppf(a2, x, n - x + 1))
    ci_high = 1.0 if x == n else float(stats.beta.ppf(1 - a2, x + 1, n - x))
    return {
        "d_gen": d_gen,
        "nn_index": nn_idx,
        "p_values": p_values,
        "flags": flags,
        "d_null": d_null,
        "threshold": tau,
        "k": k,
        "m": int(m),
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
        "rule": f"flag d_gen < τ, τ = {k}-th smallest of {m} held-out→train NN distances (k = ⌊α(m+1)⌋, α = {alpha})",
    }
