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
