"""A folder of images generated beforehand, used as a model.

Plain layouts (a model with ``sample``): ``<name>.<ext>`` with masks beside as ``<name>_seg.<ext>``, or ``images/`` +
``labels/`` with equal names. Formats: ``.npy``, ``.png`` (grey, 1-16 bit), ``.nii``/``.nii.gz`` (one 2D slice).
Files are read in name order; the folder defines the set (``sample(None)`` returns all of it).

Contrasts. The images have one channel per contrast of the reference data (C of them, in the data's order, e.g.
t1, t1c, t2, flair). Each entry ``<name>`` is either

* one file holding every contrast: for C = 1 (today's naming) an H×W slice or an N×H×W / N×1×H×W stack in any format;
  for C > 1 an ``.npy`` of C×H×W (one slice) or N×C×H×W (a stack), channels in the data's contrast order; or
* (C > 1) one grey file per contrast, ``<name>_<contrast>.<ext>`` (e.g. ``case_z042_t1.png``, ``case_z042_flair.png``;
  any format above, each H×W or N×H×W). The contrast part may be the canonical name or a synonym
  (``t1n``/``T1w``, ``t1ce``/``t1gd``, ``t2w``, ``t2f``/``FLAIR``; ``mriq_validate.data.contrasts``). A missing
  contrast file is an error naming the files expected; so is an entry given both ways. Files of contrasts the run
  does not use (``case_z042_t2.png`` beside ``case_z042_t1.png`` when the run uses t1 and flair) are left out and
  listed in the provenance (``unused_files``).

The mask of ``<name>`` is ``<name>_seg.<ext>`` (or ``labels/<name>.<ext>``), one per entry whatever C is.

Volumes (data of volumes C×D×H×W, ``image_shape`` of length 4): one volume per entry, as NIfTI (``.nii``/``.nii.gz``:
X×Y×Z for one contrast, X×Y×Z×C with the contrasts along the fourth axis, or one X×Y×Z file per contrast
``<name>_<contrast>.nii.gz``) or as ``.npy`` already on the data's grid (D×H×W, C×D×H×W; a stack N×C×D×H×W). A NIfTI
file is read in any orientation: the caller's ``VolumeGrid`` turns it into the data's D×H×W grid (RAS, axial slices
as 2D slices) and gives its voxel spacing, which must match the data's ``spacing_mm`` (D, H, W); a file of the wrong
shape or spacing is an error naming the file, what it holds and what was expected. PNG files hold slices, not volumes.
Masks follow the same rules (``<name>_seg.nii.gz``).

Export layout (a mask-conditioned model with ``generate``): what ``mriq-validate export-masks OUT`` writes,
``OUT/mriq_masks.json`` (the manifest: original slice ids, file stems, contrasts, shape, labels, data source) and
``OUT/test/<stem>_seg.npy``, ``OUT/train/<stem>_seg.npy`` (volumes: ``<stem>_seg.nii.gz`` on the data's grid). A slice
(volume) id becomes a portable stem by replacing each character outside ``A-Z a-z 0-9 . _ -`` with ``_`` (``case:z042``
→ ``case_z042``; :func:`portable_stems`). The model's image for a mask is saved beside it under the same stem, as
above (``<stem>.npy`` or ``<stem>_<contrast>.png``, ...; volumes ``<stem>.nii.gz`` or ``<stem>_<contrast>.nii.gz``).
``generate(masks)`` then returns the saved images for the real test masks (mask-conditioned criteria) and for the
real train masks (train-on-synthetic criteria such as ``dice_tstr`` and ``dice_augmented``); a split whose images are
all missing is allowed (criteria that need it say what to save), a split with only some is an error.

Masks are read as stored, never scaled: they must hold integer labels of the data's label set (an 8- or 16-bit
grey or palette PNG, an integer or integer-valued array).

Images are read onto [0, 1] by the first rule that applies:

1. ``mriq_folder.json`` in the folder, ``{"range": [low, high]}``: ``low`` means 0 and ``high`` means 1, for every
   image file (e.g. ``[0, 4095]`` for 12-bit values stored in 16-bit PNGs or ``uint16`` arrays);
2. a PNG's ``sBIT`` chunk (significant bits b, PNG specification ISO/IEC 15948 §11.3.3.4): samples up to 2^b-1
   are divided by 2^b-1; samples scaled up to the file's bit depth, as the specification asks of encoders, are
   shifted back to b bits first;
3. integer samples: divided by the type's maximum (255 for 8 bit, 65535 for 16 bit);
4. floating-point values: taken as they are; they must already lie in [0, 1].

How the images were read is recorded in the model's provenance (``scaling``, e.g. ``sBIT 12 bits``), so the
report says it. Values outside [0, 1] after scaling are an error that names the file.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import content_hash
from .errors import ModelError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".npy", ".png")
SIDECAR = "mriq_folder.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY, PNG_PALETTE = 0, 3  # IHDR colour types (ISO/IEC 15948 §11.2.2)


def _suffix(p: Path) -> str | None:
    return next((s for s in IMAGE_SUFFIXES if p.name.endswith(s)), None)


@dataclass(frozen=True)
class Stored:
    """One file's samples exactly as stored, and what the file says about their scale."""

    array: np.ndarray
    max_code: int | None  # the largest value the integer container holds (None: floating point)
    sbit: int | None = None  # PNG sBIT: significant bits of the original samples
    affine: np.ndarray | None = None  # NIfTI: the voxel-to-world affine (4×4) of the stored array


