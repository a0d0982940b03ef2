"""No-reference image quality as metrics: PIQE and other pyiqa metrics, and an MRI-fitted NIQE (runs offline;
weight-based metrics need a user-supplied file). The maths: :mod:`.functional.iqa` and :mod:`.functional.niqe`.

pyiqa is licensed CC BY-NC-SA 4.0 (non-commercial); it is installed separately, see the README.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..contract import MeasureContext
from ..cache import content_hash
from ..errors import MetricError, MissingFileError
from .base import PerImageMetric, Sample, check_int, check_number, register_metric
from .functional import iqa as F
from .functional.intensity import axial_brain_slices
from .functional.niqe import NiqeModel, fit_niqe, niqe_mri, niqe_scores

if TYPE_CHECKING:
    from ..cache import DiskCache


def cached_fit_niqe(pristine_images: np.ndarray | torch.Tensor, cache: "DiskCache", block_size: int = 32,
                    sharpness_threshold: float = 0.75) -> NiqeModel:
    """:func:`~.functional.niqe.fit_niqe`, stored in ``cache`` as ``niqe/<key>.npz``, keyed by the images' content and
    the settings."""
    key = content_hash(pristine_images, "niqe-mri/1", int(block_size), float(sharpness_threshold))
    return cache.get_or_create("niqe", key, ".npz", lambda: fit_niqe(pristine_images, block_size, sharpness_threshold),
                               lambda m, p: m.save(p), NiqeModel.load)


@register_metric
class Piqe(PerImageMetric):
    """PIQE (Venkatanath et al. 2015), a no-reference, training-free distortion score; lower is better."""

    name = "piqe"
    channels = "each"
    native_dims = 2
    functional = staticmethod(F.piqe)
    higher_is_better = False
    valid_range = (0.0, 100.0)
    summary = "PIQE no-reference quality (pyiqa), per image, lower is better"
    limitations = (
        "No-reference and per image: insensitive to localised lesion edits and to anatomical implausibility "
        "(Deo et al. 2025); it cannot clear a model on its own.",
        "Designed for camera distortions of natural photographs (blockiness, noise; Venkatanath et al. 2015), not for MRI "
        "physics; values depend on the intensity range and on the share of background in the slice.",
    )

    def __init__(self, volume_aggregation: str = "mean") -> None:
        self.check_volume_aggregation(volume_aggregation)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "library": "pyiqa 0.1.16 'piqe'", "channels": "grey, 1 channel as given",
                "data_range": "[0, 1]", "resize": "none (native slice size)", **self.volume_config()}

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        return F.piqe(sample.images, ctx.device)


@register_metric
class NiqeMri(PerImageMetric):
    """NIQE with its pristine model fitted on the real training slices (an MRI-fitted NIQE; Mittal et al. 2013).

    The natural-image NIQE parameters describe photographs; here the multivariate Gaussian of sharp-block NSS
    features is fitted on the reference MRI itself (cached by content hash), at a block size that suits the slice.
    """

    name = "niqe_mri"
    channels = "each"
    native_dims = 2
    functional = staticmethod(niqe_mri)
    higher_is_better = False
    valid_range = (0.0, np.inf)
    summary = "NIQE with the pristine model fitted on the real training slices, per image, lower is better"
    limitations = (
        "No-reference: the distance of an image's block statistics (sharpness, noise, blur) to a pristine model "
        "(Mittal et al. 2013); insensitive to localised lesion edits and to anatomy (Deo et al. 2025).",
        "The pristine model is fitted on this run's real training slices: values compare only within one data set, "
        "block size and sharpness threshold, never with the natural-image NIQE of other tools.",
    )

    def __init__(self, block_size: int = 32, sharpness_threshold: float = 0.75, volume_aggregation: str = "mean") -> None:
        self.block_size = check_int(self.name, "block_size", block_size, 8)
        if self.block_size % 2:
            raise MetricError(f"metric 'niqe_mri': block_size must be even (it is halved for the second scale), got {block_size!r}")
        self.sharpness_threshold = check_number(self.name, "sharpness_threshold", sharpness_threshold, lambda t: 0 <= t < 1, "in [0, 1)")
        self.check_volume_aggregation(volume_aggregation)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "pristine": "real train split", "block_size": self.block_size,
                "sharpness_threshold": self.sharpness_threshold, "library": "pyiqa 0.1.16 niqe_arch features", **self.volume_config()}

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        pristine = sample.same_contrasts(ctx.data.train.images)
        if pristine.ndim == 5:  # training volumes: the pristine slices are their axial slices with brain, as scored
            pristine = axial_brain_slices(pristine)[0]
        model = cached_fit_niqe(pristine, ctx.cache, self.block_size, self.sharpness_threshold)
        return niqe_scores(sample.images, model)


@register_metric
class PyiqaWeighted(PerImageMetric):
    """Any pyiqa no-reference metric that needs a weights file (BRISQUE, MUSIQ, NIMA, ...), from a user-supplied path.

    Nothing is downloaded: a missing file is an ERROR naming it. The direction is pyiqa's own declaration for the chosen
    metric (``lower_better`` in ``pyiqa.default_model_configs``), read when the criterion is created and kept on the
    instance: two ``pyiqa`` criteria of one run can point in opposite directions.
    """

    name = "pyiqa"
    channels = "each"
    native_dims = 2
    functional = staticmethod(F.pyiqa_scores)
    higher_is_better = False  # the class default only (what `mriq-validate list` shows); each instance sets its own
    summary = "a pyiqa NR metric (e.g. brisque, musiq) with weights from params.weights (no download)"
    limitations = (
        "BRISQUE, MUSIQ, NIMA and pyiqa's other no-reference metrics were designed or trained on natural photographs: "
        "they score camera-style distortions, not MRI physics or anatomy, and are insensitive to localised lesion edits "
        "(Deo et al. 2025).",
        "Grey slices are repeated to three channels for networks trained on colour photographs; scores depend on the "
        "weights file, which the report identifies by its SHA-256.",
    )

    def __init__(self, metric: str = "brisque", weights: str | None = None, volume_aggregation: str = "mean") -> None:
        from .._compat import import_pyiqa

        self.check_volume_aggregation(volume_aggregation)
        import_pyiqa()
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        if metric not in DEFAULT_CONFIGS:
            raise MetricError(f"metric 'pyiqa': unknown pyiqa metric {metric!r}; expected one of {sorted(DEFAULT_CONFIGS)}")
        if not isinstance(weights, (str, Path)) or not str(weights):
            raise MetricError(f"metric 'pyiqa' ({metric}): params.weights must name the weights file (nothing is downloaded)")
        path = Path(weights)
        if not path.is_file():
            raise MissingFileError(f"metric 'pyiqa' ({metric}): weights file {path} does not exist; download it once on a connected "
                                   f"machine (pyiqa's model zoo names the file) and give its path as params.weights")
        self.metric, self.weights = metric, path
        self.higher_is_better = not DEFAULT_CONFIGS[metric].get("lower_better", False)  # as pyiqa's InferenceModel reads it

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "pyiqa_metric": self.metric, "weights": str(self.weights),
                "weights_sha256_16": content_hash(self.weights.read_bytes()), "channels": "grey repeated to 3", "data_range": "[0, 1]",
                "higher_is_better": self.higher_is_better, **self.volume_config()}

    def scores(self, ctx: MeasureContext, sample: Sample) -> np.ndarray:
        m = F.pyiqa_metric(self.metric, str(ctx.device), pretrained_model_path=str(self.weights))
        if bool(m.lower_better) == self.higher_is_better:
            raise MetricError(f"metric 'pyiqa' ({self.metric}): the loaded model says lower_better={m.lower_better}, "
                              f"pyiqa's registry says {not self.higher_is_better}; the direction is ambiguous")
        return F.pyiqa_scores(sample.images, self.metric, self.weights, channels=3, device=ctx.device, batch_size=16)
