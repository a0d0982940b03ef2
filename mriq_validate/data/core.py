"""Reference data: train / test splits of 2D slices or 3D volumes with integer label masks, plus provenance.

Also the registry of builtin datasets (``builtin:NAME``). It is filled by the package ``__init__``, which imports
the dataset modules (they register on import); this module imports none of them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arrays import ROW_CHUNK_BYTES, BundleWriter, as_tensor, batches, read_bundle, release, rows_per_chunk, scratch_array, write_bundle
from ..cache import TEMP_SUFFIX, DiskCache, content_hash
from ..errors import DataError
from .contrasts import select_contrasts

SPLITS_SUFFIX = ".bundle"  # a cache entry of splits: one array bundle (:mod:`mriq_validate.arrays`), mapped when loaded
SPLITS_FORMAT = "mriq-splits/1"
IN_MEMORY_BYTES = 256 << 20  # a channel subset up to this size is copied into memory; a larger one into a mapped file
#: One synthesised item: image C×H×W (or C×D×H×W) in [0, 1], integer labels H×W (D×H×W), integer covariates.
Case = tuple[np.ndarray, np.ndarray, dict[str, int]]


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
        pick = lambda s: Split(channel_subset(s.images, idx), s.masks, s.ids, s.covariates)  # noqa: E731
        return replace(self, train=pick(self.train), test=pick(self.test), contrasts=tuple(self.contrasts[i] for i in idx),
                       provenance={**self.provenance, "contrasts_selected": [self.contrasts[i] for i in idx]})

    def digests(self) -> dict[str, str]:
        """Content hashes of the splits (for provenance and cache keys)."""
        return {"train": self.train.digest(), "test": self.test.digest()}


def channel_subset(images: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """The channels ``idx`` of ``images`` (N×C×...) as a contiguous tensor: copied into memory when small, else into a
    mapped scratch file, chunk by chunk (the file is unlinked once mapped, so it goes when the tensor does; POSIX)."""
    shape = (images.shape[0], len(idx), *images.shape[2:])
    if int(np.prod(shape)) * images.element_size() <= IN_MEMORY_BYTES:
        return images[:, torch.as_tensor(idx)].contiguous()
    fd, name = tempfile.mkstemp(prefix="mriq-channels-", suffix=".bundle")
    os.close(fd)
    out = scratch_array(Path(name), shape, images.numpy().dtype)
    try:
        os.unlink(name)
    except OSError:  # Windows cannot unlink a mapped file: it stays in the temp folder
        pass
    src, pick = images.numpy(), np.asarray(idx)
    for sl in batches(shape[0], rows_per_chunk(src)):
        out[sl] = src[sl][:, pick]
    return as_tensor(out)


DatasetBuilder = Callable[..., ReferenceData]
BUILTIN_DATASETS: dict[str, DatasetBuilder] = {}
BUILTIN_OPTIONS: dict[str, tuple[str, ...]] = {}  # the data options (besides slicing) each builtin takes


def register_dataset(name: str, options: tuple[str, ...] = ()) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register a builtin dataset builder under ``builtin:<name>``; it is called as ``builder(cache, **opts)`` with the
    data ``options`` it takes (e.g. ``size``) that were given."""

    def deco(fn: DatasetBuilder) -> DatasetBuilder:
        BUILTIN_DATASETS[name] = fn
        BUILTIN_OPTIONS[name] = tuple(options)
        return fn

    return deco


def check_size(value: Any, parts: tuple[str, ...], where: str) -> tuple[int, ...]:
    """The data option ``size`` as one positive integer per name in ``parts`` (e.g. ``("n_train", "n_test")``);
    DataError naming the option, the value and what was expected."""
    items = value if isinstance(value, (list, tuple)) else [value]
    ok = len(items) == len(parts) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in items)
    if not ok:
        want = f"[{', '.join(parts)}]" if len(parts) > 1 else parts[0]
        raise DataError(f"{where}: data option size is {value!r}; expected {want}, "
                        f"{'each ' if len(parts) > 1 else ''}a whole number >= 1")
    return tuple(int(v) for v in items)