@dataclass(frozen=True)
class VolumeGrid:
    """The data's volume grid, for folders of volumes: ``spacing_mm`` (D, H, W) and ``to_grid(array, affine)``, which
    turns a NIfTI array (X×Y×Z, or X×Y×Z×C) with its affine into the data's layout (D×H×W, or C×D×H×W) and returns
    its voxel spacing (D, H, W) in mm. Given by the caller (``models.py`` builds it from :mod:`mriq_validate.data`),
    so that this module holds no orientation convention of its own."""

    spacing_mm: tuple[float, ...]
    to_grid: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, tuple[float, ...]]]
    tolerance_mm: float = 1e-3


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    """The chunks before the image data of a PNG file, by type (first of each): each chunk is a 4-byte big-endian
    length, a 4-byte type, the data and a CRC (ISO/IEC 15948 §5.3). ValueError for a file that is not a PNG."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG file (bad signature)")
    chunks: dict[bytes, bytes] = {}
    pos = 8
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            break
        chunks.setdefault(kind, data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    if len(chunks.get(b"IHDR", b"")) != 13:
        raise ValueError("no valid IHDR chunk")
    return chunks


def _read_png(path: Path, mask: bool) -> Stored:
    from PIL import Image

    data = path.read_bytes()
    chunks = png_chunks(data)
    depth, colour = chunks[b"IHDR"][8], chunks[b"IHDR"][9]
    allowed = (PNG_GREY, PNG_PALETTE) if mask else (PNG_GREY,)
    if colour not in allowed:
        what = "palette" if colour == PNG_PALETTE else "colour"
        raise ModelError(f"{path}: {what} PNG (colour type {colour}); expected a single-channel grey "
                         f"{'or palette ' if mask else ''}{'mask' if mask else 'image'}")
    arr = np.asarray(Image.open(io.BytesIO(data)))
    if colour == PNG_PALETTE:
        return Stored(arr.astype(np.uint8), 2**depth - 1)
    if depth < 8:  # Pillow expands 1/2/4-bit grey to 0..255 (or bool): back to the stored samples
        arr = arr.astype(np.uint8) // (255 // (2**depth - 1)) if arr.dtype != bool else arr.astype(np.uint8)
    arr = arr.astype(np.uint16 if depth == 16 else np.uint8)
    sbit = None
    if b"sBIT" in chunks and not mask:
        sbit = chunks[b"sBIT"][0]
        if not 1 <= sbit <= depth:
            raise ModelError(f"{path}: the sBIT chunk gives {sbit} significant bits; a {depth}-bit PNG allows 1 to {depth}")
    return Stored(arr, 2**depth - 1, sbit)


def read_stored(path: Path, *, mask: bool = False) -> Stored:
    """One file's samples as stored (no scaling); ModelError naming the file when it cannot be read."""
    suffix, affine = _suffix(path), None
    try:
        if suffix == ".png":
            return _read_png(path, mask)
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import nibabel as nib

            img = nib.load(str(path))
            # scl_slope/inter applied (then float) where the header sets them
            arr, affine = np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: cannot be read as {suffix} ({type(exc).__name__}: {exc})") from exc
    if arr.dtype.kind == "b":
        return Stored(arr.astype(np.uint8), 1, affine=affine)
    if arr.dtype.kind in "ui":
        return Stored(arr, int(np.iinfo(arr.dtype).max), affine=affine)
    if arr.dtype.kind == "f":
        return Stored(arr.astype(np.float64), None, affine=affine)
    raise ModelError(f"{path}: values of type {arr.dtype}; expected integers or floating-point numbers")


