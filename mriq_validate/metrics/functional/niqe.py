"""NIQE refitted on real MRI slices (Mittal et al. 2013), using pyiqa's NIQE internals.

pyiqa's ``niqe`` metric downloads a model fitted on natural photographs and scores 96 × 96 blocks, which
leaves one block in a 128 × 128 slice. Here the pristine multivariate Gaussian (MVG) is fitted on the
user's own reference slices at a block size suited to the image size, and scored with pyiqa's own
``niqe()`` function at the same block size, so the features are exactly pyiqa's.

Fitting follows the MATLAB reference ``estimatemodelparam.m``: per image, 36 NSS features per block (18 at
full and 18 at half resolution), keep the blocks whose sharpness (mean local deviation σ of the block) is
above ``sharpness_threshold`` × the image's sharpest block (0.75 in the reference), pool them, and take
their mean and covariance. Images are scored as ``calculate_niqe`` prepares them: grey [0, 1] → ×255,
rounded, float64.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import MetricError

__all__ = ["NiqeModel", "fit_niqe", "niqe_block_features", "niqe_mri", "niqe_scores", "prepare_niqe_input"]

N_FEATURES = 36


@dataclass(frozen=True)
class NiqeModel:
    """A pristine MVG: ``mu`` (36,), ``cov`` (36 × 36), the ``block_size`` it was fitted at, how many blocks
    it pooled, and the fitting ``config`` (recorded with every score)."""

    mu: np.ndarray
    cov: np.ndarray
    block_size: int
    n_blocks: int
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path | str) -> None:
        """Write the model as an ``.npz`` (``config`` as JSON)."""
        with open(path, "wb") as fh:
            np.savez(fh, mu=self.mu, cov=self.cov, block_size=self.block_size, n_blocks=self.n_blocks,
                     config=np.array(json.dumps(self.config, sort_keys=True)))

    @classmethod
    def load(cls, path: Path | str) -> "NiqeModel":
        """Read a model written by :meth:`save`; MetricError if a field is missing or mis-shaped."""
        try:
            with np.load(path, allow_pickle=False) as z:
                model = cls(np.asarray(z["mu"], np.float64), np.asarray(z["cov"], np.float64), int(z["block_size"]),
                            int(z["n_blocks"]), json.loads(str(z["config"])))
        except (KeyError, ValueError, OSError) as exc:
            raise MetricError(f"NIQE model file {path}: not a saved NiqeModel ({exc})") from None
        if model.mu.shape != (N_FEATURES,) or model.cov.shape != (N_FEATURES, N_FEATURES):
            raise MetricError(f"NIQE model file {path}: expected mu (36,) and cov (36, 36), got {model.mu.shape} and {model.cov.shape}")
        return model


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (restored afterwards); ``None`` leaves the setting alone.

    pyiqa's NIQE is many small tensor ops on 32-px blocks: measured on 2 shared cores, 1 thread scored a
    slice in 15–19 ms and 2 threads in 47–83 ms (idle threads spinning against other processes).
    """
    if n is not None and (not isinstance(n, (int, np.integer)) or n < 1):
        raise MetricError(f"threads: expected an integer ≥ 1 or None, got {n!r}")
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _pyiqa_niqe() -> Any:
    from ..._compat import import_pyiqa

    import_pyiqa()
    from pyiqa.archs import niqe_arch

    return niqe_arch


