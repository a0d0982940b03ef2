"""Reference data: train / test splits of 2D slices or 3D volumes with integer label masks, plus provenance.

Also the registry of builtin datasets (``builtin:NAME``). It is filled by the package ``__init__``, which imports
the dataset modules (they register on import); this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import DiskCache, content_hash
from ..errors import DataError
from .contrasts import select_contrasts


@dataclass(frozen=True)
class Split:
    """One split: ``images`` N×C×H×W slices or N×C×D×H×W volumes, float32 in [0, 1] (one channel per contrast, in
    ``ReferenceData.contrasts`` order); ``masks`` N×1×H×W (N×1×D×H×W) int64 labels (all zero for a cohort without
    annotations); per-item ids and covariates. An item is a slice or a volume."""

    images: torch.Tensor
    masks: torch.Tensor
    ids: tuple[str, ...]
    covariates: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        im, ms = tuple(self.images.shape), tuple(self.masks.shape)
        if len(im) not in (4, 5) or im[1] < 1 or ms != (im[0], 1, *im[2:]):
            raise DataError(f"split images {im} and masks {ms}: expected images N×C×H×W and masks N×1×H×W (slices), or "
                            f"N×C×D×H×W and N×1×D×H×W (volumes)")
        if len(self.ids) != n or any(len(v) != n for v in self.covariates.values()):
            raise DataError(f"split has {n} slices but {len(self.ids)} ids / covariates of other lengths")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def spatial_dims(self) -> int:
        """2 for slices, 3 for volumes."""
        return self.images.ndim - 2

    def subset(self, index: np.ndarray | list[int]) -> "Split":
        """The slices at ``index`` (in that order)."""
        idx = np.asarray(index, dtype=np.int64)
        t = torch.as_tensor(idx)
        return Split(self.images[t], self.masks[t], tuple(self.ids[i] for i in idx), {k: v[idx] for k, v in self.covariates.items()})

    def digest(self) -> str:
        """Content hash of images and masks."""
        return content_hash(self.images, self.masks)


@dataclass(frozen=True)
class ReferenceData:
    """Real reference data for one suite run.

    ``labels`` maps label names to mask values; ``regions`` maps region names (e.g. ``whole_tumour``) to
    the label values they join. ``contrasts`` names the image channels (canonical names, :mod:`.contrasts`);
    ``has_masks`` is False for a cohort without annotations (its masks are all zero and criteria that need masks
    cannot apply). ``provenance`` says what is real, what is simulated and how it was prepared, and which file or
    channel each contrast was read from.
    """

    name: str
    train: Split
    test: Split
    labels: dict[str, int]
    regions: dict[str, tuple[int, ...]]
    spacing_mm: tuple[float, ...]  # one per spatial axis: (row, column) for slices, (D, H, W) for volumes
    contrasts: tuple[str, ...]
    provenance: dict[str, Any]
    has_masks: bool = True

    def __post_init__(self) -> None:
        if len(self.contrasts) != self.train.images.shape[1] or self.test.images.shape[1:] != self.train.images.shape[1:]:
            raise DataError(f"data {self.name!r}: contrasts {list(self.contrasts)} but train images {tuple(self.train.images.shape)} "
                            f"and test images {tuple(self.test.images.shape)}; expected one channel per contrast")
        if len(self.spacing_mm) != self.train.spatial_dims:
            raise DataError(f"data {self.name!r}: spacing {tuple(self.spacing_mm)} mm for {self.train.spatial_dims}D items "
                            f"{tuple(self.train.images.shape)}; expected one spacing per spatial axis")

    @property
    def image_shape(self) -> tuple[int, ...]:
        """C×H×W of one slice, or C×D×H×W of one volume."""
        return tuple(self.train.images.shape[1:])

    @property
    def spatial_dims(self) -> int:
        """2 for slices, 3 for volumes."""
        return self.train.spatial_dims

    def region_mask(self, masks: torch.Tensor, region: str) -> torch.Tensor:
        """Boolean mask of ``region`` (a region name or a label name)."""
        values = self.regions.get(region) or ((self.labels[region],) if region in self.labels else None)
        if values is None:
            known = sorted({*self.regions, *self.labels})
            raise DataError(f"unknown region {region!r} for data {self.name!r}; expected one of {known}")
        return torch.isin(masks, torch.tensor(values, dtype=masks.dtype))

    def select(self, contrasts: list[str] | tuple[str, ...] | None) -> "ReferenceData":
        """This data with only the ``contrasts`` asked for (canonical names or synonyms, in that order); all when None.
        DataError naming an unknown contrast and the contrasts the data has."""
        idx = select_contrasts(self.contrasts, contrasts, f"data {self.name!r}")
        if idx == list(range(len(self.contrasts))):
            return self
        t = torch.as_tensor(idx)
        pick = lambda s: Split(s.images[:, t].contiguous(), s.masks, s.ids, s.covariates)  # noqa: E731
        return replace(self, train=pick(self.train), test=pick(self.test), contrasts=tuple(self.contrasts[i] for i in idx),
                       provenance={**self.provenance, "contrasts_selected": [self.contrasts[i] for i in idx]})

    def digests(self) -> dict[str, str]:
        """Content hashes of the splits (for provenance and cache keys)."""
        return {"train": self.train.digest(), "test": self.test.digest()}


DatasetBuilder = Callable[[DiskCache], ReferenceData]
BUILTIN_DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register a builtin dataset builder under ``builtin:<name>``."""

    def deco(fn: DatasetBuilder) -> DatasetBuilder:
        BUILTIN_DATASETS[name] = fn
        return fn

    return deco


def save_splits(splits: dict[str, Split], path: Path) -> None:
    """Save named splits to one npz file at ``path``."""
    arrays: dict[str, np.ndarray] = {}
    for name, split in splits.items():
        arrays[f"{name}.images"] = split.images.numpy()
        arrays[f"{name}.masks"] = split.masks.numpy().astype(np.uint8)
        arrays[f"{name}.ids"] = np.array(split.ids)
        arrays.update({f"{name}.cov.{k}": v for k, v in split.covariates.items()})
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_splits(path: Path) -> dict[str, Split]:
    """Load the splits saved by :func:`save_splits`."""
    with np.load(path, allow_pickle=False) as z:
        names = sorted({k.split(".", 1)[0] for k in z.files})
        out = {}
        for n in names:
            cov = {k.split(".", 2)[2]: z[k] for k in z.files if k.startswith(f"{n}.cov.")}
            ids = tuple(str(i) for i in z[f"{n}.ids"])
            out[n] = Split(torch.from_numpy(z[f"{n}.images"]), torch.from_numpy(z[f"{n}.masks"].astype(np.int64)), ids, cov)
        return out