def read_range(folder: Path) -> tuple[float, float] | None:
    """The value range given in the folder's ``mriq_folder.json`` (``{"range": [low, high]}``), or None without one;
    ModelError naming the file and field when it is malformed."""
    path = folder / SIDECAR
    if not path.is_file():
        return None
    example = '{"range": [0, 4095]}'
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc}); expected an object such as {example}") from None
    if not isinstance(spec, dict):
        raise ModelError(f"{path}: a JSON {type(spec).__name__}; expected an object such as {example}")
    unknown = sorted(set(spec) - {"range"})
    if unknown:
        raise ModelError(f"{path}: unknown field(s) {unknown}; expected only 'range', e.g. {example}")
    if "range" not in spec:
        raise ModelError(f"{path}: field 'range' is missing; expected e.g. {example}")
    r = spec["range"]
    numbers = isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in r)
    if not numbers or not r[0] < r[1]:
        raise ModelError(f"{path}: field 'range' is {json.dumps(r)}; expected [low, high], two finite numbers with low < high: "
                         f"the stored values that mean 0 and 1 (e.g. [0, 4095] for 12-bit data)")
    return float(r[0]), float(r[1])


def to_unit(stored: Stored, value_range: tuple[float, float] | None, path: Path) -> tuple[np.ndarray, str]:
    """The image on [0, 1] by the module's rules, and how it was scaled; ModelError naming the file when values fall
    outside [0, 1] (beyond 1e-6, the tolerance of the model output check)."""
    a = stored.array
    if value_range is not None:
        lo, hi = value_range
        x, how = (a.astype(np.float64) - lo) / (hi - lo), f"range [{lo:g}, {hi:g}] from {SIDECAR}"
    elif stored.max_code is None:
        x, how = a, "floating-point values as stored"
    elif stored.sbit is not None:
        bits, top = stored.sbit, 2**stored.sbit - 1
        if int(a.max()) <= top:
            x, how = a / top, f"sBIT {bits} bits"
        else:
            depth = stored.max_code.bit_length()
            x, how = (a >> (depth - bits)) / top, f"sBIT {bits} bits (samples scaled to {depth} bits, as the PNG specification asks)"
    else:
        x, how = a / stored.max_code, f"dtype max {stored.max_code}"
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ModelError(f"{path}: non-finite values (NaN/inf); expected finite values")
    lo_v, hi_v = float(x.min()), float(x.max())
    if lo_v < -1e-6 or hi_v > 1 + 1e-6:
        fix = (f"the range in {SIDECAR} does not cover the stored values" if value_range is not None
               else f"give the stored range in {SIDECAR}, e.g. {{\"range\": [0, 4095]}}, or save values in [0, 1]")
        raise ModelError(f"{path}: stored values [{float(a.min()):.6g}, {float(a.max()):.6g}] become [{lo_v:.4g}, {hi_v:.4g}] "
                         f"after scaling ({how}); expected [0, 1]: {fix}")
    return np.clip(x, 0.0, 1.0), how


def to_labels(stored: Stored, path: Path, labels: set[int] | None) -> np.ndarray:
    """The mask as int64 labels, unscaled; ModelError naming the file when a value is not an integer or, given the
    data's ``labels``, not one of them (0 = background is always allowed)."""
    a = stored.array
    allowed = sorted((labels or set()) | {0})
    if stored.max_code is None:
        bad = a[~(np.isfinite(a) & (a == np.round(a)))]
        if bad.size:
            examples = ", ".join(f"{v:.4g}" for v in np.unique(bad)[:3])
            raise ModelError(f"{path}: mask values are not integer labels (e.g. {examples}); masks are read as "
                             f"stored, without scaling: save the integer labels {allowed} themselves")
    out = a.astype(np.int64)
    if labels is not None:
        found = sorted(int(v) for v in np.unique(out))
        extra = sorted(set(found) - set(allowed))
        if extra:
            raise ModelError(f"{path}: mask labels {found}; {extra} are outside the data's label set {allowed} (masks are read "
                             f"as stored, without scaling: a mask saved for viewing, e.g. labels times 255, must be saved as the labels)")
    return out


def _item(shape: tuple[int, ...]) -> tuple[str, str]:
    """``("slice", "H×W")`` or ``("volume", "D×H×W")`` for an image shape (C, H, W) or (C, D, H, W)."""
    return ("volume", "D×H×W") if len(shape) == 4 else ("slice", "H×W")


