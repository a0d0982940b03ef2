"""Grouping the files of a model folder into items: one file per item, or one file per contrast of an item
(``<name>_<contrast>.<ext>``), with the mask beside it (``<name>_seg.<ext>`` or ``images/`` + ``labels/``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .reading import IMAGE_SUFFIXES, _suffix


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
