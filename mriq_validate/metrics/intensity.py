"""Brain intensity: where the image's brain sits on the [0, 1] intensity scale.

A safety net for images read at the wrong scale (12-bit values in 16-bit files divided by 65535, a wrong bit depth,
a generator's output range mapped wrongly): the downstream segmenter normalises each image, so Dice does not see a
set that is 16 times too dark, and the no-reference measures of Deo et al. 2025 (arXiv 2505.07175) are not built to.

Per image: a brain (foreground) mask is derived from the image itself by Otsu's threshold (Otsu, IEEE Trans. SMC 1979) on
log-intensity, largest connected component, holes filled; the score is a percentile of the intensities inside it.
Multiplying an image by c > 0 shifts its log-intensities by log c, so the mask does not change and the percentile
scales by exactly c: the ratio of the generated to the real value reads off a global scaling error directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import MetricError
from .base import PerImageMetric, Sample, register_metric

if TYPE_CHECKING:
    from ..session import RunContext

LOG_EPS = 1e-3  # log(x + LOG_EPS·max(x)): relative to the image's maximum, so the mask is scale-invariant
OTSU_BINS = 256


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold (maximum between-class variance) of ``values`` over ``bins`` equal bins spanning their range;
    the values' minimum when they are all equal."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    m0 = np.cumsum(counts * centres)[:-1]
    total, mean_total = float(counts.sum()), float((counts * centres).sum())
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_total * w0 / total - m0) ** 2 / (w0 * w1)
    return float(edges[1 + int(np.nanargmax(np.where(w0 * w1 > 0, between, -1.0)))])


def brain_mask(image: np.ndarray) -> np.ndarray:
    """The brain (foreground) of a 2D image: log-intensity above Otsu's threshold, largest connected component, holes
    filled. Unchanged when the image is multiplied by any c > 0; empty for an image without signal (max ≤ 0)."""
    from scipy import ndimage

    x = np.asarray(image, dtype=np.float64)
    top = float(x.max())
    if top <= 0:
        return np.zeros(x.shape, dtype=bool)
    logs = np.log(np.clip(x, 0.0, None) + LOG_EPS * top)
    mask = logs >= otsu_threshold(logs) if np.ptp(logs) > 0 else np.ones(x.shape, dtype=bool)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def brain_percentile(images: np.ndarray, q: float) -> np.ndarray:
    """The ``q``-th percentile of each image's intensities inside its :func:`brain_mask` (N×H×W or N×1×H×W → N);
    0 for an image without signal (it has no brain to measure, and no intensity)."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), *np.shape(images)[-2:])
    out = np.zeros(len(x))
    for i, img in enumerate(x):
        mask = brain_mask(img)
        if mask.any():
            out[i] = np.percentile(img[mask], q)
    return out


@register_metric
class BrainIntensity(PerImageMetric):
    """The ``percentile``-th percentile of each image's intensities inside its own brain mask (see the module)."""

    name = "brain_intensity"
    higher_is_better = True  # the failure it is for (a wrong scale) makes images darker; criteria bound it both ways
    valid_range = (0.0, 1.0)
    summary = "a percentile of the intensities inside each image's brain (log-Otsu mask), per image; catches a wrong intensity scale"
    limitations: ClassVar[tuple[str, ...]] = (
        "It sees where the brain's intensities sit on the [0, 1] scale, not what they show: noise, blur, anatomy and lesion "
        "errors move it little (every builtin stand-in within 4 % on builtin:mni-tumour).",
        "A high percentile is insensitive to contrast changes that keep the bright end in place (gamma 0.67 to 1.5 moves "
        "the 95th percentile by under 3 % on builtin:mni-tumour).",
        "Where a bright structure covers only a few per cent of the brain (vessels), a high percentile lies in it, so "
        "missing or blurred structures lower it as a scale error would.",
        "The brain mask is derived from each image (log-intensity Otsu); an image whose background is brighter than its "
        "brain gets a wrong mask.",
    )

    def __init__(self, percentile: float = 95.0) -> None:
        try:
            q = float(percentile)
        except (TypeError, ValueError):
            q = float("nan")
        if not 0 < q < 100:
            raise MetricError(f"metric 'brain_intensity': percentile must lie in (0, 100), got {percentile!r}")
        self.percentile = q

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "percentile": self.percentile,
                "brain_mask": f"Otsu ({OTSU_BINS} bins) on log(x + {LOG_EPS}·max), largest component, holes filled"}

    def scores(self, ctx: "RunContext", sample: Sample) -> np.ndarray:
        return brain_percentile(sample.images.numpy(), self.percentile)
