"""Public layouts of brain MRI folders, found from the files; which file or channel holds each contrast; what each
label value means.

Layouts (:func:`detect_layout`; the name is recorded in the data's provenance):

* ``brats2021``: BraTS 2018–2021, ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (BraTS 2020 ships ``.nii``).
  Labels 1 NCR/NET, 2 ED, 4 ET (Baid et al. 2021, arXiv:2107.02314; 3 was retired after BraTS 2016).
* ``brats2023``: BraTS 2023–2025 (GLI, MEN, MET, SSA), ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``
  (``BraTS-GLI-00000-000-t1c.nii.gz``). Labels 1 NETC, 2 SNFH, 3 ET; the 2024 post-treatment glioma data add
  4 RC, resection cavity (de Verdier et al. 2024, arXiv:2405.18368; nnU-Net's Dataset226_BraTS2024-BraTS-GLI.py).
  Pediatric cases (``BraTS-PED-*``) get no convention: the BraTS-PEDs releases do not share one label numbering
  (the 2024 data annotate ET, NET, CC and ED, arXiv:2404.15009), so a ``labels:`` map must say it.
* ``msd``: Medical Segmentation Decathlon (Antonelli et al. 2022), ``imagesTr/BRATS_001.nii.gz`` 4D (last axis =
  channel) + ``labelsTr/`` + ``dataset.json`` with ``"modality"`` (Task01: 0 FLAIR, 1 T1w, 2 t1gd, 3 T2w) and
  ``"labels"`` value → name (Task01: 1 edema, 2 non-enhancing tumor, 3 enhancing tumour: not BraTS's numbering).
* ``nnunet_v1``: the same dataset.json keys with one file per channel, ``imagesTr/<case>_0000.nii.gz``.
* ``nnunet_v2``: ``imagesTr/<case>_XXXX<file_ending>`` + ``labelsTr/<case><file_ending>`` + ``dataset.json`` with
  ``"channel_names"`` and ``"labels"`` name → value, or name → values for region-based training
  (nnunetv2/dataset_conversion/generate_dataset_json.py). nnU-Net's BraTS 2021 conversion (Dataset137_BraTS21.py)
  writes ED as 1, NCR as 2, ET as 3 and declares ``"whole tumor": [1, 2, 3], "tumor core": [2, 3],
  "enhancing tumor": [3]``; meanings are derived from such regions (:func:`mriq_validate.data.label_meanings.meanings_from_regions`).
* ``imagesTr``: imagesTr/labelsTr without dataset.json: channels by index only, label meaning from ``labels:``.
* ``case_folders``: ``<case>/<case>_<contrast>.nii.gz`` folders in other naming (or without segmentations:
  a healthy cohort), and ``flat``: a folder of ``<id>-<contrast>.nii.gz`` files (IXI: ``IXI002-Guys-0828-T1.nii.gz``);
  ``<id>_seg.nii.gz`` files are labels. Their label meaning comes from ``labels:``.

macOS ``._*`` files, ``.DS_Store``, ``__MACOSX/`` and other hidden files are ignored and listed (:attr:`Layout.ignored`),
as nnU-Net's convert_MSD_dataset.py skips them; so are files that are not NIfTI (BraTS 2020's csv tables).

What each label value means, and the label numbering each layout fixes, is :mod:`mriq_validate.data.label_meanings`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import DataError
from .cases import Case, ContrastEntry, ImageSource, Layout
from .contrasts import CANONICAL, canonical_contrast, contrast_name
from .label_meanings import CONVENTIONS, norm_name as _norm

NII = (".nii.gz", ".nii")
#: File-name suffixes of label volumes (``_seg``; ``_Segm`` in one BraTS 2020 case; ``_gtv`` in BraTS-MEN-RT).
LABEL_SUFFIXES = frozenset({"seg", "segm", "label", "labels", "mask", "gtv"})


def is_nifti(name: str) -> bool:
    """Whether ``name`` is a NIfTI file name (``.nii.gz`` or ``.nii``)."""
    return name.endswith(NII)


def nifti_stem(name: str) -> str:
    """``name`` without its NIfTI extension."""
    for s in NII:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def is_debris(name: str) -> bool:
    """Files and folders that are no data: macOS ``._*`` resource forks, ``.DS_Store``, ``__MACOSX``, hidden files,
    Windows ``Thumbs.db``/``desktop.ini``."""
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def split_suffix(stem: str) -> tuple[str, str | None]:
    """(``<id>``, ``<suffix>``) of ``<id>_<suffix>`` or ``<id>-<suffix>``; (stem, None) without a separator."""
    m = re.fullmatch(r"(.+?)[_-]([^_-]+)", stem)
    return (m.group(1), m.group(2)) if m else (stem, None)


# --------------------------------------------------------------------------------------------------- detection


def detect_layout(folder: Path, wanted: list[str] | None = None) -> Layout:
    """The layout of ``folder``, found from its files (nothing but directory listings, dataset.json and NIfTI headers
    of imagesTr/ is read). ``wanted`` (the contrasts asked for) names the contrast of a flat folder whose file names
    do not say it. DataError when the folder is missing, empty or inconsistent, naming the files."""
    if not folder.is_dir():
        raise DataError(f"--mriq-data {folder}: folder does not exist")
    if (folder / "imagesTr").is_dir():
        return _images_tr(folder)
    ignored: list[str] = []
    dirs, files = [], []
    for p in sorted(folder.iterdir()):
        if is_debris(p.name):
            ignored.append(p.name + ("/" if p.is_dir() else ""))
        elif p.is_dir():
            dirs.append(p)
        elif is_nifti(p.name):
            files.append(p)
        else:
            ignored.append(p.name)
    case_dirs = [d for d in dirs if any(is_nifti(q.name) and not is_debris(q.name) for q in d.iterdir())]
    ignored += [d.name + "/" for d in dirs if d not in case_dirs]
    if case_dirs and files:
        raise DataError(f"{folder}: holds both NIfTI files ({files[0].name}, ...) and case folders ({case_dirs[0].name}/, ...); "
                        "expected one of them (case folders: <case>/<case>_<contrast>.nii.gz; flat: <id>-<contrast>.nii.gz)")
    if case_dirs:
        return _case_folders(folder, case_dirs, ignored)
    if files:
        return _flat(folder, files, ignored, wanted)
    hint = f" (its subfolders {[d.name for d in dirs[:5]]} hold no NIfTI files: point at the folder that holds the cases)" if dirs else ""
    raise DataError(f"--mriq-data {folder}: no cases found{hint}; expected BraTS case folders (<case>/<case>_t1.nii.gz + "
                    "<case>_seg.nii.gz), imagesTr/ + labelsTr/ (+ dataset.json), or a folder of <id>-<contrast>.nii.gz files")


def _parse_files(paths: Iterable[Path], where: str) -> tuple[dict[str, Path], list[Path]]:
    """The image files of one case by contrast name (from the file-name suffix), and its label files."""
    images: dict[str, Path] = {}
    labels: list[Path] = []
    for p in paths:
        stem = nifti_stem(p.name)
        suffix = split_suffix(stem)[1] or stem  # <case>/t1.nii.gz: the whole name is the contrast
        if _norm(suffix) in LABEL_SUFFIXES:
            labels.append(p)
            continue
        name = contrast_name(suffix)
        if name in images:
            raise DataError(f"{images[name]} and {p} are both contrast {name!r}; expected one file per contrast in {where}")
        images[name] = p
    return images, labels


def _case_folders(folder: Path, case_dirs: list[Path], ignored: list[str]) -> Layout:
    cases: list[Case] = []
    suffixes: dict[str, tuple[str, str]] = {}  # contrast name -> (separator, suffix) as written, first seen
    for d in case_dirs:
        nii = []
        for q in sorted(d.iterdir()):
            if is_debris(q.name) or not is_nifti(q.name) or q.is_dir():
                ignored.append(f"{d.name}/{q.name}")
            else:
                nii.append(q)
        images, labels = _parse_files(nii, f"{d}/<case>_<contrast>.nii.gz")
        if len(labels) > 1:
            raise DataError(f"{d}: {len(labels)} label files {[p.name for p in labels]}; expected one <case>_seg.nii.gz")
        for name, p in images.items():
            suffixes.setdefault(name, _written_suffix(p))
        cases.append(Case(d.name, {n: ImageSource(p) for n, p in images.items()}, labels[0] if labels else None))
    written = {_norm(s) for _, s in suffixes.values()}
    contrasts = tuple(ContrastEntry(name, name, suffixes[name][1], f"<case>/{'<case>' if suffixes[name][0] else ''}"
                                    f"{''.join(suffixes[name])}.nii.gz", None, canonical_contrast(name) is not None)
                      for name in _ordered(suffixes))
    labelled = any(c.label for c in cases)
    notes: list[str] = []
    if labelled and written <= {"t1", "t1ce", "t2", "flair"}:
        return Layout("brats2021", "BraTS 2018–2021 case folders", folder, tuple(cases), contrasts, "brats2021",
                      ignored=tuple(ignored), evidence=f"case folders with contrast suffixes {sorted(written)} and _seg files")
    if labelled and written <= {"t1n", "t1c", "t2w", "t2f"}:
        ped = [c.id for c in cases if c.id.upper().startswith("BRATS-PED")]
        if not ped:
            return Layout("brats2023", "BraTS 2023–2025 case folders", folder, tuple(cases), contrasts, "brats2023",
                          ignored=tuple(ignored), evidence=f"case folders with contrast suffixes {sorted(written)} and -seg files")
        notes.append(f"pediatric cases ({ped[0]}, ...): the BraTS-PEDs releases do not share one label numbering (the 2024 "
                     "data annotate ET, NET, CC and ED, arXiv:2404.15009), so the suite's data.labels must say it")
    return Layout("case_folders", "case folders", folder, tuple(cases), contrasts, None, ignored=tuple(ignored), notes=tuple(notes),
                  evidence=f"case folders with contrast suffixes {sorted(written)}" + ("" if labelled else " and no label files"))


def _flat(folder: Path, files: list[Path], ignored: list[str], wanted: list[str] | None) -> Layout:
    parsed = [(p, *split_suffix(nifti_stem(p.name))) for p in files]
    named = [t for t in parsed if t[2] is not None and (canonical_contrast(t[2]) or _norm(t[2]) in LABEL_SUFFIXES)]
    if not named:  # no file says its contrast: every file is one case of the one contrast asked for
        asked = [w for w in (wanted or []) if not str(w).isdigit()]
        if len(asked) != 1:
            raise DataError(f"{folder}: the file names ({files[0].name}, ...) do not say their contrast; name the one contrast "
                            "they hold with the suite's data.contrasts (e.g. contrasts: [t1])")
        name = contrast_name(asked[0])
        cases = tuple(Case(nifti_stem(p.name), {name: ImageSource(p)}, None) for p in files)
        return Layout("flat", "flat folder of one contrast", folder, cases,
                      (ContrastEntry(name, name, str(asked[0]), f"every *.nii.gz in the folder (contrast named by data.contrasts)"),),
                      ignored=tuple(ignored), evidence="NIfTI files directly in the folder, their names without a contrast suffix")
    groups: dict[str, list[Path]] = {}
    for p, cid, suffix in parsed:
        groups.setdefault(cid if suffix is not None else nifti_stem(p.name), []).append(p)
    cases_l: list[Case] = []
    suffixes: dict[str, tuple[str, str]] = {}
    for cid, paths in sorted(groups.items()):
        images, labels = _parse_files(paths, f"{folder}/<id>-<contrast>.nii.gz")
        if len(labels) > 1:
            raise DataError(f"{folder}: case {cid!r} has {len(labels)} label files {[p.name for p in labels]}; expected one")
        for name, p in images.items():
            suffixes.setdefault(name, _written_suffix(p))
        cases_l.append(Case(cid, {n: ImageSource(p) for n, p in images.items()}, labels[0] if labels else None))
    contrasts = tuple(ContrastEntry(n, n, suffixes[n][1], f"<id>{''.join(suffixes[n])}.nii.gz", None,
                                    canonical_contrast(n) is not None) for n in _ordered(suffixes))
    return Layout("flat", "flat folder", folder, tuple(cases_l), contrasts, None, ignored=tuple(ignored),
                  evidence=f"NIfTI files directly in the folder with contrast suffixes {sorted({_norm(s) for _, s in suffixes.values()})}")


def _written_suffix(p: Path) -> tuple[str, str]:
    """(separator, contrast suffix) of ``p`` as written: ``("_", "t1ce")``, ``("-", "t2f")``, ``("", "t1")`` for t1.nii.gz."""
    stem = nifti_stem(p.name)
    suffix = split_suffix(stem)[1]
    return (stem[-len(suffix) - 1], suffix) if suffix else ("", stem)


def _ordered(names: Iterable[str]) -> list[str]:
    """Canonical contrasts in canonical order, then the others in the order given."""
    names = list(dict.fromkeys(names))
    return [c for c in CANONICAL if c in names] + [n for n in names if n not in CANONICAL]


def read_dataset_json(path: Path) -> dict[str, Any]:
    """The dataset.json at ``path``; DataError naming the file when it is not a JSON object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object with 'channel_names' (or 'modality') and 'labels'")
    return obj


