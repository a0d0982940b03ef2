"""NIfTI folders of user data in their public layouts, preprocessed as in Deo et al. 2025 (see :mod:`.preprocess`).

The layout is found from the files (:mod:`.layouts`: BraTS 2018–2021 and 2023–2025 case folders, the Medical
Segmentation Decathlon, nnU-Net v1/v2 raw data, imagesTr/labelsTr, case folders and flat folders without labels).
Every contrast is found by name (file suffix, dataset.json ``modality``/``channel_names``) and only the files and
channels asked for are read; images are N×C×H×W axial slices, one channel per contrast, or with ``slicing="volume"``
N×C×D×H×W volumes, one per case, resampled to one isotropic grid (:mod:`.volumes`). Label values are remapped by meaning to
the canonical values (1 necrotic core, 2 oedema, 3 enhancing, 4 resection cavity), so ``whole_tumour`` is the same
tissue in every layout. A cohort without label files is a healthy cohort (``has_masks=False``, slices with brain).

Each case is preprocessed once and cached by the SHA-256 of its files and the options (:mod:`.filememo` remembers the
hashes), so adding a case or changing the test fraction redoes nothing else. Splits are by case (never by slice),
deterministic in the case id. Provenance records the layout, the file or channel of each contrast, the label map
(source value → meaning → value), the orientations and voxel sizes seen, and the files ignored.
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import DiskCache, content_hash
from ..errors import DataError
from .cases import Case, ContrastEntry
from .contrasts import cases_with, pick_contrasts
from .core import ReferenceData, Split
from .filememo import file_digest
from .label_meanings import LabelMeaning, finish_meanings, plan_meanings, unknown_meaning_error
from .layouts import detect_layout
from .preprocess import PREPROCESSING, case_slices, to_ras, voxel_sizes
from .volumes import VOLUME_PREPROCESSING, case_volume, check_volume_geometry

LOADER_VERSION = "nifti/2"
CASE_KIND = "nifti-case"
# The loading options of a NIfTI folder when none are given; a suite's ``data:`` block (suite.DataOptions) defaults to these.
DEFAULT_MODALITY: str | None = None  # one contrast (the older form of ``contrasts``); None: every contrast the data has
DEFAULT_CROP = (192, 192)  # in-plane centre crop (pixels), as in Deo et al. 2025
DEFAULT_TEST_FRACTION = 0.3  # of the cases (split by case, never by slice)
DEFAULT_SLICES = "lesion"  # axial slices with a lesion ("all": every slice with brain)
DEFAULT_SLICING = "slices"  # 2D axial slices; "volume": one 3D volume per case
DEFAULT_SPACING_MM = 2.0  # slicing volume: isotropic target voxel size (mm)
DEFAULT_SHAPE = (96, 112, 96)  # slicing volume: target D×H×W (192×224×192 mm at 2 mm: a BraTS brain with margin)
#: The data options that belong to each ``slicing``; the others make no sense with it.
SLICING_OPTIONS = {"slices": ("crop", "slices"), "volume": ("spacing_mm", "shape")}
UNKNOWN_LABEL_SCAN = 10  # label files read to name the values when nothing says what they mean
_GEOMETRY_ATOL = 1e-3  # mm, on the RAS affines of one case's files


class StderrProgress:
    """Prints loading progress to the terminal (``sys.__stderr__``, past pytest's capture) once loading has taken
    ``after_s`` seconds, at most once every ``every_s`` seconds."""

    def __init__(self, after_s: float = 2.0, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.after_s, self.every_s, self.clock = after_s, every_s, clock
        self.start = clock()
        self.last = -float("inf")

    def __call__(self, message: str) -> None:
        now = self.clock()
        if now - self.start < self.after_s or now - self.last < self.every_s or sys.__stderr__ is None:
            return
        self.last = now
        print(message, file=sys.__stderr__, flush=True)


@dataclass(frozen=True)
class CaseSlices:
    """One preprocessed case: images K×C×H×W, masks K×H×W in the file's label values, slice indices, and metadata
    (orientation codes of the files read, voxel sizes, shape, label value counts); as a volume, images 1×C×D×H×W and
    masks 1×D×H×W, and the metadata adds the grid (:func:`.volumes.case_volume`)."""

    images: np.ndarray
    masks: np.ndarray
    z: np.ndarray
    meta: dict[str, Any]


def save_case(case: CaseSlices, path: Path) -> None:
    """Write ``case`` to one npz file at ``path`` (deflate level 1: normalised float slices barely compress further, and
    the default level made writing the slowest step of a first load)."""
    arrays = {"images": case.images, "masks": case.masks, "z": case.z, "meta": np.array(json.dumps(case.meta))}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)


def load_case(path: Path) -> CaseSlices:
    """Read a case written by :func:`save_case`."""
    with np.load(path, allow_pickle=False) as z:
        return CaseSlices(z["images"], z["masks"], z["z"], json.loads(str(z["meta"])))


def _read(path: Path, channel: int | None, cache: dict[Any, Any], whole: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(3D array, affine) of ``path`` (channel ``channel`` of a 4D file); DataError naming the file. Only that channel
    is read, unless ``whole``: then the whole 4D file is read once into ``cache`` (several channels of one
    compressed file cost one decompression)."""
    import nibabel as nib

    try:
        if path not in cache:
            cache[path] = nib.load(str(path))
        img = cache[path]
        shape = img.shape
        if len(shape) == 4 and channel is None and shape[3] == 1:
            channel = 0
        if channel is not None and (len(shape) != 4 or channel >= shape[3]):
            raise DataError(f"{path}: shape {shape}; expected a 4D image with a channel {channel} on its last axis")
        if channel is None and len(shape) != 3:
            raise DataError(f"{path}: shape {shape}; expected a 3D volume")
        # No bit depth is guessed here: values are read as float (scl_slope/scl_inter applied where the NIfTI-1 header
        # sets them) and normalised per slice or volume and contrast on their 1st-99th percentiles (preprocess,
        # volumes), never divided by the dtype's range, so an int16 BraTS scan with values up to a few thousand is read
        # as meant. (Folders of generated images, which would be divided by it, refuse such values: folder_model, bitdepth.)
        if channel is not None and whole:
            if (path, "whole") not in cache:
                cache[(path, "whole")] = np.asarray(img.dataobj, dtype=np.float32)
            arr = cache[(path, "whole")][..., channel]
        else:
            arr = np.asarray(img.dataobj[..., channel] if channel is not None else img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    return arr, affine


def read_ras(case: Case, picked: list[ContrastEntry]) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray, dict[str, Any]]:
    """The picked contrasts' files or channels and the label file of one case, reoriented to RAS and checked to share
    shape and affine: (volumes, label or None, the RAS affine, metadata). DataError naming the file that is
    unreadable, non-finite or inconsistent."""
    opened: dict[Any, Any] = {}
    per_file = Counter(case.images[e.key].path for e in picked)
    vols, codes = [], []
    first: tuple[Path, np.ndarray, np.ndarray] | None = None

    def check(path: Path, arr: np.ndarray, aff: np.ndarray) -> None:
        nonlocal first
        if first is None:
            first = (path, arr, aff)
            return
        p0, a0, f0 = first
        if arr.shape != a0.shape:
            raise DataError(f"shape mismatch: {p0} is {a0.shape} but {path} is {arr.shape} (after reorienting both to RAS)")
        if not np.allclose(aff, f0, atol=_GEOMETRY_ATOL, rtol=1e-5):
            raise DataError(f"geometry mismatch: {p0} has voxels {voxel_sizes(f0)} mm and RAS affine origin {f0[:3, 3].round(3).tolist()} "
                            f"but {path} has voxels {voxel_sizes(aff)} mm and origin {aff[:3, 3].round(3).tolist()}; "
                            "every contrast and the label of a case must share one voxel grid")

    for e in picked:
        src = case.images[e.key]
        arr, aff = _read(src.path, src.channel, opened, whole=per_file[src.path] > 1)
        where = f"{src.path}" + (f" (channel {src.channel})" if src.channel is not None else "")
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{where}: contains NaN or infinite values")
        arr, aff, code = to_ras(arr, aff)
        check(src.path, arr, aff)
        vols.append(arr)
        codes.append(code)
    label = None
    counts: dict[str, int] = {}
    if case.label is not None:
        lab, aff = _read(case.label, None, opened)
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise DataError(f"{case.label}: label volume holds non-integer values (expected integer labels)")
        lab, aff, code = to_ras(lab, aff)
        check(case.label, lab, aff)
        label = lab.astype(np.int32)
        codes.append(code)
        values, n = np.unique(label, return_counts=True)
        counts = {str(int(v)): int(k) for v, k in zip(values, n)}
    assert first is not None
    meta = {"orientations": codes, "spacing_mm": list(voxel_sizes(first[2])), "shape": list(first[1].shape), "label_counts": counts}
    return vols, label, first[2], meta


def read_case(case: Case, picked: list[ContrastEntry], crop: tuple[int, int], slices: str) -> CaseSlices:
    """Read one case (:func:`read_ras`) and keep its preprocessed axial slices (:func:`.preprocess.case_slices`)."""
    vols, label, _, meta = read_ras(case, picked)
    images, masks, z = case_slices(vols, label, crop, slices)
    return CaseSlices(images, masks, z, meta)


def read_volume(case: Case, picked: list[ContrastEntry], spacing_mm: float, shape: tuple[int, int, int]) -> CaseSlices:
    """Read one case (:func:`read_ras`) as one preprocessed volume (:func:`.volumes.case_volume`): images 1×C×D×H×W,
    masks 1×D×H×W, z ``[0]``; the grid (affine, boxes) joins the metadata."""
    vols, label, affine, meta = read_ras(case, picked)
    images, masks, grid = case_volume(vols, label, affine, spacing_mm, shape)
    return CaseSlices(images[None], masks[None], np.zeros(1, np.int32), {**meta, **grid})


def split_cases(case_ids: list[str], test_fraction: float) -> set[str]:
    """The test cases: a deterministic hash-ordered fraction of case ids (at least one case in each split)."""
    if len(case_ids) < 2:
        raise DataError(f"need at least 2 cases to make train and test splits, found {len(case_ids)}")
    ranked = sorted(case_ids, key=lambda c: content_hash("split", c))
    n_test = min(max(1, round(test_fraction * len(case_ids))), len(case_ids) - 1)
    return set(ranked[:n_test])


def _label_values(paths: list[Path]) -> dict[int, list[str]]:
    """Label value → files holding it, for a few label files (to name the values in an error)."""
    opened: dict[Any, Any] = {}
    found: dict[int, list[str]] = {}
    for p in paths:
        arr, _ = _read(p, None, opened)
        for v in np.unique(arr[np.isfinite(arr)]).astype(int):
            found.setdefault(int(v), []).append(p.name)
    return found


def check_slicing_options(slicing: Any, given: Any, where: str) -> None:
    """DataError unless ``slicing`` is one of :data:`SLICING_OPTIONS` and every option in ``given`` (names) that
    belongs to a slicing belongs to this one; the error names the option."""
    if slicing not in SLICING_OPTIONS:
        raise DataError(f"{where}: slicing {slicing!r}; expected one of {list(SLICING_OPTIONS)}")
    for other, names in SLICING_OPTIONS.items():
        wrong = [n for n in names if n in given] if other != slicing else []
        if wrong:
            raise DataError(f"{where}: option {wrong[0]!r} applies to slicing {other!r}, and the slicing is {slicing!r}; "
                            f"with slicing {slicing!r} give {' and '.join(SLICING_OPTIONS[slicing])} instead (or leave them out)")


def _case_key(case: Case, picked: list[ContrastEntry], options: dict[str, Any], cache: DiskCache) -> str:
    """The cache key of one preprocessed case: its files' content and the options (slices: crop and slices, the key
    of every release so far; volume: slicing, spacing and shape)."""
    sources = [(file_digest(case.images[e.key].path, cache), case.images[e.key].channel) for e in picked]
    label = file_digest(case.label, cache) if case.label is not None else None
    return content_hash(LOADER_VERSION, options, sources, label)


def load_nifti_folder(folder: Path, cache: DiskCache, *, contrasts: list[str] | None = None, labels: dict[Any, str] | None = None,
                      modality: str | None = DEFAULT_MODALITY, crop: tuple[int, int] = DEFAULT_CROP,
                      test_fraction: float = DEFAULT_TEST_FRACTION, slices: str = DEFAULT_SLICES,
                      slicing: str = DEFAULT_SLICING, spacing_mm: float | None = None, shape: tuple[int, int, int] | None = None,
                      progress: Callable[[str], None] | None = None) -> ReferenceData:
    """Load a NIfTI folder in any layout of :mod:`.layouts` into train/test splits of preprocessed axial slices
    (``slicing="slices"``, options ``crop`` and ``slices``) or of one volume per case (``slicing="volume"``, options
    ``spacing_mm``, default :data:`DEFAULT_SPACING_MM`, and ``shape`` D×H×W, default :data:`DEFAULT_SHAPE`; see
    :mod:`.volumes`). An option of the other slicing is a DataError naming it.

    ``contrasts`` names the contrasts to read, in order (canonical names or synonyms; channel indices in imagesTr
    layouts); None reads every contrast the data has, canonical ones in the order t1, t1c, t2, flair. ``modality``
    is the older form for one contrast. ``labels`` (value → meaning) decides what label values mean; without it the
    layout's convention or dataset.json does, and a DataError asks for it when neither does. ``progress`` receives
    one message per case (default: :class:`StderrProgress`). Cases are cached one by one.
    """
    if modality is not None and contrasts is not None:
        raise DataError(f"{folder}: give either contrasts (a list) or modality (one contrast), not both")
    wanted = [str(c) for c in contrasts] if contrasts is not None else [str(modality)] if modality is not None else None
    given = {"crop": crop != DEFAULT_CROP, "slices": slices != DEFAULT_SLICES, "spacing_mm": spacing_mm is not None,
             "shape": shape is not None}
    check_slicing_options(slicing, [k for k, v in given.items() if v], str(folder))
    volume = slicing == "volume"
    if volume:
        spacing_mm, shape = check_volume_geometry(DEFAULT_SPACING_MM if spacing_mm is None else spacing_mm,
                                                  DEFAULT_SHAPE if shape is None else shape, str(folder))
    if slices not in ("lesion", "all"):
        raise DataError(f"{folder}: slices {slices!r}; expected 'lesion' or 'all'")
    report = progress if progress is not None else StderrProgress()
    crop = (int(crop[0]), int(crop[1]))
    layout = detect_layout(Path(folder), wanted)
    picked = pick_contrasts(layout, wanted)
    cases, other_cases = cases_with(layout, picked)
    unlabelled = [c.id for c in cases if c.label is None]
    has_masks = len(unlabelled) < len(cases)
    if has_masks and unlabelled:
        raise DataError(f"{folder}: cases {unlabelled[:10]}{' ...' if len(unlabelled) > 10 else ''} ({len(unlabelled)} of "
                        f"{len(cases)}) have no label file while the others have one; label every case, or none for a "
                        "healthy cohort")
    plan = plan_meanings(layout, labels) if has_masks else None
    if has_masks and plan is None:
        scanned = [c.label for c in cases[:UNKNOWN_LABEL_SCAN] if c.label is not None]
        raise unknown_meaning_error(layout, _label_values(scanned), len(scanned), len(cases))
    mode = "volume" if volume else slices if has_masks else "all"
    test_ids = split_cases([c.id for c in cases], test_fraction)
    if volume:
        assert spacing_mm is not None and shape is not None
        case_options: dict[str, Any] = {"slicing": "volume", "spacing_mm": spacing_mm, "shape": list(shape)}
        reader: Callable[[Case], CaseSlices] = lambda case: read_volume(case, picked, spacing_mm, shape)  # noqa: E731
    else:
        case_options = {"crop": list(crop), "slices": mode}
        reader = lambda case: read_case(case, picked, crop, mode)  # noqa: E731

    read: list[tuple[Case, CaseSlices, str]] = []
    for i, case in enumerate(cases):
        key = _case_key(case, picked, case_options, cache)
        entry = cache.get_or_create(CASE_KIND, key, ".npz", lambda case=case: reader(case), save_case, load_case)
        read.append((case, entry, key))
        report(f"mriq: reading {layout.name} {i + 1}/{len(cases)} cases ({folder})")

    spacing = (spacing_mm,) * 3 if volume else _common_spacing(read, picked)
    found: dict[int, list[str]] = {}
    for case, entry, _ in read:
        for v in entry.meta["label_counts"]:
            found.setdefault(int(v), []).append(str(case.label))
    meaning = finish_meanings(plan, found, Path(folder)) if plan is not None else None

    splits = {name: _assemble([r for r in read if (r[0].id in test_ids) == (name == "test")], meaning, folder, name, mode)
              for name in ("train", "test")}

    options: dict[str, Any] = {"contrasts": [e.name for e in picked], "crop": crop, "test_fraction": test_fraction, "slices": slices,
                               "layout": layout.name, "slices_kept": mode}
    if volume:
        options = {"contrasts": options["contrasts"], "test_fraction": test_fraction, "layout": layout.name, **case_options}
    orientations = Counter(code for _, entry, _ in read for code in entry.meta["orientations"])
    provenance: dict[str, Any] = {
        "source": f"NIfTI folder {Path(folder).resolve()} ({layout.description}, {len(cases)} cases)",
        "layout": layout.name, "layout_evidence": layout.evidence, "options": options,
        "contrasts_read": [{"contrast": e.name, "source": e.where} for e in picked],
        "contrasts_available": [{"contrast": e.name, "source": e.where} for e in layout.contrasts],
        "orientations": dict(sorted(orientations.items())),
        "voxel_spacing_mm": sorted({tuple(round(v, 4) for v in entry.meta["spacing_mm"]) for _, entry, _ in read}),
        "test_cases": sorted(test_ids),
        "preprocessing": {**PREPROCESSING, "crop": f"centre crop/pad to {crop}"},
        "cache_key": content_hash(LOADER_VERSION, options, sorted(test_ids), [k for _, _, k in read]),
    }
    if volume:
        target = f"{shape[0]}x{shape[1]}x{shape[2]} (D×H×W) voxels of {spacing_mm} mm"
        provenance["preprocessing"] = {**VOLUME_PREPROCESSING, "target": target}
        provenance["slicing"] = "volume"
        provenance["affine_dhw"] = {case.id: entry.meta["affine_dhw"] for case, entry, _ in read}
        grid_keys = ("spacing_mm", "shape", "brain_box_source_voxels", "grid_box_source_voxels")  # source spacing, shape, boxes
        provenance["volumes"] = {case.id: {k: entry.meta[k] for k in grid_keys} for case, entry, _ in read}
    if layout.notes:
        provenance["layout_notes"] = list(layout.notes)
    if layout.ignored:
        provenance["ignored_files"] = {"count": len(layout.ignored), "files": list(layout.ignored[:100]),
                                       "note": "macOS ._* resource forks, .DS_Store, hidden files and files that are not NIfTI "
                                               "(or not read by this layout) are no data: skipped"}
    if other_cases:
        provenance["cases_without_the_contrasts"] = {"count": len(other_cases), "cases": other_cases[:100],
                                                     "note": f"these hold none of {options['contrasts']}: not read"}
    if meaning is not None:
        provenance["label_meaning_source"] = meaning.source
        provenance["label_map"] = meaning.provenance()
    else:
        provenance["annotations"] = ("none: no case has a label file, so this is a healthy cohort (masks all zero) and "
                                     "slices with brain are kept" + (f"; data.labels {labels} not used" if labels else ""))
    return ReferenceData(
        name=str(folder), train=splits["train"], test=splits["test"],
        labels=dict(meaning.labels) if meaning else {}, regions=dict(meaning.regions) if meaning else {},
        spacing_mm=spacing, contrasts=tuple(e.name for e in picked), provenance=provenance, has_masks=has_masks,
    )


def _assemble(read: list[tuple[Case, CaseSlices, str]], meaning: LabelMeaning | None, folder: Path, name: str, mode: str) -> Split:
    """One split from its cases' slices, masks remapped to the canonical values (filled into arrays allocated once)."""
    n = sum(len(entry.z) for _, entry, _ in read)
    if not n:
        raise DataError(f"{folder}: the {name} split has no slices with {'a lesion' if mode == 'lesion' else 'brain'}")
    first = read[0][1].images
    images = np.empty((n, *first.shape[1:]), np.float32)  # a slice C×H×W, or a volume C×D×H×W (one per case)
    masks = np.zeros((n, 1, *first.shape[2:]), np.int64)
    ids: list[str] = []
    case_index = np.empty(n, np.int64)
    at = k = 0
    for case, entry, _ in read:
        m = len(entry.z)
        if not m:
            continue
        images[at:at + m] = entry.images
        if meaning is not None:
            masks[at:at + m, 0] = meaning.remap(entry.masks)
        ids.extend([case.id] if mode == "volume" else (f"{case.id}:z{int(z):03d}" for z in entry.z))
        case_index[at:at + m] = k  # consecutive over the cases with slices, in case-id order
        at, k = at + m, k + 1
    return Split(torch.from_numpy(images), torch.from_numpy(masks), tuple(ids), {"case": case_index})


def _common_spacing(read: list[tuple[Case, CaseSlices, str]], picked: list[ContrastEntry]) -> tuple[float, float]:
    """The in-plane voxel size (mm, RAS) every case shares; DataError naming two files that differ."""
    ref: tuple[Path, tuple[float, float]] | None = None
    for case, entry, _ in read:
        sp = (float(entry.meta["spacing_mm"][0]), float(entry.meta["spacing_mm"][1]))
        path = case.images[picked[0].key].path
        if ref is None:
            ref = (path, sp)
        elif not np.allclose(sp, ref[1], atol=1e-3):
            raise DataError(f"spacing mismatch: {path} has in-plane voxels {sp} mm but {ref[0]} has {ref[1]} mm; "
                            "resample to one spacing first")
    assert ref is not None
    return ref[1]
