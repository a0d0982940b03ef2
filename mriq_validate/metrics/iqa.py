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
    limitations = (
        "No-reference and per image: insensitive to localised lesion edits and to anatomical implausibility "
        "(Deo et al. 2025); it cannot clear a model on its own.",
        "Designed for camera distortions of natural photographs (blockiness, noise; Venkatanath et al. 2015), not for MRI "
        "physics; values depend on the intensity range and on the share of background in the slice.",
    )

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
    limitations = (
        "No-reference: the distance of an image's block statistics (sharpness, noise, blur) to a pristine model "
        "(Mittal et al. 2013); insensitive to localised lesion edits and to anatomy (Deo et al. 2025).",
        "The pristine model is fitted on this run's real training slices: values compare only within one data set, "
        "block size and sharpness threshold, never with the natural-image NIQE of other tools.",
    )

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

    Nothing is downloaded: a missing file is an ERROR naming it. The direction is pyiqa's own declaration for the chosen
    metric (``lower_better`` in ``pyiqa.default_model_configs``), read when the criterion is created and kept on the
    instance: two ``pyiqa`` criteria of one run can point in opposite directions.
    """

    name = "pyiqa"
    higher_is_better = False  # the class default only (what `mriq-validate list` shows); each instance sets its own
    needs = ("weights",)
    summary = "a pyiqa NR metric (e.g. brisque, musiq) with weights from params.weights (no download)"
    limitations = (
        "BRISQUE, MUSIQ, NIMA and pyiqa's other no-reference metrics were designed or trained on natural photographs: "
        "they score camera-style distortions, not MRI physics or anatomy, and are insensitive to localised lesion edits "
        "(Deo et al. 2025).",
        "Grey slices are repeated to three channels for networks trained on colour photographs; scores depend on the "
        "weights file, which the report identifies by its SHA-256.",
    )

    def __init__(self, metric: str = "brisque", weights: str | None = None) -> None:
        from pathlib import Path

        from .._compat import import_pyiqa
        from ..errors import MetricError, MissingFileError

        import_pyiqa()
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        if metric not in DEFAULT_CONFIGS:
            raise MetricError(f"metric 'pyiqa': unknown pyiqa metric {metric!r}; expected one of {sorted(DEFAULT_CONFIGS)}")
        if not weights:
            raise MetricError(f"metric 'pyiqa' ({metric}): params.weights must name the weights file (nothing is downloaded)")
        path = Path(weights)
        if not path.is_file():
            raise MissingFileError(f"metric 'pyiqa' ({metric}): weights file {path} does not exist; download it once on a connected "
                                   f"machine (pyiqa's model zoo names the file) and give its path as params.weights")
        self.metric, self.weights = metric, path
        self.higher_is_better = not DEFAULT_CONFIGS[metric].get("lower_better", False)  # as pyiqa's InferenceModel reads it

    def config(self) -> dict[str, Any]:
        from ..cache import content_hash

        return {"name": self.name, "pyiqa_metric": self.metric, "weights": str(self.weights),
                "weights_sha256_16": content_hash(self.weights.read_bytes()), "channels": "grey repeated to 3", "data_range": "[0, 1]",
                "higher_is_better": self.higher_is_better}

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        from ..errors import MetricError

        m = pyiqa_metric(self.metric, str(ctx.device), pretrained_model_path=str(self.weights))
        if bool(m.lower_better) == self.higher_is_better:
            raise MetricError(f"metric 'pyiqa' ({self.metric}): the loaded model says lower_better={m.lower_better}, "
                              f"pyiqa's registry says {not self.higher_is_better}; the direction is ambiguous")
        with torch.no_grad():
            return torch.cat([m(sample.images[i : i + 16].repeat(1, 3, 1, 1).to(ctx.device)).flatten().cpu()
                              for i in range(0, len(sample), 16)]).double().numpy()
