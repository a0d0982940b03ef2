"""The export-masks layout: ``mriq-validate export-masks`` writes the masks to generate for, with a manifest
(``mriq_masks.json``), and :class:`MaskFolderModel` reads the images generated for them back in the same order."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelError
from .matching import Unit, _contrast_part, _group, _lower, _stem
from .model import FolderModel
from .reading import MANIFEST, _as_stack, _item, _suffix, read_stored, to_labels


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
