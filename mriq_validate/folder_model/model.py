"""A folder of images generated beforehand, used as the model under test (:class:`FolderModel`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bitdepth import narrow_bits, refusal
from ..cache import content_hash
from ..errors import ModelError
from .matching import Unit, _lower, folder_units
from .reading import (MANIFEST, SIDECAR, Stored, VolumeGrid, _as_images, _as_stack, _item, _suffix, read_range,
                      read_stored, to_labels, to_unit)


class FolderModel:
    """Pre-generated images (and masks) in a folder, offered through ``sample``; ``labels`` (the data's label set)
    checks the masks file by file; ``contrasts`` names the C channels of ``image_shape`` (C, H, W) or (C, D, H, W), and
    ``name_of`` maps a file's contrast token to such a name (``mriq_validate.data.contrasts.contrast_name``: synonyms
    such as ``t1ce`` or ``FLAIR`` are understood; default: lower case). For volumes, ``grid`` reads NIfTI files onto
    the data's grid and checks their spacing (without it, NIfTI arrays are taken as D×H×W, as ``.npy`` files are)."""

    def __init__(self, folder: Path, image_shape: tuple[int, ...], labels: set[int] | None = None,
                 contrasts: tuple[str, ...] = (), name_of: Callable[[str], str] | None = None, grid: VolumeGrid | None = None) -> None:
        self.folder, self.shape, self.labels = folder, tuple(image_shape), labels
        self.contrasts, self.name_of, self.grid = tuple(contrasts), name_of or _lower, grid
        if len(self.shape) not in (3, 4):
            raise ModelError(f"model folder {folder}: image shape {self.shape}; expected (C, H, W) for slices or (C, D, H, W) for volumes")
        if self.contrasts and len(self.contrasts) != self.shape[0]:
            raise ModelError(f"model folder {folder}: contrasts {list(self.contrasts)} for images of shape {self.shape}; "
                             f"expected one contrast per channel")
        self.value_range = read_range(folder)
        self.unused: list[Path] = []
        self._load(self._units())

    def _units(self) -> list[Unit]:
        if (self.folder / MANIFEST).is_file():
            raise ModelError(f"model folder {self.folder} holds {MANIFEST} (written by mriq-validate export-masks); "
                             f"open it with open_folder_model, as --mriq-model does")
        units, self.unused = folder_units(self.folder, self.contrasts, self.name_of)
        return units

    def _on_grid(self, stored: Stored, path: Path) -> Stored:
        """For volume data: a NIfTI file's array turned onto the data's D×H×W grid (``grid``), its spacing and size
        checked against the data's; a PNG refused. Slice data: ``stored`` as it is."""
        if len(self.shape) != 4:
            return stored
        size = "×".join(map(str, self.shape[1:]))
        if _suffix(path) == ".png":
            raise ModelError(f"{path}: a PNG holds a 2D slice; the data are volumes (D×H×W = {size}): save each volume as NIfTI "
                             f"(.nii.gz) or as .npy on the data's grid")
        if stored.affine is None or self.grid is None:
            return stored
        if stored.array.ndim not in (3, 4):
            raise ModelError(f"{path}: NIfTI of shape {stored.array.shape}; expected one volume X×Y×Z (or X×Y×Z×C with the contrasts "
                             f"along the fourth axis) on the data's grid D×H×W = {size}")
        arr, spacing = self.grid.to_grid(stored.array, stored.affine)
        want = tuple(float(v) for v in self.grid.spacing_mm)
        d, h, w = self.shape[1:]
        where = (f"NIfTI of shape {'×'.join(map(str, stored.array.shape))} (X×Y×Z{'×C' if stored.array.ndim == 4 else ''}); "
                 f"expected the data's grid, D×H×W = {size} (X×Y×Z = {w}×{h}×{d} in RAS)")
        if arr.ndim not in (3, 4) or tuple(arr.shape[-3:]) != tuple(self.shape[1:]):
            raise ModelError(f"{path}: {where}, got {'×'.join(map(str, arr.shape))} on it; resample or crop the volume onto the "
                             f"reference data's grid")
        if len(spacing) != len(want) or any(abs(a - b) > self.grid.tolerance_mm for a, b in zip(spacing, want)):
            found = ", ".join(f"{v:.4g}" for v in spacing)
            raise ModelError(f"{path}: voxel spacing ({found}) mm (D, H, W, from the NIfTI affine); expected the data's "
                             f"({', '.join(f'{v:g}' for v in want)}) mm: resample the volume onto the reference data's grid")
        return Stored(np.ascontiguousarray(arr), stored.max_code, stored.sbit, stored.affine)

    def _load(self, units: list[Unit]) -> None:
        """Read every unit's images (N×C×H×W or N×C×D×H×W on [0, 1]) and masks (N×1×H×W or N×1×D×H×W), and how the
        images were scaled."""
        self.files: list[Path] = []
        self.by_type_max: dict[int, list[tuple[Path, int, str]]] = {}  # files read by their type's maximum: (path, max, type)
        imgs, masks, scalings = [], [], Counter()
        for unit in units:
            img = self._read_images(unit, scalings)
            imgs.append(img)
            if unit.mask is not None:
                m = _as_stack(to_labels(self._on_grid(read_stored(unit.mask, mask=True), unit.mask), unit.mask, self.labels),
                              unit.mask, self.shape)
                if m.shape[0] != img.shape[0]:
                    raise ModelError(f"{unit.mask}: mask stack {m.shape} does not match image stack {img.shape} of "
                                     f"{', '.join(p.name for p in unit.images)}")
                masks.append(m)
                self.files.append(unit.mask)
        self.images = torch.from_numpy(np.concatenate(imgs).astype(np.float32)) if imgs else torch.zeros((0, *self.shape))
        self.masks = torch.from_numpy(np.concatenate(masks)[:, None]) if masks else None
        scalings = self._no_guessed_depth(scalings)
        self.scaling = next(iter(scalings)) if len(scalings) == 1 else "; ".join(f"{how} ({n} files)" for how, n in sorted(scalings.items()))

    def _read_images(self, unit: Unit, scalings: Counter[str]) -> np.ndarray:
        """The unit's images as N×C×H×W (N×C×D×H×W) on [0, 1]: one file with every contrast, or one file per contrast."""
        stacks = []
        for path in unit.images:
            raw = read_stored(path)
            stored = self._on_grid(raw, path)
            unit_values, how = to_unit(stored, self.value_range, path)
            if self.value_range is None and stored.max_code is not None and stored.sbit is None:  # rule 3: the type's maximum
                dtype = raw.array.dtype
                kind = f"{stored.max_code.bit_length()}-bit PNG" if _suffix(path) == ".png" else f"{dtype.itemsize * 8}-bit ({dtype})"
                self.by_type_max.setdefault(stored.max_code, []).append((path, int(stored.array.max(initial=0)), kind))
            scalings[how] += 1
            self.files.append(path)
            stacks.append(unit_values)
        if len(stacks) == 1:
            return _as_images(stacks[0], unit.images[0], self.shape, self.contrasts)
        per = [_as_stack(a, p, self.shape) for a, p in zip(stacks, unit.images)]
        if len({a.shape[0] for a in per}) > 1:
            counts = ", ".join(f"{p.name}: {a.shape[0]}" for a, p in zip(per, unit.images))
            item = _item(self.shape)[0]
            raise ModelError(f"{unit.images[0].parent}: the contrast files of {unit.name!r} hold different numbers of {item}s ({counts}); "
                             f"expected the same {item}s in each")
        return np.stack(per, axis=1)

    def _no_guessed_depth(self, scalings: Counter[str]) -> Counter[str]:
        """ModelError (:func:`~mriq_validate.bitdepth.refusal`) when the files read by a type's maximum use at most a
        quarter of it folder-wide; else ``scalings`` with that folder-wide largest value recorded."""
        for type_max, seen in self.by_type_max.items():
            largest = max(v for _, v, _ in seen)
            if narrow_bits(largest, type_max) is not None:
                kinds = sorted({k for _, _, k in seen})
                raise ModelError(refusal([p for p, _, _ in seen], largest, type_max, " / ".join(kinds), SIDECAR,
                                         any(k.endswith("PNG") for k in kinds)))
            how = f"dtype max {type_max}"
            if how in scalings:
                scalings[f"{how} (largest stored value {largest})"] = scalings.pop(how)
        return scalings

    def describe(self) -> dict[str, Any]:
        """File count, a content hash of the folder's image, mask and ``mriq_folder.json`` files, and how the images
        were scaled onto [0, 1]."""
        files = list(self.files)
        extra = [p for p in (self.folder / SIDECAR, self.folder / MANIFEST) if p.is_file()]
        out = {"n_files": len(files), "sha256_16": content_hash(*(p.name.encode() + p.read_bytes() for p in files + extra)),
               "scaling": self.scaling}
        if self.unused:
            out["unused_files"] = {"n": len(self.unused), "examples": [p.name for p in self.unused[:5]],
                                   "why": f"contrasts the run does not use (it uses {', '.join(self.contrasts)})"}
        return out

    def sample(self, n: int | None, *, seed: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        total = self.images.shape[0]
        if n is None:
            idx = np.arange(total)
        elif n > total:
            raise ModelError(f"model folder {self.folder} holds {total} images; {n} were requested")
        else:
            idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
        images = self.images[idx]
        if self.masks is None:
            return images
        return images, self.masks[idx]