def prepare_niqe_input(images: np.ndarray | torch.Tensor, block_size: int) -> torch.Tensor:
    """n × 1 × H × W grey [0, 1] → float64 in [0, 255], rounded (as pyiqa's ``calculate_niqe``)."""
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).detach().cpu()
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1 or t.shape[0] < 1:
        raise MetricError(f"images: expected n×1×H×W (or n×H×W) grey images in [0, 1], got shape {tuple(t.shape)}")
    if not isinstance(block_size, (int, np.integer)) or block_size < 8 or block_size % 2:
        raise MetricError(f"block_size: expected an even integer ≥ 8, got {block_size!r}")
    if min(t.shape[-2:]) < block_size:
        raise MetricError(f"images: {tuple(t.shape[-2:])} px is smaller than block_size={block_size}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise MetricError("images: expected finite values in [0, 1]")
    return torch.round(t * 255.0)


def niqe_block_features(img255: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block NIQE features (n × blocks × 36) and block sharpness (n × blocks), pyiqa's ``niqe()`` code path.

    Sharpness is the mean over the block of the local deviation ``σ = sqrt(|G*I² − (G*I)²|)`` (7 × 7 Gaussian,
    σ = 7/6), at full resolution, as in ``estimatemodelparam.m``.
    """
    na = _pyiqa_niqe()
    from pyiqa.matlab_utils import fspecial, imfilter

    b, c, h, w = img255.shape
    nh, nw = h // block_size, w // block_size
    img = img255[..., : nh * block_size, : nw * block_size]
    kernel = fspecial(7, 7.0 / 6, 1).to(img)
    mu = imfilter(img, kernel, padding="replicate")
    sigma = torch.sqrt((imfilter(img**2, kernel, padding="replicate") - mu**2).abs())
    sharp = na.blockproc(sigma, [block_size, block_size], fun=lambda blk, _args: blk.mean(dim=(2, 3)))[..., 0]
    feats = []
    for scale in (1, 2):
        normed = na.normalize_img_with_gauss(img, padding="replicate")
        feats.append(na.blockproc(normed, [block_size // scale, block_size // scale], fun=na.compute_feature))
        if scale == 1:
            img = na.imresize(img / 255.0, scale=0.5, antialiasing=True) * 255.0
    return torch.cat(feats, -1), sharp


def fit_niqe(pristine_images: np.ndarray | torch.Tensor, block_size: int = 32, sharpness_threshold: float = 0.75,
             batch_size: int = 4, threads: int | None = 1) -> NiqeModel:
    """Fit the pristine MVG on real reference slices (n × 1 × H × W in [0, 1]).

    For each image, blocks with sharpness > ``sharpness_threshold`` × (its sharpest block) are kept
    (Mittal et al. 2013, ``estimatemodelparam.m``; this also drops flat background blocks); rows with NaN are
    dropped; ``mu = mean``, ``cov = cov(ddof=1)`` over the pooled blocks. ``block_size = 32`` gives 4 × 4
    blocks on a 128² slice and 16 × 16 blocks (256 coefficients per AGGD fit) at the half-resolution scale.
    ``threads``: torch threads during the call (see ``_torch_threads``; ``None`` keeps the global setting).
    """
    if not 0 <= sharpness_threshold < 1:
        raise MetricError(f"sharpness_threshold: expected a number in [0, 1), got {sharpness_threshold!r}")
    img = prepare_niqe_input(pristine_images, block_size)
    kept = []
    with _torch_threads(threads), torch.no_grad():
        for s in range(0, img.shape[0], batch_size):
            feats, sharp = niqe_block_features(img[s:s + batch_size], block_size)
            keep = sharp > sharpness_threshold * sharp.amax(dim=1, keepdim=True)
            f = feats[keep]
            kept.append(f[~torch.isnan(f).any(dim=1)])
    pooled = torch.cat(kept).numpy()
    if pooled.shape[0] <= N_FEATURES:
        raise MetricError(f"pristine_images: only {pooled.shape[0]} sharp blocks (need > {N_FEATURES}); "
                          "give more or larger images, or a smaller block_size")
    config = {"name": "niqe-mri", "block_size": int(block_size), "sharpness_threshold": float(sharpness_threshold),
              "n_images": int(img.shape[0]), "image_size": list(img.shape[-2:]), "features": "pyiqa 0.1.16 niqe_arch",
              "input": "grey [0,1] x255, rounded, float64"}
    return NiqeModel(pooled.mean(0), np.cov(pooled, rowvar=False), int(block_size), int(pooled.shape[0]), config)


def niqe_scores(images: np.ndarray | torch.Tensor, model: NiqeModel, batch_size: int = 4,
                threads: int | None = 1) -> np.ndarray:
    """NIQE of each image against ``model`` (lower = closer to the pristine slices).

    ``NIQE = sqrt((μ_p − μ_x)ᵀ ((Σ_p + Σ_x)/2)⁺ (μ_p − μ_x))`` with (μ_x, Σ_x) the MVG of the image's blocks
    (all blocks, NaN rows dropped), computed by ``pyiqa.archs.niqe_arch.niqe`` with
    ``block_size_h = block_size_w = model.block_size``. ``threads``: torch threads during the call (``None``
    keeps the global setting).
    """
    if not isinstance(model, NiqeModel):
        raise MetricError(f"model: expected a NiqeModel (from fit_niqe or NiqeModel.load), got {type(model).__name__}")
    na = _pyiqa_niqe()
    img = prepare_niqe_input(images, model.block_size)
    bs = model.block_size
    if (img.shape[-2] // bs) * (img.shape[-1] // bs) < 2:
        raise MetricError(f"images: {tuple(img.shape[-2:])} px holds fewer than 2 blocks of {bs} px; use a smaller block_size")
    mu = torch.from_numpy(model.mu)
    cov = torch.from_numpy(model.cov)
    out = []
    with _torch_threads(threads), torch.no_grad():
        for s in range(0, img.shape[0], batch_size):
            x = img[s:s + batch_size]
            q = na.niqe(x, mu.repeat(x.shape[0], 1), cov.repeat(x.shape[0], 1, 1), block_size_h=bs, block_size_w=bs)
            out.append(q.reshape(-1))
    return torch.cat(out).numpy().astype(np.float64)


def niqe_mri(images: np.ndarray | torch.Tensor, pristine_images: np.ndarray | torch.Tensor, block_size: int = 32,
             sharpness_threshold: float = 0.75) -> np.ndarray:
    """NIQE of each image against a pristine model fitted on real MRI slices (Mittal et al. 2013): :func:`fit_niqe` on
    ``pristine_images``, then :func:`niqe_scores`. ``NIQE = sqrt((μ_p − μ_x)ᵀ ((Σ_p + Σ_x)/2)⁺ (μ_p − μ_x))``.

    Args:
        images: n × 1 × H × W grey images in [0, 1] to score.
        pristine_images: real reference slices, same form; they must hold more than 36 sharp blocks together.
        block_size: even block size ≥ 8 (32 suits 128-px slices); each image holds at least 2 blocks.
        sharpness_threshold: blocks sharper than this fraction of an image's sharpest block are fitted, in [0, 1).

    Returns:
        n scores ≥ 0 (float64), lower = closer to the pristine slices.

    Raises:
        MetricError: images not n × 1 × H × W in [0, 1], a bad block size or threshold, or too few sharp blocks.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> smooth = lambda n: torch.nn.functional.interpolate(torch.rand(n, 1, 16, 16, generator=g), size=64, mode="bilinear")
        >>> pristine, test = smooth(12), smooth(2)
        >>> noisy = (test + 0.1 * torch.randn(2, 1, 64, 64, generator=g)).clamp(0, 1)
        >>> niqe_mri(torch.cat([test, noisy]), pristine, block_size=16).round(1).tolist()
        [2.5, 1.6, 22.6, 28.8]
    """
    return niqe_scores(images, fit_niqe(pristine_images, block_size, sharpness_threshold))
