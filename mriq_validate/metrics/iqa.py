"""No-reference image quality through pyiqa (runs offline; weight-based metrics need a user-supplied file).

pyiqa is licensed CC BY-NC-SA 4.0 (non-commercial); it is installed separately, see the README.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .base import PerImageMetric, Sample, register_metric

if TYPE_CHECKING:
    from ..session import RunContext


@lru_cache(maxsize=8)
def pyiqa_metric(name: str, device: str, **kwargs: Any) -> Any:
    """A pyiqa metric object, created once per (name, device, options)."""
    from .._compat import import_pyiqa

    return import_pyiqa().create_metric(name, device=torch.device(device), **kwargs)


def pyiqa_scores(name: str, images: torch.Tensor, device: torch.device, batch_size: int = 32) -> np.ndarray:
    """Per-image scores of pyiqa metric ``name`` on grey N×1×H×W images in [0, 1]."""
    metric = pyiqa_metric(name, str(device))
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            out.append(metric(images[i : i + batch_size].to(device)).flatten().cpu())
    return torch.cat(out).double().numpy()


@register_metric
class Piqe(PerImageMetric):
    """PIQE (Venkatanath et al. 2015), a no-reference, training-free distortion score; lower is better."""

    name = "piqe"
    higher_is_better = False
    valid_range = (0.0, 100.0)
    needs = ()
    summary = "PIQE no-reference quality (pyiqa), per image, lower is better"

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "library": "pyiqa 0.1.16 'piqe'", "channels": "grey, 1 channel as given",
                "data_range": "[0, 1]", "resize": "none (native slice size)"}

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        return pyiqa_scores("piqe", sample.images, ctx.device)


@register_metric
class NiqeMri(PerImageMetric):
    """NIQE with its pristine model fitted on the real training slices (an MRI-fitted NIQE; Mittal et al. 2013).

    The natural-image NIQE parameters describe photographs; here the multivariate Gaussian of sharp-block NSS
    features is fitted on the reference MRI itself (cached by content hash), at a block size that suits the slice.
    """

    name = "niqe_mri"
    higher_is_better = False
    valid_range = (0.0, np.inf)
    needs = ("train",)
    summary = "NIQE with the pristine model fitted on the real training slices, per image, lower is better"

    def __init__(self, block_size: int = 32, sharpness_threshold: float = 0.75) -> None:
        from ..errors import MetricError

        if block_size < 8 or not 0 <= sharpness_threshold < 1:
            raise MetricError(f"metric 'niqe_mri': block_size >= 8 and sharpness_threshold in [0, 1) expected, got {block_size}, {sharpness_threshold}")
        self.block_size, self.sharpness_threshold = int(block_size), float(sharpness_threshold)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "pristine": "real train split", "block_size": self.block_size,
                "sharpness_threshold": self.sharpness_threshold, "library": "pyiqa 0.1.16 niqe_arch features"}

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        from .niqe import cached_fit_niqe, niqe_scores

        model = cached_fit_niqe(ctx.data.train.images, ctx.cache, self.block_size, self.sharpness_threshold)
        return niqe_scores(sample.images, model)


@register_metric
class PyiqaWeighted(PerImageMetric):
    """Any pyiqa no-reference metric that needs a weights file (BRISQUE, MUSIQ, NIMA, ...), from a user-supplied path.

    Nothing is downloaded: a missing file is an ERROR naming it. Direction and range come from pyiqa.
    """

    name = "pyiqa"
    higher_is_better = False  # replaced per instance from pyiqa's ``lower_better``
    needs = ("weights",)
    summary = "a pyiqa NR metric (e.g. brisque, musiq) with weights from params.weights (no download)"

    def __init__(self, metric: str = "brisque", weights: str | None = None) -> None:
        from pathlib import Path

        from ..errors import MetricError, MissingFileError

        if not weights:
            raise MetricError(f"metric 'pyiqa' ({metric}): params.weights must name the weights file (nothing is downloaded)")
        path = Path(weights)
        if not path.is_file():
            raise MissingFileError(f"metric 'pyiqa' ({metric}): weights file {path} does not exist; download it once on a connected "
                                   f"machine (pyiqa's model zoo names the file) and give its path as params.weights")
        self.metric, self.weights = metric, path

    def config(self) -> dict[str, Any]:
        from ..cache import content_hash

        return {"name": self.name, "pyiqa_metric": self.metric, "weights": str(self.weights),
                "weights_sha256_16": content_hash(self.weights.read_bytes()), "channels": "grey repeated to 3", "data_range": "[0, 1]"}

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        m = pyiqa_metric(self.metric, str(ctx.device), pretrained_model_path=str(self.weights))
        type(self).higher_is_better = not m.lower_better
        with torch.no_grad():
            return torch.cat([m(sample.images[i : i + 16].repeat(1, 3, 1, 1).to(ctx.device)).flatten().cpu()
                              for i in range(0, len(sample), 16)]).double().numpy()
