"""A folder of images generated beforehand, used as a model with ``sample``.

Layouts: ``<name>.<ext>`` with masks beside as ``<name>_seg.<ext>``, or ``images/`` + ``labels/`` with equal
file names. Formats: ``.npy`` (one H×W slice or a stack N×H×W / N×1×H×W, values in [0, 1]), ``.png``
(8/16-bit grey, scaled by the dtype's maximum), ``.nii``/``.nii.gz`` (one 2D slice, values in [0, 1]).
Files are read in name order; the folder defines the set (``sample(None)`` returns all of it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import content_hash
from .errors import ModelError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".npy", ".png")


def _suffix(p: Path) -> str | None:
    return next((s for s in IMAGE_SUFFIXES if p.name.endswith(s)), None)


def read_array(path: Path) -> np.ndarray:
    """Read one image file as float64; ModelError naming the file when it cannot be read."""
    suffix = _suffix(path)
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False).astype(np.float64)
        if suffix == ".png":
            from PIL import Image

            arr = np.asarray(Image.open(path))
            if arr.ndim == 3:
                raise ModelError(f"{path}: colour PNG {arr.shape}; expected a single-channel grey image")
            return arr.astype(np.float64) / (65535.0 if arr.dtype == np.uint16 else 255.0)
        import nibabel as nib

        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: cannot be read as {suffix} ({type(exc).__name__}: {exc})") from exc


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
    """Pre-generated images (and masks) in a folder, offered through ``sample``."""

    def __init__(self, folder: Path, image_shape: tuple[int, int, int]) -> None:
        self.folder, self.shape = folder, image_shape
        imgs, masks = [], []
        for img_path, mask_path in pair_files(folder):
            img = _as_stack(read_array(img_path), img_path, image_shape)
            imgs.append(img)
            if mask_path is not None:
                m = _as_stack(read_array(mask_path), mask_path, image_shape)
                if m.shape != img.shape:
                    raise ModelError(f"{mask_path}: mask stack {m.shape} does not match image stack {img.shape} of {img_path}")
                masks.append(m)
        self.images = torch.from_numpy(np.concatenate(imgs)[:, None].astype(np.float32))
        self.masks = torch.from_numpy(np.concatenate(masks)[:, None]) if masks else None

    @staticmethod
    def describe(folder: Path) -> dict[str, Any]:
        """File count and a content hash of the folder's image and mask files."""
        files = [p for pair in pair_files(folder) for p in pair if p is not None]
        return {"n_files": len(files), "sha256_16": content_hash(*(p.name.encode() + p.read_bytes() for p in files))}

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
