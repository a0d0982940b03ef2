"""Reading one stored image or mask of a model folder (PNG, ``.npy``, NIfTI) and putting it on [0, 1] or on the
data's label values, by the rules of :mod:`mriq_validate.folder_model`."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".npy", ".png")
SIDECAR = "mriq_folder.json"
MANIFEST = "mriq_masks.json"  # the export-masks manifest (folder_model.export)
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