def _channel_names(meta: dict[str, Any], path: Path) -> tuple[str, dict[int, str]]:
    key = "channel_names" if "channel_names" in meta else "modality" if "modality" in meta else ""
    if not key:
        return "", {}
    raw = meta[key]
    if not isinstance(raw, dict) or not all(str(k).isdigit() for k in raw):
        raise DataError(f"{path}: '{key}' must map channel indices to names (e.g. {{\"0\": \"T1\"}}), found {raw!r}")
    return key, {int(k): str(v) for k, v in raw.items()}


def _images_tr(folder: Path) -> Layout:
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not labels_dir.is_dir():
        raise DataError(f"{folder}: has imagesTr/ but no labelsTr/ (nnU-Net/MSD layout needs both)")
    meta_path = folder / "dataset.json"
    meta = read_dataset_json(meta_path) if meta_path.is_file() else None
    ending = str(meta.get("file_ending", ".nii.gz")) if meta else None
    if ending is not None and ending not in NII:
        raise DataError(f"{meta_path}: file_ending {ending!r}; only NIfTI ({', '.join(NII)}) is read")
    endings = (ending,) if ending else NII
    ignored = [p.name + ("/" if p.is_dir() else "") for p in sorted(folder.iterdir())
               if p.name not in ("imagesTr", "labelsTr", "dataset.json")]

    def listing(d: Path) -> dict[str, Path]:
        out = {}
        for p in sorted(d.iterdir()):
            if is_debris(p.name) or p.is_dir() or not p.name.endswith(endings):
                ignored.append(f"{d.name}/{p.name}")
            else:
                out[p.name[: -len(next(e for e in endings if p.name.endswith(e)))]] = p
        return out

    imgs, labs = listing(images_dir), listing(labels_dir)
    if not imgs:
        raise DataError(f"--mriq-data {folder}: no cases found in {images_dir} (expected <case>_0000{endings[0]} or <case>{endings[0]})")
    split = {stem: re.fullmatch(r"(.+)_(\d{4})", stem) for stem in imgs}
    if all(split.values()):
        per_case: dict[str, dict[int, Path]] = {}
        for stem, m in split.items():
            assert m is not None
            per_case.setdefault(m.group(1), {})[int(m.group(2))] = imgs[stem]
        channels = sorted(next(iter(per_case.values())))
        for cid, chans in per_case.items():
            if sorted(chans) != channels:
                raise DataError(f"{images_dir}: case {cid!r} has channels {sorted(chans)} but others have {channels}; "
                                f"expected <case>_0000..{channels[-1]:04d}{endings[0]} for every case")
        n_channels, four_d = len(channels), False
        if channels != list(range(n_channels)):
            raise DataError(f"{images_dir}: channel files {channels}; expected consecutive indices from 0000")
        case_files = {cid: {f"{ch:04d}": ImageSource(p) for ch, p in chans.items()} for cid, chans in per_case.items()}
    elif not any(split.values()):
        first = next(iter(imgs.values()))
        n_channels, four_d = _channels_of(first)
        case_files = {stem: {(f"ch{ch}" if four_d else "0000"): ImageSource(p, ch if four_d else None) for ch in range(n_channels)}
                      for stem, p in imgs.items()}
    else:
        a = next(s for s, m in split.items() if m)
        b = next(s for s, m in split.items() if not m)
        raise DataError(f"{images_dir}: mixes per-channel files ({imgs[a].name}) and whole-case files ({imgs[b].name}); expected one kind")
    orphans = sorted(set(labs) - set(case_files))
    if orphans:
        raise DataError(f"{labels_dir / labs[orphans[0]].name}: label of case {orphans[0]!r} has no image in {images_dir}")
    unlabelled = sorted(set(case_files) - set(labs))
    if unlabelled:
        raise DataError(f"{labels_dir}: no label file for cases {unlabelled[:10]}{' ...' if len(unlabelled) > 10 else ''} "
                        f"({len(unlabelled)} of {len(case_files)}); nnU-Net/MSD layouts label every training case")
    cases = tuple(Case(cid, case_files[cid], labs[cid]) for cid in sorted(case_files))

    key, names = _channel_names(meta, meta_path) if meta else ("", {})
    if names and sorted(names) != list(range(n_channels)):
        raise DataError(f"{meta_path}: '{key}' names channels {sorted(names)} but {images_dir} holds {n_channels} "
                        f"channel(s) per case (0..{n_channels - 1})")
    per_channel_files = all(split.values())

    def pattern(ch: int) -> str:
        if four_d:
            return f"channel {ch} of imagesTr/<case>{endings[0]}"
        return f"imagesTr/<case>_{ch:04d}{endings[0]}" if per_channel_files else f"imagesTr/<case>{endings[0]}"

    def ckey(ch: int) -> str:
        return f"ch{ch}" if four_d else f"{ch:04d}"
    if names:
        contrasts = tuple(ContrastEntry(contrast_name(names[ch]), ckey(ch), names[ch],
                                        f"{pattern(ch)} (dataset.json {key} '{ch}': '{names[ch]}')", ch) for ch in range(n_channels))
        order = {n: i for i, n in enumerate(_ordered(e.name for e in contrasts))}
        contrasts = tuple(sorted(contrasts, key=lambda e: order[e.name]))
    else:
        contrasts = tuple(ContrastEntry(f"channel{ch}", ckey(ch), str(ch), f"{pattern(ch)} (no dataset.json names it)", ch)
                          for ch in range(n_channels))
    if meta is None:
        name, desc = "imagesTr", "imagesTr/labelsTr without dataset.json"
    elif key == "channel_names":
        name, desc = "nnunet_v2", "nnU-Net v2 raw dataset"
    elif four_d:
        name, desc = "msd", "Medical Segmentation Decathlon"
    else:
        name, desc = "nnunet_v1", "nnU-Net v1 / MSD-style dataset with per-channel files"
    evidence = (f"imagesTr/ + labelsTr/ with {'4D images' if four_d else 'one file per channel'}, "
                + (f"dataset.json with {key!r}" if key else "no dataset.json" if meta is None else "dataset.json without channel names"))
    if (folder / "imagesTs").is_dir():
        ignored = [i for i in ignored if i != "imagesTs/"] + ["imagesTs/ (test images without labels: not read)"]
    return Layout(name, desc, folder, cases, contrasts, None, meta if meta and "labels" in meta else None, meta_path,
                  tuple(ignored), (), evidence)


def _channels_of(path: Path) -> tuple[int, bool]:
    """(channels, is 4D) of the NIfTI at ``path`` from its header."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as exc:
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if len(shape) == 4:
        return int(shape[3]), True
    if len(shape) == 3:
        return 1, False
    raise DataError(f"{path}: a {len(shape)}D image; expected a 3D volume or a 4D stack of channels (last axis)")
