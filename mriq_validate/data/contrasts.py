"""MRI contrast names, normalised across the public brain-tumour dataset conventions.

BraTS 2018–2021 write ``t1, t1ce, t2, flair``; BraTS 2023–2025 write ``t1n, t1c, t2w, t2f``; the Medical Segmentation
Decathlon (Task01) writes ``FLAIR, T1w, t1gd, T2w`` in its dataset.json; nnU-Net v2 conversions write whatever their
``channel_names`` say (e.g. ``T1, T1ce, T2, FLAIR``). One canonical name per contrast lets a suite say ``flair`` and
read the right file or channel in every layout: :func:`pick_contrasts` finds the asked contrasts among those a
layout (:mod:`mriq_validate.data.layouts`) offers.
"""

from __future__ import annotations

import re

from ..errors import DataError
from .cases import Case, ContrastEntry, Layout


#: The canonical contrasts of structural brain MRI, in the order BraTS 2021 lists them.
CANONICAL = ("t1", "t1c", "t2", "flair")
#: Other names seen in public datasets, lower-cased with separators removed (see :func:`_key`).
SYNONYMS: dict[str, str] = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1native": "t1", "t1weighted": "t1",
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1post": "t1c", "t1contrast": "t1c", "t1wce": "t1c", "t1cegd": "t1c",
    "t1postcontrast": "t1c", "t1gad": "t1c",
    "t2": "t2", "t2w": "t2", "t2weighted": "t2",
    "flair": "flair", "t2f": "flair", "t2flair": "flair", "t2wflair": "flair",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-.]+", "", name.strip().lower())


def canonical_contrast(name: str) -> str | None:
    """The canonical name of contrast ``name`` (``"T1Gd"`` → ``"t1c"``), or None when it is not a known contrast.

    >>> [canonical_contrast(n) for n in ("t1n", "T1ce", "t1gd", "T2w", "t2f", "FLAIR", "dwi")]
    ['t1', 't1c', 't1c', 't2', 'flair', 'flair', None]
    """
    return SYNONYMS.get(_key(name))


def contrast_name(name: str) -> str:
    """``name`` as a recorded contrast: its canonical name when known, else the name lower-cased (e.g. ``"mra"``)."""
    return canonical_contrast(name) or _key(name)


def select_contrasts(available: tuple[str, ...], wanted: list[str] | tuple[str, ...] | None, where: str) -> list[int]:
    """Indices into ``available`` (recorded names) of the ``wanted`` contrasts, in the order asked; all when ``wanted``
    is None. DataError naming the unknown or repeated contrast and the contrasts the data has."""
    if wanted is None:
        return list(range(len(available)))
    if not wanted:
        raise DataError(f"{where}: contrasts is empty; expected some of {list(available)} (or leave it out for all)")
    out: list[int] = []
    for name in wanted:
        key = contrast_name(str(name))
        if key not in available:
            raise DataError(f"{where}: contrast {name!r} is not in the data; it has {list(available)} "
                            f"(synonyms: t1=t1n=T1w, t1c=t1ce=t1gd, t2=t2w, flair=t2f)")
        if available.index(key) in out:
            raise DataError(f"{where}: contrast {name!r} is asked for twice (as {key!r})")
        out.append(available.index(key))
    return out


# ----------------------------------------------------------------------------------- the contrasts of a layout


def pick_contrasts(layout: Layout, wanted: list[str] | None) -> list[ContrastEntry]:
    """The contrasts to read, in the order asked (all the layout offers by default, canonical first, when ``wanted`` is
    None). A digit names a channel index in imagesTr layouts. DataError naming an unknown, repeated or ambiguous
    contrast and the contrasts the data has."""
    offered = list(layout.contrasts)
    have = list(dict.fromkeys(e.name for e in offered))
    where = f"{layout.root} ({layout.description})"
    if wanted is None:
        picked = [e for e in offered if e.default]
        if not picked:
            raise DataError(f"{where}: no file says a known contrast (found {have}); name the contrasts to read with the "
                            "suite's data.contrasts")
        names = [e.name for e in picked]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"{where}: contrast {dup[0]!r} is ambiguous: {[e.where for e in picked if e.name == dup[0]]}; "
                            f"the data has {have}; name the channels to read with data.contrasts (channel indices allowed)")
        return picked
    if not wanted:
        raise DataError(f"{where}: contrasts is empty; expected some of {have} (or leave it out for all)")
    out: list[ContrastEntry] = []
    for w in wanted:
        text = str(w)
        if text.isdigit():
            if not layout.indexed:
                raise DataError(f"{where}: contrast {text!r} is a channel index, which only imagesTr layouts have; "
                                f"name a contrast: {have}")
            matches = [e for e in offered if e.channel == int(text)]
            if not matches:
                raise DataError(f"{where}: channel {text} does not exist; the data has channels "
                                f"{sorted(e.channel for e in offered if e.channel is not None)} ({have})")
        else:
            matches = [e for e in offered if e.name == contrast_name(text)]
            if not matches:
                hint = (" imagesTr/ without a dataset.json does not name its channels: give channel indices (contrasts: ['0']) "
                        "or add a dataset.json with channel_names." if layout.name == "imagesTr" else "")
                raise DataError(f"{where}: contrast {text!r} is not in the data; it has {have} (synonyms: t1=t1n=T1w, "
                                f"t1c=t1ce=t1gd, t2=t2w, flair=t2f).{hint}")
            if len(matches) > 1:
                raise DataError(f"{where}: contrast {text!r} is ambiguous: {[e.where for e in matches]}; the data has {have}; "
                                f"give a channel index")
        if matches[0] in out:
            raise DataError(f"{where}: contrast {text!r} is asked for twice (as {matches[0].name!r})")
        out.append(matches[0])
    return out


def cases_with(layout: Layout, picked: list[ContrastEntry]) -> tuple[list[Case], list[str]]:
    """(cases holding every picked contrast, ids of cases holding none of them). DataError naming a case that holds
    some but not all."""
    keep, other = [], []
    for c in layout.cases:
        have = [e.key in c.images for e in picked]
        if all(have):
            keep.append(c)
        elif not any(have):
            other.append(c.id)
        else:
            missing = [e.name for e, h in zip(picked, have) if not h]
            raise DataError(f"{layout.root / c.id if layout.name != 'flat' else layout.root}: case {c.id!r} has no {missing} "
                            f"(it has {sorted(c.images)}); every case needs each contrast read ({[e.name for e in picked]})")
    if not keep:
        raise DataError(f"{layout.root}: no case holds the contrasts {[e.name for e in picked]}")
    return keep, other
