"""The ground floor: the types every layer speaks, and nothing else.

- :class:`Sample`: a set of images to measure (and their masks), where they came from.
- :class:`ModelContext`: what a model factory receives (real training split, item shape, device, seed, labels,
  contrasts, voxel size); model adapters (:mod:`.models`, :mod:`.adapters`) and the model process (:mod:`.isolation`)
  are written against it.
- :class:`MeasureContext`: what a measure may use of the run (data, device, seed, the cache, progress, the real
  splits, prepared samples, the downstream segmenter and its predictions). :class:`mriq_validate.session.RunContext`
  implements it; measures (:mod:`.metrics`) are written against this protocol, not the run.

Only torch and :mod:`.errors` are imported, for type annotations too, so every module can import this one and it
imports none back (the reference data and the cache appear as ``Any``, named in comments).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .errors import ModelError



@dataclass(frozen=True)
class Sample:
    """A set of images to measure: N×C×H×W slices or N×C×D×H×W volumes, float in [0, 1] (one channel per contrast),
    optional N×1×H×W or N×1×D×H×W label masks, and where it came from."""

    images: torch.Tensor
    masks: torch.Tensor | None
    origin: str
    channel: int | None = None  # the data's channel this one-contrast sample holds (see ``contrast``); None: all of them

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def contrast(self, channel: int, name: str) -> "Sample":
        """The one-contrast sample of ``channel`` (named ``name`` in its origin)."""
        return Sample(self.images[:, channel:channel + 1], self.masks, f"{self.origin} [{name}]", channel)

    def same_contrasts(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` of the data (e.g. the real training split) restricted to the contrast this sample holds."""
        return images if self.channel is None else images[:, self.channel:self.channel + 1]


@dataclass(frozen=True)
class ModelContext:
    """What a model factory receives: the real training split, the item shape, device, seed, labels and contrasts.

    ``train_images`` is N×C×H×W slices or N×C×D×H×W volumes (one channel per contrast), ``train_masks`` N×1×H×W
    (N×1×D×H×W); ``image_shape`` is (C, H, W) or (C, D, H, W), the shape of one item a model must return;
    ``contrasts`` names the C channels in order (canonical names such as
    ``("t1", "t1c", "t2", "flair")``, :mod:`mriq_validate.data.contrasts`). Left empty, :func:`~mriq_validate.models.load_model` fills it
    from the reference data. ``spacing_mm`` is the voxel size of an item, one entry per spatial axis ((row, column)
    or (D, H, W), in mm; empty when not known). Build it from the data with :meth:`for_data`.
    """

    train_images: torch.Tensor
    train_masks: torch.Tensor
    image_shape: tuple[int, ...]
    device: torch.device
    seed: int
    labels: dict[str, int] = field(default_factory=dict)
    contrasts: tuple[str, ...] = ()
    spacing_mm: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.contrasts and len(self.contrasts) != self.image_shape[0]:
            raise ModelError(f"model context: contrasts {list(self.contrasts)} but image_shape {tuple(self.image_shape)}; "
                             f"expected one contrast per channel (image_shape[0] = {len(self.contrasts)})")

    @classmethod
    def for_data(cls, data: Any, device: torch.device, seed: int) -> ModelContext:
        """The context for a model of ``data``: its training split, item shape, labels and contrasts."""
        return cls(data.train.images, data.train.masks, data.image_shape, device, seed, dict(data.labels), tuple(data.contrasts),
                   tuple(float(v) for v in data.spacing_mm))


class MeasureContext(Protocol):
    """What a measure may use of the run; :class:`mriq_validate.session.RunContext` implements it."""

    seed: int
    cache: Any  # the run's mriq_validate.cache.DiskCache
    progress: Callable[[str], None]

    @property
    def data(self) -> Any: ...  # the reference data, mriq_validate.data.core.ReferenceData

    @property
    def device(self) -> torch.device: ...

    @property
    def n_classes(self) -> int: ...

    def real(self, split: str = "test") -> Sample: ...

    def prepare(self, metric: Any, sample: Sample) -> Any: ...

    def segmenter(self, cfg: Any) -> Any: ...

    def segmenters(self, cfgs: list[Any]) -> list[Any]: ...

    def predict(self, cfg: Any, images: torch.Tensor) -> torch.Tensor: ...
