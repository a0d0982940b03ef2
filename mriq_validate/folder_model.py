"""A folder of images generated beforehand, used as a model with ``sample``.

Layouts: ``<name>.<ext>`` with masks beside as ``<name>_seg.<ext>``, or ``images/`` + ``labels/`` with equal
file names. Formats: ``.npy`` (one H×W slice or a stack N×H×W / N×1×H×W), ``.png`` (grey, 1-16 bit),
``.nii``/``.nii.gz`` (one 2D slice). Files are read in name order; the folder defines the set (``sample(None)``
returns all of it).

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
from collections import Counter
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
    suffix = _suffix(path)
    try:
        if suffix == ".png":
            return _read_png(path, mask)
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import nibabel as nib

            arr = np.asarray(nib.load(str(path)).dataobj)  # scl_slope/inter applied (then float) where the header sets them
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: cannot be read as {suffix} ({type(exc).__name__}: {exc})") from exc
    if arr.dtype.kind == "b":
        return Stored(arr.astype(np.uint8), 1)
    if arr.dtype.kind in "ui":
        return Stored(arr, int(np.iinfo(arr.dtype).max))
    if arr.dtype.kind == "f":
        return Stored(arr.astype(np.float64), None)
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


def _as_stack(arr: np.ndarray, path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    h, w = shape[1:]
    a = np.squeeze(arr)
    if a.shape == (h, w):
        return a[None]
    if a.ndim == 3 and a.shape[1:] == (h, w):
        return a
    raise ModelError(f"{path}: array of shape {arr.shape}; expected one {h}×{w} slice (or a stack N×{h}×{w})")


def pair_files(folder: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask-or-None) pairs of ``folder`` in name order; ModelError for an empty folder."""
    if (folder / "images").is_dir():
        images = sorted(p for p in (folder / "images").iterdir() if _suffix(p))
        labels = folder / "labels"
        pairs = [(p, (labels / p.name) if (labels / p.name).exists() else None) for p in images]
    else:
        files = sorted(p for p in folder.iterdir() if _suffix(p))
        stems = {p.name[: -len(_suffix(p))]: p for p in files}  # type: ignore[arg-type]
        pairs = []
        for stem, p in stems.items():
            if stem.endswith("_seg"):
                continue
            mask = next((stems[f"{stem}_seg"] for _ in [0] if f"{stem}_seg" in stems), None)
            pairs.append((p, mask))
    if not pairs:
        raise ModelError(f"model folder {folder} holds no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    with_mask = sum(m is not None for _, m in pairs)
    if 0 < with_mask < len(pairs):
        missing = [p.name for p, m in pairs if m is None][:5]
        raise ModelError(f"model folder {folder}: {with_mask} of {len(pairs)} images have masks; missing for {missing} (give all or none)")
    return pairs


class FolderModel:
    """Pre-generated images (and masks) in a folder, offered through ``sample``; ``labels`` (the data's label set)
    checks the masks file by file."""

    def __init__(self, folder: Path, image_shape: tuple[int, int, int], labels: set[int] | None = None) -> None:
        self.folder, self.shape = folder, image_shape
        value_range = read_range(folder)
        imgs, masks, scalings = [], [], Counter()
        for img_path, mask_path in pair_files(folder):
            unit, how = to_unit(read_stored(img_path), value_range, img_path)
            img = _as_stack(unit, img_path, image_shape)
            imgs.append(img)
            scalings[how] += 1
            if mask_path is not None:
                m = _as_stack(to_labels(read_stored(mask_path, mask=True), mask_path, labels), mask_path, image_shape)
                if m.shape != img.shape:
                    raise ModelError(f"{mask_path}: mask stack {m.shape} does not match image stack {img.shape} of {img_path}")
                masks.append(m)
        self.images = torch.from_numpy(np.concatenate(imgs)[:, None].astype(np.float32))
        self.masks = torch.from_numpy(np.concatenate(masks)[:, None]) if masks else None
        self.scaling = next(iter(scalings)) if len(scalings) == 1 else "; ".join(f"{how} ({n} files)" for how, n in sorted(scalings.items()))

    def describe(self) -> dict[str, Any]:
        """File count, a content hash of the folder's image, mask and ``mriq_folder.json`` files, and how the images
        were scaled onto [0, 1]."""
        files = [p for pair in pair_files(self.folder) for p in pair if p is not None]
        sidecar = [self.folder / SIDECAR] if (self.folder / SIDECAR).is_file() else []
        return {"n_files": len(files), "sha256_16": content_hash(*(p.name.encode() + p.read_bytes() for p in files + sidecar)),
                "scaling": self.scaling}

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
