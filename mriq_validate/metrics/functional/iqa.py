"""No-reference image quality through pyiqa (Chen et al., "TOPIQ", and the IQA-PyTorch toolbox), offline.

pyiqa is licensed CC BY-NC-SA 4.0 (non-commercial); it is installed separately, see the README. Nothing is downloaded:
metrics that need weights take a local file (``weights``). The MRI-fitted NIQE is :mod:`.niqe`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import MetricError

__all__ = ["piqe", "pyiqa_metric", "pyiqa_scores"]


@lru_cache(maxsize=8)
def pyiqa_metric(name: str, device: str, **kwargs: Any) -> Any:
    """A pyiqa metric object, created once per (name, device, options)."""
    from ..._compat import import_pyiqa

    return import_pyiqa().create_metric(name, device=torch.device(device), **kwargs)


def pyiqa_scores(images: torch.Tensor, metric: str, weights: str | Path | None = None, channels: int = 1,
                 device: str | torch.device = "cpu", batch_size: int = 32) -> np.ndarray:
    """Per-image scores of the pyiqa no-reference metric ``metric`` (its own direction: ``pyiqa_metric(...).lower_better``).

    Args:
        images: N×1×H×W grey images in [0, 1].
        metric: a pyiqa metric name (``piqe``, ``brisque``, ``musiq``, ...).
        weights: a local weights file for metrics that need one (passed as ``pretrained_model_path``); None for
            training-free metrics.
        channels: the grey channel repeated to this many (3 for networks trained on colour photographs).
        device: where pyiqa runs.
        batch_size: images per call.

    Returns:
        N scores (float64).

    Raises:
        MetricError: images not N×1×H×W, or ``channels`` not 1 or 3.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> blocks = torch.nn.functional.interpolate(torch.rand(2, 1, 8, 8, generator=g), size=64, mode="nearest")
        >>> pyiqa_scores(blocks, "piqe").round(1).tolist()  # training-free: no weights needed
        [83.3, 83.4]
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise MetricError(f"images: expected N×1×H×W grey images, got shape {tuple(images.shape)}")
    if channels not in (1, 3):
        raise MetricError(f"channels: expected 1 or 3, got {channels!r}")
    extra = {} if weights is None else {"pretrained_model_path": str(weights)}
    m = pyiqa_metric(metric, str(device), **extra)
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            out.append(m(images[i : i + batch_size].repeat(1, channels, 1, 1).to(device)).flatten().cpu())
    return torch.cat(out).double().numpy()


def piqe(images: torch.Tensor, device: str | torch.device = "cpu") -> np.ndarray:
    """PIQE (Venkatanath et al. 2015), a training-free no-reference distortion score in [0, 100] per image (pyiqa's
    ``piqe``: block-wise distortion of mean-subtracted contrast-normalised coefficients); lower is better.

    Args:
        images: N×1×H×W grey images in [0, 1], at their native size (no resize).
        device: where pyiqa runs.

    Returns:
        N scores in [0, 100] (float64).

    Raises:
        MetricError: images not N×1×H×W.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> blocks = torch.nn.functional.interpolate(torch.rand(2, 1, 8, 8, generator=g), size=64, mode="nearest")
        >>> piqe(blocks).round(1).tolist()
        [83.3, 83.4]
        >>> piqe(torch.full((1, 1, 64, 64), 0.5)).tolist()  # no textured block to judge: PIQE's maximum
        [100.0]
    """
    return pyiqa_scores(images, "piqe", device=device)