def save_splits(splits: Mapping[str, Split], path: Path) -> None:
    """Save named splits as one array bundle at ``path`` (images float32, masks int64, covariates as arrays, ids in the
    metadata), copied chunk by chunk."""
    arrays: dict[str, Any] = {}
    for name, split in splits.items():
        arrays[f"{name}.images"] = split.images
        arrays[f"{name}.masks"] = split.masks
        arrays.update({f"{name}.cov.{k}": np.asarray(v) for k, v in split.covariates.items()})
    write_bundle(path, arrays, _meta({n: s.ids for n, s in splits.items()}, {n: list(s.covariates) for n, s in splits.items()}))


def _meta(ids: Mapping[str, Sequence[str]], covariates: Mapping[str, list[str]]) -> dict[str, Any]:
    return {"format": SPLITS_FORMAT, "splits": list(ids), "ids": {s: list(v) for s, v in ids.items()}, "covariates": dict(covariates)}


def write_splits(path: Path, plan: Mapping[str, Sequence[str]], case: Callable[[str, int], Case]) -> None:
    """Synthesise the splits of ``plan`` (split name → item ids) into a bundle at ``path`` as :func:`save_splits` lays it
    out, one item at a time: ``case(split, i)`` is item ``i`` of ``split``. Nothing larger than one item is held."""
    first = next((s for s, ids in plan.items() if ids), None)
    if first is None:
        raise DataError(f"cannot build {path.name}: every split is empty")
    image, labels, cov = head = case(first, 0)
    specs: dict[str, tuple[tuple[int, ...], Any]] = {}
    for s, ids in plan.items():
        specs[f"{s}.images"] = ((len(ids), *image.shape), np.float32)
        specs[f"{s}.masks"] = ((len(ids), 1, *labels.shape), np.int64)
        specs.update({f"{s}.cov.{k}": ((len(ids),), np.int64) for k in cov})
    w = BundleWriter(path, specs, _meta(plan, {s: list(cov) for s in plan}))
    per_release = max(1, ROW_CHUNK_BYTES // (image.size * 4 + labels.size * 8))  # the pages written are given back every ~64 MB
    for s, ids in plan.items():
        for chunk in batches(len(ids), per_release):
            for i in range(chunk.start, chunk.stop):
                image, labels, cov = head if (s, i) == (first, 0) else case(s, i)
                w.arrays[f"{s}.images"][i] = image
                w.arrays[f"{s}.masks"][i, 0] = labels
                for k, v in cov.items():
                    w.arrays[f"{s}.cov.{k}"][i] = v
    w.close()
    release()


def load_splits(path: Path) -> dict[str, Split]:
    """The splits saved by :func:`save_splits` or :func:`write_splits`, mapped copy-on-write (nothing is read until
    used); ValueError naming the file when it is not a splits bundle."""
    arrays, meta = read_bundle(path)
    if meta.get("format") != SPLITS_FORMAT:
        raise ValueError(f"{path}: not a splits bundle (format {meta.get('format')!r}, expected {SPLITS_FORMAT!r})")
    out = {}
    for n in meta["splits"]:
        cov = {k: np.array(arrays[f"{n}.cov.{k}"]) for k in meta["covariates"][n]}
        out[n] = Split(as_tensor(arrays[f"{n}.images"]), as_tensor(arrays[f"{n}.masks"]), tuple(str(i) for i in meta["ids"][n]), cov)
    return out


def cached_splits(cache: DiskCache, kind: str, key: str, fill: Callable[[Path], None]) -> dict[str, Split]:
    """The splits of cache entry ``kind/key`` (:data:`SPLITS_SUFFIX`), mapped; on a miss ``fill(path)`` writes them
    (:func:`save_splits` or :func:`write_splits`) into a temporary file next to the entry, which is then moved into place
    atomically with its SHA-256 (:meth:`.DiskCache.get_or_create`), so a cohort is never held whole in memory."""
    target = cache.path(kind, key, SPLITS_SUFFIX)
    built: list[Path] = []

    def create() -> dict[str, Split]:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=TEMP_SUFFIX)  # cache clear knows these
        os.close(fd)
        built.append(Path(name))
        try:
            fill(built[0])
            return load_splits(built[0])
        except BaseException:
            built[0].unlink(missing_ok=True)
            raise

    def save(_: dict[str, Split], tmp: Path) -> None:
        os.replace(built[0], tmp)  # the mapping made by create() follows the file

    return cache.get_or_create(kind, key, SPLITS_SUFFIX, create, save, load_splits)