def _as_stack(arr: np.ndarray, path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """One contrast (or a mask): an H×W slice (D×H×W volume) or a stack N×H×W (N×D×H×W), singleton axes dropped,
    as N×H×W (N×D×H×W). ``shape`` is the image shape (C, H, W) or (C, D, H, W)."""
    spatial = tuple(shape[1:])
    a = np.squeeze(arr)
    if a.shape == spatial:
        return a[None]
    if a.ndim == len(spatial) + 1 and a.shape[1:] == spatial:
        return a
    item, axes = _item(shape)
    size = "×".join(map(str, spatial))
    raise ModelError(f"{path}: array of shape {arr.shape}; expected one {size} {item} (or a stack N×{size})"
                     + (f" ({axes} on the data's grid)" if len(spatial) == 3 else ""))


def _as_images(arr: np.ndarray, path: Path, shape: tuple[int, ...], contrasts: tuple[str, ...]) -> np.ndarray:
    """A file holding every contrast, as N×C×H×W (N×C×D×H×W): for C = 1 any :func:`_as_stack` form; for C > 1 one
    item C×H×W (C×D×H×W) or a stack N×C×H×W (N×C×D×H×W)."""
    c = shape[0]
    if c == 1:
        return _as_stack(arr, path, shape)[:, None]
    if arr.shape == tuple(shape):
        return arr[None]
    if arr.ndim == len(shape) + 1 and arr.shape[1:] == tuple(shape):
        return arr
    names = f" ({', '.join(contrasts)})" if contrasts else ""
    item, _ = _item(shape)
    size, whole = "×".join(map(str, shape[1:])), "×".join(map(str, shape))
    raise ModelError(f"{path}: array of shape {arr.shape}; expected the {c} contrasts{names} of one {item}, {whole} "
                     f"(or a stack N×{whole}), or one {size} file per contrast named <name>_<contrast>{_suffix(path)}")


def _lower(name: str) -> str:
    return name.strip().lower()


@dataclass(frozen=True)
class Unit:
    """One entry of a folder: its image file (every contrast) or files (one per contrast, in contrast order), and its
    mask file when it has one."""

    name: str
    images: tuple[Path, ...]
    mask: Path | None = None


def _stem(p: Path) -> str:
    return p.name[: -len(_suffix(p) or "")]


def _contrast_part(stem: str, contrasts: tuple[str, ...], name_of: Callable[[str], str]) -> tuple[str, str] | None:
    """``(name, contrast)`` when ``stem`` is ``<name>_<contrast>`` for one of ``contrasts`` (synonyms allowed)."""
    base, sep, token = stem.rpartition("_")
    if sep and base and name_of(token) in contrasts:
        return base, name_of(token)
    return None


def _group(files: list[Path], contrasts: tuple[str, ...], name_of: Callable[[str], str], where: Path
           ) -> tuple[dict[str, tuple[Path, ...]], list[Path]]:
    """Image files by entry name, in first-seen (file name) order: ``<name>.<ext>`` holds every contrast; with C > 1
    contrasts, ``<name>_<contrast>.<ext>`` holds one. Also the files left out: ``<name>_<other>.<ext>`` beside an entry
    given one file per contrast (a contrast the run does not use). ModelError for a name given both ways, a contrast
    given twice or a contrast missing (naming the files expected)."""
    whole: dict[str, Path] = {}
    parts: dict[str, dict[str, Path]] = {}
    for p in files:
        split = _contrast_part(_stem(p), contrasts, name_of) if len(contrasts) > 1 else None
        if split is None:
            if _stem(p) in whole:
                raise ModelError(f"{where}: {whole[_stem(p)].name} and {p.name} are both the images of {_stem(p)!r}; keep one")
            whole[_stem(p)] = p
            parts.setdefault(_stem(p), {})
            continue
        base, c = split
        have = parts.setdefault(base, {})
        if c in have:
            raise ModelError(f"{where}: {have[c].name} and {p.name} are both the {c} image of {base!r}; keep one")
        have[c] = p
    out: dict[str, tuple[Path, ...]] = {}
    unused = [p for name, p in whole.items() if parts.get(name.rpartition("_")[0])]
    for p in unused:
        del whole[_stem(p)], parts[_stem(p)]
    for base, have in parts.items():
        if base in whole and have:
            raise ModelError(f"{where}: {whole[base].name} and {', '.join(q.name for q in have.values())} both give the images of "
                             f"{base!r}; keep one file with every contrast or one file per contrast")
        if base in whole:
            out[base] = (whole[base],)
            continue
        missing = [c for c in contrasts if c not in have]
        if missing:
            suffix = _suffix(next(iter(have.values()))) or ".png"
            raise ModelError(f"{where}: {base!r} has {', '.join(have[c].name for c in contrasts if c in have)} but no "
                             f"{', '.join(f'{base}_{c}{suffix}' for c in missing)}; expected one file per contrast of "
                             f"{list(contrasts)}")
        out[base] = tuple(have[c] for c in contrasts)
    return out, unused


def folder_units(folder: Path, contrasts: tuple[str, ...] = (), name_of: Callable[[str], str] | None = None
                 ) -> tuple[list[Unit], list[Path]]:
    """The entries of a plain model folder (no export manifest), in file name order, and the files of contrasts the run
    does not use; ModelError for an empty folder or one where only some images have masks."""
    name_of = name_of or _lower
    if (folder / "images").is_dir():
        files = sorted(p for p in (folder / "images").iterdir() if _suffix(p))
        labels = folder / "labels"
        mask_of = lambda name, first: (labels / f"{name}{_suffix(first)}") if (labels / f"{name}{_suffix(first)}").exists() else None  # noqa: E731
        where = folder / "images"
    else:
        every = sorted(p for p in folder.iterdir() if _suffix(p))
        masks = {_stem(p)[:-4]: p for p in every if _stem(p).endswith("_seg")}
        files = [p for p in every if not _stem(p).endswith("_seg")]
        mask_of = lambda name, first: masks.get(name)  # noqa: E731
        where = folder
    groups, unused = _group(files, contrasts, name_of, where)
    units = [Unit(name, paths, mask_of(name, paths[0])) for name, paths in groups.items()]
    if not units:
        raise ModelError(f"model folder {folder} holds no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    with_mask = sum(u.mask is not None for u in units)
    if 0 < with_mask < len(units):
        missing = [u.images[0].name for u in units if u.mask is None][:5]
        raise ModelError(f"model folder {folder}: {with_mask} of {len(units)} images have masks; missing for {missing} (give all or none)")
    return units, unused


def pair_files(folder: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask-or-None) pairs of a one-contrast ``folder`` in name order; ModelError for an empty folder."""
    return [(u.images[0], u.mask) for u in folder_units(folder)[0]]


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
        self.scaling = next(iter(scalings)) if len(scalings) == 1 else "; ".join(f"{how} ({n} files)" for how, n in sorted(scalings.items()))

    def _read_images(self, unit: Unit, scalings: Counter[str]) -> np.ndarray:
        """The unit's images as N×C×H×W (N×C×D×H×W) on [0, 1]: one file with every contrast, or one file per contrast."""
        stacks = []
        for path in unit.images:
            unit_values, how = to_unit(self._on_grid(read_stored(path), path), self.value_range, path)
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


# ---------------------------------------------------------------- the export-masks layout

MANIFEST = "mriq_masks.json"
EXPORT_FORMAT = "mriq-validate export-masks"
EXPORT_VERSION = 1
#: What each exported split's images are for (said when they are missing).
SPLIT_USES = {
    "test": "mask-conditioned criteria (image quality, intensity, Dice of the real-trained segmenter on generated images) compare them "
            "with the real test images",
    "train": "train-on-synthetic criteria (dice_tstr, dice_augmented) train a segmenter on them",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def portable_stems(ids: list[str] | tuple[str, ...], taken: set[str] | None = None,
                   reserved: Callable[[str], bool] | None = None) -> list[str]:
    """File-name stems for slice ``ids``, portable to every file system: each character outside ``A-Z a-z 0-9 . _ -``
    becomes ``_`` (``case:z042`` → ``case_z042``); a leading ``.`` or an empty result gets an ``x`` in front; a stem
    already used (in ``taken`` or earlier in ``ids``), or whose last ``_``-part is ``reserved`` (``seg``, a contrast
    name), gets ``__2``, ``__3``, ... appended. Deterministic; the manifest keeps the original ids."""
    used = set(taken or ())
    out = []
    for sid in ids:
        base = _UNSAFE.sub("_", str(sid))
        if not base or base.startswith("."):
            base = "x" + base
        stem, k = base, 1
        while stem in used or (reserved is not None and reserved(stem)):
            k += 1
            stem = f"{base}__{k}"
        used.add(stem)
        out.append(stem)
    return out


def write_mask_folder(out: Path, splits: dict[str, tuple[tuple[str, ...], torch.Tensor]], *, contrasts: tuple[str, ...],
                      image_shape: tuple[int, ...], labels: dict[str, int], source: dict[str, Any],
                      name_of: Callable[[str], str] | None = None,
                      save_volume: Callable[[Path, str, np.ndarray], None] | None = None) -> dict[str, Any]:
    """Write each split's masks (``{split: (ids, masks N×1×H×W)}``) as ``<out>/<split>/<stem>_seg.npy`` (uint8 labels)
    and the manifest ``<out>/mriq_masks.json`` (the original ids, stems, contrasts, shape, labels, ``source``); return
    the manifest. Volumes (``image_shape`` (C, D, H, W), masks N×1×D×H×W): each mask is written by
    ``save_volume(path, item id, mask D×H×W uint8)`` as ``<stem>_seg.nii.gz`` (the caller knows the grid's affine, so the mask
    overlays the reference data). ModelError when ``out`` already holds an export or files in a split folder."""
    name_of = name_of or _lower
    volumes = len(image_shape) == 4
    if volumes and save_volume is None:
        raise ValueError("write_mask_folder: volumes need save_volume(path, id, mask) to write each mask as NIfTI on the data's grid")
    if (out / MANIFEST).exists() or any((out / s).is_dir() and any((out / s).iterdir()) for s in splits):
        raise ModelError(f"{out}: already holds an export (or files in {', '.join(f'{s}/' for s in splits)}); export to an empty or new folder, "
                         f"so that no image generated for other masks is left beside the new ones")

    def reserved(stem: str) -> bool:
        base, sep, token = stem.rpartition("_")
        return bool(sep and base) and (token == "seg" or name_of(token) in contrasts)

    per_contrast = ", ".join(f"<stem>_{c}.{'nii.gz' if volumes else 'png'}" for c in contrasts)
    if volumes:
        naming = ("stem: the volume id with every character outside A-Z a-z 0-9 . _ - replaced by '_' (and __2, __3, ... against "
                  "clashes); mask <split>/<stem>_seg.nii.gz (on the data's grid); images <split>/<stem>.nii.gz on the mask's grid ("
                  + (f"X×Y×Z×{image_shape[0]}, contrasts in order along the 4th axis) or one X×Y×Z file per contrast: {per_contrast}"
                     if image_shape[0] > 1 else "X×Y×Z)") + ", or <stem>.npy (float in [0, 1], C×D×H×W)")
    else:
        naming = ("stem: the slice id with every character outside A-Z a-z 0-9 . _ - replaced by '_' (and __2, __3, ... "
                  "against clashes); mask <split>/<stem>_seg.npy; images <split>/<stem>.npy (float in [0, 1], "
                  + (f"{image_shape[0]}×H×W, channels in contrast order) or one grey file per contrast: {per_contrast}"
                     if image_shape[0] > 1 else "H×W) or <stem>.png / <stem>.nii.gz"))
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, **source, "contrasts": list(contrasts), "image_shape": list(image_shape),
        "labels": dict(labels),
        "naming": naming,
        "uses": {s: SPLIT_USES.get(s, "") for s in splits},
        "splits": {},
    }
    for split, (ids, masks) in splits.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for sid, stem, mask in zip(ids, portable_stems(ids, reserved=reserved), masks):
            if volumes:
                assert save_volume is not None
                save_volume(folder / f"{stem}_seg.nii.gz", str(sid), mask[0].numpy().astype(np.uint8))
            else:
                np.save(folder / f"{stem}_seg.npy", mask[0].numpy().astype(np.uint8))
            entries.append({"id": str(sid), "stem": stem})
        manifest["splits"][split] = entries
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The export manifest of ``folder``, checked; ModelError naming the file and field when it is malformed."""
    path = folder / MANIFEST
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc}); it is written by mriq-validate export-masks: export again") from None
    if not isinstance(m, dict) or m.get("format") != EXPORT_FORMAT or m.get("version") != EXPORT_VERSION:
        raise ModelError(f"{path}: not a version-{EXPORT_VERSION} manifest of {EXPORT_FORMAT!r} (fields format and version); export again")
    shape, contrasts, splits = m.get("image_shape"), m.get("contrasts"), m.get("splits")
    if not (isinstance(shape, list) and len(shape) in (3, 4) and all(isinstance(v, int) and v >= 1 for v in shape)):
        raise ModelError(f"{path}: field 'image_shape' is {shape!r}; expected [C, H, W] (slices) or [C, D, H, W] (volumes)")
    if not (isinstance(contrasts, list) and len(contrasts) == shape[0] and all(isinstance(c, str) for c in contrasts)):
        raise ModelError(f"{path}: field 'contrasts' is {contrasts!r}; expected {shape[0]} contrast names")
    if not (isinstance(splits, dict) and splits and all(isinstance(v, list) for v in splits.values())):
        raise ModelError(f"{path}: field 'splits' is malformed; expected {{split: [{{id, stem}}, ...]}}")
    for split, entries in splits.items():
        if not all(isinstance(e, dict) and isinstance(e.get("stem"), str) and isinstance(e.get("id"), str) for e in entries):
            raise ModelError(f"{path}: field 'splits.{split}' has an entry without a string 'id' and 'stem'")
    return m


class MaskFolderModel(FolderModel):
    """A folder written by ``mriq-validate export-masks`` with the model's images beside the masks: ``generate(masks)``
    returns the images saved for those masks (a whole exported split, in its order, or any of its masks), so the
    folder stands in for a mask-conditioned model; ``sample`` draws from every image it holds. A split whose images are
    all missing is recorded as not provided (asking for its masks is a ModelError saying what to save); a split with
    some missing is a ModelError listing them."""

    def _units(self) -> list[Unit]:
        m = read_manifest(self.folder)
        where = self.folder / MANIFEST
        if self.contrasts and tuple(m["contrasts"]) != self.contrasts:
            raise ModelError(f"{where}: the masks were exported for contrasts {m['contrasts']}, the run's data has {list(self.contrasts)}; "
                             f"export again with the suite's data options (mriq-validate export-masks --suite SUITE)")
        if tuple(m["image_shape"][1:]) != self.shape[1:]:
            item = _item(tuple(m["image_shape"]))[0]
            raise ModelError(f"{where}: the masks were exported for {'×'.join(map(str, m['image_shape'][1:]))} {item}s, the run's data has "
                             f"{'×'.join(map(str, self.shape[1:]))} {_item(self.shape)[0]}s; export again with the run's data")
        self.manifest = m
        self.split_masks: dict[str, torch.Tensor] = {}
        self.split_rows: dict[str, tuple[int, int] | None] = {}
        units: list[Unit] = []
        for split, entries in m["splits"].items():
            units += self._split_units(split, entries)
        return units

    def _split_units(self, split: str, entries: list[dict[str, str]]) -> list[Unit]:
        folder = self.folder / split
        files = sorted(p for p in folder.iterdir() if _suffix(p)) if folder.is_dir() else []
        by_name = {p.name: p for p in files}
        by_entry: dict[str, list[Path]] = {}  # entry stem → its image files: <stem>.<ext>, or <stem>_<contrast>.<ext> for C > 1
        for p in files:
            part = _contrast_part(_stem(p), self.contrasts, self.name_of) if self.shape[0] > 1 else None
            by_entry.setdefault(_stem(p), []).append(p)
            if part is not None:
                by_entry.setdefault(part[0], []).append(p)
        masks, claimed, found, missing = [], set(), [], []
        for e in entries:
            stem = e["stem"]
            mask = folder / f"{stem}_seg{self._mask_suffix}"
            if not mask.is_file():
                raise ModelError(f"{mask}: the mask of {_item(self.shape)[0]} {e['id']!r} listed in {MANIFEST} is missing; export again")
            masks.append(_as_stack(to_labels(self._on_grid(read_stored(mask, mask=True), mask), mask, self.labels), mask, self.shape))
            claimed.add(mask.name)
            mine = [p for p in by_entry.get(stem, []) if p.name != mask.name]
            claimed.update(p.name for p in mine)
            if not mine:
                missing.append(stem)
                continue
            paths = _group(mine, self.contrasts, self.name_of, folder)[0].get(stem)
            if paths is None:
                raise ModelError(f"{folder}: {', '.join(p.name for p in mine)} do not name the images of {stem!r}; expected "
                                 f"{self._expected(stem)}")
            found.append(Unit(stem, paths, mask))
        stray = sorted(set(by_name) - claimed)
        if stray:
            raise ModelError(f"{folder}: {len(stray)} file(s) match no exported mask, e.g. {stray[:5]}; images are named after their mask "
                             f"(<stem>_seg{self._mask_suffix} → {self._expected('<stem>')}); see {MANIFEST} for the stems")
        self.split_masks[split] = torch.from_numpy(np.concatenate(masks)[:, None].astype(np.int64)) if masks else torch.zeros((0, 1, *self.shape[1:]), dtype=torch.int64)
        if found and missing:
            raise ModelError(f"{folder}: images for {len(found)} of {len(entries)} exported masks; missing {len(missing)}, e.g. "
                             f"{', '.join(self._expected(s) for s in missing[:3])} (give all of a split or none)")
        return found

    @property
    def _mask_suffix(self) -> str:
        """How export-masks saves a mask: ``.npy`` for slices, ``.nii.gz`` for volumes."""
        return ".nii.gz" if len(self.shape) == 4 else ".npy"

    def _expected(self, stem: str) -> str:
        if len(self.shape) == 4:
            c = self.shape[0]
            per = f" or {', '.join(f'{stem}_{k}.nii.gz' for k in self.contrasts or ('<contrast>',))}" if c > 1 else ""
            return f"{stem}.nii.gz (X×Y×Z{f'×{c}' if c > 1 else ''} on the mask's grid){per}, or {stem}.npy ({c}×D×H×W)"
        if self.shape[0] == 1:
            return f"{stem}.npy (or .png, .nii.gz)"
        return f"{stem}.npy ({self.shape[0]}×H×W) or {', '.join(f'{stem}_{c}.png' for c in self.contrasts or ('<contrast>',))}"

    def _load(self, units: list[Unit]) -> None:
        super()._load(units)
        if self.masks is None:
            self.masks = torch.zeros((0, 1, *self.shape[1:]), dtype=torch.int64)
        start = 0
        for split, masks in self.split_masks.items():
            n = sum(1 for u in units if u.mask is not None and u.mask.parent.name == split)
            self.split_rows[split] = (start, start + n) if n else None
            start += n
        if start == 0:
            raise ModelError(f"model folder {self.folder}: no images beside the exported masks yet; save one per mask, e.g. "
                             f"{self._expected('<stem>')} next to <stem>_seg{self._mask_suffix} in "
                             f"{', '.join(f'{s}/' for s in self.split_masks)} ({MANIFEST} lists the stems)")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layout": "export-masks", "splits": self._counts()}

    def _counts(self) -> dict[str, dict[str, int]]:
        """Per split: how many masks were exported and how many images the folder holds for them."""
        return {s: {"masks": len(self.split_masks[s]), "images": (r[1] - r[0]) if r else 0} for s, r in self.split_rows.items()}

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        """The saved images for ``masks``: a whole exported split in its order, or masks found in the folder (a mask
        that occurs k times gets its first k images, in order). ModelError for a mask the folder has no image for."""
        for split, known in self.split_masks.items():
            if known.shape == masks.shape and torch.equal(known, masks.long()):
                rows = self.split_rows[split]
                if rows is None:
                    raise ModelError(f"model folder {self.folder}: no images for the {split} masks: save one per mask in "
                                     f"{self.folder / split}/ as {self._expected('<stem>')}; {SPLIT_USES.get(split, '')}")
                return self.images[rows[0]:rows[1]].clone()
        table: dict[bytes, list[int]] = {}
        for i, m in enumerate(self.masks):
            table.setdefault(m.to(torch.uint8).numpy().tobytes(), []).append(i)
        used: Counter[bytes] = Counter()
        out = []
        for i, m in enumerate(masks):
            key = m.to(torch.uint8).numpy().tobytes()
            rows = table.get(key, [])
            if used[key] >= len(rows):
                why = "is not one of the exported masks with an image" if not rows else f"is asked for more often than its {len(rows)} image(s)"
                raise ModelError(f"model folder {self.folder}: mask {i} of the request {why}; the folder serves the masks "
                                 f"mriq-validate export-masks wrote and has images for ({self._counts()})")
            out.append(self.images[rows[used[key]]])
            used[key] += 1
        return torch.stack(out) if out else self.images[:0].clone()


def open_folder_model(folder: Path, image_shape: tuple[int, ...], labels: set[int] | None = None,
                      contrasts: tuple[str, ...] = (), name_of: Callable[[str], str] | None = None,
                      grid: VolumeGrid | None = None) -> FolderModel:
    """The model of a folder: :class:`MaskFolderModel` when it holds an export manifest (``mriq_masks.json``), else
    :class:`FolderModel`."""
    cls = MaskFolderModel if (folder / MANIFEST).is_file() else FolderModel
    return cls(folder, image_shape, labels, contrasts, name_of, grid)
